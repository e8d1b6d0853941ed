//! The consumer side: one Kinesis record in, its user records out, whether the record is
//! plain, a KPL aggregate, or a compressed frame (of either).
//!
//! ```text
//! Kinesis record ─► frame? decompress (declared size <= max_decompressed_bytes, 16 MiB)
//!   ─► KPL magic + MD5? check the whole protobuf, index its key tables (codec::index)
//!   ─► UserRecords: one DeaggregatedRecord at a time, keys shared with the tables
//! ```
//!
//! Untrusted bytes never drive an allocation: protobuf lengths are checked against the input,
//! and a compressed frame declares its size, which must be within
//! [`Deaggregator::max_decompressed_bytes`] (16 MiB by default) before anything is allocated.
//! What a reader holds is bounded by the record, not by how many user records it declares:
//! [`Deaggregator::user_records`] walks the aggregate's protobuf one user record at a time
//! (a 1.5 KB record can hold 2.8 M user records), every user record's keys share one copy of
//! the aggregate's table entry ([`SharedStr`]), and each entry is hashed once.
//!
//! Like the KCL, a record that starts with the KPL magic but whose MD5 or protobuf does not
//! check out is passed through as plain data in the default mode; [`Deaggregator::strict`]
//! makes it an error instead.

use std::borrow::Borrow;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};

use crate::codec::aggregate::{DIGEST_LEN, FRAMING_LEN, KPL_MAGIC};
use crate::codec::frame::{Dictionary, FrameHeader, HEADER_LEN};
use crate::codec::index::AggregateIndex;
use crate::codec::wire::{self, Tags};
use crate::hash::{HashKey, HashRange};

/// Default cap on a compressed record's decompressed size.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

/// How a user record was carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The Kinesis record was the user record.
    Plain,
    /// Inside a KPL aggregate.
    Aggregated,
}

/// A string shared with the aggregate it was read from: the user records of an aggregate
/// point at one copy of each key table entry instead of each holding its own. Cloning it
/// costs a reference count; it reads as a `&str` (`Deref`, `as_str`, `==` with `str` and
/// `String`).
#[derive(Clone)]
pub struct SharedStr {
    text: Arc<str>,
    start: usize,
    end: usize,
}

impl SharedStr {
    /// `range` of `text` (on character boundaries).
    pub(crate) fn shared(text: &Arc<str>, range: Range<usize>) -> SharedStr {
        debug_assert!(text.get(range.clone()).is_some());
        SharedStr {
            text: text.clone(),
            start: range.start,
            end: range.end,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text[self.start..self.end]
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr::from("")
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr {
            text: Arc::from(s),
            start: 0,
            end: s.len(),
        }
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        let end = s.len();
        SharedStr {
            text: Arc::from(s),
            start: 0,
            end,
        }
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

macro_rules! eq_with {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for SharedStr {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<SharedStr> for $t {
            fn eq(&self, other: &SharedStr) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}
eq_with!(str, &str, String);

/// One user record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeaggregatedRecord {
    /// Its partition key (shared with the aggregate's key table).
    pub partition_key: SharedStr,
    /// Its explicit hash key, if it had one.
    pub explicit_hash_key: Option<SharedStr>,
    /// The hash key that routes it: the explicit one, else MD5 of the partition key.
    pub hash_key: HashKey,
    /// Its data.
    pub data: Bytes,
    /// Its index inside the Kinesis record (0 for a plain record).
    pub sub_sequence_number: u64,
    /// KPL tags (key, value) on the user record.
    pub tags: Vec<(String, Option<String>)>,
    /// Plain or aggregated.
    pub kind: RecordKind,
    /// Whether the Kinesis record was a compressed frame.
    pub compressed: bool,
}

impl DeaggregatedRecord {
    /// The record's dedup id, if its producer wrote one (see [`crate::dedup`]).
    pub fn dedup_id(&self) -> Option<crate::dedup::DedupId> {
        self.tags
            .iter()
            .find(|(key, _)| key == crate::dedup::DEDUP_TAG_KEY)
            .and_then(|(_, value)| crate::dedup::DedupId::parse(value.as_deref()?))
    }
}

/// Why a Kinesis record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Strict mode: the KPL magic with a wrong MD5 trailer.
    #[error(
        "the record starts with the KPL magic but its MD5 does not match: corrupt or not an aggregate"
    )]
    BadDigest,
    /// Strict mode: the KPL magic with a protobuf that does not parse (or is too short).
    #[error("the record starts with the KPL magic but its protobuf is invalid: {0}")]
    BadProtobuf(String),
    /// A user record refers to a key table entry that does not exist.
    #[error(
        "user record {record} refers to {table} entry {index}, but the table has {len} entries"
    )]
    IndexOutOfRange {
        /// Index of the user record in the aggregate.
        record: usize,
        /// Which table.
        table: &'static str,
        /// The index it gave.
        index: u64,
        /// The table's length.
        len: usize,
    },
    /// An explicit hash key that is not a decimal in 0..2^128-1.
    #[error("explicit hash key {0:?} is not a decimal integer from 0 to 2^128-1")]
    BadExplicitHashKey(String),
    /// A compressed frame whose declared size is above the cap.
    #[error(
        "the compressed record declares {declared} bytes, over the limit of {max}: raise max_decompressed_bytes if this is expected"
    )]
    TooLarge {
        /// Declared size.
        declared: usize,
        /// The cap.
        max: usize,
    },
    /// A compressed frame that needs a dictionary this reader does not have.
    #[error(
        "the compressed record needs zstd dictionary {0}, which this reader was not given: load the writer's dictionary (Deaggregator::with_dictionary, or kpl cat --zstd-dict FILE)"
    )]
    UnknownDictionary(u32),
    /// A compressed frame whose zstd data is corrupt or does not match its declared size.
    #[error("the compressed record is corrupt: {0}")]
    Corrupt(String),
}

