//! The whole suite, in the order the report lists it. Each step starts what
//! it measures (a broker of its own, the release binaries as processes, a
//! fresh database) so that one step's leftovers do not weigh on the next.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ingest_api::publisher::{Publisher, Sealing};
use pipeline_tests::TestDatabase;
use pipeline_tests::processes::{Broker, Service};
use score_shared::config::KafkaArgs;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::load::{self, Latencies};
use crate::overload::{OverloadRun, OverloadStep, Shape};
use crate::raw::{self, Rate};
use crate::report::{CatchUp, EndToEnd, Figures, OpenLoopStep};
use crate::{Settings, Step, traffic};

const PARTITIONS: i32 = 3;
const PUBLISH_TIMEOUT: Duration = score_shared::kafka::DEFAULT_PUBLISH_TIMEOUT;
/// The account pepper of every service and raw producer of a run (base64
/// of 32 bytes): the benchmark's accounts are made up, so a fixed pepper
/// keeps nothing secret, and the same one lets the projector find the keys
/// the raw producer wrote.
const BENCH_ACCOUNT_PEPPER: &str = "c2NvcmUtYmVuY2gtcGVwcGVyLXNjb3JlLWJlbmNoLXA=";
/// How long the raw producer reuses a data key: the API's default.
const DATA_KEY_CACHE: Duration = Duration::from_secs(60);
/// How many data keys the raw producer keeps ready: the API's default.
const DATA_KEY_POOL: usize = 1024;

/// Runs every step and gathers the figures.
///
/// # Errors
///
/// When a step cannot run (a service does not start, a topic cannot be
/// read); a step that merely misses a target is not an error.
pub async fn run(settings: &Settings) -> anyhow::Result<Figures> {
    let mut figures = Figures::new(settings).await?;
    let broker = Broker::start();
    // A step that cannot complete is reported, and the others still run.
    let failed = |figures: &mut Figures, step: &str, error: anyhow::Error| {
        eprintln!("  {step} did not complete: {error:#}");
        figures
            .failures
            .push((step.to_owned(), format!("{error:#}")));
    };
    if settings.steps.contains(&Step::Ingest) {
        eprintln!("==> ingest: raw producer baseline, closed loop, open loop");
        if let Err(error) = ingest(settings, &broker, &mut figures).await {
            failed(&mut figures, "ingest", error);
        }
    }
    if settings.steps.contains(&Step::CatchUp) {
        eprintln!(
            "==> projector catch-up and rebuild over {} events",
            settings.backlog
        );
        match catch_up(settings, &broker).await {
            Ok(catch_up) => figures.catch_up = Some(catch_up),
            Err(error) => failed(&mut figures, "catch-up", error),
        }
    }
    if settings.steps.contains(&Step::EndToEnd) {
        eprintln!("==> end to end at {}/s", settings.end_to_end_rate);
        match end_to_end(settings, &broker).await {
            Ok(end_to_end) => figures.end_to_end = Some(end_to_end),
            Err(error) => failed(&mut figures, "end-to-end", error),
        }
    }
    if settings.steps.contains(&Step::Overload) {
        eprintln!("==> overload: the saturation rate, then past it");
        match overload(settings, &broker).await {
            Ok(overload) => figures.overload = Some(overload),
            Err(error) => failed(&mut figures, "overload", error),
        }
    }
    Ok(figures)
}

/// The raw producer's sealing for `topic`: the services' pepper and key
/// topic.
fn sealing(topic: &str) -> Sealing {
    Sealing {
        pepper: BENCH_ACCOUNT_PEPPER.parse().expect("a valid pepper"),
        keys_topic: pipeline_tests::keys_topic_of(topic),
        key_time_to_live: DATA_KEY_CACHE,
        key_pool_size: DATA_KEY_POOL,
    }
}

/// Runs `work` while `publisher`'s key pool is kept full, as the ingest API
/// keeps it; then tombstones the keys left.
async fn with_key_pool<T>(publisher: &Publisher, work: impl Future<Output = T>) -> T {
    let stop = CancellationToken::new();
    let ((), out) = tokio::join!(publisher.keep_key_pool_full(&stop), async {
        let out = work.await;
        stop.cancel();
        out
    });
    publisher.retire_pooled_keys(PUBLISH_TIMEOUT).await;
    out
}

/// The event topic and its key topic, created as the ingest API creates
/// them.
async fn ensure_topics(kafka: &KafkaArgs) -> anyhow::Result<()> {
    score_shared::kafka::ensure_topic(kafka).await?;
    score_shared::kafka::ensure_keys_topic(kafka, &pipeline_tests::keys_topic_of(&kafka.topic))
        .await
}

