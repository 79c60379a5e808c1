//! Every input the core decides on: customer-lifecycle events (SPEC 2.1), the further inputs that
//! drive each governor through all of its states, catalog commands, and timer firings.
//!
//! On the wire each input is a JSON object with a snake_case `type` tag. Deserialization only shapes
//! the data; [`Input::validate`] checks every field and answers a typed [`InputError`] naming the
//! field. The orchestrator validates before it decides, so nothing unvalidated is ever decided.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, PaymentId, RefundId, Resource, Sku, SubscriptionId};
use crate::money::{check_amount, Currency};
use crate::timers::TimerKind;

/// Longest free-text field (reasons, names, actors), in bytes.
pub const TEXT_LEN_MAX: usize = 1024;
/// Most quota entries a product may define.
pub const QUOTAS_MAX: usize = 64;
/// Longest billing period, in days (ten years).
pub const BILLING_PERIOD_DAYS_MAX: u32 = 3660;
/// Longest trial, in days.
pub const TRIAL_DAYS_MAX: u32 = 366;
/// Largest usage or limit value accepted (2^53, so JSON clients without 64-bit integers agree).
pub const USAGE_MAX: u64 = 1 << 53;

/// A way an input can be wrong. Each names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The input is not valid JSON or does not have the shape of any input.
    #[error("malformed input: {message}")]
    Malformed {
        /// What the parser said.
        message: String,
    },
    /// The `type` tag names no known input.
    #[error("unknown input type `{type_name}`")]
    UnknownType {
        /// The tag as received (truncated).
        type_name: String,
    },
    /// A required field is empty.
    #[error("`{field}` must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A field is longer than allowed.
    #[error("`{field}` is {len} bytes long, the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An identifier holds a character outside `[A-Za-z0-9._:@-]`.
    #[error("`{field}` contains the character {character:?}, allowed are A-Z a-z 0-9 . _ : @ -")]
    BadCharacter {
        /// The field.
        field: &'static str,
        /// The first bad character.
        character: char,
    },
    /// Money below zero.
    #[error("`{field}` is {amount}, money must not be negative")]
    NegativeAmount {
        /// The field.
        field: &'static str,
        /// The amount.
        amount: i64,
    },
    /// Money above the accepted maximum.
    #[error("`{field}` is {amount}, the limit is {max}")]
    AmountTooLarge {
        /// The field.
        field: &'static str,
        /// The amount.
        amount: i64,
        /// The limit.
        max: i64,
    },
    /// A currency code outside the accepted list.
    #[error("unknown currency `{code}`")]
    UnknownCurrency {
        /// The code as received (truncated).
        code: String,
    },
    /// A number outside its range.
    #[error("`{field}` is {value}, allowed is {min}..={max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Two fields that must differ are equal, or a similar cross-field rule.
    #[error("`{field}`: {rule}")]
    Inconsistent {
        /// The field.
        field: &'static str,
        /// The rule broken.
        rule: &'static str,
    },
    /// Too many entries in a map or list.
    #[error("`{field}` has {count} entries, the limit is {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Entries received.
        count: usize,
        /// The limit.
        max: usize,
    },
}

