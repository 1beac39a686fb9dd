//! What every fault test checks after its faults: the services' settings for
//! one test, and the exactly-once comparison of what the API acknowledged
//! with what `grade` holds.

use std::collections::HashSet;
use std::time::Duration;

use crate::processes::{LoadReport, Service};
use crate::{TestDatabase, eventually, unique_group};

/// How long projection may take to catch up after the last fault.
pub const RECOVERY: Duration = Duration::from_secs(120);

/// The settings of every service of one test: its brokers and database, the
/// default topic (each test has brokers of its own) with `replication`
/// replicas and its key topic, the tests' account pepper, and a fresh
/// group.
pub fn service_env(
    brokers: &str,
    replication: usize,
    database_url: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("SCORES_KAFKA_BROKERS", brokers.to_owned()),
        ("SCORES_TOPIC", "score-events".to_owned()),
        ("SCORES_KEYS_TOPIC", crate::keys_topic_of("score-events")),
        (
            "SCORES_ACCOUNT_PEPPER",
            crate::TEST_ACCOUNT_PEPPER.to_owned(),
        ),
        ("SCORES_TOPIC_PARTITIONS", "3".to_owned()),
        ("SCORES_TOPIC_REPLICATION", replication.to_string()),
        ("SCORES_DATABASE_URL", database_url.to_owned()),
        ("SCORES_CONSUMER_GROUP", unique_group()),
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
///
/// # Panics
///
/// When any of that does not hold, with the services' log tails.
pub async fn assert_exactly_once(database: &TestDatabase, report: &LoadReport, logs: &[&Service]) {
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
