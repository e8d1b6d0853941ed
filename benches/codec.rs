//! Codec throughput: encoding user records into KPL aggregates (with the partition-key MD5,
//! hashed per record or through a key cache as the pipeline does), with and without zstd, and
//! decoding them back. 100-byte records, 1000 distinct keys.

use std::collections::HashMap;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits, KinesisRecord, Unsealed};
use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::digest;
use kpl::codec::frame::Compressor;
use kpl::{HashKey, UserRecord};
use md5::Digest;

const N: usize = 100_000;

fn records(json: bool) -> Vec<UserRecord> {
    (0..N)
        .map(|i| {
            let key = format!("partition-key-{:04}", i % 1000);
            let data = if json {
                let s = format!(
                    "{{\"ts\":{},\"level\":\"info\",\"user\":\"u{}\",\"path\":\"/api/v1/items/{}\"}}",
                    1_700_000_000 + i,
                    i % 1000,
                    i % 97
                );
                format!("{s:<100}").into_bytes()
            } else {
                vec![b'x'; 100]
            };
            UserRecord::new(key, data)
        })
        .collect()
}

fn limits() -> AggregateLimits {
    AggregateLimits {
        max_bytes: 51_200,
        max_count: usize::MAX,
    }
}

/// Aggregates `records` into aggregates of the default limits, each finished by `finish`.
fn aggregate<T>(
    records: &[UserRecord],
    mut hash: impl FnMut(&UserRecord) -> HashKey,
    mut finish: impl FnMut(&mut AggregateBuilder) -> Option<T>,
) -> Vec<T> {
    let mut b = AggregateBuilder::new(limits());
    let mut out = Vec::new();
    for r in records {
        let h = hash(r);
        if b.try_push(r, h).is_err() {
            out.extend(finish(&mut b));
            b.try_push(r, h).unwrap();
        }
    }
    out.extend(finish(&mut b));
    out
}

/// Encodes `records`, each aggregate's MD5 trailer written as it is finished.
fn encode(records: &[UserRecord], hash: impl FnMut(&UserRecord) -> HashKey) -> Vec<KinesisRecord> {
    aggregate(records, hash, AggregateBuilder::finish)
}

/// [`encode`], with the MD5 trailers written as the pipeline writes them: every aggregate
/// finished without its trailer, then all sealed together, eight side by side.
fn encode_sealed_together(
    records: &[UserRecord],
    hash: impl FnMut(&UserRecord) -> HashKey,
) -> Vec<KinesisRecord> {
    let mut out = aggregate(records, hash, |b| b.finish_unsealed(BytesMut::new()));
    Unsealed::seal_many(&mut out, |(_, u)| u.take(), |(k, _), data| k.data = data);
    out.into_iter().map(|(k, _)| k).collect()
}

fn codec(c: &mut Criterion) {
    let plain = records(false);
    let json = records(true);
    let bytes: u64 = plain.iter().map(|r| r.billed_bytes() as u64).sum();

    let mut g = c.benchmark_group("encode_100B_1000keys");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("md5_per_record", |b| {
        b.iter(|| encode(&plain, |r| HashKey::of_partition_key(&r.partition_key)))
    });
    // Partition-key hashes through a cache, as the pipeline hashes; trailers one by one, or
    // together side by side as the pipeline writes them for a call.
    type Encoder = fn(&[UserRecord], &mut dyn FnMut(&UserRecord) -> HashKey) -> Vec<KinesisRecord>;
    let encoders: [(&str, Encoder); 2] = [
        ("md5_key_cache", |r, h| encode(r, h)),
        ("md5_key_cache_trailers_side_by_side", |r, h| {
            encode_sealed_together(r, h)
        }),
    ];
    for (name, encoder) in encoders {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut cache: HashMap<String, HashKey> = HashMap::new();
                let hashes: Vec<HashKey> = plain
                    .iter()
                    .map(|r| {
                        *cache
                            .entry(r.partition_key.clone())
                            .or_insert_with(|| HashKey::of_partition_key(&r.partition_key))
                    })
                    .collect();
                let mut i = 0;
                encoder(&plain, &mut |_| {
                    i += 1;
                    hashes[i - 1]
                })
            })
        });
    }
    for level in [1, 3] {
        g.bench_with_input(BenchmarkId::new("json_zstd", level), &level, |b, &level| {
            let mut z = Compressor::zstd(level).unwrap();
            b.iter(|| {
                encode(&json, |r| HashKey::of_partition_key(&r.partition_key))
                    .into_iter()
                    .map(|k| z.compress(k))
                    .collect::<Vec<_>>()
            })
        });
    }
    g.finish();

    let aggregates = encode(&plain, |r| r.hash_key());
    let mut z = Compressor::zstd(1).unwrap();
    let compressed: Vec<_> = encode(&json, |r| r.hash_key())
        .into_iter()
        .map(|k| z.compress(k))
        .collect();
    let d = Deaggregator::new();
    let mut g = c.benchmark_group("decode_100B_1000keys");
    g.throughput(Throughput::Bytes(bytes));
    // User records in a batch of Kinesis records, read back.
    let decode_all = |records: &[KinesisRecord]| {
        records
            .iter()
            .map(|k| {
                d.deaggregate(&k.data, &k.partition_key, None)
                    .unwrap()
                    .len()
            })
            .sum::<usize>()
    };
    g.bench_function("kpl", |b| b.iter(|| decode_all(&aggregates)));
    g.bench_function("kpl_zstd1_json", |b| b.iter(|| decode_all(&compressed)));
    g.finish();

    // The KPL trailer: MD5 over 64 aggregates of 51 200 bytes, one by one with the md-5 crate
    // and side by side (what the pipeline does with the aggregates of a call).
    let trailers: Vec<Vec<u8>> = (0..64u32)
        .map(|i| {
            (0..51_200u32)
                .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                .collect()
        })
        .collect();
    let slices: Vec<&[u8]> = trailers.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("md5_trailers_64x51200B");
    g.throughput(Throughput::Bytes(64 * 51_200));
    g.bench_function("md5_crate_one_by_one", |b| {
        b.iter(|| {
            slices
                .iter()
                .map(|s| <[u8; 16]>::from(md5::Md5::digest(s))[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.bench_function("side_by_side", |b| {
        b.iter(|| {
            let mut x = 0u8;
            digest::md5_each(&slices, |_, d| x ^= d[0]);
            x
        })
    });
    g.finish();

    let ratio = json.iter().map(|r| r.data.len()).sum::<usize>() as f64
        / compressed.iter().map(|k| k.data.len()).sum::<usize>() as f64;
    eprintln!("zstd level 1 on 100-byte JSON lines in 50 KiB aggregates: ratio {ratio:.2}x");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = codec
}
criterion_main!(benches);
