//! Appending events to the log.
//!
//! A send completes only when the broker has acknowledged the event on all
//! in-sync replicas, or fails within the publish timeout. Sends are not
//! serialized: each request awaits its own delivery future, so many are in
//! flight at once and librdkafka batches them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use score_shared::ScoreSubmitted;
use score_shared::config::KafkaArgs;
use score_shared::event::{SCORE_SUBMITTED, SCORE_SUBMITTED_VERSION};

/// Where an acknowledged event landed in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub partition: i32,
    pub offset: i64,
}

/// The broker did not acknowledge the event: the client must retry.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not acknowledge the event: {0}")]
    NotAcknowledged(#[source] KafkaError),
    #[error("the broker did not acknowledge the event within {0:?}")]
    TimedOut(Duration),
}

/// The ingest API's handle on the log.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    timeout: Duration,
}

impl Publisher {
    /// Creates the idempotent producer (it connects lazily).
    ///
    /// # Errors
    ///
    /// When librdkafka refuses the settings.
    pub fn new(kafka: &KafkaArgs, timeout: Duration) -> anyhow::Result<Self> {
        let producer = score_shared::kafka::producer_config(kafka, timeout)
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            topic: kafka.topic.as_str().into(),
            timeout,
        })
    }

    /// Appends `event`, keyed by account number so that one account's events
    /// stay in order on one partition.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker did not acknowledge in time.
    pub async fn publish(&self, event: &ScoreSubmitted) -> Result<Receipt, PublishError> {
        let payload = event.encode();
        let version = SCORE_SUBMITTED_VERSION.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "event-type",
                value: Some(SCORE_SUBMITTED),
            })
            .insert(Header {
                key: "event-version",
                value: Some(version.as_str()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(event.acc_nbr.as_str())
            .payload(&payload)
            .headers(headers);
        // librdkafka's message.timeout.ms bounds the delivery; the outer
        // timeout is a second fence so that no request can hang on a bug.
        let delivery = self.producer.send(record, Timeout::After(self.timeout));
        let fence = self.timeout + Duration::from_secs(1);
        match tokio::time::timeout(fence, delivery).await {
            Ok(Ok(delivery)) => Ok(Receipt {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _message))) => Err(PublishError::NotAcknowledged(error)),
            Err(_elapsed) => Err(PublishError::TimedOut(fence)),
        }
    }

    /// Whether the broker answers a metadata request for our topic within
    /// `timeout`.
    pub async fn is_ready(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let probe = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        });
        matches!(probe.await, Ok(Ok(true)))
    }

    /// Waits up to `timeout` for every queued event to be acknowledged.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(error = %error, "producer flush incomplete"),
            Err(error) => tracing::warn!(error = %error, "producer flush task failed"),
        }
    }
}
