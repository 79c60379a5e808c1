//! The product-catalog governor: SKU definitions, their publication and their prices.
//!
//! A product is submitted as a `draft`; publishing validates it against the schema (`validating`)
//! and ends `published` or `rejected`. A price change in the future waits as `price_change_pending`
//! until it comes into force. Deprecated products sell no more; retired ones are gone. Every command
//! carries the version it expects, and a stale one is a `concurrent_update` rejection.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};
use crate::ids::{Resource, Sku};
use crate::input::{
    ProductDefinition, BILLING_PERIOD_DAYS_MAX, QUOTAS_MAX, TRIAL_DAYS_MAX, USAGE_MAX,
};
use crate::money::{Currency, AMOUNT_MAX};
use crate::timers::{TimerCommand, TimerKind};

governor_states! {
    /// The seven product-catalog states of SPEC 2.2.
    ProductState for GovernorKind::ProductCatalog, table TABLE;
    /// Submitted, not on sale.
    Draft => "draft",
    /// Being checked against the schema.
    Validating => "validating",
    /// Failed validation; may be resubmitted.
    Rejected => "rejected",
    /// On sale.
    Published => "published",
    /// On sale; a new price is announced.
    PriceChangePending => "price_change_pending",
    /// No new subscriptions.
    Deprecated => "deprecated",
    /// Withdrawn.
    Retired => "retired",
}

use ProductState as S;

const TABLE: &[Transition<S>] = &[
    row(None, S::Draft, "product_submitted"),
    row(Some(S::Draft), S::Draft, "product_submitted"),
    row(Some(S::Rejected), S::Draft, "product_submitted"),
    row(Some(S::Draft), S::Validating, "product_published"),
    row(Some(S::Validating), S::Published, "schema valid"),
    row(Some(S::Validating), S::Rejected, "schema invalid"),
    row(
        Some(S::Published),
        S::PriceChangePending,
        "product_price_changed (future)",
    ),
    row(
        Some(S::Published),
        S::Published,
        "product_price_changed (now)",
    ),
    row(
        Some(S::PriceChangePending),
        S::PriceChangePending,
        "product_price_changed (future)",
    ),
    row(
        Some(S::PriceChangePending),
        S::Published,
        "price_change_effective, product_price_changed (now)",
    ),
    row(Some(S::Published), S::Deprecated, "product_deprecated"),
    row(
        Some(S::PriceChangePending),
        S::Deprecated,
        "product_deprecated",
    ),
    row(Some(S::Deprecated), S::Retired, "product_retired"),
    row(Some(S::Draft), S::Retired, "product_retired"),
    row(Some(S::Rejected), S::Retired, "product_retired"),
];

impl ProductState {
    /// Whether new subscriptions may start. A pending price change keeps the product on sale.
    pub fn on_sale(self) -> bool {
        matches!(self, S::Published | S::PriceChangePending)
    }
}

/// A price announced for later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledPrice {
    /// Minor units per period.
    pub price: i64,
    /// When it applies.
    pub effective_at: Timestamp,
}

/// The product record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The SKU.
    pub sku: Sku,
    /// The state.
    pub state: ProductState,
    /// Bumped by every accepted command; commands must name it.
    pub version: u64,
    /// Display name.
    pub name: String,
    /// Price per period in minor units.
    pub price: i64,
    /// Currency.
    pub currency: Currency,
    /// Period length in days.
    pub billing_period_days: u32,
    /// Trial length in days.
    pub trial_days: u32,
    /// Whether entitlements need an operator's approval.
    pub requires_approval: bool,
    /// Limits per resource.
    pub quotas: BTreeMap<Resource, u64>,
    /// An announced price change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_price: Option<ScheduledPrice>,
    /// Why validation rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<String>,
}

impl Record for Product {
    type State = ProductState;
    fn state(&self) -> S {
        self.state
    }
}

/// Finds products by SKU, for deciding customer events. Implemented by whatever holds the catalog.
pub trait Catalog {
    /// The product, if the SKU is known.
    fn product(&self, sku: &Sku) -> Option<&Product>;
}

impl Catalog for BTreeMap<Sku, Product> {
    fn product(&self, sku: &Sku) -> Option<&Product> {
        self.get(sku)
    }
}

/// The few products one event reads (an event names at most one SKU), found by a scan: no map
/// is built and no product copied for each decision.
impl Catalog for Vec<Product> {
    fn product(&self, sku: &Sku) -> Option<&Product> {
        self.iter().find(|p| &p.sku == sku)
    }
}

/// What the product-catalog governor decides on (the commands, version-checked).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProductInput {
    /// Create or replace a draft.
    Submit(ProductDefinition),
    /// Validate and publish.
    Publish,
    /// A new price, now or later.
    ChangePrice {
        /// Minor units per period.
        price: i64,
        /// When it applies (`None` or past: now).
        effective_at: Option<Timestamp>,
    },
    /// Stop selling.
    Deprecate,
    /// Withdraw.
    Retire,
    /// The scheduled price comes into force.
    PriceEffective,
}

impl ProductInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Submit(_) => "product_submitted",
            Self::Publish => "product_published",
            Self::ChangePrice { .. } => "product_price_changed",
            Self::Deprecate => "product_deprecated",
            Self::Retire => "product_retired",
            Self::PriceEffective => "price_change_effective",
        }
    }
}

