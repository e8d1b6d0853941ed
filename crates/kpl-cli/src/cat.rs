//! `kpl cat --stream NAME`: read every shard (parents before children), deaggregate plain, KPL
//! and compressed records, check each user record against its shard's hash range (the check
//! that makes the KCL drop an aggregate silently), and print the user records.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::client::StreamId;
use kpl::client::sdk::StartPosition;
use kpl::codec::deaggregate::DecodeError;
use kpl::dedup::Deduper;
use kpl::reader::{ReaderConfig, StreamReader};

use crate::common::{ConnectArgs, DecodeArgs, parse_duration};

/// Arguments of `kpl cat`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// Where to start: trim-horizon, latest, or at-timestamp:SECONDS (since the Unix epoch).
    #[arg(long, default_value = "trim-horizon", value_parser = parse_start)]
    from: StartPosition,
    /// Keep reading new records at the tip of the stream.
    #[arg(long)]
    follow: bool,
    /// Stop after this many user records (0 prints none, like `head -n 0`).
    #[arg(long)]
    max_records: Option<u64>,
    /// Stop after this long without a new record (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// raw: each user record's data on its own line; json: one object per user record with
    /// shard_id, sequence_number, sub_sequence_number, partition_key, explicit_hash_key, data
    /// (base64).
    #[arg(long, default_value = "raw", value_parser = ["raw", "json"])]
    format: String,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Drop user records whose dedup id (written with `kpl put --dedup-ids`) was already seen:
    /// the copies that producer retries and re-reads create.
    #[arg(long)]
    dedup: bool,
    /// How many ids --dedup remembers (about 64 bytes each): cover the records read within
    /// the producer's record TTL.
    #[arg(long, value_name = "IDS", default_value_t = 1_000_000)]
    dedup_window: usize,
    /// No summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_start(s: &str) -> Result<StartPosition, String> {
    match s.split_once(':') {
        None if s == "trim-horizon" => Ok(StartPosition::TrimHorizon),
        None if s == "latest" => Ok(StartPosition::Latest),
        Some(("at-timestamp", t)) => t
            .parse::<f64>()
            .map(StartPosition::AtTimestamp)
            .map_err(|_| format!("{t:?} is not a Unix time in seconds")),
        _ => Err(format!(
            "{s:?}: use trim-horizon, latest or at-timestamp:SECONDS"
        )),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let api = args.connect.sdk(Duration::from_secs(10)).await;
    let config = ReaderConfig {
        start: args.from.clone(),
        follow: args.follow,
        idle_timeout: args.idle_timeout,
        max_records: None,
    };
    let mut reader = StreamReader::new(api, StreamId::parse(&args.stream), config)
        .await
        .with_context(|| format!("cannot read stream {}", args.stream))?;
    let deaggregator = args.decode.deaggregator()?;
    let mut deduper = args.dedup.then(|| Deduper::new(args.dedup_window));
    let json = args.format == "json";
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut user_records, mut outside, mut undecodable) = (0u64, 0u64, 0u64);
    // Records that need a dictionary not given, by dictionary id: said once at the end.
    let mut missing_dictionaries = std::collections::BTreeMap::<u32, u64>::new();
    let limit_reached = |n: u64| args.max_records.is_some_and(|m| n >= m);
    'read: while !limit_reached(user_records)
        && let Some(batch) = reader.next_batch().await?
    {
        for r in batch {
            // One user record at a time: an aggregate is never expanded whole.
            let records =
                match deaggregator.user_records(&r.record.data, &r.record.partition_key, None) {
                    Ok(records) => records,
                    Err(DecodeError::UnknownDictionary(id)) => {
                        undecodable += 1;
                        *missing_dictionaries.entry(id).or_default() += 1;
                        continue;
                    }
                    Err(e) => {
                        undecodable += 1;
                        eprintln!("kpl cat: {} {}: {e}", r.shard_id, r.record.sequence_number);
                        continue;
                    }
                };
            let bad = records.count_outside(r.shard_range);
            if bad > 0 {
                outside += bad as u64;
                eprintln!(
                    "kpl cat: warning: {bad} of {} user records in {} {} hash outside the shard's range: the KCL drops this whole record",
                    records.len(),
                    r.shard_id,
                    r.record.sequence_number
                );
            }
            for u in records {
                if limit_reached(user_records) {
                    break 'read;
                }
                if let Some(d) = &mut deduper
                    && !d.keep(&u)
                {
                    continue;
                }
                let written = if json {
                    let line = serde_json::json!({
                        "shard_id": &*r.shard_id,
                        "sequence_number": r.record.sequence_number,
                        "sub_sequence_number": u.sub_sequence_number,
                        "partition_key": u.partition_key.as_str(),
                        "explicit_hash_key": u.explicit_hash_key.as_deref(),
                        "dedup_id": u.dedup_id().map(|id| id.to_string()),
                        "data": STANDARD.encode(&u.data),
                    });
                    writeln!(out, "{line}")
                } else {
                    out.write_all(&u.data).and_then(|()| out.write_all(b"\n"))
                };
                if let Err(e) = written {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
                user_records += 1;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    for (id, n) in &missing_dictionaries {
        eprintln!(
            "kpl cat: {n} Kinesis records were not decoded: each needs zstd dictionary {id}, which was not given; pass the writer's dictionary with --zstd-dict FILE"
        );
    }
    if !args.quiet {
        eprintln!(
            "kpl cat: {user_records} user records from {} Kinesis records; {outside} outside their shard's range; {undecodable} undecodable{}",
            reader.records_read(),
            deduper
                .map(|d| format!("; {} duplicates dropped", d.duplicates()))
                .unwrap_or_default()
        );
    }
    Ok(if undecodable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
