//! Reading back: the entries not yet acknowledged, oldest first, one frame in memory at a time.
//!
//! A [`Cursor`] reads segment files directly (blocking reads; mostly from the OS page cache,
//! since the writer handed the bytes over moments ago). It reads only the bytes the writer has
//! flushed and recovery has checked (`valid_len`), so it never sees half a frame, and skips
//! entries acknowledged before it got to them. A [`SpoolReader`] runs a cursor on its own
//! thread and hands batches to async code through a channel of one batch, so memory stays
//! bounded however much the spool holds.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::segment::{self, BadFrame, FILE_HEADER_BYTES, FRAME_HEADER_BYTES, Frame};
use super::{Shared, SpoolEntry, SpoolError, SpoolId};

/// Reads the spool's unacknowledged entries in id order, from the oldest on. Create one with
/// [`Spool::cursor`](super::Spool::cursor).
///
/// Its reads block: call [`Cursor::next_entry`] from a blocking context (a thread,
/// `spawn_blocking`), or use a [`SpoolReader`] from async code.
pub struct Cursor {
    shared: Arc<Shared>,
    /// The segment being read (its first id) and where in it.
    segment: Option<u64>,
    pos: u64,
    file: Option<BufReader<File>>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("segment", &self.segment)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Cursor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Cursor {
            shared,
            segment: None,
            pos: FILE_HEADER_BYTES,
            file: None,
            body: Vec::new(),
        }
    }

    /// The next entry not yet acknowledged, or `None` when the cursor has caught up with the
    /// writer (call again later: entries appended since are returned then). A frame that no
    /// longer reads back (the disk changed under the spool) ends its segment with a warning,
    /// as recovery does.
    pub fn next_entry(&mut self) -> Result<Option<SpoolEntry>, SpoolError> {
        loop {
            let (first, valid_len, sealed) = {
                let state = self.shared.lock();
                let current = match self.segment {
                    Some(s) if state.segments.contains_key(&s) => Some(s),
                    // Deleted (all acknowledged) or not yet chosen: the next one after it.
                    Some(s) => state.segments.range(s + 1..).next().map(|(&k, _)| k),
                    None => state.segments.keys().next().copied(),
                };
                let Some(first) = current else {
                    return Ok(None);
                };
                let meta = &state.segments[&first];
                (first, meta.valid_len, meta.sealed)
            };
            if self.segment != Some(first) {
                self.segment = Some(first);
                self.pos = FILE_HEADER_BYTES;
                self.file = None;
            }
            if self.pos >= valid_len {
                if !sealed {
                    return Ok(None);
                }
                let next = {
                    let state = self.shared.lock();
                    state.segments.range(first + 1..).next().map(|(&k, _)| k)
                };
                match next {
                    Some(next) => {
                        self.segment = Some(next);
                        self.pos = FILE_HEADER_BYTES;
                        self.file = None;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            if self.file.is_none() {
                let path = segment::segment_path(&self.shared.dir, first);
                let mut file = match File::open(&path) {
                    Ok(f) => f,
                    // Deleted since we looked: all of it was acknowledged.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.pos = u64::MAX;
                        continue;
                    }
                    Err(source) => {
                        return Err(SpoolError::Io {
                            path,
                            what: "cannot open a spool segment to read it",
                            source,
                        });
                    }
                };
                file.seek(SeekFrom::Start(self.pos))
                    .map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        what: "cannot read a spool segment",
                        source,
                    })?;
                self.file = Some(BufReader::with_capacity(64 * 1024, file));
            }
            let reader = self.file.as_mut().expect("opened above");
            let frame = segment::read_frame_body(reader, valid_len - self.pos, &mut self.body)
                .and_then(|_| segment::decode_frame(&self.body));
            let record = match frame {
                Ok(Frame::Record(r)) => r,
                Ok(Frame::Checkpoint { .. }) => {
                    self.pos += FRAME_HEADER_BYTES + self.body.len() as u64;
                    continue;
                }
                Err(bad) => {
                    let why = match bad {
                        BadFrame::Torn => "torn".to_string(),
                        BadFrame::Corrupt(why) => why.to_string(),
                        BadFrame::Io(e) => e.to_string(),
                    };
                    tracing::warn!(
                        file = %segment::segment_path(&self.shared.dir, first).display(),
                        offset = self.pos,
                        "a spool frame that was whole no longer reads back ({why}): the rest of the segment is skipped"
                    );
                    let mut state = self.shared.lock();
                    if let Some(meta) = state.segments.get_mut(&first) {
                        meta.valid_len = meta.valid_len.min(self.pos);
                    }
                    self.file = None;
                    continue;
                }
            };
            self.pos += FRAME_HEADER_BYTES + self.body.len() as u64;
            let acked = {
                let state = self.shared.lock();
                state
                    .segments
                    .get(&first)
                    .is_none_or(|m| !m.holds(record.id) || m.is_acked(record.id))
            };
            if !acked {
                return Ok(Some(SpoolEntry {
                    id: SpoolId(record.id),
                    record: record.record,
                    dedup_id: record.dedup_id,
                }));
            }
        }
    }
}

/// Batches of unacknowledged entries for async code, read by a [`Cursor`] on a thread of its
/// own: the entries recovered from an earlier process first, then each one as it is appended.
/// Create one with [`Spool::reader`](super::Spool::reader).
///
/// At most one batch waits in the channel and one is being read, so memory stays at about two
/// batches however much the spool holds. The thread ends when the reader is dropped or the
/// spool is closed.
#[derive(Debug)]
pub struct SpoolReader {
    rx: mpsc::Receiver<Result<Vec<SpoolEntry>, SpoolError>>,
}

impl SpoolReader {
    pub(crate) fn start(shared: Arc<Shared>, max_records: usize, max_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let max_records = max_records.max(1);
        std::thread::Builder::new()
            .name("kpl-spool-reader".into())
            .spawn(move || read_loop(Cursor::new(shared), tx, max_records, max_bytes))
            .expect("the OS can start a thread");
        SpoolReader { rx }
    }

    /// The next batch (at least one entry, at most the reader's limits; a single entry larger
    /// than the byte limit comes alone). `None` once the spool is closed and all is read.
    pub async fn recv(&mut self) -> Option<Result<Vec<SpoolEntry>, SpoolError>> {
        self.rx.recv().await
    }
}

fn read_loop(
    mut cursor: Cursor,
    tx: mpsc::Sender<Result<Vec<SpoolEntry>, SpoolError>>,
    max_records: usize,
    max_bytes: usize,
) {
    loop {
        let generation = cursor.shared.lock().generation;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut failed = None;
        while batch.len() < max_records && bytes < max_bytes {
            match cursor.next_entry() {
                Ok(Some(entry)) => {
                    bytes += entry.record.billed_bytes();
                    batch.push(entry);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let caught_up = batch.is_empty();
        if !caught_up && tx.blocking_send(Ok(batch)).is_err() {
            return;
        }
        if let Some(e) = failed {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if caught_up {
            // Caught up: wait for the writer to flush more (or close), checking now and then
            // whether anyone still listens.
            let mut state = cursor.shared.lock();
            while state.generation == generation && !state.closed {
                if tx.is_closed() {
                    return;
                }
                state = cursor
                    .shared
                    .grown
                    .wait_timeout(state, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if state.closed && state.generation == generation {
                return;
            }
        }
    }
}
