//! # marketgov-engine
//!
//! The durable engine: customers hashed onto shards (one writer per stream, many streams in
//! parallel), the core deciding, the store committing, and only then the caller acknowledged.
//!
//! **What it owns:** the commit pipeline (decide, log, snapshot, idempotency, timers and outbox in
//! one commit), shards and their supervision, stream loading and replay, idempotency rules
//! (SPEC 1.4), the injected clock, the audit key, and the [`App`] API every front end calls.
//! **What it must not know:** HTTP, MCP, command lines, or which database the store uses beyond
//! opening the embedded one.

mod agents;
mod apikeys;
mod app;
mod clock;
mod effects;
mod embedded;
mod keys;
mod known_keys;
mod latency;
mod queries;
mod recent_replies;
mod shard;
mod stream;
mod timers;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

pub use agents::{AgentReply, CASE_CONFLICT_RETRIES_MAX};
pub use apikeys::{constant_time_eq, key_hash, new_key};
pub use app::{verify_store, App, ReceiptView, Reply};
pub use clock::{Clock, ManualClock, SystemClock};
pub use effects::{
    Outcome as SandboxOutcome, Sandbox, EFFECTS_PER_ROUND_MAX, EFFECT_ATTEMPTS_MAX,
    SANDBOX_LEDGER_FILE,
};
pub use embedded::{kind_in as embedded_kind_in, EmbeddedStore, StoreKind};
pub use keys::{load_or_create as audit_signer, AUDIT_KEY_FILE};
pub use known_keys::{KnownKeysStats, KNOWN_KEYS_BYTES_MAX};
pub use latency::{Histogram, SharedHistogram, LATENCY_MICROS_MAX};
pub use queries::{Page, PAGE_LIMIT_MAX};
pub use recent_replies::RECENT_REPLIES_MAX;
pub use stream::LoggedDecision;
pub use timers::{FIRINGS_PER_CALL_MAX, TIMERS_PER_ROUND_MAX};
pub use webhook::{signature as webhook_signature, GcpProcurement, Webhook};

use marketgov_core::InputError;

/// Errors of the engine, each a distinct condition a front end maps to a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is invalid; nothing was stored.
    #[error("invalid input: {0}")]
    Invalid(#[from] InputError),
    /// The idempotency key was used before with other content or another operation.
    #[error("idempotency key `{key}` was used with other content or another operation")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// A request with the same idempotency key is being processed.
    #[error("a request with idempotency key `{key}` is in progress")]
    KeyInFlight {
        /// The key.
        key: String,
    },
    /// The idempotency key is empty or too long.
    #[error("idempotency key must be 1 to 255 bytes")]
    BadKey,
    /// A queue is full: retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Deciding the event panicked; the shard was restarted from the store and the event parked
    /// for review.
    #[error("deciding event {event_id} failed; it is parked for review")]
    DecisionPanicked {
        /// The parked event's id.
        event_id: String,
    },
    /// Storage failed; nothing of this request is remembered, a retry may succeed.
    #[error("storage: {0}")]
    Store(#[from] marketgov_store::Error),
    /// The engine is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Setting up the engine failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A stored record could not be decoded or replayed.
    #[error("stored data at {location} cannot be used: {detail}")]
    Replay {
        /// Which record.
        location: String,
        /// Why.
        detail: String,
    },
}

/// A hook run before each decision: a test seam for injecting panics into one customer's events.
pub type DecideHook = Arc<dyn Fn(&marketgov_core::CustomerEvent) + Send + Sync>;

/// A hook run before each work item of a shard: a test seam for supervision.
pub type WorkHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Options of the engine.
#[derive(Clone)]
pub struct EngineOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Shards (single-writer actors) customers are hashed onto.
    pub shards: usize,
    /// Work items waiting per shard before new ones are refused.
    pub shard_queue_max: usize,
    /// Streams kept in memory, all shards together (each shard keeps its share); beyond it a
    /// shard drops its least recently loaded stream, which reloads from its snapshot on demand.
    /// This, not the number of customers known, bounds the engine's memory.
    pub streams_in_memory_max: usize,
    /// Commits a shard keeps in flight (sent to the store, not yet synced) at most; each is for
    /// a different stream. More lets one sync carry more decisions.
    pub shard_commits_in_flight_max: usize,
    /// A snapshot every this many logged events per stream.
    pub snapshot_every_events: u64,
    /// A customer dropped from memory with a timer pending and at least this many events
    /// logged since its newest snapshot gets a snapshot as it is dropped (0: never): its timer
    /// loads it again, and a load reads the snapshot instead of replaying those events.
    pub snapshot_on_eviction_events: u64,
    /// How long idempotency keys are kept, in milliseconds (default 24 h).
    pub idempotency_window_ms: i64,
    /// Idempotency keys kept at most; the oldest go first beyond it.
    pub idempotency_keys_max: u64,
    /// Effects one tenant may start per second (its token bucket's rate).
    pub tenant_effects_per_second: u32,
    /// The token bucket's capacity (burst).
    pub tenant_effects_burst: u32,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Test seam: runs before each customer decision.
    pub decide_hook: Option<DecideHook>,
    /// Test seam: runs in the shard before each work item, outside the decision's panic guard,
    /// with the item's customer id, SKU or stream.
    pub work_hook: Option<WorkHook>,
    /// A signed audit checkpoint every this many entries.
    pub checkpoint_every_entries: u64,
    /// Where effects go: the in-process `sandbox` (default) or a `webhook`.
    pub webhook: Option<Webhook>,
    /// Where answers to Google Cloud Marketplace go (`None`: recorded by the sandbox).
    pub gcp_procurement: Option<GcpProcurement>,
    /// Test seam: makes a chosen store batch fail at its sync (SQLite store).
    pub store_fault: Option<Arc<marketgov_store_sqlite::FaultInjector>>,
    /// The embedded store of a new data directory (an existing one keeps its own).
    pub store_kind: StoreKind,
    /// The log-structured store writes batches past the page cache (its
    /// `Options::direct_writes`; off by default).
    pub log_direct_writes: bool,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("data_dir", &self.data_dir)
            .field("shards", &self.shards)
            .field("shard_queue_max", &self.shard_queue_max)
            .field("snapshot_every_events", &self.snapshot_every_events)
            .field(
                "snapshot_on_eviction_events",
                &self.snapshot_on_eviction_events,
            )
            .field("idempotency_window_ms", &self.idempotency_window_ms)
            .finish_non_exhaustive()
    }
}

impl EngineOptions {
    /// Defaults for `data_dir` on the system clock.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shards: 64,
            shard_queue_max: 1024,
            streams_in_memory_max: 20_000,
            shard_commits_in_flight_max: 64,
            snapshot_every_events: 64,
            snapshot_on_eviction_events: 4,
            idempotency_window_ms: 24 * 3600 * 1000,
            idempotency_keys_max: 10_000_000,
            tenant_effects_per_second: 10_000,
            tenant_effects_burst: 20_000,
            clock: Arc::new(SystemClock),
            decide_hook: None,
            work_hook: None,
            checkpoint_every_entries: 1000,
            store_fault: None,
            store_kind: StoreKind::default(),
            log_direct_writes: false,
            webhook: None,
            gcp_procurement: None,
        }
    }
}
