//! # marketgov-store-log
//!
//! A log-structured embedded store: the whole store is a sequence of append-only segment files
//! (`log/*.seg` in the data directory) holding checksummed records in batches. One writer thread
//! group-commits: every commit queued while the last batch was written shares the next batch,
//! written with one `pwrite` and synced with one `fdatasync` before anything of it is applied to
//! the index or acknowledged. Readers look records up in the index and read them from the
//! segments by location.
//!
//! The index is small per thing stored: streams by a hash of their name, each event pointing
//! back at its stream's previous one on disk (streams.rs); idempotency and effect keys in run
//! files beside each closed segment, behind filters (keys.rs); pending effects in memory up to a
//! bound, the rest waiting on disk (index.rs). A clean close keeps it (index_at_close.rs, under
//! hash keys kept per store: hash_keys.rs); an open reads the kept index and scans only the log
//! written after it, or, without a usable one, rebuilds it by a scan of every segment.
//!
//! Built because the SQLite store's writer is the largest single cost per event in the
//! benchmarks (docs/PERFORMANCE.md): every commit there dirties B-tree pages of random-key
//! indexes, each written whole to the WAL and again at the checkpoint. Here a commit costs its
//! own bytes once. Design, limits and what is not built yet: docs/store-log.md.
//!
//! **What it owns:** the record format, the segments, the writer, recovery (a torn final batch is
//! cut off; any other damage is named), the index and its run files, checksums of every record and the
//! audit chain's hashes. **What it must not know:** what events mean (bytes in, bytes out).
//!
//! Reads answer the durable state only: the index changes after the sync, so nothing not yet
//! durable is ever read, and no read waits for a sync.

mod direct;
mod frame;
pub mod hash_keys;
mod index;
mod index_at_close;
/// The key index; public only for its microbenchmark (`benches/keys.rs`), not the store's API.
#[doc(hidden)]
pub mod keys;
mod prehashed;
mod prepared;
mod segments;
mod streams;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use marketgov_audit::{CheckpointSigner, Entry};
use marketgov_store::backend::{check_entry, enqueue, StopFlag};
use marketgov_store::{
    Ack, Checkpoint, Commit, Error, IdempotencyRecord, OutboxRow, Snapshot, Store, StoreStats,
    StreamLoad, TimerRow, VersionedTable,
};

use crate::frame::{table_code, Record, StreamPrev};
use crate::index::Index;
pub use crate::index::IndexMemory;
#[doc(hidden)]
pub use crate::index::Loc;
pub use crate::segments::SEGMENT_BYTES_MAX;
use crate::streams::StreamSlot;

/// Options of the log-structured store.
#[derive(Debug)]
pub struct Options {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Commits waiting for the writer before new ones are refused.
    pub commit_queue_max: usize,
    /// Commits written per batch at most.
    pub batch_commits_max: usize,
    /// A signed checkpoint every this many audit entries (needs `signer`).
    pub checkpoint_every_entries: u64,
    /// Signs checkpoints.
    pub signer: Option<CheckpointSigner>,
    /// Audit entries at the tail of the log whose hashes are re-verified on open (every record's
    /// CRC and the chain's links are checked on open regardless).
    pub verify_tail_entries: u64,
    /// Pending effects held in memory at most; more are held on disk only, and come back to
    /// memory as those before them are done (about 70 bytes each in memory).
    pub effects_in_memory_max: usize,
    /// The largest segment capacity: a new segment file is started when a batch would take the
    /// current one past its capacity, 16 MiB for the first, doubling up to this
    /// (`prepared::capacity`).
    pub segment_bytes_max: u64,
    /// Writes each batch into a prepared segment's room with `O_DIRECT`, past the page cache
    /// (direct.rs). Off by default: it saves the copy into the page cache (on this project's VM
    /// up to a tenth of the CPU of a long run) but every read of a record just written (a
    /// timer's, an effect's, a stream reloaded) then goes to the disk.
    pub direct_writes: bool,
    /// Test seam: makes a chosen batch fail or wait.
    pub fault: Option<Arc<FaultInjector>>,
}

