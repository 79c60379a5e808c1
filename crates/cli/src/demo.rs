//! `marketgov demo`: a scripted marketplace week on the durable engine, printed from the log.
//!
//! It runs on a fresh embedded store (a temporary directory unless `--data-dir` is given) with a
//! manual clock that the script moves; timers fire at their deadlines and the sandbox connector
//! answers charges (customers whose id ends in `-declined` are declined). What is printed is read
//! back from the durable log, so it shows every decision: the script's events, timer firings and
//! the connector's results. It ends with an audit verification and a replay of the whole log
//! through the pure core, which must rebuild the same state.

use std::collections::BTreeMap;
use std::io::Write;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use jiff::{SignedDuration, Timestamp};
use marketgov_core::orchestrator::{CatalogResult, EventResult, Outcome};
use marketgov_core::timeline::Timeline;
use marketgov_core::{EffectKind, Input};
use marketgov_engine::{App, Clock, EngineOptions, LoggedDecision, ManualClock};
use marketgov_store::Store;
use serde_json::{json, Value};

/// One line of the script.
enum Step {
    /// Print a heading.
    Say(&'static str),
    /// Send an input, then let the connectors answer.
    Send(Value),
    /// Send an input and leave its effects queued (a charge still in flight at the next step).
    SendHeld(Value),
    /// Let time pass (timers fire on the way).
    Wait(SignedDuration),
}

fn product(
    sku: &str,
    name: &str,
    price: i64,
    trial_days: u32,
    requires_approval: bool,
    api_calls: u64,
) -> [Step; 2] {
    [
        Step::Send(
            json!({"type": "product_submitted", "sku": sku, "name": name, "price": price, "currency": "USD",
            "billing_period_days": 30, "trial_days": trial_days, "requires_approval": requires_approval,
            "quotas": {"api_calls": api_calls}}),
        ),
        Step::Send(json!({"type": "product_published", "sku": sku, "expected_version": 1})),
    ]
}

fn event(customer: &str, kind: &str, fields: Value) -> Step {
    let mut body = json!({"type": kind, "customer_id": customer});
    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
        body.extend(fields);
    }
    Step::Send(body)
}

fn held(step: Step) -> Step {
    match step {
        Step::Send(value) => Step::SendHeld(value),
        other => other,
    }
}

