//! Building and running the server.
//!
//! Overload is designed here: at most `SCORES_MAX_CONNECTIONS` connections
//! are served (one beyond it gets a canned 503 and is closed before hyper
//! sees it); each request takes its place in flight from its budget before
//! anything else is done for it (a full budget is a canned 503); a
//! connection is closed when it sends no complete request head within the
//! header read timeout, idle kept-alive ones included; and each connection's
//! buffer is capped. Once a burst of connections has receded, malloc gives
//! its free pages back ([`memory`]). Only HTTP/1.1 is served: nginx speaks it to the API,
//! and HTTP/2's idle connections would have no timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use score_shared::config::KafkaArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handlers::AppState;
use crate::handlers::pages::Pages;
use crate::limits::{self, Limits, PeerAddr};
use crate::memory::{self, Connections};
use crate::observe;
use crate::publisher::Publisher;
use crate::readiness::{self, Readiness, ReadinessProbe};
use crate::results::ReadModel;
use crate::routes;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

/// How often topic creation is retried while the broker is unreachable.
const TOPIC_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Largest read (and write) buffer of one connection, in bytes: the
/// headers, and the body's chunks on their way to the 16 KiB body limit,
/// must fit. hyper's default is about 400 KiB, which times the connection
/// cap would be gigabytes.
const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// Most refused connections kept open at once while their canned 503 is
/// delivered (see [`refuse`]); beyond it they are closed at once.
const MAX_LINGERING_REFUSALS: usize = 256;

/// How long a refused connection is kept, reading and discarding what the
/// client sends, so that closing it does not reset the connection before
/// the client has read the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long the metrics address may take to stop once the API has.
const METRICS_STOP_GRACE: Duration = Duration::from_secs(2);

/// A bound, not yet running, ingest API.
pub struct Application {
    address: SocketAddr,
    listener: TcpListener,
    metrics_address: SocketAddr,
    metrics_listener: TcpListener,
    state: AppState,
    readiness_probe: ReadinessProbe,
    max_connections: usize,
    header_read_timeout: Duration,
    shutdown_flush: Duration,
}

impl Application {
    /// Creates the producer, makes sure the event topic and the key topic
    /// exist (or keeps trying in the background when the broker is down:
    /// the API still starts, answers 503 and reports not ready) and binds
    /// the public and metrics listeners.
    ///
    /// # Errors
    ///
    /// Invalid settings (no results token key or no account pepper among
    /// them) or an address that cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First: without a key no submission could be answered its results
        // token, and without the pepper no event could name its account, so
        // nothing else is started.
        let results_tokens = config.results_tokens()?;
        let sealing = config.sealing()?;
        let rules = config
            .validation
            .rules()
            .context("invalid validation settings")?;
        // Before anything records a metric.
        score_shared::telemetry::metrics();
        // Two messages a submission (its data key's may still be counted
        // while its event is queued), and the key pool's refill (see
        // `with_queue_limit`).
        let publisher = Publisher::with_queue_limit(
            &config.kafka,
            config.publish_timeout(),
            config
                .max_in_flight_writes
                .saturating_mul(2)
                .saturating_add(config.data_key_pool_size()),
            sealing,
        )?;
        // Connects on first use: MySQL being down never stops the start.
        let read_model = config
            .query_database_url
            .as_deref()
            .map(|url| {
                ReadModel::new(
                    url,
                    config.query_database_max_connections,
                    &config.kafka.topic,
                    Duration::from_millis(config.consistency_wait_ms),
                )
            })
            .transpose()?;
        // Ready from the start when the broker answered provisioning; the
        // background probe takes over once running.
        let provisioned = provision_topics(
            config.kafka.clone(),
            config.personal.keys_topic.clone(),
            config.publish_timeout(),
        )
        .await;
        let (readiness_probe, readiness) = Readiness::new(provisioned);
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics address {}", config.metrics_addr))?;
        let metrics_address = metrics_listener
            .local_addr()
            .context("reading the metrics address")?;
        Ok(Self {
            address,
            listener,
            metrics_address,
            metrics_listener,
            readiness_probe,
            max_connections: config.max_connections.max(1),
            state: AppState {
                publisher,
                pages: Arc::new(Pages::new(&rules)),
                recent_keys: Arc::default(),
                rules: Arc::new(rules),
                read_model,
                limits: Arc::new(Limits::new(&config)),
                body_limit_bytes: config.body_limit_bytes,
                body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
                readiness,
                results_tokens: Arc::new(results_tokens),
            },
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            shutdown_flush: Duration::from_millis(config.shutdown_flush_ms),
        })
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where `/metrics` (with `/healthz` and `/readyz`) is served.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    /// Serves until `shutdown` completes, then stops accepting, answers the
    /// requests in flight and flushes the producer. A connection that does
    /// not send a request head within the header read timeout (of opening or
    /// of its previous response) is closed.
    ///
    /// # Errors
    ///
    /// None today; the signature leaves room for fatal server errors.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, "ingest-api listening");
        tracing::info!(address = %self.metrics_address, "serving metrics");
        let publisher = self.state.publisher.clone();
        let limits = self.state.limits.clone();
        let forget_idle = tokio::spawn({
            let limits = limits.clone();
            async move {
                let mut every = tokio::time::interval(LIMITER_CLEANUP_INTERVAL);
                loop {
                    every.tick().await;
                    limits.forget_idle();
                }
            }
        });
        let stop_key_pool = CancellationToken::new();
        let key_pool = tokio::spawn({
            let publisher = publisher.clone();
            let stop = stop_key_pool.clone();
            async move { publisher.keep_key_pool_full(&stop).await }
        });
        let refresh_readiness = tokio::spawn(
            self.readiness_probe
                .refresh_forever(publisher.clone(), readiness::REFRESH_INTERVAL),
        );
        let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
        let mut metrics_server = tokio::spawn(observe::serve_metrics(
            self.metrics_listener,
            self.state.clone(),
            async move {
                let _ = metrics_stopped.await;
            },
        ));

