//! The real binary serving HTTP: events with idempotency rules, customers, products, tenants and
//! keys, limits, the manual clock driving the 24/48/72 h escalation, and a restart that loses
//! nothing acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key";

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    fn start_with(dir: &std::path::Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_marketgov"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .args(["--clock", "manual", "--clock-start", "2026-01-01T00:00:00Z"])
            .args(extra)
            .env("MARKETGOV_ADMIN_KEY", ADMIN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, port };
        for _ in 0..500 {
            if server.call("GET", "/healthz", None, &[]).0 == 200 {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server did not start");
    }

    /// One request over a fresh connection: `(status, headers, body)`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, String, Value) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new(), Value::Null);
        };
        let body = body.unwrap_or("");
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new(), Value::Null);
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (
            status,
            head.to_ascii_lowercase(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, String, Value) {
        let text = body.map(|b| b.to_string());
        let auth = format!("Bearer {ADMIN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(k) = key {
            headers.push(("Idempotency-Key", k));
        }
        self.call(method, path, text.as_deref(), &headers)
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn product(server: &Server, sku: &str, approval: bool) {
    let (status, head, body) = server.admin(
        "PUT",
        &format!("/v1/products/{sku}"),
        Some(json!({"name": sku, "price": 2000, "currency": "USD", "billing_period_days": 30, "requires_approval": approval, "publish": true})),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["version"].as_u64()),
        (Some("published"), Some(2))
    );
    assert!(head.contains("etag: 2"));
}

#[test]
fn events_follow_every_idempotency_rule_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let sub = json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"});

    let (status, head, first) = server.admin("POST", "/v1/events", Some(sub.clone()), Some("k1"));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "completed");
    assert!(first["phases"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x == "coordinating_fsms")));
    assert_eq!(first["governors"][0]["governor"], "compliance");
    assert!(first["receipt"]["hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
    assert!(!head.contains("idempotent-replayed"));

    let (status, head, again) = server.admin("POST", "/v1/events", Some(sub.clone()), Some("k1"));
    assert_eq!(status, 200);
    assert!(head.contains("idempotent-replayed: true"));
    assert_eq!(again, first, "the identical body");

    let other = json!({"type": "customer_subscribes", "customer_id": "c2", "sku": "pro"});
    let (status, head, problem) =
        server.admin("POST", "/v1/events", Some(other.clone()), Some("k1"));
    assert_eq!(status, 422);
    assert!(head.contains("content-type: application/problem+json"));
    assert_eq!(
        problem["type"],
        "https://marketgov.dev/problems/idempotency_key_reused"
    );

    // A key in the body works like the header.
    let mut with_key = other.clone();
    with_key["idempotency_key"] = json!("k2");
    assert_eq!(
        server.admin("POST", "/v1/events", Some(with_key), None).0,
        200
    );
    // No key, a bad body, a deep body, a huge body, no auth: refused before any work.
    assert_eq!(
        server
            .admin("POST", "/v1/events", Some(other.clone()), None)
            .0,
        400
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/events",
                Some("{not json"),
                &[
                    ("Authorization", &format!("Bearer {ADMIN}")),
                    ("Idempotency-Key", "k3")
                ]
            )
            .0,
        400
    );
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/events",
                Some(&deep),
                &[
                    ("Authorization", &format!("Bearer {ADMIN}")),
                    ("Idempotency-Key", "k4")
                ]
            )
            .0,
        400
    );
    let huge = format!(
        "{{\"type\":\"customer_cancels\",\"customer_id\":\"c1\",\"reason\":\"{}\"}}",
        "x".repeat(1_100_000)
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/events",
                Some(&huge),
                &[
                    ("Authorization", &format!("Bearer {ADMIN}")),
                    ("Idempotency-Key", "k5")
                ]
            )
            .0,
        413
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/events",
                Some(&sub.to_string()),
                &[("Idempotency-Key", "k6")]
            )
            .0,
        401
    );
    // Invalid input stores nothing: the corrected retry with the same key runs.
    let bad = json!({"type": "payment_processed", "customer_id": "c1", "amount": -1, "currency": "USD", "payment_id": "p"});
    assert_eq!(
        server.admin("POST", "/v1/events", Some(bad), Some("k7")).0,
        422
    );
    let good = json!({"type": "payment_processed", "customer_id": "c1", "amount": 1, "currency": "USD", "payment_id": "p"});
    assert_eq!(
        server.admin("POST", "/v1/events", Some(good), Some("k7")).0,
        200
    );
    // A refused transition answers 409 with the result's shape.
    let approve = json!({"type": "entitlement_approved", "customer_id": "c1"});
    let (status, _, refused) = server.admin("POST", "/v1/events", Some(approve), Some("k8"));
    assert_eq!(
        (status, refused["status"].as_str()),
        (409, Some("rejected"))
    );

    let (status, _, customer) = server.admin("GET", "/v1/customers/c1", None, None);
    assert_eq!(status, 200);
    assert_eq!(customer["governors"]["entitlement"]["state"], "active");
    assert_eq!(
        server.admin("GET", "/v1/customers/nobody", None, None).0,
        404
    );
    assert!(server.stop().success(), "SIGTERM stops it cleanly");
}

