//! The retrier's decisions, made on the pipeline task: what happens to each Kinesis record once
//! its call is over (stored, retried, failed), when its backoff ends (requeued, re-aggregated,
//! expired), and when a new shard map arrives (rechecked; stored-on-an-unexpected-shard judged).
//! The classification of a single result lives in [`retrier`](crate::producer::retrier); this
//! file acts on it with the pipeline's stages.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Misplaced, Pipeline};
use crate::producer::aggregator::KinesisRecordOut;
use crate::producer::clock::later;
use crate::producer::error::{FailureReason, RecordFailure};
use crate::producer::record::{AttemptError, CallAttempt, RecordState, Reply, StoredKinesisRecord};
use crate::producer::retrier::{EntryOutcome, classify_call_error, classify_entry, mismatch_error};
use crate::producer::sender::Completed;
use crate::record::UserRecord;

impl Pipeline {
    pub(super) fn on_completed(&mut self, completed: Completed) {
        let Some(mut call) = self.sender.complete(completed.id) else {
            return;
        };
        // Kept in the pipeline's state while they are read (see `answering`), last first.
        self.answering = std::mem::take(&mut call.records);
        self.answering.reverse();
        let sent = self.answering.len();
        let now = Instant::now();
        self.metrics.request_time(completed.elapsed, sent);
        let attempt = |error: Option<AttemptError>| CallAttempt {
            started: call.started,
            duration: completed.elapsed,
            error,
        };
        match completed.result {
            Err(error) => {
                let (error, retryable) = classify_call_error(&error);
                crate::log_limit::warn_limited!("PutRecords call failed", format_args!("stream={} code={}", self.stream, error.code); stream = %self.stream, error = %error, retryable, "PutRecords call failed");
                self.metrics.error(&error.code, sent);
                while let Some(mut record) = self.answering.pop() {
                    record.attempts.push(attempt(Some(error.clone())));
                    if retryable {
                        self.retry(record, now);
                    } else {
                        self.fail_fatal(record, &error);
                    }
                }
            }
            Ok(results) if results.len() != sent => {
                let error = mismatch_error(sent, results.len());
                crate::log_limit::warn_limited!("PutRecords answer mismatched", format_args!("stream={}", self.stream); stream = %self.stream, "{}", error.message);
                self.metrics.error(&error.code, sent);
                while let Some(mut record) = self.answering.pop() {
                    record.attempts.push(attempt(Some(error.clone())));
                    self.retry(record, now);
                }
            }
            Ok(results) => {
                for result in results {
                    let mut record = self.answering.pop().expect("one record per result");
                    match classify_entry(result, &record) {
                        EntryOutcome::Stored {
                            shard_id,
                            sequence_number,
                        } => {
                            record.attempts.push(attempt(None));
                            if let Some(shard) = self.shards.get_mut(&shard_id) {
                                shard.limiter.on_success(1, now);
                            }
                            self.resolve_stored(record, shard_id, sequence_number);
                        }
                        EntryOutcome::StoredElsewhere {
                            shard_id,
                            sequence_number,
                        } => {
                            tracing::info!(
                                stream = %self.stream,
                                predicted = %record.shard,
                                actual = %shard_id,
                                "a record landed on an unexpected shard: refreshing the shard map"
                            );
                            record.attempts.push(attempt(None));
                            self.resolve_stored(record, shard_id, sequence_number);
                            self.request_refresh();
                        }
                        EntryOutcome::WrongShard {
                            shard_id,
                            sequence_number,
                        } => {
                            tracing::info!(
                                stream = %self.stream,
                                predicted = %record.shard,
                                actual = %shard_id,
                                "an aggregate landed on an unexpected shard: refreshing the shard map"
                            );
                            self.misplaced.push(Misplaced {
                                record,
                                shard_id,
                                sequence_number,
                                attempt: attempt(None),
                                waits: 0,
                            });
                            self.request_refresh();
                        }
                        EntryOutcome::Retry { error, throttled } => {
                            if throttled {
                                self.on_throttled_entry(&record.shard, now);
                                if let Some(shard) = self.shards.get_mut(&record.shard) {
                                    shard.limiter.on_throttled(now);
                                }
                            }
                            self.metrics.error(&error.code, 1);
                            record.attempts.push(attempt(Some(error)));
                            self.retry(record, now);
                        }
                        EntryOutcome::Fatal { error } => {
                            self.metrics.error(&error.code, 1);
                            record.attempts.push(attempt(Some(error.clone())));
                            self.fail_fatal(record, &error);
                        }
                    }
                }
            }
        }
        self.collector.recycle(std::mem::take(&mut self.answering));
    }

