//! Appending events to the log.
//!
//! A send completes only when the broker has acknowledged the event on all
//! in-sync replicas, or fails within the publish timeout. Sends are not
//! serialized: each request awaits its own delivery future, so many are in
//! flight at once and librdkafka batches them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use score_shared::ScoreSubmitted;
use score_shared::config::KafkaArgs;
use tokio::sync::mpsc;

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
    #[error("every broker is down")]
    BrokersDown,
}

/// The ingest API's handle on the log.
///
/// After every broker was unreachable, or a send failed, the producer in use
/// is retired: its queued and in-flight sends are purged at once (their
/// requests answer 503) and the next send starts a new producer, with a new
/// producer id. A broker restarted from its storage may not know the old
/// producer id, and a producer whose send timed out in flight must bump its
/// epoch; Tansu 0.6.0 handles neither and then stops serving produce
/// requests, while a new producer id is always valid. On Apache Kafka the
/// renewal is merely harmless.
#[derive(Clone)]
pub struct Publisher {
    current: Arc<RwLock<Arc<Generation>>>,
    kafka: Arc<KafkaArgs>,
    topic: Arc<str>,
    timeout: Duration,
    last_renewal: Arc<Mutex<Instant>>,
    retire: mpsc::UnboundedSender<()>,
}

/// One producer and whether it has been retired.
struct Generation {
    producer: FutureProducer<PublisherContext>,
    retired: Arc<AtomicBool>,
    purged: AtomicBool,
}

/// Fewest time between two producer renewals, so that an outage does not
/// create a producer for every request.
const RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Marks its producer retired when every broker is down.
pub struct PublisherContext {
    retired: Arc<AtomicBool>,
    retire: mpsc::UnboundedSender<()>,
}

impl ClientContext for PublisherContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && !self.retired.swap(true, Ordering::SeqCst)
        {
            let _ = self.retire.send(());
        }
    }
}

impl Publisher {
    /// Creates the idempotent producer (it connects lazily) and the task that
    /// retires producers after an outage. Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// When librdkafka refuses the settings.
    pub fn new(kafka: &KafkaArgs, timeout: Duration) -> anyhow::Result<Self> {
        let (retire, mut retirements) = mpsc::unbounded_channel();
        let first = Generation::create(kafka, timeout, &retire)?;
        let publisher = Self {
            current: Arc::new(RwLock::new(Arc::new(first))),
            kafka: Arc::new(kafka.clone()),
            topic: kafka.topic.as_str().into(),
            timeout,
            last_renewal: Arc::new(Mutex::new(Instant::now())),
            retire,
        };
        let current = Arc::downgrade(&publisher.current);
        tokio::spawn(async move {
            while retirements.recv().await.is_some() {
                let Some(current) = current.upgrade() else {
                    return;
                };
                let generation = current.read().expect("producer lock").clone();
                if generation.retired.load(Ordering::SeqCst) {
                    tracing::warn!("every broker is down; retiring the producer");
                    generation.retire();
                }
            }
        });
        Ok(publisher)
    }

    /// The producer to send with: the current one, or a new one when it was
    /// retired (at most one renewal per [`RENEWAL_INTERVAL`]).
    fn producer(&self) -> Result<Arc<Generation>, PublishError> {
        let generation = self.current.read().expect("producer lock").clone();
        if !generation.retired.load(Ordering::SeqCst) {
            return Ok(generation);
        }
        let mut last_renewal = self.last_renewal.lock().expect("renewal lock");
        let mut current = self.current.write().expect("producer lock");
        if !current.retired.load(Ordering::SeqCst) {
            // Another request renewed it meanwhile.
            return Ok(current.clone());
        }
        if last_renewal.elapsed() < RENEWAL_INTERVAL {
            return Err(PublishError::BrokersDown);
        }
        let renewed = Generation::create(&self.kafka, self.timeout, &self.retire)
            .map_err(|_| PublishError::BrokersDown)?;
        *last_renewal = Instant::now();
        *current = Arc::new(renewed);
        tracing::info!("started a new producer");
        Ok(current.clone())
    }

