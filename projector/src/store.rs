//! The generic SQL of every projection: positions and dead letters, in the
//! tables a [`TableSet`](crate::projection::TableSet) names. Values are
//! always bound parameters; table names come from the projection registry,
//! never from input.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row};

use crate::batch::{DeadLetterReason, LogRecord};
use crate::identity::{RecordDigest, StoredPosition};

/// Locks the position rows of `partitions` in `table` (creating them at 0
/// the first time) and returns the stored positions, each with the digest
/// of the record it stands on. Partitions are locked
/// in ascending order so that concurrent instances cannot deadlock.
pub async fn lock_positions(
    connection: &mut MySqlConnection,
    table: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<HashMap<i32, StoredPosition>> {
    let mut partitions = partitions.to_vec();
    partitions.sort_unstable();
    partitions.dedup();

    let mut ensure = QueryBuilder::<MySql>::new("INSERT INTO ");
    ensure
        .push(table)
        .push(" (topic, kafka_partition, next_offset) ");
    ensure.push_values(&partitions, |mut row, partition| {
        row.push_bind(topic).push_bind(*partition).push_bind(0_i64);
    });
    ensure.push(" ON DUPLICATE KEY UPDATE next_offset = next_offset");
    ensure.build().execute(&mut *connection).await?;

    let mut select =
        QueryBuilder::<MySql>::new("SELECT kafka_partition, next_offset, last_record FROM ");
    select.push(table).push(" WHERE topic = ").push_bind(topic);
    select.push(" AND kafka_partition IN (");
    let mut list = select.separated(", ");
    for partition in &partitions {
        list.push_bind(*partition);
    }
    select.push(") ORDER BY kafka_partition FOR UPDATE");
    let rows = select.build().fetch_all(&mut *connection).await?;
    rows.iter()
        .map(|row| {
            let position = StoredPosition {
                next_offset: row.try_get(1)?,
                last_record: row
                    .try_get::<Option<String>, _>(2)?
                    .map(RecordDigest::stored),
            };
            Ok((row.try_get::<i32, _>(0)?, position))
        })
        .collect()
}

/// Where a partition's position moves to.
pub struct Advance<'a> {
    pub partition: i32,
    pub next_offset: i64,
    /// The digest of the record at `next_offset - 1`.
    pub last_record: &'a RecordDigest,
    /// When the last event applied occurred, when it was one.
    pub last_event_at: Option<NaiveDateTime>,
}

/// Stores the next offset to apply in a partition, the record it stands on,
/// and the time of the last event applied when there was one.
pub async fn advance_position(
    connection: &mut MySqlConnection,
    table: &str,
    topic: &str,
    advance: Advance<'_>,
) -> sqlx::Result<()> {
    let Advance {
        partition,
        next_offset,
        last_record,
        last_event_at,
    } = advance;
    let mut update = QueryBuilder::<MySql>::new("UPDATE ");
    update
        .push(table)
        .push(" SET next_offset = ")
        .push_bind(next_offset);
    update
        .push(", last_record = ")
        .push_bind(last_record.as_str());
    update
        .push(", last_event_at = COALESCE(")
        .push_bind(last_event_at)
        .push(", last_event_at)");
    update.push(" WHERE topic = ").push_bind(topic);
    update.push(" AND kafka_partition = ").push_bind(partition);
    update.build().execute(&mut *connection).await?;
    Ok(())
}

/// A stored position.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Position {
    pub kafka_partition: i32,
    pub next_offset: i64,
    /// The digest of the record at `next_offset - 1` (see
    /// [`crate::identity`]); `None` at 0 and for positions stored before
    /// the check.
    pub last_record: Option<String>,
    pub last_event_at: Option<NaiveDateTime>,
}

/// Every stored position of `topic` in `table`.
pub async fn positions(
    connection: &mut MySqlConnection,
    table: &str,
    topic: &str,
) -> sqlx::Result<Vec<Position>> {
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT kafka_partition, next_offset, last_record, last_event_at FROM ",
    );
    select.push(table).push(" WHERE topic = ").push_bind(topic);
    select.push(" ORDER BY kafka_partition");
    select.build_query_as().fetch_all(&mut *connection).await
}

/// Every stored position of `topic` in `table`, by partition, as the log
/// check reads them (see [`crate::identity`]).
pub async fn stored_positions(
    connection: &mut MySqlConnection,
    table: &str,
    topic: &str,
) -> sqlx::Result<std::collections::BTreeMap<i32, StoredPosition>> {
    Ok(positions(connection, table, topic)
        .await?
        .into_iter()
        .map(|p| {
            let position = StoredPosition {
                next_offset: p.next_offset,
                last_record: p.last_record.map(RecordDigest::stored),
            };
            (p.kafka_partition, position)
        })
        .collect())
}

/// A record the projection could not apply, and why.
pub struct DeadLetterRow<'a> {
    pub record: &'a LogRecord,
    pub reason: DeadLetterReason,
}

/// Records dead letters. A record dead-lettered before (the same position)
/// is left as it is.
pub async fn insert_dead_letters(
    connection: &mut MySqlConnection,
    table: &str,
    topic: &str,
    rows: &[DeadLetterRow<'_>],
) -> sqlx::Result<()> {
    for chunk in rows.chunks(500) {
        let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
        insert
            .push(table)
            .push(" (topic, kafka_partition, kafka_offset, message_key, payload, error) ");
        insert.push_values(chunk, |mut values, row| {
            values
                .push_bind(topic)
                .push_bind(row.record.partition)
                .push_bind(row.record.offset)
                .push_bind(row.record.key.as_deref())
                .push_bind(row.record.payload.as_deref())
                .push_bind(row.reason.to_column());
        });
        insert.push(" ON DUPLICATE KEY UPDATE id = id");
        insert.build().execute(&mut *connection).await?;
    }
    Ok(())
}

/// Empties the payload and the detail of the dead letters keyed by
/// `account_ref` (sealed events of a forgotten account): only the kind of
/// failure stays, and the dead letter is marked resolved as forgotten.
pub async fn scrub_dead_letters(
    connection: &mut MySqlConnection,
    table: &str,
    account_ref: &score_shared::AccountRef,
) -> sqlx::Result<()> {
    let mut update = QueryBuilder::<MySql>::new("UPDATE ");
    update
        .push(table)
        .push(
            " SET payload = NULL, error = CONCAT(SUBSTRING_INDEX(error, ':', 1), ': (account forgotten)'), \
             resolved_at = IFNULL(resolved_at, CURRENT_TIMESTAMP(6)), \
             resolution = IFNULL(resolution, 'account forgotten') WHERE message_key = ",
        )
        .push_bind(account_ref.to_string().into_bytes());
    update.build().execute(&mut *connection).await?;
    Ok(())
}
