//! Stage 3, the aggregator: packs user records bound for the same shard into one KPL aggregate
//! (one Kinesis record), and hands back finished Kinesis records.
//!
//! **KCL safety.** The KCL drops a whole aggregate if any user record in it hashes outside the
//! shard it was read from. So an aggregate only ever holds records predicted for one shard
//! (in [`Grouping::ByShard`]), and while the shard map is known to be stale — a put landed on an
//! unexpected shard, so a split or merge happened — only records with the *same hash key*
//! ([`Grouping::ByHashKey`]), which no reshard can separate. Aggregates still built under an
//! older map are checked again before they are sent (see the pipeline).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::producer::clock::later;

use crate::client::PutRecordsEntry;
use crate::codec::aggregate::{AggregateBuilder, AggregateLimits, Full, KeySlot, Unsealed};
use crate::codec::deaggregate::Deaggregator;
use crate::codec::frame::Compressor;
use crate::dedup::{DEDUP_ID_MAX_LEN, DEDUP_TAG_KEY, DedupId};
use crate::fxhash::FxHashMap;
use crate::hash::HashKey;
use crate::producer::record::{CallAttempt, RecordState};
use crate::producer::shard_map::ShardMap;
use crate::record::UserRecord;

/// A Kinesis record on its way: one PutRecords entry and the user records it carries.
#[derive(Debug)]
pub(crate) struct KinesisRecordOut {
    pub entry: PutRecordsEntry,
    /// Its user records, in order (their keys and data are in `entry`).
    pub records: Vec<RecordState>,
    /// The shard it is predicted to land on.
    pub shard: Arc<str>,
    /// The shard map version that prediction came from.
    pub map_version: u64,
    /// All its user records share one hash key: it lands correctly on whatever shard owns it.
    pub single_hash: bool,
    /// Send by then (oldest user record + max buffered time).
    pub deadline: Instant,
    /// Attempts this Kinesis record has had.
    pub attempts: Vec<CallAttempt>,
    /// Strict ordering: the shard queue this record blocks until it resolves.
    pub lane: Option<Arc<str>>,
    /// `entry.data` is a KPL aggregate (not one record's data as is).
    pub aggregated: bool,
    /// What `entry.data` was before compression, if it was compressed.
    pub uncompressed: Option<Bytes>,
    /// An aggregate waiting for its MD5 trailer (`entry.data` is empty until then): sealed
    /// with the other aggregates of its PutRecords call, side by side ([`seal_all`]).
    pub unsealed: Option<Unsealed>,
}

/// Seals every aggregate of `records` that still waits for its MD5 trailer.
pub(crate) fn seal_all(records: &mut [KinesisRecordOut]) {
    Unsealed::seal_many(
        records,
        |r| r.unsealed.take(),
        |r, data| r.entry.data = data,
    );
}

impl KinesisRecordOut {
    /// Bytes the service counts: partition key + data (the trailer counted before it is
    /// written).
    pub fn billed_bytes(&self) -> usize {
        self.entry.billed_bytes() + self.unsealed.as_ref().map_or(0, Unsealed::sealed_len)
    }

    /// Writes its MD5 trailer now if it still waits for one.
    pub fn seal(&mut self) {
        if let Some(unsealed) = self.unsealed.take() {
            self.entry.data = unsealed.seal();
        }
    }

    /// Its user records rebuilt from the Kinesis record, in order: the aggregator keeps only
    /// their states. For the rare paths that aggregate records again or hand them back to the
    /// caller.
    pub fn user_records(&mut self) -> Vec<UserRecord> {
        self.seal();
        let data = self.uncompressed.as_ref().unwrap_or(&self.entry.data);
        let explicit = |state: &RecordState| state.explicit.then_some(state.hash_key);
        if !self.aggregated {
            return self
                .records
                .iter()
                .map(|state| UserRecord {
                    partition_key: self.entry.partition_key.clone(),
                    explicit_hash_key: explicit(state),
                    data: data.clone(),
                })
                .collect();
        }
        let decoded = Deaggregator::new()
            .deaggregate(data, &self.entry.partition_key, None)
            .expect("kpl reads the aggregates it wrote");
        assert_eq!(
            decoded.len(),
            self.records.len(),
            "an aggregate holds its user records"
        );
        self.records
            .iter()
            .zip(decoded)
            .map(|(state, d)| UserRecord {
                partition_key: d.partition_key.into(),
                explicit_hash_key: explicit(state),
                data: d.data,
            })
            .collect()
    }

