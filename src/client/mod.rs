//! The seam between the pipeline and the network: the few Kinesis calls a producer needs,
//! as one narrow trait.
//!
//! The pipeline never names an aws-sdk-kinesis type. [`sdk::SdkKinesis`] implements
//! [`KinesisApi`] over the AWS SDK; tests and benchmarks implement it in memory with scripted
//! failures, and so can users who want to test their own code without a network.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::hash::HashRange;

pub mod http;
pub mod lean;
pub mod memory;
pub mod sdk;

/// A boxed, sendable future: what [`KinesisApi`] methods return, so the trait stays
/// object-safe (`Arc<dyn KinesisApi>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which stream a call addresses: by name, or by ARN (an argument starting with `arn:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamId {
    /// `StreamName`.
    Name(String),
    /// `StreamARN`.
    Arn(String),
}

impl StreamId {
    /// `arn:...` becomes [`StreamId::Arn`], anything else [`StreamId::Name`].
    pub fn parse(s: &str) -> StreamId {
        if s.starts_with("arn:") {
            StreamId::Arn(s.to_owned())
        } else {
            StreamId::Name(s.to_owned())
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamId::Name(s) | StreamId::Arn(s) => f.write_str(s),
        }
    }
}

/// One entry of a PutRecords call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordsEntry {
    /// The partition key of the Kinesis record.
    pub partition_key: String,
    /// Decimal explicit hash key, if the record is routed by one.
    pub explicit_hash_key: Option<String>,
    /// The Kinesis record's data (a KPL aggregate, a compressed frame, or a single user record).
    pub data: Bytes,
}

impl PutRecordsEntry {
    /// Bytes the service counts against the call and shard limits: partition key + data.
    pub fn billed_bytes(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }
}

/// The outcome of one entry of a PutRecords call, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutRecordsResultEntry {
    /// The entry was stored.
    Stored {
        /// The shard it was stored on.
        shard_id: String,
        /// Its sequence number in that shard.
        sequence_number: String,
    },
    /// The entry was not stored.
    Failed {
        /// `ErrorCode`, e.g. `ProvisionedThroughputExceededException`, `InternalFailure`,
        /// `KMSThrottlingException`.
        code: String,
        /// `ErrorMessage`.
        message: String,
    },
}

/// A shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// e.g. `shardId-000000000003`.
    pub shard_id: String,
    /// The hash keys this shard owns.
    pub hash_range: HashRange,
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent_shard_id: Option<String>,
    /// The second parent of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// Whether the shard still accepts writes (it has no ending sequence number).
    pub open: bool,
}

/// One page of ListShards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListShardsPage {
    /// The shards of this page.
    pub shards: Vec<ShardInfo>,
    /// Pass to the next call to get the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// What DescribeStreamSummary tells the producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// `CREATING`, `ACTIVE`, `UPDATING` or `DELETING`.
    pub status: String,
    /// Open shards.
    pub open_shard_count: u32,
    /// The stream's largest accepted record (partition key + data), when the service reports
    /// it (`MaxRecordSizeInKiB`); `None` means the default 1 MiB.
    pub max_record_bytes: Option<usize>,
}

/// The Kinesis calls the producer makes. Implementations must be cheap to call concurrently.
///
/// Every method returns a `'static` future so the pipeline can run calls on its own tasks.
pub trait KinesisApi: Send + Sync + 'static {
    /// PutRecords: store `entries` (at most 500, 5 MiB) in `stream`. A returned `Ok` holds one
    /// result per entry in request order; a service that returns a different count is treated
    /// by the pipeline as a retryable failure of every entry.
    fn put_records(
        &self,
        stream: &StreamId,
        entries: Vec<PutRecordsEntry>,
    ) -> BoxFuture<'static, Result<Vec<PutRecordsResultEntry>, ApiError>>;

    /// ListShards: one page of the stream's shards. `next_token` is `None` for the first page.
    fn list_shards(
        &self,
        stream: &StreamId,
        next_token: Option<String>,
    ) -> BoxFuture<'static, Result<ListShardsPage, ApiError>>;

    /// DescribeStreamSummary.
    fn describe_stream_summary(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<StreamSummary, ApiError>>;
}

/// Which client carries the calls to Kinesis.
///
/// The default is [`ClientKind::Lean`]: it sends the SDK's own request (tests/lean_client.rs
/// compares them) and passes every test the SDK path passes against kinesalite, kinesis-local,
/// ferrokinesis and `kpl sim` with faults, for a fraction of the CPU per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// Every call through aws-sdk-kinesis ([`sdk::SdkKinesis`]).
    Sdk,
    /// PutRecords signed and sent from the SDK's parts without its per-call orchestrator,
    /// the other calls through the SDK ([`lean::LeanKinesis`]).
    #[default]
    Lean,
}

impl std::str::FromStr for ClientKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sdk" => Ok(ClientKind::Sdk),
            "lean" => Ok(ClientKind::Lean),
            other => Err(format!("unknown client {other:?}: expected sdk or lean")),
        }
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientKind::Sdk => "sdk",
            ClientKind::Lean => "lean",
        })
    }
}

