//! The writer, in two threads that overlap one batch's sync with the next batch's work.
//!
//! - The **builder** takes every commit queued since its last batch (at most
//!   `batch_commits_max`), checks each against the durable index, the batch handed on before it
//!   and not yet applied, and the commits before it in the batch (a commit that conflicts fails
//!   alone and writes nothing), and encodes the others into one buffer. It plans where the batch
//!   goes (this segment, or a new one) and hands it to the syncer.
//! - The **syncer** writes each batch with one `pwrite` at the segment's end, syncs it with one
//!   `fdatasync`, and only then applies its records to the index (readers see it) and answers
//!   every caller. It takes the next batch only when it is done with the last, so a batch is
//!   written only after the one before it is synced: the torn end of the log is never more than
//!   one batch (segments.rs relies on it).
//!
//! So while batch N syncs, batch N+1 is checked and encoded. The hand-over is a rendezvous: the
//! builder is at most one batch ahead, and at most one batch it checks against is unapplied.
//!
//! A failed write or sync answers nothing of its batch as done and stops the store for good
//! (fail-stop): what reached the disk is decided by the next open, which keeps a whole batch and
//! cuts off a torn one. A sync is never retried on the same file. A batch built while the one
//! before it failed is answered as stopped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use marketgov_audit::{entry_hash, CheckpointSigner, Head};
use marketgov_store::transient::{map_with_capacity, TransientMap, TransientSet};
use marketgov_store::{Commit, Error, OutboxUpdate, Receipt, TimerWrite};
use tokio::sync::oneshot;

use crate::direct::{DirectSegment, Tail};
use crate::frame::{self, table_code, Record, StreamPrev};
use crate::index::{EffectState, Index, Key, Loc};
use crate::keys::Ordinal;
use crate::prepared::{self, Preparer};
use crate::segments::{self, Segments, BATCH_BYTES_MAX};
use crate::{FaultMode, Shared};

/// Segments a log holds at most: a packed location keeps its top bit for the frame format
/// (`StreamPrev::InBatch`), so segment numbers stay below 2^23 (2 PiB of 256 MiB segments).
const SEGMENTS_MAX: u32 = 1 << 23;

/// Buffers the syncer gives back for reuse, at most (fresh ones would be page-faulted in and
/// zeroed by the kernel at every batch: a sixth of the writer's time when measured).
pub(crate) const SPARE_BUFFERS_MAX: usize = 2;

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

/// A batch's buffers, handed back by the syncer for the next batch.
pub(crate) type Spare = (Vec<u8>, Vec<(Record, usize)>);

/// The builder.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub signer: Option<CheckpointSigner>,
    pub checkpoint_every: u64,
    pub last_checkpoint: u64,
    pub batch_commits_max: usize,
    /// The next outbox row id.
    pub effect_id: i64,
    /// See [`crate::Options::segment_bytes_max`].
    pub segment_bytes_max: u64,
    /// Where the next batch goes (segment from 0, offset): planned here, carried out by the
    /// syncer.
    pub segment: u32,
    pub len: u64,
    /// The number and the audit head of the last batch built.
    pub number: u64,
    pub head: Head,
    /// Batches handed to the syncer, oldest first: the one it may still be working on, and one
    /// it has applied until the next commit's check drops it.
    pub layers: Vec<Layer>,
    pub to_syncer: Option<SyncSender<Written>>,
    pub spares: Receiver<Spare>,
    pub syncer: Option<JoinHandle<()>>,
}

/// What a batch handed to the syncer changes, for checking the batches after it until the
/// index has it.
pub(crate) struct Layer {
    number: u64,
    /// Where the batch starts.
    segment: u32,
    base: u64,
    overlay: Overlay,
    /// Where in the batch each stream's last event is.
    last_event_at: TransientMap<String, usize>,
}

