//! The ingest API's settings: flags, each backed by a `SCORES_*` variable.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
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
    /// it is answered with 503, in milliseconds (longer than a cluster's
    /// failover).
    #[arg(
        long,
        env = "SCORES_PUBLISH_TIMEOUT_MS",
        default_value_t = score_shared::kafka::DEFAULT_PUBLISH_TIMEOUT.as_millis() as u64
    )]
    pub publish_timeout_ms: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SCORES_BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: u64,

    /// Most client connections open at once. A connection beyond it is
    /// answered a canned 503 and closed before any HTTP work is done for
    /// it. The default is four times the submissions' in-flight budget (room
    /// for kept-alive and reading connections) and matches nginx's total
    /// `limit_conn`; with the per-connection buffer capped at 64 KiB it bounds
    /// connection memory to about 256 MiB, far below the service's file
    /// descriptor limit (65536).
    #[arg(long, env = "SCORES_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most submissions (POST /score, POST /v1/scores) handled at once;
    /// beyond it they are answered 503 at once instead of queueing without
    /// bound. Results reads have a budget of their own and never take from
    /// this one.
    #[arg(long, env = "SCORES_MAX_IN_FLIGHT_WRITES", default_value_t = 1024)]
    pub max_in_flight_writes: usize,

    /// Most results reads (GET /v1/accounts/{acc_nbr}/scores, GET
    /// /graderesult) handled at once; beyond it they are answered 503 at
    /// once. Reads wait on a MySQL pool of a few connections, so more in
    /// flight would only lengthen that queue.
    #[arg(long, env = "SCORES_MAX_IN_FLIGHT_READS", default_value_t = 256)]
    pub max_in_flight_reads: usize,

    /// Requests a client address may make per minute (0: no limit), with a
    /// burst of at most 5 seconds' worth (at least 1). Behind a proxy, set
    /// SCORES_TRUSTED_PROXIES or every client shares its address.
    #[arg(
        long,
        env = "SCORES_RATE_LIMIT_PER_CLIENT_PER_MINUTE",
        default_value_t = 600
    )]
    pub rate_limit_per_client_per_minute: u32,

    /// Submissions an account number may make per minute (0: no limit),
    /// with a burst of at most 5 seconds' worth (at least 1).
    #[arg(
        long,
        env = "SCORES_RATE_LIMIT_PER_ACCOUNT_PER_MINUTE",
        default_value_t = 60
    )]
    pub rate_limit_per_account_per_minute: u32,

    /// Proxies whose X-Forwarded-For is believed (addresses or CIDR ranges,
    /// comma separated), such as the nginx in front of the API.
    #[arg(long, env = "SCORES_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_proxies: Vec<IpNet>,

    /// A connection that has not sent a complete request head within this
    /// many milliseconds of opening, or of the end of its previous response,
    /// is closed: it bounds slow clients and idle kept-alive connections
    /// alike (hyper runs one timer for both). Keep an upstream's keep-alive
    /// timeout (nginx's `keepalive_timeout`) below it.
    #[arg(long, env = "SCORES_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_read_timeout_ms: u64,

    /// A client that has not sent its whole body within this many
    /// milliseconds is answered 408. A submission holds its place in flight
    /// while its body arrives; a mini-program body is under 2 KiB (one or
    /// two TCP segments) and nginx sends bodies whole, so 2 s is generous.
    #[arg(long, env = "SCORES_BODY_READ_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_read_timeout_ms: u64,

    /// How long a shutdown waits for in-flight sends to be flushed, in
    /// milliseconds.
    #[arg(long, env = "SCORES_SHUTDOWN_FLUSH_MS", default_value_t = 10_000)]
    pub shutdown_flush_ms: u64,

    /// Where `GET /metrics` (Prometheus) is served, with `/healthz` and
    /// `/readyz`; never on the public address (port 0 picks a free port).
    /// The projector's default is 9464, so both fit on one host.
    #[arg(long, env = "SCORES_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,

    /// MySQL URL of a read-only account (such as scores_analyst) for the
    /// results queries, GET /v1/accounts/{acc_nbr}/scores and
    /// /graderesult. Unset: they answer 503. Submissions never need MySQL.
    #[arg(long, env = "SCORES_QUERY_DATABASE_URL", hide_env_values = true)]
    pub query_database_url: Option<String>,

    /// Connections in the results queries' pool.
    #[arg(
        long,
        env = "SCORES_QUERY_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8
    )]
    pub query_database_max_connections: u32,

    /// Longest wait of a results query for the projection to pass the
    /// consistency token it was given, in milliseconds; past it the query
    /// answers with what it has, marked stale.
    #[arg(long, env = "SCORES_CONSISTENCY_WAIT_MS", default_value_t = 2000)]
    pub consistency_wait_ms: u64,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// An address (`127.0.0.1`) or a range (`10.0.0.0/8`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected an IP address or CIDR range, got {text:?}"))
}

/// Settings that were removed, with what replaced them: a deployment that
/// still sets one fails to start rather than silently losing its limit.
const REMOVED_SETTINGS: &[(&str, &str)] = &[(
    "SCORES_MAX_IN_FLIGHT",
    "SCORES_MAX_IN_FLIGHT_WRITES and SCORES_MAX_IN_FLIGHT_READS",
)];

/// Refuses a removed setting still present in the environment.
///
/// # Errors
///
/// The first removed setting found, naming its replacement.
pub fn reject_removed_settings() -> anyhow::Result<()> {
    removed_setting_in(|name| std::env::var_os(name).is_some())
}

fn removed_setting_in(is_set: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    match REMOVED_SETTINGS.iter().find(|(name, _)| is_set(name)) {
        Some((name, replacement)) => {
            anyhow::bail!("{name} is no longer read; set {replacement} instead")
        }
        None => Ok(()),
    }
}

impl Config {
    /// The publish timeout as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_setting_stops_the_start_and_names_its_replacement() {
        let error = removed_setting_in(|name| name == "SCORES_MAX_IN_FLIGHT").unwrap_err();
        assert!(
            error.to_string().contains("SCORES_MAX_IN_FLIGHT_WRITES"),
            "{error}"
        );
        assert!(removed_setting_in(|_| false).is_ok());
    }
}
