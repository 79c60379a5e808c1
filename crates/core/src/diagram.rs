//! State diagrams drawn from the transition tables, never by hand (Mermaid and Graphviz DOT), and
//! the reference pages in `docs/` generated from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cases::CaseSpec;
use crate::governor::{GovernorKind, GovernorState};
use crate::governors::billing::BillingState;
use crate::governors::compliance::ComplianceState;
use crate::governors::customer_account::AccountState;
use crate::governors::entitlement::EntitlementState;
use crate::governors::multi_tenant::TenantState;
use crate::governors::product_catalog::ProductState;
use crate::governors::quota_sla::QuotaState;
use crate::governors::subscription::SubscriptionState;
use crate::orchestrator::{ROUTES, TIMER_ROUTES};

/// A diagram format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// One state machine, flattened: its name, states, initial state and labelled edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Its name.
    pub name: String,
    /// Every state, in declaration order.
    pub states: Vec<&'static str>,
    /// The state a new record starts in when the table has no creation rows.
    pub initial: Option<&'static str>,
    /// `(from, to) -> labels`; `from = None` is creation.
    pub edges: BTreeMap<(Option<&'static str>, &'static str), Vec<&'static str>>,
}

fn machine<S: GovernorState>(initial_when_implicit: bool) -> Machine {
    let mut edges: BTreeMap<(Option<&'static str>, &'static str), Vec<&'static str>> =
        BTreeMap::new();
    for t in S::transitions() {
        edges
            .entry((t.from.map(GovernorState::name), t.to.name()))
            .or_default()
            .push(t.on);
    }
    let creates = S::transitions().iter().any(|t| t.from.is_none());
    Machine {
        name: S::GOVERNOR.name().to_owned(),
        states: S::ALL.iter().map(|s| s.name()).collect(),
        initial: (initial_when_implicit && !creates).then(|| S::ALL[0].name()),
        edges,
    }
}

/// The eight governors' machines, in [`GovernorKind::ALL`] order.
pub fn governor_machines() -> Vec<Machine> {
    GovernorKind::ALL
        .iter()
        .map(|g| match g {
            GovernorKind::Entitlement => machine::<EntitlementState>(true),
            GovernorKind::Billing => machine::<BillingState>(true),
            GovernorKind::ProductCatalog => machine::<ProductState>(true),
            GovernorKind::Subscription => machine::<SubscriptionState>(true),
            GovernorKind::CustomerAccount => machine::<AccountState>(true),
            GovernorKind::QuotaSla => machine::<QuotaState>(true),
            GovernorKind::Compliance => machine::<ComplianceState>(true),
            GovernorKind::MultiTenant => machine::<TenantState>(true),
        })
        .collect()
}

/// The six case specs' machines.
pub fn case_machines() -> Vec<Machine> {
    CaseSpec::ALL
        .iter()
        .map(|spec| {
            let mut edges: BTreeMap<(Option<&'static str>, &'static str), Vec<&'static str>> =
                BTreeMap::new();
            if let Some(launcher) = crate::cases::AgentEventType::ALL
                .iter()
                .find(|t| t.launches() == Some(*spec))
            {
                edges
                    .entry((None, spec.initial().name()))
                    .or_default()
                    .push(launcher.name());
            }
            for (from, to, on) in spec.transitions() {
                edges
                    .entry((Some(from.name()), to.name()))
                    .or_default()
                    .push(on.name());
            }
            Machine {
                name: spec.name().to_owned(),
                states: spec.states().iter().map(|s| s.name()).collect(),
                initial: None,
                edges,
            }
        })
        .collect()
}

/// Renders one machine.
pub fn render(m: &Machine, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Mermaid => {
            out.push_str("stateDiagram-v2\n");
            for state in &m.states {
                let _ = writeln!(out, "    {state}");
            }
            if let Some(initial) = m.initial {
                let _ = writeln!(out, "    [*] --> {initial}");
            }
            for ((from, to), labels) in &m.edges {
                let _ = writeln!(
                    out,
                    "    {} --> {to}: {}",
                    from.unwrap_or("[*]"),
                    mermaid_label(labels)
                );
            }
        }
        Format::Dot => {
            let _ = writeln!(out, "digraph {} {{", m.name);
            out.push_str(
                "    rankdir=LR;\n    node [shape=box, style=rounded];\n    start [shape=point];\n",
            );
            for state in &m.states {
                let _ = writeln!(out, "    {state};");
            }
            if let Some(initial) = m.initial {
                let _ = writeln!(out, "    start -> {initial};");
            }
            for ((from, to), labels) in &m.edges {
                let _ = writeln!(
                    out,
                    "    {} -> {to} [label=\"{}\"];",
                    from.unwrap_or("start"),
                    labels.join("\\n").replace('"', "'")
                );
            }
            out.push_str("}\n");
        }
    }
    out
}

