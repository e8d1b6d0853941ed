//! The producer: hand it records, get back where each one landed.
//!
//! ```text
//!  send(_batch) ──► validate ──► buffer permits ──┐            (caller's task)
//!                                                 │ channel
//! ┌───────────────────────────────────────────────▼───────────── pipeline task ──┐
//! │ routes      hash key: explicit, or MD5(partition key) through a key cache    │
//! │ shard_map   predict the shard: binary search of the open shards' ranges      │
//! │             (the cache keeps each key's shard index until the map changes,   │
//! │             and its slot in its aggregate's key table)                       │
//! │ aggregator  one KPL aggregate per shard (per hash key while the map is       │
//! │             stale); finished when full or after record_max_buffered_time;    │
//! │             optionally zstd-framed                                           │
//! │ limiter     per shard: every sliding 1.015 s within 97-100 % of 1000 rec/s   │
//! │             and 1 MiB/s (key + data); throttling slows it down (AIMD)        │
//! │ collector   PutRecords calls of ≤ 500 entries, ≤ 5 MiB (key + data bytes)    │
//! │             whose aggregates get their MD5 trailers together, 8 side by side │
//! │ sender      ≤ max_concurrent_requests calls, each ≤ request_timeout ─────────┼──► Kinesis
//! │ retrier     per entry: stored ─► receipts; wrong shard ─► refresh the map,   │
//! │             aggregate again; retryable ─► backoff, back to the limiter;      │
//! │             fatal / attempts / TTL ─► failures                               │
//! └───────────────────────────────────────────────┬──────────────────────────────┘
//!                                                 ▼
//!                 RecordFuture, BatchFuture ─► Ok(Receipt) | Err(RecordFailure) each
//! ```
//!
//! # Delivery
//! Every accepted record resolves exactly once: to a [`Receipt`] (shard, sequence number,
//! sub-sequence number, attempts) or to a [`RecordFailure`] that carries the record back with
//! its attempts and a reason that says what to do. Only failed entries of a PutRecords call are
//! retried, so a retry never duplicates what the call stored. Duplicates can still arise (as with
//! every Kinesis producer): a call that times out after the service stored it, or an aggregate
//! that landed on a shard created by a split and is sent again because the KCL would drop it.
//!
//! # Backpressure
//! Each unresolved record holds buffer room (`max_outstanding_records`, `max_outstanding_bytes`).
//! [`Producer::send`] waits for room; [`Producer::try_send`] fails at once and hands the record
//! back; [`Producer::send_batch`] waits for room for a whole batch at once. Room returns when
//! the record resolves; dropping a [`RecordFuture`] does not cancel the record and does not
//! leak room.
//!
//! # Shutting down
//! [`Producer::flush`] sends everything accepted so far and waits until it has resolved;
//! [`Producer::shutdown`] does the same, then stops the pipeline task; later sends fail with
//! [`SendErrorReason::Closed`]. [`Producer::abort`] gives up instead: every record not yet
//! resolved fails at once with [`FailureReason::Aborted`], its record handed back. A
//! [`KinesisApi`] whose call panics fails that call like a retryable error; if the pipeline task
//! itself fails (a bug), every record it had not resolved fails with
//! [`FailureReason::PipelineFailed`] and its record, sends fail at once, and `flush` /
//! `shutdown` return [`FlushError::PipelineFailed`]. Dropping the last `Producer` handle without `shutdown` lets the
//! pipeline task finish what was accepted in the background (receipts still resolve); it stops
//! when the runtime does, so call `shutdown` before the runtime ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{KinesisApi, StreamId};
use crate::codec::aggregate::{AggregateLimits, lone_aggregate_len};
use crate::codec::frame::Compressor;
use crate::dedup::{DEDUP_ID_MAX_LEN, DEDUP_TAG_KEY};
use crate::limits::DEFAULT_MAX_RECORD_BYTES;
use crate::producer::aggregator::Aggregator;
use crate::producer::pipeline::{Ack, BatchInput, Input, Pipeline};
use crate::producer::record::{BufferRoom, PendingRecord};
use crate::producer::shard_map::{ShardMap, ShardMapError};
use crate::producer::unwind::CatchUnwind;
use crate::record::{RecordError, UserRecord};

mod aggregator;
pub mod backoff;
mod clock;
mod collector;
pub mod config;
pub mod error;
pub mod hot_keys;
pub mod limiter;
pub mod metrics;
mod pipeline;
pub mod record;
mod retrier;
mod routes;
mod sender;
pub mod shard_map;
pub mod spooled;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod stage_bench;
mod unwind;

