//! Forgetting a person (issue 15), against the real broker and MariaDB: a
//! number rated through both doors, `projector forget` run as an operator
//! would, the broker's cleaner forced to run on the key topic, and then no
//! trace of the number or its comments in MySQL or in the log as Apache
//! Kafka's own console consumer reads it, while the grades still count and
//! a rebuild from the log gives the same forgotten tables.

use std::collections::BTreeSet;
use std::time::Duration;

use pipeline_tests::console::{ConsoleRecord, console_consume};
use pipeline_tests::processes::bin_dir;
use pipeline_tests::{
    ACCOUNT_SUMMARY_CONTENT, GRADE_CONTENT, RunningApi, RunningProjector, TEST_ACCOUNT_PEPPER,
    TestDatabase, TestTopic, keys_topic_of, legacy_form_body, patient_results_config, rebuild_args,
    unique_group,
};
use pipeline_tests::{accepted_v1, eventually, http_client, metric_sample, scrape};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use reqwest::Client;
use score_shared::AccountRef;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PHONE: &str = "13912345678";
const OTHER: &str = "13700000001";
const COMMENTS: [&str; 2] = ["我的私密評論，只屬於我", "另一條私密評論"];
const LIMIT: Duration = Duration::from_secs(60);

/// Rates `PHONE` through `/score` (the mini-program's form) and `/v1/scores`,
/// and `OTHER` once; returns `PHONE`'s results token.
async fn rate(client: &Client, api: &RunningApi) -> String {
    let legacy = client
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(legacy_form_body(
            PHONE,
            ["5", "4", "3"],
            [COMMENTS[0], "", ""],
        ))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(legacy.status(), 200);
    let v1 = accepted_v1(
        api,
        &json!({"acc_nbr": PHONE, "grade1": 2, "grade2": 3, "grade3": 4, "txt2": COMMENTS[1]}),
    )
    .await;
    let token = v1.headers()["x-results-token"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    accepted_v1(
        api,
        &json!({"acc_nbr": OTHER, "grade1": 1, "grade2": 1, "grade3": 1, "txt1": "別人的評論"}),
    )
    .await;
    token
}

async fn results(client: &Client, api: &RunningApi, token: &str) -> (Value, Value) {
    let get = |path: String| {
        let request = client.get(api.url(&path)).bearer_auth(token);
        async move {
            let response = request.send().await.expect("the API answers");
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.expect("JSON")
        }
    };
    (
        get(format!("/v1/accounts/{PHONE}/scores")).await,
        get(format!("/graderesult?phoneNum={PHONE}")).await,
    )
}

/// Every line of a query's single text column.
async fn lines(database: &TestDatabase, query: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
        .fetch_all(&database.admin_pool)
        .await
        .expect("the query runs")
}

/// Every `table.column` of the test database (views included) holding one
/// of `needles` anywhere in its text or bytes.
async fn mysql_traces(database: &TestDatabase, needles: &[&str]) -> Vec<String> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(table_name AS CHAR), CAST(column_name AS CHAR) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND data_type IN \
         ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext', 'blob', 'mediumblob', 'longblob', 'varbinary', 'binary')",
    )
    .fetch_all(&database.admin_pool)
    .await
    .expect("the columns are listed");
    assert!(columns.len() > 20, "{columns:?}");
    let mut found = Vec::new();
    for (table, column) in columns {
        for needle in needles {
            // Identifiers come from information_schema itself; the needle
            // is bound.
            let query = format!(
                "SELECT COUNT(*) FROM `{table}` WHERE CAST(`{column}` AS BINARY) LIKE CONCAT('%', CAST(? AS BINARY), '%')"
            );
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .bind(*needle)
                .fetch_one(&database.admin_pool)
                .await
                .expect("the search runs");
            if count > 0 {
                found.push(format!("{table}.{column} holds {needle:?} ({count} rows)"));
            }
        }
    }
    found
}

