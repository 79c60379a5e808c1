//! # marketgov-audit
//!
//! The tamper-evident audit log (SPEC 1.7): every committed decision is an entry whose hash is
//! SHA-256 over the previous entry's hash, its sequence number and its exact stored bytes; signed
//! checkpoints (Ed25519) cover the chain up to a sequence number. [`Verifier`] walks stored entries
//! and checkpoints and names the first bad position: a changed byte, a removed, reordered or
//! inserted entry, or a forged checkpoint.
//!
//! **What it owns:** the hashing and signing rules and their verification. **What it must not
//! know:** where entries are stored, what their bytes mean, the clock, or where keys come from
//! (the caller passes key bytes in). It is pure: no I/O.
//!
//! Hashes are computed over the bytes as stored and never over a re-serialization, so a change of
//! serializer can never make an honest log fail to verify.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first entry.
pub const GENESIS: Hash = [0; 32];

/// Domain separation: an entry hash can never be mistaken for another use of SHA-256.
const ENTRY_DOMAIN: &[u8] = b"marketgov-audit-entry-v1\0";
/// Domain separation for checkpoint signatures.
const CHECKPOINT_DOMAIN: &[u8] = b"marketgov-audit-checkpoint-v1\0";

/// The hash of entry `seq` with `bytes`, chained to `prev`.
pub fn entry_hash(prev: &Hash, seq: u64, bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
    h.finalize().into()
}

/// Hex text of a hash, for replies and logs.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The hash of entry `seq - 1` ([`GENESIS`] for the first).
    pub prev_hash: Hash,
    /// This entry's hash.
    pub hash: Hash,
    /// The exact bytes stored.
    pub bytes: Vec<u8>,
}

/// The head of the chain, kept by the writer to append the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last entry's sequence number (0: empty log).
    pub seq: u64,
    /// The last entry's hash ([`GENESIS`] for an empty log).
    pub hash: Hash,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS,
        }
    }
}

impl Head {
    /// Chains `bytes` as the next entry and moves the head to it.
    pub fn append(&mut self, bytes: Vec<u8>) -> Entry {
        let seq = self.seq + 1;
        let prev_hash = self.hash;
        let hash = entry_hash(&prev_hash, seq, &bytes);
        *self = Head { seq, hash };
        Entry {
            seq,
            prev_hash,
            hash,
            bytes,
        }
    }
}

/// A signed statement that the log's entry `seq` has hash `hash` (and so, by the chain, every
/// entry before it is as it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The entry covered.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
    /// Ed25519 signature over the domain, `seq` and `hash`, hex.
    pub signature: String,
}

fn checkpoint_message(seq: u64, hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// The log's signing key.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("CheckpointSigner")
            .field("public_key", &self.public_key_hex())
            .finish()
    }
}

impl CheckpointSigner {
    /// A signer from 32 secret bytes (the caller creates them from a secure random source).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// Signs a checkpoint of entry `seq` with hash `hash`.
    pub fn sign(&self, seq: u64, hash: &Hash) -> Checkpoint {
        let signature = self.key.sign(&checkpoint_message(seq, hash));
        Checkpoint {
            seq,
            hash: to_hex(hash),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The public key that verifies this signer's checkpoints.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }
}

/// Errors building a verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The public key is not 32 bytes of hex, or not a valid Ed25519 point.
    #[error("invalid public key")]
    InvalidPublicKey,
}

/// Why a position is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The entry's bytes or stored hash do not match: it was changed.
    HashMismatch,
    /// The entry does not link to the one before it: entries were reordered or replaced.
    BrokenLink,
    /// An entry with this sequence number is missing: one was removed.
    Missing,
    /// An entry appears where another was expected: one was inserted or moved.
    Unexpected,
    /// A checkpoint's signature does not verify: it was forged or altered.
    BadSignature,
    /// A validly signed checkpoint disagrees with the entry it covers: the chain was rewritten.
    CheckpointMismatch,
}

impl Fault {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::BrokenLink => "broken_link",
            Self::Missing => "missing",
            Self::Unexpected => "unexpected",
            Self::BadSignature => "bad_signature",
            Self::CheckpointMismatch => "checkpoint_mismatch",
        }
    }
}

/// The first bad position found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPosition {
    /// The sequence number.
    pub seq: u64,
    /// What is wrong there.
    pub reason: Fault,
}

/// A verification's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether everything verified.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Entries after the last valid checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    /// The first bad position, if any.
    pub first_bad: Option<BadPosition>,
}

