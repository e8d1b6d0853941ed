//! The writer thread: the only code that writes the spool's files.
//!
//! Callers send it [`Op`]s on a channel; it takes everything queued at once (up to
//! [`MAX_OPS_PER_BATCH`]), writes it, hands the written bytes to the OS (`write(2)`: readable by
//! cursors and safe from a crash of this process), syncs as the [`SyncPolicy`] says, and only
//! then answers the appends of that batch. With `EveryRecord` that is a group commit: one
//! `fdatasync` covers every record that arrived while the previous one ran.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Instant, SystemTime};

use tokio::sync::{Semaphore, oneshot};

use super::dead_letter;
use super::segment::{
    self, ACK_MAGIC, FILE_HEADER_BYTES, FRAME_HEADER_BYTES, Frame, SEGMENT_MAGIC, SegmentMeta,
};
use super::{Shared, SpoolConfig, SpoolError, SyncPolicy};
use crate::dedup::DedupId;
use crate::record::UserRecord;

/// Most operations handled before the writer flushes and answers.
pub(crate) const MAX_OPS_PER_BATCH: usize = 4096;

/// The name of the dead-letter file in the spool directory.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

/// What callers ask of the writer.
pub(crate) enum Op {
    /// Answered with the first id given to the records (the others follow in order).
    Append {
        records: Vec<(UserRecord, Option<DedupId>)>,
        /// Written right after the records, in the same buffered write.
        checkpoints: Vec<(String, Vec<u8>)>,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    Ack(Vec<u64>),
    Fail {
        id: u64,
        reason: String,
    },
    Checkpoint {
        key: String,
        value: Vec<u8>,
    },
    /// Answered once everything sent before it is written and synced.
    Sync(oneshot::Sender<Result<(), SpoolError>>),
    /// An append is waiting for room: free the active segment if it is all acknowledged.
    Nudge,
    Close,
}

struct Active {
    first: u64,
    file: BufWriter<File>,
    len: u64,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    config: SpoolConfig,
    active: Active,
    next_id: u64,
    acks: HashMap<u64, BufWriter<File>>,
    dead_letters: Option<BufWriter<File>>,
    budget: Arc<Semaphore>,
    /// Bytes held above the cap at open (the cap was lowered): repaid before permits return.
    debt: u64,
    waiters: Arc<AtomicUsize>,
    /// Records or checkpoints written since the last sync.
    unsynced: bool,
    last_sync: Instant,
    /// Failed records written to the dead-letter file, acknowledged once it is synced.
    failed: Vec<u64>,
    /// Set after an I/O error: the spool takes no more records.
    stopped: Option<String>,
    frame: Vec<u8>,
    /// Holds the directory's lock until the writer ends.
    _lock: File,
}

pub(crate) struct WriterParts {
    pub shared: Arc<Shared>,
    pub config: SpoolConfig,
    pub next_id: u64,
    pub budget: Arc<Semaphore>,
    pub debt: u64,
    pub waiters: Arc<AtomicUsize>,
    pub lock: File,
}

enum Reply {
    Append(
        oneshot::Sender<Result<u64, SpoolError>>,
        Result<u64, SpoolError>,
    ),
    Sync(oneshot::Sender<Result<(), SpoolError>>),
}

impl Writer {
    /// Creates the segment new records go to (after every recovered one).
    pub fn start(parts: WriterParts) -> Result<Writer, SpoolError> {
        let WriterParts {
            shared,
            config,
            next_id,
            budget,
            debt,
            waiters,
            lock,
        } = parts;
        let active = create_segment(&shared, next_id)?;
        Ok(Writer {
            shared,
            config,
            active,
            next_id,
            acks: HashMap::new(),
            dead_letters: None,
            budget,
            debt,
            waiters,
            unsynced: false,
            last_sync: Instant::now(),
            failed: Vec::new(),
            stopped: None,
            frame: Vec::new(),
            _lock: lock,
        })
    }