/// Client settings for `topic` on `broker`, with the run's librdkafka
/// options.
fn kafka(settings: &Settings, broker: &Broker, topic: &str) -> KafkaArgs {
    let mut kafka = pipeline_tests::kafka_args_on(&broker.address(), topic, PARTITIONS);
    kafka.kafka_options = settings.kafka_options.clone();
    kafka
}

/// The services' settings for `topic` on `broker` (and a database), with
/// the run's librdkafka options and extra settings.
fn service_env(
    settings: &Settings,
    broker: &Broker,
    topic: &str,
    database_url: Option<&str>,
) -> Vec<(String, String)> {
    let owned = |(key, value): (&str, String)| (key.to_owned(), value);
    let mut env: Vec<(String, String)> = [
        ("SCORES_KAFKA_BROKERS", broker.address()),
        ("SCORES_TOPIC", topic.to_owned()),
        ("SCORES_KEYS_TOPIC", pipeline_tests::keys_topic_of(topic)),
        ("SCORES_ACCOUNT_PEPPER", BENCH_ACCOUNT_PEPPER.to_owned()),
        ("SCORES_TOPIC_PARTITIONS", PARTITIONS.to_string()),
        ("SCORES_CONSUMER_GROUP", pipeline_tests::unique_group()),
        // The load comes from one address and spreads over many accounts:
        // rate limits would measure themselves.
        ("SCORES_RATE_LIMIT_PER_CLIENT_PER_MINUTE", "0".to_owned()),
        ("SCORES_RATE_LIMIT_PER_ACCOUNT_PER_MINUTE", "0".to_owned()),
    ]
    .into_iter()
    .map(owned)
    .collect();
    if let Some(url) = database_url {
        env.push(owned(("SCORES_DATABASE_URL", url.to_owned())));
    }
    if !settings.kafka_options.is_empty() {
        let options: Vec<String> = settings
            .kafka_options
            .iter()
            .map(|o| format!("{}={}", o.key, o.value))
            .collect();
        env.push(owned(("SCORES_KAFKA_OPTIONS", options.join(","))));
    }
    env.extend(
        settings
            .service_settings
            .iter()
            .map(|o| (o.key.clone(), o.value.clone())),
    );
    env
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(4096)
        .build()
        .context("building the HTTP client")
}

/// The legacy `POST /score` request number `i`, as a load step.
fn legacy_sender(
    client: reqwest::Client,
    url: String,
) -> impl Fn(u64) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static
{
    use futures::FutureExt;
    move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            load::post(
                &client,
                &url,
                "application/x-www-form-urlencoded",
                traffic::legacy_body(i),
            )
            .await
            .map(|_| ())
        }
        .boxed()
    }
}

async fn ingest(settings: &Settings, broker: &Broker, figures: &mut Figures) -> anyhow::Result<()> {
    let topic = "bench-ingest";
    let kafka = kafka(settings, broker, topic);
    ensure_topics(&kafka).await?;
    let publisher = Publisher::new(&kafka, PUBLISH_TIMEOUT, sealing(topic))?;
    for in_flight in [settings.connections, settings.connections * 8] {
        let seen = with_key_pool(
            &publisher,
            raw::produce(&publisher, in_flight, settings.warmup, settings.duration),
        )
        .await;
        eprintln!(
            "  raw producer, {in_flight} in flight: {:.0}/s",
            seen.throughput()
        );
        figures.raw_produce.push((in_flight, seen));
    }
    drop(publisher);

    // As in production, the projector reads the topic while it is written.
    // The API appends to a topic of its own: on the raw producer's, the
    // projector would spend the steps catching up on that backlog, and the
    // API's figures would measure the catch-up as much as the API.
    let api_topic = "bench-ingest-api";
    ensure_topics(&self::kafka(settings, broker, api_topic)).await?;
    let database = TestDatabase::create().await;
    let projector = Service::projector(&service_env(
        settings,
        broker,
        api_topic,
        Some(&database.url),
    ));
    let (api, url) = Service::ingest_api(&service_env(settings, broker, api_topic, None));
    let client = http_client()?;
    let score_url = format!("{url}/score");
    let closed = load::closed_loop(
        settings.connections,
        settings.warmup,
        settings.duration,
        legacy_sender(client.clone(), score_url.clone()),
    )
    .await;
    eprintln!(
        "  closed loop, {} connections: {:.0}/s, p99 {:.1} ms, {} errors",
        settings.connections,
        closed.throughput(),
        closed.millis(0.99),
        closed.error_count()
    );
    figures.closed_loop = Some(closed);
    figures.closed_loop_api_peak_rss_kib = api.peak_rss_kib();

    for &rate in &settings.open_loop_rates {
        let seen = load::open_loop(
            rate,
            settings.duration,
            legacy_sender(client.clone(), score_url.clone()),
        )
        .await;
        let step = OpenLoopStep {
            rate,
            seen,
            api_peak_rss_kib: api.peak_rss_kib(),
        };
        eprintln!(
            "  open loop at {rate:.0}/s: {:.0}/s answered, p99 {:.1} ms, {} errors",
            step.seen.throughput(),
            step.seen.millis(0.99),
            step.seen.error_count()
        );
        let saturated = step.saturated();
        figures.open_loop.push(step);
        if saturated {
            break;
        }
    }
    figures.ingest_api_peak_rss_kib = api.peak_rss_kib();
    drop(projector);
    database.drop_database().await;
    Ok(())
}

