//! The keys of the index's keyed hashes (stream names, timers, idempotency and effect keys).
//!
//! Keyed, so that nobody who chooses names or keys can make them collide on purpose (streams.rs,
//! keys.rs). Kept, so that what is derived from the index under them stays valid across opens:
//! the run files of closed segments hold hashes, and the index checkpoints planned in
//! docs/store-log.md ("Not built yet", item 1) would hold the stream slots by hash. A key drawn
//! anew at each open (as `RandomState` does, and as this store did until the eleventh session)
//! makes every such file useless at the next open.
//!
//! One 128-bit secret is drawn from the operating system when the store is created and written
//! to `log/hash.keys` (magic, secret, CRC32C), synced, before any segment; each hash's own
//! SipHash keys are derived from it and a name of the hash's purpose. A missing or damaged file
//! in a store that already has segments is not an error today: every derived file is rebuilt at
//! open, so new keys are drawn and written. Once derived files are kept across opens, they must
//! say which keys they were built under ([`HashKeys::id`]) and be ignored under others.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use marketgov_store::Error;
use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};

/// The file's name in the segments' directory.
pub const HASH_KEYS_FILE: &str = "hash.keys";
/// The file's first bytes (the format's version is the last).
const MAGIC: &[u8; 8] = b"MGHKEYS1";
/// Magic, secret, CRC32C of both.
const FILE_BYTES: usize = 8 + 16 + 4;

/// The store's hash secret.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKeys {
    secret: [u8; 16],
}

impl std::fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs: only its id is shown.
        f.debug_struct("HashKeys").field("id", &self.id()).finish()
    }
}

/// What opening the keys file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The file was there and whole.
    Kept,
    /// There was none: new keys were drawn and written.
    Created,
    /// It was damaged (wrong length, magic or checksum): new keys were drawn and written.
    Replaced,
}

impl HashKeys {
    /// Reads the keys in `dir` (the segments' directory, created if needed), or draws and
    /// writes new ones (synced, with the directory) when there are none or they are damaged.
    pub fn load_or_create(dir: &Path) -> Result<(Self, Found), Error> {
        let path = dir.join(HASH_KEYS_FILE);
        let unavailable = |what: &str, e: std::io::Error| {
            Error::Unavailable(format!("{what} {}: {e}", path.display()))
        };
        let found = match std::fs::read(&path) {
            Ok(bytes) => match Self::decode(&bytes) {
                Some(keys) => return Ok((keys, Found::Kept)),
                None => Found::Replaced,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Created,
            Err(e) => return Err(unavailable("cannot read", e)),
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable("cannot create the directory of", e))?;
        let mut secret = [0u8; 16];
        getrandom::getrandom(&mut secret)
            .map_err(|e| Error::Unavailable(format!("no randomness for the hash keys: {e}")))?;
        let keys = Self { secret };
        keys.write(dir, &path)
            .map_err(|e| unavailable("cannot write", e))?;
        Ok((keys, found))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != FILE_BYTES || &bytes[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[24..28].try_into().ok()?);
        if crc32c::crc32c(&bytes[..24]) != crc {
            return None;
        }
        Some(Self {
            secret: bytes[8..24].try_into().ok()?,
        })
    }

    /// Written beside, synced, renamed into place, and the directory synced: a crash leaves
    /// the old file or the new one, never a torn one.
    fn write(&self, dir: &Path, path: &PathBuf) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(FILE_BYTES);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.secret);
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        let tmp = dir.join(format!("{HASH_KEYS_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    }

    /// The SipHash keys of the hash named `purpose` (each purpose gets its own).
    fn derive(&self, purpose: &str) -> (u64, u64) {
        let (k0, k1) = self.halves();
        let mut h = SipHasher13x128::new_with_keys(k0, k1);
        purpose.hash(&mut h);
        let out = h.finish128();
        (out.h1, out.h2)
    }

    fn halves(&self) -> (u64, u64) {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&self.secret[..8]);
        k1.copy_from_slice(&self.secret[8..]);
        (u64::from_le_bytes(k0), u64::from_le_bytes(k1))
    }

    /// A 64-bit keyed hash for `purpose`.
    pub fn hash64(&self, purpose: &str) -> KeyedHash64 {
        let (k0, k1) = self.derive(purpose);
        KeyedHash64 { k0, k1 }
    }

    /// A 128-bit keyed hash for `purpose`.
    pub fn hash128(&self, purpose: &str) -> KeyedHash128 {
        let (k0, k1) = self.derive(purpose);
        KeyedHash128 { k0, k1 }
    }

    /// A public name of these keys (a hash of the secret under a purpose of its own), for
    /// derived files to record which keys they were built under.
    pub fn id(&self) -> u64 {
        self.hash64("id").one(&())
    }
}

/// SipHash-1-3 with 64 bits out, under fixed keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyedHash64 {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyedHash64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHash64")
    }
}

impl KeyedHash64 {
    /// A public name of this hash (its value of a fixed input), for files written under it.
    pub fn id(&self) -> u64 {
        self.one("marketgov hash id")
    }

    pub fn one<T: Hash + ?Sized>(&self, value: &T) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        value.hash(&mut h);
        h.finish()
    }
}

/// SipHash-1-3 with 128 bits out, under fixed keys: one pass over the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyedHash128 {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyedHash128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHash128")
    }
}

impl KeyedHash128 {
    pub fn one<T: Hash + ?Sized>(&self, value: &T) -> u128 {
        let mut h = SipHasher13x128::new_with_keys(self.k0, self.k1);
        value.hash(&mut h);
        let out = h.finish128();
        (u128::from(out.h1) << 64) | u128::from(out.h2)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_kept_across_opens_and_differ_between_stores_and_purposes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (first, found) = HashKeys::load_or_create(a.path()).unwrap();
        assert_eq!(found, Found::Created);
        let (again, found) = HashKeys::load_or_create(a.path()).unwrap();
        assert_eq!(found, Found::Kept);
        assert_eq!(first, again);
        assert_eq!(
            first.hash128("streams").one("customer:t/c1"),
            again.hash128("streams").one("customer:t/c1")
        );
        let (other, _) = HashKeys::load_or_create(b.path()).unwrap();
        assert_ne!(first, other);
        assert_ne!(first.hash64("idem").one("k"), other.hash64("idem").one("k"));
        assert_ne!(
            first.hash64("idem").one("k"),
            first.hash64("effect").one("k")
        );
        assert_ne!(first.id(), other.id());
    }

    #[test]
    fn a_damaged_file_is_replaced_by_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = HashKeys::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(HASH_KEYS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (second, found) = HashKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(found, Found::Replaced);
        assert_ne!(first, second);
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(
            HashKeys::load_or_create(dir.path()).unwrap().1,
            Found::Replaced
        );
        let (kept, found) = HashKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(found, Found::Kept);
        assert_eq!(HashKeys::decode(&std::fs::read(&path).unwrap()), Some(kept));
    }
}
