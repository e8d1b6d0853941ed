//! A proto2 wire walker for exactly the three messages of a KPL aggregate (`AggregatedRecord`,
//! `Record`, `Tag`, see `proto/messages.proto`), so that a reader can check an aggregate and
//! then walk its user records one at a time, holding nothing per record.
//!
//! It accepts and rejects exactly what prost's generated decoder does: the same varint rules
//! (at most 10 bytes, no overflow), keys (`u32`, wire types 0 to 5, tag not 0), wire types of
//! known fields, lengths within their message, UTF-8 in string fields (every occurrence, also
//! one a later occurrence replaces), skipped unknown fields and groups, and prost's recursion
//! limit of 100. Like prost, it does not require proto2's required fields: a missing index is
//! 0, missing data is empty. For a repeated scalar field the last occurrence wins.

use std::ops::Range;

/// Why bytes are not a valid aggregate protobuf.
pub(crate) type WireError = String;
type WireResult<T> = Result<T, WireError>;

/// prost's recursion limit: a message (or group) nested this deep is an error.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// A position in one message's bytes.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn within(buf: &'a [u8], range: Range<usize>) -> Cursor<'a> {
        Cursor {
            buf,
            pos: range.start,
            end: range.end,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn varint(&mut self) -> WireResult<u64> {
        let mut value = 0u64;
        for count in 0..10 {
            if self.pos >= self.end {
                return Err("truncated varint".into());
            }
            let byte = self.buf[self.pos];
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (count * 7);
            if byte < 0x80 {
                if count == 9 && byte >= 0x02 {
                    return Err("varint overflows 64 bits".into());
                }
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn key(&mut self) -> WireResult<(u32, u8)> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| format!("invalid key value: {key}"))?;
        let wire_type = (key & 7) as u8;
        if wire_type > FIXED32 {
            return Err(format!("invalid wire type value: {wire_type}"));
        }
        if key >> 3 == 0 {
            return Err("invalid tag value: 0".into());
        }
        Ok((key >> 3, wire_type))
    }

    fn advance(&mut self, n: usize) -> WireResult<()> {
        if n > self.end - self.pos {
            return Err("buffer underflow".into());
        }
        self.pos += n;
        Ok(())
    }

    /// A length-delimited field's bytes (as a range of the whole buffer).
    fn delimited(&mut self) -> WireResult<Range<usize>> {
        let len = self.varint()?;
        if len > (self.end - self.pos) as u64 {
            return Err(format!(
                "a field of {len} bytes runs past the end of its message"
            ));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(start..self.pos)
    }

    fn string(&mut self, field: &str) -> WireResult<Range<usize>> {
        let range = self.delimited()?;
        std::str::from_utf8(&self.buf[range.clone()])
            .map_err(|_| format!("{field}: invalid string value: data is not UTF-8 encoded"))?;
        Ok(range)
    }

    /// Skips an unknown field, as prost's `skip_field` does (`depth` is its recursion budget).
    fn skip(&mut self, wire_type: u8, tag: u32, depth: u32) -> WireResult<()> {
        if depth == 0 {
            return Err("recursion limit reached".into());
        }
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.advance(8),
            LEN => self.delimited().map(drop),
            START_GROUP => loop {
                let (inner, inner_type) = self.key()?;
                if inner_type == END_GROUP {
                    if inner != tag {
                        return Err("unexpected end group tag".into());
                    }
                    return Ok(());
                }
                self.skip(inner_type, inner, depth - 1)?;
            },
            END_GROUP => Err("unexpected end group tag".into()),
            _ => self.advance(4),
        }
    }
}

fn expect(field: &str, wire_type: u8, expected: u8) -> WireResult<()> {
    if wire_type != expected {
        return Err(format!(
            "{field}: wire type {wire_type}, expected {expected}"
        ));
    }
    Ok(())
}

/// One top-level field of an aggregate, as byte ranges of the aggregate's protobuf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// An entry of `partition_key_table` (checked UTF-8).
    Key(Range<usize>),
    /// An entry of `explicit_hash_key_table` (checked UTF-8).
    ExplicitHashKey(Range<usize>),
    /// One `Record` message.
    Record(Range<usize>),
}

/// Reads the top-level field at `*pos` of `body`, skipping unknown ones; `Ok(None)` at the end.
fn field(body: &[u8], pos: &mut usize) -> WireResult<Option<Field>> {
    let mut c = Cursor::within(body, *pos..body.len());
    let found = loop {
        if c.at_end() {
            break None;
        }
        let (tag, wire_type) = c.key()?;
        match tag {
            1 => {
                expect("AggregatedRecord.partition_key_table", wire_type, LEN)?;
                break Some(Field::Key(
                    c.string("AggregatedRecord.partition_key_table")?,
                ));
            }
            2 => {
                expect("AggregatedRecord.explicit_hash_key_table", wire_type, LEN)?;
                break Some(Field::ExplicitHashKey(
                    c.string("AggregatedRecord.explicit_hash_key_table")?,
                ));
            }
            3 => {
                expect("AggregatedRecord.records", wire_type, LEN)?;
                break Some(Field::Record(c.delimited()?));
            }
            _ => c.skip(wire_type, tag, RECURSION_LIMIT)?,
        }
    };
    *pos = c.pos;
    Ok(found)
}

