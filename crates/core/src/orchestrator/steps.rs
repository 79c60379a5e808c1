//! What each governor is asked, event by event. The route (routes.rs) fixes who decides and in
//! which order; this file fixes what each is asked, reading the draft so that every governor sees
//! the decisions made before it.

use crate::customer::Customer;
use crate::governor::{GovernorKind as G, Rejection};
use crate::governors::billing::{BillingInput, BillingState, InvoiceReason};
use crate::governors::compliance::ComplianceInput;
use crate::governors::customer_account::AccountInput;
use crate::governors::entitlement::{EntitlementInput, SuspensionCause};
use crate::governors::multi_tenant::{TenantInput, TenantState};
use crate::governors::product_catalog::{Catalog, Product};
use crate::governors::quota_sla::{percent, QuotaInput};
use crate::governors::subscription::{SubscriptionInput, SubscriptionState, SubscriptionTerms};
use crate::ids::{Sku, SubscriptionId};
use crate::input::{
    CustomerEvent, DisputeOutcome, EventKind, FlagSeverity, InputError, FRAUD_DECLINE_REASONS,
    HARD_DECLINE_REASONS,
};
use crate::money::{prorate, share_half_up, ProrationQuote};
use crate::timers::TimerKind;

use super::run::Run;
use super::{
    conflicts, route, timer_route, ConflictKind, ConflictRecord, EventContext, EventResult,
    Resolution,
};

/// Decides one customer event against the customer's state (`None`: a customer not seen before).
///
/// Pure: the same state, event, catalog and context always give the same result. Invalid input is
/// an `Err` and decides nothing.
pub fn decide_event(
    customer: Option<&Customer>,
    event: &CustomerEvent,
    catalog: &dyn Catalog,
    ctx: &EventContext,
) -> Result<EventResult, InputError> {
    event.validate()?;
    let fresh;
    let before = match customer {
        Some(c) => c,
        None => {
            fresh = Customer::new(event.customer_id.clone());
            &fresh
        }
    };
    let mut run = Run::new(ctx, before);
    let at = event.occurred_at.unwrap_or(ctx.now);

    if let EventKind::TimerFired { timer, due_at } = &event.kind {
        return Ok(fire_timer(run, *timer, *due_at));
    }
    let plan = Plan::prepare(&mut run, event, catalog, at);
    for governor in route(event.kind.name()) {
        if run.lost || run.review.is_some() {
            break;
        }
        step(&mut run, &event.kind, &plan, *governor);
    }
    if matches!(
        event.kind,
        EventKind::UsageExceedsQuota { .. } | EventKind::ManualSuspension { .. }
    ) {
        conflicts::settle_throttling(&mut run);
    }
    Ok(run.finish())
}

/// What is worked out once per event before the governors decide.
#[derive(Debug, Default)]
struct Plan {
    /// The product subscribed to or changed to, or why it cannot be.
    product: Option<Result<Product, Rejection>>,
    /// A plan change's money lines and whether it replaces an open charge.
    change: Option<PlanChange>,
    /// A fraud suspension (SPEC 2.3: its billing conflict is compensated).
    fraud: bool,
}

#[derive(Debug)]
struct PlanChange {
    quote: Option<ProrationQuote>,
    replaces_open: bool,
    at: jiff::Timestamp,
}

impl Plan {
    fn prepare(
        run: &mut Run<'_>,
        event: &CustomerEvent,
        catalog: &dyn Catalog,
        at: jiff::Timestamp,
    ) -> Self {
        let mut plan = Plan::default();
        match &event.kind {
            EventKind::CustomerSubscribes { sku, .. } => plan.product = Some(on_sale(catalog, sku)),
            EventKind::CustomerUpgrades { old_sku, new_sku } => {
                let product = on_sale(catalog, new_sku);
                if let (Ok(new), Some(sub)) = (&product, run.draft.subscription.clone()) {
                    plan.change = plan_change(run, &sub, old_sku, new, at);
                }
                plan.product = Some(product);
            }
            EventKind::ManualSuspension { reason, .. } => {
                plan.fraud = EventKind::is_fraud_reason(reason);
                if plan.fraud {
                    fraud_against_billing(run);
                }
            }
            _ => {}
        }
        plan
    }
}

