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
    p.shutdown().await.expect("every record seen through");

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
    p.shutdown().await.expect("every record seen through");
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
    p.shutdown().await.expect("every record seen through");

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
    p.shutdown().await.expect("every record seen through");

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
    p.shutdown().await.expect("every record seen through");
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
    p.shutdown().await.expect("every record seen through");
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
    p.flush().await.expect("every record seen through");
    for i in 0..10 {
        drop(p.try_send(record(i, 3)).expect("room is back"));
    }
    p.shutdown().await.expect("every record seen through");
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
    p.flush().await.expect("every record seen through");
    assert!(start.elapsed() < Duration::from_secs(1));
    for r in outcomes(futures).await {
        r.expect("stored by the flush");
    }
    p.shutdown().await.expect("every record seen through");
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
    p.shutdown().await.expect("every record seen through");
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
    p.shutdown().await.expect("every record seen through");

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
    p.shutdown().await.expect("every record seen through");
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
    p.flush().await.expect("every record seen through");
    let second = send_all(&p, records[200..].to_vec()).await;
    p.flush().await.expect("every record seen through");
    // Alone in its Kinesis record: sent as its own data, compressed.
    let lone = UserRecord::new("lone", "y".repeat(5_000));
    let third = send_all(&p, vec![lone.clone()]).await;
    let (first, second) = (outcomes(first).await, outcomes(second).await);
    let third = outcomes(third).await.pop().unwrap().unwrap_err();
    assert_eq!(third.record, Some(lone));
    p.shutdown().await.expect("every record seen through");
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

/// Every duration at its largest allowed value: deadlines, backoff, timeouts and TTL checks
/// do not overflow the clock. A hung call times out after an hour, is retried after at most an
/// hour's backoff, and records that keep failing run out of attempts well within their TTL.
#[tokio::test(start_paused = true)]
async fn the_largest_allowed_durations_run_without_overflow() {
    use kpl::producer::backoff::BackoffConfig;
    use kpl::producer::config::{
        MAX_BACKOFF_CAP_SECS, MAX_RECORD_MAX_BUFFERED_TIME_SECS, MAX_RECORD_TTL_SECS,
        MAX_REQUEST_TIMEOUT_SECS,
    };
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(|call| match call.index {
        0 => Plan::Hang,
        1 => Plan::Store,
        _ => Plan::FailEntries(vec![Some("InternalFailure".into()); 500]),
    });
    let config = ProducerConfig {
        record_ttl: Duration::from_secs(MAX_RECORD_TTL_SECS),
        record_max_buffered_time: Duration::from_secs(MAX_RECORD_MAX_BUFFERED_TIME_SECS),
        request_timeout: Duration::from_secs(MAX_REQUEST_TIMEOUT_SECS),
        backoff: BackoffConfig {
            base: Duration::from_secs(MAX_BACKOFF_CAP_SECS),
            cap: Duration::from_secs(MAX_BACKOFF_CAP_SECS),
        },
        max_attempts: 3,
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let start = Instant::now();
    let first = outcomes(send_all(&p, vec![record(1, 1)]).await).await;
    let receipt = first[0].as_ref().expect("stored on the second attempt");
    assert_eq!(receipt.attempts[0].error.as_ref().unwrap().code, "Timeout");
    let second = outcomes(send_all(&p, vec![record(2, 1)]).await).await;
    assert!(matches!(
        second[0].as_ref().unwrap_err().reason,
        FailureReason::AttemptsExhausted { .. }
    ));
    assert!(start.elapsed() < Duration::from_secs(MAX_RECORD_TTL_SECS));
    p.shutdown().await.expect("every record seen through");
}

/// A [`KinesisApi`](kpl::client::KinesisApi) over a [`MemoryKinesis`] whose PutRecords calls
/// panic as `panic_on(call index)` says (in the call itself, or in its future), and whose
/// ListShards calls fail as `list_fails(call index)` says (call 0 lists for `Producer::new`).
struct Scripted {
    inner: Arc<MemoryKinesis>,
    calls: AtomicU64,
    panic_on: fn(u64) -> Option<PanicAt>,
    lists: AtomicU64,
    list_fails: fn(u64) -> Option<ApiError>,
}

impl Scripted {
    fn new(inner: &Arc<MemoryKinesis>) -> Self {
        Scripted {
            inner: inner.clone(),
            calls: AtomicU64::new(0),
            panic_on: |_| None,
            lists: AtomicU64::new(0),
            list_fails: |_| None,
        }
    }
}

#[derive(Clone, Copy)]
enum PanicAt {
    Call,
    Future,
}

impl kpl::client::KinesisApi for Scripted {
    fn put_records(
        &self,
        stream: &kpl::client::StreamId,
        entries: Vec<kpl::client::PutRecordsEntry>,
    ) -> kpl::client::BoxFuture<'static, Result<Vec<kpl::client::PutRecordsResultEntry>, ApiError>>
    {
        let index = self.calls.fetch_add(1, Ordering::SeqCst);
        match (self.panic_on)(index) {
            Some(PanicAt::Call) => panic!("scripted panic in put_records, call {index}"),
            Some(PanicAt::Future) => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                panic!("scripted panic in the put_records future, call {index}")
            }),
            None => self.inner.put_records(stream, entries),
        }
    }

    fn list_shards(
        &self,
        stream: &kpl::client::StreamId,
        next_token: Option<String>,
    ) -> kpl::client::BoxFuture<'static, Result<kpl::client::ListShardsPage, ApiError>> {
        let index = self.lists.fetch_add(1, Ordering::SeqCst);
        match (self.list_fails)(index) {
            // A code of "Hang": the call never answers.
            Some(error) if error.code.as_deref() == Some("Hang") => {
                Box::pin(std::future::pending())
            }
            Some(error) => Box::pin(async move { Err(error) }),
            None => self.inner.list_shards(stream, next_token),
        }
    }

    fn describe_stream_summary(
        &self,
        stream: &kpl::client::StreamId,
    ) -> kpl::client::BoxFuture<'static, Result<kpl::client::StreamSummary, ApiError>> {
        self.inner.describe_stream_summary(stream)
    }
}

