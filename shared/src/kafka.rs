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
/// before the ingest API answers 503 (`message.timeout.ms`).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Batch for at most a few milliseconds: under load this fills batches
/// (fewer, larger produce requests); idle, it adds a latency too small to
/// matter against the acknowledgment round trip.
const DEFAULT_LINGER_MS: &str = "5";

/// See [`consumer_config`].
const DEFAULT_FETCH_WAIT_MS: &str = "50";

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
    let mut config = client_config(args);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", DEFAULT_LINGER_MS)
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().to_string(),
        )
        // A request to a dead broker must not outlive the message timeout.
        .set(
            "request.timeout.ms",
            publish_timeout.as_millis().clamp(1, 30_000).to_string(),
        );
    with_overrides(config, args)
}

/// Settings for the projector's consumer. Offsets are never committed
/// automatically: the projector's position lives in MySQL and Kafka's
/// committed offsets are only advisory (for lag tooling).
///
/// With an `instance_id` the consumer is a static group member: restarted
/// under the same id, it takes its partitions back at once instead of
/// waiting for its crashed predecessor's session to time out.
pub fn consumer_config(
    args: &KafkaArgs,
    group_id: &str,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut config = client_config(args);
    if let Some(instance_id) = instance_id {
        config.set("group.instance.id", instance_id);
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Some brokers (Tansu among them) hold every fetch for the full
        // wait even when data is there; a short wait keeps a projected row
        // well under a second behind its acknowledgment.
        .set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS);
    // session.timeout.ms stays at librdkafka's (and Kafka's) 45 s: a busy
    // Tansu 0.6.0 answers heartbeats late while it serves large fetches
    // (its storage is one task), and with 10 s a projector catching up on a
    // million events lost its session, after which Tansu's group never
    // formed again. A crashed instance's partitions move after 45 s.
    with_overrides(config, args)
}

/// Settings for administrative clients (topic creation, metadata).
pub fn admin_config(args: &KafkaArgs) -> ClientConfig {
    with_overrides(client_config(args), args)
}

/// Creates the topic if it does not exist: `topic_partitions` partitions and
/// infinite retention, since the log is the source of truth.
///
/// # Errors
///
/// When the broker cannot be reached or refuses to create the topic.
pub async fn ensure_topic(args: &KafkaArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config(args)
        .create()
        .context("creating the Kafka admin client")?;
    let topic = NewTopic::new(
        &args.topic,
        args.topic_partitions,
        TopicReplication::Fixed(args.topic_replication),
    )
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| format!("creating topic {} on {}", args.topic, args.kafka_brokers))?;
    for result in results {
        match result {
            Ok(_) => {
                tracing::info!(topic = %args.topic, partitions = args.topic_partitions, "created topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %args.topic, "topic exists")
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
