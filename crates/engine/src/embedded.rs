//! The embedded store the engine runs on: the SQLite store (the default) or the log-structured
//! store (`StoreKind::Log`, being built: see docs/store-log.md). A directory holds one kind; the
//! engine refuses to open a directory with the other kind in it.

use std::path::Path;

use marketgov_audit::Entry;
use marketgov_store::{
    Ack, Checkpoint, Commit, Error, IdempotencyRecord, OutboxRow, Store, StoreStats, StreamLoad,
    TimerRow, VersionedTable,
};
use marketgov_store_log::LogStore;
use marketgov_store_sqlite::SqliteStore;

/// Which embedded store a new data directory gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// SQLite in WAL mode (`marketgov.db`).
    #[default]
    Sqlite,
    /// Append-only segments (`log/`), indexes in memory.
    Log,
}

impl StoreKind {
    /// As the command line and the configuration file spell it.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Log => "log",
        }
    }
}

/// One of the embedded stores.
#[derive(Debug)]
pub enum EmbeddedStore {
    /// The SQLite store.
    Sqlite(SqliteStore),
    /// The log-structured store.
    Log(LogStore),
}

/// The kind of store already in `dir`, if any.
pub fn kind_in(dir: &Path) -> Option<StoreKind> {
    if dir.join("marketgov.db").exists() {
        Some(StoreKind::Sqlite)
    } else if dir.join("log").is_dir() {
        Some(StoreKind::Log)
    } else {
        None
    }
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            EmbeddedStore::Sqlite($s) => $e,
            EmbeddedStore::Log($s) => $e,
        }
    };
}

impl EmbeddedStore {
    /// The store's size on disk, in bytes.
    pub fn bytes_on_disk(&self) -> u64 {
        both!(self, s => s.bytes_on_disk())
    }

    /// The last durable audit sequence number.
    pub fn head_seq(&self) -> u64 {
        both!(self, s => s.head_seq())
    }

    /// Why the store stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        both!(self, s => s.stopped())
    }

    /// Bytes of a torn final batch the log-structured store cut off when it opened (0: none,
    /// and always 0 for SQLite, whose own recovery reports nothing of the kind).
    pub fn cut_on_open(&self) -> u64 {
        match self {
            Self::Sqlite(_) => 0,
            Self::Log(s) => s.cut_on_open(),
        }
    }

    /// How the log-structured store found its index when it opened: `None` for SQLite.
    pub fn open_path(&self) -> Option<marketgov_store_log::OpenPath> {
        match self {
            Self::Sqlite(_) => None,
            Self::Log(s) => Some(s.open_path().clone()),
        }
    }

    /// What the log-structured store's index holds in memory, by part (`None` for SQLite, whose
    /// indexes are on disk and whose page cache is bounded by its own setting).
    pub fn index_memory(&self) -> Option<marketgov_store_log::IndexMemory> {
        match self {
            Self::Sqlite(_) => None,
            Self::Log(s) => Some(s.index_memory()),
        }
    }

    /// The log-structured store's segments started from a prepared file, and started as
    /// ordinary files because theirs was not ready, since the open (`None` for SQLite).
    pub fn prepared_segments(&self) -> Option<(u64, u64)> {
        match self {
            Self::Sqlite(_) => None,
            Self::Log(s) => Some(s.prepared_segments()),
        }
    }

    /// The log-structured store's batches written with `O_DIRECT` and through the page cache
    /// since the open (`None` for SQLite).
    pub fn batches_written(&self) -> Option<(u64, u64)> {
        match self {
            Self::Sqlite(_) => None,
            Self::Log(s) => Some(s.batches_written()),
        }
    }
}

impl Store for EmbeddedStore {
    fn commit(&self, commit: Commit) -> Result<Ack, Error> {
        both!(self, s => s.commit(commit))
    }
    fn load_stream(&self, stream: &str) -> Result<StreamLoad, Error> {
        both!(self, s => s.load_stream(stream))
    }
    fn idempotency(&self, tenant: &str, key: &str) -> Result<Option<IdempotencyRecord>, Error> {
        both!(self, s => s.idempotency(tenant, key))
    }
    fn idempotency_keys(
        &self,
        after: &(String, String),
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        both!(self, s => s.idempotency_keys(after, limit))
    }
    fn due_timers(&self, until_ms: i64, limit: usize) -> Result<Vec<TimerRow>, Error> {
        both!(self, s => s.due_timers(until_ms, limit))
    }
    fn ready_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, Error> {
        both!(self, s => s.ready_outbox(now_ms, limit))
    }
    fn versioned(&self, table: VersionedTable, key: &str) -> Result<Option<(u64, Vec<u8>)>, Error> {
        both!(self, s => s.versioned(table, key))
    }
    fn versioned_list(
        &self,
        table: VersionedTable,
        prefix: &str,
        after_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, Error> {
        both!(self, s => s.versioned_list(table, prefix, after_key, limit))
    }
    fn streams(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>, Error> {
        both!(self, s => s.streams(prefix, after, limit))
    }
    fn stream_history(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, Error> {
        both!(self, s => s.stream_history(stream, after_version, limit))
    }
    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        both!(self, s => s.audit_entries(from_seq, limit))
    }
    fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        both!(self, s => s.checkpoints())
    }
    fn stats(&self) -> Result<StoreStats, Error> {
        both!(self, s => s.stats())
    }
    fn absent_keys_are_cheap(&self) -> bool {
        both!(self, s => s.absent_keys_are_cheap())
    }
}
