//! Each conflict of SPEC 2.3, provoked by an input sequence and resolved as specified.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod common;

use common::*;
use marketgov_core::orchestrator::{ConflictKind, EventStatus, Outcome, Resolution};
use marketgov_core::{EffectKind, GovernorKind as G};
use serde_json::json;

fn upgrade(
    tl: &mut marketgov_core::timeline::Timeline,
    old: &str,
    new: &str,
    occurred_at: jiff::Timestamp,
) -> marketgov_core::EventResult {
    send(
        tl,
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": old, "new_sku": new,
            "occurred_at": occurred_at.to_string()}),
    )
}

fn three_plans() -> marketgov_core::timeline::Timeline {
    let mut tl = market();
    publish(&mut tl, "max", 4000, 30, 0, false);
    paying_customer(&mut tl, "c1", "basic", 1000);
    tl.advance_to(at(15 * DAY));
    tl
}

#[test]
fn racing_plan_changes_the_later_one_wins_and_replaces_the_earlier_charge() {
    let mut tl = three_plans();
    let first = upgrade(&mut tl, "basic", "pro", at(15 * DAY - 20));
    assert_status(&first, EventStatus::Completed);
    assert_eq!(charges(&first), vec![500]);

    // Sent at the same time as the first, but stamped later; its old plan is no longer current.
    let second = upgrade(&mut tl, "basic", "max", at(15 * DAY - 10));
    assert_status(&second, EventStatus::ConflictResolved);
    let conflict = &second.conflicts[0];
    assert_eq!(conflict.kind, ConflictKind::ConcurrentPlanChange);
    assert_eq!(conflict.resolution, Resolution::LastWriteWins);
    assert_eq!(conflict.governors, vec![G::Entitlement, G::Billing]);
    assert_eq!(
        outcome(&second, G::Billing),
        Some(Outcome::ConflictDetected)
    );
    // The loser's (first's) charge is voided and the winner is prorated from the plan paid for.
    assert!(
        second
            .effects
            .iter()
            .any(|e| matches!(e.kind, EffectKind::Void { amount: 500, .. })),
        "{second:#?}"
    );
    assert_eq!(
        charges(&second),
        vec![1500],
        "basic -> max at half the period"
    );
    let c = tl.customers.values().next().expect("customer");
    assert_eq!(
        c.subscription
            .as_ref()
            .and_then(|s| s.pending.as_ref())
            .map(|p| p.sku.as_str()),
        Some("max")
    );
    assert_eq!(
        c.entitlement
            .as_ref()
            .and_then(|e| e.pending_sku.as_ref())
            .map(|s| s.as_str()),
        Some("max")
    );
}

#[test]
fn racing_plan_changes_the_earlier_one_loses_and_its_charge_is_not_made() {
    let mut tl = three_plans();
    let first = upgrade(&mut tl, "basic", "pro", at(15 * DAY - 10));
    assert_status(&first, EventStatus::Completed);
    let before = tl.customers.values().next().cloned().expect("customer");

    let late = upgrade(&mut tl, "basic", "max", at(15 * DAY - 20));
    assert_status(&late, EventStatus::ConflictResolved);
    assert_eq!(late.conflicts[0].resolution, Resolution::LastWriteWins);
    assert!(
        late.effects.is_empty(),
        "the loser's charge is not made: {late:#?}"
    );
    let after = tl.customers.values().next().cloned().expect("customer");
    assert_eq!(
        after.subscription, before.subscription,
        "nothing else changes"
    );
    assert_eq!(after.billing, before.billing);
    assert_eq!(after.entitlement, before.entitlement);
}

#[test]
fn plan_changes_at_the_same_instant_are_parked_for_review() {
    let mut tl = three_plans();
    upgrade(&mut tl, "basic", "pro", at(15 * DAY - 10));
    let before = tl.customers.values().next().cloned().expect("customer");
    let tie = upgrade(&mut tl, "basic", "max", at(15 * DAY - 10));
    assert_status(&tie, EventStatus::NeedsReview);
    assert_eq!(tie.conflicts[0].resolution, Resolution::ManualReview);
    assert!(tie.review_reason.is_some());
    assert!(tie.effects.is_empty() && tie.next.is_none());
    assert_eq!(
        tl.customers.values().next(),
        Some(&before),
        "nothing changes while parked"
    );
}

#[test]
fn a_stale_old_plan_without_any_race_is_refused() {
    let mut tl = three_plans();
    let r = upgrade(&mut tl, "pro", "max", at(15 * DAY));
    assert_status(&r, EventStatus::Rejected);
    assert!(
        r.rejections().any(|(_, rej)| rej.code() == "plan_mismatch"),
        "{r:#?}"
    );
}

