//! A Firehose data-transformation Lambda for a kpl-written Kinesis stream: compressed and
//! aggregated records in, their user records (one per line) out, so S3 gets plain data.
//!
//! Run it on a saved event (the JSON Firehose hands the function) and print the response:
//! ```text
//! cargo run --features lambda --example firehose_transform -- event.json [DICTIONARY_FILE...]
//! ```
//! In a real function, with the `lambda_runtime` crate:
//! ```text
//! let transformer = FirehoseTransformer::new().with_deaggregator(deaggregator);
//! lambda_runtime::run(service_fn(|e: LambdaEvent<KinesisFirehoseEvent>| async {
//!     let outcome = transformer.transform(&e.payload);
//!     for f in &outcome.failures { tracing::warn!("{}: {}", f.record_id, f.reason); }
//!     Ok::<_, Error>(outcome.response)
//! })).await
//! ```
//! Set the delivery stream's Lambda processor `BufferSizeInMBs` to at most 4.5 MB divided by
//! the data's compression ratio, so the expanded records fit in Lambda's 6 MB response.

use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::Dictionary;
use kpl::lambda::firehose::{FirehoseTransformer, KinesisFirehoseEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let event_path = args
        .next()
        .ok_or("usage: firehose_transform EVENT.json [DICT...]")?;
    let mut deaggregator = Deaggregator::new();
    for dict in args {
        deaggregator = deaggregator.with_dictionary(&Dictionary::from_bytes(std::fs::read(dict)?)?);
    }
    let transformer = FirehoseTransformer::new().with_deaggregator(deaggregator);
    let event: KinesisFirehoseEvent = serde_json::from_slice(&std::fs::read(event_path)?)?;
    let outcome = transformer.transform(&event);
    for f in &outcome.failures {
        eprintln!("ProcessingFailed {}: {}", f.record_id, f.reason);
    }
    eprintln!(
        "{} records, {} user records out, {} failed",
        event.records.len(),
        outcome.user_records,
        outcome.failures.len()
    );
    println!("{}", serde_json::to_string(&outcome.response)?);
    Ok(())
}