fn on_sale(catalog: &dyn Catalog, sku: &Sku) -> Result<Product, Rejection> {
    match catalog.product(sku) {
        None => Err(Rejection::UnknownProduct {
            sku: sku.to_string(),
        }),
        Some(p) if !p.state.on_sale() => Err(Rejection::ProductNotPublished {
            sku: sku.to_string(),
            state: p.state.as_str().to_owned(),
        }),
        Some(p) => Ok(p.clone()),
    }
}

/// Works out a plan change, settling a race with an earlier change by last-write-wins (SPEC 2.3).
fn plan_change(
    run: &mut Run<'_>,
    sub: &crate::governors::subscription::Subscription,
    old_sku: &Sku,
    new: &Product,
    at: jiff::Timestamp,
) -> Option<PlanChange> {
    if new.currency != sub.currency {
        return None; // refused in the steps, with the currency named
    }
    let current = sub.current_sku();
    if old_sku != current {
        let Some(changed_at) = sub.plan_changed_at else {
            return None; // not a race: the sender is wrong about the plan; refused in the steps
        };
        let governors = vec![G::Entitlement, G::Billing];
        let version = run.before.version;
        if at > changed_at {
            run.conflicts.push(ConflictRecord {
                kind: ConflictKind::ConcurrentPlanChange,
                governors,
                resolution: Resolution::LastWriteWins,
                version,
                detail: format!(
                    "change {old_sku} -> {} at {at} is later than the change to {current} at {changed_at}: it wins",
                    new.sku
                ),
            });
        } else if at < changed_at {
            run.conflicts.push(ConflictRecord {
                kind: ConflictKind::ConcurrentPlanChange,
                governors,
                resolution: Resolution::LastWriteWins,
                version,
                detail: format!(
                    "change {old_sku} -> {} at {at} is earlier than the change to {current} at {changed_at}: it loses, its charge is not made",
                    new.sku
                ),
            });
            run.lost = true;
            for governor in route("customer_upgrades") {
                run.skip(*governor, "lost a plan-change race to a later change");
            }
            run.mark_conflict(G::Entitlement);
            run.mark_conflict(G::Billing);
            return None;
        } else {
            let why = format!(
                "two plan changes at the same instant {at} ({current} and {}): no write is later",
                new.sku
            );
            run.conflicts.push(ConflictRecord {
                kind: ConflictKind::ConcurrentPlanChange,
                governors,
                resolution: Resolution::ManualReview,
                version,
                detail: why.clone(),
            });
            run.review = Some(why);
            return None;
        }
    }
    // A change while an earlier change's charge is open replaces that charge: the proration runs
    // from the plan actually paid for.
    let replaces_open = sub.pending.is_some();
    let quote = if sub.state == SubscriptionState::Trialing {
        None
    } else {
        prorate(
            sub.price,
            new.price,
            &sub.currency,
            sub.period_start,
            sub.period_end,
            at,
        )
        .ok()
    };
    Some(PlanChange {
        quote,
        replaces_open,
        at,
    })
}

/// A fraud suspension while a charge is in flight is compensated by voiding it; while a refund
/// or dispute is open no rule applies and the event is parked (SPEC 2.3).
fn fraud_against_billing(run: &mut Run<'_>) {
    let billing = &run.draft.billing;
    let version = run.before.version;
    if billing.charge_in_flight() {
        run.compensated = true;
        run.conflicts.push(ConflictRecord {
            kind: ConflictKind::ChargeDuringFraudSuspension,
            governors: vec![G::Billing, G::Compliance],
            resolution: Resolution::CompensatingTransaction,
            version,
            detail: format!(
                "charge of {} on {} in flight during a fraud suspension: voided",
                billing.amount_due,
                billing.invoice_id.as_deref().unwrap_or("the open invoice")
            ),
        });
    } else if matches!(
        billing.state,
        BillingState::Refunding | BillingState::Disputed
    ) {
        let why = format!(
            "fraud suspension while billing is {}: nothing can be voided",
            billing.state.as_str()
        );
        run.conflicts.push(ConflictRecord {
            kind: ConflictKind::ChargeDuringFraudSuspension,
            governors: vec![G::Billing, G::Compliance],
            resolution: Resolution::ManualReview,
            version,
            detail: why.clone(),
        });
        run.review = Some(why);
    }
}

