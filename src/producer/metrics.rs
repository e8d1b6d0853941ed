//! Counters of what the producer did, under the KPL's metric names where they fit, readable as
//! a [`MetricsSnapshot`] and emitted through the [`metrics`] crate facade (any exporter, e.g.
//! Prometheus or CloudWatch, picks them up; without a recorder the calls cost next to nothing).
//!
//! Facade names: `kpl_<snake_case KPL name>` with a `stream` label, e.g.
//! `kpl_user_records_put{stream="logs"}`; `kpl_errors_by_code` also has a `code` label; times are
//! histograms in milliseconds. Per-shard series (`kpl_shard_*`) have a `shard` label for the
//! [`MAX_SHARD_LABELS`] busiest shards only, re-picked at most every [`SHARD_LABELS_REPICK`]
//! with hysteresis ([`SHARD_LABELS_HYSTERESIS`]); the rest count under `shard="other"`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::producer::hot_keys::HotShard;

/// What the producer did so far.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// UserRecordsReceived: records accepted by `send`.
    pub user_records_received: u64,
    /// Bytes (partition key + data) accepted by `send`.
    pub user_records_data_received: u64,
    /// UserRecordsPending: accepted and not yet resolved.
    pub user_records_pending: u64,
    /// UserRecordsPut: records stored.
    pub user_records_put: u64,
    /// UserRecordsDataPut: bytes (partition key + data) of records stored.
    pub user_records_data_put: u64,
    /// KinesisRecordsPut: Kinesis records (aggregates or single records) stored.
    pub kinesis_records_put: u64,
    /// KinesisRecordsDataPut: bytes (partition key + data) of Kinesis records stored.
    pub kinesis_records_data_put: u64,
    /// PutRecords calls made.
    pub put_records_calls: u64,
    /// Entries sent in PutRecords calls (first attempts and retries).
    pub put_records_entries: u64,
    /// ErrorsByCode: failed entries or calls by error code (calls count once per entry).
    pub errors_by_code: BTreeMap<String, u64>,
    /// AllErrors: the sum of `errors_by_code`.
    pub all_errors: u64,
    /// Entries throttled by the service (ProvisionedThroughputExceeded, KMSThrottling).
    pub throttled_entries: u64,
    /// User records scheduled for another attempt.
    pub retries: u64,
    /// RetriesPerRecord: mean retries of the stored records.
    pub retries_per_record: f64,
    /// UserRecordExpired: records that failed because their TTL ran out.
    pub expired_records: u64,
    /// Records that failed, whatever the reason.
    pub failed_records: u64,
    /// BufferingTime: mean wait of a Kinesis record's oldest user record before its call, ms.
    pub buffering_time_ms: f64,
    /// RequestTime: mean PutRecords call time, ms.
    pub request_time_ms: f64,
    /// Longest PutRecords call, ms.
    pub request_time_max_ms: f64,
    /// UserRecordsPerKinesisRecord: mean aggregation.
    pub user_records_per_kinesis_record: f64,
    /// KinesisRecordsPerPutRecordsRequest: mean call size.
    pub kinesis_records_per_put_records_request: f64,
    /// Kinesis records and their bytes (partition key + data) stored, and entries throttled,
    /// per shard.
    pub shards: BTreeMap<String, ShardCounters>,
    /// Times a throttled shard was found hot (see [`Producer::hot_keys`]).
    ///
    /// [`Producer::hot_keys`]: crate::producer::Producer::hot_keys
    pub hot_shard_reports: u64,
}

/// What one shard stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Kinesis records stored on the shard.
    pub kinesis_records: u64,
    /// Their bytes, as the shard's limit counts them.
    pub bytes: u64,
    /// Entries the service throttled on the shard.
    pub throttled_entries: u64,
}

/// Shards with their own `shard` label in the facade's per-shard series: the busiest by
/// bytes put over the last pick interval. The others share `shard="other"`, so a stream of
/// thousands of shards cannot flood a scraper.
pub const MAX_SHARD_LABELS: usize = 64;

