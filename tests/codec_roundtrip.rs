//! Property tests of the codec: every aggregate round-trips, its size is known exactly before it
//! is finished, it never exceeds its limit and is as full as the next record allows; compressed
//! frames round-trip; arbitrary bytes never panic the deaggregator.

use kpl::codec::aggregate::{AggregateBuilder, AggregateLimits};
use kpl::codec::deaggregate::{Deaggregator, RecordKind};
use kpl::codec::frame::Compressor;
use kpl::{HashKey, UserRecord};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,12}",
        // Multi-byte characters up to the 256-character limit.
        proptest::collection::vec(
            prop_oneof![Just('é'), Just('漢'), Just('🦀'), Just('x')],
            1..=256
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
}

fn user_record() -> impl Strategy<Value = UserRecord> {
    (
        key(),
        proptest::option::weighted(0.3, any::<u128>()),
        proptest::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(k, ehk, data)| {
            let r = UserRecord::new(k, data);
            match ehk {
                Some(h) => r.with_explicit_hash_key(HashKey(h)),
                None => r,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn aggregates_round_trip_with_exact_sizes(
        records in proptest::collection::vec(user_record(), 1..120),
        max_bytes in 64usize..20_000,
    ) {
        let mut b = AggregateBuilder::new(AggregateLimits { max_bytes, max_count: usize::MAX });
        let mut finished = Vec::new();
        let mut groups: Vec<Vec<UserRecord>> = vec![Vec::new()];
        for r in &records {
            let before = b.data_len();
            if b.try_push(r, r.hash_key()).is_err() {
                // Refused: nothing changed, and the aggregate holds at least two records (a lone
                // record is always accepted).
                prop_assert_eq!(b.data_len(), before);
                prop_assert!(!b.is_empty());
                // As full as it can be: with the refused record it would exceed the limit.
                let mut probe = AggregateBuilder::new(AggregateLimits { max_bytes: usize::MAX, max_count: usize::MAX });
                for g in groups.last().unwrap().iter().chain([r]) {
                    probe.try_push(g, g.hash_key()).unwrap();
                }
                prop_assert!(probe.data_len() > max_bytes);
                let expected = b.data_len();
                let k = b.finish().unwrap();
                prop_assert_eq!(k.data.len(), expected);
                finished.push(k);
                groups.push(Vec::new());
                b.try_push(r, r.hash_key()).unwrap();
            }
            groups.last_mut().unwrap().push(r.clone());
            if b.len() > 1 {
                prop_assert!(b.data_len() <= max_bytes, "{} > {}", b.data_len(), max_bytes);
            }
        }
        let expected = b.data_len();
        let k = b.finish().unwrap();
        prop_assert_eq!(k.data.len(), expected);
        finished.push(k);

        let d = Deaggregator::new().strict(true);
        for (k, group) in finished.iter().zip(&groups) {
            prop_assert_eq!(k.user_records, group.len());
            let out = d.deaggregate(&k.data, &k.partition_key, k.explicit_hash_key.as_deref()).unwrap();
            prop_assert_eq!(out.len(), group.len());
            for (u, r) in out.iter().zip(group) {
                prop_assert_eq!(&u.partition_key, &r.partition_key);
                prop_assert_eq!(&u.data, &r.data);
                prop_assert_eq!(u.hash_key, r.hash_key());
                if group.len() > 1 {
                    prop_assert_eq!(u.kind, RecordKind::Aggregated);
                    prop_assert_eq!(u.explicit_hash_key.as_ref().map(|k| k.to_string()), r.explicit_hash_key.map(|h| h.to_string()));
                }
            }
            // The aggregate routes by its first record's hash key.
            if group.len() > 1 {
                prop_assert_eq!(
                    k.explicit_hash_key.clone(),
                    Some(group[0].hash_key().to_string())
                );
            }
        }
    }

    #[test]
    fn compressed_aggregates_round_trip(
        records in proptest::collection::vec(user_record(), 2..60),
        level in 1i32..6,
    ) {
        let mut b = AggregateBuilder::new(AggregateLimits { max_bytes: 1 << 20, max_count: usize::MAX });
        for r in &records {
            b.try_push(r, r.hash_key()).unwrap();
        }
        let k = Compressor::zstd(level).unwrap().compress(b.finish().unwrap());
        let out = Deaggregator::new().deaggregate(&k.data, &k.partition_key, None).unwrap();
        prop_assert_eq!(out.len(), records.len());
        for (u, r) in out.iter().zip(&records) {
            prop_assert_eq!(&u.data, &r.data);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        let _ = Deaggregator::new().deaggregate(&data, "k", None);
        let _ = Deaggregator::new().strict(true).deaggregate(&data, "k", Some("12"));
        // Also behind a valid KPL magic and a valid frame header.
        let mut kpl = vec![0xF3, 0x89, 0x9A, 0xC2];
        kpl.extend_from_slice(&data);
        let _ = Deaggregator::new().strict(true).deaggregate(&kpl, "k", None);
        let mut frame = vec![0xF5, 0x4B, 0x50, 0x5A, 1, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x7F];
        frame.extend_from_slice(&data);
        prop_assert!(Deaggregator::new().deaggregate(&frame, "k", None).is_err());
    }
}
