//! User records out of a Kinesis Lambda event (feature `lambda`): decompressed, deaggregated,
//! checked against their shard's hash range the way the KCL checks them, and optionally
//! deduplicated.
//!
//! ```text
//! KinesisEvent ─► per Kinesis record: shard id (from eventID), data (base64-decoded by serde)
//!   ─► Deaggregator (plain | KPL | zstd frame, with the writers' dictionaries)
//!   ─► KCL check: every user record inside its shard's range, or the whole record is dropped
//!   ─► Deduper (records written with dedup ids; repeats dropped)
//!   ─► LambdaBatch { records, problems }
//! ```
//!
//! Keep one [`LambdaReader`] for the life of the Lambda environment (build it before
//! `lambda_runtime::run`, or in a `OnceLock`): its [`Deduper`] then also catches duplicates
//! across invocations, and its shard ranges are loaded once. `examples/lambda_consumer.rs`
//! shows the whole handler.

use std::collections::HashMap;

/// The event types, re-exported so a function needs no version match of its own.
pub use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};

use crate::client::{ApiError, KinesisApi, StreamId, list_all_shards};
use crate::codec::deaggregate::{DeaggregatedRecord, Deaggregator, DecodeError, outside_range};
use crate::dedup::Deduper;
use crate::hash::HashRange;

/// One user record of the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambdaUserRecord {
    /// The shard it was read from (from the event record's `eventID`).
    pub shard_id: String,
    /// The Kinesis record's sequence number (with `record.sub_sequence_number`, the KCL's
    /// checkpoint position).
    pub sequence_number: String,
    /// The user record.
    pub record: DeaggregatedRecord,
}

/// A Kinesis record of the event that gave no user records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Kinesis record {sequence_number} of {shard_id}: {problem}")]
pub struct LambdaRecordError {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its sequence number: the `itemIdentifier` to report in a partial batch response if the
    /// function should see it again.
    pub sequence_number: String,
    /// What was wrong.
    pub problem: LambdaProblem,
}

/// Why a Kinesis record of the event gave no user records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LambdaProblem {
    /// The data could not be decoded (e.g. a frame whose dictionary this reader lacks).
    #[error("{0}")]
    Undecodable(DecodeError),
    /// Some user records hash outside the shard's range: the KCL drops the whole Kinesis
    /// record, and so does this reader. A kpl producer resends such records; any other
    /// producer's aggregation is not shard-correct.
    #[error(
        "{outside} of {total} user records hash outside the shard's range: the whole record is dropped, as the KCL does"
    )]
    OutsideShardRange {
        /// User records outside.
        outside: usize,
        /// User records in the Kinesis record.
        total: usize,
    },
}

/// What one event gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LambdaBatch {
    /// The user records, in event order (sub-records in aggregate order).
    pub records: Vec<LambdaUserRecord>,
    /// Kinesis records that gave none.
    pub problems: Vec<LambdaRecordError>,
    /// User records dropped as repeats of an id already seen.
    pub duplicates: u64,
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

    /// Drops user records whose dedup id `deduper` has seen (in this or an earlier event).
    pub fn with_deduper(mut self, deduper: Deduper) -> Self {
        self.deduper = Some(deduper);
        self
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

    /// The user records of `event`.
    pub fn read(&mut self, event: &KinesisEvent) -> LambdaBatch {
        let mut batch = LambdaBatch::default();
        for record in &event.records {
            self.read_record(record, &mut batch);
        }
        batch
    }

    fn read_record(&mut self, event_record: &KinesisEventRecord, batch: &mut LambdaBatch) {
        let kinesis = &event_record.kinesis;
        let shard_id = shard_of(event_record).to_owned();
        let sequence_number = kinesis.sequence_number.clone();
        let problem = |problem| LambdaRecordError {
            shard_id: shard_id.clone(),
            sequence_number: sequence_number.clone(),
            problem,
        };
        let users =
            match self
                .deaggregator
                .deaggregate(&kinesis.data.0, &kinesis.partition_key, None)
            {
                Ok(users) => users,
                Err(e) => {
                    batch.problems.push(problem(LambdaProblem::Undecodable(e)));
                    return;
                }
            };
        match self.ranges.as_ref().map(|r| r.get(&shard_id)) {
            Some(Some(range)) => {
                let outside = outside_range(&users, *range).len();
                if outside > 0 {
                    batch
                        .problems
                        .push(problem(LambdaProblem::OutsideShardRange {
                            outside,
                            total: users.len(),
                        }));
                    return;
                }
            }
            Some(None) => batch.unchecked += 1,
            None => {}
        }
        for user in users {
            if let Some(deduper) = &mut self.deduper
                && !deduper.keep(&user)
            {
                batch.duplicates += 1;
                continue;
            }
            batch.records.push(LambdaUserRecord {
                shard_id: shard_id.clone(),
                sequence_number: sequence_number.clone(),
                record: user,
            });
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
