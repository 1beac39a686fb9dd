//! Appending events to the log.
//!
//! One idempotent producer (`acks=all`, `enable.idempotence`) lives as long
//! as the process and is shared by every request. librdkafka handles what
//! can go wrong on the way to the broker by itself: it reconnects, follows
//! partition leaders to other brokers, retries without duplicating (the
//! broker drops a batch whose sequence number it has already written), and
//! after a send timed out in flight bumps the epoch of its producer id so
//! that later sends are accepted. So a failed send concerns that send
//! alone: nothing is purged and the producer is never replaced, since either
//! would fail sends that were about to succeed and whose events may already
//! be in the log.
//!
//! A request's answer comes from its own delivery report: librdkafka tells,
//! per message, whether the broker has it (`rd_kafka_message_status`). Only
//! a report that says persisted, without an error, is an acknowledgment;
//! anything else is a [`PublishError`] saying whether the event is surely
//! not in the log or may be.
//!
//! Events are sealed (see [`score_shared::personal`]): named by the
//! account's reference, their personal fields encrypted under a data key
//! handed to the account. Every key is written to the key topic, through
//! the same producer, and acknowledged before any event sealed under it is
//! sent, so that a reader who finds no key for an event once it has read
//! the key topic to its end knows the key was forgotten. Keys are written
//! in blocks ([`KeyBlock`], one record of the key topic each): ahead of
//! need, up to [`score_shared::personal::MAX_BLOCK_KEYS`] to a block, by a
//! background task ([`crate::key_pool`]), and an account's key is reused
//! for a while ([`crate::data_keys`]); only an account's first submission
//! that finds the pool empty writes a block of its own, of one key, on its
//! own path. That write and the event's share one deadline, the publish
//! timeout plus [`FENCE_MARGIN`]: a submission is answered within it, and a
//! 2xx only once both are acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message};
use score_shared::config::KafkaArgs;
use score_shared::personal::block_record_key;
use score_shared::{AccountRef, DataKey, KeyBlock, Pepper, ScoreSubmitted};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::data_keys::DataKeys;
use crate::key_pool::{KeyPool, Unused};

/// Where an acknowledged event landed in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub partition: i32,
    pub offset: i64,
}

/// The event is not known to be in the log. Each case tells whether it may
/// be there anyway; the client's answer is the same (retry with the same
/// `Idempotency-Key`, so that an event already written is not doubled), but
/// the operator's metrics tell them apart.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// Surely not in the log: librdkafka refused to queue it (its local
    /// queue was full), never sent it, or the broker refused it. A retry
    /// cannot make a second copy.
    #[error("the event was not written: {0}")]
    NotPersisted(RDKafkaErrorCode),
    /// Sent, but the broker's answer never came or was an error after the
    /// write may have happened (a request timed out in flight, a connection
    /// dropped mid-request): the event may be in the log.
    #[error("the event may have been written: {0}")]
    PossiblyPersisted(RDKafkaErrorCode),
    /// No delivery report within the publish timeout and its margin, which
    /// librdkafka's own timeouts should make impossible; the event may be in
    /// the log.
    #[error("no delivery report within {0:?}; the event may have been written")]
    TimedOut(Duration),
    /// Surely not in the log: the event was never sent, since the data key
    /// it was to be sealed under was not acknowledged (the code is that
    /// write's). A key that may have been written anyway is harmless: no
    /// event is sealed under it.
    #[error("the event was not written: its data key was not acknowledged: {0}")]
    KeyNotWritten(RDKafkaErrorCode),
}

impl PublishError {
    /// The `outcome` label of `kafka_produce_total` for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotPersisted(_) | Self::KeyNotWritten(_) => "not_persisted",
            Self::PossiblyPersisted(_) => "possibly_persisted",
            Self::TimedOut(_) => "timed_out",
        }
    }

    /// librdkafka's code for the failure (`MessageTimedOut` for the fence).
    fn code(&self) -> RDKafkaErrorCode {
        match self {
            Self::NotPersisted(code)
            | Self::PossiblyPersisted(code)
            | Self::KeyNotWritten(code) => *code,
            Self::TimedOut(_) => RDKafkaErrorCode::MessageTimedOut,
        }
    }
}

/// How the publisher seals events.
#[derive(Clone, Debug)]
pub struct Sealing {
    /// Names accounts ([`AccountRef::of`]).
    pub pepper: Pepper,
    /// The compacted topic data keys are written to.
    pub keys_topic: String,
    /// How long a written key is reused for its account's submissions.
    pub key_time_to_live: Duration,
    /// How many acknowledged keys are kept ready for new accounts, written
    /// in blocks of up to [`score_shared::personal::MAX_BLOCK_KEYS`] (0:
    /// none, every new account's key is written on its request's path).
    pub key_pool_size: usize,
}

/// Where a block of data keys was written: by the pool's refill, or on a
/// request's path (the pool was empty; a block of one key).
#[derive(Clone, Copy, Debug)]
enum KeyPath {
    Pool,
    Request,
}

impl KeyPath {
    /// The `path` label of `data_key_writes_total`, which counts the
    /// key topic's records written (blocks of keys, not keys).
    fn label(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Request => "request",
        }
    }
}

/// The `outcome` label of `kafka_produce_total` for a successful send.
const PERSISTED: &str = "persisted";

/// The `outcome` label of a send's answer.
fn outcome_of(answer: &Result<Receipt, PublishError>) -> &'static str {
    match answer {
        Ok(_) => PERSISTED,
        Err(error) => error.outcome(),
    }
}

