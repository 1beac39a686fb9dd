//! The one place where errors become responses.
//!
//! The two doors answer in their own format: `/score` with the JSON string
//! the mini-program shows as a toast (`"數據提交失敗"`) and the right status;
//! `/v1/*` and everything else with
//! `{"error":{"code","message","fields":[{"field","message"}]}}`.
//! Internal details (broker errors, addresses) are logged, never sent.

use score_shared::{FieldError, ValidationErrors};
use warp::http::{StatusCode, header};
use warp::reject::Rejection;
use warp::reply::{self, Reply, Response};

use crate::publisher::PublishError;
use crate::results::ReadError;
use crate::wire::WireError;

/// The toast the mini-program shows on success.
pub const LEGACY_SUCCESS: &str = "數據提交成功";
/// The toast the mini-program shows on any failure.
pub const LEGACY_FAILURE: &str = "數據提交失敗";
/// What `/graderesult` answers, for the mini-program to show, when a read
/// has no valid results token for the account: the same whatever the
/// reason, and whether or not the number has ratings.
pub const LEGACY_UNAUTHORIZED: &str = "請在評分後查看結果";

/// The `WWW-Authenticate` challenge of a refused results read.
pub const RESULTS_CHALLENGE: &str = "Bearer realm=\"scores\"";

/// The legacy door's header naming an error's code where the status alone
/// does not tell it (the body is always the failure toast).
pub const ERROR_CODE_HEADER: &str = "x-error-code";

/// Seconds a client is told to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

