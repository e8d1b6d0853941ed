//! The whole producer pipeline on one core against an instant-success in-memory Kinesis:
//! user records/s for 100-byte records, 1000 keys, 64 shards (issue goal: >= 2 M/s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
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

/// How the records are handed over.
#[derive(Clone, Copy)]
enum Mode {
    /// `send` each record; drop its future at once (fire and forget: no receipt is built).
    Send,
    /// `send` each record; keep every future and await it after the flush.
    SendAwait,
    /// `send_batch` of this many records; drop the batch futures.
    Batch(usize),
    /// `send_batch`; await every batch future after the flush.
    BatchAwait(usize),
}

fn run(rt: &tokio::runtime::Runtime, config: &ProducerConfig, iters: u64, mode: Mode) -> Duration {
    rt.block_on(async {
        let api: Arc<dyn KinesisApi> = Arc::new(MemoryKinesis::new(64).discard_data());
        let producer = Producer::new(api, "bench", config.clone()).await.unwrap();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let batch = records(RECORDS);
            let mut chunks = Vec::new();
            let batch = if let Mode::Batch(n) | Mode::BatchAwait(n) = mode {
                let mut all = batch.into_iter();
                loop {
                    let chunk: Vec<UserRecord> = all.by_ref().take(n).collect();
                    if chunk.is_empty() {
                        break Vec::new();
                    }
                    chunks.push(chunk);
                }
            } else {
                batch
            };
            let start = Instant::now();
            let mut futures = Vec::new();
            let mut batches = Vec::new();
            match mode {
                Mode::Send | Mode::SendAwait => {
                    for r in batch {
                        let future = producer.send(r).await.unwrap();
                        if matches!(mode, Mode::SendAwait) {
                            futures.push(future);
                        }
                    }
                }
                Mode::Batch(_) | Mode::BatchAwait(_) => {
                    for chunk in chunks {
                        let future = producer.send_batch(chunk).await.unwrap();
                        if matches!(mode, Mode::BatchAwait(_)) {
                            batches.push(future);
                        }
                    }
                }
            }
            producer.flush().await.expect("every record seen through");
            for f in futures {
                f.await.unwrap();
            }
            for b in batches {
                for r in b.await {
                    r.unwrap();
                }
            }
            total += start.elapsed();
        }
        producer
            .shutdown()
            .await
            .expect("every record seen through");
        total
    })
}

const MODES: [(&str, Mode); 4] = [
    ("aggregated", Mode::Send),
    ("aggregated_receipts_awaited", Mode::SendAwait),
    ("aggregated_batches_of_1000", Mode::Batch(1000)),
    ("aggregated_batches_of_1000_awaited", Mode::BatchAwait(1000)),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn base_config() -> ProducerConfig {
    ProducerConfig {
        // The fake enforces no shard limits: keep the limiter out of a CPU measurement.
        rate_limit_enabled: false,
        ..Default::default()
    }
}

fn pipeline(c: &mut Criterion) {
    let rt = runtime();
    let base = base_config();
    let mut group = c.benchmark_group("pipeline_one_core_100B_1000keys_64shards");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, mode) in MODES {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run(&rt, &base, iters, mode))
        });
    }
    let zstd = ProducerConfig {
        compression: Compression::Zstd { level: 1 },
        ..base.clone()
    };
    group.bench_function("aggregated_zstd1", |b| {
        b.iter_custom(|iters| run(&rt, &zstd, iters, Mode::Send))
    });
    group.finish();
}

criterion_group!(benches, pipeline);

/// `P1_ONCE=<row, e.g. aggregated> P1_ITERS=<n>`: runs that row's loop n times (200 000
/// records each) without criterion, for instruction counts under
/// `valgrind --tool=callgrind` (the difference of two `P1_ITERS` is the cost of 200 000
/// records, building them included).
fn main() {
    if let Ok(name) = std::env::var("P1_ONCE") {
        let (_, mode) = MODES
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("P1_ONCE names a row");
        let iters = std::env::var("P1_ITERS").map_or(1, |n| n.parse().expect("P1_ITERS: a number"));
        let took = run(&runtime(), &base_config(), iters, mode);
        println!("{name}: {iters} x {RECORDS} records in {took:?}");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
