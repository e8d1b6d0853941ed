//! `kpl bench`: the producer under a synthetic load, measured the way a user sizes a stream:
//! how much of the shards' capacity it uses, how much is throttled, the send-to-ack latency, and
//! what it costs in CPU and memory. With no `--endpoint-url` it runs against an embedded
//! `kpl sim` with shard limits on, so it needs no setup at all.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use kpl::UserRecord;
use kpl::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};
use kpl::producer::{
    BatchFuture, Delivery, MetricsSnapshot, Producer, RecordFuture, SpooledProducer,
};
use kpl::spool::{SpoolConfig, SpoolId, SyncPolicy};
use kpl_sim::{Sim, SimConfig, SimHandle};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::common::{ConnectArgs, ProducerArgs, parse_duration};
use crate::cpu::process_cpu_seconds;
use crate::plot::PlotData;
use crate::progress::{self, Progress};

const MIB: f64 = 1024.0 * 1024.0;

/// Arguments of `kpl bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream to write (with --endpoint-url it must exist; on the embedded simulator it is made).
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Shards of the simulator's stream, 1 to 1000 (ignored with --endpoint-url).
    #[arg(long, default_value_t = 4, value_parser = parse_shards)]
    shards: u32,
    /// Simulator without shard limits (measures the producer alone).
    #[arg(long)]
    no_limits: bool,
    /// How long to offer load.
    #[arg(long, default_value = "30s", value_parser = parse_load_duration)]
    duration: Duration,
    /// Data bytes per record: N, or MIN-MAX for a uniform range.
    #[arg(long, default_value = "100", value_parser = parse_size)]
    record_size: (usize, usize),
    /// Distinct partition keys.
    #[arg(long, default_value_t = 1000, value_parser = parse_keys)]
    keys: usize,
    /// Key popularity: uniform, or zipf:S (hot keys make hot shards).
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    key_dist: KeyDist,
    /// random (incompressible) or json-logs (log-like JSON lines).
    #[arg(long, default_value = "random", value_parser = ["random", "json-logs"])]
    payload: String,
    /// Offer this many user records per second (open loop); default: as fast as the producer
    /// takes them (closed loop).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Hand records over with `send_batch`, this many at a time, instead of `send` one by one.
    /// A record's latency is then its batch's: until the last of its records is stored.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    send_batch: Option<u64>,
    /// Run through a durable spool in DIR (`SpooledProducer`): each batch is appended to the
    /// spool (accepted once written there), fed to the producer from it, and acknowledged
    /// once stored. Records go in with `append_batch`, `--send-batch` at a time (default 64);
    /// a closed loop keeps at most `--max-outstanding-records` unresolved. A record's latency
    /// is append to its delivery report. What an earlier run left in DIR is sent first.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// With --spool: when the spool syncs its writes to disk, as for `kpl put`: `every-record`
    /// (before each append returns), a DURATION (default 100ms), `never` (the OS decides).
    #[arg(long, value_name = "POLICY", value_parser = crate::common::parse_sync_policy, requires = "spool")]
    spool_sync: Option<SyncPolicy>,
    /// Seed of the load generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write every figure as JSON here.
    ///
    /// Fields: target, shards, duration_seconds; load (record_size, keys, key_dist, payload,
    /// rate, send_batch, user_records_offered, spool, spool_sync); totals at the end: user_records_put,
    /// user_records_failed, user_bytes_put, kinesis_records_put, kinesis_bytes_put,
    /// put_records_calls, retries (user records sent again), throttled_entries (Kinesis
    /// entries), throttled_fraction (of the entries sent); during_load, over the --duration:
    /// user_records_per_second, user_mib_per_second, user_mib_per_shard_second,
    /// kinesis_records_per_second, put_records_calls_per_second, byte_utilization and
    /// record_utilization (of the shards' 1 MiB/s and 1000 records/s), steady_byte_utilization
    /// (from the second second on), hottest_shard, hottest_shard_byte_utilization;
    /// drain_seconds (flushing after the deadline); latency_ms (p50, p90, p99, max: send to
    /// stored); cpu_seconds, cpu_seconds_per_million_user_records,
    /// cpu_includes_embedded_simulator, peak_rss_mib; shards_detail (per shard: shard_id,
    /// kinesis_records, bytes, byte_utilization); per_second (second, user_records, user_mib,
    /// kinesis_records, kinesis_mib, put_records_calls, throttled_entries, retries, latency_ms
    /// of the records acked in that second).
    #[arg(long, value_name = "FILE.json", verbatim_doc_comment)]
    report: Option<PathBuf>,
    /// Draw throughput, throttling, latency and per-shard utilization here: FILE.svg or
    /// FILE.png (the extension picks the format).
    #[arg(long, value_name = "FILE", value_parser = crate::plot::parse_path)]
    plot: Option<PathBuf>,
    /// No per-second lines.
    #[arg(long, short)]
    quiet: bool,
    /// Print this many generated records' data to stdout, one per line, and exit (samples
    /// for `kpl dict train`).
    #[arg(long, value_name = "N")]
    print_records: Option<u64>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    producer: ProducerArgs,
}

