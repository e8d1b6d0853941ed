//! The Lambda helper on events as Lambda delivers them (JSON, base64 data, `eventID` with the
//! shard id): aggregated, compressed (with a dictionary) and plain records; a repeated
//! aggregate (a producer retry) deduplicated; an aggregate outside its shard's range skipped
//! and counted as the KCL would; an undecodable frame reported. Read, handle, commit: a batch
//! whose handler failed is read again in full when Lambda retries it (issue 16, item 11).
#![cfg(feature = "lambda")]

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits};
use kpl::codec::deaggregate::{Deaggregator, DecodeError};
use kpl::codec::frame::{Compressor, Dictionary};
use kpl::dedup::{DEDUP_TAG_KEY, DedupId, Deduper};
use kpl::lambda::{KinesisEvent, LambdaProblem, LambdaReader, LambdaUserRecord};
use kpl::{HashKey, HashRange, UserRecord};

const SHARD_LOW: &str = "shardId-000000000000";
const SHARD_HIGH: &str = "shardId-000000000001";
const MIDDLE: u128 = 1 << 127;

fn ranges() -> HashMap<String, HashRange> {
    HashMap::from([
        (
            SHARD_LOW.to_owned(),
            HashRange {
                start: HashKey(0),
                end: HashKey(MIDDLE - 1),
            },
        ),
        (
            SHARD_HIGH.to_owned(),
            HashRange {
                start: HashKey(MIDDLE),
                end: HashKey(u128::MAX),
            },
        ),
    ])
}

/// Keys whose MD5 falls in the low (or high) half.
fn keys(low: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| (HashKey::of_partition_key(k).0 < MIDDLE) == low)
        .take(n)
        .collect()
}

/// One aggregate of `records` with dedup ids `seq0..`.
fn aggregate(records: &[UserRecord], seq0: u64) -> (String, Vec<u8>) {
    let mut b = AggregateBuilder::new(AggregateLimits {
        max_bytes: 1 << 20,
        max_count: usize::MAX,
    });
    for (i, r) in records.iter().enumerate() {
        let id = DedupId {
            producer: 0xabc,
            seq: seq0 + i as u64,
        }
        .to_string();
        b.try_push_tagged(r, r.hash_key(), &[(DEDUP_TAG_KEY, Some(&id))])
            .unwrap();
    }
    let out = b.finish().unwrap();
    (out.partition_key, out.data.to_vec())
}

fn event(records: &[(&str, &str, &[u8])]) -> KinesisEvent {
    let records: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, (shard, key, data))| {
            serde_json::json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": key,
                    "sequenceNumber": format!("4959{i:052}"),
                    "data": STANDARD.encode(data),
                    "approximateArrivalTimestamp": 1_764_547_200.5
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{shard}:4959{i:052}"),
                "eventName": "aws:kinesis:record",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s"
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("a Lambda event")
}

