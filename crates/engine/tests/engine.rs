//! The durable engine on the embedded store: restart equality, idempotency exactly as SPEC 1.4,
//! supervision of a panicking decision, refusal when full, and a verifying audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::CustomerEvent;
use marketgov_engine::{App, EngineOptions, Error, ManualClock};
use marketgov_store::Store;
use marketgov_store_sqlite::{FaultInjector, FaultMode};
use serde_json::json;

mod common;
use common::{command, event, publish, subscribe};

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn options(dir: &std::path::Path, clock: &ManualClock) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    o.clock = Arc::new(clock.clone());
    o.shards = 4;
    o.snapshot_every_events = 3;
    o.checkpoint_every_entries = 5;
    o
}

fn pay(customer: &str, amount: i64, id: &str) -> CustomerEvent {
    event(
        json!({"type": "payment_processed", "customer_id": customer, "amount": amount, "currency": "USD", "payment_id": id}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_after_restart_equals_state_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let before = {
        let app = App::open(options(dir.path(), &clock)).unwrap();
        publish(&app, "t1", "pro", 2000, false).await;
        publish(&app, "t1", "gated", 5000, true).await;
        for c in ["c1", "c2", "c3"] {
            app.submit_event(
                "t1",
                Some(&format!("sub-{c}")),
                subscribe(c, if c == "c3" { "gated" } else { "pro" }),
            )
            .await
            .unwrap();
        }
        app.submit_event("t1", Some("pay-c1"), pay("c1", 2000, "p1"))
            .await
            .unwrap();
        for n in 0..5 {
            let usage = event(
                json!({"type": "usage_exceeds_quota", "customer_id": "c1", "resource": "api", "current_usage": 500 + n * 200, "limit": 1000}),
            );
            app.submit_event("t1", None, usage).await.unwrap();
        }
        let mut states = Vec::new();
        for c in ["c1", "c2", "c3"] {
            states.push(app.customer("t1", c).await.unwrap().unwrap());
        }
        states
    };
    // Give the dropped shards a moment to release the store (the lock is per process, but the
    // writer thread ends when the last handle goes).
    let app = reopen(dir.path(), &clock).await;
    for (c, expected) in ["c1", "c2", "c3"].iter().zip(before) {
        assert_eq!(app.customer("t1", c).await.unwrap(), Some(expected), "{c}");
    }
    let timers = app.store().due_timers(i64::MAX, 10).unwrap();
    assert!(
        timers
            .iter()
            .any(|t| t.stream == "customer:t1/c3" && t.kind == "approval_escalation"),
        "{timers:?}"
    );
    let report = app.audit_verify().unwrap();
    assert!(report.ok && report.entries > 0, "{report:?}");
}

async fn reopen(dir: &std::path::Path, clock: &ManualClock) -> App {
    for _ in 0..100 {
        match App::open(options(dir, clock)) {
            Ok(app) => return app,
            Err(Error::Store(marketgov_store::Error::Unavailable(_))) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the store was never released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_with_the_same_key_replays_the_first_result_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let app = App::open(options(dir.path(), &clock)).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    let first = app
        .submit_event("t1", Some("k-sub"), subscribe("c1", "pro"))
        .await
        .unwrap();
    assert!(!first.replayed);
    let events_before = app.store().stats().unwrap().events;
    let again = app
        .submit_event("t1", Some("k-sub"), subscribe("c1", "pro"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        again.body(),
        first.body(),
        "identical body, receipt included"
    );
    assert_eq!(again.json(), first.json(), "the same bytes, as logged");
    assert_eq!(
        app.store().stats().unwrap().events,
        events_before,
        "nothing new logged"
    );
    assert!(first.body()["receipt"]["seq"].as_u64().is_some());

    // Other content, or another operation, with the same key: an error that changes nothing.
    assert!(matches!(
        app.submit_event("t1", Some("k-sub"), subscribe("c2", "pro"))
            .await,
        Err(Error::KeyReused { .. })
    ));
    let cmd = command(json!({"type": "product_deprecated", "sku": "pro", "expected_version": 2}));
    assert!(matches!(
        app.submit_catalog("t1", Some("k-sub"), cmd).await,
        Err(Error::KeyReused { .. })
    ));
    assert_eq!(app.customer("t1", "c2").await.unwrap(), None);
    // Keys are scoped per tenant.
    publish(&app, "t2", "pro", 2000, false).await;
    let other = app
        .submit_event("t2", Some("k-sub"), subscribe("c1", "pro"))
        .await
        .unwrap();
    assert!(!other.replayed);
    // Oversized keys are refused.
    assert!(matches!(
        app.submit_event("t1", Some(&"k".repeat(256)), subscribe("c9", "pro"))
            .await,
        Err(Error::BadKey)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_memory_and_one_from_the_store_answer_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let (first, from_memory) = {
        let app = App::open(options(dir.path(), &clock)).unwrap();
        publish(&app, "t1", "pro", 2000, false).await;
        let first = app
            .submit_event("t1", Some("k-sub"), subscribe("c1", "pro"))
            .await
            .unwrap();
        let again = app
            .submit_event("t1", Some("k-sub"), subscribe("c1", "pro"))
            .await
            .unwrap();
        assert_eq!(app.stats().unwrap()["recent_replies"]["answered"], 1);
        (first, again)
    };
    // A new process remembers nothing in memory: the store answers.
    let app = reopen(dir.path(), &clock).await;
    let from_store = app
        .submit_event("t1", Some("k-sub"), subscribe("c1", "pro"))
        .await
        .unwrap();
    assert_eq!(app.stats().unwrap()["recent_replies"]["answered"], 0);
    assert!(from_memory.replayed && from_store.replayed);
    assert_eq!(from_memory.json(), first.json());
    assert_eq!(from_store.json(), first.json());
    assert_eq!(from_memory.status, from_store.status);
    // The store's answer is remembered too: other content under the key is refused either way.
    assert!(matches!(
        app.submit_event("t1", Some("k-sub"), subscribe("c2", "pro"))
            .await,
        Err(Error::KeyReused { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_runs_again_and_invalid_input_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let app = App::open(options(dir.path(), &clock)).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    app.submit_event("t1", Some("k"), pay("c1", 100, "p1"))
        .await
        .unwrap();
    clock.set(Timestamp::from_second(t0().as_second() + 24 * 3600).unwrap());
    let reused = app
        .submit_event("t1", Some("k"), pay("c1", 200, "p2"))
        .await
        .unwrap();
    assert!(
        !reused.replayed,
        "the 24 h window has passed: the key is free again"
    );
    assert_eq!(
        app.customer("t1", "c1")
            .await
            .unwrap()
            .unwrap()
            .billing
            .credit,
        300
    );

    // Invalid input is refused before the key is remembered; the corrected retry runs.
    let mut bad = pay("c2", 5, "p3");
    if let marketgov_core::EventKind::PaymentProcessed { amount, .. } = &mut bad.kind {
        *amount = -5;
    }
    assert!(matches!(
        app.submit_event("t1", Some("k2"), bad).await,
        Err(Error::Invalid(_))
    ));
    let ok = app
        .submit_event("t1", Some("k2"), pay("c2", 5, "p3"))
        .await
        .unwrap();
    assert!(!ok.replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_is_not_remembered_and_a_retry_after_restart_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    {
        let mut o = options(dir.path(), &clock);
        o.store_fault = Some(FaultInjector::fail_batch(3, FaultMode::LostSync));
        let app = App::open(o).unwrap();
        publish(&app, "t1", "pro", 2000, false).await; // batches 1 and 2
        let failed = app
            .submit_event("t1", Some("k"), subscribe("c1", "pro"))
            .await;
        assert!(matches!(failed, Err(Error::Store(_))), "{failed:?}");
        // Fail-stop: the engine accepts nothing more until restarted.
        assert!(app
            .submit_event("t1", Some("k-other"), subscribe("c2", "pro"))
            .await
            .is_err());
        // Nor is the failed request's answer remembered in memory: the same key again is not
        // answered as a replay of something that never became durable.
        let again = app
            .submit_event("t1", Some("k"), subscribe("c1", "pro"))
            .await;
        assert!(again.is_err(), "{again:?}");
    }
    let app = reopen(dir.path(), &clock).await;
    let retry = app
        .submit_event("t1", Some("k"), subscribe("c1", "pro"))
        .await
        .unwrap();
    assert!(!retry.replayed, "the failure was not remembered");
    assert_eq!(retry.status, EventStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the gate blocks the shard thread on purpose while the test goes on
async fn a_request_with_a_key_in_flight_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let entered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut o = options(dir.path(), &clock);
    let (hook_gate, hook_entered) = (gate.clone(), entered.clone());
    o.decide_hook = Some(Arc::new(move |e: &CustomerEvent| {
        if e.customer_id.as_str() == "slow" {
            hook_entered.store(true, std::sync::atomic::Ordering::SeqCst);
            let _wait = hook_gate.lock();
        }
    }));
    let app = App::open(o).unwrap();
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            app.submit_event("t1", Some("same"), pay("slow", 1, "p"))
                .await
        })
    };
    // Wait until the first request is being decided (it holds the key), then send the second.
    while !entered.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let second = app
        .submit_event("t1", Some("same"), pay("slow", 1, "p"))
        .await;
    assert!(
        matches!(second, Err(Error::KeyInFlight { .. })),
        "{second:?}"
    );
    drop(held);
    let first = first.await.unwrap().unwrap();
    assert!(!first.replayed);
    let third = app
        .submit_event("t1", Some("same"), pay("slow", 1, "p"))
        .await
        .unwrap();
    assert!(third.replayed, "once done, the key replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_decision_is_parked_and_other_customers_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.shards = 1; // everyone shares the shard that panics
    o.decide_hook = Some(Arc::new(|e: &CustomerEvent| {
        if e.customer_id.as_str() == "boom"
            && matches!(
                e.kind,
                marketgov_core::EventKind::PaymentProcessed { amount: 13, .. }
            )
        {
            panic!("injected panic while deciding");
        }
    }));
    let app = App::open(o).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    app.submit_event("t1", None, pay("boom", 1, "ok-1"))
        .await
        .unwrap();
    let parked = app
        .submit_event("t1", Some("k-boom"), pay("boom", 13, "bad"))
        .await;
    let Err(Error::DecisionPanicked { event_id }) = parked else {
        panic!("{parked:?}")
    };
    let review = app
        .store()
        .versioned(marketgov_store::VersionedTable::Review, &event_id)
        .unwrap();
    assert!(review.is_some(), "parked in the review queue");
    // Other customers on the same shard are served; the panicking one too, from the store.
    let other = app
        .submit_event("t1", None, subscribe("calm", "pro"))
        .await
        .unwrap();
    assert_eq!(other.status, EventStatus::Completed);
    let boom = app.customer("t1", "boom").await.unwrap().unwrap();
    assert_eq!(
        boom.billing.credit, 1,
        "the panicking event changed nothing"
    );
    // The key was not remembered: a retry is decided again.
    assert!(matches!(
        app.submit_event("t1", Some("k-boom"), pay("boom", 13, "bad"))
            .await,
        Err(Error::DecisionPanicked { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the gate blocks the shard thread on purpose while the test goes on
async fn a_full_shard_refuses_instead_of_queueing_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let entered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    o.shard_queue_max = 2;
    let (hook_gate, hook_entered) = (gate.clone(), entered.clone());
    o.decide_hook = Some(Arc::new(move |_: &CustomerEvent| {
        hook_entered.store(true, std::sync::atomic::Ordering::SeqCst);
        let _wait = hook_gate.lock();
    }));
    let app = App::open(o).unwrap();
    let spawn = |i: usize| {
        let app = app.clone();
        tokio::spawn(async move {
            app.submit_event("t1", None, pay(&format!("c{i}"), 1, "p"))
                .await
        })
    };
    // One request is being decided (and blocked), so the shard takes no more from its queue.
    let mut handles = vec![spawn(0)];
    while !entered.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    handles.extend((1..10).map(spawn));
    // Two fit in the queue; the other seven are refused at once.
    while handles.iter().filter(|h| h.is_finished()).count() < 7 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    drop(held);
    let mut ok = 0;
    let mut refused = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Overloaded(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (3, 7),
        "one in progress, two queued, the rest refused"
    );
}

/// Polls `done` until it holds (a test fails after 30 s).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_customer_dropped_from_memory_is_read_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    o.streams_in_memory_max = 1;
    let app = App::open(o).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    // c1 is new (its store read is skipped), then pushed out of memory by c2.
    app.submit_event("t1", Some("sub-c1"), subscribe("c1", "pro"))
        .await
        .unwrap();
    app.submit_event("t1", Some("sub-c2"), subscribe("c2", "pro"))
        .await
        .unwrap();
    // Read back, c1 must come from the store: the filter learned its name before it was written.
    let c1 = app.customer("t1", "c1").await.unwrap();
    assert!(
        c1.is_some_and(|c| c.subscription.is_some()),
        "c1 was forgotten"
    );
    let paid = app
        .submit_event("t1", Some("pay-c1"), pay("c1", 2000, "p1"))
        .await
        .unwrap();
    assert_eq!(paid.status, EventStatus::Completed, "{}", paid.json());
}

/// Drops `gated`'s customer c3 (its approval timer pending) from memory after three logged
/// events, with `snapshot_on_eviction_events` at `min`; answers the store's load of its stream
/// and the customer as it was before it was dropped.
async fn evict_a_customer_with_a_timer(
    min: u64,
) -> (
    tempfile::TempDir,
    App,
    marketgov_store::StreamLoad,
    marketgov_core::Customer,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    o.streams_in_memory_max = 1;
    o.snapshot_every_events = 64;
    o.snapshot_on_eviction_events = min;
    let app = App::open(o).unwrap();
    publish(&app, "t1", "gated", 5000, true).await;
    app.submit_event("t1", Some("sub-c3"), subscribe("c3", "gated"))
        .await
        .unwrap();
    app.submit_event("t1", Some("pay-c3"), pay("c3", 5000, "p1"))
        .await
        .unwrap();
    app.submit_event("t1", Some("pay-c3b"), pay("c3", 5000, "p2"))
        .await
        .unwrap();
    let before = app.customer("t1", "c3").await.unwrap().unwrap();
    assert!(
        !before.timers.is_empty(),
        "c3 waits for approval: {before:?}"
    );
    // c2 takes c3's place in memory.
    app.submit_event("t1", Some("sub-c2"), subscribe("c2", "gated"))
        .await
        .unwrap();
    if min > 0 {
        // Nothing waits for the snapshot: it lands on its own.
        until("the snapshot at eviction", || {
            app.store()
                .load_stream("customer:t1/c3")
                .unwrap()
                .snapshot
                .is_some()
        })
        .await;
    }
    let load = app.store().load_stream("customer:t1/c3").unwrap();
    (dir, app, load, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_dropped_with_a_timer_pending_is_snapshotted_and_loads_from_it() {
    let (_dir, app, load, before) = evict_a_customer_with_a_timer(2).await;
    let snapshot = load.snapshot.expect("a snapshot at eviction");
    assert_eq!(snapshot.version, 3, "at the last of its three events");
    assert!(
        load.events.is_empty(),
        "nothing to replay: {:?}",
        load.events
    );
    assert_eq!(app.stats().unwrap()["snapshots_on_eviction"], 1);
    // Loaded from the snapshot, it is the customer that was dropped, and goes on from there.
    assert_eq!(app.customer("t1", "c3").await.unwrap(), Some(before));
    let paid = app
        .submit_event("t1", Some("pay-c3c"), pay("c3", 5000, "p3"))
        .await
        .unwrap();
    assert!(!paid.replayed);
    let load = app.store().load_stream("customer:t1/c3").unwrap();
    assert_eq!(load.snapshot.map(|s| s.version), Some(3));
    assert_eq!(load.events.len(), 1, "the event after the snapshot");
    assert!(app.audit_verify().unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_snapshots_at_eviction_a_dropped_customer_replays_its_events() {
    let (_dir, app, load, before) = evict_a_customer_with_a_timer(0).await;
    assert!(load.snapshot.is_none(), "{:?}", load.snapshot);
    assert_eq!(load.events.len(), 3);
    assert_eq!(app.stats().unwrap()["snapshots_on_eviction"], 0);
    assert_eq!(app.customer("t1", "c3").await.unwrap(), Some(before));
}

/// Releases a held batch when the test ends, however it ends (else the store's drop would wait
/// for its writer forever).
struct ReleaseOnDrop(Arc<FaultInjector>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

type Answer = Result<marketgov_engine::Reply, Error>;

/// Submits a payment for `c0` and polls it once, so it has reached its shard's mailbox (or been
/// refused) when this returns: the rest runs on its own task.
async fn submit_now(app: &App, i: usize) -> Result<tokio::task::JoinHandle<Answer>, Answer> {
    let app = app.clone();
    let mut call = Box::pin(async move {
        app.submit_event("t1", None, pay("c0", 1, &format!("p{i}")))
            .await
    });
    tokio::select! {
        biased;
        answer = &mut call => Err(answer),
        () = std::future::ready(()) => Ok(tokio::spawn(call)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_waiting_behind_an_unacknowledged_commit_is_bounded_then_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let fault = FaultInjector::fail_batch(1, FaultMode::Held);
    let _release = ReleaseOnDrop(fault.clone());
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    o.shard_queue_max = 2;
    o.store_fault = Some(fault.clone());
    let app = App::open(o).unwrap();
    // The first event's commit is written and held before its sync: in flight, unacknowledged.
    let mut handles = vec![submit_now(&app, 0).await.unwrap()];
    until("the first commit is held", || fault.holding()).await;
    // The next two for the same stream are taken from the mailbox and wait behind it (bound 2)...
    for i in 1..=2 {
        handles.push(submit_now(&app, i).await.unwrap());
        until("the shard takes it", || app.mailbox_depths() == vec![0]).await;
    }
    // ...then the shard takes no more: two stay in its mailbox, the rest are refused at once.
    for i in 3..=4 {
        handles.push(submit_now(&app, i).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            app.mailbox_depths(),
            vec![i - 2],
            "the shard took event {i}"
        );
    }
    for i in 5..10 {
        match submit_now(&app, i).await {
            Err(Err(Error::Overloaded(_))) => {}
            Err(other) => panic!("event {i} should be refused, got {other:?}"),
            Ok(_) => panic!("event {i} should be refused at once"),
        }
    }
    assert!(
        handles.iter().all(|h| !h.is_finished()),
        "nothing answered before the sync"
    );
    fault.release();
    let mut seqs = Vec::new();
    for h in handles {
        let reply = h.await.unwrap().unwrap();
        seqs.push(reply.body()["receipt"]["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "decided and logged in arrival order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_store_is_bounded_by_window_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.idempotency_keys_max = 3;
    let app = App::open(o).unwrap();
    for i in 0..5 {
        app.submit_event(
            "t1",
            Some(&format!("old-{i}")),
            pay("c1", 1, &format!("p{i}")),
        )
        .await
        .unwrap();
    }
    clock.set(Timestamp::from_second(t0().as_second() + 3600).unwrap());
    app.submit_event("t1", Some("new"), pay("c1", 1, "p-new"))
        .await
        .unwrap();
    app.sweep_idempotency().await.unwrap();
    // Within the window, but beyond the bound of 3: the two oldest went.
    assert!(app.store().idempotency("t1", "old-0").unwrap().is_none());
    assert!(app.store().idempotency("t1", "old-1").unwrap().is_none());
    assert!(app.store().idempotency("t1", "old-4").unwrap().is_some());
    // After the window, every old key goes; the newest stays until its own window ends.
    clock.set(Timestamp::from_second(t0().as_second() + 24 * 3600 + 1).unwrap());
    app.sweep_idempotency().await.unwrap();
    assert!(app.store().idempotency("t1", "old-4").unwrap().is_none());
    assert!(app.store().idempotency("t1", "new").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_dies_is_restarted_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = armed.clone();
    o.work_hook = Some(Arc::new(move |what: &str| {
        if what == "crashy" && trigger.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected panic outside a decision");
        }
    }));
    let app = App::open(o).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    app.submit_event("t1", Some("a"), subscribe("steady", "pro"))
        .await
        .unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let lost = app
        .submit_event("t1", Some("b"), subscribe("crashy", "pro"))
        .await;
    assert!(
        matches!(lost, Err(Error::ShuttingDown)),
        "the item in progress is not acknowledged: {lost:?}"
    );
    // The supervisor sees the panic right after the caller does.
    while app.shard_restarts() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert_eq!(app.shard_restarts(), 1);
    // The restarted shard serves everyone, from the store.
    assert!(app.customer("t1", "steady").await.unwrap().is_some());
    let retry = app
        .submit_event("t1", Some("b"), subscribe("crashy", "pro"))
        .await
        .unwrap();
    assert!(!retry.replayed, "nothing of the lost item was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_pipelines_commits_across_streams_and_keeps_each_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(t0());
    let mut o = options(dir.path(), &clock);
    o.shards = 1;
    let app = App::open(o).unwrap();
    publish(&app, "t1", "pro", 2000, false).await;
    let before = app.store().stats().unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let script_app = app.clone();
        tasks.push(tokio::spawn(async move {
            let app = script_app;
            let c = format!("c{i}");
            let r = app.submit_event("t1", None, subscribe(&c, "pro")).await?;
            assert_eq!(r.status, EventStatus::Completed, "{:?}", r.body());
            let r = app.submit_event("t1", None, pay(&c, 2000, "p1")).await?;
            assert_eq!(r.status, EventStatus::Completed, "{:?}", r.body());
            Ok::<_, Error>(())
        }));
        // Two more writers on the same few streams, racing the scripts above: each stream must
        // still be decided one event at a time, on the state its previous event left.
        let racer = app.clone();
        tasks.push(tokio::spawn(async move {
            let app = racer;
            let usage = event(
                json!({"type": "usage_exceeds_quota", "customer_id": format!("c{}", i % 4), "resource": "api", "current_usage": 10 * i, "limit": 1000}),
            );
            app.submit_event("t1", None, usage).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let after = app.store().stats().unwrap();
    let commits = after.commits - before.commits;
    let batches = after.batches - before.batches;
    assert_eq!(commits, 120);
    assert!(
        batches < commits,
        "one shard kept several commits in flight: {batches} batches for {commits} commits"
    );
    let mut states = Vec::new();
    for i in 0..40 {
        let c = app.customer("t1", &format!("c{i}")).await.unwrap().unwrap();
        assert_eq!(
            c.subscription.as_ref().map(|s| s.state),
            Some(marketgov_core::governors::subscription::SubscriptionState::Active),
            "c{i}"
        );
        states.push(c);
    }
    drop(app);
    // Every stream's log replays to the state held in memory (a decision on a stale state would
    // fail the replay check or differ).
    let app = reopen(dir.path(), &clock).await;
    for (i, expected) in states.into_iter().enumerate() {
        assert_eq!(
            app.customer("t1", &format!("c{i}")).await.unwrap(),
            Some(expected)
        );
    }
    assert!(app.audit_verify().unwrap().ok);
}
