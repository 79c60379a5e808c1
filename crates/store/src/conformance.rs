//! The conformance suite every backend runs (feature `conformance`): each function takes a way to
//! open the backend on a directory, with a checkpoint signer of [`SECRET`] and a checkpoint every
//! ten entries, and panics when the backend breaks the contract.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a test fails loudly

use std::path::Path;

use marketgov_audit::{verify, CheckpointSigner};

use crate::{
    Ack, Commit, Error, EventWrite, IdempotencyRecord, OutboxUpdate, OutboxWrite, Receipt,
    Snapshot, Store, TimerWrite, VersionedTable, VersionedWrite,
};

/// The checkpoint signer's secret the backends' `open` must use.
pub const SECRET: [u8; 32] = [3; 32];

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// An event of `stream` at `version`.
pub fn event(stream: &str, version: u64, text: &str) -> EventWrite {
    EventWrite {
        stream: stream.into(),
        stream_version: version,
        event_id: format!("{stream}-{version}"),
        at_ms: 1_000 * version as i64,
        body: text.as_bytes().to_vec(),
    }
}

/// A commit of `events` alone.
pub fn commit_events(events: Vec<EventWrite>) -> Commit {
    Commit {
        events,
        ..Commit::default()
    }
}

/// An idempotency record of tenant `t` for `key`.
pub fn idempotency_record(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant: "t".into(),
        key: key.into(),
        operation: "events".into(),
        fingerprint: [1; 32],
        response: b"{}".to_vec(),
        created_at_ms: 5,
    }
}

/// The suite as `#[test]`s of a backend's test crate, each calling `open(&Path)` to open the
/// backend (with [`SECRET`]'s signer and a checkpoint every ten entries).
#[macro_export]
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::conformance_tests!(
            $open;
            acknowledged_commits_survive_a_reopen_and_the_log_verifies,
            commits_queued_together_share_transactions,
            a_failing_commit_fails_alone_inside_its_batch,
            timers_outbox_and_versioned_records,
        );
    };
    ($open:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name($open);
            }
        )*
    };
}

/// Waits for an acknowledgement outside a runtime.
pub fn wait(ack: Ack) -> Result<Receipt, Error> {
    ack.blocking_recv().unwrap_or_else(|_| {
        Err(Error::Stopped {
            reason: "ack dropped".into(),
        })
    })
}

/// Acknowledged commits (events, a snapshot) survive a reopen, and the log verifies against its
/// signed checkpoints.
pub fn acknowledged_commits_survive_a_reopen_and_the_log_verifies<S: Store>(
    open: impl Fn(&Path) -> S,
) {
    let dir = tempdir();
    {
        let store = open(dir.path());
        for v in 1..=25u64 {
            let mut c = commit_events(vec![event("customer:t/c1", v, &format!("{{\"n\":{v}}}"))]);
            if v == 20 {
                c.snapshots.push(Snapshot {
                    stream: "customer:t/c1".into(),
                    version: 20,
                    body: b"state@20".to_vec(),
                });
            }
            let receipt = wait(store.commit(c).unwrap()).unwrap();
            assert_eq!(receipt.entries[0].0, v, "audit seq");
        }
    }
    let store = open(dir.path());
    let load = store.load_stream("customer:t/c1").unwrap();
    assert_eq!(
        load.snapshot.as_ref().map(|s| (s.version, s.body.clone())),
        Some((20, b"state@20".to_vec()))
    );
    let versions: Vec<u64> = load.events.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        vec![21, 22, 23, 24, 25],
        "events after the snapshot"
    );
    let entries = store.audit_entries(1, 1000).unwrap();
    let checkpoints = store.checkpoints().unwrap();
    assert!(!checkpoints.is_empty());
    let report = verify(
        &CheckpointSigner::from_secret(&SECRET).public_key(),
        &entries,
        &checkpoints,
    )
    .unwrap();
    assert!(report.ok && report.entries == 25, "{report:?}");
}

/// Commits queued together share batches.
pub fn commits_queued_together_share_transactions<S: Store>(open: impl Fn(&Path) -> S) {
    let dir = tempdir();
    let store = open(dir.path());
    let acks: Vec<_> = (1..=200u64)
        .map(|i| {
            store
                .commit(commit_events(vec![event(&format!("s{i}"), 1, "x")]))
                .unwrap()
        })
        .collect();
    for ack in acks {
        wait(ack).unwrap();
    }
    let stats = store.stats().unwrap();
    assert_eq!((stats.events, stats.commits), (200, 200));
    assert!(
        stats.batches < stats.commits,
        "group commit: {} batches for {} commits",
        stats.batches,
        stats.commits
    );
}

