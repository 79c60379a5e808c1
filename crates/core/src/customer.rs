//! The customer aggregate: every customer-keyed governor's record, plus pending timers.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::GovernorKind;
use crate::governors::billing::Billing;
use crate::governors::compliance::Compliance;
use crate::governors::customer_account::Account;
use crate::governors::entitlement::Entitlement;
use crate::governors::multi_tenant::TenantSlot;
use crate::governors::quota_sla::Quota;
use crate::governors::subscription::Subscription;
use crate::ids::CustomerId;
use crate::timers::{PendingTimer, TimerCommand, TimerKind};

/// One customer stream's state. Rebuilt exactly by replaying its accepted events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// The customer.
    pub customer_id: CustomerId,
    /// Events applied so far.
    pub version: u64,
    /// Access; `None` before the first subscription.
    pub entitlement: Option<Entitlement>,
    /// The contract; `None` before the first subscription.
    pub subscription: Option<Subscription>,
    /// Money.
    pub billing: Billing,
    /// The account.
    pub account: Account,
    /// Usage and service level.
    pub quota: Quota,
    /// Screening.
    pub compliance: Compliance,
    /// The tenant slot.
    pub tenant: TenantSlot,
    /// Pending timers, one per kind.
    pub timers: BTreeMap<TimerKind, Timestamp>,
    /// Subscriptions started so far; numbers the next one.
    pub subscriptions_started: u64,
}

impl Customer {
    /// A customer nothing has happened to yet.
    pub fn new(customer_id: CustomerId) -> Self {
        Self {
            customer_id,
            version: 0,
            entitlement: None,
            subscription: None,
            billing: Billing::default(),
            account: Account::default(),
            quota: Quota::default(),
            compliance: Compliance::default(),
            tenant: TenantSlot::default(),
            timers: BTreeMap::new(),
            subscriptions_started: 0,
        }
    }

    /// A governor's current state name (`None` for a record not created yet; the catalog is not
    /// customer-keyed and is always `None`).
    pub fn state_of(&self, governor: GovernorKind) -> Option<&'static str> {
        match governor {
            GovernorKind::Entitlement => self.entitlement.as_ref().map(|e| e.state.as_str()),
            GovernorKind::Subscription => self.subscription.as_ref().map(|s| s.state.as_str()),
            GovernorKind::Billing => Some(self.billing.state.as_str()),
            GovernorKind::CustomerAccount => Some(self.account.state.as_str()),
            GovernorKind::QuotaSla => Some(self.quota.state.as_str()),
            GovernorKind::Compliance => Some(self.compliance.state.as_str()),
            GovernorKind::MultiTenant => Some(self.tenant.state.as_str()),
            GovernorKind::ProductCatalog => None,
        }
    }

    /// Pending timers in deadline order.
    pub fn pending_timers(&self) -> Vec<PendingTimer> {
        let mut timers: Vec<PendingTimer> = self
            .timers
            .iter()
            .map(|(kind, due_at)| PendingTimer {
                kind: *kind,
                due_at: *due_at,
            })
            .collect();
        timers.sort_by_key(|t| (t.due_at, t.kind));
        timers
    }

    /// Applies a timer command.
    pub fn apply_timer(&mut self, command: &TimerCommand) {
        match command {
            TimerCommand::Set { kind, due_at } => {
                self.timers.insert(*kind, *due_at);
            }
            TimerCommand::Cancel { kind } => {
                self.timers.remove(kind);
            }
        }
    }
}