/// Asks one governor about one event.
fn step(run: &mut Run<'_>, kind: &EventKind, plan: &Plan, governor: G) {
    use EventKind as E;
    match kind {
        E::CustomerSubscribes { sku, marketplace } => {
            subscribe(run, sku, marketplace.as_ref(), plan, governor)
        }
        E::CustomerUpgrades { old_sku, new_sku } => upgrade(run, old_sku, new_sku, plan, governor),
        E::PaymentProcessed {
            amount,
            currency,
            payment_id,
        } => match governor {
            G::Billing => run.billing(BillingInput::PaymentProcessed {
                amount: *amount,
                currency: currency.clone(),
                payment_id: payment_id.clone(),
            }),
            _ if !settled(run) => run.skip(governor, "payment does not settle an open invoice"),
            G::Entitlement if run.draft.entitlement.is_some() => {
                run.entitlement(EntitlementInput::PaymentSettled)
            }
            G::CustomerAccount => run.account(AccountInput::PaymentSettled),
            G::Subscription if run.draft.subscription.is_some() => {
                run.subscription(SubscriptionInput::PaymentSettled)
            }
            _ => run.skip(governor, "no record to settle"),
        },
        E::PaymentFailed {
            reason,
            payment_id,
            hard_decline,
        } => match governor {
            G::Billing => run.billing(BillingInput::PaymentFailed {
                payment_id: payment_id.clone(),
                hard_decline: *hard_decline || HARD_DECLINE_REASONS.contains(&reason.as_str()),
                reason: reason.clone(),
            }),
            G::Compliance if FRAUD_DECLINE_REASONS.contains(&reason.as_str()) => {
                run.compliance(ComplianceInput::Flag {
                    reason: format!("payment declined: {reason}"),
                    severity: FlagSeverity::Review,
                })
            }
            _ if run.draft.billing == run.before.billing => {
                run.skip(governor, "billing unchanged: nothing follows")
            }
            G::Entitlement if run.draft.entitlement.is_some() => {
                let paid_access_until =
                    run.draft.subscription.as_ref().and_then(|s| s.paid_through);
                run.entitlement(EntitlementInput::PaymentMissed { paid_access_until })
            }
            G::CustomerAccount if run.draft.billing.state == BillingState::Collections => {
                run.account(AccountInput::PaymentDelinquent)
            }
            G::Subscription if run.draft.subscription.is_some() => {
                run.subscription(SubscriptionInput::PaymentMissed)
            }
            _ => run.skip(governor, "a declined charge changes nothing here"),
        },
        E::UsageExceedsQuota {
            resource,
            current_usage,
            limit,
        } => match governor {
            G::QuotaSla => run.quota(QuotaInput::Report {
                resource: resource.clone(),
                current: *current_usage,
                limit: *limit,
            }),
            G::MultiTenant => {
                if run.draft.tenant.state == TenantState::Decommissioned {
                    if run
                        .draft
                        .subscription
                        .as_ref()
                        .is_some_and(|s| !s.is_ended())
                    {
                        run.tenant(TenantInput::Reprovision);
                    } else {
                        run.skip(governor, "slot decommissioned: no subscription runs");
                    }
                } else {
                    run.tenant(TenantInput::Usage {
                        percent: percent(*current_usage, *limit),
                        quota_throttles: run.draft.quota.state.throttles(),
                    })
                }
            }
            G::Billing => run.skip(
                governor,
                "usage is reported to the marketplace, not invoiced here",
            ),
            G::Entitlement => run.skip(governor, "access stays; quota enforcement throttles usage"),
            _ => run.skip(governor, "usage noted"),
        },
        E::CustomerCancels { at_period_end, .. } => match governor {
            G::Subscription => run.subscription(SubscriptionInput::Cancel {
                at_period_end: *at_period_end,
            }),
            // Access ends with the subscription: at once when it ended at once (one never paid).
            G::Entitlement => {
                let ended = run
                    .draft
                    .subscription
                    .as_ref()
                    .is_some_and(|s| s.is_ended());
                run.entitlement(EntitlementInput::Cancel {
                    at_period_end: *at_period_end && !ended,
                })
            }
            G::Billing => {
                let ended = run
                    .draft
                    .subscription
                    .as_ref()
                    .is_some_and(|s| s.is_ended());
                if ended && run.draft.billing.charge_in_flight() {
                    run.billing(BillingInput::Void)
                } else {
                    run.skip(governor, "paid time is not refunded on cancellation")
                }
            }
            G::Compliance => run.skip(governor, "records are retained"),
            _ => run.skip(governor, "the account stays open"),
        },
        E::ManualSuspension { reason, .. } => match governor {
            G::Entitlement => run.entitlement(EntitlementInput::Suspend {
                cause: if plan.fraud {
                    SuspensionCause::Fraud
                } else {
                    SuspensionCause::Manual
                },
            }),
            G::Billing if plan.fraud && run.compensated => {
                run.billing(BillingInput::Void);
                run.mark_conflict(G::Billing);
            }
            G::Billing => run.skip(governor, "billing continues during a suspension"),
            G::Subscription => run.subscription(SubscriptionInput::Suspend),
            G::CustomerAccount => run.account(AccountInput::Suspend {
                reason: reason.clone(),
            }),
            G::QuotaSla => run.quota(QuotaInput::Suspend),
            G::Compliance if plan.fraud => {
                run.compliance(ComplianceInput::Flag {
                    reason: reason.clone(),
                    severity: FlagSeverity::Investigate,
                });
                if run.compensated {
                    run.mark_conflict(G::Compliance);
                }
            }
            G::Compliance => run.skip(governor, "not a fraud suspension"),
            _ => run.tenant(TenantInput::Suspend),
        },
        E::RenewalDue { subscription_id } => renew(run, subscription_id, governor),
        E::EntitlementApproved { .. } => run.entitlement(EntitlementInput::Approve),
        E::EntitlementRejected { reason, .. } => match governor {
            G::Entitlement => run.entitlement(EntitlementInput::Reject {
                reason: reason.clone(),
            }),
            G::Subscription
                if run
                    .draft
                    .subscription
                    .as_ref()
                    .is_some_and(|s| !s.is_ended()) =>
            {
                run.subscription(SubscriptionInput::End {
                    reason: "entitlement rejected".into(),
                })
            }
            G::Billing if run.draft.billing.charge_in_flight() => run.billing(BillingInput::Void),
            _ => run.skip(governor, "nothing to undo"),
        },
        E::AccountVerified {} => run.account(AccountInput::Verified),
        E::AccountVerificationFailed { reason } => run.account(AccountInput::VerificationFailed {
            reason: reason.clone(),
        }),
        E::ComplianceCleared {} => run.compliance(ComplianceInput::Clear),
        E::ComplianceFlagged { reason, severity } => run.compliance(ComplianceInput::Flag {
            reason: reason.clone(),
            severity: *severity,
        }),
        E::CustomerReinstated { .. } => match governor {
            G::Entitlement => run.entitlement(EntitlementInput::Reinstate),
            G::Subscription => run.subscription(SubscriptionInput::Reinstate),
            G::CustomerAccount => run.account(AccountInput::Reinstate),
            G::QuotaSla => run.quota(QuotaInput::Reinstate),
            _ => run.tenant(TenantInput::Reinstate),
        },
        E::CancellationReverted {} => match governor {
            G::Subscription => run.subscription(SubscriptionInput::RevertCancellation),
            _ => run.entitlement(EntitlementInput::RevertCancellation),
        },
        E::PaymentDisputed { payment_id, .. } => run.billing(BillingInput::Disputed {
            payment_id: payment_id.clone(),
        }),
        E::DisputeResolved {
            payment_id,
            outcome,
        } => match governor {
            G::Billing => run.billing(BillingInput::DisputeResolved {
                payment_id: payment_id.clone(),
                won: *outcome == DisputeOutcome::Won,
            }),
            _ if *outcome == DisputeOutcome::Lost => run.account(AccountInput::PaymentDelinquent),
            _ => run.skip(governor, "dispute won: the account is unaffected"),
        },
        E::AccountLocked { reason } => run.account(AccountInput::Lock {
            reason: reason.clone(),
        }),
        E::AccountUnlocked {} => run.account(AccountInput::Unlock),
        E::AccountClosed { reason } => {
            let why = reason.clone().unwrap_or_else(|| "account closed".into());
            match governor {
                G::CustomerAccount => run.account(AccountInput::Close { reason: why }),
                G::Subscription if run.draft.subscription.is_some() => {
                    run.subscription(SubscriptionInput::End { reason: why })
                }
                G::Entitlement if run.draft.entitlement.is_some() => {
                    run.entitlement(EntitlementInput::End { reason: why })
                }
                G::Billing if run.draft.billing.charge_in_flight() => {
                    run.billing(BillingInput::Void)
                }
                G::MultiTenant => run.tenant(TenantInput::Decommission),
                _ => run.skip(governor, "nothing to end"),
            }
        }
        E::TenantContentionDetected {} => run.tenant(TenantInput::ContentionDetected),
        E::TenantContentionCleared {} => run.tenant(TenantInput::ContentionCleared),
        E::SlaViolated { metric } => run.quota(QuotaInput::SlaViolated {
            metric: metric.clone(),
        }),
        E::RefundProcessed {
            amount, currency, ..
        } => run.billing(BillingInput::RefundProcessed {
            amount: *amount,
            currency: currency.clone(),
        }),
        E::TimerFired { .. } => run.skip(governor, "timers are routed by kind"),
    }
}

