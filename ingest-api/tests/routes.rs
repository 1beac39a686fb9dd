//! Route tests without a network: requests go through `warp::test` to the
//! filter the server itself uses. None of these requests reaches the
//! publisher (they fail before it), so the producer points at a closed port.

use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;
use clap::Parser;
use ingest_api::Config;
use ingest_api::handlers::AppState;
use ingest_api::limits::Limits;
use ingest_api::publisher::Publisher;
use ingest_api::routes::routes;
use score_shared::ValidationRules;
use score_shared::config::KafkaArgs;
use serde_json::Value;
use warp::Filter;
use warp::http::StatusCode;

const LIMIT: u64 = 1024;

fn state() -> AppState {
    let kafka = KafkaArgs {
        kafka_brokers: "127.0.0.1:1".to_owned(),
        topic: "unused".to_owned(),
        topic_partitions: 1,
        topic_replication: 1,
        kafka_options: Vec::new(),
    };
    let config = Config::parse_from(["ingest-api", "--rate-limit-per-client-per-minute", "3"]);
    AppState {
        publisher: Publisher::new(&kafka, Duration::from_millis(100)).expect("a producer"),
        rules: Arc::new(ValidationRules::default()),
        limits: Arc::new(Limits::new(&config)),
        body_limit_bytes: LIMIT,
        body_read_timeout: Duration::from_secs(5),
    }
}

fn app() -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone
{
    routes(state())
}

fn error_code(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("a JSON error body");
    value["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_owned()
}

#[tokio::test]
async fn an_unknown_path_is_a_404_in_the_v1_error_format() {
    let response = warp::test::request().path("/nowhere").reply(&app()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response.body()), "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_in_each_doors_format() {
    let response = warp::test::request()
        .method("GET")
        .path("/v1/scores")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(response.body()), "method_not_allowed");

    let response = warp::test::request()
        .method("GET")
        .path("/score")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body().as_ref(), "\"數據提交失敗\"".as_bytes());
}

#[tokio::test]
async fn a_wrong_or_missing_content_type_is_a_415() {
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = warp::test::request()
            .method("POST")
            .path("/v1/scores")
            .body("{}");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.reply(&app()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(error_code(response.body()), "unsupported_media_type");
    }
    let response = warp::test::request()
        .method("POST")
        .path("/score")
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(response.body().as_ref(), "\"數據提交失敗\"".as_bytes());
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_whether_or_not_its_length_is_declared() {
    let big = "x".repeat(LIMIT as usize + 1);
    let declared = warp::test::request()
        .method("POST")
        .path("/v1/scores")
        .header("content-type", "application/json")
        .body(&big)
        .reply(&app())
        .await;
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(declared.body()), "payload_too_large");

    // warp::test sets Content-Length from the body; a header claiming less
    // exercises the counting path that chunked bodies take.
    let understated = warp::test::request()
        .method("POST")
        .path("/score")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", "10")
        .body(&big)
        .reply(&app())
        .await;
    assert_eq!(understated.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(understated.body().as_ref(), "\"數據提交失敗\"".as_bytes());
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_a_400() {
    let response = warp::test::request()
        .method("POST")
        .path("/v1/scores")
        .header("content-type", "application/json")
        .body("[1, 2, 3]")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response.body()), "malformed_body");
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_a_400() {
    let too_long = "k".repeat(256);
    for key in ["", "with space", too_long.as_str()] {
        let response = warp::test::request()
            .method("POST")
            .path("/v1/scores")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body("{}")
            .reply(&app())
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(error_code(response.body()), "invalid_header");
    }
}

#[tokio::test]
async fn health_answers_without_the_broker() {
    let response = warp::test::request().path("/healthz").reply(&app()).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let help = Config::command().render_long_help().to_string();
    for variable in [
        "SCORES_HTTP_ADDR",
        "SCORES_PUBLISH_TIMEOUT_MS",
        "SCORES_BODY_LIMIT_BYTES",
        "SCORES_SHUTDOWN_FLUSH_MS",
        "SCORES_MAX_IN_FLIGHT",
        "SCORES_RATE_LIMIT_PER_CLIENT_PER_MINUTE",
        "SCORES_RATE_LIMIT_PER_ACCOUNT_PER_MINUTE",
        "SCORES_TRUSTED_PROXIES",
        "SCORES_HEADER_READ_TIMEOUT_MS",
        "SCORES_BODY_READ_TIMEOUT_MS",
        "SCORES_KAFKA_BROKERS",
        "SCORES_TOPIC",
        "SCORES_TOPIC_PARTITIONS",
        "SCORES_TOPIC_REPLICATION",
        "SCORES_KAFKA_OPTIONS",
        "SCORES_ACC_NBR_PATTERN",
        "SCORES_GRADE_MIN",
        "SCORES_GRADE_MAX",
        "SCORES_TEXT_MAX_CHARS",
        "SCORES_LOG_FORMAT",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}"
        );
    }
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_in_each_doors_format() {
    let app = app();
    let client: std::net::SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let send = |path: &'static str| {
        warp::test::request()
            .method("POST")
            .path(path)
            .remote_addr(client)
            .header("content-type", "application/json")
            .body("[]")
    };
    for _ in 0..3 {
        assert_eq!(
            send("/v1/scores").reply(&app).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    let limited = send("/v1/scores").reply(&app).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_code(limited.body()), "rate_limited");
    let legacy = send("/score").reply(&app).await;
    assert_eq!(legacy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(legacy.body().as_ref(), "\"數據提交失敗\"".as_bytes());
}
