//! The projector's command line: subcommands and settings, each setting
//! backed by a `SCORES_*` environment variable.

use std::time::Duration;

use score_shared::config::{KafkaArgs, LogArgs, ValidationArgs};
use score_shared::personal::PersonalDataArgs;

/// Every projection, the default wherever a command takes a set of them.
const DEFAULT_PROJECTIONS: &str = "grade,account_summary";

/// Materializes MySQL tables from the score event log, exactly once.
#[derive(clap::Parser, Debug)]
#[command(name = "projector", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
// Parsed once at start; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create the database if it is missing and apply the migrations.
    Migrate(MigrateArgs),
    /// Migrate, then project the log into MySQL until stopped (Ctrl-C or SIGTERM).
    Run(RunArgs),
    /// Rebuild a projection from the start of the log into shadow tables and
    /// swap them in atomically, while the live projector keeps running.
    Rebuild(RebuildArgs),
    /// Show each projection's position, lag and dead letters per partition.
    Status(StatusArgs),
    /// List or re-apply events a projection could not apply.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Append one ScoreSubmitted event per row of the original service's
    /// table (acc_nbr, grade1..3, txt1..3, insert_time, with or without id)
    /// to the log, keeping insert_time. Event ids are derived from the rows,
    /// so a re-run appends only rows not imported before. Rows that break a
    /// rule are listed in the report file, not appended.
    ImportLegacy(ImportLegacyArgs),
    /// Forget people: tombstone the data keys of each account number in the
    /// key topic, append an AccountForgotten event (no number in it), and
    /// wait until every projection has removed the number and its comments
    /// (grades are kept under a placeholder). Safe to re-run.
    Forget(ForgetArgs),
    /// Move a log to the sealed event format: copy every event of the
    /// source topic (SCORES_TOPIC) into a new, empty topic, ratings in clear
    /// sealed under their account's data key and keyed by its reference,
    /// same event ids; then read the new topic back and verify the counts.
    /// Point the ingest API and the projector at the new topic and rebuild
    /// each projection from it (README, "Personal data").
    MigrateLog(MigrateLogArgs),
}

/// Settings of `projector migrate-log`.
#[derive(clap::Args, Clone, Debug)]
pub struct MigrateLogArgs {
    /// The new topic (created with the source topic's settings; must be
    /// empty).
    #[arg(long)]
    pub to_topic: String,

    /// Where records that are no event are listed (JSON Lines: partition,
    /// offset, reason); they are not migrated.
    #[arg(long, default_value = "migrate-log-left-behind.jsonl")]
    pub report: std::path::PathBuf,

    /// Records appended per chunk (the chunk's new keys are acknowledged
    /// before its events are sent).
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: usize,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub personal: PersonalDataArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Settings of `projector forget`.
#[derive(clap::Args, Clone, Debug)]
pub struct ForgetArgs {
    /// Account numbers (phone numbers) to forget.
    pub accounts: Vec<String>,

    /// A file of account numbers to forget, one per line (blank lines and
    /// lines starting with `#` are skipped).
    #[arg(long)]
    pub from_file: Option<std::path::PathBuf>,

    /// Why (a ticket number, not the person's details); kept in the log and
    /// in each projection's erasure table.
    #[arg(long)]
    pub reason: String,

    /// Projections to wait for.
    #[arg(
        long,
        env = "SCORES_PROJECTIONS",
        value_delimiter = ',',
        default_value = DEFAULT_PROJECTIONS
    )]
    pub projections: Vec<String>,

    /// Return once the log has forgotten, without waiting for the tables.
    #[arg(long)]
    pub no_wait: bool,

    /// Longest wait, in seconds, for each projection to apply an erasure.
    #[arg(long, default_value_t = 300)]
    pub wait_seconds: u64,

    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub personal: PersonalDataArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// How events are read: the validation rules, the accepted versions, and
/// the pepper and key topic sealed events need.
#[derive(clap::Args, Clone, Debug)]
pub struct DecoderArgs {
    #[command(flatten)]
    pub validation: ValidationArgs,

