//! Unit tests of each governor's decision function, without the orchestrator: the transitions the
//! SPEC's rules fix, and a representative set of inputs each state must refuse with a typed
//! rejection. (`coverage.rs` shows every table row is reachable; these pin what each move does.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly
mod common;

use common::{at, DAY, HOUR};
use marketgov_core::governor::{Decided, Decision, EffectKind, Record, Rejection, Verdict};
use marketgov_core::timers::{TimerCommand, TimerKind};

fn changed<R: Record>(d: Decided<R>) -> Decision<R> {
    match d {
        Ok(Verdict::Changed(decision)) => decision,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn refused<R: Record>(d: Decided<R>) -> Rejection {
    match d {
        Err(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn not_applicable<R: Record>(d: Decided<R>) {
    assert!(
        matches!(d, Ok(Verdict::NotApplicable(_))),
        "expected not_applicable, got {d:?}"
    );
}

fn set_at(d: &Decision<impl Record>, kind: TimerKind) -> Option<jiff::Timestamp> {
    d.timers.iter().find_map(|t| match t {
        TimerCommand::Set { kind: k, due_at } if *k == kind => Some(*due_at),
        _ => None,
    })
}

mod entitlement {
    use super::*;
    use marketgov_core::governors::entitlement::{
        decide, Entitlement, EntitlementInput as I, EntitlementState as S, SuspensionCause,
    };
    use marketgov_core::ids::Sku;

    fn sku(s: &str) -> Sku {
        Sku::new(s).unwrap()
    }

    fn grant(approval: bool, held: Option<&str>) -> Entitlement {
        let d = changed(decide(
            None,
            &I::Grant {
                sku: sku("pro"),
                requires_approval: approval,
                held_by: held.map(str::to_owned),
            },
            at(0),
        ));
        d.next
    }

    fn with(state: S) -> Entitlement {
        Entitlement {
            state,
            ..grant(false, None)
        }
    }

    #[test]
    fn grants_straight_to_active_or_to_approval_with_a_24_hour_escalation() {
        let d = changed(decide(
            None,
            &I::Grant {
                sku: sku("pro"),
                requires_approval: false,
                held_by: None,
            },
            at(0),
        ));
        assert_eq!(d.next.state, S::Active);
        assert!(d
            .effects
            .contains(&EffectKind::Provision { sku: sku("pro") }));

        let d = changed(decide(
            None,
            &I::Grant {
                sku: sku("pro"),
                requires_approval: true,
                held_by: None,
            },
            at(0),
        ));
        assert_eq!(d.next.state, S::PendingApproval);
        assert_eq!(
            set_at(&d, TimerKind::ApprovalEscalation),
            Some(at(24 * HOUR))
        );

        let held = grant(false, Some("compliance is flagged"));
        assert_eq!(
            held.state,
            S::PendingApproval,
            "a hold sends even a no-approval SKU to approval"
        );
    }

    #[test]
    fn escalates_to_manager_then_director_then_approves() {
        let e = grant(true, None);
        let d1 = changed(decide(Some(&e), &I::EscalationDue, at(24 * HOUR)));
        assert_eq!((d1.next.state, d1.next.escalation_level), (S::Escalated, 1));
        assert!(
            matches!(&d1.effects[0], EffectKind::Escalate { level: 1, queue, .. } if queue == "manager")
        );
        assert_eq!(
            set_at(&d1, TimerKind::ApprovalEscalation),
            Some(at(48 * HOUR))
        );
        let d2 = changed(decide(Some(&d1.next), &I::EscalationDue, at(48 * HOUR)));
        assert_eq!((d2.next.state, d2.next.escalation_level), (S::Escalated, 2));
        assert_eq!(
            set_at(&d2, TimerKind::ApprovalEscalation),
            Some(at(72 * HOUR))
        );
        let d3 = changed(decide(Some(&d2.next), &I::EscalationDue, at(72 * HOUR)));
        assert_eq!(d3.next.state, S::Active);
        assert!(d3.timers.contains(&TimerCommand::Cancel {
            kind: TimerKind::ApprovalEscalation
        }));
    }

    #[test]
    fn approval_and_rejection_end_the_wait() {
        let e = grant(true, None);
        assert_eq!(
            changed(decide(Some(&e), &I::Approve, at(1))).next.state,
            S::Active
        );
        let r = changed(decide(
            Some(&e),
            &I::Reject {
                reason: "no".into(),
            },
            at(1),
        ));
        assert_eq!(r.next.state, S::Rejected);
        assert!(r.timers.contains(&TimerCommand::Cancel {
            kind: TimerKind::ApprovalEscalation
        }));
    }

    #[test]
    fn manual_and_fraud_suspensions_set_the_72_hour_refund_deadline() {
        for cause in [SuspensionCause::Manual, SuspensionCause::Fraud] {
            let d = changed(decide(Some(&with(S::Active)), &I::Suspend { cause }, at(0)));
            assert_eq!(d.next.state, S::Suspended);
            assert_eq!(set_at(&d, TimerKind::SuspensionRefund), Some(at(72 * HOUR)));
            assert_eq!(
                changed(decide(Some(&d.next), &I::Reinstate, at(HOUR)))
                    .next
                    .state,
                S::Active
            );
        }
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::Suspend {
                cause: SuspensionCause::NonPayment,
            },
            at(0),
        ));
        assert_eq!(set_at(&d, TimerKind::SuspensionRefund), None);
        refused(decide(Some(&d.next), &I::Reinstate, at(1)));
        assert_eq!(
            changed(decide(Some(&d.next), &I::PaymentSettled, at(1)))
                .next
                .state,
            S::Active
        );
    }

    #[test]
    fn only_active_or_pending_plan_change_can_be_suspended() {
        for state in [
            S::PendingApproval,
            S::Escalated,
            S::Suspended,
            S::PendingCancellation,
            S::Cancelled,
            S::Rejected,
        ] {
            let r = refused(decide(
                Some(&with(state)),
                &I::Suspend {
                    cause: SuspensionCause::Manual,
                },
                at(0),
            ));
            assert_eq!(r.code(), "invalid_transition", "{state:?}");
        }
        let d = changed(decide(
            Some(&with(S::PendingPlanChange)),
            &I::Suspend {
                cause: SuspensionCause::Fraud,
            },
            at(0),
        ));
        assert_eq!(d.next.state, S::Suspended);
    }

    #[test]
    fn unpaid_access_runs_to_the_paid_end() {
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::PaymentMissed {
                paid_access_until: Some(at(10 * DAY)),
            },
            at(DAY),
        ));
        assert_eq!(d.next.state, S::Active);
        assert_eq!(set_at(&d, TimerKind::PaidAccessEnd), Some(at(10 * DAY)));
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::PaymentMissed {
                paid_access_until: Some(at(DAY)),
            },
            at(DAY),
        ));
        assert_eq!(d.next.state, S::Suspended);
    }

    #[test]
    fn plan_changes_wait_for_payment_or_apply_at_once() {
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::ChangePlan {
                new_sku: sku("max"),
                awaits_payment: true,
            },
            at(0),
        ));
        assert_eq!(
            (d.next.state, d.next.sku.as_str()),
            (S::PendingPlanChange, "pro")
        );
        let paid = changed(decide(Some(&d.next), &I::PaymentSettled, at(1)));
        assert_eq!(
            (paid.next.state, paid.next.sku.as_str()),
            (S::Active, "max")
        );
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::ChangePlan {
                new_sku: sku("min"),
                awaits_payment: false,
            },
            at(0),
        ));
        assert_eq!((d.next.state, d.next.sku.as_str()), (S::Active, "min"));
    }

    #[test]
    fn cancellation_at_period_end_can_be_reverted() {
        let d = changed(decide(
            Some(&with(S::Active)),
            &I::Cancel {
                at_period_end: true,
            },
            at(0),
        ));
        assert_eq!(d.next.state, S::PendingCancellation);
        assert_eq!(
            changed(decide(Some(&d.next), &I::RevertCancellation, at(1)))
                .next
                .state,
            S::Active
        );
        let end = changed(decide(
            Some(&d.next),
            &I::End {
                reason: "period over".into(),
            },
            at(2),
        ));
        assert_eq!(end.next.state, S::Cancelled);
        assert!(end
            .effects
            .contains(&EffectKind::Revoke { sku: sku("pro") }));
        assert_eq!(
            changed(decide(
                Some(&with(S::Active)),
                &I::Cancel {
                    at_period_end: false
                },
                at(0)
            ))
            .next
            .state,
            S::Cancelled
        );
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        refused(decide(None, &I::Approve, at(0)));
        refused(decide(Some(&with(S::Active)), &I::Approve, at(0)));
        refused(decide(
            Some(&with(S::Active)),
            &I::Grant {
                sku: sku("pro"),
                requires_approval: false,
                held_by: None,
            },
            at(0),
        ));
        refused(decide(
            Some(&with(S::Active)),
            &I::RevertCancellation,
            at(0),
        ));
        refused(decide(
            Some(&with(S::Cancelled)),
            &I::ChangePlan {
                new_sku: sku("x"),
                awaits_payment: false,
            },
            at(0),
        ));
        not_applicable(decide(
            Some(&with(S::Cancelled)),
            &I::End {
                reason: "again".into(),
            },
            at(0),
        ));
        // A cancelled or rejected entitlement may be granted again.
        assert_eq!(
            changed(decide(
                Some(&with(S::Rejected)),
                &I::Grant {
                    sku: sku("pro"),
                    requires_approval: false,
                    held_by: None
                },
                at(0)
            ))
            .next
            .state,
            S::Active
        );
    }
}

