//! Tuning retries: a short TTL and attempt cap for latency-sensitive data, a gentler backoff,
//! and zstd compression. Each failure says why and carries its attempts.
//!
//! ```text
//! AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example custom_retries -- my-stream
//! ```
//! (`kpl sim --stream my-stream:2` serves it locally, no AWS setup needed; see
//! `minimal_producer`.)

use std::time::Duration;

use kpl::UserRecord;
use kpl::producer::backoff::BackoffConfig;
use kpl::producer::{Compression, ConnectOptions, Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "my-stream".into());
    let config = ProducerConfig {
        max_attempts: 5,
        record_ttl: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        backoff: BackoffConfig {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        },
        compression: Compression::Zstd { level: 3 },
        ..Default::default()
    };
    let producer = Producer::connect(&stream, ConnectOptions::default(), config).await?;
    let future = producer
        .send(UserRecord::new(
            "order-17",
            r#"{"order":17,"status":"paid"}"#,
        ))
        .await?;
    let outcome = future.await;
    producer.shutdown().await?;
    match outcome {
        Ok(receipt) => {
            println!(
                "stored on {} after {} attempt(s)",
                receipt.shard_id,
                receipt.attempts.len()
            );
            Ok(())
        }
        Err(failure) => {
            for (i, a) in failure.attempts.iter().enumerate() {
                eprintln!(
                    "  attempt {}: after {:?}, took {:?}: {:?}",
                    i + 1,
                    a.started_after,
                    a.duration,
                    a.error
                );
            }
            Err(failure.into())
        }
    }
}
