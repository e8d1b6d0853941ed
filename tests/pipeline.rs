//! The producer pipeline against the in-memory Kinesis, with scripted partial failures,
//! throttling, timeouts, fatal errors and a reshard, on tokio's paused clock.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kpl::client::memory::{MemoryKinesis, Plan, StoredRecord};
use kpl::client::{ApiError, ShardInfo};
use kpl::codec::deaggregate::Deaggregator;
use kpl::producer::config::DEFAULT_AGGREGATION_MAX_SIZE_BYTES;
use kpl::producer::{
    FailureReason, Producer, ProducerConfig, Receipt, RecordFailure, RecordFuture, SendErrorReason,
};
use kpl::{HashKey, RecordError, UserRecord};
use tokio::time::Instant;

const STREAM: &str = "test-stream";

async fn producer(fake: &Arc<MemoryKinesis>, config: ProducerConfig) -> Producer {
    common::memory_producer(fake, STREAM, config).await
}

fn record(i: usize, keys: usize) -> UserRecord {
    UserRecord::new(
        format!("key-{}", i % keys),
        format!("record {i:08} {}", "x".repeat(60)),
    )
}

async fn send_all(producer: &Producer, records: Vec<UserRecord>) -> Vec<RecordFuture> {
    let mut futures = Vec::with_capacity(records.len());
    for r in records {
        futures.push(producer.send(r).await.expect("accepted"));
    }
    futures
}

async fn outcomes(futures: Vec<RecordFuture>) -> Vec<Result<Receipt, RecordFailure>> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

/// The user records inside each stored Kinesis record, with the shard it was stored on.
fn user_records(stored: &[StoredRecord]) -> Vec<(String, String, u64, String, Bytes)> {
    let deagg = Deaggregator::new();
    let mut out = Vec::new();
    for s in stored {
        for u in deagg
            .deaggregate(&s.data, &s.partition_key, s.explicit_hash_key.as_deref())
            .expect("what kpl writes, kpl reads")
        {
            out.push((
                s.shard_id.clone(),
                s.sequence_number.clone(),
                u.sub_sequence_number,
                u.partition_key.into(),
                u.data,
            ));
        }
    }
    out
}

fn range_of(shards: &[ShardInfo], id: &str) -> kpl::HashRange {
    shards.iter().find(|s| s.shard_id == id).unwrap().hash_range
}

