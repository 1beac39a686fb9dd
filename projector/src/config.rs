//! The projector's command line: subcommands and settings, each setting
//! backed by a `SCORES_*` environment variable.

use std::time::Duration;

use score_shared::config::{KafkaArgs, LogArgs, ValidationArgs};

/// Materializes MySQL tables from the score event log, exactly once.
#[derive(clap::Parser, Debug)]
#[command(name = "projector", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create the database if it is missing and apply the migrations.
    Migrate(MigrateArgs),
    /// Migrate, then project the log into MySQL until stopped (Ctrl-C or SIGTERM).
    Run(RunArgs),
}

/// Where MySQL is.
#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// MySQL (MariaDB) URL, database included.
    #[arg(
        long,
        env = "SCORES_DATABASE_URL",
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

    /// Kafka consumer group; instances in one group share the partitions.
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

    #[command(flatten)]
    pub validation: ValidationArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl RunArgs {
    /// The batch wait as a duration.
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
}
