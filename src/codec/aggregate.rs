//! The KPL aggregated record: many user records in one Kinesis record.
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5(protobuf), 16 bytes
//! ```
//! The protobuf is written incrementally (fields in number order, exactly as prost writes the
//! generated [`AggregatedRecord`](crate::codec::proto::AggregatedRecord)): the partition-key
//! table, the explicit-hash-key table (both deduplicated), then the records. So the builder
//! knows the exact encoded size before it accepts a record: a limit of 51 200 bytes gives
//! aggregates of at most 51 200 bytes that are as full as the next record allows.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::digest;
use crate::hash::HashKey;
use crate::record::UserRecord;

/// The first four bytes of every KPL aggregate.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Bytes of the MD5 trailer.
pub const DIGEST_LEN: usize = 16;
/// Magic + trailer: what an aggregate costs beyond its protobuf.
pub const FRAMING_LEN: usize = KPL_MAGIC.len() + DIGEST_LEN;

// Protobuf keys: (field number << 3) | wire type.
const KEY_PK_TABLE: u8 = 1 << 3 | 2;
const KEY_EHK_TABLE: u8 = 2 << 3 | 2;
const KEY_RECORDS: u8 = 3 << 3 | 2;
const KEY_PK_INDEX: u8 = 1 << 3;
const KEY_EHK_INDEX: u8 = 2 << 3;
const KEY_DATA: u8 = 3 << 3 | 2;
const KEY_TAGS: u8 = 4 << 3 | 2;
const KEY_TAG_KEY: u8 = 1 << 3 | 2;
const KEY_TAG_VALUE: u8 = 2 << 3 | 2;

/// Limits of one aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregateLimits {
    /// Largest encoded aggregate: magic + protobuf + MD5.
    pub max_bytes: usize,
    /// Most user records in one aggregate.
    pub max_count: usize,
}

/// The aggregate has no room for the record; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the aggregate is full")]
pub struct Full;

/// A finished Kinesis record: one PutRecords entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    /// Partition key of the Kinesis record: the first user record's.
    pub partition_key: String,
    /// Decimal explicit hash key: for an aggregate, the first user record's hash key (so it
    /// routes to the shard that owns its records); for a lone record, its own, if any.
    pub explicit_hash_key: Option<String>,
    /// A KPL aggregate, or the lone record's data as is.
    pub data: Bytes,
    /// User records inside.
    pub user_records: usize,
}

/// Hashes a u128 that is already uniformly distributed (an MD5 or a hash key): no re-hashing.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64 ^ (i >> 64) as u64;
    }
}

type U128Map<V> = HashMap<u128, V, BuildHasherDefault<PassThrough>>;

/// Where a record's partition key is in the key table, as far as the caller knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySlot {
    /// Look it up (by its MD5, then its bytes).
    Look,
    /// At this index.
    Known(u32),
    /// Not there yet (a duplicate entry, if it is, costs only its bytes).
    New,
}

struct First {
    partition_key: String,
    explicit_hash_key: Option<HashKey>,
    hash_key: HashKey,
    data: Bytes,
}

/// One Kinesis record under construction, always knowing its exact encoded size.
pub struct AggregateBuilder {
    limits: AggregateLimits,
    /// Encoded partition-key table entries.
    keys: Vec<u8>,
    /// (start, len) of each key's bytes inside `keys`, by index.
    key_spans: Vec<(usize, usize)>,
    /// MD5 of a partition key -> its index.
    key_index: U128Map<u32>,
    /// Encoded explicit-hash-key table entries.
    ehks: Vec<u8>,
    ehk_index: U128Map<u32>,
    ehk_count: u32,
    /// Encoded `records` entries.
    records: Vec<u8>,
    count: usize,
    first: Option<First>,
    /// Some record carries tags: the aggregate form is kept even for one record, since raw
    /// data cannot carry them.
    tagged: bool,
}

impl AggregateBuilder {
    /// An empty aggregate.
    pub fn new(limits: AggregateLimits) -> Self {
        AggregateBuilder {
            limits,
            keys: Vec::new(),
            key_spans: Vec::new(),
            key_index: U128Map::default(),
            ehks: Vec::new(),
            ehk_index: U128Map::default(),
            ehk_count: 0,
            records: Vec::new(),
            count: 0,
            first: None,
            tagged: false,
        }
    }

    /// User records in the aggregate.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Exact size of the data [`finish`](Self::finish) would return now: the lone record's data
    /// for one untagged record, the encoded aggregate otherwise.
    pub fn data_len(&self) -> usize {
        match (self.count, &self.first) {
            (0, _) => 0,
            (1, Some(first)) if !self.tagged => first.data.len(),
            _ => self.aggregate_len(),
        }
    }