    /// Attempts made so far for `record`'s user records (the most any of them had).
    pub(super) fn attempts_made(record: &KinesisRecordOut) -> u32 {
        let prior = record
            .records
            .iter()
            .map(|r| r.attempts.len())
            .max()
            .unwrap_or(0);
        (prior + record.attempts.len()) as u32
    }

    /// A retryable failure: the record waits out its backoff, unless its attempts are used up.
    fn retry(&mut self, record: KinesisRecordOut, now: Instant) {
        let made = Self::attempts_made(&record);
        if made >= self.config.max_attempts {
            let last_error = last_error(&record);
            let reason = FailureReason::AttemptsExhausted {
                max_attempts: self.config.max_attempts,
                last_error,
            };
            self.fail_all(record, reason);
            return;
        }
        self.metrics.retry(record.records.len());
        self.retries.schedule(record, made, now);
    }

    /// A retried Kinesis record comes back: still within its TTL, and still correct for the
    /// current shard map?
    pub(super) fn requeue(&mut self, mut record: KinesisRecordOut, now: Instant) {
        self.release(&mut record);
        let mut back = Vec::new();
        if outlived(record.oldest(), self.config.record_ttl, now) {
            self.scatter([record], now, &mut back);
        } else {
            match self.recheck(record) {
                Ok(record) => back.push(record),
                Err(stale) => self.scatter([stale], now, &mut back),
            }
        }
        // Strict ordering: a retried record goes before everything its shard queued after
        // it (nothing of that shard was sent meanwhile: it was blocked).
        let front = self.config.strict_ordering;
        self.place(back, now, front);
    }

    /// A Kinesis record found expired at the front of its shard's queue: its expired user
    /// records fail, the survivors go back where it was, before everything its shard queued
    /// after it, so that they keep their place (and are sent in the same step).
    pub(super) fn expire_queued(&mut self, expired: KinesisRecordOut, now: Instant) {
        let mut back = Vec::new();
        self.scatter([expired], now, &mut back);
        self.place(back, now, true);
    }

    /// Queues `records` (in each shard's send order) on their shards: `front`, before
    /// everything queued there (keeping their order among themselves), else after.
    pub(super) fn place(&mut self, records: Vec<KinesisRecordOut>, now: Instant, front: bool) {
        if front {
            for record in records.into_iter().rev() {
                self.enqueue_at(record, now, true);
            }
        } else {
            for record in records {
                self.enqueue_at(record, now, false);
            }
        }
    }

    /// Checks a Kinesis record built under an older shard map against the current one:
    /// `Ok` (re-targeted) if it still lands correctly, else `Err` to be scattered.
    pub(super) fn recheck(
        &mut self,
        mut record: KinesisRecordOut,
    ) -> Result<KinesisRecordOut, KinesisRecordOut> {
        if record.map_version == self.map.version() {
            return Ok(record);
        }
        let first = record
            .records
            .first()
            .map(|r| r.hash_key)
            .unwrap_or_default();
        let owner = self.map.shard(self.map.index_of(first));
        let keep = record.single_hash
            || (*owner.id == *record.shard
                && record
                    .records
                    .iter()
                    .all(|r| owner.range.contains(r.hash_key)));
        if keep {
            record.shard = owner.id.clone();
            record.map_version = self.map.version();
            Ok(record)
        } else {
            Err(record)
        }
    }

    /// Breaks Kinesis records (in send order) into their user records: those whose TTL is
    /// over fail `Expired`, the rest are aggregated again under the current map, apart from
    /// the open aggregates (which hold newer records), into finished Kinesis records in `out`,
    /// for the caller to queue where the originals were. They are due as soon as the
    /// originals were.
    pub(super) fn scatter(
        &mut self,
        records: impl IntoIterator<Item = KinesisRecordOut>,
        now: Instant,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        let ttl = self.config.record_ttl;
        let mut survivors = Vec::new();
        let mut due: Option<Instant> = None;
        for record in records {
            due = Some(due.map_or(record.deadline, |d| d.min(record.deadline)));
            let last_error = last_error(&record);
            for (state, user) in self.unpack(record) {
                if outlived(state.received, ttl, now) {
                    self.metrics.expired(1);
                    let reason = FailureReason::Expired {
                        ttl,
                        last_error: last_error.clone(),
                    };
                    self.fail_user(state, user, reason);
                } else {
                    survivors.push((user, state));
                }
            }
        }
        let from = out.len();
        self.aggregator
            .pack(survivors, &self.map, self.grouping, out);
        if let Some(due) = due {
            for record in &mut out[from..] {
                record.deadline = record.deadline.min(due);
            }
        }
    }

