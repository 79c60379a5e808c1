//! The multi-tenant governor: the customer's slot on shared infrastructure.
//!
//! A slot is `provisioning` until the customer first uses it, then `healthy`. Usage above 150 % of
//! a limit, or contention seen by the platform, marks it `contended` (a noisy neighbour); not cleared
//! within 15 minutes it is `quarantined`. It is `throttled` when quota throttling must hold on the
//! slot too (the stricter state wins), and `decommissioned` when the customer's access ends for good.

use jiff::Timestamp;

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::timers::{TimerCommand, TimerKind};

governor_states! {
    /// The six multi-tenant states of SPEC 2.2.
    TenantState for GovernorKind::MultiTenant, table TABLE;
    /// Not used yet.
    Provisioning => "provisioning",
    /// Serving normally.
    Healthy => "healthy",
    /// Starving its neighbours; quarantine follows in 15 minutes unless cleared.
    Contended => "contended",
    /// Rate-limited.
    Throttled => "throttled",
    /// Isolated.
    Quarantined => "quarantined",
    /// Torn down.
    Decommissioned => "decommissioned",
}

use TenantState as S;

/// Usage above this percent of a limit makes the slot a noisy neighbour.
pub const CONTENDED_PERCENT: u64 = 150;
/// Minutes a contended slot has to clear before quarantine.
pub const QUARANTINE_AFTER_MINUTES: i64 = 15;

const TABLE: &[Transition<S>] = &[
    row(Some(S::Provisioning), S::Healthy, "usage_exceeds_quota"),
    row(
        Some(S::Provisioning),
        S::Contended,
        "usage_exceeds_quota 150 %, tenant_contention_detected",
    ),
    row(
        Some(S::Healthy),
        S::Contended,
        "usage_exceeds_quota 150 %, tenant_contention_detected",
    ),
    row(
        Some(S::Throttled),
        S::Contended,
        "usage_exceeds_quota 150 %, tenant_contention_detected",
    ),
    row(Some(S::Provisioning), S::Throttled, "stricter quota"),
    row(Some(S::Healthy), S::Throttled, "stricter quota"),
    row(
        Some(S::Throttled),
        S::Healthy,
        "usage_exceeds_quota (back under the limit)",
    ),
    row(
        Some(S::Contended),
        S::Quarantined,
        "contention_quarantine 15 min",
    ),
    row(Some(S::Contended), S::Healthy, "tenant_contention_cleared"),
    row(
        Some(S::Quarantined),
        S::Healthy,
        "tenant_contention_cleared, customer_reinstated",
    ),
    row(Some(S::Provisioning), S::Quarantined, "manual_suspension"),
    row(Some(S::Healthy), S::Quarantined, "manual_suspension"),
    row(Some(S::Contended), S::Quarantined, "manual_suspension"),
    row(Some(S::Throttled), S::Quarantined, "manual_suspension"),
    row(Some(S::Quarantined), S::Quarantined, "manual_suspension"),
    row(Some(S::Provisioning), S::Decommissioned, "access ended"),
    row(Some(S::Healthy), S::Decommissioned, "access ended"),
    row(Some(S::Contended), S::Decommissioned, "access ended"),
    row(Some(S::Throttled), S::Decommissioned, "access ended"),
    row(Some(S::Quarantined), S::Decommissioned, "access ended"),
    row(
        Some(S::Decommissioned),
        S::Provisioning,
        "customer_subscribes again",
    ),
];

impl TenantState {
    /// Whether the slot holds usage back.
    pub fn throttles(self) -> bool {
        matches!(self, S::Contended | S::Throttled | S::Quarantined)
    }
}

/// The tenant-slot record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantSlot {
    /// The state.
    pub state: TenantState,
    /// Quarantined by an operator's suspension (lifted by reinstatement).
    #[serde(default)]
    pub suspended: bool,
}

impl Default for TenantSlot {
    fn default() -> Self {
        Self {
            state: S::Provisioning,
            suspended: false,
        }
    }
}

impl Record for TenantSlot {
    type State = TenantState;
    fn state(&self) -> S {
        self.state
    }
}

/// What the multi-tenant governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantInput {
    /// A usage report: `percent` of the limit, rounded down.
    Usage {
        /// Percent of the limit.
        percent: u128,
        /// Whether the quota decision throttles (for leaving `throttled`).
        quota_throttles: bool,
    },
    /// Contention seen by the platform.
    ContentionDetected,
    /// Contention over.
    ContentionCleared,
    /// The quarantine timer fired.
    QuarantineDue,
    /// Quota throttles and the stricter state wins.
    Throttle,
    /// An operator suspends: isolate the slot.
    Suspend,
    /// An operator reinstates.
    Reinstate,
    /// Access ended for good.
    Decommission,
    /// A new subscription on a decommissioned slot.
    Reprovision,
}