    /// Whether [`finish`](Self::finish) would write an aggregate (not a lone record's data).
    pub fn is_aggregate(&self) -> bool {
        self.count > 1 || (self.count == 1 && self.tagged)
    }

    fn aggregate_len(&self) -> usize {
        FRAMING_LEN + self.keys.len() + self.ehks.len() + self.records.len()
    }

    /// Adds `record` (whose routing hash is `hash_key`) if the aggregate stays within its limits;
    /// otherwise changes nothing and returns [`Full`]. An empty aggregate accepts any record.
    pub fn try_push(&mut self, record: &UserRecord, hash_key: HashKey) -> Result<(), Full> {
        self.try_push_tagged(record, hash_key, &[])
    }

    /// [`try_push`](Self::try_push) with KPL `Tag`s (key, optional value) on the user record.
    pub fn try_push_tagged(
        &mut self,
        record: &UserRecord,
        hash_key: HashKey,
        tags: &[(&str, Option<&str>)],
    ) -> Result<(), Full> {
        self.push_inner(record, hash_key, tags, KeySlot::Look)
            .map(|_| ())
    }

    /// [`try_push_tagged`](Self::try_push_tagged) for a caller that remembers where each
    /// partition key went: `KeySlot::Known` must be the index this builder returned for the
    /// record's exact partition key since its last `finish`; with `KeySlot::New` a new entry
    /// is written without looking the key up. Returns the key's index.
    pub(crate) fn push_inner(
        &mut self,
        record: &UserRecord,
        hash_key: HashKey,
        tags: &[(&str, Option<&str>)],
        slot: KeySlot,
    ) -> Result<u32, Full> {
        if self.count >= self.limits.max_count && self.count > 0 {
            return Err(Full);
        }
        let pk = record.partition_key.as_str();
        // The key table is indexed by the key's MD5: free when the record is routed by it.
        let pk_hash = || match record.explicit_hash_key {
            None => hash_key.0,
            Some(_) => HashKey::of_partition_key(pk).0,
        };
        let existing_key = match slot {
            KeySlot::Known(index) => {
                debug_assert_eq!(
                    self.key_bytes(index),
                    pk.as_bytes(),
                    "a known key index holds the record's partition key"
                );
                Some(index)
            }
            KeySlot::New => None,
            KeySlot::Look => self
                .key_index
                .get(&pk_hash())
                .copied()
                .filter(|&i| self.key_bytes(i) == pk.as_bytes()),
        };
        let key_index = existing_key.unwrap_or(self.key_spans.len() as u32);
        let new_key_len = match existing_key {
            Some(_) => 0,
            None => field_len(pk.len()),
        };
        let mut ehk_text = String::new();
        let (ehk_index, new_ehk_len) = match record.explicit_hash_key {
            None => (None, 0),
            Some(ehk) => match self.ehk_index.get(&ehk.0) {
                Some(&i) => (Some(i), 0),
                None => {
                    ehk_text = ehk.to_string();
                    (Some(self.ehk_count), field_len(ehk_text.len()))
                }
            },
        };
        let body_len = record_body_len(key_index, ehk_index, record.data.len(), tags);
        let added = new_key_len + new_ehk_len + field_len(body_len);
        if self.count > 0 && self.aggregate_len() + added > self.limits.max_bytes {
            return Err(Full);
        }

        // Commit.
        if existing_key.is_none() {
            self.keys.push(KEY_PK_TABLE);
            put_varint(&mut self.keys, pk.len() as u64);
            self.key_spans.push((self.keys.len(), pk.len()));
            self.keys.extend_from_slice(pk.as_bytes());
            self.key_index.insert(pk_hash(), key_index);
        }
        if new_ehk_len > 0 {
            let ehk = record.explicit_hash_key.expect("new ehk entry");
            self.ehks.push(KEY_EHK_TABLE);
            put_varint(&mut self.ehks, ehk_text.len() as u64);
            self.ehks.extend_from_slice(ehk_text.as_bytes());
            self.ehk_index.insert(ehk.0, self.ehk_count);
            self.ehk_count += 1;
        }
        let r = &mut self.records;
        r.reserve(field_len(body_len));
        r.push(KEY_RECORDS);
        put_varint(r, body_len as u64);
        r.push(KEY_PK_INDEX);
        put_varint(r, u64::from(key_index));
        if let Some(i) = ehk_index {
            r.push(KEY_EHK_INDEX);
            put_varint(r, u64::from(i));
        }
        r.push(KEY_DATA);
        put_varint(r, record.data.len() as u64);
        r.extend_from_slice(&record.data);
        for (key, value) in tags {
            r.push(KEY_TAGS);
            put_varint(r, tag_len(key, *value) as u64);
            r.push(KEY_TAG_KEY);
            put_varint(r, key.len() as u64);
            r.extend_from_slice(key.as_bytes());
            if let Some(v) = value {
                r.push(KEY_TAG_VALUE);
                put_varint(r, v.len() as u64);
                r.extend_from_slice(v.as_bytes());
            }
        }
        if self.count == 0 {
            self.first = Some(First {
                partition_key: pk.to_owned(),
                explicit_hash_key: record.explicit_hash_key,
                hash_key,
                data: record.data.clone(),
            });
        }
        self.count += 1;
        self.tagged |= !tags.is_empty();
        Ok(key_index)
    }

