//! Gaps the log really has, told apart from stale reads: the live loop and
//! the rebuild seek back when a batch does not start where a position
//! stands, and cross the gap once seeking back has shown it
//! [`GAP_CONFIRMATIONS`] times. The same count turns a record a position
//! stands on that never shows up into a log mismatch.

use std::collections::HashMap;

use crate::apply::BatchReport;
use crate::batch::Gap;

/// A gap is believed to be in the log itself (not a stale read) once a seek
/// back to the stored position has shown it this many times.
pub const GAP_CONFIRMATIONS: u32 = 3;

/// Counts how often each projection saw each gap after seeking back; a gap
/// seen [`GAP_CONFIRMATIONS`] times is in the log itself and may be crossed.
#[derive(Default)]
pub struct GapTracker {
    seen: HashMap<(&'static str, Gap), u32>,
    /// Records positions stand on, not seen after seeking to them.
    unseen: HashMap<(&'static str, i32, i64), u32>,
}

impl GapTracker {
    pub fn observe(&mut self, projection: &'static str, gap: Gap) {
        let count = self.seen.entry((projection, gap)).or_default();
        *count += 1;
        if *count == GAP_CONFIRMATIONS {
            tracing::warn!(
                partition = gap.partition,
                from = gap.stored,
                to = gap.first_seen,
                "the log has no records in this range; crossing it"
            );
        }
    }

    pub fn accepted(&self, projection: &str) -> Vec<Gap> {
        self.seen
            .iter()
            .filter(|((name, _), count)| *name == projection && **count >= GAP_CONFIRMATIONS)
            .map(|((_, gap), _)| *gap)
            .collect()
    }

    /// Counts one more batch that did not show the record at `offset` of
    /// `partition`, which `projection`'s position stands on, after the
    /// reader was sent there. True once that happened
    /// [`GAP_CONFIRMATIONS`] times: the record is not in the log.
    pub fn unseen(&mut self, projection: &'static str, partition: i32, offset: i64) -> bool {
        let count = self
            .unseen
            .entry((projection, partition, offset))
            .or_default();
        *count += 1;
        *count > GAP_CONFIRMATIONS
    }

    /// Forgets a projection's gaps in partitions that have moved on.
    pub fn applied(&mut self, projection: &str, report: &BatchReport) {
        self.unseen.retain(|(name, partition, _), _| {
            *name != projection
                || !report.positions.contains_key(partition)
                || report.unseen.iter().any(|(p, _)| p == partition)
        });
        self.seen.retain(|(name, gap), _| {
            *name != projection
                || report
                    .positions
                    .get(&gap.partition)
                    .is_none_or(|position| *position == gap.stored)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_gap_is_accepted_until_its_partition_moves_on() {
        let gap = Gap {
            partition: 1,
            stored: 10,
            first_seen: 12,
        };
        let mut gaps = GapTracker::default();
        for _ in 1..GAP_CONFIRMATIONS {
            gaps.observe("grade", gap);
        }
        assert!(gaps.accepted("grade").is_empty(), "not confirmed yet");
        gaps.observe("grade", gap);
        assert_eq!(gaps.accepted("grade"), vec![gap]);
        assert!(
            gaps.accepted("account_summary").is_empty(),
            "per projection"
        );
        let unmoved = BatchReport {
            positions: HashMap::from([(1, 10)]),
            ..BatchReport::default()
        };
        gaps.applied("grade", &unmoved);
        assert_eq!(gaps.accepted("grade"), vec![gap], "still at the gap");
        let crossed = BatchReport {
            positions: HashMap::from([(1, 13)]),
            ..BatchReport::default()
        };
        gaps.applied("grade", &crossed);
        assert!(gaps.accepted("grade").is_empty(), "moved on: forgotten");
    }

    #[test]
    fn a_record_still_unseen_after_the_confirming_seeks_is_missing() {
        let mut gaps = GapTracker::default();
        // The first sighting sends the reader there; each later one is a
        // batch read after that seek.
        for _ in 0..GAP_CONFIRMATIONS {
            assert!(!gaps.unseen("grade", 0, 6));
        }
        assert!(!gaps.unseen("account_summary", 0, 6), "per projection");
        assert!(gaps.unseen("grade", 0, 6));
    }

    #[test]
    fn an_unseen_record_is_forgotten_once_its_partition_is_checked() {
        let mut gaps = GapTracker::default();
        for _ in 0..GAP_CONFIRMATIONS {
            gaps.unseen("grade", 0, 6);
        }
        let checked = BatchReport {
            positions: HashMap::from([(0, 7)]),
            ..BatchReport::default()
        };
        gaps.applied("grade", &checked);
        assert!(!gaps.unseen("grade", 0, 6), "counting starts over");
    }
}