    /// The earliest `received` among its user records.
    pub fn oldest(&self) -> Instant {
        self.records
            .iter()
            .map(|r| r.received)
            .min()
            .unwrap_or(self.deadline)
    }
}

/// How records are grouped into aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// One aggregate per predicted shard: the normal mode.
    ByShard,
    /// One aggregate per hash key: while the shard map is stale.
    ByHashKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Shard(usize),
    Hash(u128),
}

struct Open {
    /// Unique among the aggregator's aggregates (see [`KeySeen`]).
    serial: u64,
    builder: AggregateBuilder,
    records: Vec<RecordState>,
    deadline: Instant,
    /// When it is next looked at: its deadline, or later while its shard has a backlog.
    check: Instant,
    shard: Arc<str>,
    first_hash: HashKey,
    single_hash: bool,
}

/// Where a caller last saw a partition key go: the aggregate (by serial) and the index of the
/// key in its key table. Kept per key by the pipeline's route cache, so the next record of
/// the key in the same aggregate needs no lookup in the aggregate's key table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeySeen {
    aggregate: u64,
    key_index: u32,
}

impl Default for KeySeen {
    /// Seen in no aggregate.
    fn default() -> Self {
        KeySeen {
            aggregate: u64::MAX,
            key_index: 0,
        }
    }
}

/// Open aggregates: by shard index in a list (no hashing per record), by hash key in a map.
#[derive(Default)]
struct OpenSet {
    by_shard: Vec<Option<Open>>,
    by_hash: FxHashMap<u128, Open>,
}

