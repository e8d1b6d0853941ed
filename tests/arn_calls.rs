//! A stream named by ARN, through the SDK client, against a recording endpoint: the producer
//! calls DescribeStreamSummary, ListShards and PutRecords only (the actions the README's IAM
//! policy grants), and every call names the stream by its `StreamARN` (as a resource-based
//! policy on another account's stream requires), never by `StreamName`.

mod common;

use std::sync::{Arc, Mutex};

use kpl::UserRecord;
use kpl::client::KinesisApi;
use kpl::producer::{Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const ARN: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/other-accounts-stream";

/// Every call seen: its `X-Amz-Target` operation and JSON body.
type Calls = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A fixed valid answer to each of the three operations, and a 400 to anything else.
fn answer(op: &str, body: &serde_json::Value) -> (u16, String) {
    let range = r#""HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"340282366920938463463374607431768211455"}"#;
    match op {
        "DescribeStreamSummary" => (
            200,
            format!(
                r#"{{"StreamDescriptionSummary":{{"StreamName":"other-accounts-stream","StreamARN":"{ARN}","StreamStatus":"ACTIVE","StreamModeDetails":{{"StreamMode":"PROVISIONED"}},"RetentionPeriodHours":24,"StreamCreationTimestamp":1700000000,"EnhancedMonitoring":[],"EncryptionType":"NONE","OpenShardCount":1}}}}"#
            ),
        ),
        "ListShards" => (
            200,
            format!(
                r#"{{"Shards":[{{"ShardId":"shardId-000000000000",{range},"SequenceNumberRange":{{"StartingSequenceNumber":"1"}}}}]}}"#
            ),
        ),
        "PutRecords" => {
            let n = body["Records"].as_array().map_or(0, Vec::len);
            let entries: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        r#"{{"SequenceNumber":"{}","ShardId":"shardId-000000000000"}}"#,
                        i + 1
                    )
                })
                .collect();
            (
                200,
                format!(
                    r#"{{"FailedRecordCount":0,"Records":[{}]}}"#,
                    entries.join(",")
                ),
            )
        }
        _ => (
            400,
            r#"{"__type":"UnknownOperationException","message":"not recorded"}"#.to_owned(),
        ),
    }
}

/// Serves HTTP/1.1 on a free loopback port, recording each request; returns its URL.
async fn recording_endpoint(calls: Calls) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut target = String::new();
                    let mut length = 0usize;
                    let mut line = String::new();
                    // Request line, then headers up to the empty line.
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = l.split_once(':') {
                            let value = value.trim();
                            match name.to_ascii_lowercase().as_str() {
                                "x-amz-target" => target = value.to_owned(),
                                "content-length" => length = value.parse().unwrap(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.unwrap();
                    let body: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let op = target.rsplit('.').next().unwrap_or_default().to_owned();
                    let (status, text) = answer(&op, &body);
                    calls.lock().unwrap().push((op, body));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_by_arn_calls_only_the_three_actions_and_names_the_arn_in_each() {
    let calls: Calls = Arc::default();
    let endpoint = recording_endpoint(calls.clone()).await;
    let api: Arc<dyn KinesisApi> = Arc::new(common::sdk(&endpoint).await);
    let producer = Producer::new(api, ARN, ProducerConfig::default())
        .await
        .expect("the producer starts against the recording endpoint");
    let mut futures = Vec::new();
    for i in 0..50 {
        let record = UserRecord::new(format!("key-{i}"), format!("record {i}"));
        futures.push(producer.send(record).await.expect("accepted"));
    }
    for f in futures {
        f.await.expect("stored");
    }
    producer
        .shutdown()
        .await
        .expect("every record seen through");

    let calls = calls.lock().unwrap();
    let ops: std::collections::BTreeSet<&str> = calls.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(
        ops,
        ["DescribeStreamSummary", "ListShards", "PutRecords"].into(),
        "the producer calls exactly the actions the README's policy grants"
    );
    for (op, body) in calls.iter() {
        assert_eq!(
            body["StreamARN"], ARN,
            "{op} names the stream by ARN: {body}"
        );
        assert!(
            body.get("StreamName").is_none(),
            "{op} sends no StreamName: {body}"
        );
    }
}
