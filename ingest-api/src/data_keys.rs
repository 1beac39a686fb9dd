//! The data keys submissions are sealed under, one per account at a time.
//!
//! An account's key is reused for its submissions for a while: it is kept
//! in a bounded in-process cache ([`DataKeys`]) for the data key cache's
//! time to live (`SCORES_DATA_KEY_CACHE_SECONDS`). A key enters the cache
//! only once its write is acknowledged (it comes from the
//! [`crate::key_pool`], or is written on the spot), and concurrent first
//! submissions of one account wait for the same key.
//!
//! The time to live is short because `projector forget` removes an
//! account's keys from the key topic (it rewrites their blocks without
//! them) and cannot reach this cache: until the entry expires, the
//! account's new submissions are still sealed under the forgotten key, and
//! the projector projects those events as forgotten.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use score_shared::{AccountRef, DataKey};

/// Most accounts whose key is cached. A cached key is about 150 bytes with
/// the cache's bookkeeping, so the cache stays within a few tens of MiB;
/// beyond it, the keys of accounts not seen again soonest are dropped
/// (their next submission takes a new key).
pub const DATA_KEY_CACHE_CAPACITY: usize = 100_000;

/// The data keys this process sealed under recently, by account. Cheap to
/// clone: every clone is the same cache.
///
/// Nearly every submission of high-volume traffic is from an account not
/// in the cache, so a miss (lookup, insert, eviction) is the path to keep
/// cheap: the cache is a sharded CLOCK cache ([`quick_cache`]) whose entries
/// carry their own expiry, checked on lookup.
#[derive(Clone)]
pub struct DataKeys {
    cache: Arc<Cache<AccountRef, CachedKey>>,
    time_to_live: Duration,
}

/// A cached key and until when it may seal.
#[derive(Clone)]
struct CachedKey {
    key: DataKey,
    expires_at: Instant,
}

impl DataKeys {
    /// An empty cache whose keys are reused for `time_to_live` after they
    /// were written (zero: never reused).
    pub fn new(time_to_live: Duration) -> Self {
        Self {
            cache: Arc::new(Cache::new(DATA_KEY_CACHE_CAPACITY)),
            time_to_live,
        }
    }