#[tokio::test(start_paused = true)]
async fn every_record_gets_a_receipt_that_matches_what_was_stored() {
    let fake = Arc::new(MemoryKinesis::new(64));
    let p = producer(&fake, ProducerConfig::default()).await;
    let records: Vec<_> = (0..20_000).map(|i| record(i, 1000)).collect();
    let futures = send_all(&p, records.clone()).await;
    let receipts: Vec<Receipt> = outcomes(futures)
        .await
        .into_iter()
        .map(|r| r.expect("stored"))
        .collect();
    p.shutdown().await;

    let stored = fake.stored();
    assert!(
        stored.len() < 20_000 / 10,
        "aggregation packs records: {} Kinesis records",
        stored.len()
    );
    let shards = fake.shards();
    let by_position: HashMap<(String, u64), (String, String, Bytes)> = user_records(&stored)
        .into_iter()
        .map(|(shard, seq, sub, key, data)| ((seq, sub), (shard, key, data)))
        .collect();
    assert_eq!(
        by_position.len(),
        20_000,
        "no user record lost or duplicated"
    );
    for (r, receipt) in records.iter().zip(&receipts) {
        let (shard, key, data) = &by_position[&(
            receipt.sequence_number.to_string(),
            receipt.sub_sequence_number,
        )];
        assert_eq!((key, data), (&r.partition_key, &r.data));
        assert_eq!(&**shard, &*receipt.shard_id);
        assert!(
            range_of(&shards, shard).contains(r.hash_key()),
            "KCL safety: user record outside its shard"
        );
        assert_eq!(receipt.attempts.len(), 1);
        assert!(receipt.attempts[0].error.is_none());
    }
    let m = p.metrics();
    assert_eq!(m.user_records_put, 20_000);
    assert_eq!(m.kinesis_records_put, stored.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn limits_of_aggregates_and_calls_hold() {
    let fake = Arc::new(MemoryKinesis::new(8));
    let calls = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let seen = calls.clone();
    fake.set_plan(move |call| {
        let bytes = call.entries.iter().map(|e| e.billed_bytes()).sum();
        seen.lock().unwrap().push((call.entries.len(), bytes));
        Plan::Store
    });
    let p = producer(&fake, ProducerConfig::default()).await;
    // 2 000 records of ~3 KiB: about 16 per aggregate.
    let records: Vec<_> = (0..2_000)
        .map(|i| UserRecord::new(format!("k{}", i % 300), vec![b'a' + (i % 26) as u8; 3_000]))
        .collect();
    for r in outcomes(send_all(&p, records).await).await {
        r.expect("stored");
    }
    p.shutdown().await;
    for s in fake.stored() {
        assert!(
            s.data.len() <= DEFAULT_AGGREGATION_MAX_SIZE_BYTES,
            "aggregate of {} bytes",
            s.data.len()
        );
    }
    for &(entries, bytes) in calls.lock().unwrap().iter() {
        assert!(entries <= 500 && bytes <= 5 * 1024 * 1024);
    }
}

#[tokio::test(start_paused = true)]
async fn only_failed_entries_are_retried() {
    let fake = Arc::new(MemoryKinesis::new(4));
    fake.set_plan(|call| match call.index {
        0 => Plan::FailEntries(vec![
            Some("ProvisionedThroughputExceededException".into()),
            None,
            Some("InternalFailure".into()),
        ]),
        _ => Plan::Store,
    });
    let config = ProducerConfig {
        aggregation_enabled: false,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let records: Vec<_> = (0..50).map(|i| record(i, 50)).collect();
    let results = outcomes(send_all(&p, records).await).await;
    p.shutdown().await;

    let retried: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().expect("stored"))
        .filter(|r| r.attempts.len() == 2)
        .collect();
    assert_eq!(
        retried.len(),
        2,
        "exactly the two failed entries were retried"
    );
    let codes: Vec<_> = retried
        .iter()
        .map(|r| r.attempts[0].error.as_ref().unwrap().code.clone())
        .collect();
    assert!(codes.contains(&"ProvisionedThroughputExceededException".to_string()));
    assert!(codes.contains(&"InternalFailure".to_string()));
    assert_eq!(
        fake.stored().len(),
        50,
        "no duplicates: nothing stored twice"
    );
    let m = p.metrics();
    assert_eq!(m.throttled_entries, 1);
}

#[tokio::test(start_paused = true)]
async fn fatal_entry_errors_fail_at_once_without_retry() {
    let fake = Arc::new(MemoryKinesis::new(1));
    fake.set_plan(|_| Plan::FailEntries(vec![Some("KMSDisabledException".into()); 500]));
    let p = producer(&fake, ProducerConfig::default()).await;
    let start = Instant::now();
    let results = outcomes(send_all(&p, vec![record(1, 1)]).await).await;
    let failure = results.into_iter().next().unwrap().unwrap_err();
    assert!(
        matches!(failure.reason, FailureReason::Fatal { ref code, .. } if code == "KMSDisabledException")
    );
    assert_eq!(failure.attempts.len(), 1);
    assert_eq!(failure.record.unwrap().partition_key, "key-0");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.put_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_stream_surfaces_within_a_second() {
    let fake = Arc::new(MemoryKinesis::new(2));
    let p = producer(&fake, ProducerConfig::default()).await;
    fake.set_plan(|_| {
        Plan::Error(ApiError::service(
            "ResourceNotFoundException",
            Some(400),
            "Stream test-stream not found",
        ))
    });
    let start = Instant::now();
    let results = outcomes(send_all(&p, (0..100).map(|i| record(i, 10)).collect()).await).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    for r in results {
        let f = r.unwrap_err();
        assert!(f.to_string().contains("ResourceNotFoundException"), "{f}");
        assert!(f.to_string().contains("Check the stream name"), "{f}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_call_times_out_and_is_retried() {
    let fake = Arc::new(MemoryKinesis::new(1));
    fake.set_plan(|call| {
        if call.index == 0 {
            Plan::Hang
        } else {
            Plan::Store
        }
    });
    let config = ProducerConfig {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let receipt = outcomes(send_all(&p, vec![record(7, 1)]).await)
        .await
        .pop()
        .unwrap()
        .expect("stored on the second attempt");
    assert_eq!(receipt.attempts.len(), 2);
    let first = &receipt.attempts[0];
    assert_eq!(first.error.as_ref().unwrap().code, "Timeout");
    assert!(
        first.duration >= Duration::from_millis(500) && first.duration < Duration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_that_never_lands_expires_at_its_ttl_with_its_attempts() {
    let fake = Arc::new(MemoryKinesis::new(1));
    fake.set_plan(|_| Plan::FailEntries(vec![Some("InternalFailure".into()); 500]));
    let config = ProducerConfig {
        record_ttl: Duration::from_secs(3),
        max_attempts: 1000,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let start = Instant::now();
    let failure = outcomes(send_all(&p, vec![record(1, 1)]).await)
        .await
        .pop()
        .unwrap()
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(failure.reason, FailureReason::Expired { .. }),
        "{failure}"
    );
    assert!(failure.to_string().contains("InternalFailure"), "{failure}");
    assert!(failure.attempts.len() > 2);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(9),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped() {
    let fake = Arc::new(MemoryKinesis::new(1));
    fake.set_plan(|_| {
        Plan::FailEntries(vec![
            Some("ProvisionedThroughputExceededException".into());
            500
        ])
    });
    let config = ProducerConfig {
        max_attempts: 3,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let failure = outcomes(send_all(&p, vec![record(1, 1)]).await)
        .await
        .pop()
        .unwrap()
        .unwrap_err();
    assert!(matches!(
        failure.reason,
        FailureReason::AttemptsExhausted {
            max_attempts: 3,
            ..
        }
    ));
    assert_eq!(failure.attempts.len(), 3);
    assert_eq!(fake.put_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_response_with_the_wrong_entry_count_retries_every_entry() {
    let fake = Arc::new(MemoryKinesis::new(1));
    fake.set_plan(|call| {
        if call.index == 0 {
            Plan::Truncate(1)
        } else {
            Plan::Store
        }
    });
    let config = ProducerConfig {
        aggregation_enabled: false,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let results = outcomes(send_all(&p, (0..5).map(|i| record(i, 5)).collect()).await).await;
    for r in results {
        let receipt = r.expect("stored");
        assert_eq!(receipt.attempts.len(), 2);
        assert_eq!(
            receipt.attempts[0].error.as_ref().unwrap().code,
            "ResponseMismatch"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_split_mid_run_never_leaves_an_aggregate_across_shards() {
    let fake = Arc::new(MemoryKinesis::new(2));
    let p = producer(&fake, ProducerConfig::default()).await;
    let first: Vec<_> = (0..2_000).map(|i| record(i, 500)).collect();
    for r in outcomes(send_all(&p, first.clone()).await).await {
        r.expect("stored");
    }
    // Split shard 0 behind the producer's back: its map is now stale.
    let parent = fake.shards()[0].clone();
    let mid = HashKey(
        parent.hash_range.start.0 + (parent.hash_range.end.0 - parent.hash_range.start.0) / 2,
    );
    let children = fake.split_shard(&parent.shard_id, mid);
    let second: Vec<_> = (2_000..4_000).map(|i| record(i, 500)).collect();
    let receipts: Vec<_> = outcomes(send_all(&p, second.clone()).await)
        .await
        .into_iter()
        .map(|r| r.expect("stored despite the split"))
        .collect();
    p.shutdown().await;

    let shards = fake.shards();
    for (r, receipt) in second.iter().zip(&receipts) {
        assert_ne!(
            &*receipt.shard_id,
            parent.shard_id.as_str(),
            "parent is closed"
        );
        assert!(range_of(&shards, &receipt.shard_id).contains(r.hash_key()));
        if parent.hash_range.contains(r.hash_key()) {
            assert!(children.iter().any(|c| **c == *receipt.shard_id));
        }
    }
    // Every receipt points at a Kinesis record whose user records all belong to its shard: the
    // KCL will deliver it. (Aggregates that landed across the new boundary were sent again.)
    let stored = fake.stored();
    let deagg = Deaggregator::new();
    let by_seq: HashMap<&str, &StoredRecord> = stored
        .iter()
        .map(|s| (s.sequence_number.as_str(), s))
        .collect();
    for receipt in &receipts {
        let s = by_seq[&*receipt.sequence_number];
        let range = range_of(&shards, &s.shard_id);
        for u in deagg
            .deaggregate(&s.data, &s.partition_key, s.explicit_hash_key.as_deref())
            .unwrap()
        {
            assert!(
                range.contains(u.hash_key),
                "receipt points at an aggregate the KCL drops"
            );
        }
    }
    let wrong: usize = receipts
        .iter()
        .filter(|r| {
            r.attempts
                .iter()
                .any(|a| a.error.as_ref().is_some_and(|e| e.code == "WrongShard"))
        })
        .count();
    assert!(
        wrong > 0,
        "the stale map was noticed through wrong-shard results"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_records_fail_at_send_before_buffering() {
    let fake = Arc::new(MemoryKinesis::new(1));
    let p = producer(&fake, ProducerConfig::default()).await;
    let too_big = UserRecord::new("k", vec![0u8; 1024 * 1024]);
    let err = p.send(too_big).await.unwrap_err();
    assert!(matches!(
        err.reason,
        SendErrorReason::Invalid(RecordError::TooLarge {
            size: 1_048_577,
            max: 1_048_576
        })
    ));
    assert_eq!(
        err.record.data.len(),
        1024 * 1024,
        "the record is handed back"
    );
    let err = p.try_send(UserRecord::new("", "x")).unwrap_err();
    assert!(matches!(
        err.reason,
        SendErrorReason::Invalid(RecordError::EmptyPartitionKey)
    ));
    p.shutdown().await;
    assert_eq!(fake.put_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_stream_record_limit_is_honoured() {
    let fake = Arc::new(MemoryKinesis::new(1).max_record_bytes(10 * 1024 * 1024));
    let p = producer(&fake, ProducerConfig::default()).await;
    assert_eq!(p.max_record_bytes(), 10 * 1024 * 1024);
    let big = UserRecord::new("k", vec![7u8; 4 * 1024 * 1024]);
    let receipt = p
        .send(big)
        .await
        .unwrap()
        .await
        .expect("a 4 MiB record on a 10 MiB stream");
    assert_eq!(receipt.sub_sequence_number, 0);
    p.shutdown().await;
    assert_eq!(fake.stored()[0].data.len(), 4 * 1024 * 1024);
}

#[tokio::test(start_paused = true)]
async fn try_send_reports_a_full_buffer_and_room_returns_when_records_resolve() {
    let fake = Arc::new(MemoryKinesis::new(1));
    let gate = Arc::new(AtomicU64::new(0));
    let open = gate.clone();
    fake.set_plan(move |_| {
        if open.load(Ordering::SeqCst) == 0 {
            Plan::Delay(Duration::from_secs(5), Box::new(Plan::Store))
        } else {
            Plan::Store
        }
    });
    let config = ProducerConfig {
        max_outstanding_records: 10,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let mut futures = Vec::new();
    for i in 0..10 {
        futures.push(p.try_send(record(i, 3)).expect("room for 10"));
    }
    let err = p.try_send(record(10, 3)).unwrap_err();
    assert_eq!(err.reason, SendErrorReason::Full);
    // Walk away from the futures: the records still resolve and give their room back.
    drop(futures);
    gate.store(1, Ordering::SeqCst);
    p.flush().await;
    for i in 0..10 {
        drop(p.try_send(record(i, 3)).expect("room is back"));
    }
    p.shutdown().await;
    assert_eq!(
        user_records(&fake.stored()).len(),
        20,
        "both rounds stored, once each"
    );
}

#[tokio::test(start_paused = true)]
async fn flush_does_not_wait_for_the_buffered_time_and_shutdown_closes() {
    let fake = Arc::new(MemoryKinesis::new(4));
    let config = ProducerConfig {
        record_max_buffered_time: Duration::from_secs(60),
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let futures = send_all(&p, (0..100).map(|i| record(i, 10)).collect()).await;
    let start = Instant::now();
    p.flush().await;
    assert!(start.elapsed() < Duration::from_secs(1));
    for r in outcomes(futures).await {
        r.expect("stored by the flush");
    }
    p.shutdown().await;
    let err = p.send(record(1, 1)).await.unwrap_err();
    assert_eq!(err.reason, SendErrorReason::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_limiter_paces_one_shard_at_its_record_rate() {
    let fake = Arc::new(MemoryKinesis::new(1));
    let config = ProducerConfig {
        aggregation_enabled: false,
        rate_limit_percent: 100,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let start = Instant::now();
    let futures = send_all(&p, (0..5_000).map(|i| record(i, 100)).collect()).await;
    for r in outcomes(futures).await {
        r.expect("stored");
    }
    let took = start.elapsed();
    // 5 000 records at 1 000 records/s: about 4 s once the first second's burst is spent.
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(6),
        "took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn explicit_hash_keys_route_records() {
    let fake = Arc::new(MemoryKinesis::new(4));
    let p = producer(&fake, ProducerConfig::default()).await;
    let shards = fake.shards();
    let mut futures = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        let r = UserRecord::new("same-key", format!("to shard {i}"))
            .with_explicit_hash_key(s.hash_range.end);
        futures.push(p.send(r).await.unwrap());
    }
    for (r, s) in outcomes(futures).await.into_iter().zip(&shards) {
        assert_eq!(&*r.unwrap().shard_id, s.shard_id.as_str());
    }
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_resolves_to_every_record_s_outcome_in_order() {
    let fake = Arc::new(MemoryKinesis::new(16));
    // The first call stores all but its second entry, which fails for good: the records in
    // that Kinesis record fail, every other record is stored, each outcome in its place.
    fake.set_plan(|call| match call.index {
        0 => Plan::FailEntries(vec![None, Some("KMSDisabledException".into())]),
        _ => Plan::Store,
    });
    let p = producer(&fake, ProducerConfig::default()).await;
    let records: Vec<_> = (0..3_000).map(|i| record(i, 300)).collect();
    let mut batches = Vec::new();
    for chunk in records.chunks(700) {
        batches.push(p.send_batch(chunk.to_vec()).await.expect("accepted"));
    }
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 3_000);
    let mut results = Vec::new();
    for b in batches {
        results.extend(b.await);
    }
    p.shutdown().await;

    assert_eq!(results.len(), 3_000);
    let stored = user_records(&fake.stored());
    let by_position: HashMap<(String, u64), (String, Bytes)> = stored
        .into_iter()
        .map(|(_, seq, sub, key, data)| ((seq, sub), (key, data)))
        .collect();
    let mut failed = 0;
    for (r, result) in records.iter().zip(&results) {
        match result {
            Ok(receipt) => {
                let (key, data) = &by_position[&(
                    receipt.sequence_number.to_string(),
                    receipt.sub_sequence_number,
                )];
                assert_eq!((key, data), (&r.partition_key, &r.data), "in batch order");
            }
            Err(failure) => {
                failed += 1;
                assert!(matches!(failure.reason, FailureReason::Fatal { .. }));
                assert_eq!(failure.record.as_ref(), Some(r), "the record comes back");
            }
        }
    }
    assert!(failed > 0, "one Kinesis record's user records failed");
    assert_eq!(
        by_position.len() + failed,
        3_000,
        "every other record stored once"
    );
    let m = p.metrics();
    assert_eq!(m.user_records_received, 3_000);
    assert_eq!(m.user_records_put as usize, 3_000 - failed);
}

#[tokio::test(start_paused = true)]
async fn a_batch_with_a_bad_record_or_too_big_for_the_buffer_is_handed_back_whole() {
    let fake = Arc::new(MemoryKinesis::new(2));
    let config = ProducerConfig {
        max_outstanding_records: 100,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let mut records: Vec<_> = (0..10).map(|i| record(i, 10)).collect();
    records[7].partition_key.clear();
    let err = p.send_batch(records.clone()).await.unwrap_err();
    assert_eq!(err.index, Some(7));
    assert_eq!(
        err.reason,
        SendErrorReason::Invalid(RecordError::EmptyPartitionKey)
    );
    assert_eq!(err.records, records, "handed back untouched, in order");
    assert!(err.to_string().starts_with("record 7 of the batch: "));

    let big: Vec<_> = (0..101).map(|i| record(i, 10)).collect();
    let err = p.send_batch(big).await.unwrap_err();
    assert!(matches!(
        err.reason,
        SendErrorReason::BatchTooLarge {
            records: 101,
            max_records: 100,
            ..
        }
    ));
    assert_eq!(err.records.len(), 101);
    assert_eq!(p.metrics().user_records_received, 0, "nothing was buffered");

    // An empty batch resolves at once; a batch waits for room like `send`, and the room
    // comes back when its records resolve.
    assert!(p.send_batch(Vec::new()).await.unwrap().await.is_empty());
    for _ in 0..3 {
        let batch: Vec<_> = (0..100).map(|i| record(i, 10)).collect();
        let results = p.send_batch(batch).await.unwrap().await;
        assert!(results.iter().all(Result::is_ok));
    }
    p.shutdown().await;
    let err = p.send_batch(vec![record(1, 1)]).await.unwrap_err();
    assert_eq!(err.reason, SendErrorReason::Closed);
}

/// The producer keeps no copy of a user record once it is in an aggregate: a failed or expired
/// record is rebuilt from the (compressed) Kinesis record that carried it. It must come back
/// exactly as it was sent, explicit hash key included.
#[tokio::test(start_paused = true)]
async fn failed_and_expired_records_come_back_intact_from_compressed_aggregates() {
    use kpl::producer::Compression;
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(|call| match call.index {
        0 => Plan::FailEntries(vec![Some("KMSDisabledException".into()); 500]),
        _ => Plan::FailEntries(vec![Some("InternalFailure".into()); 500]),
    });
    let config = ProducerConfig {
        compression: Compression::Zstd { level: 1 },
        record_ttl: Duration::from_secs(2),
        max_attempts: 1000,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let mut records: Vec<_> = (0..400).map(|i| record(i, 7)).collect();
    records[5] = records[5]
        .clone()
        .with_explicit_hash_key(HashKey(u128::MAX / 3));
    let first = send_all(&p, records[..200].to_vec()).await;
    p.flush().await;
    let second = send_all(&p, records[200..].to_vec()).await;
    p.flush().await;
    // Alone in its Kinesis record: sent as its own data, compressed.
    let lone = UserRecord::new("lone", "y".repeat(5_000));
    let third = send_all(&p, vec![lone.clone()]).await;
    let (first, second) = (outcomes(first).await, outcomes(second).await);
    let third = outcomes(third).await.pop().unwrap().unwrap_err();
    assert_eq!(third.record, Some(lone));
    p.shutdown().await;
    for (r, outcome) in records.iter().zip(first.iter().chain(&second)) {
        let failure = outcome.as_ref().expect_err("nothing is stored");
        assert_eq!(failure.record.as_ref(), Some(r));
    }
    assert!(
        first
            .iter()
            .all(|o| matches!(o.as_ref().unwrap_err().reason, FailureReason::Fatal { .. }))
    );
    assert!(second.iter().all(|o| matches!(
        o.as_ref().unwrap_err().reason,
        FailureReason::Expired { .. }
    )));
}
