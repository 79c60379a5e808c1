//! Agent envelopes (SPEC 2.4): the durable per-(agent, region) sequence tracker and the workflow
//! cases they launch and update.
//!
//! An envelope is handled on the shard of its (tenant, agent, region) stream, so one agent
//! stream has one writer. Cases and inventory may be shared by several agents' streams: they are
//! written with the version they were read at, and a conflict is retried on fresh state.
//! Everything of one envelope (sequence, idempotency record, cases, inventory, audit entry) is one
//! commit; a storage failure records nothing, so the agent's retry succeeds.

use std::collections::BTreeMap;

use marketgov_core::cases::{decide_envelope, Case, CaseRejection, Envelope, Inventory};
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::sequence::{SequenceTracker, SequenceVerdict};
use marketgov_store::{
    Commit, EventWrite, IdempotencyRecord, Store, VersionedTable, VersionedWrite,
};
use serde_json::{json, Value};

use crate::app::{Claim, Inner};
use crate::shard::KeyClaim;
use crate::stream::{LoggedDecision, ENCODING_VERSION};
use crate::{App, Error};

/// Attempts at an envelope whose cases changed under it before giving up.
pub const CASE_CONFLICT_RETRIES_MAX: usize = 8;

/// The answer to an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentReply {
    /// Processed (possibly with a gap reported) or a duplicate answered with the first reply.
    Ack(Value),
    /// Refused: the update does not fit the case (recorded, so a retry gets the same answer).
    Refused(Value),
    /// Not seen and not later than the last accepted sequence.
    OutOfOrder {
        /// The last sequence accepted on the stream.
        last_accepted: u64,
    },
}

fn agent_stream(tenant: &str, e: &Envelope) -> String {
    format!("agent:{tenant}/{}/{}", e.source_agent, e.source_region)
}

fn scoped(tenant: &str, key: &str) -> String {
    format!("{tenant}/{key}")
}

