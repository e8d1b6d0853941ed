//! Interop with the independent reference codec, PyPI aws-kinesis-agg (installed into .venv by
//! scripts/setup-python.sh): what kpl writes it reads, what it writes kpl reads, and kpl's
//! compressed frames pass through it untouched as opaque data.

mod common;

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits, KinesisRecord};
use kpl::codec::deaggregate::{Deaggregator, RecordKind};
use kpl::codec::frame::Compressor;
use kpl::{HashKey, UserRecord};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn python(script: &str, args: &[&str], input: &str) -> Vec<Value> {
    let python = common::repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "the reference codec is not installed: run scripts/setup-python.sh (scripts/test.sh does)"
    );
    let mut cmd = Command::new(python);
    cmd.arg(common::repo().join("tests/interop").join(script))
        .args(args);
    let out = common::run_with_stdin(cmd, input.as_bytes());
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn random_records(seed: u64, n: usize) -> Vec<UserRecord> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let alphabet = ['a', 'Z', '7', 'é', 'ß', '漢', '🦀', '-'];
    (0..n)
        .map(|i| {
            let key_len = match i % 50 {
                0 => 256,
                _ => rng.random_range(1..24),
            };
            let key: String = (0..key_len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let data_len = match i % 17 {
                0 => 0,
                _ => rng.random_range(1..600),
            };
            let data: Vec<u8> = (0..data_len).map(|_| rng.random()).collect();
            let r = UserRecord::new(key, data);
            if i % 5 == 0 {
                r.with_explicit_hash_key(HashKey(rng.random()))
            } else {
                r
            }
        })
        .collect()
}

fn kpl_aggregate(records: &[UserRecord], max_bytes: usize) -> Vec<KinesisRecord> {
    let mut b = AggregateBuilder::new(AggregateLimits {
        max_bytes,
        max_count: usize::MAX,
    });
    let mut out = Vec::new();
    for r in records {
        if b.try_push(r, r.hash_key()).is_err() {
            out.push(b.finish().unwrap());
            b.try_push(r, r.hash_key()).unwrap();
        }
    }
    out.extend(b.finish());
    out
}

fn as_lines(records: &[KinesisRecord]) -> String {
    records
        .iter()
        .map(|r| {
            json!({"pk": r.partition_key, "data": STANDARD.encode(&r.data)}).to_string() + "\n"
        })
        .collect()
}

/// The reference codec reads `kinesis` back: `records`' keys and data, in order.
fn reference_read(kinesis: &[KinesisRecord], records: &[UserRecord]) -> Vec<Value> {
    let read = python("agg_read.py", &[], &as_lines(kinesis));
    assert_eq!(read.len(), records.len());
    for (r, v) in records.iter().zip(&read) {
        assert_eq!(v["pk"], r.partition_key.as_str());
        assert_eq!(
            STANDARD.decode(v["data"].as_str().unwrap()).unwrap(),
            r.data
        );
    }
    read
}

#[test]
fn aws_kinesis_agg_reads_what_kpl_writes() {
    let records = random_records(1, 3_000);
    let kinesis = kpl_aggregate(&records, 51_200);
    assert!(kinesis.len() > 10 && kinesis.iter().all(|k| k.data.len() <= 51_200));
    let read = reference_read(&kinesis, &records);
    for (r, v) in records.iter().zip(&read) {
        if let Some(ehk) = r.explicit_hash_key {
            assert_eq!(v["ehk"], ehk.to_string().as_str());
        }
        // Without one, the reference codec reports the first hash-key table entry (a known
        // quirk) or null: nothing to compare.
    }
}

#[test]
fn aws_kinesis_agg_reads_records_tagged_with_dedup_ids_unchanged() {
    let records = random_records(2, 500);
    let mut b = AggregateBuilder::new(AggregateLimits {
        max_bytes: 4_000,
        max_count: usize::MAX,
    });
    let mut kinesis = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let id = kpl::dedup::DedupId {
            producer: 77,
            seq: i as u64,
        }
        .to_string();
        let tags = [(kpl::dedup::DEDUP_TAG_KEY, Some(id.as_str()))];
        // Every 50th record alone: a one-record aggregate (tags cannot ride on raw data).
        if i % 50 == 0 || b.try_push_tagged(r, r.hash_key(), &tags).is_err() {
            kinesis.extend(b.finish());
            b.try_push_tagged(r, r.hash_key(), &tags).unwrap();
            if i % 50 == 0 {
                kinesis.extend(b.finish());
            }
        }
    }
    kinesis.extend(b.finish());
    assert!(kinesis.iter().any(|k| k.user_records == 1));
    reference_read(&kinesis, &records);
}

#[test]
fn kpl_reads_what_aws_kinesis_agg_writes() {
    let records = random_records(2, 3_000);
    let input: String = records
        .iter()
        .map(|r| {
            json!({
                "pk": r.partition_key,
                "ehk": r.explicit_hash_key.map(|h| h.to_string()),
                "data": STANDARD.encode(&r.data),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let written = python("agg_write.py", &["51200"], &input);
    assert!(written.len() > 10);
    let deagg = Deaggregator::new().strict(true);
    let mut read = Vec::new();
    for k in &written {
        let data = STANDARD.decode(k["data"].as_str().unwrap()).unwrap();
        read.extend(
            deagg
                .deaggregate(&data, k["pk"].as_str().unwrap(), k["ehk"].as_str())
                .unwrap(),
        );
    }
    assert_eq!(read.len(), records.len());
    for (r, u) in records.iter().zip(&read) {
        assert_eq!(u.partition_key, r.partition_key);
        assert_eq!(u.data, r.data);
        assert_eq!(
            u.explicit_hash_key.as_deref(),
            r.explicit_hash_key.map(|h| h.to_string()).as_deref()
        );
        assert_eq!(u.hash_key, r.hash_key());
    }
    assert!(read.iter().any(|u| u.kind == RecordKind::Aggregated));
}

#[test]
fn compressed_frames_pass_through_the_reference_reader_as_opaque_data() {
    let records: Vec<_> = (0..500)
        .map(|i| {
            UserRecord::new(
                format!("k{}", i % 9),
                format!("{{\"level\":\"info\",\"n\":{i}}}"),
            )
        })
        .collect();
    let mut compressor = Compressor::zstd(1).unwrap();
    let framed: Vec<KinesisRecord> = kpl_aggregate(&records, 51_200)
        .into_iter()
        .map(|k| compressor.compress(k))
        .collect();
    let read = python("agg_read.py", &[], &as_lines(&framed));
    assert_eq!(read.len(), framed.len(), "one opaque record per frame");
    for (k, v) in framed.iter().zip(&read) {
        assert_eq!(
            Bytes::from(STANDARD.decode(v["data"].as_str().unwrap()).unwrap()),
            k.data
        );
    }
    // ... and kpl reads them back.
    let deagg = Deaggregator::new();
    let back: Vec<_> = framed
        .iter()
        .flat_map(|k| deagg.deaggregate(&k.data, &k.partition_key, None).unwrap())
        .collect();
    assert_eq!(back.len(), 500);
    assert!(back.iter().all(|u| u.compressed));
}