        let service = warp::service(routes::routes(self.state));
        let mut connections = auto::Builder::new(TokioExecutor::new()).http1_only();
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(CONNECTION_BUFFER_BYTES);
        let connection_slots = Arc::new(Semaphore::new(self.max_connections));
        let open_connections = Arc::new(Connections::default());
        let release_memory = tokio::spawn(memory::release_after_bursts(open_connections.clone()));
        let lingering_refusals = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
                refuse(stream, &lingering_refusals);
                continue;
            };
            let open = OpenConnection::new(slot, open_connections.clone());
            let service = service.clone();
            let limits = limits.clone();
            let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                let limits = limits.clone();
                async move { serve_admitted(request, peer, &limits, service).await }
            });
            let connection =
                connections.serve_connection_with_upgrades(TokioIo::new(stream), handler);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                let _open = open;
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!("stopped accepting; answering requests in flight");
        graceful.shutdown().await;
        forget_idle.abort();
        refresh_readiness.abort();
        release_memory.abort();
        // The refill's last round is bounded by the publish timeout; what it
        // wrote is in the pool, and every block none of whose keys was
        // handed out is tombstoned.
        stop_key_pool.cancel();
        if let Err(error) = key_pool.await {
            tracing::warn!(error = %error, "the key pool's refill task failed");
        }
        publisher.retire_pooled_keys(self.shutdown_flush).await;
        tracing::info!("flushing the producer");
        publisher.flush(self.shutdown_flush).await;
        let _ = stop_metrics.send(());
        if tokio::time::timeout(METRICS_STOP_GRACE, &mut metrics_server)
            .await
            .is_err()
        {
            metrics_server.abort();
        }
        Ok(())
    }
}

/// Serves one request: first of all its place in flight from its budget
/// ([`routes::budget_of`], from the method and path alone), a canned 503
/// when that budget is full; then the routes, observed. The place is held
/// until the response is made.
async fn serve_admitted<S>(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    limits: &Limits,
    mut service: S,
) -> Result<warp::reply::Response, Infallible>
where
    S: tower_service::Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        >,
{
    let budget = routes::budget_of(request.method(), request.uri().path());
    let _in_flight = match budget.map(|budget| (budget, limits.admit(budget))) {
        Some((budget, Err(_))) => {
            observe::record_shed(request.method(), request.uri().path(), budget);
            let legacy = request.uri().path() == "/score";
            return Ok(limits::shed_response(legacy));
        }
        Some((_, Ok(permit))) => Some(permit),
        None => None,
    };
    request.extensions_mut().insert(PeerAddr(peer));
    observe::observed(request, move |request| async move {
        tower_service::Service::call(&mut service, request).await
    })
    .await
}

/// One open connection: it holds a slot under the connection cap and counts
/// in `http_connections_open` until dropped.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    connections: Arc<Connections>,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, connections: Arc<Connections>) -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        connections.opened();
        Self {
            _slot: slot,
            connections,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
        self.connections.closed();
    }
}

/// Answers a connection beyond the cap with [`limits::connection_refusal`]
/// and closes it, without building an HTTP connection. The answer is
/// written without waiting (a new socket's send buffer has room for it).
/// Closing a socket with unread input resets it, which can destroy the 503
/// before the client reads it; so, while fewer than
/// [`MAX_LINGERING_REFUSALS`] are, the connection is half-closed and what
/// the client sends is read and discarded for up to [`REFUSAL_LINGER`]
/// first. Beyond that bound it is closed at once.
fn refuse(stream: TcpStream, lingering: &Arc<Semaphore>) {
    metrics::counter!("http_connections_refused_total").increment(1);
    let answer = limits::connection_refusal();
    if !matches!(stream.try_write(answer), Ok(written) if written == answer.len()) {
        return;
    }
    let Ok(lingering) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _lingering = lingering;
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut discard = [0_u8; 1024];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            while matches!(stream.read(&mut discard).await, Ok(read) if read > 0) {}
        })
        .await;
    });
}

/// How often the rate limiters forget clients not seen lately.
const LIMITER_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Creates the event topic and the key topic now if the broker answers
/// within `timeout` (and says so), otherwise keeps trying in the
/// background.
async fn provision_topics(kafka: KafkaArgs, keys_topic: String, timeout: Duration) -> bool {
    let attempt = tokio::time::timeout(timeout, ensure_topics(&kafka, &keys_topic)).await;
    match attempt {
        Ok(Ok(())) => return true,
        Ok(Err(error)) => tracing::warn!(
            error = format!("{error:#}"),
            "topics not provisioned yet; will retry"
        ),
        Err(_) => tracing::warn!("broker did not answer; will retry provisioning the topics"),
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOPIC_RETRY_INTERVAL).await;
            let attempt = tokio::time::timeout(timeout, ensure_topics(&kafka, &keys_topic)).await;
            if let Ok(Ok(())) = attempt {
                return;
            }
        }
    });
    false
}

/// The event topic, then the compacted key topic its data keys go to.
async fn ensure_topics(kafka: &KafkaArgs, keys_topic: &str) -> anyhow::Result<()> {
    score_shared::kafka::ensure_topic(kafka).await?;
    score_shared::kafka::ensure_keys_topic(kafka, keys_topic).await
}
