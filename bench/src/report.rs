//! The figures of one run, and how they are written: `docs/benchmarks.md`
//! (every figure beside its baseline and target) and an SVG chart of the
//! open loop's latency percentiles against offered load.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::Settings;
use crate::load::{Bounded, Latencies};
use crate::overload::{self, OverloadStep};
use crate::raw::Rate;

/// The percentiles every latency table shows.
const PERCENTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

/// One rate of the open loop.
#[derive(Debug)]
pub struct OpenLoopStep {
    pub rate: f64,
    pub seen: Latencies,
    /// The ingest API's peak RSS up to the end of this step.
    pub api_peak_rss_kib: Option<u64>,
}

impl OpenLoopStep {
    /// Past what the system sustains: under 90% of the offered rate
    /// answered with success, or a p99 over a second.
    pub fn saturated(&self) -> bool {
        self.seen.throughput() < 0.9 * self.rate || self.seen.millis(0.99) > 1000.0
    }
}

/// Projecting a backlog, and rebuilding from it.
#[derive(Debug)]
pub struct CatchUp {
    pub events: u64,
    pub fill: Rate,
    pub consume: Rate,
    pub insert: Rate,
    pub projector: Rate,
    /// From starting the process to its first committed batch.
    pub projector_start: Duration,
    pub projector_peak_rss_kib: Option<u64>,
    pub rebuild: Duration,
    pub rebuild_peak_rss_kib: Option<u64>,
}

impl CatchUp {
    /// The slower of the two raw baselines, events per second.
    pub fn slower_baseline(&self) -> f64 {
        self.consume.per_second().min(self.insert.per_second())
    }
}

/// Acknowledged to visible in MySQL, at a steady rate.
#[derive(Debug)]
pub struct EndToEnd {
    pub rate: f64,
    pub ingest: Latencies,
    pub visible_after: Latencies,
    /// Acknowledged events not seen in `grade` within a minute.
    pub missing: usize,
    pub ingest_api_peak_rss_kib: Option<u64>,
    pub projector_peak_rss_kib: Option<u64>,
}

/// Where and when the run happened.
#[derive(Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub mariadb: String,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Figures {
    pub machine: Machine,
    pub commit: String,
    pub date: DateTime<Utc>,
    pub quick: bool,
    pub connections: usize,
    pub duration: Duration,
    pub raw_produce: Vec<(usize, Latencies)>,
    pub closed_loop: Option<Latencies>,
    /// The ingest API's peak RSS up to the end of the closed loop.
    pub closed_loop_api_peak_rss_kib: Option<u64>,
    pub open_loop: Vec<OpenLoopStep>,
    pub ingest_api_peak_rss_kib: Option<u64>,
    pub catch_up: Option<CatchUp>,
    pub end_to_end: Option<EndToEnd>,
    pub overload: Option<OverloadStep>,
    /// Criterion results: benchmark name and mean time per iteration.
    pub micro: Vec<(String, Duration)>,
    /// Steps that could not complete, and why.
    pub failures: Vec<(String, String)>,
}

