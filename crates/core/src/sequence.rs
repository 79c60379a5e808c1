//! The per-(source agent, source region) sequence rules of SPEC 2.4, as a pure function.
//!
//! Sequence `last + 1` is processed; beyond it the envelope is processed and the gap reported; at or
//! below `last` it is a duplicate when its idempotency key was seen (the caller looks the key up and
//! answers the first reply) and otherwise out of order. The caller keeps the tracker durable.

use serde::{Deserialize, Serialize};

/// The last accepted sequence of one (agent, region) stream. `0`: nothing accepted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SequenceTracker {
    /// The highest sequence accepted.
    pub last_accepted: u64,
}

/// How one envelope's sequence number fits its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum SequenceVerdict {
    /// The next one: process it.
    Processed,
    /// Later than the next one: process it and report the missing ones.
    Gap {
        /// The sequence that was expected.
        expected: u64,
        /// How many were skipped.
        missing: u64,
    },
    /// Seen before (same idempotency key): answer the first reply, change nothing.
    Duplicate,
    /// Not seen and not later than the last accepted: refuse.
    OutOfOrder {
        /// The last sequence accepted on the stream.
        last_accepted: u64,
    },
}

impl SequenceTracker {
    /// Classifies `sequence`; `key_seen` says whether its idempotency key is already recorded.
    pub fn classify(&self, sequence: u64, key_seen: bool) -> SequenceVerdict {
        if key_seen {
            return SequenceVerdict::Duplicate;
        }
        let expected = self.last_accepted.saturating_add(1);
        if sequence == expected {
            SequenceVerdict::Processed
        } else if sequence > expected {
            SequenceVerdict::Gap {
                expected,
                missing: sequence - expected,
            }
        } else {
            SequenceVerdict::OutOfOrder {
                last_accepted: self.last_accepted,
            }
        }
    }

    /// The tracker after accepting `sequence` (only processed and gap verdicts are accepted).
    #[must_use]
    pub fn accept(self, sequence: u64) -> Self {
        Self {
            last_accepted: self.last_accepted.max(sequence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_next_gap_duplicate_and_out_of_order() {
        let t = SequenceTracker::default();
        assert_eq!(t.classify(1, false), SequenceVerdict::Processed);
        let t = t.accept(1);
        assert_eq!(t.classify(2, false), SequenceVerdict::Processed);
        assert_eq!(
            t.classify(5, false),
            SequenceVerdict::Gap {
                expected: 2,
                missing: 3
            }
        );
        let t = t.accept(5);
        assert_eq!(t.classify(3, true), SequenceVerdict::Duplicate);
        assert_eq!(
            t.classify(3, false),
            SequenceVerdict::OutOfOrder { last_accepted: 5 }
        );
        assert_eq!(
            t.classify(5, false),
            SequenceVerdict::OutOfOrder { last_accepted: 5 }
        );
        assert_eq!(t.accept(4), t, "accepting never moves the tracker back");
    }
}
