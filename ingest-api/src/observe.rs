//! What every request leaves behind for operators: a request id (taken from
//! `X-Request-Id` when the client or nginx sent a usable one, made up
//! otherwise), a span carrying it around the request's log lines, the
//! `X-Request-Id` response header, and the HTTP metrics.
//!
//! Paths are never logged nor used as labels: they hold phone numbers. The
//! route's template (`/v1/accounts/{acc_nbr}/scores`) stands for them.

use std::time::{Duration, Instant};

use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue, Method, Request, Response};

use crate::routes;

/// The header carrying the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client.
const REQUEST_ID_MAX_LEN: usize = 128;

/// The id of one request, in its extensions, for handlers that put it in
/// the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id when it is 1 to 128 visible ASCII characters, a new
    /// one otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let given = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| (1..=REQUEST_ID_MAX_LEN).contains(&id.len()))
            .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()));
        match given {
            Some(id) => Self(id.to_owned()),
            None => Self(uuid::Uuid::now_v7().simple().to_string()),
        }
    }
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
    fn an_unusable_or_missing_request_id_is_replaced_by_a_new_one() {
        let too_long = "x".repeat(REQUEST_ID_MAX_LEN + 1);
        for given in [Some(too_long.as_str()), Some("has space"), None] {
            let map = given.map(headers).unwrap_or_default();
            let id = RequestId::from_headers(&map).0;
            assert_eq!(id.len(), 32, "{given:?}: {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
