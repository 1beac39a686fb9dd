//! The log as source of truth: rebuilds, projections built from history,
//! event versions and dead-letter re-drive, against the real broker and
//! MariaDB.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pipeline_tests::{
    ACCOUNT_SUMMARY_CONTENT, GRADE_CONTENT, RunningApi, RunningProjector, TestDatabase, TestTopic,
    eventually, rebuild_args, submit_many, unique_group,
};
use projector::config::DecoderArgs;
use projector::dead_letters::{self, RetryResult};
use projector::rebuild;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

/// A version 1 event, as writers before version 2 wrote it.
fn v1_event(event_id: &str, account: &str, grade1: i32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "ScoreSubmitted", "version": 1, "event_id": event_id,
        "occurred_at": "2026-11-20T08:00:00.123456Z", "channel": "legacy_form",
        "acc_nbr": account, "grade1": grade1, "grade2": 4, "grade3": 3,
        "txt1": "舊版", "txt2": "", "txt3": ""
    }))
    .unwrap()
}

async fn grade_and_summary(database: &TestDatabase) -> (Vec<String>, Vec<String>) {
    (
        database.content(GRADE_CONTENT).await,
        database.content(ACCOUNT_SUMMARY_CONTENT).await,
    )
}

async fn summary_submissions(database: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT CAST(COALESCE(SUM(submissions), 0) AS SIGNED) FROM account_summary")
        .fetch_one(&database.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rebuild_reproduces_the_live_tables_row_for_row_and_repairs_damage() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    // Several accounts (each submitting more than once) over 3 partitions,
    // a client retry with an Idempotency-Key, and a dead letter.
    let mut acknowledged = HashSet::new();
    for round in 0..3 {
        acknowledged.extend(submit_many(&api, &format!("1380{round}"), 60).await);
        acknowledged.extend(submit_many(&api, "13899", 20).await);
    }
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(api.url("/v1/scores"))
            .header("Idempotency-Key", "retry-1")
            .json(&json!({"acc_nbr": "13812345678", "grade1": 1, "grade2": 2, "grade3": 3, "scene": "pages/a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        acknowledged.insert(
            response.json::<Value>().await.unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    topic.produce_raw(1, "13800000000", b"not an event").await;
    let expected_rows = acknowledged.len() as i64;
    database.await_grade_rows(expected_rows, LIMIT).await;
    assert!(
        eventually(LIMIT, || async {
            summary_submissions(&database).await == expected_rows
        })
        .await
    );
    let live = grade_and_summary(&database).await;
    assert_eq!(live.0.len() as i64, expected_rows);

    // Damage the live tables the way an operator's mistake would.
    sqlx::query("DELETE FROM grade WHERE acc_nbr LIKE '13801%'")
        .execute(&database.admin_pool)
        .await
        .unwrap();
    sqlx::query("UPDATE account_summary SET submissions = 999")
        .execute(&database.admin_pool)
        .await
        .unwrap();
    assert_ne!(grade_and_summary(&database).await, live);

    for projection in ["grade", "account_summary"] {
        let summary = rebuild::rebuild(
            &rebuild_args(&topic.kafka, &database, projection, false),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("rebuilding {projection}: {e:#}"));
        assert_eq!(summary.dead_lettered, 1, "{summary}");
    }
    assert_eq!(
        grade_and_summary(&database).await,
        live,
        "the rebuild differs from the live tables"
    );
    let dead: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letter WHERE projection = 'grade'")
            .fetch_one(&database.pool)
            .await
            .unwrap();
    assert_eq!(
        dead, 1,
        "the rebuilt dead letters are swapped in with the rows"
    );

    // The live projector carries on from the swapped-in positions.
    acknowledged.extend(submit_many(&api, "13805", 30).await);
    let expected_rows = acknowledged.len() as i64;
    database.await_grade_rows(expected_rows, LIMIT).await;
    assert!(
        database
            .event_id_counts()
            .await
            .values()
            .all(|count| *count == 1)
    );

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_rebuild_under_load_keeps_readers_served_and_every_event_once() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = Arc::new(RunningApi::start(&topic.kafka).await);
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    let mut acknowledged = HashSet::new();
    for wave in 0..10 {
        acknowledged.extend(submit_many(&api, &format!("1370{wave}"), 100).await);
    }
    database.await_grade_rows(1000, LIMIT).await;

    // An analyst polling the table throughout.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = tokio::spawn({
        let pool = database.pool.clone();
        let reading = reading.clone();
        async move {
            let mut last = 0_i64;
            let mut reads = 0;
            while reading.load(Ordering::SeqCst) {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grade")
                    .fetch_one(&pool)
                    .await
                    .expect("grade must stay readable during a rebuild");
                assert!(
                    count >= last,
                    "the row count dropped from {last} to {count}"
                );
                last = count;
                reads += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        }
    });
    // Submissions keep arriving.
    let writer = tokio::spawn({
        let api = api.clone();
        async move {
            let mut acknowledged = HashSet::new();
            for wave in 0..8 {
                acknowledged.extend(submit_many(&api, &format!("1371{wave}"), 50).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acknowledged
        }
    });

    let summary = rebuild::rebuild(
        &rebuild_args(&topic.kafka, &database, "grade", true),
        &CancellationToken::new(),
    )
    .await
    .expect("the rebuild under load");
    acknowledged.extend(writer.await.unwrap());
    let expected = acknowledged.len() as i64;
    assert!(
        eventually(LIMIT, || async { database.grade_count().await >= expected }).await,
        "only {} of {expected} rows",
        database.grade_count().await
    );
    reading.store(false, Ordering::SeqCst);
    let reads = reader
        .await
        .expect("the reader never saw the count drop or the table missing");
    assert!(reads > 10, "the reader ran only {reads} times");

    let counts = database.event_id_counts().await;
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), acknowledged);
    assert!(
        counts.values().all(|count| *count == 1),
        "an event is in grade twice"
    );
    assert!(summary.events >= 1000, "{summary}");
    assert_eq!(summary.kept_old_tables[0], "grade__old");
    let old: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grade__old")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert!(old >= 1000, "--keep-old kept the replaced table");

    // Kept tables are never dropped without being asked.
    let mut again = rebuild_args(&topic.kafka, &database, "grade", false);
    let refused = rebuild::rebuild(&again, &CancellationToken::new())
        .await
        .expect_err("a rebuild must not replace kept tables unasked");
    let message = format!("{refused:#}");
    assert!(message.contains("grade__old"), "{message}");
    assert!(message.contains("--drop-kept"), "{message}");
    let still: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grade__old")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(still, old);
    again.drop_kept = true;
    rebuild::rebuild(&again, &CancellationToken::new())
        .await
        .expect("told to, it drops them");
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'grade__old'",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(kept, 0);

    projector.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_projection_added_later_builds_itself_from_the_whole_log() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let group = unique_group();

    let only_grade = vec!["grade".to_owned()];
    let projector = RunningProjector::start_configured(
        &topic.kafka,
        database.args(),
        &group,
        only_grade,
        pipeline_tests::test_decoder_args(&topic.kafka),
    );
    let acknowledged = submit_many(&api, "13600", 150).await;
    database.await_grade_rows(150, LIMIT).await;
    projector.stop().await;
    assert_eq!(
        summary_submissions(&database).await,
        0,
        "account_summary was not running yet"
    );

    // account_summary joins: no stored position, so it starts at offset 0
    // while grade carries on where it was.
    let projector = RunningProjector::start(&topic.kafka, &database, &group);
    assert!(
        eventually(LIMIT, || async {
            summary_submissions(&database).await == 150
        })
        .await,
        "account_summary counted {} of 150",
        summary_submissions(&database).await
    );
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM account_summary")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 150);
    assert_eq!(
        database.grade_count().await,
        150,
        "grade applied nothing twice"
    );
    assert_eq!(database.event_id_counts().await.len(), acknowledged.len());

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn v1_and_sealed_events_project_an_unknown_version_waits_in_dead_letters_until_retried() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;

    // One partition, in this order: v1, v3 (from the API: sealed, with a
    // scene), an unknown version 99, another v1.
    topic
        .produce_raw(
            0,
            "13500000001",
            &v1_event("0192f0c4-0000-7000-8000-000000000001", "13500000001", 5),
        )
        .await;
    let response = reqwest::Client::new()
        .post(api.url("/score"))
        .form(&[
            ("acc_nbr", "\"13500000002\""),
            ("grade1", "4"),
            ("grade2", "4"),
            ("grade3", "4"),
            ("scene", "\"pages/score/score\""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    topic
        .produce_raw(
            0,
            "13500000003",
            br#"{"type":"ScoreSubmitted","version":99,"acc_nbr":"13500000003"}"#,
        )
        .await;
    topic
        .produce_raw(
            0,
            "13500000004",
            &v1_event("0192f0c4-0000-7000-8000-000000000004", "13500000004", 2),
        )
        .await;

    // A projector rolled out before its writers: it accepts version 1 only.
    let v1_only = DecoderArgs {
        event_versions: vec![1],
        ..pipeline_tests::test_decoder_args(&topic.kafka)
    };
    let names = projector::projection::names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let projector = RunningProjector::start_configured(
        &topic.kafka,
        database.args(),
        &unique_group(),
        names,
        v1_only,
    );
    database.await_grade_rows(2, LIMIT).await;
    let open = dead_letters::list(&database.pool, Some("grade"), false)
        .await
        .unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(
        open[0].error.contains("version 3 is not enabled"),
        "{}",
        open[0].error
    );
    assert!(
        open[1]
            .error
            .contains("unknown event type \"ScoreSubmitted\" version 99"),
        "{}",
        open[1].error
    );

    // v1 events project as they always did: no scene.
    let v1_row: (String, i32, String, Option<String>) = sqlx::query_as(
        "SELECT acc_nbr, grade1, txt1, scene FROM grade WHERE acc_nbr = '13500000001'",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(
        v1_row,
        ("13500000001".to_owned(), 5, "舊版".to_owned(), None)
    );

    // The fix: version 3 enabled. Retrying opens it with its key and applies
    // it once; 99 still fails.
    let fixed = pipeline_tests::test_decoder(&topic.kafka).await;
    for projection in ["grade", "account_summary"] {
        let outcomes = dead_letters::retry(&database.projector_pool, projection, None, &fixed)
            .await
            .unwrap();
        let results: Vec<_> = outcomes.iter().map(|o| o.outcome.clone()).collect();
        assert_eq!(
            results,
            [
                RetryResult::Applied,
                RetryResult::StillFailing("unknown_event".into())
            ],
            "{projection}"
        );
    }
    let again = dead_letters::retry(
        &database.projector_pool,
        "grade",
        Some(&[open[0].id]),
        &fixed,
    )
    .await
    .unwrap();
    assert_eq!(again[0].outcome, RetryResult::AlreadyResolved);

    let scene: Option<String> =
        sqlx::query_scalar("SELECT scene FROM grade WHERE acc_nbr = '13500000002'")
            .fetch_one(&database.pool)
            .await
            .unwrap();
    assert_eq!(scene.as_deref(), Some("pages/score/score"));
    assert_eq!(database.grade_count().await, 3);
    assert_eq!(summary_submissions(&database).await, 3);
    let still_open = dead_letters::list(&database.pool, None, false)
        .await
        .unwrap();
    assert_eq!(
        still_open.len(),
        2,
        "version 99 stays open in both projections: {still_open:?}"
    );

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_killed_rebuild_leaves_the_live_tables_untouched_and_a_rerun_succeeds() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    for wave in 0..10 {
        submit_many(&api, &format!("1340{wave}"), 100).await;
    }
    database.await_grade_rows(1000, LIMIT).await;
    projector.stop().await;
    let live = grade_and_summary(&database).await;
    let positions: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, next_offset FROM grade_position ORDER BY 1")
            .fetch_all(&database.pool)
            .await
            .unwrap();

    // Kill it at different points: as soon as it has started, and once the
    // shadow holds rows.
    for shadow_rows_before_kill in [0, 200] {
        let args = rebuild_args(&topic.kafka, &database, "grade", false);
        let running =
            tokio::spawn(async move { rebuild::rebuild(&args, &CancellationToken::new()).await });
        let pool = database.pool.clone();
        assert!(
            eventually(LIMIT, || async {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM grade__shadow")
                    .fetch_one(&pool)
                    .await
                    .is_ok_and(|rows| rows >= shadow_rows_before_kill)
            })
            .await
        );
        running.abort();
        let _ = running.await;
        assert_eq!(
            grade_and_summary(&database).await,
            live,
            "a killed rebuild changed the live tables"
        );
        let after: Vec<(i32, i64)> =
            sqlx::query_as("SELECT kafka_partition, next_offset FROM grade_position ORDER BY 1")
                .fetch_all(&database.pool)
                .await
                .unwrap();
        assert_eq!(after, positions);
    }

    let summary = rebuild::rebuild(
        &rebuild_args(&topic.kafka, &database, "grade", false),
        &CancellationToken::new(),
    )
    .await
    .expect("a rerun succeeds");
    assert_eq!(summary.events, 1000);
    assert_eq!(grade_and_summary(&database).await, live);

    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn status_shows_each_projections_position_lag_and_dead_letters_per_partition() {
    let topic = TestTopic::create(2).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    submit_many(&api, "13300", 40).await;
    topic.produce_raw(1, "13300000000", b"garbage").await;

    // Before any projector ran: positions 0, the whole log as lag.
    let before = projector::status::status(&database.pool, &topic.kafka)
        .await
        .unwrap();
    assert_eq!(before.len(), 4, "2 projections x 2 partitions: {before:?}");
    assert_eq!(before.iter().filter_map(|row| row.lag).sum::<i64>(), 2 * 41);

    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    assert!(
        eventually(LIMIT, || async {
            summary_submissions(&database).await == 40
        })
        .await
    );
    database.await_grade_rows(40, LIMIT).await;
    let after = projector::status::status(&database.pool, &topic.kafka)
        .await
        .unwrap();
    for row in &after {
        assert_eq!(row.lag, Some(0), "{row:?}");
        assert_eq!(Some(row.position), row.high_watermark, "{row:?}");
        assert!(row.last_event_at.is_some(), "{row:?}");
        assert_eq!(row.dead_letters, i64::from(row.partition == 1), "{row:?}");
    }
    let table = projector::status::render(&after);
    assert!(
        table.contains("account_summary") && table.contains("grade"),
        "{table}"
    );

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn retrying_every_dead_letter_goes_on_past_one_mysql_still_refuses() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let v2 = |event_id: &str, account: &str, txt1: &str| {
        serde_json::to_vec(&json!({
            "type": "ScoreSubmitted", "version": 2, "event_id": event_id,
            "occurred_at": "2026-11-20T08:00:00.123456Z", "channel": "api_v1",
            "acc_nbr": account, "grade1": 5, "grade2": 4, "grade3": 3,
            "txt1": txt1, "txt2": "", "txt3": ""
        }))
        .unwrap()
    };
    let refused = v2(
        "0192f0c4-0000-7000-8000-0000000000a1",
        "13500000011",
        "far too long",
    );
    let fine = v2("0192f0c4-0000-7000-8000-0000000000a2", "13500000012", "ok");
    topic.produce_raw(0, "13500000011", &refused).await;
    topic.produce_raw(0, "13500000012", &fine).await;

    // Both wait as dead letters under a projector that takes version 1 only.
    let v1_only = DecoderArgs {
        event_versions: vec![1],
        ..pipeline_tests::test_decoder_args(&topic.kafka)
    };
    let projector = RunningProjector::start_configured(
        &topic.kafka,
        database.args(),
        &unique_group(),
        vec!["grade".to_owned()],
        v1_only,
    );
    let parked = eventually(LIMIT, || async {
        dead_letters::list(&database.pool, Some("grade"), false)
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    assert!(parked, "both events should be dead letters");
    projector.stop().await;

    // A column too narrow now for the first one: MySQL refuses it.
    sqlx::query("ALTER TABLE grade MODIFY txt1 VARCHAR(3) NOT NULL")
        .execute(&database.admin_pool)
        .await
        .unwrap();
    let fixed = pipeline_tests::test_decoder(&topic.kafka).await;
    let outcomes = dead_letters::retry(&database.projector_pool, "grade", None, &fixed)
        .await
        .expect("one refused row does not end the retry");
    let results: Vec<_> = outcomes.iter().map(|o| o.outcome.clone()).collect();
    assert_eq!(
        results,
        [
            RetryResult::StillFailing("unwritable".into()),
            RetryResult::Applied
        ]
    );
    assert_eq!(database.grade_count().await, 1);
    let open = dead_letters::list(&database.pool, Some("grade"), false)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].attempts, 2);
    assert!(
        open[0].error.starts_with("unwritable: "),
        "{}",
        open[0].error
    );
    database.drop_database().await;
}

/// Appends records in a transaction that is then aborted: the offsets they
/// and the abort marker take are never delivered to a reader, a gap the log
/// really has.
async fn abort_a_transaction(topic: &TestTopic, records: usize) {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

    let kafka = topic.kafka.clone();
    let name = topic.name().to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", &kafka.kafka_brokers)
            .set("transactional.id", unique_group())
            .create()
            .expect("a transactional producer");
        let wait = Duration::from_secs(30);
        producer.init_transactions(wait).expect("init_transactions");
        producer.begin_transaction().expect("begin_transaction");
        for _ in 0..records {
            producer
                .send(
                    BaseRecord::to(&name)
                        .partition(0)
                        .key("x")
                        .payload("aborted"),
                )
                .map_err(|(error, _)| error)
                .expect("an aborted record is sent");
        }
        producer.flush(wait).expect("flush");
        producer.abort_transaction(wait).expect("abort_transaction");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_live_loop_and_a_rebuild_both_cross_a_gap_the_log_really_has() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    topic
        .produce_raw(
            0,
            "13500000021",
            &v1_event("0192f0c4-0000-7000-8000-0000000000b1", "13500000021", 5),
        )
        .await;
    abort_a_transaction(&topic, 3).await;
    let after = topic
        .produce_raw(
            0,
            "13500000022",
            &v1_event("0192f0c4-0000-7000-8000-0000000000b2", "13500000022", 4),
        )
        .await;
    assert!(
        after >= 5,
        "the aborted records and marker take offsets 1..=4"
    );

    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    database.await_grade_rows(2, LIMIT).await;
    projector.stop().await;
    let live = grade_and_summary(&database).await;

    let rebuilt = tokio::time::timeout(
        LIMIT,
        rebuild::rebuild(
            &rebuild_args(&topic.kafka, &database, "grade", false),
            &CancellationToken::new(),
        ),
    )
    .await
    .expect("the rebuild crosses the gap instead of seeking back to it forever")
    .expect("the rebuild");
    assert_eq!(rebuilt.positions.get(&0), Some(&(after + 1)));
    assert_eq!(grade_and_summary(&database).await, live);
    database.drop_database().await;
}
