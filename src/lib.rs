//! kpl puts data into Amazon Kinesis Data Streams as fast as the shards allow, without losing
//! a record, and reads back what it wrote: the Kinesis Producer Library rebuilt in-process.
//!
//! ```text
//! UserRecord ─► Producer::send ─► [record ─► shard_map ─► aggregator ─► limiter ─► collector
//!                                   ─► sender ─► retrier] ─► RecordFuture: Receipt | RecordFailure
//! Kinesis record ─► codec::deaggregate::Deaggregator ─► user records (plain, KPL, zstd)
//! ```
//!
//! - [`producer`]: the pipeline, one stage per file; start with [`producer::Producer`].
//! - [`codec`]: the KPL aggregate format, kpl's compressed frame, and the deaggregator.
//! - [`client`]: the narrow [`client::KinesisApi`] seam, over the AWS SDK
//!   ([`client::sdk::SdkKinesis`]) and in memory with scripted faults
//!   ([`client::memory::MemoryKinesis`]).
//! - [`reader`]: reads a stream back, parents before children.
//! - [`dedup`]: dedup ids on user records, and the reader-side [`dedup::Deduper`].
//! - [`spool`]: a durable disk spool (segment log, acks out of order, dead letters,
//!   checkpoints) so that accepted records survive a crash.
//! - `lambda` (feature `lambda`): user records out of a Kinesis Lambda event.
//! - The simulator (a local Kinesis with shard limits and a fault layer) is its own crate,
//!   `kpl-sim`, for your tests; the `kpl` command is the `kpl-cli` crate.
//! - [`limits`], [`hash`], [`record`]: Kinesis's limits, hash keys, validated user records.
//!
//! [`producer::Producer::connect`] is the one entry point, the same locally and on AWS: the
//! endpoint from [`producer::ConnectOptions`] or `AWS_ENDPOINT_URL(_KINESIS)`, the AWS default
//! credential chain, and no AWS setup at all for a loopback endpoint such as `kpl sim`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kpl::producer::{ConnectOptions, Producer, ProducerConfig};
//! let producer =
//!     Producer::connect("my-stream", ConnectOptions::default(), ProducerConfig::default()).await?;
//! let receipt = producer.send(kpl::UserRecord::new("key", "data")).await?.await?;
//! println!("{} {}", receipt.shard_id, receipt.sequence_number);
//! producer.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! For your own tests, the `kpl-sim` crate (a dev-dependency) runs a Kinesis with shard limits
//! and faults in-process; the README shows both paths.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
// Failures hand the record back by value (as rdkafka's send_result does) so nothing is lost;
// they are the rare path, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod codec;
pub mod dedup;
mod fxhash;
pub mod hash;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod limits;
mod log_limit;
pub mod producer;
pub mod reader;
pub mod record;
pub mod spool;

pub use hash::{HashKey, HashRange};
pub use record::{RecordError, UserRecord};

// The README's Rust blocks are compiled (and run, unless marked `no_run`) as doc tests, so the
// first thing a newcomer copies keeps working.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
