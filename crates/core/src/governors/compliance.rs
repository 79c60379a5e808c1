//! The compliance governor: KYC/AML screening and fraud.
//!
//! Subscribing starts screening. Screening or monitoring clears the customer or raises a flag,
//! graded `flagged` (needs a look), `under_investigation` or `blocked`. A fraud suspension opens an
//! investigation; a decline that smells of fraud raises a flag.

use jiff::Timestamp;

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Transition, Verdict,
};
use crate::input::FlagSeverity;

governor_states! {
    /// The six compliance states of SPEC 2.2.
    ComplianceState for GovernorKind::Compliance, table TABLE;
    /// Never screened.
    Unscreened => "unscreened",
    /// Screening in progress.
    Screening => "screening",
    /// Nothing found.
    Cleared => "cleared",
    /// Something needs a look.
    Flagged => "flagged",
    /// Investigation open.
    UnderInvestigation => "under_investigation",
    /// No business allowed.
    Blocked => "blocked",
}

use ComplianceState as S;

const TABLE: &[Transition<S>] = &[
    row(Some(S::Unscreened), S::Screening, "customer_subscribes"),
    row(Some(S::Unscreened), S::Cleared, "compliance_cleared"),
    row(Some(S::Screening), S::Cleared, "compliance_cleared"),
    row(Some(S::Flagged), S::Cleared, "compliance_cleared"),
    row(
        Some(S::UnderInvestigation),
        S::Cleared,
        "compliance_cleared",
    ),
    row(Some(S::Blocked), S::Cleared, "compliance_cleared"),
    row(
        Some(S::Unscreened),
        S::Flagged,
        "compliance_flagged, payment_failed (fraud)",
    ),
    row(
        Some(S::Screening),
        S::Flagged,
        "compliance_flagged, payment_failed (fraud)",
    ),
    row(
        Some(S::Cleared),
        S::Flagged,
        "compliance_flagged, payment_failed (fraud)",
    ),
    row(
        Some(S::Unscreened),
        S::UnderInvestigation,
        "compliance_flagged (investigate), manual_suspension (fraud)",
    ),
    row(
        Some(S::Screening),
        S::UnderInvestigation,
        "compliance_flagged (investigate), manual_suspension (fraud)",
    ),
    row(
        Some(S::Cleared),
        S::UnderInvestigation,
        "compliance_flagged (investigate), manual_suspension (fraud)",
    ),
    row(
        Some(S::Flagged),
        S::UnderInvestigation,
        "compliance_flagged (investigate), manual_suspension (fraud)",
    ),
    row(
        Some(S::Unscreened),
        S::Blocked,
        "compliance_flagged (block)",
    ),
    row(Some(S::Screening), S::Blocked, "compliance_flagged (block)"),
    row(Some(S::Cleared), S::Blocked, "compliance_flagged (block)"),
    row(Some(S::Flagged), S::Blocked, "compliance_flagged (block)"),
    row(
        Some(S::UnderInvestigation),
        S::Blocked,
        "compliance_flagged (block)",
    ),
];

/// The compliance record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compliance {
    /// The state.
    pub state: ComplianceState,
    /// Why the last flag was raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Default for Compliance {
    fn default() -> Self {
        Self {
            state: S::Unscreened,
            reason: None,
        }
    }
}

impl Record for Compliance {
    type State = ComplianceState;
    fn state(&self) -> S {
        self.state
    }
}

impl Compliance {
    /// Whether compliance holds access back (SPEC 2.2: flagged or blocked; screening does not).
    pub fn holds_access(&self) -> bool {
        matches!(self.state, S::Flagged | S::UnderInvestigation | S::Blocked)
    }
}

/// What the compliance governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComplianceInput {
    /// A subscription starts: screen the customer if never screened.
    Subscribe,
    /// Nothing found, or an investigation closed clean.
    Clear,
    /// A flag of some severity.
    Flag {
        /// Why.
        reason: String,
        /// How serious.
        severity: FlagSeverity,
    },
}

impl ComplianceInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Clear => "clear",
            Self::Flag { .. } => "flag",
        }
    }
}

fn rank(state: S) -> u8 {
    match state {
        S::Unscreened | S::Screening | S::Cleared => 0,
        S::Flagged => 1,
        S::UnderInvestigation => 2,
        S::Blocked => 3,
    }
}

/// Decides one input.
pub fn decide(c: &Compliance, input: &ComplianceInput, _now: Timestamp) -> Decided<Compliance> {
    use ComplianceInput as I;
    match input {
        I::Subscribe => match c.state {
            S::Unscreened => Ok(Verdict::Changed(
                Decision::to(
                    Compliance {
                        state: S::Screening,
                        ..c.clone()
                    },
                    "screening started",
                )
                .effect(EffectKind::notify(
                    "screening_requested",
                    "screen the customer (KYC/AML)",
                )),
            )),
            other => Ok(Verdict::NotApplicable(
                format!("already {}", other.as_str()).into(),
            )),
        },
        I::Clear => match c.state {
            S::Cleared => Ok(Verdict::NotApplicable("already cleared".into())),
            _ => Ok(Verdict::Changed(Decision::to(
                Compliance {
                    state: S::Cleared,
                    reason: None,
                },
                "cleared",
            ))),
        },
        I::Flag { reason, severity } => {
            let to = match severity {
                FlagSeverity::Review => S::Flagged,
                FlagSeverity::Investigate => S::UnderInvestigation,
                FlagSeverity::Block => S::Blocked,
            };
            // A flag never softens the state: a milder flag on a graver state changes nothing.
            if rank(to) <= rank(c.state) && rank(c.state) > 0 {
                return Ok(Verdict::NotApplicable(
                    format!("already {}", c.state.as_str()).into(),
                ));
            }
            Ok(Verdict::Changed(
                Decision::to(
                    Compliance {
                        state: to,
                        reason: Some(reason.clone()),
                    },
                    format!("{}: {reason}", to.as_str()),
                )
                .effect(EffectKind::notify(
                    "compliance_flag",
                    format!("{}: {reason}", to.as_str()),
                )),
            ))
        }
    }
}
