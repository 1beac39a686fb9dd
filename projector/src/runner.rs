//! The projector loop: read a batch from the log, apply it, repeat.
//!
//! Failures are waited out, never fatal: a MySQL outage is retried with
//! backoff on the same batch (nothing is read meanwhile), a broker outage is
//! logged while librdkafka reconnects, and a record MySQL refuses to store is
//! isolated and dead-lettered. On shutdown the batch being applied finishes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use score_shared::ValidationRules;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, BatchReport, Mode};
use crate::batch::{DeadLetterReason, Gap, LogRecord};
use crate::config::RunArgs;
use crate::db;

/// First and longest wait between retries of a failed MySQL transaction.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Pause after a consumer error, so that an unreachable broker does not
/// flood the log.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// A gap is believed to be in the log itself (not a stale read) once a seek
/// back to the stored position has shown it this many times.
const GAP_CONFIRMATIONS: u32 = 3;

/// A configured, not yet running, projector.
pub struct Projector {
    args: RunArgs,
    pool: MySqlPool,
    consumer: StreamConsumer<ProjectorContext>,
    rules: Arc<ValidationRules>,
}

impl Projector {
    /// Creates the MySQL pool and the Kafka consumer; neither connects yet.
    ///
    /// # Errors
    ///
    /// Invalid settings.
    pub fn build(args: RunArgs) -> anyhow::Result<Self> {
        let rules = args
            .validation
            .rules()
            .context("invalid validation settings")?;
        let pool = db::pool(&args.database)?;
        let consumer: StreamConsumer<ProjectorContext> =
            score_shared::kafka::consumer_config(&args.kafka, &args.consumer_group)
                .create_with_context(ProjectorContext)
                .context("creating the Kafka consumer")?;
        Ok(Self {
            args,
            pool,
            consumer,
            rules: Arc::new(rules),
        })
    }