#[test]
fn a_fraud_suspension_with_a_charge_in_flight_voids_the_charge() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let renewal = send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    );
    assert_eq!(charges(&renewal), vec![2000]);
    assert_eq!(
        state(&tl, "c1", G::Billing),
        Some("invoiced"),
        "charge in flight"
    );

    let r = send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "fraud ring", "actor": "risk"}),
    );
    assert_status(&r, EventStatus::Compensated);
    let conflict = &r.conflicts[0];
    assert_eq!(conflict.kind, ConflictKind::ChargeDuringFraudSuspension);
    assert_eq!(conflict.resolution, Resolution::CompensatingTransaction);
    assert_eq!(conflict.governors, vec![G::Billing, G::Compliance]);
    assert!(r
        .effects
        .iter()
        .any(|e| matches!(e.kind, EffectKind::Void { amount: 2000, .. })));
    assert_eq!(state(&tl, "c1", G::Billing), Some("current"));
    assert_eq!(state(&tl, "c1", G::Compliance), Some("under_investigation"));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("suspended"));
}

#[test]
fn a_fraud_suspension_during_a_refund_is_parked_for_review() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    send(
        &mut tl,
        json!({"type": "payment_disputed", "customer_id": "c1", "payment_id": "c1-first"}),
    );
    assert_eq!(state(&tl, "c1", G::Billing), Some("disputed"));
    let r = send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "fraud", "actor": "risk"}),
    );
    assert_status(&r, EventStatus::NeedsReview);
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("active"),
        "nothing else changes"
    );
}

#[test]
fn quota_throttling_and_a_healthy_slot_disagree_and_the_stricter_wins() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let r = send(
        &mut tl,
        json!({"type": "usage_exceeds_quota", "customer_id": "c1", "resource": "api_calls", "current_usage": 1100, "limit": 1000}),
    );
    assert_status(&r, EventStatus::ConflictResolved);
    assert_eq!(r.conflicts[0].kind, ConflictKind::ThrottleDisagreement);
    assert_eq!(r.conflicts[0].resolution, Resolution::StricterWins);
    assert_eq!(state(&tl, "c1", G::QuotaSla), Some("throttled"));
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("throttled"));
    let tenant = r
        .governors
        .iter()
        .find(|g| g.governor == G::MultiTenant)
        .expect("reported");
    assert_eq!(
        (tenant.from.as_deref(), tenant.to.as_deref()),
        (Some("provisioning"), Some("throttled"))
    );
    assert_eq!(
        r.governors
            .iter()
            .filter(|g| g.governor == G::MultiTenant)
            .count(),
        1,
        "one report per governor"
    );

    // The other way round: a contended slot and a quota back to normal: the quota is throttled.
    send(
        &mut tl,
        json!({"type": "tenant_contention_detected", "customer_id": "c1"}),
    );
    let r = send(
        &mut tl,
        json!({"type": "usage_exceeds_quota", "customer_id": "c1", "resource": "api_calls", "current_usage": 10, "limit": 1000}),
    );
    assert_status(&r, EventStatus::ConflictResolved);
    assert_eq!(state(&tl, "c1", G::QuotaSla), Some("throttled"));
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("contended"));
}

#[test]
fn agreeing_quota_and_slot_are_no_conflict() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let r = send(
        &mut tl,
        json!({"type": "usage_exceeds_quota", "customer_id": "c1", "resource": "api_calls", "current_usage": 850, "limit": 1000}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::QuotaSla), Some("warning"));
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("healthy"));
}

#[test]
fn a_state_that_breaks_a_cross_governor_invariant_is_parked_not_extended() {
    // A state no rule produces (as if restored from a faulty older release): access granted while
    // the subscription has ended. Whatever comes next is parked for an operator.
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    let customer = tl.customers.values_mut().next().unwrap();
    if let Some(s) = customer.subscription.as_mut() {
        s.state = marketgov_core::governors::subscription::SubscriptionState::Cancelled;
    }
    let before = tl.customers.clone();
    let r = send(
        &mut tl,
        json!({"type": "usage_exceeds_quota", "customer_id": "c1", "resource": "api_calls", "current_usage": 10, "limit": 1000}),
    );
    assert_status(&r, EventStatus::NeedsReview);
    assert_eq!(
        r.conflicts.last().map(|c| (c.kind, c.resolution)),
        Some((ConflictKind::InvariantViolation, Resolution::ManualReview))
    );
    assert_eq!(tl.customers, before, "nothing changes while parked");
}