/// A client that panics (in the call, then in its future) fails that call like a retryable
/// error: the records are stored by the next attempt, their attempts say what happened.
#[tokio::test(start_paused = true)]
async fn a_panicking_client_call_is_retried_like_an_error() {
    let fake = Arc::new(MemoryKinesis::new(1));
    let api = Arc::new(Scripted {
        panic_on: |i| match i {
            0 => Some(PanicAt::Call),
            1 => Some(PanicAt::Future),
            _ => None,
        },
        ..Scripted::new(&fake)
    });
    let p = Producer::new(api, STREAM, ProducerConfig::default())
        .await
        .unwrap();
    let futures = send_all(&p, (0..10).map(|i| record(i, 3)).collect()).await;
    let results = tokio::time::timeout(Duration::from_secs(3600), outcomes(futures))
        .await
        .expect("every record resolves");
    for r in results {
        let receipt = r.expect("stored on the third attempt");
        let codes: Vec<_> = receipt
            .attempts
            .iter()
            .map(|a| a.error.as_ref().map(|e| e.code.clone()))
            .collect();
        assert_eq!(
            codes,
            [
                Some("KinesisApiPanic".into()),
                Some("KinesisApiPanic".into()),
                None
            ]
        );
    }
    assert_eq!(fake.stored_count(), 1);
}

/// A tracing subscriber that panics on the first event whose message contains `needle`: a
/// way to make the pipeline task itself fail at a chosen point, as a bug would.
struct PanicOnEvent {
    needle: &'static str,
    fired: std::sync::atomic::AtomicBool,
}

