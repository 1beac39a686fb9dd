//! `projector dead-letters`: listing dead letters and re-applying them once
//! the reason they failed is fixed.

use chrono::NaiveDateTime;
use sqlx::{Connection, MySql, MySqlPool, QueryBuilder};

use crate::apply::{self, LOCK_WAIT, NamedLock};
use crate::batch::{DeadLetterReason, Decoded, Decoder, LogRecord};
use crate::projection::{self, Projected, Projection, TableSet};
use crate::store;

/// One dead letter, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    #[sqlx(skip)]
    pub projection: &'static str,
    pub id: u64,
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub error: String,
    pub failed_at: NaiveDateTime,
    pub attempts: i32,
    pub resolved_at: Option<NaiveDateTime>,
    pub resolution: Option<String>,
}

/// The dead letters of `projection` (all projections when `None`),
/// unresolved ones only unless `include_resolved`.
///
/// # Errors
///
/// An unknown projection, or MySQL errors.
pub async fn list(
    pool: &MySqlPool,
    projection: Option<&str>,
    include_resolved: bool,
) -> anyhow::Result<Vec<DeadLetter>> {
    let projections = match projection {
        Some(name) => vec![projection::lookup(name)?],
        None => projection::all(),
    };
    let mut listed = Vec::new();
    for projection in projections {
        let tables = TableSet::live(projection);
        let mut select = QueryBuilder::<MySql>::new(
            "SELECT id, topic, kafka_partition, kafka_offset, error, failed_at, attempts, \
             resolved_at, resolution FROM ",
        );
        select.push(&tables.dead_letter);
        if !include_resolved {
            select.push(" WHERE resolved_at IS NULL");
        }
        select.push(" ORDER BY id");
        let rows: Vec<DeadLetter> = select.build_query_as().fetch_all(pool).await?;
        listed.extend(rows.into_iter().map(|row| DeadLetter {
            projection: projection.name(),
            ..row
        }));
    }
    Ok(listed)
}

/// What retrying one dead letter did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryOutcome {
    pub id: u64,
    pub outcome: RetryResult,
}

/// Applied, still failing (with the reason's kind), or already resolved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "reason")]
pub enum RetryResult {
    Applied,
    StillFailing(String),
    AlreadyResolved,
}

/// Re-applies dead letters of `projection` (`ids`, or every unresolved one
/// when `None`) with the current decoder. One that still cannot be decoded
/// or written is counted as still failing, and the next is retried. Each runs under the projection's
/// lock in one transaction that applies the event and marks the dead letter
/// resolved, so a dead letter is applied at most once even when retried
/// concurrently.
///
/// # Errors
///
/// An unknown projection, a lock timeout, or MySQL errors.
pub async fn retry(
    pool: &MySqlPool,
    projection: &str,
    ids: Option<&[u64]>,
    decoder: &Decoder,
) -> anyhow::Result<Vec<RetryOutcome>> {
    let projection = projection::lookup(projection)?;
    let tables = TableSet::live(projection);
    let ids = match ids {
        Some(ids) => ids.to_vec(),
        None => {
            let mut select = QueryBuilder::<MySql>::new("SELECT id FROM ");
            select
                .push(&tables.dead_letter)
                .push(" WHERE resolved_at IS NULL ORDER BY id");
            select.build_query_scalar().fetch_all(pool).await?
        }
    };
    let mut outcomes = Vec::with_capacity(ids.len());
    for id in ids {
        let outcome = retry_one(pool, projection, &tables, id, decoder).await?;
        tracing::info!(projection = projection.name(), id, outcome = ?outcome, "dead letter retried");
        outcomes.push(RetryOutcome { id, outcome });
    }
    Ok(outcomes)
}

async fn retry_one(
    pool: &MySqlPool,
    projection: &'static dyn Projection,
    tables: &TableSet,
    id: u64,
    decoder: &Decoder,
) -> anyhow::Result<RetryResult> {
    let connection = pool.acquire().await?;
    let Some(mut lock) =
        NamedLock::acquire(connection, projection::lock_name(projection), LOCK_WAIT).await?
    else {
        anyhow::bail!(
            "timed out waiting for the lock of projection {}",
            projection.name()
        );
    };
    let outcome = retry_locked(lock.connection(), projection, tables, id, decoder).await;
    lock.release().await;
    outcome
}