fn check_text(field: &'static str, value: &str, required: bool) -> Result<(), InputError> {
    if required && value.trim().is_empty() {
        return Err(InputError::Empty { field });
    }
    if value.len() > TEXT_LEN_MAX {
        return Err(InputError::TooLong {
            field,
            len: value.len(),
            max: TEXT_LEN_MAX,
        });
    }
    Ok(())
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), InputError> {
    if value < min || value > max {
        return Err(InputError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn default_true() -> bool {
    true
}

/// The cloud marketplace that sells a subscription, and its ids for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketplaceRef {
    /// Which marketplace (`gcp`).
    pub name: String,
    /// The provider (partner) id at the marketplace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The buyer's account id at the marketplace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

impl MarketplaceRef {
    fn validate(&self) -> Result<(), InputError> {
        crate::ids::check_id("marketplace.name", &self.name)?;
        if let Some(p) = &self.provider_id {
            crate::ids::check_id("marketplace.provider_id", p)?;
        }
        if let Some(a) = &self.account_id {
            crate::ids::check_id("marketplace.account_id", a)?;
        }
        Ok(())
    }
}

/// How a compliance flag is graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagSeverity {
    /// Needs a look: `flagged`.
    #[default]
    Review,
    /// Opens an investigation: `under_investigation`.
    Investigate,
    /// Stops all business: `blocked`.
    Block,
}

/// How a payment dispute ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// The vendor kept the money.
    Won,
    /// The money went back to the payer and is owed again.
    Lost,
}

/// A customer-lifecycle event: what happened, to whom, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerEvent {
    /// The customer stream the event belongs to.
    pub customer_id: CustomerId,
    /// When it happened at the source. Defaults to the instant it is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<Timestamp>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of customer events, tagged by `type` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The customer subscribes to a published SKU.
    CustomerSubscribes {
        /// The SKU.
        sku: Sku,
        /// The marketplace selling the subscription, when one does (its answers are effects).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        marketplace: Option<MarketplaceRef>,
    },
    /// The customer moves from one plan to another (an upgrade or a downgrade).
    CustomerUpgrades {
        /// The plan the sender believes is current.
        old_sku: Sku,
        /// The plan wanted.
        new_sku: Sku,
    },
    /// The payment processor settled a payment.
    PaymentProcessed {
        /// Minor units received.
        amount: i64,
        /// Currency received.
        currency: Currency,
        /// The processor's payment id; a repeat with the same amount is a replay.
        payment_id: PaymentId,
    },
    /// A charge failed.
    PaymentFailed {
        /// The processor's reason code (`card_declined`, `stolen_card`, ...).
        reason: String,
        /// The processor's payment id.
        payment_id: PaymentId,
        /// Not retryable (stolen card, account closed). Also implied by a hard reason code.
        #[serde(default)]
        hard_decline: bool,
    },
    /// A usage report for one resource against its limit.
    UsageExceedsQuota {
        /// The resource.
        resource: Resource,
        /// Usage so far in the period.
        current_usage: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The customer cancels.
    CustomerCancels {
        /// Why, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// End at the end of the paid period (default) rather than now.
        #[serde(default = "default_true")]
        at_period_end: bool,
    },
    /// An operator suspends the customer. A reason containing "fraud" is a fraud suspension.
    ManualSuspension {
        /// Why.
        reason: String,
        /// Who.
        actor: String,
    },
    /// A subscription's next period is due.
    RenewalDue {
        /// The subscription renewing.
        subscription_id: SubscriptionId,
    },
    /// An operator approves a pending entitlement.
    EntitlementApproved {
        /// Who approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// An operator rejects a pending entitlement.
    EntitlementRejected {
        /// Why.
        reason: String,
        /// Who rejected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// KYC passed.
    AccountVerified {},
    /// KYC failed.
    AccountVerificationFailed {
        /// Why.
        reason: String,
    },
    /// Compliance screening found nothing, or an investigation closed clean.
    ComplianceCleared {},
    /// Compliance screening or monitoring raised a flag.
    ComplianceFlagged {
        /// Why.
        reason: String,
        /// How serious.
        #[serde(default)]
        severity: FlagSeverity,
    },
    /// An operator lifts a suspension.
    CustomerReinstated {
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// A cancellation at period end is taken back before the end.
    CancellationReverted {},
    /// A payer disputed a recorded payment (a chargeback).
    PaymentDisputed {
        /// The payment disputed.
        payment_id: PaymentId,
        /// Why, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A dispute ended.
    DisputeResolved {
        /// The payment disputed.
        payment_id: PaymentId,
        /// How it ended.
        outcome: DisputeOutcome,
    },
    /// Security locks the account.
    AccountLocked {
        /// Why.
        reason: String,
    },
    /// Security unlocks the account.
    AccountUnlocked {},
    /// The account is closed for good.
    AccountClosed {
        /// Why, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The platform sees the customer's tenant slot starving its neighbours.
    TenantContentionDetected {},
    /// The contention is over.
    TenantContentionCleared {},
    /// The vendor broke its service level towards the customer.
    SlaViolated {
        /// The metric violated (`availability`, `latency_p99`).
        metric: String,
    },
    /// The payment processor completed a refund.
    RefundProcessed {
        /// Minor units refunded.
        amount: i64,
        /// Currency.
        currency: Currency,
        /// The processor's refund id.
        refund_id: RefundId,
    },
    /// A stored timer came due (written to the log like any other event).
    TimerFired {
        /// Which timer.
        timer: TimerKind,
        /// The deadline it was set for; must match the pending timer.
        due_at: Timestamp,
    },
}

/// Reason codes that mean a decline is final, whatever `hard_decline` says.
pub const HARD_DECLINE_REASONS: &[&str] = &[
    "stolen_card",
    "lost_card",
    "fraudulent",
    "account_closed",
    "pickup_card",
    "restricted_card",
];

/// Reason codes that suggest fraud to compliance.
pub const FRAUD_DECLINE_REASONS: &[&str] =
    &["stolen_card", "lost_card", "fraudulent", "pickup_card"];

impl EventKind {
    /// The snake_case name of the input, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CustomerSubscribes { .. } => "customer_subscribes",
            Self::CustomerUpgrades { .. } => "customer_upgrades",
            Self::PaymentProcessed { .. } => "payment_processed",
            Self::PaymentFailed { .. } => "payment_failed",
            Self::UsageExceedsQuota { .. } => "usage_exceeds_quota",
            Self::CustomerCancels { .. } => "customer_cancels",
            Self::ManualSuspension { .. } => "manual_suspension",
            Self::RenewalDue { .. } => "renewal_due",
            Self::EntitlementApproved { .. } => "entitlement_approved",
            Self::EntitlementRejected { .. } => "entitlement_rejected",
            Self::AccountVerified {} => "account_verified",
            Self::AccountVerificationFailed { .. } => "account_verification_failed",
            Self::ComplianceCleared {} => "compliance_cleared",
            Self::ComplianceFlagged { .. } => "compliance_flagged",
            Self::CustomerReinstated { .. } => "customer_reinstated",
            Self::CancellationReverted {} => "cancellation_reverted",
            Self::PaymentDisputed { .. } => "payment_disputed",
            Self::DisputeResolved { .. } => "dispute_resolved",
            Self::AccountLocked { .. } => "account_locked",
            Self::AccountUnlocked {} => "account_unlocked",
            Self::AccountClosed { .. } => "account_closed",
            Self::TenantContentionDetected {} => "tenant_contention_detected",
            Self::TenantContentionCleared {} => "tenant_contention_cleared",
            Self::SlaViolated { .. } => "sla_violated",
            Self::RefundProcessed { .. } => "refund_processed",
            Self::TimerFired { .. } => "timer_fired",
        }
    }

    /// Whether a suspension reason marks a fraud suspension.
    pub fn is_fraud_reason(reason: &str) -> bool {
        reason.to_ascii_lowercase().contains("fraud")
    }

    fn validate(&self) -> Result<(), InputError> {
        match self {
            Self::CustomerSubscribes { sku, marketplace } => {
                sku.validate()?;
                marketplace
                    .as_ref()
                    .map_or(Ok(()), MarketplaceRef::validate)
            }
            Self::CustomerUpgrades { old_sku, new_sku } => {
                old_sku.validate()?;
                new_sku.validate()?;
                if old_sku == new_sku {
                    return Err(InputError::Inconsistent {
                        field: "new_sku",
                        rule: "must differ from old_sku",
                    });
                }
                Ok(())
            }
            Self::PaymentProcessed {
                amount,
                currency,
                payment_id,
            } => {
                check_amount("amount", *amount)?;
                currency.validate()?;
                payment_id.validate()
            }
            Self::PaymentFailed {
                reason, payment_id, ..
            } => {
                check_text("reason", reason, true)?;
                payment_id.validate()
            }
            Self::UsageExceedsQuota {
                resource,
                current_usage,
                limit,
            } => {
                resource.validate()?;
                check_range("current_usage", *current_usage, 0, USAGE_MAX)?;
                check_range("limit", *limit, 1, USAGE_MAX)
            }
            Self::CustomerCancels { reason, .. } => reason
                .as_deref()
                .map_or(Ok(()), |r| check_text("reason", r, false)),
            Self::ManualSuspension { reason, actor } => {
                check_text("reason", reason, true)?;
                check_text("actor", actor, true)
            }
            Self::RenewalDue { subscription_id } => subscription_id.validate(),
            Self::EntitlementApproved { actor } | Self::CustomerReinstated { actor } => actor
                .as_deref()
                .map_or(Ok(()), |a| check_text("actor", a, false)),
            Self::EntitlementRejected { reason, actor } => {
                check_text("reason", reason, true)?;
                actor
                    .as_deref()
                    .map_or(Ok(()), |a| check_text("actor", a, false))
            }
            Self::AccountVerificationFailed { reason }
            | Self::AccountLocked { reason }
            | Self::ComplianceFlagged { reason, .. } => check_text("reason", reason, true),
            Self::AccountClosed { reason } => reason
                .as_deref()
                .map_or(Ok(()), |r| check_text("reason", r, false)),
            Self::PaymentDisputed { payment_id, reason } => {
                payment_id.validate()?;
                reason
                    .as_deref()
                    .map_or(Ok(()), |r| check_text("reason", r, false))
            }
            Self::DisputeResolved { payment_id, .. } => payment_id.validate(),
            Self::SlaViolated { metric } => check_text("metric", metric, true),
            Self::RefundProcessed {
                amount,
                currency,
                refund_id,
            } => {
                check_amount("amount", *amount)?;
                currency.validate()?;
                refund_id.validate()
            }
            Self::AccountVerified {}
            | Self::ComplianceCleared {}
            | Self::CancellationReverted {}
            | Self::AccountUnlocked {}
            | Self::TenantContentionDetected {}
            | Self::TenantContentionCleared {}
            | Self::TimerFired { .. } => Ok(()),
        }
    }
}

impl CustomerEvent {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), InputError> {
        self.customer_id.validate()?;
        self.kind.validate()
    }
}

/// A product definition, as submitted to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductDefinition {
    /// Display name.
    pub name: String,
    /// Price per billing period, in minor units.
    pub price: i64,
    /// Currency of the price.
    pub currency: Currency,
    /// Length of one billing period.
    pub billing_period_days: u32,
    /// Free days before the first charge (0: none).
    #[serde(default)]
    pub trial_days: u32,
    /// Whether an operator must approve each new entitlement.
    #[serde(default)]
    pub requires_approval: bool,
    /// Limits per resource.
    #[serde(default)]
    pub quotas: BTreeMap<Resource, u64>,
}

impl ProductDefinition {
    /// The shape checks done on input: bounds, lengths, money, currency. A draft may still be
    /// incomplete (no name, a period of 0 days, a quota of 0); the catalog governor's schema check
    /// at publication refuses those, so an incomplete product is never sold.
    pub fn validate(&self) -> Result<(), InputError> {
        check_text("name", &self.name, false)?;
        check_amount("price", self.price)?;
        self.currency.validate()?;
        check_range(
            "billing_period_days",
            u64::from(self.billing_period_days),
            0,
            u64::from(BILLING_PERIOD_DAYS_MAX),
        )?;
        check_range(
            "trial_days",
            u64::from(self.trial_days),
            0,
            u64::from(TRIAL_DAYS_MAX),
        )?;
        if self.quotas.len() > QUOTAS_MAX {
            return Err(InputError::TooMany {
                field: "quotas",
                count: self.quotas.len(),
                max: QUOTAS_MAX,
            });
        }
        for (resource, limit) in &self.quotas {
            resource.validate()?;
            check_range("quotas", *limit, 0, USAGE_MAX)?;
        }
        Ok(())
    }
}

/// A command to the product catalog, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CatalogCommand {
    /// Creates a draft, or replaces a draft or rejected product's definition.
    ProductSubmitted {
        /// The SKU.
        sku: Sku,
        /// The catalog version the sender saw (0 for a new SKU).
        #[serde(default)]
        expected_version: u64,
        /// The definition.
        #[serde(flatten)]
        definition: ProductDefinition,
    },
    /// Validates a draft against the schema and publishes it, or rejects it.
    ProductPublished {
        /// The SKU.
        sku: Sku,
        /// The version the sender saw.
        expected_version: u64,
    },
    /// Announces a new price, in force at `effective_at` (now when absent or past).
    ProductPriceChanged {
        /// The SKU.
        sku: Sku,
        /// The version the sender saw.
        expected_version: u64,
        /// The new price, in the product's currency.
        price: i64,
        /// When the price applies.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_at: Option<Timestamp>,
    },
    /// No new subscriptions; existing ones continue.
    ProductDeprecated {
        /// The SKU.
        sku: Sku,
        /// The version the sender saw.
        expected_version: u64,
    },
    /// Withdrawn for good.
    ProductRetired {
        /// The SKU.
        sku: Sku,
        /// The version the sender saw.
        expected_version: u64,
    },
    /// A product timer came due.
    TimerFired {
        /// The SKU.
        sku: Sku,
        /// Which timer.
        timer: TimerKind,
        /// The deadline it was set for.
        due_at: Timestamp,
    },
}

impl CatalogCommand {
    /// The SKU the command is about.
    pub fn sku(&self) -> &Sku {
        match self {
            Self::ProductSubmitted { sku, .. }
            | Self::ProductPublished { sku, .. }
            | Self::ProductPriceChanged { sku, .. }
            | Self::ProductDeprecated { sku, .. }
            | Self::ProductRetired { sku, .. }
            | Self::TimerFired { sku, .. } => sku,
        }
    }

    /// The snake_case name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ProductSubmitted { .. } => "product_submitted",
            Self::ProductPublished { .. } => "product_published",
            Self::ProductPriceChanged { .. } => "product_price_changed",
            Self::ProductDeprecated { .. } => "product_deprecated",
            Self::ProductRetired { .. } => "product_retired",
            Self::TimerFired { .. } => "timer_fired",
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku().validate()?;
        match self {
            Self::ProductSubmitted { definition, .. } => definition.validate(),
            Self::ProductPriceChanged { price, .. } => check_amount("price", *price),
            _ => Ok(()),
        }
    }
}

