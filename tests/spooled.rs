//! `SpooledProducer` as its users rely on it, written to break it: every record appended gets
//! exactly one delivery report (stored on the shard its receipt names, or failed with a reason
//! and in the dead-letter file); a restart on the same directory resends exactly what was
//! unresolved, with the same dedup ids; an outage of many minutes fills the spool, not the
//! heap, and nothing expires; a full spool blocks or refuses; a torn tail is skipped with the
//! rest delivered; flush and shutdown end in bounded time; strict ordering holds per key.
//! Against the in-memory Kinesis on tokio's paused clock (the spool's own threads run in real
//! time beside it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpl::UserRecord;
use kpl::client::memory::{MemoryKinesis, Plan, StoredRecord};
use kpl::client::{ApiError, KinesisApi};
use kpl::codec::deaggregate::{DeaggregatedRecord, Deaggregator};
use kpl::dedup::Deduper;
use kpl::producer::{
    AppendError, Delivery, FailureReason, ProducerConfig, SpooledProducer, SpooledProducerError,
};
use kpl::spool::{DEAD_LETTER_FILE, SpoolConfig, SpoolError, SpoolId, SyncPolicy, WhenFull};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const STREAM: &str = "s";

fn record(i: usize, keys: usize) -> UserRecord {
    let key = i % keys;
    UserRecord::new(
        format!("key-{key}"),
        format!("{key}:{:06}:{}", i / keys, "x".repeat(40)),
    )
}

fn spool_config() -> SpoolConfig {
    SpoolConfig {
        sync: SyncPolicy::Never,
        segment_bytes: 64 * 1024,
        ..SpoolConfig::default()
    }
}

fn config() -> ProducerConfig {
    ProducerConfig {
        rate_limit_enabled: false,
        rng_seed: Some(7),
        ..ProducerConfig::default()
    }
}

/// A producer on `dir` and a task collecting its delivery reports until the channel closes.
struct Run {
    producer: SpooledProducer,
    reports: JoinHandle<Vec<Delivery>>,
}

async fn start(
    fake: &Arc<MemoryKinesis>,
    dir: &Path,
    config: ProducerConfig,
    spool: SpoolConfig,
) -> Run {
    let api: Arc<dyn KinesisApi> = fake.clone();
    let (producer, rx) = SpooledProducer::new(api, STREAM, config, dir, spool)
        .await
        .expect("the spooled producer starts");
    Run {
        producer,
        reports: collect(rx),
    }
}

fn collect(mut rx: mpsc::Receiver<Vec<Delivery>>) -> JoinHandle<Vec<Delivery>> {
    tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            assert!(!batch.is_empty(), "a delivery batch is never empty");
            all.extend(batch);
        }
        all
    })
}

/// Waits for the report channel to close (bounded) and returns every delivery.
async fn finish(run: Run) -> Vec<Delivery> {
    let Run { producer, reports } = run;
    drop(producer);
    tokio::time::timeout(Duration::from_secs(600), reports)
        .await
        .expect("the report channel closes once the producer has stopped")
        .expect("the collector does not panic")
}

/// Every delivery id at most once; returns them.
fn ids_once(deliveries: &[Delivery]) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for d in deliveries {
        assert!(ids.insert(d.id.0), "spool id {} reported twice", d.id);
    }
    ids
}

/// Stored user records, deaggregated, with their shard, in stream order per shard.
fn read_back(stored: &[StoredRecord]) -> Vec<(String, DeaggregatedRecord)> {
    let mut stored = stored.to_vec();
    stored.sort_by(|a, b| {
        (&a.shard_id, a.sequence_number.len(), &a.sequence_number).cmp(&(
            &b.shard_id,
            b.sequence_number.len(),
            &b.sequence_number,
        ))
    });
    let deagg = Deaggregator::new().strict(true);
    let mut out = Vec::new();
    for s in &stored {
        for u in deagg
            .deaggregate(&s.data, &s.partition_key, s.explicit_hash_key.as_deref())
            .expect("kpl reads what kpl writes")
        {
            out.push((s.shard_id.clone(), u));
        }
    }
    out
}