/// Whether the billing decision of this event settled an open invoice.
fn settled(run: &Run<'_>) -> bool {
    run.before.billing.owes() && run.draft.billing.state == BillingState::Current
}

fn subscribe(
    run: &mut Run<'_>,
    sku: &Sku,
    marketplace: Option<&crate::input::MarketplaceRef>,
    plan: &Plan,
    governor: G,
) {
    let product = match &plan.product {
        Some(Ok(p)) => p,
        Some(Err(rejection)) if governor != G::Compliance && governor != G::CustomerAccount => {
            return run.refuse(governor, rejection.clone());
        }
        _ => {
            return match governor {
                G::Compliance => run.compliance(ComplianceInput::Subscribe),
                _ => run.account(AccountInput::Subscribe),
            }
        }
    };
    match governor {
        G::Compliance => run.compliance(ComplianceInput::Subscribe),
        G::CustomerAccount => run.account(AccountInput::Subscribe),
        G::Subscription => {
            let n = run.draft.subscriptions_started + 1;
            let subscription_id = SubscriptionId::numbered(n);
            run.draft.subscriptions_started = n;
            run.subscription(SubscriptionInput::Start(SubscriptionTerms {
                subscription_id,
                sku: sku.clone(),
                price: product.price,
                currency: product.currency.clone(),
                period_days: product.billing_period_days,
                trial_days: product.trial_days,
                marketplace: marketplace.cloned(),
            }))
        }
        G::Entitlement => {
            // Decided after compliance and the account: their answers can hold access back.
            let held_by = if run.draft.compliance.holds_access() {
                Some(format!(
                    "compliance is {}",
                    run.draft.compliance.state.as_str()
                ))
            } else if run.draft.account.holds_access() {
                Some(format!("account is {}", run.draft.account.state.as_str()))
            } else {
                None
            };
            run.entitlement(EntitlementInput::Grant {
                sku: sku.clone(),
                requires_approval: product.requires_approval,
                held_by,
            })
        }
        // A written-off debt bars new business, trial or not (billing refuses the invoice otherwise).
        G::Billing if run.draft.billing.state == BillingState::WrittenOff => run.refuse(
            governor,
            Rejection::invalid(Some(BillingState::WrittenOff), "customer_subscribes"),
        ),
        G::Billing if product.trial_days > 0 => {
            run.skip(governor, "trial: the first charge is made when it ends")
        }
        G::Billing => run.billing(BillingInput::Invoice {
            amount: product.price,
            currency: product.currency.clone(),
            reason: InvoiceReason::FirstPeriod,
            replaces_open: false,
        }),
        _ => run.quota(QuotaInput::SetLimits {
            limits: product.quotas.clone(),
            reset: true,
        }),
    }
}

