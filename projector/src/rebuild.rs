//! `projector rebuild <projection>`: blue/green rebuild from the log.
//!
//! 1. Take the projection's rebuild lock (one rebuild at a time), drop any
//!    shadow tables a killed rebuild left, and create fresh ones with
//!    `CREATE TABLE … LIKE` the live ones (data, positions, dead letters).
//! 2. Read the topic from the beginning (partitions assigned directly, no
//!    consumer group) and apply it to the shadow tables with the same engine
//!    as the live projector, until the shadow positions reach the high
//!    watermarks. The live projector keeps running meanwhile.
//! 3. Take the projection's named lock, which the live projector takes
//!    around each batch, so it pauses between batches; read the watermarks
//!    again and apply the last tail to the shadow.
//! 4. Swap with one `RENAME TABLE` of every table of the set, positions and
//!    dead letters included, and release the lock. The live projector
//!    continues from the swapped-in positions: records below them are
//!    skipped as already applied, so there is no gap and no duplicate.
//! 5. Drop the replaced tables, or keep them as `<table>__old`. Kept tables
//!    are never dropped silently: the next rebuild refuses to start while
//!    they exist, unless told `--drop-kept`.
//!
//! **Killing a rebuild at any point leaves the live tables untouched**: all
//! writes before the swap go to shadow tables, and the swap is one atomic
//! statement. A rerun starts over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::{Executor, MySqlPool};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, BatchJob, Halt, Locking, Mode, NamedLock};
use crate::batch::{Decoder, LogRecord};
use crate::config::RebuildArgs;
use crate::db;
use crate::gaps::GapTracker;
use crate::identity::{self, LogMismatch, Predecessors};
use crate::keys::KeyRing;
use crate::log_reader::{LogReader, Start};
use crate::projection::{self, Projection, TableSet};
use crate::store;

/// How long the final phase waits for the live projector to finish its
/// batch and let go of the projection's lock.
const SWAP_LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long the swap waits for readers' metadata locks before giving up
/// (MySQL's default is a year).
const SWAP_METADATA_WAIT_SECONDS: u32 = 30;
/// How long a read waits for more records once the shadow has caught up.
const IDLE_READ: Duration = Duration::from_millis(200);

/// What a finished rebuild did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RebuildSummary {
    pub projection: &'static str,
    /// Records read from the log and applied to the shadow.
    pub events: u64,
    pub projected: u64,
    pub dead_lettered: u64,
    /// Stored positions swapped in, by partition.
    pub positions: BTreeMap<i32, i64>,
    pub seconds: f64,
    /// The replaced tables, when kept with `--keep-old`.
    pub kept_old_tables: Vec<String>,
}

impl std::fmt::Display for RebuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        };
        writeln!(
            f,
            "rebuilt {} from the log and swapped it in",
            self.projection
        )?;
        writeln!(
            f,
            "  {} events in {:.1} s ({rate:.0} events/s): {} projected, {} dead letters",
            self.events, self.seconds, self.projected, self.dead_lettered
        )?;
        let positions: Vec<String> = self
            .positions
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        writeln!(
            f,
            "  positions (partition:next offset): {}",
            positions.join(" ")
        )?;
        if self.kept_old_tables.is_empty() {
            write!(f, "  replaced tables dropped")
        } else {
            write!(
                f,
                "  replaced tables kept: {}",
                self.kept_old_tables.join(", ")
            )
        }
    }
}

