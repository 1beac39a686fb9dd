use anyhow::Context;
use clap::Parser;
use projector::{Cli, Command, Projector, db};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let pool = db::pool(&args.database)?;
            db::migrate(&args.database, &pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Run(args) => {
            score_shared::telemetry::init(args.log.log_format);
            Projector::build(args)
                .context("starting the projector")?
                .run_until_stopped(score_shared::shutdown::signal())
                .await
        }
    }
}
