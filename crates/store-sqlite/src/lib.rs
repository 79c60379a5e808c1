//! # marketgov-store-sqlite
//!
//! The embedded store: one directory holding a SQLite database (bundled library, no server) in
//! WAL mode. One writer thread owns the write connection and group-commits: every commit queued
//! while the last batch was written shares the next transaction. A committed batch goes to the
//! sync thread, which syncs the WAL (`fdatasync`) and only then acknowledges its callers, while
//! the writer writes the next batch (SQLite runs at `synchronous=NORMAL`: its commits write the
//! WAL, its checkpoints sync; every acknowledgement waits for the sync thread's sync).
//!
//! Reads use their own connections. A reader can see a batch that is committed and not yet
//! durable, so every read that answers a caller is held to the durable state: audit entries,
//! stream history and checkpoints are capped at the durable head, effects at the durable outbox
//! row, a versioned record whose latest write is still syncing is returned once that write is
//! durable (`Shared::versioned_pending`), and a found idempotency record once every batch visible
//! at the end of the read is durable (`Shared::wait_durable`; at most about one sync).
//! Timers and stream names are read as committed: a timer fires through its stream's shard, which
//! holds work for a stream until that stream's commit is acknowledged, and stream names only feed
//! the engine's may-contain filter.
//!
//! **What it owns:** the schema and its migrations, the group-commit writer, the directory lock,
//! checksums of stored blobs and the audit chain's hashes, verified on read. **What it must not
//! know:** what events mean (bytes in, bytes out).
//!
//! Integrity: every event row carries its audit hash (verified on every read of the row); every
//! other blob carries a checksum (first 16 bytes of its SHA-256), also verified on read. A mismatch
//! is [`Error::Corrupt`] naming the record, never a silent skip. On open, the tail of the chain is
//! re-verified.

mod schema;
mod syncer;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use marketgov_audit::{CheckpointSigner, Entry, Hash, Head};
use marketgov_store::backend::{check_entry, enqueue, StopFlag};
use marketgov_store::{
    Ack, Checkpoint, Commit, Error, IdempotencyRecord, OutboxRow, Snapshot, Store, StoreStats,
    StreamLoad, TimerRow, VersionedTable,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

pub use schema::SCHEMA_VERSION;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Every commit's WAL frames are synced before it is acknowledged (the default; the only
    /// safe one).
    Full,
    /// WAL synced only at checkpoints: a power loss can lose acknowledged commits.
    Normal,
    /// Never synced: a crash can lose or corrupt anything.
    Off,
}

/// The page size of a new database, in bytes (an existing database keeps the size it was created
/// with). Twice SQLite's default: a log entry (about 1.3 KiB of JSON) and the index entries a
/// commit adds spread over fewer pages, so a batch writes fewer WAL frames; in the bench this cost
/// about 10 % less CPU per event than 4 KiB pages (16 KiB was no better and wrote more bytes).
pub const PAGE_SIZE_BYTES: u32 = 8_192;

/// The writer checkpoints (copies the WAL into the database file) when the WAL reaches this many
/// pages (16 MiB of [`PAGE_SIZE_BYTES`] pages; 8 MiB in an older file of 4 KiB pages), between
/// batches. Fewer, larger checkpoints than SQLite's default of 1,000 pages.
/// (A background checkpointer thread was measured and removed: its checkpoints and their syncs
/// stalled commits by 100-400 ms even at light load.)
pub const WRITER_CHECKPOINT_PAGES: u32 = (16 << 20) / PAGE_SIZE_BYTES;

/// The page of due timers the timer service reads, in firing order. Served by the index
/// `timers_due` in that order (schema migration 4): a page costs its own rows, not a sort of
/// every timer sharing its deadline (a test checks the plan).
pub const DUE_TIMERS_SQL: &str = "SELECT stream, kind, due_at_ms FROM timers WHERE due_at_ms <= ?1 ORDER BY due_at_ms, stream, kind LIMIT ?2";

