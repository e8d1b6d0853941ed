//! `kpl dict train`: a zstd dictionary from sample records, and what it gains on records held
//! out of training, compressed one per frame as the producer would.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kpl::codec::frame::{Compressor, Dictionary};
use serde_json::json;

/// `kpl dict ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Train a zstd dictionary on sample lines (files, or stdin), one record per line.
    Train(TrainArgs),
}

/// Arguments of `kpl dict train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Sample files, one record per line; none: stdin.
    files: Vec<PathBuf>,
    /// Where to write the dictionary.
    #[arg(long, short)]
    output: PathBuf,
    /// Largest dictionary in bytes (zstd's own default is 112640).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024)]
    max_size: usize,
    /// zstd level for the held-out comparison.
    #[arg(long, default_value_t = 1)]
    level: i32,
    /// Write the comparison as JSON here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// Every tenth sample is held out of training to measure the dictionary honestly.
const HOLD_OUT_EVERY: usize = 10;

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train(args) => train(args),
    }
}

fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let mut samples = Vec::new();
    if args.files.is_empty() {
        read_lines(std::io::stdin().lock(), &mut samples).context("cannot read stdin")?;
    }
    for path in &args.files {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        read_lines(file, &mut samples)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    anyhow::ensure!(
        samples.len() >= 100,
        "{} sample records: give at least 100 (a few thousand typical records train best)",
        samples.len()
    );
    let (mut training, mut held_out) = (Vec::new(), Vec::new());
    for (i, s) in samples.into_iter().enumerate() {
        if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 {
            held_out.push(s);
        } else {
            training.push(s);
        }
    }
    let dictionary = Dictionary::train(&training, args.max_size)?;
    std::fs::write(&args.output, dictionary.as_bytes())
        .with_context(|| format!("cannot write {}", args.output.display()))?;

    let original: usize = held_out.iter().map(Vec::len).sum();
    let mut plain = Compressor::zstd(args.level)?;
    let mut with_dict = Compressor::zstd_with_dictionary(args.level, &dictionary)?;
    // As the producer sends them: a frame when it is smaller, else the record as is.
    let framed = |c: &mut Compressor| -> usize {
        held_out
            .iter()
            .map(|s| c.compress_bytes(s).map_or(s.len(), |f| f.len()))
            .sum()
    };
    let without = framed(&mut plain);
    let with = framed(&mut with_dict);
    let ratio = |n: usize| original as f64 / n.max(1) as f64;
    eprintln!(
        "kpl dict: dictionary id {} ({} bytes) from {} records, written to {}",
        dictionary.id(),
        dictionary.as_bytes().len(),
        training.len(),
        args.output.display()
    );
    eprintln!(
        "kpl dict: {} held-out records ({} bytes), one per frame at zstd level {}: ratio {:.2}x without the dictionary, {:.2}x with it ({:.2}x smaller)",
        held_out.len(),
        original,
        args.level,
        ratio(without),
        ratio(with),
        without as f64 / with.max(1) as f64
    );
    if let Some(path) = &args.report {
        let report = json!({
            "dictionary_id": dictionary.id(),
            "dictionary_bytes": dictionary.as_bytes().len(),
            "training_records": training.len(),
            "held_out_records": held_out.len(),
            "held_out_bytes": original,
            "level": args.level,
            "bytes_without_dictionary": without,
            "bytes_with_dictionary": with,
            "ratio_without_dictionary": ratio(without),
            "ratio_with_dictionary": ratio(with),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read_lines(input: impl Read, out: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if !line.is_empty() {
            out.push(line.clone());
        }
    }
}
