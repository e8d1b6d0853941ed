//! User records out of a Kinesis Lambda event (feature `lambda`): decompressed, deaggregated,
//! checked against their shard's hash range the way the KCL checks them, and optionally
//! deduplicated; read, handled, then committed.
//!
//! ```text
//! KinesisEvent ─► per Kinesis record: shard id (from eventID), data (base64-decoded by serde)
//!   ─► Deaggregator (plain | KPL | zstd frame, with the writers' dictionaries), streamed
//!   ─► KCL check: every user record inside its shard's range, or the whole record is skipped
//!   ─► dedup: ids committed by earlier batches, or seen earlier in this one, are dropped
//!   ─► LambdaBatch: an iterator of user records ─► your handler ─► LambdaBatch::commit
//! ```
//!
//! Keep one [`LambdaReader`] for the life of the Lambda environment (build it before
//! `lambda_runtime::run`, or in a `OnceLock`): its [`Deduper`] then also catches duplicates
//! across invocations, and its shard ranges are loaded once.
//!
//! **Read, handle, commit.** A batch remembers the dedup ids it yields only when you
//! [`commit`](LambdaBatch::commit) it, after your handler succeeded; drop it uncommitted when
//! the handler fails, and Lambda's retry of the same batch (in the same warm environment) is
//! read again in full. With a partial batch response, report the failed record's sequence
//! number as the `batchItemFailure` and [`commit_before`](LambdaBatch::commit_before) it: the
//! records before it are done, Lambda resends the rest.
//!
//! **What to do with [`problems`](LambdaBatch::problems)**: skip them, count them, log them;
//! never report them as `batchItemFailures`. A record that retrying cannot fix blocks its
//! shard when it is reported: Lambda resends it (and everything after it) until it expires.
//! - [`LambdaProblem::OutsideShardRange`] is expected after every split or merge: a record the
//!   producer aggregated for the parent shard's range landed on a child. The KCL drops such a
//!   record silently, and a kpl producer resends its user records to the right shard, so they
//!   arrive in another record: skipping it loses nothing.
//! - [`LambdaProblem::Undecodable`] is corrupt data, or a frame compressed with a dictionary
//!   this reader lacks ([`DecodeError::UnknownDictionary`]): deploy the dictionary (reading
//!   resumes with new records), and keep the skipped record's sequence number if you need to
//!   re-read it from the stream.
//!
//! `examples/lambda_consumer.rs` shows the whole handler.

use std::collections::{HashMap, HashSet};

pub mod firehose;

/// The event types, re-exported so a function needs no version match of its own.
pub use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};

use crate::client::{ApiError, KinesisApi, StreamId, list_all_shards};
use crate::codec::deaggregate::{
    DeaggregatedRecord, Deaggregator, DecodeError, SharedStr, UserRecords,
};
use crate::dedup::{DedupId, Deduper};
use crate::hash::HashRange;

/// One user record of the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambdaUserRecord {
    /// The shard it was read from (from the event record's `eventID`).
    pub shard_id: SharedStr,
    /// The Kinesis record's sequence number (with `record.sub_sequence_number`, the KCL's
    /// checkpoint position; the `itemIdentifier` of a partial batch response).
    pub sequence_number: SharedStr,
    /// The user record.
    pub record: DeaggregatedRecord,
}

/// A Kinesis record of the event that gave no user records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Kinesis record {sequence_number} of {shard_id}: {problem}")]
pub struct LambdaRecordError {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// What was wrong.
    pub problem: LambdaProblem,
}

/// Why a Kinesis record of the event gave no user records. Neither is worth a retry: skip and
/// count them (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LambdaProblem {
    /// The data could not be decoded (e.g. a frame whose dictionary this reader lacks).
    #[error("{0}")]
    Undecodable(DecodeError),
    /// Some user records hash outside the shard's range: the KCL drops the whole Kinesis
    /// record, and so does this reader. Expected after a split or merge: a kpl producer
    /// resends such records to the right shard (any other producer's aggregation is not
    /// shard-correct). Skip it; do not report it as a batch item failure.
    #[error(
        "{outside} of {total} user records hash outside the shard's range: the whole record is skipped, as the KCL does (expected after a reshard: a kpl producer resends them)"
    )]
    OutsideShardRange {
        /// User records outside.
        outside: usize,
        /// User records in the Kinesis record.
        total: usize,
    },
}