impl Options {
    /// Safe defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            commit_queue_max: 16_384,
            batch_commits_max: 1024,
            checkpoint_every_entries: 1000,
            signer: None,
            verify_tail_entries: 1024,
            segment_bytes_max: SEGMENT_BYTES_MAX,
            effects_in_memory_max: 100_000,
            direct_writes: false,
            fault: None,
        }
    }
}

/// How an injected fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The batch is never written and the writer is told the sync failed.
    LostSync,
    /// The batch reaches the disk, but the writer is told the sync failed.
    UnacknowledgedSync,
    /// Half of the batch is written, then the write fails (a torn write).
    TornWrite,
    /// The batch is written and synced, then waits until [`FaultInjector::release`] before it
    /// is applied and acknowledged.
    Held,
}

/// Test seam: fails (or holds, [`FaultMode::Held`]) the `n`-th batch written (counting from 1).
pub type FaultInjector = marketgov_store::backend::BatchFault<FaultMode>;

/// State shared by the writer and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub index: RwLock<Index>,
    pub segments: segments::Segments,
    stopped: StopFlag,
    pub queued: AtomicUsize,
    pub commits: AtomicU64,
    pub batches: AtomicU64,
    pub fault: Option<Arc<FaultInjector>>,
    /// Whether the syncer waits for a batch (the builder then hands its batch on at once).
    pub syncer_idle: std::sync::atomic::AtomicBool,
    /// Where the durable log ends in its last segment (a prepared segment's file is longer).
    pub log_end: AtomicU64,
    /// Batches written with `O_DIRECT` (direct.rs) since the open.
    pub batches_direct: AtomicU64,
}

impl Shared {
    pub fn stop(&self, reason: &str) {
        self.stopped.stop(reason);
    }

    pub fn stopped_reason(&self) -> Option<String> {
        self.stopped.reason()
    }
}

/// The log-structured store.
#[derive(Debug)]
pub struct LogStore {
    tx: Option<SyncSender<writer::Inbound>>,
    shared: Arc<Shared>,
    commit_queue_max: usize,
    writer: Option<JoinHandle<()>>,
    _lock: File,
    dir: PathBuf,
    cut_bytes: u64,
    /// The idempotency keys' filter, asked before the index's lock is taken.
    key_gate: keys::KeyGate,
    hash_keys: hash_keys::HashKeys,
    open_path: OpenPath,
    prepared: prepared::Watch,
}

/// How an open found the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenPath {
    /// Read from the index kept at the last clean close (index_at_close.rs), then only what
    /// was written after it scanned (0 bytes after a clean stop; after a crash, what the
    /// process wrote since its own open).
    IndexKeptAtClose { scanned_bytes: u64 },
    /// Every segment was scanned; why the kept index was not used (none, damaged, another log).
    Scanned(String),
}