/// Records per `append_batch` with `--spool` and no `--send-batch`.
const DEFAULT_SPOOL_BATCH: u64 = 64;

/// Most shards of the embedded simulator's stream: beyond, the load per shard is too thin for
/// the figures to mean anything, and creating the stream takes long.
const MAX_SIM_SHARDS: u32 = 1000;

fn parse_shards(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_SIM_SHARDS).contains(&n) => Ok(n),
        _ => Err(format!("use 1 to {MAX_SIM_SHARDS} shards")),
    }
}

/// A load duration: at least one second (the figures are per second).
fn parse_load_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: offer load for at least 1s"));
    }
    Ok(d)
}

fn parse_keys(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("use at least 1 key".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of keys")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{s:?}: give a rate above 0 records/s")),
    }
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("{v:?} is not a size"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("{s:?}: MIN must not exceed MAX"));
            }
            Ok((a, b))
        }
        None => parse(s).map(|n| (n, n)),
    }
}

/// Key popularity: `None` is uniform, `Some(s)` is Zipf with exponent `s`.
#[derive(Clone, Copy, Debug)]
struct KeyDist(Option<f64>);

fn parse_dist(s: &str) -> Result<KeyDist, String> {
    match s.split_once(':') {
        None if s == "uniform" => Ok(KeyDist(None)),
        Some(("zipf", e)) => e
            .parse::<f64>()
            .ok()
            .filter(|e| *e > 0.0)
            .map(|e| KeyDist(Some(e)))
            .ok_or_else(|| format!("zipf exponent {e:?} must be a positive number")),
        _ => Err(format!("{s:?}: use uniform or zipf:S")),
    }
}

/// The name of key `k`: `key-000042`. Written afresh for every record, as an application builds
/// its keys from the data at hand (and as scripts/p3.py's aiokpl load does); a pool of 100 000
/// ready-made keys was a cache miss per record in the load, taking CPU from the producer.
fn key_name(k: usize) -> String {
    let mut digits = [b'0'; 20];
    let mut rest = k;
    let mut first = digits.len();
    loop {
        first -= 1;
        digits[first] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut key = String::with_capacity(10.max(4 + digits.len() - first));
    key.push_str("key-");
    key.extend(
        digits[first.min(digits.len() - 6)..]
            .iter()
            .map(|&d| char::from(d)),
    );
    key
}

/// Draws keys and payloads.
struct Load {
    rng: SmallRng,
    keys: usize,
    zipf_cdf: Option<Vec<f64>>,
    size: (usize, usize),
    json: bool,
    n: u64,
}

impl Load {
    fn new(args: &Args) -> Self {
        let zipf_cdf = args.key_dist.0.map(|s| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=args.keys)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(s);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        });
        Load {
            rng: SmallRng::seed_from_u64(args.seed),
            keys: args.keys.max(1),
            zipf_cdf,
            size: args.record_size,
            json: args.payload == "json-logs",
            n: 0,
        }
    }

    fn next(&mut self) -> UserRecord {
        self.n += 1;
        let k = match &self.zipf_cdf {
            Some(cdf) => {
                let u: f64 = self.rng.random();
                cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
            }
            None => self.rng.random_range(0..self.keys),
        };
        let size = self.rng.random_range(self.size.0..=self.size.1);
        let data = if self.json {
            self.json_line(k, size)
        } else {
            let mut data = vec![0u8; size];
            self.rng.fill_bytes(&mut data);
            data
        };
        UserRecord::new(key_name(k), data)
    }

    fn json_line(&mut self, k: usize, size: usize) -> Vec<u8> {
        const PATHS: [&str; 6] = [
            "/api/v1/items",
            "/api/v1/cart",
            "/api/v1/checkout",
            "/health",
            "/api/v2/search",
            "/static/app.js",
        ];
        const WORDS: [&str; 8] = [
            "request", "served", "cache", "hit", "miss", "upstream", "latency", "ok",
        ];
        let r = &mut self.rng;
        let mut line = format!(
            "{{\"ts\":\"2026-11-24T10:{:02}:{:02}.{:03}Z\",\"level\":\"{}\",\"service\":\"shop\",\"user\":\"{}\",\"path\":\"{}/{}\",\"status\":{},\"ms\":{},\"msg\":\"",
            (self.n / 60_000) % 60,
            (self.n / 1000) % 60,
            self.n % 1000,
            if r.random_ratio(1, 20) {
                "warn"
            } else {
                "info"
            },
            key_name(k),
            PATHS[r.random_range(0..PATHS.len())],
            r.random_range(1..5000),
            if r.random_ratio(1, 30) { 500 } else { 200 },
            r.random_range(1..900),
        );
        while line.len() + 2 < size {
            line.push_str(WORDS[r.random_range(0..WORDS.len())]);
            line.push(' ');
        }
        line.truncate(size.saturating_sub(2).max(1));
        line.push_str("\"}");
        line.into_bytes()
    }
}

