//! Pure logic of one batch: which records to apply given the stored
//! positions, and what each record becomes (a row or a dead letter).
//! Nothing here touches MySQL or Kafka, so it is unit tested directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use score_shared::event::{self, DecodeError, Event};
use score_shared::{AccountForgotten, AccountRef, ScoreSubmitted, SealedScore, ValidationRules};

use crate::keys::Keys;

use crate::identity::{Found, Predecessors, RecordDigest, StoredPosition};

/// One record read from the log, detached from the consumer.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl LogRecord {
    /// Copies what the projector needs out of a consumed message.
    pub fn detach(message: &impl rdkafka::Message) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// What the batch does in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan<'a> {
    pub partition: i32,
    /// The records to apply, consecutive from the stored position.
    pub records: Vec<&'a LogRecord>,
    /// Records at offsets already applied (a redelivery), left alone.
    pub already_applied: usize,
    /// The position to store once `records` are applied.
    pub next_offset: i64,
    /// Set when the run of offsets stops at a hole not yet confirmed (at
    /// the stored position, or inside the batch after the records applied):
    /// the consumer must seek back to read past it again.
    pub gap: Option<Gap>,
    /// Whether the stored position stands on this log. Nothing is applied
    /// unless it is [`Standing::Checked`].
    pub standing: Standing,
}

/// What the batch showed of the record a stored position stands on (see
/// [`crate::identity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The record is the one the position was stored on, or there is
    /// nothing to check (offset 0, a position stored before the check, or
    /// nothing in the batch to apply).
    Checked,
    /// The batch has records to apply but neither it nor the reader's
    /// memory holds the record at `offset`: the reader must seek there.
    Unseen { offset: i64 },
    /// The log holds a different record there.
    Mismatch(Found),
}

/// The batch skips over offsets that were never applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gap {
    pub partition: i32,
    /// The next offset to apply (the stored position, or the one after the
    /// records applied before the hole).
    pub stored: i64,
    /// The first offset the batch holds beyond it.
    pub first_seen: i64,
}

/// What the plan knows beside the batch and the stored positions.
#[derive(Clone, Copy, Debug)]
pub struct PlanContext<'a> {
    /// Gaps the log itself has (confirmed by the caller after seeking
    /// back): the run may start past the stored position there.
    pub accepted_gaps: &'a [Gap],
    /// The last record read before this batch in each partition.
    pub predecessors: &'a Predecessors,
}

/// Splits `records` by partition and, for each, keeps the run that starts
/// exactly at the stored position, once the record that position stands on
/// has been seen with the digest stored with it.
pub fn plan<'a>(
    records: &'a [LogRecord],
    stored: &HashMap<i32, StoredPosition>,
    context: PlanContext<'_>,
) -> Vec<PartitionPlan<'a>> {
    let mut by_partition: BTreeMap<i32, Vec<&LogRecord>> = BTreeMap::new();
    for record in records {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record);
    }
    let nothing_stored = StoredPosition::default();
    by_partition
        .into_iter()
        .map(|(partition, mut records)| {
            records.sort_by_key(|r| r.offset);
            records.dedup_by_key(|r| r.offset);
            let position = stored.get(&partition).unwrap_or(&nothing_stored);
            let stored = position.next_offset;
            let already_applied = records.iter().take_while(|r| r.offset < stored).count();
            let fresh = &records[already_applied..];
            let mut plan = PartitionPlan {
                partition,
                records: Vec::new(),
                already_applied,
                next_offset: stored,
                gap: None,
                standing: standing(position, partition, &records, context.predecessors),
            };
            if fresh.is_empty() {
                if matches!(plan.standing, Standing::Unseen { .. }) {
                    // Nothing to apply yet; the record comes before the
                    // first that needs it.
                    plan.standing = Standing::Checked;
                }
                return plan;
            }
            if plan.standing != Standing::Checked {
                return plan;
            }
            // A run of consecutive offsets from the stored position. A hole
            // (before the first record or inside the batch) ends it unless
            // the caller has confirmed it is in the log itself; the consumer
            // then seeks back to read past the run again.
            let mut expected = stored;
            for record in fresh {
                if record.offset != expected {
                    let gap = Gap {
                        partition,
                        stored: expected,
                        first_seen: record.offset,
                    };
                    if !context.accepted_gaps.contains(&gap) {
                        plan.gap = Some(gap);
                        break;
                    }
                }
                plan.records.push(record);
                expected = record.offset + 1;
            }
            plan.next_offset = expected;
            plan
        })
        .collect()
}