#[test]
fn tenants_see_only_their_own_customers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let sub = json!({"type": "customer_subscribes", "customer_id": "shared-id", "sku": "pro"});
    assert_eq!(
        server.admin("POST", "/v1/events", Some(sub), Some("a1")).0,
        200
    );
    let (status, _, created) = server.admin(
        "POST",
        "/v1/admin/keys",
        Some(json!({"tenant": "acme"})),
        None,
    );
    assert_eq!((status, created["tenant"].as_str()), (200, Some("acme")));
    let key = created["key"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {key}");
    let (status, _, _) = server.call(
        "GET",
        "/v1/customers/shared-id",
        None,
        &[("Authorization", &auth)],
    );
    assert_eq!(
        status, 404,
        "another tenant's customer does not exist for acme"
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/admin/keys",
                Some("{\"tenant\":\"x\"}"),
                &[("Authorization", &auth)]
            )
            .0,
        403
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/admin/clock",
                Some("{\"advance_seconds\":1}"),
                &[("Authorization", &auth)]
            )
            .0,
        403
    );
}

#[test]
fn the_manual_clock_drives_the_escalation_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "gated", true);
    let sub = json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "gated"});
    assert_eq!(
        server
            .admin("POST", "/v1/events", Some(sub.clone()), Some("s1"))
            .0,
        200
    );
    let state = |s: &Server| {
        s.admin("GET", "/v1/customers/c1", None, None).2["governors"]["entitlement"].clone()
    };

    let (status, _, now) = server.admin(
        "POST",
        "/v1/admin/clock",
        Some(json!({"advance_seconds": 24 * 3600})),
        None,
    );
    assert_eq!(
        (status, now["now"].as_str()),
        (200, Some("2026-01-02T00:00:00Z"))
    );
    assert_eq!(
        (
            state(&server)["state"].as_str(),
            state(&server)["escalation_level"].as_u64()
        ),
        (Some("escalated"), Some(1))
    );
    assert!(server.stop().success());

    // Restart in the middle: everything acknowledged is there, the clock goes on from its flag.
    let server = Server::start(dir.path());
    let (status, head, _) = server.admin("POST", "/v1/events", Some(sub), Some("s1"));
    assert!(
        status == 200 && head.contains("idempotent-replayed: true"),
        "the acknowledged event survived"
    );
    server.admin(
        "POST",
        "/v1/admin/clock",
        Some(json!({"set": "2026-01-03T00:00:00Z"})),
        None,
    );
    assert_eq!(state(&server)["escalation_level"].as_u64(), Some(2));
    server.admin(
        "POST",
        "/v1/admin/clock",
        Some(json!({"set": "2026-01-04T00:00:00Z"})),
        None,
    );
    assert_eq!(
        state(&server)["state"].as_str(),
        Some("active"),
        "approved automatically at 72 h"
    );
    let (status, _, report) = server.admin("GET", "/v1/audit/verify", None, None);
    assert_eq!(
        (status, report["ok"].as_bool()),
        (200, Some(true)),
        "{report}"
    );
}