fn upgrade(run: &mut Run<'_>, old_sku: &Sku, new_sku: &Sku, plan: &Plan, governor: G) {
    let product = match &plan.product {
        Some(Ok(p)) => p,
        Some(Err(rejection)) => return run.refuse(governor, rejection.clone()),
        None => {
            return run.refuse(
                governor,
                Rejection::UnknownProduct {
                    sku: new_sku.to_string(),
                },
            )
        }
    };
    let Some(sub) = run.draft.subscription.clone() else {
        return run.refuse(
            governor,
            Rejection::invalid::<SubscriptionState>(None, "customer_upgrades"),
        );
    };
    if product.currency != sub.currency {
        return run.refuse(
            governor,
            Rejection::PlanCurrencyMismatch {
                expected: sub.currency.to_string(),
                received: product.currency.to_string(),
            },
        );
    }
    let Some(change) = &plan.change else {
        return run.refuse(
            governor,
            Rejection::PlanMismatch {
                current: sub.current_sku().to_string(),
                claimed: old_sku.to_string(),
            },
        );
    };
    let net = change.quote.as_ref().map_or(0, |q| q.net);
    let awaits_payment = net > run.before.billing.credit;
    match governor {
        G::Subscription => {
            run.proration = change.quote.clone();
            run.subscription(SubscriptionInput::ChangePlan {
                sku: new_sku.clone(),
                price: product.price,
                awaits_payment,
                at: change.at,
            })
        }
        G::Billing if change.quote.is_none() => run.skip(governor, "no proration during a trial"),
        G::Billing if net == 0 && !change.replaces_open => {
            run.skip(governor, "nothing to charge or credit")
        }
        G::Billing => {
            run.billing(BillingInput::Invoice {
                amount: net,
                currency: sub.currency.clone(),
                reason: InvoiceReason::PlanChange,
                replaces_open: change.replaces_open,
            });
            if !run.conflicts.is_empty() {
                run.mark_conflict(G::Billing);
            }
        }
        G::Entitlement => {
            run.entitlement(EntitlementInput::ChangePlan {
                new_sku: new_sku.clone(),
                awaits_payment,
            });
            if !run.conflicts.is_empty() {
                run.mark_conflict(G::Entitlement);
            }
        }
        _ => run.quota(QuotaInput::SetLimits {
            limits: product.quotas.clone(),
            reset: false,
        }),
    }
}