/// How much longer than the publish timeout a request waits for its
/// delivery report. librdkafka's `message.timeout.ms` (set up to a second
/// below the publish timeout, since librdkafka looks for expired messages
/// once a second) already bounds every send, so its report comes within the
/// publish timeout; this second fence makes sure that no request can hang
/// even if a report were lost. A request the fence ends is counted
/// `timed_out`, the cautious reading.
const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// The ingest API's handle on the log: cheap to clone, every clone sends
/// through the same producer and shares the same data keys.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<ThreadedProducer<DeliveryReporter>>,
    topic: Arc<str>,
    keys_topic: Arc<str>,
    pepper: Arc<Pepper>,
    data_keys: DataKeys,
    key_pool: Arc<KeyPool>,
    timeout: Duration,
}

impl Publisher {
    /// Creates the idempotent producer, which connects lazily, and its
    /// thread that serves delivery reports.
    ///
    /// # Errors
    ///
    /// When librdkafka refuses the settings.
    pub fn new(kafka: &KafkaArgs, timeout: Duration, sealing: Sealing) -> anyhow::Result<Self> {
        Self::from_config(
            score_shared::kafka::producer_config(kafka, timeout),
            kafka,
            timeout,
            sealing,
        )
    }

    /// A publisher whose librdkafka queue holds at most `max_queued`
    /// messages (librdkafka's default is 100,000): the ingest API never has
    /// more sends in flight than the submissions it admitted, so the queue
    /// is bounded by the same budget, and a send beyond it is refused at
    /// once (a 503) rather than held
    /// ([`score_shared::kafka::bounded_producer_config`]).
    ///
    /// A submission that writes its own data key sends the key and then its
    /// event, one after the other; but librdkafka counts a message until
    /// just after its delivery report has been handed over, so for a moment
    /// the key may still count while the event is queued. And the key
    /// pool's refill may have its blocks in the queue, a record each (at
    /// most the pool's capacity, in blocks of at least one key). Give twice
    /// the number of submissions admitted at once plus the pool's capacity,
    /// or a full budget of submissions may see a spurious `QueueFull`.
    ///
    /// # Errors
    ///
    /// Invalid Kafka settings.
    pub fn with_queue_limit(
        kafka: &KafkaArgs,
        timeout: Duration,
        max_queued: usize,
        sealing: Sealing,
    ) -> anyhow::Result<Self> {
        Self::from_config(
            score_shared::kafka::bounded_producer_config(kafka, timeout, max_queued),
            kafka,
            timeout,
            sealing,
        )
    }

