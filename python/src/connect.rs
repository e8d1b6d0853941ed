//! How a producer reaches Kinesis: `Producer::connect`, the library's one way in (aws-config's
//! chain of credentials, region and endpoint variables, overridden by `endpoint_url` /
//! `region`; placeholder credentials for loopback endpoints; the lean PutRecords client).

use kpl::producer::{ConnectOptions, Producer, ProducerConfig, ProducerError};

/// Where to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub stream: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
}

/// A running producer for `target`.
pub async fn connect(target: Target, config: ProducerConfig) -> Result<Producer, ProducerError> {
    let options = ConnectOptions {
        endpoint_url: target.endpoint_url,
        region: target.region,
        ..Default::default()
    };
    Producer::connect(&target.stream, options, config).await
}
