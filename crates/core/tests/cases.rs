//! Workflow cases and the sequence tracker (SPEC 2.4): launches, updates that fit, updates that do
//! not (refused, case unchanged), optimistic inventory, and the sequence verdicts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::collections::BTreeMap;

use marketgov_core::cases::{
    decide_envelope, AgentEventType as T, Case, CaseRejection, CaseState as S, CaseStatus,
    Envelope, Inventory,
};
use marketgov_core::InputError;
use serde_json::json;

fn envelope(event_type: T, seq: u64, body: serde_json::Value) -> Envelope {
    Envelope {
        event_id: format!("e{seq}"),
        event_type,
        sequence_number: seq,
        idempotency_key: format!("k{seq}"),
        timestamp_utc: "2026-02-21T14:00:00Z".parse().unwrap(),
        source_agent: "vendor-agent".into(),
        source_region: "us-east1".into(),
        event: body.as_object().cloned().unwrap(),
    }
}

/// Applies an envelope to a case store the way the engine will: all cases or none.
fn apply(
    store: &mut BTreeMap<String, Case>,
    stock: &mut Option<Inventory>,
    env: &Envelope,
) -> Result<String, CaseRejection> {
    env.validate().unwrap();
    let known: BTreeMap<String, Case> = env
        .case_ids()
        .into_iter()
        .filter_map(|id| store.get(&id).map(|c| (id, c.clone())))
        .collect();
    let decision = decide_envelope(env, &known, stock.as_ref())?;
    for (case, read_version) in decision.cases {
        assert_eq!(
            store.get(&case.case_id).map(|c| c.version),
            read_version,
            "optimistic version"
        );
        store.insert(case.case_id.clone(), case);
    }
    if let Some((inv, read)) = decision.inventory {
        assert_eq!(stock.as_ref().map(|s| s.version), Some(read));
        *stock = Some(inv);
    }
    Ok(decision.case_id)
}

#[test]
fn process_order_runs_from_pending_to_completed_and_keeps_its_data() {
    let mut store = BTreeMap::new();
    let mut stock = Some(Inventory {
        product_id: "prod-xyz".into(),
        available: 10,
        version: 3,
    });
    let id = apply(
        &mut store,
        &mut stock,
        &envelope(
            T::OrderCreated,
            1,
            json!({"orderId": "order-123", "vendorId": "v1", "quantity": 5}),
        ),
    )
    .unwrap();
    assert_eq!(id, "ProcessOrder-order-123");
    assert_eq!(store[&id].state, S::Pending);
    let steps = [
        (
            T::PaymentAuthorized,
            json!({"order_id": "order-123", "authorizationId": "auth-789"}),
            S::PaymentAuthorized,
        ),
        (
            T::OrderConfirmed,
            json!({"order_id": "order-123", "product_id": "prod-xyz", "quantity": 5}),
            S::Reserved,
        ),
        (
            T::PaymentCaptured,
            json!({"order_id": "order-123", "captureId": "capt-101"}),
            S::Captured,
        ),
        (
            T::OrderShipped,
            json!({"order_id": "order-123", "carrier": "FedEx"}),
            S::Shipped,
        ),
        (
            T::OrderDelivered,
            json!({"order_id": "order-123", "deliveredAt": "2026-02-21T14:50:00Z"}),
            S::Completed,
        ),
    ];
    for (n, (t, body, state)) in steps.into_iter().enumerate() {
        apply(&mut store, &mut stock, &envelope(t, n as u64 + 2, body)).unwrap();
        assert_eq!(store[&id].state, state, "{t:?}");
    }
    let case = &store[&id];
    assert_eq!(case.status, CaseStatus::Completed);
    assert_eq!(case.data["carrier"], "FedEx");
    assert_eq!(case.data["vendorId"], "v1");
    let path: Vec<S> = case.history.iter().map(|h| h.to).collect();
    assert_eq!(
        path,
        vec![
            S::Pending,
            S::PaymentAuthorized,
            S::Reserved,
            S::Captured,
            S::Shipped,
            S::Delivered,
            S::Completed
        ]
    );
    assert_eq!(stock.map(|s| (s.available, s.version)), Some((5, 4)));
}

#[test]
fn an_update_that_does_not_fit_is_refused_and_the_case_is_unchanged() {
    let mut store = BTreeMap::new();
    let mut stock = None;
    apply(
        &mut store,
        &mut stock,
        &envelope(T::OrderCreated, 1, json!({"order_id": "o1"})),
    )
    .unwrap();
    let before = store.clone();
    let err = apply(
        &mut store,
        &mut stock,
        &envelope(T::OrderShipped, 2, json!({"order_id": "o1"})),
    )
    .unwrap_err();
    assert_eq!(
        err,
        CaseRejection::InvalidTransition {
            case_id: "ProcessOrder-o1".into(),
            state: "pending".into(),
            event_type: "OrderShipped".into()
        }
    );
    assert_eq!(store, before);
    assert!(matches!(
        apply(
            &mut store,
            &mut stock,
            &envelope(T::OrderCreated, 3, json!({"order_id": "o1"}))
        ),
        Err(CaseRejection::CaseExists { .. })
    ));
    assert!(matches!(
        apply(
            &mut store,
            &mut stock,
            &envelope(T::PaymentCaptured, 4, json!({"order_id": "nope"}))
        ),
        Err(CaseRejection::UnknownCase { .. })
    ));
}

