//! The results queries: `GET /v1/accounts/{acc_nbr}/scores` and the
//! mini-program's `GET /graderesult?phoneNum=…`.
//!
//! Results are private: each read must bring the results token a
//! submission for that account was answered with ([`crate::read_token`]).
//! It is checked once the query is known valid and before any MySQL work,
//! and every refusal is answered alike (401, the same body), whatever the
//! reason and whether or not the number has ratings. Refusals count against
//! a per-client limit of their own (429 beyond it) and the metric
//! `results_reads_refused_total`.

use percent_encoding::percent_decode_str;
use score_shared::{AccountNumber, FieldError};
use serde::Serialize;
use warp::http::{HeaderValue, header};
use warp::reply::{self, Reply, Response};

use super::{Admission, AppState};
use crate::consistency::{ConsistencyToken, Freshness};
use crate::error::ApiError;
use crate::results::{
    AccountResults, Cursor, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, ResultsQuery, ScoreRow,
};

/// The response header saying whether the answer includes everything up to
/// the query's consistency token.
pub const CONSISTENCY_HEADER: &str = "x-consistency";

/// `GET /v1/accounts/{acc_nbr}/scores`, the token as
/// `Authorization: Bearer`.
pub async fn account_scores(
    account_segment: String,
    admission: Admission,
    authorization: Option<HeaderValue>,
    query_string: Option<String>,
    state: AppState,
) -> Response {
    let account = percent_decode_str(&account_segment)
        .decode_utf8()
        .map(|account| account.into_owned())
        .unwrap_or_default();
    let parsed = parse_query(
        &state,
        "acc_nbr",
        Some(&account),
        query_string.as_deref(),
        true,
    );
    let token = bearer(authorization.as_ref());
    let authorized = parsed.and_then(|query| {
        authorize(
            &state,
            &admission,
            token,
            &query,
            "/v1/accounts/{acc_nbr}/scores",
        )?;
        Ok(query)
    });
    match run(&state, authorized).await {
        Ok((query, results)) => {
            let body = V1Results {
                acc_nbr: query.account.as_str(),
                summary: &results.summary,
                scores: &results.scores,
                next_cursor: results.next_cursor.map(|cursor| cursor.encode()),
                consistency: results.freshness.as_str(),
            };
            finish(reply::json(&body).into_response(), results.freshness)
        }
        Err(error) => error.to_v1_response(),
    }
}

/// `GET /graderesult?phoneNum=…&token=…[&after=…][&limit=…]`, the token as
/// the `token` parameter (what a mini-program page's URL carries) or as
/// `Authorization: Bearer`. A refusal answers the JSON string the
/// mini-program shows; other errors the `/v1` error body, as before.
pub async fn graderesult(
    admission: Admission,
    authorization: Option<HeaderValue>,
    query_string: Option<String>,
    state: AppState,
) -> Response {
    let parsed = parse_query(&state, "phoneNum", None, query_string.as_deref(), false);
    let authorized = parsed.and_then(|query| {
        let token = query_token(query_string.as_deref())
            .or_else(|| bearer(authorization.as_ref()).map(str::to_owned));
        authorize(&state, &admission, token.as_deref(), &query, "/graderesult")?;
        Ok(query)
    });
    match run(&state, authorized).await {
        Ok((query, results)) => {
            let body = LegacyResults {
                phone_num: query.account.as_str(),
                count: results.summary.submissions,
                avg_grade1: results.summary.avg_grade1,
                avg_grade2: results.summary.avg_grade2,
                avg_grade3: results.summary.avg_grade3,
                grades: results
                    .scores
                    .iter()
                    .map(|row| LegacyRow {
                        acc_nbr: query.account.as_str(),
                        row,
                    })
                    .collect(),
                consistency: results.freshness.as_str(),
            };
            finish(reply::json(&body).into_response(), results.freshness)
        }
        Err(error @ ApiError::Unauthorized) => error.to_legacy_response(),
        Err(error) => error.to_v1_response(),
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(authorization: Option<&HeaderValue>) -> Option<&str> {
    let value = authorization?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `token` parameter of a query string (already checked to hold each
/// parameter once).
fn query_token(query_string: Option<&str>) -> Option<String> {
    let pairs = query_pairs(query_string).ok()?;
    single(&pairs, "token").map(str::to_owned)
}

/// Lets the read of `query`'s account through when `token` is a valid
/// results token for it. A refusal is counted against the client's limit of
/// refused reads and in `results_reads_refused_total`, and logged with its
/// reason (never the account number).
///
/// # Errors
///
/// [`ApiError::Unauthorized`], or [`ApiError::RateLimited`] once the client
/// has been refused too often: the same whatever the reason.
fn authorize(
    state: &AppState,
    admission: &Admission,
    token: Option<&str>,
    query: &ResultsQuery,
    route: &'static str,
) -> Result<(), ApiError> {
    let Err(refusal) = state.results_tokens.verify(token, &query.account) else {
        return Ok(());
    };
    let answer = match state.limits.check_refused_read(admission.client()) {
        Ok(()) => ApiError::Unauthorized,
        Err(limited) => limited,
    };
    let status = if matches!(answer, ApiError::Unauthorized) {
        "401"
    } else {
        "429"
    };
    metrics::counter!("results_reads_refused_total", "route" => route, "status" => status)
        .increment(1);
    tracing::info!(reason = refusal.as_str(), "results read refused");
    Err(answer)
}

async fn run(
    state: &AppState,
    parsed: Result<ResultsQuery, ApiError>,
) -> Result<(ResultsQuery, AccountResults), ApiError> {
    let query = parsed?;
    let read_model = state
        .read_model
        .as_ref()
        .ok_or(ApiError::ResultsNotConfigured)?;
    let results = read_model
        .account_results(&query)
        .await
        .inspect_err(|error| {
            // MySQL's messages may quote values: the account number asked for.
            let error = score_shared::privacy::scrubbed(&error.to_string());
            tracing::warn!(error, "results query failed");
        })?;
    metrics::counter!("results_queries_total", "consistency" => results.freshness.as_str())
        .increment(1);
    Ok((query, results))
}

/// Results change with every submission: never cached, and the header says
/// how fresh they are.
fn finish(mut response: Response, freshness: Freshness) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        CONSISTENCY_HEADER,
        header::HeaderValue::from_static(freshness.as_str()),
    );
    response
}

/// The query string's pairs; a parameter given twice is refused rather than
/// guessed at. Unknown parameters are ignored (cache busters and the like).
fn query_pairs(query_string: Option<&str>) -> Result<Vec<(String, String)>, FieldError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query_string.unwrap_or(""))
        .map_err(|_| FieldError {
            field: "query",
            message: "must be a valid URL query string".to_owned(),
        })?;
    for (index, (name, _)) in pairs.iter().enumerate() {
        if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(FieldError {
                field: "query",
                message: format!("parameter {name:?} is given more than once"),
            });
        }
    }
    Ok(pairs)
}

fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Validates every part of a results query, reporting all that are wrong.
/// The account is `path_account` (`acc_nbr` in the path) or else the
/// query's `account_field` parameter (`phoneNum`); `paginated` allows
/// `cursor`.
fn parse_query(
    state: &AppState,
    account_field: &'static str,
    path_account: Option<&str>,
    query_string: Option<&str>,
    paginated: bool,
) -> Result<ResultsQuery, ApiError> {
    let pairs = query_pairs(query_string).map_err(|error| ApiError::InvalidQuery(vec![error]))?;
    let mut errors = Vec::new();
    let account = path_account
        .or_else(|| single(&pairs, account_field))
        .unwrap_or_default();
    let account = noted(
        &mut errors,
        account_field,
        AccountNumber::parse(account, &state.rules),
    );
    let after = single(&pairs, "after")
        .and_then(|text| noted(&mut errors, "after", ConsistencyToken::parse(text)));
    let limit = single(&pairs, "limit")
        .and_then(|text| noted(&mut errors, "limit", parse_limit(text)))
        .unwrap_or(PAGE_LIMIT_DEFAULT);
    let cursor = single(&pairs, "cursor")
        .filter(|_| paginated)
        .and_then(|text| noted(&mut errors, "cursor", Cursor::parse(text)));
    match account {
        Some(account) if errors.is_empty() => Ok(ResultsQuery {
            account,
            after,
            limit,
            cursor,
        }),
        _ => Err(ApiError::InvalidQuery(errors)),
    }
}

/// The value of a parameter that parsed, or `None` with its error noted
/// under `field`.
fn noted<T, E: std::fmt::Display>(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    parsed: Result<T, E>,
) -> Option<T> {
    parsed
        .map_err(|error| {
            errors.push(FieldError {
                field,
                message: error.to_string(),
            });
        })
        .ok()
}

fn parse_limit(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|limit| (1..=PAGE_LIMIT_MAX).contains(limit))
        .ok_or_else(|| format!("must be an integer from 1 to {PAGE_LIMIT_MAX}"))
}

/// The `/v1` answer.
#[derive(Serialize)]
struct V1Results<'a> {
    acc_nbr: &'a str,
    summary: &'a crate::results::Summary,
    scores: &'a [ScoreRow],
    next_cursor: Option<String>,
    consistency: &'static str,
}

/// The legacy answer: the original table's column names, flat averages.
#[derive(Serialize)]
struct LegacyResults<'a> {
    #[serde(rename = "phoneNum")]
    phone_num: &'a str,
    count: i64,
    avg_grade1: Option<f64>,
    avg_grade2: Option<f64>,
    avg_grade3: Option<f64>,
    grades: Vec<LegacyRow<'a>>,
    consistency: &'static str,
}

#[derive(Serialize)]
struct LegacyRow<'a> {
    acc_nbr: &'a str,
    #[serde(flatten)]
    row: &'a ScoreRow,
}
