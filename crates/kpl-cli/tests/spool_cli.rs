//! `kpl put --spool` as a user runs it, and as a crash meets it: the built binary is SIGKILLed
//! at random moments and started again until it finishes, then the stream is read back.
//! Against a `kpl sim` process with shard limits (one shard, no aggregation: a put of a few
//! thousand lines takes seconds, so the kills land while lines are read, spooled and sent).
//!
//! The seed of the kill moments is `KPL_KILL_SEED` (default 19); a failure prints it.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kpl::dedup::Deduper;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn kpl_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kpl"))
}

fn seed() -> u64 {
    std::env::var("KPL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(19)
}

/// A `kpl sim --port 0` process, killed when dropped.
struct Sim {
    child: Child,
    endpoint: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kpl_sim(stream: &str) -> Sim {
    let mut child = Command::new(kpl_binary())
        .args(["sim", "--port", "0", "--stream", &format!("{stream}:1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line.split(' ').nth(4).expect("an endpoint line").to_owned();
    Sim { child, endpoint }
}

/// A scratch directory under the target dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("spool-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lines(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}-{i}\n")).collect()
}

/// A child process, SIGKILLed when dropped (a failing test leaves no `kpl put --follow` behind).
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kpl put` on `sim`'s stream with `args`, stdin from `stdin` (or none), stderr collected.
fn put(sim: &Sim, stream: &str, args: &[&str], stdin: Option<Vec<u8>>) -> Proc {
    let mut child = Command::new(kpl_binary())
        .args(["put", "--stream", stream, "--endpoint-url", &sim.endpoint])
        .args(["--no-aggregation", "--dedup-ids", "--quiet"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    Proc(child)
}

/// Waits for `child` at most `bound`: its exit code, or `None` if it was still running (then
/// it is SIGKILLed, as the test meant to).
fn wait_or_kill(child: &mut Child, bound: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
    }
    text
}

/// What the stream holds: every line with how often, and the lines a Deduper keeps.
struct ReadBack {
    counts: HashMap<String, usize>,
    deduped: HashMap<String, usize>,
    total: usize,
}

async fn read_back(sim: &Sim, stream: &str) -> ReadBack {
    let records = common::read_all(&common::sdk(&sim.endpoint).await, stream).await;
    let mut deduper = Deduper::new(1 << 20);
    let mut counts = HashMap::new();
    let mut deduped = HashMap::new();
    for r in &records {
        let line = String::from_utf8(r.record.data.to_vec()).unwrap();
        *counts.entry(line.clone()).or_default() += 1;
        if deduper.keep(&r.record) {
            *deduped.entry(line).or_default() += 1;
        }
    }
    ReadBack {
        counts,
        deduped,
        total: records.len(),
    }
}

/// Every line of `input` is in the stream; with the Deduper, exactly once.
fn assert_every_line_once_after_dedup(input: &str, got: &ReadBack, context: &str) {
    let expected: HashMap<String, usize> = input.lines().map(|l| (l.to_owned(), 1)).collect();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|l| !got.counts.contains_key(*l))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines lost ({context}), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<&String> = got
        .counts
        .keys()
        .filter(|l| !expected.contains_key(*l))
        .collect();
    assert!(
        extra.is_empty(),
        "lines never written: {extra:?} ({context})"
    );
    let not_once: Vec<(&String, &usize)> = got.deduped.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        not_once.is_empty() && got.deduped.len() == expected.len(),
        "a Deduper leaves exactly the input's lines ({context}): {} lines kept more than once, e.g. {:?}; {} kept of {}",
        not_once.len(),
        &not_once[..not_once.len().min(5)],
        got.deduped.len(),
        expected.len()
    );
}

/// The kill loop: start the command, SIGKILL it after a random moment, `kills` times (or
/// until it finishes by itself), then let it finish. `input` gives each run's stdin.
/// Returns (runs killed mid-run, the last run's stderr).
fn kill_loop(
    kills: usize,
    rng: &mut SmallRng,
    bound: Duration,
    mut start: impl FnMut() -> Proc,
) -> (usize, String) {
    let started = Instant::now();
    let mut killed = 0;
    for _ in 0..kills {
        let mut child = start();
        let delay = Duration::from_millis(rng.random_range(20..900));
        match wait_or_kill(&mut child, delay) {
            None => killed += 1,
            Some(0) => return (killed, stderr_of(&mut child)),
            Some(code) => panic!("exit {code}: {}", stderr_of(&mut child)),
        }
        assert!(
            started.elapsed() < bound,
            "the kill loop ran past {bound:?}"
        );
    }
    let mut child = start();
    let code = wait_or_kill(&mut child, Duration::from_secs(40));
    let text = stderr_of(&mut child);
    assert_eq!(code, Some(0), "the last run finishes: {text}");
    (killed, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_sigkilled_at_random_moments_ends_with_every_line_in_the_stream() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let sim = kpl_sim("kf");
    let dir = Scratch::new("file");
    let input = lines("f", 3000);
    std::fs::write(dir.path("in.log"), &input).unwrap();
    let (file, spool) = (dir.path("in.log"), dir.path("spool"));
    let args = [
        "--file",
        file.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
        // A small spool: reading waits for Kinesis, so kills land while lines are read too.
        "--spool-max-bytes",
        "65536",
    ];
    let (killed, _) = kill_loop(12, &mut rng, Duration::from_secs(60), || {
        put(&sim, "kf", &args, None)
    });
    let got = read_back(&sim, "kf").await;
    eprintln!(
        "seed {seed}: {killed} kills, {} records read back for {} lines ({} duplicates)",
        got.total,
        3000,
        got.total - 3000.min(got.total)
    );
    assert!(
        killed >= 3,
        "seed {seed}: only {killed} runs were killed mid-run"
    );
    assert_every_line_once_after_dedup(&input, &got, &format!("seed {seed}"));
    // Done means done: a run after the end sends nothing more.
    let mut again = put(&sim, "kf", &args, None);
    assert_eq!(wait_or_kill(&mut again, Duration::from_secs(30)), Some(0));
    assert_eq!(read_back(&sim, "kf").await.total, got.total);
}

/// The `stdin` position the spool holds: bytes of stdin taken over every run.
fn stdin_position(spool: &Path) -> u64 {
    let opened = kpl::spool::Spool::open(spool, kpl::spool::SpoolConfig::default()).unwrap();
    let position = opened
        .checkpoint_value("stdin")
        .map(|v| u64::from_le_bytes(v[8..16].try_into().unwrap()))
        .unwrap_or(0);
    drop(opened);
    position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_put_sigkilled_at_random_moments_keeps_every_line_the_spool_took() {
    let seed = seed().wrapping_add(1);
    let mut rng = SmallRng::seed_from_u64(seed);
    let sim = kpl_sim("ks");
    let dir = Scratch::new("stdin");
    let input = lines("s", 3000);
    let spool = dir.path("spool");
    let args = [
        "--spool",
        spool.to_str().unwrap(),
        "--spool-max-bytes",
        "65536",
    ];
    let mut resumed_at = Vec::new();
    let (killed, _) = kill_loop(12, &mut rng, Duration::from_secs(60), || {
        // Each run reads the input from where the spool says the runs before it stopped.
        let from = if spool.exists() {
            stdin_position(&spool)
        } else {
            0
        };
        resumed_at.push(from);
        put(
            &sim,
            "ks",
            &args,
            Some(input.as_bytes()[from as usize..].to_vec()),
        )
    });
    assert!(
        killed >= 3,
        "seed {seed}: only {killed} runs were killed mid-run"
    );
    assert!(
        resumed_at
            .iter()
            .any(|&at| at > 0 && at < input.len() as u64),
        "some run resumed mid-input: {resumed_at:?}"
    );
    assert!(
        resumed_at
            .iter()
            .all(|&at| at == 0 || input.as_bytes()[at as usize - 1] == b'\n'),
        "positions are line starts: {resumed_at:?}"
    );
    let got = read_back(&sim, "ks").await;
    eprintln!(
        "seed {seed}: {killed} kills, resumed at {resumed_at:?}, {} records for 3000 lines",
        got.total
    );
    assert_every_line_once_after_dedup(&input, &got, &format!("seed {seed}"));
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_garbled_spool_tail_is_skipped_with_a_warning_and_the_rest_delivered() {
    for (case, damage) in [("torn", 0usize), ("garbled", 1)] {
        let sim = kpl_sim("kc");
        let dir = Scratch::new(case);
        let input = lines("c", 2000);
        std::fs::write(dir.path("in.log"), &input).unwrap();
        let (file, spool) = (dir.path("in.log"), dir.path("spool"));
        let args = [
            "--file",
            file.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ];
        // Killed once the spool holds records (most of the file: it is read in milliseconds,
        // sent in two seconds).
        let mut first = put(&sim, "kc", &args, None);
        let spooled = || {
            spool.exists()
                && segments(&spool)
                    .last()
                    .is_some_and(|f| std::fs::metadata(f).map_or(0, |m| m.len()) > 8192)
        };
        for _ in 0..400 {
            if spooled() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(wait_or_kill(&mut first, Duration::ZERO), None);
        let last = segments(&spool).pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        assert!(bytes.len() > 4096, "{case}: the last segment holds records");
        if damage == 0 {
            bytes.truncate(bytes.len() - 5);
        } else {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
        }
        std::fs::write(&last, &bytes).unwrap();
        let mut second = put(&sim, "kc", &args, None);
        let code = wait_or_kill(&mut second, Duration::from_secs(40));
        let text = stderr_of(&mut second);
        assert_eq!(code, Some(0), "{case}: {text}");
        assert!(text.contains("warning"), "{case}: warned: {text}");
        assert!(!text.contains("panicked"), "{case}: {text}");
        let got = read_back(&sim, "kc").await;
        // Lines whose records were in the skipped part are read from the file again: the
        // file's position in the spool never runs ahead of what the spool kept.
        for line in input.lines() {
            assert!(got.counts.contains_key(line), "{case}: {line} lost");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_blocks_reading_or_refuses_lines_to_failed_and_loses_none() {
    let sim = kpl_sim("kb");
    let dir = Scratch::new("full");
    let input = lines("b", 2000);
    std::fs::write(dir.path("in.log"), &input).unwrap();
    let file = dir.path("in.log");
    // Block (the default): reading waits for room; every line arrives.
    let spool = dir.path("block");
    let summary = dir.path("block.json");
    let mut child = put(
        &sim,
        "kb",
        &[
            "--file",
            file.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
            "--spool-max-bytes",
            "16384",
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        None,
    );
    let code = wait_or_kill(&mut child, Duration::from_secs(40));
    assert_eq!(code, Some(0), "{}", stderr_of(&mut child));
    let got = read_back(&sim, "kb").await;
    assert_every_line_once_after_dedup(&input, &got, "block");

    // Refuse: lines the full spool does not take fail at once, to --failed; none is lost.
    let sim = kpl_sim("kr");
    let spool = dir.path("refuse");
    let failed = dir.path("failed.txt");
    let summary = dir.path("refuse.json");
    let mut child = put(
        &sim,
        "kr",
        &[
            "--file",
            file.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
            "--spool-max-bytes",
            "16384",
            "--spool-when-full",
            "refuse",
            "--failed",
            failed.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        None,
    );
    let code = wait_or_kill(&mut child, Duration::from_secs(40));
    assert_eq!(
        code,
        Some(1),
        "some lines failed: {}",
        stderr_of(&mut child)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let refused = s["failed_by_reason"]["SpoolFull"].as_u64().unwrap_or(0);
    assert!(refused > 0, "{s:#}");
    assert_eq!(s["failed_records"], refused, "{s:#}");
    let failed_text = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(failed_text.lines().count() as u64, refused);
    let got = read_back(&sim, "kr").await;
    for line in input.lines() {
        let stored = got.counts.contains_key(line);
        let in_failed = failed_text.lines().any(|l| l == line);
        assert!(
            stored != in_failed,
            "{line}: stored {stored}, in --failed {in_failed}"
        );
    }
}

/// Appends `text` to `path` (creating it).
fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

async fn wait_for_lines(sim: &Sim, stream: &str, n: usize) {
    for _ in 0..600 {
        if read_back(sim, stream).await.counts.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} lines never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_file_through_rename_and_copy_truncate_rotations_loses_no_line_read() {
    let sim = kpl_sim("kr2");
    let dir = Scratch::new("follow");
    let (file, spool) = (dir.path("app.log"), dir.path("spool"));
    append(&file, &lines("a", 200));
    let mut child = put(
        &sim,
        "kr2",
        &[
            "--file",
            file.to_str().unwrap(),
            "--follow",
            "--spool",
            spool.to_str().unwrap(),
        ],
        None,
    );
    // stderr as it comes: the truncate is noticed there.
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let stderr = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
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
    wait_for_lines(&sim, "kr2", 200).await;
    // Rename rotation, with lines written to the old file after the rename: read before the
    // new file's.
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::fs::rename(&file, dir.path("app.log.1")).unwrap();
    old.write_all(lines("late", 50).as_bytes()).unwrap();
    drop(old);
    append(&file, &lines("b", 200));
    wait_for_lines(&sim, "kr2", 450).await;
    // Copy-and-truncate, once kpl has read everything (the documented loss window is the
    // lines written between its last read and the truncate: none here).
    std::fs::copy(&file, dir.path("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    // Lines written before kpl sees the truncate would be read from its old offset (as with
    // `tail -F`): write once it has.
    for _ in 0..600 {
        if stderr.lock().unwrap().contains("truncated") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stderr.lock().unwrap().contains("truncated"),
        "the truncate was noticed"
    );
    append(&file, &lines("c", 200));
    wait_for_lines(&sim, "kr2", 650).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let code = wait_or_kill(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", stderr.lock().unwrap());
    let got = read_back(&sim, "kr2").await;
    let all = format!(
        "{}{}{}{}",
        lines("a", 200),
        lines("late", 50),
        lines("b", 200),
        lines("c", 200)
    );
    assert_every_line_once_after_dedup(&all, &got, "follow");
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// An in-process `kpl_sim::Sim` (for faults and stats) with one stream.
async fn sim_in_process(stream: &str) -> (kpl_sim::SimHandle, Sim) {
    let sim = kpl_sim::Sim::start(kpl_sim::SimConfig::default())
        .await
        .unwrap();
    sim.create_stream(stream, 1).await.unwrap();
    // `Sim` only names the endpoint here; its child is a placeholder that exits at once.
    let child = Command::new("true").spawn().unwrap();
    let endpoint = sim.endpoint().to_owned();
    (sim, Sim { child, endpoint })
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the summary was written")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_with_a_spool_exits_at_once_and_the_next_run_sends_what_it_left() {
    let (handle, sim) = sim_in_process("k2").await;
    handle.set_faults(kpl_sim::Faults {
        stream: Some("k2".into()),
        hang_probability: 1.0,
        hang_ms: 60_000,
        ..Default::default()
    });
    let dir = Scratch::new("sigint");
    let (spool, failed, json) = (dir.path("spool"), dir.path("failed"), dir.path("s.json"));
    let args = [
        "--spool",
        spool.to_str().unwrap(),
        "--failed",
        failed.to_str().unwrap(),
        "--summary-json",
        json.to_str().unwrap(),
        "--request-timeout",
        "50s",
    ];
    let input = lines("i", 50);
    let mut child = put(&sim, "k2", &args, Some(input.clone().into_bytes()));
    for _ in 0..400 {
        if handle.stats().hangs >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handle.stats().hangs >= 1, "a PutRecords call hangs");
    signal(&child, "INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "INT");
    // The calls hang for a minute: only the forced exit ends the run soon.
    let code = wait_or_kill(&mut child, Duration::from_secs(20));
    let text = stderr_of(&mut child);
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("stay in the spool"), "{text}");
    let s = summary(&json);
    assert_eq!(s["spool"]["left_in_spool"], 50, "{s:#}");
    assert_eq!(s["failed_records"], 0, "{s:#}");
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        "",
        "nothing in --failed"
    );
    assert!(!spool.join("dead-letters.jsonl").exists());

    handle.set_faults(kpl_sim::Faults::default());
    let mut again = put(&sim, "k2", &args, Some(Vec::new()));
    let code = wait_or_kill(&mut again, Duration::from_secs(40));
    assert_eq!(code, Some(0), "{}", stderr_of(&mut again));
    let s = summary(&json);
    assert_eq!(s["spool"]["recovered_records"], 50, "{s:#}");
    assert_eq!(s["user_records_put"], 50, "{s:#}");
    assert_eq!(s["spool"]["left_in_spool"], 0, "{s:#}");
    assert_every_line_once_after_dedup(&input, &read_back(&sim, "k2").await, "resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_failing_for_good_go_to_the_dead_letter_file_and_failed_with_their_reason() {
    let (handle, sim) = sim_in_process("kd").await;
    // With a spool, retryable errors wait for Kinesis (no attempt limit): a failure for good
    // is one no retry fixes.
    handle.set_faults(kpl_sim::Faults {
        stream: Some("kd".into()),
        request_errors: vec![kpl_sim::RequestFault {
            code: "AccessDeniedException".into(),
            status: 400,
            probability: 1.0,
        }],
        ..Default::default()
    });
    let dir = Scratch::new("dead");
    let (spool, failed, json) = (dir.path("spool"), dir.path("failed"), dir.path("s.json"));
    let input = lines("d", 10);
    let args = [
        "--spool",
        spool.to_str().unwrap(),
        "--failed",
        failed.to_str().unwrap(),
        "--summary-json",
        json.to_str().unwrap(),
    ];
    let mut child = put(&sim, "kd", &args, Some(input.clone().into_bytes()));
    let code = wait_or_kill(&mut child, Duration::from_secs(40));
    let text = stderr_of(&mut child);
    assert_eq!(code, Some(2), "a fatal error: {text}");
    assert!(text.contains("AccessDeniedException"), "{text}");
    let s = summary(&json);
    let failed_n = s["failed_records"].as_u64().unwrap();
    let left = s["spool"]["left_in_spool"].as_u64().unwrap();
    assert_eq!(failed_n + left, 10, "{s:#}");
    assert_eq!(s["spool"]["dead_letters"], failed_n, "{s:#}");
    let in_failed: Vec<String> = std::fs::read_to_string(&failed)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(in_failed.len() as u64, failed_n);
    let dead = std::fs::read_to_string(spool.join("dead-letters.jsonl")).unwrap_or_default();
    assert_eq!(dead.lines().count() as u64, failed_n);
    for line in dead.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["reason"].as_str().unwrap().contains("AccessDenied"),
            "{line}"
        );
    }
    // Resolved is resolved: once the error is fixed, a restart sends what was left in the
    // spool and none of the dead letters.
    handle.set_faults(kpl_sim::Faults::default());
    let mut again = put(&sim, "kd", &args, Some(Vec::new()));
    assert_eq!(wait_or_kill(&mut again, Duration::from_secs(30)), Some(0));
    assert_eq!(summary(&json)["spool"]["recovered_records"], left);
    let got = read_back(&sim, "kd").await;
    for line in input.lines() {
        let stored = got.counts.contains_key(line);
        let dead_lettered = in_failed.iter().any(|l| l == line);
        assert!(
            stored != dead_lettered,
            "{line}: stored {stored}, dead letter {dead_lettered}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(spool.join("dead-letters.jsonl")).unwrap_or_default(),
        dead
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_without_a_spool_keep_stdin_s_promises_long_lines_and_signals() {
    let (_handle, sim) = sim_in_process("kn").await;
    let dir = Scratch::new("plain");
    let (a, b, json) = (dir.path("a.log"), dir.path("b.log"), dir.path("s.json"));
    std::fs::write(&a, lines("a", 100)).unwrap();
    // A line longer than the largest record (10 MiB) between two short ones.
    let mut text = lines("b", 50);
    text.push_str(&"x".repeat(10 * 1024 * 1024 + 1));
    text.push('\n');
    text.push_str(&lines("bb", 50));
    std::fs::write(&b, text).unwrap();
    let mut child = put(
        &sim,
        "kn",
        &[
            "--file",
            a.to_str().unwrap(),
            "--file",
            b.to_str().unwrap(),
            "--summary-json",
            json.to_str().unwrap(),
        ],
        None,
    );
    let code = wait_or_kill(&mut child, Duration::from_secs(40));
    let err = stderr_of(&mut child);
    assert_eq!(code, Some(1), "a long line failed: {err}");
    assert!(
        err.contains("b.log") && err.contains("10485761 bytes"),
        "{err}"
    );
    let s = summary(&json);
    assert_eq!(s["lines_read"], 201, "{s:#}");
    assert_eq!(s["failed_by_reason"]["LineTooLong"], 1, "{s:#}");
    let all = format!("{}{}{}", lines("a", 100), lines("b", 50), lines("bb", 50));
    assert_every_line_once_after_dedup(&all, &read_back(&sim, "kn").await, "two files");

    // --follow: runs until a signal; SIGTERM sends what was read and exits 0.
    let (_handle, sim) = sim_in_process("kt").await;
    let mut child = put(
        &sim,
        "kt",
        &["--file", a.to_str().unwrap(), "--follow"],
        None,
    );
    wait_for_lines(&sim, "kt", 100).await;
    append(&a, &lines("more", 20));
    wait_for_lines(&sim, "kt", 120).await;
    signal(&child, "TERM");
    let code = wait_or_kill(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", stderr_of(&mut child));
    let all = format!("{}{}", lines("a", 100), lines("more", 20));
    assert_every_line_once_after_dedup(&all, &read_back(&sim, "kt").await, "follow");
}

/// With a spool too, the end of input sends the last records at once instead of leaving them
/// ten minutes in the producer (`SpooledProducer::shutdown` flushes). The bound guards against
/// the ten-minute wait; it measures nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_the_end_of_input_sends_the_last_records_at_once() {
    let sim = kpl_sim("eof");
    let scratch = Scratch::new("eof");
    let spool = scratch.path("spool");
    let input = lines("eof", 3);
    let mut put = put(
        &sim,
        "eof",
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--max-buffered-time",
            "10m",
            "--record-ttl",
            "20m",
        ],
        Some(input.clone().into_bytes()),
    );
    let code = wait_or_kill(&mut put, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", stderr_of(&mut put));
    let got = read_back(&sim, "eof").await;
    assert_every_line_once_after_dedup(&input, &got, "end of input with a spool");
}

/// `kpl bench --spool` runs its load through the spool: every record offered is stored, none
/// fails, the report names the spool and its policy (in `--spool-sync`'s own syntax), and the
/// spool is empty afterwards (everything acknowledged).
#[test]
fn bench_through_a_spool_stores_every_record_and_leaves_the_spool_empty() {
    let scratch = Scratch::new("bench");
    let spool = scratch.path("spool");
    let report = scratch.path("report.json");
    let out = Command::new(kpl_binary())
        .args([
            "bench",
            "--shards",
            "2",
            "--duration",
            "1s",
            "--rate",
            "500",
        ])
        .args(["--spool", spool.to_str().unwrap(), "--spool-sync", "every"])
        .args(["--report", report.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let offered = report["load"]["user_records_offered"].as_u64().unwrap();
    assert!(offered > 0, "{report}");
    assert_eq!(
        report["user_records_put"].as_u64(),
        Some(offered),
        "{report}"
    );
    assert_eq!(report["user_records_failed"].as_u64(), Some(0), "{report}");
    assert_eq!(report["load"]["spool_sync"], "every-record", "{report}");
    assert!(
        spool.join("LOCK").exists(),
        "bench made no spool in {spool:?}"
    );
    let reopened = kpl::spool::Spool::open(&spool, kpl::spool::SpoolConfig::default()).unwrap();
    assert_eq!(reopened.stats().entries, 0, "the spool still holds records");
}
