//! What PutRecords calls cost in CPU on their own, with no producer around them: the floor
//! under any producer's CPU per record when records arrive slowly enough that each call carries
//! few of them. `scripts/p3.py` runs it at the call rate and shape of its `kpl bench` run, to
//! show how much of kpl's CPU is the client's.
//!
//! ```text
//! cargo run --release --example sdk_call_cost -- ENDPOINT STREAM CALLS_PER_SECOND ENTRIES ENTRY_BYTES SECONDS [CLIENT]
//! ```
//!
//! Calls go out one at a time, paced to `CALLS_PER_SECOND` (`max`: back to back), each with
//! `ENTRIES` records of `ENTRY_BYTES` random bytes, on one thread (the cheapest way to run
//! them: no cross-thread wake-ups). `CLIENT` is the client kpl uses:
//! - `sdk` (default): [`SdkKinesis`], aws-sdk-kinesis with SDK retries off, rustls on ring;
//! - `lean`: [`kpl::client::lean::LeanKinesis`], PutRecords from the SDK's parts without its
//!   per-call orchestrator;
//! - `hyper`: the floor under both, one PutRecords request signed once and POSTed again and
//!   again on one kept-alive hyper connection, the answer read whole and not parsed (plain
//!   `http://` endpoints only: a local simulator).
//!
//! Prints one JSON line: client, calls, CPU seconds (the whole process, from the first paced
//! call to the last answer) and CPU microseconds per call.

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kpl::client::sdk::ConnectOptions;
use kpl::client::{ClientKind, KinesisApi, PutRecordsEntry, PutRecordsResultEntry, StreamId};
use rand::RngCore;

/// CPU time of the whole process so far, in seconds: the sum over its threads of the time
/// the scheduler ran them (`/proc/self/task/*/schedstat`, nanoseconds; `kpl bench`'s clock
/// counts 10 ms ticks, too coarse for a few hundred calls). 0 where those files are missing.
fn process_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (
        [
            endpoint,
            stream,
            calls_per_second,
            entries,
            entry_bytes,
            seconds,
        ],
        client,
    ) = match &args[..] {
        [a, b, c, d, e, f] => ([a, b, c, d, e, f], "sdk"),
        [a, b, c, d, e, f, g] => ([a, b, c, d, e, f], g.as_str()),
        _ => {
            return Err(
                "usage: sdk_call_cost ENDPOINT STREAM CALLS_PER_SECOND|max ENTRIES \
                 ENTRY_BYTES SECONDS [sdk|lean|hyper]"
                    .into(),
            );
        }
    };
    // `None`: back to back.
    let calls_per_second: Option<f64> = match calls_per_second.as_str() {
        "max" => None,
        rate => Some(rate.parse()?),
    };
    let entries: usize = entries.parse()?;
    let entry_bytes: usize = entry_bytes.parse()?;
    let seconds: f64 = seconds.parse()?;
    if calls_per_second.is_some_and(|r| !r.is_finite() || r <= 0.0) || !(1..=500).contains(&entries)
    {
        return Err("CALLS_PER_SECOND must be > 0 (or max) and ENTRIES within 1..=500".into());
    }
    let mut rng = rand::rng();
    let data: Vec<Bytes> = (0..entries)
        .map(|_| {
            let mut d = vec![0u8; entry_bytes];
            rng.fill_bytes(&mut d);
            Bytes::from(d)
        })
        .collect();
    // Built once: the caller hands over entries a producer has already made; the clone per
    // call (what `put_records` takes by value) is the caller's part.
    let entries: Vec<PutRecordsEntry> = data
        .iter()
        .enumerate()
        .map(|(i, d)| PutRecordsEntry {
            partition_key: format!("key-{i:06}"),
            explicit_hash_key: None,
            data: d.clone(),
        })
        .collect();
    let batch = || entries.clone();
    let stream = StreamId::Name(stream.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut caller = match client {
            "hyper" => Caller::Hyper(Box::new(
                BareHyper::connect(endpoint, &stream, &batch()).await?,
            )),
            kind => Caller::Api(
                kpl::client::connect(ConnectOptions {
                    endpoint_url: Some(endpoint.clone()),
                    region: None,
                    attempt_timeout: Some(Duration::from_secs(10)),
                    client: kind.parse::<ClientKind>()?,
                    ..Default::default()
                })
                .await,
            ),
        };
        let mut call = async || match &mut caller {
            Caller::Api(kinesis) => check(kinesis.put_records(&stream, batch()).await?),
            Caller::Hyper(floor) => floor.post().await,
        };
        // The first call opens the connection: not counted.
        call().await?;
        let cpu_start = process_cpu_seconds();
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            if let Some(rate) = calls_per_second {
                let due = start + Duration::from_secs_f64(calls as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            call().await?;
            calls += 1;
        }
        let cpu = process_cpu_seconds() - cpu_start;
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "{{\"client\": \"{client}\", \"calls\": {calls}, \"calls_per_second\": {:.2}, \"elapsed_seconds\": {elapsed:.3}, \"cpu_seconds\": {cpu:.4}, \"cpu_us_per_call\": {:.1}}}",
            calls as f64 / elapsed,
            cpu / calls as f64 * 1e6
        );
        Ok::<_, Error>(())
    })
}

