//! The `App`: the one API every front end calls.

use std::collections::HashMap;

use marketgov_store::transient::TransientMap;
use std::sync::{Arc, Mutex, RwLock};

use marketgov_audit::{Hash, Report, Verifier};
use marketgov_core::governors::product_catalog::Product;
use marketgov_core::ids::Sku;
use marketgov_core::orchestrator::{EventContext, EventStatus};
use marketgov_core::{CatalogCommand, Customer, CustomerEvent};
use marketgov_store::Store;
use marketgov_store_sqlite::{Options as StoreOptions, SqliteStore};

use crate::embedded::{EmbeddedStore, StoreKind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::known_keys::{
    customer_stream_page, idempotency_key_page, KnownKeys, ScanCursor, SCAN_PAGE_KEYS,
};
use crate::shard::{customer_stream, product_stream, KeyClaim, Shard, Work};
use crate::stream::rebuild;
use crate::{keys, EngineOptions, Error};

/// Longest idempotency key, in bytes (SPEC 1.4).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Idempotency records one sweep removes at most.
pub const IDEMPOTENCY_SWEEP_BATCH_MAX: u64 = 10_000;
/// Audit entries read per page while verifying.
const VERIFY_PAGE_ENTRIES: usize = 4096;

/// An answer to an event or command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// How it ended.
    pub status: EventStatus,
    /// Whether this is the stored answer to an earlier request with the same key.
    pub replayed: bool,
    /// The decision's result as one JSON object, serialized once from the decision and shared
    /// (not copied) with the answers kept for repeats.
    result: Arc<String>,
    /// Where the event sits in the hash chain: (seq, prev_hash, hash).
    receipt: Option<(u64, Hash, Hash)>,
}

/// An audit receipt: where the event sits in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptView {
    /// Position in the log.
    pub seq: u64,
    /// The entry's hash, hex.
    pub hash: String,
    /// The previous entry's hash, hex.
    pub prev_hash: String,
}

impl Reply {
    /// `result` is the decision's result as a JSON object.
    pub(crate) fn new(
        status: EventStatus,
        result: Arc<String>,
        receipt: Option<(u64, Hash, Hash)>,
        replayed: bool,
    ) -> Self {
        Self {
            status,
            replayed,
            result,
            receipt,
        }
    }

    /// The answer as sent on the wire: the result with its receipt added as a last member
    /// `receipt`. Written when asked for (an in-process caller reading only the status does
    /// not pay for it), in one allocation.
    pub fn json(&self) -> String {
        let result = self.result.as_str();
        match (self.receipt, result.trim_end().strip_suffix('}')) {
            (Some((seq, prev, hash)), Some(open)) => {
                // Written in place, in [`ReceiptView`]'s serialized form (a test compares them).
                let mut json = String::with_capacity(open.len() + 192);
                json.push_str(open);
                if !open.trim_end().ends_with('{') {
                    json.push(',');
                }
                json.push_str("\"receipt\":{\"seq\":");
                json.push_str(&seq.to_string());
                json.push_str(",\"hash\":\"");
                push_hex(&mut json, &hash);
                json.push_str("\",\"prev_hash\":\"");
                push_hex(&mut json, &prev);
                json.push_str("\"}}");
                json
            }
            _ => result.to_owned(),
        }
    }

    /// The decision's result as logged, without the receipt.
    pub fn result(&self) -> &str {
        &self.result
    }

    /// The result as a JSON value (parsed from [`Reply::json`]).
    pub fn body(&self) -> serde_json::Value {
        serde_json::from_str(&self.json()).unwrap_or(serde_json::Value::Null)
    }
}

/// The part of a logged decision ([`crate::LoggedDecision`]) a replay answers with.
#[derive(serde::Deserialize)]
struct LoggedReply<'a> {
    status: EventStatus,
    #[serde(borrow)]
    result: &'a serde_json::value::RawValue,
}

