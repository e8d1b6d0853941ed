//! Refreshing the shard map: the background ListShards (with backoff, each call bounded by the
//! request timeout), the new map's effect on everything built under the old one, and the
//! records that wait for it (aggregates stored on an unexpected shard, judged once the new map
//! tells that shard's range). Waiting is bounded: the record TTL and `max_attempts` apply
//! (every failed ListShards counts as an attempt), and a fatal ListShards error (the stream is
//! gone, access was revoked) fails the waiting records at once.

use std::sync::Arc;

use tokio::time::Instant;

use super::outcomes::outlived;
use super::{Misplaced, Pipeline};
use crate::client::{ApiError, ApiErrorKind};
use crate::producer::aggregator::{Grouping, KinesisRecordOut};
use crate::producer::backoff::Backoff;
use crate::producer::clock::later;
use crate::producer::error::FailureReason;
use crate::producer::record::AttemptError;
use crate::producer::retrier::wrong_shard_error;
use crate::producer::shard_map::{ShardMap, ShardMapError};
use crate::producer::unwind::CatchUnwind;

/// Mixed into `rng_seed` for the ListShards backoff.
const REFRESH_SEED_SALT: u64 = 0x5eed_0f11_575a_d5a1;

/// What the refresh task reports.
pub(crate) enum Refresh {
    Map(ShardMap),
    /// One ListShards attempt failed; the task goes on if the error is retryable.
    Failed(ApiError),
}

impl Pipeline {
    /// Starts a background ListShards (with backoff on failure); until it answers, only records
    /// of one hash key are aggregated together.
    pub(super) fn request_refresh(&mut self) {
        if self.grouping == Grouping::ByShard {
            // The open aggregates (one per shard) hold older records of the keys the per-key
            // aggregates will now take: finished first, they are queued first.
            self.aggregator.finish_all(&mut self.finished);
        }
        self.grouping = Grouping::ByHashKey;
        if self.refresh.is_some() {
            return;
        }
        let api = self.api.clone();
        let stream = self.stream.clone();
        let version = self.map.version() + 1;
        let tx = self.map_tx.clone();
        let timeout = self.config.request_timeout;
        // Seeded apart from the retries' backoff (a test's seed gives both their own draws).
        let seed = self.config.rng_seed.map(|s| s ^ REFRESH_SEED_SALT);
        let mut backoff = Backoff::seeded(&self.config.backoff, seed);
        self.refresh = Some(tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let load = CatchUnwind(Box::pin(ShardMap::load(&*api, &stream, version)));
                let error = match tokio::time::timeout(timeout, load).await {
                    Ok(Ok(Ok(map))) => {
                        let _ = tx.send(Refresh::Map(map));
                        return;
                    }
                    Ok(Ok(Err(ShardMapError::Api(error)))) => error,
                    // No open shard, or a listing taken mid-reshard: worth another look.
                    Ok(Ok(Err(other))) => ApiError {
                        kind: ApiErrorKind::Other,
                        code: None,
                        status: None,
                        message: other.to_string(),
                    },
                    Ok(Err(panic)) => ApiError {
                        kind: ApiErrorKind::Other,
                        code: Some("KinesisApiPanic".into()),
                        status: None,
                        message: format!("the KinesisApi implementation panicked ({panic})"),
                    },
                    Err(_) => ApiError::timeout(timeout),
                };
                let retryable = error.is_retryable();
                crate::log_limit::warn_limited!("ListShards failed", format_args!("stream={stream}"); stream = %stream, %error, retryable, "ListShards failed");
                let _ = tx.send(Refresh::Failed(error));
                if !retryable {
                    return;
                }
                tokio::time::sleep(backoff.delay_for_attempt(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }));
    }

