//! The webhook connector against a real HTTP endpoint on loopback: each effect is POSTed once
//! with its idempotency key and a signature the receiver can verify; a refusing receiver is
//! retried.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use marketgov_core::Input;
use marketgov_engine::{webhook_signature, App, EngineOptions, ManualClock, Webhook};
use marketgov_store::Store;
use serde_json::json;

mod common;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &[u8] = b"shared-secret";

#[derive(Debug, Clone)]
struct Received {
    key: String,
    signature_ok: bool,
    body: serde_json::Value,
}

/// A receiver that verifies signatures and answers `status` to every request.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/marketgov", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let header = |name: &str| {
                                head.lines()
                                    .find_map(|l| {
                                        l.strip_prefix(&format!("{name}: ")).map(str::to_owned)
                                    })
                                    .unwrap_or_default()
                            };
                            let sig = header("Marketgov-Signature");
                            let t: i64 = sig
                                .trim_start_matches("t=")
                                .split(',')
                                .next()
                                .unwrap_or("0")
                                .parse()
                                .unwrap_or(0);
                            let signature_ok = webhook_signature(SECRET, t, body.as_bytes()) == sig;
                            log.lock().unwrap().push(Received {
                                key: header("Idempotency-Key"),
                                signature_ok,
                                body: serde_json::from_str(body).unwrap_or_default(),
                            });
                            break;
                        }
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

async fn app(dir: &std::path::Path, url: &str) -> App {
    let mut o = EngineOptions::new(dir);
    o.clock = Arc::new(ManualClock::starting_at(
        Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    o.webhook = Some(Webhook::new(url, SECRET).unwrap());
    let app = App::open(o).unwrap();
    common::publish(&app, "t", "pro", 2000, false).await;
    let Input::Customer(e) = Input::from_value(
        json!({"type": "customer_subscribes", "customer_id": "alice", "sku": "pro"}),
    )
    .unwrap() else {
        panic!()
    };
    app.submit_event("t", Some("s1"), e).await.unwrap();
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_are_posted_once_each_signed_and_keyed() {
    let (url, seen) = receiver(200).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), &url).await;
    while app.run_effects().await.unwrap() > 0 {}
    let received = seen.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        4,
        "two notifications, a provision and a charge: {received:?}"
    );
    assert!(
        received.iter().all(|r| r.signature_ok),
        "every signature verifies"
    );
    let keys: std::collections::BTreeSet<_> = received.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 4, "one key per effect");
    assert!(received
        .iter()
        .any(|r| r.body["effect"]["kind"] == "charge" && r.body["effect"]["amount"] == 2000));
    let alice = app.customer("t", "alice").await.unwrap().unwrap();
    assert_eq!(
        alice.billing.state.as_str(),
        "current",
        "the charge's 2xx came back as a payment"
    );
    assert!(app.store().ready_outbox(i64::MAX, 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_endpoint_is_retried_not_dropped() {
    let (url, seen) = receiver(503).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), &url).await;
    app.run_effects().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4);
    let rows = app.store().ready_outbox(i64::MAX, 10).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r.attempts == 1),
        "each failed once and waits for its retry"
    );
    assert!(
        Webhook::new("https://example.com/x", SECRET).is_err(),
        "TLS endpoints are refused with a clear error"
    );
}
