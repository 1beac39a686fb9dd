//! Data keys written ahead of need, so that an account's first submission
//! does not wait for its key's write.
//!
//! A key record names no account (`score_shared::personal`), so a key can
//! be written before anyone knows which account it will serve. The
//! [`KeyPool`] holds keys whose writes the broker has acknowledged; a
//! background task ([`KeyPool::keep_full`]) writes as many as were taken
//! since its last round, all at once, so the writes are batched and never
//! on a request's path. A submission that finds the pool empty (at start,
//! or when the broker cannot keep up) writes its key itself, as before:
//! the pool changes when a key is written, never whether it is written
//! before the first event sealed under it.
//!
//! Each key is handed out once, to one account. Keys left in the pool when
//! the process stops are returned by [`KeyPool::drain`] for their
//! tombstones, so a restart leaves no unused keys in the key topic (a crash
//! leaves at most the pool's capacity).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use score_shared::DataKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long the refill waits after a round in which a write failed (the
/// broker is down or refusing), before it tries again.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Acknowledged data keys, each to be handed to one account. Shared by
/// reference: one pool per process.
#[derive(Debug)]
pub struct KeyPool {
    /// Oldest first: keys are handed out in the order they were written.
    ready: Mutex<VecDeque<Arc<DataKey>>>,
    capacity: usize,
    taken: Notify,
}

impl KeyPool {
    /// An empty pool that [`Self::keep_full`] fills up to `capacity` keys
    /// (0: no pool, every new account's key is written on its request's
    /// path).
    pub fn new(capacity: usize) -> Self {
        Self {
            ready: Mutex::default(),
            capacity,
            taken: Notify::new(),
        }
    }

    /// The most keys held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys ready to be handed out.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest key whose write was acknowledged, never handed out
    /// before; `None` when the pool is empty.
    pub fn take(&self) -> Option<Arc<DataKey>> {
        let key = {
            let mut ready = self.lock();
            let key = ready.pop_front();
            record_level(ready.len());
            key
        };
        if key.is_some() {
            self.taken.notify_one();
        }
        key
    }

