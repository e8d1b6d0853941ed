//! [`KinesisApi`] over aws-sdk-kinesis: SDK retries off (the pipeline owns retries), a short
//! attempt timeout, rustls with ring for TLS, and errors classified on their `code()` strings.
//!
//! Also the calls the CLI and the tests need beyond the producer's three (read a shard, create,
//! reshard), as inherent methods.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use aws_smithy_http_client::tls;

use crate::client::{
    ApiError, ApiErrorKind, BoxFuture, KinesisApi, ListShardsPage, PutRecordsEntry,
    PutRecordsResultEntry, ShardInfo, StreamId, StreamSummary,
};
use crate::hash::{HashKey, HashRange};

/// Timeout for establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Timeout of one call attempt of [`SdkKinesis::connect`] when
/// [`ConnectOptions::attempt_timeout`] is `None` (the producer's default `request_timeout`).
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 6_000;
/// Region used when an endpoint is given and no region is configured anywhere.
pub const FALLBACK_REGION: &str = "us-east-1";

/// Where and how to connect; `ConnectOptions::default()` finds everything the way the AWS CLI
/// does, and needs no AWS setup at all for a local endpoint.
///
/// - **Endpoint**: [`endpoint_url`](Self::endpoint_url), else `AWS_ENDPOINT_URL_KINESIS`, else
///   `AWS_ENDPOINT_URL` (neither when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else the
///   region's AWS endpoint.
/// - **Credentials**: the AWS default chain (environment, `~/.aws` profiles, web identity,
///   container and instance roles). For a loopback endpoint (127.0.0.0/8, `localhost`,
///   `[::1]`: `kpl sim`, kinesalite) when the environment names no credentials
///   (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, web identity, container credentials), placeholders:
///   local emulators accept any signature, and no lookup reaches for the instance's role.
/// - **Region**: [`region`](Self::region), else the default chain (`AWS_REGION`, the
///   profile's, the instance's); [`FALLBACK_REGION`] for a loopback endpoint without
///   `AWS_REGION` / `AWS_DEFAULT_REGION`, or when none is found.
/// - **HTTP**: kpl's client (hyper, rustls on ring), SDK retries off (the producer owns them).
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Endpoint URL; `None` uses `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL`, or the
    /// region's AWS endpoint.
    pub endpoint_url: Option<String>,
    /// Region; `None` uses aws-config's chain.
    pub region: Option<String>,
    /// Timeout of one call attempt; `None`: the producer's `request_timeout` in
    /// [`Producer::connect`](crate::producer::Producer::connect), else
    /// [`DEFAULT_ATTEMPT_TIMEOUT_MS`].
    pub attempt_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// The endpoint these options lead to, if one is configured (`None`: the region's AWS
    /// endpoint), read from the options, then from the environment as aws-config reads it.
    pub fn endpoint(&self) -> Option<String> {
        if let Some(url) = &self.endpoint_url {
            return Some(url.clone());
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return None;
        }
        var("AWS_ENDPOINT_URL_KINESIS").or_else(|| var("AWS_ENDPOINT_URL"))
    }
}

/// Kinesis through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkKinesis {
    client: Client,
}

/// The HTTP client: hyper with rustls on ring (no aws-lc, no OpenSSL).
pub fn https_client() -> aws_sdk_kinesis::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

impl SdkKinesis {
    /// Wraps a client as configured by the caller (keep its retries off).
    pub fn new(client: Client) -> Self {
        SdkKinesis { client }
    }

