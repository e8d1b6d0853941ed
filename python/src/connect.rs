//! How a producer reaches Kinesis: aws-config's chain (credentials, region, endpoint
//! variables) overridden by `endpoint_url` / `region`, placeholder credentials for loopback
//! endpoints, as the CLI does. The one place to switch to `Producer::connect` once the
//! library has it.

use std::sync::Arc;

use kpl::client::sdk::{ConnectOptions, SdkKinesis};
use kpl::producer::{Producer, ProducerConfig, ProducerError};

/// Where to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub stream: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
}

/// A running producer for `target`.
pub async fn connect(target: Target, config: ProducerConfig) -> Result<Producer, ProducerError> {
    let api = SdkKinesis::connect(ConnectOptions {
        endpoint_url: target.endpoint_url,
        region: target.region,
        attempt_timeout: config.request_timeout,
    })
    .await;
    Producer::new(Arc::new(api), &target.stream, config).await
}
