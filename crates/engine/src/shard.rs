//! A shard: one task that owns a set of streams and handles their work one item at a time, so
//! each stream has exactly one writer and its events are decided in arrival order. Different
//! shards run in parallel and meet only in the store's group commit.
//!
//! Supervision: a panic while deciding is caught; the stream is dropped from memory (it reloads
//! from the store, which holds only committed decisions), the event is parked in the review queue
//! and its caller told so, and the shard goes on with its other streams.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use marketgov_core::governors::product_catalog::Product;
use marketgov_core::ids::Sku;
use marketgov_core::orchestrator::{decide_catalog, decide_event, EventContext, EventStatus};
use marketgov_core::timers::TimerCommand;
use marketgov_core::{CatalogCommand, Customer, CustomerEvent, EventKind, Input};
use marketgov_store::transient::TransientMap;
use marketgov_store::{
    Commit, EventWrite, IdempotencyRecord, OutboxWrite, Snapshot, Store, StreamLoad, TimerWrite,
    VersionedWrite,
};
use tokio::sync::{mpsc, oneshot};

use crate::app::{Inner, Reply};
use crate::recent_replies::RecentReply;
use crate::stream::{
    encoding, rebuild, result_json, snapshot_body, LoggedDecisionRef, StreamState, ENCODING_VERSION,
};
use crate::Error;

/// What an idempotency record stores as its response: where the decision went (a replay reads
/// the logged result from there). Serialized straight from borrowed fields; the same bytes the
/// `json!` object it replaces gave (its keys are in the same, sorted, order).
#[derive(serde::Serialize)]
struct StoredResponse<'a> {
    operation: &'a str,
    stream: &'a str,
    stream_version: u64,
}

/// An effect's outbox body.
fn effect_body(e: &marketgov_core::orchestrator::Effect) -> Result<Vec<u8>, Error> {
    marketgov_core::orchestrator::effect_json(e).map_err(encoding)
}

/// Idempotency bookkeeping a shard writes with the decision.
#[derive(Debug, Clone)]
pub(crate) struct KeyClaim {
    pub tenant: String,
    pub key: String,
    pub operation: &'static str,
    pub fingerprint: [u8; 32],
    /// An expired record with this key may be replaced.
    pub replaces_expired: bool,
}

