//! Workflow cases launched and updated by marketplace agents' envelopes (SPEC 2.4).
//!
//! [`decide_envelope`] is pure: given a validated envelope, the cases it refers to (looked up by the
//! caller through [`Envelope::case_ids`]) and the inventory of the product it reserves, it returns the
//! cases to launch or update, or a typed refusal that changes nothing. Sequence and idempotency
//! rules are applied before, by [`crate::sequence`] and the engine.

mod specs;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use specs::{CaseSpec, CaseState, CaseStatus};

use crate::ids::check_id;
use crate::input::InputError;

/// Longest idempotency key, in bytes (SPEC 1.4).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Most fields an envelope body may carry.
pub const BODY_FIELDS_MAX: usize = 64;
/// Most history entries kept per case; the table's longest path is far shorter.
pub const CASE_HISTORY_MAX: usize = 64;

/// The twelve agent event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AgentEventType {
    /// A new order: launches ProcessOrder.
    OrderCreated,
    /// Stock confirmed: reserves inventory.
    OrderConfirmed,
    /// Shipped.
    OrderShipped,
    /// Delivered (or a return delivered back).
    OrderDelivered,
    /// Returned: launches ProcessReturn.
    OrderReturned,
    /// A vendor joins: launches OnboardVendor.
    VendorOnboarded,
    /// A vendor verified.
    VendorVerified,
    /// A vendor suspended: launches HandleVendorSuspension.
    VendorSuspended,
    /// Payment authorized.
    PaymentAuthorized,
    /// Payment captured.
    PaymentCaptured,
    /// Payment failed: launches HandlePaymentFailure.
    PaymentFailed,
    /// A payout started (or, with a `status`, finished): launches ProcessPayout.
    PayoutInitiated,
}

impl AgentEventType {
    /// All twelve.
    pub const ALL: [AgentEventType; 12] = [
        Self::OrderCreated,
        Self::OrderConfirmed,
        Self::OrderShipped,
        Self::OrderDelivered,
        Self::OrderReturned,
        Self::VendorOnboarded,
        Self::VendorVerified,
        Self::VendorSuspended,
        Self::PaymentAuthorized,
        Self::PaymentCaptured,
        Self::PaymentFailed,
        Self::PayoutInitiated,
    ];

    /// The name, as on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrderCreated => "OrderCreated",
            Self::OrderConfirmed => "OrderConfirmed",
            Self::OrderShipped => "OrderShipped",
            Self::OrderDelivered => "OrderDelivered",
            Self::OrderReturned => "OrderReturned",
            Self::VendorOnboarded => "VendorOnboarded",
            Self::VendorVerified => "VendorVerified",
            Self::VendorSuspended => "VendorSuspended",
            Self::PaymentAuthorized => "PaymentAuthorized",
            Self::PaymentCaptured => "PaymentCaptured",
            Self::PaymentFailed => "PaymentFailed",
            Self::PayoutInitiated => "PayoutInitiated",
        }
    }

    /// The spec this type launches, if it launches one.
    pub fn launches(self) -> Option<CaseSpec> {
        match self {
            Self::OrderCreated => Some(CaseSpec::ProcessOrder),
            Self::OrderReturned => Some(CaseSpec::ProcessReturn),
            Self::VendorOnboarded => Some(CaseSpec::OnboardVendor),
            Self::VendorSuspended => Some(CaseSpec::HandleVendorSuspension),
            Self::PaymentFailed => Some(CaseSpec::HandlePaymentFailure),
            Self::PayoutInitiated => Some(CaseSpec::ProcessPayout),
            _ => None,
        }
    }
}

/// An agent's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The agent's id for the event.
    pub event_id: String,
    /// What happened.
    pub event_type: AgentEventType,
    /// Position in the (agent, region) stream, from 1.
    pub sequence_number: u64,
    /// Deduplication key, at most 255 bytes.
    pub idempotency_key: String,
    /// When the agent emitted it.
    pub timestamp_utc: Timestamp,
    /// The sending agent.
    pub source_agent: String,
    /// The agent's region.
    pub source_region: String,
    /// The event's fields.
    pub event: Map<String, Value>,
}

/// The body fields that say which case an envelope refers to. Both snake_case and the seed's
/// camelCase spellings are accepted.
const KEY_FIELDS: &[(&str, &str, &str)] = &[
    ("order_id", "orderId", "order_id"),
    ("vendor_id", "vendorId", "vendor_id"),
    ("payout_id", "payoutId", "payout_id"),
    ("payment_id", "paymentId", "payment_id"),
];

