//! The fault matrix: for each fault `kpl sim` can inject, push records through the producer
//! and check that every future resolved, every record reported put is in the stream, every
//! record not in the stream was reported failed with a reason, fatal errors surface within a
//! second, and retries resend only failed entries (duplicates appear only where a stored
//! answer was lost). Also ~10 MiB through one limited shard, paced by the limiter.
//!
//! `KPL_RELIABILITY_OUT=FILE` writes the table of results (scripts/reliability.sh does, into
//! RELIABILITY.md).

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kpl::UserRecord;
use kpl::client::KinesisApi;
use kpl::dedup::Deduper;
use kpl::producer::{FailureReason, Producer, ProducerConfig};
use kpl_sim::{EntryFault, Faults, RequestFault, Reshard, Sim, SimConfig, SimStats};

struct Case {
    name: &'static str,
    faults: Faults,
    /// The fault fired: checked on the simulator's own counters.
    fired: fn(&SimStats) -> bool,
    records: usize,
    size: usize,
    shards: u32,
    fatal: bool,
    config: ProducerConfig,
}

#[derive(Debug, Default)]
struct Row {
    name: &'static str,
    records: usize,
    acked: usize,
    failed: usize,
    duplicates: usize,
    /// With dedup ids: copies a `Deduper` dropped over everything read (KCL-valid or not).
    deduped: Option<u64>,
    lost: usize,
    throttled: u64,
    retries: u64,
    entries_forwarded: u64,
    kinesis_records_put: u64,
    seconds: f64,
    reasons: HashMap<String, usize>,
}

/// Records go out in this many waves, `WAVE_GAP` apart, so a run makes many calls.
const WAVES: usize = 40;
const WAVE_GAP: Duration = Duration::from_millis(50);

fn base_config() -> ProducerConfig {
    ProducerConfig {
        record_max_buffered_time: Duration::from_millis(20),
        request_timeout: Duration::from_millis(500),
        record_ttl: Duration::from_secs(20),
        max_attempts: 40,
        ..Default::default()
    }
}

fn case(name: &'static str, faults: Faults, fired: fn(&SimStats) -> bool) -> Case {
    Case {
        name,
        faults,
        fired,
        records: 2_000,
        size: 100,
        shards: 4,
        fatal: false,
        config: base_config(),
    }
}

fn entry(code: &str, p: f64) -> Faults {
    Faults {
        entry_failures: vec![EntryFault {
            code: code.into(),
            probability: p,
        }],
        ..Default::default()
    }
}

fn request(code: &str, status: u16, p: f64) -> Faults {
    Faults {
        request_errors: vec![RequestFault {
            code: code.into(),
            status,
            probability: p,
        }],
        ..Default::default()
    }
}

fn fatal(name: &'static str, code: &str) -> Case {
    Case {
        fatal: true,
        ..case(name, request(code, 400, 1.0), |s| {
            !s.request_errors.is_empty()
        })
    }
}

