//! `kpl put --spool DIR`: lines go to a disk spool ([`SpooledProducer`]) before Kinesis, so
//! a crash, a `kill -9` or a reboot loses nothing taken, and a restart of the same command
//! carries on.
//!
//! ```text
//! stdin / --file ─► lines ─► batch ─► spool (records + input position, one write) ─► feeder ─► Kinesis
//!                                                               delivery reports ◄─┘
//!                                          stored: counted · failed for good: dead-letters.jsonl, --failed
//! ```
//!
//! - **Input positions**: with each batch of lines the spool stores, in the same write, where
//!   the input stands after them: for a `--file`, its [`Checkpoint`] (device, inode, offset of
//!   the first line not spooled) under the key `file:ABSOLUTE-PATH`; for stdin, the lines and
//!   bytes of stdin spooled by every run on this spool so far, under `stdin`. A restart resends
//!   what the spool holds, then opens each file at its checkpoint (following a rotation made
//!   while kpl was down, see [`crate::source`]) and reads on; stdin is read from wherever the new
//!   process's stdin starts (the `stdin` position tells how much of a replayed input was taken:
//!   `tail -c +$((BYTES + 1)) input | kpl put --spool DIR ...`).
//! - **Signals**: the first stops reading; what was read is spooled and sent, then the run
//!   ends. A second exits at once: records not yet stored stay in the spool for the next run
//!   (none goes to `--failed`, so none is there twice); lines of stdin read but not yet spooled
//!   go to `--failed` (Interrupted); lines of a file not yet spooled stay in the file, after its
//!   checkpoint.
//! - **Failures for good** go to the spool's `dead-letters.jsonl` with their reason (the
//!   spool writes it) and to `--failed`. A fatal error (credentials, stream) stops the run as
//!   without a spool, but leaves what is not stored in the spool.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use kpl::HashKey;
use kpl::UserRecord;
use kpl::limits::LARGEST_MAX_RECORD_BYTES;
use kpl::producer::{
    AppendError, Delivery, FailureReason, ProducerConfig, SendErrorReason, SpooledProducer,
    SpooledProducerError,
};
use kpl::spool::SpoolError;
use tokio::io::BufWriter;
use tokio::sync::mpsc;

use crate::common::exit_for_producer_error;
use crate::input::{Input, Line, Position};
use crate::put::{
    Args, INTERRUPTED, KeyStrategy, NOT_SENT, SpoolTally, Stop, StopState, Tally, open_failed,
    open_input, reason_label, report, report_long_line, start_progress, stop_outputs,
    tally_long_line, write_line,
};
use crate::source::Checkpoint;

/// The checkpoint key of stdin's position.
pub const STDIN_CHECKPOINT: &str = "stdin";
/// Reason of a line the spool refused (full, with `--spool-when-full refuse`).
const SPOOL_FULL: &str = "SpoolFull";
/// Lines spooled at once, at most (one write, one checkpoint).
const BATCH_RECORDS: usize = 500;
/// About the most bytes spooled at once: well inside the spool writer's 256 KiB buffer, so a
/// batch and its checkpoint usually reach the file in one `write(2)`.
const BATCH_BYTES: u64 = 128 << 10;
/// A record's bytes on disk besides its key and data, about (frame header, id, lengths).
const SPOOL_FRAME_OVERHEAD: u64 = 32;

/// The checkpoint key of a `--file`: its absolute path.
pub fn file_key(path: &std::path::Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file:{}", absolute.display())
}

/// Stdin's position over every run on a spool: lines and bytes spooled (16 bytes, LE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StdinPosition {
    pub lines: u64,
    pub bytes: u64,
}

impl StdinPosition {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.lines.to_le_bytes().to_vec();
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<StdinPosition> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(StdinPosition {
            lines: u64::from_le_bytes(bytes[..8].try_into().expect("8")),
            bytes: u64::from_le_bytes(bytes[8..].try_into().expect("8")),
        })
    }
}

/// What the reader tells the collector besides what it spools.
enum Note {
    /// A line that was not spooled, and why (written to `--failed`).
    Refused(Bytes, String),
    /// A line longer than the largest record: its number and length.
    TooLong(u64, u64),
}

/// What the reader did.
struct ReadEnd {
    lines: u64,
    empty: u64,
    /// Stdin lines read and not spooled (the run stopped first): for `--failed`.
    held: Vec<Bytes>,
    /// File lines read and not spooled: they stay in the file, after its checkpoint.
    left_in_files: u64,
    /// The spool failed: why.
    spool_error: Option<String>,
}