/// The settings an operator's shell would have for this test's stack.
fn projector_env(topic: &TestTopic, database: &TestDatabase) -> Vec<(&'static str, String)> {
    vec![
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_KEYS_TOPIC", keys_topic_of(topic.name())),
        ("SCORES_DATABASE_URL", database.args().database_url),
        ("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER.to_owned()),
        ("SCORES_LOG_FORMAT", "text".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
}

/// Runs the `projector` binary as an operator would; returns its stdout.
/// Blocking.
fn projector_command(args: &[&str], env: &[(&'static str, String)]) -> String {
    let output = std::process::Command::new(bin_dir().join("projector"))
        .args(args)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .expect("the projector binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "projector {args:?} failed: {stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(PHONE) && !stderr.contains(PHONE),
        "the full number is never printed: {stdout}\n{stderr}"
    );
    stdout
}

/// Sets the key topic up for immediate compaction: tiny segments, any
/// dirt cleanable, tombstones kept 100 ms. (AlterConfigs replaces the
/// topic's settings, so compaction is named again.)
async fn force_compaction(topic: &TestTopic) {
    let keys_topic = keys_topic_of(topic.name());
    let admin: AdminClient<DefaultClientContext> = score_shared::kafka::admin_config(&topic.kafka)
        .create()
        .expect("an admin client");
    let config = AlterConfig::new(ResourceSpecifier::Topic(&keys_topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.001")
        .set("min.compaction.lag.ms", "0")
        .set("max.compaction.lag.ms", "100")
        .set("delete.retention.ms", "100");
    let results = admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .expect("the broker answers");
    for result in results {
        result.expect("the key topic's settings are changed");
    }
}

/// Appends a tombstone of an unknown key to every partition of the key
/// topic, so that the segment holding the forgotten key rolls and can be
/// cleaned.
async fn roll_key_segments(topic: &TestTopic) {
    let producer: FutureProducer =
        score_shared::kafka::producer_config(&topic.kafka, Duration::from_secs(10))
            .create()
            .expect("a producer");
    let keys_topic = keys_topic_of(topic.name());
    for partition in 0..3 {
        let key = uuid::Uuid::now_v7().to_string();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&keys_topic)
            .key(key.as_str())
            .partition(partition);
        producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .expect("the roll record is written");
    }
}

/// Rebuilds every projection from the test's log.
async fn rebuild_all(topic: &TestTopic, database: &TestDatabase) {
    for projection in ["grade", "account_summary"] {
        projector::rebuild::rebuild(
            &rebuild_args(&topic.kafka, database, projection, false),
            &CancellationToken::new(),
        )
        .await
        .expect("the rebuild runs");
    }
}

/// The data key ids `account_ref`'s sealed events name, as the console
/// consumer shows the event topic.
fn kids_of(events: &[ConsoleRecord], account_ref: &AccountRef) -> BTreeSet<String> {
    let record_key = account_ref.to_string();
    events
        .iter()
        .filter(|r| r.key == record_key)
        .filter_map(|r| serde_json::from_str::<Value>(r.value.as_deref()?).ok())
        .filter_map(|event| event["kid"].as_str().map(str::to_owned))
        .collect()
}

/// The key material of the keys `kids` in the key topic's records (blocks
/// of keys), each with its block's id: the base64 of the key's entry in its
/// block's `keys` (its id and its 32 bytes; entries are 48 bytes, so each
/// is a 64-character stretch of the block's base64).
fn key_material_of(records: &[ConsoleRecord], kids: &BTreeSet<String>) -> Vec<(String, String)> {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    records
        .iter()
        .filter_map(|r| {
            Some((
                &r.key,
                serde_json::from_str::<Value>(r.value.as_deref()?).ok()?,
            ))
        })
        .flat_map(|(block, value)| {
            let entries = value["keys"]
                .as_str()
                .and_then(|keys| base64.decode(keys).ok())
                .unwrap_or_default();
            entries
                .chunks_exact(48)
                .filter(|entry| {
                    let kid = uuid::Uuid::from_slice(&entry[..16]).expect("16 bytes");
                    kids.contains(&kid.to_string())
                })
                .map(|entry| (block.clone(), base64.encode(entry)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether a record of `records` holds one of the key materials.
fn holds_any(records: &[ConsoleRecord], materials: &[String]) -> bool {
    records.iter().any(|r| {
        r.value
            .as_ref()
            .is_some_and(|v| materials.iter().any(|m| v.contains(m.as_str())))
    })
}

/// Waits until the API's key pool holds keys (its `data_key_pool_keys`),
/// so that the test's accounts are handed keys written ahead, from one
/// block.
async fn await_pooled_keys(api: &RunningApi) {
    let pooled = eventually(LIMIT, || async {
        metric_sample(&scrape(api.metrics_address).await, "data_key_pool_keys") > 0.0
    })
    .await;
    assert!(pooled, "the key pool is still empty after {LIMIT:?}");
}

/// Every record of `topic` (an event or key topic), read by Apache Kafka's
/// console consumer until it has been idle for `idle`.
async fn console(brokers: &str, topic: &str, idle: Duration) -> Vec<ConsoleRecord> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || console_consume(&brokers, &topic, idle))
        .await
        .expect("the console consumer ran")
}

#[tokio::test]
async fn a_forgotten_person_leaves_no_trace_in_mysql_or_the_log_and_their_grades_still_count() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(patient_results_config(&topic.kafka, &database)).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let client = http_client();
    let pepper = TEST_ACCOUNT_PEPPER.parse().expect("a pepper");
    let account_ref = AccountRef::of(&pepper, PHONE);

    await_pooled_keys(&api).await;
    let token = rate(&client, &api).await;
    database.await_grade_rows(3, LIMIT).await;
    let (v1, legacy) = results(&client, &api, &token).await;
    assert_eq!(v1["scores"].as_array().map(Vec::len), Some(2), "{v1}");
    assert_eq!(legacy["count"], 2, "{legacy}");
    let daily_before = lines(&database, "SELECT CONCAT_WS('|', day, submissions, accounts, avg_grade1, avg_grade2, avg_grade3) FROM grade_daily ORDER BY day").await;
    let brokers = topic.kafka.kafka_brokers.clone();
    let keys_topic = keys_topic_of(topic.name());
    let idle = Duration::from_secs(3);
    let keys_before = console(&brokers, &keys_topic, idle).await;
    let events_before = console(&brokers, topic.name(), idle).await;
    let kids = kids_of(&events_before, &account_ref);
    assert!(
        !kids.is_empty(),
        "the events name their keys: {events_before:?}"
    );
    let other_kids = kids_of(&events_before, &AccountRef::of(&pepper, OTHER));
    let (blocks, key_material): (BTreeSet<String>, Vec<String>) =
        key_material_of(&keys_before, &kids).into_iter().unzip();
    assert_eq!(
        key_material.len(),
        kids.len(),
        "the API wrote the account's data keys: {keys_before:?}"
    );
    let (other_blocks, other_material): (BTreeSet<String>, Vec<String>) =
        key_material_of(&keys_before, &other_kids)
            .into_iter()
            .unzip();
    assert_eq!(other_material.len(), 1, "{keys_before:?}");
    assert_eq!(
        blocks, other_blocks,
        "both accounts' keys are in one block, so forgetting one rewrites a block the other \
         still needs"
    );
    let mut needles = vec![PHONE];
    needles.extend(COMMENTS);
    assert!(
        !mysql_traces(&database, &needles).await.is_empty(),
        "the search finds the number before it is forgotten"
    );

    // The operator's command, as run by hand.
    // Off the runtime: the projector in this process applies the erasure
    // the command waits for.
    let printed = {
        let env = projector_env(&topic, &database);
        tokio::task::spawn_blocking(move || {
            projector_command(
                &[
                    "forget",
                    PHONE,
                    "--reason",
                    "ticket 15",
                    "--wait-seconds",
                    "60",
                ],
                &env,
            )
        })
        .await
        .expect("the command ran")
    };
    assert!(printed.contains("1 account forgotten"), "{printed}");
    assert!(
        printed.contains("applied by grade, account_summary"),
        "{printed}"
    );

    // MySQL: no trace; the grades still count; the results say nothing.
    let traces = mysql_traces(&database, &needles).await;
    assert!(traces.is_empty(), "{traces:?}");
    let daily_after = lines(&database, "SELECT CONCAT_WS('|', day, submissions, accounts, avg_grade1, avg_grade2, avg_grade3) FROM grade_daily ORDER BY day").await;
    assert_eq!(
        daily_after, daily_before,
        "grade_daily counts the same grades"
    );
    let placeholder_rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM grade WHERE acc_nbr = ? AND txt1 = '' AND txt2 = ''",
    )
    .bind(account_ref.placeholder())
    .fetch_one(&database.admin_pool)
    .await
    .unwrap();
    assert_eq!(placeholder_rows, 2);
    let (v1, legacy) = results(&client, &api, &token).await;
    assert_eq!(v1["scores"].as_array().map(Vec::len), Some(0), "{v1}");
    assert_eq!(legacy["count"], 0, "{legacy}");
    let erasures = lines(
        &database,
        "SELECT CONCAT_WS('|', 'grade', reason, rows_changed) FROM grade_erasure \
         UNION ALL SELECT CONCAT_WS('|', 'account_summary', reason, rows_changed) FROM account_summary_erasure",
    )
    .await;
    assert_eq!(
        erasures,
        ["grade|ticket 15|2", "account_summary|ticket 15|1"]
    );

    // A rating the same API instance seals right after, under the key it
    // still holds (within SCORES_DATA_KEY_CACHE_SECONDS), is forgotten too:
    // the projector read the tombstones before anything after the erasure.
    accepted_v1(
        &api,
        &json!({"acc_nbr": PHONE, "grade1": 1, "grade2": 1, "grade3": 1, "txt3": COMMENTS[0]}),
    )
    .await;
    database.await_grade_rows(4, LIMIT).await;
    let traces = mysql_traces(&database, &needles).await;
    assert!(traces.is_empty(), "after a late rating: {traces:?}");

    // A rebuild before the broker's cleaner has run (the keys still in the
    // key topic, behind their tombstones) gives the forgotten tables too.
    let grade_forgotten = lines(&database, GRADE_CONTENT).await;
    let summary_forgotten = lines(&database, ACCOUNT_SUMMARY_CONTENT).await;
    rebuild_all(&topic, &database).await;
    assert_eq!(lines(&database, GRADE_CONTENT).await, grade_forgotten);
    assert_eq!(
        lines(&database, ACCOUNT_SUMMARY_CONTENT).await,
        summary_forgotten
    );

    // The log, once the broker's cleaner has run on the key topic, read by
    // Apache Kafka's console consumer.
    force_compaction(&topic).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let keys_after = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        roll_key_segments(&topic).await;
        let records = console(&brokers, &keys_topic, idle).await;
        if !holds_any(&records, &key_material) {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cleaner did not remove the forgotten keys within 120 s: {records:?}"
        );
    };
    assert!(
        holds_any(&keys_after, &other_material),
        "another account's key, in the same block, is kept: {keys_after:?}"
    );
    let events = {
        let (brokers, name) = (brokers.clone(), topic.name().to_owned());
        tokio::task::spawn_blocking(move || console_consume(&brokers, &name, idle))
            .await
            .expect("the console consumer ran")
    };
    assert_eq!(events.len(), 5, "four ratings and the erasure: {events:?}");
    for record in &events {
        let value = record.value.as_deref().unwrap_or_default();
        for needle in &needles {
            assert!(
                !record.key.contains(needle) && !value.contains(needle),
                "the log reveals {needle:?}: {record:?}"
            );
        }
    }
    let erasure: Vec<&ConsoleRecord> = events
        .iter()
        .filter(|r| {
            r.value
                .as_deref()
                .is_some_and(|v| v.contains("\"AccountForgotten\""))
        })
        .collect();
    assert_eq!(erasure.len(), 1, "{events:?}");
    assert_eq!(erasure[0].key, account_ref.to_string());

    // After the cleanup too, a rebuild gives the same forgotten tables.
    projector.stop().await;
    rebuild_all(&topic, &database).await;
    assert_eq!(lines(&database, GRADE_CONTENT).await, grade_forgotten);
    assert_eq!(
        lines(&database, ACCOUNT_SUMMARY_CONTENT).await,
        summary_forgotten
    );
    let traces = mysql_traces(&database, &needles).await;
    assert!(traces.is_empty(), "after the rebuild: {traces:?}");
    let accounts: BTreeSet<String> = lines(&database, "SELECT acc_nbr FROM grade")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        accounts,
        BTreeSet::from([account_ref.placeholder(), OTHER.to_owned()])
    );
    api.stop().await;
}
