//! The outbox executor and the `sandbox` connector.
//!
//! Effects are committed with the decision that asked for them (the transactional outbox) and
//! carried out afterwards, at least once; each carries its idempotency key, so the receiver applies
//! it once. Order per effect: apply, feed the result back as an event (keyed by the effect, so a
//! redelivery replays it), then mark the row done. A crash anywhere in between redelivers, and
//! nothing is applied twice.
//!
//! The `sandbox` connector is in-process and deterministic: it keeps a durable ledger (its own
//! SQLite file in the data directory) of every delivery and every application, keyed by effect
//! key, so tests can prove that nothing was applied twice. Outcomes follow the customer id: a
//! customer id ending in `-declined` has every charge declined; one ending in `-unreachable` makes
//! the connector fail (retried with deterministic backoff, then given up).

use std::path::Path;
use std::sync::Mutex;

use marketgov_core::backoff::jittered_delay_ms;
use marketgov_core::ids::{CustomerId, PaymentId, RefundId};
use marketgov_core::orchestrator::Effect;
use marketgov_core::{CustomerEvent, EffectKind, EventKind};
use marketgov_store::{Commit, OutboxRow, OutboxUpdate, Store};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{App, Error};

/// Effects taken from the outbox per round.
pub const EFFECTS_PER_ROUND_MAX: usize = 256;
/// Attempts before an effect is given up (marked dead).
pub const EFFECT_ATTEMPTS_MAX: u32 = 12;
/// The longest wait between attempts, in milliseconds.
pub const RETRY_DELAY_MS_MAX: u64 = 60_000;

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or already applied before: the same answer again).
    Applied {
        /// For a charge: whether it was declined.
        declined: bool,
    },
}

/// The sandbox connector's durable ledger.
#[derive(Debug)]
pub struct Sandbox {
    conn: Mutex<Connection>,
}

/// The ledger's file name inside the data directory.
pub const SANDBOX_LEDGER_FILE: &str = "sandbox-ledger.db";

impl Sandbox {
    /// Opens the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let conn = Connection::open(dir.join(SANDBOX_LEDGER_FILE)).map_err(ledger)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, effect_key TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS applications (
                 effect_key TEXT PRIMARY KEY, kind TEXT NOT NULL, declined INTEGER NOT NULL, body BLOB NOT NULL);",
        )
        .map_err(ledger)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Receives one delivery: records it, applies it unless its key was applied before, and
    /// answers the (first) outcome. Refuses for an `-unreachable` customer.
    pub fn deliver(
        &self,
        customer_id: &str,
        effect: &Effect,
        body: &[u8],
    ) -> Result<Outcome, String> {
        if customer_id.ends_with("-unreachable") {
            return Err("sandbox: receiver unreachable".into());
        }
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| "sandbox ledger poisoned".to_string())?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO deliveries (effect_key) VALUES (?1)",
            [&effect.idempotency_key],
        )
        .map_err(|e| e.to_string())?;
        let known: Option<bool> = tx
            .query_row(
                "SELECT declined FROM applications WHERE effect_key = ?1",
                [&effect.idempotency_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        let declined = match known {
            Some(declined) => declined,
            None => {
                let declined = matches!(effect.kind, EffectKind::Charge { .. })
                    && customer_id.ends_with("-declined");
                tx.execute(
                    "INSERT INTO applications (effect_key, kind, declined, body) VALUES (?1, ?2, ?3, ?4)",
                    params![effect.idempotency_key, effect.kind.name(), declined, body],
                )
                .map_err(|e| e.to_string())?;
                declined
            }
        };
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Outcome::Applied { declined })
    }

    /// `(applications, deliveries)` per effect key, for checks.
    pub fn ledger(&self) -> Result<Vec<(String, u64, u64)>, Error> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| Error::Setup("sandbox ledger poisoned".into()))?;
        let mut st = conn
            .prepare(
                "SELECT d.effect_key, (SELECT COUNT(*) FROM applications a WHERE a.effect_key = d.effect_key), COUNT(*)
                 FROM deliveries d GROUP BY d.effect_key ORDER BY d.effect_key",
            )
            .map_err(ledger)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(ledger)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ledger)
    }
}

fn ledger(e: rusqlite::Error) -> Error {
    Error::Setup(format!("sandbox ledger: {e}"))
}