    pub fn run(mut self, ops: Receiver<Op>) {
        let mut replies = Vec::new();
        loop {
            let Some(first) = self.next_op(&ops) else {
                break;
            };
            let mut closing = false;
            let mut force_sync = false;
            let mut n = 0;
            let mut op = Some(first);
            while let Some(o) = op.take() {
                match o {
                    Op::Close => closing = true,
                    Op::Sync(reply) => {
                        force_sync = true;
                        replies.push(Reply::Sync(reply));
                    }
                    o => self.handle(o, &mut replies),
                }
                n += 1;
                if !closing && n < MAX_OPS_PER_BATCH {
                    op = ops.try_recv().ok();
                }
            }
            let result = self.finish_batch(force_sync || closing);
            if let Err(e) = result {
                self.stop(&e);
            }
            for reply in replies.drain(..) {
                match reply {
                    Reply::Append(tx, r) => {
                        let r = match (&self.stopped, r) {
                            (Some(why), Ok(_)) => Err(SpoolError::Stopped(why.clone())),
                            (_, r) => r,
                        };
                        let _ = tx.send(r);
                    }
                    Reply::Sync(tx) => {
                        let _ = tx.send(match &self.stopped {
                            Some(why) => Err(SpoolError::Stopped(why.clone())),
                            None => Ok(()),
                        });
                    }
                }
            }
            if closing {
                break;
            }
        }
        if self.stopped.is_none()
            && let Err(e) = self.finish_batch(true)
        {
            self.stop(&e);
        }
        let mut state = self.shared.lock();
        state.closed = true;
        state.generation += 1;
        drop(state);
        self.shared.grown.notify_all();
    }

