//! The `kpl` binary as a user runs it: lines in with `kpl put`, the same lines out with
//! `kpl cat`, against kinesalite and against `kpl sim`; bad input gives the documented outcome
//! and exit code.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kpl_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_kpl"))
}

fn kpl(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(kpl_binary());
    cmd.args(args);
    common::run_with_stdin(cmd, stdin)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn multiset(data: &[u8]) -> HashMap<Vec<u8>, usize> {
    let mut m = HashMap::new();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        *m.entry(line.to_vec()).or_default() += 1;
    }
    m
}

fn json_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        writeln!(
            out,
            "{{\"user\":\"user-{}\",\"n\":{i},\"msg\":\"GET /api/items/{} 200\"}}",
            i % 700,
            i % 97
        )
        .unwrap();
    }
    out
}

/// `kpl put` then `kpl cat` on a fresh stream: the same multiset of lines.
fn round_trip(endpoint: &str, stream: &str, input: &[u8], extra: &[&str]) -> String {
    let mut args = vec!["put", "--stream", stream, "--endpoint-url", endpoint];
    args.extend_from_slice(extra);
    let put = kpl(&args, input);
    assert!(put.status.success(), "put failed: {}", stderr(&put));
    let cat = kpl(
        &["cat", "--stream", stream, "--endpoint-url", endpoint],
        b"",
    );
    assert!(cat.status.success(), "cat failed: {}", stderr(&cat));
    assert_eq!(
        multiset(&cat.stdout),
        multiset(input),
        "same lines out as in"
    );
    assert!(
        stderr(&cat).contains("0 outside their shard's range"),
        "{}",
        stderr(&cat)
    );
    stderr(&put)
}

