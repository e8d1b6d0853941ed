//! An in-memory Kinesis stream behind [`KinesisApi`], with scripted failures: for the
//! pipeline's tests, the benchmarks, and users who want to test their own code offline.
//!
//! Records are routed exactly as Kinesis routes them (explicit hash key, else MD5 of the
//! partition key, against the open shards' ranges), get increasing sequence numbers, and can be
//! read back with [`MemoryKinesis::stored`]. A [`Plan`] function decides, per PutRecords call,
//! whether entries fail, the call errors, hangs, or stores and then loses its response.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{
    ApiError, BoxFuture, KinesisApi, ListShardsPage, PutRecordsEntry, PutRecordsResultEntry,
    ShardInfo, StreamId, StreamSummary,
};
use crate::hash::{HashKey, HashRange};
use crate::producer::shard_map::even_shards;

/// What the fake does with one PutRecords call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Plan {
    /// Store every entry.
    Store,
    /// Per entry: `Some(code)` fails it with that code (not stored), `None` stores it. Entries
    /// past the end of the list are stored.
    FailEntries(Vec<Option<String>>),
    /// The call fails; nothing is stored.
    Error(ApiError),
    /// Everything is stored but the caller gets this error (a lost response).
    StoreThenError(ApiError),
    /// Everything is stored but the response lists only the first `n` entries.
    Truncate(usize),
    /// Wait, then follow the inner plan.
    Delay(Duration, Box<Plan>),
    /// Never answer (the caller's timeout decides).
    Hang,
}

/// One call as the plan function sees it.
#[derive(Debug)]
pub struct Call<'a> {
    /// 0 for the first PutRecords call, then 1, 2, ...
    pub index: u64,
    /// The entries of the call.
    pub entries: &'a [PutRecordsEntry],
}

type PlanFn = Box<dyn FnMut(&Call<'_>) -> Plan + Send>;

/// A record the fake stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Shard it was routed to.
    pub shard_id: String,
    /// Its sequence number (increasing across the stream).
    pub sequence_number: String,
    /// Partition key as sent.
    pub partition_key: String,
    /// Explicit hash key as sent.
    pub explicit_hash_key: Option<String>,
    /// Data as sent (empty when the fake discards data).
    pub data: bytes::Bytes,
}

struct State {
    shards: Vec<ShardInfo>,
    next_shard_number: usize,
    stored: Vec<StoredRecord>,
    stored_count: u64,
    keep_data: bool,
    sequence: u64,
    calls: u64,
    plan: Option<PlanFn>,
    page_size: usize,
    max_record_bytes: Option<usize>,
}

/// An in-memory stream. Cheap to share (`Arc<MemoryKinesis>` is a `KinesisApi`).
pub struct MemoryKinesis {
    state: Arc<Mutex<State>>,
}

impl MemoryKinesis {
    /// A stream of `shards` shards splitting the hash key ring evenly, storing every record.
    pub fn new(shards: usize) -> Self {
        MemoryKinesis {
            state: Arc::new(Mutex::new(State {
                next_shard_number: shards,
                shards: even_shards(shards),
                stored: Vec::new(),
                stored_count: 0,
                keep_data: true,
                sequence: 0,
                calls: 0,
                plan: None,
                page_size: 1000,
                max_record_bytes: None,
            })),
        }
    }

    /// Counts stored records but keeps none (for benchmarks).
    pub fn discard_data(self) -> Self {
        self.lock().keep_data = false;
        self
    }

    /// ListShards returns at most `n` shards a page.
    pub fn page_size(self, n: usize) -> Self {
        self.lock().page_size = n.max(1);
        self
    }

    /// DescribeStreamSummary reports this record size limit.
    pub fn max_record_bytes(self, bytes: usize) -> Self {
        self.lock().max_record_bytes = Some(bytes);
        self
    }

