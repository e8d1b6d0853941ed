//! Kinesis Data Streams' hard limits, in one place. Every other module names these constants
//! instead of repeating a number; `ProducerConfig::validate` checks settings against them.
//!
//! Source: the Kinesis Data Streams quotas page and the PutRecords API reference.

/// Most entries one PutRecords call may carry.
pub const MAX_PUT_RECORDS_ENTRIES: usize = 500;

/// Most bytes one PutRecords call may carry, counted as the service counts them: the sum over
/// entries of partition key (UTF-8 bytes) plus data.
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;

/// Default largest record (partition key bytes + data bytes) a stream accepts.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The largest record any stream can be configured to accept
/// (`DescribeStreamSummary` reports the stream's own `MaxRecordSizeInKiB`).
pub const LARGEST_MAX_RECORD_BYTES: usize = 10 * 1024 * 1024;

/// Partition keys are 1 to 256 Unicode characters (characters, not bytes).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// One shard accepts this many bytes per second of writes (partition key + data)...
pub const SHARD_WRITE_BYTES_PER_SEC: u64 = 1024 * 1024;

/// ...or this many records per second, whichever is reached first.
pub const SHARD_WRITE_RECORDS_PER_SEC: u64 = 1000;

/// GetRecords calls per second one shard serves.
pub const SHARD_READ_CALLS_PER_SEC: u32 = 5;

/// Most records one GetRecords call returns.
pub const MAX_GET_RECORDS_LIMIT: i32 = 10_000;
