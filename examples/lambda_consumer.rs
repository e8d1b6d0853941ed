//! A Kinesis-triggered Lambda's record handling: every user record out of the event,
//! decompressed, deaggregated, KCL-checked and deduplicated.
//!
//! Run it on a saved event (the JSON Lambda hands the function):
//! ```text
//! cargo run --features lambda --example lambda_consumer -- event.json [DICTIONARY_FILE...]
//! ```
//! In a real function, build the reader once and use it from the handler, e.g. with the
//! `lambda_runtime` crate:
//! ```text
//! let reader = std::sync::Mutex::new(reader);
//! lambda_runtime::run(service_fn(|e: LambdaEvent<KinesisEvent>| async {
//!     let batch = reader.lock().unwrap().read(&e.payload);
//!     handle(batch.records).await?;
//!     // report batch.problems' sequence numbers as batchItemFailures to see them again
//!     Ok::<_, Error>(())
//! })).await
//! ```

use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::Dictionary;
use kpl::dedup::Deduper;
use kpl::lambda::{KinesisEvent, LambdaReader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let event_path = args
        .next()
        .ok_or("usage: lambda_consumer EVENT.json [DICT...]")?;
    let mut deaggregator = Deaggregator::new();
    for dict in args {
        deaggregator = deaggregator.with_dictionary(&Dictionary::from_bytes(std::fs::read(dict)?)?);
    }
    // In a function: created once per environment, so dedup spans invocations. Size the window
    // to the records a batch window and the producer's record TTL can hold.
    let mut reader = LambdaReader::new()
        .with_deaggregator(deaggregator)
        .with_deduper(Deduper::new(100_000));
    // With a Kinesis client at hand, also check shard ranges as the KCL does:
    // reader.load_shard_ranges(&api, "my-stream").await?;

    let event: KinesisEvent = serde_json::from_slice(&std::fs::read(event_path)?)?;
    let batch = reader.read(&event);
    for r in &batch.records {
        println!(
            "{} {}#{} key={} id={} {}",
            r.shard_id,
            r.sequence_number,
            r.record.sub_sequence_number,
            r.record.partition_key,
            r.record
                .dedup_id()
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            String::from_utf8_lossy(&r.record.data)
        );
    }
    for p in &batch.problems {
        eprintln!("skipped: {p}");
    }
    eprintln!(
        "{} user records, {} duplicates dropped, {} Kinesis records skipped",
        batch.records.len(),
        batch.duplicates,
        batch.problems.len()
    );
    Ok(())
}
