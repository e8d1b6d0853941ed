//! How `SdkKinesis` classifies what comes back from the wire: a tiny raw HTTP server on
//! 127.0.0.1 answers each call with scripted bytes (a body cut short, a 429, a 500 of garbage,
//! a 4xx without a code, an expired token), and the test checks what `put_records` returns.
//! Also credentials providers that fail for a while, end to end through the producer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_kinesis::config::{Credentials, IdentityCache, Region, SharedCredentialsProvider};
use kpl::client::sdk::SdkKinesis;
use kpl::client::{ApiError, KinesisApi, PutRecordsEntry, StreamId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the raw server does with one request.
#[derive(Clone)]
enum Answer {
    /// Writes these bytes, then closes the connection.
    Bytes(Vec<u8>),
    /// Reads the request and never answers.
    Hang,
}

fn response(status: &str, body: &str) -> Answer {
    Answer::Bytes(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A server on a free loopback port that gives every request `answer`.
async fn raw_server(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                read_request(&mut socket).await;
                match answer {
                    Answer::Bytes(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                        let _ = socket.shutdown().await;
                    }
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    endpoint
}

/// Reads headers and a Content-Length body.
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

fn client(endpoint: &str, credentials: impl ProvideCredentials + 'static) -> SdkKinesis {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        // Every call asks the provider, so a provider's failures reach the calls.
        .identity_cache(IdentityCache::no_cache())
        .build();
    SdkKinesis::from_sdk_config(&sdk, Duration::from_millis(500))
}

fn static_credentials() -> Credentials {
    Credentials::new("AKIDEXAMPLE", "secret", None, None, "test-static")
}

fn entries() -> Vec<PutRecordsEntry> {
    vec![PutRecordsEntry {
        partition_key: "k".into(),
        explicit_hash_key: None,
        data: bytes::Bytes::from_static(b"data"),
    }]
}

async fn put_error(answer: Answer) -> ApiError {
    let endpoint = raw_server(answer).await;
    client(&endpoint, static_credentials())
        .put_records(&StreamId::Name("s".into()), entries())
        .await
        .expect_err("the scripted answer is not a success")
}

#[tokio::test]
async fn a_200_whose_body_is_cut_short_is_retryable() {
    let answer = Answer::Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 400\r\n\r\n{\"FailedRecordCount\":0,\"Records\":[{\"Seq"
            .to_vec(),
    );
    let e = put_error(answer).await;
    assert!(e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn a_2xx_or_5xx_body_that_cannot_be_parsed_is_retryable() {
    for status in [
        "200 OK",
        "500 Internal Server Error",
        "503 Service Unavailable",
    ] {
        let e = put_error(response(status, "<html>garbage</html>")).await;
        assert!(e.is_retryable(), "{status}: {e:?}");
    }
}

#[tokio::test]
async fn a_429_is_retryable() {
    let e = put_error(response("429 Too Many Requests", "")).await;
    assert!(e.is_retryable(), "{e:?}");
    let e = put_error(response("429 Too Many Requests", "slow down")).await;
    assert!(e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn a_4xx_without_a_code_is_fatal_and_names_its_status() {
    for status in [
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "407 Proxy Authentication Required",
        "413 Payload Too Large",
    ] {
        for body in ["", "<html>Forbidden</html>", "{}"] {
            let e = put_error(response(status, body)).await;
            assert!(!e.is_retryable(), "{status} {body:?}: {e:?}");
            let code = &status[..3];
            assert!(
                e.to_string().contains(&format!("HTTP {code}")),
                "{status}: {e}"
            );
        }
    }
}

#[tokio::test]
async fn documented_fatal_codes_stay_fatal_and_throttling_is_retried() {
    for code in [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "KMSDisabledException",
    ] {
        let body = format!("{{\"__type\":\"{code}\",\"message\":\"no\"}}");
        let e = put_error(response("400 Bad Request", &body)).await;
        assert!(!e.is_retryable(), "{code}: {e:?}");
        assert_eq!(e.code.as_deref(), Some(code), "{e:?}");
    }
    let body = "{\"__type\":\"ProvisionedThroughputExceededException\",\"message\":\"slow\"}";
    let e = put_error(response("400 Bad Request", body)).await;
    assert!(e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn transport_failures_are_retryable() {
    // Connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client(&format!("http://127.0.0.1:{port}"), static_credentials())
        .put_records(&StreamId::Name("s".into()), entries())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "refused: {e:?}");
    // Closed before any answer.
    let e = put_error(Answer::Bytes(Vec::new())).await;
    assert!(e.is_retryable(), "closed: {e:?}");
    // Headers, then the connection ends mid-headers.
    let e = put_error(Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec())).await;
    assert!(e.is_retryable(), "cut headers: {e:?}");
    // No answer within the attempt timeout.
    let e = put_error(Answer::Hang).await;
    assert!(e.is_retryable(), "timeout: {e:?}");
}

/// A provider that refreshes (its credentials expire) and fails its first `failures` calls.
#[derive(Debug)]
struct Flaky {
    calls: AtomicUsize,
    failures: usize,
    timeout: bool,
}

impl ProvideCredentials for Flaky {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        future::ProvideCredentials::ready(if n < self.failures {
            Err(if self.timeout {
                CredentialsError::provider_timed_out(Duration::from_secs(1))
            } else {
                CredentialsError::provider_error("the metadata service answered 500")
            })
        } else {
            Ok(Credentials::new(
                "ASIAEXAMPLE",
                "secret",
                Some("token".into()),
                Some(SystemTime::now() + Duration::from_secs(3600)),
                "test-refreshing",
            ))
        })
    }
}

#[tokio::test]
async fn a_provider_that_times_out_or_fails_is_retryable_and_then_works() {
    let endpoint = raw_server(response(
        "200 OK",
        "{\"FailedRecordCount\":0,\"Records\":[{\"SequenceNumber\":\"1\",\"ShardId\":\"shardId-000000000000\"}]}",
    ))
    .await;
    for timeout in [true, false] {
        let c = client(
            &endpoint,
            Flaky {
                calls: AtomicUsize::new(0),
                failures: 2,
                timeout,
            },
        );
        for _ in 0..2 {
            let e = c
                .put_records(&StreamId::Name("s".into()), entries())
                .await
                .unwrap_err();
            assert!(e.is_retryable(), "timeout {timeout}: {e:?}");
        }
        let stored = c
            .put_records(&StreamId::Name("s".into()), entries())
            .await
            .unwrap();
        assert_eq!(stored.len(), 1);
    }
}

#[derive(Debug)]
struct NotConfigured;

impl ProvideCredentials for NotConfigured {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
            "no credentials in the environment",
        )))
    }
}

#[tokio::test]
async fn no_credentials_at_all_is_fatal() {
    let endpoint = raw_server(response("200 OK", "{}")).await;
    let e = client(&endpoint, NotConfigured)
        .put_records(&StreamId::Name("s".into()), entries())
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
}

const EXPIRED: &str = "{\"__type\":\"ExpiredTokenException\",\"message\":\"The security token included in the request is expired\"}";

#[tokio::test]
async fn an_expired_token_is_fatal_from_static_credentials_and_retryable_from_a_refreshing_provider()
 {
    let endpoint = raw_server(response("400 Bad Request", EXPIRED)).await;
    let e = client(&endpoint, static_credentials())
        .put_records(&StreamId::Name("s".into()), entries())
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "static: {e:?}");
    assert_eq!(e.code.as_deref(), Some("ExpiredTokenException"));
    let refreshing = Flaky {
        calls: AtomicUsize::new(0),
        failures: 0,
        timeout: false,
    };
    let e = client(&endpoint, refreshing)
        .put_records(&StreamId::Name("s".into()), entries())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "refreshing: {e:?}");
    assert_eq!(e.code.as_deref(), Some("ExpiredTokenException"));
}

/// End to end: a producer whose credentials provider fails its first calls after startup
/// stores every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_stored_through_a_provider_that_fails_for_a_while() {
    use kpl::UserRecord;
    use kpl::producer::{Producer, ProducerConfig};
    use kpl_sim::{Sim, SimConfig};

    /// Works for the producer's startup calls, then fails `failures` times, then works.
    #[derive(Debug)]
    struct FailsAfterStartup {
        calls: Arc<AtomicUsize>,
        startup: usize,
        failures: usize,
    }
    impl ProvideCredentials for FailsAfterStartup {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let failing = n >= self.startup && n < self.startup + self.failures;
            future::ProvideCredentials::ready(if failing {
                Err(CredentialsError::provider_timed_out(Duration::from_secs(1)))
            } else {
                Ok(Credentials::new(
                    "ASIAEXAMPLE",
                    "secret",
                    Some("token".into()),
                    Some(SystemTime::now() + Duration::from_secs(3600)),
                    "test-refreshing",
                ))
            })
        }
    }

    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.create_stream("creds", 1).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let api = client(
        sim.endpoint(),
        FailsAfterStartup {
            calls: calls.clone(),
            startup: 2, // DescribeStreamSummary and ListShards
            failures: 3,
        },
    );
    let config = ProducerConfig {
        max_attempts: 10,
        record_max_buffered_time: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(Arc::new(api), "creds", config).await.unwrap();
    let mut futures = Vec::new();
    for i in 0..20 {
        futures.push(
            producer
                .send(UserRecord::new(format!("k{i}"), format!("record {i}")))
                .await
                .unwrap(),
        );
    }
    for f in futures {
        f.await.expect("stored after the provider recovered");
    }
    producer
        .shutdown()
        .await
        .expect("the pipeline ran to the end");
    assert!(calls.load(Ordering::SeqCst) > 2 + 3, "the provider failed");
    assert!(producer.metrics().retries > 0);
}
