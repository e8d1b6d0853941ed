//! `kpl bench`: the producer under a synthetic load, measured the way a user sizes a stream:
//! how much of the shards' capacity it uses, how much is throttled, the send-to-ack latency, and
//! what it costs in CPU and memory. With no `--endpoint-url` it runs against an embedded
//! `kpl sim` with shard limits on, so it needs no setup at all.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use kpl::UserRecord;
use kpl::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};
use kpl::producer::{BatchFuture, MetricsSnapshot, Producer, RecordFuture};
use kpl_sim::{Sim, SimConfig};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common::{ConnectArgs, ProducerArgs, parse_duration};
use crate::cpu::process_cpu_seconds;

const MIB: f64 = 1024.0 * 1024.0;

/// Arguments of `kpl bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream to write (with --endpoint-url it must exist; on the embedded simulator it is made).
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Shards of the simulator's stream (ignored with --endpoint-url).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Simulator without shard limits (measures the producer alone).
    #[arg(long)]
    no_limits: bool,
    /// How long to offer load.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Data bytes per record: N, or MIN-MAX for a uniform range.
    #[arg(long, default_value = "100", value_parser = parse_size)]
    record_size: (usize, usize),
    /// Distinct partition keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Key popularity: uniform, or zipf:S (hot keys make hot shards).
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    key_dist: KeyDist,
    /// random (incompressible) or json-logs (log-like JSON lines).
    #[arg(long, default_value = "random", value_parser = ["random", "json-logs"])]
    payload: String,
    /// Offer this many user records per second (open loop); default: as fast as the producer
    /// takes them (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Hand records over with `send_batch`, this many at a time, instead of `send` one by one.
    /// A record's latency is then its batch's: until the last of its records is stored.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    send_batch: Option<u64>,
    /// Seed of the load generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write every figure as JSON here (fields in the README).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw throughput, throttling and per-shard utilization as SVG here.
    #[arg(long)]
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

