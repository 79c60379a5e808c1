//! # marketgov-store
//!
//! The storage contract. A backend keeps the event log (the source of truth, and the audit hash
//! chain: one entry per committed event), stream snapshots, idempotency records, durable timers,
//! the outbox, agent sequence trackers, workflow cases, inventory, the review queue and signed
//! checkpoints.
//!
//! **What it owns:** the shape of one atomic [`Commit`] and of what is read back, and the
//! [`Store`] trait. **What it must not know:** what the bytes mean (the engine serializes), HTTP,
//! or any particular database. Every write of one commit lands in one transaction or none does;
//! a commit's acknowledgement is sent only after the transaction is synced to stable storage.

use std::fmt;

pub mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod filter;
pub mod transient;

pub use marketgov_audit::{Checkpoint, Entry, Hash};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store refused more work: its commit queue is full. Retry later.
    #[error("store overloaded: the commit queue holds {queued} commits")]
    Overloaded {
        /// Commits waiting.
        queued: usize,
    },
    /// The writer stopped after a failed write or sync; nothing more is accepted until the
    /// process restarts and recovers from what is durable (fail-stop).
    #[error("store stopped after a failure: {reason}")]
    Stopped {
        /// What failed.
        reason: String,
    },
    /// A write or read failed at the database.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored data does not match its checksum or hash chain: it was corrupted or tampered with.
    #[error("corrupt data at {location}: {detail}")]
    Corrupt {
        /// Which record.
        location: String,
        /// What does not match.
        detail: String,
    },
    /// A write conflicts with what is stored (a stream version taken, a case changed meanwhile).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A setting that weakens durability was asked for without being explicitly allowed.
    #[error("unsafe setting refused: {0}")]
    UnsafeSetting(String),
    /// The data directory is in use by another process, or unusable.
    #[error("data directory unavailable: {0}")]
    Unavailable(String),
    /// The stored schema is newer than this release understands.
    #[error("stored schema version {found} is newer than the supported {supported}")]
    SchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest version this release knows.
        supported: u32,
    },
}

/// One decided event, appended to a stream and to the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWrite {
    /// The stream (`customer:<tenant>/<id>`, `product:<tenant>/<sku>`, ...).
    pub stream: String,
    /// The stream's version after this event (1 for its first). Unique per stream: a taken
    /// version is a conflict, which is how several writers keep one writer per stream.
    pub stream_version: u64,
    /// The event's id.
    pub event_id: String,
    /// When it was decided, ms since the epoch.
    pub at_ms: i64,
    /// The event bytes, exactly as they will be hashed and stored.
    pub body: Vec<u8>,
}

/// A snapshot of a stream's state at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The version it reflects.
    pub version: u64,
    /// The serialized state.
    pub body: Vec<u8>,
}

/// A remembered response for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The tenant the key belongs to.
    pub tenant: String,
    /// The key.
    pub key: String,
    /// What operation it was used for.
    pub operation: String,
    /// A fingerprint of the request content.
    pub fingerprint: Hash,
    /// The response first given.
    pub response: Vec<u8>,
    /// When it was stored, ms since the epoch (for the retention window).
    pub created_at_ms: i64,
}

/// Which idempotency records a sweep removes: those created before `before_ms`, then the oldest
/// beyond `keep_max`, at most `limit` in one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencySweep {
    /// Records created before this are expired.
    pub before_ms: i64,
    /// Records kept at most.
    pub keep_max: u64,
    /// Records removed per commit at most (keeps one commit short).
    pub limit: u64,
}

/// A timer change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerWrite {
    /// Set or move the stream's timer of this kind.
    Set {
        /// The stream.
        stream: String,
        /// The timer kind.
        kind: String,
        /// Its deadline, ms since the epoch.
        due_at_ms: i64,
    },
    /// Remove it (fired or cancelled).
    Cancel {
        /// The stream.
        stream: String,
        /// The timer kind.
        kind: String,
    },
}

/// A pending timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRow {
    /// The stream.
    pub stream: String,
    /// The timer kind.
    pub kind: String,
    /// Its deadline, ms since the epoch.
    pub due_at_ms: i64,
}

/// An effect to carry out, written with the decision that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxWrite {
    /// The effect's idempotency key (unique: the same effect is never queued twice).
    pub effect_key: String,
    /// The stream whose decision asked for it.
    pub stream: String,
    /// Which connector carries it out.
    pub connector: String,
    /// The effect, serialized.
    pub body: Vec<u8>,
    /// When it may first be attempted, ms since the epoch.
    pub not_before_ms: i64,
}

/// An outbox row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The effect's idempotency key.
    pub effect_key: String,
    /// The stream.
    pub stream: String,
    /// The connector.
    pub connector: String,
    /// The effect.
    pub body: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it may next be attempted.
    pub next_attempt_ms: i64,
}

/// What happened to an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxUpdate {
    /// Applied: remove it from the queue (kept in the log of done effects).
    Done {
        /// The effect's key.
        effect_key: String,
    },
    /// Failed; try again later.
    Retry {
        /// The effect's key.
        effect_key: String,
        /// Attempts made so far.
        attempts: u32,
        /// When to try again.
        next_attempt_ms: i64,
        /// What went wrong.
        error: String,
    },
    /// Given up after its retry bound.
    Dead {
        /// The effect's key.
        effect_key: String,
        /// What went wrong last.
        error: String,
    },
}

/// An upsert of a keyed record with an optimistic version: written only if the stored version is
/// `expected_version` (`0`: the key must not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedWrite {
    /// The key.
    pub key: String,
    /// The version the writer read.
    pub expected_version: u64,
    /// The new version.
    pub version: u64,
    /// The serialized record.
    pub body: Vec<u8>,
}

