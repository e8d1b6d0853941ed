//! The pipeline task: owns every stage and moves records along, one event at a time.
//!
//! Events are records and commands from the [`Producer`](crate::producer::Producer) handles,
//! finished PutRecords calls, a refreshed shard map, and timers (an aggregate or call falling
//! due, a retry's backoff ending, a shard's limiter refilling). After each event,
//! [`Pipeline::advance`] pushes whatever can move one step further. Nothing polls or spins: when
//! nothing can move, the task sleeps until the earliest timer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{KinesisApi, StreamId};
use crate::fxhash::FxHashMap;
use crate::producer::aggregator::{Aggregator, Grouping, KinesisRecordOut, seal_all};
use crate::producer::backoff::Backoff;
use crate::producer::collector::Collector;
use crate::producer::config::ProducerConfig;
use crate::producer::error::{FailureReason, RecordFailure};
use crate::producer::limiter::{LimiterConfig, ShardLimiter};
use crate::producer::metrics::Metrics;
use crate::producer::record::{
    AttemptError, BufferRoom, CallAttempt, PendingRecord, RecordState, Reply, ReplyTo,
    StoredKinesisRecord,
};
use crate::producer::retrier::{
    EntryOutcome, RetryQueue, classify_call_error, classify_entry, mismatch_error,
    wrong_shard_error,
};
use crate::producer::routes::{DEFAULT_ROUTE_CACHE_KEYS, RouteCache};
use crate::producer::sender::{Completed, Sender};
use crate::producer::shard_map::ShardMap;
use crate::record::UserRecord;

/// Records taken from the input channel per wake-up.
const INPUT_BATCH: usize = 1024;
/// Mixed into `rng_seed` for the ListShards backoff.
const REFRESH_SEED_SALT: u64 = 0x5eed_0f11_575a_d5a1;
/// Shortest sleep when a timer is already due but cannot act (float rounding in a limiter).
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// What the handles send to the pipeline task.
pub(crate) enum Input {
    Record(PendingRecord),
    /// Records of one `send_batch`, with one buffer room taken for all of them.
    Batch(BatchInput),
    /// Send everything received so far and answer when it has all resolved.
    Flush(oneshot::Sender<()>),
    /// Flush, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// What `send_batch` hands over: records accepted at `received`, and where their outcomes go.
pub(crate) struct BatchInput {
    pub records: Vec<UserRecord>,
    pub received: Instant,
    pub reply: oneshot::Sender<Vec<Reply>>,
}

/// A batch whose records are not all resolved: their outcomes so far.
struct OpenBatch {
    len: usize,
    replies: Vec<Option<Reply>>,
    remaining: usize,
    reply: oneshot::Sender<Vec<Reply>>,
}

struct ShardQueue {
    queue: VecDeque<KinesisRecordOut>,
    limiter: ShardLimiter,
    listed: bool,
    /// Strict ordering: one of its Kinesis records is in flight (or waiting to be retried).
    busy: bool,
}

enum Admit {
    Empty,
    /// Strict ordering: the shard has a record in flight.
    Blocked,
    Limited(Instant),
    CollectorFull,
}

pub(crate) struct Pipeline {
    api: Arc<dyn KinesisApi>,
    stream: StreamId,
    config: ProducerConfig,
    metrics: Arc<Metrics>,

    map: ShardMap,
    grouping: Grouping,
    refresh: Option<tokio::task::JoinHandle<()>>,
    map_tx: mpsc::UnboundedSender<ShardMap>,
    routes: RouteCache,

    aggregator: Aggregator,
    /// A fixed hasher: a refresh walks it, and a seeded run must walk it the same way.
    shards: FxHashMap<Arc<str>, ShardQueue>,
    waiting: VecDeque<Arc<str>>,
    limiter_config: LimiterConfig,
    limiter_wake: Option<Instant>,
    collector: Collector,
    sender: Sender,
    retries: RetryQueue,

    /// Unresolved records per flush epoch; `epochs[0]` is epoch `epoch_base`.
    epochs: VecDeque<u64>,
    epoch_base: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    shutdowns: Vec<oneshot::Sender<()>>,
    closing: bool,
    outstanding: u64,