/// The top-level fields of an aggregate that [`check`] accepted, in order.
pub(crate) fn fields(body: &[u8]) -> Fields<'_> {
    Fields { body, pos: 0 }
}

/// Iterator of [`fields`]; resumable from a saved position.
pub(crate) struct Fields<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    /// Resumes at `pos` (a value of [`Fields::pos`]).
    pub(crate) fn at(body: &'a [u8], pos: usize) -> Fields<'a> {
        Fields { body, pos }
    }

    /// Where the next field starts.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}

impl Iterator for Fields<'_> {
    type Item = Field;

    fn next(&mut self) -> Option<Field> {
        // The body was checked: an error here cannot happen, and would end the walk.
        field(self.body, &mut self.pos).ok().flatten()
    }
}

/// What a user record's tags are read for.
pub(crate) enum Tags<'v> {
    /// Checked (the first walk over an aggregate).
    Check,
    /// Jumped over (walks that need only the indices).
    Skip,
    /// Checked and collected as (key, value) ranges.
    Collect(&'v mut Vec<(Range<usize>, Option<Range<usize>>)>),
}

/// The fields of one `Record` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordFields {
    pub(crate) partition_key_index: u64,
    pub(crate) explicit_hash_key_index: Option<u64>,
    pub(crate) data: Range<usize>,
}

/// Reads the `Record` message at `range` of `body`.
pub(crate) fn record(
    body: &[u8],
    range: Range<usize>,
    mut tags: Tags<'_>,
) -> WireResult<RecordFields> {
    // Top-level fields have prost's full budget; a record's fields one less, a tag's two less.
    let depth = RECURSION_LIMIT - 1;
    let mut c = Cursor::within(body, range.clone());
    let mut out = RecordFields {
        partition_key_index: 0,
        explicit_hash_key_index: None,
        data: range.start..range.start,
    };
    while !c.at_end() {
        let (tag, wire_type) = c.key()?;
        match tag {
            1 => {
                expect("Record.partition_key_index", wire_type, VARINT)?;
                out.partition_key_index = c.varint()?;
            }
            2 => {
                expect("Record.explicit_hash_key_index", wire_type, VARINT)?;
                out.explicit_hash_key_index = Some(c.varint()?);
            }
            3 => {
                expect("Record.data", wire_type, LEN)?;
                out.data = c.delimited()?;
            }
            4 => {
                expect("Record.tags", wire_type, LEN)?;
                let tag_range = c.delimited()?;
                match &mut tags {
                    Tags::Skip => {}
                    Tags::Check => {
                        tag_fields(body, tag_range, depth - 1)?;
                    }
                    Tags::Collect(into) => into.push(tag_fields(body, tag_range, depth - 1)?),
                }
            }
            _ => c.skip(wire_type, tag, depth)?,
        }
    }
    Ok(out)
}

fn tag_fields(
    body: &[u8],
    range: Range<usize>,
    depth: u32,
) -> WireResult<(Range<usize>, Option<Range<usize>>)> {
    let mut c = Cursor::within(body, range.clone());
    let (mut key, mut value) = (range.start..range.start, None);
    while !c.at_end() {
        let (tag, wire_type) = c.key()?;
        match tag {
            1 => {
                expect("Tag.key", wire_type, LEN)?;
                key = c.string("Tag.key")?;
            }
            2 => {
                expect("Tag.value", wire_type, LEN)?;
                value = Some(c.string("Tag.value")?);
            }
            _ => c.skip(wire_type, tag, depth)?,
        }
    }
    Ok((key, value))
}

/// How many entries and records an aggregate has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) keys: usize,
    pub(crate) explicit_hash_keys: usize,
    pub(crate) records: usize,
}