    fn from_config(
        config: rdkafka::ClientConfig,
        kafka: &KafkaArgs,
        timeout: Duration,
        sealing: Sealing,
    ) -> anyhow::Result<Self> {
        let producer = config
            .create_with_context(DeliveryReporter)
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: kafka.topic.as_str().into(),
            keys_topic: sealing.keys_topic.as_str().into(),
            pepper: Arc::new(sealing.pepper),
            data_keys: DataKeys::new(sealing.key_time_to_live),
            key_pool: Arc::new(KeyPool::new(sealing.key_pool_size)),
            timeout,
        })
    }

    /// Appends `event` sealed ([`ScoreSubmitted::seal`], version 3) under a
    /// data key of its account, keyed by the account's reference so that
    /// one account's events stay in order on one partition without its
    /// number in clear. When the account has no key in use, it is handed
    /// one from the key pool, or, when the pool is empty, a new block of one
    /// key is written to the key topic first and the event is sent only
    /// once the broker acknowledged the block. The records carry no Kafka
    /// headers: the envelope holds the event's type and version.
    ///
    /// Returns once the event's delivery report arrived, at most the publish
    /// timeout plus [`FENCE_MARGIN`] after the call, the key's write
    /// included; never blocks the calling thread. The receipt is the
    /// event's.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the delivery report does not say the event was
    /// written, or did not come in time;
    /// [`PublishError::KeyNotWritten`] when the event was not sent because
    /// its key's write failed.
    pub async fn publish(&self, event: &ScoreSubmitted) -> Result<Receipt, PublishError> {
        let started = Instant::now();
        let answer = self.append(event).await;
        let outcome = outcome_of(&answer);
        metrics::counter!("kafka_produce_total", "outcome" => outcome).increment(1);
        metrics::histogram!("kafka_produce_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        answer
    }

    async fn append(&self, event: &ScoreSubmitted) -> Result<Receipt, PublishError> {
        let deadline = tokio::time::Instant::now() + self.fence();
        let account_ref = AccountRef::of(&self.pepper, &event.acc_nbr);
        let key = self
            .data_key(account_ref, deadline)
            .await
            .map_err(|error| PublishError::KeyNotWritten(error.code()))?;
        let sealed = event.seal(account_ref, &key);
        self.send(
            &self.topic,
            &sealed.record_key(),
            Some(&sealed.encode()),
            deadline,
        )
        .await
    }

    /// How long a submission waits at most for its writes: the publish
    /// timeout and [`FENCE_MARGIN`].
    fn fence(&self) -> Duration {
        self.timeout + FENCE_MARGIN
    }

    /// The data key to seal `account_ref`'s event under: the one in use, or
    /// one from the pool, or else the key of a new block of one, once the
    /// broker acknowledged the block, by `deadline`.
    async fn data_key(
        &self,
        account_ref: AccountRef,
        deadline: tokio::time::Instant,
    ) -> Result<DataKey, PublishError> {
        let lookup = self.data_keys.key_for(account_ref, || async move {
            if let Some(key) = self.key_pool.take() {
                return Ok(key);
            }
            let block = KeyBlock::generate(1);
            self.write_block(&block, KeyPath::Request, deadline).await?;
            let key = block.into_keys().into_iter().next();
            Ok(key.expect("a block holds at least one key"))
        });
        // A request waiting for another's write of the same key is bounded
        // by its own deadline as well.
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(key) => key,
            Err(_elapsed) => Err(PublishError::TimedOut(self.fence())),
        }
    }

    /// Writes `block` to the key topic, one record, by `deadline`, counting
    /// the record in `data_key_writes_total` under `path`.
    async fn write_block(
        &self,
        block: &KeyBlock,
        path: KeyPath,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let written = self
            .send(
                &self.keys_topic,
                &block.record_key(),
                Some(&block.encode()),
                deadline,
            )
            .await;
        let outcome = outcome_of(&written);
        metrics::counter!("data_key_writes_total", "outcome" => outcome, "path" => path.label())
            .increment(1);
        let keys = block.keys().len();
        match &written {
            Ok(receipt) => tracing::debug!(
                block = %block.id(),
                keys,
                partition = receipt.partition,
                offset = receipt.offset,
                "data key block written"
            ),
            Err(error) => tracing::warn!(
                block = %block.id(),
                keys,
                error = %error,
                outcome,
                "data key block not written"
            ),
        }
        written.map(|_receipt| ())
    }

    /// Keeps the key pool full until `stop` (a round under way is
    /// finished); each block's write has the publish timeout's deadline.
    pub async fn keep_key_pool_full(&self, stop: &CancellationToken) {
        self.key_pool
            .keep_full(
                |block| async move {
                    let deadline = tokio::time::Instant::now() + self.fence();
                    self.write_block(&block, KeyPath::Pool, deadline).await
                },
                stop,
            )
            .await;
    }

    /// Keys ready in the pool.
    pub fn pooled_keys(&self) -> usize {
        self.key_pool.len()
    }

    /// Empties the key pool and writes a tombstone for each block none of
    /// whose keys was handed out, waiting up to `timeout`: no event is
    /// sealed under such a block and no forget will ever rewrite it. A
    /// block partly handed out stays (events are sealed under its other
    /// keys); its unused keys seal nothing. Call once nothing is served any
    /// more and the pool is no longer kept full. Returns the block
    /// tombstones acknowledged.
    pub async fn retire_pooled_keys(&self, timeout: Duration) -> usize {
        let unused = self.key_pool.drain();
        if unused == Unused::default() {
            return 0;
        }
        let kept = unused.keys_left_in_used_blocks;
        let deadline = tokio::time::Instant::now() + timeout;
        let retired = futures::future::join_all(unused.blocks.iter().map(|block| async move {
            self.send(&self.keys_topic, &block_record_key(*block), None, deadline)
                .await
        }))
        .await;
        let acknowledged = retired.iter().filter(|sent| sent.is_ok()).count();
        if acknowledged == unused.blocks.len() {
            tracing::info!(
                blocks = acknowledged,
                keys_left_in_used_blocks = kept,
                "unused data key blocks tombstoned; the unused keys of blocks partly handed out \
                 stay in the key topic, sealing nothing"
            );
        } else {
            tracing::warn!(
                blocks = unused.blocks.len(),
                acknowledged,
                keys_left_in_used_blocks = kept,
                "not every unused data key block's tombstone was acknowledged; those blocks stay \
                 in the key topic, sealing nothing"
            );
        }
        acknowledged
    }

    /// Sends one record and waits for its delivery report until `deadline`.
    /// A record without `payload` is a tombstone.
    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        deadline: tokio::time::Instant,
    ) -> Result<Receipt, PublishError> {
        // Nothing is sent once the deadline has passed (a key acknowledged
        // at the last moment): the answer would be a timeout anyway, and
        // this way the event is surely not in the log.
        if tokio::time::Instant::now() >= deadline {
            return Err(PublishError::NotPersisted(
                RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        let (report_to, report) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(report_to)).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // Enqueueing never blocks: a full local queue is refused at once, and
        // a refused record never left this process.
        self.producer.send(record).map_err(|(error, _record)| {
            PublishError::NotPersisted(error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail))
        })?;
        let _in_flight = InFlight::enter();
        match tokio::time::timeout_at(deadline, report).await {
            Ok(Ok(report)) => report.into_answer(),
            // The producer dropped the send without a report: whether it
            // reached the broker is unknown.
            Ok(Err(_dropped)) => Err(PublishError::PossiblyPersisted(RDKafkaErrorCode::Fail)),
            Err(_elapsed) => Err(PublishError::TimedOut(self.fence())),
        }
    }

    /// Messages the producer holds that have no delivery report yet
    /// (librdkafka's queue and requests in flight).
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Whether the producer can still send (it has not failed fatally) and
    /// the broker answers a metadata request for the event topic and one for
    /// the key topic within `timeout` each: a submission needs both.
    pub async fn is_ready(&self, timeout: Duration) -> bool {
        let producer = Arc::clone(&self.producer);
        let topics = [Arc::clone(&self.topic), Arc::clone(&self.keys_topic)];
        let probe = tokio::task::spawn_blocking(move || {
            if let Some((code, reason)) = producer.client().fatal_error() {
                tracing::error!(error = %code, reason, "the Kafka producer failed fatally");
                return false;
            }
            topics.iter().all(|topic| {
                producer
                    .client()
                    .fetch_metadata(Some(topic), Timeout::After(timeout))
                    .is_ok_and(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .any(|t| t.error().is_none() && !t.partitions().is_empty())
                    })
            })
        });
        matches!(probe.await, Ok(true))
    }

    /// Waits up to `timeout` for every queued event's delivery report.
    pub async fn flush(&self, timeout: Duration) {
        let producer = Arc::clone(&self.producer);
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(error = %error, "producer flush incomplete"),
            Err(error) => tracing::warn!(error = %error, "producer flush task failed"),
        }
    }
}