    /// Migrates (waiting for MySQL if needed), subscribes, and projects until
    /// `shutdown` completes.
    ///
    /// # Errors
    ///
    /// Only when the subscription itself is refused.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let stop_on_signal = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let outcome = self.run(&stop).await;
        stop_on_signal.abort();
        outcome
    }

    async fn run(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        if !self.migrate_when_available(stop).await {
            return Ok(());
        }
        if let Err(error) = score_shared::kafka::ensure_topic(&self.args.kafka).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not provision the topic; subscribing anyway"
            );
        }
        self.consumer
            .subscribe(&[&self.args.kafka.topic])
            .context("subscribing to the topic")?;
        tracing::info!(topic = %self.args.kafka.topic, group = %self.args.consumer_group, "projector running");

        let mut gaps = GapTracker::default();
        loop {
            let records = tokio::select! {
                () = stop.cancelled() => break,
                records = self.next_batch() => records,
            };
            // From here the batch is applied even if a stop arrives.
            let Some(report) = self
                .apply_with_retry(&records, &gaps.accepted(), stop)
                .await
            else {
                break;
            };
            gaps.applied(&report);
            for gap in &report.gaps {
                gaps.observe(*gap);
                self.seek(gap.partition, gap.stored);
            }
            self.commit_advisory(&report.positions);
            tracing::debug!(
                projected = report.projected,
                dead_lettered = report.dead_lettered,
                already_applied = report.already_applied,
                "batch committed"
            );
        }
        tracing::info!("projector stopped");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Runs the migrations, retrying while MySQL is unreachable. Returns
    /// false if stopped first.
    async fn migrate_when_available(&self, stop: &CancellationToken) -> bool {
        let mut backoff = Backoff::new();
        loop {
            match db::migrate(&self.args.database, &self.pool).await {
                Ok(()) => return true,
                Err(error) => {
                    let wait = backoff.next();
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?wait, "migrations not applied");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Waits for one record, then collects more until the batch is full or
    /// the batch wait has passed.
    async fn next_batch(&self) -> Vec<LogRecord> {
        let first = loop {
            match self.consumer.recv().await {
                Ok(message) => break record_of(&message),
                Err(error) => {
                    tracing::warn!(error = %error, "consumer error");
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                }
            }
        };
        let mut records = vec![first];
        let deadline = Instant::now() + self.args.batch_wait();
        while records.len() < self.args.batch_size.max(1) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => records.push(record_of(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "consumer error");
                    break;
                }
                Err(_deadline) => break,
            }
        }
        records
    }

    /// Applies the batch, waiting out MySQL outages. A batch MySQL refuses
    /// for its data is split, and a single refused record is dead-lettered.
    /// Returns `None` only when stopped while MySQL is unavailable (nothing
    /// was applied: the batch will be read again).
    async fn apply_with_retry(
        &self,
        records: &[LogRecord],
        accepted_gaps: &[Gap],
        stop: &CancellationToken,
    ) -> Option<BatchReport> {
        let topic = self.args.kafka.topic.as_str();
        let mut backoff = Backoff::new();
        loop {
            let attempt = apply::apply_batch(
                &self.pool,
                topic,
                records,
                &self.rules,
                accepted_gaps,
                Mode::Project,
            )
            .await;
            match attempt {
                Ok(report) => return Some(report),
                Err(error) if apply::is_data_error(&error) => {
                    tracing::warn!(error = %error, "MySQL refused a record; applying the batch one record at a time");
                    return Box::pin(self.apply_one_by_one(records, accepted_gaps, stop)).await;
                }
                Err(error) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %error, retry_in = ?wait, "batch not applied; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn apply_one_by_one(
        &self,
        records: &[LogRecord],
        accepted_gaps: &[Gap],
        stop: &CancellationToken,
    ) -> Option<BatchReport> {
        let topic = self.args.kafka.topic.as_str();
        let mut total = BatchReport::default();
        for record in records.chunks(1) {
            let report = if records.len() == 1 {
                let mut backoff = Backoff::new();
                loop {
                    let attempt = apply::apply_batch(
                        &self.pool,
                        topic,
                        record,
                        &self.rules,
                        accepted_gaps,
                        Mode::Project,
                    )
                    .await;
                    match attempt {
                        Ok(report) => break report,
                        Err(error) if apply::is_data_error(&error) => {
                            let reason = DeadLetterReason::new("unwritable", error.to_string());
                            let dead = apply::apply_batch(
                                &self.pool,
                                topic,
                                record,
                                &self.rules,
                                accepted_gaps,
                                Mode::DeadLetter(&reason),
                            )
                            .await;
                            match dead {
                                Ok(report) => break report,
                                Err(error) => {
                                    tracing::warn!(error = %error, "dead letter not written; retrying")
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, "record not applied; retrying")
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            } else {
                Box::pin(self.apply_with_retry(record, accepted_gaps, stop)).await?
            };
            total.projected += report.projected;
            total.dead_lettered += report.dead_lettered;
            total.already_applied += report.already_applied;
            total.gaps.extend(report.gaps);
            total.positions.extend(report.positions);
        }
        Some(total)
    }

    fn seek(&self, partition: i32, offset: i64) {
        tracing::info!(partition, offset, "seeking back to the stored position");
        if let Err(error) = self.consumer.seek(
            &self.args.kafka.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            // The next batch from that partition shows the gap again and the
            // seek is retried then.
            tracing::warn!(partition, offset, error = %error, "seek failed");
        }
    }

    /// Tells Kafka where the projector is, for lag tooling only: on start
    /// and rebalance the projector resumes from MySQL, not from these.
    fn commit_advisory(&self, positions: &HashMap<i32, i64>) {
        let mut offsets = TopicPartitionList::new();
        for (partition, next_offset) in positions {
            let added = offsets.add_partition_offset(
                &self.args.kafka.topic,
                *partition,
                Offset::Offset(*next_offset),
            );
            if added.is_err() {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(error = %error, "advisory offset commit failed");
        }
    }
}

fn record_of(message: &impl Message) -> LogRecord {
    LogRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

/// Exponential backoff between retries.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(RETRY_BACKOFF.0)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(RETRY_BACKOFF.1);
        wait
    }
}

/// Counts how often each gap was seen after seeking back; a gap seen
/// [`GAP_CONFIRMATIONS`] times is in the log itself and may be crossed.
#[derive(Default)]
struct GapTracker {
    seen: HashMap<Gap, u32>,
}

impl GapTracker {
    fn observe(&mut self, gap: Gap) {
        let count = self.seen.entry(gap).or_default();
        *count += 1;
        if *count == GAP_CONFIRMATIONS {
            tracing::warn!(
                partition = gap.partition,
                from = gap.stored,
                to = gap.first_seen,
                "the log has no records in this range; crossing it"
            );
        }
    }

    fn accepted(&self) -> Vec<Gap> {
        self.seen
            .iter()
            .filter(|(_, count)| **count >= GAP_CONFIRMATIONS)
            .map(|(gap, _)| *gap)
            .collect()
    }

    /// Forgets gaps of partitions that have moved on.
    fn applied(&mut self, report: &BatchReport) {
        self.seen.retain(|gap, _| {
            report
                .positions
                .get(&gap.partition)
                .is_none_or(|position| *position == gap.stored)
        });
    }
}

/// Logs partition assignments; correctness does not depend on them, since
/// every batch checks the stored positions.
pub struct ProjectorContext;

impl ClientContext for ProjectorContext {}

impl ConsumerContext for ProjectorContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions revoked")
            }
            Rebalance::Error(error) => tracing::warn!(error = %error, "rebalance failed"),
        }
    }
}

fn partition_numbers(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|p| p.partition())
        .collect()
}
