//! Random walks over the whole input space: every event type with small parameter spaces (so that
//! ids and amounts collide and states are revisited), invalid inputs, stale timer firings, catalog
//! commands with right and stale versions, and time passing so that timers fire.

use jiff::SignedDuration;
use marketgov_core::timeline::{Decided, Firing, Timeline};
use serde_json::{json, Value};

/// One step of a walk, generated from plain numbers so proptest can shrink it.
#[derive(Debug, Clone, Copy)]
pub struct Action {
    pub kind: u8,
    pub customer: u8,
    pub a: u8,
    pub b: u8,
}

pub const CUSTOMERS: [&str; 2] = ["c1", "c2"];
pub const SKUS: [&str; 5] = ["basic", "pro", "gated", "trial", "nope"];
pub const WAITS: [i64; 8] = [
    60,
    15 * 60,
    3600,
    3 * 3600,
    86_400,
    3 * 86_400,
    7 * 86_400,
    16 * 86_400,
];
/// How many kinds of action there are.
pub const KINDS: u8 = 36;

fn pick<T: Copy>(items: &[T], n: u8) -> T {
    items[n as usize % items.len()]
}

/// What an action does.
pub enum Step {
    /// Submit this JSON (valid or not).
    Send(Value),
    /// Let this much time pass.
    Wait(SignedDuration),
}

/// The input (or wait) an action stands for, given the timeline it applies to.
pub fn step(tl: &Timeline, x: Action) -> Step {
    let c = pick(&CUSTOMERS, x.customer);
    let now = tl.now.unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let ev = |kind: &str, fields: Value| {
        let mut v = json!({"type": kind, "customer_id": c});
        if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
            o.extend(f);
        }
        Step::Send(v)
    };
    let pid = |n: u8| format!("p{}", n % 12);
    let amount = pick(&[500i64, 1000, 1500, 2000, 5000, 1], x.b);
    match x.kind {
        0 | 1 => ev("customer_subscribes", json!({"sku": pick(&SKUS, x.a)})),
        2 => {
            let offset = i64::from(x.b % 5) * 30 - 60;
            let at = now
                .checked_add(SignedDuration::from_secs(offset))
                .unwrap_or(now);
            // Mostly the plan in force (a real change), sometimes a stale or unknown one (a race).
            let current = tl
                .customers
                .values()
                .find(|k| k.customer_id.as_str() == c)
                .and_then(|k| k.subscription.as_ref())
                .map(|s| s.current_sku().as_str().to_owned());
            let old = match current {
                Some(sku) if !x.b.is_multiple_of(4) => sku,
                _ => pick(&SKUS, x.a).to_owned(),
            };
            ev(
                "customer_upgrades",
                json!({"old_sku": old, "new_sku": pick(&SKUS, x.a / 5 + 1), "occurred_at": at.to_string()}),
            )
        }
        3 | 4 => ev(
            "payment_processed",
            json!({"amount": amount, "currency": if x.a % 9 == 8 { "EUR" } else { "USD" }, "payment_id": pid(x.a)}),
        ),
        5 | 6 => ev(
            "payment_failed",
            json!({"reason": pick(&["card_declined", "stolen_card", "insufficient_funds"], x.b), "payment_id": format!("f{}", x.a % 16)}),
        ),
        7 => ev(
            "usage_exceeds_quota",
            json!({"resource": "api_calls", "current_usage": pick(&[10u64, 850, 1000, 1050, 1200, 1300, 1600], x.a), "limit": 1000}),
        ),
        8 => ev(
            "customer_cancels",
            json!({"at_period_end": x.a.is_multiple_of(2)}),
        ),
        9 => ev(
            "manual_suspension",
            json!({"reason": pick(&["abuse", "fraud"], x.a), "actor": "ops"}),
        ),
        10 => ev(
            "renewal_due",
            json!({"subscription_id": format!("sub-{}", x.a % 3)}),
        ),
        11 => ev("entitlement_approved", json!({})),
        12 => ev("entitlement_rejected", json!({"reason": "no"})),
        13 => ev("account_verified", json!({})),
        14 => ev(
            "account_verification_failed",
            json!({"reason": "id mismatch"}),
        ),
        15 => ev("compliance_cleared", json!({})),
        16 => ev(
            "compliance_flagged",
            json!({"reason": "watchlist", "severity": pick(&["review", "investigate", "block"], x.a)}),
        ),
        17 => ev("customer_reinstated", json!({})),
        18 => ev("cancellation_reverted", json!({})),
        19 => ev("payment_disputed", json!({"payment_id": pid(x.a)})),
        20 => ev(
            "dispute_resolved",
            json!({"payment_id": pid(x.a), "outcome": pick(&["won", "lost"], x.b)}),
        ),
        21 => ev("account_locked", json!({"reason": "credential stuffing"})),
        22 => ev("account_unlocked", json!({})),
        // Closing is final: kept rare so that walks stay alive long enough to explore.
        23 if x.b.is_multiple_of(16) => ev("account_closed", json!({})),
        23 => ev(
            "payment_processed",
            json!({"amount": 5000, "currency": "USD", "payment_id": format!("q{}{}", x.a, x.b)}),
        ),
        24 => ev("tenant_contention_detected", json!({})),
        25 => ev("tenant_contention_cleared", json!({})),
        26 => ev("sla_violated", json!({"metric": "availability"})),
        27 => ev(
            "refund_processed",
            json!({"amount": amount, "currency": "USD", "refund_id": "r1"}),
        ),
        28 => {
            // A firing that is usually stale: it must be refused, never applied twice.
            let kind = pick(
                &[
                    "approval_escalation",
                    "payment_retry",
                    "period_end",
                    "trial_end",
                    "collections_deadline",
                ],
                x.a,
            );
            let due = now
                .checked_sub(SignedDuration::from_secs(i64::from(x.b)))
                .unwrap_or(now);
            ev(
                "timer_fired",
                json!({"timer": kind, "due_at": due.to_string()}),
            )
        }
        29 => {
            // Invalid input: must be refused with a typed error and change nothing.
            match x.a % 4 {
                0 => ev(
                    "payment_processed",
                    json!({"amount": -5, "currency": "USD", "payment_id": "p1"}),
                ),
                1 => Step::Send(
                    json!({"type": "customer_subscribes", "customer_id": "bad id", "sku": "pro"}),
                ),
                2 => ev(
                    "usage_exceeds_quota",
                    json!({"resource": "api_calls", "current_usage": 5, "limit": 0}),
                ),
                _ => ev("customer_levitates", json!({})),
            }
        }
        30..=33 => catalog(tl, x),
        _ => Step::Wait(SignedDuration::from_secs(pick(&WAITS, x.a))),
    }
}

