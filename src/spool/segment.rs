//! Frames and files: how one record, checkpoint or batch of acknowledgements is laid out on
//! disk, and the per-segment bookkeeping kept in memory.
//!
//! ```text
//! segment file  NNNNNNNNNNNNNNNNNNNN.seg (N = the first id it holds, 20 digits)
//!   header   b"KPLSPL01" | first id u64
//!   frame*   len u32 | crc32(body) u32 | body (len bytes)
//!   body     1 | id u64 | flags u8 | key len u16 | key | [hash key u128] | [dedup u64 u64] | data
//!         or 2 | key len u16 | key | value                         (a checkpoint)
//! ack file     NNNNNNNNNNNNNNNNNNNN.acks (the segment it acknowledges into)
//!   header   b"KPLACK01" | first id u64
//!   frame*   len u32 | crc32(body) u32 | body = ids, u64 each
//! ```
//!
//! All integers are little-endian. A frame is valid only if its whole body is present and its
//! CRC matches; recovery stops reading a file at the first frame that is not.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::dedup::DedupId;
use crate::hash::HashKey;
use crate::record::UserRecord;

/// Magic at the start of a segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"KPLSPL01";
/// Magic at the start of an ack file.
pub(crate) const ACK_MAGIC: &[u8; 8] = b"KPLACK01";
/// Magic + first id.
pub(crate) const FILE_HEADER_BYTES: u64 = 16;
/// Length + CRC in front of every frame body.
pub(crate) const FRAME_HEADER_BYTES: u64 = 8;
/// The largest body a frame may declare: a 10 MiB record with its key and headers, with room.
/// A larger length can only be corruption, and is never allocated.
pub(crate) const MAX_FRAME_BODY_BYTES: u32 = 11 * 1024 * 1024;
/// The segment keeps the byte offset of every this-many-th record, so that a record can be
/// found again by id (for the dead-letter file) reading at most this many frames.
pub(crate) const INDEX_EVERY: u64 = 64;

const KIND_RECORD: u8 = 1;
const KIND_CHECKPOINT: u8 = 2;
const FLAG_HASH_KEY: u8 = 1;
const FLAG_DEDUP: u8 = 2;

/// A record as stored: what the producer needs to send it again after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    pub id: u64,
    pub record: UserRecord,
    pub dedup_id: Option<DedupId>,
}

/// One decoded segment frame.
#[derive(Debug)]
pub(crate) enum Frame {
    Record(StoredRecord),
    Checkpoint { key: String, value: Vec<u8> },
}

/// The body of a record frame for `record` with `id`.
pub(crate) fn encode_record(
    id: u64,
    record: &UserRecord,
    dedup_id: Option<DedupId>,
    out: &mut Vec<u8>,
) {
    let mut flags = 0;
    if record.explicit_hash_key.is_some() {
        flags |= FLAG_HASH_KEY;
    }
    if dedup_id.is_some() {
        flags |= FLAG_DEDUP;
    }
    out.push(KIND_RECORD);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(flags);
    push_key(out, &record.partition_key);
    if let Some(key) = record.explicit_hash_key {
        out.extend_from_slice(&key.0.to_le_bytes());
    }
    if let Some(dedup) = dedup_id {
        out.extend_from_slice(&dedup.producer.to_le_bytes());
        out.extend_from_slice(&dedup.seq.to_le_bytes());
    }
    out.extend_from_slice(&record.data);
}

/// The body of a checkpoint frame.
pub(crate) fn encode_checkpoint(key: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(KIND_CHECKPOINT);
    push_key(out, key);
    out.extend_from_slice(value);
}

