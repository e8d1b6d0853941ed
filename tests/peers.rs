//! The producer against independent Kinesis implementations (kinesalite, kinesis-local):
//! N records in, all N read back with GetRecords and deaggregated, each user record inside the
//! hash range of the shard it was read from — also across SplitShard, MergeShards and
//! UpdateShardCount in the middle of a run.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{ReadBack, kinesalite, kinesis_local, read_all, sdk};
use kpl::client::sdk::SdkKinesis;
use kpl::client::{ApiErrorKind, KinesisApi, StreamId};
use kpl::producer::{Compression, Producer, ProducerConfig, ProducerError, Receipt};
use kpl::{HashKey, UserRecord};

fn records(from: usize, to: usize, keys: usize) -> Vec<UserRecord> {
    (from..to)
        .map(|i| {
            UserRecord::new(
                format!("user-{}", i % keys),
                format!("{{\"seq\":{i},\"msg\":\"event number {i} for a test\"}}"),
            )
        })
        .collect()
}

async fn put_all(producer: &Producer, batch: Vec<UserRecord>) -> Vec<Receipt> {
    let mut futures = Vec::with_capacity(batch.len());
    for r in batch {
        futures.push(producer.send(r).await.expect("accepted"));
    }
    let mut receipts = Vec::with_capacity(futures.len());
    for f in futures {
        receipts.push(f.await.expect("stored"));
    }
    receipts
}

/// What reading a stream back showed.
#[derive(Debug, Default)]
struct Checked {
    /// Extra KCL-deliverable copies of user records (producer retries after lost responses).
    duplicates: usize,
    /// Copies in aggregates the KCL drops (stored on a new shard mid-reshard, then resent).
    dropped_by_kcl: usize,
}

/// Every receipt points at its record in a Kinesis record the KCL delivers, and every sent
/// record has at least one such copy.
fn check_read_back(sent: &[UserRecord], receipts: &[Receipt], read: &[ReadBack]) -> Checked {
    let mut by_position: HashMap<(&str, u64), &ReadBack> = HashMap::new();
    let mut copies: HashMap<(&str, &Bytes), usize> = HashMap::new();
    let mut checked = Checked::default();
    for r in read {
        by_position.insert(
            (r.sequence_number.as_str(), r.record.sub_sequence_number),
            r,
        );
        if r.kcl_valid {
            *copies
                .entry((r.record.partition_key.as_str(), &r.record.data))
                .or_default() += 1;
        } else {
            checked.dropped_by_kcl += 1;
        }
    }
    for (record, receipt) in sent.iter().zip(receipts) {
        let found = by_position
            .get(&(&*receipt.sequence_number, receipt.sub_sequence_number))
            .unwrap_or_else(|| panic!("receipt {receipt:?} points at nothing"));
        assert_eq!(found.record.partition_key, record.partition_key);
        assert_eq!(found.record.data, record.data);
        assert_eq!(found.shard_id, &*receipt.shard_id);
        assert!(
            found.kcl_valid,
            "receipt {receipt:?} points at an aggregate the KCL drops"
        );
        assert!(
            copies.contains_key(&(record.partition_key.as_str(), &record.data)),
            "{record:?} has no copy the KCL delivers"
        );
    }
    assert_eq!(copies.len(), sent.len(), "nothing but what was sent");
    checked.duplicates = copies.values().map(|n| n - 1).sum();
    checked
}

