//! The single writer. It takes every commit queued since its last batch (at most
//! `batch_commits_max`), checks each against the durable index and the commits before it in the
//! batch (a commit that conflicts fails alone and writes nothing), encodes the others into one
//! buffer, writes it with one `pwrite` at the segment's end, syncs it with one `fdatasync`, and
//! only then applies its records to the index (readers see it) and answers every caller.
//!
//! A failed write or sync answers nothing of its batch as done and stops the store for good
//! (fail-stop): what reached the disk is decided by the next open, which keeps a whole batch and
//! cuts off a torn one. A sync is never retried on the same file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use marketgov_audit::{entry_hash, CheckpointSigner, Head};
use marketgov_store::{Commit, Error, OutboxUpdate, Receipt, TimerWrite};
use tokio::sync::oneshot;

use crate::frame::{self, table_code, Record, StreamPrev};
use crate::index::{EffectState, Index, Key, Loc};
use crate::segments::{self, Segments, BATCH_BYTES_MAX};
use crate::{FaultMode, Shared};

/// Segments a log holds at most: a packed location keeps its top bit for the frame format
/// (`StreamPrev::InBatch`), so segment numbers stay below 2^23 (2 PiB of 256 MiB segments).
const SEGMENTS_MAX: u32 = 1 << 23;

/// Where a caller is answered.
pub(crate) type AckSender = oneshot::Sender<Result<Receipt, Error>>;

/// One queued commit and the caller waiting for it.
pub(crate) struct Request {
    pub commit: Commit,
    pub ack: AckSender,
}

/// What reaches the writer.
#[allow(clippy::large_enum_variant)] // nearly every message is a commit
pub(crate) enum Inbound {
    Commit(Request),
    Close,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    /// The segment being written, its number (from 0) and length.
    pub file: Arc<File>,
    pub segment: u32,
    pub len: u64,
    pub signer: Option<CheckpointSigner>,
    pub checkpoint_every: u64,
    pub last_checkpoint: u64,
    pub batch_commits_max: usize,
    /// The next outbox row id.
    pub effect_id: i64,
    /// See [`crate::Options::segment_bytes_max`].
    pub segment_bytes_max: u64,
    /// The last batch's buffers, kept for the next (fresh ones would be page-faulted in and
    /// zeroed by the kernel at every batch: a sixth of the writer's time when measured).
    pub spare: (Vec<u8>, Vec<(Record, usize)>),
}

/// What the commits before this one in the batch changed, layered over the index.
#[derive(Default)]
struct Overlay {
    versions: HashMap<String, u64>,
    /// `true`: stored in this batch; `false`: removed in this batch.
    keys: HashMap<Key, bool>,
    keys_net: i64,
    /// Durable idempotency records removed one by one in this batch.
    keys_removed: HashSet<Loc>,
    /// Where this batch's sweeps have got to.
    keys_frontier: Option<Loc>,
    /// Effects queued or updated in this batch, and where each was queued if that is durable.
    effects: HashMap<String, (EffectState, Option<Loc>)>,
    versioned: HashMap<(u8, String), u64>,
}

impl Overlay {
    fn merge(&mut self, other: Overlay) {
        self.versions.extend(other.versions);
        self.keys.extend(other.keys);
        self.keys_net += other.keys_net;
        self.keys_removed.extend(other.keys_removed);
        if other.keys_frontier.is_some() {
            self.keys_frontier = other.keys_frontier;
        }
        self.effects.extend(other.effects);
        self.versioned.extend(other.versioned);
    }
}

/// The index seen through the batch's overlay and the current commit's draft.
struct View<'a> {
    index: &'a Index,
    segments: &'a Segments,
    batch: &'a Overlay,
    draft: Overlay,
}

