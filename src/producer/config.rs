//! Producer settings: one struct, KPL names and defaults where the KPL has them, and one
//! [`ProducerConfig::validate`] that checks everything against Kinesis's limits.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::frame::Dictionary;
use crate::limits::{
    LARGEST_MAX_RECORD_BYTES, MAX_PARTITION_KEY_CHARS, MAX_PUT_RECORDS_BYTES,
    MAX_PUT_RECORDS_ENTRIES, SHARD_WRITE_BYTES_PER_SEC,
};
use crate::producer::backoff::BackoffConfig;
use crate::spool::SpoolConfig;

/// KPL `AggregationMaxSize`: the largest aggregate, in encoded bytes. 52 172: a twentieth of a
/// shard's 1 MiB/s less room for a 256-byte partition key, so a backlogged shard's second holds
/// exactly 20 full aggregates (the service counts key + data). The KPL's 51 200 fits 20 too and
/// leaves 2.3 % of every such second unused; 1 MiB / 20 with the key on top would fit only 19.
pub const DEFAULT_AGGREGATION_MAX_SIZE_BYTES: usize =
    SHARD_WRITE_BYTES_PER_SEC as usize / AGGREGATES_PER_SHARD_SECOND - MAX_PARTITION_KEY_CHARS;
/// Full default-size aggregates one shard takes per second.
const AGGREGATES_PER_SHARD_SECOND: usize = 20;
/// KPL `AggregationMaxCount`: no practical limit on user records per aggregate.
pub const DEFAULT_AGGREGATION_MAX_COUNT: usize = u32::MAX as usize;
/// KPL `CollectionMaxCount`: entries per PutRecords call.
pub const DEFAULT_COLLECTION_MAX_COUNT: usize = MAX_PUT_RECORDS_ENTRIES;
/// KPL `CollectionMaxSize`: bytes per PutRecords call (partition keys + data).
pub const DEFAULT_COLLECTION_MAX_SIZE_BYTES: usize = MAX_PUT_RECORDS_BYTES;
/// KPL `RecordMaxBufferedTime`: the longest a record waits to be batched.
pub const DEFAULT_RECORD_MAX_BUFFERED_TIME_MS: u64 = 100;
/// KPL `RecordTtl`: a record not stored this long after `send` fails.
pub const DEFAULT_RECORD_TTL_MS: u64 = 30_000;
/// KPL `RequestTimeout`: one PutRecords attempt.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 6_000;
/// Longest allowed `record_max_buffered_time`: an hour (the KPL's own limit is 10 minutes).
pub const MAX_RECORD_MAX_BUFFERED_TIME_SECS: u64 = 60 * 60;
/// Longest allowed `record_ttl`: 7 days, enough for records to wait out a day-long outage.
pub const MAX_RECORD_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// Longest allowed `request_timeout`: an hour.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 60 * 60;
/// Longest allowed backoff `cap` (and so `base`): an hour.
pub const MAX_BACKOFF_CAP_SECS: u64 = 60 * 60;
/// KPL `RateLimit`: per-shard rate as a percentage of the shard's limits.
pub const DEFAULT_RATE_LIMIT_PERCENT: u32 = 150;
/// Attempts per record, the first one included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
/// Records accepted by `send` and not yet resolved.
pub const DEFAULT_MAX_OUTSTANDING_RECORDS: usize = 200_000;
/// Bytes (partition key + data) accepted by `send` and not yet resolved.
pub const DEFAULT_MAX_OUTSTANDING_BYTES: usize = 128 * 1024 * 1024;
/// KPL `MaxConnections`: PutRecords calls in flight at once.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 24;
/// zstd level used by `Compression::Zstd` when none is given.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How Kinesis records are compressed before they are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Records are sent as KPL aggregates or raw records, readable by every KPL consumer.
    #[default]
    None,
    /// Each Kinesis record is wrapped in a zstd frame (see the README's wire format). Only
    /// kpl's deaggregator (library, `kpl cat`, the Lambda helper) reads it.
    Zstd {
        /// zstd level, 1 (fast) to 22.
        level: i32,
    },
    /// Like `Zstd`, with a dictionary trained on typical records (`kpl dict train`): much
    /// better ratios for small Kinesis records (aggregation off, or few records per shard
    /// per buffered time). Readers need the same dictionary.
    ZstdDictionary {
        /// zstd level, 1 (fast) to 22.
        level: i32,
        /// The dictionary; its id goes into every frame.
        dictionary: Dictionary,
    },
}