    /// Writes keys until `stop`: in each round, as many new keys as the
    /// pool lacks, through `write` all at once (it must return only once
    /// the broker has acknowledged the key, or failed); the acknowledged
    /// ones join the pool. Then waits until a key is taken. After a round
    /// with a failed write it pauses [`RETRY_PAUSE`]. A round under way
    /// when `stop` fires is finished, so that its acknowledged keys are in
    /// the pool for [`Self::drain`].
    pub async fn keep_full<W, F, E>(&self, write: W, stop: &CancellationToken)
    where
        W: Fn(Arc<DataKey>) -> F,
        F: Future<Output = Result<(), E>>,
    {
        if self.capacity == 0 {
            return;
        }
        while !stop.is_cancelled() {
            let shortfall = self.capacity.saturating_sub(self.len());
            if shortfall == 0 {
                tokio::select! {
                    () = self.taken.notified() => continue,
                    () = stop.cancelled() => break,
                }
            }
            let keys: Vec<Arc<DataKey>> = (0..shortfall)
                .map(|_| Arc::new(DataKey::generate()))
                .collect();
            let written =
                futures::future::join_all(keys.iter().map(|key| write(Arc::clone(key)))).await;
            let acknowledged: Vec<Arc<DataKey>> = keys
                .into_iter()
                .zip(written)
                .filter_map(|(key, written)| written.is_ok().then_some(key))
                .collect();
            let failed = shortfall - acknowledged.len();
            {
                let mut ready = self.lock();
                ready.extend(acknowledged);
                record_level(ready.len());
            }
            if failed > 0 {
                tracing::warn!(
                    failed,
                    written = shortfall - failed,
                    "data keys for the pool not written; trying again shortly"
                );
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }

    /// Empties the pool: the keys no account was given.
    pub fn drain(&self) -> Vec<Arc<DataKey>> {
        let mut ready = self.lock();
        record_level(0);
        ready.drain(..).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<DataKey>>> {
        self.ready.lock().expect("the key pool is never poisoned")
    }
}

fn record_level(ready: usize) {
    metrics::gauge!("data_key_pool_keys").set(ready as f64);
}

/// Runs what `keep` makes until `done` holds (checked every 10 ms, for at
/// most five seconds), then cancels the token `keep` was given and waits
/// for it to finish. For tests of the pool's refill.
#[cfg(test)]
pub(crate) async fn run_until<K, F>(keep: K, done: impl Fn() -> bool)
where
    K: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()>,
{
    let stop = CancellationToken::new();
    let watch = async {
        for _ in 0..500 {
            if done() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
    };
    tokio::join!(keep(stop.clone()), watch);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs `keep_full` with `write` until `until` holds, then stops it.
    async fn fill_until<W, F>(pool: &KeyPool, write: W, until: impl Fn(&KeyPool) -> bool)
    where
        W: Fn(Arc<DataKey>) -> F,
        F: Future<Output = Result<(), String>>,
    {
        run_until(
            |stop| async move { pool.keep_full(write, &stop).await },
            || until(pool),
        )
        .await;
    }

    fn counted<'a>(
        writes: &'a AtomicUsize,
    ) -> impl Fn(Arc<DataKey>) -> futures::future::BoxFuture<'a, Result<(), String>> {
        move |_key| {
            Box::pin(async move {
                writes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn the_pool_fills_to_its_capacity_and_no_further() {
        let pool = KeyPool::new(8);
        let writes = AtomicUsize::new(0);

        fill_until(&pool, counted(&writes), |pool| pool.len() == 8).await;

        assert_eq!(pool.len(), 8);
        assert_eq!(writes.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn every_key_taken_is_written_again_and_none_is_handed_out_twice() {
        let pool = KeyPool::new(4);
        let writes = AtomicUsize::new(0);
        let mut handed_out = HashSet::new();
        let stop = CancellationToken::new();
        let take_twelve = async {
            while handed_out.len() < 12 {
                match pool.take() {
                    Some(key) => assert!(handed_out.insert(key.kid), "a key handed out twice"),
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            // Let the last refill finish.
            for _ in 0..100 {
                if pool.len() == 4 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.cancel();
        };
        tokio::join!(pool.keep_full(counted(&writes), &stop), take_twelve);

        assert_eq!(pool.len(), 4);
        assert_eq!(writes.load(Ordering::SeqCst), 16, "twelve taken, four kept");
        let kept: HashSet<_> = pool.drain().iter().map(|key| key.kid).collect();
        assert!(kept.is_disjoint(&handed_out));
    }

    #[tokio::test]
    async fn a_key_whose_write_failed_never_joins_the_pool() {
        let pool = KeyPool::new(6);
        let failed = Mutex::new(HashSet::new());
        let calls = AtomicUsize::new(0);
        // Every other write fails, in the first round only.
        let write = |key: Arc<DataKey>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let fails = call < 6 && call.is_multiple_of(2);
            if fails {
                failed.lock().unwrap().insert(key.kid);
            }
            async move {
                if fails {
                    Err("not acknowledged".to_owned())
                } else {
                    Ok(())
                }
            }
        };

        fill_until(&pool, write, |pool| pool.len() == 6).await;

        let held: HashSet<_> = pool.drain().iter().map(|key| key.kid).collect();
        assert_eq!(held.len(), 6, "refilled after the pause");
        assert!(held.is_disjoint(&failed.lock().unwrap()));
        assert_eq!(failed.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn keys_are_handed_out_oldest_first() {
        let pool = KeyPool::new(3);
        let order = Mutex::new(Vec::new());
        let write = |key: Arc<DataKey>| {
            order.lock().unwrap().push(key.kid);
            async { Ok::<(), String>(()) }
        };
        fill_until(&pool, write, |pool| pool.len() == 3).await;

        let taken: Vec<_> = std::iter::from_fn(|| pool.take().map(|key| key.kid)).collect();

        assert_eq!(taken, *order.lock().unwrap());
    }

    #[tokio::test]
    async fn a_drained_pool_is_empty_and_gives_back_what_it_held() {
        let pool = KeyPool::new(3);
        let writes = AtomicUsize::new(0);
        fill_until(&pool, counted(&writes), |pool| pool.len() == 3).await;

        let drained = pool.drain();

        assert_eq!(drained.len(), 3);
        assert!(pool.is_empty());
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_pool_of_no_keys_writes_none() {
        let pool = KeyPool::new(0);
        let writes = AtomicUsize::new(0);

        pool.keep_full(counted(&writes), &CancellationToken::new())
            .await;

        assert_eq!(writes.load(Ordering::SeqCst), 0);
        assert!(pool.take().is_none());
    }
}
