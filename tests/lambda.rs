//! The Lambda helper on events as Lambda delivers them (JSON, base64 data, `eventID` with the
//! shard id): aggregated, compressed (with a dictionary) and plain records; a repeated
//! aggregate (a producer retry) deduplicated; an aggregate outside its shard's range dropped
//! and reported as the KCL would; an undecodable frame reported.
#![cfg(feature = "lambda")]

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits};
use kpl::codec::deaggregate::{Deaggregator, DecodeError};
use kpl::codec::frame::{Compressor, Dictionary};
use kpl::dedup::{DEDUP_TAG_KEY, DedupId, Deduper};
use kpl::lambda::{KinesisEvent, LambdaProblem, LambdaReader};
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
    let batch = reader.read(&ev);

    let got: Vec<(String, Vec<u8>, bool)> = batch
        .records
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
    assert_eq!(batch.duplicates, low.len() as u64, "the repeated aggregate");
    assert_eq!(batch.records[0].shard_id, SHARD_LOW);
    assert_eq!(batch.records[5].shard_id, SHARD_HIGH);
    assert_eq!(batch.unchecked, 0);

    assert_eq!(batch.problems.len(), 2, "{:?}", batch.problems);
    assert_eq!(
        batch.problems[0].problem,
        LambdaProblem::OutsideShardRange {
            outside: 1,
            total: 2
        }
    );
    assert_eq!(batch.problems[0].sequence_number, format!("4959{:052}", 3));
    assert!(matches!(
        batch.problems[1].problem,
        LambdaProblem::Undecodable(DecodeError::Corrupt(_))
    ));

    // The deduper spans invocations: the same event again gives only the plain record.
    let again = reader.read(&ev);
    assert_eq!(again.records.len(), 1);
    assert_eq!(again.records[0].record.data, &b"plain, no id"[..]);

    // Without the dictionary, the compressed record is reported, not dropped silently.
    let mut bare = LambdaReader::new();
    let batch = bare.read(&ev);
    assert!(batch.problems.iter().any(|p| matches!(
        p.problem,
        LambdaProblem::Undecodable(DecodeError::UnknownDictionary(id)) if id == dictionary.id()
    )));
    // And without ranges, nothing is range-checked: the mixed aggregate passes.
    assert!(
        batch
            .records
            .iter()
            .any(|r| r.sequence_number == format!("4959{:052}", 3))
    );
}
