//! The customer-account governor: who the customer is and whether they may do business.
//!
//! A new account is `registered`; subscribing starts verification (KYC). Verification passes to
//! `active` or fails to `restricted`; unpaid debt in collections also restricts it. Security locks
//! and unlocks it; operators suspend and reinstate it; closing it is final.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::governor::{
    governor_states, row, Decided, Decision, EffectKind, GovernorKind, Record, Rejection,
    Transition, Verdict,
};

governor_states! {
    /// The seven customer-account states of SPEC 2.2.
    AccountState for GovernorKind::CustomerAccount, table TABLE;
    /// Known, nothing checked yet.
    Registered => "registered",
    /// KYC in progress.
    PendingVerification => "pending_verification",
    /// In good standing.
    Active => "active",
    /// Limited: verification failed or debt unpaid.
    Restricted => "restricted",
    /// Locked by security.
    Locked => "locked",
    /// Suspended by an operator.
    Suspended => "suspended",
    /// Closed for good.
    Closed => "closed",
}

use AccountState as S;

const TABLE: &[Transition<S>] = &[
    row(
        Some(S::Registered),
        S::PendingVerification,
        "customer_subscribes",
    ),
    row(Some(S::PendingVerification), S::Active, "account_verified"),
    row(Some(S::Registered), S::Active, "account_verified"),
    row(
        Some(S::Restricted),
        S::Active,
        "account_verified, payment_processed",
    ),
    row(
        Some(S::PendingVerification),
        S::Restricted,
        "account_verification_failed",
    ),
    row(
        Some(S::Registered),
        S::Restricted,
        "account_verification_failed",
    ),
    row(
        Some(S::Active),
        S::Restricted,
        "payment_failed (collections), dispute lost",
    ),
    row(Some(S::Registered), S::Locked, "account_locked"),
    row(Some(S::PendingVerification), S::Locked, "account_locked"),
    row(Some(S::Active), S::Locked, "account_locked"),
    row(Some(S::Restricted), S::Locked, "account_locked"),
    row(Some(S::Locked), S::Registered, "account_unlocked"),
    row(Some(S::Locked), S::PendingVerification, "account_unlocked"),
    row(Some(S::Locked), S::Active, "account_unlocked"),
    row(Some(S::Locked), S::Restricted, "account_unlocked"),
    row(Some(S::Registered), S::Suspended, "manual_suspension"),
    row(
        Some(S::PendingVerification),
        S::Suspended,
        "manual_suspension",
    ),
    row(Some(S::Active), S::Suspended, "manual_suspension"),
    row(Some(S::Restricted), S::Suspended, "manual_suspension"),
    row(Some(S::Locked), S::Suspended, "manual_suspension"),
    row(Some(S::Suspended), S::Active, "customer_reinstated"),
    row(
        Some(S::Suspended),
        S::PendingVerification,
        "customer_reinstated (not yet verified)",
    ),
    row(
        Some(S::Suspended),
        S::Restricted,
        "customer_reinstated (still restricted)",
    ),
    row(Some(S::Registered), S::Closed, "account_closed"),
    row(Some(S::PendingVerification), S::Closed, "account_closed"),
    row(Some(S::Active), S::Closed, "account_closed"),
    row(Some(S::Restricted), S::Closed, "account_closed"),
    row(Some(S::Locked), S::Closed, "account_closed"),
    row(Some(S::Suspended), S::Closed, "account_closed"),
];

/// Why an account is restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restriction {
    /// KYC failed.
    Verification,
    /// Debt in collections or a lost dispute.
    Payment,
}

/// The customer-account record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The state.
    pub state: AccountState,
    /// Whether KYC passed.
    pub verified: bool,
    /// Why restricted, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<Restriction>,
    /// The state a lock or suspension interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<AccountState>,
    /// Why the last restriction, lock, suspension or closure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Default for Account {
    fn default() -> Self {
        Self {
            state: S::Registered,
            verified: false,
            restriction: None,
            interrupted: None,
            reason: None,
        }
    }
}

impl Record for Account {
    type State = AccountState;
    fn state(&self) -> S {
        self.state
    }
}

impl Account {
    /// Whether the account holds access back (SPEC 2.2: locked or closed).
    pub fn holds_access(&self) -> bool {
        matches!(self.state, S::Locked | S::Closed)
    }
}

/// What the customer-account governor decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccountInput {
    /// A subscription starts: begin verification if it has not begun.
    Subscribe,
    /// KYC passed.
    Verified,
    /// KYC failed.
    VerificationFailed {
        /// Why.
        reason: String,
    },
    /// Debt went to collections, or a dispute was lost.
    PaymentDelinquent,
    /// The customer is paid up.
    PaymentSettled,
    /// Security lock.
    Lock {
        /// Why.
        reason: String,
    },
    /// Security unlock.
    Unlock,
    /// An operator suspends.
    Suspend {
        /// Why.
        reason: String,
    },
    /// An operator reinstates.
    Reinstate,
    /// Closed for good.
    Close {
        /// Why.
        reason: String,
    },
}

