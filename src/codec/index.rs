//! A KPL aggregate checked once and indexed for reading its user records one at a time.
//!
//! ```text
//! protobuf ─► wire::check (all of it, no allocation) ─► which table entries records use
//!   ─► those entries' text (copied once, into one shared string) and hash keys (each once)
//!   ─► AggregateIndex: user records are read from the protobuf as they are asked for
//! ```
//!
//! What the index holds is bounded by the aggregate, never by record count x key length: the
//! protobuf itself, one copy of each table entry a record uses, 24 bytes per such entry and
//! about 1.5 bits per table entry (used or not). A record costs nothing until it is read.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::deaggregate::{DecodeError, SharedStr};
use crate::codec::wire::{self, Field, RecordFields, Tags};
use crate::hash::{HashKey, HashRange};

/// The entries of one key table that records use.
struct Table {
    len: usize,
    /// One bit per entry: used by a record.
    used: Vec<u64>,
    /// Used entries before each word of `used`.
    rank: Vec<u32>,
    /// The used entries, in table order.
    entries: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    start: u32,
    end: u32,
    hash: [u64; 2],
}

impl Entry {
    fn hash_key(&self) -> HashKey {
        HashKey(u128::from(self.hash[0]) << 64 | u128::from(self.hash[1]))
    }
}

fn split(h: HashKey) -> [u64; 2] {
    [(h.0 >> 64) as u64, h.0 as u64]
}