#[test]
fn an_event_yields_its_user_records_once_each() {
    let low: Vec<UserRecord> = keys(true, 5)
        .into_iter()
        .map(|k| UserRecord::new(k.clone(), format!("{{\"user\":\"{k}\",\"clicked\":true}}")))
        .collect();
    let high: Vec<UserRecord> = keys(false, 4)
        .into_iter()
        .map(|k| UserRecord::new(k.clone(), format!("{{\"user\":\"{k}\",\"clicked\":false}}")))
        .collect();
    let (low_key, low_agg) = aggregate(&low, 0);
    // The high aggregate compressed with a dictionary.
    let samples: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("{{\"user\":\"user-{i}\",\"clicked\":{}}}", i % 2 == 0).into_bytes())
        .collect();
    let dictionary = Dictionary::train(&samples, 4096).unwrap();
    let (high_key, high_agg) = aggregate(&high, 100);
    let high_frame = Compressor::zstd_with_dictionary(3, &dictionary)
        .unwrap()
        .compress_bytes(&high_agg)
        .expect("compressible");
    // A mixed aggregate: low and high keys, stored on the low shard (not shard-correct).
    let mixed = [low[0].clone(), high[0].clone()];
    let (mixed_key, mixed_agg) = aggregate(&mixed, 200);
    let corrupt = {
        let mut f = high_frame.to_vec();
        let n = f.len();
        f[n - 5] ^= 0xff;
        f
    };
    let plain_key = &keys(true, 1)[0];
    let ev = event(&[
        (SHARD_LOW, &low_key, &low_agg),
        (SHARD_HIGH, &high_key, &high_frame),
        (SHARD_LOW, &low_key, &low_agg), // a producer retry: the same aggregate again
        (SHARD_LOW, &mixed_key, &mixed_agg),
        (SHARD_HIGH, &high_key, &corrupt),
        (SHARD_LOW, plain_key, b"plain, no id"),
    ]);

    let mut reader = LambdaReader::new()
        .with_deaggregator(Deaggregator::new().with_dictionary(&dictionary))
        .with_deduper(Deduper::new(1000))
        .with_shard_ranges(ranges());
    let mut batch = reader.read(&ev);
    let records: Vec<LambdaUserRecord> = batch.by_ref().collect();
    let counts = batch.counts();
    let problems = batch.problems().to_vec();
    batch.commit();

    let got: Vec<(String, Vec<u8>, bool)> = records
        .iter()
        .map(|r| {
            (
                r.record.partition_key.to_string(),
                r.record.data.to_vec(),
                r.record.compressed,
            )
        })
        .collect();
    let mut expected: Vec<(String, Vec<u8>, bool)> = Vec::new();
    expected.extend(
        low.iter()
            .map(|r| (r.partition_key.clone(), r.data.to_vec(), false)),
    );
    expected.extend(
        high.iter()
            .map(|r| (r.partition_key.clone(), r.data.to_vec(), true)),
    );
    expected.push((plain_key.clone(), b"plain, no id".to_vec(), false));
    assert_eq!(got, expected);
    assert_eq!(
        counts.duplicates,
        low.len() as u64,
        "the repeated aggregate"
    );
    assert_eq!(counts.records, expected.len() as u64);
    assert_eq!(records[0].shard_id, SHARD_LOW);
    assert_eq!(records[5].shard_id, SHARD_HIGH);
    assert_eq!(counts.unchecked, 0);
    assert_eq!((counts.outside_range, counts.undecodable), (1, 1));

    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0].problem,
        LambdaProblem::OutsideShardRange {
            outside: 1,
            total: 2
        }
    );
    assert_eq!(problems[0].sequence_number, format!("4959{:052}", 3));
    assert!(matches!(
        problems[1].problem,
        LambdaProblem::Undecodable(DecodeError::Corrupt(_))
    ));

    // The deduper spans invocations: the same event again gives only the plain record.
    let again: Vec<_> = reader.read(&ev).collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.data, &b"plain, no id"[..]);

    // Without the dictionary, the compressed record is reported, not dropped silently.
    let mut bare = LambdaReader::new();
    let mut batch = bare.read(&ev);
    let records: Vec<_> = batch.by_ref().collect();
    assert!(batch.problems().iter().any(|p| matches!(
        p.problem,
        LambdaProblem::Undecodable(DecodeError::UnknownDictionary(id)) if id == dictionary.id()
    )));
    // And without ranges, nothing is range-checked: the mixed aggregate passes.
    assert!(
        records
            .iter()
            .any(|r| r.sequence_number == format!("4959{:052}", 3))
    );
}

/// Three aggregates of the low shard, with dedup ids, as one event.
fn three_aggregates() -> (KinesisEvent, Vec<Vec<UserRecord>>) {
    let all: Vec<UserRecord> = keys(true, 9)
        .into_iter()
        .map(|k| UserRecord::new(k.clone(), format!("data of {k}")))
        .collect();
    let groups: Vec<Vec<UserRecord>> = all.chunks(3).map(<[UserRecord]>::to_vec).collect();
    let aggs: Vec<(String, Vec<u8>)> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| aggregate(g, 3 * i as u64))
        .collect();
    let ev = event(
        &aggs
            .iter()
            .map(|(k, d)| (SHARD_LOW, k.as_str(), d.as_slice()))
            .collect::<Vec<_>>(),
    );
    (ev, groups)
}

fn data_of(records: &[LambdaUserRecord]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.record.data.to_vec()).collect()
}

fn data_in(groups: &[Vec<UserRecord>]) -> Vec<Vec<u8>> {
    groups.iter().flatten().map(|r| r.data.to_vec()).collect()
}