impl TenantInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Usage { .. } => "usage",
            Self::ContentionDetected => "contention_detected",
            Self::ContentionCleared => "contention_cleared",
            Self::QuarantineDue => "quarantine_due",
            Self::Throttle => "throttle",
            Self::Suspend => "suspend",
            Self::Reinstate => "reinstate",
            Self::Decommission => "decommission",
            Self::Reprovision => "reprovision",
        }
    }
}

/// Decides one input.
pub fn decide(t: &TenantSlot, input: &TenantInput, now: Timestamp) -> Decided<TenantSlot> {
    use TenantInput as I;
    let reject = || Rejection::invalid(Some(t.state), input.name());
    let with = |state: S| TenantSlot { state, ..t.clone() };
    let changed = |d: Decision<TenantSlot>| Ok(Verdict::Changed(d));
    let not_applicable = |why: String| Ok(Verdict::NotApplicable(why.into()));
    let contend = |why: String| {
        changed(
            Decision::to(with(S::Contended), why.clone())
                .effect(EffectKind::notify("tenant_contended", why))
                .timer(TimerCommand::after(
                    TimerKind::ContentionQuarantine,
                    now,
                    jiff::SignedDuration::from_mins(QUARANTINE_AFTER_MINUTES),
                )),
        )
    };

    if t.state == S::Decommissioned {
        return match input {
            I::Reprovision => changed(Decision::to(
                TenantSlot::default(),
                "slot provisioned again",
            )),
            I::Decommission => not_applicable("already decommissioned".into()),
            _ => Err(reject()),
        };
    }
    match input {
        I::Usage {
            percent,
            quota_throttles,
        } => {
            let noisy = *percent > u128::from(CONTENDED_PERCENT);
            match t.state {
                S::Provisioning | S::Healthy | S::Throttled if noisy => contend(format!(
                    "usage at {percent}% of its limit starves neighbours"
                )),
                S::Provisioning => changed(Decision::to(with(S::Healthy), "slot in use")),
                S::Throttled if !quota_throttles => {
                    changed(Decision::to(with(S::Healthy), "back under the limit"))
                }
                other => not_applicable(format!("slot {}", other.as_str())),
            }
        }
        I::ContentionDetected => match t.state {
            S::Provisioning | S::Healthy | S::Throttled => {
                contend("contention detected by the platform".into())
            }
            other => not_applicable(format!("slot already {}", other.as_str())),
        },
        I::ContentionCleared => match t.state {
            S::Contended | S::Quarantined if !t.suspended => changed(
                Decision::to(with(S::Healthy), "contention cleared").timer(TimerCommand::Cancel {
                    kind: TimerKind::ContentionQuarantine,
                }),
            ),
            _ => Err(reject()),
        },
        I::QuarantineDue if t.state == S::Contended => changed(
            Decision::to(
                with(S::Quarantined),
                "contention not cleared in 15 minutes: quarantined",
            )
            .effect(EffectKind::notify("tenant_quarantined", "slot quarantined")),
        ),
        I::Throttle => match t.state {
            S::Provisioning | S::Healthy => changed(Decision::to(
                with(S::Throttled),
                "throttled to match quota (stricter wins)",
            )),
            other => not_applicable(format!("slot already {}", other.as_str())),
        },
        I::Suspend => match t.state {
            S::Quarantined => changed(Decision::to(
                TenantSlot {
                    suspended: true,
                    ..with(S::Quarantined)
                },
                "isolated while suspended",
            )),
            _ => changed(
                Decision::to(
                    TenantSlot {
                        suspended: true,
                        ..with(S::Quarantined)
                    },
                    "isolated while suspended",
                )
                .timer(TimerCommand::Cancel {
                    kind: TimerKind::ContentionQuarantine,
                }),
            ),
        },
        I::Reinstate if t.suspended => changed(Decision::to(
            TenantSlot {
                suspended: false,
                ..with(S::Healthy)
            },
            "isolation lifted",
        )),
        I::Reinstate => not_applicable("slot was not isolated".into()),
        I::Decommission => changed(
            Decision::to(
                TenantSlot {
                    suspended: false,
                    ..with(S::Decommissioned)
                },
                "slot decommissioned",
            )
            .timer(TimerCommand::Cancel {
                kind: TimerKind::ContentionQuarantine,
            }),
        ),
        I::Reprovision => not_applicable(format!("slot {}", t.state.as_str())),
        _ => Err(reject()),
    }
}
