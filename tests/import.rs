//! `projector import-legacy`, the real binary, on tables made in the original
//! service's schema: every valid row reaches `grade` through the log with
//! its original `insert_time`, odd rows are reported and not appended, and a
//! re-run appends nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use pipeline_tests::processes::Service;
use pipeline_tests::{
    RunningProjector, TEST_ACCOUNT_PEPPER, TestDatabase, TestTopic, keys_topic_of, unique_group,
};
use serde_json::Value;
use sqlx::Executor;

/// Rows in the table with an `id`.
const ROWS: i64 = 3000;

/// The ids of the rows that break a rule, and why.
const ODD_ROWS: [(i64, &str); 6] = [
    (
        100,
        "UPDATE legacy_grade SET acc_nbr = 'abc' WHERE id = 100",
    ),
    (200, "UPDATE legacy_grade SET grade1 = 9 WHERE id = 200"),
    (300, "UPDATE legacy_grade SET grade2 = NULL WHERE id = 300"),
    (
        400,
        "UPDATE legacy_grade SET insert_time = NULL WHERE id = 400",
    ),
    (
        500,
        "UPDATE legacy_grade SET txt1 = CONCAT('bell', CHAR(7)) WHERE id = 500",
    ),
    (
        600,
        "UPDATE legacy_grade SET txt3 = REPEAT('長', 501) WHERE id = 600",
    ),
];

/// Odd rows that are nonetheless valid.
const ODD_BUT_VALID: [&str; 3] = [
    "UPDATE legacy_grade SET txt2 = NULL WHERE id = 700",
    "UPDATE legacy_grade SET acc_nbr = '+8613912345678' WHERE id = 800",
    "UPDATE legacy_grade SET txt1 = '''); DROP TABLE grade; -- 👍' WHERE id = 900",
];

/// The original table, roughly as the Flask service's DBA made it.
async fn make_legacy_tables(database: &TestDatabase) {
    let admin = &database.admin_pool;
    admin
        .execute(
            "CREATE TABLE legacy_grade (
                 id          INT AUTO_INCREMENT PRIMARY KEY,
                 acc_nbr     VARCHAR(32),
                 grade1      INT, grade2 INT, grade3 INT,
                 txt1        VARCHAR(1000), txt2 VARCHAR(1000), txt3 VARCHAR(1000),
                 insert_time DATETIME
             ) DEFAULT CHARSET = utf8mb4",
        )
        .await
        .expect("creating the legacy table");
    // Rows 1..=ROWS, made by MariaDB's sequence engine.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO legacy_grade (acc_nbr, grade1, grade2, grade3, txt1, txt2, txt3, insert_time)
             SELECT CONCAT('139', LPAD(seq MOD 700, 8, '0')), 1 + seq MOD 5, 1 + seq MOD 3, 5 - seq MOD 5,
                    CONCAT('服務很好 ', seq), IF(seq MOD 2 = 0, '', '環境不錯'), '',
                    '2019-03-01 08:00:00' + INTERVAL seq MINUTE
             FROM seq_1_to_{ROWS}"
        )))
        .await
        .expect("filling the legacy table");
    for (_, statement) in ODD_ROWS {
        admin.execute(statement).await.expect("an odd row");
    }
    for statement in ODD_BUT_VALID {
        admin
            .execute(statement)
            .await
            .expect("an odd but valid row");
    }
    // Without an id, a numeric account column, and identical rows among
    // rows that only a case- and trailing-space-insensitive collation takes
    // for equal, interleaved.
    admin
        .execute(
            "CREATE TABLE legacy_grade_noid (
                 acc_nbr BIGINT, grade1 INT, grade2 INT, grade3 INT,
                 txt1 TEXT, txt2 TEXT, txt3 TEXT, insert_time DATETIME
             ) DEFAULT CHARSET = utf8mb4",
        )
        .await
        .expect("creating the table without id");
    admin
        .execute(
            "INSERT INTO legacy_grade_noid VALUES
                 (13800000001, 5, 5, 5, '好', '', '', '2018-01-01 10:00:00'),
                 (13800000001, 5, 5, 5, '好 ', '', '', '2018-01-01 10:00:00'),
                 (13800000001, 5, 5, 5, '好', '', '', '2018-01-01 10:00:00'),
                 (13800000001, 5, 5, 5, '好 ', '', '', '2018-01-01 10:00:00'),
                 (13800000003, 4, 4, 4, 'Ok', '', '', '2018-01-01 10:00:00'),
                 (13800000003, 4, 4, 4, 'ok', '', '', '2018-01-01 10:00:00'),
                 (13800000003, 4, 4, 4, 'Ok', '', '', '2018-01-01 10:00:00'),
                 (13800000002, 3, 4, 5, '', '', '', '2018-01-02 11:00:00')",
        )
        .await
        .expect("filling the table without id");
}

