//! A producer under load: `send` waits when the buffer is full, receipts are collected on a
//! separate task, and failures come back with the record so nothing is lost silently.
//!
//! ```text
//! AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example backpressure_and_receipts -- my-stream
//! ```
//! (`kpl sim --stream my-stream:2` serves it locally, no AWS setup needed; see
//! `minimal_producer`.)

use kpl::UserRecord;
use kpl::producer::{ConnectOptions, Producer, ProducerConfig, SendErrorReason};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "my-stream".into());
    let config = ProducerConfig {
        // At most 10 000 records / 8 MiB unresolved: send() waits beyond that.
        max_outstanding_records: 10_000,
        max_outstanding_bytes: 8 * 1024 * 1024,
        ..Default::default()
    };
    let producer = Producer::connect(&stream, ConnectOptions::default(), config).await?;

    // Receipts are awaited on their own task, in send order.
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let (mut stored, mut failed) = (0u64, 0u64);
        while let Some(future) = rx.recv().await {
            match future.await {
                Ok(_) => stored += 1,
                Err(failure) => {
                    failed += 1;
                    eprintln!("lost: {failure}");
                }
            }
        }
        (stored, failed)
    });

    for i in 0..100_000u64 {
        let record = UserRecord::new(
            format!("device-{}", i % 500),
            format!("{{\"reading\":{i}}}"),
        );
        // try_send never waits: fall back to send when the buffer is full.
        let future = match producer.try_send(record) {
            Ok(f) => f,
            Err(e) if e.reason == SendErrorReason::Full => producer.send(e.record).await?,
            Err(e) => return Err(e.into()),
        };
        tx.send(future).await?;
    }
    drop(tx);
    producer.shutdown().await?;
    let (stored, failed) = collector.await?;
    println!("stored {stored}, failed {failed}; {:?}", producer.metrics());
    if failed > 0 {
        return Err(format!("{failed} records were not stored").into());
    }
    Ok(())
}