/// Reads Kinesis records back into user records.
///
/// ```
/// use kpl::codec::deaggregate::Deaggregator;
/// let records = Deaggregator::new().deaggregate(b"plain data", "key", None).unwrap();
/// assert_eq!(records[0].data, &b"plain data"[..]);
/// // Or one at a time, holding only the Kinesis record:
/// let mut records = Deaggregator::new().user_records(b"plain data", "key", None).unwrap();
/// assert_eq!(records.len(), 1);
/// assert_eq!(records.next().unwrap().partition_key, "key");
/// ```
#[derive(Clone, Debug)]
pub struct Deaggregator {
    strict: bool,
    max_decompressed_bytes: usize,
    dictionaries: Vec<Prepared>,
}

/// A dictionary digested once for decompression: loading one per record would cost more
/// than decompressing it.
#[derive(Clone)]
struct Prepared {
    id: u32,
    dictionary: Arc<zstd::dict::DecoderDictionary<'static>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dictionary({})", self.id)
    }
}

impl Default for Deaggregator {
    fn default() -> Self {
        Deaggregator::new()
    }
}

impl Deaggregator {
    /// A lenient reader (like the KCL) with the default decompression cap.
    pub fn new() -> Self {
        Deaggregator {
            strict: false,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            dictionaries: Vec::new(),
        }
    }

    /// Strict: a record with the KPL magic but a bad MD5 or protobuf is an error, not plain data.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The largest decompressed payload accepted.
    pub fn max_decompressed_bytes(mut self, max: usize) -> Self {
        self.max_decompressed_bytes = max;
        self
    }

    /// Makes a zstd dictionary available for compressed records that name its id (a reader
    /// can hold many: one per dictionary its writers have used).
    pub fn with_dictionary(mut self, dictionary: &Dictionary) -> Self {
        let id = dictionary.id();
        self.dictionaries.retain(|p| p.id != id);
        self.dictionaries.push(Prepared {
            id,
            dictionary: Arc::new(zstd::dict::DecoderDictionary::copy(dictionary.as_bytes())),
        });
        self
    }

    /// The ids of the dictionaries this reader holds.
    pub fn dictionary_ids(&self) -> Vec<u32> {
        self.dictionaries.iter().map(|p| p.id).collect()
    }

