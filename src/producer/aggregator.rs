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

use tokio::time::Instant;

use crate::client::PutRecordsEntry;
use crate::codec::aggregate::{AggregateBuilder, AggregateLimits, Full};
use crate::codec::frame::Compressor;
use crate::dedup::{DEDUP_ID_MAX_LEN, DEDUP_TAG_KEY, DedupId};
use crate::fxhash::FxHashMap;
use crate::hash::HashKey;
use crate::producer::record::{CallAttempt, PendingRecord};
use crate::producer::shard_map::ShardMap;

/// A Kinesis record on its way: one PutRecords entry and the user records it carries.
#[derive(Debug)]
pub(crate) struct KinesisRecordOut {
    pub entry: PutRecordsEntry,
    pub records: Vec<PendingRecord>,
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
}

impl KinesisRecordOut {
    /// Bytes the service counts: partition key + data.
    pub fn billed_bytes(&self) -> usize {
        self.entry.billed_bytes()
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
    builder: AggregateBuilder,
    records: Vec<PendingRecord>,
    deadline: Instant,
    shard: Arc<str>,
    first_hash: HashKey,
    single_hash: bool,
}

/// Per-shard (or per-hash-key) open aggregates.
pub(crate) struct Aggregator {
    limits: AggregateLimits,
    max_buffered_time: Duration,
    compressor: Option<Compressor>,
    open: FxHashMap<Key, Open>,
    deadlines: BTreeSet<(Instant, Key)>,
    map_version: u64,
    spare: Vec<AggregateBuilder>,
    /// User records in the last finished aggregate: the next one's list is sized for it.
    last_len: usize,
    /// Tag each user record with its dedup id under this producer id.
    dedup_producer: Option<u64>,
    /// Emptied user-record lists of resolved Kinesis records, reused: an aggregate's list is
    /// tens of kilobytes, and a fresh one per aggregate cost more in malloc and cold memory
    /// than filling it.
    spare_lists: Vec<Vec<PendingRecord>>,
}

/// Lists kept for reuse.
const MAX_SPARE_LISTS: usize = 64;

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
            limits,
            max_buffered_time,
            compressor,
            open: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            map_version: 0,
            spare: Vec::new(),
            last_len: 1,
        }
    }

    /// Adds a record predicted by `map`; Kinesis records finished on the way go to `out`.
    /// The map must be the one every open aggregate was built with (finish them all first
    /// when it changes).
    pub fn push(
        &mut self,
        record: PendingRecord,
        map: &ShardMap,
        grouping: Grouping,
        out: &mut Vec<KinesisRecordOut>,
    ) {
        self.map_version = map.version();
        let hash = record.hash_key;
        let key = match grouping {
            Grouping::ByShard => Key::Shard(map.index_of(hash)),
            Grouping::ByHashKey => Key::Hash(hash.0),
        };
        let dedup = self.dedup_producer;
        if let Some(open) = self.open.get_mut(&key) {
            if push_into(&mut open.builder, &record, dedup).is_ok() {
                open.single_hash &= open.first_hash == hash;
                open.records.push(record);
                if open.records.len() >= self.limits.max_count {
                    self.finish(key, out);
                }
                return;
            }
            self.finish(key, out);
        }
        let mut builder = self
            .spare
            .pop()
            .unwrap_or_else(|| AggregateBuilder::new(self.limits));
        push_into(&mut builder, &record, dedup).expect("an empty aggregate accepts any record");
        // The buffered time counts from when the record reached the pipeline: a record that
        // waited in a backlog goes into an aggregate that still gets time to fill, instead of
        // a stream of tiny ones (each costing a PutRecords entry) that deepen the backlog.
        let deadline = record.received.max(Instant::now()) + self.max_buffered_time;
        let shard = map.shard(map.index_of(hash)).id.clone();
        let mut records = self
            .spare_lists
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.last_len.min(self.limits.max_count)));
        records.push(record);
        let open = Open {
            builder,
            records,
            deadline,
            shard,
            first_hash: hash,
            single_hash: true,
        };
        if self.limits.max_count <= 1 {
            out.push(self.seal(open));
            return;
        }
        self.deadlines.insert((deadline, key));
        self.open.insert(key, open);
    }

    /// The producer id of the dedup ids it writes, if it writes them.
    pub fn dedup_producer(&self) -> Option<u64> {
        self.dedup_producer
    }

    /// Takes back an emptied user-record list for reuse.
    pub fn recycle(&mut self, mut list: Vec<PendingRecord>) {
        list.clear();
        if self.spare_lists.len() < MAX_SPARE_LISTS && list.capacity() > 0 {
            self.spare_lists.push(list);
        }
    }

    /// Finishes aggregates whose oldest record has waited the max buffered time.
    pub fn finish_due(&mut self, now: Instant, out: &mut Vec<KinesisRecordOut>) {
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.finish(key, out);
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
            self.deadlines.remove(&(open.deadline, key));
            out.push(self.seal(open));
        }
    }

    fn seal(&mut self, mut open: Open) -> KinesisRecordOut {
        self.last_len = open.records.len();
        let mut record = open
            .builder
            .finish()
            .expect("an open aggregate holds at least one record");
        self.spare.push(open.builder);
        if let Some(compressor) = &mut self.compressor {
            record = compressor.compress(record);
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
        }
    }
}

/// Adds `record` to `builder`, tagged with its dedup id if `dedup_producer` is set.
fn push_into(
    builder: &mut AggregateBuilder,
    record: &PendingRecord,
    dedup_producer: Option<u64>,
) -> Result<(), Full> {
    match dedup_producer {
        None => builder.try_push(&record.record, record.hash_key),
        Some(producer) => {
            let mut buf = [0u8; DEDUP_ID_MAX_LEN];
            let id = DedupId {
                producer,
                seq: record.seq,
            }
            .encode(&mut buf);
            builder.try_push_tagged(
                &record.record,
                record.hash_key,
                &[(DEDUP_TAG_KEY, Some(id))],
            )
        }
    }
}
