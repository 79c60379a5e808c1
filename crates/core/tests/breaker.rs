//! The circuit breaker and token bucket under any sequence of calls and times: never panic, never
//! let a call through while open before the cool-down, at most one probe while half-open, never
//! hand out more tokens than capacity plus refill.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use marketgov_core::breaker::{Admission, Breaker, BreakerSettings, BreakerState, TokenBucket};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Admit,
    Succeed,
    Fail,
}

fn op() -> impl Strategy<Value = (Op, i64)> {
    (
        prop_oneof![Just(Op::Admit), Just(Op::Succeed), Just(Op::Fail)],
        0i64..5_000,
    )
}

proptest! {
    #[test]
    fn the_breaker_keeps_its_promises(ops in prop::collection::vec(op(), 1..200), failures in 1u32..6, cool in 1i64..10_000) {
        let mut b = Breaker::new(BreakerSettings { failures_to_open: failures, cool_down_ms: cool });
        let mut now = 0i64;
        let mut probe_out = false;
        for (op, step) in ops {
            now += step;
            match op {
                Op::Admit => {
                    let before = b.state;
                    match b.admit(now) {
                        Admission::Allowed => {
                            let closed = matches!(before, BreakerState::Closed { .. });
                            prop_assert!(closed, "allowed while {:?}", before);
                        }
                        Admission::Probe => {
                            let due = matches!(before, BreakerState::Open { until_ms } if now >= until_ms);
                            prop_assert!(due, "probe while {:?}", before);
                            prop_assert!(!probe_out, "two probes at once");
                            probe_out = true;
                        }
                        Admission::Refused { until_ms } => {
                            let half_open = matches!(before, BreakerState::HalfOpen);
                            prop_assert!(until_ms > now || half_open, "refused until {} at {}", until_ms, now);
                        }
                    }
                }
                Op::Succeed => {
                    b.succeeded();
                    probe_out = false;
                }
                Op::Fail => {
                    b.failed(now);
                    probe_out = false;
                    if let BreakerState::Closed { failures: f } = b.state {
                        prop_assert!(f < failures);
                    }
                    if let BreakerState::Open { until_ms } = b.state {
                        prop_assert_eq!(until_ms, now + cool);
                    }
                }
            }
        }
    }

    #[test]
    fn the_bucket_never_gives_more_than_it_has(steps in prop::collection::vec(0i64..2_000, 1..300), capacity in 0u32..20, rate in 0u32..50) {
        let mut t = TokenBucket::new(capacity, rate, 0);
        let mut now = 0i64;
        let mut taken = 0u64;
        for step in steps {
            now += step;
            match t.take(now) {
                Ok(()) => taken += 1,
                Err(at) => prop_assert!(at > now),
            }
            let allowed = u64::from(capacity) + (now as u64) * u64::from(rate) / 1000;
            prop_assert!(taken <= allowed, "{taken} tokens by {now} ms, at most {allowed}");
        }
    }
}