pub async fn run(args: Args, config: ProducerConfig, stop: Stop) -> anyhow::Result<ExitCode> {
    let dir = args.spool.dir.clone().expect("run only with --spool");
    let coalesce = crate::input::coalesce_time(&config);
    let api = args.connect.api(config.request_timeout).await;
    let (spooled, mut deliveries) =
        match SpooledProducer::new(api, &args.stream, config, &dir, args.spool.config()).await {
            Ok(p) => p,
            Err(SpooledProducerError::Producer(e)) => return Ok(exit_for_producer_error(&e)),
            Err(e) => {
                eprintln!("kpl put: {e}");
                return Ok(ExitCode::from(2));
            }
        };
    let started = Instant::now();
    let spool = spooled.spool().clone();
    let recovery = spool.recovery().clone();
    if recovery.entries > 0 && !args.quiet {
        eprintln!(
            "kpl put: the spool {} holds {} records an earlier run left: sending them first",
            dir.display(),
            recovery.entries
        );
    }
    for problem in &recovery.problems {
        eprintln!(
            "kpl put: warning: spool file {} at byte {}: {} ({} bytes skipped)",
            problem.file.display(),
            problem.offset,
            problem.kind,
            problem.skipped_bytes
        );
    }
    let mut failed_file = open_failed(&args).await?;

    let longest = spooled
        .producer()
        .max_record_bytes()
        .max(LARGEST_MAX_RECORD_BYTES);
    let keys: Vec<String> = args.files.iter().map(|p| file_key(p)).collect();
    let input = open_input(&args, longest, coalesce, |path| {
        spool
            .checkpoint_value(&file_key(path))
            .and_then(|v| Checkpoint::decode(&v))
            .unwrap_or_default()
    })
    .await?;
    let stdin_before = spool
        .checkpoint_value(STDIN_CHECKPOINT)
        .and_then(|v| StdinPosition::decode(&v))
        .unwrap_or_default();

    let (tx, mut notes) = mpsc::channel::<Note>(64);
    let mut reader = {
        let reader = Reader {
            spooled: spooled.clone(),
            strategy: args.partition_key.clone(),
            ehk: args.explicit_hash_key,
            keys,
            stdin_before,
            // A batch fits a quarter of the cap: a small spool fills up and blocks, but a
            // batch is never bigger than the whole spool.
            batch_bytes: BATCH_BYTES.min(args.spool.spool_max_bytes / 4),
            stop: stop.clone(),
            tx,
        };
        tokio::spawn(reader.run(input))
    };
    let progress = start_progress(&args, spooled.producer());

    let mut tally = Tally {
        spool: Some(SpoolTally {
            dir: dir.clone(),
            recovered: recovery.entries,
            problems: recovery.problems.len() as u64,
            ..SpoolTally::default()
        }),
        ..Tally::default()
    };
    // Reading: notes and deliveries as they come, until the reader ends or a second signal.
    let mut read = None;
    let mut notes_open = true;
    while read.is_none() || notes_open {
        tokio::select! {
            biased;
            _ = stop.until(StopState::forced) => break,
            note = notes.recv(), if notes_open => match note {
                Some(note) => settle_note(note, &mut tally, &mut failed_file).await?,
                None => notes_open = false,
            },
            Some(batch) = deliveries.recv() => {
                settle(batch, &mut tally, &stop, &mut failed_file).await?;
            }
            end = &mut reader, if read.is_none() => {
                read = Some(end.context("the line reader stopped")??);
            }
        }
    }
    let forced = stop.get().forced();
    if forced {
        notes.close();
        while let Some(note) = notes.recv().await {
            settle_note(note, &mut tally, &mut failed_file).await?;
        }
    }
    // Sending: everything spooled is stored or failed (shutdown), unless a second signal or a
    // fatal error ends it (abort: what is not stored stays in the spool).
    if !forced && tally.fatal.is_none() {
        // Shutdown sends the open aggregates at once: the last records do not wait
        // --max-buffered-time.
        let shutdown = spooled.shutdown();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = stop.until(StopState::forced) => break,
                _ = stop.until(|s| s.fatal) => break,
                Some(batch) = deliveries.recv() => {
                    settle(batch, &mut tally, &stop, &mut failed_file).await?;
                }
                result = &mut shutdown => {
                    if let Err(e) = result {
                        crate::progress::eprintln_above(&format!("kpl put: {e}"));
                    }
                    break;
                }
            }
        }
    }
    {
        let abort = spooled.abort();
        tokio::pin!(abort);
        loop {
            tokio::select! {
                Some(batch) = deliveries.recv() => {
                    settle(batch, &mut tally, &stop, &mut failed_file).await?;
                }
                () = &mut abort => break,
            }
        }
    }
    while let Some(batch) = deliveries.recv().await {
        settle(batch, &mut tally, &stop, &mut failed_file).await?;
    }
    let read = match read {
        Some(read) => read,
        None => reader.await.context("the line reader stopped")??,
    };
    tally.lines_read = read.lines;
    tally.empty_lines_skipped = read.empty;
    let held_reason = if stop.get().forced() {
        INTERRUPTED
    } else {
        NOT_SENT
    };
    for line in &read.held {
        tally.fail(held_reason);
        if let Some(file) = &mut failed_file {
            write_line(file, line).await?;
        }
    }
    if let Some(e) = read.spool_error {
        tally.fatal.get_or_insert(format!("the spool failed: {e}"));
    }
    // Acknowledgements are written by the spool's thread: count what is left once they are.
    if let Err(e) = spool.sync().await {
        eprintln!("kpl put: {e}");
    }
    let metrics = spooled.producer().metrics();
    tally.stored_bytes = metrics.user_records_data_put;
    if let Some(s) = &mut tally.spool {
        s.left_in_spool = spool.stats().entries;
        s.left_in_files = read.left_in_files;
    }
    stop_outputs(progress, &mut failed_file).await?;
    let state = stop.get();
    let producer = spooled.producer().clone();
    report(&args, &tally, &producer, started.elapsed(), state)?;
    // The spool closes (flushed, synced, unlocked) when its last handle goes: off the runtime.
    drop(producer);
    let _ = tokio::task::spawn_blocking(move || {
        drop(spooled);
        drop(spool);
    })
    .await;
    Ok(crate::put::exit_code(&tally, state))
}

