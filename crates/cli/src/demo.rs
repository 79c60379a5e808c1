//! `marketgov demo`: a scripted marketplace week through the governors, printed event by event.
//!
//! It runs on the core's in-memory timeline: every decision is the real core's, but nothing is
//! stored. (The durable engine, when it exists, takes this command over.)

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context as _};
use jiff::{SignedDuration, Timestamp};
use marketgov_core::orchestrator::{CatalogResult, EventResult, Outcome};
use marketgov_core::timeline::{Decided, Timeline};
use marketgov_core::{EffectKind, EventKind, Input};
use serde_json::{json, Value};

/// One line of the script.
enum Step {
    /// Print a heading.
    Say(&'static str),
    /// Send an input.
    Send(Value),
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
        Step::Say("Monday 09:00: customers arrive"),
        event("acme", "customer_subscribes", json!({"sku": "starter"})),
        event(
            "acme",
            "payment_processed",
            json!({"amount": 1900, "currency": "USD", "payment_id": "pay-acme-1"}),
        ),
        Step::Say("The processor delivers the same payment twice, then once with another amount"),
        event(
            "acme",
            "payment_processed",
            json!({"amount": 1900, "currency": "USD", "payment_id": "pay-acme-1"}),
        ),
        event(
            "acme",
            "payment_processed",
            json!({"amount": 1000, "currency": "USD", "payment_id": "pay-acme-1"}),
        ),
        event(
            "globex",
            "customer_subscribes",
            json!({"sku": "enterprise"}),
        ),
        event("initech", "customer_subscribes", json!({"sku": "growth"})),
        event(
            "initech",
            "payment_failed",
            json!({"reason": "card_declined", "payment_id": "pay-initech-1"}),
        ),
        event("umbrella", "customer_subscribes", json!({"sku": "growth"})),
        event(
            "umbrella",
            "payment_processed",
            json!({"amount": 4900, "currency": "USD", "payment_id": "pay-umbrella-1"}),
        ),
        event("hooli", "customer_subscribes", json!({"sku": "starter"})),
        event(
            "hooli",
            "payment_processed",
            json!({"amount": 1900, "currency": "USD", "payment_id": "pay-hooli-1"}),
        ),
        Step::Wait(mins(30)),
        Step::Say("Usage climbs past the quota; quota and tenant slot must agree"),
        event(
            "acme",
            "usage_exceeds_quota",
            json!({"resource": "api_calls", "current_usage": 8_500, "limit": 10_000}),
        ),
        event(
            "acme",
            "usage_exceeds_quota",
            json!({"resource": "api_calls", "current_usage": 12_500, "limit": 10_000}),
        ),
        Step::Say(
            "Umbrella renews early; risk suspends it for fraud while the charge is in flight",
        ),
        event(
            "umbrella",
            "renewal_due",
            json!({"subscription_id": "sub-1"}),
        ),
        event(
            "umbrella",
            "manual_suspension",
            json!({"reason": "fraud: stolen identity", "actor": "risk-team"}),
        ),
        Step::Say("Two plan changes for hooli race; the later one wins"),
        event(
            "hooli",
            "customer_upgrades",
            json!({"old_sku": "starter", "new_sku": "scale",
            "occurred_at": (start + mins(31)).to_string()}),
        ),
        event(
            "hooli",
            "customer_upgrades",
            json!({"old_sku": "starter", "new_sku": "growth",
            "occurred_at": (start + mins(30)).to_string()}),
        ),
        Step::Say("Time passes: retries, escalations, the 72 h suspension deadline"),
        Step::Wait(hours(2)),
        event(
            "initech",
            "payment_failed",
            json!({"reason": "card_declined", "payment_id": "pay-initech-2"}),
        ),
        Step::Wait(hours(3)),
        event(
            "initech",
            "payment_processed",
            json!({"amount": 4900, "currency": "USD", "payment_id": "pay-initech-3"}),
        ),
        Step::Wait(hours(70)),
        Step::Say(
            "Mid-period: acme upgrades with proration, pays, and later cancels at period end",
        ),
        Step::Wait(hours(24 * 11)),
        event(
            "acme",
            "customer_upgrades",
            json!({"old_sku": "starter", "new_sku": "growth"}),
        ),
        event(
            "acme",
            "payment_processed",
            json!({"amount": 1586, "currency": "USD", "payment_id": "pay-acme-2"}),
        ),
        event(
            "acme",
            "customer_cancels",
            json!({"reason": "moving to annual billing"}),
        ),
        Step::Wait(hours(24 * 16)),
    ]);
    s
}

