//! Hostile records (issue 16, item 12): small Kinesis records that declare millions of user
//! records are read one at a time, holding only the record; and the reader's own protobuf walk
//! reads every aggregate exactly as a full prost decode does.

#[path = "common/bomb.rs"]
mod bomb;

use kpl::codec::deaggregate::{Deaggregator, DecodeError, RecordKind};
use kpl::codec::digest::md5;
use kpl::codec::proto::AggregatedRecord;
use kpl::{HashKey, HashRange};
use proptest::prelude::*;
use prost::Message;

const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

fn framed_aggregate(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&md5(body));
    out
}

#[test]
fn a_compressed_aggregate_of_millions_of_records_is_read_one_at_a_time() {
    let record = bomb::bomb();
    assert!(record.len() < 2048, "{} bytes", record.len());
    let records = Deaggregator::new()
        .user_records(&record, "pk", None)
        .unwrap();
    assert_eq!(records.len(), bomb::bomb_records());
    assert_eq!(records.kind(), RecordKind::Aggregated);
    assert!(records.compressed());
    // What it holds: the 16 MiB payload and one copy of the key, nothing per record.
    let held = records.held_bytes();
    assert!(held <= 16 * 1024 * 1024 + 4096, "holds {held} bytes");
    let everywhere = HashRange {
        start: HashKey(0),
        end: HashKey(u128::MAX),
    };
    assert_eq!(records.count_outside(everywhere), 0);
    let key = bomb::bomb_key();
    let mut n = 0u64;
    for r in records.clone() {
        // Every record shares the table's one copy of the key.
        assert_eq!(r.sub_sequence_number, n);
        assert_eq!(r.partition_key, key.as_str());
        n += 1;
    }
    assert_eq!(n as usize, bomb::bomb_records());
    assert_eq!(
        records.held_bytes(),
        held,
        "reading allocates nothing it keeps"
    );
    let first = records.clone().next().unwrap();
    assert_eq!(first.partition_key, key.as_str());
    assert!(first.data.is_empty() && first.compressed);
}

#[test]
fn a_table_of_millions_of_unused_keys_costs_bits_not_strings() {
    // 4 M empty partition key entries (two bytes each), one record using the last one.
    let entries = 4 << 20;
    let mut body = [0x0a, 0x00].repeat(entries);
    // Record { partition_key_index: entries - 1, data: "" }.
    let mut rec = vec![0x08];
    prost::encoding::encode_varint(entries as u64 - 1, &mut rec);
    rec.extend_from_slice(&[0x1a, 0x00]);
    body.push(0x1a);
    body.push(rec.len() as u8);
    body.extend_from_slice(&rec);
    let data = framed_aggregate(&body);
    let records = Deaggregator::new().user_records(&data, "pk", None).unwrap();
    assert_eq!(records.len(), 1);
    // The 8 MiB protobuf plus about 1.5 bits per entry.
    assert!(
        records.held_bytes() <= body.len() + entries / 4,
        "{}",
        records.held_bytes()
    );
    let r: Vec<_> = records.collect();
    assert_eq!(r[0].partition_key, "");
    assert_eq!(r[0].hash_key, HashKey::of_partition_key(""));
}

/// The reader before the streaming walk: prost decodes the whole aggregate, then each record
/// is checked in order. The walk must give the same records and the same errors.
/// (partition key, explicit hash key, hash key, data, tags) of one user record.
type Read = (
    String,
    Option<String>,
    u128,
    Vec<u8>,
    Vec<(String, Option<String>)>,
);