/// Rebuilds the projection named in `args`. `stop` aborts it cleanly (the
/// live tables are untouched until the swap).
///
/// # Errors
///
/// An unknown projection, another rebuild of it running, an unreachable
/// broker or MySQL, or a swap that could not get its locks.
pub async fn rebuild(
    args: &RebuildArgs,
    stop: &CancellationToken,
) -> anyhow::Result<RebuildSummary> {
    let projection = projection::lookup(&args.projection)?;
    let keys = args.decoder.key_ring(&args.kafka)?;
    let decoder = args.decoder.decoder(keys.keys())?;
    let pool = db::pool(&args.database)?;
    db::migrate(&args.database, &pool).await?;
    let started = Instant::now();

    let rebuild_lock = NamedLock::acquire(
        pool.acquire().await?,
        format!("rebuild.{}", projection.name()),
        Duration::ZERO,
    )
    .await?
    .with_context(|| format!("another rebuild of {} is running", projection.name()))?;

    let live = TableSet::live(projection);
    let shadow = TableSet::shadow(projection);
    let old = TableSet::old(projection);
    let kept = existing_tables(&pool, &old).await?;
    if !kept.is_empty() {
        if !args.drop_kept {
            bail!(
                "an earlier rebuild kept the tables {} (--keep-old); this rebuild would replace \
                 them. Look at them, then drop them yourself or rerun with --drop-kept",
                kept.join(", ")
            );
        }
        tracing::warn!(
            tables = kept.join(", "),
            "dropping the tables an earlier rebuild kept (--drop-kept)"
        );
    }
    create_shadow(&pool, &live, &shadow).await?;

    keys.catch_up().await?;
    let mut rebuild = Rebuild::start(args, projection, &pool, &decoder, &keys, &shadow).await?;
    tracing::info!(
        projection = projection.name(),
        "building shadow tables from the start of the log"
    );
    let targets = rebuild.reader.ends().clone();
    rebuild.catch_up(targets, stop).await?;

    // The live projector pauses between batches while this lock is held.
    let mut swap_lock = NamedLock::acquire(
        pool.acquire().await?,
        projection::lock_name(projection),
        SWAP_LOCK_WAIT,
    )
    .await?
    .with_context(|| {
        format!(
            "the live projector held the lock of {} for over {SWAP_LOCK_WAIT:?}",
            projection.name()
        )
    })?;
    let targets = rebuild.reader.look_at_the_end().await?.clone();
    rebuild.catch_up(targets, stop).await?;
    let positions = rebuild.shadow_positions().await?;
    rebuild.progress.finish_and_clear();

    swap(swap_lock.connection(), &live, &shadow, &old).await?;
    swap_lock.release().await;
    tracing::info!(
        projection = projection.name(),
        "swapped the rebuilt tables in"
    );

    let kept_old_tables = if args.keep_old {
        old.all().into_iter().map(str::to_owned).collect()
    } else {
        drop_tables(&mut *pool.acquire().await?, &old).await?;
        Vec::new()
    };
    rebuild_lock.release().await;
    Ok(RebuildSummary {
        projection: projection.name(),
        events: rebuild.events,
        projected: rebuild.projected,
        dead_lettered: rebuild.dead_lettered,
        positions,
        seconds: started.elapsed().as_secs_f64(),
        kept_old_tables,
    })
}

/// Which tables of `tables` exist in the database.
async fn existing_tables(pool: &MySqlPool, tables: &TableSet) -> anyhow::Result<Vec<String>> {
    let mut existing = Vec::new();
    for table in tables.all() {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(table)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("looking for {table}"))?;
        existing.extend(found);
    }
    Ok(existing)
}

/// Fresh, empty shadow tables shaped like the live ones.
async fn create_shadow(pool: &MySqlPool, live: &TableSet, shadow: &TableSet) -> anyhow::Result<()> {
    drop_tables(&mut *pool.acquire().await?, shadow).await?;
    for (live_table, shadow_table) in live.all().into_iter().zip(shadow.all()) {
        // Table names come from the projection registry, never from input.
        let statement = format!("CREATE TABLE `{shadow_table}` LIKE `{live_table}`");
        pool.execute(sqlx::AssertSqlSafe(statement))
            .await
            .with_context(|| format!("creating {shadow_table}"))?;
    }
    Ok(())
}

async fn drop_tables(
    connection: &mut sqlx::MySqlConnection,
    tables: &TableSet,
) -> anyhow::Result<()> {
    for table in tables.all() {
        let statement = format!("DROP TABLE IF EXISTS `{table}`");
        connection
            .execute(sqlx::AssertSqlSafe(statement))
            .await
            .with_context(|| format!("dropping {table}"))?;
    }
    Ok(())
}

/// One `RENAME TABLE` statement: live → old and shadow → live for every
/// table of the set, atomically.
async fn swap(
    connection: &mut sqlx::MySqlConnection,
    live: &TableSet,
    shadow: &TableSet,
    old: &TableSet,
) -> anyhow::Result<()> {
    drop_tables(&mut *connection, old).await?;
    let renames: Vec<String> = live
        .all()
        .into_iter()
        .zip(shadow.all())
        .zip(old.all())
        .flat_map(|((live, shadow), old)| {
            [
                format!("`{live}` TO `{old}`"),
                format!("`{shadow}` TO `{live}`"),
            ]
        })
        .collect();
    let statement = format!("RENAME TABLE {}", renames.join(", "));
    connection
        .execute(sqlx::AssertSqlSafe(format!(
            "SET SESSION lock_wait_timeout = {SWAP_METADATA_WAIT_SECONDS}"
        )))
        .await?;
    connection
        .execute(sqlx::AssertSqlSafe(statement))
        .await
        .context("swapping the rebuilt tables in (RENAME TABLE)")?;
    Ok(())
}

/// The shadow build in progress.
struct Rebuild<'a> {
    args: &'a RebuildArgs,
    projection: &'static dyn Projection,
    pool: &'a MySqlPool,
    decoder: &'a Decoder,
    keys: &'a KeyRing,
    shadow: &'a TableSet,
    reader: LogReader,
    progress: ProgressBar,
    last_report: Instant,
    rate_started: Instant,
    events: u64,
    projected: u64,
    dead_lettered: u64,
    /// Gaps in the log, crossed once confirmed, as the live loop does.
    gaps: GapTracker,
    /// The last record read in each partition.
    read: Predecessors,
}

