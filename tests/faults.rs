//! Fault injection: the real binaries as separate processes, killed and
//! restarted under load, with the broker or MariaDB taken away. Each test
//! records every event id the API acknowledged and, after recovery, checks
//! `grade` against them: nothing acknowledged missing, nothing twice. Load
//! and kill points come from a seed printed at the start (replay a failure
//! with `SCORES_TEST_SEED`). Every wait is bounded.

use std::collections::HashSet;
use std::time::Duration;

use pipeline_tests::processes::{Broker, Load, LoadReport, PrivateMariaDb, Seeded, Service};
use pipeline_tests::{TestDatabase, eventually, unique_group};
use tokio::sync::Mutex;

/// One fault test at a time: each runs a broker, services and load of its
/// own, and together they would starve a 2-core machine into timeouts that
/// are not the fault under test.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long projection may take to catch up after the last fault (a killed
/// consumer's partitions move on after its 45 s session timeout, or on
/// Tansu after the survivor's 60 s stalled-partition check).
const RECOVERY: Duration = Duration::from_secs(150);

/// The settings of every service of one test: its broker and database, the
/// default topic (each test has a broker of its own) and a fresh group.
fn env(brokers: &str, database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SCORES_KAFKA_BROKERS", brokers.to_owned()),
        ("SCORES_TOPIC", "score-events".to_owned()),
        ("SCORES_TOPIC_PARTITIONS", "3".to_owned()),
        ("SCORES_DATABASE_URL", database_url.to_owned()),
        ("SCORES_CONSUMER_GROUP", unique_group()),
        ("SCORES_PUBLISH_TIMEOUT_MS", "3000".to_owned()),
        ("SCORES_BATCH_SIZE", "50".to_owned()),
        ("SCORES_RATE_LIMIT_PER_CLIENT_PER_MINUTE", "0".to_owned()),
        ("SCORES_RATE_LIMIT_PER_ACCOUNT_PER_MINUTE", "0".to_owned()),
    ]
}

/// Checks that valid submissions were only ever refused with 503 (the log
/// unavailable or slow: retry later), waits until every acknowledged event
/// is in `grade`, then checks that no event id is there twice and that
/// nothing appeared that no request asked for. When every request was
/// answered 2xx, `grade` must hold exactly the acknowledged events.
async fn assert_exactly_once(database: &TestDatabase, report: &LoadReport, logs: &[&Service]) {
    assert!(
        report.refused.iter().all(|status| *status == 503),
        "a valid submission was refused with something else than 503: {:?}",
        report.refused
    );
    let strict = report.refused.is_empty() && report.unanswered == 0;
    let acknowledged = &report.acknowledged;
    let arrived = eventually(RECOVERY, || async {
        let present: HashSet<String> = database.event_id_counts().await.into_keys().collect();
        acknowledged.is_subset(&present)
    })
    .await;
    let counts = database.event_id_counts().await;
    let present: HashSet<String> = counts.keys().cloned().collect();
    let missing = acknowledged.difference(&present).count();
    let tails: Vec<String> = logs.iter().map(|service| service.log_tail()).collect();
    assert!(
        arrived,
        "{missing} of {} acknowledged events never reached grade\n{}",
        acknowledged.len(),
        tails.join("\n")
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        doubled.is_empty(),
        "events in grade more than once: {doubled:?}"
    );
    let extra = present.difference(acknowledged).count();
    let unacknowledged_requests = report.refused.len() + report.unanswered;
    if strict {
        assert_eq!(extra, 0, "grade holds events nobody was told were accepted");
    } else {
        // A request that timed out may still have reached the log: it then
        // appears once, and its client was told to retry (503), never 2xx.
        assert!(
            extra <= unacknowledged_requests,
            "{extra} unacknowledged events in grade, but only {unacknowledged_requests} requests went unacknowledged"
        );
    }
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
    tokio::time::sleep(Duration::from_millis(seed.between(2000, 4000))).await;
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
    let mut env = env(&broker.address(), &database.url);
    // Restarted by its supervisor under the same name, as in production.
    env.push(("SCORES_CONSUMER_INSTANCE_ID", "projector-a".to_owned()));
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

// On Apache Kafka the coordinator hands the crashed member's partitions to
// the survivor after the session timeout. Tansu 0.6.0 drops the member but
// starts no new generation, so here the survivor's stalled-partition check
// (SCORES_TAKEOVER_AFTER_MS, default 60 s) is what moves them: this test
// covers that path.
#[tokio::test]
async fn two_projectors_in_one_group_with_one_killed_mid_load_project_everything_once() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("two projectors");
    let database = TestDatabase::create().await;
    let broker = Broker::start();
    let mut env = env(&broker.address(), &database.url);
    let (api, url) = Service::ingest_api(&env);
    // Their logs say when the group has given them partitions.
    env.push(("RUST_LOG", "warn,projector::runner=info".to_owned()));

    let load = Load::start(vec![url], 8, 12_000, seed.between(1, u64::MAX));
    let mut first = Service::projector(&env);
    load.wait_for_more(300, Duration::from_secs(30)).await;
    // The second joins: a rebalance hands it part of the partitions. Then
    // the first crashes while events keep coming, so that the second must
    // take its partitions over.
    let second = Service::projector(&env);
    second.wait_for_partitions(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(seed.between(500, 1500))).await;
    first.kill();

    let report = load.complete().await;
    assert_exactly_once(&database, &report, &[&api, &second]).await;
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