/// Read connections: reads (stream loads, idempotency lookups, queries) from different tasks run
/// side by side instead of queueing on one connection.
pub const READERS: usize = 4;

/// The writer connection's page cache, in KiB: the index pages a batch touches stay in memory
/// instead of being read back from the file (SQLite's default is 2 MiB).
pub const WRITER_PAGE_CACHE_KIB: u32 = 32 * 1024;

/// Turns on SQLite's query planner stability guarantee for `conn`. Without it, a statement with
/// `LIMIT ?` is compiled again every time that parameter is bound (SQLite plans with the bound
/// limit), so every cached read with a limit was re-parsed and re-planned on each call: about 5 %
/// of all CPU in the bench. Our statements have one good plan whatever the values.
fn stable_plans(conn: &Connection) -> Result<(), Error> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(storage)?;
    Ok(())
}

/// Options of the embedded store.
#[derive(Debug)]
pub struct Options {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Commits waiting for the writer before new ones are refused.
    pub commit_queue_max: usize,
    /// Commits written per transaction at most.
    pub batch_commits_max: usize,
    /// A signed checkpoint every this many audit entries (needs `signer`).
    pub checkpoint_every_entries: u64,
    /// Signs checkpoints.
    pub signer: Option<CheckpointSigner>,
    /// How commits reach the disk.
    pub sync: Sync,
    /// Must be set for any `sync` other than `Full`.
    pub allow_unsafe_durability: bool,
    /// Audit entries at the tail of the log re-verified on open (0: none, for `audit verify`,
    /// which checks everything itself and names what it finds).
    pub verify_tail_entries: u64,
    /// Test seam: makes chosen batches fail (or wait) at the sync.
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
            sync: Sync::Full,
            allow_unsafe_durability: false,
            verify_tail_entries: 1024,
            fault: None,
        }
    }
}

/// How an injected fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The batch never reaches the disk and the writer is told the sync failed.
    LostSync,
    /// The batch reaches the disk but the writer is told the sync failed.
    UnacknowledgedSync,
    /// The batch is committed, then waits before its sync until [`FaultInjector::release`]: its
    /// commits stay in flight, visible to readers but not durable and unacknowledged, for as long
    /// as a test needs.
    Held,
    /// The batch's transaction fails while its commits are written (as a failed write to the
    /// database would): nothing of it is committed, every caller in it is answered `Stopped`,
    /// and the store stops.
    BrokenTransaction,
}

/// Test seam: fails (or holds, [`FaultMode::Held`]) the `n`-th batch (counting from 1), at its
/// sync or, for [`FaultMode::BrokenTransaction`], as it is written.
pub type FaultInjector = marketgov_store::backend::BatchFault<FaultMode>;

/// How often a read held to the durable state looks again whether the store stopped.
const DURABLE_WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// State shared by the writer, the sync thread and the handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stopped: StopFlag,
    queued: AtomicUsize,
    commits: AtomicU64,
    batches: AtomicU64,
    /// The durable audit head (published by the sync thread).
    head_seq: AtomicU64,
    /// The highest durable outbox row id (rows are never deleted, so ids only grow).
    outbox_id_durable: AtomicI64,
    /// Durable counts of stored timers and pending outbox rows (see [`writer::Pending`]).
    pending_timers: AtomicU64,
    pending_outbox: AtomicU64,
    /// Batches that may be visible to readers: counted by the writer just before each `COMMIT`.
    batches_visible: AtomicU64,
    /// Of those, the last one synced (batches are synced in order).
    batch_durable: Mutex<u64>,
    batch_durable_changed: Condvar,
    /// Versioned records written by batches not yet durable: `(table, key)` -> the last such
    /// batch. Entered by the writer before the `COMMIT`, removed by the sync thread once the batch
    /// is durable; bounded by the batches in flight.
    versioned_pending: Mutex<HashMap<(&'static str, String), u64>>,
}