/// The dead-letter file's lines as (spool id, reason).
fn dead_letters(dir: &Path) -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (
                v["spool_id"].as_u64().expect("spool_id"),
                v["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect()
}

/// Each delivered-as-stored record is on the shard its receipt names; each failure is in the
/// dead-letter file with its reason. `appended` maps spool id to the record.
fn check_deliveries(
    deliveries: &[Delivery],
    appended: &HashMap<u64, UserRecord>,
    fake: &MemoryKinesis,
    dir: &Path,
) {
    let stored = read_back(&fake.stored());
    let mut where_stored: HashMap<&[u8], BTreeSet<&str>> = HashMap::new();
    for (shard, u) in &stored {
        where_stored
            .entry(u.data.as_ref())
            .or_default()
            .insert(shard.as_str());
    }
    let dead: HashMap<u64, String> = dead_letters(dir).into_iter().collect();
    for d in deliveries {
        let record = &appended[&d.id.0];
        match &d.result {
            Ok(receipt) => {
                let shards = where_stored
                    .get(record.data.as_ref())
                    .unwrap_or_else(|| panic!("record {} reported stored is not stored", d.id));
                assert!(
                    shards.contains(&*receipt.shard_id),
                    "record {} reported on {} but stored on {shards:?}",
                    d.id,
                    receipt.shard_id
                );
                assert!(!dead.contains_key(&d.id.0), "stored and dead-lettered");
            }
            Err(failure) => {
                let reason = dead
                    .get(&d.id.0)
                    .unwrap_or_else(|| panic!("failed record {} is not a dead letter", d.id));
                assert_eq!(reason, &failure.to_string());
            }
        }
    }
}

async fn append_all(
    producer: &SpooledProducer,
    records: impl IntoIterator<Item = UserRecord>,
) -> HashMap<u64, UserRecord> {
    let mut appended = HashMap::new();
    for r in records {
        let id = producer.append(r.clone()).await.expect("appended");
        appended.insert(id.0, r);
    }
    appended
}

/// Fails for good (a fatal code) every entry whose partition key is `key-0`.
fn fatal_for_key_0() -> impl FnMut(&kpl::client::memory::Call<'_>) -> Plan + Send + 'static {
    |call| {
        Plan::FailEntries(
            call.entries
                .iter()
                .map(|e| (e.partition_key == "key-0").then(|| "AccessDeniedException".to_string()))
                .collect(),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn every_appended_record_gets_exactly_one_delivery_stored_or_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(4));
    // A throttled call now and then (retried) and key-0's records fatally refused.
    let mut throttle = 0u64;
    let mut fatal = fatal_for_key_0();
    fake.set_plan(move |call| {
        throttle += 1;
        if throttle.is_multiple_of(3) {
            Plan::Error(ApiError::service(
                "ProvisionedThroughputExceededException",
                Some(400),
                "slow down",
            ))
        } else {
            fatal(call)
        }
    });
    let run = start(
        &fake,
        dir.path(),
        ProducerConfig {
            aggregation_enabled: false,
            ..config()
        },
        spool_config(),
    )
    .await;
    let mut appended = append_all(&run.producer, (0..300).map(|i| record(i, 10))).await;
    let batch: Vec<UserRecord> = (300..700).map(|i| record(i, 10)).collect();
    let ids = run.producer.append_batch(batch.clone()).await.unwrap();
    assert_eq!(ids.end.0 - ids.start.0, 400);
    for (id, r) in (ids.start.0..ids.end.0).zip(batch) {
        appended.insert(id, r);
    }
    run.producer.shutdown().await.expect("shutdown");
    assert_eq!(run.producer.unresolved(), 0);
    let deliveries = finish(run).await;
    let ids = ids_once(&deliveries);
    assert_eq!(ids, appended.keys().copied().collect::<BTreeSet<_>>());
    let failed: Vec<&Delivery> = deliveries.iter().filter(|d| d.result.is_err()).collect();
    assert_eq!(failed.len(), 70, "key-0's 70 records fail for good");
    for d in &failed {
        assert_eq!(appended[&d.id.0].partition_key, "key-0");
        let failure = d.result.as_ref().unwrap_err();
        assert!(
            matches!(failure.reason, FailureReason::Fatal { .. }),
            "{failure}"
        );
    }
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    assert_eq!(dead_letters(dir.path()).len(), 70, "each dead letter once");
}

/// Counts PutRecords calls and wakes whoever waits for a number of them.
#[derive(Clone, Default)]
struct Calls {
    seen: Arc<Mutex<u64>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Calls {
    fn bump(&self) -> u64 {
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        self.changed.notify_waiters();
        *seen - 1
    }

    async fn at_least(&self, n: u64) {
        loop {
            let changed = self.changed.notified();
            if *self.seen.lock().unwrap() >= n {
                return;
            }
            changed.await;
        }
    }
}

/// Calls 0-2 store, 3-5 store but never answer (a lost response), later ones hang.
fn store_then_lose_then_hang(fake: &MemoryKinesis) -> Calls {
    let calls = Calls::default();
    let counter = calls.clone();
    fake.set_plan(move |_| match counter.bump() {
        0..=2 => Plan::Store,
        3..=5 => Plan::StoreThenHang,
        _ => Plan::Hang,
    });
    calls
}

fn restart_config() -> ProducerConfig {
    ProducerConfig {
        dedup_ids: true,
        aggregation_max_count: 20,
        collection_max_count: 5,
        request_timeout: Duration::from_secs(3600),
        ..config()
    }
}

/// How the first process ends before the restart.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Abort,
    Drop,
}

async fn restart_resends_exactly_what_was_unresolved(ending: Ending) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(4));
    let calls = store_then_lose_then_hang(&fake);
    let run = start(&fake, dir.path(), restart_config(), spool_config()).await;
    let producer_id = run
        .producer
        .dedup_id(SpoolId(0))
        .expect("dedup ids on")
        .producer;
    let appended = append_all(&run.producer, (0..1000).map(|i| record(i, 10))).await;
    calls.at_least(10).await;
    let first = match ending {
        Ending::Abort => {
            run.producer.abort().await;
            finish(run).await
        }
        Ending::Drop => {
            let Run { producer, reports } = run;
            drop(producer);
            reports.await.unwrap()
        }
    };
    let first_ids = ids_once(&first);
    let failed: Vec<String> = first
        .iter()
        .filter_map(|d| d.result.as_ref().err().map(|f| f.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "nothing failed for good in the first run: {failed:?}"
    );
    assert!(
        !first_ids.is_empty() && first_ids.len() < 1000,
        "{}",
        first_ids.len()
    );
    check_deliveries(&first, &appended, &fake, dir.path());

    fake.clear_plan();
    let api: Arc<dyn KinesisApi> = fake.clone();
    // The first process's spool closes once its feeder has stopped.
    let mut opened = None;
    for _ in 0..1000 {
        match SpooledProducer::new(
            api.clone(),
            STREAM,
            restart_config(),
            dir.path(),
            spool_config(),
        )
        .await
        {
            Ok(p) => {
                opened = Some(p);
                break;
            }
            Err(SpooledProducerError::Spool(SpoolError::Locked(_))) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (producer, rx) = opened.expect("the directory is free once the first producer is gone");
    let run = Run {
        producer,
        reports: collect(rx),
    };
    assert_eq!(
        run.producer.unresolved(),
        1000 - first_ids.len() as u64,
        "the spool holds exactly what was not reported"
    );
    assert_eq!(
        run.producer.dedup_id(SpoolId(0)).unwrap().producer,
        producer_id,
        "the dedup producer id is kept in the spool"
    );
    run.producer.shutdown().await.expect("shutdown");
    let second = finish(run).await;
    let second_ids = ids_once(&second);
    let all: BTreeSet<u64> = appended.keys().copied().collect();
    assert!(first_ids.is_disjoint(&second_ids), "nothing reported twice");
    assert_eq!(
        first_ids
            .union(&second_ids)
            .copied()
            .collect::<BTreeSet<_>>(),
        all,
        "every record reported once over both runs"
    );
    check_deliveries(&second, &appended, &fake, dir.path());
    for d in first.iter().chain(&second) {
        let receipt = d.result.as_ref().unwrap();
        assert_eq!(
            receipt.dedup_id,
            Some(kpl::dedup::DedupId {
                producer: producer_id,
                seq: d.id.0
            })
        );
    }

    // Lost answers and the resend stored some records twice; dedup ids leave each once.
    let stored = read_back(&fake.stored());
    assert!(
        stored.len() > 1000,
        "the lost answers' records were stored twice"
    );
    let mut deduper = Deduper::new(100_000);
    let mut kept: Vec<Vec<u8>> = stored
        .iter()
        .filter(|(_, u)| deduper.keep(u))
        .map(|(_, u)| u.data.to_vec())
        .collect();
    kept.sort();
    let mut sent: Vec<Vec<u8>> = appended.values().map(|r| r.data.to_vec()).collect();
    sent.sort();
    assert_eq!(kept, sent, "after dedup: each record once");
    assert_eq!(deduper.duplicates() as usize, stored.len() - 1000);
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_abort_resends_exactly_what_was_unresolved_with_the_same_dedup_ids() {
    restart_resends_exactly_what_was_unresolved(Ending::Abort).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_dropping_without_shutdown_resends_exactly_what_was_unresolved() {
    restart_resends_exactly_what_was_unresolved(Ending::Drop).await;
}

/// Every call fails (503) while the outage is on; then everything is stored. A switch, not a
/// deadline: the spool's threads run in real time, so the paused clock may race past any
/// deadline while they work.
#[derive(Clone)]
struct Outage {
    on: Arc<std::sync::atomic::AtomicBool>,
    calls: Calls,
}

impl Outage {
    fn start(fake: &MemoryKinesis) -> Outage {
        let outage = Outage {
            on: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            calls: Calls::default(),
        };
        let o = outage.clone();
        fake.set_plan(move |_| {
            o.calls.bump();
            if o.on.load(std::sync::atomic::Ordering::SeqCst) {
                Plan::Error(ApiError::from_answer(
                    503,
                    Some("ServiceUnavailable".into()),
                    "down",
                ))
            } else {
                Plan::Store
            }
        });
        outage
    }

    fn end(&self) {
        self.on.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_many_minutes_fills_the_spool_not_the_heap_and_nothing_expires() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    let outage = Outage::start(&fake);
    let max = 100;
    let run = start(
        &fake,
        dir.path(),
        ProducerConfig {
            max_outstanding_records: max,
            ..config()
        },
        spool_config(),
    )
    .await;
    let began = Instant::now();
    let appended = append_all(&run.producer, (0..20 * max).map(|i| record(i, 50))).await;
    assert_eq!(appended.len(), 20 * max);
    // Retried all along for 15 minutes of virtual time: nothing resolves (no expiry at 30 s,
    // no attempts used up).
    outage.calls.at_least(50).await;
    tokio::time::sleep(Duration::from_secs(15 * 60)).await;
    let calls = fake.put_calls();
    assert!(began.elapsed() >= Duration::from_secs(15 * 60));
    assert!(calls > 150, "retried all along: {calls} calls");
    assert_eq!(
        run.producer.unresolved(),
        20 * max as u64,
        "nothing resolved in the outage"
    );
    assert_eq!(run.producer.spool().stats().entries, 20 * max as u64);
    assert!(
        run.producer.peak_outstanding_records() <= max as u64,
        "{} in memory",
        run.producer.peak_outstanding_records()
    );
    assert!(dead_letters(dir.path()).is_empty());
    outage.end();
    run.producer.flush().await.unwrap();
    assert!(run.producer.peak_outstanding_records() <= max as u64);
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 20 * max);
    assert!(deliveries.iter().all(|d| d.result.is_ok()), "all stored");
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    assert!(dead_letters(dir.path()).is_empty());
}

fn tiny_spool(when_full: WhenFull) -> SpoolConfig {
    SpoolConfig {
        sync: SyncPolicy::Never,
        segment_bytes: 4096,
        max_bytes: 4 * 4096,
        when_full,
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_blocks_appends_until_acks_free_room_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    let outage = Outage::start(&fake);
    let run = start(&fake, dir.path(), config(), tiny_spool(WhenFull::Block)).await;
    let producer = run.producer.clone();
    let appended = Arc::new(Mutex::new(HashMap::new()));
    let writer = {
        let appended = appended.clone();
        tokio::spawn(async move {
            for i in 0..1000 {
                let r = record(i, 10);
                let id = producer.append(r.clone()).await.expect("appended");
                appended.lock().unwrap().insert(id.0, r);
            }
        })
    };
    // 16 KiB of ~75-byte frames: fewer than 300 records fit while nothing is acknowledged.
    for _ in 0..100_000 {
        if appended.lock().unwrap().len() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = appended.lock().unwrap().len();
    assert!(
        !writer.is_finished(),
        "appends wait while the spool is full"
    );
    assert!(
        (150..300).contains(&during),
        "{during} appended before the cap"
    );
    assert!(run.producer.spool().stats().bytes <= 4 * 4096);
    // The waiting append's record counts as unresolved from the moment it is handed over.
    assert_eq!(run.producer.unresolved(), during as u64 + 1);
    outage.end();
    writer.await.expect("appends resume once acks free room");
    run.producer.shutdown().await.unwrap();
    let appended = std::mem::take(&mut *appended.lock().unwrap());
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 1000);
    assert!(deliveries.iter().all(|d| d.result.is_ok()));
    check_deliveries(&deliveries, &appended, &fake, dir.path());
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_with_refuse_fails_appends_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    let outage = Outage::start(&fake);
    let run = start(&fake, dir.path(), config(), tiny_spool(WhenFull::Refuse)).await;
    let mut appended = HashMap::new();
    let error = loop {
        let r = record(appended.len(), 10);
        match run.producer.append(r.clone()).await {
            Ok(id) => {
                appended.insert(id.0, r);
            }
            Err(e) => break e,
        }
        assert!(appended.len() < 1000, "the cap is reached");
    };
    assert!(
        matches!(error, AppendError::Spool(SpoolError::Full { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("spool is full") && text.contains("max_bytes"),
        "{text}"
    );
    assert_eq!(
        run.producer.unresolved(),
        appended.len() as u64,
        "the refused one is not counted"
    );
    outage.end();
    run.producer.flush().await.unwrap();
    let r = record(5000, 10);
    let id = run.producer.append(r.clone()).await.expect("room again");
    appended.insert(id.0, r);
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries), appended.keys().copied().collect());
    check_deliveries(&deliveries, &appended, &fake, dir.path());
}

/// The largest segment file in `dir`.
fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 16)
        .collect();
    segments.sort();
    segments.pop().expect("a segment with records")
}

#[derive(Clone, Copy)]
enum Damage {
    /// The last frame a few bytes short (a crash mid-write).
    Torn,
    /// A flipped byte in the last frame's data (its CRC no longer matches).
    Corrupt,
}

#[tokio::test(start_paused = true)]
async fn a_torn_tail_found_at_reopen_is_reported_and_the_rest_is_delivered() {
    damaged_tail_is_skipped(Damage::Torn).await;
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_tail_found_at_reopen_is_reported_and_the_rest_is_delivered() {
    damaged_tail_is_skipped(Damage::Corrupt).await;
}

async fn damaged_tail_is_skipped(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    // A first process spools 100 records and dies before sending any.
    fake.set_plan(|_| Plan::Hang);
    let run = start(&fake, dir.path(), config(), spool_config()).await;
    let appended = append_all(&run.producer, (0..100).map(|i| record(i, 10))).await;
    run.producer.abort().await;
    assert!(finish(run).await.is_empty());
    // Its last frame is damaged.
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len();
    match damage {
        Damage::Torn => bytes.truncate(len - 5),
        Damage::Corrupt => bytes[len - 3] ^= 0x40,
    }
    std::fs::write(&segment, bytes).unwrap();

    fake.clear_plan();
    let run = start(&fake, dir.path(), config(), spool_config()).await;
    let recovery = run.producer.spool().recovery();
    assert_eq!(recovery.problems.len(), 1, "{recovery:?}");
    assert_eq!(recovery.entries, 99);
    assert_eq!(run.producer.unresolved(), 99);
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    let ids = ids_once(&deliveries);
    assert_eq!(ids, (0..99).collect(), "all but the damaged last one");
    check_deliveries(&deliveries, &appended, &fake, dir.path());
}

#[tokio::test(start_paused = true)]
async fn a_fatal_failure_goes_to_the_dead_letters_once_and_not_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(fatal_for_key_0());
    let cfg = ProducerConfig {
        aggregation_enabled: false,
        ..config()
    };
    let run = start(&fake, dir.path(), cfg.clone(), spool_config()).await;
    let appended = append_all(&run.producer, (0..100).map(|i| record(i, 5))).await;
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 100);
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    let dead = dead_letters(dir.path());
    assert_eq!(dead.len(), 20);

    // And when the first process aborts right after the failures are reported.
    let run = start(&fake, dir.path(), cfg.clone(), spool_config()).await;
    assert_eq!(run.producer.unresolved(), 0, "nothing left to resend");
    let more = append_all(&run.producer, (100..200).map(|i| record(i, 5))).await;
    let mut reported = 0;
    let Run { producer, reports } = run;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let relay = tokio::spawn(async move {
        let deliveries = reports.await.unwrap();
        let _ = tx.send(deliveries);
    });
    producer.flush().await.unwrap();
    producer.abort().await;
    drop(producer);
    relay.await.unwrap();
    let second = rx.recv().await.unwrap();
    reported += second.len();
    assert_eq!(reported, 100);
    check_deliveries(&second, &more, &fake, dir.path());
    assert_eq!(dead_letters(dir.path()).len(), 40);

    fake.clear_plan();
    let run = start(&fake, dir.path(), cfg, spool_config()).await;
    assert_eq!(run.producer.unresolved(), 0, "dead letters are not resent");
    run.producer.shutdown().await.unwrap();
    assert!(finish(run).await.is_empty());
    assert_eq!(dead_letters(dir.path()).len(), 40, "each dead letter once");
}

#[tokio::test(start_paused = true)]
async fn flush_and_shutdown_return_in_bounded_virtual_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(4));
    let run = start(&fake, dir.path(), config(), spool_config()).await;
    // Nothing spooled: at once.
    let t = Instant::now();
    run.producer.flush().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let appended = append_all(&run.producer, (0..2000).map(|i| record(i, 10))).await;
    let t = Instant::now();
    run.producer.flush().await.unwrap();
    assert_eq!(run.producer.unresolved(), 0);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "flush took {:?}",
        t.elapsed()
    );
    let more = append_all(&run.producer, (2000..2100).map(|i| record(i, 10))).await;
    let t = Instant::now();
    run.producer.shutdown().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(matches!(
        run.producer.append(record(0, 1)).await,
        Err(AppendError::Refused { .. })
    ));
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 2100);
    let appended: HashMap<u64, UserRecord> = appended.into_iter().chain(more).collect();
    check_deliveries(&deliveries, &appended, &fake, dir.path());
}

/// `flush` and `shutdown` send what the producer holds at once, as `Producer::flush` does,
/// instead of waiting out `record_max_buffered_time` in the open aggregates (they did: the
/// last records of a `kpl put --spool` waited the whole buffered time). On the real clock: the
/// spool's threads run in real time, and a paused clock would jump to the aggregates' deadline
/// while they work. The timeouts guard against the half-hour wait, they measure nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_shutdown_do_not_wait_out_the_buffered_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(4));
    let config = ProducerConfig {
        record_max_buffered_time: Duration::from_secs(30 * 60),
        ..config()
    };
    let run = start(&fake, dir.path(), config, spool_config()).await;
    let appended = append_all(&run.producer, (0..300).map(|i| record(i, 10))).await;
    tokio::time::timeout(Duration::from_secs(60), run.producer.flush())
        .await
        .expect("flush sends the open aggregates at once")
        .unwrap();
    assert_eq!(run.producer.unresolved(), 0);
    let more = append_all(&run.producer, (300..400).map(|i| record(i, 10))).await;
    tokio::time::timeout(Duration::from_secs(60), run.producer.shutdown())
        .await
        .expect("shutdown sends the open aggregates at once")
        .unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 400);
    let appended: HashMap<u64, UserRecord> = appended.into_iter().chain(more).collect();
    check_deliveries(&deliveries, &appended, &fake, dir.path());
}