impl Envelope {
    /// Parses and validates an envelope from JSON.
    pub fn from_json(text: &str) -> Result<Self, InputError> {
        let envelope: Self = serde_json::from_str(text).map_err(|e| InputError::Malformed {
            message: e.to_string(),
        })?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), InputError> {
        check_id("event_id", &self.event_id)?;
        check_id("source_agent", &self.source_agent)?;
        check_id("source_region", &self.source_region)?;
        if self.idempotency_key.is_empty() {
            return Err(InputError::Empty {
                field: "idempotency_key",
            });
        }
        if self.idempotency_key.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(InputError::TooLong {
                field: "idempotency_key",
                len: self.idempotency_key.len(),
                max: IDEMPOTENCY_KEY_LEN_MAX,
            });
        }
        if self.sequence_number == 0 {
            return Err(InputError::OutOfRange {
                field: "sequence_number",
                value: 0,
                min: 1,
                max: u64::MAX,
            });
        }
        if self.event.len() > BODY_FIELDS_MAX {
            return Err(InputError::TooMany {
                field: "event",
                count: self.event.len(),
                max: BODY_FIELDS_MAX,
            });
        }
        let needed = self.key_field();
        let value = self
            .key(needed)
            .ok_or(InputError::Empty { field: needed })?;
        check_id(needed, value)?;
        if self.event_type == AgentEventType::OrderConfirmed {
            self.quantity()?;
        }
        Ok(())
    }

    /// The stream the envelope's sequence number belongs to.
    pub fn stream(&self) -> (&str, &str) {
        (&self.source_agent, &self.source_region)
    }

    /// The body field naming the case this type refers to.
    fn key_field(&self) -> &'static str {
        use AgentEventType as T;
        match self.event_type {
            T::VendorOnboarded | T::VendorVerified | T::VendorSuspended => "vendor_id",
            T::PayoutInitiated => "payout_id",
            _ => "order_id",
        }
    }

    /// A key field's value, under either spelling.
    fn key(&self, field: &str) -> Option<&str> {
        let (snake, camel, _) = KEY_FIELDS.iter().find(|(s, _, _)| *s == field)?;
        self.event
            .get(*snake)
            .or_else(|| self.event.get(*camel))
            .and_then(Value::as_str)
    }

    fn quantity(&self) -> Result<u64, InputError> {
        match self.event.get("quantity") {
            None => Ok(1),
            Some(v) => v
                .as_u64()
                .filter(|q| *q >= 1)
                .ok_or(InputError::Inconsistent {
                    field: "quantity",
                    rule: "must be a whole number of at least 1",
                }),
        }
    }

    /// The ids of the cases the envelope may launch or update, for the caller to load.
    pub fn case_ids(&self) -> Vec<String> {
        use AgentEventType as T;
        use CaseSpec as C;
        let key = self.key(self.key_field()).unwrap_or_default();
        let specs: &[C] = match self.event_type {
            T::OrderCreated | T::OrderConfirmed | T::OrderShipped => &[C::ProcessOrder],
            T::OrderDelivered | T::OrderReturned => &[C::ProcessOrder, C::ProcessReturn],
            T::PaymentAuthorized | T::PaymentCaptured | T::PaymentFailed => {
                &[C::ProcessOrder, C::HandlePaymentFailure]
            }
            T::VendorOnboarded | T::VendorVerified | T::VendorSuspended => {
                &[C::OnboardVendor, C::HandleVendorSuspension]
            }
            T::PayoutInitiated => &[C::ProcessPayout],
        };
        specs.iter().map(|s| case_id(*s, key)).collect()
    }

    /// The product an `OrderConfirmed` reserves, when it names one.
    pub fn product_id(&self) -> Option<&str> {
        self.event
            .get("product_id")
            .or_else(|| self.event.get("productId"))
            .and_then(Value::as_str)
    }
}

/// A case's id: its spec and the key it is about (`ProcessOrder-order-123`).
pub fn case_id(spec: CaseSpec, key: &str) -> String {
    format!("{}-{key}", spec.name())
}

/// One step of a case's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseStep {
    /// The agent's event id.
    pub event_id: String,
    /// Its type.
    pub event_type: AgentEventType,
    /// The state before (`None` at launch).
    pub from: Option<CaseState>,
    /// The state after.
    pub to: CaseState,
    /// The agent's timestamp.
    pub at: Timestamp,
}

/// A workflow case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Its id.
    pub case_id: String,
    /// Its spec.
    pub spec: CaseSpec,
    /// Its state.
    pub state: CaseState,
    /// Running or how it ended.
    pub status: CaseStatus,
    /// The merged fields of every accepted event.
    pub data: Map<String, Value>,
    /// Every accepted step.
    pub history: Vec<CaseStep>,
    /// Bumped by every accepted step.
    pub version: u64,
}