/// What a client is told when the log did not acknowledge its event. Every
/// [`PublishError`] gets it: the event may be in the log even though no
/// acknowledgment came, and only a retry under the same `Idempotency-Key`
/// (the same event id) is sure not to write it twice.
const UNKNOWN_WRITE: &str =
    "the event is not known to be written; retry with the same Idempotency-Key";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Malformed(#[from] WireError),
    #[error("header {name} {message}")]
    InvalidHeader {
        name: &'static str,
        message: &'static str,
    },
    #[error("request body could not be read")]
    BodyRead,
    #[error("request body was not sent in time")]
    BodyTimeout,
    #[error("too many requests; retry in {} s", retry_after_seconds(*.retry_after))]
    RateLimited { retry_after: std::time::Duration },
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("content type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Unavailable(#[from] PublishError),
    #[error("the query is invalid")]
    InvalidQuery(Vec<FieldError>),
    #[error(transparent)]
    ResultsUnavailable(#[from] ReadError),
    #[error("results are not served by this instance (no SCORES_QUERY_DATABASE_URL)")]
    ResultsNotConfigured,
    #[error(
        "this Idempotency-Key was already used for a different submission; \
         send a new key for a new rating, the same body to retry"
    )]
    IdempotencyConflict,
    /// A results read without a valid results token for its account. One
    /// variant, no detail: every reason is answered alike.
    #[error(
        "reading an account's results needs the results token its submission's answer \
         carried (X-Results-Token), valid and for this account"
    )]
    Unauthorized,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_)
            | Self::Malformed(_)
            | Self::InvalidHeader { .. }
            | Self::BodyRead
            | Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) | Self::ResultsUnavailable(_) | Self::ResultsNotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_submission",
            Self::Malformed(_) | Self::BodyRead => "malformed_body",
            Self::InvalidHeader { .. } => "invalid_header",
            Self::BodyTimeout => "body_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable(_) => "log_unavailable",
            Self::InvalidQuery(_) => "invalid_query",
            Self::ResultsUnavailable(_) | Self::ResultsNotConfigured => "results_unavailable",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::Unauthorized => "unauthorized",
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::Invalid(_) => "the submission is invalid".to_owned(),
            Self::Unavailable(_) => UNKNOWN_WRITE.to_owned(),
            Self::ResultsUnavailable(_) => "results are unavailable; retry later".to_owned(),
            other => other.to_string(),
        }
    }

    fn fields(&self) -> &[FieldError] {
        match self {
            Self::Invalid(errors) => &errors.0,
            Self::InvalidQuery(fields) => fields,
            Self::Malformed(WireError::Value(field)) => std::slice::from_ref(field),
            _ => &[],
        }
    }

    /// The `/v1` JSON error response.
    pub fn to_v1_response(&self) -> Response {
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.client_message(),
                "fields": self.fields(),
            }
        });
        self.finish(reply::json(&body).into_response())
    }

    /// The legacy response: the failure toast with the right status (for a
    /// refused results read, [`LEGACY_UNAUTHORIZED`]). The field errors
    /// travel in a header so that the body stays the string the
    /// mini-program expects.
    pub fn to_legacy_response(&self) -> Response {
        let toast = match self {
            Self::Unauthorized => LEGACY_UNAUTHORIZED,
            _ => LEGACY_FAILURE,
        };
        let mut response = self.finish(reply::json(&toast).into_response());
        let invalid: &[FieldError] = match self {
            Self::Invalid(errors) => &errors.0,
            Self::Malformed(WireError::Value(field)) => std::slice::from_ref(field),
            _ => &[],
        };
        if matches!(self, Self::IdempotencyConflict | Self::Unauthorized) {
            // The body must stay the toast; the code travels in a header
            // so that a client can tell this failure from the others.
            response.headers_mut().insert(
                ERROR_CODE_HEADER,
                header::HeaderValue::from_static(self.code()),
            );
        }
        let detail = invalid
            .iter()
            .map(|e| e.field)
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(value) = header::HeaderValue::from_str(&detail)
            && !detail.is_empty()
        {
            response.headers_mut().insert("x-invalid-fields", value);
        }
        response
    }

    fn finish(&self, mut response: Response) -> Response {
        *response.status_mut() = self.status();
        let retry_after = match self {
            Self::Unavailable(_) | Self::ResultsUnavailable(_) => {
                Some(RETRY_AFTER_SECONDS.to_owned())
            }
            Self::Overloaded => Some("1".to_owned()),
            Self::RateLimited { retry_after } => {
                Some(retry_after_seconds(*retry_after).to_string())
            }
            _ => None,
        };
        if let Some(value) = retry_after.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if matches!(self, Self::Unauthorized) {
            let headers = response.headers_mut();
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(RESULTS_CHALLENGE),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
        }
        response
    }

    /// The error a rejection stands for. Called once a route's path has
    /// matched, so any rejection warp produced itself is about the method.
    pub fn from_rejection(rejection: &Rejection) -> Self {
        if let Some(error) = rejection.find::<ApiError>() {
            return error.duplicate();
        }
        if rejection.is_not_found() {
            Self::NotFound
        } else {
            Self::MethodNotAllowed
        }
    }

    /// Rejections hand out references; the few errors raised as rejections
    /// are rebuilt from them.
    fn duplicate(&self) -> Self {
        match self {
            Self::InvalidHeader { name, message } => Self::InvalidHeader { name, message },
            Self::BodyRead => Self::BodyRead,
            Self::BodyTimeout => Self::BodyTimeout,
            Self::RateLimited { retry_after } => Self::RateLimited {
                retry_after: *retry_after,
            },
            Self::Overloaded => Self::Overloaded,
            Self::PayloadTooLarge { limit } => Self::PayloadTooLarge { limit: *limit },
            Self::UnsupportedMediaType { expected } => Self::UnsupportedMediaType { expected },
            Self::NotFound => Self::NotFound,
            Self::MethodNotAllowed => Self::MethodNotAllowed,
            // Validation, decoding, publishing and reading happen in
            // handlers, which answer directly; they never travel as
            // rejections.
            Self::Invalid(_)
            | Self::Malformed(_)
            | Self::Unavailable(_)
            | Self::InvalidQuery(_)
            | Self::ResultsUnavailable(_)
            | Self::ResultsNotConfigured
            | Self::IdempotencyConflict
            | Self::Unauthorized => Self::BodyRead,
        }
    }
}

