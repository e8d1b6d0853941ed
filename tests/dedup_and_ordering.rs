//! Dedup ids and strict per-key ordering against the in-memory Kinesis, on tokio's paused
//! clock: duplicates made by lost responses are removed by the reader's `Deduper`, and strict
//! ordering stores each key's records in send order under scripted throttling. Then strict
//! ordering on `kpl sim` with shard limits and 30 % of entries throttled, read back by
//! sequence number. (Dedup under the simulator's faults: tests/fault_matrix.rs.)

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpl::client::ApiError;
use kpl::client::memory::{MemoryKinesis, Plan, StoredRecord};
use kpl::codec::deaggregate::{DeaggregatedRecord, Deaggregator};
use kpl::dedup::Deduper;
use kpl::producer::{Producer, ProducerConfig, RecordFuture, SendErrorReason};
use kpl::{HashKey, RecordError, UserRecord};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const STREAM: &str = "s";

async fn producer(fake: &Arc<MemoryKinesis>, config: ProducerConfig) -> Producer {
    common::memory_producer(fake, STREAM, config).await
}

/// `key-K` and a per-key counter, so both identity and per-key order can be read back.
fn record(i: usize, keys: usize) -> UserRecord {
    let key = i % keys;
    UserRecord::new(
        format!("key-{key}"),
        format!("{key}:{:06}:{}", i / keys, "x".repeat(40)),
    )
}

/// Stored records in stream order (shard, then sequence number), deaggregated.
fn read_back(stored: &[StoredRecord]) -> Vec<(String, DeaggregatedRecord)> {
    let mut stored = stored.to_vec();
    stored
        .sort_by(|a, b| (&a.shard_id, &a.sequence_number).cmp(&(&b.shard_id, &b.sequence_number)));
    let deagg = Deaggregator::new().strict(true);
    let mut out = Vec::new();
    for s in &stored {
        for u in deagg
            .deaggregate(&s.data, &s.partition_key, s.explicit_hash_key.as_deref())
            .expect("kpl reads what kpl writes")
        {
            out.push((s.shard_id.clone(), u));
        }
    }
    out
}