/// Checks the record `position` stands on against what the batch (sorted
/// by offset) or the reader's memory holds at that offset.
fn standing(
    position: &StoredPosition,
    partition: i32,
    records: &[&LogRecord],
    predecessors: &Predecessors,
) -> Standing {
    let (Some(offset), Some(stored)) = (position.stands_on(), position.last_record.as_ref()) else {
        return Standing::Checked;
    };
    let read = records
        .iter()
        .find(|r| r.offset == offset)
        .map(|r| RecordDigest::of(r))
        .or_else(|| predecessors.at(partition, offset).cloned());
    match read {
        Some(read) if &read == stored => Standing::Checked,
        Some(read) => Standing::Mismatch(Found::Different {
            stored: stored.clone(),
            read,
        }),
        None => Standing::Unseen { offset },
    }
}

/// What one record becomes in the projection.
#[derive(Clone, Debug)]
pub enum Decoded {
    Row(Rating),
    /// An account to remove from the projection's tables.
    Forget(AccountForgotten),
    DeadLetter(DeadLetterReason),
}

/// A rating as the projections write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rating {
    /// The event in clear; for a forgotten one, what
    /// [`SealedScore::forgotten`] leaves of it.
    pub event: ScoreSubmitted,
    /// The account's reference (carried by a sealed event, computed for one
    /// in clear), by which an erasure finds its rows.
    pub account_ref: AccountRef,
    /// Whether the event's key was forgotten.
    pub forgotten: bool,
}

/// Why a record goes to `dead_letter`. `kind` is safe to log; `detail` may
/// quote the payload (a phone number), so it is stored, never logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterReason {
    pub kind: &'static str,
    pub detail: String,
}

impl DeadLetterReason {
    /// A reason of `kind` with a detail.
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The text stored in `dead_letter.error`.
    pub fn to_column(&self) -> String {
        format!("{}: {}", self.kind, self.detail)
    }
}

/// A batch's records decoded once, for every projection the batch is
/// applied to: opening a sealed event (AES-GCM, an HMAC, validation) is
/// the projector's main work per record. Valid while the keys do not
/// change, that is, for one batch after [`crate::keys::KeyRing::ready_for`].
#[derive(Debug, Default)]
pub struct DecodedBatch(HashMap<(i32, i64), Decoded>);

impl DecodedBatch {
    /// What `record` decoded to, if it is one of the batch's.
    pub fn get(&self, record: &LogRecord) -> Option<Decoded> {
        self.0.get(&(record.partition, record.offset)).cloned()
    }
}

/// Decodes and validates records with the same rules the ingest API uses,
/// accepting the configured event versions, opening sealed events with the
/// keys read so far (the caller makes the [`crate::keys::KeyRing`] ready
/// for the records first).
#[derive(Clone, Debug)]
pub struct Decoder {
    pub rules: ValidationRules,
    pub accepted_versions: Vec<u32>,
    pub keys: Arc<Keys>,
}

impl Decoder {
    /// A decoder of every version with the default rules.
    pub fn new(keys: Arc<Keys>) -> Self {
        Self {
            rules: ValidationRules::default(),
            accepted_versions: event::SCORE_SUBMITTED_VERSIONS.to_vec(),
            keys,
        }
    }

    /// What each of `records` becomes.
    pub fn decode_all(&self, records: &[LogRecord]) -> DecodedBatch {
        DecodedBatch(
            records
                .iter()
                .map(|record| ((record.partition, record.offset), self.decode(record)))
                .collect(),
        )
    }