impl LogStore {
    /// Opens (creating if needed) the store in `options.dir`: reads every segment, cuts off a
    /// torn final batch, re-verifies the tail of the audit chain.
    pub fn open(options: Options) -> Result<Self, Error> {
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| Error::Unavailable(format!("{}: {e}", options.dir.display())))?;
        let lock_path = options.dir.join("LOCK");
        let lock = File::create(&lock_path)
            .map_err(|e| Error::Unavailable(format!("{}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            Error::Unavailable(format!(
                "{} is in use by another process",
                options.dir.display()
            ))
        })?;
        let log_dir = segments::dir_of(&options.dir);
        let (hash_keys, _) = hash_keys::HashKeys::load_or_create(&log_dir)?;
        prepared::remove_leftovers(&log_dir).map_err(Error::Storage)?;
        let numbers = segments::numbers(&log_dir)?;
        let kept = if numbers.is_empty() {
            Err("a new log".to_owned())
        } else {
            index_at_close::read(
                &log_dir,
                &numbers,
                &hash_keys,
                options.effects_in_memory_max,
            )
        };
        let mut segments = segments::Segments::default();
        let resumed = match kept {
            Ok((mut index, from)) => {
                let after = (from.segments, from.last_len);
                match segments::open_after(&log_dir, &segments, &numbers, &mut index, after) {
                    Ok((opened, scanned)) => Ok((index, opened, scanned)),
                    // What follows the kept index does not follow it: judge the whole log.
                    Err(e) => Err(format!("the log after the index kept at close: {e}")),
                }
            }
            Err(why) => Err(why),
        };
        let (index, opened, open_path) = match resumed {
            Ok((index, opened, scanned_bytes)) => {
                (index, opened, OpenPath::IndexKeptAtClose { scanned_bytes })
            }
            Err(why) => {
                segments = segments::Segments::default();
                let mut index = Index::new(&log_dir, options.effects_in_memory_max, &hash_keys);
                let opened = segments::open_all(&log_dir, &segments, &mut index)?;
                (index, opened, OpenPath::Scanned(why))
            }
        };
        verify_tail(&index, &segments, options.verify_tail_entries)?;
        let key_gate = index.keys.gate();
        let last_checkpoint = index.checkpoints.last().map_or(0, |c| c.seq);
        let effect_id = index.effect_id_max;
        let segment = (segments.len() - 1) as u32;
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            segments,
            stopped: StopFlag::default(),
            queued: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fault: options.fault.clone(),
            syncer_idle: std::sync::atomic::AtomicBool::new(true),
            log_end: AtomicU64::new(opened.last_len),
            batches_direct: AtomicU64::new(0),
        });
        let (tx, rx) = sync_channel(options.commit_queue_max);
        // A rendezvous: the builder is never more than one batch ahead of the syncer.
        let (to_syncer, from_builder) = sync_channel(0);
        let (spares_tx, spares_rx) = sync_channel(writer::SPARE_BUFFERS_MAX);
        let (number, head) = {
            let index = shared
                .index
                .read()
                .map_err(|_| Error::Storage("index poisoned".into()))?;
            (index.batch, index.head)
        };
        let preparer = prepared::Preparer::start(&log_dir).map_err(Error::Unavailable)?;
        let direct = direct::DirectSegment::open_if(options.direct_writes, &log_dir, segment + 1);
        let tail = match options.direct_writes {
            true => direct::Tail::read(&opened.last, opened.last_len)
                .map_err(|e| Error::Unavailable(format!("the last segment's last page: {e}")))?,
            false => direct::Tail::default(),
        };
        let prepared = preparer.watch();
        let s = writer::Syncer {
            shared: shared.clone(),
            dir: options.dir.clone(),
            file_len: opened
                .last
                .metadata()
                .map_err(|e| Error::Unavailable(format!("the last segment: {e}")))?
                .len(),
            file: opened.last,
            segment,
            len: opened.last_len,
            spares: spares_tx,
            segment_bytes_max: options.segment_bytes_max,
            preparer: Some(preparer),
            direct_writes: options.direct_writes,
            direct,
            tail,
        };
        let syncer = std::thread::Builder::new()
            .name("marketgov-store-syncer".into())
            .spawn(move || s.run(from_builder))
            .map_err(|e| Error::Unavailable(format!("cannot start the syncer: {e}")))?;
        let w = writer::Writer {
            shared: shared.clone(),
            signer: options.signer,
            checkpoint_every: options.checkpoint_every_entries.max(1),
            last_checkpoint,
            batch_commits_max: options.batch_commits_max.max(1),
            effect_id,
            segment_bytes_max: options.segment_bytes_max,
            segment,
            len: opened.last_len,
            number,
            head,
            layers: Vec::new(),
            to_syncer: Some(to_syncer),
            spares: spares_rx,
            syncer: Some(syncer),
        };
        let writer = std::thread::Builder::new()
            .name("marketgov-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            shared,
            commit_queue_max: options.commit_queue_max,
            writer: Some(writer),
            _lock: lock,
            dir: options.dir,
            cut_bytes: opened.cut_bytes,
            key_gate,
            hash_keys,
            open_path,
            prepared,
        })
    }

    /// Segments started prepared (prepared.rs), and started as ordinary files because theirs
    /// was not ready in time, since the open.
    pub fn prepared_segments(&self) -> (u64, u64) {
        self.prepared.counts()
    }

    /// Batches written since the open: with `O_DIRECT` (direct.rs), and through the page cache.
    pub fn batches_written(&self) -> (u64, u64) {
        let all = self.shared.batches.load(Ordering::Relaxed);
        let direct = self.shared.batches_direct.load(Ordering::Relaxed);
        (direct, all.saturating_sub(direct))
    }

    /// Test seam: waits at most `timeout` until the next segment is prepared; its number.
    #[doc(hidden)]
    pub fn wait_for_prepared_segment(&self, timeout: std::time::Duration) -> Option<u32> {
        self.prepared.wait_ready(timeout)
    }

    /// How the last open found the index: kept at the previous clean close, or by scanning
    /// every segment (and why the kept one could not be used).
    pub fn open_path(&self) -> &OpenPath {
        &self.open_path
    }

    /// The store's size on disk: its segments and the files beside them, in bytes; the room a
    /// prepared segment has not used yet (prepared.rs) is not counted.
    pub fn bytes_on_disk(&self) -> u64 {
        let last = segments::file_name(self.shared.segments.len().max(1) as u32);
        let end = self.shared.log_end.load(Ordering::Acquire);
        std::fs::read_dir(segments::dir_of(&self.dir))
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let e = e.ok()?;
                        let name = e.file_name();
                        let name = name.to_str()?;
                        if name.ends_with(".prep") {
                            return None;
                        }
                        let len = e.metadata().ok()?.len();
                        Some(if name == last { len.min(end) } else { len })
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last durable audit sequence number.
    pub fn head_seq(&self) -> u64 {
        self.index().map_or(0, |i| i.head.seq)
    }

    /// Why the writer stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped_reason()
    }

    /// What the index holds in memory, by part (estimated from its structures' sizes).
    pub fn index_memory(&self) -> IndexMemory {
        self.index().map(|i| i.memory()).unwrap_or_default()
    }

    /// Bytes of a torn final batch cut off when this store was opened (0: none).
    pub fn cut_on_open(&self) -> u64 {
        self.cut_bytes
    }

    fn index(&self) -> Result<RwLockReadGuard<'_, Index>, Error> {
        self.shared
            .index
            .read()
            .map_err(|_| Error::Storage("index poisoned".into()))
    }

    fn read(&self, loc: Loc) -> Result<Record, Error> {
        self.shared.segments.read(loc)
    }

    /// The stream's events after `after_version`, in version order, found by walking back
    /// from its last event (`slot`) along each event's pointer to the one before.
    fn walk_back(
        &self,
        stream: &str,
        slot: &StreamSlot,
        after_version: u64,
    ) -> Result<Vec<(u64, Entry)>, Error> {
        let mut out: Vec<(u64, Entry)> = Vec::new();
        let mut at = slot.last_event();
        let mut expected = u64::from(slot.version);
        while let Some(loc) = at {
            if expected <= after_version {
                break;
            }
            let corrupt = |detail: String| Error::Corrupt {
                location: format!("segment {} offset {}", loc.segment() + 1, loc.offset()),
                detail,
            };
            match self.read(loc)? {
                Record::Event {
                    seq,
                    stream: s,
                    version,
                    prev,
                    prev_hash,
                    hash,
                    body,
                    ..
                } => {
                    if s != stream || version != expected {
                        return Err(corrupt(format!(
                            "{s} version {version} found where {stream} version {expected} \
                             belongs"
                        )));
                    }
                    out.push((
                        version,
                        Entry {
                            seq,
                            prev_hash,
                            hash,
                            bytes: body,
                        },
                    ));
                    expected -= 1;
                    at = StreamPrev::resolve(prev, loc.raw())
                        .map_err(corrupt)?
                        .map(Loc::from_raw);
                }
                other => return Err(wrong_record(loc, "an event", &other)),
            }
        }
        if expected > after_version {
            return Err(Error::Corrupt {
                location: format!("stream {stream}"),
                detail: format!("the chain of events ends before version {expected}"),
            });
        }
        out.reverse();
        Ok(out)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(writer::Inbound::Close);
        }
        if let Some(w) = self.writer.take() {
            if w.join().is_ok() {
                // The writer and the syncer are gone: the index is the durable log's, and
                // nothing changes it any more. A failure here only costs the next open a scan.
                let _ = self.keep_index();
            }
        }
    }
}

