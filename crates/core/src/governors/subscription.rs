//! The subscription governor: the contract and its periods.
//!
//! Without a trial the subscription is `incomplete` until its first charge is paid; with one it is
//! `trialing` until the trial ends. Then it renews period by period, falls `past_due` when a charge
//! fails, passes through `plan_change_pending` while a plan change's charge is unpaid, and ends
//! `cancelled` (or `expired`, when the first charge was never paid).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::ids::{Sku, SubscriptionId};
use crate::money::Currency;
use crate::timers::{add, days, TimerCommand, TimerKind};

governor_states! {
    /// The nine subscription states of SPEC 2.2.
    SubscriptionState for GovernorKind::Subscription, table TABLE;
    /// Subscribed; the first charge is not paid yet.
    Incomplete => "incomplete",
    /// In a free trial.
    Trialing => "trialing",
    /// Paid and running.
    Active => "active",
    /// A plan change waits for its charge to be paid.
    PlanChangePending => "plan_change_pending",
    /// A charge failed; retries run.
    PastDue => "past_due",
    /// An operator suspended it.
    Suspended => "suspended",
    /// Ends at the end of the paid period.
    PendingCancellation => "pending_cancellation",
    /// Ended.
    Cancelled => "cancelled",
    /// Ended before it was ever paid.
    Expired => "expired",
}

use SubscriptionState as S;

const TABLE: &[Transition<S>] = &[
    row(None, S::Incomplete, "customer_subscribes"),
    row(None, S::Trialing, "customer_subscribes (trial)"),
    row(Some(S::Cancelled), S::Incomplete, "customer_subscribes"),
    row(
        Some(S::Cancelled),
        S::Trialing,
        "customer_subscribes (trial)",
    ),
    row(Some(S::Expired), S::Incomplete, "customer_subscribes"),
    row(Some(S::Expired), S::Trialing, "customer_subscribes (trial)"),
    row(Some(S::Incomplete), S::Active, "payment_processed"),
    row(Some(S::Trialing), S::Active, "trial_end"),
    row(
        Some(S::Trialing),
        S::Trialing,
        "customer_upgrades (during trial)",
    ),
    row(
        Some(S::Active),
        S::Active,
        "renewal_due, payment_processed, customer_upgrades (nothing to pay)",
    ),
    row(Some(S::Active), S::PlanChangePending, "customer_upgrades"),
    row(
        Some(S::PlanChangePending),
        S::PlanChangePending,
        "customer_upgrades (later plan change wins)",
    ),
    row(Some(S::PlanChangePending), S::Active, "payment_processed"),
    row(Some(S::Active), S::PastDue, "payment_failed"),
    row(Some(S::PastDue), S::Active, "payment_processed"),
    row(Some(S::Active), S::Suspended, "manual_suspension"),
    row(Some(S::PastDue), S::Suspended, "manual_suspension"),
    row(
        Some(S::PlanChangePending),
        S::Suspended,
        "manual_suspension",
    ),
    row(Some(S::Trialing), S::Suspended, "manual_suspension"),
    row(Some(S::Suspended), S::Active, "customer_reinstated"),
    row(
        Some(S::Suspended),
        S::PastDue,
        "customer_reinstated (still unpaid)",
    ),
    row(
        Some(S::Suspended),
        S::Trialing,
        "customer_reinstated (in trial)",
    ),
    row(
        Some(S::Active),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::PastDue),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::PlanChangePending),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::Trialing),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::PendingCancellation),
        S::Active,
        "cancellation_reverted",
    ),
    row(
        Some(S::PendingCancellation),
        S::Trialing,
        "cancellation_reverted (in trial)",
    ),
    row(
        Some(S::PendingCancellation),
        S::Cancelled,
        "period_end, renewal_due",
    ),
    row(Some(S::Incomplete), S::Cancelled, "customer_cancels"),
    row(Some(S::Trialing), S::Cancelled, "customer_cancels now"),
    row(
        Some(S::Active),
        S::Cancelled,
        "customer_cancels now, written off",
    ),
    row(
        Some(S::PastDue),
        S::Cancelled,
        "customer_cancels now, written off",
    ),
    row(
        Some(S::PlanChangePending),
        S::Cancelled,
        "customer_cancels now, written off",
    ),
    row(
        Some(S::Suspended),
        S::Cancelled,
        "suspension_refund 72 h, customer_cancels, written off",
    ),
    row(Some(S::Incomplete), S::Expired, "written off"),
    row(Some(S::Suspended), S::Suspended, "payment_processed"),
    row(
        Some(S::PendingCancellation),
        S::PendingCancellation,
        "payment_processed",
    ),
];

