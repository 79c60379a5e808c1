//! Timeline tests with an injected clock: escalation, the retry ladder, suspension refunds, trials
//! and period ends happen at exactly the times the SPEC fixes, and never before.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod common;

use common::*;
use marketgov_core::governor::EffectKind;
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::timeline::{Decided, Firing};
use marketgov_core::GovernorKind as G;
use serde_json::json;

fn escalations(fired: &[Firing]) -> Vec<u8> {
    fired
        .iter()
        .filter_map(|f| match &f.decided {
            Decided::Customer(r) => Some(r.effects.iter().filter_map(|e| match &e.kind {
                EffectKind::Escalate { level, .. } => Some(*level),
                _ => None,
            })),
            Decided::Catalog(_) => None,
        })
        .flatten()
        .collect()
}

#[test]
fn pending_approval_escalates_at_24_and_48_hours_and_is_approved_at_72() {
    let mut tl = market();
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "gated"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("pending_approval"));

    let fired = tl.advance_to(at(24 * HOUR - 1));
    assert!(fired.is_empty(), "nothing may fire before 24 h: {fired:?}");
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("pending_approval"));

    let fired = tl.advance_to(at(24 * HOUR));
    assert_eq!(
        escalations(&fired),
        vec![1],
        "manager queue at exactly 24 h"
    );
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("escalated"));

    assert!(tl.advance_to(at(48 * HOUR - 1)).is_empty());
    let fired = tl.advance_to(at(48 * HOUR));
    assert_eq!(
        escalations(&fired),
        vec![2],
        "director queue at exactly 48 h"
    );
    assert_eq!(
        tl.customers
            .values()
            .next()
            .and_then(|c| c.entitlement.as_ref())
            .map(|e| e.escalation_level),
        Some(2)
    );

    assert!(tl.advance_to(at(72 * HOUR - 1)).is_empty());
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("escalated"));
    let fired = tl.advance_to(at(72 * HOUR));
    assert_eq!(fired.len(), 1);
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("active"),
        "approved automatically at 72 h"
    );
    let ent = tl
        .customers
        .values()
        .next()
        .and_then(|c| c.entitlement.clone())
        .expect("entitlement");
    assert!(
        ent.reason.as_deref().is_some_and(|r| r.contains("72 h")),
        "reason recorded: {ent:?}"
    );
    assert!(
        tl.customers.values().all(|c| c.timers.is_empty()),
        "no timer left"
    );
}

#[test]
fn approval_between_escalations_cancels_the_remaining_timers() {
    let mut tl = market();
    send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "gated"}),
    );
    tl.advance_to(at(30 * HOUR));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("escalated"));
    let r = send(
        &mut tl,
        json!({"type": "entitlement_approved", "customer_id": "c1", "actor": "ops"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("active"));
    assert!(
        tl.advance_to(at(200 * HOUR)).is_empty(),
        "no escalation after approval"
    );
}

fn fail(tl: &mut common_alias::Tl, n: u32) -> marketgov_core::EventResult {
    send(
        tl,
        json!({"type": "payment_failed", "customer_id": "c1", "reason": "card_declined", "payment_id": format!("fail-{n}")}),
    )
}

mod common_alias {
    pub type Tl = marketgov_core::timeline::Timeline;
}

#[test]
fn failing_charges_climb_the_retry_ladder_to_written_off_at_the_fixed_times() {
    let mut tl = market();
    let r = send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Billing), Some("invoiced"));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("incomplete"));

    assert_status(&fail(&mut tl, 1), EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Billing), Some("retry_1"));
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("suspended"),
        "nothing paid: no access"
    );

    // Each retry is attempted exactly at its wait, never before; its failure climbs one rung.
    let mut clock = 0;
    for (wait, next) in [
        (HOUR, "retry_2"),
        (3 * HOUR, "retry_3"),
        (DAY, "collections"),
    ] {
        assert!(
            tl.advance_to(at(clock + wait - 1)).is_empty(),
            "no retry before {wait} s"
        );
        let fired = tl.advance_to(at(clock + wait));
        assert_eq!(fired.len(), 1, "one retry at {wait} s");
        assert_eq!(state(&tl, "c1", G::Billing), Some("processing"));
        clock += wait;
        assert_status(&fail(&mut tl, (clock / 60) as u32), EventStatus::Completed);
        assert_eq!(state(&tl, "c1", G::Billing), Some(next));
    }
    assert_eq!(state(&tl, "c1", G::CustomerAccount), Some("restricted"));

    assert!(
        tl.advance_to(at(clock + 7 * DAY - 1)).is_empty(),
        "collections run 7 days"
    );
    let fired = tl.advance_to(at(clock + 7 * DAY));
    assert_eq!(fired.len(), 1);
    assert_eq!(state(&tl, "c1", G::Billing), Some("written_off"));
    assert_eq!(
        state(&tl, "c1", G::Subscription),
        Some("expired"),
        "never paid: expired"
    );
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("cancelled"));
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("decommissioned"));
}