impl tracing::Subscriber for PanicOnEvent {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains(self.needle) && !self.fired.swap(true, Ordering::SeqCst) {
            panic!("scripted failure of the pipeline task");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The pipeline task fails (a panic while it reads a failed call's answer) with records in
/// every place: the call being answered, a call in flight, open aggregates, and a `send`
/// waiting for room. Every record fails with `PipelineFailed` and comes back intact; the
/// waiting and later sends fail at once; flush and shutdown say what happened.
#[tokio::test(start_paused = true)]
async fn a_failed_pipeline_task_fails_every_record_and_hands_it_back() {
    let _guard = tracing::subscriber::set_default(PanicOnEvent {
        needle: "PutRecords call failed",
        fired: Default::default(),
    });
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(|call| match call.index {
        0 => Plan::Delay(
            Duration::from_secs(1),
            Box::new(Plan::Error(ApiError::service(
                "InternalFailure",
                Some(500),
                "boom",
            ))),
        ),
        _ => Plan::Hang,
    });
    let config = ProducerConfig {
        max_outstanding_records: 30,
        record_max_buffered_time: Duration::from_millis(100),
        ..Default::default()
    };
    let p = Arc::new(producer(&fake, config).await);
    // Call 0 (answered with an error at 1 s), call 1 (never answered), then open aggregates.
    let mut sent: Vec<(UserRecord, RecordFuture)> = Vec::new();
    for round in 0..3 {
        for i in 0..10 {
            let r = record(round * 10 + i, 4);
            sent.push((r.clone(), p.send(r).await.unwrap()));
        }
        tokio::time::sleep(Duration::from_millis([300, 750, 0][round])).await;
    }
    // The buffer is full: this send waits for room, until the task fails.
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.send(record(99, 4)).await })
    };
    let results = tokio::time::timeout(Duration::from_secs(60), async {
        let mut out = Vec::new();
        for (r, f) in sent {
            out.push((r, f.await));
        }
        out
    })
    .await
    .expect("every record resolves once the task fails");
    let mut maybe = 0;
    for (r, result) in results {
        let failure = result.expect_err("nothing was stored");
        match &failure.reason {
            FailureReason::PipelineFailed {
                message,
                maybe_stored,
            } => {
                assert!(message.contains("scripted failure"), "{failure}");
                maybe += usize::from(*maybe_stored);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            failure.to_string().contains("not necessarily stored"),
            "{failure}"
        );
        assert_eq!(failure.record.as_ref(), Some(&r), "the record comes back");
    }
    // Call 0's answer was being read and call 1 was in flight: their 20 records may be
    // stored; the last 10 were still in their aggregates.
    assert_eq!(maybe, 20);
    let waited = waiting.await.unwrap().expect_err("the waiting send fails");
    assert!(matches!(
        waited.reason,
        SendErrorReason::PipelineFailed { .. }
    ));
    assert_eq!(waited.record, record(99, 4));
    let later = p.try_send(record(100, 4)).unwrap_err();
    assert!(matches!(
        later.reason,
        SendErrorReason::PipelineFailed { .. }
    ));
    assert!(matches!(
        p.flush().await,
        Err(kpl::producer::FlushError::PipelineFailed { .. })
    ));
    assert!(matches!(
        p.shutdown().await,
        Err(kpl::producer::FlushError::PipelineFailed { .. })
    ));
}

/// `abort()` with records in flight, in open aggregates and in a batch: each fails at once with
/// `Aborted` and its record (those in flight say they may be stored), `abort` returns when all
/// have resolved, and the producer is closed afterwards.
#[tokio::test(start_paused = true)]
async fn abort_fails_every_outstanding_record_and_hands_it_back() {
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(|_| Plan::Hang);
    let config = ProducerConfig {
        record_max_buffered_time: Duration::from_secs(1),
        ..Default::default()
    };
    let p = producer(&fake, config).await;
    let first: Vec<_> = (0..20).map(|i| record(i, 5)).collect();
    let in_flight = send_all(&p, first.clone()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        fake.put_calls() >= 1,
        "the first records are in a hung call"
    );
    let second: Vec<_> = (20..40).map(|i| record(i, 5)).collect();
    let buffered = send_all(&p, second.clone()).await;
    let batch: Vec<_> = (40..50).map(|i| record(i, 5)).collect();
    let batch_future = p.send_batch(batch.clone()).await.unwrap();

    p.abort().await;
    // Polled once each, no time passing: resolved by the time abort returned.
    let mut results = Vec::new();
    for f in in_flight.into_iter().chain(buffered) {
        results.push(
            tokio::time::timeout(Duration::ZERO, f)
                .await
                .expect("resolved"),
        );
    }
    results.extend(
        tokio::time::timeout(Duration::ZERO, batch_future)
            .await
            .expect("resolved"),
    );
    let sent: Vec<_> = first.iter().chain(&second).chain(&batch).collect();
    for (i, (r, result)) in sent.into_iter().zip(results).enumerate() {
        let failure = result.expect_err("aborted");
        assert_eq!(failure.record.as_ref(), Some(r));
        let FailureReason::Aborted { maybe_stored } = failure.reason else {
            panic!("{failure}");
        };
        assert_eq!(maybe_stored, i < 20, "record {i}: {failure}");
        if maybe_stored {
            assert!(failure.to_string().contains("may or may not"), "{failure}");
        }
    }
    let later = p.send(record(99, 5)).await.unwrap_err();
    assert_eq!(later.reason, SendErrorReason::Closed);
    assert_eq!(p.shutdown().await, Err(kpl::producer::FlushError::Aborted));
}

/// Sends racing `shutdown` from other threads: each record is stored or failed, or its send
/// fails, and every path hands the record back. None resolves `Lost` (before, a record sent
/// while the pipeline task was stopping was dropped with its channel). Real threads, so the
/// race can happen; no timing is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_racing_shutdown_are_stored_or_handed_back() {
    for round in 0..500 {
        let fake = Arc::new(MemoryKinesis::new(2));
        let config = ProducerConfig {
            max_outstanding_records: 4,
            record_max_buffered_time: Duration::from_millis(1),
            ..Default::default()
        };
        let p = Arc::new(producer(&fake, config).await);
        let senders: Vec<_> = (0..16)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    match p.send(record(i, 7)).await {
                        Ok(future) => future.await.map(|_| ()).map_err(|f| f.record),
                        Err(e) => Err(Some(e.record)),
                    }
                })
            })
            .collect();
        for _ in 0..round % 8 {
            tokio::task::yield_now().await;
        }
        p.shutdown().await.expect("shut down");
        for (i, s) in senders.into_iter().enumerate() {
            let outcome = tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("resolves")
                .unwrap();
            if let Err(back) = outcome {
                assert_eq!(back, Some(record(i, 7)), "round {round}, record {i}");
            }
        }
    }
}

