//! `projector forget`: forgets people, in the log and in every projection.
//!
//! For the account numbers given:
//!
//! 1. The event log is read from its beginning to its end, for the data
//!    key ids the accounts' sealed events name (their record key is the
//!    account reference, their key id is in clear). Keys are written ahead
//!    of need and name no account, so the log is where an account's keys
//!    are found.
//! 2. For each account the request is journaled in `erasure_request` (so
//!    `status` counts it as pending until every projection has applied
//!    it). Then every key block holding one of the keys found is rewritten
//!    without them (a tombstone when nothing is left), and from then on no
//!    reader can open those events (once the broker's cleaner has compacted
//!    the key topic, the old versions of the blocks are gone from its
//!    disks). Rewrites take the key topic's lock ([`KeyTopicLock`]) and
//!    read the key topic to its end first, so two `forget`s never undo each
//!    other's rewrite. Then each account's `AccountForgotten` event is
//!    appended, keyed by the account reference so that it lands after the
//!    account's events on their partition.
//! 3. The log is read again from where the first read ended to its new
//!    end: an ingest API may have handed the account a new key while the
//!    first read ran. Any such key is forgotten too and a further erasure
//!    appended (journaled like the first), until a read finds no new key.
//! 4. Unless `--no-wait`, it waits until every projection's position on
//!    the partition has passed the account's last erasure: then no table
//!    holds the number or its comments.
//!
//! A re-run for the same number is safe: no block holds its keys any more,
//! so nothing is rewritten, and a second erasure changes nothing more.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use score_shared::config::KafkaArgs;
use score_shared::event::{self, Event};
use score_shared::personal::KeyRecord;
use score_shared::{AccountForgotten, AccountRef, KeyBlock, masked};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batch::LogRecord;
use crate::config::ForgetArgs;
use crate::log_reader::{LogReader, Start};
use crate::projection::{self, TableSet};
use crate::{db, store};

/// How long the broker gets to acknowledge a key block's rewrite or the
/// event.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the projections' positions are read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Records taken at a time while reading the log.
const READ_BATCH: usize = 5000;
/// How long a read of the log may wait for records it knows are there.
const READ_WAIT: Duration = Duration::from_secs(30);
/// How long a `forget` waits for another to finish rewriting key blocks.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How many times the log is read again for keys handed out meanwhile.
const MAX_LATE_READS: usize = 5;
/// What a stopped forget has done.
const STOPPED: &str = "stopped while reading the log: run the same command again (a re-run \
                       is safe)";

/// What forgetting one account did.
#[derive(Clone, Debug, Serialize)]
pub struct Forgotten {
    /// The number, masked.
    pub account: String,
    pub account_ref: AccountRef,
    /// The account's last erasure event (the only one unless a key was
    /// handed out while the log was read).
    pub erasure_event_id: Uuid,
    /// Erasure events appended for the account.
    pub erasures: usize,
    pub keys_forgotten: usize,
    pub partition: i32,
    pub offset: i64,
    /// Projections that applied the erasure (all of them unless
    /// `--no-wait`).
    pub applied_by: Vec<&'static str>,
}

/// One line for an operator (or a JSON object with `json`).
pub fn render(forgotten: &Forgotten, json: bool) -> String {
    if json {
        return serde_json::to_string(forgotten).expect("a report serializes");
    }
    let applied = if forgotten.applied_by.is_empty() {
        "projections not waited for".to_owned()
    } else {
        format!("applied by {}", forgotten.applied_by.join(", "))
    };
    let erasure = if forgotten.erasures > 1 {
        format!(
            "{} erasures, the last {}",
            forgotten.erasures, forgotten.erasure_event_id
        )
    } else {
        format!("erasure {}", forgotten.erasure_event_id)
    };
    format!(
        "{}: forgotten ({}; {erasure} at partition {} offset {}; {applied})",
        forgotten.account,
        counted(
            forgotten.keys_forgotten,
            "data key forgotten",
            "data keys forgotten"
        ),
        forgotten.partition,
        forgotten.offset,
    )
}