mod billing {
    use super::*;
    use marketgov_core::governors::billing::{
        decide, Billing, BillingInput as I, BillingState as S, InvoiceReason,
    };
    use marketgov_core::ids::PaymentId;
    use marketgov_core::money::Currency;

    fn invoice(b: &Billing, amount: i64) -> Decision<Billing> {
        changed(decide(
            b,
            &I::Invoice {
                amount,
                currency: Currency::usd(),
                reason: InvoiceReason::Renewal,
                replaces_open: false,
            },
            at(0),
        ))
    }

    fn pay(b: &Billing, amount: i64, id: &str) -> Decided<Billing> {
        decide(
            b,
            &I::PaymentProcessed {
                amount,
                currency: Currency::usd(),
                payment_id: PaymentId::new(id).unwrap(),
            },
            at(0),
        )
    }

    fn fail(b: &Billing, id: &str, hard: bool) -> Decided<Billing> {
        decide(
            b,
            &I::PaymentFailed {
                payment_id: PaymentId::new(id).unwrap(),
                hard_decline: hard,
                reason: "declined".into(),
            },
            at(0),
        )
    }

    #[test]
    fn an_invoice_is_charged_and_a_payment_settles_it() {
        let d = invoice(&Billing::default(), 1000);
        assert_eq!(d.next.state, S::Invoiced);
        assert!(matches!(
            &d.effects[0],
            EffectKind::Charge {
                amount: 1000,
                attempt: 1,
                ..
            }
        ));
        let paid = changed(pay(&d.next, 1000, "p1"));
        assert_eq!((paid.next.state, paid.next.amount_due), (S::Current, 0));
    }

