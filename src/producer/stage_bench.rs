//! Single stages for the criterion benches (`benches/stages.rs`, feature `bench-internals`).
//! Not API: the stages are crate-private, and this only lets a bench drive them in isolation.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::client::PutRecordsEntry;
use crate::codec::aggregate::AggregateLimits;
use crate::producer::aggregator::{Aggregator, Grouping, KinesisRecordOut, seal_all};
use crate::producer::collector::Collector;
use crate::producer::config::{
    DEFAULT_AGGREGATION_MAX_SIZE_BYTES, DEFAULT_COLLECTION_MAX_COUNT,
    DEFAULT_COLLECTION_MAX_SIZE_BYTES,
};
use crate::producer::record::PendingRecord;
use crate::producer::shard_map::{ShardMap, even_shards};
use crate::record::UserRecord;

/// User records made ready for the aggregator (hash keys computed, futures dropped).
pub struct PreparedRecords(Vec<PendingRecord>);

/// The aggregator stage over a stream of `shards` even shards, default limits.
pub struct AggregatorStage {
    aggregator: Aggregator,
    map: ShardMap,
    out: Vec<KinesisRecordOut>,
}

impl AggregatorStage {
    /// An aggregator with the default aggregate size, no compression.
    pub fn new(shards: usize) -> Self {
        AggregatorStage {
            aggregator: Aggregator::new(
                AggregateLimits {
                    max_bytes: DEFAULT_AGGREGATION_MAX_SIZE_BYTES,
                    max_count: usize::MAX,
                },
                Duration::from_secs(3600),
                None,
                None,
            ),
            map: ShardMap::new(&even_shards(shards), 1).expect("even shards tile the ring"),
            out: Vec::new(),
        }
    }

    /// Untimed setup: records as the pipeline hands them to the aggregator.
    pub fn prepare(records: Vec<UserRecord>) -> PreparedRecords {
        let now = Instant::now();
        PreparedRecords(
            records
                .into_iter()
                .map(|r| {
                    let (mut p, _future) = PendingRecord::new(r, now, 0);
                    p.state.hash_key = p.record.hash_key();
                    p
                })
                .collect(),
        )
    }

    /// Aggregates every record, finishes and seals every aggregate (MD5 trailers written as
    /// the pipeline writes them for a call), returns how many Kinesis records.
    pub fn run(&mut self, records: PreparedRecords) -> usize {
        for r in records.0 {
            self.aggregator.push(
                &r.record,
                r.state,
                &self.map,
                Grouping::ByShard,
                &mut self.out,
            );
        }
        self.aggregator.finish_all(&mut self.out);
        seal_all(&mut self.out);
        let n = self.out.len();
        self.out.clear();
        n
    }
}

/// Kinesis records made ready for the collector.
pub struct PreparedKinesisRecords(Vec<KinesisRecordOut>);

/// The collector stage with the default call limits (500 entries, 5 MiB).
pub struct CollectorStage {
    collector: Collector,
}

impl Default for CollectorStage {
    fn default() -> Self {
        CollectorStage {
            collector: Collector::new(
                DEFAULT_COLLECTION_MAX_COUNT,
                DEFAULT_COLLECTION_MAX_SIZE_BYTES,
            ),
        }
    }
}

impl CollectorStage {
    /// Untimed setup: `n` Kinesis records of `size` data bytes over 64 shards.
    pub fn prepare(n: usize, size: usize) -> PreparedKinesisRecords {
        let data = Bytes::from(vec![b'x'; size]);
        let now = Instant::now();
        PreparedKinesisRecords(
            (0..n)
                .map(|i| KinesisRecordOut {
                    entry: PutRecordsEntry {
                        partition_key: format!("key-{}", i % 1000),
                        explicit_hash_key: None,
                        data: data.clone(),
                    },
                    records: Vec::new(),
                    shard: format!("shardId-{:012}", i % 64).into(),
                    map_version: 1,
                    single_hash: false,
                    deadline: now,
                    attempts: Vec::new(),
                    lane: None,
                    aggregated: false,
                    uncompressed: None,
                    unsealed: None,
                })
                .collect(),
        )
    }

    /// Packs every record into calls (taking each call when the next record does not fit, as
    /// the pipeline does) and returns how many calls.
    pub fn run(&mut self, records: PreparedKinesisRecords) -> usize {
        let mut calls = 0;
        for r in records.0 {
            if let Err(r) = self.collector.try_push(r) {
                let call = self.collector.take();
                self.collector.recycle(call);
                calls += 1;
                if self.collector.try_push(r).is_err() {
                    unreachable!("an empty call takes any record");
                }
            }
        }
        let last = self.collector.take();
        if !last.is_empty() {
            calls += 1;
        }
        self.collector.recycle(last);
        calls
    }
}