/// What librdkafka knows of a message it reports on
/// (`rd_kafka_msg_status_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persistence {
    /// Never sent, or refused by the broker.
    NotPersisted,
    /// Sent, without an answer that tells.
    PossiblyPersisted,
    /// Acknowledged by the broker (with `acks=all`, by every in-sync
    /// replica).
    Persisted,
}

impl From<rd_kafka_msg_status_t> for Persistence {
    fn from(status: rd_kafka_msg_status_t) -> Self {
        match status {
            rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => Self::NotPersisted,
            rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED => {
                Self::PossiblyPersisted
            }
            rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_PERSISTED => Self::Persisted,
        }
    }
}

/// One message's delivery report, as the producer's thread hands it to the
/// request awaiting it.
#[derive(Debug)]
struct DeliveryReport {
    persistence: Persistence,
    /// The report's error; `None` for a successful delivery.
    error: Option<RDKafkaErrorCode>,
    partition: i32,
    offset: i64,
}

impl DeliveryReport {
    /// The request's answer: a receipt only when the report is a success
    /// and says persisted, since a 2xx promises the event is in the log.
    fn into_answer(self) -> Result<Receipt, PublishError> {
        match (self.persistence, self.error) {
            (Persistence::Persisted, None) => Ok(Receipt {
                partition: self.partition,
                offset: self.offset,
            }),
            (Persistence::NotPersisted, error) => Err(PublishError::NotPersisted(
                error.unwrap_or(RDKafkaErrorCode::Fail),
            )),
            // A failure on a message the broker did acknowledge, or a
            // success without persistence (which only `acks=0` produces),
            // contradicts itself: it is not proof of a write, but the event
            // may well be there.
            (Persistence::PossiblyPersisted | Persistence::Persisted, error) => Err(
                PublishError::PossiblyPersisted(error.unwrap_or(RDKafkaErrorCode::Fail)),
            ),
        }
    }
}

/// The producer's context: passes every delivery report, with the
/// message's persistence status, to the request that sent the message.
/// rust-rdkafka's `FutureProducer` reports the error alone, and an error
/// alone does not tell a message that never left from one that may be in
/// the log.
struct DeliveryReporter;

impl ClientContext for DeliveryReporter {
    /// Errors not tied to one message. librdkafka recovers from the
    /// transient ones (a broker unreachable, all brokers down) by itself, so
    /// they are only logged. A fatal one leaves the idempotent producer
    /// unable to send until the process restarts; `/readyz` reports it.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(error = %error, reason, "Kafka producer fatal error");
        } else {
            tracing::warn!(error = %error, reason, "Kafka client error");
        }
    }
}

impl ProducerContext for DeliveryReporter {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryReport>>;

    fn delivery(&self, result: &DeliveryResult<'_>, report_to: Self::DeliveryOpaque) {
        let (message, error) = match result {
            Ok(message) => (message, None),
            Err((error, message)) => (
                message,
                Some(error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
            ),
        };
        // SAFETY: `message` borrows the delivery report event, which stays
        // alive for this call; librdkafka only reads the message's status.
        let status = unsafe { rd_kafka_message_status(message.ptr()) };
        let report = DeliveryReport {
            persistence: status.into(),
            error,
            partition: message.partition(),
            offset: message.offset(),
        };
        // The request may be gone (its client hung up); nobody is left to
        // tell then.
        let _ = report_to.send(report);
    }
}

/// One send awaiting its delivery report in `kafka_produce_in_flight`, until
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rdkafka::mocking::MockCluster;
    use score_shared::event::new_event_id;
    use score_shared::personal::{KeyRecord, MAX_BLOCK_KEYS};
    use score_shared::{Channel, RawSubmission, Submission, ValidationRules};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn report(persistence: Persistence, error: Option<RDKafkaErrorCode>) -> DeliveryReport {
        DeliveryReport {
            persistence,
            error,
            partition: 2,
            offset: 41,
        }
    }

    #[test]
    fn a_persisted_report_without_an_error_is_a_receipt() {
        let answer = report(Persistence::Persisted, None).into_answer();

        assert_eq!(
            answer,
            Ok(Receipt {
                partition: 2,
                offset: 41
            })
        );
    }

    #[test]
    fn a_report_not_persisted_says_the_event_was_not_written() {
        let cases = [
            (
                Some(RDKafkaErrorCode::MessageTimedOut),
                RDKafkaErrorCode::MessageTimedOut,
            ),
            (
                Some(RDKafkaErrorCode::MessageSizeTooLarge),
                RDKafkaErrorCode::MessageSizeTooLarge,
            ),
            (
                Some(RDKafkaErrorCode::PurgeQueue),
                RDKafkaErrorCode::PurgeQueue,
            ),
            (None, RDKafkaErrorCode::Fail),
        ];
        for (error, expected) in cases {
            let answer = report(Persistence::NotPersisted, error).into_answer();

            assert_eq!(
                answer,
                Err(PublishError::NotPersisted(expected)),
                "case {error:?}"
            );
        }
    }

    #[test]
    fn a_report_that_does_not_prove_a_write_says_the_event_may_have_been_written() {
        let cases = [
            (
                Persistence::PossiblyPersisted,
                Some(RDKafkaErrorCode::MessageTimedOut),
                RDKafkaErrorCode::MessageTimedOut,
            ),
            (
                Persistence::PossiblyPersisted,
                Some(RDKafkaErrorCode::PurgeInflight),
                RDKafkaErrorCode::PurgeInflight,
            ),
            (Persistence::PossiblyPersisted, None, RDKafkaErrorCode::Fail),
            (
                Persistence::Persisted,
                Some(RDKafkaErrorCode::BrokerTransportFailure),
                RDKafkaErrorCode::BrokerTransportFailure,
            ),
        ];
        for (persistence, error, expected) in cases {
            let answer = report(persistence, error).into_answer();

            assert_eq!(
                answer,
                Err(PublishError::PossiblyPersisted(expected)),
                "case {persistence:?} {error:?}"
            );
        }
    }

