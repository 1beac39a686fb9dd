//! `projector migrate-log`: moves a log to the sealed format (issue 15).
//!
//! Reads every record of the source topic from its beginning to the end it
//! has when the command starts, and appends to a new, empty topic:
//!
//! - a rating in clear (versions 1 and 2): sealed under a data key of its
//!   account, keyed by the account reference, with the same event id, time,
//!   channel, scene, request id and digest (keys are written, and
//!   acknowledged, before the events sealed under them);
//! - a rating of an account forgotten later in the source log: sealed under
//!   a key that is never written, so it reads as forgotten, as it would
//!   have had it been sealed when written;
//! - a sealed rating or an erasure: copied as it is, keyed by its account
//!   reference (an old log may have keyed it by number);
//! - a record that is no event this code reads: left behind, counted and
//!   listed in the report (by partition and offset only).
//!
//! Then it reads the new topic back and checks that it holds exactly the
//! records appended and every event id the source had.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use score_shared::event::{self, Event};
use score_shared::{AccountRef, DataKey};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::append::SealingAppender;
use crate::batch::LogRecord;
use crate::config::MigrateLogArgs;
use crate::log_reader::{LogReader, Start};

/// Records taken at a time.
const READ_BATCH: usize = 2000;
/// How long a read waits for records the log is known to hold.
const READ_WAIT: Duration = Duration::from_secs(30);

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrationSummary {
    /// Records read from the source topic.
    pub read: u64,
    /// Ratings in clear, sealed.
    pub sealed: u64,
    /// Ratings of forgotten accounts, sealed under a key never written.
    pub sealed_forgotten: u64,
    /// Sealed ratings and erasures, copied as they were.
    pub copied: u64,
    /// Records that are no event, not migrated (in the report).
    pub left_behind: u64,
    /// Data keys written.
    pub keys_written: u64,
    /// Records the new topic holds, counted after the migration.
    pub verified: u64,
}

impl fmt::Display for MigrationSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records read: {} sealed, {} of forgotten accounts sealed without a key, {} copied \
             as they were, {} left behind; {} data keys written; verified: the new topic holds {} \
             records and every event id",
            self.read,
            self.sealed,
            self.sealed_forgotten,
            self.copied,
            self.left_behind,
            self.keys_written,
            self.verified
        )
    }
}

/// One line of the report: a record left behind.
#[derive(Serialize)]
struct LeftBehind<'a> {
    partition: i32,
    offset: i64,
    reason: &'a str,
}

