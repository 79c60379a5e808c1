//! Durable timers on an injected clock: they fire on time, fire at once when overdue after a
//! restart, and each fires its transition once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::sync::Arc;

use jiff::Timestamp;
use marketgov_core::orchestrator::EventStatus;
use marketgov_engine::{App, Clock, EngineOptions, Error, ManualClock};
use marketgov_store::Store;
use serde_json::json;

mod common;
use common::{command, event};

const HOUR: i64 = 3600;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + seconds).unwrap() // 2026-01-01T00:00:00Z
}

fn options(dir: &std::path::Path, clock: &ManualClock) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    o.clock = Arc::new(clock.clone());
    o.shards = 2;
    o
}

async fn gated_customer(app: &App) {
    app.submit_catalog(
        "t",
        None,
        command(
            json!({"type": "product_submitted", "sku": "gated", "name": "G", "price": 5000,
        "currency": "USD", "billing_period_days": 30, "requires_approval": true}),
        ),
    )
    .await
    .unwrap();
    app.submit_catalog(
        "t",
        None,
        command(json!({"type": "product_published", "sku": "gated", "expected_version": 1})),
    )
    .await
    .unwrap();
    let r = app
        .submit_event(
            "t",
            Some("sub"),
            event(json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "gated"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, EventStatus::Completed);
}

async fn entitlement(app: &App) -> (String, u8) {
    let c = app.customer("t", "c1").await.unwrap().unwrap();
    let e = c.entitlement.unwrap();
    (e.state.as_str().to_owned(), e.escalation_level)
}

fn escalations(app: &App) -> usize {
    app.store()
        .ready_outbox(i64::MAX, 1000)
        .unwrap()
        .iter()
        .filter(|r| r.connector == "escalation")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_exactly_on_time_through_the_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at(0));
    let app = App::open(options(dir.path(), &clock)).unwrap();
    gated_customer(&app).await;

    assert_eq!(
        app.advance_clock_to(at(24 * HOUR - 1)).await.unwrap(),
        0,
        "nothing before 24 h"
    );
    assert_eq!(entitlement(&app).await, ("pending_approval".into(), 0));
    assert_eq!(app.advance_clock_to(at(24 * HOUR)).await.unwrap(), 1);
    assert_eq!(entitlement(&app).await, ("escalated".into(), 1));
    assert_eq!(app.advance_clock_to(at(48 * HOUR)).await.unwrap(), 1);
    assert_eq!(entitlement(&app).await, ("escalated".into(), 2));
    assert_eq!(app.advance_clock_to(at(72 * HOUR - 1)).await.unwrap(), 0);
    assert_eq!(app.advance_clock_to(at(72 * HOUR)).await.unwrap(), 1);
    assert_eq!(entitlement(&app).await, ("active".into(), 2));
    assert!(
        app.store().due_timers(i64::MAX, 10).unwrap().is_empty(),
        "no timer left"
    );
    assert_eq!(escalations(&app), 2, "one escalation per level");
    assert_eq!(clock.now(), at(72 * HOUR));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_timers_fire_at_once_after_a_restart_and_each_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at(0));
    {
        let app = App::open(options(dir.path(), &clock)).unwrap();
        gated_customer(&app).await;
    }
    // Down for 100 hours: all three deadlines passed meanwhile.
    clock.set(at(100 * HOUR));
    let app = loop {
        match App::open(options(dir.path(), &clock)) {
            Ok(app) => break app,
            Err(Error::Store(marketgov_store::Error::Unavailable(_))) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let fired = app.fire_due_timers().await.unwrap();
    assert_eq!(
        fired, 3,
        "level 1, level 2 and the automatic approval, each once"
    );
    assert_eq!(entitlement(&app).await, ("active".into(), 2));
    assert_eq!(escalations(&app), 2);
    assert_eq!(
        app.fire_due_timers().await.unwrap(),
        0,
        "nothing fires twice"
    );

    // A duplicate firing delivered as an event is refused and changes nothing.
    let before = app.customer("t", "c1").await.unwrap();
    let dup = event(
        json!({"type": "timer_fired", "customer_id": "c1", "timer": "approval_escalation", "due_at": at(24 * HOUR).to_string()}),
    );
    let r = app.submit_event("t", None, dup).await.unwrap();
    assert_eq!(r.status, EventStatus::Rejected);
    assert_eq!(app.customer("t", "c1").await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_price_comes_into_force_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at(0));
    let app = App::open(options(dir.path(), &clock)).unwrap();
    app.submit_catalog(
        "t",
        None,
        command(
            json!({"type": "product_submitted", "sku": "pro", "name": "P", "price": 1000,
        "currency": "USD", "billing_period_days": 30}),
        ),
    )
    .await
    .unwrap();
    app.submit_catalog(
        "t",
        None,
        command(json!({"type": "product_published", "sku": "pro", "expected_version": 1})),
    )
    .await
    .unwrap();
    app.submit_catalog(
        "t",
        None,
        command(
            json!({"type": "product_price_changed", "sku": "pro", "expected_version": 2,
        "price": 1500, "effective_at": at(10 * HOUR).to_string()}),
        ),
    )
    .await
    .unwrap();
    let sku = marketgov_core::ids::Sku::new("pro").unwrap();
    assert_eq!(app.product("t", &sku).unwrap().unwrap().price, 1000);
    assert_eq!(app.advance_clock_to(at(10 * HOUR)).await.unwrap(), 1);
    let p = app.product("t", &sku).unwrap().unwrap();
    assert_eq!((p.state.as_str(), p.price), ("published", 1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_clock_cannot_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(EngineOptions::new(dir.path())).unwrap();
    assert!(app.advance_clock_to(at(0)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_of_one_deadline_fire_together_and_deadlines_fire_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at(0));
    let app = App::open(options(dir.path(), &clock)).unwrap();
    common::publish(&app, "t", "pro", 2000, false).await;
    // Forty failed charges: twenty at 00:00 (retry due 01:00), twenty at 00:10 (due 01:10).
    for i in 0..40 {
        if i == 20 {
            clock.set(at(600));
        }
        let c = format!("c{i}");
        app.submit_event("t", None, common::subscribe(&c, "pro"))
            .await
            .unwrap();
        let failed = app
            .submit_event(
                "t",
                None,
                event(json!({"type": "payment_failed", "customer_id": c, "reason": "card_declined", "payment_id": format!("x{i}")})),
            )
            .await
            .unwrap();
        assert_eq!(failed.status, EventStatus::Completed);
    }
    let fired = app.advance_clock_to(at(2 * HOUR)).await.unwrap();
    assert_eq!(fired, 40);
    let mut fired_at = Vec::new();
    for i in 0..40 {
        let c = app.customer("t", &format!("c{i}")).await.unwrap().unwrap();
        assert_eq!(
            c.billing.state.as_str(),
            "processing",
            "c{i}: the retry ran once"
        );
        let history = app
            .store()
            .stream_history(&format!("customer:t/c{i}"), 0, 10)
            .unwrap();
        let firings: Vec<u64> = history
            .iter()
            .filter(|(_, e)| String::from_utf8_lossy(&e.bytes).contains("\"timer_fired\""))
            .map(|(_, e)| e.seq)
            .collect();
        assert_eq!(firings.len(), 1, "c{i}");
        fired_at.push(firings[0]);
    }
    // Every 01:00 firing is in the log before every 01:10 firing.
    let first_deadline_last = fired_at[..20].iter().max().unwrap();
    let second_deadline_first = fired_at[20..].iter().min().unwrap();
    assert!(first_deadline_last < second_deadline_first, "{fired_at:?}");
    assert!(app
        .store()
        .due_timers(at(2 * HOUR).as_millisecond(), 10)
        .unwrap()
        .is_empty());
}