    #[test]
    fn the_retry_ladder_waits_1h_3h_1d_then_collections_for_7_days() {
        let mut b = invoice(&Billing::default(), 1000).next;
        let mut waits = Vec::new();
        for (n, expected) in [(1, S::Retry1), (2, S::Retry2), (3, S::Retry3)] {
            let d = changed(fail(&b, &format!("f{n}"), false));
            assert_eq!(d.next.state, expected);
            waits.push(
                set_at(&d, TimerKind::PaymentRetry).map(|t| t.as_second() - at(0).as_second()),
            );
            let retry = changed(decide(&d.next, &I::RetryDue, at(0)));
            assert_eq!(retry.next.state, S::Processing);
            assert!(
                matches!(&retry.effects[0], EffectKind::Charge { attempt, .. } if *attempt == n + 1)
            );
            b = retry.next;
        }
        assert_eq!(waits, vec![Some(HOUR), Some(3 * HOUR), Some(DAY)]);
        let d = changed(fail(&b, "f4", false));
        assert_eq!(d.next.state, S::Collections);
        assert_eq!(
            set_at(&d, TimerKind::CollectionsDeadline),
            Some(at(7 * DAY))
        );
        let off = changed(decide(&d.next, &I::CollectionsExpired, at(7 * DAY)));
        assert_eq!(off.next.state, S::WrittenOff);
    }