/// `count` and the noun that goes with it.
pub fn counted(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// The account numbers of `args`: the arguments, then the file's lines
/// (blank lines and `#` comments skipped), each once.
///
/// # Errors
///
/// An unreadable file, or no number at all.
pub fn accounts(args: &ForgetArgs) -> anyhow::Result<Vec<String>> {
    let mut accounts: Vec<String> = args.accounts.clone();
    if let Some(path) = &args.from_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the numbers to forget from {}", path.display()))?;
        accounts.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let mut seen = BTreeSet::new();
    accounts.retain(|account| seen.insert(account.clone()));
    if accounts.is_empty() {
        bail!("no account number to forget: give one or more, or --from-file");
    }
    Ok(accounts)
}

/// The data keys the events of some accounts are sealed under, as found in
/// the log so far, and which of them have been forgotten.
#[derive(Debug)]
struct KeysInUse {
    /// The accounts looked for, by record key (the reference in hex).
    wanted: HashMap<Vec<u8>, AccountRef>,
    found: HashMap<AccountRef, BTreeSet<Uuid>>,
    forgotten: BTreeSet<Uuid>,
}

impl KeysInUse {
    fn new(accounts: impl IntoIterator<Item = AccountRef>) -> Self {
        Self {
            wanted: accounts
                .into_iter()
                .map(|account| (account.to_string().into_bytes(), account))
                .collect(),
            found: HashMap::new(),
            forgotten: BTreeSet::new(),
        }
    }

    /// Notes the keys of the sealed events in `records` that belong to a
    /// wanted account: keyed by its reference and naming it.
    fn note(&mut self, records: &[LogRecord]) {
        for record in records {
            let Some(account) = record.key.as_deref().and_then(|key| self.wanted.get(key)) else {
                continue;
            };
            if let Some(Ok(Event::SealedScore(sealed))) =
                record.payload.as_deref().map(event::decode)
                && sealed.account_ref == *account
            {
                self.found.entry(*account).or_default().insert(sealed.kid);
            }
        }
    }

    /// The keys of `account` found and not yet handed out to be forgotten;
    /// they count as forgotten from now on.
    fn not_yet_forgotten(&mut self, account: AccountRef) -> Vec<Uuid> {
        let fresh: Vec<Uuid> = self
            .found
            .get(&account)
            .into_iter()
            .flatten()
            .filter(|kid| !self.forgotten.contains(kid))
            .copied()
            .collect();
        self.forgotten.extend(&fresh);
        fresh
    }
}

/// Forgets every account of `args`, reporting each as it is done.
///
/// # Errors
///
/// No pepper, an unknown projection, an unreachable broker or MySQL, a
/// `stop`, or a projection that has not applied an erasure within
/// `--wait-seconds`.
pub async fn forget(
    args: &ForgetArgs,
    stop: &CancellationToken,
    mut report: impl FnMut(&Forgotten),
) -> anyhow::Result<Vec<Forgotten>> {
    let accounts = accounts(args)?;
    let pepper = args.personal.pepper()?;
    let projections = args
        .projections
        .iter()
        .map(|name| projection::lookup(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = db::pool(&args.database)?;
    db::migrate(&args.database, &pool).await?;
    score_shared::kafka::ensure_topic(&args.kafka).await?;
    score_shared::kafka::ensure_keys_topic(&args.kafka, &args.personal.keys_topic).await?;
    let writer = Writer {
        producer: score_shared::kafka::producer_config(&args.kafka, BROKER_TIMEOUT)
            .create()
            .context("creating the Kafka producer")?,
        pool: &pool,
        kafka: &args.kafka,
        keys_topic: &args.personal.keys_topic,
        reason: &args.reason,
    };

    let mut forgotten: Vec<Forgotten> = accounts
        .iter()
        .map(|account| Forgotten {
            account: masked(account),
            account_ref: AccountRef::of(&pepper, account),
            erasure_event_id: Uuid::nil(),
            erasures: 0,
            keys_forgotten: 0,
            partition: 0,
            offset: 0,
            applied_by: Vec::new(),
        })
        .collect();
    let mut keys = KeysInUse::new(forgotten.iter().map(|f| f.account_ref));
    let mut reader = LogReader::open(&args.kafka, "forget", Start::Beginning).await?;
    // The whole log, then what was appended meanwhile: keys an ingest API
    // handed an account while it was read, until a read finds none.
    let mut all_forgotten = false;
    for read in 0..=MAX_LATE_READS {
        let message = if read == 0 {
            "reading the log for data keys"
        } else {
            reader.look_at_the_end().await?;
            "reading what was appended meanwhile"
        };
        reader
            .read_to_the_end(READ_BATCH, READ_WAIT, stop, STOPPED, message, |records| {
                keys.note(records);
            })
            .await?;
        let mut late = 0;
        let mut due = Vec::new();
        for account in &mut forgotten {
            let kids = keys.not_yet_forgotten(account.account_ref);
            // Every account's erasure after the first read; after a later
            // one, another for an account handed a new key.
            if account.erasures == 0 || !kids.is_empty() {
                if account.erasures > 0 {
                    late += kids.len();
                }
                due.push((account, kids));
            }
        }
        writer.forget(due, stop).await?;
        if read > 0 && late == 0 {
            all_forgotten = true;
            break;
        }
        if late > 0 {
            tracing::info!(keys = late, "forgot keys handed out while the log was read");
        }
    }
    ensure!(
        all_forgotten,
        "new data keys kept appearing for these accounts while the log was read \
         ({MAX_LATE_READS} times): each was forgotten and followed by an erasure; run the \
         same command again once their submissions stop"
    );

    for account in &mut forgotten {
        if !args.no_wait {
            account.applied_by = wait_for_projections(
                &pool,
                &args.kafka.topic,
                &projections,
                account.partition,
                account.offset,
                Duration::from_secs(args.wait_seconds),
            )
            .await?;
        }
        report(account);
    }
    Ok(forgotten)
}

/// Writes accounts' erasures to the log and the journal.
struct Writer<'a> {
    producer: FutureProducer,
    pool: &'a MySqlPool,
    kafka: &'a KafkaArgs,
    keys_topic: &'a str,
    reason: &'a str,
}

impl Writer<'_> {
    /// Forgets each account of `due` and the keys found for it since its
    /// last erasure: journals an erasure for each, rewrites the key blocks
    /// holding the keys without them, then appends each erasure, and notes
    /// it in the account.
    async fn forget(
        &self,
        due: Vec<(&mut Forgotten, Vec<Uuid>)>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut erasures = Vec::with_capacity(due.len());
        for (account, kids) in &due {
            let erasure = AccountForgotten::new(account.account_ref, self.reason);
            journal(self.pool, &erasure, kids.len()).await?;
            erasures.push(erasure);
        }
        let kids: HashSet<Uuid> = due.iter().flat_map(|(_, kids)| kids).copied().collect();
        if !kids.is_empty() {
            self.forget_keys(&kids, stop).await?;
        }
        for ((account, kids), erasure) in due.into_iter().zip(erasures) {
            let payload = erasure.encode();
            let record_key = erasure.record_key();
            let event = FutureRecord::to(&self.kafka.topic)
                .key(&record_key)
                .payload(&payload);
            let delivered = self
                .producer
                .send(event, Timeout::After(BROKER_TIMEOUT))
                .await
                .map_err(|(error, _)| error)
                .context("appending the AccountForgotten event")?;
            tracing::info!(
                account = %account.account,
                keys = kids.len(),
                partition = delivered.partition,
                offset = delivered.offset,
                "account forgotten in the log"
            );
            account.erasure_event_id = erasure.event_id;
            account.erasures += 1;
            account.keys_forgotten += kids.len();
            account.partition = delivered.partition;
            account.offset = delivered.offset;
        }
        Ok(())
    }

    /// Rewrites every key block holding one of `kids` without them (its
    /// tombstone when no key is left), holding the key topic's lock from
    /// before the key topic is read until the rewrites are acknowledged.
    async fn forget_keys(
        &self,
        kids: &HashSet<Uuid>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let lock = KeyTopicLock::acquire(self.pool, self.keys_topic).await?;
        let mut kafka = self.kafka.clone();
        kafka.topic = self.keys_topic.to_owned();
        let mut reader = LogReader::open(&kafka, "forget-keys", Start::Beginning).await?;
        let mut blocks = BlocksHolding::new(kids);
        reader
            .read_to_the_end(
                READ_BATCH,
                READ_WAIT,
                stop,
                STOPPED,
                "reading the key topic for the keys' blocks",
                |records| blocks.note(records),
            )
            .await?;
        let rewrites = blocks.rewrites();
        for (id, rewrite) in &rewrites {
            let record_key = score_shared::personal::block_record_key(*id);
            let payload = rewrite.as_ref().map(KeyBlock::encode);
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(self.keys_topic).key(&record_key);
            if let Some(payload) = &payload {
                record = record.payload(payload);
            }
            self.producer
                .send(record, Timeout::After(BROKER_TIMEOUT))
                .await
                .map_err(|(error, _)| error)
                .context("rewriting a block of data keys")?;
        }
        lock.release().await?;
        tracing::info!(
            keys = kids.len(),
            blocks_rewritten = rewrites.iter().filter(|(_, block)| block.is_some()).count(),
            blocks_tombstoned = rewrites.iter().filter(|(_, block)| block.is_none()).count(),
            "data keys forgotten in the key topic"
        );
        Ok(())
    }
}

/// The key blocks that hold some of the keys to forget, as the key topic
/// holds them now (read from its beginning).
struct BlocksHolding<'a> {
    kids: &'a HashSet<Uuid>,
    /// Each block that held one of the keys: its newest record (`None`
    /// once tombstoned).
    blocks: BTreeMap<Uuid, Option<KeyBlock>>,
}

