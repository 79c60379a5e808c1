//! An in-memory filter of keys the store holds, so that a key never seen needs no read of the
//! store. The engine keeps two: idempotency keys (a request with a new key) and customer streams
//! (a new customer).
//!
//! Measured: the read that proves a key new is a cold B-tree walk (a WAL reader drops its page
//! cache whenever the log grew); in the bench the idempotency lookups cost about 10 % of CPU per
//! event and the loads of new customers about 5 %.
//!
//! The filter is a scalable Bloom filter ([`marketgov_store::filter::ScalableBloom`]). It
//! answers "maybe" or "certainly not", and "certainly not" is exact:
//! - every key claimed since the engine opened is added when it is claimed, before its record
//!   can be committed (a customer stream: when its shard first finds it empty, before its first
//!   event can be committed; only that shard writes it);
//! - every key stored before that is added by the scan started at open, which reads every
//!   record then stored (records are only removed, never moved, while it runs);
//! - until that scan has finished, every answer is "maybe".
//!
//! "Maybe" means: read the store, as without the filter. Expired and swept keys stay in the
//! filter until the next start; they only cost a read. Its memory is bounded by
//! [`KNOWN_KEYS_BYTES_MAX`]: past it no stage is added, the last one fills up and more answers
//! become "maybe" (slower, never wrong).

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use marketgov_store::filter::ScalableBloom;
use marketgov_store::{Error, Store};

/// Memory the filter may use, in bytes, over all its stages.
pub const KNOWN_KEYS_BYTES_MAX: u64 = 32 << 20;
/// Keys read from the store per page of the start-up scan.
pub const SCAN_PAGE_KEYS: usize = 10_000;

/// The filter.
#[derive(Debug)]
pub(crate) struct KnownKeys {
    /// `None`: not kept, because the store answers absent keys cheaply itself
    /// ([`Store::absent_keys_are_cheap`]); every answer is then "maybe".
    filter: Option<ScalableBloom>,
    /// Whether the start-up scan has finished (until then every answer is "maybe").
    loaded: AtomicBool,
    /// Answers "certainly not" given since start: reads saved.
    reads_saved: AtomicU64,
}

/// A cursor of a scan: the last key read.
pub(crate) type ScanCursor = (String, String);

/// One page of the scan of stored idempotency keys, in key order.
pub(crate) fn idempotency_key_page<S: Store + ?Sized>(
    store: &S,
    after: &ScanCursor,
    limit: usize,
) -> Result<(Vec<(String, String)>, ScanCursor), Error> {
    let keys = store.idempotency_keys(after, limit)?;
    let next = keys.last().cloned().unwrap_or_else(|| after.clone());
    Ok((keys, next))
}

/// One page of the scan of stored customer streams (as `("", stream)`), in name order.
pub(crate) fn customer_stream_page<S: Store + ?Sized>(
    store: &S,
    after: &ScanCursor,
    limit: usize,
) -> Result<(Vec<(String, String)>, ScanCursor), Error> {
    let names = store.streams(crate::shard::CUSTOMER_STREAM_PREFIX, &after.1, limit)?;
    let next = names
        .last()
        .map_or_else(|| after.clone(), |n| (String::new(), n.clone()));
    Ok((
        names.into_iter().map(|n| (String::new(), n)).collect(),
        next,
    ))
}

/// What the filter holds, for `/v1/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownKeysStats {
    /// Whether the start-up scan has finished.
    pub loaded: bool,
    /// Stages in use.
    pub stages: usize,
    /// Bytes of all stages.
    pub bytes: u64,
    /// Keys added (claimed since start, and found by the scan).
    pub keys: u64,
    /// Lookups answered "certainly new" without reading the store, since start.
    pub reads_saved: u64,
}

