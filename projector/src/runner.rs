//! The projector loop: resume what the group assigned, read a batch from
//! the log, apply it, repeat.
//!
//! Each turn of [`Projector::run`] does one thing at a time, each in its own
//! function: look at the log's end for the lag metrics (every
//! [`LOOK_EVERY`]), resume newly assigned partitions from MySQL (which makes
//! the projector ready, see [`crate::readiness`]), read a batch, and apply
//! it to every projection.
//!
//! Failures are waited out, never fatal: a MySQL outage is retried with
//! backoff on the same batch (nothing is read meanwhile), a broker outage is
//! logged while librdkafka reconnects, and a record MySQL refuses to store is
//! isolated and dead-lettered. On shutdown the batch being applied finishes.

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
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Backoff, BatchJob, BatchReport, Halt, Locking, Mode};
use crate::batch::{DecodedBatch, Decoder, LogRecord};
use crate::config::RunArgs;
use crate::gaps::GapTracker;
use crate::identity::{self, LogMismatch, Predecessors, StoredPosition};
use crate::keys::KeyRing;
use crate::projection::{self, Projection, TableSet};
use crate::readiness::{Readiness, Stage};
use crate::status;
use crate::{db, store};
use crate::{log_reader, observe};

/// How long the loop waits for a record before it turns (a new assignment
/// wakes it at once); also how soon a resume that failed is tried again.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Pause after a consumer error, so that an unreachable broker does not
/// flood the log.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How often the loop looks at the log's end and every projection's
/// status, for the lag and freshness metrics.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Every how many looks the records under every projection's positions are
/// read too, so that a log mismatch anywhere (also in projections other
/// instances run) shows in `projector_log_mismatch` within half a minute.
const CHECK_THE_LOG_EVERY_LOOKS: u32 = 6;