    /// The next user record's number (its dedup id's sequence).
    next_seq: u64,
    /// Set when user records carry dedup ids.
    dedup_producer: Option<u64>,
    /// The buffer room `send` takes; given back in bulk after each event.
    room: Arc<BufferRoom>,
    /// Records and bytes resolved since the room was last given back.
    to_release: (usize, usize),

    finished: Vec<KinesisRecordOut>,
    expired: Vec<KinesisRecordOut>,
    /// Batches with unresolved records, by slot; free slots are reused.
    batches: Vec<Option<OpenBatch>>,
    free_batches: Vec<u32>,
    /// Stored on an unexpected shard; judged when the refreshed map tells that shard's range.
    misplaced: Vec<Misplaced>,
}

struct Misplaced {
    record: KinesisRecordOut,
    shard_id: String,
    sequence_number: String,
    attempt: CallAttempt,
}

impl Pipeline {
    pub(crate) fn new(
        api: Arc<dyn KinesisApi>,
        stream: StreamId,
        config: ProducerConfig,
        metrics: Arc<Metrics>,
        map: ShardMap,
        aggregator: Aggregator,
        room: Arc<BufferRoom>,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<Completed>,
        mpsc::UnboundedReceiver<ShardMap>,
    ) {
        let (sender, done_rx) = Sender::new(
            api.clone(),
            stream.clone(),
            config.request_timeout,
            config.max_concurrent_requests,
        );
        let (map_tx, map_rx) = mpsc::unbounded_channel();
        let dedup_producer = aggregator.dedup_producer();
        let pipeline = Pipeline {
            collector: Collector::new(config.collection_max_count, config.collection_max_size),
            retries: RetryQueue::new(Backoff::seeded(&config.backoff, config.rng_seed)),
            limiter_config: LimiterConfig {
                rate_limit_percent: config.rate_limit_percent,
                ..LimiterConfig::default()
            },
            api,
            stream,
            metrics,
            map,
            grouping: Grouping::ByShard,
            refresh: None,
            map_tx,
            routes: RouteCache::new(DEFAULT_ROUTE_CACHE_KEYS),
            aggregator,
            shards: FxHashMap::default(),
            waiting: VecDeque::new(),
            limiter_wake: None,
            sender,
            epochs: VecDeque::from([0]),
            epoch_base: 0,
            flushes: Vec::new(),
            shutdowns: Vec::new(),
            closing: false,
            outstanding: 0,
            next_seq: 0,
            dedup_producer,
            room,
            to_release: (0, 0),
            finished: Vec::new(),
            expired: Vec::new(),
            batches: Vec::new(),
            free_batches: Vec::new(),
            misplaced: Vec::new(),
            config,
        };
        (pipeline, done_rx, map_rx)
    }

    /// Runs until every handle is gone (or `shutdown` was called) and every record resolved.
    pub(crate) async fn run(
        mut self,
        mut input: mpsc::UnboundedReceiver<Input>,
        mut done: mpsc::UnboundedReceiver<Completed>,
        mut maps: mpsc::UnboundedReceiver<ShardMap>,
    ) {
        let mut buf = Vec::with_capacity(INPUT_BATCH);
        let mut input_open = true;
        loop {
            let now = Instant::now();
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                Some(completed) = done.recv() => {
                    self.on_completed(completed);
                    while let Ok(completed) = done.try_recv() {
                        self.on_completed(completed);
                    }
                }
                Some(map) = maps.recv() => self.on_new_map(map),
                n = input.recv_many(&mut buf, INPUT_BATCH), if input_open => {
                    if n == 0 {
                        input_open = false;
                        self.closing = true;
                    }
                    for item in buf.drain(..) {
                        self.on_input(item);
                    }
                }
                _ = sleep_until(wake) => {}
            }
            self.advance(Instant::now());
            let (records, bytes) = std::mem::take(&mut self.to_release);
            self.room.release(records, bytes);
            if self.closing && self.outstanding == 0 {
                break;
            }
        }
        if let Some(task) = self.refresh.take() {
            task.abort();
        }
        for ack in self.shutdowns.drain(..) {
            let _ = ack.send(());
        }
        for (_, ack) in self.flushes.drain(..) {
            let _ = ack.send(());
        }
    }

