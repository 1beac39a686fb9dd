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
use crate::publisher::Publisher;
use crate::routes;

/// How often topic creation is retried while the broker is unreachable.
const TOPIC_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A bound, not yet running, ingest API.
pub struct Application {
    address: SocketAddr,
    listener: TcpListener,
    state: AppState,
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
        let publisher = Publisher::new(&config.kafka, config.publish_timeout())?;
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
                rules: Arc::new(rules),
                body_limit_bytes: config.body_limit_bytes,
            },
            shutdown_flush: Duration::from_millis(config.shutdown_flush_ms),
        })
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then stops accepting, answers the
    /// requests in flight and flushes the producer.
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
        warp::serve(routes::routes(self.state))
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
        tracing::info!("stopped accepting; flushing the producer");
        publisher.flush(self.shutdown_flush).await;
        Ok(())
    }
}

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
