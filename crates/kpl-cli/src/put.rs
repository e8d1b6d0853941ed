//! `kpl put --stream NAME`: every stdin line becomes one user record.
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

use crate::common::{ConnectArgs, ProducerArgs, exit_for_producer_error};

/// Arguments of `kpl put`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Every line read is stored or written to --failed, and counted in the summary, however the run \
ends. At the end of input the last records are sent at once. SIGINT or SIGTERM stops reading \
at once and sends what was read; a second one exits at once and writes every line not yet \
stored to --failed (their calls may have been in flight: they may be in the stream too). A \
line longer than the largest record (10 MiB) is skipped as it is read and reported (line \
number and length, on stderr and in the summary): it cannot be copied to --failed.

Exit status, first match wins: 2 a fatal configuration, stream or credential error (also \
mid-run); 130 (SIGINT) or 143 (SIGTERM) a signal stopped the run and some lines read were not \
stored; 1 some lines failed; 0 every line read was stored, signal or not.")]
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
    /// Write every line that was not stored to this file (one per line, as read; a line
    /// longer than the largest record cannot be copied here).
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
    /// Lines longer than the largest record: (line number, length), the first
    /// `LONG_LINES_LISTED` of them.
    long_lines: Vec<(u64, u64)>,
    fatal: Option<String>,
}

impl Tally {
    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn fail(&mut self, reason: impl Into<String>) {
        *self.failed.entry(reason.into()).or_default() += 1;
    }
}

/// Reason of a line longer than the largest record: skipped while read, never held.
const LINE_TOO_LONG: &str = "LineTooLong";
/// Reason of a line read but not handed to the producer because a fatal error stopped the run.
const NOT_SENT: &str = "NotSent";
/// Reason of a line whose record had not resolved when a second signal ended the run.
const INTERRUPTED: &str = "Interrupted";
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
    watch_signals(stop.clone());
    let api = args.connect.api(config.request_timeout).await;
    let producer = match Producer::new(api, &args.stream, config).await {
        Ok(p) => p,
        Err(e) => return Ok(exit_for_producer_error(&e)),
    };
    let started = Instant::now();

    let mut failed_file = match &args.failed {
        Some(path) => Some(BufWriter::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };

    let (tx, mut rx) = mpsc::channel::<Outcome>(64);
    let reader = {
        let producer = producer.clone();
        let stop = stop.clone();
        let strategy = args.partition_key.clone();
        let ehk = args.explicit_hash_key;
        // Lines longer than any record Kinesis takes are skipped, not held.
        let longest = producer.max_record_bytes().max(LARGEST_MAX_RECORD_BYTES);
        let lines = LineReader::new(read_stdin(coalesce), longest);
        tokio::spawn(async move { read_lines(producer, strategy, ehk, lines, stop, tx).await })
    };

    let progress = (!args.quiet && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(crate::progress::show(producer.clone())));

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
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }
    if let Some(file) = &mut failed_file {
        file.flush().await?;
    }
    let elapsed = started.elapsed();
    let state = stop.get();
    let summary = summary_json(&tally, &producer, elapsed, state);
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
    Ok(exit_code(&tally, state))
}