/// The first pick of the labelled shards, after the first shard event: until then every
/// shard counts under `shard="other"`.
pub const SHARD_LABELS_FIRST_PICK: Duration = Duration::from_secs(10);

/// Later picks, at most this often, from the bytes put since the previous pick: a labelled
/// shard's series keeps counting for at least this long.
pub const SHARD_LABELS_REPICK: Duration = Duration::from_secs(60);

/// A labelled shard keeps its label against an unlabelled one unless that one put more than
/// this many times its bytes in the interval (hysteresis: near-equal shards do not swap).
pub const SHARD_LABELS_HYSTERESIS: u64 = 2;

/// The facade's per-shard series of one shard.
struct ShardSeries {
    kinesis_records: metrics::Counter,
    bytes: metrics::Counter,
    throttled: metrics::Counter,
}

impl ShardSeries {
    fn new(stream: &str, label: &str) -> Self {
        let labels = [("stream", stream.to_owned()), ("shard", label.to_owned())];
        ShardSeries {
            kinesis_records: metrics::counter!("kpl_shard_kinesis_records_put", &labels),
            bytes: metrics::counter!("kpl_shard_kinesis_records_data_put", &labels),
            throttled: metrics::counter!("kpl_shard_throttled_entries", &labels),
        }
    }
}

/// One shard's counters, its bytes since the last pick, and its series while labelled.
struct ShardEntry {
    counters: ShardCounters,
    window_bytes: u64,
    series: Option<ShardSeries>,
}

/// Every shard seen, and which of them have a label of their own.
struct Shards {
    entries: BTreeMap<String, ShardEntry>,
    /// `shard="other"`: every shard without a label.
    other: ShardSeries,
    /// When the labelled set is picked next; `None` before the first shard event.
    next_pick: Option<tokio::time::Instant>,
}

