//! A producer whose records are accepted once they are in a [`Spool`] on disk, and whose
//! outcomes arrive as delivery reports on one stream, in batches: no future per record.
//!
//! ```text
//! append(_batch) ─► validate ─► spool.append_batch ─► SpoolId          (caller's task)
//!
//! feeder task: spool.reader(..) ─► Producer::send_batch (waits for the in-memory room)
//!     each batch's outcomes: stored ─► spool.ack_many; failed for good ─► spool.fail
//!     (dead-letters.jsonl with its reason) ─► one Vec<Delivery> on the report channel
//! ```
//!
//! Records an earlier process left in the spool are read first and reported the same way.
//! Memory stays bounded by the producer's `max_outstanding_records` / `max_outstanding_bytes`
//! (plus the spool reader's two batches read ahead and the one waiting for room) however much
//! the spool holds: an outage of many minutes fills the spool, not the heap.
//!
//! With [`ProducerConfig::dedup_ids`] on, a record's dedup id is the spool's producer id
//! (drawn once per spool directory and kept in it as a checkpoint) and its [`SpoolId`], so a
//! record resent after a restart carries the id of its first sending and a
//! [`Deduper`](crate::dedup::Deduper) drops the copy.
//!
//! Expiry is the spool's: the in-memory `record_ttl` is raised to its maximum (7 days) and
//! `max_attempts` is unlimited, so records wait out an outage and the spool's size cap decides
//! (block or refuse new ones); only a fatal answer (or a record the producer refuses: one
//! spooled under larger limits) fails a record for good.
//!
//! Stopping: [`shutdown`](SpooledProducer::shutdown) waits until the spool is empty;
//! [`abort`](SpooledProducer::abort), and dropping the last handle without either, give up at
//! once and leave what is unresolved in the spool for the next process, as a crash would (after
//! a drop the directory is unlocked once the feeder task has stopped, moments later).
//!
//! # `ProducerConfig::spool` and `Producer`
//!
//! [`ProducerConfig::spool`] names a spool for [`SpooledProducer::connect`].
//! [`Producer::new`] and [`Producer::connect`] refuse a config that names one, with an error
//! that says to use `SpooledProducer`: their per-record futures live in memory, and a future
//! per record is exactly what lets memory grow with the backlog, so a spooled record's outcome
//! is a [`Delivery`] report instead (one pipeline: this module feeds a plain `Producer`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::KinesisApi;
use crate::dedup::DedupId;
use crate::producer::config::MAX_RECORD_TTL_SECS;
use crate::producer::error::{FailureReason, ProducerError, RecordFailure, SendErrorReason};
use crate::producer::record::{BatchFuture, RecordResult};
use crate::producer::{ConfigError, ConnectOptions, FlushError, Producer, ProducerConfig};
use crate::record::UserRecord;
use crate::spool::{Spool, SpoolConfig, SpoolEntry, SpoolError, SpoolId};

/// The checkpoint key under which a spool keeps its dedup producer id.
pub const DEDUP_PRODUCER_CHECKPOINT: &str = "kpl.dedup-producer";

/// Most records the feeder hands to the producer at once.
const FEED_BATCH_RECORDS: usize = 500;
/// About the most bytes the feeder hands to the producer at once.
const FEED_BATCH_BYTES: usize = 1 << 20;
/// Delivery batches that may wait on the report channel before outcomes back up.
const REPORT_CHANNEL_BATCHES: usize = 64;

/// The outcome of one spooled record.
#[derive(Debug)]
pub struct Delivery {
    /// Its id in the spool ([`SpooledProducer::append`] returned it, or an earlier process's).
    pub id: SpoolId,
    /// Stored (shard, sequence number, dedup id), or failed for good: then the record is in
    /// the spool's dead-letter file with this failure's text as its reason.
    pub result: RecordResult,
}

/// Why a [`SpooledProducer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpooledProducerError {
    /// The spool directory could not be opened.
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    /// The producer could not start.
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

