//! Faults only a real cluster can show: three Apache Kafka nodes on loopback
//! (KRaft, each broker and controller), the topic with 3 replicas,
//! `min.insync.replicas=2` and no unclean leader election, as in
//! production. Nodes are SIGKILLed or restarted one by one under seeded
//! load, and every test ends with the exactly-once check: every
//! acknowledged event id in `grade` once, nothing else, and nothing but 503
//! refused. Replay a failure with the `SCORES_TEST_SEED` it printed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pipeline_tests::fault_checks::{assert_exactly_once, service_env};
use pipeline_tests::processes::{KafkaCluster, Load, Seeded, Service, free_port};
use pipeline_tests::{TestDatabase, eventually};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::Mutex;

/// One cluster test at a time: three JVMs and the services already fill a
/// 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The ingest API's default publish timeout: a request is answered within
/// it (plus a fence), and after a leader dies, 2xx must come back within it.
const PUBLISH_TIMEOUT: Duration = score_shared::kafka::DEFAULT_PUBLISH_TIMEOUT;

/// The promise for a crashed projector's partitions: the survivor owns them
/// within this.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(15);

const TOPIC: &str = "score-events";

/// Leader and in-sync replicas of one partition.
#[derive(Debug)]
struct PartitionState {
    leader: i32,
    isr: Vec<i32>,
}

/// The topic's partitions as the cluster's metadata shows them now.
async fn partitions(bootstrap: &str) -> BTreeMap<i32, PartitionState> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("a metadata client");
        let metadata = client
            .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
            .expect("the cluster's metadata");
        metadata
            .topics()
            .first()
            .expect("the topic")
            .partitions()
            .iter()
            .map(|p| {
                let state = PartitionState {
                    leader: p.leader(),
                    isr: p.isr().to_vec(),
                };
                (p.id(), state)
            })
            .collect()
    })
    .await
    .expect("metadata task")
}

/// Waits until every partition has a leader and all three replicas in sync
/// (the state a rolling restart must wait for between nodes).
async fn wait_until_fully_replicated(cluster: &KafkaCluster, limit: Duration) {
    let bootstrap = cluster.bootstrap();
    let replicated = eventually(limit, || async {
        let partitions = partitions(&bootstrap).await;
        partitions.len() == 3
            && partitions
                .values()
                .all(|p| p.leader >= 0 && p.isr.len() == 3)
    })
    .await;
    assert!(
        replicated,
        "the topic was not fully replicated within {limit:?}: {:?}\n{}",
        partitions(&bootstrap).await,
        cluster.log_tails()
    );
}

/// No request waited longer than the publish timeout and the API's fence
/// around it: a hang is a failure even when the answer was a 503.
fn assert_no_hang(answers: &[pipeline_tests::processes::Answer]) {
    let longest = answers
        .iter()
        .filter(|answer| answer.status.is_some())
        .map(|answer| answer.answered - answer.sent)
        .max()
        .unwrap_or_default();
    assert!(
        longest <= PUBLISH_TIMEOUT + Duration::from_secs(2),
        "a request waited {longest:?} for its answer"
    );
}

