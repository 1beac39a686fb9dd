//! The results query: an account's submissions and averages, read from the
//! `grade` projection in MySQL through a read-only account.
//!
//! The write path never touches this: when MySQL is down, submissions are
//! still accepted and only these queries answer 503.

use std::sync::Arc;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, Utc};
use score_shared::AccountNumber;
use serde::Serialize;
use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use crate::consistency::{
    ConsistencyToken, Freshness, PositionWatch, is_rejected, opaque, unopaque,
};

/// How long a query waits for a pooled connection: a MySQL outage turns
/// into a quick 503, not a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most submissions one page may hold.
pub const PAGE_LIMIT_MAX: u32 = 100;
/// Submissions in a page unless the client asks for another number.
pub const PAGE_LIMIT_DEFAULT: u32 = 20;

/// The read side of the API.
#[derive(Clone)]
pub struct ReadModel {
    pool: MySqlPool,
    positions: PositionWatch,
    /// The topic the projection reads, which names its dead letters.
    topic: Arc<str>,
}

/// The query failed: MySQL could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the results database did not answer: {0}")]
pub struct ReadError(#[from] sqlx::Error);

/// A cursor that this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor is not one this server issued")]
pub struct InvalidCursor;

/// Where the next page starts: after the submission received at `time`
/// with row id `id` (pages go newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    time: NaiveDateTime,
    id: u64,
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        opaque(&format!(
            "{}:{}",
            self.time.and_utc().timestamp_micros(),
            self.id
        ))
    }

    /// Reads a cursor sent back by a client.
    ///
    /// # Errors
    ///
    /// When `text` is not a cursor of this format.
    pub fn parse(text: &str) -> Result<Self, InvalidCursor> {
        let plain = unopaque(text).ok_or(InvalidCursor)?;
        let (micros, id) = plain.split_once(':').ok_or(InvalidCursor)?;
        let micros: i64 = micros.parse().map_err(|_| InvalidCursor)?;
        let id: u64 = id.parse().map_err(|_| InvalidCursor)?;
        let time = DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or(InvalidCursor)?
            .naive_utc();
        Ok(Self { time, id })
    }
}

/// What a results query asks for, validated.
#[derive(Clone, Debug)]
pub struct ResultsQuery {
    pub account: AccountNumber,
    pub after: Option<ConsistencyToken>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// One submission as the results show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreRow {
    pub event_id: String,
    pub grade1: i32,
    pub grade2: i32,
    pub grade3: i32,
    pub txt1: String,
    pub txt2: String,
    pub txt3: String,
    /// When the API received it (UTC).
    pub insert_time: DateTime<Utc>,
    pub channel: String,
    pub scene: Option<String>,
}

/// Totals over all of an account's submissions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub submissions: i64,
    pub avg_grade1: Option<f64>,
    pub avg_grade2: Option<f64>,
    pub avg_grade3: Option<f64>,
    pub first_submission_at: Option<DateTime<Utc>>,
    pub last_submission_at: Option<DateTime<Utc>>,
}

/// The answer to a results query.
#[derive(Clone, Debug)]
pub struct AccountResults {
    pub summary: Summary,
    pub scores: Vec<ScoreRow>,
    pub next_cursor: Option<Cursor>,
    pub freshness: Freshness,
}

type GradeRow = (
    u64,
    String,
    i32,
    i32,
    i32,
    String,
    String,
    String,
    NaiveDateTime,
    String,
    Option<String>,
);

