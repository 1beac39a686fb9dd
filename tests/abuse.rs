//! Abuse limits over real HTTP: slow clients are cut off, load beyond the
//! in-flight cap is shed, and rates are limited per client address (behind
//! trusted proxies only) and per account number.

use std::time::{Duration, Instant};

use pipeline_tests::{RunningApi, TestTopic, api_config};
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
    config.max_in_flight = 1;
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
    config.rate_limit_per_account_per_minute = 2;
    let api = RunningApi::start_with(config).await;

    let client = reqwest::Client::new();
    for _ in 0..2 {
        let ok = client
            .post(api.url("/v1/scores"))
            .json(&submission("13800138000"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 202);
    }
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
    assert_eq!(topic.record_count().await, 3);
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
    // apart by X-Forwarded-For.
    let mut config = api_config(&topic.kafka);
    config.rate_limit_per_client_per_minute = 2;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let behind_proxy = RunningApi::start_with(config.clone()).await;
    for _ in 0..2 {
        assert_eq!(
            send(&behind_proxy, "198.51.100.1").await.unwrap().status(),
            400
        );
    }
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
    assert_eq!(send(&direct, "198.51.100.2").await.unwrap().status(), 400);
    assert_eq!(
        send(&direct, "198.51.100.3").await.unwrap().status(),
        429,
        "a spoofed header is no escape"
    );
    direct.stop().await;
}
