//! The per-submission work of `POST /score` without the network: decode the
//! form `wx.request` sends, validate it, build and encode the event; and
//! what every request pays for being observed (request id, span, metrics).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ingest_api::data_keys::{DATA_KEY_CACHE_CAPACITY, DataKeys};
use ingest_api::wire;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use score_shared::event::new_event_id;
use score_shared::{
    AccountRef, Channel, DataKey, Pepper, ScoreSubmitted, Submission, ValidationRules,
};

/// A typical legacy body: values `JSON.stringify`'d, then percent-encoded.
fn legacy_body() -> String {
    let fields = [
        ("acc_nbr", "\"13812345678\""),
        ("grade1", "5"),
        ("grade2", "4"),
        ("grade3", "3"),
        ("txt1", "\"服务很好，态度热情👍\""),
        ("txt2", "\"环境干净，价格实惠😊\""),
        ("txt3", "\"等了很久才有人来，希望改进🙏\""),
    ];
    fields
        .iter()
        .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The pepper the benchmarks compute account references under.
fn pepper() -> Pepper {
    "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk="
        .parse()
        .expect("a valid pepper")
}

/// The event `POST /score` builds from `body`: decoded and validated.
fn event(body: &str, rules: &ValidationRules) -> ScoreSubmitted {
    let raw = wire::legacy_form(black_box(body.as_bytes())).expect("valid");
    let submission = Submission::parse(&raw, rules).expect("valid");
    ScoreSubmitted::new(new_event_id(), Channel::LegacyForm, &submission)
}

fn hot_path(c: &mut Criterion) {
    let body = legacy_body();
    let rules = ValidationRules::default();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_form", |b| {
        b.iter(|| wire::legacy_form(black_box(body.as_bytes())).expect("valid"))
    });
    group.bench_function("decode_validate_encode", |b| {
        b.iter(|| event(&body, &rules).encode())
    });
    group.bench_function("decode_validate_seal_encode", |b| {
        let pepper = pepper();
        let key = DataKey::generate();
        b.iter(|| {
            let event = event(&body, &rules);
            let sealed = event.seal(AccountRef::of(&pepper, &event.acc_nbr), &key);
            (sealed.record_key(), sealed.encode())
        })
    });
    group.finish();
}

/// `observe::observed` around a service that answers at once: the request
/// id, the span (not recorded: no subscriber, as with RUST_LOG=warn) and the
/// two metrics, into the real Prometheus registry.
fn observed(c: &mut Criterion) {
    score_shared::telemetry::metrics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("observe_request", |b| {
        b.iter(|| {
            let request = warp::http::Request::post("/v1/accounts/13812345678/scores")
                .body(())
                .expect("a request");
            runtime.block_on(ingest_api::observe::observed(request, |_| async {
                Ok(warp::http::Response::new(()))
            }))
        })
    });
    group.finish();
}

/// `DataKeys::key_for` for an account not in the cache, the cache full (as
/// under steady traffic of new accounts): the lookup, the insert and the
/// eviction it causes.
fn data_key_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let pepper = pepper();
    let keys = DataKeys::new(Duration::from_secs(300));
    let key = DataKey::generate();
    let mut next = 0u64;
    let mut account = || {
        next += 1;
        AccountRef::of(&pepper, &format!("1{next:010}"))
    };
    let new_key = || async { Ok::<_, ()>(key.clone()) };
    runtime.block_on(async {
        for _ in 0..DATA_KEY_CACHE_CAPACITY {
            keys.key_for(account(), new_key).await.expect("a key");
        }
    });
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("data_key_new_account", |b| {
        b.iter_batched(
            &mut account,
            |account| runtime.block_on(keys.key_for(account, new_key)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, hot_path, observed, data_key_cache);
criterion_main!(benches);