    /// The user records in one Kinesis record with `partition_key` and, if it was put with
    /// one, `explicit_hash_key` (GetRecords does not return it: pass `None`), all at once.
    ///
    /// Every user record is built: for records from untrusted writers, prefer
    /// [`user_records`](Self::user_records), which holds only the Kinesis record.
    pub fn deaggregate(
        &self,
        data: &[u8],
        partition_key: &str,
        explicit_hash_key: Option<&str>,
    ) -> Result<Vec<DeaggregatedRecord>, DecodeError> {
        Ok(self
            .user_records(data, partition_key, explicit_hash_key)?
            .collect())
    }

    /// The user records in one Kinesis record, read one at a time: the whole record is
    /// checked first (so every error is returned here, before any user record), then each
    /// user record is built only when the iterator is asked for it.
    pub fn user_records(
        &self,
        data: &[u8],
        partition_key: &str,
        explicit_hash_key: Option<&str>,
    ) -> Result<UserRecords, DecodeError> {
        if let Some(header) = FrameHeader::parse(data) {
            let payload = self.decompress(header, &data[HEADER_LEN..])?;
            let mut records = self.read_payload(payload, partition_key, explicit_hash_key)?;
            records.compressed = true;
            if let Inner::Plain(Some(r)) = &mut records.inner {
                r.compressed = true;
            }
            return Ok(records);
        }
        self.read_payload(
            Bytes::copy_from_slice(data),
            partition_key,
            explicit_hash_key,
        )
    }

    fn decompress(&self, header: FrameHeader, body: &[u8]) -> Result<Bytes, DecodeError> {
        let declared = header.uncompressed_len as usize;
        if declared > self.max_decompressed_bytes {
            return Err(DecodeError::TooLarge {
                declared,
                max: self.max_decompressed_bytes,
            });
        }
        let corrupt = |e: std::io::Error| DecodeError::Corrupt(e.to_string());
        let mut decompressor = if header.dictionary_id == 0 {
            zstd::bulk::Decompressor::new().map_err(corrupt)?
        } else {
            let prepared = self
                .dictionaries
                .iter()
                .find(|p| p.id == header.dictionary_id)
                .ok_or(DecodeError::UnknownDictionary(header.dictionary_id))?;
            zstd::bulk::Decompressor::with_prepared_dictionary(&prepared.dictionary)
                .map_err(corrupt)?
        };
        // Capacity is the declared size, already checked against the cap: zstd fails rather
        // than write past it.
        let out = decompressor.decompress(body, declared).map_err(corrupt)?;
        if out.len() != declared {
            return Err(DecodeError::Corrupt(format!(
                "declared {declared} bytes, decompressed to {}",
                out.len()
            )));
        }
        Ok(Bytes::from(out))
    }