impl<'a> BlocksHolding<'a> {
    fn new(kids: &'a HashSet<Uuid>) -> Self {
        Self {
            kids,
            blocks: BTreeMap::new(),
        }
    }

    fn note(&mut self, records: &[LogRecord]) {
        for record in records {
            let Some(record_key) = record.key.as_deref() else {
                continue;
            };
            match KeyRecord::decode(record_key, record.payload.as_deref()) {
                Ok(KeyRecord::Block(block)) => {
                    let holds = block.keys().iter().any(|key| self.kids.contains(&key.kid));
                    if holds || self.blocks.contains_key(&block.id()) {
                        self.blocks.insert(block.id(), Some(block));
                    }
                }
                Ok(KeyRecord::Forgotten { block }) => {
                    if let Some(held) = self.blocks.get_mut(&block) {
                        *held = None;
                    }
                }
                // The projector's key ring warns of these.
                Err(_) => {}
            }
        }
    }

    /// What to write for each block still holding one of the keys: the
    /// block without them, or `None` for its tombstone.
    fn rewrites(self) -> Vec<(Uuid, Option<KeyBlock>)> {
        let kids = self.kids;
        self.blocks
            .into_iter()
            .filter_map(|(id, block)| {
                let block = block?;
                let holds = block.keys().iter().any(|key| kids.contains(&key.kid));
                holds.then(|| (id, block.without(|kid| kids.contains(&kid))))
            })
            .collect()
    }
}

