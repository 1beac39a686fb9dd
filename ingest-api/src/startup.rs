//! Building and running the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use score_shared::config::KafkaArgs;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::handlers::AppState;
use crate::handlers::pages::Pages;
use crate::limits::{Limits, PeerAddr};
use crate::observe;
use crate::publisher::Publisher;
use crate::results::ReadModel;
use crate::routes;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

/// How often topic creation is retried while the broker is unreachable.
const TOPIC_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A bound, not yet running, ingest API.
pub struct Application {
    address: SocketAddr,
    listener: TcpListener,
    state: AppState,
    header_read_timeout: Duration,
    shutdown_flush: Duration,
}

impl Application {
    /// Creates the producer, makes sure the topic exists (or keeps trying in
    /// the background when the broker is down: the API still starts, answers
    /// 503 and reports not ready) and binds the listener.
    ///
    /// # Errors
    ///
    /// Invalid settings or an address that cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let rules = config
            .validation
            .rules()
            .context("invalid validation settings")?;
        // Before anything records a metric.
        score_shared::telemetry::metrics();
        let publisher = Publisher::new(&config.kafka, config.publish_timeout())?;
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
        provision_topic(config.kafka.clone(), config.publish_timeout()).await;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let address = listener.local_addr().context("reading the bound address")?;
        Ok(Self {
            address,
            listener,
            state: AppState {
                publisher,
                pages: Arc::new(Pages::new(&rules)),
                rules: Arc::new(rules),
                read_model,
                limits: Arc::new(Limits::new(&config)),
                body_limit_bytes: config.body_limit_bytes,
                body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            },
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            shutdown_flush: Duration::from_millis(config.shutdown_flush_ms),
        })
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then stops accepting, answers the
    /// requests in flight and flushes the producer. A client that does not
    /// send its headers within the header read timeout is disconnected.
    ///
    /// # Errors
    ///
    /// None today; the signature leaves room for fatal server errors.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, "ingest-api listening");
        let publisher = self.state.publisher.clone();
        let limits = self.state.limits.clone();
        let forget_idle = tokio::spawn(async move {
            let mut every = tokio::time::interval(LIMITER_CLEANUP_INTERVAL);
            loop {
                every.tick().await;
                limits.forget_idle();
            }
        });

        let service = warp::service(routes::routes(self.state));
        let mut connections = auto::Builder::new(TokioExecutor::new());
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
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
            let service = service.clone();
            let handler = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                let mut service = service.clone();
                observe::observed(request, move |request| async move {
                    tower_service::Service::call(&mut service, request).await
                })
            });
            let connection =
                connections.serve_connection_with_upgrades(TokioIo::new(stream), handler);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!("stopped accepting; answering requests in flight");
        graceful.shutdown().await;
        forget_idle.abort();
        tracing::info!("flushing the producer");
        publisher.flush(self.shutdown_flush).await;
        Ok(())
    }
}

/// How often the rate limiters forget clients not seen lately.
const LIMITER_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Creates the topic now if the broker answers within `timeout`, otherwise
/// keeps trying in the background.
async fn provision_topic(kafka: KafkaArgs, timeout: Duration) {
    let attempt = tokio::time::timeout(timeout, score_shared::kafka::ensure_topic(&kafka)).await;
    match attempt {
        Ok(Ok(())) => return,
        Ok(Err(error)) => tracing::warn!(
            error = format!("{error:#}"),
            "topic not provisioned yet; will retry"
        ),
        Err(_) => tracing::warn!("broker did not answer; will retry provisioning the topic"),
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOPIC_RETRY_INTERVAL).await;
            let attempt =
                tokio::time::timeout(timeout, score_shared::kafka::ensure_topic(&kafka)).await;
            if let Ok(Ok(())) = attempt {
                return;
            }
        }
    });
}
