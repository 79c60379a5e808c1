//! The orchestrator: the coordinator of one event (SPEC 2.3).
//!
//! [`decide_event`] takes a customer's state, one event, the catalog and the context (the instant and
//! the event's id, both chosen by the caller) and returns an [`EventResult`]: the phases the event
//! went through, every routed governor's outcome, the conflicts found and how they were resolved,
//! and either the customer's next state with the effects and timers to carry out, or no change at
//! all. There is no partial result: every transition of an event applies, or none does.

mod catalog;
mod conflicts;
mod json;
mod routes;
mod run;
mod steps;

use serde::{Deserialize, Serialize};

pub use catalog::{decide_catalog, CatalogResult};
pub use json::{effect_json, result_json};
pub use routes::{route, timer_route, ROUTES, TIMER_ROUTES};
pub use steps::decide_event;

use crate::customer::Customer;
pub use crate::governor::ReportText;
use crate::governor::{EffectKind, GovernorKind, Rejection};
use crate::money::ProrationQuote;
use crate::timers::TimerCommand;

/// The nine orchestrator phases of the seed, recorded per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The engine is starting (never part of an event's path).
    Initializing,
    /// Waiting for work.
    Idle,
    /// Validate, deduplicate, route.
    ProcessingEvent,
    /// Governors decide in route order.
    CoordinatingFsms,
    /// Decisions and rejections collected; conflicts checked.
    AwaitingFeedback,
    /// Commit, receipts, outbox.
    CompletingAction,
    /// A rejection or conflict was found.
    ErrorDetected,
    /// Compensate or roll back.
    ErrorRecovery,
    /// Back to normal after an error.
    ResumeOperation,
}

impl Phase {
    /// All nine.
    pub const ALL: [Phase; 9] = [
        Self::Initializing,
        Self::Idle,
        Self::ProcessingEvent,
        Self::CoordinatingFsms,
        Self::AwaitingFeedback,
        Self::CompletingAction,
        Self::ErrorDetected,
        Self::ErrorRecovery,
        Self::ResumeOperation,
    ];

    /// The snake_case name (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Self::Initializing => "initializing",
            Self::Idle => "idle",
            Self::ProcessingEvent => "processing_event",
            Self::CoordinatingFsms => "coordinating_fsms",
            Self::AwaitingFeedback => "awaiting_feedback",
            Self::CompletingAction => "completing_action",
            Self::ErrorDetected => "error_detected",
            Self::ErrorRecovery => "error_recovery",
            Self::ResumeOperation => "resume_operation",
        }
    }
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Every governor agreed; applied.
    Completed,
    /// A governor refused; nothing applied.
    Rejected,
    /// A conflict was found and resolved by rule (last-write-wins, stricter-wins); applied.
    ConflictResolved,
    /// A conflict was resolved by a compensating transaction; applied.
    Compensated,
    /// A conflict no rule resolves; parked for an operator, nothing applied.
    NeedsReview,
}

impl EventStatus {
    /// Whether the event's decision is applied to the customer.
    pub fn applies(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::ConflictResolved | Self::Compensated
        )
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Rejected => "rejected",
            Self::ConflictResolved => "conflict_resolved",
            Self::Compensated => "compensated",
            Self::NeedsReview => "needs_review",
        }
    }
}

/// A governor's answer to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It decided a transition.
    Success,
    /// Its decision took part in a conflict.
    ConflictDetected,
    /// It refused.
    Failed,
    /// The event does not concern it in its state.
    NotApplicable,
}

impl Outcome {
    /// The snake_case name (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ConflictDetected => "conflict_detected",
            Self::Failed => "failed",
            Self::NotApplicable => "not_applicable",
        }
    }
}

/// One governor's part in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernorReport {
    /// The governor.
    pub governor: GovernorKind,
    /// Its answer.
    pub outcome: Outcome,
    /// Its state before (`None`: no record yet).
    pub from: Option<ReportText>,
    /// States passed through between `from` and `to` within this event (usually none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<ReportText>,
    /// Its state after (`None` when it failed or has no record).
    pub to: Option<ReportText>,
    /// Why, in a sentence.
    pub message: ReportText,
    /// The typed reason when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
}

/// An effect to carry out, with the idempotency key the receiver deduplicates on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// `<event_id>:<index>`: stable across retries and replays.
    pub idempotency_key: String,
    /// The governor that asked for it.
    pub governor: GovernorKind,
    /// What to do.
    #[serde(flatten)]
    pub kind: EffectKind,
}

/// The conflicts of SPEC 2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Two plan changes raced; the second's old plan is no longer current.
    ConcurrentPlanChange,
    /// A fraud suspension arrived while a charge was in flight.
    ChargeDuringFraudSuspension,
    /// Quota and tenant slot disagree on throttling.
    ThrottleDisagreement,
    /// The combined decision breaks a cross-governor invariant no rule covers.
    InvariantViolation,
}

/// How a conflict was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The later `occurred_at` wins; the loser's charge is not made.
    LastWriteWins,
    /// The charge is voided.
    CompensatingTransaction,
    /// The stricter state wins.
    StricterWins,
    /// Parked in the review queue.
    ManualReview,
}

/// A conflict, as recorded and counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// What kind.
    #[serde(rename = "type")]
    pub kind: ConflictKind,
    /// The governors whose decisions conflicted.
    pub governors: Vec<GovernorKind>,
    /// How it was resolved.
    pub resolution: Resolution,
    /// The customer version the resolution was checked against.
    pub version: u64,
    /// What happened, in a sentence.
    pub detail: String,
}

/// What the caller supplies besides the state and the event: the instant and the event's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventContext {
    /// The event's id (the engine assigns one per accepted event; it seeds effect keys).
    pub event_id: String,
    /// The instant of the decision, from the injected clock.
    pub now: jiff::Timestamp,
}

/// The decision on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResult {
    /// The event's id.
    pub event_id: String,
    /// How it ended.
    pub status: EventStatus,
    /// The phases it went through, in order.
    pub phases: Vec<Phase>,
    /// Every routed governor's outcome, in route order.
    pub governors: Vec<GovernorReport>,
    /// Effects to carry out (empty unless applied).
    pub effects: Vec<Effect>,
    /// Timer changes, as the difference between the pending timers before and after.
    pub timers: Vec<TimerCommand>,
    /// Conflicts found.
    pub conflicts: Vec<ConflictRecord>,
    /// A plan change's money lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proration: Option<ProrationQuote>,
    /// Why the event was parked, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_reason: Option<String>,
    /// The customer after the event (`None` unless applied).
    #[serde(skip)]
    pub next: Option<Customer>,
}

impl GovernorReport {
    /// The moves the report stands for, `(from, to)` step by step; empty when nothing moved.
    pub fn steps(&self) -> Vec<(Option<ReportText>, ReportText)> {
        let moved = self.outcome == Outcome::Success
            || (self.outcome == Outcome::ConflictDetected
                && (self.from != self.to || !self.via.is_empty()));
        let Some(to) = self.to.clone().filter(|_| moved) else {
            return Vec::new();
        };
        let mut steps = Vec::with_capacity(self.via.len() + 1);
        let mut at = self.from.clone();
        for state in self.via.iter().cloned().chain(std::iter::once(to)) {
            steps.push((at, state.clone()));
            at = Some(state);
        }
        steps
    }
}

impl EventResult {
    /// The reasons of every governor that refused.
    pub fn rejections(&self) -> impl Iterator<Item = (GovernorKind, &Rejection)> {
        self.governors
            .iter()
            .filter_map(|g| g.rejection.as_ref().map(|r| (g.governor, r)))
    }
}