    pub(super) fn on_new_map(&mut self, map: ShardMap) {
        tracing::info!(stream = %self.stream, shards = map.len(), version = map.version(), "shard map refreshed");
        self.refresh = None;
        self.list_error = None;
        // Everything built under the old map is checked against the new one before it is sent,
        // in each shard's send order: what its queue holds, then its open aggregate.
        let mut queued: Vec<KinesisRecordOut> = Vec::new();
        for shard in self.shards.values_mut() {
            queued.extend(shard.queue.drain(..));
            shard.listed = false;
        }
        self.aggregator.finish_all(&mut queued);
        let old = std::mem::replace(&mut self.map, map);
        self.grouping = Grouping::ByShard;
        self.waiting.clear();
        let now = Instant::now();
        self.retire_lanes(&old, now);
        let open: std::collections::HashSet<&str> =
            self.map.shards().iter().map(|s| &*s.id).collect();
        self.shards.retain(|id, _| open.contains(&**id));
        // In order: what no longer fits is aggregated again in its place, before the next
        // record that still fits (a key's records keep their order across the refresh).
        let mut requeued = Vec::with_capacity(queued.len());
        let mut stale = Vec::new();
        for record in queued {
            match self.recheck(record) {
                Ok(record) => {
                    self.scatter(stale.drain(..), now, &mut requeued);
                    requeued.push(record);
                }
                Err(record) => stale.push(record),
            }
        }
        self.scatter(stale, now, &mut requeued);
        self.place(requeued, now, false);
        // Aggregates stored on an unexpected shard: delivered by the KCL if all their records
        // lie in that shard's range (e.g. a merge), else sent again (e.g. a split). Resent
        // before everything queued: they are older than all of it (their shard sent nothing
        // after them under strict ordering), and a key's records keep their order.
        let mut resent = Vec::new();
        for m in std::mem::take(&mut self.misplaced) {
            let Misplaced {
                mut record,
                shard_id,
                sequence_number,
                mut attempt,
                ..
            } = m;
            let fits = self
                .map
                .range_of(&shard_id)
                .is_some_and(|range| record.records.iter().all(|r| range.contains(r.hash_key)));
            if fits {
                record.attempts.push(attempt);
                self.resolve_stored(record, Arc::from(shard_id), Arc::from(sequence_number));
            } else {
                let error = wrong_shard_error(&record.shard, &shard_id, &sequence_number);
                tracing::info!(stream = %self.stream, "{}", error.message);
                self.metrics.error(&error.code, 1);
                attempt.error = Some(error);
                record.attempts.push(attempt);
                self.scatter([record], now, &mut resent);
            }
        }
        self.place(resent, now, true);
    }

