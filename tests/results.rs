//! The results queries against the real pipeline: the ingest API reads the
//! `grade` projection through the read-only account while the projector
//! fills it from the real broker.

use std::collections::HashSet;
use std::time::Duration;

use pipeline_tests::processes::free_port;
use pipeline_tests::{
    RunningApi, RunningProjector, TestDatabase, TestTopic, api_config, api_config_with_results,
    legacy_form_body, patient_results_config, unique_group,
};
use pipeline_tests::{accepted_v1, http_client};
use reqwest::Client;
use serde_json::{Value, json};

/// Posts the mini-program's form to `/score`, exactly as `wx.request`
/// sends it, and returns the answer's consistency and results tokens.
async fn submit_legacy(
    client: &Client,
    api: &RunningApi,
    account: &str,
    grades: [&str; 3],
    texts: [&str; 3],
) -> (String, String) {
    let response = client
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("chartset", "utf-8")
        .body(legacy_form_body(account, grades, texts))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().expect("ASCII").to_owned();
    (header("x-consistency-token"), header("x-results-token"))
}

/// What a `/v1/scores` answer gives back.
struct V1Accepted {
    event_id: String,
    consistency_token: String,
    results_token: String,
}

/// Posts `body` to `/v1/scores` and returns the answer's event id,
/// consistency token and results token (header and body agree).
async fn submit_v1(api: &RunningApi, body: &Value) -> V1Accepted {
    let response = accepted_v1(api, body).await;
    let header = response.headers()["x-consistency-token"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let results_token = response.headers()["x-results-token"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["consistency_token"], header.as_str());
    assert_eq!(answer["results_token"], results_token.as_str());
    V1Accepted {
        event_id: answer["event_id"].as_str().expect("an event id").to_owned(),
        consistency_token: header,
        results_token,
    }
}

/// GETs `url` with `results_token` as `Authorization: Bearer` (none when
/// empty: the URL carries it): the status, `X-Consistency` and the JSON body.
async fn get_json(client: &Client, url: String, results_token: &str) -> (u16, String, Value) {
    let mut request = client.get(url);
    if !results_token.is_empty() {
        request = request.bearer_auth(results_token);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let consistency = response
        .headers()
        .get("x-consistency")
        .map(|value| value.to_str().expect("ASCII").to_owned())
        .unwrap_or_default();
    (
        status,
        consistency,
        response.json().await.expect("a JSON body"),
    )
}

#[tokio::test]
async fn every_submission_is_in_the_results_read_right_after_with_its_token() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(api_config_with_results(&topic.kafka, &database)).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let account = "13900000001";

    // The mini-program's own calls: the form, then /graderesult.
    let (token, results_token) =
        submit_legacy(&client, &api, account, ["5", "4", "3"], ["很好 👍", "", ""]).await;
    // As a mini-program page's URL carries it: the `token` parameter.
    let (status, consistency, results) = get_json(
        &client,
        api.url(&format!(
            "/graderesult?phoneNum={account}&after={token}&token={results_token}"
        )),
        "",
    )
    .await;
    assert_eq!((status, consistency.as_str()), (200, "current"));
    assert_eq!(results["phoneNum"], account);
    assert_eq!(results["count"], 1);
    assert_eq!(results["grades"][0]["acc_nbr"], account);
    assert_eq!(results["grades"][0]["txt1"], "很好 👍");
    assert_eq!(results["avg_grade1"], 5.0);

    // Then ten rounds of submit-and-read through /v1: each read, sent as
    // soon as the submission is acknowledged, includes it.
    let mut expected = 1;
    for round in 1..=10 {
        let accepted = submit_v1(
            &api,
            &json!({"acc_nbr": account, "grade1": 1, "grade2": 2, "grade3": 3, "txt1": format!("round {round}")}),
        )
        .await;
        let (event_id, token) = (accepted.event_id, accepted.consistency_token);
        expected += 1;
        let (status, consistency, page) = get_json(
            &client,
            api.url(&format!("/v1/accounts/{account}/scores?after={token}")),
            &accepted.results_token,
        )
        .await;
        assert_eq!(
            (status, consistency.as_str()),
            (200, "current"),
            "round {round}"
        );
        assert_eq!(page["summary"]["submissions"], expected, "round {round}");
        assert_eq!(
            page["scores"][0]["event_id"], event_id,
            "round {round}: the newest first"
        );
        assert_eq!(page["scores"][0]["txt1"], format!("round {round}"));
    }
    // The legacy door's token reads the account through /v1 too.
    let (_, consistency, page) = get_json(
        &client,
        api.url(&format!("/v1/accounts/{account}/scores")),
        &results_token,
    )
    .await;
    assert_eq!(consistency, "unchecked");
    // One 5 and ten 1s: (5 + 10) / 11.
    let average = page["summary"]["avg_grade1"].as_f64().expect("a number");
    assert!((average - 15.0 / 11.0).abs() < 1e-9, "{average}");
    assert_eq!(page["summary"]["avg_grade2"], (4.0 + 20.0) / 11.0);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_query_waits_for_the_projection_and_says_stale_when_it_does_not_get_there() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let impatient = RunningApi::start_with(ingest_api::Config {
        consistency_wait_ms: 300,
        ..api_config_with_results(&topic.kafka, &database)
    })
    .await;
    let patient = RunningApi::start_with(patient_results_config(&topic.kafka, &database)).await;
    let client = http_client();
    let account = "13900000002";
    let accepted = submit_v1(
        &impatient,
        &json!({"acc_nbr": account, "grade1": 4, "grade2": 4, "grade3": 4}),
    )
    .await;
    let (event_id, token) = (accepted.event_id, accepted.consistency_token);
    let results_token = accepted.results_token;
    let url = |api: &RunningApi| api.url(&format!("/v1/accounts/{account}/scores?after={token}"));

    // No projector runs: the answer comes after the wait, empty, and says so.
    let (status, consistency, page) = get_json(&client, url(&impatient), &results_token).await;
    assert_eq!((status, consistency.as_str()), (200, "stale"));
    assert_eq!(page["consistency"], "stale");
    assert_eq!(page["summary"]["submissions"], 0);

    // A query that is still waiting when the projector starts answers once
    // the projection has the event.
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = url(&patient);
        let results_token = results_token.clone();
        async move { get_json(&client, url, &results_token).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the query waits for the projection");
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let (status, consistency, page) = waiting.await.expect("the query task");
    assert_eq!((status, consistency.as_str()), (200, "current"));
    assert_eq!(page["scores"][0]["event_id"], event_id);

    projector.stop().await;
    impatient.stop().await;
    patient.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn pages_walk_an_accounts_submissions_newest_first_without_gaps_or_repeats() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(api_config_with_results(&topic.kafka, &database)).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let account = "13900000003";
    let mut submitted = Vec::new();
    let mut last_token = String::new();
    let mut results_token = String::new();
    for index in 0..5 {
        let accepted = submit_v1(
            &api,
            &json!({"acc_nbr": account, "grade1": 3, "grade2": 3, "grade3": 3, "txt1": index.to_string()}),
        )
        .await;
        submitted.push(accepted.event_id);
        last_token = accepted.consistency_token;
        results_token = accepted.results_token;
    }
    // One account is one partition: the last token covers all five.
    let mut seen = Vec::new();
    let mut query = format!("limit=2&after={last_token}");
    let mut pages = 0;
    loop {
        let (status, _, page) = get_json(
            &client,
            api.url(&format!("/v1/accounts/{account}/scores?{query}")),
            &results_token,
        )
        .await;
        assert_eq!(status, 200);
        pages += 1;
        assert_eq!(page["summary"]["submissions"], 5);
        for score in page["scores"].as_array().expect("scores") {
            seen.push(score["event_id"].as_str().expect("an id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3, "2 + 2 + 1");
    submitted.reverse();
    assert_eq!(seen, submitted, "newest first, each once");

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn an_account_without_submissions_has_empty_results() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(api_config_with_results(&topic.kafka, &database)).await;
    // A token for the number, as a submission would have been answered.
    let token = pipeline_tests::results_token_for("+8613900000004");
    let (status, consistency, page) = get_json(
        &http_client(),
        api.url("/v1/accounts/%2B8613900000004/scores"),
        &token,
    )
    .await;
    assert_eq!((status, consistency.as_str()), (200, "unchecked"));
    assert_eq!(page["acc_nbr"], "+8613900000004");
    assert_eq!(
        page["summary"],
        json!({"submissions": 0, "avg_grade1": null, "avg_grade2": null, "avg_grade3": null,
               "first_submission_at": null, "last_submission_at": null})
    );
    assert_eq!(page["scores"], json!([]));
    assert_eq!(page["next_cursor"], Value::Null);
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn submissions_go_on_and_the_api_stays_ready_while_the_results_database_is_down() {
    let topic = TestTopic::create(1).await;
    // Nothing listens on this port: MySQL is down from the start.
    let api = RunningApi::start_with(ingest_api::Config {
        query_database_url: Some(format!(
            "mysql://reader:secret@127.0.0.1:{}/scores",
            free_port()
        )),
        ..api_config(&topic.kafka)
    })
    .await;
    let client = http_client();
    let ready = client
        .get(api.url("/readyz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ready.status(), 200);
    let (token, results_token) =
        submit_legacy(&client, &api, "13900000005", ["5", "5", "5"], ["", "", ""]).await;
    assert_eq!(topic.record_count().await, 1);

    let mut codes = HashSet::new();
    for path in [
        "/v1/accounts/13900000005/scores".to_owned(),
        format!("/graderesult?phoneNum=13900000005&after={token}"),
    ] {
        let response = client
            .get(api.url(&path))
            .bearer_auth(&results_token)
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: Value = response.json().await.expect("JSON");
        codes.insert(body["error"]["code"].as_str().expect("a code").to_owned());
    }
    assert_eq!(codes, HashSet::from(["results_unavailable".to_owned()]));
    api.stop().await;
}

/// An API that reads results, waiting long enough for any projection to
/// catch up ([`patient_results_config`]).
async fn patient_api(topic: &TestTopic, database: &TestDatabase) -> RunningApi {
    RunningApi::start_with(patient_results_config(&topic.kafka, database)).await
}

/// Posts `body` to `/v1/scores` under `idempotency_key`; the answer.
async fn submit_v1_keyed(
    client: &Client,
    api: &RunningApi,
    body: &Value,
    idempotency_key: &str,
) -> Value {
    let response = client
        .post(api.url("/v1/scores"))
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 202);
    response.json().await.expect("JSON")
}

/// The unresolved dead letters of `table` as (partition, offset, error).
async fn open_dead_letters(database: &TestDatabase, table: &str) -> Vec<(i32, i64, String)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_partition, kafka_offset, error FROM {table} \
         WHERE resolved_at IS NULL ORDER BY kafka_offset"
    )))
    .fetch_all(&database.pool)
    .await
    .expect("the dead letters")
}

#[tokio::test]
async fn a_key_reused_through_another_instance_is_a_dead_letter_and_its_token_reads_rejected() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    // Two instances: the second has never seen the key, so only the
    // projector can tell the bodies apart.
    let first_api = patient_api(&topic, &database).await;
    let second_api = patient_api(&topic, &database).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let account = "13900000006";
    let key = "rating-2026-12-03-0001";

    let first = submit_v1_keyed(
        &client,
        &first_api,
        &json!({"acc_nbr": account, "grade1": 5, "grade2": 5, "grade3": 5, "txt1": "first"}),
        key,
    )
    .await;
    let second = submit_v1_keyed(
        &client,
        &second_api,
        &json!({"acc_nbr": account, "grade1": 1, "grade2": 1, "grade3": 1, "txt1": "second"}),
        key,
    )
    .await;
    assert_eq!(
        first["event_id"], second["event_id"],
        "one key, one event id"
    );
    assert!(second["offset"].as_i64() > first["offset"].as_i64());

    let url = |token: &Value| {
        first_api.url(&format!(
            "/v1/accounts/{account}/scores?after={}",
            token.as_str().expect("a token")
        ))
    };
    // Each instance's token reads the account at the other: they share keys.
    let results_token = second["results_token"].as_str().expect("a results token");
    let (status, consistency, page) =
        get_json(&client, url(&second["consistency_token"]), results_token).await;
    assert_eq!((status, consistency.as_str()), (200, "rejected"));
    assert_eq!(page["consistency"], "rejected");
    // First write wins, in both projections.
    assert_eq!(page["summary"]["submissions"], 1);
    assert_eq!(page["summary"]["avg_grade1"], 5.0);
    assert_eq!(page["scores"][0]["txt1"], "first");
    let (_, consistency, _) =
        get_json(&client, url(&first["consistency_token"]), results_token).await;
    assert_eq!(consistency, "current", "the first write's token");
    let legacy = first_api.url(&format!(
        "/graderesult?phoneNum={account}&after={}",
        second["consistency_token"].as_str().unwrap()
    ));
    let (_, consistency, body) = get_json(&client, legacy, results_token).await;
    assert_eq!(
        (consistency.as_str(), &body["consistency"]),
        ("rejected", &json!("rejected"))
    );

    let conflict_at = (
        second["partition"].as_i64().unwrap() as i32,
        second["offset"].as_i64().unwrap(),
    );
    // account_summary commits its batch a moment after grade's.
    let summarized = pipeline_tests::eventually(Duration::from_secs(30), || async {
        !open_dead_letters(&database, "account_summary_dead_letter")
            .await
            .is_empty()
    })
    .await;
    assert!(summarized, "account_summary recorded the conflict");
    for table in ["grade_dead_letter", "account_summary_dead_letter"] {
        let dead = open_dead_letters(&database, table).await;
        assert_eq!(dead.len(), 1, "{table}: {dead:?}");
        assert_eq!((dead[0].0, dead[0].1), conflict_at, "{table}");
        assert!(
            dead[0].2.starts_with("idempotency_conflict: "),
            "{table}: {}",
            dead[0].2
        );
    }
    let summary: (i64, i64) =
        sqlx::query_as("SELECT submissions, grade1_sum FROM account_summary WHERE acc_nbr = ?")
            .bind(account)
            .fetch_one(&database.pool)
            .await
            .expect("the account's summary");
    assert_eq!(
        summary,
        (1, 5),
        "account_summary counted the first body only"
    );

    projector.stop().await;
    first_api.stop().await;
    second_api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_submission_the_projector_dead_letters_reads_rejected_until_it_is_retried_and_applied() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = patient_api(&topic, &database).await;
    // The projector's rules are stricter than the API's (grades to 4, the
    // API's to 5): the API accepts what the projector will refuse.
    let stricter = projector::config::DecoderArgs {
        validation: score_shared::config::ValidationArgs {
            grade_max: 4,
            ..score_shared::config::ValidationArgs::default()
        },
        ..pipeline_tests::test_decoder_args(&topic.kafka)
    };
    let projector = RunningProjector::start_configured(
        &topic.kafka,
        database.args(),
        &unique_group(),
        projector::projection::names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        stricter,
    );
    let client = http_client();
    let account = "13900000007";
    let url = |token: &str| api.url(&format!("/v1/accounts/{account}/scores?after={token}"));

    let refused = submit_v1(
        &api,
        &json!({"acc_nbr": account, "grade1": 5, "grade2": 4, "grade3": 4}),
    )
    .await;
    let (refused_token, results_token) = (refused.consistency_token, refused.results_token);
    let (status, consistency, page) = get_json(&client, url(&refused_token), &results_token).await;
    assert_eq!((status, consistency.as_str()), (200, "rejected"));
    assert_eq!(page["consistency"], "rejected");
    assert_eq!(page["summary"]["submissions"], 0, "no row");

    let valid_token = submit_v1(
        &api,
        &json!({"acc_nbr": account, "grade1": 4, "grade2": 4, "grade3": 4}),
    )
    .await
    .consistency_token;
    let (_, consistency, page) = get_json(&client, url(&valid_token), &results_token).await;
    assert_eq!(consistency, "current");
    assert_eq!(page["summary"]["submissions"], 1);
    let (_, consistency, _) = get_json(&client, url(&refused_token), &results_token).await;
    assert_eq!(consistency, "rejected", "still, after later events");

    // The rules are aligned and the dead letter retried: it is applied, and
    // its token now reads current.
    projector.stop().await;
    let retried = projector::dead_letters::retry(
        &database.projector_pool,
        "grade",
        None,
        &pipeline_tests::test_decoder(&topic.kafka).await,
    )
    .await
    .expect("the retry runs");
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        retried[0].outcome,
        projector::dead_letters::RetryResult::Applied
    );
    let (_, consistency, page) = get_json(&client, url(&refused_token), &results_token).await;
    assert_eq!(consistency, "current");
    assert_eq!(page["summary"]["submissions"], 2);

    api.stop().await;
    database.drop_database().await;
}
