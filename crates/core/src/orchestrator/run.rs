//! One event's working state: the draft customer the governors decide against, in route order,
//! and everything they answered.

use crate::customer::Customer;
use crate::governor::{
    Decided, EffectKind, GovernorKind as G, GovernorState, Record, Rejection, Verdict,
};
use crate::governors::{
    billing, compliance, customer_account, entitlement, multi_tenant, quota_sla, subscription,
};
use crate::money::ProrationQuote;
use crate::timers::TimerCommand;

use super::{
    ConflictRecord, Effect, EventContext, EventResult, EventStatus, GovernorReport, Outcome, Phase,
    ReportText,
};

/// The draft of one event's decision.
#[derive(Debug)]
pub(super) struct Run<'a> {
    pub ctx: &'a EventContext,
    pub before: &'a Customer,
    /// The customer as the governors so far decided it; each governor sees the ones before it.
    pub draft: Customer,
    pub reports: Vec<GovernorReport>,
    effects: Vec<(G, EffectKind)>,
    pub conflicts: Vec<ConflictRecord>,
    pub proration: Option<ProrationQuote>,
    /// Set when a governor refused.
    pub failed: bool,
    /// Set when the event must be parked for an operator.
    pub review: Option<String>,
    /// Set when the event lost a last-write-wins race: recorded, nothing else changes.
    pub lost: bool,
    /// Set when a compensating transaction resolved a conflict.
    pub compensated: bool,
}

impl<'a> Run<'a> {
    pub fn new(ctx: &'a EventContext, before: &'a Customer) -> Self {
        Self {
            ctx,
            before,
            draft: before.clone(),
            reports: Vec::new(),
            effects: Vec::new(),
            conflicts: Vec::new(),
            proration: None,
            failed: false,
            review: None,
            lost: false,
            compensated: false,
        }
    }

    /// Records a governor's answer; returns its next record when it changed.
    fn apply<R: Record>(
        &mut self,
        governor: G,
        from: Option<R::State>,
        decided: Decided<R>,
    ) -> Option<R> {
        let from_name = from.map(|s| ReportText::Borrowed(s.name()));
        match decided {
            Ok(Verdict::Changed(decision)) => {
                if !decision.is_allowed(from) {
                    // A governor answered a move its own table does not list: a bug. Refuse the
                    // event rather than commit a transition nobody can account for.
                    let steps = decision.steps(from);
                    let (a, b) = steps
                        .iter()
                        .find(|(a, b)| !R::State::allows(*a, *b))
                        .copied()
                        .unwrap_or((from, decision.next.state()));
                    self.fail(
                        governor,
                        from_name,
                        Rejection::IllegalTransition {
                            from: a.map_or("none", GovernorState::name).to_owned(),
                            to: b.name().to_owned(),
                        },
                    );
                    return None;
                }
                self.reports.push(GovernorReport {
                    governor,
                    outcome: Outcome::Success,
                    from: from_name,
                    via: decision.via.iter().map(|s| s.name().into()).collect(),
                    to: Some(decision.next.state().name().into()),
                    message: decision.message,
                    rejection: None,
                });
                self.effects
                    .extend(decision.effects.into_iter().map(|e| (governor, e)));
                for command in &decision.timers {
                    self.draft.apply_timer(command);
                }
                Some(decision.next)
            }
            Ok(Verdict::NotApplicable(message)) => {
                self.reports.push(GovernorReport {
                    governor,
                    outcome: Outcome::NotApplicable,
                    via: Vec::new(),
                    to: from_name.clone(),
                    from: from_name,
                    message,
                    rejection: None,
                });
                None
            }
            Err(rejection) => {
                self.fail(governor, from_name, rejection);
                None
            }
        }
    }

    fn fail(&mut self, governor: G, from: Option<ReportText>, rejection: Rejection) {
        self.failed = true;
        self.reports.push(GovernorReport {
            governor,
            outcome: Outcome::Failed,
            from,
            via: Vec::new(),
            to: None,
            message: rejection.to_string().into(),
            rejection: Some(rejection),
        });
    }

    /// A governor refuses for a reason found by the orchestrator (an unknown product, say).
    pub fn refuse(&mut self, governor: G, rejection: Rejection) {
        let from = self.draft.state_of(governor).map(ReportText::Borrowed);
        self.fail(governor, from, rejection);
    }

