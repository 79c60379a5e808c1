//! The orchestrator: routes follow SPEC 2.1's table in order, each governor reports once, phases
//! are recorded, an event applies all of its transitions or none, and invalid input decides nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly
mod common;

use common::*;
use marketgov_core::orchestrator::{route, EventStatus, Outcome, Phase};
use marketgov_core::{GovernorKind as G, InputError};
use serde_json::json;

/// SPEC 2.1's table, copied by hand.
const SPEC_ROUTES: &[(&str, &[G])] = &[
    (
        "customer_subscribes",
        &[
            G::Compliance,
            G::CustomerAccount,
            G::Subscription,
            G::Entitlement,
            G::Billing,
            G::QuotaSla,
        ],
    ),
    (
        "customer_upgrades",
        &[G::Subscription, G::Billing, G::Entitlement, G::QuotaSla],
    ),
    (
        "payment_processed",
        &[G::Billing, G::Entitlement, G::CustomerAccount],
    ),
    (
        "payment_failed",
        &[
            G::Billing,
            G::Entitlement,
            G::CustomerAccount,
            G::Compliance,
        ],
    ),
    (
        "usage_exceeds_quota",
        &[
            G::QuotaSla,
            G::Billing,
            G::CustomerAccount,
            G::Entitlement,
            G::MultiTenant,
        ],
    ),
    (
        "customer_cancels",
        &[
            G::Subscription,
            G::Entitlement,
            G::Billing,
            G::CustomerAccount,
            G::Compliance,
        ],
    ),
    (
        "renewal_due",
        &[G::Subscription, G::Billing, G::Entitlement],
    ),
];

#[test]
fn routes_start_with_the_spec_table_in_its_order() {
    for (event, spec) in SPEC_ROUTES {
        let ours = route(event);
        assert_eq!(&ours[..spec.len()], *spec, "{event}");
        assert!(
            ours.len() - spec.len() <= 1,
            "{event}: at most one governor appended"
        );
    }
    let suspension = route("manual_suspension");
    assert_eq!(suspension.len(), 7);
    assert!(!suspension.contains(&G::ProductCatalog));
}

#[test]
fn every_routed_governor_reports_once_in_route_order() {
    let mut tl = market();
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"}),
    );
    let reported: Vec<G> = r.governors.iter().map(|g| g.governor).collect();
    assert_eq!(reported, route("customer_subscribes"));
    assert_eq!(
        r.phases,
        vec![
            Phase::ProcessingEvent,
            Phase::CoordinatingFsms,
            Phase::AwaitingFeedback,
            Phase::CompletingAction,
            Phase::Idle
        ]
    );
    assert!(r.governors.iter().all(|g| g.outcome == Outcome::Success));
}

#[test]
fn a_rejected_event_applies_nothing_and_names_every_reason() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let before = tl.customers.clone();
    // Suspending is refused by the entitlement only after the customer already cancelled now.
    send(
        &mut tl,
        json!({"type": "customer_cancels", "customer_id": "c1", "at_period_end": false}),
    );
    let after_cancel = tl.customers.clone();
    let r = send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "abuse", "actor": "ops"}),
    );
    assert_status(&r, EventStatus::Rejected);
    assert!(r.effects.is_empty() && r.timers.is_empty() && r.next.is_none());
    assert_eq!(
        tl.customers, after_cancel,
        "quota, account and slot would have changed; none did"
    );
    let failed: Vec<G> = r.rejections().map(|(g, _)| g).collect();
    assert!(
        failed.contains(&G::Entitlement) && failed.contains(&G::Subscription),
        "{failed:?}"
    );
    assert!(
        r.phases.contains(&Phase::ErrorRecovery) && !r.phases.contains(&Phase::CompletingAction)
    );
    assert_ne!(before, after_cancel);
}

#[test]
fn subscribing_to_an_unpublished_or_unknown_sku_is_refused() {
    let mut tl = market();
    tl.submit_json(&json!({"type": "product_submitted", "sku": "draft-only", "name": "D", "price": 1, "currency": "USD", "billing_period_days": 30}).to_string()).unwrap();
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "draft-only"}),
    );
    assert_status(&r, EventStatus::Rejected);
    assert!(r
        .rejections()
        .any(|(_, rej)| rej.code() == "product_not_published"));
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "ghost"}),
    );
    assert!(r
        .rejections()
        .any(|(_, rej)| rej.code() == "unknown_product"));
    assert!(
        tl.customers.is_empty(),
        "nothing stored for a refused first event"
    );
}

#[test]
fn a_replayed_payment_changes_nothing_and_a_mismatch_is_refused() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let c = tl.customers.values().next().cloned().unwrap();
    let r = send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 2000, "currency": "USD", "payment_id": "c1-first"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert!(r
        .governors
        .iter()
        .all(|g| g.outcome == Outcome::NotApplicable));
    let after = tl.customers.values().next().cloned().unwrap();
    assert_eq!(
        (after.billing.clone(), after.subscription.clone()),
        (c.billing.clone(), c.subscription.clone())
    );
    let r = send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 1999, "currency": "USD", "payment_id": "c1-first"}),
    );
    assert_status(&r, EventStatus::Rejected);
    assert!(r
        .rejections()
        .any(|(g, rej)| g == G::Billing && rej.code() == "payment_amount_mismatch"));
}

#[test]
fn invalid_input_is_a_typed_error_and_decides_nothing() {
    let mut tl = market();
    let before = tl.clone();
    let err = tl.submit_json(&json!({"type": "payment_processed", "customer_id": "c1", "amount": -1, "currency": "USD", "payment_id": "p"}).to_string());
    assert_eq!(
        err,
        Err(InputError::NegativeAmount {
            field: "amount",
            amount: -1
        })
    );
    let err = tl.submit_json(
        &json!({"type": "customer_subscribes", "customer_id": "x".repeat(129), "sku": "pro"})
            .to_string(),
    );
    assert!(matches!(
        err,
        Err(InputError::TooLong {
            field: "customer_id",
            ..
        })
    ));
    assert_eq!(tl, before);
}

#[test]
fn a_timer_fires_once_and_a_stale_firing_is_refused() {
    let mut tl = market();
    send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "gated"}),
    );
    let due = at(24 * HOUR);
    let fire = json!({"type": "timer_fired", "customer_id": "c1", "timer": "approval_escalation", "due_at": due.to_string()});
    assert_status(&send(&mut tl, fire.clone()), EventStatus::Completed);
    let again = send(&mut tl, fire);
    assert_status(&again, EventStatus::Rejected);
    assert!(again
        .rejections()
        .any(|(_, r)| r.code() == "timer_not_pending"));
}

#[test]
fn effect_keys_derive_from_the_event_id() {
    let mut tl = market();
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"}),
    );
    for (i, e) in r.effects.iter().enumerate() {
        assert_eq!(e.idempotency_key, format!("{}:{i}", r.event_id));
    }
    let wire = serde_json::to_value(&r).unwrap();
    let charge = wire["effects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "charge")
        .unwrap();
    assert_eq!(
        (charge["amount"].as_i64(), charge["currency"].as_str()),
        (Some(2000), Some("USD"))
    );
    assert_eq!(wire["status"], "completed");
    assert_eq!(wire["governors"][0]["governor"], "compliance");
}
