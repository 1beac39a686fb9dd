//! Reading the log outside the consumer group: one reader for every command
//! that reads the topic itself (the rebuild, the legacy import's scan for
//! earlier imports, the benchmark's raw consumer, the tests), and one way of
//! collecting a batch, shared with the live loop.
//!
//! A [`LogReader`] assigns the topic's partitions directly (no group
//! membership, no committed offsets, nothing another reader or the live
//! projector would notice) from given offsets, and knows where each
//! partition ended when it looked: it is done once it has read every
//! partition to that end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use score_shared::config::KafkaArgs;
use score_shared::kafka::LogMetadata;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::LogRecord;

/// How long a look at the log's end waits for the broker.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Up to `max` records: waits at most `first_wait` for the first, then
/// takes more until `max` or until `fill_wait` has passed since the first
/// came. Empty when nothing came. [`LogReader`] reads with it; the live
/// loop uses its two halves, [`first_record`] and [`fill_batch`], to end
/// the first wait early when the group assigns partitions.
///
/// # Errors
///
/// The consumer's error when it reports one before the first record; after
/// the first, an error ends the batch early and is logged.
pub async fn read_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    max: usize,
    first_wait: Duration,
    fill_wait: Duration,
) -> Result<Vec<LogRecord>, KafkaError> {
    Ok(match first_record(consumer, first_wait).await? {
        Some(first) => fill_batch(consumer, first, max, fill_wait).await,
        None => Vec::new(),
    })
}

/// The next record, waiting at most `wait`; `None` when none came.
/// Cancellation safe: dropped while waiting, it has consumed nothing.
///
/// # Errors
///
/// The consumer's error, when it reports one.
pub async fn first_record<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    wait: Duration,
) -> Result<Option<LogRecord>, KafkaError> {
    match tokio::time::timeout(wait, consumer.recv()).await {
        Ok(Ok(message)) => Ok(Some(LogRecord::detach(&message))),
        Ok(Err(error)) => Err(error),
        Err(_idle) => Ok(None),
    }
}

/// `first` and whatever follows it, until `max` records or until `wait`
/// has passed. An error ends the batch early and is logged.
pub async fn fill_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    first: LogRecord,
    max: usize,
    wait: Duration,
) -> Vec<LogRecord> {
    let mut records = vec![first];
    let deadline = Instant::now() + wait;
    while records.len() < max.max(1) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(LogRecord::detach(&message)),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "consumer error");
                break;
            }
            Err(_deadline) => break,
        }
    }
    records
}

/// Where a [`LogReader`] starts in each partition.
#[derive(Clone, Debug)]
pub enum Start {
    /// The first record each partition still holds.
    Beginning,
    /// These offsets; a partition not listed starts at its beginning.
    At(BTreeMap<i32, i64>),
}

/// Reads every partition of one topic, assigned directly, up to the end each
/// had when the reader last looked ([`LogReader::look_at_the_end`]).
pub struct LogReader {
    consumer: StreamConsumer,
    /// Kept for every look at the end: a client is costly to make.
    metadata: Arc<LogMetadata>,
    topic: String,
    /// The high watermark of each partition at the last look.
    ends: BTreeMap<i32, i64>,
    /// The next offset to read in each partition.
    next: BTreeMap<i32, i64>,
    /// Records between the starts and the ends at the first look.
    total: i64,
}

