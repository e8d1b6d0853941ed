//! A durable spool: records on disk from the moment they are accepted until Kinesis stores
//! them or they fail for good, so that a crash, a kill or an outage loses nothing accepted.
//!
//! ```text
//! append ─► [writer thread: segment files, group commit, sync policy] ─► OS page cache / disk
//!                │                                             ▲
//!                ▼                                             │ ack / fail (out of order)
//!       Cursor / SpoolReader ─► unacknowledged entries, oldest first ─► producer ─► Kinesis
//! ```
//!
//! # Guarantees
//!
//! - An entry whose [`Spool::append`] returned is read back by every later [`Cursor`] (in this
//!   process, or after a restart on the same directory) until it is acknowledged with
//!   [`Spool::ack`] or [`Spool::fail`], in id order. Entries are returned *at least* once: an
//!   ack written moments before a crash may be lost, and its entry is read again.
//! - What survives which crash depends on the [`SyncPolicy`]. Every policy hands each batch to
//!   the OS (`write(2)`) before `append` returns, so a crash **of the process** (SIGKILL, the OOM
//!   killer, a panic) loses nothing `append` returned. A crash **of the machine** (power, kernel)
//!   loses what was not yet synced: nothing with [`SyncPolicy::EveryRecord`]; the records of
//!   the last interval with [`SyncPolicy::Interval`] (by default at most
//!   [`DEFAULT_SYNC_INTERVAL_MS`] = 100 ms of appends); whatever the OS had not written back
//!   with [`SyncPolicy::Never`] (on Linux typically up to 30 s).
//! - A torn or corrupt frame (a crash mid-write, a flipped bit) is detected by its length and
//!   CRC-32 and skipped with a warning, never a panic; see [`RecoveryReport`]. **The rest of
//!   that segment is skipped with it** (a frame's length cannot be trusted once its CRC is
//!   wrong); other segments are read as usual.
//! - A failed record goes to `dead-letters.jsonl` in the spool ([`DEAD_LETTER_FILE`]; one
//!   JSON line with the partition key, explicit hash key, dedup id, base64 data and the reason)
//!   and is synced there before it is acknowledged.
//! - Checkpoints ([`Spool::checkpoint`]) are frames in the same log, so a checkpoint read back
//!   after a crash never runs ahead of the records appended before it.
//!
//! # Storage: why a segment log and not a crate
//!
//! The access pattern is a queue: append in order, read in order from a cursor, delete when
//! acknowledged (out of order: retries and failures finish records late), recover after a
//! crash, sync per record / per interval / never, and cap the size. Evaluated:
//!
//! - **redb** (5.0, no dependencies, crash-safe copy-on-write B-tree): fits the semantics but
//!   not the cost. Every insert and every delete rewrites the B-tree pages on its path
//!   (4 KiB leaves plus branches), so a 1 KiB record is written several times over, and
//!   removed the same way; a durable commit is at least one `fsync` of a random-access file;
//!   freed pages are reused but the file does not shrink without a compaction, so a size cap
//!   must count live data, not the file.
//! - **fjall** (3.1, an LSM tree): appends go to a journal (sequential, good), but every record
//!   is written again at memtable flush and again by each compaction, and deletes are
//!   tombstones that also need compactions to free space: a queue is the LSM tree's worst
//!   case. It brings background threads and lsm-tree, lz4_flex, xxhash-rust, dashmap, flume,
//!   byteview and tempfile into every service that adds kpl.
//! - **okaywal** (0.3): segments and recovery, but entries leave the log only through its
//!   checkpoint callback, a whole segment at a time, to be stored elsewhere: there is no
//!   per-entry acknowledgement, so out-of-order deletes need a second store anyway.
//! - **simple_wal** (0.3): one file, truncated from the front only (in-order deletes), on
//!   rand 0.7 and thiserror 1.
//!
//! So kpl keeps its own, small segment log: append-only segment
//! files of length-prefixed, CRC-32-checked frames (`crc32fast`, already compiled in through the
//! AWS SDK's checksums), and per segment an append-only ack file of acknowledged ids. Each
//! record is written once (plus 8 bytes of frame header and 8 bytes when acknowledged); a
//! segment whose records are all acknowledged is deleted with one `unlink`, giving its bytes
//! back to the cap; syncing is one `fdatasync` of the active segment per batch (group commit)
//! or per interval; recovery reads the live segments once, sequentially. Cost in memory: one
//! bit per record of the live segments, and one offset per 64 records.
//!
//! # Threads
//!
//! File I/O never runs on the async runtime. One **writer thread** per spool owns every file
//! write: `append` sends its records on a channel and awaits the answer, which comes after the
//! batch is written (and synced, per policy). A dedicated thread rather than `spawn_blocking`
//! per call: batching needs one owner of the active segment (appends from many tasks become
//! one `write` and one `fsync`), ordering of records and checkpoints is the channel's order,
//! and the blocking pool is not tied up by `fsync`s. Reading back is a [`Cursor`] (blocking
//! reads, for a thread) or a [`SpoolReader`], a cursor on its own thread that hands batches to
//! async code. [`WhenFull::Block`] waits on a semaphore of bytes that acknowledgements refill
//! (when a segment is deleted): no polling, no spinning. [`Spool::open`] and dropping the last
//! [`Spool`] (which flushes, syncs and joins the writer) block briefly: call them at startup
//! and shutdown, or from `spawn_blocking`.
//!
//! ```no_run
//! # async fn run() -> Result<(), kpl::spool::SpoolError> {
//! use kpl::spool::{Spool, SpoolConfig};
//! let spool = Spool::open("/var/spool/kpl", SpoolConfig::default())?;
//! let id = spool.append(kpl::UserRecord::new("key", "data"), None).await?;
//! let mut reader = spool.reader(500, 1 << 20);
//! while let Some(batch) = reader.recv().await {
//!     for entry in batch? {
//!         // ... send entry.record to Kinesis, then:
//!         spool.ack(entry.id);
//!     }
//! }
//! # let _ = id; Ok(()) }
//! ```