    /// A routed governor has nothing to do.
    pub fn skip(&mut self, governor: G, message: impl Into<ReportText>) {
        let state = self.draft.state_of(governor).map(ReportText::Borrowed);
        self.reports.push(GovernorReport {
            governor,
            outcome: Outcome::NotApplicable,
            via: Vec::new(),
            from: state.clone(),
            to: state,
            message: message.into(),
            rejection: None,
        });
    }

    /// Folds a governor's second report (a resolution's decision) into its first, so that each
    /// governor reports once per event: from its state before the event to its state after.
    pub fn merge_reports(&mut self, governor: G) {
        let mut positions = self
            .reports
            .iter()
            .enumerate()
            .filter(|(_, r)| r.governor == governor)
            .map(|(i, _)| i);
        let (Some(first), Some(second)) = (positions.next(), positions.next()) else {
            return;
        };
        let later = self.reports.remove(second);
        let earlier = &mut self.reports[first];
        let earlier_moved = earlier.outcome == Outcome::Success;
        match later.outcome {
            Outcome::Failed => {
                earlier.outcome = Outcome::Failed;
                earlier.rejection = later.rejection;
                earlier.to = later.to;
            }
            Outcome::Success => {
                if earlier_moved {
                    // The first decision's end is a state passed through on the way to the second's.
                    if let Some(mid) = earlier.to.take() {
                        earlier.via.push(mid);
                    }
                }
                earlier.outcome = Outcome::Success;
                earlier.via.extend(later.via);
                earlier.to = later.to;
            }
            Outcome::NotApplicable | Outcome::ConflictDetected => {}
        }
        earlier.message = format!("{}; {}", earlier.message, later.message).into();
    }

    /// Marks a governor's report as part of a conflict.
    pub fn mark_conflict(&mut self, governor: G) {
        if let Some(report) = self
            .reports
            .iter_mut()
            .rev()
            .find(|r| r.governor == governor)
        {
            report.outcome = Outcome::ConflictDetected;
        }
    }

    pub fn entitlement(&mut self, input: entitlement::EntitlementInput) {
        let from = self.draft.entitlement.as_ref().map(|e| e.state);
        let decided = entitlement::decide(self.draft.entitlement.as_ref(), &input, self.ctx.now);
        if let Some(next) = self.apply(G::Entitlement, from, decided) {
            self.draft.entitlement = Some(next);
        }
    }

    pub fn subscription(&mut self, input: subscription::SubscriptionInput) {
        let from = self.draft.subscription.as_ref().map(|s| s.state);
        let decided = subscription::decide(self.draft.subscription.as_ref(), &input, self.ctx.now);
        if let Some(next) = self.apply(G::Subscription, from, decided) {
            self.draft.subscription = Some(next);
        }
    }

    pub fn billing(&mut self, input: billing::BillingInput) {
        let decided = billing::decide(&self.draft.billing, &input, self.ctx.now);
        if let Some(next) = self.apply(G::Billing, Some(self.draft.billing.state), decided) {
            self.draft.billing = next;
        }
    }

    pub fn account(&mut self, input: customer_account::AccountInput) {
        let decided = customer_account::decide(&self.draft.account, &input, self.ctx.now);
        if let Some(next) = self.apply(G::CustomerAccount, Some(self.draft.account.state), decided)
        {
            self.draft.account = next;
        }
    }

    pub fn quota(&mut self, input: quota_sla::QuotaInput) {
        let decided = quota_sla::decide(&self.draft.quota, &input, self.ctx.now);
        if let Some(next) = self.apply(G::QuotaSla, Some(self.draft.quota.state), decided) {
            self.draft.quota = next;
        }
    }

    pub fn compliance(&mut self, input: compliance::ComplianceInput) {
        let decided = compliance::decide(&self.draft.compliance, &input, self.ctx.now);
        if let Some(next) = self.apply(G::Compliance, Some(self.draft.compliance.state), decided) {
            self.draft.compliance = next;
        }
    }

    pub fn tenant(&mut self, input: multi_tenant::TenantInput) {
        let decided = multi_tenant::decide(&self.draft.tenant, &input, self.ctx.now);
        if let Some(next) = self.apply(G::MultiTenant, Some(self.draft.tenant.state), decided) {
            self.draft.tenant = next;
        }
    }