/// Why a record was not accepted into the spool.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record breaks a Kinesis limit, or the producer is closed; nothing was spooled.
    #[error("record {index} not accepted: {reason}")]
    Refused {
        /// Its index in the batch (0 for `append`).
        index: usize,
        /// Why.
        reason: SendErrorReason,
    },
    /// The spool did not take it (full with `WhenFull::Refuse`, or a disk error).
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A [`Producer`] fed from a [`Spool`]; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct SpooledProducer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SpooledProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpooledProducer")
            .field("spool", &self.inner.spool)
            .finish_non_exhaustive()
    }
}

struct Inner {
    producer: Producer,
    spool: Spool,
    dedup_producer: Option<u64>,
    /// Records in the spool and not yet resolved (stored or failed for good).
    progress: Arc<Progress>,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    feeder: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

struct Progress {
    unresolved: AtomicU64,
    changed: Notify,
    /// Most records the pipeline held at once (for tests and metrics).
    peak_outstanding: AtomicU64,
}

impl SpooledProducer {
    /// Opens (or creates) the spool in `dir`, starts a producer for `stream` over `api` and the
    /// task that feeds it from the spool, oldest record first (those an earlier process left,
    /// then what [`append`](Self::append) adds). Returns the delivery reports' receiver: read
    /// it (or drop it) — outcomes wait while it is full, and with them the buffer room.
    /// `config.spool` is ignored: the spool is `dir` with `spool_config`.
    pub async fn new(
        api: Arc<dyn KinesisApi>,
        stream: &str,
        mut config: ProducerConfig,
        dir: impl Into<PathBuf>,
        spool_config: SpoolConfig,
    ) -> Result<(SpooledProducer, mpsc::Receiver<Vec<Delivery>>), SpooledProducerError> {
        // The spool is the one given here; the inner producer keeps records in memory.
        config.spool = None;
        config.validate().map_err(ProducerError::from)?;
        let dir = dir.into();
        let spool = tokio::task::spawn_blocking(move || Spool::open(dir, spool_config))
            .await
            .map_err(|e| SpoolError::Stopped(format!("opening the spool panicked: {e}")))??;
        let dedup_producer = if config.dedup_ids {
            let kept = spool
                .checkpoint_value(DEDUP_PRODUCER_CHECKPOINT)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            let id = match kept {
                Some(id) => id,
                None => {
                    let id: u64 = rand::random();
                    spool.checkpoint(DEDUP_PRODUCER_CHECKPOINT, id.to_be_bytes().to_vec())?;
                    spool.sync().await?;
                    id
                }
            };
            Some(id)
        } else {
            None
        };
        // Expiry is the spool's: neither the TTL nor the attempt count ends a record that a
        // retry may still store (an outage of any length); only a fatal answer does.
        config.record_ttl = Duration::from_secs(MAX_RECORD_TTL_SECS);
        config.max_attempts = u32::MAX;
        let max_records = config.max_outstanding_records.min(FEED_BATCH_RECORDS);
        let max_bytes = config.max_outstanding_bytes.min(FEED_BATCH_BYTES);
        let producer = Producer::with_dedup_producer(api, stream, config, dedup_producer).await?;
        let progress = Arc::new(Progress {
            unresolved: AtomicU64::new(spool.stats().entries),
            changed: Notify::new(),
            peak_outstanding: AtomicU64::new(0),
        });
        let (reports, rx) = mpsc::channel(REPORT_CHANNEL_BATCHES);
        let (stop, stopped) = watch::channel(false);
        let feeder = tokio::spawn(
            Feeder {
                producer: producer.clone(),
                spool: spool.clone(),
                progress: progress.clone(),
                reports,
            }
            .run(max_records, max_bytes, stopped),
        );
        Ok((
            SpooledProducer {
                inner: Arc::new(Inner {
                    producer,
                    spool,
                    dedup_producer,
                    progress,
                    closed: AtomicBool::new(false),
                    stop,
                    feeder: tokio::sync::Mutex::new(Some(feeder)),
                }),
            },
            rx,
        ))
    }

