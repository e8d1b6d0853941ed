//! The deaggregator on untrusted bytes: as they come, behind the KPL magic with a valid MD5
//! trailer (so the protobuf parser and the key-table checks are reached every time), and behind
//! a compressed-frame header. It must never panic or allocate by an untrusted length.
#![no_main]

use kpl::codec::deaggregate::Deaggregator;
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

fuzz_target!(|data: &[u8]| {
    let lenient = Deaggregator::new().max_decompressed_bytes(1 << 20);
    let strict = lenient.clone().strict(true);
    let _ = lenient.deaggregate(data, "k", None);
    let _ = strict.deaggregate(data, "k", Some("340282366920938463463374607431768211455"));

    let mut aggregate = vec![0xF3, 0x89, 0x9A, 0xC2];
    aggregate.extend_from_slice(data);
    let digest: [u8; 16] = Md5::digest(data).into();
    aggregate.extend_from_slice(&digest);
    let _ = strict.deaggregate(&aggregate, "k", None);

    if data.len() >= 4 {
        let mut frame = vec![0xF5, 0x4B, 0x50, 0x5A, 1, 1, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&data[..4]); // declared length: fuzzed
        frame.extend_from_slice(&data[4..]);
        let _ = lenient.deaggregate(&frame, "k", None);
    }
});