/// A batch checked and encoded, on its way to the disk.
pub(crate) struct Written {
    number: u64,
    buf: Vec<u8>,
    /// Each record and its offset in `buf`.
    records: Vec<(Record, usize)>,
    answers: Vec<(AckSender, Result<Receipt, Error>)>,
    /// Where it goes: a segment after the syncer's current one means "start it".
    segment: u32,
    base: u64,
}

/// The syncer.
pub(crate) struct Syncer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    /// The segment being written, its number (from 0) and length.
    pub file: Arc<File>,
    pub segment: u32,
    pub len: u64,
    /// The length of the segment's file: past `len` a prepared segment holds zeros up to
    /// here (its room), an ordinary one nothing.
    pub file_len: u64,
    pub spares: SyncSender<Spare>,
    /// See [`crate::Options::segment_bytes_max`].
    pub segment_bytes_max: u64,
    /// Prepares the next segment (prepared.rs); `None`: none is prepared.
    pub preparer: Option<Preparer>,
    /// See [`crate::Options::direct_writes`].
    pub direct_writes: bool,
    /// The segment's `O_DIRECT` handle (direct.rs); `None`: every write goes through the page
    /// cache.
    pub direct: Option<DirectSegment>,
    /// The segment's partial last page, written again at the start of a direct write (kept
    /// only with `direct_writes`).
    pub tail: Tail,
}

/// What the commits before this one in the batch changed, layered over the index.
#[derive(Default)]
struct Overlay {
    versions: TransientMap<String, u64>,
    /// `true`: stored in this batch; `false`: removed in this batch.
    keys: TransientMap<Key, bool>,
    keys_net: i64,
    /// Durable idempotency records removed one by one in this batch.
    keys_removed: TransientSet<Loc>,
    /// Where this batch's sweeps have got to.
    keys_frontier: Option<Loc>,
    /// Effects queued or updated in this batch, and where each was queued if that is durable.
    effects: TransientMap<String, (EffectState, Option<Loc>)>,
    versioned: TransientMap<(u8, String), u64>,
}

impl Overlay {
    /// Moves `other`'s changes over these, leaving it empty with its tables' room.
    fn merge(&mut self, other: &mut Overlay) {
        self.versions.extend(other.versions.drain());
        self.keys.extend(other.keys.drain());
        self.keys_net += std::mem::take(&mut other.keys_net);
        self.keys_removed.extend(other.keys_removed.drain());
        if let Some(frontier) = other.keys_frontier.take() {
            self.keys_frontier = Some(frontier);
        }
        self.effects.extend(other.effects.drain());
        self.versioned.extend(other.versioned.drain());
    }
}

/// The index seen through the unapplied batch before this one, the batch's overlay and the
/// current commit's draft.
struct View<'a> {
    index: &'a Index,
    segments: &'a Segments,
    /// Handed to the syncer and not applied to `index` yet, oldest first.
    layers: &'a [Layer],
    batch: &'a Overlay,
    draft: Overlay,
}

