//! `kpl put --stream NAME`: every line of stdin (or of the `--file`s, see [`crate::input`])
//! becomes one user record. With `--spool DIR`, [`crate::put_spool`] runs instead.
//!
//! Lines are bytes: invalid UTF-8 is data. The trailing `\n` (and a `\r` before it) is removed;
//! empty lines are skipped and counted (Kinesis gains nothing from an empty record and log
//! pipelines are full of them). Lines go to the producer in batches (`send_batch`: up to 500
//! lines, or what stdin had buffered). Memory stays bounded however long the input: a batch
//! waits for buffer room, so reading slows down to what the stream accepts, and a line longer
//! than the largest record is skipped as it is read.
//!
//! Every line read ends up stored or in `--failed` and the summary, whatever stops the run:
//! the end of input (the last records go at once), a signal (reading stops at once, what was
//! read is sent; a second signal exits at once), a fatal error (what was not sent yet is
//! written to `--failed`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use kpl::limits::LARGEST_MAX_RECORD_BYTES;
use kpl::producer::{BatchFuture, FailureReason, Producer, SendErrorReason};
use kpl::{HashKey, UserRecord};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};

use crate::common::{ConnectArgs, ProducerArgs, SpoolArgs, exit_for_producer_error};
use crate::input::{FileLines, Input, Line, LineReader, coalesce_time, read_stdin};
use crate::source::{Checkpoint, FileSource, FileSourceConfig};

/// Arguments of `kpl put`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Every line read is stored or written to --failed, and counted in the summary, however the run \
ends. At the end of input the last records are sent at once. SIGINT or SIGTERM stops reading \
at once and sends what was read; a second one exits at once and writes every line not yet \
stored to --failed (their calls may have been in flight: they may be in the stream too); with \
--spool it leaves them in the spool instead, for the next run (lines of a --file not yet \
spooled stay in the file). With --spool, --record-ttl and --max-attempts do not apply: records wait in the \
spool until Kinesis takes them or they fail for good (then in DIR/dead-letters.jsonl). A \
line longer than the largest record (10 MiB) is skipped as it is read and reported (line \
number and length, on stderr and in the summary): it cannot be copied to --failed.