    /// The bytes of partition key `index` in the key table.
    fn key_bytes(&self, index: u32) -> &[u8] {
        let (start, len) = self.key_spans[index as usize];
        &self.keys[start..start + len]
    }

    /// Finishes the Kinesis record and empties the builder (keeping its allocations).
    /// One record is written raw, as the KPL does (unless it carries tags); none gives `None`.
    pub fn finish(&mut self) -> Option<KinesisRecord> {
        self.finish_into(BytesMut::new())
    }

    /// [`finish`](Self::finish), writing an aggregate into `buf` (cleared first): a buffer of
    /// an earlier aggregate, reused, saves allocating and freeing tens of kilobytes each time.
    pub fn finish_into(&mut self, out: BytesMut) -> Option<KinesisRecord> {
        let (record, unsealed) = self.finish_unsealed(out)?;
        Some(match unsealed {
            None => record,
            Some(unsealed) => KinesisRecord {
                data: unsealed.seal(),
                ..record
            },
        })
    }

    /// [`finish_into`](Self::finish_into), but an aggregate comes back without its MD5
    /// trailer: its `data` is empty and the [`Unsealed`] holds the bytes, to be sealed later,
    /// several at a time ([`Unsealed::seal_many`]). A lone record comes back as with `finish`.
    pub fn finish_unsealed(
        &mut self,
        mut out: BytesMut,
    ) -> Option<(KinesisRecord, Option<Unsealed>)> {
        let first = self.first.take()?;
        let result = if self.count == 1 && !self.tagged {
            let record = KinesisRecord {
                partition_key: first.partition_key,
                explicit_hash_key: first.explicit_hash_key.map(|h| h.to_string()),
                data: first.data,
                user_records: 1,
            };
            (record, None)
        } else {
            out.clear();
            out.reserve(self.aggregate_len());
            out.put_slice(&KPL_MAGIC);
            out.put_slice(&self.keys);
            out.put_slice(&self.ehks);
            out.put_slice(&self.records);
            let record = KinesisRecord {
                partition_key: first.partition_key,
                explicit_hash_key: Some(first.hash_key.to_string()),
                data: Bytes::new(),
                user_records: self.count,
            };
            (record, Some(Unsealed { buf: out }))
        };
        self.keys.clear();
        self.key_spans.clear();
        self.key_index.clear();
        self.ehks.clear();
        self.ehk_index.clear();
        self.ehk_count = 0;
        self.records.clear();
        self.count = 0;
        self.tagged = false;
        Some(result)
    }
}

/// A finished aggregate still without its MD5 trailer: magic and protobuf.
#[derive(Debug)]
pub struct Unsealed {
    buf: BytesMut,
}

impl Unsealed {
    /// Length of the aggregate once sealed (trailer included).
    pub fn sealed_len(&self) -> usize {
        self.buf.len() + DIGEST_LEN
    }

    /// The bytes the trailer is the MD5 of.
    fn protobuf(&self) -> &[u8] {
        &self.buf[KPL_MAGIC.len()..]
    }

    fn seal_with(mut self, digest: [u8; DIGEST_LEN]) -> Bytes {
        self.buf.put_slice(&digest);
        self.buf.freeze()
    }

    /// Appends the trailer: the finished aggregate.
    pub fn seal(self) -> Bytes {
        let digest = digest::md5(self.protobuf());
        self.seal_with(digest)
    }