    fn read_payload(
        &self,
        data: Bytes,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
    ) -> Result<UserRecords, DecodeError> {
        if data.len() >= KPL_MAGIC.len() && data[..KPL_MAGIC.len()] == KPL_MAGIC {
            match read_aggregate(&data) {
                Ok(index) => {
                    return Ok(UserRecords {
                        remaining: index.len(),
                        inner: Inner::Aggregate {
                            index: Arc::new(index),
                            pos: 0,
                            next: 0,
                        },
                        compressed: false,
                    });
                }
                Err(e @ (DecodeError::BadDigest | DecodeError::BadProtobuf(_))) if self.strict => {
                    return Err(e);
                }
                Err(DecodeError::BadDigest | DecodeError::BadProtobuf(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let hash_key = routing_hash(partition_key, explicit_hash_key)?;
        Ok(UserRecords {
            remaining: 1,
            inner: Inner::Plain(Some(DeaggregatedRecord {
                partition_key: partition_key.into(),
                explicit_hash_key: explicit_hash_key.map(SharedStr::from),
                hash_key,
                data,
                sub_sequence_number: 0,
                tags: Vec::new(),
                kind: RecordKind::Plain,
                compressed: false,
            })),
            compressed: false,
        })
    }
}

fn read_aggregate(data: &Bytes) -> Result<AggregateIndex, DecodeError> {
    if data.len() < FRAMING_LEN {
        return Err(DecodeError::BadProtobuf(format!(
            "{} bytes is shorter than magic + MD5",
            data.len()
        )));
    }
    let body = data.slice(KPL_MAGIC.len()..data.len() - DIGEST_LEN);
    let digest: [u8; DIGEST_LEN] = Md5::digest(&body).into();
    if digest[..] != data[data.len() - DIGEST_LEN..] {
        return Err(DecodeError::BadDigest);
    }
    AggregateIndex::build(body)
}

/// The user records of one Kinesis record, built one at a time (see
/// [`Deaggregator::user_records`]). Cloning it is cheap and starts over where it stands.
#[derive(Clone)]
pub struct UserRecords {
    inner: Inner,
    remaining: usize,
    compressed: bool,
}

#[derive(Clone)]
enum Inner {
    Plain(Option<DeaggregatedRecord>),
    Aggregate {
        index: Arc<AggregateIndex>,
        /// Where the next top-level field of the protobuf starts.
        pos: usize,
        next: u64,
    },
}

impl fmt::Debug for UserRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecords")
            .field("kind", &self.kind())
            .field("remaining", &self.remaining)
            .field("compressed", &self.compressed)
            .finish()
    }
}

impl UserRecords {
    /// Plain or aggregated.
    pub fn kind(&self) -> RecordKind {
        match self.inner {
            Inner::Plain(_) => RecordKind::Plain,
            Inner::Aggregate { .. } => RecordKind::Aggregated,
        }
    }

    /// Whether the Kinesis record was a compressed frame.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// How many of all its user records (read or not) hash outside `range`: for the KCL's
    /// check, which drops the whole Kinesis record if any does. Builds no user record.
    pub fn count_outside(&self, range: HashRange) -> usize {
        match &self.inner {
            Inner::Plain(Some(r)) => usize::from(!range.contains(r.hash_key)),
            Inner::Plain(None) => 0,
            Inner::Aggregate { index, .. } => index.count_outside(range),
        }
    }

    /// The bytes this iterator keeps alive: the (decompressed) record and one copy of the key
    /// table entries its user records use. Reading records does not change it.
    pub fn held_bytes(&self) -> usize {
        match &self.inner {
            Inner::Plain(r) => r
                .as_ref()
                .map_or(0, |r| r.data.len() + r.partition_key.len()),
            Inner::Aggregate { index, .. } => index.held_bytes(),
        }
    }
}

impl Iterator for UserRecords {
    type Item = DeaggregatedRecord;

    fn next(&mut self) -> Option<DeaggregatedRecord> {
        let record = match &mut self.inner {
            Inner::Plain(r) => r.take(),
            Inner::Aggregate { index, pos, next } => {
                let body = index.body();
                let mut fields = wire::Fields::at(body, *pos);
                let range = loop {
                    match fields.next() {
                        Some(wire::Field::Record(range)) => break Some(range),
                        Some(_) => continue,
                        None => break None,
                    }
                };
                *pos = fields.pos();
                let range = range?;
                let mut tags = Vec::new();
                // Checked when the index was built: neither can fail.
                let r = wire::record(body, range, Tags::Collect(&mut tags)).ok()?;
                let keys = index.keys(&r)?;
                let text = |range: Range<usize>| String::from_utf8_lossy(&body[range]).into_owned();
                let record = DeaggregatedRecord {
                    partition_key: keys.partition_key,
                    explicit_hash_key: keys.explicit_hash_key,
                    hash_key: keys.hash_key,
                    data: body.slice(r.data),
                    sub_sequence_number: *next,
                    tags: tags
                        .into_iter()
                        .map(|(k, v)| (text(k), v.map(text)))
                        .collect(),
                    kind: RecordKind::Aggregated,
                    compressed: self.compressed,
                };
                *next += 1;
                Some(record)
            }
        };
        if record.is_some() {
            self.remaining -= 1;
        }
        record
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for UserRecords {}

fn routing_hash(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
) -> Result<HashKey, DecodeError> {
    match explicit_hash_key {
        Some(ehk) => HashKey::parse_explicit(ehk)
            .map_err(|_| DecodeError::BadExplicitHashKey(crate::hash::truncate_for_error(ehk))),
        None => Ok(HashKey::of_partition_key(partition_key)),
    }
}

/// Indices of the user records whose hash key lies outside `range`: the records for which the
/// KCL would silently drop their whole aggregate if it was read from a shard with that range.
pub fn outside_range(records: &[DeaggregatedRecord], range: HashRange) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| !range.contains(r.hash_key))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserRecord;
    use crate::codec::aggregate::{AggregateBuilder, AggregateLimits};
    use crate::codec::frame::Compressor;

    fn aggregate(records: &[UserRecord]) -> Bytes {
        let mut b = AggregateBuilder::new(AggregateLimits {
            max_bytes: 1 << 20,
            max_count: usize::MAX,
        });
        for r in records {
            b.try_push(r, r.hash_key()).unwrap();
        }
        b.finish().unwrap().data
    }

    #[test]
    fn plain_aggregated_and_compressed_read_back() {
        let records = vec![
            UserRecord::new("a", "one"),
            UserRecord::new("b", "two").with_explicit_hash_key(HashKey(5)),
        ];
        let data = aggregate(&records);
        let d = Deaggregator::new();
        let out = d.deaggregate(&data, "a", None).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].explicit_hash_key.as_deref(), Some("5"));
        assert_eq!(out[1].hash_key, HashKey(5));
        assert_eq!(out[1].sub_sequence_number, 1);
        assert_eq!(out[0].kind, RecordKind::Aggregated);

        let big: Vec<_> = (0..200)
            .map(|i| {
                UserRecord::new(
                    format!("k{}", i % 5),
                    format!("{{\"n\":{i},\"pad\":\"xxxxxxxx\"}}"),
                )
            })
            .collect();
        let framed = Compressor::zstd(1)
            .unwrap()
            .compress_bytes(&aggregate(&big))
            .unwrap();
        let out = d.deaggregate(&framed, "k0", None).unwrap();
        assert_eq!(out.len(), 200);
        assert!(out.iter().all(|r| r.compressed));
        assert_eq!(out[7].data, big[7].data);

        let plain = d.deaggregate(b"hello", "pk", None).unwrap();
        assert_eq!(plain[0].kind, RecordKind::Plain);
        assert_eq!(plain[0].hash_key, HashKey::of_partition_key("pk"));
    }

