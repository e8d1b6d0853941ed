//! The lean PutRecords path (`kpl::client::lean`) against the SDK, on a recording HTTP server:
//! the same request (method, path, body, signed headers, `Authorization`) for the same
//! entries, credentials, region and clock, the same clock-skew correction, and the same
//! classification of every kind of answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_async::time::StaticTimeSource;
use bytes::Bytes;
use kpl::client::lean::LeanKinesis;
use kpl::client::sdk::{SdkKinesis, https_client};
use kpl::client::{ApiError, ApiErrorKind, KinesisApi, PutRecordsEntry, StreamId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as it arrived.
#[derive(Clone, Debug, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-cased names, in arrival order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers `Authorization` says were signed, with their values.
    fn signed_headers(&self) -> Vec<(String, Option<String>)> {
        let auth = self.header("authorization").expect("a signed request");
        let list = auth
            .split(", ")
            .find_map(|part| part.strip_prefix("SignedHeaders="))
            .expect("SignedHeaders in Authorization");
        list.split(';')
            .map(|name| (name.to_owned(), self.header(name).map(str::to_owned)))
            .collect()
    }
}

/// How the server answers.
#[derive(Clone, Debug)]
enum Answer {
    /// A valid PutRecords response with one stored result per entry, and these headers.
    Stored(Vec<(String, String)>),
    /// This status, headers and body.
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// 200 announcing a body longer than it sends, then the connection closes.
    CutShort,
}

/// A Kinesis impostor on a free loopback port that records every request and answers each
/// with `answer` (keep-alive: many requests per connection).
async fn recording_server(answer: Answer) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (seen, answer) = (seen.clone(), answer.clone());
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                while let Some(request) = read_request(&mut read).await {
                    let entries = serde_json::from_slice::<serde_json::Value>(&request.body)
                        .ok()
                        .and_then(|v| v["Records"].as_array().map(Vec::len))
                        .unwrap_or(0);
                    seen.lock().unwrap().push(request);
                    let (status, headers, body, close) = match &answer {
                        Answer::Stored(headers) => {
                            let records: Vec<_> = (0..entries)
                                .map(|i| {
                                    serde_json::json!({
                                        "SequenceNumber": format!("4959{i:04}"),
                                        "ShardId": "shardId-000000000000"
                                    })
                                })
                                .collect();
                            let body = serde_json::json!({
                                "FailedRecordCount": 0,
                                "Records": records
                            });
                            (200, headers.clone(), body.to_string().into_bytes(), false)
                        }
                        Answer::Raw(status, headers, body) => {
                            (*status, headers.clone(), body.clone(), false)
                        }
                        Answer::CutShort => (200, vec![], br#"{"Records":[{"#.to_vec(), true),
                    };
                    let length = if close { body.len() + 100 } else { body.len() };
                    let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {length}\r\n");
                    for (name, value) in headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("content-type: application/x-amz-json-1.1\r\n\r\n");
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&body);
                    if write.write_all(&out).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, log)
}

async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Recorded> {
    let mut line = String::new();
    read.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        read.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

/// Removes the SDK's own bookkeeping headers before it signs, so the two requests can be
/// compared as what they say to Kinesis.
#[derive(Debug)]
struct WithoutBookkeeping;

impl Intercept for WithoutBookkeeping {
    fn name(&self) -> &'static str {
        "WithoutBookkeeping"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let headers = context.request_mut().headers_mut();
        for name in [
            "amz-sdk-invocation-id",
            "amz-sdk-request",
            "x-amz-user-agent",
            "user-agent",
        ] {
            headers.remove(name);
        }
        Ok(())
    }
}

/// 2023-11-14T22:13:20Z: the clock both clients sign with.
fn fixed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token".into()),
            None,
            "test",
        )))
        .time_source(StaticTimeSource::new(fixed_clock()))
        .http_client(https_client())
        .build()
}

/// The SDK client kpl uses, plus the interceptor.
fn sdk_client(sdk: &SdkConfig) -> SdkKinesis {
    let conf = aws_sdk_kinesis::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .interceptor(WithoutBookkeeping)
        .build();
    SdkKinesis::new(aws_sdk_kinesis::Client::from_conf(conf))
}