#[tokio::test]
async fn the_leader_of_a_busy_partition_killed_under_load_takes_writes_again_within_the_publish_timeout()
 {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("leader kill");
    let mut cluster = KafkaCluster::start(3);
    let database = TestDatabase::create().await;
    let env = service_env(&cluster.bootstrap(), 3, &database.url);
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let load = Load::start(vec![url], 8, 1_000_000, seed.between(1, u64::MAX));
    load.wait_for_more(300, Duration::from_secs(60)).await;
    wait_until_fully_replicated(&cluster, Duration::from_secs(30)).await;

    // The worst case where there is one: the partition's leader is also the
    // active controller, so the quorum elects a new controller before anyone
    // fences the dead node. Otherwise a partition the seed picks.
    let leaders = partitions(&cluster.bootstrap()).await;
    let controller = cluster.active_controller();
    let partition = leaders
        .iter()
        .find(|(_, state)| controller == Some(state.leader))
        .map_or_else(
            || i32::try_from(seed.between(0, 3)).expect("a partition"),
            |(partition, _)| *partition,
        );
    let leader = leaders[&partition].leader;
    let killed_at = Instant::now();
    cluster.node(leader).kill();

    // The first 2xx on the dead leader's partition for a request sent after
    // the kill: its new leader has taken over and the API found it.
    let back = eventually(PUBLISH_TIMEOUT * 4, || async {
        load.answers()
            .iter()
            .any(|a| a.sent > killed_at && a.partition == Some(partition))
    })
    .await;
    assert!(
        back,
        "partition {partition} took no write after its leader (node {leader}) died\n{}",
        cluster.log_tails()
    );
    let recovered_after = load
        .answers()
        .iter()
        .filter(|a| a.sent > killed_at && a.partition == Some(partition))
        .map(|a| a.answered - killed_at)
        .min()
        .expect("an answer");
    eprintln!(
        "leader kill: partition {partition} (leader node {leader}, active controller node {controller:?}) \
         took writes again {recovered_after:?} after the kill"
    );
    assert!(
        recovered_after <= PUBLISH_TIMEOUT,
        "partition {partition} answered 2xx again only {recovered_after:?} after its leader died"
    );

    load.wait_for_more(300, Duration::from_secs(30)).await;
    cluster.restart(leader);
    load.wait_for_more(300, Duration::from_secs(30)).await;
    let report = load.finish().await;
    let refused = report.refused.len();
    eprintln!(
        "leader kill: {} acknowledged, {refused} refused, {} unanswered",
        report.acknowledged.len(),
        report.unanswered
    );
    assert_no_hang(&report.answers);
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_rolling_restart_of_all_three_brokers_under_load_loses_and_doubles_nothing() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let seed = Seeded::from_env("rolling restart").between(1, u64::MAX);
    let mut cluster = KafkaCluster::start(3);
    let database = TestDatabase::create().await;
    let env = service_env(&cluster.bootstrap(), 3, &database.url);
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);

    let load = Load::start(vec![url], 8, 1_000_000, seed);
    load.wait_for_more(300, Duration::from_secs(60)).await;
    for node_id in 1..=3 {
        // As an operator would: the next node only once every partition is
        // fully replicated again.
        wait_until_fully_replicated(&cluster, Duration::from_secs(60)).await;
        cluster.node(node_id).terminate(Duration::from_secs(60));
        // Writes go on while it is down: two replicas remain in sync.
        load.wait_for_more(200, Duration::from_secs(30)).await;
        cluster.restart(node_id);
        load.wait_for_more(100, Duration::from_secs(30)).await;
    }
    wait_until_fully_replicated(&cluster, Duration::from_secs(60)).await;
    let report = load.finish().await;
    eprintln!(
        "rolling restart: {} acknowledged, {} refused, {} unanswered",
        report.acknowledged.len(),
        report.refused.len(),
        report.unanswered
    );
    assert_no_hang(&report.answers);
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}

/// The partitions a projector holds now, from its `partitions assigned` and
/// `partitions revoked` log lines in order (full lists with the classic
/// protocol, increments with KIP-848's).
fn assignment_from_log(log: &str) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    for line in log.lines() {
        let assigned = line.contains("partitions assigned");
        if !assigned && !line.contains("partitions revoked") {
            continue;
        }
        let Some(list) = line
            .split("partitions=[")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
        else {
            continue;
        };
        let partitions = list.split(',').filter_map(|p| p.trim().parse::<i32>().ok());
        if assigned {
            held.extend(partitions);
        } else {
            for partition in partitions {
                held.remove(&partition);
            }
        }
    }
    held
}

