//! The ingest API's settings: flags, each backed by a `SCORES_*` variable.

use std::net::SocketAddr;
use std::time::Duration;

use score_shared::config::{KafkaArgs, LogArgs, ValidationArgs};

/// Validates score submissions and appends them to the event log.
///
/// Every setting can be given as a flag or through the environment variable
/// shown; the defaults work with `./deploy/local up`.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "ingest-api", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SCORES_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// How long a submission waits for the broker's acknowledgment before
    /// it is answered with 503, in milliseconds.
    #[arg(long, env = "SCORES_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SCORES_BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: u64,

    /// How long a shutdown waits for in-flight sends to be flushed, in
    /// milliseconds.
    #[arg(long, env = "SCORES_SHUTDOWN_FLUSH_MS", default_value_t = 10_000)]
    pub shutdown_flush_ms: u64,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// The publish timeout as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
