//! A deterministic, in-memory timeline: inputs and timer firings applied in time order to plain
//! maps, with the clock passed in explicitly.
//!
//! It is not durable and not concurrent: it is the core's own reference model, used by the
//! timeline tests, the property tests and `marketgov demo` until the durable engine exists. It also
//! keeps the log of accepted inputs with their contexts, from which [`Timeline::replay`] rebuilds
//! the same state (SPEC 1.8).

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::customer::Customer;
use crate::governors::product_catalog::Product;
use crate::ids::{CustomerId, Sku};
use crate::input::{CatalogCommand, CustomerEvent, EventKind, Input, InputError};
use crate::orchestrator::{decide_catalog, decide_event, CatalogResult, EventContext, EventResult};
use crate::timers::TimerKind;

/// Most timer firings one `advance_to` may carry out: a bound against a timer that re-arms itself
/// at the same instant forever (which would be a bug).
pub const FIRINGS_PER_ADVANCE_MAX: usize = 100_000;

/// The answer to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// A customer event's result (boxed: it holds the next customer state).
    Customer(Box<EventResult>),
    /// A catalog command's result (boxed like the other).
    Catalog(Box<CatalogResult>),
}

impl Decided {
    /// Whether the decision was applied.
    pub fn applied(&self) -> bool {
        match self {
            Self::Customer(r) => r.status.applies(),
            Self::Catalog(r) => r.next.is_some(),
        }
    }
}

/// One accepted input with the context it was decided in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedInput {
    /// The input.
    pub input: Input,
    /// Its context.
    pub ctx: EventContext,
}

/// Customers, catalog and pending timers in memory, moved by an explicit clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Customers by id.
    pub customers: BTreeMap<CustomerId, Customer>,
    /// Products by SKU.
    pub catalog: BTreeMap<Sku, Product>,
    /// The current instant.
    pub now: Option<Timestamp>,
    /// Inputs applied, in order, with their contexts.
    pub log: Vec<LoggedInput>,
    next_event: u64,
}

impl Timeline {
    /// An empty timeline starting at `now`.
    pub fn starting_at(now: Timestamp) -> Self {
        Self {
            now: Some(now),
            ..Self::default()
        }
    }

    fn now(&self) -> Timestamp {
        self.now.unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn context(&mut self) -> EventContext {
        self.next_event += 1;
        EventContext {
            event_id: format!("evt-{}", self.next_event),
            now: self.now(),
        }
    }

    /// Decides one input now and applies it if accepted.
    pub fn submit(&mut self, input: Input) -> Result<Decided, InputError> {
        let ctx = self.context();
        self.decide_with(input, ctx)
    }

    /// Decides one input in a given context and applies it if accepted.
    pub fn decide_with(&mut self, input: Input, ctx: EventContext) -> Result<Decided, InputError> {
        let decided = match &input {
            Input::Customer(event) => {
                let mut result = decide_event(
                    self.customers.get(&event.customer_id),
                    event,
                    &self.catalog,
                    &ctx,
                )?;
                if let Some(next) = result.next.take() {
                    self.customers
                        .insert(event.customer_id.clone(), next.clone());
                    result.next = Some(next);
                }
                Decided::Customer(Box::new(result))
            }
            Input::Catalog(command) => {
                let result = decide_catalog(self.catalog.get(command.sku()), command, &ctx)?;
                if let Some(next) = &result.next {
                    self.catalog.insert(command.sku().clone(), next.clone());
                }
                Decided::Catalog(Box::new(result))
            }
        };
        if decided.applied() {
            self.log.push(LoggedInput { input, ctx });
        }
        Ok(decided)
    }

    /// Parses, validates and submits one JSON input.
    pub fn submit_json(&mut self, text: &str) -> Result<Decided, InputError> {
        self.submit(Input::from_json(text)?)
    }

    /// The earliest pending timer: `(due_at, owner)`.
    pub fn next_timer(&self) -> Option<(Timestamp, TimerOwner)> {
        let customer = self.customers.values().flat_map(|c| {
            c.timers
                .iter()
                .map(|(k, at)| (*at, TimerOwner::Customer(c.customer_id.clone(), *k)))
        });
        let product = self.catalog.values().filter_map(|p| {
            p.scheduled_price
                .as_ref()
                .map(|s| (s.effective_at, TimerOwner::Product(p.sku.clone())))
        });
        customer.chain(product).min()
    }

    /// Moves the clock to `until`, firing every timer due by then in deadline order, each at its
    /// own deadline. Returns each firing with what it decided.
    pub fn advance_to(&mut self, until: Timestamp) -> Vec<Firing> {
        let mut fired = Vec::new();
        while fired.len() < FIRINGS_PER_ADVANCE_MAX {
            let Some((due_at, owner)) = self.next_timer().filter(|(at, _)| *at <= until) else {
                break;
            };
            // A timer fires at its deadline, or at once if the clock already passed it.
            self.now = Some(due_at.max(self.now()));
            let input = match owner {
                TimerOwner::Customer(customer_id, timer) => Input::Customer(CustomerEvent {
                    customer_id,
                    occurred_at: None,
                    kind: EventKind::TimerFired { timer, due_at },
                }),
                TimerOwner::Product(sku) => Input::Catalog(CatalogCommand::TimerFired {
                    sku,
                    timer: TimerKind::PriceChangeEffective,
                    due_at,
                }),
            };
            let at = self.now();
            match self.submit(input.clone()) {
                Ok(decided) => {
                    let applied = decided.applied();
                    fired.push(Firing { at, input, decided });
                    if !applied {
                        // A refused firing would stay due forever; it is a bug, surfaced by the
                        // result, and the loop stops rather than spin.
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.now = Some(until.max(self.now()));
        fired
    }

    /// Rebuilds a timeline from a log by deciding every input again in its recorded context.
    pub fn replay(log: &[LoggedInput]) -> Result<Self, InputError> {
        let mut timeline = Self::default();
        for entry in log {
            timeline.now = Some(entry.ctx.now);
            timeline.decide_with(entry.input.clone(), entry.ctx.clone())?;
        }
        timeline.next_event = log.len() as u64;
        Ok(timeline)
    }
}

/// One timer firing during [`Timeline::advance_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// When it fired.
    pub at: Timestamp,
    /// The firing, as an input.
    pub input: Input,
    /// What it decided.
    pub decided: Decided,
}

/// Whose timer is due.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerOwner {
    /// A customer's timer.
    Customer(CustomerId, TimerKind),
    /// A product's scheduled price.
    Product(Sku),
}
