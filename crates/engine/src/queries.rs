//! Read-side queries front ends answer from: cases, customer history, products, the review queue,
//! statistics. All read committed data; none changes anything except resolving a review item.

use marketgov_core::cases::{Case, CaseSpec, CaseStatus};
use marketgov_core::governors::product_catalog::Product;
use marketgov_core::ids::Sku;
use marketgov_core::Input;
use marketgov_store::{Commit, Store, VersionedTable, VersionedWrite};
use serde_json::{json, Value};

use crate::shard::customer_stream;
use crate::stream::LoggedDecision;
use crate::{App, Error};

/// Records read per page while filtering a listing.
const SCAN_PAGE_MAX: usize = 512;
/// Records a listing reads at most before answering with what it found (and a cursor).
const SCAN_RECORDS_MAX: usize = 20_000;
/// The longest page of any listing.
pub const PAGE_LIMIT_MAX: usize = 500;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts, if there may be one.
    pub next_cursor: Option<String>,
}

impl App {
    /// A workflow case by id.
    pub fn case(&self, tenant: &str, case_id: &str) -> Result<Option<Case>, Error> {
        let Some((_, body)) = self
            .store()
            .versioned(VersionedTable::Cases, &format!("{tenant}/{case_id}"))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Replay {
                location: format!("case {case_id}"),
                detail: e.to_string(),
            })
    }

    /// Cases by spec and status, in id order, from `cursor` (a case id), at most `limit`.
    pub fn cases(
        &self,
        tenant: &str,
        spec: Option<CaseSpec>,
        status: Option<CaseStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Case>, Error> {
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let prefix = match spec {
            Some(spec) => format!("{tenant}/{}-", spec.name()),
            None => format!("{tenant}/"),
        };
        let mut after = cursor.map_or_else(String::new, |c| format!("{tenant}/{c}"));
        let mut items = Vec::new();
        let mut scanned = 0;
        loop {
            let rows = self.store().versioned_list(
                VersionedTable::Cases,
                &prefix,
                &after,
                SCAN_PAGE_MAX,
            )?;
            let exhausted = rows.len() < SCAN_PAGE_MAX;
            for (key, _, body) in rows {
                scanned += 1;
                after = key;
                let case: Case = serde_json::from_slice(&body).map_err(|e| Error::Replay {
                    location: after.clone(),
                    detail: e.to_string(),
                })?;
                if status.is_none_or(|s| s == case.status) {
                    items.push(case);
                    if items.len() == limit {
                        let next = after.split_once('/').map(|(_, id)| id.to_owned());
                        return Ok(Page {
                            items,
                            next_cursor: next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            }
            if scanned >= SCAN_RECORDS_MAX {
                let next = after.split_once('/').map(|(_, id)| id.to_owned());
                return Ok(Page {
                    items,
                    next_cursor: next,
                });
            }
        }
    }

    /// A customer's logged events (its audit entries), after `after_version`, at most `limit`.
    pub fn customer_history(
        &self,
        tenant: &str,
        customer_id: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Page<Value>, Error> {
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let rows = self.store().stream_history(
            &customer_stream(tenant, customer_id),
            after_version,
            limit,
        )?;
        let full = rows.len() == limit;
        let mut last = after_version;
        let mut items = Vec::with_capacity(rows.len());
        for (version, entry) in rows {
            last = version;
            let logged: LoggedDecision =
                serde_json::from_slice(&entry.bytes).map_err(|e| Error::Replay {
                    location: format!("audit entry {}", entry.seq),
                    detail: e.to_string(),
                })?;
            items.push(json!({
                "version": version,
                "seq": entry.seq,
                "hash": marketgov_audit::to_hex(&entry.hash),
                "prev_hash": marketgov_audit::to_hex(&entry.prev_hash),
                "event_id": logged.ctx.event_id,
                "at": logged.ctx.now,
                "input": logged.input,
                "status": logged.status,
                "governors": logged.result["governors"],
                "effects": logged.result["effects"],
            }));
        }
        Ok(Page {
            items,
            next_cursor: full.then(|| last.to_string()),
        })
    }

    /// The tenant's products, in SKU order.
    pub fn products(&self, tenant: &str) -> Result<Vec<Product>, Error> {
        let prefix = format!("product:{tenant}/");
        let mut after = String::new();
        let mut out = Vec::new();
        loop {
            let streams = self.store().streams(&prefix, &after, SCAN_PAGE_MAX)?;
            let exhausted = streams.len() < SCAN_PAGE_MAX;
            for stream in streams {
                if let Some(sku) = stream.strip_prefix(&prefix).and_then(|s| Sku::new(s).ok()) {
                    if let Some(p) = self.product(tenant, &sku)? {
                        out.push(p);
                    }
                }
                after = stream;
            }
            if exhausted || out.len() >= SCAN_RECORDS_MAX {
                return Ok(out);
            }
        }
    }

    /// Open (unresolved) review items of the tenant.
    pub fn review_queue(&self, tenant: &str) -> Result<Vec<Value>, Error> {
        let mut after = String::new();
        let mut out = Vec::new();
        loop {
            let rows =
                self.store()
                    .versioned_list(VersionedTable::Review, "", &after, SCAN_PAGE_MAX)?;
            let exhausted = rows.len() < SCAN_PAGE_MAX;
            for (key, version, body) in rows {
                let item: Value = serde_json::from_slice(&body).unwrap_or_default();
                if item["tenant"] == tenant && item.get("resolution").is_none() {
                    out.push(json!({"id": key, "version": version, "item": item}));
                }
                after = key;
            }
            if exhausted || out.len() >= PAGE_LIMIT_MAX {
                return Ok(out);
            }
        }
    }

    /// Resolves a review item: `discard` closes it; `retry` decides its event again (as a new
    /// event, which may be parked again) and closes it. Answers the retry's reply, if any.
    pub async fn resolve_review(
        &self,
        tenant: &str,
        id: &str,
        action: &str,
        actor: &str,
    ) -> Result<Option<crate::Reply>, Error> {
        let Some((version, body)) = self.store().versioned(VersionedTable::Review, id)? else {
            return Err(Error::Replay {
                location: format!("review item {id}"),
                detail: "no such item".into(),
            });
        };
        let mut item: Value = serde_json::from_slice(&body).map_err(|e| Error::Replay {
            location: format!("review item {id}"),
            detail: e.to_string(),
        })?;
        if item["tenant"] != tenant || item.get("resolution").is_some() {
            return Err(Error::Replay {
                location: format!("review item {id}"),
                detail: "not open for this tenant".into(),
            });
        }
        let reply = match action {
            "discard" => None,
            "retry" => {
                let input = Input::from_value(item["input"].clone())?;
                match input {
                    Input::Customer(event) => Some(self.submit_event(tenant, None, event).await?),
                    Input::Catalog(command) => {
                        Some(self.submit_catalog(tenant, None, command).await?)
                    }
                }
            }
            _ => {
                return Err(Error::Invalid(marketgov_core::InputError::Inconsistent {
                    field: "action",
                    rule: "must be discard or retry",
                }))
            }
        };
        item["resolution"] = json!({"action": action, "actor": actor, "at": self.clock().now()});
        let commit = Commit {
            review: vec![VersionedWrite {
                key: id.to_owned(),
                expected_version: version,
                version: version + 1,
                body: item.to_string().into_bytes(),
            }],
            ..Commit::default()
        };
        self.store()
            .commit(commit)?
            .await
            .map_err(|_| Error::ShuttingDown)??;
        Ok(reply)
    }

    /// The seed's statistics (SPEC 3.2): state, governors, events, pending work.
    pub fn stats(&self) -> Result<Value, Error> {
        let s = self.store().stats()?;
        let (decide_nanos, handle_nanos) = self.timing_nanos();
        let (keys, streams) = self.known_keys();
        Ok(json!({
            "state": if self.store().stopped().is_some() { "error_detected" } else { "idle" },
            "governors_healthy": 8,
            "governors_total": 8,
            "events_processed": s.events,
            "commits": s.commits,
            "commit_batches": s.batches,
            "pending": s.outbox + s.timers,
            "pending_timers": s.timers,
            "pending_effects": s.outbox,
            "conflicts": self.inner().conflicts.load(std::sync::atomic::Ordering::Relaxed),
            "errors": self.inner().refused.load(std::sync::atomic::Ordering::Relaxed),
            "counted_since": "start of this process (conflicts, errors)",
            "shard_restarts": self.shard_restarts(),
            "snapshots_on_eviction": self.inner().snapshots_on_eviction.load(std::sync::atomic::Ordering::Relaxed),
            "store_bytes": self.store().bytes_on_disk(),
            "store_cut_on_open_bytes": self.store().cut_on_open(),
            "timing_nanos": {
                "decide": decide_nanos,
                "handle": handle_nanos,
                "meaning": "summed over customer events since start: time in the pure decision, and from a shard taking the event to its answer"
            },
            "decision_to_durable_us": {
                "since": "start of this process",
                "meaning": "from the core's decision to the store's acknowledgement that its commit is synced (SPEC 5), microseconds",
                "quantiles": self.decision_to_durable().summary_json(),
            },
            "recent_replies": {
                "held": self.inner().recent_replies.len(),
                "answered": self.inner().recent_replies.answered(),
                "meaning": "answers of the newest keyed requests kept in memory: a prompt retry is answered without a store read",
            },
            "memory": process_memory(),
            "store_opened": self.store().open_path().map(|p| match p {
                marketgov_store_log::OpenPath::IndexKeptAtClose { scanned_bytes } => json!({
                    "index": "kept at the last clean close, then the log written after it scanned",
                    "full_scan": false,
                    "scanned_bytes": scanned_bytes,
                }),
                marketgov_store_log::OpenPath::Scanned(why) => json!({
                    "index": "rebuilt by scanning every segment",
                    "full_scan": true,
                    "why": why,
                }),
            }),
            "store_index_memory": self.store().index_memory().map(|m| json!({
                "total_bytes": m.total(),
                "streams": m.streams,
                "key_filters": m.key_filters,
                "key_runs": m.key_runs,
                "pending_effects": m.pending_effects,
                "timers": m.timers,
                "other": m.other,
                "meaning": "the log-structured store's index in memory, by part, estimated from its structures' sizes",
            })),
            "store_segments_prepared": self.store().prepared_segments().map(|(prepared, not_ready)| json!({
                "prepared": prepared,
                "not_ready": not_ready,
                "meaning": "segments of the log-structured store started from a file written with zeros ahead of use, and started as ordinary growing files because theirs was not ready, since the open",
            })),
            "store_batches_written": self.store().batches_written().map(|(direct, buffered)| json!({
                "direct": direct,
                "buffered": buffered,
                "meaning": "batches the log-structured store wrote since the open straight to the disk (O_DIRECT, within a prepared segment) and through the page cache",
            })),
            "known_keys": known_json(&keys, "in-memory filter of stored idempotency keys: a new key needs no read once loaded"),
            "known_streams": known_json(&streams, "in-memory filter of stored customer streams: a new customer needs no read once loaded"),
        }))
    }
}

fn known_json(k: &crate::KnownKeysStats, meaning: &str) -> Value {
    json!({
        "loaded": k.loaded,
        "stages": k.stages,
        "bytes": k.bytes,
        "keys": k.keys,
        "reads_saved": k.reads_saved,
        "meaning": meaning,
    })
}

/// This process's resident memory and its peak, in bytes (Linux; absent elsewhere).
fn process_memory() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    json!({"resident_bytes": kib("VmRSS:"), "peak_resident_bytes": kib("VmHWM:")})
}

impl App {
    /// Parks an input for an operator (or for a later automatic retry): a review item holding
    /// the input, the reason and `extra` fields. Answers the item's id.
    pub async fn park_input(
        &self,
        tenant: &str,
        input: &Input,
        reason: &str,
        extra: Value,
    ) -> Result<String, Error> {
        let ctx = self.inner().context();
        let mut item = json!({"tenant": tenant, "input": input, "reason": reason, "ctx": ctx});
        if let (Some(obj), Value::Object(more)) = (item.as_object_mut(), extra) {
            obj.extend(more);
        }
        let commit = Commit {
            review: vec![VersionedWrite {
                key: ctx.event_id.clone(),
                expected_version: 0,
                version: 1,
                body: item.to_string().into_bytes(),
            }],
            ..Commit::default()
        };
        self.store()
            .commit(commit)?
            .await
            .map_err(|_| Error::ShuttingDown)??;
        Ok(ctx.event_id)
    }

    /// Records a notification that was acknowledged but not acted on, as the one audit entry of
    /// its own `ignored:<tenant>/<source>/<id>` stream, so that nothing received goes unrecorded;
    /// a redelivery of the same `id` finds it recorded.
    pub async fn record_ignored(
        &self,
        tenant: &str,
        source: &str,
        id: &str,
        notification: Value,
        reason: &str,
    ) -> Result<(), Error> {
        let stream = format!("ignored:{tenant}/{source}/{id}");
        let ctx = self.inner().context();
        let logged = LoggedDecision {
            v: crate::stream::ENCODING_VERSION,
            tenant: tenant.to_owned(),
            stream: stream.clone(),
            idempotency_key: None,
            ctx: ctx.clone(),
            input: notification,
            products: Vec::new(),
            status: marketgov_core::orchestrator::EventStatus::Completed,
            result: json!({"ignored": reason}),
        };
        let commit = Commit {
            events: vec![marketgov_store::EventWrite {
                stream,
                stream_version: 1,
                event_id: ctx.event_id.clone(),
                at_ms: ctx.now.as_millisecond(),
                body: serde_json::to_vec(&logged).map_err(|e| Error::Replay {
                    location: "ignored".into(),
                    detail: e.to_string(),
                })?,
            }],
            ..Commit::default()
        };
        match self
            .store()
            .commit(commit)?
            .await
            .map_err(|_| Error::ShuttingDown)?
        {
            Ok(_) | Err(marketgov_store::Error::Conflict(_)) => Ok(()), // recorded, now or before
            Err(e) => Err(e.into()),
        }
    }
}
