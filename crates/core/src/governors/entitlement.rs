//! The entitlement governor: whether the customer has access to the SKU they subscribed to.
//!
//! Reads top to bottom like its diagram: granting (straight to `active`, or `pending_approval` with
//! the 24 h / 48 h / 72 h escalation), plan changes, suspension (manual, fraud, non-payment) with the
//! 72 h refund deadline, cancellation, and the end.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::ids::Sku;
use crate::timers::{add, hours, TimerCommand, TimerKind};

governor_states! {
    /// The eight entitlement states of SPEC 2.2.
    EntitlementState for GovernorKind::Entitlement, table TABLE;
    /// Waiting for an operator; escalation timers run.
    PendingApproval => "pending_approval",
    /// Waited 24 h (level 1, manager) or 48 h (level 2, director).
    Escalated => "escalated",
    /// Access granted.
    Active => "active",
    /// A plan change waits for its charge to be paid.
    PendingPlanChange => "pending_plan_change",
    /// Access withheld (manual, fraud or non-payment).
    Suspended => "suspended",
    /// Access runs to the end of the paid period, then ends.
    PendingCancellation => "pending_cancellation",
    /// Access ended.
    Cancelled => "cancelled",
    /// An operator refused access.
    Rejected => "rejected",
}

use EntitlementState as S;

/// Pending approval escalates to the manager queue after this long.
pub const ESCALATE_LEVEL1_AFTER_HOURS: i64 = 24;
/// ... to the director queue after this long.
pub const ESCALATE_LEVEL2_AFTER_HOURS: i64 = 48;
/// ... and is approved automatically after this long.
pub const AUTO_APPROVE_AFTER_HOURS: i64 = 72;
/// A manual or fraud suspension not lifted within this long cancels the entitlement with a refund.
pub const SUSPENSION_REFUND_AFTER_HOURS: i64 = 72;

const TABLE: &[Transition<S>] = &[
    row(
        None,
        S::PendingApproval,
        "customer_subscribes (approval needed or held)",
    ),
    row(None, S::Active, "customer_subscribes"),
    row(
        Some(S::Cancelled),
        S::PendingApproval,
        "customer_subscribes",
    ),
    row(Some(S::Cancelled), S::Active, "customer_subscribes"),
    row(Some(S::Rejected), S::PendingApproval, "customer_subscribes"),
    row(Some(S::Rejected), S::Active, "customer_subscribes"),
    row(
        Some(S::PendingApproval),
        S::Escalated,
        "approval_escalation 24 h",
    ),
    row(Some(S::Escalated), S::Escalated, "approval_escalation 48 h"),
    row(Some(S::Escalated), S::Active, "approval_escalation 72 h"),
    row(Some(S::PendingApproval), S::Active, "entitlement_approved"),
    row(Some(S::Escalated), S::Active, "entitlement_approved"),
    row(
        Some(S::PendingApproval),
        S::Rejected,
        "entitlement_rejected",
    ),
    row(Some(S::Escalated), S::Rejected, "entitlement_rejected"),
    row(
        Some(S::PendingApproval),
        S::Cancelled,
        "customer_cancels, written off",
    ),
    row(
        Some(S::Escalated),
        S::Cancelled,
        "customer_cancels, written off",
    ),
    row(
        Some(S::Active),
        S::Active,
        "customer_upgrades (nothing to pay), payment_failed (paid access runs on)",
    ),
    row(Some(S::Active), S::PendingPlanChange, "customer_upgrades"),
    row(
        Some(S::PendingPlanChange),
        S::PendingPlanChange,
        "customer_upgrades (later plan change wins)",
    ),
    row(Some(S::PendingPlanChange), S::Active, "payment_processed"),
    row(
        Some(S::Active),
        S::Suspended,
        "manual_suspension, payment_failed, paid_access_end",
    ),
    row(
        Some(S::PendingPlanChange),
        S::Suspended,
        "manual_suspension",
    ),
    row(
        Some(S::Suspended),
        S::Active,
        "customer_reinstated, payment_processed",
    ),
    row(
        Some(S::Suspended),
        S::Cancelled,
        "suspension_refund 72 h, customer_cancels, written off",
    ),
    row(
        Some(S::Active),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::PendingPlanChange),
        S::PendingCancellation,
        "customer_cancels at period end",
    ),
    row(
        Some(S::PendingCancellation),
        S::Active,
        "cancellation_reverted",
    ),
    row(
        Some(S::Active),
        S::Cancelled,
        "customer_cancels now, written off",
    ),
    row(
        Some(S::PendingPlanChange),
        S::Cancelled,
        "customer_cancels now, written off",
    ),
    row(
        Some(S::PendingCancellation),
        S::Cancelled,
        "period_end, renewal_due, written off",
    ),
];

