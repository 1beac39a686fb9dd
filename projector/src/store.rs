//! The SQL of the `grade` projection: positions, rows and dead letters.
//! Every statement is parameterized; identifiers are constants.

use std::collections::HashMap;

use score_shared::ScoreSubmitted;
use sqlx::{MySql, QueryBuilder, Row, Transaction};

use crate::batch::{DeadLetterReason, LogRecord};

/// The name under which the `grade` projection stores its positions and
/// dead letters.
pub const GRADE_PROJECTION: &str = "grade";

/// Rows per multi-row INSERT: 13 parameters a row stays far below MySQL's
/// 65,535 placeholders, and the statement stays a few hundred KiB.
const ROWS_PER_STATEMENT: usize = 1000;

/// Locks this projection's position rows for `partitions` (creating them at
/// 0 the first time) and returns the stored positions. Partitions are locked
/// in ascending order so that concurrent instances cannot deadlock.
pub async fn lock_positions(
    tx: &mut Transaction<'_, MySql>,
    projection: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<HashMap<i32, i64>> {
    let mut partitions = partitions.to_vec();
    partitions.sort_unstable();
    partitions.dedup();

    let mut ensure = QueryBuilder::<MySql>::new(
        "INSERT INTO projection_position (projection, topic, kafka_partition, next_offset) ",
    );
    ensure.push_values(&partitions, |mut row, partition| {
        row.push_bind(projection)
            .push_bind(topic)
            .push_bind(*partition)
            .push_bind(0_i64);
    });
    ensure.push(" ON DUPLICATE KEY UPDATE next_offset = next_offset");
    ensure.build().execute(&mut **tx).await?;

    let mut select = QueryBuilder::<MySql>::new(
        "SELECT kafka_partition, next_offset FROM projection_position WHERE projection = ",
    );
    select
        .push_bind(projection)
        .push(" AND topic = ")
        .push_bind(topic);
    select.push(" AND kafka_partition IN (");
    let mut list = select.separated(", ");
    for partition in &partitions {
        list.push_bind(*partition);
    }
    select.push(") ORDER BY kafka_partition FOR UPDATE");
    let rows = select.build().fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<i32, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect()
}

/// Stores the next offset to apply in `partition`.
pub async fn advance_position(
    tx: &mut Transaction<'_, MySql>,
    projection: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE projection_position SET next_offset = ? \
         WHERE projection = ? AND topic = ? AND kafka_partition = ?",
    )
    .bind(next_offset)
    .bind(projection)
    .bind(topic)
    .bind(partition)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A row of `grade` and where its event is in the log.
pub struct GradeRow<'a> {
    pub event: ScoreSubmitted,
    pub record: &'a LogRecord,
}

/// Inserts rows into `grade`. An event id already present (a client retry
/// with the same `Idempotency-Key`) is left as it is.
pub async fn insert_grade_rows(
    tx: &mut Transaction<'_, MySql>,
    rows: &[GradeRow<'_>],
) -> sqlx::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT INTO grade (acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, insert_time, \
             event_id, channel, kafka_partition, kafka_offset) ",
        );
        insert.push_values(chunk, |mut values, row| {
            let event = &row.event;
            values
                .push_bind(event.acc_nbr.as_str())
                .push_bind(event.grade1)
                .push_bind(event.grade2)
                .push_bind(event.grade3)
                .push_bind(event.txt1.as_str())
                .push_bind(event.txt2.as_str())
                .push_bind(event.txt3.as_str())
                .push_bind(event.occurred_at.naive_utc())
                .push_bind(event.event_id.hyphenated().to_string())
                .push_bind(event.channel.as_str())
                .push_bind(row.record.partition)
                .push_bind(row.record.offset);
        });
        insert.push(" ON DUPLICATE KEY UPDATE event_id = event_id");
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// A record the projection could not apply, and why.
pub struct DeadLetterRow<'a> {
    pub record: &'a LogRecord,
    pub reason: DeadLetterReason,
}

/// Records dead letters. A record dead-lettered before (the same position)
/// is left as it is.
pub async fn insert_dead_letters(
    tx: &mut Transaction<'_, MySql>,
    projection: &str,
    topic: &str,
    rows: &[DeadLetterRow<'_>],
) -> sqlx::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT INTO dead_letter (projection, topic, kafka_partition, kafka_offset, \
             message_key, payload, error) ",
        );
        insert.push_values(chunk, |mut values, row| {
            values
                .push_bind(projection)
                .push_bind(topic)
                .push_bind(row.record.partition)
                .push_bind(row.record.offset)
                .push_bind(row.record.key.as_deref())
                .push_bind(row.record.payload.as_deref())
                .push_bind(row.reason.to_column());
        });
        insert.push(" ON DUPLICATE KEY UPDATE id = id");
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}
