//! Fault injection: the real binaries as separate processes, killed and
//! restarted under load, with the broker or MariaDB taken away. Each test
//! records every event id the API acknowledged and, after recovery, checks
//! `grade` against them: nothing acknowledged missing, nothing twice. Load
//! and kill points come from a seed printed at the start (replay a failure
//! with `SCORES_TEST_SEED`). Every wait is bounded.

use std::time::Duration;

use pipeline_tests::fault_checks::{RECOVERY, assert_exactly_once, service_env};
use pipeline_tests::processes::{Broker, Load, PrivateMariaDb, Seeded, Service};
use pipeline_tests::{TestDatabase, eventually};
use tokio::sync::Mutex;

/// One fault test at a time: each runs a broker, services and load of its
/// own, and together they would starve a 2-core machine into timeouts that
/// are not the fault under test.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Shorter than the default, so that an outage shows its 503s sooner.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// The settings of every service of one test on its single broker.
fn env(brokers: &str, database_url: &str) -> Vec<(&'static str, String)> {
    let mut env = service_env(brokers, 1, database_url);
    env.push((
        "SCORES_PUBLISH_TIMEOUT_MS",
        PUBLISH_TIMEOUT.as_millis().to_string(),
    ));
    env
}

#[tokio::test]
async fn a_broker_killed_under_load_means_503s_then_recovery_without_a_restart() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("broker kill");
    let mut broker = Broker::start();
    let database = TestDatabase::create().await;
    let env = env(&broker.address(), &database.url);
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let load = Load::start(vec![url.clone()], 8, 200_000, seed.between(1, u64::MAX));
    load.wait_for_more(200, Duration::from_secs(30)).await;

    broker.kill();
    // Requests in flight when the broker died may still be acknowledged by
    // it; after that, nothing may be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_outage = load.acknowledged();
    // Long enough for every send made after the kill to reach its publish
    // timeout (and its delivery report, which librdkafka may give up to a
    // second later), so that some 503 must have been answered.
    let outage = PUBLISH_TIMEOUT + Duration::from_millis(1500 + seed.between(0, 2000));
    tokio::time::sleep(outage).await;
    assert_eq!(
        load.acknowledged(),
        before_outage,
        "a 2xx was given while the broker was down"
    );
    let refused = load.refused();
    assert!(
        refused.contains(&503),
        "no 503 while the broker was down: {refused:?}"
    );

    broker.restart();
    load.wait_for_more(200, Duration::from_secs(60)).await;
    let report = load.finish().await;
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_projector_killed_five_times_mid_batch_projects_everything_once() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("projector kills");
    let database = TestDatabase::create().await;
    let broker = Broker::start();
    let env = env(&broker.address(), &database.url);
    let (api, url) = Service::ingest_api(&env);

    let load = Load::start(vec![url], 8, 4000, seed.between(1, u64::MAX));
    let mut projector = Service::projector(&env);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(seed.between(300, 1500))).await;
        projector.kill();
        tokio::time::sleep(Duration::from_millis(seed.between(0, 500))).await;
        projector = Service::projector(&env);
    }
    let report = load.complete().await;
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn mariadb_stopped_during_projection_is_waited_out() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("mariadb stop");
    let mut mariadb = PrivateMariaDb::start();
    let database = TestDatabase::create_on(&mariadb.url()).await;
    let broker = Broker::start();
    let env = env(&broker.address(), &database.url);
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let load = Load::start(vec![url], 8, 3000, seed.between(1, u64::MAX));
    load.wait_for_more(300, Duration::from_secs(30)).await;
    mariadb.stop();
    // The write path does not depend on MySQL: acknowledgments go on.
    load.wait_for_more(300, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(seed.between(3000, 5000))).await;
    mariadb.restart();

    let report = load.complete().await;
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
}

#[tokio::test]
async fn an_ingest_api_sent_sigterm_under_load_answers_in_flight_requests_and_exits_0() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let seed = Seeded::from_env("api sigterm").between(1, u64::MAX);
    let database = TestDatabase::create().await;
    let broker = Broker::start();
    let env = env(&broker.address(), &database.url);
    let (mut api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let load = Load::start(vec![url], 16, 100_000, seed);
    load.wait_for_more(300, Duration::from_secs(30)).await;
    let status = api.terminate(Duration::from_secs(15));
    let report = load.finish().await;
    assert!(
        status.is_some_and(|status| status.success()),
        "ingest-api did not exit 0 within 15 s of SIGTERM: {status:?}\n{}",
        api.log_tail()
    );
    // Requests sent after the listener closed get no answer.
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn two_ingest_apis_on_one_topic_project_everything_once() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let seed = Seeded::from_env("two apis").between(1, u64::MAX);
    let database = TestDatabase::create().await;
    let broker = Broker::start();
    let env = env(&broker.address(), &database.url);
    let (first, first_url) = Service::ingest_api(&env);
    let (second, second_url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let report = Load::start(vec![first_url, second_url], 8, 2000, seed)
        .complete()
        .await;
    assert_eq!(
        (report.refused.len(), report.unanswered),
        (0, 0),
        "{:?}",
        report.refused
    );
    assert_eq!(report.acknowledged.len(), 2000);
    assert_exactly_once(&database, &report, &[&first, &second, &projector]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn logs_never_hold_a_phone_number_in_full() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create().await;
    let mut broker = Broker::start();
    let mut env = env(&broker.address(), &database.url);
    // Everything, down to debug, that the services would ever log.
    env.push(("RUST_LOG", "debug".to_owned()));
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let account = "13812345678";
    let client = reqwest::Client::new();
    let valid = serde_json::json!({"acc_nbr": account, "grade1": 5, "grade2": 4, "grade3": 3});
    let invalid = serde_json::json!({"acc_nbr": account, "grade1": 9, "grade2": 4, "grade3": 3, "txt1": "\u{0}"});
    let legacy = [
        ("acc_nbr", format!("\"{account}\"")),
        ("grade1", "5".into()),
        ("grade2", "5".into()),
        ("grade3", "5".into()),
    ];
    assert_eq!(
        client
            .post(format!("{url}/v1/scores"))
            .json(&valid)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        client
            .post(format!("{url}/v1/scores"))
            .json(&invalid)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        client
            .post(format!("{url}/score"))
            .form(&legacy)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(eventually(RECOVERY, || async { database.grade_count().await == 2 }).await);
    // And with the broker gone.
    broker.kill();
    assert_eq!(
        client
            .post(format!("{url}/v1/scores"))
            .json(&valid)
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    let api_log = api.log_tail_all();
    assert!(
        api_log.contains("138****5678"),
        "the API logs the masked number:\n{api_log}"
    );
    for service in [&api, &projector] {
        let log = service.log_tail_all();
        assert!(
            !log.contains(account),
            "a full phone number in the log:\n{log}"
        );
    }
    database.drop_database().await;
}
