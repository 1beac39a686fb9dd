//! Load generation with latency in an HDR histogram.
//!
//! The closed loop keeps a fixed number of requests outstanding, each
//! connection sending its next request when the last one is answered: it
//! finds the throughput the system sustains. The open loop sends at a fixed
//! rate whatever the answers do, and measures each latency from the time the
//! request was *scheduled*, not sent, so that a stall counts against every
//! request it delays (no coordinated omission, as wrk2 does).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, from 1 µs to a minute.
const HIGHEST_MICROS: u64 = 60_000_000;

/// What one run of load saw.
#[derive(Clone, Debug)]
pub struct Latencies {
    pub histogram: Histogram<u64>,
    /// Requests answered with success.
    pub ok: u64,
    /// Failures by kind ("HTTP 503", "timeout", …).
    pub errors: BTreeMap<String, u64>,
    /// How long the measured part of the run took.
    pub elapsed: Duration,
}

impl Latencies {
    /// Nothing seen yet.
    pub fn empty() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(1, HIGHEST_MICROS));
        match outcome {
            Ok(()) => self.ok += 1,
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Records a success that took `latency`.
    pub fn record_ok(&mut self, latency: Duration) {
        self.record(latency, Ok(()));
    }

    fn merge(&mut self, other: &Self) {
        self.histogram.add(&other.histogram).expect("same bounds");
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Requests that failed.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at `quantile` (0.99 for p99), in milliseconds.
    pub fn millis(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Keeps `connections` requests outstanding for `warmup + duration`, and
/// measures the last `duration`. `send(i)` makes request number `i` and says
/// whether it succeeded.
pub async fn closed_loop<F, Fut>(
    connections: usize,
    warmup: Duration,
    duration: Duration,
    send: F,
) -> Latencies
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (send, next) = (send.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = Latencies::empty();
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        return seen;
                    }
                    let outcome = send(next.fetch_add(1, Ordering::Relaxed)).await;
                    if begun >= measure_from {
                        seen.record(begun.elapsed(), outcome);
                    }
                }
            })
        })
        .collect();
    let mut total = Latencies::empty();
    for worker in workers {
        total.merge(&worker.await.expect("a load worker panicked"));
    }
    total.elapsed = Instant::now().saturating_duration_since(measure_from);
    total
}

/// Sends `rate` requests per second for `duration`, each on its own task
/// whatever the others do, and measures from each request's scheduled time.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, send: F) -> Latencies
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let total_requests = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let seen = Arc::new(Mutex::new(Latencies::empty()));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(usize::try_from(total_requests).unwrap_or(0));
    for i in 0..total_requests {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let request = send(i);
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = request.await;
            let latency = scheduled.elapsed();
            seen.lock().expect("latencies").record(latency, outcome);
        }));
    }
    for task in tasks {
        task.await.expect("a request task panicked");
    }
    let mut seen = seen.lock().expect("latencies").clone();
    seen.elapsed = start.elapsed();
    seen
}

/// Sorts a failed request into a kind for the error table.
pub fn failure_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connect".to_owned()
    } else {
        "transport".to_owned()
    }
}

/// Posts `body` with `content_type` and reads the whole answer; a non-2xx is
/// a failure named by its status.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &'static str,
    body: String,
) -> Result<bytes::Bytes, String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| failure_kind(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| failure_kind(&e))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_counts_queueing_against_the_requests_that_wait() {
        // A server that handles one request at a time in 20 ms (50/s),
        // offered 100/s for 1 s: requests queue, and the last ones wait
        // about a second. A closed loop would report 20 ms for each.
        let server = Arc::new(tokio::sync::Semaphore::new(1));
        let seen = open_loop(100.0, Duration::from_secs(1), move |_| {
            let server = server.clone();
            async move {
                let _turn = server.acquire_owned().await.expect("open");
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            }
        })
        .await;
        assert_eq!(seen.ok, 100);
        assert!(seen.millis(0.0) < 25.0, "min {}", seen.millis(0.0));
        assert!(seen.millis(0.99) > 900.0, "p99 {}", seen.millis(0.99));
    }

    #[tokio::test(start_paused = true)]
    async fn the_closed_loop_measures_after_the_warmup_only() {
        let seen = closed_loop(
            2,
            Duration::from_millis(100),
            Duration::from_millis(1000),
            |_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err("HTTP 503".to_owned())
            },
        )
        .await;
        assert_eq!(seen.ok, 0);
        let errors = seen.error_count();
        assert!(
            (190..=202).contains(&errors),
            "{errors} errors in 1 s at 2 × 100/s"
        );
        assert!((9.0..=11.0).contains(&seen.millis(0.99)));
    }
}
