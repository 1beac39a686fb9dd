//! Abuse limits: requests in flight, rate per client address and per
//! account number, and who the client is behind a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use score_shared::AccountNumber;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::ApiError;

/// The peer address of a connection, put into each request's extensions by
/// the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The limits of one ingest API.
pub struct Limits {
    in_flight: Arc<Semaphore>,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Option<DefaultKeyedRateLimiter<String>>,
    trusted_proxies: Vec<IpNet>,
}

fn per_minute(limit: u32) -> Option<Quota> {
    NonZeroU32::new(limit).map(Quota::per_minute)
}

impl Limits {
    /// The limits `config` describes (a rate of 0 is no limit).
    pub fn new(config: &Config) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            per_client: per_minute(config.rate_limit_per_client_per_minute).map(RateLimiter::keyed),
            per_account: per_minute(config.rate_limit_per_account_per_minute)
                .map(RateLimiter::keyed),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// A place among the requests in flight, or 503 when they are all taken:
    /// load is shed rather than queued without bound.
    ///
    /// # Errors
    ///
    /// [`ApiError::Overloaded`].
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded)
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

    /// Forgets clients and accounts not seen lately (the limiters keep a
    /// state per key).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_client {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_account {
            limiter.retain_recent();
        }
    }
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
        assert!(limits.check_client(client).is_ok());
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
    fn a_rate_of_zero_is_no_limit() {
        let limits = limits(&["--rate-limit-per-client-per-minute", "0"]);
        for _ in 0..1000 {
            assert!(limits.check_client(Some(ip("203.0.113.9"))).is_ok());
        }
    }

    #[test]
    fn requests_beyond_the_in_flight_cap_are_shed() {
        let limits = limits(&["--max-in-flight", "2"]);
        let first = limits.admit().unwrap();
        let _second = limits.admit().unwrap();
        assert!(matches!(limits.admit(), Err(ApiError::Overloaded)));
        drop(first);
        assert!(limits.admit().is_ok());
    }
}