/// Everything a [`Producer`](crate::producer::Producer) can be told. `Default` gives the KPL's
/// defaults, but a slightly larger aggregate (see [`DEFAULT_AGGREGATION_MAX_SIZE_BYTES`]);
/// [`validate`](ProducerConfig::validate) is called by the producer.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Pack many user records into one Kinesis record (KPL aggregation). Default on.
    pub aggregation_enabled: bool,
    /// Largest encoded aggregate in bytes (data; the service adds the partition key). Default
    /// 52 172, so that 20 full aggregates fill a shard's second
    /// ([`DEFAULT_AGGREGATION_MAX_SIZE_BYTES`]).
    pub aggregation_max_size: usize,
    /// Most user records in one aggregate. Default unlimited.
    pub aggregation_max_count: usize,
    /// Most Kinesis records in one PutRecords call (1 to 500). Default 500.
    pub collection_max_count: usize,
    /// Most bytes (partition keys + data) in one PutRecords call (up to 5 MiB). Default 5 MiB.
    pub collection_max_size: usize,
    /// Longest a record waits for its aggregate and call to fill before it is sent. Default 100 ms,
    /// at most an hour.
    pub record_max_buffered_time: Duration,
    /// A record not stored within this time after `send` fails with `Expired`. Default 30 s, at most
    /// 7 days.
    pub record_ttl: Duration,
    /// Timeout of one PutRecords attempt. Default 6 s, 10 ms to an hour.
    pub request_timeout: Duration,
    /// Per-shard rate ceiling, in percent of the shard's 1000 records/s and 1 MiB/s. Default 150
    /// (the KPL's name and default). Each shard starts at 97 % of its real limit (or this, if
    /// lower) and probes up to this ceiling while nothing is throttled, but never above the
    /// published limit, which Kinesis enforces (see the limiter).
    pub rate_limit_percent: u32,
    /// Pace each shard with the limiter. Default on; turn it off only against something that
    /// enforces no shard limits (a benchmark fake), or to measure raw throttling behaviour.
    pub rate_limit_enabled: bool,
    /// Most attempts per record, the first one included. Default 20.
    pub max_attempts: u32,
    /// Delay between attempts: full-jitter exponential from `base` up to `cap`
    /// (at most an hour).
    pub backoff: BackoffConfig,
    /// `send` waits (and `try_send` fails) while this many records are unresolved. Default 200 000.
    pub max_outstanding_records: usize,
    /// `send` waits (and `try_send` fails) while this many bytes are unresolved. Default 128 MiB.
    pub max_outstanding_bytes: usize,
    /// PutRecords calls in flight at once. Default 24.
    pub max_concurrent_requests: usize,
    /// Compression of Kinesis records. Default none.
    pub compression: Compression,
    /// Largest record (partition key + data) the stream accepts. `None`: ask the stream
    /// (DescribeStreamSummary), falling back to 1 MiB.
    pub max_record_bytes: Option<usize>,
    /// Tag every user record with a unique [`DedupId`](crate::dedup::DedupId) (a random
    /// producer id and a counter), so readers can drop duplicates with a
    /// [`Deduper`](crate::dedup::Deduper). KPL readers still read the data unchanged. Costs
    /// about 30 bytes per user record before compression, and a lone record is always sent as
    /// an aggregate (raw data cannot carry the tag). Default off.
    pub dedup_ids: bool,
    /// Store the records of each shard (so of each partition key) in `send` order, even under
    /// throttling and retries: at most one Kinesis record per shard is in flight, and a failed
    /// one blocks the rest of its shard until it is stored or has failed for good. Costs
    /// throughput: each shard moves one aggregate per round trip (see BENCHMARKS.md). Default
    /// off: retries may then store a record after later records of its key.
    pub strict_ordering: bool,
    /// Seeds every random choice the producer makes (the jitter of its retry and ListShards
    /// backoff, its dedup producer id), so that a test on tokio's paused clock replays exactly:
    /// same seed, same calls, same outcomes. Default `None`: seeded by the operating system.
    /// For reproducible tests only: producers given the same seed draw the same dedup
    /// producer id, so their dedup ids collide.
    pub rng_seed: Option<u64>,
    /// Keep every record in a durable spool on disk from the moment it is accepted until it
    /// is stored or has failed for good (see [`crate::spool`]). Used by
    /// [`SpooledProducer::connect`](crate::producer::SpooledProducer::connect);
    /// [`Producer::new`](crate::producer::Producer::new) and `connect` refuse a config that
    /// names one (their per-record futures live in memory). Default `None`.
    pub spool: Option<SpoolSettings>,
}

