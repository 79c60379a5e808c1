//! Deterministic backoff for effect retries (SPEC 2.2): attempt `n` waits
//! `min(100 ms * 2^n, cap)`, with no randomness. Where jitter spreads retries apart, it is derived
//! from the attempt number and the effect's idempotency key, so the same effect always waits the
//! same, on every node and after every restart.

/// The first retry's wait, in milliseconds.
pub const RETRY_DELAY_BASE_MS: u64 = 100;

/// `min(100 ms * 2^attempt, cap_ms)`, saturating instead of overflowing.
pub fn retry_delay_ms(attempt: u32, cap_ms: u64) -> u64 {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    RETRY_DELAY_BASE_MS.saturating_mul(factor).min(cap_ms)
}

/// The backoff with "equal jitter": half the delay fixed, the other half chosen by a stable hash of
/// the effect key and the attempt. Always within `[delay / 2, delay]`.
pub fn jittered_delay_ms(attempt: u32, effect_key: &str, cap_ms: u64) -> u64 {
    let delay = retry_delay_ms(attempt, cap_ms);
    let half = delay / 2;
    let spread = delay - half;
    if spread == 0 {
        return delay;
    }
    half + stable_hash(effect_key, attempt) % (spread + 1)
}

/// FNV-1a over the key's bytes and the attempt: stable across platforms, builds and releases
/// (unlike the standard library's hasher, which is randomly seeded).
fn stable_hash(key: &str, attempt: u32) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    key.bytes()
        .chain(attempt.to_le_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100_ms_and_stops_at_the_cap() {
        let cap = 30_000;
        let delays: Vec<u64> = (0..10).map(|n| retry_delay_ms(n, cap)).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000]
        );
        assert_eq!(
            retry_delay_ms(200, cap),
            cap,
            "no overflow for absurd attempts"
        );
        assert_eq!(retry_delay_ms(63, u64::MAX), u64::MAX);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        for attempt in 0..20 {
            let delay = retry_delay_ms(attempt, 60_000);
            let a = jittered_delay_ms(attempt, "evt-1:0", 60_000);
            assert_eq!(
                a,
                jittered_delay_ms(attempt, "evt-1:0", 60_000),
                "same inputs, same wait"
            );
            assert!(
                a >= delay / 2 && a <= delay,
                "{a} outside [{}, {delay}]",
                delay / 2
            );
        }
        let spread: std::collections::BTreeSet<u64> = (0..50)
            .map(|i| jittered_delay_ms(8, &format!("evt-{i}:0"), 60_000))
            .collect();
        assert!(
            spread.len() > 25,
            "different effects spread apart: {spread:?}"
        );
        // Pinned values (computed independently): a change to the hash would move every node's
        // retries, so it must be deliberate.
        assert_eq!(jittered_delay_ms(3, "evt-1:0", 60_000), 682);
        assert_eq!(jittered_delay_ms(10, "evt-9:2", 60_000), 40_509);
    }
}
