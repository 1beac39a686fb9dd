//! What the ingest API writes to the log, read back raw from the real
//! broker with a plain consumer (not the projector's reader): sealed
//! version 3 events keyed by the account's reference, with no phone number
//! or comment in clear anywhere in them, each openable with a data key the
//! API wrote to the compacted key topic before it (from its pool of keys
//! written ahead), and no unused key left behind once the API stops.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pipeline_tests::http_client;
use pipeline_tests::{
    RunningApi, TEST_ACCOUNT_PEPPER, TestTopic, api_config, keys_topic_of, legacy_form_body,
};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use score_shared::event::{self, Event};
use score_shared::personal::{KeyRecord, MAX_BLOCK_KEYS, PersonalDataArgs};
use score_shared::{AccountRef, Channel, DataKey, Pepper, SealedScore};
use serde_json::{Value, json};

/// One record as the broker holds it.
#[derive(Clone, Debug)]
struct Record {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    /// The producer's timestamp (CreateTime), in milliseconds.
    timestamp: i64,
}

fn pepper() -> Pepper {
    TEST_ACCOUNT_PEPPER.parse().expect("the test pepper")
}

/// Every record `topic` holds now, from the beginning of each partition to
/// its high watermark, read with a consumer of its own.
async fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set(
                "group.id",
                format!("sealed-events-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("a consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("the topic's metadata");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|partition| partition.id())
            .collect();
        assert!(!partitions.is_empty(), "{topic} has partitions");
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert(partition, high);
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("a partition");
        }
        consumer.assign(&assignment).expect("the assignment");
        let expected: i64 = ends.values().sum();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (records.len() as i64) < expected {
            assert!(
                Instant::now() < deadline,
                "read {} of {expected} records of {topic} in 30 s",
                records.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("a record");
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
                timestamp: message.timestamp().to_millis().expect("a timestamp"),
            });
        }
        records
    })
    .await
    .expect("the reading task")
}

/// The data keys in the key topic's records (blocks of keys), each with
/// its block's record (the topic must hold no tombstone).
fn data_keys(records: &[Record]) -> Vec<(DataKey, Record)> {
    records
        .iter()
        .flat_map(|record| {
            match KeyRecord::decode(&record.key, Some(&record.payload)).expect("a key record") {
                KeyRecord::Block(block) => block
                    .into_keys()
                    .into_iter()
                    .map(|key| (key, record.clone()))
                    .collect::<Vec<_>>(),
                KeyRecord::Forgotten { .. } => panic!("a tombstone in the key topic"),
            }
        })
        .collect()
}