async fn settle_note(
    note: Note,
    tally: &mut Tally,
    failed_file: &mut Option<BufWriter<tokio::fs::File>>,
) -> anyhow::Result<()> {
    match note {
        Note::Refused(line, reason) => {
            tally.fail(reason);
            if let Some(file) = failed_file {
                write_line(file, &line).await?;
            }
        }
        Note::TooLong(number, length) => tally_long_line(tally, number, length),
    }
    Ok(())
}

/// One batch of delivery reports: stored ones counted; failed ones (already in the spool's
/// dead-letter file) counted by reason and written to `--failed`.
async fn settle(
    batch: Vec<Delivery>,
    tally: &mut Tally,
    stop: &Stop,
    failed_file: &mut Option<BufWriter<tokio::fs::File>>,
) -> anyhow::Result<()> {
    for delivery in batch {
        match delivery.result {
            Ok(_) => tally.stored += 1,
            Err(failure) => {
                tally.fail(reason_label(&failure.reason));
                if let Some(s) = &mut tally.spool {
                    s.dead_letters += 1;
                }
                if matches!(failure.reason, FailureReason::Fatal { .. }) && tally.fatal.is_none() {
                    tally.fatal = Some(failure.to_string());
                    stop.update(|s| s.fatal = true);
                }
                if let (Some(file), Some(record)) = (&mut *failed_file, failure.record) {
                    write_line(file, &record.data).await?;
                }
            }
        }
    }
    Ok(())
}

/// Reads lines, spools them in batches with the input's position after them.
struct Reader {
    spooled: SpooledProducer,
    strategy: KeyStrategy,
    ehk: Option<HashKey>,
    /// Checkpoint keys of the `--file`s, by index.
    keys: Vec<String>,
    stdin_before: StdinPosition,
    /// Most bytes on disk a batch takes.
    batch_bytes: u64,
    stop: Stop,
    tx: mpsc::Sender<Note>,
}

/// Lines read and not yet spooled, and where the input stands after them.
#[derive(Default)]
struct Batch {
    records: Vec<UserRecord>,
    bytes: u64,
    /// Lines read into this batch (empty and refused ones too).
    lines: u64,
    /// The latest position of each file read into this batch.
    files: BTreeMap<usize, Checkpoint>,
    /// Stdin's bytes read by this run after this batch's last line.
    stdin_bytes: Option<u64>,
}

