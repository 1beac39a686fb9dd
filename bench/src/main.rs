use clap::Parser;
use score_shared::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = score_bench::Cli::parse();
    // Warnings only unless RUST_LOG says otherwise: progress goes to stderr.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: set before any other thread reads the environment.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    telemetry::init(LogFormat::Text);
    score_bench::run(&cli).await
}
