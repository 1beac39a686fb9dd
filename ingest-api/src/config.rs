//! The ingest API's settings: flags, each backed by a `SCORES_*` variable.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use score_shared::config::{KafkaArgs, LogArgs, ValidationArgs};
use score_shared::personal::{PepperSettingError, PersonalDataArgs};

/// The longest `SCORES_DATA_KEY_CACHE_SECONDS`, a day: after a forget,
/// submissions may be sealed under a forgotten key for as long as it stays
/// cached, and a day is already far more than key writes need to be rare.
pub const MAX_DATA_KEY_CACHE_SECONDS: u64 = 24 * 60 * 60;
/// The largest `SCORES_DATA_KEY_POOL_SIZE`: a pooled key is a few hundred
/// bytes, and the refill may have the whole pool in librdkafka's queue (in
/// blocks of up to 256 keys).
pub const MAX_DATA_KEY_POOL_SIZE: u64 = 100_000;

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

    /// Keys that sign results tokens, `kid:base64key` entries separated by
    /// commas (each key at least 32 bytes: `head -c 32 /dev/urandom |
    /// base64`). The first signs new tokens; every one listed is accepted.
    /// To rotate, put the new key first and keep the old one second until
    /// its tokens have expired, then drop it. Required: the API does not
    /// start without it.
    #[arg(long, env = "SCORES_RESULTS_TOKEN_KEYS", hide_env_values = true)]
    pub results_token_keys: Option<Secret>,

    /// A file holding the value of SCORES_RESULTS_TOKEN_KEYS instead, so
    /// that the keys travel as a secret: a compose secret
    /// (`/run/secrets/…`), a systemd credential (`%d/…`). Set one of the
    /// two, not both.
    #[arg(long, env = "SCORES_RESULTS_TOKEN_KEYS_FILE")]
    pub results_token_keys_file: Option<std::path::PathBuf>,

    /// Days a results token stays valid after its submission.
    #[arg(long, env = "SCORES_RESULTS_TOKEN_TTL_DAYS", default_value_t = 30)]
    pub results_token_ttl_days: u32,

    /// Refused results reads (no token, or not a valid one for the account)
    /// a client address may make per minute (0: no limit), with a burst of
    /// at most 5; beyond it they are answered 429. Counted apart from the
    /// client's other requests.
    #[arg(
        long,
        env = "SCORES_RATE_LIMIT_REFUSED_READS_PER_CLIENT_PER_MINUTE",
        default_value_t = 10
    )]
    pub rate_limit_refused_reads_per_client_per_minute: u32,

    /// How long a data key is reused for an account's submissions, in
    /// seconds (at most 86400). An account's first submission is handed a
    /// key (from the key pool, or written on the spot) that is then kept in
    /// this process's cache (at most 100,000 accounts) for this long. Short on purpose: `projector
    /// forget` tombstones an account's keys in the key topic but cannot reach
    /// this cache, so a submission made up to this long after a forget may be
    /// sealed under a forgotten key, and such an event is projected as
    /// forgotten (grades kept; number and comments gone). 0: a new key for
    /// every submission.
    #[arg(
        long,
        env = "SCORES_DATA_KEY_CACHE_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=MAX_DATA_KEY_CACHE_SECONDS)
    )]
    pub data_key_cache_seconds: u64,

    /// How many data keys are written ahead of need and kept ready for
    /// accounts that have none in use (at most 100000). Keys are written by
    /// a background task in blocks of up to 256 (one key topic record
    /// each), a block once a block's worth was handed out, so an account's
    /// first submission does not wait for its key's write; when the pool
    /// runs dry (at start, or when the broker cannot keep up) the
    /// submission writes its own key (a block of one). Blocks none of
    /// whose keys was handed out are tombstoned when the API stops. 0: no
    /// pool.
    #[arg(
        long,
        env = "SCORES_DATA_KEY_POOL_SIZE",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u64).range(0..=MAX_DATA_KEY_POOL_SIZE)
    )]
    pub data_key_pool_size: u64,

    #[command(flatten)]
    pub personal: PersonalDataArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// A setting that holds a secret: its `Debug` form never shows it, so a
