//! Projections: each one a name, its own tables, its own positions and
//! dead letters, and a function that applies a batch of events.
//!
//! The engine ([`crate::apply`]) owns everything generic (locks, positions,
//! dead letters, exactly-once checks); a projection only says how events
//! become rows in its data tables, and which events it refused because
//! their id was already applied with other content ([`Applied`]).

mod account_summary;
mod grade;

use std::collections::HashMap;

use futures::future::BoxFuture;
use score_shared::{AccountForgotten, AccountRef, ScoreSubmitted, SubmissionDigest};
use sqlx::MySqlConnection;

use crate::batch::DeadLetterReason;

pub use account_summary::AccountSummary;
pub use grade::Grade;

/// An event to apply, with where it is in the log.
#[derive(Clone, Copy, Debug)]
pub struct Projected<'a> {
    pub event: &'a ScoreSubmitted,
    /// The account's reference, stored beside the rows so that an erasure
    /// finds them.
    pub account_ref: &'a AccountRef,
    /// The event's key was forgotten: `event` holds the account's
    /// placeholder and no comments, and it has no digest.
    pub forgotten: bool,
    pub partition: i32,
    pub offset: i64,
}

impl Projected<'_> {
    /// The digest to store: none for a forgotten event (the digest of a
    /// person's content is theirs too).
    pub fn stored_digest(&self) -> Option<String> {
        (!self.forgotten).then(|| self.event.submission_digest().to_string())
    }
}

/// A projection of the log into MySQL tables.
pub trait Projection: Send + Sync {
    /// The projection's name; its position and dead-letter tables are
    /// `<name>_position` and `<name>_dead_letter`.
    fn name(&self) -> &'static str;

    /// Its data tables (created by `migrations/`).
    fn data_tables(&self) -> &'static [&'static str];

    /// Writes `events` into the data tables named by `tables`, inside the
    /// caller's transaction. Must be idempotent per `event_id`: the same
    /// event may appear twice in the log (a client retry), and the second
    /// record changes nothing. An event whose id was applied before with
    /// another [`SubmissionDigest`] (an idempotency key reused for another
    /// rating) changes nothing either, and is returned in
    /// [`Applied::conflicts`] for the caller to dead-letter: first write
    /// wins.
    fn apply<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        events: &'a [Projected<'a>],
    ) -> BoxFuture<'a, sqlx::Result<Applied>>;

    /// Removes the account `erasure` names from the data tables, inside the
    /// caller's transaction, and records the erasure in the projection's
    /// erasure table (the last of [`Projection::data_tables`]): rows keep
    /// what is not personal under the account's placeholder, and nothing
    /// keyed by the account alone remains. Idempotent per erasure event.
    fn forget<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        erasure: &'a AccountForgotten,
    ) -> BoxFuture<'a, sqlx::Result<()>>;
}

/// Records `erasure` in `table` (a projection's `<name>_erasure`) with the
/// number of rows it changed; a second record of the same event changes
/// nothing.
async fn record_erasure(
    connection: &mut MySqlConnection,
    table: &str,
    erasure: &AccountForgotten,
    rows: u64,
) -> sqlx::Result<()> {
    let mut insert = sqlx::QueryBuilder::<sqlx::MySql>::new("INSERT INTO ");
    insert
        .push(table)
        .push(" (event_id, account_ref, reason, requested_at, rows_changed) VALUES (")
        .push_bind(erasure.event_id.hyphenated().to_string())
        .push(", ")
        .push_bind(erasure.account_ref.to_string())
        .push(", ")
        .push_bind(erasure.reason.as_str())
        .push(", ")
        .push_bind(erasure.occurred_at.naive_utc())
        .push(", ")
        .push_bind(rows)
        .push(") ON DUPLICATE KEY UPDATE event_id = event_id");
    insert.build().execute(&mut *connection).await?;
    Ok(())
}

