//! Hash maps for what has a bound of its own: a batch being built, a shard's share of the
//! stream cache, the requests in flight. They hash with foldhash (a fast hash keyed at random
//! per process) instead of the standard library's SipHash: in the profile, SipHash over stream
//! names and keys was a tenth of the engine's instructions. foldhash is only minimally resistant
//! to crafted collisions, so tables that grow with what is stored (the log store's index) keep
//! their keyed SipHash; in a bounded map, colliding keys cost at most a scan of that bound.

/// A map whose size is bounded by its owner (see the module doc).
pub type TransientMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A set whose size is bounded by its owner (see the module doc).
pub type TransientSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// An empty map with room for `capacity` entries.
pub fn map_with_capacity<K, V>(capacity: usize) -> TransientMap<K, V> {
    TransientMap::with_capacity_and_hasher(capacity, foldhash::fast::RandomState::default())
}