/// logged `Config` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
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

    /// How many data keys are kept ready (`SCORES_DATA_KEY_POOL_SIZE`).
    pub fn data_key_pool_size(&self) -> usize {
        usize::try_from(self.data_key_pool_size).unwrap_or(usize::MAX)
    }

    /// How long a data key is reused (`SCORES_DATA_KEY_CACHE_SECONDS`).
    pub fn data_key_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.data_key_cache_seconds)
    }

    /// How the publisher seals events: the account pepper, the key topic,
    /// the data key cache's time to live and the key pool's size.
    ///
    /// # Errors
    ///
    /// No pepper configured, or a pepper file that cannot be read or holds
    /// no valid pepper; the message names `SCORES_ACCOUNT_PEPPER` and how to
    /// make one.
    pub fn sealing(&self) -> Result<crate::publisher::Sealing, PepperSettingError> {
        Ok(crate::publisher::Sealing {
            pepper: self.personal.pepper()?,
            keys_topic: self.personal.keys_topic.clone(),
            key_time_to_live: self.data_key_cache_ttl(),
            key_pool_size: self.data_key_pool_size(),
        })
    }

    /// The results tokens' keys and lifetime.
    ///
    /// # Errors
    ///
    /// No key configured, or a key setting that cannot be used; the message
    /// names `SCORES_RESULTS_TOKEN_KEYS` and how to make a key.
    pub fn results_tokens(
        &self,
    ) -> Result<crate::read_token::ResultsTokens, crate::read_token::KeysError> {
        use crate::read_token::{KeysError, ResultsTokens};
        let ttl = Duration::from_secs(u64::from(self.results_token_ttl_days) * 24 * 60 * 60);
        let from_file = self
            .results_token_keys_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|error| KeysError::File {
                    path: path.display().to_string(),
                    error: error.to_string(),
                })
            })
            .transpose()?;
        match (&self.results_token_keys, from_file) {
            (Some(_), Some(_)) => Err(KeysError::Both),
            (Some(keys), None) => ResultsTokens::parse(Some(keys.expose()), ttl),
            (None, from_file) => ResultsTokens::parse(from_file.as_deref(), ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_results_token_key_stops_the_start_with_how_to_make_one() {
        let mut config = <Config as clap::Parser>::parse_from(["ingest-api"]);
        config.results_token_keys = None;
        config.results_token_keys_file = None;
        let message = config.results_tokens().unwrap_err().to_string();
        assert!(message.contains("SCORES_RESULTS_TOKEN_KEYS"), "{message}");
        assert!(message.contains("/dev/urandom"), "{message}");
    }

    #[test]
    fn the_results_token_keys_may_come_from_a_file_but_not_from_both_places() {
        let path = std::env::temp_dir().join(format!("results-token-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n",
        )
        .unwrap();
        let mut config = <Config as clap::Parser>::parse_from(["ingest-api"]);
        config.results_token_keys = None;
        config.results_token_keys_file = Some(path.clone());
        assert!(config.results_tokens().is_ok(), "from the file");
        config.results_token_keys = Some(Secret::from("k1:x".to_owned()));
        assert_eq!(
            config.results_tokens().unwrap_err(),
            crate::read_token::KeysError::Both
        );
        std::fs::remove_file(&path).unwrap();
        config.results_token_keys = None;
        let missing = config.results_tokens().unwrap_err().to_string();
        assert!(
            missing.contains("SCORES_RESULTS_TOKEN_KEYS_FILE"),
            "{missing}"
        );
    }

    #[test]
    fn the_results_token_keys_never_show_in_a_debug_config() {
        let mut config = <Config as clap::Parser>::parse_from([
            "ingest-api",
            "--results-token-keys",
            "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==",
        ]);
        config.results_token_keys_file = None;
        let debug = format!("{config:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(config.results_tokens().is_ok());
    }

    /// Base64 of 32 bytes.
    const PEPPER: &str = "Y29uZmlnLXRlc3RzLXBlcHBlci1jb25maWctdGVzdHM=";

    #[test]
    fn no_account_pepper_stops_the_start_with_how_to_make_one() {
        let mut config = <Config as clap::Parser>::parse_from(["ingest-api"]);
        config.personal.account_pepper = None;
        config.personal.account_pepper_file = None;
        let message = config.sealing().unwrap_err().to_string();
        assert!(message.contains("SCORES_ACCOUNT_PEPPER"), "{message}");
        assert!(message.contains("/dev/urandom"), "{message}");
    }

    #[test]
    fn sealing_takes_the_pepper_the_key_topic_and_the_key_cache_lifetime() {
        let config = <Config as clap::Parser>::parse_from([
            "ingest-api",
            "--account-pepper",
            PEPPER,
            "--keys-topic",
            "keys-here",
            "--data-key-cache-seconds",
            "5",
        ]);
        let sealing = config.sealing().expect("a pepper");
        assert_eq!(sealing.keys_topic, "keys-here");
        assert_eq!(sealing.key_time_to_live, Duration::from_secs(5));
        let reference = score_shared::AccountRef::of(&sealing.pepper, "13800138000");
        assert_eq!(
            reference,
            score_shared::AccountRef::of(&PEPPER.parse().unwrap(), "13800138000")
        );
    }

    #[test]
    fn a_data_key_is_reused_for_a_minute_by_default_and_at_most_a_day() {
        let config = <Config as clap::Parser>::parse_from(["ingest-api"]);
        assert_eq!(config.data_key_cache_ttl(), Duration::from_secs(60));
        let too_long = <Config as clap::Parser>::try_parse_from([
            "ingest-api",
            "--data-key-cache-seconds",
            "86401",
        ]);
        assert!(too_long.is_err(), "a cache lifetime past a day is refused");
    }

    #[test]
    fn a_thousand_and_twenty_four_keys_are_kept_ready_by_default_and_none_on_request() {
        let config =
            <Config as clap::Parser>::parse_from(["ingest-api", "--account-pepper", PEPPER]);
        assert_eq!(config.sealing().expect("a pepper").key_pool_size, 1024);
        let none = <Config as clap::Parser>::parse_from([
            "ingest-api",
            "--account-pepper",
            PEPPER,
            "--data-key-pool-size",
            "0",
        ]);
        assert_eq!(none.sealing().expect("a pepper").key_pool_size, 0);
        let too_many = <Config as clap::Parser>::try_parse_from([
            "ingest-api",
            "--data-key-pool-size",
            "100001",
        ]);
        assert!(too_many.is_err(), "a pool past 100,000 keys is refused");
    }

    #[test]
    fn the_account_pepper_never_shows_in_a_debug_config() {
        let config =
            <Config as clap::Parser>::parse_from(["ingest-api", "--account-pepper", PEPPER]);
        let debug = format!("{config:?}");
        assert!(!debug.contains(PEPPER), "{debug}");
    }

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
