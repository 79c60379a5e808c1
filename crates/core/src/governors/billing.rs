//! The billing governor: what the customer owes and what was done to collect it.
//!
//! An invoice is charged at once (`invoiced`). A failed charge climbs the retry ladder: `retry_1`
//! waits 1 h, `retry_2` 3 h, `retry_3` 1 day, each followed by a new attempt (`processing`); the fourth
//! failure, or any hard decline, goes to `collections`, which after 7 days is `written_off`. Payment
//! ids are idempotent: a known id with the same amount is a replay, with another amount a rejection.
//! Money received is never refused; what exceeds the amount due becomes account credit.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::ids::PaymentId;
use crate::money::Currency;
use crate::timers::{days, hours, TimerCommand, TimerKind};

governor_states! {
    /// The ten billing states of SPEC 2.2.
    BillingState for GovernorKind::Billing, table TABLE;
    /// Nothing is due.
    Current => "current",
    /// An invoice is open and its first charge is in flight.
    Invoiced => "invoiced",
    /// A retry charge is in flight.
    Processing => "processing",
    /// The first charge failed; the next attempt is 1 h later.
    Retry1 => "retry_1",
    /// The second charge failed; the next attempt is 3 h later.
    Retry2 => "retry_2",
    /// The third charge failed; the next attempt is 1 day later.
    Retry3 => "retry_3",
    /// Charging gave up; collections have 7 days.
    Collections => "collections",
    /// A payment is disputed (chargeback).
    Disputed => "disputed",
    /// A refund is in flight.
    Refunding => "refunding",
    /// The debt is written off.
    WrittenOff => "written_off",
}

use BillingState as S;

/// Waits of the retry ladder after attempts 1, 2 and 3, in hours (SPEC 2.2: 1 h, 3 h, 1 day).
pub const RETRY_WAIT_HOURS: [i64; 3] = [1, 3, 24];
/// Days in collections before the debt is written off.
pub const COLLECTIONS_DAYS: i64 = 7;
/// Payment ids remembered for idempotency per customer; older ones are forgotten first.
pub const PAYMENT_IDS_MAX: usize = 256;

const TABLE: &[Transition<S>] = &[
    row(
        Some(S::Current),
        S::Invoiced,
        "invoice (subscribe, renewal, plan change, trial end)",
    ),
    row(
        Some(S::Current),
        S::Current,
        "invoice paid from credit, payment_processed, credit",
    ),
    row(Some(S::Invoiced), S::Current, "payment_processed, void"),
    row(
        Some(S::Invoiced),
        S::Invoiced,
        "partial payment, replaced charge",
    ),
    row(Some(S::Invoiced), S::Retry1, "payment_failed"),
    row(
        Some(S::Invoiced),
        S::Collections,
        "payment_failed (hard decline)",
    ),
    row(Some(S::Retry1), S::Processing, "payment_retry 1 h"),
    row(Some(S::Retry2), S::Processing, "payment_retry 3 h"),
    row(Some(S::Retry3), S::Processing, "payment_retry 1 day"),
    row(Some(S::Processing), S::Retry2, "payment_failed (attempt 2)"),
    row(Some(S::Processing), S::Retry3, "payment_failed (attempt 3)"),
    row(
        Some(S::Processing),
        S::Collections,
        "payment_failed (attempt 4, hard decline)",
    ),
    row(Some(S::Processing), S::Current, "payment_processed, void"),
    row(Some(S::Processing), S::Processing, "partial payment"),
    row(Some(S::Processing), S::Invoiced, "replaced charge"),
    row(Some(S::Retry1), S::Current, "payment_processed"),
    row(Some(S::Retry2), S::Current, "payment_processed"),
    row(Some(S::Retry3), S::Current, "payment_processed"),
    row(Some(S::Retry1), S::Retry1, "partial payment"),
    row(Some(S::Retry2), S::Retry2, "partial payment"),
    row(Some(S::Retry3), S::Retry3, "partial payment"),
    row(Some(S::Collections), S::Current, "payment_processed"),
    row(Some(S::Collections), S::Collections, "partial payment"),
    row(
        Some(S::Collections),
        S::WrittenOff,
        "collections_deadline 7 days",
    ),
    row(Some(S::Current), S::Disputed, "payment_disputed"),
    row(Some(S::Disputed), S::Current, "dispute_resolved (won)"),
    row(Some(S::Disputed), S::Collections, "dispute_resolved (lost)"),
    row(Some(S::Current), S::Refunding, "refund of unused time"),
    row(Some(S::Refunding), S::Current, "refund_processed"),
    row(
        Some(S::Refunding),
        S::Refunding,
        "payment_processed (credit)",
    ),
    row(Some(S::Disputed), S::Disputed, "payment_processed (credit)"),
    row(
        Some(S::WrittenOff),
        S::Current,
        "payment_processed (recovered)",
    ),
];