/// State every shard shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub store: Arc<EmbeddedStore>,
    pub sandbox: crate::Sandbox,
    pub options: EngineOptions,
    /// Products by (tenant, sku), as last committed.
    pub catalog: RwLock<HashMap<(String, Sku), Product>>,
    /// Event ids issued, to keep them unique within one instant.
    pub issued: std::sync::atomic::AtomicU64,
    pub node_nonce: u64,
    /// Breakers, bulkheads and rate limits of the outbox executor.
    pub limits: crate::effects::Limits,
    /// Shards restarted by their supervisor after a panic.
    pub shard_restarts: std::sync::atomic::AtomicU64,
    /// Snapshots written as customers were dropped from memory (`snapshot_on_eviction_events`).
    pub snapshots_on_eviction: std::sync::atomic::AtomicU64,
    /// Conflicts found since start.
    pub conflicts: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent inside the pure decision functions since start (compute).
    pub decide_nanos: std::sync::atomic::AtomicU64,
    /// Nanoseconds from taking a work item to answering it since start (compute + coordination).
    pub handle_nanos: std::sync::atomic::AtomicU64,
    /// From the core's decision to the store's acknowledgement of its sync, every commit of a
    /// customer event or catalog command since start (SPEC 5's decision-to-durable latency).
    pub decision_to_durable: crate::latency::SharedHistogram,
    /// Events refused or parked since start.
    pub refused: std::sync::atomic::AtomicU64,
    /// One outbox executor at a time per process.
    pub effects_running: tokio::sync::Mutex<()>,
    /// One timer round at a time per process.
    pub timers_running: tokio::sync::Mutex<()>,
    /// The idempotency keys the store holds, so a new key needs no read.
    pub known_keys: Arc<KnownKeys>,
    /// The customer streams the store holds (as `("", stream)`), so a new customer needs no read.
    pub known_streams: Arc<KnownKeys>,
    /// The newest durable keyed answers, so a prompt retry needs no store read.
    pub recent_replies: crate::recent_replies::RecentReplies,
}

impl Inner {
    /// The context of a new decision: a fresh event id and the clock's instant.
    pub fn context(&self) -> EventContext {
        let now = self.options.clock.now();
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        EventContext {
            event_id: event_id(now.as_millisecond(), self.node_nonce as u32, n),
            now,
        }
    }

    pub fn remember_product(&self, tenant: &str, product: Product) {
        if let Ok(mut catalog) = self.catalog.write() {
            catalog.insert((tenant.to_owned(), product.sku.clone()), product);
        }
    }

    /// A product, from memory or the store.
    pub fn product(&self, tenant: &str, sku: &Sku) -> Result<Option<Product>, Error> {
        let key = (tenant.to_owned(), sku.clone());
        if let Some(p) = self.catalog.read().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(Some(p));
        }
        let stream = product_stream(tenant, sku.as_str());
        let state = rebuild(&stream, self.store.load_stream(&stream)?)?;
        if let Some(p) = &state.product {
            self.remember_product(tenant, p.clone());
        }
        Ok(state.product)
    }
}

/// The engine.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<Inner>,
    shards: Arc<Vec<mpsc::Sender<Work>>>,
    in_flight: Arc<Mutex<TransientMap<(String, String), ()>>>,
}

/// Removes an in-flight key when the request ends, however it ends.
pub(crate) struct InFlight {
    map: Arc<Mutex<TransientMap<(String, String), ()>>>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.key);
        }
    }
}