    #[test]
    fn a_hard_decline_goes_straight_to_collections_without_retry_timers() {
        let b = invoice(&Billing::default(), 1000).next;
        let d = changed(fail(&b, "f1", true));
        assert_eq!(d.next.state, S::Collections);
        assert_eq!(set_at(&d, TimerKind::PaymentRetry), None);
    }

    #[test]
    fn payment_ids_are_idempotent_and_amounts_must_match() {
        let b = changed(pay(&invoice(&Billing::default(), 1000).next, 1000, "p1")).next;
        not_applicable(pay(&b, 1000, "p1"));
        assert_eq!(
            refused(pay(&b, 999, "p1")),
            Rejection::PaymentAmountMismatch {
                payment_id: "p1".into(),
                recorded: 1000,
                received: 999
            }
        );
    }

    #[test]
    fn money_is_never_refused() {
        let d = changed(pay(&Billing::default(), 700, "p1"));
        assert_eq!((d.next.state, d.next.credit), (S::Current, 700));
        let over = changed(pay(&invoice(&Billing::default(), 1000).next, 1500, "p2"));
        assert_eq!((over.next.state, over.next.credit), (S::Current, 500));
        let partial = changed(pay(&invoice(&Billing::default(), 1000).next, 400, "p3"));
        assert_eq!(
            (partial.next.state, partial.next.amount_due),
            (S::Invoiced, 600)
        );
    }

    #[test]
    fn credit_pays_invoices_first_and_negative_amounts_become_credit() {
        let with_credit = Billing {
            credit: 1500,
            ..Billing::default()
        };
        let d = invoice(&with_credit, 1000);
        assert_eq!((d.next.state, d.next.credit), (S::Current, 500));
        assert!(d.effects.is_empty());
        let d = invoice(&Billing::default(), -300);
        assert_eq!((d.next.state, d.next.credit), (S::Current, 300));
    }

    #[test]
    fn disputes_refunds_and_voids() {
        let b = changed(pay(&invoice(&Billing::default(), 1000).next, 1000, "p1")).next;
        let disputed = changed(decide(
            &b,
            &I::Disputed {
                payment_id: PaymentId::new("p1").unwrap(),
            },
            at(0),
        ))
        .next;
        assert_eq!(disputed.state, S::Disputed);
        let lost = changed(decide(
            &disputed,
            &I::DisputeResolved {
                payment_id: PaymentId::new("p1").unwrap(),
                won: false,
            },
            at(0),
        ));
        assert_eq!(
            (lost.next.state, lost.next.amount_due),
            (S::Collections, 1000)
        );
        assert_eq!(
            refused(decide(
                &b,
                &I::Disputed {
                    payment_id: PaymentId::new("zz").unwrap()
                },
                at(0)
            ))
            .code(),
            "unknown_payment"
        );

        let refunding = changed(decide(
            &b,
            &I::Refund {
                amount: 300,
                reason: "unused".into(),
            },
            at(0),
        ))
        .next;
        assert_eq!(refunding.state, S::Refunding);
        let done = changed(decide(
            &refunding,
            &I::RefundProcessed {
                amount: 300,
                currency: Currency::usd(),
            },
            at(0),
        ));
        assert_eq!(done.next.state, S::Current);

        let voided = changed(decide(
            &invoice(&Billing::default(), 1000).next,
            &I::Void,
            at(0),
        ));
        assert_eq!(voided.next.state, S::Current);
        assert!(matches!(
            &voided.effects[0],
            EffectKind::Void { amount: 1000, .. }
        ));
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        assert_eq!(
            refused(fail(&Billing::default(), "f1", false)),
            Rejection::NothingDue
        );
        refused(decide(&Billing::default(), &I::RetryDue, at(0)));
        refused(decide(&Billing::default(), &I::CollectionsExpired, at(0)));
        refused(decide(&Billing::default(), &I::Void, at(0)));
        let open = invoice(&Billing::default(), 1000).next;
        refused(decide(
            &open,
            &I::Invoice {
                amount: 5,
                currency: Currency::usd(),
                reason: InvoiceReason::Renewal,
                replaces_open: false,
            },
            at(0),
        ));
        let eur = Currency::new("EUR").unwrap();
        assert_eq!(
            refused(decide(
                &open,
                &I::PaymentProcessed {
                    amount: 1000,
                    currency: eur,
                    payment_id: PaymentId::new("p").unwrap()
                },
                at(0)
            ))
            .code(),
            "currency_mismatch"
        );
    }
}