#[derive(Clone, Debug, Default)]
struct Sample {
    second: u64,
    user_records: f64,
    user_mib: f64,
    kinesis_records: f64,
    kinesis_mib: f64,
    calls: f64,
    throttled: f64,
    retries: f64,
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
        let mut load = Load::new(&args);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for _ in 0..n {
            out.write_all(&load.next().data)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = args.producer.config()?;
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
    let producer = match Producer::new(api, &args.stream, config).await {
        Ok(p) => p,
        Err(e) => return Ok(crate::common::exit_for_producer_error(&e)),
    };
    let shards = match &sim {
        Some(_) => args.shards as usize,
        None => {
            let sdk = args.connect.sdk(Duration::from_secs(10)).await;
            let all = sdk
                .list_all_shards(&kpl::client::StreamId::parse(&args.stream))
                .await
                .context("cannot list the stream's shards")?;
            all.iter().filter(|s| s.open).count()
        }
    };
    let target = match &sim {
        Some(_) => format!(
            "embedded kpl sim, {shards} shards, limits {}",
            if args.no_limits { "off" } else { "on" }
        ),
        None => format!(
            "{} stream {}, {shards} open shards",
            args.connect.endpoint_url.as_deref().unwrap_or("?"),
            args.stream
        ),
    };
    eprintln!(
        "kpl bench: {target}; {} s, {}..{} B records, {} keys ({}), {} payload, {}",
        args.duration.as_secs_f64(),
        args.record_size.0,
        args.record_size.1,
        args.keys,
        args.key_dist
            .0
            .map_or("uniform".to_owned(), |s| format!("zipf {s}")),
        args.payload,
        args.rate.map_or("closed loop".to_owned(), |r| format!(
            "{r} records/s offered"
        ))
    );

    // Receipts are awaited in send order on their own task: latency send -> ack.
    // Receipts are awaited in whatever order they resolve: awaiting them in send order would
    // hold the load generator behind the slowest record (a throttled one in backoff).
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Outcomes)>();
    let failed = Arc::new(AtomicU64::new(0));
    let latency = {
        let failed = failed.clone();
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    item = rx.recv(), if open => match item {
                        Some((sent, outcomes)) => pending.push(async move { (sent, outcomes.stored().await) }),
                        None => open = false,
                    },
                    Some((sent, (stored, lost))) = pending.next(), if !pending.is_empty() => {
                        let micros = sent.elapsed().as_micros().max(1) as u64;
                        let _ = hist.record_n(micros, stored);
                        failed.fetch_add(lost, Ordering::Relaxed);
                    }
                    else => break,
                }
            }
            hist
        })
    };

    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let deadline = start + args.duration;
    let sampler = {
        let producer = producer.clone();
        let quiet = args.quiet;
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut last = producer.metrics();
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut second = 0;
            while Instant::now() < deadline + Duration::from_millis(500) {
                tick.tick().await;
                second += 1;
                let m = producer.metrics();
                let s = Sample {
                    second,
                    user_records: (m.user_records_put - last.user_records_put) as f64,
                    user_mib: (m.user_records_data_put - last.user_records_data_put) as f64 / MIB,
                    kinesis_records: (m.kinesis_records_put - last.kinesis_records_put) as f64,
                    kinesis_mib: (m.kinesis_records_data_put - last.kinesis_records_data_put)
                        as f64
                        / MIB,
                    calls: (m.put_records_calls - last.put_records_calls) as f64,
                    throttled: (m.throttled_entries - last.throttled_entries) as f64,
                    retries: (m.retries - last.retries) as f64,
                };
                if !quiet {
                    let line = format!(
                        "{:>4}s {:>10.0} rec/s {:>8.2} MiB/s user {:>7.2} MiB/s kinesis {:>6.0} calls/s {:>6.0} throttled {:>6} pending",
                        s.second,
                        s.user_records,
                        s.user_mib,
                        s.kinesis_mib,
                        s.calls,
                        s.throttled,
                        m.user_records_pending
                    );
                    if terminal {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
                samples.push(s);
                last = m;
            }
            if !quiet && terminal {
                eprintln!();
            }
            samples
        })
    };

    let mut load = Load::new(&args);
    let mut offered = 0u64;
    // Offer load until the deadline, exactly: a send waiting for buffer room is abandoned then.
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
                        if tx.send((sent, Outcomes::Batch(future))).is_err() {
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
                        if tx.send((sent, Outcomes::One(future))).is_err() {
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
    let at_deadline = producer.metrics();
    producer.flush().await;
    let elapsed_all = start.elapsed();
    drop(tx);
    let hist = latency.await?;
    let samples = sampler.await?;
    let end = producer.metrics();
    producer.shutdown().await;
    let cpu = process_cpu_seconds() - cpu_start;

    let report = build_report(
        &args,
        &target,
        shards,
        offered,
        &at_deadline,
        &end,
        elapsed_all,
        &hist,
        failed.load(Ordering::Relaxed),
        cpu,
        sim.is_some(),
        &samples,
    );
    print_summary(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&samples, &at_deadline, shards, args.duration))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(if failed.load(Ordering::Relaxed) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &Args,
    target: &str,
    shards: usize,
    offered: u64,
    at_deadline: &MetricsSnapshot,
    end: &MetricsSnapshot,
    elapsed_all: Duration,
    hist: &Histogram<u64>,
    failed: u64,
    cpu: f64,
    embedded: bool,
    samples: &[Sample],
) -> serde_json::Value {
    let secs = args.duration.as_secs_f64();
    let capacity_bytes = shards as f64 * SHARD_WRITE_BYTES_PER_SEC as f64 * secs;
    let capacity_records = shards as f64 * SHARD_WRITE_RECORDS_PER_SEC as f64 * secs;
    let hottest = at_deadline
        .shards
        .iter()
        .map(|(id, c)| {
            (
                id.clone(),
                c.bytes as f64 / (SHARD_WRITE_BYTES_PER_SEC as f64 * secs),
            )
        })
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let entries = end.put_records_entries.max(1) as f64;
    // Steady state: the seconds after the first, while load was offered.
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.second > 1 && (s.second as f64) <= secs)
        .collect();
    let steady_kinesis_mib = if steady.is_empty() {
        0.0
    } else {
        steady.iter().map(|s| s.kinesis_mib).sum::<f64>() / steady.len() as f64
    };
    json!({
        "target": target,
        "shards": shards,
        "duration_seconds": secs,
        "load": {
            "record_size": [args.record_size.0, args.record_size.1],
            "keys": args.keys,
            "key_dist": args.key_dist.0.map_or("uniform".to_owned(), |s| format!("zipf:{s}")),
            "payload": args.payload,
            "rate": args.rate,
            "send_batch": args.send_batch,
            "user_records_offered": offered,
        },
        "user_records_put": end.user_records_put,
        "user_records_failed": failed,
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
        "drain_seconds": (elapsed_all.as_secs_f64() - secs).max(0.0),
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0,
        },
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_user_records": cpu / (end.user_records_put.max(1) as f64 / 1e6),
        "cpu_includes_embedded_simulator": embedded,
        "peak_rss_mib": peak_rss_mib(),
        "shards_detail": at_deadline.shards.iter().map(|(id, c)| json!({
            "shard_id": id,
            "kinesis_records": c.kinesis_records,
            "bytes": c.bytes,
            "byte_utilization": c.bytes as f64 / (SHARD_WRITE_BYTES_PER_SEC as f64 * secs),
        })).collect::<Vec<_>>(),
        "per_second": samples.iter().map(|s| json!({
            "second": s.second,
            "user_records": s.user_records,
            "user_mib": s.user_mib,
            "kinesis_records": s.kinesis_records,
            "kinesis_mib": s.kinesis_mib,
            "put_records_calls": s.calls,
            "throttled_entries": s.throttled,
            "retries": s.retries,
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(r: &serde_json::Value) {
    let d = &r["during_load"];
    eprintln!(
        "kpl bench: {:.0} user records/s, {:.2} MiB/s user ({:.2} MiB/s per shard); {:.0} Kinesis records/s, {:.1} calls/s",
        d["user_records_per_second"].as_f64().unwrap_or(0.0),
        d["user_mib_per_second"].as_f64().unwrap_or(0.0),
        d["user_mib_per_shard_second"].as_f64().unwrap_or(0.0),
        d["kinesis_records_per_second"].as_f64().unwrap_or(0.0),
        d["put_records_calls_per_second"].as_f64().unwrap_or(0.0),
    );
    eprintln!(
        "kpl bench: shard utilization {:.1}% bytes ({:.1}% steady), {:.1}% records; hottest {} at {:.1}%; throttled {:.2}% of entries; {} retries",
        100.0 * d["byte_utilization"].as_f64().unwrap_or(0.0),
        100.0 * d["steady_byte_utilization"].as_f64().unwrap_or(0.0),
        100.0 * d["record_utilization"].as_f64().unwrap_or(0.0),
        d["hottest_shard"].as_str().unwrap_or("-"),
        100.0 * d["hottest_shard_byte_utilization"].as_f64().unwrap_or(0.0),
        100.0 * r["throttled_fraction"].as_f64().unwrap_or(0.0),
        r["retries"],
    );
    let l = &r["latency_ms"];
    eprintln!(
        "kpl bench: latency send->ack p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1} CPU s per million user records{}; peak RSS {:.0} MiB; {} failed",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
        r["cpu_seconds_per_million_user_records"]
            .as_f64()
            .unwrap_or(0.0),
        if r["cpu_includes_embedded_simulator"] == true {
            " (incl. the simulator)"
        } else {
            ""
        },
        r["peak_rss_mib"].as_f64().unwrap_or(0.0),
        r["user_records_failed"],
    );
}

/// Two panels: throughput and throttling per second; byte utilization per shard.
fn plot(samples: &[Sample], end: &MetricsSnapshot, shards: usize, duration: Duration) -> String {
    let (w, h, pad) = (900.0, 260.0, 50.0);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n",
        2.0 * h + 40.0
    );
    let n = samples.len().max(2) as f64;
    let max_y = samples
        .iter()
        .map(|s| s.user_mib.max(s.kinesis_mib))
        .fold(shards as f64, f64::max)
        * 1.1;
    let max_t = samples.iter().map(|s| s.throttled).fold(1.0, f64::max);
    let x = |i: f64| pad + (w - 2.0 * pad) * i / (n - 1.0);
    let y = |v: f64, m: f64| h - pad + 10.0 - (h - 2.0 * pad) * v / m;
    let line = |f: &dyn Fn(&Sample) -> f64, m: f64| -> String {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:.1},{:.1}", x(i as f64), y(f(s), m)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        svg,
        "<text x='{pad}' y='20'>MiB/s per second: user (blue), Kinesis (green), shard capacity (grey dashes); throttled entries/s (red, right scale, max {max_t:.0})</text>"
    );
    let _ = writeln!(
        svg,
        "<line x1='{pad}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='grey' stroke-dasharray='4'/>",
        w - pad,
        y(shards as f64, max_y),
        y(shards as f64, max_y)
    );
    for (f, color, m) in [
        (
            &(|s: &Sample| s.user_mib) as &dyn Fn(&Sample) -> f64,
            "blue",
            max_y,
        ),
        (&|s: &Sample| s.kinesis_mib, "green", max_y),
        (&|s: &Sample| s.throttled, "red", max_t),
    ] {
        let _ = writeln!(
            svg,
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            line(f, m)
        );
    }
    let _ = writeln!(
        svg,
        "<text x='{pad}' y='{:.0}'>0 s</text><text x='{}' y='{:.0}'>{} s</text><text x='5' y='{:.0}'>{max_y:.1}</text>",
        h - 20.0,
        w - pad - 20.0,
        h - 20.0,
        samples.len(),
        pad
    );
    let top = h + 20.0;
    let _ = writeln!(
        svg,
        "<text x='{pad}' y='{:.0}'>byte utilization per shard (100% = 1 MiB/s for {} s)</text>",
        top + 10.0,
        duration.as_secs()
    );
    let count = end.shards.len().max(1) as f64;
    let bw = (w - 2.0 * pad) / count;
    for (i, (_, c)) in end.shards.iter().enumerate() {
        let u = c.bytes as f64 / (SHARD_WRITE_BYTES_PER_SEC as f64 * duration.as_secs_f64());
        let bh = (h - 2.0 * pad) * u.min(1.2) / 1.2;
        let _ = writeln!(
            svg,
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='steelblue'/>",
            pad + i as f64 * bw + 1.0,
            top + h - pad - bh,
            (bw - 2.0).max(1.0),
            bh
        );
    }
    let full = top + h - pad - (h - 2.0 * pad) / 1.2;
    let _ = writeln!(
        svg,
        "<line x1='{pad}' x2='{}' y1='{full:.1}' y2='{full:.1}' stroke='grey' stroke-dasharray='4'/><text x='5' y='{full:.1}'>100%</text>",
        w - pad
    );
    svg.push_str("</svg>\n");
    svg
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