fn entries() -> Vec<PutRecordsEntry> {
    vec![
        PutRecordsEntry {
            partition_key: "user-1".into(),
            explicit_hash_key: None,
            data: Bytes::from_static(b"{\"seq\":1}"),
        },
        PutRecordsEntry {
            partition_key: "caf\u{e9} \"quoted\"".into(),
            explicit_hash_key: Some("170141183460469231731687303715884105728".into()),
            data: Bytes::from((0u8..=255).collect::<Vec<_>>()),
        },
        PutRecordsEntry {
            partition_key: "empty".into(),
            explicit_hash_key: None,
            data: Bytes::new(),
        },
    ]
}

#[tokio::test]
async fn the_lean_request_is_the_sdks_request() {
    // The server's clock runs 10 minutes ahead: both clients must learn it from the first
    // answer's `Date` and sign the second request with it.
    let server_clock =
        aws_sdk_kinesis::primitives::DateTime::from(fixed_clock() + Duration::from_secs(600))
            .fmt(aws_sdk_kinesis::primitives::DateTimeFormat::HttpDate)
            .unwrap();
    for stream in [
        StreamId::Name("orders".into()),
        StreamId::Arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders".into()),
    ] {
        // One server for both: the signed `host` carries its port.
        let (endpoint, log) =
            recording_server(Answer::Stored(vec![("date".into(), server_clock.clone())])).await;
        let sdk = sdk_config(&endpoint);
        let by_sdk = sdk_client(&sdk);
        let lean = LeanKinesis::from_sdk_config(&sdk, Duration::from_secs(10));
        for _ in 0..2 {
            let stored = by_sdk.put_records(&stream, entries()).await.unwrap();
            assert_eq!(stored.len(), 3);
            let stored = lean.put_records(&stream, entries()).await.unwrap();
            assert_eq!(stored.len(), 3);
        }
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 4);
        for round in 0..2 {
            let (sdk_req, lean_req) = (&log[2 * round], &log[2 * round + 1]);
            assert_eq!(lean_req.method, sdk_req.method);
            assert_eq!(lean_req.path, sdk_req.path);
            assert_eq!(
                String::from_utf8_lossy(&lean_req.body),
                String::from_utf8_lossy(&sdk_req.body),
                "{stream}"
            );
            assert_eq!(lean_req.signed_headers(), sdk_req.signed_headers());
            assert_eq!(
                lean_req.header("authorization"),
                sdk_req.header("authorization")
            );
            assert_eq!(
                lean_req.header("x-amz-security-token"),
                Some("session-token")
            );
            let signed_at = if round == 0 {
                "20231114T221320Z"
            } else {
                "20231114T222320Z"
            };
            assert_eq!(
                lean_req.header("x-amz-date"),
                Some(signed_at),
                "round {round}"
            );
        }
        let names: Vec<_> = log[1]
            .signed_headers()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "content-length",
                "content-type",
                "host",
                "x-amz-date",
                "x-amz-security-token",
                "x-amz-target"
            ]
        );
        assert_eq!(
            log[1].header("x-amz-target"),
            Some("Kinesis_20131202.PutRecords")
        );
    }
}

/// Both clients' view of one answer: (kind, code, status, retryable).
async fn both_classify(answer: Answer) -> (ApiError, ApiError) {
    let (endpoint, _log) = recording_server(answer).await;
    let sdk = sdk_config(&endpoint);
    let by_sdk = sdk_client(&sdk);
    let lean = LeanKinesis::from_sdk_config(&sdk, Duration::from_secs(10));
    let stream = StreamId::Name("orders".into());
    let e1 = by_sdk.put_records(&stream, entries()).await.unwrap_err();
    let e2 = lean.put_records(&stream, entries()).await.unwrap_err();
    (e1, e2)
}

fn json(status: u16, body: &str) -> Answer {
    Answer::Raw(status, vec![], body.as_bytes().to_vec())
}