impl Figures {
    /// An empty record of a run with `settings` on this machine.
    ///
    /// # Errors
    ///
    /// When MariaDB does not answer.
    pub async fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mariadb: String = {
            use sqlx::Connection;
            let mut connection =
                sqlx::MySqlConnection::connect(&pipeline_tests::mysql_server_url()).await?;
            sqlx::query_scalar("SELECT VERSION()")
                .fetch_one(&mut connection)
                .await?
        };
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Ok(Self {
            machine: Machine {
                cpu,
                cores: std::thread::available_parallelism().map_or(0, usize::from),
                memory_gib: memory_kib / 1024.0 / 1024.0,
                kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
                mariadb,
            },
            commit: settings.commit.clone(),
            date: Utc::now(),
            quick: settings.quick,
            connections: settings.connections,
            duration: settings.duration,
            raw_produce: Vec::new(),
            closed_loop: None,
            closed_loop_api_peak_rss_kib: None,
            open_loop: Vec::new(),
            ingest_api_peak_rss_kib: None,
            catch_up: None,
            end_to_end: None,
            overload: None,
            micro: Vec::new(),
            failures: Vec::new(),
        })
    }

    /// The raw producer's figures at `in_flight` sends at once.
    pub fn raw_produce_at(&self, in_flight: usize) -> Option<&Latencies> {
        self.raw_produce
            .iter()
            .find(|(at, _)| *at == in_flight)
            .map(|(_, seen)| seen)
    }

    /// The highest peak memory of the ingest API in any step.
    fn ingest_api_peak(&self) -> Option<u64> {
        let e2e = self
            .end_to_end
            .as_ref()
            .and_then(|e| e.ingest_api_peak_rss_kib);
        self.ingest_api_peak_rss_kib
            .max(e2e)
            .max(self.overload_api_peak())
    }

    /// The highest peak memory of the ingest API under overload.
    fn overload_api_peak(&self) -> Option<u64> {
        self.overload
            .iter()
            .flat_map(|o| &o.runs)
            .filter_map(|run| run.peak_rss_kib)
            .max()
    }

    /// The highest peak memory of `projector run` in any step.
    fn projector_peak(&self) -> Option<u64> {
        let catch_up = self
            .catch_up
            .as_ref()
            .and_then(|c| c.projector_peak_rss_kib);
        let e2e = self
            .end_to_end
            .as_ref()
            .and_then(|e| e.projector_peak_rss_kib);
        catch_up.max(e2e)
    }
}

use overload::mib;

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "**missed**" }
}