/// One payment id seen, with the amount recorded (`None` for a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The processor's id.
    pub payment_id: PaymentId,
    /// Amount settled, or `None` when the id was a failed attempt.
    pub amount: Option<i64>,
}

/// The billing record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Billing {
    /// The state.
    pub state: BillingState,
    /// The account's currency, fixed by its first invoice or payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Owed on the open invoice, in minor units.
    pub amount_due: i64,
    /// Money held for the customer (overpayments, downgrades), applied to the next invoice.
    pub credit: i64,
    /// The open invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// Charge attempts made on the open invoice.
    pub attempt: u32,
    /// Invoices issued so far; numbers the next one.
    pub invoices_issued: u64,
    /// A refund in flight, in minor units.
    pub refund_pending: i64,
    /// The payment under dispute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disputed: Option<PaymentRecord>,
    /// The most recent payment ids, oldest first, at most [`PAYMENT_IDS_MAX`].
    pub payments: Vec<PaymentRecord>,
}

impl Default for Billing {
    fn default() -> Self {
        Self {
            state: S::Current,
            currency: None,
            amount_due: 0,
            credit: 0,
            invoice_id: None,
            attempt: 0,
            invoices_issued: 0,
            refund_pending: 0,
            disputed: None,
            payments: Vec::new(),
        }
    }
}

impl Record for Billing {
    type State = BillingState;
    fn state(&self) -> S {
        self.state
    }
}

impl Billing {
    /// Whether a charge is in flight (the first one or a retry).
    pub fn charge_in_flight(&self) -> bool {
        matches!(self.state, S::Invoiced | S::Processing)
    }

    /// Whether an invoice is open and unpaid.
    pub fn owes(&self) -> bool {
        matches!(
            self.state,
            S::Invoiced | S::Processing | S::Retry1 | S::Retry2 | S::Retry3 | S::Collections
        )
    }

    /// No invoice open any more: nothing due, no attempt counted.
    fn close_invoice(&mut self) {
        self.amount_due = 0;
        self.invoice_id = None;
        self.attempt = 0;
    }

    fn recorded(&self, payment_id: &PaymentId) -> Option<&PaymentRecord> {
        self.payments.iter().find(|p| &p.payment_id == payment_id)
    }

    fn remember(&mut self, record: PaymentRecord) {
        if self.payments.len() >= PAYMENT_IDS_MAX {
            self.payments.remove(0);
        }
        self.payments.push(record);
    }
}

/// Why an invoice is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceReason {
    /// The first period of a subscription without trial.
    FirstPeriod,
    /// The trial ended.
    TrialEnd,
    /// A renewal.
    Renewal,
    /// The net of a plan change.
    PlanChange,
}

/// What the billing governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BillingInput {
    /// Bill `amount`; account credit is applied first. A negative amount (a downgrade's net) is
    /// kept as credit, never refunded. `replaces_open` voids an open charge first (the winner of a
    /// plan-change race, or a second change, replacing the earlier change's charge).
    Invoice {
        /// Minor units; negative is credit.
        amount: i64,
        /// Currency.
        currency: Currency,
        /// Why.
        reason: InvoiceReason,
        /// Void the open invoice's charge before billing this one.
        replaces_open: bool,
    },
    /// A payment settled.
    PaymentProcessed {
        /// Minor units.
        amount: i64,
        /// Currency.
        currency: Currency,
        /// The processor's id.
        payment_id: PaymentId,
    },
    /// A charge failed.
    PaymentFailed {
        /// The processor's id.
        payment_id: PaymentId,
        /// Not retryable.
        hard_decline: bool,
        /// The processor's reason.
        reason: String,
    },
    /// The retry timer fired: charge again.
    RetryDue,
    /// Collections gave up.
    CollectionsExpired,
    /// Cancel the charge in flight (compensation).
    Void,
    /// Give back unused prepaid time.
    Refund {
        /// Minor units.
        amount: i64,
        /// Why.
        reason: String,
    },
    /// The refund completed.
    RefundProcessed {
        /// Minor units.
        amount: i64,
        /// Currency.
        currency: Currency,
    },
    /// A payment is disputed.
    Disputed {
        /// The payment.
        payment_id: PaymentId,
    },
    /// The dispute ended.
    DisputeResolved {
        /// The payment.
        payment_id: PaymentId,
        /// Whether the vendor kept the money.
        won: bool,
    },
}

