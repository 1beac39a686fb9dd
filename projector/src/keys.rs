//! The data keys the projector opens sealed events with, read from the
//! compacted key topic (see `score_shared::personal`).
//!
//! A [`KeyRing`] reads the key topic from its beginning and keeps every key
//! its block still holds: keys are written in blocks, a newer record of a
//! block replaces it (a key it no longer holds was forgotten), and a
//! block's tombstone forgets all of its keys. Before a batch is decoded,
//! [`KeyRing::ready_for`] makes sure the ring has read the key topic to the
//! end it has *now* whenever the batch holds a sealed event whose key it
//! does not have: the ingest API writes a key, and waits for its
//! acknowledgment, before any event sealed under it, so a key missing after
//! that read was forgotten (a newer version of its block without it, or the
//! block's tombstone, was read, or compaction has removed the older
//! versions). The decoder then projects the event as forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use score_shared::config::KafkaArgs;
use score_shared::event::{ACCOUNT_FORGOTTEN, SEALED_SCORE_VERSION};
use score_shared::personal::{KeyRecord, PersonalDataArgs};
use score_shared::{DataKey, Pepper};
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::batch::LogRecord;
use crate::log_reader::{LogReader, Start};

/// Records taken at a time while reading the key topic.
const READ_BATCH: usize = 5000;
/// How long a read of the key topic waits for records it knows are there.
const READ_WAIT: Duration = Duration::from_secs(1);
/// The key topic's consumer asks the broker for at least this much per
/// fetch, or what it has after [`KEY_FETCH_WAIT_MS`].
const KEY_FETCH_MIN_BYTES: &str = "65536";
const KEY_FETCH_WAIT_MS: &str = "100";
/// How long reading the key topic to its end may take before the batch is
/// held back and the read tried again.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the decoder needs to read sealed events: the pepper, and the keys
/// read so far. Shared between the [`KeyRing`] that fills it and every
/// decoder.
#[derive(Debug)]
pub struct Keys {
    pepper: Pepper,
    known: RwLock<KeySet>,
}

/// The keys held, and which block holds which.
#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<Uuid, DataKey>,
    blocks: HashMap<Uuid, Vec<Uuid>>,
}

impl KeySet {
    /// Forgets block `id`'s keys, except those `kept` holds.
    fn forget_block(&mut self, id: Uuid, kept: &[Uuid], forgotten: &mut HashSet<Uuid>) {
        for kid in self.blocks.remove(&id).unwrap_or_default() {
            if !kept.contains(&kid) {
                self.keys.remove(&kid);
                forgotten.insert(kid);
            }
        }
    }
}

impl Keys {
    /// No keys yet.
    pub fn new(pepper: Pepper) -> Arc<Self> {
        Arc::new(Self {
            pepper,
            known: RwLock::default(),
        })
    }

    /// The pepper account references are computed under.
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// The key `kid`, if read and not forgotten.
    pub fn get(&self, kid: Uuid) -> Option<DataKey> {
        self.known
            .read()
            .expect("the key map is never poisoned")
            .keys
            .get(&kid)
            .cloned()
    }

    /// Holds `key` as if read from the key topic (for benchmarks and
    /// tests that decode without a broker).
    pub fn insert(&self, key: DataKey) {
        self.known
            .write()
            .expect("the key map is never poisoned")
            .keys
            .insert(key.kid, key);
    }

