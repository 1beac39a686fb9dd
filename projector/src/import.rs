//! `projector import-legacy`: brings the rows of the original service's
//! `grade` table into the event log, one `ScoreSubmitted` event per row.
//!
//! 1. Check the table has the original columns (`id` is optional).
//! 2. Read the log once from the beginning and note the ids of the legacy
//!    imports already in it, and the accounts forgotten (`projector
//!    forget`): their rows are skipped and counted, so a re-run never
//!    brings a forgotten person back.
//! 3. Read the table in a stable order; give each row a deterministic event
//!    id (from the source name and the row's `id`, or, without one, its
//!    content and its place among rows identical byte for byte, read in
//!    byte order); check it with the same
//!    rules as the ingest API; append the rows not already in the log as
//!    the API does (sealed under a data key of the account, keyed by its
//!    reference; see [`crate::append`]), keeping `insert_time` as the
//!    event's time.
//!
//! A row that breaks a rule is listed in the report file and counted, never
//! dropped silently. A re-run appends only what is missing, so an import
//! stopped half way (Ctrl-C, broker outage) is finished by running it again.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{NaiveDateTime, SubsecRound, TimeZone};
use futures::stream::TryStreamExt;
use score_shared::event::{ACCOUNT_FORGOTTEN, legacy_import_event_id};
use score_shared::{
    AccountRef, Channel, FieldError, RawSubmission, ScoreSubmitted, Submission, masked,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::append::SealingAppender;
use crate::config::ImportLegacyArgs;
use crate::log_reader::{LogReader, Start};

/// The original table's columns, all required but `id`.
const REQUIRED_COLUMNS: [&str; 8] = [
    "acc_nbr",
    "grade1",
    "grade2",
    "grade3",
    "txt1",
    "txt2",
    "txt3",
    "insert_time",
];

/// How long the broker gets to answer metadata requests and acknowledge an
/// append.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Records taken at a time while scanning the log for earlier imports.
const SCAN_BATCH: usize = 1000;

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Rows read from the table.
    pub rows: u64,
    /// Events appended to the log by this run.
    pub appended: u64,
    /// Rows whose event a previous run had already appended.
    pub already_in_log: u64,
    /// Rows that break a rule, listed in the report.
    pub rejected: u64,
    /// Rows of accounts forgotten (`projector forget`), not appended.
    pub forgotten: u64,
    pub report: PathBuf,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows read: {} appended, {} already in the log, {} of forgotten accounts skipped, {} rejected",
            self.rows, self.appended, self.already_in_log, self.forgotten, self.rejected
        )?;
        if self.rejected > 0 {
            write!(f, " (listed in {})", self.report.display())?;
        }
        Ok(())
    }
}

/// A row as read, every value as text (or NULL): the original table's
/// column types are not known, and nothing is converted before the rules
/// have seen it.
#[derive(sqlx::FromRow)]
struct LegacyRow {
    id: Option<String>,
    acc_nbr: Option<String>,
    grade1: Option<String>,
    grade2: Option<String>,
    grade3: Option<String>,
    txt1: Option<String>,
    txt2: Option<String>,
    txt3: Option<String>,
    insert_time: Option<String>,
}

impl LegacyRow {
    /// Everything but `id`, for telling identical rows apart.
    fn content(&self) -> String {
        let fields = [
            &self.acc_nbr,
            &self.grade1,
            &self.grade2,
            &self.grade3,
            &self.txt1,
            &self.txt2,
            &self.txt3,
            &self.insert_time,
        ];
        serde_json::to_string(&fields).expect("strings serialize")
    }
}

/// One line of the report.
#[derive(Serialize)]
struct Rejection<'a> {
    row: &'a str,
    acc_nbr: String,
    errors: &'a [FieldError],
}

