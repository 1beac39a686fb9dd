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
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
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

/// The 2xx answers apart from everything else, for loads where refusals
/// are expected: fast 503s must neither hide in nor flatter the latency of
/// the requests that were accepted.
#[derive(Clone, Debug)]
pub struct Split {
    /// 2xx answers: how many, and their latency (`errors` stays empty).
    pub accepted: Latencies,
    /// Every other outcome: refusals by status and failures by kind, and
    /// their latency (`ok` stays 0).
    pub refused: Latencies,
}

impl Split {
    /// Nothing seen yet.
    pub fn empty() -> Self {
        Self {
            accepted: Latencies::empty(),
            refused: Latencies::empty(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.accepted.record(latency, Ok(())),
            Err(kind) => self.refused.record(latency, Err(kind)),
        }
    }
}

/// What a bounded load generator may hold: at most `max_in_flight`
/// requests outstanding (and so at most that many connections, one per
/// request in HTTP/1.1), and no request sent more than `late_after` after
/// its scheduled time.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_in_flight: usize,
    pub late_after: Duration,
}

/// What a bounded load saw, including what it did not send.
#[derive(Clone, Debug)]
pub struct Bounded {
    /// Requests the schedule called for (the open loop), or requests sent
    /// (the closed loop, whose schedule is its answers).
    pub scheduled: u64,
    /// Not sent: `max_in_flight` requests were already outstanding.
    pub not_sent_busy: u64,
    /// Not sent: the generator itself had fallen more than `late_after`
    /// behind its schedule (short of CPU).
    pub not_sent_late: u64,
    pub split: Split,
    /// The most requests outstanding at once.
    pub most_in_flight: usize,
    /// How long requests were sent for.
    pub window: Duration,
}

impl Bounded {
    /// Requests sent (answered, refused or failed).
    pub fn sent(&self) -> u64 {
        self.split.accepted.ok + self.split.refused.error_count()
    }

    /// Requests sent per second of the sending window: the load the server
    /// was really offered.
    pub fn offered_per_second(&self) -> f64 {
        self.sent() as f64 / self.window.as_secs_f64().max(f64::EPSILON)
    }

    /// 2xx answers per second, from the first send to the last answer.
    pub fn goodput(&self) -> f64 {
        self.split.accepted.throughput()
    }

    /// Failures of `kind` (`"HTTP 503"`, `"timeout"`, …).
    pub fn count(&self, kind: &str) -> u64 {
        self.split.refused.errors.get(kind).copied().unwrap_or(0)
    }
}

/// Offers `rate` requests per second for `duration` as [`open_loop`] does,
/// each measured from its scheduled time, but within `budget`: a request
/// due while `max_in_flight` are outstanding, or when the generator is
/// more than `late_after` behind, is counted as not sent instead of
/// queueing in the generator (which would then measure itself).
pub async fn open_loop_bounded<F, Fut>(
    rate: f64,
    duration: Duration,
    budget: Budget,
    send: F,
) -> Bounded
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let scheduled_count = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let max_in_flight = budget.max_in_flight.max(1);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let seen = Arc::new(Mutex::new(Split::empty()));
    let (mut not_sent_busy, mut not_sent_late, mut most_in_flight) = (0, 0, 0);
    let start = Instant::now();
    for i in 0..scheduled_count {
        let scheduled = start + interval.mul_f64(i as f64);
        if scheduled > Instant::now() {
            tokio::time::sleep_until(scheduled).await;
        }
        if scheduled.elapsed() > budget.late_after {
            not_sent_late += 1;
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            not_sent_busy += 1;
            continue;
        };
        most_in_flight = most_in_flight.max(max_in_flight - permits.available_permits());
        let request = send(i);
        let seen = seen.clone();
        tokio::spawn(async move {
            let outcome = request.await;
            let latency = scheduled.elapsed();
            seen.lock().expect("latencies").record(latency, outcome);
            drop(permit);
        });
    }
    let window = start.elapsed();
    // Every permit back: every request sent has been answered or failed.
    let all = u32::try_from(max_in_flight).expect("a budget that fits a semaphore");
    let _all = permits.acquire_many(all).await.expect("never closed");
    let mut split = seen.lock().expect("latencies").clone();
    split.accepted.elapsed = start.elapsed();
    split.refused.elapsed = split.accepted.elapsed;
    Bounded {
        scheduled: scheduled_count,
        not_sent_busy,
        not_sent_late,
        split,
        most_in_flight,
        window,
    }
}

