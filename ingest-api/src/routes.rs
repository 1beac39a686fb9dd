//! The routes, each built by one function. Handlers live in [`crate::handlers`].
//!
//! Once a route's path has matched, it answers every request itself (in its
//! own error format), so `or` only falls through on paths.
//!
//! A request's place in flight is taken before any route runs, by the
//! server, from the budget [`budget_of`] names; the routes only check the
//! client's rate. `/metrics` is not among them: it is served on the
//! metrics address alone ([`crate::observe::metrics_routes`]).

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::http::{HeaderMap, HeaderValue, Method};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::error::ApiError;
use crate::handlers::{self, Admission, AppState};
use crate::limits::{Budget, PeerAddr};
use crate::observe::RequestId;

/// Every route [`routes`] serves, as `(method, path template)`: the list
/// `openapi.json` must document, no more, no less (`tests/openapi.rs`
/// checks both the list and that each entry is really answered).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/score"),
    ("POST", "/v1/scores"),
    ("GET", "/v1/accounts/{acc_nbr}/scores"),
    ("GET", "/graderesult"),
    ("GET", "/"),
    ("GET", "/results"),
    ("GET", "/assets/{name}"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The in-flight budget a request takes its place from, decided from its
/// method and path alone (no allocation, no header read): submissions from
/// [`Budget::Writes`], results reads from [`Budget::Reads`]; `None` for the
/// rest (pages, health, unknown paths), which is cheap, bounded by the
/// connection cap, and never waits on the broker or MySQL.
pub fn budget_of(method: &Method, path: &str) -> Option<Budget> {
    match (method, route_of(path)) {
        (&Method::POST, "/score" | "/v1/scores") => Some(Budget::Writes),
        (&Method::GET, "/v1/accounts/{acc_nbr}/scores" | "/graderesult") => Some(Budget::Reads),
        _ => None,
    }
}

/// The template in [`ROUTES`] that `path` falls under (`{…}` matches one
/// segment), or `unmatched`: a label of bounded cardinality that never
/// holds the path's values.
pub fn route_of(path: &str) -> &'static str {
    ROUTES
        .iter()
        .map(|(_, template)| *template)
        .find(|template| template_matches(template, path))
        .unwrap_or("unmatched")
}

