//! What every governor shares: its name, the shape of its answer, effects and rejections.
//!
//! A governor is a state enum, an input enum and one pure function
//! `decide(record, input, now) -> Result<Verdict, Rejection>`. The record is the governor's state plus
//! the data it keeps; the verdict holds the next record, the effects to run and the timers to set
//! or cancel, as data for the engine to carry out. Each governor also publishes its transition
//! table; the diagrams are drawn from it and the property tests hold every decision to it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::Sku;
use crate::money::Currency;
use crate::timers::TimerCommand;

/// The eight governors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovernorKind {
    /// Access to a SKU.
    Entitlement,
    /// Invoices, charges, retries, collections.
    Billing,
    /// SKU definitions and prices.
    ProductCatalog,
    /// The subscription's lifecycle and periods.
    Subscription,
    /// The customer's account: verification, locks, closure.
    CustomerAccount,
    /// Usage against limits, and service levels.
    QuotaSla,
    /// KYC/AML screening and fraud.
    Compliance,
    /// The customer's tenant slot on shared infrastructure.
    MultiTenant,
}

impl GovernorKind {
    /// All eight, in a fixed order.
    pub const ALL: [GovernorKind; 8] = [
        Self::Entitlement,
        Self::Billing,
        Self::ProductCatalog,
        Self::Subscription,
        Self::CustomerAccount,
        Self::QuotaSla,
        Self::Compliance,
        Self::MultiTenant,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Entitlement => "entitlement",
            Self::Billing => "billing",
            Self::ProductCatalog => "product_catalog",
            Self::Subscription => "subscription",
            Self::CustomerAccount => "customer_account",
            Self::QuotaSla => "quota_sla",
            Self::Compliance => "compliance",
            Self::MultiTenant => "multi_tenant",
        }
    }
}

impl fmt::Display for GovernorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A governor's state enum.
pub trait GovernorState: Copy + Eq + fmt::Debug + 'static {
    /// The governor the states belong to.
    const GOVERNOR: GovernorKind;
    /// Every state, in the order of SPEC 2.2.
    const ALL: &'static [Self];
    /// The snake_case name, as on the wire.
    fn name(self) -> &'static str;
    /// The transition table: every change of state the governor may make.
    fn transitions() -> &'static [Transition<Self>];

    /// Whether the table allows `from -> to` (`None`: the record is created).
    fn allows(from: Option<Self>, to: Self) -> bool {
        Self::transitions()
            .iter()
            .any(|t| t.from == from && t.to == to)
    }
}

/// One row of a transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition<S: 'static> {
    /// The state left; `None` when the record is created.
    pub from: Option<S>,
    /// The state entered.
    pub to: S,
    /// The inputs that make this move, for the diagram.
    pub on: &'static str,
}

/// Shorthand for a table row.
pub const fn row<S>(from: Option<S>, to: S, on: &'static str) -> Transition<S> {
    Transition { from, to, on }
}

/// A governor's record: its state plus the data it keeps.
pub trait Record: Clone + fmt::Debug + PartialEq {
    /// The state enum.
    type State: GovernorState;
    /// The current state.
    fn state(&self) -> Self::State;
}

/// A state's name or a sentence in a report. The governors' state names and most of their
/// messages are static: a report borrows them instead of allocating a copy per event (one
/// deserialized owns its text).
pub type ReportText = std::borrow::Cow<'static, str>;

/// A change a governor decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<R: Record> {
    /// The record after the input.
    pub next: R,
    /// States passed through on the way to `next.state()` within this one input (usually none).
    pub via: Vec<R::State>,
    /// Effects to carry out once the decision is committed.
    pub effects: Vec<EffectKind>,
    /// Timers to set or cancel.
    pub timers: Vec<TimerCommand>,
    /// Why, in a sentence, for the reply and the audit log.
    pub message: ReportText,
}

impl<R: Record> Decision<R> {
    /// A move to `next`.
    pub fn to(next: R, message: impl Into<ReportText>) -> Self {
        Self {
            next,
            via: Vec::new(),
            effects: Vec::new(),
            timers: Vec::new(),
            message: message.into(),
        }
    }

    /// Adds an effect.
    #[must_use]
    pub fn effect(mut self, effect: EffectKind) -> Self {
        self.effects.push(effect);
        self
    }

