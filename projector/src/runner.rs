//! The projector loop: read a batch from the log, apply it, repeat.
//!
//! Failures are waited out, never fatal: a MySQL outage is retried with
//! backoff on the same batch (nothing is read meanwhile), a broker outage is
//! logged while librdkafka reconnects, and a record MySQL refuses to store is
//! isolated and dead-lettered. On shutdown the batch being applied finishes.

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use score_shared::kafka::LogMetadata;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Backoff, BatchJob, BatchReport, Locking, Mode};
use crate::batch::{Decoder, Gap, LogRecord};
use crate::config::RunArgs;
use crate::observe;
use crate::projection::{self, Projection, TableSet};
use crate::status::{self, PartitionStatus};
use crate::takeover::StallWatch;
use crate::{db, store};

/// How long the loop waits for a record before it looks at assignments.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Pause after a consumer error, so that an unreachable broker does not
/// flood the log.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// A gap is believed to be in the log itself (not a stale read) once a seek
/// back to the stored position has shown it this many times.
const GAP_CONFIRMATIONS: u32 = 3;
/// How often the loop looks at the log's end and every projection's
/// status: for the lag metrics and the stalled-partition check.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// A configured, not yet running, projector.
pub struct Projector {
    args: RunArgs,
    pool: MySqlPool,
    consumer: StreamConsumer<ProjectorContext>,
    decoder: Decoder,
    projections: Vec<(&'static dyn Projection, TableSet)>,
    /// Kept for the periodic looks at the log's end.
    metadata: Arc<LogMetadata>,
    /// Bound at build, served once running.
    metrics_listener: std::net::TcpListener,
    metrics_address: std::net::SocketAddr,
}

impl Projector {
    /// Creates the MySQL pool and the Kafka consumer; neither connects yet.
    ///
    /// # Errors
    ///
    /// Invalid settings (an unknown projection among them).
    pub fn build(args: RunArgs) -> anyhow::Result<Self> {
        let decoder = args.decoder.decoder()?;
        let projections = args
            .projections
            .iter()
            .map(|name| projection::lookup(name).map(|p| (p, TableSet::live(p))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pool = db::pool(&args.database)?;
        let consumer: StreamConsumer<ProjectorContext> = score_shared::kafka::consumer_config(
            &args.kafka,
            &args.consumer_group,
            args.consumer_instance_id.as_deref(),
        )
        .create_with_context(ProjectorContext::default())
        .context("creating the Kafka consumer")?;
        let metadata = Arc::new(LogMetadata::new(&args.kafka)?);
        score_shared::telemetry::metrics();
        let metrics_listener = std::net::TcpListener::bind(args.metrics_addr)
            .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
        let metrics_address = metrics_listener
            .local_addr()
            .context("reading the metrics address")?;
        Ok(Self {
            args,
            pool,
            consumer,
            decoder,
            projections,
            metadata,
            metrics_listener,
            metrics_address,
        })
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn metrics_address(&self) -> std::net::SocketAddr {
        self.metrics_address
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

        let listener = self
            .metrics_listener
            .try_clone()
            .context("handing over the metrics listener")?;
        tracing::info!(address = %self.metrics_address, "serving metrics");
        let server = tokio::spawn(observe::serve_until_stopped(listener, stop.clone()));

        let outcome = self.run(&stop).await;
        stop.cancel();
        stop_on_signal.abort();
        match server.await {
            Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "metrics server failed"),
            Err(error) => tracing::warn!(error = %error, "metrics server task failed"),
            Ok(Ok(())) => {}
        }
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
        let names: Vec<_> = self.projections.iter().map(|(p, _)| p.name()).collect();
        tracing::info!(topic = %self.args.kafka.topic, group = %self.args.consumer_group, projections = ?names, "projector running");

        let mut gaps = GapTracker::default();
        let mut stalls = self.args.takeover_after().map(|after| StallCheck {
            watch: StallWatch::new(after),
            rebalances: 0,
        });
        let mut next_look = Instant::now() + LOOK_EVERY;
        'batches: loop {
            if Instant::now() >= next_look {
                self.look_at_the_log(stalls.as_mut()).await?;
                next_look = Instant::now() + LOOK_EVERY;
            }
            if self
                .consumer
                .context()
                .assignment_changed
                .swap(false, Ordering::SeqCst)
            {
                self.resume_assigned_partitions().await;
            }
            let records = tokio::select! {
                () = stop.cancelled() => break,
                records = self.next_batch() => records,
            };
            if records.is_empty() {
                continue;
            }
            observe::batch_read(records.len());
            // From here the batch is applied even if a stop arrives.
            let mut seek_to: HashMap<i32, i64> = HashMap::new();
            let mut slowest: HashMap<i32, i64> = HashMap::new();
            for (projection, tables) in &self.projections {
                let accepted = gaps.accepted(projection.name());
                let job = BatchJob {
                    projection: *projection,
                    tables,
                    topic: &self.args.kafka.topic,
                    records: &records,
                    decoder: &self.decoder,
                    accepted_gaps: &accepted,
                    mode: Mode::Project,
                    locking: Locking::Take,
                };
                let started = Instant::now();
                let Some(report) = apply::apply_until_done(&self.pool, &job, stop).await else {
                    break 'batches;
                };
                observe::batch_applied(projection.name(), &report, started.elapsed());
                gaps.applied(projection.name(), &report);
                for gap in &report.gaps {
                    gaps.observe(projection.name(), *gap);
                    keep_lowest(&mut seek_to, gap.partition, gap.stored);
                }
                for (partition, position) in &report.positions {
                    keep_lowest(&mut slowest, *partition, *position);
                }
                tracing::debug!(
                    projection = projection.name(),
                    projected = report.projected,
                    dead_lettered = report.dead_lettered,
                    already_applied = report.already_applied,
                    "batch committed"
                );
            }
            for (partition, offset) in seek_to {
                self.seek_back(partition, offset);
            }
            self.commit_advisory(&slowest);
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

    /// Waits up to [`IDLE_WAIT`] for one record, then collects more until
    /// the batch is full or the batch wait has passed. Empty when the log was
    /// idle, so that the loop can look at new assignments.
    async fn next_batch(&self) -> Vec<LogRecord> {
        let first = match tokio::time::timeout(IDLE_WAIT, self.consumer.recv()).await {
            Ok(Ok(message)) => LogRecord::detach(&message),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "consumer error");
                tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                return Vec::new();
            }
            Err(_idle) => return Vec::new(),
        };
        let mut records = vec![first];
        let deadline = Instant::now() + self.args.batch_wait();
        while records.len() < self.args.batch_size.max(1) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => records.push(LogRecord::detach(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "consumer error");
                    break;
                }
                Err(_deadline) => break,
            }
        }
        records
    }

