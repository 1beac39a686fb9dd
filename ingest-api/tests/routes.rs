//! Route tests without a network: requests go through `warp::test` to the
//! filter the server itself uses. None of these requests reaches the
//! publisher (they fail before it), so the producer points at a closed port.

mod common;

use std::sync::Arc;

use clap::CommandFactory;
use ingest_api::Config;
use ingest_api::handlers::pages::Pages;
use ingest_api::observe::metrics_routes;
use ingest_api::readiness::Readiness;
use ingest_api::routes::routes;
use score_shared::ValidationRules;
use serde_json::Value;
use warp::http::StatusCode;

use common::{LIMIT, TEST_KEYS, app, error_code, state, token_for};

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

#[tokio::test]
async fn metrics_are_not_served_on_the_public_routes() {
    let response = warp::test::request().path("/metrics").reply(&app()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response.body()), "not_found");
}

#[tokio::test]
async fn the_metrics_address_serves_metrics_health_and_readiness_and_nothing_else() {
    let metrics = metrics_routes(state());
    let response = warp::test::request().path("/metrics").reply(&metrics).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for (path, status) in [
        ("/healthz", StatusCode::OK),
        ("/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/score", StatusCode::NOT_FOUND),
        ("/v1/scores", StatusCode::NOT_FOUND),
    ] {
        let response = warp::test::request().path(path).reply(&metrics).await;
        assert_eq!(response.status(), status, "{path}");
    }
}

