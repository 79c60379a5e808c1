//! Which governors decide each event, in order (SPEC 2.1's table, then the further inputs).
//!
//! The first governors of each of the eight lifecycle events are exactly the SPEC table's, in its
//! order. Two events need one more governor than the table lists to keep rules the SPEC fixes
//! elsewhere: a settled payment must make the subscription `active` again, and a failed one must
//! make it `past_due` (SPEC 2.2, "Payment retries"). That governor is appended after the table's, so
//! the table's order and its "each sees the decisions before it" are unchanged.

use crate::governor::GovernorKind as G;
use crate::timers::TimerKind;

/// The route of every customer-event type, by its wire name.
pub const ROUTES: &[(&str, &[G])] = &[
    (
        "customer_subscribes",
        &[
            G::Compliance,
            G::CustomerAccount,
            G::Subscription,
            G::Entitlement,
            G::Billing,
            G::QuotaSla,
        ],
    ),
    (
        "customer_upgrades",
        &[G::Subscription, G::Billing, G::Entitlement, G::QuotaSla],
    ),
    (
        "payment_processed",
        &[
            G::Billing,
            G::Entitlement,
            G::CustomerAccount,
            G::Subscription,
        ],
    ),
    (
        "payment_failed",
        &[
            G::Billing,
            G::Entitlement,
            G::CustomerAccount,
            G::Compliance,
            G::Subscription,
        ],
    ),
    (
        "usage_exceeds_quota",
        &[
            G::QuotaSla,
            G::Billing,
            G::CustomerAccount,
            G::Entitlement,
            G::MultiTenant,
        ],
    ),
    (
        "customer_cancels",
        &[
            G::Subscription,
            G::Entitlement,
            G::Billing,
            G::CustomerAccount,
            G::Compliance,
        ],
    ),
    (
        "manual_suspension",
        &[
            G::Entitlement,
            G::Billing,
            G::Subscription,
            G::CustomerAccount,
            G::QuotaSla,
            G::Compliance,
            G::MultiTenant,
        ],
    ),
    (
        "renewal_due",
        &[G::Subscription, G::Billing, G::Entitlement],
    ),
    ("entitlement_approved", &[G::Entitlement]),
    (
        "entitlement_rejected",
        &[G::Entitlement, G::Subscription, G::Billing],
    ),
    ("account_verified", &[G::CustomerAccount]),
    ("account_verification_failed", &[G::CustomerAccount]),
    ("compliance_cleared", &[G::Compliance]),
    ("compliance_flagged", &[G::Compliance]),
    (
        "customer_reinstated",
        &[
            G::Entitlement,
            G::Subscription,
            G::CustomerAccount,
            G::QuotaSla,
            G::MultiTenant,
        ],
    ),
    ("cancellation_reverted", &[G::Subscription, G::Entitlement]),
    ("payment_disputed", &[G::Billing]),
    ("dispute_resolved", &[G::Billing, G::CustomerAccount]),
    ("account_locked", &[G::CustomerAccount]),
    ("account_unlocked", &[G::CustomerAccount]),
    (
        "account_closed",
        &[
            G::CustomerAccount,
            G::Subscription,
            G::Entitlement,
            G::Billing,
            G::MultiTenant,
        ],
    ),
    ("tenant_contention_detected", &[G::MultiTenant]),
    ("tenant_contention_cleared", &[G::MultiTenant]),
    ("sla_violated", &[G::QuotaSla]),
    ("refund_processed", &[G::Billing]),
];

/// The route of each customer timer when it fires.
pub const TIMER_ROUTES: &[(TimerKind, &[G])] = &[
    (TimerKind::ApprovalEscalation, &[G::Entitlement]),
    (
        TimerKind::SuspensionRefund,
        &[G::Entitlement, G::Subscription, G::Billing, G::MultiTenant],
    ),
    (TimerKind::PaidAccessEnd, &[G::Entitlement]),
    (TimerKind::PaymentRetry, &[G::Billing]),
    (
        TimerKind::CollectionsDeadline,
        &[
            G::Billing,
            G::Subscription,
            G::Entitlement,
            G::CustomerAccount,
            G::MultiTenant,
        ],
    ),
    (TimerKind::TrialEnd, &[G::Subscription, G::Billing]),
    (
        TimerKind::PeriodEnd,
        &[G::Subscription, G::Entitlement, G::MultiTenant],
    ),
    (TimerKind::ContentionQuarantine, &[G::MultiTenant]),
];

/// The governors an event type goes to, in order; empty for an unknown name.
pub fn route(event_type: &str) -> &'static [G] {
    ROUTES
        .iter()
        .find(|(name, _)| *name == event_type)
        .map_or(&[], |(_, route)| *route)
}

/// The governors a fired timer goes to, in order; empty for a timer that is not a customer's.
pub fn timer_route(kind: TimerKind) -> &'static [G] {
    TIMER_ROUTES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[], |(_, route)| *route)
}