    /// `ScoreSubmitted` versions to accept, comma separated; an event of
    /// another version goes to the dead letters (hold a version back while
    /// rolling out, then `dead-letters retry`).
    #[arg(
        long,
        env = "SCORES_EVENT_VERSIONS",
        value_delimiter = ',',
        default_value = "1,2,3"
    )]
    pub event_versions: Vec<u32>,

    #[command(flatten)]
    pub personal: PersonalDataArgs,
}

impl Default for DecoderArgs {
    fn default() -> Self {
        Self {
            validation: ValidationArgs::default(),
            event_versions: score_shared::event::SCORE_SUBMITTED_VERSIONS.to_vec(),
            personal: PersonalDataArgs::default(),
        }
    }
}

impl DecoderArgs {
    /// The key ring for the key topic next to `kafka`'s event topic.
    ///
    /// # Errors
    ///
    /// No pepper configured.
    pub fn key_ring(&self, kafka: &KafkaArgs) -> anyhow::Result<crate::keys::KeyRing> {
        crate::keys::KeyRing::new(kafka, &self.personal)
    }

    /// The decoder these settings describe, opening sealed events with
    /// `keys`.
    ///
    /// # Errors
    ///
    /// Invalid validation settings.
    pub fn decoder(
        &self,
        keys: std::sync::Arc<crate::keys::Keys>,
    ) -> anyhow::Result<crate::batch::Decoder> {
        use anyhow::Context;
        Ok(crate::batch::Decoder {
            rules: self
                .validation
                .rules()
                .context("invalid validation settings")?,
            accepted_versions: self.event_versions.clone(),
            keys,
        })
    }
}

/// Settings of `projector rebuild`.
#[derive(clap::Args, Clone, Debug)]
pub struct RebuildArgs {
    /// The projection to rebuild (grade, account_summary).
    pub projection: String,

    /// Keep the replaced tables as `<table>__old` instead of dropping them.
    #[arg(long)]
    pub keep_old: bool,

    /// Drop `<table>__old` tables an earlier `--keep-old` rebuild kept.
    /// Without it, a rebuild refuses to start while they exist.
    #[arg(long)]
    pub drop_kept: bool,

    /// Most events applied in one MySQL transaction.
    #[arg(long, env = "SCORES_REBUILD_BATCH_SIZE", default_value_t = 2000)]
    pub batch_size: usize,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub decoder: DecoderArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Settings of `projector import-legacy`.
#[derive(clap::Args, Clone, Debug)]
pub struct ImportLegacyArgs {
    /// MySQL URL of the database holding the original table (read only is
    /// enough).
    #[arg(
        long = "database-url",
        env = "SCORES_LEGACY_DATABASE_URL",
        hide_env_values = true
    )]
    pub legacy_database_url: String,

    /// The table in the original schema.
    #[arg(long, default_value = "grade", value_parser = parse_identifier)]
    pub table: String,

    /// Name of this source in the event ids (default: the table's name).
    /// Two tables with overlapping ids need different names; a re-run of
    /// the same import must use the same one.
    #[arg(long, value_parser = parse_identifier)]
    pub source_name: Option<String>,

    /// The UTC offset insert_time was written in (`+08:00` if the original
    /// server's now() ran on China time); events store UTC.
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true, value_parser = parse_offset)]
    pub insert_time_offset: chrono::FixedOffset,

    /// Where the rows that break a rule are listed (JSON Lines: row id or
    /// position, masked account, each field's error).
    #[arg(long, default_value = "import-legacy-rejected.jsonl")]
    pub report: std::path::PathBuf,

    /// Most appends awaiting the broker's acknowledgment at once.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    #[command(flatten)]
    pub personal: PersonalDataArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// A MySQL identifier we are willing to put in SQL: letters, digits and
/// underscores.
fn parse_identifier(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected 1 to 64 letters, digits or underscores, got {text:?}"
        ))
    }
}

