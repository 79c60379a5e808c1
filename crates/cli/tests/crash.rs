//! Crash test: a real `marketgov ingest` process decides a stream of events on the embedded
//! store and is killed with SIGKILL at seeded random moments (at least 20 kill points per run),
//! then restarted on the same directory with everything it had not acknowledged. At the end:
//! every acknowledged event is in the log with the hash it was acknowledged with, no effect was
//! applied twice by the sandbox receiver, every timer set is still pending or fired once, and the
//! audit log verifies. `CRASH_SEED=<n>` replays a run; `CRASH_KILLS=<n>` sets the kill points.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The next chunk of the workload: new customers subscribing, using, upgrading, paying and
/// cancelling, a few of them declined, plus a near-future price change so timers fire mid-run.
fn chunk(round: usize, rng: &mut Rng) -> Vec<(String, Value)> {
    let mut lines = Vec::new();
    let soon = jiff::Timestamp::now().as_millisecond() + 100 + rng.below(200) as i64;
    let soon = jiff::Timestamp::from_millisecond(soon).unwrap();
    lines.push((
        format!("r{round}-price"),
        json!({"type": "product_price_changed", "sku": format!("promo{round}"),
        "expected_version": 2, "price": 900 + round, "effective_at": soon.to_string()}),
    ));
    for i in 0..40 {
        let suffix = match rng.below(10) {
            0 => "-declined",
            _ => "",
        };
        let c = format!("r{round}c{i}{suffix}");
        let sku = if rng.below(5) == 0 { "gated" } else { "basic" };
        lines.push((
            format!("{c}-sub"),
            json!({"type": "customer_subscribes", "customer_id": c, "sku": sku}),
        ));
        lines.push((
            format!("{c}-use"),
            json!({"type": "usage_exceeds_quota", "customer_id": c, "resource": "api",
            "current_usage": rng.below(2000), "limit": 1000}),
        ));
        if rng.below(3) == 0 {
            lines.push((format!("{c}-up"), json!({"type": "customer_upgrades", "customer_id": c, "old_sku": "basic", "new_sku": "pro"})));
        }
        if rng.below(4) == 0 {
            lines.push((
                format!("{c}-cancel"),
                json!({"type": "customer_cancels", "customer_id": c}),
            ));
        }
    }
    lines
}

fn catalog(rounds: usize) -> Vec<(String, Value)> {
    let mut lines = Vec::new();
    let product = |sku: &str, price: i64, approval: bool| {
        json!({"type": "product_submitted", "sku": sku, "name": sku, "price": price, "currency": "USD",
            "billing_period_days": 30, "requires_approval": approval, "quotas": {"api": 1000}})
    };
    let mut skus: Vec<(String, i64, bool)> = vec![
        ("basic".into(), 1000, false),
        ("pro".into(), 2500, false),
        ("gated".into(), 9000, true),
    ];
    skus.extend((0..=rounds).map(|r| (format!("promo{r}"), 500, false)));
    for (sku, price, approval) in skus {
        lines.push((format!("{sku}-submit"), product(&sku, price, approval)));
        lines.push((
            format!("{sku}-publish"),
            json!({"type": "product_published", "sku": sku, "expected_version": 1}),
        ));
    }
    lines
}

