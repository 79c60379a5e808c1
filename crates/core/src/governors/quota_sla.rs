//! The quota/SLA governor: usage against limits, and the vendor's service level.
//!
//! Each usage report sets its resource's level by the ratio usage/limit: below 80 % `normal`,
//! 80-100 % `warning`, above 100 % up to 120 % `throttled`, above 120 % `blocked` (exact integer
//! comparisons, no division). The governor's state is the worst level over all resources. A
//! suspension blocks everything; an SLA breach is `sla_violated` until the next usage report.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::ids::Resource;

governor_states! {
    /// The five quota/SLA states of SPEC 2.2.
    QuotaState for GovernorKind::QuotaSla, table TABLE;
    /// Below 80 % everywhere.
    Normal => "normal",
    /// Some resource at 80-100 %.
    Warning => "warning",
    /// Some resource over 100 %, up to 120 %.
    Throttled => "throttled",
    /// Some resource over 120 %, or the customer is suspended.
    Blocked => "blocked",
    /// The vendor broke its service level.
    SlaViolated => "sla_violated",
}

use QuotaState as S;

/// Percent of the limit from which usage is a warning.
pub const WARNING_PERCENT: u64 = 80;
/// Percent of the limit above which usage is throttled.
pub const THROTTLED_PERCENT: u64 = 100;
/// Percent of the limit above which usage is blocked.
pub const BLOCKED_PERCENT: u64 = 120;
/// Resources tracked per customer; reports for more are refused.
pub const RESOURCES_MAX: usize = 64;

const TABLE: &[Transition<S>] = &[
    row(
        Some(S::Normal),
        S::Normal,
        "usage_exceeds_quota, customer_subscribes",
    ),
    row(Some(S::Normal), S::Warning, "usage_exceeds_quota 80 %"),
    row(
        Some(S::Normal),
        S::Throttled,
        "usage_exceeds_quota 100 %, stricter tenant slot",
    ),
    row(
        Some(S::Normal),
        S::Blocked,
        "usage_exceeds_quota 120 %, manual_suspension",
    ),
    row(
        Some(S::Warning),
        S::Normal,
        "usage_exceeds_quota, customer_subscribes",
    ),
    row(Some(S::Warning), S::Warning, "usage_exceeds_quota"),
    row(
        Some(S::Warning),
        S::Throttled,
        "usage_exceeds_quota 100 %, stricter tenant slot",
    ),
    row(
        Some(S::Warning),
        S::Blocked,
        "usage_exceeds_quota 120 %, manual_suspension",
    ),
    row(
        Some(S::Throttled),
        S::Normal,
        "usage_exceeds_quota, customer_subscribes",
    ),
    row(Some(S::Throttled), S::Warning, "usage_exceeds_quota"),
    row(Some(S::Throttled), S::Throttled, "usage_exceeds_quota"),
    row(
        Some(S::Throttled),
        S::Blocked,
        "usage_exceeds_quota 120 %, manual_suspension",
    ),
    row(
        Some(S::Blocked),
        S::Normal,
        "usage_exceeds_quota, customer_reinstated, customer_subscribes",
    ),
    row(
        Some(S::Blocked),
        S::Warning,
        "usage_exceeds_quota, customer_reinstated",
    ),
    row(
        Some(S::Blocked),
        S::Throttled,
        "usage_exceeds_quota, customer_reinstated",
    ),
    row(Some(S::Blocked), S::Blocked, "usage_exceeds_quota"),
    row(Some(S::Normal), S::SlaViolated, "sla_violated"),
    row(Some(S::Warning), S::SlaViolated, "sla_violated"),
    row(Some(S::Throttled), S::SlaViolated, "sla_violated"),
    row(
        Some(S::SlaViolated),
        S::Normal,
        "usage_exceeds_quota, customer_subscribes",
    ),
    row(Some(S::SlaViolated), S::Warning, "usage_exceeds_quota"),
    row(Some(S::SlaViolated), S::Throttled, "usage_exceeds_quota"),
    row(
        Some(S::SlaViolated),
        S::Blocked,
        "usage_exceeds_quota 120 %, manual_suspension",
    ),
    row(Some(S::SlaViolated), S::SlaViolated, "sla_violated"),
];

/// One resource's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Usage reported.
    pub current: u64,
    /// Limit in force.
    pub limit: u64,
}

/// The quota/SLA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// The state.
    pub state: QuotaState,
    /// Limits of the current plan, per resource.
    #[serde(default)]
    pub limits: BTreeMap<Resource, u64>,
    /// Last report per resource.
    #[serde(default)]
    pub usage: BTreeMap<Resource, Usage>,
    /// Suspended by an operator: blocked whatever the usage.
    #[serde(default)]
    pub suspended: bool,
    /// The throttling was imposed by the tenant slot (stricter wins), not by usage.
    #[serde(default)]
    pub forced_throttle: bool,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            state: S::Normal,
            limits: BTreeMap::new(),
            usage: BTreeMap::new(),
            suspended: false,
            forced_throttle: false,
        }
    }
}

impl Record for Quota {
    type State = QuotaState;
    fn state(&self) -> S {
        self.state
    }
}

impl QuotaState {
    /// Whether usage is being held back.
    pub fn throttles(self) -> bool {
        matches!(self, S::Throttled | S::Blocked)
    }
}

