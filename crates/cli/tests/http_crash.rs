//! The crash test over HTTP: clients post events to a real `marketgov serve` while it is killed
//! with SIGKILL at seeded random moments; after each restart, every event that was answered 2xx
//! is still there (its key replays with `Idempotent-Replayed: true`). `CRASH_SEED=<n>` replays.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

const ADMIN: &str = "crash-admin";

fn start(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .env("MARKETGOV_ADMIN_KEY", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if call(port, "GET", "/healthz", "", None).0 == 200 {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not start");
}

/// `(status, replayed)`; status 0 when the connection failed.
fn call(port: u16, method: &str, path: &str, body: &str, key: Option<&str>) -> (u16, bool) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, false);
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let key = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, false);
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return (0, false);
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        response
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
    )
}

#[test]
fn sigkill_under_http_load_loses_no_acknowledged_event() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(11)
        });
    eprintln!("http crash test: CRASH_SEED={seed}");
    let mut rng = seed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        rng >> 33
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start(dir.path(), port);
    let product = json!({"name": "Pro", "price": 2000, "currency": "USD", "billing_period_days": 30, "publish": true}).to_string();
    assert_eq!(call(port, "PUT", "/v1/products/pro", &product, None).0, 200);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let kills = 8;
    for round in 0..kills {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let acked = acked.clone();
                std::thread::spawn(move || {
                    for i in 0..400 {
                        let key = format!("r{round}-c{c}-{i}");
                        let body = json!({"type": "customer_subscribes", "customer_id": format!("cust-{round}-{c}-{i}"), "sku": "pro"}).to_string();
                        match call(port, "POST", "/v1/events", &body, Some(&key)) {
                            (200..=299, _) => acked.lock().unwrap().push((key, body)),
                            (0, _) => return, // the server is gone
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + next() % 200));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        for c in clients {
            c.join().unwrap();
        }
        server = start(dir.path(), port);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for (key, body) in &acked {
        let (status, replayed) = call(port, "POST", "/v1/events", body, Some(key));
        assert!(
            status == 200 && replayed,
            "{key} was acknowledged before a crash but is gone (seed {seed})"
        );
    }
    server.kill().unwrap();
    let _ = server.wait();
    eprintln!(
        "http crash test: {kills} kills, {} acknowledged events all present",
        acked.len()
    );
}