fn script(start: Timestamp) -> Vec<Step> {
    let mins = |n: i64| SignedDuration::from_mins(n);
    let hours = |n: i64| SignedDuration::from_hours(n);
    let mut s = vec![Step::Say("The catalog")];
    s.extend(product("starter", "Starter", 1900, 0, false, 10_000));
    s.extend(product("growth", "Growth", 4900, 0, false, 50_000));
    s.extend(product("scale", "Scale", 9900, 0, false, 200_000));
    s.extend(product(
        "enterprise",
        "Enterprise",
        49_900,
        0,
        true,
        1_000_000,
    ));
    s.push(Step::Say(
        "A second publish of scale names a stale version and is refused",
    ));
    s.push(Step::Send(
        json!({"type": "product_published", "sku": "scale", "expected_version": 1}),
    ));
    s.extend([
        Step::Say("Monday 09:00: customers arrive; the sandbox payment connector answers each charge"),
        event("acme", "customer_subscribes", json!({"sku": "starter"})),
        event("globex", "customer_subscribes", json!({"sku": "enterprise"})),
        event("initech-declined", "customer_subscribes", json!({"sku": "growth"})),
        event("umbrella", "customer_subscribes", json!({"sku": "growth"})),
        event("hooli", "customer_subscribes", json!({"sku": "starter"})),
        Step::Say("A bank transfer arrives twice, then once more with another amount"),
        event("acme", "payment_processed", json!({"amount": 500, "currency": "USD", "payment_id": "wire-acme-1"})),
        event("acme", "payment_processed", json!({"amount": 500, "currency": "USD", "payment_id": "wire-acme-1"})),
        event("acme", "payment_processed", json!({"amount": 1000, "currency": "USD", "payment_id": "wire-acme-1"})),
        Step::Wait(mins(30)),
        Step::Say("Usage climbs past the quota; quota and tenant slot must agree"),
        event("acme", "usage_exceeds_quota", json!({"resource": "api_calls", "current_usage": 8_500, "limit": 10_000})),
        event("acme", "usage_exceeds_quota", json!({"resource": "api_calls", "current_usage": 12_500, "limit": 10_000})),
        Step::Say("Umbrella's renewal is charged; risk suspends it for fraud before the charge settles"),
        held(event("umbrella", "renewal_due", json!({"subscription_id": "sub-1"}))),
        event("umbrella", "manual_suspension", json!({"reason": "fraud: stolen identity", "actor": "risk-team"})),
        Step::Say("Two plan changes for hooli race; the later one wins"),
        event("hooli", "customer_upgrades", json!({"old_sku": "starter", "new_sku": "scale",
            "occurred_at": (start + mins(31)).to_string()})),
        event("hooli", "customer_upgrades", json!({"old_sku": "starter", "new_sku": "growth",
            "occurred_at": (start + mins(30)).to_string()})),
        Step::Say("Time passes: initech's charge retries, globex's approval escalations"),
        Step::Wait(hours(5)),
        Step::Say("Initech pays by bank transfer; the retries stop"),
        event("initech-declined", "payment_processed", json!({"amount": 4900, "currency": "USD", "payment_id": "wire-initech-1"})),
        Step::Say("Three days pass: globex is approved automatically, umbrella's suspension ends in a refund"),
        Step::Wait(hours(70)),
        Step::Say("Mid-period: acme upgrades with proration, and later cancels at period end"),
        Step::Wait(hours(24 * 11)),
        event("acme", "customer_upgrades", json!({"old_sku": "starter", "new_sku": "growth"})),
        Step::Wait(mins(1)),
        event("acme", "customer_cancels", json!({"reason": "moving to annual billing"})),
        Step::Wait(hours(24 * 16)),
    ]);
    s
}

