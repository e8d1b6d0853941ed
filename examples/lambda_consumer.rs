//! A Kinesis-triggered Lambda's record handling: every user record out of the event,
//! decompressed, deaggregated, KCL-checked and deduplicated; read, handled, then committed.
//!
//! Run it on a saved event (the JSON Lambda hands the function):
//! ```text
//! cargo run --features lambda --example lambda_consumer -- event.json [DICTIONARY_FILE...]
//! ```
//! In a real function, build the reader once and use it from the handler, e.g. with the
//! `lambda_runtime` crate and `ReportBatchItemFailures` on the event source mapping:
//! ```text
//! let reader = Arc::new(tokio::sync::Mutex::new(reader));
//! lambda_runtime::run(service_fn(move |e: LambdaEvent<KinesisEvent>| {
//!     let reader = reader.clone();
//!     async move {
//!         let mut reader = reader.lock().await;
//!         let mut batch = reader.read(&e.payload);
//!         let mut failures = Vec::new();
//!         for r in batch.by_ref() {
//!             if handle(&r).await.is_err() {
//!                 // Lambda resends this Kinesis record and the ones after it.
//!                 failures.push(r.sequence_number.to_string());
//!                 break;
//!             }
//!         }
//!         // Skipped records (outside their shard's range after a reshard, undecodable):
//!         // count and log them, never report them as failures: retrying cannot fix them,
//!         // and a reported record blocks its shard until it expires.
//!         for p in batch.problems() { tracing::warn!("skipped: {p}"); }
//!         // Only now are the handled records' dedup ids remembered.
//!         match failures.first() {
//!             Some(seq) => { batch.commit_before(seq); }
//!             None => { batch.commit(); }
//!         }
//!         let mut response = KinesisEventResponse::default();
//!         response.batch_item_failures = failures
//!             .into_iter()
//!             .map(|seq| { let mut f = KinesisBatchItemFailure::default(); f.item_identifier = Some(seq); f })
//!             .collect();
//!         Ok::<_, Error>(response)
//!     }
//! })).await
//! ```

use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::Dictionary;
use kpl::dedup::Deduper;
use kpl::lambda::{KinesisEvent, LambdaProblem, LambdaReader, LambdaUserRecord};

/// The function's own work on one user record.
fn handle(r: &LambdaUserRecord) -> Result<(), std::io::Error> {
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
    Ok(())
}

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
    // Read (one user record at a time: an aggregate is never expanded whole), handle, commit.
    let mut batch = reader.read(&event);
    let mut failed_at = None;
    for r in batch.by_ref() {
        if let Err(e) = handle(&r) {
            eprintln!("handler failed at {}: {e}", r.sequence_number);
            failed_at = Some(r.sequence_number.to_string());
            break;
        }
    }
    // Skip and count what cannot be read: a record outside its shard's range is expected
    // after every split (the producer resent its user records); reporting it as a
    // batchItemFailure would block the shard on it.
    let (mut resharded, mut undecodable) = (0, 0);
    for p in batch.problems() {
        match p.problem {
            LambdaProblem::OutsideShardRange { .. } => resharded += 1,
            _ => {
                undecodable += 1;
                eprintln!("skipped: {p}");
            }
        }
    }
    let counts = match &failed_at {
        Some(seq) => batch.commit_before(seq),
        None => batch.commit(),
    };
    eprintln!(
        "{} user records, {} duplicates dropped, {resharded} Kinesis records outside their shard's range (resent by the producer), {undecodable} undecodable; batchItemFailures: {:?}",
        counts.records, counts.duplicates, failed_at
    );
    Ok(())
}