#[test]
fn batches_and_agent_envelopes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let batch = json!({"events": [
        {"type": "customer_subscribes", "customer_id": "b1", "sku": "pro", "idempotency_key": "b-1"},
        {"type": "customer_subscribes", "customer_id": "b2", "sku": "nope", "idempotency_key": "b-2"},
        {"type": "customer_subscribes", "customer_id": "b3", "sku": "pro"},
    ]});
    let (status, _, body) = server.admin("POST", "/v1/events:batch", Some(batch), None);
    assert_eq!(status, 200, "{body}");
    let codes: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, vec![200, 409, 400], "each event has its own result");

    let envelope = |seq: u64, key: &str, event_type: &str, body: Value| {
        json!({"event_id": format!("e{seq}"), "event_type": event_type, "sequence_number": seq, "idempotency_key": key,
            "timestamp_utc": "2026-02-21T14:00:00Z", "source_agent": "shop", "source_region": "eu", "event": body})
    };
    let (status, _, ack) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(envelope(1, "a", "OrderCreated", json!({"orderId": "o9"}))),
        None,
    );
    assert_eq!(
        (status, ack["status"].as_str(), ack["case_id"].as_str()),
        (200, Some("processed"), Some("ProcessOrder-o9"))
    );
    let (status, _, dup) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(envelope(1, "a", "OrderCreated", json!({"orderId": "o9"}))),
        None,
    );
    assert_eq!((status, dup["status"].as_str()), (200, Some("duplicate")));
    let (status, _, gap) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(envelope(
            5,
            "c",
            "PaymentAuthorized",
            json!({"order_id": "o9"}),
        )),
        None,
    );
    assert_eq!((status, gap["missing_sequences"].as_u64()), (200, Some(3)));
    let (status, head, late) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(envelope(2, "b", "OrderShipped", json!({"order_id": "o9"}))),
        None,
    );
    assert_eq!(
        (status, late["last_accepted_sequence"].as_u64()),
        (409, Some(5))
    );
    assert!(head.contains("application/problem+json"));
    let (status, _, refused) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(envelope(6, "d", "OrderShipped", json!({"order_id": "o9"}))),
        None,
    );
    assert_eq!(
        (status, refused["status"].as_str()),
        (409, Some("rejected"))
    );
    let (status, _, _) = server.admin(
        "POST",
        "/v1/a2a/messages",
        Some(json!({"event_id": "x"})),
        None,
    );
    assert_eq!(status, 422);
}

