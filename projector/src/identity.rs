//! Whether a stored position stands on the log being read.
//!
//! A position says "every record of this partition below `next_offset` is
//! applied". That is only true of the log it was taken from: under a
//! different log (another broker's data, a topic deleted and recreated, the
//! broker's storage wiped), the same offsets hold other events, and taking
//! them as applied would lose them silently. So each position also stores
//! the digest of the record it stands on, the one at `next_offset - 1`, and
//! a batch applies nothing in a partition until that record has been seen
//! in the log being read with the same digest. When it differs, or is not
//! in the log at all, the projection refuses with a [`LogMismatch`]; the way
//! out is `projector rebuild`.
//!
//! The check costs nothing in the steady state: the record under a position
//! is the last one of the previous batch ([`Predecessors`]), or, after a
//! seek, the first of the next one (seeks go to `position - 1`).

use std::collections::{BTreeMap, HashMap};

use score_shared::config::KafkaArgs;
use sha2::{Digest, Sha256};

use crate::batch::LogRecord;
use crate::log_reader;

/// A record's fingerprint: the first 128 bits of the SHA-256 of its key and
/// payload, as 32 lowercase hex digits (what `*_position.last_record`
/// holds).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordDigest(String);

impl RecordDigest {
    /// The digest of `record`. Key and payload are length-prefixed (absent
    /// is not empty), so that no two different records share an input.
    pub fn of(record: &LogRecord) -> Self {
        let mut hasher = Sha256::new();
        for part in [&record.key, &record.payload] {
            match part {
                Some(bytes) => {
                    hasher.update([1]);
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update([0]),
            }
        }
        Self(hex::encode(&hasher.finalize()[..16]))
    }

    /// A digest read back from MySQL.
    pub fn stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored position: the next offset to apply, and the digest of the
/// record before it. `last_record` is `None` at offset 0, and for positions
/// stored before the check existed (those are trusted once, and carry a
/// digest from their next advance on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredPosition {
    pub next_offset: i64,
    pub last_record: Option<RecordDigest>,
}

impl StoredPosition {
    /// The offset of the record the position stands on, when it must be
    /// checked.
    pub fn stands_on(&self) -> Option<i64> {
        (self.next_offset > 0 && self.last_record.is_some()).then(|| self.next_offset - 1)
    }
}

/// Where a reader goes back to so that the next batch shows the record a
/// position stands on: one before the position (0 for a fresh partition).
pub fn seek_target(next_offset: i64) -> i64 {
    (next_offset - 1).max(0)
}

/// A projection's stored position that does not stand on the log being
/// read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "projection {projection}, partition {partition}: the stored position {next_offset} does not \
     stand on this log ({found}); the tables were built from another log (another broker's data, \
     or the topic was recreated). Nothing was applied. Rebuild the projection from this log: \
     projector rebuild {projection}"
)]
pub struct LogMismatch {
    pub projection: &'static str,
    pub partition: i32,
    pub next_offset: i64,
    pub found: Found,
}

impl LogMismatch {
    /// The record at `offset`, under `projection`'s position in
    /// `partition`, never came, however often the reader was sent there.
    pub fn never_seen(projection: &'static str, partition: i32, offset: i64) -> Self {
        Self {
            projection,
            partition,
            next_offset: offset + 1,
            found: Found::Missing { log_end: None },
        }
    }
}

/// What the log holds where a position expected its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A different record at `next_offset - 1`.
    Different {
        stored: RecordDigest,
        read: RecordDigest,
    },
    /// No record there: the log ends before the position, or the record is
    /// gone.
    Missing { log_end: Option<i64> },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Different { stored, read } => write!(
                f,
                "the record before it is {read}, the position was stored on {stored}"
            ),
            Self::Missing { log_end: Some(end) } => {
                write!(f, "the log's partition ends at offset {end}, before it")
            }
            Self::Missing { log_end: None } => {
                f.write_str("the record before it is not in the log")
            }
        }
    }
}

/// Reads the record each of `positions` (by partition) stands on and
/// compares it with the stored digest: `None` where the position stands on
/// this log (or has nothing to check), what was found otherwise. A position
/// beyond the end of the log never stands, digest or not.
///
/// # Errors
///
/// When the broker does not answer.
pub async fn check(
    kafka: &KafkaArgs,
    positions: &BTreeMap<i32, StoredPosition>,
) -> anyhow::Result<BTreeMap<i32, Option<Found>>> {
    let offsets: BTreeMap<i32, i64> = positions
        .iter()
        .filter_map(|(partition, position)| Some((*partition, position.stands_on()?)))
        .collect();
    let log = log_reader::records_at(kafka, &offsets).await?;
    Ok(positions
        .iter()
        .map(|(partition, position)| {
            let end = log.watermarks.get(partition).map(|(_, high)| *high);
            (*partition, judge(position, end, log.records.get(partition)))
        })
        .collect())
}

/// A position beyond the end of its partition of the log never stands on
/// it, digest or not.
pub fn beyond_the_end(next_offset: i64, end: i64) -> Option<Found> {
    (next_offset > end).then_some(Found::Missing { log_end: Some(end) })
}