/// A partition key whose hash lies in `range`.
fn key_in(range: kpl::HashRange, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|k| range.contains(HashKey::of_partition_key(k)))
        .unwrap()
}

/// A refresh of the shard map (after another shard's split) keeps an untouched shard's send
/// order: its open aggregate is not queued ahead of its older queued ones. The untouched
/// shard is sent to at twice its rate, so its limiter keeps a queue; with and without strict
/// ordering, its one key is stored in send order.
#[tokio::test(start_paused = true)]
async fn a_refresh_keeps_an_untouched_shard_s_send_order() {
    for strict_ordering in [false, true] {
        let fake = Arc::new(MemoryKinesis::new(2));
        let shards = fake.shards();
        let steady = key_in(shards[1].hash_range, "steady");
        let config = ProducerConfig {
            strict_ordering,
            ..Default::default()
        };
        let p = producer(&fake, config).await;
        let parent = shards[0].clone();
        let mid = HashKey(
            parent.hash_range.start.0 + (parent.hash_range.end.0 - parent.hash_range.start.0) / 2,
        );
        let mut futures = Vec::new();
        for i in 0..3_000usize {
            // ~2 MiB/s for the steady key's shard: 1 KiB every 0.5 ms.
            let data = format!("{i:08}{}", "s".repeat(1_016));
            futures.push(p.send(UserRecord::new(steady.clone(), data)).await.unwrap());
            if i == 1_000 {
                fake.split_shard(&parent.shard_id, mid);
            }
            if i > 1_000 && i % 50 == 0 {
                // Several keys on the split shard: aggregates that land on a child.
                for k in 0..4 {
                    let key = key_in(parent.hash_range, &format!("split{k}-{i}"));
                    futures.push(p.send(UserRecord::new(key, "x")).await.unwrap());
                }
            }
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for r in outcomes(futures).await {
            r.expect("stored");
        }
        p.shutdown().await.unwrap();
        let order: Vec<usize> = user_records(&fake.stored())
            .into_iter()
            .filter(|(_, _, _, key, _)| *key == steady)
            .map(|(_, _, _, _, data)| std::str::from_utf8(&data[..8]).unwrap().parse().unwrap())
            .collect();
        assert_eq!(order.len(), 3_000);
        let first_out_of_order = order.windows(2).position(|w| w[0] > w[1]);
        assert_eq!(
            first_out_of_order, None,
            "strict_ordering {strict_ordering}: the steady key's records are stored in send order"
        );
    }
}

/// Without aggregation, a record stored on a shard other than the predicted one (a split the
/// producer has not seen) refreshes the shard map: the children are then paced as two shards,
/// each at its own rate, instead of as one.
#[tokio::test(start_paused = true)]
async fn a_lone_record_on_an_unexpected_shard_refreshes_the_map() {
    let fake = Arc::new(MemoryKinesis::new(1));
    let api = Arc::new(Scripted::new(&fake));
    let config = ProducerConfig {
        aggregation_enabled: false,
        rate_limit_percent: 100,
        ..Default::default()
    };
    let p = Producer::new(api.clone(), STREAM, config).await.unwrap();
    for r in outcomes(send_all(&p, (0..100).map(|i| record(i, 50)).collect()).await).await {
        r.expect("stored");
    }
    let parent = fake.shards()[0].clone();
    let children = fake.split_shard(&parent.shard_id, HashKey(parent.hash_range.end.0 / 2));
    let listed = api.lists.load(Ordering::SeqCst);
    for r in outcomes(send_all(&p, (100..200).map(|i| record(i, 50)).collect()).await).await {
        let receipt = r.expect("stored");
        assert!(children.iter().any(|c| **c == *receipt.shard_id));
    }
    assert!(
        api.lists.load(Ordering::SeqCst) > listed,
        "records stored on the children refresh the map"
    );
    // 8 000 records over both children: ~4 s at 2 x 1 000 records/s, ~8 s paced as one shard.
    let start = Instant::now();
    for r in outcomes(send_all(&p, (0..8_000).map(|i| record(i, 500)).collect()).await).await {
        r.expect("stored");
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    p.shutdown().await.unwrap();
}

/// Records of aggregates that landed on a split's child wait for a refreshed map; here every
/// ListShards after the first fails with `error`. Returns every outcome of the records sent
/// to the split shard after the split, and how long a flush took.
async fn wait_for_a_map_that_never_comes(
    list_fails: fn(u64) -> Option<ApiError>,
    config: ProducerConfig,
) -> (Vec<Result<Receipt, RecordFailure>>, Duration) {
    let fake = Arc::new(MemoryKinesis::new(2));
    let api = Arc::new(Scripted {
        list_fails,
        ..Scripted::new(&fake)
    });
    let p = Producer::new(api, STREAM, config).await.unwrap();
    let parent = fake.shards()[0].clone();
    fake.split_shard(&parent.shard_id, HashKey(parent.hash_range.end.0 / 2));
    // Many keys of the split shard: multi-key aggregates, stored across the new boundary.
    let records: Vec<_> = (0..200)
        .map(|i| UserRecord::new(key_in(parent.hash_range, &format!("k{i}")), "data"))
        .collect();
    let futures = send_all(&p, records).await;
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(3_600), p.flush())
        .await
        .expect("flush returns")
        .expect("flushed");
    let took = start.elapsed();
    let results = tokio::time::timeout(Duration::from_millis(1), outcomes(futures))
        .await
        .expect("resolved when flush returned");
    p.shutdown().await.unwrap();
    (results, took)
}

fn failures(results: &[Result<Receipt, RecordFailure>]) -> Vec<&RecordFailure> {
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        !failed.is_empty(),
        "some aggregates landed across the split"
    );
    for f in &failed {
        assert!(f.record.is_some());
    }
    failed
}

