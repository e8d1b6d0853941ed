//! Reads a stream back, shard by shard: the consumer side of `kpl cat` and of every
//! integration test.
//!
//! A child shard is read only after its parents are read to their end, so after a split or a
//! merge the records of a partition key come out in the order they were stored. Each shard is
//! polled at most [`SHARD_READ_CALLS_PER_SEC`] times a second, and a throttled shard backs off.
//! Records come out as GetRecords returns them; turn them into user records with
//! [`Deaggregator`](crate::codec::deaggregate::Deaggregator).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::sdk::{FetchedRecord, SdkKinesis, StartPosition};
use crate::client::{ApiError, ShardInfo, StreamId};
use crate::hash::HashRange;
use crate::limits::{MAX_GET_RECORDS_LIMIT, SHARD_READ_CALLS_PER_SEC};

/// How to read.
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    /// Where each shard without a read parent starts.
    pub start: StartPosition,
    /// Keep reading at the tip of the stream instead of stopping there.
    pub follow: bool,
    /// Stop after this long without a new record (in follow mode, or while catching up).
    pub idle_timeout: Option<Duration>,
    /// Stop after this many Kinesis records.
    pub max_records: Option<u64>,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            start: StartPosition::TrimHorizon,
            follow: false,
            idle_timeout: None,
            max_records: None,
        }
    }
}

/// One Kinesis record and where it was read.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// The shard it was read from.
    pub shard_id: Arc<str>,
    /// That shard's hash key range (for the KCL check).
    pub shard_range: HashRange,
    /// The record.
    pub record: FetchedRecord,
}

struct ShardCursor {
    info: ShardInfo,
    id: Arc<str>,
    iterator: Option<String>,
    last_sequence: Option<String>,
    next_call: Instant,
    caught_up: bool,
}

/// Reads every shard of a stream, parents before children.
pub struct StreamReader {
    api: SdkKinesis,
    stream: StreamId,
    config: ReaderConfig,
    known: HashMap<String, ShardInfo>,
    exhausted: HashSet<String>,
    active: Vec<ShardCursor>,
    next: usize,
    read: u64,
    last_data: Instant,
}

const MIN_CALL_SPACING: Duration = Duration::from_millis(1000 / SHARD_READ_CALLS_PER_SEC as u64);
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);

impl StreamReader {
    /// Lists the stream's shards and gets ready to read.
    pub async fn new(
        api: SdkKinesis,
        stream: StreamId,
        config: ReaderConfig,
    ) -> Result<StreamReader, ApiError> {
        let mut reader = StreamReader {
            api,
            stream,
            config,
            known: HashMap::new(),
            exhausted: HashSet::new(),
            active: Vec::new(),
            next: 0,
            read: 0,
            last_data: Instant::now(),
        };
        reader.discover().await?;
        Ok(reader)
    }

    /// Kinesis records read so far.
    pub fn records_read(&self) -> u64 {
        self.read
    }

    /// Lists shards again and starts reading those whose parents are done.
    async fn discover(&mut self) -> Result<(), ApiError> {
        for shard in self.api.list_all_shards(&self.stream).await? {
            self.known.entry(shard.shard_id.clone()).or_insert(shard);
        }
        let reading: HashSet<String> = self
            .active
            .iter()
            .map(|c| c.info.shard_id.clone())
            .collect();
        let mut ready: Vec<ShardInfo> = self
            .known
            .values()
            .filter(|s| !self.exhausted.contains(&s.shard_id) && !reading.contains(&s.shard_id))
            .filter(|s| {
                [&s.parent_shard_id, &s.adjacent_parent_shard_id]
                    .into_iter()
                    .flatten()
                    // A parent no longer listed has been trimmed: nothing to wait for.
                    .all(|p| self.exhausted.contains(p) || !self.known.contains_key(p))
            })
            .cloned()
            .collect();
        ready.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        let now = Instant::now();
        for info in ready {
            self.active.push(ShardCursor {
                id: Arc::from(info.shard_id.as_str()),
                info,
                iterator: None,
                last_sequence: None,
                next_call: now,
                caught_up: false,
            });
        }
        Ok(())
    }