async fn run(c: Case) -> Row {
    let sim = Sim::start(SimConfig {
        streams: vec![("m".into(), c.shards)],
        seed: 11,
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Arc<dyn KinesisApi> = common::api(sim.endpoint(), Duration::from_secs(10)).await;
    let producer = Producer::new(api, "m", c.config.clone()).await.unwrap();
    let mut faults = c.faults.clone();
    faults.stream = Some("m".into());
    sim.set_faults(faults);

    let sent: Vec<UserRecord> = (0..c.records)
        .map(|i| {
            UserRecord::new(
                format!("k{}", i % 200),
                format!("{i:08}-{}", "x".repeat(c.size.saturating_sub(9))),
            )
        })
        .collect();
    let start = Instant::now();
    let mut futures = Vec::new();
    let per_wave = c.records.div_ceil(WAVES);
    for wave in sent.chunks(per_wave) {
        for r in wave {
            futures.push(producer.send(r.clone()).await.expect("accepted"));
        }
        if !c.fatal {
            tokio::time::sleep(WAVE_GAP).await;
        }
    }
    let mut outcomes = Vec::new();
    for f in futures {
        // Every future resolves: a hang here fails the test through the timeout below.
        outcomes.push(f.await);
    }
    let seconds = start.elapsed().as_secs_f64();
    let m = producer.metrics();
    producer
        .shutdown()
        .await
        .expect("every record seen through");
    let stats = sim.stats();
    assert!(
        (c.fired)(&stats),
        "{}: the fault never fired: {stats:?}",
        c.name
    );
    sim.set_faults(Faults::default());
    // Let hung answers finish before reading.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let read = common::read_all(sim.client(), "m").await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in read.iter().filter(|r| r.kcl_valid) {
        let id = String::from_utf8(r.record.data[..8].to_vec()).unwrap();
        *copies.entry(id).or_default() += 1;
    }
    let mut row = Row {
        name: c.name,
        records: c.records,
        seconds,
        throttled: m.throttled_entries,
        retries: m.retries,
        entries_forwarded: stats.entries_forwarded,
        kinesis_records_put: m.kinesis_records_put,
        ..Default::default()
    };
    for (i, outcome) in outcomes.iter().enumerate() {
        let id = format!("{i:08}");
        let in_stream = copies.get(&id).copied().unwrap_or(0);
        match outcome {
            Ok(_) => {
                row.acked += 1;
                if in_stream == 0 {
                    row.lost += 1;
                }
            }
            Err(failure) => {
                row.failed += 1;
                let reason = match &failure.reason {
                    FailureReason::Fatal { code, .. } => code.clone(),
                    FailureReason::Expired { .. } => "Expired".into(),
                    FailureReason::AttemptsExhausted { .. } => "AttemptsExhausted".into(),
                    other => other.to_string(),
                };
                *row.reasons.entry(reason).or_default() += 1;
                assert!(failure.record.is_some(), "a failure hands the record back");
            }
        }
        row.duplicates += in_stream.saturating_sub(1);
    }
    assert_eq!(
        row.lost, 0,
        "{}: records reported put but not in the stream",
        c.name
    );
    if c.config.dedup_ids {
        // Dedup over every copy a reader without the KCL's range check would see.
        let mut deduper = Deduper::new(1 << 20);
        let mut kept: HashMap<String, usize> = HashMap::new();
        for r in &read {
            assert!(
                r.record.dedup_id().is_some(),
                "{}: a record without id",
                c.name
            );
            if deduper.keep(&r.record) {
                let id = String::from_utf8(r.record.data[..8].to_vec()).unwrap();
                *kept.entry(id).or_default() += 1;
            }
        }
        for (i, outcome) in outcomes.iter().enumerate() {
            let n = kept.get(&format!("{i:08}")).copied().unwrap_or(0);
            if outcome.is_ok() {
                assert_eq!(n, 1, "{}: record {i} after dedup", c.name);
            } else {
                assert!(n <= 1, "{}: record {i} after dedup", c.name);
            }
        }
        row.deduped = Some(deduper.duplicates());
    }
    assert_eq!(row.acked + row.failed, c.records);
    if c.fatal {
        assert_eq!(
            row.failed, c.records,
            "{}: a fatal error fails every record",
            c.name
        );
        assert!(
            seconds < 1.0,
            "{}: fatal errors must surface within a second of the first send, took {seconds:.2}s",
            c.name
        );
        assert!(copies.is_empty());
    } else {
        assert_eq!(
            row.acked, c.records,
            "{}: every record stored: {:?}",
            c.name, row.reasons
        );
    }
    row
}

/// A case whose faults duplicate records, run with dedup ids on.
fn deduped(mut c: Case) -> Case {
    c.config.dedup_ids = true;
    c
}

fn entry_failed(s: &SimStats) -> bool {
    s.entries_failed.values().sum::<u64>() > 0
}

fn cases() -> Vec<Case> {
    vec![
        case("none", Faults::default(), |s| s.put_requests > 0),
        case(
            "throttle 30% of entries",
            entry("ProvisionedThroughputExceededException", 0.3),
            entry_failed,
        ),
        case(
            "InternalFailure on 20% of entries",
            entry("InternalFailure", 0.2),
            entry_failed,
        ),
        case(
            "KMSThrottling on 20% of entries",
            entry("KMSThrottlingException", 0.2),
            entry_failed,
        ),
        fatal("AccessDenied on every request", "AccessDeniedException"),
        fatal(
            "ResourceNotFound on every request",
            "ResourceNotFoundException",
        ),
        fatal(
            "KMSAccessDenied on every request",
            "KMSAccessDeniedException",
        ),
        case(
            "HTTP 500 on 30% of requests",
            request("InternalFailure", 500, 0.3),
            |s| !s.request_errors.is_empty(),
        ),
        case(
            "HTTP 503 on 30% of requests",
            request("ServiceUnavailable", 503, 0.3),
            |s| !s.request_errors.is_empty(),
        ),
        case(
            "200 ms added latency",
            Faults {
                latency_ms: 200,
                ..Default::default()
            },
            |s| s.put_requests > 0,
        ),
        case(
            "20% of requests hang past the timeout",
            Faults {
                hang_probability: 0.2,
                hang_ms: 1_500,
                ..Default::default()
            },
            |s| s.hangs > 0,
        ),
        deduped(case(
            "stored, response lost (20%)",
            Faults {
                lost_response_probability: 0.2,
                hang_ms: 1_500,
                ..Default::default()
            },
            |s| s.lost_responses > 0,
        )),
        deduped(case(
            "20% of connections reset",
            Faults {
                reset_probability: 0.2,
                ..Default::default()
            },
            |s| s.dropped_connections > 0,
        )),
        deduped(case(
            "endpoint down for 1 s",
            Faults {
                down_from_ms: Some(300),
                down_until_ms: Some(1_300),
                ..Default::default()
            },
            |s| s.dropped_connections > 0,
        )),
        deduped(case(
            "split at 500 ms",
            Faults {
                reshard: Some(Reshard {
                    at_ms: 500,
                    kind: "split".into(),
                }),
                ..Default::default()
            },
            |s| s.reshards == 1,
        )),
        deduped(case(
            "merge at 500 ms",
            Faults {
                reshard: Some(Reshard {
                    at_ms: 500,
                    kind: "merge".into(),
                }),
                ..Default::default()
            },
            |s| s.reshards == 1,
        )),
        Case {
            records: 10_240,
            size: 1_024,
            shards: 1,
            config: ProducerConfig {
                record_max_buffered_time: Duration::from_millis(100),
                record_ttl: Duration::from_secs(60),
                ..base_config()
            },
            ..case("10 MiB through one limited shard", Faults::default(), |s| {
                s.put_requests > 0
            })
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let mut table = String::from(
        "| fault | records in | acked | failed | duplicates | duplicates dropped by dedup ids | lost | throttled entries | retries | Kinesis records put | entries passed to the store | time (s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cases() {
        let name = c.name;
        let row = tokio::time::timeout(Duration::from_secs(90), run(c))
            .await
            .unwrap_or_else(|_| panic!("{name}: not every future resolved within 90 s"));
        let failed = if row.reasons.is_empty() {
            row.failed.to_string()
        } else {
            let mut reasons: Vec<_> = row.reasons.iter().collect();
            reasons.sort();
            format!(
                "{} ({})",
                row.failed,
                reasons
                    .iter()
                    .map(|(r, n)| format!("{r}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            row.name,
            row.records,
            row.acked,
            failed,
            row.duplicates,
            row.deduped.map_or("-".to_owned(), |n| n.to_string()),
            row.lost,
            row.throttled,
            row.retries,
            row.kinesis_records_put,
            row.entries_forwarded,
            row.seconds
        )
        .unwrap();
        // Only a lost answer to a stored call may duplicate: everything else resends only what
        // was not stored.
        if name.contains("lost") {
            assert!(
                row.duplicates > 0,
                "{name}: a lost answer is resent, so duplicates appear"
            );
        } else if !name.contains("reset") && !name.contains("down") {
            assert_eq!(
                row.duplicates, 0,
                "{name}: retries duplicated stored records"
            );
        }
        if name.starts_with("10 MiB") {
            // Paced by the limiter: few entries throttled by the shard.
            assert!(
                row.throttled * 20 <= row.kinesis_records_put,
                "{name}: {} throttled entries for {} Kinesis records",
                row.throttled,
                row.kinesis_records_put
            );
        }
    }
    eprintln!("{table}");
    if let Ok(path) = std::env::var("KPL_RELIABILITY_OUT") {
        std::fs::write(path, &table).unwrap();
    }
}