/// The sum of `grade`'s positions over every partition of `topic`.
async fn projected(database: &TestDatabase, topic: &str) -> anyhow::Result<u64> {
    let sum: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(next_offset), 0) AS SIGNED) FROM grade_position WHERE topic = ?",
    )
    .bind(topic)
    .fetch_one(&database.admin_pool)
    .await?;
    Ok(u64::try_from(sum).unwrap_or(0))
}

/// Runs `service` until it exits, sampling its peak memory; the time it
/// took and the peak, or an error if it fails or outlives `limit`.
fn run_to_completion(
    mut service: Service,
    limit: Duration,
) -> anyhow::Result<(Duration, Option<u64>)> {
    let start = Instant::now();
    let mut peak = None;
    loop {
        if let Some(status) = service.wait(Duration::from_millis(100)) {
            anyhow::ensure!(
                status.success(),
                "exited with {status}\n{}",
                service.log_tail()
            );
            return Ok((start.elapsed(), peak));
        }
        peak = service.peak_rss_kib().or(peak);
        anyhow::ensure!(start.elapsed() < limit, "still running after {limit:?}");
    }
}

async fn catch_up(settings: &Settings, broker: &Broker) -> anyhow::Result<CatchUp> {
    let topic = "bench-backlog";
    let kafka = kafka(settings, broker, topic);
    ensure_topics(&kafka).await?;
    let publisher = Publisher::new(&kafka, PUBLISH_TIMEOUT, sealing(topic))?;
    let fill = with_key_pool(&publisher, raw::fill(&publisher, settings.backlog)).await?;
    drop(publisher);
    eprintln!(
        "  appended in {:.1} s ({:.0}/s)",
        fill.elapsed.as_secs_f64(),
        fill.per_second()
    );

    let consume = raw::consume(&kafka, settings.backlog).await?;
    eprintln!("  raw consumer: {:.0}/s", consume.per_second());

    let scratch = TestDatabase::create().await;
    let insert = raw::insert(
        &scratch.projector_pool,
        settings.backlog,
        settings.batch_size,
    )
    .await?;
    eprintln!("  raw multi-row INSERT: {:.0}/s", insert.per_second());
    scratch.drop_database().await;

    let database = TestDatabase::create().await;
    let mut env = service_env(settings, broker, topic, Some(&database.url));
    env.push(("SCORES_PROJECTIONS".to_owned(), "grade".to_owned()));
    env.push((
        "SCORES_BATCH_SIZE".to_owned(),
        settings.batch_size.to_string(),
    ));
    let started = Instant::now();
    let mut projector = Service::projector(&env);
    let mut first_row = None;
    let mut peak = None;
    // Generous: ten times what the raw consumer took, and at least 2 min.
    let deadline = started + (consume.elapsed * 10).max(Duration::from_secs(120));
    loop {
        let done = projected(&database, topic).await?;
        if done > 0 {
            first_row.get_or_insert_with(|| (Instant::now(), done));
        }
        peak = projector.peak_rss_kib().or(peak);
        if done >= settings.backlog {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("{}", projector.log_tail());
            anyhow::bail!(
                "the projector had projected {done} of {} events after {:.0} s",
                settings.backlog,
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = Instant::now();
    projector.terminate(Duration::from_secs(10));
    let (first_at, first_count) = first_row.expect("rows were projected");
    let projector_rate = Rate {
        count: settings.backlog - first_count,
        elapsed: finished - first_at,
    };
    eprintln!("  projector: {:.0}/s", projector_rate.per_second());

    let rebuild = Service::projector_command(&["rebuild", "grade"], &env);
    let (rebuild_time, rebuild_peak) = run_to_completion(rebuild, Duration::from_secs(900))?;
    eprintln!("  rebuild: {:.1} s", rebuild_time.as_secs_f64());
    database.drop_database().await;
    Ok(CatchUp {
        events: settings.backlog,
        fill,
        consume,
        insert,
        projector: projector_rate,
        projector_start: first_at - started,
        projector_peak_rss_kib: peak,
        rebuild: rebuild_time,
        rebuild_peak_rss_kib: rebuild_peak,
    })
}

async fn end_to_end(settings: &Settings, broker: &Broker) -> anyhow::Result<EndToEnd> {
    use futures::FutureExt;

    let topic = "bench-e2e";
    let database = TestDatabase::create().await;
    let mut env = service_env(settings, broker, topic, Some(&database.url));
    env.push((
        "RUST_LOG".to_owned(),
        "warn,projector::runner=info".to_owned(),
    ));
    let (api, url) = Service::ingest_api(&env);
    let projector = Service::projector(&env);
    projector.wait_for_partitions(Duration::from_secs(60)).await;

    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let visible: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(watch_rows(
        database.admin_pool.clone(),
        visible.clone(),
        stop.clone(),
    ));

    let client = http_client()?;
    let scores_url = format!("{url}/v1/scores");
    let sender = {
        let acked = acked.clone();
        move |i: u64| {
            let (client, url, acked) = (client.clone(), scores_url.clone(), acked.clone());
            async move {
                let body = load::post(
                    &client,
                    &url,
                    "application/json",
                    traffic::v1_body(i).to_string(),
                )
                .await?;
                let answered = Instant::now();
                let receipt: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| "unreadable answer".to_owned())?;
                let id = receipt["event_id"]
                    .as_str()
                    .ok_or("no event id")?
                    .to_owned();
                acked.lock().expect("acks").insert(id, answered);
                Ok(())
            }
            .boxed()
        }
    };
    let ingest = load::open_loop(settings.end_to_end_rate, settings.duration, sender).await;

    // Everything acknowledged should show up; wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing;
    loop {
        let acked = acked.lock().expect("acks").clone();
        let visible = visible.lock().expect("rows").clone();
        missing = acked.keys().filter(|id| !visible.contains_key(*id)).count();
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    watcher.await.context("the row watcher")??;

    let mut lag = Latencies::empty();
    let acked = acked.lock().expect("acks").clone();
    let visible = visible.lock().expect("rows").clone();
    for (id, answered) in &acked {
        if let Some(seen) = visible.get(id) {
            lag.record_ok(seen.saturating_duration_since(*answered));
        }
    }
    let figures = EndToEnd {
        rate: settings.end_to_end_rate,
        ingest,
        visible_after: lag,
        missing,
        ingest_api_peak_rss_kib: api.peak_rss_kib(),
        projector_peak_rss_kib: projector.peak_rss_kib(),
    };
    drop((api, projector));
    database.drop_database().await;
    Ok(figures)
}

/// How often the watcher looks for new rows: the resolution of the
/// end-to-end figure.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// Notes when each row of `grade` is first seen, until stopped.
async fn watch_rows(
    pool: sqlx::MySqlPool,
    visible: Arc<Mutex<HashMap<String, Instant>>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut last_id: u64 = 0;
    while !stop.is_cancelled() {
        let rows: Vec<(u64, String)> =
            sqlx::query_as("SELECT id, event_id FROM grade WHERE id > ? ORDER BY id LIMIT 20000")
                .bind(last_id)
                .fetch_all(&pool)
                .await?;
        let seen = Instant::now();
        if let Some((id, _)) = rows.last() {
            last_id = *id;
        }
        {
            let mut visible = visible.lock().expect("rows");
            for (_, event_id) in rows {
                visible.entry(event_id).or_insert(seen);
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    Ok(())
}

/// How long the fresh API runs before its idle memory is read.
const IDLE_AFTER_START: Duration = Duration::from_secs(1);
/// How long after the load (its connections closed) memory is read again.
const SETTLE: Duration = Duration::from_secs(5);

/// A client for the overload step: up to `connections` connections kept
/// alive (one per request in flight, which the load bounds), and the
/// timeouts above.
fn overload_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(crate::overload::CLIENT_TIMEOUT)
        .connect_timeout(crate::overload::CONNECT_TIMEOUT)
        .pool_max_idle_per_host(connections)
        .build()
        .context("building the HTTP client")
}

/// Finds the ingest API's saturation rate with closed loops on a fresh
/// process, then overloads a fresh process for each shape: two and four
/// times that rate open loop (bounded in flight), and
/// `overload_connections` clients closed loop.
async fn overload(settings: &Settings, broker: &Broker) -> anyhow::Result<OverloadStep> {
    let topic = "bench-overload";
    ensure_topics(&kafka(settings, broker, topic)).await?;
    // No projector: the step is about the API's own behaviour past
    // saturation, and the broker gets the cores the projector would take.
    let env = service_env(settings, broker, topic, None);

    let mut probes = Vec::new();
    {
        let (api, url) = Service::ingest_api(&env);
        let score_url = format!("{url}/score");
        for connections in [settings.connections * 4, settings.connections * 16] {
            let client = overload_client(connections)?;
            let seen = load::closed_loop_split(
                connections,
                settings.warmup,
                settings.duration,
                legacy_sender(client, score_url.clone()),
            )
            .await;
            eprintln!(
                "  probe, {connections} connections: {:.0}/s, p99 {:.1} ms, {} not 2xx",
                seen.goodput(),
                seen.split.accepted.millis(0.99),
                seen.split.refused.error_count()
            );
            probes.push((connections, seen));
        }
        drop(api);
    }
    let peak = crate::overload::peak_goodput(&probes);
    anyhow::ensure!(peak > 0.0, "no probe was answered with a 2xx");
    eprintln!("  saturation rate: {peak:.0}/s");

    let shapes = settings
        .overload_multiples
        .iter()
        .map(|&multiple| Shape::OpenLoop {
            multiple,
            rate: multiple * peak,
            max_in_flight: settings.overload_connections,
        })
        .chain([Shape::ClosedLoop {
            connections: settings.overload_connections,
        }]);
    let mut runs = Vec::new();
    for shape in shapes {
        let run = overload_once(settings, &env, shape).await?;
        eprintln!(
            "  {}: offered {:.0}/s ({} not sent: {} busy, {} late), {:.0}/s 2xx, p99 {:.1} ms, \
             {} refused, {} client failures, RSS idle {} peak {} after {}",
            shape.describe(),
            run.seen.offered_per_second(),
            run.seen.not_sent_busy + run.seen.not_sent_late,
            run.seen.not_sent_busy,
            run.seen.not_sent_late,
            run.seen.goodput(),
            run.seen.split.accepted.millis(0.99),
            run.refusals(),
            run.client_failures(),
            crate::overload::mib(run.idle_rss_kib),
            crate::overload::mib(run.peak_rss_kib),
            crate::overload::mib(run.after_rss_kib),
        );
        runs.push(run);
    }
    Ok(OverloadStep { probes, peak, runs })
}

/// One overload of `shape` against a fresh ingest API, with its memory
/// before, during and after.
async fn overload_once(
    settings: &Settings,
    env: &[(String, String)],
    shape: Shape,
) -> anyhow::Result<OverloadRun> {
    let (mut api, url) = Service::ingest_api(env);
    tokio::time::sleep(IDLE_AFTER_START).await;
    let idle_rss_kib = api.rss_kib();
    let client = overload_client(settings.overload_connections)?;
    let send = legacy_sender(client.clone(), format!("{url}/score"));
    let seen = match shape {
        Shape::OpenLoop {
            rate,
            max_in_flight,
            ..
        } => {
            let budget = load::Budget {
                max_in_flight,
                late_after: crate::overload::LATE_AFTER,
            };
            load::open_loop_bounded(rate, settings.duration, budget, send).await
        }
        Shape::ClosedLoop { connections } => {
            load::closed_loop_split(connections, settings.warmup, settings.duration, send).await
        }
    };
    let peak_rss_kib = api.peak_rss_kib();
    // Every connection closed, as when the clients have gone.
    drop(client);
    tokio::time::sleep(SETTLE).await;
    let after_rss_kib = api.rss_kib();
    let api_exited = api
        .wait(Duration::ZERO)
        .map(|status| format!("exited with {status}\n{}", api.log_tail()));
    Ok(OverloadRun {
        shape,
        seen,
        idle_rss_kib,
        peak_rss_kib,
        after_rss_kib,
        settle: SETTLE,
        api_exited,
    })
}
