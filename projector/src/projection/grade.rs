use std::collections::HashMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use score_shared::personal::PLACEHOLDER_PREFIX;
use score_shared::{AccountForgotten, SubmissionContent, SubmissionDigest};
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use super::{Applied, Projected, Projection, TableSet, first_write_wins, record_erasure};

/// The `grade` table: one row per event, the original service's columns
/// first. An event id already present is left as it is; a later event with
/// that id and other content is an idempotency conflict.
pub struct Grade;

/// Rows per multi-row INSERT: far below MySQL's 65,535 placeholders, and
/// statements of a few hundred KiB at most.
const ROWS_PER_STATEMENT: usize = 1000;

/// A stored row of an event id met again: its digest, and its content for
/// rows projected before digests were stored.
type StoredRow = (
    String,
    Option<String>,
    String,
    i32,
    i32,
    i32,
    String,
    String,
    String,
    Option<String>,
);

impl Projection for Grade {
    fn name(&self) -> &'static str {
        "grade"
    }

    fn data_tables(&self) -> &'static [&'static str] {
        &["grade", "grade_erasure"]
    }

    fn apply<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        events: &'a [Projected<'a>],
    ) -> BoxFuture<'a, sqlx::Result<Applied>> {
        async move {
            let table = &tables.data[0];
            let applied = stored_digests(connection, table, events).await?;
            let (to_write, outcome) = first_write_wins(events, applied);
            let rows: Vec<&Projected<'_>> = to_write.iter().map(|&index| &events[index]).collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
                insert.push(table).push(
                    " (acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, insert_time, \
                     event_id, channel, scene, kafka_partition, kafka_offset, submission_digest, \
                     account_ref) ",
                );
                insert.push_values(chunk, |mut values, projected| {
                    let event = projected.event;
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
                        .push_bind(event.scene.as_deref())
                        .push_bind(projected.partition)
                        .push_bind(projected.offset)
                        .push_bind(projected.stored_digest())
                        .push_bind(projected.account_ref.to_string());
                });
                // Every id here was looked up under lock and found absent;
                // the clause only keeps a surprise from failing the batch.
                insert.push(" ON DUPLICATE KEY UPDATE event_id = event_id");
                insert.build().execute(&mut *connection).await?;
            }
            Ok(outcome)
        }
        .boxed()
    }

    /// The account's rows keep grades, times, channel and scene; the
    /// account becomes its placeholder, the comments and the digest go.
    fn forget<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        erasure: &'a AccountForgotten,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        async move {
            let mut update = QueryBuilder::<MySql>::new("UPDATE ");
            update
                .push(&tables.data[0])
                .push(" SET acc_nbr = ")
                .push_bind(erasure.account_ref.placeholder())
                .push(", txt1 = '', txt2 = '', txt3 = '', submission_digest = NULL WHERE account_ref = ")
                .push_bind(erasure.account_ref.to_string());
            let changed = update.build().execute(&mut *connection).await?;
            record_erasure(connection, &tables.data[1], erasure, changed.rows_affected()).await
        }
        .boxed()
    }
}

/// The digests of the rows already stored under the batch's event ids
/// (locked until the transaction ends). A row stored before digests were
/// has its digest computed from its content, which is the event's content
/// as written.
async fn stored_digests(
    connection: &mut MySqlConnection,
    table: &str,
    events: &[Projected<'_>],
) -> sqlx::Result<HashMap<String, Option<SubmissionDigest>>> {
    let mut digests = HashMap::new();
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut select = QueryBuilder::<MySql>::new(
            "SELECT event_id, submission_digest, acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, scene FROM ",
        );
        select.push(table).push(" WHERE event_id IN (");
        let mut list = select.separated(", ");
        for projected in chunk {
            list.push_bind(projected.event.event_id.hyphenated().to_string());
        }
        select.push(") FOR UPDATE");
        let rows: Vec<StoredRow> = select.build_query_as().fetch_all(&mut *connection).await?;
        for (event_id, stored, acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, scene) in rows {
            if stored.is_none() && acc_nbr.starts_with(PLACEHOLDER_PREFIX) {
                // A forgotten row: nothing left to compare with.
                digests.insert(event_id, None);
                continue;
            }
            let digest = match stored.as_deref().map(SubmissionDigest::parse) {
                Some(Ok(digest)) => digest,
                // No digest stored (or not one this code reads): the
                // content is all there.
                _ => SubmissionDigest::of(&SubmissionContent {
                    acc_nbr: &acc_nbr,
                    grades: [grade1, grade2, grade3],
                    texts: [&txt1, &txt2, &txt3],
                    scene: scene.as_deref(),
                }),
            };
            digests.insert(event_id, Some(digest));
        }
    }
    Ok(digests)
}
