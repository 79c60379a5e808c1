//! A baseline, not the store: what the log part of a commit costs when written as plain appends
//! to one file, with the same SHA-256 chain step per entry and one `fdatasync` per batch. The
//! `commit` benchmark measures the real store on the same shapes; the gap between the two is
//! what a log-structured store (the suggested redesign in docs/PERFORMANCE.md) could gain on
//! this disk. Run with `cargo bench -p marketgov-store-sqlite --bench append_baseline`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup fails loudly

use std::io::Write;

use sha2::{Digest, Sha256};

fn main() {
    divan::main();
}

/// The size of a bench log entry (about 1.3 KiB of JSON).
const ENTRY_BYTES: usize = 1_350;

/// A batch of `size` entries: chained, framed (length, hash, body), appended, synced once.
#[divan::bench(args = [1, 16, 64, 256], sample_count = 20, sample_size = 1)]
fn one_appended_batch(bencher: divan::Bencher, size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("segment"))
        .unwrap();
    let body = vec![b'{'; ENTRY_BYTES];
    let mut prev = [0u8; 32];
    let mut frame = Vec::with_capacity(size * (ENTRY_BYTES + 36));
    bencher
        .counter(divan::counter::ItemsCount::new(size))
        .bench_local(|| {
            frame.clear();
            for _ in 0..size {
                let mut h = Sha256::new();
                h.update(prev);
                h.update(&body);
                prev = h.finalize().into();
                frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
                frame.extend_from_slice(&prev);
                frame.extend_from_slice(&body);
            }
            file.write_all(&frame).unwrap();
            file.sync_data().unwrap();
        });
}