    /// Takes a Kinesis record apart for good: it no longer blocks its shard, and each user
    /// record comes out with the record's call attempts added to its own.
    pub(super) fn unpack(
        &mut self,
        mut record: KinesisRecordOut,
    ) -> impl Iterator<Item = (RecordState, UserRecord)> + use<> {
        self.release(&mut record);
        let users = record.user_records();
        let attempts = record.attempts;
        record
            .records
            .into_iter()
            .zip(users)
            .map(move |(mut state, user)| {
                let received = state.received;
                state
                    .attempts
                    .extend(attempts.iter().map(|a| a.for_record(received)));
                (state, user)
            })
    }

    pub(super) fn resolve_stored(
        &mut self,
        mut record: KinesisRecordOut,
        shard_id: Arc<str>,
        sequence_number: Arc<str>,
    ) {
        self.release(&mut record);
        let user_records = record.records.len() as u64;
        let mut user_bytes = 0u64;
        let mut users = std::mem::take(&mut record.records);
        let kinesis = Arc::new(StoredKinesisRecord {
            shard_id: shard_id.clone(),
            sequence_number,
            attempts: std::mem::take(&mut record.attempts),
            dedup_producer: self.dedup_producer,
        });
        let mut retries = 0;
        for (index, user) in users.drain(..).enumerate() {
            user_bytes += u64::from(user.billed);
            retries += (user.attempts.len() + kinesis.attempts.len()).saturating_sub(1);
            self.settle(user.epoch, user.held_bytes);
            let (earlier, sub, seq) = (user.attempts, index as u32, user.seq);
            self.reply(user.reply, || {
                let kinesis = kinesis.clone();
                if earlier.is_empty() {
                    Reply::Stored { kinesis, sub, seq }
                } else {
                    Reply::StoredAgain(Box::new((kinesis, sub, seq, earlier.into_vec())))
                }
            });
        }
        self.metrics.retries_per_record(retries as u64);
        let kinesis_bytes = record.entry.billed_bytes() as u64;
        self.metrics
            .record_put(user_records, user_bytes, 1, kinesis_bytes);
        self.metrics.shard_put(&shard_id, kinesis_bytes);
        self.aggregator.recycle(users);
        self.aggregator
            .recycle_data(std::mem::take(&mut record.entry.data));
        if let Some(aggregate) = record.uncompressed.take() {
            self.aggregator.recycle_data(aggregate);
        }
    }

    pub(super) fn fail_fatal(&mut self, record: KinesisRecordOut, error: &AttemptError) {
        let reason = FailureReason::Fatal {
            code: error.code.clone(),
            message: error.message.clone(),
        };
        self.fail_all(record, reason);
    }

    /// Fails every user record of `record` with `reason`, handing each back.
    pub(super) fn fail_all(&mut self, record: KinesisRecordOut, reason: FailureReason) {
        for (state, user) in self.unpack(record) {
            self.fail_user(state, user, reason.clone());
        }
    }

    pub(super) fn fail_user(
        &mut self,
        state: RecordState,
        record: UserRecord,
        reason: FailureReason,
    ) {
        self.metrics.failed(1);
        self.settle(state.epoch, state.held_bytes);
        let failure = RecordFailure {
            reason,
            attempts: state.attempts.into_vec(),
            record: Some(record),
        };
        self.reply(state.reply, || Reply::Failed(Box::new(failure)));
    }
}

/// Whether a record received at `received` has outlived `ttl` at `now`.
pub(super) fn outlived(received: Instant, ttl: Duration, now: Instant) -> bool {
    later(received, ttl) <= now
}

/// The last error any attempt of `record` (or of its user records' earlier aggregates) saw.
fn last_error(record: &KinesisRecordOut) -> String {
    record
        .attempts
        .iter()
        .rev()
        .find_map(|a| a.error.as_ref())
        .or_else(|| {
            record
                .records
                .iter()
                .filter_map(|r| r.attempts.last())
                .find_map(|a| a.error.as_ref())
        })
        .map(|e| e.to_string())
        .unwrap_or_else(|| {
            "no attempt was made: the shard's rate limit or the buffer held it back".into()
        })
}
