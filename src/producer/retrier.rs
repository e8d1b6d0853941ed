//! Stage 7, the retrier: reads each PutRecords result entry, decides what happens to the
//! Kinesis record behind it, and holds the ones to retry until their backoff has passed.
//!
//! Only failed entries are retried — never a whole call, which would duplicate what was
//! stored. Retryable: throttling (`ProvisionedThroughputExceededException`,
//! `KMSThrottlingException`), `InternalFailure`, 5xx, timeouts, connection errors, a response
//! whose entry count does not match the call, and unknown codes. Fatal at once: what no retry
//! can fix ([`crate::client::is_fatal_code`]).
//!
//! A record stored on a shard other than the predicted one means the shard map is stale, so
//! any such landing refreshes it (as the KPL does). A single record (or an aggregate of one
//! hash key) is fine wherever it landed; an aggregate of
//! several keys may straddle the new shards' ranges, and the KCL would drop all of it, so its
//! user records are sent again after the map is refreshed (the copy already stored is a
//! duplicate to readers that do not drop it — see the README's delivery semantics).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::client::{
    ApiError, ApiErrorKind, PutRecordsResultEntry, is_fatal_code, is_throttling_code,
};
use crate::producer::aggregator::KinesisRecordOut;
use crate::producer::backoff::Backoff;
use crate::producer::clock::later;
use crate::producer::record::AttemptError;

/// What one result entry means for its Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryOutcome {
    /// Stored where predicted (or where it is correct anyway).
    Stored {
        shard_id: Arc<str>,
        sequence_number: Arc<str>,
    },
    /// Stored on an unexpected shard, holding one hash key: correct wherever it landed, but
    /// the shard map is stale (a split or merge), so it is refreshed.
    StoredElsewhere {
        shard_id: Arc<str>,
        sequence_number: Arc<str>,
    },
    /// Stored on an unexpected shard while holding several hash keys: whether the KCL will
    /// deliver it depends on that shard's range, known after the shard map is refreshed.
    WrongShard {
        shard_id: String,
        sequence_number: String,
    },
    /// Not stored; may succeed later.
    Retry {
        error: AttemptError,
        throttled: bool,
    },
    /// Not stored; will never succeed.
    Fatal { error: AttemptError },
}

/// Reads one entry of a PutRecords response for `record`.
pub(crate) fn classify_entry(
    entry: PutRecordsResultEntry,
    record: &KinesisRecordOut,
) -> EntryOutcome {
    match entry {
        PutRecordsResultEntry::Stored {
            shard_id,
            sequence_number,
        } => {
            if *shard_id == *record.shard {
                EntryOutcome::Stored {
                    shard_id: record.shard.clone(),
                    sequence_number: Arc::from(sequence_number),
                }
            } else if record.single_hash {
                EntryOutcome::StoredElsewhere {
                    shard_id: Arc::from(shard_id),
                    sequence_number: Arc::from(sequence_number),
                }
            } else {
                EntryOutcome::WrongShard {
                    shard_id,
                    sequence_number,
                }
            }
        }
        PutRecordsResultEntry::Failed { code, message } => {
            let throttled = is_throttling_code(&code);
            let error = AttemptError { code, message };
            if is_fatal_code(&error.code) {
                EntryOutcome::Fatal { error }
            } else {
                EntryOutcome::Retry { error, throttled }
            }
        }
    }
}

/// Reads a failed call: the error every entry of it gets, and whether a retry may help.
pub(crate) fn classify_call_error(error: &ApiError) -> (AttemptError, bool) {
    let code = match (&error.code, error.kind) {
        (Some(code), _) => code.clone(),
        (None, ApiErrorKind::Timeout) => "Timeout".into(),
        (None, ApiErrorKind::Connection) => "Connection".into(),
        (None, ApiErrorKind::Credentials) => "Credentials".into(),
        (None, ApiErrorKind::CredentialsTransient) => "CredentialsUnavailable".into(),
        (None, ApiErrorKind::Certificate) => "UntrustedCertificate".into(),
        (None, _) => match error.status {
            Some(status) => format!("HTTP{status}"),
            None => "Unknown".into(),
        },
    };
    (
        AttemptError {
            code,
            message: error.to_string(),
        },
        error.is_retryable(),
    )
}

/// The attempt error of an aggregate that the KCL would drop from the shard it landed on.
pub(crate) fn wrong_shard_error(
    predicted: &str,
    actual: &str,
    sequence_number: &str,
) -> AttemptError {
    AttemptError {
        code: "WrongShard".into(),
        message: format!(
            "an aggregate predicted for {predicted} was stored on {actual} (sequence number {sequence_number}) and holds records outside that shard's range, so the KCL drops it; its records are sent again"
        ),
    }
}