/// The client `options.client` names, connected as [`sdk::SdkKinesis::connect`] connects.
pub async fn connect(options: sdk::ConnectOptions) -> std::sync::Arc<dyn KinesisApi> {
    match options.client {
        ClientKind::Sdk => std::sync::Arc::new(sdk::SdkKinesis::connect(options).await),
        ClientKind::Lean => std::sync::Arc::new(lean::LeanKinesis::connect(options).await),
    }
}

/// Every shard of `stream`, open and closed: all ListShards pages.
pub async fn list_all_shards(
    api: &dyn KinesisApi,
    stream: &StreamId,
) -> Result<Vec<ShardInfo>, ApiError> {
    let mut shards = Vec::new();
    let mut token = None;
    loop {
        let page = api.list_shards(stream, token).await?;
        shards.extend(page.shards);
        match page.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(shards),
        }
    }
}

/// How a call failed, as far as the pipeline's retry decision is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The service answered with an error code (see [`ApiError::code`]).
    Service,
    /// No answer within the attempt timeout (or the response was lost).
    Timeout,
    /// The connection could not be made or broke (refused, reset, DNS, TLS).
    Connection,
    /// No usable credentials, or they were rejected before the call was made.
    Credentials,
    /// The credentials could not be had for now, but a later attempt may get them: a provider
    /// that refreshes them (instance or container metadata, STS, SSO, a credential process)
    /// failed or timed out, or the token it gave has expired ([`ApiError::code`]
    /// `ExpiredTokenException`). Retryable.
    CredentialsTransient,
    /// An answer arrived but could not be read: its body was cut short, or it is not what the
    /// call returns. Retryable when its status ([`ApiError::status`]) is 2xx, 5xx or 429;
    /// another 4xx (a proxy or gateway saying no) is not.
    Response,
    /// The TLS certificate of the endpoint, or of a proxy that inspects TLS, is not trusted
    /// (unknown issuer, wrong name, expired). Not retryable: trust its CA
    /// ([`sdk::ConnectOptions::ca_file`], `--ca-file`, `SSL_CERT_FILE`).
    Certificate,
    /// Anything else: a bug.
    Other,
}

/// A failed Kinesis call. Never contains credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ApiError {
    /// The class of failure.
    pub kind: ApiErrorKind,
    /// The service's error code, e.g. `ResourceNotFoundException`, when it sent one.
    pub code: Option<String>,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// A service error with `code`.
    pub fn service(
        code: impl Into<String>,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            kind: ApiErrorKind::Service,
            code: Some(code.into()),
            status,
            message: message.into(),
        }
    }

    /// A timeout after `after`.
    pub fn timeout(after: Duration) -> Self {
        ApiError {
            kind: ApiErrorKind::Timeout,
            code: None,
            status: None,
            message: format!("no response within {after:?}"),
        }
    }

    /// An HTTP answer other than a success, from either client: classified by the service's
    /// error code, or by its status when it sent none (see [`ApiError::is_retryable`]).
    pub fn from_answer(status: u16, code: Option<String>, message: impl Into<String>) -> Self {
        ApiError {
            kind: ApiErrorKind::Service,
            code,
            status: Some(status),
            message: message.into(),
        }
    }

    /// An answer whose body could not be parsed, from either client. Whether the call
    /// stored anything is unknown; retrying is safe (at least once) unless the status is a
    /// 4xx the caller must fix.
    pub fn unreadable_answer(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            kind: ApiErrorKind::Response,
            code: None,
            status: Some(status),
            message: message.into(),
        }
    }

    /// A connection failure.
    pub fn connection(message: impl Into<String>) -> Self {
        ApiError {
            kind: ApiErrorKind::Connection,
            code: None,
            status: None,
            message: message.into(),
        }
    }

    /// Whether retrying the same call may succeed. Timeouts, connection errors, answers cut
    /// short or unreadable (with a 2xx or 5xx status), throttling and 429, `InternalFailure` /
    /// 5xx, credentials a provider will refresh, and unknown error codes are retryable;
    /// everything the caller must fix (missing stream, access, KMS key state, validation,
    /// rejected or static expired credentials, a 4xx without a code) is not.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ApiErrorKind::Timeout
            | ApiErrorKind::Connection
            | ApiErrorKind::CredentialsTransient => true,
            ApiErrorKind::Credentials | ApiErrorKind::Certificate => false,
            ApiErrorKind::Response => self
                .status
                .is_none_or(|s| !(400..500).contains(&s) || s == 429),
            ApiErrorKind::Service | ApiErrorKind::Other => match &self.code {
                Some(code) => is_retryable_code(code),
                // Without a code, only a 4xx (other than 429) is the caller's to fix: a 2xx
                // or 5xx that could not be read may pass on the next attempt.
                None => self
                    .status
                    .is_none_or(|s| !(400..500).contains(&s) || s == 429),
            },
        }
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            // A proxy's answer, whichever way it came (forward proxy or CONNECT).
            _ if self.status == Some(407) && self.code.is_none() => "the proxy refused the call",
            ApiErrorKind::Service => "Kinesis returned an error",
            ApiErrorKind::Timeout => "the call timed out",
            ApiErrorKind::Connection => "could not reach the Kinesis endpoint",
            ApiErrorKind::Credentials => "no usable AWS credentials",
            ApiErrorKind::CredentialsTransient => "the AWS credentials are unavailable for now",
            ApiErrorKind::Response => "the answer could not be read",
            ApiErrorKind::Certificate => "could not reach the Kinesis endpoint over TLS",
            ApiErrorKind::Other => "the call failed",
        };
        let mut s = what.to_owned();
        if let Some(code) = &self.code {
            s.push_str(&format!(" {code}"));
        }
        if let Some(status) = self.status {
            s.push_str(&format!(" (HTTP {status})"));
        }
        // The service's message often ends a sentence; the hint below starts the next one.
        let message = self.message.trim_end().trim_end_matches('.');
        if !message.is_empty() {
            s.push_str(&format!(": {message}"));
        }
        if self.kind == ApiErrorKind::CredentialsTransient {
            s.push_str(
                ". It is retried; if it persists, check the credentials provider (instance role, SSO session, credential process)",
            );
        } else if let Some(hint) = self.code.as_deref().and_then(hint_for_code) {
            s.push_str(&format!(". {hint}"));
        } else if self.kind == ApiErrorKind::Credentials {
            s.push_str(
                ". Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on a role",
            );
        } else if self.status == Some(407) && self.code.is_none() {
            s.push_str(
                ". Check the user:password in the proxy URL (--proxy, HTTPS_PROXY / HTTP_PROXY; percent-encode @ and : in them)",
            );
        } else if self.kind == ApiErrorKind::Certificate {
            s.push_str(
                ". Trust the CA that signed it (a proxy that inspects TLS, a private endpoint): --ca-file FILE (ConnectOptions::ca_file) adds it to the system's roots, SSL_CERT_FILE replaces them; a container without a CA bundle (/etc/ssl/certs) needs ca-certificates or SSL_CERT_FILE",
            );
        } else if self.kind == ApiErrorKind::Connection {
            s.push_str(". Check the endpoint URL and region, and that the service is reachable");
        }
        s
    }
}

