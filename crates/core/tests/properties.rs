//! Property tests over any sequence of valid and invalid inputs at any times:
//! - no input panics, and invalid input changes nothing;
//! - every move a governor reports is a row of its transition table;
//! - a refused or parked event changes nothing; an applied one bumps the version by one;
//! - a timer firing applied once is refused when delivered again (each fires once);
//! - replaying the accepted inputs from the initial state rebuilds the identical state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly
mod common;

use std::collections::BTreeSet;

use common::walk::{apply, step, Action, Step, KINDS};
use marketgov_core::diagram::governor_machines;
use marketgov_core::timeline::{Decided, Timeline};
use proptest::prelude::*;

fn action() -> impl Strategy<Value = Action> {
    (0..KINDS, any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(kind, customer, a, b)| Action {
        kind,
        customer,
        a,
        b,
    })
}

fn allowed_moves() -> BTreeSet<(String, Option<String>, String)> {
    governor_machines()
        .into_iter()
        .flat_map(|m| {
            m.edges
                .keys()
                .map(|(from, to)| (m.name.clone(), from.map(str::to_owned), (*to).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn check_moves(
    decided: &Decided,
    allowed: &BTreeSet<(String, Option<String>, String)>,
) -> Result<(), TestCaseError> {
    let reports: Vec<_> = match decided {
        Decided::Customer(r) => r.governors.iter().collect(),
        Decided::Catalog(r) => vec![&r.governor],
    };
    for g in reports {
        if let Some(rejection) = &g.rejection {
            prop_assert_ne!(rejection.code(), "illegal_transition", "{:?}", g);
        }
        let name = g.governor.name().to_owned();
        for (from, to) in g.steps() {
            prop_assert!(
                allowed.contains(&(
                    name.clone(),
                    from.as_deref().map(String::from),
                    to.to_string()
                )),
                "{name}: {from:?} -> {to} is not in the table ({g:?})"
            );
        }
    }
    Ok(())
}

/// The hand-written result and effect JSON are the derives', byte for byte.
fn check_json(decided: &Decided) -> Result<(), TestCaseError> {
    if let Decided::Customer(r) = decided {
        let bodies: Vec<Vec<u8>> = r
            .effects
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        for (e, body) in r.effects.iter().zip(&bodies) {
            prop_assert_eq!(&marketgov_core::orchestrator::effect_json(e).unwrap(), body);
        }
        prop_assert_eq!(
            marketgov_core::orchestrator::result_json(r, &bodies).unwrap(),
            serde_json::to_string(r).unwrap()
        );
    }
    Ok(())
}

proptest! {
    // 256 cases per CI run; PROPTEST_CASES raises it for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_input_sequence_keeps_every_invariant(actions in prop::collection::vec(action(), 1..160)) {
        let allowed = allowed_moves();
        let mut tl = common::market();
        for x in actions {
            let before = tl.clone();
            let is_wait = matches!(step(&tl, x), Step::Wait(_));
            let decisions = apply(&mut tl, x);
            for decided in &decisions {
                check_moves(decided, &allowed)?;
                check_json(decided)?;
            }
            if !is_wait {
                if let Some(Decided::Customer(r)) = decisions.first() {
                    let id = tl.customers.keys().find(|k| r.next.as_ref().is_some_and(|n| &n.customer_id == *k)).cloned();
                    if r.status.applies() {
                        let next = r.next.as_ref().expect("applied results carry the next state");
                        let old = before.customers.get(&next.customer_id).map_or(0, |c| c.version);
                        prop_assert_eq!(next.version, old + 1);
                        prop_assert!(id.is_some());
                    } else {
                        prop_assert_eq!(&tl.customers, &before.customers, "a refused or parked event changed state");
                        prop_assert!(r.effects.is_empty() && r.timers.is_empty());
                    }
                    // The review net for broken cross-governor invariants never fires on states
                    // the governors themselves produced: the routes keep the governors consistent.
                    prop_assert!(
                        !r.conflicts.iter().any(|c| c.kind == marketgov_core::orchestrator::ConflictKind::InvariantViolation),
                        "{:?}", r.conflicts
                    );
                    let keys: BTreeSet<_> = r.effects.iter().map(|e| e.idempotency_key.clone()).collect();
                    prop_assert_eq!(keys.len(), r.effects.len(), "effect keys are unique");
                }
            } else {
                // Every firing that applied must be refused when delivered again.
                let fired: Vec<_> = tl.log[before.log.len()..].to_vec();
                for entry in fired {
                    let snapshot = tl.clone();
                    let again = tl.submit(entry.input.clone()).expect("a firing is valid input");
                    prop_assert!(!again.applied(), "timer applied twice: {:?}", entry.input);
                    prop_assert_eq!(&tl.customers, &snapshot.customers);
                    prop_assert_eq!(&tl.catalog, &snapshot.catalog);
                }
            }
        }
        let replayed = Timeline::replay(&tl.log).expect("logged inputs are valid");
        prop_assert_eq!(&replayed.customers, &tl.customers, "replay rebuilt other customers");
        prop_assert_eq!(&replayed.catalog, &tl.catalog, "replay rebuilt another catalog");
    }
}