/// Runs the import; `stop` ends it early (what was appended stays, and a
/// re-run continues).
///
/// # Errors
///
/// When the table lacks a column, a service does not answer, the report
/// cannot be written, or the broker refuses an append.
pub async fn import_legacy(
    args: &ImportLegacyArgs,
    stop: &CancellationToken,
) -> anyhow::Result<ImportSummary> {
    let rules = args
        .validation
        .rules()
        .context("invalid validation settings")?;
    let source = args.source_name.as_deref().unwrap_or(&args.table);
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&args.legacy_database_url)
        .await
        .context("connecting to the legacy database")?;
    let has_id = check_columns(&pool, &args.table).await?;
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{}`",
        args.table
    )))
    .fetch_one(&pool)
    .await
    .context("counting the legacy rows")?;
    tracing::info!(table = %args.table, rows = total, has_id, "importing legacy rows");

    score_shared::kafka::ensure_topic(&args.kafka)
        .await
        .context("making sure the topic exists")?;
    let earlier = earlier_log(args, stop).await?;
    let mut appender =
        SealingAppender::new(&args.kafka, &args.personal, args.max_in_flight).await?;
    let mut report = std::io::BufWriter::new(
        std::fs::File::create(&args.report)
            .with_context(|| format!("creating the report {}", args.report.display()))?,
    );
    let progress = crate::progress::bar(
        total.max(0) as u64,
        &format!("importing {}", args.table),
        "rows",
    );
    let mut summary = ImportSummary {
        report: args.report.clone(),
        ..ImportSummary::default()
    };

    let mut rows = sqlx::query_as::<_, LegacyRow>(AssertSqlSafe(select_rows(&args.table, has_id)))
        .fetch(&pool);
    let mut previous_content = String::new();
    let mut occurrence = 0_u64;
    while let Some(row) = rows.try_next().await.context("reading the legacy rows")? {
        if stop.is_cancelled() {
            bail!(
                "import stopped after {} appends; run it again to continue",
                summary.appended
            );
        }
        summary.rows += 1;
        progress.inc(1);
        // Identical rows (no id) are adjacent in the read order; their
        // place among each other tells them apart.
        let identity = match &row.id {
            Some(id) => format!("id:{id}"),
            None => {
                let content = row.content();
                if content == previous_content {
                    occurrence += 1;
                } else {
                    occurrence = 0;
                    previous_content = content;
                }
                format!("content:{previous_content}#{occurrence}")
            }
        };
        let event_id = legacy_import_event_id(source, &identity);
        let event = match to_event(&row, event_id, args.insert_time_offset, &rules) {
            Ok(event) => event,
            Err(errors) => {
                summary.rejected += 1;
                let position = format!("position:{}", summary.rows);
                let line = Rejection {
                    row: row.id.as_deref().map_or(position.as_str(), |_| &identity),
                    acc_nbr: masked(row.acc_nbr.as_deref().unwrap_or_default()),
                    errors: &errors,
                };
                serde_json::to_writer(&mut report, &line).context("writing the report")?;
                report.write_all(b"\n").context("writing the report")?;
                continue;
            }
        };
        if earlier.imported.contains(&event_id) {
            summary.already_in_log += 1;
            continue;
        }
        let account = appender.account_of(&event);
        if earlier.forgotten.contains(&account) {
            summary.forgotten += 1;
            continue;
        }
        appender.rating(event, account).await.with_context(|| {
            format!(
                "the broker refused an append after {} were acknowledged; run the import again to continue",
                appender.appended()
            )
        })?;
        summary.appended = appender.appended();
    }
    appender.flush().await.with_context(|| {
        format!(
            "the broker refused an append after {} were acknowledged; run the import again to continue",
            appender.appended()
        )
    })?;
    summary.appended = appender.appended();
    report.flush().context("writing the report")?;
    progress.finish_and_clear();
    tracing::info!(
        rows = summary.rows,
        appended = summary.appended,
        already_in_log = summary.already_in_log,
        rejected = summary.rejected,
        forgotten = summary.forgotten,
        "legacy import finished"
    );
    Ok(summary)
}

/// The rules the ingest API applies, on a row's text values; then the
/// event, dated by the row's `insert_time`.
fn to_event(
    row: &LegacyRow,
    event_id: Uuid,
    offset: chrono::FixedOffset,
    rules: &score_shared::ValidationRules,
) -> Result<ScoreSubmitted, Vec<FieldError>> {
    let text = |value: &Option<String>| value.clone().map(Value::String);
    let raw = RawSubmission {
        acc_nbr: text(&row.acc_nbr),
        grades: [text(&row.grade1), text(&row.grade2), text(&row.grade3)],
        // The original wrote every comment, empty or not; a NULL one reads
        // as empty, as an absent one does at the API.
        texts: [text(&row.txt1), text(&row.txt2), text(&row.txt3)],
        scene: None,
    };
    let parsed = Submission::parse(&raw, rules);
    let occurred_at = row
        .insert_time
        .as_deref()
        .and_then(|time| NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.f").ok())
        .and_then(|time| offset.from_local_datetime(&time).single());
    match (parsed, occurred_at) {
        (Ok(submission), Some(occurred_at)) => {
            let mut event = ScoreSubmitted::new(event_id, Channel::LegacyImport, &submission);
            event.occurred_at = occurred_at.to_utc().trunc_subsecs(6);
            Ok(event)
        }
        (parsed, occurred_at) => {
            let mut errors = parsed.err().map(|e| e.0).unwrap_or_default();
            if occurred_at.is_none() {
                errors.push(FieldError {
                    field: "insert_time",
                    message: "must be a date and time (YYYY-MM-DD HH:MM:SS)".to_owned(),
                });
            }
            Err(errors)
        }
    }
}

/// Whether the table has an `id` column; an error names the missing ones.
async fn check_columns(pool: &MySqlPool, table: &str) -> anyhow::Result<bool> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT LOWER(CAST(column_name AS CHAR)) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .context("reading the legacy table's columns")?;
    if columns.is_empty() {
        bail!("table {table:?} does not exist in the legacy database");
    }
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .into_iter()
        .filter(|column| !columns.iter().any(|c| c == column))
        .collect();
    if !missing.is_empty() {
        bail!(
            "table {table:?} lacks the original columns {}; expected {}",
            missing.join(", "),
            REQUIRED_COLUMNS.join(", ")
        );
    }
    Ok(columns.iter().any(|c| c == "id"))
}

/// Every column as text, in an order that is the same on every run: by
/// `id`, or by every column so that identical rows are adjacent.
fn select_rows(table: &str, has_id: bool) -> String {
    let id = if has_id { "CAST(id AS CHAR)" } else { "NULL" };
    // Without an id, identical rows must come together, and in the same
    // order on every run: ordered by a digest of their exact bytes. (Under
    // the table's collation "好" and "好 ", or "Ok" and "ok", are equal:
    // ordered by the columns themselves they would come interleaved, in any
    // order, and their place among identical rows would change.)
    let order = if has_id {
        "id".to_owned()
    } else {
        let columns: Vec<String> = REQUIRED_COLUMNS
            .iter()
            .map(|column| format!("IFNULL(HEX(CAST({column} AS BINARY)), 'N')"))
            .collect();
        format!("SHA2(CONCAT_WS(',', {}), 256)", columns.join(", "))
    };
    format!(
        "SELECT {id} AS id, CAST(acc_nbr AS CHAR) AS acc_nbr, \
         CAST(grade1 AS CHAR) AS grade1, CAST(grade2 AS CHAR) AS grade2, CAST(grade3 AS CHAR) AS grade3, \
         CAST(txt1 AS CHAR) AS txt1, CAST(txt2 AS CHAR) AS txt2, CAST(txt3 AS CHAR) AS txt3, \
         CAST(insert_time AS CHAR) AS insert_time FROM `{table}` ORDER BY {order}"
    )
}

/// The part of an event the scan needs.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    event_type: Option<String>,
    event_id: Option<Uuid>,
    channel: Option<String>,
    account_ref: Option<AccountRef>,
}

/// What the log already holds that matters to an import.
#[derive(Debug, Default)]
struct EarlierLog {
    /// The ids of the legacy imports in it.
    imported: HashSet<Uuid>,
    /// The accounts forgotten in it.
    forgotten: HashSet<AccountRef>,
}

/// Reads every partition from its start to the end it had when the scan
/// began, for earlier imports and forgotten accounts.
async fn earlier_log(
    args: &ImportLegacyArgs,
    stop: &CancellationToken,
) -> anyhow::Result<EarlierLog> {
    let mut reader = LogReader::open(&args.kafka, "import", Start::Beginning).await?;
    let mut earlier = EarlierLog::default();
    let total = reader.total();
    if reader.is_done() {
        return Ok(earlier);
    }
    reader
        .read_to_the_end(
            SCAN_BATCH,
            BROKER_TIMEOUT,
            stop,
            "import stopped while reading the log; nothing was appended",
            "reading the log for earlier imports",
            |records| {
                let probes = records.iter().filter_map(|record| {
                    serde_json::from_slice::<Probe>(record.payload.as_deref()?).ok()
                });
                for probe in probes {
                    if probe.event_type.as_deref() == Some(ACCOUNT_FORGOTTEN) {
                        earlier.forgotten.extend(probe.account_ref);
                    } else if probe.channel.as_deref() == Some(Channel::LegacyImport.as_str()) {
                        earlier.imported.extend(probe.event_id);
                    }
                }
            },
        )
        .await?;
    tracing::info!(
        events = total,
        earlier_imports = earlier.imported.len(),
        forgotten_accounts = earlier.forgotten.len(),
        "read the log"
    );
    Ok(earlier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(acc_nbr: &str, grades: [&str; 3], time: &str) -> LegacyRow {
        LegacyRow {
            id: Some("7".to_owned()),
            acc_nbr: Some(acc_nbr.to_owned()),
            grade1: Some(grades[0].to_owned()),
            grade2: Some(grades[1].to_owned()),
            grade3: Some(grades[2].to_owned()),
            txt1: Some("很好".to_owned()),
            txt2: None,
            txt3: Some(String::new()),
            insert_time: Some(time.to_owned()),
        }
    }

    fn utc() -> chrono::FixedOffset {
        chrono::FixedOffset::east_opt(0).unwrap()
    }

    #[test]
    fn a_valid_row_keeps_its_time_and_reads_a_null_comment_as_empty() {
        let event = to_event(
            &row("13800138000", ["5", "4", "3"], "2019-03-01 08:30:00.123456"),
            Uuid::nil(),
            utc(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            event.occurred_at.to_rfc3339(),
            "2019-03-01T08:30:00.123456+00:00"
        );
        assert_eq!(event.channel, Channel::LegacyImport);
        assert_eq!((event.grade1, event.grade2, event.grade3), (5, 4, 3));
        assert_eq!((event.txt1.as_str(), event.txt2.as_str()), ("很好", ""));
    }

    #[test]
    fn an_insert_time_in_china_time_is_stored_as_utc() {
        let china = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
        let event = to_event(
            &row("13800138000", ["5", "4", "3"], "2019-03-01 08:30:00"),
            Uuid::nil(),
            china,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(event.occurred_at.to_rfc3339(), "2019-03-01T00:30:00+00:00");
    }

    #[test]
    fn a_row_that_breaks_rules_names_every_field_at_fault() {
        let errors = to_event(
            &row("abc", ["9", "4", "x"], "not a time"),
            Uuid::nil(),
            utc(),
            &Default::default(),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["acc_nbr", "grade1", "grade3", "insert_time"]);
    }

    #[test]
    fn without_an_id_the_rows_are_read_in_the_order_of_their_exact_bytes() {
        let sql = select_rows("grade", false);
        assert!(sql.contains("NULL AS id"));
        let order = sql.split("ORDER BY ").nth(1).expect("an order");
        assert!(order.starts_with("SHA2(CONCAT_WS(',', "), "{order}");
        for column in REQUIRED_COLUMNS {
            assert!(
                order.contains(&format!("IFNULL(HEX(CAST({column} AS BINARY)), 'N')")),
                "{column}: {order}"
            );
        }
        assert!(select_rows("grade", true).ends_with("ORDER BY id"));
    }
}
