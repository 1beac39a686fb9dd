//! Metrics and request ids on the real binaries: both services are scraped
//! (each on its metrics address, never the API's public one) before and
//! after traffic, and the key series move as they should; every
//! series the Grafana dashboard queries exists; a request id reaches the
//! response, the log lines and the event.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use pipeline_tests::processes::{Service, free_port, wait_for_port};
use pipeline_tests::{TestDatabase, TestTopic, eventually, legacy_form_body, unique_group};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../deploy/grafana/score-pipeline.json");

/// One scrape: `name{labels}` → value, and the metric names with their
/// types.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    async fn of(url: &str) -> Self {
        let response = reqwest::get(url)
            .await
            .expect("the metrics endpoint answers");
        assert_eq!(response.status(), 200, "{url}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.expect("a body");
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut parts = declaration.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                samples.insert(series.to_owned(), value.parse().expect("a number"));
            }
        }
        Self { samples, types }
    }

    /// The value of `series` (`name{label="…",…}` exactly as exposed), 0
    /// when absent.
    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include all of
    /// `labels` (`key="value"` pairs).
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                series_name == name && labels.iter().all(|label| rest.contains(label))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// Metric names a PromQL expression uses (identifiers followed by `{`, `[`
/// or `)`), with histogram suffixes taken off.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut start = None;
    for (index, byte) in bytes.iter().enumerate().chain([(bytes.len(), &b' ')]) {
        let word = byte.is_ascii_alphanumeric() || *byte == b'_';
        match (start, word) {
            (None, true) => start = Some(index),
            (Some(from), false) => {
                let name = &expr[from..index];
                if name.contains('_') && matches!(byte, b'{' | b'[' | b')') {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    names.insert(base.to_owned());
                }
                start = None;
            }
            _ => {}
        }
    }
    names
}

