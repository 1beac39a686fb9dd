//! Request handlers. Each one answers every outcome itself, so that the
//! format of an error depends on the door it came through.
//!
//! Submissions and health are here; the results queries are in
//! [`results`], the web page and the API's description in [`pages`].

pub mod pages;
pub mod results;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use score_shared::event::{idempotent_event_id, new_event_id};
use score_shared::{Channel, RawSubmission, ScoreSubmitted, Submission, ValidationRules};
use warp::http::StatusCode;
use warp::reply::{self, Reply, Response};

use crate::consistency::ConsistencyToken;
use crate::error::{ApiError, LEGACY_SUCCESS};
use crate::idempotency::{Claim, RecentKeys};
use crate::limits::{Budget, Limits};
use crate::observe::RequestId;
use crate::publisher::{Publisher, Receipt};
use crate::read_token::{RESULTS_TOKEN_HEADER, ResultsTokens};
use crate::readiness::Readiness;
use crate::results::ReadModel;
use crate::routes::MediaType;
use crate::wire;

/// What every handler needs, injected by the routes.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Publisher,
    pub rules: Arc<ValidationRules>,
    pub limits: Arc<Limits>,
    pub body_limit_bytes: u64,
    pub body_read_timeout: Duration,
    /// The results queries' MySQL side; `None` when not configured.
    pub read_model: Option<ReadModel>,
    pub pages: Arc<pages::Pages>,
    /// The idempotency keys this instance saw recently, with the digest of
    /// the submission each first came with.
    pub recent_keys: Arc<RecentKeys>,
    /// What `/readyz` answers, refreshed in the background.
    pub readiness: Readiness,
    /// Issues each submission's results token and checks those reads bring.
    pub results_tokens: Arc<ResultsTokens>,
}

/// The response header carrying a submission's consistency token.
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-consistency-token";

/// A request let in by its client's rate limit. Its place in flight was
/// taken before routing, by the server (`startup`), and is held until the
/// response is made.
pub struct Admission {
    client: Option<IpAddr>,
}

impl Admission {
    /// The mark of a request from `client` (its address, when known)
    /// within its client's rate.
    pub fn new(client: Option<IpAddr>) -> Self {
        Self { client }
    }

    /// The client's address, as the rate limits know it.
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(None)
    }
}

/// `POST /score`.
pub async fn legacy_score(
    _admission: Admission,
    media_type: MediaType,
    idempotency_key: Option<String>,
    request_id: Option<RequestId>,
    body: Bytes,
    state: AppState,
) -> Response {
    let (channel, decoded) = match media_type {
        MediaType::Form => (Channel::LegacyForm, wire::legacy_form(&body)),
        MediaType::Json => (Channel::LegacyJson, wire::legacy_json(&body)),
    };
    let outcome = match decoded {
        Ok(raw) => {
            let keys = Keys {
                idempotency_key: idempotency_key.as_deref(),
                request_id: request_id.as_ref(),
            };
            submit(&state, channel, &raw, keys).await
        }
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(accepted) => {
            let token = ConsistencyToken::from(accepted.receipt).encode();
            let reply = reply::with_header(
                reply::json(&LEGACY_SUCCESS),
                CONSISTENCY_TOKEN_HEADER,
                token,
            );
            reply::with_header(reply, RESULTS_TOKEN_HEADER, accepted.results_token).into_response()
        }
        Err(error) => error.to_legacy_response(),
    }
}

/// `POST /v1/scores`.
pub async fn v1_score(
    _admission: Admission,
    _media_type: MediaType,
    idempotency_key: Option<String>,
    request_id: Option<RequestId>,
    body: Bytes,
    state: AppState,
) -> Response {
    let outcome = match wire::v1_json(&body) {
        Ok(raw) => {
            let keys = Keys {
                idempotency_key: idempotency_key.as_deref(),
                request_id: request_id.as_ref(),
            };
            submit(&state, Channel::ApiV1, &raw, keys).await
        }
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(accepted) => {
            let receipt = accepted.receipt;
            let token = ConsistencyToken::from(receipt).encode();
            let body = serde_json::json!({
                "event_id": accepted.event.event_id,
                "status": "accepted",
                "partition": receipt.partition,
                "offset": receipt.offset,
                "consistency_token": token,
                "results_token": accepted.results_token,
            });
            let reply = reply::with_status(reply::json(&body), StatusCode::ACCEPTED);
            let reply = reply::with_header(reply, CONSISTENCY_TOKEN_HEADER, token);
            reply::with_header(reply, RESULTS_TOKEN_HEADER, accepted.results_token).into_response()
        }
        Err(error) => error.to_v1_response(),
    }
}