/// Runs one ingest process over `lines`; kills it after `kill_after` if given. Returns the acks.
fn run_once(
    data_dir: &std::path::Path,
    lines: &[(String, Value)],
    kill_after: Option<Duration>,
) -> (BTreeMap<String, Value>, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args([
            "ingest",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--concurrency",
            "64",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = BTreeMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let (Some(key), None) = (v["key"].as_str(), v.get("error")) {
                acks.insert(key.to_owned(), v.clone());
            }
        }
        acks
    });
    let body: String = lines
        .iter()
        .map(|(k, input)| format!("{}\n", json!({"key": k, "input": input})))
        .collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(body.as_bytes()); // fails once the process is killed: fine
    });
    let killed = match kill_after {
        Some(after) => {
            std::thread::sleep(after);
            let running = child.try_wait().unwrap().is_none();
            let _ = child.kill(); // SIGKILL
            running
        }
        None => false,
    };
    let _ = child.wait();
    let _ = writer.join();
    (reader.join().unwrap(), killed)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("crash test: CRASH_SEED={seed} CRASH_KILLS={kills}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: Vec<(String, Value)> = catalog(kills);
    let mut kill_points = 0;
    let mut round = 0;
    while kill_points < kills && round < kills * 4 {
        pending.extend(chunk(round, &mut rng));
        let after = Duration::from_millis(20 + rng.below(250));
        let (acks, killed) = run_once(&data, &pending, Some(after));
        kill_points += usize::from(killed);
        for (key, ack) in acks {
            if let Some(first) = acked.get(&key) {
                assert_eq!(
                    first["seq"], ack["seq"],
                    "{key}: acknowledged twice with different receipts"
                );
            }
            acked.insert(key, ack);
        }
        pending.retain(|(k, _)| !acked.contains_key(k));
        round += 1;
    }
    assert!(
        kill_points >= 20.min(kills),
        "only {kill_points} kill points hit (seed {seed})"
    );
    // A last run without a kill settles everything.
    let (acks, _) = run_once(&data, &pending, None);
    acked.extend(acks);
    pending.retain(|(k, _)| !acked.contains_key(k));
    assert!(
        pending.is_empty(),
        "unacknowledged after the final run: {:?}",
        pending.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = marketgov_engine::App::open(marketgov_engine::EngineOptions::new(&data)).unwrap();
        let store = app.store();
        use marketgov_store::Store;

        // Every acknowledged event is in the log, with the hash it was acknowledged with.
        for (key, ack) in &acked {
            assert!(
                store.idempotency("default", key).unwrap().is_some(),
                "{key} acknowledged but not stored (seed {seed})"
            );
            let seq = ack["seq"].as_u64().unwrap();
            let entry = store.audit_entries(seq, 1).unwrap();
            assert_eq!(
                marketgov_audit::to_hex(&entry[0].hash),
                ack["hash"].as_str().unwrap(),
                "{key} (seed {seed})"
            );
        }

        // No effect was applied twice, and every delivered effect was applied.
        let ledger = app.sandbox().ledger().unwrap();
        assert!(!ledger.is_empty());
        for (key, applied, _delivered) in &ledger {
            assert_eq!(
                *applied, 1,
                "effect {key} applied {applied} times (seed {seed})"
            );
        }
        assert!(
            store.ready_outbox(i64::MAX, 10).unwrap().is_empty(),
            "effects left undone (seed {seed})"
        );

        // Every timer fired at most once, and every stored timer is one its stream still has.
        let mut fired = BTreeSet::new();
        let mut from = 1;
        loop {
            let page = store.audit_entries(from, 2048).unwrap();
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in &page {
                let logged: marketgov_engine::LoggedDecision =
                    serde_json::from_slice(&e.bytes).unwrap();
                if logged.input["type"] == "timer_fired" && logged.status.applies() {
                    let id = (
                        logged.stream.clone(),
                        logged.input["timer"].to_string(),
                        logged.input["due_at"].to_string(),
                    );
                    assert!(
                        fired.insert(id.clone()),
                        "timer fired twice: {id:?} (seed {seed})"
                    );
                }
            }
            from = last + 1;
        }
        assert!(
            !fired.is_empty(),
            "price changes must have fired during the run (seed {seed})"
        );
        for t in store.due_timers(i64::MAX, 100_000).unwrap() {
            let Some(id) = t.stream.strip_prefix("customer:default/") else {
                continue;
            };
            let customer = app.customer("default", id).await.unwrap().unwrap();
            let pending = customer
                .timers
                .iter()
                .any(|(k, due)| k.name() == t.kind && due.as_millisecond() == t.due_at_ms);
            assert!(
                pending,
                "stored timer {t:?} is not pending for its customer (seed {seed})"
            );
        }

        let report = app.audit_verify().unwrap();
        assert!(report.ok, "{report:?} (seed {seed})");
    });
    eprintln!(
        "crash test: {kill_points} kill points, {} acknowledged, {} rounds",
        acked.len(),
        round + 1
    );
}
