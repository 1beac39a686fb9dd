//! Appending events as the ingest API does, for the commands that write to
//! the log in bulk (`import-legacy`, `migrate-log`): every rating sealed
//! under a data key of its account, keyed by the account reference, and
//! every key written to the key topic, and acknowledged, before the first
//! event sealed under it.
//!
//! Records are taken in chunks: the chunk's new keys are written, in blocks
//! of up to `MAX_BLOCK_KEYS` (one record each), and acknowledged first, then its records are enqueued in the order given
//! (librdkafka keeps that order within a partition; the producer is
//! idempotent) and acknowledged before the next chunk.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::{Delivery, DeliveryFuture};
use rdkafka::producer::{FutureProducer, FutureRecord};
use score_shared::config::KafkaArgs;
use score_shared::personal::MAX_BLOCK_KEYS;
use score_shared::personal::PersonalDataArgs;
use score_shared::{AccountRef, DataKey, KeyBlock, Pepper, ScoreSubmitted};

/// How long the broker gets to acknowledge an append.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause when librdkafka's queue is full, for it to drain.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// A record waiting in the chunk.
enum Pending {
    /// A rating and its account, sealed once the account's key is known.
    Rating(Box<ScoreSubmitted>, AccountRef),
    /// Bytes appended as they are (an event that needs no sealing).
    Raw {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
}

/// Appends to one event topic, sealing ratings; see the module docs.
pub struct SealingAppender {
    producer: FutureProducer,
    topic: String,
    keys_topic: String,
    pepper: Pepper,
    /// The key each account's events are sealed under in this run.
    keys: HashMap<AccountRef, DataKey>,
    chunk: Vec<Pending>,
    chunk_size: usize,
    appended: u64,
    keys_written: u64,
}

impl SealingAppender {
    /// An appender to `kafka`'s topic, writing keys to `personal`'s key
    /// topic (created if missing, as the event topic must exist), in chunks
    /// of `chunk_size` records.
    ///
    /// # Errors
    ///
    /// No pepper, or the broker refuses to create the key topic.
    pub async fn new(
        kafka: &KafkaArgs,
        personal: &PersonalDataArgs,
        chunk_size: usize,
    ) -> anyhow::Result<Self> {
        let pepper = personal.pepper()?;
        score_shared::kafka::ensure_keys_topic(kafka, &personal.keys_topic).await?;
        let producer = score_shared::kafka::producer_config(kafka, BROKER_TIMEOUT)
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            topic: kafka.topic.clone(),
            keys_topic: personal.keys_topic.clone(),
            pepper,
            keys: HashMap::new(),
            chunk: Vec::new(),
            chunk_size: chunk_size.max(1),
            appended: 0,
            keys_written: 0,
        })
    }

    /// Records acknowledged so far.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Data keys written so far.
    pub fn keys_written(&self) -> u64 {
        self.keys_written
    }

    /// The reference of `event`'s account under this appender's pepper.
    pub fn account_of(&self, event: &ScoreSubmitted) -> AccountRef {
        AccountRef::of(&self.pepper, &event.acc_nbr)
    }

    /// Queues a rating of `account` (its [`Self::account_of`]); appends the
    /// chunk when it is full.
    ///
    /// # Errors
    ///
    /// As [`Self::flush`].
    pub async fn rating(
        &mut self,
        event: ScoreSubmitted,
        account: AccountRef,
    ) -> anyhow::Result<()> {
        self.chunk.push(Pending::Rating(Box::new(event), account));
        self.flush_if_full().await
    }

    /// Queues a record to append unchanged; appends the chunk when it is
    /// full.
    ///
    /// # Errors
    ///
    /// As [`Self::flush`].
    pub async fn raw(&mut self, key: Option<Vec<u8>>, payload: Vec<u8>) -> anyhow::Result<()> {
        self.chunk.push(Pending::Raw { key, payload });
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> anyhow::Result<()> {
        if self.chunk.len() >= self.chunk_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends what is queued: new keys first, acknowledged, then the
    /// records in order, acknowledged.
    ///
    /// # Errors
    ///
    /// When the broker refuses or does not acknowledge an append; what was
    /// acknowledged stays (see [`Self::appended`]).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        let chunk = std::mem::take(&mut self.chunk);
        let new_accounts: Vec<AccountRef> = chunk
            .iter()
            .filter_map(|pending| match pending {
                Pending::Rating(_, account_ref) => Some(*account_ref),
                Pending::Raw { .. } => None,
            })
            .filter(|account_ref| !self.keys.contains_key(account_ref))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let blocks: Vec<KeyBlock> = new_accounts
            .chunks(MAX_BLOCK_KEYS)
            .map(|accounts| KeyBlock::generate(accounts.len()))
            .collect();
        let mut deliveries = Vec::with_capacity(blocks.len());
        for block in &blocks {
            let record_key = block.record_key();
            let payload = block.encode();
            let record = FutureRecord::to(&self.keys_topic)
                .key(record_key.as_bytes())
                .payload(payload.as_slice());
            deliveries.push(self.enqueue(record).await?);
        }
        await_all(deliveries, "a block of data keys").await?;
        self.keys_written += new_accounts.len() as u64;
        let new_keys = blocks.into_iter().flat_map(KeyBlock::into_keys);
        self.keys.extend(new_accounts.into_iter().zip(new_keys));

        let mut deliveries = Vec::with_capacity(chunk.len());
        for pending in chunk {
            let delivery = match pending {
                Pending::Rating(event, account_ref) => {
                    let sealed = event.seal(account_ref, &self.keys[&account_ref]);
                    let key = sealed.record_key();
                    let payload = sealed.encode();
                    let record = FutureRecord::to(&self.topic)
                        .key(key.as_bytes())
                        .payload(payload.as_slice());
                    self.enqueue(record).await?
                }
                Pending::Raw { key, payload } => {
                    let mut record: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(&self.topic).payload(&payload);
                    if let Some(key) = &key {
                        record = record.key(key);
                    }
                    self.enqueue(record).await?
                }
            };
            deliveries.push(delivery);
        }
        let count = deliveries.len() as u64;
        await_all(deliveries, "an event").await?;
        self.appended += count;
        Ok(())
    }

    /// Enqueues `record` now (so records keep the order they are given in),
    /// waiting while librdkafka's queue is full.
    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> anyhow::Result<DeliveryFuture> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    self.producer.poll(Duration::ZERO);
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error).context("enqueueing an append"),
            }
        }
    }
}

async fn await_all(deliveries: Vec<DeliveryFuture>, what: &str) -> anyhow::Result<()> {
    for delivery in deliveries {
        let delivered: Result<Delivery, _> = delivery
            .await
            .with_context(|| format!("the producer dropped {what} before its acknowledgment"))?;
        delivered
            .map_err(|(error, _)| error)
            .with_context(|| format!("the broker refused {what}"))?;
    }
    Ok(())
}