    /// Strict ordering, on a new map: a shard it no longer lists (split, merged) may still
    /// have a Kinesis record out (in flight, backing off, stored on an unexpected shard). Until
    /// that record is back, the shards now holding the old shard's range send nothing, or
    /// newer records of its keys would be stored before it is resent there. A gated shard
    /// that is itself retired hands its gates on to the shards holding its range.
    fn retire_lanes(&mut self, old: &ShardMap, now: Instant) {
        if !self.config.strict_ordering {
            return;
        }
        let map = &self.map;
        let successors = |id: &str| -> Vec<Arc<str>> {
            let Some(range) = old.range_of(id) else {
                return Vec::new();
            };
            map.shards()
                .iter()
                .filter(|s| s.range.start <= range.end && range.start <= s.range.end)
                .map(|s| s.id.clone())
                .collect()
        };
        let gone = |id: &str| !map.shards().iter().any(|s| &*s.id == id);
        // Gates on shards that are going away move to the shards holding their range.
        for gated in self.retired.values_mut() {
            if gated.iter().any(|id| gone(id)) {
                let mut moved = Vec::new();
                for id in gated.drain(..) {
                    if gone(&id) {
                        moved.extend(successors(&id));
                    } else {
                        moved.push(id);
                    }
                }
                moved.sort();
                moved.dedup();
                *gated = moved;
            }
        }
        let busy: Vec<Arc<str>> = self
            .shards
            .iter()
            .filter(|(id, q)| q.busy && gone(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in busy {
            let gated = successors(&id);
            self.retired.insert(id, gated);
        }
        // Count every shard's gates afresh.
        let gated: Vec<Arc<str>> = self.retired.values().flatten().cloned().collect();
        for shard in self.shards.values_mut() {
            shard.gates = 0;
        }
        for id in gated {
            self.shard_queue(&id, now).gates += 1;
        }
    }

    /// A ListShards attempt failed: a fatal error fails every waiting record at once; a
    /// retryable one counts as an attempt of each.
    pub(super) fn on_refresh_failed(&mut self, error: ApiError) {
        let fatal = !error.is_retryable();
        let list_error = format!("ListShards failed: {error}");
        if fatal {
            self.refresh = None;
        }
        let max_attempts = self.config.max_attempts;
        for mut m in std::mem::take(&mut self.misplaced) {
            m.waits += 1;
            let made = Self::attempts_made(&m.record) + 1 + m.waits;
            if fatal {
                let reason = FailureReason::Fatal {
                    code: error.code.clone().unwrap_or_else(|| "ListShards".into()),
                    message: waiting_message(&m, &list_error),
                };
                self.fail_waiting(m, reason);
            } else if made >= max_attempts {
                let reason = FailureReason::AttemptsExhausted {
                    max_attempts,
                    last_error: waiting_message(&m, &list_error),
                };
                self.fail_waiting(m, reason);
            } else {
                self.misplaced.push(m);
            }
        }
        self.list_error = Some(list_error);
    }

    /// Fails the waiting records whose TTL is over.
    pub(super) fn expire_misplaced(&mut self, now: Instant) {
        if self.misplaced.is_empty() {
            return;
        }
        let ttl = self.config.record_ttl;
        let list_error = self
            .list_error
            .clone()
            .unwrap_or_else(|| "ListShards has not answered".into());
        for m in std::mem::take(&mut self.misplaced) {
            if outlived(m.record.oldest(), ttl, now) {
                self.metrics.expired(m.record.records.len() as u64);
                let reason = FailureReason::Expired {
                    ttl,
                    last_error: waiting_message(&m, &list_error),
                };
                self.fail_waiting(m, reason);
            } else {
                self.misplaced.push(m);
            }
        }
    }

    /// When the first waiting record's TTL is over.
    pub(super) fn misplaced_deadline(&self) -> Option<Instant> {
        let ttl = self.config.record_ttl;
        self.misplaced
            .iter()
            .map(|m| later(m.record.oldest(), ttl))
            .min()
    }

    /// Fails a waiting record: the attempt that stored it where it may not be read counts.
    fn fail_waiting(&mut self, m: Misplaced, reason: FailureReason) {
        let Misplaced {
            mut record,
            shard_id,
            sequence_number,
            mut attempt,
            ..
        } = m;
        attempt.error = Some(wrong_shard_unconfirmed(
            &record,
            &shard_id,
            &sequence_number,
        ));
        record.attempts.push(attempt);
        self.fail_all(record, reason);
    }
}

/// The attempt error of an aggregate stored on an unexpected shard whose range never became
/// known.
fn wrong_shard_unconfirmed(
    record: &KinesisRecordOut,
    shard_id: &str,
    sequence_number: &str,
) -> AttemptError {
    let mut error = wrong_shard_error(&record.shard, shard_id, sequence_number);
    error.message = format!(
        "an aggregate predicted for {} was stored on {shard_id} (sequence number {sequence_number}); whether it lies in that shard's range is unknown",
        record.shard
    );
    error
}

/// Why a record that waited for a shard map fails: it was stored, maybe where readers drop it.
fn waiting_message(m: &Misplaced, list_error: &str) -> String {
    format!(
        "its aggregate was stored on {} (sequence number {}), which may not hold all its hash keys, and the shard map could not be refreshed to check ({list_error}); the record may be stored but dropped by KCL readers: resend it if in doubt",
        m.shard_id, m.sequence_number
    )
}
