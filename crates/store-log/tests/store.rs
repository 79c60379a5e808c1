//! The log-structured store: the conformance suite, and what is its own: a torn final batch cut
//! off at every byte, damage anywhere else named, fail-stop on a failed write or sync, nothing
//! read or acknowledged before its sync, and a writer process killed mid-stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::path::{Path, PathBuf};

use marketgov_audit::{verify, CheckpointSigner};
use marketgov_store::conformance::{commit_events, event, idempotency_record as key, wait, SECRET};
use marketgov_store::{Commit, Error, Store, TimerWrite};
use marketgov_store_log::{FaultInjector, FaultMode, LogStore, Options};

fn options(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.signer = Some(CheckpointSigner::from_secret(&SECRET));
    o.checkpoint_every_entries = 10;
    o
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(options(dir)).unwrap()
}

marketgov_store::conformance_tests!(open);

fn segment(dir: &Path) -> PathBuf {
    dir.join("log").join("0000000001.seg")
}

/// Commit `i` of a small workload: an event of stream `s{i % 3}`, a key, a timer.
fn step(store: &LogStore, i: u64) {
    let stream = format!("s{}", i % 3);
    let version = i / 3 + 1;
    wait(
        store
            .commit(Commit {
                events: vec![event(&stream, version, &format!("{{\"i\":{i}}}"))],
                idempotency: vec![key(&format!("k{i}"))],
                timers: vec![TimerWrite::Set {
                    stream: stream.clone(),
                    kind: "renewal".into(),
                    due_at_ms: i as i64,
                }],
                ..Commit::default()
            })
            .unwrap(),
    )
    .unwrap();
}

/// What a store answers, for comparing two of them.
fn summary(store: &LogStore) -> (u64, Vec<u64>, usize, usize) {
    let stats = store.stats().unwrap();
    let versions = (0..3)
        .map(|s| store.load_stream(&format!("s{s}")).unwrap().events.len() as u64)
        .collect();
    let keys = store
        .idempotency_keys(&(String::new(), String::new()), 1000)
        .unwrap()
        .len();
    (stats.events, versions, keys, stats.timers as usize)
}

#[test]
fn a_torn_final_batch_is_cut_off_at_every_byte_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (before, whole) = {
        let store = open(dir.path());
        for i in 0..9 {
            step(&store, i);
        }
        let before_len = std::fs::metadata(segment(dir.path())).unwrap().len();
        let before = summary(&store);
        step(&store, 9);
        (
            (before, before_len),
            std::fs::metadata(segment(dir.path())).unwrap().len(),
        )
    };
    let (before, before_len) = before;
    let bytes = std::fs::read(segment(dir.path())).unwrap();
    assert_eq!(bytes.len() as u64, whole);
    // Every length between the ninth and the tenth batch: the tenth is cut off whole.
    for cut in before_len..whole {
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("log")).unwrap();
        std::fs::write(segment(copy.path()), &bytes[..cut as usize]).unwrap();
        let store = open(copy.path());
        assert_eq!(summary(&store), before, "cut at {cut}");
        assert_eq!(store.cut_on_open(), cut - before_len, "cut at {cut}");
        // And the store goes on from there.
        step(&store, 9);
        drop(store);
        let store = open(copy.path());
        assert_eq!(store.stats().unwrap().events, 10, "cut at {cut}");
        assert_verified(&store, 100, &format!("cut at {cut}"));
    }
}

#[test]
fn a_changed_byte_before_the_final_batch_is_named_and_the_store_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let last_batch_at = {
        let store = open(dir.path());
        for i in 0..5 {
            step(&store, i);
        }
        let at = std::fs::metadata(segment(dir.path())).unwrap().len();
        step(&store, 5);
        at
    };
    let bytes = std::fs::read(segment(dir.path())).unwrap();
    // Every 7th byte of the first five batches (each changed alone).
    for at in (0..last_batch_at as usize).step_by(7) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("log")).unwrap();
        std::fs::write(segment(copy.path()), &bad).unwrap();
        match LogStore::open(options(copy.path())) {
            Err(Error::Corrupt { location, .. }) => {
                assert!(location.contains("segment 1"), "{location}");
            }
            other => panic!("byte {at} changed: {:?}", other.map(|s| s.head_seq())),
        }
        // Nothing was cut from the damaged file.
        assert_eq!(
            std::fs::read(segment(copy.path())).unwrap(),
            bad,
            "byte {at}"
        );
    }
}

#[test]
fn a_changed_byte_in_a_stored_body_is_named_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..4 {
        step(&store, i);
    }
    // The store keeps its file open; change a body under it.
    let mut bytes = std::fs::read(segment(dir.path())).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"{\"i\":0}")
        .expect("the first body is in the file");
    bytes[at + 5] = b'7';
    std::fs::write(segment(dir.path()), &bytes).unwrap();
    assert!(matches!(
        store.load_stream("s0"),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        store.stream_history("s0", 0, 10),
        Err(Error::Corrupt { .. })
    ));
    assert!(store.load_stream("s1").is_ok(), "other streams still read");
}

