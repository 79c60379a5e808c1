//! The six workflow case specs (SPEC 2.4) as transition tables over agent event types.
//!
//! ProcessOrder follows SPEC 2.4 exactly: `pending -> payment_authorized -> reserved -> captured ->
//! shipped -> delivered -> completed`, with `cancelled` (no stock at confirmation) and `failed`
//! (payment failed). The other five have short lifecycles built from the event types that refer to
//! them; `docs/cases.md` describes each, and the diagrams are drawn from these tables.

use serde::{Deserialize, Serialize};

use super::AgentEventType as T;

/// A workflow case spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CaseSpec {
    /// An order from creation to delivery.
    ProcessOrder,
    /// A return of a delivered order.
    ProcessReturn,
    /// A vendor joining the marketplace.
    OnboardVendor,
    /// A vendor suspended until re-verified.
    HandleVendorSuspension,
    /// A failed payment until it is recovered.
    HandlePaymentFailure,
    /// A payout to a vendor.
    ProcessPayout,
}

impl CaseSpec {
    /// All six.
    pub const ALL: [CaseSpec; 6] = [
        Self::ProcessOrder,
        Self::ProcessReturn,
        Self::OnboardVendor,
        Self::HandleVendorSuspension,
        Self::HandlePaymentFailure,
        Self::ProcessPayout,
    ];

    /// The spec's name, as on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::ProcessOrder => "ProcessOrder",
            Self::ProcessReturn => "ProcessReturn",
            Self::OnboardVendor => "OnboardVendor",
            Self::HandleVendorSuspension => "HandleVendorSuspension",
            Self::HandlePaymentFailure => "HandlePaymentFailure",
            Self::ProcessPayout => "ProcessPayout",
        }
    }

    /// Parses a spec name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The state a launched case starts in.
    pub fn initial(self) -> CaseState {
        match self {
            Self::ProcessOrder => CaseState::Pending,
            Self::ProcessReturn => CaseState::Requested,
            Self::OnboardVendor => CaseState::Onboarding,
            Self::HandleVendorSuspension => CaseState::Suspended,
            Self::HandlePaymentFailure => CaseState::AwaitingRecovery,
            Self::ProcessPayout => CaseState::Initiated,
        }
    }

    /// Every state the spec uses.
    pub fn states(self) -> &'static [CaseState] {
        use CaseState as S;
        match self {
            Self::ProcessOrder => &[
                S::Pending,
                S::PaymentAuthorized,
                S::Reserved,
                S::Captured,
                S::Shipped,
                S::Delivered,
                S::Completed,
                S::Cancelled,
                S::Failed,
            ],
            Self::ProcessReturn => &[S::Requested, S::Received],
            Self::OnboardVendor => &[S::Onboarding, S::Verified, S::Cancelled],
            Self::HandleVendorSuspension => &[S::Suspended, S::Reinstated],
            Self::HandlePaymentFailure => &[S::AwaitingRecovery, S::Recovered],
            Self::ProcessPayout => &[S::Initiated, S::Paid, S::Failed],
        }
    }

    /// The transition table: `(from, to, on)`; the table's first state is the initial one.
    pub fn transitions(self) -> &'static [(CaseState, CaseState, T)] {
        use CaseState as S;
        match self {
            Self::ProcessOrder => &[
                (S::Pending, S::PaymentAuthorized, T::PaymentAuthorized),
                (S::PaymentAuthorized, S::Reserved, T::OrderConfirmed),
                (S::PaymentAuthorized, S::Cancelled, T::OrderConfirmed),
                (S::Reserved, S::Captured, T::PaymentCaptured),
                (S::Captured, S::Shipped, T::OrderShipped),
                (S::Shipped, S::Delivered, T::OrderDelivered),
                (S::Delivered, S::Completed, T::OrderDelivered),
                (S::Pending, S::Failed, T::PaymentFailed),
                (S::PaymentAuthorized, S::Failed, T::PaymentFailed),
                (S::Reserved, S::Failed, T::PaymentFailed),
            ],
            Self::ProcessReturn => &[(S::Requested, S::Received, T::OrderDelivered)],
            Self::OnboardVendor => &[
                (S::Onboarding, S::Verified, T::VendorVerified),
                (S::Onboarding, S::Cancelled, T::VendorSuspended),
            ],
            Self::HandleVendorSuspension => &[(S::Suspended, S::Reinstated, T::VendorVerified)],
            Self::HandlePaymentFailure => &[
                (S::AwaitingRecovery, S::Recovered, T::PaymentAuthorized),
                (S::AwaitingRecovery, S::Recovered, T::PaymentCaptured),
            ],
            Self::ProcessPayout => &[
                (S::Initiated, S::Paid, T::PayoutInitiated),
                (S::Initiated, S::Failed, T::PayoutInitiated),
            ],
        }
    }

    /// Whether the table allows `from -> to` on `on`.
    pub fn allows(self, from: CaseState, to: CaseState, on: T) -> bool {
        self.transitions()
            .iter()
            .any(|(a, b, t)| *a == from && *b == to && *t == on)
    }
}

/// The states of all case specs (each spec uses the subset [`CaseSpec::states`] lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseState {
    /// Order created, nothing paid.
    Pending,
    /// Payment authorized.
    PaymentAuthorized,
    /// Stock reserved.
    Reserved,
    /// Payment captured.
    Captured,
    /// Shipped.
    Shipped,
    /// Delivered.
    Delivered,
    /// Done.
    Completed,
    /// Called off.
    Cancelled,
    /// Failed.
    Failed,
    /// Return requested.
    Requested,
    /// Returned goods received.
    Received,
    /// Vendor onboarding.
    Onboarding,
    /// Vendor verified.
    Verified,
    /// Vendor suspended.
    Suspended,
    /// Vendor reinstated.
    Reinstated,
    /// A failed payment awaits recovery.
    AwaitingRecovery,
    /// The payment was recovered.
    Recovered,
    /// Payout initiated.
    Initiated,
    /// Payout paid.
    Paid,
}

impl CaseState {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::PaymentAuthorized => "payment_authorized",
            Self::Reserved => "reserved",
            Self::Captured => "captured",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Requested => "requested",
            Self::Received => "received",
            Self::Onboarding => "onboarding",
            Self::Verified => "verified",
            Self::Suspended => "suspended",
            Self::Reinstated => "reinstated",
            Self::AwaitingRecovery => "awaiting_recovery",
            Self::Recovered => "recovered",
            Self::Initiated => "initiated",
            Self::Paid => "paid",
        }
    }

    /// The case status a state means.
    pub fn status(self) -> CaseStatus {
        match self {
            Self::Completed
            | Self::Received
            | Self::Verified
            | Self::Reinstated
            | Self::Recovered
            | Self::Paid => CaseStatus::Completed,
            Self::Cancelled => CaseStatus::Cancelled,
            Self::Failed => CaseStatus::Failed,
            _ => CaseStatus::Running,
        }
    }
}

/// Whether a case is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Still going.
    Running,
    /// Ended well.
    Completed,
    /// Called off.
    Cancelled,
    /// Ended badly.
    Failed,
}

impl CaseStatus {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}