pub use crate::client::sdk::ConnectOptions;
pub use config::{Compression, ConfigError, ProducerConfig, SpoolSettings};
pub use error::{
    FailureReason, FlushError, ProducerError, RecordFailure, SendBatchError, SendError,
    SendErrorReason,
};
pub use hot_keys::{HotKey, HotShard};
pub use metrics::{MetricsSnapshot, ShardCounters};
pub use record::{Attempt, AttemptError, BatchFuture, Receipt, RecordFuture, RecordResult};
pub use spooled::{AppendError, Delivery, SpooledProducer, SpooledProducerError};

/// Most user-record slots (~100 bytes each) and aggregate-buffer bytes the aggregator keeps
/// for reuse: what a few hundred thousand records/s keep in flight, so a long-running service
/// does not hold on to all the memory of a past burst.
const MAX_KEPT_SLOTS: usize = 1 << 17;
const MAX_KEPT_BYTES: usize = 32 << 20;

/// Mixed into `rng_seed` for the dedup producer id.
const DEDUP_SEED_SALT: u64 = 0xdeed_0001_d5ee_d5a1;

/// More than a lone tagged aggregate adds to any record's key + data (framing, key table,
/// explicit hash key, field headers, the dedup tag): below it, no exact check is needed.
const TAGGED_OVERHEAD_BOUND: usize = 2 * 1024 + 256;

/// A handle to a running producer. Cheap to clone; all clones feed the same pipeline.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use kpl::producer::{ConnectOptions, Producer, ProducerConfig};
/// use kpl::UserRecord;
///
/// let producer =
///     Producer::connect("my-stream", ConnectOptions::default(), ProducerConfig::default()).await?;
/// let receipt = producer
///     .send(UserRecord::new("user-42", &b"{\"clicked\":true}"[..]))
///     .await?
///     .await?;
/// println!("stored on {} as {}", receipt.shard_id, receipt.sequence_number);
/// producer.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