#[test]
fn queries_cases_history_products_review_queue_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "basic", false);
    product(&server, "pro", false);
    let (status, _, products) = server.admin("GET", "/v1/products", None, None);
    assert_eq!(
        (status, products["products"].as_array().map(Vec::len)),
        (200, Some(2))
    );

    let send = |key: &str, body: Value| server.admin("POST", "/v1/events", Some(body), Some(key));
    send(
        "1",
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "basic"}),
    );
    // Paid by transfer (the sandbox connector may pay the charge too: the rest is credit).
    let payment = json!({"type": "payment_processed", "customer_id": "c1", "amount": 2000, "currency": "USD", "payment_id": "wire-1"});
    assert_eq!(send("1b", payment).0, 200);
    send(
        "2",
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "basic", "new_sku": "pro", "occurred_at": "2026-01-01T00:00:00Z"}),
    );
    // A second change at the very same instant: no write is later, so it is parked.
    let (status, _, parked) = send(
        "3",
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "basic", "new_sku": "pro",
        "occurred_at": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(
        (status, parked["status"].as_str()),
        (202, Some("needs_review")),
        "{parked}"
    );

    let (status, _, history) = server.admin("GET", "/v1/customers/c1/history?limit=2", None, None);
    assert_eq!(status, 200);
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        history["entries"][0]["input"]["type"],
        "customer_subscribes"
    );
    assert!(history["entries"][0]["hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
    let cursor = history["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, rest) = server.admin(
        "GET",
        &format!("/v1/customers/c1/history?cursor={cursor}"),
        None,
        None,
    );
    let statuses: Vec<&str> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert!(statuses.contains(&"needs_review"), "{statuses:?}");

    let (status, _, queue) = server.admin("GET", "/v1/review-queue", None, None);
    assert_eq!(status, 200);
    let item = queue["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _, resolved) = server.admin(
        "POST",
        &format!("/v1/review-queue/{item}/resolve"),
        Some(json!({"action": "discard"})),
        None,
    );
    assert_eq!(
        (status, resolved["resolved"].as_str()),
        (200, Some("discard"))
    );
    assert_eq!(
        server.admin("GET", "/v1/review-queue", None, None).2["items"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    let envelope = |seq: u64, order: &str| {
        json!({"event_id": format!("e{seq}"), "event_type": "OrderCreated", "sequence_number": seq, "idempotency_key": format!("k{seq}"),
            "timestamp_utc": "2026-02-21T14:00:00Z", "source_agent": "shop", "source_region": "eu", "event": {"order_id": order}})
    };
    for (seq, order) in [(1, "o1"), (2, "o2"), (3, "o3")] {
        assert_eq!(
            server
                .admin("POST", "/v1/a2a/messages", Some(envelope(seq, order)), None)
                .0,
            200
        );
    }
    let (status, _, case) = server.admin("GET", "/v1/cases/ProcessOrder-o2", None, None);
    assert_eq!(
        (status, case["spec"].as_str(), case["status"].as_str()),
        (200, Some("ProcessOrder"), Some("running"))
    );
    let (_, _, page) = server.admin(
        "GET",
        "/v1/cases?spec=ProcessOrder&status=running&limit=2",
        None,
        None,
    );
    assert_eq!(page["cases"].as_array().map(Vec::len), Some(2));
    let next = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, page2) = server.admin(
        "GET",
        &format!("/v1/cases?spec=ProcessOrder&limit=2&cursor={next}"),
        None,
        None,
    );
    assert_eq!(page2["cases"][0]["case_id"], "ProcessOrder-o3");
    assert_eq!(
        server
            .admin("GET", "/v1/cases/ProcessOrder-nope", None, None)
            .0,
        404
    );

    let (status, _, stats) = server.admin("GET", "/v1/stats", None, None);
    assert_eq!((status, stats["governors_total"].as_u64()), (200, Some(8)));
    assert!(stats["events_processed"].as_u64().unwrap() >= 7);
}

#[test]
fn gcp_marketplace_notifications_map_onto_the_lifecycle() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let push = |n: Value| {
        let data = base64::engine::general_purpose::STANDARD.encode(n.to_string());
        json!({"message": {"data": data, "messageId": "m", "publishTime": "2026-01-01T00:00:00Z"}, "subscription": "projects/p/subscriptions/s"})
    };
    let post = |n: Value| {
        server.admin(
            "POST",
            "/v1/integrations/gcp-marketplace",
            Some(push(n)),
            None,
        )
    };

    let (status, _, _) = post(
        json!({"eventId": "g1", "eventType": "ACCOUNT_ACTIVE", "providerId": "p", "account": {"id": "acc-1", "updateTime": "t"}}),
    );
    assert_eq!(status, 200);
    let create = json!({"eventId": "g2", "eventType": "ENTITLEMENT_CREATION_REQUESTED", "providerId": "p",
        "entitlement": {"id": "ent-1", "updateTime": "t", "newPlan": "pro", "account": "providers/p/accounts/acc-1"}});
    let (status, head, first) = post(create.clone());
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("completed")),
        "{first}"
    );
    assert!(!head.contains("idempotent-replayed"));
    let (status, head, again) = post(create);
    assert!(
        status == 200 && head.contains("idempotent-replayed: true"),
        "a redelivery is deduplicated by eventId"
    );
    assert_eq!(again, first);

    let (status, _, ignored) =
        post(json!({"eventId": "g3", "eventType": "SOMETHING_NEW", "providerId": "p"}));
    assert_eq!(
        (status, ignored["status"].as_str()),
        (200, Some("ignored")),
        "unknown types are acknowledged, not failed"
    );
    let (status, _, again) =
        post(json!({"eventId": "g3", "eventType": "SOMETHING_NEW", "providerId": "p"}));
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("ignored")),
        "a redelivery of an ignored notification too"
    );

    // An entitlement before its account: parked, then applied when the account becomes active.
    let early = json!({"eventId": "g4", "eventType": "ENTITLEMENT_CREATION_REQUESTED", "providerId": "p",
        "entitlement": {"id": "ent-2", "updateTime": "t", "newPlan": "pro", "account": "providers/p/accounts/acc-2"}});
    let (status, _, parked) = post(early);
    assert_eq!((status, parked["status"].as_str()), (200, Some("parked")));
    assert_eq!(
        server.admin("GET", "/v1/customers/ent-2", None, None).0,
        404
    );
    post(
        json!({"eventId": "g5", "eventType": "ACCOUNT_ACTIVE", "providerId": "p", "account": {"id": "acc-2", "updateTime": "t"}}),
    );
    let (status, _, ent2) = server.admin("GET", "/v1/customers/ent-2", None, None);
    assert_eq!(
        (status, ent2["governors"]["subscription"]["sku"].as_str()),
        (200, Some("pro"))
    );

    // The sandbox connector pays the first charge in the background; then the cancellation runs
    // to the end of the paid period.
    for _ in 0..500 {
        if server.admin("GET", "/v1/customers/ent-1", None, None).2["governors"]["subscription"]
            ["state"]
            == "active"
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _, _) = post(
        json!({"eventId": "g6", "eventType": "ENTITLEMENT_PENDING_CANCELLATION", "providerId": "p",
        "entitlement": {"id": "ent-1", "updateTime": "t", "account": "providers/p/accounts/acc-1"}}),
    );
    assert_eq!(status, 200);
    let (_, _, ent1) = server.admin("GET", "/v1/customers/ent-1", None, None);
    assert_eq!(
        ent1["governors"]["subscription"]["state"],
        "pending_cancellation"
    );
    assert_eq!(
        server
            .admin(
                "POST",
                "/v1/integrations/gcp-marketplace",
                Some(json!({"message": {}})),
                None
            )
            .0,
        400
    );
}