impl App {
    /// Opens the engine on its data directory. Must be called inside a tokio runtime.
    pub fn open(options: EngineOptions) -> Result<Self, Error> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| Error::Setup(format!("{}: {e}", options.data_dir.display())))?;
        let signer = keys::load_or_create(&options.data_dir)?;
        let kind = crate::embedded::kind_in(&options.data_dir).unwrap_or(options.store_kind);
        let store = Arc::new(match kind {
            StoreKind::Sqlite => {
                let mut store_options = StoreOptions::new(&options.data_dir);
                store_options.signer = Some(signer);
                store_options.checkpoint_every_entries = options.checkpoint_every_entries;
                store_options.fault = options.store_fault.clone();
                EmbeddedStore::Sqlite(SqliteStore::open(store_options)?)
            }
            StoreKind::Log => {
                let mut store_options = marketgov_store_log::Options::new(&options.data_dir);
                store_options.signer = Some(signer);
                store_options.checkpoint_every_entries = options.checkpoint_every_entries;
                store_options.direct_writes = options.log_direct_writes;
                EmbeddedStore::Log(marketgov_store_log::LogStore::open(store_options)?)
            }
        });
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| Error::Setup(format!("no random source: {e}")))?;
        let sandbox = crate::Sandbox::open(&options.data_dir)?;
        // Created before any request can claim a key: see known_keys.rs for why that is exact.
        let known_keys = KnownKeys::for_store(
            &store,
            ScanCursor::default(),
            SCAN_PAGE_KEYS,
            idempotency_key_page::<EmbeddedStore>,
        );
        let known_streams = KnownKeys::for_store(
            &store,
            ScanCursor::default(),
            SCAN_PAGE_KEYS,
            customer_stream_page::<EmbeddedStore>,
        );
        let inner = Arc::new(Inner {
            store,
            sandbox,
            options: options.clone(),
            catalog: RwLock::new(HashMap::new()),
            issued: std::sync::atomic::AtomicU64::new(0),
            node_nonce: u64::from_le_bytes(nonce),
            limits: crate::effects::Limits::new(
                options.tenant_effects_per_second,
                options.tenant_effects_burst,
            ),
            shard_restarts: std::sync::atomic::AtomicU64::new(0),
            snapshots_on_eviction: std::sync::atomic::AtomicU64::new(0),
            conflicts: std::sync::atomic::AtomicU64::new(0),
            decide_nanos: std::sync::atomic::AtomicU64::new(0),
            handle_nanos: std::sync::atomic::AtomicU64::new(0),
            decision_to_durable: crate::latency::SharedHistogram::new(),
            refused: std::sync::atomic::AtomicU64::new(0),
            effects_running: tokio::sync::Mutex::new(()),
            timers_running: tokio::sync::Mutex::new(()),
            known_keys,
            known_streams,
            recent_replies: crate::recent_replies::RecentReplies::new(
                crate::recent_replies::RECENT_REPLIES_MAX
                    .min(usize::try_from(options.idempotency_keys_max).unwrap_or(usize::MAX)),
            ),
        });
        let mut shards = Vec::with_capacity(options.shards.max(1));
        for _ in 0..options.shards.max(1) {
            let (tx, rx) = mpsc::channel(options.shard_queue_max.max(1));
            tokio::spawn(Shard::supervise(inner.clone(), rx));
            shards.push(tx);
        }
        Ok(Self {
            inner,
            shards: Arc::new(shards),
            in_flight: Arc::new(Mutex::new(TransientMap::default())),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// `(decide, handle)` nanoseconds since start: time in the pure core versus time handling
    /// work items in total (deciding, logging, committing, waiting for the sync). Their ratio is
    /// the coordination/compute ratio of SPEC 3.4.
    pub fn timing_nanos(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.decide_nanos.load(Relaxed),
            self.inner.handle_nanos.load(Relaxed),
        )
    }

    /// Decision-to-durable latencies since start: from the core's decision to the store's
    /// acknowledgement that its commit is synced.
    pub fn decision_to_durable(&self) -> crate::Histogram {
        self.inner.decision_to_durable.snapshot()
    }

    /// The in-memory filters of stored idempotency keys and of stored customer streams.
    pub fn known_keys(&self) -> (crate::KnownKeysStats, crate::KnownKeysStats) {
        (
            self.inner.known_keys.stats(),
            self.inner.known_streams.stats(),
        )
    }

    /// Work items waiting in each shard's mailbox (not yet taken by the shard).
    pub fn mailbox_depths(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .collect()
    }

    /// Shards restarted by their supervisor after a panic, since start.
    pub fn shard_restarts(&self) -> u64 {
        self.inner
            .shard_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The injected clock.
    pub fn clock(&self) -> &dyn crate::Clock {
        self.inner.options.clock.as_ref()
    }

    /// The sandbox connector and its ledger.
    pub fn sandbox(&self) -> &crate::Sandbox {
        &self.inner.sandbox
    }

    /// The store (for front ends' queries and tests).
    pub fn store(&self) -> &EmbeddedStore {
        &self.inner.store
    }

    fn shard(&self, stream: &str) -> &mpsc::Sender<Work> {
        // FNV-1a: stable across processes, so a stream always lands on the same shard.
        let hash = stream.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    async fn send(&self, stream: &str, work: Work) -> Result<(), Error> {
        self.shard(stream).try_send(work).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Error::Overloaded(format!("the shard of {stream} has a full queue"))
            }
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        })
    }

    /// Decides one customer event. With a key, a repeat with the same content answers the first
    /// result marked as a replay; other content or another operation is [`Error::KeyReused`].
    pub async fn submit_event(
        &self,
        tenant: &str,
        key: Option<&str>,
        event: CustomerEvent,
    ) -> Result<Reply, Error> {
        event.validate()?;
        // Serialized once: the fingerprint and the log entry are made of the same bytes.
        let input_json = serde_json::to_vec(&event).map_err(|e| Error::Setup(e.to_string()))?;
        let (claim, _guard) = match self.claim(tenant, key, "events", &input_json)? {
            Claimed::Replay(reply) => return Ok(reply),
            Claimed::New(claim, guard) => (claim, guard),
            Claimed::None => (None, None),
        };
        let stream = customer_stream(tenant, event.customer_id.as_str());
        let (tx, rx) = oneshot::channel();
        self.send(
            &stream,
            Work::Customer {
                tenant: tenant.to_owned(),
                stream: stream.clone(),
                claim,
                event,
                input_json,
                reply: tx,
            },
        )
        .await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Decides one catalog command, with the same idempotency rules.
    pub async fn submit_catalog(
        &self,
        tenant: &str,
        key: Option<&str>,
        command: CatalogCommand,
    ) -> Result<Reply, Error> {
        command.validate()?;
        // Serialized once, as for events.
        let input_json = serde_json::to_vec(&command).map_err(|e| Error::Setup(e.to_string()))?;
        let (claim, _guard) = match self.claim(tenant, key, "catalog", &input_json)? {
            Claimed::Replay(reply) => return Ok(reply),
            Claimed::New(claim, guard) => (claim, guard),
            Claimed::None => (None, None),
        };
        let stream = product_stream(tenant, command.sku().as_str());
        let (tx, rx) = oneshot::channel();
        self.send(
            &stream,
            Work::Catalog {
                tenant: tenant.to_owned(),
                stream: stream.clone(),
                claim,
                command,
                input_json,
                reply: tx,
            },
        )
        .await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Applies the idempotency rules before any work (SPEC 1.4).
    fn claim(
        &self,
        tenant: &str,
        key: Option<&str>,
        operation: &'static str,
        input_json: &[u8],
    ) -> Result<Claimed, Error> {
        let Some(key) = key else {
            return Ok(Claimed::None);
        };
        let fingerprint = fingerprint_of(operation, input_json);
        // A repeat soon after the first request is answered from memory: the same text, under the
        // same rules as the stored record (see recent_replies.rs); otherwise the store decides.
        if let Some(reply) = self.inner.recent_replies.replay(
            tenant,
            key,
            operation,
            &fingerprint,
            self.inner.options.clock.now().as_millisecond(),
            self.inner.options.idempotency_window_ms,
        )? {
            return Ok(Claimed::Replay(reply));
        }
        match self.claim_raw(tenant, key, operation, fingerprint)? {
            Claim::Seen(response) => Ok(Claimed::Replay(self.replay(&response)?)),
            Claim::New(claim, guard) => Ok(Claimed::New(Some(claim), Some(guard))),
        }
    }

    /// Reserves `key` for one request: [`Claim::Seen`] with the stored response when it was used
    /// for the same operation and content within the window; [`Error::KeyReused`] when used for
    /// something else; [`Error::KeyInFlight`] while another request holds it.
    pub(crate) fn claim_raw(
        &self,
        tenant: &str,
        key: &str,
        operation: &'static str,
        fingerprint: [u8; 32],
    ) -> Result<Claim, Error> {
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(Error::BadKey);
        }
        let map_key = (tenant.to_owned(), key.to_owned());
        {
            let mut map = self
                .in_flight
                .lock()
                .map_err(|_| Error::Setup("in-flight map poisoned".into()))?;
            if map.contains_key(&map_key) {
                return Err(Error::KeyInFlight {
                    key: key.to_owned(),
                });
            }
            map.insert(map_key.clone(), ());
        }
        let guard = InFlight {
            map: self.in_flight.clone(),
            key: map_key,
        };
        let now_ms = self.inner.options.clock.now().as_millisecond();
        let mut replaces_expired = false;
        let stored = if self.inner.known_keys.may_contain(tenant, key) {
            self.inner.store.idempotency(tenant, key)?
        } else {
            None
        };
        if let Some(record) = stored {
            if now_ms - record.created_at_ms >= self.inner.options.idempotency_window_ms {
                replaces_expired = true;
            } else if record.operation != operation || record.fingerprint != fingerprint {
                return Err(Error::KeyReused {
                    key: key.to_owned(),
                });
            } else {
                return Ok(Claim::Seen(record.response));
            }
        }
        // Known from here on, before its record can be committed.
        self.inner.known_keys.insert(tenant, key);
        Ok(Claim::New(
            KeyClaim {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                operation,
                fingerprint,
                replaces_expired,
            },
            guard,
        ))
    }

    /// Sends an envelope to its stream's shard.
    pub(crate) async fn send_agent(
        &self,
        stream: &str,
        tenant: &str,
        claim: KeyClaim,
        envelope: marketgov_core::cases::Envelope,
        reply: oneshot::Sender<Result<crate::agents::AgentReply, Error>>,
    ) -> Result<(), Error> {
        self.send(
            stream,
            Work::Agent {
                tenant: tenant.to_owned(),
                claim,
                envelope,
                reply,
            },
        )
        .await
    }

    fn replay(&self, response: &[u8]) -> Result<Reply, Error> {
        let bad = |detail: String| Error::Replay {
            location: "idempotency record".into(),
            detail,
        };
        let stored: serde_json::Value =
            serde_json::from_slice(response).map_err(|e| bad(e.to_string()))?;
        let stream = stored["stream"].as_str().unwrap_or_default();
        let version = stored["stream_version"].as_u64().unwrap_or_default();
        // The record points at the logged event; the result is read from the log, not copied.
        let Some((_, entry)) = self
            .inner
            .store
            .stream_history(stream, version.saturating_sub(1), 1)?
            .into_iter()
            .next()
        else {
            return Err(bad(format!("{stream} event {version} is missing")));
        };
        // Only the status and the result's text are needed: the result is answered as logged,
        // byte for byte, without building a JSON tree of the whole entry.
        let logged: LoggedReply<'_> =
            serde_json::from_slice(&entry.bytes).map_err(|e| bad(e.to_string()))?;
        let receipt = Some((entry.seq, entry.prev_hash, entry.hash));
        Ok(Reply::new(
            logged.status,
            Arc::new(logged.result.get().to_owned()),
            receipt,
            true,
        ))
    }

    /// Removes expired idempotency records, and the oldest beyond the bound, at most
    /// [`IDEMPOTENCY_SWEEP_BATCH_MAX`] per call. Run periodically by the background loop.
    pub async fn sweep_idempotency(&self) -> Result<(), Error> {
        let now_ms = self.inner.options.clock.now().as_millisecond();
        let sweep = marketgov_store::IdempotencySweep {
            before_ms: now_ms.saturating_sub(self.inner.options.idempotency_window_ms),
            keep_max: self.inner.options.idempotency_keys_max,
            limit: IDEMPOTENCY_SWEEP_BATCH_MAX,
        };
        let ack = self.inner.store.commit(marketgov_store::Commit {
            idempotency_sweep: Some(sweep),
            ..Default::default()
        })?;
        ack.await.map_err(|_| Error::ShuttingDown)??;
        Ok(())
    }

    /// A customer's committed state (`None`: unknown).
    pub async fn customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<Option<Customer>, Error> {
        let stream = customer_stream(tenant, customer_id);
        let (tx, rx) = oneshot::channel();
        self.send(
            &stream,
            Work::Read {
                stream: stream.clone(),
                reply: tx,
            },
        )
        .await?;
        Ok(rx.await.map_err(|_| Error::ShuttingDown)??.customer)
    }

    /// A product's committed state.
    pub fn product(&self, tenant: &str, sku: &Sku) -> Result<Option<Product>, Error> {
        self.inner.product(tenant, sku)
    }

    /// Verifies the whole audit log against the signed checkpoints.
    pub fn audit_verify(&self) -> Result<Report, Error> {
        verify_store(
            self.inner.store.as_ref(),
            &keys::load_or_create(&self.inner.options.data_dir)?.public_key(),
        )
    }

    /// The audit public key, hex.
    pub fn audit_public_key(&self) -> Result<String, Error> {
        Ok(keys::load_or_create(&self.inner.options.data_dir)?.public_key_hex())
    }
}

