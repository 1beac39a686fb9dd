use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;
use futures::FutureExt;
use futures::future::BoxFuture;
use score_shared::{AccountForgotten, SubmissionDigest};
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use super::{Applied, Projected, Projection, TableSet, first_write_wins, record_erasure};

/// `account_summary`: one row per account with its number of submissions,
/// the sums behind its average grades, and its first and last submission
/// times. `account_summary_event` remembers the events counted and their
/// digests, so that a second record of the same event (a client retry)
/// counts once, and a record of the same id with other content is an
/// idempotency conflict.
pub struct AccountSummary;

const IDS_PER_STATEMENT: usize = 1000;

/// One account's share of a batch.
#[derive(Default)]
struct Totals {
    account_ref: String,
    submissions: i64,
    sums: [i64; 3],
    first: Option<NaiveDateTime>,
    last: Option<NaiveDateTime>,
}

impl Projection for AccountSummary {
    fn name(&self) -> &'static str {
        "account_summary"
    }

    fn data_tables(&self) -> &'static [&'static str] {
        &[
            "account_summary",
            "account_summary_event",
            "account_summary_erasure",
        ]
    }

    fn apply<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        events: &'a [Projected<'a>],
    ) -> BoxFuture<'a, sqlx::Result<Applied>> {
        async move {
            let (summary_table, seen_table) = (&tables.data[0], &tables.data[1]);
            let ids: Vec<String> = events
                .iter()
                .map(|p| p.event.event_id.hyphenated().to_string())
                .collect();

            // Events counted before (by an earlier record of the same id),
            // with the digest they were counted with. Rows counted before
            // digests were stored have none: nothing to compare with, so a
            // record of their id counts as a duplicate.
            let mut counted: HashMap<String, Option<SubmissionDigest>> = HashMap::new();
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let mut select = QueryBuilder::<MySql>::new("SELECT event_id, submission_digest FROM ");
                select.push(seen_table).push(" WHERE event_id IN (");
                let mut list = select.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                select.push(") FOR UPDATE");
                let found: Vec<(String, Option<String>)> =
                    select.build_query_as().fetch_all(&mut *connection).await?;
                counted.extend(found.into_iter().map(|(id, digest)| {
                    (id, digest.and_then(|digest| SubmissionDigest::parse(&digest).ok()))
                }));
            }
            let (to_count, outcome) = first_write_wins(events, counted);

            let mut totals: BTreeMap<&str, Totals> = BTreeMap::new();
            let mut new_ids = Vec::new();
            for index in to_count {
                let projected = &events[index];
                let account_ref = projected.account_ref.to_string();
                new_ids.push((ids[index].as_str(), projected.stored_digest(), account_ref.clone()));
                if projected.forgotten {
                    // Counted as seen, never summed: a forgotten account
                    // has no summary.
                    continue;
                }
                let event = projected.event;
                let at = event.occurred_at.naive_utc();
                let entry = totals.entry(event.acc_nbr.as_str()).or_default();
                entry.account_ref = account_ref;
                entry.submissions += 1;
                for (sum, grade) in entry.sums.iter_mut().zip([event.grade1, event.grade2, event.grade3]) {
                    *sum += i64::from(grade);
                }
                entry.first = Some(entry.first.map_or(at, |first| first.min(at)));
                entry.last = Some(entry.last.map_or(at, |last| last.max(at)));
            }
            if new_ids.is_empty() {
                return Ok(outcome);
            }

            for chunk in new_ids.chunks(IDS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
                insert.push(seen_table).push(" (event_id, submission_digest, account_ref) ");
                insert.push_values(chunk, |mut values, (id, digest, account_ref)| {
                    values
                        .push_bind(*id)
                        .push_bind(digest.as_deref())
                        .push_bind(account_ref.as_str());
                });
                insert.build().execute(&mut *connection).await?;
            }

            let accounts: Vec<_> = totals.into_iter().collect();
            for chunk in accounts.chunks(IDS_PER_STATEMENT) {
                let mut upsert = QueryBuilder::<MySql>::new("INSERT INTO ");
                upsert.push(summary_table).push(
                    " (acc_nbr, submissions, grade1_sum, grade2_sum, grade3_sum, \
                     first_submission_at, last_submission_at, account_ref) ",
                );
                upsert.push_values(chunk, |mut values, (account, totals)| {
                    values
                        .push_bind(*account)
                        .push_bind(totals.submissions)
                        .push_bind(totals.sums[0])
                        .push_bind(totals.sums[1])
                        .push_bind(totals.sums[2])
                        .push_bind(totals.first)
                        .push_bind(totals.last)
                        .push_bind(totals.account_ref.as_str());
                });
                upsert.push(
                    " ON DUPLICATE KEY UPDATE \
                     submissions = submissions + VALUES(submissions), \
                     grade1_sum = grade1_sum + VALUES(grade1_sum), \
                     grade2_sum = grade2_sum + VALUES(grade2_sum), \
                     grade3_sum = grade3_sum + VALUES(grade3_sum), \
                     first_submission_at = LEAST(first_submission_at, VALUES(first_submission_at)), \
                     last_submission_at = GREATEST(last_submission_at, VALUES(last_submission_at)), \
                     account_ref = VALUES(account_ref)",
                );
                upsert.build().execute(&mut *connection).await?;
            }
            Ok(outcome)
        }
        .boxed()
    }

    /// The account's summary row goes; the events it counted stay counted
    /// (so a redelivery is still a duplicate), without their digests.
    fn forget<'a>(
        &'a self,
        connection: &'a mut MySqlConnection,
        tables: &'a TableSet,
        erasure: &'a AccountForgotten,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        async move {
            let account_ref = erasure.account_ref.to_string();
            let mut delete = QueryBuilder::<MySql>::new("DELETE FROM ");
            delete
                .push(&tables.data[0])
                .push(" WHERE account_ref = ")
                .push_bind(account_ref.as_str());
            let deleted = delete.build().execute(&mut *connection).await?;
            let mut update = QueryBuilder::<MySql>::new("UPDATE ");
            update
                .push(&tables.data[1])
                .push(" SET submission_digest = NULL WHERE account_ref = ")
                .push_bind(account_ref.as_str());
            update.build().execute(&mut *connection).await?;
            record_erasure(
                connection,
                &tables.data[2],
                erasure,
                deleted.rows_affected(),
            )
            .await
        }
        .boxed()
    }
}