/// The exit status, first match wins: 2 a fatal error (configuration, stream, credentials,
/// also mid-run); 130 / 143 a signal (SIGINT / SIGTERM) stopped the run and some lines read
/// were not stored; 1 some lines failed; 0 every line read was stored, signal or not.
fn exit_code(tally: &Tally, state: StopState) -> ExitCode {
    let some_failed = tally.failed_total() > 0;
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

fn tally_long_line(tally: &mut Tally, number: u64, length: u64) {
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
    mut input: LineReader,
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
        let Some(line) = line else { break };
        end.lines += 1;
        match line {
            Line::TooLong { number, length } => {
                eprintln!(
                    "kpl put: line {number} is {length} bytes, longer than the largest record ({} bytes): skipped (it cannot be copied to --failed)",
                    input.longest
                );
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

/// One line of input.
#[derive(Debug, PartialEq)]
enum Line {
    /// Its bytes, without the `\n` (and a `\r` before it).
    Data(Bytes),
    /// Longer than `LineReader::longest`: skipped as it was read, never held whole.
    TooLong {
        /// 1-based.
        number: u64,
        /// Its length in bytes, without the `\n`.
        length: u64,
    },
}

/// Lines out of chunks of input. Memory stays bounded whatever the input: a line longer than
/// `longest` is counted and dropped as it is read. `next` is cancel-safe: everything read
/// is kept in `self`.
struct LineReader {
    chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    /// The line read so far, when it spans chunks.
    line: Vec<u8>,
    /// Bytes of the current line so far, when it is over `longest` (then `line` is empty).
    skipping: Option<u64>,
    longest: usize,
    number: u64,
    eof: bool,
}

impl LineReader {
    fn new(chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>, longest: usize) -> Self {
        LineReader {
            chunks,
            chunk: Vec::new(),
            pos: 0,
            line: Vec::new(),
            skipping: None,
            longest,
            number: 0,
            eof: false,
        }
    }

    /// The next line if it is complete in what was read, without waiting.
    fn next_buffered(&mut self) -> Option<Line> {
        let rest = self.chunk.get(self.pos..)?;
        let i = memchr::memchr(b'\n', rest)?;
        let chunk = std::mem::take(&mut self.chunk);
        let line = self.end_line(&chunk[self.pos..self.pos + i]);
        self.pos += i + 1;
        self.chunk = chunk;
        Some(line)
    }

    /// The next line; `None` at the end of input.
    async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if self.pos < self.chunk.len() {
                let chunk = std::mem::take(&mut self.chunk);
                let rest = &chunk[self.pos..];
                let line = match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.pos += i + 1;
                        Some(self.end_line(&rest[..i]))
                    }
                    None => {
                        self.append(rest);
                        self.pos = chunk.len();
                        None
                    }
                };
                self.chunk = chunk;
                if line.is_some() {
                    return Ok(line);
                }
            }
            if self.eof {
                return Ok(self.take_partial());
            }
            match self.chunks.recv().await {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => self.eof = true,
            }
        }
    }

    /// The line read so far without its `\n` (at the end of input, or when reading stops).
    fn take_partial(&mut self) -> Option<Line> {
        (!self.line.is_empty() || self.skipping.is_some()).then(|| self.end_line(&[]))
    }

    /// Whether nothing more is buffered: the input is waiting for its writer.
    fn idle(&self) -> bool {
        self.pos >= self.chunk.len() && self.chunks.is_empty()
    }

    fn append(&mut self, part: &[u8]) {
        if let Some(length) = &mut self.skipping {
            *length += part.len() as u64;
        } else if self.line.len() + part.len() > self.longest {
            self.skipping = Some((self.line.len() + part.len()) as u64);
            self.line = Vec::new();
        } else {
            // A line that spans chunks gets room for the longest line at once: no copies as
            // it grows, and only the pages written are resident.
            if self.line.len() + part.len() > self.line.capacity() {
                self.line.reserve_exact(self.longest - self.line.len());
            }
            self.line.extend_from_slice(part);
        }
    }

    fn end_line(&mut self, last: &[u8]) -> Line {
        self.number += 1;
        let mut data = if self.line.is_empty() && self.skipping.is_none() {
            if last.len() > self.longest {
                self.skipping = Some(last.len() as u64);
                Vec::new()
            } else {
                last.to_vec()
            }
        } else {
            self.append(last);
            std::mem::take(&mut self.line)
        };
        if let Some(length) = self.skipping.take() {
            return Line::TooLong {
                number: self.number,
                length,
            };
        }
        if data.last() == Some(&b'\r') {
            data.pop();
        }
        Line::Data(Bytes::from(data))
    }
}

/// A read shorter than this means lines trickle in: the next read waits a little for more.
const SHORT_READ: usize = 16 << 10;

/// How long the stdin thread lets a trickle of lines gather before it reads again: a twentieth
/// of the time records wait in their aggregates anyway, at most 5 ms. At a few thousand lines a
/// second this hands over one chunk (one wake-up of the reader, one `send_batch`, one wake-up
/// of the pipeline) per few ms instead of per line; a busy input fills its reads and never
/// waits.
fn coalesce_time(config: &kpl::producer::ProducerConfig) -> Duration {
    (config.record_max_buffered_time / 20).min(Duration::from_millis(5))
}

