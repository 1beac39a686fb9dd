//! Results are private: against the real pipeline (Kafka, MariaDB through
//! the read-only account, the projector), only a request that brings the
//! results token a submission for the account was answered reads it. Every
//! other read (no token, another account's, expired, tampered, signed by a
//! retired key) is refused with one and the same answer, whether or not the
//! number has ratings; refusals have a per-client limit and a metric.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ingest_api::read_token::ResultsTokens;
use pipeline_tests::http_client;
use pipeline_tests::processes::{Service, free_port, wait_for_port};
use pipeline_tests::{
    RunningApi, RunningProjector, TestDatabase, TestTopic, legacy_form_body, metric_sample,
    patient_results_config, results_token_for, scrape, test_account, test_results_tokens,
    unique_group,
};
use reqwest::Client;
use serde_json::{Value, json};

/// Another key, 32 bytes, for keys that rotate.
const OTHER_KEY: &str = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktb3RoZXI=";

/// What a client sees of an answer: status, headers (but the date and the
/// request id, which differ on every answer) and the body's bytes.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// GETs `path` from `api`, with `bearer` as `Authorization: Bearer` if any.
async fn read(client: &Client, api: &RunningApi, path: &str, bearer: Option<&str>) -> Answer {
    let mut request = client.get(api.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().expect("ASCII").to_owned(),
            )
        })
        .collect();
    let body = response.bytes().await.expect("a body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// The tokens a `/score` answer carries: (consistency, results).
async fn rate_legacy(client: &Client, api: &RunningApi, account: &str) -> (String, String) {
    let response = client
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(legacy_form_body(
            account,
            ["5", "4", "3"],
            ["私密的評語", "", ""],
        ))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().expect("ASCII").to_owned();
    (header("x-consistency-token"), header("x-results-token"))
}

/// The tokens a `/v1/scores` answer carries: (consistency, results).
async fn rate_v1(client: &Client, api: &RunningApi, account: &str) -> (String, String) {
    let response = client
        .post(api.url("/v1/scores"))
        .json(&json!({"acc_nbr": account, "grade1": 3, "grade2": 3, "grade3": 3, "txt1": "也是私密的"}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 202);
    let header = response.headers()["x-results-token"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body["results_token"],
        header.as_str(),
        "header and body agree"
    );
    (
        body["consistency_token"]
            .as_str()
            .expect("a token")
            .to_owned(),
        header,
    )
}

/// `token` with one character changed (one inside the MAC).
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let index = bytes.len() - 6;
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn only_the_token_of_an_accounts_submission_reads_it_and_every_other_read_gets_one_answer() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(patient_results_config(&topic.kafka, &database)).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let rated = "13600000001";
    let unrated = "13600000002";
    let someone_else = "13600000003";

    // The rated account rates through both doors; each answer's token reads
    // it through both results endpoints.
    let (legacy_after, legacy_token) = rate_legacy(&client, &api, rated).await;
    let (v1_after, v1_token) = rate_v1(&client, &api, rated).await;
    let (_, others_token) = rate_v1(&client, &api, someone_else).await;
    for (token, after) in [
        (legacy_token.as_str(), &v1_after),
        (v1_token.as_str(), &legacy_after),
    ] {
        let page = read(
            &client,
            &api,
            &format!("/v1/accounts/{rated}/scores?after={v1_after}"),
            Some(token),
        )
        .await;
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        assert_eq!(page.json()["summary"]["submissions"], 2);
        let legacy = read(
            &client,
            &api,
            &format!("/graderesult?phoneNum={rated}&after={after}&token={token}"),
            None,
        )
        .await;
        assert_eq!(legacy.status, 200);
        assert!(legacy.json()["count"].as_i64() >= Some(1));
        assert_eq!(legacy.json()["grades"][0]["acc_nbr"], rated);
        let by_header = read(
            &client,
            &api,
            &format!("/graderesult?phoneNum={rated}&after={v1_after}"),
            Some(token),
        )
        .await;
        assert_eq!(
            by_header.status, 200,
            "the token as a header at /graderesult"
        );
        assert_eq!(by_header.json()["count"], 2);
    }

    // Every way of asking without the right token, for a number with
    // ratings and one without.
    let tokens = test_results_tokens();
    let retired = ResultsTokens::parse(
        Some(&format!("retired:{OTHER_KEY}")),
        Duration::from_secs(3600),
    )
    .expect("valid keys");
    let mut v1_refusals = Vec::new();
    let mut legacy_refusals = Vec::new();
    for account in [rated, unrated] {
        let number = test_account(account);
        let own = tokens.issue(&number);
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no token", None),
            ("another account's token", Some(others_token.clone())),
            (
                "an expired token",
                Some(tokens.issue_expiring_at(&number, unix_now() - 1)),
            ),
            ("a tampered token", Some(tampered(&own))),
            (
                "a token signed by a retired key",
                Some(retired.issue(&number)),
            ),
            ("not a token", Some("bm90IGEgdG9rZW4".to_owned())),
        ];
        for (case, token) in cases {
            let v1 = read(
                &client,
                &api,
                &format!("/v1/accounts/{account}/scores"),
                token.as_deref(),
            )
            .await;
            assert_eq!(v1.status, 401, "{account}, {case}");
            assert_eq!(
                v1.json()["error"]["code"],
                "unauthorized",
                "{account}, {case}"
            );
            v1_refusals.push((account, case, v1));

            let query = token
                .as_deref()
                .map(|token| format!("&token={token}"))
                .unwrap_or_default();
            let legacy = read(
                &client,
                &api,
                &format!("/graderesult?phoneNum={account}{query}"),
                None,
            )
            .await;
            assert_eq!(legacy.status, 401, "{account}, {case}");
            assert_eq!(
                legacy.json(),
                json!("請在評分後查看結果"),
                "{account}, {case}"
            );
            legacy_refusals.push((account, case, legacy));
        }
    }
    for refusals in [&v1_refusals, &legacy_refusals] {
        let (first_account, first_case, first) = &refusals[0];
        for (account, case, answer) in refusals.iter() {
            assert_eq!(
                answer, first,
                "{account}, {case} is answered otherwise than {first_account}, {first_case}"
            );
        }
    }
    assert!(
        v1_refusals[0].2.headers["www-authenticate"].starts_with("Bearer"),
        "{:?}",
        v1_refusals[0].2.headers
    );
    // The refusals read nothing: the rated account still has its two rows,
    // and nothing was said about them.
    for (_, _, answer) in v1_refusals.iter().chain(&legacy_refusals) {
        let body = String::from_utf8_lossy(&answer.body);
        assert!(!body.contains("私密"), "{body}");
        assert!(!body.contains(rated), "{body}");
    }

    // A token for the unrated number (as a submission for it would be
    // answered) reads its empty results: a valid token is all it takes.
    let empty = read(
        &client,
        &api,
        &format!("/v1/accounts/{unrated}/scores"),
        Some(&results_token_for(unrated)),
    )
    .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["summary"]["submissions"], 0);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_rotated_key_keeps_reading_until_it_is_retired_then_its_tokens_are_refused() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let account = "13600000011";
    let old_keys = pipeline_tests::TEST_RESULTS_TOKEN_KEYS.to_owned();
    let with_keys = |keys: String| ingest_api::Config {
        results_token_keys: Some(keys.into()),
        ..patient_results_config(&topic.kafka, &database)
    };

    let before = RunningApi::start_with(with_keys(old_keys.clone())).await;
    let (after, old_token) = rate_v1(&client, &before, account).await;
    before.stop().await;

    // Rotation: the new key first (it signs), the old one still accepted.
    let rotating = RunningApi::start_with(with_keys(format!("new:{OTHER_KEY},{old_keys}"))).await;
    let path = format!("/v1/accounts/{account}/scores?after={after}");
    let page = read(&client, &rotating, &path, Some(&old_token)).await;
    assert_eq!(page.status, 200, "the old key's token during the rotation");
    let (_, new_token) = rate_legacy(&client, &rotating, account).await;
    assert_ne!(new_token, old_token);
    rotating.stop().await;

    // The old key retired: its tokens are refused like any other refusal;
    // the new key's still read.
    let retired = RunningApi::start_with(with_keys(format!("new:{OTHER_KEY}"))).await;
    let refused = read(&client, &retired, &path, Some(&old_token)).await;
    let no_token = read(&client, &retired, &path, None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused, no_token,
        "a retired key's token is refused like no token"
    );
    let legacy = read(
        &client,
        &retired,
        &format!("/graderesult?phoneNum={account}&token={old_token}"),
        None,
    )
    .await;
    assert_eq!(legacy.status, 401);
    let page = read(&client, &retired, &path, Some(&new_token)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.json()["summary"]["submissions"], 2);

    retired.stop().await;
    projector.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn refused_reads_beyond_the_clients_limit_are_a_429_and_counted_while_valid_reads_go_on() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let metrics_port = free_port();
    // The keys as a secret file, as compose and systemd hand them over.
    let keys_file = std::env::temp_dir().join(format!(
        "results-token-keys-{}-{metrics_port}",
        std::process::id()
    ));
    std::fs::write(
        &keys_file,
        format!("{}\n", pipeline_tests::TEST_RESULTS_TOKEN_KEYS),
    )
    .expect("writing the key file");
    // The binary, so that the metrics are this process's alone.
    let (api, base) = Service::ingest_api(&[
        (
            "SCORES_RESULTS_TOKEN_KEYS_FILE",
            keys_file.display().to_string(),
        ),
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
        ("SCORES_QUERY_DATABASE_URL", database.reader_url.clone()),
        (
            "SCORES_RATE_LIMIT_REFUSED_READS_PER_CLIENT_PER_MINUTE",
            "10".to_owned(),
        ),
    ]);
    wait_for_port(metrics_port, Duration::from_secs(30), "the API's metrics");
    let client = http_client();
    let account = "13600000021";
    let submitted = client
        .post(format!("{base}/v1/scores"))
        .json(&json!({"acc_nbr": account, "grade1": 4, "grade2": 4, "grade3": 4}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(submitted.status(), 202);
    let token = submitted.headers()["x-results-token"]
        .to_str()
        .expect("ASCII")
        .to_owned();

    // A prober: 10 a minute, a burst of 5, then 429.
    let mut statuses = Vec::new();
    for index in 0..7 {
        let response = client
            .get(format!("{base}/graderesult?phoneNum=1360000{index:04}"))
            .send()
            .await
            .expect("the API answers");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    // The same client with the account's own token still reads.
    let own = client
        .get(format!("{base}/v1/accounts/{account}/scores"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(own.status(), 200);
    // A token made with the key from the file reads too: the file is what
    // the API signs with.
    let minted = client
        .get(format!("{base}/v1/accounts/{account}/scores"))
        .bearer_auth(results_token_for(account))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(minted.status(), 200);

    let metrics = scrape(([127, 0, 0, 1], metrics_port).into()).await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"results_reads_refused_total{route="/graderesult",status="401"}"#
        ),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            r#"results_reads_refused_total{route="/graderesult",status="429"}"#
        ),
        2.0,
        "{metrics}"
    );
    assert!(!metrics.contains("1360000"), "no phone number in a label");

    drop(api);
    let _ = std::fs::remove_file(&keys_file);
    database.drop_database().await;
}
