//! Stage 1, the record: what travels through the pipeline for each user record, and what the
//! caller gets back — a [`RecordFuture`] resolving to a [`Receipt`] or a [`RecordFailure`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use crate::dedup::DedupId;
use crate::hash::HashKey;
use crate::producer::error::{FailureReason, RecordFailure};
use crate::record::UserRecord;

/// Where a record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The shard that stored it.
    pub shard_id: Arc<str>,
    /// The sequence number of the Kinesis record that carries it.
    pub sequence_number: Arc<str>,
    /// Its index inside that Kinesis record (0 for a record sent on its own). With the sequence
    /// number it identifies the user record, as the KCL's `subSequenceNumber` does.
    pub sub_sequence_number: u64,
    /// Every PutRecords attempt that carried it; the last one succeeded.
    pub attempts: Vec<Attempt>,
    /// The id readers dedupe it by, with [`ProducerConfig::dedup_ids`](crate::producer::ProducerConfig::dedup_ids) on.
    pub dedup_id: Option<DedupId>,
}

/// One PutRecords attempt as seen by one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When the attempt started, counted from `send`.
    pub started_after: Duration,
    /// How long the call took (until the response, the error or the timeout).
    pub duration: Duration,
    /// `None` if the record was stored by this attempt; else the error code (e.g.
    /// `ProvisionedThroughputExceededException`, `Timeout`, `WrongShard`) and message.
    pub error: Option<AttemptError>,
}

/// Why an attempt did not store the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The service's error code, or kpl's name for a client-side failure (`Timeout`,
    /// `Connection`, `WrongShard`, `ResponseMismatch`).
    pub code: String,
    /// Detail.
    pub message: String,
}

impl AttemptError {
    /// Whether the attempt may have stored the record though it reports an error: its answer
    /// was lost or unreadable (`Timeout`, `Connection`, `ResponseMismatch`, an HTTP status
    /// without an error code, a failure of unknown kind), or it is `WrongShard`: an aggregate
    /// stored on a shard whose range holds only some of its records, which the KCL delivers
    /// while the producer sends them all again. An error code the service sent for the entry
    /// or the call (throttling, `InternalFailure`, access denied, ...) means it was not stored.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self.code.as_str(),
            "Timeout" | "Connection" | "ResponseMismatch" | "Unknown" | "WrongShard"
        ) || self.code.starts_with("HTTP")
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// One call's attempt, recorded on the Kinesis record that went out; turned into an [`Attempt`]
/// per user record when the record resolves.
#[derive(Debug, Clone)]
pub(crate) struct CallAttempt {
    pub started: Instant,
    pub duration: Duration,
    pub error: Option<AttemptError>,
}

impl CallAttempt {
    pub(crate) fn for_record(&self, received: Instant) -> Attempt {
        Attempt {
            started_after: self.started.saturating_duration_since(received),
            duration: self.duration,
            error: self.error.clone(),
        }
    }
}

/// The outcome of one record.
pub type RecordResult = Result<Receipt, RecordFailure>;

/// A Kinesis record that was stored, shared by the user records it carried: each of them gets
/// its receipt from it when its future is polled, so resolving a record sends a handle, not a
/// receipt (and a dropped future costs nothing to resolve).
#[derive(Debug)]
pub(crate) struct StoredKinesisRecord {
    pub shard_id: Arc<str>,
    pub sequence_number: Arc<str>,
    /// Its PutRecords attempts; the last one stored it.
    pub attempts: Vec<CallAttempt>,
    /// The producer id of its user records' dedup ids, if they carry them.
    pub dedup_producer: Option<u64>,
}

/// What travels back on a record's channel. Small on purpose: every record allocates one
/// channel, and a small one is a cheap allocation.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Stored as user record `sub` of `kinesis`; `seq` is its number in the producer.
    Stored {
        kinesis: Arc<StoredKinesisRecord>,
        sub: u32,
        seq: u64,
    },
    /// Stored after attempts in earlier Kinesis records (it was re-aggregated): rare, so boxed
    /// to keep every record's channel small.
    StoredAgain(Box<(Arc<StoredKinesisRecord>, u32, u64, Vec<Attempt>)>),
    /// Failed for good.
    Failed(Box<RecordFailure>),
}

