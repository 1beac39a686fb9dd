//! The projector's metrics: what each batch did, and how far each
//! projection is behind the log, from the status the runner reads every few
//! seconds anyway (its look at the log). Served with `/healthz` (the process
//! lives) and `/readyz` (every assigned partition resumed from MySQL, see
//! [`crate::readiness`]) on `SCORES_METRICS_ADDR`.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `projector_batches_total` | counter | projection |
//! | `projector_events_projected_total` | counter | projection |
//! | `projector_dead_letters_total` | counter | projection |
//! | `projector_apply_duration_seconds` | histogram | projection |
//! | `projector_batch_size_events` | histogram | |
//! | `projector_lag_events` | gauge | projection, partition |
//! | `projector_last_event_age_seconds` | gauge | projection |
//! | `projector_dead_letters_open` | gauge | projection |
//! | `projector_log_mismatch` | gauge (1: the position does not stand on the log) | projection, partition |

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::apply::BatchReport;
use crate::identity::LogMismatch;
use crate::readiness::{Readiness, Stage};
use crate::status::{ErasureStatus, LogStanding, PartitionStatus};

/// Records one batch read from the log.
pub fn batch_read(records: usize) {
    metrics::histogram!("projector_batch_size_events").record(records as f64);
}

/// Records one batch applied to `projection`, which took `elapsed`.
pub fn batch_applied(projection: &'static str, report: &BatchReport, elapsed: Duration) {
    metrics::counter!("projector_batches_total", "projection" => projection).increment(1);
    metrics::counter!("projector_events_projected_total", "projection" => projection)
        .increment(report.projected as u64);
    metrics::counter!("projector_dead_letters_total", "projection" => projection)
        .increment(report.dead_lettered as u64);
    metrics::histogram!("projector_apply_duration_seconds", "projection" => projection)
        .record(elapsed.as_secs_f64());
}

/// Flags a position found not to stand on the log.
pub fn log_mismatch(mismatch: &LogMismatch) {
    metrics::gauge!(
        "projector_log_mismatch",
        "projection" => mismatch.projection,
        "partition" => mismatch.partition.to_string()
    )
    .set(1.0);
}

/// `projector_erasures{projection, state}`: erasures done and pending.
pub fn record_erasures(statuses: &[ErasureStatus]) {
    for status in statuses {
        metrics::gauge!("projector_erasures", "projection" => status.projection, "state" => "done")
            .set(status.done as f64);
        metrics::gauge!("projector_erasures", "projection" => status.projection, "state" => "pending")
            .set(status.pending as f64);
    }
}

/// Sets the gauges from one status reading: lag per partition (when the
/// broker answered), the age of the newest projected event and the open
/// dead letters per projection.
pub fn record_status(rows: &[PartitionStatus]) {
    let mut newest = BTreeMap::new();
    let mut open = BTreeMap::new();
    for row in rows {
        if row.log != LogStanding::Unchecked {
            metrics::gauge!(
                "projector_log_mismatch",
                "projection" => row.projection,
                "partition" => row.partition.to_string()
            )
            .set(if row.log.is_mismatch() { 1.0 } else { 0.0 });
        }
        if let Some(lag) = row.lag {
            metrics::gauge!(
                "projector_lag_events",
                "projection" => row.projection,
                "partition" => row.partition.to_string()
            )
            .set(lag as f64);
        }
        if let Some(at) = row.last_event_at {
            let entry = newest.entry(row.projection).or_insert(at);
            *entry = (*entry).max(at);
        }
        *open.entry(row.projection).or_insert(0) += row.dead_letters;
    }
    let now = Utc::now().naive_utc();
    for (projection, at) in newest {
        let age = (now - at).num_milliseconds() as f64 / 1000.0;
        metrics::gauge!("projector_last_event_age_seconds", "projection" => projection)
            .set(age.max(0.0));
    }
    for (projection, count) in open {
        metrics::gauge!("projector_dead_letters_open", "projection" => projection)
            .set(count as f64);
    }
}

/// Serves [`routes`] on `listener` until `stop`.
///
/// # Errors
///
/// When the listener cannot be handed to the runtime.
pub async fn serve_until_stopped(
    listener: std::net::TcpListener,
    readiness: Readiness,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    warp::serve(routes(readiness))
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run()
        .await;
    Ok(())
}