/// Whether an error code (request-level or per PutRecords entry) may succeed when retried.
///
/// Unknown codes are retried: a new transient error from the service should cost a few
/// attempts, not a lost record. The codes no retry can fix are listed explicitly.
pub fn is_retryable_code(code: &str) -> bool {
    !is_fatal_code(code)
}

/// Error codes that no retry can fix: the user must change something.
pub fn is_fatal_code(code: &str) -> bool {
    matches!(
        code,
        "AccessDeniedException"
            | "AccessDenied"
            | "ResourceNotFoundException"
            | "ResourceInUseException"
            | "ValidationException"
            | "InvalidArgumentException"
            | "InvalidParameterException"
            | "SerializationException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSNotFoundException"
            | "KMSInvalidStateException"
            | "KMSOptInRequired"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "NotAuthorized"
    )
}

/// Whether an error code means the caller is being throttled.
pub fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "KMSThrottlingException"
    )
}

fn hint_for_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "ResourceNotFoundException" => "Check the stream name or ARN and the region",
        "AccessDeniedException" | "AccessDenied" => {
            "The credentials lack kinesis:PutRecords / kinesis:ListShards on this stream"
        }
        "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSNotFoundException"
        | "KMSInvalidStateException"
        | "KMSOptInRequired" => {
            "The stream's KMS key cannot be used: check the key's state and policy"
        }
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredTokenException"
        | "InvalidClientTokenId" => "The AWS credentials were rejected: refresh or replace them",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for code in [
            "ProvisionedThroughputExceededException",
            "InternalFailure",
            "KMSThrottlingException",
            "ServiceUnavailable",
            "SomethingNew",
        ] {
            assert!(is_retryable_code(code), "{code}");
        }
        for code in [
            "AccessDeniedException",
            "ResourceNotFoundException",
            "KMSDisabledException",
            "KMSOptInRequired",
            "ValidationException",
        ] {
            assert!(!is_retryable_code(code), "{code}");
        }
        assert!(ApiError::timeout(Duration::from_secs(1)).is_retryable());
        assert!(ApiError::connection("refused").is_retryable());
        let e = ApiError::service("ResourceNotFoundException", Some(400), "Stream x not found");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("Check the stream name"), "{e}");
    }

    #[test]
    fn a_message_that_ends_a_sentence_is_not_followed_by_a_second_full_stop() {
        let e = ApiError::service(
            "ResourceNotFoundException",
            Some(400),
            "Stream x under account 1 not found.",
        );
        assert_eq!(
            e.to_string(),
            "Kinesis returned an error ResourceNotFoundException (HTTP 400): Stream x under account 1 not found. Check the stream name or ARN and the region"
        );
        let e = ApiError::connection("refused. ");
        assert!(!e.to_string().contains(".."), "{e}");
    }
}