async fn send_in_waves(p: &Producer, records: &[UserRecord], waves: usize) -> Vec<RecordFuture> {
    let mut futures = Vec::new();
    for wave in records.chunks(records.len().div_ceil(waves)) {
        for r in wave {
            futures.push(p.send(r.clone()).await.expect("accepted"));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    futures
}

#[tokio::test(start_paused = true)]
async fn dedup_ids_remove_the_duplicates_of_lost_responses() {
    for aggregation_enabled in [true, false] {
        let fake = Arc::new(MemoryKinesis::new(4));
        // Every third call is stored, but its answer is lost: the producer resends it.
        fake.set_plan(|call| {
            if call.index % 3 == 1 {
                Plan::StoreThenError(ApiError::timeout(Duration::from_millis(500)))
            } else {
                Plan::Store
            }
        });
        let config = ProducerConfig {
            dedup_ids: true,
            aggregation_enabled,
            record_max_buffered_time: Duration::from_millis(20),
            ..Default::default()
        };
        let p = producer(&fake, config).await;
        let producer_id = p.dedup_producer_id().expect("dedup ids on");
        let records: Vec<UserRecord> = (0..600).map(|i| record(i, 30)).collect();
        let futures = send_in_waves(&p, &records, 10).await;
        let mut receipts = Vec::new();
        for f in futures {
            receipts.push(f.await.expect("stored"));
        }
        p.shutdown().await.expect("every record seen through");

        let read = read_back(&fake.stored());
        assert!(
            read.len() > records.len(),
            "lost responses must have made duplicates (aggregation {aggregation_enabled}): read {}",
            read.len()
        );
        // Every copy carries the id of the record it copies.
        let mut ids_by_data = HashMap::new();
        for (_, u) in &read {
            let id = u.dedup_id().expect("every record carries a dedup id");
            assert_eq!(id.producer, producer_id);
            assert_eq!(
                *ids_by_data.entry(u.data.clone()).or_insert(id),
                id,
                "copies share one id"
            );
        }
        for (i, receipt) in receipts.iter().enumerate() {
            assert_eq!(
                receipt.dedup_id,
                Some(ids_by_data[&records[i].data]),
                "the receipt names the id the reader sees"
            );
        }
        let mut deduper = Deduper::new(10_000);
        let mut kept: Vec<_> = read
            .iter()
            .filter(|(_, u)| deduper.keep(u))
            .map(|(_, u)| (u.partition_key.to_string(), u.data.clone()))
            .collect();
        let mut sent: Vec<_> = records
            .iter()
            .map(|r| (r.partition_key.clone(), r.data.clone()))
            .collect();
        kept.sort();
        sent.sort();
        assert_eq!(kept, sent, "after dedup: exactly what was sent");
        assert_eq!(deduper.duplicates() as usize, read.len() - records.len());
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_too_large_to_carry_its_dedup_id_fails_at_send() {
    let fake = Arc::new(MemoryKinesis::new(1).max_record_bytes(10_000));
    let p = producer(
        &fake,
        ProducerConfig {
            dedup_ids: true,
            ..Default::default()
        },
    )
    .await;
    let fits = UserRecord::new("k", vec![b'a'; 9_900]);
    let too_big = UserRecord::new("k", vec![b'a'; 9_990]);
    let receipt = p.send(fits).await.expect("fits").await.expect("stored");
    assert!(receipt.dedup_id.is_some());
    let err = p.send(too_big).await.expect_err("no room for the id");
    match err.reason {
        SendErrorReason::Invalid(RecordError::TooLarge { size, max }) => {
            assert_eq!(size, 9_991);
            assert!(max < 10_000 && max > 9_900, "{max}");
        }
        other => panic!("{other:?}"),
    }
    p.shutdown().await.expect("every record seen through");
    let stored = fake.stored();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].data.len() + stored[0].partition_key.len() <= 10_000);
}

/// Per key, the counters in the order they were stored; how many pairs are out of order.
fn inversions(read: &[(String, DeaggregatedRecord)]) -> usize {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut out = 0;
    for (_, u) in read {
        let text = std::str::from_utf8(&u.data).unwrap();
        let counter: u64 = text.split(':').nth(1).unwrap().parse().unwrap();
        if let Some(prev) = last.insert(u.partition_key.to_string(), counter)
            && counter < prev
        {
            out += 1;
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn strict_ordering_stores_each_key_in_send_order_under_throttling() {
    let mut seen_inversions = HashMap::new();
    for strict_ordering in [false, true] {
        let fake = Arc::new(MemoryKinesis::new(4));
        let shards = fake.shards();
        let most_per_shard = Arc::new(Mutex::new(0usize));
        let most = most_per_shard.clone();
        let mut rng = SmallRng::seed_from_u64(5);
        // 30 % of entries throttled, at random.
        fake.set_plan(move |call| {
            let mut per_shard = HashMap::new();
            for e in call.entries {
                let hash = match &e.explicit_hash_key {
                    Some(ehk) => ehk.parse::<HashKey>().unwrap(),
                    None => HashKey::of_partition_key(&e.partition_key),
                };
                let shard = shards.iter().position(|s| s.hash_range.contains(hash));
                *per_shard.entry(shard).or_insert(0usize) += 1;
            }
            let mut m = most.lock().unwrap();
            *m = (*m).max(per_shard.values().copied().max().unwrap_or(0));
            Plan::FailEntries(
                call.entries
                    .iter()
                    .map(|_| {
                        rng.random_bool(0.3)
                            .then(|| "ProvisionedThroughputExceededException".to_string())
                    })
                    .collect(),
            )
        });
        let config = ProducerConfig {
            strict_ordering,
            aggregation_max_size: 2_000,
            record_max_buffered_time: Duration::from_millis(10),
            rate_limit_enabled: false,
            max_attempts: 100,
            ..Default::default()
        };
        let p = producer(&fake, config).await;
        let records: Vec<UserRecord> = (0..3_000).map(|i| record(i, 20)).collect();
        let futures = send_in_waves(&p, &records, 30).await;
        for f in futures {
            f.await.expect("stored in the end");
        }
        p.shutdown().await.expect("every record seen through");
        let read = read_back(&fake.stored());
        assert_eq!(
            read.len(),
            records.len(),
            "throttled entries are not stored"
        );
        seen_inversions.insert(strict_ordering, inversions(&read));
        if strict_ordering {
            assert_eq!(
                *most_per_shard.lock().unwrap(),
                1,
                "strict ordering: at most one Kinesis record per shard in a call"
            );
        }
    }
    assert_eq!(
        seen_inversions[&true], 0,
        "strict ordering: every key's records stored in send order"
    );
    // The check has teeth: without strict ordering, retries do reorder.
    assert!(
        seen_inversions[&false] > 0,
        "expected reordering without strict ordering: {seen_inversions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_ordering_holds_on_kpl_sim_with_30_percent_throttled() {
    use kpl_sim::{EntryFault, Faults, Sim, SimConfig};
    let sim = Sim::start(SimConfig {
        streams: vec![("o".into(), 4)],
        enforce_limits: true,
        seed: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.set_faults(Faults {
        stream: Some("o".into()),
        entry_failures: vec![EntryFault {
            code: "ProvisionedThroughputExceededException".into(),
            probability: 0.3,
        }],
        ..Default::default()
    });
    let config = ProducerConfig {
        strict_ordering: true,
        aggregation_max_size: 4_000,
        record_max_buffered_time: Duration::from_millis(20),
        request_timeout: Duration::from_secs(2),
        max_attempts: 100,
        ..Default::default()
    };
    let p = Producer::new(sim.api(), "o", config).await.unwrap();
    let records: Vec<UserRecord> = (0..4_000).map(|i| record(i, 40)).collect();
    let mut futures = Vec::new();
    for wave in records.chunks(200) {
        for r in wave {
            futures.push(p.send(r.clone()).await.expect("accepted"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in futures {
        f.await.expect("stored in the end");
    }
    let m = p.metrics();
    p.shutdown().await.expect("every record seen through");
    assert!(
        m.throttled_entries > 10,
        "the faults fired: {} throttled entries",
        m.throttled_entries
    );
    sim.set_faults(Faults::default());
    // In each shard's read order (sequence number, then sub-sequence number).
    let read: Vec<(String, DeaggregatedRecord)> = common::read_all(sim.client(), "o")
        .await
        .into_iter()
        .map(|r| (r.shard_id, r.record))
        .collect();
    assert_eq!(read.len(), records.len(), "each record stored once");
    assert_eq!(inversions(&read), 0, "every key's records in send order");
}
