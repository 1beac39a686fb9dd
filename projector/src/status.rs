//! `projector status`: where each projection is in each partition.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::NaiveDateTime;
use score_shared::config::KafkaArgs;
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::projection::{self, TableSet};
use crate::store;

/// How long `status` waits for the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// One projection in one partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStatus {
    pub projection: &'static str,
    pub partition: i32,
    /// The offset of the next event to apply.
    pub position: i64,
    /// The partition's high watermark; `None` when the broker did not answer.
    pub high_watermark: Option<i64>,
    /// Events in the log not yet applied. Negative when the stored position
    /// is beyond the end of the log: the log was reset or replaced, and the
    /// projection must be rebuilt from it.
    pub lag: Option<i64>,
    /// When the last applied event occurred (UTC).
    pub last_event_at: Option<NaiveDateTime>,
    /// Unresolved dead letters.
    pub dead_letters: i64,
}

/// The status of every projection in every partition of the topic. The
/// broker being down is not an error: watermarks and lag are then `None`.
///
/// # Errors
///
/// When MySQL cannot be read.
pub async fn status(pool: &MySqlPool, kafka: &KafkaArgs) -> anyhow::Result<Vec<PartitionStatus>> {
    let watermarks = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || score_shared::kafka::watermarks(&kafka, BROKER_TIMEOUT))
            .await?
    };
    let watermarks = match watermarks {
        Ok(watermarks) => watermarks,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "broker unavailable; showing stored positions only"
            );
            BTreeMap::new()
        }
    };
    status_with(pool, &kafka.topic, &watermarks).await
}

/// [`status`] with the watermarks already read (`(low, high)` by
/// partition; empty when the broker did not answer).
///
/// # Errors
///
/// When MySQL cannot be read.
pub async fn status_with(
    pool: &MySqlPool,
    topic: &str,
    watermarks: &BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<Vec<PartitionStatus>> {
    let mut connection = pool.acquire().await?;
    let mut rows = Vec::new();
    for projection in projection::all() {
        let tables = TableSet::live(projection);
        let positions: BTreeMap<i32, store::Position> =
            store::positions(&mut connection, &tables.position, topic)
                .await?
                .into_iter()
                .map(|p| (p.kafka_partition, p))
                .collect();
        let mut count = QueryBuilder::<MySql>::new("SELECT kafka_partition, COUNT(*) FROM ");
        count.push(&tables.dead_letter);
        count
            .push(" WHERE resolved_at IS NULL AND topic = ")
            .push_bind(topic);
        count.push(" GROUP BY kafka_partition");
        let dead_letters: BTreeMap<i32, i64> = count
            .build_query_as::<(i32, i64)>()
            .fetch_all(&mut *connection)
            .await?
            .into_iter()
            .collect();

        let partitions: BTreeSet<i32> =
            watermarks.keys().chain(positions.keys()).copied().collect();
        for partition in partitions {
            let stored = positions.get(&partition);
            let position = stored.map_or(0, |p| p.next_offset);
            let high_watermark = watermarks.get(&partition).map(|(_, high)| *high);
            rows.push(PartitionStatus {
                projection: projection.name(),
                partition,
                position,
                high_watermark,
                lag: high_watermark.map(|high| high - position),
                last_event_at: stored.and_then(|p| p.last_event_at),
                dead_letters: dead_letters.get(&partition).copied().unwrap_or(0),
            });
        }
    }
    Ok(rows)
}

/// The status as a table for people.
pub fn render(rows: &[PartitionStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>12} {:>14} {:>10} {:<26} {:>12}",
        "PROJECTION",
        "PARTITION",
        "POSITION",
        "HIGH WATERMARK",
        "LAG",
        "LAST EVENT (UTC)",
        "DEAD LETTERS"
    );
    let unknown = || "?".to_owned();
    for row in rows {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>12} {:>14} {:>10} {:<26} {:>12}",
            row.projection,
            row.partition,
            row.position,
            row.high_watermark.map_or_else(unknown, |v| v.to_string()),
            row.lag.map_or_else(unknown, |lag| if lag < 0 {
                format!("{lag} (!)")
            } else {
                lag.to_string()
            }),
            row.last_event_at.map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
            ),
            row.dead_letters,
        );
    }
    if rows.iter().any(|row| row.lag.is_some_and(|lag| lag < 0)) {
        out.push_str(
            "(!) position beyond the end of the log: the log was reset or replaced; \
             rebuild the projection (projector rebuild <projection>)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_watermark_shows_as_a_question_mark() {
        let table = render(&[PartitionStatus {
            projection: "grade",
            partition: 0,
            position: 7,
            high_watermark: None,
            lag: None,
            last_event_at: None,
            dead_letters: 2,
        }]);
        let line = table.lines().nth(1).unwrap();
        assert!(line.starts_with("grade"), "{line}");
        assert!(line.contains(" ? "), "{line}");
        assert!(line.trim_end().ends_with('2'), "{line}");
    }

    #[test]
    fn a_position_beyond_the_end_of_the_log_is_flagged() {
        let table = render(&[PartitionStatus {
            projection: "grade",
            partition: 0,
            position: 7,
            high_watermark: Some(2),
            lag: Some(-5),
            last_event_at: None,
            dead_letters: 0,
        }]);
        assert!(table.contains("-5 (!)"), "{table}");
        assert!(table.contains("rebuild the projection"), "{table}");
    }
}
