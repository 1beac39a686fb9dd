//! Kafka client settings and topic provisioning.
//!
//! Defaults are named with their reason; anything else librdkafka supports
//! passes through `SCORES_KAFKA_OPTIONS` and overrides them.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaArgs;

/// A produce call waits at most this long for the broker's acknowledgment
/// before the ingest API answers 503 (`message.timeout.ms`). Longer than a
/// cluster's worst failover measured here (a SIGKILLed node that led the
/// partition and was the active controller: about 8 s until the new leader
/// takes writes), so that a failover makes answers slower instead of 503s.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Batch for at most a millisecond: under load this fills batches (fewer,
/// larger produce requests). Measured on Apache Kafka (closed loop, 32
/// connections): 5 ms held each request for most of its 6.6 ms round trip
/// (4,824 req/s); 1 ms gave 10,642 req/s, and 0 ms 10,247 req/s with more
/// produce requests.
const DEFAULT_LINGER_MS: &str = "1";

/// How long the broker may park a fetch that finds no new record. Apache
/// Kafka answers a parked fetch as soon as a record arrives
/// (`fetch.min.bytes` is 1), so this does not delay records on their own;
/// but librdkafka keeps one fetch in flight per broker, so a seek (the
/// projector resuming from MySQL after an assignment, or seeking back on a
/// gap) and a newly assigned partition wait for the parked fetch to return.
/// 50 ms (librdkafka's default is 500) keeps a projected row well under a
/// second behind its acknowledgment right after a rebalance too, for about
/// 20 empty fetches a second per broker while idle.
const DEFAULT_FETCH_WAIT_MS: &str = "50";

/// Classic group protocol: the coordinator drops a member it has not heard
/// from for this long (crashed, SIGKILLed, cut off) and gives its partitions
/// to the others. Apache Kafka's 45 s default would leave a crashed
/// projector's partitions unprojected that long. With 10 s (the broker's
/// `group.min.session.timeout.ms` is 6 s) and [`CLASSIC_HEARTBEAT_INTERVAL_MS`]
/// a survivor owns them well within 15 s: the session runs out at most
/// 10 s after the crash (the last heartbeat came before it), the survivor
/// hears of the rebalance on its next heartbeat (2 s later at most), and
/// rejoins a group with nobody else to wait for.
const CLASSIC_SESSION_TIMEOUT_MS: &str = "10000";

/// Classic group protocol: how often a member tells the coordinator it is
/// alive, and so how soon it hears that the group is rebalancing. A fifth of
/// [`CLASSIC_SESSION_TIMEOUT_MS`]: a few heartbeats may be lost (a broker
/// busy, a GC pause) before the session runs out.
const CLASSIC_HEARTBEAT_INTERVAL_MS: &str = "2000";

/// Whether the pass-through options select the KIP-848 consumer group
/// protocol (`group.protocol=consumer`, on by default in Apache Kafka 4.x
/// brokers, where the broker assigns partitions and owns the session
/// timeout and heartbeat interval: `group.consumer.session.timeout.ms`,
/// `group.consumer.heartbeat.interval.ms`). The last such option wins, as
/// in librdkafka, which reads the value without regard to case.
fn selects_consumer_protocol(args: &KafkaArgs) -> bool {
    args.kafka_options
        .iter()
        .rev()
        .find(|option| option.key == "group.protocol")
        .is_some_and(|option| option.value.eq_ignore_ascii_case("consumer"))
}

/// Settings every client gets: where the brokers are, then the operator's
/// pass-through options, which win.
pub fn client_config(args: &KafkaArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.kafka_brokers);
    config
}

fn with_overrides(mut config: ClientConfig, args: &KafkaArgs) -> ClientConfig {
    for option in &args.kafka_options {
        config.set(&option.key, &option.value);
    }
    config
}

/// Settings for the ingest API's producer: an acknowledged message is on
/// every in-sync replica (`acks=all`) and written once even when a request
/// is retried (`enable.idempotence`), and a send gives up after
/// `publish_timeout`, so no caller waits without bound.
pub fn producer_config(args: &KafkaArgs, publish_timeout: Duration) -> ClientConfig {
    with_overrides(producer_defaults(args, publish_timeout), args)
}

