//! Builders shared by the core's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod walk;

use jiff::Timestamp;
use marketgov_core::orchestrator::{EventResult, EventStatus, Outcome};
use marketgov_core::timeline::{Decided, Timeline};
use marketgov_core::GovernorKind;
use serde_json::json;

/// 2026-01-01T00:00:00Z.
pub fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().expect("valid literal")
}

/// `t0` plus whole seconds.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(t0().as_second() + seconds).expect("in range")
}

pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// Publishes a product: `price` per `period_days`, optional trial and approval.
pub fn publish(
    tl: &mut Timeline,
    sku: &str,
    price: i64,
    period_days: u32,
    trial_days: u32,
    requires_approval: bool,
) {
    let submitted = tl
        .submit_json(
            &json!({"type": "product_submitted", "sku": sku, "name": sku, "price": price, "currency": "USD",
                "billing_period_days": period_days, "trial_days": trial_days,
                "requires_approval": requires_approval, "quotas": {"api_calls": 1000}})
            .to_string(),
        )
        .expect("valid product");
    assert!(submitted.applied(), "{submitted:?}");
    let version = tl
        .catalog
        .values()
        .find(|p| p.sku.as_str() == sku)
        .map(|p| p.version)
        .expect("stored");
    let published = tl
        .submit_json(
            &json!({"type": "product_published", "sku": sku, "expected_version": version})
                .to_string(),
        )
        .expect("valid command");
    assert!(published.applied(), "{published:?}");
}

/// A timeline at `t0` with `basic` (1000/30 d), `pro` (2000/30 d), `gated` (approval) and `trial` (14-day trial).
pub fn market() -> Timeline {
    let mut tl = Timeline::starting_at(t0());
    publish(&mut tl, "basic", 1000, 30, 0, false);
    publish(&mut tl, "pro", 2000, 30, 0, false);
    publish(&mut tl, "gated", 5000, 30, 0, true);
    publish(&mut tl, "trial", 1500, 30, 14, false);
    tl
}

/// Submits a customer event given as JSON and returns its result.
pub fn send(tl: &mut Timeline, value: serde_json::Value) -> EventResult {
    match tl.submit_json(&value.to_string()) {
        Ok(Decided::Customer(result)) => *result,
        other => panic!("expected a customer result for {value}, got {other:?}"),
    }
}

/// The state name of one governor of one customer.
pub fn state(tl: &Timeline, customer: &str, governor: GovernorKind) -> Option<&'static str> {
    tl.customers
        .values()
        .find(|c| c.customer_id.as_str() == customer)
        .and_then(|c| c.state_of(governor))
}

/// The outcome a governor reported.
pub fn outcome(result: &EventResult, governor: GovernorKind) -> Option<Outcome> {
    result
        .governors
        .iter()
        .find(|g| g.governor == governor)
        .map(|g| g.outcome)
}

pub fn assert_status(result: &EventResult, status: EventStatus) {
    assert_eq!(result.status, status, "{result:#?}");
}

/// Subscribes and pays the first charge (products without trial or approval).
pub fn paying_customer(tl: &mut Timeline, customer: &str, sku: &str, price: i64) {
    let r = send(
        tl,
        json!({"type": "customer_subscribes", "customer_id": customer, "sku": sku}),
    );
    assert_status(&r, EventStatus::Completed);
    let r = send(
        tl,
        json!({"type": "payment_processed", "customer_id": customer, "amount": price, "currency": "USD",
            "payment_id": format!("{customer}-first")}),
    );
    assert_status(&r, EventStatus::Completed);
}

/// The amounts of the charges an event asked for.
pub fn charges(result: &EventResult) -> Vec<i64> {
    result
        .effects
        .iter()
        .filter_map(|e| match &e.kind {
            marketgov_core::EffectKind::Charge { amount, .. } => Some(*amount),
            _ => None,
        })
        .collect()
}
