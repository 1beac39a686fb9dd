use anyhow::Context;
use clap::Parser;
use projector::config::DeadLettersCommand;
use projector::dead_letters::RetryResult;
use projector::identity::LogMismatch;
use projector::{
    Cli, Command, Projector, db, dead_letters, forget, import, migrate_log, rebuild, status,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let pool = db::pool(&args.database)?;
            db::migrate(&args.database, &pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Run(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let outcome = Projector::build(args)
                .context("starting the projector")?
                .run_until_stopped(score_shared::shutdown::signal())
                .await;
            exit_on_log_mismatch(&outcome);
            outcome?;
        }
        Command::Rebuild(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let stop = cancelled_on_signal();
            let outcome = rebuild::rebuild(&args, &stop).await;
            exit_on_log_mismatch(&outcome);
            println!("{}", outcome?);
        }
        Command::ImportLegacy(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let stop = cancelled_on_signal();
            let summary = import::import_legacy(&args, &stop).await?;
            println!("{summary}");
        }
        Command::Forget(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let json = args.json;
            let stop = cancelled_on_signal();
            let done = forget::forget(&args, &stop, |forgotten| {
                println!("{}", forget::render(forgotten, json));
            })
            .await?;
            if !json {
                let accounts = forget::counted(done.len(), "account", "accounts");
                println!("{accounts} forgotten");
            }
        }
        Command::MigrateLog(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let stop = cancelled_on_signal();
            let summary = migrate_log::migrate_log(&args, &stop).await?;
            println!("{summary}");
        }
        Command::Status(args) => {
            score_shared::telemetry::init(args.log.log_format);
            let pool = db::pool(&args.database)?;
            let rows = status::status(&pool, &args.kafka).await?;
            let erasures = status::erasures(&pool).await?;
            if args.json {
                let both = serde_json::json!({"partitions": rows, "erasures": erasures});
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                print!("{}", status::render(&rows));
                print!("{}", status::render_erasures(&erasures));
            }
            if status::any_mismatch(&rows) {
                std::process::exit(projector::LOG_MISMATCH_EXIT_CODE);
            }
        }
        Command::DeadLetters(DeadLettersCommand::List(args)) => {
            score_shared::telemetry::init(args.log.log_format);
            let pool = db::pool(&args.database)?;
            let rows = dead_letters::list(&pool, args.projection.as_deref(), args.all).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", dead_letters::render(&rows));
            }
        }
        Command::DeadLetters(DeadLettersCommand::Retry(args)) => {
            score_shared::telemetry::init(args.log.log_format);
            let pool = db::pool(&args.database)?;
            let ids = (!args.all).then_some(args.id.as_slice());
            let keys = args.decoder.key_ring(&args.kafka)?;
            keys.catch_up().await?;
            let decoder = args.decoder.decoder(keys.keys())?;
            let outcomes = dead_letters::retry(&pool, &args.projection, ids, &decoder).await?;
            let mut still_failing = 0;
            for outcome in &outcomes {
                let shown = match &outcome.outcome {
                    RetryResult::Applied => "applied".to_owned(),
                    RetryResult::AlreadyResolved => "already resolved".to_owned(),
                    RetryResult::StillFailing(kind) => {
                        still_failing += 1;
                        format!("still failing ({kind})")
                    }
                };
                println!("dead letter {}: {shown}", outcome.id);
            }
            println!("{} retried, {still_failing} still failing", outcomes.len());
            if still_failing > 0 {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// Tables built from another log are not a crash to restart from: the
/// process says so and exits with its own code, which the systemd unit
/// does not restart on.
fn exit_on_log_mismatch<T>(outcome: &anyhow::Result<T>) {
    if let Err(error) = outcome
        && let Some(mismatch) = error.downcast_ref::<LogMismatch>()
    {
        tracing::error!(
            projection = mismatch.projection,
            partition = mismatch.partition,
            "{mismatch}"
        );
        eprintln!("Error: {mismatch}");
        std::process::exit(projector::LOG_MISMATCH_EXIT_CODE);
    }
}

/// A token cancelled by Ctrl-C or SIGTERM, for the operator commands that
/// stop cleanly half way (their work so far stays, a re-run continues).
fn cancelled_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        score_shared::shutdown::signal().await;
        on_signal.cancel();
    });
    stop
}