    #[test]
    fn each_librdkafka_status_maps_to_its_persistence() {
        let cases = [
            (
                rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED,
                Persistence::NotPersisted,
            ),
            (
                rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED,
                Persistence::PossiblyPersisted,
            ),
            (
                rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_PERSISTED,
                Persistence::Persisted,
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(Persistence::from(status), expected, "case {status:?}");
        }
    }

    #[test]
    fn each_failure_is_counted_under_its_own_outcome() {
        let cases = [
            (
                PublishError::NotPersisted(RDKafkaErrorCode::QueueFull),
                "not_persisted",
            ),
            (
                PublishError::KeyNotWritten(RDKafkaErrorCode::QueueFull),
                "not_persisted",
            ),
            (
                PublishError::PossiblyPersisted(RDKafkaErrorCode::MessageTimedOut),
                "possibly_persisted",
            ),
            (PublishError::TimedOut(Duration::from_secs(6)), "timed_out"),
        ];
        for (error, expected) in cases {
            assert_eq!(error.outcome(), expected, "case {error:?}");
        }
    }

    // Against librdkafka's in-process mock cluster: the real producer, its
    // delivery reports and the persistence status read from them. The
    // failing sends get a `message.timeout.ms` well under the publish
    // timeout, so that librdkafka's report (it checks message timeouts once
    // a second) answers them rather than the fence.

    const TOPIC: &str = "scores";
    const KEYS_TOPIC: &str = "scores-keys";
    const TIMEOUT: Duration = Duration::from_secs(5);
    /// The mock cluster's only broker.
    const BROKER: i32 = 1;
    /// The account of [`event`].
    const ACCOUNT: &str = "13800138000";

    fn mock_cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let cluster = MockCluster::new(1).expect("a mock cluster");
        cluster
            .create_topic(TOPIC, 3, 1)
            .expect("a topic on the mock cluster");
        cluster
            .create_topic(KEYS_TOPIC, 3, 1)
            .expect("a key topic on the mock cluster");
        cluster
    }

    fn pepper() -> Pepper {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode([3u8; 32])
            .parse()
            .expect("a valid pepper")
    }

    fn kafka_args(bootstrap: String, options: &[&str]) -> KafkaArgs {
        KafkaArgs {
            kafka_brokers: bootstrap,
            topic: TOPIC.to_owned(),
            topic_partitions: 3,
            topic_replication: 1,
            kafka_options: options
                .iter()
                .map(|option| option.parse().expect("key=value"))
                .collect(),
        }
    }

    /// No key pool: each new account's key is written on its path.
    fn sealing() -> Sealing {
        sealing_with_pool(0)
    }

    fn sealing_with_pool(key_pool_size: usize) -> Sealing {
        Sealing {
            pepper: pepper(),
            keys_topic: KEYS_TOPIC.to_owned(),
            key_time_to_live: Duration::from_secs(60),
            key_pool_size,
        }
    }

    fn publisher(bootstrap: String, options: &[&str]) -> Publisher {
        Publisher::new(&kafka_args(bootstrap, options), TIMEOUT, sealing()).expect("a producer")
    }

    /// A publisher with a pool of `keys` keys (at most one block's worth, or
    /// whole blocks), filled.
    async fn filled_publisher(bootstrap: &str, keys: usize) -> Publisher {
        let publisher = Publisher::new(
            &kafka_args(bootstrap.to_owned(), &[]),
            TIMEOUT,
            sealing_with_pool(keys),
        )
        .expect("a producer");
        refill_until(&publisher, keys).await;
        publisher
    }

    /// Runs the key pool's refill until the pool holds `keys` keys.
    async fn refill_until(publisher: &Publisher, keys: usize) {
        crate::key_pool::run_until(
            |stop| async move { publisher.keep_key_pool_full(&stop).await },
            || publisher.pooled_keys() == keys,
        )
        .await;
    }

    /// Runs the key pool's refill for 100 ms, long enough for a round it
    /// had to make.
    async fn refill_briefly(publisher: &Publisher) {
        let started = Instant::now();
        crate::key_pool::run_until(
            |stop| async move { publisher.keep_key_pool_full(&stop).await },
            || started.elapsed() >= Duration::from_millis(100),
        )
        .await;
    }

    /// The key records of `stored` (key topic records).
    fn key_records(stored: &[Stored]) -> Vec<KeyRecord> {
        stored
            .iter()
            .map(|record| {
                KeyRecord::decode(&record.key, record.payload.as_deref()).expect("a key record")
            })
            .collect()
    }

    /// The blocks written to the key topic, checked against their record
    /// keys; there must be no tombstone.
    fn key_blocks(bootstrap: &str) -> Vec<KeyBlock> {
        let stored = read_all(bootstrap, KEYS_TOPIC);
        stored
            .iter()
            .zip(key_records(&stored))
            .map(|(stored, record)| match record {
                KeyRecord::Block(block) => {
                    assert_eq!(stored.key, block.record_key().into_bytes());
                    block
                }
                KeyRecord::Forgotten { block } => panic!("a block, not the tombstone of {block}"),
            })
            .collect()
    }

    /// The ids of the blocks tombstoned in the key topic.
    fn tombstoned_blocks(bootstrap: &str) -> HashSet<Uuid> {
        key_records(&read_all(bootstrap, KEYS_TOPIC))
            .into_iter()
            .filter_map(|record| match record {
                KeyRecord::Forgotten { block } => Some(block),
                KeyRecord::Block(_) => None,
            })
            .collect()
    }