    /// Moves every newly assigned partition to the lowest stored position of
    /// the projections, so that a projection that is behind (or new, with no
    /// position at all: it starts at offset 0) catches up even when no new
    /// event arrives. Kafka's committed offset is only where the consumer
    /// starts before this.
    async fn resume_assigned_partitions(&self) {
        let assigned = match self.consumer.assignment() {
            Ok(assignment) => partition_numbers(&assignment),
            Err(error) => {
                tracing::warn!(error = %error, "could not read the assignment");
                self.resume_again_next_turn();
                return;
            }
        };
        let lowest = match self.lowest_positions(&assigned).await {
            Ok(lowest) => lowest,
            Err(error) => {
                // Batches still check positions; this is retried next turn.
                tracing::warn!(error = %error, "could not read positions to resume from");
                self.resume_again_next_turn();
                return;
            }
        };
        self.warn_if_beyond_the_log(&lowest).await;
        for (partition, offset) in lowest {
            if let Err(error) = self.seek(partition, offset) {
                // Right after an assignment librdkafka may not accept a seek
                // yet; try again on the next turn of the loop.
                tracing::debug!(partition, offset, error = %error, "resume seek not accepted yet");
                self.resume_again_next_turn();
            }
        }
    }

    /// Has the loop resume the assigned partitions again on its next turn.
    fn resume_again_next_turn(&self) {
        self.consumer
            .context()
            .assignment_changed
            .store(true, Ordering::SeqCst);
    }

