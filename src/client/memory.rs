//! An in-memory Kinesis stream behind [`KinesisApi`], with scripted failures: for the
//! pipeline's tests, the benchmarks, and users who want to test their own code offline.
//!
//! Records are routed exactly as Kinesis routes them (explicit hash key, else MD5 of the
//! partition key, against the open shards' ranges), get increasing sequence numbers, and can be
//! read back with [`MemoryKinesis::stored`] (or [`MemoryKinesis::snapshot`], with the shards'
//! ranges). A [`Plan`] function decides, per PutRecords call, whether entries fail, the call
//! errors, hangs, panics, or stores and then loses its response;
//! [`MemoryKinesis::fail_list_shards`] makes ListShards fail, and
//! [`split_shard`](MemoryKinesis::split_shard) / [`merge_shards`](MemoryKinesis::merge_shards)
//! reshard the stream at any moment a test chooses.

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
    /// Everything is stored, then the call never answers: a response lost on the way back,
    /// which only the caller's timeout ends.
    StoreThenHang,
    /// The call's future panics with this message when polled (a bug in a `KinesisApi`
    /// implementation); nothing is stored.
    Panic(String),
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
    list_shards_error: Option<ApiError>,
    list_shards_calls: u64,
}

/// The stream as it stands: every shard (open and closed, with its hash key range) and every
/// stored record, in the order stored. See [`MemoryKinesis::snapshot`].
#[derive(Debug, Clone)]
pub struct StoreSnapshot {
    /// All shards, open and closed, in creation order.
    pub shards: Vec<ShardInfo>,
    /// Every stored record, in the order stored (sequence numbers increase across the stream).
    pub records: Vec<StoredRecord>,
}

impl StoreSnapshot {
    /// The hash key range of shard `shard_id` (open or closed).
    pub fn range_of(&self, shard_id: &str) -> Option<HashRange> {
        self.shards
            .iter()
            .find(|s| s.shard_id == shard_id)
            .map(|s| s.hash_range)
    }
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
                list_shards_error: None,
                list_shards_calls: 0,
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

    /// The shards and the stored records together, as one consistent view.
    pub fn snapshot(&self) -> StoreSnapshot {
        let state = self.lock();
        StoreSnapshot {
            shards: state.shards.clone(),
            records: state.stored.clone(),
        }
    }

    /// While `Some`, every ListShards call fails with this error (a deleted stream, revoked
    /// access, an outage); `None` lets them succeed again.
    pub fn fail_list_shards(&self, error: Option<ApiError>) {
        self.lock().list_shards_error = error;
    }

    /// How many ListShards calls were made (pages count one each).
    pub fn list_shards_calls(&self) -> u64 {
        self.lock().list_shards_calls
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
        Plan::Delay(..) | Plan::Hang | Plan::StoreThenHang | Plan::Panic(_) => {
            unreachable!("handled before the lock")
        }
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
                    Plan::StoreThenHang => {
                        run_plan(&state, Plan::Store, &entries)?;
                        std::future::pending::<()>().await
                    }
                    Plan::Panic(message) => panic!("{message}"),
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
        let mut state = self.lock();
        state.list_shards_calls += 1;
        if let Some(error) = state.list_shards_error.clone() {
            return Box::pin(async move { Err(error) });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::list_all_shards;

    fn entry(key: &str) -> PutRecordsEntry {
        PutRecordsEntry {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: bytes::Bytes::from_static(b"x"),
        }
    }

    fn stream() -> StreamId {
        StreamId::Name("s".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_response_stores_and_never_answers() {
        let fake = MemoryKinesis::new(2);
        fake.set_plan(|_| Plan::StoreThenHang);
        let call = fake.put_records(&stream(), vec![entry("a"), entry("b")]);
        let answer = tokio::time::timeout(Duration::from_secs(60), call).await;
        assert!(answer.is_err(), "no answer, only the caller's timeout");
        assert_eq!(fake.stored_count(), 2, "stored all the same");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_call_panics_when_polled_and_stores_nothing() {
        let fake = MemoryKinesis::new(1);
        fake.set_plan(|_| Plan::Panic("boom".into()));
        let call = fake.put_records(&stream(), vec![entry("a")]);
        let joined = tokio::spawn(call).await;
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(fake.stored_count(), 0);
    }

    #[tokio::test]
    async fn list_shards_fails_while_told_to() {
        let fake = MemoryKinesis::new(3);
        let error = ApiError::service("ResourceNotFoundException", Some(400), "gone");
        fake.fail_list_shards(Some(error.clone()));
        assert_eq!(list_all_shards(&fake, &stream()).await, Err(error));
        fake.fail_list_shards(None);
        assert_eq!(list_all_shards(&fake, &stream()).await.unwrap().len(), 3);
        assert_eq!(fake.list_shards_calls(), 2);
    }

    #[tokio::test]
    async fn the_snapshot_tells_each_records_shard_and_range() {
        let fake = MemoryKinesis::new(2);
        let first = fake.shards()[0].clone();
        let mid = HashKey(
            first.hash_range.start.0 + (first.hash_range.end.0 - first.hash_range.start.0) / 2,
        );
        fake.split_shard(&first.shard_id, mid);
        for key in ["a", "b", "c", "d", "e", "f"] {
            fake.put_records(&stream(), vec![entry(key)]).await.unwrap();
        }
        let snap = fake.snapshot();
        assert_eq!(snap.shards.len(), 4);
        assert_eq!(snap.range_of(&first.shard_id), Some(first.hash_range));
        for r in &snap.records {
            let range = snap.range_of(&r.shard_id).expect("a known shard");
            assert!(range.contains(HashKey::of_partition_key(&r.partition_key)));
            assert_ne!(
                r.shard_id, first.shard_id,
                "the closed parent takes no writes"
            );
        }
    }
}
