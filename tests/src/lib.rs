//! Harness for the end-to-end tests: each test gets its own topic on the real
//! broker, its own database on the real MariaDB, an ingest API on port 0 and
//! an in-process projector, all built by the same functions the binaries use.
//!
//! Where the services are comes from `SCORES_TEST_KAFKA_BROKERS` (default
//! `127.0.0.1:9092`) and `SCORES_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`); `./deploy/local test` starts both. A test
//! whose service is missing fails with a message saying so: none skips.
//! Logs are printed only when `TEST_LOG` is set.

pub mod browser;
pub mod console;
pub mod fault_checks;
pub mod processes;
pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use ingest_api::Application;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use projector::Projector;
use projector::batch::LogRecord;
use projector::config::{DatabaseArgs, DecoderArgs, RebuildArgs, RunArgs};
use projector::log_reader::{LogReader, Start};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use score_shared::config::{KafkaArgs, LogArgs, ValidationArgs};
use score_shared::event::new_event_id;
use score_shared::telemetry::LogFormat;
use score_shared::{Channel, RawSubmission, ScoreSubmitted, Submission, ValidationRules};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Executor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The results token keys every test API signs with (one key, id `test`,
/// 32 bytes): [`results_token_for`] makes tokens it accepts.
pub const TEST_RESULTS_TOKEN_KEYS: &str = "test:dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXk=";

/// The account pepper every test process gets (base64 of 32 bytes).
pub const TEST_ACCOUNT_PEPPER: &str = "dGVzdC1wZXBwZXItdGVzdC1wZXBwZXItdGVzdC1wZXA=";

/// Personal data settings for a test: [`TEST_ACCOUNT_PEPPER`] and the key
/// topic `keys_topic`.
pub fn test_personal_data(keys_topic: &str) -> score_shared::personal::PersonalDataArgs {
    score_shared::personal::PersonalDataArgs {
        account_pepper: Some(TEST_ACCOUNT_PEPPER.parse().expect("any text")),
        account_pepper_file: None,
        keys_topic: keys_topic.to_owned(),
    }
}

/// The key topic that goes with the event topic `topic` in tests: each
/// test's log has keys of its own.
pub fn keys_topic_of(topic: &str) -> String {
    format!("{topic}-keys")
}

/// How a test's projector reads events: every version, the default rules,
/// [`TEST_ACCOUNT_PEPPER`] and the key topic of `kafka`'s event topic.
pub fn test_decoder_args(kafka: &KafkaArgs) -> DecoderArgs {
    DecoderArgs {
        personal: test_personal_data(&keys_topic_of(&kafka.topic)),
        ..DecoderArgs::default()
    }
}

/// A decoder as a test's projector has it, with every data key of
/// `kafka`'s key topic read (for tests that decode outside a running
/// projector, such as a dead-letter retry).
///
/// # Panics
///
/// When the key topic cannot be read.
pub async fn test_decoder(kafka: &KafkaArgs) -> projector::batch::Decoder {
    let args = test_decoder_args(kafka);
    let ring = args.key_ring(kafka).expect("a key ring");
    ring.catch_up().await.expect("the key topic is read");
    args.decoder(ring.keys())
        .expect("the default rules are valid")
}

/// The results tokens of [`TEST_RESULTS_TOKEN_KEYS`].
pub fn test_results_tokens() -> ingest_api::read_token::ResultsTokens {
    ingest_api::read_token::ResultsTokens::parse(
        Some(TEST_RESULTS_TOKEN_KEYS),
        Duration::from_secs(30 * 24 * 60 * 60),
    )
    .expect("valid test keys")
}

/// A results token for `account` that a test API accepts: what a
/// submission for it would have been answered.
pub fn results_token_for(account: &str) -> String {
    test_results_tokens().issue(&test_account(account))
}

/// `account` as a validated account number (default rules).
pub fn test_account(account: &str) -> score_shared::AccountNumber {
    score_shared::AccountNumber::parse(account, &score_shared::ValidationRules::default())
        .expect("a valid account number")
}

/// Prefix of every database a test creates; `./deploy/local test` drops
/// leftovers of earlier runs by it.
pub const TEST_DATABASE_PREFIX: &str = "scores_test_";

/// The broker the tests use.
pub fn kafka_brokers() -> String {
    std::env::var("SCORES_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The MariaDB server the tests use (no database in the URL).
pub fn mysql_server_url() -> String {
    std::env::var("SCORES_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// Installs a log subscriber when `TEST_LOG` is set.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            score_shared::telemetry::init(LogFormat::Text);
        }
    });
}

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A topic of its own, created on the real broker.
pub struct TestTopic {
    pub kafka: KafkaArgs,
}

impl TestTopic {
    /// Creates a topic with `partitions` partitions.
    ///
    /// # Panics
    ///
    /// When the broker cannot be reached: the tests need it.
    pub async fn create(partitions: i32) -> Self {
        Self::create_on(&kafka_args(&unique_name("score-events-test-"), partitions)).await
    }

    /// Creates the topic `kafka` names, on the brokers it names.
    ///
    /// # Panics
    ///
    /// When the broker cannot be reached.
    pub async fn create_on(kafka: &KafkaArgs) -> Self {
        let kafka = kafka.clone();
        let created = tokio::time::timeout(
            Duration::from_secs(20),
            score_shared::kafka::ensure_topic(&kafka),
        )
        .await;
        match created {
            Ok(Ok(())) => Self { kafka },
            Ok(Err(error)) => panic!(
                "the Kafka broker at {} refused to create a topic ({error:#}); \
                 start the stack with ./deploy/local test",
                kafka.kafka_brokers
            ),
            Err(_) => panic!(
                "no Kafka broker answered at {} within 20 s; start the stack with ./deploy/local test",
                kafka.kafka_brokers
            ),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.kafka.topic
    }

    /// Sum of the high watermarks of all partitions: how many records the
    /// topic holds.
    pub async fn record_count(&self) -> i64 {
        self.high_watermarks().await.values().sum()
    }

    /// High watermark per partition.
    pub async fn high_watermarks(&self) -> HashMap<i32, i64> {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || {
            score_shared::kafka::watermarks(&kafka, Duration::from_secs(10))
                .expect("reading the topic's watermarks")
                .into_iter()
                .map(|(partition, (_, high))| (partition, high))
                .collect()
        })
        .await
        .expect("watermark task")
    }

    /// Every record's payload, partition by partition, up to the end the
    /// topic has now.
    pub async fn payloads(&self) -> Vec<Vec<u8>> {
        records_of(&self.kafka)
            .await
            .into_iter()
            .map(|record| record.payload.unwrap_or_default())
            .collect()
    }

    /// Writes raw bytes straight to the topic, bypassing the ingest API (to
    /// plant events the API would never write).
    pub async fn produce_raw(&self, partition: i32, key: &str, payload: &[u8]) -> i64 {
        let producer: FutureProducer =
            score_shared::kafka::producer_config(&self.kafka, Duration::from_secs(10))
                .create()
                .expect("creating a producer");
        let record = FutureRecord::to(self.name())
            .partition(partition)
            .key(key)
            .payload(payload);
        let delivery = producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .expect("the broker acknowledges a raw record");
        delivery.offset
    }
}

/// Every record `kafka.topic` (an event topic or a key topic) holds,
/// partition by partition, from its beginning to the end it has now.
pub async fn records_of(kafka: &KafkaArgs) -> Vec<LogRecord> {
    let mut reader = LogReader::open(kafka, "test-reader", Start::Beginning)
        .await
        .expect("opening a reader on the topic");
    let mut records = Vec::new();
    reader
        .read_to_the_end(
            1000,
            Duration::from_secs(20),
            &CancellationToken::new(),
            "never stopped",
            "reading the topic",
            |batch| records.extend_from_slice(batch),
        )
        .await
        .expect("the topic is read to its end");
    records
}

/// The event the ingest API appends for `raw`, which must be valid,
/// arriving through `channel`.
pub fn accepted_event(raw: &RawSubmission, channel: Channel) -> ScoreSubmitted {
    let submission = Submission::parse(raw, &ValidationRules::default())
        .expect("the test's submission is valid");
    ScoreSubmitted::new(new_event_id(), channel, &submission)
}

/// Kafka settings for a test topic.
pub fn kafka_args(topic: &str, partitions: i32) -> KafkaArgs {
    kafka_args_on(&kafka_brokers(), topic, partitions)
}

/// Client settings for `topic` on the broker at `brokers`.
pub fn kafka_args_on(brokers: &str, topic: &str, partitions: i32) -> KafkaArgs {
    KafkaArgs {
        kafka_brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        topic_partitions: partitions,
        topic_replication: 1,
        kafka_options: Vec::new(),
    }
}

/// The MariaDB server's socket address, from [`mysql_server_url`].
pub fn mysql_socket_address() -> SocketAddr {
    let url = reqwest::Url::parse(&mysql_server_url()).expect("SCORES_TEST_MYSQL_URL is a URL");
    let host = url.host_str().expect("a host");
    let port = url.port().unwrap_or(3306);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .expect("resolving the MariaDB host")
        .next()
        .expect("an address for the MariaDB host")
}

/// A database of its own on the real MariaDB, migrated.
pub struct TestDatabase {
    pub name: String,
    /// The projector account's URL: the projector runs with the least
    /// privilege it needs, as in production.
    pub url: String,
    /// The analyst account's URL (read only): what the ingest API's results
    /// queries use, as in production.
    pub reader_url: String,
    /// Read-only, through the analyst account: what tests check with.
    pub pool: MySqlPool,
    /// Through the projector account, for operations the projector runs.
    pub projector_pool: MySqlPool,
    /// Through the server's administrator, for damage only an operator could
    /// do.
    pub admin_pool: MySqlPool,
    server: String,
    accounts: [String; 2],
}

/// The accounts script `./deploy/local` runs, shared with the tests.
const ACCOUNTS_SQL: &str = include_str!("../../deploy/mysql-accounts.sql");

impl TestDatabase {
    /// Creates and migrates a fresh database.
    ///
    /// # Panics
    ///
    /// When MariaDB cannot be reached: the tests need it.
    pub async fn create() -> Self {
        Self::create_on(&mysql_server_url()).await
    }

    /// Creates a fresh database on the server at `server`, its projector and
    /// analyst accounts (with `deploy/mysql-accounts.sql`), and migrates it
    /// as the projector account.
    pub async fn create_on(server: &str) -> Self {
        let server = server.to_owned();
        let name = unique_name(TEST_DATABASE_PREFIX);
        let suffix = &name[TEST_DATABASE_PREFIX.len()..];
        let (projector_user, analyst_user) = (format!("p_{suffix}"), format!("a_{suffix}"));
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut admin = MySqlConnectOptions::from_str(&server)
            .expect("SCORES_TEST_MYSQL_URL is a MySQL URL")
            .connect()
            .await
            .unwrap_or_else(|error| {
                panic!("MariaDB is not reachable at {server} ({error}); start the stack with ./deploy/local test")
            });
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
            )))
            .await
            .expect("creating the test database");
        // Names and password are generated here (hex), never input.
        let variables = format!(
            "SET @db = '{name}', @host = '%', @projector_user = '{projector_user}', \
             @projector_password = '{password}', @analyst_user = '{analyst_user}', \
             @analyst_password = '{password}';"
        );
        admin
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "{variables}\n{ACCOUNTS_SQL}"
            ))))
            .await
            .expect("creating the least-privilege accounts");

        let with_user = |user: &str| {
            let mut url = reqwest::Url::parse(&format!("{server}/{name}")).expect("a database URL");
            url.set_username(user).expect("a user");
            url.set_password(Some(&password)).expect("a password");
            url.to_string()
        };
        let url = with_user(&projector_user);
        let database = DatabaseArgs {
            database_url: url.clone(),
            database_max_connections: 4,
        };
        let projector_pool = projector::db::pool(&database).expect("pool");
        projector::db::migrate(&database, &projector_pool)
            .await
            .expect("migrating the test database as the projector account");
        let connect = |url: String| async move {
            MySqlPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .expect("connecting to the test database")
        };
        let reader_url = with_user(&analyst_user);
        Self {
            pool: connect(reader_url.clone()).await,
            reader_url,
            admin_pool: connect(format!("{server}/{name}")).await,
            projector_pool,
            name,
            url,
            server,
            accounts: [projector_user, analyst_user],
        }
    }

    /// The administrator's URL of this database (to read it as a legacy
    /// source, say).
    pub fn admin_url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Settings for a projector writing into this database.
    pub fn args(&self) -> DatabaseArgs {
        DatabaseArgs {
            database_url: self.url.clone(),
            database_max_connections: 4,
        }
    }

    /// Settings for a projector reaching this database through `proxy`.
    pub fn args_via(&self, proxy: SocketAddr) -> DatabaseArgs {
        let mut url = reqwest::Url::parse(&self.url).expect("a database URL");
        url.set_ip_host(proxy.ip()).expect("an IP host");
        url.set_port(Some(proxy.port())).expect("a port");
        DatabaseArgs {
            database_url: url.to_string(),
            database_max_connections: 4,
        }
    }

    /// Rows in `grade`.
    pub async fn grade_count(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM grade")
            .fetch_one(&self.pool)
            .await
            .expect("counting grade rows")
    }

    /// The lines a content query (such as [`GRADE_CONTENT`]) returns.
    pub async fn content(&self, query: &'static str) -> Vec<String> {
        sqlx::query_scalar(query)
            .fetch_all(&self.pool)
            .await
            .expect("reading table content")
    }

    /// Waits until `grade` holds exactly `expected` rows.
    ///
    /// # Panics
    ///
    /// When it does not within `limit`, saying how many it holds.
    pub async fn await_grade_rows(&self, expected: i64, limit: Duration) {
        let reached = eventually(limit, || async { self.grade_count().await == expected }).await;
        assert!(
            reached,
            "grade holds {} rows, not {expected}, after {limit:?}",
            self.grade_count().await
        );
    }

    /// Every `event_id` in `grade`, with how often it occurs.
    pub async fn event_id_counts(&self) -> HashMap<String, i64> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT event_id, COUNT(*) FROM grade GROUP BY event_id")
                .fetch_all(&self.pool)
                .await
                .expect("reading event ids");
        rows.into_iter().collect()
    }

    /// Drops the database (called at the end of a passing test).
    pub async fn drop_database(self) {
        self.pool.close().await;
        self.projector_pool.close().await;
        self.admin_pool.close().await;
        let mut admin = MySqlConnectOptions::from_str(&self.server)
            .expect("URL")
            .connect()
            .await
            .expect("connecting to drop the test database");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                self.name
            )))
            .await
            .expect("dropping the test database");
        for account in &self.accounts {
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP USER IF EXISTS '{account}'@'%'"
                )))
                .await
                .expect("dropping a test account");
        }
    }
}