mod config;
mod cursor;
mod dead_letter;
mod error;
mod recovery;
mod segment;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use tokio::sync::{Semaphore, TryAcquireError, oneshot};

pub use config::{
    DEFAULT_MAX_SPOOL_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SYNC_INTERVAL_MS, LOCK_FILE,
    MAX_CHECKPOINT_KEY_BYTES, MIN_SEGMENT_BYTES, SpoolConfig, SyncPolicy, WhenFull,
};
pub use cursor::{Cursor, SpoolReader};
pub use error::SpoolError;
pub use recovery::{ProblemKind, RecoveryProblem, RecoveryReport};
pub use writer::DEAD_LETTER_FILE;

use crate::dedup::DedupId;
use crate::record::UserRecord;
use segment::{MAX_FRAME_BODY_BYTES, SegmentMeta};
use writer::{Op, Writer, WriterParts};

fn check_checkpoint_key(key: &str) -> Result<(), SpoolError> {
    if key.len() > MAX_CHECKPOINT_KEY_BYTES {
        return Err(SpoolError::Unstorable(format!(
            "a checkpoint key of {} bytes is longer than the {MAX_CHECKPOINT_KEY_BYTES} allowed",
            key.len()
        )));
    }
    Ok(())
}

/// An entry's id in its spool: increasing in append order, never reused in that directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpoolId(pub u64);

impl std::fmt::Display for SpoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A record read back from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// What to [`Spool::ack`] or [`Spool::fail`] it by.
    pub id: SpoolId,
    /// Partition key, explicit hash key and data, as appended.
    pub record: UserRecord,
    /// The dedup id it was appended with: send it with this one again, so readers can drop
    /// the copies a restart resends.
    pub dedup_id: Option<DedupId>,
}

/// Counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolStats {
    /// Entries not yet acknowledged.
    pub entries: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes charged against the cap (record frames of the segments on disk).
    pub bytes: u64,
}

/// State shared by the writer, cursors and callers.
pub(crate) struct Shared {
    pub dir: PathBuf,
    state: Mutex<State>,
    /// Notified after every flush, segment deletion and close.
    pub grown: Condvar,
}

pub(crate) struct State {
    pub segments: std::collections::BTreeMap<u64, SegmentMeta>,
    pub checkpoints: HashMap<String, Vec<u8>>,
    /// Bumped by every change a cursor may wait for.
    pub generation: u64,
    pub closed: bool,
    pub error: Option<String>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A spool directory, open for appending and reading back. Cheap to clone; the writer closes
/// (flushing and syncing everything) when the last clone is dropped.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.shared.dir)
            .finish()
    }
}