/// Stdin in chunks, read on a thread of its own: a read cannot be cancelled, and a thread
/// blocked in one must not keep the process from exiting (tokio's stdin would hold the
/// runtime's shutdown until the next line). At most a few chunks wait in the channel. After a
/// short read it sleeps `coalesce` before the next one.
fn read_stdin(coalesce: Duration) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    use std::io::Read;
    const CHUNK: usize = 256 << 10;
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("kpl-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                        if n < SHORT_READ && !coalesce.is_zero() {
                            std::thread::sleep(coalesce);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// Which signal stopped the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
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
struct StopState {
    /// The first signal received.
    signal: Option<Signal>,
    /// Signals received (SIGINT and SIGTERM).
    signals: u32,
    /// A record failed with an error no retry can fix.
    fatal: bool,
}

impl StopState {
    /// No more lines are read (a signal or a fatal error).
    fn reading_stopped(&self) -> bool {
        self.signals > 0 || self.fatal
    }

    /// Lines read are no longer handed to the producer: they go to `--failed`.
    fn sending_stopped(&self) -> bool {
        self.fatal || self.forced()
    }

    /// A second signal: exit now.
    fn forced(&self) -> bool {
        self.signals >= 2
    }
}

/// The stop state, shared by the signal watcher, the reader and the collector.
#[derive(Clone)]
struct Stop(Arc<watch::Sender<StopState>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(Arc::new(watch::Sender::new(StopState::default())))
    }
}

impl Stop {
    fn get(&self) -> StopState {
        *self.0.borrow()
    }

    fn update(&self, change: impl FnOnce(&mut StopState)) -> StopState {
        self.0.send_modify(change);
        self.get()
    }

    /// Returns once `condition` holds.
    async fn until(&self, condition: fn(&StopState) -> bool) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(condition).await;
    }
}

fn watch_signals(stop: Stop) {
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
                announce(&stop, signal);
            }
        }
        #[cfg(not(unix))]
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            announce(&stop, Signal::Int);
        }
    });
}

fn announce(stop: &Stop, signal: Signal) {
    let state = stop.update(|s| {
        s.signals += 1;
        s.signal.get_or_insert(signal);
    });
    if state.forced() {
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

async fn write_line(file: &mut BufWriter<tokio::fs::File>, data: &[u8]) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader over `chunks`, lines longer than `longest` skipped.
    fn reader(chunks: &[&[u8]], longest: usize) -> LineReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Ok(c.to_vec())).unwrap();
        }
        LineReader::new(rx, longest)
    }

    async fn all(mut r: LineReader) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(line) = r.next().await.unwrap() {
            out.push(line);
        }
        out
    }

    fn data(s: &str) -> Line {
        Line::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[tokio::test]
    async fn lines_span_chunks_and_lose_their_line_ends() {
        let r = reader(&[b"ab", b"c\r\nd\n\nef", b"g"], 100);
        assert_eq!(
            all(r).await,
            [data("abc"), data("d"), data(""), data("efg")]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_and_counted_whole() {
        let r = reader(&[b"ok\n12345", b"678", b"9\nlast\n0123456789"], 5);
        assert_eq!(
            all(r).await,
            [
                data("ok"),
                Line::TooLong {
                    number: 2,
                    length: 9
                },
                data("last"),
                Line::TooLong {
                    number: 4,
                    length: 10
                },
            ]
        );
        // Exactly at the limit is a line.
        let r = reader(&[b"12345\n"], 5);
        assert_eq!(all(r).await, [data("12345")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_line_is_taken_when_reading_stops() {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Ok(b"one\ntw".to_vec())).unwrap();
        let mut r = LineReader::new(rx, 100);
        assert_eq!(r.next().await.unwrap(), Some(data("one")));
        assert!(!r.idle(), "\"tw\" is buffered");
        // The input stays open: `next` waits (cancelled here); a stop takes what was read.
        let pending = tokio::time::timeout(Duration::from_secs(1), r.next()).await;
        assert!(pending.is_err(), "waits for more input");
        assert!(r.idle());
        assert_eq!(r.take_partial(), Some(data("tw")));
        assert_eq!(r.take_partial(), None);
        drop(tx);
        assert_eq!(r.next().await.unwrap(), None);
    }

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