#[test]
fn a_failed_write_or_sync_acknowledges_nothing_and_stops_the_writer() {
    for mode in [
        FaultMode::LostSync,
        FaultMode::UnacknowledgedSync,
        FaultMode::TornWrite,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fault = FaultInjector::fail_batch(3, mode);
        {
            let store = open_with_fault(dir.path(), &fault);
            step(&store, 1);
            let third = store
                .commit(commit_events(vec![event("s0", 2, "{\"i\":3}")]))
                .unwrap();
            assert!(
                matches!(wait(third), Err(Error::Stopped { .. })),
                "{mode:?}"
            );
            assert!(store.stopped().is_some(), "{mode:?}");
            assert!(
                matches!(
                    store.commit(commit_events(vec![event("x", 1, "{}")])),
                    Err(Error::Stopped { .. })
                ),
                "{mode:?}: refused after the stop"
            );
            assert_eq!(store.load_stream("s0").unwrap().events.len(), 1, "{mode:?}");
            assert_eq!(store.stats().unwrap().events, 2, "{mode:?}");
        }
        // Reopened: a batch that reached the disk whole is there (its callers were told it
        // failed: an unknown outcome, which their idempotency keys settle); a lost or torn one
        // is not.
        let store = open(dir.path());
        let expected = if mode == FaultMode::UnacknowledgedSync {
            3
        } else {
            2
        };
        assert_eq!(store.stats().unwrap().events, expected, "{mode:?}");
        assert_eq!(
            store.cut_on_open() > 0,
            mode == FaultMode::TornWrite,
            "{mode:?}"
        );
        wait(
            store
                .commit(commit_events(vec![event("after", 1, "{}")]))
                .unwrap(),
        )
        .unwrap();
    }
}

/// A store whose batches meet `fault`, after one commit of [`step`].
fn open_with_fault(dir: &Path, fault: &std::sync::Arc<FaultInjector>) -> LogStore {
    let mut o = options(dir);
    o.fault = Some(fault.clone());
    let store = LogStore::open(o).unwrap();
    step(&store, 0);
    store
}

/// Waits until the held batch is being held.
fn wait_holding(fault: &FaultInjector) {
    let start = std::time::Instant::now();
    while !fault.holding() {
        assert!(start.elapsed().as_secs() < 10, "the batch never came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_batch_is_neither_read_nor_acknowledged_before_its_sync_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let fault = FaultInjector::fail_batch(2, FaultMode::Held);
    let store = open_with_fault(dir.path(), &fault);
    let mut held = store
        .commit(Commit {
            events: vec![event("s1", 1, "{\"i\":1}")],
            idempotency: vec![key("k1")],
            ..Commit::default()
        })
        .unwrap();
    wait_holding(&fault);
    assert!(held.try_recv().is_err(), "acknowledged while held");
    assert!(store.load_stream("s1").unwrap().events.is_empty());
    assert_eq!(store.idempotency("t", "k1").unwrap(), None);
    assert_eq!(store.audit_entries(1, 10).unwrap().len(), 1);
    assert_eq!(store.stats().unwrap().events, 1);
    fault.release();
    wait(held).unwrap();
    assert_eq!(store.load_stream("s1").unwrap().events.len(), 1);
    assert_eq!(store.idempotency("t", "k1").unwrap(), Some(key("k1")));
}

#[test]
fn one_directory_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    assert!(matches!(
        LogStore::open(options(dir.path())),
        Err(Error::Unavailable(_))
    ));
}

#[test]
fn idempotency_records_are_swept_oldest_first_when_expired_or_beyond_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10u64 {
        let mut r = key(&format!("k{i}"));
        r.created_at_ms = i as i64 * 10;
        wait(
            store
                .commit(Commit {
                    idempotency: vec![r],
                    ..Commit::default()
                })
                .unwrap(),
        )
        .unwrap();
    }
    let sweep = |before_ms, keep_max, limit| Commit {
        idempotency_sweep: Some(marketgov_store::IdempotencySweep {
            before_ms,
            keep_max,
            limit,
        }),
        ..Commit::default()
    };
    let kept = |store: &LogStore| -> Vec<String> {
        let mut keys: Vec<_> = store
            .idempotency_keys(&(String::new(), String::new()), 100)
            .unwrap()
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        keys.sort_by_key(|k| k[1..].parse::<u32>().unwrap());
        keys
    };
    // Expired before 25 ms: k0, k1, k2; the limit takes two of them now.
    wait(store.commit(sweep(25, 100, 2)).unwrap()).unwrap();
    assert_eq!(kept(&store)[0], "k2");
    wait(store.commit(sweep(25, 100, 5)).unwrap()).unwrap();
    assert_eq!(kept(&store).len(), 7);
    // Beyond the bound of 4: the oldest three go.
    wait(store.commit(sweep(0, 4, 100)).unwrap()).unwrap();
    assert_eq!(kept(&store), vec!["k6", "k7", "k8", "k9"]);
    drop(store);
    assert_eq!(kept(&open(dir.path())), vec!["k6", "k7", "k8", "k9"]);
}

/// The child side of the kill test: commits until killed, printing each acknowledged step.
#[test]
fn writer_process_for_the_kill_test() {
    let Some(dir) = std::env::var_os("MARKETGOV_LOG_KILL_DIR") else {
        return; // run only as the child of the kill test
    };
    let store = open(Path::new(&dir));
    let start = store.stats().unwrap().events;
    let mut i = start;
    loop {
        // A few commits in flight at once, so batches hold several.
        let acks: Vec<_> = (i..i + 8)
            .map(|n| {
                store
                    .commit(Commit {
                        events: vec![event(
                            &format!("s{}", n % 5),
                            n / 5 + 1,
                            &format!("{{\"n\":{n}}}"),
                        )],
                        idempotency: vec![key(&format!("k{n}"))],
                        ..Commit::default()
                    })
                    .unwrap()
            })
            .collect();
        for ack in acks {
            wait(ack).unwrap();
        }
        i += 8;
        println!("acked {i}");
    }
}

