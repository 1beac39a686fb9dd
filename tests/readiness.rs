//! "Ready means ready": the real projector binary answers `GET /readyz` with
//! 503 until it has joined its group and resumed every assigned partition
//! from MySQL, and with 200 after; a submission made once it is ready is in
//! `grade` right away. The time to visibility is printed, not asserted.

use std::time::{Duration, Instant};

use pipeline_tests::processes::{Service, free_port, wait_for_port};
use pipeline_tests::proxy::CuttableProxy;
use pipeline_tests::{
    RunningApi, TestDatabase, TestTopic, eventually, mysql_socket_address, unique_group,
};

/// Bound for every wait on the projector (joining, resuming, projecting);
/// far above what any of them takes, so that a slow machine does not fail
/// the test.
const LIMIT: Duration = Duration::from_secs(60);

/// `GET /readyz` on the projector's metrics port: the status and what the
/// body says.
async fn readyz(port: u16) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("the projector's metrics address answers");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    (
        status,
        body["status"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Starts `projector run` on `topic`, writing through `database_url`, in
/// `group`, with `extra` settings; returns it and its metrics port once that
/// listens.
fn start_projector(
    topic: &TestTopic,
    database_url: &str,
    group: &str,
    extra: &[(&str, &str)],
) -> (Service, u16) {
    let port = free_port();
    let mut env = vec![
        ("SCORES_KAFKA_BROKERS", topic.kafka.kafka_brokers.clone()),
        ("SCORES_TOPIC", topic.name().to_owned()),
        ("SCORES_DATABASE_URL", database_url.to_owned()),
        ("SCORES_CONSUMER_GROUP", group.to_owned()),
        ("SCORES_METRICS_ADDR", format!("127.0.0.1:{port}")),
        ("RUST_LOG", "projector=info".to_owned()),
    ];
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let projector = Service::projector(&env);
    wait_for_port(port, Duration::from_secs(30), "the projector's metrics");
    (projector, port)
}

/// Waits until the projector answers `/readyz` with 200; the time it took.
///
/// # Panics
///
/// When it has not within [`LIMIT`].
async fn await_ready(projector: &Service, port: u16) -> Duration {
    let started = Instant::now();
    let ready = eventually(LIMIT, || async { readyz(port).await.0 == 200 }).await;
    assert!(
        ready,
        "/readyz never answered 200 (last: {:?})\n{}",
        readyz(port).await,
        projector.log_tail()
    );
    started.elapsed()
}

/// Submits one score through `api` and waits until its row is in `grade`;
/// the time from the 2xx to the row.
///
/// # Panics
///
/// When the submission is refused or its row does not appear within
/// [`LIMIT`].
async fn time_to_visibility(api: &RunningApi, database: &TestDatabase, account: &str) -> Duration {
    let response = reqwest::Client::new()
        .post(api.url("/v1/scores"))
        .json(&serde_json::json!({"acc_nbr": account, "grade1": 5, "grade2": 4, "grade3": 3}))
        .send()
        .await
        .expect("the API answers");
    let acknowledged = Instant::now();
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.expect("a JSON answer");
    let event_id = answer["event_id"].as_str().expect("an event id").to_owned();
    let visible = eventually(LIMIT, || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM grade WHERE event_id = ?")
            .bind(&event_id)
            .fetch_one(&database.pool)
            .await
            .is_ok_and(|rows| rows == 1)
    })
    .await;
    assert!(visible, "the submission {event_id} never reached grade");
    acknowledged.elapsed()
}

#[tokio::test]
async fn readyz_is_503_until_the_partitions_are_resumed_from_mysql_and_a_submission_after_ready_is_projected()
 {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    // MySQL unreachable at start: the projector cannot load (nor migrate)
    // anything, so it does not even subscribe, and must not be ready.
    let mysql = CuttableProxy::start(mysql_socket_address()).await;
    mysql.cut().await;
    let (projector, port) = start_projector(
        &topic,
        &database.args_via(mysql.address).database_url,
        &unique_group(),
        &[],
    );
    let tried_mysql = eventually(LIMIT, || async {
        projector.log_tail_all().contains("migrations not applied")
    })
    .await;
    assert!(tried_mysql, "{}", projector.log_tail());
    assert_eq!(
        readyz(port).await,
        (503, "waiting for a partition assignment".to_owned()),
        "not ready while MySQL is unreachable"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("the projector answers");
    assert_eq!(health.status(), 200, "alive all the same");

    mysql.restore();
    let to_ready = await_ready(&projector, port).await;
    eprintln!("projector ready {to_ready:?} after MySQL came back");
    let log = projector.log_tail_all();
    assert!(
        log.contains("partitions assigned") && log.contains("assigned partitions resumed"),
        "ready only after the assignment was resumed:\n{log}"
    );

    let api = RunningApi::start(&topic.kafka).await;
    let visible_after = time_to_visibility(&api, &database, "13900000001").await;
    eprintln!("a submission made right after ready was in grade {visible_after:?} after its 2xx");

    api.stop().await;
    drop(projector);
    database.drop_database().await;
}

#[tokio::test]
async fn with_the_kip_848_group_protocol_the_projector_gets_ready_and_projects() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let (projector, port) = start_projector(
        &topic,
        &database.url,
        &unique_group(),
        &[("SCORES_KAFKA_OPTIONS", "group.protocol=consumer")],
    );
    let to_ready = await_ready(&projector, port).await;
    eprintln!("projector (group.protocol=consumer) ready {to_ready:?} after its port listened");

    let api = RunningApi::start(&topic.kafka).await;
    let visible_after = time_to_visibility(&api, &database, "13900000002").await;
    eprintln!(
        "group.protocol=consumer: a submission made right after ready was in grade {visible_after:?} after its 2xx"
    );

    api.stop().await;
    drop(projector);
    database.drop_database().await;
}

#[tokio::test]
async fn an_instance_the_group_gives_no_partition_is_ready_too() {
    // One partition, two instances: one of them owns nothing, and that is
    // all it has to resume.
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let group = unique_group();
    let (first, first_port) = start_projector(&topic, &database.url, &group, &[]);
    await_ready(&first, first_port).await;
    let (second, second_port) = start_projector(&topic, &database.url, &group, &[]);
    await_ready(&second, second_port).await;
    let both_ready = eventually(LIMIT, || async {
        readyz(first_port).await.0 == 200 && readyz(second_port).await.0 == 200
    })
    .await;
    assert!(
        both_ready,
        "both instances settle ready\n{}\n{}",
        first.log_tail(),
        second.log_tail()
    );
    let empty_assignment = |log: String| log.contains("partitions assigned partitions=[]");
    assert!(
        empty_assignment(first.log_tail_all()) || empty_assignment(second.log_tail_all()),
        "one instance was given no partition:\n{}\n{}",
        first.log_tail(),
        second.log_tail()
    );

    // And the group still projects.
    let api = RunningApi::start(&topic.kafka).await;
    time_to_visibility(&api, &database, "13900000003").await;

    api.stop().await;
    drop((first, second));
    database.drop_database().await;
}