/// What makes the calls.
enum Caller {
    Api(std::sync::Arc<dyn KinesisApi>),
    Hyper(Box<BareHyper>),
}

fn check(results: Vec<PutRecordsResultEntry>) -> Result<(), Error> {
    match results
        .iter()
        .find(|r| matches!(r, PutRecordsResultEntry::Failed { .. }))
    {
        Some(failed) => Err(format!("an entry failed: {failed:?}").into()),
        None => Ok(()),
    }
}

/// One signed PutRecords request, resent as is on one kept-alive HTTP/1.1 connection.
struct BareHyper {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl BareHyper {
    async fn connect(
        endpoint: &str,
        stream: &StreamId,
        entries: &[PutRecordsEntry],
    ) -> Result<Self, Error> {
        let uri: http::Uri = format!("{}/", endpoint.trim_end_matches('/')).parse()?;
        if uri.scheme_str() != Some("http") {
            return Err("the hyper floor speaks plain http:// only (a local simulator)".into());
        }
        let authority = uri.authority().ok_or("the endpoint has no host")?.clone();
        let records: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "Data": base64::engine::general_purpose::STANDARD.encode(&e.data),
                    "PartitionKey": e.partition_key,
                })
            })
            .collect();
        let body = Bytes::from(
            serde_json::json!({"Records": records, "StreamName": stream.to_string()}).to_string(),
        );
        // Signed once, as a client would sign it (the simulator does not check freshness).
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        let identity = Credentials::new(
            env("AWS_ACCESS_KEY_ID", "local"),
            env("AWS_SECRET_ACCESS_KEY", "local"),
            None,
            None,
            "sdk_call_cost",
        )
        .into();
        let region = env("AWS_REGION", "us-east-1");
        let length = body.len().to_string();
        let unsigned = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "Kinesis_20131202.PutRecords"),
            ("content-length", length.as_str()),
            ("host", authority.as_str()),
        ];
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name("kinesis")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let uri_text = uri.to_string();
        let signable = SignableRequest::new(
            "POST",
            &uri_text,
            unsigned.iter().copied(),
            SignableBody::Bytes(&body),
        )?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut headers = http::HeaderMap::new();
        for (name, value) in unsigned {
            headers.insert(name, value.parse()?);
        }
        for (name, value) in instructions.headers() {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(BareHyper {
            sender,
            uri,
            headers,
            body,
        })
    }

    async fn post(&mut self) -> Result<(), Error> {
        let mut request =
            http::Request::post(self.uri.clone()).body(Full::new(self.body.clone()))?;
        *request.headers_mut() = self.headers.clone();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(())
    }
}