#[test]
fn a_killed_writer_loses_nothing_it_acknowledged() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer_process_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MARKETGOV_LOG_KILL_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut acked = 0u64;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
                if acked >= 400 * (round + 1) {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no clean close
        child.wait().unwrap();
        let store = open(dir.path());
        // The first round's log was never closed cleanly: scanned whole. Later rounds start
        // from the index this test's own open kept when it closed, and scan what the killed
        // process wrote after it.
        match (round, store.open_path()) {
            (0, marketgov_store_log::OpenPath::Scanned(_)) => {}
            (_, marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes })
                if round > 0 && *scanned_bytes > 0 => {}
            (_, other) => panic!("round {round}: opened by {other:?}"),
        }
        let events = store.stats().unwrap().events;
        assert!(
            events >= acked,
            "round {round}: {events} stored, {acked} acknowledged"
        );
        for n in (0..acked).step_by(37) {
            assert!(
                store.idempotency("t", &format!("k{n}")).unwrap().is_some(),
                "round {round}: key {n} acknowledged and lost"
            );
        }
        assert_eq!(
            store.audit_entries(1, usize::MAX).unwrap().len() as u64,
            events
        );
        assert_verified(&store, usize::MAX, &format!("round {round}"));
    }
}

#[test]
fn a_commit_too_large_for_a_batch_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let huge = Commit {
        events: vec![marketgov_store::EventWrite {
            body: vec![b'x'; 9 << 20],
            ..event("big", 1, "")
        }],
        ..Commit::default()
    };
    assert!(matches!(
        wait(store.commit(huge).unwrap()),
        Err(Error::Storage(_))
    ));
    step(&store, 0);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.stats().unwrap().events, 1);
    assert!(store.load_stream("big").unwrap().events.is_empty());
}

/// A store whose segments are closed every few KiB, so keys and effects spread over many runs.
fn open_small_segments(dir: &Path) -> LogStore {
    let mut o = options(dir);
    o.segment_bytes_max = 4 << 10;
    LogStore::open(o).unwrap()
}

fn effect(key: &str) -> marketgov_store::OutboxWrite {
    marketgov_store::OutboxWrite {
        effect_key: key.into(),
        stream: "s".into(),
        connector: "sandbox".into(),
        body: b"{}".to_vec(),
        not_before_ms: 0,
    }
}

fn done(key: &str) -> marketgov_store::OutboxUpdate {
    marketgov_store::OutboxUpdate::Done {
        effect_key: key.into(),
    }
}

fn commit_result(store: &LogStore, c: Commit) -> Result<marketgov_store::Receipt, Error> {
    wait(store.commit(c).unwrap())
}

/// What the store answers about every key and effect of the workload below.
fn key_answers(store: &LogStore, n: u64) -> Vec<(bool, Option<i64>, bool)> {
    (0..n)
        .map(|i| {
            let k = store.idempotency("t", &format!("k{i}")).unwrap();
            let requeued = commit_result(
                store,
                Commit {
                    outbox: vec![effect(&format!("e{i}"))],
                    ..Commit::default()
                },
            );
            (
                k.is_some(),
                k.map(|r| r.created_at_ms),
                matches!(requeued, Err(Error::Conflict(_))),
            )
        })
        .collect()
}

#[test]
fn keys_and_effects_in_closed_segments_are_found_refused_again_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300u64;
    let store = open_small_segments(dir.path());
    for i in 0..n {
        let mut r = key(&format!("k{i}"));
        r.created_at_ms = i as i64;
        commit_result(
            &store,
            Commit {
                events: vec![event("s", i + 1, "{}")],
                idempotency: vec![r],
                outbox: vec![effect(&format!("e{i}"))],
                ..Commit::default()
            },
        )
        .unwrap();
        if i % 2 == 0 {
            let settled = Commit {
                outbox_updates: vec![done(&format!("e{i}"))],
                ..Commit::default()
            };
            commit_result(&store, settled).unwrap();
        }
    }
    let runs = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "idem")
        .count();
    assert!(runs > 10, "{runs} runs");
    // Every key is found, whether its segment is closed or open, and neither a key nor an
    // effect (pending or done) can be stored twice.
    let answers = key_answers(&store, n);
    assert!(
        answers
            .iter()
            .enumerate()
            .all(|(i, a)| *a == (true, Some(i as i64), true)),
        "{answers:?}"
    );
    for i in [0u64, 7, 150, n - 1] {
        let again = commit_result(
            &store,
            Commit {
                idempotency: vec![key(&format!("k{i}"))],
                ..Commit::default()
            },
        );
        assert!(matches!(again, Err(Error::Conflict(_))), "k{i}: {again:?}");
    }
    let done_twice = commit_result(
        &store,
        Commit {
            outbox_updates: vec![done("e0")],
            ..Commit::default()
        },
    );
    assert!(
        matches!(done_twice, Err(Error::Conflict(_))),
        "{done_twice:?}"
    );
    assert_eq!(store.stats().unwrap().outbox, n / 2);
    // An expired key used again: the old record is removed, the new one is found.
    let mut renewed = key("k5");
    renewed.created_at_ms = 10_000;
    commit_result(
        &store,
        Commit {
            idempotency_expired: vec![("t".into(), "k5".into())],
            idempotency: vec![renewed],
            ..Commit::default()
        },
    )
    .unwrap();
    assert_eq!(
        store
            .idempotency("t", "k5")
            .unwrap()
            .map(|r| r.created_at_ms),
        Some(10_000)
    );
    // Sweep what was created before 100: k0..k99 go (k5's new record is newer and stays); the
    // runs of segments holding only swept keys are dropped with their files.
    let sweep = Commit {
        idempotency_sweep: Some(marketgov_store::IdempotencySweep {
            before_ms: 100,
            keep_max: 1_000,
            limit: 1_000,
        }),
        ..Commit::default()
    };
    commit_result(&store, sweep).unwrap();
    let kept = |store: &LogStore| {
        store
            .idempotency_keys(&(String::new(), String::new()), 1_000)
            .unwrap()
            .len()
    };
    assert_eq!(kept(&store), (n - 100) as usize + 1);
    assert!(store.idempotency("t", "k99").unwrap().is_none());
    assert!(store.idempotency("t", "k100").unwrap().is_some());
    assert!(store.idempotency("t", "k5").unwrap().is_some());
    let runs_after = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "idem")
        .count();
    assert!(runs_after < runs, "{runs_after} runs left of {runs}");
    let before_reopen = key_answers(&store, n);
    drop(store);
    // The reopened store rebuilds its runs from the segments and answers the same.
    let store = open_small_segments(dir.path());
    assert_eq!(key_answers(&store, n), before_reopen);
    assert_eq!(kept(&store), (n - 100) as usize + 1);
    assert_eq!(store.stats().unwrap().outbox, n / 2);
}