#[tokio::test(start_paused = true)]
async fn strict_ordering_keeps_each_keys_order_under_throttling() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    let mut n = 0u64;
    fake.set_plan(move |call| {
        n += 1;
        Plan::FailEntries(
            (0..call.entries.len())
                .map(|i| {
                    (n + i as u64)
                        .is_multiple_of(3)
                        .then(|| "ProvisionedThroughputExceededException".into())
                })
                .collect(),
        )
    });
    let run = start(
        &fake,
        dir.path(),
        ProducerConfig {
            strict_ordering: true,
            aggregation_max_count: 10,
            ..config()
        },
        spool_config(),
    )
    .await;
    let appended = append_all(&run.producer, (0..1000).map(|i| record(i, 7))).await;
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries).len(), 1000);
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    let mut per_key: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (_, u) in read_back(&fake.stored()) {
        per_key
            .entry(u.partition_key.to_string())
            .or_default()
            .push(u.data.to_vec());
    }
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..1000 {
        let r = record(i, 7);
        expected
            .entry(r.partition_key.clone())
            .or_default()
            .push(r.data.to_vec());
    }
    assert_eq!(per_key, expected, "each key stored once, in append order");
}

#[tokio::test(start_paused = true)]
async fn a_spooled_record_the_next_producer_refuses_is_reported_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(2));
    fake.set_plan(|_| Plan::Hang);
    // Spooled under a 1 MiB record limit: small records and 60 KB ones.
    let run = start(&fake, dir.path(), config(), spool_config()).await;
    let records: Vec<UserRecord> = (0..20)
        .map(|i| {
            let mut r = record(i, 4);
            if i % 5 == 0 {
                r.data = vec![b'z'; 60_000].into();
            }
            r
        })
        .collect();
    let appended = append_all(&run.producer, records).await;
    run.producer.abort().await;
    assert!(finish(run).await.is_empty());

    // The next process allows 55 000 bytes: the large ones can never be sent.
    fake.clear_plan();
    let run = start(
        &fake,
        dir.path(),
        ProducerConfig {
            max_record_bytes: Some(55_000),
            ..config()
        },
        spool_config(),
    )
    .await;
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(
        ids_once(&deliveries),
        (0..20).collect(),
        "each reported once"
    );
    let failed: BTreeSet<u64> = deliveries
        .iter()
        .filter(|d| d.result.is_err())
        .map(|d| d.id.0)
        .collect();
    assert_eq!(failed, [0, 5, 10, 15].into_iter().collect());
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    assert_eq!(dead_letters(dir.path()).len(), 4);
}