/// Why access is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspensionCause {
    /// An operator's decision.
    Manual,
    /// Suspected fraud.
    Fraud,
    /// The subscription is unpaid and no paid access is left.
    NonPayment,
}

/// The entitlement record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    /// The state.
    pub state: EntitlementState,
    /// The SKU access is for.
    pub sku: Sku,
    /// The SKU a pending plan change moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sku: Option<Sku>,
    /// When approval was requested (escalations count from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Timestamp>,
    /// 0 before escalation, 1 manager, 2 director.
    #[serde(default)]
    pub escalation_level: u8,
    /// Why access is suspended, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<SuspensionCause>,
    /// Why the last move was made (approval, rejection, cancellation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record for Entitlement {
    type State = EntitlementState;
    fn state(&self) -> S {
        self.state
    }
}

/// What the entitlement governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntitlementInput {
    /// A subscription grants access to `sku`. `held_by` names what holds access back (a compliance
    /// flag, a locked account), which sends the grant to approval even when the SKU needs none.
    Grant {
        /// The SKU.
        sku: Sku,
        /// Whether the SKU needs an operator's approval.
        requires_approval: bool,
        /// What holds access back, if anything.
        held_by: Option<String>,
    },
    /// An operator approves.
    Approve,
    /// An operator rejects.
    Reject {
        /// Why.
        reason: String,
    },
    /// The approval escalation timer fired.
    EscalationDue,
    /// The plan changes to `new_sku`; `awaits_payment` when the change costs money.
    ChangePlan {
        /// The plan moved to.
        new_sku: Sku,
        /// Whether a charge must be paid first.
        awaits_payment: bool,
    },
    /// A suspension.
    Suspend {
        /// Why.
        cause: SuspensionCause,
    },
    /// An operator lifts a manual or fraud suspension.
    Reinstate,
    /// The subscription is paid up again: a pending plan change completes, a non-payment
    /// suspension ends.
    PaymentSettled,
    /// A charge failed; `paid_access_until` is the end of the access already paid for.
    PaymentMissed {
        /// End of paid access, if any was paid.
        paid_access_until: Option<Timestamp>,
    },
    /// The paid access ran out while unpaid.
    PaidAccessEnded,
    /// The customer cancels, now or at the end of the period.
    Cancel {
        /// At period end rather than now.
        at_period_end: bool,
    },
    /// A cancellation at period end is taken back.
    RevertCancellation,
    /// Access ends (period over, written off, suspension not lifted in time).
    End {
        /// Why.
        reason: String,
    },
}

impl EntitlementInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Grant { .. } => "grant",
            Self::Approve => "approve",
            Self::Reject { .. } => "reject",
            Self::EscalationDue => "escalation_due",
            Self::ChangePlan { .. } => "change_plan",
            Self::Suspend { .. } => "suspend",
            Self::Reinstate => "reinstate",
            Self::PaymentSettled => "payment_settled",
            Self::PaymentMissed { .. } => "payment_missed",
            Self::PaidAccessEnded => "paid_access_ended",
            Self::Cancel { .. } => "cancel",
            Self::RevertCancellation => "revert_cancellation",
            Self::End { .. } => "end",
        }
    }
}

/// Decides one input. `current` is `None` before the first subscription.
pub fn decide(
    current: Option<&Entitlement>,
    input: &EntitlementInput,
    now: Timestamp,
) -> Decided<Entitlement> {
    let state = current.map(|e| e.state);
    let reject = || Rejection::invalid(state, input.name());
    match (current, input) {
        (
            None,
            EntitlementInput::Grant {
                sku,
                requires_approval,
                held_by,
            },
        ) => Ok(Verdict::Changed(grant(
            sku,
            *requires_approval,
            held_by.as_deref(),
            now,
        ))),
        (
            Some(e),
            EntitlementInput::Grant {
                sku,
                requires_approval,
                held_by,
            },
        ) if matches!(e.state, S::Cancelled | S::Rejected) => Ok(Verdict::Changed(grant(
            sku,
            *requires_approval,
            held_by.as_deref(),
            now,
        ))),
        (None, _) => Err(reject()),
        (Some(e), input) => decide_existing(e, input, now).unwrap_or_else(|| Err(reject())),
    }
}

fn grant(
    sku: &Sku,
    requires_approval: bool,
    held_by: Option<&str>,
    now: Timestamp,
) -> Decision<Entitlement> {
    let mut next = Entitlement {
        state: S::Active,
        sku: sku.clone(),
        pending_sku: None,
        requested_at: None,
        escalation_level: 0,
        suspension: None,
        reason: None,
    };
    if !requires_approval && held_by.is_none() {
        return Decision::to(next, format!("access to {sku} granted"))
            .effect(EffectKind::Provision { sku: sku.clone() })
            .timer(TimerCommand::Cancel {
                kind: TimerKind::ApprovalEscalation,
            });
    }
    next.state = S::PendingApproval;
    next.requested_at = Some(now);
    next.reason = held_by.map(str::to_owned);
    let why = match held_by {
        Some(hold) => format!("access to {sku} held for approval: {hold}"),
        None => format!("access to {sku} needs approval"),
    };
    Decision::to(next, why.clone())
        .effect(EffectKind::notify("approval_requested", why))
        .timer(TimerCommand::after(
            TimerKind::ApprovalEscalation,
            now,
            hours(ESCALATE_LEVEL1_AFTER_HOURS),
        ))
}