#[test]
fn a_batch_whose_handler_failed_is_read_again_in_full_on_retry() {
    let (ev, groups) = three_aggregates();
    let mut reader = LambdaReader::new().with_deduper(Deduper::new(1000));
    // The handler fails: the batch is dropped uncommitted and Lambda retries it.
    let first: Vec<_> = reader.read(&ev).collect();
    assert_eq!(data_of(&first), data_in(&groups));
    let mut retry = reader.read(&ev);
    let again: Vec<_> = retry.by_ref().collect();
    assert_eq!(
        data_of(&again),
        data_in(&groups),
        "the retried batch is handled again (it was dropped as duplicates)"
    );
    assert_eq!(retry.counts().duplicates, 0);
    // This time the handler succeeds: a later copy (a producer retry) is a duplicate.
    let counts = retry.commit();
    assert_eq!(counts.records, 9);
    let mut copy = reader.read(&ev);
    assert_eq!(copy.by_ref().count(), 0);
    assert_eq!(copy.counts().duplicates, 9);
}

#[test]
fn a_partial_batch_failure_confirms_only_the_records_before_it() {
    let (ev, groups) = three_aggregates();
    let mut reader = LambdaReader::new().with_deduper(Deduper::new(1000));
    let mut batch = reader.read(&ev);
    // The handler handles the first Kinesis record, then fails on the second.
    let mut failed_at = None;
    for r in batch.by_ref() {
        if r.sequence_number != ev.records[0].kinesis.sequence_number {
            failed_at = Some(r.sequence_number.to_string());
            break;
        }
    }
    let failed_at = failed_at.unwrap();
    batch.commit_before(&failed_at);
    // Lambda resends from the failed record on: all of it is read again.
    let mut resent = ev.clone();
    resent.records.remove(0);
    let again: Vec<_> = reader.read(&resent).collect();
    assert_eq!(data_of(&again), data_in(&groups[1..]));
    // The confirmed first record, if it came again, is a duplicate.
    let mut whole = reader.read(&ev);
    let whole_again: Vec<_> = whole.by_ref().collect();
    assert_eq!(data_of(&whole_again), data_in(&groups[1..]));
    assert_eq!(whole.counts().duplicates, 3);
}

#[test]
fn a_record_outside_its_shard_after_a_split_is_skipped_and_counted_not_failed() {
    // After a split of the low shard, an aggregate built for the parent's range landed on
    // the child that holds only the lower quarter: the producer resends its records.
    let parent_keys = keys(true, 40);
    let records: Vec<UserRecord> = parent_keys
        .iter()
        .map(|k| UserRecord::new(k.clone(), "x"))
        .collect();
    let (key, stale) = aggregate(&records, 0);
    let child = "shardId-000000000002";
    let quarter = MIDDLE / 2;
    let in_child: Vec<UserRecord> = records
        .iter()
        .filter(|r| r.hash_key().0 < quarter)
        .cloned()
        .collect();
    let (child_key, resent) = aggregate(&in_child, 0);
    let ev = event(&[(child, &key, &stale), (child, &child_key, &resent)]);
    let mut ranges = ranges();
    ranges.insert(
        child.to_owned(),
        HashRange {
            start: HashKey(0),
            end: HashKey(quarter - 1),
        },
    );
    let mut reader = LambdaReader::new()
        .with_deduper(Deduper::new(1000))
        .with_shard_ranges(ranges);
    let mut batch = reader.read(&ev);
    let got: Vec<_> = batch.by_ref().collect();
    assert_eq!(got.len(), in_child.len(), "the resent copy is read");
    let counts = batch.counts();
    assert_eq!(
        (counts.outside_range, counts.records),
        (1, in_child.len() as u64)
    );
    assert!(matches!(
        batch.problems()[0].problem,
        LambdaProblem::OutsideShardRange { .. }
    ));
    batch.commit();
}

#[path = "common/bomb.rs"]
mod bomb;

#[test]
fn a_hostile_aggregate_streams_through_the_lambda_reader() {
    let record = bomb::bomb();
    let ev = event(&[(SHARD_LOW, "k", &record)]);
    let mut reader = LambdaReader::new().with_deduper(Deduper::new(10));
    let mut batch = reader.read(&ev);
    assert_eq!(batch.by_ref().count(), bomb::bomb_records());
    assert_eq!(batch.commit().records, bomb::bomb_records() as u64);
}
