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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use marketgov_core::breaker::{Admission, Breaker, BreakerSettings, TokenBucket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
        // Statements are prepared once per connection (compiling them was a tenth of the
        // connector's time over HTTP).
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.prepare_cached("INSERT INTO deliveries (effect_key) VALUES (?1)")
            .and_then(|mut s| s.execute([&effect.idempotency_key]))
            .map_err(|e| e.to_string())?;
        let known: Option<bool> = tx
            .prepare_cached("SELECT declined FROM applications WHERE effect_key = ?1")
            .and_then(|mut s| {
                s.query_row([&effect.idempotency_key], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| e.to_string())?;
        let declined = match known {
            Some(declined) => declined,
            None => {
                let declined = matches!(effect.kind, EffectKind::Charge { .. })
                    && customer_id.ends_with("-declined");
                tx.prepare_cached(
                    "INSERT INTO applications (effect_key, kind, declined, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![effect.idempotency_key, effect.kind.name(), declined, body])
                })
                .map_err(|e| e.to_string())?;
                declined
            }
        };
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Outcome::Applied { declined })
    }

    /// Records a delivery that has no outcome to decide (an answer to a marketplace): applied once
    /// per key, like every other.
    pub fn record(&self, effect_key: &str, kind: &str, body: &[u8]) -> Result<(), String> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| "sandbox ledger poisoned".to_string())?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.prepare_cached("INSERT INTO deliveries (effect_key) VALUES (?1)")
            .and_then(|mut s| s.execute([effect_key]))
            .map_err(|e| e.to_string())?;
        tx.prepare_cached(
            "INSERT OR IGNORE INTO applications (effect_key, kind, declined, body) VALUES (?1, ?2, 0, ?3)",
        )
        .and_then(|mut s| s.execute(params![effect_key, kind, body]))
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())
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

/// Effects delivered at once at most, over all tenants.
pub const EFFECTS_CONCURRENT_MAX: usize = 64;
/// Effects of one tenant delivered at once at most (its bulkhead).
pub const TENANT_EFFECTS_CONCURRENT_MAX: usize = 8;

/// Per-connector breakers and per-tenant bulkheads and rate limits, kept in memory: they protect
/// the receivers of this process, and start closed and full after a restart.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Effects one tenant may start per second, and its burst.
    pub per_second: u32,
    pub burst: u32,
    breakers: Mutex<HashMap<String, Breaker>>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    bulkheads: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Limits {
    /// Limits with a per-tenant token bucket of `per_second` and `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            ..Self::default()
        }
    }

    /// Whether a delivery on `connector` for `tenant` may start now; `Err(until)` holds it.
    fn admit(&self, connector: &str, tenant: &str, now_ms: i64) -> Result<(), i64> {
        {
            let mut breakers = self.breakers.lock().map_err(|_| now_ms)?;
            let breaker = breakers
                .entry(connector.to_owned())
                .or_insert_with(|| Breaker::new(BreakerSettings::default()));
            if let Admission::Refused { until_ms } = breaker.admit(now_ms) {
                return Err(until_ms);
            }
        }
        let mut buckets = self.buckets.lock().map_err(|_| now_ms)?;
        buckets
            .entry(tenant.to_owned())
            .or_insert_with(|| TokenBucket::new(self.burst, self.per_second, now_ms))
            .take(now_ms)
    }

    fn outcome(&self, connector: &str, ok: bool, now_ms: i64) {
        if let Ok(mut breakers) = self.breakers.lock() {
            let breaker = breakers
                .entry(connector.to_owned())
                .or_insert_with(|| Breaker::new(BreakerSettings::default()));
            if ok {
                breaker.succeeded();
            } else {
                breaker.failed(now_ms);
            }
        }
    }

    fn bulkhead(&self, tenant: &str) -> Arc<Semaphore> {
        match self.bulkheads.lock() {
            Ok(mut map) => map
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(TENANT_EFFECTS_CONCURRENT_MAX)))
                .clone(),
            Err(_) => Arc::new(Semaphore::new(1)),
        }
    }

    /// The state of a connector's breaker (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self, connector: &str) -> &'static str {
        self.breakers
            .lock()
            .ok()
            .and_then(|b| b.get(connector).map(Breaker::name))
            .unwrap_or("closed")
    }
}