    /// Seals every aggregate `take` finds among `items` (taking it out), handing the finished
    /// bytes to `put`: the MD5s run [`digest::LANES`] side by side
    /// ([`digest::md5_each`]), which costs a fourth to a fifth of sealing them one by one.
    pub fn seal_many<T>(
        items: &mut [T],
        mut take: impl FnMut(&mut T) -> Option<Unsealed>,
        mut put: impl FnMut(&mut T, Bytes),
    ) {
        let unsealed: Vec<(usize, Unsealed)> = items
            .iter_mut()
            .enumerate()
            .filter_map(|(i, item)| take(item).map(|u| (i, u)))
            .collect();
        let messages: Vec<&[u8]> = unsealed.iter().map(|(_, u)| u.protobuf()).collect();
        let mut digests = vec![[0u8; DIGEST_LEN]; messages.len()];
        digest::md5_each(&messages, |i, d| digests[i] = d);
        for ((i, unsealed), d) in unsealed.into_iter().zip(digests) {
            put(&mut items[i], unsealed.seal_with(d));
        }
    }
}

/// Exact data size of `record` alone in an aggregate with `tags`: what a lone tagged record
/// costs, to check it against the stream's record limit before it is accepted.
pub fn lone_aggregate_len(record: &UserRecord, tags: &[(&str, Option<&str>)]) -> usize {
    let ehk = record
        .explicit_hash_key
        .map_or(0, |h| field_len(h.to_string().len()));
    let ehk_index = record.explicit_hash_key.map(|_| 0);
    FRAMING_LEN
        + field_len(record.partition_key.len())
        + ehk
        + field_len(record_body_len(0, ehk_index, record.data.len(), tags))
}

fn record_body_len(
    key_index: u32,
    ehk_index: Option<u32>,
    data_len: usize,
    tags: &[(&str, Option<&str>)],
) -> usize {
    1 + varint_len(u64::from(key_index))
        + ehk_index.map_or(0, |i| 1 + varint_len(u64::from(i)))
        + field_len(data_len)
        + tags
            .iter()
            .map(|(k, v)| field_len(tag_len(k, *v)))
            .sum::<usize>()
}

fn tag_len(key: &str, value: Option<&str>) -> usize {
    field_len(key.len()) + value.map_or(0, |v| field_len(v.len()))
}

