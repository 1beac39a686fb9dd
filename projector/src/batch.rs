//! Pure logic of one batch: which records to apply given the stored
//! positions, and what each record becomes (a row or a dead letter).
//! Nothing here touches MySQL or Kafka, so it is unit tested directly.

use std::collections::{BTreeMap, HashMap};

use score_shared::event::{self, DecodeError, Event};
use score_shared::{ScoreSubmitted, ValidationRules};

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
    /// Set when the batch does not start at the stored position: the
    /// consumer must seek back to `stored`, and nothing is applied.
    pub gap: Option<Gap>,
}

/// The batch skips over offsets that were never applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gap {
    pub partition: i32,
    /// The stored position: the next offset to apply.
    pub stored: i64,
    /// The first offset the batch holds beyond it.
    pub first_seen: i64,
}

/// Splits `records` by partition and, for each, keeps the run that starts
/// exactly at the stored position. `accepted_gaps` lists gaps the log itself
/// has (confirmed by the caller after seeking back): the run may start past
/// the stored position there.
pub fn plan<'a>(
    records: &'a [LogRecord],
    stored: &HashMap<i32, i64>,
    accepted_gaps: &[Gap],
) -> Vec<PartitionPlan<'a>> {
    let mut by_partition: BTreeMap<i32, Vec<&LogRecord>> = BTreeMap::new();
    for record in records {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record);
    }
    by_partition
        .into_iter()
        .map(|(partition, mut records)| {
            records.sort_by_key(|r| r.offset);
            records.dedup_by_key(|r| r.offset);
            let stored = stored.get(&partition).copied().unwrap_or(0);
            let already_applied = records.iter().take_while(|r| r.offset < stored).count();
            let fresh = &records[already_applied..];
            let mut plan = PartitionPlan {
                partition,
                records: Vec::new(),
                already_applied,
                next_offset: stored,
                gap: None,
            };
            let Some(first) = fresh.first() else {
                return plan;
            };
            let gap = Gap {
                partition,
                stored,
                first_seen: first.offset,
            };
            if first.offset != stored && !accepted_gaps.contains(&gap) {
                plan.gap = Some(gap);
                return plan;
            }
            let mut expected = first.offset;
            for record in fresh {
                if record.offset != expected {
                    // A hole inside the batch: apply up to it; the rest
                    // comes again after the consumer seeks.
                    break;
                }
                plan.records.push(record);
                expected += 1;
            }
            plan.next_offset = expected;
            plan
        })
        .collect()
}

/// What one record becomes in the projection.
#[derive(Debug)]
pub enum Decoded {
    Row(ScoreSubmitted),
    DeadLetter(DeadLetterReason),
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

/// Decodes and validates records with the same rules the ingest API uses,
/// accepting the configured event versions.
#[derive(Clone, Debug)]
pub struct Decoder {
    pub rules: ValidationRules,
    pub accepted_versions: Vec<u32>,
}

impl Decoder {
    /// What `record` becomes.
    pub fn decode(&self, record: &LogRecord) -> Decoded {
        decode_payload(
            record.payload.as_deref(),
            &self.rules,
            &self.accepted_versions,
        )
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            rules: ValidationRules::default(),
            accepted_versions: event::SCORE_SUBMITTED_VERSIONS.to_vec(),
        }
    }
}

