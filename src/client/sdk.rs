//! [`KinesisApi`] over aws-sdk-kinesis: SDK retries off (the pipeline owns retries), a short
//! attempt timeout, rustls with ring for TLS, and errors classified on their `code()` strings.
//!
//! Also the calls the CLI and the tests need beyond the producer's three (read a shard, create,
//! reshard), as inherent methods.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};

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
///   shared config's (`endpoint_url` in the `~/.aws/config` profile or its `services`
///   section), else the region's AWS endpoint.
/// - **Credentials**: the AWS default chain (environment, `~/.aws` profiles, web identity,
///   container and instance roles). For a loopback endpoint (127.0.0.0/8, `localhost`,
///   `[::1]`: `kpl sim`, kinesalite; from any of those sources) when the environment names no credentials
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
    /// Which client [`crate::client::connect`] builds (`SdkKinesis::connect` is always the SDK).
    pub client: crate::client::ClientKind,
    /// The proxy for every call, Kinesis and credential providers alike (the metadata
    /// services always bypass it).
    pub proxy: crate::client::http::ProxySetting,
    /// Send loopback endpoints (`localhost`, 127.0.0.0/8, `::1`) through the proxy too; by
    /// default they bypass it.
    pub proxy_loopback: bool,
    /// PEM CA certificates trusted besides the platform's roots (a TLS-inspecting proxy, a
    /// private endpoint). `SSL_CERT_FILE` / `SSL_CERT_DIR` replace the platform's roots.
    pub ca_file: Option<std::path::PathBuf>,
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

    /// The attempt timeout in force: [`ConnectOptions::attempt_timeout`], else
    /// [`DEFAULT_ATTEMPT_TIMEOUT_MS`].
    pub fn attempt_timeout_or_default(&self) -> Duration {
        self.attempt_timeout
            .unwrap_or(Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS))
    }
}

/// Kinesis through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkKinesis {
    client: Client,
    credentials: CredentialsKind,
}

/// The HTTP client: hyper with rustls on ring (no aws-lc, no OpenSSL), the environment's
/// proxy (loopback bypasses it), the platform's roots.
pub fn https_client() -> aws_sdk_kinesis::config::SharedHttpClient {
    match crate::client::http::http_client(&Default::default(), false, None) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "ignoring the proxy environment variables");
            crate::client::http::http_client(&crate::client::http::ProxySetting::None, false, None)
                .expect("no proxy and no CA file cannot fail")
        }
    }
}

impl SdkKinesis {
    /// How an expired token is classified for this client's credentials (the lean path
    /// shares the rule).
    pub(crate) fn credentials_kind(&self) -> &CredentialsKind {
        &self.credentials
    }

    /// Wraps a client as configured by the caller (keep its retries off). The client does
    /// not tell which credentials provider it has, so an `ExpiredTokenException` is fatal;
    /// [`SdkKinesis::from_sdk_config`] knows the provider and retries an expired token from
    /// one that refreshes.
    pub fn new(client: Client) -> Self {
        SdkKinesis::with_provider(client, None)
    }

    fn with_provider(client: Client, provider: Option<SharedCredentialsProvider>) -> Self {
        SdkKinesis {
            client,
            credentials: CredentialsKind {
                provider,
                refreshes: Arc::new(tokio::sync::OnceCell::new()),
            },
        }
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
        SdkKinesis::with_provider(
            Client::from_conf(builder.build()),
            sdk.credentials_provider(),
        )
    }

    /// A client as `options` say (see [`ConnectOptions`]): aws-config's default chain with
    /// kpl's HTTP client, placeholders for a local endpoint, SDK retries off. The same loader
    /// serves the `kpl` command and [`Producer::connect`](crate::producer::Producer::connect).
    pub async fn connect(options: ConnectOptions) -> Self {
        let attempt_timeout = options.attempt_timeout_or_default();
        let sdk = SdkKinesis::load_sdk_config(options).await;
        SdkKinesis::from_sdk_config(&sdk, attempt_timeout)
    }

    /// The configuration [`SdkKinesis::connect`] builds its client from: aws-config's default
    /// chain overridden by `options`.
    ///
    /// An unusable proxy URL or CA file is logged and every call then fails with a
    /// connection error naming it; check it first with [`crate::client::http::http_client`].
    pub async fn load_sdk_config(options: ConnectOptions) -> SdkConfig {
        let http = crate::client::http::http_client(
            &options.proxy,
            options.proxy_loopback,
            options.ca_file.as_deref(),
        )
        .unwrap_or_else(|error| {
            tracing::error!(%error, "the HTTP client cannot be built");
            crate::client::http::failing_client(error)
        });
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
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
                loader = loader.credentials_provider(local_credentials());
            }
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        if local {
            return config;
        }
        // The endpoint may also come from the shared config (`endpoint_url` in a `~/.aws/config`
        // profile or its `services` section): a loopback one there is as local as in the
        // environment, and gets the same placeholders and region.
        match kinesis_endpoint_url(&config) {
            Some(url) if is_loopback(&url) => {
                let mut builder = config.to_builder();
                if !credentials_configured() {
                    builder.set_credentials_provider(Some(SharedCredentialsProvider::new(
                        local_credentials(),
                    )));
                }
                if config.region().is_none() {
                    builder.set_region(Some(Region::new(FALLBACK_REGION)));
                }
                builder.build()
            }
            _ => config,
        }
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

