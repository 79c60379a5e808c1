//! The embedded store: durable acknowledgement, group commit, per-commit isolation inside a batch,
//! fail-stop on a failed sync, corruption named on open and read, refused unsafe settings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use marketgov_audit::{verify, CheckpointSigner, Fault};
use marketgov_store::conformance::{commit_events, event, wait, SECRET};
use marketgov_store::{
    Commit, Error, IdempotencyRecord, OutboxUpdate, OutboxWrite, Snapshot, Store, TimerWrite,
    VersionedTable, VersionedWrite,
};
use marketgov_store_sqlite::{FaultInjector, FaultMode, Options, SqliteStore, Sync};

fn open(dir: &std::path::Path) -> SqliteStore {
    let mut o = Options::new(dir);
    o.signer = Some(CheckpointSigner::from_secret(&SECRET));
    o.checkpoint_every_entries = 10;
    SqliteStore::open(o).unwrap()
}

marketgov_store::conformance_tests!(open);

/// Also for a batch whose transaction fails as it is written: its caller is answered (not left
/// with a dropped acknowledgement) and nothing of it is stored.
#[test]
fn a_failed_sync_acknowledges_nothing_of_its_batch_and_stops_the_writer() {
    for mode in [
        FaultMode::LostSync,
        FaultMode::UnacknowledgedSync,
        FaultMode::BrokenTransaction,
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Options::new(dir.path());
            o.fault = Some(FaultInjector::fail_batch(2, mode));
            let store = SqliteStore::open(o).unwrap();
            wait(
                store
                    .commit(commit_events(vec![event("s", 1, "acked")]))
                    .unwrap(),
            )
            .unwrap();
            let failed = store
                .commit(commit_events(vec![event("s", 2, "not acked")]))
                .unwrap()
                .blocking_recv();
            assert!(
                matches!(failed, Ok(Err(Error::Stopped { .. }))),
                "{mode:?}: answered Stopped, not dropped: {failed:?}"
            );
            assert!(store.stopped().is_some());
            assert!(
                matches!(
                    store.commit(commit_events(vec![event("s", 3, "later")])),
                    Err(Error::Stopped { .. })
                ),
                "fail-stop"
            );
        }
        let store = SqliteStore::open(Options::new(dir.path())).unwrap();
        let events = store.load_stream("s").unwrap().events;
        assert_eq!(
            events.first(),
            Some(&(1, b"acked".to_vec())),
            "{mode:?}: the acknowledged commit is there"
        );
        match mode {
            FaultMode::LostSync | FaultMode::BrokenTransaction => assert_eq!(events.len(), 1),
            // Unacknowledged but durable data may be there; it must be whole and verified.
            FaultMode::UnacknowledgedSync => assert_eq!(events.len(), 2),
            FaultMode::Held => unreachable!("not a failure mode"),
        }
        // The restarted store continues the chain.
        let next = events.len() as u64 + 1;
        wait(
            store
                .commit(commit_events(vec![event("s", next, "after restart")]))
                .unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn a_changed_byte_in_acknowledged_data_is_named_on_read_and_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for v in 1..=3 {
            wait(
                store
                    .commit(commit_events(vec![event("s", v, &format!("payload-{v}"))]))
                    .unwrap(),
            )
            .unwrap();
        }
    }
    // Flip one bit of entry 2's body behind the store's back.
    {
        let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
        let mut flipped = b"payload-2".to_vec();
        flipped[0] ^= 0x01;
        conn.execute("UPDATE events SET body = ?1 WHERE seq = 2", [flipped])
            .unwrap();
    }
    // On open, the tail check names it.
    match SqliteStore::open(Options::new(dir.path())) {
        Err(Error::Corrupt { location, .. }) => assert_eq!(location, "audit entry 2"),
        other => panic!("expected corruption named on open, got {other:?}"),
    }
    // Outside the tail checked on open, reading the stream names it.
    let mut o = Options::new(dir.path());
    o.verify_tail_entries = 1;
    let store = SqliteStore::open(o).unwrap();
    match store.load_stream("s") {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, "audit entry 2");
            assert!(detail.contains("hash mismatch"));
        }
        other => panic!("expected corruption named on read, got {other:?}"),
    }
    // And the audit verifier names the same position.
    let entries = store.audit_entries(1, 10).unwrap();
    let report = verify(
        &CheckpointSigner::from_secret(&SECRET).public_key(),
        &entries,
        &[],
    )
    .unwrap();
    assert_eq!(
        report.first_bad.map(|b| (b.seq, b.reason)),
        Some((2, Fault::HashMismatch))
    );
}

