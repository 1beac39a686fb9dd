//! Noticing partitions that nobody projects.
//!
//! The consumer group hands a crashed instance's partitions to the others
//! once its session times out. A coordinator that drops the member but never
//! starts a new generation leaves those partitions with no consumer: Tansu
//! 0.6.0 does this (it removes the expired member on the survivor's next
//! heartbeat and answers that heartbeat with no error, so the survivor never
//! rejoins). The projector watches for it from MySQL, where every instance's
//! progress is visible: a partition that is not assigned here, has events
//! past its stored position, and whose position has not moved for
//! [`StallWatch::after`] is stalled, and the runner rejoins the group so that
//! the coordinator assigns it again. On a coordinator that rebalances (Apache
//! Kafka) this does not fire; if it did, a rejoin costs one rebalance, and
//! two instances reading one partition cannot apply an event twice (each
//! batch locks the stored positions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// Remembers, per partition not assigned here, the stored position last seen
/// and since when it has not moved.
#[derive(Debug)]
pub struct StallWatch {
    after: Duration,
    unmoved_since: HashMap<i32, (i64, Instant)>,
}

impl StallWatch {
    /// A partition is stalled once its position has not moved for `after`.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            unmoved_since: HashMap::new(),
        }
    }

    /// How long a position may stand still before its partition counts as
    /// stalled.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Takes one look at the partitions: `assigned` here, the lowest stored
    /// position of the projections in each (missing: none yet, so 0), and the
    /// log's high watermark of each. Returns the stalled partitions, in
    /// ascending order.
    pub fn observe(
        &mut self,
        now: Instant,
        assigned: &HashSet<i32>,
        positions: &HashMap<i32, i64>,
        high_watermarks: &BTreeMap<i32, i64>,
    ) -> Vec<i32> {
        let mut stalled = Vec::new();
        let mut watched = HashMap::new();
        for (&partition, &high) in high_watermarks {
            let position = positions.get(&partition).copied().unwrap_or(0);
            if assigned.contains(&partition) || position >= high {
                continue;
            }
            let since = match self.unmoved_since.get(&partition) {
                Some(&(seen, since)) if seen == position => since,
                _ => now,
            };
            if now.duration_since(since) >= self.after {
                stalled.push(partition);
            }
            watched.insert(partition, (position, since));
        }
        self.unmoved_since = watched;
        stalled
    }

    /// Forgets everything seen, after a rejoin: the partitions get a full
    /// period under the new assignment before they can count as stalled.
    pub fn reset(&mut self) {
        self.unmoved_since.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    fn look(
        watch: &mut StallWatch,
        at: Instant,
        assigned: &[i32],
        positions: &[(i32, i64)],
        highs: &[(i32, i64)],
    ) -> Vec<i32> {
        watch.observe(
            at,
            &assigned.iter().copied().collect(),
            &positions.iter().copied().collect(),
            &highs.iter().copied().collect(),
        )
    }

    #[test]
    fn a_partition_with_lag_and_no_progress_stalls_after_the_period() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        let highs = [(0, 10), (1, 10)];
        assert!(look(&mut watch, start, &[0], &[(0, 4), (1, 4)], &highs).is_empty());
        let almost = start + AFTER - Duration::from_millis(1);
        assert!(look(&mut watch, almost, &[0], &[(0, 4), (1, 4)], &highs).is_empty());
        assert_eq!(
            look(&mut watch, start + AFTER, &[0], &[(0, 4), (1, 4)], &highs),
            vec![1],
            "partition 0 is ours, partition 1 has not moved for the whole period"
        );
    }

    #[test]
    fn progress_restarts_the_period() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        let highs = [(1, 100)];
        look(&mut watch, start, &[], &[(1, 4)], &highs);
        look(&mut watch, start + AFTER / 2, &[], &[(1, 5)], &highs);
        assert!(look(&mut watch, start + AFTER, &[], &[(1, 5)], &highs).is_empty());
        assert_eq!(
            look(
                &mut watch,
                start + AFTER / 2 + AFTER,
                &[],
                &[(1, 5)],
                &highs
            ),
            vec![1]
        );
    }

    #[test]
    fn a_caught_up_partition_never_stalls() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        look(&mut watch, start, &[], &[(2, 7)], &[(2, 7)]);
        assert!(look(&mut watch, start + AFTER * 3, &[], &[(2, 7)], &[(2, 7)]).is_empty());
    }

    #[test]
    fn a_partition_with_no_position_yet_counts_from_zero() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        look(&mut watch, start, &[], &[], &[(0, 3)]);
        assert_eq!(
            look(&mut watch, start + AFTER, &[], &[], &[(0, 3)]),
            vec![0]
        );
    }

    #[test]
    fn a_partition_assigned_in_between_starts_over() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        let highs = [(0, 9)];
        look(&mut watch, start, &[], &[(0, 1)], &highs);
        look(&mut watch, start + AFTER / 2, &[0], &[(0, 1)], &highs);
        assert!(look(&mut watch, start + AFTER, &[], &[(0, 1)], &highs).is_empty());
    }

    #[test]
    fn reset_gives_every_partition_a_new_period() {
        let mut watch = StallWatch::new(AFTER);
        let start = Instant::now();
        let highs = [(0, 9)];
        look(&mut watch, start, &[], &[(0, 1)], &highs);
        watch.reset();
        assert!(look(&mut watch, start + AFTER, &[], &[(0, 1)], &highs).is_empty());
        assert_eq!(
            look(&mut watch, start + AFTER * 2, &[], &[(0, 1)], &highs),
            vec![0]
        );
    }
}