    /// The lowest stored position of the projections in each of
    /// `partitions`; 0 where a projection has none yet.
    async fn lowest_positions(&self, partitions: &[i32]) -> sqlx::Result<HashMap<i32, i64>> {
        let mut connection = self.pool.acquire().await?;
        let mut lowest: HashMap<i32, i64> = HashMap::new();
        for (_, tables) in &self.projections {
            let stored: HashMap<i32, i64> =
                store::positions(&mut connection, &tables.position, &self.args.kafka.topic)
                    .await?
                    .into_iter()
                    .map(|p| (p.kafka_partition, p.next_offset))
                    .collect();
            for partition in partitions {
                keep_lowest(
                    &mut lowest,
                    *partition,
                    stored.get(partition).copied().unwrap_or(0),
                );
            }
        }
        Ok(lowest)
    }

    /// Reads the log's end and every projection's status once, sets the
    /// lag and freshness metrics from them and, when the check is on, looks
    /// for stalled partitions. A look that cannot be taken (MySQL away) is
    /// skipped; with the broker away only the metrics without lag are set.
    ///
    /// # Errors
    ///
    /// Only when subscribing again is refused.
    async fn look_at_the_log(&self, stalls: Option<&mut StallCheck>) -> anyhow::Result<()> {
        let metadata = self.metadata.clone();
        let marks =
            tokio::task::spawn_blocking(move || metadata.watermarks(Duration::from_secs(2))).await;
        let marks = match marks {
            Ok(Ok(marks)) => Some(marks),
            _ => None,
        };
        let rows = status::status_with(
            &self.pool,
            &self.args.kafka.topic,
            marks.as_ref().unwrap_or(&BTreeMap::new()),
        )
        .await;
        let Ok(rows) = rows else { return Ok(()) };
        observe::record_status(&rows);
        match (stalls, marks) {
            (Some(check), Some(marks)) => self.rejoin_if_stalled(check, &marks, &rows),
            _ => Ok(()),
        }
    }