    #[test]
    fn a_bad_digest_is_plain_data_unless_strict() {
        let mut data = aggregate(&[UserRecord::new("a", "1"), UserRecord::new("b", "2")]).to_vec();
        let last = data.len() - 1;
        data[last] ^= 1;
        let out = Deaggregator::new().deaggregate(&data, "a", None).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, data);
        assert_eq!(
            Deaggregator::new()
                .strict(true)
                .deaggregate(&data, "a", None),
            Err(DecodeError::BadDigest)
        );
    }

    #[test]
    fn bombs_and_unknown_dictionaries_are_refused() {
        let payload = vec![0u8; 1 << 20];
        let framed = Compressor::zstd(1)
            .unwrap()
            .compress_bytes(&payload)
            .unwrap();
        let d = Deaggregator::new().max_decompressed_bytes(1 << 19);
        assert!(matches!(
            d.deaggregate(&framed, "k", None),
            Err(DecodeError::TooLarge { .. })
        ));
        // A frame that lies about its size.
        let mut lying = framed.to_vec();
        lying[11..15].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Deaggregator::new().deaggregate(&lying, "k", None),
            Err(DecodeError::Corrupt(_))
        ));
        let dict = Dictionary::raw(9, b"some dictionary bytes".repeat(10)).unwrap();
        let framed = Compressor::zstd_with_dictionary(1, &dict)
            .unwrap()
            .compress_bytes(&payload)
            .unwrap();
        assert_eq!(
            Deaggregator::new().deaggregate(&framed, "k", None),
            Err(DecodeError::UnknownDictionary(9))
        );
        let out = Deaggregator::new()
            .with_dictionary(&dict)
            .deaggregate(&framed, "k", None)
            .unwrap();
        assert_eq!(out[0].data.len(), 1 << 20);
    }

    #[test]
    fn range_check_reports_records_outside() {
        let records = vec![
            UserRecord::new("a", "1").with_explicit_hash_key(HashKey(10)),
            UserRecord::new("b", "2").with_explicit_hash_key(HashKey(1000)),
        ];
        let out = Deaggregator::new()
            .deaggregate(&aggregate(&records), "a", None)
            .unwrap();
        let range = HashRange {
            start: HashKey(0),
            end: HashKey(100),
        };
        assert_eq!(outside_range(&out, range), vec![1]);
    }
}
