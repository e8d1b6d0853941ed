//! Shared test harness: Kinesis-compatible servers on free loopback ports, stopped by PID
//! (process group) when dropped, and helpers to create streams and read them back.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use kpl::client::sdk::{ConnectOptions, SdkKinesis};
use kpl::client::{ClientKind, KinesisApi, StreamId};
use kpl::codec::deaggregate::{DeaggregatedRecord, Deaggregator, outside_range};
use kpl::reader::{ReaderConfig, StreamReader};

/// A server process; killed with its process group on drop.
pub struct Server {
    child: Child,
    pub endpoint: String,
    pub name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // The child leads its own process group: kill the group, then reap.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace root (these helpers also serve crates/kpl-cli's tests).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .expect("the workspace root holds Cargo.lock")
        .to_path_buf()
}

fn tools() -> PathBuf {
    let dir = repo().join(".tools/node_modules");
    assert!(
        dir.join("kinesalite/cli.js").exists() && dir.join("kinesis-local/main.js").exists(),
        "the test peers are not installed: run scripts/setup-node.sh (scripts/test.sh does)"
    );
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(name: &'static str, mut cmd: Command, port: u16) -> Server {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let server = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        name,
    };
    wait_ready(&server, port);
    server
}

/// kinesalite: AWS-exact hash ranges and request limits; no UpdateShardCount.
pub fn kinesalite() -> Server {
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg("-r")
        .arg(repo().join("tests/node/bind-loopback.js"))
        .arg(tools().join("kinesalite/cli.js"))
        .args(["--port", &port.to_string()])
        .args(["--shardLimit", "1000", "--createStreamMs", "0"])
        .args(["--deleteStreamMs", "0", "--updateStreamMs", "0"]);
    spawn("kinesalite", cmd, port)
}

/// kinesis-local (kinesis-mock): full API incl. UpdateShardCount; slow.
pub fn kinesis_local() -> Server {
    let port = free_port();
    let tls_port = free_port();
    let dir = tools().join("kinesis-local");
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("-r")
        .arg(repo().join("tests/node/bind-loopback.js"))
        .arg(dir.join("main.js"))
        .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
        .env("SHARD_LIMIT", "1000")
        .env("LOG_LEVEL", "ERROR");
    for var in [
        "CREATE_STREAM_DURATION",
        "DELETE_STREAM_DURATION",
        "MERGE_SHARDS_DURATION",
        "SPLIT_SHARD_DURATION",
        "UPDATE_SHARD_COUNT_DURATION",
    ] {
        cmd.env(var, "0ms");
    }
    spawn("kinesis-local", cmd, port)
}

/// Polls with a ListStreams call until the server answers 200, for up to 30 s.
fn wait_ready(server: &Server, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port))
            && signed_call(&mut s, port, "ListStreams", "{}")
                .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} did not become ready on port {port} within 30 s",
        server.name
    );
}

/// The client the tests put through: `KPL_TEST_CLIENT=sdk` or `lean`, the default client
/// (lean) when unset.
pub fn client_kind() -> ClientKind {
    match std::env::var("KPL_TEST_CLIENT") {
        Ok(kind) => kind.parse().expect("KPL_TEST_CLIENT is sdk or lean"),
        Err(_) => ClientKind::default(),
    }
}

/// The client [`client_kind`] names, for `endpoint`.
pub async fn api(endpoint: &str, attempt_timeout: Duration) -> Arc<dyn KinesisApi> {
    kpl::client::connect(ConnectOptions {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        attempt_timeout: Some(attempt_timeout),
        client: client_kind(),
        ..Default::default()
    })
    .await
}

/// One Kinesis call as raw HTTP on `stream` (a connection to 127.0.0.1:`port`), answered in
/// full (status line, headers, body). Unsigned calls are refused by every local Kinesis, so it
/// carries X-Amz-Date and an Authorization header with a placeholder signature.
pub fn signed_call(
    stream: &mut TcpStream,
    port: u16,
    operation: &str,
    body: &str,
) -> std::io::Result<String> {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: Kinesis_20131202.{operation}\r\nX-Amz-Date: 20260101T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    // Read to the end of the body (Content-Length), not to the end of the connection: not
    // every server honours `Connection: close`.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if answer.len() >= head_end + 4 + length {
                break;
            }
        }
        if n == 0 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

pub async fn sdk(endpoint: &str) -> SdkKinesis {
    SdkKinesis::connect(ConnectOptions {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        attempt_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    })
    .await
}

/// A user record read back, with where it was read.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub shard_id: String,
    pub sequence_number: String,
    pub record: DeaggregatedRecord,
    /// Every user record of its Kinesis record lies in the shard's range: the KCL delivers it.
    /// (False only for an aggregate stored on a shard the producer had not seen yet, during a
    /// reshard: the KCL drops it and the producer sends its records again.)
    pub kcl_valid: bool,
}

/// Reads the whole stream and deaggregates it.
pub async fn read_all(api: &SdkKinesis, stream: &str) -> Vec<ReadBack> {
    let mut reader = StreamReader::new(
        api.clone(),
        StreamId::Name(stream.to_owned()),
        ReaderConfig::default(),
    )
    .await
    .expect("stream readable");
    let deagg = Deaggregator::new().strict(true);
    let mut out = Vec::new();
    for r in reader.read_all().await.expect("read the stream") {
        let records = deagg
            .deaggregate(&r.record.data, &r.record.partition_key, None)
            .expect("kpl reads what kpl writes");
        let kcl_valid = outside_range(&records, r.shard_range).is_empty();
        for record in records {
            out.push(ReadBack {
                shard_id: r.shard_id.to_string(),
                sequence_number: r.record.sequence_number.clone(),
                record,
                kcl_valid,
            });
        }
    }
    out
}

/// Runs `cmd` with `stdin` written to it from another thread (so a large input cannot
/// deadlock against a full stdout pipe) and returns its output.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits early closes its stdin: not an error here.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread");
    out
}

/// A producer over the in-memory Kinesis.
pub async fn memory_producer(
    fake: &std::sync::Arc<kpl::client::memory::MemoryKinesis>,
    stream: &str,
    config: kpl::producer::ProducerConfig,
) -> kpl::producer::Producer {
    let api: std::sync::Arc<dyn kpl::client::KinesisApi> = fake.clone();
    kpl::producer::Producer::new(api, stream, config)
        .await
        .expect("producer starts")
}
