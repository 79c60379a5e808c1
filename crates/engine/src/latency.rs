//! Latency histograms: microseconds in buckets of 1/128 relative width (exact below 256 µs), a
//! fixed 26 KiB record however many values are recorded.
//!
//! [`Histogram`] is one owner's record (the bench's workers keep one each and merge them);
//! [`SharedHistogram`] is recorded into by every shard at once (relaxed atomic counters: a
//! snapshot taken while values arrive may count a value in one bucket and not yet in the total,
//! which a quantile tolerates).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Values above this (71 minutes) are recorded as this.
pub const LATENCY_MICROS_MAX: u64 = u32::MAX as u64;

const EXACT: u64 = 256;
const SUB_BUCKETS: u64 = 128;
/// log2 of `SUB_BUCKETS`.
const SUB_BITS: u64 = 7;

const fn bucket(v: u64) -> usize {
    let v = if v < LATENCY_MICROS_MAX {
        v
    } else {
        LATENCY_MICROS_MAX
    };
    if v < EXACT {
        return v as usize;
    }
    let top = 63 - v.leading_zeros() as u64; // >= SUB_BITS + 1
    let shift = top - SUB_BITS;
    (EXACT + (top - SUB_BITS - 1) * SUB_BUCKETS + ((v >> shift) & (SUB_BUCKETS - 1))) as usize
}

/// The smallest value of bucket `b`.
fn floor(b: usize) -> u64 {
    let b = b as u64;
    if b < EXACT {
        return b;
    }
    let top = (b - EXACT) / SUB_BUCKETS + SUB_BITS + 1;
    let mantissa = (b - EXACT) % SUB_BUCKETS;
    (SUB_BUCKETS + mantissa) << (top - SUB_BITS)
}

const BUCKETS: usize = bucket(LATENCY_MICROS_MAX) + 1;

/// Microsecond latencies of one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    /// The recorded values added up (as recorded, before bucketing).
    sum: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            sum: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, micros: u64) {
        let micros = micros.min(LATENCY_MICROS_MAX);
        if let Some(c) = self.counts.get_mut(bucket(micros)) {
            *c += 1;
            self.sum = self.sum.saturating_add(micros);
        }
    }

    /// Adds `other`'s values to this record.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The values recorded after `earlier`, a previous snapshot of the same record.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The recorded values added up, in microseconds.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// How many values were recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (the floor of its bucket: at most 1/128 below the true value);
    /// 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return floor(b);
            }
        }
        0
    }

    /// The largest value's bucket floor; 0 when empty.
    pub fn max(&self) -> u64 {
        self.counts.iter().rposition(|c| *c > 0).map_or(0, floor)
    }

    /// p50, p95, p99, p99.9, max and count as a JSON object (the shape `/v1/stats` and the bench
    /// report).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.total(),
            "sum": self.sum,
            "p50": self.quantile(0.50),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "p999": self.quantile(0.999),
            "max": self.max(),
        })
    }
}

/// Microsecond latencies recorded from many threads.
#[derive(Debug)]
pub struct SharedHistogram {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedHistogram {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(LATENCY_MICROS_MAX)
            .min(LATENCY_MICROS_MAX);
        if let Some(c) = self.counts.get(bucket(micros)) {
            c.fetch_add(1, Relaxed);
            self.sum.fetch_add(micros, Relaxed);
        }
    }

    /// The values recorded so far.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_below() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 50_000u64), (0.99, 99_000), (0.999, 99_900)] {
            let got = h.quantile(q);
            assert!(
                got <= exact && exact - got <= exact / 100,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(0.0001), 10);
        assert!(h.max() <= 100_000 && h.max() >= 99_000);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }

    #[test]
    fn every_value_lands_in_the_bucket_whose_floor_is_at_or_below_it() {
        for v in [
            0u64,
            1,
            255,
            256,
            511,
            512,
            4096,
            1 << 31,
            LATENCY_MICROS_MAX,
        ] {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v}");
            assert!(floor(b) <= v, "{v}");
            assert_eq!(bucket(floor(b)), b, "{v}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn shared_records_from_threads_add_up() {
        let shared = std::sync::Arc::new(SharedHistogram::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        shared.record(Duration::from_micros(t * 1000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let h = shared.snapshot();
        assert_eq!(h.total(), 4000);
        shared.record(Duration::from_secs(1));
        let later = shared.snapshot().since(&h);
        assert_eq!((later.total(), later.quantile(0.5)), (1, 999_424));
        assert_eq!(later.sum(), 1_000_000);
        assert_eq!(h.sum(), (0..4000u64).sum::<u64>());
        assert!(h.quantile(0.5) >= 1900 && h.quantile(0.5) <= 2000);
        assert!(h.max() >= 3960 && h.max() <= 3999);
    }
}