    /// Waits for the next op; with `SyncPolicy::Interval`, syncs when the interval ends first.
    fn next_op(&mut self, ops: &Receiver<Op>) -> Option<Op> {
        loop {
            match self.config.sync {
                SyncPolicy::Interval(every) if self.unsynced => {
                    let left = every.saturating_sub(self.last_sync.elapsed());
                    match ops.recv_timeout(left) {
                        Ok(op) => return Some(op),
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.sync_all() {
                                self.stop(&e);
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
                _ => return ops.recv().ok(),
            }
        }
    }

    fn stop(&mut self, e: &SpoolError) {
        if self.stopped.is_none() {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "the spool stopped taking records");
            self.stopped = Some(e.to_string());
            self.shared.lock().error = Some(e.to_string());
        }
    }

    fn handle(&mut self, op: Op, replies: &mut Vec<Reply>) {
        match op {
            Op::Append {
                records,
                checkpoints,
                reply,
            } => {
                let r = match &self.stopped {
                    Some(why) => Err(SpoolError::Stopped(why.clone())),
                    None => self.append(records, &checkpoints).and_then(|first| {
                        for (key, value) in checkpoints {
                            self.checkpoint(key, value)?;
                        }
                        Ok(first)
                    }),
                };
                if let Err(e) = &r
                    && !matches!(e, SpoolError::Stopped(_))
                {
                    self.stop(e);
                }
                replies.push(Reply::Append(reply, r));
            }
            Op::Ack(ids) => self.ack(&ids),
            Op::Fail { id, reason } => {
                if let Err(e) = self.fail(id, &reason) {
                    self.stop(&e);
                }
            }
            Op::Checkpoint { key, value } => {
                if self.stopped.is_none()
                    && let Err(e) = self.checkpoint(key, value)
                {
                    self.stop(&e);
                }
            }
            Op::Nudge => self.free_active_if_waited_for(),
            Op::Sync(_) | Op::Close => unreachable!("handled by run"),
        }
    }

    fn append(
        &mut self,
        records: Vec<(UserRecord, Option<DedupId>)>,
        checkpoints: &[(String, Vec<u8>)],
    ) -> Result<u64, SpoolError> {
        let first = self.next_id;
        // A batch that fits a segment is not split across two: a rotation (sync, new file,
        // directory sync) between its records and its checkpoints would be a window of
        // milliseconds in which a crash keeps the first records without the checkpoint that
        // covers them.
        let batch_bytes: u64 = records
            .iter()
            .map(|(r, d)| segment::record_frame_bytes(r, *d))
            .chain(
                checkpoints
                    .iter()
                    .map(|(k, v)| FRAME_HEADER_BYTES + 3 + k.len() as u64 + v.len() as u64),
            )
            .sum();
        let has_records = self.shared.lock().segments[&self.active.first].count > 0;
        if has_records
            && self.active.len + batch_bytes > self.config.segment_bytes
            && batch_bytes <= self.config.segment_bytes
        {
            self.rotate()?;
        }
        for (record, dedup_id) in records {
            let frame_bytes = segment::record_frame_bytes(&record, dedup_id);
            let has_records = self.shared.lock().segments[&self.active.first].count > 0;
            if has_records && self.active.len + frame_bytes > self.config.segment_bytes {
                self.rotate()?;
            }
            self.frame.clear();
            self.frame.resize(FRAME_HEADER_BYTES as usize, 0);
            segment::encode_record(self.next_id, &record, dedup_id, &mut self.frame);
            segment::seal_frame(&mut self.frame);
            let offset = self.active.len;
            self.active
                .file
                .write_all(&self.frame)
                .map_err(self.io("cannot write to the spool segment"))?;
            self.active.len += frame_bytes;
            self.next_id += 1;
            let mut state = self.shared.lock();
            let meta = state
                .segments
                .get_mut(&self.active.first)
                .expect("the active segment is known");
            meta.push_record(offset, frame_bytes);
        }
        self.unsynced = true;
        Ok(first)
    }

    fn checkpoint(&mut self, key: String, value: Vec<u8>) -> Result<(), SpoolError> {
        self.frame.clear();
        self.frame.resize(FRAME_HEADER_BYTES as usize, 0);
        segment::encode_checkpoint(&key, &value, &mut self.frame);
        segment::seal_frame(&mut self.frame);
        self.active
            .file
            .write_all(&self.frame)
            .map_err(self.io("cannot write to the spool segment"))?;
        self.active.len += self.frame.len() as u64;
        self.shared.lock().checkpoints.insert(key, value);
        self.unsynced = true;
        Ok(())
    }

    /// Marks `ids` acknowledged, appends them to their segments' ack files, and deletes the
    /// sealed segments that have nothing left. Unknown and repeated ids are ignored.
    fn ack(&mut self, ids: &[u64]) {
        let mut by_segment: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut emptied = Vec::new();
        {
            let mut state = self.shared.lock();
            for &id in ids {
                let Some((&first, meta)) = state.segments.range_mut(..=id).next_back() else {
                    continue;
                };
                if !meta.holds(id) || !meta.ack(id) {
                    continue;
                }
                by_segment
                    .entry(first)
                    .or_default()
                    .extend_from_slice(&id.to_le_bytes());
                if meta.live == 0 && meta.sealed {
                    emptied.push(first);
                }
            }
        }
        for (first, ids) in by_segment {
            if emptied.contains(&first) {
                continue; // about to be deleted: no need to record its acks
            }
            if let Err(e) = self.write_acks(first, ids) {
                // A lost ack means a duplicate after a restart, never a lost record.
                tracing::warn!(error = %e, "cannot record acknowledgements in the spool");
            }
        }
        for first in emptied {
            self.delete_segment(first);
        }
        self.free_active_if_waited_for();
    }

    fn write_acks(&mut self, first: u64, ids: Vec<u8>) -> Result<(), SpoolError> {
        let path = segment::ack_path(&self.shared.dir, first);
        let out = match self.acks.entry(first) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_at(&path, "cannot open a spool ack file"))?;
                if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                    file.write_all(&segment::file_header(ACK_MAGIC, first))
                        .map_err(io_at(&path, "cannot write a spool ack file"))?;
                }
                e.insert(BufWriter::with_capacity(16 * 1024, file))
            }
        };
        let mut frame = vec![0u8; FRAME_HEADER_BYTES as usize];
        frame.extend_from_slice(&ids);
        segment::seal_frame(&mut frame);
        out.write_all(&frame)
            .map_err(io_at(&path, "cannot write a spool ack file"))
    }

    /// Removes a sealed, fully acknowledged segment and gives its bytes back to the size cap.
    fn delete_segment(&mut self, first: u64) {
        let Some(meta) = self.shared.lock().segments.remove(&first) else {
            return;
        };
        self.acks.remove(&first);
        // The segment before its acks: a crash between the two leaves an orphan ack file
        // (deleted at the next open), never resurrected records without their acks.
        for path in [
            segment::segment_path(&self.shared.dir, first),
            segment::ack_path(&self.shared.dir, first),
        ] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete an acknowledged spool file");
            }
        }
        let repaid = self.debt.min(meta.record_bytes);
        self.debt -= repaid;
        let freed = usize::try_from(meta.record_bytes - repaid).unwrap_or(usize::MAX);
        if freed > 0 {
            self.budget.add_permits(freed);
        }
        let mut state = self.shared.lock();
        state.generation += 1;
        drop(state);
        self.shared.grown.notify_all();
    }

    /// An append waits for room and the active segment is all acknowledged: start a new one so
    /// this one can go. (Otherwise a cap nearly filled by the active segment would wait for
    /// appends that are themselves waiting.)
    fn free_active_if_waited_for(&mut self) {
        if self.waiters.load(Ordering::SeqCst) == 0 || self.stopped.is_some() {
            return;
        }
        let done = {
            let state = self.shared.lock();
            let meta = &state.segments[&self.active.first];
            meta.count > 0 && meta.live == 0
        };
        if done && let Err(e) = self.rotate() {
            self.stop(&e);
        }
    }

    /// Seals the active segment (synced) and starts the next, carrying every checkpoint over
    /// so that deleting old segments never loses one.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.active
            .file
            .flush()
            .map_err(self.io("cannot write to the spool segment"))?;
        self.active
            .file
            .get_ref()
            .sync_data()
            .map_err(self.io("cannot sync the spool segment"))?;
        let old = self.active.first;
        let done = {
            let mut state = self.shared.lock();
            let meta = state.segments.get_mut(&old).expect("active segment known");
            meta.sealed = true;
            meta.valid_len = self.active.len;
            meta.live == 0
        };
        self.active = create_segment(&self.shared, self.next_id)?;
        if done {
            self.delete_segment(old);
        }
        Ok(())
    }

    /// Writes a failed record to the dead-letter file; it is acknowledged in
    /// [`Writer::finish_batch`] once that file is synced.
    fn fail(&mut self, id: u64, reason: &str) -> Result<(), SpoolError> {
        self.active
            .file
            .flush()
            .map_err(self.io("cannot write to the spool segment"))?;
        let found = {
            let state = self.shared.lock();
            state
                .segments
                .range(..=id)
                .next_back()
                .filter(|(_, m)| m.holds(id) && !m.is_acked(id))
                .map(|(&first, m)| (first, m.seek_hint(id)))
        };
        let Some((first, (offset, mut at_id))) = found else {
            tracing::debug!(
                id,
                "fail: the record is not in the spool (acknowledged already?)"
            );
            return Ok(());
        };
        let path = segment::segment_path(&self.shared.dir, first);
        let mut file = File::open(&path).map_err(io_at(&path, "cannot open a spool segment"))?;
        let len = file
            .metadata()
            .map_err(io_at(&path, "cannot read a spool segment"))?
            .len();
        file.seek(SeekFrom::Start(offset))
            .map_err(io_at(&path, "cannot read a spool segment"))?;
        let mut r = BufReader::new(file);
        let mut pos = offset;
        let mut body = Vec::new();
        let record = loop {
            match segment::read_frame_body(&mut r, len - pos, &mut body) {
                Ok(Some(())) => {}
                _ => {
                    tracing::warn!(id, file = %path.display(), "fail: the record cannot be read back; it stays in the spool");
                    return Ok(());
                }
            }
            pos += FRAME_HEADER_BYTES + body.len() as u64;
            match segment::decode_frame(&body) {
                Ok(Frame::Record(rec)) if rec.id == id => break rec,
                Ok(Frame::Record(_)) => at_id += 1,
                Ok(Frame::Checkpoint { .. }) => {}
                Err(_) => {
                    tracing::warn!(
                        id,
                        at_id,
                        "fail: the record cannot be read back; it stays in the spool"
                    );
                    return Ok(());
                }
            }
        };
        let line = dead_letter::line(&record, reason, SystemTime::now());
        let path = self.shared.dir.join(DEAD_LETTER_FILE);
        if self.dead_letters.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_at(&path, "cannot open the dead-letter file"))?;
            if self.config.sync != SyncPolicy::Never {
                // Its directory entry too: acknowledged records must not vanish with the file.
                File::open(&self.shared.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_at(&self.shared.dir, "cannot sync the spool directory"))?;
            }
            self.dead_letters = Some(BufWriter::new(file));
        }
        let out = self.dead_letters.as_mut().expect("opened above");
        out.write_all(line.as_bytes())
            .map_err(io_at(&path, "cannot write the dead-letter file"))?;
        self.failed.push(id);
        Ok(())
    }

    /// Hands the batch's bytes to the OS, lets cursors read them, syncs if the policy (or
    /// `force`) says so, and acknowledges the failed records now safe in the dead-letter file.
    fn finish_batch(&mut self, force: bool) -> Result<(), SpoolError> {
        self.active
            .file
            .flush()
            .map_err(self.io("cannot write to the spool segment"))?;
        {
            let mut state = self.shared.lock();
            if let Some(meta) = state.segments.get_mut(&self.active.first) {
                meta.valid_len = self.active.len;
            }
            state.generation += 1;
        }
        self.shared.grown.notify_all();
        if !self.failed.is_empty() {
            let path = self.shared.dir.join(DEAD_LETTER_FILE);
            if let Some(out) = &mut self.dead_letters {
                out.flush()
                    .map_err(io_at(&path, "cannot write the dead-letter file"))?;
                if self.config.sync != SyncPolicy::Never {
                    out.get_ref()
                        .sync_data()
                        .map_err(io_at(&path, "cannot sync the dead-letter file"))?;
                }
            }
            let failed = std::mem::take(&mut self.failed);
            self.ack(&failed);
        }
        for (first, w) in &mut self.acks {
            if let Err(e) = w.flush() {
                tracing::warn!(segment = first, error = %e, "cannot record acknowledgements in the spool");
            }
        }
        let due = match self.config.sync {
            SyncPolicy::EveryRecord => self.unsynced,
            SyncPolicy::Interval(every) => self.unsynced && self.last_sync.elapsed() >= every,
            SyncPolicy::Never => false,
        };
        if due || force {
            self.sync_all()?;
        }
        Ok(())
    }

    fn sync_all(&mut self) -> Result<(), SpoolError> {
        self.active
            .file
            .flush()
            .map_err(self.io("cannot write to the spool segment"))?;
        self.active
            .file
            .get_ref()
            .sync_data()
            .map_err(self.io("cannot sync the spool segment"))?;
        for w in self.acks.values_mut() {
            // Acks are best effort: losing one resends a record, it never loses one.
            let _ = w.flush().and_then(|()| w.get_ref().sync_data());
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> SpoolError + use<> {
        io_at(
            &segment::segment_path(&self.shared.dir, self.active.first),
            what,
        )
    }
}

fn io_at(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path: PathBuf = path.to_path_buf();
    move |source| SpoolError::Io { path, what, source }
}

/// A new segment from `first`: header and the current checkpoints, synced with its directory
/// entry before any record goes in.
fn create_segment(shared: &Shared, first: u64) -> Result<Active, SpoolError> {
    let path = segment::segment_path(&shared.dir, first);
    let io = |what| io_at(&path, what);
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io("cannot create a spool segment"))?;
    let mut file = BufWriter::with_capacity(256 * 1024, file);
    file.write_all(&segment::file_header(SEGMENT_MAGIC, first))
        .map_err(io("cannot write a spool segment"))?;
    let mut len = FILE_HEADER_BYTES;
    let checkpoints = shared.lock().checkpoints.clone();
    let mut frame = Vec::new();
    for (key, value) in &checkpoints {
        frame.clear();
        frame.resize(FRAME_HEADER_BYTES as usize, 0);
        segment::encode_checkpoint(key, value, &mut frame);
        segment::seal_frame(&mut frame);
        file.write_all(&frame)
            .map_err(io("cannot write a spool segment"))?;
        len += frame.len() as u64;
    }
    file.flush().map_err(io("cannot write a spool segment"))?;
    file.get_ref()
        .sync_data()
        .map_err(io("cannot sync a spool segment"))?;
    File::open(&shared.dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync the spool directory"))?;
    let mut meta = SegmentMeta::new(first);
    meta.valid_len = len;
    let mut state = shared.lock();
    state.segments.insert(first, meta);
    state.generation += 1;
    drop(state);
    shared.grown.notify_all();
    Ok(Active { first, file, len })
}