    /// A spooled producer for `stream` on the spool [`ProducerConfig::spool`] names, connected
    /// as [`Producer::connect`] connects (endpoint, credentials and region found as the AWS
    /// CLI finds them). A config without a spool is refused with a [`ConfigError`] naming the
    /// `spool` field.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use kpl::UserRecord;
    /// use kpl::producer::{ConnectOptions, ProducerConfig, SpoolSettings, SpooledProducer};
    /// let config = ProducerConfig {
    ///     spool: Some(SpoolSettings::new("/var/spool/kpl")),
    ///     ..ProducerConfig::default()
    /// };
    /// let (producer, mut reports) =
    ///     SpooledProducer::connect("my-stream", ConnectOptions::default(), config).await?;
    /// tokio::spawn(async move {
    ///     while let Some(batch) = reports.recv().await {
    ///         for delivery in batch {
    ///             if let Err(failure) = delivery.result {
    ///                 eprintln!("record {} is a dead letter: {failure}", delivery.id);
    ///             }
    ///         }
    ///     }
    /// });
    /// producer.append(UserRecord::new("user-42", "hello")).await?; // on disk now
    /// producer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        stream: &str,
        options: ConnectOptions,
        config: ProducerConfig,
    ) -> Result<(SpooledProducer, mpsc::Receiver<Vec<Delivery>>), SpooledProducerError> {
        config.validate().map_err(ProducerError::from)?;
        let Some(spool) = config.spool.clone() else {
            return Err(ProducerError::from(ConfigError {
                field: "spool",
                value: "None".into(),
                requirement: "SpooledProducer::connect needs a spool directory: set spool to Some(SpoolSettings::new(DIR)), or use Producer::connect".into(),
            })
            .into());
        };
        let options = ConnectOptions {
            attempt_timeout: options.attempt_timeout.or(Some(config.request_timeout)),
            ..options
        };
        let api = crate::client::connect(options).await;
        SpooledProducer::new(api, stream, config, spool.dir, spool.config).await
    }

    /// Validates `record` and stores it in the spool: accepted once this returns. Its outcome
    /// arrives as a [`Delivery`] with the returned id.
    pub async fn append(&self, record: UserRecord) -> Result<SpoolId, AppendError> {
        Ok(self.append_batch(vec![record]).await?.start)
    }

    /// [`append`](Self::append) for many records at once (one write, one sync); all or none
    /// are accepted.
    pub async fn append_batch(
        &self,
        records: Vec<UserRecord>,
    ) -> Result<std::ops::Range<SpoolId>, AppendError> {
        self.append_batch_with_checkpoints(records, Vec::new())
            .await
    }