/// A product's stock, reserved with optimistic versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The product.
    pub product_id: String,
    /// Units available.
    pub available: u64,
    /// Bumped by every change; a write must name the version it read.
    pub version: u64,
}

/// What an envelope does to cases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDecision {
    /// The case the reply names (the one launched, or the main one updated).
    pub case_id: String,
    /// Cases after the envelope, launched or updated, each with the version it was read at
    /// (`None`: launched) so that the writer can check nobody changed it meanwhile.
    pub cases: Vec<(Case, Option<u64>)>,
    /// The inventory after a reservation, with the version it was read at.
    pub inventory: Option<(Inventory, u64)>,
}

/// Why an envelope is refused. Nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CaseRejection {
    /// A launch for a case that exists.
    #[error("case `{case_id}` already exists")]
    CaseExists {
        /// The case.
        case_id: String,
    },
    /// An update for a case that does not exist.
    #[error("no case for `{case_id}`")]
    UnknownCase {
        /// The case looked for.
        case_id: String,
    },
    /// An update that does not fit the case's state.
    #[error("`{event_type}` does not fit case `{case_id}` in state `{state}`")]
    InvalidTransition {
        /// The case.
        case_id: String,
        /// Its state.
        state: String,
        /// The event type.
        event_type: String,
    },
}

/// Decides one validated envelope. `cases` holds whichever of [`Envelope::case_ids`] exist;
/// `inventory` the stock of the product an `OrderConfirmed` reserves (`None`: untracked, any
/// quantity may be reserved).
pub fn decide_envelope(
    envelope: &Envelope,
    cases: &BTreeMap<String, Case>,
    inventory: Option<&Inventory>,
) -> Result<AgentDecision, CaseRejection> {
    use AgentEventType as T;
    use CaseSpec as C;
    let key = envelope.key(envelope.key_field()).unwrap_or_default();
    let id = |spec| case_id(spec, key);
    let get = |spec| cases.get(&id(spec));
    let mut decision = AgentDecision {
        case_id: String::new(),
        cases: Vec::new(),
        inventory: None,
    };

    // A launching type first launches its case.
    if let Some(spec) = envelope.event_type.launches() {
        let launched_id = id(spec);
        match cases.get(&launched_id) {
            None => {
                decision.case_id = launched_id.clone();
                decision
                    .cases
                    .push((launch(spec, launched_id, envelope), None));
            }
            // A later PayoutInitiated with a `status` finishes the payout it started.
            Some(existing) if spec == C::ProcessPayout && envelope.event.contains_key("status") => {
                let paid = envelope.event.get("status").and_then(Value::as_str) == Some("paid");
                let to = if paid {
                    CaseState::Paid
                } else {
                    CaseState::Failed
                };
                decision.case_id = existing.case_id.clone();
                decision
                    .cases
                    .push((step(existing, envelope, to)?, Some(existing.version)));
                return Ok(decision);
            }
            Some(_) => {
                return Err(CaseRejection::CaseExists {
                    case_id: launched_id,
                })
            }
        }
    }

    match envelope.event_type {
        T::OrderConfirmed => {
            let order = get(C::ProcessOrder).ok_or_else(|| CaseRejection::UnknownCase {
                case_id: id(C::ProcessOrder),
            })?;
            let quantity = envelope.quantity().unwrap_or(1);
            let reserved = match inventory {
                Some(stock) if stock.available < quantity => false,
                Some(stock) => {
                    let next = Inventory {
                        available: stock.available - quantity,
                        version: stock.version + 1,
                        ..stock.clone()
                    };
                    decision.inventory = Some((next, stock.version));
                    true
                }
                None => true,
            };
            let to = if reserved {
                CaseState::Reserved
            } else {
                CaseState::Cancelled
            };
            decision.case_id = order.case_id.clone();
            decision
                .cases
                .push((step(order, envelope, to)?, Some(order.version)));
        }
        T::OrderShipped | T::PaymentCaptured | T::PaymentAuthorized | T::OrderDelivered => {
            // Recovery of a failed payment first, then the order itself.
            let recovery = get(C::HandlePaymentFailure).filter(|c| c.status == CaseStatus::Running);
            if let (Some(case), T::PaymentAuthorized | T::PaymentCaptured) =
                (recovery, envelope.event_type)
            {
                decision.case_id = case.case_id.clone();
                decision.cases.push((
                    step(case, envelope, CaseState::Recovered)?,
                    Some(case.version),
                ));
                return Ok(decision);
            }
            let returning = get(C::ProcessReturn).filter(|c| c.status == CaseStatus::Running);
            if let (Some(case), T::OrderDelivered) = (returning, envelope.event_type) {
                decision.case_id = case.case_id.clone();
                decision.cases.push((
                    step(case, envelope, CaseState::Received)?,
                    Some(case.version),
                ));
                return Ok(decision);
            }
            let order = get(C::ProcessOrder).ok_or_else(|| CaseRejection::UnknownCase {
                case_id: id(C::ProcessOrder),
            })?;
            let to = match (envelope.event_type, order.state) {
                (T::PaymentAuthorized, _) => CaseState::PaymentAuthorized,
                (T::PaymentCaptured, _) => CaseState::Captured,
                (T::OrderShipped, _) => CaseState::Shipped,
                (_, _) => CaseState::Delivered,
            };
            let mut next = step(order, envelope, to)?;
            if to == CaseState::Delivered {
                // Delivery completes the order: nothing else is awaited.
                next = step(&next, envelope, CaseState::Completed)?;
            }
            decision.case_id = order.case_id.clone();
            decision.cases.push((next, Some(order.version)));
        }
        T::PaymentFailed => {
            if let Some(order) = get(C::ProcessOrder).filter(|c| c.status == CaseStatus::Running) {
                if C::ProcessOrder.allows(order.state, CaseState::Failed, T::PaymentFailed) {
                    decision.cases.push((
                        step(order, envelope, CaseState::Failed)?,
                        Some(order.version),
                    ));
                }
            }
        }
        T::OrderReturned => {
            let completed = get(C::ProcessOrder).is_some_and(|c| c.state == CaseState::Completed);
            if !completed && get(C::ProcessOrder).is_some() {
                let order = get(C::ProcessOrder)
                    .map(|c| c.state.name())
                    .unwrap_or("none");
                return Err(CaseRejection::InvalidTransition {
                    case_id: id(C::ProcessOrder),
                    state: order.to_owned(),
                    event_type: envelope.event_type.name().to_owned(),
                });
            }
        }
        T::VendorVerified => {
            let onboarding = get(C::OnboardVendor).filter(|c| c.status == CaseStatus::Running);
            let suspension =
                get(C::HandleVendorSuspension).filter(|c| c.status == CaseStatus::Running);
            let (case, to) = match (onboarding, suspension) {
                (_, Some(case)) => (case, CaseState::Reinstated),
                (Some(case), None) => (case, CaseState::Verified),
                (None, None) => {
                    let any = get(C::OnboardVendor).or(get(C::HandleVendorSuspension));
                    return Err(match any {
                        Some(case) => CaseRejection::InvalidTransition {
                            case_id: case.case_id.clone(),
                            state: case.state.name().to_owned(),
                            event_type: envelope.event_type.name().to_owned(),
                        },
                        None => CaseRejection::UnknownCase {
                            case_id: id(C::OnboardVendor),
                        },
                    });
                }
            };
            decision.case_id = case.case_id.clone();
            decision
                .cases
                .push((step(case, envelope, to)?, Some(case.version)));
        }
        T::VendorSuspended => {
            if let Some(onboarding) =
                get(C::OnboardVendor).filter(|c| c.status == CaseStatus::Running)
            {
                decision.cases.push((
                    step(onboarding, envelope, CaseState::Cancelled)?,
                    Some(onboarding.version),
                ));
            }
        }
        T::OrderCreated | T::VendorOnboarded | T::PayoutInitiated => {}
    }
    Ok(decision)
}