/// Every route of the metrics address: [`metrics`], [`healthz`],
/// [`readyz`].
pub fn routes(
    readiness: Readiness,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    metrics()
        .or(healthz())
        .unify()
        .or(readyz(readiness))
        .unify()
}

/// `GET /metrics`: the process's Prometheus registry.
pub fn metrics() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            score_shared::telemetry::render_metrics(),
            "content-type",
            score_shared::telemetry::METRICS_CONTENT_TYPE,
        )
        .into_response()
    })
}

/// `GET /healthz`: 200 while the process lives.
pub fn healthz() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response())
}

/// `GET /readyz`: 200 once the consumer has joined its group and resumed
/// every assigned partition (none is fine) from the positions in MySQL; 503
/// before, during a rebalance, and while the positions cannot be read. The
/// body says which.
pub fn readyz(
    readiness: Readiness,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("readyz").and(warp::get()).map(move || {
        let stage = readiness.stage();
        let status = if stage == Stage::Ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = warp::reply::json(&serde_json::json!({"status": stage.describe()}));
        warp::reply::with_status(body, status).into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn readyz_answer(readiness: &Readiness) -> (u16, serde_json::Value) {
        let response = warp::test::request()
            .method("GET")
            .path("/readyz")
            .reply(&routes(readiness.clone()))
            .await;
        let body = serde_json::from_slice(response.body()).expect("a JSON body");
        (response.status().as_u16(), body)
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_assignment_is_resumed_and_again_when_it_is_revoked() {
        let readiness = Readiness::default();
        let cases = [
            (None, 503, "waiting for a partition assignment"),
            (
                Some(Stage::Resuming),
                503,
                "resuming the assigned partitions from MySQL",
            ),
            (Some(Stage::Ready), 200, "ready"),
            (
                Some(Stage::AwaitingAssignment),
                503,
                "waiting for a partition assignment",
            ),
            (Some(Stage::Ready), 200, "ready"),
        ];
        for (stage, status, says) in cases {
            if let Some(stage) = stage {
                readiness.set(stage);
            }
            let (answered, body) = readyz_answer(&readiness).await;
            assert_eq!(answered, status, "at {stage:?}: {body}");
            assert_eq!(body["status"], says, "at {stage:?}");
        }
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer_whatever_the_readiness() {
        let readiness = Readiness::default();
        let filter = routes(readiness);
        for path in ["/healthz", "/metrics"] {
            let response = warp::test::request()
                .method("GET")
                .path(path)
                .reply(&filter)
                .await;
            assert_eq!(response.status(), 200, "{path}");
        }
        let unknown = warp::test::request()
            .method("GET")
            .path("/ready")
            .reply(&filter)
            .await;
        assert_eq!(unknown.status(), 404);
    }

    #[test]
    fn status_readings_become_lag_freshness_and_open_dead_letter_gauges() {
        let handle = score_shared::telemetry::metrics();
        let at = Utc::now().naive_utc() - chrono::Duration::seconds(30);
        let row = |partition, lag: Option<i64>, dead_letters| PartitionStatus {
            projection: "grade",
            partition,
            position: 10,
            high_watermark: lag.map(|lag| 10 + lag),
            lag,
            last_event_at: Some(at),
            dead_letters,
            log: LogStanding::Unchecked,
        };
        let mismatched = PartitionStatus {
            log: LogStanding::Mismatch("the log's partition ends at offset 2, before it".into()),
            ..row(2, Some(-8), 0)
        };
        record_status(&[row(0, Some(7), 1), row(1, None, 2), mismatched]);
        let text = handle.render();
        assert!(
            text.contains(r#"projector_lag_events{projection="grade",partition="0"} 7"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"partition="1""#),
            "no lag without a watermark"
        );
        assert!(
            text.contains(r#"projector_log_mismatch{projection="grade",partition="2"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"projector_log_mismatch{projection="grade",partition="0"}"#),
            "not flagged either way when unchecked: {text}"
        );
        assert!(
            text.contains(r#"projector_dead_letters_open{projection="grade"} 3"#),
            "{text}"
        );
        let age: f64 = text
            .lines()
            .find_map(|line| {
                line.strip_prefix(r#"projector_last_event_age_seconds{projection="grade"} "#)
            })
            .expect("an age")
            .parse()
            .expect("a number");
        assert!((29.0..60.0).contains(&age), "{age}");
    }
}
