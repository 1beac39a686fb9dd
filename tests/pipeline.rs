//! The pipeline end to end: ingest API → real broker → projector → real
//! MariaDB. Each test has its own topic and database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pipeline_tests::http_client;
use pipeline_tests::proxy::CuttableProxy;
use pipeline_tests::{
    RunningApi, RunningProjector, TestDatabase, TestTopic, api_config, eventually, kafka_args,
    legacy_form_body, mysql_socket_address, submit_many, unique_group,
};
use serde_json::{Value, json};

/// How long a projected row may take to appear before a test fails.
const PROJECTION_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct GradeRow {
    acc_nbr: String,
    grade1: i32,
    grade2: i32,
    grade3: i32,
    txt1: String,
    txt2: String,
    txt3: String,
    channel: String,
}

#[derive(Debug, sqlx::FromRow)]
struct DeadLetter {
    projection: String,
    kafka_partition: i32,
    kafka_offset: i64,
    message_key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    error: String,
}

async fn post_v1(
    api: &RunningApi,
    body: &Value,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let mut request = http_client().post(api.url("/v1/scores")).json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("the API answers")
}

fn submission(acc_nbr: &str) -> Value {
    json!({"acc_nbr": acc_nbr, "grade1": 5, "grade2": 4, "grade3": 3,
           "txt1": "服務很好", "txt2": "", "txt3": "ok"})
}

#[tokio::test]
async fn the_mini_programs_request_byte_for_byte_lands_as_one_row() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    // What wx.request sends for data {acc_nbr, grade1..3, txt1..3}, each
    // value JSON.stringify'd, with the article's misspelt header.
    let body = legacy_form_body(
        "13800138000",
        ["5", "\"4\"", "3"],
        ["服務很好", "", "👍 fast"],
    );
    let response = http_client()
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("chartset", "utf-8")
        .body(body)
        .send()
        .await
        .expect("the API answers");

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.bytes().await.unwrap(),
        "\"數據提交成功\"".as_bytes()
    );

    assert!(
        eventually(PROJECTION_LIMIT, || async {
            database.grade_count().await >= 1
        })
        .await,
        "the submission was not projected"
    );
    let rows: Vec<GradeRow> = sqlx::query_as(
        "SELECT acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, channel FROM grade",
    )
    .fetch_all(&database.pool)
    .await
    .unwrap();
    let expected = GradeRow {
        acc_nbr: "13800138000".into(),
        grade1: 5,
        grade2: 4,
        grade3: 3,
        txt1: "服務很好".into(),
        txt2: String::new(),
        txt3: "👍 fast".into(),
        channel: "legacy_form".into(),
    };
    assert_eq!(rows, [expected]);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn v1_answers_202_and_the_same_idempotency_key_yields_one_row() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    let plain = post_v1(&api, &submission("13900139000"), None).await;
    assert_eq!(plain.status(), 202);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["status"], "accepted");
    assert!(
        plain["partition"].is_i64() && plain["offset"].is_i64(),
        "{plain}"
    );

    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = post_v1(&api, &submission("13800138000"), Some("retry-me-7f3a")).await;
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await.unwrap());
    }
    let event_ids: HashSet<_> = answers.iter().map(|a| a["event_id"].clone()).collect();
    assert_eq!(event_ids.len(), 1, "one key, one event id: {answers:?}");
    assert_ne!(answers[0]["event_id"], plain["event_id"]);

    // Wait until the projector has passed all three appended copies.
    let partition = answers[2]["partition"].as_i64().unwrap() as i32;
    let last_offset = answers[2]["offset"].as_i64().unwrap();
    let passed = eventually(PROJECTION_LIMIT, || async {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT next_offset FROM grade_position WHERE kafka_partition = ?")
                .bind(partition)
                .fetch_optional(&database.pool)
                .await
                .unwrap();
        position.is_some_and(|next| next > last_offset)
    })
    .await;
    assert!(passed, "the projector did not reach offset {last_offset}");
    database.await_grade_rows(2, PROJECTION_LIMIT).await;

    let counts = database.event_id_counts().await;
    let retried = answers[0]["event_id"].as_str().unwrap();
    assert_eq!(counts.get(retried), Some(&1), "{counts:?}");
    assert_eq!(counts.get(plain["event_id"].as_str().unwrap()), Some(&1));
    assert_eq!(
        topic.record_count().await,
        4,
        "every retry is in the log; the table has it once"
    );

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

