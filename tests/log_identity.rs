//! A position is only trusted on the log it was taken from: tables built
//! from one log, then another log under the same topic name (a second
//! broker, as when two checkouts share one MariaDB database, or a broker
//! whose data was wiped). Nothing of the other log may be applied, the
//! projector and `status` must say so naming projection and partition, and
//! `projector rebuild` must be the way out.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::time::Duration;

use pipeline_tests::processes::{Broker, Service, free_port};
use pipeline_tests::{
    TestDatabase, TestTopic, eventually, kafka_args_on, keys_topic_of, unique_group,
};
use score_shared::config::KafkaArgs;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
/// `projector::LOG_MISMATCH_EXIT_CODE`.
const MISMATCH: i32 = projector::LOG_MISMATCH_EXIT_CODE;

/// A valid event with a fresh id on `account`.
fn event(account: &str, grade: i32) -> (String, Vec<u8>) {
    let event_id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_vec(&json!({
        "type": "ScoreSubmitted", "version": 2, "event_id": event_id,
        "occurred_at": "2026-12-01T08:00:00.123456Z", "channel": "api_v1",
        "acc_nbr": account, "grade1": grade, "grade2": 4, "grade3": 3,
        "txt1": "", "txt2": "", "txt3": ""
    }))
    .unwrap();
    (event_id, payload)
}

/// Writes `count` events to `partition` of `topic`; returns their ids.
async fn fill(topic: &TestTopic, partition: i32, account: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let (id, payload) = event(account, (i % 5) as i32 + 1);
        topic.produce_raw(partition, account, &payload).await;
        ids.push(id);
    }
    ids
}

fn env(kafka: &KafkaArgs, database: &TestDatabase, group: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SCORES_KAFKA_BROKERS", kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", kafka.topic.clone()),
        ("SCORES_KEYS_TOPIC", keys_topic_of(&kafka.topic)),
        (
            "SCORES_ACCOUNT_PEPPER",
            pipeline_tests::TEST_ACCOUNT_PEPPER.to_owned(),
        ),
        (
            "SCORES_TOPIC_PARTITIONS",
            kafka.topic_partitions.to_string(),
        ),
        ("SCORES_TOPIC_REPLICATION", "1".to_owned()),
        ("SCORES_DATABASE_URL", database.admin_url()),
        ("SCORES_CONSUMER_GROUP", group.to_owned()),
    ]
}

/// Runs a projector command to its end; its exit status and output.
fn finish(args: &[&str], env: &[(&'static str, String)]) -> (ExitStatus, String) {
    let mut process = Service::projector_command(args, env);
    let status = process
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{args:?} did not finish\n{}", process.log_tail()));
    (status, process.log_tail_all())
}

async fn event_ids(database: &TestDatabase) -> HashSet<String> {
    database.event_id_counts().await.into_keys().collect()
}

#[tokio::test]
async fn tables_built_from_one_log_refuse_another_until_rebuilt_from_it() {
    // The first log, and the tables built from it.
    let first = TestTopic::create(2).await;
    let database = TestDatabase::create().await;
    let mut first_ids: HashSet<String> = fill(&first, 0, "13800000001", 5)
        .await
        .into_iter()
        .collect();
    first_ids.extend(fill(&first, 1, "13800000002", 4).await);
    let mut projector = Service::projector(&env(&first.kafka, &database, &unique_group()));
    assert!(
        eventually(LIMIT, || async { event_ids(&database).await == first_ids }).await,
        "the first log was not projected\n{}",
        projector.log_tail()
    );
    assert!(projector.terminate(Duration::from_secs(30)).is_some());
    let built = database.content(pipeline_tests::GRADE_CONTENT).await;

    // Another log under the same topic name: partition 0 longer than the
    // position with other events, partition 1 shorter than it.
    let broker = Broker::start();
    let other = TestTopic::create_on(&kafka_args_on(&broker.address(), first.name(), 2)).await;
    let mut other_ids: HashSet<String> = fill(&other, 0, "13900000001", 8)
        .await
        .into_iter()
        .collect();
    other_ids.extend(fill(&other, 1, "13900000002", 1).await);
    let other_env = env(&other.kafka, &database, &unique_group());

    let (status, output) = finish(&["run"], &other_env);
    assert_eq!(status.code(), Some(MISMATCH), "{output}");
    assert!(
        output.contains("partition 0: the stored position 5 does not stand on this log"),
        "the error names the partition and the position\n{output}"
    );
    assert!(output.contains("projector rebuild"), "{output}");
    assert_eq!(
        database.content(pipeline_tests::GRADE_CONTENT).await,
        built,
        "nothing of the other log was applied"
    );

    let (status, output) = finish(&["status"], &other_env);
    assert_eq!(status.code(), Some(MISMATCH), "{output}");
    for flagged in [
        "grade partition 0: the position does not stand on this log",
        "grade partition 1: the position does not stand on this log (the log's partition ends at offset 1",
        "account_summary partition 0",
    ] {
        assert!(output.contains(flagged), "{flagged}\n{output}");
    }

    // The way out: rebuild each projection from the log now under them.
    // With grade rebuilt, a projector running grade alone flags what is
    // still wrong with account_summary in its metrics.
    let (status, output) = finish(&["rebuild", "grade"], &other_env);
    assert!(status.success(), "rebuild grade\n{output}");
    let metrics_port = free_port();
    let mut grade_only = other_env.clone();
    grade_only.push(("SCORES_PROJECTIONS", "grade".to_owned()));
    grade_only.push(("SCORES_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")));
    let grade_projector = Service::projector(&grade_only);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let flagged = eventually(LIMIT, || async {
        let text = match reqwest::get(&metrics_url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => return false,
        };
        text.contains(r#"projector_log_mismatch{projection="account_summary",partition="0"} 1"#)
            && text.contains(r#"projector_log_mismatch{projection="grade",partition="0"} 0"#)
    })
    .await;
    assert!(
        flagged,
        "a running projector flags the mismatch of another projection\n{}",
        grade_projector.log_tail()
    );
    drop(grade_projector);
    let (status, output) = finish(&["rebuild", "account_summary"], &other_env);
    assert!(status.success(), "rebuild account_summary\n{output}");
    assert_eq!(event_ids(&database).await, other_ids);
    let (status, output) = finish(&["status"], &other_env);
    assert!(status.success(), "{output}");
    assert!(!output.contains("MISMATCH"), "{output}");

    // And the projector runs on it again, applying what comes next.
    let mut projector = Service::projector(&other_env);
    let (late_id, payload) = event("13900000003", 5);
    other.produce_raw(1, "13900000003", &payload).await;
    other_ids.insert(late_id);
    assert!(
        eventually(LIMIT, || async { event_ids(&database).await == other_ids }).await,
        "the rebuilt tables did not follow the log\n{}",
        projector.log_tail()
    );
    projector.terminate(Duration::from_secs(30));
    database.drop_database().await;
}
