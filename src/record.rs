//! The user record: what a producer service hands to kpl, and the checks it must pass before
//! it is buffered.

use bytes::Bytes;

use crate::hash::{HashKey, truncate_for_error};
use crate::limits::{LARGEST_MAX_RECORD_BYTES, MAX_PARTITION_KEY_CHARS};

/// One record as the user sees it: a partition key, an optional explicit hash key, and data.
///
/// ```
/// use kpl::UserRecord;
/// let record = UserRecord::new("user-42", &b"{\"clicked\":true}"[..]);
/// assert!(record.validate(kpl::limits::DEFAULT_MAX_RECORD_BYTES).is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Decides the shard (through its MD5) unless an explicit hash key is set.
    pub partition_key: String,
    /// Overrides the partition key's hash for routing.
    pub explicit_hash_key: Option<HashKey>,
    /// The payload.
    pub data: Bytes,
}

impl UserRecord {
    /// A record routed by the MD5 of `partition_key`.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        UserRecord {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }

    /// Routes the record by `key` instead of its partition key's hash.
    pub fn with_explicit_hash_key(mut self, key: HashKey) -> Self {
        self.explicit_hash_key = Some(key);
        self
    }

    /// The hash key that decides the record's shard.
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| HashKey::of_partition_key(&self.partition_key))
    }

    /// Bytes the service counts for this record: partition key (UTF-8) plus data.
    pub fn billed_bytes(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }

    /// Checks the record against the service's limits: a partition key of 1 to 256 characters
    /// and partition key + data within `max_record_bytes`
    /// (1 MiB unless the stream was configured otherwise; never above 10 MiB).
    pub fn validate(&self, max_record_bytes: usize) -> Result<(), RecordError> {
        validate_partition_key(&self.partition_key)?;
        let max = max_record_bytes.min(LARGEST_MAX_RECORD_BYTES);
        let size = self.billed_bytes();
        if size > max {
            return Err(RecordError::TooLarge { size, max });
        }
        Ok(())
    }
}

/// Checks a partition key: 1 to 256 Unicode characters.
pub fn validate_partition_key(partition_key: &str) -> Result<(), RecordError> {
    if partition_key.is_empty() {
        return Err(RecordError::EmptyPartitionKey);
    }
    // A key of at most 256 bytes has at most 256 characters: skip counting for the common case.
    if partition_key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = partition_key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(RecordError::PartitionKeyTooLong {
                key: truncate_for_error(partition_key),
                chars,
                max: MAX_PARTITION_KEY_CHARS,
            });
        }
    }
    Ok(())
}

/// Why a record was refused before it was buffered. Nothing about it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Kinesis requires a partition key of at least one character.
    #[error("the partition key is empty: Kinesis requires 1 to 256 characters")]
    EmptyPartitionKey,
    /// The partition key has more than 256 characters.
    #[error(
        "the partition key {key:?} has {chars} characters, more than the {max} Kinesis allows: shorten it or hash it"
    )]
    PartitionKeyTooLong {
        /// The key, truncated for display.
        key: String,
        /// Its length in Unicode characters.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// The explicit hash key is not a decimal integer in `0..=2^128-1`.
    #[error(
        "the explicit hash key {value:?} is invalid: {reason}; it must be a decimal integer from 0 to 2^128-1"
    )]
    InvalidExplicitHashKey {
        /// The value, truncated for display.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Partition key + data exceed the stream's record size limit.
    #[error(
        "the record is {size} bytes (partition key + data), over the stream's limit of {max} bytes: split it, or raise the stream's maximum record size (up to 10 MiB) and the producer's max_record_bytes"
    )]
    TooLarge {
        /// Partition key bytes + data bytes.
        size: usize,
        /// The limit in force.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_length_is_counted_in_characters() {
        let ok = "é".repeat(256); // 512 bytes, 256 characters
        assert!(validate_partition_key(&ok).is_ok());
        let long = "é".repeat(257);
        assert!(matches!(
            validate_partition_key(&long),
            Err(RecordError::PartitionKeyTooLong { chars: 257, .. })
        ));
        assert_eq!(
            validate_partition_key(""),
            Err(RecordError::EmptyPartitionKey)
        );
    }

    #[test]
    fn size_limit_counts_key_and_data() {
        let r = UserRecord::new("ab", vec![0u8; 98]);
        assert!(r.validate(100).is_ok());
        assert_eq!(
            r.validate(99),
            Err(RecordError::TooLarge { size: 100, max: 99 })
        );
        // Never above the largest limit Kinesis offers, whatever the caller asks.
        let big = UserRecord::new("k", vec![0u8; LARGEST_MAX_RECORD_BYTES]);
        assert!(big.validate(usize::MAX).is_err());
    }
}
