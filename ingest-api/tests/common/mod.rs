//! The application state the route tests share: a producer pointed at a
//! closed port (no request here gets an acknowledgment), no results
//! database, and a results token key of its own ([`TEST_KEYS`]).

// Each test file uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ingest_api::Config;
use ingest_api::handlers::AppState;
use ingest_api::handlers::pages::Pages;
use ingest_api::limits::Limits;
use ingest_api::publisher::{Publisher, Sealing};
use ingest_api::read_token::ResultsTokens;
use ingest_api::readiness::Readiness;
use ingest_api::routes::routes;
use score_shared::ValidationRules;
use score_shared::config::KafkaArgs;
use serde_json::Value;
use warp::Filter;

pub const LIMIT: u64 = 1024;

/// The results token key of these tests (32 bytes).
pub const TEST_KEYS: &str = "route-tests:cm91dGUtdGVzdHMta2V5LXJvdXRlLXRlc3RzLWtleS0xMjM0NQ==";

/// The results tokens `state()` issues and accepts.
pub fn results_tokens() -> ResultsTokens {
    ResultsTokens::parse(Some(TEST_KEYS), Duration::from_secs(3600)).expect("valid test keys")
}

/// A valid results token for `account`.
pub fn token_for(account: &str) -> String {
    let account = score_shared::AccountNumber::parse(account, &ValidationRules::default())
        .expect("a valid account number");
    results_tokens().issue(&account)
}

/// The account pepper of these tests (32 bytes).
pub const TEST_PEPPER: &str = "cm91dGUtdGVzdHMtcGVwcGVyLXJvdXRlLXRlc3RzLXA=";

/// How `state()`'s publisher seals events.
pub fn sealing() -> Sealing {
    Sealing {
        pepper: TEST_PEPPER.parse().expect("a valid pepper"),
        keys_topic: "unused-keys".to_owned(),
        key_time_to_live: Duration::from_secs(60),
        key_pool_size: 0,
    }
}

pub fn state() -> AppState {
    let kafka = KafkaArgs {
        kafka_brokers: "127.0.0.1:1".to_owned(),
        topic: "unused".to_owned(),
        topic_partitions: 1,
        topic_replication: 1,
        kafka_options: Vec::new(),
    };
    let config = Config::parse_from(["ingest-api", "--rate-limit-per-client-per-minute", "3"]);
    AppState {
        publisher: Publisher::new(&kafka, Duration::from_millis(100), sealing())
            .expect("a producer"),
        rules: Arc::new(ValidationRules::default()),
        limits: Arc::new(Limits::new(&config)),
        body_limit_bytes: LIMIT,
        body_read_timeout: Duration::from_secs(5),
        read_model: None,
        pages: Arc::new(Pages::new(&ValidationRules::default())),
        recent_keys: Arc::default(),
        readiness: Readiness::fixed(false),
        results_tokens: Arc::new(results_tokens()),
    }
}

pub fn app()
-> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    routes(state())
}

pub fn error_code(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("a JSON error body");
    value["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_owned()
}