/// Where and how a producer spools its records: [`ProducerConfig::spool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The spool directory (created if missing; one process at a time).
    pub dir: PathBuf,
    /// Sync policy (default every 100 ms), size cap (default 1 GiB) and what appends do at
    /// the cap (default: wait); see [`SpoolConfig`].
    pub config: SpoolConfig,
}

impl SpoolSettings {
    /// A spool in `dir` with the default [`SpoolConfig`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolSettings {
            dir: dir.into(),
            config: SpoolConfig::default(),
        }
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            aggregation_enabled: true,
            aggregation_max_size: DEFAULT_AGGREGATION_MAX_SIZE_BYTES,
            aggregation_max_count: DEFAULT_AGGREGATION_MAX_COUNT,
            collection_max_count: DEFAULT_COLLECTION_MAX_COUNT,
            collection_max_size: DEFAULT_COLLECTION_MAX_SIZE_BYTES,
            record_max_buffered_time: Duration::from_millis(DEFAULT_RECORD_MAX_BUFFERED_TIME_MS),
            record_ttl: Duration::from_millis(DEFAULT_RECORD_TTL_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            rate_limit_percent: DEFAULT_RATE_LIMIT_PERCENT,
            rate_limit_enabled: true,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: BackoffConfig::default(),
            max_outstanding_records: DEFAULT_MAX_OUTSTANDING_RECORDS,
            max_outstanding_bytes: DEFAULT_MAX_OUTSTANDING_BYTES,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            compression: Compression::None,
            max_record_bytes: None,
            dedup_ids: false,
            strict_ordering: false,
            rng_seed: None,
            spool: None,
        }
    }
}

/// A setting outside what Kinesis or the producer can work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer setting {field} = {value}: {requirement}")]
pub struct ConfigError {
    /// The field's name in [`ProducerConfig`].
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub requirement: String,
}