/// An error for every entry of a response whose length does not match the call.
pub(crate) fn mismatch_error(sent: usize, got: usize) -> AttemptError {
    AttemptError {
        code: "ResponseMismatch".into(),
        message: format!(
            "PutRecords returned {got} results for {sent} entries; every entry is retried"
        ),
    }
}

struct Due {
    at: Instant,
    seq: u64,
    record: KinesisRecordOut,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Kinesis records waiting out their backoff.
pub(crate) struct RetryQueue {
    backoff: Backoff,
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

impl RetryQueue {
    pub fn new(backoff: Backoff) -> Self {
        RetryQueue {
            backoff,
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Holds `record` for the backoff of its `attempt`-th retry (1 for the first retry).
    pub fn schedule(&mut self, record: KinesisRecordOut, attempt: u32, now: Instant) {
        let delay = self.backoff.delay_for_attempt(attempt.saturating_sub(1));
        self.seq += 1;
        self.heap.push(Reverse(Due {
            at: later(now, delay),
            seq: self.seq,
            record,
        }));
    }

    /// The next record whose backoff is over.
    pub fn pop_due(&mut self, now: Instant) -> Option<KinesisRecordOut> {
        if self.heap.peek().is_some_and(|d| d.0.at <= now) {
            self.heap.pop().map(|d| d.0.record)
        } else {
            None
        }
    }

    /// Every record waiting, taken out (the pipeline is stopping).
    pub fn take_all(&mut self) -> Vec<KinesisRecordOut> {
        std::mem::take(&mut self.heap)
            .into_iter()
            .map(|d| d.0.record)
            .collect()
    }

    /// When the next record's backoff is over.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.0.at)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PutRecordsEntry;
    use crate::producer::backoff::BackoffConfig;
    use bytes::Bytes;

    fn out(shard: &str, single_hash: bool) -> KinesisRecordOut {
        KinesisRecordOut {
            entry: PutRecordsEntry {
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(b"x"),
            },
            records: Vec::new(),
            shard: Arc::from(shard),
            map_version: 1,
            single_hash,
            deadline: Instant::now(),
            attempts: Vec::new(),
            lane: None,
            aggregated: false,
            uncompressed: None,
            unsealed: None,
        }
    }

    fn stored(shard: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::Stored {
            shard_id: shard.into(),
            sequence_number: "1".into(),
        }
    }

    fn failed(code: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::Failed {
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn entries_are_classified() {
        let r = out("s-1", false);
        assert!(matches!(
            classify_entry(stored("s-1"), &r),
            EntryOutcome::Stored { .. }
        ));
        assert!(matches!(
            classify_entry(stored("s-2"), &r),
            EntryOutcome::WrongShard { .. }
        ));
        // One hash key: correct wherever it landed, but the map is stale.
        match classify_entry(stored("s-2"), &out("s-1", true)) {
            EntryOutcome::StoredElsewhere { shard_id, .. } => assert_eq!(&*shard_id, "s-2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_entry(failed("ProvisionedThroughputExceededException"), &r),
            EntryOutcome::Retry {
                throttled: true,
                ..
            }
        ));
        assert!(matches!(
            classify_entry(failed("InternalFailure"), &r),
            EntryOutcome::Retry {
                throttled: false,
                ..
            }
        ));
        assert!(matches!(
            classify_entry(failed("KMSDisabledException"), &r),
            EntryOutcome::Fatal { .. }
        ));
    }

    #[test]
    fn call_errors_are_classified() {
        let (e, retry) = classify_call_error(&ApiError::timeout(std::time::Duration::from_secs(1)));
        assert_eq!((e.code.as_str(), retry), ("Timeout", true));
        let (e, retry) =
            classify_call_error(&ApiError::service("AccessDeniedException", Some(400), "no"));
        assert_eq!((e.code.as_str(), retry), ("AccessDeniedException", false));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_releases_only_what_is_due_in_order() {
        let mut q = RetryQueue::new(Backoff::new(&BackoffConfig::default()));
        let now = Instant::now();
        for attempt in 1..=10 {
            q.schedule(out("a", true), attempt, now);
        }
        let mid = now + std::time::Duration::from_millis(150);
        let mut released = 0;
        while q.pop_due(mid).is_some() {
            released += 1;
        }
        // Whatever is left is due after `mid`, and the cap (5 s) bounds every delay.
        assert!(q.next_due().is_none_or(|d| d > mid));
        let end = now + BackoffConfig::default().cap;
        while q.pop_due(end).is_some() {
            released += 1;
        }
        assert_eq!((released, q.len()), (10, 0));
    }
}