    fn knows(&self, kid: Uuid) -> bool {
        self.known
            .read()
            .expect("the key map is never poisoned")
            .keys
            .contains_key(&kid)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.known
            .read()
            .expect("the key map is never poisoned")
            .keys
            .len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn absorb(&self, records: &[LogRecord]) -> Absorbed {
        let mut absorbed = Absorbed::default();
        let mut known = self.known.write().expect("the key map is never poisoned");
        for record in records {
            let Some(key) = record.key.as_deref() else {
                absorbed.unreadable += 1;
                continue;
            };
            match KeyRecord::decode(key, record.payload.as_deref()) {
                Ok(KeyRecord::Block(block)) => {
                    let kids: Vec<Uuid> = block.keys().iter().map(|key| key.kid).collect();
                    known.forget_block(block.id(), &kids, &mut absorbed.forgotten);
                    known.blocks.insert(block.id(), kids);
                    absorbed.keys += block.keys().len();
                    known
                        .keys
                        .extend(block.into_keys().into_iter().map(|key| (key.kid, key)));
                }
                Ok(KeyRecord::Forgotten { block }) => {
                    known.forget_block(block, &[], &mut absorbed.forgotten);
                }
                Err(error) => {
                    tracing::warn!(
                        partition = record.partition,
                        offset = record.offset,
                        %error,
                        "key record skipped"
                    );
                    absorbed.unreadable += 1;
                }
            }
        }
        absorbed
    }
}

#[derive(Debug, Default)]
struct Absorbed {
    keys: usize,
    forgotten: HashSet<Uuid>,
    unreadable: usize,
}

/// Reads the key topic into [`Keys`].
pub struct KeyRing {
    keys: Arc<Keys>,
    kafka: KafkaArgs,
    reader: Mutex<Option<LogReader>>,
}

impl KeyRing {
    /// A ring for the key topic `personal` names, next to the event log
    /// `kafka` names. Nothing is read until [`Self::catch_up`] or
    /// [`Self::ready_for`].
    ///
    /// # Errors
    ///
    /// No pepper configured.
    pub fn new(kafka: &KafkaArgs, personal: &PersonalDataArgs) -> anyhow::Result<Self> {
        let pepper = personal.pepper()?;
        let mut kafka = kafka.clone();
        kafka.topic = personal.keys_topic.clone();
        // Fewer, fuller fetches (the operator's options still win): keys
        // are written ahead of need, so what the consumer has fetched
        // usually holds them, and one fetch per 64 KiB or 100 ms rather
        // than one per handful of keys spares the broker.
        kafka.kafka_options.splice(
            0..0,
            [
                ("fetch.min.bytes", KEY_FETCH_MIN_BYTES),
                ("fetch.wait.max.ms", KEY_FETCH_WAIT_MS),
            ]
            .map(|(key, value)| score_shared::config::KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
        );
        Ok(Self {
            keys: Keys::new(pepper),
            kafka,
            reader: Mutex::new(None),
        })
    }

    /// The keys, for decoders.
    pub fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys)
    }

    /// Reads the key topic to the end it has now (creating the topic if it
    /// does not exist yet).
    ///
    /// # Errors
    ///
    /// When the broker does not answer, or the read takes longer than a
    /// minute.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        tokio::time::timeout(CATCH_UP_TIMEOUT, self.read_to_the_end())
            .await
            .with_context(|| {
                format!(
                    "reading the key topic {} to its end took longer than {CATCH_UP_TIMEOUT:?}",
                    self.kafka.topic
                )
            })?
    }

    async fn read_to_the_end(&self) -> anyhow::Result<()> {
        let mut reader = self.reader.lock().await;
        if reader.is_none() {
            score_shared::kafka::ensure_keys_topic(&self.kafka, &self.kafka.topic).await?;
            *reader = Some(LogReader::open(&self.kafka, "keys", Start::Beginning).await?);
        }
        let reader = reader.as_mut().expect("opened above");
        reader.look_at_the_end().await?;
        let mut absorbed = Absorbed::default();
        while !reader.is_done() {
            let records = reader
                .next_batch(READ_BATCH, READ_WAIT, Duration::from_millis(10))
                .await
                .context("reading the key topic")?;
            let batch = self.keys.absorb(&records);
            absorbed.keys += batch.keys;
            absorbed.forgotten.extend(batch.forgotten);
            absorbed.unreadable += batch.unreadable;
        }
        if absorbed.keys + absorbed.forgotten.len() + absorbed.unreadable > 0 {
            tracing::debug!(
                keys = absorbed.keys,
                forgotten = absorbed.forgotten.len(),
                unreadable = absorbed.unreadable,
                held = self.keys.len(),
                "read the key topic"
            );
        }
        Ok(())
    }

    /// Makes the ring ready to decode `records`: when one of them is a
    /// sealed event under a key not held, or an erasure (whose key block
    /// rewrites were written before it, and must be read before anything
    /// after it is opened with a key it forgot), reads the key topic to its
    /// end.
    ///
    /// # Errors
    ///
    /// As [`Self::catch_up`]; the batch must not be decoded then.
    ///
    /// Keys are usually written well before their first event (writers keep
    /// keys ready ahead of need), so a key not held is first looked for in
    /// what the key topic's consumer has already fetched; only if it is
    /// still missing does the ring look at the topic's end and read to it.
    pub async fn ready_for(&self, records: &[LogRecord]) -> anyhow::Result<()> {
        let needs: Vec<KeyNeed> = records
            .iter()
            .filter_map(|record| key_need(record.payload.as_deref()?))
            .collect();
        let missing = |keys: &Keys| {
            needs.iter().any(|need| match need {
                KeyNeed::Key(kid) => !keys.knows(*kid),
                KeyNeed::Rewrites => true,
            })
        };
        if !missing(&self.keys) {
            return Ok(());
        }
        if !needs.contains(&KeyNeed::Rewrites) {
            self.read_what_is_fetched().await?;
            if !missing(&self.keys) {
                return Ok(());
            }
        }
        self.catch_up().await
    }

    /// Absorbs the key records the consumer has already fetched, without
    /// waiting for more (nothing when the ring has not read the topic yet).
    async fn read_what_is_fetched(&self) -> anyhow::Result<()> {
        let mut reader = self.reader.lock().await;
        let Some(reader) = reader.as_mut() else {
            return Ok(());
        };
        loop {
            let records = reader
                .next_batch(READ_BATCH, Duration::ZERO, Duration::ZERO)
                .await
                .context("reading the key topic")?;
            if records.is_empty() {
                return Ok(());
            }
            self.keys.absorb(&records);
        }
    }
}

