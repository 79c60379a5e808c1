//! `marketgov bench`: a deterministic (seeded) customer-lifecycle workload (SPEC 5), in process on
//! a fresh embedded store, every acknowledgement synced. Each customer's events run in order
//! (subscribe; payment processed; the same payment again; usage; an upgrade with proration; its
//! payment; a renewal; for some, a failed payment that starts the retry schedule; cancel);
//! customers run concurrently. Every answer is checked against what the step must produce, so speed
//! never hides wrong answers. Connectors do not run: this measures deciding and committing.
//!
//! Not built yet: `--target http://...` (the same workload over HTTP).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::{CustomerEvent, Input};
use marketgov_engine::{App, EngineOptions, ManualClock};
use marketgov_store::Store as _;
use serde_json::{json, Value};

/// What the bench is asked to do.
#[derive(Debug)]
pub struct Settings {
    pub customers: usize,
    pub concurrency: usize,
    pub seed: u64,
    pub json: bool,
    pub data_dir: Option<PathBuf>,
    pub shards: usize,
}

/// One step of a customer's script and the statuses it may answer.
struct Step {
    event: Value,
    allowed: &'static [EventStatus],
}

fn rng(seed: u64, customer: usize) -> u64 {
    let mut z = seed.wrapping_add((customer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn script(seed: u64, i: usize) -> Vec<Step> {
    use EventStatus as S;
    let r = rng(seed, i);
    let c = format!("bench-{i}");
    let ok: &'static [EventStatus] = &[S::Completed];
    let mut steps = vec![
        Step {
            event: json!({"type": "customer_subscribes", "customer_id": c, "sku": "basic"}),
            allowed: ok,
        },
        Step {
            event: json!({"type": "payment_processed", "customer_id": c, "amount": 1000, "currency": "USD", "payment_id": format!("{c}-p1")}),
            allowed: ok,
        },
        // The processor delivers the same payment again (another request): a replay, no change.
        Step {
            event: json!({"type": "payment_processed", "customer_id": c, "amount": 1000, "currency": "USD", "payment_id": format!("{c}-p1")}),
            allowed: ok,
        },
        Step {
            event: json!({"type": "usage_exceeds_quota", "customer_id": c, "resource": "api", "current_usage": r % 1600, "limit": 1000}),
            allowed: &[S::Completed, S::ConflictResolved],
        },
        Step {
            event: json!({"type": "customer_upgrades", "customer_id": c, "old_sku": "basic", "new_sku": "pro"}),
            allowed: ok,
        },
        Step {
            event: json!({"type": "payment_processed", "customer_id": c, "amount": 2000, "currency": "USD", "payment_id": format!("{c}-p2")}),
            allowed: ok,
        },
        Step {
            event: json!({"type": "renewal_due", "customer_id": c, "subscription_id": "sub-1"}),
            allowed: ok,
        },
    ];
    if r.is_multiple_of(10) {
        steps.push(Step { event: json!({"type": "payment_failed", "customer_id": c, "reason": "card_declined", "payment_id": format!("{c}-f1")}), allowed: ok });
    }
    steps.push(Step {
        event: json!({"type": "customer_cancels", "customer_id": c}),
        allowed: ok,
    });
    steps
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (dir, temporary) = match &settings.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (
                std::env::temp_dir()
                    .join(format!("marketgov-bench-{}-{nanos}", std::process::id())),
                true,
            )
        }
    };
    let outcome = runtime.block_on(run_on(&settings, &dir));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn run_on(settings: &Settings, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut options = EngineOptions::new(dir);
    options.clock = Arc::new(ManualClock::starting_at("2026-01-01T00:00:00Z".parse()?));
    options.shards = settings.shards.max(1);
    let app = App::open(options).with_context(|| format!("opening {}", dir.display()))?;
    for (sku, price) in [("basic", 1000), ("pro", 2000)] {
        let submit = json!({"type": "product_submitted", "sku": sku, "name": sku, "price": price, "currency": "USD",
            "billing_period_days": 30, "quotas": {"api": 1000}});
        for value in [
            submit,
            json!({"type": "product_published", "sku": sku, "expected_version": 1}),
        ] {
            let Input::Catalog(c) = Input::from_value(value)? else {
                anyhow::bail!("bench catalog")
            };
            app.submit_catalog("bench", None, c).await?;
        }
    }
    let total_events: usize = (0..settings.customers)
        .map(|i| script(settings.seed, i).len())
        .sum();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total_events)));
    let errors: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let (decide_before, handle_before) = app.timing_nanos();
    let stats_before = app.store().stats()?;
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        let quiet = settings.json;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !quiet {
                    let n = done.load(Ordering::Relaxed);
                    eprint!(
                        "\r{n}/{total_events} events ({:.0}%)",
                        100.0 * n as f64 / total_events.max(1) as f64
                    );
                }
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency.max(1) {
        let (app, next, done, latencies, errors) = (
            app.clone(),
            next.clone(),
            done.clone(),
            latencies.clone(),
            errors.clone(),
        );
        let (customers, seed) = (settings.customers, settings.seed);
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= customers {
                    break;
                }
                for (n, step) in script(seed, i).into_iter().enumerate() {
                    let event: CustomerEvent = match Input::from_value(step.event) {
                        Ok(Input::Customer(e)) => e,
                        _ => continue,
                    };
                    let key = format!("bench-{i}-{n}");
                    let t = Instant::now();
                    let result = app.submit_event("bench", Some(&key), event).await;
                    mine.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    done.fetch_add(1, Ordering::Relaxed);
                    let problem = match result {
                        Ok(reply) if reply.replayed => Some("unexpected_replay".to_owned()),
                        Ok(reply) if step.allowed.contains(&reply.status) => None,
                        Ok(reply) => Some(format!(
                            "unexpected_status_{}_at_step_{n}",
                            reply.status.name()
                        )),
                        Err(e) => Some(
                            format!("{e:?}")
                                .split(['(', ' ', '{'])
                                .next()
                                .unwrap_or("error")
                                .to_owned(),
                        ),
                    };
                    if let Some(kind) = problem {
                        if let Ok(mut errors) = errors.lock() {
                            *errors.entry(kind).or_default() += 1;
                        }
                    }
                }
            }
            if let Ok(mut all) = latencies.lock() {
                all.extend(mine);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    if !settings.json {
        eprintln!();
    }
    let (decide_after, handle_after) = app.timing_nanos();
    let stats = app.store().stats()?;
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(
            ((lat.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(lat.len().saturating_sub(1)),
        )
        .copied()
        .unwrap_or(0)
    };
    let events = lat.len() as u64;
    let db_bytes: u64 = ["marketgov.db", "marketgov.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let commits = stats.commits - stats_before.commits;
    let batches = (stats.batches - stats_before.batches).max(1);
    let decide = decide_after - decide_before;
    let handle = (handle_after - handle_before).max(1);
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let report = json!({
        "mode": "inproc",
        "customers": settings.customers,
        "concurrency": settings.concurrency,
        "shards": settings.shards,
        "seed": settings.seed,
        "events": events,
        "seconds": elapsed.as_secs_f64(),
        "events_per_second": events as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency_us": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "p999": pct(0.999), "max": lat.last().copied().unwrap_or(0)},
        "errors": errors,
        "peak_rss_mib": peak_rss_kib() as f64 / 1024.0,
        "store_bytes_per_event": db_bytes as f64 / stats.events.max(1) as f64,
        "commit_batch_size_mean": commits as f64 / batches as f64,
        "coordination_compute_ratio": (handle.saturating_sub(decide)) as f64 / decide.max(1) as f64,
        "outbox_depth": stats.outbox,
    });
    let mut out = std::io::stdout().lock();
    if settings.json {
        writeln!(out, "{report}")?;
    } else {
        writeln!(
            out,
            "marketgov bench (in process, embedded store, every acknowledgement synced)"
        )?;
        writeln!(
            out,
            "  {} customers, concurrency {}, {} shards, seed {}",
            settings.customers, settings.concurrency, settings.shards, settings.seed
        )?;
        writeln!(
            out,
            "  {events} events in {:.2} s: {:.0} events/s",
            elapsed.as_secs_f64(),
            report["events_per_second"].as_f64().unwrap_or(0.0)
        )?;
        writeln!(
            out,
            "  latency p50 {} us, p95 {} us, p99 {} us, p99.9 {} us",
            pct(0.5),
            pct(0.95),
            pct(0.99),
            pct(0.999)
        )?;
        writeln!(
            out,
            "  errors: {}",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                format!("{errors:?}")
            }
        )?;
        writeln!(out, "  peak memory {:.1} MiB, store {:.0} bytes/event, mean commit batch {:.1}, coordination/compute {:.1}",
            report["peak_rss_mib"].as_f64().unwrap_or(0.0), report["store_bytes_per_event"].as_f64().unwrap_or(0.0),
            report["commit_batch_size_mean"].as_f64().unwrap_or(0.0), report["coordination_compute_ratio"].as_f64().unwrap_or(0.0))?;
    }
    if !errors.is_empty() {
        anyhow::bail!("the bench saw wrong answers: {errors:?}");
    }
    Ok(())
}