/// Posts the mini-program's form to `/score` with an `Idempotency-Key`.
async fn post_legacy(api: &RunningApi, body: String, idempotency_key: &str) -> reqwest::Response {
    http_client()
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("chartset", "utf-8")
        .header("Idempotency-Key", idempotency_key)
        .body(body)
        .send()
        .await
        .expect("the API answers")
}

#[tokio::test]
async fn a_key_reused_for_another_body_is_a_422_at_both_doors_and_is_not_published() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    // /v1: a retry of the same body is accepted again; another body under
    // the same key is refused.
    let first = submission("13800138000");
    for attempt in 1..=2 {
        let response = post_v1(&api, &first, Some("rating-v1-0001")).await;
        assert_eq!(response.status(), 202, "attempt {attempt}");
    }
    let mut other = first.clone();
    other["grade1"] = json!(1);
    let refused = post_v1(&api, &other, Some("rating-v1-0001")).await;
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(
        refused["error"]["code"], "idempotency_conflict",
        "{refused}"
    );

    // /score honours the header the same way, in its own format.
    let form = |grade1: &str| legacy_form_body("13900139000", [grade1, "4", "3"], ["好", "", ""]);
    for attempt in 1..=2 {
        let response = post_legacy(&api, form("5"), "rating-form-0001").await;
        assert_eq!(response.status(), 200, "attempt {attempt}");
    }
    let refused = post_legacy(&api, form("2"), "rating-form-0001").await;
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.headers()["x-error-code"], "idempotency_conflict");
    assert_eq!(
        refused.bytes().await.unwrap(),
        "\"數據提交失敗\"".as_bytes(),
        "the body stays the toast"
    );

    assert_eq!(
        topic.record_count().await,
        4,
        "both retries are in the log, neither refused body is"
    );
    let passed_all = eventually(PROJECTION_LIMIT, || async {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT CAST(SUM(next_offset) AS SIGNED) FROM grade_position")
                .fetch_one(&database.pool)
                .await
                .unwrap();
        next.is_some_and(|next| next >= 4)
    })
    .await;
    assert!(passed_all, "the projector did not pass the four records");
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT acc_nbr, grade1 FROM grade ORDER BY acc_nbr")
            .fetch_all(&database.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [("13800138000".to_owned(), 5), ("13900139000".to_owned(), 5)],
        "one row per key, with the first body"
    );
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letter")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "an identical retry is a silent duplicate");

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn two_hundred_concurrent_submissions_make_two_hundred_rows() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    let acknowledged = submit_many(&api, "13800", 200).await;
    assert_eq!(acknowledged.len(), 200);

    assert!(
        eventually(PROJECTION_LIMIT, || async {
            database.grade_count().await >= 200
        })
        .await,
        "only {} of 200 rows projected",
        database.grade_count().await
    );
    let counts = database.event_id_counts().await;
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), acknowledged);
    assert!(
        counts.values().all(|count| *count == 1),
        "an event id occurs twice"
    );
    // The idempotent producer wrote each acknowledged event once: no
    // duplicates from its internal retries in the log either.
    assert_eq!(topic.record_count().await, 200);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn chinese_emoji_and_sql_lookalikes_round_trip_byte_exact() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    let texts = [
        "服務很好，下次再來 😀👍🏽👨‍👩‍👧",
        "'); DROP TABLE grade; --",
        "\"quoted\" \\ back\tslash\nnew line <script>alert(1)</script>",
    ];
    let body = legacy_form_body("+8613800138000", ["1", "2", "3"], texts);
    let response = http_client()
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    database.await_grade_rows(1, PROJECTION_LIMIT).await;
    let stored: (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT CAST(acc_nbr AS BINARY), CAST(txt1 AS BINARY), CAST(txt2 AS BINARY), \
         CAST(txt3 AS BINARY) FROM grade",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(stored.0, b"+8613800138000");
    assert_eq!(stored.1, texts[0].as_bytes());
    assert_eq!(stored.2, texts[1].as_bytes());
    assert_eq!(stored.3, texts[2].as_bytes());

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn each_broken_rule_is_a_400_naming_the_field_and_appends_nothing() {
    let topic = TestTopic::create(1).await;
    let api = RunningApi::start(&topic.kafka).await;

    let long_text = "好".repeat(501);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "account number missing",
            json!({"grade1": 5, "grade2": 5, "grade3": 5}),
            "acc_nbr",
        ),
        (
            "account number too short",
            json!({"acc_nbr": "1234", "grade1": 5, "grade2": 5, "grade3": 5}),
            "acc_nbr",
        ),
        (
            "account number with letters",
            json!({"acc_nbr": "1380013800x", "grade1": 5, "grade2": 5, "grade3": 5}),
            "acc_nbr",
        ),
        (
            "account number too long",
            json!({"acc_nbr": "1".repeat(21), "grade1": 5, "grade2": 5, "grade3": 5}),
            "acc_nbr",
        ),
        (
            "grade below range",
            json!({"acc_nbr": "13800138000", "grade1": 0, "grade2": 5, "grade3": 5}),
            "grade1",
        ),
        (
            "grade above range",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 6, "grade3": 5}),
            "grade2",
        ),
        (
            "grade not an integer",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5, "grade3": 4.5}),
            "grade3",
        ),
        (
            "grade missing",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5}),
            "grade3",
        ),
        (
            "comment too long",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5, "grade3": 5, "txt1": long_text}),
            "txt1",
        ),
        (
            "comment with NUL",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5, "grade3": 5, "txt2": "a\u{0}b"}),
            "txt2",
        ),
        (
            "comment with escape code",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5, "grade3": 5, "txt3": "\u{1b}[2J"}),
            "txt3",
        ),
        (
            "comment not a string",
            json!({"acc_nbr": "13800138000", "grade1": 5, "grade2": 5, "grade3": 5, "txt1": {"a": 1}}),
            "txt1",
        ),
    ];
    // In the legacy form every value is text, and text that is JSON other
    // than a string or number is kept as the comment: no failure there.
    let legacy_valid_as_text = ["comment not a string"];

    for (case, body, field) in &cases {
        let response = post_v1(&api, body, None).await;
        assert_eq!(response.status(), 400, "{case}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["error"]["code"], "invalid_submission",
            "{case}: {answer}"
        );
        let fields: Vec<&str> = answer["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [*field], "{case}: {answer}");

        // The same submission through the legacy door: the failure toast,
        // 400, and the field named in a header.
        if legacy_valid_as_text.contains(case) {
            continue;
        }
        let form: Vec<(String, String)> = body
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();
        let response = http_client()
            .post(api.url("/score"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "legacy {case}");
        assert_eq!(
            response.headers()["x-invalid-fields"],
            *field,
            "legacy {case}"
        );
        assert_eq!(
            response.text().await.unwrap(),
            "\"數據提交失敗\"",
            "legacy {case}"
        );
    }
    // A legacy value that looks stringified but is no JSON string: what
    // JSON.stringify makes of a lone surrogate. Never stored as text.
    for (door, content_type, body) in [
        (
            "form",
            "application/x-www-form-urlencoded",
            "acc_nbr=%2213800138000%22&grade1=5&grade2=5&grade3=5&txt1=%22%5Cud800%22",
        ),
        (
            "JSON",
            "application/json",
            r#"{"acc_nbr":"\"13800138000\"","grade1":5,"grade2":5,"grade3":5,"txt1":"\"\\ud800\""}"#,
        ),
    ] {
        let response = http_client()
            .post(api.url("/score"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "lone surrogate through the {door}");
        assert_eq!(
            response.headers()["x-invalid-fields"],
            "txt1",
            "lone surrogate through the {door}"
        );
    }
    assert_eq!(
        topic.record_count().await,
        0,
        "a rejected submission reached the log"
    );

    // The check above can fail: one valid submission does append.
    assert_eq!(
        post_v1(&api, &submission("13800138000"), None)
            .await
            .status(),
        202
    );
    assert_eq!(topic.record_count().await, 1);
    api.stop().await;
}

#[tokio::test]
async fn a_projector_stopped_and_killed_mid_stream_misses_nothing_and_doubles_nothing() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let group = unique_group();

    let mut acknowledged = HashSet::new();
    // A graceful stop once it is under way, while events keep arriving,
    // then a restart.
    let projector = RunningProjector::start(&topic.kafka, &database, &group);
    acknowledged.extend(submit_many(&api, "13900", 100).await);
    assert!(
        eventually(PROJECTION_LIMIT, || async {
            database.grade_count().await >= 1
        })
        .await
    );
    projector.stop().await;
    acknowledged.extend(submit_many(&api, "13901", 100).await);

    // A crash in the middle of work (the task is dropped wherever it is,
    // an open transaction included) with a backlog in hand, then a restart.
    let before = database.grade_count().await;
    let projector = RunningProjector::start(&topic.kafka, &database, &group);
    acknowledged.extend(submit_many(&api, "13902", 100).await);
    assert!(
        eventually(PROJECTION_LIMIT, || async {
            database.grade_count().await > before
        })
        .await
    );
    projector.kill().await;
    acknowledged.extend(submit_many(&api, "13903", 100).await);

    let projector = RunningProjector::start(&topic.kafka, &database, &group);
    assert!(
        eventually(Duration::from_secs(60), || async {
            database.grade_count().await >= 400
        })
        .await,
        "only {} of 400 rows projected",
        database.grade_count().await
    );
    let counts = database.event_id_counts().await;
    assert_eq!(
        counts.keys().cloned().collect::<HashSet<_>>(),
        acknowledged,
        "rows differ from acknowledgments"
    );
    assert!(
        counts.values().all(|count| *count == 1),
        "an event was projected twice"
    );
    assert_eq!(database.grade_count().await, 400);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_malformed_event_goes_to_dead_letter_and_the_events_after_it_project() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;

    let garbage_offset = topic
        .produce_raw(0, "13800138000", b"\xff\xfenot an event")
        .await;
    let unknown_offset = topic
        .produce_raw(
            0,
            "13800138000",
            br#"{"type":"ScoreSubmitted","version":99}"#,
        )
        .await;
    let response = post_v1(&api, &submission("13800138000"), None).await;
    assert_eq!(response.status(), 202);
    let valid: Value = response.json().await.unwrap();
    assert!(valid["offset"].as_i64().unwrap() > unknown_offset);

    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    database.await_grade_rows(1, PROJECTION_LIMIT).await;
    // The projections apply a batch one after the other: account_summary's
    // transaction may commit a moment after grade's.
    let summarized = eventually(PROJECTION_LIMIT, || async {
        sqlx::query_scalar::<_, i64>("SELECT submissions FROM account_summary")
            .fetch_optional(&database.pool)
            .await
            .unwrap()
            == Some(1)
    })
    .await;
    assert!(summarized, "account_summary counted the valid event");

    let dead: Vec<DeadLetter> = sqlx::query_as(
        "SELECT projection, kafka_partition, kafka_offset, message_key, payload, error \
         FROM dead_letter ORDER BY projection DESC, kafka_offset",
    )
    .fetch_all(&database.pool)
    .await
    .unwrap();
    // Each projection keeps its own dead letters: grade first, then
    // account_summary with the same two.
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert_eq!(dead[2].projection, "account_summary");
    assert_eq!(
        (dead[2].kafka_offset, dead[3].kafka_offset),
        (garbage_offset, unknown_offset)
    );
    assert_eq!(
        (
            dead[0].projection.as_str(),
            dead[0].kafka_partition,
            dead[0].kafka_offset
        ),
        ("grade", 0, garbage_offset)
    );
    assert_eq!(dead[0].message_key.as_deref(), Some(&b"13800138000"[..]));
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(&b"\xff\xfenot an event"[..])
    );
    assert!(
        dead[0].error.starts_with("undecodable"),
        "{}",
        dead[0].error
    );
    assert_eq!(dead[1].kafka_offset, unknown_offset);
    assert!(
        dead[1]
            .error
            .contains("unknown event type \"ScoreSubmitted\" version 99"),
        "{}",
        dead[1].error
    );

    let event_id: String = sqlx::query_scalar("SELECT event_id FROM grade")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(event_id, valid["event_id"].as_str().unwrap());

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_a_503_within_the_configured_bound() {
    // A port nothing listens on: bind one, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kafka = kafka_args(&format!("unreachable-{port}"), 1);
    let mut kafka = kafka;
    kafka.kafka_brokers = format!("127.0.0.1:{port}");
    let mut config = api_config(&kafka);
    config.publish_timeout_ms = 1500;
    let api = RunningApi::start_with(config).await;

    let started = Instant::now();
    let response = post_v1(&api, &submission("13800138000"), None).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "log_unavailable");
    // The bound is the publish timeout plus the one-second fence; the rest
    // is slack for a loaded CI machine. This checks "never a hang", not speed.
    assert!(
        elapsed < Duration::from_millis(1500 + 1000 + 2000),
        "took {elapsed:?}"
    );

    let response = http_client()
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
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "\"數據提交失敗\"");

    let ready = http_client().get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    api.stop().await;
}

