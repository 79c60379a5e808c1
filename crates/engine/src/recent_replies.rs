//! The answers of the most recent keyed requests, kept in memory so that a retry soon after the
//! first request (the usual case: a client timeout, an at-least-once delivery) is answered
//! without two store reads (the idempotency record, then the logged result).
//!
//! It only ever answers what the store would: an answer enters once its commit is durable (never
//! before), it is the same text the first caller received (byte for byte), and the same rules
//! apply as to a stored record: another operation or other content is [`Error::KeyReused`], and
//! a record older than the idempotency window is not answered (the store path decides whether
//! it is replaced). Bounded by [`RECENT_REPLIES_MAX`] and by the store's own bound on records
//! (`idempotency_keys_max`): the cache holds only the newest records, which the store's sweep
//! by count never removes first. A miss is never an answer: the caller reads the store, as before.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use marketgov_core::orchestrator::EventStatus;
use marketgov_store::transient::{map_with_capacity, TransientMap};

use crate::{Error, Reply};

/// Answers kept, at most (about 1-2 KiB each: a few MiB in all).
pub const RECENT_REPLIES_MAX: usize = 4096;

/// A durable keyed answer.
#[derive(Debug)]
pub(crate) struct RecentReply {
    pub operation: &'static str,
    pub fingerprint: [u8; 32],
    pub created_at_ms: i64,
    pub status: EventStatus,
    /// The decision's result (taken over from the first answer, not copied) and its receipt:
    /// a replay writes the same text from them that the first caller received.
    pub result: Arc<String>,
    pub receipt: Option<(u64, marketgov_audit::Hash, marketgov_audit::Hash)>,
}

/// One answer and whose it is.
#[derive(Debug)]
struct Slot {
    /// Kept from answer to answer (cleared and refilled): a slot's names cost no allocation
    /// once they have grown to a key's length.
    tenant: String,
    key: String,
    /// The hash of both names (its entry in `newest`), kept so the slot's leaving needs none.
    hash: u64,
    generation: u64,
    reply: RecentReply,
}

/// The answers in a ring: answer `g` (counting from 1) sits in slot `(g - 1) % capacity` until
/// answer `g + capacity` takes its place, so the oldest leaves first with nothing to search, and a
/// slot's names and the ring itself are reused rather than allocated and freed per answer (in
/// the profile, the maps of names and the queue this replaced were 4 % of the CPU of a run).
#[derive(Debug)]
struct Entries {
    slots: Vec<Slot>,
    /// The generation of the newest answer of each `(tenant, key)`, by a hash of both: a slot
    /// whose generation is not its key's newest holds an answer replaced since (not counted,
    /// never answered). Two keys with one hash (about 2^-64 per pair) share an entry: the older
    /// one's answer is then a miss, which the store answers as always.
    newest: TransientMap<u64, u64>,
    generation: u64,
}

impl Entries {
    fn hash(&self, tenant: &str, key: &str) -> u64 {
        // The map's own keyed hasher, applied to both names.
        self.newest.hasher().hash_one((tenant, key))
    }

    /// The newest answer of `(tenant, key)`, if held.
    fn get(&self, tenant: &str, key: &str, capacity: usize) -> Option<&RecentReply> {
        let generation = *self.newest.get(&self.hash(tenant, key))?;
        let slot = self.slots.get(slot_of(generation, capacity)?)?;
        (slot.generation == generation && slot.tenant == tenant && slot.key == key)
            .then_some(&slot.reply)
    }
}

/// Where answer `generation` (from 1) sits: the ring fills from slot 0.
fn slot_of(generation: u64, capacity: usize) -> Option<usize> {
    let capacity = u64::try_from(capacity).ok().filter(|c| *c > 0)?;
    usize::try_from(generation.checked_sub(1)? % capacity).ok()
}

/// The newest durable keyed answers, by `(tenant, key)`.
#[derive(Debug)]
pub(crate) struct RecentReplies {
    capacity: usize,
    entries: Mutex<Entries>,
    /// Repeats answered from here since start.
    answered: AtomicU64,
}