/// Polls `probe` every 50 ms until it returns true, for at most `limit`.
/// Returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An ingest API running in this process on port 0.
pub struct RunningApi {
    pub address: SocketAddr,
    /// Where its `/metrics` is served (never on `address`).
    pub metrics_address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningApi {
    /// Starts the API for `kafka` with the default settings otherwise.
    pub async fn start(kafka: &KafkaArgs) -> Self {
        Self::start_with(api_config(kafka)).await
    }

    /// Starts the API with `config`.
    pub async fn start_with(config: ingest_api::Config) -> Self {
        init_logs();
        let application = Application::build(config)
            .await
            .expect("building the ingest API");
        let address = application.address();
        let metrics_address = application.metrics_address();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            metrics_address,
            stop: Some(stop),
            task,
        }
    }

    /// `http://address/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops gracefully and waits for the flush.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("api task").expect("api run");
    }
}

/// The ingest API's settings for a test: port 0, everything else default.
pub fn api_config(kafka: &KafkaArgs) -> ingest_api::Config {
    ingest_api::Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        publish_timeout_ms: 5000,
        body_limit_bytes: 16 * 1024,
        max_connections: 4096,
        max_in_flight_writes: 1024,
        max_in_flight_reads: 256,
        // Tests send thousands of requests from one address; the limits
        // have tests of their own.
        rate_limit_per_client_per_minute: 0,
        rate_limit_per_account_per_minute: 0,
        trusted_proxies: Vec::new(),
        header_read_timeout_ms: 10_000,
        body_read_timeout_ms: 10_000,
        shutdown_flush_ms: 5000,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        query_database_url: None,
        query_database_max_connections: 4,
        consistency_wait_ms: 2000,
        results_token_keys: Some(TEST_RESULTS_TOKEN_KEYS.to_owned().into()),
        results_token_keys_file: None,
        results_token_ttl_days: 30,
        // Tests make many refused reads on purpose; the limit has tests of
        // its own.
        rate_limit_refused_reads_per_client_per_minute: 0,
        data_key_cache_seconds: 60,
        data_key_pool_size: 1024,
        personal: test_personal_data(&keys_topic_of(&kafka.topic)),
        kafka: kafka.clone(),
        validation: ValidationArgs::default(),
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    }
}

