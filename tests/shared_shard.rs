//! Two producers writing one shard share it: each one's limiter takes a throttle that repeats
//! as another writer and backs off (AIMD), so together they fill most of the shard, each gets
//! a fair part, and throttling settles instead of costing half of every call. Each alone would
//! send at the shard's full limit: without the backing off, half of what they send together
//! would be throttled (and was, 47 % of the entries, when a repeated throttle above 97 % only
//! returned the rate to 97 %; 15 % since).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kpl::UserRecord;
use kpl::client::KinesisApi;
use kpl::producer::{MetricsSnapshot, Producer, ProducerConfig, RecordFuture};
use kpl_sim::{Sim, SimConfig};

const MIB: f64 = 1024.0 * 1024.0;

/// Offers `producer` 1 000-byte records as fast as it takes them until `until`.
async fn offer(producer: Arc<Producer>, writer: usize, until: Instant) -> Vec<RecordFuture> {
    let mut futures = Vec::new();
    let mut i = 0usize;
    while Instant::now() < until {
        let record = UserRecord::new(format!("w{writer}-{}", i % 100), vec![b'x'; 1_000]);
        futures.push(producer.send(record).await.expect("accepted"));
        i += 1;
    }
    futures
}

/// (Kinesis bytes stored, entries sent, entries throttled) between two snapshots.
fn between(a: &MetricsSnapshot, b: &MetricsSnapshot) -> (f64, u64, u64) {
    (
        (b.kinesis_records_data_put - a.kinesis_records_data_put) as f64,
        b.put_records_entries - a.put_records_entries,
        b.throttled_entries - a.throttled_entries,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_on_one_shard_share_it_and_throttling_settles() {
    let sim = Sim::start(SimConfig {
        streams: vec![("shared".into(), 1)],
        discard_data: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = ProducerConfig {
        max_outstanding_records: 1_500,
        ..Default::default()
    };
    let mut producers = Vec::new();
    for _ in 0..2 {
        let api: Arc<dyn KinesisApi> = sim.api();
        producers.push(Arc::new(
            Producer::new(api, "shared", config.clone()).await.unwrap(),
        ));
    }
    let start = Instant::now();
    let settle = Duration::from_secs(4);
    let end = start + settle + Duration::from_secs(6);
    let loads: Vec<_> = producers
        .iter()
        .enumerate()
        .map(|(w, p)| tokio::spawn(offer(p.clone(), w, end)))
        .collect();
    tokio::time::sleep_until((start + settle).into()).await;
    let settled: Vec<_> = producers.iter().map(|p| p.metrics()).collect();
    tokio::time::sleep_until(end.into()).await;
    let ended: Vec<_> = producers.iter().map(|p| p.metrics()).collect();
    let seconds = (end - start - settle).as_secs_f64();

    let parts: Vec<_> = settled
        .iter()
        .zip(&ended)
        .map(|(a, b)| between(a, b))
        .collect();
    let total = parts.iter().map(|p| p.0).sum::<f64>() / seconds / MIB;
    let sent: u64 = parts.iter().map(|p| p.1).sum();
    let throttled: u64 = parts.iter().map(|p| p.2).sum();
    let shares: Vec<f64> = parts.iter().map(|p| p.0 / seconds / MIB).collect();
    eprintln!("together {total:.2} MiB/s, each {shares:.2?}, throttled {throttled} of {sent}");
    assert!(total >= 0.7, "together {total:.2} MiB/s of the shard's 1");
    for share in &shares {
        assert!(*share >= 0.2, "each gets a part: {shares:.2?}");
    }
    assert!(
        (throttled as f64) < 0.3 * sent as f64,
        "throttling settles: {throttled} of {sent} entries"
    );

    // Nothing is lost: every record offered is stored in the end.
    for (p, load) in producers.iter().zip(loads) {
        let futures = load.await.unwrap();
        p.flush().await.expect("every record seen through");
        for f in futures {
            f.await.expect("stored");
        }
    }
}