/// The MySQL lock (`GET_LOCK`) every `forget` holds while it rewrites a key
/// topic's blocks: a rewrite is the block as read minus some keys, so two
/// at once could each write back a key the other forgot. Held on a
/// connection of its own, closed when the lock is released or dropped
/// (MySQL then releases the lock itself).
struct KeyTopicLock {
    connection: sqlx::MySqlConnection,
    name: String,
}

impl KeyTopicLock {
    async fn acquire(pool: &MySqlPool, keys_topic: &str) -> anyhow::Result<Self> {
        // Lock names are at most 64 characters; a longer topic name shares
        // its lock with topics of the same beginning, which only waits.
        let name: String = format!("score-keys:{keys_topic}")
            .chars()
            .take(64)
            .collect();
        let mut connection = pool.acquire().await?.detach();
        let acquired: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&name)
            .bind(LOCK_WAIT.as_secs())
            .fetch_one(&mut connection)
            .await
            .context("taking the key topic's lock")?;
        ensure!(
            acquired == Some(1),
            "another `projector forget` has been rewriting the key topic {keys_topic} for \
             {LOCK_WAIT:?}; run this one again once it is done"
        );
        Ok(Self { connection, name })
    }

    async fn release(mut self) -> anyhow::Result<()> {
        sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&self.name)
            .execute(&mut self.connection)
            .await
            .context("releasing the key topic's lock")?;
        Ok(())
    }
}