    /// [`append_batch`](Self::append_batch) and, in the same write to the spool, the
    /// checkpoints `(key, value)` (see [`Spool::append_batch_with_checkpoints`]): e.g. the
    /// position in the input after these records, so a restart resumes there and neither
    /// reads them again nor skips one.
    pub async fn append_batch_with_checkpoints(
        &self,
        records: Vec<UserRecord>,
        checkpoints: Vec<(String, Vec<u8>)>,
    ) -> Result<std::ops::Range<SpoolId>, AppendError> {
        for (index, record) in records.iter().enumerate() {
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(AppendError::Refused {
                    index,
                    reason: SendErrorReason::Closed,
                });
            }
            self.inner
                .producer
                .check(record)
                .map_err(|reason| AppendError::Refused { index, reason })?;
        }
        let n = records.len() as u64;
        let progress = &self.inner.progress;
        // Counted before the append, so an outcome never arrives before its count.
        progress.unresolved.fetch_add(n, Ordering::SeqCst);
        let batch = records.into_iter().map(|r| (r, None)).collect();
        match self
            .inner
            .spool
            .append_batch_with_checkpoints(batch, checkpoints)
            .await
        {
            Ok(ids) => Ok(ids),
            Err(e) => {
                progress.unresolved.fetch_sub(n, Ordering::SeqCst);
                progress.changed.notify_waiters();
                Err(e.into())
            }
        }
    }

    /// The spool (for checkpoints, stats and its recovery report).
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// The producer fed from the spool (for metrics).
    pub fn producer(&self) -> &Producer {
        &self.inner.producer
    }

    /// The dedup id a record with spool id `id` is sent with, if dedup ids are on.
    pub fn dedup_id(&self, id: SpoolId) -> Option<DedupId> {
        self.inner.dedup_producer.map(|producer| DedupId {
            producer,
            seq: id.0,
        })
    }

    /// Records in the spool not yet stored or failed for good, counting those of an append
    /// still under way (waiting for room, say) from the moment it was called.
    pub fn unresolved(&self) -> u64 {
        self.inner.progress.unresolved.load(Ordering::SeqCst)
    }

    /// The most records the in-memory pipeline held at once so far, as the feeder saw it
    /// after each hand-over: never above `max_outstanding_records`.
    pub fn peak_outstanding_records(&self) -> u64 {
        self.inner.progress.peak_outstanding.load(Ordering::SeqCst)
    }

    /// Waits until every record in the spool (appended so far, or left by an earlier process)
    /// is stored or failed for good, and the spool has synced the acknowledgements.
    ///
    /// Like [`Producer::flush`], it does not wait out `record_max_buffered_time`: what the
    /// producer holds is sent at once, and so is what the feeder hands over while this waits.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let progress = &self.inner.progress;
        let producer = &self.inner.producer;
        loop {
            let changed = progress.changed.notified();
            if progress.unresolved.load(Ordering::SeqCst) == 0 {
                break;
            }
            if producer.outstanding_records() > 0 {
                // Sends every open aggregate now and waits for those records; a failed
                // pipeline fails them, which resolves them here too.
                let _ = producer.flush().await;
            } else {
                // The feeder's next hand-over (or an outcome) wakes this.
                changed.await;
            }
        }
        self.inner.spool.sync().await
    }

    /// Stops taking records, waits for everything in the spool to resolve
    /// ([`flush`](Self::flush)), stops the producer and the feeder, and syncs the spool. The spool
    /// directory is closed (unlocked) once the last clone of this handle is dropped.
    pub async fn shutdown(&self) -> Result<(), FlushError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let flushed = self.flush().await;
        let result = self.inner.producer.shutdown().await;
        self.stop_feeder().await;
        if let Err(e) = flushed.and(self.inner.spool.sync().await) {
            tracing::error!(error = %e, "the spool did not sync at shutdown");
        }
        result
    }

    /// Gives up at once: records not yet stored stay in the spool, unacknowledged, for the
    /// next process on the directory (some may be stored already and sent again: duplicates,
    /// which dedup ids let readers drop). Nothing goes to the dead-letter file.
    pub async fn abort(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.producer.abort().await;
        self.stop_feeder().await;
    }

    async fn stop_feeder(&self) {
        let _ = self.inner.stop.send(true);
        if let Some(task) = self.inner.feeder.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// Reads the spool and feeds the producer; turns outcomes into acks, dead letters, reports.
struct Feeder {
    producer: Producer,
    spool: Spool,
    progress: Arc<Progress>,
    reports: mpsc::Sender<Vec<Delivery>>,
}

impl Feeder {
    async fn run(self, max_records: usize, max_bytes: usize, mut stop: watch::Receiver<bool>) {
        let mut reader = self.spool.reader(max_records, max_bytes);
        let mut pending = JoinSet::new();
        // Told to stop (shutdown, abort, or the last handle dropped), or ended on its own.
        let stopped = loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break true,
                Some(_) = pending.join_next(), if !pending.is_empty() => {}
                batch = reader.recv() => match batch {
                    None => break false,
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "cannot read the spool back; records stay in it for the next run");
                        break false;
                    }
                    Some(Ok(entries)) => {
                        // Waiting for buffer room must not outlast a stop.
                        let fed = tokio::select! {
                            biased;
                            _ = stop.changed() => None,
                            fed = self.feed(entries, &mut pending) => Some(fed),
                        };
                        match fed {
                            None => break true,
                            Some(false) => break false,
                            Some(true) => {}
                        }
                    }
                },
            }
        };
        if stopped {
            // After a shutdown nothing is left to abort; after `abort` it is done already;
            // when the last handle was dropped without either, what the producer holds fails
            // with `Aborted` and stays in the spool for the next process (as after a crash)
            // instead of waiting out its TTL in a producer nobody can reach.
            self.producer.abort().await;
        }
        // Outcomes of what was handed over still arrive (all at once after an abort).
        while pending.join_next().await.is_some() {}
    }

    /// Hands `entries` to the producer. `false` once the producer is closed.
    async fn feed(&self, entries: Vec<SpoolEntry>, pending: &mut JoinSet<()>) -> bool {
        let (ids, seqs, records) = split(entries);
        match self
            .producer
            .send_batch_numbered(records, Some(seqs.clone()))
            .await
        {
            Ok(future) => {
                self.note_outstanding();
                pending.spawn(self.resolve(future, ids));
                true
            }
            Err(e)
                if matches!(e.reason, SendErrorReason::Closed)
                    || matches!(e.reason, SendErrorReason::PipelineFailed { .. }) =>
            {
                false
            }
            Err(e) => {
                // A record the producer refuses (limits changed since an earlier process
                // spooled it) or a batch too large: one at a time, refused ones dead-lettered.
                let mut refused = Vec::new();
                for ((id, seq), record) in ids.into_iter().zip(seqs).zip(e.records) {
                    match self
                        .producer
                        .send_batch_numbered(vec![record], Some(vec![seq]))
                        .await
                    {
                        Ok(future) => {
                            self.note_outstanding();
                            pending.spawn(self.resolve(future, vec![id]));
                        }
                        Err(e)
                            if matches!(e.reason, SendErrorReason::Closed)
                                || matches!(e.reason, SendErrorReason::PipelineFailed { .. }) =>
                        {
                            return false;
                        }
                        Err(e) => {
                            let failure = RecordFailure {
                                reason: FailureReason::Refused { reason: e.reason },
                                attempts: Vec::new(),
                                record: e.records.into_iter().next(),
                            };
                            self.spool.fail(id, failure.to_string());
                            refused.push(Delivery {
                                id,
                                result: Err(failure),
                            });
                        }
                    }
                }
                let n = refused.len() as u64;
                if n > 0 {
                    let _ = self.reports.send(refused).await;
                    self.resolved(n);
                }
                true
            }
        }
    }

    /// After a hand-over: the peak, and a wake-up for a `flush` waiting to send it at once.
    fn note_outstanding(&self) {
        let now = self.producer.outstanding_records() as u64;
        debug_assert!(now <= self.producer.max_outstanding_records() as u64);
        self.progress
            .peak_outstanding
            .fetch_max(now, Ordering::SeqCst);
        self.progress.changed.notify_waiters();
    }

    fn resolved(&self, n: u64) {
        if n > 0 {
            self.progress.unresolved.fetch_sub(n, Ordering::SeqCst);
            self.progress.changed.notify_waiters();
        }
    }

    /// Waits for a batch's outcomes and settles them in the spool.
    fn resolve(
        &self,
        future: BatchFuture,
        ids: Vec<SpoolId>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let spool = self.spool.clone();
        let reports = self.reports.clone();
        let progress = self.progress.clone();
        async move {
            let outcomes = future.await;
            let mut stored = Vec::with_capacity(ids.len());
            let mut deliveries = Vec::with_capacity(ids.len());
            for (id, result) in ids.into_iter().zip(outcomes) {
                match &result {
                    Ok(_) => stored.push(id),
                    // Not resolved: left in the spool for the next process.
                    Err(f) if stays_spooled(&f.reason) => continue,
                    Err(f) => spool.fail(id, f.to_string()),
                }
                deliveries.push(Delivery { id, result });
            }
            spool.ack_many(stored);
            let n = deliveries.len() as u64;
            if !deliveries.is_empty() {
                let _ = reports.send(deliveries).await;
            }
            if n > 0 {
                progress.unresolved.fetch_sub(n, Ordering::SeqCst);
                progress.changed.notify_waiters();
            }
        }
    }
}

/// A failure that means "this process stopped", not "this record cannot be stored".
fn stays_spooled(reason: &FailureReason) -> bool {
    matches!(
        reason,
        FailureReason::Aborted { .. } | FailureReason::PipelineFailed { .. } | FailureReason::Lost
    )
}

fn split(entries: Vec<SpoolEntry>) -> (Vec<SpoolId>, Vec<u64>, Vec<UserRecord>) {
    let mut ids = Vec::with_capacity(entries.len());
    let mut seqs = Vec::with_capacity(entries.len());
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        ids.push(entry.id);
        seqs.push(entry.dedup_id.map_or(entry.id.0, |d| d.seq));
        records.push(entry.record);
    }
    (ids, seqs, records)
}
