//! `projector status`: where each projection is in each partition.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::NaiveDateTime;
use score_shared::config::KafkaArgs;
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::identity::{self, Found};
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
    /// Whether the stored position stands on this log.
    pub log: LogStanding,
}

/// Whether a stored position stands on the log (see [`crate::identity`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum LogStanding {
    /// The record under the position is the one it was stored on (or there
    /// is nothing to check: offset 0, or stored before the check).
    Stands,
    /// It is not: the tables were built from another log; rebuild.
    Mismatch(String),
    /// Not checked (the broker did not answer, or only the end of the log
    /// was looked at and the position is within it).
    Unchecked,
}

impl LogStanding {
    fn from_check(found: Option<&Found>) -> Self {
        match found {
            Some(found) => Self::Mismatch(found.to_string()),
            None => Self::Stands,
        }
    }

    pub fn is_mismatch(&self) -> bool {
        matches!(self, Self::Mismatch(_))
    }
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
    let mut rows = status_with(pool, &kafka.topic, &watermarks).await?;
    if !watermarks.is_empty() {
        check_positions(pool, kafka, &mut rows).await?;
    }
    Ok(rows)
}

/// Reads the record each stored position stands on and sets each row's
/// [`LogStanding`] from it. A broker that does not answer leaves the rows
/// as they are.
///
/// # Errors
///
/// When MySQL cannot be read.
pub async fn check_positions(
    pool: &MySqlPool,
    kafka: &KafkaArgs,
    rows: &mut [PartitionStatus],
) -> anyhow::Result<()> {
    let mut connection = pool.acquire().await?;
    for projection in projection::all() {
        let tables = TableSet::live(projection);
        let positions =
            store::stored_positions(&mut connection, &tables.position, &kafka.topic).await?;
        let checked = match identity::check(kafka, &positions).await {
            Ok(checked) => checked,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not read the records under the positions"
                );
                continue;
            }
        };
        for row in rows
            .iter_mut()
            .filter(|r| r.projection == projection.name())
        {
            if let Some(found) = checked.get(&row.partition) {
                row.log = LogStanding::from_check(found.as_ref());
            }
        }
    }
    Ok(())
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
            let beyond = high_watermark.and_then(|end| identity::beyond_the_end(position, end));
            let log = match beyond {
                Some(found) => LogStanding::Mismatch(found.to_string()),
                None => LogStanding::Unchecked,
            };
            rows.push(PartitionStatus {
                projection: projection.name(),
                partition,
                position,
                high_watermark,
                lag: high_watermark.map(|high| high - position),
                last_event_at: stored.and_then(|p| p.last_event_at),
                dead_letters: dead_letters.get(&partition).copied().unwrap_or(0),
                log,
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
        "{:<16} {:>9} {:>12} {:>14} {:>10} {:<26} {:>12}  LOG",
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
            "{:<16} {:>9} {:>12} {:>14} {:>10} {:<26} {:>12}  {}",
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
            match &row.log {
                LogStanding::Stands => "ok",
                LogStanding::Mismatch(_) => "MISMATCH (!)",
                LogStanding::Unchecked => "?",
            },
        );
    }
    for row in rows {
        if let LogStanding::Mismatch(detail) = &row.log {
            let _ = writeln!(
                out,
                "(!) {} partition {}: the position does not stand on this log ({detail}); \
                 the tables were built from another log. Rebuild: projector rebuild {}",
                row.projection, row.partition, row.projection
            );
        }
    }
    out
}

/// How far one projection is with the erasures `projector forget` asked
/// for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ErasureStatus {
    pub projection: &'static str,
    /// Erasures the projection has applied.
    pub done: i64,
    /// Erasures requested (`erasure_request`) it has not applied yet.
    pub pending: i64,
}

/// The erasures of every projection.
///
/// # Errors
///
/// When MySQL cannot be read.
pub async fn erasures(pool: &MySqlPool) -> anyhow::Result<Vec<ErasureStatus>> {
    let mut connection = pool.acquire().await?;
    let mut statuses = Vec::new();
    for projection in projection::all() {
        let table = TableSet::live(projection)
            .data
            .last()
            .cloned()
            .expect("every projection has its erasure table last");
        let mut count = QueryBuilder::<MySql>::new("SELECT (SELECT COUNT(*) FROM ");
        count
            .push(&table)
            .push("), (SELECT COUNT(*) FROM erasure_request r WHERE NOT EXISTS (SELECT 1 FROM ")
            .push(&table)
            .push(" e WHERE e.event_id = r.event_id))");
        let (done, pending): (i64, i64) =
            count.build_query_as().fetch_one(&mut *connection).await?;
        statuses.push(ErasureStatus {
            projection: projection.name(),
            done,
            pending,
        });
    }
    Ok(statuses)
}

/// The erasures as lines for people.
pub fn render_erasures(statuses: &[ErasureStatus]) -> String {
    let mut out = String::from("ERASURES (projector forget)\n");
    for status in statuses {
        let _ = writeln!(
            out,
            "  {:<16} {} done, {} pending{}",
            status.projection,
            status.done,
            status.pending,
            if status.pending > 0 { " (!)" } else { "" }
        );
    }
    out
}

/// Whether any row's position does not stand on the log.
pub fn any_mismatch(rows: &[PartitionStatus]) -> bool {
    rows.iter().any(|row| row.log.is_mismatch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_erasures_are_flagged() {
        let text = render_erasures(&[
            ErasureStatus {
                projection: "grade",
                done: 3,
                pending: 0,
            },
            ErasureStatus {
                projection: "account_summary",
                done: 2,
                pending: 1,
            },
        ]);
        assert!(
            text.contains("grade            3 done, 0 pending\n"),
            "{text}"
        );
        assert!(
            text.contains("account_summary  2 done, 1 pending (!)"),
            "{text}"
        );
    }

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
            log: LogStanding::Unchecked,
        }]);
        let line = table.lines().nth(1).unwrap();
        assert!(line.starts_with("grade"), "{line}");
        assert!(line.contains(" ? "), "{line}");
        assert!(line.trim_end().ends_with("2  ?"), "{line}");
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
            log: LogStanding::Mismatch("the log's partition ends at offset 2, before it".into()),
        }]);
        assert!(table.contains("-5 (!)"), "{table}");
        assert!(table.contains("MISMATCH (!)"), "{table}");
        assert!(
            table.contains("grade partition 0: the position does not stand on this log"),
            "{table}"
        );
        assert!(table.contains("projector rebuild grade"), "{table}");
    }
}