/// Decodes and validates one payload.
fn decode_payload(payload: Option<&[u8]>, rules: &ValidationRules, accepted: &[u32]) -> Decoded {
    let Some(payload) = payload else {
        return Decoded::DeadLetter(DeadLetterReason::new("no_payload", "record has no payload"));
    };
    match event::decode_accepting(payload, accepted) {
        Ok(Event::ScoreSubmitted(event)) => match event.validate(rules) {
            Ok(_) => Decoded::Row(event),
            Err(errors) => {
                Decoded::DeadLetter(DeadLetterReason::new("invalid", errors.to_string()))
            }
        },
        Err(error @ (DecodeError::Unknown { .. } | DecodeError::NotEnabled { .. })) => {
            Decoded::DeadLetter(DeadLetterReason::new("unknown_event", error.to_string()))
        }
        Err(error) => Decoded::DeadLetter(DeadLetterReason::new("undecodable", error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> LogRecord {
        LogRecord {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    fn offsets(plan: &PartitionPlan<'_>) -> Vec<i64> {
        plan.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_batch_starting_at_the_stored_position_is_applied_whole() {
        let records = [record(0, 5), record(0, 6), record(0, 7)];
        let plans = plan(&records, &HashMap::from([(0, 5)]), &[]);
        assert_eq!(offsets(&plans[0]), [5, 6, 7]);
        assert_eq!(plans[0].next_offset, 8);
        assert_eq!(plans[0].gap, None);
    }

    #[test]
    fn a_partition_never_seen_starts_at_offset_zero() {
        let records = [record(2, 0), record(2, 1)];
        let plans = plan(&records, &HashMap::new(), &[]);
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(plans[0].next_offset, 2);
    }

    #[test]
    fn records_already_applied_are_skipped() {
        let records = [record(0, 3), record(0, 4), record(0, 5)];
        let plans = plan(&records, &HashMap::from([(0, 5)]), &[]);
        assert_eq!(offsets(&plans[0]), [5]);
        assert_eq!(plans[0].already_applied, 2);
        assert_eq!(plans[0].next_offset, 6);
    }

    #[test]
    fn a_batch_fully_applied_before_changes_nothing() {
        let records = [record(0, 3), record(0, 4)];
        let plans = plan(&records, &HashMap::from([(0, 9)]), &[]);
        assert!(plans[0].records.is_empty());
        assert_eq!(plans[0].next_offset, 9);
        assert_eq!(plans[0].gap, None);
    }

    #[test]
    fn a_batch_past_the_stored_position_is_a_gap_and_applies_nothing() {
        let records = [record(1, 10), record(1, 11)];
        let plans = plan(&records, &HashMap::from([(1, 4)]), &[]);
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
        let plans = plan(&records, &HashMap::from([(1, 4)]), &accepted);
        assert_eq!(offsets(&plans[0]), [10, 11]);
        assert_eq!(plans[0].next_offset, 12);
    }

    #[test]
    fn a_hole_inside_the_batch_stops_the_run_before_it() {
        let records = [record(0, 0), record(0, 1), record(0, 3)];
        let plans = plan(&records, &HashMap::new(), &[]);
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(plans[0].next_offset, 2);
    }

    #[test]
    fn partitions_are_planned_independently() {
        let records = [record(0, 0), record(1, 7), record(0, 1), record(1, 8)];
        let plans = plan(&records, &HashMap::from([(1, 7)]), &[]);
        assert_eq!(plans.len(), 2);
        assert_eq!(offsets(&plans[0]), [0, 1]);
        assert_eq!(offsets(&plans[1]), [7, 8]);
    }

    #[test]
    fn duplicated_deliveries_within_a_batch_count_once() {
        let records = [record(0, 0), record(0, 0), record(0, 1)];
        let plans = plan(&records, &HashMap::new(), &[]);
        assert_eq!(offsets(&plans[0]), [0, 1]);
    }

    #[test]
    fn a_record_without_payload_becomes_a_dead_letter() {
        let decoded = Decoder::default().decode(&record(0, 0));
        assert!(matches!(decoded, Decoded::DeadLetter(reason) if reason.kind == "no_payload"));
    }

    #[test]
    fn a_record_that_is_not_an_event_becomes_a_dead_letter() {
        let mut bad = record(0, 0);
        bad.payload = Some(b"{\"hello\":1}".to_vec());
        assert!(matches!(
            Decoder::default().decode(&bad),
            Decoded::DeadLetter(reason) if reason.kind == "undecodable"
        ));
    }

    #[test]
    fn an_event_of_an_unknown_version_becomes_a_dead_letter_saying_so() {
        let mut bad = record(0, 0);
        bad.payload = Some(br#"{"type":"ScoreSubmitted","version":7}"#.to_vec());
        let Decoded::DeadLetter(reason) = Decoder::default().decode(&bad) else {
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
            ..Decoder::default()
        };
        let Decoded::DeadLetter(reason) = held_back.decode(&v2) else {
            panic!("a version not accepted must not decode");
        };
        assert_eq!(reason.kind, "unknown_event");
        assert!(matches!(Decoder::default().decode(&v2), Decoded::Row(_)));
    }
}
