//! Projections: each one a name, its own tables, its own positions and
//! dead letters, and a function that applies a batch of events.
//!
//! The engine ([`crate::apply`]) owns everything generic (locks, positions,
//! dead letters, exactly-once checks); a projection only says how events
//! become rows in its data tables.

mod account_summary;
mod grade;

use futures::future::BoxFuture;
use score_shared::ScoreSubmitted;
use sqlx::MySqlConnection;

pub use account_summary::AccountSummary;
pub use grade::Grade;

/// An event to apply, with where it is in the log.
#[derive(Clone, Copy, Debug)]
pub struct Projected<'a> {
    pub event: &'a ScoreSubmitted,
    pub partition: i32,
    pub offset: i64,
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
    /// event may appear twice in the log (a client retry).
    fn apply<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        events: &'a [Projected<'a>],
    ) -> BoxFuture<'a, sqlx::Result<()>>;
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
            ["grade", "grade_position", "grade_dead_letter"]
        );
        assert_eq!(
            TableSet::shadow(grade).all(),
            [
                "grade__shadow",
                "grade_position__shadow",
                "grade_dead_letter__shadow"
            ]
        );
    }

    #[test]
    fn an_unknown_projection_is_not_found() {
        assert!(by_name("nope").is_none());
    }
}