/// Whole seconds, rounded up, for `Retry-After`.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::types::RDKafkaErrorCode;
    use warp::Filter;

    use super::*;

    fn publish_failures() -> [PublishError; 4] {
        [
            PublishError::NotPersisted(RDKafkaErrorCode::QueueFull),
            PublishError::PossiblyPersisted(RDKafkaErrorCode::MessageTimedOut),
            PublishError::TimedOut(Duration::from_secs(6)),
            // The event's data key was not written: the same answer.
            PublishError::KeyNotWritten(RDKafkaErrorCode::MessageTimedOut),
        ]
    }

    /// The response `answer` makes, through warp as the server sends it.
    async fn reply(
        answer: impl Fn() -> Response + Clone + Send + Sync + 'static,
    ) -> warp::http::Response<bytes::Bytes> {
        warp::test::request().reply(&warp::any().map(answer)).await
    }

    #[tokio::test]
    async fn every_publish_failure_is_a_503_telling_to_retry_with_the_same_idempotency_key() {
        for failure in publish_failures() {
            let case = format!("{failure:?}");

            let response = reply(move || ApiError::from(failure.clone()).to_v1_response()).await;

            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{case}");
            assert_eq!(response.headers()[header::RETRY_AFTER], "5", "{case}");
            let body: serde_json::Value = serde_json::from_slice(response.body()).expect("JSON");
            assert_eq!(body["error"]["code"], "log_unavailable", "{case}");
            assert_eq!(
                body["error"]["message"],
                "the event is not known to be written; retry with the same Idempotency-Key",
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn an_idempotency_conflict_is_a_422_at_both_doors() {
        let v1 = reply(|| ApiError::IdempotencyConflict.to_v1_response()).await;
        assert_eq!(v1.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_slice(v1.body()).expect("JSON");
        assert_eq!(body["error"]["code"], "idempotency_conflict");

        let legacy = reply(|| ApiError::IdempotencyConflict.to_legacy_response()).await;
        assert_eq!(legacy.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(legacy.headers()[ERROR_CODE_HEADER], "idempotency_conflict");
        let toast: String = serde_json::from_slice(legacy.body()).expect("a JSON string");
        assert_eq!(toast, LEGACY_FAILURE);
    }

    #[tokio::test]
    async fn a_refused_read_is_a_401_bearer_challenge_with_a_toast_at_the_legacy_door() {
        let v1 = reply(|| ApiError::Unauthorized.to_v1_response()).await;
        assert_eq!(v1.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(v1.headers()[header::WWW_AUTHENTICATE], RESULTS_CHALLENGE);
        assert_eq!(v1.headers()[header::CACHE_CONTROL], "no-store");
        let body: serde_json::Value = serde_json::from_slice(v1.body()).expect("JSON");
        assert_eq!(body["error"]["code"], "unauthorized");

        let legacy = reply(|| ApiError::Unauthorized.to_legacy_response()).await;
        assert_eq!(legacy.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            legacy.headers()[header::WWW_AUTHENTICATE],
            RESULTS_CHALLENGE
        );
        assert_eq!(legacy.headers()[ERROR_CODE_HEADER], "unauthorized");
        let toast: String = serde_json::from_slice(legacy.body()).expect("a JSON string");
        assert_eq!(toast, LEGACY_UNAUTHORIZED);
    }

    #[tokio::test]
    async fn every_publish_failure_is_a_503_toast_at_the_legacy_door() {
        for failure in publish_failures() {
            let case = format!("{failure:?}");

            let response =
                reply(move || ApiError::from(failure.clone()).to_legacy_response()).await;

            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{case}");
            assert_eq!(response.headers()[header::RETRY_AFTER], "5", "{case}");
            let body: String = serde_json::from_slice(response.body()).expect("a JSON string");
            assert_eq!(body, LEGACY_FAILURE, "{case}");
        }
    }
}
