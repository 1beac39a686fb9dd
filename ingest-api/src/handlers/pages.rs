//! The scoring web page, its results page and the API's OpenAPI document,
//! all embedded in the binary: nothing to build or deploy beside it.

use bytes::Bytes;
use score_shared::ValidationRules;
use warp::http::header;
use warp::reply::{self, Reply, Response};

use super::AppState;
use crate::error::ApiError;

/// The OpenAPI 3.1 description of every public endpoint.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

const INDEX_TEMPLATE: &str = include_str!("../../web/index.html");
const RESULTS_HTML: &str = include_str!("../../web/results.html");

/// The static files under `/assets/`: name, media type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    (
        "score.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/score.js"),
    ),
    (
        "results.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/results.js"),
    ),
];

/// Scripts and styles only from this origin; no inline code, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The pages, rendered once at start.
pub struct Pages {
    index: Bytes,
}

impl Pages {
    /// Renders the scoring page for `rules`: its grade pickers offer exactly
    /// the grades the server accepts.
    pub fn new(rules: &ValidationRules) -> Self {
        let grades = rules.grade_range();
        let index = INDEX_TEMPLATE
            .replace("{{GRADE_MIN}}", &grades.start().to_string())
            .replace("{{GRADE_MAX}}", &grades.end().to_string())
            .replace("{{TEXT_MAX_CHARS}}", &rules.text_max_chars().to_string());
        Self {
            index: Bytes::from(index),
        }
    }
}

/// `GET /`: the scoring page.
pub async fn index(state: AppState) -> Response {
    page(state.pages.index.clone(), "text/html; charset=utf-8")
}

/// `GET /results`: the results page (its script reads the query string).
pub async fn results() -> Response {
    page(
        Bytes::from_static(RESULTS_HTML.as_bytes()),
        "text/html; charset=utf-8",
    )
}

/// `GET /assets/{name}`.
pub async fn asset(name: String) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, media_type, content)) => page(Bytes::from_static(content.as_bytes()), media_type),
        None => ApiError::NotFound.to_v1_response(),
    }
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    reply::with_header(OPENAPI_JSON, header::CONTENT_TYPE, "application/json").into_response()
}

fn page(body: Bytes, media_type: &str) -> Response {
    let mut response = reply::html(body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(media_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    // Small and changing with each release: revalidate every time.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}