/// Migrates `args.kafka.topic` into `args.to_topic`.
///
/// # Errors
///
/// A destination that is not empty, no pepper, an unreachable broker, an
/// append refused, or a new topic that does not hold what was appended.
pub async fn migrate_log(
    args: &MigrateLogArgs,
    stop: &CancellationToken,
) -> anyhow::Result<MigrationSummary> {
    ensure!(
        args.to_topic != args.kafka.topic,
        "the new topic must not be the source topic"
    );
    let mut destination = args.kafka.clone();
    destination.topic = args.to_topic.clone();
    score_shared::kafka::ensure_topic(&destination).await?;
    let existing = LogReader::open(&destination, "migrate-check", Start::Beginning).await?;
    if existing.total() > 0 {
        bail!(
            "the new topic {} already holds {} records; migrate into a new, empty topic",
            args.to_topic,
            existing.total()
        );
    }
    drop(existing);

    let mut appender = SealingAppender::new(&destination, &args.personal, args.chunk_size).await?;
    let forgotten = forgotten_accounts(args, stop).await?;
    let mut report = std::io::BufWriter::new(
        std::fs::File::create(&args.report)
            .with_context(|| format!("creating the report {}", args.report.display()))?,
    );
    let mut summary = MigrationSummary::default();
    let mut event_ids = HashSet::new();
    let mut reader = LogReader::open(&args.kafka, "migrate", Start::Beginning).await?;
    let total = reader.total();
    tracing::info!(from = %args.kafka.topic, to = %args.to_topic, records = total, "migrating the log");
    let mut last_report = tokio::time::Instant::now();
    while let Some(records) = reader
        .next_to_the_end(READ_BATCH, READ_WAIT, stop, STOPPED)
        .await?
    {
        for record in records {
            summary.read += 1;
            let decoded = record.payload.as_deref().map(event::decode);
            match decoded {
                Some(Ok(Event::ScoreSubmitted(rating))) => {
                    event_ids.insert(rating.event_id);
                    let account_ref = appender.account_of(&rating);
                    if forgotten.contains(&account_ref) {
                        let unwritten = DataKey::generate();
                        let sealed = rating.seal(account_ref, &unwritten);
                        appender
                            .raw(Some(sealed.record_key().into_bytes()), sealed.encode())
                            .await?;
                        summary.sealed_forgotten += 1;
                    } else {
                        appender.rating(rating, account_ref).await?;
                        summary.sealed += 1;
                    }
                }
                Some(Ok(Event::SealedScore(sealed))) => {
                    event_ids.insert(sealed.event_id);
                    copy(&mut appender, sealed.record_key(), record).await?;
                    summary.copied += 1;
                }
                Some(Ok(Event::AccountForgotten(erasure))) => {
                    event_ids.insert(erasure.event_id);
                    copy(&mut appender, erasure.record_key(), record).await?;
                    summary.copied += 1;
                }
                Some(Err(error)) => {
                    left_behind(&mut report, &record, &error.to_string())?;
                    summary.left_behind += 1;
                }
                None => {
                    left_behind(&mut report, &record, "no payload")?;
                    summary.left_behind += 1;
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            tracing::info!(read = summary.read, of = total, "migrating");
            last_report = tokio::time::Instant::now();
        }
    }
    appender.flush().await?;
    report.flush().context("writing the report")?;
    summary.keys_written = appender.keys_written();
    ensure!(
        appender.appended() == summary.sealed + summary.sealed_forgotten + summary.copied,
        "appended {} records, expected {}",
        appender.appended(),
        summary.sealed + summary.sealed_forgotten + summary.copied
    );
    summary.verified = verify(&destination, &event_ids, appender.appended(), stop).await?;
    Ok(summary)
}

/// What a stopped migration leaves behind.
const STOPPED: &str = "stopped; the new topic is incomplete: delete it and migrate again";

/// Appends `record`'s payload as it is, keyed by its account reference
/// (an old log may have keyed it by number).
async fn copy(
    appender: &mut SealingAppender,
    account_key: String,
    record: LogRecord,
) -> anyhow::Result<()> {
    let payload = record.payload.unwrap_or_default();
    appender.raw(Some(account_key.into_bytes()), payload).await
}

fn left_behind(report: &mut impl Write, record: &LogRecord, reason: &str) -> anyhow::Result<()> {
    tracing::warn!(
        partition = record.partition,
        offset = record.offset,
        "a record that is no event is left behind"
    );
    let line = LeftBehind {
        partition: record.partition,
        offset: record.offset,
        reason,
    };
    serde_json::to_writer(&mut *report, &line).context("writing the report")?;
    report.write_all(b"\n").context("writing the report")
}

/// The accounts an erasure in the source log names.
async fn forgotten_accounts(
    args: &MigrateLogArgs,
    stop: &CancellationToken,
) -> anyhow::Result<HashSet<AccountRef>> {
    let mut reader = LogReader::open(&args.kafka, "migrate-scan", Start::Beginning).await?;
    let mut forgotten = HashSet::new();
    reader
        .read_to_the_end(
            READ_BATCH,
            READ_WAIT,
            stop,
            STOPPED,
            "reading the log for erasures",
            |records| {
                for record in records {
                    if let Some(Ok(Event::AccountForgotten(erasure))) =
                        record.payload.as_deref().map(event::decode)
                    {
                        forgotten.insert(erasure.account_ref);
                    }
                }
            },
        )
        .await?;
    Ok(forgotten)
}

/// Reads the new topic back: it must hold `expected` records and every id
/// of `event_ids`. Returns the records counted.
async fn verify(
    destination: &score_shared::config::KafkaArgs,
    event_ids: &HashSet<Uuid>,
    expected: u64,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    #[derive(serde::Deserialize)]
    struct Probe {
        event_id: Uuid,
    }
    let mut reader = LogReader::open(destination, "migrate-verify", Start::Beginning).await?;
    let mut count = 0;
    let mut found = HashSet::with_capacity(event_ids.len());
    reader
        .read_to_the_end(
            READ_BATCH,
            READ_WAIT,
            stop,
            STOPPED,
            "reading the new topic back",
            |records| {
                for record in records {
                    count += 1;
                    if let Some(probe) = record
                        .payload
                        .as_deref()
                        .and_then(|payload| serde_json::from_slice::<Probe>(payload).ok())
                    {
                        found.insert(probe.event_id);
                    }
                }
            },
        )
        .await?;
    ensure!(
        count == expected,
        "the new topic holds {count} records; {expected} were appended"
    );
    let missing = event_ids.difference(&found).count();
    ensure!(
        missing == 0,
        "{missing} event ids of the source are not in the new topic"
    );
    Ok(count)
}
