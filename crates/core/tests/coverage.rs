//! Every valid transition of every governor is exercised: seeded random walks over the whole input
//! space record each move the governors make, and each row of each transition table must show up.
//! A row nobody can reach is either dead (remove it) or a bug (fix the rule).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly
mod common;

use std::collections::BTreeSet;

use common::walk::{apply, Seeded};
use marketgov_core::diagram::governor_machines;
use marketgov_core::timeline::Decided;

const WALKS: u64 = 500;
const STEPS: usize = 400;

type Move = (String, Option<String>, String);

fn record(decided: &Decided, seen: &mut BTreeSet<Move>) {
    let reports: Vec<_> = match decided {
        Decided::Customer(r) => r.governors.iter().collect(),
        Decided::Catalog(r) => vec![&r.governor],
    };
    for g in reports {
        for (from, to) in g.steps() {
            seen.insert((
                g.governor.name().to_owned(),
                from.map(String::from),
                to.into_owned(),
            ));
        }
    }
}

/// Paths too deep for the walks to find reliably, scripted.
fn scripted(seen: &mut BTreeSet<Move>) {
    use common::{at, send, DAY, HOUR};
    use serde_json::json;
    let mut keep = |r: marketgov_core::EventResult| record(&Decided::Customer(Box::new(r)), seen);

    // A plan change while a retry of the previous change's charge is in flight replaces it:
    // billing processing -> invoiced.
    let mut tl = common::market();
    common::paying_customer(&mut tl, "c1", "basic", 1000);
    tl.advance_to(at(15 * DAY));
    keep(send(
        &mut tl,
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "basic", "new_sku": "pro"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "payment_failed", "customer_id": "c1", "reason": "card_declined", "payment_id": "x1"}),
    ));
    tl.advance_to(at(15 * DAY + HOUR));
    keep(send(
        &mut tl,
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "pro", "new_sku": "gated"}),
    ));

    // Reinstating a subscription suspended while past due: subscription suspended -> past_due.
    let mut tl = common::market();
    common::paying_customer(&mut tl, "c1", "basic", 1000);
    tl.advance_to(at(10 * DAY));
    keep(send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "payment_failed", "customer_id": "c1", "reason": "card_declined", "payment_id": "x1"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "abuse", "actor": "ops"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "customer_reinstated", "customer_id": "c1"}),
    ));

    // Paying while suspended: subscription suspended -> suspended, paid through the period.
    let mut tl = common::market();
    common::paying_customer(&mut tl, "c1", "basic", 1000);
    keep(send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "abuse", "actor": "ops"}),
    ));
    keep(send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 1000, "currency": "USD", "payment_id": "x2"}),
    ));
}

#[test]
fn random_walks_exercise_every_row_of_every_transition_table() {
    let mut seen = BTreeSet::new();
    scripted(&mut seen);
    for seed in 0..WALKS {
        let mut tl = common::market();
        let mut rng = Seeded(seed);
        for _ in 0..STEPS {
            for decided in apply(&mut tl, rng.action()) {
                record(&decided, &mut seen);
            }
        }
    }
    let mut missing = Vec::new();
    for m in governor_machines() {
        for (from, to) in m.edges.keys() {
            let row = (m.name.clone(), from.map(str::to_owned), (*to).to_owned());
            if !seen.contains(&row) {
                missing.push(format!("{}: {} -> {to}", m.name, from.unwrap_or("[*]")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} rows never exercised:\n{}",
        missing.len(),
        missing.join("\n")
    );
}
