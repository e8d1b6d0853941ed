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
use crate::producer::clock::later;
use crate::producer::collector::Collector;
use crate::producer::config::ProducerConfig;
use crate::producer::error::FlushError;
use crate::producer::hot_keys::{self, HotKeys};
use crate::producer::limiter::{LimiterConfig, ShardLimiter};
use crate::producer::metrics::Metrics;
use crate::producer::record::{
    BufferRoom, CallAttempt, PendingRecord, RecordState, Reply, ReplyTo,
};
use crate::producer::retrier::RetryQueue;
use crate::producer::routes::{DEFAULT_ROUTE_CACHE_KEYS, RouteCache};
use crate::producer::sender::{Completed, Sender};
use crate::producer::shard_map::ShardMap;
use crate::producer::unwind::catch;
use crate::record::UserRecord;

mod outcomes;
mod refresh;
mod teardown;
use outcomes::outlived;
pub(crate) use refresh::Refresh;

/// Records taken from the input channel per wake-up.
const INPUT_BATCH: usize = 1024;
/// Shortest sleep when a timer is already due but cannot act (float rounding in a limiter).
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// What the handles send to the pipeline task.
pub(crate) enum Input {
    Record(PendingRecord),
    /// Records of one `send_batch`, with one buffer room taken for all of them.
    Batch(BatchInput),
    /// Send everything received so far and answer when it has all resolved.
    Flush(Ack),
    /// Flush, then stop.
    Shutdown(Ack),
    /// Fail everything not yet resolved, then stop.
    Abort(Ack),
}

/// The answer to a flush, shutdown or abort: whether every record was seen through.
pub(crate) type Ack = oneshot::Sender<Result<(), FlushError>>;

/// What woke the pipeline task.
enum Event {
    Completed(Completed),
    Refresh(Refresh),
    /// Inputs are in the buffer.
    Input,
    Timer,
}

/// What `send_batch` hands over: records accepted at `received`, and where their outcomes go.
pub(crate) struct BatchInput {
    pub records: Vec<UserRecord>,
    pub received: Instant,
    pub reply: oneshot::Sender<Vec<Reply>>,
    /// Each record's number (its dedup id's sequence) when the caller chose them (a spooled
    /// producer resends with the numbers of an earlier process); `None`: the pipeline's own.
    pub seqs: Option<Vec<u64>>,
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
    /// Strict ordering: shards a refresh retired whose record is still out (see
    /// [`Pipeline::retired`]) and whose range this shard now holds; it sends nothing until
    /// they are back.
    gates: u32,
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
    map_tx: mpsc::UnboundedSender<Refresh>,
    /// The last ListShards failure while records wait for a map.
    list_error: Option<String>,
    routes: RouteCache,
    /// Which keys carry each shard's bytes, to name them when a shard alone is throttled.
    hot_keys: HotKeys,

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
    flushes: Vec<(u64, Ack)>,
    /// Shutdowns and aborts, answered when the task stops.
    shutdowns: Vec<Ack>,
    closing: bool,
    /// Set when the pipeline stopped short (abort, or its own failure): what was not yet
    /// resolved failed, and new inputs are refused with their records handed back.
    stopped: Option<FlushError>,
    /// The Kinesis records of the call being answered, last first: kept in the pipeline's
    /// state (not on the stack) so that a failure while they are read does not lose them.
    answering: Vec<KinesisRecordOut>,
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
    /// Batches with unresolved records, by slot; free slots are reused.
    batches: Vec<Option<OpenBatch>>,
    free_batches: Vec<u32>,
    /// Stored on an unexpected shard; judged when the refreshed map tells that shard's range.
    misplaced: Vec<Misplaced>,
    /// Strict ordering: shards a refresh took out of the map while one of their Kinesis
    /// records was still out (in flight, backing off, or waiting as misplaced), with the
    /// shards now holding their range. Those are gated until the record is back, so that
    /// nothing newer of its keys is sent before it is resent.
    retired: FxHashMap<Arc<str>, Vec<Arc<str>>>,
}