impl BillingInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Invoice { .. } => "invoice",
            Self::PaymentProcessed { .. } => "payment_processed",
            Self::PaymentFailed { .. } => "payment_failed",
            Self::RetryDue => "retry_due",
            Self::CollectionsExpired => "collections_expired",
            Self::Void => "void",
            Self::Refund { .. } => "refund",
            Self::RefundProcessed { .. } => "refund_processed",
            Self::Disputed { .. } => "disputed",
            Self::DisputeResolved { .. } => "dispute_resolved",
        }
    }
}

/// Where a payment would leave billing, without deciding it: used by the orchestrator to tell
/// the other governors whether the customer is paid up.
pub fn settles(billing: &Billing, amount: i64) -> bool {
    billing.owes() && amount >= billing.amount_due
}

/// Decides one input.
pub fn decide(b: &Billing, input: &BillingInput, now: Timestamp) -> Decided<Billing> {
    use BillingInput as I;
    let reject = || Rejection::invalid(Some(b.state), input.name());
    let changed = |d: Decision<Billing>| Ok(Verdict::Changed(d));
    let check_currency = |currency: &Currency| match &b.currency {
        Some(own) if own != currency => Err(Rejection::CurrencyMismatch {
            expected: own.to_string(),
            received: currency.to_string(),
        }),
        _ => Ok(()),
    };

    match input {
        I::Invoice {
            amount,
            currency,
            reason,
            replaces_open,
        } => {
            check_currency(currency)?;
            let replacing = *replaces_open && b.charge_in_flight();
            if !replacing && b.state != S::Current {
                return Err(reject());
            }
            let mut next = b.clone();
            next.currency = Some(currency.clone());
            next.close_invoice(); // a replaced charge is voided below
            next.state = S::Current;
            let reason = reason_name(*reason);
            let mut d = if *amount <= 0 {
                // A negative net is kept as credit, never refunded.
                next.credit = b
                    .credit
                    .checked_sub(*amount)
                    .ok_or(Rejection::AmountOverflow)?;
                Decision::to(
                    next,
                    format!("{} {currency} kept as account credit", -amount),
                )
            } else {
                let from_credit = (*amount).min(b.credit);
                next.credit = b.credit - from_credit;
                let due = amount - from_credit;
                if due == 0 {
                    Decision::to(
                        next,
                        format!("{reason} invoice of {amount} {currency} paid from credit"),
                    )
                } else {
                    next.invoices_issued += 1;
                    let invoice_id = format!("inv-{}", next.invoices_issued);
                    next.state = S::Invoiced;
                    next.amount_due = due;
                    next.invoice_id = Some(invoice_id.clone());
                    next.attempt = 1;
                    Decision::to(
                        next,
                        format!("{reason} invoice {invoice_id}: {due} {currency} charged"),
                    )
                    .effect(EffectKind::Charge {
                        amount: due,
                        currency: currency.clone(),
                        invoice_id,
                        attempt: 1,
                    })
                }
            };
            if replacing {
                let void = EffectKind::Void {
                    invoice_id: b.invoice_id.clone().unwrap_or_default(),
                    amount: b.amount_due,
                    currency: currency.clone(),
                };
                d.effects.insert(0, void);
                d = d.timer(TimerCommand::Cancel {
                    kind: TimerKind::PaymentRetry,
                });
            }
            changed(d)
        }
        I::PaymentProcessed {
            amount,
            currency,
            payment_id,
        } => {
            check_currency(currency)?;
            if let Some(seen) = b.recorded(payment_id) {
                return match seen.amount {
                    Some(recorded) if recorded == *amount => Ok(Verdict::NotApplicable(
                        format!("payment {payment_id} already recorded: replay").into(),
                    )),
                    Some(recorded) => Err(Rejection::PaymentAmountMismatch {
                        payment_id: payment_id.to_string(),
                        recorded,
                        received: *amount,
                    }),
                    // A payment id that first failed and now settled is a new outcome: record it.
                    None => pay(b, *amount, currency, payment_id),
                };
            }
            pay(b, *amount, currency, payment_id)
        }
        I::PaymentFailed {
            payment_id,
            hard_decline,
            reason,
        } => {
            if let Some(seen) = b.recorded(payment_id) {
                return match seen.amount {
                    None => Ok(Verdict::NotApplicable(
                        format!("failure of {payment_id} already recorded").into(),
                    )),
                    Some(_) => Err(Rejection::InvalidTransition {
                        state: b.state.as_str().to_owned(),
                        input: format!("payment_failed for settled payment {payment_id}"),
                    }),
                };
            }
            if !b.charge_in_flight() {
                return if b.owes() {
                    Ok(Verdict::NotApplicable(
                        "no charge in flight: the ladder continues".into(),
                    ))
                } else {
                    Err(Rejection::NothingDue)
                };
            }
            let mut next = b.clone();
            next.remember(PaymentRecord {
                payment_id: payment_id.clone(),
                amount: None,
            });
            let to_collections = *hard_decline || b.attempt as usize > RETRY_WAIT_HOURS.len();
            if to_collections {
                next.state = S::Collections;
                let why = if *hard_decline {
                    "hard decline"
                } else {
                    "retries exhausted"
                };
                return changed(
                    Decision::to(next, format!("charge failed ({reason}, {why}): collections for {COLLECTIONS_DAYS} days"))
                        .effect(EffectKind::notify("payment_collections", format!("payment failed: {reason}")))
                        .timer(TimerCommand::Cancel { kind: TimerKind::PaymentRetry })
                        .timer(TimerCommand::after(TimerKind::CollectionsDeadline, now, days(COLLECTIONS_DAYS))),
                );
            }
            let (state, wait) = match b.attempt {
                0 | 1 => (S::Retry1, RETRY_WAIT_HOURS[0]),
                2 => (S::Retry2, RETRY_WAIT_HOURS[1]),
                _ => (S::Retry3, RETRY_WAIT_HOURS[2]),
            };
            next.state = state;
            changed(
                Decision::to(
                    next,
                    format!("charge failed ({reason}): next attempt in {wait} h"),
                )
                .effect(EffectKind::notify(
                    "payment_failed",
                    format!("payment failed: {reason}"),
                ))
                .timer(TimerCommand::after(
                    TimerKind::PaymentRetry,
                    now,
                    hours(wait),
                )),
            )
        }
        I::RetryDue if matches!(b.state, S::Retry1 | S::Retry2 | S::Retry3) => {
            let mut next = b.clone();
            next.state = S::Processing;
            next.attempt = b.attempt + 1;
            let currency = b.currency.clone().unwrap_or_else(Currency::usd);
            let invoice_id = b.invoice_id.clone().unwrap_or_default();
            changed(
                Decision::to(
                    next,
                    format!("retry attempt {} of {invoice_id}", b.attempt + 1),
                )
                .effect(EffectKind::Charge {
                    amount: b.amount_due,
                    currency,
                    invoice_id,
                    attempt: b.attempt + 1,
                }),
            )
        }
        I::CollectionsExpired if b.state == S::Collections => {
            let mut next = b.clone();
            next.state = S::WrittenOff;
            let due = b.amount_due;
            next.close_invoice();
            changed(
                Decision::to(
                    next,
                    format!("{due} written off after {COLLECTIONS_DAYS} days in collections"),
                )
                .effect(EffectKind::notify(
                    "written_off",
                    format!("{due} written off"),
                )),
            )
        }
        I::Void if b.charge_in_flight() => {
            let mut next = b.clone();
            next.state = S::Current;
            next.close_invoice();
            let currency = b.currency.clone().unwrap_or_else(Currency::usd);
            changed(
                Decision::to(next, "charge in flight voided")
                    .effect(EffectKind::Void {
                        invoice_id: b.invoice_id.clone().unwrap_or_default(),
                        amount: b.amount_due,
                        currency,
                    })
                    .timer(TimerCommand::Cancel {
                        kind: TimerKind::PaymentRetry,
                    }),
            )
        }
        I::Refund { amount, reason } if b.state == S::Current => {
            if *amount == 0 {
                return Ok(Verdict::NotApplicable("nothing to refund".into()));
            }
            let mut next = b.clone();
            next.state = S::Refunding;
            next.refund_pending = *amount;
            let currency = b.currency.clone().unwrap_or_else(Currency::usd);
            changed(
                Decision::to(next, format!("refund of {amount} {currency}: {reason}")).effect(
                    EffectKind::Refund {
                        amount: *amount,
                        currency,
                        reason: reason.clone(),
                    },
                ),
            )
        }
        I::Refund { .. } => Ok(Verdict::NotApplicable(
            format!("no refund while {}", b.state.as_str()).into(),
        )),
        I::RefundProcessed { amount, currency } if b.state == S::Refunding => {
            check_currency(currency)?;
            let mut next = b.clone();
            next.state = S::Current;
            next.refund_pending = 0;
            changed(Decision::to(
                next,
                format!("refund of {amount} {currency} completed"),
            ))
        }
        I::Disputed { payment_id } if b.state == S::Current => {
            let Some(record) = b
                .recorded(payment_id)
                .filter(|r| r.amount.is_some())
                .cloned()
            else {
                return Err(Rejection::UnknownPayment {
                    payment_id: payment_id.to_string(),
                });
            };
            let mut next = b.clone();
            next.state = S::Disputed;
            next.disputed = Some(record);
            changed(
                Decision::to(next, format!("payment {payment_id} disputed")).effect(
                    EffectKind::notify(
                        "payment_disputed",
                        format!("payment {payment_id} disputed"),
                    ),
                ),
            )
        }
        I::DisputeResolved { payment_id, won } if b.state == S::Disputed => {
            let Some(record) = b.disputed.clone().filter(|r| &r.payment_id == payment_id) else {
                return Err(Rejection::UnknownPayment {
                    payment_id: payment_id.to_string(),
                });
            };
            let mut next = b.clone();
            next.disputed = None;
            if *won {
                next.state = S::Current;
                return changed(Decision::to(next, format!("dispute over {payment_id} won")));
            }
            next.state = S::Collections;
            next.amount_due = record.amount.unwrap_or(0);
            next.invoices_issued += 1;
            next.invoice_id = Some(format!("inv-{}", next.invoices_issued));
            next.attempt = RETRY_WAIT_HOURS.len() as u32 + 1;
            changed(
                Decision::to(
                    next,
                    format!("dispute over {payment_id} lost: the amount is owed again"),
                )
                .timer(TimerCommand::after(
                    TimerKind::CollectionsDeadline,
                    now,
                    days(COLLECTIONS_DAYS),
                )),
            )
        }
        _ => Err(reject()),
    }
}

