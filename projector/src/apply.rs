//! Applying one batch to one projection, in one MySQL transaction.
//!
//! Under the projection's named lock, the transaction locks its position
//! rows for the batch's partitions, keeps only the records that start exactly
//! at those positions ([`crate::batch::plan`]), writes the projection's rows
//! and dead letters, and advances the positions. **Rows, dead letters and
//! positions commit together or not at all**: that, not Kafka's committed
//! offsets, is what makes each event land exactly once in each projection.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, MySqlConnection, MySqlPool};
use tokio_util::sync::CancellationToken;

use crate::batch::{
    self, DeadLetterReason, Decoded, DecodedBatch, Decoder, Gap, LogRecord, PlanContext, Rating,
    Standing,
};
use crate::identity::{LogMismatch, Predecessors, RecordDigest};
use crate::projection::{self, Projected, Projection, TableSet};
use crate::store::{self, Advance, DeadLetterRow};

/// How long a batch (or a dead-letter retry) waits for its projection's
/// lock (held by a rebuild while it swaps tables, normally for well under a
/// second).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a committed batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub projected: usize,
    pub dead_lettered: usize,
    pub already_applied: usize,
    /// Partitions whose records did not start at the stored position: the
    /// consumer must seek back to it.
    pub gaps: Vec<Gap>,
    /// Offsets of records that stored positions stand on and that neither
    /// the batch nor the reader's memory held, by partition: the consumer
    /// must seek back to them (see [`crate::identity`]).
    pub unseen: Vec<(i32, i64)>,
    /// The stored position of every partition in the batch, after commit.
    pub positions: HashMap<i32, i64>,
}

impl BatchReport {
    /// Adds `other`'s counts and positions to this one.
    pub fn absorb(&mut self, other: BatchReport) {
        self.projected += other.projected;
        self.dead_lettered += other.dead_lettered;
        self.already_applied += other.already_applied;
        self.gaps.extend(other.gaps);
        self.unseen.extend(other.unseen);
        self.positions.extend(other.positions);
    }
}

/// How the records of a batch are to be written.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// Decode each record into a row, or a dead letter when it cannot be.
    Project,
    /// Write every record as a dead letter with this reason (used for a
    /// single record that MySQL refused to store).
    DeadLetter(&'a DeadLetterReason),
}

/// Whether the batch takes the projection's named lock itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locking {
    /// Take it around the transaction (the live projector).
    Take,
    /// Write without it: the tables are a rebuild's shadow copies, which no
    /// one else writes, or the caller holds the lock on another connection.
    Skip,
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("timed out waiting for the lock of projection {0} (is a rebuild swapping it?)")]
    LockTimeout(&'static str),
    #[error(transparent)]
    LogMismatch(#[from] LogMismatch),
}

/// MySQL error numbers that mean "this row cannot be stored" (as opposed to
/// "MySQL is not available right now"): too long, wrong string, out of
/// range, bad date, NULL into NOT NULL.
const DATA_ERRORS: [u16; 5] = [1406, 1366, 1264, 1292, 1048];

impl ApplyError {
    /// The error for a log line: MySQL's messages quote the values they
    /// refused, which may be a phone number or a comment.
    pub fn loggable(&self) -> String {
        score_shared::privacy::scrubbed(&self.to_string())
    }

    /// Whether the error is about the data of a record rather than the
    /// database's availability. Only these may dead-letter a record; every
    /// other error is retried, so that an outage or a broken schema never
    /// turns the log into dead letters.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database(error) => is_data_error(error),
            _ => false,
        }
    }
}

/// Whether MySQL refused a statement for the data it was given (see
/// [`ApplyError::is_data_error`]).
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| DATA_ERRORS.contains(&e.number())),
        _ => false,
    }
}

/// One batch for one projection.
#[derive(Clone, Copy)]
pub struct BatchJob<'a> {
    pub projection: &'static dyn Projection,
    pub tables: &'a TableSet,
    pub topic: &'a str,
    pub records: &'a [LogRecord],
    pub decoder: &'a Decoder,
    /// The batch already decoded (when it is applied to several
    /// projections); records not in it are decoded by `decoder`.
    pub decoded: Option<&'a DecodedBatch>,
    pub accepted_gaps: &'a [Gap],
    /// The last record the reader read before this batch, by partition.
    pub predecessors: &'a Predecessors,
    pub mode: Mode<'a>,
    pub locking: Locking,
}