impl ProducerConfig {
    /// Checks every field against Kinesis's limits and the producer's needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            ok: bool,
            field: &'static str,
            value: impl std::fmt::Debug,
            requirement: impl Into<String>,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    value: format!("{value:?}"),
                    requirement: requirement.into(),
                })
            }
        }
        let record_max = self.max_record_bytes.unwrap_or(LARGEST_MAX_RECORD_BYTES);
        check(
            (1..=LARGEST_MAX_RECORD_BYTES).contains(&record_max),
            "max_record_bytes",
            self.max_record_bytes,
            "1 byte to 10 MiB (Kinesis's largest record)",
        )?;
        // An aggregate is one Kinesis record: its data and its partition key (up to 256
        // characters of up to 4 bytes) must fit the record limit.
        let aggregate_room = record_max.saturating_sub(MAX_PARTITION_KEY_CHARS * 4);
        check(
            (64..=aggregate_room).contains(&self.aggregation_max_size),
            "aggregation_max_size",
            self.aggregation_max_size,
            format!("64 to {aggregate_room} bytes (the record limit less a partition key)"),
        )?;
        check(
            self.aggregation_max_count >= 1,
            "aggregation_max_count",
            self.aggregation_max_count,
            "at least 1",
        )?;
        check(
            (1..=MAX_PUT_RECORDS_ENTRIES).contains(&self.collection_max_count),
            "collection_max_count",
            self.collection_max_count,
            "1 to 500 (PutRecords' entry limit)",
        )?;
        check(
            (1..=MAX_PUT_RECORDS_BYTES).contains(&self.collection_max_size),
            "collection_max_size",
            self.collection_max_size,
            "1 byte to 5 MiB (PutRecords' size limit)",
        )?;
        check(
            self.record_max_buffered_time <= Duration::from_secs(MAX_RECORD_MAX_BUFFERED_TIME_SECS),
            "record_max_buffered_time",
            self.record_max_buffered_time,
            "at most an hour (MAX_RECORD_MAX_BUFFERED_TIME_SECS)",
        )?;
        check(
            self.record_ttl > Duration::ZERO
                && self.record_ttl <= Duration::from_secs(MAX_RECORD_TTL_SECS),
            "record_ttl",
            self.record_ttl,
            "more than zero and at most 7 days (MAX_RECORD_TTL_SECS)",
        )?;
        check(
            self.request_timeout >= Duration::from_millis(10)
                && self.request_timeout <= Duration::from_secs(MAX_REQUEST_TIMEOUT_SECS),
            "request_timeout",
            self.request_timeout,
            "at least 10 ms and at most an hour (MAX_REQUEST_TIMEOUT_SECS)",
        )?;
        check(
            (1..=1000).contains(&self.rate_limit_percent),
            "rate_limit_percent",
            self.rate_limit_percent,
            "1 to 1000 percent of the shard limits",
        )?;
        check(
            self.max_attempts >= 1,
            "max_attempts",
            self.max_attempts,
            "at least 1",
        )?;
        check(
            self.backoff.base > Duration::ZERO
                && self.backoff.base <= self.backoff.cap
                && self.backoff.cap <= Duration::from_secs(MAX_BACKOFF_CAP_SECS),
            "backoff",
            self.backoff,
            "base more than zero and no more than cap, cap at most an hour (MAX_BACKOFF_CAP_SECS)",
        )?;
        check(
            self.max_outstanding_records >= 1 && self.max_outstanding_records <= u32::MAX as usize,
            "max_outstanding_records",
            self.max_outstanding_records,
            "1 to 2^32-1",
        )?;
        check(
            self.max_outstanding_bytes >= record_max.min(crate::limits::DEFAULT_MAX_RECORD_BYTES)
                && self.max_outstanding_bytes <= u32::MAX as usize,
            "max_outstanding_bytes",
            self.max_outstanding_bytes,
            "at least one largest record (1 MiB) and at most 4 GiB",
        )?;
        check(
            self.max_concurrent_requests >= 1,
            "max_concurrent_requests",
            self.max_concurrent_requests,
            "at least 1",
        )?;
        if let Some(spool) = &self.spool {
            check(
                !spool.dir.as_os_str().is_empty(),
                "spool",
                &spool.dir,
                "a spool directory (not an empty path)",
            )?;
            if let Err(e) = spool.config.validate() {
                check(false, "spool", &spool.config, e.to_string())?;
            }
        }
        if let Compression::Zstd { level } | Compression::ZstdDictionary { level, .. } =
            self.compression
        {
            check(
                (1..=22).contains(&level),
                "compression",
                &self.compression,
                "zstd level 1 to 22",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_kpl_compatible() {
        let c = ProducerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.aggregation_max_size, 52_172);
        // 20 full aggregates, each with the longest partition key, fit one shard second.
        assert!(20 * (c.aggregation_max_size + 256) <= 1024 * 1024);
        assert!(21 * c.aggregation_max_size > 1024 * 1024);
        assert_eq!(c.collection_max_count, 500);
        assert_eq!(c.collection_max_size, 5 * 1024 * 1024);
        assert_eq!(c.record_max_buffered_time, Duration::from_millis(100));
        assert_eq!(c.record_ttl, Duration::from_secs(30));
        assert_eq!(c.request_timeout, Duration::from_secs(6));
        assert_eq!(c.rate_limit_percent, 150);
    }

    #[test]
    fn limits_are_enforced() {
        let bad = [
            ProducerConfig {
                collection_max_count: 501,
                ..Default::default()
            },
            ProducerConfig {
                collection_max_size: MAX_PUT_RECORDS_BYTES + 1,
                ..Default::default()
            },
            ProducerConfig {
                max_record_bytes: Some(LARGEST_MAX_RECORD_BYTES + 1),
                ..Default::default()
            },
            ProducerConfig {
                aggregation_max_size: 1024 * 1024,
                max_record_bytes: Some(1024 * 1024),
                ..Default::default()
            },
            ProducerConfig {
                max_attempts: 0,
                ..Default::default()
            },
            ProducerConfig {
                compression: Compression::Zstd { level: 0 },
                ..Default::default()
            },
        ];
        for c in bad {
            let err = c.validate().unwrap_err();
            assert!(!err.requirement.is_empty(), "{err}");
        }
    }

    #[test]
    fn a_spool_is_validated_like_the_other_fields() {
        let ok = ProducerConfig {
            spool: Some(SpoolSettings::new("/var/spool/kpl")),
            ..Default::default()
        };
        ok.validate().unwrap();
        for spool in [
            SpoolSettings::new(""),
            SpoolSettings {
                config: SpoolConfig {
                    max_bytes: 4096,
                    ..SpoolConfig::default()
                },
                ..SpoolSettings::new("/var/spool/kpl")
            },
        ] {
            let err = ProducerConfig {
                spool: Some(spool),
                ..Default::default()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.field, "spool", "{err}");
        }
    }

    /// Durations past what the clock can add to `now` panicked the pipeline; they are refused,
    /// each naming its field, and the largest allowed values pass.
    #[test]
    fn durations_that_would_overflow_the_clock_are_refused() {
        let huge = Duration::MAX;
        let bad: [(&str, ProducerConfig); 5] = [
            (
                "record_ttl",
                ProducerConfig {
                    record_ttl: huge,
                    ..Default::default()
                },
            ),
            (
                "record_max_buffered_time",
                ProducerConfig {
                    record_max_buffered_time: huge,
                    ..Default::default()
                },
            ),
            (
                "request_timeout",
                ProducerConfig {
                    request_timeout: huge,
                    ..Default::default()
                },
            ),
            (
                "backoff",
                ProducerConfig {
                    backoff: BackoffConfig {
                        base: Duration::from_millis(100),
                        cap: huge,
                    },
                    ..Default::default()
                },
            ),
            (
                "backoff",
                ProducerConfig {
                    backoff: BackoffConfig {
                        base: huge,
                        cap: huge,
                    },
                    ..Default::default()
                },
            ),
        ];
        for (field, c) in bad {
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        largest()
            .validate()
            .expect("the largest allowed durations are valid");
    }

    /// Every duration at its largest allowed value.
    pub(crate) fn largest() -> ProducerConfig {
        ProducerConfig {
            record_ttl: Duration::from_secs(MAX_RECORD_TTL_SECS),
            record_max_buffered_time: Duration::from_secs(MAX_RECORD_MAX_BUFFERED_TIME_SECS),
            request_timeout: Duration::from_secs(MAX_REQUEST_TIMEOUT_SECS),
            backoff: BackoffConfig {
                base: Duration::from_secs(MAX_BACKOFF_CAP_SECS),
                cap: Duration::from_secs(MAX_BACKOFF_CAP_SECS),
            },
            ..Default::default()
        }
    }
}