/// [`producer_config`] whose local queue holds at most `max_queued`
/// messages (librdkafka's default is 100,000), unless
/// `SCORES_KAFKA_OPTIONS` sets `queue.buffering.max.messages` itself.
pub fn bounded_producer_config(
    args: &KafkaArgs,
    publish_timeout: Duration,
    max_queued: usize,
) -> ClientConfig {
    let mut config = producer_defaults(args, publish_timeout);
    config.set(
        "queue.buffering.max.messages",
        max_queued.max(1).to_string(),
    );
    with_overrides(config, args)
}

/// The producer's settings before the operator's overrides.
fn producer_defaults(args: &KafkaArgs, publish_timeout: Duration) -> ClientConfig {
    let mut config = client_config(args);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", DEFAULT_LINGER_MS)
        .set(
            "message.timeout.ms",
            message_timeout(publish_timeout).as_millis().to_string(),
        )
        // A produce request to a dead or stalled broker is given up within
        // the publish timeout (librdkafka's default, 30 s, would outlive
        // it); the message timeout, up to a second shorter, decides first.
        .set(
            "request.timeout.ms",
            publish_timeout.as_millis().clamp(1, 30_000).to_string(),
        );
    config
}

/// librdkafka's own deadline for a send: the publish timeout less up to a
/// second, since librdkafka looks for expired messages once a second. Its
/// delivery report (persisted or not) then comes within the publish
/// timeout, and the ingest API's fence after it only guards against a
/// report that never comes.
fn message_timeout(publish_timeout: Duration) -> Duration {
    let scan_allowance = (publish_timeout / 5).min(Duration::from_secs(1));
    (publish_timeout - scan_allowance).max(Duration::from_millis(1))
}

/// Settings for the projector's consumer. Offsets are never committed
/// automatically: the projector's position lives in MySQL and Kafka's
/// committed offsets are only advisory (for lag tooling).
///
/// Membership is dynamic: a member that stops heartbeating leaves the group
/// after its session times out, and a restarted instance joins as a new
/// member.
///
/// The session settings depend on the group protocol the pass-through
/// options select. With the classic protocol (librdkafka's default) they
/// are [`CLASSIC_SESSION_TIMEOUT_MS`] and [`CLASSIC_HEARTBEAT_INTERVAL_MS`].
/// With `group.protocol=consumer` none is set: the broker owns them, and
/// librdkafka 2.12 refuses to create a consumer that sets
/// `session.timeout.ms`, `heartbeat.interval.ms`,
/// `partition.assignment.strategy` or `group.protocol.type` at all (even to
/// their default values) under that protocol. Pass-through options still
/// win.
pub fn consumer_config(args: &KafkaArgs, group_id: &str) -> ClientConfig {
    let mut config = client_config(args);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS);
    if !selects_consumer_protocol(args) {
        config
            .set("session.timeout.ms", CLASSIC_SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", CLASSIC_HEARTBEAT_INTERVAL_MS);
    }
    with_overrides(config, args)
}

/// Settings for administrative clients (topic creation, metadata).
pub fn admin_config(args: &KafkaArgs) -> ClientConfig {
    with_overrides(client_config(args), args)
}

/// Creates the topic if it does not exist, with its settings explicit rather
/// than the broker's defaults: `topic_partitions` partitions,
/// `topic_replication` replicas of which all but one must acknowledge a
/// write (`min.insync.replicas`, at least 1: with 3 replicas a write
/// survives one node down), no unclean leader election (an out-of-sync
/// replica never becomes leader and loses acknowledged events), and
/// infinite retention, since the log is the source of truth.
///
/// # Errors
///
/// When the broker cannot be reached or refuses to create the topic.
pub async fn ensure_topic(args: &KafkaArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config(args)
        .create()
        .context("creating the Kafka admin client")?;
    let min_insync_replicas = (args.topic_replication - 1).max(1).to_string();
    let topic = NewTopic::new(
        &args.topic,
        args.topic_partitions,
        TopicReplication::Fixed(args.topic_replication),
    )
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1")
    .set("min.insync.replicas", &min_insync_replicas)
    .set("unclean.leader.election.enable", "false");
    create_topic(&admin, &topic, &args.kafka_brokers).await
}

/// How long a forgotten key's tombstone stays readable in the key topic
/// (`delete.retention.ms`): a reader down longer than this misses the
/// tombstone, and then also the key (it was compacted away before), so it
/// forgets the key all the same.
pub const KEYS_TOMBSTONE_RETENTION_MS: &str = "86400000";
/// The longest a key record may wait before the cleaner may compact it
/// away (`max.compaction.lag.ms`): once forgotten, a key is gone from the
/// broker's disks within about a day (plus the cleaner's own backoff).
pub const KEYS_MAX_COMPACTION_LAG_MS: &str = "86400000";

