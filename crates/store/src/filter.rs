//! Bloom filters of 64-bit key hashes: "certainly not" or "maybe", in bounded memory. Used by
//! the engine (which keys the SQLite store certainly does not hold) and by the log-structured
//! store (which keys it must look up on disk at all).
//!
//! [`Bloom`] is one fixed-size filter. [`ScalableBloom`] is a list of them, each with twice the
//! capacity and a lower false-positive rate than the one before, a new one begun when the last
//! is full, until its memory bound: then the last one fills up and more answers become "maybe"
//! (slower for the caller, never wrong). Both take `&self` to insert (atomic bits), so readers
//! and one inserter need no lock around a stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Bits of one block: every bit of a key lies in one block of a 64-byte cache line, so a lookup
/// or an insert touches one line instead of one per hash (in the profile, the per-hash misses
/// and divisions of the unblocked layout made the filters 3 % of all CPU).
const BLOCK_BITS: u64 = 512;
const BLOCK_WORDS: usize = (BLOCK_BITS / 64) as usize;
/// Bits of a block's position taken per hash.
const BIT_INDEX_BITS: u32 = BLOCK_BITS.trailing_zeros();
/// Bit positions one 64-bit mix of the hash yields (a new mix after that many).
const POSITIONS_PER_MIX: u32 = 64 / BIT_INDEX_BITS;
/// Blocking costs some accuracy (keys crowd unevenly into blocks); this many more bits than the
/// textbook optimum keep the measured rate at or under the one asked for (see the tests).
const BLOCKED_BITS_FACTOR: f64 = 1.05;

/// One Bloom filter of fixed size, blocked: a key's bits all lie in one 512-bit block.
#[derive(Debug)]
pub struct Bloom {
    words: Box<[AtomicU64]>,
    blocks: u64,
    hashes: u32,
    capacity: u64,
    false_positives: f64,
    inserted: AtomicU64,
}

impl Bloom {
    /// A filter sized for `capacity` keys at the rate `false_positives` (0 < rate < 1).
    pub fn new(capacity: u64, false_positives: f64) -> Self {
        let ln2 = std::f64::consts::LN_2;
        // The textbook optimum, m = -n ln p / (ln 2)^2 bits and k = -log2 p hashes, with more
        // bits for the blocking.
        let bits = ((capacity.max(1) as f64) * -false_positives.ln() / (ln2 * ln2)
            * BLOCKED_BITS_FACTOR)
            .ceil() as u64;
        let blocks = bits.div_ceil(BLOCK_BITS).max(1);
        let hashes = (-false_positives.log2()).ceil().max(1.0) as u32;
        Self {
            words: (0..blocks as usize * BLOCK_WORDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            blocks,
            hashes,
            capacity,
            false_positives,
            inserted: AtomicU64::new(0),
        }
    }

    /// Its memory, in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * BLOCK_BITS / 8
    }

    /// Keys inserted.
    pub fn inserted(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }

