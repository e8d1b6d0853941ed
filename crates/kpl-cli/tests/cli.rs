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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_round_trip_through_kpl_sim_with_shard_limits() {
    let port = common::free_port().to_string();
    let mut sim: Child = Command::new(kpl_binary())
        .args(["sim", "--port", &port, "--stream", "s:2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The endpoint is printed once the stream exists.
    let mut first = String::new();
    {
        use std::io::BufRead;
        let stdout = sim.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
    }
    let endpoint = first.trim().to_owned();
    assert_eq!(endpoint, format!("http://127.0.0.1:{port}"));
    let input = json_lines(100_000);
    round_trip(&endpoint, "s", &input, &["--partition-key", "json:user"]);
    let _ = sim.kill();
    let _ = sim.wait();
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
        seed: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.create_stream("d", 2).await.unwrap();
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