/// What a projection's apply found besides the rows it wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events not applied because their id was already applied with other
    /// content, in the order given; each must become a dead letter in the
    /// same transaction.
    pub conflicts: Vec<Conflict>,
}

/// An event refused as an idempotency conflict.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Its index in the `events` given to [`Projection::apply`].
    pub index: usize,
    /// Kind [`IDEMPOTENCY_CONFLICT`]; the detail names the event id and
    /// both digests, never the content.
    pub reason: DeadLetterReason,
}

/// The dead-letter kind of an event whose id was already applied with other
/// content.
pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";

/// Sorts a batch's events against the digests already applied under their
/// ids (`applied`: event id → digest, `None` when the stored record has no
/// digest and none can be computed, which counts as the same): the indices
/// of events to write, and the conflicts. An event id met twice in the
/// batch is written once; the later record is a duplicate when its digest
/// is the same and a conflict when not.
fn first_write_wins(
    events: &[Projected<'_>],
    mut applied: HashMap<String, Option<SubmissionDigest>>,
) -> (Vec<usize>, Applied) {
    let mut to_write = Vec::new();
    let mut outcome = Applied::default();
    for (index, projected) in events.iter().enumerate() {
        let event_id = projected.event.event_id.hyphenated().to_string();
        let digest = projected.event.submission_digest();
        match applied.get(&event_id) {
            None => {
                applied.insert(event_id, Some(digest));
                to_write.push(index);
            }
            Some(None) => {}
            Some(Some(first)) if *first == digest => {}
            Some(Some(first)) => outcome.conflicts.push(Conflict {
                index,
                reason: DeadLetterReason::new(
                    IDEMPOTENCY_CONFLICT,
                    format!(
                        "event {event_id} was first applied with submission digest {first}; \
                         this record's digest is {digest} (the idempotency key was reused \
                         for another submission; first write wins)"
                    ),
                ),
            }),
        }
    }
    (to_write, outcome)
}

/// Every projection this build knows, in the order they are applied.
pub fn all() -> Vec<&'static dyn Projection> {
    vec![&Grade, &AccountSummary]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Projection> {
    all().into_iter().find(|p| p.name() == name)
}

/// The projection called `name`, or an error naming the known ones.
///
/// # Errors
///
/// When no projection has that name.
pub fn lookup(name: &str) -> anyhow::Result<&'static dyn Projection> {
    by_name(name).ok_or_else(|| {
        anyhow::anyhow!("unknown projection {name:?}; known: {}", names().join(", "))
    })
}

/// The names of every projection, for messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name()).collect()
}

/// The physical names of one projection's tables: the live ones, or a
/// rebuild's shadow copies (`<table>__shadow`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSet {
    /// Data tables, in the order of [`Projection::data_tables`].
    pub data: Vec<String>,
    pub position: String,
    pub dead_letter: String,
}

/// Suffix of a rebuild's shadow tables.
pub const SHADOW_SUFFIX: &str = "__shadow";
/// Suffix of the tables a rebuild swapped out.
pub const OLD_SUFFIX: &str = "__old";

impl TableSet {
    /// The live tables.
    pub fn live(projection: &dyn Projection) -> Self {
        Self::with_suffix(projection, "")
    }

    /// The shadow tables a rebuild writes.
    pub fn shadow(projection: &dyn Projection) -> Self {
        Self::with_suffix(projection, SHADOW_SUFFIX)
    }

    /// The tables a rebuild swapped out (kept with `--keep-old`).
    pub fn old(projection: &dyn Projection) -> Self {
        Self::with_suffix(projection, OLD_SUFFIX)
    }

    fn with_suffix(projection: &dyn Projection, suffix: &str) -> Self {
        Self {
            data: projection
                .data_tables()
                .iter()
                .map(|table| format!("{table}{suffix}"))
                .collect(),
            position: format!("{}_position{suffix}", projection.name()),
            dead_letter: format!("{}_dead_letter{suffix}", projection.name()),
        }
    }