    /// The words and masks of `hash`'s bits: its block from the hash's high bits (a
    /// multiply-shift, no division), the bits inside it from a remix of the whole hash, nine
    /// bits each.
    fn positions(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let block = ((u128::from(hash) * u128::from(self.blocks)) >> 64) as usize;
        let base = block * BLOCK_WORDS;
        let mut mixed = remix(hash);
        (0..self.hashes).map(move |i| {
            if i > 0 && i % POSITIONS_PER_MIX == 0 {
                mixed = remix(mixed);
            }
            let bit = (mixed >> ((i % POSITIONS_PER_MIX) * BIT_INDEX_BITS)) & (BLOCK_BITS - 1);
            (base + (bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// Adds a key's hash.
    pub fn insert(&self, hash: u64) {
        for (word, mask) in self.positions(hash) {
            self.words[word].fetch_or(mask, Ordering::Relaxed);
        }
        self.inserted.fetch_add(1, Ordering::Relaxed);
    }

    /// `false` only when `hash` was certainly never inserted.
    pub fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|(word, mask)| self.words[word].load(Ordering::Relaxed) & mask != 0)
    }
}

/// The splitmix64 finalizer: every output bit depends on every input bit.
fn remix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Keys the first stage of a [`ScalableBloom`] holds at its false-positive rate.
pub const FIRST_STAGE_KEYS: u64 = 1 << 18;
/// The first stage's false-positive rate; each next stage has [`NEXT_STAGE_RATE_FACTOR`] of the
/// previous one's, so the rate over all stages stays below about 3.3 %.
const FIRST_STAGE_FALSE_POSITIVES: f64 = 0.01;
const NEXT_STAGE_RATE_FACTOR: f64 = 0.7;

/// A filter that grows with the keys it is given, up to a memory bound.
#[derive(Debug)]
pub struct ScalableBloom {
    stages: RwLock<Vec<Bloom>>,
    bytes_max: u64,
}

impl ScalableBloom {
    /// An empty filter that uses at most `bytes_max` bytes over all its stages.
    pub fn new(bytes_max: u64) -> Self {
        Self {
            stages: RwLock::new(vec![Bloom::new(
                FIRST_STAGE_KEYS,
                FIRST_STAGE_FALSE_POSITIVES,
            )]),
            bytes_max,
        }
    }

    /// Adds a key's hash.
    pub fn insert(&self, hash: u64) {
        {
            let Ok(stages) = self.stages.read() else {
                return;
            };
            if let Some(last) = stages.last() {
                if last.inserted() < last.capacity || !self.may_grow(&stages) {
                    last.insert(hash);
                    return;
                }
            }
        }
        let Ok(mut stages) = self.stages.write() else {
            return;
        };
        // Another thread may have added the stage meanwhile.
        let full = stages.last().is_none_or(|l| l.inserted() >= l.capacity);
        if full && self.may_grow(&stages) {
            let (capacity, rate) = stages
                .last()
                .map_or((FIRST_STAGE_KEYS, FIRST_STAGE_FALSE_POSITIVES), |l| {
                    (l.capacity * 2, l.false_positives * NEXT_STAGE_RATE_FACTOR)
                });
            stages.push(Bloom::new(capacity, rate));
        }
        if let Some(last) = stages.last() {
            last.insert(hash);
        }
    }

    /// Whether a stage of twice the last one's capacity still fits in the memory bound.
    fn may_grow(&self, stages: &[Bloom]) -> bool {
        let used: u64 = stages.iter().map(Bloom::bytes).sum();
        let next = stages.last().map_or(0, |l| l.bytes() * 3);
        used + next <= self.bytes_max
    }

    /// `false` only when `hash` was certainly never inserted. A poisoned lock answers "maybe".
    pub fn may_contain(&self, hash: u64) -> bool {
        self.stages
            .read()
            .map_or(true, |stages| stages.iter().any(|s| s.may_contain(hash)))
    }

    /// Stages in use, their bytes, and the keys inserted.
    pub fn usage(&self) -> (usize, u64, u64) {
        self.stages.read().map_or((0, 0, 0), |s| {
            (
                s.len(),
                s.iter().map(Bloom::bytes).sum(),
                s.iter().map(Bloom::inserted).sum(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn h(i: u64) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(i)
    }

    #[test]
    fn every_inserted_hash_is_maybe_and_most_others_are_certainly_not() {
        let filter = ScalableBloom::new(32 << 20);
        let n = 3 * FIRST_STAGE_KEYS; // crosses into the second stage
        for i in 0..n {
            filter.insert(h(i));
        }
        let (stages, _, keys) = filter.usage();
        assert!(stages >= 2);
        assert_eq!(keys, n);
        assert!((0..n).all(|i| filter.may_contain(h(i))));
        let false_positives = (n..n + 100_000)
            .filter(|i| filter.may_contain(h(*i)))
            .count();
        assert!(false_positives < 5_000, "{false_positives} of 100000");
    }

    #[test]
    fn past_its_memory_bound_it_stops_growing_and_still_never_says_no_to_a_known_hash() {
        let filter = ScalableBloom::new(1 << 20);
        let n = 4 * FIRST_STAGE_KEYS;
        for i in 0..n {
            filter.insert(h(i));
        }
        assert!(filter.usage().1 <= 1 << 20, "{:?}", filter.usage());
        assert!((0..n).step_by(7).all(|i| filter.may_contain(h(i))));
    }

    #[test]
    fn a_fixed_filter_keeps_its_rate() {
        let bloom = Bloom::new(10_000, 0.01);
        for i in 0..10_000 {
            bloom.insert(h(i));
        }
        assert!((0..10_000).all(|i| bloom.may_contain(h(i))));
        let false_positives = (10_000..110_000)
            .filter(|i| bloom.may_contain(h(*i)))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100000");
    }

    #[test]
    fn blocked_filters_keep_the_rate_they_are_sized_for() {
        // At 1 %, 2 % (the log store's runs) and 0.5 % (a later stage), over 100,000 keys.
        for rate in [0.01, 0.02, 0.005] {
            let bloom = Bloom::new(100_000, rate);
            for i in 0..100_000 {
                bloom.insert(h(i));
            }
            assert!((0..100_000).all(|i| bloom.may_contain(h(i))));
            let measured = (100_000..1_100_000)
                .filter(|i| bloom.may_contain(h(*i)))
                .count() as f64
                / 1_000_000.0;
            assert!(measured <= rate * 1.1, "{measured} measured for {rate}");
        }
    }
}