fn renew(run: &mut Run<'_>, subscription_id: &SubscriptionId, governor: G) {
    match governor {
        G::Subscription => {
            let price = run.draft.subscription.as_ref().map_or(0, |s| s.price);
            run.subscription(SubscriptionInput::Renew {
                subscription_id: subscription_id.clone(),
                price,
            })
        }
        G::Billing => match run.draft.subscription.as_ref() {
            Some(s) if s.state == SubscriptionState::Active => run.billing(BillingInput::Invoice {
                amount: s.price,
                currency: s.currency.clone(),
                reason: InvoiceReason::Renewal,
                replaces_open: false,
            }),
            _ => run.skip(governor, "nothing to invoice"),
        },
        _ => match run.draft.subscription.as_ref().map(|s| s.state) {
            Some(SubscriptionState::Cancelled) => run.entitlement(EntitlementInput::End {
                reason: "period over: not renewed".into(),
            }),
            _ => run.skip(governor, "access continues"),
        },
    }
}

/// A stored timer came due: check it is the pending one, then ask its governors.
fn fire_timer(mut run: Run<'_>, kind: TimerKind, due_at: jiff::Timestamp) -> EventResult {
    let route = timer_route(kind);
    if run.draft.timers.get(&kind) != Some(&due_at) || route.is_empty() {
        let owner = route.first().copied().unwrap_or(G::Entitlement);
        run.refuse(
            owner,
            Rejection::TimerNotPending {
                timer: kind.name().to_owned(),
                due_at: due_at.to_string(),
            },
        );
        return run.finish();
    }
    // The firing consumes the timer; a governor may set it again.
    run.draft.timers.remove(&kind);
    for governor in route {
        timer_step(&mut run, kind, *governor);
    }
    run.finish()
}