fn catalog(tl: &Timeline, x: Action) -> Step {
    let sku = pick(&["basic", "extra", "spare"], x.customer.wrapping_add(x.b));
    let version = tl
        .catalog
        .values()
        .find(|p| p.sku.as_str() == sku)
        .map_or(0, |p| p.version);
    let expected = if x.b % 7 == 6 { version + 1 } else { version };
    let now = tl.now.unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Step::Send(match x.a % 6 {
        0 => {
            json!({"type": "product_submitted", "sku": sku, "expected_version": expected, "name": if x.b.is_multiple_of(3) { "" } else { "Extra" },
            "price": 700, "currency": "USD", "billing_period_days": if x.b % 4 == 1 { 0 } else { 30 }, "quotas": {"api_calls": 500}})
        }
        1 => json!({"type": "product_published", "sku": sku, "expected_version": expected}),
        2 => {
            let later = now
                .checked_add(SignedDuration::from_hours(i64::from(x.b % 3) * 24))
                .unwrap_or(now);
            json!({"type": "product_price_changed", "sku": sku, "expected_version": expected, "price": 1200, "effective_at": later.to_string()})
        }
        3 => json!({"type": "product_deprecated", "sku": sku, "expected_version": expected}),
        4 => json!({"type": "product_retired", "sku": sku, "expected_version": expected}),
        _ => json!({"type": "product_published", "sku": sku, "expected_version": expected}),
    })
}

/// What one action produced: the decisions made (with firings for waits), or the input error.
pub fn apply(tl: &mut Timeline, x: Action) -> Vec<Decided> {
    match step(tl, x) {
        Step::Send(value) => {
            let before = tl.clone();
            match tl.submit_json(&value.to_string()) {
                Ok(decided) => vec![decided],
                Err(_) => {
                    assert_eq!(
                        *tl, before,
                        "an invalid input changed the timeline: {value}"
                    );
                    Vec::new()
                }
            }
        }
        Step::Wait(by) => {
            let until = tl
                .now
                .and_then(|n| n.checked_add(by).ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            tl.advance_to(until)
                .into_iter()
                .map(|Firing { decided, .. }| decided)
                .collect()
        }
    }
}

/// A small deterministic generator (splitmix64) for walks that must be repeatable.
pub struct Seeded(pub u64);

impl Seeded {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn action(&mut self) -> Action {
        let r = self.next().to_le_bytes();
        Action {
            kind: r[0] % KINDS,
            customer: r[1],
            a: r[2],
            b: r[3],
        }
    }
}
