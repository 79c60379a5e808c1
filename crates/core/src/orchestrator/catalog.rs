//! Catalog commands: the product-catalog governor, keyed by SKU, with optimistic versions.

use serde::{Deserialize, Serialize};

use crate::governor::{GovernorKind, GovernorState, Rejection, Verdict};
use crate::governors::product_catalog::{self, Product, ProductInput, ProductState};
use crate::input::{CatalogCommand, InputError};
use crate::orchestrator::ReportText;
use crate::timers::{TimerCommand, TimerKind};

use super::{Effect, EventContext, EventStatus, GovernorReport, Outcome};

/// The decision on one catalog command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogResult {
    /// The command's id.
    pub event_id: String,
    /// `completed` or `rejected`.
    pub status: EventStatus,
    /// The catalog governor's outcome.
    pub governor: GovernorReport,
    /// Effects to carry out.
    pub effects: Vec<Effect>,
    /// Timer changes for the SKU.
    pub timers: Vec<TimerCommand>,
    /// The product after the command (`None` when rejected).
    pub next: Option<Product>,
}

/// Decides one catalog command against the SKU's product (`None`: unknown SKU).
pub fn decide_catalog(
    current: Option<&Product>,
    command: &CatalogCommand,
    ctx: &EventContext,
) -> Result<CatalogResult, InputError> {
    command.validate()?;
    let sku = command.sku();
    let from = current.map(|p| p.state);
    let (input, expected_version) = match command {
        CatalogCommand::ProductSubmitted {
            expected_version,
            definition,
            ..
        } => (ProductInput::Submit(definition.clone()), *expected_version),
        CatalogCommand::ProductPublished {
            expected_version, ..
        } => (ProductInput::Publish, *expected_version),
        CatalogCommand::ProductPriceChanged {
            expected_version,
            price,
            effective_at,
            ..
        } => (
            ProductInput::ChangePrice {
                price: *price,
                effective_at: *effective_at,
            },
            *expected_version,
        ),
        CatalogCommand::ProductDeprecated {
            expected_version, ..
        } => (ProductInput::Deprecate, *expected_version),
        CatalogCommand::ProductRetired {
            expected_version, ..
        } => (ProductInput::Retire, *expected_version),
        CatalogCommand::TimerFired { timer, due_at, .. } => {
            let pending = current
                .and_then(|p| p.scheduled_price.as_ref())
                .map(|s| s.effective_at);
            if *timer != TimerKind::PriceChangeEffective || pending != Some(*due_at) {
                return Ok(rejected(
                    ctx,
                    from,
                    Rejection::TimerNotPending {
                        timer: timer.name().to_owned(),
                        due_at: due_at.to_string(),
                    },
                ));
            }
            (
                ProductInput::PriceEffective,
                current.map_or(0, |p| p.version),
            )
        }
    };
    let decided = product_catalog::decide(sku, current, &input, expected_version, ctx.now);
    let name = |s: Option<ProductState>| s.map(|s| ReportText::Borrowed(s.as_str()));
    Ok(match decided {
        Ok(Verdict::Changed(d)) if d.is_allowed(from) => CatalogResult {
            event_id: ctx.event_id.clone(),
            status: EventStatus::Completed,
            governor: GovernorReport {
                governor: GovernorKind::ProductCatalog,
                outcome: Outcome::Success,
                from: name(from),
                via: d.via.iter().map(|s| s.as_str().into()).collect(),
                to: Some(d.next.state.as_str().into()),
                message: d.message,
                rejection: None,
            },
            effects: d
                .effects
                .into_iter()
                .enumerate()
                .map(|(i, kind)| Effect {
                    idempotency_key: format!("{}:{i}", ctx.event_id),
                    governor: GovernorKind::ProductCatalog,
                    kind,
                })
                .collect(),
            timers: if matches!(command, CatalogCommand::TimerFired { .. }) {
                // The firing consumes the stored timer.
                let mut timers = d.timers;
                timers.push(TimerCommand::Cancel {
                    kind: TimerKind::PriceChangeEffective,
                });
                timers
            } else {
                d.timers
            },
            next: Some(d.next),
        },
        Ok(Verdict::Changed(d)) => rejected(
            ctx,
            from,
            Rejection::IllegalTransition {
                from: from.map_or("none", GovernorState::name).to_owned(),
                to: d.next.state.as_str().to_owned(),
            },
        ),
        Ok(Verdict::NotApplicable(message)) => CatalogResult {
            event_id: ctx.event_id.clone(),
            status: EventStatus::Completed,
            governor: GovernorReport {
                governor: GovernorKind::ProductCatalog,
                outcome: Outcome::NotApplicable,
                from: name(from),
                via: Vec::new(),
                to: name(from),
                message,
                rejection: None,
            },
            effects: Vec::new(),
            timers: Vec::new(),
            next: current.cloned(),
        },
        Err(rejection) => rejected(ctx, from, rejection),
    })
}

fn rejected(ctx: &EventContext, from: Option<ProductState>, rejection: Rejection) -> CatalogResult {
    CatalogResult {
        event_id: ctx.event_id.clone(),
        status: EventStatus::Rejected,
        governor: GovernorReport {
            governor: GovernorKind::ProductCatalog,
            outcome: Outcome::Failed,
            from: from.map(|s| s.as_str().into()),
            via: Vec::new(),
            to: None,
            message: rejection.to_string().into(),
            rejection: Some(rejection),
        },
        effects: Vec::new(),
        timers: Vec::new(),
        next: None,
    }
}
