//! The whole producer pipeline on one core against an instant-success in-memory Kinesis:
//! user records/s for 100-byte records, 1000 keys, 64 shards (issue goal: >= 2 M/s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kpl::UserRecord;
use kpl::client::KinesisApi;
use kpl::client::memory::MemoryKinesis;
use kpl::producer::{Compression, Producer, ProducerConfig};

const RECORDS: usize = 200_000;

fn records(n: usize) -> Vec<UserRecord> {
    let keys: Vec<String> = (0..1000).map(|k| format!("partition-key-{k:04}")).collect();
    (0..n)
        .map(|i| UserRecord::new(keys[i % keys.len()].clone(), vec![b'x'; 100]))
        .collect()
}

fn run(rt: &tokio::runtime::Runtime, config: &ProducerConfig, iters: u64) -> Duration {
    run_with(rt, config, iters, false)
}

/// `await_receipts`: keep every record's future and await it after the flush, so each receipt
/// is built and delivered; otherwise drop them at once (fire and forget).
fn run_with(
    rt: &tokio::runtime::Runtime,
    config: &ProducerConfig,
    iters: u64,
    await_receipts: bool,
) -> Duration {
    rt.block_on(async {
        let api: Arc<dyn KinesisApi> = Arc::new(MemoryKinesis::new(64).discard_data());
        let producer = Producer::new(api, "bench", config.clone()).await.unwrap();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let batch = records(RECORDS);
            let start = Instant::now();
            let mut futures = Vec::with_capacity(if await_receipts { RECORDS } else { 0 });
            for r in batch {
                let future = producer.send(r).await.unwrap();
                if await_receipts {
                    futures.push(future);
                }
            }
            producer.flush().await;
            for f in futures {
                f.await.unwrap();
            }
            total += start.elapsed();
        }
        producer.shutdown().await;
        total
    })
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let base = ProducerConfig {
        // The fake enforces no shard limits: keep the limiter out of a CPU measurement.
        rate_limit_enabled: false,
        ..Default::default()
    };
    let mut group = c.benchmark_group("pipeline_one_core_100B_1000keys_64shards");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("aggregated", |b| {
        b.iter_custom(|iters| run(&rt, &base, iters))
    });
    group.bench_function("aggregated_receipts_awaited", |b| {
        b.iter_custom(|iters| run_with(&rt, &base, iters, true))
    });
    let zstd = ProducerConfig {
        compression: Compression::Zstd { level: 1 },
        ..base.clone()
    };
    group.bench_function("aggregated_zstd1", |b| {
        b.iter_custom(|iters| run(&rt, &zstd, iters))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
