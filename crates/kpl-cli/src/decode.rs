//! `kpl decode`: one Kinesis record payload on stdin -> its user records as JSON lines.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::codec::deaggregate::RecordKind;
use kpl::limits::LARGEST_MAX_RECORD_BYTES;

use crate::common::DecodeArgs;

/// Arguments of `kpl decode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// stdin is base64 (as in `aws kinesis get-records` output or a Lambda event).
    #[arg(long)]
    base64: bool,
    /// The Kinesis record's partition key (used for a plain record).
    #[arg(long, default_value = "-")]
    partition_key: String,
    /// The Kinesis record's explicit hash key, if it was put with one.
    #[arg(long)]
    explicit_hash_key: Option<String>,
    #[command(flatten)]
    decode: DecodeArgs,
}

/// Raw input beyond this is not one Kinesis record (base64 of 10 MiB, plus slack).
const MAX_INPUT: u64 = (LARGEST_MAX_RECORD_BYTES as u64 / 3 + 1) * 4 + 4096;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut input)
        .context("cannot read stdin")?;
    anyhow::ensure!(
        input.len() as u64 <= MAX_INPUT,
        "stdin holds more than one Kinesis record can (10 MiB)"
    );
    let data = if args.base64 {
        let text: Vec<u8> = input
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        STANDARD
            .decode(text)
            .context("stdin is not valid base64 (drop --base64 for raw bytes)")?
    } else {
        input
    };
    let records = args.decode.deaggregator()?.deaggregate(
        &data,
        &args.partition_key,
        args.explicit_hash_key.as_deref(),
    )?;
    let mut out = std::io::stdout().lock();
    for r in records {
        let line = serde_json::json!({
            "partition_key": r.partition_key,
            "explicit_hash_key": r.explicit_hash_key,
            "hash_key": r.hash_key.to_string(),
            "sub_sequence_number": r.sub_sequence_number,
            "kind": match r.kind { RecordKind::Plain => "plain", RecordKind::Aggregated => "aggregated" },
            "compressed": r.compressed,
            "tags": r.tags,
            "dedup_id": r.dedup_id().map(|id| id.to_string()),
            "data": STANDARD.encode(&r.data),
        });
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}