/// Notes the request in `erasure_request` before anything is written to
/// the log.
async fn journal(pool: &MySqlPool, erasure: &AccountForgotten, keys: usize) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO erasure_request (event_id, account_ref, reason, requested_at, keys_forgotten) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(erasure.event_id.hyphenated().to_string())
    .bind(erasure.account_ref.to_string())
    .bind(erasure.reason.as_str())
    .bind(erasure.occurred_at.naive_utc())
    .bind(i64::try_from(keys).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Waits until every projection's position on `partition` is past
/// `offset`; returns their names.
async fn wait_for_projections(
    pool: &MySqlPool,
    topic: &str,
    projections: &[&'static dyn projection::Projection],
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<&'static str>> {
    let deadline = Instant::now() + timeout;
    let mut applied = Vec::new();
    for projection in projections {
        let tables = TableSet::live(*projection);
        loop {
            let mut connection = pool.acquire().await?;
            let position = store::positions(&mut connection, &tables.position, topic)
                .await?
                .into_iter()
                .find(|p| p.kafka_partition == partition)
                .map_or(0, |p| p.next_offset);
            drop(connection);
            if position > offset {
                applied.push(projection.name());
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "projection {} has not applied the erasure (partition {partition}, offset \
                     {offset}) within {timeout:?}; the log has forgotten the account, the table \
                     will once the projector catches up (see `projector status`)",
                    projection.name()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ForgetArgs {
        let mut command = vec!["projector", "forget", "--reason", "ticket 7"];
        command.extend(extra);
        match crate::config::Cli::try_parse_from(command)
            .expect("valid settings")
            .command
        {
            crate::config::Command::Forget(args) => args,
            other => panic!("not a forget command: {other:?}"),
        }
    }

    #[test]
    fn numbers_come_from_the_arguments_and_the_file_each_once() {
        let dir = std::env::temp_dir().join(format!("forget-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("numbers.txt");
        std::fs::write(&file, "# ticket 7\n13800138001\n\n 13800138000 \n").unwrap();
        let file = file.to_str().unwrap().to_owned();
        let accounts = accounts(&args(&["13800138000", "--from-file", &file])).unwrap();
        assert_eq!(accounts, ["13800138000", "13800138001"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_number_at_all_is_a_clear_error() {
        let error = accounts(&args(&[])).unwrap_err().to_string();
        assert!(error.contains("no account number"), "{error}");
    }

    #[test]
    fn one_is_singular() {
        assert_eq!(counted(1, "account", "accounts"), "1 account");
        assert_eq!(counted(0, "account", "accounts"), "0 accounts");
        assert_eq!(counted(2, "account", "accounts"), "2 accounts");
    }

    fn pepper() -> score_shared::Pepper {
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap()
    }

    /// A record as the ingest API appends a rating of `number` sealed
    /// under `key`, at `offset`.
    fn sealed_rating(number: &str, key: &score_shared::DataKey, offset: i64) -> LogRecord {
        let raw = score_shared::RawSubmission {
            acc_nbr: Some(number.into()),
            grades: [Some(5.into()), Some(4.into()), Some(3.into())],
            texts: [Some("好".into()), Some(String::new().into()), None],
            scene: None,
        };
        let submission =
            score_shared::Submission::parse(&raw, &score_shared::ValidationRules::default())
                .expect("valid");
        let event = score_shared::ScoreSubmitted::new(
            score_shared::event::new_event_id(),
            score_shared::Channel::LegacyForm,
            &submission,
        );
        let sealed = event.seal(AccountRef::of(&pepper(), number), key);
        LogRecord {
            partition: 0,
            offset,
            key: Some(sealed.record_key().into_bytes()),
            payload: Some(sealed.encode()),
        }
    }

    #[test]
    fn an_accounts_keys_are_found_in_its_sealed_events_and_nobody_elses() {
        let wanted = AccountRef::of(&pepper(), "13800138000");
        let mut keys = KeysInUse::new([wanted]);
        let (first, second, others) = (
            score_shared::DataKey::generate(),
            score_shared::DataKey::generate(),
            score_shared::DataKey::generate(),
        );
        let mut misfiled = sealed_rating("13900139000", &others, 3);
        misfiled.key = Some(wanted.to_string().into_bytes());
        let erasure = AccountForgotten::new(wanted, "ticket 1");
        keys.note(&[
            sealed_rating("13800138000", &first, 0),
            sealed_rating("13900139000", &others, 1),
            sealed_rating("13800138000", &first, 2),
            misfiled,
            LogRecord {
                partition: 0,
                offset: 4,
                key: Some(erasure.record_key().into_bytes()),
                payload: Some(erasure.encode()),
            },
            sealed_rating("13800138000", &second, 5),
        ]);
        assert_eq!(
            keys.not_yet_forgotten(wanted),
            BTreeSet::from([first.kid, second.kid])
                .into_iter()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_key_is_handed_out_to_be_forgotten_once_and_a_key_found_later_on_its_own() {
        let wanted = AccountRef::of(&pepper(), "13800138000");
        let mut keys = KeysInUse::new([wanted]);
        let (early, late) = (
            score_shared::DataKey::generate(),
            score_shared::DataKey::generate(),
        );
        keys.note(&[sealed_rating("13800138000", &early, 0)]);
        assert_eq!(keys.not_yet_forgotten(wanted), [early.kid]);
        assert_eq!(keys.not_yet_forgotten(wanted), Vec::<Uuid>::new());
        keys.note(&[
            sealed_rating("13800138000", &early, 1),
            sealed_rating("13800138000", &late, 2),
        ]);
        assert_eq!(keys.not_yet_forgotten(wanted), [late.kid]);
        assert_eq!(
            keys.not_yet_forgotten(AccountRef::of(&pepper(), "13900139000")),
            Vec::<Uuid>::new()
        );
    }

    fn key_record(offset: i64, block: &KeyBlock, tombstone: bool) -> LogRecord {
        LogRecord {
            partition: 0,
            offset,
            key: Some(block.record_key().into_bytes()),
            payload: (!tombstone).then(|| block.encode()),
        }
    }

    #[test]
    fn only_the_blocks_holding_the_keys_are_rewritten_as_they_are_now_without_them() {
        let shared = KeyBlock::generate(3);
        let alone = KeyBlock::generate(1);
        let untouched = KeyBlock::generate(2);
        let gone = KeyBlock::generate(2);
        let [first, second, third] = shared.keys() else {
            unreachable!()
        };
        // Since written, another forget took the third key out of `shared`.
        let shared_now = shared.without(|kid| kid == third.kid).unwrap();
        let kids = HashSet::from([first.kid, alone.keys()[0].kid, gone.keys()[0].kid]);
        let mut blocks = BlocksHolding::new(&kids);
        blocks.note(&[
            key_record(0, &shared, false),
            key_record(1, &alone, false),
            key_record(2, &untouched, false),
            key_record(3, &gone, false),
            key_record(4, &shared_now, false),
            key_record(5, &gone, true),
            LogRecord {
                partition: 0,
                offset: 6,
                key: Some(b"not a block".to_vec()),
                payload: Some(b"{}".to_vec()),
            },
        ]);
        let rewrites: HashMap<Uuid, Option<KeyBlock>> = blocks.rewrites().into_iter().collect();
        assert_eq!(rewrites.len(), 2, "{rewrites:?}");
        let shared_rewrite = rewrites[&shared.id()].as_ref().expect("keys are left");
        assert_eq!(
            shared_rewrite.keys(),
            std::slice::from_ref(second),
            "the block as it is now, without the key: the third key is not brought back"
        );
        assert_eq!(rewrites[&alone.id()], None, "nothing left: a tombstone");
    }

    #[test]
    fn keys_no_block_holds_any_more_need_no_rewrite() {
        let block = KeyBlock::generate(2);
        let kid = block.keys()[0].kid;
        let kids = HashSet::from([kid]);
        let mut blocks = BlocksHolding::new(&kids);
        let forgotten = block.without(|k| k == kid).unwrap();
        blocks.note(&[
            key_record(0, &block, false),
            key_record(1, &forgotten, false),
        ]);
        assert!(blocks.rewrites().is_empty(), "a re-run writes nothing");
    }

    #[test]
    fn a_reason_is_required() {
        let parsed = crate::config::Cli::try_parse_from(["projector", "forget", "13800138000"]);
        assert!(parsed.is_err());
    }
}
