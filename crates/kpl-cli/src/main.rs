//! `kpl`: put lines into a Kinesis stream, read a stream back, decode a record, run a local
//! Kinesis with shard limits and faults, and measure shard throughput.
//!
//! Exit codes: 0 success; 1 some records failed (they are reported); 2 usage, configuration,
//! credential or stream errors (nothing could be done), with a message that says what to do;
//! `kpl put` also 130 / 143 when SIGINT / SIGTERM stopped it before every line read was stored.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cat;
mod common;
mod cpu;
mod decode;
mod dict;
mod input;
mod metrics_export;
mod plot;
mod progress;
mod put;
mod put_spool;
mod sim;
mod source;

/// Kinesis Data Streams producer and reader.
#[derive(Parser, Debug)]
#[command(name = "kpl", version, about, long_about = None)]
struct Cli {
    /// Threads that run the producer, the AWS client and everything else: 1 runs all on the
    /// calling thread (least CPU per record); default: one per core (most throughput).
    #[arg(long, global = true, value_name = "N", env = "KPL_THREADS", value_parser = parse_threads)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put lines (stdin, or --file) into a stream, one user record per line.
    Put(put::Args),
    /// Read a stream back: every shard, parents before children, deaggregated.
    Cat(cat::Args),
    /// Decode one Kinesis record payload from stdin into its user records (JSON lines).
    Decode(decode::Args),
    /// Run a local Kinesis with shard limits and injectable faults.
    Sim(sim::Args),
    /// Measure shard throughput, throttling, latency and CPU under a synthetic load.
    Bench(bench::Args),
    /// zstd dictionaries for small records.
    #[command(subcommand)]
    Dict(dict::Command),
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("use at least 1 thread".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of threads")),
    }
}

/// mimalloc: the pipeline frees each record's key and data as it aggregates them, a pattern on
/// which glibc's malloc spends its time consolidating free lists (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error")),
        )
        // Log lines print above a progress display instead of tearing it; no colour codes
        // in a file or a pipe.
        .with_writer(progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kpl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Put(args) => put::run(args).await,
            Command::Cat(args) => cat::run(args).await,
            Command::Decode(args) => decode::run(args),
            Command::Sim(args) => sim::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Dict(command) => dict::run(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kpl: {e:#}");
            ExitCode::from(2)
        }
    }
}