#[test]
fn effects_beyond_memory_wait_on_disk_and_each_is_served_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let open_small = |dir: &Path| {
        let mut o = options(dir);
        o.effects_in_memory_max = 4;
        o.segment_bytes_max = 2 << 10;
        LogStore::open(o).unwrap()
    };
    let n = 40usize;
    let mut store = open_small(dir.path());
    for i in 0..n {
        commit_result(
            &store,
            Commit {
                outbox: vec![effect(&format!("e{i:02}"))],
                ..Commit::default()
            },
        )
        .unwrap();
    }
    assert_eq!(store.stats().unwrap().outbox, n as u64);
    // A spilled effect (never in memory yet) may be settled directly, and is not served later.
    commit_result(
        &store,
        Commit {
            outbox_updates: vec![done("e30")],
            ..Commit::default()
        },
    )
    .unwrap();
    let mut served = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100, "the outbox never drained: {served:?}");
        if rounds == 5 {
            // Reopening mid-way holds the same effects in memory and on disk.
            let before = store.ready_outbox(0, 100).unwrap();
            drop(store);
            store = open_small(dir.path());
            assert_eq!(store.ready_outbox(0, 100).unwrap(), before);
        }
        let ready = store.ready_outbox(0, 3).unwrap();
        if ready.is_empty() {
            break;
        }
        let in_memory = store.ready_outbox(0, 100).unwrap().len();
        assert!(in_memory <= 4, "{in_memory} effects in memory");
        for row in ready {
            served.push(row.effect_key.clone());
            commit_result(
                &store,
                Commit {
                    outbox_updates: vec![done(&row.effect_key)],
                    ..Commit::default()
                },
            )
            .unwrap();
        }
    }
    let expected: Vec<String> = (0..n)
        .filter(|i| *i != 30)
        .map(|i| format!("e{i:02}"))
        .collect();
    assert_eq!(served, expected, "each effect once, in the order queued");
    assert_eq!(store.stats().unwrap().outbox, 0);
    // Every one of them is still known: none can be queued again.
    let again = commit_result(
        &store,
        Commit {
            outbox: vec![effect("e07")],
            ..Commit::default()
        },
    );
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    drop(store);
    assert_eq!(open_small(dir.path()).stats().unwrap().outbox, 0);
}

#[test]
fn streams_are_walked_back_across_segments_and_batches_and_listed_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let check = |store: &LogStore| {
        // 150 events of `long`, two per commit; its snapshot at version 100.
        let load = store.load_stream("customer:t/long").unwrap();
        assert_eq!(load.snapshot.as_ref().map(|s| s.version), Some(100));
        let versions: Vec<u64> = load.events.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (101..=150).collect::<Vec<_>>());
        assert_eq!(load.events[0].1, b"{\"v\":101}".to_vec());
        let history = store.stream_history("customer:t/long", 10, 5).unwrap();
        let versions: Vec<u64> = history.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, vec![11, 12, 13, 14, 15]);
        assert_eq!(history[0].1.bytes, b"{\"v\":11}".to_vec());
        assert_eq!(
            store
                .stream_history("customer:t/long", 0, 1000)
                .unwrap()
                .len(),
            150
        );
        for i in 0..60 {
            let load = store.load_stream(&format!("customer:t/c{i:02}")).unwrap();
            assert_eq!(load.events.len(), 1, "c{i:02}");
        }
        assert!(store
            .load_stream("customer:t/none")
            .unwrap()
            .events
            .is_empty());
        let customers = store.streams("customer:t/", "", 1000).unwrap();
        assert_eq!(customers.len(), 61);
        assert_eq!(customers[0], "customer:t/c00");
        assert_eq!(customers[60], "customer:t/long");
        assert_eq!(
            store.streams("customer:t/", "customer:t/c57", 2).unwrap(),
            vec!["customer:t/c58", "customer:t/c59"]
        );
        assert_eq!(
            store.streams("product:", "", 10).unwrap(),
            vec!["product:t/a", "product:t/b"]
        );
    };
    {
        let store = open_small_segments(dir.path());
        for i in 0..75u64 {
            let (a, b) = (2 * i + 1, 2 * i + 2);
            let mut c = Commit {
                events: vec![
                    event("customer:t/long", a, &format!("{{\"v\":{a}}}")),
                    event("customer:t/long", b, &format!("{{\"v\":{b}}}")),
                ],
                ..Commit::default()
            };
            if b == 100 {
                c.snapshots.push(marketgov_store::Snapshot {
                    stream: "customer:t/long".into(),
                    version: 100,
                    body: b"{\"at\":100}".to_vec(),
                });
            }
            commit_result(&store, c).unwrap();
            if i < 60 {
                let other = event(&format!("customer:t/c{i:02}"), 1, "{}");
                commit_result(&store, commit_events(vec![other])).unwrap();
            }
            if i == 3 || i == 70 {
                let name = if i == 3 { "product:t/a" } else { "product:t/b" };
                commit_result(&store, commit_events(vec![event(name, 1, "{}")])).unwrap();
            }
        }
        // A version out of turn is refused, across segments too.
        let late = commit_result(
            &store,
            commit_events(vec![event("customer:t/long", 150, "{}")]),
        );
        assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
        let names = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "names")
            .count();
        assert!(names > 5, "{names} name runs");
        check(&store);
    }
    check(&open_small_segments(dir.path()));
}

