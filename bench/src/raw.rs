//! The raw limits each stage of the pipeline is compared with, measured on
//! the same broker and MariaDB in the same run: producing without HTTP in
//! front, consuming without writing, and writing without Kafka.

use score_shared::{AccountRef, Pepper};
use std::time::Duration;

use futures::StreamExt;
use ingest_api::publisher::Publisher;
use projector::log_reader::{LogReader, Start};
use projector::projection::{Grade, Projected, Projection, TableSet};
use score_shared::config::KafkaArgs;
use sqlx::MySqlPool;
use tokio::time::Instant;

use crate::load::{self, Latencies};

/// Records taken at a time, as the projector's default batch.
const RAW_BATCH: usize = 500;
use crate::traffic;

/// A rate: how many in how long.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub count: u64,
    pub elapsed: Duration,
}

impl Rate {
    /// Per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// The ingest API's own publisher (same producer settings: idempotent,
/// acks=all, linger; same sealing, data key writes included) appending the
/// same events with `in_flight` sends outstanding, no HTTP in front: the
/// most the API could pass on.
pub async fn produce(
    publisher: &Publisher,
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
) -> Latencies {
    let publisher = publisher.clone();
    load::closed_loop(in_flight, warmup, duration, move |i| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(&traffic::event(i))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

/// Appends events `0..count` as fast as the publisher takes them; prints
/// progress every 100,000.
///
/// # Errors
///
/// When an event is not acknowledged.
pub async fn fill(publisher: &Publisher, count: u64) -> anyhow::Result<Rate> {
    let start = Instant::now();
    let mut sends = futures::stream::iter(0..count)
        .map(|i| {
            let publisher = publisher.clone();
            async move { publisher.publish(&traffic::event(i)).await }
        })
        .buffer_unordered(4096);
    let mut done = 0_u64;
    while let Some(outcome) = sends.next().await {
        outcome?;
        done += 1;
        if done.is_multiple_of(100_000) {
            eprintln!("  appended {done} of {count} events");
        }
    }
    Ok(Rate {
        count,
        elapsed: start.elapsed(),
    })
}

/// Reads every record of the topic from the start with the projector's own
/// [`LogReader`] (its consumer settings, no group, records copied out of
/// librdkafka's buffers as the projector copies them), writing nothing.
/// Timed from the first record to the last.
///
/// # Errors
///
/// When the topic cannot be read.
pub async fn consume(kafka: &KafkaArgs, expected: u64) -> anyhow::Result<Rate> {
    let mut reader = LogReader::open(kafka, "bench-raw", Start::Beginning).await?;
    let mut count = 0_u64;
    let mut first = None;
    while count < expected {
        let records = reader
            .next_batch(RAW_BATCH, Duration::from_secs(30), Duration::ZERO)
            .await
            .map_err(|error| anyhow::anyhow!("reading the topic after {count} records: {error}"))?;
        if records.is_empty() {
            anyhow::bail!("nothing more to read after {count} of {expected} records");
        }
        first.get_or_insert_with(Instant::now);
        count += records.len() as u64;
    }
    Ok(Rate {
        count,
        elapsed: first.map_or(Duration::ZERO, |first| first.elapsed()),
    })
}

/// Writes the same `count` rows into `grade` with the projection's own
/// multi-row INSERT, `batch` rows per transaction, with no Kafka, no
/// positions and no locks: the most MariaDB takes.
///
/// # Errors
///
/// When MariaDB refuses a statement.
pub async fn insert(pool: &MySqlPool, count: u64, batch: u64) -> anyhow::Result<Rate> {
    let tables = TableSet::live(&Grade);
    // Any pepper: the figure is MariaDB's, not the reference's.
    let pepper: Pepper = "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBA=".parse()?;
    let mut connection = pool.acquire().await?;
    let mut elapsed = Duration::ZERO;
    let mut next = 0;
    while next < count {
        let end = (next + batch).min(count);
        // Making the events is not part of the figure.
        let events: Vec<_> = (next..end).map(traffic::event).collect();
        let refs: Vec<AccountRef> = events
            .iter()
            .map(|event| AccountRef::of(&pepper, &event.acc_nbr))
            .collect();
        let projected: Vec<_> = events
            .iter()
            .zip(&refs)
            .zip(next..)
            .map(|((event, account_ref), offset)| Projected {
                event,
                account_ref,
                forgotten: false,
                partition: 0,
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
            })
            .collect();
        let start = Instant::now();
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        Grade.apply(&mut transaction, &tables, &projected).await?;
        transaction.commit().await?;
        elapsed += start.elapsed();
        next = end;
    }
    Ok(Rate { count, elapsed })
}