/// Runs `projector import-legacy` to its end; returns the summary line.
fn import(topic: &TestTopic, database: &TestDatabase, table: &str, report: &str) -> String {
    let env = [
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_KEYS_TOPIC", keys_topic_of(topic.name())),
        ("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER.to_owned()),
        ("SCORES_LEGACY_DATABASE_URL", database.admin_url()),
        ("SCORES_LOG_FORMAT", "text".to_owned()),
    ];
    let mut process = Service::projector_command(
        &["import-legacy", "--table", table, "--report", report],
        &env,
    );
    let status = process
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the import did not finish\n{}", process.log_tail()));
    assert!(
        status.success(),
        "the import failed\n{}",
        process.log_tail()
    );
    process
        .log_tail_all()
        .lines()
        .find(|line| line.contains("rows read:"))
        .unwrap_or_else(|| panic!("no summary line\n{}", process.log_tail()))
        .to_owned()
}

/// The original columns of the valid legacy rows and of `grade`, one line a
/// row, in the same format.
const LEGACY_CONTENT: &str = "SELECT CONCAT_WS('|', acc_nbr, grade1, grade2, grade3, HEX(IFNULL(txt1, '')), \
     HEX(IFNULL(txt2, '')), HEX(IFNULL(txt3, '')), DATE_FORMAT(insert_time, '%Y-%m-%d %H:%i:%s.%f')) \
     FROM legacy_grade WHERE id NOT IN (100, 200, 300, 400, 500, 600)";
const GRADE_CONTENT: &str = "SELECT CONCAT_WS('|', acc_nbr, grade1, grade2, grade3, HEX(txt1), HEX(txt2), \
     HEX(txt3), DATE_FORMAT(insert_time, '%Y-%m-%d %H:%i:%s.%f')) \
     FROM grade WHERE channel = 'legacy_import' AND acc_nbr NOT LIKE '138%'";

// Two workers: the test waits for the binaries it runs (blocking) while the
// projector it started in this process applies what they wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_table_is_imported_once_and_its_odd_rows_are_reported() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    make_legacy_tables(&database).await;
    let scratch = std::env::temp_dir().join(format!("import-{}", topic.name()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let report = scratch.join("rejected.jsonl");
    let report = report.to_str().expect("a UTF-8 path");
    let valid = ROWS - ODD_ROWS.len() as i64;

    let summary = import(&topic, &database, "legacy_grade", report);
    assert!(
        summary.contains(&format!(
            "{ROWS} rows read: {valid} appended, 0 already in the log, 0 of forgotten accounts skipped, 6 rejected"
        )),
        "{summary}"
    );
    assert_eq!(topic.record_count().await, valid);

    // The report names each odd row, and never a phone number in full.
    let text = std::fs::read_to_string(report).expect("the report");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let reported: BTreeSet<String> = lines
        .iter()
        .map(|line| line["row"].as_str().expect("a row").to_owned())
        .collect();
    let expected: BTreeSet<String> = ODD_ROWS.iter().map(|(id, _)| format!("id:{id}")).collect();
    assert_eq!(reported, expected);
    let fields: BTreeSet<&str> = lines
        .iter()
        .flat_map(|line| line["errors"].as_array().expect("errors"))
        .map(|error| error["field"].as_str().expect("a field"))
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["acc_nbr", "grade1", "grade2", "insert_time", "txt1", "txt3"])
    );
    for (id, _) in &ODD_ROWS[1..] {
        let full = format!("139{:08}", id % 700);
        assert!(
            !text.contains(&full),
            "{full} is masked in the report: {text}"
        );
    }

    // Projected, the valid rows are the legacy rows, times included.
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    database
        .await_grade_rows(valid, Duration::from_secs(120))
        .await;
    let sorted = |mut lines: Vec<String>| {
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(database.content(GRADE_CONTENT).await),
        sorted(database.content(LEGACY_CONTENT).await)
    );

    // Again: nothing new.
    let again = import(&topic, &database, "legacy_grade", report);
    assert!(
        again.contains(&format!(
            "{ROWS} rows read: 0 appended, {valid} already in the log, 0 of forgotten accounts skipped, 6 rejected"
        )),
        "{again}"
    );
    assert_eq!(topic.record_count().await, valid);

    // Without an id column, identical rows are still two submissions.
    let no_id = import(&topic, &database, "legacy_grade_noid", report);
    assert!(
        no_id.contains("8 rows read: 8 appended, 0 already in the log, 0 of forgotten accounts skipped, 0 rejected"),
        "{no_id}"
    );
    let no_id_again = import(&topic, &database, "legacy_grade_noid", report);
    assert!(
        no_id_again.contains("8 rows read: 0 appended, 8 already in the log, 0 of forgotten accounts skipped, 0 rejected"),
        "{no_id_again}"
    );
    database
        .await_grade_rows(valid + 8, Duration::from_secs(60))
        .await;
    // Each row once, byte for byte: "好" and "好 " are different ratings.
    let imported: Vec<String> = sqlx::query_scalar(
        "SELECT CONCAT_WS('|', acc_nbr, HEX(txt1), DATE_FORMAT(insert_time, '%Y-%m-%d %H:%i:%s')) \
         FROM grade WHERE acc_nbr LIKE '138000000%' ORDER BY acc_nbr, HEX(txt1)",
    )
    .fetch_all(&database.pool)
    .await
    .expect("reading the imported rows");
    assert_eq!(
        imported,
        [
            "13800000001|E5A5BD|2018-01-01 10:00:00",
            "13800000001|E5A5BD|2018-01-01 10:00:00",
            "13800000001|E5A5BD20|2018-01-01 10:00:00",
            "13800000001|E5A5BD20|2018-01-01 10:00:00",
            "13800000002||2018-01-02 11:00:00",
            "13800000003|4F6B|2018-01-01 10:00:00",
            "13800000003|4F6B|2018-01-01 10:00:00",
            "13800000003|6F6B|2018-01-01 10:00:00",
        ]
    );

    // A person forgotten before their legacy rows were imported: a re-run
    // skips the rows, counted, and appends nothing of theirs.
    sqlx::query(
        "INSERT INTO legacy_grade_noid VALUES (13800000009, 1, 2, 3, '忘了我', '', '', '2018-01-03 09:00:00')",
    )
    .execute(&database.admin_pool)
    .await
    .expect("a late legacy row");
    let env = [
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_KEYS_TOPIC", keys_topic_of(topic.name())),
        ("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER.to_owned()),
        ("SCORES_DATABASE_URL", database.args().database_url),
    ];
    let mut forget = Service::projector_command(
        &["forget", "13800000009", "--reason", "legacy request 9"],
        &env,
    );
    let forgotten = forget.wait(Duration::from_secs(120));
    assert!(
        forgotten.is_some_and(|status| status.success()),
        "the forget failed\n{}",
        forget.log_tail()
    );
    let records_before = topic.record_count().await;
    let after_forget = import(&topic, &database, "legacy_grade_noid", report);
    assert!(
        after_forget.contains(
            "9 rows read: 0 appended, 8 already in the log, 1 of forgotten accounts skipped, 0 rejected"
        ),
        "{after_forget}"
    );
    assert_eq!(topic.record_count().await, records_before);

    projector.stop().await;
    database.drop_database().await;
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test]
async fn a_table_without_the_original_columns_is_refused_naming_them() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    database
        .admin_pool
        .execute("CREATE TABLE not_grade (id INT, acc_nbr VARCHAR(20), grade1 INT)")
        .await
        .expect("creating a table");
    let env = [
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_KEYS_TOPIC", keys_topic_of(topic.name())),
        ("SCORES_ACCOUNT_PEPPER", TEST_ACCOUNT_PEPPER.to_owned()),
        ("SCORES_LEGACY_DATABASE_URL", database.admin_url()),
    ];
    let mut process = Service::projector_command(&["import-legacy", "--table", "not_grade"], &env);
    let status = process
        .wait(Duration::from_secs(60))
        .expect("the import ends");
    assert!(!status.success());
    let log = process.log_tail_all();
    assert!(
        log.contains("lacks the original columns grade2, grade3, txt1, txt2, txt3, insert_time"),
        "{log}"
    );
    assert_eq!(topic.record_count().await, 0);
    database.drop_database().await;
}