    /// Looks for partitions nobody projects (see [`crate::takeover`]) in one
    /// look's watermarks and status rows and, when there are some, rejoins
    /// the group so that they are assigned again.
    ///
    /// # Errors
    ///
    /// Only when subscribing again is refused.
    fn rejoin_if_stalled(
        &self,
        check: &mut StallCheck,
        marks: &BTreeMap<i32, (i64, i64)>,
        rows: &[PartitionStatus],
    ) -> anyhow::Result<()> {
        let rebalances = self.consumer.context().rebalances.load(Ordering::SeqCst);
        if rebalances != check.rebalances {
            // The assignment moved since the last look: start over.
            check.rebalances = rebalances;
            check.watch.reset();
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return Ok(());
        };
        let assigned: HashSet<i32> = partition_numbers(&assignment).into_iter().collect();
        // The lowest position of the projections run here, in each partition
        // of the log (a projection without one yet stands at 0).
        let mut positions = HashMap::new();
        for row in rows {
            let ours = self
                .projections
                .iter()
                .any(|(p, _)| p.name() == row.projection);
            if ours && marks.contains_key(&row.partition) {
                keep_lowest(&mut positions, row.partition, row.position);
            }
        }
        let highs = marks
            .iter()
            .map(|(partition, (_, high))| (*partition, *high))
            .collect();
        let stalled = check
            .watch
            .observe(Instant::now(), &assigned, &positions, &highs);
        if stalled.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            partitions = ?stalled,
            unmoved_for = ?check.watch.after(),
            "partitions with events to project are assigned to no one here and have not moved; \
             rejoining the consumer group so that they are assigned again"
        );
        self.consumer.unsubscribe();
        self.consumer
            .subscribe(&[&self.args.kafka.topic])
            .context("subscribing to the topic again")?;
        check.watch.reset();
        Ok(())
    }

    /// A stored position beyond the end of the log means the log was reset
    /// or replaced under the tables: its events would be taken as already
    /// applied. That needs an operator (a rebuild), so it is logged loudly.
    async fn warn_if_beyond_the_log(&self, lowest: &HashMap<i32, i64>) {
        let metadata = self.metadata.clone();
        let marks =
            tokio::task::spawn_blocking(move || metadata.watermarks(Duration::from_secs(5))).await;
        let Ok(Ok(marks)) = marks else { return };
        for (partition, position) in lowest {
            if let Some((_, high)) = marks.get(partition)
                && position > high
            {
                tracing::error!(
                    partition,
                    stored_position = position,
                    high_watermark = high,
                    "stored position is beyond the end of the log: the log was reset or replaced; \
                     rebuild the projections from it (projector rebuild <projection>)"
                );
            }
        }
    }

    fn seek(&self, partition: i32, offset: i64) -> rdkafka::error::KafkaResult<()> {
        self.consumer.seek(
            &self.args.kafka.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        )
    }

    fn seek_back(&self, partition: i32, offset: i64) {
        tracing::info!(partition, offset, "seeking back to the stored position");
        if let Err(error) = self.seek(partition, offset) {
            // The next batch from that partition shows the gap again and the
            // seek is retried then.
            tracing::warn!(partition, offset, error = %error, "seek failed");
        }
    }

    /// Tells Kafka where the slowest projection is, for lag tooling only: on
    /// start and rebalance the projector resumes from MySQL, not from these.
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

fn keep_lowest(map: &mut HashMap<i32, i64>, partition: i32, offset: i64) {
    map.entry(partition)
        .and_modify(|lowest| *lowest = (*lowest).min(offset))
        .or_insert(offset);
}

/// The state of the stalled-partition check between two looks.
struct StallCheck {
    watch: StallWatch,
    /// The rebalance count at the last look.
    rebalances: u64,
}

/// Counts how often each projection saw each gap after seeking back; a gap
/// seen [`GAP_CONFIRMATIONS`] times is in the log itself and may be crossed.
#[derive(Default)]
struct GapTracker {
    seen: HashMap<(&'static str, Gap), u32>,
}

impl GapTracker {
    fn observe(&mut self, projection: &'static str, gap: Gap) {
        let count = self.seen.entry((projection, gap)).or_default();
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

    fn accepted(&self, projection: &str) -> Vec<Gap> {
        self.seen
            .iter()
            .filter(|((name, _), count)| *name == projection && **count >= GAP_CONFIRMATIONS)
            .map(|((_, gap), _)| *gap)
            .collect()
    }

    /// Forgets a projection's gaps in partitions that have moved on.
    fn applied(&mut self, projection: &str, report: &BatchReport) {
        self.seen.retain(|(name, gap), _| {
            *name != projection
                || report
                    .positions
                    .get(&gap.partition)
                    .is_none_or(|position| *position == gap.stored)
        });
    }
}

/// Logs partition assignments and flags new ones for the loop, which
/// resumes them from MySQL. Correctness does not depend on it: every batch
/// checks the stored positions.
#[derive(Default)]
pub struct ProjectorContext {
    assignment_changed: AtomicBool,
    /// Assignments and revocations seen so far.
    rebalances: AtomicU64,
}

impl ClientContext for ProjectorContext {}

impl ConsumerContext for ProjectorContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions assigned");
                self.assignment_changed.store(true, Ordering::SeqCst);
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