impl RecentReplies {
    /// At most `capacity` answers (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(Entries {
                slots: Vec::with_capacity(capacity),
                newest: map_with_capacity(capacity),
                generation: 0,
            }),
            answered: AtomicU64::new(0),
        }
    }

    /// Remembers an answer whose commit is durable.
    pub fn insert(&self, tenant: &str, key: &str, reply: RecentReply) {
        let Ok(mut guard) = self.entries.lock() else {
            return; // a poisoned cache only costs reads
        };
        let e = &mut *guard;
        let Some(at) = slot_of(e.generation + 1, self.capacity) else {
            return; // a capacity of 0 keeps nothing
        };
        e.generation += 1;
        let generation = e.generation;
        let hash = e.hash(tenant, key);
        match e.slots.get_mut(at) {
            Some(slot) => {
                // The oldest answer leaves, unless its key has been answered again since.
                if e.newest.get(&slot.hash) == Some(&slot.generation) {
                    e.newest.remove(&slot.hash);
                }
                slot.tenant.clear();
                slot.tenant.push_str(tenant);
                slot.key.clear();
                slot.key.push_str(key);
                slot.hash = hash;
                slot.generation = generation;
                slot.reply = reply;
            }
            None => e.slots.push(Slot {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                hash,
                generation,
                reply,
            }),
        }
        e.newest.insert(hash, generation);
        debug_assert!(e.slots.len() <= self.capacity && e.newest.len() <= e.slots.len());
    }

    /// The stored answer to a repeat of `(tenant, key)`, marked as a replay: `Ok(None)` when the
    /// cache does not hold it or its record is past the window (the store decides then);
    /// [`Error::KeyReused`] when it was used for another operation or other content.
    pub fn replay(
        &self,
        tenant: &str,
        key: &str,
        operation: &'static str,
        fingerprint: &[u8; 32],
        now_ms: i64,
        window_ms: i64,
    ) -> Result<Option<Reply>, Error> {
        let Ok(e) = self.entries.lock() else {
            return Ok(None);
        };
        let Some(r) = e.get(tenant, key, self.capacity) else {
            return Ok(None);
        };
        if now_ms - r.created_at_ms >= window_ms {
            return Ok(None);
        }
        if r.operation != operation || r.fingerprint != *fingerprint {
            return Err(Error::KeyReused {
                key: key.to_owned(),
            });
        }
        self.answered.fetch_add(1, Relaxed);
        Ok(Some(Reply::new(
            r.status,
            r.result.clone(),
            r.receipt,
            true,
        )))
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.newest.len()).unwrap_or(0)
    }

    /// Repeats answered from memory since start.
    pub fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn answer(created_at_ms: i64, json: &str) -> RecentReply {
        RecentReply {
            operation: "events",
            fingerprint: [7; 32],
            created_at_ms,
            status: EventStatus::Completed,
            result: std::sync::Arc::new(json.to_owned()),
            receipt: None,
        }
    }

    #[test]
    fn a_repeat_gets_the_first_answer_marked_as_a_replay() {
        let cache = RecentReplies::new(8);
        cache.insert("t", "k", answer(1_000, r#"{"a":1}"#));
        let reply = cache
            .replay("t", "k", "events", &[7; 32], 2_000, 10_000)
            .unwrap()
            .unwrap();
        assert_eq!(reply.json(), r#"{"a":1}"#);
        assert!(reply.replayed);
        assert_eq!(reply.status, EventStatus::Completed);
        assert_eq!(cache.answered(), 1);
        // Another tenant's key of the same name is not this one.
        assert!(cache
            .replay("u", "k", "events", &[7; 32], 2_000, 10_000)
            .unwrap()
            .is_none());
    }

    #[test]
    fn other_content_or_operation_is_key_reused_and_an_expired_record_is_left_to_the_store() {
        let cache = RecentReplies::new(8);
        cache.insert("t", "k", answer(1_000, "{}"));
        assert!(matches!(
            cache.replay("t", "k", "events", &[8; 32], 2_000, 10_000),
            Err(Error::KeyReused { .. })
        ));
        assert!(matches!(
            cache.replay("t", "k", "catalog", &[7; 32], 2_000, 10_000),
            Err(Error::KeyReused { .. })
        ));
        assert!(cache
            .replay("t", "k", "events", &[7; 32], 11_000, 10_000)
            .unwrap()
            .is_none());
    }

    /// The JSON of tenant `t`'s answer to `key` at `now_ms`, if the cache answers.
    fn replayed_json(cache: &RecentReplies, key: &str, now_ms: i64) -> Option<String> {
        cache
            .replay("t", key, "events", &[7; 32], now_ms, 1_000)
            .unwrap()
            .map(|r| r.json())
    }

    #[test]
    fn the_oldest_answers_leave_first_and_a_reinserted_key_keeps_its_newest() {
        let cache = RecentReplies::new(3);
        for k in ["a", "b", "c"] {
            cache.insert("t", k, answer(0, k));
        }
        // "a" expired and was answered again: its new record is the newest.
        cache.insert("t", "a", answer(50, "a2"));
        cache.insert("t", "d", answer(60, "d"));
        cache.insert("t", "e", answer(70, "e"));
        assert_eq!(cache.len(), 3);
        let json = |k: &str| replayed_json(&cache, k, 80);
        assert_eq!(json("a").as_deref(), Some("a2"));
        assert_eq!((json("b"), json("c")), (None, None));
        assert_eq!(json("d").as_deref(), Some("d"));
        assert_eq!(json("e").as_deref(), Some("e"));
    }

    #[test]
    fn an_answer_replaced_while_held_does_not_take_its_successor_with_it_when_it_leaves() {
        let cache = RecentReplies::new(3);
        cache.insert("t", "a", answer(0, "a1"));
        cache.insert("t", "a", answer(10, "a2"));
        cache.insert("t", "b", answer(20, "b"));
        assert_eq!(cache.len(), 2);
        let json = |k: &str| replayed_json(&cache, k, 30);
        // "c" takes the slot of "a"'s first answer: its second stays.
        cache.insert("t", "c", answer(30, "c"));
        assert_eq!(json("a").as_deref(), Some("a2"));
        assert_eq!(cache.len(), 3);
        // "d" takes the slot of "a"'s second answer: "a" is gone.
        cache.insert("t", "d", answer(40, "d"));
        assert_eq!(json("a"), None);
        assert_eq!(
            ["b", "c", "d"].map(json),
            ["b", "c", "d"].map(|k| Some(k.to_owned()))
        );
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing() {
        let cache = RecentReplies::new(0);
        cache.insert("t", "k", answer(0, "{}"));
        assert!(cache
            .replay("t", "k", "events", &[7; 32], 1, 1_000)
            .unwrap()
            .is_none());
    }
}