    /// One GetRecords call. A stream named by ARN is passed as `StreamARN` too, as reading a
    /// stream of another account through its resource-based policy requires.
    pub async fn get_records(
        &self,
        stream: &StreamId,
        iterator: &str,
        limit: i32,
    ) -> Result<RecordsPage, ApiError> {
        let mut req = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit);
        if let StreamId::Arn(a) = stream {
            req = req.stream_arn(a);
        }
        let out = req.send().await.map_err(map_error)?;
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

/// Whether `endpoint` names this machine (127.0.0.0/8, localhost, `[::1]`): the host the SDK
/// connects to, parsed as the SDK parses the URL (`http::Uri`), so `http://evil?@127.0.0.1`
/// (host `evil`) and `http://127.0.0.1.evil.com` are not local. A URL that does not parse is
/// not local.
pub fn is_loopback(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match ip {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
    }
}

fn region_in_environment() -> bool {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The placeholder credentials kpl signs with for a local endpoint.
fn local_credentials() -> aws_sdk_kinesis::config::Credentials {
    aws_sdk_kinesis::config::Credentials::new("local", "local", None, None, "kpl-local-endpoint")
}

/// The endpoint URL the Kinesis client takes from `sdk`, as
/// `aws_sdk_kinesis::config::Builder::from(&SdkConfig)` picks it: one set in code first, then
/// the service-specific setting (`AWS_ENDPOINT_URL_KINESIS`, a profile's `services` section),
/// then the global one (`AWS_ENDPOINT_URL`, a profile's `endpoint_url`).
pub(crate) fn kinesis_endpoint_url(sdk: &SdkConfig) -> Option<String> {
    if sdk.get_origin("endpoint_url").is_client_config() {
        return sdk.endpoint_url().map(str::to_owned);
    }
    sdk.service_config()
        .and_then(|conf| {
            conf.load_config(
                aws_types::service_config::ServiceConfigKey::builder()
                    .service_id("Kinesis")
                    .env("AWS_ENDPOINT_URL")
                    .profile("endpoint_url")
                    .build()
                    .expect("every field set"),
            )
        })
        .or_else(|| sdk.endpoint_url().map(str::to_owned))
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
///
/// - no answer in time: [`ApiErrorKind::Timeout`]; no connection, or one that broke before an
///   answer: [`ApiErrorKind::Connection`];
/// - an answer that could not be read (cut short, or a body that does not parse):
///   [`ApiErrorKind::Response`] with its status;
/// - a credentials provider that failed or timed out: [`ApiErrorKind::CredentialsTransient`];
///   no credentials configured, or a configuration that cannot work:
///   [`ApiErrorKind::Credentials`].
///
/// An `ExpiredTokenException` is a service error here (fatal); [`SdkKinesis`] makes it
/// retryable when its credentials come from a provider that refreshes them.
pub fn map_error<E>(error: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::DispatchFailure(_) = &error
        && let Some(refused) = crate::client::http::refused_connection(&error)
    {
        return refused;
    }
    let detail = || error_text(&error).chars().take(500).collect::<String>();
    let plain = |kind, status| ApiError {
        kind,
        code: None,
        status,
        message: detail(),
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
                credentials_failure(&error).unwrap_or(ApiErrorKind::Connection)
            };
            plain(kind, None)
        }
        SdkError::ConstructionFailure(_) => plain(
            credentials_failure(&error).unwrap_or(ApiErrorKind::Other),
            None,
        ),
        SdkError::ResponseError(r) => {
            ApiError::unreadable_answer(r.raw().status().as_u16(), detail())
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match error.code() {
                Some(code) => ApiError::from_answer(
                    status,
                    Some(code.to_owned()),
                    error.message().unwrap_or_default(),
                ),
                None => ApiError::from_answer(status, None, detail()),
            }
        }
        _ => plain(ApiErrorKind::Other, None),
    }
}

/// Whether `error` is a credentials failure, and which: a provider that failed or timed out
/// may succeed on a later attempt; no credentials at all, or a configuration that cannot
/// work, will not.
pub(crate) fn credentials_failure(
    error: &(dyn std::error::Error + 'static),
) -> Option<ApiErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_)
                | CredentialsError::InvalidConfiguration(_) => ApiErrorKind::Credentials,
                _ => ApiErrorKind::CredentialsTransient,
            });
        }
        next = e.source();
    }
    // The SDK's identity cache gives up on a slow provider with an error type of its own.
    let text = aws_sdk_kinesis::error::DisplayErrorContext(error)
        .to_string()
        .to_ascii_lowercase();
    if text.contains("identity resolver timed out") {
        Some(ApiErrorKind::CredentialsTransient)
    } else if text.contains("credential") || text.contains("identity") {
        Some(ApiErrorKind::Credentials)
    } else {
        None
    }
}