/// ListShards keeps failing with a retryable error: the waiting records expire at their TTL
/// (saying they may be stored) and flush returns, instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn records_waiting_for_a_map_expire_when_list_shards_keeps_failing() {
    let config = ProducerConfig {
        record_ttl: Duration::from_secs(5),
        max_attempts: 1_000,
        ..Default::default()
    };
    let (results, took) = wait_for_a_map_that_never_comes(
        |i| (i > 0).then(|| ApiError::service("LimitExceededException", Some(400), "slow down")),
        config,
    )
    .await;
    for f in failures(&results) {
        assert!(matches!(f.reason, FailureReason::Expired { .. }), "{f}");
        let text = f.to_string();
        assert!(text.contains("LimitExceededException"), "{text}");
        assert!(text.contains("may be stored"), "{text}");
    }
    assert!(took <= Duration::from_secs(6), "{took:?}");
}

/// ListShards never answers: each call times out, and the waiting records still expire at
/// their TTL.
#[tokio::test(start_paused = true)]
async fn records_waiting_for_a_map_expire_when_list_shards_hangs() {
    let config = ProducerConfig {
        record_ttl: Duration::from_secs(20),
        max_attempts: 1_000,
        ..Default::default()
    };
    let (results, took) = wait_for_a_map_that_never_comes(
        |i| (i > 0).then(|| ApiError::service("Hang", None, "")),
        config,
    )
    .await;
    for f in failures(&results) {
        assert!(matches!(f.reason, FailureReason::Expired { .. }), "{f}");
        assert!(f.to_string().contains("may be stored"), "{f}");
    }
    assert!(took <= Duration::from_secs(21), "{took:?}");
}