    /// Adds a timer command.
    #[must_use]
    pub fn timer(mut self, command: TimerCommand) -> Self {
        self.timers.push(command);
        self
    }

    /// Records an intermediate state.
    #[must_use]
    pub fn via(mut self, state: R::State) -> Self {
        self.via.push(state);
        self
    }

    /// Every step `(from, to)` the decision makes, starting from `from`.
    pub fn steps(&self, from: Option<R::State>) -> Vec<(Option<R::State>, R::State)> {
        self.each_step(from).collect()
    }

    fn each_step(
        &self,
        from: Option<R::State>,
    ) -> impl Iterator<Item = (Option<R::State>, R::State)> + '_ {
        let mut at = from;
        self.via
            .iter()
            .copied()
            .chain(std::iter::once(self.next.state()))
            .map(move |state| (at.replace(state), state))
    }

    /// Whether the transition table allows every step (checked for every decision, so the
    /// steps are walked, not collected).
    pub fn is_allowed(&self, from: Option<R::State>) -> bool {
        self.each_step(from).all(|(a, b)| R::State::allows(a, b))
    }
}

/// A governor's answer to an input it accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<R: Record> {
    /// The governor changes (possibly to the same state with new data).
    Changed(Decision<R>),
    /// The input does not concern this governor in its current state.
    NotApplicable(ReportText),
}

/// The result of one governor decision.
pub type Decided<R> = Result<Verdict<R>, Rejection>;

/// Why a governor refuses an input. Each variant is a stable `code` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The input is not allowed in the current state.
    #[error("`{input}` is not allowed in state `{state}`")]
    InvalidTransition {
        /// The current state (`none` when the record does not exist yet).
        state: String,
        /// The governor input.
        input: String,
    },
    /// A known payment id arrived again with another amount.
    #[error("payment `{payment_id}` was recorded as {recorded}, now received as {received}")]
    PaymentAmountMismatch {
        /// The payment id.
        payment_id: String,
        /// The amount first recorded.
        recorded: i64,
        /// The amount now received.
        received: i64,
    },
    /// Money in another currency than the account's.
    #[error("currency {received} does not match the account's {expected}")]
    CurrencyMismatch {
        /// The account's currency.
        expected: String,
        /// The currency received.
        received: String,
    },
    /// A catalog change carried a stale version.
    #[error("expected version {expected}, the product is at version {actual}")]
    ConcurrentUpdate {
        /// The version the sender saw.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// The SKU is not on sale.
    #[error("product `{sku}` is `{state}`, not published")]
    ProductNotPublished {
        /// The SKU.
        sku: String,
        /// Its catalog state.
        state: String,
    },
    /// The SKU is not in the catalog.
    #[error("product `{sku}` is not in the catalog")]
    UnknownProduct {
        /// The SKU.
        sku: String,
    },
    /// The new plan is priced in another currency than the subscription.
    #[error("the plan is priced in {received}, the subscription in {expected}")]
    PlanCurrencyMismatch {
        /// The subscription's currency.
        expected: String,
        /// The new plan's currency.
        received: String,
    },
    /// A plan change named an old plan that was never the current one.
    #[error("the current plan is `{current}`, not `{claimed}`")]
    PlanMismatch {
        /// The plan in force.
        current: String,
        /// The plan the event named.
        claimed: String,
    },
    /// A renewal named another subscription.
    #[error("the subscription is `{current}`, not `{claimed}`")]
    UnknownSubscription {
        /// The subscription in force (`none` when there is none).
        current: String,
        /// The subscription named.
        claimed: String,
    },
    /// A dispute or resolution named a payment that is not recorded.
    #[error("payment `{payment_id}` is not recorded")]
    UnknownPayment {
        /// The payment id.
        payment_id: String,
    },
    /// A failure or charge came when nothing is due.
    #[error("nothing is due")]
    NothingDue,
    /// A product failed schema validation.
    #[error("product fails schema validation: {reason}")]
    SchemaInvalid {
        /// The rule broken.
        reason: String,
    },
    /// A timer fired that is not pending (a duplicate, or cancelled meanwhile).
    #[error("timer `{timer}` due at {due_at} is not pending")]
    TimerNotPending {
        /// The timer kind.
        timer: String,
        /// The deadline named by the firing.
        due_at: String,
    },
    /// Money arithmetic left its range.
    #[error("amount out of range")]
    AmountOverflow,
    /// A governor answered a move its transition table does not allow (a bug, refused).
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition {
        /// The state left.
        from: String,
        /// The state entered.
        to: String,
    },
}