/// Checks a whole aggregate protobuf (everything between the magic and the MD5) without
/// allocating, and counts its table entries and records.
pub(crate) fn check(body: &[u8]) -> WireResult<Shape> {
    let mut shape = Shape::default();
    let mut pos = 0;
    while let Some(f) = field(body, &mut pos)? {
        match f {
            Field::Key(_) => shape.keys += 1,
            Field::ExplicitHashKey(_) => shape.explicit_hash_keys += 1,
            Field::Record(range) => {
                record(body, range, Tags::Check)
                    .map_err(|e| format!("record {}: {e}", shape.records))?;
                shape.records += 1;
            }
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::proto::{AggregatedRecord, Record, Tag};
    use prost::Message;

    fn agrees_with_prost(body: &[u8]) {
        let ours = check(body);
        let theirs = AggregatedRecord::decode(body);
        assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "{body:02x?}: ours {ours:?}, prost {theirs:?}"
        );
        if let (Ok(shape), Ok(agg)) = (ours, theirs) {
            assert_eq!(shape.keys, agg.partition_key_table.len());
            assert_eq!(shape.explicit_hash_keys, agg.explicit_hash_key_table.len());
            assert_eq!(shape.records, agg.records.len());
            let mut i = 0;
            for f in fields(body) {
                if let Field::Record(range) = f {
                    let mut tags = Vec::new();
                    let r = record(body, range, Tags::Collect(&mut tags)).unwrap();
                    let p = &agg.records[i];
                    assert_eq!(r.partition_key_index, p.partition_key_index);
                    assert_eq!(r.explicit_hash_key_index, p.explicit_hash_key_index);
                    assert_eq!(&body[r.data], &p.data[..]);
                    let tags: Vec<(&[u8], Option<&[u8]>)> = tags
                        .into_iter()
                        .map(|(k, v)| (&body[k], v.map(|v| &body[v])))
                        .collect();
                    let expected: Vec<(&[u8], Option<&[u8]>)> = p
                        .tags
                        .iter()
                        .map(|t| (t.key.as_bytes(), t.value.as_deref().map(str::as_bytes)))
                        .collect();
                    assert_eq!(tags, expected);
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn valid_aggregates_read_as_prost_reads_them() {
        let agg = AggregatedRecord {
            partition_key_table: vec!["a".into(), "bé".into()],
            explicit_hash_key_table: vec!["5".into()],
            records: vec![
                Record {
                    partition_key_index: 1,
                    explicit_hash_key_index: Some(0),
                    data: "x".into(),
                    tags: vec![Tag {
                        key: "kpl.id".into(),
                        value: Some("v".into()),
                    }],
                },
                Record {
                    partition_key_index: 0,
                    explicit_hash_key_index: None,
                    data: vec![0u8; 300].into(),
                    tags: vec![],
                },
            ],
        };
        agrees_with_prost(&agg.encode_to_vec());
        agrees_with_prost(&[]);
    }

    #[test]
    fn edge_cases_are_accepted_or_refused_as_prost_does() {
        let cases: &[&[u8]] = &[
            // Repeated scalar fields: last wins; missing required fields default.
            &[0x1a, 0x06, 0x08, 0x01, 0x08, 0x00, 0x10, 0x03],
            &[0x1a, 0x00],
            // Wrong wire type for a known field.
            &[0x0a ^ 0x02, 0x00],
            &[0x1a, 0x02, 0x0a, 0x00],
            // Unknown fields of every wire type, groups, nested groups.
            &[0x20, 0x05, 0x29, 1, 2, 3, 4, 5, 6, 7, 8, 0x35, 1, 2, 3, 4],
            &[0x23, 0x08, 0x01, 0x24],
            &[0x23, 0x2b, 0x2c, 0x24],
            &[0x23, 0x2c],
            &[0x24],
            &[0x23],
            // Keys: tag 0, wire types 6 and 7, above u32.
            &[0x00, 0x00],
            &[0x0e],
            &[0x0f],
            &[0x80, 0x80, 0x80, 0x80, 0x10, 0x00],
            // Varints: 10 bytes, overflow, 11 bytes, truncated.
            &[
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            &[
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x20, 0xff],
            // Lengths past the message, past the buffer.
            &[0x1a, 0x02, 0x1a, 0x05, 0, 0, 0, 0, 0],
            &[0x0a, 0x05, b'a'],
            // UTF-8: bad in a table, in a tag key, in a replaced tag value.
            &[0x0a, 0x01, 0xff],
            &[0x1a, 0x05, 0x22, 0x03, 0x0a, 0x01, 0xff],
            &[0x1a, 0x08, 0x22, 0x06, 0x12, 0x01, 0xff, 0x12, 0x01, b'a'],
            // Unknown fields inside a record and a tag.
            &[0x1a, 0x06, 0x28, 0x01, 0x22, 0x02, 0x18, 0x01],
        ];
        for case in cases {
            agrees_with_prost(case);
        }
        // Nesting: groups at the recursion limit and one past it, at the top and in a record.
        for depth in [97, 98, 99, 100, 101] {
            let mut groups = vec![0x2b; depth];
            groups.extend(std::iter::repeat_n(0x2c, depth));
            agrees_with_prost(&groups);
            let mut body = vec![0x1a];
            prost::encoding::encode_varint(groups.len() as u64, &mut body);
            body.extend(groups.iter());
            agrees_with_prost(&body);
        }
    }
}