impl LogStore {
    /// Writes the index kept at close (index_at_close.rs), unless the store stopped on an
    /// error (its log is then what the next open must scan and judge).
    fn keep_index(&self) -> Result<(), Error> {
        if self.shared.stopped_reason().is_some() {
            return Ok(());
        }
        let count = self.shared.segments.len();
        let last = self.shared.segments.file((count.max(1) - 1) as u32)?;
        let end = self.shared.log_end.load(Ordering::Acquire);
        let shape = index_at_close::LogShape::of(count as u32, &last, end)?;
        let index = self
            .shared
            .index
            .read()
            .map_err(|_| Error::Storage("index poisoned".into()))?;
        index_at_close::write(&segments::dir_of(&self.dir), &index, shape, &self.hash_keys)
    }
}

fn wrong_record(loc: Loc, expected: &str, found: &Record) -> Error {
    let found = format!("{found:?}");
    Error::Corrupt {
        location: format!("segment {} offset {}", loc.segment() + 1, loc.offset()),
        detail: format!(
            "expected {expected}, found {}",
            found.split([' ', '(']).next().unwrap_or("another record")
        ),
    }
}

/// Re-verifies the hashes of the last `tail_entries` audit entries (their CRCs and links were
/// checked by the scan).
fn verify_tail(
    index: &Index,
    segments: &segments::Segments,
    tail_entries: u64,
) -> Result<(), Error> {
    let last = index.head.seq;
    if last == 0 || tail_entries == 0 {
        return Ok(());
    }
    let mut seq = last.saturating_sub(tail_entries - 1).max(1);
    while seq <= last {
        let entries = entries_from(segments, index.seq_mark(seq), last, seq, VERIFY_PAGE)?;
        let Some(end) = entries.last().map(|e| e.seq) else {
            return Err(Error::Corrupt {
                location: format!("audit entry {seq}"),
                detail: "the tail of the log is unreadable".into(),
            });
        };
        for e in &entries {
            check_entry(e)?;
        }
        seq = end + 1;
    }
    Ok(())
}