struct Shared {
    input: mpsc::UnboundedSender<Input>,
    room: Arc<BufferRoom>,
    max_record_bytes: usize,
    max_outstanding_bytes: u32,
    max_outstanding_records: usize,
    dedup_producer: Option<u64>,
    stream: StreamId,
    metrics: Arc<metrics::Metrics>,
    closed: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.shared.stream)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer for `stream` (a name, or an ARN starting with `arn:`) over the AWS SDK,
    /// connected as `options` say: the endpoint from the options or `AWS_ENDPOINT_URL_KINESIS`
    /// / `AWS_ENDPOINT_URL`, the AWS default credential chain (placeholders for a loopback
    /// endpoint with no credentials configured, so `kpl sim` needs no AWS setup), kpl's rustls
    /// HTTP client, and `config.request_timeout` per attempt unless the options set one. The
    /// same loader as the `kpl` command's; see [`ConnectOptions`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use kpl::producer::{ConnectOptions, Producer, ProducerConfig};
    /// // AWS_ENDPOINT_URL=http://127.0.0.1:4567 (kpl sim) or real Kinesis: the same code.
    /// let producer =
    ///     Producer::connect("my-stream", ConnectOptions::default(), ProducerConfig::default())
    ///         .await?;
    /// # producer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        stream: &str,
        options: ConnectOptions,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        config.validate()?;
        let options = ConnectOptions {
            attempt_timeout: options.attempt_timeout.or(Some(config.request_timeout)),
            ..options
        };
        // The client `options.client` names: the lean PutRecords path by default.
        let api = crate::client::connect(options).await;
        Producer::new(api, stream, config).await
    }

    /// A producer for `stream` (a name, or an ARN starting with `arn:`) over the AWS SDK,
    /// configured by `sdk` (credentials, region, `AWS_ENDPOINT_URL_KINESIS` /
    /// `AWS_ENDPOINT_URL`). The SDK's own retries are turned off: the pipeline owns retries.
    pub async fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        stream: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        let api = crate::client::sdk::SdkKinesis::from_sdk_config(sdk, config.request_timeout);
        Producer::new(Arc::new(api), stream, config).await
    }

    /// A producer for `stream` over any [`KinesisApi`]. Checks the configuration, asks the
    /// stream for its record size limit and lists its shards: a missing stream, missing access
    /// or an unreachable endpoint fails here, at once.
    pub async fn new(
        api: Arc<dyn KinesisApi>,
        stream: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        Producer::with_dedup_producer(api, stream, config, None).await
    }

    /// [`Producer::new`] whose dedup ids (if on) carry `dedup_producer` instead of a new
    /// random producer id: a spooled producer keeps its id across restarts.
    pub(crate) async fn with_dedup_producer(
        api: Arc<dyn KinesisApi>,
        stream: &str,
        config: ProducerConfig,
        dedup_producer: Option<u64>,
    ) -> Result<Producer, ProducerError> {
        config.validate()?;
        if let Some(spool) = &config.spool {
            return Err(ConfigError {
                field: "spool",
                value: format!("{:?}", spool.dir),
                requirement: "Producer::new / connect keep records in memory: use SpooledProducer::connect (or SpooledProducer::new) for a spooled producer, or set spool to None".into(),
            }
            .into());
        }
        let stream = StreamId::parse(stream);
        let stream_error = |source| ProducerError::Stream {
            stream: stream.to_string(),
            source,
        };
        let summary = api
            .describe_stream_summary(&stream)
            .await
            .map_err(stream_error)?;
        let max_record_bytes = config
            .max_record_bytes
            .or(summary.max_record_bytes)
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let map = ShardMap::load(&*api, &stream, 1)
            .await
            .map_err(|e| match e {
                ShardMapError::Api(source) => stream_error(source),
                ShardMapError::NoOpenShards | ShardMapError::Inconsistent(_) => {
                    ProducerError::NoOpenShards {
                        stream: stream.to_string(),
                    }
                }
            })?;
        // An aggregate and its partition key must fit the stream's record limit, which is only
        // known now: a larger aggregation_max_size is lowered to what fits.
        let room = max_record_bytes.saturating_sub(crate::limits::MAX_PARTITION_KEY_CHARS * 4);
        if config.aggregation_max_size > room {
            crate::log_limit::warn_limited!("aggregation_max_size lowered", stream;
                aggregation_max_size = config.aggregation_max_size,
                max_record_bytes,
                "aggregation_max_size lowered to {room} bytes to fit the stream's record limit"
            );
        }
        let limits = AggregateLimits {
            max_bytes: config.aggregation_max_size.min(room),
            max_count: if config.aggregation_enabled {
                config.aggregation_max_count
            } else {
                1
            },
        };
        let zstd_error = |e: crate::codec::frame::CompressorError| ConfigError {
            field: "compression",
            value: format!("{:?}", config.compression),
            requirement: e.to_string(),
        };
        let compressor = match &config.compression {
            Compression::None => None,
            Compression::Zstd { level } => Some(Compressor::zstd(*level).map_err(zstd_error)?),
            Compression::ZstdDictionary { level, dictionary } => {
                Some(Compressor::zstd_with_dictionary(*level, dictionary).map_err(zstd_error)?)
            }
        };
        let dedup_producer = config
            .dedup_ids
            .then(|| match (dedup_producer, config.rng_seed) {
                (Some(id), _) => id,
                (None, Some(seed)) => SmallRng::seed_from_u64(seed ^ DEDUP_SEED_SALT).random(),
                (None, None) => rand::random(),
            });
        let aggregator = Aggregator::new(
            limits,
            config.record_max_buffered_time,
            compressor,
            dedup_producer,
        )
        .keep_for_reuse(
            config.max_outstanding_records.min(MAX_KEPT_SLOTS),
            config.max_outstanding_bytes.min(MAX_KEPT_BYTES),
        );
        let metrics = Arc::new(metrics::Metrics::new(&stream.to_string()));
        let room = Arc::new(BufferRoom {
            records: Semaphore::new(config.max_outstanding_records),
            bytes: Semaphore::new(config.max_outstanding_bytes),
            stopped: std::sync::OnceLock::new(),
        });
        let max_outstanding_bytes = config.max_outstanding_bytes as u32;
        let max_outstanding_records = config.max_outstanding_records;
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (pipeline, done_rx, map_rx) = Pipeline::new(
            api,
            stream.clone(),
            config,
            metrics.clone(),
            map,
            aggregator,
            room.clone(),
        );
        let task_room = room.clone();
        let task = tokio::spawn(async move {
            // The pipeline catches its own failures while it handles events; a panic anywhere
            // else in it still stops new sends at once instead of leaving them waiting.
            let run = CatchUnwind(Box::pin(pipeline.run(input_rx, done_rx, map_rx)));
            if let Err(message) = run.await {
                tracing::error!(%message, "the producer's pipeline task failed");
                let _ = task_room
                    .stopped
                    .set(FlushError::PipelineFailed { message });
                task_room.records.close();
                task_room.bytes.close();
            }
        });
        Ok(Producer {
            shared: Arc::new(Shared {
                input: input_tx,
                room,
                max_record_bytes,
                max_outstanding_bytes,
                max_outstanding_records,
                dedup_producer,
                stream,
                metrics,
                closed: AtomicBool::new(false),
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// Queues `record`, waiting for buffer room if the producer is at its outstanding limits.
    /// The returned future resolves when the record is stored or has failed.
    ///
    /// Fails at once, handing the record back, if it breaks a Kinesis limit or the producer was
    /// shut down.
    pub async fn send(&self, record: UserRecord) -> Result<RecordFuture, SendError> {
        if let Err(reason) = self.check(&record) {
            return Err(SendError { reason, record });
        }
        let needed = self.bytes_needed(&record);
        // One unit of the task's cooperative budget, as a wait on the semaphores would take: a
        // loop of sends that never has to wait still lets the runtime's other tasks (the
        // pipeline's, on a current-thread runtime) run now and then. Taken before any room, so
        // a send cancelled here holds none.
        tokio::task::coop::consume_budget().await;
        match self.take_room(needed) {
            Ok(()) => {}
            // No room now: wait for it, in the semaphores' queues (first come, first served).
            Err(TryAcquireError::NoPermits) => {
                let room = &self.shared.room;
                match (
                    room.records.acquire().await,
                    room.bytes.acquire_many(needed).await,
                ) {
                    (Ok(r), Ok(b)) => {
                        // The pipeline gives the room back when the record resolves.
                        r.forget();
                        b.forget();
                    }
                    _ => {
                        return Err(SendError {
                            reason: self.closed_reason(),
                            record,
                        });
                    }
                }
            }
            Err(TryAcquireError::Closed) => {
                return Err(SendError {
                    reason: self.closed_reason(),
                    record,
                });
            }
        }
        self.enqueue(record, needed)
    }

    /// Queues `record` if there is buffer room now; otherwise hands it back with
    /// [`SendErrorReason::Full`].
    pub fn try_send(&self, record: UserRecord) -> Result<RecordFuture, SendError> {
        if let Err(reason) = self.check(&record) {
            return Err(SendError { reason, record });
        }
        let needed = self.bytes_needed(&record);
        if let Err(e) = self.take_room(needed) {
            let reason = match e {
                TryAcquireError::Closed => self.closed_reason(),
                TryAcquireError::NoPermits => SendErrorReason::Full,
            };
            return Err(SendError { reason, record });
        }
        self.enqueue(record, needed)
    }

    /// Takes one record's and `bytes` bytes' buffer room if both are free now (the pipeline
    /// gives them back when the record resolves); takes none otherwise. Permits that waiting
    /// sends are queued for are theirs: this never overtakes them.
    fn take_room(&self, bytes: u32) -> Result<(), TryAcquireError> {
        let room = &self.shared.room;
        let records = room.records.try_acquire()?;
        // On failure the record's permit goes back as it drops.
        let bytes = room.bytes.try_acquire_many(bytes)?;
        records.forget();
        bytes.forget();
        Ok(())
    }

    /// Queues every record of `records` at once, waiting for buffer room for all of them; the
    /// returned future resolves to their outcomes, in order, when the last one is stored or
    /// has failed. The records are routed and aggregated exactly as with [`send`](Self::send);
    /// a batch only saves the per-record hand-over (one channel message, one wait for room,
    /// one future), which is most of what a record costs beyond its aggregation.
    ///
    /// Fails at once, handing every record back and buffering none, if a record breaks a
    /// Kinesis limit, the batch needs more room than the whole buffer
    /// ([`SendErrorReason::BatchTooLarge`]), or the producer was shut down.
    ///
    /// ```no_run
    /// # async fn run(producer: kpl::producer::Producer) -> Result<(), Box<dyn std::error::Error>> {
    /// use kpl::UserRecord;
    /// let records: Vec<UserRecord> = (0..500)
    ///     .map(|i| UserRecord::new(format!("user-{i}"), format!("event {i}")))
    ///     .collect();
    /// let outcomes = producer.send_batch(records).await?.await;
    /// for (i, outcome) in outcomes.into_iter().enumerate() {
    ///     if let Err(failure) = outcome {
    ///         eprintln!("record {i}: {failure}");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_batch(
        &self,
        records: Vec<UserRecord>,
    ) -> Result<BatchFuture, SendBatchError> {
        self.send_batch_numbered(records, None).await
    }

    /// [`Producer::send_batch`] with each record's number (the sequence of its dedup id)
    /// chosen by the caller: `seqs` has one per record.
    pub(crate) async fn send_batch_numbered(
        &self,
        records: Vec<UserRecord>,
        seqs: Option<Vec<u64>>,
    ) -> Result<BatchFuture, SendBatchError> {
        debug_assert!(seqs.as_ref().is_none_or(|s| s.len() == records.len()));
        let refuse = |reason, index, records| {
            Err(SendBatchError {
                reason,
                index,
                records,
            })
        };
        let mut bytes = 0u64;
        for (i, record) in records.iter().enumerate() {
            if let Err(reason) = self.check(record) {
                return refuse(reason, Some(i), records);
            }
            bytes += u64::from(self.bytes_needed(record));
        }
        let room = &self.shared.room;
        let max_records = self.shared.max_outstanding_records;
        let max_bytes = self.shared.max_outstanding_bytes as usize;
        if records.len() > max_records || bytes > max_bytes as u64 {
            let reason = SendErrorReason::BatchTooLarge {
                records: records.len(),
                bytes,
                max_records,
                max_bytes,
            };
            return refuse(reason, None, records);
        }
        // Both fit in u32: the limits do (validated).
        match (
            room.records.acquire_many(records.len() as u32).await,
            room.bytes.acquire_many(bytes as u32).await,
        ) {
            (Ok(r), Ok(b)) => {
                r.forget();
                b.forget();
            }
            _ => return refuse(self.closed_reason(), None, records),
        }
        let received = Instant::now();
        let (reply, future) = BatchFuture::new(records.len(), received);
        let batch = BatchInput {
            records,
            received,
            reply,
            seqs,
        };
        match self.shared.input.send(Input::Batch(batch)) {
            Ok(()) => Ok(future),
            Err(mpsc::error::SendError(Input::Batch(batch))) => {
                room.release(batch.records.len(), bytes as usize);
                refuse(self.closed_reason(), None, batch.records)
            }
            Err(_) => unreachable!("a batch was sent"),
        }
    }

    /// Sends everything accepted so far without waiting for aggregates or calls to fill, and
    /// waits until all of it has resolved. Records sent meanwhile are not waited for.
    ///
    /// `Ok` once every record accepted before it has resolved (stored or failed: each
    /// record's future says which). An error if the producer stopped short instead
    /// ([`abort`](Self::abort), or a failure of its task): every record it had not resolved
    /// then failed with its record handed back.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.ask(Input::Flush).await
    }

    /// Stops accepting records, flushes everything accepted, and stops the pipeline task once
    /// every record has resolved. Idempotent; every clone sees the producer closed. Its result
    /// is as [`flush`](Self::flush)'s.
    ///
    /// ```no_run
    /// # async fn run(producer: kpl::producer::Producer) -> Result<(), Box<dyn std::error::Error>> {
    /// producer.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self) -> Result<(), FlushError> {
        self.close();
        let result = self.ask(Input::Shutdown).await;
        let result = result.and(self.join().await);
        // Warnings counted and not yet summarized are written now, not lost with the process.
        crate::log_limit::flush();
        result
    }

    /// Gives up on everything not yet resolved: every record accepted and not yet stored or
    /// failed fails at once with [`FailureReason::Aborted`], its record handed back (a record
    /// whose PutRecords call is in flight may or may not be stored: its reason says so), its
    /// buffer room returns, and later sends fail with [`SendErrorReason::Closed`]. Returns
    /// when every record has resolved; in-flight calls are not waited for. For a forced exit:
    /// write the failures' records somewhere and stop.
    ///
    /// ```no_run
    /// # async fn run(producer: kpl::producer::Producer, futures: Vec<kpl::producer::RecordFuture>) {
    /// producer.abort().await;
    /// for future in futures {
    ///     if let Err(failure) = future.await {
    ///         // failure.record is the record, to spool or resend.
    ///         eprintln!("{failure}");
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn abort(&self) {
        self.close();
        let _ = self.ask(Input::Abort).await;
        let _ = self.join().await;
    }

    /// Sends a request that the pipeline answers, and waits for its answer.
    async fn ask(&self, request: fn(Ack) -> Input) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        if self.shared.input.send(request(tx)).is_err() {
            // The task has stopped: it said why, if it stopped short.
            return self.stopped();
        }
        match rx.await {
            Ok(result) => result,
            // The task stopped without answering: it failed outside what it catches.
            Err(_) => self.join().await.and(self.stopped()),
        }
    }

    /// Closes the producer to new records.
    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.room.records.close();
        self.shared.room.bytes.close();
    }

    /// Waits for the pipeline task to end (once; later calls return at once).
    async fn join(&self) -> Result<(), FlushError> {
        let Some(task) = self.shared.task.lock().await.take() else {
            return Ok(());
        };
        match task.await {
            Err(e) if e.is_panic() => Err(FlushError::PipelineFailed {
                message: unwind::message(&*e.into_panic()),
            }),
            _ => self.stopped(),
        }
    }

    /// Why the pipeline stopped short, if it did.
    fn stopped(&self) -> Result<(), FlushError> {
        self.shared.room.stopped.get().cloned().map_or(Ok(()), Err)
    }

    /// Why a record cannot be taken once the producer is closed.
    fn closed_reason(&self) -> SendErrorReason {
        match self.shared.room.stopped.get() {
            Some(FlushError::PipelineFailed { message }) => SendErrorReason::PipelineFailed {
                message: message.clone(),
            },
            _ => SendErrorReason::Closed,
        }
    }

    /// The producer's counters so far (KPL metric names).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The shards last found hot: throttled while carrying more than twice the mean bytes of
    /// the other shards, each with the partition keys carrying most of its recent bytes
    /// (a Space-Saving sketch of 16 counters per shard; see [`hot_keys`]). Each shard's report
    /// is the latest one (refreshed at most once per second while it stays hot); the same event
    /// is logged as a rate-limited warning and counted as `kpl_hot_shard_reports`.
    pub fn hot_keys(&self) -> Vec<HotShard> {
        self.shared.metrics.hot_shards()
    }

    /// The largest record (partition key + data) this producer accepts: the stream's limit.
    pub fn max_record_bytes(&self) -> usize {
        self.shared.max_record_bytes
    }

    /// The producer id in this producer's dedup ids, if
    /// [`ProducerConfig::dedup_ids`] is on.
    pub fn dedup_producer_id(&self) -> Option<u64> {
        self.shared.dedup_producer
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &StreamId {
        &self.shared.stream
    }

    /// Records accepted and not yet resolved: what holds buffer room now.
    pub(crate) fn outstanding_records(&self) -> usize {
        self.shared
            .max_outstanding_records
            .saturating_sub(self.shared.room.records.available_permits())
    }

    /// The most records buffered at once (`max_outstanding_records`).
    pub(crate) fn max_outstanding_records(&self) -> usize {
        self.shared.max_outstanding_records
    }

    pub(crate) fn check(&self, record: &UserRecord) -> Result<(), SendErrorReason> {
        if self.shared.closed.load(Ordering::Relaxed) || self.shared.room.stopped.get().is_some() {
            return Err(self.closed_reason());
        }
        let max = self.shared.max_record_bytes;
        record.validate(max)?;
        // A record with a dedup id is always sent as an aggregate: the wrapping must fit too.
        if self.shared.dedup_producer.is_some()
            && record.billed_bytes() + TAGGED_OVERHEAD_BOUND > max
        {
            let widest = [b'f'; DEDUP_ID_MAX_LEN];
            let widest = std::str::from_utf8(&widest).expect("ASCII");
            let wrapped = record.partition_key.len()
                + lone_aggregate_len(record, &[(DEDUP_TAG_KEY, Some(widest))]);
            if wrapped > max {
                let size = record.billed_bytes();
                return Err(RecordError::TooLarge {
                    size,
                    max: max - (wrapped - size),
                }
                .into());
            }
        }
        Ok(())
    }

    fn bytes_needed(&self, record: &UserRecord) -> u32 {
        BufferRoom::bytes_for(
            record.billed_bytes(),
            self.shared.max_outstanding_bytes as usize,
        )
    }

    /// Hands a record holding one record's and `held_bytes` bytes' room to the pipeline.
    fn enqueue(&self, record: UserRecord, held_bytes: u32) -> Result<RecordFuture, SendError> {
        let (pending, future) = PendingRecord::new(record, Instant::now(), held_bytes);
        match self.shared.input.send(Input::Record(pending)) {
            Ok(()) => Ok(future),
            Err(mpsc::error::SendError(Input::Record(pending))) => {
                self.shared.room.release(1, held_bytes as usize);
                Err(SendError {
                    reason: self.closed_reason(),
                    record: pending.record,
                })
            }
            Err(_) => unreachable!("a record was sent"),
        }
    }
}