impl AccountInput {
    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Verified => "verified",
            Self::VerificationFailed { .. } => "verification_failed",
            Self::PaymentDelinquent => "payment_delinquent",
            Self::PaymentSettled => "payment_settled",
            Self::Lock { .. } => "lock",
            Self::Unlock => "unlock",
            Self::Suspend { .. } => "suspend",
            Self::Reinstate => "reinstate",
            Self::Close { .. } => "close",
        }
    }
}

/// Decides one input.
pub fn decide(a: &Account, input: &AccountInput, _now: Timestamp) -> Decided<Account> {
    use AccountInput as I;
    let reject = || Rejection::invalid(Some(a.state), input.name());
    let changed = |d: Decision<Account>| Ok(Verdict::Changed(d));
    let not_applicable = |why: String| Ok(Verdict::NotApplicable(why.into()));
    let with = |state: S| Account { state, ..a.clone() };

    if a.state == S::Closed {
        return Err(reject());
    }
    match input {
        I::Subscribe => match a.state {
            S::Registered => changed(
                Decision::to(with(S::PendingVerification), "verification started").effect(
                    EffectKind::notify("verification_requested", "verify the customer's identity"),
                ),
            ),
            S::Suspended => Err(reject()),
            other => not_applicable(format!("account is {}", other.as_str())),
        },
        I::Verified => match a.state {
            S::Registered | S::PendingVerification => changed(Decision::to(
                Account {
                    verified: true,
                    ..with(S::Active)
                },
                "identity verified",
            )),
            S::Restricted if a.restriction == Some(Restriction::Verification) => {
                changed(Decision::to(
                    Account {
                        verified: true,
                        restriction: None,
                        reason: None,
                        ..with(S::Active)
                    },
                    "identity verified on second attempt",
                ))
            }
            _ => Err(reject()),
        },
        I::VerificationFailed { reason } => match a.state {
            S::Registered | S::PendingVerification => changed(Decision::to(
                Account {
                    restriction: Some(Restriction::Verification),
                    reason: Some(reason.clone()),
                    ..with(S::Restricted)
                },
                format!("verification failed: {reason}"),
            )),
            _ => Err(reject()),
        },
        I::PaymentDelinquent => match a.state {
            S::Active | S::PendingVerification => changed(Decision::to(
                Account {
                    restriction: Some(Restriction::Payment),
                    ..with(S::Restricted)
                },
                "restricted for unpaid debt",
            )),
            other => not_applicable(format!("account is {}", other.as_str())),
        },
        I::PaymentSettled => match (a.state, a.restriction) {
            (S::Restricted, Some(Restriction::Payment)) => changed(Decision::to(
                Account {
                    restriction: None,
                    ..with(S::Active)
                },
                "debt paid: restriction lifted",
            )),
            (other, _) => not_applicable(format!("account is {}", other.as_str())),
        },
        I::Lock { reason } => match a.state {
            S::Registered | S::PendingVerification | S::Active | S::Restricted => {
                changed(Decision::to(
                    Account {
                        interrupted: Some(a.state),
                        reason: Some(reason.clone()),
                        ..with(S::Locked)
                    },
                    format!("locked: {reason}"),
                ))
            }
            _ => Err(reject()),
        },
        I::Unlock if a.state == S::Locked => {
            let back = a.interrupted.unwrap_or(S::Active);
            changed(Decision::to(
                Account {
                    interrupted: None,
                    ..with(back)
                },
                format!("unlocked: {}", back.as_str()),
            ))
        }
        I::Suspend { reason } => match a.state {
            S::Suspended => Err(reject()),
            _ => changed(Decision::to(
                Account {
                    interrupted: Some(
                        a.interrupted
                            .filter(|_| a.state == S::Locked)
                            .unwrap_or(a.state),
                    ),
                    reason: Some(reason.clone()),
                    ..with(S::Suspended)
                },
                format!("suspended: {reason}"),
            )),
        },
        I::Reinstate if a.state == S::Suspended => {
            let back = match a.interrupted {
                Some(S::Registered | S::PendingVerification) => S::PendingVerification,
                Some(S::Restricted) => S::Restricted,
                _ => S::Active,
            };
            changed(Decision::to(
                Account {
                    interrupted: None,
                    ..with(back)
                },
                format!("reinstated: {}", back.as_str()),
            ))
        }
        I::Close { reason } => changed(
            Decision::to(
                Account {
                    reason: Some(reason.clone()),
                    interrupted: None,
                    ..with(S::Closed)
                },
                format!("closed: {reason}"),
            )
            .effect(EffectKind::notify("account_closed", reason.clone())),
        ),
        _ => Err(reject()),
    }
}