#[tokio::test]
async fn both_services_expose_metrics_that_move_with_traffic_and_the_dashboard_queries_them() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let metrics_port = free_port();
    let projector = Service::projector(&[
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_DATABASE_URL", database.url.clone()),
        ("SCORES_CONSUMER_GROUP", unique_group()),
        ("SCORES_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    ]);
    wait_for_port(
        metrics_port,
        Duration::from_secs(30),
        "the projector's metrics",
    );
    let api_metrics_port = free_port();
    let (mut api, base) = Service::ingest_api(&[
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        (
            "SCORES_METRICS_ADDR",
            format!("127.0.0.1:{api_metrics_port}"),
        ),
        ("SCORES_QUERY_DATABASE_URL", database.reader_url.clone()),
        ("SCORES_RATE_LIMIT_PER_CLIENT_PER_MINUTE", "0".to_owned()),
        ("SCORES_RATE_LIMIT_PER_ACCOUNT_PER_MINUTE", "0".to_owned()),
        ("SCORES_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "ingest_api=debug".to_owned()),
    ]);
    wait_for_port(
        api_metrics_port,
        Duration::from_secs(30),
        "the ingest API's metrics",
    );
    // On its own address only: the public one does not serve it.
    let public = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("the API answers");
    assert_eq!(public.status(), 404, "/metrics on the public address");
    let api_metrics = format!("http://127.0.0.1:{api_metrics_port}/metrics");
    let projector_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let before = Scrape::of(&api_metrics).await;
    assert_eq!(
        before.sum("http_requests_total", &[r#"route="/score""#]),
        0.0
    );

    // Traffic: 20 accepted submissions, one invalid, one read with a token.
    let client = reqwest::Client::new();
    let mut token = String::new();
    let mut results_token = String::new();
    for i in 0..20 {
        let response = client
            .post(format!("{base}/score"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(legacy_form_body(
                &format!("1370000{i:04}"),
                ["5", "4", "3"],
                ["", "", ""],
            ))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status(), 200);
        token = response.headers()["x-consistency-token"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        results_token = response.headers()["x-results-token"]
            .to_str()
            .expect("ASCII")
            .to_owned();
    }
    let invalid = client
        .post(format!("{base}/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("acc_nbr=%22nope%22&grade1=9")
        .send()
        .await
        .expect("the API answers");
    assert_eq!(invalid.status(), 400);
    let read = client
        .get(format!(
            "{base}/graderesult?phoneNum=13700000019&after={token}&token={results_token}"
        ))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(read.status(), 200);
    // The same token for another number: refused, and counted.
    let refused = client
        .get(format!(
            "{base}/v1/accounts/13700000018/scores?after={token}"
        ))
        .bearer_auth(&results_token)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(refused.status(), 401);
    database.await_grade_rows(20, Duration::from_secs(60)).await;

    let after = Scrape::of(&api_metrics).await;
    let score_ok = r#"http_requests_total{route="/score",method="POST",status="200"}"#;
    assert_eq!(after.value(score_ok), 20.0);
    assert_eq!(
        after.value(r#"http_requests_total{route="/score",method="POST",status="400"}"#),
        1.0
    );
    assert_eq!(
        after.value(
            r#"http_request_duration_seconds_count{route="/score",method="POST",status="200"}"#
        ),
        20.0
    );
    assert_eq!(
        after.sum("http_requests_total", &[r#"route="/graderesult""#]),
        1.0,
        "the query is counted under its route template, never its path"
    );
    assert_eq!(
        after.value(
            r#"results_reads_refused_total{route="/v1/accounts/{acc_nbr}/scores",status="401"}"#
        ),
        1.0
    );
    assert!(
        !after
            .samples
            .keys()
            .any(|series| series.contains("1370000")),
        "no phone number in any label"
    );
    assert_eq!(
        after.value(r#"kafka_produce_total{outcome="persisted"}"#),
        20.0
    );
    assert_eq!(
        after.value(r#"kafka_produce_duration_seconds_count{outcome="persisted"}"#),
        20.0
    );
    assert_eq!(after.value("kafka_produce_in_flight"), 0.0);
    assert!(after.samples.contains_key("kafka_producer_queue_messages"));
    assert_eq!(
        after.value(r#"results_queries_total{consistency="current"}"#),
        1.0
    );

    // The projector: counters at once, lag and freshness once sampled.
    let sampled = eventually(Duration::from_secs(30), || async {
        let scrape = Scrape::of(&projector_metrics).await;
        scrape.value(r#"projector_events_projected_total{projection="grade"}"#) == 20.0
            && scrape.sum("projector_lag_events", &[r#"projection="grade""#]) == 0.0
            && scrape
                .samples
                .keys()
                .any(|series| series.starts_with("projector_lag_events{"))
            && scrape
                .samples
                .contains_key(r#"projector_last_event_age_seconds{projection="grade"}"#)
    })
    .await;
    let projected = Scrape::of(&projector_metrics).await;
    assert!(
        sampled,
        "projector metrics did not settle: {:?}",
        projected.samples
    );
    assert!(projected.value(r#"projector_batches_total{projection="grade"}"#) >= 1.0);
    assert!(
        projected.value(r#"projector_apply_duration_seconds_count{projection="grade"}"#) >= 1.0
    );
    assert!(projected.sum("projector_batch_size_events_count", &[]) >= 1.0);
    assert_eq!(
        projected.value(r#"projector_events_projected_total{projection="account_summary"}"#),
        20.0
    );

    // A bad event: counted, and open until resolved.
    topic.produce_raw(0, "13700000000", b"not an event").await;
    let dead = eventually(Duration::from_secs(30), || async {
        let scrape = Scrape::of(&projector_metrics).await;
        scrape.value(r#"projector_dead_letters_total{projection="grade"}"#) == 1.0
            && scrape.value(r#"projector_dead_letters_open{projection="grade"}"#) == 1.0
    })
    .await;
    assert!(dead, "the dead letter shows in the metrics");

    // Every series the dashboard draws exists in one of the two scrapes.
    let projected = Scrape::of(&projector_metrics).await;
    let exposed: BTreeSet<&String> = after.types.keys().chain(projected.types.keys()).collect();
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().expect("an expr")));
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exposed.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no service exposes"
    );

    drop(projector);
    api.terminate(Duration::from_secs(15));
    database.drop_database().await;
}

#[tokio::test]
async fn a_request_id_is_answered_logged_and_carried_into_the_event() {
    let topic = TestTopic::create(1).await;
    let (mut api, base) = Service::ingest_api(&[
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "ingest_api=debug".to_owned()),
    ]);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v1/scores"))
        .header("x-request-id", "nginx-7f3a9c")
        .json(&serde_json::json!({"acc_nbr": "13712345678", "grade1": 5, "grade2": 5, "grade3": 5}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "nginx-7f3a9c");
    // Without one, the API makes one up.
    let made_up = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("the API answers");
    let made_up = made_up.headers()["x-request-id"].to_str().expect("ASCII");
    assert_eq!(made_up.len(), 32, "{made_up}");

    let payloads = topic.payloads().await;
    assert_eq!(payloads.len(), 1);
    let event: Value = serde_json::from_slice(&payloads[0]).expect("a JSON event");
    assert_eq!(event["request_id"], "nginx-7f3a9c");

    api.terminate(Duration::from_secs(15));
    let log = api.log_tail_all();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(!lines.is_empty(), "the log is JSON lines:\n{log}");
    let appended = lines
        .iter()
        .find(|line| line["message"] == "event appended")
        .unwrap_or_else(|| panic!("no 'event appended' line:\n{log}"));
    assert!(
        appended.to_string().contains("nginx-7f3a9c"),
        "the line carries the request id: {appended}"
    );
    assert!(
        !log.contains("13712345678"),
        "the phone number is masked:\n{log}"
    );
}
