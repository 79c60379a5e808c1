//! The outbox and the sandbox connector: effects committed with their decisions are applied once
//! each, their results come back as events, a redelivery applies nothing twice, and a failing
//! receiver is retried with deterministic backoff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::sync::Arc;

use jiff::Timestamp;
use marketgov_engine::{App, EngineOptions, ManualClock};
use marketgov_store::Store;

mod common;
use common::subscribe;

fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(1_767_225_600_000 + ms).unwrap()
}

async fn app(dir: &std::path::Path, clock: &ManualClock) -> App {
    let mut o = EngineOptions::new(dir);
    o.clock = Arc::new(clock.clone());
    o.shards = 2;
    let app = App::open(o).unwrap();
    common::publish(&app, "t", "pro", 2000, false).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_is_applied_once_and_its_result_comes_back_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at_ms(0));
    let app = app(dir.path(), &clock).await;
    app.submit_event("t", Some("s1"), subscribe("alice", "pro"))
        .await
        .unwrap();
    app.submit_event("t", Some("s2"), subscribe("bob-declined", "pro"))
        .await
        .unwrap();
    assert!(app.run_effects().await.unwrap() >= 4);
    let alice = app.customer("t", "alice").await.unwrap().unwrap();
    assert_eq!(
        (
            alice.billing.state.as_str(),
            alice.subscription.unwrap().state.as_str()
        ),
        ("current", "active")
    );
    let bob = app.customer("t", "bob-declined").await.unwrap().unwrap();
    assert_eq!(
        bob.billing.state.as_str(),
        "retry_1",
        "the sandbox declined bob's charge"
    );
    // Every delivered effect was applied exactly once.
    let ledger = app.sandbox().ledger().unwrap();
    assert!(!ledger.is_empty());
    assert!(
        ledger
            .iter()
            .all(|(_, applied, delivered)| *applied == 1 && *delivered == 1),
        "{ledger:?}"
    );
    // The result events asked for effects of their own (bob's failure notice); run those too.
    while app.run_effects().await.unwrap() > 0 {}
    assert!(
        app.store().ready_outbox(i64::MAX, 100).unwrap().is_empty(),
        "every effect settled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_effect_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at_ms(0));
    let app = app(dir.path(), &clock).await;
    app.submit_event("t", Some("s1"), subscribe("alice", "pro"))
        .await
        .unwrap();
    // A delivery whose "done" mark was lost (as if the process died right after delivering).
    let charge = app
        .store()
        .ready_outbox(i64::MAX, 100)
        .unwrap()
        .into_iter()
        .find(|r| r.connector == "payments")
        .unwrap();
    let effect: marketgov_core::orchestrator::Effect =
        serde_json::from_slice(&charge.body).unwrap();
    app.sandbox()
        .deliver("alice", &effect, &charge.body)
        .unwrap();
    app.run_effects().await.unwrap();
    let ledger = app.sandbox().ledger().unwrap();
    let row = ledger
        .iter()
        .find(|(k, _, _)| *k == charge.effect_key)
        .unwrap();
    assert_eq!((row.1, row.2), (1, 2), "delivered twice, applied once");
    let alice = app.customer("t", "alice").await.unwrap().unwrap();
    assert_eq!(
        (alice.billing.state.as_str(), alice.billing.credit),
        ("current", 0),
        "paid once, no double credit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_deterministic_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at_ms(0));
    let app = app(dir.path(), &clock).await;
    app.submit_event("t", Some("s1"), subscribe("carol-unreachable", "pro"))
        .await
        .unwrap();
    app.run_effects().await.unwrap();
    let rows = app.store().ready_outbox(i64::MAX, 100).unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.attempts == 1),
        "{rows:?}"
    );
    for r in &rows {
        let wait = r.next_attempt_ms - at_ms(0).as_millisecond();
        let expected = marketgov_core::backoff::jittered_delay_ms(1, &r.effect_key, 60_000) as i64;
        assert_eq!(
            wait, expected,
            "deterministic: 100 ms * 2^1 with jitter from the key"
        );
        assert!((100..=200).contains(&wait));
    }
    assert_eq!(
        app.run_effects().await.unwrap(),
        0,
        "nothing ready before the backoff"
    );
    clock.set(at_ms(200));
    assert_eq!(app.run_effects().await.unwrap(), rows.len());
    assert!(app
        .store()
        .ready_outbox(i64::MAX, 100)
        .unwrap()
        .iter()
        .all(|r| r.attempts == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connector_opens_its_breaker_and_holds_deliveries_until_the_cool_down() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at_ms(0));
    let app = app(dir.path(), &clock).await;
    for i in 0..6 {
        app.submit_event(
            "t",
            Some(&format!("s{i}")),
            subscribe(&format!("u{i}-unreachable"), "pro"),
        )
        .await
        .unwrap();
    }
    app.run_effects().await.unwrap();
    assert_eq!(
        app.breaker_state("payments"),
        "open",
        "six failed charges in a row"
    );
    // Past every backoff, but inside the 30 s cool-down: deliveries are held, not attempted.
    clock.set(at_ms(1_000));
    app.run_effects().await.unwrap();
    let charges: Vec<_> = app
        .store()
        .ready_outbox(i64::MAX, 100)
        .unwrap()
        .into_iter()
        .filter(|r| r.connector == "payments")
        .collect();
    assert_eq!(charges.len(), 6);
    // Each charge was attempted at most once (the breaker opened while the first round ran);
    // holding it during the cool-down is not an attempt.
    assert!(
        charges.iter().all(|r| r.attempts <= 1),
        "{:?}",
        charges.iter().map(|r| r.attempts).collect::<Vec<_>>()
    );
    assert!(
        charges
            .iter()
            .all(|r| r.next_attempt_ms >= at_ms(30_000).as_millisecond()),
        "held until the cool-down ends"
    );
    // After the cool-down one probe goes; it fails, so the breaker opens again.
    let before: u32 = charges.iter().map(|r| r.attempts).sum();
    clock.set(at_ms(40_000));
    app.run_effects().await.unwrap();
    let after: u32 = app
        .store()
        .ready_outbox(i64::MAX, 100)
        .unwrap()
        .iter()
        .filter(|r| r.connector == "payments")
        .map(|r| r.attempts)
        .sum();
    assert_eq!(after, before + 1, "one probe");
    assert_eq!(app.breaker_state("payments"), "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_held_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(at_ms(0));
    let mut o = EngineOptions::new(dir.path());
    o.clock = Arc::new(clock.clone());
    o.tenant_effects_per_second = 1;
    o.tenant_effects_burst = 2;
    let app = App::open(o).unwrap();
    common::publish(&app, "t", "pro", 2000, false).await;
    app.submit_event("t", Some("s1"), subscribe("alice", "pro"))
        .await
        .unwrap(); // four effects
    app.run_effects().await.unwrap();
    assert_eq!(
        app.sandbox().ledger().unwrap().len(),
        2,
        "the burst of two went"
    );
    let held: Vec<_> = app.store().ready_outbox(i64::MAX, 10).unwrap();
    assert_eq!(held.len(), 2);
    assert!(held
        .iter()
        .all(|r| r.attempts == 0 && r.next_attempt_ms > at_ms(0).as_millisecond()));
    clock.set(at_ms(2_000));
    app.run_effects().await.unwrap();
    assert_eq!(
        app.sandbox().ledger().unwrap().len(),
        4,
        "refilled at one per second"
    );
}