/// Resolves when the record is stored or has failed. Dropping it does not cancel the record:
/// the producer still sends it, and the buffer room it holds returns when it resolves.
#[derive(Debug)]
#[must_use = "a record's outcome is only known by awaiting its future"]
pub struct RecordFuture {
    rx: oneshot::Receiver<Reply>,
    /// When `send` accepted it: attempts are reported relative to it.
    received: Instant,
}

impl Future for RecordFuture {
    type Output = RecordResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let received = self.received;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_or_else(|_| Err(lost()), |reply| reply.into_result(received)))
    }
}

/// Resolves when every record of a [`Producer::send_batch`](crate::producer::Producer::send_batch)
/// is stored or has failed, to their outcomes in the batch's order. Dropping it does not cancel
/// the records.
#[derive(Debug)]
#[must_use = "a batch's outcomes are only known by awaiting its future"]
pub struct BatchFuture {
    rx: oneshot::Receiver<Vec<Reply>>,
    received: Instant,
    len: usize,
}

impl BatchFuture {
    pub(crate) fn new(len: usize, received: Instant) -> (oneshot::Sender<Vec<Reply>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, BatchFuture { rx, received, len })
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Future for BatchFuture {
    type Output = Vec<RecordResult>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (received, len) = (self.received, self.len);
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(replies) => replies
                .into_iter()
                .map(|reply| reply.into_result(received))
                .collect(),
            Err(_) => (0..len).map(|_| Err(lost())).collect(),
        })
    }
}

impl Reply {
    /// The caller's view of a record's outcome; `received`: when `send` took it.
    fn into_result(self, received: Instant) -> RecordResult {
        match self {
            Reply::Stored { kinesis, sub, seq } => {
                Ok(receipt(&kinesis, sub, seq, Vec::new(), received))
            }
            Reply::StoredAgain(stored) => {
                let (kinesis, sub, seq, earlier) = *stored;
                Ok(receipt(&kinesis, sub, seq, earlier, received))
            }
            Reply::Failed(failure) => Err(*failure),
        }
    }
}

/// The receipt of user record `sub` of `kinesis`, numbered `seq`, received at `received`,
/// after `earlier` attempts in other Kinesis records.
fn receipt(
    kinesis: &StoredKinesisRecord,
    sub: u32,
    seq: u64,
    mut earlier: Vec<Attempt>,
    received: Instant,
) -> Receipt {
    earlier.extend(kinesis.attempts.iter().map(|a| a.for_record(received)));
    Receipt {
        shard_id: kinesis.shard_id.clone(),
        sequence_number: kinesis.sequence_number.clone(),
        sub_sequence_number: u64::from(sub),
        attempts: earlier,
        dedup_id: kinesis
            .dedup_producer
            .map(|producer| DedupId { producer, seq }),
    }
}

/// A record whose outcome the pipeline never sent (it stopped: a bug).
fn lost() -> RecordFailure {
    RecordFailure {
        reason: FailureReason::Lost,
        attempts: Vec::new(),
        record: None,
    }
}

/// Where a record's outcome goes.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// Its own future (`send`).
    One(oneshot::Sender<Reply>),
    /// Slot `index` of batch `batch` in the pipeline's open batches (`send_batch`).
    Batch { batch: u32, index: u32 },
}

/// The producer's buffer room: records and bytes accepted by `send` and not yet resolved.
/// `send` takes room and forgets the permits; the pipeline gives room back when records
/// resolve, in bulk once per event (one semaphore release per batch, not two per record).
#[derive(Debug)]
pub(crate) struct BufferRoom {
    pub records: Semaphore,
    pub bytes: Semaphore,
    /// Why the pipeline stopped short (abort, or its own failure), once it has: both
    /// semaphores are closed then.
    pub stopped: std::sync::OnceLock<crate::producer::error::FlushError>,
}