/// Bytes on disk of a record frame (header included), without encoding it.
pub(crate) fn record_frame_bytes(record: &UserRecord, dedup_id: Option<DedupId>) -> u64 {
    let body = 1
        + 8
        + 1
        + 2
        + record.partition_key.len()
        + record.explicit_hash_key.map_or(0, |_| 16)
        + dedup_id.map_or(0, |_| 16)
        + record.data.len();
    FRAME_HEADER_BYTES + body as u64
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    // Partition keys are at most 256 characters (1 KiB); checkpoint keys are paths. Both are
    // checked to fit before they get here.
    let len = u16::try_from(key.len()).expect("keys are checked to fit in u16");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// Writes `len | crc | body` in front of the body already in `frame[8..]`.
pub(crate) fn seal_frame(frame: &mut [u8]) {
    let body = &frame[FRAME_HEADER_BYTES as usize..];
    let len = u32::try_from(body.len()).expect("bodies are checked against MAX_FRAME_BODY_BYTES");
    let crc = crc32fast::hash(body);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum BadFrame {
    /// The file ends inside the frame (a torn write): `missing` bytes short.
    Torn,
    /// The frame is all there but its CRC, length or content is wrong.
    Corrupt(&'static str),
    /// The file could not be read.
    Io(io::Error),
}

/// Reads one frame body from `r`, which has `remaining` bytes left. `Ok(None)` at a clean end.
pub(crate) fn read_frame_body(
    r: &mut impl Read,
    remaining: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<()>, BadFrame> {
    if remaining == 0 {
        return Ok(None);
    }
    if remaining < FRAME_HEADER_BYTES {
        return Err(BadFrame::Torn);
    }
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    r.read_exact(&mut header).map_err(BadFrame::Io)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME_BODY_BYTES {
        // Zeros are what a file extended but not written looks like after a crash.
        return Err(
            if remaining - FRAME_HEADER_BYTES < u64::from(len) || len == 0 {
                BadFrame::Torn
            } else {
                BadFrame::Corrupt("frame length out of range")
            },
        );
    }
    if remaining - FRAME_HEADER_BYTES < u64::from(len) {
        return Err(BadFrame::Torn);
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf).map_err(BadFrame::Io)?;
    if crc32fast::hash(buf) != crc {
        return Err(BadFrame::Corrupt("CRC mismatch"));
    }
    Ok(Some(()))
}

/// Decodes a segment frame body (whose CRC matched).
pub(crate) fn decode_frame(body: &[u8]) -> Result<Frame, BadFrame> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_RECORD => {
            let id = r.u64()?;
            let flags = r.u8()?;
            let partition_key = r.key()?;
            let explicit_hash_key = if flags & FLAG_HASH_KEY != 0 {
                Some(HashKey(u128::from_le_bytes(
                    r.take(16)?.try_into().expect("16"),
                )))
            } else {
                None
            };
            let dedup_id = if flags & FLAG_DEDUP != 0 {
                Some(DedupId {
                    producer: r.u64()?,
                    seq: r.u64()?,
                })
            } else {
                None
            };
            let record = UserRecord {
                partition_key,
                explicit_hash_key,
                data: Bytes::copy_from_slice(r.0),
            };
            Ok(Frame::Record(StoredRecord {
                id,
                record,
                dedup_id,
            }))
        }
        KIND_CHECKPOINT => {
            let key = r.key()?;
            Ok(Frame::Checkpoint {
                key,
                value: r.0.to_vec(),
            })
        }
        _ => Err(BadFrame::Corrupt("unknown frame kind")),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadFrame> {
        if self.0.len() < n {
            return Err(BadFrame::Corrupt("frame body shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BadFrame> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, BadFrame> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn key(&mut self) -> Result<String, BadFrame> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2"));
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BadFrame::Corrupt("key is not UTF-8"))
    }
}

/// The 16-byte header of a segment or ack file.
pub(crate) fn file_header(magic: &[u8; 8], first: u64) -> [u8; FILE_HEADER_BYTES as usize] {
    let mut h = [0u8; FILE_HEADER_BYTES as usize];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&first.to_le_bytes());
    h
}

/// Checks a file header; `Err` says what is wrong.
pub(crate) fn check_header(
    r: &mut impl Read,
    magic: &[u8; 8],
    first: u64,
) -> Result<(), &'static str> {
    let mut h = [0u8; FILE_HEADER_BYTES as usize];
    r.read_exact(&mut h)
        .map_err(|_| "the file is shorter than its header")?;
    if &h[..8] != magic {
        return Err("the file does not start with a kpl spool header");
    }
    if u64::from_le_bytes(h[8..].try_into().expect("8")) != first {
        return Err("the header's first id does not match the file name");
    }
    Ok(())
}

/// The segment file holding ids from `first`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The ack file of the segment from `first`.
pub(crate) fn ack_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.acks"))
}