/// A plan the subscription moves to once its charge is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPlan {
    /// The SKU.
    pub sku: Sku,
    /// Its price per period.
    pub price: i64,
}

/// The subscription record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The state.
    pub state: SubscriptionState,
    /// Its id; renewals must name it.
    pub subscription_id: SubscriptionId,
    /// The plan in force.
    pub sku: Sku,
    /// The plan's price per period, in minor units.
    pub price: i64,
    /// Currency of the price.
    pub currency: Currency,
    /// Period length in days.
    pub period_days: u32,
    /// Start of the current period (or of the trial).
    pub period_start: Timestamp,
    /// End of the current period (or of the trial), exclusive.
    pub period_end: Timestamp,
    /// End of the trial, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_end: Option<Timestamp>,
    /// Access is paid for until here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_through: Option<Timestamp>,
    /// A plan change awaiting payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingPlan>,
    /// `occurred_at` of the last plan change applied, for last-write-wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_changed_at: Option<Timestamp>,
    /// The state a suspension interrupted, restored on reinstatement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_from: Option<SubscriptionState>,
    /// The marketplace selling it, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace: Option<crate::input::MarketplaceRef>,
}

impl Record for Subscription {
    type State = SubscriptionState;
    fn state(&self) -> S {
        self.state
    }
}

impl Subscription {
    /// The plan most recently decided: the pending one if a change waits for payment.
    pub fn current_sku(&self) -> &Sku {
        self.pending.as_ref().map_or(&self.sku, |p| &p.sku)
    }

    /// Whether the subscription has ended.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, S::Cancelled | S::Expired)
    }
}

/// What a subscription starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionTerms {
    /// Its id.
    pub subscription_id: SubscriptionId,
    /// The SKU.
    pub sku: Sku,
    /// Price per period.
    pub price: i64,
    /// Currency.
    pub currency: Currency,
    /// Period length in days.
    pub period_days: u32,
    /// Trial length in days (0: none).
    pub trial_days: u32,
    /// The marketplace selling it, if one does.
    pub marketplace: Option<crate::input::MarketplaceRef>,
}

/// What the subscription governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionInput {
    /// Subscribe.
    Start(SubscriptionTerms),
    /// The trial timer fired.
    TrialEnded,
    /// The open charge is paid.
    PaymentSettled,
    /// A charge failed.
    PaymentMissed,
    /// Change plan; `awaits_payment` when a charge must be paid first; `at` is the event's
    /// `occurred_at`, kept for last-write-wins.
    ChangePlan {
        /// The new plan.
        sku: Sku,
        /// Its price.
        price: i64,
        /// Whether a charge must be paid first.
        awaits_payment: bool,
        /// When the change was made at the source.
        at: Timestamp,
    },
    /// An operator suspends.
    Suspend,
    /// An operator lifts the suspension.
    Reinstate,
    /// The customer cancels.
    Cancel {
        /// At period end rather than now.
        at_period_end: bool,
    },
    /// A cancellation at period end is taken back.
    RevertCancellation,
    /// The next period is due; `price` is the catalog's price now.
    Renew {
        /// The subscription named by the event.
        subscription_id: SubscriptionId,
        /// The price of the next period.
        price: i64,
    },
    /// The subscription ends (period over, written off, suspension not lifted in time).
    End {
        /// Why.
        reason: String,
    },
}

impl SubscriptionInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::TrialEnded => "trial_ended",
            Self::PaymentSettled => "payment_settled",
            Self::PaymentMissed => "payment_missed",
            Self::ChangePlan { .. } => "change_plan",
            Self::Suspend => "suspend",
            Self::Reinstate => "reinstate",
            Self::Cancel { .. } => "cancel",
            Self::RevertCancellation => "revert_cancellation",
            Self::Renew { .. } => "renew",
            Self::End { .. } => "end",
        }
    }
}

