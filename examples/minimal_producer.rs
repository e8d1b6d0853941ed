//! The smallest useful producer: send a few records, wait for their receipts, shut down.
//!
//! ```text
//! AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example minimal_producer -- my-stream
//! ```
//! (Start a local stream first with `cargo run -p kpl-cli -- sim --stream my-stream:2`: it
//! listens on 127.0.0.1:4567 and needs no AWS setup. Without `AWS_ENDPOINT_URL` the same code
//! writes to the stream on AWS, with your credentials and region.)

use kpl::UserRecord;
use kpl::producer::{ConnectOptions, Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "my-stream".into());
    let producer = Producer::connect(
        &stream,
        ConnectOptions::default(),
        ProducerConfig::default(),
    )
    .await?;

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
