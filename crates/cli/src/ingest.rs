//! `marketgov ingest`: reads inputs as JSON lines on stdin, decides them on the durable engine,
//! and prints one acknowledgement line per input once it is committed and synced. Also runs the
//! timer service and the outbox executor while it works. Used by the crash tests; handy for
//! loading data.
//!
//! Input line: `{"tenant"?: "default", "key": "<idempotency key>", "input": {<event or command>}}`.
//! Output line: `{"key", "status", "replayed", "seq", "hash"}` on success, `{"key", "error"}` when
//! refused (nothing acknowledged).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use marketgov_core::Input;
use marketgov_engine::{App, EngineOptions};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Submissions in flight at most.
pub const CONCURRENCY_MAX: usize = 4096;
/// How often the timer service and outbox executor run.
const BACKGROUND_TICK_MS: u64 = 20;
/// How long the exit waits for queued effects to settle.
const DRAIN_SECONDS_MAX: u64 = 60;
/// How often (in ticks) expired idempotency keys are swept.
const SWEEP_EVERY_TICKS: u64 = 500;

pub fn run(data_dir: PathBuf, concurrency: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let app = App::open(EngineOptions::new(&data_dir))
            .with_context(|| format!("opening {}", data_dir.display()))?;
        let background = {
            let app = app.clone();
            tokio::spawn(async move {
                for tick in 0u64.. {
                    let _ = app.fire_due_timers().await;
                    let _ = app.run_effects().await;
                    if tick % SWEEP_EVERY_TICKS == 0 {
                        let _ = app.sweep_idempotency().await;
                    }
                    tokio::time::sleep(Duration::from_millis(BACKGROUND_TICK_MS)).await;
                }
            })
        };
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let permits = Arc::new(Semaphore::new(concurrency.clamp(1, CONCURRENCY_MAX)));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut tasks = Vec::new();
        while let Some(line) = rx.recv().await {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .context("semaphore closed")?;
            let (app, out) = (app.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let answer = submit(&app, &line).await;
                if let Ok(mut out) = out.lock() {
                    let _ = writeln!(out, "{answer}");
                    let _ = out.flush();
                }
                drop(permit);
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        // Settle what the inputs asked for before exiting (held or backed-off effects included),
        // within a bound.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(DRAIN_SECONDS_MAX);
        use marketgov_store::Store as _;
        while tokio::time::Instant::now() < deadline {
            let ran = app.run_effects().await.unwrap_or(0);
            let left = app
                .store()
                .ready_outbox(i64::MAX, 1)
                .map(|r| r.len())
                .unwrap_or(0);
            if left == 0 {
                break;
            }
            if ran == 0 {
                tokio::time::sleep(Duration::from_millis(BACKGROUND_TICK_MS)).await;
            }
        }
        background.abort();
        Ok(())
    })
}

async fn submit(app: &App, line: &str) -> Value {
    let request: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"key": null, "error": format!("malformed line: {e}")}),
    };
    let key = request["key"].as_str().map(str::to_owned);
    let tenant = request["tenant"].as_str().unwrap_or("default").to_owned();
    let input = match Input::from_value(request["input"].clone()) {
        Ok(input) => input,
        Err(e) => return json!({"key": key, "error": e.to_string()}),
    };
    let reply = match input {
        Input::Customer(event) => app.submit_event(&tenant, key.as_deref(), event).await,
        Input::Catalog(command) => app.submit_catalog(&tenant, key.as_deref(), command).await,
    };
    match reply {
        Ok(r) => json!({
            "key": key,
            "status": r.status.name(),
            "replayed": r.replayed,
            "seq": r.body()["receipt"]["seq"],
            "hash": r.body()["receipt"]["hash"],
        }),
        Err(e) => json!({"key": key, "error": e.to_string()}),
    }
}