/// Applies the job exactly once.
///
/// # Errors
///
/// Any MySQL error, a lock timeout, or a stored position that does not
/// stand on the log being read; the transaction is then rolled back and
/// nothing moved.
#[tracing::instrument(name = "apply_batch", skip_all, fields(projection = job.projection.name(), records = job.records.len()))]
pub async fn apply_batch(pool: &MySqlPool, job: &BatchJob<'_>) -> Result<BatchReport, ApplyError> {
    let mut connection = pool.acquire().await?;
    if job.locking == Locking::Skip {
        return apply_in_transaction(&mut connection, job).await;
    }
    let mut lock = NamedLock::acquire(connection, projection::lock_name(job.projection), LOCK_WAIT)
        .await?
        .ok_or(ApplyError::LockTimeout(job.projection.name()))?;
    let outcome = apply_in_transaction(lock.connection(), job).await;
    lock.release().await;
    outcome
}

/// Named locks are server-wide, while projections live in one database: the
/// name is scoped by the database (its first 30 characters, so that the
/// whole stays within MySQL's 64), as `<database>/<name>`.
macro_rules! scoped_lock_name {
    () => {
        "CONCAT(LEFT(DATABASE(), 30), '/', ?)"
    };
}

/// A MySQL named lock (`GET_LOCK`) held by a pooled connection.
///
/// A named lock belongs to the session, not to a transaction: if the future
/// holding it were dropped (a task aborted, a `select!` that lost) and the
/// connection went back to the pool, the lock would stay held by an idle
/// connection. So unless [`NamedLock::release`] ran, dropping this closes
/// the connection instead, and MySQL releases the lock with the session.
pub struct NamedLock {
    connection: Option<PoolConnection<MySql>>,
    name: String,
}

impl NamedLock {
    /// Waits up to `wait` for the lock. `Ok(None)` when it timed out.
    ///
    /// # Errors
    ///
    /// Any MySQL error.
    pub async fn acquire(
        connection: PoolConnection<MySql>,
        name: String,
        wait: Duration,
    ) -> sqlx::Result<Option<Self>> {
        // Armed before asking, so that a cancellation while waiting cannot
        // leave a granted lock behind on a pooled connection.
        let mut lock = Self {
            connection: Some(connection),
            name,
        };
        let acquired: Option<i64> =
            sqlx::query_scalar(concat!("SELECT GET_LOCK(", scoped_lock_name!(), ", ?)"))
                .bind(lock.name.clone())
                .bind(wait.as_secs())
                .fetch_one(lock.connection())
                .await?;
        if acquired == Some(1) {
            Ok(Some(lock))
        } else {
            // Not granted: the connection holds nothing and may be reused.
            lock.connection.take();
            Ok(None)
        }
    }

    /// The connection that holds the lock.
    pub fn connection(&mut self) -> &mut MySqlConnection {
        self.connection
            .as_mut()
            .expect("the connection is held until release")
    }

    /// Releases the lock and returns the connection to the pool.
    pub async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let released = sqlx::query(concat!("SELECT RELEASE_LOCK(", scoped_lock_name!(), ")"))
            .bind(&self.name)
            .execute(&mut *connection)
            .await;
        if released.is_err() {
            // Unsure whether it is still held: close rather than pool it.
            drop(connection.detach());
        }
    }
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            drop(connection.detach());
        }
    }
}