/// What decoding a payload needs of the key topic.
#[derive(Debug, PartialEq, Eq)]
enum KeyNeed {
    /// A sealed event: its key.
    Key(Uuid),
    /// An erasure: the key block rewrites written before it.
    Rewrites,
}

fn key_need(payload: &[u8]) -> Option<KeyNeed> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        event_type: Option<String>,
        version: Option<u64>,
        kid: Option<Uuid>,
    }
    let envelope: Envelope = serde_json::from_slice(payload).ok()?;
    if envelope.event_type.as_deref() == Some(ACCOUNT_FORGOTTEN) {
        return Some(KeyNeed::Rewrites);
    }
    (envelope.version == Some(u64::from(SEALED_SCORE_VERSION)))
        .then_some(envelope.kid)
        .flatten()
        .map(KeyNeed::Key)
}

#[cfg(test)]
mod tests {
    use score_shared::KeyBlock;

    use super::*;

    fn pepper() -> Pepper {
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap()
    }

    fn block_record(offset: i64, block: &KeyBlock) -> LogRecord {
        LogRecord {
            partition: 0,
            offset,
            key: Some(block.record_key().into_bytes()),
            payload: Some(block.encode()),
        }
    }

    fn tombstone(offset: i64, block: &KeyBlock) -> LogRecord {
        LogRecord {
            payload: None,
            ..block_record(offset, block)
        }
    }

    #[test]
    fn a_rewritten_block_forgets_the_keys_it_no_longer_holds_and_only_those() {
        let keys = Keys::new(pepper());
        let block = KeyBlock::generate(3);
        let other = KeyBlock::generate(1);
        keys.absorb(&[block_record(0, &block), block_record(1, &other)]);
        assert_eq!(keys.len(), 4);
        let [one, two, three] = block.keys() else {
            unreachable!()
        };
        assert_eq!(keys.get(two.kid), Some(two.clone()));
        let rewritten = block.without(|kid| kid == two.kid).unwrap();
        let absorbed = keys.absorb(&[block_record(2, &rewritten)]);
        assert_eq!(absorbed.forgotten, HashSet::from([two.kid]));
        assert_eq!(keys.get(two.kid), None);
        assert_eq!(keys.get(one.kid), Some(one.clone()));
        assert_eq!(keys.get(three.kid), Some(three.clone()));
        assert_eq!(keys.get(other.keys()[0].kid), Some(other.keys()[0].clone()));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn a_tombstone_forgets_every_key_of_its_block_and_only_those() {
        let keys = Keys::new(pepper());
        let block = KeyBlock::generate(2);
        let other = KeyBlock::generate(2);
        keys.absorb(&[block_record(0, &block), block_record(1, &other)]);
        let absorbed = keys.absorb(&[tombstone(2, &block)]);
        assert_eq!(absorbed.forgotten.len(), 2);
        for key in block.keys() {
            assert_eq!(keys.get(key.kid), None);
        }
        for key in other.keys() {
            assert_eq!(keys.get(key.kid), Some(key.clone()));
        }
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn an_unreadable_key_record_is_skipped_and_counted() {
        let keys = Keys::new(pepper());
        let record = LogRecord {
            partition: 0,
            offset: 0,
            key: Some(b"garbage".to_vec()),
            payload: Some(b"{}".to_vec()),
        };
        let absorbed = keys.absorb(&[record]);
        assert_eq!(absorbed.unreadable, 1);
        assert!(keys.is_empty());
    }

    #[test]
    fn sealed_events_need_their_key_and_erasures_the_block_rewrites() {
        let kid = Uuid::now_v7();
        let sealed = format!(r#"{{"type":"ScoreSubmitted","version":3,"kid":"{kid}"}}"#);
        assert_eq!(key_need(sealed.as_bytes()), Some(KeyNeed::Key(kid)));
        let plain = format!(r#"{{"type":"ScoreSubmitted","version":2,"kid":"{kid}"}}"#);
        assert_eq!(key_need(plain.as_bytes()), None);
        let erasure = r#"{"type":"AccountForgotten","version":1}"#;
        assert_eq!(key_need(erasure.as_bytes()), Some(KeyNeed::Rewrites));
        assert_eq!(key_need(b"not json"), None);
    }
}
