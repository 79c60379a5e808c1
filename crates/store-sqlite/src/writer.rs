//! The single writer: drains the commit queue, writes every queued commit of a batch in one
//! transaction (each in its own savepoint, so one bad commit fails alone), syncs once, then
//! acknowledges every caller of the batch. A failed sync acknowledges nothing and stops the writer
//! for good (fail-stop): SQLite's state after a failed fsync cannot be trusted, and a sync is never
//! retried on the same file. Recovery is a restart, from what is durable.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use marketgov_audit::{CheckpointSigner, Head};
use marketgov_store::{Commit, Error, OutboxUpdate, Receipt, TimerWrite};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::{checksum, storage, FaultInjector, FaultMode, Shared};

/// One queued commit and the caller waiting for it.
pub(crate) struct Request {
    pub commit: Commit,
    pub ack: oneshot::Sender<Result<Receipt, Error>>,
}

/// Stored timers and pending outbox rows, counted as the writer changes them and written to
/// `meta` in the same transaction, so the count is as durable as the rows. Like the audit head,
/// a commit's changes to it are undone when the commit is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub timers: u64,
    pub outbox: u64,
}

impl Pending {
    /// The counts as stored.
    pub fn read(conn: &Connection) -> Result<Self, Error> {
        let get = |key: &str| -> Result<u64, Error> {
            let text: String = conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .map_err(storage)?;
            text.parse().map_err(|_| Error::Corrupt {
                location: format!("meta {key}"),
                detail: format!("not a count: {text:?}"),
            })
        };
        Ok(Self {
            timers: get("pending_timers")?,
            outbox: get("pending_outbox")?,
        })
    }

    fn write(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), Error> {
        let mut st = tx
            .prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")
            .map_err(storage)?;
        st.execute(params!["pending_timers", self.timers.to_string()])
            .map_err(storage)?;
        st.execute(params!["pending_outbox", self.outbox.to_string()])
            .map_err(storage)?;
        Ok(())
    }

    pub fn publish(&self, shared: &Shared) {
        shared.pending_timers.store(self.timers, Ordering::Relaxed);
        shared.pending_outbox.store(self.outbox, Ordering::Relaxed);
    }
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub head: Head,
    pub pending: Pending,
    pub signer: Option<CheckpointSigner>,
    pub checkpoint_every: u64,
    pub last_checkpoint: u64,
    pub batch_commits_max: usize,
    pub shared: Arc<Shared>,
    pub fault: Option<Arc<FaultInjector>>,
}

