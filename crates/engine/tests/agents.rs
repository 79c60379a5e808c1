//! Agent envelopes on the engine: the durable sequence tracker (processed, gap, duplicate with the
//! first reply, out of order), case launch and update, a refused update that changes nothing,
//! optimistic inventory, and a storage failure that records nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::sync::Arc;

use marketgov_core::cases::{Case, Envelope};
use marketgov_engine::{AgentReply, App, EngineOptions, Error, ManualClock};
use marketgov_store::{Store, VersionedTable};
use marketgov_store_sqlite::{FaultInjector, FaultMode};
use serde_json::{json, Value};

fn envelope(seq: u64, key: &str, event_type: &str, body: Value) -> Envelope {
    serde_json::from_value(json!({
        "event_id": format!("e{seq}"), "event_type": event_type, "sequence_number": seq, "idempotency_key": key,
        "timestamp_utc": "2026-02-21T14:00:00Z", "source_agent": "vendor-agent", "source_region": "us-east1", "event": body,
    }))
    .unwrap()
}

fn app(dir: &std::path::Path) -> App {
    let mut o = EngineOptions::new(dir);
    o.clock = Arc::new(ManualClock::starting_at(
        "2026-02-21T14:00:00Z".parse().unwrap(),
    ));
    App::open(o).unwrap()
}

fn case(app: &App, id: &str) -> Case {
    let (_, body) = app
        .store()
        .versioned(VersionedTable::Cases, &format!("t/{id}"))
        .unwrap()
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_cases_duplicates_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let AgentReply::Ack(first) = app
        .submit_envelope(
            "t",
            envelope(1, "k1", "OrderCreated", json!({"orderId": "o1"})),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (first["status"].as_str(), first["case_id"].as_str()),
        (Some("processed"), Some("ProcessOrder-o1"))
    );

    // A gap is processed and reported.
    let AgentReply::Ack(gap) = app
        .submit_envelope(
            "t",
            envelope(3, "k3", "PaymentAuthorized", json!({"order_id": "o1"})),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (
            gap["gap_detected"].as_bool(),
            gap["expected_sequence"].as_u64()
        ),
        (Some(true), Some(2))
    );
    assert_eq!(first["gap_detected"].as_bool(), Some(false));
    assert_eq!(
        case(&app, "ProcessOrder-o1").state.name(),
        "payment_authorized"
    );

    // The same key again: the first reply, marked duplicate; nothing changes.
    let AgentReply::Ack(dup) = app
        .submit_envelope(
            "t",
            envelope(1, "k1", "OrderCreated", json!({"orderId": "o1"})),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (dup["status"].as_str(), dup["case_id"].as_str()),
        (Some("duplicate"), Some("ProcessOrder-o1"))
    );

    // An unseen key at or below the last accepted sequence is out of order.
    let late = app
        .submit_envelope(
            "t",
            envelope(2, "k2", "OrderShipped", json!({"order_id": "o1"})),
        )
        .await
        .unwrap();
    assert_eq!(late, AgentReply::OutOfOrder { last_accepted: 3 });

    // An update that does not fit the case's state is refused; the case is unchanged.
    let before = case(&app, "ProcessOrder-o1");
    let AgentReply::Refused(refused) = app
        .submit_envelope(
            "t",
            envelope(4, "k4", "OrderShipped", json!({"order_id": "o1"})),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(refused["status"], "rejected");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("payment_authorized"));
    assert_eq!(case(&app, "ProcessOrder-o1"), before);

    // Confirmation reserves stock with an optimistic version.
    app.store()
        .commit(marketgov_store::Commit {
            inventory: vec![marketgov_store::VersionedWrite {
                key: "t/prod-xyz".into(),
                expected_version: 0,
                version: 1,
                body: serde_json::to_vec(
                    &json!({"product_id": "prod-xyz", "available": 10, "version": 1}),
                )
                .unwrap(),
            }],
            ..Default::default()
        })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    app.submit_envelope(
        "t",
        envelope(
            5,
            "k5",
            "OrderConfirmed",
            json!({"order_id": "o1", "product_id": "prod-xyz", "quantity": 4}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(case(&app, "ProcessOrder-o1").state.name(), "reserved");
    let (version, stock) = app
        .store()
        .versioned(VersionedTable::Inventory, "t/prod-xyz")
        .unwrap()
        .unwrap();
    let stock: Value = serde_json::from_slice(&stock).unwrap();
    assert_eq!((version, stock["available"].as_u64()), (2, Some(6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_records_nothing_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = EngineOptions::new(dir.path());
        o.store_fault = Some(FaultInjector::fail_batch(1, FaultMode::LostSync));
        let app = App::open(o).unwrap();
        let failed = app
            .submit_envelope(
                "t",
                envelope(1, "k1", "OrderCreated", json!({"order_id": "o1"})),
            )
            .await;
        assert!(matches!(failed, Err(Error::Store(_))), "{failed:?}");
    }
    let app = loop {
        match App::open(EngineOptions::new(dir.path())) {
            Ok(app) => break app,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert!(
        app.store()
            .versioned(VersionedTable::Sequences, "t/vendor-agent/us-east1")
            .unwrap()
            .is_none(),
        "no sequence recorded"
    );
    let AgentReply::Ack(ack) = app
        .submit_envelope(
            "t",
            envelope(1, "k1", "OrderCreated", json!({"order_id": "o1"})),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        ack["status"], "processed",
        "the retry is processed, not a duplicate"
    );
}
