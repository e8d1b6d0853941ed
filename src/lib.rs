//! kpl puts data into Amazon Kinesis Data Streams as fast as the shards allow, without losing
//! a record, and reads back what it wrote.
//!
//! (The full crate essay with the pipeline diagram lives in `producer`.)
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
// Failures hand the record back by value (as rdkafka's send_result does) so nothing is lost;
// they are the rare path, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod codec;
pub mod hash;
pub mod limits;
pub mod producer;
pub mod reader;
pub mod record;
#[cfg(feature = "sim")]
pub mod sim;

pub use hash::{HashKey, HashRange};
pub use record::{RecordError, UserRecord};