#[test]
fn confirming_without_stock_cancels_the_order_and_a_failed_payment_launches_its_case() {
    let mut store = BTreeMap::new();
    let mut stock = Some(Inventory {
        product_id: "p".into(),
        available: 1,
        version: 0,
    });
    apply(
        &mut store,
        &mut stock,
        &envelope(T::OrderCreated, 1, json!({"order_id": "o1"})),
    )
    .unwrap();
    apply(
        &mut store,
        &mut stock,
        &envelope(T::PaymentAuthorized, 2, json!({"order_id": "o1"})),
    )
    .unwrap();
    apply(
        &mut store,
        &mut stock,
        &envelope(
            T::OrderConfirmed,
            3,
            json!({"order_id": "o1", "product_id": "p", "quantity": 2}),
        ),
    )
    .unwrap();
    assert_eq!(store["ProcessOrder-o1"].status, CaseStatus::Cancelled);
    assert_eq!(
        stock.as_ref().map(|s| s.available),
        Some(1),
        "nothing reserved"
    );

    apply(
        &mut store,
        &mut stock,
        &envelope(T::OrderCreated, 4, json!({"order_id": "o2"})),
    )
    .unwrap();
    let id = apply(
        &mut store,
        &mut stock,
        &envelope(
            T::PaymentFailed,
            5,
            json!({"order_id": "o2", "reason": "declined"}),
        ),
    )
    .unwrap();
    assert_eq!(id, "HandlePaymentFailure-o2");
    assert_eq!(store["ProcessOrder-o2"].status, CaseStatus::Failed);
    apply(
        &mut store,
        &mut stock,
        &envelope(T::PaymentAuthorized, 6, json!({"order_id": "o2"})),
    )
    .unwrap();
    assert_eq!(store["HandlePaymentFailure-o2"].state, S::Recovered);
}

#[test]
fn vendor_and_payout_cases() {
    let mut store = BTreeMap::new();
    let mut stock = None;
    apply(
        &mut store,
        &mut stock,
        &envelope(T::VendorOnboarded, 1, json!({"vendor_id": "v1"})),
    )
    .unwrap();
    apply(
        &mut store,
        &mut stock,
        &envelope(T::VendorVerified, 2, json!({"vendor_id": "v1"})),
    )
    .unwrap();
    assert_eq!(store["OnboardVendor-v1"].state, S::Verified);
    apply(
        &mut store,
        &mut stock,
        &envelope(T::VendorSuspended, 3, json!({"vendor_id": "v1"})),
    )
    .unwrap();
    apply(
        &mut store,
        &mut stock,
        &envelope(T::VendorVerified, 4, json!({"vendor_id": "v1"})),
    )
    .unwrap();
    assert_eq!(store["HandleVendorSuspension-v1"].state, S::Reinstated);
    apply(
        &mut store,
        &mut stock,
        &envelope(
            T::PayoutInitiated,
            5,
            json!({"payout_id": "po1", "amount": 100}),
        ),
    )
    .unwrap();
    apply(
        &mut store,
        &mut stock,
        &envelope(
            T::PayoutInitiated,
            6,
            json!({"payout_id": "po1", "status": "paid"}),
        ),
    )
    .unwrap();
    assert_eq!(store["ProcessPayout-po1"].status, CaseStatus::Completed);
}

#[test]
fn envelopes_are_validated() {
    let mut e = envelope(T::OrderCreated, 1, json!({"order_id": "o1"}));
    e.sequence_number = 0;
    assert!(matches!(
        e.validate(),
        Err(InputError::OutOfRange {
            field: "sequence_number",
            ..
        })
    ));
    let e = envelope(T::OrderCreated, 1, json!({"nothing": 1}));
    assert_eq!(e.validate(), Err(InputError::Empty { field: "order_id" }));
    let mut e = envelope(T::OrderCreated, 1, json!({"order_id": "o1"}));
    e.idempotency_key = "k".repeat(256);
    assert!(matches!(
        e.validate(),
        Err(InputError::TooLong {
            field: "idempotency_key",
            ..
        })
    ));
    let e = envelope(
        T::OrderConfirmed,
        1,
        json!({"order_id": "o1", "quantity": 0}),
    );
    assert!(e.validate().is_err());
}

#[test]
fn envelopes_parse_from_the_wire_with_typed_errors() {
    let text = r#"{"event_id":"e1","event_type":"OrderCreated","sequence_number":1,"idempotency_key":"k1",
        "timestamp_utc":"2026-02-21T14:00:00Z","source_agent":"vendor-agent","source_region":"us-east1",
        "event":{"orderId":"order-123","quantity":5}}"#;
    let e = Envelope::from_json(text).unwrap();
    assert_eq!(
        (e.event_type, e.case_ids()[0].as_str()),
        (T::OrderCreated, "ProcessOrder-order-123")
    );
    assert!(matches!(
        Envelope::from_json(&text.replace("OrderCreated", "OrderExploded")),
        Err(InputError::Malformed { .. })
    ));
    assert!(matches!(
        Envelope::from_json(&text.replace("\"e1\"", "\"e 1\"")),
        Err(InputError::BadCharacter {
            field: "event_id",
            ..
        })
    ));
}
