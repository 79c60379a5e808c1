//! The single writer: drains the commit queue, writes every queued commit of a batch in one
//! transaction (each in its own savepoint when one fails, so one bad commit fails alone), commits
//! it, and hands it to the sync thread (`syncer.rs`), which syncs it and only then acknowledges
//! every caller of the batch; the writer meanwhile writes the next batch. A failed batch or sync
//! acknowledges nothing of it and stops the store for good (fail-stop): SQLite's state after a
//! failed fsync cannot be trusted, and a sync is never retried on the same file. Recovery is a
//! restart, from what is durable.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use marketgov_audit::{CheckpointSigner, Head};
use marketgov_store::{Commit, Error, OutboxUpdate, Receipt, TimerWrite};
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::syncer::{Committed, ToSync};
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

    fn write(&self, tx: &Connection) -> Result<(), Error> {
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

/// What reaches the writer.
#[allow(clippy::large_enum_variant)] // nearly every message is a commit: boxing would allocate per commit
pub(crate) enum Inbound {
    /// A commit to write.
    Commit(Request),
    /// The sync thread finished a sync: a batch held open for it may be committed now.
    Synced,
    /// The store is closing: commit what is open, then stop.
    Close,
}

pub(crate) struct Writer {
    pub conn: Connection,
    /// What the commits written so far have advanced (committed or not).
    pub tail: Tail,
    pub signer: Option<CheckpointSigner>,
    pub checkpoint_every: u64,
    pub last_checkpoint: u64,
    pub batch_commits_max: usize,
    pub shared: Arc<Shared>,
    pub fault: Option<Arc<FaultInjector>>,
    /// Committed batches on their way to the sync thread.
    pub to_sync: SyncSender<ToSync>,
    pub syncer: Option<JoinHandle<()>>,
    /// The batch being written (its transaction open), if any.
    pub open: Option<OpenBatch>,
    /// The number of the last batch handed to the sync thread.
    pub handed_over: u64,
}

/// A batch whose transaction is open: commits are written into it as they arrive, for as long
/// as the sync thread is still syncing the previous batch.
pub(crate) struct OpenBatch {
    requests: Vec<Request>,
    results: Vec<Result<Receipt, Error>>,
    /// Each commit in its own savepoint (once one of them has failed).
    savepoints: bool,
    /// The tail before its first commit: restored when the batch is rolled back.
    before: Tail,
    /// Test seam: the fault chosen for this batch, counted when it was opened.
    fault: Option<FaultMode>,
}

impl Writer {
    /// Runs until the store closes, then waits for the sync thread to settle what is left.
    ///
    /// Group commit: a batch takes every commit queued while the previous one was written, and
    /// stays open, taking more, while the previous batch is syncing; it is committed as soon as
    /// that sync is done (or when it is full). So the writer writes while the disk syncs, and a
    /// batch is as large as the time between two syncs allows (small batches cost more per
    /// commit: every batch rewrites the pages its commits share).
    pub fn run(mut self, rx: Receiver<Inbound>) {
        let mut closing = false;
        while !closing {
            let Ok(first) = rx.recv() else {
                break;
            };
            closing = self.take(first);
            while !closing && self.open_len() < self.batch_commits_max {
                match rx.try_recv() {
                    Ok(next) => closing = self.take(next),
                    Err(_) => break,
                }
            }
            let full = self.open_len() >= self.batch_commits_max;
            if self.open.is_some() && (closing || full || self.sync_idle()) {
                self.commit_open();
            }
        }
        if self.open.is_some() {
            self.commit_open();
        }
        self.final_checkpoint();
        let Writer {
            to_sync, syncer, ..
        } = self;
        drop(to_sync);
        if let Some(syncer) = syncer {
            let _ = syncer.join();
        }
    }

    fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |b| b.requests.len())
    }

    /// Whether every batch handed over is settled.
    fn sync_idle(&self) -> bool {
        self.shared.durable_batch() >= self.handed_over || self.shared.stopped_reason().is_some()
    }

    /// Takes one message; returns whether the store is closing.
    fn take(&mut self, inbound: Inbound) -> bool {
        match inbound {
            Inbound::Commit(request) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                match self.shared.stopped_reason() {
                    Some(reason) => {
                        let _ = request.ack.send(Err(Error::Stopped { reason }));
                    }
                    None => self.write_into_open(request),
                }
                false
            }
            Inbound::Synced => false,
            Inbound::Close => true,
        }
    }

    /// Writes one commit into the open batch (opening it first if needed). If the transaction
    /// itself fails, the batch fails with this commit in it (every caller is answered).
    fn write_into_open(&mut self, request: Request) {
        if self.open.is_none() {
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                let reason = storage(e).to_string();
                self.shared.stop(&reason);
                self.hand_over(ToSync::Failed {
                    acks: vec![request.ack],
                    reason,
                    committed: false,
                });
                return;
            }
            self.open = Some(OpenBatch {
                requests: Vec::with_capacity(self.batch_commits_max.min(64)),
                results: Vec::with_capacity(self.batch_commits_max.min(64)),
                savepoints: false,
                before: self.tail,
                fault: self.fault.as_ref().and_then(|f| f.next_batch()),
            });
        }
        let result = self.write_one(&request.commit);
        let failed = result.as_ref().err().map(ToString::to_string);
        if let Some(open) = self.open.as_mut() {
            open.requests.push(request);
            open.results.push(result.unwrap_or_else(Err));
        }
        if let Some(reason) = failed {
            self.fail_open(reason);
        }
    }

    /// Writes one commit into the open transaction: `Ok(Err(_))` when the commit fails alone,
    /// `Err` when the transaction failed.
    fn write_one(&mut self, commit: &Commit) -> Result<Result<Receipt, Error>, Error> {
        if self
            .open
            .as_ref()
            .is_some_and(|b| b.fault == Some(FaultMode::BrokenTransaction))
        {
            return Err(Error::Storage(
                "injected fault: the transaction failed".into(),
            ));
        }
        let savepoints = self.open.as_ref().is_some_and(|b| b.savepoints);
        if savepoints {
            self.write_in_savepoint(commit)
        } else {
            match write_commit(&self.conn, &mut self.tail, commit) {
                Ok(receipt) => Ok(Ok(receipt)),
                Err(_) => {
                    // One commit failed: the batch is written again with a savepoint per
                    // commit, so this one fails alone.
                    self.rewrite_with_savepoints()?;
                    self.write_in_savepoint(commit)
                }
            }
        }
    }

    /// Writes `commit` in its own savepoint: `Ok(Err(_))` when it fails alone (rolled back);
    /// `Err` when the transaction itself failed.
    fn write_in_savepoint(&mut self, commit: &Commit) -> Result<Result<Receipt, Error>, Error> {
        let before = self.tail;
        self.conn
            .execute_batch("SAVEPOINT one_commit")
            .map_err(storage)?;
        match write_commit(&self.conn, &mut self.tail, commit) {
            Ok(receipt) => {
                self.conn
                    .execute_batch("RELEASE one_commit")
                    .map_err(storage)?;
                Ok(Ok(receipt))
            }
            Err(e) => {
                self.conn
                    .execute_batch("ROLLBACK TO one_commit; RELEASE one_commit")
                    .map_err(storage)?;
                self.tail = before;
                Ok(Err(e))
            }
        }
    }

    /// Rolls the open batch back and writes its commits again, each in its own savepoint.
    ///
    /// Batches are first written without savepoints (a savepoint journals every page it
    /// touches, a large share of the writer's time); only when one of its commits fails is this
    /// needed.
    fn rewrite_with_savepoints(&mut self) -> Result<(), Error> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        self.tail = open.before;
        open.results.clear();
        let restarted = self
            .conn
            .execute_batch("ROLLBACK; BEGIN IMMEDIATE")
            .map_err(storage);
        if let Err(e) = restarted {
            self.open = Some(open); // failed whole by the caller
            return Err(e);
        }
        for request in &open.requests {
            let result = self.write_in_savepoint(&request.commit);
            match result {
                Ok(r) => open.results.push(r),
                Err(e) => {
                    self.open = Some(open);
                    return Err(e);
                }
            }
        }
        open.savepoints = true;
        self.open = Some(open);
        Ok(())
    }

    /// The open batch cannot be committed: nothing of it is acknowledged, and the store stops
    /// now, so no later batch is written; the batches before it are settled first.
    fn fail_open(&mut self, reason: String) {
        let Some(open) = self.open.take() else {
            self.shared.stop(&reason);
            return;
        };
        let _ = self.conn.execute_batch("ROLLBACK");
        self.tail = open.before;
        self.shared.stop(&reason);
        self.hand_over(ToSync::Failed {
            acks: open.requests.into_iter().map(|r| r.ack).collect(),
            reason,
            committed: false,
        });
    }

    /// Commits the open batch (without syncing: the sync thread does) and hands it over; once
    /// the store has stopped (a sync failed meanwhile), fails it instead.
    fn commit_open(&mut self) {
        if let Some(reason) = self.shared.stopped_reason() {
            self.fail_open(reason);
            return;
        }
        match self.finish_open() {
            Ok(()) => {}
            Err(e) => self.fail_open(e.to_string()),
        }
    }

    fn finish_open(&mut self) -> Result<(), Error> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        if self.tail.pending != open.before.pending {
            self.tail.pending.write(&self.conn)?;
        }
        let checkpoint_due = self.tail.head.seq >= self.last_checkpoint + self.checkpoint_every;
        if checkpoint_due {
            self.insert_checkpoint()?;
        }
        let fault = open.fault;
        if fault == Some(FaultMode::LostSync) {
            // Rolled back: as if the sync never reached the disk.
            return Err(Error::Storage(
                "injected fault: sync failed, batch lost".into(),
            ));
        }
        // Counted, and its versioned writes entered as pending, before the commit makes them
        // visible (see `Shared::wait_durable`).
        let number = self.shared.batch_becomes_visible();
        self.shared
            .versioned_written(number, open.requests.iter().map(|r| &r.commit));
        self.conn.execute_batch("COMMIT").map_err(storage)?;
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if checkpoint_due && self.signer.is_some() {
            self.last_checkpoint = self.tail.head.seq;
        }
        if fault == Some(FaultMode::UnacknowledgedSync) {
            // On disk, but the callers are told it failed.
            let reason = "injected fault: sync reported failure".to_owned();
            self.shared.stop(&reason);
            self.hand_over(ToSync::Failed {
                acks: open.requests.into_iter().map(|r| r.ack).collect(),
                reason,
                committed: true,
            });
            return Ok(());
        }
        self.handed_over = number;
        self.hand_over(ToSync::Committed(Committed {
            batch: number,
            acks: open
                .requests
                .into_iter()
                .map(|r| r.ack)
                .zip(open.results)
                .collect(),
            tail: self.tail,
            hold: fault == Some(FaultMode::Held),
        }));
        Ok(())
    }

    /// On a clean close, signs whatever the last checkpoint does not cover, so a stopped store's
    /// whole log is signed.
    fn final_checkpoint(&mut self) {
        if self.signer.is_none()
            || self.shared.stopped_reason().is_some()
            || self.tail.head.seq <= self.last_checkpoint
        {
            return;
        }
        let batch = self.shared.batch_becomes_visible();
        if self.insert_checkpoint().is_ok() {
            self.last_checkpoint = self.tail.head.seq;
            self.handed_over = batch;
            self.hand_over(ToSync::Committed(Committed {
                batch,
                acks: Vec::new(),
                tail: self.tail,
                hold: false,
            }));
        }
    }

    /// Writes a signed checkpoint of the current head (none without a signer).
    fn insert_checkpoint(&self) -> Result<(), Error> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let head = self.tail.head;
        let c = signer.sign(head.seq, &head.hash);
        self.conn
            .execute(
                "INSERT INTO checkpoints (seq, hash, signature) VALUES (?1, ?2, ?3)",
                params![c.seq as i64, c.hash, c.signature],
            )
            .map_err(storage)?;
        Ok(())
    }

    /// Gives the sync thread its next item; if it is gone (a bug), fails the item's callers.
    fn hand_over(&self, item: ToSync) {
        if let Err(std::sync::mpsc::SendError(item)) = self.to_sync.send(item) {
            let reason = "the sync thread is gone".to_owned();
            self.shared.stop(&reason);
            let acks: Vec<_> = match item {
                ToSync::Committed(c) => c.acks.into_iter().map(|(a, _)| a).collect(),
                ToSync::Failed { acks, .. } => acks,
            };
            for ack in acks {
                let _ = ack.send(Err(Error::Stopped {
                    reason: reason.clone(),
                }));
            }
        }
    }
}

/// What a commit advances, saved and restored whole when a commit or batch is undone: the audit
/// head, the pending counts, the highest outbox row id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    pub head: Head,
    pub pending: Pending,
    pub outbox_id_max: i64,
}

fn write_commit(tx: &Connection, tail: &mut Tail, commit: &Commit) -> Result<Receipt, Error> {
    let Tail {
        head,
        pending,
        outbox_id_max,
    } = tail;
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
        *outbox_id_max = tx.last_insert_rowid();
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
    for (table, writes) in commit.versioned_writes() {
        let table = table.name();
        for w in writes {
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
    tx: &Connection,
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