impl App {
    /// Carries out every effect ready now; returns how many rows were settled (done, retried or
    /// given up).
    pub async fn run_effects(&self) -> Result<usize, Error> {
        let _one_executor = self.inner().effects_running.lock().await;
        let now_ms = self.clock().now().as_millisecond();
        let rows = self.store().ready_outbox(now_ms, EFFECTS_PER_ROUND_MAX)?;
        // A charge whose void is queued too never leaves: the compensation cancels it here.
        let voided: std::collections::HashSet<(String, String)> = rows
            .iter()
            .filter_map(
                |r| match serde_json::from_slice::<Effect>(&r.body).ok()?.kind {
                    EffectKind::Void { invoice_id, .. } => Some((r.stream.clone(), invoice_id)),
                    _ => None,
                },
            )
            .collect();
        let mut settled = 0;
        for row in rows {
            let cancelled = matches!(
                serde_json::from_slice::<Effect>(&row.body).map(|e| e.kind),
                Ok(EffectKind::Charge { ref invoice_id, .. }) if voided.contains(&(row.stream.clone(), invoice_id.clone()))
            );
            if cancelled {
                self.settle(OutboxUpdate::Done {
                    effect_key: row.effect_key,
                })
                .await?;
            } else {
                self.run_effect(row, now_ms).await?;
            }
            settled += 1;
        }
        Ok(settled)
    }

    async fn run_effect(&self, row: OutboxRow, now_ms: i64) -> Result<(), Error> {
        let effect: Effect = serde_json::from_slice(&row.body).map_err(|e| Error::Replay {
            location: format!("outbox {}", row.effect_key),
            detail: e.to_string(),
        })?;
        let Some((tenant, customer_id)) = row
            .stream
            .strip_prefix("customer:")
            .and_then(|s| s.split_once('/'))
        else {
            return self
                .settle(OutboxUpdate::Dead {
                    effect_key: row.effect_key,
                    error: "not a customer's effect".into(),
                })
                .await;
        };
        let update = match self.sandbox().deliver(customer_id, &effect, &row.body) {
            Ok(Outcome::Applied { declined }) => {
                if let Some(event) = result_event(customer_id, &effect, declined) {
                    // Keyed by the effect: a redelivery after a crash replays instead of repeating.
                    self.submit_event(
                        tenant,
                        Some(&format!("effect-result:{}", effect.idempotency_key)),
                        event,
                    )
                    .await?;
                }
                OutboxUpdate::Done {
                    effect_key: row.effect_key,
                }
            }
            Err(error) => {
                let attempts = row.attempts + 1;
                if attempts >= EFFECT_ATTEMPTS_MAX {
                    OutboxUpdate::Dead {
                        effect_key: row.effect_key,
                        error,
                    }
                } else {
                    let wait = jittered_delay_ms(attempts, &row.effect_key, RETRY_DELAY_MS_MAX);
                    OutboxUpdate::Retry {
                        effect_key: row.effect_key,
                        attempts,
                        next_attempt_ms: now_ms
                            .saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
                        error,
                    }
                }
            }
        };
        self.settle(update).await
    }

    async fn settle(&self, update: OutboxUpdate) -> Result<(), Error> {
        let ack = self.store().commit(Commit {
            outbox_updates: vec![update],
            ..Commit::default()
        })?;
        match ack.await.map_err(|_| Error::ShuttingDown)? {
            Ok(_) | Err(marketgov_store::Error::Conflict(_)) => Ok(()), // already settled by an earlier run
            Err(e) => Err(e.into()),
        }
    }
}

/// The event an effect's outcome feeds back (SPEC 2.5): a charge's result, a refund's completion.
fn result_event(customer_id: &str, effect: &Effect, declined: bool) -> Option<CustomerEvent> {
    let customer_id = CustomerId::new(customer_id).ok()?;
    let reference = effect.idempotency_key.replace(':', ".");
    let kind = match &effect.kind {
        EffectKind::Charge {
            amount, currency, ..
        } => {
            let payment_id = PaymentId::new(format!("pay.{reference}")).ok()?;
            if declined {
                EventKind::PaymentFailed {
                    reason: "card_declined".into(),
                    payment_id,
                    hard_decline: false,
                }
            } else {
                EventKind::PaymentProcessed {
                    amount: *amount,
                    currency: currency.clone(),
                    payment_id,
                }
            }
        }
        EffectKind::Refund {
            amount, currency, ..
        } => EventKind::RefundProcessed {
            amount: *amount,
            currency: currency.clone(),
            refund_id: RefundId::new(format!("ref.{reference}")).ok()?,
        },
        _ => return None,
    };
    Some(CustomerEvent {
        customer_id,
        occurred_at: None,
        kind,
    })
}