    /// The key ids the events of the event topic are sealed under, in
    /// offset order within each partition.
    fn sealing_kids(bootstrap: &str) -> Vec<Uuid> {
        read_all(bootstrap, TOPIC)
            .iter()
            .map(|stored| {
                let payload = stored.payload.as_deref().expect("a payload");
                match score_shared::event::decode(payload) {
                    Ok(score_shared::Event::SealedScore(sealed)) => sealed.kid,
                    _ => panic!("a sealed event"),
                }
            })
            .collect()
    }

    fn kids(block: &KeyBlock) -> HashSet<Uuid> {
        block.keys().iter().map(|key| key.kid).collect()
    }

    fn event() -> ScoreSubmitted {
        event_of(ACCOUNT, "")
    }

    fn event_of(account: &str, comment: &str) -> ScoreSubmitted {
        let raw = RawSubmission {
            acc_nbr: Some(json!(account)),
            grades: [Some(json!(5)), Some(json!(4)), Some(json!(3))],
            texts: [Some(json!(comment)), None, None],
            scene: None,
        };
        let submission = Submission::parse(&raw, &ValidationRules::default()).expect("valid");
        ScoreSubmitted::new(new_event_id(), Channel::ApiV1, &submission)
    }

    /// One record read back from the mock cluster.
    struct Stored {
        partition: i32,
        offset: i64,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        timestamp: i64,
    }

