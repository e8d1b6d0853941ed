//! The smallest useful producer: send a few records, wait for their receipts, shut down.
//!
//! ```text
//! AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example minimal_producer -- my-stream
//! ```
//! (Start a local stream first with `kpl sim --port 4567 --stream my-stream:2`.)

use kpl::UserRecord;
use kpl::producer::{Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "my-stream".into());
    let sdk = aws_config::load_from_env().await;
    let producer = Producer::from_sdk_config(&sdk, &stream, ProducerConfig::default()).await?;

    let mut receipts = Vec::new();
    for i in 0..10 {
        let record = UserRecord::new(format!("user-{}", i % 3), format!("event {i}"));
        receipts.push(producer.send(record).await?);
    }
    for receipt in receipts {
        let r = receipt.await?;
        println!(
            "{} #{} on {}",
            r.sequence_number, r.sub_sequence_number, r.shard_id
        );
    }
    producer.shutdown().await?;
    Ok(())
}
