//! The aggregator and collector stages on their own (feature `bench-internals`):
//! `cargo bench --features bench-internals --bench stages`. Setup (records, hash keys, futures)
//! is outside the timing.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kpl::UserRecord;
use kpl::producer::stage_bench::{AggregatorStage, CollectorStage};

const RECORDS: usize = 100_000;

fn records() -> Vec<UserRecord> {
    let keys: Vec<String> = (0..1000).map(|k| format!("partition-key-{k:04}")).collect();
    (0..RECORDS)
        .map(|i| UserRecord::new(keys[i % keys.len()].clone(), vec![b'x'; 100]))
        .collect()
}

fn stages(c: &mut Criterion) {
    let mut group = c.benchmark_group("stages");
    group.sample_size(20);
    group.throughput(Throughput::Elements(RECORDS as u64));
    let mut aggregator = AggregatorStage::new(64);
    group.bench_function("aggregator_100B_1000keys_64shards", |b| {
        b.iter_batched(
            || AggregatorStage::prepare(records()),
            |prepared| aggregator.run(prepared),
            BatchSize::PerIteration,
        )
    });
    // Collector: 50 KiB aggregates into calls of at most 500 entries / 5 MiB.
    let n = 10_000;
    group.throughput(Throughput::Elements(n as u64));
    let mut collector = CollectorStage::default();
    group.bench_function("collector_50KiB_records", |b| {
        b.iter_batched(
            || CollectorStage::prepare(n, 51_200),
            |prepared| collector.run(prepared),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