fn launch(spec: CaseSpec, case_id: String, envelope: &Envelope) -> Case {
    let state = spec.initial();
    Case {
        case_id,
        spec,
        state,
        status: state.status(),
        data: envelope.event.clone(),
        history: vec![CaseStep {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type,
            from: None,
            to: state,
            at: envelope.timestamp_utc,
        }],
        version: 1,
    }
}

/// Moves a case one step, if its table allows it; merges the body into its data.
fn step(case: &Case, envelope: &Envelope, to: CaseState) -> Result<Case, CaseRejection> {
    if !case.spec.allows(case.state, to, envelope.event_type) {
        return Err(CaseRejection::InvalidTransition {
            case_id: case.case_id.clone(),
            state: case.state.name().to_owned(),
            event_type: envelope.event_type.name().to_owned(),
        });
    }
    let mut next = case.clone();
    for (field, value) in &envelope.event {
        next.data.insert(field.clone(), value.clone());
    }
    if next.history.len() >= CASE_HISTORY_MAX {
        next.history.remove(1); // keep the launch step
    }
    next.history.push(CaseStep {
        event_id: envelope.event_id.clone(),
        event_type: envelope.event_type,
        from: Some(case.state),
        to,
        at: envelope.timestamp_utc,
    });
    next.state = to;
    next.status = to.status();
    next.version = case.version + 1;
    Ok(next)
}