impl Rejection {
    /// An input the state does not allow.
    pub fn invalid<S: GovernorState>(state: Option<S>, input: &str) -> Self {
        Self::InvalidTransition {
            state: state.map_or("none", GovernorState::name).to_owned(),
            input: input.to_owned(),
        }
    }

    /// The stable code, as on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::PaymentAmountMismatch { .. } => "payment_amount_mismatch",
            Self::CurrencyMismatch { .. } => "currency_mismatch",
            Self::ConcurrentUpdate { .. } => "concurrent_update",
            Self::ProductNotPublished { .. } => "product_not_published",
            Self::UnknownProduct { .. } => "unknown_product",
            Self::PlanCurrencyMismatch { .. } => "plan_currency_mismatch",
            Self::PlanMismatch { .. } => "plan_mismatch",
            Self::UnknownSubscription { .. } => "unknown_subscription",
            Self::UnknownPayment { .. } => "unknown_payment",
            Self::NothingDue => "nothing_due",
            Self::SchemaInvalid { .. } => "schema_invalid",
            Self::TimerNotPending { .. } => "timer_not_pending",
            Self::AmountOverflow => "amount_overflow",
            Self::IllegalTransition { .. } => "illegal_transition",
        }
    }
}

/// An effect a governor asks for. The orchestrator gives each an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EffectKind {
    /// Charge the customer's payment method.
    Charge {
        /// Minor units.
        amount: i64,
        /// Currency.
        currency: Currency,
        /// The invoice charged.
        invoice_id: String,
        /// Which attempt at this invoice (1 for the first).
        attempt: u32,
    },
    /// Give money back.
    Refund {
        /// Minor units.
        amount: i64,
        /// Currency.
        currency: Currency,
        /// Why.
        reason: String,
    },
    /// Cancel a charge that has not settled.
    Void {
        /// The invoice whose charge is voided.
        invoice_id: String,
        /// Minor units voided.
        amount: i64,
        /// Currency.
        currency: Currency,
    },
    /// Tell someone (the customer, the vendor, an operator).
    Notify {
        /// What about, as a stable topic (`payment_failed`, `entitlement_active`).
        topic: String,
        /// A sentence for humans.
        message: String,
    },
    /// Grant access to a SKU.
    Provision {
        /// The SKU.
        sku: Sku,
    },
    /// Take access away.
    Revoke {
        /// The SKU.
        sku: Sku,
    },
    /// Put an item on an escalation queue.
    Escalate {
        /// 1: manager, 2: director.
        level: u8,
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
}

impl EffectKind {
    /// The snake_case kind.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Charge { .. } => "charge",
            Self::Refund { .. } => "refund",
            Self::Void { .. } => "void",
            Self::Notify { .. } => "notify",
            Self::Provision { .. } => "provision",
            Self::Revoke { .. } => "revoke",
            Self::Escalate { .. } => "escalate",
        }
    }

    /// A notification.
    pub fn notify(topic: &str, message: impl Into<String>) -> Self {
        Self::Notify {
            topic: topic.to_owned(),
            message: message.into(),
        }
    }
}

/// Declares a governor's state enum, its snake_case names, and its [`GovernorState`] impl over the
/// given transition table (the enum's variant order is the order of SPEC 2.2).
macro_rules! governor_states {
    ($(#[$doc:meta])* $name:ident for $gov:expr, table $table:ident; $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The snake_case name, as on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl $crate::governor::GovernorState for $name {
            const GOVERNOR: $crate::governor::GovernorKind = $gov;
            const ALL: &'static [Self] = &[$(Self::$variant,)+];
            fn name(self) -> &'static str {
                self.as_str()
            }
            fn transitions() -> &'static [$crate::governor::Transition<Self>] {
                $table
            }
        }
    };
}
pub(crate) use governor_states;
