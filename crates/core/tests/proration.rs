//! Golden tests for proration to the cent (SPEC 2.2): the SPEC's examples, a period of odd length,
//! rounding at exactly half a cent, and the largest prices accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod common;

use common::*;
use jiff::Timestamp;
use marketgov_core::money::{prorate, Currency, ProrationQuote, AMOUNT_MAX};
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::GovernorKind as G;
use serde_json::json;

fn quote(old: i64, new: i64, start: Timestamp, end: Timestamp, t: Timestamp) -> (i64, i64, i64) {
    let ProrationQuote {
        credit,
        charge,
        net,
        ..
    } = prorate(old, new, &Currency::usd(), start, end, t).expect("valid period");
    (credit, charge, net)
}

#[test]
fn spec_example_half_period() {
    assert_eq!(
        quote(1000, 2000, at(0), at(30 * DAY), at(15 * DAY)),
        (500, 1000, 500)
    );
}

#[test]
fn spec_example_21_of_31_days_left() {
    // 999 * 21/31 = 676.74 -> 677; 1999 * 21/31 = 1354.16 -> 1354; net 677.
    assert_eq!(
        quote(999, 1999, at(0), at(31 * DAY), at(10 * DAY)),
        (677, 1354, 677)
    );
}

#[test]
fn odd_period_length_in_seconds() {
    // A period of 7 s; 3 s left: 1000 * 3/7 = 428.57 -> 429; 2500 * 3/7 = 1071.43 -> 1071.
    assert_eq!(quote(1000, 2500, at(0), at(7), at(4)), (429, 1071, 642));
    // A period of 29 days 13 h 7 s (an odd length), 1/3 of it left, rounded per line.
    let len = 29 * DAY + 13 * HOUR + 7;
    let left = len / 3; // 851_102 s of 2_553_307 s
    let (c, g, n) = quote(4999, 12_345, at(0), at(len), at(len - left));
    assert_eq!((c, g, n), (1666, 4115, 2449));
}

#[test]
fn exactly_half_a_cent_rounds_up() {
    // 1 cent over 2 s with 1 s left is 0.5 -> 1; 3 cents: 1.5 -> 2.
    assert_eq!(quote(1, 3, at(0), at(2), at(1)), (1, 2, 1));
}

#[test]
fn downgrades_have_a_negative_net() {
    assert_eq!(
        quote(2000, 1000, at(0), at(30 * DAY), at(15 * DAY)),
        (1000, 500, -500)
    );
}

#[test]
fn instants_outside_the_period_are_clamped() {
    assert_eq!(
        quote(1000, 2000, at(0), at(30 * DAY), at(-5)),
        (1000, 2000, 1000)
    );
    assert_eq!(
        quote(1000, 2000, at(0), at(30 * DAY), at(31 * DAY)),
        (0, 0, 0)
    );
}

#[test]
fn the_largest_prices_do_not_overflow() {
    // 10^15 minor units over ten years of seconds: the product needs 128 bits.
    let ten_years = 3660 * DAY;
    let (c, g, n) = quote(
        AMOUNT_MAX,
        AMOUNT_MAX - 1,
        at(0),
        at(ten_years),
        at(ten_years / 3),
    );
    assert_eq!(c, 666_666_666_666_667);
    assert_eq!(g, 666_666_666_666_666);
    assert_eq!(n, -1);
    // i64::MAX is beyond what input accepts, but the arithmetic still answers exactly.
    let (c, _, _) = quote(i64::MAX, 0, at(0), at(2), at(1));
    assert_eq!(c, i64::MAX / 2 + 1);
}

#[test]
fn an_empty_period_is_an_error_not_a_panic() {
    assert!(prorate(1, 2, &Currency::usd(), at(5), at(5), at(5)).is_err());
    assert!(prorate(1, 2, &Currency::usd(), at(6), at(5), at(5)).is_err());
}

#[test]
fn an_upgrade_reports_its_proration_and_charges_the_net() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "basic", 1000);
    tl.advance_to(at(15 * DAY));
    let r = send(
        &mut tl,
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "basic", "new_sku": "pro"}),
    );
    assert_status(&r, EventStatus::Completed);
    let p = r.proration.clone().expect("proration reported");
    assert_eq!((p.credit, p.charge, p.net), (500, 1000, 500));
    assert_eq!(
        state(&tl, "c1", G::Subscription),
        Some("plan_change_pending")
    );
    assert_eq!(
        state(&tl, "c1", G::Entitlement),
        Some("pending_plan_change")
    );
    let charged = charges(&r);
    assert_eq!(charged, vec![500]);
    send(
        &mut tl,
        json!({"type": "payment_processed", "customer_id": "c1", "amount": 500, "currency": "USD", "payment_id": "up"}),
    );
    assert_eq!(state(&tl, "c1", G::Subscription), Some("active"));
    assert_eq!(state(&tl, "c1", G::Entitlement), Some("active"));
    let c = tl.customers.values().next().expect("customer");
    assert_eq!(c.subscription.as_ref().map(|s| s.sku.as_str()), Some("pro"));
}

#[test]
fn a_downgrade_keeps_the_negative_net_as_credit_for_the_next_invoice() {
    let mut tl = market();
    paying_customer(&mut tl, "c1", "pro", 2000);
    tl.advance_to(at(15 * DAY));
    let r = send(
        &mut tl,
        json!({"type": "customer_upgrades", "customer_id": "c1", "old_sku": "pro", "new_sku": "basic"}),
    );
    assert_status(&r, EventStatus::Completed);
    assert!(
        !r.effects
            .iter()
            .any(|e| matches!(e.kind, marketgov_core::EffectKind::Refund { .. })),
        "never refunded"
    );
    let credit = tl.customers.values().next().map(|c| c.billing.credit);
    assert_eq!(credit, Some(500));
    assert_eq!(state(&tl, "c1", G::Subscription), Some("active"));
    // The renewal (1000) is charged net of the 500 credit.
    let r = send(
        &mut tl,
        json!({"type": "renewal_due", "customer_id": "c1", "subscription_id": "sub-1"}),
    );
    let charged = charges(&r);
    assert_eq!(charged, vec![500]);
}