impl View<'_> {
    /// The stream's version as the batch sees it, and, when no commit before this one in the
    /// batch wrote it, where its last durable event is (the next event points back at it).
    fn stream_head(&self, stream: &str) -> (u64, Option<Loc>) {
        match self
            .draft
            .versions
            .get(stream)
            .or_else(|| self.batch.versions.get(stream))
        {
            Some(version) => (*version, None),
            None => self
                .index
                .streams
                .get(stream)
                .map_or((0, None), |s| (u64::from(s.version), s.last_event())),
        }
    }

    fn keys_frontier(&self) -> Loc {
        self.draft
            .keys_frontier
            .or(self.batch.keys_frontier)
            .unwrap_or(self.index.keys_frontier)
    }

    /// Whether the durable idempotency record at `loc` is still kept as the batch sees it.
    fn key_kept(&self, loc: Loc) -> bool {
        loc >= self.keys_frontier()
            && self.index.key_kept(loc)
            && !self.batch.keys_removed.contains(&loc)
            && !self.draft.keys_removed.contains(&loc)
    }

    /// Where the durable record of `k` is, if it is still kept.
    fn durable_key(&self, k: &Key) -> Result<Option<Loc>, Error> {
        let (tenant, key) = (k.0.as_str(), k.1.as_str());
        for loc in self
            .index
            .keys
            .candidates(self.index.keys.hash(&[tenant, key]))?
        {
            if !self.key_kept(loc) {
                continue;
            }
            if let Record::IdempotencyPut {
                tenant: t, key: k, ..
            } = self.segments.read(loc)?
            {
                if t == tenant && k == key {
                    return Ok(Some(loc));
                }
            }
        }
        Ok(None)
    }

    /// Whether `k` is stored as the batch sees it.
    fn key_present(&self, k: &Key) -> Result<bool, Error> {
        match self.draft.keys.get(k).or_else(|| self.batch.keys.get(k)) {
            Some(present) => Ok(*present),
            None => Ok(self.durable_key(k)?.is_some()),
        }
    }

    /// The effect's state as the batch sees it, and where it was queued if that is durable.
    fn effect_state(&self, key: &str) -> Result<Option<(EffectState, Option<Loc>)>, Error> {
        if let Some(state) = self
            .draft
            .effects
            .get(key)
            .or_else(|| self.batch.effects.get(key))
        {
            return Ok(Some(*state));
        }
        for at in self
            .index
            .effects
            .candidates(self.index.effects.hash(&[key]))?
        {
            if let Record::OutboxPut { effect_key, .. } = self.segments.read(at)? {
                if effect_key == key {
                    let state = if self.index.effect_pending(at) {
                        EffectState::Pending
                    } else {
                        EffectState::Settled
                    };
                    return Ok(Some((state, Some(at))));
                }
            }
        }
        Ok(None)
    }

    fn versioned(&self, k: &(u8, String)) -> u64 {
        self.draft
            .versioned
            .get(k)
            .or_else(|| self.batch.versioned.get(k))
            .copied()
            .unwrap_or_else(|| self.index.versioned.get(k).map_or(0, |v| v.0))
    }
}

/// A batch being built.
struct Batch {
    number: u64,
    buf: Vec<u8>,
    /// Each record and its offset in `buf`.
    records: Vec<(Record, usize)>,
    /// Each caller and its answer (an `Err` for a commit that failed alone).
    answers: Vec<(AckSender, Result<Receipt, Error>)>,
    overlay: Overlay,
    /// Where in `buf` each stream's last event of this batch is.
    last_event_at: HashMap<String, usize>,
    head: Head,
    effect_id: i64,
}