/// Counts of one batch so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LambdaCounts {
    /// User records yielded.
    pub records: u64,
    /// User records dropped as repeats of an id committed before or seen earlier in the batch.
    pub duplicates: u64,
    /// Kinesis records skipped because user records hash outside their shard's range.
    pub outside_range: u64,
    /// Kinesis records skipped as undecodable.
    pub undecodable: u64,
    /// Kinesis records of shards whose range this reader does not know (not checked):
    /// reload the ranges with [`LambdaReader::load_shard_ranges`] after a reshard.
    pub unchecked: u64,
}

/// Reads Kinesis Lambda events into user records.
#[derive(Debug, Clone, Default)]
pub struct LambdaReader {
    deaggregator: Deaggregator,
    deduper: Option<Deduper>,
    ranges: Option<HashMap<String, HashRange>>,
}

impl LambdaReader {
    /// A reader with a lenient deaggregator, no dedup and no range check.
    pub fn new() -> Self {
        LambdaReader::default()
    }

    /// Decodes with `deaggregator` (e.g. one holding the writers' zstd dictionaries).
    pub fn with_deaggregator(mut self, deaggregator: Deaggregator) -> Self {
        self.deaggregator = deaggregator;
        self
    }

    /// Drops user records whose dedup id `deduper` holds: ids of committed batches (this or
    /// an earlier event), and ids seen earlier in the same batch.
    pub fn with_deduper(mut self, deduper: Deduper) -> Self {
        self.deduper = Some(deduper);
        self
    }

    /// The deduper, if there is one.
    pub fn deduper(&self) -> Option<&Deduper> {
        self.deduper.as_ref()
    }

    /// Checks user records against these shard ranges (shard id -> range), as the KCL does.
    pub fn with_shard_ranges(mut self, ranges: HashMap<String, HashRange>) -> Self {
        self.ranges = Some(ranges);
        self
    }

    /// Lists the stream's shards (open and closed) and uses their ranges for the check.
    pub async fn load_shard_ranges(
        &mut self,
        api: &dyn KinesisApi,
        stream: &str,
    ) -> Result<(), ApiError> {
        let shards = list_all_shards(api, &StreamId::parse(stream)).await?;
        self.ranges = Some(
            shards
                .into_iter()
                .map(|s| (s.shard_id, s.hash_range))
                .collect(),
        );
        Ok(())
    }

    /// Starts reading `event`: the batch yields its user records one at a time (an aggregate
    /// is never expanded whole) and remembers nothing until it is committed.
    pub fn read<'a>(&'a mut self, event: &'a KinesisEvent) -> LambdaBatch<'a> {
        LambdaBatch {
            reader: self,
            event,
            next: 0,
            current: None,
            seen: HashSet::new(),
            pending: Vec::new(),
            problems: Vec::new(),
            counts: LambdaCounts::default(),
        }
    }
}

/// The Kinesis record being read.
struct Current {
    index: usize,
    shard_id: SharedStr,
    sequence_number: SharedStr,
    records: UserRecords,
}

/// One event being read: an iterator of its user records. Commit it once they are handled.
pub struct LambdaBatch<'a> {
    reader: &'a mut LambdaReader,
    event: &'a KinesisEvent,
    next: usize,
    current: Option<Current>,
    /// Ids yielded by this batch (for repeats within it).
    seen: HashSet<DedupId>,
    /// Ids yielded, with the index of their Kinesis record in the event.
    pending: Vec<(usize, DedupId)>,
    problems: Vec<LambdaRecordError>,
    counts: LambdaCounts,
}