impl Shared {
    fn stop(&self, reason: &str) {
        self.stopped.stop(reason);
        self.durable_changed();
    }

    /// Counts a batch as visible; called just before its `COMMIT`, so a reader that saw it then
    /// finds it counted.
    fn batch_becomes_visible(&self) -> u64 {
        self.batches_visible.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until the latest write of each of `keys` of `table` that may be visible is durable;
    /// a key with none pending (the common case) costs one lookup.
    fn wait_versioned_durable<'k>(
        &self,
        table: VersionedTable,
        keys: impl Iterator<Item = &'k str>,
    ) -> Result<(), Error> {
        let newest = {
            let pending = self
                .versioned_pending
                .lock()
                .map_err(|_| Error::Storage("durable state poisoned".into()))?;
            if pending.is_empty() {
                return Ok(());
            }
            keys.filter_map(|k| pending.get(&(table.name(), k.to_owned())).copied())
                .max()
        };
        match newest {
            Some(batch) => self.wait_durable_batch(batch),
            None => Ok(()),
        }
    }

    /// The last batch synced.
    fn durable_batch(&self) -> u64 {
        self.batch_durable.lock().map_or(0, |d| *d)
    }

    fn set_durable_batch(&self, batch: u64) {
        if let Ok(mut durable) = self.batch_durable.lock() {
            *durable = (*durable).max(batch);
        }
        if let Ok(mut pending) = self.versioned_pending.lock() {
            if !pending.is_empty() {
                pending.retain(|_, b| *b > batch);
            }
        }
    }