#[tokio::test]
async fn readyz_answers_the_stored_readiness_without_asking_the_broker() {
    // The producer points at a closed port: a round trip could never say
    // ready, so a 200 can only come from the stored value.
    for (ready, status) in [
        (true, StatusCode::OK),
        (false, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let mut state = state();
        state.readiness = Readiness::fixed(ready);
        let response = warp::test::request()
            .path("/readyz")
            .reply(&routes(state))
            .await;
        assert_eq!(response.status(), status, "ready: {ready}");
    }
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let help = Config::command().render_long_help().to_string();
    for variable in [
        "SCORES_HTTP_ADDR",
        "SCORES_PUBLISH_TIMEOUT_MS",
        "SCORES_BODY_LIMIT_BYTES",
        "SCORES_SHUTDOWN_FLUSH_MS",
        "SCORES_MAX_CONNECTIONS",
        "SCORES_MAX_IN_FLIGHT_WRITES",
        "SCORES_MAX_IN_FLIGHT_READS",
        "SCORES_METRICS_ADDR",
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
        "SCORES_QUERY_DATABASE_URL",
        "SCORES_QUERY_DATABASE_MAX_CONNECTIONS",
        "SCORES_CONSISTENCY_WAIT_MS",
        "SCORES_RESULTS_TOKEN_KEYS",
        "SCORES_RESULTS_TOKEN_KEYS_FILE",
        "SCORES_RESULTS_TOKEN_TTL_DAYS",
        "SCORES_RATE_LIMIT_REFUSED_READS_PER_CLIENT_PER_MINUTE",
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
    // 3 a minute: a burst of one (5 s worth, rounded up), then one every
    // 20 s.
    assert_eq!(
        send("/v1/scores").reply(&app).await.status(),
        StatusCode::BAD_REQUEST
    );
    let limited = send("/v1/scores").reply(&app).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_code(limited.body()), "rate_limited");
    let legacy = send("/score").reply(&app).await;
    assert_eq!(legacy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(legacy.body().as_ref(), "\"數據提交失敗\"".as_bytes());
}

fn error_fields(body: &[u8]) -> Vec<String> {
    let value: Value = serde_json::from_slice(body).expect("a JSON error body");
    value["error"]["fields"]
        .as_array()
        .expect("a list of fields")
        .iter()
        .map(|field| field["field"].as_str().expect("a field name").to_owned())
        .collect()
}

#[tokio::test]
async fn a_results_query_names_every_invalid_parameter_in_a_400() {
    let cases = [
        ("/v1/accounts/12ab/scores", vec!["acc_nbr"]),
        ("/v1/accounts/%FF%FE/scores", vec!["acc_nbr"]),
        (
            "/v1/accounts/13800138000/scores?after=nonsense&limit=0&cursor=%25",
            vec!["after", "limit", "cursor"],
        ),
        ("/v1/accounts/13800138000/scores?limit=101", vec!["limit"]),
        (
            "/v1/accounts/13800138000/scores?limit=1&limit=2",
            vec!["query"],
        ),
        ("/graderesult", vec!["phoneNum"]),
        (
            "/graderesult?phoneNum=abc&limit=x",
            vec!["phoneNum", "limit"],
        ),
    ];
    for (path, expected) in cases {
        let response = warp::test::request().path(path).reply(&app()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(response.body()), "invalid_query", "{path}");
        assert_eq!(error_fields(response.body()), expected, "{path}");
    }
}

#[tokio::test]
async fn a_results_query_without_a_results_database_is_a_503() {
    for (path, account) in [
        ("/v1/accounts/13800138000/scores", "13800138000"),
        (
            "/v1/accounts/%2B8613800138000/scores?limit=5",
            "+8613800138000",
        ),
        ("/graderesult?phoneNum=13800138000", "13800138000"),
    ] {
        let response = warp::test::request()
            .path(path)
            .header("authorization", format!("Bearer {}", token_for(account)))
            .reply(&app())
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(error_code(response.body()), "results_unavailable", "{path}");
    }
}

#[tokio::test]
async fn the_scoring_page_offers_exactly_the_grades_the_rules_accept() {
    let mut state = state();
    let rules = ValidationRules::new(r"^[0-9]{5,20}$", 0, 10, 200).expect("valid rules");
    state.pages = Arc::new(Pages::new(&rules));
    let response = warp::test::request().path("/").reply(&routes(state)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = std::str::from_utf8(response.body()).expect("UTF-8");
    assert!(html.contains(r#"data-grade-min="0" data-grade-max="10""#));
    assert!(html.contains(r#"data-text-max="200""#));
    assert!(!html.contains("{{"), "every placeholder is filled");
}

#[tokio::test]
async fn assets_are_served_with_their_media_type_and_unknown_ones_are_404() {
    for (path, media_type) in [
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/score.js", "text/javascript; charset=utf-8"),
        ("/assets/results.js", "text/javascript; charset=utf-8"),
        ("/results", "text/html; charset=utf-8"),
    ] {
        let response = warp::test::request().path(path).reply(&app()).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], media_type, "{path}");
        assert!(!response.body().is_empty(), "{path}");
    }
    let response = warp::test::request()
        .path("/assets/../Cargo.toml")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = warp::test::request()
        .path("/assets/missing.js")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response.body()), "not_found");
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-api"))
        .arg("--help")
        .env(
            "SCORES_QUERY_DATABASE_URL",
            "mysql://a:s3cret-db@db.example/scores",
        )
        .env("SCORES_KAFKA_OPTIONS", "sasl.password=s3cret-kafka")
        .env(
            "SCORES_RESULTS_TOKEN_KEYS",
            "k1:s3cret-results-key-s3cret-results-key",
        )
        .env("SCORES_ACCOUNT_PEPPER", HELP_PEPPER)
        .output()
        .expect("running ingest-api --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ingest-api --help failed");
    assert!(help.contains("SCORES_QUERY_DATABASE_URL"), "{help}");
    assert!(help.contains("SCORES_ACCOUNT_PEPPER"), "{help}");
    assert!(
        !help.contains("s3cret"),
        "--help prints a secret from the environment:\n{help}"
    );
    assert!(
        !help.contains(HELP_PEPPER),
        "--help prints the account pepper from the environment:\n{help}"
    );
}

/// A valid pepper (32 bytes) that must not show in `--help`.
const HELP_PEPPER: &str = "aGVscC1wZXBwZXItaGVscC1wZXBwZXItaGVscC1wZXA=";

#[tokio::test]
async fn a_key_reused_for_another_body_is_a_422_at_both_doors_even_after_an_unknown_write() {
    // The broker is unreachable here: the first body's publish fails with a
    // 503, yet the key keeps its meaning, since that event may be in the log.
    let app = app();
    let v1 = |grade1: u8| {
        warp::test::request()
            .method("POST")
            .path("/v1/scores")
            .header("content-type", "application/json")
            .header("idempotency-key", "rating-0001")
            .body(format!(
                r#"{{"acc_nbr":"13800138000","grade1":{grade1},"grade2":4,"grade3":3}}"#
            ))
    };
    let first = v1(5).reply(&app).await;
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    let conflict = v1(1).reply(&app).await;
    assert_eq!(conflict.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(conflict.body()), "idempotency_conflict");
    let retry = v1(5).reply(&app).await;
    assert_eq!(
        retry.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the same body is a retry, tried again"
    );

    let legacy = |grade1: u8| {
        warp::test::request()
            .method("POST")
            .path("/score")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", "rating-0002")
            .body(format!(
                "acc_nbr=%2213800138000%22&grade1={grade1}&grade2=4&grade3=3"
            ))
    };
    assert_eq!(
        legacy(5).reply(&app).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let conflict = legacy(2).reply(&app).await;
    assert_eq!(conflict.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(conflict.headers()["x-error-code"], "idempotency_conflict");
}

/// The answer to a results read, as bytes that must not differ between
/// refusals: status, body and the headers a client sees.
async fn read(path: &str, authorization: Option<String>) -> (u16, Vec<u8>, String, String) {
    let mut request = warp::test::request().path(path);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.reply(&app()).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().expect("ASCII").to_owned())
            .unwrap_or_default()
    };
    (
        response.status().as_u16(),
        response.body().to_vec(),
        header("www-authenticate"),
        header("cache-control"),
    )
}

#[tokio::test]
async fn a_results_read_without_a_valid_token_for_its_account_is_refused_the_same_way_every_time() {
    let other = token_for("13900000000");
    let own = token_for("13800138000");
    let tampered = {
        let mut bytes = own.clone().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let refusals: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("another account's token", Some(format!("Bearer {other}"))),
        ("a tampered token", Some(format!("Bearer {tampered}"))),
        ("garbage", Some("Bearer not-a-token".to_owned())),
        ("another scheme", Some(format!("Basic {own}"))),
    ];
    let mut v1_answers = Vec::new();
    let mut legacy_answers = Vec::new();
    for (case, authorization) in &refusals {
        let v1 = read("/v1/accounts/13800138000/scores", authorization.clone()).await;
        assert_eq!(v1.0, 401, "{case}");
        assert_eq!(error_code(&v1.1), "unauthorized", "{case}");
        assert!(v1.2.starts_with("Bearer"), "{case}: {}", v1.2);
        assert_eq!(v1.3, "no-store", "{case}");
        v1_answers.push(v1);

        let legacy = read("/graderesult?phoneNum=13800138000", authorization.clone()).await;
        assert_eq!(legacy.0, 401, "{case}");
        let toast: String = serde_json::from_slice(&legacy.1).expect("a JSON string");
        assert_eq!(toast, "請在評分後查看結果", "{case}");
        legacy_answers.push(legacy);
    }
    for (case, query) in [
        (
            "a token parameter for another account",
            format!("&token={other}"),
        ),
        ("a tampered token parameter", format!("&token={tampered}")),
    ] {
        let legacy = read(&format!("/graderesult?phoneNum=13800138000{query}"), None).await;
        legacy_answers.push(legacy);
        assert_eq!(legacy_answers.last().unwrap().0, 401, "{case}");
    }
    assert!(
        v1_answers.windows(2).all(|pair| pair[0] == pair[1]),
        "every refusal is answered alike: {v1_answers:?}"
    );
    assert!(
        legacy_answers.windows(2).all(|pair| pair[0] == pair[1]),
        "every refusal is answered alike: {legacy_answers:?}"
    );

    // The account's own token gets past the check (to the missing database).
    for (path, authorization) in [
        (
            "/v1/accounts/13800138000/scores".to_owned(),
            Some(format!("Bearer {own}")),
        ),
        (
            format!("/graderesult?phoneNum=13800138000&token={own}"),
            None,
        ),
        (
            "/graderesult?phoneNum=13800138000".to_owned(),
            Some(format!("bearer {own}")),
        ),
    ] {
        let (status, body, _, _) = read(&path, authorization).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(error_code(&body), "results_unavailable", "{path}");
    }
}

#[tokio::test]
async fn refused_reads_beyond_the_clients_limit_are_a_429_and_valid_ones_still_pass() {
    let mut state = state();
    state.limits = Arc::new(ingest_api::limits::Limits::new(
        &<Config as clap::Parser>::parse_from([
            "ingest-api",
            "--rate-limit-per-client-per-minute",
            "0",
            "--rate-limit-refused-reads-per-client-per-minute",
            "10",
        ]),
    ));
    let app = routes(state);
    let prober: std::net::SocketAddr = "203.0.113.77:40000".parse().unwrap();
    let read = |client: std::net::SocketAddr, authorization: Option<String>| {
        let mut request = warp::test::request()
            .path("/v1/accounts/13800138000/scores")
            .remote_addr(client);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(read(prober, None).reply(&app).await.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429],
        "a burst of 5 refusals"
    );
    let limited = read(prober, None).reply(&app).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_code(limited.body()), "rate_limited");

    let valid = read(prober, Some(format!("Bearer {}", token_for("13800138000"))))
        .reply(&app)
        .await;
    assert_eq!(
        valid.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a valid token still gets past the check (to the missing database)"
    );
    let bystander: std::net::SocketAddr = "203.0.113.78:40000".parse().unwrap();
    assert_eq!(
        read(bystander, None).reply(&app).await.status(),
        StatusCode::UNAUTHORIZED,
        "other clients keep their own count"
    );
}

#[test]
fn the_api_refuses_to_start_without_a_results_token_key() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-api"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SCORES_") {
            command.env_remove(name);
        }
    }
    let output = command
        .env("SCORES_HTTP_ADDR", "127.0.0.1:0")
        .env("SCORES_METRICS_ADDR", "127.0.0.1:0")
        .env("SCORES_KAFKA_BROKERS", "127.0.0.1:1")
        .output()
        .expect("running ingest-api");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("SCORES_RESULTS_TOKEN_KEYS is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("head -c 32 /dev/urandom | base64"),
        "{stderr}"
    );

    let short = command
        .env("SCORES_RESULTS_TOKEN_KEYS", "k1:dG9vLXNob3J0")
        .output()
        .expect("running ingest-api");
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(
        !short.status.success(),
        "it started with a short key: {stderr}"
    );
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    assert!(
        !stderr.contains("dG9vLXNob3J0"),
        "the key is echoed: {stderr}"
    );
}

#[test]
fn the_api_refuses_to_start_without_an_account_pepper() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-api"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SCORES_") {
            command.env_remove(name);
        }
    }
    let mut api = command
        .env("SCORES_HTTP_ADDR", "127.0.0.1:0")
        .env("SCORES_METRICS_ADDR", "127.0.0.1:0")
        .env("SCORES_KAFKA_BROKERS", "127.0.0.1:1")
        .env("SCORES_RESULTS_TOKEN_KEYS", TEST_KEYS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ingest-api");
    // It must exit at once; one that started would serve until stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = api.try_wait().expect("its status") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = api.kill();
            let _ = api.wait();
            panic!("ingest-api started without an account pepper");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut api.stderr.take().expect("its stderr"), &mut stderr)
        .expect("reading its stderr");
    assert!(!status.success(), "it exited successfully: {stderr}");
    assert!(
        stderr.contains("no account pepper: set SCORES_ACCOUNT_PEPPER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("head -c 32 /dev/urandom | base64"),
        "{stderr}"
    );
}