/// Whether `position` stands on a log whose partition ends at `end` and
/// holds `read` where the position's record should be.
fn judge(
    position: &StoredPosition,
    end: Option<i64>,
    read: Option<&Option<LogRecord>>,
) -> Option<Found> {
    if let Some(beyond) = beyond_the_end(position.next_offset, end.unwrap_or(0)) {
        return Some(beyond);
    }
    let stored = position.last_record.as_ref()?;
    match read? {
        Some(record) if &RecordDigest::of(record) == stored => None,
        Some(record) => Some(Found::Different {
            stored: stored.clone(),
            read: RecordDigest::of(record),
        }),
        None => Some(Found::Missing { log_end: None }),
    }
}

/// The last record a reader has read in each partition: what the log holds
/// just before the next batch, so that a position at the batch's start can
/// be checked without reading back.
#[derive(Clone, Debug, Default)]
pub struct Predecessors(HashMap<i32, (i64, RecordDigest)>);

impl Predecessors {
    /// Remembers the last record of each partition in `records`.
    pub fn remember(&mut self, records: &[LogRecord]) {
        // Only the newest record of each partition is hashed: this runs for
        // every batch.
        let mut newest: HashMap<i32, &LogRecord> = HashMap::new();
        for record in records {
            let entry = newest.entry(record.partition).or_insert(record);
            if record.offset >= entry.offset {
                *entry = record;
            }
        }
        for (partition, record) in newest {
            let newer = self
                .0
                .get(&partition)
                .is_none_or(|(offset, _)| record.offset >= *offset);
            if newer {
                self.0
                    .insert(partition, (record.offset, RecordDigest::of(record)));
            }
        }
    }

    /// The digest of the record at `offset` of `partition`, if it is the
    /// last one read there.
    pub fn at(&self, partition: i32, offset: i64) -> Option<&RecordDigest> {
        self.0
            .get(&partition)
            .filter(|(read, _)| *read == offset)
            .map(|(_, digest)| digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, payload: &str) -> LogRecord {
        LogRecord {
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_digest_depends_on_key_and_payload_only() {
        let a = record(0, 1, "x");
        assert_eq!(RecordDigest::of(&a), RecordDigest::of(&record(3, 9, "x")));
        assert_ne!(RecordDigest::of(&a), RecordDigest::of(&record(0, 1, "y")));
        let no_key = LogRecord {
            key: None,
            ..a.clone()
        };
        let empty_key = LogRecord {
            key: Some(Vec::new()),
            ..a.clone()
        };
        assert_ne!(RecordDigest::of(&no_key), RecordDigest::of(&empty_key));
        // The boundary between key and payload is part of the input.
        let shifted = LogRecord {
            key: Some(b"kx".to_vec()),
            payload: Some(Vec::new()),
            ..a.clone()
        };
        assert_ne!(RecordDigest::of(&a), RecordDigest::of(&shifted));
        assert_eq!(RecordDigest::of(&a).as_str().len(), 32);
    }

    #[test]
    fn predecessors_keep_the_last_record_of_each_partition() {
        let mut seen = Predecessors::default();
        seen.remember(&[record(0, 4, "a"), record(0, 5, "b"), record(1, 2, "c")]);
        assert_eq!(seen.at(0, 5), Some(&RecordDigest::of(&record(0, 5, "b"))));
        assert_eq!(seen.at(0, 4), None, "only the last one");
        assert!(seen.at(1, 2).is_some());
        // A seek back reads older records again: the newest stays.
        seen.remember(&[record(0, 3, "z")]);
        assert!(seen.at(0, 5).is_some());
    }

    #[test]
    fn a_position_is_judged_by_the_record_under_it_and_the_end_of_the_log() {
        let under = record(0, 6, "a");
        let position = StoredPosition {
            next_offset: 7,
            last_record: Some(RecordDigest::of(&under)),
        };
        assert_eq!(judge(&position, Some(7), Some(&Some(under.clone()))), None);
        assert_eq!(
            judge(&position, Some(9), Some(&Some(record(0, 6, "b")))),
            Some(Found::Different {
                stored: RecordDigest::of(&under),
                read: RecordDigest::of(&record(0, 6, "b")),
            })
        );
        assert_eq!(
            judge(&position, Some(5), Some(&None)),
            Some(Found::Missing { log_end: Some(5) })
        );
        assert_eq!(
            judge(&position, Some(9), Some(&None)),
            Some(Found::Missing { log_end: None })
        );
        let before_the_check = StoredPosition {
            next_offset: 7,
            last_record: None,
        };
        assert_eq!(judge(&before_the_check, Some(9), None), None);
        assert_eq!(
            judge(&before_the_check, Some(3), None),
            Some(Found::Missing { log_end: Some(3) }),
            "beyond the end, with or without a digest"
        );
    }

    #[test]
    fn only_a_position_with_a_digest_past_zero_stands_on_a_record() {
        let digest = RecordDigest::stored("00".repeat(16));
        let at = |next_offset, last_record| StoredPosition {
            next_offset,
            last_record,
        };
        assert_eq!(at(0, None).stands_on(), None);
        assert_eq!(at(7, None).stands_on(), None, "stored before the check");
        assert_eq!(at(7, Some(digest)).stands_on(), Some(6));
        assert_eq!(seek_target(0), 0);
        assert_eq!(seek_target(7), 6);
    }
}