#[test]
fn a_batch_built_while_the_one_before_syncs_is_checked_against_it() {
    // Batch 2 is written and held before it is applied: what comes next is built against it
    // while the index does not have it yet.
    let dir = tempfile::tempdir().unwrap();
    let fault = FaultInjector::fail_batch(2, FaultMode::Held);
    {
        let store = open_with_fault(dir.path(), &fault);
        let versioned = |expected_version, version| marketgov_store::VersionedWrite {
            key: "case-1".into(),
            expected_version,
            version,
            body: b"{}".to_vec(),
        };
        let held = store
            .commit(Commit {
                events: vec![event("s1", 1, "{\"i\":1}")],
                idempotency: vec![key("k1")],
                cases: vec![versioned(0, 1)],
                outbox: vec![effect("e1")],
                ..Commit::default()
            })
            .unwrap();
        wait_holding(&fault);
        // It follows the held batch: the next version, the next case version, a new key.
        let follows = store
            .commit(Commit {
                events: vec![event("s1", 2, "{\"i\":2}")],
                idempotency: vec![key("k2")],
                cases: vec![versioned(1, 2)],
                ..Commit::default()
            })
            .unwrap();
        // Each takes something the held batch took.
        let same_version = store
            .commit(commit_events(vec![event("s1", 1, "{\"again\":1}")]))
            .unwrap();
        let same_key = store
            .commit(Commit {
                idempotency: vec![key("k1")],
                ..Commit::default()
            })
            .unwrap();
        let same_case = store
            .commit(Commit {
                cases: vec![versioned(0, 1)],
                ..Commit::default()
            })
            .unwrap();
        let same_effect = store
            .commit(Commit {
                outbox: vec![effect("e1")],
                ..Commit::default()
            })
            .unwrap();
        fault.release();
        wait(held).unwrap();
        wait(follows).unwrap();
        for (what, ack) in [
            ("version", same_version),
            ("key", same_key),
            ("case", same_case),
            ("effect", same_effect),
        ] {
            assert!(
                matches!(wait(ack), Err(Error::Conflict(_))),
                "the same {what} twice"
            );
        }
        let events: Vec<_> = store.load_stream("s1").unwrap().events;
        assert_eq!(
            events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![1, 2],
            "the second event points back at the first"
        );
    }
    let store = open(dir.path());
    assert_eq!(store.load_stream("s1").unwrap().events.len(), 2);
    assert_eq!(store.idempotency("t", "k2").unwrap(), Some(key("k2")));
    assert_verified(&store, 100, "after the held batch");
}

/// The first `entries` audit entries verify against the signed checkpoints.
fn assert_verified(store: &LogStore, entries: usize, context: &str) {
    let entries = store.audit_entries(1, entries).unwrap();
    let report = verify(
        &CheckpointSigner::from_secret(&SECRET).public_key(),
        &entries,
        &store.checkpoints().unwrap(),
    )
    .unwrap();
    assert!(report.ok, "{context}: {report:?}");
}

#[test]
fn commits_from_many_threads_across_small_segments_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (threads, per_thread) = (6u64, 150u64);
    let streams = |store: &LogStore| -> Vec<Vec<u64>> {
        (0..threads)
            .map(|t| {
                store
                    .load_stream(&format!("s{t}"))
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.0)
                    .collect()
            })
            .collect()
    };
    let expected: Vec<Vec<u64>> = (0..threads).map(|_| (1..=per_thread).collect()).collect();
    {
        let store = std::sync::Arc::new(open_small_segments(dir.path()));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for v in 1..=per_thread {
                        let body = format!("{{\"t\":{t},\"v\":{v}}}");
                        wait(
                            store
                                .commit(Commit {
                                    events: vec![event(&format!("s{t}"), v, &body)],
                                    idempotency: vec![key(&format!("k{t}-{v}"))],
                                    outbox: vec![effect(&format!("e{t}-{v}"))],
                                    ..Commit::default()
                                })
                                .unwrap(),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(streams(&store), expected);
        assert_eq!(store.stats().unwrap().events, threads * per_thread);
    }
    let store = open_small_segments(dir.path());
    assert_eq!(streams(&store), expected);
    assert!(
        std::fs::read_dir(dir.path().join("log")).unwrap().count() > 10,
        "the log rolled over many segments"
    );
    assert_verified(&store, (threads * per_thread) as usize, "after six threads");
}

#[test]
fn the_hash_keys_are_drawn_once_and_kept_and_a_lost_file_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("log").join("hash.keys");
    let store = open(dir.path());
    for i in 0..9 {
        step(&store, i);
    }
    let before = summary(&store);
    drop(store);
    let drawn = std::fs::read(&keys).unwrap();

    let store = open(dir.path());
    assert_eq!(summary(&store), before);
    step(&store, 9);
    let after = summary(&store);
    drop(store);
    assert_eq!(
        std::fs::read(&keys).unwrap(),
        drawn,
        "the keys were drawn again"
    );

    // Without the file, new keys are drawn: the index kept at close was built under the old
    // ones and is not used (the open scans), and every stream, key and timer is found as
    // before.
    std::fs::remove_file(&keys).unwrap();
    let store = open(dir.path());
    assert_eq!(summary(&store), after);
    assert_ne!(std::fs::read(&keys).unwrap(), drawn);
    assert_eq!(
        store.load_stream("s0").unwrap().events.len(),
        4,
        "s0 has the events of steps 0, 3, 6, 9"
    );
}