    /// Every table of the set.
    pub fn all(&self) -> Vec<&str> {
        self.data
            .iter()
            .chain([&self.position, &self.dead_letter])
            .map(String::as_str)
            .collect()
    }
}

/// The MySQL named lock the live projector takes around each batch of a
/// projection, and a rebuild takes to swap it (scoped by database when
/// taken, see [`crate::apply::NamedLock`]).
pub fn lock_name(projection: &dyn Projection) -> String {
    format!("projection.{}", projection.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_has_a_unique_name() {
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
    }

    #[test]
    fn shadow_tables_mirror_the_live_ones() {
        let grade = by_name("grade").unwrap();
        assert_eq!(
            TableSet::live(grade).all(),
            [
                "grade",
                "grade_erasure",
                "grade_position",
                "grade_dead_letter"
            ]
        );
        assert_eq!(
            TableSet::shadow(grade).all(),
            [
                "grade__shadow",
                "grade_erasure__shadow",
                "grade_position__shadow",
                "grade_dead_letter__shadow"
            ]
        );
    }

    fn event(id: u128, grade1: i32) -> ScoreSubmitted {
        let raw = score_shared::RawSubmission {
            acc_nbr: Some("13800138000".into()),
            grades: [Some(grade1.into()), Some(4.into()), Some(3.into())],
            texts: [None, None, None],
            scene: None,
        };
        let submission =
            score_shared::Submission::parse(&raw, &score_shared::ValidationRules::default())
                .unwrap();
        ScoreSubmitted::new(
            uuid::Uuid::from_u128(id),
            score_shared::Channel::ApiV1,
            &submission,
        )
    }

    static ACCOUNT: std::sync::LazyLock<AccountRef> = std::sync::LazyLock::new(|| {
        let pepper = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap();
        AccountRef::of(&pepper, "13800138000")
    });

    fn projected(events: &[ScoreSubmitted]) -> Vec<Projected<'_>> {
        events
            .iter()
            .enumerate()
            .map(|(offset, event)| Projected {
                event,
                account_ref: &ACCOUNT,
                forgotten: false,
                partition: 0,
                offset: offset as i64,
            })
            .collect()
    }

    #[test]
    fn in_a_batch_the_first_record_of_an_id_wins_and_a_retry_is_a_silent_duplicate() {
        let events = [event(1, 5), event(1, 5), event(1, 2), event(2, 2)];

        let (to_write, applied) = first_write_wins(&projected(&events), HashMap::new());

        assert_eq!(to_write, [0, 3]);
        assert_eq!(applied.conflicts.len(), 1, "{applied:?}");
        assert_eq!(applied.conflicts[0].index, 2);
        assert_eq!(applied.conflicts[0].reason.kind, IDEMPOTENCY_CONFLICT);
        assert!(
            !applied.conflicts[0].reason.detail.contains("13800138000"),
            "the detail names no account"
        );
    }

    #[test]
    fn an_id_applied_before_conflicts_only_with_other_content() {
        let first = event(1, 5);
        let events = [event(1, 5), event(1, 1)];
        let stored = HashMap::from([(
            first.event_id.hyphenated().to_string(),
            Some(first.content_digest()),
        )]);

        let (to_write, applied) = first_write_wins(&projected(&events), stored);

        assert!(to_write.is_empty());
        let indices: Vec<_> = applied.conflicts.iter().map(|c| c.index).collect();
        assert_eq!(indices, [1]);
    }

    #[test]
    fn an_id_applied_before_digests_existed_is_a_duplicate() {
        let events = [event(1, 1)];
        let stored = HashMap::from([(events[0].event_id.hyphenated().to_string(), None)]);

        let (to_write, applied) = first_write_wins(&projected(&events), stored);

        assert!(to_write.is_empty());
        assert_eq!(applied, Applied::default());
    }

    #[test]
    fn an_unknown_projection_is_not_found() {
        assert!(by_name("nope").is_none());
    }
}