/// The outcome of reserving an idempotency key.
pub(crate) enum Claim {
    /// Used before for the same operation and content: the stored response.
    Seen(Vec<u8>),
    /// Free: the claim to write with the decision, and the in-flight guard.
    New(KeyClaim, InFlight),
}

enum Claimed {
    None,
    Replay(Reply),
    New(Option<KeyClaim>, Option<InFlight>),
}

/// Verifies a store's audit log, page by page.
pub fn verify_store(store: &dyn Store, public_key: &[u8; 32]) -> Result<Report, Error> {
    let checkpoints = store.checkpoints()?;
    let mut verifier = Verifier::new(public_key, checkpoints.iter().map(|c| c.seq))
        .map_err(|e| Error::Setup(e.to_string()))?;
    let mut from = 1;
    loop {
        let page = store.audit_entries(from, VERIFY_PAGE_ENTRIES)?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in &page {
            verifier.entry(e);
        }
        from = last + 1;
    }
    Ok(verifier.finish(&checkpoints))
}

/// SHA-256 over the operation and the input's canonical JSON.
/// Appends `bytes` as lowercase hex.
/// `evt-<ms>-<nonce>-<n>` in lower-case hex, the nonce in eight digits: written digit by digit
/// (`format!` took a tenth of a decision's instructions with the other ids it writes).
fn event_id(ms: i64, nonce: u32, n: u64) -> String {
    let mut id = String::with_capacity(48);
    id.push_str("evt-");
    // As `{:x}` writes an `i64`: its two's complement (negative only with a test clock).
    push_hex_digits(&mut id, ms as u64, 1);
    id.push('-');
    push_hex_digits(&mut id, u64::from(nonce), 8);
    id.push('-');
    push_hex_digits(&mut id, n, 1);
    id
}

