//! Durable timers as data: which deadlines exist and the commands that set and cancel them.
//!
//! A customer holds at most one pending timer of each kind; setting a kind again moves its deadline.
//! The pending timers are part of the customer's state, so replaying the log rebuilds them exactly,
//! and a firing that does not match a pending timer (a duplicate or a stale one) is refused.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The kinds of timers. Each belongs to one governor, which decides what its firing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimerKind {
    /// Entitlement: the next step of the 24 h / 48 h / 72 h approval escalation.
    ApprovalEscalation,
    /// Entitlement: a manual or fraud suspension not lifted within 72 h ends in cancellation.
    SuspensionRefund,
    /// Entitlement: paid access runs out while the subscription is unpaid.
    PaidAccessEnd,
    /// Billing: the next attempt of the retry ladder.
    PaymentRetry,
    /// Billing: collections give up and the debt is written off.
    CollectionsDeadline,
    /// Subscription: the trial is over and the first period is charged.
    TrialEnd,
    /// Subscription: the paid period ends for a subscription cancelled at period end.
    PeriodEnd,
    /// Multi-tenant: a contended slot not cleared in time is quarantined.
    ContentionQuarantine,
    /// Product catalog: an announced price comes into force.
    PriceChangeEffective,
}

impl TimerKind {
    /// Every timer kind.
    pub const ALL: [TimerKind; 9] = [
        Self::ApprovalEscalation,
        Self::SuspensionRefund,
        Self::PaidAccessEnd,
        Self::PaymentRetry,
        Self::CollectionsDeadline,
        Self::TrialEnd,
        Self::PeriodEnd,
        Self::ContentionQuarantine,
        Self::PriceChangeEffective,
    ];

    /// The snake_case name, as on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::ApprovalEscalation => "approval_escalation",
            Self::SuspensionRefund => "suspension_refund",
            Self::PaidAccessEnd => "paid_access_end",
            Self::PaymentRetry => "payment_retry",
            Self::CollectionsDeadline => "collections_deadline",
            Self::TrialEnd => "trial_end",
            Self::PeriodEnd => "period_end",
            Self::ContentionQuarantine => "contention_quarantine",
            Self::PriceChangeEffective => "price_change_effective",
        }
    }
}

/// Sets or cancels a timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TimerCommand {
    /// Sets (or moves) the timer of this kind to `due_at`.
    Set {
        /// Which timer.
        kind: TimerKind,
        /// When it fires.
        due_at: Timestamp,
    },
    /// Cancels the timer of this kind, if pending.
    Cancel {
        /// Which timer.
        kind: TimerKind,
    },
}

impl TimerCommand {
    /// A timer due `after` from `now`.
    pub fn after(kind: TimerKind, now: Timestamp, after: SignedDuration) -> Self {
        Self::Set {
            kind,
            due_at: add(now, after),
        }
    }

    /// The kind the command is about.
    pub fn kind(&self) -> TimerKind {
        match self {
            Self::Set { kind, .. } | Self::Cancel { kind } => *kind,
        }
    }
}

/// One pending timer, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// Which timer.
    pub kind: TimerKind,
    /// When it fires.
    pub due_at: Timestamp,
}

/// `at + by`, saturating at the ends of the representable range instead of failing.
///
/// Inputs are bounded (periods of at most ten years), so saturation never happens in practice; it
/// exists so that no arithmetic on time can panic.
pub fn add(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_add(by).unwrap_or(if by.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Whole hours as a duration.
pub const fn hours(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n * 3600)
}

/// Whole days as a duration.
pub const fn days(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n * 86_400)
}