/// Any input: a customer event or a catalog command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Input {
    /// Goes to the customer's governors.
    Customer(CustomerEvent),
    /// Goes to the product catalog governor.
    Catalog(CatalogCommand),
}

/// The catalog's `type` tags; every other tag is a customer event.
const CATALOG_TYPES: &[&str] = &[
    "product_submitted",
    "product_published",
    "product_price_changed",
    "product_deprecated",
    "product_retired",
];

impl Input {
    /// Parses and validates one input from JSON.
    pub fn from_json(text: &str) -> Result<Self, InputError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(malformed)?;
        Self::from_value(value)
    }

    /// Shapes and validates one input from a parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, InputError> {
        let Some(type_name) = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
        else {
            return Err(InputError::Malformed {
                message: "missing string field `type`".into(),
            });
        };
        let type_name = type_name.as_str();
        let is_catalog = CATALOG_TYPES.contains(&type_name)
            || (type_name == "timer_fired" && value.get("sku").is_some());
        let input = if is_catalog {
            Self::Catalog(serde_json::from_value(value).map_err(malformed)?)
        } else {
            let known = KNOWN_EVENT_TYPES.contains(&type_name);
            match serde_json::from_value::<CustomerEvent>(value) {
                Ok(event) => Self::Customer(event),
                Err(_) if !known => {
                    return Err(InputError::UnknownType {
                        type_name: type_name.chars().take(64).collect(),
                    })
                }
                Err(e) => return Err(malformed(e)),
            }
        };
        input.validate()?;
        Ok(input)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), InputError> {
        match self {
            Self::Customer(event) => event.validate(),
            Self::Catalog(command) => command.validate(),
        }
    }

    /// The snake_case name of the input.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Customer(event) => event.kind.name(),
            Self::Catalog(command) => command.name(),
        }
    }
}