fn timer_step(run: &mut Run<'_>, kind: TimerKind, governor: G) {
    use TimerKind as T;
    match (kind, governor) {
        (T::ApprovalEscalation, _) => run.entitlement(EntitlementInput::EscalationDue),
        (T::PaidAccessEnd, _) if run.draft.billing.owes() => {
            run.entitlement(EntitlementInput::PaidAccessEnded)
        }
        (T::PaidAccessEnd, _) => run.skip(governor, "paid meanwhile"),
        (T::PaymentRetry, _) => run.billing(BillingInput::RetryDue),
        (T::ContentionQuarantine, _) => run.tenant(TenantInput::QuarantineDue),
        (T::TrialEnd, G::Subscription) => run.subscription(SubscriptionInput::TrialEnded),
        (T::TrialEnd, _) => match run.draft.subscription.as_ref() {
            Some(s) => run.billing(BillingInput::Invoice {
                amount: s.price,
                currency: s.currency.clone(),
                reason: InvoiceReason::TrialEnd,
                replaces_open: false,
            }),
            None => run.skip(governor, "no subscription"),
        },
        (T::SuspensionRefund, G::Billing) => {
            let refund = unused_prepaid(run.before, run.ctx);
            run.billing(BillingInput::Refund {
                amount: refund,
                reason: ending(kind).into(),
            })
        }
        (T::SuspensionRefund | T::CollectionsDeadline | T::PeriodEnd, G::Entitlement) => {
            if run.draft.entitlement.is_some() {
                run.entitlement(EntitlementInput::End {
                    reason: ending(kind).into(),
                })
            } else {
                run.skip(governor, "no entitlement")
            }
        }
        (T::SuspensionRefund | T::CollectionsDeadline | T::PeriodEnd, G::Subscription) => {
            if run.draft.subscription.is_some() {
                run.subscription(SubscriptionInput::End {
                    reason: ending(kind).into(),
                })
            } else {
                run.skip(governor, "no subscription")
            }
        }
        (T::CollectionsDeadline, G::Billing) => run.billing(BillingInput::CollectionsExpired),
        (T::CollectionsDeadline, G::CustomerAccount) => {
            run.account(AccountInput::PaymentDelinquent)
        }
        (_, G::MultiTenant) => run.tenant(TenantInput::Decommission),
        _ => run.skip(governor, "nothing to do"),
    }
}

/// Why a timer ends a subscription and its access.
fn ending(kind: TimerKind) -> &'static str {
    match kind {
        TimerKind::SuspensionRefund => "suspension not lifted within 72 h",
        TimerKind::CollectionsDeadline => "written off",
        _ => "period over",
    }
}

/// The unused part of the prepaid period at `now`: the refund owed when a suspension is not
/// lifted in time (SPEC 2.2), rounded half-up like proration.
fn unused_prepaid(c: &Customer, ctx: &EventContext) -> i64 {
    let Some(sub) = c.subscription.as_ref() else {
        return 0;
    };
    let Some(paid_through) = sub.paid_through else {
        return 0;
    };
    let length = sub.period_end.as_second() - sub.period_start.as_second();
    let remaining = (paid_through.as_second().min(sub.period_end.as_second())
        - ctx.now.as_second())
    .clamp(0, length.max(0));
    share_half_up(sub.price, remaining, length).unwrap_or(0)
}