    /// Decides what each following PutRecords call does.
    pub fn set_plan(&self, plan: impl FnMut(&Call<'_>) -> Plan + Send + 'static) {
        self.lock().plan = Some(Box::new(plan));
    }

    /// Back to storing everything.
    pub fn clear_plan(&self) {
        self.lock().plan = None;
    }

    /// Every stored record, in the order stored.
    pub fn stored(&self) -> Vec<StoredRecord> {
        self.lock().stored.clone()
    }

    /// How many records were stored.
    pub fn stored_count(&self) -> u64 {
        self.lock().stored_count
    }

    /// How many PutRecords calls were made.
    pub fn put_calls(&self) -> u64 {
        self.lock().calls
    }

    /// All shards, open and closed.
    pub fn shards(&self) -> Vec<ShardInfo> {
        self.lock().shards.clone()
    }

    /// Splits open shard `shard_id` at `new_starting_hash_key`, as SplitShard does: the parent
    /// closes and two children take its range. Returns the children's ids.
    pub fn split_shard(&self, shard_id: &str, new_starting_hash_key: HashKey) -> [String; 2] {
        let mut state = self.lock();
        let parent = state
            .shards
            .iter_mut()
            .find(|s| s.shard_id == shard_id && s.open)
            .expect("split an open shard");
        parent.open = false;
        let range = parent.hash_range;
        assert!(range.start < new_starting_hash_key && new_starting_hash_key <= range.end);
        let halves = [
            HashRange {
                start: range.start,
                end: HashKey(new_starting_hash_key.0 - 1),
            },
            HashRange {
                start: new_starting_hash_key,
                end: range.end,
            },
        ];
        halves.map(|hash_range| {
            let id = format!("shardId-{:012}", state.next_shard_number);
            state.next_shard_number += 1;
            state.shards.push(ShardInfo {
                shard_id: id.clone(),
                hash_range,
                parent_shard_id: Some(shard_id.to_owned()),
                adjacent_parent_shard_id: None,
                open: true,
            });
            id
        })
    }

    /// Merges two adjacent open shards, as MergeShards does. Returns the child's id.
    pub fn merge_shards(&self, shard_id: &str, adjacent_shard_id: &str) -> String {
        let mut state = self.lock();
        let mut ranges = Vec::new();
        for s in state.shards.iter_mut() {
            if s.open && (s.shard_id == shard_id || s.shard_id == adjacent_shard_id) {
                s.open = false;
                ranges.push(s.hash_range);
            }
        }
        assert_eq!(ranges.len(), 2, "merge two open shards");
        ranges.sort_by_key(|r| r.start);
        assert_eq!(
            ranges[0].end.0 + 1,
            ranges[1].start.0,
            "shards must be adjacent"
        );
        let id = format!("shardId-{:012}", state.next_shard_number);
        state.next_shard_number += 1;
        state.shards.push(ShardInfo {
            shard_id: id.clone(),
            hash_range: HashRange {
                start: ranges[0].start,
                end: ranges[1].end,
            },
            parent_shard_id: Some(shard_id.to_owned()),
            adjacent_parent_shard_id: Some(adjacent_shard_id.to_owned()),
            open: true,
        });
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure already; keep going for its report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn store(&mut self, entry: &PutRecordsEntry) -> Result<PutRecordsResultEntry, ApiError> {
        let hash = match &entry.explicit_hash_key {
            Some(ehk) => HashKey::parse_explicit(ehk).map_err(|e| {
                ApiError::service("InvalidArgumentException", Some(400), e.to_string())
            })?,
            None => HashKey::of_partition_key(&entry.partition_key),
        };
        let shard = self
            .shards
            .iter()
            .find(|s| s.open && s.hash_range.contains(hash))
            .expect("open shards tile the ring");
        self.sequence += 1;
        let record = StoredRecord {
            shard_id: shard.shard_id.clone(),
            sequence_number: format!("{:056}", self.sequence),
            partition_key: entry.partition_key.clone(),
            explicit_hash_key: entry.explicit_hash_key.clone(),
            data: if self.keep_data {
                entry.data.clone()
            } else {
                bytes::Bytes::new()
            },
        };
        let result = PutRecordsResultEntry::Stored {
            shard_id: record.shard_id.clone(),
            sequence_number: record.sequence_number.clone(),
        };
        self.stored_count += 1;
        if self.keep_data {
            self.stored.push(record);
        }
        Ok(result)
    }

    fn store_all(
        &mut self,
        entries: &[PutRecordsEntry],
    ) -> Result<Vec<PutRecordsResultEntry>, ApiError> {
        entries.iter().map(|e| self.store(e)).collect()
    }
}

fn run_plan(
    state: &Mutex<State>,
    plan: Plan,
    entries: &[PutRecordsEntry],
) -> Result<Vec<PutRecordsResultEntry>, ApiError> {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    match plan {
        Plan::Store => state.store_all(entries),
        Plan::FailEntries(codes) => entries
            .iter()
            .enumerate()
            .map(|(i, e)| match codes.get(i).cloned().flatten() {
                Some(code) => Ok(PutRecordsResultEntry::Failed {
                    message: format!("scripted {code}"),
                    code,
                }),
                None => state.store(e),
            })
            .collect(),
        Plan::Error(error) => Err(error),
        Plan::StoreThenError(error) => {
            state.store_all(entries)?;
            Err(error)
        }
        Plan::Truncate(n) => {
            let mut results = state.store_all(entries)?;
            results.truncate(n);
            Ok(results)
        }
        Plan::Delay(..) | Plan::Hang => unreachable!("handled before the lock"),
    }
}

impl KinesisApi for MemoryKinesis {
    fn put_records(
        &self,
        _stream: &StreamId,
        entries: Vec<PutRecordsEntry>,
    ) -> BoxFuture<'static, Result<Vec<PutRecordsResultEntry>, ApiError>> {
        let plan = {
            let mut state = self.lock();
            let index = state.calls;
            state.calls += 1;
            match state.plan.as_mut() {
                Some(plan) => plan(&Call {
                    index,
                    entries: &entries,
                }),
                None => Plan::Store,
            }
        };
        let state = self.state.clone();
        Box::pin(async move {
            let mut plan = plan;
            loop {
                match plan {
                    Plan::Delay(delay, inner) => {
                        tokio::time::sleep(delay).await;
                        plan = *inner;
                    }
                    Plan::Hang => std::future::pending::<()>().await,
                    plan => return run_plan(&state, plan, &entries),
                }
            }
        })
    }

    fn list_shards(
        &self,
        _stream: &StreamId,
        next_token: Option<String>,
    ) -> BoxFuture<'static, Result<ListShardsPage, ApiError>> {
        let state = self.lock();
        let start: usize = next_token.and_then(|t| t.parse().ok()).unwrap_or(0);
        let end = (start + state.page_size).min(state.shards.len());
        let page = ListShardsPage {
            shards: state.shards[start..end].to_vec(),
            next_token: (end < state.shards.len()).then(|| end.to_string()),
        };
        Box::pin(async move { Ok(page) })
    }

    fn describe_stream_summary(
        &self,
        _stream: &StreamId,
    ) -> BoxFuture<'static, Result<StreamSummary, ApiError>> {
        let state = self.lock();
        let summary = StreamSummary {
            status: "ACTIVE".into(),
            open_shard_count: state.shards.iter().filter(|s| s.open).count() as u32,
            max_record_bytes: state.max_record_bytes,
        };
        Box::pin(async move { Ok(summary) })
    }
}
