//! `kpl sim`: a local Kinesis with shard limits and a fault layer, for trying producers (and
//! kpl itself) against throttling and failures before production.
//!
//! Ready means ready: the `--stream`s are created before the port accepts a connection, and
//! the one line on stdout, printed then, says where and what:
//!
//! ```text
//! kpl sim: listening on http://127.0.0.1:PORT streams=NAME:SHARDS[,NAME:SHARDS...]
//! ```
//!
//! (`https://` with `--tls-cert` / `--tls-key`.)
//!
//! (the endpoint is the fifth space-separated word, as in `read -r _ _ _ _ endpoint _`;
//! `streams=` is empty without `--stream`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kpl_sim::{EntryFault, Faults, RequestFault, Sim, SimConfig, SimTls};

/// Arguments of `kpl sim`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one). Once the streams exist, one line on stdout
    /// names the endpoint: `kpl sim: listening on http://127.0.0.1:PORT streams=NAME:SHARDS,...`.
    #[arg(long, default_value_t = 4567)]
    port: u16,
    /// A stream to create, as NAME:SHARDS (repeatable).
    #[arg(long = "stream", value_name = "NAME:SHARDS", value_parser = parse_stream)]
    streams: Vec<(String, u32)>,
    /// Do not enforce shard write limits (1000 records/s, 1 MiB/s per shard).
    #[arg(long)]
    no_limits: bool,
    /// Seed of the fault layer's decisions (same seed, same requests: same faults).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fail this share of PutRecords entries with CODE, as CODE:SHARE (repeatable), e.g.
    /// InternalFailure:0.05 or ProvisionedThroughputExceededException:0.3.
    #[arg(long = "fail-entries", value_name = "CODE:SHARE", value_parser = parse_entry_fault)]
    entry_failures: Vec<EntryFault>,
    /// Answer this share of put requests with an error, as CODE:STATUS:SHARE (repeatable), e.g.
    /// ServiceUnavailable:503:0.1 or AccessDeniedException:400:1.
    #[arg(long = "fail-requests", value_name = "CODE:STATUS:SHARE", value_parser = parse_request_fault)]
    request_errors: Vec<RequestFault>,
    /// Milliseconds added to every put request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of put requests that hang (not stored) for --hang-ms.
    #[arg(long, default_value_t = 0.0)]
    hang: f64,
    /// Share of put requests stored whose answer then hangs for --hang-ms (duplicates!).
    #[arg(long, default_value_t = 0.0)]
    lose_responses: f64,
    /// Length of a hang in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    hang_ms: u64,
    /// Share of new connections reset at once.
    #[arg(long, default_value_t = 0.0)]
    resets: f64,
    /// Faults as JSON (the shape of POST /_sim/faults); flags above are ignored when given.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate (chain), e.g. one made for 127.0.0.1 by your
    /// test CA: to try a CONNECT proxy or a private CA (`kpl put --ca-file`) against it. The
    /// line on stdout then names `https://127.0.0.1:PORT`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn parse_stream(s: &str) -> Result<(String, u32), String> {
    let (name, shards) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: use NAME:SHARDS"))?;
    let shards: u32 = shards
        .parse()
        .map_err(|_| format!("{shards:?} is not a shard count"))?;
    Ok((name.to_owned(), shards))
}

fn share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{s:?} is not a share from 0 to 1"))
}

fn parse_entry_fault(s: &str) -> Result<EntryFault, String> {
    let (code, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: use CODE:SHARE"))?;
    Ok(EntryFault {
        code: code.to_owned(),
        probability: share(p)?,
    })
}

fn parse_request_fault(s: &str) -> Result<RequestFault, String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(code), Some(status), Some(p)) => Ok(RequestFault {
            code: code.to_owned(),
            status: status
                .parse()
                .map_err(|_| format!("{status:?} is not an HTTP status"))?,
            probability: share(p)?,
        }),
        _ => Err(format!("{s:?}: use CODE:STATUS:SHARE")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let faults = match &args.faults {
        Some(path) => serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a faults JSON", path.display()))?,
        None => Faults {
            entry_failures: args.entry_failures,
            request_errors: args.request_errors,
            latency_ms: args.latency_ms,
            hang_probability: args.hang,
            lost_response_probability: args.lose_responses,
            hang_ms: args.hang_ms,
            reset_probability: args.resets,
            ..Default::default()
        },
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(SimTls::from_files(cert, key)?),
        _ => None,
    };
    let sim = Sim::start(SimConfig {
        port: args.port,
        streams: args.streams.clone(),
        enforce_limits: !args.no_limits,
        seed: args.seed,
        faults,
        tls,
        ..Default::default()
    })
    .await?;
    println!("{}", endpoint_line(sim.endpoint(), &args.streams));
    eprintln!(
        "kpl sim: Kinesis at {} (shard limits {}); faults: POST /_sim/faults, stats: GET /_sim/stats; Ctrl-C stops",
        sim.endpoint(),
        if args.no_limits { "off" } else { "on" }
    );
    wait_for_signal().await;
    eprintln!("kpl sim: stopping; {}", sim.stats());
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The line scripts read to know `kpl sim` is ready (see the module docs).
fn endpoint_line(endpoint: &str, streams: &[(String, u32)]) -> String {
    let streams: Vec<String> = streams
        .iter()
        .map(|(name, shards)| format!("{name}:{shards}"))
        .collect();
    format!(
        "kpl sim: listening on {endpoint} streams={}",
        streams.join(",")
    )
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
