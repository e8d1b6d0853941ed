//! `kpl put --stream NAME`: every stdin line becomes one user record.
//!
//! Lines are bytes: invalid UTF-8 is data. The trailing `\n` (and a `\r` before it) is removed;
//! empty lines are skipped and counted (Kinesis gains nothing from an empty record and log
//! pipelines are full of them). Lines go to the producer in batches (`send_batch`: up to 500
//! lines, or what stdin had buffered). Memory stays bounded however long the input: a batch
//! waits for buffer room, so reading slows down to what the stream accepts.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use kpl::producer::{BatchFuture, FailureReason, Producer, SendErrorReason};
use kpl::{HashKey, UserRecord};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::common::{ConnectArgs, ProducerArgs, exit_for_producer_error};

/// Arguments of `kpl put`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// How each line's partition key is chosen: `random` (spreads evenly), `fixed:VALUE`,
    /// `json:FIELD` (a top-level field of an NDJSON line), or `line` (a hash of the line, so
    /// equal lines share a shard).
    #[arg(long, default_value = "random", value_parser = KeyStrategy::parse)]
    partition_key: KeyStrategy,
    /// Route every record by this explicit hash key (decimal, 0 to 2^128-1).
    #[arg(long, value_parser = parse_hash_key)]
    explicit_hash_key: Option<HashKey>,
    /// Write every line that was not stored to this file (one per line, as read).
    #[arg(long)]
    failed: Option<PathBuf>,
    /// Write the end-of-run summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// No progress line and no summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    producer: ProducerArgs,
}

/// How a line's partition key is chosen.
#[derive(Clone, Debug)]
pub enum KeyStrategy {
    Random,
    Fixed(String),
    Json(String),
    Line,
}

impl KeyStrategy {
    fn parse(s: &str) -> Result<KeyStrategy, String> {
        match s.split_once(':') {
            None if s == "random" => Ok(KeyStrategy::Random),
            None if s == "line" => Ok(KeyStrategy::Line),
            Some(("fixed", v)) => {
                kpl::record::validate_partition_key(v).map_err(|e| e.to_string())?;
                Ok(KeyStrategy::Fixed(v.to_owned()))
            }
            Some(("json", f)) if !f.is_empty() => Ok(KeyStrategy::Json(f.to_owned())),
            _ => Err(format!(
                "{s:?} is not a partition key strategy: use random, fixed:VALUE, json:FIELD or line"
            )),
        }
    }

    /// The key for `line`, or why the line has none.
    fn key_for(&self, line: &[u8], rng: &mut rand::rngs::SmallRng) -> Result<String, String> {
        use rand::Rng;
        match self {
            KeyStrategy::Random => Ok(format!("{:016x}", rng.random::<u64>())),
            KeyStrategy::Fixed(v) => Ok(v.clone()),
            KeyStrategy::Line => {
                let hash = HashKey::of_partition_key(&String::from_utf8_lossy(line));
                Ok(format!("{:032x}", hash.0))
            }
            KeyStrategy::Json(field) => {
                let value: serde_json::Value =
                    serde_json::from_slice(line).map_err(|e| format!("not a JSON line ({e})"))?;
                let key = match value.get(field) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => {
                        return Err(format!("no field {field:?}"));
                    }
                    Some(other) => other.to_string(),
                };
                kpl::record::validate_partition_key(&key).map_err(|e| e.to_string())?;
                Ok(key)
            }
        }
    }
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    HashKey::parse_explicit(s).map_err(|e| e.to_string())
}

/// What the run did, for the summary.
#[derive(Default, Debug)]
struct Tally {
    lines_read: u64,
    empty_lines_skipped: u64,
    stored: u64,
    stored_bytes: u64,
    failed: BTreeMap<String, u64>,
    fatal: Option<String>,
}

