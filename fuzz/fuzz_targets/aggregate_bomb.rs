//! Structure-aware: the input chooses an aggregate (key tables, records, how often the records
//! repeat, table entries no record uses, tags), which is then framed with a valid MD5, maybe
//! damaged, maybe zstd-compressed (maybe with a lying size), so compression bombs of millions
//! of records sharing long keys are a few input bytes away. The reader must stream them:
//! what it holds stays within the payload plus its tables, whatever the record count, and
//! iterating never fails or panics.
#![no_main]

use arbitrary::Arbitrary;
use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::Compressor;
use kpl::{HashKey, HashRange};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

/// The cap the reader is given (and what the builder stays under).
const MAX: usize = 16 << 20;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Partition key entries: (length in units of 16 bytes, fill byte).
    keys: Vec<(u8, u8)>,
    /// Explicit hash key entries: a number, or garbage.
    ehks: Vec<Result<u128, u8>>,
    records: Vec<Rec>,
    /// How many times the record block repeats (a bomb: up to millions).
    repeat: u32,
    /// Empty partition key entries no record uses, appended.
    unused_keys: u32,
    compress: Option<(u8, Option<u32>)>,
    /// Byte flips after building (position, xor).
    damage: Vec<(u32, u8)>,
    fix_md5_after_damage: bool,
}

#[derive(Arbitrary, Debug)]
struct Rec {
    pk: u16,
    ehk: Option<u8>,
    data_len: u16,
    tags: u8,
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn delimited(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag << 3 | 2);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn build(input: &Input) -> Option<Vec<u8>> {
    // Room for the largest aggregate up front: the harness's own growth stays out of the
    // memory the reader is measured by.
    let mut body = Vec::with_capacity(MAX);
    for &(len, fill) in input.keys.iter().take(64) {
        delimited(1, &vec![fill & 0x7f; len as usize * 16], &mut body);
    }
    for ehk in input.ehks.iter().take(16) {
        match ehk {
            Ok(n) => delimited(2, n.to_string().as_bytes(), &mut body),
            Err(b) => delimited(2, &[*b & 0x7f; 3], &mut body),
        }
    }
    let mut block = Vec::new();
    for r in input.records.iter().take(64) {
        let mut rec = Vec::new();
        rec.push(0x08);
        varint(u64::from(r.pk) % (input.keys.len().max(1) as u64 + 1), &mut rec);
        if let Some(e) = r.ehk {
            rec.push(0x10);
            varint(u64::from(e), &mut rec);
        }
        delimited(3, &vec![b'd'; usize::from(r.data_len % 512)], &mut rec);
        for t in 0..r.tags % 4 {
            let mut tag = Vec::new();
            delimited(1, b"kpl.id", &mut tag);
            delimited(2, format!("00000000000000{t:02x}{:04x}", r.pk).as_bytes(), &mut tag);
            delimited(4, &tag, &mut rec);
        }
        delimited(3, &rec, &mut block);
    }
    let room = MAX.saturating_sub(body.len() + 64);
    let times = if block.is_empty() { 0 } else { (input.repeat as usize).min(room / block.len()) };
    for _ in 0..times {
        body.extend_from_slice(&block);
    }
    let room = MAX.saturating_sub(body.len() + 64) / 2;
    for _ in 0..(input.unused_keys as usize).min(room) {
        body.extend_from_slice(&[0x0a, 0x00]);
    }
    let digest: [u8; 16] = Md5::digest(&body).into();
    let mut data = body;
    data.splice(0..0, [0xF3, 0x89, 0x9A, 0xC2]);
    data.extend_from_slice(&digest);
    for &(at, xor) in input.damage.iter().take(4) {
        let n = data.len();
        data[at as usize % n] ^= xor;
    }
    if input.fix_md5_after_damage && data.len() >= 20 {
        let n = data.len();
        let digest: [u8; 16] = Md5::digest(&data[4..n - 16]).into();
        data[n - 16..].copy_from_slice(&digest);
    }
    if let Some((level, lie)) = input.compress {
        let mut frame = Compressor::zstd(i32::from(level % 4) + 1)
            .ok()?
            .compress_bytes(&data)?
            .to_vec();
        if let Some(size) = lie {
            frame[11..15].copy_from_slice(&size.to_le_bytes());
        }
        return Some(frame);
    }
    Some(data)
}

fuzz_target!(|input: Input| {
    let Some(data) = build(&input) else { return };
    for strict in [false, true] {
        let reader = Deaggregator::new().strict(strict).max_decompressed_bytes(MAX);
        let Ok(records) = reader.user_records(&data, "pk", None) else { continue };
        let declared = records.len();
        let held = records.held_bytes();
        // The payload (at most MAX) plus its used table entries (within the payload) plus
        // 24 bytes per used entry and bits per entry: never per record.
        assert!(held <= 3 * MAX, "holds {held} bytes for {declared} records");
        let all = HashRange { start: HashKey(0), end: HashKey(u128::MAX) };
        assert_eq!(records.count_outside(all), 0);
        let mut n = 0usize;
        for r in records.clone() {
            assert_eq!(r.sub_sequence_number as usize, n);
            n += 1;
        }
        assert_eq!(n, declared, "the iterator yields what it declared");
        assert_eq!(records.held_bytes(), held);
        if declared <= 10_000 {
            assert_eq!(reader.deaggregate(&data, "pk", None).map(|v| v.len()), Ok(declared));
        }
    }
});