/// Keeps `connections` requests outstanding, as [`closed_loop`] does, for
/// `warmup + duration`, measuring the last `duration`; the workers share
/// one record, so that thousands of them cost thousands of tasks and not
/// thousands of histograms.
pub async fn closed_loop_split<F, Fut>(
    connections: usize,
    warmup: Duration,
    duration: Duration,
    send: F,
) -> Bounded
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Split::empty()));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (send, next, seen) = (send.clone(), next.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        return;
                    }
                    let outcome = send(next.fetch_add(1, Ordering::Relaxed)).await;
                    if begun >= measure_from {
                        seen.lock()
                            .expect("latencies")
                            .record(begun.elapsed(), outcome);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a load worker panicked");
    }
    let mut split = seen.lock().expect("latencies").clone();
    split.accepted.elapsed = Instant::now().saturating_duration_since(measure_from);
    split.refused.elapsed = split.accepted.elapsed;
    let sent = split.accepted.ok + split.refused.error_count();
    Bounded {
        scheduled: sent,
        not_sent_busy: 0,
        not_sent_late: 0,
        split,
        most_in_flight: connections.max(1),
        window: duration,
    }
}

/// Sorts a failed request into a kind for the error table: `connect` (the
/// connection could not be made, a connect timeout included), `no client
/// port` (the load generator's own machine ran out of ephemeral ports: the
/// generator's failure, not the server's), `timeout` (connected, but no
/// answer in time) or `transport` (the connection failed mid-request).
pub fn failure_kind(error: &reqwest::Error) -> String {
    if error.is_connect() {
        let out_of_ports = io_error_kinds(error).any(|kind| kind == ErrorKind::AddrNotAvailable);
        if out_of_ports {
            "no client port"
        } else {
            "connect"
        }
        .to_owned()
    } else if error.is_timeout() {
        "timeout".to_owned()
    } else {
        "transport".to_owned()
    }
}

/// The kinds of the I/O errors in `error`'s chain of sources.
fn io_error_kinds(error: &(dyn std::error::Error + 'static)) -> impl Iterator<Item = ErrorKind> {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind))
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

    #[tokio::test(start_paused = true)]
    async fn the_bounded_open_loop_counts_what_its_budget_kept_it_from_sending() {
        // A server that takes 2 s to answer, offered 100/s for 1 s with room
        // for 10 requests in flight: the first 10 go, the other 90 find the
        // budget spent and are counted, not queued.
        let budget = Budget {
            max_in_flight: 10,
            late_after: Duration::from_secs(1),
        };
        let seen = open_loop_bounded(100.0, Duration::from_secs(1), budget, |i| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if i % 2 == 0 {
                Ok(())
            } else {
                Err("HTTP 503".to_owned())
            }
        })
        .await;
        assert_eq!(seen.scheduled, 100);
        assert_eq!(seen.sent(), 10);
        assert_eq!(seen.not_sent_busy, 90);
        assert_eq!(seen.not_sent_late, 0);
        assert_eq!(seen.most_in_flight, 10);
        assert_eq!(seen.split.accepted.ok, 5);
        assert_eq!(seen.count("HTTP 503"), 5);
        assert!(seen.split.accepted.millis(0.99) >= 2000.0);
    }

    #[tokio::test]
    async fn the_bounded_open_loop_skips_what_it_could_not_send_on_time() {
        // Making each request blocks the generator for 30 ms, three slots
        // of 10 ms: it cannot keep its schedule, and the slots it misses by
        // more than 5 ms are counted as late instead of sent in a burst.
        let budget = Budget {
            max_in_flight: 1000,
            late_after: Duration::from_millis(5),
        };
        let seen = open_loop_bounded(100.0, Duration::from_millis(500), budget, |_| {
            std::thread::sleep(Duration::from_millis(30));
            async { Ok(()) }
        })
        .await;
        assert_eq!(seen.scheduled, 50);
        assert!(seen.not_sent_late > 0, "{seen:?}");
        assert!(seen.sent() > 0);
        assert_eq!(seen.sent() + seen.not_sent_late + seen.not_sent_busy, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_split_closed_loop_keeps_refusals_out_of_the_accepted_latency() {
        // Odd requests are refused at once, even ones accepted after 50 ms.
        let seen = closed_loop_split(
            4,
            Duration::from_millis(100),
            Duration::from_secs(1),
            |i| async move {
                if i % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(())
                } else {
                    Err("HTTP 503".to_owned())
                }
            },
        )
        .await;
        assert!(seen.split.accepted.ok > 0);
        assert!(seen.count("HTTP 503") > 0);
        assert!(seen.split.accepted.millis(0.0) >= 49.0);
        assert!(seen.split.refused.millis(1.0) < 1.0);
        assert_eq!(seen.scheduled, seen.sent());
    }
}
