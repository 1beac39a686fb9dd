//! Building one projector batch without MySQL: split 500 records by
//! partition against the stored positions, then decode each (sealed events
//! opened with their account's key, as the ingest API writes them) and
//! validate it.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use projector::batch::{self, Decoded, Decoder, LogRecord, PlanContext};
use projector::identity::{Predecessors, StoredPosition};
use projector::keys::Keys;
use score_shared::event::new_event_id;
use score_shared::{
    AccountRef, Channel, DataKey, Pepper, RawSubmission, ScoreSubmitted, Submission,
    ValidationRules,
};

const BATCH: usize = 500;
const PARTITIONS: i32 = 3;

fn pepper() -> Pepper {
    "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBA="
        .parse()
        .expect("a valid pepper")
}

fn records(keys: &Keys) -> Vec<LogRecord> {
    (0..BATCH)
        .map(|i| {
            let raw = RawSubmission {
                acc_nbr: Some(format!("138{:08}", i * 7919).into()),
                grades: [Some(5.into()), Some(4.into()), Some(3.into())],
                texts: ["服务很好，态度热情👍", "环境干净😊", ""].map(|t| Some(t.into())),
                scene: None,
            };
            let submission = Submission::parse(&raw, &ValidationRules::default()).expect("valid");
            let event = ScoreSubmitted::new(new_event_id(), Channel::LegacyForm, &submission);
            let key = DataKey::generate();
            keys.insert(key.clone());
            let sealed = event.seal(AccountRef::of(&pepper(), &event.acc_nbr), &key);
            let partition = i32::try_from(i).expect("small") % PARTITIONS;
            LogRecord {
                partition,
                offset: i64::try_from(i).expect("small") / i64::from(PARTITIONS),
                key: Some(sealed.record_key().into_bytes()),
                payload: Some(sealed.encode()),
            }
        })
        .collect()
}

fn build_batch(c: &mut Criterion) {
    let keys = Keys::new(pepper());
    let records = records(&keys);
    let stored: HashMap<i32, StoredPosition> = (0..PARTITIONS)
        .map(|p| (p, StoredPosition::default()))
        .collect();
    let read = Predecessors::default();
    let context = PlanContext {
        accepted_gaps: &[],
        predecessors: &read,
    };
    let decoder = Decoder::new(keys);
    let mut group = c.benchmark_group("projector");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("plan_and_decode_500", |b| {
        b.iter(|| {
            let plans = batch::plan(black_box(&records), &stored, context);
            plans
                .iter()
                .flat_map(|plan| &plan.records)
                .filter(|record| matches!(decoder.decode(record), Decoded::Row(_)))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, build_batch);
criterion_main!(benches);