fn key_hash(tenant: &str, key: &str) -> u64 {
    // SipHash with fixed keys: the same key always lands on the same bits within this process.
    // A crafted collision can only make a key look "maybe known", which costs a read.
    let mut h = DefaultHasher::new();
    tenant.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl KnownKeys {
    /// An empty filter that answers "maybe" until [`KnownKeys::load_from`] has finished.
    pub fn new() -> Self {
        Self::with_bytes_max(KNOWN_KEYS_BYTES_MAX)
    }

    fn with_bytes_max(bytes_max: u64) -> Self {
        Self {
            filter: Some(ScalableBloom::new(bytes_max)),
            loaded: AtomicBool::new(false),
            reads_saved: AtomicU64::new(0),
        }
    }

    /// No filter: every answer is "maybe" (for a store that answers absent keys cheaply).
    pub fn not_kept() -> Self {
        Self {
            filter: None,
            loaded: AtomicBool::new(false),
            reads_saved: AtomicU64::new(0),
        }
    }

    /// A filter for `store`, loaded from it in the background; or none when the store needs
    /// none.
    pub fn for_store<S, C, F>(store: &Arc<S>, start: C, page_keys: usize, page: F) -> Arc<Self>
    where
        S: Store + ?Sized + Send + Sync + 'static,
        C: Send + 'static,
        F: Fn(&S, &C, usize) -> Result<(Vec<(String, String)>, C), Error> + Send + 'static,
    {
        if store.absent_keys_are_cheap() {
            return Arc::new(Self::not_kept());
        }
        let filter = Arc::new(Self::new());
        filter.load_from(store, start, page_keys, page);
        filter
    }

    /// Adds a key. Call before its record can be committed.
    pub fn insert(&self, tenant: &str, key: &str) {
        if let Some(filter) = &self.filter {
            filter.insert(key_hash(tenant, key));
        }
    }

    /// `false` only when the store certainly holds no record for the key.
    pub fn may_contain(&self, tenant: &str, key: &str) -> bool {
        if !self.loaded.load(Ordering::Acquire) {
            return true;
        }
        let Some(filter) = &self.filter else {
            return true;
        };
        let maybe = filter.may_contain(key_hash(tenant, key));
        if !maybe {
            self.reads_saved.fetch_add(1, Ordering::Relaxed);
        }
        maybe
    }

    /// Reads every key the store holds into the filter, a page at a time, then marks it loaded:
    /// the first page at once (a small store needs no more), the rest on a background thread that
    /// holds the store only while it reads a page. `page(store, after, limit)` answers up to
    /// `limit` keys after the cursor `after`, and the cursor after them. Stops quietly (every
    /// answer then stays "maybe") when the store is gone or a read fails.
    pub fn load_from<S, C, F>(self: &Arc<Self>, store: &Arc<S>, start: C, page_keys: usize, page: F)
    where
        S: ?Sized + Send + Sync + 'static,
        C: Send + 'static,
        F: Fn(&S, &C, usize) -> Result<(Vec<(String, String)>, C), Error> + Send + 'static,
    {
        let page_keys = page_keys.max(1);
        let Some(next) = self.load_page(store.as_ref(), &start, page_keys, &page) else {
            return;
        };
        let filter = self.clone();
        let store = Arc::downgrade(store);
        let scan = std::thread::Builder::new()
            .name("marketgov-known-keys".into())
            .spawn(move || {
                let mut after = next;
                while let Some(store) = store.upgrade() {
                    match filter.load_page(store.as_ref(), &after, page_keys, &page) {
                        Some(next) => after = next,
                        None => return,
                    }
                }
            });
        // Without the thread every answer stays "maybe": slower, still right.
        drop(scan);
    }

    /// Reads one page into the filter: the cursor to go on from, or `None` when the scan is over
    /// (finished, and then marked loaded; or failed).
    fn load_page<S: ?Sized, C, F>(
        &self,
        store: &S,
        after: &C,
        page_keys: usize,
        page: &F,
    ) -> Option<C>
    where
        F: Fn(&S, &C, usize) -> Result<(Vec<(String, String)>, C), Error>,
    {
        let (keys, next) = page(store, after, page_keys).ok()?;
        for (scope, key) in &keys {
            self.insert(scope, key);
        }
        if keys.len() < page_keys {
            self.loaded.store(true, Ordering::Release);
            return None;
        }
        Some(next)
    }

    /// What the filter holds.
    pub fn stats(&self) -> KnownKeysStats {
        let (stages, bytes, keys) = self.filter.as_ref().map_or((0, 0, 0), |f| f.usage());
        KnownKeysStats {
            loaded: self.loaded.load(Ordering::Acquire),
            stages,
            bytes,
            keys,
            reads_saved: self.reads_saved.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use marketgov_store::{Commit, IdempotencyRecord};
    use marketgov_store_sqlite::{Options, SqliteStore};

    fn loaded(filter: &KnownKeys) {
        filter.loaded.store(true, Ordering::Release);
    }

    #[test]
    fn a_key_is_maybe_until_loaded_then_only_inserted_keys_are() {
        let filter = KnownKeys::new();
        assert!(filter.may_contain("t", "never-seen"));
        loaded(&filter);
        filter.insert("t", "seen");
        assert!(filter.may_contain("t", "seen"));
        // The same key under another tenant is another key.
        let false_positives = (0..10_000u64)
            .filter(|i| filter.may_contain("t", &format!("other-{i}")))
            .count();
        assert!(false_positives < 500, "{false_positives} of 10000");
        assert!(filter.stats().reads_saved >= 9_500);
    }

    /// A store holding `commits`, each acknowledged.
    fn store_with(
        commits: impl IntoIterator<Item = Commit>,
    ) -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(Options::new(dir.path())).unwrap());
        for commit in commits {
            store
                .commit(commit)
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        (dir, store)
    }

    /// A filter loaded from `store` by `page`, `page_keys` at a time, once its scan has finished.
    fn loaded_from<F>(store: &Arc<SqliteStore>, page_keys: usize, page: F) -> Arc<KnownKeys>
    where
        F: Fn(
                &SqliteStore,
                &ScanCursor,
                usize,
            ) -> Result<(Vec<(String, String)>, ScanCursor), Error>
            + Send
            + 'static,
    {
        let filter = Arc::new(KnownKeys::new());
        filter.load_from(store, ScanCursor::default(), page_keys, page);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !filter.stats().loaded {
            assert!(
                std::time::Instant::now() < deadline,
                "the scan never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        filter
    }

    #[test]
    fn loading_reads_every_stored_key_across_pages_on_a_background_thread() {
        let (_dir, store) = store_with((0..50).map(|i| Commit {
            idempotency: vec![IdempotencyRecord {
                tenant: "t".into(),
                key: format!("stored-{i}"),
                operation: "events".into(),
                fingerprint: [1; 32],
                response: b"{}".to_vec(),
                created_at_ms: 0,
            }],
            ..Commit::default()
        }));
        let filter = loaded_from(&store, 7, idempotency_key_page::<SqliteStore>);
        for i in 0..50 {
            assert!(
                filter.may_contain("t", &format!("stored-{i}")),
                "stored-{i}"
            );
        }
        assert_eq!(filter.stats().keys, 50);
        assert!(!filter.may_contain("t", "fresh"));
    }

    #[test]
    fn loading_by_name_pages_through_every_stored_stream() {
        let (_dir, store) = store_with((0..20).map(|i| Commit {
            events: vec![marketgov_store::EventWrite {
                stream: format!("customer:t/c{i}"),
                stream_version: 1,
                event_id: format!("e{i}"),
                at_ms: 0,
                body: b"{}".to_vec(),
            }],
            ..Commit::default()
        }));
        let filter = loaded_from(&store, 3, customer_stream_page::<SqliteStore>);
        assert_eq!(filter.stats().keys, 20);
        for i in 0..20 {
            assert!(filter.may_contain("", &format!("customer:t/c{i}")));
        }
        assert!(!filter.may_contain("", "customer:t/new"));
    }
}