/// Audit entries re-verified per read when the store opens.
const VERIFY_PAGE: usize = 1024;

/// Up to `limit` audit entries from `from_seq`, never past `head`, found by scanning forward
/// from `mark` (the nearest indexed entry at or before it: its seq and location).
fn entries_from(
    segments: &segments::Segments,
    mark: Option<(u64, Loc)>,
    head: u64,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    let Some((mut seq, mut loc)) = mark else {
        return Ok(out);
    };
    let mut segment_len: Option<(u32, u64)> = None;
    while seq <= head && out.len() < limit {
        let (record, size) = segments.read_sized(loc)?;
        if let Record::Event {
            seq: s,
            prev_hash,
            hash,
            body,
            ..
        } = record
        {
            if s != seq {
                return Err(Error::Corrupt {
                    location: format!("segment {} offset {}", loc.segment() + 1, loc.offset()),
                    detail: format!("audit entry {s} found where {seq} belongs"),
                });
            }
            if s >= from_seq {
                out.push(Entry {
                    seq: s,
                    prev_hash,
                    hash,
                    bytes: body,
                });
            }
            seq += 1;
        }
        // The next frame: in this segment, or the first of the next.
        let len = match segment_len {
            Some((segment, len)) if segment == loc.segment() => len,
            _ => {
                let len = segments
                    .file(loc.segment())?
                    .metadata()
                    .map_err(|e| Error::Storage(format!("segment {}: {e}", loc.segment() + 1)))?
                    .len();
                segment_len = Some((loc.segment(), len));
                len
            }
        };
        let next = loc.offset() + size as u64;
        loc = if next < len {
            Loc::new(loc.segment(), next)
        } else {
            Loc::new(loc.segment() + 1, 0)
        };
    }
    Ok(out)
}