/// Creates the compacted key topic if it does not exist (see
/// [`crate::personal`]): as many partitions and replicas as the event
/// topic, compaction instead of deletion (a key lives until forgotten),
/// tombstones kept [`KEYS_TOMBSTONE_RETENTION_MS`], and a compaction lag
/// of at most [`KEYS_MAX_COMPACTION_LAG_MS`], so that a forgotten key
/// leaves the log on a schedule, not whenever a segment happens to fill.
///
/// # Errors
///
/// When the broker cannot be reached or refuses to create the topic.
pub async fn ensure_keys_topic(args: &KafkaArgs, keys_topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config(args)
        .create()
        .context("creating the Kafka admin client")?;
    let min_insync_replicas = (args.topic_replication - 1).max(1).to_string();
    let topic = NewTopic::new(
        keys_topic,
        args.topic_partitions,
        TopicReplication::Fixed(args.topic_replication),
    )
    .set("cleanup.policy", "compact")
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1")
    .set("delete.retention.ms", KEYS_TOMBSTONE_RETENTION_MS)
    .set("max.compaction.lag.ms", KEYS_MAX_COMPACTION_LAG_MS)
    .set("min.insync.replicas", &min_insync_replicas)
    .set("unclean.leader.election.enable", "false");
    create_topic(&admin, &topic, &args.kafka_brokers).await
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &NewTopic<'_>,
    brokers: &str,
) -> anyhow::Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([topic], &options)
        .await
        .with_context(|| format!("creating topic {} on {brokers}", topic.name))?;
    for result in results {
        match result {
            Ok(_) => {
                tracing::info!(topic = %topic.name, partitions = topic.num_partitions, "created topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %topic.name, "topic exists")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
        }
    }
    Ok(())
}

/// A metadata client for one topic, to create once and keep: every
/// librdkafka client has threads and connections of its own, too many to
/// make for each look at the log.
pub struct LogMetadata {
    client: rdkafka::consumer::BaseConsumer,
    topic: String,
}

impl LogMetadata {
    /// Creates the client; it connects on first use.
    ///
    /// # Errors
    ///
    /// When librdkafka refuses the settings.
    pub fn new(args: &KafkaArgs) -> anyhow::Result<Self> {
        Ok(Self {
            client: admin_config(args)
                .create()
                .context("creating a metadata client")?,
            topic: args.topic.clone(),
        })
    }

    /// The low and high watermark of every partition of the topic, by
    /// partition. Blocking (librdkafka metadata calls): run it off the
    /// async runtime.
    ///
    /// # Errors
    ///
    /// When the broker does not answer within `timeout` or the topic is
    /// unknown.
    pub fn watermarks(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<std::collections::BTreeMap<i32, (i64, i64)>> {
        use rdkafka::consumer::Consumer;

        let metadata = self
            .client
            .fetch_metadata(Some(&self.topic), timeout)
            .with_context(|| format!("reading metadata of topic {}", self.topic))?;
        let topic = metadata
            .topics()
            .first()
            .filter(|topic| topic.error().is_none())
            .with_context(|| format!("topic {} does not exist", self.topic))?;
        topic
            .partitions()
            .iter()
            .map(|partition| {
                let id = partition.id();
                let marks = self
                    .client
                    .fetch_watermarks(&self.topic, id, timeout)
                    .with_context(|| format!("reading watermarks of partition {id}"))?;
                Ok((id, marks))
            })
            .collect()
    }
}

/// The watermarks of every partition of the topic, with a client made for
/// this one call ([`LogMetadata`] keeps one). Blocking.
///
/// # Errors
///
/// When the broker does not answer within `timeout` or the topic is unknown.
pub fn watermarks(
    args: &KafkaArgs,
    timeout: Duration,
) -> anyhow::Result<std::collections::BTreeMap<i32, (i64, i64)>> {
    LogMetadata::new(args)?.watermarks(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_gives_up_on_a_send_a_second_before_the_publish_timeout() {
        assert_eq!(
            message_timeout(Duration::from_secs(10)),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn a_short_publish_timeout_keeps_four_fifths_for_librdkafka() {
        assert_eq!(
            message_timeout(Duration::from_millis(500)),
            Duration::from_millis(400)
        );
        assert_eq!(
            message_timeout(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }
}