impl Writer {
    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::with_capacity(self.batch_commits_max.min(64));
            batch.push(first);
            // Group commit: take whatever queued while the last sync ran; never wait for more.
            while batch.len() < self.batch_commits_max {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            if let Some(reason) = self.shared.stopped_reason() {
                for request in batch {
                    let _ = request.ack.send(Err(Error::Stopped {
                        reason: reason.clone(),
                    }));
                }
                continue;
            }
            self.run_batch(batch);
        }
        self.final_checkpoint();
    }

    /// On a clean close, signs whatever the last checkpoint does not cover, so a stopped store's
    /// whole log is signed.
    fn final_checkpoint(&mut self) {
        let (Some(signer), None) = (&self.signer, self.shared.stopped_reason()) else {
            return;
        };
        if self.head.seq <= self.last_checkpoint {
            return;
        }
        let c = signer.sign(self.head.seq, &self.head.hash);
        let written = self.conn.execute(
            "INSERT INTO checkpoints (seq, hash, signature) VALUES (?1, ?2, ?3)",
            params![c.seq as i64, c.hash, c.signature],
        );
        if written.is_ok() {
            self.last_checkpoint = self.head.seq;
        }
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let head_before = self.head;
        let pending_before = self.pending;
        let outcome = self.write_batch(&batch);
        match outcome {
            Ok(results) => {
                self.shared
                    .commits
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.ack.send(result);
                }
            }
            Err(e) => {
                // Nothing of the batch is acknowledged; the writer stops.
                self.head = head_before;
                self.pending = pending_before;
                let reason = e.to_string();
                self.shared.stop(&reason);
                for request in batch {
                    let _ = request.ack.send(Err(Error::Stopped {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Writes the batch and syncs it. `Ok` holds each commit's own result; `Err` means the
    /// transaction or its sync failed and nothing can be acknowledged.
    ///
    /// The batch is first written without savepoints (a savepoint journals every page it
    /// touches, a large share of the writer's time); only when one of its commits fails is the
    /// transaction rolled back and the batch written again with a savepoint per commit, so the
    /// failing commit fails alone.
    fn write_batch(&mut self, batch: &[Request]) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let head_before = self.head;
        let pending_before = self.pending;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut all_written = true;
        for request in batch {
            match write_commit(&tx, &mut self.head, &mut self.pending, &request.commit) {
                Ok(receipt) => results.push(Ok(receipt)),
                Err(_) => {
                    all_written = false;
                    break;
                }
            }
        }
        let tx = if all_written {
            tx
        } else {
            tx.rollback().map_err(storage)?;
            self.head = head_before;
            self.pending = pending_before;
            results.clear();
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(storage)?;
            for request in batch {
                let (head, pending) = (self.head, self.pending);
                tx.execute_batch("SAVEPOINT one_commit").map_err(storage)?;
                match write_commit(&tx, &mut self.head, &mut self.pending, &request.commit) {
                    Ok(receipt) => {
                        tx.execute_batch("RELEASE one_commit").map_err(storage)?;
                        results.push(Ok(receipt));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO one_commit; RELEASE one_commit")
                            .map_err(storage)?;
                        self.head = head;
                        self.pending = pending;
                        results.push(Err(e));
                    }
                }
            }
            tx
        };
        if self.pending != pending_before {
            self.pending.write(&tx)?;
        }
        let checkpoint_due = self.head.seq >= self.last_checkpoint + self.checkpoint_every;
        if let (Some(signer), true) = (&self.signer, checkpoint_due) {
            {
                let c = signer.sign(self.head.seq, &self.head.hash);
                tx.execute(
                    "INSERT INTO checkpoints (seq, hash, signature) VALUES (?1, ?2, ?3)",
                    params![c.seq as i64, c.hash, c.signature],
                )
                .map_err(storage)?;
            }
        }
        match self.fault.as_ref().and_then(|f| f.next_batch()) {
            None => tx.commit().map_err(storage)?,
            Some(FaultMode::Held) => {
                if let Some(f) = &self.fault {
                    f.wait_released();
                }
                tx.commit().map_err(storage)?;
            }
            Some(FaultMode::LostSync) => {
                drop(tx); // rolled back: as if the sync never reached the disk
                return Err(Error::Storage(
                    "injected fault: sync failed, batch lost".into(),
                ));
            }
            Some(FaultMode::UnacknowledgedSync) => {
                tx.commit().map_err(storage)?; // on disk, but the caller is told it failed
                return Err(Error::Storage(
                    "injected fault: sync reported failure".into(),
                ));
            }
        }
        if checkpoint_due && self.signer.is_some() {
            self.last_checkpoint = self.head.seq;
        }
        self.shared.head_seq.store(self.head.seq, Ordering::Relaxed);
        self.pending.publish(&self.shared);
        Ok(results)
    }
}

fn write_commit(
    tx: &rusqlite::Transaction<'_>,
    head: &mut Head,
    pending: &mut Pending,
    commit: &Commit,
) -> Result<Receipt, Error> {
    let mut receipt = Receipt {
        entries: Vec::with_capacity(commit.events.len()),
    };
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (seq, stream, stream_version, event_id, at_ms, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(storage)?;
        for e in &commit.events {
            let entry = head.append(e.body.clone());
            insert
                .execute(params![
                    entry.seq as i64,
                    e.stream,
                    e.stream_version as i64,
                    e.event_id,
                    e.at_ms,
                    entry.bytes,
                    &entry.prev_hash[..],
                    &entry.hash[..]
                ])
                .map_err(|err| {
                    conflict_or_storage(err, || {
                        format!("stream {} version {} is taken", e.stream, e.stream_version)
                    })
                })?;
            receipt
                .entries
                .push((entry.seq, entry.prev_hash, entry.hash));
        }
    }
    for s in &commit.snapshots {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO snapshots (stream, version, body, sum) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| {
            st.execute(params![
                s.stream,
                s.version as i64,
                s.body,
                checksum(&s.body)
            ])
        })
        .map_err(storage)?;
    }
    for (tenant, key) in &commit.idempotency_expired {
        tx.prepare_cached("DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2")
            .and_then(|mut st| st.execute(params![tenant, key]))
            .map_err(storage)?;
    }
    if let Some(sweep) = &commit.idempotency_sweep {
        sweep_idempotency(tx, sweep)?;
    }
    for r in &commit.idempotency {
        let sum = checksum(&[r.fingerprint.as_slice(), &r.response].concat());
        tx.prepare_cached(
            "INSERT INTO idempotency (tenant, key, operation, fingerprint, response, created_at_ms, sum)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut st| {
            st.execute(params![r.tenant, r.key, r.operation, &r.fingerprint[..], r.response, r.created_at_ms, sum])
        })
        .map_err(|err| conflict_or_storage(err, || format!("idempotency key {} is taken", r.key)))?;
    }
    for t in &commit.timers {
        match t {
            TimerWrite::Set {
                stream,
                kind,
                due_at_ms,
            } => {
                // A reschedule updates the row; only a new timer is inserted and counted.
                let moved = tx
                    .prepare_cached(
                        "UPDATE timers SET due_at_ms = ?3 WHERE stream = ?1 AND kind = ?2",
                    )
                    .and_then(|mut st| st.execute(params![stream, kind, due_at_ms]))
                    .map_err(storage)?;
                if moved == 0 {
                    tx.prepare_cached(
                        "INSERT INTO timers (stream, kind, due_at_ms) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut st| st.execute(params![stream, kind, due_at_ms]))
                    .map_err(storage)?;
                    pending.timers += 1;
                }
            }
            TimerWrite::Cancel { stream, kind } => {
                let removed = tx
                    .prepare_cached("DELETE FROM timers WHERE stream = ?1 AND kind = ?2")
                    .and_then(|mut st| st.execute(params![stream, kind]))
                    .map_err(storage)?;
                pending.timers = pending.timers.saturating_sub(removed as u64);
            }
        }
    }
    for o in &commit.outbox {
        tx.prepare_cached(
            "INSERT INTO outbox (effect_key, stream, connector, body, sum, next_attempt_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| st.execute(params![o.effect_key, o.stream, o.connector, o.body, checksum(&o.body), o.not_before_ms]))
        .map_err(|err| conflict_or_storage(err, || format!("effect {} is already queued", o.effect_key)))?;
        pending.outbox += 1;
    }
    for u in &commit.outbox_updates {
        let changed = match u {
            OutboxUpdate::Done { effect_key } => tx
                .prepare_cached("UPDATE outbox SET state = 'done' WHERE effect_key = ?1 AND state = 'pending'")
                .and_then(|mut st| st.execute(params![effect_key])),
            OutboxUpdate::Retry { effect_key, attempts, next_attempt_ms, error } => tx
                .prepare_cached(
                    "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
                     WHERE effect_key = ?1 AND state = 'pending'",
                )
                .and_then(|mut st| st.execute(params![effect_key, attempts, next_attempt_ms, error])),
            OutboxUpdate::Dead { effect_key, error } => tx
                .prepare_cached("UPDATE outbox SET state = 'dead', last_error = ?2 WHERE effect_key = ?1 AND state = 'pending'")
                .and_then(|mut st| st.execute(params![effect_key, error])),
        }
        .map_err(storage)?;
        if changed != 1 {
            return Err(Error::Conflict(format!(
                "outbox row for {u:?} is not pending"
            )));
        }
        if !matches!(u, OutboxUpdate::Retry { .. }) {
            pending.outbox = pending.outbox.saturating_sub(1); // done or dead: no longer pending
        }
    }
    for (table, writes) in [
        ("sequences", &commit.sequences),
        ("cases", &commit.cases),
        ("inventory", &commit.inventory),
        ("review_queue", &commit.review),
        ("api_keys", &commit.api_keys),
    ] {
        for w in writes.iter() {
            let sum = checksum(&w.body);
            let changed = if w.expected_version == 0 {
                tx.prepare_cached("INSERT OR IGNORE INTO versioned (tbl, key, version, body, sum) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .and_then(|mut st| st.execute(params![table, w.key, w.version as i64, w.body, sum]))
            } else {
                tx.prepare_cached(
                    "UPDATE versioned SET version = ?3, body = ?4, sum = ?5 WHERE tbl = ?1 AND key = ?2 AND version = ?6",
                )
                .and_then(|mut st| st.execute(params![table, w.key, w.version as i64, w.body, sum, w.expected_version as i64]))
            }
            .map_err(storage)?;
            if changed != 1 {
                return Err(Error::Conflict(format!(
                    "{table}/{} is not at version {}",
                    w.key, w.expected_version
                )));
            }
        }
    }
    Ok(receipt)
}

fn conflict_or_storage(err: rusqlite::Error, what: impl FnOnce() -> String) -> Error {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => Error::Conflict(what()),
        _ => storage(err),
    }
}

/// Removes expired idempotency records and those beyond the count bound, oldest first, at most
/// `sweep.limit` per call. Age is insertion order (the rowid): records are written with the
/// clock of their commit, so the oldest rowids are the oldest records, and the work is bounded
/// by the limit rather than by the table (no scan, no count: both would grow with the table).
/// The count bound keeps the newest `keep_max` insertions; where expired keys were replaced in
/// between it may keep a few fewer, never more.
fn sweep_idempotency(
    tx: &rusqlite::Transaction<'_>,
    sweep: &marketgov_store::IdempotencySweep,
) -> Result<(), Error> {
    let limit = sweep.limit as i64;
    // Only when the oldest record has expired is there anything to look at (the common case,
    // run every tick, costs one lookup).
    let oldest: Option<i64> = tx
        .prepare_cached("SELECT created_at_ms FROM idempotency ORDER BY rowid LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(storage)?;
    let removed = match oldest {
        Some(at) if at < sweep.before_ms => tx
            .prepare_cached(
                "DELETE FROM idempotency WHERE rowid IN
                 (SELECT rowid FROM idempotency ORDER BY rowid LIMIT ?2) AND created_at_ms < ?1",
            )
            .and_then(|mut st| st.execute(params![sweep.before_ms, limit]))
            .map_err(storage)?,
        _ => 0,
    };
    let newest: Option<i64> = tx
        .query_row("SELECT MAX(rowid) FROM idempotency", [], |r| r.get(0))
        .map_err(storage)?;
    let Some(newest) = newest else {
        return Ok(());
    };
    let cut = newest - i64::try_from(sweep.keep_max).unwrap_or(i64::MAX);
    let room = limit - removed as i64;
    if cut > 0 && room > 0 {
        tx.prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN
             (SELECT rowid FROM idempotency WHERE rowid <= ?1 ORDER BY rowid LIMIT ?2)",
        )
        .and_then(|mut st| st.execute(params![cut, room]))
        .map_err(storage)?;
    }
    Ok(())
}