/// Every customer-event `type` tag.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "customer_subscribes",
    "customer_upgrades",
    "payment_processed",
    "payment_failed",
    "usage_exceeds_quota",
    "customer_cancels",
    "manual_suspension",
    "renewal_due",
    "entitlement_approved",
    "entitlement_rejected",
    "account_verified",
    "account_verification_failed",
    "compliance_cleared",
    "compliance_flagged",
    "customer_reinstated",
    "cancellation_reverted",
    "payment_disputed",
    "dispute_resolved",
    "account_locked",
    "account_unlocked",
    "account_closed",
    "tenant_contention_detected",
    "tenant_contention_cleared",
    "sla_violated",
    "refund_processed",
    "timer_fired",
];

fn malformed(e: serde_json::Error) -> InputError {
    InputError::Malformed {
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_lifecycle_event_of_the_spec_table() {
        let cases = [
            r#"{"type":"customer_subscribes","customer_id":"c1","sku":"pro"}"#,
            r#"{"type":"customer_upgrades","customer_id":"c1","old_sku":"pro","new_sku":"ent"}"#,
            r#"{"type":"payment_processed","customer_id":"c1","amount":9900,"currency":"USD","payment_id":"p1"}"#,
            r#"{"type":"payment_failed","customer_id":"c1","reason":"card_declined","payment_id":"p1"}"#,
            r#"{"type":"usage_exceeds_quota","customer_id":"c1","resource":"api_calls","current_usage":90,"limit":100}"#,
            r#"{"type":"customer_cancels","customer_id":"c1"}"#,
            r#"{"type":"manual_suspension","customer_id":"c1","reason":"fraud","actor":"ops"}"#,
            r#"{"type":"renewal_due","customer_id":"c1","subscription_id":"sub-1"}"#,
        ];
        for text in cases {
            let input = Input::from_json(text);
            assert!(matches!(input, Ok(Input::Customer(_))), "{text}: {input:?}");
        }
        let Ok(Input::Customer(cancel)) =
            Input::from_json(r#"{"type":"customer_cancels","customer_id":"c1"}"#)
        else {
            panic!("cancel did not parse");
        };
        assert_eq!(
            cancel.kind,
            EventKind::CustomerCancels {
                reason: None,
                at_period_end: true
            }
        );
    }

    #[test]
    fn names_each_wrong_field() {
        let check = |text: &str, want: InputError| {
            assert_eq!(Input::from_json(text), Err(want), "{text}");
        };
        check(
            r#"{"type":"payment_processed","customer_id":"c1","amount":-5,"currency":"USD","payment_id":"p"}"#,
            InputError::NegativeAmount {
                field: "amount",
                amount: -5,
            },
        );
        check(
            r#"{"type":"payment_processed","customer_id":"c1","amount":5,"currency":"XYZ","payment_id":"p"}"#,
            InputError::UnknownCurrency { code: "XYZ".into() },
        );
        check(
            r#"{"type":"usage_exceeds_quota","customer_id":"c1","resource":"r","current_usage":5,"limit":0}"#,
            InputError::OutOfRange {
                field: "limit",
                value: 0,
                min: 1,
                max: USAGE_MAX,
            },
        );
        check(
            r#"{"type":"customer_subscribes","customer_id":"bad id","sku":"pro"}"#,
            InputError::BadCharacter {
                field: "customer_id",
                character: ' ',
            },
        );
        check(
            r#"{"type":"customer_upgrades","customer_id":"c","old_sku":"a","new_sku":"a"}"#,
            InputError::Inconsistent {
                field: "new_sku",
                rule: "must differ from old_sku",
            },
        );
        check(
            r#"{"type":"customer_explodes","customer_id":"c"}"#,
            InputError::UnknownType {
                type_name: "customer_explodes".into(),
            },
        );
        assert!(matches!(
            Input::from_json(r#"{"type":"customer_subscribes","customer_id":"c"}"#),
            Err(InputError::Malformed { .. })
        ));
        assert!(matches!(
            Input::from_json("[1,2"),
            Err(InputError::Malformed { .. })
        ));
    }

    #[test]
    fn inputs_survive_a_serialization_round_trip() {
        let cases = [
            r#"{"type":"customer_cancels","customer_id":"c1","reason":"price","at_period_end":false}"#,
            r#"{"type":"payment_failed","customer_id":"c1","reason":"stolen_card","payment_id":"p","hard_decline":true,"occurred_at":"2026-01-01T00:00:00Z"}"#,
            r#"{"type":"compliance_flagged","customer_id":"c1","reason":"pep","severity":"block"}"#,
            r#"{"type":"timer_fired","customer_id":"c1","timer":"payment_retry","due_at":"2026-01-01T01:00:00Z"}"#,
            r#"{"type":"timer_fired","sku":"pro","timer":"price_change_effective","due_at":"2026-01-01T01:00:00Z"}"#,
            r#"{"type":"product_price_changed","sku":"pro","expected_version":3,"price":1200}"#,
            r#"{"type":"account_verified","customer_id":"c1"}"#,
        ];
        for text in cases {
            let input = Input::from_json(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let again = serde_json::to_string(&input)
                .map_err(malformed)
                .and_then(|t| Input::from_json(&t));
            assert_eq!(again, Ok(input), "{text}");
        }
    }

    #[test]
    fn catalog_commands_parse_with_flat_definitions() {
        let text = r#"{"type":"product_submitted","sku":"pro","name":"Pro","price":1000,
            "currency":"USD","billing_period_days":30,"quotas":{"api_calls":1000}}"#;
        let Ok(Input::Catalog(CatalogCommand::ProductSubmitted { definition, .. })) =
            Input::from_json(text)
        else {
            panic!("did not parse");
        };
        assert_eq!(definition.price, 1000);
        assert_eq!(definition.quotas.len(), 1);
        let bad = r#"{"type":"product_submitted","sku":"pro","name":"Pro","price":1000,
            "currency":"USD","billing_period_days":3661}"#;
        assert_eq!(
            Input::from_json(bad),
            Err(InputError::OutOfRange {
                field: "billing_period_days",
                value: 3661,
                min: 0,
                max: u64::from(BILLING_PERIOD_DAYS_MAX)
            })
        );
    }
}