impl App {
    /// Handles one validated envelope.
    pub async fn submit_envelope(
        &self,
        tenant: &str,
        envelope: Envelope,
    ) -> Result<AgentReply, Error> {
        envelope.validate()?;
        let stream = agent_stream(tenant, &envelope);
        let key = format!(
            "a2a:{}/{}:{}",
            envelope.source_agent, envelope.source_region, envelope.idempotency_key
        );
        // Same rules as events: a seen key answers the first reply (marked duplicate).
        let claim = match self.claim_raw(tenant, &key, "a2a", fingerprint(&envelope)?)? {
            Claim::Seen(first) => {
                let mut body: Value = serde_json::from_slice(&first).unwrap_or_default();
                let reply = body["reply"].take();
                let mut ack = reply.clone();
                if ack.get("status").and_then(Value::as_str) == Some("processed") {
                    ack["status"] = json!("duplicate");
                }
                return Ok(if body["refused"].as_bool() == Some(true) {
                    AgentReply::Refused(reply)
                } else {
                    AgentReply::Ack(ack)
                });
            }
            Claim::New(claim, guard) => (claim, guard),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_agent(&stream, tenant, claim.0, envelope, tx)
            .await?;
        let result = rx.await.map_err(|_| Error::ShuttingDown)?;
        drop(claim.1);
        result
    }
}

/// Decides an envelope on its stream's shard.
pub(crate) async fn decide_agent(
    inner: &Inner,
    tenant: &str,
    claim: KeyClaim,
    envelope: Envelope,
) -> Result<AgentReply, Error> {
    let stream = agent_stream(tenant, &envelope);
    let tracker_key = scoped(
        tenant,
        &format!("{}/{}", envelope.source_agent, envelope.source_region),
    );
    for _ in 0..CASE_CONFLICT_RETRIES_MAX {
        let tracker_row = inner
            .store
            .versioned(VersionedTable::Sequences, &tracker_key)?;
        let (tracker_version, tracker) = match &tracker_row {
            Some((v, body)) => (
                *v,
                serde_json::from_slice::<SequenceTracker>(body)
                    .map_err(|e| replay("sequence tracker", e))?,
            ),
            None => (0, SequenceTracker::default()),
        };
        let verdict = tracker.classify(envelope.sequence_number, false);
        let gap = match verdict {
            SequenceVerdict::OutOfOrder { last_accepted } => {
                return Ok(AgentReply::OutOfOrder { last_accepted })
            }
            SequenceVerdict::Gap { expected, missing } => Some((expected, missing)),
            _ => None,
        };
        let mut cases = BTreeMap::new();
        for id in envelope.case_ids() {
            if let Some((_, body)) = inner
                .store
                .versioned(VersionedTable::Cases, &scoped(tenant, &id))?
            {
                let case: Case = serde_json::from_slice(&body).map_err(|e| replay("case", e))?;
                cases.insert(id, case);
            }
        }
        let inventory = match envelope.product_id() {
            Some(product) => match inner
                .store
                .versioned(VersionedTable::Inventory, &scoped(tenant, product))?
            {
                Some((_, body)) => Some(
                    serde_json::from_slice::<Inventory>(&body)
                        .map_err(|e| replay("inventory", e))?,
                ),
                None => None,
            },
            None => None,
        };
        let decided = decide_envelope(&envelope, &cases, inventory.as_ref());
        let (reply, refused, status) = match &decided {
            Ok(d) => {
                let mut ack = json!({"status": "processed", "sequence_number": envelope.sequence_number, "case_id": d.case_id, "gap_detected": false});
                if let Some((expected, missing)) = gap {
                    ack["gap_detected"] = json!(true);
                    ack["expected_sequence"] = json!(expected);
                    ack["missing_sequences"] = json!(missing);
                }
                (ack, false, EventStatus::Completed)
            }
            Err(rejection) => (refusal(&envelope, rejection), true, EventStatus::Rejected),
        };
        let ctx = inner.context();
        let next_tracker = tracker.accept(envelope.sequence_number);
        let mut commit = Commit {
            sequences: vec![VersionedWrite {
                key: tracker_key.clone(),
                expected_version: tracker_version,
                version: tracker_version + 1,
                body: serde_json::to_vec(&next_tracker)
                    .map_err(|e| replay("sequence tracker", e))?,
            }],
            ..Commit::default()
        };
        if let Ok(d) = &decided {
            for (case, read_version) in &d.cases {
                commit.cases.push(VersionedWrite {
                    key: scoped(tenant, &case.case_id),
                    expected_version: read_version.unwrap_or(0),
                    version: case.version,
                    body: serde_json::to_vec(case).map_err(|e| replay("case", e))?,
                });
            }
            if let Some((inv, read_version)) = &d.inventory {
                commit.inventory.push(VersionedWrite {
                    key: scoped(tenant, &inv.product_id),
                    expected_version: *read_version,
                    version: inv.version,
                    body: serde_json::to_vec(inv).map_err(|e| replay("inventory", e))?,
                });
            }
        }
        let logged = LoggedDecision {
            v: ENCODING_VERSION,
            tenant: tenant.to_owned(),
            stream: stream.clone(),
            idempotency_key: Some(claim.key.clone()),
            ctx: ctx.clone(),
            input: serde_json::to_value(&envelope).map_err(|e| replay("envelope", e))?,
            products: Vec::new(),
            status,
            result: json!({"reply": reply, "cases": decided.as_ref().map(|d| d.cases.iter().map(|(c, _)| json!({"case_id": c.case_id, "state": c.state.name()})).collect::<Vec<_>>()).unwrap_or_default()}),
        };
        commit.events.push(EventWrite {
            stream: stream.clone(),
            stream_version: tracker_version + 1,
            event_id: ctx.event_id.clone(),
            at_ms: ctx.now.as_millisecond(),
            body: serde_json::to_vec(&logged).map_err(|e| replay("log entry", e))?,
        });
        commit.idempotency.push(IdempotencyRecord {
            tenant: claim.tenant.clone(),
            key: claim.key.clone(),
            operation: claim.operation.to_owned(),
            fingerprint: claim.fingerprint,
            response: serde_json::to_vec(&json!({"reply": reply, "refused": refused}))
                .map_err(|e| replay("reply", e))?,
            created_at_ms: ctx.now.as_millisecond(),
        });
        if claim.replaces_expired {
            commit
                .idempotency_expired
                .push((claim.tenant.clone(), claim.key.clone()));
        }
        match inner
            .store
            .commit(commit)?
            .await
            .map_err(|_| Error::ShuttingDown)?
        {
            Ok(_) => {
                return Ok(if refused {
                    AgentReply::Refused(reply)
                } else {
                    AgentReply::Ack(reply)
                })
            }
            // A case or inventory record changed under us (another agent's stream): again, fresh.
            Err(marketgov_store::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Overloaded(format!(
        "cases of envelope {} kept changing; retry",
        envelope.event_id
    )))
}

fn refusal(envelope: &Envelope, rejection: &CaseRejection) -> Value {
    json!({
        "status": "rejected",
        "sequence_number": envelope.sequence_number,
        "reason": rejection.to_string(),
        "rejection": rejection,
    })
}

fn replay(what: &str, e: serde_json::Error) -> Error {
    Error::Replay {
        location: what.to_owned(),
        detail: e.to_string(),
    }
}

/// SHA-256 over the operation and the envelope's JSON.
fn fingerprint(envelope: &Envelope) -> Result<[u8; 32], Error> {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(envelope).map_err(|e| replay("envelope", e))?;
    let mut h = Sha256::new();
    h.update(b"a2a\0");
    h.update(&bytes);
    Ok(h.finalize().into())
}