#[test]
fn keys_are_created_through_the_server_or_on_a_stopped_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--server",
            &format!("http://127.0.0.1:{}", server.port),
        ])
        .env("MARKETGOV_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acme = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/stats",
                None,
                &[("Authorization", &format!("Bearer {acme}"))]
            )
            .0,
        200
    );
    assert!(server.stop().success());

    let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args([
            "keys",
            "create",
            "--tenant",
            "beta",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let beta = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let server = Server::start(dir.path());
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/stats",
                None,
                &[("Authorization", &format!("Bearer {beta}"))]
            )
            .0,
        200
    );
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/stats",
                None,
                &[("Authorization", "Bearer mg_not_a_key")]
            )
            .0,
        401
    );
}

#[test]
fn the_config_file_sits_under_the_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (file_port, env_port) = (free(), free());
    let data = dir.path().join("from-file");
    let config = dir.path().join("marketgov.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\ndata_dir = \"{}\"\nshards = 3\n",
            data.display()
        ),
    )
    .unwrap();
    let start = |env_listen: Option<u16>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marketgov"));
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .env("MARKETGOV_ADMIN_KEY", ADMIN)
            .env_remove("MARKETGOV_LISTEN");
        if let Some(p) = env_listen {
            cmd.env("MARKETGOV_LISTEN", format!("127.0.0.1:{p}"));
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let up = |port: u16| {
        (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    };
    let mut from_file = start(None);
    assert!(up(file_port), "the file's listen address is used");
    assert!(
        data.join("marketgov.db").exists(),
        "the file's data_dir is used"
    );
    let _ = from_file.kill();
    let _ = from_file.wait();
    let mut from_env = start(Some(env_port));
    assert!(up(env_port), "the environment beats the file");
    let _ = from_env.kill();
    let _ = from_env.wait();

    std::fs::write(&config, "lisen = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a typo in the file is refused");
}

#[test]
fn every_documented_endpoint_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, _, doc) = server.admin("GET", "/openapi.json", None, None);
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 19, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "x").replace("{sku}", "x");
        for method in ops.as_object().unwrap().keys() {
            let (status, head, _) = server.admin(
                &method.to_uppercase(),
                &concrete,
                Some(json!({})),
                Some("probe"),
            );
            let unrouted =
                status == 405 || (status == 404 && !head.contains("application/problem+json"));
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
}

