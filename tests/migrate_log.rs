//! `projector migrate-log` (issue 15), the real binary against the real
//! broker and MariaDB: a log in the old format (ratings in clear, keyed by
//! phone number, versions 1 and 2, an erasure, a record that is no event)
//! moves to a new topic in the sealed format with nothing lost, the new
//! topic shows no phone number or comment to Kafka's own console consumer,
//! and rebuilding every projection from it gives the tables the old log
//! gave.

use std::time::Duration;

use pipeline_tests::console::console_consume;
use pipeline_tests::processes::bin_dir;
use pipeline_tests::{
    ACCOUNT_SUMMARY_CONTENT, RunningProjector, TEST_ACCOUNT_PEPPER, TestDatabase, TestTopic,
    accepted_event, kafka_args, keys_topic_of, rebuild_args, unique_group,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use score_shared::{AccountForgotten, AccountRef, Channel, RawSubmission, ScoreSubmitted};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Every column of `grade` that does not depend on where in the log the
/// event is: the same in a log and its migrated copy.
const GRADE_CONTENT_WITHOUT_PLACE: &str = "SELECT CONCAT_WS('|', acc_nbr, grade1, grade2, grade3, \
     HEX(txt1), HEX(txt2), HEX(txt3), insert_time, event_id, channel, IFNULL(scene, '-'), \
     IFNULL(submission_digest, '-'), IFNULL(account_ref, '-')) FROM grade ORDER BY event_id";

const ACCOUNTS: usize = 40;
const FORGOTTEN: &str = "13600000007";

fn rating(account: &str, grade: i32, comment: &str) -> ScoreSubmitted {
    let raw = RawSubmission {
        acc_nbr: Some(json!(account)),
        grades: [Some(json!(grade)), Some(json!(4)), Some(json!(3))],
        texts: [Some(json!(comment)), None, None],
        scene: Some(json!("pages/score/score")),
    };
    accepted_event(&raw, Channel::LegacyForm)
}

fn comment(i: usize) -> String {
    format!("舊日誌的私密評論 {i}")
}

fn migrate(from: &TestTopic, to: &str, report: &str) -> String {
    let output = std::process::Command::new(bin_dir().join("projector"))
        .args(["migrate-log", "--to-topic", to, "--report", report])
        .env("SCORES_KAFKA_BROKERS", &from.kafka.kafka_brokers)
        .env("SCORES_TOPIC", from.name())
        .env("SCORES_KEYS_TOPIC", keys_topic_of(to))
        .env("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER)
        .env("SCORES_LOG_FORMAT", "text")
        .output()
        .expect("the projector binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "migrate-log failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_log_in_the_old_format_moves_to_the_sealed_format_with_nothing_lost() {
    let old = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let pepper = TEST_ACCOUNT_PEPPER.parse().expect("a pepper");

    // The old log: ratings in clear keyed by number (two per account, the
    // first of each as version 1), a record that is no event, and the
    // erasure of one account whose ratings stay in clear before it.
    let producer: FutureProducer =
        score_shared::kafka::producer_config(&old.kafka, Duration::from_secs(10))
            .create()
            .expect("a producer");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..ACCOUNTS {
        let account = format!("136{i:08}");
        let first = rating(&account, 5, &comment(i));
        let mut v1: serde_json::Value = serde_json::from_slice(&first.encode()).unwrap();
        v1["version"] = json!(1);
        v1.as_object_mut().unwrap().remove("scene");
        v1.as_object_mut().unwrap().remove("submission_digest");
        records.push((account.clone(), serde_json::to_vec(&v1).unwrap()));
        records.push((account.clone(), rating(&account, 2, "").encode()));
    }
    records.push(("13600000001".to_owned(), b"\xff not an event".to_vec()));
    let erasure = AccountForgotten::new(AccountRef::of(&pepper, FORGOTTEN), "ticket old-7");
    records.push((erasure.record_key(), erasure.encode()));
    for (key, payload) in &records {
        // The erasure of an old log goes where the number's events are.
        let key = if key.len() == 64 { FORGOTTEN } else { key };
        let record = FutureRecord::to(old.name()).key(key).payload(payload);
        producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .expect("the old log is written");
    }

    let projector = RunningProjector::start(&old.kafka, &database, &unique_group());
    database
        .await_grade_rows(2 * ACCOUNTS as i64, Duration::from_secs(60))
        .await;
    // Wait for the erasure, the last record, to be applied by both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM grade_erasure) + (SELECT COUNT(*) FROM account_summary_erasure)",
        )
        .fetch_one(&database.admin_pool)
        .await
        .unwrap();
        if applied == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the erasure was not applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    projector.stop().await;
    let grade_before = database.content(GRADE_CONTENT_WITHOUT_PLACE).await;
    let summary_before = database.content(ACCOUNT_SUMMARY_CONTENT).await;
    assert_eq!(grade_before.len(), 2 * ACCOUNTS);

    // The migration, as an operator runs it.
    let new = kafka_args(&format!("{}-sealed", old.name()), 3);
    let scratch = std::env::temp_dir().join(format!("migrate-{}", old.name()));
    std::fs::create_dir_all(&scratch).unwrap();
    let report = scratch.join("left-behind.jsonl");
    let printed = migrate(&old, &new.topic, report.to_str().unwrap());
    let expected = format!(
        "{} records read: {} sealed, 2 of forgotten accounts sealed without a key, 1 copied as \
         they were, 1 left behind; {} data keys written; verified: the new topic holds {} records",
        2 * ACCOUNTS + 2,
        2 * ACCOUNTS - 2,
        ACCOUNTS - 1,
        2 * ACCOUNTS + 1
    );
    assert!(
        printed.contains(&expected),
        "{printed}\nexpected: {expected}"
    );
    let left: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&report).unwrap().trim()).unwrap();
    assert!(
        left["offset"].is_number() && left["reason"].is_string(),
        "{left}"
    );

    // Again into the same topic: refused, nothing appended twice.
    let again = std::process::Command::new(bin_dir().join("projector"))
        .args(["migrate-log", "--to-topic", &new.topic])
        .env("SCORES_KAFKA_BROKERS", &old.kafka.kafka_brokers)
        .env("SCORES_TOPIC", old.name())
        .env("SCORES_KEYS_TOPIC", keys_topic_of(&new.topic))
        .env("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The new topic, read by Kafka's console consumer: no number, no
    // comment, every key an account reference.
    let brokers = old.kafka.kafka_brokers.clone();
    let topic = new.topic.clone();
    let copied = tokio::task::spawn_blocking(move || {
        console_consume(&brokers, &topic, Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert_eq!(copied.len(), 2 * ACCOUNTS + 1);
    for record in &copied {
        assert_eq!(record.key.len(), 64, "{record:?}");
        let value = record.value.as_deref().unwrap_or_default();
        assert!(!value.contains("136000000"), "a number in {record:?}");
        assert!(!value.contains("私密"), "a comment in {record:?}");
    }

    // Every projection rebuilt from the new topic: the same tables.
    for projection in ["grade", "account_summary"] {
        projector::rebuild::rebuild(
            &rebuild_args(&new, &database, projection, false),
            &CancellationToken::new(),
        )
        .await
        .expect("the rebuild from the new topic runs");
    }
    assert_eq!(
        database.content(GRADE_CONTENT_WITHOUT_PLACE).await,
        grade_before
    );
    assert_eq!(
        database.content(ACCOUNT_SUMMARY_CONTENT).await,
        summary_before
    );
    let forgotten_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grade WHERE acc_nbr = ?")
        .bind(AccountRef::of(&pepper, FORGOTTEN).placeholder())
        .fetch_one(&database.admin_pool)
        .await
        .unwrap();
    assert_eq!(forgotten_rows, 2);
    database.drop_database().await;
    let _ = std::fs::remove_dir_all(&scratch);
}