#[tokio::test]
async fn two_projectors_in_one_group_with_one_killed_mid_load_the_survivor_takes_over_within_15_s()
{
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("two projectors");
    let cluster = KafkaCluster::start(3);
    let database = TestDatabase::create().await;
    let mut env = service_env(&cluster.bootstrap(), 3, &database.url);
    let (api, url) = Service::ingest_api(&env);
    // Their logs say which partitions the group gives them.
    env.push(("RUST_LOG", "warn,projector::runner=info".to_owned()));
    if let Ok(protocol) = std::env::var("SCORES_TEST_GROUP_PROTOCOL") {
        env.push(("SCORES_KAFKA_OPTIONS", format!("group.protocol={protocol}")));
    }

    let load = Load::start(vec![url], 8, 12_000, seed.between(1, u64::MAX));
    let mut first = Service::projector(&env);
    // On a new cluster the first group also creates `__consumer_offsets`,
    // which takes a few seconds.
    first.wait_for_partitions(Duration::from_secs(60)).await;
    load.wait_for_more(300, Duration::from_secs(60)).await;
    // The second joins: a rebalance hands it part of the partitions. Then
    // the first crashes while events keep coming, so that the second must
    // take its partitions over.
    let second = Service::projector(&env);
    let all: BTreeSet<i32> = (0..3).collect();
    let shared = eventually(Duration::from_secs(60), || async {
        let (held_first, held_second) = (
            assignment_from_log(&first.log_tail_all()),
            assignment_from_log(&second.log_tail_all()),
        );
        !held_first.is_empty() && !held_second.is_empty() && held_second != all
    })
    .await;
    assert!(
        shared,
        "the two projectors never shared the partitions: first {:?}, second {:?}\n{}\n{}",
        assignment_from_log(&first.log_tail_all()),
        assignment_from_log(&second.log_tail_all()),
        first.log_tail(),
        second.log_tail()
    );
    tokio::time::sleep(Duration::from_millis(seed.between(500, 1500))).await;
    let killed_at = Instant::now();
    first.kill();

    let took_over = eventually(TAKEOVER_LIMIT * 3, || async {
        assignment_from_log(&second.log_tail_all()) == all
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took_over,
        "the survivor never held every partition\n{}",
        second.log_tail()
    );
    eprintln!(
        "two projectors: the survivor held every partition {took:?} after the other was killed"
    );
    assert!(
        took <= TAKEOVER_LIMIT,
        "the survivor took {took:?} to hold every partition"
    );

    let report = load.complete().await;
    assert_exactly_once(&database, &report, &[&api, &second]).await;
    database.drop_database().await;
}

#[tokio::test]
async fn the_projector_and_the_ingest_api_restarted_against_the_cluster_lose_and_double_nothing() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut seed = Seeded::from_env("service restarts");
    let cluster = KafkaCluster::start(3);
    let database = TestDatabase::create().await;
    let env = service_env(&cluster.bootstrap(), 3, &database.url);
    let port = free_port();
    let (mut api, url) = Service::ingest_api_on(port, &env);
    let mut projector = Service::projector(&env);

    let load = Load::start(vec![url], 8, 1_000_000, seed.between(1, u64::MAX));
    for round in 0..2 {
        load.wait_for_more(300, Duration::from_secs(60)).await;
        // A crash of the projector mid-batch, a deploy of the API.
        projector.kill();
        let status = api.terminate(Duration::from_secs(15));
        assert!(
            status.is_some_and(|status| status.success()),
            "ingest-api did not exit 0 on SIGTERM in round {round}: {status:?}\n{}",
            api.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(seed.between(100, 1000))).await;
        api = Service::ingest_api_on(port, &env).0;
        projector = Service::projector(&env);
    }
    load.wait_for_more(300, Duration::from_secs(60)).await;
    let report = load.finish().await;
    assert_no_hang(&report.answers);
    assert_exactly_once(&database, &report, &[&api, &projector]).await;
    database.drop_database().await;
}
