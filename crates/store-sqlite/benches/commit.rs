//! Microbenchmark of one store commit batch: N commits shaped like a decided event (its log entry
//! of about 1.3 KiB, an idempotency record, an outbox row), queued together and written in one
//! transaction with one sync, timed until every one is acknowledged. Run
//! with `cargo bench -p marketgov-store-sqlite --bench commit`; it writes to a temporary directory
//! on the disk under test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup fails loudly

use marketgov_store::{Commit, EventWrite, IdempotencyRecord, OutboxWrite, Store};
use marketgov_store_sqlite::{Options, SqliteStore};

fn main() {
    divan::main();
}

fn decided_event(n: u64) -> Commit {
    let stream = format!("customer:bench/c{}", n % 100_000);
    Commit {
        events: vec![EventWrite {
            stream: stream.clone(),
            stream_version: n / 100_000 + 1,
            event_id: format!("evt-{n}"),
            at_ms: n as i64,
            body: vec![b'{'; 1300],
        }],
        idempotency: vec![IdempotencyRecord {
            tenant: "bench".into(),
            key: format!("key-{n}"),
            operation: "events".into(),
            fingerprint: [7; 32],
            response: br#"{"operation":"events","stream_version":1}"#.to_vec(),
            created_at_ms: n as i64,
        }],
        outbox: vec![OutboxWrite {
            effect_key: format!("evt-{n}:0"),
            stream,
            connector: "payments".into(),
            body: vec![b'{'; 150],
            not_before_ms: n as i64,
        }],
        ..Commit::default()
    }
}

/// A batch of `size` commits: queued at once, so the writer takes them as one group commit.
#[divan::bench(args = [1, 16, 64, 256], sample_count = 20, sample_size = 1)]
fn one_store_commit_batch(bencher: divan::Bencher, size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(Options::new(dir.path())).unwrap();
    let mut n = 0u64;
    bencher
        .counter(divan::counter::ItemsCount::new(size))
        .with_inputs(|| {
            let batch: Vec<Commit> = (0..size).map(|i| decided_event(n + i)).collect();
            n += size;
            batch
        })
        .bench_local_values(|batch| {
            let acks: Vec<_> = batch
                .into_iter()
                .map(|c| store.commit(c).unwrap())
                .collect();
            for ack in acks {
                ack.blocking_recv().unwrap().unwrap();
            }
        });
}

/// Commits written per pass of [`sustained_commits`].
const SUSTAINED_COMMITS: u64 = 20_000;

/// Sustained load: commits kept `in_flight` deep (the next one queued as soon as the oldest is
/// acknowledged), so the writer never runs dry; measures the store's commits per second when it,
/// not its callers, is the limit.
#[divan::bench(args = [64, 512], sample_count = 5, sample_size = 1)]
fn sustained_commits(bencher: divan::Bencher, in_flight: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(Options::new(dir.path())).unwrap();
    let mut n = 0u64;
    bencher
        .counter(divan::counter::ItemsCount::new(SUSTAINED_COMMITS))
        .bench_local(|| {
            let mut acks = std::collections::VecDeque::with_capacity(in_flight);
            for _ in 0..SUSTAINED_COMMITS {
                if acks.len() >= in_flight {
                    let ack: marketgov_store::Ack = acks.pop_front().unwrap();
                    ack.blocking_recv().unwrap().unwrap();
                }
                acks.push_back(store.commit(decided_event(n)).unwrap());
                n += 1;
            }
            for ack in acks {
                ack.blocking_recv().unwrap().unwrap();
            }
        });
}