#[test]
fn a_corrupt_blob_outside_the_tail_is_named_on_read() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        wait(
            store
                .commit(Commit {
                    snapshots: vec![Snapshot {
                        stream: "s2".into(),
                        version: 1,
                        body: b"snap".to_vec(),
                    }],
                    ..Commit::default()
                })
                .unwrap(),
        )
        .unwrap();
    }
    {
        let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
        conn.execute(
            "UPDATE snapshots SET body = X'736e6171' WHERE stream = 's2'",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(Options::new(dir.path())).unwrap();
    match store.load_stream("s2") {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, "snapshot of s2");
            assert!(detail.contains("checksum"));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_flipped_bit_in_the_database_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "MARKER-0123456789-abcdefghij";
    {
        let store = open(dir.path());
        wait(
            store
                .commit(commit_events(vec![event("s", 1, marker)]))
                .unwrap(),
        )
        .unwrap();
    }
    // Move everything from the WAL into the main file, then flip a bit of the marker there.
    {
        let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let path = dir.path().join("marketgov.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("marker on disk");
    bytes[at + 3] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    match SqliteStore::open(Options::new(dir.path())) {
        Err(Error::Corrupt { location, .. }) => assert_eq!(location, "audit entry 1"),
        other => panic!("expected corruption named, got {other:?}"),
    }
}

#[test]
fn settings_that_weaken_durability_are_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for sync in [Sync::Normal, Sync::Off] {
        let mut o = Options::new(dir.path());
        o.sync = sync;
        assert!(matches!(SqliteStore::open(o), Err(Error::UnsafeSetting(_))));
    }
    let mut o = Options::new(dir.path());
    o.sync = Sync::Normal;
    o.allow_unsafe_durability = true;
    assert!(SqliteStore::open(o).is_ok());
}

#[test]
fn one_directory_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    assert!(matches!(
        SqliteStore::open(Options::new(dir.path())),
        Err(Error::Unavailable(_))
    ));
}

#[test]
fn a_store_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(Options::new(dir.path())),
        Err(Error::SchemaTooNew { found: 99, .. })
    ));
}

/// One value read straight from the database file with SQLite itself, beside the store.
fn query_db<T: rusqlite::types::FromSql>(dir: &std::path::Path, sql: &str) -> T {
    let conn = rusqlite::Connection::open(dir.join("marketgov.db")).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn page_size(dir: &std::path::Path) -> u32 {
    query_db(dir, "PRAGMA page_size")
}

#[test]
fn a_new_store_takes_the_configured_page_size_and_an_older_file_keeps_its_own() {
    let fresh = tempfile::tempdir().unwrap();
    drop(open(fresh.path()));
    assert_eq!(
        page_size(fresh.path()),
        marketgov_store_sqlite::PAGE_SIZE_BYTES
    );

    // A database file created with SQLite's default page size (as earlier releases did).
    let older = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(older.path().join("marketgov.db")).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA application_id = 7;",
        )
        .unwrap();
    }
    {
        let store = open(older.path());
        wait(
            store
                .commit(commit_events(vec![event("customer:t/c1", 1, "{\"n\":1}")]))
                .unwrap(),
        )
        .unwrap();
    }
    assert_eq!(page_size(older.path()), 4096);
    let store = open(older.path());
    let history = store.stream_history("customer:t/c1", 0, 10).unwrap();
    assert_eq!(history.len(), 1);
}

