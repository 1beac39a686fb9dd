//! Whether the projector is ready, as `GET /readyz` answers it.
//!
//! Ready means projecting: the consumer has joined its group, holds its
//! assignment, and has resumed every assigned partition from the positions
//! stored in MySQL. An assignment of no partitions (more instances than
//! partitions) is ready too: there is nothing to resume. Until then, while a
//! rebalance has taken the assignment away, and while the stored positions
//! cannot be read, it is not.
//!
//! The runner owns the state: its consumer's rebalance callback (which
//! librdkafka runs inside the loop's own `recv`) moves it back when the
//! group assigns or revokes partitions, and the loop moves it forward once
//! it has resumed the assignment. The metrics server only reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// How far the projector is from projecting its assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// No assignment: before the group's first, or after a revocation,
    /// until the next one.
    AwaitingAssignment = 0,
    /// Assigned, not yet resumed from the stored positions.
    Resuming = 1,
    /// Every assigned partition resumed from MySQL.
    Ready = 2,
}

impl Stage {
    fn from_u8(value: u8) -> Self {
        match value {
            2 => Self::Ready,
            1 => Self::Resuming,
            _ => Self::AwaitingAssignment,
        }
    }

    /// What `/readyz` says about this stage.
    pub fn describe(self) -> &'static str {
        match self {
            Self::AwaitingAssignment => "waiting for a partition assignment",
            Self::Resuming => "resuming the assigned partitions from MySQL",
            Self::Ready => "ready",
        }
    }
}

/// A cheap handle on the projector's readiness; clones share it.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicU8>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(Stage::AwaitingAssignment as u8)))
    }
}

impl Readiness {
    /// The current stage.
    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.0.load(Ordering::SeqCst))
    }

    /// Whether every assigned partition is resumed.
    pub fn is_ready(&self) -> bool {
        self.stage() == Stage::Ready
    }

    /// Moves to `stage`; only the runner (and tests) do.
    pub(crate) fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_projector_is_not_ready_and_clones_share_the_stage() {
        let readiness = Readiness::default();
        let served = readiness.clone();
        assert_eq!(served.stage(), Stage::AwaitingAssignment);
        for stage in [Stage::Resuming, Stage::Ready, Stage::AwaitingAssignment] {
            readiness.set(stage);
            assert_eq!(served.stage(), stage, "{stage:?}");
            assert_eq!(served.is_ready(), stage == Stage::Ready, "{stage:?}");
        }
    }
}