#[test]
fn metrics_and_the_dashboard_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let (status, head, _) = server.call("GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"));
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server.port)) else {
        panic!()
    };
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.contains("marketgov_events_total 2"), "{text}");
    // Each logged decision was timed to its synced commit.
    assert!(
        text.contains("marketgov_decision_to_durable_seconds_count 2"),
        "{text}"
    );
    assert!(text.contains("marketgov_decision_to_durable_seconds{quantile=\"0.99\"} 0."));
    assert!(text.contains("marketgov_circuit_breaker_open{connector=\"payments\"} 0"));
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server.port)) else {
        panic!()
    };
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    assert!(
        page.contains("text/html")
            && page.contains("/v1/stats")
            && page.contains("/v1/review-queue")
    );
}

/// A stand-in for Google's Procurement API: records `(path, body)` of every POST, answers 200.
/// Requests seen by a stand-in server: `(path, body)`.
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

fn fake_google() -> (String, Calls) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
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
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let path = head
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or_default()
                            .to_owned();
                        log.lock()
                            .unwrap()
                            .push((path, serde_json::from_str(body).unwrap_or(Value::Null)));
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
    });
    (url, seen)
}

#[test]
fn answers_to_google_are_sent_through_the_gcp_procurement_connector() {
    use base64::Engine as _;
    let (google, calls) = fake_google();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--gcp-procurement-url", &google]);
    product(&server, "pro", false);
    product(&server, "gated", true);
    let post = |n: Value| {
        let data = base64::engine::general_purpose::STANDARD.encode(n.to_string());
        server.admin(
            "POST",
            "/v1/integrations/gcp-marketplace",
            Some(json!({"message": {"data": data}, "subscription": "s"})),
            None,
        )
    };
    let wait_for = |path: &str| {
        for _ in 0..500 {
            if let Some(call) = calls.lock().unwrap().iter().find(|(p, _)| p == path) {
                return call.1.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no call to {path}: {:?}", calls.lock().unwrap());
    };
    post(
        json!({"eventId": "a", "eventType": "ACCOUNT_ACTIVE", "providerId": "prov", "account": {"id": "acc-1"}}),
    );
    post(
        json!({"eventId": "b", "eventType": "ENTITLEMENT_CREATION_REQUESTED", "providerId": "prov",
        "entitlement": {"id": "ent-1", "newPlan": "pro", "account": "providers/prov/accounts/acc-1"}}),
    );
    wait_for("/v1/providers/prov/entitlements/ent-1:approve");

    // A plan that needs approval: no answer until an operator approves.
    post(
        json!({"eventId": "c", "eventType": "ENTITLEMENT_CREATION_REQUESTED", "providerId": "prov",
        "entitlement": {"id": "ent-2", "newPlan": "gated", "account": "providers/prov/accounts/acc-1"}}),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !calls
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p.contains("ent-2")),
        "nothing before the approval"
    );
    let approve = json!({"type": "entitlement_approved", "customer_id": "ent-2", "actor": "ops"});
    assert_eq!(
        server
            .admin("POST", "/v1/events", Some(approve), Some("ok-ent-2"))
            .0,
        200
    );
    wait_for("/v1/providers/prov/entitlements/ent-2:approve");

    // A plan change requested by Google is approved back with the pending plan's name.
    for _ in 0..500 {
        if server.admin("GET", "/v1/customers/ent-1", None, None).2["governors"]["subscription"]
            ["state"]
            == "active"
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    post(
        json!({"eventId": "d", "eventType": "ENTITLEMENT_PLAN_CHANGE_REQUESTED", "providerId": "prov",
        "entitlement": {"id": "ent-1", "newPlan": "gated", "account": "providers/prov/accounts/acc-1"}}),
    );
    let body = wait_for("/v1/providers/prov/entitlements/ent-1:approvePlanChange");
    assert_eq!(body["pendingPlanName"], "gated");
    let approvals = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.ends_with("ent-1:approve"))
        .count();
    assert_eq!(approvals, 1, "each answer is sent once");
}

#[test]
fn a_manual_clock_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--clock",
            "manual",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn the_payment_retry_schedule_runs_to_written_off_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    product(&server, "pro", false);
    let sub = json!({"type": "customer_subscribes", "customer_id": "bob-declined", "sku": "pro"});
    assert_eq!(
        server.admin("POST", "/v1/events", Some(sub), Some("s")).0,
        200
    );
    let billing = |s: &Server| {
        s.admin("GET", "/v1/customers/bob-declined", None, None).2["governors"]["billing"]["state"]
            .clone()
    };
    // The sandbox declines every charge of a customer whose id ends in -declined.
    for _ in 0..500 {
        if billing(&server) == "retry_1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(billing(&server), "retry_1");
    for (seconds, expected) in [
        (3600, "retry_2"),
        (3 * 3600, "retry_3"),
        (86_400, "collections"),
    ] {
        let (status, _, _) = server.admin(
            "POST",
            "/v1/admin/clock",
            Some(json!({"advance_seconds": seconds - 1})),
            None,
        );
        assert_eq!(status, 200);
        assert_ne!(billing(&server), expected, "not before its time");
        server.admin(
            "POST",
            "/v1/admin/clock",
            Some(json!({"advance_seconds": 1})),
            None,
        );
        assert_eq!(billing(&server), expected);
    }
    server.admin(
        "POST",
        "/v1/admin/clock",
        Some(json!({"advance_seconds": 7 * 86_400})),
        None,
    );
    let (_, _, customer) = server.admin("GET", "/v1/customers/bob-declined", None, None);
    assert_eq!(customer["governors"]["billing"]["state"], "written_off");
    assert_eq!(customer["governors"]["subscription"]["state"], "expired");
    assert_eq!(customer["governors"]["entitlement"]["state"], "cancelled");
}

#[test]
fn the_bench_runs_over_http_against_a_server_and_checks_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let target = format!("http://127.0.0.1:{}", server.port);
    // Twice against the same server: the second run's customers are new ones.
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
            .args(["bench", "--target", &target, "--customers", "20"])
            .args(["--concurrency", "4", "--json"])
            .env("MARKETGOV_API_KEY", ADMIN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["mode"], "http", "{report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        assert!(report["events"].as_u64().unwrap() >= 20 * 9, "{report}");
        assert!(report["commit_batch_size_mean"].as_f64().unwrap() >= 1.0);
    }
    let (status, _, stats) = server.admin("GET", "/v1/stats", None, None);
    assert_eq!(status, 200);
    assert!(
        stats["events_processed"].as_u64().unwrap() >= 2 * 20 * 8,
        "{stats}"
    );
    server.stop();
}