impl View<'_> {
    /// The overlays, newest first.
    fn overlays(&self) -> impl Iterator<Item = &Overlay> {
        [&self.draft, self.batch]
            .into_iter()
            .chain(self.layers.iter().rev().map(|l| &l.overlay))
    }

    /// The stream's version as the batch sees it, and, when no commit before this one in the
    /// batch wrote it, where its last event is (the next event points back at it).
    fn stream_head(&self, stream: &str) -> (u64, Option<Loc>) {
        if let Some(version) = self
            .draft
            .versions
            .get(stream)
            .or_else(|| self.batch.versions.get(stream))
        {
            return (*version, None);
        }
        for layer in self.layers.iter().rev() {
            if let (Some(version), Some(at)) = (
                layer.overlay.versions.get(stream),
                layer.last_event_at.get(stream),
            ) {
                let loc = Loc::new(layer.segment, layer.base + *at as u64);
                return (*version, Some(loc));
            }
        }
        self.index
            .streams
            .get(stream)
            .map_or((0, None), |s| (u64::from(s.version), s.last_event()))
    }

    fn keys_frontier(&self) -> Loc {
        self.overlays()
            .find_map(|o| o.keys_frontier)
            .unwrap_or(self.index.keys_frontier)
    }

    /// Whether the durable idempotency record at `loc` is still kept as the batch sees it.
    fn key_kept(&self, loc: Loc) -> bool {
        loc >= self.keys_frontier()
            && self.index.key_kept(loc)
            && !self.overlays().any(|o| o.keys_removed.contains(&loc))
    }

    /// Live idempotency records as the batch sees them.
    fn keys_live(&self) -> i64 {
        self.index.keys_live as i64 + self.overlays().map(|o| o.keys_net).sum::<i64>()
    }

    /// Whether `k` was stored (`Some(true)`) or removed (`Some(false)`) by a batch not applied
    /// yet or a commit before this one.
    fn key_written(&self, k: &Key) -> Option<bool> {
        self.overlays().find_map(|o| o.keys.get(k).copied())
    }

    /// Where the durable record of `k` is, if it is still kept.
    fn durable_key(&self, k: &Key) -> Result<Option<Loc>, Error> {
        let (tenant, key) = (k.0.as_str(), k.1.as_str());
        let keys = &self.index.keys;
        keys.find_newest(keys.hash(&[tenant, key]), None, |loc| {
            if !self.key_kept(loc) {
                return Ok(None);
            }
            Ok(match self.segments.read(loc)? {
                Record::IdempotencyPut {
                    tenant: t, key: k, ..
                } if t == tenant && k == key => Some(loc),
                _ => None,
            })
        })
    }

    /// Whether `k` is stored as the batch sees it.
    fn key_present(&self, k: &Key) -> Result<bool, Error> {
        match self.key_written(k) {
            Some(present) => Ok(present),
            None => Ok(self.durable_key(k)?.is_some()),
        }
    }

    /// The effect's state as the batch sees it, and where it was queued if that is durable.
    fn effect_state(&self, key: &str) -> Result<Option<(EffectState, Option<Loc>)>, Error> {
        if let Some(state) = self.overlays().find_map(|o| o.effects.get(key)) {
            return Ok(Some(*state));
        }
        let effects = &self.index.effects;
        effects.find_newest(effects.hash(&[key]), Ordinal::of_key(key), |at| {
            Ok(match self.segments.read(at)? {
                Record::OutboxPut { effect_key, .. } if effect_key == key => {
                    let state = if self.index.effect_pending(at) {
                        EffectState::Pending
                    } else {
                        EffectState::Settled
                    };
                    Some((state, Some(at)))
                }
                _ => None,
            })
        })
    }

    fn versioned(&self, k: &(u8, String)) -> u64 {
        self.overlays()
            .find_map(|o| o.versioned.get(k).copied())
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
    /// The draft overlay of the next commit, empty: kept from commit to commit so that its
    /// tables are not allocated and grown again for each.
    draft: Overlay,
    /// Where in `buf` each stream's last event of this batch is.
    last_event_at: TransientMap<String, usize>,
    head: Head,
    effect_id: i64,
    /// Whether it carries a signed checkpoint.
    checkpoint: bool,
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
                self.write_batch(requests, Some(&rx), &mut closing);
            }
        }
        self.write_batch(Vec::new(), None, &mut true);
        // The syncer finishes what it was handed, then stops.
        self.to_syncer = None;
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }

    /// Builds one batch and hands it to the syncer, which writes, syncs and applies it, then
    /// answers its callers. While the syncer is busy, commits queued meanwhile on `more` join
    /// the batch. `closing`: a clean close (set here when it comes while the batch is built),
    /// which signs whatever the last checkpoint does not cover.
    fn write_batch(
        &mut self,
        requests: Vec<Request>,
        more: Option<&Receiver<Inbound>>,
        closing: &mut bool,
    ) {
        if let Some(reason) = self.shared.stopped_reason() {
            for r in requests {
                let _ = r.ack.send(Err(Error::Stopped {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let batch = match self.build(requests, more, closing) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err((acks, e)) => {
                self.fail(acks, e.to_string());
                return;
            }
        };
        // Planned here so that the next batch can point back into this one.
        let size = batch.buf.len() as u64;
        let capacity = prepared::capacity(self.segment + 1, self.segment_bytes_max);
        let (segment, base) = if self.len > 0 && self.len + size > capacity {
            if self.segment + 2 >= SEGMENTS_MAX {
                // Files count from 1.
                let acks = batch.answers.into_iter().map(|(a, _)| a).collect();
                self.fail(
                    acks,
                    format!("the log has {SEGMENTS_MAX} segments, as many as it can hold"),
                );
                return;
            }
            (self.segment + 1, 0)
        } else {
            (self.segment, self.len)
        };
        let Batch {
            number,
            buf,
            records,
            answers,
            overlay,
            draft: _,
            last_event_at,
            head,
            effect_id,
            checkpoint,
        } = batch;
        let written = Written {
            number,
            buf,
            records,
            answers,
            segment,
            base,
        };
        let Some(to_syncer) = &self.to_syncer else {
            // Only after the run has ended; answered rather than dropped all the same.
            let acks = written.answers.into_iter().map(|(a, _)| a).collect();
            self.fail(acks, "the syncer has stopped".into());
            return;
        };
        if let Err(e) = to_syncer.send(written) {
            let acks = e.0.answers.into_iter().map(|(a, _)| a).collect();
            self.fail(acks, "the syncer has stopped".into());
            return;
        }
        self.layers.push(Layer {
            number,
            segment,
            base,
            overlay,
            last_event_at,
        });
        (self.segment, self.len) = (segment, base + size);
        (self.number, self.head, self.effect_id) = (number, head, effect_id);
        if checkpoint {
            self.last_checkpoint = head.seq;
        }
    }

    /// Checks and encodes the batch's commits. `None`: nothing to write.
    fn build(
        &mut self,
        requests: Vec<Request>,
        more: Option<&Receiver<Inbound>>,
        closing: &mut bool,
    ) -> Result<Option<Batch>, (Vec<AckSender>, Error)> {
        let (buf, records) = self.spares.try_recv().unwrap_or_default();
        let mut batch = Batch {
            number: self.number + 1,
            buf,
            records,
            answers: Vec::with_capacity(requests.len()),
            overlay: Overlay {
                versions: map_with_capacity(requests.len()),
                keys: map_with_capacity(requests.len()),
                ..Overlay::default()
            },
            draft: Overlay::default(),
            last_event_at: map_with_capacity(requests.len()),
            head: self.head,
            effect_id: self.effect_id,
            checkpoint: false,
        };
        batch.push(Record::Begin {
            batch: batch.number,
            length: 0,
        });
        for request in requests {
            self.add_request(&mut batch, request);
        }
        // The syncer is still busy with the batch before: what came meanwhile rides along with
        // this one instead of waiting for the sync after.
        while let Some(rx) = more {
            if *closing
                || batch.answers.len() >= self.batch_commits_max
                || self.shared.syncer_idle.load(Ordering::Acquire)
            {
                break;
            }
            match rx.try_recv() {
                Ok(Inbound::Commit(r)) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.add_request(&mut batch, r);
                }
                Ok(Inbound::Close) => *closing = true,
                Err(_) => break,
            }
        }
        let checkpoint_due = batch.head.seq > self.last_checkpoint
            && (*closing || batch.head.seq >= self.last_checkpoint + self.checkpoint_every);
        if let (true, Some(signer)) = (checkpoint_due, &self.signer) {
            batch.push(Record::Checkpoint(
                signer.sign(batch.head.seq, &batch.head.hash),
            ));
            batch.checkpoint = true;
        }
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

    /// Checks one commit and adds it to the batch, or answers why not.
    fn add_request(&mut self, batch: &mut Batch, request: Request) {
        let answer = if batch.buf.len() as u64 > BATCH_BYTES_MAX / 2 {
            // Bounded batches keep a torn write recognisable (see segments.rs); the rest are
            // refused as overloaded and retried by their callers.
            Err(Error::Overloaded {
                queued: self.shared.queued.load(Ordering::Relaxed),
            })
        } else {
            // The lock is taken per commit, not per batch, so that the syncer can apply the
            // batch before this one (and readers read) in between.
            match self.shared.index.read() {
                Ok(index) => {
                    self.layers.retain(|l| l.number > index.batch);
                    add_commit(
                        &index,
                        &self.shared.segments,
                        &self.layers,
                        batch,
                        request.commit,
                    )
                }
                Err(_) => Err(Error::Storage("index poisoned".into())),
            }
        };
        batch.answers.push((request.ack, answer));
    }

    fn fail(&self, acks: Vec<AckSender>, reason: String) {
        fail(&self.shared, acks, reason);
    }
}

/// Stops the store and answers `acks` with why.
fn fail(shared: &Shared, acks: Vec<AckSender>, reason: String) {
    shared.stop(&reason);
    for ack in acks {
        let _ = ack.send(Err(Error::Stopped {
            reason: reason.clone(),
        }));
    }
}

impl Syncer {
    pub fn run(mut self, rx: Receiver<Written>) {
        loop {
            self.shared.syncer_idle.store(true, Ordering::Release);
            let Ok(batch) = rx.recv() else { break };
            self.shared.syncer_idle.store(false, Ordering::Release);
            self.sync_batch(batch);
        }
    }

    /// Writes, syncs and applies one batch, then answers its callers.
    fn sync_batch(&mut self, mut batch: Written) {
        let acks = |b: Written| b.answers.into_iter().map(|(a, _)| a).collect();
        if let Some(reason) = self.shared.stopped_reason() {
            fail(&self.shared, acks(batch), reason);
            return;
        }
        let fault = self.shared.fault.as_ref().and_then(|f| f.next_batch());
        if let Err(e) = self.write_out(&mut batch, fault) {
            fail(&self.shared, acks(batch), e);
            return;
        }
        if fault == Some(FaultMode::Held) {
            if let Some(f) = &self.shared.fault {
                f.hold();
            }
        }
        if fault == Some(FaultMode::UnacknowledgedSync) {
            fail(
                &self.shared,
                acks(batch),
                "injected fault: sync reported failure".into(),
            );
            return;
        }
        if let Err(e) = self.apply(&batch) {
            fail(&self.shared, acks(batch), e.to_string());
            return;
        }
        let commits = batch.answers.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        self.shared.commits.fetch_add(commits, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        let Written {
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
        match self.spares.try_send((buf, records)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes the batch where the builder planned it (starting a new segment first when it
    /// says so) and syncs it.
    fn write_out(&mut self, batch: &mut Written, fault: Option<FaultMode>) -> Result<(), String> {
        if batch.segment != self.segment {
            if batch.segment != self.segment + 1 || batch.base != 0 {
                return Err(format!(
                    "batch {} planned for segment {} offset {}, the log is at segment {}",
                    batch.number,
                    batch.segment + 1,
                    batch.base,
                    self.segment + 1
                ));
            }
            // The closed segment's keys go to their run files first (as the open does). Every
            // batch before this one is applied: they went through this thread.
            self.shared
                .index
                .write()
                .map_err(|_| "index poisoned".to_string())?
                .close_segment()
                .map_err(|e| e.to_string())?;
            // A segment before the last ends with its last batch: the room a prepared one did
            // not use goes, durably, before the next segment exists.
            let closed = self.segment + 1;
            let file_len = self
                .file
                .metadata()
                .map_err(|e| format!("segment {closed}: {e}"))?
                .len();
            if file_len > self.len {
                self.file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all())
                    .map_err(|e| format!("cutting segment {closed} to its end: {e}"))?;
            }
            let number = batch.segment + 1;
            let prepared = match &mut self.preparer {
                Some(p) => p.take(number)?,
                None => None,
            };
            let file = match prepared {
                Some(file) => file,
                None => segments::create(&segments::dir_of(&self.dir), number)
                    .map_err(|e| e.to_string())?,
            };
            let file = Arc::new(file);
            self.segment = self
                .shared
                .segments
                .push(file.clone())
                .map_err(|e| e.to_string())?;
            self.file_len = file
                .metadata()
                .map_err(|e| format!("segment {number}: {e}"))?
                .len();
            self.file = file;
            self.len = 0;
            self.tail = Tail::default();
            self.direct =
                DirectSegment::open_if(self.direct_writes, &segments::dir_of(&self.dir), number);
        }
        if batch.segment != self.segment || batch.base != self.len {
            return Err(format!(
                "batch {} planned for segment {} offset {}, the log is at segment {} offset {}",
                batch.number,
                batch.segment + 1,
                batch.base,
                self.segment + 1,
                self.len
            ));
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
        // Within a prepared segment's room, straight to the disk (direct.rs).
        let direct = match &mut self.direct {
            Some(d) => match d.write(&self.tail, self.len, &batch.buf, self.file_len) {
                Ok(written) => written,
                // Refused before any I/O (an alignment this file system does not take): this
                // segment's writes go through the page cache instead.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    false
                }
                Err(e) => return Err(format!("write to segment {}: {e}", self.segment + 1)),
            },
            None => false,
        };
        if !direct {
            // Within a prepared segment's room the write goes on with its zeros to the end of
            // its last page: a page written only in part, and not in the page cache (the room
            // was written around it), is first read from the disk, one synchronous read per
            // batch. The next batch writes over them; the open takes zeros after the last
            // batch as the end, as it does for the rest of the room.
            let bytes = batch.buf.len();
            let end = self.len + bytes as u64;
            let padded = end.next_multiple_of(PAGE_BYTES).min(self.file_len).max(end);
            batch.buf.resize(bytes + (padded - end) as usize, 0);
            let written = self.file.write_all_at(&batch.buf, self.len);
            batch.buf.truncate(bytes);
            written.map_err(|e| format!("write to segment {}: {e}", self.segment + 1))?;
        } else {
            self.shared.batches_direct.fetch_add(1, Ordering::Relaxed);
        }
        if self.direct_writes {
            self.tail.after(self.len, &batch.buf);
        }
        self.file
            .sync_data()
            .map_err(|e| format!("sync of segment {}: {e}", self.segment + 1))?;
        Ok(())
    }

    /// Applies the synced batch to the index.
    fn apply(&mut self, batch: &Written) -> Result<(), Error> {
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
        }
        drop(index);
        self.len += batch.buf.len() as u64;
        self.shared.log_end.store(self.len, Ordering::Release);
        let number = self.segment + 1;
        if let Some(p) = &self.preparer {
            if self.len >= prepared::prepare_after(number, self.segment_bytes_max) {
                let next = number + 1;
                p.want(next, prepared::capacity(next, self.segment_bytes_max));
            }
        }
        Ok(())
    }
}

/// The page size the syncer rounds its writes into a prepared segment up to (the common
/// one: where the kernel's pages are larger a write ends within a page, and is only slower);
/// the same page a direct write is aligned to.
const PAGE_BYTES: u64 = crate::direct::ALIGN;

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
    layers: &[Layer],
    batch: &mut Batch,
    commit: Commit,
) -> Result<Receipt, Error> {
    // Empty: the last commit's was merged, a refused one's went with it.
    let draft = std::mem::take(&mut batch.draft);
    let mut view = View {
        index,
        segments,
        layers,
        batch: &batch.overlay,
        draft,
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
        match view.key_written(&k) {
            Some(false) => continue, // removed earlier in this batch or the one before
            Some(true) => {
                // Stored earlier in this batch or the one before, so not durable yet and
                // without a location to name; the caller retries after this batch.
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
    let mut draft = view.draft;
    batch.overlay.merge(&mut draft);
    batch.draft = draft;

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
    let mut live = view.keys_live();
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