    /// Every record of `topic` (three partitions), read from the beginning.
    fn read_all(bootstrap: &str, topic: &str) -> Vec<Stored> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};

        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "publisher-tests")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut expected = 0;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..3 {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .expect("watermarks");
            expected += high - low;
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("a partition");
        }
        consumer.assign(&assignment).expect("assigned");
        let mut stored = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (stored.len() as i64) < expected && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("a record");
                stored.push(Stored {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().map(<[u8]>::to_vec),
                    timestamp: message.timestamp().to_millis().expect("a timestamp"),
                });
            }
        }
        assert_eq!(
            stored.len() as i64,
            expected,
            "every record of {topic} read"
        );
        stored
    }

    /// Sends until one event is persisted: the producer is then connected
    /// and has its producer id, whatever its message timeout, and
    /// [`ACCOUNT`] has a data key in use.
    async fn warm_up(publisher: &Publisher) {
        warm_up_account(publisher, ACCOUNT).await;
    }

    /// [`warm_up`] for `account`.
    async fn warm_up_account(publisher: &Publisher, account: &str) {
        for _ in 0..10 {
            // With a queue of one message, the account's key may still be
            // counted when its event is sent: wait for the queue to empty
            // before each try.
            settle(publisher).await;
            if publisher.publish(&event_of(account, "")).await.is_ok() {
                settle(publisher).await;
                return;
            }
        }
        panic!("the mock cluster never acknowledged an event");
    }

    /// Waits until librdkafka no longer counts any message in its queue: it
    /// stops counting an acknowledged one just after its delivery report
    /// has been handed over.
    async fn settle(publisher: &Publisher) {
        for _ in 0..500 {
            if publisher.queue_depth() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("messages still queued after five seconds");
    }

    #[tokio::test]
    async fn an_acknowledged_send_is_a_receipt_of_where_the_event_landed() {
        let cluster = mock_cluster();
        let publisher = publisher(cluster.bootstrap_servers(), &[]);

        let first = publisher.publish(&event()).await.expect("persisted");
        let second = publisher.publish(&event()).await.expect("persisted");

        assert_eq!(
            first.partition, second.partition,
            "one account, one partition"
        );
        assert_eq!(second.offset, first.offset + 1);
    }

    #[tokio::test]
    async fn a_send_while_the_broker_is_down_was_not_written() {
        let cluster = mock_cluster();
        let publisher = publisher(cluster.bootstrap_servers(), &["message.timeout.ms=500"]);
        warm_up(&publisher).await;
        cluster.broker_down(BROKER).expect("broker down");

        let started = Instant::now();
        let answer = publisher.publish(&event()).await;

        assert_eq!(
            answer,
            Err(PublishError::NotPersisted(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
        assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_send_whose_acknowledgment_never_comes_may_have_been_written() {
        let cluster = mock_cluster();
        let publisher = publisher(
            cluster.bootstrap_servers(),
            &["message.timeout.ms=1000", "request.timeout.ms=500"],
        );
        warm_up(&publisher).await;
        cluster
            .broker_round_trip_time(BROKER, TIMEOUT)
            .expect("a slow broker");

        let answer = publisher.publish(&event()).await;

        assert_eq!(
            answer,
            Err(PublishError::PossiblyPersisted(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
    }

    #[tokio::test]
    async fn a_send_finding_the_local_queue_full_is_refused_at_once() {
        let cluster = mock_cluster();
        let publisher = publisher(
            cluster.bootstrap_servers(),
            &["queue.buffering.max.messages=1", "message.timeout.ms=500"],
        );
        // Both accounts' keys in use: the sends below are events alone.
        warm_up_account(&publisher, "13800000001").await;
        warm_up_account(&publisher, "13800000002").await;
        cluster.broker_down(BROKER).expect("broker down");
        let queued = event_of("13800000001", "");
        let first = publisher.publish(&queued);
        tokio::pin!(first);
        assert!(
            futures::poll!(&mut first).is_pending(),
            "the first is queued"
        );

        let started = Instant::now();
        let second = publisher.publish(&event_of("13800000002", "")).await;

        assert_eq!(
            second,
            Err(PublishError::NotPersisted(RDKafkaErrorCode::QueueFull))
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        let _ = first.await;
    }

    #[tokio::test]
    async fn the_local_queue_is_bounded_by_the_write_budget() {
        let cluster = mock_cluster();
        let kafka = KafkaArgs {
            kafka_brokers: cluster.bootstrap_servers(),
            topic: TOPIC.to_owned(),
            topic_partitions: 3,
            topic_replication: 1,
            kafka_options: vec!["message.timeout.ms=500".parse().expect("key=value")],
        };
        let publisher =
            Publisher::with_queue_limit(&kafka, TIMEOUT, 2, sealing()).expect("a producer");
        cluster.broker_down(BROKER).expect("broker down");
        // Three new accounts: each submission's first send is its key.
        let queued = [event_of("13800000001", ""), event_of("13800000002", "")];
        let first = publisher.publish(&queued[0]);
        let second = publisher.publish(&queued[1]);
        tokio::pin!(first, second);
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());

        assert_eq!(
            publisher.publish(&event_of("13800000003", "")).await,
            Err(PublishError::KeyNotWritten(RDKafkaErrorCode::QueueFull)),
            "a third send finds the queue of two full"
        );
        let _ = (first.await, second.await);
    }
    #[tokio::test]
    async fn an_event_is_sealed_keyed_by_its_account_reference_after_its_key() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = publisher(bootstrap.clone(), &[]);
        let submitted = event_of(ACCOUNT, "服務很好");

        let receipt = publisher.publish(&submitted).await.expect("persisted");

        let account_ref = AccountRef::of(&pepper(), ACCOUNT);
        let keys = read_all(&bootstrap, KEYS_TOPIC);
        assert_eq!(keys.len(), 1, "one block of data keys written");
        let key_record = &keys[0];
        let blocks = key_blocks(&bootstrap);
        let [key] = blocks[0].keys() else {
            panic!("a block of one key, not {}", blocks[0].keys().len());
        };

        let events = read_all(&bootstrap, TOPIC);
        assert_eq!(events.len(), 1);
        let stored = &events[0];
        assert_eq!(
            (stored.partition, stored.offset),
            (receipt.partition, receipt.offset),
            "the receipt is the event's"
        );
        assert_eq!(stored.key, account_ref.to_string().into_bytes());
        let payload = stored.payload.as_deref().expect("a payload");
        for clear in [ACCOUNT.as_bytes(), "服務很好".as_bytes()] {
            assert!(
                !payload.windows(clear.len()).any(|window| window == clear),
                "the payload holds {:?} in clear",
                String::from_utf8_lossy(clear)
            );
        }
        let score_shared::Event::SealedScore(sealed) =
            score_shared::event::decode(payload).expect("an event")
        else {
            panic!("a sealed event");
        };
        assert_eq!(sealed.open(key).expect("opens under its key"), {
            let mut expected = submitted.clone();
            expected.submission_digest = Some(submitted.submission_digest());
            expected
        });
        assert!(
            key_record.timestamp <= stored.timestamp,
            "the key was produced before the event"
        );
    }

    #[tokio::test]
    async fn a_new_account_finding_the_pool_empty_writes_a_block_of_one_key_before_its_event() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        // A pool not filled yet, as at start.
        let publisher = Publisher::new(
            &kafka_args(bootstrap.clone(), &[]),
            TIMEOUT,
            sealing_with_pool(4),
        )
        .expect("a producer");

        publisher.publish(&event()).await.expect("persisted");

        let blocks = key_blocks(&bootstrap);
        assert_eq!(blocks.len(), 1, "one record of its own");
        assert_eq!(blocks[0].keys().len(), 1, "a block of one key");
        assert_eq!(sealing_kids(&bootstrap), [blocks[0].keys()[0].kid]);
        let (keys, events) = (
            read_all(&bootstrap, KEYS_TOPIC),
            read_all(&bootstrap, TOPIC),
        );
        assert!(
            keys[0].timestamp <= events[0].timestamp,
            "the block was produced before the event"
        );
        assert_eq!(publisher.pooled_keys(), 0, "the pool is not filled by it");
    }

    #[tokio::test]
    async fn new_accounts_are_handed_pooled_keys_and_a_block_is_written_once_a_blocks_worth_was_taken()
     {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = filled_publisher(&bootstrap, 4).await;
        let pooled = key_blocks(&bootstrap);
        assert_eq!(pooled.len(), 1, "one record");
        assert_eq!(pooled[0].keys().len(), 4);

        publisher.publish(&event()).await.expect("persisted");
        refill_briefly(&publisher).await;

        assert_eq!(
            read_all(&bootstrap, KEYS_TOPIC).len(),
            1,
            "the submission wrote no key of its own, nor the refill for one key taken"
        );
        assert!(
            kids(&pooled[0]).contains(&sealing_kids(&bootstrap)[0]),
            "sealed under a pooled key"
        );
        assert_eq!(publisher.pooled_keys(), 3);

        for account in ["13800000001", "13800000002", "13800000003"] {
            publisher
                .publish(&event_of(account, ""))
                .await
                .expect("persisted");
        }
        assert_eq!(publisher.pooled_keys(), 0);
        assert_eq!(
            read_all(&bootstrap, KEYS_TOPIC).len(),
            1,
            "all four from the pool"
        );
        refill_until(&publisher, 4).await;
        let blocks = key_blocks(&bootstrap);
        assert_eq!(blocks.len(), 2, "a block of four once four were taken");
        assert_eq!(
            blocks.iter().map(|block| block.keys().len()).sum::<usize>(),
            8
        );
    }

    #[tokio::test]
    async fn two_new_accounts_from_the_pool_get_different_keys_of_one_block_in_one_record() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = filled_publisher(&bootstrap, 4).await;

        publisher.publish(&event()).await.expect("persisted");
        publisher
            .publish(&event_of("13900139000", ""))
            .await
            .expect("persisted");

        let blocks = key_blocks(&bootstrap);
        assert_eq!(blocks.len(), 1, "one key topic record for both");
        let sealed_under: HashSet<Uuid> = sealing_kids(&bootstrap).into_iter().collect();
        assert_eq!(sealed_under.len(), 2, "a key per account");
        assert!(sealed_under.is_subset(&kids(&blocks[0])));
    }

    #[tokio::test]
    async fn the_blocks_of_an_untouched_pool_are_tombstoned_when_retired() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = filled_publisher(&bootstrap, 3).await;
        let written = key_blocks(&bootstrap);

        let retired = publisher.retire_pooled_keys(TIMEOUT).await;

        assert_eq!(retired, 1);
        assert_eq!(publisher.pooled_keys(), 0);
        assert_eq!(written.len(), 1);
        assert_eq!(
            tombstoned_blocks(&bootstrap),
            HashSet::from([written[0].id()]),
            "the unused block has its tombstone"
        );
    }

    #[tokio::test]
    async fn only_the_blocks_no_key_was_handed_out_of_are_tombstoned_when_retired() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = filled_publisher(&bootstrap, 2 * MAX_BLOCK_KEYS).await;
        let written = key_blocks(&bootstrap);
        assert_eq!(written.len(), 2);
        publisher.publish(&event()).await.expect("persisted");
        let sealed_under = sealing_kids(&bootstrap)[0];
        let (used, unused): (Vec<&KeyBlock>, Vec<&KeyBlock>) = written
            .iter()
            .partition(|block| kids(block).contains(&sealed_under));
        assert_eq!((used.len(), unused.len()), (1, 1));

        let retired = publisher.retire_pooled_keys(TIMEOUT).await;

        assert_eq!(retired, 1);
        assert_eq!(publisher.pooled_keys(), 0);
        assert_eq!(
            tombstoned_blocks(&bootstrap),
            HashSet::from([unused[0].id()]),
            "the block an event is sealed under stays"
        );
        assert_eq!(read_all(&bootstrap, KEYS_TOPIC).len(), 3);
    }

    #[tokio::test]
    async fn an_accounts_key_is_written_once_and_reused_for_its_next_events() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = publisher(bootstrap.clone(), &[]);

        for _ in 0..3 {
            publisher.publish(&event()).await.expect("persisted");
        }
        publisher
            .publish(&event_of("13900139000", ""))
            .await
            .expect("persisted");

        assert_eq!(
            read_all(&bootstrap, KEYS_TOPIC).len(),
            2,
            "a key per account"
        );
        assert_eq!(read_all(&bootstrap, TOPIC).len(), 4);
    }

    #[tokio::test]
    async fn a_key_write_the_broker_refuses_fails_the_submission_and_sends_no_event() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = publisher(bootstrap.clone(), &[]);
        warm_up(&publisher).await;
        // The next produce request, the new account's key, is refused.
        cluster.request_errors(
            rdkafka::types::RDKafkaApiKey::Produce,
            &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );

        let started = Instant::now();
        let refused = publisher.publish(&event_of("13900139000", "")).await;

        let Err(PublishError::KeyNotWritten(_)) = refused else {
            panic!("answered {refused:?}");
        };
        assert_eq!(refused.unwrap_err().outcome(), "not_persisted");
        assert!(started.elapsed() < TIMEOUT + FENCE_MARGIN);
        assert_eq!(
            read_all(&bootstrap, TOPIC).len(),
            1,
            "only the warm-up's event"
        );
        // An account with a key in use is not held up by the key topic.
        publisher.publish(&event()).await.expect("persisted");
        assert_eq!(
            read_all(&bootstrap, KEYS_TOPIC).len(),
            1,
            "only the warm-up's key"
        );
    }

    #[tokio::test]
    async fn after_a_failed_key_write_the_accounts_next_submission_writes_a_new_key() {
        let cluster = mock_cluster();
        let bootstrap = cluster.bootstrap_servers();
        let publisher = publisher(bootstrap.clone(), &["message.timeout.ms=500"]);
        warm_up(&publisher).await;
        cluster.broker_down(BROKER).expect("broker down");

        let refused = publisher.publish(&event_of("13900139000", "")).await;
        cluster.broker_up(BROKER).expect("broker up");
        let mut accepted = Err(PublishError::NotPersisted(RDKafkaErrorCode::Fail));
        for _ in 0..10 {
            accepted = publisher.publish(&event_of("13900139000", "")).await;
            if accepted.is_ok() {
                break;
            }
        }

        assert_eq!(
            refused,
            Err(PublishError::KeyNotWritten(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
        accepted.expect("persisted once the broker is back");
        let keys = read_all(&bootstrap, KEYS_TOPIC);
        assert_eq!(keys.len(), 2, "the warm-up's key and the new account's");
    }

    #[tokio::test]
    async fn a_key_write_without_an_answer_is_answered_within_the_publish_timeout() {
        let cluster = mock_cluster();
        let publisher = publisher(
            cluster.bootstrap_servers(),
            &["message.timeout.ms=1000", "request.timeout.ms=500"],
        );
        warm_up(&publisher).await;
        cluster
            .broker_round_trip_time(BROKER, TIMEOUT * 2)
            .expect("a slow broker");

        let started = Instant::now();
        let answer = publisher.publish(&event_of("13900139000", "")).await;

        assert_eq!(
            answer,
            Err(PublishError::KeyNotWritten(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
        assert!(
            started.elapsed() < TIMEOUT + FENCE_MARGIN,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_failed_key_write_counts_as_an_event_not_written() {
        assert_eq!(
            PublishError::KeyNotWritten(RDKafkaErrorCode::MessageTimedOut).outcome(),
            "not_persisted"
        );
        assert_eq!(
            PublishError::TimedOut(Duration::from_secs(6)).code(),
            RDKafkaErrorCode::MessageTimedOut,
            "a key write ended by the fence"
        );
    }
}