fn reference(data: &[u8], strict: bool) -> Result<Vec<Read>, DecodeError> {
    let plain = || {
        Ok(vec![(
            "pk".to_owned(),
            None,
            HashKey::of_partition_key("pk").0,
            data.to_vec(),
            vec![],
        )])
    };
    if data.len() < 4 || data[..4] != MAGIC {
        return plain();
    }
    if data.len() < 20 {
        return if strict {
            Err(DecodeError::BadProtobuf(String::new()))
        } else {
            plain()
        };
    }
    let body = &data[4..data.len() - 16];
    if md5(body)[..] != data[data.len() - 16..] {
        return if strict {
            Err(DecodeError::BadDigest)
        } else {
            plain()
        };
    }
    let agg = match AggregatedRecord::decode(body) {
        Ok(agg) => agg,
        Err(_) if strict => return Err(DecodeError::BadProtobuf(String::new())),
        Err(_) => return plain(),
    };
    let mut out = Vec::new();
    for (i, r) in agg.records.into_iter().enumerate() {
        let pk = usize::try_from(r.partition_key_index)
            .ok()
            .and_then(|k| agg.partition_key_table.get(k))
            .ok_or(DecodeError::IndexOutOfRange {
                record: i,
                table: "partition_key_table",
                index: r.partition_key_index,
                len: agg.partition_key_table.len(),
            })?;
        let ehk = match r.explicit_hash_key_index {
            None => None,
            Some(index) => Some(
                usize::try_from(index)
                    .ok()
                    .and_then(|k| agg.explicit_hash_key_table.get(k))
                    .ok_or(DecodeError::IndexOutOfRange {
                        record: i,
                        table: "explicit_hash_key_table",
                        index,
                        len: agg.explicit_hash_key_table.len(),
                    })?,
            ),
        };
        let hash = match ehk {
            Some(e) => HashKey::parse_explicit(e)
                .map_err(|_| DecodeError::BadExplicitHashKey(e.clone()))?,
            None => HashKey::of_partition_key(pk),
        };
        out.push((
            pk.clone(),
            ehk.cloned(),
            hash.0,
            r.data.to_vec(),
            r.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        ));
    }
    Ok(out)
}

fn check_against_reference(data: &[u8]) {
    for strict in [false, true] {
        let ours = Deaggregator::new()
            .strict(strict)
            .deaggregate(data, "pk", None)
            .map(|rs| {
                rs.into_iter()
                    .map(|r| {
                        (
                            r.partition_key.to_string(),
                            r.explicit_hash_key.map(String::from),
                            r.hash_key.0,
                            r.data.to_vec(),
                            r.tags,
                        )
                    })
                    .collect::<Vec<_>>()
            });
        let theirs = reference(data, strict);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{data:02x?}"),
            // Protobuf error texts are the walker's own; the kind and every other field agree.
            (Err(DecodeError::BadProtobuf(_)), Err(DecodeError::BadProtobuf(_))) => {}
            (Err(DecodeError::BadExplicitHashKey(a)), Err(DecodeError::BadExplicitHashKey(b))) => {
                assert!(b.starts_with(a.trim_end_matches('…')) || a == b, "{a} {b}")
            }
            (a, b) => assert_eq!(
                a.as_ref().err(),
                b.as_ref().err(),
                "{data:02x?} strict {strict}"
            ),
        }
    }
}

/// Protobuf fields, some valid for the aggregate's messages and some not, for the walk.
fn field() -> impl Strategy<Value = Vec<u8>> {
    let small = prop::collection::vec(any::<u8>(), 0..6);
    prop_oneof![
        // A table entry (maybe bad UTF-8).
        (
            1u8..=2,
            prop_oneof![
                Just(b"a".to_vec()),
                Just(b"12".to_vec()),
                Just(b"\xff".to_vec()),
                small.clone()
            ]
        )
            .prop_map(|(t, s)| [vec![t << 3 | 2, s.len() as u8], s].concat()),
        // A record: index fields, data, tags, unknown fields, in any order.
        prop::collection::vec(
            prop_oneof![
                (0u8..4).prop_map(|i| vec![0x08, i]),
                (0u8..3).prop_map(|i| vec![0x10, i]),
                small
                    .clone()
                    .prop_map(|d| [vec![0x1a, d.len() as u8], d].concat()),
                (prop::collection::vec(any::<u8>(), 0..4), any::<bool>()).prop_map(|(k, v)| {
                    let mut t = vec![0x0a, k.len() as u8];
                    t.extend(k);
                    if v {
                        t.extend([0x12, 0x01, b'v']);
                    }
                    [vec![0x22, t.len() as u8], t].concat()
                }),
                small.clone(),
            ],
            0..5,
        )
        .prop_map(|fs| {
            let r = fs.concat();
            [vec![0x1a, r.len() as u8], r].concat()
        }),
        // Anything.
        small,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn the_walk_reads_as_a_full_decode_does(fields in prop::collection::vec(field(), 0..8)) {
        let body = fields.concat();
        check_against_reference(&framed_aggregate(&body));
    }

    #[test]
    fn any_bytes_behind_the_magic_read_as_a_full_decode_does(body in prop::collection::vec(any::<u8>(), 0..64)) {
        check_against_reference(&framed_aggregate(&body));
        check_against_reference(&body);
    }
}