mod subscription {
    use super::*;
    use marketgov_core::governors::subscription::{
        decide, Subscription, SubscriptionInput as I, SubscriptionState as S, SubscriptionTerms,
    };
    use marketgov_core::ids::{Sku, SubscriptionId};
    use marketgov_core::money::Currency;

    fn start(trial_days: u32) -> Decision<Subscription> {
        changed(decide(
            None,
            &I::Start(SubscriptionTerms {
                subscription_id: SubscriptionId::numbered(1),
                sku: Sku::new("pro").unwrap(),
                price: 2000,
                currency: Currency::usd(),
                period_days: 30,
                trial_days,
                marketplace: None,
            }),
            at(0),
        ))
    }

    #[test]
    fn incomplete_until_paid_or_trialing_until_the_trial_ends() {
        let s = start(0).next;
        assert_eq!(s.state, S::Incomplete);
        let paid = changed(decide(Some(&s), &I::PaymentSettled, at(1))).next;
        assert_eq!(
            (paid.state, paid.paid_through),
            (S::Active, Some(at(30 * DAY)))
        );
        let t = start(14);
        assert_eq!(t.next.state, S::Trialing);
        assert_eq!(set_at(&t, TimerKind::TrialEnd), Some(at(14 * DAY)));
        let active = changed(decide(Some(&t.next), &I::TrialEnded, at(14 * DAY))).next;
        assert_eq!(
            (active.state, active.period_start, active.period_end),
            (S::Active, at(14 * DAY), at(44 * DAY))
        );
    }

    #[test]
    fn renewals_continue_periods_without_gaps_and_must_name_the_subscription() {
        let s = changed(decide(Some(&start(0).next), &I::PaymentSettled, at(1))).next;
        let r = changed(decide(
            Some(&s),
            &I::Renew {
                subscription_id: SubscriptionId::numbered(1),
                price: 2100,
            },
            at(DAY),
        ))
        .next;
        assert_eq!(
            (r.period_start, r.period_end, r.price),
            (at(30 * DAY), at(60 * DAY), 2100)
        );
        assert_eq!(
            refused(decide(
                Some(&s),
                &I::Renew {
                    subscription_id: SubscriptionId::numbered(9),
                    price: 1
                },
                at(0)
            ))
            .code(),
            "unknown_subscription"
        );
    }