    fn start_for(&self, info: &ShardInfo) -> StartPosition {
        // A child of a shard we read from its start is read from its start too.
        let has_read_parent = [&info.parent_shard_id, &info.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .any(|p| self.exhausted.contains(p));
        if has_read_parent {
            StartPosition::TrimHorizon
        } else {
            self.config.start.clone()
        }
    }

    /// The next records, or `None` when reading is over (every shard read to its end, or —
    /// without `follow` — every shard caught up with its tip, or a limit reached).
    pub async fn next_batch(&mut self) -> Result<Option<Vec<ReadRecord>>, ApiError> {
        loop {
            if self.config.max_records.is_some_and(|m| self.read >= m) {
                return Ok(None);
            }
            if self
                .config
                .idle_timeout
                .is_some_and(|idle| self.last_data.elapsed() >= idle)
            {
                return Ok(None);
            }
            if self.active.is_empty() {
                return Ok(None);
            }
            if !self.config.follow && self.active.iter().all(|c| c.caught_up) {
                return Ok(None);
            }
            // The shard whose next call is due first, round-robin among equals.
            let n = self.active.len();
            let mut pick = self.next % n;
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.active[i].next_call < self.active[pick].next_call {
                    pick = i;
                }
            }
            self.next = pick + 1;
            tokio::time::sleep_until(self.active[pick].next_call).await;
            let start = self.start_for(&self.active[pick].info);
            let cursor = &mut self.active[pick];
            if cursor.iterator.is_none() {
                let position = match &cursor.last_sequence {
                    Some(seq) => StartPosition::AfterSequenceNumber(seq.clone()),
                    None => start,
                };
                cursor.iterator = Some(
                    self.api
                        .shard_iterator(&self.stream, &cursor.info.shard_id, &position)
                        .await?,
                );
            }
            let iterator = cursor.iterator.clone().expect("set above");
            let page = match self
                .api
                .get_records(&self.stream, &iterator, MAX_GET_RECORDS_LIMIT)
                .await
            {
                Ok(page) => page,
                Err(e) if e.code.as_deref() == Some("ProvisionedThroughputExceededException") => {
                    cursor.next_call = Instant::now() + THROTTLE_BACKOFF;
                    continue;
                }
                Err(e) if e.code.as_deref() == Some("ExpiredIteratorException") => {
                    cursor.iterator = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            cursor.next_call = Instant::now() + MIN_CALL_SPACING;
            cursor.caught_up =
                page.records.is_empty() && page.millis_behind_latest.is_none_or(|ms| ms == 0);
            if let Some(last) = page.records.last() {
                cursor.last_sequence = Some(last.sequence_number.clone());
            }
            let (id, range) = (cursor.id.clone(), cursor.info.hash_range);
            match page.next_iterator {
                Some(next) => cursor.iterator = Some(next),
                None => {
                    // Closed and read to its end: its children may start.
                    let done = self.active.remove(pick);
                    self.exhausted.insert(done.info.shard_id);
                    self.discover().await?;
                }
            }
            if page.records.is_empty() {
                continue;
            }
            let mut records = page.records;
            if let Some(max) = self.config.max_records {
                records.truncate((max - self.read) as usize);
            }
            self.read += records.len() as u64;
            self.last_data = Instant::now();
            return Ok(Some(
                records
                    .into_iter()
                    .map(|record| ReadRecord {
                        shard_id: id.clone(),
                        shard_range: range,
                        record,
                    })
                    .collect(),
            ));
        }
    }

    /// Reads until the end (see [`next_batch`](Self::next_batch)) and returns everything.
    pub async fn read_all(&mut self) -> Result<Vec<ReadRecord>, ApiError> {
        let mut all = Vec::new();
        while let Some(batch) = self.next_batch().await? {
            all.extend(batch);
        }
        Ok(all)
    }
}