async fn apply_in_transaction(
    connection: &mut MySqlConnection,
    job: &BatchJob<'_>,
) -> Result<BatchReport, ApplyError> {
    let partitions: Vec<i32> = job.records.iter().map(|r| r.partition).collect();
    let mut tx = connection.begin().await?;
    let stored =
        store::lock_positions(&mut tx, &job.tables.position, job.topic, &partitions).await?;
    let context = PlanContext {
        accepted_gaps: job.accepted_gaps,
        predecessors: job.predecessors,
    };
    let plans = batch::plan(job.records, &stored, context);
    // One position that does not stand on this log and nothing is applied,
    // in any partition.
    for plan in &plans {
        if let Standing::Mismatch(found) = &plan.standing {
            return Err(LogMismatch {
                projection: job.projection.name(),
                partition: plan.partition,
                next_offset: plan.next_offset,
                found: found.clone(),
            }
            .into());
        }
    }

    // Ratings are applied in runs; an erasure applies where it stands in
    // the log, after the ratings before it (dead letters included, so that
    // it scrubs them too).
    let mut run: Vec<(Rating, &LogRecord)> = Vec::new();
    let mut dead_letters = Vec::new();
    let mut last_event_at: HashMap<i32, NaiveDateTime> = HashMap::new();
    let mut projected = 0;
    let mut dead_lettered = 0;
    // Collected first: an iterator held across the awaits below would keep
    // the future from being `Send` for every lifetime (rust-lang/rust#64552).
    let to_apply: Vec<&LogRecord> = plans
        .iter()
        .flat_map(|plan| plan.records.iter().copied())
        .collect();
    for record in to_apply {
        let decoded = match job.mode {
            Mode::Project => job
                .decoded
                .and_then(|decoded| decoded.get(record))
                .unwrap_or_else(|| job.decoder.decode(record)),
            Mode::DeadLetter(reason) => Decoded::DeadLetter(reason.clone()),
        };
        match decoded {
            Decoded::Row(rating) => {
                last_event_at.insert(record.partition, rating.event.occurred_at.naive_utc());
                run.push((rating, record));
            }
            Decoded::Forget(erasure) => {
                last_event_at.insert(record.partition, erasure.occurred_at.naive_utc());
                projected += apply_run(&mut tx, job, &mut run, &mut dead_letters).await?;
                dead_lettered += dead_letters.len();
                store::insert_dead_letters(
                    &mut tx,
                    &job.tables.dead_letter,
                    job.topic,
                    &dead_letters,
                )
                .await?;
                dead_letters.clear();
                job.projection.forget(&mut tx, job.tables, &erasure).await?;
                store::scrub_dead_letters(&mut tx, &job.tables.dead_letter, &erasure.account_ref)
                    .await?;
                tracing::info!(
                    projection = job.projection.name(),
                    partition = record.partition,
                    offset = record.offset,
                    "account forgotten"
                );
            }
            Decoded::DeadLetter(reason) => {
                tracing::warn!(
                    partition = record.partition,
                    offset = record.offset,
                    reason = reason.kind,
                    "event sent to dead_letter"
                );
                dead_letters.push(DeadLetterRow { record, reason });
            }
        }
    }
    projected += apply_run(&mut tx, job, &mut run, &mut dead_letters).await?;
    dead_lettered += dead_letters.len();
    store::insert_dead_letters(&mut tx, &job.tables.dead_letter, job.topic, &dead_letters).await?;

    let mut report = BatchReport {
        projected,
        dead_lettered,
        ..BatchReport::default()
    };
    for plan in &plans {
        if let Some(last) = plan.records.last() {
            let advance = Advance {
                partition: plan.partition,
                next_offset: plan.next_offset,
                last_record: &RecordDigest::of(last),
                last_event_at: last_event_at.get(&plan.partition).copied(),
            };
            store::advance_position(&mut tx, &job.tables.position, job.topic, advance).await?;
        }
        if let Standing::Unseen { offset } = plan.standing {
            report.unseen.push((plan.partition, offset));
        }
        report.already_applied += plan.already_applied;
        report.gaps.extend(plan.gap);
        report.positions.insert(plan.partition, plan.next_offset);
    }
    tx.commit().await?;
    Ok(report)
}