Exit status, first match wins: 2 a fatal configuration, stream or credential error (also \
mid-run); 130 (SIGINT) or 143 (SIGTERM) a signal stopped the run and some lines read were not \
stored (records left in the spool count as not stored); 1 some lines failed; 0 every line \
read was stored, signal or not.")]
pub struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    pub(crate) stream: String,
    /// Read lines from this file instead of stdin (repeatable: each file to its end, in
    /// order; with --follow all at once). With --spool, a restart resumes each file where the
    /// last run left it.
    #[arg(long = "file", value_name = "PATH")]
    pub(crate) files: Vec<PathBuf>,
    /// Keep reading the --file(s) as they grow, and follow rotation as `tail -F` does (rename:
    /// the old file is read to its end first; copy-and-truncate: lines written between kpl's
    /// last read and the truncate are lost). Runs until SIGINT or SIGTERM.
    #[arg(long, requires = "files")]
    pub(crate) follow: bool,
    /// How each line's partition key is chosen: `random` (spreads evenly), `fixed:VALUE`,
    /// `json:FIELD` (a top-level field of an NDJSON line), or `line` (a hash of the line, so
    /// equal lines share a shard).
    #[arg(long, default_value = "random", value_parser = KeyStrategy::parse)]
    pub(crate) partition_key: KeyStrategy,
    /// Route every record by this explicit hash key (decimal, 0 to 2^128-1).
    #[arg(long, value_parser = parse_hash_key)]
    pub(crate) explicit_hash_key: Option<HashKey>,
    /// Write every line that was not stored to this file (one per line, as read; a line
    /// longer than the largest record cannot be copied here).
    #[arg(long)]
    pub(crate) failed: Option<PathBuf>,
    /// Write the end-of-run summary as JSON to this file.
    #[arg(long)]
    pub(crate) summary_json: Option<PathBuf>,
    /// No progress line and no summary on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    #[command(flatten)]
    pub(crate) producer: ProducerArgs,
    #[command(flatten)]
    pub(crate) spool: SpoolArgs,
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
    pub(crate) fn key_for(
        &self,
        line: &[u8],
        rng: &mut rand::rngs::SmallRng,
    ) -> Result<String, String> {
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
pub(crate) struct Tally {
    pub lines_read: u64,
    pub empty_lines_skipped: u64,
    pub stored: u64,
    pub stored_bytes: u64,
    pub failed: BTreeMap<String, u64>,
    /// Lines longer than the largest record: (line number, length), the first
    /// `LONG_LINES_LISTED` of them.
    pub long_lines: Vec<(u64, u64)>,
    pub fatal: Option<String>,
    /// With `--spool`.
    pub spool: Option<SpoolTally>,
}

/// What a run on a spool found and left there.
#[derive(Default, Debug)]
pub(crate) struct SpoolTally {
    pub dir: PathBuf,
    /// Records an earlier run left in the spool (sent first; counted in `stored` / `failed`
    /// as they resolve).
    pub recovered: u64,
    /// Torn or corrupt parts of the spool skipped when it was opened.
    pub problems: u64,
    /// Records that failed for good (in the spool's dead-letter file).
    pub dead_letters: u64,
    /// Records not stored at the end (a second signal, a fatal error): the next run sends them.
    pub left_in_spool: u64,
    /// File lines read but not spooled at the end: the next run reads them again.
    pub left_in_files: u64,
}

impl Tally {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Records and lines neither stored nor failed: left in the spool or in their files.
    fn left(&self) -> u64 {
        self.spool
            .as_ref()
            .map_or(0, |s| s.left_in_spool + s.left_in_files)
    }

    pub fn fail(&mut self, reason: impl Into<String>) {
        *self.failed.entry(reason.into()).or_default() += 1;
    }
}

/// Reason of a line longer than the largest record: skipped while read, never held.
const LINE_TOO_LONG: &str = "LineTooLong";
/// Reason of a line read but not handed to the producer because a fatal error stopped the run.
pub(crate) const NOT_SENT: &str = "NotSent";
/// Reason of a line whose record had not resolved when a second signal ended the run.
pub(crate) const INTERRUPTED: &str = "Interrupted";
/// Long lines listed in the summary (all are counted).
const LONG_LINES_LISTED: usize = 1000;

/// What the stdin reader hands the collector, in input order.
enum Outcome {
    /// A batch the producer took.
    Sent(SentBatch),
    /// A line that was not sent, and why.
    Refused(Bytes, String),
    /// A line longer than the largest record, skipped: its number and length.
    TooLong(u64, u64),
}

/// A batch the producer took: its future, each record's billed bytes, and its lines (shared
/// with the records, not copied) for `--failed` if the run ends before the batch resolves.
struct SentBatch {
    future: BatchFuture,
    sizes: Vec<u64>,
    lines: Vec<Bytes>,
}

/// Lines handed to the producer at once, at most: one channel message and one future per
/// batch instead of per line. A batch also goes as soon as stdin has nothing more buffered,
/// so a slow trickle of lines is not held back.
const BATCH_RECORDS: usize = 500;
const BATCH_BYTES: u64 = 4 << 20;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.producer.config()?;
    crate::metrics_export::serve(args.producer.metrics_listen)?;
    let coalesce = coalesce_time(&config);
    // Signals are watched before anything else, so one during startup stops the run
    // instead of killing it.
    let stop = Stop::default();
    watch_signals(stop.clone(), args.spool.dir.is_some());
    if args.spool.dir.is_some() {
        return crate::put_spool::run(args, config, stop).await;
    }
    let api = args.connect.api(config.request_timeout).await;
    let producer = match Producer::new(api, &args.stream, config).await {
        Ok(p) => p,
        Err(e) => return Ok(exit_for_producer_error(&e)),
    };
    let started = Instant::now();

    let mut failed_file = open_failed(&args).await?;

    let (tx, mut rx) = mpsc::channel::<Outcome>(64);
    let reader = {
        let producer = producer.clone();
        let stop = stop.clone();
        let strategy = args.partition_key.clone();
        let ehk = args.explicit_hash_key;
        // Lines longer than any record Kinesis takes are skipped, not held.
        let longest = producer.max_record_bytes().max(LARGEST_MAX_RECORD_BYTES);
        let lines = open_input(&args, longest, coalesce, |_| Checkpoint::default()).await?;
        tokio::spawn(async move { read_lines(producer, strategy, ehk, lines, stop, tx).await })
    };

    let progress = start_progress(&args, &producer);

    let mut tally = Tally::default();
    // Batches the producer took whose records had not resolved when a second signal came.
    let mut unresolved = Vec::new();
    loop {
        let outcome = tokio::select! {
            biased;
            _ = stop.until(StopState::forced) => break,
            outcome = rx.recv() => outcome,
        };
        let Some(outcome) = outcome else { break };
        match outcome {
            Outcome::Sent(mut batch) => {
                let results = tokio::select! {
                    biased;
                    _ = stop.until(StopState::forced) => {
                        unresolved.push(batch);
                        break;
                    }
                    results = &mut batch.future => results,
                };
                for (result, bytes) in results.into_iter().zip(batch.sizes) {
                    match result {
                        Ok(_) => {
                            tally.stored += 1;
                            tally.stored_bytes += bytes;
                        }
                        Err(failure) => {
                            tally.fail(reason_label(&failure.reason));
                            if matches!(failure.reason, FailureReason::Fatal { .. })
                                && tally.fatal.is_none()
                            {
                                tally.fatal = Some(failure.to_string());
                                stop.update(|s| s.fatal = true);
                            }
                            if let (Some(file), Some(record)) = (&mut failed_file, failure.record) {
                                write_line(file, &record.data).await?;
                            }
                        }
                    }
                }
            }
            Outcome::Refused(line, reason) => {
                tally.fail(reason);
                if let Some(file) = &mut failed_file {
                    write_line(file, &line).await?;
                }
            }
            Outcome::TooLong(number, length) => tally_long_line(&mut tally, number, length),
        }
    }
    let forced = stop.get().forced();
    if forced {
        // Nothing more is awaited: what the reader had queued is resolved or handed back now.
        rx.close();
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Sent(batch) => unresolved.push(batch),
                Outcome::Refused(line, reason) => {
                    tally.fail(reason);
                    if let Some(file) = &mut failed_file {
                        write_line(file, &line).await?;
                    }
                }
                Outcome::TooLong(number, length) => tally_long_line(&mut tally, number, length),
            }
        }
    }
    let read = reader.await.context("the stdin reader stopped")??;
    tally.lines_read = read.lines;
    tally.empty_lines_skipped = read.empty;
    // Lines read but never handed to the producer (the run stopped first).
    let held_reason = if forced { INTERRUPTED } else { NOT_SENT };
    for (number, length) in read.long {
        tally_long_line(&mut tally, number, length);
    }
    for line in &read.held {
        tally.fail(held_reason);
        if let Some(file) = &mut failed_file {
            write_line(file, line).await?;
        }
    }
    if forced {
        exit_now(&producer, unresolved, &mut tally, &mut failed_file).await?;
    } else {
        tokio::select! {
            biased;
            // Every batch has resolved: a second signal has nothing left to hand back.
            _ = stop.until(StopState::forced) => {}
            result = producer.shutdown() => {
                if let Err(e) = result {
                    crate::progress::eprintln_above(&format!("kpl put: {e}"));
                }
            }
        }
    }
    stop_outputs(progress, &mut failed_file).await?;
    let state = stop.get();
    report(&args, &tally, &producer, started.elapsed(), state)?;
    Ok(exit_code(&tally, state))
}