/// The level of one report: the thresholds of SPEC 2.2, compared exactly in integers.
pub fn level(current: u64, limit: u64) -> QuotaState {
    let usage = u128::from(current) * 100;
    let limit = u128::from(limit.max(1));
    if usage > limit * u128::from(BLOCKED_PERCENT) {
        S::Blocked
    } else if usage > limit * u128::from(THROTTLED_PERCENT) {
        S::Throttled
    } else if usage >= limit * u128::from(WARNING_PERCENT) {
        S::Warning
    } else {
        S::Normal
    }
}

/// Percent of the limit, rounded down, for messages.
pub fn percent(current: u64, limit: u64) -> u128 {
    u128::from(current) * 100 / u128::from(limit.max(1))
}

fn severity(state: S) -> u8 {
    match state {
        S::Normal => 0,
        S::Warning => 1,
        S::Throttled => 2,
        S::Blocked => 3,
        S::SlaViolated => 0,
    }
}

impl Quota {
    /// The state the usage alone calls for.
    fn state_by_usage(&self) -> S {
        if self.suspended {
            return S::Blocked;
        }
        let worst = self
            .usage
            .iter()
            .map(|(resource, u)| {
                level(
                    u.current,
                    self.limits.get(resource).copied().unwrap_or(u.limit),
                )
            })
            .max_by_key(|s| severity(*s))
            .unwrap_or(S::Normal);
        if self.forced_throttle && severity(worst) < severity(S::Throttled) {
            S::Throttled
        } else {
            worst
        }
    }
}

/// What the quota/SLA governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaInput {
    /// A subscription starts or its plan changes: the plan's limits apply, usage is kept.
    SetLimits {
        /// The limits.
        limits: BTreeMap<Resource, u64>,
        /// A new subscription resets usage.
        reset: bool,
    },
    /// A usage report.
    Report {
        /// The resource.
        resource: Resource,
        /// Usage.
        current: u64,
        /// Limit as reported.
        limit: u64,
    },
    /// The tenant slot throttles and the stricter state wins.
    ForceThrottle,
    /// An operator suspends.
    Suspend,
    /// An operator reinstates.
    Reinstate,
    /// The vendor broke its service level.
    SlaViolated {
        /// The metric.
        metric: String,
    },
}

impl QuotaInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SetLimits { .. } => "set_limits",
            Self::Report { .. } => "report",
            Self::ForceThrottle => "force_throttle",
            Self::Suspend => "suspend",
            Self::Reinstate => "reinstate",
            Self::SlaViolated { .. } => "sla_violated",
        }
    }
}

/// Decides one input.
pub fn decide(q: &Quota, input: &QuotaInput, _now: Timestamp) -> Decided<Quota> {
    use QuotaInput as I;
    let changed = |next: Quota, message: String| {
        let mut d = Decision::to(next.clone(), message.clone());
        if next.state != q.state && next.state.throttles() {
            d = d.effect(EffectKind::notify("quota_enforced", message));
        }
        Ok(Verdict::Changed(d))
    };
    match input {
        I::SetLimits { limits, reset } => {
            let mut next = q.clone();
            next.limits = limits.clone();
            if *reset {
                next.usage.clear();
                next.forced_throttle = false;
            }
            next.state = next.state_by_usage();
            changed(next, format!("{} limits in force", limits.len()))
        }
        I::Report {
            resource,
            current,
            limit,
        } => {
            if !q.usage.contains_key(resource) && q.usage.len() >= RESOURCES_MAX {
                return Err(Rejection::invalid(
                    Some(q.state),
                    "report for too many resources",
                ));
            }
            let mut next = q.clone();
            next.usage.insert(
                resource.clone(),
                Usage {
                    current: *current,
                    limit: *limit,
                },
            );
            // A usage report clears an SLA breach and a forced throttle: it is fresh evidence.
            next.forced_throttle = false;
            next.state = next.state_by_usage();
            let message = format!(
                "{resource} at {}% of {limit}: {}",
                percent(*current, *limit),
                level(*current, *limit).as_str()
            );
            changed(next, message)
        }
        I::ForceThrottle => {
            if q.state.throttles() {
                return Ok(Verdict::NotApplicable("already throttled".into()));
            }
            let mut next = q.clone();
            next.forced_throttle = true;
            next.state = S::Throttled;
            changed(
                next,
                "throttled to match the tenant slot (stricter wins)".into(),
            )
        }
        I::Suspend => {
            let mut next = q.clone();
            next.suspended = true;
            next.state = S::Blocked;
            if q.state == S::Blocked {
                return Ok(Verdict::NotApplicable("already blocked".into()));
            }
            changed(next, "blocked while suspended".into())
        }
        I::Reinstate => {
            if !q.suspended {
                return Ok(Verdict::NotApplicable("not suspended".into()));
            }
            let mut next = q.clone();
            next.suspended = false;
            next.state = next.state_by_usage();
            let message = format!("usage limits apply again: {}", next.state.as_str());
            changed(next, message)
        }
        I::SlaViolated { metric } => {
            if q.state == S::Blocked {
                return Err(Rejection::invalid(Some(q.state), input.name()));
            }
            let mut next = q.clone();
            next.state = S::SlaViolated;
            Ok(Verdict::Changed(
                Decision::to(next, format!("service level broken: {metric}")).effect(
                    EffectKind::notify("sla_violated", format!("service level broken: {metric}")),
                ),
            ))
        }
    }
}