    /// A client from `sdk` with SDK retries off and `attempt_timeout` per call attempt.
    pub fn from_sdk_config(sdk: &SdkConfig, attempt_timeout: Duration) -> Self {
        let mut builder = aws_sdk_kinesis::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .connect_timeout(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))
                    .build(),
            );
        if sdk.http_client().is_none() {
            builder = builder.http_client(https_client());
        }
        if sdk.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        SdkKinesis::new(Client::from_conf(builder.build()))
    }

    /// A client as `options` say (see [`ConnectOptions`]): aws-config's default chain with
    /// kpl's HTTP client, placeholders for a local endpoint, SDK retries off. The same loader
    /// serves the `kpl` command and [`Producer::connect`](crate::producer::Producer::connect).
    pub async fn connect(options: ConnectOptions) -> Self {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
        // Wherever the endpoint comes from (the options or the environment), it decides.
        let endpoint = options.endpoint();
        let local = endpoint.as_deref().is_some_and(is_loopback);
        match options.region {
            Some(region) => loader = loader.region(Region::new(region)),
            // A local endpoint needs a region only for signing: never look one up (the lookup
            // chain ends at the EC2 metadata service, which is no business of a local run).
            None if local && !region_in_environment() => {
                loader = loader.region(Region::new(FALLBACK_REGION));
            }
            None => {}
        }
        if let Some(endpoint) = endpoint {
            // A local emulator (kpl sim, kinesalite) checks signatures loosely: when no
            // credentials are configured at all, sign with placeholders instead of failing.
            if local && !credentials_configured() {
                loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "kpl-local-endpoint",
                ));
            }
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        let attempt_timeout = options
            .attempt_timeout
            .unwrap_or(Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS));
        SdkKinesis::from_sdk_config(&sdk, attempt_timeout)
    }

    /// The SDK client, for calls this type does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every shard of the stream, open and closed (all ListShards pages).
    pub async fn list_all_shards(&self, stream: &StreamId) -> Result<Vec<ShardInfo>, ApiError> {
        crate::client::list_all_shards(self, stream).await
    }

    /// Creates a stream of `shards` shards and waits until it is ACTIVE.
    pub async fn create_stream(&self, name: &str, shards: i32) -> Result<(), ApiError> {
        self.client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .map_err(map_error)?;
        self.wait_active(&StreamId::Name(name.to_owned())).await
    }

    /// Waits until the stream is ACTIVE (after a create or a reshard), up to 60 s.
    pub async fn wait_active(&self, stream: &StreamId) -> Result<(), ApiError> {
        for _ in 0..600 {
            let summary = self.describe_stream_summary(stream).await?;
            if summary.status == StreamStatus::Active.as_str() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ApiError {
            kind: ApiErrorKind::Other,
            code: None,
            status: None,
            message: format!("stream {stream} did not become ACTIVE within 60 s"),
        })
    }

    /// SplitShard, then waits until the stream is ACTIVE.
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: HashKey,
    ) -> Result<(), ApiError> {
        self.client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard_id)
            .new_starting_hash_key(new_starting_hash_key.to_string())
            .send()
            .await
            .map_err(map_error)?;
        self.wait_active(&StreamId::Name(stream.to_owned())).await
    }

    /// MergeShards, then waits until the stream is ACTIVE.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard: &str,
        adjacent: &str,
    ) -> Result<(), ApiError> {
        self.client
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(shard)
            .adjacent_shard_to_merge(adjacent)
            .send()
            .await
            .map_err(map_error)?;
        self.wait_active(&StreamId::Name(stream.to_owned())).await
    }

    /// UpdateShardCount (uniform scaling), then waits until the stream is ACTIVE.
    pub async fn update_shard_count(&self, stream: &str, target: i32) -> Result<(), ApiError> {
        self.client
            .update_shard_count()
            .stream_name(stream)
            .target_shard_count(target)
            .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
            .send()
            .await
            .map_err(map_error)?;
        self.wait_active(&StreamId::Name(stream.to_owned())).await
    }

    /// A shard iterator at `position`.
    pub async fn shard_iterator(
        &self,
        stream: &StreamId,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        let mut req = self.client.get_shard_iterator().shard_id(shard_id);
        req = match stream {
            StreamId::Name(n) => req.stream_name(n),
            StreamId::Arn(a) => req.stream_arn(a),
        };
        req = match position {
            StartPosition::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartPosition::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartPosition::AtTimestamp(t) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs_f64(*t)),
            StartPosition::AfterSequenceNumber(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s),
        };
        let out = req.send().await.map_err(map_error)?;
        out.shard_iterator.ok_or_else(|| ApiError {
            kind: ApiErrorKind::Other,
            code: None,
            status: None,
            message: format!("GetShardIterator returned no iterator for {shard_id}"),
        })
    }

    /// One GetRecords call.
    pub async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, ApiError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(map_error)?;
        Ok(RecordsPage {
            records: out
                .records
                .into_iter()
                .map(|r| FetchedRecord {
                    sequence_number: r.sequence_number,
                    partition_key: r.partition_key.unwrap_or_default(),
                    data: bytes::Bytes::from(r.data.into_inner()),
                    approximate_arrival_secs: r
                        .approximate_arrival_timestamp
                        .map(|t| t.as_secs_f64()),
                })
                .collect(),
            next_iterator: out.next_shard_iterator,
            millis_behind_latest: out.millis_behind_latest,
        })
    }
}

