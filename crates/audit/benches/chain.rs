//! Microbenchmark of one step of the audit hash chain: hashing a typical logged event (about
//! 1.3 KiB of JSON) onto the head. Run with `cargo bench -p marketgov-audit --bench chain`.

use marketgov_audit::Head;

fn main() {
    divan::main();
}

/// One `Head::append` per size: the log entry's bytes are what is hashed.
#[divan::bench(args = [256, 1300, 4096])]
fn one_hash_chain_step(bencher: divan::Bencher, bytes: usize) {
    let mut head = Head::default();
    bencher
        .counter(divan::counter::BytesCount::new(bytes))
        .with_inputs(|| vec![b'x'; bytes])
        .bench_local_values(|entry| head.append(entry).hash);
}