    /// The key to seal `account_ref`'s next event under: the cached one, or
    /// else the key `new_key` gives, which must have been written to the
    /// key topic and acknowledged; it is cached and returned. While one
    /// caller gets an account's new key, the others asking for that account
    /// wait for it and get the same key.
    ///
    /// # Errors
    ///
    /// What `new_key` failed with; nothing is cached then. A caller that was
    /// waiting on the failed `new_key` calls its own (the cache's next
    /// caller for the account takes over the write), and so gets its own
    /// answer; callers bound their wait with their own deadline.
    pub async fn key_for<N, F, E>(&self, account_ref: AccountRef, new_key: N) -> Result<DataKey, E>
    where
        N: FnOnce() -> F,
        F: Future<Output = Result<DataKey, E>>,
    {
        let now = Instant::now();
        let entry = self
            .cache
            .entry_async(&account_ref, |_, cached| {
                if cached.expires_at > now {
                    EntryAction::Retain(cached.key.clone())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            })
            .await;
        let guard = match entry {
            EntryResult::Retained(key) => return Ok(key),
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => guard,
            EntryResult::Removed(..) | EntryResult::Timeout => {
                unreachable!("the lookup neither removes entries nor times out")
            }
        };
        // `new_key` is called only on a miss: it may take a key from the
        // pool. Dropping the guard on an error leaves the account uncached.
        let key = new_key().await?;
        let _replaced_meanwhile = guard.insert(CachedKey {
            key: key.clone(),
            expires_at: Instant::now() + self.time_to_live,
        });
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;
    use score_shared::Pepper;

    use super::*;

    fn account(number: &str) -> AccountRef {
        let pepper: Pepper = base64::engine::general_purpose::STANDARD
            .encode([9u8; 32])
            .parse()
            .expect("a valid pepper");
        AccountRef::of(&pepper, number)
    }

    /// The key for `number`, a new one (counted in `writes`) if need be.
    async fn key_counted(keys: &DataKeys, number: &str, writes: &AtomicUsize) -> DataKey {
        keys.key_for(account(number), counted_write(writes, Duration::ZERO))
            .await
            .expect("written")
    }

    /// A new key, written after `delay`, counting the calls.
    fn counted_write<'a>(
        writes: &'a AtomicUsize,
        delay: Duration,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'a, Result<DataKey, String>> {
        move || {
            Box::pin(async move {
                writes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok(DataKey::generate())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_first_submissions_of_one_account_write_one_key() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let writes = AtomicUsize::new(0);

        let got = futures::future::join_all((0..16).map(|_| {
            keys.key_for(
                account("13800138000"),
                counted_write(&writes, Duration::from_millis(50)),
            )
        }))
        .await;

        assert_eq!(writes.load(Ordering::SeqCst), 1, "one write for sixteen");
        let kids: std::collections::HashSet<_> = got
            .into_iter()
            .map(|key| key.expect("written").kid)
            .collect();
        assert_eq!(kids.len(), 1, "everyone got the one key");
    }

    #[tokio::test]
    async fn a_key_is_reused_for_the_account_within_its_time_to_live() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let writes = AtomicUsize::new(0);

        let first = key_counted(&keys, "13800138000", &writes).await;
        let second = key_counted(&keys, "13800138000", &writes).await;

        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert_eq!(first.kid, second.kid);
    }

    #[tokio::test]
    async fn each_account_gets_a_key_of_its_own() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let writes = AtomicUsize::new(0);

        let one = key_counted(&keys, "13800138000", &writes).await;
        let other = key_counted(&keys, "13900139000", &writes).await;

        assert_eq!(writes.load(Ordering::SeqCst), 2);
        assert_ne!(one.kid, other.kid);
    }

    #[tokio::test]
    async fn the_key_handed_out_is_the_new_key_given_and_a_hit_asks_for_none() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let given = DataKey::generate();

        let key = keys
            .key_for(account("13800138000"), || {
                let given = given.clone();
                async move { Ok::<_, String>(given) }
            })
            .await
            .expect("written");
        let again = keys
            .key_for(account("13800138000"), || async {
                panic!("a cached key is not asked for again")
            })
            .await
            .map_err(|never: String| never);

        assert_eq!(key.kid, given.kid);
        assert_eq!(again.expect("cached").kid, given.kid);
    }

    #[tokio::test]
    async fn a_failed_new_key_is_not_cached_and_the_next_submission_asks_for_another() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let failed = keys
            .key_for(account("13800138000"), || async {
                Err::<DataKey, _>("the broker refused it".to_owned())
            })
            .await;
        let writes = AtomicUsize::new(0);
        key_counted(&keys, "13800138000", &writes).await;

        assert_eq!(failed.unwrap_err(), "the broker refused it");
        assert_eq!(
            writes.load(Ordering::SeqCst),
            1,
            "the failure was not cached"
        );
    }

    #[tokio::test]
    async fn when_a_write_fails_one_waiting_submission_writes_the_key_the_others_get() {
        let keys = DataKeys::new(Duration::from_secs(60));
        let writes = AtomicUsize::new(0);

        let got = futures::future::join_all((0..8).map(|_| {
            keys.key_for(account("13800138000"), || {
                let first = writes.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if first {
                        Err("not acknowledged".to_owned())
                    } else {
                        Ok(DataKey::generate())
                    }
                }
            })
        }))
        .await;

        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "the failed write, then one"
        );
        let failed = got.iter().filter(|key| key.is_err()).count();
        assert_eq!(failed, 1, "only the failed write's caller gets its error");
        let kids: std::collections::HashSet<_> = got.iter().flatten().map(|key| key.kid).collect();
        assert_eq!(kids.len(), 1, "the others all got the one key written");
    }

    #[tokio::test]
    async fn a_key_is_replaced_once_its_time_to_live_has_passed() {
        let keys = DataKeys::new(Duration::from_millis(100));
        let writes = AtomicUsize::new(0);

        let first = key_counted(&keys, "13800138000", &writes).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let later = key_counted(&keys, "13800138000", &writes).await;

        assert_eq!(writes.load(Ordering::SeqCst), 2);
        assert_ne!(first.kid, later.kid);
    }

    #[tokio::test]
    async fn a_time_to_live_of_zero_writes_a_key_for_every_submission() {
        let keys = DataKeys::new(Duration::ZERO);
        let writes = AtomicUsize::new(0);

        for _ in 0..3 {
            keys.key_for(
                account("13800138000"),
                counted_write(&writes, Duration::ZERO),
            )
            .await
            .expect("written");
        }

        assert_eq!(writes.load(Ordering::SeqCst), 3);
    }
}
