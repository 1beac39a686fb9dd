//! Abuse limits over real HTTP: slow clients and idle kept-alive
//! connections are cut off, connections beyond the cap get a canned 503,
//! load beyond the in-flight budgets is shed (and reads never take the
//! submissions' places), and rates are limited per client address (behind
//! trusted proxies only) and per account number.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipeline_tests::{RunningApi, TestTopic, api_config, eventually, metric_sample, scrape};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn submission(acc_nbr: &str) -> Value {
    json!({"acc_nbr": acc_nbr, "grade1": 5, "grade2": 4, "grade3": 3})
}

/// Reads until the server closes the connection; returns what it sent and
/// how long that took.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept a slow client for over 15 s");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    config.header_read_timeout_ms = 500;
    let api = RunningApi::start_with(config).await;

    let mut stream = TcpStream::connect(api.address).await.unwrap();
    stream
        .write_all(b"POST /score HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    let (_, waited) = read_until_closed(&mut stream).await;
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    api.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_its_body_too_slowly_gets_408_and_nothing_is_appended() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    config.body_read_timeout_ms = 500;
    let api = RunningApi::start_with(config).await;

    let mut stream = TcpStream::connect(api.address).await.unwrap();
    stream
        .write_all(b"POST /v1/scores HTTP/1.1\r\nHost: slow\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc_nbr\":")
        .await
        .unwrap();
    let (answer, waited) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    assert_eq!(topic.record_count().await, 0);
    api.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_are_shed_with_503_at_once() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    config.max_in_flight_writes = 1;
    let api = RunningApi::start_with(config).await;

    // A request whose body is still coming holds the only place.
    let mut holding = TcpStream::connect(api.address).await.unwrap();
    holding
        .write_all(b"POST /v1/scores HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let started = Instant::now();
    let shed = client
        .post(api.url("/v1/scores"))
        .json(&submission("13800138001"))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shedding must not wait"
    );
    assert_eq!(
        shed.json::<Value>().await.unwrap()["error"]["code"],
        "overloaded"
    );

    // The held request completes; its place is free again.
    holding.write_all(b"}").await.unwrap();
    let (answer, _) = read_until_closed(&mut holding).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let again = client
        .post(api.url("/v1/scores"))
        .json(&submission("13800138001"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    api.stop().await;
}

#[tokio::test]
async fn an_account_over_its_rate_gets_429_and_its_event_is_not_appended() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    // 2 a minute: a burst of one (5 s worth, rounded up), then one every 30 s.
    config.rate_limit_per_account_per_minute = 2;
    let api = RunningApi::start_with(config).await;

    let client = reqwest::Client::new();
    let ok = client
        .post(api.url("/v1/scores"))
        .json(&submission("13800138000"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let limited = client
        .post(api.url("/v1/scores"))
        .json(&submission("13800138000"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let legacy = client
        .post(api.url("/score"))
        .form(&[
            ("acc_nbr", "\"13800138000\""),
            ("grade1", "5"),
            ("grade2", "5"),
            ("grade3", "5"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 429);
    assert_eq!(legacy.text().await.unwrap(), "\"數據提交失敗\"");
    let other = client
        .post(api.url("/v1/scores"))
        .json(&submission("13900139000"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202, "other accounts are not affected");
    assert_eq!(topic.record_count().await, 2);
    api.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let topic = TestTopic::create(1).await;
    let send = |api: &RunningApi, forwarded_for: &'static str| {
        reqwest::Client::new()
            .post(api.url("/v1/scores"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({}))
            .send()
    };

    // Behind a trusted proxy (this test's own address), clients are told
    // apart by X-Forwarded-For. 2 a minute is a burst of one.
    let mut config = api_config(&topic.kafka);
    config.rate_limit_per_client_per_minute = 2;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let behind_proxy = RunningApi::start_with(config.clone()).await;
    assert_eq!(
        send(&behind_proxy, "198.51.100.1").await.unwrap().status(),
        400
    );
    assert_eq!(
        send(&behind_proxy, "198.51.100.1").await.unwrap().status(),
        429
    );
    assert_eq!(
        send(&behind_proxy, "198.51.100.2").await.unwrap().status(),
        400,
        "another client"
    );
    behind_proxy.stop().await;

    // Without trust, the header is ignored: every request is this address's.
    config.trusted_proxies = Vec::new();
    let direct = RunningApi::start_with(config).await;
    assert_eq!(send(&direct, "198.51.100.1").await.unwrap().status(), 400);
    assert_eq!(
        send(&direct, "198.51.100.2").await.unwrap().status(),
        429,
        "a spoofed header is no escape"
    );
    direct.stop().await;
}

/// Splits a raw HTTP/1.1 answer into its head (status line and headers) and
/// body.
fn head_and_body(answer: &str) -> (&str, &str) {
    answer.split_once("\r\n\r\n").unwrap_or((answer, ""))
}

/// The value of `name` (case-insensitive) in a raw answer's head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The value of `series` in the scrape of `metrics`, 0 when absent.
async fn scraped(metrics: std::net::SocketAddr, series: &str) -> f64 {
    metric_sample(&scrape(metrics).await, series)
}

#[tokio::test]
async fn a_connection_beyond_the_cap_gets_a_canned_503_and_is_closed() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    config.max_connections = 4;
    let api = RunningApi::start_with(config).await;
    let refused_before = scraped(api.metrics_address, "http_connections_refused_total").await;

    // Four idle connections take every place (the header read timeout, 10 s
    // in the tests' settings, is far off).
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(TcpStream::connect(api.address).await.unwrap());
    }
    let mut fifth = TcpStream::connect(api.address).await.unwrap();
    let (answer, _) = read_until_closed(&mut fifth).await;
    let (head, body) = head_and_body(&answer);
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{answer}"
    );
    assert_eq!(header(head, "connection"), Some("close"), "{head}");
    assert_eq!(header(head, "retry-after"), Some("1"), "{head}");
    assert_eq!(
        header(head, "content-type"),
        Some("application/json"),
        "{head}"
    );
    assert_eq!(
        header(head, "content-length"),
        Some(body.len().to_string().as_str()),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        scraped(api.metrics_address, "http_connections_refused_total").await > refused_before,
        "the refusal is counted"
    );

    // A request on an open connection is still served.
    let mut first = open.pop().unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Once connections close, new ones are served again.
    drop(open);
    let served_again = eventually(Duration::from_secs(10), || async {
        reqwest::Client::new()
            .get(api.url("/healthz"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(served_again, "closed connections give their places back");
    api.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let topic = TestTopic::create(1).await;
    let mut config = api_config(&topic.kafka);
    config.header_read_timeout_ms = 500;
    let api = RunningApi::start_with(config).await;

    let mut stream = TcpStream::connect(api.address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    // The answer comes and the connection is kept alive, then closed once
    // it has been idle for the timeout: reading to the end returns (a
    // connection kept open would hit read_until_closed's 15 s bound).
    let (answer, _) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_ne!(
        header(head_and_body(&answer).0, "connection"),
        Some("close"),
        "the answer itself keeps the connection alive: {answer}"
    );
    api.stop().await;
}

/// A stand-in for a MySQL server that accepts connections and never
/// answers: every results query waits on it until the pool gives up.
async fn silent_mysql() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, task)
}

#[tokio::test]
async fn reads_that_exhaust_their_budget_never_cost_a_submission_its_place() {
    let topic = TestTopic::create(1).await;
    let (mysql, silent) = silent_mysql().await;
    let mut config = api_config(&topic.kafka);
    config.query_database_url = Some(format!("mysql://reader:secret@{mysql}/scores"));
    // Budgets as small as the reads in flight: were reads to take the
    // submissions' places, every submission below would be shed.
    config.max_in_flight_reads = 2;
    config.max_in_flight_writes = 2;
    let api = RunningApi::start_with(config).await;

    // Reads, again and again, each held by the silent MySQL.
    let stop = Arc::new(AtomicBool::new(false));
    let reads_shed = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            // A valid token: the reads get past the check to MySQL.
            let (stop, reads_shed, url, token) = (
                stop.clone(),
                reads_shed.clone(),
                api.url("/v1/accounts/13800138000/scores"),
                pipeline_tests::results_token_for("13800138000"),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(response) = client.get(&url).bearer_auth(&token).send().await else {
                        continue;
                    };
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or_default();
                    if status == 503 && body["error"]["code"] == "overloaded" {
                        reads_shed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let reads_full = eventually(Duration::from_secs(20), || async {
        reads_shed.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(reads_full, "the reads never filled their budget");

    let client = reqwest::Client::new();
    for i in 0..10 {
        let response = client
            .post(api.url("/v1/scores"))
            .json(&submission(&format!("1390000{i:04}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "submission {i}");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        reads_shed.load(Ordering::Relaxed) > 0,
        "reads were being shed meanwhile"
    );
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(topic.record_count().await, 10);
    silent.abort();
    api.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_address_and_not_on_the_public_one() {
    let topic = TestTopic::create(1).await;
    let api = RunningApi::start(&topic.kafka).await;
    assert_ne!(api.metrics_address, api.address);

    let public = reqwest::get(api.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404);

    let private = reqwest::get(format!("http://{}/metrics", api.metrics_address))
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    let content_type = private.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = private.text().await.unwrap();
    assert!(text.contains("# TYPE"), "a Prometheus exposition:\n{text}");
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(format!("http://{}{path}", api.metrics_address))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} on the metrics address");
    }
    api.stop().await;
}

#[tokio::test]
async fn readyz_answers_from_the_background_probe_of_the_broker() {
    // Reachable: ready, on both addresses.
    let topic = TestTopic::create(1).await;
    let api = RunningApi::start(&topic.kafka).await;
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(api.url("/readyz"))
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "an API whose broker answers becomes ready");
    api.stop().await;

    // Unreachable: every one of many concurrent probes is answered 503 from
    // the stored value, none waits for a broker round trip of its own.
    let port = pipeline_tests::processes::free_port();
    let mut kafka = topic.kafka.clone();
    kafka.kafka_brokers = format!("127.0.0.1:{port}");
    let mut config = api_config(&kafka);
    config.publish_timeout_ms = 1000;
    let api = RunningApi::start_with(config).await;
    let client = reqwest::Client::new();
    let answers =
        futures::future::join_all((0..200).map(|_| client.get(api.url("/readyz")).send())).await;
    for answer in answers {
        let answer = answer.expect("answered");
        assert_eq!(answer.status(), 503);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["status"], "broker unavailable");
    }
    api.stop().await;
}
