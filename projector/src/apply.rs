//! Applying one batch in one MySQL transaction.
//!
//! The transaction locks the projection's positions for the batch's
//! partitions, keeps only the records that start exactly at those positions
//! ([`crate::batch::plan`]), writes their rows and dead letters, and advances
//! the positions. **Rows and positions commit together or not at all**: that,
//! not Kafka's committed offsets, is what makes each event land exactly once.

use std::collections::HashMap;

use score_shared::ValidationRules;
use sqlx::MySqlPool;

use crate::batch::{self, DeadLetterReason, Decoded, Gap, LogRecord};
use crate::store::{self, DeadLetterRow, GRADE_PROJECTION, GradeRow};

/// What a committed batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub projected: usize,
    pub dead_lettered: usize,
    pub already_applied: usize,
    /// Partitions whose records did not start at the stored position: the
    /// consumer must seek back to it.
    pub gaps: Vec<Gap>,
    /// The stored position of every partition in the batch, after commit.
    pub positions: HashMap<i32, i64>,
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

/// Applies `records` of `topic` to the `grade` projection, exactly once.
///
/// # Errors
///
/// Any MySQL error; the transaction is then rolled back and nothing moved.
#[tracing::instrument(name = "apply_batch", skip_all, fields(records = records.len()))]
pub async fn apply_batch(
    pool: &MySqlPool,
    topic: &str,
    records: &[LogRecord],
    rules: &ValidationRules,
    accepted_gaps: &[Gap],
    mode: Mode<'_>,
) -> sqlx::Result<BatchReport> {
    let mut partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();

    let mut tx = pool.begin().await?;
    let stored = store::lock_positions(&mut tx, GRADE_PROJECTION, topic, &partitions).await?;
    let plans = batch::plan(records, &stored, accepted_gaps);

    let mut rows = Vec::new();
    let mut dead_letters = Vec::new();
    for record in plans.iter().flat_map(|plan| plan.records.iter().copied()) {
        let decoded = match mode {
            Mode::Project => batch::decode(record, rules),
            Mode::DeadLetter(reason) => Decoded::DeadLetter(reason.clone()),
        };
        match decoded {
            Decoded::Row(event) => rows.push(GradeRow { event, record }),
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
    store::insert_grade_rows(&mut tx, &rows).await?;
    store::insert_dead_letters(&mut tx, GRADE_PROJECTION, topic, &dead_letters).await?;

    let mut report = BatchReport {
        projected: rows.len(),
        dead_lettered: dead_letters.len(),
        ..BatchReport::default()
    };
    for plan in &plans {
        if stored.get(&plan.partition) != Some(&plan.next_offset) {
            store::advance_position(
                &mut tx,
                GRADE_PROJECTION,
                topic,
                plan.partition,
                plan.next_offset,
            )
            .await?;
        }
        report.already_applied += plan.already_applied;
        report.gaps.extend(plan.gap);
        report.positions.insert(plan.partition, plan.next_offset);
    }
    tx.commit().await?;
    Ok(report)
}

/// MySQL error numbers that mean "this row cannot be stored" (as opposed to
/// "MySQL is not available right now"): too long, wrong string, out of
/// range, bad date, NULL into NOT NULL.
const DATA_ERRORS: [u16; 5] = [1406, 1366, 1264, 1292, 1048];

/// Whether `error` is about the data of a record rather than the database's
/// availability. Only these may dead-letter a record; every other error is
/// retried, so that an outage or a broken schema never turns the log into
/// dead letters.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database_error) => database_error
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| DATA_ERRORS.contains(&e.number())),
        _ => false,
    }
}