impl Shards {
    /// Labels the [`MAX_SHARD_LABELS`] busiest shards of the interval just ended (a labelled
    /// one's bytes count [`SHARD_LABELS_HYSTERESIS`] times), drops the others' series, and
    /// starts a new interval.
    fn pick(&mut self, stream: &str) {
        let mut ranked: Vec<(u64, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.window_bytes > 0)
            .map(|(id, e)| {
                let weight = if e.series.is_some() {
                    SHARD_LABELS_HYSTERESIS
                } else {
                    1
                };
                (e.window_bytes.saturating_mul(weight), id)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let chosen: std::collections::BTreeSet<String> = ranked
            .into_iter()
            .take(MAX_SHARD_LABELS)
            .map(|(_, id)| id.clone())
            .collect();
        for (id, entry) in &mut self.entries {
            entry.window_bytes = 0;
            match (chosen.contains(id), entry.series.is_some()) {
                (true, false) => entry.series = Some(ShardSeries::new(stream, id)),
                (false, true) => entry.series = None,
                _ => {}
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    received_bytes: AtomicU64,
    put: AtomicU64,
    put_bytes: AtomicU64,
    kinesis_put: AtomicU64,
    kinesis_put_bytes: AtomicU64,
    calls: AtomicU64,
    entries: AtomicU64,
    all_errors: AtomicU64,
    throttled: AtomicU64,
    retries: AtomicU64,
    retries_of_put: AtomicU64,
    expired: AtomicU64,
    failed: AtomicU64,
    buffering_us: AtomicU64,
    buffering_count: AtomicU64,
    request_us: AtomicU64,
    request_count: AtomicU64,
    request_max_us: AtomicU64,
}

struct Facade {
    received: metrics::Counter,
    put: metrics::Counter,
    put_bytes: metrics::Counter,
    kinesis_put: metrics::Counter,
    calls: metrics::Counter,
    throttled: metrics::Counter,
    retries: metrics::Counter,
    expired: metrics::Counter,
    failed: metrics::Counter,
    request_time: metrics::Histogram,
    buffering_time: metrics::Histogram,
    user_per_kinesis: metrics::Histogram,
    pending: metrics::Gauge,
    hot_shard_reports: metrics::Counter,
}

/// The producer's counters. Shared by the pipeline task and the handles.
pub struct Metrics {
    stream: String,
    c: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    shards: Mutex<Shards>,
    hot: Mutex<BTreeMap<String, HotShard>>,
    hot_reports: AtomicU64,
    facade: Facade,
}

impl Metrics {
    /// Counters for `stream`, registered with the current `metrics` recorder.
    pub fn new(stream: &str) -> Self {
        let s = stream.to_owned();
        Metrics {
            facade: Facade {
                received: metrics::counter!("kpl_user_records_received", "stream" => s.clone()),
                put: metrics::counter!("kpl_user_records_put", "stream" => s.clone()),
                put_bytes: metrics::counter!("kpl_user_records_data_put", "stream" => s.clone()),
                kinesis_put: metrics::counter!("kpl_kinesis_records_put", "stream" => s.clone()),
                calls: metrics::counter!("kpl_put_records_calls", "stream" => s.clone()),
                throttled: metrics::counter!("kpl_throttled_entries", "stream" => s.clone()),
                retries: metrics::counter!("kpl_retries", "stream" => s.clone()),
                expired: metrics::counter!("kpl_user_record_expired", "stream" => s.clone()),
                failed: metrics::counter!("kpl_failed_records", "stream" => s.clone()),
                request_time: metrics::histogram!("kpl_request_time_ms", "stream" => s.clone()),
                buffering_time: metrics::histogram!("kpl_buffering_time_ms", "stream" => s.clone()),
                user_per_kinesis: metrics::histogram!(
                    "kpl_user_records_per_kinesis_record", "stream" => s.clone()
                ),
                pending: metrics::gauge!("kpl_user_records_pending", "stream" => s.clone()),
                hot_shard_reports: metrics::counter!("kpl_hot_shard_reports", "stream" => s.clone()),
            },
            stream: s,
            c: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            shards: Mutex::new(Shards {
                entries: BTreeMap::new(),
                other: ShardSeries::new(stream, "other"),
                next_pick: None,
            }),
            hot: Mutex::new(BTreeMap::new()),
            hot_reports: AtomicU64::new(0),
        }
    }

    /// Records accepted by `send`.
    pub fn record_received(&self, records: u64, bytes: u64) {
        self.c.received.fetch_add(records, Relaxed);
        self.c.received_bytes.fetch_add(bytes, Relaxed);
        self.facade.received.increment(records);
        self.facade.pending.increment(records as f64);
    }

    /// A Kinesis record carrying `user_records` was stored.
    pub fn record_put(&self, user_records: u64, user_bytes: u64, kinesis: u64, kinesis_bytes: u64) {
        self.c.put.fetch_add(user_records, Relaxed);
        self.c.put_bytes.fetch_add(user_bytes, Relaxed);
        self.c.kinesis_put.fetch_add(kinesis, Relaxed);
        self.c.kinesis_put_bytes.fetch_add(kinesis_bytes, Relaxed);
        self.facade.put.increment(user_records);
        self.facade.put_bytes.increment(user_bytes);
        self.facade.kinesis_put.increment(kinesis);
        self.facade.user_per_kinesis.record(user_records as f64);
        self.facade.pending.decrement(user_records as f64);
    }

    /// Runs `f` on `shard`'s counters and series (its own while labelled, else
    /// `shard="other"`) at `now`, picking the labelled shards first when it is time.
    fn with_shard(
        &self,
        shard: &str,
        now: tokio::time::Instant,
        f: impl FnOnce(&mut ShardCounters, &mut u64, &ShardSeries),
    ) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        match shards.next_pick {
            None => shards.next_pick = Some(now + SHARD_LABELS_FIRST_PICK),
            Some(at) if now >= at => {
                shards.pick(&self.stream);
                shards.next_pick = Some(now + SHARD_LABELS_REPICK);
            }
            Some(_) => {}
        }
        let Shards { entries, other, .. } = &mut *shards;
        if !entries.contains_key(shard) {
            entries.insert(
                shard.to_owned(),
                ShardEntry {
                    counters: ShardCounters::default(),
                    window_bytes: 0,
                    series: None,
                },
            );
        }
        let entry = entries.get_mut(shard).expect("inserted above");
        let series = entry.series.as_ref().unwrap_or(other);
        f(&mut entry.counters, &mut entry.window_bytes, series);
    }

    /// A Kinesis record of `bytes` was stored on `shard`.
    pub fn shard_put(&self, shard: &str, bytes: u64) {
        self.shard_put_at(shard, bytes, tokio::time::Instant::now());
    }

    fn shard_put_at(&self, shard: &str, bytes: u64, now: tokio::time::Instant) {
        self.with_shard(shard, now, |counters, window, series| {
            counters.kinesis_records += 1;
            counters.bytes += bytes;
            *window += bytes;
            series.kinesis_records.increment(1);
            series.bytes.increment(bytes);
        });
    }

    /// An entry was throttled on `shard`.
    pub fn shard_throttled(&self, shard: &str) {
        self.throttled(1);
        self.with_shard(shard, tokio::time::Instant::now(), |counters, _, series| {
            counters.throttled_entries += 1;
            series.throttled.increment(1);
        });
    }

    /// A throttled shard was found hot: keeps its report (the latest per shard, for at most
    /// [`MAX_SHARD_LABELS`] shards: the lightest is dropped for a new one) and counts it.
    pub(crate) fn hot_shard(&self, report: HotShard) {
        self.hot_reports.fetch_add(1, Relaxed);
        self.facade.hot_shard_reports.increment(1);
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.len() >= MAX_SHARD_LABELS
            && !hot.contains_key(&report.shard_id)
            && let Some(lightest) = hot
                .values()
                .min_by_key(|h| h.bytes)
                .map(|h| h.shard_id.clone())
        {
            hot.remove(&lightest);
        }
        hot.insert(report.shard_id.clone(), report);
    }

    /// The hot shards' latest reports, hottest first.
    pub fn hot_shards(&self) -> Vec<HotShard> {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<HotShard> = hot.values().cloned().collect();
        v.sort_by_key(|h| std::cmp::Reverse(h.bytes));
        v
    }

    /// A PutRecords call of `entries` entries started.
    pub fn put_records_call(&self, entries: usize) {
        self.c.calls.fetch_add(1, Relaxed);
        self.c.entries.fetch_add(entries as u64, Relaxed);
        self.facade.calls.increment(1);
    }

    /// A PutRecords call took `elapsed`.
    pub fn request_time(&self, elapsed: Duration, _entries: usize) {
        let us = elapsed.as_micros() as u64;
        self.c.request_us.fetch_add(us, Relaxed);
        self.c.request_count.fetch_add(1, Relaxed);
        self.c.request_max_us.fetch_max(us, Relaxed);
        self.facade.request_time.record(elapsed.as_secs_f64() * 1e3);
    }

    /// A Kinesis record's oldest user record waited `waited` before its call.
    pub fn buffering_time(&self, waited: Duration) {
        self.c
            .buffering_us
            .fetch_add(waited.as_micros() as u64, Relaxed);
        self.c.buffering_count.fetch_add(1, Relaxed);
        self.facade
            .buffering_time
            .record(waited.as_secs_f64() * 1e3);
    }

    /// `count` entries (or a call, once per entry) failed with `code`.
    pub fn error(&self, code: &str, count: usize) {
        let count = count as u64;
        self.c.all_errors.fetch_add(count, Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(code.to_owned()).or_default() += count;
        metrics::counter!("kpl_errors_by_code", "stream" => self.stream.clone(), "code" => code.to_owned())
            .increment(count);
    }

    /// `entries` entries were throttled by the service.
    pub fn throttled(&self, entries: u64) {
        self.c.throttled.fetch_add(entries, Relaxed);
        self.facade.throttled.increment(entries);
    }

    /// `records` user records are scheduled for another attempt.
    pub fn retry(&self, records: usize) {
        self.c.retries.fetch_add(records as u64, Relaxed);
        self.facade.retries.increment(records as u64);
    }

    /// Stored records needed `retries` retries in all.
    pub fn retries_per_record(&self, retries: u64) {
        self.c.retries_of_put.fetch_add(retries, Relaxed);
    }

    /// `records` user records expired.
    pub fn expired(&self, records: u64) {
        self.c.expired.fetch_add(records, Relaxed);
        self.facade.expired.increment(records);
    }

    /// `records` user records failed.
    pub fn failed(&self, records: u64) {
        self.c.failed.fetch_add(records, Relaxed);
        self.facade.failed.increment(records);
        self.facade.pending.decrement(records as f64);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Relaxed);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let received = get(&self.c.received);
        let put = get(&self.c.put);
        let failed = get(&self.c.failed);
        let kinesis = get(&self.c.kinesis_put);
        MetricsSnapshot {
            user_records_received: received,
            user_records_data_received: get(&self.c.received_bytes),
            user_records_pending: received.saturating_sub(put + failed),
            user_records_put: put,
            user_records_data_put: get(&self.c.put_bytes),
            kinesis_records_put: kinesis,
            kinesis_records_data_put: get(&self.c.kinesis_put_bytes),
            put_records_calls: get(&self.c.calls),
            put_records_entries: get(&self.c.entries),
            errors_by_code: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            all_errors: get(&self.c.all_errors),
            throttled_entries: get(&self.c.throttled),
            retries: get(&self.c.retries),
            retries_per_record: ratio(get(&self.c.retries_of_put), put),
            expired_records: get(&self.c.expired),
            failed_records: failed,
            buffering_time_ms: ratio(get(&self.c.buffering_us), get(&self.c.buffering_count)) / 1e3,
            request_time_ms: ratio(get(&self.c.request_us), get(&self.c.request_count)) / 1e3,
            request_time_max_ms: get(&self.c.request_max_us) as f64 / 1e3,
            user_records_per_kinesis_record: ratio(put, kinesis),
            kinesis_records_per_put_records_request: ratio(
                get(&self.c.entries),
                get(&self.c.calls),
            ),
            shards: self
                .shards
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entries
                .iter()
                .map(|(id, e)| (id.clone(), e.counters))
                .collect(),
            hot_shard_reports: get(&self.hot_reports),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_events() {
        let m = Metrics::new("s");
        m.record_received(10, 1000);
        m.put_records_call(2);
        m.record_put(6, 600, 1, 650);
        m.record_put(2, 200, 1, 250);
        m.error("ProvisionedThroughputExceededException", 1);
        m.error("InternalFailure", 2);
        m.throttled(1);
        m.failed(1);
        m.request_time(Duration::from_millis(30), 2);
        m.request_time(Duration::from_millis(10), 2);
        let s = m.snapshot();
        assert_eq!(s.user_records_put, 8);
        assert_eq!(s.user_records_pending, 1);
        assert_eq!(s.kinesis_records_put, 2);
        assert_eq!(s.user_records_per_kinesis_record, 4.0);
        assert_eq!(s.all_errors, 3);
        assert_eq!(s.errors_by_code["InternalFailure"], 2);
        assert_eq!(s.request_time_ms, 20.0);
        assert_eq!(s.request_time_max_ms, 30.0);
    }

    /// A recorder that keeps every counter total and histogram sample by name and labels.
    #[derive(Default)]
    struct TestRecorder {
        counters: Mutex<BTreeMap<String, std::sync::Arc<Total>>>,
        histograms: Mutex<BTreeMap<String, std::sync::Arc<Samples>>>,
    }

    #[derive(Default)]
    struct Total(AtomicU64);
    impl metrics::CounterFn for Total {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Relaxed);
        }
    }

    #[derive(Default)]
    struct Samples(Mutex<Vec<f64>>);
    impl metrics::HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    fn name(key: &metrics::Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl metrics::Recorder for TestRecorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            let total = self
                .counters
                .lock()
                .unwrap()
                .entry(name(key))
                .or_default()
                .clone();
            metrics::Counter::from_arc(total)
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            let samples = self
                .histograms
                .lock()
                .unwrap()
                .entry(name(key))
                .or_default()
                .clone();
            metrics::Histogram::from_arc(samples)
        }
    }

    #[test]
    fn events_reach_the_metrics_facade() {
        let recorder = TestRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            let m = Metrics::new("logs");
            m.record_received(10, 1000);
            m.record_put(6, 600, 1, 650);
            m.record_put(2, 200, 1, 250);
            m.error("InternalFailure", 2);
            m.throttled(3);
            m.request_time(Duration::from_millis(30), 2);
        });
        let counter = |n: &str| {
            recorder
                .counters
                .lock()
                .unwrap()
                .get(n)
                .map(|t| t.0.load(Relaxed))
        };
        assert_eq!(counter("kpl_user_records_received{stream=logs}"), Some(10));
        assert_eq!(counter("kpl_user_records_put{stream=logs}"), Some(8));
        assert_eq!(counter("kpl_kinesis_records_put{stream=logs}"), Some(2));
        assert_eq!(counter("kpl_throttled_entries{stream=logs}"), Some(3));
        assert_eq!(
            counter("kpl_errors_by_code{stream=logs,code=InternalFailure}"),
            Some(2)
        );
        let histograms = recorder.histograms.lock().unwrap();
        assert_eq!(
            *histograms["kpl_request_time_ms{stream=logs}"]
                .0
                .lock()
                .unwrap(),
            vec![30.0]
        );
        assert_eq!(
            *histograms["kpl_user_records_per_kinesis_record{stream=logs}"]
                .0
                .lock()
                .unwrap(),
            vec![6.0, 2.0]
        );
    }

    fn shard(i: usize) -> String {
        format!("shardId-{i:012}")
    }

    #[test]
    fn per_shard_series_follow_the_busiest_shards_with_hysteresis() {
        let recorder = TestRecorder::default();
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let total = |shard: &str| {
            let key = format!("kpl_shard_kinesis_records_data_put{{stream=s,shard={shard}}}");
            recorder
                .counters
                .lock()
                .unwrap()
                .get(&key)
                .map(|t| t.0.load(Relaxed))
        };
        metrics::with_local_recorder(&recorder, || {
            let m = Metrics::new("s");
            // 100 shards seen in order; the busy ones are the last 64, beyond the first 64 seen.
            for i in 0..100 {
                m.shard_put_at(&shard(i), if i >= 36 { 10_000 } else { 100 }, at(0));
            }
            // Before the first pick everything counts under "other".
            assert_eq!(total("other"), Some(36 * 100 + 64 * 10_000));
            assert_eq!(total(&shard(99)), None);
            // The first event after the first pick interval picks the 64 busiest.
            m.shard_put_at(&shard(99), 1, at(10));
            for i in 36..100 {
                assert!(total(&shard(i)).is_some(), "{i} has no series");
            }
            for i in 0..36 {
                assert_eq!(total(&shard(i)), None, "{i} is not among the busiest");
            }
            assert_eq!(total(&shard(99)), Some(1));
            // Next interval: the labelled shards put 10 000 bytes, shard 36 (the weakest)
            // 9 000; shard 0 puts 15 000 (under twice the weakest), shard 1 25 000 (over).
            for i in 36..100 {
                m.shard_put_at(&shard(i), if i == 36 { 9_000 } else { 10_000 }, at(20));
            }
            m.shard_put_at(&shard(0), 15_000, at(20));
            m.shard_put_at(&shard(1), 25_000, at(20));
            // No pick before the re-pick interval.
            m.shard_put_at(&shard(2), 1, at(60));
            assert_eq!(total(&shard(1)), None);
            m.shard_put_at(&shard(2), 1, at(70));
            assert_eq!(total(&shard(0)), None, "within the hysteresis: no swap");
            assert_eq!(
                total(&shard(1)),
                Some(0),
                "over twice the weakest: labelled"
            );
            // The shard it displaced, the weakest, stops counting.
            let displaced = (36..100)
                .find(|i| {
                    let before = total(&shard(*i));
                    m.shard_put_at(&shard(*i), 5, at(71));
                    total(&shard(*i)) == before
                })
                .expect("one labelled shard was displaced");
            assert_eq!(displaced, 36);
            // The snapshot keeps every shard's own totals whatever its label.
            assert_eq!(m.snapshot().shards.len(), 100);
            assert_eq!(m.snapshot().shards[&shard(1)].bytes, 25_100);
        });
    }
}