/// Segment by segment, without allocating: this runs for every request.
fn template_matches(template: &str, path: &str) -> bool {
    let mut expected = template.split('/');
    let mut actual = path.split('/');
    loop {
        match (expected.next(), actual.next()) {
            (None, None) => return true,
            (Some(expected), Some(actual))
                if expected == actual || (expected.starts_with('{') && !actual.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Every route, with the fallback that answers unknown paths.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Boxed in groups: one chain of every route is too deep for the
    // compiler's type layout.
    let submissions = legacy_score(state.clone())
        .or(v1_scores(state.clone()))
        .unify()
        .boxed();
    let results = account_scores(state.clone())
        .or(graderesult(state.clone()))
        .unify()
        .boxed();
    let pages = index_page(state.clone())
        .or(results_page())
        .unify()
        .or(assets())
        .unify()
        .boxed();
    let operations = openapi()
        .or(healthz())
        .unify()
        .or(readyz(state))
        .unify()
        .boxed();
    submissions
        .or(results)
        .unify()
        .or(pages)
        .unify()
        .or(operations)
        .unify()
        .recover(|rejection: Rejection| async move {
            Ok::<_, Infallible>(ApiError::from_rejection(&rejection).to_v1_response())
        })
        .unify()
}

/// `POST /score`: the mini-program's form (or the same fields as JSON);
/// answers with the JSON string it shows as a toast.
pub fn legacy_score(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let submit = warp::post()
        .and(admission(state.clone()))
        .and(media_type(
            &[MediaType::Form, MediaType::Json],
            "application/x-www-form-urlencoded or application/json",
        ))
        .and(idempotency_key())
        .and(warp::ext::optional::<RequestId>())
        .and(limited_body(
            state.body_limit_bytes,
            state.body_read_timeout,
        ))
        .and(with_state(state))
        .then(handlers::legacy_score)
        .recover(|rejection: Rejection| async move {
            Ok::<_, Infallible>(ApiError::from_rejection(&rejection).to_legacy_response())
        })
        .unify();
    warp::path!("score").and(submit)
}

/// `POST /v1/scores`: a JSON object; answers `202` with the event's id and
/// its place in the log.
pub fn v1_scores(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let submit = warp::post()
        .and(admission(state.clone()))
        .and(media_type(&[MediaType::Json], "application/json"))
        .and(idempotency_key())
        .and(warp::ext::optional::<RequestId>())
        .and(limited_body(
            state.body_limit_bytes,
            state.body_read_timeout,
        ))
        .and(with_state(state))
        .then(handlers::v1_score)
        .recover(|rejection: Rejection| async move {
            Ok::<_, Infallible>(ApiError::from_rejection(&rejection).to_v1_response())
        })
        .unify();
    warp::path!("v1" / "scores").and(submit)
}

/// `GET /v1/accounts/{acc_nbr}/scores[?after=…&limit=…&cursor=…]` with
/// `Authorization: Bearer <results token>`: the account's submissions,
/// newest first, and its averages.
pub fn account_scores(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "accounts" / String / "scores")
        .and(warp::get())
        .and(admission(state.clone()))
        .and(authorization())
        .and(raw_query())
        .and(with_state(state))
        .then(handlers::results::account_scores)
}

/// `GET /graderesult?phoneNum=…&token=…[&after=…&limit=…]` (or the token
/// as `Authorization: Bearer`): the same for the mini-program's results
/// page, in the original table's terms.
pub fn graderesult(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("graderesult")
        .and(warp::get())
        .and(admission(state.clone()))
        .and(authorization())
        .and(raw_query())
        .and(with_state(state))
        .then(handlers::results::graderesult)
}

/// `GET /`: the scoring web page.
pub fn index_page(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .and(with_state(state))
        .then(handlers::pages::index)
}

/// `GET /results?phoneNum=…[&after=…]`: the web results page.
pub fn results_page() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("results")
        .and(warp::get())
        .then(handlers::pages::results)
}

/// `GET /assets/{name}`: the pages' styles and scripts.
pub fn assets() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("assets" / String)
        .and(warp::get())
        .then(handlers::pages::asset)
}

/// `GET /openapi.json`: the API's OpenAPI 3.1 description.
pub fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json")
        .and(warp::get())
        .then(handlers::pages::openapi)
}

/// `GET /healthz`: the process is alive.
pub fn healthz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .then(handlers::healthz)
}

/// `GET /readyz`: the broker answers; 503 otherwise. MySQL plays no part:
/// submissions need only the broker.
pub fn readyz(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .then(handlers::readyz)
}

/// The raw query string, if the request has one.
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The body encodings a route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    Form,
    Json,
}

/// Extracts the request's media type when it is one of `accepted`; rejects
/// with 415 otherwise (and when the header is missing).
fn media_type(
    accepted: &'static [MediaType],
    expected: &'static str,
) -> impl Filter<Extract = (MediaType,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: HeaderMap| async move {
        let essence = headers
            .get(warp::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let media_type = match essence.as_deref() {
            Some("application/x-www-form-urlencoded") => Some(MediaType::Form),
            Some("application/json") => Some(MediaType::Json),
            _ => None,
        };
        match media_type {
            Some(media_type) if accepted.contains(&media_type) => Ok(media_type),
            _ => Err(warp::reject::custom(ApiError::UnsupportedMediaType {
                expected,
            })),
        }
    })
}