#[tokio::test]
async fn every_answer_is_classified_as_the_sdk_path_classifies_it() {
    let cases: Vec<(&str, Answer, Option<&str>, bool)> = vec![
        (
            "__type with a namespace",
            json(
                400,
                r#"{"__type":"com.amazonaws.kinesis#ResourceNotFoundException","message":"Stream orders not found"}"#,
            ),
            Some("ResourceNotFoundException"),
            false,
        ),
        (
            "x-amzn-ErrorType with a URL, over the body",
            Answer::Raw(
                400,
                vec![(
                    "x-amzn-ErrorType".into(),
                    "ProvisionedThroughputExceededException:http://internal.amazon.com/".into(),
                )],
                br#"{"__type":"SomethingElse"}"#.to_vec(),
            ),
            Some("ProvisionedThroughputExceededException"),
            true,
        ),
        (
            "InternalFailure",
            json(500, r#"{"__type":"InternalFailure","Message":"oops"}"#),
            Some("InternalFailure"),
            true,
        ),
        (
            "KMS key disabled",
            json(400, r#"{"__type":"KMSDisabledException"}"#),
            Some("KMSDisabledException"),
            false,
        ),
        (
            "a 4xx without a code",
            json(403, "<html>no</html>"),
            None,
            false,
        ),
        ("429 without a code", json(429, ""), None, true),
        (
            "a 5xx that is not JSON",
            json(503, "<html>busy</html>"),
            None,
            true,
        ),
        (
            "a 200 that is not JSON",
            json(200, "<html>hi</html>"),
            None,
            true,
        ),
    ];
    for (name, answer, code, retryable) in cases {
        let (by_sdk, lean) = both_classify(answer).await;
        assert_eq!(lean.code.as_deref(), code, "{name}: {lean:?}");
        assert_eq!(by_sdk.code, lean.code, "{name}: {by_sdk:?} / {lean:?}");
        assert_eq!(by_sdk.status, lean.status, "{name}");
        assert_eq!(by_sdk.kind, lean.kind, "{name}: {by_sdk:?} / {lean:?}");
        assert_eq!(lean.is_retryable(), retryable, "{name}: {lean:?}");
        assert_eq!(by_sdk.is_retryable(), retryable, "{name}: {by_sdk:?}");
        if code.is_none() {
            let status = lean.status.unwrap();
            assert!(
                lean.to_string().contains(&format!("HTTP {status}")),
                "{name}: {lean}"
            );
        }
    }
}

#[tokio::test]
async fn transport_failures_are_retryable() {
    // A body cut short: the connection closes mid-answer.
    let (endpoint, _log) = recording_server(Answer::CutShort).await;
    let lean = LeanKinesis::from_sdk_config(&sdk_config(&endpoint), Duration::from_secs(10));
    let stream = StreamId::Name("orders".into());
    let err = lean.put_records(&stream, entries()).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Connection, "{err:?}");
    assert!(err.is_retryable());

    // Nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let lean = LeanKinesis::from_sdk_config(&sdk_config(&endpoint), Duration::from_secs(10));
    let err = lean.put_records(&stream, entries()).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Connection, "{err:?}");
    assert!(err.is_retryable());

    // Accepts and never answers: the attempt timeout.
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let lean = LeanKinesis::from_sdk_config(&sdk_config(&endpoint), Duration::from_millis(200));
    let err = lean.put_records(&stream, entries()).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable());
    drop(hung);
}

#[tokio::test]
async fn per_entry_failures_come_back_in_order() {
    let body = serde_json::json!({
        "FailedRecordCount": 2,
        "Records": [
            {"SequenceNumber": "1", "ShardId": "shardId-000000000001"},
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"},
            {"ErrorCode": "InternalFailure"}
        ]
    });
    let (endpoint, _log) =
        recording_server(Answer::Raw(200, vec![], body.to_string().into_bytes())).await;
    let sdk = sdk_config(&endpoint);
    let lean = LeanKinesis::from_sdk_config(&sdk, Duration::from_secs(10));
    let by_sdk = sdk_client(&sdk);
    let stream = StreamId::Name("orders".into());
    let lean_results = lean.put_records(&stream, entries()).await.unwrap();
    let sdk_results = by_sdk.put_records(&stream, entries()).await.unwrap();
    assert_eq!(lean_results, sdk_results);
    let codes: HashMap<usize, String> = lean_results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            kpl::client::PutRecordsResultEntry::Failed { code, .. } => Some((i, code.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(codes[&1], "ProvisionedThroughputExceededException");
    assert_eq!(codes[&2], "InternalFailure");
}