/// The binary starts itself once more with mimalloc's settings (main.rs), keeping its process
/// id (the settings are read from the very process the caller started and signals).
#[test]
fn the_server_runs_with_the_allocator_settings_and_keeps_its_process_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    for wanted in [
        &b"MIMALLOC_PURGE_DELAY=0"[..],
        b"MIMALLOC_ARENA_EAGER_COMMIT=0",
        b"MARKETGOV_ALLOCATOR_SET=1",
    ] {
        assert!(
            vars.contains(&wanted),
            "{} missing",
            String::from_utf8_lossy(wanted)
        );
    }
    assert!(server.stop().success());
}

#[test]
fn a_new_directory_takes_the_store_asked_for_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--store", "log"]);
    assert!(dir.path().join("log").is_dir(), "a log-structured store");
    assert!(!dir.path().join("marketgov.db").exists());
    product(&server, "pro", false);
    let sub = json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"});
    let (status, _, first) = server.admin("POST", "/v1/events", Some(sub.clone()), Some("k1"));
    assert_eq!((status, first["status"].as_str()), (200, Some("completed")));
    assert!(server.stop().success());

    // Reopened without the flag: the directory's own kind, with what it stored, its index
    // read from where the clean stop kept it instead of scanning the log.
    let server = Server::start(dir.path());
    let (_, _, stats) = server.admin("GET", "/v1/stats", None, None);
    assert_eq!(stats["store_opened"]["full_scan"], json!(false), "{stats}");
    let (status, head, again) = server.admin("POST", "/v1/events", Some(sub), Some("k1"));
    assert_eq!(status, 200);
    assert!(head.contains("idempotent-replayed: true"), "{head}");
    assert_eq!(again, first);
    assert!(!dir.path().join("marketgov.db").exists());
    assert!(server.stop().success());

    // The other kind is refused, by name, and changes nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "sqlite"])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .env("MARKETGOV_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a log store"), "{err}");
    assert!(!dir.path().join("marketgov.db").exists());
}