    #[test]
    fn past_due_suspension_and_cancellation() {
        let s = changed(decide(Some(&start(0).next), &I::PaymentSettled, at(1))).next;
        let due = changed(decide(Some(&s), &I::PaymentMissed, at(2))).next;
        assert_eq!(due.state, S::PastDue);
        let sus = changed(decide(Some(&due), &I::Suspend, at(3))).next;
        assert_eq!(
            changed(decide(Some(&sus), &I::Reinstate, at(4))).next.state,
            S::PastDue
        );
        let pc = changed(decide(
            Some(&s),
            &I::Cancel {
                at_period_end: true,
            },
            at(5),
        ));
        assert_eq!(pc.next.state, S::PendingCancellation);
        assert_eq!(set_at(&pc, TimerKind::PeriodEnd), Some(at(30 * DAY)));
        assert_eq!(
            changed(decide(
                Some(&start(0).next),
                &I::End {
                    reason: "written off".into()
                },
                at(0)
            ))
            .next
            .state,
            S::Expired
        );
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        let s = start(0).next;
        refused(decide(None, &I::PaymentSettled, at(0)));
        refused(decide(Some(&s), &I::TrialEnded, at(0)));
        refused(decide(Some(&s), &I::Reinstate, at(0)));
        refused(decide(Some(&s), &I::RevertCancellation, at(0)));
        refused(decide(
            Some(&s),
            &I::Renew {
                subscription_id: SubscriptionId::numbered(1),
                price: 1,
            },
            at(0),
        ));
        refused(decide(
            Some(&s),
            &I::ChangePlan {
                sku: Sku::new("x").unwrap(),
                price: 1,
                awaits_payment: false,
                at: at(0),
            },
            at(0),
        ));
        refused(decide(
            Some(&s),
            &I::Start(SubscriptionTerms {
                subscription_id: SubscriptionId::numbered(2),
                sku: Sku::new("pro").unwrap(),
                price: 1,
                currency: Currency::usd(),
                period_days: 30,
                trial_days: 0,
                marketplace: None,
            }),
            at(0),
        ));
    }
}

mod customer_account {
    use super::*;
    use marketgov_core::governors::customer_account::{
        decide, Account, AccountInput as I, AccountState as S,
    };

    fn after(a: &Account, input: I) -> Account {
        changed(decide(a, &input, at(0))).next
    }

    #[test]
    fn verification_lock_suspension_and_closure() {
        let pending = after(&Account::default(), I::Subscribe);
        assert_eq!(pending.state, S::PendingVerification);
        let active = after(&pending, I::Verified);
        assert_eq!(active.state, S::Active);
        let restricted = after(
            &pending,
            I::VerificationFailed {
                reason: "mismatch".into(),
            },
        );
        assert_eq!(restricted.state, S::Restricted);
        let locked = after(
            &active,
            I::Lock {
                reason: "takeover".into(),
            },
        );
        assert_eq!(
            after(&locked, I::Unlock).state,
            S::Active,
            "unlock returns to the state before"
        );
        let suspended = after(
            &active,
            I::Suspend {
                reason: "abuse".into(),
            },
        );
        assert_eq!(after(&suspended, I::Reinstate).state, S::Active);
        let delinquent = after(&active, I::PaymentDelinquent);
        assert_eq!(after(&delinquent, I::PaymentSettled).state, S::Active);
        let closed = after(
            &active,
            I::Close {
                reason: "gone".into(),
            },
        );
        assert_eq!(closed.state, S::Closed);
    }

    #[test]
    fn closed_is_final_and_other_misfits_are_refused() {
        let closed = after(
            &Account::default(),
            I::Close {
                reason: "gone".into(),
            },
        );
        for input in [
            I::Subscribe,
            I::Verified,
            I::Unlock,
            I::Reinstate,
            I::Lock { reason: "x".into() },
        ] {
            refused(decide(&closed, &input, at(0)));
        }
        refused(decide(&Account::default(), &I::Unlock, at(0)));
        refused(decide(&Account::default(), &I::Reinstate, at(0)));
        let suspended = after(&Account::default(), I::Suspend { reason: "x".into() });
        refused(decide(&suspended, &I::Subscribe, at(0)));
    }
}

mod quota_sla {
    use super::*;
    use marketgov_core::governors::quota_sla::{
        decide, level, Quota, QuotaInput as I, QuotaState as S,
    };
    use marketgov_core::ids::Resource;

    #[test]
    fn thresholds_are_exact() {
        assert_eq!(level(79, 100), S::Normal);
        assert_eq!(level(80, 100), S::Warning);
        assert_eq!(level(100, 100), S::Warning);
        assert_eq!(level(101, 100), S::Throttled);
        assert_eq!(level(120, 100), S::Throttled);
        assert_eq!(level(121, 100), S::Blocked);
        assert_eq!(level(u64::MAX, 1), S::Blocked, "no overflow");
        // 799/1000 is 79.9 %: still normal; 1201/1000 is 120.1 %: blocked.
        assert_eq!(level(799, 1000), S::Normal);
        assert_eq!(level(1201, 1000), S::Blocked);
    }

