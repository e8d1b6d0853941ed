//! `kpl sim`: shard limits and each fault, observed with a plain SDK client and by reading the
//! stream back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kpl::client::{ApiErrorKind, KinesisApi, PutRecordsEntry, PutRecordsResultEntry, StreamId};
use kpl_sim::{EntryFault, Faults, RequestFault, Reshard, Sim, SimConfig, SimHandle};

async fn sim(enforce_limits: bool, shards: u32) -> SimHandle {
    Sim::start(SimConfig {
        streams: vec![("s".into(), shards)],
        enforce_limits,
        seed: 7,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A client of the simulator: the one `KPL_TEST_CLIENT` names (see `common::api`).
async fn client(sim: &SimHandle, timeout_ms: u64) -> Arc<dyn KinesisApi> {
    common::api(sim.endpoint(), Duration::from_millis(timeout_ms)).await
}

fn entries(from: usize, n: usize, size: usize) -> Vec<PutRecordsEntry> {
    (from..from + n)
        .map(|i| PutRecordsEntry {
            partition_key: format!("k{i}"),
            explicit_hash_key: None,
            data: format!("{i:08}{}", "x".repeat(size.saturating_sub(8))).into(),
        })
        .collect()
}

async fn stored_data(sim: &SimHandle) -> Vec<String> {
    common::read_all(sim.client(), "s")
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.record.data.to_vec()).unwrap()[..8].to_owned())
        .collect()
}

/// Puts `calls` calls of 500 entries of `size` bytes as fast as they go: (stored, throttled).
/// Every failure must be a throttle.
async fn put_calls(c: &Arc<dyn KinesisApi>, calls: usize, size: usize) -> (usize, usize) {
    let (mut ok, mut throttled) = (0, 0);
    for call in 0..calls {
        for r in c
            .put_records(&stream(), entries(call * 500, 500, size))
            .await
            .unwrap()
        {
            match r {
                PutRecordsResultEntry::Stored { .. } => ok += 1,
                PutRecordsResultEntry::Failed { code, .. } => {
                    assert_eq!(code, "ProvisionedThroughputExceededException");
                    throttled += 1;
                }
            }
        }
    }
    (ok, throttled)
}

const S: &str = "s";
fn stream() -> StreamId {
    StreamId::Name(S.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_takes_about_1000_records_a_second_and_throttles_the_rest() {
    let sim = sim(true, 1).await;
    let c = client(&sim, 5_000).await;
    let (ok, throttled) = put_calls(&c, 6, 20).await;
    assert!(
        (900..=1_200).contains(&ok),
        "stored {ok} of 3000 within a burst"
    );
    assert_eq!(ok + throttled, 3_000);
    assert_eq!(stored_data(&sim).await.len(), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_limit_counts_partition_key_plus_data_as_aws_does() {
    let sim = sim(true, 1).await;
    let c = client(&sim, 5_000).await;
    // 256-byte keys + 9 744 bytes of data: 10 000 bytes each as AWS counts; 104 fit in 1 MiB
    // (counting data alone, 107 would).
    let entry = |i: usize| PutRecordsEntry {
        partition_key: format!("{i:0>256}"),
        explicit_hash_key: None,
        data: format!("{i:08}{}", "x".repeat(9_736)).into(),
    };
    let mut ok = 0;
    for call in 0..2 {
        let batch: Vec<_> = (call * 60..call * 60 + 60).map(entry).collect();
        for r in c.put_records(&stream(), batch).await.unwrap() {
            match r {
                PutRecordsResultEntry::Stored { .. } => ok += 1,
                // Said as a limit, not as an injected fault.
                PutRecordsResultEntry::Failed { code, message } => {
                    assert_eq!(code, "ProvisionedThroughputExceededException");
                    assert!(message.starts_with("Rate exceeded for shard"), "{message}");
                }
            }
        }
    }
    assert_eq!(ok, 104);
    assert_eq!(sim.stats().limit_throttled, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_entries_are_really_not_stored() {
    let sim = sim(false, 2).await;
    sim.set_faults(Faults {
        entry_failures: vec![
            EntryFault {
                code: "InternalFailure".into(),
                probability: 0.2,
            },
            EntryFault {
                code: "KMSThrottlingException".into(),
                probability: 0.1,
            },
        ],
        ..Default::default()
    });
    let c = client(&sim, 5_000).await;
    let sent = entries(0, 500, 50);
    let results = c.put_records(&stream(), sent.clone()).await.unwrap();
    let mut expect_stored = Vec::new();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (e, r) in sent.iter().zip(&results) {
        match r {
            PutRecordsResultEntry::Stored { .. } => {
                expect_stored.push(String::from_utf8(e.data[..8].to_vec()).unwrap())
            }
            PutRecordsResultEntry::Failed { code, .. } => {
                *codes.entry(code.clone()).or_default() += 1
            }
        }
    }
    assert!(
        codes["InternalFailure"] > 50 && codes["KMSThrottlingException"] > 20,
        "{codes:?}"
    );
    let mut stored = stored_data(&sim).await;
    stored.sort();
    expect_stored.sort();
    assert_eq!(
        stored, expect_stored,
        "exactly the entries reported stored are in the stream"
    );
    let stats = sim.stats();
    assert_eq!(stats.entries_seen, 500);
    assert_eq!(stats.entries_forwarded as usize, expect_stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_and_5xx_request_errors_reach_the_client_with_their_codes() {
    let sim = sim(false, 1).await;
    let c = client(&sim, 5_000).await;
    for (code, status) in [
        ("AccessDeniedException", 400),
        ("ResourceNotFoundException", 400),
        ("KMSAccessDeniedException", 400),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
    ] {
        sim.set_faults(Faults {
            request_errors: vec![RequestFault {
                code: code.into(),
                status,
                probability: 1.0,
            }],
            ..Default::default()
        });
        let err = c
            .put_records(&stream(), entries(0, 3, 10))
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some(code), "{err:?}");
        assert_eq!(err.status, Some(status));
        assert_eq!(err.is_retryable(), status >= 500, "{code}");
    }
    sim.set_faults(Faults::default());
    assert!(
        stored_data(&sim).await.is_empty(),
        "nothing stored by a failed request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_times_out_without_storing_and_a_lost_response_times_out_after_storing() {
    let sim = sim(false, 1).await;
    let c = client(&sim, 200).await;
    sim.set_faults(Faults {
        hang_probability: 1.0,
        hang_ms: 600,
        ..Default::default()
    });
    let err = c
        .put_records(&stream(), entries(0, 5, 10))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Timeout, "{err:?}");
    sim.set_faults(Faults {
        lost_response_probability: 1.0,
        hang_ms: 600,
        ..Default::default()
    });
    let err = c
        .put_records(&stream(), entries(100, 5, 10))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Timeout, "{err:?}");
    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut stored = stored_data(&sim).await;
    stored.sort();
    assert_eq!(
        stored,
        (100..105).map(|i| format!("{i:08}")).collect::<Vec<_>>()
    );
    let stats = sim.stats();
    assert_eq!((stats.hangs, stats.lost_responses), (1, 1));
}

/// A lost answer is work the service did: the shard limits apply to it like to any put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_still_counts_against_the_shard_limits() {
    let sim = sim(true, 1).await;
    let c = client(&sim, 100).await;
    sim.set_faults(Faults {
        lost_response_probability: 1.0,
        hang_ms: 150,
        ..Default::default()
    });
    for call in 0..6 {
        let err = c
            .put_records(&stream(), entries(call * 500, 500, 20))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Timeout, "{err:?}");
    }
    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = stored_data(&sim).await.len();
    let stats = sim.stats();
    assert_eq!(stats.lost_responses, 6);
    assert!(
        (900..=2_200).contains(&stored),
        "stored {stored} of 3000 sent in about 1.5 s to one shard"
    );
    assert_eq!(stats.limit_throttled as usize, 3_000 - stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added() {
    let sim = sim(false, 1).await;
    let c = client(&sim, 5_000).await;
    sim.set_faults(Faults {
        latency_ms: 300,
        ..Default::default()
    });
    let start = std::time::Instant::now();
    c.put_records(&stream(), entries(0, 1, 10)).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_the_down_period_break_connections() {
    let sim = sim(false, 1).await;
    let c = client(&sim, 2_000).await;
    sim.set_faults(Faults {
        down_from_ms: Some(0),
        down_until_ms: Some(500),
        ..Default::default()
    });
    let err = c
        .put_records(&stream(), entries(0, 1, 10))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, ApiErrorKind::Connection | ApiErrorKind::Other),
        "{err:?}"
    );
    assert!(err.is_retryable());
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.put_records(&stream(), entries(1, 1, 10))
        .await
        .expect("up again");
    sim.set_faults(Faults {
        reset_probability: 1.0,
        // More than one: a connection dropped before the request went out is retried once
        // by the HTTP client on a fresh one (also dropped then), which made one fault flaky.
        max_faults: Some(3),
        ..Default::default()
    });
    // The pooled connection is closed after each answer; the next ones are reset.
    let first = c.put_records(&stream(), entries(2, 1, 10)).await;
    let second = c.put_records(&stream(), entries(3, 1, 10)).await;
    assert!(first.is_err() || second.is_err(), "{first:?} {second:?}");
    assert!(sim.stats().dropped_connections >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_split_happens() {
    let sim = sim(false, 2).await;
    sim.set_faults(Faults {
        stream: Some(S.into()),
        reshard: Some(Reshard {
            at_ms: 100,
            kind: "split".into(),
        }),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let open = sim
        .client()
        .list_all_shards(&stream())
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.open)
        .count();
    assert_eq!(open, 3);
    assert_eq!(sim.stats().reshards, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_endpoint_changes_faults_while_running() {
    let sim = sim(false, 1).await;
    let port = sim.endpoint().rsplit(':').next().unwrap().to_owned();
    let body = r#"{"request_errors":[{"code":"InternalFailure","status":500,"probability":1.0}]}"#;
    let status = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-d",
            body,
        ])
        .arg(format!("http://127.0.0.1:{port}/_sim/faults"))
        .output();
    match status {
        Ok(out) => assert_eq!(String::from_utf8_lossy(&out.stdout), "204"),
        Err(_) => {
            // No curl here: use the handle, as a test harness would.
            sim.set_faults(serde_json::from_str(body).unwrap());
        }
    }
    assert_eq!(sim.faults().request_errors.len(), 1);
    let err = client(&sim, 5_000)
        .await
        .put_records(&stream(), entries(0, 1, 10))
        .await
        .unwrap_err();
    assert_eq!(err.code.as_deref(), Some("InternalFailure"));
    // And the SDK's own request builder reaches the store untouched otherwise.
    sim.set_faults(Faults::default());
    sim.client()
        .client()
        .put_records()
        .stream_name(S)
        .records(
            PutRecordsRequestEntry::builder()
                .data(Blob::new("00000042"))
                .partition_key("p")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored_data(&sim).await, vec!["00000042".to_string()]);
}

/// A one-shard simulator that keeps no data, and a client of it.
async fn discarding_sim(enforce_limits: bool) -> (SimHandle, Arc<dyn KinesisApi>) {
    let sim = Sim::start(SimConfig {
        streams: vec![(S.into(), 1)],
        enforce_limits,
        discard_data: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client(&sim, 5_000).await;
    (sim, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_that_discards_data_stores_keys_and_counts_limits_and_sizes_on_the_real_data() {
    let (sim, c) = discarding_sim(true).await;
    // 3 calls of 500 entries of 700 bytes: 1.05 MB, over one shard's 1 MiB second even though
    // the store receives no data. The limit must bind on what was sent.
    let (ok, throttled) = put_calls(&c, 3, 700).await;
    assert!(
        throttled > 0,
        "1.05 MB in a burst must exceed 1 MiB/s: {ok} stored"
    );
    // The shard's second is used up; a record over 1 MiB is still refused for its size, as the
    // service refuses it, not throttled.
    let oversize = c
        .put_records(&stream(), entries(8_000, 1, 1024 * 1024 + 10))
        .await
        .expect_err("an oversize record must be refused");
    assert_eq!(
        oversize.code.as_deref(),
        Some("ValidationException"),
        "{oversize:?}"
    );
    let stored = common::read_all(sim.client(), S).await;
    assert_eq!(stored.len(), ok, "every stored entry reads back");
    assert!(
        stored.iter().all(|r| r.record.data.is_empty()),
        "no data kept"
    );
    assert!(
        stored
            .iter()
            .all(|r| r.record.partition_key.starts_with('k')),
        "keys kept"
    );
    sim.shutdown().await;

    // Without limits (which would throttle it first), a record over 1 MiB is refused by the
    // store as it would be with its data, and one within the limit is stored without it.
    let (sim, c) = discarding_sim(false).await;
    let oversize = c
        .put_records(&stream(), entries(9_000, 1, 1024 * 1024 + 10))
        .await;
    assert!(
        oversize.is_err(),
        "an oversize record must be refused: {oversize:?}"
    );
    let fits = c
        .put_records(&stream(), entries(9_001, 1, 1024 * 1024 - 100))
        .await
        .unwrap();
    assert!(matches!(fits[..], [PutRecordsResultEntry::Stored { .. }]));
    let stored = common::read_all(sim.client(), S).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].record.data.is_empty());
    sim.shutdown().await;
}
