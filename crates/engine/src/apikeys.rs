//! API keys: created at random, shown once, stored only as their SHA-256, each belonging to one
//! tenant. Lookup is by the hash; the comparison that decides is done in constant time.

use marketgov_store::{Commit, Store, VersionedTable, VersionedWrite};
use sha2::{Digest, Sha256};

use crate::{App, Error};

/// The hex SHA-256 of a key, as stored.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random key: `mg_` and 32 random bytes in hex.
pub fn new_key() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Setup(format!("no random source: {e}")))?;
    Ok(format!("mg_{}", hex::encode(bytes)))
}

impl App {
    /// Creates a key for `tenant`, stores its hash, and returns the key (shown once).
    pub async fn create_api_key(&self, tenant: &str) -> Result<String, Error> {
        marketgov_core::ids::check_id("tenant", tenant)?;
        let key = new_key()?;
        let body = serde_json::json!({"tenant": tenant})
            .to_string()
            .into_bytes();
        let commit = Commit {
            api_keys: vec![VersionedWrite {
                key: key_hash(&key),
                expected_version: 0,
                version: 1,
                body,
            }],
            ..Commit::default()
        };
        self.store()
            .commit(commit)?
            .await
            .map_err(|_| Error::ShuttingDown)??;
        Ok(key)
    }

    /// The tenant a key belongs to, if it is a stored key.
    pub fn tenant_for_key(&self, key: &str) -> Result<Option<String>, Error> {
        let hash = key_hash(key);
        let Some((_, body)) = self.store().versioned(VersionedTable::ApiKeys, &hash)? else {
            return Ok(None);
        };
        let stored: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Replay {
                location: "api key".into(),
                detail: e.to_string(),
            })?;
        Ok(stored["tenant"].as_str().map(str::to_owned))
    }
}