impl LambdaBatch<'_> {
    /// Kinesis records read so far that gave no user records (skip and count them).
    pub fn problems(&self) -> &[LambdaRecordError] {
        &self.problems
    }

    /// Counts so far.
    pub fn counts(&self) -> LambdaCounts {
        self.counts
    }

    /// Confirms every user record yielded so far: their dedup ids are remembered, so a later
    /// copy (a producer retry, a re-read) is dropped. Call it once the handler succeeded.
    pub fn commit(self) -> LambdaCounts {
        self.commit_records_before(usize::MAX)
    }

    /// Confirms the user records yielded from Kinesis records before the one with
    /// `sequence_number` (the one reported as the batch item failure): Lambda resends that
    /// one and the rest. An unknown sequence number confirms nothing (a retry then sees
    /// duplicates rather than losing records).
    pub fn commit_before(self, sequence_number: &str) -> LambdaCounts {
        let index = self
            .event
            .records
            .iter()
            .position(|r| r.kinesis.sequence_number == sequence_number)
            .unwrap_or(0);
        self.commit_records_before(index)
    }

    fn commit_records_before(self, index: usize) -> LambdaCounts {
        if let Some(deduper) = &mut self.reader.deduper {
            for &(i, id) in &self.pending {
                if i < index {
                    deduper.remember(id);
                }
            }
            deduper.count_duplicates(self.counts.duplicates);
        }
        self.counts
    }

    /// Opens the event's next Kinesis record; `false` at the end of the event.
    fn open_next(&mut self) -> bool {
        let Some(event_record) = self.event.records.get(self.next) else {
            return false;
        };
        let index = self.next;
        self.next += 1;
        let kinesis = &event_record.kinesis;
        let shard_id = shard_of(event_record);
        let problem = |problem| LambdaRecordError {
            shard_id: shard_id.to_owned(),
            sequence_number: kinesis.sequence_number.clone(),
            problem,
        };
        let records = match self.reader.deaggregator.user_records(
            &kinesis.data.0,
            &kinesis.partition_key,
            None,
        ) {
            Ok(records) => records,
            Err(e) => {
                self.counts.undecodable += 1;
                self.problems.push(problem(LambdaProblem::Undecodable(e)));
                return true;
            }
        };
        match self.reader.ranges.as_ref().map(|r| r.get(shard_id)) {
            Some(Some(range)) => {
                let outside = records.count_outside(*range);
                if outside > 0 {
                    self.counts.outside_range += 1;
                    self.problems
                        .push(problem(LambdaProblem::OutsideShardRange {
                            outside,
                            total: records.len(),
                        }));
                    return true;
                }
            }
            Some(None) => self.counts.unchecked += 1,
            None => {}
        }
        self.current = Some(Current {
            index,
            shard_id: shard_id.into(),
            sequence_number: kinesis.sequence_number.as_str().into(),
            records,
        });
        true
    }

    /// Whether to yield `record` of Kinesis record `index`: not a repeat.
    fn keep(&mut self, index: usize, record: &DeaggregatedRecord) -> bool {
        let Some(deduper) = &mut self.reader.deduper else {
            return true;
        };
        let Some(id) = record.dedup_id() else {
            return true;
        };
        if deduper.seen(id) || !self.seen.insert(id) {
            self.counts.duplicates += 1;
            return false;
        }
        self.pending.push((index, id));
        true
    }
}

impl Iterator for LambdaBatch<'_> {
    type Item = LambdaUserRecord;

    fn next(&mut self) -> Option<LambdaUserRecord> {
        loop {
            if let Some(mut current) = self.current.take() {
                while let Some(record) = current.records.next() {
                    if self.keep(current.index, &record) {
                        self.counts.records += 1;
                        let out = LambdaUserRecord {
                            shard_id: current.shard_id.clone(),
                            sequence_number: current.sequence_number.clone(),
                            record,
                        };
                        self.current = Some(current);
                        return Some(out);
                    }
                }
            }
            if !self.open_next() {
                return None;
            }
        }
    }
}

/// The shard id in an `eventID` of the form `shardId-000000000006:4959...`.
fn shard_of(record: &KinesisEventRecord) -> &str {
    record
        .event_id
        .as_deref()
        .and_then(|id| id.split_once(':'))
        .map_or("", |(shard, _)| shard)
}