/// What is known in memory about one segment: which of its records are acknowledged, how far
/// it may be read, and where to find a record by id.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    /// The id of its first record; its records have the ids `first..first + count`.
    pub first: u64,
    pub count: u64,
    /// Records not yet acknowledged.
    pub live: u64,
    /// Bit `i` set: record `first + i` is acknowledged.
    acked: Vec<u64>,
    /// Bytes from the file's start that hold whole, checked frames (what a cursor may read).
    pub valid_len: u64,
    /// Bytes of its record frames, charged against the spool's size cap until it is deleted.
    pub record_bytes: u64,
    /// No more frames will be appended.
    pub sealed: bool,
    /// Byte offset of records `first`, `first + INDEX_EVERY`, ...
    pub index: Vec<u64>,
}

impl SegmentMeta {
    pub fn new(first: u64) -> Self {
        SegmentMeta {
            first,
            count: 0,
            live: 0,
            acked: Vec::new(),
            valid_len: FILE_HEADER_BYTES,
            record_bytes: 0,
            sealed: false,
            index: Vec::new(),
        }
    }

    /// Counts the next record (id `first + count`), whose frame starts at `offset`.
    pub fn push_record(&mut self, offset: u64, frame_bytes: u64) {
        if self.count.is_multiple_of(INDEX_EVERY) {
            self.index.push(offset);
        }
        if self.count.is_multiple_of(64) {
            self.acked.push(0);
        }
        self.count += 1;
        self.live += 1;
        self.record_bytes += frame_bytes;
    }

    pub fn holds(&self, id: u64) -> bool {
        id >= self.first && id - self.first < self.count
    }

    pub fn is_acked(&self, id: u64) -> bool {
        let i = id - self.first;
        self.acked[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks `id` acknowledged; `false` if it was already.
    pub fn ack(&mut self, id: u64) -> bool {
        let i = id - self.first;
        let word = &mut self.acked[(i / 64) as usize];
        let bit = 1 << (i % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.live -= 1;
        true
    }

    /// Where to start reading to find `id`: a byte offset and the id of the record there.
    pub fn seek_hint(&self, id: u64) -> (u64, u64) {
        let k = (id - self.first) / INDEX_EVERY;
        (self.index[k as usize], self.first + k * INDEX_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 8];
        f.extend_from_slice(body);
        seal_frame(&mut f);
        f
    }

    #[test]
    fn a_record_frame_roundtrips_with_hash_key_and_dedup_id() {
        let record = UserRecord::new("key", &b"data"[..]).with_explicit_hash_key(HashKey(7 << 100));
        let dedup = Some(DedupId {
            producer: 0xfeed,
            seq: 9,
        });
        let mut body = Vec::new();
        encode_record(42, &record, dedup, &mut body);
        let frame = framed(&body);
        assert_eq!(frame.len() as u64, record_frame_bytes(&record, dedup));
        let mut buf = Vec::new();
        read_frame_body(&mut &frame[..], frame.len() as u64, &mut buf)
            .unwrap()
            .unwrap();
        match decode_frame(&buf).unwrap() {
            Frame::Record(r) => assert_eq!(
                r,
                StoredRecord {
                    id: 42,
                    record,
                    dedup_id: dedup
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_short_or_flipped_frame_is_torn_or_corrupt() {
        let mut body = Vec::new();
        encode_checkpoint("f", b"offset", &mut body);
        let frame = framed(&body);
        let mut buf = Vec::new();
        for cut in 1..frame.len() {
            assert!(matches!(
                read_frame_body(&mut &frame[..cut], cut as u64, &mut buf),
                Err(BadFrame::Torn)
            ));
        }
        let mut flipped = frame.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_frame_body(&mut &flipped[..], flipped.len() as u64, &mut buf),
            Err(BadFrame::Corrupt(_))
        ));
        // A zeroed tail (a file extended but never written) reads as torn, not as a frame.
        let zeros = [0u8; 64];
        assert!(matches!(
            read_frame_body(&mut &zeros[..], 64, &mut buf),
            Err(BadFrame::Torn)
        ));
    }

    #[test]
    fn acks_count_down_the_live_records_once_each() {
        let mut meta = SegmentMeta::new(100);
        for i in 0..130 {
            meta.push_record(16 + i * 10, 10);
        }
        assert!(meta.holds(229) && !meta.holds(230) && !meta.holds(99));
        assert!(meta.ack(229));
        assert!(!meta.ack(229));
        assert!(meta.is_acked(229) && !meta.is_acked(228));
        assert_eq!(meta.live, 129);
        assert_eq!(meta.seek_hint(229), (16 + 128 * 10, 228));
        assert_eq!(meta.seek_hint(163), (16, 100));
    }
}