/// Applies the ratings of `run` (emptying it) and adds the dead letters of
/// those refused as idempotency conflicts to `dead_letters`. Returns how
/// many were applied.
async fn apply_run<'r>(
    connection: &mut MySqlConnection,
    job: &BatchJob<'_>,
    run: &mut Vec<(Rating, &'r LogRecord)>,
    dead_letters: &mut Vec<DeadLetterRow<'r>>,
) -> Result<usize, ApplyError> {
    if run.is_empty() {
        return Ok(0);
    }
    let events: Vec<Projected<'_>> = run
        .iter()
        .map(|(rating, record)| Projected {
            event: &rating.event,
            account_ref: &rating.account_ref,
            forgotten: rating.forgotten,
            partition: record.partition,
            offset: record.offset,
        })
        .collect();
    let applied = job
        .projection
        .apply(connection, job.tables, &events)
        .await?;
    let written = events.len() - applied.conflicts.len();
    dead_letters.extend(conflict_dead_letters(run, applied));
    run.clear();
    Ok(written)
}

/// The dead letters of the events a projection refused because their id
/// was already applied with other content (see [`projection::Applied`]):
/// first write wins, and the later record is kept with the reason.
/// (Issue 13, item 3: the one hook the engine needs for it.)
fn conflict_dead_letters<'r>(
    decoded_rows: &[(Rating, &'r LogRecord)],
    applied: projection::Applied,
) -> Vec<DeadLetterRow<'r>> {
    applied
        .conflicts
        .into_iter()
        .map(|conflict| {
            let record = decoded_rows[conflict.index].1;
            tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                reason = conflict.reason.kind,
                "event sent to dead_letter"
            );
            DeadLetterRow {
                record,
                reason: conflict.reason,
            }
        })
        .collect()
}

/// Why [`apply_until_done`] gave up on a batch. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum Halt {
    /// `stop` fired while MySQL was unavailable: the records will be read
    /// again.
    #[error("stopped before the batch could be applied")]
    Stopped,
    /// A stored position does not stand on the log being read: no retry
    /// can help; an operator must rebuild.
    #[error(transparent)]
    LogMismatch(#[from] LogMismatch),
}

/// Applies the job, waiting out MySQL outages with backoff. A batch MySQL
/// refuses for its data is split record by record, and a single refused
/// record is dead-lettered as `unwritable`.
///
/// # Errors
///
/// [`Halt`]: stopped while MySQL is unavailable, or positions that do not
/// stand on the log.
pub async fn apply_until_done(
    pool: &MySqlPool,
    job: &BatchJob<'_>,
    stop: &CancellationToken,
) -> Result<BatchReport, Halt> {
    let mut backoff = Backoff::new();
    loop {
        match apply_batch(pool, job).await {
            Ok(report) => return Ok(report),
            Err(ApplyError::LogMismatch(mismatch)) => return Err(mismatch.into()),
            Err(error) if error.is_data_error() && job.records.len() > 1 => {
                tracing::warn!(error = %error.loggable(), "MySQL refused a record; applying the batch one record at a time");
                let mut total = BatchReport::default();
                // Each record stands on the one before it in the batch.
                let mut read = job.predecessors.clone();
                for record in job.records.chunks(1) {
                    let single = BatchJob {
                        records: record,
                        predecessors: &read,
                        ..*job
                    };
                    total.absorb(Box::pin(apply_until_done(pool, &single, stop)).await?);
                    read.remember(record);
                }
                return Ok(total);
            }
            Err(error) if error.is_data_error() => {
                let reason = DeadLetterReason::new("unwritable", error.to_string());
                let dead_letter = BatchJob {
                    mode: Mode::DeadLetter(&reason),
                    ..*job
                };
                match apply_batch(pool, &dead_letter).await {
                    Ok(report) => return Ok(report),
                    Err(ApplyError::LogMismatch(mismatch)) => return Err(mismatch.into()),
                    Err(error) => {
                        tracing::warn!(error = %error.loggable(), "dead letter not written; retrying")
                    }
                }
            }
            Err(error) => tracing::warn!(error = %error.loggable(), "batch not applied; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return Err(Halt::Stopped),
            () = tokio::time::sleep(backoff.next()) => {}
        }
    }
}

/// Exponential backoff between retries: 100 ms, doubling, at most 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::LONGEST);
        wait
    }
}