struct Misplaced {
    record: KinesisRecordOut,
    shard_id: String,
    sequence_number: String,
    attempt: CallAttempt,
    /// ListShards calls that failed while it waited: each counts as one of its attempts.
    waits: u32,
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
        mpsc::UnboundedReceiver<Refresh>,
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
            list_error: None,
            routes: RouteCache::new(DEFAULT_ROUTE_CACHE_KEYS),
            hot_keys: HotKeys::default(),
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
            stopped: None,
            answering: Vec::new(),
            outstanding: 0,
            next_seq: 0,
            dedup_producer,
            room,
            to_release: (0, 0),
            finished: Vec::new(),
            batches: Vec::new(),
            free_batches: Vec::new(),
            misplaced: Vec::new(),
            retired: FxHashMap::default(),
            config,
        };
        (pipeline, done_rx, map_rx)
    }

    /// Runs until every handle is gone (or `shutdown` or `abort` was called) and every record
    /// resolved. A panic while an event is handled (a bug) fails every record not yet resolved
    /// with its record handed back, instead of stranding them with the task.
    pub(crate) async fn run(
        mut self,
        mut input: mpsc::UnboundedReceiver<Input>,
        mut done: mpsc::UnboundedReceiver<Completed>,
        mut maps: mpsc::UnboundedReceiver<Refresh>,
    ) {
        let mut buf = Vec::with_capacity(INPUT_BATCH);
        let mut input_open = true;
        let mut wake = None;
        loop {
            let event = tokio::select! {
                biased;
                Some(completed) = done.recv() => Event::Completed(completed),
                Some(refresh) = maps.recv() => Event::Refresh(refresh),
                n = input.recv_many(&mut buf, INPUT_BATCH), if input_open => {
                    if n == 0 {
                        input_open = false;
                    }
                    Event::Input
                }
                _ = sleep_until(wake) => Event::Timer,
            };
            match catch(|| self.step(event, &mut done, &mut buf, input_open)) {
                Ok(next) => wake = next,
                Err(panic) => {
                    self.fail(panic, &mut buf);
                    input.close();
                    while let Ok(item) = input.try_recv() {
                        buf.push(item);
                    }
                    self.fail_inputs(&mut buf);
                    break;
                }
            }
            if self.closing {
                // Nothing more gets in: a record sent from now on is handed back by `send`,
                // and what is already in the channel is still read (and resolved).
                input.close();
            }
            if self.closing && !input_open && self.outstanding == 0 {
                break;
            }
        }
        self.finish();
    }

    /// Handles one event and moves everything that can move; returns when to wake next.
    fn step(
        &mut self,
        event: Event,
        done: &mut mpsc::UnboundedReceiver<Completed>,
        buf: &mut Vec<Input>,
        input_open: bool,
    ) -> Option<Instant> {
        match event {
            Event::Completed(completed) => {
                self.on_completed(completed);
                while let Ok(completed) = done.try_recv() {
                    self.on_completed(completed);
                }
            }
            Event::Refresh(Refresh::Map(map)) => self.on_new_map(map),
            Event::Refresh(Refresh::Failed(error)) => self.on_refresh_failed(error),
            Event::Input => {
                if !input_open {
                    self.closing = true;
                }
                // Taken one at a time from the end: what is not taken yet stays in `buf`.
                buf.reverse();
                while let Some(item) = buf.pop() {
                    self.on_input(item);
                }
            }
            Event::Timer => {}
        }
        let now = Instant::now();
        self.advance(now);
        self.give_back_room();
        self.next_wake(now)
    }

    /// Gives back the buffer room of the records resolved since the last time.
    fn give_back_room(&mut self) {
        let (records, bytes) = std::mem::take(&mut self.to_release);
        self.room.release(records, bytes);
    }

    fn flushing(&self) -> bool {
        self.closing || !self.flushes.is_empty()
    }

    fn on_input(&mut self, input: Input) {
        if self.stopped.is_some() {
            self.refuse(input);
            return;
        }
        match input {
            Input::Record(PendingRecord { record, state }) => {
                self.metrics.record_received(1, u64::from(state.billed));
                self.accept(record, state, None);
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
                let mut seqs = batch.seqs.map(Vec::into_iter);
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
                    let seq = seqs.as_mut().and_then(Iterator::next);
                    self.accept(record, state, seq);
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
            Input::Abort(ack) => {
                self.abort();
                self.shutdowns.push(ack);
            }
        }
    }

    /// Takes a new record into the pipeline: its hash key, flush epoch and number, then the
    /// aggregator. The record's key and data are freed here, right after the aggregator copied
    /// them. `seq`: the record's number if the caller chose it, else the next one.
    fn accept(&mut self, record: UserRecord, mut state: RecordState, seq: Option<u64>) {
        let (index, seen) = if state.explicit {
            (self.map.index_of(state.hash_key), None)
        } else {
            let route = self.routes.route(&self.map, &record.partition_key);
            state.hash_key = route.hash;
            (route.shard_index, route.seen)
        };
        self.hot_keys.observe(
            &self.map,
            index,
            state.hash_key,
            &record.partition_key,
            u64::from(state.billed),
        );
        state.epoch = self.epoch_base + self.epochs.len() as u64 - 1;
        state.seq = seq.unwrap_or(self.next_seq);
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

    /// The service throttled an entry on `shard`: counted, and reported with its heaviest keys
    /// if the shard carries well over the others' bytes (see [`hot_keys`]).
    fn on_throttled_entry(&mut self, shard: &str, now: Instant) {
        self.metrics.shard_throttled(shard);
        if let Some(hot) = self.hot_keys.on_throttled(&self.map, shard, now) {
            hot_keys::report(&self.metrics, &self.stream, hot);
        }
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
        self.expire_misplaced(now);
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
        consider(self.misplaced_deadline());
        wake.map(|w| w.max(later(now, MIN_SLEEP)))
    }

    fn enqueue(&mut self, record: KinesisRecordOut, now: Instant) {
        self.enqueue_at(record, now, false);
    }

    /// The queue of shard `id`, made if it has none yet.
    fn shard_queue(&mut self, id: &Arc<str>, now: Instant) -> &mut ShardQueue {
        let config = &self.limiter_config;
        self.shards.entry(id.clone()).or_insert_with(|| ShardQueue {
            queue: VecDeque::new(),
            limiter: ShardLimiter::new(config, now),
            listed: false,
            busy: false,
            gates: 0,
        })
    }

    /// Queues `record` on its shard; `front`: before everything queued there.
    fn enqueue_at(&mut self, record: KinesisRecordOut, now: Instant, front: bool) {
        let id = record.shard.clone();
        let shard = self.shard_queue(&id, now);
        let list = !shard.listed;
        shard.listed = true;
        if front {
            shard.queue.push_front(record);
        } else {
            shard.queue.push_back(record);
        }
        if list {
            self.waiting.push_back(id);
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
        } else if let Some(gated) = self.retired.remove(&lane) {
            // A shard a refresh retired: the shards holding its range may send again.
            for id in gated {
                if let Some(shard) = self.shards.get_mut(&id) {
                    shard.gates = shard.gates.saturating_sub(1);
                    if !shard.listed && !shard.queue.is_empty() {
                        shard.listed = true;
                        self.waiting.push_back(id);
                    }
                }
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
        let ttl = self.config.record_ttl;
        let strict = self.config.strict_ordering;
        loop {
            let Some(shard) = self.shards.get_mut(id) else {
                return Admit::Empty;
            };
            if strict && (shard.busy || shard.gates > 0) {
                return Admit::Blocked;
            }
            let Some(front) = shard.queue.front() else {
                return Admit::Empty;
            };
            if outlived(front.oldest(), ttl, now) {
                // Its survivors go back in its place, and are looked at next: they come
                // before everything queued behind it. Each round ends: survivors are alive.
                let record = shard.queue.pop_front().expect("front exists");
                self.expire_queued(record, now);
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
                let _ = ack.send(self.stopped.clone().map_or(Ok(()), Err));
            } else {
                i += 1;
            }
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
