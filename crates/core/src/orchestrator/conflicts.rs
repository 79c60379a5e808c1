//! Cross-governor invariants and the conflict rules of SPEC 2.3 that act after every governor has
//! decided. (The plan-change race is settled before the governors decide, because its outcome
//! changes their inputs; see `steps.rs`.)

use crate::customer::Customer;
use crate::governor::GovernorKind as G;
use crate::governors::billing::BillingState;
use crate::governors::entitlement::EntitlementState;
use crate::governors::multi_tenant::{TenantInput, TenantState};
use crate::governors::quota_sla::QuotaInput;

use super::run::Run;
use super::{ConflictKind, ConflictRecord, Resolution};

/// Invariants every committed customer state keeps. A combined decision that breaks one, with no
/// rule to resolve it, is parked for review.
pub(super) fn broken_invariant(c: &Customer) -> Option<String> {
    let has_access = c.entitlement.as_ref().is_some_and(|e| {
        matches!(
            e.state,
            EntitlementState::Active
                | EntitlementState::PendingPlanChange
                | EntitlementState::PendingCancellation
        )
    });
    let subscription_live = c.subscription.as_ref().is_some_and(|s| !s.is_ended());
    if has_access && !subscription_live {
        return Some("access is granted but no subscription is running".into());
    }
    if has_access && c.billing.state == BillingState::WrittenOff {
        return Some("access is granted on a written-off account".into());
    }
    None
}

/// Quota and tenant slot disagree on throttling: the stricter state wins (SPEC 2.3). Checked for
/// events routed to both, after both decided, against the version the run started from.
pub(super) fn settle_throttling(run: &mut Run<'_>) {
    if run.failed {
        return;
    }
    let quota_throttles = run.draft.quota.state.throttles();
    let tenant = run.draft.tenant.state;
    if matches!(tenant, TenantState::Decommissioned) {
        return;
    }
    let tenant_throttles = tenant.throttles();
    if quota_throttles == tenant_throttles {
        return;
    }
    let detail = if quota_throttles {
        run.tenant(TenantInput::Throttle);
        run.merge_reports(G::MultiTenant);
        format!(
            "quota is {} but the tenant slot was {}: slot throttled",
            run.draft.quota.state.as_str(),
            tenant.as_str()
        )
    } else {
        let quota = run.draft.quota.state;
        run.quota(QuotaInput::ForceThrottle);
        run.merge_reports(G::QuotaSla);
        format!(
            "tenant slot is {} but quota was {}: quota throttled",
            tenant.as_str(),
            quota.as_str()
        )
    };
    run.mark_conflict(G::QuotaSla);
    run.mark_conflict(G::MultiTenant);
    run.conflicts.push(ConflictRecord {
        kind: ConflictKind::ThrottleDisagreement,
        governors: vec![G::QuotaSla, G::MultiTenant],
        resolution: Resolution::StricterWins,
        version: run.before.version,
        detail,
    });
}