impl Batch {
    fn push(&mut self, record: Record) {
        let at = frame::encode(&record, &mut self.buf);
        self.records.push((record, at));
    }
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Inbound>) {
        let mut closing = false;
        while !closing {
            let Ok(first) = rx.recv() else { break };
            let mut requests = Vec::new();
            match first {
                Inbound::Commit(r) => requests.push(r),
                Inbound::Close => closing = true,
            }
            while !closing && requests.len() < self.batch_commits_max {
                match rx.try_recv() {
                    Ok(Inbound::Commit(r)) => requests.push(r),
                    Ok(Inbound::Close) => closing = true,
                    Err(_) => break,
                }
            }
            self.shared
                .queued
                .fetch_sub(requests.len(), Ordering::Relaxed);
            if !requests.is_empty() {
                self.write_batch(requests, false);
            }
        }
        self.write_batch(Vec::new(), true);
    }

    /// Writes, syncs and applies one batch, then answers its callers. `closing`: a clean close,
    /// which signs whatever the last checkpoint does not cover.
    fn write_batch(&mut self, requests: Vec<Request>, closing: bool) {
        if let Some(reason) = self.shared.stopped_reason() {
            for r in requests {
                let _ = r.ack.send(Err(Error::Stopped {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let batch = match self.build(requests, closing) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err((acks, e)) => {
                self.fail(acks, e.to_string());
                return;
            }
        };
        let fault = self.shared.fault.as_ref().and_then(|f| f.next_batch());
        if let Err(e) = self.write_out(&batch, fault) {
            let acks = batch.answers.into_iter().map(|(a, _)| a).collect();
            self.fail(acks, e);
            return;
        }
        if fault == Some(FaultMode::Held) {
            if let Some(f) = &self.shared.fault {
                f.hold();
            }
        }
        if fault == Some(FaultMode::UnacknowledgedSync) {
            let acks = batch.answers.into_iter().map(|(a, _)| a).collect();
            self.fail(acks, "injected fault: sync reported failure".into());
            return;
        }
        if let Err(e) = self.apply(&batch) {
            let acks = batch.answers.into_iter().map(|(a, _)| a).collect();
            self.fail(acks, e.to_string());
            return;
        }
        let commits = batch.answers.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        self.shared.commits.fetch_add(commits, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        let Batch {
            mut buf,
            mut records,
            answers,
            ..
        } = batch;
        for (ack, answer) in answers {
            let _ = ack.send(answer);
        }
        buf.clear();
        records.clear();
        self.spare = (buf, records);
    }

    /// Checks and encodes the batch's commits. `None`: nothing to write.
    fn build(
        &mut self,
        requests: Vec<Request>,
        closing: bool,
    ) -> Result<Option<Batch>, (Vec<AckSender>, Error)> {
        let index = match self.shared.index.read() {
            Ok(i) => i,
            Err(_) => {
                let acks = requests.into_iter().map(|r| r.ack).collect();
                return Err((acks, Error::Storage("index poisoned".into())));
            }
        };
        let mut batch = Batch {
            number: index.batch + 1,
            buf: std::mem::take(&mut self.spare.0),
            records: std::mem::take(&mut self.spare.1),
            answers: Vec::with_capacity(requests.len()),
            overlay: Overlay::default(),
            last_event_at: HashMap::new(),
            head: index.head,
            effect_id: self.effect_id,
        };
        batch.push(Record::Begin {
            batch: batch.number,
            length: 0,
        });
        for request in requests {
            let answer = if batch.buf.len() as u64 > BATCH_BYTES_MAX / 2 {
                // Bounded batches keep a torn write recognisable (see segments.rs); the rest
                // are refused as overloaded and retried by their callers.
                Err(Error::Overloaded {
                    queued: self.shared.queued.load(Ordering::Relaxed),
                })
            } else {
                add_commit(&index, &self.shared.segments, &mut batch, request.commit)
            };
            batch.answers.push((request.ack, answer));
        }
        let checkpoint_due = batch.head.seq > self.last_checkpoint
            && (closing || batch.head.seq >= self.last_checkpoint + self.checkpoint_every);
        if let (true, Some(signer)) = (checkpoint_due, &self.signer) {
            batch.push(Record::Checkpoint(
                signer.sign(batch.head.seq, &batch.head.hash),
            ));
        }
        drop(index);
        if batch.records.len() == 1 {
            // Nothing but the Begin frame: every commit failed alone, or a close with nothing
            // to sign. Nothing is written.
            for (ack, answer) in batch.answers {
                let _ = ack.send(answer);
            }
            return Ok(None);
        }
        batch.push(Record::End {
            batch: batch.number,
            seq: batch.head.seq,
            hash: batch.head.hash,
        });
        let length = (batch.buf.len() - frame::BEGIN_FRAME_BYTES) as u64;
        let begin = Record::Begin {
            batch: batch.number,
            length,
        };
        let mut head = Vec::with_capacity(frame::BEGIN_FRAME_BYTES);
        frame::encode(&begin, &mut head);
        batch.buf[..frame::BEGIN_FRAME_BYTES].copy_from_slice(&head);
        batch.records[0].0 = begin;
        Ok(Some(batch))
    }

    /// Writes the batch at the end of the segment (starting a new one first when it is full)
    /// and syncs it.
    fn write_out(&mut self, batch: &Batch, fault: Option<FaultMode>) -> Result<(), String> {
        if self.len > 0 && self.len + batch.buf.len() as u64 > self.segment_bytes_max {
            // The closed segment's keys go to their run files first (as the open does).
            self.shared
                .index
                .write()
                .map_err(|_| "index poisoned".to_string())?
                .close_segment()
                .map_err(|e| e.to_string())?;
            let number = self.segment + 2; // files count from 1
            if number >= SEGMENTS_MAX {
                return Err(format!(
                    "the log has {SEGMENTS_MAX} segments, as many as it can hold"
                ));
            }
            let file = segments::create(&segments::dir_of(&self.dir), number)
                .map_err(|e| e.to_string())?;
            let file = Arc::new(file);
            self.segment = self
                .shared
                .segments
                .push(file.clone())
                .map_err(|e| e.to_string())?;
            self.file = file;
            self.len = 0;
        }
        match fault {
            Some(FaultMode::TornWrite) => {
                // Half of the batch reaches the file, then the write fails.
                let half = batch.buf.len() / 2;
                let _ = self.file.write_all_at(&batch.buf[..half], self.len);
                let _ = self.file.sync_data();
                return Err("injected fault: the write was cut short".into());
            }
            Some(FaultMode::LostSync) => {
                return Err("injected fault: sync failed, batch lost".into());
            }
            _ => {}
        }
        self.file
            .write_all_at(&batch.buf, self.len)
            .map_err(|e| format!("write to segment {}: {e}", self.segment + 1))?;
        self.file
            .sync_data()
            .map_err(|e| format!("sync of segment {}: {e}", self.segment + 1))?;
        Ok(())
    }

    /// Applies the synced batch to the index.
    fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        let mut index = self
            .shared
            .index
            .write()
            .map_err(|_| Error::Storage("index poisoned".into()))?;
        for (record, at) in &batch.records {
            let loc = Loc::new(self.segment, self.len + *at as u64);
            index.apply(record, loc).map_err(|e| Error::Corrupt {
                location: format!("batch {}", batch.number),
                detail: e.0,
            })?;
            if let Record::Checkpoint(c) = record {
                self.last_checkpoint = c.seq;
            }
        }
        drop(index);
        self.len += batch.buf.len() as u64;
        self.effect_id = batch.effect_id;
        Ok(())
    }

    fn fail(&self, acks: Vec<AckSender>, reason: String) {
        self.shared.stop(&reason);
        for ack in acks {
            let _ = ack.send(Err(Error::Stopped {
                reason: reason.clone(),
            }));
        }
    }
}

/// The bytes of one commit's bodies at most, so that a batch (closed past half of
/// [`BATCH_BYTES_MAX`]) never outgrows what the open accepts as one batch.
pub const COMMIT_BYTES_MAX: usize = (BATCH_BYTES_MAX / 4) as usize;

/// The bytes a commit's bodies and names take (an upper bound of its frames' payloads, less
/// their fixed fields).
fn commit_bytes(c: &Commit) -> usize {
    let events: usize = c
        .events
        .iter()
        .map(|e| e.body.len() + e.stream.len() + e.event_id.len())
        .sum();
    let snapshots: usize = c
        .snapshots
        .iter()
        .map(|s| s.body.len() + s.stream.len())
        .sum();
    let keys: usize = c
        .idempotency
        .iter()
        .map(|r| r.response.len() + r.tenant.len() + r.key.len() + r.operation.len())
        .sum();
    let outbox: usize = c
        .outbox
        .iter()
        .map(|o| o.body.len() + o.effect_key.len() + o.stream.len() + o.connector.len())
        .sum();
    let versioned: usize = c
        .versioned_writes()
        .iter()
        .flat_map(|(_, w)| w.iter())
        .map(|w| w.body.len() + w.key.len())
        .sum();
    events + snapshots + keys + outbox + versioned
}

/// Checks one commit against the index and the batch so far; if it may be written, encodes its
/// records into the batch and answers its receipt; otherwise writes nothing of it.
fn add_commit(
    index: &Index,
    segments: &Segments,
    batch: &mut Batch,
    commit: Commit,
) -> Result<Receipt, Error> {
    let mut view = View {
        index,
        segments,
        batch: &batch.overlay,
        draft: Overlay::default(),
    };
    // Check everything first: a commit that fails leaves no record behind.
    let bytes = commit_bytes(&commit);
    if bytes > COMMIT_BYTES_MAX {
        return Err(Error::Storage(format!(
            "a commit of {bytes} bytes is refused: at most {COMMIT_BYTES_MAX} are stored in one"
        )));
    }
    // Where each event's stream last was on disk, found while checking its version.
    let mut durable_prev = Vec::with_capacity(commit.events.len());
    for e in &commit.events {
        if e.stream_version > u64::from(u32::MAX) {
            return Err(Error::Storage(format!(
                "stream {} version {}: a stream holds at most {} events here",
                e.stream,
                e.stream_version,
                u32::MAX
            )));
        }
        let (at, durable_last) = view.stream_head(&e.stream);
        durable_prev.push(durable_last);
        if e.stream_version != at + 1 {
            return Err(Error::Conflict(format!(
                "stream {} version {} is taken (the stream is at version {at})",
                e.stream, e.stream_version
            )));
        }
        view.draft
            .versions
            .insert(e.stream.clone(), e.stream_version);
    }
    let mut deletes: Vec<(Key, Loc)> = Vec::new();
    for (tenant, key) in &commit.idempotency_expired {
        let k = (tenant.clone(), key.clone());
        match view.draft.keys.get(&k).or_else(|| view.batch.keys.get(&k)) {
            Some(false) => continue, // removed earlier in this batch
            Some(true) => {
                // Stored earlier in this batch, so not durable yet and without a location to
                // name; the caller retries after this batch.
                return Err(Error::Conflict(format!(
                    "idempotency key {key} was stored in this batch"
                )));
            }
            None => {}
        }
        if let Some(at) = view.durable_key(&k)? {
            view.draft.keys.insert(k.clone(), false);
            view.draft.keys_net -= 1;
            view.draft.keys_removed.insert(at);
            deletes.push((k, at));
        }
    }
    let sweep = match &commit.idempotency_sweep {
        Some(sweep) => swept(&mut view, sweep)?,
        None => None,
    };
    for r in &commit.idempotency {
        let k = (r.tenant.clone(), r.key.clone());
        if view.key_present(&k)? {
            return Err(Error::Conflict(format!(
                "idempotency key {} is taken",
                r.key
            )));
        }
        view.draft.keys.insert(k, true);
        view.draft.keys_net += 1;
    }
    for o in &commit.outbox {
        if view.effect_state(&o.effect_key)?.is_some() {
            return Err(Error::Conflict(format!(
                "effect {} is already queued",
                o.effect_key
            )));
        }
        view.draft
            .effects
            .insert(o.effect_key.clone(), (EffectState::Pending, None));
    }
    let mut updated_at = Vec::with_capacity(commit.outbox_updates.len());
    for u in &commit.outbox_updates {
        let (key, after) = match u {
            OutboxUpdate::Done { effect_key } | OutboxUpdate::Dead { effect_key, .. } => {
                (effect_key, EffectState::Settled)
            }
            OutboxUpdate::Retry { effect_key, .. } => (effect_key, EffectState::Pending),
        };
        let at = match view.effect_state(key)? {
            Some((EffectState::Pending, Some(at))) => at,
            Some((EffectState::Pending, None)) => {
                // Queued in this batch, so without a durable location yet; the caller retries
                // after this batch.
                return Err(Error::Conflict(format!(
                    "effect {key} was queued in this batch"
                )));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "outbox row for {u:?} is not pending"
                )))
            }
        };
        updated_at.push(at.raw());
        view.draft.effects.insert(key.clone(), (after, Some(at)));
    }
    for (table, writes) in commit.versioned_writes() {
        for w in writes {
            let k = (table_code(table), w.key.clone());
            if view.versioned(&k) != w.expected_version {
                return Err(Error::Conflict(format!(
                    "{}/{} is not at version {}",
                    table.name(),
                    w.key,
                    w.expected_version
                )));
            }
            view.draft.versioned.insert(k, w.version);
        }
    }
    let draft = view.draft;
    batch.overlay.merge(draft);

    let Commit {
        events,
        snapshots,
        idempotency,
        timers,
        outbox,
        outbox_updates,
        sequences,
        cases,
        inventory,
        review,
        api_keys,
        ..
    } = commit;
    let mut receipt = Receipt {
        entries: Vec::with_capacity(events.len()),
    };
    for (e, durable_last) in events.into_iter().zip(durable_prev) {
        let seq = batch.head.seq + 1;
        let prev_hash = batch.head.hash;
        let hash = entry_hash(&prev_hash, seq, &e.body);
        batch.head = Head { seq, hash };
        receipt.entries.push((seq, prev_hash, hash));
        let here = batch.buf.len();
        let prev = match batch.last_event_at.insert(e.stream.clone(), here) {
            Some(at) => StreamPrev::InBatch((here - at) as u64),
            None => durable_last.map_or(StreamPrev::First, |l| StreamPrev::At(l.raw())),
        };
        batch.push(Record::Event {
            seq,
            stream: e.stream,
            version: e.stream_version,
            prev: prev.encode(),
            event_id: e.event_id,
            at_ms: e.at_ms,
            prev_hash,
            hash,
            body: e.body,
        });
    }
    for s in snapshots {
        batch.push(Record::Snapshot {
            stream: s.stream,
            version: s.version,
            body: s.body,
        });
    }
    for ((tenant, key), at) in deletes {
        batch.push(Record::IdempotencyDelete {
            tenant,
            key,
            at: at.raw(),
        });
    }
    if let Some((before, passed)) = sweep {
        batch.push(Record::IdempotencySwept {
            before: before.raw(),
            passed,
        });
    }
    for r in idempotency {
        batch.push(Record::IdempotencyPut {
            tenant: r.tenant,
            key: r.key,
            operation: r.operation,
            fingerprint: r.fingerprint,
            created_at_ms: r.created_at_ms,
            response: r.response,
        });
    }
    for t in timers {
        batch.push(match t {
            TimerWrite::Set {
                stream,
                kind,
                due_at_ms,
            } => Record::TimerSet {
                stream,
                kind,
                due_at_ms,
            },
            TimerWrite::Cancel { stream, kind } => Record::TimerCancel { stream, kind },
        });
    }
    for o in outbox {
        batch.effect_id += 1;
        batch.push(Record::OutboxPut {
            id: batch.effect_id,
            effect_key: o.effect_key,
            stream: o.stream,
            connector: o.connector,
            not_before_ms: o.not_before_ms,
            body: o.body,
        });
    }
    for (u, at) in outbox_updates.into_iter().zip(updated_at) {
        batch.push(match u {
            OutboxUpdate::Done { effect_key } => Record::OutboxDone { at, effect_key },
            OutboxUpdate::Retry {
                effect_key,
                attempts,
                next_attempt_ms,
                error,
            } => Record::OutboxRetry {
                at,
                effect_key,
                attempts,
                next_attempt_ms,
                error,
            },
            OutboxUpdate::Dead { effect_key, error } => Record::OutboxDead {
                at,
                effect_key,
                error,
            },
        });
    }
    let tables = [
        (marketgov_store::VersionedTable::Sequences, sequences),
        (marketgov_store::VersionedTable::Cases, cases),
        (marketgov_store::VersionedTable::Inventory, inventory),
        (marketgov_store::VersionedTable::Review, review),
        (marketgov_store::VersionedTable::ApiKeys, api_keys),
    ];
    for (table, writes) in tables {
        for w in writes {
            batch.push(Record::Versioned {
                table,
                key: w.key,
                version: w.version,
                body: w.body,
            });
        }
    }
    Ok(receipt)
}

