//! What PutRecords calls through the AWS SDK cost in CPU on their own, with no producer around
//! them: the floor under any producer's CPU per record when records arrive slowly enough that
//! each call carries few of them. `scripts/p3.py` runs it at the call rate and shape of its
//! `kpl bench` run, to show how much of kpl's CPU is the client's.
//!
//! ```text
//! cargo run --release --example sdk_call_cost -- ENDPOINT STREAM CALLS_PER_SECOND ENTRIES ENTRY_BYTES SECONDS
//! ```
//!
//! Calls go out one at a time, paced to `CALLS_PER_SECOND`, each with `ENTRIES` records of
//! `ENTRY_BYTES` random bytes, on one thread (the cheapest way to run them: no cross-thread
//! wake-ups), through the same client `kpl` uses ([`SdkKinesis`]: SDK retries off, rustls on
//! ring). Prints one JSON line: calls, CPU seconds (the whole process, from the first paced call
//! to the last answer) and CPU microseconds per call.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kpl::client::sdk::{ConnectOptions, SdkKinesis};
use kpl::client::{KinesisApi, PutRecordsEntry, PutRecordsResultEntry, StreamId};
use rand::RngCore;

// The CPU clock `kpl bench` reads.
#[path = "../crates/kpl-cli/src/cpu.rs"]
mod cpu;
use cpu::process_cpu_seconds;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        endpoint,
        stream,
        calls_per_second,
        entries,
        entry_bytes,
        seconds,
    ] = &args[..]
    else {
        return Err(
            "usage: sdk_call_cost ENDPOINT STREAM CALLS_PER_SECOND ENTRIES ENTRY_BYTES SECONDS"
                .into(),
        );
    };
    let calls_per_second: f64 = calls_per_second.parse()?;
    let entries: usize = entries.parse()?;
    let entry_bytes: usize = entry_bytes.parse()?;
    let seconds: f64 = seconds.parse()?;
    if !calls_per_second.is_finite() || calls_per_second <= 0.0 || !(1..=500).contains(&entries) {
        return Err("CALLS_PER_SECOND must be > 0 and ENTRIES within 1..=500".into());
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let kinesis = SdkKinesis::connect(ConnectOptions {
            endpoint_url: Some(endpoint.clone()),
            region: None,
            attempt_timeout: Some(Duration::from_secs(10)),
        })
        .await;
        let stream = StreamId::Name(stream.clone());
        let mut rng = rand::rng();
        let data: Vec<Bytes> = (0..entries)
            .map(|_| {
                let mut d = vec![0u8; entry_bytes];
                rng.fill_bytes(&mut d);
                Bytes::from(d)
            })
            .collect();
        let call = || {
            let batch = data
                .iter()
                .enumerate()
                .map(|(i, d)| PutRecordsEntry {
                    partition_key: format!("key-{i:06}"),
                    explicit_hash_key: None,
                    data: d.clone(),
                })
                .collect();
            kinesis.put_records(&stream, batch)
        };
        let check = |results: Vec<PutRecordsResultEntry>| match results
            .iter()
            .find(|r| matches!(r, PutRecordsResultEntry::Failed { .. }))
        {
            Some(failed) => Err(format!("an entry failed: {failed:?}")),
            None => Ok(()),
        };
        // The first call opens the connection: not counted.
        check(call().await?)?;
        let cpu_start = process_cpu_seconds();
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            let due = start + Duration::from_secs_f64(calls as f64 / calls_per_second);
            tokio::time::sleep_until(due.into()).await;
            check(call().await?)?;
            calls += 1;
        }
        let cpu = process_cpu_seconds() - cpu_start;
        println!(
            "{{\"calls\": {calls}, \"elapsed_seconds\": {:.3}, \"cpu_seconds\": {cpu:.3}, \"cpu_us_per_call\": {:.1}}}",
            start.elapsed().as_secs_f64(),
            cpu / calls as f64 * 1e6
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