/// The ingest API's settings for a test that also queries results from
/// `database`, through its read-only account.
pub fn api_config_with_results(kafka: &KafkaArgs, database: &TestDatabase) -> ingest_api::Config {
    ingest_api::Config {
        query_database_url: Some(database.reader_url.clone()),
        ..api_config(kafka)
    }
}

/// [`api_config_with_results`] with a consistency wait long enough for any
/// projection to catch up: for tests about what a token says once passed,
/// not about how long passing takes.
pub fn patient_results_config(kafka: &KafkaArgs, database: &TestDatabase) -> ingest_api::Config {
    ingest_api::Config {
        consistency_wait_ms: 60_000,
        ..api_config_with_results(kafka, database)
    }
}

/// The text a metrics address serves at `/metrics`.
///
/// # Panics
///
/// When it does not answer.
pub async fn scrape(metrics: SocketAddr) -> String {
    reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("the metrics address answers")
        .text()
        .await
        .expect("a body")
}

/// The value of `series` (`name{label="…",…}` exactly as exposed) in a
/// Prometheus text exposition, 0 when absent.
///
/// # Panics
///
/// When its value is not a number.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map(|(_, value)| value.parse().expect("a number"))
        .unwrap_or(0.0)
}

/// A projector running in this process.
pub struct RunningProjector {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningProjector {
    /// Starts a projector of `kafka`'s topic into `database`.
    pub fn start(kafka: &KafkaArgs, database: &TestDatabase, group: &str) -> Self {
        Self::start_with(kafka, database.args(), group)
    }