/// Durable records read per step of a sweep.
const SWEEP_PAGE: usize = 1024;

/// Where a sweep gets to: the oldest kept records go while they are expired, then while more
/// than `keep_max` are kept; at most `limit` of them. Answers the new frontier (every record
/// before it is gone) and how many records lie between the old and the new frontier (records
/// removed one by one are passed without counting against the limit), or `None` when the sweep
/// removes nothing. Records of the current batch are the newest, not durable yet, and never
/// swept by it.
fn swept(
    view: &mut View<'_>,
    sweep: &marketgov_store::IdempotencySweep,
) -> Result<Option<(Loc, u64)>, Error> {
    let limit = sweep.limit;
    let keep_max = i64::try_from(sweep.keep_max).unwrap_or(i64::MAX);
    let mut live = view.index.keys_live as i64 + view.batch.keys_net + view.draft.keys_net;
    let mut frontier = view.keys_frontier();
    let (mut passed, mut removed) = (0u64, 0u64);
    'pages: loop {
        let page = view.index.keys.order_from(frontier, SWEEP_PAGE)?;
        for (loc, created_at_ms) in &page {
            if view.key_kept(*loc) {
                if removed >= limit {
                    break 'pages;
                }
                if *created_at_ms >= sweep.before_ms && live <= keep_max {
                    break 'pages;
                }
                removed += 1;
                live -= 1;
            }
            passed += 1;
            frontier = loc.next();
        }
        if page.len() < SWEEP_PAGE {
            break;
        }
    }
    if passed == 0 {
        return Ok(None);
    }
    view.draft.keys_net -= removed as i64;
    view.draft.keys_frontier = Some(frontier);
    Ok(Some((frontier, passed)))
}