impl Table {
    fn new(len: usize) -> Table {
        Table {
            len,
            used: vec![0; len.div_ceil(64)],
            rank: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn mark(&mut self, i: usize) {
        self.used[i / 64] |= 1 << (i % 64);
    }

    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn finish_marks(&mut self) {
        let mut total = 0u32;
        self.rank = self
            .used
            .iter()
            .map(|w| {
                let before = total;
                total += w.count_ones();
                before
            })
            .collect();
        self.entries.reserve_exact(total as usize);
    }

    /// The entry at table index `i`, if a record uses it.
    fn get(&self, i: u64) -> Option<&Entry> {
        let i = usize::try_from(i).ok().filter(|&i| i < self.len)?;
        if !self.is_used(i) {
            return None;
        }
        let below = self.used[i / 64] & ((1u64 << (i % 64)) - 1);
        self.entries
            .get(self.rank[i / 64] as usize + below.count_ones() as usize)
    }

    fn held_bytes(&self) -> usize {
        self.used.capacity() * 8 + self.rank.capacity() * 4 + self.entries.capacity() * 24
    }
}

/// A checked aggregate, ready to be read record by record.
pub(crate) struct AggregateIndex {
    /// The protobuf (between the magic and the MD5).
    body: Bytes,
    /// The text of every table entry a record uses, each once.
    text: Arc<str>,
    keys: Table,
    explicit_hash_keys: Table,
    records: usize,
}

/// A user record's keys, from the tables.
pub(crate) struct Keys {
    pub(crate) partition_key: SharedStr,
    pub(crate) explicit_hash_key: Option<SharedStr>,
    pub(crate) hash_key: HashKey,
}

fn text_at(body: &[u8], range: Range<usize>) -> Result<&str, DecodeError> {
    std::str::from_utf8(&body[range]).map_err(|e| DecodeError::BadProtobuf(e.to_string()))
}

impl AggregateIndex {
    /// Checks `body` and indexes it; the errors are those a full decode would give, for the
    /// first user record in order that has one.
    pub(crate) fn build(body: Bytes) -> Result<AggregateIndex, DecodeError> {
        let shape = wire::check(&body).map_err(DecodeError::BadProtobuf)?;
        if u32::try_from(body.len()).is_err() {
            return Err(DecodeError::BadProtobuf(format!(
                "an aggregate of {} bytes is over the 4 GiB a reader takes",
                body.len()
            )));
        }
        let mut keys = Table::new(shape.keys);
        let mut ehks = Table::new(shape.explicit_hash_keys);
        // Which entries records use, up to the first record that refers past a table.
        let mut out_of_range = None;
        let mut in_range = 0;
        for range in records(&body) {
            let r = wire::record(&body, range, Tags::Skip).map_err(DecodeError::BadProtobuf)?;
            let past = |table, index, len| DecodeError::IndexOutOfRange {
                record: in_range,
                table,
                index,
                len,
            };
            let pk = r.partition_key_index;
            if pk >= keys.len as u64 {
                out_of_range = Some(past("partition_key_table", pk, keys.len));
                break;
            }
            keys.mark(pk as usize);
            if let Some(ehk) = r.explicit_hash_key_index {
                if ehk >= ehks.len as u64 {
                    out_of_range = Some(past("explicit_hash_key_table", ehk, ehks.len));
                    break;
                }
                ehks.mark(ehk as usize);
            }
            in_range += 1;
        }
        keys.finish_marks();
        ehks.finish_marks();

        // The used entries' text, copied once, and their hash keys, computed once.
        let mut text = String::new();
        let mut bad_ehks = Vec::new();
        let (mut k, mut e) = (0, 0);
        for field in wire::fields(&body) {
            let (is_key, range) = match field {
                Field::Key(range) => (true, range),
                Field::ExplicitHashKey(range) => (false, range),
                Field::Record(_) => continue,
            };
            let (table, i) = if is_key {
                (&mut keys, &mut k)
            } else {
                (&mut ehks, &mut e)
            };
            let index = *i;
            *i += 1;
            if !table.is_used(index) {
                continue;
            }
            let s = text_at(&body, range)?;
            let hash = if is_key {
                HashKey::of_partition_key(s)
            } else {
                HashKey::parse_explicit(s).unwrap_or_else(|_| {
                    bad_ehks.push(index);
                    HashKey(0)
                })
            };
            table.entries.push(Entry {
                start: text.len() as u32,
                end: (text.len() + s.len()) as u32,
                hash: split(hash),
            });
            text.push_str(s);
        }
        let index = AggregateIndex {
            body,
            text: Arc::from(text),
            keys,
            explicit_hash_keys: ehks,
            records: shape.records,
        };
        if !bad_ehks.is_empty() {
            // The first record (before any out-of-range one) that uses a bad explicit hash key.
            for range in records(&index.body).take(in_range) {
                let r = wire::record(&index.body, range, Tags::Skip)
                    .map_err(DecodeError::BadProtobuf)?;
                if let Some(ehk) = r.explicit_hash_key_index
                    && bad_ehks.binary_search(&(ehk as usize)).is_ok()
                {
                    let entry = index.explicit_hash_keys.get(ehk).expect("marked above");
                    let s = &index.text[entry.start as usize..entry.end as usize];
                    return Err(DecodeError::BadExplicitHashKey(
                        crate::hash::truncate_for_error(s),
                    ));
                }
            }
        }
        match out_of_range {
            Some(e) => Err(e),
            None => Ok(index),
        }
    }

    /// The protobuf.
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// How many user records it holds.
    pub(crate) fn len(&self) -> usize {
        self.records
    }

    /// The keys of the record `r` (read from this index's body).
    pub(crate) fn keys(&self, r: &RecordFields) -> Option<Keys> {
        let shared = |e: &Entry| SharedStr::shared(&self.text, e.start as usize..e.end as usize);
        let pk = self.keys.get(r.partition_key_index)?;
        let (explicit_hash_key, hash_key) = match r.explicit_hash_key_index {
            None => (None, pk.hash_key()),
            Some(i) => {
                let e = self.explicit_hash_keys.get(i)?;
                (Some(shared(e)), e.hash_key())
            }
        };
        Some(Keys {
            partition_key: shared(pk),
            explicit_hash_key,
            hash_key,
        })
    }

    /// The hash key that routes record `r`, without building its keys.
    fn hash_key(&self, r: &RecordFields) -> Option<HashKey> {
        match r.explicit_hash_key_index {
            None => self.keys.get(r.partition_key_index).map(Entry::hash_key),
            Some(i) => self.explicit_hash_keys.get(i).map(Entry::hash_key),
        }
    }

    /// How many user records hash outside `range` (a walk over the records, no allocation).
    pub(crate) fn count_outside(&self, range: HashRange) -> usize {
        records(&self.body)
            .filter_map(|r| wire::record(&self.body, r, Tags::Skip).ok())
            .filter(|r| self.hash_key(r).is_none_or(|h| !range.contains(h)))
            .count()
    }

    /// Bytes this index keeps alive.
    pub(crate) fn held_bytes(&self) -> usize {
        self.body.len()
            + self.text.len()
            + self.keys.held_bytes()
            + self.explicit_hash_keys.held_bytes()
    }
}

/// The `Record` messages of a checked body, in order.
fn records(body: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    wire::fields(body).filter_map(|f| match f {
        Field::Record(range) => Some(range),
        _ => None,
    })
}
