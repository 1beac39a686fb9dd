//! What every request leaves behind for operators: a request id (taken from
//! `X-Request-Id` when the client or nginx sent a safe one, made up
//! otherwise), a span carrying it around the request's log lines, the
//! `X-Request-Id` response header, and the HTTP metrics; and the metrics
//! address, where Prometheus scrapes `/metrics` away from the public one.
//!
//! Paths are never logged nor used as labels: they hold phone numbers. The
//! route's template (`/v1/accounts/{acc_nbr}/scores`) stands for them.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | route, method, status |
//! | `http_request_duration_seconds` | histogram | route, method, status |
//! | `http_requests_shed_total` | counter | budget (`writes`, `reads`) |
//! | `http_requests_in_flight` | gauge (sampled at scrape) | budget |
//! | `http_connections_open` | gauge | |
//! | `http_connections_refused_total` | counter | |
//! | `ingest_ready` | gauge (1 ready, 0 not) | |

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tracing::Instrument;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, Request, Response};

use crate::error::ApiError;
use crate::handlers::{self, AppState};
use crate::limits::Budget;
use crate::routes;

/// The header carrying the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client.
const REQUEST_ID_MAX_LEN: usize = 64;

/// Digits in a row from which a client's request id is refused: it may be
/// a phone number (11 digits in mainland China), and ids are logged and
/// written into events. Shorter rows are common in hex ids (nginx's
/// `$request_id`) and are kept.
const PHONE_NUMBER_DIGITS: usize = 11;

/// The id of one request, in its extensions, for handlers that put it in
/// the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id when it is safe to log (see [`is_safe_client_id`]),
    /// a new one otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let given = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_safe_client_id(id));
        match given {
            Some(id) => Self(id.to_owned()),
            None => Self(uuid::Uuid::now_v7().simple().to_string()),
        }
    }
}

/// Whether a client's request id may be used, logged and written into the
/// event: 1 to 64 characters among `A-Z a-z 0-9 . _ -`, and never 11 or more
/// digits in a row, a separator (`.`, `_`, `-`) between digits not breaking
/// the row, so that `13800138000` and `138-0013-8000` are both refused: a
/// phone number must never reach the logs through it.
pub fn is_safe_client_id(id: &str) -> bool {
    (1..=REQUEST_ID_MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || is_separator(b))
        && longest_digit_row(id) < PHONE_NUMBER_DIGITS
}

fn is_separator(byte: u8) -> bool {
    matches!(byte, b'.' | b'_' | b'-')
}

/// The most digits in a row in `id`; separators neither count nor break a
/// row, letters break it.
fn longest_digit_row(id: &str) -> usize {
    let mut longest = 0;
    let mut row = 0;
    for byte in id.bytes() {
        if byte.is_ascii_digit() {
            row += 1;
            longest = longest.max(row);
        } else if !is_separator(byte) {
            row = 0;
        }
    }
    longest
}

/// A method as a label: the ones the API serves, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Serves `request` with `serve`, inside a span with its request id, and
/// records its metrics.
pub async fn observed<B, R, F, Fut>(
    mut request: Request<B>,
    serve: F,
) -> Result<Response<R>, std::convert::Infallible>
where
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future<Output = Result<Response<R>, std::convert::Infallible>>,
{
    let started = Instant::now();
    let request_id = RequestId::from_headers(request.headers());
    let route = routes::route_of(request.uri().path());
    let method = method_label(request.method());
    let span = tracing::info_span!("request", request_id = %request_id.0, method, route);
    let header = HeaderValue::from_str(&request_id.0).ok();
    request.extensions_mut().insert(request_id);
    let Ok(mut response) = serve(request).instrument(span.clone()).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    record(route, method, status, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request served"
        );
    });
    Ok(response)
}

/// Records a request refused before routing because `budget` was full: in
/// `http_requests_shed_total`, and in `http_requests_total` as the 503 it
/// was answered (no duration: no work was done).
pub fn record_shed(method: &Method, path: &str, budget: Budget) {
    metrics::counter!("http_requests_shed_total", "budget" => budget.label()).increment(1);
    let labels = [
        ("route", routes::route_of(path).to_owned()),
        ("method", method_label(method).to_owned()),
        ("status", "503".to_owned()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
}

/// Every route of the metrics address: `GET /metrics`, and `/healthz` and
/// `/readyz` as on the public address (as the projector's metrics address
/// has them); anything else is a 404.
pub fn metrics_routes(
    state: AppState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let metrics_state = state.clone();
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::any().map(move || metrics_state.clone()))
        .then(handlers::metrics)
        .or(routes::healthz())
        .unify()
        .or(routes::readyz(state))
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(ApiError::from_rejection(&rejection).to_v1_response())
        })
        .unify()
}

/// Serves [`metrics_routes`] on `listener` until `stop` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(metrics_routes(state))
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
}

/// `http_requests_total` and `http_request_duration_seconds`, by route,
/// method and status.
fn record(route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_usable_client_request_id_is_kept() {
        assert_eq!(
            RequestId::from_headers(&headers("nginx-4f2a9c")).0,
            "nginx-4f2a9c"
        );
    }

    #[test]
    fn safe_client_request_ids_are_kept() {
        let longest = "x".repeat(REQUEST_ID_MAX_LEN);
        for id in [
            "nginx-4f2a9c",
            "0af7651916cd43dd8448eb211c80319c",
            "a.b_c-D",
            "1234567890",
            "2024-06-01.7",
            "12345a678901234",
            longest.as_str(),
        ] {
            assert!(is_safe_client_id(id), "{id}");
            assert_eq!(RequestId::from_headers(&headers(id)).0, id, "{id}");
        }
    }

    #[test]
    fn a_request_id_that_may_hold_a_phone_number_is_refused() {
        for id in [
            "13800138000",
            "req-13800138000",
            "8613800138000",
            "138-0013-8000",
            "138.0013.8000",
            "138_0013__8000",
            "abc13800138000def",
        ] {
            assert!(!is_safe_client_id(id), "{id}");
            let replaced = RequestId::from_headers(&headers(id)).0;
            assert_ne!(replaced, id);
            assert!(!replaced.contains("13800138000"), "{id}");
        }
    }

    #[test]
    fn a_request_id_too_long_or_with_other_characters_is_refused() {
        let too_long = "x".repeat(REQUEST_ID_MAX_LEN + 1);
        for id in [
            "",
            too_long.as_str(),
            "has space",
            "a/b",
            "a:b",
            "a=b",
            "%41",
            "a\"b",
            "{x}",
            "+8613800138000",
        ] {
            assert!(!is_safe_client_id(id), "{id:?}");
        }
    }

    #[test]
    fn an_unusable_or_missing_request_id_is_replaced_by_a_new_one() {
        let too_long = "x".repeat(REQUEST_ID_MAX_LEN + 1);
        for given in [
            Some(too_long.as_str()),
            Some("has space"),
            Some("13800138000"),
            None,
        ] {
            let map = given.map(headers).unwrap_or_default();
            let id = RequestId::from_headers(&map).0;
            assert_eq!(id.len(), 32, "{given:?}: {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