    /// Enters the versioned writes of batch `batch` as pending; the writer calls it before the
    /// batch's `COMMIT`.
    fn versioned_written<'c>(&self, batch: u64, commits: impl Iterator<Item = &'c Commit>) {
        let Ok(mut pending) = self.versioned_pending.lock() else {
            return;
        };
        for commit in commits {
            for (table, writes) in commit.versioned_writes() {
                for w in writes {
                    pending.insert((table.name(), w.key.clone()), batch);
                }
            }
        }
    }

    fn durable_changed(&self) {
        // Taking the lock orders the notice after any waiter's check.
        drop(self.batch_durable.lock());
        self.batch_durable_changed.notify_all();
    }

    /// Waits until everything a read that just ended could have seen is durable: every batch
    /// counted visible by now. Fails if the store stops first (what was seen may never be).
    fn wait_durable(&self) -> Result<(), Error> {
        self.wait_durable_batch(self.batches_visible.load(Ordering::SeqCst))
    }

    /// Waits until batch `seen` is durable (or fails if the store stops first).
    fn wait_durable_batch(&self, seen: u64) -> Result<(), Error> {
        let mut durable = self
            .batch_durable
            .lock()
            .map_err(|_| Error::Storage("durable state poisoned".into()))?;
        while *durable < seen {
            if let Some(reason) = self.stopped_reason() {
                return Err(Error::Stopped { reason });
            }
            durable = self
                .batch_durable_changed
                .wait_timeout(durable, DURABLE_WAIT_POLL)
                .map_err(|_| Error::Storage("durable state poisoned".into()))?
                .0;
        }
        Ok(())
    }

    fn stopped_reason(&self) -> Option<String> {
        self.stopped.reason()
    }
}

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    tx: Option<SyncSender<writer::Inbound>>,
    /// Read connections (WAL readers see the last committed state and never block the writer).
    readers: Vec<Mutex<Connection>>,
    reader_turn: AtomicUsize,
    shared: Arc<Shared>,
    commit_queue_max: usize,
    writer: Option<JoinHandle<()>>,
    _lock: File,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `options.dir`.
    pub fn open(options: Options) -> Result<Self, Error> {
        if options.sync != Sync::Full && !options.allow_unsafe_durability {
            return Err(Error::UnsafeSetting(format!(
                "sync {:?} can lose acknowledged commits; allow it explicitly to use it",
                options.sync
            )));
        }
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

        let path = options.dir.join("marketgov.db");
        let mut conn = Connection::open(&path).map_err(storage)?;
        // `Sync::Full` runs SQLite at NORMAL (in WAL mode: a commit writes its WAL frames, a
        // checkpoint syncs) and the sync thread syncs the WAL before any caller is answered.
        let sync = match options.sync {
            Sync::Full | Sync::Normal => "NORMAL",
            Sync::Off => "OFF",
        };
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE_BYTES}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -{WRITER_PAGE_CACHE_KIB}; PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES};"
        ))
        .map_err(storage)?;
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(storage)?;
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(storage)?;
        if options.sync == Sync::Full && (!journal.eq_ignore_ascii_case("wal") || synchronous != 1)
        {
            return Err(Error::UnsafeSetting(format!(
                "database reports journal {journal}, synchronous {synchronous}"
            )));
        }
        stable_plans(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;

        let head = verify_tail(&conn, options.verify_tail_entries)?;
        let last_checkpoint: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM checkpoints", [], |r| {
                r.get(0)
            })
            .map_err(storage)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(storage)?;
            stable_plans(&reader)?;
            reader.set_prepared_statement_cache_capacity(64);
            readers.push(Mutex::new(reader));
        }

        let pending = writer::Pending::read(&conn)?;
        let outbox_id_max: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |r| r.get(0))
            .map_err(storage)?;
        let wal = open_wal(&options.dir, &path)?;
        // Everything stored before this open is durable.
        let shared = Arc::new(Shared::default());
        shared.head_seq.store(head.seq, Ordering::SeqCst);
        shared
            .outbox_id_durable
            .store(outbox_id_max, Ordering::SeqCst);
        pending.publish(&shared);
        let (to_sync, from_writer) = sync_channel(syncer::BATCHES_AWAITING_SYNC_MAX);
        let (tx, rx) = sync_channel(options.commit_queue_max);
        let s = syncer::Syncer {
            wal,
            wake_writer: tx.clone(),
            sync_wal: options.sync == Sync::Full,
            shared: shared.clone(),
            fault: options.fault.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("marketgov-store-sync".into())
            .spawn(move || s.run(from_writer))
            .map_err(|e| Error::Unavailable(format!("cannot start the sync thread: {e}")))?;
        let w = writer::Writer {
            conn,
            tail: writer::Tail {
                head,
                pending,
                outbox_id_max,
            },
            to_sync,
            syncer: Some(syncer),
            open: None,
            handed_over: 0,
            signer: options.signer,
            checkpoint_every: options.checkpoint_every_entries.max(1),
            last_checkpoint: last_checkpoint.max(0) as u64,
            batch_commits_max: options.batch_commits_max.max(1),
            shared: shared.clone(),
            fault: options.fault,
        };
        let writer = std::thread::Builder::new()
            .name("marketgov-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            readers,
            reader_turn: AtomicUsize::new(0),
            shared,
            commit_queue_max: options.commit_queue_max,
            writer: Some(writer),
            _lock: lock,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's size on disk: the database file and its write-ahead log, in bytes.
    pub fn bytes_on_disk(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The last durable audit sequence number.
    pub fn head_seq(&self) -> u64 {
        self.shared.head_seq.load(Ordering::SeqCst)
    }

    /// Why the writer stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped_reason()
    }

    /// A free read connection, or (all busy) the next one in turn, waited for.
    fn reader(&self) -> Result<MutexGuard<'_, Connection>, Error> {
        for r in &self.readers {
            if let Ok(conn) = r.try_lock() {
                return Ok(conn);
            }
        }
        let turn = self.reader_turn.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        self.readers
            .get(turn)
            .ok_or_else(|| Error::Storage("no reader connection".into()))?
            .lock()
            .map_err(|_| Error::Storage("reader connection poisoned".into()))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The writer finishes what is queued before the notice, then exits.
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(writer::Inbound::Close);
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store for SqliteStore {
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
        let conn = self.reader()?;
        let snapshot = conn
            .prepare_cached("SELECT version, body, sum FROM snapshots WHERE stream = ?1")
            .and_then(|mut st| {
                st.query_row([stream], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(storage)?;
        let snapshot = match snapshot {
            Some((version, body, sum)) => {
                verify_sum(&body, &sum, || format!("snapshot of {stream}"))?;
                Some(Snapshot {
                    stream: stream.to_owned(),
                    version: version as u64,
                    body,
                })
            }
            None => None,
        };
        drop(conn); // `stream_history` takes the reader itself
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let events = self
            .stream_history(stream, after, usize::MAX)?
            .into_iter()
            .map(|(version, entry)| (version, entry.bytes))
            .collect();
        Ok(StreamLoad { snapshot, events })
    }

    fn idempotency_keys(
        &self,
        after: &(String, String),
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let conn = self.reader()?;
        // Reads the primary key's index alone (a covering index scan), not the records.
        let mut st = conn
            .prepare_cached(
                "SELECT tenant, key FROM idempotency WHERE (tenant, key) > (?1, ?2) ORDER BY tenant, key LIMIT ?3",
            )
            .map_err(storage)?;
        let rows = st
            .query_map(params![after.0, after.1, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn idempotency(&self, tenant: &str, key: &str) -> Result<Option<IdempotencyRecord>, Error> {
        let conn = self.reader()?;
        let row = conn
            .prepare_cached(
                "SELECT operation, fingerprint, response, created_at_ms, sum FROM idempotency WHERE tenant = ?1 AND key = ?2",
            )
            .and_then(|mut st| {
                st.query_row([tenant, key], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(storage)?;
        let Some((operation, fingerprint, response, created_at_ms, sum)) = row else {
            return Ok(None);
        };
        drop(conn);
        // A record is answered (as a replay) only once the commit that wrote it is durable.
        self.shared.wait_durable()?;
        let location = || format!("idempotency record {tenant}/{key}");
        verify_sum(
            &[fingerprint.as_slice(), &response].concat(),
            &sum,
            location,
        )?;
        let fingerprint: Hash = fingerprint.try_into().map_err(|_| Error::Corrupt {
            location: location(),
            detail: "fingerprint is not 32 bytes".into(),
        })?;
        Ok(Some(IdempotencyRecord {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            operation,
            fingerprint,
            response,
            created_at_ms,
        }))
    }

    fn due_timers(&self, until_ms: i64, limit: usize) -> Result<Vec<TimerRow>, Error> {
        let conn = self.reader()?;
        let mut st = conn.prepare_cached(DUE_TIMERS_SQL).map_err(storage)?;
        let rows = st
            .query_map(params![until_ms, limit as i64], |r| {
                Ok(TimerRow {
                    stream: r.get(0)?,
                    kind: r.get(1)?,
                    due_at_ms: r.get(2)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn ready_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, Error> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(
                "SELECT id, effect_key, stream, connector, body, sum, attempts, next_attempt_ms FROM outbox
                 WHERE state = 'pending' AND next_attempt_ms <= ?1 AND id <= ?3 ORDER BY next_attempt_ms, id LIMIT ?2",
            )
            .map_err(storage)?;
        // Only effects whose decision is durable are carried out.
        let durable = self.shared.outbox_id_durable.load(Ordering::SeqCst);
        let rows = st
            .query_map(params![now_ms, limit as i64, durable], |r| {
                Ok((
                    OutboxRow {
                        id: r.get(0)?,
                        effect_key: r.get(1)?,
                        stream: r.get(2)?,
                        connector: r.get(3)?,
                        body: r.get(4)?,
                        attempts: r.get(6)?,
                        next_attempt_ms: r.get(7)?,
                    },
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (row, sum) = row.map_err(storage)?;
            verify_sum(&row.body, &sum, || {
                format!("outbox effect {}", row.effect_key)
            })?;
            out.push(row);
        }
        Ok(out)
    }

    fn versioned(&self, table: VersionedTable, key: &str) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let conn = self.reader()?;
        let row = conn
            .prepare_cached("SELECT version, body, sum FROM versioned WHERE tbl = ?1 AND key = ?2")
            .and_then(|mut st| {
                st.query_row([table.name(), key], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(storage)?;
        drop(conn);
        match row {
            None => Ok(None),
            Some((version, body, sum)) => {
                verify_sum(&body, &sum, || format!("{}/{key}", table.name()))?;
                self.shared
                    .wait_versioned_durable(table, std::iter::once(key))?;
                Ok(Some((version as u64, body)))
            }
        }
    }

    fn versioned_list(
        &self,
        table: VersionedTable,
        prefix: &str,
        after_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, Error> {
        let conn = self.reader()?;
        // Keys are ids of a validated character set, so `prefix` || x'FF' bounds the range.
        let upper = format!("{prefix}\u{10FFFF}");
        let mut st = conn
            .prepare_cached(
                "SELECT key, version, body, sum FROM versioned WHERE tbl = ?1 AND key > ?2 AND key >= ?3 AND key < ?4
                 ORDER BY key LIMIT ?5",
            )
            .map_err(storage)?;
        let rows = st
            .query_map(
                params![table.name(), after_key, prefix, upper, limit as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, version, body, sum) = row.map_err(storage)?;
            verify_sum(&body, &sum, || format!("{}/{key}", table.name()))?;
            out.push((key, version as u64, body));
        }
        // The reader goes back to the pool before any wait.
        drop(st);
        drop(conn);
        self.shared
            .wait_versioned_durable(table, out.iter().map(|(k, _, _)| k.as_str()))?;
        Ok(out)
    }

    fn streams(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>, Error> {
        let conn = self.reader()?;
        let upper = format!("{prefix}\u{10FFFF}");
        let mut st = conn
            .prepare_cached(
                "SELECT DISTINCT stream FROM events WHERE stream > ?1 AND stream >= ?2 AND stream < ?3 ORDER BY stream LIMIT ?4",
            )
            .map_err(storage)?;
        let rows = st
            .query_map(params![after, prefix, upper, limit as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn stream_history(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, Error> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(
                "SELECT stream_version, seq, prev_hash, hash, body FROM events
                 WHERE stream = ?1 AND stream_version > ?2 AND seq <= ?4 ORDER BY stream_version LIMIT ?3",
            )
            .map_err(storage)?;
        let durable = self.head_seq() as i64;
        let rows = st
            .query_map(
                params![stream, after_version as i64, limit as i64, durable],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (version, seq, prev, hash, body) = row.map_err(storage)?;
            let entry = to_entry(seq, prev, hash, body)?;
            check_entry(&entry)?;
            out.push((version as u64, entry));
        }
        Ok(out)
    }

    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached("SELECT seq, prev_hash, hash, body FROM events WHERE seq >= ?1 AND seq <= ?3 ORDER BY seq LIMIT ?2")
            .map_err(storage)?;
        let durable = self.head_seq() as i64;
        let rows = st
            .query_map(params![from_seq as i64, limit as i64, durable], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, prev, hash, body) = row.map_err(storage)?;
            // Not checked here: the verifier's job is to name what is wrong, so hand it the rows.
            out.push(to_entry(seq, prev, hash, body)?);
        }
        Ok(out)
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(
                "SELECT seq, hash, signature FROM checkpoints WHERE seq <= ?1 ORDER BY seq",
            )
            .map_err(storage)?;
        let durable = self.head_seq() as i64;
        let rows = st
            .query_map([durable], |r| {
                Ok(Checkpoint {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    signature: r.get(2)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn stats(&self) -> Result<StoreStats, Error> {
        // Counters, not counts: with millions of rows a `COUNT(*)` took seconds. The log is
        // append-only with one audit entry per event, so its head is the event count; the writer
        // keeps the pending counts as it changes the rows (schema migration 3).
        Ok(StoreStats {
            events: self.head_seq(),
            commits: self.shared.commits.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            timers: self.shared.pending_timers.load(Ordering::Relaxed),
            outbox: self.shared.pending_outbox.load(Ordering::Relaxed),
        })
    }
}

/// Opens the write-ahead log for the sync thread. SQLite created it when the store was opened in
/// WAL mode, and keeps it (reset, never deleted or truncated) while any connection is open. The
/// directory is synced once, so that the log's own name survives a power loss (SQLite did this at
/// its first sync of a new log when it synced the log itself).
fn open_wal(dir: &Path, db: &Path) -> Result<File, Error> {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let wal = std::fs::OpenOptions::new()
        .read(true)
        .open(&name)
        .map_err(|e| Error::Unavailable(format!("{}: {e}", Path::new(&name).display())))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Unavailable(format!("{}: {e}", dir.display())))?;
    Ok(wal)
}

/// Maps a database error to the store's error, naming corruption as such.
pub(crate) fn storage(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            Error::Corrupt {
                location: "database file".into(),
                detail: e.to_string(),
            }
        }
        _ => Error::Storage(e.to_string()),
    }
}

/// The checksum stored beside a blob: the first 16 bytes of its SHA-256.
pub(crate) fn checksum(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes)[..16].to_vec()
}

fn verify_sum(bytes: &[u8], sum: &[u8], location: impl FnOnce() -> String) -> Result<(), Error> {
    if checksum(bytes) == sum {
        Ok(())
    } else {
        Err(Error::Corrupt {
            location: location(),
            detail: "checksum mismatch".into(),
        })
    }
}

fn to_entry(seq: i64, prev: Vec<u8>, hash: Vec<u8>, bytes: Vec<u8>) -> Result<Entry, Error> {
    let bad = |what: &str| Error::Corrupt {
        location: format!("audit entry {seq}"),
        detail: format!("{what} is not 32 bytes"),
    };
    Ok(Entry {
        seq: seq as u64,
        prev_hash: prev.try_into().map_err(|_| bad("prev_hash"))?,
        hash: hash.try_into().map_err(|_| bad("hash"))?,
        bytes,
    })
}

/// Re-verifies the last entries of the chain and returns its head.
fn verify_tail(conn: &Connection, tail_entries: u64) -> Result<Head, Error> {
    let last: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(storage)?;
    if last == 0 {
        return Ok(Head::default());
    }
    if tail_entries == 0 {
        let hash: Vec<u8> = conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [last], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        let hash = hash.try_into().map_err(|_| Error::Corrupt {
            location: format!("audit entry {last}"),
            detail: "hash is not 32 bytes".into(),
        })?;
        return Ok(Head {
            seq: last as u64,
            hash,
        });
    }
    let from = (last as u64)
        .saturating_sub(tail_entries.saturating_sub(1))
        .max(1);
    let mut st = conn
        .prepare("SELECT seq, prev_hash, hash, body FROM events WHERE seq >= ?1 ORDER BY seq")
        .map_err(storage)?;
    let rows = st
        .query_map([from as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(storage)?;
    let mut previous: Option<Entry> = None;
    for row in rows {
        let (seq, prev, hash, body) = row.map_err(storage)?;
        let e = to_entry(seq, prev, hash, body)?;
        check_entry(&e)?;
        if let Some(p) = &previous {
            if e.seq != p.seq + 1 || e.prev_hash != p.hash {
                return Err(Error::Corrupt {
                    location: format!("audit entry {}", e.seq),
                    detail: "does not follow the entry before it".into(),
                });
            }
        }
        previous = Some(e);
    }
    match previous {
        Some(e) if e.seq == last as u64 => Ok(Head {
            seq: e.seq,
            hash: e.hash,
        }),
        _ => Err(Error::Corrupt {
            location: format!("audit entry {last}"),
            detail: "the tail of the log is unreadable".into(),
        }),
    }
}