fn pay(b: &Billing, amount: i64, currency: &Currency, payment_id: &PaymentId) -> Decided<Billing> {
    let mut next = b.clone();
    next.currency = Some(currency.clone());
    next.remember(PaymentRecord {
        payment_id: payment_id.clone(),
        amount: Some(amount),
    });
    if !b.owes() && b.state != S::WrittenOff {
        // Money received is never refused: nothing due, so it is credit.
        next.credit = b
            .credit
            .checked_add(amount)
            .ok_or(Rejection::AmountOverflow)?;
        return Ok(Verdict::Changed(Decision::to(
            next,
            format!("nothing due: {amount} {currency} kept as credit"),
        )));
    }
    if b.state == S::WrittenOff {
        next.state = S::Current;
        next.credit = b
            .credit
            .checked_add(amount)
            .ok_or(Rejection::AmountOverflow)?;
        return Ok(Verdict::Changed(Decision::to(
            next,
            format!("{amount} {currency} recovered after write-off"),
        )));
    }
    if amount < b.amount_due {
        next.amount_due = b.amount_due - amount;
        return Ok(Verdict::Changed(Decision::to(
            next,
            format!(
                "partial payment of {amount} {currency}: {} still due",
                b.amount_due - amount
            ),
        )));
    }
    let excess = amount - b.amount_due;
    next.state = S::Current;
    next.close_invoice();
    next.credit = b
        .credit
        .checked_add(excess)
        .ok_or(Rejection::AmountOverflow)?;
    let message = if excess > 0 {
        format!("paid in full; {excess} {currency} kept as credit")
    } else {
        format!("paid in full: {amount} {currency}")
    };
    Ok(Verdict::Changed(
        Decision::to(next, message)
            .timer(TimerCommand::Cancel {
                kind: TimerKind::PaymentRetry,
            })
            .timer(TimerCommand::Cancel {
                kind: TimerKind::CollectionsDeadline,
            }),
    ))
}

fn reason_name(reason: InvoiceReason) -> &'static str {
    match reason {
        InvoiceReason::FirstPeriod => "first-period",
        InvoiceReason::TrialEnd => "trial-end",
        InvoiceReason::Renewal => "renewal",
        InvoiceReason::PlanChange => "plan-change",
    }
}