impl Reader {
    async fn run(self, mut input: Input) -> anyhow::Result<ReadEnd> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut end = ReadEnd {
            lines: 0,
            empty: 0,
            held: Vec::new(),
            left_in_files: 0,
            spool_error: None,
        };
        let mut stdin = self.stdin_before;
        let mut batch = Batch::default();
        loop {
            let item = match input.next_buffered() {
                Some(item) => Some(item),
                None => tokio::select! {
                    biased;
                    _ = self.stop.until(StopState::reading_stopped) => input.take_partial(),
                    item = input.next() => item?,
                },
            };
            let Some(item) = item else { break };
            end.lines += 1;
            batch.lines += 1;
            match item.after {
                Position::File { index, checkpoint } => {
                    batch.files.insert(index, checkpoint);
                }
                Position::Stdin { bytes } => batch.stdin_bytes = Some(bytes),
            }
            match item.line {
                Line::TooLong { number, length } => {
                    report_long_line(number, length, input.longest());
                    if self.tx.send(Note::TooLong(number, length)).await.is_err() {
                        break;
                    }
                }
                Line::Data(data) if data.is_empty() => end.empty += 1,
                Line::Data(data) => match self.strategy.key_for(&data, &mut rng) {
                    Err(reason) => {
                        let note = Note::Refused(data, format!("partition key: {reason}"));
                        if self.tx.send(note).await.is_err() {
                            break;
                        }
                    }
                    Ok(key) => {
                        let mut record = UserRecord::new(key, data);
                        if let Some(h) = self.ehk {
                            record = record.with_explicit_hash_key(h);
                        }
                        batch.bytes += record.billed_bytes() as u64 + SPOOL_FRAME_OVERHEAD;
                        batch.records.push(record);
                    }
                },
            }
            let full = batch.records.len() >= BATCH_RECORDS || batch.bytes >= self.batch_bytes;
            if (full || input.idle()) && !self.spool(&mut batch, &mut stdin, &mut end).await {
                return Ok(end);
            }
        }
        self.spool(&mut batch, &mut stdin, &mut end).await;
        Ok(end)
    }

    /// Spools `batch` with the input's position after it, and empties it. `false` if it was
    /// not spooled (sending stopped, or the spool failed): then `end` says what became of it.
    async fn spool(&self, batch: &mut Batch, stdin: &mut StdinPosition, end: &mut ReadEnd) -> bool {
        let Batch {
            mut records,
            lines,
            files,
            stdin_bytes,
            ..
        } = std::mem::take(batch);
        if lines == 0 {
            return true;
        }
        let mut checkpoints: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(&index, cp)| (self.keys[index].clone(), cp.encode()))
            .collect();
        let stdin_after = stdin_bytes.map(|bytes| StdinPosition {
            lines: stdin.lines + lines,
            bytes: self.stdin_before.bytes + bytes,
        });
        if let Some(after) = stdin_after {
            checkpoints.push((STDIN_CHECKPOINT.to_owned(), after.encode()));
        }
        let mut give_back = |records: Vec<UserRecord>, end: &mut ReadEnd| {
            if stdin_bytes.is_some() {
                end.held.extend(records.into_iter().map(|r| r.data));
            } else {
                end.left_in_files += lines;
            }
        };
        loop {
            if self.stop.get().sending_stopped() {
                give_back(records, end);
                return false;
            }
            if records.is_empty() {
                // Only empty, refused or long lines: the position moves on alone.
                let spool = self.spooled.spool();
                let written: Result<(), SpoolError> = checkpoints
                    .into_iter()
                    .try_for_each(|(key, value)| spool.checkpoint(&key, value));
                return match written {
                    Ok(()) => self.advanced(stdin, stdin_after),
                    Err(e) => self.spool_failed(e, Vec::new(), end, &mut give_back),
                };
            }
            let taken = tokio::select! {
                biased;
                _ = self.stop.until(StopState::sending_stopped) => {
                    give_back(records, end);
                    return false;
                }
                taken = self.spooled.append_batch_with_checkpoints(records.clone(), checkpoints.clone()) => taken,
            };
            match taken {
                Ok(_) => return self.advanced(stdin, stdin_after),
                Err(AppendError::Refused {
                    reason: SendErrorReason::Closed,
                    ..
                }) => {
                    give_back(records, end);
                    return false;
                }
                Err(AppendError::Refused { index, reason }) => {
                    let refused = records.remove(index);
                    if self
                        .tx
                        .send(Note::Refused(refused.data, reason.to_string()))
                        .await
                        .is_err()
                    {
                        give_back(records, end);
                        return false;
                    }
                }
                Err(AppendError::Spool(
                    e @ (SpoolError::Full { .. } | SpoolError::Unstorable(_)),
                )) => {
                    let reason = match e {
                        SpoolError::Full { .. } => SPOOL_FULL.to_owned(),
                        e => e.to_string(),
                    };
                    for record in std::mem::take(&mut records) {
                        let note = Note::Refused(record.data, reason.clone());
                        if self.tx.send(note).await.is_err() {
                            return false;
                        }
                    }
                }
                Err(AppendError::Spool(e)) => {
                    return self.spool_failed(e, records, end, &mut give_back);
                }
            }
        }
    }

    fn advanced(&self, stdin: &mut StdinPosition, after: Option<StdinPosition>) -> bool {
        if let Some(after) = after {
            *stdin = after;
        }
        true
    }

    fn spool_failed(
        &self,
        e: SpoolError,
        records: Vec<UserRecord>,
        end: &mut ReadEnd,
        give_back: &mut impl FnMut(Vec<UserRecord>, &mut ReadEnd),
    ) -> bool {
        give_back(records, end);
        end.spool_error = Some(e.to_string());
        self.stop.update(|s| s.fatal = true);
        false
    }
}
