//! Maps keyed by a keyed hash: the index's stream slots, open-segment keys and timers are found
//! by a SipHash of a name under the store's secret keys (hash_keys.rs), so the key is already uniform
//! and unpredictable. Hashing it again (the standard map hashes every key with SipHash) only
//! costs time: these maps take the key itself as its hash.

use std::hash::{BuildHasher, Hasher};

/// A map keyed by a hash computed under the store's own keys.
pub type PrehashedMap<K, V> = std::collections::HashMap<K, V, Prehashed>;

/// Builds [`PrehashedHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prehashed;

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

/// Passes a `u64` or `u128` key through as its hash.
#[derive(Debug, Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the keys above; folded in eight bytes at a time so that it stays a hash.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_own_hash() {
        assert_eq!(Prehashed.hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_eq!(Prehashed.hash_one((5u128 << 64) | 3), 6);
        assert_ne!(Prehashed.hash_one("ab"), Prehashed.hash_one("ba"));
    }
}