impl App {
    /// Carries out every effect ready now, concurrently within the bounds above; returns how many
    /// rows were settled (done, retried, held or given up).
    pub async fn run_effects(&self) -> Result<usize, Error> {
        let _one_executor = self.inner().effects_running.lock().await;
        let now_ms = self.clock().now().as_millisecond();
        let rows = self.store().ready_outbox(now_ms, EFFECTS_PER_ROUND_MAX)?;
        // A charge whose void is queued too never leaves: the compensation cancels it here.
        let voided: HashSet<(String, String)> = rows
            .iter()
            .filter_map(
                |r| match serde_json::from_slice::<Effect>(&r.body).ok()?.kind {
                    EffectKind::Void { invoice_id, .. } => Some((r.stream.clone(), invoice_id)),
                    _ => None,
                },
            )
            .collect();
        let global = Arc::new(Semaphore::new(EFFECTS_CONCURRENT_MAX));
        let mut tasks = JoinSet::new();
        let mut settled = 0;
        for row in rows {
            settled += 1;
            let cancelled = matches!(
                serde_json::from_slice::<Effect>(&row.body).map(|e| e.kind),
                Ok(EffectKind::Charge { ref invoice_id, .. }) if voided.contains(&(row.stream.clone(), invoice_id.clone()))
            );
            if cancelled {
                self.settle(OutboxUpdate::Done {
                    effect_key: row.effect_key,
                })
                .await?;
                continue;
            }
            let tenant = row
                .stream
                .split_once(':')
                .and_then(|(_, rest)| rest.split_once('/'))
                .map_or("", |(t, _)| t)
                .to_owned();
            if let Err(until_ms) = self.inner().limits.admit(&row.connector, &tenant, now_ms) {
                // Held, not failed: the attempt count stays.
                self.settle(OutboxUpdate::Retry {
                    effect_key: row.effect_key,
                    attempts: row.attempts,
                    next_attempt_ms: until_ms,
                    error: format!(
                        "held: {} breaker {} or tenant rate limit",
                        row.connector,
                        self.inner().limits.breaker_state(&row.connector)
                    ),
                })
                .await?;
                continue;
            }
            let (app, global, bulkhead) = (
                self.clone(),
                global.clone(),
                self.inner().limits.bulkhead(&tenant),
            );
            tasks.spawn(async move {
                let _global = global.acquire_owned().await;
                let _tenant = bulkhead.acquire_owned().await;
                app.run_effect(row, now_ms).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| Error::Setup(format!("effect task failed: {e}")))??;
        }
        Ok(settled)
    }

    async fn run_effect(&self, row: OutboxRow, now_ms: i64) -> Result<(), Error> {
        if row.connector == "gcp_procurement" {
            return self.run_gcp_answer(row, now_ms).await;
        }
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
        let delivered = match &self.inner().options.webhook {
            Some(webhook) => {
                let body = serde_json::json!({"tenant": tenant, "customer_id": customer_id, "effect": effect}).to_string();
                let now_unix = now_ms.div_euclid(1000);
                webhook
                    .deliver(&effect.idempotency_key, body.as_bytes(), now_unix)
                    .await
                    .map(|declined| Outcome::Applied { declined })
            }
            None => {
                // The sandbox's ledger syncs to disk per delivery: kept off the async workers,
                // which would otherwise stall every request for the length of an fsync.
                let (app, customer, sent, body) = (
                    self.clone(),
                    customer_id.to_owned(),
                    effect.clone(),
                    row.body.clone(),
                );
                tokio::task::spawn_blocking(move || app.sandbox().deliver(&customer, &sent, &body))
                    .await
                    .unwrap_or_else(|e| Err(format!("sandbox delivery failed: {e}")))
            }
        };
        self.inner()
            .limits
            .outcome(&row.connector, delivered.is_ok(), now_ms);
        let update = match delivered {
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

    /// Delivers an answer to Google (or, without an endpoint configured, records it in the
    /// sandbox ledger).
    async fn run_gcp_answer(&self, row: OutboxRow, now_ms: i64) -> Result<(), Error> {
        let answer: serde_json::Value =
            serde_json::from_slice(&row.body).map_err(|e| Error::Replay {
                location: format!("outbox {}", row.effect_key),
                detail: e.to_string(),
            })?;
        let sent = match &self.inner().options.gcp_procurement {
            Some(gcp) => {
                let (provider, id, action) = (
                    answer["provider_id"].as_str().unwrap_or_default(),
                    answer["entitlement_id"].as_str().unwrap_or_default(),
                    answer["action"].as_str().unwrap_or_default(),
                );
                let mut body = answer.clone();
                if let Some(obj) = body.as_object_mut() {
                    obj.retain(|k, _| {
                        !matches!(k.as_str(), "action" | "provider_id" | "entitlement_id")
                    });
                }
                gcp.send(provider, id, action, &body).await
            }
            None => self
                .sandbox()
                .record(&row.effect_key, "gcp_procurement", &row.body),
        };
        self.inner()
            .limits
            .outcome(&row.connector, sent.is_ok(), now_ms);
        let update = match sent {
            Ok(()) => OutboxUpdate::Done {
                effect_key: row.effect_key,
            },
            Err(error) if row.attempts + 1 >= EFFECT_ATTEMPTS_MAX => OutboxUpdate::Dead {
                effect_key: row.effect_key,
                error,
            },
            Err(error) => {
                let attempts = row.attempts + 1;
                let wait = jittered_delay_ms(attempts, &row.effect_key, RETRY_DELAY_MS_MAX);
                OutboxUpdate::Retry {
                    effect_key: row.effect_key,
                    attempts,
                    next_attempt_ms: now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
                    error,
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

    /// The state of a connector's circuit breaker (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self, connector: &str) -> &'static str {
        self.inner().limits.breaker_state(connector)
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