type SummaryRow = (
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

impl ReadModel {
    /// A lazily connecting pool for `database_url` (a read-only account),
    /// and the position watch for `topic`'s `grade` projection; a query with
    /// a token waits at most `consistency_wait` for it.
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed.
    pub fn new(
        database_url: &str,
        max_connections: u32,
        topic: &str,
        consistency_wait: Duration,
    ) -> anyhow::Result<Self> {
        let options = MySqlConnectOptions::from_str(database_url)
            .context("SCORES_QUERY_DATABASE_URL is not a valid MySQL URL")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let positions = PositionWatch::start(pool.clone(), topic.to_owned(), consistency_wait);
        Ok(Self {
            pool,
            positions,
            topic: topic.into(),
        })
    }

    /// The account's submissions, newest first, one page of them, and its
    /// totals; first waits for the projection to pass the query's token.
    ///
    /// # Errors
    ///
    /// When MySQL does not answer.
    #[tracing::instrument(name = "results", skip_all, fields(account = %query.account))]
    pub async fn account_results(&self, query: &ResultsQuery) -> Result<AccountResults, ReadError> {
        let mut freshness = match query.after {
            Some(token) => self.positions.wait_for(token).await,
            None => Freshness::Unchecked,
        };
        // One snapshot for the page, the totals and the token's dead-letter
        // check, so that they agree.
        let mut transaction = self.pool.begin().await?;
        if let (Freshness::Current, Some(token)) = (freshness, query.after)
            && is_rejected(&mut transaction, &self.topic, token).await?
        {
            freshness = Freshness::Rejected;
        }
        let account = query.account.as_str();
        let (before_time, before_id) = match query.cursor {
            Some(cursor) => (Some(cursor.time), cursor.id),
            None => (None, 0),
        };
        // One more row than asked tells whether there is a next page.
        let mut rows: Vec<GradeRow> = sqlx::query_as(
            "SELECT id, event_id, grade1, grade2, grade3, txt1, txt2, txt3, insert_time, channel, scene \
             FROM grade \
             WHERE acc_nbr = ? AND (? IS NULL OR insert_time < ? OR (insert_time = ? AND id < ?)) \
             ORDER BY insert_time DESC, id DESC LIMIT ?",
        )
        .bind(account)
        .bind(before_time)
        .bind(before_time)
        .bind(before_time)
        .bind(before_id)
        .bind(query.limit + 1)
        .fetch_all(&mut *transaction)
        .await?;
        let summary: SummaryRow = sqlx::query_as(
            "SELECT COUNT(*), CAST(AVG(grade1) AS DOUBLE), CAST(AVG(grade2) AS DOUBLE), \
             CAST(AVG(grade3) AS DOUBLE), MIN(insert_time), MAX(insert_time) \
             FROM grade WHERE acc_nbr = ?",
        )
        .bind(account)
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;

        let next_cursor = if rows.len() > query.limit as usize {
            rows.truncate(query.limit as usize);
            rows.last().map(|row| Cursor {
                time: row.8,
                id: row.0,
            })
        } else {
            None
        };
        Ok(AccountResults {
            summary: Summary {
                submissions: summary.0,
                avg_grade1: summary.1,
                avg_grade2: summary.2,
                avg_grade3: summary.3,
                first_submission_at: summary.4.map(|time| time.and_utc()),
                last_submission_at: summary.5.map(|time| time.and_utc()),
            },
            scores: rows.into_iter().map(score_row).collect(),
            next_cursor,
            freshness,
        })
    }
}

fn score_row(row: GradeRow) -> ScoreRow {
    let (_, event_id, grade1, grade2, grade3, txt1, txt2, txt3, insert_time, channel, scene) = row;
    ScoreRow {
        event_id,
        grade1,
        grade2,
        grade3,
        txt1,
        txt2,
        txt3,
        insert_time: insert_time.and_utc(),
        channel,
        scene,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn a_cursor_reads_back_as_what_was_encoded() {
        let cursor = Cursor {
            time: DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456)
                .unwrap()
                .naive_utc(),
            id: 42,
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn text_that_is_not_a_cursor_is_refused() {
        for text in [
            "",
            "%%%",
            &URL_SAFE_NO_PAD.encode("12"),
            &URL_SAFE_NO_PAD.encode("x:1"),
            &URL_SAFE_NO_PAD.encode("1:-1"),
            &URL_SAFE_NO_PAD.encode(format!("{}:1", i64::MAX)),
        ] {
            assert_eq!(Cursor::parse(text), Err(InvalidCursor), "{text:?}");
        }
    }
}