#[tokio::test]
async fn a_mysql_outage_is_waited_out_and_nothing_is_lost_or_doubled() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let proxy = CuttableProxy::start(mysql_socket_address()).await;
    let projector = RunningProjector::start_with(
        &topic.kafka,
        database.args_via(proxy.address),
        &unique_group(),
    );

    let mut acknowledged = submit_many(&api, "13700", 100).await;
    database.await_grade_rows(100, PROJECTION_LIMIT).await;

    // MySQL goes away; the write path does not depend on it.
    proxy.cut().await;
    acknowledged.extend(submit_many(&api, "13701", 100).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        database.grade_count().await,
        100,
        "the outage did not hold the projector back"
    );

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(60), || async {
            database.grade_count().await >= 200
        })
        .await,
        "only {} of 200 rows after MySQL came back",
        database.grade_count().await
    );
    let counts = database.event_id_counts().await;
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), acknowledged);
    assert!(
        counts.values().all(|count| *count == 1),
        "an event was projected twice"
    );

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn the_projector_and_analyst_accounts_have_only_the_rights_they_need() {
    let database = TestDatabase::create().await;
    let other = TestDatabase::create().await;

    // Analysts read, and nothing else.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grade_daily")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    for write in [
        "DELETE FROM grade",
        "DROP TABLE grade",
        "UPDATE grade_position SET next_offset = 0",
    ] {
        let refused = sqlx::query(write).execute(&database.pool).await;
        assert!(refused.is_err(), "the analyst account could run {write}");
    }
    // The projector writes its own database and no other.
    sqlx::query("UPDATE grade_position SET next_offset = 0")
        .execute(&database.projector_pool)
        .await
        .unwrap();
    let elsewhere = format!("DELETE FROM `{}`.grade", other.name);
    assert!(
        sqlx::query(sqlx::AssertSqlSafe(elsewhere))
            .execute(&database.projector_pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("SELECT COUNT(*) FROM mysql.user")
            .fetch_one(&database.projector_pool)
            .await
            .is_err()
    );

    database.drop_database().await;
    other.drop_database().await;
}