/// `None` means the input is not allowed in this state.
fn decide_existing(
    e: &Entitlement,
    input: &EntitlementInput,
    now: Timestamp,
) -> Option<Decided<Entitlement>> {
    use EntitlementInput as I;
    let changed = |d: Decision<Entitlement>| Some(Ok(Verdict::Changed(d)));
    let not_applicable = |why: &'static str| Some(Ok(Verdict::NotApplicable(why.into())));
    let with = |state: S| Entitlement { state, ..e.clone() };
    let awaiting_approval = matches!(e.state, S::PendingApproval | S::Escalated);
    let has_access = matches!(e.state, S::Active | S::PendingPlanChange);

    match input {
        I::Grant { .. } => None,

        // Approval and its escalation.
        I::Approve if awaiting_approval => changed(approve(e, "approved by an operator")),
        I::Reject { reason } if awaiting_approval => changed(
            Decision::to(
                Entitlement {
                    reason: Some(reason.clone()),
                    ..with(S::Rejected)
                },
                format!("access rejected: {reason}"),
            )
            .effect(EffectKind::notify("entitlement_rejected", reason.clone()))
            .timer(TimerCommand::Cancel {
                kind: TimerKind::ApprovalEscalation,
            }),
        ),
        I::EscalationDue if awaiting_approval => {
            let requested_at = e.requested_at.unwrap_or(now);
            match e.escalation_level {
                0 => changed(escalate(
                    e,
                    1,
                    "manager",
                    requested_at,
                    ESCALATE_LEVEL2_AFTER_HOURS,
                )),
                1 => changed(escalate(
                    e,
                    2,
                    "director",
                    requested_at,
                    AUTO_APPROVE_AFTER_HOURS,
                )),
                _ => changed(approve(
                    e,
                    "approved automatically after 72 h without a decision",
                )),
            }
        }

        // Plan changes.
        I::ChangePlan {
            new_sku,
            awaits_payment,
        } if has_access => {
            if *awaits_payment {
                let next = Entitlement {
                    pending_sku: Some(new_sku.clone()),
                    ..with(S::PendingPlanChange)
                };
                changed(Decision::to(
                    next,
                    format!("change to {new_sku} waits for payment"),
                ))
            } else {
                let next = Entitlement {
                    sku: new_sku.clone(),
                    pending_sku: None,
                    ..with(S::Active)
                };
                changed(
                    Decision::to(next, format!("plan changed to {new_sku}")).effect(
                        EffectKind::Provision {
                            sku: new_sku.clone(),
                        },
                    ),
                )
            }
        }

        // Suspension.
        I::Suspend { cause } if has_access => {
            let mut d = Decision::to(
                Entitlement {
                    suspension: Some(*cause),
                    pending_sku: None,
                    ..with(S::Suspended)
                },
                format!("access suspended ({})", cause_name(*cause)),
            )
            .effect(EffectKind::Revoke { sku: e.sku.clone() });
            if *cause != SuspensionCause::NonPayment {
                d = d.timer(TimerCommand::after(
                    TimerKind::SuspensionRefund,
                    now,
                    hours(SUSPENSION_REFUND_AFTER_HOURS),
                ));
            }
            changed(d)
        }
        I::Reinstate
            if e.state == S::Suspended && e.suspension != Some(SuspensionCause::NonPayment) =>
        {
            changed(
                Decision::to(
                    Entitlement {
                        suspension: None,
                        ..with(S::Active)
                    },
                    "suspension lifted",
                )
                .effect(EffectKind::Provision { sku: e.sku.clone() })
                .timer(TimerCommand::Cancel {
                    kind: TimerKind::SuspensionRefund,
                }),
            )
        }
        I::Reinstate => None,
        I::PaymentSettled => match (e.state, e.suspension) {
            (S::PendingPlanChange, _) => {
                let sku = e.pending_sku.clone().unwrap_or_else(|| e.sku.clone());
                changed(
                    Decision::to(
                        Entitlement {
                            sku: sku.clone(),
                            pending_sku: None,
                            ..with(S::Active)
                        },
                        format!("plan change to {sku} paid"),
                    )
                    .effect(EffectKind::Provision { sku }),
                )
            }
            (S::Suspended, Some(SuspensionCause::NonPayment)) => changed(
                Decision::to(
                    Entitlement {
                        suspension: None,
                        ..with(S::Active)
                    },
                    "paid again: access restored",
                )
                .effect(EffectKind::Provision { sku: e.sku.clone() }),
            ),
            (S::Active, _) => {
                changed(Decision::to(e.clone(), "paid").timer(TimerCommand::Cancel {
                    kind: TimerKind::PaidAccessEnd,
                }))
            }
            _ => not_applicable("payment does not change access"),
        },
        I::PaymentMissed { paid_access_until } => match e.state {
            S::Active => match paid_access_until {
                Some(until) if *until > now => changed(
                    Decision::to(
                        e.clone(),
                        format!("unpaid, but access is paid until {until}"),
                    )
                    .timer(TimerCommand::Set {
                        kind: TimerKind::PaidAccessEnd,
                        due_at: *until,
                    }),
                ),
                _ => changed(suspend_unpaid(e)),
            },
            _ => not_applicable("no access to withhold"),
        },
        I::PaidAccessEnded if e.state == S::Active => changed(suspend_unpaid(e)),
        I::PaidAccessEnded => not_applicable("no access to withhold"),

        // Cancellation and the end.
        I::Cancel { at_period_end } => match e.state {
            S::Active | S::PendingPlanChange if *at_period_end => changed(Decision::to(
                Entitlement {
                    pending_sku: None,
                    ..with(S::PendingCancellation)
                },
                "access ends with the paid period",
            )),
            S::Active | S::PendingPlanChange | S::Suspended | S::PendingApproval | S::Escalated => {
                changed(end(e, "cancelled by the customer"))
            }
            _ => None,
        },
        I::RevertCancellation if e.state == S::PendingCancellation => {
            changed(Decision::to(with(S::Active), "cancellation reverted"))
        }
        I::End { reason } => match e.state {
            S::Cancelled | S::Rejected => not_applicable("access already ended"),
            _ => changed(end(e, reason)),
        },
        _ => None,
    }
}

