//! Whether submissions can be accepted: the broker answers for our topic.
//!
//! One task owns the answer: it probes the broker every
//! [`REFRESH_INTERVAL`] and stores the result; `/readyz` only reads it, so
//! a flood of probes costs no broker round trip and answers at once.

use std::time::Duration;

use tokio::sync::watch;

use crate::publisher::Publisher;

/// How often the broker is probed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long one probe waits for the broker before it counts as not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cheap handle on the latest probe's result.
#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

/// The one writer of a [`Readiness`]: the refresh task.
#[derive(Debug)]
pub struct ReadinessProbe(watch::Sender<bool>);

impl Readiness {
    /// A handle starting at `ready`, and its probe.
    pub fn new(ready: bool) -> (ReadinessProbe, Self) {
        let (sender, receiver) = watch::channel(ready);
        (ReadinessProbe(sender), Self(receiver))
    }

    /// A handle that always answers `ready` (route tests without a broker).
    pub fn fixed(ready: bool) -> Self {
        Self::new(ready).1
    }

    /// The latest probe's result.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }
}

impl ReadinessProbe {
    /// Probes `publisher` now and then every `interval`, forever (abort the
    /// task to stop it). A probe that takes longer than the interval delays
    /// the next one instead of piling up.
    pub async fn refresh_forever(self, publisher: Publisher, interval: Duration) {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let ready = publisher.is_ready(PROBE_TIMEOUT).await;
            let changed = self.0.send_if_modified(|current| {
                let changed = *current != ready;
                *current = ready;
                changed
            });
            if changed {
                tracing::info!(ready, "readiness changed");
            }
            metrics::gauge!("ingest_ready").set(if ready { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_answers_what_its_probe_last_stored() {
        let (probe, readiness) = Readiness::new(false);
        assert!(!readiness.is_ready());
        probe.0.send_replace(true);
        assert!(readiness.is_ready());
        assert!(readiness.clone().is_ready(), "every clone sees it");
    }
}
