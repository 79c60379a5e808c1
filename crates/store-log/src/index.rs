//! What the segments hold, indexed in memory: where each record is, and the small state (timer
//! deadlines, outbox states, versions) that decides whether a commit may be written. Bodies stay
//! on disk and are read by location.
//!
//! The index changes only by [`Index::apply`], record by record, in log order: the writer applies
//! a batch after its sync, and opening the store applies every batch on disk. So what readers see
//! is exactly the durable log, and a reopened store sees what the running one saw.
//!
//! Memory, per thing the log holds (docs/store-log.md has the measurements):
//! - a stream: 32 bytes under a hash of its name (streams.rs); its events are chained on disk;
//! - an idempotency or effect key: about 2 bytes of filters; the keys themselves are in run
//!   files once their segment is closed (keys.rs);
//! - a pending effect: about 70 bytes, for at most `effects_in_memory_max` of them (the rest
//!   wait on disk);
//! - a pending timer: about 70 bytes (not bounded yet: one per pending timer);
//! - a versioned record (sequences, cases, inventory, review, API keys): its key and location
//!   (not bounded yet; few in practice);
//! - one location per 64 audit entries, and every signed checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use marketgov_audit::{Checkpoint, Head};

use crate::frame::{table_code, Record, StreamPrev};
use crate::hash_keys::HashKeys;
use crate::keys::{Gate, KeyTable, Ordinal};
use crate::prehashed::PrehashedMap;
use crate::streams::{NameHash, StreamTable};
use marketgov_store::transient::TransientMap;

/// Where a frame is: its segment and its offset in it, packed (segments are far smaller than
/// 2^40 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// The packed value, as stored in frames and run files.
    pub fn raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
    /// The least location after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// The state of a queued effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectState {
    Pending,
    /// Done or dead: never attempted again, and its key never queued again.
    Settled,
}

/// A pending effect held in memory (its record is where it was queued).
#[derive(Debug, Clone, Copy)]
pub struct EffectIndex {
    pub attempts: u32,
    pub next_attempt_ms: i64,
}

/// Pending effects moved from disk to memory at most per batch applied.
const EFFECTS_REFILL_MAX: usize = 4096;

/// A `(tenant, key)` pair.
pub type Key = (String, String);

/// The index of the durable log (in memory, but for the key runs of closed segments).
#[derive(Debug)]
pub struct Index {
    pub head: Head,
    /// The location of every 64th audit entry (seq 1, 65, ...), for reads by sequence.
    pub seq_marks: Vec<Loc>,
    /// Every stream (by a hash of its name; see streams.rs).
    pub streams: StreamTable,
    /// Where idempotency records are (by a hash of `(tenant, key)`; see keys.rs).
    pub keys: KeyTable,
    /// Idempotency records stored and not removed.
    pub keys_live: u64,
    /// Every idempotency record before this location has been swept.
    pub keys_frontier: Loc,
    /// Records removed one by one (an expired key used again) that the sweep has not passed.
    pub keys_removed: BTreeSet<Loc>,
    /// Pending timers by a 128-bit hash of `(stream, kind)` (as streams.rs explains): when
    /// each is due and where its `TimerSet` record is (which names it).
    pub timers: PrehashedMap<u128, (i64, Loc)>,
    pub timers_due: BTreeSet<(i64, Loc)>,
    pub timer_hash: NameHash,
    /// Where every effect ever queued is (by a hash of its key).
    pub effects: KeyTable,
    /// Pending effects (neither done nor dead) held in memory, by where each was queued: at
    /// most `effects_in_memory_max`, but for a spilled one loaded by its retry.
    pub pending: TransientMap<Loc, EffectIndex>,
    /// The pending effects in memory by `(next attempt, where queued)`.
    pub effects_ready: BTreeSet<(i64, Loc)>,
    /// Pending effects in all, in memory or not.
    pub effects_pending: u64,
    /// Effects queued while memory was full: from this location on, every effect is pending,
    /// never attempted and held only on disk, unless it is in `pending` or `spilled_settled`.
    /// Each batch applied moves some back to memory once it has room (the same at every open:
    /// it follows from the log alone).
    pub spilled_from: Option<Loc>,
    /// Spilled effects settled without passing through memory.
    pub spilled_settled: HashSet<Loc>,
    pub effects_in_memory_max: usize,
    pub effect_id_max: i64,
    pub versioned: BTreeMap<(u8, String), (u64, Loc)>,
    pub checkpoints: Vec<Checkpoint>,
    /// The last batch applied.
    pub batch: u64,
}

/// What the index holds in memory, in bytes, by part (estimates from capacities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexMemory {
    /// Stream slots, and the names kept for listing.
    pub streams: u64,
    /// The filters over all idempotency and effect keys.
    pub key_filters: u64,
    /// The runs' filters and pages, and the open segment's keys.
    pub key_runs: u64,
    /// Pending effects held in memory.
    pub pending_effects: u64,
    /// Pending timers.
    pub timers: u64,
    /// Audit marks, checkpoints, versioned records.
    pub other: u64,
}