/// Options with small segments, so that a short workload closes many of them into runs.
fn small_segments(dir: &Path) -> Options {
    let mut o = options(dir);
    o.segment_bytes_max = 8 << 10;
    o
}

/// Commit `i` of a workload touching every part of the index: events on seven streams with a
/// snapshot now and then, a key, a timer set or cancelled, an effect queued and some settled,
/// a versioned record.
fn rich_step(store: &LogStore, i: u64) {
    let stream = format!("s{}", i % 7);
    let version = i / 7 + 1;
    let mut commit = Commit {
        events: vec![event(
            &stream,
            version,
            &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200)),
        )],
        idempotency: vec![key(&format!("k{i}"))],
        timers: vec![if i % 5 == 4 {
            TimerWrite::Cancel {
                stream: stream.clone(),
                kind: "renewal".into(),
            }
        } else {
            TimerWrite::Set {
                stream: stream.clone(),
                kind: "renewal".into(),
                due_at_ms: 1_000 + i as i64,
            }
        }],
        outbox: vec![marketgov_store::OutboxWrite {
            effect_key: format!("e{i}"),
            stream: stream.clone(),
            connector: "sandbox".into(),
            body: format!("{{\"e\":{i}}}").into_bytes(),
            not_before_ms: i as i64,
        }],
        ..Commit::default()
    };
    if i % 6 == 5 {
        commit.snapshots.push(marketgov_store::Snapshot {
            stream: stream.clone(),
            version,
            body: format!("{{\"at\":{version}}}").into_bytes(),
        });
    }
    if i % 3 == 2 {
        commit
            .outbox_updates
            .push(marketgov_store::OutboxUpdate::Done {
                effect_key: format!("e{}", i - 2),
            });
    }
    if i.is_multiple_of(10) {
        commit.review.push(marketgov_store::VersionedWrite {
            key: format!("r{i}"),
            expected_version: 0,
            version: 1,
            body: b"{}".to_vec(),
        });
    }
    wait(store.commit(commit).unwrap()).unwrap();
}

/// Everything a store answers about the rich workload's first `n` steps.
fn rich_answers(store: &LogStore, n: u64) -> String {
    let mut out = String::new();
    let stats = store.stats().unwrap();
    out.push_str(&format!(
        "{} {} {} {}\n",
        stats.events,
        stats.timers,
        stats.outbox,
        store.head_seq()
    ));
    for s in 0..7 {
        let load = store.load_stream(&format!("s{s}")).unwrap();
        out.push_str(&format!("{:?} {}\n", load.snapshot, load.events.len()));
    }
    for i in 0..n + 20 {
        let record = store.idempotency("t", &format!("k{i}")).unwrap();
        out.push_str(&format!("{:?}\n", record.map(|r| r.key)));
    }
    out.push_str(&format!(
        "{:?}\n",
        store.due_timers(i64::MAX, 1000).unwrap()
    ));
    out.push_str(&format!(
        "{:?}\n",
        store.ready_outbox(i64::MAX, 1000).unwrap()
    ));
    out.push_str(&format!(
        "{:?}\n",
        store
            .versioned_list(marketgov_store::VersionedTable::Review, "", "", 1000)
            .unwrap()
    ));
    out.push_str(&format!("{:?}\n", store.streams("", "", 100).unwrap()));
    out.push_str(&format!("{:?}\n", store.checkpoints().unwrap()));
    let entries = store.audit_entries(1, 100_000).unwrap();
    let public = CheckpointSigner::from_secret(&SECRET).public_key();
    let report = verify(&public, &entries, &store.checkpoints().unwrap()).unwrap();
    out.push_str(&format!("{report:?}\n"));
    out.push_str(&format!("{}\n", entries.len()));
    out
}

/// A copy of a data directory without the index kept at close: opening it scans every segment.
fn copy_without_kept_index(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(to.path().join("log")).unwrap();
    for entry in std::fs::read_dir(from.join("log")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name != "index.at-close" {
            std::fs::copy(&path, to.path().join("log").join(name)).unwrap();
        }
    }
    to
}

#[test]
fn a_clean_close_keeps_the_index_and_the_next_open_answers_from_it_as_a_scan_would() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("log").join("index.at-close");
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    for i in 0..300 {
        rich_step(&store, i);
    }
    let before = rich_answers(&store, 300);
    drop(store);
    assert!(kept.exists(), "a clean close keeps the index");
    let runs = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "idem")
        })
        .count();
    assert!(runs > 10, "the workload closed {runs} segments into runs");

    let scanned_dir = copy_without_kept_index(dir.path());
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    assert_eq!(
        store.open_path(),
        &marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes: 0 }
    );
    assert!(kept.exists(), "the kept index stays good for a later open");
    let scanned = LogStore::open(small_segments(scanned_dir.path())).unwrap();
    assert!(matches!(
        scanned.open_path(),
        marketgov_store_log::OpenPath::Scanned(_)
    ));
    assert_eq!(rich_answers(&store, 300), before);
    assert_eq!(rich_answers(&scanned, 300), before);

    // Both go on alike: new commits follow the kept state (versions, keys, effect rows).
    for i in 300..420 {
        rich_step(&store, i);
        rich_step(&scanned, i);
    }
    let after = rich_answers(&store, 420);
    assert_eq!(rich_answers(&scanned, 420), after);
    assert_ne!(after, before);
    drop(store);
    drop(scanned);
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    assert_eq!(
        store.open_path(),
        &marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes: 0 }
    );
    assert_eq!(rich_answers(&store, 420), after);
}

