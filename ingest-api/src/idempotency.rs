//! What this instance remembers of the idempotency keys it was sent
//! recently, so that a key reused for a different submission is answered
//! `422 idempotency_conflict` before anything is published.
//!
//! The memory is a bounded map from event id (derived from the key and the
//! account) to the [`SubmissionDigest`] first seen with it. It is an early
//! answer, not the guarantee: a key seen by another instance, before a
//! restart, or long enough ago to be forgotten reaches the log, and the
//! projector, which remembers every id it applied, records the later
//! submission as a dead letter `idempotency_conflict` (first write wins).
//!
//! Bounds: at most [`RECENT_KEYS_CAPACITY`] keys, each for at most
//! [`RECENT_KEYS_TTL`]. Entries leave in the order they came (the oldest
//! first, whether the count or the age is exceeded), which keeps both
//! bounds O(1) with a queue beside the map; a retry does not refresh its
//! entry, since what matters is when the key was first used.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use score_shared::SubmissionDigest;
use uuid::Uuid;

/// Most keys remembered. An entry costs about 150 bytes (map and queue),
/// so this is about 15 MiB at most; it holds every key of the last
/// [`RECENT_KEYS_TTL`] up to about 110 submissions a second, and beyond
/// that the oldest go first.
pub const RECENT_KEYS_CAPACITY: usize = 100_000;

/// How long a key is remembered. Clients retry within seconds or minutes
/// (the page and the mini-program retry after a failure or a timeout);
/// a reuse later than this is still caught by the projector.
pub const RECENT_KEYS_TTL: Duration = Duration::from_secs(15 * 60);

/// How a submission's key relates to what this instance saw before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen (or forgotten): it is remembered now with this digest.
    First,
    /// Seen with the same digest: a retry.
    Retry,
    /// Seen with another digest: the key already means another submission.
    Conflict,
}

/// The recently used idempotency keys of this instance. Cheap to share
/// behind an `Arc`; one lock, held for a few map operations, guards the
/// map and its queue together.
pub struct RecentKeys {
    capacity: usize,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    digests: HashMap<Uuid, SubmissionDigest>,
    /// The ids of `digests`, oldest first, with when each was first seen.
    /// Every id in `digests` is here exactly once, and only those.
    arrivals: VecDeque<(Uuid, Instant)>,
}

impl Default for RecentKeys {
    fn default() -> Self {
        Self::new(RECENT_KEYS_CAPACITY, RECENT_KEYS_TTL)
    }
}

impl RecentKeys {
    /// A memory of at most `capacity` keys, each kept at most `ttl`.
    ///
    /// # Panics
    ///
    /// When `capacity` is 0.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        assert!(capacity > 0, "a memory of recent keys needs room for one");
        Self {
            capacity,
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// Says whether `event_id` was seen, and with which digest; remembers
    /// it with `digest` when not.
    pub fn claim(&self, event_id: Uuid, digest: SubmissionDigest) -> Claim {
        self.claim_at(event_id, digest, Instant::now())
    }

    /// The number of keys remembered now.
    pub fn len(&self) -> usize {
        self.lock().digests.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn claim_at(&self, event_id: Uuid, digest: SubmissionDigest, now: Instant) -> Claim {
        let mut state = self.lock();
        while let Some(&(oldest, seen_at)) = state.arrivals.front() {
            if now.saturating_duration_since(seen_at) < self.ttl {
                break;
            }
            state.arrivals.pop_front();
            state.digests.remove(&oldest);
        }
        match state.digests.get(&event_id) {
            Some(first) if *first == digest => return Claim::Retry,
            Some(_) => return Claim::Conflict,
            None => {}
        }
        if state.digests.len() >= self.capacity
            && let Some((oldest, _)) = state.arrivals.pop_front()
        {
            state.digests.remove(&oldest);
        }
        state.digests.insert(event_id, digest);
        state.arrivals.push_back((event_id, now));
        Claim::First
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic
        // (none of them can), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use score_shared::SubmissionContent;

    use super::*;

    fn digest(grade1: i32) -> SubmissionDigest {
        SubmissionDigest::of(&SubmissionContent {
            acc_nbr: "13800138000",
            grades: [grade1, 4, 3],
            texts: ["", "", ""],
            scene: None,
        })
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_key_is_first_then_a_retry_with_the_same_digest_and_a_conflict_with_another() {
        let keys = RecentKeys::default();
        assert_eq!(keys.claim(id(1), digest(5)), Claim::First);
        assert_eq!(keys.claim(id(1), digest(5)), Claim::Retry);
        assert_eq!(keys.claim(id(1), digest(1)), Claim::Conflict);
        assert_eq!(
            keys.claim(id(1), digest(5)),
            Claim::Retry,
            "the first digest stays the key's meaning"
        );
        assert_eq!(keys.claim(id(2), digest(1)), Claim::First);
    }

    #[test]
    fn the_memory_never_holds_more_than_its_capacity_and_forgets_the_oldest() {
        let keys = RecentKeys::new(3, RECENT_KEYS_TTL);
        for n in 0..10 {
            keys.claim(id(n), digest(5));
            assert!(keys.len() <= 3, "after {n}: {}", keys.len());
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.claim(id(9), digest(1)),
            Claim::Conflict,
            "the newest is kept"
        );
        assert_eq!(
            keys.claim(id(0), digest(1)),
            Claim::First,
            "the oldest was forgotten"
        );
    }

    #[test]
    fn a_key_is_forgotten_once_older_than_the_ttl() {
        let ttl = Duration::from_secs(60);
        let keys = RecentKeys::new(10, ttl);
        let start = Instant::now();
        assert_eq!(keys.claim_at(id(1), digest(5), start), Claim::First);
        assert_eq!(
            keys.claim_at(id(2), digest(5), start + ttl / 2),
            Claim::First
        );
        assert_eq!(
            keys.claim_at(id(1), digest(1), start + ttl - Duration::from_millis(1)),
            Claim::Conflict
        );

        assert_eq!(keys.claim_at(id(3), digest(5), start + ttl), Claim::First);

        assert_eq!(keys.len(), 2, "key 1 expired, keys 2 and 3 remain");
        assert_eq!(
            keys.claim_at(id(1), digest(1), start + ttl),
            Claim::First,
            "an expired key is new again"
        );
    }
}
