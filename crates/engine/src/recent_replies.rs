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

use std::collections::VecDeque;

use marketgov_store::transient::TransientMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use marketgov_core::orchestrator::EventStatus;

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

/// A tenant and one of its keys.
type TenantKey = (Arc<str>, Arc<str>);

/// One tenant's answers by key, each with the generation it was inserted at.
type TenantAnswers = TransientMap<Arc<str>, (u64, RecentReply)>;

#[derive(Debug, Default)]
struct Entries {
    /// By tenant, then key: a lookup by borrowed `&str`s allocates nothing (it runs for every
    /// keyed request).
    /// Names are shared with `order` (one allocation per answer for its key, none for its
    /// tenant once the tenant is known).
    by_key: TransientMap<Arc<str>, TenantAnswers>,
    /// Answers held, all tenants together.
    held: usize,
    /// Keys in insertion order with the generation they were inserted at: a key answered again
    /// after its record expired is re-inserted, and only its newest generation is evicted.
    order: VecDeque<(TenantKey, u64)>,
    generation: u64,
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
            entries: Mutex::new(Entries::default()),
            answered: AtomicU64::new(0),
        }
    }

    /// Remembers an answer whose commit is durable.
    pub fn insert(&self, tenant: &str, key: &str, reply: RecentReply) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut e) = self.entries.lock() else {
            return; // a poisoned cache only costs reads
        };
        e.generation += 1;
        let generation = e.generation;
        // The tenant's map is looked up by the borrowed name: its name is allocated only once,
        // when the tenant's first answer enters, and shared from then on.
        let tenant: Arc<str> = match e.by_key.get_key_value(tenant) {
            Some((name, _)) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(tenant);
                e.by_key.insert(name.clone(), TransientMap::default());
                name
            }
        };
        let key: Arc<str> = Arc::from(key);
        e.order
            .push_back(((tenant.clone(), key.clone()), generation));
        let replaced = e
            .by_key
            .get_mut(&tenant)
            .and_then(|keys| keys.insert(key, (generation, reply)));
        if replaced.is_none() {
            e.held += 1;
        }
        while e.order.len() > self.capacity {
            let Some(((old_tenant, old_key), old_generation)) = e.order.pop_front() else {
                break;
            };
            let Some(keys) = e.by_key.get_mut(&old_tenant) else {
                continue;
            };
            if keys
                .get(&old_key)
                .is_some_and(|(g, _)| *g == old_generation)
            {
                keys.remove(&old_key);
                if keys.is_empty() {
                    e.by_key.remove(&old_tenant);
                }
                e.held -= 1;
            }
        }
        debug_assert!(e.held <= self.capacity);
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
        let Some((_, r)) = e.by_key.get(tenant).and_then(|keys| keys.get(key)) else {
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
        self.entries.lock().map(|e| e.held).unwrap_or(0)
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
        let json = |k: &str| {
            cache
                .replay("t", k, "events", &[7; 32], 80, 1_000)
                .unwrap()
                .map(|r| r.json())
        };
        assert_eq!(json("a").as_deref(), Some("a2"));
        assert_eq!((json("b"), json("c")), (None, None));
        assert_eq!(json("d").as_deref(), Some("d"));
        assert_eq!(json("e").as_deref(), Some("e"));
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