impl IndexMemory {
    pub fn total(&self) -> u64 {
        self.streams
            + self.key_filters
            + self.key_runs
            + self.pending_effects
            + self.timers
            + self.other
    }
}

/// Audit entries per mark in [`Index::seq_marks`].
pub const SEQ_MARK_EVERY: u64 = 64;

/// A record that cannot follow what the log holds: the log is damaged (or was written by a
/// different program).
#[derive(Debug)]
pub struct Inconsistent(pub String);

impl Index {
    /// An empty index whose key runs go in `dir` (the segments' directory), its hashes keyed
    /// by `keys`.
    pub fn new(dir: &Path, effects_in_memory_max: usize, keys: &HashKeys) -> Self {
        Self {
            head: Head::default(),
            seq_marks: Vec::new(),
            streams: StreamTable::new(dir, NameHash(keys.hash128("streams"))),
            keys: KeyTable::new(dir, "idem", Gate::Filter, keys.hash64("idem")),
            keys_live: 0,
            keys_frontier: Loc::from_raw(0),
            keys_removed: BTreeSet::new(),
            timers: PrehashedMap::default(),
            timers_due: BTreeSet::new(),
            timer_hash: NameHash(keys.hash128("timers")),
            effects: KeyTable::new(dir, "effect", Gate::None, keys.hash64("effect")),
            pending: TransientMap::default(),
            effects_ready: BTreeSet::new(),
            effects_pending: 0,
            spilled_from: None,
            spilled_settled: HashSet::new(),
            effects_in_memory_max: effects_in_memory_max.max(1),
            effect_id_max: 0,
            versioned: BTreeMap::new(),
            checkpoints: Vec::new(),
            batch: 0,
        }
    }

    /// Bytes of memory the index holds, part by part, estimated from its structures' sizes.
    pub fn memory(&self) -> IndexMemory {
        let (key_filter, key_runs) = self.keys.memory_bytes();
        let (effect_filter, effect_runs) = self.effects.memory_bytes();
        IndexMemory {
            streams: self.streams.memory_bytes(),
            key_filters: key_filter + effect_filter,
            key_runs: key_runs + effect_runs + (self.keys_removed.len() * 24) as u64,
            pending_effects: (self.pending.capacity() * (8 + 16 + 1)
                + self.effects_ready.len() * 24
                + self.spilled_settled.capacity() * 9) as u64,
            timers: (self.timers.capacity() * (16 + 16 + 1) + self.timers_due.len() * 24) as u64,
            other: (self.seq_marks.capacity() * 8
                + self.checkpoints.capacity() * std::mem::size_of::<Checkpoint>()
                + self
                    .versioned
                    .keys()
                    .map(|(_, k)| k.len() + 24 + 16 + 24)
                    .sum::<usize>()) as u64,
        }
    }

    /// Whether the idempotency record at `loc` is still kept (neither swept nor removed).
    pub fn key_kept(&self, loc: Loc) -> bool {
        loc >= self.keys_frontier && !self.keys_removed.contains(&loc)
    }

    /// Whether the effect queued at `at` is pending (`at` must be where an effect was queued).
    pub fn effect_pending(&self, at: Loc) -> bool {
        self.pending.contains_key(&at)
            || (self.spilled_from.is_some_and(|from| at >= from)
                && !self.spilled_settled.contains(&at))
    }

    /// Moves spilled effects back to memory while it has room, in the order they were queued.
    fn refill_effects(&mut self) -> Result<(), Inconsistent> {
        let Some(from) = self.spilled_from else {
            return Ok(());
        };
        if self.pending.len() > self.effects_in_memory_max / 2 {
            return Ok(());
        }
        let spilled = self
            .effects
            .order_from(from, EFFECTS_REFILL_MAX)
            .map_err(|e| Inconsistent(e.to_string()))?;
        let mut next = None;
        for (at, not_before_ms) in &spilled {
            if self.pending.len() >= self.effects_in_memory_max {
                next = Some(*at);
                break;
            }
            if self.spilled_settled.remove(at) || self.pending.contains_key(at) {
                continue;
            }
            self.pending.insert(
                *at,
                EffectIndex {
                    attempts: 0,
                    next_attempt_ms: *not_before_ms,
                },
            );
            self.effects_ready.insert((*not_before_ms, *at));
        }
        self.spilled_from = match (next, spilled.last()) {
            (Some(at), _) => Some(at),
            (None, Some((last, _))) if spilled.len() == EFFECTS_REFILL_MAX => Some(last.next()),
            _ => None,
        };
        if self.spilled_from.is_none() {
            self.spilled_settled.clear();
        }
        Ok(())
    }

    /// The segment being written is closed: the keys of it leave memory for its runs.
    pub fn close_segment(&mut self) -> Result<(), marketgov_store::Error> {
        self.keys.close_segment()?;
        self.effects.close_segment()?;
        self.streams.close_segment()
    }