/// Longest accepted `Idempotency-Key`.
const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(|headers: HeaderMap| async move {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let valid = value
            .to_str()
            .ok()
            .filter(|key| (1..=IDEMPOTENCY_KEY_MAX_LEN).contains(&key.len()))
            .filter(|key| key.bytes().all(|b| b.is_ascii_graphic()));
        match valid {
            Some(key) => Ok(Some(key.to_owned())),
            None => Err(warp::reject::custom(ApiError::InvalidHeader {
                name: "Idempotency-Key",
                message: "must be 1 to 255 visible ASCII characters",
            })),
        }
    })
}

/// Lets a request in when its client is within its rate (429 otherwise).
/// Its place in flight was taken before routing, by the server.
fn admission(state: AppState) -> impl Filter<Extract = (Admission,), Error = Rejection> + Clone {
    warp::ext::optional::<PeerAddr>()
        .and(warp::addr::remote())
        .and(forwarded_for())
        .and_then(
            move |ours: Option<PeerAddr>,
                  warps: Option<std::net::SocketAddr>,
                  forwarded: Option<HeaderValue>| {
                let limits = state.limits.clone();
                async move {
                    let peer = ours
                        .map(|peer| peer.0)
                        .or(warps)
                        .map(|address| address.ip());
                    let forwarded = forwarded.as_ref().and_then(|value| value.to_str().ok());
                    let client = limits.client_address(peer, forwarded);
                    limits.check_client(client).map_err(warp::reject::custom)?;
                    Ok::<_, Rejection>(Admission::new(client))
                }
            },
        )
}

/// The `Authorization` header, if any, as sent: a value that is not visible
/// ASCII is refused later like any other invalid token, never as a 400.
fn authorization() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("authorization")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The `X-Forwarded-For` header, if any, without copying the other headers;
/// a value that is not visible ASCII is ignored later, never refused.
fn forwarded_for() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("x-forwarded-for")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The request body, refused with 413 as soon as it is known to exceed
/// `limit`: from `Content-Length` before reading, or while reading a body
/// that declared none (chunked); a body not complete within `timeout` is a
/// 408.
fn limited_body(
    limit: u64,
    timeout: Duration,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| async move {
            let declared = headers
                .get(warp::http::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            match declared {
                Some(length) if length > limit => {
                    Err(warp::reject::custom(ApiError::PayloadTooLarge { limit }))
                }
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |stream| async move {
            tokio::time::timeout(timeout, collect_limited(stream, limit))
                .await
                .map_err(|_| warp::reject::custom(ApiError::BodyTimeout))?
        })
}

async fn collect_limited<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
) -> Result<Bytes, Rejection> {
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| warp::reject::custom(ApiError::BodyRead))?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge { limit }));
        }
        body.put(chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_labelled_by_its_route_template_never_by_its_values() {
        let cases = [
            ("/", "/"),
            ("/score", "/score"),
            (
                "/v1/accounts/13800138000/scores",
                "/v1/accounts/{acc_nbr}/scores",
            ),
            ("/assets/app.css", "/assets/{name}"),
            ("/v1/accounts//scores", "unmatched"),
            ("/v1/accounts/13800138000", "unmatched"),
            ("/score/13800138000", "unmatched"),
            ("", "unmatched"),
        ];
        for (path, route) in cases {
            assert_eq!(route_of(path), route, "{path}");
        }
    }

    #[test]
    fn submissions_and_reads_take_places_from_their_own_budgets_and_the_rest_from_none() {
        let cases = [
            (Method::POST, "/score", Some(Budget::Writes)),
            (Method::POST, "/v1/scores", Some(Budget::Writes)),
            (
                Method::GET,
                "/v1/accounts/13800138000/scores",
                Some(Budget::Reads),
            ),
            (Method::GET, "/graderesult", Some(Budget::Reads)),
            (Method::GET, "/v1/scores", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/healthz", None),
            (Method::GET, "/", None),
            (Method::POST, "/nowhere", None),
            (Method::GET, "/metrics", None),
        ];
        for (method, path, budget) in cases {
            assert_eq!(budget_of(&method, path), budget, "{method} {path}");
        }
    }
}