impl Tally {
    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

enum Outcome {
    /// A batch of lines was taken: its future, and each record's billed bytes.
    Sent(BatchFuture, Vec<u64>),
    Refused(Vec<u8>, String),
}

/// Lines handed to the producer at once, at most: one channel message and one future per
/// batch instead of per line. A batch also goes as soon as stdin has nothing more buffered,
/// so a slow trickle of lines is not held back.
const BATCH_RECORDS: usize = 500;
const BATCH_BYTES: u64 = 4 << 20;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.producer.config()?;
    let api = args.connect.api(config.request_timeout).await;
    let producer = match Producer::new(api, &args.stream, config).await {
        Ok(p) => p,
        Err(e) => return Ok(exit_for_producer_error(&e)),
    };
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());

    let mut failed_file = match &args.failed {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => None,
    };

    let (tx, mut rx) = mpsc::channel::<Outcome>(4096);
    let reader = {
        let producer = producer.clone();
        let stop = stop.clone();
        let strategy = args.partition_key.clone();
        let ehk = args.explicit_hash_key;
        tokio::spawn(async move { read_lines(producer, strategy, ehk, stop, tx).await })
    };

    let progress = (!args.quiet && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(crate::progress::show(producer.clone())));

    let mut tally = Tally::default();
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Outcome::Sent(future, sizes) => {
                for (result, bytes) in future.await.into_iter().zip(sizes) {
                    match result {
                        Ok(_) => {
                            tally.stored += 1;
                            tally.stored_bytes += bytes;
                        }
                        Err(failure) => {
                            let reason = reason_label(&failure.reason);
                            *tally.failed.entry(reason).or_default() += 1;
                            if matches!(failure.reason, FailureReason::Fatal { .. })
                                && tally.fatal.is_none()
                            {
                                tally.fatal = Some(failure.to_string());
                                stop.store(true, Ordering::SeqCst);
                            }
                            if let (Some(file), Some(record)) = (&mut failed_file, failure.record) {
                                write_line(file, &record.data).await?;
                            }
                        }
                    }
                }
            }
            Outcome::Refused(line, reason) => {
                *tally.failed.entry(reason).or_default() += 1;
                if let Some(file) = &mut failed_file {
                    write_line(file, &line).await?;
                }
            }
        }
    }
    let (lines_read, empty) = reader.await.context("the stdin reader stopped")??;
    tally.lines_read = lines_read;
    tally.empty_lines_skipped = empty;
    if let Err(e) = producer.shutdown().await {
        eprintln!("kpl put: {e}");
    }
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }
    if let Some(file) = &mut failed_file {
        file.flush().await?;
    }
    let elapsed = started.elapsed();
    let summary = summary_json(&tally, &producer, elapsed, stop.load(Ordering::SeqCst));
    if !args.quiet {
        print_summary(&tally, &producer, elapsed);
    }
    if let Some(path) = &args.summary_json {
        let mut json = serde_json::to_vec_pretty(&summary)?;
        json.push(b'\n');
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(fatal) = &tally.fatal {
        eprintln!("kpl put: stopped early: {fatal}");
    }
    Ok(if tally.failed_total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads stdin until EOF or `stop`, sending one record per non-empty line, in batches.
async fn read_lines(
    producer: Producer,
    strategy: KeyStrategy,
    ehk: Option<HashKey>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Outcome>,
) -> anyhow::Result<(u64, u64)> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut stdin = BufReader::with_capacity(1 << 20, tokio::io::stdin());
    let mut buf = Vec::with_capacity(4096);
    let (mut lines, mut empty) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(BATCH_RECORDS);
    let mut batch_bytes = 0;
    let mut eof = false;
    while !eof && !stop.load(Ordering::Relaxed) {
        buf.clear();
        if stdin.read_until(b'\n', &mut buf).await? == 0 {
            eof = true;
        } else {
            lines += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            if buf.is_empty() {
                empty += 1;
            } else {
                match strategy.key_for(&buf, &mut rng) {
                    Err(reason) => {
                        let refused =
                            Outcome::Refused(buf.clone(), format!("partition key: {reason}"));
                        if tx.send(refused).await.is_err() {
                            break;
                        }
                    }
                    Ok(key) => {
                        let mut record = UserRecord::new(key, buf.clone());
                        if let Some(h) = ehk {
                            record = record.with_explicit_hash_key(h);
                        }
                        batch_bytes += record.billed_bytes() as u64;
                        batch.push(record);
                    }
                }
            }
        }
        let full = batch.len() >= BATCH_RECORDS || batch_bytes >= BATCH_BYTES;
        if full || eof || stdin.buffer().is_empty() {
            let records = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_RECORDS));
            batch_bytes = 0;
            if !send_batch(&producer, records, &tx).await {
                break;
            }
        }
    }
    Ok((lines, empty))
}

