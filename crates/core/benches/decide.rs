//! Microbenchmarks of the pure core: one governor's decision, and one event through the whole
//! orchestrator (eight governors, conflicts, effects, timers). Run with
//! `cargo bench -p marketgov-core --bench decide`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup fails loudly

use std::collections::BTreeMap;

use marketgov_core::governors::billing::{self, BillingInput};
use marketgov_core::governors::product_catalog::Product;
use marketgov_core::ids::{PaymentId, Sku};
use marketgov_core::money::Currency;
use marketgov_core::orchestrator::{decide_catalog, decide_event, EventContext};
use marketgov_core::{CatalogCommand, Customer, CustomerEvent, Input};
use serde_json::json;

fn main() {
    divan::main();
}

fn ctx(n: u32) -> EventContext {
    EventContext {
        event_id: format!("evt-{n}"),
        now: "2026-01-01T00:00:00Z".parse().unwrap(),
    }
}

fn catalog() -> BTreeMap<Sku, Product> {
    let mut product = None;
    for (n, value) in [
        json!({"type": "product_submitted", "sku": "pro", "name": "Pro", "price": 2000,
            "currency": "USD", "billing_period_days": 30, "quotas": {"api": 1000}}),
        json!({"type": "product_published", "sku": "pro", "expected_version": 1}),
    ]
    .into_iter()
    .enumerate()
    {
        let Input::Catalog(command) = Input::from_value(value).unwrap() else {
            panic!("not a catalog command")
        };
        let command: CatalogCommand = command;
        product = decide_catalog(product.as_ref(), &command, &ctx(n as u32))
            .unwrap()
            .next
            .or(product);
    }
    let product = product.unwrap();
    BTreeMap::from([(product.sku.clone(), product)])
}

fn event(value: serde_json::Value) -> CustomerEvent {
    match Input::from_value(value).unwrap() {
        Input::Customer(e) => e,
        Input::Catalog(_) => panic!("not a customer event"),
    }
}

/// A customer just subscribed to `pro`, its first invoice open.
fn subscribed(catalog: &BTreeMap<Sku, Product>) -> Customer {
    let subscribe =
        event(json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"}));
    decide_event(None, &subscribe, catalog, &ctx(10))
        .unwrap()
        .next
        .unwrap()
}

/// The billing governor alone settles the open invoice.
#[divan::bench]
fn one_governor_decision(bencher: divan::Bencher) {
    let catalog = catalog();
    let customer = subscribed(&catalog);
    let input = BillingInput::PaymentProcessed {
        amount: 2000,
        currency: Currency::new("USD").unwrap(),
        payment_id: PaymentId::new("p1").unwrap(),
    };
    let now = ctx(11).now;
    bencher.bench_local(|| billing::decide(divan::black_box(&customer.billing), &input, now));
}

/// A payment through the orchestrator: every governor it routes to, the conflict checks, the
/// effects and the result.
#[divan::bench]
fn one_orchestrated_event(bencher: divan::Bencher) {
    let catalog = catalog();
    let customer = subscribed(&catalog);
    let pay = event(
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 2000,
        "currency": "USD", "payment_id": "p1"}),
    );
    let ctx = ctx(11);
    bencher.bench_local(|| decide_event(Some(divan::black_box(&customer)), &pay, &catalog, &ctx));
}

/// An upgrade with proration: the heaviest common decision.
#[divan::bench]
fn one_orchestrated_upgrade(bencher: divan::Bencher) {
    let mut catalog = catalog();
    let mut basic = catalog.values().next().unwrap().clone();
    basic.sku = Sku::new("basic").unwrap();
    basic.price = 1000;
    catalog.insert(basic.sku.clone(), basic);
    let subscribe =
        event(json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "basic"}));
    let customer = decide_event(None, &subscribe, &catalog, &ctx(10))
        .unwrap()
        .next
        .unwrap();
    let pay = event(
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 1000,
        "currency": "USD", "payment_id": "p1"}),
    );
    let customer = decide_event(Some(&customer), &pay, &catalog, &ctx(11))
        .unwrap()
        .next
        .unwrap();
    let upgrade = event(json!({"type": "customer_upgrades", "customer_id": "c1",
        "old_sku": "basic", "new_sku": "pro"}));
    let ctx = ctx(12);
    bencher
        .bench_local(|| decide_event(Some(divan::black_box(&customer)), &upgrade, &catalog, &ctx));
}