#[test]
fn a_hard_decline_skips_the_ladder() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    );
    let r = send(
        &mut tl,
        json!({"type": "payment_failed", "customer_id": "c1", "reason": "stolen_card", "payment_id": "p2"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Billing), Some("collections"));
    assert_eq!(
        state(&tl, "c1", G::Compliance),
        Some("flagged"),
        "a stolen card is a fraud signal"
    );
    let timers: Vec<_> = tl
        .customers
        .values()
        .flat_map(|c| c.timers.keys().copied())
        .collect();
    assert!(
        !timers.contains(&marketgov_core::timers::TimerKind::PaymentRetry),
        "no retry timers: {timers:?}"
    );
}

#[test]
fn a_payment_during_the_ladder_restores_everything() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    );
    tl.advance_to(at(31 * DAY)); // past the paid period
    fail(&mut tl, 1);
    assert_eq!(state(&tl, "c1", G::Subscription), Some("past_due"));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("suspended"));
    let r = send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 2000, "currency": "USD", "payment_id": "late"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Billing), Some("current"));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("active"));
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("active"),
        "non-payment suspension lifted"
    );
    assert!(
        tl.advance_to(at(60 * DAY)).is_empty(),
        "retry timer cancelled"
    );
}

#[test]
fn paid_access_runs_to_the_end_of_the_paid_period() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    // Renewal invoiced early, on day 10; its charge fails while day 10-30 is paid for.
    tl.advance_to(at(10 * DAY));
    send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    );
    fail(&mut tl, 1);
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("active"),
        "access already paid for continues"
    );
    // Retries run meanwhile (they fail with nobody answering); access holds until day 30.
    tl.advance_to(at(30 * DAY - 1));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("active"));
    tl.advance_to(at(30 * DAY));
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("suspended"),
        "suspended when the paid period ends"
    );
}

#[test]
fn a_manual_suspension_not_lifted_in_72_hours_cancels_and_refunds_unused_time() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 3000 - 1000); // pro costs 2000
    tl.advance_to(at(6 * DAY));
    let r = send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "abuse report", "actor": "ops"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("suspended"));
    assert!(tl.advance_to(at(9 * DAY - 1)).is_empty());
    let fired = tl.advance_to(at(9 * DAY));
    assert_eq!(fired.len(), 1);
    let Decided::Customer(r) = &fired[0].decided else {
        panic!("customer timer")
    };
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("cancelled"));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("cancelled"));
    assert_eq!(state(&tl, "c1", G::Billing), Some("refunding"));
    // 21 of 30 days unused: 2000 * 21 / 30 = 1400.
    let refund: Vec<i64> = r
        .effects
        .iter()
        .filter_map(|e| match &e.kind {
            EffectKind::Refund { amount, .. } => Some(*amount),
            _ => None,
        })
        .collect();
    assert_eq!(refund, vec![1400]);
}

#[test]
fn reinstatement_within_72_hours_keeps_the_entitlement() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    send(
        &mut tl,
        json!({"type": "manual_suspension", "customer_id": "c1", "reason": "abuse report", "actor": "ops"}),
    );
    tl.advance_to(at(71 * HOUR));
    let r = send(
        &mut tl,
        json!({"type": "customer_reinstated", "customer_id": "c1"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("active"));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("active"));
    assert!(
        tl.advance_to(at(10 * DAY)).is_empty(),
        "refund timer cancelled"
    );
}

#[test]
fn a_trial_charges_when_it_ends_and_a_cancellation_ends_at_period_end() {
    let mut tl = market();
    send(
        &mut tl,
        json!({"type": "customer_subscribes", "customer_id": "c1", "sku": "trial"}),
    );
    assert_eq!(state(&tl, "c1", G::Subscription), Some("trialing"));
    assert_eq!(
        state(&tl, "c1", G::Billing),
        Some("current"),
        "no charge during the trial"
    );
    assert!(tl.advance_to(at(14 * DAY - 1)).is_empty());
    tl.advance_to(at(14 * DAY));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("active"));
    assert_eq!(state(&tl, "c1", G::Billing), Some("invoiced"));
    send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 1500, "currency": "USD", "payment_id": "p1"}),
    );
    let r = send(
        &mut tl,
        json!({"type": "customer_cancels", "customer_id": "c1"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert_eq!(
        state(&tl, "c1", G::Subscription),
        Some("pending_cancellation")
    );
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("pending_cancellation")
    );
    assert!(
        tl.advance_to(at(44 * DAY - 1)).is_empty(),
        "access to the end of the paid period"
    );
    tl.advance_to(at(44 * DAY));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("cancelled"));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("cancelled"));
}

#[test]
fn a_contended_slot_is_quarantined_after_15_minutes() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    send(
        &mut tl,
        json!({"type": "tenant_contention_detected", "customer_id": "c1"}),
    );
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("contended"));
    assert!(tl.advance_to(at(15 * 60 - 1)).is_empty());
    tl.advance_to(at(15 * 60));
    assert_eq!(state(&tl, "c1", G::MultiTenant), Some("quarantined"));
}
