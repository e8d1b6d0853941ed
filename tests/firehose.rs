//! The Firehose transformation helper on events as Firehose sends them (JSON, base64 data,
//! `kinesisRecordMetadata` of the source stream): kpl's zstd frames (with a dictionary),
//! aggregates and plain records come back as their user records' data, one per line, under
//! their recordId; undecodable records and outputs past the 6 MB response limit go back
//! `ProcessingFailed` with a reason (issue 20, item 4).
#![cfg(feature = "lambda")]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::UserRecord;
use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits};
use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::{Compressor, Dictionary};
use kpl::lambda::firehose::{FirehoseTransformer, KinesisFirehoseEvent};

fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut b = AggregateBuilder::new(AggregateLimits {
        max_bytes: 1 << 20,
        max_count: usize::MAX,
    });
    for r in records {
        b.try_push(r, r.hash_key()).unwrap();
    }
    b.finish().unwrap().data.to_vec()
}

fn event(records: &[(&str, &[u8])]) -> KinesisFirehoseEvent {
    let records: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, (id, data))| {
            serde_json::json!({
                "recordId": id,
                "approximateArrivalTimestamp": 1_764_547_200_000u64 + i as u64,
                "data": STANDARD.encode(data),
                "kinesisRecordMetadata": {
                    "shardId": "shardId-000000000000",
                    "partitionKey": "k",
                    "approximateArrivalTimestamp": 1_764_547_200_000u64,
                    "sequenceNumber": format!("4959{i:052}"),
                    "subsequenceNumber": 0
                }
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "invocationId": "a8b2c3d4",
        "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/to-s3",
        "sourceKinesisStreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
        "region": "us-east-1",
        "records": records
    }))
    .expect("a Firehose event")
}

/// The response as Firehose reads it: (recordId, result, decoded data).
fn response(outcome: &kpl::lambda::firehose::FirehoseOutcome) -> Vec<(String, String, Vec<u8>)> {
    let json = serde_json::to_value(&outcome.response).unwrap();
    json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["recordId"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
                STANDARD.decode(r["data"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn lines(n: usize, tag: &str) -> Vec<UserRecord> {
    (0..n)
        .map(|i| UserRecord::new(format!("user-{i}"), format!("{{\"{tag}\":{i}}}")))
        .collect()
}

fn joined(records: &[UserRecord]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| [&r.data[..], b"\n"].concat())
        .collect()
}

#[test]
fn compressed_aggregated_and_plain_records_come_back_as_lines() {
    let samples: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("{{\"n\":{i},\"level\":\"info\"}}").into_bytes())
        .collect();
    let dictionary = Dictionary::train(&samples, 4096).unwrap();
    let a = lines(50, "a");
    let b = lines(40, "b");
    let framed = Compressor::zstd_with_dictionary(3, &dictionary)
        .unwrap()
        .compress_bytes(&aggregate(&a))
        .unwrap();
    let plain_aggregate = aggregate(&b);
    let ev = event(&[
        ("r1", &framed),
        ("r2", &plain_aggregate),
        ("r3", b"just a line"),
        ("r4", &framed[..framed.len() - 3]),
    ]);
    let transformer = FirehoseTransformer::new()
        .with_deaggregator(Deaggregator::new().with_dictionary(&dictionary));
    let outcome = transformer.transform(&ev);
    let got = response(&outcome);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], ("r1".into(), "Ok".into(), joined(&a)));
    assert_eq!(got[1], ("r2".into(), "Ok".into(), joined(&b)));
    assert_eq!(
        got[2],
        ("r3".into(), "Ok".into(), b"just a line\n".to_vec())
    );
    assert_eq!(
        (got[3].0.as_str(), got[3].1.as_str()),
        ("r4", "ProcessingFailed")
    );
    assert_eq!(outcome.user_records, 91);
    assert_eq!(outcome.failures.len(), 1);
    assert!(
        outcome.failures[0].reason.contains("corrupt"),
        "{:?}",
        outcome.failures
    );

    // Without the dictionary: the reason names what is missing.
    let outcome = FirehoseTransformer::new().transform(&ev);
    assert_eq!(response(&outcome)[0].1, "ProcessingFailed");
    assert!(
        outcome.failures[0].reason.contains("zstd dictionary"),
        "{:?}",
        outcome.failures
    );

    // Another separator.
    let outcome = FirehoseTransformer::new()
        .with_separator(*b"\x1e")
        .transform(&event(&[("x", &plain_aggregate)]));
    assert_eq!(
        response(&outcome)[0].2,
        b.iter()
            .flat_map(|r| [&r.data[..], b"\x1e"].concat())
            .collect::<Vec<u8>>()
    );
}

#[test]
fn records_that_expand_past_the_response_limit_fail_with_a_reason_to_lower_the_buffer() {
    // Records that compress ~40x: 20 of them expand to ~40 KiB each.
    let big: Vec<UserRecord> = (0..400)
        .map(|i| {
            UserRecord::new(
                "k",
                format!("{{\"n\":{},\"pad\":\"{}\"}}", i % 3, "x".repeat(90)),
            )
        })
        .collect();
    let framed = Compressor::zstd(3)
        .unwrap()
        .compress_bytes(&aggregate(&big))
        .unwrap();
    let expanded = joined(&big).len();
    assert!(
        framed.len() * 10 < expanded,
        "{} -> {expanded}",
        framed.len()
    );
    let ids: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let records: Vec<(&str, &[u8])> = ids.iter().map(|id| (id.as_str(), &framed[..])).collect();
    // A response limit that holds about 5 expanded records (as 6 MB holds a buffer of
    // 4.5 MB / ratio).
    let limit = 5 * (expanded * 4 / 3 + 600);
    let outcome = FirehoseTransformer::new()
        .with_response_limit(limit)
        .transform(&event(&records));
    let got = response(&outcome);
    let ok = got.iter().filter(|r| r.1 == "Ok").count();
    assert!((3..=5).contains(&ok), "{ok} fit");
    assert!(got[..ok].iter().all(|r| r.1 == "Ok" && r.2 == joined(&big)));
    assert!(got[ok..].iter().all(|r| r.1 == "ProcessingFailed"));
    assert_eq!(outcome.failures.len(), 20 - ok);
    assert!(
        outcome.failures[0]
            .reason
            .contains("lower the Lambda processor's BufferSizeInMBs"),
        "{}",
        outcome.failures[0].reason
    );
    // The response as serialized stays within the limit.
    let size = serde_json::to_vec(&outcome.response).unwrap().len();
    assert!(size <= limit, "{size} > {limit}");
}