/// Whether `endpoint` names this machine (127.0.0.0/8, `localhost`, `[::1]`).
pub fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = rest
        .split('/')
        .next()
        .unwrap_or("")
        .rsplit_once('@')
        .map_or(rest.split('/').next().unwrap_or(""), |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn region_in_environment() -> bool {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

fn credentials_configured() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq)]
pub enum StartPosition {
    /// The oldest record kept.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
    /// Records from this time (seconds since the Unix epoch).
    AtTimestamp(f64),
    /// Records after this sequence number.
    AfterSequenceNumber(String),
}

/// One record as GetRecords returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedRecord {
    /// Its sequence number.
    pub sequence_number: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its data (a KPL aggregate, a compressed frame, or plain data).
    pub data: bytes::Bytes,
    /// When the service received it.
    pub approximate_arrival_secs: Option<f64>,
}

/// One GetRecords answer.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordsPage {
    /// The records.
    pub records: Vec<FetchedRecord>,
    /// The iterator for the next call; `None` once a closed shard is read to its end.
    pub next_iterator: Option<String>,
    /// How far behind the tip of the shard this page is.
    pub millis_behind_latest: Option<i64>,
}

/// Classifies an SDK error: by the service's `code()` for service errors (a service
/// `InternalFailure` arrives as an unmodeled variant), by the failure's nature otherwise.
pub fn map_error<E>(error: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = || {
        let text = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
        text.chars().take(500).collect::<String>()
    };
    match &error {
        SdkError::TimeoutError(_) => ApiError {
            kind: ApiErrorKind::Timeout,
            code: None,
            status: None,
            message: "no response within the attempt timeout".into(),
        },
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                ApiErrorKind::Timeout
            } else if failure.is_io() {
                ApiErrorKind::Connection
            } else {
                let d = detail().to_ascii_lowercase();
                if d.contains("credential") || d.contains("identity") {
                    ApiErrorKind::Credentials
                } else {
                    ApiErrorKind::Connection
                }
            };
            ApiError {
                kind,
                code: None,
                status: None,
                message: detail(),
            }
        }
        SdkError::ConstructionFailure(_) => {
            let d = detail();
            let lower = d.to_ascii_lowercase();
            ApiError {
                kind: if lower.contains("credential") || lower.contains("identity") {
                    ApiErrorKind::Credentials
                } else {
                    ApiErrorKind::Other
                },
                code: None,
                status: None,
                message: d,
            }
        }
        SdkError::ResponseError(r) => ApiError {
            kind: ApiErrorKind::Other,
            code: None,
            status: Some(r.raw().status().as_u16()),
            message: detail(),
        },
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match error.code() {
                Some(code) => ApiError {
                    kind: ApiErrorKind::Service,
                    code: Some(code.to_owned()),
                    status: Some(status),
                    message: error.message().unwrap_or_default().to_owned(),
                },
                None => ApiError {
                    kind: ApiErrorKind::Service,
                    code: None,
                    status: Some(status),
                    message: detail(),
                },
            }
        }
        _ => ApiError {
            kind: ApiErrorKind::Other,
            code: None,
            status: None,
            message: detail(),
        },
    }
}

fn parse_range(start: &str, end: &str) -> Option<HashRange> {
    Some(HashRange {
        start: HashKey(start.parse().ok()?),
        end: HashKey(end.parse().ok()?),
    })
}