/// What kind of credentials a client signs with, as far as an expired token is concerned:
/// credentials that carry an expiry time come from a provider that refreshes them (instance
/// or container metadata, STS, SSO, a credential process that reports an expiration), so
/// a later attempt may carry a fresh token; credentials without one never change.
#[derive(Clone, Debug)]
pub(crate) struct CredentialsKind {
    provider: Option<SharedCredentialsProvider>,
    /// Asked once, on the first expired token.
    refreshes: Arc<tokio::sync::OnceCell<bool>>,
}

impl CredentialsKind {
    async fn refreshes(&self) -> bool {
        let Some(provider) = &self.provider else {
            return false;
        };
        if let Some(known) = self.refreshes.get() {
            return *known;
        }
        match provider.provide_credentials().await {
            Ok(credentials) => {
                *self
                    .refreshes
                    .get_or_init(|| async move { credentials.expiry().is_some() })
                    .await
            }
            // A provider that can fail is not a static one; ask again next time.
            Err(_) => true,
        }
    }

    /// `error` as a retry decision needs it: an expired token from a provider that
    /// refreshes is transient, from static credentials fatal.
    pub(crate) async fn refine(&self, mut error: ApiError) -> ApiError {
        if error.code.as_deref() == Some("ExpiredTokenException") && self.refreshes().await {
            error.kind = ApiErrorKind::CredentialsTransient;
        }
        error
    }
}

/// An error and its causes as one line, each cause's text once: the SDK's wrapper labels
/// ("dispatch failure", "io error") are left out where a cause says more, and unlike the SDK's
/// `DisplayErrorContext` no `Debug` dump of the error structs is appended.
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    const WRAPPERS: [&str; 9] = [
        "dispatch failure",
        "io error",
        "other",
        "timeout",
        "user error",
        "response error",
        "service error",
        "request has timed out",
        "failed to construct request",
    ];
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        next = e.source();
        let text = e.to_string();
        if text.is_empty()
            || (next.is_some() && WRAPPERS.contains(&text.as_str()))
            || parts.iter().any(|p| p.contains(&text))
        {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
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
        let credentials = self.credentials.clone();
        Box::pin(async move {
            let records = records.map_err(|e| ApiError {
                kind: ApiErrorKind::Other,
                code: None,
                status: None,
                message: format!("cannot build the request: {e}"),
            })?;
            let out = match req.set_records(Some(records)).send().await {
                Ok(out) => out,
                Err(e) => return Err(credentials.refine(map_error(e)).await),
            };
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
        let credentials = self.credentials.clone();
        Box::pin(async move {
            let out = match req.send().await {
                Ok(out) => out,
                Err(e) => return Err(credentials.refine(map_error(e)).await),
            };
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
        let credentials = self.credentials.clone();
        Box::pin(async move {
            let out = match req.send().await {
                Ok(out) => out,
                Err(e) => return Err(credentials.refine(map_error(e)).await),
            };
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

    #[test]
    fn loopback_check_parses_hostile_urls_as_the_sdk_does() {
        // Where the connection really goes decides.
        for e in [
            "http://[::1]:4567",
            "http://localhost:1",
            "http://LOCALHOST:1",
            "http://user@127.0.0.1",
            "http://user:pw@127.0.0.1:4567/",
            "http://127.0.0.1/?q=evil.com",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "http://evil?@127.0.0.1",
            "http://evil#@127.0.0.1",
            "http://evil/@127.0.0.1",
            "http://127.0.0.1.evil.com",
            "http://127.0.0.1@evil.com",
            "http://localhost@evil.com:4567",
            "http://[::1]@evil.com",
            "http://[::2]:4567",
            "http://0x7f.0.0.1",
            "not a url at all",
            "",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}

#[cfg(test)]
mod error_text_tests {
    use super::error_text;

    #[derive(Debug)]
    struct Level(&'static str, Option<Box<Level>>);

    impl std::fmt::Display for Level {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Level {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_sdk_error_reads_as_its_causes_once_without_wrapper_labels_or_debug_dumps() {
        let refused = Level("Connection refused (os error 111)", None);
        let connect = Level("tcp connect error", Some(Box::new(refused)));
        let hyper = Level("client error (Connect)", Some(Box::new(connect)));
        let io = Level("io error", Some(Box::new(hyper)));
        let dispatch = Level("dispatch failure", Some(Box::new(io)));
        assert_eq!(
            error_text(&dispatch),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
        let inner = Level("bad token", None);
        let outer = Level("signing failed: bad token", Some(Box::new(inner)));
        assert_eq!(error_text(&outer), "signing failed: bad token");
        assert_eq!(error_text(&Level("io error", None)), "io error");
    }
}
