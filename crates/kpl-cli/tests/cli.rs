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
    // Said once, with the count, not once per record.
    let said = stderr(&no_dict)
        .lines()
        .filter(|l| l.contains("zstd dictionary"))
        .count();
    assert_eq!(said, 1, "{}", stderr(&no_dict));
    assert!(
        stderr(&no_dict).contains("Kinesis records were not decoded"),
        "{}",
        stderr(&no_dict)
    );
}

/// Runs `kpl` on another thread, for tests that serve Kinesis from their own runtime.
async fn kpl_async(args: &[&str], stdin: &[u8]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kpl(&args, &stdin)
    })
    .await
    .unwrap()
}

/// A message a user reads: one sentence per cause, no doubled full stop, no SDK `Debug` dump,
/// no colour codes.
fn assert_reads_clean(text: &str) {
    assert!(!text.contains(".."), "doubled punctuation: {text}");
    assert!(!text.contains("DispatchFailure("), "a Debug dump: {text}");
    assert!(!text.contains("ConnectorError {"), "a Debug dump: {text}");
    assert!(!text.contains('\x1b'), "ANSI codes in a pipe: {text:?}");
}

#[test]
fn bench_flags_out_of_range_are_usage_errors_that_name_the_flag() {
    for (args, flag) in [
        (&["bench", "--shards", "100000"][..], "--shards"),
        (&["bench", "--shards", "0"], "--shards"),
        (&["bench", "--duration", "0s"], "--duration"),
        (&["bench", "--duration", "500ms"], "--duration"),
        (&["bench", "--rate", "0"], "--rate"),
        (&["bench", "--keys", "0"], "--keys"),
        (&["bench", "--plot", "out.gif"], "--plot"),
        (&["--threads", "0", "bench"], "--threads"),
        (
            &["put", "--stream", "s", "--endpoint-url", "notaurl"],
            "--endpoint-url",
        ),
    ] {
        let out = kpl(args, b"");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("Stream "), "{args:?} reached Kinesis: {err}");
        assert_reads_clean(&err);
    }
    // --help says where the report's fields are, and it is --help itself.
    let help = kpl(&["bench", "--help"], b"");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(!help.contains("README"), "{help}");
    for field in ["steady_byte_utilization", "throttled_entries", "per_second"] {
        assert!(help.contains(field), "{field} undocumented: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_or_a_missing_stream_reads_as_one_clear_sentence() {
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let out = kpl_async(&["put", "--stream", "s", "--endpoint-url", &dead], b"a\n").await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_reads_clean(&err);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(err.contains("Check the endpoint URL"), "{err}");

    let sim = kpl_sim::Sim::start(kpl_sim::SimConfig::default())
        .await
        .unwrap();
    let endpoint = sim.endpoint().to_owned();
    for args in [
        &["put", "--stream", "missing", "--endpoint-url", &endpoint][..],
        &["cat", "--stream", "missing", "--endpoint-url", &endpoint],
    ] {
        let out = kpl_async(args, b"a\n").await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("ResourceNotFoundException"), "{args:?}: {err}");
        assert_reads_clean(&err);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_endpoint_logs_its_failure_once_in_plain_text_and_summaries_name_their_units() {
    use kpl_sim::{Faults, RequestFault, Sim, SimConfig};
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.create_stream("f", 1).await.unwrap();
    // Every call fails: each record is tried three times, each try logs a warning.
    sim.set_faults(Faults {
        request_errors: vec![RequestFault {
            code: "InternalFailure".into(),
            status: 500,
            probability: 1.0,
        }],
        ..Default::default()
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-flaky");
    std::fs::create_dir_all(&dir).unwrap();
    let summary = dir.join("summary.json");
    let endpoint = sim.endpoint().to_owned();
    let input: Vec<u8> = (0..20)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = kpl_async(
        &[
            "put",
            "--stream",
            "f",
            "--endpoint-url",
            &endpoint,
            "--max-attempts",
            "4",
            "--max-buffered-time",
            "10ms",
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        &input,
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_reads_clean(&err);
    let logged = err
        .lines()
        .filter(|l| l.contains("PutRecords call failed") && !l.contains("more like this"))
        .count();
    let failed_calls: u64 = sim.stats().request_errors.values().sum();
    assert!(failed_calls >= 4, "{:?}", sim.stats());
    assert_eq!(logged, 1, "the first failure, the rest counted: {err}");
    assert!(
        err.contains(&format!(
            "PutRecords call failed: {} more like this in the last",
            failed_calls - 1
        )),
        "the count is written at shutdown: {err}"
    );
    assert!(err.contains("user record retries"), "{err}");
    assert!(err.contains("Kinesis entries throttled"), "{err}");
    assert!(err.contains("20 user records failed"), "{err}");
    let json = std::fs::read(&summary).unwrap();
    assert_eq!(json.last(), Some(&b'\n'), "the summary file ends its line");
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed["failed_records"], 20);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_plots_are_a_well_formed_svg_and_a_png_with_labelled_axes() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-plot");
    std::fs::create_dir_all(&dir).unwrap();
    let (svg, png, report) = (dir.join("p.svg"), dir.join("p.png"), dir.join("r.json"));
    let bench = |plot: &std::path::Path, report: Option<&std::path::Path>| {
        let mut args = vec![
            "bench".to_owned(),
            "--shards".into(),
            "2".into(),
            "--duration".into(),
            "2s".into(),
            "--rate".into(),
            "500".into(),
            "--quiet".into(),
            "--plot".into(),
            plot.to_str().unwrap().into(),
        ];
        if let Some(r) = report {
            args.extend(["--report".into(), r.to_str().unwrap().into()]);
        }
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kpl(&args, b"")
        })
    };
    let (a, b) = tokio::join!(bench(&svg, Some(&report)), bench(&png, None));
    for out in [a.unwrap(), b.unwrap()] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_reads_clean(&stderr(&out));
    }

    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for label in [
        "time since start (s)",
        "MiB/s",
        "Kinesis entries/s",
        "latency (ms)",
        "% of 1 MiB/s",
        "capacity: 2 shards x 1 MiB/s",
        "capacity: 1 MiB/s per shard",
        "p99",
        "0",
        "1",
    ] {
        assert!(texts.contains(&label), "no {label:?} in {texts:?}");
    }

    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(
        (800..=4000).contains(&width) && (500..=4000).contains(&height),
        "{width}x{height}"
    );
    assert!(
        bytes.len() > 20_000,
        "a picture, not a blank: {} bytes",
        bytes.len()
    );

    let report = std::fs::read(&report).unwrap();
    assert_eq!(report.last(), Some(&b'\n'));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert!(
        report["per_second"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["latency_ms"]["p99"].is_number()),
        "{report}"
    );
}

// ---- kpl put stops without losing a line: signals, end of input, fatal errors, long lines ----

/// A `kpl put` child with its stdin piped and its stderr collected as it comes.
struct PutChild {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    dir: std::path::PathBuf,
}

impl PutChild {
    fn spawn(name: &str, endpoint: &str, stream: &str, extra: &[&str]) -> PutChild {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("put-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let failed = dir.join("failed.txt");
        let summary = dir.join("summary.json");
        let mut child = Command::new(kpl_binary())
            .args(["put", "--stream", stream, "--endpoint-url", endpoint])
            .args(["--failed", failed.to_str().unwrap()])
            .args(["--summary-json", summary.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        PutChild {
            child,
            stdin,
            stderr,
            dir,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until `condition` holds.
    async fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..400 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} never happened; stderr: {}", self.stderr());
    }

    /// Waits for the exit, at most `bound`; kills the child and fails past it.
    async fn exit_within(&mut self, bound: Duration) -> i32 {
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr thread catch up.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status.code().expect("exited, not killed by a signal");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "kpl put did not exit within {bound:?}; stderr: {}",
            self.stderr()
        );
    }

    fn summary(&self) -> serde_json::Value {
        let text = std::fs::read(self.dir.join("summary.json")).expect("the summary was written");
        serde_json::from_slice(&text).unwrap()
    }

    fn failed_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("failed.txt"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PutChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sim_with_stream(stream: &str, shards: u32) -> kpl_sim::SimHandle {
    let sim = kpl_sim::Sim::start(kpl_sim::SimConfig::default())
        .await
        .unwrap();
    sim.create_stream(stream, shards).await.unwrap();
    sim
}

/// The user records in `stream`, as lines.
async fn stored_lines(endpoint: &str, stream: &str) -> Vec<String> {
    common::read_all(&common::sdk(endpoint).await, stream)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.record.data.to_vec()).unwrap())
        .collect()
}

/// Every line read (`p-0` ... `p-{n-1}`, in input order) is stored or in `--failed`, and
/// the summary adds up.
async fn every_line_read_is_accounted_for(put: &PutChild, endpoint: &str, stream: &str) -> u64 {
    let s = put.summary();
    let read = s["lines_read"].as_u64().unwrap();
    let stored = s["user_records_put"].as_u64().unwrap();
    let failed = s["failed_records"].as_u64().unwrap();
    assert_eq!(read, stored + failed, "{s:#}");
    let in_stream: std::collections::HashSet<String> =
        stored_lines(endpoint, stream).await.into_iter().collect();
    let in_failed: std::collections::HashSet<String> = put.failed_lines().into_iter().collect();
    assert_eq!(in_failed.len() as u64, failed, "{s:#}");
    for n in 0..read {
        let line = format!("p-{n}");
        assert!(
            in_stream.contains(&line) || in_failed.contains(&line),
            "{line} was read but is neither stored nor in --failed; {s:#}"
        );
    }
    read
}

/// Writes `p-0`, `p-1`, ... in bursts of 20 lines per write until the pipe closes.
fn paced_writer(mut stdin: std::process::ChildStdin) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let mut burst = String::new();
            for _ in 0..20 {
                burst.push_str(&format!("p-{n}\n"));
                n += 1;
            }
            if stdin.write_all(burst.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_lines_arrive_loses_no_line_read() {
    for signal in ["TERM", "INT"] {
        let sim = sim_with_stream("paced", 2).await;
        let mut put = PutChild::spawn("paced", sim.endpoint(), "paced", &[]);
        let writer = paced_writer(put.stdin.take().unwrap());
        put.wait_until("records stored", || sim.stats().entries_forwarded >= 5)
            .await;
        put.signal(signal);
        let code = put.exit_within(Duration::from_secs(30)).await;
        writer.join().unwrap();
        let read = every_line_read_is_accounted_for(&put, sim.endpoint(), "paced").await;
        assert!(read > 0);
        assert_eq!(code, 0, "every line read was stored: {}", put.stderr());
        assert_eq!(put.summary()["signal"], format!("SIG{signal}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_kpl_put_while_stdin_is_idle() {
    let sim = sim_with_stream("idle", 1).await;
    let mut put = PutChild::spawn("idle", sim.endpoint(), "idle", &[]);
    let mut stdin = put.stdin.take().unwrap();
    stdin.write_all(b"p-0\np-1\np-2\n").unwrap();
    // stdin stays open, with nothing more to read (an idle `tail -F`).
    put.wait_until("records stored", || sim.stats().entries_forwarded >= 1)
        .await;
    put.signal("TERM");
    let code = put.exit_within(Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{}", put.stderr());
    assert_eq!(
        every_line_read_is_accounted_for(&put, sim.endpoint(), "idle").await,
        3
    );
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_input_sends_the_last_records_at_once() {
    let sim = sim_with_stream("eof", 1).await;
    // Records would wait ten minutes to fill an aggregate: the end of input sends them.
    let mut put = PutChild::spawn(
        "eof",
        sim.endpoint(),
        "eof",
        &["--max-buffered-time", "10m", "--record-ttl", "20m"],
    );
    let mut stdin = put.stdin.take().unwrap();
    stdin.write_all(b"p-0\np-1\np-2\n").unwrap();
    drop(stdin);
    let code = put.exit_within(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{}", put.stderr());
    assert_eq!(
        every_line_read_is_accounted_for(&put, sim.endpoint(), "eof").await,
        3
    );
}

/// PutRecords calls of `stream` hang (not stored) for a minute.
fn hang_puts(sim: &kpl_sim::SimHandle, stream: &str) {
    sim.set_faults(kpl_sim::Faults {
        stream: Some(stream.into()),
        hang_probability: 1.0,
        hang_ms: 60_000,
        ..Default::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once_with_every_unresolved_line_in_failed() {
    let sim = sim_with_stream("forced", 1).await;
    hang_puts(&sim, "forced");
    let mut put = PutChild::spawn(
        "forced",
        sim.endpoint(),
        "forced",
        &["--request-timeout", "50s", "--record-ttl", "5m"],
    );
    let mut stdin = put.stdin.take().unwrap();
    let input: String = (0..50).map(|n| format!("p-{n}\n")).collect();
    stdin.write_all(input.as_bytes()).unwrap();
    put.wait_until("a PutRecords call hangs", || sim.stats().hangs >= 1)
        .await;
    put.signal("INT");
    put.wait_until("the first signal was seen", || {
        put.stderr().contains("stopped reading")
    })
    .await;
    put.signal("INT");
    // The calls hang for a minute and time out after 50 s: only the forced exit ends it soon.
    let code = put.exit_within(Duration::from_secs(20)).await;
    assert_eq!(code, 130, "{}", put.stderr());
    assert_eq!(
        every_line_read_is_accounted_for(&put, sim.endpoint(), "forced").await,
        50
    );
    let s = put.summary();
    assert_eq!(s["user_records_put"], 0, "{s:#}");
    assert_eq!(s["failed_by_reason"]["Interrupted"], 50, "{s:#}");
    assert_eq!(s["forced_exit"], true, "{s:#}");
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_lines_not_stored_exits_143() {
    let sim = sim_with_stream("term", 1).await;
    hang_puts(&sim, "term");
    let mut put = PutChild::spawn(
        "term",
        sim.endpoint(),
        "term",
        &[
            "--request-timeout",
            "200ms",
            "--record-ttl",
            "1s",
            "--max-attempts",
            "2",
        ],
    );
    let mut stdin = put.stdin.take().unwrap();
    stdin.write_all(b"p-0\np-1\np-2\np-3\n").unwrap();
    put.wait_until("a PutRecords call hangs", || sim.stats().hangs >= 1)
        .await;
    put.signal("TERM");
    let code = put.exit_within(Duration::from_secs(20)).await;
    assert_eq!(code, 143, "{}", put.stderr());
    assert_eq!(
        every_line_read_is_accounted_for(&put, sim.endpoint(), "term").await,
        4
    );
    assert_eq!(put.summary()["failed_records"], 4);
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_static_token_mid_run_exits_2_with_every_line_accounted_for() {
    let sim = sim_with_stream("expired", 1).await;
    sim.set_faults(kpl_sim::Faults {
        stream: Some("expired".into()),
        request_errors: vec![kpl_sim::RequestFault {
            code: "ExpiredTokenException".into(),
            status: 400,
            probability: 1.0,
        }],
        ..Default::default()
    });
    // No credentials configured: a loopback endpoint signs with static placeholders, which no
    // retry can refresh.
    let mut put = PutChild::spawn("expired", sim.endpoint(), "expired", &[]);
    let writer = paced_writer(put.stdin.take().unwrap());
    let code = put.exit_within(Duration::from_secs(30)).await;
    writer.join().unwrap();
    assert_eq!(code, 2, "{}", put.stderr());
    assert!(
        put.stderr().contains("ExpiredTokenException"),
        "{}",
        put.stderr()
    );
    let read = every_line_read_is_accounted_for(&put, sim.endpoint(), "expired").await;
    assert!(read > 0);
    assert_eq!(put.summary()["user_records_put"], 0);
}

/// Peak resident memory of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_any_record_is_skipped_reported_and_never_held() {
    let sim = sim_with_stream("long", 1).await;
    let mut put = PutChild::spawn("long", sim.endpoint(), "long", &[]);
    let mut stdin = put.stdin.take().unwrap();
    const LONG: usize = 64 << 20;
    let writer = std::thread::spawn(move || {
        let before: String = (0..100).map(|n| format!("p-{n}\n")).collect();
        stdin.write_all(before.as_bytes()).unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..LONG >> 20 {
            stdin.write_all(&block).unwrap();
        }
        let after: String = (101..201).map(|n| format!("\np-{n}")).collect();
        stdin.write_all(after.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin
    });
    put.wait_until("the long line was reported", || {
        put.stderr().contains(&format!("line 101 is {LONG} bytes"))
    })
    .await;
    let stdin = writer.join().unwrap();
    // Whatever else it holds, kpl put never held the line: its peak stays under the line's size.
    let peak = peak_rss(put.child.id());
    assert!(
        peak < (LONG as u64) * 3 / 4,
        "peak RSS {peak} bytes with a {LONG}-byte line"
    );
    drop(stdin);
    let code = put.exit_within(Duration::from_secs(30)).await;
    assert_eq!(code, 1, "{}", put.stderr());
    let s = put.summary();
    assert_eq!(s["lines_read"], 201, "{s:#}");
    assert_eq!(s["user_records_put"], 200, "{s:#}");
    assert_eq!(s["failed_by_reason"]["LineTooLong"], 1, "{s:#}");
    assert_eq!(
        s["long_lines_skipped"],
        serde_json::json!([{ "line": 101, "bytes": LONG }]),
        "{s:#}"
    );
    assert!(put.failed_lines().is_empty(), "the line cannot be copied");
    let stored: std::collections::HashSet<String> = stored_lines(sim.endpoint(), "long")
        .await
        .into_iter()
        .collect();
    for n in (0..100).chain(101..201) {
        assert!(stored.contains(&format!("p-{n}")), "p-{n}");
    }
}

/// One plain HTTP GET on loopback; the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The value of the series `name{labels}` in Prometheus text.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_serves_prometheus_metrics_while_it_runs() {
    let sim = sim_with_stream("m", 2).await;
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut put = PutChild::spawn(
        "metrics",
        sim.endpoint(),
        "m",
        &["--quiet", "--metrics-listen", &addr],
    );
    // Paced input: 100 lines now, stdin stays open, so the scrape happens mid-run.
    let mut stdin = put.stdin.take().unwrap();
    for n in 0..100 {
        writeln!(stdin, "p-{n}").unwrap();
    }
    stdin.flush().unwrap();
    let mut text = String::new();
    put.wait_until("a scrape showing the 100 records stored", || {
        text = http_get(&addr, "/metrics").unwrap_or_default();
        series(&text, r#"kpl_user_records_put{stream="m"}"#) == Some(100.0)
    })
    .await;
    assert_eq!(
        series(&text, r#"kpl_user_records_received{stream="m"}"#),
        Some(100.0),
        "{text}"
    );
    assert_eq!(
        series(&text, r#"kpl_user_records_pending{stream="m"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(series(&text, r#"kpl_kinesis_records_put{stream="m"}"#).unwrap() >= 1.0);
    assert!(series(&text, r#"kpl_put_records_calls{stream="m"}"#).unwrap() >= 1.0);
    assert_eq!(
        series(&text, r#"kpl_throttled_entries{stream="m"}"#),
        Some(0.0),
        "{text}"
    );
    // Per-shard series: the Kinesis records of the shards (those not labelled yet count under
    // "other") add up to the stream's.
    let shard_records: f64 = ["shardId-000000000000", "shardId-000000000001", "other"]
        .iter()
        .filter_map(|s| {
            series(
                &text,
                &format!(r#"kpl_shard_kinesis_records_put{{stream="m",shard="{s}"}}"#),
            )
        })
        .sum();
    assert_eq!(
        Some(shard_records),
        series(&text, r#"kpl_kinesis_records_put{stream="m"}"#),
        "{text}"
    );
    assert!(text.contains("kpl_request_time_ms"), "{text}");
    drop(stdin);
    assert_eq!(put.exit_within(Duration::from_secs(30)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_cat_by_arn_round_trip_through_kinesis_local() {
    let server = common::kinesis_local();
    let api = common::sdk(&server.endpoint).await;
    api.create_stream("by-arn", 2).await.unwrap();
    // kinesis-local's default account and the SDK's region.
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/by-arn";
    let input = json_lines(300);
    let ep = server.endpoint.as_str();
    let out = kpl(
        &["put", "--stream", arn, "--endpoint-url", ep, "--quiet"],
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kpl(
        &[
            "cat",
            "--stream",
            arn,
            "--endpoint-url",
            ep,
            "--max-records",
            "300",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(multiset(&out.stdout), multiset(&input));
}

#[path = "../../../tests/common/bomb.rs"]
mod bomb;

/// Peak resident memory of `kpl ARGS < stdin` in KiB, measured by `/usr/bin/time -f %M` (the
/// kernel's own count for the child, read after it exited), with its stdout counted in lines.
fn peak_rss_kib(args: &[&str], stdin: &[u8]) -> (u64, usize, Output) {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "this test measures memory with /usr/bin/time"
    );
    let mut child = Command::new(time)
        .arg("-f")
        .arg("peak_rss_kib=%M")
        .arg(kpl_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let mut stdout = child.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        use std::io::Read;
        let (mut lines, mut buf) = (0usize, vec![0u8; 1 << 20]);
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(n) => lines += bytecount_newlines(&buf[..n]),
            }
        }
    });
    let lines = counter.join().unwrap();
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let err = stderr(&out);
    let kib = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    (kib, lines, out)
}

fn bytecount_newlines(buf: &[u8]) -> usize {
    buf.chunks(8)
        .map(|c| c.iter().filter(|b| **b == b'\n').count())
        .sum()
}

/// Issue 16, item 12: a 1.6 KB record that expands to 2.8 M user records sharing one
/// 256-character key is decoded in bounded memory (it took 1.3 GB).
#[test]
fn kpl_decode_streams_a_hostile_aggregate_in_bounded_memory() {
    let record = bomb::bomb();
    assert!(
        record.len() < 4096,
        "a small record: {} bytes",
        record.len()
    );
    let (kib, lines, out) = peak_rss_kib(&["decode"], &record);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines, bomb::bomb_records(), "every user record printed");
    assert!(
        kib <= 128 * 1024,
        "kpl decode peaked at {} MiB for a {}-byte record",
        kib / 1024,
        record.len()
    );
}

/// Issue 16, item 13: `kpl cat --max-records 0` prints nothing (as `head -n 0` does; it
/// printed one record), and `--max-records N` prints exactly N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_cat_max_records_zero_prints_nothing() {
    use kpl_sim::{Sim, SimConfig};
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.create_stream("m", 1).await.unwrap();
    let endpoint = sim.endpoint().to_owned();
    let run = |args: Vec<String>, stdin: &'static [u8]| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kpl(&args, stdin)
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["--stream", "m", "--endpoint-url", &endpoint];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect()
    };
    let put = run([vec!["put".to_owned()], args(&[])].concat(), b"a\nb\nc\n")
        .await
        .unwrap();
    assert!(put.status.success(), "{}", stderr(&put));
    for (max, expected) in [("0", ""), ("2", "a\nb\n"), ("3", "a\nb\nc\n")] {
        let cat = run(
            [vec!["cat".to_owned()], args(&["--max-records", max])].concat(),
            b"",
        )
        .await
        .unwrap();
        assert!(cat.status.success(), "{}", stderr(&cat));
        assert_eq!(
            String::from_utf8_lossy(&cat.stdout),
            expected,
            "--max-records {max}"
        );
    }
}