fn latency_cells(seen: &Latencies) -> String {
    PERCENTILES
        .iter()
        .map(|(q, _)| format!("{:.1}", seen.millis(*q)))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn errors_cell(seen: &Latencies) -> String {
    if seen.errors.is_empty() {
        "0".to_owned()
    } else {
        seen.errors
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The target table: each target, the figure, its baseline and whether it
/// was met.
fn targets(figures: &Figures) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    if let Some(closed) = &figures.closed_loop {
        rows.push([
            "Ingest closed loop ≥ 10,000 req/s, p99 ≤ 20 ms, no errors".to_owned(),
            format!(
                "{:.0} req/s, p99 {:.1} ms, {} errors",
                closed.throughput(),
                closed.millis(0.99),
                closed.error_count()
            ),
            "—".to_owned(),
            met(closed.throughput() >= 10_000.0
                && closed.millis(0.99) <= 20.0
                && closed.error_count() == 0)
            .to_owned(),
        ]);
        if let Some(raw) = figures.raw_produce_at(figures.connections) {
            let ratio = closed.throughput() / raw.throughput();
            rows.push([
                "Ingest ≥ 80% of the raw producer at the same concurrency".to_owned(),
                format!("{:.0} req/s", closed.throughput()),
                format!(
                    "raw producer at {} in flight {:.0}/s → {:.0}%",
                    figures.connections,
                    raw.throughput(),
                    ratio * 100.0
                ),
                met(ratio >= 0.8).to_owned(),
            ]);
        }
    }
    if let Some(c) = &figures.catch_up {
        let ratio = c.projector.per_second() / c.slower_baseline();
        rows.push([
            "Projector catch-up ≥ 80% of the slower raw baseline".to_owned(),
            format!("{:.0} events/s", c.projector.per_second()),
            format!(
                "slower baseline {:.0}/s → {:.0}%",
                c.slower_baseline(),
                ratio * 100.0
            ),
            met(ratio >= 0.8).to_owned(),
        ]);
        rows.push([
            format!(
                "Rebuild of {} events ≤ 30 s (scaled: {} events)",
                1_000_000, c.events
            ),
            format!("{:.1} s", c.rebuild.as_secs_f64()),
            format!(
                "≤ {:.1} s for this many",
                30.0 * c.events as f64 / 1_000_000.0
            ),
            met(c.rebuild.as_secs_f64() <= 30.0 * c.events as f64 / 1_000_000.0).to_owned(),
        ]);
    }
    if let Some(e) = &figures.end_to_end {
        rows.push([
            format!("End to end at {:.0}/s: 2xx → row p99 ≤ 100 ms", e.rate),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms, {} missing",
                e.visible_after.millis(0.5),
                e.visible_after.millis(0.99),
                e.missing
            ),
            format!("{:.0} acknowledged/s", e.ingest.throughput()),
            met(e.visible_after.millis(0.99) <= 100.0 && e.missing == 0).to_owned(),
        ]);
    }
    if let Some(o) = &figures.overload {
        for run in &o.runs {
            let verdicts = run.verdicts(o.peak);
            let missed: Vec<&str> = verdicts
                .iter()
                .filter(|v| !v.met)
                .map(|v| v.target.as_str())
                .collect();
            rows.push([
                format!(
                    "Overload, {}: goodput ≥ {:.0}% of peak, RSS ≤ {} MiB, accepted p99 ≤ {:.0} ms, \
                     no connect errors or timeouts, memory back near idle",
                    run.shape.describe(),
                    overload::GOODPUT_SHARE_TARGET * 100.0,
                    overload::RSS_TARGET_KIB / 1024,
                    overload::ACCEPTED_P99_TARGET_MS
                ),
                format!(
                    "{:.0}/s 2xx, peak RSS {}, p99 {:.1} ms, {} client failures",
                    run.seen.goodput(),
                    mib(run.peak_rss_kib),
                    run.seen.split.accepted.millis(0.99),
                    run.client_failures()
                ),
                format!("peak {:.0}/s (section 5)", o.peak),
                if missed.is_empty() {
                    met(true).to_owned()
                } else {
                    format!("{}: {}", met(false), missed.join("; "))
                },
            ]);
        }
    }
    let api = figures.ingest_api_peak();
    rows.push([
        "Peak RSS ingest-api ≤ 64 MiB".to_owned(),
        mib(api),
        "—".to_owned(),
        met(api.is_some_and(|kib| kib <= 64 * 1024)).to_owned(),
    ]);
    let projector = figures.projector_peak();
    rows.push([
        "Peak RSS projector ≤ 128 MiB".to_owned(),
        mib(projector),
        "—".to_owned(),
        met(projector.is_some_and(|kib| kib <= 128 * 1024)).to_owned(),
    ]);
    rows
}

/// The Markdown report; `notes` (hand-written findings) is appended as is.
pub fn markdown(figures: &Figures, chart_file: &str, notes: &str) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `./deploy/local bench{}` — do not edit by hand; the notes at the end come \
         from `docs/benchmark-notes.md`.\n",
        if figures.quick { " --quick" } else { "" }
    );
    let m = &figures.machine;
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(
        w,
        "| Date | {} |",
        figures.date.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(w, "| Commit | `{}` |", figures.commit);
    let _ = writeln!(
        w,
        "| Run | {} ({} s per step, {} connections) |",
        if figures.quick { "quick" } else { "full" },
        figures.duration.as_secs(),
        figures.connections
    );
    let _ = writeln!(w, "| CPU | {} × {} |", m.cores, m.cpu);
    let _ = writeln!(w, "| Memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(w, "| Kernel | {} |", m.kernel);
    let _ = writeln!(
        w,
        "| Broker | Apache Kafka {}, one KRaft node (broker and controller, 512 MiB heap), same machine |",
        pipeline_tests::processes::kafka_version()
    );
    let _ = writeln!(w, "| MySQL | MariaDB {}, same machine |", m.mariadb);
    let _ = writeln!(
        w,
        "\nEverything (broker, MariaDB, the services and the load generator) shares the \
         machine's cores, as the targets assume.\n"
    );

    if !figures.failures.is_empty() {
        let _ = writeln!(w, "## Steps that did not complete\n");
        for (step, error) in &figures.failures {
            let _ = writeln!(w, "- **{step}**: {}", error.replace('\n', " "));
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| Target | Figure | Baseline | |\n|---|---|---|---|");
    for [target, figure, baseline, verdict] in targets(figures) {
        let _ = writeln!(w, "| {target} | {figure} | {baseline} | {verdict} |");
    }

    let header = PERCENTILES
        .iter()
        .map(|(_, name)| format!("{name} ms"))
        .collect::<Vec<_>>()
        .join(" | ");
    let _ = writeln!(w, "\n## 1. Ingest, closed loop, and the raw producer\n");
    let _ = writeln!(
        w,
        "Legacy `POST /score` (form, `JSON.stringify`'d values, Chinese text with emoji), \
         the projector following the API's topic meanwhile (a topic of its own, so the projector \
         projects what the API appends, not the raw producer's backlog). The raw producer is the API's own publisher (idempotent, \
         acks=all, same linger) appending the same events with no HTTP in front, sealed as the API seals \
         them (an account's first event writes its data key first, then the key is reused for a minute).\n"
    );
    let _ = writeln!(
        w,
        "| Load | req/s | {header} | errors |\n|---|---|---|---|---|---|---|"
    );
    if let Some(closed) = &figures.closed_loop {
        let _ = writeln!(
            w,
            "| `POST /score`, {} connections | {:.0} | {} | {} |",
            figures.connections,
            closed.throughput(),
            latency_cells(closed),
            errors_cell(closed)
        );
    }
    for (in_flight, seen) in &figures.raw_produce {
        let _ = writeln!(
            w,
            "| raw producer, {in_flight} sends in flight | {:.0} | {} | {} |",
            seen.throughput(),
            latency_cells(seen),
            errors_cell(seen)
        );
    }

    let _ = writeln!(w, "\n## 2. Ingest, open loop\n");
    let _ = writeln!(
        w,
        "Fixed offered rates of `POST /score`, latency from each request's scheduled send time \
         (no coordinated omission); stops after the first saturated rate.\n"
    );
    let _ = writeln!(
        w,
        "![latency percentiles against offered load]({chart_file})\n"
    );
    let _ = writeln!(
        w,
        "| Offered /s | answered /s | {header} | errors | API peak RSS so far |\n|---|---|---|---|---|---|---|---|"
    );
    for step in &figures.open_loop {
        let _ = writeln!(
            w,
            "| {:.0} | {:.0} | {} | {} | {} |",
            step.rate,
            step.seen.throughput(),
            latency_cells(&step.seen),
            errors_cell(&step.seen),
            mib(step.api_peak_rss_kib)
        );
    }

    if let Some(c) = &figures.catch_up {
        let _ = writeln!(w, "\n## 3. Projector catch-up and rebuild\n");
        let _ = writeln!(
            w,
            "A backlog of {} events projected into an empty `grade` (projection `grade` only, \
             batches as configured). Baselines: reading the same topic with the projector's \
             consumer settings and writing nothing; the same rows written with the projection's \
             multi-row INSERT, one transaction per batch, without Kafka.\n",
            c.events
        );
        let _ = writeln!(w, "| | events/s | time |\n|---|---|---|");
        let rows = [
            ("appending the backlog (raw producer)", &c.fill),
            ("raw consumer", &c.consume),
            ("raw multi-row INSERT", &c.insert),
            ("**projector**", &c.projector),
        ];
        for (what, rate) in rows {
            let _ = writeln!(
                w,
                "| {what} | {:.0} | {:.1} s |",
                rate.per_second(),
                rate.elapsed.as_secs_f64()
            );
        }
        let _ = writeln!(
            w,
            "| `projector rebuild grade` | {:.0} | {:.1} s |",
            c.events as f64 / c.rebuild.as_secs_f64(),
            c.rebuild.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "\nThe projector's rate is timed from its first committed batch; before that it \
             took {:.1} s to start and join the consumer group.",
            c.projector_start.as_secs_f64()
        );
    }

    if let Some(e) = &figures.end_to_end {
        let _ = writeln!(w, "\n## 4. End to end\n");
        let _ = writeln!(
            w,
            "`POST /v1/scores` at a steady {:.0}/s (open loop) with the projector running (both \
             projections); time from the API's 2xx to the row being visible in `grade` (polled \
             every 5 ms).\n",
            e.rate
        );
        let _ = writeln!(
            w,
            "| | per s | {header} | errors |\n|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            w,
            "| API answer | {:.0} | {} | {} |",
            e.ingest.throughput(),
            latency_cells(&e.ingest),
            errors_cell(&e.ingest)
        );
        let _ = writeln!(
            w,
            "| 2xx → visible in MySQL | | {} | {} missing |",
            latency_cells(&e.visible_after),
            e.missing
        );
    }

    if let Some(o) = &figures.overload {
        overload_section(w, o);
    }

    let _ = writeln!(w, "\n## 6. Memory\n");
    let _ = writeln!(w, "| Process | peak RSS |\n|---|---|");
    let _ = writeln!(
        w,
        "| ingest-api (all load steps) | {} |",
        mib(figures.ingest_api_peak())
    );
    if figures.overload.is_some() {
        let _ = writeln!(
            w,
            "| ingest-api under overload | {} |",
            mib(figures.overload_api_peak())
        );
    }
    let _ = writeln!(
        w,
        "| projector run (catch-up, end to end) | {} |",
        mib(figures.projector_peak())
    );
    if let Some(c) = &figures.catch_up {
        let _ = writeln!(w, "| projector rebuild | {} |", mib(c.rebuild_peak_rss_kib));
    }

    if !figures.micro.is_empty() {
        let _ = writeln!(w, "\n## 7. Micro-benchmarks (criterion)\n");
        let _ = writeln!(w, "| Benchmark | mean |\n|---|---|");
        for (name, mean) in &figures.micro {
            let _ = writeln!(w, "| {name} | {} |", human(*mean));
        }
    }
    if !notes.trim().is_empty() {
        let _ = writeln!(w, "\n{}", notes.trim_end());
    }
    out
}

/// Section 5: the probes, each overload's figures, and the verdicts.
fn overload_section(w: &mut String, o: &OverloadStep) {
    let _ = writeln!(w, "\n## 5. Ingest, overload\n");
    let _ = writeln!(
        w,
        "`POST /score` past saturation, each load against a freshly started ingest API (no \
         projector, rate limits off). The saturation rate is the best goodput (2xx/s) of the \
         closed loops below; the open loops offer multiples of it, latency from each request's \
         scheduled time, with a bounded number in flight (the generator counts what it could \
         not send, rather than queueing it); the closed loop is the issue's wrk run. Client \
         timeout {:.0} s, connect timeout {:.0} s. Memory: before the load (idle), the highest \
         during it, and after it with the client's connections closed.\n",
        overload::CLIENT_TIMEOUT.as_secs_f64(),
        overload::CONNECT_TIMEOUT.as_secs_f64()
    );
    let header = PERCENTILES
        .iter()
        .map(|(_, name)| format!("{name} ms"))
        .collect::<Vec<_>>()
        .join(" | ");
    let _ = writeln!(
        w,
        "| Saturation probe | 2xx/s | {header} | not 2xx |\n|---|---|---|---|---|---|---|"
    );
    for (connections, seen) in &o.probes {
        let _ = writeln!(
            w,
            "| closed loop, {connections} connections | {:.0} | {} | {} |",
            seen.goodput(),
            latency_cells(&seen.split.accepted),
            errors_cell(&seen.split.refused)
        );
    }
    let _ = writeln!(
        w,
        "\nSaturation rate (peak goodput): **{:.0}/s**.\n",
        o.peak
    );

    let _ = writeln!(
        w,
        "| Load | offered /s | not sent (busy, late) | most in flight | 2xx/s | share of peak | \
         accepted p50 / p99 ms | refused p99 ms | 503 | other answers | connect | timeout | \
         dropped | RSS idle → peak → after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &o.runs {
        let seen = &run.seen;
        let not_503 = run.refusals() - seen.count("HTTP 503");
        let offered = match run.shape.intended_rate() {
            Some(rate) => format!(
                "{:.0} of {rate:.0}{}",
                seen.offered_per_second(),
                if run.offered_as_intended() {
                    ""
                } else {
                    " (**short**)"
                }
            ),
            None => format!("{:.0}", seen.offered_per_second()),
        };
        let _ = writeln!(
            w,
            "| {} | {offered} | {} ({}, {}) | {} | {:.0} | {:.0}% | {} | {} | {} | {not_503} | {} | {} | {} | {} → {} → {} |",
            run.shape.describe(),
            seen.not_sent_busy + seen.not_sent_late,
            seen.not_sent_busy,
            seen.not_sent_late,
            seen.most_in_flight,
            seen.goodput(),
            run.share_of_peak(o.peak) * 100.0,
            accepted_cell(seen),
            refused_cell(seen),
            seen.count("HTTP 503"),
            seen.count("connect") + seen.count("no client port"),
            seen.count("timeout"),
            seen.count("transport"),
            mib(run.idle_rss_kib),
            mib(run.peak_rss_kib),
            mib(run.after_rss_kib),
        );
    }
    for run in &o.runs {
        if let Some(exit) = &run.api_exited {
            let _ = writeln!(
                w,
                "\nThe API did not survive {}: {}",
                run.shape.describe(),
                exit.lines().next().unwrap_or_default()
            );
        }
        if !run.offered_as_intended() {
            let _ = writeln!(
                w,
                "\n{}: the generator sent under {:.0}% of the intended rate; of the requests it \
                 did not send, {} found its {} requests in flight all unanswered (the API was \
                 answering too slowly to free them) and {} were due while the generator itself ran \
                 more than {} ms late (short of CPU). The verdicts are about the load it did offer.",
                run.shape.describe(),
                overload::OFFERED_SHARE_FOR_A_FAIR_TEST * 100.0,
                run.seen.not_sent_busy,
                run.seen.most_in_flight,
                run.seen.not_sent_late,
                overload::LATE_AFTER.as_millis()
            );
        }
        if seen_no_client_port(&run.seen) {
            let _ = writeln!(
                w,
                "\n{}: the load generator's machine ran out of ephemeral ports (counted under \
                 connect): a limit of the generator, not of the API.",
                run.shape.describe()
            );
        }
    }

    let _ = writeln!(w);
    let columns: Vec<String> = o.runs.iter().map(|run| run.shape.describe()).collect();
    let _ = writeln!(
        w,
        "| Target | {} |\n|---|{}",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    let verdicts: Vec<_> = o.runs.iter().map(|run| run.verdicts(o.peak)).collect();
    if let Some(first) = verdicts.first() {
        for (index, target) in first.iter().map(|v| &v.target).enumerate() {
            let cells: Vec<String> = verdicts
                .iter()
                .map(|run| {
                    let v = &run[index];
                    format!("{} — {}", v.figure, met(v.met))
                })
                .collect();
            let _ = writeln!(w, "| {target} | {} |", cells.join(" | "));
        }
    }
}

fn seen_no_client_port(seen: &Bounded) -> bool {
    seen.count("no client port") > 0
}

/// p50 / p99 of the 2xx answers, or a dash when there were none.
fn accepted_cell(seen: &Bounded) -> String {
    let accepted = &seen.split.accepted;
    if accepted.ok == 0 {
        "—".to_owned()
    } else {
        format!("{:.1} / {:.1}", accepted.millis(0.5), accepted.millis(0.99))
    }
}

/// p99 of every other outcome (how fast refusals were), or a dash.
fn refused_cell(seen: &Bounded) -> String {
    let refused = &seen.split.refused;
    if refused.error_count() == 0 {
        "—".to_owned()
    } else {
        format!("{:.1}", refused.millis(0.99))
    }
}

fn human(duration: Duration) -> String {
    let nanos = duration.as_secs_f64() * 1e9;
    if nanos < 1e3 {
        format!("{nanos:.0} ns")
    } else if nanos < 1e6 {
        format!("{:.2} µs", nanos / 1e3)
    } else {
        format!("{:.2} ms", nanos / 1e6)
    }
}

/// Criterion's mean estimates under `dir` (`target/criterion`), by
/// benchmark name.
pub fn criterion_means(dir: &Path) -> Vec<(String, Duration)> {
    let mut found = Vec::new();
    collect_estimates(dir, dir, &mut found);
    found.sort();
    found
}

fn collect_estimates(root: &Path, dir: &Path, found: &mut Vec<(String, Duration)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let estimates = path.join("new/estimates.json");
        if let Ok(text) = std::fs::read_to_string(&estimates) {
            let mean = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["mean"]["point_estimate"].as_f64());
            if let (Some(mean), Ok(name)) = (mean, path.strip_prefix(root)) {
                found.push((
                    name.display().to_string(),
                    Duration::from_secs_f64(mean / 1e9),
                ));
            }
        } else if path.file_name().is_some_and(|name| name != "report") {
            collect_estimates(root, &path, found);
        }
    }
}

/// Draws p50/p90/p99/p99.9 against offered rate as an SVG file.
///
/// # Errors
///
/// When the file cannot be written.
pub fn chart(steps: &[OpenLoopStep], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let max_rate = steps.iter().map(|s| s.rate).fold(1.0, f64::max) * 1.05;
    let max_latency = steps
        .iter()
        .map(|s| s.seen.millis(0.999))
        .fold(10.0, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Ingest open loop: latency against offered load",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, (0.1..max_latency).log_scale())
        .context("drawing the chart")?;
    chart
        .configure_mesh()
        .x_desc("offered requests per second")
        .y_desc("latency, ms (log scale)")
        .draw()
        .context("drawing the chart")?;
    let colors = [BLUE, GREEN, RED, BLACK];
    for ((quantile, name), color) in PERCENTILES.iter().zip(colors) {
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| (s.rate, s.seen.millis(*quantile).max(0.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .context("drawing the chart")?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .context("drawing the chart")?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .context("drawing the chart")?;
    root.present().context("writing the chart")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overload::tests::{CLOSED, run};

    fn figures_with(overload: Option<OverloadStep>) -> Figures {
        Figures {
            machine: Machine {
                cpu: "cpu".to_owned(),
                cores: 2,
                memory_gib: 1.0,
                kernel: "kernel".to_owned(),
                mariadb: "mariadb".to_owned(),
            },
            commit: "abc".to_owned(),
            date: Utc::now(),
            quick: true,
            connections: 32,
            duration: Duration::from_secs(10),
            raw_produce: Vec::new(),
            closed_loop: None,
            closed_loop_api_peak_rss_kib: None,
            open_loop: Vec::new(),
            ingest_api_peak_rss_kib: None,
            catch_up: None,
            end_to_end: None,
            overload,
            micro: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn the_report_lists_each_overload_against_its_targets() {
        // 2xx at 150 ms: the p99 target is missed, the others met.
        let slow = run(95_000, 150, &[("HTTP 503", 1000)], CLOSED);
        let step = OverloadStep {
            probes: vec![(512, run(100_000, 20, &[], CLOSED).seen)],
            peak: 10_000.0,
            runs: vec![slow],
        };
        let text = markdown(&figures_with(Some(step)), "chart.svg", "");
        assert!(text.contains("## 5. Ingest, overload"), "{text}");
        assert!(
            text.contains("Saturation rate (peak goodput): **10000/s**"),
            "{text}"
        );
        assert!(
            text.contains("| p99 of accepted ≤ 100 ms | 150.0 ms — **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("| goodput ≥ 90% of the peak | 9500/s of 10000/s = 95% — met |"),
            "{text}"
        );
        let target_row = text
            .lines()
            .find(|line| line.starts_with("| Overload, 4000 connections"))
            .expect("a row in the targets table");
        assert!(
            target_row.ends_with("| **missed**: p99 of accepted ≤ 100 ms |"),
            "{target_row}"
        );
    }

    #[test]
    fn a_run_without_the_overload_step_has_no_overload_section() {
        let text = markdown(&figures_with(None), "chart.svg", "");
        assert!(!text.contains("overload"), "{text}");
    }
}