async fn retry_locked(
    connection: &mut sqlx::MySqlConnection,
    projection: &'static dyn Projection,
    tables: &TableSet,
    id: u64,
    decoder: &Decoder,
) -> anyhow::Result<RetryResult> {
    let mut tx = connection.begin().await?;
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT kafka_partition AS `partition`, kafka_offset AS `offset`, message_key AS `key`, payload FROM ",
    );
    select.push(&tables.dead_letter);
    select.push(" WHERE id = ").push_bind(id);
    select.push(" AND resolved_at IS NULL FOR UPDATE");
    let record: Option<LogRecord> = select.build_query_as().fetch_optional(&mut *tx).await?;
    let Some(record) = record else {
        return Ok(RetryResult::AlreadyResolved);
    };
    let (partition, offset) = (record.partition, record.offset);
    let result = match decoder.decode(&record) {
        Decoded::Forget(erasure) => {
            projection.forget(&mut tx, tables, &erasure).await?;
            store::scrub_dead_letters(&mut tx, &tables.dead_letter, &erasure.account_ref).await?;
            resolve(&mut tx, tables, id).await?;
            RetryResult::Applied
        }
        Decoded::Row(rating) => {
            let events = [Projected {
                event: &rating.event,
                account_ref: &rating.account_ref,
                forgotten: rating.forgotten,
                partition,
                offset,
            }];
            let applied = match projection.apply(&mut tx, tables, &events).await {
                Ok(applied) => applied,
                Err(error) if apply::is_data_error(&error) => {
                    // MySQL still refuses the row: noted, and the caller
                    // goes on with the next one.
                    drop(tx);
                    let reason = DeadLetterReason::new("unwritable", error.to_string());
                    return Ok(still_failing(&mut *connection, tables, id, &reason).await?);
                }
                Err(error) => return Err(error.into()),
            };
            match applied.conflicts.into_iter().next() {
                None => {
                    resolve(&mut tx, tables, id).await?;
                    RetryResult::Applied
                }
                // Its id was applied with other content meanwhile: first
                // write wins, so this one stays a dead letter.
                Some(conflict) => still_failing(&mut tx, tables, id, &conflict.reason).await?,
            }
        }
        Decoded::DeadLetter(reason) => still_failing(&mut tx, tables, id, &reason).await?,
    };
    tx.commit().await?;
    Ok(result)
}

/// Marks dead letter `id` resolved by a retry.
async fn resolve(
    connection: &mut sqlx::MySqlConnection,
    tables: &TableSet,
    id: u64,
) -> sqlx::Result<()> {
    let mut resolve = QueryBuilder::<MySql>::new("UPDATE ");
    resolve.push(&tables.dead_letter);
    resolve.push(
        " SET resolved_at = UTC_TIMESTAMP(6), resolution = 'retried', attempts = attempts + 1",
    );
    resolve.push(" WHERE id = ").push_bind(id);
    resolve.build().execute(&mut *connection).await?;
    Ok(())
}

/// Notes another failed attempt of dead letter `id`, and why.
async fn still_failing(
    connection: &mut sqlx::MySqlConnection,
    tables: &TableSet,
    id: u64,
    reason: &DeadLetterReason,
) -> sqlx::Result<RetryResult> {
    let mut note = QueryBuilder::<MySql>::new("UPDATE ");
    note.push(&tables.dead_letter);
    note.push(" SET attempts = attempts + 1, error = ")
        .push_bind(reason.to_column());
    note.push(" WHERE id = ").push_bind(id);
    note.build().execute(&mut *connection).await?;
    Ok(RetryResult::StillFailing(reason.kind.to_owned()))
}

/// Dead letters as a table for people.
pub fn render(rows: &[DeadLetter]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>6} {:>9} {:>10} {:<26} {:>8} {:<10} ERROR",
        "PROJECTION", "ID", "PARTITION", "OFFSET", "FAILED AT (UTC)", "ATTEMPTS", "STATE"
    );
    for row in rows {
        let state = row.resolution.as_deref().unwrap_or("open");
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>9} {:>10} {:<26} {:>8} {:<10} {}",
            row.projection,
            row.id,
            row.kafka_partition,
            row.kafka_offset,
            row.failed_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            row.attempts,
            state,
            row.error,
        );
    }
    out
}