/// Hands `records` to the producer, in order. A record it refuses is reported and the rest
/// go again; a batch bigger than the whole buffer (a small `--max-outstanding-*`) goes in
/// halves. False once nothing more can be sent (producer closed, or nobody reads outcomes).
async fn send_batch(
    producer: &Producer,
    records: Vec<UserRecord>,
    tx: &mpsc::Sender<Outcome>,
) -> bool {
    let mut pending = vec![records];
    while let Some(records) = pending.pop() {
        if records.is_empty() {
            continue;
        }
        let sizes = records.iter().map(|r| r.billed_bytes() as u64).collect();
        let outcome = match producer.send_batch(records).await {
            Ok(future) => Outcome::Sent(future, sizes),
            Err(e) if e.reason == SendErrorReason::Closed => return false,
            Err(e) => {
                let mut records = e.records;
                let Some(i) = e.index else {
                    let second = records.split_off(records.len() / 2);
                    pending.push(second);
                    pending.push(records);
                    continue;
                };
                let refused = records.remove(i);
                pending.push(records);
                Outcome::Refused(refused.data.to_vec(), e.reason.to_string())
            }
        };
        if tx.send(outcome).await.is_err() {
            return false;
        }
    }
    true
}

fn watch_signals(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        crate::progress::eprintln_above("kpl put: stopping: flushing what was read");
        stop.store(true, Ordering::SeqCst);
    });
}

async fn write_line(file: &mut tokio::fs::File, data: &[u8]) -> anyhow::Result<()> {
    file.write_all(data).await?;
    file.write_all(b"\n").await?;
    Ok(())
}

fn reason_label(reason: &FailureReason) -> String {
    match reason {
        FailureReason::Fatal { code, .. } => code.clone(),
        FailureReason::Expired { .. } => "Expired".into(),
        FailureReason::AttemptsExhausted { .. } => "AttemptsExhausted".into(),
        FailureReason::Lost => "Lost".into(),
        other => format!("{other}"),
    }
}

fn summary_json(
    tally: &Tally,
    producer: &Producer,
    elapsed: Duration,
    interrupted: bool,
) -> serde_json::Value {
    let m = producer.metrics();
    let secs = elapsed.as_secs_f64().max(1e-9);
    serde_json::json!({
        "stream": producer.stream().to_string(),
        "lines_read": tally.lines_read,
        "empty_lines_skipped": tally.empty_lines_skipped,
        "user_records_put": tally.stored,
        "user_bytes_put": tally.stored_bytes,
        "kinesis_records_put": m.kinesis_records_put,
        "put_records_calls": m.put_records_calls,
        "retries": m.retries,
        "throttled_entries": m.throttled_entries,
        "failed_records": tally.failed_total(),
        "failed_by_reason": tally.failed,
        "elapsed_seconds": secs,
        "user_records_per_second": tally.stored as f64 / secs,
        "user_mib_per_second": tally.stored_bytes as f64 / secs / 1048576.0,
        "interrupted": interrupted,
    })
}

fn print_summary(tally: &Tally, producer: &Producer, elapsed: Duration) {
    let m = producer.metrics();
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "kpl put: {} user records ({:.2} MiB) in {} Kinesis records, {} PutRecords calls, {:.1} s ({:.0} rec/s, {:.2} MiB/s)",
        tally.stored,
        tally.stored_bytes as f64 / 1048576.0,
        m.kinesis_records_put,
        m.put_records_calls,
        secs,
        tally.stored as f64 / secs,
        tally.stored_bytes as f64 / secs / 1048576.0,
    );
    eprintln!(
        "kpl put: {} user record retries, {} Kinesis entries throttled, {} empty lines skipped, {} user records failed",
        m.retries,
        m.throttled_entries,
        tally.empty_lines_skipped,
        tally.failed_total()
    );
    for (reason, n) in &tally.failed {
        eprintln!("kpl put:   {n} failed: {reason}");
    }
}