/// Everything one commit writes, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// Events to append (each becomes an audit entry).
    pub events: Vec<EventWrite>,
    /// Snapshots to replace.
    pub snapshots: Vec<Snapshot>,
    /// Idempotency records to insert (a key already taken fails this commit only).
    pub idempotency: Vec<IdempotencyRecord>,
    /// Expired idempotency records `(tenant, key)` to remove first (their window has passed).
    pub idempotency_expired: Vec<(String, String)>,
    /// Removes old idempotency records, keeping the table bounded.
    pub idempotency_sweep: Option<IdempotencySweep>,
    /// Timer changes.
    pub timers: Vec<TimerWrite>,
    /// Effects to queue.
    pub outbox: Vec<OutboxWrite>,
    /// Outcomes of effects.
    pub outbox_updates: Vec<OutboxUpdate>,
    /// Agent sequence trackers (`agent/region` -> last accepted), versioned by the last value.
    pub sequences: Vec<VersionedWrite>,
    /// Workflow cases.
    pub cases: Vec<VersionedWrite>,
    /// Inventory records.
    pub inventory: Vec<VersionedWrite>,
    /// Review-queue items (key: the parked event's id).
    pub review: Vec<VersionedWrite>,
    /// API keys (key: the SHA-256 of the API key).
    pub api_keys: Vec<VersionedWrite>,
}

impl Commit {
    /// Whether the commit writes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Commit::default()
    }

    /// The versioned writes, table by table.
    pub fn versioned_writes(&self) -> [(VersionedTable, &[VersionedWrite]); 5] {
        [
            (VersionedTable::Sequences, &self.sequences),
            (VersionedTable::Cases, &self.cases),
            (VersionedTable::Inventory, &self.inventory),
            (VersionedTable::Review, &self.review),
            (VersionedTable::ApiKeys, &self.api_keys),
        ]
    }
}

/// What a durable commit answers: the audit receipt of each event, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// One per event: `(seq, prev_hash, hash)`.
    pub entries: Vec<(u64, Hash, Hash)>,
}

/// The acknowledgement of a commit, sent once its batch is synced (or failed).
pub type Ack = tokio::sync::oneshot::Receiver<Result<Receipt, Error>>;

/// A stream's stored state: the latest snapshot and the events after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamLoad {
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot, in version order: `(version, body)`.
    pub events: Vec<(u64, Vec<u8>)>,
}

/// Counts for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Events in the log.
    pub events: u64,
    /// Commits made.
    pub commits: u64,
    /// Transactions (batches) made; `commits / batches` is the group-commit factor.
    pub batches: u64,
    /// Pending timers.
    pub timers: u64,
    /// Effects queued and not done.
    pub outbox: u64,
}

/// A storage backend.
pub trait Store: Send + Sync + fmt::Debug {
    /// Queues a commit. The returned [`Ack`] resolves once the commit's batch is synced, or fails;
    /// a full queue is refused at once with [`Error::Overloaded`].
    fn commit(&self, commit: Commit) -> Result<Ack, Error>;

    /// Loads a stream from its latest snapshot.
    fn load_stream(&self, stream: &str) -> Result<StreamLoad, Error>;

    /// The idempotency record of `(tenant, key)`, if kept.
    fn idempotency(&self, tenant: &str, key: &str) -> Result<Option<IdempotencyRecord>, Error>;

    /// The `(tenant, key)` of stored idempotency records after `after` in key order (`("", "")`:
    /// from the start), at most `limit`. A record stored after a scan began may be missed;
    /// callers that need every key record new ones themselves.
    fn idempotency_keys(
        &self,
        after: &(String, String),
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error>;

    /// Timers due at or before `until_ms`, earliest first, at most `limit`.
    fn due_timers(&self, until_ms: i64, limit: usize) -> Result<Vec<TimerRow>, Error>;

    /// Effects ready at `now_ms`, oldest first, at most `limit`.
    fn ready_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, Error>;

    /// A versioned record (`sequences`, `cases`, `inventory`, `review`) by key.
    fn versioned(&self, table: VersionedTable, key: &str) -> Result<Option<(u64, Vec<u8>)>, Error>;

    /// Versioned records of `table` whose key starts with `prefix`, after `after_key`, in key
    /// order, at most `limit`: `(key, version, body)`.
    fn versioned_list(
        &self,
        table: VersionedTable,
        prefix: &str,
        after_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, Error>;

    /// Streams whose name starts with `prefix`, after `after`, in order, at most `limit`.
    fn streams(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>, Error>;

    /// A stream's logged events after `after_version`, at most `limit`, each as its audit entry
    /// with its stream version: `(stream_version, entry)`.
    fn stream_history(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, Error>;

    /// Audit entries from `from_seq`, at most `limit`, in order.
    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<Entry>, Error>;

    /// Every stored checkpoint, in order.
    fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error>;

    /// Counts.
    fn stats(&self) -> Result<StoreStats, Error>;

    /// Whether the store itself answers lookups of keys and streams it does not hold without
    /// reading the disk (so a caller needs no filter of its own in front of it).
    fn absent_keys_are_cheap(&self) -> bool {
        false
    }
}

/// The keyed, versioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionedTable {
    /// Agent sequence trackers.
    Sequences,
    /// Workflow cases.
    Cases,
    /// Inventory.
    Inventory,
    /// The review queue.
    Review,
    /// API keys, by the SHA-256 of the key (never the key itself).
    ApiKeys,
}

impl VersionedTable {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sequences => "sequences",
            Self::Cases => "cases",
            Self::Inventory => "inventory",
            Self::Review => "review_queue",
            Self::ApiKeys => "api_keys",
        }
    }
}