impl Store for LogStore {
    fn commit(&self, commit: Commit) -> Result<Ack, Error> {
        if let Some(reason) = self.shared.stopped_reason() {
            return Err(Error::Stopped { reason });
        }
        let Some(tx) = self.tx.as_ref() else {
            return Err(Error::Stopped {
                reason: "store closed".into(),
            });
        };
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        let request = writer::Inbound::Commit(writer::Request {
            commit,
            ack: ack_tx,
        });
        enqueue(tx, &self.shared.queued, self.commit_queue_max, request)?;
        Ok(ack_rx)
    }

    fn load_stream(&self, stream: &str) -> Result<StreamLoad, Error> {
        let Some(slot) = self.index()?.streams.get(stream).copied() else {
            return Ok(StreamLoad::default());
        };
        let snapshot = match slot.latest_snapshot() {
            None => None,
            Some(loc) => match self.read(loc)? {
                Record::Snapshot {
                    stream: s,
                    version,
                    body,
                } if s == stream => Some(Snapshot {
                    stream: s,
                    version,
                    body,
                }),
                other => return Err(wrong_record(loc, "the stream's snapshot", &other)),
            },
        };
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let mut events = Vec::new();
        for (version, entry) in self.walk_back(stream, &slot, after)? {
            check_entry(&entry)?;
            events.push((version, entry.bytes));
        }
        Ok(StreamLoad { snapshot, events })
    }

    fn idempotency(&self, tenant: &str, key: &str) -> Result<Option<IdempotencyRecord>, Error> {
        // Most keys asked for are new: the filter answers them without the index's lock.
        let hash = self.key_gate.hash(&[tenant, key]);
        if !self.key_gate.may_contain(hash) {
            return Ok(None);
        }
        let index = self.index()?;
        index.keys.find_newest_past_gate(hash, None, |loc| {
            if !index.key_kept(loc) {
                return Ok(None);
            }
            match self.read(loc)? {
                Record::IdempotencyPut {
                    tenant: t,
                    key: k,
                    operation,
                    fingerprint,
                    created_at_ms,
                    response,
                } => Ok((t == tenant && k == key).then_some(IdempotencyRecord {
                    tenant: t,
                    key: k,
                    operation,
                    fingerprint,
                    response,
                    created_at_ms,
                })),
                other => Err(wrong_record(loc, "an idempotency record", &other)),
            }
        })
    }