/// A copy of a data directory as a crash would leave it while `store` runs: every acknowledged
/// batch is in the copy (synced, and read back through the page cache), the store's own index
/// kept at close is whatever its last clean close left.
fn copy_as_crashed(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(to.path().join("log")).unwrap();
    for entry in std::fs::read_dir(from.join("log")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.path().join("log").join(path.file_name().unwrap())).unwrap();
    }
    to
}

#[test]
fn after_a_crash_the_open_reads_the_index_kept_at_the_last_clean_close_and_scans_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    for i in 0..150 {
        rich_step(&store, i);
    }
    drop(store);

    // The next process opens from the kept index, writes across several more segments, and
    // "crashes": the copy is what it leaves, with the index of the close before it.
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    for i in 150..260 {
        rich_step(&store, i);
    }
    let expected = rich_answers(&store, 260);
    let crashed = copy_as_crashed(dir.path());
    drop(store);
    let reopened = LogStore::open(small_segments(crashed.path())).unwrap();
    match reopened.open_path() {
        marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes } => {
            // The 110 commits after the clean close span several segments: those were
            // scanned, the 150 before them (more than half the log) were not.
            let log: u64 = std::fs::read_dir(crashed.path().join("log"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert!(
                *scanned_bytes > 3 * 8192 && *scanned_bytes < log / 2,
                "{scanned_bytes} of {log}"
            );
        }
        other => panic!("the kept index was not used: {other:?}"),
    }
    assert_eq!(rich_answers(&reopened, 260), expected);
    // And it goes on as a scanned one would.
    let scanned_dir = copy_without_kept_index(crashed.path());
    let scanned = LogStore::open(small_segments(scanned_dir.path())).unwrap();
    assert!(matches!(
        scanned.open_path(),
        marketgov_store_log::OpenPath::Scanned(_)
    ));
    for i in 260..300 {
        rich_step(&reopened, i);
        rich_step(&scanned, i);
    }
    assert_eq!(rich_answers(&reopened, 300), rich_answers(&scanned, 300));
}

#[test]
fn a_kept_index_of_another_log_or_with_a_changed_byte_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("log").join("index.at-close");
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    for i in 0..120 {
        rich_step(&store, i);
    }
    drop(store);
    // A twin (same hash keys) that went further keeps an index of a log this one does not
    // hold.
    let twin = copy_as_crashed(dir.path());
    let store = LogStore::open(small_segments(twin.path())).unwrap();
    for i in 120..160 {
        rich_step(&store, i);
    }
    drop(store);
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    for i in 120..130 {
        rich_step(&store, i);
    }
    let expected = rich_answers(&store, 130);
    drop(store);
    std::fs::copy(twin.path().join("log").join("index.at-close"), &kept).unwrap();
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    match store.open_path() {
        marketgov_store_log::OpenPath::Scanned(why) => {
            assert!(why.contains("another log"), "{why}")
        }
        other => panic!("another log's index was used: {other:?}"),
    }
    assert_eq!(rich_answers(&store, 130), expected);
    drop(store);

    // A changed byte anywhere in the kept index: its checksum fails, the open scans.
    let good = std::fs::read(&kept).unwrap();
    for at in (0..good.len()).step_by(good.len() / 13 + 1) {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        std::fs::write(&kept, &bad).unwrap();
        let store = LogStore::open(small_segments(dir.path())).unwrap();
        assert!(
            matches!(store.open_path(), marketgov_store_log::OpenPath::Scanned(_)),
            "byte {at} changed and the index was used"
        );
        assert_eq!(rich_answers(&store, 130), expected, "byte {at}");
        drop(store);
    }

    // A damaged run file it refers to: runs are derived from the segments, so the open scans
    // them again (naming why) and answers as before.
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    drop(store);
    let run = dir.path().join("log").join("0000000002.idem");
    let mut bytes = std::fs::read(&run).unwrap();
    let at = bytes.len() - 8; // the footer's checksum of the page table
    bytes[at] ^= 0x01;
    std::fs::write(&run, &bytes).unwrap();
    let store = LogStore::open(small_segments(dir.path())).unwrap();
    match store.open_path() {
        marketgov_store_log::OpenPath::Scanned(why) => {
            assert!(why.contains("0000000002.idem"), "{why}")
        }
        other => panic!("a damaged run was used: {other:?}"),
    }
    assert_eq!(rich_answers(&store, 130), expected);
}

/// Options whose segments hold 64 KiB each: the second is prepared (prepared.rs) once the first
/// holds 8 KiB.
fn prepared_segments(dir: &Path) -> Options {
    let mut o = options(dir);
    o.segment_bytes_max = 64 << 10;
    o
}

fn segment_file(dir: &Path, number: u32) -> PathBuf {
    dir.join("log").join(format!("{number:010}.seg"))
}

/// Steps until segment 2 has been started from its prepared file, then `more` steps; the
/// number of the next step.
fn into_a_prepared_segment(store: &LogStore, dir: &Path, more: u64) -> u64 {
    let mut i = 0;
    while std::fs::metadata(segment_file(dir, 1)).unwrap().len() < 8 << 10 {
        step(store, i);
        i += 1;
    }
    // Waits for the preparation (a minute at most) rather than racing it.
    let ready = store.wait_for_prepared_segment(std::time::Duration::from_secs(60));
    assert_eq!(ready, Some(2));
    while !segment_file(dir, 2).exists() {
        step(store, i);
        i += 1;
    }
    assert_eq!(store.prepared_segments(), (1, 0));
    for _ in 0..more {
        step(store, i);
        i += 1;
    }
    i
}