impl OpenSet {
    fn get(&self, key: &Key) -> Option<&Open> {
        match *key {
            Key::Shard(i) => self.by_shard.get(i).and_then(Option::as_ref),
            Key::Hash(h) => self.by_hash.get(&h),
        }
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Open> {
        match *key {
            Key::Shard(i) => self.by_shard.get_mut(i).and_then(Option::as_mut),
            Key::Hash(h) => self.by_hash.get_mut(&h),
        }
    }

    fn insert(&mut self, key: Key, open: Open) {
        match key {
            Key::Shard(i) => {
                if self.by_shard.len() <= i {
                    self.by_shard.resize_with(i + 1, || None);
                }
                self.by_shard[i] = Some(open);
            }
            Key::Hash(h) => {
                self.by_hash.insert(h, open);
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Open> {
        match *key {
            Key::Shard(i) => self.by_shard.get_mut(i).and_then(Option::take),
            Key::Hash(h) => self.by_hash.remove(&h),
        }
    }
}

/// Per-shard (or per-hash-key) open aggregates.
pub(crate) struct Aggregator {
    limits: AggregateLimits,
    max_buffered_time: Duration,
    compressor: Option<Compressor>,
    open: OpenSet,
    deadlines: BTreeSet<(Instant, Key)>,
    map_version: u64,
    spare: Vec<AggregateBuilder>,
    /// The next aggregate's serial.
    next_serial: u64,
    /// Room for user records a new aggregate's list gets: the recent largest aggregate, so
    /// lists seldom grow (growing a list of tens of kilobytes is a copy and a large free).
    list_capacity: usize,
    /// Tag each user record with its dedup id under this producer id.
    dedup_producer: Option<u64>,
    /// Emptied user-record lists of resolved Kinesis records, reused: an aggregate's list is
    /// tens of kilobytes, and a fresh one per aggregate cost more in malloc and cold memory
    /// than filling it.
    spare_lists: Vec<Vec<RecordState>>,
    /// Data buffers of stored aggregates, reused for the same reason: allocating and freeing
    /// one of ~50 KB per aggregate also made glibc's malloc consolidate its free lists each
    /// time, which cost more than the MD5.
    spare_buffers: Vec<BytesMut>,
    /// Most user-record slots (summed list capacities) and buffer bytes kept for reuse.
    keep_slots: usize,
    keep_bytes: usize,
    /// User-record slots and buffer bytes kept now.
    kept_slots: usize,
    kept_bytes: usize,
}

/// What an aggregator keeps for reuse unless told otherwise ([`Aggregator::keep_for_reuse`]).
const DEFAULT_KEEP_SLOTS: usize = 1 << 16;
const DEFAULT_KEEP_BYTES: usize = 8 << 20;

impl Aggregator {
    /// `limits.max_count == 1` turns aggregation off: every record is its own Kinesis record.
    pub fn new(
        limits: AggregateLimits,
        max_buffered_time: Duration,
        compressor: Option<Compressor>,
        dedup_producer: Option<u64>,
    ) -> Self {
        Aggregator {
            dedup_producer,
            spare_lists: Vec::new(),
            spare_buffers: Vec::new(),
            keep_slots: DEFAULT_KEEP_SLOTS,
            keep_bytes: DEFAULT_KEEP_BYTES,
            kept_slots: 0,
            kept_bytes: 0,
            limits,
            max_buffered_time,
            compressor,
            open: OpenSet::default(),
            deadlines: BTreeSet::new(),
            map_version: 0,
            spare: Vec::new(),
            next_serial: 0,
            list_capacity: 1,
        }
    }

    /// Keeps at most `slots` user-record slots in emptied lists and `bytes` of aggregate
    /// buffers for reuse. The producer passes its buffer limits, capped: what it keeps is
    /// never more than what its outstanding records may hold anyway.
    pub fn keep_for_reuse(mut self, slots: usize, bytes: usize) -> Self {
        self.keep_slots = slots;
        self.keep_bytes = bytes;
        self
    }

    /// Adds a record predicted by `map`; Kinesis records finished on the way go to `out`.
    /// The map must be the one every open aggregate was built with (finish them all first
    /// when it changes). The pipeline routes through its key cache instead
    /// ([`Aggregator::push_routed`]); the stage benches and unit tests use this.
    #[cfg(any(test, feature = "bench-internals"))]
    pub fn push(
        &mut self,
        record: &UserRecord,
        state: RecordState,
        map: &ShardMap,
        grouping: Grouping,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        let index = map.index_of(state.hash_key);
        self.push_routed(record, state, index, None, map, grouping, out);
    }

    /// [`push`](Self::push) with the record's shard index in `map` already known
    /// (`map.index_of(state.hash_key)`: the pipeline remembers it per partition key), and
    /// where the caller last saw this exact partition key go (`seen`, updated here).
    // One call per record on the hot path: its arguments are the stages' state, not options.
    #[allow(clippy::too_many_arguments)]
    pub fn push_routed(
        &mut self,
        record: &UserRecord,
        state: RecordState,
        index: usize,
        seen: Option<&mut KeySeen>,
        map: &ShardMap,
        grouping: Grouping,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        debug_assert_eq!(index, map.index_of(state.hash_key));
        self.map_version = map.version();
        let hash = state.hash_key;
        let key = match grouping {
            Grouping::ByShard => Key::Shard(index),
            Grouping::ByHashKey => Key::Hash(hash.0),
        };
        let dedup = self.dedup_producer;
        if let Some(open) = self.open.get_mut(&key) {
            let slot = match seen.as_deref() {
                None => KeySlot::Look,
                Some(s) if s.aggregate == open.serial => KeySlot::Known(s.key_index),
                Some(_) => KeySlot::New,
            };
            if let Ok(key_index) = push_into(&mut open.builder, record, &state, dedup, slot) {
                if let Some(seen) = seen {
                    *seen = KeySeen {
                        aggregate: open.serial,
                        key_index,
                    };
                }
                open.single_hash &= open.first_hash == hash;
                open.records.push(state);
                if open.records.len() >= self.limits.max_count {
                    self.finish(key, out);
                }
                return;
            }
            self.finish(key, out);
        }
        let (open, key_index) = self.start(record, state, index, map);
        if let Some(seen) = seen {
            *seen = KeySeen {
                aggregate: open.serial,
                key_index,
            };
        }
        if self.limits.max_count <= 1 {
            out.push(self.seal(open));
            return;
        }
        self.deadlines.insert((open.deadline, key));
        self.open.insert(key, open);
    }

    /// A new aggregate holding `record` (predicted for shard `index` of `map`), and the index
    /// of its partition key in the aggregate's key table.
    fn start(
        &mut self,
        record: &UserRecord,
        state: RecordState,
        index: usize,
        map: &ShardMap,
    ) -> (Open, u32) {
        let hash = state.hash_key;
        let dedup = self.dedup_producer;
        let mut builder = self
            .spare
            .pop()
            .unwrap_or_else(|| AggregateBuilder::new(self.limits));
        let key_index = push_into(&mut builder, record, &state, dedup, KeySlot::New)
            .expect("an empty aggregate accepts any record");
        let serial = self.next_serial;
        self.next_serial += 1;
        // The buffered time counts from when the record reached the pipeline: a record that
        // waited in a backlog goes into an aggregate that still gets time to fill, instead of
        // a stream of tiny ones (each costing a PutRecords entry) that deepen the backlog.
        let deadline = later(state.received.max(Instant::now()), self.max_buffered_time);
        let shard = map.shard(index).id.clone();
        let capacity = self.list_capacity.min(self.limits.max_count);
        let mut records = match self.spare_lists.pop() {
            Some(mut list) => {
                self.kept_slots -= list.capacity();
                list.reserve(capacity);
                list
            }
            None => Vec::with_capacity(capacity),
        };
        records.push(state);
        let open = Open {
            serial,
            builder,
            records,
            deadline,
            check: deadline,
            shard,
            first_hash: hash,
            single_hash: true,
        };
        (open, key_index)
    }

    /// Aggregates `records` (in order, predicted by `map`) apart from the open aggregates and
    /// finishes what it built at once, into `out`: for records that must keep their place in
    /// their shard's queue (the survivors of a partly expired aggregate, records of an
    /// aggregate the map no longer fits) instead of joining newer records in an open
    /// aggregate. Each shard's (hash key's) records come out in the order they went in.
    pub fn pack(
        &mut self,
        records: impl IntoIterator<Item = (UserRecord, RecordState)>,
        map: &ShardMap,
        grouping: Grouping,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        self.map_version = map.version();
        let dedup = self.dedup_producer;
        // Few at a time (one aggregate's worth, or a refresh's handful of shards).
        let mut open: Vec<(Key, Open)> = Vec::new();
        for (record, state) in records {
            let index = map.index_of(state.hash_key);
            let key = match grouping {
                Grouping::ByShard => Key::Shard(index),
                Grouping::ByHashKey => Key::Hash(state.hash_key.0),
            };
            if let Some(at) = open.iter().position(|(k, _)| *k == key) {
                let current = &mut open[at].1;
                if push_into(&mut current.builder, &record, &state, dedup, KeySlot::Look).is_ok() {
                    current.single_hash &= current.first_hash == state.hash_key;
                    current.records.push(state);
                    if current.records.len() >= self.limits.max_count {
                        let (_, full) = open.swap_remove(at);
                        out.push(self.seal(full));
                    }
                    continue;
                }
                let (_, full) = open.swap_remove(at);
                out.push(self.seal(full));
            }
            let (started, _) = self.start(&record, state, index, map);
            if self.limits.max_count <= 1 {
                out.push(self.seal(started));
            } else {
                open.push((key, started));
            }
        }
        for (_, last) in open {
            out.push(self.seal(last));
        }
    }

    /// The producer id of the dedup ids it writes, if it writes them.
    pub fn dedup_producer(&self) -> Option<u64> {
        self.dedup_producer
    }

    /// Takes back an emptied user-record list for reuse.
    pub fn recycle(&mut self, mut list: Vec<RecordState>) {
        list.clear();
        if list.capacity() > 0 && self.kept_slots + list.capacity() <= self.keep_slots {
            self.kept_slots += list.capacity();
            self.spare_lists.push(list);
        }
    }

    /// Takes back the data of a resolved Kinesis record, to write a later aggregate into it if
    /// nothing else holds it and it has an aggregate's room.
    pub fn recycle_data(&mut self, data: Bytes) {
        if self.kept_bytes + self.limits.max_bytes > self.keep_bytes {
            return;
        }
        if let Ok(buf) = data.try_into_mut()
            && buf.capacity() >= self.limits.max_bytes
        {
            self.kept_bytes += buf.capacity();
            self.spare_buffers.push(buf);
        }
    }

    /// Finishes the aggregates whose buffered time is up, except those whose shard still has
    /// a backlog (`backlogged(shard)`): they could not leave before it anyway, so they keep
    /// filling (a full one finishes by its size) and are looked at again a quarter of the
    /// buffered time later. Under throttling or a closed loop's bursts this keeps aggregates
    /// full instead of sending part-empty ones into a queue that waits for the shard.
    ///
    /// When one aggregate finishes by time, every other open aggregate whose shard has no
    /// backlog finishes with it, so that they leave in the same PutRecords call: below
    /// capacity the stream then makes one call per buffered time, whatever the phase of each
    /// shard's aggregates (each shard's own deadline would drift apart from the others' and
    /// cost a call of its own, ~0.8 ms of CPU through the SDK). No record waits longer for it;
    /// at capacity shards are backlogged or fill their aggregates by size first.
    pub fn finish_due(
        &mut self,
        now: Instant,
        out: &mut Vec<KinesisRecordOut>,
        backlogged: impl Fn(&str) -> bool,
    ) {
        let recheck = (self.max_buffered_time / 4).max(Duration::from_millis(1));
        let mut finished_by_time = false;
        while let Some(&(check, key)) = self.deadlines.first() {
            if check > now {
                break;
            }
            let open = self
                .open
                .get_mut(&key)
                .expect("a deadline has its aggregate");
            if backlogged(&open.shard) {
                self.deadlines.remove(&(check, key));
                open.check = later(now, recheck);
                self.deadlines.insert((open.check, key));
            } else {
                self.finish(key, out);
                finished_by_time = true;
            }
        }
        if finished_by_time {
            let riders: Vec<Key> = self
                .deadlines
                .iter()
                .filter(|(_, key)| {
                    self.open
                        .get(key)
                        .is_some_and(|open| !backlogged(&open.shard))
                })
                .map(|&(_, key)| key)
                .collect();
            for key in riders {
                self.finish(key, out);
            }
        }
    }

    /// Finishes every open aggregate (flush, shutdown, or a new shard map).
    pub fn finish_all(&mut self, out: &mut Vec<KinesisRecordOut>) {
        while let Some(&(_, key)) = self.deadlines.first() {
            self.finish(key, out);
        }
    }

    /// When the next aggregate falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    fn finish(&mut self, key: Key, out: &mut Vec<KinesisRecordOut>) {
        if let Some(open) = self.open.remove(&key) {
            self.deadlines.remove(&(open.check, key));
            out.push(self.seal(open));
        }
    }

    fn seal(&mut self, mut open: Open) -> KinesisRecordOut {
        let len = open.records.len();
        self.list_capacity = len.max(self.list_capacity - self.list_capacity / 256);
        let aggregated = open.builder.is_aggregate();
        let buf = if aggregated {
            match self.spare_buffers.pop() {
                Some(buf) => {
                    self.kept_bytes -= buf.capacity();
                    buf
                }
                None => BytesMut::with_capacity(self.limits.max_bytes),
            }
        } else {
            BytesMut::new()
        };
        let (mut record, mut unsealed) = open
            .builder
            .finish_unsealed(buf)
            .expect("an open aggregate holds at least one record");
        self.spare.push(open.builder);
        let mut uncompressed = None;
        if let Some(compressor) = &mut self.compressor {
            // What is compressed is the whole aggregate, trailer included.
            if let Some(unsealed) = unsealed.take() {
                record.data = unsealed.seal();
            }
            if let Some(framed) = compressor.compress_bytes(&record.data) {
                // Kept until the record resolves: the user records are restored from it if
                // needed.
                uncompressed = Some(std::mem::replace(&mut record.data, framed));
            }
        }
        KinesisRecordOut {
            entry: PutRecordsEntry {
                partition_key: record.partition_key,
                explicit_hash_key: record.explicit_hash_key,
                data: record.data,
            },
            records: open.records,
            shard: open.shard,
            map_version: self.map_version,
            single_hash: open.single_hash,
            deadline: open.deadline,
            attempts: Vec::new(),
            lane: None,
            aggregated,
            uncompressed,
            unsealed,
        }
    }
}

/// Adds `record` to `builder`, tagged with its dedup id if `dedup_producer` is set; `slot`:
/// where its partition key is in `builder`, as far as the caller knows. Returns the key's index.
fn push_into(
    builder: &mut AggregateBuilder,
    record: &UserRecord,
    state: &RecordState,
    dedup_producer: Option<u64>,
    slot: KeySlot,
) -> Result<u32, Full> {
    match dedup_producer {
        None => builder.push_inner(record, state.hash_key, &[], slot),
        Some(producer) => {
            let mut buf = [0u8; DEDUP_ID_MAX_LEN];
            let id = DedupId {
                producer,
                seq: state.seq,
            }
            .encode(&mut buf);
            builder.push_inner(record, state.hash_key, &[(DEDUP_TAG_KEY, Some(id))], slot)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::codec::deaggregate::Deaggregator;
    use crate::producer::record::PendingRecord;
    use crate::producer::shard_map::even_shards;

    fn aggregator() -> Aggregator {
        let limits = AggregateLimits {
            max_bytes: 4096,
            max_count: usize::MAX,
        };
        Aggregator::new(limits, Duration::from_secs(1), None, None)
    }

    /// Pushes a record of `key` and `data`, routed by its key's MD5.
    fn push(
        agg: &mut Aggregator,
        key: &str,
        data: &str,
        map: &ShardMap,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        let (mut p, _) =
            PendingRecord::new(UserRecord::new(key, data.to_owned()), Instant::now(), 0);
        p.state.hash_key = p.record.hash_key();
        agg.push(&p.record, p.state, map, Grouping::ByShard, out);
    }

    fn decoded(out: &KinesisRecordOut) -> Vec<(String, Bytes)> {
        Deaggregator::new()
            .deaggregate(&out.entry.data, &out.entry.partition_key, None)
            .unwrap()
            .into_iter()
            .map(|r| (r.partition_key.into(), r.data))
            .collect()
    }

    #[test]
    fn every_aggregate_holds_only_its_shard_s_records() {
        let map = ShardMap::new(&even_shards(8), 1).unwrap();
        let mut agg = aggregator();
        let mut out = Vec::new();
        for i in 0..2_000 {
            push(&mut agg, &format!("k{i}"), "data", &map, &mut out);
        }
        agg.finish_all(&mut out);
        seal_all(&mut out);
        assert_eq!(out.iter().map(|o| o.records.len()).sum::<usize>(), 2_000);
        for o in &out {
            let range = map.shard(map.index_of(o.records[0].hash_key)).range;
            assert!(o.records.iter().all(|r| range.contains(r.hash_key)));
            assert_eq!(
                &*o.shard,
                &*map.shard(map.index_of(o.records[0].hash_key)).id
            );
        }
    }

    #[test]
    fn remembered_key_slots_write_the_same_aggregates_as_looking_keys_up() {
        // Records of a few keys over two shards, in aggregates small enough that each key
        // spans several of them: the slot a key was seen at is right only in its aggregate.
        let map = ShardMap::new(&even_shards(2), 1).unwrap();
        let keys: Vec<String> = (0..7).map(|k| format!("key-{k}")).collect();
        let records: Vec<UserRecord> = (0..600)
            .map(|i| UserRecord::new(keys[i * 5 % 7].clone(), format!("record {i:>40}")))
            .collect();
        let run = |remember: bool| {
            let mut agg = aggregator();
            let mut seen: HashMap<String, KeySeen> = HashMap::new();
            let mut out = Vec::new();
            for record in &records {
                let (mut p, _) = PendingRecord::new(record.clone(), Instant::now(), 0);
                p.state.hash_key = record.hash_key();
                let index = map.index_of(p.state.hash_key);
                let slot = remember.then(|| seen.entry(record.partition_key.clone()).or_default());
                agg.push_routed(
                    &p.record,
                    p.state,
                    index,
                    slot,
                    &map,
                    Grouping::ByShard,
                    &mut out,
                );
            }
            agg.finish_all(&mut out);
            seal_all(&mut out);
            out
        };
        let (looked_up, remembered) = (run(false), run(true));
        assert!(looked_up.len() > 4, "{} aggregates", looked_up.len());
        assert_eq!(looked_up.len(), remembered.len());
        let mut all = Vec::new();
        for (a, b) in looked_up.iter().zip(&remembered) {
            assert_eq!(
                a.entry, b.entry,
                "byte for byte, one key table entry per key"
            );
            all.extend(decoded(b));
        }
        let mut expected: Vec<(String, Bytes)> = records
            .iter()
            .map(|r| (r.partition_key.clone(), r.data.clone()))
            .collect();
        all.sort();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_aggregate_waits_while_its_shard_has_a_backlog() {
        let map = ShardMap::new(&even_shards(1), 1).unwrap();
        let mut agg = aggregator();
        let mut out = Vec::new();
        push(&mut agg, "k", "first", &map, &mut out);
        let due = agg.next_deadline().expect("an open aggregate");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(due <= now);
        // Backlogged: it stays open, takes more records, and is looked at again later.
        agg.finish_due(now, &mut out, |_| true);
        assert!(out.is_empty());
        let again = agg.next_deadline().expect("still open");
        assert_eq!(again, now + Duration::from_millis(250));
        push(&mut agg, "k", "second", &map, &mut out);
        agg.finish_due(now, &mut out, |_| true);
        assert!(out.is_empty(), "not due again yet");
        // The backlog is gone: finished at the next look, with both records, and its
        // send-by time is still the first record's.
        agg.finish_due(again, &mut out, |_| false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].records.len(), 2);
        assert_eq!(out[0].deadline, due);
        assert_eq!(agg.next_deadline(), None);
    }

    #[test]
    fn a_recycled_buffer_is_reused_only_when_nothing_else_holds_it() {
        let map = ShardMap::new(&even_shards(1), 1).unwrap();
        let mut agg = aggregator();
        let mut out = Vec::new();
        for i in 0..3 {
            push(&mut agg, &format!("a{i}"), "first", &map, &mut out);
        }
        agg.finish_all(&mut out);
        seal_all(&mut out);
        let first = out.pop().unwrap();
        let first_contents = decoded(&first);
        let held = first.entry.data.clone();
        // Still referenced (say, by a request being retried): not taken.
        agg.recycle_data(first.entry.data.clone());
        assert!(agg.spare_buffers.is_empty());
        drop(held);
        let ptr = first.entry.data.as_ptr();
        agg.recycle_data(first.entry.data);
        assert_eq!(agg.spare_buffers.len(), 1);

        for i in 0..2 {
            push(&mut agg, &format!("b{i}"), "second", &map, &mut out);
        }
        agg.finish_all(&mut out);
        seal_all(&mut out);
        let second = out.pop().unwrap();
        assert_eq!(
            second.entry.data.as_ptr(),
            ptr,
            "written into the recycled buffer"
        );
        assert_eq!(
            decoded(&second),
            vec![
                ("b0".to_owned(), Bytes::from("second")),
                ("b1".to_owned(), Bytes::from("second"))
            ]
        );
        assert_eq!(first_contents.len(), 3);
    }

    #[test]
    fn what_is_kept_for_reuse_is_bounded() {
        let map = ShardMap::new(&even_shards(1), 1).unwrap();
        let mut agg = aggregator().keep_for_reuse(10, 2 * 4096);
        let mut out = Vec::new();
        for round in 0..5 {
            for i in 0..4 {
                push(&mut agg, &format!("k{round}-{i}"), "x", &map, &mut out);
            }
            agg.finish_all(&mut out);
            seal_all(&mut out);
        }
        for o in out.drain(..) {
            agg.recycle(o.records);
            agg.recycle_data(o.entry.data);
        }
        assert_eq!(agg.spare_buffers.len(), 2, "two buffers of 4096 bytes");
        assert!(agg.kept_slots <= 10);
        assert_eq!(
            agg.kept_slots,
            agg.spare_lists.iter().map(Vec::capacity).sum::<usize>()
        );
    }
}