    /// Applies one durable record found at `loc`.
    pub fn apply(&mut self, record: &Record, loc: Loc) -> Result<(), Inconsistent> {
        match record {
            Record::Begin { .. } => {}
            Record::Event {
                seq,
                stream,
                version,
                prev,
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
                let prev = StreamPrev::resolve(*prev, loc.raw()).map_err(Inconsistent)?;
                let s = self.streams.get_or_insert(stream);
                if *version != u64::from(s.version) + 1 || prev != s.last_event().map(Loc::raw) {
                    return Err(Inconsistent(format!(
                        "{stream} version {version} does not follow version {} where it is",
                        s.version
                    )));
                }
                s.version = u32::try_from(*version)
                    .map_err(|_| Inconsistent(format!("{stream} has more than 2^32 events")))?;
                s.last = loc;
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
                let s = self.streams.get_or_insert(stream);
                if *version > u64::from(s.version) {
                    return Err(Inconsistent(format!(
                        "a snapshot of {stream} at version {version}, which is at {}",
                        s.version
                    )));
                }
                s.snapshot = loc;
            }
            Record::IdempotencyPut {
                tenant,
                key,
                created_at_ms,
                ..
            } => {
                let hash = self.keys.hash(&[tenant, key]);
                self.keys.insert(hash, None, loc, *created_at_ms)?;
                self.keys_live += 1;
            }
            Record::IdempotencyDelete { tenant, key, at } => {
                let at = Loc::from_raw(*at);
                if at >= loc || !self.key_kept(at) {
                    return Err(Inconsistent(format!(
                        "idempotency key {tenant}/{key} removed where no kept record is"
                    )));
                }
                self.keys_removed.insert(at);
                self.keys_live = self.keys_live.checked_sub(1).ok_or_else(|| {
                    Inconsistent(format!("idempotency key {tenant}/{key} removed from none"))
                })?;
            }
            Record::IdempotencySwept { before, passed } => {
                let before = Loc::from_raw(*before);
                if before < self.keys_frontier || before > loc {
                    return Err(Inconsistent(format!(
                        "an idempotency sweep to {} goes backwards or ahead of the log",
                        before.raw()
                    )));
                }
                let kept = self.keys_removed.split_off(&before);
                let removed = std::mem::replace(&mut self.keys_removed, kept).len() as u64;
                self.keys_live = passed
                    .checked_sub(removed)
                    .and_then(|swept| self.keys_live.checked_sub(swept))
                    .ok_or_else(|| {
                        Inconsistent(format!(
                            "an idempotency sweep passes {passed} records, more than are kept"
                        ))
                    })?;
                self.keys_frontier = before;
                self.keys.drop_before(before.segment());
            }
            Record::TimerSet {
                stream,
                kind,
                due_at_ms,
            } => {
                let k = self.timer_hash.of(&(stream, kind));
                if let Some(old) = self.timers.insert(k, (*due_at_ms, loc)) {
                    self.timers_due.remove(&old);
                }
                self.timers_due.insert((*due_at_ms, loc));
            }
            Record::TimerCancel { stream, kind } => {
                if let Some(old) = self.timers.remove(&self.timer_hash.of(&(stream, kind))) {
                    self.timers_due.remove(&old);
                }
            }
            Record::OutboxPut {
                id,
                effect_key,
                not_before_ms,
                ..
            } => {
                if *id != self.effect_id_max + 1 {
                    return Err(Inconsistent(format!(
                        "effect {effect_key} is row {id}, after row {}",
                        self.effect_id_max
                    )));
                }
                self.effect_id_max = *id;
                let hash = self.effects.hash(&[effect_key]);
                let ordinal = Ordinal::of_key(effect_key);
                self.effects.insert(hash, ordinal, loc, *not_before_ms)?;
                self.effects_pending += 1;
                if self.spilled_from.is_none() && self.pending.len() < self.effects_in_memory_max {
                    self.pending.insert(
                        loc,
                        EffectIndex {
                            attempts: 0,
                            next_attempt_ms: *not_before_ms,
                        },
                    );
                    self.effects_ready.insert((*not_before_ms, loc));
                } else if self.spilled_from.is_none() {
                    self.spilled_from = Some(loc);
                }
            }
            Record::OutboxDone { at, effect_key }
            | Record::OutboxDead { at, effect_key, .. }
            | Record::OutboxRetry { at, effect_key, .. } => {
                let at = Loc::from_raw(*at);
                if at >= loc || !self.effect_pending(at) {
                    return Err(Inconsistent(format!("effect {effect_key} is not pending")));
                }
                if let Some(e) = self.pending.get(&at) {
                    self.effects_ready.remove(&(e.next_attempt_ms, at));
                }
                if let Record::OutboxRetry {
                    attempts,
                    next_attempt_ms,
                    ..
                } = record
                {
                    // A spilled effect retried is held in memory from here on.
                    self.pending.insert(
                        at,
                        EffectIndex {
                            attempts: *attempts,
                            next_attempt_ms: *next_attempt_ms,
                        },
                    );
                    self.effects_ready.insert((*next_attempt_ms, at));
                } else {
                    if self.pending.remove(&at).is_none() {
                        self.spilled_settled.insert(at);
                    }
                    self.effects_pending =
                        self.effects_pending.checked_sub(1).ok_or_else(|| {
                            Inconsistent(format!("effect {effect_key} settled with none pending"))
                        })?;
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
                self.refill_effects()?;
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
