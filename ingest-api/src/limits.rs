//! Abuse limits: requests in flight (one budget for submissions, another
//! for results reads), rate per client address and per account number,
//! refused results reads per client address, who the client is behind a
//! trusted proxy, and the canned answers that refuse load for less than the
//! work they refuse.
//!
//! Rates keep their per-minute quota but allow only a small burst:
//! [`BURST_SECONDS`] worth of the rate, at least one request. A client with
//! the default 600 a minute may send 50 at once, an account with 60 a minute
//! 5, then one each time the rate allows.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use score_shared::AccountNumber;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::{StatusCode, header};
use warp::reply::Response;

use crate::config::Config;
use crate::error::ApiError;

/// The peer address of a connection, put into each request's extensions by
/// the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The in-flight budgets: each request that does real work takes a place
/// from one of them, so that reads stuck on MySQL can never starve
/// submissions, which need only the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Submissions: `POST /score`, `POST /v1/scores`.
    Writes,
    /// Results reads: `GET /v1/accounts/{acc_nbr}/scores`, `GET /graderesult`.
    Reads,
}

impl Budget {
    /// The budget as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Writes => "writes",
            Self::Reads => "reads",
        }
    }
}

/// The limits of one ingest API.
pub struct Limits {
    writes_in_flight: Arc<Semaphore>,
    reads_in_flight: Arc<Semaphore>,
    max_writes: usize,
    max_reads: usize,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Option<DefaultKeyedRateLimiter<String>>,
    refused_reads: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpNet>,
}

/// Most refused results reads a client may make at once: enough for a
/// person whose token expired to retry a few times, far too few to probe
/// account numbers.
pub const REFUSED_READS_BURST: u32 = 5;

/// `limit` refused reads a minute with a burst of [`REFUSED_READS_BURST`]
/// (at most the minute's quota); `None` for 0, no limit.
pub fn refused_reads_per_minute(limit: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(limit)?;
    let burst = NonZeroU32::new(REFUSED_READS_BURST.min(rate.get())).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(rate).allow_burst(burst))
}

/// How many seconds' worth of its rate a client or an account may spend at
/// once.
pub const BURST_SECONDS: u64 = 5;

/// `limit` a minute with a burst of [`BURST_SECONDS`] worth (rounded up, at
/// least 1, at most the minute's quota); `None` for 0, no limit.
pub fn per_minute(limit: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(limit)?;
    Some(Quota::per_minute(rate).allow_burst(burst_of(rate)))
}

fn burst_of(rate_per_minute: NonZeroU32) -> NonZeroU32 {
    let worth = (u64::from(rate_per_minute.get()) * BURST_SECONDS).div_ceil(60);
    let burst = u32::try_from(worth).unwrap_or(u32::MAX);
    NonZeroU32::new(burst.clamp(1, rate_per_minute.get())).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    /// The limits `config` describes (a rate of 0 is no limit; a budget of
    /// 0 is taken as 1).
    pub fn new(config: &Config) -> Self {
        let max_writes = config.max_in_flight_writes.max(1);
        let max_reads = config.max_in_flight_reads.max(1);
        Self {
            writes_in_flight: Arc::new(Semaphore::new(max_writes)),
            reads_in_flight: Arc::new(Semaphore::new(max_reads)),
            max_writes,
            max_reads,
            per_client: per_minute(config.rate_limit_per_client_per_minute).map(RateLimiter::keyed),
            per_account: per_minute(config.rate_limit_per_account_per_minute)
                .map(RateLimiter::keyed),
            refused_reads: refused_reads_per_minute(
                config.rate_limit_refused_reads_per_client_per_minute,
            )
            .map(RateLimiter::keyed),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    fn semaphore(&self, budget: Budget) -> &Arc<Semaphore> {
        match budget {
            Budget::Writes => &self.writes_in_flight,
            Budget::Reads => &self.reads_in_flight,
        }
    }

    /// A place among `budget`'s requests in flight, or 503 when they are
    /// all taken: load is shed rather than queued without bound.
    ///
    /// # Errors
    ///
    /// [`ApiError::Overloaded`].
    pub fn admit(&self, budget: Budget) -> Result<OwnedSemaphorePermit, ApiError> {
        self.semaphore(budget)
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded)
    }

    /// How many of `budget`'s places are taken now.
    pub fn in_flight(&self, budget: Budget) -> usize {
        let max = match budget {
            Budget::Writes => self.max_writes,
            Budget::Reads => self.max_reads,
        };
        max.saturating_sub(self.semaphore(budget).available_permits())
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the last address in `X-Forwarded-For` that is not one.
    pub fn client_address(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: Option<&str>,
    ) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = forwarded_for
            .unwrap_or_default()
            .split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        )
    }

    /// Counts a request from `client`.
    ///
    /// # Errors
    ///
    /// [`ApiError::RateLimited`] with the wait before the next is allowed.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.per_client, client) {
            (Some(limiter), Some(client)) => check(limiter, &client),
            _ => Ok(()),
        }
    }

    /// Counts a submission for `account`.
    ///
    /// # Errors
    ///
    /// [`ApiError::RateLimited`] with the wait before the next is allowed.
    pub fn check_account(&self, account: &AccountNumber) -> Result<(), ApiError> {
        match &self.per_account {
            Some(limiter) => check(limiter, &account.as_str().to_owned()),
            None => Ok(()),
        }
    }

    /// Counts a refused results read from `client`.
    ///
    /// # Errors
    ///
    /// [`ApiError::RateLimited`] once the client has been refused more than
    /// its own limit of refused reads allows.
    pub fn check_refused_read(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.refused_reads, client) {
            (Some(limiter), Some(client)) => check(limiter, &client),
            _ => Ok(()),
        }
    }

    /// Forgets clients and accounts not seen lately (the limiters keep a
    /// state per key).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.refused_reads {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_client {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_account {
            limiter.retain_recent();
        }
    }
}