    /// What `record` becomes.
    pub fn decode(&self, record: &LogRecord) -> Decoded {
        let Some(payload) = record.payload.as_deref() else {
            return Decoded::DeadLetter(DeadLetterReason::new(
                "no_payload",
                "record has no payload",
            ));
        };
        match event::decode_accepting(payload, &self.accepted_versions) {
            Ok(Event::ScoreSubmitted(event)) => {
                let account_ref = AccountRef::of(self.keys.pepper(), &event.acc_nbr);
                self.validated(event, account_ref)
            }
            Ok(Event::SealedScore(sealed)) => self.open(&sealed),
            Ok(Event::AccountForgotten(erasure)) => Decoded::Forget(erasure),
            Err(error @ (DecodeError::Unknown { .. } | DecodeError::NotEnabled { .. })) => {
                Decoded::DeadLetter(DeadLetterReason::new("unknown_event", error.to_string()))
            }
            Err(error) => {
                Decoded::DeadLetter(DeadLetterReason::new("undecodable", error.to_string()))
            }
        }
    }

    /// A sealed event opened with its key, or, with its key forgotten, what
    /// is left of it.
    fn open(&self, sealed: &SealedScore) -> Decoded {
        let Some(key) = self.keys.get(sealed.kid) else {
            return Decoded::Row(Rating {
                event: sealed.forgotten(),
                account_ref: sealed.account_ref,
                forgotten: true,
            });
        };
        let event = match sealed.open(&key) {
            Ok(event) => event,
            Err(error) => {
                return Decoded::DeadLetter(DeadLetterReason::new("unopenable", error.to_string()));
            }
        };
        if AccountRef::of(self.keys.pepper(), &event.acc_nbr) != sealed.account_ref {
            return Decoded::DeadLetter(DeadLetterReason::new(
                "account_ref_mismatch",
                format!(
                    "the sealed account is not account {} under this projector's pepper \
                     (is SCORES_ACCOUNT_PEPPER the ingest API's?)",
                    sealed.account_ref
                ),
            ));
        }
        self.validated(event, sealed.account_ref)
    }