/// `v` in lower-case hex, at least `width` digits (zero-padded).
fn push_hex_digits(out: &mut String, v: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros() as usize)
        .div_ceil(4)
        .max(width)
        .max(1);
    for i in (0..digits).rev() {
        let nibble = if i < 16 { (v >> (4 * i)) & 0xf } else { 0 };
        out.push(char::from(DIGITS[nibble as usize]));
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The content an idempotency key is bound to. `input` is the event or command itself: its JSON
/// is the same as that of the [`marketgov_core::Input`] holding it (an untagged enum), which is what stored
/// records were fingerprinted from (a test compares the two).
#[cfg(test)]
fn fingerprint(operation: &str, input: &impl Serialize) -> Result<[u8; 32], Error> {
    let bytes = serde_json::to_vec(input).map_err(|e| Error::Setup(e.to_string()))?;
    Ok(fingerprint_of(operation, &bytes))
}

/// The fingerprint of an input serialized as JSON (`serde_json::to_vec` of it).
fn fingerprint_of(operation: &str, input_json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0]);
    h.update(input_json);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Reply;
    use marketgov_core::orchestrator::EventStatus;

    #[test]
    fn a_fingerprint_of_the_event_is_that_of_the_input_holding_it() {
        let event: marketgov_core::CustomerEvent = serde_json::from_value(serde_json::json!(
            {"type": "customer_subscribes", "customer_id": "c1", "sku": "pro"}
        ))
        .unwrap();
        assert_eq!(
            super::fingerprint("events", &event).unwrap(),
            super::fingerprint("events", &marketgov_core::Input::Customer(event.clone())).unwrap()
        );
        let command: marketgov_core::CatalogCommand = serde_json::from_value(serde_json::json!(
            {"type": "product_published", "sku": "pro", "expected_version": 1}
        ))
        .unwrap();
        assert_eq!(
            super::fingerprint("catalog", &command).unwrap(),
            super::fingerprint("catalog", &marketgov_core::Input::Catalog(command.clone()))
                .unwrap()
        );
    }

    #[test]
    fn an_event_id_is_written_as_its_format_string_would() {
        for (ms, nonce, n) in [
            (0i64, 0u32, 0u64),
            (1_767_225_600_000, 0xc892_a7f6, 4),
            (15, 1, u64::MAX),
            (-1, u32::MAX, 255),
            (i64::MAX, 0x0000_00ff, 1 << 40),
        ] {
            assert_eq!(
                super::event_id(ms, nonce, n),
                format!("evt-{ms:x}-{nonce:08x}-{n:x}")
            );
        }
    }

    /// The log store skips runs for an effect key by its ordinal (keys.rs): the nonce and
    /// the count of the event id it is made of. Should the id change shape, effect lookups
    /// would still be answered, but by asking every run.
    #[test]
    fn an_effect_key_carries_its_event_ids_nonce_and_count_as_its_ordinal() {
        use marketgov_store_log::keys::Ordinal;
        for (ms, nonce, n, i) in [
            (1_767_225_600_000i64, 0xc892_a7f6u32, 4u64, 0usize),
            (0, 0, 0, 17),
            (-1, u32::MAX, u64::MAX, 3),
        ] {
            let key = format!("{}:{i}", super::event_id(ms, nonce, n));
            assert_eq!(
                Ordinal::of_key(&key),
                Some(Ordinal {
                    issuer: u64::from(nonce),
                    n
                }),
                "{key}"
            );
        }
    }

    #[test]
    fn the_receipt_is_added_to_the_result_object_as_valid_json() {
        let receipt = Some((7, [1u8; 32], [2u8; 32]));
        for result in [r#"{"status":"completed","effects":[]}"#, "{}", "{ }\n"] {
            let reply = Reply::new(
                EventStatus::Completed,
                std::sync::Arc::new(result.to_owned()),
                receipt,
                false,
            );
            let json = reply.json();
            let body: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(body["receipt"]["seq"], 7, "{json}");
            // The same text serde writes for a receipt (what earlier answers carried).
            let view = super::ReceiptView {
                seq: 7,
                hash: "02".repeat(32),
                prev_hash: "01".repeat(32),
            };
            let expected = format!("\"receipt\":{}}}", serde_json::to_string(&view).unwrap());
            assert!(json.ends_with(&expected), "{json}");
            assert_eq!(body["receipt"]["hash"], "02".repeat(32));
            assert_eq!(body["receipt"]["prev_hash"], "01".repeat(32));
            let mut without = body.clone();
            without.as_object_mut().unwrap().remove("receipt");
            assert_eq!(
                without,
                serde_json::from_str::<serde_json::Value>(result).unwrap()
            );
        }
        let plain = Reply::new(
            EventStatus::Completed,
            std::sync::Arc::new(r#"{"a":1}"#.to_owned()),
            None,
            true,
        );
        assert_eq!(plain.json(), r#"{"a":1}"#);
        assert_eq!(plain.body()["a"], 1);
    }
}