/// ... and with fewer attempts than the TTL allows, they run out of attempts first: every
/// failed ListShards counts as an attempt of each waiting record.
#[tokio::test(start_paused = true)]
async fn records_waiting_for_a_map_run_out_of_attempts() {
    let config = ProducerConfig {
        max_attempts: 3,
        ..Default::default()
    };
    let (results, took) = wait_for_a_map_that_never_comes(
        |i| (i > 0).then(|| ApiError::timeout(Duration::from_secs(1))),
        config,
    )
    .await;
    for f in failures(&results) {
        assert!(
            matches!(
                f.reason,
                FailureReason::AttemptsExhausted {
                    max_attempts: 3,
                    ..
                }
            ),
            "{f}"
        );
    }
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A fatal ListShards error (the stream is gone) fails the waiting records at once.
#[tokio::test(start_paused = true)]
async fn a_fatal_list_shards_error_fails_the_waiting_records() {
    let (results, took) = wait_for_a_map_that_never_comes(
        |i| (i > 0).then(|| ApiError::service("ResourceNotFoundException", Some(400), "gone")),
        ProducerConfig::default(),
    )
    .await;
    for f in failures(&results) {
        let FailureReason::Fatal { code, .. } = &f.reason else {
            panic!("{f}");
        };
        assert_eq!(code, "ResourceNotFoundException");
    }
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// A shard throttled while carrying far more than the others is reported with the partition
/// key that makes it hot (`Producer::hot_keys`, counted in the snapshot).
#[tokio::test(start_paused = true)]
async fn a_throttled_hot_shard_is_reported_with_its_hot_key() {
    let fake = Arc::new(MemoryKinesis::new(4));
    let hot_hash = HashKey::of_partition_key("hot-customer");
    let hot_shard = fake
        .shards()
        .into_iter()
        .find(|s| s.hash_range.contains(hot_hash))
        .expect("a shard owns every hash key");
    let range = hot_shard.hash_range;
    fake.set_plan(move |call| {
        if call.index >= 3 {
            return Plan::Store;
        }
        Plan::FailEntries(
            call.entries
                .iter()
                .map(|e| {
                    let hash = match &e.explicit_hash_key {
                        Some(h) => HashKey(h.parse().unwrap()),
                        None => HashKey::of_partition_key(&e.partition_key),
                    };
                    range
                        .contains(hash)
                        .then(|| "ProvisionedThroughputExceededException".to_owned())
                })
                .collect(),
        )
    });
    let p = producer(&fake, ProducerConfig::default()).await;
    let mut futures = Vec::new();
    for i in 0..400 {
        let key = if i % 4 == 0 {
            format!("key-{i}")
        } else {
            "hot-customer".to_owned()
        };
        futures.push(p.send(UserRecord::new(key, vec![b'x'; 200])).await.unwrap());
    }
    for f in futures {
        f.await.expect("stored after the throttles");
    }
    let m = p.metrics();
    assert!(m.throttled_entries >= 1, "{m:?}");
    assert_eq!(
        m.shards[&hot_shard.shard_id].throttled_entries,
        m.throttled_entries
    );
    assert!(m.hot_shard_reports >= 1, "{m:?}");
    let hot = p.hot_keys();
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert_eq!(hot[0].shard_id, hot_shard.shard_id);
    assert_eq!(hot[0].keys[0].partition_key, "hot-customer");
    assert!(hot[0].bytes > 2 * hot[0].mean_other_bytes);
    p.shutdown().await.unwrap();
}
