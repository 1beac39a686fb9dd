//! Data keys written ahead of need, in blocks, so that an account's first
//! submission does not wait for its key's write.
//!
//! A key names no account (`score_shared::personal`), so keys can be
//! written before anyone knows which accounts they will serve, many to a
//! record: a [`KeyBlock`] of up to [`MAX_BLOCK_KEYS`] keys is one record of
//! the key topic. The [`KeyPool`] holds keys whose block the broker has
//! acknowledged, and hands them out oldest first, each once, to one
//! account. A background task ([`KeyPool::keep_full`]) writes whole blocks
//! of [`KeyPool::block_keys`] keys (the capacity, at most
//! [`MAX_BLOCK_KEYS`]): as soon as at least one block's worth is missing,
//! it writes as many whole blocks as are missing, all at once, never on a
//! request's path. So, once filled, the pool holds more than its capacity
//! less one block and never more than its capacity, and the key topic gets
//! one record per block rather than one per account. A submission that
//! finds the pool empty (at start, or when the broker cannot keep up)
//! writes a block of one key itself, as before: the pool changes when a
//! key is written, never whether it is written before the first event
//! sealed under it.
//!
//! Only `projector forget` ever rewrites a block, and only a block that
//! holds a key some event is sealed under. So the pool remembers which
//! block each of its keys came from: when the process stops,
//! [`KeyPool::drain`] tells the blocks none of whose keys was handed out,
//! which can be tombstoned safely (nothing is sealed under them, and no
//! forget will ever rewrite them), and how many keys are left unused in
//! blocks partly handed out, which stay in the key topic, sealing nothing.
//! Keys are handed out oldest first, so only the oldest block can be
//! partly handed out: a restart leaves fewer than one block's unused keys
//! behind (a crash, at most the pool's capacity).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use score_shared::personal::MAX_BLOCK_KEYS;
use score_shared::{DataKey, KeyBlock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the refill waits after a round in which a write failed (the
/// broker is down or refusing), before it tries again.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Acknowledged data keys, each to be handed to one account, with the
/// blocks they came from. Shared by reference: one pool per process.
#[derive(Debug)]
pub struct KeyPool {
    ready: Mutex<Ready>,
    capacity: usize,
    taken: Notify,
}

/// What [`KeyPool::drain`] found left in the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unused {
    /// The blocks none of whose keys was handed out, oldest first: no event
    /// is sealed under them and no forget will ever rewrite them, so their
    /// tombstones are safe.
    pub blocks: Vec<Uuid>,
    /// The keys never handed out of blocks that were partly handed out:
    /// those blocks stay in the key topic (events are sealed under their
    /// other keys), and these keys seal nothing.
    pub keys_left_in_used_blocks: usize,
}

/// The keys ready, by block, oldest block first.
#[derive(Debug, Default)]
struct Ready {
    /// Never an empty block: one is dropped with its last key.
    blocks: VecDeque<PooledBlock>,
    /// The keys of all `blocks`.
    keys: usize,
}

/// The keys of one acknowledged block that are still in the pool.
#[derive(Debug)]
struct PooledBlock {
    id: Uuid,
    /// How many keys the block was written with.
    written: usize,
    /// Its keys not handed out yet, in the block's order.
    keys: VecDeque<DataKey>,
}

impl PooledBlock {
    fn new(block: KeyBlock) -> Self {
        let id = block.id();
        let keys: VecDeque<DataKey> = block.into_keys().into_iter().collect();
        Self {
            id,
            written: keys.len(),
            keys,
        }
    }

    /// Whether none of its keys was handed out.
    fn untouched(&self) -> bool {
        self.keys.len() == self.written
    }
}

impl Ready {
    fn push(&mut self, block: KeyBlock) {
        let block = PooledBlock::new(block);
        if !block.keys.is_empty() {
            self.keys += block.keys.len();
            self.blocks.push_back(block);
        }
    }

    fn pop(&mut self) -> Option<DataKey> {
        let oldest = self.blocks.front_mut()?;
        let key = oldest.keys.pop_front()?;
        if oldest.keys.is_empty() {
            self.blocks.pop_front();
        }
        self.keys -= 1;
        Some(key)
    }

    fn drain(&mut self) -> Unused {
        let mut unused = Unused::default();
        for block in self.blocks.drain(..) {
            if block.untouched() {
                unused.blocks.push(block.id);
            } else {
                unused.keys_left_in_used_blocks += block.keys.len();
            }
        }
        self.keys = 0;
        unused
    }
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

    /// The keys of each block the refill writes: the capacity, at most
    /// [`MAX_BLOCK_KEYS`].
    pub fn block_keys(&self) -> usize {
        self.capacity.min(MAX_BLOCK_KEYS)
    }

    /// Keys ready to be handed out.
    pub fn len(&self) -> usize {
        self.lock().keys
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest key whose block's write was acknowledged, never handed
    /// out before; `None` when the pool is empty.
    ///
    /// The refill is woken only when this take leaves a block's worth
    /// missing: waking it on every take would cost a task wake-up per new
    /// account for a round that writes nothing.
    pub fn take(&self) -> Option<DataKey> {
        let (key, left) = {
            let mut ready = self.lock();
            (ready.pop(), ready.keys)
        };
        if key.is_some() && self.blocks_missing(left) > 0 {
            self.taken.notify_one();
        }
        key
    }

    /// The whole blocks a pool holding `ready` keys lacks.
    fn blocks_missing(&self, ready: usize) -> usize {
        self.capacity.saturating_sub(ready) / self.block_keys()
    }

    /// Writes blocks of keys until `stop`. In each round where the pool
    /// lacks at least one block's worth of keys ([`Self::block_keys`]), it
    /// writes as many whole blocks as it lacks, through `write` all at once
    /// (`write` must return only once the broker has acknowledged the
    /// block's record, or failed); the keys of the acknowledged blocks join
    /// the pool. Otherwise it waits until a key is taken. After a round
    /// with a failed write it pauses [`RETRY_PAUSE`]. A round under way
    /// when `stop` fires is finished, so that its acknowledged keys are in
    /// the pool for [`Self::drain`].
    pub async fn keep_full<W, F, E>(&self, write: W, stop: &CancellationToken)
    where
        W: Fn(Arc<KeyBlock>) -> F,
        F: Future<Output = Result<(), E>>,
    {
        if self.capacity == 0 {
            return;
        }
        while !stop.is_cancelled() {
            let blocks = self.blocks_missing(self.len());
            if blocks == 0 {
                tokio::select! {
                    () = self.taken.notified() => continue,
                    () = stop.cancelled() => break,
                }
            }
            let failed = self.refill(&write, blocks).await;
            if failed > 0 {
                tracing::warn!(
                    failed,
                    written = blocks - failed,
                    keys_per_block = self.block_keys(),
                    "data key blocks for the pool not written; trying again shortly"
                );
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }

    /// One round: writes `blocks` new blocks through `write` at once and
    /// adds the keys of the acknowledged ones. Returns how many failed.
    async fn refill<W, F, E>(&self, write: &W, blocks: usize) -> usize
    where
        W: Fn(Arc<KeyBlock>) -> F,
        F: Future<Output = Result<(), E>>,
    {
        let blocks: Vec<Arc<KeyBlock>> = (0..blocks)
            .map(|_| Arc::new(KeyBlock::generate(self.block_keys())))
            .collect();
        let written =
            futures::future::join_all(blocks.iter().map(|block| write(Arc::clone(block)))).await;
        let mut failed = 0;
        let mut ready = self.lock();
        for (block, written) in blocks.into_iter().zip(written) {
            match written {
                Ok(()) => ready.push(Arc::unwrap_or_clone(block)),
                Err(_) => failed += 1,
            }
        }
        failed
    }

    /// Empties the pool: the blocks none of whose keys was handed out, and
    /// how many keys are left in the others ([`Unused`]).
    pub fn drain(&self) -> Unused {
        self.lock().drain()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().expect("the key pool is never poisoned")
    }
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
        W: Fn(Arc<KeyBlock>) -> F,
        F: Future<Output = Result<(), String>>,
    {
        run_until(
            |stop| async move { pool.keep_full(write, &stop).await },
            || until(pool),
        )
        .await;
    }

    /// Runs `keep_full` with `write` for 100 ms, long enough for a round
    /// it had to make.
    async fn refill_briefly<W, F>(pool: &KeyPool, write: W)
    where
        W: Fn(Arc<KeyBlock>) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let started = std::time::Instant::now();
        fill_until(pool, write, |_| {
            started.elapsed() >= Duration::from_millis(100)
        })
        .await;
    }

    /// A write that succeeds and keeps each block written, in call order.
    fn recorded(
        written: &Mutex<Vec<KeyBlock>>,
    ) -> impl Fn(Arc<KeyBlock>) -> futures::future::Ready<Result<(), String>> + '_ {
        move |block| {
            written.lock().unwrap().push((*block).clone());
            futures::future::ready(Ok(()))
        }
    }

    /// The number of keys of each block in `written`.
    fn sizes(written: &Mutex<Vec<KeyBlock>>) -> Vec<usize> {
        written
            .lock()
            .unwrap()
            .iter()
            .map(|block| block.keys().len())
            .collect()
    }

    /// Takes `count` keys, which must be there.
    fn take(pool: &KeyPool, count: usize) -> Vec<DataKey> {
        (0..count)
            .map(|_| pool.take().expect("a key in the pool"))
            .collect()
    }

    #[tokio::test]
    async fn the_pool_fills_to_its_capacity_in_one_block_and_no_further() {
        let pool = KeyPool::new(8);
        let written = Mutex::new(Vec::new());

        fill_until(&pool, recorded(&written), |pool| pool.len() == 8).await;
        refill_briefly(&pool, recorded(&written)).await;

        assert_eq!(pool.len(), 8);
        assert_eq!(sizes(&written), [8], "one record of eight keys");
    }

    #[tokio::test]
    async fn a_refill_round_writes_as_many_whole_blocks_as_are_missing() {
        // 600 keys: blocks of 256, of which two fit at first.
        let pool = KeyPool::new(600);
        assert_eq!(pool.block_keys(), MAX_BLOCK_KEYS);
        let written = Mutex::new(Vec::new());

        fill_until(&pool, recorded(&written), |pool| pool.len() == 512).await;
        refill_briefly(&pool, recorded(&written)).await;

        assert_eq!(
            sizes(&written),
            [256, 256],
            "88 missing is less than a block"
        );
        assert_eq!(pool.len(), 512);

        // 255 missing: still less than a block.
        take(&pool, 167);
        refill_briefly(&pool, recorded(&written)).await;
        assert_eq!(written.lock().unwrap().len(), 2);

        // 256 missing: one block, and the pool is at its capacity.
        take(&pool, 1);
        fill_until(&pool, recorded(&written), |pool| pool.len() == 600).await;
        refill_briefly(&pool, recorded(&written)).await;
        assert_eq!(sizes(&written), [256, 256, 256]);
        assert_eq!(pool.len(), 600);
    }

    #[tokio::test]
    async fn the_blocks_of_a_round_are_written_at_once() {
        let pool = KeyPool::new(2 * MAX_BLOCK_KEYS);
        // Each write waits for the other: one after the other, neither
        // would ever finish.
        let both_sent = tokio::sync::Barrier::new(2);
        let write = |_block: Arc<KeyBlock>| {
            let both_sent = &both_sent;
            async move {
                both_sent.wait().await;
                Ok::<(), String>(())
            }
        };

        let filled = tokio::time::timeout(
            Duration::from_secs(2),
            fill_until(&pool, write, |pool| pool.len() == 2 * MAX_BLOCK_KEYS),
        )
        .await;

        assert!(filled.is_ok(), "the second block's write never began");
        assert_eq!(pool.len(), 2 * MAX_BLOCK_KEYS);
    }

    #[tokio::test]
    async fn a_shortfall_of_less_than_a_block_writes_nothing() {
        let pool = KeyPool::new(4);
        let written = Mutex::new(Vec::new());
        fill_until(&pool, recorded(&written), |pool| pool.len() == 4).await;

        take(&pool, 3);
        refill_briefly(&pool, recorded(&written)).await;

        assert_eq!(sizes(&written), [4], "three taken of a block of four");
        assert_eq!(pool.len(), 1);

        take(&pool, 1);
        fill_until(&pool, recorded(&written), |pool| pool.len() == 4).await;
        assert_eq!(
            sizes(&written),
            [4, 4],
            "a block once a block's worth was taken"
        );
    }

    #[tokio::test]
    async fn a_block_is_written_for_each_blocks_worth_taken_and_no_key_is_handed_out_twice() {
        let pool = KeyPool::new(4);
        let written = Mutex::new(Vec::new());
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
        tokio::join!(pool.keep_full(recorded(&written), &stop), take_twelve);

        assert_eq!(pool.len(), 4);
        assert_eq!(sizes(&written), [4, 4, 4, 4], "twelve taken, four kept");
        let written_kids: HashSet<Uuid> = written
            .lock()
            .unwrap()
            .iter()
            .flat_map(|block| block.keys().iter().map(|key| key.kid))
            .collect();
        assert!(handed_out.is_subset(&written_kids), "only written keys");
        let kept: HashSet<Uuid> = take(&pool, 4).iter().map(|key| key.kid).collect();
        assert!(kept.is_disjoint(&handed_out));
    }

    #[tokio::test]
    async fn a_block_whose_write_failed_never_joins_the_pool() {
        let pool = KeyPool::new(3 * MAX_BLOCK_KEYS);
        let failed = Mutex::new(HashSet::new());
        let calls = AtomicUsize::new(0);
        // The second block of the first round fails.
        let write = |block: Arc<KeyBlock>| {
            let fails = calls.fetch_add(1, Ordering::SeqCst) == 1;
            if fails {
                failed
                    .lock()
                    .unwrap()
                    .extend(block.keys().iter().map(|key| key.kid));
            }
            futures::future::ready(if fails {
                Err("not acknowledged".to_owned())
            } else {
                Ok(())
            })
        };

        fill_until(&pool, write, |pool| pool.len() == 3 * MAX_BLOCK_KEYS).await;

        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "three blocks, then one again"
        );
        let held: HashSet<Uuid> = take(&pool, 3 * MAX_BLOCK_KEYS)
            .iter()
            .map(|key| key.kid)
            .collect();
        assert_eq!(held.len(), 3 * MAX_BLOCK_KEYS, "refilled after the pause");
        assert_eq!(failed.lock().unwrap().len(), MAX_BLOCK_KEYS);
        assert!(held.is_disjoint(&failed.lock().unwrap()));
    }

    #[tokio::test]
    async fn keys_are_handed_out_oldest_first() {
        let pool = KeyPool::new(2 * MAX_BLOCK_KEYS);
        let written = Mutex::new(Vec::new());
        fill_until(&pool, recorded(&written), |pool| {
            pool.len() == 2 * MAX_BLOCK_KEYS
        })
        .await;

        let taken: Vec<Uuid> = std::iter::from_fn(|| pool.take().map(|key| key.kid)).collect();

        let in_written_order: Vec<Uuid> = written
            .lock()
            .unwrap()
            .iter()
            .flat_map(|block| block.keys().iter().map(|key| key.kid))
            .collect();
        assert_eq!(taken, in_written_order);
    }

    #[tokio::test]
    async fn a_drain_reports_only_the_blocks_no_key_was_handed_out_of() {
        let pool = KeyPool::new(3 * MAX_BLOCK_KEYS);
        let written = Mutex::new(Vec::new());
        fill_until(&pool, recorded(&written), |pool| {
            pool.len() == 3 * MAX_BLOCK_KEYS
        })
        .await;
        let ids: Vec<Uuid> = written.lock().unwrap().iter().map(KeyBlock::id).collect();
        // The first block all handed out, the second ten of its keys.
        take(&pool, MAX_BLOCK_KEYS + 10);

        let unused = pool.drain();

        assert_eq!(
            unused,
            Unused {
                blocks: vec![ids[2]],
                keys_left_in_used_blocks: MAX_BLOCK_KEYS - 10,
            }
        );
        assert!(pool.is_empty());
        assert!(pool.take().is_none());
        assert_eq!(pool.drain(), Unused::default(), "drained once");
    }

    #[tokio::test]
    async fn a_drained_untouched_pool_gives_back_all_its_blocks() {
        let pool = KeyPool::new(3);
        let written = Mutex::new(Vec::new());
        fill_until(&pool, recorded(&written), |pool| pool.len() == 3).await;

        let unused = pool.drain();

        assert_eq!(unused.blocks, [written.lock().unwrap()[0].id()]);
        assert_eq!(unused.keys_left_in_used_blocks, 0);
        assert!(pool.is_empty());
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_pool_of_no_keys_writes_none() {
        let pool = KeyPool::new(0);
        let written = Mutex::new(Vec::new());

        pool.keep_full(recorded(&written), &CancellationToken::new())
            .await;

        assert!(written.lock().unwrap().is_empty());
        assert!(pool.take().is_none());
    }
}