/// The `/v1` error body of a shed request: what
/// `ApiError::Overloaded.to_v1_response()` answers, written out once.
const OVERLOADED_V1_BODY: &str = r#"{"error":{"code":"overloaded","message":"too many requests in flight; retry shortly","fields":[]}}"#;

/// The answer to a request refused because its budget is full, made without
/// routing it or reading its headers or body: the failure toast at the
/// legacy door (`legacy`), the `/v1` error body everywhere else; 503 with
/// `Retry-After: 1` either way.
pub fn shed_response(legacy: bool) -> Response {
    let body: &'static str = if legacy {
        LEGACY_FAILURE_BODY
    } else {
        OVERLOADED_V1_BODY
    };
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// `LEGACY_FAILURE` as the JSON string the mini-program expects.
const LEGACY_FAILURE_BODY: &str = "\"數據提交失敗\"";

/// The body of the answer to a connection beyond the cap: the `/v1` error
/// shape, code `overloaded` like every other overload refusal.
const CONNECTION_REFUSAL_BODY: &str = r#"{"error":{"code":"overloaded","message":"too many connections; retry shortly","fields":[]}}"#;

/// The whole HTTP/1.1 answer written to a connection beyond the cap before
/// it is closed, without any HTTP parsing: 503, `Connection: close`,
/// `Retry-After: 1`, a JSON body. Built once.
pub fn connection_refusal() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        format!(
            "HTTP/1.1 503 Service Unavailable\r\n\
             Connection: close\r\n\
             Retry-After: 1\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {}\r\n\
             \r\n\
             {CONNECTION_REFUSAL_BODY}",
            CONNECTION_REFUSAL_BODY.len()
        )
        .into_bytes()
    })
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: wait.max(Duration::from_secs(1)),
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::error::LEGACY_FAILURE;

    fn limits(args: &[&str]) -> Limits {
        let mut argv = vec!["ingest-api"];
        argv.extend_from_slice(args);
        Limits::new(&Config::parse_from(argv))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_peer_is_the_client_when_it_is_not_a_trusted_proxy() {
        let limits = limits(&["--trusted-proxies", "10.0.0.0/8"]);
        let client = limits.client_address(Some(ip("203.0.113.9")), Some("198.51.100.1"));
        assert_eq!(
            client,
            Some(ip("203.0.113.9")),
            "X-Forwarded-For from an untrusted peer is ignored"
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_last_untrusted_forwarded_address_is_the_client() {
        let limits = limits(&["--trusted-proxies", "10.0.0.0/8,127.0.0.1/32"]);
        let client = limits.client_address(
            Some(ip("127.0.0.1")),
            Some("198.51.100.7, 203.0.113.5, 10.1.2.3"),
        );
        assert_eq!(
            client,
            Some(ip("203.0.113.5")),
            "a client cannot spoof past the first untrusted hop"
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_forwarded_address_is_the_client() {
        let limits = limits(&["--trusted-proxies", "127.0.0.1/32"]);
        assert_eq!(
            limits.client_address(Some(ip("127.0.0.1")), Some("garbage")),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn a_client_over_its_rate_is_told_when_to_come_back() {
        let limits = limits(&["--rate-limit-per-client-per-minute", "2"]);
        let client = Some(ip("203.0.113.9"));
        // A burst of one (5 s worth of 2 a minute, rounded up), then one
        // every 30 s.
        assert!(limits.check_client(client).is_ok());
        let refused = limits.check_client(client).unwrap_err();
        assert!(
            matches!(refused, ApiError::RateLimited { retry_after } if retry_after >= Duration::from_secs(1))
        );
        assert!(
            limits.check_client(Some(ip("203.0.113.10"))).is_ok(),
            "other clients are not affected"
        );
    }

    #[test]
    fn refused_reads_have_a_limit_of_their_own_with_a_burst_of_five() {
        let limits = limits(&[
            "--rate-limit-refused-reads-per-client-per-minute",
            "10",
            "--rate-limit-per-client-per-minute",
            "1",
        ]);
        let client = Some(ip("203.0.113.9"));
        let allowed = (0..20)
            .take_while(|_| limits.check_refused_read(client).is_ok())
            .count();
        assert_eq!(allowed, 5);
        assert!(
            limits.check_client(client).is_ok(),
            "the client's request rate is counted apart"
        );
        assert!(limits.check_refused_read(Some(ip("203.0.113.10"))).is_ok());
        let unlimited = self::limits(&["--rate-limit-refused-reads-per-client-per-minute", "0"]);
        assert!((0..100).all(|_| unlimited.check_refused_read(client).is_ok()));
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limits = limits(&["--rate-limit-per-client-per-minute", "0"]);
        for _ in 0..1000 {
            assert!(limits.check_client(Some(ip("203.0.113.9"))).is_ok());
        }
    }

    #[test]
    fn requests_beyond_the_in_flight_cap_are_shed() {
        let limits = limits(&["--max-in-flight-writes", "2"]);
        let first = limits.admit(Budget::Writes).unwrap();
        let _second = limits.admit(Budget::Writes).unwrap();
        assert!(matches!(
            limits.admit(Budget::Writes),
            Err(ApiError::Overloaded)
        ));
        assert_eq!(limits.in_flight(Budget::Writes), 2);
        drop(first);
        assert!(limits.admit(Budget::Writes).is_ok());
    }

    #[test]
    fn reads_that_take_their_whole_budget_leave_the_submissions_budget_whole() {
        let limits = limits(&["--max-in-flight-reads", "2", "--max-in-flight-writes", "1"]);
        let _reads = [
            limits.admit(Budget::Reads).unwrap(),
            limits.admit(Budget::Reads).unwrap(),
        ];
        assert!(matches!(
            limits.admit(Budget::Reads),
            Err(ApiError::Overloaded)
        ));
        assert!(
            limits.admit(Budget::Writes).is_ok(),
            "a submission is let in"
        );
    }

    #[test]
    fn a_burst_is_five_seconds_worth_of_the_rate_and_at_least_one() {
        let cases = [
            (600, 50, "the default per client"),
            (60, 5, "the default per account"),
            (13, 2, "rounded up"),
            (12, 1, "exactly one"),
            (2, 1, "never zero"),
            (1, 1, "never zero"),
            (u32::MAX, u32::MAX / 12 + 1, "no overflow"),
        ];
        for (rate, burst, case) in cases {
            let quota = per_minute(rate).expect("a limit");
            assert_eq!(quota.burst_size().get(), burst, "{case}");
            assert_eq!(
                quota.replenish_interval(),
                Quota::per_minute(NonZeroU32::new(rate).unwrap()).replenish_interval(),
                "{case}: the rate itself is unchanged"
            );
        }
        assert!(per_minute(0).is_none(), "0 is no limit");
    }

    #[test]
    fn a_client_may_burst_only_a_few_seconds_worth_not_its_whole_minute() {
        // 60 a minute: one more each second after the burst of 5.
        let limits = limits(&["--rate-limit-per-client-per-minute", "60"]);
        let client = Some(ip("203.0.113.9"));
        let allowed = (0..60)
            .take_while(|_| limits.check_client(client).is_ok())
            .count();
        assert_eq!(allowed, 5);
    }

    /// The response `answer` makes, through warp as the server sends it.
    async fn reply(
        answer: impl Fn() -> Response + Clone + Send + Sync + 'static,
    ) -> warp::http::Response<bytes::Bytes> {
        use warp::Filter;
        warp::test::request().reply(&warp::any().map(answer)).await
    }

    #[tokio::test]
    async fn a_shed_request_gets_what_the_error_module_answers_an_overload_at_each_door() {
        for legacy in [false, true] {
            let canned = reply(move || shed_response(legacy)).await;
            let made = reply(move || {
                if legacy {
                    ApiError::Overloaded.to_legacy_response()
                } else {
                    ApiError::Overloaded.to_v1_response()
                }
            })
            .await;
            assert_eq!(canned.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(canned.status(), made.status(), "legacy: {legacy}");
            assert_eq!(canned.headers()[header::RETRY_AFTER], "1");
            assert_eq!(
                canned.headers()[header::CONTENT_TYPE],
                made.headers()[header::CONTENT_TYPE]
            );
            let canned: serde_json::Value = serde_json::from_slice(canned.body()).unwrap();
            let made: serde_json::Value = serde_json::from_slice(made.body()).unwrap();
            assert_eq!(canned, made, "legacy: {legacy}");
        }
        assert_eq!(
            serde_json::to_string(LEGACY_FAILURE).unwrap(),
            LEGACY_FAILURE_BODY
        );
    }

    #[test]
    fn the_connection_refusal_is_a_complete_503_that_closes() {
        let text = std::str::from_utf8(connection_refusal()).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 503 Service Unavailable"));
        let headers: Vec<&str> = lines.collect();
        for expected in [
            "Connection: close",
            "Retry-After: 1",
            "Content-Type: application/json",
        ] {
            assert!(headers.contains(&expected), "{expected}: {head}");
        }
        assert!(
            headers.contains(&format!("Content-Length: {}", body.len()).as_str()),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["fields"], serde_json::json!([]));
    }
}