    /// Reads every kept record to sort their keys: O(records) per call. The engine does not
    /// call it on this store (see [`Store::absent_keys_are_cheap`]); it is here for tools and
    /// tests.
    fn idempotency_keys(
        &self,
        after: &(String, String),
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let index = self.index()?;
        let mut keys = Vec::new();
        for (loc, _) in index.keys.order_from(index.keys_frontier, usize::MAX)? {
            if !index.key_kept(loc) {
                continue;
            }
            match self.read(loc)? {
                Record::IdempotencyPut { tenant, key, .. } => {
                    if (&tenant, &key) > (&after.0, &after.1) {
                        keys.push((tenant, key));
                    }
                }
                other => return Err(wrong_record(loc, "an idempotency record", &other)),
            }
        }
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys)
    }

    fn due_timers(&self, until_ms: i64, limit: usize) -> Result<Vec<TimerRow>, Error> {
        let due: Vec<(i64, Loc)> = {
            let index = self.index()?;
            index
                .timers_due
                .iter()
                .take_while(|(due, _)| *due <= until_ms)
                .take(limit)
                .copied()
                .collect()
        };
        let mut out = Vec::with_capacity(due.len());
        for (due_at_ms, loc) in due {
            match self.read(loc)? {
                Record::TimerSet {
                    stream,
                    kind,
                    due_at_ms: d,
                } if d == due_at_ms => out.push(TimerRow {
                    stream,
                    kind,
                    due_at_ms,
                }),
                other => return Err(wrong_record(loc, "the timer", &other)),
            }
        }
        Ok(out)
    }

    fn ready_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, Error> {
        let ready: Vec<(Loc, u32, i64)> = {
            let index = self.index()?;
            index
                .effects_ready
                .iter()
                .take_while(|(next, _)| *next <= now_ms)
                .take(limit)
                .filter_map(|(_, at)| {
                    let e = index.pending.get(at)?;
                    Some((*at, e.attempts, e.next_attempt_ms))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(ready.len());
        for (loc, attempts, next_attempt_ms) in ready {
            match self.read(loc)? {
                Record::OutboxPut {
                    id,
                    effect_key,
                    stream,
                    connector,
                    body,
                    ..
                } => out.push(OutboxRow {
                    id,
                    effect_key,
                    stream,
                    connector,
                    body,
                    attempts,
                    next_attempt_ms,
                }),
                other => return Err(wrong_record(loc, "a queued effect", &other)),
            }
        }
        Ok(out)
    }

    fn versioned(&self, table: VersionedTable, key: &str) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let loc = {
            let index = self.index()?;
            match index.versioned.get(&(table_code(table), key.to_owned())) {
                Some((_, loc)) => *loc,
                None => return Ok(None),
            }
        };
        match self.read(loc)? {
            Record::Versioned {
                table: t,
                key: k,
                version,
                body,
            } if t == table && k == key => Ok(Some((version, body))),
            other => Err(wrong_record(loc, "the versioned record", &other)),
        }
    }

    fn versioned_list(
        &self,
        table: VersionedTable,
        prefix: &str,
        after_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, Error> {
        let code = table_code(table);
        let locs: Vec<Loc> = {
            let index = self.index()?;
            index
                .versioned
                .range((
                    std::ops::Bound::Excluded((code, after_key.to_owned())),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|((c, _), _)| *c == code)
                .filter(|((_, k), _)| k.starts_with(prefix))
                .take(limit)
                .map(|(_, (_, loc))| *loc)
                .collect()
        };
        let mut out = Vec::with_capacity(locs.len());
        for loc in locs {
            match self.read(loc)? {
                Record::Versioned {
                    table: t,
                    key,
                    version,
                    body,
                } if t == table => out.push((key, version, body)),
                other => return Err(wrong_record(loc, "a versioned record", &other)),
            }
        }
        Ok(out)
    }

    fn streams(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>, Error> {
        self.index()?.streams.list(prefix, after, limit)
    }

    /// Walks the stream back from its last event to `after_version`: O(events after it).
    fn stream_history(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, Error> {
        let Some(slot) = self.index()?.streams.get(stream).copied() else {
            return Ok(Vec::new());
        };
        let mut out = self.walk_back(stream, &slot, after_version)?;
        out.truncate(limit);
        for (_, entry) in &out {
            check_entry(entry)?;
        }
        Ok(out)
    }

    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        // Not checked here: the verifier's job is to name what is wrong, so hand it the rows.
        let from = from_seq.max(1);
        let (mark, head) = {
            let index = self.index()?;
            (index.seq_mark(from), index.head.seq)
        };
        entries_from(&self.shared.segments, mark, head, from, limit)
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        Ok(self.index()?.checkpoints.clone())
    }

    fn stats(&self) -> Result<StoreStats, Error> {
        let index = self.index()?;
        Ok(StoreStats {
            events: index.head.seq,
            commits: self.shared.commits.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            timers: index.timers.len() as u64,
            outbox: index.effects_pending,
        })
    }

    /// Streams are indexed in memory, and idempotency and effect keys are behind a filter of
    /// every key stored (keys.rs).
    fn absent_keys_are_cheap(&self) -> bool {
        true
    }
}