/// Runs the demo, writing to `out`.
pub fn run(
    json_lines: bool,
    data_dir: Option<PathBuf>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let start: Timestamp = "2026-03-02T09:00:00Z".parse().context("demo start time")?;
    let (dir, temporary) = match data_dir {
        Some(dir) => (dir, false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (
                std::env::temp_dir().join(format!("marketgov-demo-{}-{nanos}", std::process::id())),
                true,
            )
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(run_on(json_lines, &dir, start, out));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn run_on(
    json_lines: bool,
    dir: &std::path::Path,
    start: Timestamp,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let clock = ManualClock::starting_at(start);
    let mut options = EngineOptions::new(dir);
    options.clock = Arc::new(clock.clone());
    options.checkpoint_every_entries = 16;
    let app = App::open(options).with_context(|| format!("opening {}", dir.display()))?;
    let mut printer = Printer {
        json_lines,
        next_seq: app.store().head_seq() + 1,
        tally: Tally::default(),
    };
    if !json_lines {
        writeln!(
            out,
            "marketgov demo: a marketplace week on the durable engine, in {}",
            dir.display()
        )?;
        writeln!(out, "Every line below is read back from the signed, hash-chained log after it was committed.")?;
    }
    for (n, step) in script(start).into_iter().enumerate() {
        match step {
            Step::Say(text) if !json_lines => writeln!(out, "\n== {text}")?,
            Step::Say(_) => {}
            Step::SendHeld(value) => submit(&app, value, &format!("demo-{n}")).await?,
            Step::Send(value) => {
                submit(&app, value, &format!("demo-{n}")).await?;
                settle(&app).await?;
            }
            Step::Wait(by) => {
                let until = clock.now() + by;
                // Stop at each deadline on the way, so connector answers arrive before the next.
                loop {
                    let next = app
                        .store()
                        .due_timers(until.as_millisecond(), 1)?
                        .first()
                        .map(|t| t.due_at_ms);
                    let Some(due) = next.and_then(|ms| Timestamp::from_millisecond(ms).ok()) else {
                        break;
                    };
                    app.advance_clock_to(due.max(clock.now())).await?;
                    settle(&app).await?;
                }
                app.advance_clock_to(until).await?;
                settle(&app).await?;
            }
        }
        printer.print_new(&app, out)?;
    }
    let report = app.audit_verify()?;
    let replayed = replay_log(&app)?;
    if !json_lines {
        let t = &printer.tally;
        writeln!(out, "\n== Summary")?;
        writeln!(out, "events logged: {}", t.events)?;
        for (status, n) in &t.statuses {
            writeln!(out, "  {status}: {n}")?;
        }
        writeln!(out, "conflicts: {}", t.conflicts)?;
        for (kind, n) in &t.effects {
            writeln!(out, "effects {kind}: {n}")?;
        }
        let applied = app.sandbox().ledger()?.len();
        writeln!(
            out,
            "sandbox connector: {applied} effects applied, each exactly once"
        )?;
        writeln!(
            out,
            "audit log verified: {} ({} entries, {} signed checkpoints)",
            if report.ok { "yes" } else { "NO" },
            report.entries,
            report.checkpoints
        )?;
        writeln!(
            out,
            "replaying the {} logged events through the core rebuilds the same state: {}",
            report.entries,
            if replayed { "yes" } else { "NO" }
        )?;
    }
    if !report.ok {
        bail!("the audit log does not verify: {:?}", report.first_bad);
    }
    if !replayed {
        bail!("replaying the log diverged from the engine's state");
    }
    Ok(())
}

/// Submits one scripted input under its own idempotency key.
async fn submit(app: &App, value: Value, key: &str) -> anyhow::Result<()> {
    let input = Input::from_value(value).context("the demo script holds only valid inputs")?;
    match input {
        Input::Customer(event) => app
            .submit_event("default", Some(key), event)
            .await
            .map(|_| ())?,
        Input::Catalog(command) => app
            .submit_catalog("default", Some(key), command)
            .await
            .map(|_| ())?,
    }
    Ok(())
}

/// Runs every ready effect, and the effects their results ask for, until none is left.
async fn settle(app: &App) -> anyhow::Result<()> {
    while app.run_effects().await? > 0 {}
    Ok(())
}

/// Replays the whole log, in commit order, through the pure core on an in-memory timeline and
/// compares every customer with the engine's.
fn replay_log(app: &App) -> anyhow::Result<bool> {
    let mut timeline = Timeline::default();
    let mut from = 1;
    let mut customers = Vec::new();
    loop {
        let page = app.store().audit_entries(from, 1024)?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for entry in &page {
            let logged: LoggedDecision = serde_json::from_slice(&entry.bytes)?;
            let input = Input::from_value(logged.input.clone())?;
            if let Input::Customer(e) = &input {
                customers.push(e.customer_id.clone());
            }
            timeline.now = Some(logged.ctx.now);
            timeline.decide_with(input, logged.ctx.clone())?;
        }
        from = last + 1;
    }
    let runtime_customers: Vec<_> = customers
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let handle = tokio::runtime::Handle::current();
    for id in runtime_customers {
        let engine =
            tokio::task::block_in_place(|| handle.block_on(app.customer("default", id.as_str())))?;
        if engine.as_ref() != timeline.customers.get(&id) {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Printer {
    json_lines: bool,
    next_seq: u64,
    tally: Tally,
}

impl Printer {
    /// Prints the log entries written since the last call.
    fn print_new(&mut self, app: &App, out: &mut impl Write) -> anyhow::Result<()> {
        loop {
            let page = app.store().audit_entries(self.next_seq, 256)?;
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(());
            };
            for entry in &page {
                let logged: LoggedDecision = serde_json::from_slice(&entry.bytes)?;
                self.tally.events += 1;
                *self.tally.statuses.entry(logged.status.name()).or_default() += 1;
                if self.json_lines {
                    writeln!(out, "{}", serde_json::to_string(&logged)?)?;
                }
                if logged.stream.starts_with("customer:") {
                    let result: EventResult = serde_json::from_value(logged.result.clone())?;
                    self.tally.conflicts += result.conflicts.len();
                    for e in &result.effects {
                        *self.tally.effects.entry(e.kind.name()).or_default() += 1;
                    }
                    if !self.json_lines {
                        customer_text(&result, &subject(&logged), Some(logged.ctx.now), out)?;
                    }
                } else if !self.json_lines {
                    let result: CatalogResult = serde_json::from_value(logged.result.clone())?;
                    catalog_text(&result, &subject(&logged), out)?;
                }
            }
            self.next_seq = last + 1;
        }
    }
}

#[derive(Default)]
struct Tally {
    events: usize,
    statuses: BTreeMap<&'static str, usize>,
    conflicts: usize,
    effects: BTreeMap<&'static str, usize>,
}

fn subject(logged: &LoggedDecision) -> String {
    let who = logged
        .stream
        .split_once('/')
        .map_or(logged.stream.as_str(), |(_, id)| id);
    let what = logged.input["type"].as_str().unwrap_or("?");
    match (what, logged.input["timer"].as_str()) {
        ("timer_fired", Some(timer)) => format!("{who:<16} timer {timer} fired"),
        _ if logged
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("effect-result:")) =>
        {
            format!("{who:<16} {what} (sandbox connector)")
        }
        _ => format!("{who:<16} {what}"),
    }
}
fn when(now: Option<Timestamp>) -> String {
    now.map(|t| t.strftime("%a %d %b %H:%M").to_string())
        .unwrap_or_default()
}

fn customer_text(
    r: &EventResult,
    subject: &str,
    now: Option<Timestamp>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    writeln!(out, "[{}] {subject} -> {}", when(now), r.status.name())?;
    for g in &r.governors {
        let mark = match g.outcome {
            Outcome::Success => "ok  ",
            Outcome::ConflictDetected => "CONF",
            Outcome::Failed => "FAIL",
            Outcome::NotApplicable => "n/a ",
        };
        let from = g.from.as_deref().unwrap_or("-");
        let to = g.to.as_deref().unwrap_or("-");
        let code = g
            .rejection
            .as_ref()
            .map(|r| format!("[{}] ", r.code()))
            .unwrap_or_default();
        writeln!(
            out,
            "    {mark} {:<16} {:>20} -> {:<20} {code}{}",
            g.governor.name(),
            from,
            to,
            g.message
        )?;
    }
    if let Some(p) = &r.proration {
        writeln!(
            out,
            "    proration: credit {} charge {} net {} {}",
            p.credit, p.charge, p.net, p.currency
        )?;
    }
    for c in &r.conflicts {
        writeln!(
            out,
            "    conflict {:?} -> {:?}: {}",
            c.kind, c.resolution, c.detail
        )?;
    }
    for e in &r.effects {
        writeln!(
            out,
            "    effect {} [{}]",
            effect_text(&e.kind),
            e.idempotency_key
        )?;
    }
    Ok(())
}

fn catalog_text(r: &CatalogResult, subject: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let g = &r.governor;
    let code = g
        .rejection
        .as_ref()
        .map(|r| format!("[{}] ", r.code()))
        .unwrap_or_default();
    writeln!(
        out,
        "{subject} -> {}: {} -> {} {code}{}",
        r.status.name(),
        g.from.as_deref().unwrap_or("-"),
        g.to.as_deref().unwrap_or("-"),
        g.message
    )?;
    Ok(())
}

fn effect_text(kind: &EffectKind) -> String {
    match kind {
        EffectKind::Charge {
            amount,
            currency,
            invoice_id,
            attempt,
        } => {
            format!("charge {amount} {currency} on {invoice_id} (attempt {attempt})")
        }
        EffectKind::Refund {
            amount,
            currency,
            reason,
        } => format!("refund {amount} {currency}: {reason}"),
        EffectKind::Void {
            invoice_id,
            amount,
            currency,
        } => format!("void {amount} {currency} on {invoice_id}"),
        EffectKind::Notify { topic, message } => format!("notify {topic}: {message}"),
        EffectKind::Provision { sku } => format!("provision {sku}"),
        EffectKind::Revoke { sku } => format!("revoke {sku}"),
        EffectKind::Escalate { level, queue, .. } => {
            format!("escalate to the {queue} queue (level {level})")
        }
        other => other.name().to_owned(),
    }
}