struct Inner {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    budget: Arc<Semaphore>,
    waiters: Arc<AtomicUsize>,
    config: SpoolConfig,
    report: RecoveryReport,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.send(Op::Close);
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

impl Inner {
    fn send(&self, op: Op) -> Result<(), SpoolError> {
        self.ops
            .send(op)
            .map_err(|_| SpoolError::Stopped("the spool's writer thread has ended".into()))
    }
}

/// Undoes the waiter count even when an append is cancelled while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, recovers what an earlier process left
    /// there (see [`Spool::recovery`]) and starts the writer thread. Blocks while it reads the
    /// directory: call it at startup or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, config: SpoolConfig) -> Result<Spool, SpoolError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| SpoolError::Io {
            path: dir.clone(),
            what: "cannot create the spool directory",
            source,
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| SpoolError::Io {
                path: lock_path.clone(),
                what: "cannot create the spool's lock file",
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(SpoolError::Io {
                    path: lock_path,
                    what: "cannot lock the spool directory",
                    source,
                });
            }
        }
        let recovered = recovery::recover(&dir)?;
        let used: u64 = recovered.segments.values().map(|m| m.record_bytes).sum();
        let available = config.max_bytes.saturating_sub(used);
        let budget = Arc::new(Semaphore::new(
            usize::try_from(available)
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS),
        ));
        let waiters = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                segments: recovered.segments,
                checkpoints: recovered.checkpoints,
                generation: 0,
                closed: false,
                error: None,
            }),
            grown: Condvar::new(),
        });
        let writer = Writer::start(WriterParts {
            shared: shared.clone(),
            config: config.clone(),
            next_id: recovered.next_id,
            budget: budget.clone(),
            debt: used.saturating_sub(config.max_bytes),
            waiters: waiters.clone(),
            lock,
        })?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("kpl-spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| SpoolError::Io {
                path: dir,
                what: "cannot start the spool's writer thread",
                source,
            })?;
        Ok(Spool {
            inner: Arc::new(Inner {
                shared,
                ops: tx,
                budget,
                waiters,
                config,
                report: recovered.report,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// What [`Spool::open`] recovered and skipped.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Stores one record (with the dedup id it will be sent with, if any) and returns its id,
    /// once it is written (and synced, per [`SyncPolicy`]). At the size cap it waits or fails
    /// as [`WhenFull`] says. Cancelling the future while it waits for room stores nothing;
    /// once the record is handed to the writer, it is stored whether or not anyone awaits.
    pub async fn append(
        &self,
        record: UserRecord,
        dedup_id: Option<DedupId>,
    ) -> Result<SpoolId, SpoolError> {
        Ok(self.append_batch(vec![(record, dedup_id)]).await?.start)
    }

    /// Stores records in order under consecutive ids (one channel message, one write, one sync).
    pub async fn append_batch(
        &self,
        records: Vec<(UserRecord, Option<DedupId>)>,
    ) -> Result<Range<SpoolId>, SpoolError> {
        self.append_batch_with_checkpoints(records, Vec::new())
            .await
    }

    /// [`Spool::append_batch`], then [`Spool::checkpoint`] of each `(key, value)`, handled by
    /// the writer as one operation: the checkpoints are written right after the records, in the
    /// same buffered write, never in a later batch. A file source's position stored so is in
    /// the log with the lines it covers: a crash between the two (which would make a restart
    /// read those lines again and spool them under new ids) needs the process to die inside
    /// that one `write(2)`.
    pub async fn append_batch_with_checkpoints(
        &self,
        records: Vec<(UserRecord, Option<DedupId>)>,
        checkpoints: Vec<(String, Vec<u8>)>,
    ) -> Result<Range<SpoolId>, SpoolError> {
        for (key, _) in &checkpoints {
            check_checkpoint_key(key)?;
        }
        let n = records.len() as u64;
        let mut bytes = 0u64;
        for (record, dedup_id) in &records {
            if record.partition_key.len() > usize::from(u16::MAX) {
                return Err(SpoolError::Unstorable(format!(
                    "a partition key of {} bytes cannot be spooled (Kinesis allows 256 characters): validate records before appending",
                    record.partition_key.len()
                )));
            }
            let frame = segment::record_frame_bytes(record, *dedup_id);
            if frame - segment::FRAME_HEADER_BYTES > u64::from(MAX_FRAME_BODY_BYTES) {
                return Err(SpoolError::Unstorable(format!(
                    "a record of {} bytes cannot be spooled (the largest Kinesis takes is 10 MiB): validate records before appending",
                    record.billed_bytes()
                )));
            }
            bytes += frame;
        }
        if n == 0 {
            return Err(SpoolError::Unstorable("append_batch of no records".into()));
        }
        let cap = self.inner.config.max_bytes;
        if bytes > cap || bytes > u64::from(u32::MAX) {
            return Err(SpoolError::Unstorable(format!(
                "{n} records of {bytes} bytes on disk cannot fit the spool's cap of {cap} bytes (nor 4 GiB in one batch): append fewer at once or raise max_bytes"
            )));
        }
        let permits = bytes as u32;
        let budget = &self.inner.budget;
        match budget.try_acquire_many(permits) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) if self.inner.config.when_full == WhenFull::Refuse => {
                return Err(SpoolError::Full {
                    max_bytes: cap,
                    needed: bytes,
                });
            }
            Err(_) => {
                self.inner.waiters.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&self.inner.waiters);
                self.inner.send(Op::Nudge)?;
                budget
                    .acquire_many(permits)
                    .await
                    .expect("the budget semaphore is never closed")
                    .forget();
            }
        }
        let (reply, answer) = oneshot::channel();
        self.inner.send(Op::Append {
            records,
            checkpoints,
            reply,
        })?;
        let first = answer.await.map_err(|_| {
            SpoolError::Stopped("the spool's writer thread ended before answering".into())
        })??;
        Ok(SpoolId(first)..SpoolId(first + n))
    }

    /// Marks a stored entry done (Kinesis has it): it is not read back again, and its segment
    /// is deleted once all of its entries are. Unknown and repeated ids are ignored. Does not
    /// wait; [`Spool::sync`] waits for it.
    pub fn ack(&self, id: SpoolId) {
        let _ = self.inner.send(Op::Ack(vec![id.0]));
    }

    /// [`Spool::ack`] for many ids at once.
    pub fn ack_many(&self, ids: impl IntoIterator<Item = SpoolId>) {
        let ids: Vec<u64> = ids.into_iter().map(|id| id.0).collect();
        if !ids.is_empty() {
            let _ = self.inner.send(Op::Ack(ids));
        }
    }

    /// The entry failed for good: append it to the spool's [`DEAD_LETTER_FILE`] with `reason`
    /// and, once that is synced, acknowledge it. Does not wait; [`Spool::sync`] waits for it.
    pub fn fail(&self, id: SpoolId, reason: impl Into<String>) {
        let _ = self.inner.send(Op::Fail {
            id: id.0,
            reason: reason.into(),
        });
    }

    /// Records `value` under `key` (e.g. a file source's position after the lines appended so
    /// far), in the log after every record appended before this call. After a restart,
    /// [`Spool::checkpoint_value`] returns the latest one that survived, which never covers a
    /// record that did not. Does not wait.
    pub fn checkpoint(&self, key: &str, value: Vec<u8>) -> Result<(), SpoolError> {
        check_checkpoint_key(key)?;
        self.inner.send(Op::Checkpoint {
            key: key.to_string(),
            value,
        })
    }

    /// The latest checkpoint under `key` (recovered, or written by this process).
    pub fn checkpoint_value(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.shared.lock().checkpoints.get(key).cloned()
    }

    /// Every checkpoint key with its latest value.
    pub fn checkpoints(&self) -> HashMap<String, Vec<u8>> {
        self.inner.shared.lock().checkpoints.clone()
    }

    /// Waits until everything sent before this call (appends, acks, failures, checkpoints) is
    /// written and synced.
    pub async fn sync(&self) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.inner.send(Op::Sync(reply))?;
        answer.await.map_err(|_| {
            SpoolError::Stopped("the spool's writer thread ended before answering".into())
        })?
    }

    /// A cursor at the oldest entry not yet acknowledged (blocking reads).
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.inner.shared.clone())
    }

    /// A reader thread that sends the unacknowledged entries, oldest first and then as they
    /// are appended, in batches of at most `max_records` entries and about `max_bytes` bytes.
    pub fn reader(&self, max_records: usize, max_bytes: usize) -> SpoolReader {
        SpoolReader::start(self.inner.shared.clone(), max_records, max_bytes)
    }

    /// Entries, segments and bytes now.
    pub fn stats(&self) -> SpoolStats {
        let state = self.inner.shared.lock();
        SpoolStats {
            entries: state.segments.values().map(|m| m.live).sum(),
            segments: state.segments.len(),
            bytes: state.segments.values().map(|m| m.record_bytes).sum(),
        }
    }
}
