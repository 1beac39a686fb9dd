use clap::Parser;
use ingest_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ingest_api::config::reject_removed_settings()?;
    let config = Config::parse();
    score_shared::telemetry::init(config.log.log_format);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(score_shared::shutdown::signal())
        .await
}
