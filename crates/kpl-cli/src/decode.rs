//! `kpl decode`: one Kinesis record payload on stdin -> its user records as JSON lines.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kpl::codec::deaggregate::{DeaggregatedRecord, RecordKind};
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
    let records = args.decode.deaggregator()?.user_records(
        &data,
        &args.partition_key,
        args.explicit_hash_key.as_deref(),
    )?;
    // One user record at a time: an aggregate of millions of records is never held whole.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut keys = KeyCache::default();
    let written = records
        .into_iter()
        .try_for_each(|r| write_line(&mut out, &r, &mut keys))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

/// The JSON of the last partition key written: user records of an aggregate mostly repeat
/// their neighbour's key, which is then escaped once, not once per record.
#[derive(Default)]
struct KeyCache {
    key: String,
    json: Vec<u8>,
}

impl KeyCache {
    fn json(&mut self, key: &str) -> &[u8] {
        if self.json.is_empty() || self.key != key {
            self.key = key.to_owned();
            self.json = serde_json::to_vec(key).expect("a string serializes");
        }
        &self.json
    }
}

/// One user record as a JSON object, keys in sorted order (as `serde_json::json!` wrote them),
/// written without building a JSON value per record.
fn write_line(
    out: &mut impl Write,
    r: &DeaggregatedRecord,
    keys: &mut KeyCache,
) -> std::io::Result<()> {
    let kind = match r.kind {
        RecordKind::Plain => "plain",
        RecordKind::Aggregated => "aggregated",
    };
    write!(out, "{{\"compressed\":{},\"data\":", r.compressed)?;
    serde_json::to_writer(&mut *out, &STANDARD.encode(&r.data))?;
    out.write_all(b",\"dedup_id\":")?;
    serde_json::to_writer(&mut *out, &r.dedup_id().map(|id| id.to_string()))?;
    out.write_all(b",\"explicit_hash_key\":")?;
    serde_json::to_writer(&mut *out, &r.explicit_hash_key.as_deref())?;
    write!(
        out,
        ",\"hash_key\":\"{}\",\"kind\":\"{kind}\",\"partition_key\":",
        r.hash_key
    )?;
    out.write_all(keys.json(&r.partition_key))?;
    write!(
        out,
        ",\"sub_sequence_number\":{},\"tags\":",
        r.sub_sequence_number
    )?;
    serde_json::to_writer(&mut *out, &r.tags)?;
    out.write_all(b"}\n")
}
