//! The producer's errors, one enum per place they surface: building the producer, handing it
//! a record, and a record's final outcome.

use std::time::Duration;

use crate::client::ApiError;
use crate::producer::config::ConfigError;
use crate::producer::record::{Attempt, AttemptError};
use crate::record::{RecordError, UserRecord};

/// The producer could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stream could not be described or its shards listed: no such stream, no access,
    /// or no connection. The message says which and what to do.
    #[error("cannot use stream {stream}: {source}")]
    Stream {
        /// The stream name or ARN.
        stream: String,
        /// The failed call.
        source: ApiError,
    },
    /// ListShards returned no open shard.
    #[error("stream {stream} has no open shard: wait until it is ACTIVE")]
    NoOpenShards {
        /// The stream name or ARN.
        stream: String,
    },
}

/// Why `send` / `try_send` did not take a record. The record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    /// Why.
    pub reason: SendErrorReason,
    /// The record, untouched.
    pub record: UserRecord,
}

/// Why a record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorReason {
    /// The record breaks a Kinesis limit; nothing was buffered.
    #[error(transparent)]
    Invalid(#[from] RecordError),
    /// `try_send` only: the outstanding-records or -bytes limit is reached. Retry later, or
    /// use `send`, which waits for room.
    #[error(
        "the producer's buffer is full (max_outstanding_records / max_outstanding_bytes): wait for receipts or use send(), which waits for room"
    )]
    Full,
    /// The producer was shut down or aborted.
    #[error("the producer has been shut down: records can no longer be sent")]
    Closed,
    /// The producer's pipeline task failed (a bug: please report it) and takes no more
    /// records.
    #[error(
        "the producer's pipeline task failed ({message}) and takes no more records: create a new producer"
    )]
    PipelineFailed {
        /// What the task's panic said.
        message: String,
    },
    /// `send_batch` only: the batch needs more room than the whole buffer has, so it could
    /// never be taken.
    #[error(
        "the batch needs room for {records} records and {bytes} bytes, more than the whole buffer (max_outstanding_records {max_records}, max_outstanding_bytes {max_bytes}): send it in smaller batches"
    )]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Buffer bytes it needs (partition key + data of each record).
        bytes: u64,
        /// The producer's `max_outstanding_records`.
        max_records: usize,
        /// The producer's `max_outstanding_bytes`.
        max_bytes: usize,
    },
}

/// Why `send_batch` did not take a batch. Nothing was buffered; every record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", .index.map(|i| format!("record {i} of the batch: ")).unwrap_or_default())]
pub struct SendBatchError {
    /// Why.
    pub reason: SendErrorReason,
    /// The record that was refused, if one record was the reason.
    pub index: Option<usize>,
    /// The records, untouched, in their order.
    pub records: Vec<UserRecord>,
}

/// A record that was accepted but could not be stored. Carries the record and every attempt.
///
/// Its message says "not stored" only when that is certain; when an attempt's answer was lost
/// (see [`RecordFailure::maybe_stored`]) it says the record may have been stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct RecordFailure {
    /// Why it failed.
    pub reason: FailureReason,
    /// Every PutRecords attempt that carried it, in order.
    pub attempts: Vec<Attempt>,
    /// The record, so the caller can log, spool or resend it. `None` only with
    /// [`FailureReason::Lost`].
    pub record: Option<UserRecord>,
}

impl RecordFailure {
    /// Whether the record may be in the stream all the same: the answer to one of its attempts
    /// was lost (a timeout, a broken connection, a response that could not be read or did not
    /// list every entry), so that call may have stored it, or an attempt stored it inside an
    /// aggregate on an unpredicted shard (`WrongShard`, see
    /// [`AttemptError::outcome_unknown`]). Readers may then see it, and
    /// resending it may store it twice (dedup ids let readers drop the copy).
    pub fn maybe_stored(&self) -> bool {
        self.attempts
            .iter()
            .filter_map(|a| a.error.as_ref())
            .any(AttemptError::outcome_unknown)
    }