#[tokio::test]
async fn a_config_naming_a_spool_connects_a_spooled_producer_and_is_refused_by_producer() {
    let dir = tempfile::tempdir().unwrap();
    let sim = kpl_sim::Sim::start(kpl_sim::SimConfig {
        streams: vec![("spooled".into(), 2)],
        ..Default::default()
    })
    .await
    .unwrap();
    let config = ProducerConfig {
        spool: Some(kpl::producer::SpoolSettings::new(dir.path())),
        ..ProducerConfig::default()
    };
    let options = || kpl::producer::ConnectOptions {
        endpoint_url: Some(sim.endpoint().to_string()),
        ..Default::default()
    };
    // Producer keeps records in memory: it says to use SpooledProducer.
    let err = kpl::producer::Producer::new(sim.api(), "spooled", config.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("SpooledProducer::connect"),
        "{err}"
    );
    let err = kpl::producer::Producer::connect("spooled", options(), config.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("SpooledProducer::connect"),
        "{err}"
    );
    // And SpooledProducer::connect needs one.
    let err = SpooledProducer::connect("spooled", options(), ProducerConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spool"), "{err}");
    // An invalid spool is refused like any other field.
    let mut bad = config.clone();
    bad.spool.as_mut().unwrap().config.max_bytes = 1;
    let err = SpooledProducer::connect("spooled", options(), bad)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid producer setting spool"),
        "{err}"
    );

    let (producer, rx) = SpooledProducer::connect("spooled", options(), config)
        .await
        .expect("connects");
    let run = Run {
        producer,
        reports: collect(rx),
    };
    let ids = run
        .producer
        .append_batch((0..50).map(|i| record(i, 5)).collect())
        .await
        .unwrap();
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries), (ids.start.0..ids.end.0).collect());
    assert!(deliveries.iter().all(|d| d.result.is_ok()));
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_appenders_under_lost_and_cut_short_answers_get_one_delivery_each() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(MemoryKinesis::new(4));
    let mut n = 0u64;
    fake.set_plan(move |call| {
        n += 1;
        match n % 7 {
            1 => Plan::StoreThenError(ApiError::connection("reset after storing")),
            3 => Plan::Truncate(call.entries.len() / 2),
            5 => Plan::Error(ApiError::service("InternalFailure", Some(500), "oops")),
            _ => Plan::Store,
        }
    });
    let run = start(
        &fake,
        dir.path(),
        ProducerConfig {
            dedup_ids: true,
            aggregation_max_count: 8,
            collection_max_count: 10,
            max_outstanding_records: 64,
            ..config()
        },
        spool_config(),
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let producer = run.producer.clone();
        tasks.push(tokio::spawn(async move {
            let mut appended = HashMap::new();
            for i in 0..100 {
                let r = record(t * 1000 + i, 13);
                if i % 10 == 0 {
                    let batch: Vec<UserRecord> = (0..5)
                        .map(|j| record(t * 1000 + 500 + i * 5 + j, 13))
                        .collect();
                    let ids = producer.append_batch(batch.clone()).await.unwrap();
                    appended.extend((ids.start.0..ids.end.0).zip(batch));
                }
                appended.insert(producer.append(r.clone()).await.unwrap().0, r);
            }
            appended
        }));
    }
    let mut appended = HashMap::new();
    for t in tasks {
        appended.extend(t.await.unwrap());
    }
    assert_eq!(appended.len(), 8 * 150);
    run.producer.shutdown().await.unwrap();
    let deliveries = finish(run).await;
    assert_eq!(ids_once(&deliveries), appended.keys().copied().collect());
    assert!(deliveries.iter().all(|d| d.result.is_ok()));
    check_deliveries(&deliveries, &appended, &fake, dir.path());
    let mut deduper = Deduper::new(100_000);
    let stored = read_back(&fake.stored());
    let kept = stored.iter().filter(|(_, u)| deduper.keep(u)).count();
    assert_eq!(kept, appended.len(), "after dedup: each record once");
}