    #[test]
    fn the_state_is_the_worst_resource_and_suspension_blocks() {
        let report = |q: &Quota, r: &str, current: u64| {
            changed(decide(
                q,
                &I::Report {
                    resource: Resource::new(r).unwrap(),
                    current,
                    limit: 100,
                },
                at(0),
            ))
            .next
        };
        let q = report(&Quota::default(), "api", 110);
        let q = report(&q, "storage", 10);
        assert_eq!(q.state, S::Throttled);
        let q = report(&q, "api", 10);
        assert_eq!(q.state, S::Normal);
        let blocked = changed(decide(&q, &I::Suspend, at(0))).next;
        assert_eq!(blocked.state, S::Blocked);
        assert_eq!(
            changed(decide(&blocked, &I::Reinstate, at(0))).next.state,
            S::Normal
        );
        let sla = changed(decide(
            &q,
            &I::SlaViolated {
                metric: "uptime".into(),
            },
            at(0),
        ))
        .next;
        assert_eq!(sla.state, S::SlaViolated);
        refused(decide(
            &blocked,
            &I::SlaViolated {
                metric: "uptime".into(),
            },
            at(0),
        ));
        not_applicable(decide(&q, &I::Reinstate, at(0)));
    }
}

mod compliance {
    use super::*;
    use marketgov_core::governors::compliance::{
        decide, Compliance, ComplianceInput as I, ComplianceState as S,
    };
    use marketgov_core::input::FlagSeverity;

    #[test]
    fn screening_flags_and_clearing() {
        let screening = changed(decide(&Compliance::default(), &I::Subscribe, at(0))).next;
        assert_eq!(screening.state, S::Screening);
        for (severity, state) in [
            (FlagSeverity::Review, S::Flagged),
            (FlagSeverity::Investigate, S::UnderInvestigation),
            (FlagSeverity::Block, S::Blocked),
        ] {
            let flagged = changed(decide(
                &screening,
                &I::Flag {
                    reason: "x".into(),
                    severity,
                },
                at(0),
            ))
            .next;
            assert_eq!(flagged.state, state);
            assert_eq!(
                changed(decide(&flagged, &I::Clear, at(0))).next.state,
                S::Cleared
            );
        }
        let blocked = Compliance {
            state: S::Blocked,
            reason: None,
        };
        not_applicable(decide(
            &blocked,
            &I::Flag {
                reason: "x".into(),
                severity: FlagSeverity::Review,
            },
            at(0),
        ));
        not_applicable(decide(&screening, &I::Subscribe, at(0)));
    }
}

mod multi_tenant {
    use super::*;
    use marketgov_core::governors::multi_tenant::{
        decide, TenantInput as I, TenantSlot, TenantState as S,
    };

    #[test]
    fn contention_quarantine_throttling_and_decommissioning() {
        let healthy = changed(decide(
            &TenantSlot::default(),
            &I::Usage {
                percent: 10,
                quota_throttles: false,
            },
            at(0),
        ))
        .next;
        assert_eq!(healthy.state, S::Healthy);
        let noisy = changed(decide(
            &healthy,
            &I::Usage {
                percent: 151,
                quota_throttles: true,
            },
            at(0),
        ));
        assert_eq!(noisy.next.state, S::Contended);
        assert_eq!(
            set_at(&noisy, TimerKind::ContentionQuarantine),
            Some(at(15 * 60))
        );
        let at_150 = decide(
            &healthy,
            &I::Usage {
                percent: 150,
                quota_throttles: true,
            },
            at(0),
        );
        not_applicable(at_150);
        let q = changed(decide(&noisy.next, &I::QuarantineDue, at(15 * 60))).next;
        assert_eq!(q.state, S::Quarantined);
        assert_eq!(
            changed(decide(&q, &I::ContentionCleared, at(0))).next.state,
            S::Healthy
        );
        let throttled = changed(decide(&healthy, &I::Throttle, at(0))).next;
        assert_eq!(
            changed(decide(
                &throttled,
                &I::Usage {
                    percent: 50,
                    quota_throttles: false
                },
                at(0)
            ))
            .next
            .state,
            S::Healthy
        );
        let gone = changed(decide(&healthy, &I::Decommission, at(0))).next;
        refused(decide(&gone, &I::ContentionDetected, at(0)));
        assert_eq!(
            changed(decide(&gone, &I::Reprovision, at(0))).next.state,
            S::Provisioning
        );
        refused(decide(&healthy, &I::QuarantineDue, at(0)));
        refused(decide(&healthy, &I::ContentionCleared, at(0)));
    }
}