/// The schema a product must satisfy to be published (SPEC 2.2): id pattern, price >= 0, known
/// currency, sensible period, trial and quota limits.
pub fn validate_schema(p: &Product) -> Result<(), String> {
    p.sku.validate().map_err(|e| e.to_string())?;
    if p.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    if !(0..=AMOUNT_MAX).contains(&p.price) {
        return Err(format!("price {} is outside 0..={AMOUNT_MAX}", p.price));
    }
    p.currency.validate().map_err(|e| e.to_string())?;
    if p.billing_period_days == 0 || p.billing_period_days > BILLING_PERIOD_DAYS_MAX {
        return Err(format!("billing period of {} days", p.billing_period_days));
    }
    if p.trial_days > TRIAL_DAYS_MAX {
        return Err(format!("trial of {} days", p.trial_days));
    }
    if p.quotas.len() > QUOTAS_MAX {
        return Err(format!("{} quotas, at most {QUOTAS_MAX}", p.quotas.len()));
    }
    for (resource, limit) in &p.quotas {
        resource.validate().map_err(|e| e.to_string())?;
        if *limit == 0 || *limit > USAGE_MAX {
            return Err(format!("quota {resource} of {limit}"));
        }
    }
    Ok(())
}

/// Decides one command on `sku`. `current` is `None` for an unknown SKU; `expected_version` is
/// the version the sender saw (0 for a new SKU).
pub fn decide(
    sku: &Sku,
    current: Option<&Product>,
    input: &ProductInput,
    expected_version: u64,
    now: Timestamp,
) -> Decided<Product> {
    use ProductInput as I;
    let actual = current.map_or(0, |p| p.version);
    if !matches!(input, I::PriceEffective) && expected_version != actual {
        return Err(Rejection::ConcurrentUpdate {
            expected: expected_version,
            actual,
        });
    }
    let reject = || Rejection::invalid(current.map(|p| p.state), input.name());
    let changed = |d: Decision<Product>| Ok(Verdict::Changed(d));

    let Some(p) = current else {
        return match input {
            I::Submit(def) => changed(Decision::to(draft(sku, def, 1), format!("{sku} drafted"))),
            _ => Err(Rejection::UnknownProduct {
                sku: sku.to_string(),
            }),
        };
    };
    let bump = |state: S| Product {
        state,
        version: p.version + 1,
        ..p.clone()
    };

    match input {
        I::Submit(def) if matches!(p.state, S::Draft | S::Rejected) => changed(Decision::to(
            draft(sku, def, p.version + 1),
            format!("{sku} draft replaced"),
        )),
        I::Publish if p.state == S::Draft => match validate_schema(p) {
            Ok(()) => changed(
                Decision::to(
                    Product {
                        rejection: None,
                        ..bump(S::Published)
                    },
                    format!("{sku} validated and published"),
                )
                .via(S::Validating)
                .effect(EffectKind::notify(
                    "product_published",
                    format!("{sku} is on sale"),
                )),
            ),
            Err(why) => changed(
                Decision::to(
                    Product {
                        rejection: Some(why.clone()),
                        ..bump(S::Rejected)
                    },
                    format!("{sku} rejected: {why}"),
                )
                .via(S::Validating),
            ),
        },
        I::ChangePrice {
            price,
            effective_at,
        } if p.state.on_sale() => match effective_at {
            Some(at) if *at > now => changed(
                Decision::to(
                    Product {
                        scheduled_price: Some(ScheduledPrice {
                            price: *price,
                            effective_at: *at,
                        }),
                        ..bump(S::PriceChangePending)
                    },
                    format!("{sku} price {price} {} from {at}", p.currency),
                )
                .timer(TimerCommand::Set {
                    kind: TimerKind::PriceChangeEffective,
                    due_at: *at,
                }),
            ),
            _ => changed(
                Decision::to(
                    Product {
                        price: *price,
                        scheduled_price: None,
                        ..bump(S::Published)
                    },
                    format!("{sku} price now {price} {}", p.currency),
                )
                .timer(TimerCommand::Cancel {
                    kind: TimerKind::PriceChangeEffective,
                }),
            ),
        },
        I::PriceEffective if p.state == S::PriceChangePending => {
            let price = p.scheduled_price.as_ref().map_or(p.price, |s| s.price);
            changed(Decision::to(
                Product {
                    price,
                    scheduled_price: None,
                    ..bump(S::Published)
                },
                format!("{sku} price {price} {} in force", p.currency),
            ))
        }
        I::Deprecate if p.state.on_sale() => changed(
            Decision::to(
                Product {
                    scheduled_price: None,
                    ..bump(S::Deprecated)
                },
                format!("{sku} deprecated"),
            )
            .timer(TimerCommand::Cancel {
                kind: TimerKind::PriceChangeEffective,
            }),
        ),
        I::Retire if matches!(p.state, S::Deprecated | S::Draft | S::Rejected) => {
            changed(Decision::to(bump(S::Retired), format!("{sku} retired")))
        }
        _ => Err(reject()),
    }
}

fn draft(sku: &Sku, def: &ProductDefinition, version: u64) -> Product {
    Product {
        sku: sku.clone(),
        state: S::Draft,
        version,
        name: def.name.clone(),
        price: def.price,
        currency: def.currency.clone(),
        billing_period_days: def.billing_period_days,
        trial_days: def.trial_days,
        requires_approval: def.requires_approval,
        quotas: def.quotas.clone(),
        scheduled_price: None,
        rejection: None,
    }
}