    fn flushing(&self) -> bool {
        self.closing || !self.flushes.is_empty()
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Record(PendingRecord { record, state }) => {
                self.metrics.record_received(1, u64::from(state.billed));
                self.accept(record, state);
            }
            Input::Batch(batch) => {
                let len = batch.records.len();
                let slot = match self.free_batches.pop() {
                    Some(slot) => slot,
                    None => {
                        self.batches.push(None);
                        (self.batches.len() - 1) as u32
                    }
                };
                self.batches[slot as usize] = Some(OpenBatch {
                    len,
                    // Filled in on the first outcome, unless the future is gone by then.
                    replies: Vec::new(),
                    remaining: len,
                    reply: batch.reply,
                });
                let mut bytes = 0;
                for (index, record) in batch.records.into_iter().enumerate() {
                    let billed = record.billed_bytes();
                    bytes += billed as u64;
                    let reply = ReplyTo::Batch {
                        batch: slot,
                        index: index as u32,
                    };
                    // Room as `send_batch` counted it.
                    let held_bytes =
                        BufferRoom::bytes_for(billed, self.config.max_outstanding_bytes);
                    let state = RecordState::of(&record, reply, batch.received, held_bytes);
                    self.accept(record, state);
                }
                self.metrics.record_received(len as u64, bytes);
                if len == 0 {
                    self.reply_batch(slot);
                }
            }
            Input::Flush(ack) => {
                let epoch = self.epoch_base + self.epochs.len() as u64 - 1;
                self.flushes.push((epoch, ack));
                self.epochs.push_back(0);
                self.settle_flushes();
            }
            Input::Shutdown(ack) => {
                self.closing = true;
                self.shutdowns.push(ack);
            }
        }
    }

    /// Takes a new record into the pipeline: its hash key, flush epoch and number, then the
    /// aggregator. The record's key and data are freed here, right after the aggregator copied
    /// them.
    fn accept(&mut self, record: UserRecord, mut state: RecordState) {
        let (index, seen) = if state.explicit {
            (self.map.index_of(state.hash_key), None)
        } else {
            let route = self.routes.route(&self.map, &record.partition_key);
            state.hash_key = route.hash;
            (route.shard_index, route.seen)
        };
        state.epoch = self.epoch_base + self.epochs.len() as u64 - 1;
        state.seq = self.next_seq;
        self.next_seq += 1;
        *self.epochs.back_mut().expect("one epoch is always open") += 1;
        self.outstanding += 1;
        self.aggregator.push_routed(
            &record,
            state,
            index,
            seen,
            &self.map,
            self.grouping,
            &mut self.finished,
        );
    }

    /// Delivers a record's outcome to its future, or to its batch's (which is answered when
    /// its last record resolves). `reply` is only built if someone still waits for it.
    fn reply(&mut self, to: ReplyTo, reply: impl FnOnce() -> Reply) {
        match to {
            ReplyTo::One(tx) => {
                // A dropped future wants no outcome: skip building and storing one.
                if !tx.is_closed() {
                    let _ = tx.send(reply());
                }
            }
            ReplyTo::Batch { batch, index } => {
                let open = self.batches[batch as usize]
                    .as_mut()
                    .expect("a batch stays open until its last record resolves");
                // A dropped batch future wants no outcomes: skip building them up.
                if !open.reply.is_closed() {
                    if open.replies.is_empty() {
                        open.replies.resize_with(open.len, || None);
                    }
                    open.replies[index as usize] = Some(reply());
                }
                open.remaining -= 1;
                if open.remaining == 0 {
                    self.reply_batch(batch);
                }
            }
        }
    }

    /// Answers batch `slot`, all of whose records have resolved, and frees the slot.
    fn reply_batch(&mut self, slot: u32) {
        let open = self.batches[slot as usize].take().expect("an open batch");
        self.free_batches.push(slot);
        if open.reply.is_closed() {
            return;
        }
        let replies = open
            .replies
            .into_iter()
            .map(|r| r.expect("every record of the batch resolved"))
            .collect();
        let _ = open.reply.send(replies);
    }

    /// Moves everything one step further: due retries back into shard queues, due aggregates
    /// to shard queues, shard queues through their limiters into the collector, due calls out.
    fn advance(&mut self, now: Instant) {
        while let Some(record) = self.retries.pop_due(now) {
            self.requeue(record, now);
        }
        if self.flushing() {
            self.aggregator.finish_all(&mut self.finished);
        } else {
            let shards = &self.shards;
            self.aggregator
                .finish_due(now, &mut self.finished, |shard| {
                    shards.get(shard).is_some_and(|q| !q.queue.is_empty())
                });
        }
        // Drained in place: the list keeps its room for the next event.
        let mut finished = std::mem::take(&mut self.finished);
        for record in finished.drain(..) {
            self.enqueue(record, now);
        }
        self.finished = finished;
        self.pump(now);
        let expired = std::mem::take(&mut self.expired);
        for record in expired {
            self.expire(record, now);
        }
        self.settle_flushes();
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        consider(self.aggregator.next_deadline());
        if self.sender.has_room() {
            consider(self.collector.deadline());
        }
        consider(self.retries.next_due());
        consider(self.limiter_wake);
        wake.map(|w| w.max(now + MIN_SLEEP))
    }

    fn enqueue(&mut self, record: KinesisRecordOut, now: Instant) {
        self.enqueue_at(record, now, false);
    }

    /// Queues `record` on its shard; `front`: before everything queued there.
    fn enqueue_at(&mut self, record: KinesisRecordOut, now: Instant, front: bool) {
        let config = &self.limiter_config;
        let shard = self
            .shards
            .entry(record.shard.clone())
            .or_insert_with(|| ShardQueue {
                queue: VecDeque::new(),
                limiter: ShardLimiter::new(config, now),
                listed: false,
                busy: false,
            });
        if !shard.listed {
            shard.listed = true;
            self.waiting.push_back(record.shard.clone());
        }
        if front {
            shard.queue.push_front(record);
        } else {
            shard.queue.push_back(record);
        }
    }

    /// Strict ordering: `record` no longer blocks its shard (stored, failed, or back in the
    /// queue), so the shard's next record may go.
    fn release(&mut self, record: &mut KinesisRecordOut) {
        let Some(lane) = record.lane.take() else {
            return;
        };
        if let Some(shard) = self.shards.get_mut(&lane) {
            shard.busy = false;
            if !shard.listed && !shard.queue.is_empty() {
                shard.listed = true;
                self.waiting.push_back(lane);
            }
        }
    }

    /// Admits queued Kinesis records into the collector as their shards' limiters allow, and
    /// starts calls that are due.
    fn pump(&mut self, now: Instant) {
        self.limiter_wake = None;
        let flushing = self.flushing();
        let mut rounds = self.waiting.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            match self.admit(&id, now) {
                Admit::Empty | Admit::Blocked => {
                    if let Some(shard) = self.shards.get_mut(&id) {
                        shard.listed = false;
                    }
                }
                Admit::Limited(at) => {
                    self.limiter_wake = Some(self.limiter_wake.map_or(at, |w| w.min(at)));
                    self.waiting.push_back(id);
                }
                Admit::CollectorFull => {
                    self.waiting.push_front(id);
                    if !self.sender.has_room() {
                        break;
                    }
                    self.dispatch(now);
                    rounds += 1;
                }
            }
        }
        if self.collector.is_due(now, flushing) && self.sender.has_room() {
            self.dispatch(now);
        }
    }

    fn admit(&mut self, id: &Arc<str>, now: Instant) -> Admit {
        let Some(shard) = self.shards.get_mut(id) else {
            return Admit::Empty;
        };
        let ttl = self.config.record_ttl;
        let strict = self.config.strict_ordering;
        if strict && shard.busy {
            return Admit::Blocked;
        }
        while let Some(front) = shard.queue.front() {
            if front.oldest() + ttl <= now {
                let record = shard.queue.pop_front().expect("front exists");
                self.expired.push(record);
                continue;
            }
            let bytes = front.billed_bytes();
            if !self.collector.fits(bytes) {
                return Admit::CollectorFull;
            }
            if self.config.rate_limit_enabled && !shard.limiter.try_take(bytes, now) {
                return Admit::Limited(shard.limiter.ready_at(bytes, now));
            }
            let mut record = shard.queue.pop_front().expect("front exists");
            if strict {
                record.lane = Some(id.clone());
                shard.busy = true;
            }
            if let Err(record) = self.collector.try_push(record) {
                unreachable!("the collector had room for {} bytes", record.billed_bytes());
            }
            if strict {
                return Admit::Blocked;
            }
        }
        Admit::Empty
    }

    fn dispatch(&mut self, now: Instant) {
        let mut batch = self.collector.take();
        // The call's aggregates get their MD5 trailers together, side by side.
        seal_all(&mut batch);
        self.metrics.put_records_call(batch.len());
        for record in &batch {
            self.metrics
                .buffering_time(now.saturating_duration_since(record.oldest()));
        }
        self.sender.send(batch, now);
    }

    fn on_completed(&mut self, completed: Completed) {
        let Some(mut call) = self.sender.complete(completed.id) else {
            return;
        };
        let mut calls = std::mem::take(&mut call.records);
        let now = Instant::now();
        self.metrics.request_time(completed.elapsed, calls.len());
        let attempt = |error: Option<AttemptError>| CallAttempt {
            started: call.started,
            duration: completed.elapsed,
            error,
        };
        match completed.result {
            Err(error) => {
                let (error, retryable) = classify_call_error(&error);
                tracing::warn!(stream = %self.stream, error = %error, retryable, "PutRecords call failed");
                self.metrics.error(&error.code, calls.len());
                for mut record in calls.drain(..) {
                    record.attempts.push(attempt(Some(error.clone())));
                    if retryable {
                        self.retry(record, now);
                    } else {
                        self.fail_fatal(record, &error);
                    }
                }
            }
            Ok(results) if results.len() != calls.len() => {
                let error = mismatch_error(calls.len(), results.len());
                tracing::warn!(stream = %self.stream, "{}", error.message);
                self.metrics.error(&error.code, calls.len());
                for mut record in calls.drain(..) {
                    record.attempts.push(attempt(Some(error.clone())));
                    self.retry(record, now);
                }
            }
            Ok(results) => {
                for (mut record, result) in calls.drain(..).zip(results) {
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
                            });
                            self.request_refresh();
                        }
                        EntryOutcome::Retry { error, throttled } => {
                            if throttled {
                                self.metrics.throttled(1);
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
        self.collector.recycle(calls);
    }

    /// Attempts made so far for `record`'s user records (the most any of them had).
    fn attempts_made(record: &KinesisRecordOut) -> u32 {
        let prior = record
            .records
            .iter()
            .map(|r| r.attempts.len())
            .max()
            .unwrap_or(0);
        (prior + record.attempts.len()) as u32
    }

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
    fn requeue(&mut self, mut record: KinesisRecordOut, now: Instant) {
        self.release(&mut record);
        if record.oldest() + self.config.record_ttl <= now {
            self.expire(record, now);
        } else if let Some(record) = self.recheck(record) {
            // Strict ordering: a retried record goes before everything its shard queued after
            // it (nothing of that shard was sent meanwhile: it was blocked).
            let front = self.config.strict_ordering;
            self.enqueue_at(record, now, front);
        }
    }

    /// Checks a Kinesis record built under an older shard map against the current one. Records
    /// that still land correctly are kept (re-targeted); the rest go back to the aggregator.
    fn recheck(&mut self, mut record: KinesisRecordOut) -> Option<KinesisRecordOut> {
        if record.map_version == self.map.version() {
            return Some(record);
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
            Some(record)
        } else {
            self.reaggregate(record);
            None
        }
    }

    /// Breaks a Kinesis record into its user records and aggregates them again.
    fn reaggregate(&mut self, mut record: KinesisRecordOut) {
        self.release(&mut record);
        let users = record.user_records();
        for (mut state, user) in record.records.into_iter().zip(users) {
            state
                .attempts
                .extend(record.attempts.iter().map(|a| a.for_record(state.received)));
            self.aggregator
                .push(&user, state, &self.map, self.grouping, &mut self.finished);
        }
    }

    /// Fails the user records whose TTL is over; the rest are aggregated again.
    fn expire(&mut self, mut record: KinesisRecordOut, now: Instant) {
        self.release(&mut record);
        let users = record.user_records();
        let ttl = self.config.record_ttl;
        let last_error = last_error(&record);
        let call_attempts = record.attempts;
        for (mut state, user) in record.records.into_iter().zip(users) {
            state
                .attempts
                .extend(call_attempts.iter().map(|a| a.for_record(state.received)));
            if state.received + ttl <= now {
                self.metrics.expired(1);
                let reason = FailureReason::Expired {
                    ttl,
                    last_error: last_error.clone(),
                };
                self.fail_user(state, user, reason);
            } else {
                self.aggregator
                    .push(&user, state, &self.map, self.grouping, &mut self.finished);
            }
        }
    }

    fn on_new_map(&mut self, map: ShardMap) {
        tracing::info!(stream = %self.stream, shards = map.len(), version = map.version(), "shard map refreshed");
        self.refresh = None;
        // Everything built under the old map is checked against the new one before it is sent.
        self.aggregator.finish_all(&mut self.finished);
        self.map = map;
        self.grouping = Grouping::ByShard;
        let mut queued: Vec<KinesisRecordOut> = std::mem::take(&mut self.finished);
        for shard in self.shards.values_mut() {
            queued.extend(shard.queue.drain(..));
            shard.listed = false;
        }
        self.waiting.clear();
        let open: std::collections::HashSet<&str> =
            self.map.shards().iter().map(|s| &*s.id).collect();
        self.shards.retain(|id, _| open.contains(&**id));
        let now = Instant::now();
        for record in queued {
            if let Some(record) = self.recheck(record) {
                self.enqueue(record, now);
            }
        }
        // Aggregates stored on an unexpected shard: delivered by the KCL if all their records
        // lie in that shard's range (e.g. a merge), else sent again (e.g. a split).
        for m in std::mem::take(&mut self.misplaced) {
            let Misplaced {
                mut record,
                shard_id,
                sequence_number,
                mut attempt,
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
                self.reaggregate(record);
            }
        }
    }

    /// Starts a background ListShards (with backoff on failure); until it answers, only records
    /// of one hash key are aggregated together.
    fn request_refresh(&mut self) {
        self.grouping = Grouping::ByHashKey;
        if self.refresh.is_some() {
            return;
        }
        let api = self.api.clone();
        let stream = self.stream.clone();
        let version = self.map.version() + 1;
        let tx = self.map_tx.clone();
        // Seeded apart from the retries' backoff (a test's seed gives both their own draws).
        let seed = self.config.rng_seed.map(|s| s ^ REFRESH_SEED_SALT);
        let mut backoff = Backoff::seeded(&self.config.backoff, seed);
        self.refresh = Some(tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                match ShardMap::load(&*api, &stream, version).await {
                    Ok(map) => {
                        let _ = tx.send(map);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(stream = %stream, %error, "ListShards failed; retrying");
                        tokio::time::sleep(backoff.delay_for_attempt(attempt)).await;
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
        }));
    }

    fn resolve_stored(
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

    fn fail_fatal(&mut self, record: KinesisRecordOut, error: &AttemptError) {
        let reason = FailureReason::Fatal {
            code: error.code.clone(),
            message: error.message.clone(),
        };
        self.fail_all(record, reason);
    }

    fn fail_all(&mut self, mut record: KinesisRecordOut, reason: FailureReason) {
        self.release(&mut record);
        let users = record.user_records();
        for (mut state, user) in record.records.into_iter().zip(users) {
            state
                .attempts
                .extend(record.attempts.iter().map(|a| a.for_record(state.received)));
            self.fail_user(state, user, reason.clone());
        }
    }

    fn fail_user(&mut self, state: RecordState, record: UserRecord, reason: FailureReason) {
        self.metrics.failed(1);
        self.settle(state.epoch, state.held_bytes);
        let failure = RecordFailure {
            reason,
            attempts: state.attempts.into_vec(),
            record: Some(record),
        };
        self.reply(state.reply, || Reply::Failed(Box::new(failure)));
    }

    /// One record of `epoch`, holding `held_bytes` of buffer room, resolved.
    fn settle(&mut self, epoch: u64, held_bytes: u32) {
        self.outstanding -= 1;
        if held_bytes > 0 {
            self.to_release.0 += 1;
            self.to_release.1 += held_bytes as usize;
        }
        let slot = (epoch - self.epoch_base) as usize;
        self.epochs[slot] -= 1;
    }

    /// Answers flushes whose records have all resolved.
    fn settle_flushes(&mut self) {
        while self.epochs.len() > 1 && self.epochs[0] == 0 {
            self.epochs.pop_front();
            self.epoch_base += 1;
        }
        let base = self.epoch_base;
        let mut i = 0;
        while i < self.flushes.len() {
            if self.flushes[i].0 < base {
                let (_, ack) = self.flushes.swap_remove(i);
                let _ = ack.send(());
            } else {
                i += 1;
            }
        }
    }
}

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

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