/// A producer on the client `KPL_TEST_CLIENT` names (see `common::api`).
async fn producer(endpoint: &str, stream: &str, config: ProducerConfig) -> Producer {
    let api = common::api(endpoint, Duration::from_secs(10)).await;
    Producer::new(api, stream, config).await.expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_round_trip_plain_aggregated_and_compressed() {
    let server = kinesalite();
    let api = sdk(&server.endpoint).await;
    api.create_stream("s", 4).await.unwrap();
    let p = producer(&server.endpoint, "s", ProducerConfig::default()).await;
    let first = records(0, 20_000, 1000);
    let mut receipts = put_all(&p, first.clone()).await;
    p.shutdown().await.expect("every record seen through");

    let zstd = producer(
        &server.endpoint,
        "s",
        ProducerConfig {
            compression: Compression::Zstd { level: 3 },
            ..Default::default()
        },
    )
    .await;
    let second = records(20_000, 30_000, 1000);
    receipts.extend(put_all(&zstd, second.clone()).await);
    let m = zstd.metrics();
    zstd.shutdown().await.expect("every record seen through");
    assert!(m.user_records_per_kinesis_record > 10.0, "{m:?}");

    let single = producer(
        &server.endpoint,
        "s",
        ProducerConfig {
            aggregation_enabled: false,
            ..Default::default()
        },
    )
    .await;
    let third = records(30_000, 31_000, 1000);
    receipts.extend(put_all(&single, third.clone()).await);
    single.shutdown().await.expect("every record seen through");

    let sent: Vec<_> = first.into_iter().chain(second).chain(third).collect();
    let read = read_all(&api, "s").await;
    assert!(read.iter().any(|r| r.record.compressed));
    let checked = check_read_back(&sent, &receipts, &read);
    assert_eq!(checked.duplicates, 0, "no fault, no duplicate");
    assert_eq!(
        checked.dropped_by_kcl, 0,
        "no reshard, every aggregate within its shard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_split_and_merge_mid_run() {
    let server = kinesalite();
    let api = sdk(&server.endpoint).await;
    api.create_stream("r", 4).await.unwrap();
    let p = producer(&server.endpoint, "r", ProducerConfig::default()).await;
    let stream = StreamId::Name("r".into());

    let mut sent = records(0, 5_000, 500);
    let mut receipts = put_all(&p, sent.clone()).await;

    let shards = api.list_all_shards(&stream).await.unwrap();
    let s0 = &shards[0];
    let mid = HashKey(s0.hash_range.start.0 + (s0.hash_range.end.0 - s0.hash_range.start.0) / 2);
    api.split_shard("r", &s0.shard_id, mid).await.unwrap();
    let batch = records(5_000, 10_000, 500);
    receipts.extend(put_all(&p, batch.clone()).await);
    sent.extend(batch);

    api.merge_shards("r", &shards[2].shard_id, &shards[3].shard_id)
        .await
        .unwrap();
    let batch = records(10_000, 15_000, 500);
    receipts.extend(put_all(&p, batch.clone()).await);
    sent.extend(batch);
    let m = p.metrics();
    p.shutdown().await.expect("every record seen through");

    let read = read_all(&api, "r").await;
    let checked = check_read_back(&sent, &receipts, &read);
    // Aggregates that landed on a new shard before the producer knew of it were resent.
    assert!(
        m.errors_by_code.contains_key("WrongShard"),
        "the reshards were noticed: {m:?}"
    );
    assert_eq!(checked.duplicates, 0, "the KCL sees every record once");
    eprintln!("split+merge: {checked:?}");
    let open: Vec<_> = api
        .list_all_shards(&stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.open)
        .collect();
    assert_eq!(open.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_local_update_shard_count_mid_run() {
    let server = kinesis_local();
    let api = sdk(&server.endpoint).await;
    api.create_stream("u", 2).await.unwrap();
    let p = producer(&server.endpoint, "u", ProducerConfig::default()).await;
    let mut sent = records(0, 1_500, 200);
    let mut receipts = put_all(&p, sent.clone()).await;
    api.update_shard_count("u", 4).await.unwrap();
    let batch = records(1_500, 3_000, 200);
    receipts.extend(put_all(&p, batch.clone()).await);
    sent.extend(batch);
    p.shutdown().await.expect("every record seen through");
    let read = read_all(&api, "u").await;
    let checked = check_read_back(&sent, &receipts, &read);
    assert_eq!(checked.duplicates, 0, "the KCL sees every record once");
    eprintln!("update shard count: {checked:?}");
    let open = api
        .list_all_shards(&StreamId::Name("u".into()))
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.open)
        .count();
    assert_eq!(open, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_real_servers_are_classified() {
    let server = kinesalite();
    let missing = Producer::new(
        common::api(&server.endpoint, Duration::from_secs(10)).await,
        "no-such-stream",
        ProducerConfig::default(),
    )
    .await
    .unwrap_err();
    match &missing {
        ProducerError::Stream { source, .. } => {
            assert_eq!(source.code.as_deref(), Some("ResourceNotFoundException"));
            assert!(!source.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        missing.to_string().contains("Check the stream name"),
        "{missing}"
    );

    // Nothing listens on this port.
    let refused = sdk(&format!("http://127.0.0.1:{}", common::free_port())).await;
    let err = refused
        .describe_stream_summary(&StreamId::Name("x".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Connection, "{err:?}");
    assert!(err.is_retryable());

    // A server that accepts and never answers: the attempt timeout fires.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hung = SdkKinesis::connect(kpl::client::sdk::ConnectOptions {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        attempt_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let start = std::time::Instant::now();
    let err = hung
        .describe_stream_summary(&StreamId::Name("x".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Timeout, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(listener);
}
