//! `projector forget`s running at once (issue 15), against the real broker
//! and MariaDB, for accounts whose data keys share one key block.
//!
//! A forget rewrites a block as it read it minus the keys it forgets, so
//! two at once, each reading the block before the other's rewrite, would
//! each write back a key the other forgot: that person's ratings could be
//! opened again. The key topic's lock (a MySQL `GET_LOCK` held from before
//! the key topic is read until the rewrites are acknowledged) serializes
//! the rewrites. Here eighteen accounts get their keys in one block, then
//! eight forgets run at once, each a task of its own on threads of its own
//! as separate processes would be, twice; after each round the key topic,
//! as compaction leaves it, must hold none of the forgotten accounts' keys
//! and every key of the others. (Without the lock, two forgets at once
//! undo each other now and then; eight at once, nearly always.)

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use pipeline_tests::{
    TEST_ACCOUNT_PEPPER, TestDatabase, TestTopic, accepted_event, init_logs, keys_topic_of,
    records_of, test_personal_data,
};
use projector::append::SealingAppender;
use projector::config::ForgetArgs;
use score_shared::config::{KafkaArgs, LogArgs};
use score_shared::personal::KeyRecord;
use score_shared::telemetry::LogFormat;
use score_shared::{
    AccountRef, Channel, Event, KeyBlock, Pepper, RawSubmission, ScoreSubmitted, SealedScore,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many forgets run at once in a round, each of one account.
const AT_ONCE: usize = 8;
/// Rounds of forgets, one after the other.
const ROUNDS: usize = 2;
/// Accounts never forgotten.
const KEPT: usize = 2;
/// Accounts rated, each once: their keys go into one block.
const ACCOUNTS: usize = AT_ONCE * ROUNDS + KEPT;

/// The phone number of account `i` (of [`ACCOUNTS`]).
fn number(i: usize) -> String {
    format!("138001381{i:02}")
}

/// The pepper the test's forgets and appender share.
fn pepper() -> Pepper {
    TEST_ACCOUNT_PEPPER.parse().expect("the test pepper")
}

/// A rating of `number` as the ingest API accepts it, with a comment.
fn rating(number: &str) -> ScoreSubmitted {
    let raw = RawSubmission {
        acc_nbr: Some(json!(number)),
        grades: [Some(json!(5)), Some(json!(4)), Some(json!(3))],
        texts: [Some(json!("只給自己看的評論")), None, None],
        scene: None,
    };
    accepted_event(&raw, Channel::ApiV1)
}

/// Appends one sealed rating of each account, in one chunk: their keys are
/// written first, as one block.
async fn rate_every_account(topic: &TestTopic) {
    let personal = test_personal_data(&keys_topic_of(topic.name()));
    let mut appender = SealingAppender::new(&topic.kafka, &personal, 100)
        .await
        .expect("an appender");
    for i in 0..ACCOUNTS {
        let event = rating(&number(i));
        let account = appender.account_of(&event);
        appender
            .rating(event, account)
            .await
            .expect("the rating is queued");
    }
    appender.flush().await.expect("the ratings are appended");
    assert_eq!(appender.appended(), ACCOUNTS as u64);
}

/// The key blocks the key topic holds once compacted: the last record of
/// each record key, tombstones dropped.
async fn compacted_key_blocks(topic: &TestTopic) -> Vec<KeyBlock> {
    let records = records_of(&KafkaArgs {
        topic: keys_topic_of(topic.name()),
        ..topic.kafka.clone()
    })
    .await;
    let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    for record in records {
        let key = record.key.expect("every key record has a record key");
        last.insert(key, record.payload);
    }
    last.into_iter()
        .filter_map(|(key, payload)| {
            match KeyRecord::decode(&key, payload.as_deref()).expect("a key record") {
                KeyRecord::Block(block) => Some(block),
                KeyRecord::Forgotten { .. } => None,
            }
        })
        .collect()
}

/// The data key id of each account, in order: the `kid` of its one sealed
/// event.
async fn kid_of_each_account(topic: &TestTopic) -> Vec<Uuid> {
    let events: Vec<SealedScore> = topic
        .payloads()
        .await
        .iter()
        .filter_map(|payload| match score_shared::event::decode(payload) {
            Ok(Event::SealedScore(sealed)) => Some(sealed),
            _ => None,
        })
        .collect();
    let pepper = pepper();
    (0..ACCOUNTS)
        .map(|i| {
            let number = number(i);
            let account = AccountRef::of(&pepper, &number);
            let kids: BTreeSet<Uuid> = events
                .iter()
                .filter(|event| event.account_ref == account)
                .map(|event| event.kid)
                .collect();
            assert_eq!(kids.len(), 1, "one key for {number}'s one rating: {kids:?}");
            kids.into_iter().next().expect("one key")
        })
        .collect()
}

/// A `projector forget` of `number` as an operator would run it, without
/// waiting for projections (none runs).
fn forget_args(topic: &TestTopic, database: &TestDatabase, number: &str) -> ForgetArgs {
    ForgetArgs {
        accounts: vec![number.to_owned()],
        from_file: None,
        reason: format!("ticket for {number}"),
        projections: vec!["grade".to_owned(), "account_summary".to_owned()],
        no_wait: true,
        wait_seconds: 60,
        json: false,
        database: database.args(),
        kafka: topic.kafka.clone(),
        personal: test_personal_data(&keys_topic_of(topic.name())),
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    }
}

/// Runs a forget of each of `accounts`, all at once, each a task of its own
/// (as separate processes would, none waits while another blocks its
/// thread); each must succeed and forget its account's one key.
async fn forget_at_once(topic: &TestTopic, database: &TestDatabase, accounts: Range<usize>) {
    let forgets = accounts.map(|i| {
        let number = number(i);
        let args = forget_args(topic, database, &number);
        tokio::spawn(async move {
            let forgotten = projector::forget::forget(&args, &CancellationToken::new(), |_| {})
                .await
                .unwrap_or_else(|error| panic!("forgetting {number} failed: {error:#}"));
            assert_eq!(forgotten.len(), 1, "{forgotten:?}");
            assert_eq!(
                forgotten[0].keys_forgotten, 1,
                "{number}'s one key is forgotten: {forgotten:?}"
            );
        })
    });
    for forget in futures::future::join_all(forgets).await {
        forget.expect("a forget ran to its end");
    }
}

/// Asserts that the key topic, once compacted, holds exactly one block,
/// `block`, holding the keys (`kids`) of every account from `forgotten`
/// on and none of the keys of the accounts before.
async fn assert_only_kept_keys_are_held(
    topic: &TestTopic,
    block: Uuid,
    kids: &[Uuid],
    forgotten: usize,
) {
    let blocks = compacted_key_blocks(topic).await;
    assert_eq!(
        blocks.iter().map(KeyBlock::id).collect::<Vec<_>>(),
        [block],
        "the shared block is rewritten in place, never tombstoned while keys are left"
    );
    let held: BTreeSet<Uuid> = blocks[0].keys().iter().map(|key| key.kid).collect();
    let brought_back: Vec<String> = (0..forgotten)
        .filter(|&i| held.contains(&kids[i]))
        .map(number)
        .collect();
    assert!(
        brought_back.is_empty(),
        "a forget wrote back the keys of {brought_back:?}, forgotten by another forget running \
         at the same time: their ratings can be opened again"
    );
    let lost: Vec<String> = (forgotten..ACCOUNTS)
        .filter(|&i| !held.contains(&kids[i]))
        .map(number)
        .collect();
    assert!(
        lost.is_empty(),
        "the keys of {lost:?}, never forgotten, are gone from the block"
    );
    assert_eq!(held.len(), ACCOUNTS - forgotten, "{held:?}");
}

// A worker for each forget of a round ([`AT_ONCE`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn forgets_at_once_of_accounts_sharing_a_key_block_all_hold() {
    init_logs();
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    rate_every_account(&topic).await;

    let kids = kid_of_each_account(&topic).await;
    let blocks = compacted_key_blocks(&topic).await;
    assert_eq!(
        blocks.len(),
        1,
        "the keys are written as one block: {blocks:?}"
    );
    let block = blocks[0].id();
    let held: BTreeSet<Uuid> = blocks[0].keys().iter().map(|key| key.kid).collect();
    assert_eq!(
        held,
        kids.iter().copied().collect(),
        "the one block holds every account's key"
    );

    for round in 0..ROUNDS {
        let forgotten = (round + 1) * AT_ONCE;
        forget_at_once(&topic, &database, round * AT_ONCE..forgotten).await;
        assert_only_kept_keys_are_held(&topic, block, &kids, forgotten).await;
    }
    database.drop_database().await;
}