/// Decides one input. `current` is `None` before the first subscription.
pub fn decide(
    current: Option<&Subscription>,
    input: &SubscriptionInput,
    now: Timestamp,
) -> Decided<Subscription> {
    use SubscriptionInput as I;
    let state = current.map(|s| s.state);
    let reject = || Rejection::invalid(state, input.name());
    let changed = |d: Decision<Subscription>| Ok(Verdict::Changed(d));

    let s = match (current, input) {
        (None, I::Start(terms)) => return changed(start(terms, now)),
        (Some(s), I::Start(terms)) if s.is_ended() => return changed(start(terms, now)),
        (Some(s), _) => s,
        (None, _) => return Err(reject()),
    };
    let with = |state: S| Subscription { state, ..s.clone() };

    match input {
        I::Start(_) => Err(reject()),
        I::TrialEnded if s.state == S::Trialing => {
            let next = next_period(&with(S::Active), s.price);
            changed(Decision::to(
                next,
                "trial over: first period starts and is charged",
            ))
        }
        I::PaymentSettled if s.is_ended() => {
            Ok(Verdict::NotApplicable("subscription has ended".into()))
        }
        I::PaymentSettled => {
            let mut next = s.clone();
            next.paid_through = Some(s.period_end);
            let message = match s.state {
                S::Incomplete | S::PastDue => {
                    next.state = S::Active;
                    "paid: active".to_owned()
                }
                S::PlanChangePending => {
                    next.state = S::Active;
                    if let Some(plan) = next.pending.take() {
                        next.sku = plan.sku;
                        next.price = plan.price;
                    }
                    format!("plan change to {} paid", next.sku)
                }
                S::Suspended => {
                    // Paid while suspended: reinstatement returns to a paid subscription.
                    if next.suspended_from == Some(S::PastDue) {
                        next.suspended_from = Some(S::Active);
                    }
                    format!("paid through {} (still suspended)", s.period_end)
                }
                _ => format!("paid through {}", s.period_end),
            };
            changed(Decision::to(next, message))
        }
        I::PaymentMissed => match s.state {
            S::Active => changed(Decision::to(with(S::PastDue), "charge failed: past due")),
            _ => Ok(Verdict::NotApplicable(
                format!("already {}", s.state.as_str()).into(),
            )),
        },
        I::ChangePlan {
            sku,
            price,
            awaits_payment,
            at,
        } => match s.state {
            S::Trialing => {
                let next = Subscription {
                    sku: sku.clone(),
                    price: *price,
                    plan_changed_at: Some(*at),
                    ..s.clone()
                };
                changed(Decision::to(
                    next,
                    format!("plan changed to {sku} during the trial"),
                ))
            }
            S::Active | S::PlanChangePending => {
                let mut next = s.clone();
                next.plan_changed_at = Some(*at);
                if *awaits_payment {
                    next.state = S::PlanChangePending;
                    next.pending = Some(PendingPlan {
                        sku: sku.clone(),
                        price: *price,
                    });
                    changed(Decision::to(
                        next,
                        format!("change to {sku} waits for payment"),
                    ))
                } else {
                    next.state = S::Active;
                    next.pending = None;
                    next.sku = sku.clone();
                    next.price = *price;
                    changed(Decision::to(next, format!("plan changed to {sku}")))
                }
            }
            _ => Err(reject()),
        },
        I::Suspend => match s.state {
            S::Active | S::PastDue | S::PlanChangePending | S::Trialing => {
                let next = Subscription {
                    suspended_from: Some(s.state),
                    pending: None,
                    ..with(S::Suspended)
                };
                changed(Decision::to(next, "suspended"))
            }
            _ => Err(reject()),
        },
        I::Reinstate if s.state == S::Suspended => {
            let back = match s.suspended_from {
                Some(S::PastDue) => S::PastDue,
                Some(S::Trialing) => S::Trialing,
                _ => S::Active,
            };
            changed(Decision::to(
                Subscription {
                    suspended_from: None,
                    ..with(back)
                },
                format!("reinstated: {}", back.as_str()),
            ))
        }
        I::Cancel { at_period_end } => match s.state {
            S::Active | S::PastDue | S::PlanChangePending | S::Trialing if *at_period_end => {
                let ends = s.period_end;
                changed(
                    Decision::to(
                        Subscription {
                            pending: None,
                            ..with(S::PendingCancellation)
                        },
                        format!("ends at {ends}"),
                    )
                    .timer(TimerCommand::Set {
                        kind: TimerKind::PeriodEnd,
                        due_at: ends,
                    })
                    .timer(TimerCommand::Cancel {
                        kind: TimerKind::TrialEnd,
                    }),
                )
            }
            S::Incomplete
            | S::Active
            | S::PastDue
            | S::PlanChangePending
            | S::Trialing
            | S::Suspended => changed(end(s, S::Cancelled, "cancelled by the customer")),
            _ => Err(reject()),
        },
        I::RevertCancellation if s.state == S::PendingCancellation => {
            let back = if s.trial_end.is_some_and(|t| t > now) {
                S::Trialing
            } else {
                S::Active
            };
            let mut d =
                Decision::to(with(back), "cancellation reverted").timer(TimerCommand::Cancel {
                    kind: TimerKind::PeriodEnd,
                });
            if let (S::Trialing, Some(trial_end)) = (back, s.trial_end) {
                d = d.timer(TimerCommand::Set {
                    kind: TimerKind::TrialEnd,
                    due_at: trial_end,
                });
            }
            changed(d)
        }
        I::Renew {
            subscription_id,
            price,
        } => {
            if subscription_id != &s.subscription_id {
                return Err(Rejection::UnknownSubscription {
                    current: s.subscription_id.to_string(),
                    claimed: subscription_id.to_string(),
                });
            }
            match s.state {
                S::Active => {
                    let next = next_period(s, *price);
                    let message = format!("renewed: {} to {}", next.period_start, next.period_end);
                    changed(Decision::to(next, message))
                }
                S::PendingCancellation => changed(end(s, S::Cancelled, "period over: not renewed")),
                _ => Err(reject()),
            }
        }
        I::End { reason } => match s.state {
            S::Cancelled | S::Expired => Ok(Verdict::NotApplicable("already ended".into())),
            S::Incomplete => changed(end(s, S::Expired, reason)),
            _ => changed(end(s, S::Cancelled, reason)),
        },
        _ => Err(reject()),
    }
}