/// Runs the demo, writing to `out`.
pub fn run(json_lines: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let start: Timestamp = "2026-03-02T09:00:00Z".parse().context("demo start time")?;
    let mut timeline = Timeline::starting_at(start);
    let mut tally = Tally::default();
    if !json_lines {
        writeln!(out, "marketgov demo: a marketplace week, decided by the real governors on an in-memory timeline.")?;
        writeln!(
            out,
            "(Nothing is stored: the durable engine is not built yet.)"
        )?;
    }
    for step in script(start) {
        match step {
            Step::Say(text) if !json_lines => writeln!(out, "\n== {text}")?,
            Step::Say(_) => {}
            Step::Send(value) => {
                let input =
                    Input::from_value(value).context("the demo script holds only valid inputs")?;
                let subject = subject(&input);
                let decided = timeline.submit(input).context("deciding a demo input")?;
                report(
                    &decided,
                    &subject,
                    timeline.now,
                    json_lines,
                    &mut tally,
                    out,
                )?;
            }
            Step::Wait(by) => {
                let until = timeline.now.map_or(start, |now| now + by);
                for firing in timeline.advance_to(until) {
                    let subject = subject(&firing.input);
                    report(
                        &firing.decided,
                        &subject,
                        Some(firing.at),
                        json_lines,
                        &mut tally,
                        out,
                    )?;
                }
            }
        }
    }
    let replayed = Timeline::replay(&timeline.log).context("replaying the log")?;
    let deterministic =
        replayed.customers == timeline.customers && replayed.catalog == timeline.catalog;
    if !json_lines {
        writeln!(out, "\n== Summary")?;
        writeln!(out, "events decided: {}", tally.events)?;
        for (status, n) in &tally.statuses {
            writeln!(out, "  {status}: {n}")?;
        }
        writeln!(out, "conflicts: {}", tally.conflicts)?;
        for (kind, n) in &tally.effects {
            writeln!(out, "effects {kind}: {n}")?;
        }
        writeln!(
            out,
            "replaying the {} logged inputs rebuilds the same state: {}",
            timeline.log.len(),
            if deterministic { "yes" } else { "NO" }
        )?;
    }
    if !deterministic {
        bail!("replay diverged from the live state");
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    events: usize,
    statuses: BTreeMap<&'static str, usize>,
    conflicts: usize,
    effects: BTreeMap<&'static str, usize>,
}

fn subject(input: &Input) -> String {
    match input {
        Input::Customer(e) => match &e.kind {
            EventKind::TimerFired { timer, .. } => {
                format!("{:<9} timer {} fired", e.customer_id.as_str(), timer.name())
            }
            kind => format!("{:<9} {}", e.customer_id.as_str(), kind.name()),
        },
        Input::Catalog(c) => format!("{:<9} {}", c.sku().as_str(), c.name()),
    }
}

fn report(
    decided: &Decided,
    subject: &str,
    now: Option<Timestamp>,
    json_lines: bool,
    tally: &mut Tally,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    tally.events += 1;
    match decided {
        Decided::Customer(r) => {
            *tally.statuses.entry(r.status.name()).or_default() += 1;
            tally.conflicts += r.conflicts.len();
            for e in &r.effects {
                *tally.effects.entry(e.kind.name()).or_default() += 1;
            }
            if json_lines {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            } else {
                customer_text(r, subject, now, out)?;
            }
        }
        Decided::Catalog(r) => {
            *tally.statuses.entry(r.status.name()).or_default() += 1;
            if json_lines {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            } else {
                catalog_text(r, subject, out)?;
            }
        }
    }
    Ok(())
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
