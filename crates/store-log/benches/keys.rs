//! Microbenchmark of the key index's lookups as closed segments pile up: a table of `runs`
//! closed segments of `KEYS_PER_RUN` keys each (about what one 256 MiB segment holds of effect
//! keys at the bench's workload is 500,000; fewer here to keep the setup short) plus an open
//! segment, asked for a key it never held (the common case: every new key is checked), for the
//! newest key, and for the oldest. A lookup offers candidate locations newest first until one is
//! accepted: for a new key every one is refused (each is a false positive of the filters and
//! costs a page read of a run file; the caller would also read the record), for the others the
//! right one is accepted. The keys are shaped as the engine's effect keys, so each carries its
//! [`Ordinal`] and the runs are fenced: `new_key` and the others ask with the key's ordinal, as
//! the writer does; `new_key_without_ordinal` asks as it did before fences (every stack's filter
//! probed). Run with `cargo bench -p marketgov-store-log --bench keys`.

use std::cell::Cell;

use marketgov_store_log::keys::{Gate, KeyTable, Ordinal};
use marketgov_store_log::Loc;

const KEYS_PER_RUN: u64 = 200_000;

fn main() {
    divan::main();
}

struct Table {
    _dir: tempfile::TempDir,
    table: KeyTable,
    keys: u64,
}

/// The effect key of an event numbered `n` by one process, as the engine writes it.
fn key(n: u64) -> String {
    format!("evt-19aea0f3c80-0badf00d-{n:x}:0")
}

/// A key's hash and ordinal.
fn asked(table: &KeyTable, n: u64) -> (u64, Option<Ordinal>) {
    let k = key(n);
    (table.hash(&[&k]), Ordinal::of_key(&k))
}

/// `runs` closed segments and an open one, `KEYS_PER_RUN` keys each.
fn table(runs: u32) -> Table {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (hash_keys, _) = marketgov_store_log::hash_keys::HashKeys::load_or_create(dir.path())
        .unwrap_or_else(|e| panic!("hash keys: {e}"));
    let mut table = KeyTable::new(dir.path(), "bench", Gate::None, hash_keys.hash64("bench"));
    let mut n = 0;
    for segment in 0..=runs {
        for i in 0..KEYS_PER_RUN {
            let (h, ordinal) = asked(&table, n);
            if let Err(e) = table.insert(h, ordinal, Loc::new(segment, 100 + i * 64), n as i64) {
                panic!("insert: {e:?}");
            }
            n += 1;
        }
        if segment < runs {
            if let Err(e) = table.close_segment() {
                panic!("close: {e}");
            }
        }
    }
    Table {
        _dir: dir,
        table,
        keys: n,
    }
}

#[divan::bench(args = [1, 8, 32, 75], sample_count = 2000)]
fn new_key(bencher: divan::Bencher, runs: u32) {
    let t = table(runs);
    let next = Cell::new(t.keys);
    bencher
        .with_inputs(|| {
            let n = next.get();
            next.set(n + 1);
            asked(&t.table, n)
        })
        .bench_local_values(|(h, o)| t.table.find_newest(h, o, |_| Ok(None::<Loc>)));
}

#[divan::bench(args = [1, 8, 32, 75], sample_count = 2000)]
fn new_key_without_ordinal(bencher: divan::Bencher, runs: u32) {
    let t = table(runs);
    let next = Cell::new(t.keys);
    bencher
        .with_inputs(|| {
            let n = next.get();
            next.set(n + 1);
            asked(&t.table, n).0
        })
        .bench_local_values(|h| t.table.find_newest(h, None, |_| Ok(None::<Loc>)));
}

#[divan::bench(args = [1, 8, 32, 75], sample_count = 30)]
fn newest_key(bencher: divan::Bencher, runs: u32) {
    let t = table(runs);
    let (h, o) = asked(&t.table, t.keys - 1);
    let newest = Loc::new(runs, 100 + (KEYS_PER_RUN - 1) * 64);
    bencher.bench_local(|| {
        t.table
            .find_newest(h, o, |loc| Ok((loc == newest).then_some(loc)))
    });
}

#[divan::bench(args = [1, 8, 32, 75], sample_count = 30)]
fn oldest_key(bencher: divan::Bencher, runs: u32) {
    let t = table(runs);
    let (h, o) = asked(&t.table, 0);
    let oldest = Loc::new(0, 100);
    bencher.bench_local(|| {
        t.table
            .find_newest(h, o, |loc| Ok((loc == oldest).then_some(loc)))
    });
}
