//! `projector forget`: forgets people, in the log and in every projection.
//!
//! For each account number given:
//!
//! 1. The request is journaled in `erasure_request` (so `status` counts it
//!    as pending until every projection has applied it).
//! 2. Every data key of the account still in the key topic gets a
//!    tombstone: from then on no reader can open its sealed events, and
//!    once the broker's cleaner has compacted the key topic the keys are
//!    gone from its disks.
//! 3. An `AccountForgotten` event is appended to the log, keyed by the
//!    account reference so it lands after the account's events on their
//!    partition.
//! 4. Unless `--no-wait`, it waits until every projection's position on
//!    that partition has passed the event: then no table holds the number
//!    or its comments.
//!
//! A re-run for the same number is safe: no key is left to tombstone, and a
//! second erasure event changes nothing more.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use score_shared::{AccountForgotten, AccountRef, masked};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::ForgetArgs;
use crate::keys::KeyRing;
use crate::projection::{self, TableSet};
use crate::{db, store};

/// How long the broker gets to acknowledge a tombstone or the event.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the projections' positions are read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// What forgetting one account did.
#[derive(Clone, Debug, Serialize)]
pub struct Forgotten {
    /// The number, masked.
    pub account: String,
    pub account_ref: AccountRef,
    pub erasure_event_id: Uuid,
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
    format!(
        "{}: forgotten ({}; erasure {} at partition {} offset {}; {applied})",
        forgotten.account,
        counted(
            forgotten.keys_forgotten,
            "data key tombstoned",
            "data keys tombstoned"
        ),
        forgotten.erasure_event_id,
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

/// Forgets every account of `args`, reporting each as it is done.
///
/// # Errors
///
/// No pepper, an unknown projection, an unreachable broker or MySQL, or a
/// projection that has not applied an erasure within `--wait-seconds`.
pub async fn forget(
    args: &ForgetArgs,
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
    let producer: FutureProducer =
        score_shared::kafka::producer_config(&args.kafka, BROKER_TIMEOUT)
            .create()
            .context("creating the Kafka producer")?;

    let refs: Vec<(String, AccountRef)> = accounts
        .iter()
        .map(|account| (account.clone(), AccountRef::of(&pepper, account)))
        .collect();
    let wanted: BTreeSet<AccountRef> = refs.iter().map(|(_, r)| *r).collect();
    // The key topic read to its end now: every key not tombstoned.
    let ring = KeyRing::new(&args.kafka, &args.personal)?;
    ring.catch_up().await?;
    let mut keys = ring.keys().kids_of(&wanted);

    let mut done = Vec::with_capacity(refs.len());
    for (account, account_ref) in refs {
        let erasure = AccountForgotten::new(account_ref, args.reason.clone());
        let kids = keys.remove(&account_ref).unwrap_or_default();
        journal(&pool, &erasure, kids.len()).await?;
        for kid in &kids {
            let record_key = score_shared::personal::key_record_key(&account_ref, *kid);
            let tombstone: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&args.personal.keys_topic).key(&record_key);
            producer
                .send(tombstone, Timeout::After(BROKER_TIMEOUT))
                .await
                .map_err(|(error, _)| error)
                .context("writing a data key's tombstone")?;
        }
        let payload = erasure.encode();
        let record_key = erasure.record_key();
        let event = FutureRecord::to(&args.kafka.topic)
            .key(&record_key)
            .payload(&payload);
        let delivered = producer
            .send(event, Timeout::After(BROKER_TIMEOUT))
            .await
            .map_err(|(error, _)| error)
            .context("appending the AccountForgotten event")?;
        tracing::info!(
            account = %masked(&account),
            keys = kids.len(),
            partition = delivered.partition,
            offset = delivered.offset,
            "account forgotten in the log"
        );
        let mut forgotten = Forgotten {
            account: masked(&account),
            account_ref,
            erasure_event_id: erasure.event_id,
            keys_forgotten: kids.len(),
            partition: delivered.partition,
            offset: delivered.offset,
            applied_by: Vec::new(),
        };
        if !args.no_wait {
            forgotten.applied_by = wait_for_projections(
                &pool,
                &args.kafka.topic,
                &projections,
                delivered.partition,
                delivered.offset,
                Duration::from_secs(args.wait_seconds),
            )
            .await?;
        }
        report(&forgotten);
        done.push(forgotten);
    }
    Ok(done)
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

    #[test]
    fn a_reason_is_required() {
        let parsed = crate::config::Cli::try_parse_from(["projector", "forget", "13800138000"]);
        assert!(parsed.is_err());
    }
}