/// Work for a shard.
pub(crate) enum Work {
    Customer {
        tenant: String,
        /// The customer's stream (`customer_stream`), as routed.
        stream: String,
        claim: Option<KeyClaim>,
        event: CustomerEvent,
        /// The event as JSON (`serde_json::to_vec`): what its key's fingerprint was made of,
        /// and what its log entry holds as the input.
        input_json: Vec<u8>,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    Catalog {
        tenant: String,
        /// The product's stream (`product_stream`), as routed.
        stream: String,
        claim: Option<KeyClaim>,
        command: CatalogCommand,
        /// The command as JSON, as for a customer event.
        input_json: Vec<u8>,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    Read {
        stream: String,
        reply: oneshot::Sender<Result<StreamState, Error>>,
    },
    Agent {
        tenant: String,
        claim: KeyClaim,
        envelope: marketgov_core::cases::Envelope,
        reply: oneshot::Sender<Result<crate::agents::AgentReply, Error>>,
    },
}

impl Work {
    /// The stream the item is about.
    fn stream(&self) -> &str {
        match self {
            Work::Customer { event, .. } => event.customer_id.as_str(),
            Work::Catalog { command, .. } => command.sku().as_str(),
            Work::Read { stream, .. } => stream,
            Work::Agent { envelope, .. } => &envelope.source_agent,
        }
    }

    /// The stream whose state the item reads or changes in this shard (agent work keeps its
    /// own optimistic versions and has none).
    fn owned_stream(&self) -> Option<&str> {
        match self {
            Work::Customer { stream, .. }
            | Work::Catalog { stream, .. }
            | Work::Read { stream, .. } => Some(stream),
            Work::Agent { .. } => None,
        }
    }
}

pub(crate) struct Shard {
    pub inner: Arc<Inner>,
    /// Boxed: a state is over a kilobyte, and a map's empty slots would hold one each.
    pub cache: TransientMap<String, Box<StreamState>>,
    /// Load order, for dropping the oldest stream when the cache is full.
    pub loaded: VecDeque<String>,
    /// Commits sent to the store and not yet acknowledged, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Work for streams with a commit in flight, in arrival order: it is decided once that
    /// commit is acknowledged, on the state it made.
    waiting: TransientMap<String, VecDeque<Work>>,
    /// Snapshots written as streams were dropped (`snapshot_on_eviction`) and not yet
    /// acknowledged: nothing waits for them, so without this bound they could fill the store's
    /// queue ahead of the decisions.
    eviction_snapshots: VecDeque<Ack>,
    /// Items in `waiting`, all streams together: bounded by `shard_queue_max` like the mailbox,
    /// so a flood for one stream is refused at the mailbox instead of piling up here.
    waiting_len: usize,
}

/// The store's answer to one commit.
type Ack = oneshot::Receiver<Result<marketgov_store::Receipt, marketgov_store::Error>>;

/// Snapshots at eviction a shard has sent and the store not yet acknowledged, at most; beyond
/// it a dropped stream gets none (its next load replays its events, as without the snapshot).
const EVICTION_SNAPSHOTS_IN_FLIGHT_MAX: usize = 4;

/// A decision whose commit is on its way to the disk: memory changes and the caller is
/// answered only once the store acknowledges the sync.
struct InFlight {
    stream: String,
    /// Boxed, as in the cache: the state takes the box's place there, and the item (moved
    /// into and out of the queue) stays small.
    next: Box<StreamState>,
    ack: Ack,
    status: EventStatus,
    result_json: Arc<String>,
    reply: oneshot::Sender<Result<Reply, Error>>,
    /// When the shard took the item (for the coordination/compute figure); customer events only.
    started: Option<std::time::Instant>,
    /// When the core returned the decision (for the decision-to-durable latency).
    decided_at: std::time::Instant,
    /// The idempotency key written with it, and when.
    claim: Option<(KeyClaim, i64)>,
    conflicts: u64,
    /// A product to remember for its tenant once durable.
    product_of: Option<String>,
}

/// A decision ready to commit: what goes to the store, and what memory and the caller get once
/// it is durable.
struct Prepared {
    stream: String,
    next: Box<StreamState>,
    commit: Commit,
    status: EventStatus,
    result_json: Arc<String>,
    conflicts: u64,
    /// When the core returned the decision: the start of its decision-to-durable latency.
    decided_at: std::time::Instant,
    /// The idempotency key written with it, and when: its answer is remembered once durable.
    claim: Option<(KeyClaim, i64)>,
}

/// A customer decision ready to commit, or the reason none is.
#[allow(clippy::large_enum_variant)] // returned once per decision and taken apart at once
enum Decided {
    Commit(Prepared),
    /// The decision panicked: the event is parked for review.
    Panicked {
        ctx: EventContext,
        input: Input,
    },
}

impl Shard {
    /// Runs the shard under supervision: if its task dies of a panic outside a decision (which
    /// is caught where it happens), a fresh shard with an empty cache takes over the same mailbox
    /// and reloads its streams from the store on demand. The callers of the items in progress
    /// are told the engine could not answer; nothing of them was acknowledged.
    pub async fn supervise(inner: Arc<Inner>, rx: mpsc::Receiver<Work>) {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        loop {
            let shard = Shard {
                inner: inner.clone(),
                cache: TransientMap::default(),
                loaded: VecDeque::new(),
                in_flight: VecDeque::new(),
                waiting: TransientMap::default(),
                eviction_snapshots: VecDeque::new(),
                waiting_len: 0,
            };
            let run = tokio::spawn(shard.run(rx.clone()));
            match run.await {
                Err(e) if e.is_panic() => {
                    inner
                        .shard_restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => break, // the mailbox closed: the engine is shutting down
            }
        }
    }

    /// Takes work while fewer than `shard_commits_in_flight_max` commits are in flight, and
    /// finishes in-flight commits as the store acknowledges them (in the order they were sent:
    /// the store's writer is one queue). Pipelining across streams lets one sync carry many of
    /// the shard's decisions; a stream never has more than one decision in flight.
    async fn run(mut self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Work>>>) {
        let mut rx = rx.lock().await;
        let in_flight_max = self.inner.options.shard_commits_in_flight_max.max(1);
        let waiting_max = self.inner.options.shard_queue_max.max(1);
        let mut open = true;
        while open || !self.in_flight.is_empty() {
            let accepting =
                open && self.in_flight.len() < in_flight_max && self.waiting_len < waiting_max;
            tokio::select! {
                biased;
                acked = next_ack(&mut self.in_flight) => {
                    if let Some(done) = self.in_flight.pop_front() {
                        let stream = done.stream.clone();
                        self.finish(done, acked);
                        self.resume(&stream).await;
                    }
                }
                work = rx.recv(), if accepting => match work {
                    Some(work) => self.take(work).await,
                    None => open = false,
                },
            }
        }
    }

    /// Takes one item: queued behind its stream's commit in flight, or handled now.
    async fn take(&mut self, work: Work) {
        if let Some(hook) = &self.inner.options.work_hook {
            hook(work.stream());
        }
        if let Some(stream) = work.owned_stream() {
            if self.in_flight.iter().any(|f| f.stream == stream) {
                self.waiting
                    .entry(stream.to_owned())
                    .or_default()
                    .push_back(work);
                self.waiting_len += 1;
                return;
            }
        }
        self.handle(work).await;
    }

    /// After a stream's commit is acknowledged: handles the work that waited for it, until one
    /// item puts the stream in flight again.
    async fn resume(&mut self, stream: &str) {
        while !self.in_flight.iter().any(|f| f.stream == stream) {
            let Some(queue) = self.waiting.get_mut(stream) else {
                return;
            };
            let Some(work) = queue.pop_front() else {
                self.waiting.remove(stream);
                return;
            };
            self.waiting_len = self.waiting_len.saturating_sub(1);
            if queue.is_empty() {
                self.waiting.remove(stream);
            }
            self.handle(work).await;
        }
    }

    async fn handle(&mut self, work: Work) {
        match work {
            Work::Customer {
                tenant,
                stream,
                claim,
                event,
                input_json,
                reply,
            } => {
                let started = std::time::Instant::now();
                match self.decide_customer(&tenant, stream.clone(), claim, event, &input_json) {
                    Ok(Decided::Commit(prepared)) => {
                        self.send_commit(prepared, reply, Some(started), None);
                    }
                    Ok(Decided::Panicked { ctx, input }) => {
                        let error = self.park(&tenant, &stream, &ctx, input).await;
                        let _ = reply.send(Err(error));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Work::Catalog {
                tenant,
                stream,
                claim,
                command,
                input_json,
                reply,
            } => match self.decide_catalog(&tenant, stream, claim, command, &input_json) {
                Ok(prepared) => self.send_commit(prepared, reply, None, Some(tenant)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Work::Read { stream, reply } => {
                let _ = reply.send(self.state(&stream).cloned());
            }
            Work::Agent {
                tenant,
                claim,
                envelope,
                reply,
            } => {
                // Agent work keeps its own optimistic versions and is rare: decided inline.
                let result =
                    crate::agents::decide_agent(&self.inner, &tenant, claim, envelope).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Sends a decision's commit to the store and keeps it in flight; a refused send answers
    /// the caller at once. `started` times customer events; `product_of` names the tenant whose
    /// catalog learns the product once durable.
    fn send_commit(
        &mut self,
        prepared: Prepared,
        reply: oneshot::Sender<Result<Reply, Error>>,
        started: Option<std::time::Instant>,
        product_of: Option<String>,
    ) {
        match self.inner.store.commit(prepared.commit) {
            Ok(ack) => self.in_flight.push_back(InFlight {
                stream: prepared.stream,
                next: prepared.next,
                ack,
                status: prepared.status,
                result_json: prepared.result_json,
                reply,
                started,
                decided_at: prepared.decided_at,
                claim: prepared.claim,
                conflicts: prepared.conflicts,
                product_of,
            }),
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// A commit was acknowledged (or failed): updates memory and answers the caller.
    fn finish(
        &mut self,
        done: InFlight,
        acked: Result<Result<marketgov_store::Receipt, marketgov_store::Error>, ()>,
    ) {
        let receipt = match acked {
            Ok(Ok(receipt)) => receipt,
            Ok(Err(e)) => {
                self.forget(&done.stream);
                let _ = done.reply.send(Err(e.into()));
                return;
            }
            Err(()) => {
                self.forget(&done.stream);
                let _ = done.reply.send(Err(Error::ShuttingDown));
                return;
            }
        };
        self.inner
            .decision_to_durable
            .record(done.decided_at.elapsed());
        let product = done.next.product.clone();
        if let Some(state) = self.cache.get_mut(&done.stream) {
            *state = done.next;
        }
        let refused = !done.status.applies();
        if let Some(started) = done.started {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.inner
                .handle_nanos
                .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
            self.inner
                .conflicts
                .fetch_add(done.conflicts, std::sync::atomic::Ordering::Relaxed);
            if refused {
                self.inner
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let (Some(tenant), Some(product)) = (&done.product_of, product) {
            self.inner.remember_product(tenant, product);
        }
        let receipt = receipt.entries.first().copied();
        let reply = Reply::new(done.status, done.result_json.clone(), receipt, false);
        if let Some((claim, created_at_ms)) = done.claim {
            self.inner.recent_replies.insert(
                &claim.tenant,
                &claim.key,
                RecentReply {
                    operation: claim.operation,
                    fingerprint: claim.fingerprint,
                    created_at_ms,
                    status: reply.status,
                    result: done.result_json,
                    receipt,
                },
            );
        }
        let _ = done.reply.send(Ok(reply));
    }

    fn state(&mut self, stream: &str) -> Result<&StreamState, Error> {
        if !self.cache.contains_key(stream) {
            // Customer streams are written only here, by their shard: a name the filter has
            // certainly never seen has nothing stored, and needs no read (see known_keys.rs).
            let customer = stream.starts_with(CUSTOMER_STREAM_PREFIX);
            let maybe_stored = !customer || self.inner.known_streams.may_contain("", stream);
            let load = if maybe_stored {
                self.inner.store.load_stream(stream)?
            } else {
                StreamLoad::default()
            };
            if customer && load.snapshot.is_none() && load.events.is_empty() {
                // Known from here on, before its first event can be committed.
                self.inner.known_streams.insert("", stream);
            }
            let state = rebuild(stream, load)?;
            let share = (self.inner.options.streams_in_memory_max
                / self.inner.options.shards.max(1))
            .max(1);
            if self.cache.len() >= share {
                if let Some(oldest) = self.loaded.pop_front() {
                    if let Some(evicted) = self.cache.remove(&oldest) {
                        self.snapshot_on_eviction(&oldest, &evicted);
                    }
                }
            }
            self.loaded.push_back(stream.to_owned());
            self.cache.insert(stream.to_owned(), Box::new(state));
        }
        self.cache
            .get(stream)
            .map(|s| &**s)
            .ok_or_else(|| vanished(stream))
    }

    /// Writes the snapshot of a customer dropped from memory that will be loaded again without
    /// a request (a timer of its own is pending) and has logged enough events since its newest
    /// snapshot, so that the load reads one frame instead of replaying those events (at 10^7
    /// events the retry ladder loaded 111,000 such customers once per rung, about ten events
    /// each). The state dropped is durable (memory holds only acknowledged decisions) and
    /// nothing waits for the snapshot: a refused or failed write only leaves the replay. At
    /// most `EVICTION_SNAPSHOTS_IN_FLIGHT_MAX` a shard are unacknowledged.
    fn snapshot_on_eviction(&mut self, stream: &str, evicted: &StreamState) {
        let min = self.inner.options.snapshot_on_eviction_events;
        let worth_it = min > 0
            && evicted.log_version >= evicted.snapshot_version + min
            && evicted
                .customer
                .as_ref()
                .is_some_and(|c| !c.timers.is_empty())
            && !self.in_flight.iter().any(|f| f.stream == stream);
        if !worth_it {
            return;
        }
        self.eviction_snapshots
            .retain_mut(|ack| matches!(ack.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        if self.eviction_snapshots.len() >= EVICTION_SNAPSHOTS_IN_FLIGHT_MAX {
            return;
        }
        let Ok(body) = snapshot_body(evicted) else {
            return;
        };
        let commit = Commit {
            snapshots: vec![Snapshot {
                stream: stream.to_owned(),
                version: evicted.log_version,
                body,
            }],
            ..Commit::default()
        };
        if let Ok(ack) = self.inner.store.commit(commit) {
            self.eviction_snapshots.push_back(ack);
            self.inner
                .snapshots_on_eviction
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn forget(&mut self, stream: &str) {
        self.cache.remove(stream);
        self.loaded.retain(|s| s != stream);
    }

    /// Decides a customer event and builds its commit; nothing is written or changed yet.
    fn decide_customer(
        &mut self,
        tenant: &str,
        stream: String,
        claim: Option<KeyClaim>,
        event: CustomerEvent,
        input_json: &[u8],
    ) -> Result<Decided, Error> {
        let products = self.products_for(tenant, &event)?;
        let ctx = self.inner.context();
        self.state(&stream)?;
        let state = self.cache.get(&stream).ok_or_else(|| vanished(&stream))?;

        let hook = self.inner.options.decide_hook.clone();
        let started = std::time::Instant::now();
        let decided = catch_unwind(AssertUnwindSafe(|| {
            if let Some(hook) = &hook {
                hook(&event);
            }
            decide_event(state.customer.as_ref(), &event, &products, &ctx)
        }));
        let decided_at = std::time::Instant::now();
        let nanos =
            u64::try_from(decided_at.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .decide_nanos
            .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        let mut result = match decided {
            Ok(result) => result?,
            Err(_) => {
                self.forget(&stream);
                return Ok(Decided::Panicked {
                    ctx,
                    input: Input::Customer(event),
                });
            }
        };
        let next = result.next.take();
        // Each effect is serialized once, for its outbox record, and the result is written
        // around those bytes; the result, once: the same bytes go into the log entry and, with
        // the receipt, the reply.
        let effect_bodies = result
            .effects
            .iter()
            .map(effect_body)
            .collect::<Result<Vec<_>, _>>()?;
        let result_json = Arc::new(
            marketgov_core::orchestrator::result_json(&result, &effect_bodies).map_err(encoding)?,
        );
        let logged = LoggedDecisionRef {
            v: ENCODING_VERSION,
            tenant,
            stream: &stream,
            idempotency_key: claim.as_ref().map(|c| c.key.as_str()),
            ctx: &ctx,
            input: &event,
            products: &products,
            status: result.status,
        }
        .encode_around(input_json, &result_json)?;
        let mut next_state = StreamState {
            log_version: state.log_version + 1,
            customer: next.or_else(|| state.customer.clone()),
            product: None,
            snapshot_version: state.snapshot_version,
        };
        let mut commit = self.base_commit(&stream, state, &mut next_state, &ctx, logged, &claim)?;
        for t in &result.timers {
            commit.timers.push(timer_write(&stream, t));
        }
        if let (EventKind::TimerFired { timer, .. }, false) = (&event.kind, result.status.applies())
        {
            // A stored timer the customer no longer has pending (refused as stale) is removed,
            // or it would stay due forever.
            let pending = state
                .customer
                .as_ref()
                .is_some_and(|c| c.timers.contains_key(timer));
            if !pending {
                commit.timers.push(TimerWrite::Cancel {
                    stream: stream.clone(),
                    kind: timer.name().to_owned(),
                });
            }
        }
        for (e, body) in result.effects.iter().zip(effect_bodies) {
            commit.outbox.push(OutboxWrite {
                effect_key: e.idempotency_key.clone(),
                stream: stream.clone(),
                connector: connector_for(&e.kind),
                body,
                not_before_ms: ctx.now.as_millisecond(),
            });
        }
        if let (Some(after), true) = (&next_state.customer, result.status.applies()) {
            for (i, answer) in marketplace_answers(state.customer.as_ref(), after, &event)
                .into_iter()
                .enumerate()
            {
                commit.outbox.push(OutboxWrite {
                    effect_key: format!("{}:gcp:{i}", ctx.event_id),
                    stream: stream.clone(),
                    connector: "gcp_procurement".into(),
                    body: answer.to_string().into_bytes(),
                    not_before_ms: ctx.now.as_millisecond(),
                });
            }
        }
        if result.status == EventStatus::NeedsReview {
            commit.review.push(VersionedWrite {
                key: ctx.event_id.clone(),
                expected_version: 0,
                version: 1,
                // The review item is the log entry itself.
                body: commit
                    .events
                    .first()
                    .map(|e| e.body.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(Decided::Commit(Prepared {
            stream,
            next: Box::new(next_state),
            commit,
            status: result.status,
            result_json,
            conflicts: result.conflicts.len() as u64,
            decided_at,
            claim: claim.map(|c| (c, ctx.now.as_millisecond())),
        }))
    }

    /// Decides a catalog command and builds its commit; nothing is written or changed yet.
    fn decide_catalog(
        &mut self,
        tenant: &str,
        stream: String,
        claim: Option<KeyClaim>,
        command: CatalogCommand,
        input_json: &[u8],
    ) -> Result<Prepared, Error> {
        let ctx = self.inner.context();
        self.state(&stream)?;
        let state = self.cache.get(&stream).ok_or_else(|| vanished(&stream))?;
        let result = decide_catalog(state.product.as_ref(), &command, &ctx)?;
        let decided_at = std::time::Instant::now();
        // Serialized once: the same bytes go into the log entry and, with the receipt, the reply.
        let result_json = Arc::new(result_json(&result)?);
        let logged = LoggedDecisionRef {
            v: ENCODING_VERSION,
            tenant,
            stream: &stream,
            idempotency_key: claim.as_ref().map(|c| c.key.as_str()),
            ctx: &ctx,
            input: &command,
            products: &[],
            status: result.status,
        }
        .encode_around(input_json, &result_json)?;
        let mut next_state = StreamState {
            log_version: state.log_version + 1,
            customer: None,
            product: result.next.clone().or_else(|| state.product.clone()),
            snapshot_version: state.snapshot_version,
        };
        let mut commit = self.base_commit(&stream, state, &mut next_state, &ctx, logged, &claim)?;
        for t in &result.timers {
            commit.timers.push(timer_write(&stream, t));
        }
        if let (CatalogCommand::TimerFired { timer, .. }, EventStatus::Rejected) =
            (&command, result.status)
        {
            // A stored timer the product no longer has pending is removed, or it stays due forever.
            commit.timers.push(TimerWrite::Cancel {
                stream: stream.clone(),
                kind: timer.name().to_owned(),
            });
        }
        Ok(Prepared {
            stream,
            next: Box::new(next_state),
            commit,
            status: result.status,
            result_json,
            conflicts: 0,
            decided_at,
            claim: claim.map(|c| (c, ctx.now.as_millisecond())),
        })
    }

    /// The log entry, snapshot and idempotency record every decision writes.
    fn base_commit(
        &self,
        stream: &str,
        before: &StreamState,
        next: &mut StreamState,
        ctx: &EventContext,
        logged: Vec<u8>,
        claim: &Option<KeyClaim>,
    ) -> Result<Commit, Error> {
        let mut commit = Commit::default();
        commit.events.push(EventWrite {
            stream: stream.to_owned(),
            stream_version: next.log_version,
            event_id: ctx.event_id.clone(),
            at_ms: ctx.now.as_millisecond(),
            body: logged,
        });
        let every = self.inner.options.snapshot_every_events.max(1);
        if next.log_version / every > before.log_version / every {
            commit.snapshots.push(Snapshot {
                stream: stream.to_owned(),
                version: next.log_version,
                body: snapshot_body(next)?,
            });
            next.snapshot_version = next.log_version;
        }
        if let Some(c) = claim {
            let response = StoredResponse {
                operation: c.operation,
                stream,
                stream_version: next.log_version,
            };
            commit.idempotency.push(IdempotencyRecord {
                tenant: c.tenant.clone(),
                key: c.key.clone(),
                operation: c.operation.to_owned(),
                fingerprint: c.fingerprint,
                response: serde_json::to_vec(&response).map_err(encoding)?,
                created_at_ms: ctx.now.as_millisecond(),
            });
            if c.replaces_expired {
                commit
                    .idempotency_expired
                    .push((c.tenant.clone(), c.key.clone()));
            }
        }
        Ok(commit)
    }

    /// Parks an event whose decision panicked: logged in the review queue, nothing else changes.
    async fn park(
        &mut self,
        tenant: &str,
        stream: &str,
        ctx: &EventContext,
        input: Input,
    ) -> Error {
        let body = serde_json::json!({
            "tenant": tenant,
            "stream": stream,
            "ctx": ctx,
            "input": input,
            "reason": "deciding this event panicked; the shard was restarted from the store",
        });
        let commit = Commit {
            review: vec![VersionedWrite {
                key: ctx.event_id.clone(),
                expected_version: 0,
                version: 1,
                body: body.to_string().into_bytes(),
            }],
            ..Commit::default()
        };
        if let Ok(ack) = self.inner.store.commit(commit) {
            let _ = ack.await;
        }
        Error::DecisionPanicked {
            event_id: ctx.event_id.clone(),
        }
    }

    /// The products a customer event reads, from the catalog held in memory or the store.
    fn products_for(&mut self, tenant: &str, event: &CustomerEvent) -> Result<Vec<Product>, Error> {
        let skus: Vec<&Sku> = match &event.kind {
            EventKind::CustomerSubscribes { sku, .. } => vec![sku],
            EventKind::CustomerUpgrades { new_sku, .. } => vec![new_sku],
            _ => Vec::new(),
        };
        let mut products = Vec::with_capacity(skus.len());
        for sku in skus {
            if let Some(p) = self.inner.product(tenant, sku)? {
                products.push(p);
            }
        }
        Ok(products)
    }
}

/// The answers a Google Cloud Marketplace subscription owes Google after a decision (SPEC 3.2):
/// approve an entitlement that was granted, reject one that was refused, approve a plan change
/// that was made. Written in the decision's commit, carried out by the `gcp_procurement` connector.
fn marketplace_answers(
    before: Option<&Customer>,
    after: &Customer,
    event: &CustomerEvent,
) -> Vec<serde_json::Value> {
    use marketgov_core::governors::entitlement::EntitlementState as E;
    let Some(sub) = after.subscription.as_ref() else {
        return Vec::new();
    };
    let Some(mp) = sub.marketplace.as_ref().filter(|m| m.name == "gcp") else {
        return Vec::new();
    };
    let Some(provider) = mp.provider_id.as_deref() else {
        return Vec::new();
    };
    let id = after.customer_id.as_str();
    let ent_before = before.and_then(|c| c.entitlement.as_ref()).map(|e| e.state);
    let ent_after = after.entitlement.as_ref().map(|e| e.state);
    let answer = |action: &str, extra: serde_json::Value| {
        let mut a =
            serde_json::json!({"action": action, "provider_id": provider, "entitlement_id": id});
        if let (Some(obj), serde_json::Value::Object(more)) = (a.as_object_mut(), extra) {
            obj.extend(more);
        }
        a
    };
    let mut answers = Vec::new();
    let had_access = matches!(
        ent_before,
        Some(E::Active | E::PendingPlanChange | E::Suspended | E::PendingCancellation)
    );
    if ent_after == Some(E::Active) && !had_access {
        answers.push(answer("approve", serde_json::json!({})));
    }
    if ent_after == Some(E::Rejected) && ent_before != Some(E::Rejected) {
        let reason = after
            .entitlement
            .as_ref()
            .and_then(|e| e.reason.clone())
            .unwrap_or_default();
        answers.push(answer("reject", serde_json::json!({"reason": reason})));
    }
    let plan_before = before
        .and_then(|c| c.subscription.as_ref())
        .map(|s| s.current_sku().clone());
    if matches!(event.kind, EventKind::CustomerUpgrades { .. })
        && plan_before.as_ref() != Some(sub.current_sku())
    {
        answers.push(answer(
            "approvePlanChange",
            serde_json::json!({"pendingPlanName": sub.current_sku()}),
        ));
    }
    answers
}

/// How every customer stream's name begins.
pub(crate) const CUSTOMER_STREAM_PREFIX: &str = "customer:";

pub(crate) fn customer_stream(tenant: &str, customer_id: &str) -> String {
    // Pushed, not `format!`ted: routed for every event.
    let mut stream =
        String::with_capacity(CUSTOMER_STREAM_PREFIX.len() + tenant.len() + 1 + customer_id.len());
    stream.push_str(CUSTOMER_STREAM_PREFIX);
    stream.push_str(tenant);
    stream.push('/');
    stream.push_str(customer_id);
    stream
}

pub(crate) fn product_stream(tenant: &str, sku: &str) -> String {
    format!("product:{tenant}/{sku}")
}

fn timer_write(stream: &str, t: &TimerCommand) -> TimerWrite {
    match t {
        TimerCommand::Set { kind, due_at } => TimerWrite::Set {
            stream: stream.to_owned(),
            kind: kind.name().to_owned(),
            due_at_ms: due_at.as_millisecond(),
        },
        TimerCommand::Cancel { kind } => TimerWrite::Cancel {
            stream: stream.to_owned(),
            kind: kind.name().to_owned(),
        },
    }
}

/// Which connector carries out an effect (SPEC 2.5).
fn connector_for(kind: &marketgov_core::EffectKind) -> String {
    use marketgov_core::EffectKind as K;
    match kind {
        K::Charge { .. } | K::Refund { .. } | K::Void { .. } => "payments",
        K::Provision { .. } | K::Revoke { .. } => "fulfillment",
        K::Escalate { .. } => "escalation",
        _ => "notification",
    }
    .to_owned()
}

/// The acknowledgement of the oldest commit in flight; pending forever when none is.
async fn next_ack(
    in_flight: &mut VecDeque<InFlight>,
) -> Result<Result<marketgov_store::Receipt, marketgov_store::Error>, ()> {
    match in_flight.front_mut() {
        Some(flight) => (&mut flight.ack).await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

fn vanished(stream: &str) -> Error {
    Error::Replay {
        location: stream.into(),
        detail: "vanished from cache".into(),
    }
}
