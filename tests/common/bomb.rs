//! The hostile record of issue 16 (item 12): a 1.6 KB Kinesis record, a zstd frame holding a
//! 16 MiB KPL aggregate of 2.8 M empty user records that all share one 256-character key.
//! A reader that copies the key into every user record (or decodes the whole protobuf at
//! once) needs over a gigabyte for it.

use kpl::codec::aggregate::{DIGEST_LEN, KPL_MAGIC};
use kpl::codec::deaggregate::DEFAULT_MAX_DECOMPRESSED_BYTES;
use kpl::codec::digest::md5;
use kpl::codec::frame::Compressor;

/// The shared partition key (256 characters, Kinesis's longest).
pub fn bomb_key() -> String {
    "k".repeat(256)
}

/// One user record: `Record { partition_key_index: 0, data: "" }`, as field 3 of the aggregate.
const EMPTY_RECORD: [u8; 6] = [0x1a, 0x04, 0x08, 0x00, 0x1a, 0x00];

/// The aggregate's records: as many as fit in the default decompression cap.
pub fn bomb_records() -> usize {
    let fixed = KPL_MAGIC.len() + 3 + bomb_key().len() + DIGEST_LEN;
    (DEFAULT_MAX_DECOMPRESSED_BYTES - fixed) / EMPTY_RECORD.len()
}

/// The uncompressed aggregate (magic, protobuf, MD5), exactly 16 MiB or just under.
pub fn bomb_aggregate() -> Vec<u8> {
    let key = bomb_key();
    let mut body = Vec::with_capacity(DEFAULT_MAX_DECOMPRESSED_BYTES);
    // partition_key_table[0]: field 1, length 256 (varint 0x80 0x02).
    body.extend_from_slice(&[0x0a, 0x80, 0x02]);
    body.extend_from_slice(key.as_bytes());
    for _ in 0..bomb_records() {
        body.extend_from_slice(&EMPTY_RECORD);
    }
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(&KPL_MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&md5(&body));
    out
}

/// The Kinesis record: the aggregate in a kpl zstd frame.
pub fn bomb() -> Vec<u8> {
    Compressor::zstd(19)
        .unwrap()
        .compress_bytes(&bomb_aggregate())
        .expect("it compresses")
        .to_vec()
}