fn approve(e: &Entitlement, why: &str) -> Decision<Entitlement> {
    let next = Entitlement {
        state: S::Active,
        reason: Some(why.to_owned()),
        ..e.clone()
    };
    Decision::to(next, format!("access to {} granted: {why}", e.sku))
        .effect(EffectKind::Provision { sku: e.sku.clone() })
        .timer(TimerCommand::Cancel {
            kind: TimerKind::ApprovalEscalation,
        })
}

fn escalate(
    e: &Entitlement,
    level: u8,
    queue: &str,
    requested_at: Timestamp,
    next_after_hours: i64,
) -> Decision<Entitlement> {
    let next = Entitlement {
        state: S::Escalated,
        escalation_level: level,
        ..e.clone()
    };
    let why = format!(
        "approval of {} pending since {requested_at}: escalated to the {queue} queue",
        e.sku
    );
    Decision::to(next, why.clone())
        .effect(EffectKind::Escalate {
            level,
            queue: queue.to_owned(),
            reason: why,
        })
        .timer(TimerCommand::Set {
            kind: TimerKind::ApprovalEscalation,
            due_at: add(requested_at, hours(next_after_hours)),
        })
}

fn suspend_unpaid(e: &Entitlement) -> Decision<Entitlement> {
    let next = Entitlement {
        state: S::Suspended,
        suspension: Some(SuspensionCause::NonPayment),
        ..e.clone()
    };
    Decision::to(next, "unpaid and no paid access left: suspended")
        .effect(EffectKind::Revoke { sku: e.sku.clone() })
        .timer(TimerCommand::Cancel {
            kind: TimerKind::PaidAccessEnd,
        })
}

fn end(e: &Entitlement, why: &str) -> Decision<Entitlement> {
    let had_access = matches!(
        e.state,
        S::Active | S::PendingPlanChange | S::PendingCancellation
    );
    let next = Entitlement {
        state: S::Cancelled,
        pending_sku: None,
        suspension: None,
        reason: Some(why.to_owned()),
        ..e.clone()
    };
    let mut d = Decision::to(next, format!("access ended: {why}"))
        .timer(TimerCommand::Cancel {
            kind: TimerKind::ApprovalEscalation,
        })
        .timer(TimerCommand::Cancel {
            kind: TimerKind::SuspensionRefund,
        })
        .timer(TimerCommand::Cancel {
            kind: TimerKind::PaidAccessEnd,
        });
    if had_access {
        d = d.effect(EffectKind::Revoke { sku: e.sku.clone() });
    }
    d
}

fn cause_name(cause: SuspensionCause) -> &'static str {
    match cause {
        SuspensionCause::Manual => "manual",
        SuspensionCause::Fraud => "fraud",
        SuspensionCause::NonPayment => "non-payment",
    }
}
