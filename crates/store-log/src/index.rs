//! What the segments hold, indexed in memory: where each record is, and the small state (timer
//! deadlines, outbox states, versions) that decides whether a commit may be written. Bodies stay
//! on disk and are read by location.
//!
//! The index changes only by [`Index::apply`], record by record, in log order: the writer applies
//! a batch after its sync, and opening the store applies every batch on disk. So what readers see
//! is exactly the durable log, and a reopened store sees what the running one saw.
//!
//! Memory: everything here is per stored stream, event, key, timer and effect (about 100 bytes
//! each plus their names). That is the price of this first version; it is not yet bounded by
//! configuration (see docs/store-log.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use marketgov_audit::{Checkpoint, Head};

use crate::frame::{table_code, Record};

/// Where a frame is: its segment and its offset in it, packed (segments are far smaller than
/// 2^40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc(u64);

impl Loc {
    pub const OFFSET_BITS: u32 = 40;

    pub fn new(segment: u32, offset: u64) -> Self {
        debug_assert!(offset < 1 << Self::OFFSET_BITS);
        Self((u64::from(segment) << Self::OFFSET_BITS) | offset)
    }
    pub fn segment(self) -> u32 {
        (self.0 >> Self::OFFSET_BITS) as u32
    }
    pub fn offset(self) -> u64 {
        self.0 & ((1 << Self::OFFSET_BITS) - 1)
    }
}

/// A stream: where its events are (version `i + 1` at `events[i]`) and its latest snapshot.
#[derive(Debug, Default)]
pub struct StreamIndex {
    pub events: Vec<Loc>,
    pub snapshot: Option<(u64, Loc)>,
}

/// An idempotency record: where it is, and its place in insertion order (for the sweep).
#[derive(Debug, Clone, Copy)]
pub struct KeyIndex {
    pub loc: Loc,
    pub order: u64,
    pub created_at_ms: i64,
}

/// The state of a queued effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectState {
    Pending,
    Done,
    Dead,
}

/// A queued effect.
#[derive(Debug, Clone, Copy)]
pub struct EffectIndex {
    pub id: i64,
    pub loc: Loc,
    pub state: EffectState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
}

/// A `(tenant, key)` pair.
pub type Key = (String, String);

/// The in-memory index of the durable log.
#[derive(Debug, Default)]
pub struct Index {
    pub head: Head,
    /// The location of every 64th audit entry (seq 1, 65, ...), for reads by sequence.
    pub seq_marks: Vec<Loc>,
    pub streams: BTreeMap<String, StreamIndex>,
    pub keys: BTreeMap<Key, KeyIndex>,
    /// Idempotency records in insertion order.
    pub key_order: BTreeMap<u64, Key>,
    pub next_key_order: u64,
    pub timers: HashMap<(String, String), i64>,
    pub timers_due: BTreeSet<(i64, String, String)>,
    pub effects: HashMap<String, EffectIndex>,
    /// Pending effects by `(next attempt, id)`, with their keys.
    pub effects_ready: BTreeMap<(i64, i64), String>,
    pub effects_pending: u64,
    pub effect_id_max: i64,
    pub versioned: BTreeMap<(u8, String), (u64, Loc)>,
    pub checkpoints: Vec<Checkpoint>,
    /// The last batch applied.
    pub batch: u64,
}

/// Audit entries per mark in [`Index::seq_marks`].
pub const SEQ_MARK_EVERY: u64 = 64;

/// A record that cannot follow what the log holds: the log is damaged (or was written by a
/// different program).
#[derive(Debug)]
pub struct Inconsistent(pub String);

impl Index {
    /// The stream's last version (0: no events).
    pub fn stream_version(&self, stream: &str) -> u64 {
        self.streams
            .get(stream)
            .map_or(0, |s| s.events.len() as u64)
    }

    /// The stream's entry, created if new (its name is copied only then: this runs per event).
    fn stream_mut(&mut self, stream: &str) -> Result<&mut StreamIndex, Inconsistent> {
        if !self.streams.contains_key(stream) {
            self.streams
                .insert(stream.to_owned(), StreamIndex::default());
        }
        self.streams
            .get_mut(stream)
            .ok_or_else(|| Inconsistent(format!("{stream} vanished from the index")))
    }

