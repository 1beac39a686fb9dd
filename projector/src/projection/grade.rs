use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use super::{Projected, Projection, TableSet};

/// The `grade` table: one row per event, the original service's columns
/// first. An event id already present is left as it is.
pub struct Grade;

/// Rows per multi-row INSERT: far below MySQL's 65,535 placeholders, and
/// statements of a few hundred KiB at most.
const ROWS_PER_STATEMENT: usize = 1000;

impl Projection for Grade {
    fn name(&self) -> &'static str {
        "grade"
    }

    fn data_tables(&self) -> &'static [&'static str] {
        &["grade"]
    }

    fn apply<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        events: &'a [Projected<'a>],
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        async move {
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
                insert.push(&tables.data[0]).push(
                    " (acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, insert_time, \
                     event_id, channel, scene, kafka_partition, kafka_offset) ",
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
                        .push_bind(projected.offset);
                });
                insert.push(" ON DUPLICATE KEY UPDATE event_id = event_id");
                insert.build().execute(&mut *connection).await?;
            }
            Ok(())
        }
        .boxed()
    }
}