mod product_catalog {
    use super::*;
    use marketgov_core::governors::product_catalog::{
        decide, Product, ProductInput as I, ProductState as S,
    };
    use marketgov_core::ids::Sku;
    use marketgov_core::input::ProductDefinition;
    use marketgov_core::money::Currency;

    fn def(name: &str, period: u32) -> ProductDefinition {
        ProductDefinition {
            name: name.into(),
            price: 1000,
            currency: Currency::usd(),
            billing_period_days: period,
            trial_days: 0,
            requires_approval: false,
            quotas: Default::default(),
        }
    }

    fn sku() -> Sku {
        Sku::new("pro").unwrap()
    }

    fn draft(d: ProductDefinition) -> Product {
        changed(decide(&sku(), None, &I::Submit(d), 0, at(0))).next
    }

    #[test]
    fn publishing_validates_against_the_schema() {
        let ok = changed(decide(
            &sku(),
            Some(&draft(def("Pro", 30))),
            &I::Publish,
            1,
            at(0),
        ));
        assert_eq!(
            (ok.next.state, ok.via.clone(), ok.next.version),
            (S::Published, vec![S::Validating], 2)
        );
        let bad = changed(decide(
            &sku(),
            Some(&draft(def("", 30))),
            &I::Publish,
            1,
            at(0),
        ));
        assert_eq!(bad.next.state, S::Rejected);
        let bad = changed(decide(
            &sku(),
            Some(&draft(def("Pro", 0))),
            &I::Publish,
            1,
            at(0),
        ));
        assert_eq!(bad.next.state, S::Rejected);
    }

    #[test]
    fn versions_are_checked_on_every_command() {
        let p = draft(def("Pro", 30));
        assert_eq!(
            refused(decide(&sku(), Some(&p), &I::Publish, 7, at(0))),
            Rejection::ConcurrentUpdate {
                expected: 7,
                actual: 1
            }
        );
        assert_eq!(
            refused(decide(&sku(), None, &I::Publish, 0, at(0))).code(),
            "unknown_product"
        );
    }

    #[test]
    fn prices_change_now_or_later_and_products_retire() {
        let p = changed(decide(
            &sku(),
            Some(&draft(def("Pro", 30))),
            &I::Publish,
            1,
            at(0),
        ))
        .next;
        let later = changed(decide(
            &sku(),
            Some(&p),
            &I::ChangePrice {
                price: 1200,
                effective_at: Some(at(DAY)),
            },
            2,
            at(0),
        ));
        assert_eq!(
            (later.next.state, later.next.price),
            (S::PriceChangePending, 1000)
        );
        assert_eq!(
            set_at(&later, TimerKind::PriceChangeEffective),
            Some(at(DAY))
        );
        let now = changed(decide(
            &sku(),
            Some(&later.next),
            &I::PriceEffective,
            0,
            at(DAY),
        ));
        assert_eq!((now.next.state, now.next.price), (S::Published, 1200));
        let dep = changed(decide(&sku(), Some(&now.next), &I::Deprecate, 4, at(DAY))).next;
        refused(decide(
            &sku(),
            Some(&dep),
            &I::ChangePrice {
                price: 1,
                effective_at: None,
            },
            5,
            at(DAY),
        ));
        assert_eq!(
            changed(decide(&sku(), Some(&dep), &I::Retire, 5, at(DAY)))
                .next
                .state,
            S::Retired
        );
    }
}