    /// Ends the run: one result that applies everything or nothing.
    pub fn finish(mut self) -> EventResult {
        use Phase as P;
        if !self.failed && self.review.is_none() && !self.lost {
            if let Some(why) = super::conflicts::broken_invariant(&self.draft) {
                self.conflicts.push(ConflictRecord {
                    kind: super::ConflictKind::InvariantViolation,
                    governors: self
                        .reports
                        .iter()
                        .filter(|r| r.outcome == Outcome::Success)
                        .map(|r| r.governor)
                        .collect(),
                    resolution: super::Resolution::ManualReview,
                    version: self.before.version,
                    detail: why.clone(),
                });
                self.review = Some(why);
            }
        }
        let status = if self.failed {
            EventStatus::Rejected
        } else if self.review.is_some() {
            EventStatus::NeedsReview
        } else if self.compensated {
            EventStatus::Compensated
        } else if !self.conflicts.is_empty() {
            EventStatus::ConflictResolved
        } else {
            EventStatus::Completed
        };
        let phases = match status {
            EventStatus::Completed => {
                vec![
                    P::ProcessingEvent,
                    P::CoordinatingFsms,
                    P::AwaitingFeedback,
                    P::CompletingAction,
                    P::Idle,
                ]
            }
            EventStatus::ConflictResolved | EventStatus::Compensated => vec![
                P::ProcessingEvent,
                P::CoordinatingFsms,
                P::AwaitingFeedback,
                P::ErrorDetected,
                P::ErrorRecovery,
                P::ResumeOperation,
                P::CompletingAction,
                P::Idle,
            ],
            EventStatus::Rejected => vec![
                P::ProcessingEvent,
                P::CoordinatingFsms,
                P::AwaitingFeedback,
                P::ErrorDetected,
                P::ErrorRecovery,
                P::ResumeOperation,
                P::Idle,
            ],
            EventStatus::NeedsReview => vec![
                P::ProcessingEvent,
                P::CoordinatingFsms,
                P::AwaitingFeedback,
                P::ErrorDetected,
                P::ResumeOperation,
                P::Idle,
            ],
        };

        let mut result = EventResult {
            event_id: self.ctx.event_id.clone(),
            status,
            phases,
            governors: self.reports,
            effects: Vec::new(),
            timers: Vec::new(),
            conflicts: self.conflicts,
            proration: self.proration,
            review_reason: self.review,
            next: None,
        };
        if !status.applies() {
            return result;
        }
        let mut next = if self.lost {
            self.before.clone()
        } else {
            self.draft
        };
        next.version = self.before.version + 1;
        if !self.lost {
            result.effects = self
                .effects
                .into_iter()
                .enumerate()
                .map(|(i, (governor, kind))| Effect {
                    idempotency_key: effect_key(&self.ctx.event_id, i),
                    governor,
                    kind,
                })
                .collect();
            result.timers = timer_diff(self.before, &next);
        }
        result.next = Some(next);
        result
    }
}

/// The timer commands that turn `before`'s pending timers into `after`'s.
fn timer_diff(before: &Customer, after: &Customer) -> Vec<TimerCommand> {
    let mut commands = Vec::new();
    for kind in before.timers.keys() {
        if !after.timers.contains_key(kind) {
            commands.push(TimerCommand::Cancel { kind: *kind });
        }
    }
    for (kind, due_at) in &after.timers {
        if before.timers.get(kind) != Some(due_at) {
            commands.push(TimerCommand::Set {
                kind: *kind,
                due_at: *due_at,
            });
        }
    }
    commands
}

/// `<event_id>:<i>`, written without `format!` (one of the costlier steps of a decision).
fn effect_key(event_id: &str, i: usize) -> String {
    let mut key = String::with_capacity(event_id.len() + 4);
    key.push_str(event_id);
    key.push(':');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = i;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[at..] {
        key.push(char::from(*d));
    }
    key
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_effect_key_is_the_event_id_and_the_index() {
        for i in [0, 7, 10, 99, 12345, usize::MAX] {
            assert_eq!(super::effect_key("evt-1", i), format!("evt-1:{i}"));
        }
    }
}