/// `--failed`'s file, created (emptied) at the start.
pub(crate) async fn open_failed(args: &Args) -> anyhow::Result<Option<BufWriter<tokio::fs::File>>> {
    Ok(match &args.failed {
        Some(path) => Some(BufWriter::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    })
}

/// The progress line, on a terminal unless `--quiet`.
pub(crate) fn start_progress(
    args: &Args,
    producer: &Producer,
) -> Option<tokio::task::JoinHandle<()>> {
    (!args.quiet && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(crate::progress::show(producer.clone())))
}

/// Stops the progress line and writes out `--failed` before the summary.
pub(crate) async fn stop_outputs(
    progress: Option<tokio::task::JoinHandle<()>>,
    failed_file: &mut Option<BufWriter<tokio::fs::File>>,
) -> anyhow::Result<()> {
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }
    if let Some(file) = failed_file {
        file.flush().await?;
    }
    Ok(())
}

/// The end of a put: the summary on stderr (unless `--quiet`), `--summary-json`, and why it
/// stopped early if it did.
pub(crate) fn report(
    args: &Args,
    tally: &Tally,
    producer: &Producer,
    elapsed: Duration,
    state: StopState,
) -> anyhow::Result<()> {
    let summary = summary_json(tally, producer, elapsed, state);
    if !args.quiet {
        print_summary(tally, producer, elapsed);
    }
    if let Some(path) = &args.summary_json {
        let mut json = serde_json::to_vec_pretty(&summary)?;
        json.push(b'\n');
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(fatal) = &tally.fatal {
        eprintln!("kpl put: stopped early: {fatal}");
    }
    Ok(())
}

/// Stdin, or the `--file`s opened at `start(path)`, lines longer than `longest` skipped.
pub(crate) async fn open_input(
    args: &Args,
    longest: usize,
    coalesce: Duration,
    start: impl Fn(&std::path::Path) -> Checkpoint,
) -> anyhow::Result<Input> {
    if args.files.is_empty() {
        return Ok(Input::Stdin(LineReader::new(read_stdin(coalesce), longest)));
    }
    let config = FileSourceConfig {
        follow: args.follow,
        max_line_bytes: longest,
        ..FileSourceConfig::default()
    };
    let mut sources = Vec::with_capacity(args.files.len());
    for (index, path) in args.files.iter().enumerate() {
        let source = FileSource::open(path, start(path), config.clone())
            .await
            .with_context(|| format!("cannot read --file {}", path.display()))?;
        sources.push((index, path.clone(), source));
    }
    Ok(Input::Files(FileLines::start(
        sources,
        args.follow,
        longest,
    )))
}

/// The exit status, first match wins: 2 a fatal error (configuration, stream, credentials,
/// also mid-run); 130 / 143 a signal (SIGINT / SIGTERM) stopped the run and some lines read
/// were not stored; 1 some lines failed; 0 every line read was stored, signal or not.
pub(crate) fn exit_code(tally: &Tally, state: StopState) -> ExitCode {
    let some_failed = tally.failed_total() + tally.left() > 0;
    match state.signal {
        _ if tally.fatal.is_some() => ExitCode::from(2),
        Some(signal) if some_failed => ExitCode::from(signal.exit_code()),
        _ if some_failed => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// The second signal: exit now. Every line whose record had not resolved is written to
/// `--failed` and counted as `Interrupted`; its call may have been in flight, so it may also
/// be in the stream.
///
/// This keeps put's own copy of each batch's lines. With `Producer::abort` (fail every
/// outstanding record at once, `FailureReason::Aborted`, record handed back), call
/// `producer.abort().await` here first and await each batch's future instead: every record
/// resolves at once and its line comes back from the producer; the producer's own buffers
/// are released and its calls stop.
async fn exit_now(
    producer: &Producer,
    unresolved: Vec<SentBatch>,
    tally: &mut Tally,
    failed_file: &mut Option<BufWriter<tokio::fs::File>>,
) -> anyhow::Result<()> {
    // Every record the producer holds resolves now: stored if it already was, else failed
    // with its record handed back (Aborted; "may be stored" when a call carried it).
    producer.abort().await;
    for batch in unresolved {
        for ((result, bytes), line) in batch
            .future
            .await
            .into_iter()
            .zip(batch.sizes)
            .zip(batch.lines)
        {
            match result {
                Ok(_) => {
                    tally.stored += 1;
                    tally.stored_bytes += bytes;
                }
                Err(failure) => {
                    match &failure.reason {
                        FailureReason::Aborted { .. } => tally.fail(INTERRUPTED),
                        reason => tally.fail(reason_label(reason)),
                    }
                    if let Some(file) = failed_file {
                        write_line(file, &line).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A line of stdin longer than `longest`, on stderr (a file's were reported as read: number 0).
pub(crate) fn report_long_line(number: u64, length: u64, longest: usize) {
    if number > 0 {
        eprintln!(
            "kpl put: line {number} is {length} bytes, longer than the largest record ({longest} bytes): skipped (it cannot be copied to --failed)"
        );
    }
}

pub(crate) fn tally_long_line(tally: &mut Tally, number: u64, length: u64) {
    tally.fail(LINE_TOO_LONG);
    if tally.long_lines.len() < LONG_LINES_LISTED {
        tally.long_lines.push((number, length));
    }
}

/// What the stdin reader did.
struct ReadEnd {
    lines: u64,
    empty: u64,
    /// Lines read and never handed to the producer, because a fatal error or a second
    /// signal stopped the run first.
    held: Vec<Bytes>,
    /// Long lines the collector was not told of (it had stopped): number and length.
    long: Vec<(u64, u64)>,
}

/// Reads stdin until EOF or a stop, sending one record per non-empty line, in batches. At
/// the end (EOF or a first signal) it sends what it holds and flushes the producer at once,
/// instead of letting the last records wait for `--max-buffered-time`.
async fn read_lines(
    producer: Producer,
    strategy: KeyStrategy,
    ehk: Option<HashKey>,
    mut input: Input,
    stop: Stop,
    tx: mpsc::Sender<Outcome>,
) -> anyhow::Result<ReadEnd> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut end = ReadEnd {
        lines: 0,
        empty: 0,
        held: Vec::new(),
        long: Vec::new(),
    };
    let mut batch = Vec::with_capacity(BATCH_RECORDS);
    let mut batch_bytes = 0;
    loop {
        // A line already buffered is taken at once; only a wait for input watches the stop
        // (which batches check too), so a stop is noticed within one batch.
        let line = match input.next_buffered() {
            Some(line) => Some(line),
            None => tokio::select! {
                biased;
                _ = stop.until(StopState::reading_stopped) => input.take_partial(),
                line = input.next() => line?,
            },
        };
        let Some(item) = line else { break };
        end.lines += 1;
        match item.line {
            Line::TooLong { number, length } => {
                report_long_line(number, length, input.longest());
                if tx.send(Outcome::TooLong(number, length)).await.is_err() {
                    end.long.push((number, length));
                    break;
                }
            }
            Line::Data(data) if data.is_empty() => end.empty += 1,
            Line::Data(data) => match strategy.key_for(&data, &mut rng) {
                Err(reason) => {
                    let refused = Outcome::Refused(data, format!("partition key: {reason}"));
                    if let Err(mpsc::error::SendError(Outcome::Refused(data, _))) =
                        tx.send(refused).await
                    {
                        end.held.push(data);
                        break;
                    }
                }
                Ok(key) => {
                    let mut record = UserRecord::new(key, data);
                    if let Some(h) = ehk {
                        record = record.with_explicit_hash_key(h);
                    }
                    batch_bytes += record.billed_bytes() as u64;
                    batch.push(record);
                }
            },
        }
        let full = batch.len() >= BATCH_RECORDS || batch_bytes >= BATCH_BYTES;
        if full || input.idle() {
            if stop.get().reading_stopped() {
                break;
            }
            let records = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_RECORDS));
            batch_bytes = 0;
            if let Err(held) = send_batch(&producer, records, &tx, &stop).await {
                end.held.extend(held);
                return Ok(end);
            }
        }
    }
    // EOF, a signal, a fatal error: what is held goes now, unless sending has stopped.
    if let Err(held) = send_batch(&producer, batch, &tx, &stop).await {
        end.held.extend(held);
        return Ok(end);
    }
    tokio::select! {
        biased;
        _ = stop.until(StopState::sending_stopped) => {}
        _ = producer.flush() => {}
    }
    Ok(end)
}

/// Hands `records` to the producer, in order. A record it refuses is reported and the rest
/// go again; a batch bigger than the whole buffer (a small `--max-outstanding-*`) goes in
/// halves. Waiting for room ends when sending stops (a fatal error, a second signal): then,
/// or when the producer is closed or nobody reads outcomes, the lines not handed over are
/// returned.
async fn send_batch(
    producer: &Producer,
    records: Vec<UserRecord>,
    tx: &mpsc::Sender<Outcome>,
    stop: &Stop,
) -> Result<(), Vec<Bytes>> {
    let mut pending = vec![records];
    let held = |pending: Vec<Vec<UserRecord>>| -> Vec<Bytes> {
        pending
            .into_iter()
            .rev()
            .flatten()
            .map(|r| r.data)
            .collect()
    };
    while let Some(records) = pending.pop() {
        if records.is_empty() {
            continue;
        }
        if stop.get().sending_stopped() {
            pending.push(records);
            return Err(held(pending));
        }
        let sizes = records.iter().map(|r| r.billed_bytes() as u64).collect();
        let lines: Vec<Bytes> = records.iter().map(|r| r.data.clone()).collect();
        let taken = tokio::select! {
            biased;
            _ = stop.until(StopState::sending_stopped) => {
                let mut held = held(pending);
                held.extend(lines);
                return Err(held);
            }
            taken = producer.send_batch(records) => taken,
        };
        let outcome = match taken {
            Ok(future) => Outcome::Sent(SentBatch {
                future,
                sizes,
                lines,
            }),
            Err(e) if e.reason == SendErrorReason::Closed => {
                pending.push(e.records);
                return Err(held(pending));
            }
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
                Outcome::Refused(refused.data, e.reason.to_string())
            }
        };
        if let Err(mpsc::error::SendError(outcome)) = tx.send(outcome).await {
            let mut held = held(pending);
            match outcome {
                Outcome::Sent(batch) => held.extend(batch.lines),
                Outcome::Refused(line, _) => held.push(line),
                Outcome::TooLong(..) => {}
            }
            return Err(held);
        }
    }
    Ok(())
}

/// Which signal stopped the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as shells report a process the signal ended.
    fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }
}

/// Why and how far the run is stopping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StopState {
    /// The first signal received.
    pub signal: Option<Signal>,
    /// Signals received (SIGINT and SIGTERM).
    pub signals: u32,
    /// A record failed with an error no retry can fix.
    pub fatal: bool,
}

impl StopState {
    /// No more lines are read (a signal or a fatal error).
    pub fn reading_stopped(&self) -> bool {
        self.signals > 0 || self.fatal
    }

    /// Lines read are no longer handed to the producer: they go to `--failed`.
    pub fn sending_stopped(&self) -> bool {
        self.fatal || self.forced()
    }

    /// A second signal: exit now.
    pub fn forced(&self) -> bool {
        self.signals >= 2
    }
}

/// The stop state, shared by the signal watcher, the reader and the collector.
#[derive(Clone)]
pub(crate) struct Stop(Arc<watch::Sender<StopState>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(Arc::new(watch::Sender::new(StopState::default())))
    }
}

impl Stop {
    pub fn get(&self) -> StopState {
        *self.0.borrow()
    }

    pub fn update(&self, change: impl FnOnce(&mut StopState)) -> StopState {
        self.0.send_modify(change);
        self.get()
    }

    /// Returns once `condition` holds.
    pub async fn until(&self, condition: fn(&StopState) -> bool) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(condition).await;
    }
}

fn watch_signals(stop: Stop, spooled: bool) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let signal = tokio::select! {
                    _ = int.recv() => Signal::Int,
                    _ = term.recv() => Signal::Term,
                };
                announce(&stop, signal, spooled);
            }
        }
        #[cfg(not(unix))]
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            announce(&stop, Signal::Int, spooled);
        }
    });
}