impl LogReader {
    /// Looks at the log's end and assigns every partition from `start`.
    /// `purpose` names the reader's throw-away group id (librdkafka wants
    /// one; nothing is committed under it).
    ///
    /// # Errors
    ///
    /// When the broker does not answer or the topic does not exist.
    pub async fn open(kafka: &KafkaArgs, purpose: &str, start: Start) -> anyhow::Result<Self> {
        let group = format!("scores-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = score_shared::kafka::consumer_config(kafka, &group)
            .create()
            .context("creating a Kafka consumer to read the log")?;
        let metadata = Arc::new(LogMetadata::new(kafka)?);
        let marks = watermarks(&metadata).await?;
        let mut next = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for (partition, (low, _)) in &marks {
            let offset = match &start {
                Start::At(offsets) => offsets.get(partition).copied().unwrap_or(*low),
                Start::Beginning => *low,
            }
            .max(*low);
            assignment.add_partition_offset(&kafka.topic, *partition, Offset::Offset(offset))?;
            next.insert(*partition, offset);
        }
        consumer
            .assign(&assignment)
            .context("assigning the topic's partitions")?;
        let ends: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let total = ends
            .iter()
            .map(|(partition, end)| (end - next[partition]).max(0))
            .sum();
        Ok(Self {
            consumer,
            metadata,
            topic: kafka.topic.clone(),
            ends,
            next,
            total,
        })
    }

    /// The end of each partition at the last look.
    pub fn ends(&self) -> &BTreeMap<i32, i64> {
        &self.ends
    }

    /// How many records lay between the starts and the ends at the first
    /// look (for progress).
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Records between where the reader is and the ends of the last look.
    pub fn remaining(&self) -> u64 {
        self.ends
            .iter()
            .map(|(partition, end)| (end - self.next.get(partition).copied().unwrap_or(0)).max(0))
            .sum::<i64>()
            .unsigned_abs()
    }

    /// Partitions not yet read to their end.
    pub fn unfinished(&self) -> BTreeSet<i32> {
        self.ends
            .iter()
            .filter(|(partition, end)| self.next.get(partition).copied().unwrap_or(0) < **end)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Whether every partition has been read to its end.
    pub fn is_done(&self) -> bool {
        self.unfinished().is_empty()
    }

    /// Looks at the log's end again: what has been appended since becomes
    /// part of what this reader reads. Returns the new ends.
    ///
    /// # Errors
    ///
    /// When the broker does not answer.
    pub async fn look_at_the_end(&mut self) -> anyhow::Result<&BTreeMap<i32, i64>> {
        self.ends = watermarks(&self.metadata)
            .await?
            .into_iter()
            .map(|(partition, (_, high))| (partition, high))
            .collect();
        Ok(&self.ends)
    }

    /// The next records, as [`read_batch`] collects them (nothing when the
    /// log has nothing more).
    ///
    /// # Errors
    ///
    /// The consumer's error, when it reports one before any record.
    pub async fn next_batch(
        &mut self,
        max: usize,
        first_wait: Duration,
        fill_wait: Duration,
    ) -> Result<Vec<LogRecord>, KafkaError> {
        let records = read_batch(&self.consumer, max, first_wait, fill_wait).await?;
        for record in &records {
            let next = self.next.entry(record.partition).or_default();
            *next = (*next).max(record.offset + 1);
        }
        Ok(records)
    }

    /// The next records on the way to the ends of the last look, for a
    /// read that must neither stall nor outlive `stop`: `None` once every
    /// partition is read to its end.
    ///
    /// # Errors
    ///
    /// `stopped` when `stop` fires first; a stall when the broker sends
    /// nothing for `wait` although records are known to be there; the
    /// consumer's error.
    pub async fn next_to_the_end(
        &mut self,
        max: usize,
        wait: Duration,
        stop: &CancellationToken,
        stopped: &str,
    ) -> anyhow::Result<Option<Vec<LogRecord>>> {
        if self.is_done() {
            return Ok(None);
        }
        let records = tokio::select! {
            () = stop.cancelled() => anyhow::bail!("{stopped}"),
            read = self.next_batch(max, wait, Duration::ZERO) => read.context("reading the log")?,
        };
        if records.is_empty() {
            anyhow::bail!(
                "the broker sent nothing for {wait:?} while the log was being read \
                 (partitions {:?} unfinished)",
                self.unfinished()
            );
        }
        Ok(Some(records))
    }

    /// Reads to the ends of the last look as [`Self::next_to_the_end`]
    /// does, handing each batch to `each`, with a progress bar on a
    /// terminal labelled `message`.
    ///
    /// # Errors
    ///
    /// As [`Self::next_to_the_end`].
    pub async fn read_to_the_end(
        &mut self,
        max: usize,
        wait: Duration,
        stop: &CancellationToken,
        stopped: &str,
        message: &str,
        mut each: impl FnMut(&[LogRecord]),
    ) -> anyhow::Result<()> {
        let progress = crate::progress::bar(self.remaining(), message, "records");
        while let Some(records) = self.next_to_the_end(max, wait, stop, stopped).await? {
            progress.inc(records.len() as u64);
            each(&records);
        }
        progress.finish_and_clear();
        Ok(())
    }

    /// Reads `partition` again from `offset`.
    ///
    /// # Errors
    ///
    /// When librdkafka does not accept the seek.
    pub fn seek(&mut self, partition: i32, offset: i64) -> anyhow::Result<()> {
        self.consumer
            .seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                METADATA_TIMEOUT,
            )
            .with_context(|| format!("seeking partition {partition} to offset {offset}"))?;
        self.next.insert(partition, offset);
        Ok(())
    }
}

/// What the log holds at given offsets: the log's `(low, high)` watermarks,
/// and for each asked partition the record at its offset, or `None` when
/// the log does not hold one there (before its start, at or past its end,
/// or removed).
#[derive(Debug, Default)]
pub struct RecordsAt {
    pub watermarks: BTreeMap<i32, (i64, i64)>,
    pub records: BTreeMap<i32, Option<LogRecord>>,
}

/// Reads the record at `offsets[partition]` in each partition, outside any
/// group.
///
/// # Errors
///
/// When the broker does not answer, or does not deliver a record it holds
/// within [`METADATA_TIMEOUT`].
pub async fn records_at(
    kafka: &KafkaArgs,
    offsets: &BTreeMap<i32, i64>,
) -> anyhow::Result<RecordsAt> {
    let marks = watermarks(&Arc::new(LogMetadata::new(kafka)?)).await?;
    let mut found = RecordsAt {
        watermarks: marks.clone(),
        records: BTreeMap::new(),
    };
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in offsets {
        match marks.get(partition) {
            Some((low, high)) if (*low..*high).contains(offset) => {
                assignment.add_partition_offset(
                    &kafka.topic,
                    *partition,
                    Offset::Offset(*offset),
                )?;
            }
            _ => {
                found.records.insert(*partition, None);
            }
        }
    }
    if assignment.count() == 0 {
        return Ok(found);
    }
    let group = format!("scores-check-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = score_shared::kafka::consumer_config(kafka, &group)
        .create()
        .context("creating a Kafka consumer to read the log")?;
    consumer
        .assign(&assignment)
        .context("assigning the partitions to read")?;
    let deadline = Instant::now() + METADATA_TIMEOUT;
    while found.records.len() < offsets.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .context("the broker did not deliver the records asked for in time")?
            .context("reading the log")?;
        let record = LogRecord::detach(&message);
        let Some(wanted) = offsets.get(&record.partition) else {
            continue;
        };
        if found.records.contains_key(&record.partition) || record.offset < *wanted {
            continue;
        }
        // Past the offset asked for: the record there is gone (compacted).
        let partition = record.partition;
        let at = (record.offset == *wanted).then_some(record);
        found.records.insert(partition, at);
    }
    Ok(found)
}

/// Every partition's low and high watermark, read off the async runtime.
async fn watermarks(metadata: &Arc<LogMetadata>) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let metadata = Arc::clone(metadata);
    tokio::task::spawn_blocking(move || metadata.watermarks(METADATA_TIMEOUT))
        .await
        .context("the watermark task")?
        .context("reading the topic's watermarks")
}