    fn describe(&self) -> String {
        let attempts = self.attempts.len();
        let reason = &self.reason;
        if self.maybe_stored() {
            format!(
                "record may have been stored, but no attempt of {attempts} confirmed it (an answer was lost): {reason}"
            )
        } else {
            format!("record not stored after {attempts} attempt(s): {reason}")
        }
    }
}

/// The reason a record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureReason {
    /// Kinesis answered with an error that no retry can fix (missing stream, access denied,
    /// KMS key unusable, invalid request). Fix the cause and resend.
    #[error("Kinesis refused it with {code}, which no retry can fix: {message}")]
    Fatal {
        /// The error code.
        code: String,
        /// The service's message (with a hint where kpl knows one).
        message: String,
    },
    /// The record was not confirmed stored within the record TTL.
    #[error(
        "not confirmed stored within the record TTL of {ttl:?}; last error: {last_error}. Raise record_ttl, lower the send rate, or add shards"
    )]
    Expired {
        /// The TTL in force.
        ttl: Duration,
        /// The last attempt's error, or why it never got an attempt.
        last_error: String,
    },
    /// Every allowed attempt failed with a retryable error.
    #[error(
        "all {max_attempts} attempts failed; last error: {last_error}. Raise max_attempts or check the stream's health"
    )]
    AttemptsExhausted {
        /// The limit in force.
        max_attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The producer could not take the record, so it was never sent: a
    /// [`SpooledProducer`](crate::producer::SpooledProducer) found it in its spool, kept there
    /// by a producer with other limits (a larger `max_record_bytes`, say). Fix the record or
    /// the limits and resend it (it is in the spool's dead-letter file).
    #[error("the producer cannot send it ({reason}); it was never sent")]
    Refused {
        /// Why the producer refused it.
        reason: SendErrorReason,
    },
    /// [`Producer::abort`](crate::producer::Producer::abort) was called before the record was
    /// resolved.
    #[error("the producer was aborted before the record was resolved; {}", stored_note(*.maybe_stored))]
    Aborted {
        /// A PutRecords call carried it (one was in flight, or an earlier one timed out), so it
        /// may or may not be stored; `false`: it was not stored.
        maybe_stored: bool,
    },
    /// The producer's pipeline task failed (a bug: please report it) before the record was
    /// resolved; the producer takes no more records.
    #[error(
        "the producer's pipeline task failed ({message}) before the record was resolved, so it was not necessarily stored; {}",
        stored_note(*.maybe_stored)
    )]
    PipelineFailed {
        /// What the task's panic said.
        message: String,
        /// As for [`FailureReason::Aborted`].
        maybe_stored: bool,
    },
    /// The producer task stopped without resolving the record, and the record could not be
    /// recovered (a bug: please report it). Not expected even when the task fails: then
    /// records fail with [`FailureReason::PipelineFailed`] and are handed back.
    #[error("the producer stopped before the record was resolved, and the record was lost with it")]
    Lost,
}

fn stored_note(maybe_stored: bool) -> &'static str {
    if maybe_stored {
        "a PutRecords call carried it (one was in flight or timed out), so it may or may not have been stored"
    } else {
        "it was not stored"
    }
}

/// Why [`Producer::flush`](crate::producer::Producer::flush) or
/// [`shutdown`](crate::producer::Producer::shutdown) could not see every record through.
/// Every record affected was failed and handed back in its own
/// [`RecordFailure`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// The pipeline task failed (a bug: please report it): every record it had not resolved
    /// failed with [`FailureReason::PipelineFailed`], the record handed back.
    #[error(
        "the producer's pipeline task failed ({message}): every record not yet resolved failed with PipelineFailed and was handed back in its failure; resend those with a new producer"
    )]
    PipelineFailed {
        /// What the task's panic said.
        message: String,
    },
    /// [`Producer::abort`](crate::producer::Producer::abort) was called: every record not
    /// yet resolved failed with [`FailureReason::Aborted`], the record handed back.
    #[error(
        "the producer was aborted: every record not yet resolved failed with Aborted and was handed back in its failure"
    )]
    Aborted,
}
