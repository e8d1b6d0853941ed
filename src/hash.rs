//! Positions on the 128-bit hash key ring that Kinesis divides among shards.
//!
//! A record's hash key is its explicit hash key when it has one, else the MD5 of its partition
//! key's UTF-8 bytes read as a big-endian 128-bit integer.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::record::RecordError;

/// A point on the hash key ring, `0..=2^128-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HashKey(pub u128);

impl HashKey {
    /// The smallest hash key.
    pub const MIN: HashKey = HashKey(0);
    /// The largest hash key, `2^128 - 1`.
    pub const MAX: HashKey = HashKey(u128::MAX);

    /// The hash key Kinesis computes for a partition key: MD5 of its UTF-8 bytes, big-endian.
    ///
    /// ```
    /// use kpl::HashKey;
    /// // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
    /// assert_eq!(HashKey::of_partition_key("a").0, 0x0cc175b9c0f1b6a831c399e269772661);
    /// ```
    pub fn of_partition_key(partition_key: &str) -> HashKey {
        let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
        HashKey(u128::from_be_bytes(digest))
    }

    /// Parses an explicit hash key as the service does: a decimal integer in `0..=2^128-1`,
    /// written without sign, spaces or leading zeros.
    pub fn parse_explicit(value: &str) -> Result<HashKey, RecordError> {
        let invalid = |reason: &'static str| RecordError::InvalidExplicitHashKey {
            value: truncate_for_error(value),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("it must contain only the digits 0-9"));
        }
        if value.len() > 1 && value.starts_with('0') {
            return Err(invalid("it must not have leading zeros"));
        }
        value
            .parse::<u128>()
            .map(HashKey)
            .map_err(|_| invalid("it is larger than 2^128-1"))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for HashKey {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashKey::parse_explicit(s)
    }
}

/// An inclusive range of hash keys, as a shard owns one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashRange {
    /// First hash key of the range.
    pub start: HashKey,
    /// Last hash key of the range (inclusive).
    pub end: HashKey,
}

impl HashRange {
    /// The whole ring.
    pub const ALL: HashRange = HashRange {
        start: HashKey::MIN,
        end: HashKey::MAX,
    };

    /// Whether `key` lies in this range.
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key && key <= self.end
    }
}

pub(crate) fn truncate_for_error(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_hash_is_big_endian_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            HashKey::of_partition_key("").0,
            0xd41d8cd98f00b204e9800998ecf8427e
        );
    }

    #[test]
    fn explicit_hash_key_bounds() {
        assert_eq!(HashKey::parse_explicit("0").unwrap(), HashKey::MIN);
        let max = u128::MAX.to_string();
        assert_eq!(HashKey::parse_explicit(&max).unwrap(), HashKey::MAX);
        // 2^128 is one past the ring.
        assert!(HashKey::parse_explicit("340282366920938463463374607431768211456").is_err());
        for bad in ["", "-1", "+1", " 1", "1 ", "01", "1e5", "abc", "١٢"] {
            assert!(HashKey::parse_explicit(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn range_is_inclusive() {
        let r = HashRange {
            start: HashKey(10),
            end: HashKey(20),
        };
        assert!(r.contains(HashKey(10)) && r.contains(HashKey(20)));
        assert!(!r.contains(HashKey(9)) && !r.contains(HashKey(21)));
    }
}
