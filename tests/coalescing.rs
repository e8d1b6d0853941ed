//! Below capacity, one PutRecords call per `record_max_buffered_time` for the whole stream,
//! whatever the phase of each shard's aggregates (issue: CPU per record at everyday rates).
//! On tokio's paused clock against the in-memory Kinesis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kpl::UserRecord;
use kpl::client::memory::MemoryKinesis;
use kpl::producer::{ProducerConfig, RecordFuture};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SHARDS: usize = 8;
const RATE_PER_SECOND: u64 = 3_000;
const SECONDS: u64 = 10;

/// Sends `RATE_PER_SECOND` records a second for `SECONDS` with random gaps (so each shard's
/// aggregates drift out of phase with the others') and random keys; returns the futures.
async fn offer(producer: &kpl::producer::Producer, seed: u64) -> Vec<RecordFuture> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let total = RATE_PER_SECOND * SECONDS;
    let mean_gap_us = 1_000_000 / RATE_PER_SECOND;
    let mut futures = Vec::with_capacity(total as usize);
    let start = tokio::time::Instant::now();
    let mut at = Duration::ZERO;
    for i in 0..total {
        // Gaps between 0 and twice the mean: the same rate, an irregular phase. Slept until
        // an absolute moment: the timer's millisecond ticks then bunch records, not slow them.
        at += Duration::from_micros(rng.random_range(0..=2 * mean_gap_us));
        tokio::time::sleep_until(start + at).await;
        let key = format!("user-{}", rng.random_range(0..10_000u32));
        let record = UserRecord::new(key, format!("{{\"n\":{i},\"msg\":\"request served\"}}"));
        futures.push(producer.send(record).await.expect("accepted"));
    }
    futures
}

#[tokio::test(start_paused = true)]
async fn one_call_per_buffered_time_below_capacity() {
    for seed in [1, 2, 3] {
        let fake = Arc::new(MemoryKinesis::new(SHARDS));
        let config = ProducerConfig::default();
        let buffered = config.record_max_buffered_time;
        let producer = common::memory_producer(&fake, "coalesce", config).await;
        let futures = offer(&producer, seed).await;
        let mut longest_wait = Duration::ZERO;
        for future in futures {
            let receipt = future.await.expect("stored");
            assert_eq!(receipt.attempts.len(), 1, "no call failed, so no retries");
            longest_wait = longest_wait.max(receipt.attempts[0].started_after);
        }
        producer
            .shutdown()
            .await
            .expect("the pipeline ran to the end");
        let calls = fake.put_calls();
        eprintln!("seed {seed}: {calls} calls, longest wait for a first call {longest_wait:?}");
        // At most one call per buffered time (the last partial window and the flush at the
        // end may add one each).
        let allowed = SECONDS * 1_000 / buffered.as_millis() as u64 + 2;
        assert!(
            calls <= allowed,
            "seed {seed}: {calls} PutRecords calls in {SECONDS} s at {RATE_PER_SECOND} records/s \
             over {SHARDS} shards; at most {allowed} (one per {buffered:?})"
        );
        // No record waits longer than the buffered time for its first call.
        assert!(
            longest_wait <= buffered + Duration::from_millis(2),
            "seed {seed}: a record waited {longest_wait:?} for its first call (buffered time {buffered:?})"
        );
    }
}