    /// Applies one durable record found at `loc`.
    pub fn apply(&mut self, record: &Record, loc: Loc) -> Result<(), Inconsistent> {
        match record {
            Record::Begin { .. } => {}
            Record::Event {
                seq,
                stream,
                version,
                prev_hash,
                hash,
                ..
            } => {
                if *seq != self.head.seq + 1 || *prev_hash != self.head.hash {
                    return Err(Inconsistent(format!(
                        "audit entry {seq} does not follow entry {}",
                        self.head.seq
                    )));
                }
                let s = self.stream_mut(stream)?;
                if *version != s.events.len() as u64 + 1 {
                    return Err(Inconsistent(format!(
                        "{stream} version {version} follows version {}",
                        s.events.len()
                    )));
                }
                s.events.push(loc);
                if (seq - 1) % SEQ_MARK_EVERY == 0 {
                    self.seq_marks.push(loc);
                }
                self.head = Head {
                    seq: *seq,
                    hash: *hash,
                };
            }
            Record::Snapshot {
                stream, version, ..
            } => {
                self.stream_mut(stream)?.snapshot = Some((*version, loc));
            }
            Record::IdempotencyPut {
                tenant,
                key,
                created_at_ms,
                ..
            } => {
                let k = (tenant.clone(), key.clone());
                let order = self.next_key_order;
                self.next_key_order += 1;
                if let Some(old) = self.keys.insert(
                    k.clone(),
                    KeyIndex {
                        loc,
                        order,
                        created_at_ms: *created_at_ms,
                    },
                ) {
                    return Err(Inconsistent(format!(
                        "idempotency key {tenant}/{key} stored twice (first at {})",
                        old.order
                    )));
                }
                self.key_order.insert(order, k);
            }
            Record::IdempotencyDelete { tenant, key } => {
                let k = (tenant.clone(), key.clone());
                if let Some(old) = self.keys.remove(&k) {
                    self.key_order.remove(&old.order);
                }
            }
            Record::TimerSet {
                stream,
                kind,
                due_at_ms,
            } => {
                let k = (stream.clone(), kind.clone());
                if let Some(old) = self.timers.insert(k, *due_at_ms) {
                    self.timers_due.remove(&(old, stream.clone(), kind.clone()));
                }
                self.timers_due
                    .insert((*due_at_ms, stream.clone(), kind.clone()));
            }
            Record::TimerCancel { stream, kind } => {
                if let Some(old) = self.timers.remove(&(stream.clone(), kind.clone())) {
                    self.timers_due.remove(&(old, stream.clone(), kind.clone()));
                }
            }
            Record::OutboxPut {
                id,
                effect_key,
                not_before_ms,
                ..
            } => {
                if *id <= self.effect_id_max || self.effects.contains_key(effect_key) {
                    return Err(Inconsistent(format!(
                        "effect {effect_key} (row {id}) queued twice or out of order"
                    )));
                }
                self.effect_id_max = *id;
                self.effects.insert(
                    effect_key.clone(),
                    EffectIndex {
                        id: *id,
                        loc,
                        state: EffectState::Pending,
                        attempts: 0,
                        next_attempt_ms: *not_before_ms,
                    },
                );
                self.effects_ready
                    .insert((*not_before_ms, *id), effect_key.clone());
                self.effects_pending += 1;
            }
            Record::OutboxDone { effect_key }
            | Record::OutboxDead { effect_key, .. }
            | Record::OutboxRetry { effect_key, .. } => {
                let Some(e) = self.effects.get_mut(effect_key) else {
                    return Err(Inconsistent(format!(
                        "effect {effect_key} was never queued"
                    )));
                };
                if e.state != EffectState::Pending {
                    return Err(Inconsistent(format!("effect {effect_key} is not pending")));
                }
                self.effects_ready.remove(&(e.next_attempt_ms, e.id));
                match record {
                    Record::OutboxRetry {
                        attempts,
                        next_attempt_ms,
                        ..
                    } => {
                        e.attempts = *attempts;
                        e.next_attempt_ms = *next_attempt_ms;
                        self.effects_ready
                            .insert((*next_attempt_ms, e.id), effect_key.clone());
                    }
                    Record::OutboxDone { .. } => {
                        e.state = EffectState::Done;
                        self.effects_pending -= 1;
                    }
                    _ => {
                        e.state = EffectState::Dead;
                        self.effects_pending -= 1;
                    }
                }
            }
            Record::Versioned {
                table,
                key,
                version,
                ..
            } => {
                self.versioned
                    .insert((table_code(*table), key.clone()), (*version, loc));
            }
            Record::Checkpoint(c) => self.checkpoints.push(c.clone()),
            Record::End { batch, seq, hash } => {
                if *seq != self.head.seq || *hash != self.head.hash {
                    return Err(Inconsistent(format!(
                        "batch {batch} closes at audit entry {seq}, the log is at {}",
                        self.head.seq
                    )));
                }
                self.batch = *batch;
            }
        }
        Ok(())
    }

    /// The location of the audit entry `seq`'s nearest mark at or before it, and that mark's seq.
    pub fn seq_mark(&self, seq: u64) -> Option<(u64, Loc)> {
        let i = (seq.max(1) - 1) / SEQ_MARK_EVERY;
        let loc = *self.seq_marks.get(usize::try_from(i).ok()?)?;
        Some((i * SEQ_MARK_EVERY + 1, loc))
    }
}