/// One second of the run: what was stored in it, and the latency of the records acked in it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The second's end, since the start of the load.
    pub second: u64,
    pub user_records: f64,
    pub user_mib: f64,
    pub kinesis_records: f64,
    pub kinesis_mib: f64,
    pub calls: f64,
    /// Kinesis entries throttled.
    pub throttled: f64,
    /// User records sent again.
    pub retries: f64,
    /// p50, p90 and p99 send-to-ack latency of the user records acked in this second, ms.
    pub latency_ms: Option<[f64; 3]>,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What a load step waits for: one record's future, or a batch's.
enum Outcomes {
    One(RecordFuture),
    Batch(BatchFuture),
}

impl Outcomes {
    /// Records stored and records failed.
    async fn stored(self) -> (u64, u64) {
        match self {
            Outcomes::One(future) => match future.await {
                Ok(_) => (1, 0),
                Err(_) => (0, 1),
            },
            Outcomes::Batch(future) => {
                let results = future.await;
                let stored = results.iter().filter(|r| r.is_ok()).count() as u64;
                (stored, results.len() as u64 - stored)
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.print_records {
        return print_records(&args, n);
    }
    let config = args.producer.config()?;
    crate::metrics_export::serve(args.producer.metrics_listen)?;
    let target = match Target::start(&args, config).await? {
        Ok(target) => target,
        Err(code) => return Ok(code),
    };
    eprintln!(
        "kpl bench: {}; {}",
        target.description,
        describe_load(&args)
    );

    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let deadline = start + args.duration;
    let sampler = spawn_sampler(target.producer.clone(), start, deadline, args.quiet);
    let (offered, at_deadline, elapsed_all, latency) = match &target.spooled {
        None => {
            let (tx, latency) = spawn_latency(start);
            let offered = offer_load(&args, &target.producer, start, deadline, tx).await?;
            let at_deadline = target.producer.metrics();
            target.producer.flush().await?;
            (offered, at_deadline, start.elapsed(), latency.await?)
        }
        Some((spooled, reports)) => {
            let reports = reports.lock().await.take().expect("taken once");
            let room = Arc::new(Semaphore::new(args.producer.max_outstanding_records));
            let (tx, latency) = spawn_spool_latency(start, reports, room.clone());
            let offered = offer_spool_load(&args, spooled, start, deadline, tx, room).await?;
            let at_deadline = target.producer.metrics();
            spooled.flush().await?;
            (offered, at_deadline, start.elapsed(), latency.await?)
        }
    };
    let mut samples = sampler.await?;
    for s in &mut samples {
        s.latency_ms = latency.percentiles_of_second(s.second);
    }
    let end = target.producer.metrics();
    match &target.spooled {
        None => target.producer.shutdown().await?,
        Some((spooled, _)) => spooled.shutdown().await?,
    }
    let measured = Measured {
        target: &target,
        offered,
        at_deadline,
        end,
        elapsed_all,
        latency: &latency.all,
        failed: latency.failed,
        cpu: process_cpu_seconds() - cpu_start,
        samples: &samples,
    };

    let report = build_report(&args, &measured);
    print_summary(&report);
    print_hot_keys(&target.producer.hot_keys());
    if let Some(path) = &args.report {
        let mut json = serde_json::to_vec_pretty(&report)?;
        json.push(b'\n');
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        crate::plot::draw(path, &plot_data(&args, &measured))?;
    }
    let failed = latency.failed;
    if let Some(sim) = target.sim {
        sim.shutdown().await;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The shards found hot while throttled, with their heaviest keys (the producer also logged
/// them as warnings while it ran).
fn print_hot_keys(hot: &[kpl::producer::HotShard]) {
    for shard in hot.iter().take(4) {
        let keys: Vec<String> = shard
            .keys
            .iter()
            .take(3)
            .map(|k| {
                let share = 100.0 * k.bytes as f64 / shard.bytes.max(1) as f64;
                let key: String = k.partition_key.chars().take(32).collect();
                format!("{key:?} {share:.0}%")
            })
            .collect();
        eprintln!(
            "hot shard {}: {:.1}x the mean of the others' bytes when throttled; heaviest keys: {}",
            shard.shard_id,
            shard.bytes as f64 / shard.mean_other_bytes.max(1) as f64,
            keys.join(", ")
        );
    }
}

/// `--print-records N`: the load's records, one per line.
fn print_records(args: &Args, n: u64) -> anyhow::Result<ExitCode> {
    let mut load = Load::new(args);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..n {
        out.write_all(&load.next().data)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

type SpooledTarget = (
    SpooledProducer,
    tokio::sync::Mutex<Option<mpsc::Receiver<Vec<Delivery>>>>,
);

/// Where the load goes: the embedded simulator, or the endpoint's stream.
struct Target {
    sim: Option<SimHandle>,
    /// The producer; with `--spool`, the one the spool feeds.
    producer: Producer,
    /// With `--spool`: the spooled producer and its delivery reports (until the run takes them).
    spooled: Option<SpooledTarget>,
    /// Open shards.
    shards: usize,
    description: String,
}

impl Target {
    /// The target, or the exit code of a producer that could not start (reported).
    async fn start(
        args: &Args,
        config: kpl::producer::ProducerConfig,
    ) -> anyhow::Result<Result<Target, ExitCode>> {
        let sim = match &args.connect.endpoint_url {
            Some(_) => None,
            None => {
                let sim = Sim::start(SimConfig {
                    streams: vec![(args.stream.clone(), args.shards)],
                    enforce_limits: !args.no_limits,
                    // A bench never reads back: the simulator keeps no copy of the data, so its
                    // memory and CPU stay out of what is measured (see SimConfig::discard_data).
                    discard_data: true,
                    ..Default::default()
                })
                .await?;
                Some(sim)
            }
        };
        let api = match &sim {
            Some(sim) => sim.api(),
            None => args.connect.api(config.request_timeout).await,
        };
        let (producer, spooled) = match &args.spool {
            None => match Producer::new(api, &args.stream, config).await {
                Ok(p) => (p, None),
                Err(e) => return Ok(Err(crate::common::exit_for_producer_error(&e))),
            },
            Some(dir) => {
                let spool_config = SpoolConfig {
                    sync: args.spool_sync.unwrap_or_default(),
                    ..SpoolConfig::default()
                };
                match SpooledProducer::new(api, &args.stream, config, dir, spool_config).await {
                    Ok((p, reports)) => (
                        p.producer().clone(),
                        Some((p, tokio::sync::Mutex::new(Some(reports)))),
                    ),
                    Err(kpl::producer::SpooledProducerError::Producer(e)) => {
                        return Ok(Err(crate::common::exit_for_producer_error(&e)));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let (shards, description) = match &sim {
            Some(_) => (
                args.shards as usize,
                format!(
                    "embedded kpl sim, {} shards, limits {}",
                    args.shards,
                    if args.no_limits { "off" } else { "on" }
                ),
            ),
            None => {
                let sdk = args.connect.sdk(Duration::from_secs(10)).await;
                let all = sdk
                    .list_all_shards(&kpl::client::StreamId::parse(&args.stream))
                    .await
                    .context("cannot list the stream's shards")?;
                let open = all.iter().filter(|s| s.open).count();
                let endpoint = args.connect.endpoint_url.as_deref().unwrap_or("?");
                (
                    open,
                    format!("{endpoint} stream {}, {open} open shards", args.stream),
                )
            }
        };
        Ok(Ok(Target {
            sim,
            producer,
            spooled,
            shards,
            description,
        }))
    }
}

fn describe_load(args: &Args) -> String {
    let size = match args.record_size {
        (min, max) if min == max => format!("{min} B"),
        (min, max) => format!("{min}-{max} B"),
    };
    format!(
        "{} s, {size} records, {} keys ({}), {} payload, {}",
        args.duration.as_secs_f64(),
        args.keys,
        args.key_dist
            .0
            .map_or("uniform".to_owned(), |s| format!("zipf {s}")),
        args.payload,
        args.rate.map_or("closed loop".to_owned(), |r| format!(
            "{r} records/s offered"
        ))
    )
}

/// Send-to-ack latency of the stored user records: over the whole run, and per second of ack.
struct Latency {
    all: Histogram<u64>,
    /// Index k: acked in second k+1 (k to k+1 s after the start).
    per_second: Vec<Histogram<u64>>,
    failed: u64,
}

impl Latency {
    fn histogram() -> Histogram<u64> {
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
    }

    fn new() -> Self {
        Latency {
            all: Latency::histogram(),
            per_second: Vec::new(),
            failed: 0,
        }
    }

    /// `stored` records sent at `sent` were stored now, `lost` failed.
    fn record(&mut self, start: Instant, sent: Instant, stored: u64, lost: u64) {
        let now = Instant::now();
        let micros = (now - sent).as_micros().max(1) as u64;
        let _ = self.all.record_n(micros, stored);
        let second = (now - start).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize_with(second + 1, Latency::histogram);
        }
        let _ = self.per_second[second].record_n(micros, stored);
        self.failed += lost;
    }

    /// p50, p90 and p99 in ms of the records acked in the second that ends at `second`.
    fn percentiles_of_second(&self, second: u64) -> Option<[f64; 3]> {
        let h = self.per_second.get(second.checked_sub(1)? as usize)?;
        (!h.is_empty()).then(|| [0.50, 0.90, 0.99].map(|q| h.value_at_quantile(q) as f64 / 1000.0))
    }
}

/// The task that awaits receipts, in whatever order they resolve: awaiting them in send order
/// would hold the load generator behind the slowest record (a throttled one in backoff).
fn spawn_latency(
    start: Instant,
) -> (
    mpsc::UnboundedSender<(Instant, Outcomes)>,
    tokio::task::JoinHandle<Latency>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Outcomes)>();
    let task = tokio::spawn(async move {
        let mut latency = Latency::new();
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                item = rx.recv(), if open => match item {
                    Some((sent, outcomes)) => pending.push(async move { (sent, outcomes.stored().await) }),
                    None => open = false,
                },
                Some((sent, (stored, lost))) = pending.next(), if !pending.is_empty() => {
                    latency.record(start, sent, stored, lost);
                }
                else => break,
            }
        }
        latency
    });
    (tx, task)
}

/// `--spool`: the task that reads the delivery reports and times each record from the append
/// of its batch (sent on the returned channel as its id range) to its report, giving its room
/// back to the closed loop. Ends once the channel is closed and every batch is reported.
fn spawn_spool_latency(
    start: Instant,
    mut reports: mpsc::Receiver<Vec<Delivery>>,
    room: Arc<Semaphore>,
) -> (
    mpsc::UnboundedSender<(std::ops::Range<SpoolId>, Instant)>,
    tokio::task::JoinHandle<Latency>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(std::ops::Range<SpoolId>, Instant)>();
    let task = tokio::spawn(async move {
        let mut latency = Latency::new();
        // First id of each batch -> (end, sent, records not yet reported).
        let mut batches: std::collections::BTreeMap<u64, (u64, Instant, u64)> =
            std::collections::BTreeMap::new();
        // Reports may come before their batch's range: kept until it does.
        let mut early: Vec<Delivery> = Vec::new();
        let mut open = true;
        loop {
            tokio::select! {
                item = rx.recv(), if open => match item {
                    Some((ids, sent)) => {
                        batches.insert(ids.start.0, (ids.end.0, sent, ids.end.0 - ids.start.0));
                        let waiting = std::mem::take(&mut early);
                        settle(start, &mut latency, &mut batches, &mut early, waiting, &room);
                    }
                    None => open = false,
                },
                batch = reports.recv() => match batch {
                    Some(batch) => settle(start, &mut latency, &mut batches, &mut early, batch, &room),
                    None => break,
                },
            }
            if !open && batches.is_empty() {
                break;
            }
        }
        latency
    });
    (tx, task)
}

fn settle(
    start: Instant,
    latency: &mut Latency,
    batches: &mut std::collections::BTreeMap<u64, (u64, Instant, u64)>,
    early: &mut Vec<Delivery>,
    deliveries: Vec<Delivery>,
    room: &Semaphore,
) {
    for d in deliveries {
        let Some((&first, batch)) = batches.range_mut(..=d.id.0).next_back() else {
            early.push(d);
            continue;
        };
        if d.id.0 >= batch.0 {
            early.push(d);
            continue;
        }
        let (stored, lost) = if d.result.is_ok() { (1, 0) } else { (0, 1) };
        latency.record(start, batch.1, stored, lost);
        room.add_permits(1);
        batch.2 -= 1;
        if batch.2 == 0 {
            batches.remove(&first);
        }
    }
}

/// `--spool`: appends batches until the deadline; each batch's ids go to `appended`. A closed
/// loop waits for `room` (what the reports give back). Returns the user records offered.
async fn offer_spool_load(
    args: &Args,
    spooled: &SpooledProducer,
    start: Instant,
    deadline: Instant,
    appended: mpsc::UnboundedSender<(std::ops::Range<SpoolId>, Instant)>,
    room: Arc<Semaphore>,
) -> anyhow::Result<u64> {
    let mut load = Load::new(args);
    let mut offered = 0u64;
    let n = args.send_batch.unwrap_or(DEFAULT_SPOOL_BATCH);
    if args.rate.is_none() && n > args.producer.max_outstanding_records as u64 {
        anyhow::bail!(
            "--send-batch {n} is more than --max-outstanding-records {}: a closed loop could never offer a batch",
            args.producer.max_outstanding_records
        );
    }
    let offer = async {
        loop {
            match args.rate {
                Some(rate) => {
                    let due = start + Duration::from_secs_f64(offered as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                }
                None => room
                    .acquire_many(n.min(u32::MAX as u64) as u32)
                    .await
                    .expect("never closed")
                    .forget(),
            }
            let records: Vec<UserRecord> = (0..n).map(|_| load.next()).collect();
            let sent = Instant::now();
            let ids = spooled
                .append_batch(records)
                .await
                .map_err(|e| anyhow::anyhow!("the spool refused a batch: {e}"))?;
            offered += n;
            if appended.send((ids, sent)).is_err() {
                return Ok::<(), anyhow::Error>(());
            }
        }
    };
    if let Ok(result) = tokio::time::timeout_at(deadline, offer).await {
        result?;
    }
    Ok(offered)
}

/// The task that takes a sample every second until half a second past the deadline: a line per
/// second on stderr (unless `quiet`), and on a terminal the progress display below them.
fn spawn_sampler(
    producer: Producer,
    start: Instant,
    deadline: Instant,
    quiet: bool,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tokio::spawn(async move {
        let mut progress = Progress::new(terminal && !quiet);
        let mut samples = Vec::new();
        let mut last = producer.metrics();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        let mut second = 0;
        while Instant::now() < deadline + Duration::from_millis(500) {
            tick.tick().await;
            second += 1;
            let m = producer.metrics();
            let s = sample(second, &last, &m);
            if !quiet {
                progress::eprintln_above(&format!(
                    "{:>4}s {:>10.0} rec/s {:>8.2} MiB/s user {:>7.2} MiB/s kinesis {:>6.0} calls/s {:>6.0} throttled entries/s {:>6} pending",
                    s.second,
                    s.user_records,
                    s.user_mib,
                    s.kinesis_mib,
                    s.calls,
                    s.throttled,
                    m.user_records_pending
                ));
            }
            progress.update(&m);
            samples.push(s);
            last = m;
        }
        progress.finish();
        samples
    })
}

/// What second `second` added, from the metrics at its start (`last`) and end (`m`).
fn sample(second: u64, last: &MetricsSnapshot, m: &MetricsSnapshot) -> Sample {
    Sample {
        second,
        user_records: (m.user_records_put - last.user_records_put) as f64,
        user_mib: (m.user_records_data_put - last.user_records_data_put) as f64 / MIB,
        kinesis_records: (m.kinesis_records_put - last.kinesis_records_put) as f64,
        kinesis_mib: (m.kinesis_records_data_put - last.kinesis_records_data_put) as f64 / MIB,
        calls: (m.put_records_calls - last.put_records_calls) as f64,
        throttled: (m.throttled_entries - last.throttled_entries) as f64,
        retries: (m.retries - last.retries) as f64,
        latency_ms: None,
    }
}

/// Offers load until the deadline, exactly (a send waiting for buffer room is abandoned then);
/// every receipt goes to `receipts`. Returns the user records offered.
async fn offer_load(
    args: &Args,
    producer: &Producer,
    start: Instant,
    deadline: Instant,
    receipts: mpsc::UnboundedSender<(Instant, Outcomes)>,
) -> anyhow::Result<u64> {
    let mut load = Load::new(args);
    let mut offered = 0u64;
    let offer = async {
        loop {
            if let Some(rate) = args.rate {
                let due = start + Duration::from_secs_f64(offered as f64 / rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
            }
            if let Some(n) = args.send_batch {
                let records: Vec<UserRecord> = (0..n).map(|_| load.next()).collect();
                let sent = Instant::now();
                match producer.send_batch(records).await {
                    Ok(future) => {
                        offered += n;
                        if receipts.send((sent, Outcomes::Batch(future))).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => anyhow::bail!("the producer refused a batch: {e}"),
                }
                continue;
            }
            for _ in 0..64 {
                let record = load.next();
                let sent = Instant::now();
                match producer.send(record).await {
                    Ok(future) => {
                        offered += 1;
                        if receipts.send((sent, Outcomes::One(future))).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => anyhow::bail!("the producer refused a record: {e}"),
                }
            }
        }
    };
    if let Ok(result) = tokio::time::timeout_at(deadline, offer).await {
        result?;
    }
    Ok(offered)
}

/// Everything a run measured.
struct Measured<'a> {
    target: &'a Target,
    offered: u64,
    at_deadline: MetricsSnapshot,
    end: MetricsSnapshot,
    elapsed_all: Duration,
    latency: &'a Histogram<u64>,
    failed: u64,
    cpu: f64,
    samples: &'a [Sample],
}

/// A shard's byte utilization over `secs` of load: 1.0 is 1 MiB/s throughout.
fn shard_utilization(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (SHARD_WRITE_BYTES_PER_SEC as f64 * secs)
}

fn build_report(args: &Args, m: &Measured<'_>) -> serde_json::Value {
    let (at_deadline, end, hist, shards) = (&m.at_deadline, &m.end, m.latency, m.target.shards);
    let secs = args.duration.as_secs_f64();
    let capacity_bytes = shards as f64 * SHARD_WRITE_BYTES_PER_SEC as f64 * secs;
    let capacity_records = shards as f64 * SHARD_WRITE_RECORDS_PER_SEC as f64 * secs;
    let hottest = at_deadline
        .shards
        .iter()
        .map(|(id, c)| (id.clone(), shard_utilization(c.bytes, secs)))
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let entries = end.put_records_entries.max(1) as f64;
    // Steady state: the seconds after the first, while load was offered.
    let steady: Vec<&Sample> = m
        .samples
        .iter()
        .filter(|s| s.second > 1 && (s.second as f64) <= secs)
        .collect();
    let steady_kinesis_mib = if steady.is_empty() {
        0.0
    } else {
        steady.iter().map(|s| s.kinesis_mib).sum::<f64>() / steady.len() as f64
    };
    json!({
        "target": m.target.description,
        "shards": shards,
        "duration_seconds": secs,
        "load": {
            "record_size": [args.record_size.0, args.record_size.1],
            "keys": args.keys,
            "key_dist": args.key_dist.0.map_or("uniform".to_owned(), |s| format!("zipf:{s}")),
            "payload": args.payload,
            "rate": args.rate,
            "send_batch": args.send_batch,
            "user_records_offered": m.offered,
            "spool": args.spool.as_ref().map(|d| d.display().to_string()),
            "spool_sync": args.spool.as_ref().map(|_| crate::common::sync_policy_name(args.spool_sync.unwrap_or_default())),
        },
        "user_records_put": end.user_records_put,
        "user_records_failed": m.failed,
        "user_bytes_put": end.user_records_data_put,
        "kinesis_records_put": end.kinesis_records_put,
        "kinesis_bytes_put": end.kinesis_records_data_put,
        "put_records_calls": end.put_records_calls,
        "retries": end.retries,
        "throttled_entries": end.throttled_entries,
        "throttled_fraction": end.throttled_entries as f64 / entries,
        "during_load": {
            "user_records_per_second": at_deadline.user_records_put as f64 / secs,
            "user_mib_per_second": at_deadline.user_records_data_put as f64 / MIB / secs,
            "user_mib_per_shard_second": at_deadline.user_records_data_put as f64 / MIB / secs / shards as f64,
            "kinesis_records_per_second": at_deadline.kinesis_records_put as f64 / secs,
            "put_records_calls_per_second": at_deadline.put_records_calls as f64 / secs,
            "byte_utilization": at_deadline.kinesis_records_data_put as f64 / capacity_bytes,
            "record_utilization": at_deadline.kinesis_records_put as f64 / capacity_records,
            "steady_byte_utilization": steady_kinesis_mib * MIB / (shards as f64 * SHARD_WRITE_BYTES_PER_SEC as f64),
            "hottest_shard": hottest.0,
            "hottest_shard_byte_utilization": hottest.1,
        },
        "drain_seconds": (m.elapsed_all.as_secs_f64() - secs).max(0.0),
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0,
        },
        "cpu_seconds": m.cpu,
        "cpu_seconds_per_million_user_records": m.cpu / (end.user_records_put.max(1) as f64 / 1e6),
        "cpu_includes_embedded_simulator": m.target.sim.is_some(),
        "peak_rss_mib": peak_rss_mib(),
        "shards_detail": at_deadline.shards.iter().map(|(id, c)| json!({
            "shard_id": id,
            "kinesis_records": c.kinesis_records,
            "bytes": c.bytes,
            "byte_utilization": shard_utilization(c.bytes, secs),
        })).collect::<Vec<_>>(),
        "per_second": m.samples.iter().map(|s| json!({
            "second": s.second,
            "user_records": s.user_records,
            "user_mib": s.user_mib,
            "kinesis_records": s.kinesis_records,
            "kinesis_mib": s.kinesis_mib,
            "put_records_calls": s.calls,
            "throttled_entries": s.throttled,
            "retries": s.retries,
            "latency_ms": s.latency_ms.map(|[p50, p90, p99]| json!({"p50": p50, "p90": p90, "p99": p99})),
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(r: &serde_json::Value) {
    let d = &r["during_load"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    eprintln!(
        "kpl bench: {:.0} user records/s, {:.2} MiB/s user ({:.2} MiB/s per shard); {:.0} Kinesis records/s, {:.1} PutRecords calls/s",
        f(&d["user_records_per_second"]),
        f(&d["user_mib_per_second"]),
        f(&d["user_mib_per_shard_second"]),
        f(&d["kinesis_records_per_second"]),
        f(&d["put_records_calls_per_second"]),
    );
    eprintln!(
        "kpl bench: shard utilization {:.1}% bytes ({:.1}% steady), {:.1}% records; hottest {} at {:.1}%; {} Kinesis entries throttled ({:.2}% of entries sent); {} user record retries",
        100.0 * f(&d["byte_utilization"]),
        100.0 * f(&d["steady_byte_utilization"]),
        100.0 * f(&d["record_utilization"]),
        d["hottest_shard"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("-"),
        100.0 * f(&d["hottest_shard_byte_utilization"]),
        r["throttled_entries"],
        100.0 * f(&r["throttled_fraction"]),
        r["retries"],
    );
    let l = &r["latency_ms"];
    eprintln!(
        "kpl bench: latency send->ack p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1} CPU s per million user records{}; peak RSS {:.0} MiB; {} user records failed",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
        f(&r["cpu_seconds_per_million_user_records"]),
        if r["cpu_includes_embedded_simulator"] == true {
            " (incl. the simulator)"
        } else {
            ""
        },
        f(&r["peak_rss_mib"]),
        r["user_records_failed"],
    );
}

fn plot_data<'a>(args: &Args, m: &Measured<'a>) -> PlotData<'a> {
    let secs = args.duration.as_secs_f64();
    PlotData {
        title: format!(
            "kpl bench: {}; {}",
            m.target.description,
            describe_load(args)
        ),
        samples: m.samples,
        shards: m
            .at_deadline
            .shards
            .iter()
            .map(|(id, c)| (id.clone(), shard_utilization(c.bytes, secs)))
            .collect(),
        shard_count: m.target.shards,
        duration_secs: secs,
    }
}

#[cfg(test)]
mod tests {
    use super::key_name;

    #[test]
    fn key_names_are_the_six_digit_names_p3_gives_aiokpl() {
        for k in [0, 7, 42, 999_999, 1_000_000, 12_345_678, usize::MAX] {
            assert_eq!(key_name(k), format!("key-{k:06}"));
        }
    }
}