/// Walks entries in sequence order, then checks checkpoints; keeps the lowest bad position.
#[derive(Debug)]
pub struct Verifier {
    key: VerifyingKey,
    expected_seq: u64,
    prev_hash: Hash,
    entries: u64,
    /// Stored hashes by seq, kept only where a checkpoint will need them.
    wanted: BTreeMap<u64, Option<Hash>>,
    first_bad: Option<BadPosition>,
}

impl Verifier {
    /// A verifier for checkpoints signed by `public_key`. `checkpoint_seqs` are the positions the
    /// checkpoints cover (so that only those hashes are remembered while streaming).
    pub fn new(
        public_key: &[u8; 32],
        checkpoint_seqs: impl IntoIterator<Item = u64>,
    ) -> Result<Self, Error> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::InvalidPublicKey)?;
        Ok(Self {
            key,
            expected_seq: 1,
            prev_hash: GENESIS,
            entries: 0,
            wanted: checkpoint_seqs.into_iter().map(|s| (s, None)).collect(),
            first_bad: None,
        })
    }

    /// Parses a hex public key.
    pub fn public_key_from_hex(text: &str) -> Result<[u8; 32], Error> {
        let bytes = hex::decode(text.trim()).map_err(|_| Error::InvalidPublicKey)?;
        bytes.try_into().map_err(|_| Error::InvalidPublicKey)
    }

    fn bad(&mut self, seq: u64, reason: Fault) {
        if self.first_bad.is_none_or(|b| seq < b.seq) {
            self.first_bad = Some(BadPosition { seq, reason });
        }
    }

    /// Checks the next stored entry (entries must be fed in ascending `seq` order, as stored).
    pub fn entry(&mut self, e: &Entry) {
        self.entries += 1;
        if e.seq > self.expected_seq {
            self.bad(self.expected_seq, Fault::Missing);
        } else if e.seq < self.expected_seq {
            self.bad(e.seq, Fault::Unexpected);
            return;
        }
        if entry_hash(&e.prev_hash, e.seq, &e.bytes) != e.hash {
            self.bad(e.seq, Fault::HashMismatch);
        } else if e.prev_hash != self.prev_hash && e.seq == self.expected_seq {
            self.bad(e.seq, Fault::BrokenLink);
        }
        if let Some(slot) = self.wanted.get_mut(&e.seq) {
            *slot = Some(e.hash);
        }
        self.prev_hash = e.hash;
        self.expected_seq = e.seq + 1;
    }

    /// Checks the checkpoints and ends the verification.
    pub fn finish(mut self, checkpoints: &[Checkpoint]) -> Report {
        let last_seq = self.expected_seq - 1;
        let mut signed_up_to = 0;
        for c in checkpoints {
            let parsed = hex::decode(&c.hash)
                .ok()
                .and_then(|h| <Hash>::try_from(h).ok());
            let signature = hex::decode(&c.signature)
                .ok()
                .and_then(|s| <[u8; 64]>::try_from(s).ok())
                .map(|s| ed25519_dalek::Signature::from_bytes(&s));
            let (Some(hash), Some(signature)) = (parsed, signature) else {
                self.bad(c.seq, Fault::BadSignature);
                continue;
            };
            if self
                .key
                .verify_strict(&checkpoint_message(c.seq, &hash), &signature)
                .is_err()
            {
                self.bad(c.seq, Fault::BadSignature);
                continue;
            }
            match self.wanted.get(&c.seq).copied().flatten() {
                Some(stored) if stored == hash => signed_up_to = signed_up_to.max(c.seq),
                Some(_) => self.bad(c.seq, Fault::CheckpointMismatch),
                // Signed, but the entry it covers is gone: the log was cut.
                None => self.bad(last_seq + 1, Fault::Missing),
            }
        }
        Report {
            ok: self.first_bad.is_none(),
            entries: self.entries,
            checkpoints: checkpoints.len() as u64,
            unsigned_tail: last_seq.saturating_sub(signed_up_to),
            first_bad: self.first_bad,
        }
    }
}

/// Verifies a whole log held in memory.
pub fn verify(
    public_key: &[u8; 32],
    entries: &[Entry],
    checkpoints: &[Checkpoint],
) -> Result<Report, Error> {
    let mut v = Verifier::new(public_key, checkpoints.iter().map(|c| c.seq))?;
    for e in entries {
        v.entry(e);
    }
    Ok(v.finish(checkpoints))
}