    /// Starts a projector of `kafka`'s topic into the database `database`.
    pub fn start_with(kafka: &KafkaArgs, database: DatabaseArgs, group: &str) -> Self {
        let projections = projector::projection::names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        Self::start_configured(
            kafka,
            database,
            group,
            projections,
            test_decoder_args(kafka),
        )
    }

    /// Starts a projector maintaining only `projections`, reading events
    /// with `decoder`.
    pub fn start_configured(
        kafka: &KafkaArgs,
        database: DatabaseArgs,
        group: &str,
        projections: Vec<String>,
        decoder: DecoderArgs,
    ) -> Self {
        init_logs();
        let args = RunArgs {
            database,
            kafka: kafka.clone(),
            consumer_group: group.to_owned(),
            batch_size: 100,
            batch_wait_ms: 20,
            metrics_addr: "127.0.0.1:0".parse().expect("an address"),
            projections,
            decoder,
            log: LogArgs {
                log_format: LogFormat::Text,
            },
        };
        let projector = Projector::build(args).expect("building the projector");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(projector.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Asks it to stop (it finishes the batch in hand) and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("projector task")
            .expect("projector run");
    }

    /// Stops it at once wherever it is, mid-batch included, like a crash:
    /// an open MySQL transaction is rolled back.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// An HTTP client for the tests' requests to the API: a request gets a
/// minute before the client gives up.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// Posts `body` to the API's `/v1/scores`, which must accept it (202).
pub async fn accepted_v1(api: &RunningApi, body: &serde_json::Value) -> reqwest::Response {
    let response = http_client()
        .post(api.url("/v1/scores"))
        .json(body)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 202);
    response
}

/// Sends `count` valid submissions to `/v1/scores` at once, for accounts
/// `{prefix}000000`, `{prefix}000001`, …, and returns the acknowledged event
/// ids. Every one must be acknowledged with 202.
pub async fn submit_many(
    api: &RunningApi,
    prefix: &str,
    count: usize,
) -> std::collections::HashSet<String> {
    let client = http_client();
    let requests = (0..count).map(|i| {
        let client = client.clone();
        let url = api.url("/v1/scores");
        let body = serde_json::json!({
            "acc_nbr": format!("{prefix}{i:06}"), "grade1": 5, "grade2": 4, "grade3": 3,
            "txt1": "服務很好", "txt2": "", "txt3": "ok"
        });
        async move {
            let response = client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("the API answers");
            assert_eq!(response.status(), 202, "submission {i}");
            let answer: serde_json::Value = response.json().await.expect("a JSON answer");
            answer["event_id"].as_str().expect("an event id").to_owned()
        }
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .collect()
}

/// Settings for rebuilding `projection` of `kafka`'s topic in `database`.
pub fn rebuild_args(
    kafka: &KafkaArgs,
    database: &TestDatabase,
    projection: &str,
    keep_old: bool,
) -> RebuildArgs {
    RebuildArgs {
        projection: projection.to_owned(),
        keep_old,
        drop_kept: false,
        batch_size: 200,
        database: database.args(),
        kafka: kafka.clone(),
        decoder: test_decoder_args(kafka),
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    }
}

/// Every column of `grade` but the projection-time metadata (`id`,
/// `projected_at`), one line a row, ordered by event id: two tables with the
/// same lines hold the same data.
pub const GRADE_CONTENT: &str = "SELECT CONCAT_WS('|', acc_nbr, grade1, grade2, grade3, HEX(txt1), HEX(txt2), \
     HEX(txt3), insert_time, event_id, channel, IFNULL(scene, '-'), kafka_partition, kafka_offset) \
     FROM grade ORDER BY event_id";

/// Every column of `account_summary`, one line a row, ordered by account.
pub const ACCOUNT_SUMMARY_CONTENT: &str = "SELECT CONCAT_WS('|', acc_nbr, submissions, grade1_sum, \
     grade2_sum, grade3_sum, avg_grade1, avg_grade2, avg_grade3, first_submission_at, last_submission_at) \
     FROM account_summary ORDER BY acc_nbr";

/// A fresh consumer group name.
pub fn unique_group() -> String {
    unique_name("projector-test-")
}

/// The exact body the mini-program's `wx.request` sends for these values:
/// each value `JSON.stringify`'d, then form-encoded like
/// `encodeURIComponent` does.
pub fn legacy_form_body(acc_nbr: &str, grades: [&str; 3], texts: [&str; 3]) -> String {
    let stringify = |text: &str| serde_json::to_string(text).expect("a string serializes");
    let mut pairs = vec![("acc_nbr", stringify(acc_nbr))];
    for (name, grade) in ["grade1", "grade2", "grade3"].into_iter().zip(grades) {
        pairs.push((name, grade.to_owned()));
    }
    for (name, text) in ["txt1", "txt2", "txt3"].into_iter().zip(texts) {
        pairs.push((name, stringify(text)));
    }
    pairs
        .into_iter()
        .map(|(name, value)| format!("{name}={}", encode_uri_component(&value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// JavaScript's `encodeURIComponent`: everything but ASCII letters, digits
/// and `-_.!~*'()` is percent-encoded as UTF-8.
fn encode_uri_component(text: &str) -> String {
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    utf8_percent_encode(text, COMPONENT).to_string()
}
