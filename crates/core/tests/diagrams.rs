//! The diagrams are generated from the transition tables and list exactly SPEC 2.2's states; the
//! checked-in reference pages are what the code generates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use marketgov_core::diagram::{self, Format};

/// SPEC 2.2's table, copied by hand: the contract the code is held to.
const SPEC_STATES: &[(&str, &[&str])] = &[
    (
        "entitlement",
        &[
            "pending_approval",
            "escalated",
            "active",
            "pending_plan_change",
            "suspended",
            "pending_cancellation",
            "cancelled",
            "rejected",
        ],
    ),
    (
        "billing",
        &[
            "current",
            "invoiced",
            "processing",
            "retry_1",
            "retry_2",
            "retry_3",
            "collections",
            "disputed",
            "refunding",
            "written_off",
        ],
    ),
    (
        "product_catalog",
        &[
            "draft",
            "validating",
            "rejected",
            "published",
            "price_change_pending",
            "deprecated",
            "retired",
        ],
    ),
    (
        "subscription",
        &[
            "incomplete",
            "trialing",
            "active",
            "plan_change_pending",
            "past_due",
            "suspended",
            "pending_cancellation",
            "cancelled",
            "expired",
        ],
    ),
    (
        "customer_account",
        &[
            "registered",
            "pending_verification",
            "active",
            "restricted",
            "locked",
            "suspended",
            "closed",
        ],
    ),
    (
        "quota_sla",
        &["normal", "warning", "throttled", "blocked", "sla_violated"],
    ),
    (
        "compliance",
        &[
            "unscreened",
            "screening",
            "cleared",
            "flagged",
            "under_investigation",
            "blocked",
        ],
    ),
    (
        "multi_tenant",
        &[
            "provisioning",
            "healthy",
            "contended",
            "throttled",
            "quarantined",
            "decommissioned",
        ],
    ),
];

#[test]
fn each_governor_has_exactly_the_spec_states() {
    let machines = diagram::governor_machines();
    assert_eq!(machines.len(), 8);
    for (name, states) in SPEC_STATES {
        let m = machines
            .iter()
            .find(|m| m.name == *name)
            .unwrap_or_else(|| panic!("no governor {name}"));
        assert_eq!(&m.states, states, "{name}");
    }
}

#[test]
fn every_state_is_reachable_and_drawn() {
    for m in diagram::governor_machines() {
        let mermaid = diagram::render(&m, Format::Mermaid);
        let dot = diagram::render(&m, Format::Dot);
        for state in &m.states {
            let entered = m.initial == Some(*state) || m.edges.keys().any(|(_, to)| to == state);
            assert!(entered, "{}: no transition enters {state}", m.name);
            assert!(
                mermaid.contains(&format!("--> {state}")),
                "{}: {state} missing from mermaid",
                m.name
            );
            assert!(
                dot.contains(&format!("-> {state}")),
                "{}: {state} missing from dot",
                m.name
            );
        }
        for (from, to) in m.edges.keys() {
            assert!(
                m.states.contains(to) && from.is_none_or(|f| m.states.contains(&f)),
                "{}: edge outside the states",
                m.name
            );
        }
    }
}

#[test]
fn the_checked_in_reference_pages_match_the_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/");
    for (file, generated) in [
        ("governors.md", diagram::governors_markdown()),
        ("cases.md", diagram::cases_markdown()),
    ] {
        let on_disk = std::fs::read_to_string(format!("{root}{file}")).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/{file} differs from what the code generates; run `cargo run -p marketgov -- governors docs`"
        );
    }
}