/// A configured, not yet running, projector.
pub struct Projector {
    args: RunArgs,
    pool: MySqlPool,
    consumer: StreamConsumer<ProjectorContext>,
    decoder: Decoder,
    /// The data keys sealed events are opened with.
    keys: KeyRing,
    projections: Vec<(&'static dyn Projection, TableSet)>,
    /// Kept for the periodic looks at the log's end.
    metadata: Arc<LogMetadata>,
    /// Bound at build, served once running.
    metrics_listener: std::net::TcpListener,
    metrics_address: std::net::SocketAddr,
    /// Served as `/readyz`; moved by the loop and the consumer's rebalances.
    readiness: Readiness,
}

impl Projector {
    /// Creates the MySQL pool and the Kafka consumer; neither connects yet.
    ///
    /// # Errors
    ///
    /// Invalid settings (an unknown projection among them).
    pub fn build(args: RunArgs) -> anyhow::Result<Self> {
        let keys = args.decoder.key_ring(&args.kafka)?;
        let decoder = args.decoder.decoder(keys.keys())?;
        let projections = args
            .projections
            .iter()
            .map(|name| projection::lookup(name).map(|p| (p, TableSet::live(p))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pool = db::pool(&args.database)?;
        let readiness = Readiness::default();
        // Dynamic membership: a restarted instance joins as a new member.
        let consumer: StreamConsumer<ProjectorContext> =
            score_shared::kafka::consumer_config(&args.kafka, &args.group_id())
                .create_with_context(ProjectorContext::new(readiness.clone()))
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
            keys,
            projections,
            metadata,
            metrics_listener,
            metrics_address,
            readiness,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn metrics_address(&self) -> std::net::SocketAddr {
        self.metrics_address
    }

    /// What `/readyz` answers from: ready once every assigned partition is
    /// resumed from MySQL.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
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
        let server = tokio::spawn(observe::serve_until_stopped(
            listener,
            self.readiness.clone(),
            stop.clone(),
        ));

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

    /// The loop: migrate, check the positions against the log, subscribe,
    /// then turn until `stop`.
    ///
    /// # Errors
    ///
    /// A refused subscription, or a [`LogMismatch`]: nothing is applied
    /// on positions that do not stand on the log.
    async fn run(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        if !self.migrate_when_available(stop).await {
            return Ok(());
        }
        self.check_positions_against_the_log()
            .await
            .inspect_err(observe::log_mismatch)?;
        self.subscribe().await?;
        let outcome = self.turn_until_stopped(stop).await;
        self.readiness.set(Stage::AwaitingAssignment);
        self.consumer.unsubscribe();
        outcome.inspect_err(observe::log_mismatch)?;
        tracing::info!("projector stopped");
        Ok(())
    }

    /// Every stored position of the projections this instance runs, in
    /// every partition, checked against the record it stands on, before
    /// anything is read. A broker that does not answer defers the check to
    /// the batches (which make it too).
    async fn check_positions_against_the_log(&self) -> Result<(), LogMismatch> {
        for (projection, tables) in &self.projections {
            let positions = match self.stored_positions(tables).await {
                Ok(positions) => positions,
                Err(error) => {
                    tracing::warn!(error = %score_shared::privacy::scrubbed(&error.to_string()), "could not read the positions to check");
                    return Ok(());
                }
            };
            let checked = match identity::check(&self.args.kafka, &positions).await {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "could not check the positions against the log yet; every batch checks them"
                    );
                    return Ok(());
                }
            };
            for (partition, found) in checked {
                if let Some(found) = found {
                    return Err(LogMismatch {
                        projection: projection.name(),
                        partition,
                        next_offset: positions[&partition].next_offset,
                        found,
                    });
                }
            }
        }
        Ok(())
    }

    /// A projection's stored positions in the topic, by partition.
    async fn stored_positions(
        &self,
        tables: &TableSet,
    ) -> sqlx::Result<BTreeMap<i32, StoredPosition>> {
        let mut connection = self.pool.acquire().await?;
        store::stored_positions(&mut connection, &tables.position, &self.args.kafka.topic).await
    }

    /// Turns until `stop`, or until a position is found not to stand on the
    /// log.
    async fn turn_until_stopped(&self, stop: &CancellationToken) -> Result<(), LogMismatch> {
        let mut gaps = GapTracker::default();
        let mut read = Predecessors::default();
        let mut next_look = Instant::now() + LOOK_EVERY;
        let mut looks: u32 = 0;
        loop {
            if Instant::now() >= next_look {
                self.look_at_the_log(looks.is_multiple_of(CHECK_THE_LOG_EVERY_LOOKS))
                    .await;
                looks = looks.wrapping_add(1);
                next_look = Instant::now() + LOOK_EVERY;
            }
            self.resume_new_assignment().await?;
            let records = tokio::select! {
                () = stop.cancelled() => break,
                records = self.next_batch() => records,
            };
            if records.is_empty() {
                continue;
            }
            // From here the batch is applied even if a stop arrives.
            if !self.apply_batch(&records, &mut gaps, &read, stop).await? {
                break;
            }
            read.remember(&records);
        }
        Ok(())
    }

    /// Provisions the topic if it is missing (a failure is only logged: the
    /// subscription waits for the topic) and joins the consumer group.
    ///
    /// # Errors
    ///
    /// When the subscription is refused.
    async fn subscribe(&self) -> anyhow::Result<()> {
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
        tracing::info!(topic = %self.args.kafka.topic, group = %self.args.group_id(), projections = ?names, "projector running");
        Ok(())
    }

    /// Applies one batch to each projection in turn, then seeks back where a
    /// projection found a gap or has not seen the record its position
    /// stands on, and tells Kafka the slowest positions. Returns false when
    /// stopped while waiting out an outage: the rest of the batch is then
    /// left for the next run, and nothing is sought or committed.
    ///
    /// # Errors
    ///
    /// [`LogMismatch`], with nothing of the batch applied to that
    /// projection.
    async fn apply_batch(
        &self,
        records: &[LogRecord],
        gaps: &mut GapTracker,
        read: &Predecessors,
        stop: &CancellationToken,
    ) -> Result<bool, LogMismatch> {
        observe::batch_read(records.len());
        if !self.keys_ready_for(records, stop).await {
            return Ok(false);
        }
        // Decoded once for all projections (the keys stay as they are
        // until the next batch).
        let decoded = (self.projections.len() > 1).then(|| self.decoder.decode_all(records));
        let mut seek_to: HashMap<i32, i64> = HashMap::new();
        let mut slowest: HashMap<i32, i64> = HashMap::new();
        for target in &self.projections {
            let Some(report) = self
                .apply_to_projection(target, records, decoded.as_ref(), gaps, read, stop)
                .await?
            else {
                return Ok(false);
            };
            for gap in &report.gaps {
                keep_lowest(
                    &mut seek_to,
                    gap.partition,
                    identity::seek_target(gap.stored),
                );
            }
            for (partition, offset) in &report.unseen {
                keep_lowest(&mut seek_to, *partition, *offset);
            }
            for (partition, position) in &report.positions {
                keep_lowest(&mut slowest, *partition, *position);
            }
        }
        for (partition, offset) in seek_to {
            self.seek_back(partition, offset);
        }
        self.commit_advisory(&slowest);
        Ok(true)
    }

    /// Makes the key ring ready to decode `records`, retrying while the key
    /// topic cannot be read. False when stopped first.
    async fn keys_ready_for(&self, records: &[LogRecord], stop: &CancellationToken) -> bool {
        let mut backoff = Backoff::new();
        loop {
            match self.keys.ready_for(records).await {
                Ok(()) => return true,
                Err(error) => {
                    let wait = backoff.next();
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?wait, "the key topic could not be read; the batch waits");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Applies one batch to one projection, waiting out MySQL outages, and
    /// records what it did (metrics, gaps). `None` when stopped first.
    ///
    /// # Errors
    ///
    /// [`LogMismatch`]: a position does not stand on the log, or the
    /// record it stands on is still unseen after as many seeks to it as
    /// confirm a gap.
    async fn apply_to_projection(
        &self,
        (projection, tables): &(&'static dyn Projection, TableSet),
        records: &[LogRecord],
        decoded: Option<&DecodedBatch>,
        gaps: &mut GapTracker,
        read: &Predecessors,
        stop: &CancellationToken,
    ) -> Result<Option<BatchReport>, LogMismatch> {
        let projection = *projection;
        let accepted = gaps.accepted(projection.name());
        let job = BatchJob {
            projection,
            tables,
            topic: &self.args.kafka.topic,
            records,
            decoder: &self.decoder,
            decoded,
            accepted_gaps: &accepted,
            predecessors: read,
            mode: Mode::Project,
            locking: Locking::Take,
        };
        let started = Instant::now();
        let report = match apply::apply_until_done(&self.pool, &job, stop).await {
            Ok(report) => report,
            Err(Halt::Stopped) => return Ok(None),
            Err(Halt::LogMismatch(mismatch)) => return Err(mismatch),
        };
        observe::batch_applied(projection.name(), &report, started.elapsed());
        gaps.applied(projection.name(), &report);
        for gap in &report.gaps {
            gaps.observe(projection.name(), *gap);
        }
        for &(partition, offset) in &report.unseen {
            if gaps.unseen(projection.name(), partition, offset) {
                return Err(LogMismatch::never_seen(
                    projection.name(),
                    partition,
                    offset,
                ));
            }
        }
        tracing::debug!(
            projection = projection.name(),
            projected = report.projected,
            dead_lettered = report.dead_lettered,
            already_applied = report.already_applied,
            "batch committed"
        );
        Ok(Some(report))
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
                    let error = score_shared::privacy::scrubbed(&format!("{error:#}"));
                    tracing::warn!(error, retry_in = ?wait, "migrations not applied");
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
    /// idle or the group assigned partitions meanwhile, so that the loop can
    /// resume them at once.
    async fn next_batch(&self) -> Vec<LogRecord> {
        // The rebalance callback runs inside `recv`; its notification ends
        // the wait (the first read is cancellation safe).
        let first = tokio::select! {
            () = self.consumer.context().assignment_arrived.notified() => return Vec::new(),
            first = log_reader::first_record(&self.consumer, IDLE_WAIT) => first,
        };
        match first {
            Ok(Some(first)) => {
                log_reader::fill_batch(
                    &self.consumer,
                    first,
                    self.args.batch_size,
                    self.args.batch_wait(),
                )
                .await
            }
            Ok(None) => Vec::new(),
            Err(error) => {
                tracing::warn!(error = %error, "consumer error");
                tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                Vec::new()
            }
        }
    }

    /// When the group has assigned partitions since the last turn, resumes
    /// them from MySQL, and the projector is ready once that succeeded for
    /// the assignment it holds. A resume that failed is tried again on the
    /// next turn (after at most [`IDLE_WAIT`]), not ready meanwhile.
    ///
    /// # Errors
    ///
    /// [`LogMismatch`] when a stored position is beyond the end of the log.
    async fn resume_new_assignment(&self) -> Result<(), LogMismatch> {
        let context = self.consumer.context();
        if !context.resume_pending.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let rebalances = context.rebalances.load(Ordering::SeqCst);
        let Some(resumed) = self.resume_assigned_partitions().await? else {
            context.resume_pending.store(true, Ordering::SeqCst);
            return Ok(());
        };
        // The callback runs only inside `recv`, so no rebalance can come in
        // during the resume; if one ever did, it would decide readiness
        // itself (a revocation) or be resumed on the next turn.
        if context.rebalances.load(Ordering::SeqCst) == rebalances {
            self.readiness.set(Stage::Ready);
            tracing::info!(
                partitions = resumed.len(),
                "assigned partitions resumed; ready"
            );
        }
        Ok(())
    }

    /// Moves every assigned partition to just before the lowest stored
    /// position of the projections (so that the first batch shows the
    /// record that position stands on), so that a projection that is behind
    /// (or new, with no position at all: it starts at offset 0) catches up
    /// even when no new event arrives. Kafka's committed offset is only
    /// where the consumer starts before this. Returns the positions resumed
    /// from, or `None` when the assignment, the positions or the end of the
    /// log could not be read or a seek was not accepted.
    ///
    /// # Errors
    ///
    /// [`LogMismatch`] when a stored position is beyond the end of the log:
    /// reading from there would take every event below it as applied.
    async fn resume_assigned_partitions(&self) -> Result<Option<HashMap<i32, i64>>, LogMismatch> {
        let assigned = match self.consumer.assignment() {
            Ok(assignment) => partition_numbers(&assignment),
            Err(error) => {
                tracing::warn!(error = %error, "could not read the assignment");
                return Ok(None);
            }
        };
        let stored = match self.every_stored_position().await {
            Ok(stored) => stored,
            Err(error) => {
                // Batches still check positions; this is retried next turn.
                let error = score_shared::privacy::scrubbed(&error.to_string());
                tracing::warn!(error, "could not read positions to resume from");
                return Ok(None);
            }
        };
        if !self.within_the_log(&stored, &assigned).await? {
            return Ok(None);
        }
        let lowest = lowest_positions(&stored, &assigned);
        let mut all_accepted = true;
        for (&partition, &offset) in &lowest {
            let offset = identity::seek_target(offset);
            if let Err(error) = self.seek(partition, offset) {
                // Right after an assignment librdkafka may not accept a seek
                // yet; the loop tries again on its next turn.
                tracing::debug!(partition, offset, error = %error, "resume seek not accepted yet");
                all_accepted = false;
            }
        }
        Ok(all_accepted.then_some(lowest))
    }

    /// Every projection's stored positions, read once for a resume.
    async fn every_stored_position(
        &self,
    ) -> sqlx::Result<Vec<(&'static str, BTreeMap<i32, StoredPosition>)>> {
        let mut stored = Vec::with_capacity(self.projections.len());
        for (projection, tables) in &self.projections {
            stored.push((projection.name(), self.stored_positions(tables).await?));
        }
        Ok(stored)
    }

    /// Reads the log's end and every projection's status once and sets the
    /// lag and freshness metrics from them; when `check_the_log`, also reads
    /// the record under every stored position and sets
    /// `projector_log_mismatch`. A look that cannot be taken (MySQL away)
    /// is skipped; with the broker away only the metrics without lag are
    /// set.
    async fn look_at_the_log(&self, check_the_log: bool) {
        let metadata = self.metadata.clone();
        let marks =
            tokio::task::spawn_blocking(move || metadata.watermarks(Duration::from_secs(2))).await;
        let marks = match marks {
            Ok(Ok(marks)) => marks,
            _ => BTreeMap::new(),
        };
        let Ok(mut rows) = status::status_with(&self.pool, &self.args.kafka.topic, &marks).await
        else {
            return;
        };
        if check_the_log && !marks.is_empty() {
            let checked = status::check_positions(&self.pool, &self.args.kafka, &mut rows).await;
            if let Err(error) = checked {
                let error = score_shared::privacy::scrubbed(&format!("{error:#}"));
                tracing::warn!(error, "could not check the positions against the log");
            }
        }
        observe::record_status(&rows);
        if let Ok(erasures) = status::erasures(&self.pool).await {
            observe::record_erasures(&erasures);
        }
    }

    /// Whether every projection's stored position in `partitions` is
    /// within the log's end; `false` when the end could not be read (the
    /// resume is tried again).
    ///
    /// # Errors
    ///
    /// [`LogMismatch`] for a position beyond the end: the log was reset or
    /// replaced under the tables.
    async fn within_the_log(
        &self,
        stored: &[(&'static str, BTreeMap<i32, StoredPosition>)],
        partitions: &[i32],
    ) -> Result<bool, LogMismatch> {
        if partitions.is_empty() {
            return Ok(true);
        }
        let metadata = self.metadata.clone();
        let marks =
            tokio::task::spawn_blocking(move || metadata.watermarks(Duration::from_secs(5))).await;
        let Ok(Ok(marks)) = marks else {
            tracing::warn!("could not read the end of the log to resume; retrying");
            return Ok(false);
        };
        for (projection, positions) in stored {
            for partition in partitions {
                let (Some(position), Some((_, end))) =
                    (positions.get(partition), marks.get(partition))
                else {
                    continue;
                };
                if let Some(found) = identity::beyond_the_end(position.next_offset, *end) {
                    return Err(LogMismatch {
                        projection,
                        partition: *partition,
                        next_offset: position.next_offset,
                        found,
                    });
                }
            }
        }
        Ok(true)
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

/// The lowest stored position of the projections in each of `partitions`;
/// 0 where a projection has none yet.
fn lowest_positions(
    stored: &[(&'static str, BTreeMap<i32, StoredPosition>)],
    partitions: &[i32],
) -> HashMap<i32, i64> {
    let mut lowest: HashMap<i32, i64> = HashMap::new();
    for (_, positions) in stored {
        for partition in partitions {
            let offset = positions.get(partition).map_or(0, |p| p.next_offset);
            keep_lowest(&mut lowest, *partition, offset);
        }
    }
    lowest
}

fn keep_lowest(map: &mut HashMap<i32, i64>, partition: i32, offset: i64) {
    map.entry(partition)
        .and_modify(|lowest| *lowest = (*lowest).min(offset))
        .or_insert(offset);
}

/// Logs partition assignments and revocations, flags new assignments for
/// the loop, which resumes them from MySQL, and moves the readiness back
/// until it has. Correctness does not depend on it: every batch checks the
/// stored positions.
pub struct ProjectorContext {
    /// An assignment the loop has not resumed yet.
    resume_pending: AtomicBool,
    /// Wakes the loop when an assignment arrives while it waits for records.
    assignment_arrived: Notify,
    /// Assignments and revocations seen so far.
    rebalances: AtomicU64,
    /// The runner's readiness: an assignment makes it `Resuming`, a
    /// revocation `AwaitingAssignment`.
    readiness: Readiness,
}

impl ProjectorContext {
    fn new(readiness: Readiness) -> Self {
        Self {
            resume_pending: AtomicBool::new(false),
            assignment_arrived: Notify::new(),
            rebalances: AtomicU64::new(0),
            readiness,
        }
    }
}

impl ClientContext for ProjectorContext {}

impl ConsumerContext for ProjectorContext {
    /// Runs after librdkafka applied the (incremental, with
    /// `group.protocol=consumer`) assignment or revocation. An assignment
    /// arrives after every revocation, empty if nothing is left to this
    /// instance; with the classic protocol also when the group gives this
    /// instance no partitions at all.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions assigned");
                self.readiness.set(Stage::Resuming);
                self.resume_pending.store(true, Ordering::SeqCst);
                self.assignment_arrived.notify_one();
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions revoked");
                self.readiness.set(Stage::AwaitingAssignment);
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    /// `projector run` settings with `options` passed through to librdkafka
    /// and a free metrics port; nothing connects.
    fn run_args(options: &[&str]) -> RunArgs {
        let mut command = vec![
            "projector",
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--account-pepper",
            "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBA=",
        ];
        for option in options {
            command.extend(["--kafka-option", option]);
        }
        match Cli::try_parse_from(command)
            .expect("valid settings")
            .command
        {
            Command::Run(args) => args,
            other => panic!("not a run command: {other:?}"),
        }
    }

    #[test]
    fn each_projection_set_has_a_group_of_its_own() {
        let group = |projections: &str| {
            let mut args = run_args(&[]);
            args.projections = projections.split(',').map(str::to_owned).collect();
            args.group_id()
        };
        assert_eq!(
            run_args(&[]).group_id(),
            "scores-projector.account_summary+grade"
        );
        assert_eq!(
            group("grade,account_summary"),
            group("account_summary, grade")
        );
        assert_eq!(group("grade,grade"), "scores-projector.grade");
        assert_ne!(group("grade"), group("account_summary"));
        assert_ne!(group("grade"), group("grade,account_summary"));
    }

    #[tokio::test]
    async fn the_consumer_is_created_under_either_group_protocol() {
        for options in [
            &[][..],
            &["group.protocol=classic"],
            &["group.protocol=consumer"],
            &["group.protocol=CONSUMER"],
            &["group.protocol=consumer", "group.remote.assignor=uniform"],
            &["session.timeout.ms=30000", "heartbeat.interval.ms=5000"],
        ] {
            let built = Projector::build(run_args(options));
            assert!(built.is_ok(), "{options:?}: {:#}", built.err().unwrap());
        }
    }

    #[tokio::test]
    async fn librdkafka_refuses_client_side_session_settings_under_the_consumer_protocol() {
        // Why consumer_config leaves them out then: even librdkafka's own
        // default value, set explicitly, is refused.
        for setting in [
            "session.timeout.ms=45000",
            "heartbeat.interval.ms=3000",
            "partition.assignment.strategy=range",
        ] {
            let refused = Projector::build(run_args(&["group.protocol=consumer", setting]));
            let error = format!("{:#}", refused.err().expect(setting));
            assert!(
                error.contains("not supported for `group.protocol=consumer`"),
                "{setting}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn an_assignment_makes_the_loop_resume_and_a_revocation_takes_readiness_away() {
        let readiness = Readiness::default();
        let args = run_args(&[]);
        let consumer: BaseConsumer<ProjectorContext> =
            score_shared::kafka::consumer_config(&args.kafka, &args.consumer_group)
                .create_with_context(ProjectorContext::new(readiness.clone()))
                .expect("a consumer");
        let context = consumer.context();
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&args.kafka.topic, 0);

        context.post_rebalance(&consumer, &Rebalance::Assign(&partitions));
        assert_eq!(readiness.stage(), Stage::Resuming);
        assert!(context.resume_pending.load(Ordering::SeqCst));
        tokio::time::timeout(
            Duration::from_secs(1),
            context.assignment_arrived.notified(),
        )
        .await
        .expect("the waiting loop is woken");

        readiness.set(Stage::Ready);
        context.post_rebalance(&consumer, &Rebalance::Revoke(&partitions));
        assert_eq!(readiness.stage(), Stage::AwaitingAssignment);

        // The assignment after a revocation may be empty: still one to resume.
        context.resume_pending.store(false, Ordering::SeqCst);
        context.post_rebalance(&consumer, &Rebalance::Assign(&TopicPartitionList::new()));
        assert_eq!(readiness.stage(), Stage::Resuming);
        assert!(context.resume_pending.load(Ordering::SeqCst));
        assert_eq!(context.rebalances.load(Ordering::SeqCst), 3);
    }
}