/// `(timers, pending outbox rows)` counted row by row, beside the store's counters.
fn counted(dir: &std::path::Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(dir.join("marketgov.db")).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    (
        count("SELECT COUNT(*) FROM timers"),
        count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"),
    )
}

fn counters(store: &SqliteStore) -> (u64, u64) {
    let s = store.stats().unwrap();
    (s.timers, s.outbox)
}

#[test]
fn pending_counts_follow_every_change_through_failed_commits_failed_syncs_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut pending_effects: Vec<String> = Vec::new();
    let mut effect_no = 0u64;
    {
        let store = open(dir.path());
        for round in 0..40 {
            // Several commits queued at once share batches; one in four carries an update of an
            // effect that is not pending, which fails that commit alone (nothing of it counts).
            let mut acks = Vec::new();
            let mut queued_effects = Vec::new();
            for _ in 0..4 {
                let mut c = Commit::default();
                for _ in 0..next(4) {
                    let stream = format!("s{}", next(5));
                    let kind = format!("k{}", next(3));
                    c.timers.push(if next(3) == 0 {
                        TimerWrite::Cancel { stream, kind }
                    } else {
                        TimerWrite::Set {
                            stream,
                            kind,
                            due_at_ms: next(1_000) as i64,
                        }
                    });
                }
                for _ in 0..next(3) {
                    effect_no += 1;
                    c.outbox.push(OutboxWrite {
                        effect_key: format!("e{effect_no}"),
                        stream: "s0".into(),
                        connector: "payments".into(),
                        body: b"{}".to_vec(),
                        not_before_ms: 0,
                    });
                }
                let failing = next(4) == 0;
                if failing {
                    c.outbox_updates.push(OutboxUpdate::Done {
                        effect_key: "never-queued".into(),
                    });
                } else if let Some(i) = (!pending_effects.is_empty())
                    .then(|| next(pending_effects.len() as u64) as usize)
                {
                    let effect_key = pending_effects.swap_remove(i);
                    c.outbox_updates.push(match next(3) {
                        0 => OutboxUpdate::Done { effect_key },
                        1 => OutboxUpdate::Dead {
                            effect_key,
                            error: "gave up".into(),
                        },
                        _ => {
                            pending_effects.push(effect_key.clone());
                            OutboxUpdate::Retry {
                                effect_key,
                                attempts: 1,
                                next_attempt_ms: 5,
                                error: "later".into(),
                            }
                        }
                    });
                }
                let keys: Vec<String> = c.outbox.iter().map(|o| o.effect_key.clone()).collect();
                queued_effects.push((failing, keys));
                acks.push((failing, store.commit(c).unwrap()));
            }
            for ((failing, ack), (_, keys)) in acks.into_iter().zip(queued_effects) {
                let result = wait(ack);
                assert_eq!(result.is_err(), failing, "round {round}: {result:?}");
                if !failing {
                    pending_effects.extend(keys);
                }
            }
            assert_eq!(counters(&store), counted(dir.path()), "round {round}");
            assert_eq!(counters(&store).1, pending_effects.len() as u64);
        }
    }
    // The counts are durable: a reopened store starts from them.
    let expected = counted(dir.path());
    assert_eq!(counters(&open(dir.path())), expected);

    // A batch whose sync is lost (rolled back) or fails after reaching the disk: after the
    // restart the counters match the rows either way.
    for mode in [FaultMode::LostSync, FaultMode::UnacknowledgedSync] {
        {
            let mut o = Options::new(dir.path());
            o.fault = Some(FaultInjector::fail_batch(1, mode));
            let store = SqliteStore::open(o).unwrap();
            effect_no += 1;
            let failed = wait(
                store
                    .commit(Commit {
                        timers: vec![TimerWrite::Set {
                            stream: format!("fault-{mode:?}"),
                            kind: "k".into(),
                            due_at_ms: 1,
                        }],
                        outbox: vec![OutboxWrite {
                            effect_key: format!("e{effect_no}"),
                            stream: "s0".into(),
                            connector: "payments".into(),
                            body: b"{}".to_vec(),
                            not_before_ms: 0,
                        }],
                        ..Commit::default()
                    })
                    .unwrap(),
            );
            assert!(failed.is_err(), "{mode:?}");
        }
        let store = SqliteStore::open(Options::new(dir.path())).unwrap();
        assert_eq!(counters(&store), counted(dir.path()), "{mode:?}");
    }

    // A store written before the counters existed (schema 2, no counter rows) is counted once
    // when it is upgraded.
    let before_upgrade = counted(dir.path());
    assert!(
        before_upgrade.0 > 0 && before_upgrade.1 > 0,
        "{before_upgrade:?}"
    );
    {
        let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
        conn.execute_batch(
            "DELETE FROM meta WHERE key IN ('pending_timers', 'pending_outbox');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    assert_eq!(counters(&open(dir.path())), before_upgrade);
}

#[test]
fn due_timers_sharing_a_deadline_are_paged_in_order_without_sorting_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 600 timers share one deadline (as when many customers' retries were set at one instant).
    let timers: Vec<TimerWrite> = (0..600)
        .rev()
        .map(|i| TimerWrite::Set {
            stream: format!("customer:t/c{i:03}"),
            kind: "payment_retry".into(),
            due_at_ms: 3_600_000,
        })
        .chain([TimerWrite::Set {
            stream: "customer:t/early".into(),
            kind: "payment_retry".into(),
            due_at_ms: 1_000,
        }])
        .collect();
    wait(
        store
            .commit(Commit {
                timers,
                ..Commit::default()
            })
            .unwrap(),
    )
    .unwrap();
    let page = store.due_timers(i64::MAX, 256).unwrap();
    assert_eq!(page.len(), 256);
    assert_eq!(page[0].stream, "customer:t/early");
    assert_eq!(page[1].stream, "customer:t/c000");
    assert_eq!(page[255].stream, "customer:t/c254");
    // The page is read from the index in that order: no sort over all 600.
    let conn = rusqlite::Connection::open(dir.path().join("marketgov.db")).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            marketgov_store_sqlite::DUE_TIMERS_SQL
        ))
        .unwrap()
        .query_map(rusqlite::params![i64::MAX, 256], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|p| p.contains("timers_due"))
            && !plan.iter().any(|p| p.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

/// Releases a held sync when dropped.
struct ReleaseOnDrop(std::sync::Arc<FaultInjector>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Polls `done` until it holds (at most 10 s: a bound against a hang, not a timing claim).
fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

/// Events in the database file as SQLite itself sees them, committed whether durable or not.
fn committed_events(dir: &std::path::Path) -> i64 {
    query_db(dir, "SELECT COUNT(*) FROM events")
}

/// A batch is committed before its sync (the writer goes on to the next one meanwhile); but
/// nothing of it is acknowledged, and no read that answers a caller returns it, until its sync:
/// the audit log, stream history, checkpoints and stats stop at the durable head, effects are not
/// handed out, and found idempotency and versioned records are returned only once durable (a
/// versioned record whose last write is durable at once).
#[test]
fn a_committed_batch_is_neither_acknowledged_nor_read_before_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let fault = FaultInjector::fail_batch(2, FaultMode::Held);
    let mut o = Options::new(dir.path());
    o.signer = Some(CheckpointSigner::from_secret(&SECRET));
    o.checkpoint_every_entries = 1;
    o.fault = Some(fault.clone());
    let store = std::sync::Arc::new(SqliteStore::open(o).unwrap());
    // Dropped before the store: a failed assertion releases the held sync instead of hanging
    // in the store's close.
    let _release = ReleaseOnDrop(fault.clone());
    wait(
        store
            .commit(Commit {
                events: vec![event("s", 1, "durable")],
                cases: vec![VersionedWrite {
                    key: "case-0".into(),
                    expected_version: 0,
                    version: 1,
                    body: b"{}".to_vec(),
                }],
                ..Commit::default()
            })
            .unwrap(),
    )
    .unwrap();

    let held = store
        .commit(Commit {
            events: vec![event("s", 2, "held")],
            idempotency: vec![IdempotencyRecord {
                tenant: "t".into(),
                key: "k".into(),
                operation: "events".into(),
                fingerprint: [7; 32],
                response: b"{}".to_vec(),
                created_at_ms: 0,
            }],
            outbox: vec![OutboxWrite {
                effect_key: "evt-2:0".into(),
                stream: "s".into(),
                connector: "payments".into(),
                body: b"{}".to_vec(),
                not_before_ms: 0,
            }],
            cases: vec![VersionedWrite {
                key: "case-1".into(),
                expected_version: 0,
                version: 1,
                body: b"{}".to_vec(),
            }],
            ..Commit::default()
        })
        .unwrap();
    until("the second batch is held before its sync", || {
        fault.holding()
    });
    assert_eq!(committed_events(dir.path()), 2, "committed before the sync");
    let mut held = held;
    assert!(held.try_recv().is_err(), "not acknowledged before its sync");

    // The writer takes the next commit meanwhile (it keeps its batch open until the sync).
    let next = store
        .commit(commit_events(vec![event("s", 3, "behind")]))
        .unwrap();

    let seqs = |entries: Vec<marketgov_audit::Entry>| -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(store.audit_entries(1, 100).unwrap()), vec![1]);
    let history: Vec<u64> = store
        .stream_history("s", 0, 100)
        .unwrap()
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(history, vec![1]);
    assert_eq!(store.load_stream("s").unwrap().events.len(), 1);
    assert!(store.checkpoints().unwrap().iter().all(|c| c.seq <= 1));
    assert_eq!(store.stats().unwrap().events, 1);
    assert_eq!(store.stats().unwrap().outbox, 0);
    assert!(store.ready_outbox(i64::MAX, 10).unwrap().is_empty());

    let (found_tx, found_rx) = std::sync::mpsc::channel();
    for read in 0..3 {
        let (store, found_tx) = (store.clone(), found_tx.clone());
        std::thread::spawn(move || {
            let found = match read {
                0 => store.idempotency("t", "k").map(|r| r.is_some()),
                1 => store
                    .versioned(VersionedTable::Cases, "case-1")
                    .map(|r| r.is_some()),
                _ => store
                    .versioned_list(VersionedTable::Cases, "case-", "", 10)
                    .map(|rows| rows.len() == 2),
            };
            let _ = found_tx.send((read, found));
        });
    }
    // A record whose latest write is durable is answered while the held batch syncs.
    let durable_case = {
        let (store, (tx, rx)) = (store.clone(), std::sync::mpsc::channel());
        std::thread::spawn(move || {
            let _ = tx.send(
                store
                    .versioned(VersionedTable::Cases, "case-0")
                    .map(|r| r.is_some()),
            );
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
    };
    assert!(
        matches!(durable_case, Ok(Ok(true))),
        "a durable record waits for an unrelated sync: {durable_case:?}"
    );
    // Were either read answered from the committed batch, it would be here at once.
    assert!(
        found_rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a read answered a record that is not durable"
    );

    fault.release();
    wait(held).unwrap();
    wait(next).unwrap();
    let mut answers: Vec<_> = (0..3)
        .map(|_| {
            found_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap()
        })
        .map(|(read, found)| (read, found.unwrap()))
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        vec![(0, true), (1, true), (2, true)],
        "answered once durable"
    );
    assert_eq!(seqs(store.audit_entries(1, 100).unwrap()), vec![1, 2, 3]);
    assert_eq!(store.load_stream("s").unwrap().events.len(), 3);
    assert_eq!(store.ready_outbox(i64::MAX, 10).unwrap().len(), 1);
    assert_eq!(store.stats().unwrap().events, 3);
    assert!(store.checkpoints().unwrap().iter().any(|c| c.seq >= 2));
}