fn announce(stop: &Stop, signal: Signal, spooled: bool) {
    let state = stop.update(|s| {
        s.signals += 1;
        s.signal.get_or_insert(signal);
    });
    if state.forced() && spooled {
        eprintln!(
            "\nkpl put: {}: exiting now; records not stored stay in the spool for the next run",
            signal.name()
        );
    } else if state.forced() {
        eprintln!(
            "\nkpl put: {}: exiting now; lines not stored go to --failed",
            signal.name()
        );
    } else {
        eprintln!(
            "\nkpl put: {}: stopped reading, sending what was read (a second signal exits at once)",
            signal.name()
        );
    }
}

pub(crate) async fn write_line(
    file: &mut BufWriter<tokio::fs::File>,
    data: &[u8],
) -> anyhow::Result<()> {
    file.write_all(data).await?;
    file.write_all(b"\n").await?;
    Ok(())
}

pub(crate) fn reason_label(reason: &FailureReason) -> String {
    match reason {
        FailureReason::Fatal { code, .. } => code.clone(),
        FailureReason::Expired { .. } => "Expired".into(),
        FailureReason::AttemptsExhausted { .. } => "AttemptsExhausted".into(),
        FailureReason::Lost => "Lost".into(),
        other => format!("{other}"),
    }
}

