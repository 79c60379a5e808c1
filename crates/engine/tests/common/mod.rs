//! Builders shared by the engine's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use marketgov_core::orchestrator::EventStatus;
use marketgov_core::{CatalogCommand, CustomerEvent, Input};
use marketgov_engine::App;
use serde_json::json;

/// A customer event from JSON (must be valid).
pub fn event(value: serde_json::Value) -> CustomerEvent {
    match Input::from_value(value).unwrap() {
        Input::Customer(e) => e,
        other => panic!("not a customer event: {other:?}"),
    }
}

/// A catalog command from JSON (must be valid).
pub fn command(value: serde_json::Value) -> CatalogCommand {
    match Input::from_value(value).unwrap() {
        Input::Catalog(c) => c,
        other => panic!("not a catalog command: {other:?}"),
    }
}

/// Submits and publishes a 30-day product for `tenant`.
pub async fn publish(app: &App, tenant: &str, sku: &str, price: i64, requires_approval: bool) {
    let submitted = command(
        json!({"type": "product_submitted", "sku": sku, "name": sku, "price": price,
        "currency": "USD", "billing_period_days": 30, "requires_approval": requires_approval}),
    );
    let r = app.submit_catalog(tenant, None, submitted).await.unwrap();
    assert_eq!(r.status, EventStatus::Completed, "{:?}", r.body());
    let r = app
        .submit_catalog(
            tenant,
            None,
            command(json!({"type": "product_published", "sku": sku, "expected_version": 1})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, EventStatus::Completed, "{:?}", r.body());
}

/// `customer` subscribes to `sku`.
pub fn subscribe(customer: &str, sku: &str) -> CustomerEvent {
    event(json!({"type": "customer_subscribes", "customer_id": customer, "sku": sku}))
}