/// `+08:00`, `-05:30`, `+00:00`.
fn parse_offset(text: &str) -> Result<chrono::FixedOffset, String> {
    text.parse::<chrono::FixedOffset>()
        .map_err(|_| format!("expected a UTC offset such as +08:00, got {text:?}"))
}

/// Settings of `projector status`.
#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// `projector dead-letters …`.
#[derive(clap::Subcommand, Debug)]
// Parsed once at start; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DeadLettersCommand {
    /// List dead letters (unresolved ones unless --all).
    List(DeadLettersListArgs),
    /// Re-apply dead letters with the current code and settings, exactly
    /// once, and mark the ones that apply as resolved.
    Retry(DeadLettersRetryArgs),
}

/// Settings of `projector dead-letters list`.
#[derive(clap::Args, Clone, Debug)]
pub struct DeadLettersListArgs {
    /// Only this projection's dead letters.
    #[arg(long)]
    pub projection: Option<String>,

    /// Include resolved dead letters.
    #[arg(long)]
    pub all: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Settings of `projector dead-letters retry`.
#[derive(clap::Args, Clone, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
pub struct DeadLettersRetryArgs {
    /// The projection whose dead letters to retry.
    #[arg(long)]
    pub projection: String,

    /// Dead letter ids to retry (repeatable).
    #[arg(long)]
    pub id: Vec<u64>,

    /// Retry every unresolved dead letter of the projection.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Where the log and its key topic are (sealed events are opened with
    /// their keys).
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub decoder: DecoderArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Where MySQL is.
#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// MySQL (MariaDB) URL, database included.
    #[arg(
        long,
        env = "SCORES_DATABASE_URL",
        // The URL holds the account's password: --help never prints it.
        hide_env_values = true,
        default_value = "mysql://root@127.0.0.1:3306/scores"
    )]
    pub database_url: String,

    /// Connections in the projector's pool.
    #[arg(long, env = "SCORES_DATABASE_MAX_CONNECTIONS", default_value_t = 4)]
    pub database_max_connections: u32,
}

/// Settings of `projector migrate`.
#[derive(clap::Args, Clone, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Settings of `projector run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Prefix of the Kafka consumer group. The group is this prefix and
    /// the projection set (`scores-projector.account_summary+grade`):
    /// instances running the same projections share the partitions
    /// (dynamic members: a crashed instance's partitions move to the others
    /// once its session times out, 10 s on the classic protocol), and an
    /// instance run for another set is in a group of its own, so it never
    /// takes partitions from the projections it does not run.
    #[arg(
        long,
        env = "SCORES_CONSUMER_GROUP",
        default_value = "scores-projector"
    )]
    pub consumer_group: String,

    /// Most events applied in one MySQL transaction.
    #[arg(long, env = "SCORES_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// Longest wait, in milliseconds, for a batch to fill once its first
    /// event has arrived.
    #[arg(long, env = "SCORES_BATCH_WAIT_MS", default_value_t = 50)]
    pub batch_wait_ms: u64,

    /// Where `GET /metrics` (Prometheus), `GET /healthz` (the process lives)
    /// and `GET /readyz` (200 once every partition the group assigned is
    /// resumed from MySQL, 503 before and during a rebalance) are served
    /// (port 0 picks a free port).
    #[arg(long, env = "SCORES_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,

    /// Projections to maintain, comma separated. A projection run for the
    /// first time builds itself from the start of the log.
    #[arg(
        long,
        env = "SCORES_PROJECTIONS",
        value_delimiter = ',',
        default_value = DEFAULT_PROJECTIONS
    )]
    pub projections: Vec<String>,

    #[command(flatten)]
    pub decoder: DecoderArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl RunArgs {
    /// The consumer group's id: the configured prefix and the projection
    /// set, sorted, so that the order they are listed in does not matter.
    pub fn group_id(&self) -> String {
        let mut projections: Vec<&str> = self.projections.iter().map(|p| p.trim()).collect();
        projections.sort_unstable();
        projections.dedup();
        format!("{}.{}", self.consumer_group, projections.join("+"))
    }

    /// The batch wait as a duration.
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
}