pub(crate) fn summary_json(
    tally: &Tally,
    producer: &Producer,
    elapsed: Duration,
    stop: StopState,
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
        "long_lines_skipped": tally
            .long_lines
            .iter()
            .map(|(line, bytes)| serde_json::json!({ "line": line, "bytes": bytes }))
            .collect::<Vec<_>>(),
        "interrupted": stop.signal.is_some(),
        "signal": stop.signal.map(Signal::name),
        "forced_exit": stop.forced(),
        "stopped_by_fatal_error": tally.fatal.is_some(),
        "spool": tally.spool.as_ref().map(|s| serde_json::json!({
            "dir": s.dir.display().to_string(),
            "recovered_records": s.recovered,
            "recovery_problems": s.problems,
            "dead_letters": s.dead_letters,
            "left_in_spool": s.left_in_spool,
            "left_in_files": s.left_in_files,
        })),
    })
}

pub(crate) fn print_summary(tally: &Tally, producer: &Producer, elapsed: Duration) {
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
    if let Some(s) = &tally.spool {
        eprintln!(
            "kpl put: spool {}: {} records recovered from an earlier run (counted above), {} corrupt parts skipped, {} dead letters, {} records left in the spool, {} file lines left to read",
            s.dir.display(),
            s.recovered,
            s.problems,
            s.dead_letters,
            s.left_in_spool,
            s.left_in_files
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_first_match_wins() {
        let mut tally = Tally::default();
        let signal = StopState {
            signal: Some(Signal::Term),
            signals: 1,
            fatal: false,
        };
        assert_eq!(exit_code(&tally, signal), ExitCode::SUCCESS);
        tally.fail("Expired");
        assert_eq!(exit_code(&tally, StopState::default()), ExitCode::from(1));
        assert_eq!(exit_code(&tally, signal), ExitCode::from(143));
        tally.fatal = Some("AccessDeniedException".into());
        assert_eq!(exit_code(&tally, signal), ExitCode::from(2));
    }
}