/// A commit that conflicts fails alone; the others of its batch are stored, and it takes no
/// audit position.
pub fn a_failing_commit_fails_alone_inside_its_batch<S: Store>(open: impl Fn(&Path) -> S) {
    let dir = tempdir();
    let store = open(dir.path());
    wait(
        store
            .commit(commit_events(vec![event("s", 1, "first")]))
            .unwrap(),
    )
    .unwrap();
    let key = idempotency_record;
    let a = store
        .commit(commit_events(vec![event("s", 1, "stream version taken")]))
        .unwrap();
    let b = store
        .commit(Commit {
            events: vec![event("s", 2, "fine")],
            idempotency: vec![key("k1")],
            ..Commit::default()
        })
        .unwrap();
    let c = store
        .commit(Commit {
            idempotency: vec![key("k1")],
            ..Commit::default()
        })
        .unwrap();
    assert!(matches!(wait(a), Err(Error::Conflict(_))));
    assert!(wait(b).is_ok());
    assert!(matches!(wait(c), Err(Error::Conflict(_))));
    let load = store.load_stream("s").unwrap();
    assert_eq!(
        load.events,
        vec![(1, b"first".to_vec()), (2, b"fine".to_vec())]
    );
    assert_eq!(store.idempotency("t", "k1").unwrap(), Some(key("k1")));
    assert_eq!(
        store.idempotency("other-tenant", "k1").unwrap(),
        None,
        "keys are scoped per tenant"
    );
    // The failed commits consumed no audit positions: the chain has no gaps.
    let entries = store.audit_entries(1, 10).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

/// Timers move and cancel, effects are queued once and applied once, versioned records refuse a
/// stale version.
pub fn timers_outbox_and_versioned_records<S: Store>(open: impl Fn(&Path) -> S) {
    let dir = tempdir();
    let store = open(dir.path());
    let set = |kind: &str, due| TimerWrite::Set {
        stream: "c1".into(),
        kind: kind.into(),
        due_at_ms: due,
    };
    wait(
        store
            .commit(Commit {
                timers: vec![
                    set("payment_retry", 100),
                    set("period_end", 500),
                    set("payment_retry", 200),
                ],
                outbox: vec![OutboxWrite {
                    effect_key: "evt-1:0".into(),
                    stream: "c1".into(),
                    connector: "sandbox".into(),
                    body: b"charge".to_vec(),
                    not_before_ms: 0,
                }],
                cases: vec![VersionedWrite {
                    key: "ProcessOrder-o1".into(),
                    expected_version: 0,
                    version: 1,
                    body: b"v1".to_vec(),
                }],
                ..Commit::default()
            })
            .unwrap(),
    )
    .unwrap();
    let due: Vec<_> = store
        .due_timers(300, 10)
        .unwrap()
        .into_iter()
        .map(|t| (t.kind, t.due_at_ms))
        .collect();
    assert_eq!(
        due,
        vec![("payment_retry".to_string(), 200)],
        "setting a kind again moves it"
    );
    assert_eq!(store.ready_outbox(0, 10).unwrap().len(), 1);

    // The same effect key is never queued twice; a stale case version is refused.
    let again = OutboxWrite {
        effect_key: "evt-1:0".into(),
        stream: "c1".into(),
        connector: "sandbox".into(),
        body: b"charge".to_vec(),
        not_before_ms: 0,
    };
    assert!(matches!(
        wait(
            store
                .commit(Commit {
                    outbox: vec![again],
                    ..Commit::default()
                })
                .unwrap()
        ),
        Err(Error::Conflict(_))
    ));
    let stale = VersionedWrite {
        key: "ProcessOrder-o1".into(),
        expected_version: 5,
        version: 6,
        body: b"v6".to_vec(),
    };
    assert!(matches!(
        wait(
            store
                .commit(Commit {
                    cases: vec![stale],
                    ..Commit::default()
                })
                .unwrap()
        ),
        Err(Error::Conflict(_))
    ));

    wait(
        store
            .commit(Commit {
                timers: vec![TimerWrite::Cancel {
                    stream: "c1".into(),
                    kind: "payment_retry".into(),
                }],
                outbox_updates: vec![OutboxUpdate::Done {
                    effect_key: "evt-1:0".into(),
                }],
                cases: vec![VersionedWrite {
                    key: "ProcessOrder-o1".into(),
                    expected_version: 1,
                    version: 2,
                    body: b"v2".to_vec(),
                }],
                ..Commit::default()
            })
            .unwrap(),
    )
    .unwrap();
    assert!(store.due_timers(300, 10).unwrap().is_empty());
    assert!(store.ready_outbox(0, 10).unwrap().is_empty());
    assert_eq!(
        store
            .versioned(VersionedTable::Cases, "ProcessOrder-o1")
            .unwrap(),
        Some((2, b"v2".to_vec()))
    );
    // Marking an effect done twice is a conflict: each is applied once.
    let twice = Commit {
        outbox_updates: vec![OutboxUpdate::Done {
            effect_key: "evt-1:0".into(),
        }],
        ..Commit::default()
    };
    assert!(matches!(
        wait(store.commit(twice).unwrap()),
        Err(Error::Conflict(_))
    ));
}