impl BufferRoom {
    /// Bytes of room a record of `billed` bytes holds: its size, at least 1, and at most the
    /// whole budget (a record larger than the budget still goes, alone).
    pub(crate) fn bytes_for(billed: usize, max_outstanding_bytes: usize) -> u32 {
        billed.clamp(1, max_outstanding_bytes) as u32
    }

    /// Gives back the room of `records` records holding `bytes` bytes.
    pub(crate) fn release(&self, records: usize, bytes: usize) {
        if records > 0 {
            self.records.add_permits(records);
        }
        if bytes > 0 {
            self.bytes.add_permits(bytes);
        }
    }
}

/// A user record on its way into the pipeline: the record, and what the pipeline tracks for it.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    pub record: UserRecord,
    pub state: RecordState,
}

/// Attempts a user record had in earlier Kinesis records. Almost always none: a null pointer
/// then, not an empty `Vec`'s 24 bytes in the state of every record in flight.
#[derive(Debug, Default)]
// The box is the point: one thin pointer (8 bytes) instead of a Vec (24) in every state.
#[allow(clippy::box_collection)]
pub(crate) struct EarlierAttempts(Option<Box<Vec<Attempt>>>);

impl EarlierAttempts {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `attempts`; allocates only if there are any.
    pub(crate) fn extend(&mut self, attempts: impl IntoIterator<Item = Attempt>) {
        let mut attempts = attempts.into_iter().peekable();
        if attempts.peek().is_some() {
            self.0.get_or_insert_default().extend(attempts);
        }
    }

    pub(crate) fn last(&self) -> Option<&Attempt> {
        self.0.as_ref().and_then(|v| v.last())
    }

    pub(crate) fn into_vec(self) -> Vec<Attempt> {
        self.0.map_or_else(Vec::new, |v| *v)
    }
}

/// What the pipeline tracks for a user record. Once the record is in an aggregate this is all
/// it keeps: the key and data live in the Kinesis record (see
/// [`KinesisRecordOut::user_records`](crate::producer::aggregator::KinesisRecordOut::user_records)),
/// were freed right after they were copied there (still in the cache), and each aggregate's
/// list of states stays small to move and to keep.
#[derive(Debug)]
pub(crate) struct RecordState {
    /// Routing hash; filled in by the pipeline task (a cache avoids re-hashing hot keys).
    pub hash_key: HashKey,
    /// `hash_key` is the record's explicit hash key.
    pub explicit: bool,
    pub reply: ReplyTo,
    pub received: Instant,
    /// Attempts made while the record was in an earlier Kinesis record (it is re-aggregated
    /// after a wrong-shard put or a reshard).
    pub attempts: EarlierAttempts,
    /// Which flush epoch it belongs to (see the pipeline's flush accounting).
    pub epoch: u64,
    /// Its number in this producer, in the order the pipeline received it: with the
    /// producer id, its dedup id.
    pub seq: u64,
    /// Buffer room it holds: one record and this many bytes (0: none, e.g. in unit tests).
    pub held_bytes: u32,
    /// Partition key + data bytes, as the service counts them.
    pub billed: u32,
}

impl RecordState {
    /// The state of `record`, accepted at `received`, whose outcome goes to `reply`.
    pub(crate) fn of(
        record: &UserRecord,
        reply: ReplyTo,
        received: Instant,
        held_bytes: u32,
    ) -> Self {
        RecordState {
            hash_key: record.explicit_hash_key.unwrap_or_default(),
            explicit: record.explicit_hash_key.is_some(),
            reply,
            received,
            attempts: EarlierAttempts::default(),
            epoch: 0,
            seq: 0,
            held_bytes,
            billed: record.billed_bytes() as u32,
        }
    }
}

impl PendingRecord {
    /// A new record and the future its caller awaits.
    pub(crate) fn new(
        record: UserRecord,
        received: Instant,
        held_bytes: u32,
    ) -> (PendingRecord, RecordFuture) {
        let (tx, rx) = oneshot::channel();
        let state = RecordState::of(&record, ReplyTo::One(tx), received, held_bytes);
        (
            PendingRecord { record, state },
            RecordFuture { rx, received },
        )
    }
}