/// A submission the log acknowledged.
struct Accepted {
    event: ScoreSubmitted,
    receipt: Receipt,
    /// Lets its bearer read the account's results.
    results_token: String,
}

/// What identifies a submission beside its content.
struct Keys<'a> {
    /// The client's `Idempotency-Key`: the event id is derived from it.
    idempotency_key: Option<&'a str>,
    /// The request's id, carried into the event.
    request_id: Option<&'a RequestId>,
}

/// Validates, builds the event and appends it. Returns only once the broker
/// has acknowledged the event, or with the reason it could not.
#[tracing::instrument(name = "submit", skip_all, fields(channel = ?channel, account, event_id))]
async fn submit(
    state: &AppState,
    channel: Channel,
    raw: &RawSubmission,
    keys: Keys<'_>,
) -> Result<Accepted, ApiError> {
    let submission = Submission::parse(raw, &state.rules).inspect_err(|errors| {
        let fields: Vec<_> = errors.0.iter().map(|e| e.field).collect();
        tracing::info!(?fields, "submission rejected");
    })?;
    let span = tracing::Span::current();
    span.record("account", tracing::field::display(&submission.account));
    state.limits.check_account(&submission.account)?;
    let event_id = match keys.idempotency_key {
        Some(key) => idempotent_event_id(key, submission.account.as_str()),
        None => new_event_id(),
    };
    span.record("event_id", tracing::field::display(event_id));
    let mut event = ScoreSubmitted::new(event_id, channel, &submission);
    if let Some(request_id) = keys.request_id {
        event = event.with_request_id(request_id.0.clone());
    }
    if keys.idempotency_key.is_some() {
        // First write wins: a key already used for another submission is
        // refused before anything reaches the log. A key this instance
        // does not remember reaches the projector, which records the
        // conflict as a dead letter instead.
        match state.recent_keys.claim(event_id, event.submission_digest()) {
            Claim::First | Claim::Retry => {}
            Claim::Conflict => {
                tracing::info!("idempotency key reused for another submission");
                return Err(ApiError::IdempotencyConflict);
            }
        }
    }
    match state.publisher.publish(&event).await {
        Ok(receipt) => {
            tracing::debug!(
                partition = receipt.partition,
                offset = receipt.offset,
                "event appended"
            );
            let results_token = state.results_tokens.issue(&submission.account);
            Ok(Accepted {
                event,
                receipt,
                results_token,
            })
        }
        Err(error) => {
            tracing::warn!(error = %error, outcome = error.outcome(), "event not known to be written");
            Err(error.into())
        }
    }
}

/// `GET /metrics` (on the metrics address only): the process's metrics,
/// with the producer's queue depth, the keys in the key pool and the
/// requests in flight per budget sampled now.
pub async fn metrics(state: AppState) -> Response {
    metrics::gauge!("kafka_producer_queue_messages").set(state.publisher.queue_depth() as f64);
    metrics::gauge!("data_key_pool_keys").set(state.publisher.pooled_keys() as f64);
    for budget in [Budget::Writes, Budget::Reads] {
        metrics::gauge!("http_requests_in_flight", "budget" => budget.label())
            .set(state.limits.in_flight(budget) as f64);
    }
    reply::with_header(
        score_shared::telemetry::render_metrics(),
        "content-type",
        score_shared::telemetry::METRICS_CONTENT_TYPE,
    )
    .into_response()
}

/// `GET /healthz`.
pub async fn healthz() -> Response {
    reply::json(&serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the latest background probe of the broker; never a round
/// trip of its own.
pub async fn readyz(state: AppState) -> Response {
    if state.readiness.is_ready() {
        reply::json(&serde_json::json!({"status": "ready"})).into_response()
    } else {
        let body = reply::json(&serde_json::json!({"status": "broker unavailable"}));
        reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
    }
}