fn mermaid_label(labels: &[&str]) -> String {
    // Mermaid ends a label at a colon or a semicolon; neither appears in the tables, but keep it so.
    labels.join(" / ").replace([':', ';'], " ")
}

/// Every governor's diagram, one after the other (what `marketgov governors diagram` prints).
pub fn governors(format: Format) -> String {
    let mut out = String::new();
    for m in governor_machines() {
        match format {
            Format::Mermaid => {
                let _ = writeln!(out, "%% {} ({} states)", m.name, m.states.len());
            }
            Format::Dot => {
                let _ = writeln!(out, "// {} ({} states)", m.name, m.states.len());
            }
        }
        out.push_str(&render(&m, format));
        out.push('\n');
    }
    out
}

/// `docs/governors.md`: the routes and every governor's states and diagram.
pub fn governors_markdown() -> String {
    let mut out = String::from(
        "# The governors\n\n\
         <!-- Generated by `marketgov governors docs` from the transition tables in crates/core. \
         Do not edit: a test fails when this file differs from what the code generates. -->\n\n\
         Each governor is a typed state machine in `crates/core/src/governors/`. An arrow is a \
         transition its table allows, labelled with the inputs that make it; `[*]` is where a \
         record starts. Any other input in a state is a typed rejection.\n\n\
         ## Routes\n\nWhich governors decide each event, in order; each sees the decisions before it. For the eight \
         lifecycle events the first governors are exactly SPEC 2.1's table; `payment_processed` and \
         `payment_failed` append `subscription`, which SPEC 2.2's payment rules move (see \
         `docs/domain.md`).\n\n\
         | event | governors, in order |\n|---|---|\n",
    );
    for (event, route) in ROUTES {
        let names: Vec<&str> = route.iter().map(|g| g.name()).collect();
        let _ = writeln!(
            out,
            "| `{event}` | {} ({}) |",
            names.join(", "),
            route.len()
        );
    }
    out.push_str("\nWhen a timer fires, its governors decide in this order:\n\n| timer | governors, in order |\n|---|---|\n");
    for (timer, route) in TIMER_ROUTES {
        let names: Vec<&str> = route.iter().map(|g| g.name()).collect();
        let _ = writeln!(out, "| `{}` | {} |", timer.name(), names.join(", "));
    }
    sections(&mut out, governor_machines());
    out
}

/// `docs/cases.md`: every workflow case spec's states and diagram.
pub fn cases_markdown() -> String {
    let mut out = String::from(
        "# Workflow cases\n\n\
         <!-- Generated by `marketgov governors docs` from the case spec tables in crates/core. \
         Do not edit: a test fails when this file differs from what the code generates. -->\n\n\
         Agents' envelopes launch and update these cases (SPEC 2.4). An update that does not fit a \
         case's state is refused with the reason and the case is unchanged. A case's id is its spec \
         and the key it is about: `ProcessOrder-<order_id>`, `ProcessReturn-<order_id>`, \
         `HandlePaymentFailure-<order_id>`, `OnboardVendor-<vendor_id>`, \
         `HandleVendorSuspension-<vendor_id>`, `ProcessPayout-<payout_id>`.\n",
    );
    sections(&mut out, case_machines());
    out
}

/// Appends one section per machine: its states and its Mermaid diagram.
fn sections(out: &mut String, machines: Vec<Machine>) {
    for m in machines {
        let _ = write!(
            out,
            "\n## {} ({} states)\n\nStates: {}.\n\n```mermaid\n",
            m.name,
            m.states.len(),
            quoted(&m.states)
        );
        out.push_str(&render(&m, Format::Mermaid));
        out.push_str("```\n");
    }
}

fn quoted(states: &[&str]) -> String {
    states
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