/// The sealed event of a record of the event topic.
fn sealed(record: &Record) -> SealedScore {
    match event::decode(&record.payload).expect("an event") {
        Event::SealedScore(sealed) => sealed,
        other => panic!("not a sealed event: {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn post_v1(api: &RunningApi, body: &Value) -> Value {
    pipeline_tests::accepted_v1(api, body)
        .await
        .json()
        .await
        .expect("a JSON answer")
}

#[tokio::test]
async fn events_are_sealed_keyed_by_the_account_reference_and_open_with_a_key_written_before_them()
{
    let topic = TestTopic::create(3).await;
    let api = RunningApi::start(&topic.kafka).await;
    let keys_topic = keys_topic_of(topic.name());

    // The legacy door, as the mini-program sends it.
    let legacy_phone = "13800138001";
    let legacy_texts = ["服務很好，謝謝！", "", "下次還會再來 seal-me-legacy"];
    let legacy = http_client()
        .post(api.url("/score"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(legacy_form_body(
            legacy_phone,
            ["5", "\"4\"", "3"],
            legacy_texts,
        ))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(legacy.status(), 200);
    // The /v1 door.
    let v1_phone = "+8613900139002";
    let v1_texts = ["seal-me-v1 很快", "第二條", ""];
    let answer = post_v1(
        &api,
        &json!({"acc_nbr": v1_phone, "grade1": 2, "grade2": 3, "grade3": 4,
                "txt1": v1_texts[0], "txt2": v1_texts[1], "txt3": v1_texts[2],
                "scene": "checkout"}),
    )
    .await;

    let events = read_topic(&topic.kafka.kafka_brokers, topic.name()).await;
    let keys = data_keys(&read_topic(&topic.kafka.kafka_brokers, &keys_topic).await);
    assert_eq!(events.len(), 2, "one event per submission");
    let kids: BTreeSet<_> = events.iter().map(|record| sealed(record).kid).collect();
    assert_eq!(kids.len(), 2, "a data key per account");

    // Nothing personal in clear in the event topic: not in a record key,
    // not in a payload.
    for record in &events {
        for clear in [legacy_phone, v1_phone, "8613900139002"]
            .into_iter()
            .chain(legacy_texts.into_iter().filter(|text| !text.is_empty()))
            .chain(v1_texts.into_iter().filter(|text| !text.is_empty()))
        {
            assert!(
                !contains(&record.key, clear) && !contains(&record.payload, clear),
                "{clear:?} is in clear in the record at {}:{}",
                record.partition,
                record.offset
            );
        }
    }

    let cases = [
        (
            legacy_phone,
            Channel::LegacyForm,
            [5, 4, 3],
            legacy_texts,
            None,
        ),
        (
            v1_phone,
            Channel::ApiV1,
            [2, 3, 4],
            v1_texts,
            Some("checkout"),
        ),
    ];
    for (phone, channel, grades, texts, scene) in cases {
        let account_ref = AccountRef::of(&pepper(), phone);
        let record_key = account_ref.to_string();
        assert_eq!(record_key.len(), 64);
        let record = events
            .iter()
            .find(|record| record.key == record_key.as_bytes())
            .unwrap_or_else(|| panic!("no event keyed by the reference of {phone}"));
        let sealed = sealed(record);
        assert_eq!(sealed.account_ref, account_ref);
        let (key, key_record) = keys
            .iter()
            .find(|(key, _)| key.kid == sealed.kid)
            .unwrap_or_else(|| panic!("no data key {} in the key topic", sealed.kid));
        let KeyRecord::Block(block) =
            KeyRecord::decode(&key_record.key, Some(&key_record.payload)).expect("a key record")
        else {
            panic!("a block, not a tombstone")
        };
        assert_eq!(
            key_record.key,
            block.id().to_string().into_bytes(),
            "a key record is keyed by its block's id"
        );
        assert!(
            !contains(&key_record.key, &record_key) && !contains(&key_record.payload, &record_key),
            "a key record names no account"
        );
        assert!(
            key_record.timestamp <= record.timestamp,
            "the key ({} ms) was produced after the event ({} ms)",
            key_record.timestamp,
            record.timestamp
        );

        let opened = sealed.open(key).expect("the event opens under its key");
        assert_eq!(opened.acc_nbr, phone);
        assert_eq!(opened.channel, channel);
        assert_eq!([opened.grade1, opened.grade2, opened.grade3], grades);
        assert_eq!(
            [
                opened.txt1.as_str(),
                opened.txt2.as_str(),
                opened.txt3.as_str()
            ],
            texts
        );
        assert_eq!(opened.scene.as_deref(), scene);
        assert!(opened.request_id.is_some(), "the request id is kept");
        assert_eq!(
            opened.submission_digest,
            Some(opened.content_digest()),
            "the digest is sealed with the content it fingerprints"
        );
    }

    // The /v1 answer (and its consistency token) points at the event.
    let v1_record = events
        .iter()
        .find(|record| record.key == AccountRef::of(&pepper(), v1_phone).to_string().as_bytes())
        .expect("the /v1 event");
    assert_eq!(
        (answer["partition"].as_i64(), answer["offset"].as_i64()),
        (Some(i64::from(v1_record.partition)), Some(v1_record.offset)),
        "{answer}"
    );
    assert_eq!(
        answer["event_id"].as_str(),
        Some(sealed(v1_record).event_id.to_string().as_str())
    );

    // The key topic was created compacted.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &topic.kafka.kafka_brokers)
        .create()
        .expect("an admin client");
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&keys_topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("the key topic's configuration");
    let config = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the key topic is described");
    assert_eq!(
        config
            .get("cleanup.policy")
            .and_then(|entry| entry.value.as_deref()),
        Some("compact")
    );

    api.stop().await;
}

#[tokio::test]
async fn a_second_submission_within_the_time_to_live_reuses_the_accounts_key() {
    let topic = TestTopic::create(3).await;
    let api = RunningApi::start(&topic.kafka).await;
    let submission = |phone: &str, grade: i32| json!({"acc_nbr": phone, "grade1": grade, "grade2": 4, "grade3": 3, "txt1": "again"});

    post_v1(&api, &submission("13800138010", 5)).await;
    post_v1(&api, &submission("13800138010", 1)).await;
    post_v1(&api, &submission("13800138011", 3)).await;

    let events = read_topic(&topic.kafka.kafka_brokers, topic.name()).await;
    let keys =
        data_keys(&read_topic(&topic.kafka.kafka_brokers, &keys_topic_of(topic.name())).await);
    assert_eq!(events.len(), 3);
    let reused_ref = AccountRef::of(&pepper(), "13800138010");
    let kids: Vec<_> = events
        .iter()
        .map(sealed)
        .filter(|sealed| sealed.account_ref == reused_ref)
        .map(|sealed| sealed.kid)
        .collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[0], kids[1], "both events sealed under the one key");
    let other = events
        .iter()
        .map(sealed)
        .find(|sealed| sealed.account_ref != reused_ref)
        .expect("the other account's event");
    assert_ne!(other.kid, kids[0], "another account, another key");
    let (key, _) = keys
        .iter()
        .find(|(key, _)| key.kid == kids[0])
        .expect("the key is in the key topic");
    for sealed in events
        .iter()
        .map(sealed)
        .filter(|sealed| sealed.kid == key.kid)
    {
        assert_eq!(sealed.open(key).expect("opens").acc_nbr, "13800138010");
    }

    api.stop().await;
}

#[tokio::test]
async fn new_accounts_get_keys_written_ahead_in_blocks_and_unused_blocks_are_tombstoned_at_stop() {
    // Two blocks of the most keys a block holds.
    const POOL: usize = 2 * MAX_BLOCK_KEYS;
    let topic = TestTopic::create(3).await;
    let keys_topic = keys_topic_of(topic.name());
    let api = RunningApi::start_with(ingest_api::Config {
        data_key_pool_size: POOL as u64,
        ..api_config(&topic.kafka)
    })
    .await;
    // The pool fills in the background once the API runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (written_ahead, block_records) = loop {
        let records = read_topic(&topic.kafka.kafka_brokers, &keys_topic).await;
        let keys = data_keys(&records);
        if keys.len() >= POOL {
            break (keys, records.len());
        }
        assert!(
            Instant::now() < deadline,
            "the pool holds {} of {POOL} keys after 30 s",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(block_records, 2, "{POOL} keys written as two records");
    let ahead: BTreeSet<_> = written_ahead.iter().map(|(key, _)| key.kid).collect();

    for phone in ["13800138020", "13800138021", "13800138022"] {
        post_v1(
            &api,
            &json!({"acc_nbr": phone, "grade1": 5, "grade2": 4, "grade3": 3, "txt1": "pooled"}),
        )
        .await;
    }
    let events = read_topic(&topic.kafka.kafka_brokers, topic.name()).await;
    let used: BTreeSet<_> = events.iter().map(|record| sealed(record).kid).collect();
    assert_eq!(used.len(), 3, "a key per account");
    assert!(
        used.is_subset(&ahead),
        "every new account was handed a key written before its submission"
    );
    let used_blocks: BTreeSet<Vec<u8>> = written_ahead
        .iter()
        .filter(|(key, _)| used.contains(&key.kid))
        .map(|(_, record)| record.key.clone())
        .collect();
    assert_eq!(
        used_blocks.len(),
        1,
        "keys are handed out oldest first, from one block"
    );

    api.stop().await;

    // Folded as compaction folds it: the last record of each block.
    let mut last = HashMap::new();
    for record in read_topic(&topic.kafka.kafka_brokers, &keys_topic).await {
        KeyRecord::decode(
            &record.key,
            Some(record.payload.as_slice()).filter(|payload| !payload.is_empty()),
        )
        .expect("a key record");
        last.insert(record.key.clone(), !record.payload.is_empty());
    }
    let live: BTreeSet<Vec<u8>> = last
        .iter()
        .filter(|(_, is_block)| **is_block)
        .map(|(block, _)| block.clone())
        .collect();
    assert_eq!(last.len(), 2, "no block written but the pool's first two");
    assert_eq!(
        live, used_blocks,
        "once the API has stopped, the only blocks left are the one keys were handed out from"
    );
}

#[tokio::test]
async fn the_api_refuses_to_start_without_an_account_pepper() {
    let kafka = pipeline_tests::kafka_args("never-created", 1);
    let config = ingest_api::Config {
        personal: PersonalDataArgs::default(),
        ..api_config(&kafka)
    };

    let Err(error) = ingest_api::Application::build(config).await else {
        panic!("the API started without a pepper");
    };

    let message = format!("{error:#}");
    assert!(message.contains("SCORES_ACCOUNT_PEPPER"), "{message}");
    assert!(message.contains("head -c 32 /dev/urandom"), "{message}");
}