/// Bytes of a length-delimited field of `len` bytes: key + length + payload.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Bytes of `v` as a protobuf varint.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::proto;
    use md5::{Digest, Md5};
    use prost::Message;

    #[test]
    fn sealed_many_at_once_is_sealed_one_by_one() {
        // 11 aggregates of different sizes, some lone records (no trailer) among them: two
        // full groups of lanes and a remainder.
        let build = |n: usize| {
            let mut b = AggregateBuilder::new(limits(1 << 20));
            for i in 0..n {
                let r = UserRecord::new(format!("k{}", i % 5), vec![i as u8; 30 + 7 * i]);
                b.try_push(&r, r.hash_key()).unwrap();
            }
            b
        };
        let sizes = [3, 1, 40, 2, 9, 1, 17, 64, 5, 6, 2];
        let expected: Vec<Bytes> = sizes
            .iter()
            .map(|&n| build(n).finish().unwrap().data)
            .collect();
        let mut items: Vec<(KinesisRecord, Option<Unsealed>)> = sizes
            .iter()
            .map(|&n| build(n).finish_unsealed(BytesMut::new()).unwrap())
            .collect();
        for (item, &n) in items.iter().zip(&sizes) {
            assert_eq!(
                item.1.is_some(),
                n > 1,
                "only aggregates wait for a trailer"
            );
            if let Some(u) = &item.1 {
                assert!(item.0.data.is_empty());
                let sealed_len = build(n).finish().unwrap().data.len();
                assert_eq!(u.sealed_len(), sealed_len);
            }
        }
        Unsealed::seal_many(&mut items, |(_, u)| u.take(), |(r, _), data| r.data = data);
        let got: Vec<Bytes> = items.into_iter().map(|(r, _)| r.data).collect();
        assert_eq!(got, expected);
    }

    fn limits(max_bytes: usize) -> AggregateLimits {
        AggregateLimits {
            max_bytes,
            max_count: usize::MAX,
        }
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), n);
        }
    }

    #[test]
    fn encoding_matches_prost_byte_for_byte() {
        let mut b = AggregateBuilder::new(limits(1 << 20));
        let records = [
            UserRecord::new("a", "one"),
            UserRecord::new("b", "two").with_explicit_hash_key(HashKey(42)),
            UserRecord::new("a", ""),
            UserRecord::new("c", "four").with_explicit_hash_key(HashKey(42)),
        ];
        for r in &records {
            b.try_push(r, r.hash_key()).unwrap();
        }
        let expected_len = b.data_len();
        let out = b.finish().unwrap();
        assert_eq!(out.data.len(), expected_len);
        let expected = proto::AggregatedRecord {
            partition_key_table: vec!["a".into(), "b".into(), "c".into()],
            explicit_hash_key_table: vec!["42".into()],
            records: vec![
                proto::Record {
                    partition_key_index: 0,
                    explicit_hash_key_index: None,
                    data: Bytes::from_static(b"one"),
                    tags: vec![],
                },
                proto::Record {
                    partition_key_index: 1,
                    explicit_hash_key_index: Some(0),
                    data: Bytes::from_static(b"two"),
                    tags: vec![],
                },
                proto::Record {
                    partition_key_index: 0,
                    explicit_hash_key_index: None,
                    data: Bytes::new(),
                    tags: vec![],
                },
                proto::Record {
                    partition_key_index: 2,
                    explicit_hash_key_index: Some(0),
                    data: Bytes::from_static(b"four"),
                    tags: vec![],
                },
            ],
        }
        .encode_to_vec();
        assert_eq!(&out.data[..4], &KPL_MAGIC);
        assert_eq!(&out.data[4..out.data.len() - 16], &expected[..]);
        let digest: [u8; 16] = Md5::digest(&expected).into();
        assert_eq!(&out.data[out.data.len() - 16..], &digest);
        assert_eq!(out.partition_key, "a");
        assert_eq!(
            out.explicit_hash_key,
            Some(HashKey::of_partition_key("a").to_string())
        );
        assert_eq!(out.user_records, 4);
    }

    #[test]
    fn a_lone_record_is_written_raw() {
        let mut b = AggregateBuilder::new(limits(100));
        let r = UserRecord::new("k", vec![1u8; 500]).with_explicit_hash_key(HashKey(7));
        b.try_push(&r, r.hash_key()).unwrap();
        assert_eq!(b.data_len(), 500);
        let out = b.finish().unwrap();
        assert_eq!(out.data, r.data);
        assert_eq!(out.explicit_hash_key.as_deref(), Some("7"));
        assert!(b.finish().is_none() && b.is_empty());
    }

    #[test]
    fn a_lone_tagged_record_stays_an_aggregate_of_the_predicted_size() {
        for r in [
            UserRecord::new("key", vec![7u8; 300]),
            UserRecord::new("k", vec![1u8; 70_000]).with_explicit_hash_key(HashKey(u128::MAX)),
        ] {
            let tags = [("kpl.id", Some("00000000000000010"))];
            let mut b = AggregateBuilder::new(limits(100));
            b.try_push_tagged(&r, r.hash_key(), &tags).unwrap();
            assert_eq!(b.data_len(), lone_aggregate_len(&r, &tags));
            let out = b.finish().unwrap();
            assert_eq!(out.data.len(), lone_aggregate_len(&r, &tags));
            assert_eq!(&out.data[..4], &KPL_MAGIC);
            let decoded = proto::AggregatedRecord::decode(&out.data[4..out.data.len() - 16])
                .expect("a valid aggregate");
            assert_eq!(decoded.records.len(), 1);
            assert_eq!(decoded.records[0].tags[0].key, "kpl.id");
            assert_eq!(decoded.records[0].data, r.data);
            // The next aggregate is untagged again: a lone record goes raw.
            let plain = UserRecord::new("key", "x");
            b.try_push(&plain, plain.hash_key()).unwrap();
            assert_eq!(b.finish().unwrap().data, plain.data);
        }
    }

    #[test]
    fn aggregates_fill_exactly_to_the_limit() {
        for max in [200usize, 1000, 51_200] {
            let mut b = AggregateBuilder::new(limits(max));
            let mut i = 0;
            loop {
                let r = UserRecord::new(format!("k{}", i % 7), vec![b'x'; 10 + i % 13]);
                let before = b.data_len();
                if b.try_push(&r, r.hash_key()).is_err() {
                    assert_eq!(b.data_len(), before, "a refused push changes nothing");
                    break;
                }
                i += 1;
            }
            let len = b.data_len();
            assert!(len <= max);
            let out = b.finish().unwrap();
            assert_eq!(out.data.len(), len);
        }
    }

    #[test]
    fn count_limit_holds() {
        let mut b = AggregateBuilder::new(AggregateLimits {
            max_bytes: 1 << 20,
            max_count: 3,
        });
        for i in 0..3 {
            let r = UserRecord::new("k", vec![i]);
            b.try_push(&r, r.hash_key()).unwrap();
        }
        let r = UserRecord::new("k", "x");
        assert_eq!(b.try_push(&r, r.hash_key()), Err(Full));
    }
}