fn direct_writes_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct.probe");
    let supported = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    supported
}

#[test]
fn a_prepared_segment_is_written_into_and_reopens_as_the_same_log_after_a_crash_or_a_close() {
    prepared_segment_round_trip(false);
}

#[test]
fn a_prepared_segment_written_past_the_page_cache_reopens_as_the_same_log_after_a_crash_or_a_close()
{
    prepared_segment_round_trip(true);
}

/// Options of [`prepared_segments`] writing with `O_DIRECT` (direct.rs) or through the page
/// cache.
fn prepared_direct(dir: &Path, direct: bool) -> Options {
    let mut o = prepared_segments(dir);
    o.direct_writes = direct;
    o
}

fn prepared_segment_round_trip(direct: bool) {
    let prepared_segments = |dir: &Path| prepared_direct(dir, direct);
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(prepared_segments(dir.path())).unwrap();
    let next = into_a_prepared_segment(&store, dir.path(), 5);
    // The second segment is its prepared room, zeros after its batches; the first was cut to
    // its last batch at the roll.
    let room = std::fs::read(segment_file(dir.path(), 2)).unwrap();
    assert_eq!(room.len(), 64 << 10);
    let end = room.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!(end < room.len() / 2, "{end}");
    let files: u64 = (1..=2)
        .map(|n| {
            std::fs::metadata(segment_file(dir.path(), n))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        store.bytes_on_disk() < files,
        "the unused room is not counted"
    );
    let expected = summary(&store);
    // Into the room, the batches went straight to the disk (direct.rs), where the file system
    // takes O_DIRECT (tmpfs does not).
    let (written_direct, buffered) = store.batches_written();
    if direct && direct_writes_supported(dir.path()) {
        assert!(
            written_direct >= 5 && buffered > 0,
            "{written_direct} {buffered}"
        );
    } else {
        assert_eq!(written_direct, 0);
    }

    let crashed = copy_as_crashed(dir.path());
    let reopened = LogStore::open(prepared_segments(crashed.path())).unwrap();
    assert_eq!(summary(&reopened), expected);
    assert_eq!(reopened.cut_on_open(), 0);
    assert_verified(&reopened, 1000, "after the crash");
    // It goes on writing into the same room.
    step(&reopened, next);
    drop(reopened);
    assert_eq!(
        std::fs::metadata(segment_file(crashed.path(), 2))
            .unwrap()
            .len(),
        64 << 10
    );

    drop(store);
    let reopened = LogStore::open(prepared_segments(dir.path())).unwrap();
    assert!(matches!(
        reopened.open_path(),
        marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes: 0 }
    ));
    assert_eq!(summary(&reopened), expected);
    for i in next..next + 3 {
        step(&reopened, i);
    }
    drop(reopened);
    let scanned = copy_without_kept_index(dir.path());
    let scanned = LogStore::open(prepared_segments(scanned.path())).unwrap();
    assert_eq!(scanned.stats().unwrap().events, next + 3);
    assert_verified(&scanned, 1000, "after the close");
}

#[test]
fn a_torn_write_into_a_prepared_room_is_cut_off_and_a_whole_batch_after_damage_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(prepared_segments(dir.path())).unwrap();
    let next = into_a_prepared_segment(&store, dir.path(), 3);
    let before = summary(&store);
    let short = copy_as_crashed(dir.path());
    step(&store, next);
    let long = copy_as_crashed(dir.path());
    drop(store);
    let room = std::fs::read(segment_file(short.path(), 2)).unwrap();
    let with_batch = std::fs::read(segment_file(long.path(), 2)).unwrap();
    // The last batch starts where the two copies first differ (its header is not zeros).
    let start = (0..room.len()).find(|&i| room[i] != with_batch[i]).unwrap();
    let stop = with_batch.iter().rposition(|b| *b != 0).unwrap() + 1;
    for cut in [start + 1, (start + stop) / 2, stop - 1] {
        let copy = copy_as_crashed(short.path());
        let mut torn = room.clone();
        torn[start..cut].copy_from_slice(&with_batch[start..cut]);
        std::fs::write(segment_file(copy.path(), 2), &torn).unwrap();
        let store = LogStore::open(prepared_segments(copy.path())).unwrap();
        assert_eq!(summary(&store), before, "cut at {cut}");
        // Cut off with the room after it.
        assert_eq!(
            store.cut_on_open(),
            (room.len() - start) as u64,
            "cut at {cut}"
        );
        let after = std::fs::read(segment_file(copy.path(), 2)).unwrap();
        assert_eq!(after, room[..start], "cut at {cut}");
        step(&store, next);
        drop(store);
        let store = LogStore::open(prepared_segments(copy.path())).unwrap();
        assert_eq!(store.stats().unwrap().events, next + 1, "cut at {cut}");
        assert_verified(&store, 1000, &format!("cut at {cut}"));
    }
    // The whole batch written one byte later, after a byte of damage: not a torn write.
    let copy = copy_as_crashed(short.path());
    let mut damaged = room.clone();
    damaged[start] = 0x5a;
    damaged[start + 1..stop + 1].copy_from_slice(&with_batch[start..stop]);
    std::fs::write(segment_file(copy.path(), 2), &damaged).unwrap();
    match LogStore::open(prepared_segments(copy.path())) {
        Err(Error::Corrupt { location, .. }) => {
            assert!(location.contains("segment 2"), "{location}")
        }
        other => panic!("damage followed by a whole batch was taken for a torn write: {other:?}"),
    }
}
