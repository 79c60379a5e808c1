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
    shape: Shape,
    capacity: u64,
    false_positives: f64,
    inserted: AtomicU64,
}

/// How a filter's bits are laid out: its blocks, and the bits a key sets in its block.
#[derive(Debug, Clone, Copy)]
struct Shape {
    blocks: u64,
    hashes: u32,
}

impl Shape {
    /// Sized for `capacity` keys at the rate `false_positives` (0 < rate < 1).
    fn new(capacity: u64, false_positives: f64) -> Self {
        let ln2 = std::f64::consts::LN_2;
        // The textbook optimum, m = -n ln p / (ln 2)^2 bits and k = -log2 p hashes, with more
        // bits for the blocking.
        let bits = ((capacity.max(1) as f64) * -false_positives.ln() / (ln2 * ln2)
            * BLOCKED_BITS_FACTOR)
            .ceil() as u64;
        Self {
            blocks: bits.div_ceil(BLOCK_BITS).max(1),
            hashes: (-false_positives.log2()).ceil().max(1.0) as u32,
        }
    }

    /// The block of `hash`: from its high bits, by a multiply-shift (no division).
    fn block(self, hash: u64) -> usize {
        ((u128::from(hash) * u128::from(self.blocks)) >> 64) as usize
    }

    /// The positions of `hash`'s bits in the whole filter: its block's first bit plus each of
    /// [`Shape::bits`].
    fn positions(self, hash: u64) -> impl Iterator<Item = usize> {
        let base = self.block(hash) * BLOCK_BITS as usize;
        self.bits(hash).map(move |bit| base + bit as usize)
    }

    /// The positions of `hash`'s bits inside its block: from a remix of the whole hash, nine
    /// bits each.
    fn bits(self, hash: u64) -> impl Iterator<Item = u64> {
        let mut mixed = remix(hash);
        (0..self.hashes).map(move |i| {
            if i > 0 && i % POSITIONS_PER_MIX == 0 {
                mixed = remix(mixed);
            }
            (mixed >> ((i % POSITIONS_PER_MIX) * BIT_INDEX_BITS)) & (BLOCK_BITS - 1)
        })
    }
}

impl Bloom {
    /// A filter sized for `capacity` keys at the rate `false_positives` (0 < rate < 1).
    pub fn new(capacity: u64, false_positives: f64) -> Self {
        let shape = Shape::new(capacity, false_positives);
        Self {
            words: (0..shape.blocks as usize * BLOCK_WORDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            shape,
            capacity,
            false_positives,
            inserted: AtomicU64::new(0),
        }
    }

    /// Its memory, in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.blocks * BLOCK_BITS / 8
    }

    /// Keys inserted.
    pub fn inserted(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }

    /// The words and masks of `hash`'s bits.
    fn positions(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let base = self.shape.block(hash) * BLOCK_WORDS;
        self.shape
            .bits(hash)
            .map(move |bit| (base + (bit / 64) as usize, 1u64 << (bit % 64)))
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

/// Layers a [`StackedBloom`] holds at most (its answer is one bit per layer of a `u64`).
pub const STACKED_LAYERS_MAX: usize = 64;
/// Layers a [`StackedBloom`] has room for at first; the room doubles as it fills.
const STACKED_WIDTH_MIN: u32 = 8;

/// The filters of several sets of keys of about the same size (the keys of one closed segment
/// each), bit-sliced: every bit position of every block holds one bit per layer, side by side.
/// Asking which sets may hold a key reads the key's few bit positions once and ANDs them, which
/// answers for every layer at once; separate filters cost one random cache miss each (with a
/// filter per closed segment, a lookup of a new key at 10^7 events missed the cache 75 times),
/// and filters stacked block by block still read one cache line per layer.
///
/// Every layer has the shape the stack was made for; a layer of more keys than that has a
/// higher false-positive rate (the caller starts a new stack for sets much larger or smaller).
/// Room for layers starts at [`STACKED_WIDTH_MIN`] and doubles when full (a copy of the stack),
/// so it holds at most twice the memory of its layers, or that minimum. Layers are added, never
/// changed; the stack is not shared between threads while it grows.
#[derive(Debug)]
pub struct StackedBloom {
    shape: Shape,
    capacity: u64,
    layers: usize,
    /// Bits per position: one per layer of room (a power of two, 8 to 64; 0 before the first).
    width: u32,
    /// Position `j` of block `b` (position `p = b * 512 + j`) is the `width`-bit field `p` of
    /// these words, packed `64 / width` to a word: bit `l` of it is layer `l`'s bit.
    words: Vec<u64>,
}

impl StackedBloom {
    /// An empty stack whose layers are sized for `capacity` keys each at `false_positives`.
    pub fn new(capacity: u64, false_positives: f64) -> Self {
        Self {
            shape: Shape::new(capacity, false_positives),
            capacity,
            layers: 0,
            width: 0,
            words: Vec::new(),
        }
    }

    /// The keys per layer it was sized for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Its memory, in bytes.
    pub fn bytes(&self) -> u64 {
        (self.words.capacity() * 8) as u64
    }

    fn positions(&self) -> usize {
        self.shape.blocks as usize * BLOCK_BITS as usize
    }

    /// The field of position `p` at `width`: its word and its shift in it. `width` is a power
    /// of two (8 to 64), so the fields per word are too: shifts and masks, not a division (this
    /// runs for every bit of every lookup, and for every bit of a layer put back at open).
    fn field(p: usize, width: u32) -> (usize, u32) {
        debug_assert!(width.is_power_of_two() && width <= 64);
        let per_word_log2 = 6 - width.trailing_zeros();
        let in_word = (p & ((1 << per_word_log2) - 1)) as u32;
        (p >> per_word_log2, in_word << width.trailing_zeros())
    }

    /// Makes room for `layers` layers at once (at most [`STACKED_LAYERS_MAX`]), so that
    /// putting back a stack of known size does not copy it at every doubling.
    pub fn reserve_layers(&mut self, layers: usize) {
        let wanted = (layers.min(STACKED_LAYERS_MAX) as u32).max(1);
        if self.layers == 0 && self.width < wanted {
            // Nothing to copy: the room is made at its final width.
            let width = wanted.next_power_of_two().max(STACKED_WIDTH_MIN);
            self.words = vec![0u64; self.positions().div_ceil((64 / width) as usize)];
            self.width = width;
        }
        while self.width < wanted {
            self.widen();
        }
    }

    /// Its bits as they are in memory, `(width, words)`, to be kept whole and put back by
    /// [`StackedBloom::from_parts`] (cheaper than layer by layer: no bit is moved).
    pub fn parts(&self) -> (u32, &[u64]) {
        (self.width, &self.words)
    }

    /// A stack made for `capacity` and `false_positives` holding `layers` layers, from what
    /// [`StackedBloom::parts`] gave; `None` when they are not of that shape (a width that is
    /// not a power of two from 8 to 64 or too narrow for the layers, or another word count).
    pub fn from_parts(
        capacity: u64,
        false_positives: f64,
        layers: usize,
        width: u32,
        words: Vec<u64>,
    ) -> Option<Self> {
        let mut stack = Self::new(capacity, false_positives);
        if layers == 0 {
            return words.is_empty().then_some(stack);
        }
        let fits = width.is_power_of_two()
            && (STACKED_WIDTH_MIN..=64).contains(&width)
            && layers <= width as usize
            && words.len() == stack.positions().div_ceil((64 / width) as usize);
        if !fits {
            return None;
        }
        stack.width = width;
        stack.words = words;
        stack.layers = layers;
        Some(stack)
    }

    /// Room for twice the layers (or the first [`STACKED_WIDTH_MIN`]): every field copied
    /// into one twice as wide.
    fn widen(&mut self) {
        let width = (self.width * 2).max(STACKED_WIDTH_MIN);
        let positions = self.positions();
        let mut words = vec![0u64; positions.div_ceil((64 / width) as usize)];
        if self.width > 0 {
            let mask = field_mask(self.width);
            for p in 0..positions {
                let (w, shift) = Self::field(p, self.width);
                let value = (self.words[w] >> shift) & mask;
                let (to, to_shift) = Self::field(p, width);
                words[to] |= value << to_shift;
            }
        }
        self.words = words;
        self.width = width;
    }

    /// Adds a layer holding `hashes`; answers its number, or `None` (nothing changed) when the
    /// stack has [`STACKED_LAYERS_MAX`] layers.
    pub fn push_layer(&mut self, hashes: impl IntoIterator<Item = u64>) -> Option<usize> {
        let layer = self.layers;
        if layer >= STACKED_LAYERS_MAX {
            return None;
        }
        if layer as u32 >= self.width {
            self.widen();
        }
        for hash in hashes {
            for p in self.shape.positions(hash) {
                let (w, shift) = Self::field(p, self.width);
                self.words[w] |= 1 << (shift + layer as u32);
            }
        }
        self.layers = layer + 1;
        Some(layer)
    }

    /// Words of a layer's bitmap ([`StackedBloom::layer_bits`]): one bit per position.
    pub fn layer_words(&self) -> usize {
        self.positions().div_ceil(64)
    }

    /// Layer `layer`'s bits as a bitmap of the stack's positions (position `p` is bit `p % 64`
    /// of word `p / 64`), to be kept on disk and put back by [`StackedBloom::push_layer_bits`]
    /// into a stack made with the same capacity and rate. `None` for a layer it does not have.
    pub fn layer_bits(&self, layer: usize) -> Option<Vec<u64>> {
        if layer >= self.layers {
            return None;
        }
        let mut bits = vec![0u64; self.layer_words()];
        for p in 0..self.positions() {
            let (w, shift) = Self::field(p, self.width);
            if (self.words[w] >> (shift + layer as u32)) & 1 == 1 {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        Some(bits)
    }

    /// The bitmap a layer holding `hashes` would have ([`StackedBloom::layer_bits`] after
    /// [`StackedBloom::push_layer`]), without adding it: one pass over the hashes.
    pub fn bitmap_of(&self, hashes: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut bits = vec![0u64; self.layer_words()];
        for hash in hashes {
            for p in self.shape.positions(hash) {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        bits
    }

    /// Adds a layer from the bitmap [`StackedBloom::layer_bits`] gave; answers its number, or
    /// `None` (nothing changed) when the stack has [`STACKED_LAYERS_MAX`] layers or the bitmap
    /// is not of this stack's shape (another length: positions come in whole 512-bit blocks,
    /// so every bit of a bitmap of the right length is a position).
    pub fn push_layer_bits(&mut self, bits: &[u64]) -> Option<usize> {
        let layer = self.layers;
        debug_assert_eq!(self.positions() % 64, 0);
        if layer >= STACKED_LAYERS_MAX || bits.len() != self.layer_words() {
            return None;
        }
        if layer as u32 >= self.width {
            self.widen();
        }
        for (i, word) in bits.iter().enumerate() {
            let mut rest = *word;
            while rest != 0 {
                let p = i * 64 + rest.trailing_zeros() as usize;
                let (w, shift) = Self::field(p, self.width);
                self.words[w] |= 1 << (shift + layer as u32);
                rest &= rest - 1;
            }
        }
        self.layers = layer + 1;
        Some(layer)
    }

    /// Bit `l` set: layer `l` may hold `hash`; clear: it certainly does not. `0` for none.
    pub fn may_contain(&self, hash: u64) -> u64 {
        if self.layers == 0 {
            return 0;
        }
        let mask = field_mask(self.width);
        let mut maybe = u64::MAX >> (64 - self.layers);
        for p in self.shape.positions(hash) {
            let (w, shift) = Self::field(p, self.width);
            maybe &= self.words.get(w).map_or(0, |word| (word >> shift) & mask);
        }
        maybe
    }
}

/// The low `width` bits set.
fn field_mask(width: u32) -> u64 {
    u64::MAX >> (64 - width)
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

    /// Its stages as `(keys inserted, words)`, oldest first, to be kept and put back by
    /// [`ScalableBloom::from_stages`]. A poisoned lock answers none.
    pub fn stages(&self) -> Vec<(u64, Vec<u64>)> {
        self.stages.read().map_or_else(
            |_| Vec::new(),
            |stages| {
                stages
                    .iter()
                    .map(|b| {
                        let words = b.words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
                        (b.inserted(), words)
                    })
                    .collect()
            },
        )
    }

    /// A filter of at most `bytes_max` holding the stages [`ScalableBloom::stages`] gave (each
    /// stage's size follows from its place, as when it was added); `None` when they do not fit:
    /// no stage, a stage of another size, or more than `bytes_max` in all.
    pub fn from_stages(bytes_max: u64, kept: &[(u64, Vec<u64>)]) -> Option<Self> {
        let (mut capacity, mut rate) = (FIRST_STAGE_KEYS, FIRST_STAGE_FALSE_POSITIVES);
        let mut stages = Vec::with_capacity(kept.len());
        for (inserted, words) in kept {
            let bloom = Bloom::new(capacity, rate);
            if bloom.words.len() != words.len() {
                return None;
            }
            for (to, from) in bloom.words.iter().zip(words) {
                to.store(*from, Ordering::Relaxed);
            }
            bloom.inserted.store(*inserted, Ordering::Relaxed);
            stages.push(bloom);
            capacity *= 2;
            rate *= NEXT_STAGE_RATE_FACTOR;
        }
        let bytes: u64 = stages.iter().map(Bloom::bytes).sum();
        if stages.is_empty() || bytes > bytes_max {
            return None;
        }
        Some(Self {
            stages: RwLock::new(stages),
            bytes_max,
        })
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
    fn a_field_is_where_the_division_puts_it() {
        for width in [8u32, 16, 32, 64] {
            let per_word = (64 / width) as usize;
            for p in 0..10_000 {
                let expected = (p / per_word, (p % per_word) as u32 * width);
                assert_eq!(
                    StackedBloom::field(p, width),
                    expected,
                    "width {width}, p {p}"
                );
            }
        }
    }

    #[test]
    fn a_layer_taken_out_as_bits_and_put_back_answers_as_before() {
        let mut stack = StackedBloom::new(5_000, 0.005);
        for layer in 0..12u64 {
            stack.push_layer((0..5_000).map(|i| h(layer * 1_000_000 + i)));
        }
        // Put back in another order, into a stack of the same shape: every answer moves with
        // its layer.
        let order = [3usize, 0, 11, 7];
        let mut copy = StackedBloom::new(5_000, 0.005);
        copy.reserve_layers(order.len());
        for layer in 0..12u64 {
            let of = stack.bitmap_of((0..5_000).map(|i| h(layer * 1_000_000 + i)));
            assert_eq!(Some(of), stack.layer_bits(layer as usize));
        }
        for &layer in &order {
            let bits = stack.layer_bits(layer).unwrap();
            assert_eq!(bits.len(), stack.layer_words());
            copy.push_layer_bits(&bits).unwrap();
        }
        // Hashes of the layers moved (each must stay maybe in its new place), and of none.
        let held = order
            .iter()
            .flat_map(|&l| (0..5_000).map(move |i| h(l as u64 * 1_000_000 + i)));
        let others = (0..100_000u64).map(|i| h(u64::MAX - i));
        let mut maybes = 0;
        for hash in held.chain(others) {
            maybes += u64::from(copy.may_contain(hash).count_ones());
            let original = stack.may_contain(hash);
            let moved = copy.may_contain(hash);
            for (to, &from) in order.iter().enumerate() {
                assert_eq!((moved >> to) & 1, (original >> from) & 1, "hash {hash:x}");
            }
        }
        assert!(maybes >= 4 * 5_000, "every held hash is maybe: {maybes}");
        assert!(stack.layer_bits(12).is_none());
        // Kept whole: the same answers, and a shape that does not fit is refused.
        let (width, words) = stack.parts();
        let whole =
            StackedBloom::from_parts(5_000, 0.005, stack.layers(), width, words.to_vec()).unwrap();
        for i in 0..50_000u64 {
            assert_eq!(whole.may_contain(h(i)), stack.may_contain(h(i)));
        }
        assert!(StackedBloom::from_parts(5_000, 0.005, 12, 12, words.to_vec()).is_none());
        assert!(StackedBloom::from_parts(5_000, 0.005, 12, width, words[1..].to_vec()).is_none());
        assert!(StackedBloom::from_parts(50_000, 0.005, 12, width, words.to_vec()).is_none());
        // A bitmap of another shape is refused, and changes nothing.
        let other = StackedBloom::new(50_000, 0.005);
        assert!(copy
            .push_layer_bits(&vec![0; other.layer_words()])
            .is_none());
        assert_eq!(copy.layers(), order.len());
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
    fn a_filter_put_back_from_its_stages_answers_and_grows_as_before() {
        let filter = ScalableBloom::new(32 << 20);
        let n = 2 * FIRST_STAGE_KEYS + 5;
        for i in 0..n {
            filter.insert(h(i));
        }
        let kept = filter.stages();
        assert_eq!(kept.len(), 2);
        let copy = ScalableBloom::from_stages(32 << 20, &kept).unwrap();
        assert_eq!(copy.usage(), filter.usage());
        assert!((0..n).all(|i| copy.may_contain(h(i))));
        for i in n..n + 50_000 {
            assert_eq!(copy.may_contain(h(i)), filter.may_contain(h(i)));
        }
        // It goes on from where it was: the next keys fill its last stage, then a new one.
        for i in n..3 * FIRST_STAGE_KEYS + 1 {
            copy.insert(h(i));
        }
        assert_eq!(copy.usage().0, 3);
        // Stages of another size, or none, are refused.
        let mut wrong = kept.clone();
        wrong[1].1.pop();
        assert!(ScalableBloom::from_stages(32 << 20, &wrong).is_none());
        assert!(ScalableBloom::from_stages(32 << 20, &[]).is_none());
        assert!(ScalableBloom::from_stages(1 << 10, &kept).is_none());
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

    #[test]
    fn a_stack_names_the_layers_that_may_hold_a_key_and_never_misses_one() {
        let mut stack = StackedBloom::new(10_000, 0.02);
        // Three layers of 10,000 keys each, the third with half more than it was sized for.
        let layers: [std::ops::Range<u64>; 3] = [0..10_000, 10_000..20_000, 20_000..35_000];
        for (l, keys) in layers.iter().enumerate() {
            assert_eq!(stack.push_layer(keys.clone().map(h)), Some(l));
        }
        assert_eq!(stack.layers(), 3);
        for (l, keys) in layers.iter().enumerate() {
            assert!(keys
                .clone()
                .all(|i| stack.may_contain(h(i)) & (1 << l) != 0));
        }
        // Of keys no layer holds, each layer claims about its rate.
        let mut claimed = [0u32; 3];
        for i in 100_000..200_000 {
            let maybe = stack.may_contain(h(i));
            assert_eq!(maybe >> 3, 0, "a bit past the last layer");
            for (l, c) in claimed.iter_mut().enumerate() {
                *c += u32::from(maybe & (1 << l) != 0);
            }
        }
        assert!(claimed[0] <= 2_200 && claimed[1] <= 2_200, "{claimed:?}");
        assert!(claimed[2] > claimed[0], "the overfull layer: {claimed:?}");
        assert!(claimed[2] < 10_000, "{claimed:?}");
    }

    #[test]
    fn a_full_stack_takes_no_more_layers() {
        let mut stack = StackedBloom::new(10, 0.02);
        for l in 0..STACKED_LAYERS_MAX {
            assert_eq!(stack.push_layer([h(l as u64)]), Some(l));
        }
        assert_eq!(stack.push_layer([h(1_000)]), None);
        assert_eq!(stack.layers(), STACKED_LAYERS_MAX);
        // Its room was widened three times on the way (8, 16, 32, 64 layers): every layer's
        // bits moved with it.
        for l in 0..STACKED_LAYERS_MAX as u64 {
            assert_ne!(stack.may_contain(h(l)) & (1 << l), 0, "layer {l}");
        }
        assert_eq!(StackedBloom::new(10, 0.02).may_contain(h(1)), 0);
    }
}
