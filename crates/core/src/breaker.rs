//! The circuit breaker of a connector (SPEC 2.5) and the token bucket of a tenant, as small pure
//! state machines: time is passed in, nothing is read.
//!
//! Breaker: `closed` counts consecutive failures and opens after `failures_to_open`; `open` refuses
//! every call until `cool_down_ms` has passed, then lets one probe through (`half_open`); the
//! probe's success closes it, its failure opens it again.

use serde::{Deserialize, Serialize};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until `until_ms`.
    Open {
        /// When a probe may go.
        until_ms: i64,
    },
    /// One probe is out; everything else is refused until it answers.
    HalfOpen,
}

/// A breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub cool_down_ms: i64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            cool_down_ms: 30_000,
        }
    }
}

/// A circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// Its settings.
    pub settings: BreakerSettings,
    /// Its state.
    pub state: BreakerState,
}

/// Whether a call may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go.
    Allowed,
    /// Go as the half-open probe.
    Probe,
    /// Not before `until_ms`.
    Refused {
        /// When to ask again.
        until_ms: i64,
    },
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Asks to make a call at `now_ms`; a probe moves the breaker to half-open.
    pub fn admit(&mut self, now_ms: i64) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::Open { until_ms } => Admission::Refused { until_ms },
            // The probe is out: the others wait at least one more cool-down.
            BreakerState::HalfOpen => Admission::Refused {
                until_ms: now_ms.saturating_add(self.settings.cool_down_ms),
            },
        }
    }

    /// Records a call's success.
    pub fn succeeded(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records a call's failure at `now_ms`.
    pub fn failed(&mut self, now_ms: i64) {
        let open = BreakerState::Open {
            until_ms: now_ms.saturating_add(self.settings.cool_down_ms),
        };
        self.state = match self.state {
            BreakerState::Closed { failures }
                if failures + 1 >= self.settings.failures_to_open.max(1) =>
            {
                open
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::HalfOpen | BreakerState::Open { .. } => open,
        };
    }

    /// The state's name, for metrics.
    pub fn name(&self) -> &'static str {
        match self.state {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_second`; time passed in as milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Tokens at most.
    pub capacity: u32,
    /// Tokens added per second.
    pub per_second: u32,
    /// Tokens now, in thousandths (so refills are exact in integers).
    milli_tokens: u64,
    /// When the bucket was last refilled.
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(capacity: u32, per_second: u32, now_ms: i64) -> Self {
        Self {
            capacity,
            per_second,
            milli_tokens: u64::from(capacity) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms` if there is one; otherwise answers when one will be there.
    pub fn take(&mut self, now_ms: i64) -> Result<(), i64> {
        let elapsed = u64::try_from(now_ms.saturating_sub(self.last_ms)).unwrap_or(0);
        let cap = u64::from(self.capacity) * 1000;
        self.milli_tokens =
            (self.milli_tokens + elapsed.saturating_mul(u64::from(self.per_second))).min(cap);
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Ok(());
        }
        if self.per_second == 0 {
            return Err(i64::MAX);
        }
        let missing = 1000 - self.milli_tokens;
        let wait = missing.div_ceil(u64::from(self.per_second));
        Err(now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cool_down() {
        let mut b = Breaker::new(BreakerSettings {
            failures_to_open: 3,
            cool_down_ms: 1000,
        });
        for _ in 0..2 {
            assert_eq!(b.admit(0), Admission::Allowed);
            b.failed(0);
        }
        b.succeeded();
        assert_eq!(
            b.state,
            BreakerState::Closed { failures: 0 },
            "a success resets the count"
        );
        for _ in 0..3 {
            b.failed(10);
        }
        assert_eq!(b.state, BreakerState::Open { until_ms: 1010 });
        assert_eq!(b.admit(1009), Admission::Refused { until_ms: 1010 });
        assert_eq!(b.admit(1010), Admission::Probe);
        assert_eq!(b.name(), "half_open");
        assert!(
            matches!(b.admit(1011), Admission::Refused { .. }),
            "one probe at a time"
        );
        b.failed(1020);
        assert_eq!(
            b.state,
            BreakerState::Open { until_ms: 2020 },
            "a failed probe opens it again"
        );
        assert_eq!(b.admit(2020), Admission::Probe);
        b.succeeded();
        assert_eq!(b.admit(2021), Admission::Allowed);
    }

    #[test]
    fn the_bucket_refills_exactly_and_says_when() {
        let mut t = TokenBucket::new(2, 4, 0);
        assert_eq!(t.take(0), Ok(()));
        assert_eq!(t.take(0), Ok(()));
        assert_eq!(t.take(0), Err(250), "one token per 250 ms at 4/s");
        assert_eq!(t.take(249), Err(250));
        assert_eq!(t.take(250), Ok(()));
        assert_eq!(t.take(10_000), Ok(()), "refill stops at capacity");
        assert_eq!(t.take(10_000), Ok(()));
        assert!(t.take(10_000).is_err());
        assert_eq!(TokenBucket::new(0, 0, 0).take(5), Err(i64::MAX));
    }
}