    /// Appends `event`, keyed by account number so that one account's events
    /// stay in order on one partition. The record carries no Kafka headers:
    /// the envelope holds the type and version, and Tansu 0.6.0 scans its
    /// whole (unindexed) header table for every record it fetches, which made
    /// a backlog of 100,000 events unreadable within 30 s.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker did not acknowledge in time.
    pub async fn publish(&self, event: &ScoreSubmitted) -> Result<Receipt, PublishError> {
        let payload = event.encode();
        let record = FutureRecord::to(&self.topic)
            .key(event.acc_nbr.as_str())
            .payload(&payload);
        // librdkafka's message.timeout.ms bounds the delivery; the outer
        // timeout is a second fence so that no request can hang on a bug.
        let generation = self.producer().inspect_err(|_| {
            metrics::counter!("kafka_produce_total", "outcome" => "brokers_down").increment(1);
        })?;
        let delivery = generation
            .producer
            .send(record, Timeout::After(self.timeout));
        let fence = self.timeout + Duration::from_secs(1);
        let started = Instant::now();
        let in_flight = InFlight::enter();
        let delivered = tokio::time::timeout(fence, delivery).await;
        drop(in_flight);
        let outcome_label = match &delivered {
            Ok(Ok(_)) => "acknowledged",
            Ok(Err(_)) => "refused",
            Err(_) => "timed_out",
        };
        metrics::counter!("kafka_produce_total", "outcome" => outcome_label).increment(1);
        metrics::histogram!("kafka_produce_duration_seconds", "outcome" => outcome_label)
            .record(started.elapsed().as_secs_f64());
        let outcome = match delivered {
            Ok(Ok(delivery)) => {
                return Ok(Receipt {
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
            }
            Ok(Err((error, _message))) => PublishError::NotAcknowledged(error),
            Err(_elapsed) => PublishError::TimedOut(fence),
        };
        // A send that failed (typically timed out in flight) leaves the
        // idempotent producer needing a new epoch, which some brokers mishandle
        // (Tansu 0.6.0 stops serving produce requests): start afresh instead.
        generation.retire();
        Err(outcome)
    }

    /// Messages and requests the current producer holds that the broker has
    /// not acknowledged yet (librdkafka's queue).
    pub fn queue_depth(&self) -> i32 {
        self.current
            .read()
            .expect("producer lock")
            .producer
            .in_flight_count()
    }

    /// Whether the broker answers a metadata request for our topic within
    /// `timeout`.
    pub async fn is_ready(&self, timeout: Duration) -> bool {
        let producer = self.current.read().expect("producer lock").producer.clone();
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
        let producer = self.current.read().expect("producer lock").producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(error = %error, "producer flush incomplete"),
            Err(error) => tracing::warn!(error = %error, "producer flush task failed"),
        }
    }
}

/// One send awaiting its acknowledgment in `kafka_produce_in_flight`, until
/// dropped (also when the request is abandoned mid-wait).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let gauge = metrics::gauge!("kafka_produce_in_flight");
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Generation {
    fn create(
        kafka: &KafkaArgs,
        timeout: Duration,
        retire: &mpsc::UnboundedSender<()>,
    ) -> anyhow::Result<Self> {
        let retired = Arc::new(AtomicBool::new(false));
        let context = PublisherContext {
            retired: retired.clone(),
            retire: retire.clone(),
        };
        let producer = score_shared::kafka::producer_config(kafka, timeout)
            .create_with_context(context)
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            retired,
            purged: AtomicBool::new(false),
        })
    }

    /// Takes the producer out of service: nothing it still holds may reach
    /// a broker (its queued and in-flight sends fail, answering 503).
    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        if !self.purged.swap(true, Ordering::SeqCst) {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
        }
    }
}