impl KinesisApi for SdkKinesis {
    fn put_records(
        &self,
        stream: &StreamId,
        entries: Vec<PutRecordsEntry>,
    ) -> BoxFuture<'static, Result<Vec<PutRecordsResultEntry>, ApiError>> {
        let mut req = self.client.put_records();
        req = match stream {
            StreamId::Name(n) => req.stream_name(n),
            StreamId::Arn(a) => req.stream_arn(a),
        };
        let records: Result<Vec<_>, _> = entries
            .into_iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(e.data))
                    .partition_key(e.partition_key)
                    .set_explicit_hash_key(e.explicit_hash_key)
                    .build()
            })
            .collect();
        Box::pin(async move {
            let records = records.map_err(|e| ApiError {
                kind: ApiErrorKind::Other,
                code: None,
                status: None,
                message: format!("cannot build the request: {e}"),
            })?;
            let out = req
                .set_records(Some(records))
                .send()
                .await
                .map_err(map_error)?;
            Ok(out
                .records
                .into_iter()
                .map(|r| match (r.error_code, r.shard_id, r.sequence_number) {
                    (None, Some(shard_id), Some(sequence_number)) => {
                        PutRecordsResultEntry::Stored {
                            shard_id,
                            sequence_number,
                        }
                    }
                    (code, _, _) => PutRecordsResultEntry::Failed {
                        code: code.unwrap_or_else(|| "MissingResult".into()),
                        message: r.error_message.unwrap_or_default(),
                    },
                })
                .collect())
        })
    }

    fn list_shards(
        &self,
        stream: &StreamId,
        next_token: Option<String>,
    ) -> BoxFuture<'static, Result<ListShardsPage, ApiError>> {
        let mut req = self.client.list_shards();
        // NextToken cannot be combined with the stream name or ARN.
        req = match (next_token, stream) {
            (Some(token), _) => req.next_token(token),
            (None, StreamId::Name(n)) => req.stream_name(n),
            (None, StreamId::Arn(a)) => req.stream_arn(a),
        };
        Box::pin(async move {
            let out = req.send().await.map_err(map_error)?;
            let mut shards = Vec::new();
            for s in out.shards.unwrap_or_default() {
                let range = s
                    .hash_key_range
                    .as_ref()
                    .and_then(|r| parse_range(r.starting_hash_key(), r.ending_hash_key()));
                let Some(hash_range) = range else {
                    return Err(ApiError {
                        kind: ApiErrorKind::Other,
                        code: None,
                        status: None,
                        message: format!("shard {} has no valid hash key range", s.shard_id),
                    });
                };
                let open = s
                    .sequence_number_range
                    .as_ref()
                    .is_none_or(|r| r.ending_sequence_number.is_none());
                shards.push(ShardInfo {
                    shard_id: s.shard_id,
                    hash_range,
                    parent_shard_id: s.parent_shard_id,
                    adjacent_parent_shard_id: s.adjacent_parent_shard_id,
                    open,
                });
            }
            Ok(ListShardsPage {
                shards,
                next_token: out.next_token.filter(|t| !t.is_empty()),
            })
        })
    }

    fn describe_stream_summary(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<StreamSummary, ApiError>> {
        let mut req = self.client.describe_stream_summary();
        req = match stream {
            StreamId::Name(n) => req.stream_name(n),
            StreamId::Arn(a) => req.stream_arn(a),
        };
        Box::pin(async move {
            let out = req.send().await.map_err(map_error)?;
            let s = out.stream_description_summary.ok_or_else(|| ApiError {
                kind: ApiErrorKind::Other,
                code: None,
                status: None,
                message: "DescribeStreamSummary returned no summary".into(),
            })?;
            Ok(StreamSummary {
                status: s.stream_status.as_str().to_owned(),
                open_shard_count: s.open_shard_count.max(0) as u32,
                max_record_bytes: s
                    .max_record_size_in_kib
                    .filter(|k| *k > 0)
                    .map(|k| k as usize * 1024),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        for e in [
            "http://127.0.0.1:4567",
            "http://localhost:1/",
            "https://[::1]:443",
            "127.0.0.5",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "https://kinesis.us-east-1.amazonaws.com",
            "http://10.0.0.1:4567",
            "http://localhost.evil.com",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}