    fn validated(&self, event: ScoreSubmitted, account_ref: AccountRef) -> Decoded {
        match event.validate(&self.rules) {
            Ok(_) => Decoded::Row(Rating {
                event,
                account_ref,
                forgotten: false,
            }),
            Err(errors) => {
                Decoded::DeadLetter(DeadLetterReason::new("invalid", errors.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> score_shared::Pepper {
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap()
    }

    fn test_decoder() -> Decoder {
        Decoder::new(Keys::new(pepper()))
    }

    fn payload_record(payload: Vec<u8>) -> LogRecord {
        LogRecord {
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(payload),
        }
    }

    fn submitted(acc_nbr: &str) -> ScoreSubmitted {
        let raw = score_shared::RawSubmission {
            acc_nbr: Some(serde_json::json!(acc_nbr)),
            grades: [Some(5.into()), Some(4.into()), Some(3.into())],
            texts: [Some(serde_json::json!("很好")), None, None],
            scene: None,
        };
        let submission =
            score_shared::Submission::parse(&raw, &ValidationRules::default()).unwrap();
        ScoreSubmitted::new(
            event::new_event_id(),
            score_shared::Channel::ApiV1,
            &submission,
        )
    }

    #[test]
    fn a_sealed_event_opens_with_its_key_and_names_its_account() {
        let decoder = test_decoder();
        let original = submitted("13800138000");
        let account = AccountRef::of(&pepper(), "13800138000");
        let key = score_shared::DataKey::generate();
        decoder.keys.insert(key.clone());
        let Decoded::Row(rating) =
            decoder.decode(&payload_record(original.seal(account, &key).encode()))
        else {
            panic!("a sealed event with its key opens")
        };
        assert_eq!(rating.event, original);
        assert_eq!(rating.account_ref, account);
        assert!(!rating.forgotten);
    }

    #[test]
    fn a_batch_decoded_once_gives_each_record_what_decoding_it_gives() {
        let decoder = test_decoder();
        let account = AccountRef::of(&pepper(), "13800138000");
        let key = score_shared::DataKey::generate();
        decoder.keys.insert(key.clone());
        let mut records = vec![
            payload_record(submitted("13800138000").seal(account, &key).encode()),
            payload_record(b"not an event".to_vec()),
        ];
        records[1].offset = 1;

        let decoded = decoder.decode_all(&records);

        let Some(Decoded::Row(rating)) = decoded.get(&records[0]) else {
            panic!("the sealed rating is in the batch")
        };
        let Decoded::Row(again) = decoder.decode(&records[0]) else {
            panic!("it decodes")
        };
        assert_eq!(rating, again);
        assert!(matches!(
            decoded.get(&records[1]),
            Some(Decoded::DeadLetter(reason)) if reason.kind == "undecodable"
        ));
        let mut elsewhere = records[0].clone();
        elsewhere.offset = 7;
        assert!(decoded.get(&elsewhere).is_none(), "not one of the batch");
    }

    #[test]
    fn a_sealed_event_whose_key_is_gone_is_a_forgotten_rating() {
        let decoder = test_decoder();
        let original = submitted("13800138000");
        let account = AccountRef::of(&pepper(), "13800138000");
        let key = score_shared::DataKey::generate();
        let Decoded::Row(rating) =
            decoder.decode(&payload_record(original.seal(account, &key).encode()))
        else {
            panic!("a sealed event without its key is still a rating")
        };
        assert!(rating.forgotten);
        assert_eq!(rating.event.acc_nbr, account.placeholder());
        assert_eq!(rating.event.grade1, 5);
        assert!(rating.event.txt1.is_empty());
    }

    #[test]
    fn a_sealed_event_under_another_pepper_is_a_dead_letter_that_says_so() {
        let decoder = test_decoder();
        let other: score_shared::Pepper = "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBA="
            .parse()
            .unwrap();
        let key = score_shared::DataKey::generate();
        decoder.keys.insert(key.clone());
        let sealed = submitted("13800138000")
            .seal(AccountRef::of(&other, "13800138000"), &key)
            .encode();
        let Decoded::DeadLetter(reason) = decoder.decode(&payload_record(sealed)) else {
            panic!("a sealed account that is not its reference must not be projected")
        };
        assert_eq!(reason.kind, "account_ref_mismatch");
        assert!(reason.detail.contains("SCORES_ACCOUNT_PEPPER"));
    }

    #[test]
    fn a_plain_event_gets_its_accounts_reference_and_an_erasure_is_a_forget() {
        let decoder = test_decoder();
        let Decoded::Row(rating) =
            decoder.decode(&payload_record(submitted("13800138000").encode()))
        else {
            panic!("a plain event decodes")
        };
        assert_eq!(rating.account_ref, AccountRef::of(&pepper(), "13800138000"));
        let erasure = score_shared::AccountForgotten::new(rating.account_ref, "ticket 1");
        let Decoded::Forget(read) = decoder.decode(&payload_record(erasure.encode())) else {
            panic!("an erasure decodes")
        };
        assert_eq!(read, erasure);
    }

    fn record(partition: i32, offset: i64) -> LogRecord {
        LogRecord {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    /// Positions stored before the log check (no digest): trusted.
    fn positions(stored: &[(i32, i64)]) -> HashMap<i32, StoredPosition> {
        stored
            .iter()
            .map(|(partition, next_offset)| {
                let position = StoredPosition {
                    next_offset: *next_offset,
                    last_record: None,
                };
                (*partition, position)
            })
            .collect()
    }

    static NO_PREDECESSORS: std::sync::LazyLock<Predecessors> =
        std::sync::LazyLock::new(Predecessors::default);

    fn context(accepted_gaps: &[Gap]) -> PlanContext<'_> {
        PlanContext {
            accepted_gaps,
            predecessors: &NO_PREDECESSORS,
        }
    }

    fn offsets(plan: &PartitionPlan<'_>) -> Vec<i64> {
        plan.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_batch_starting_at_the_stored_position_is_applied_whole() {
        let records = [record(0, 5), record(0, 6), record(0, 7)];
        let plans = plan(&records, &positions(&[(0, 5)]), context(&[]));
        assert_eq!(offsets(&plans[0]), [5, 6, 7]);
        assert_eq!(plans[0].next_offset, 8);
        assert_eq!(plans[0].gap, None);
    }

    #[test]
    fn a_partition_never_seen_starts_at_offset_zero() {
        let records = [record(2, 0), record(2, 1)];
        let plans = plan(&records, &HashMap::new(), context(&[]));
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(plans[0].next_offset, 2);
    }

    #[test]
    fn records_already_applied_are_skipped() {
        let records = [record(0, 3), record(0, 4), record(0, 5)];
        let plans = plan(&records, &positions(&[(0, 5)]), context(&[]));
        assert_eq!(offsets(&plans[0]), [5]);
        assert_eq!(plans[0].already_applied, 2);
        assert_eq!(plans[0].next_offset, 6);
    }

    #[test]
    fn a_batch_fully_applied_before_changes_nothing() {
        let records = [record(0, 3), record(0, 4)];
        let plans = plan(&records, &positions(&[(0, 9)]), context(&[]));
        assert!(plans[0].records.is_empty());
        assert_eq!(plans[0].next_offset, 9);
        assert_eq!(plans[0].gap, None);
    }

    #[test]
    fn a_batch_past_the_stored_position_is_a_gap_and_applies_nothing() {
        let records = [record(1, 10), record(1, 11)];
        let plans = plan(&records, &positions(&[(1, 4)]), context(&[]));
        assert!(plans[0].records.is_empty());
        assert_eq!(
            plans[0].gap,
            Some(Gap {
                partition: 1,
                stored: 4,
                first_seen: 10
            })
        );
        assert_eq!(plans[0].next_offset, 4);
    }

    #[test]
    fn a_gap_the_log_really_has_is_crossed_once_accepted() {
        let records = [record(1, 10), record(1, 11)];
        let accepted = [Gap {
            partition: 1,
            stored: 4,
            first_seen: 10,
        }];
        let plans = plan(&records, &positions(&[(1, 4)]), context(&accepted));
        assert_eq!(offsets(&plans[0]), [10, 11]);
        assert_eq!(plans[0].next_offset, 12);
    }

    #[test]
    fn a_hole_inside_the_batch_stops_the_run_before_it_and_is_a_gap() {
        let records = [record(0, 0), record(0, 1), record(0, 3)];
        let plans = plan(&records, &HashMap::new(), context(&[]));
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(plans[0].next_offset, 2);
        let hole = Gap {
            partition: 0,
            stored: 2,
            first_seen: 3,
        };
        assert_eq!(
            plans[0].gap,
            Some(hole),
            "the consumer must read past it again"
        );
        let crossed = plan(&records, &HashMap::new(), context(&[hole]));
        assert_eq!(offsets(&crossed[0]), [0, 1, 3], "once confirmed");
        assert_eq!(crossed[0].next_offset, 4);
        assert_eq!(crossed[0].gap, None);
    }

    #[test]
    fn partitions_are_planned_independently() {
        let records = [record(0, 0), record(1, 7), record(0, 1), record(1, 8)];
        let plans = plan(&records, &positions(&[(1, 7)]), context(&[]));
        assert_eq!(plans.len(), 2);
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(offsets(&plans[1]), [7, 8]);
    }

    #[test]
    fn duplicated_deliveries_within_a_batch_count_once() {
        let records = [record(0, 0), record(0, 0), record(0, 1)];
        let plans = plan(&records, &HashMap::new(), context(&[]));
        assert_eq!(offsets(&plans[0]), [0, 1]);
    }

    fn with_payload(partition: i32, offset: i64, payload: &str) -> LogRecord {
        LogRecord {
            payload: Some(payload.as_bytes().to_vec()),
            ..record(partition, offset)
        }
    }

    /// A position at `next_offset` stored on `under` (the record before it).
    fn standing_on(under: &LogRecord) -> HashMap<i32, StoredPosition> {
        let position = StoredPosition {
            next_offset: under.offset + 1,
            last_record: Some(RecordDigest::of(under)),
        };
        HashMap::from([(under.partition, position)])
    }

    #[test]
    fn a_position_is_trusted_once_the_batch_shows_the_record_it_stands_on() {
        let log = [with_payload(0, 4, "a"), with_payload(0, 5, "b")];
        let plans = plan(&log, &standing_on(&log[0]), context(&[]));
        assert_eq!(plans[0].standing, Standing::Checked);
        assert_eq!(offsets(&plans[0]), [5]);
    }

    #[test]
    fn another_record_under_the_position_applies_nothing() {
        let ours = with_payload(0, 4, "a");
        let theirs = [with_payload(0, 4, "other"), with_payload(0, 5, "b")];
        let plans = plan(&theirs, &standing_on(&ours), context(&[]));
        assert!(plans[0].records.is_empty());
        assert_eq!(plans[0].next_offset, 5);
        assert_eq!(
            plans[0].standing,
            Standing::Mismatch(Found::Different {
                stored: RecordDigest::of(&ours),
                read: RecordDigest::of(&theirs[0]),
            })
        );
    }

    #[test]
    fn a_batch_starting_at_the_position_is_checked_against_the_last_record_read() {
        let under = with_payload(0, 4, "a");
        let next = [with_payload(0, 5, "b")];
        let unseen = plan(&next, &standing_on(&under), context(&[]));
        assert_eq!(unseen[0].standing, Standing::Unseen { offset: 4 });
        assert!(unseen[0].records.is_empty(), "not before it is seen");

        let mut read = Predecessors::default();
        read.remember(std::slice::from_ref(&under));
        let context = PlanContext {
            accepted_gaps: &[],
            predecessors: &read,
        };
        let plans = plan(&next, &standing_on(&under), context);
        assert_eq!(plans[0].standing, Standing::Checked);
        assert_eq!(offsets(&plans[0]), [5]);

        let mut other = Predecessors::default();
        other.remember(&[with_payload(0, 4, "other")]);
        let context = PlanContext {
            accepted_gaps: &[],
            predecessors: &other,
        };
        let plans = plan(&next, &standing_on(&under), context);
        assert!(matches!(plans[0].standing, Standing::Mismatch(_)));
        assert!(plans[0].records.is_empty());
    }

    #[test]
    fn records_below_the_position_need_no_check_yet() {
        let under = with_payload(0, 9, "a");
        let older = [with_payload(0, 2, "x"), with_payload(0, 3, "y")];
        let plans = plan(&older, &standing_on(&under), context(&[]));
        assert_eq!(plans[0].standing, Standing::Checked);
        assert_eq!(plans[0].already_applied, 2);
    }

    #[test]
    fn a_record_without_payload_becomes_a_dead_letter() {
        let decoded = test_decoder().decode(&record(0, 0));
        assert!(matches!(decoded, Decoded::DeadLetter(reason) if reason.kind == "no_payload"));
    }

    #[test]
    fn a_record_that_is_not_an_event_becomes_a_dead_letter() {
        let mut bad = record(0, 0);
        bad.payload = Some(b"{\"hello\":1}".to_vec());
        assert!(matches!(
            test_decoder().decode(&bad),
            Decoded::DeadLetter(reason) if reason.kind == "undecodable"
        ));
    }

    #[test]
    fn an_event_of_an_unknown_version_becomes_a_dead_letter_saying_so() {
        let mut bad = record(0, 0);
        bad.payload = Some(br#"{"type":"ScoreSubmitted","version":7}"#.to_vec());
        let Decoded::DeadLetter(reason) = test_decoder().decode(&bad) else {
            panic!("an unknown version must not decode");
        };
        assert_eq!(reason.kind, "unknown_event");
        assert!(reason.detail.contains("version 7"), "{}", reason.detail);
    }

    #[test]
    fn an_event_version_held_back_becomes_a_dead_letter_saying_so() {
        let mut v2 = record(0, 0);
        v2.payload = Some(
            br#"{"type":"ScoreSubmitted","version":2,"event_id":"0192f0c4-1a2b-7c3d-8e4f-000000000001",
                "occurred_at":"2026-11-25T08:00:00Z","channel":"api_v1","acc_nbr":"13800138000",
                "grade1":5,"grade2":4,"grade3":3,"txt1":"","txt2":"","txt3":"","scene":"pages/a"}"#
                .to_vec(),
        );
        let held_back = Decoder {
            accepted_versions: vec![1],
            ..test_decoder()
        };
        let Decoded::DeadLetter(reason) = held_back.decode(&v2) else {
            panic!("a version not accepted must not decode");
        };
        assert_eq!(reason.kind, "unknown_event");
        assert!(matches!(test_decoder().decode(&v2), Decoded::Row(_)));
    }
}
