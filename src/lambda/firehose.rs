//! A Firehose data-transformation Lambda (feature `lambda`): kpl's compressed and aggregated
//! Kinesis records in, plain data out, so a delivery stream reading a kpl-written Kinesis stream
//! writes the user records themselves to S3 (Firehose deaggregates KPL records on its own, but
//! cannot read kpl's zstd frames).
//!
//! ```text
//! KinesisFirehoseEvent ─► per record: Deaggregator (zstd frame, with dictionaries; KPL
//!   aggregate; plain) ─► its user records' data, each followed by the separator ("\n")
//!   ─► response record under the same recordId: Ok | ProcessingFailed (with the reason)
//! ```
//!
//! **The 6 MB response limit.** A Lambda response holds at most 6 MB, and each record's output
//! travels base64-encoded (4/3 of its size). Compressed input expands: a record whose output does
//! not fit in what is left goes back `ProcessingFailed` (Firehose writes it to the error output
//! and the reason says to lower the processor's buffer size). Set the delivery stream's Lambda
//! processor `BufferSizeInMBs` to at most `4.5 / compression ratio` MB (1 MB for records that
//! compress 4x, the default 1 MB buffer up to 4.5x; see the README).

/// The event types, re-exported so a function needs no version match of its own.
pub use aws_lambda_events::event::firehose::{
    KinesisFirehoseEvent, KinesisFirehoseEventRecord, KinesisFirehoseResponse,
    KinesisFirehoseResponseRecord,
};

use crate::codec::deaggregate::Deaggregator;

/// Lambda's limit on a synchronous response (Firehose invokes the processor synchronously).
pub const LAMBDA_RESPONSE_LIMIT_BYTES: usize = 6 * 1024 * 1024;

/// JSON around one response record besides its data (recordId, result, metadata), with room.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// `result` of a transformed record.
pub const RESULT_OK: &str = "Ok";
/// `result` of a record that could not be transformed (Firehose sends it to the error output).
pub const RESULT_PROCESSING_FAILED: &str = "ProcessingFailed";

/// Why one record of the event went back `ProcessingFailed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirehoseFailure {
    /// The record's `recordId`.
    pub record_id: String,
    /// What went wrong and what to do.
    pub reason: String,
}

/// What one invocation gives: the response for Firehose and why records failed (to log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirehoseOutcome {
    /// Return this to Firehose.
    pub response: KinesisFirehoseResponse,
    /// The records that went back `ProcessingFailed`, with their reasons.
    pub failures: Vec<FirehoseFailure>,
    /// User records written out.
    pub user_records: u64,
}

/// Turns kpl-written Kinesis records (as Firehose hands them to a transformation Lambda) into
/// their user records' data.
#[derive(Clone, Debug)]
pub struct FirehoseTransformer {
    deaggregator: Deaggregator,
    separator: Vec<u8>,
    response_limit: usize,
}

impl Default for FirehoseTransformer {
    fn default() -> Self {
        FirehoseTransformer::new()
    }
}

impl FirehoseTransformer {
    /// A newline after each user record, a lenient deaggregator without dictionaries, and
    /// Lambda's 6 MB response limit.
    pub fn new() -> Self {
        FirehoseTransformer {
            deaggregator: Deaggregator::new(),
            separator: b"\n".to_vec(),
            response_limit: LAMBDA_RESPONSE_LIMIT_BYTES,
        }
    }

    /// Decodes with `deaggregator` (e.g. one holding the writers' zstd dictionaries).
    pub fn with_deaggregator(mut self, deaggregator: Deaggregator) -> Self {
        self.deaggregator = deaggregator;
        self
    }

    /// Written after each user record (so records stay apart when Firehose concatenates its
    /// output in S3); empty for none.
    pub fn with_separator(mut self, separator: impl Into<Vec<u8>>) -> Self {
        self.separator = separator.into();
        self
    }

    /// The response size to stay within (Lambda's 6 MB unless told otherwise).
    pub fn with_response_limit(mut self, bytes: usize) -> Self {
        self.response_limit = bytes;
        self
    }

    /// Transforms every record of `event`, in order.
    pub fn transform(&self, event: &KinesisFirehoseEvent) -> FirehoseOutcome {
        let mut outcome = FirehoseOutcome::default();
        let mut room = self.response_limit.saturating_sub(64);
        for record in &event.records {
            let record_id = record.record_id.clone().unwrap_or_default();
            let result = self.expand(record, room.saturating_sub(RECORD_OVERHEAD_BYTES));
            let mut out = KinesisFirehoseResponseRecord::default();
            out.record_id = record.record_id.clone();
            match result {
                Ok((data, users)) => {
                    room = room.saturating_sub(RECORD_OVERHEAD_BYTES + base64_len(data.len()));
                    outcome.user_records += users;
                    out.result = Some(RESULT_OK.to_owned());
                    out.data.0 = data;
                }
                Err(reason) => {
                    room = room.saturating_sub(RECORD_OVERHEAD_BYTES);
                    out.result = Some(RESULT_PROCESSING_FAILED.to_owned());
                    outcome.failures.push(FirehoseFailure { record_id, reason });
                }
            }
            outcome.response.records.push(out);
        }
        outcome
    }

    /// One record's output, if it decodes and its base64 fits in `room` bytes.
    fn expand(
        &self,
        record: &KinesisFirehoseEventRecord,
        room: usize,
    ) -> Result<(Vec<u8>, u64), String> {
        let metadata = record.kinesis_firehose_record_metadata.as_ref();
        let key = metadata
            .and_then(|m| m.partition_key.as_deref())
            .unwrap_or("-");
        let records = self
            .deaggregator
            .user_records(&record.data.0, key, None)
            .map_err(|e| format!("cannot decode the Kinesis record: {e}"))?;
        let most = room / 4 * 3;
        let mut out = Vec::new();
        let mut users = 0;
        for r in records {
            out.extend_from_slice(&r.data);
            out.extend_from_slice(&self.separator);
            users += 1;
            if out.len() > most {
                return Err(format!(
                    "its user records do not fit in what is left of Lambda's 6 MB response (a {}-byte record expands to over {most} bytes): lower the Lambda processor's BufferSizeInMBs (at most 4.5 MB divided by the data's compression ratio)",
                    record.data.0.len()
                ));
            }
        }
        Ok((out, users))
    }
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}