fn start(terms: &SubscriptionTerms, now: Timestamp) -> Decision<Subscription> {
    let trial = terms.trial_days > 0;
    let length = days(i64::from(if trial {
        terms.trial_days
    } else {
        terms.period_days
    }));
    let period_end = add(now, length);
    let next = Subscription {
        state: if trial { S::Trialing } else { S::Incomplete },
        subscription_id: terms.subscription_id.clone(),
        sku: terms.sku.clone(),
        price: terms.price,
        currency: terms.currency.clone(),
        period_days: terms.period_days,
        period_start: now,
        period_end,
        trial_end: trial.then_some(period_end),
        paid_through: None,
        pending: None,
        plan_changed_at: None,
        suspended_from: None,
        marketplace: terms.marketplace.clone(),
    };
    if trial {
        Decision::to(
            next,
            format!("trial of {} days until {period_end}", terms.trial_days),
        )
        .timer(TimerCommand::Set {
            kind: TimerKind::TrialEnd,
            due_at: period_end,
        })
    } else {
        Decision::to(next, "subscribed: first period charged")
    }
}

/// The next period follows the current one without a gap, whenever the renewal arrives.
fn next_period(s: &Subscription, price: i64) -> Subscription {
    let start = s.period_end;
    Subscription {
        period_start: start,
        period_end: add(start, days(i64::from(s.period_days))),
        price,
        ..s.clone()
    }
}

fn end(s: &Subscription, state: S, why: &str) -> Decision<Subscription> {
    let next = Subscription {
        state,
        pending: None,
        suspended_from: None,
        ..s.clone()
    };
    Decision::to(next, format!("{}: {why}", state.as_str()))
        .effect(EffectKind::notify("subscription_ended", why.to_owned()))
        .timer(TimerCommand::Cancel {
            kind: TimerKind::PeriodEnd,
        })
        .timer(TimerCommand::Cancel {
            kind: TimerKind::TrialEnd,
        })
}