impl<'a> Rebuild<'a> {
    async fn start(
        args: &'a RebuildArgs,
        projection: &'static dyn Projection,
        pool: &'a MySqlPool,
        decoder: &'a Decoder,
        keys: &'a KeyRing,
        shadow: &'a TableSet,
    ) -> anyhow::Result<Self> {
        // Partitions are assigned directly: a rebuild is no member of the
        // live projector's group and commits no offsets.
        let reader = LogReader::open(
            &args.kafka,
            &format!("rebuild-{}", projection.name()),
            Start::Beginning,
        )
        .await?;
        let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        progress.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        progress.set_message(format!("rebuilding {}", projection.name()));
        progress.set_length(reader.ends().values().sum::<i64>().max(0) as u64);
        Ok(Self {
            args,
            projection,
            pool,
            decoder,
            keys,
            shadow,
            reader,
            progress,
            last_report: Instant::now(),
            rate_started: Instant::now(),
            events: 0,
            projected: 0,
            dead_lettered: 0,
            gaps: GapTracker::default(),
            read: Predecessors::default(),
        })
    }

    /// Stored shadow positions by partition.
    async fn shadow_positions(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut connection = self.pool.acquire().await?;
        let positions = store::positions(
            &mut connection,
            &self.shadow.position,
            &self.args.kafka.topic,
        )
        .await?;
        Ok(positions
            .into_iter()
            .map(|p| (p.kafka_partition, p.next_offset))
            .collect())
    }

    /// Reads and applies until every shadow position has reached `targets`.
    async fn catch_up(
        &mut self,
        targets: BTreeMap<i32, i64>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let positions = self.shadow_positions().await?;
            let done: i64 = positions.values().sum();
            self.progress.set_position(done.max(0) as u64);
            if targets
                .iter()
                .all(|(p, target)| positions.get(p).copied().unwrap_or(0) >= *target)
            {
                return Ok(());
            }
            if stop.is_cancelled() {
                bail!("rebuild stopped before it finished; the live tables are untouched");
            }
            self.report_progress(done, targets.values().sum());
            let records = self.read_batch().await;
            if records.is_empty() {
                continue;
            }
            self.keys.ready_for(&records).await?;
            let accepted = self.gaps.accepted(self.projection.name());
            let job = BatchJob {
                projection: self.projection,
                tables: self.shadow,
                topic: &self.args.kafka.topic,
                records: &records,
                decoder: self.decoder,
                decoded: None,
                accepted_gaps: &accepted,
                predecessors: &self.read,
                mode: Mode::Project,
                locking: Locking::Skip,
            };
            let report = match apply::apply_until_done(self.pool, &job, stop).await {
                Ok(report) => report,
                Err(Halt::Stopped) => {
                    bail!("rebuild stopped before it finished; the live tables are untouched")
                }
                Err(Halt::LogMismatch(mismatch)) => return Err(mismatch.into()),
            };
            self.read.remember(&records);
            self.gaps.applied(self.projection.name(), &report);
            for gap in &report.gaps {
                self.gaps.observe(self.projection.name(), *gap);
                self.reader
                    .seek(gap.partition, identity::seek_target(gap.stored))
                    .context("seeking back to the shadow position")?;
            }
            for &(partition, offset) in &report.unseen {
                if self.gaps.unseen(self.projection.name(), partition, offset) {
                    return Err(
                        LogMismatch::never_seen(self.projection.name(), partition, offset).into(),
                    );
                }
                self.reader
                    .seek(partition, offset)
                    .context("seeking back to the record under the shadow position")?;
            }
            self.events += records.len() as u64;
            self.projected += report.projected as u64;
            self.dead_lettered += report.dead_lettered as u64;
        }
    }

    /// Up to a batch of records, waiting at most [`IDLE_READ`] for the
    /// first and as long again for the rest.
    async fn read_batch(&mut self) -> Vec<LogRecord> {
        let batch_size = self.args.batch_size;
        self.reader
            .next_batch(batch_size, IDLE_READ, IDLE_READ)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error, "consumer error during rebuild");
                Vec::new()
            })
    }

    /// A log line every few seconds, for when stderr is not a terminal and
    /// the progress bar is hidden.
    fn report_progress(&mut self, done: i64, total: i64) {
        if self.last_report.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_report = Instant::now();
        let rate = self.events as f64 / self.rate_started.elapsed().as_secs_f64().max(0.001);
        let remaining = (total - done).max(0) as f64;
        tracing::info!(
            projection = self.projection.name(),
            done,
            total,
            events_per_second = rate.round(),
            eta_seconds = (remaining / rate.max(1.0)).round(),
            "rebuild progress"
        );
    }
}