async fn kinesalite_with_stream(name: &str, shards: i32) -> common::Server {
    let server = common::kinesalite();
    common::sdk(&server.endpoint)
        .await
        .create_stream(name, shards)
        .await
        .unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_lines_round_trip_through_kinesalite() {
    let server = kinesalite_with_stream("lines", 4).await;
    let input = json_lines(100_000);
    let summary = round_trip(&server.endpoint, "lines", &input, &[]);
    assert!(summary.contains("100000 user records"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_and_json_keys_round_trip_through_kinesalite() {
    let server = kinesalite_with_stream("z", 4).await;
    let input = json_lines(30_000);
    round_trip(
        &server.endpoint,
        "z",
        &input,
        &["--compression", "zstd:3", "--partition-key", "json:user"],
    );
    // Records of one user share a key, so they share a shard.
    let cat = kpl(
        &[
            "cat",
            "--stream",
            "z",
            "--endpoint-url",
            &server.endpoint,
            "--format",
            "json",
        ],
        b"",
    );
    let mut shard_of_key: HashMap<String, String> = HashMap::new();
    for line in String::from_utf8(cat.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["partition_key"].as_str().unwrap().to_owned();
        let shard = v["shard_id"].as_str().unwrap().to_owned();
        assert!(key.starts_with("user-"));
        assert_eq!(
            shard_of_key.entry(key).or_insert_with(|| shard.clone()),
            &shard
        );
    }
    assert_eq!(shard_of_key.len(), 700);
}

/// A `kpl sim` process, killed when dropped.
struct SimProcess {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    endpoint: String,
    port: u16,
    /// The endpoint line as printed.
    line: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kpl sim --port 0 ARGS`, once it has printed its endpoint line:
/// `kpl sim: listening on http://127.0.0.1:PORT streams=NAME:SHARDS,...`.
fn kpl_sim(args: &[&str]) -> SimProcess {
    use std::io::BufRead;
    let mut child: Child = Command::new(kpl_binary())
        .args(["sim", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let line = line.trim_end().to_owned();
    let endpoint = line
        .strip_prefix("kpl sim: listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not an endpoint line: {line:?}"))
        .to_owned();
    let port = endpoint
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a loopback endpoint: {line:?}"));
    SimProcess {
        child,
        stdout,
        endpoint,
        port,
        line,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_round_trip_through_kpl_sim_with_shard_limits() {
    let sim = kpl_sim(&["--stream", "s:2"]);
    let input = json_lines(100_000);
    round_trip(
        &sim.endpoint,
        "s",
        &input,
        &["--partition-key", "json:user"],
    );
}

/// `kpl sim` creates its streams before it accepts a connection: a call sent the moment the
/// port accepts one finds the stream ACTIVE with its shards, and can write to it.
#[test]
fn kpl_sim_serves_its_streams_from_the_first_connection() {
    let port = common::free_port();
    let mut child = Command::new(kpl_binary())
        .args(["sim", "--port", &port.to_string(), "--stream", "ready:3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A bound on a hang only: the loop ends at the first connection accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("kpl sim never accepted a connection: {e}"),
        }
    };
    let summary = common::signed_call(
        &mut first,
        port,
        "DescribeStreamSummary",
        r#"{"StreamName":"ready"}"#,
    )
    .unwrap();
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let put = common::signed_call(
        &mut second,
        port,
        "PutRecords",
        r#"{"StreamName":"ready","Records":[{"PartitionKey":"k","Data":"aGk="}]}"#,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(summary.starts_with("HTTP/1.1 200"), "{summary}");
    assert!(summary.contains(r#""StreamStatus":"ACTIVE""#), "{summary}");
    assert!(summary.contains(r#""OpenShardCount":3"#), "{summary}");
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    assert!(put.contains(r#""FailedRecordCount":0"#), "{put}");
}

/// `--port 0` picks a free port; the one line on stdout names it and the streams, and is
/// printed only once they exist.
#[test]
fn kpl_sim_on_port_0_prints_one_endpoint_line_once_its_streams_exist() {
    let mut sim = kpl_sim(&["--stream", "a:2", "--stream", "b:1"]);
    assert_eq!(
        sim.line,
        format!(
            "kpl sim: listening on http://127.0.0.1:{} streams=a:2,b:1",
            sim.port
        )
    );
    for (stream, shards) in [("a", 2), ("b", 1)] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", sim.port)).unwrap();
        let body = format!(r#"{{"StreamName":"{stream}"}}"#);
        let summary =
            common::signed_call(&mut conn, sim.port, "DescribeStreamSummary", &body).unwrap();
        assert!(summary.starts_with("HTTP/1.1 200"), "{summary}");
        assert!(
            summary.contains(&format!(r#""OpenShardCount":{shards}"#)),
            "{summary}"
        );
    }
    // Nothing else on stdout up to a graceful stop (diagnostics go to stderr).
    let stopped = Command::new("kill")
        .args(["-TERM", &sim.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut sim.stdout, &mut rest).unwrap();
    assert!(sim.child.wait().unwrap().success());
    assert_eq!(rest, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_lines_and_crlf_are_data() {
    let server = kinesalite_with_stream("b", 2).await;
    let mut input = Vec::new();
    for i in 0..1000u32 {
        input.extend_from_slice(&[0xFF, 0xFE, (i % 251) as u8, b'\t', 0x00]);
        input.extend_from_slice(format!("{i}").as_bytes());
        input.extend_from_slice(if i % 2 == 0 { b"\r\n" } else { b"\n" });
    }
    input.extend_from_slice(b"\n\n"); // empty lines: skipped and counted
    let put = kpl(
        &["put", "--stream", "b", "--endpoint-url", &server.endpoint],
        &input,
    );
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(
        stderr(&put).contains("2 empty lines skipped"),
        "{}",
        stderr(&put)
    );
    let cat = kpl(
        &["cat", "--stream", "b", "--endpoint-url", &server.endpoint],
        b"",
    );
    let expected: Vec<u8> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .flat_map(|l| {
            l.strip_suffix(b"\r")
                .unwrap_or(l)
                .iter()
                .copied()
                .chain([b'\n'])
        })
        .collect();
    assert_eq!(multiset(&cat.stdout), multiset(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_keyless_lines_fail_with_exit_1_and_are_reported() {
    let server = kinesalite_with_stream("bad", 1).await;
    let dir = std::env::temp_dir().join(format!("kpl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let failed = dir.join("failed.txt");
    let summary = dir.join("summary.json");
    let big = "x".repeat(1024 * 1024 + 10);
    let input = format!(
        "{{\"user\":\"a\",\"n\":1}}\nnot json\n{{\"n\":2}}\n{{\"user\":\"b\",\"pad\":\"{big}\"}}\n{{\"user\":\"c\"}}\n"
    );
    let out = kpl(
        &[
            "put",
            "--stream",
            "bad",
            "--endpoint-url",
            &server.endpoint,
            "--partition-key",
            "json:user",
            // Smaller than a batch of lines: batches go in parts.
            "--max-outstanding-records",
            "1",
            "--failed",
            failed.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not a JSON line"), "{err}");
    assert!(err.contains("no field \"user\""), "{err}");
    assert!(err.contains("over the stream's limit"), "{err}");
    let failed_lines = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(failed_lines.lines().count(), 3);
    assert!(failed_lines.contains("not json"));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["user_records_put"], 2);
    assert_eq!(s["failed_records"], 3);
    let cat = kpl(
        &["cat", "--stream", "bad", "--endpoint-url", &server.endpoint],
        b"",
    );
    assert_eq!(multiset(&cat.stdout).len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_or_a_dead_endpoint_ends_fast_with_exit_2() {
    let server = common::kinesalite();
    let start = Instant::now();
    let out = kpl(
        &[
            "put",
            "--stream",
            "nope",
            "--endpoint-url",
            &server.endpoint,
        ],
        b"a\nb\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ResourceNotFoundException"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Check the stream name"),
        "{}",
        stderr(&out)
    );
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let out = kpl(&["put", "--stream", "s", "--endpoint-url", &dead], b"a\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not reach"), "{}", stderr(&out));
    let out = kpl(&["put", "--stream", "s", "--rate-limit", "0"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rate_limit_percent"),
        "{}",
        stderr(&out)
    );
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_dictionary_and_dedup_ids_round_trip_through_lost_answers() {
    use kpl_sim::{Faults, Sim, SimConfig};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-dict");
    std::fs::create_dir_all(&dir).unwrap();
    let samples = dir.join("samples.txt");
    let dict = dir.join("logs.dict");
    std::fs::write(&samples, json_lines(5_000)).unwrap();
    let train = kpl(
        &[
            "dict",
            "train",
            samples.to_str().unwrap(),
            "-o",
            dict.to_str().unwrap(),
            "--max-size",
            "8192",
        ],
        b"",
    );
    assert!(train.status.success(), "{}", stderr(&train));
    assert!(stderr(&train).contains("with it"), "{}", stderr(&train));

    let sim = Sim::start(SimConfig {
        streams: vec![("d".into(), 2)],
        seed: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    // A fifth of the calls are stored but their answer never comes: kpl put resends them.
    sim.set_faults(Faults {
        stream: Some("d".into()),
        lost_response_probability: 0.2,
        hang_ms: 1_500,
        ..Default::default()
    });
    let input = json_lines(2_000);
    let endpoint = sim.endpoint().to_owned();
    let dict_arg = dict.to_str().unwrap().to_owned();
    let put = tokio::task::spawn_blocking({
        let (endpoint, dict_arg, input) = (endpoint.clone(), dict_arg.clone(), input.clone());
        move || {
            kpl(
                &[
                    "put",
                    "--stream",
                    "d",
                    "--endpoint-url",
                    &endpoint,
                    "--no-aggregation",
                    "--zstd-dict",
                    &dict_arg,
                    "--dedup-ids",
                    "--request-timeout",
                    "400ms",
                    "--max-buffered-time",
                    "20ms",
                ],
                &input,
            )
        }
    })
    .await
    .unwrap();
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(sim.stats().lost_responses > 0, "the fault fired");
    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(1_600)).await;

    let cat = |extra: &[&str]| {
        let mut args = vec!["cat", "--stream", "d", "--endpoint-url", &endpoint];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kpl(&args, b"")
        })
    };
    let deduped = cat(&["--zstd-dict", &dict_arg, "--dedup"]).await.unwrap();
    assert!(deduped.status.success(), "{}", stderr(&deduped));
    assert_eq!(
        multiset(&deduped.stdout),
        multiset(&input),
        "exactly the input"
    );
    assert!(
        !stderr(&deduped).contains("; 0 duplicates dropped"),
        "{}",
        stderr(&deduped)
    );
    let raw = cat(&["--zstd-dict", &dict_arg]).await.unwrap();
    let raw_lines = raw
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(raw_lines > 2_000, "duplicates without --dedup: {raw_lines}");
    // Without the dictionary the records are reported, not skipped silently.
    let no_dict = cat(&[]).await.unwrap();
    assert_eq!(no_dict.status.code(), Some(1), "{}", stderr(&no_dict));
    assert!(
        stderr(&no_dict).contains("needs zstd dictionary"),
        "{}",
        stderr(&no_dict)
    );
}
