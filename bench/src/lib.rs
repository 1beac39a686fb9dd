//! The benchmark suite behind `./deploy/local bench`.
//!
//! It measures the pipeline and, in the same run on the same machine, the
//! raw limits it is compared with:
//!
//! 1. [`traffic`]: what the mini-program sends, made up deterministically.
//! 2. [`load`]: closed- and open-loop load with HDR histograms.
//! 3. [`raw`]: the baselines (producer without HTTP, consumer without
//!    writes, multi-row INSERTs without Kafka).
//! 4. [`suite`]: every step, each with a broker, processes and database of
//!    its own.
//! 5. [`overload`]: the overload step's figures and its verdicts against
//!    the targets of issue 13.
//! 6. [`report`]: `docs/benchmarks.md` and the latency chart.
//!
//! The suite reports; it never fails because a target was missed.

pub mod load;
pub mod overload;
pub mod raw;
pub mod report;
pub mod suite;
pub mod traffic;

use std::path::PathBuf;
use std::time::Duration;

/// Measures the pipeline against its raw baselines and writes the report.
#[derive(clap::Parser, Debug)]
#[command(name = "scores-bench", version, about, long_about = None)]
pub struct Cli {
    /// A short run (under two minutes): shorter steps, a 100,000-event
    /// backlog and fewer open-loop rates.
    #[arg(long)]
    pub quick: bool,

    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub report: PathBuf,

    /// Where to write the SVG chart (linked from the report by file name).
    #[arg(long, default_value = "docs/benchmarks-latency.svg")]
    pub chart: PathBuf,

    /// Hand-written findings appended to the report.
    #[arg(long, default_value = "docs/benchmark-notes.md")]
    pub notes: PathBuf,

    /// Criterion's output, whose means the report lists (run `cargo bench`
    /// first; `./deploy/local bench` does).
    #[arg(long, default_value = "target/criterion")]
    pub criterion_dir: PathBuf,

    /// The commit measured, for the report.
    #[arg(long, env = "SCORES_BENCH_COMMIT", default_value = "unknown")]
    pub commit: String,

    /// Concurrent connections of the closed loop.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// Seconds each measured step lasts [default: 15, quick 3].
    #[arg(long)]
    pub step_seconds: Option<u64>,

    /// Events in the projector's backlog [default: 1000000, quick 100000].
    #[arg(long)]
    pub backlog: Option<u64>,

    /// Open-loop offered rates, comma separated, per second.
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,

    /// The steady rate of the end-to-end step, per second.
    #[arg(long, default_value_t = 5000.0)]
    pub end_to_end_rate: f64,

    /// The projector's batch size in the catch-up step (and of the raw
    /// INSERT baseline).
    #[arg(long, default_value_t = 500)]
    pub batch_size: u64,

    /// librdkafka settings for every client of the run, the services' and
    /// the baselines' alike (`linger.ms=1,compression.type=lz4`), to
    /// measure a tuning.
    #[arg(long, value_delimiter = ',')]
    pub kafka_options: Vec<score_shared::config::KeyValue>,

    /// Other settings for the services, `NAME=value` (repeatable), such as
    /// `SCORES_MAX_IN_FLIGHT_WRITES=4096`.
    #[arg(long = "set")]
    pub service_settings: Vec<score_shared::config::KeyValue>,

    /// The overload step's connections: the most requests (and so
    /// connections) its open loops keep outstanding, and the clients of its
    /// closed loop (the wrk run had 4,000).
    #[arg(long, default_value_t = 4000)]
    pub overload_connections: usize,

    /// The overload step's open-loop rates, as multiples of the saturation
    /// rate it measures first, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub overload_multiples: Vec<f64>,

    /// Steps to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,catch-up,end-to-end,overload"
    )]
    pub steps: Vec<Step>,
}

/// A step of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Raw producer, closed loop, open loop.
    Ingest,
    /// Backlog, raw consumer and INSERT baselines, projector, rebuild.
    CatchUp,
    /// 2xx to visible in MySQL at a steady rate.
    EndToEnd,
    /// The ingest API past saturation: its peak, then two and four times
    /// that rate open loop, and thousands of connections closed loop.
    Overload,
}

/// The settings of one run, defaults filled in.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub commit: String,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub backlog: u64,
    pub open_loop_rates: Vec<f64>,
    pub end_to_end_rate: f64,
    pub batch_size: u64,
    pub kafka_options: Vec<score_shared::config::KeyValue>,
    pub service_settings: Vec<score_shared::config::KeyValue>,
    pub overload_connections: usize,
    pub overload_multiples: Vec<f64>,
    pub steps: Vec<Step>,
}

impl Cli {
    /// The run these options describe.
    pub fn settings(&self) -> Settings {
        let quick = self.quick;
        Settings {
            quick,
            commit: self.commit.clone(),
            connections: self.connections.max(1),
            warmup: Duration::from_secs(if quick { 1 } else { 3 }),
            duration: Duration::from_secs(self.step_seconds.unwrap_or(if quick { 3 } else { 15 })),
            backlog: self
                .backlog
                .unwrap_or(if quick { 100_000 } else { 1_000_000 }),
            open_loop_rates: self.rates.clone().unwrap_or_else(|| {
                if quick {
                    vec![2000.0, 5000.0, 10_000.0, 15_000.0]
                } else {
                    vec![
                        1000.0, 2500.0, 5000.0, 7500.0, 10_000.0, 12_500.0, 15_000.0, 20_000.0,
                    ]
                }
            }),
            end_to_end_rate: self.end_to_end_rate,
            batch_size: self.batch_size.max(1),
            kafka_options: self.kafka_options.clone(),
            service_settings: self.service_settings.clone(),
            overload_connections: self.overload_connections.max(1),
            overload_multiples: self.overload_multiples.clone(),
            steps: self.steps.clone(),
        }
    }
}

/// Runs the suite and writes the report and chart.
///
/// # Errors
///
/// When a step cannot run or a file cannot be written.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    use anyhow::Context;

    let settings = cli.settings();
    let mut figures = suite::run(&settings).await?;
    figures.micro = report::criterion_means(&cli.criterion_dir);
    if let Some(dir) = cli.report.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    report::chart(&figures.open_loop, &cli.chart)?;
    let notes = std::fs::read_to_string(&cli.notes).unwrap_or_default();
    let chart_name = cli
        .chart
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let text = report::markdown(&figures, &chart_name, &notes);
    std::fs::write(&cli.report, &text)
        .with_context(|| format!("writing {}", cli.report.display()))?;
    println!("{text}");
    eprintln!(
        "==> wrote {} and {}",
        cli.report.display(),
        cli.chart.display()
    );
    Ok(())
}
