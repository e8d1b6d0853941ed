//! [`KinesisApi`] whose PutRecords skips the SDK's per-call orchestrator but not its parts.
//!
//! A PutRecords call through aws-sdk-kinesis runs the orchestrator: runtime components and
//! plugins assembled per call, a dozen interceptors, endpoint resolution, auth scheme
//! selection, signing setup, retry classifiers. At a few calls a second that machinery, not
//! the bytes, is most of a producer's CPU. This path does once per client what does not
//! change between calls and keeps, per call, only what a call needs:
//!
//! ```text
//! once per client                         per call
//! ─────────────────────────────────────   ──────────────────────────────────────────────
//! SdkConfig: region, FIPS, dual-stack,    JSON body (serde_json, base64 data)
//!   endpoint URL, account-id mode         credentials: the SDK's identity cache (refreshes
//! HTTP connector: the SdkConfig's client    ahead of expiry, one load at a time)
//!   (hyper + rustls on ring, one pool)    endpoint: the SDK's DefaultResolver, cached per
//! identity cache + credentials provider     (StreamARN, account id)
//! clock, sleep, clock-skew estimate       SigV4 (aws-sigv4, the SDK's signing settings)
//!                                         POST through the pooled connector
//!                                         errors: `x-amzn-ErrorType` / `__type` → ApiError
//! ```
//!
//! Per call, this path also skips what the SDK would redo for the same result: the signing key
//! is derived once per day (`sign.rs`, which also writes the canonical request into one
//! buffer), the identity cache is asked at most once a second (never for credentials within
//! 30 s of expiry), and the server's `Date` is parsed once per second it
//! names.
//!
//! The request is the SDK's, byte for byte (method, path, body, signed headers, signature:
//! `tests/lean_client.rs` checks it against the SDK's own request), minus the SDK's
//! bookkeeping headers (`amz-sdk-invocation-id`, `amz-sdk-request`, `x-amz-user-agent`).
//! ListShards and DescribeStreamSummary go through the SDK ([`SdkKinesis`]), which shares the
//! HTTP client and so the connection pool.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::attributes::AccountId;
use aws_sdk_kinesis::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_kinesis::config::{IdentityCache, SharedHttpClient};
use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_async::time::SharedTimeSource;
use aws_smithy_runtime::client::auth::no_auth::NoAuthScheme;
use aws_smithy_runtime::client::retries::strategy::NeverRetryStrategy;
use aws_smithy_runtime_api::client::auth::AuthSchemeId;
use aws_smithy_runtime_api::client::auth::static_resolver::StaticAuthSchemeOptionResolver;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::identity::{
    Identity, ResolveCachedIdentity, SharedIdentityCache, SharedIdentityResolver,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::endpoint::Endpoint;
use serde::Deserialize;

mod sign;

use crate::client::sdk::{
    ConnectOptions, DEFAULT_CONNECT_TIMEOUT_MS, FALLBACK_REGION, SdkKinesis, https_client,
};
use crate::client::{
    ApiError, ApiErrorKind, BoxFuture, KinesisApi, ListShardsPage, PutRecordsEntry,
    PutRecordsResultEntry, StreamId, StreamSummary,
};

/// The awsJson 1.1 operation header of PutRecords.
const TARGET: &str = "Kinesis_20131202.PutRecords";
/// The awsJson 1.1 content type.
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The SigV4 auth scheme the SDK signs Kinesis calls with.
const SIGV4: AuthSchemeId = AuthSchemeId::new("sigv4");
/// A round trip longer than this says nothing about the server's clock (the SDK's bound).
const MAX_SKEW_SAMPLE_ROUND_TRIP: Duration = Duration::from_secs(15 * 60);
/// How long an identity from the cache is used without asking the cache again.
const IDENTITY_MEMO: Duration = Duration::from_secs(1);
/// An identity this close to its expiry is asked of the cache on every call, as the SDK does
/// (the cache refreshes 10-15 s ahead of expiry).
const IDENTITY_MEMO_MARGIN: Duration = Duration::from_secs(30);
/// Endpoints kept per client, one per (StreamARN, account id) seen; past this the cache starts
/// over (a producer addresses one stream).
const MAX_CACHED_ENDPOINTS: usize = 16;

/// Kinesis with PutRecords on the lean path and the other calls on the SDK.
#[derive(Clone, Debug)]
pub struct LeanKinesis {
    put: Arc<PutPath>,
    sdk: SdkKinesis,
}

impl LeanKinesis {
    /// A client from `sdk` (credentials, region, endpoint, HTTP client, clock) with
    /// `attempt_timeout` per call, as [`SdkKinesis::from_sdk_config`] builds its SDK client.
    pub fn from_sdk_config(sdk: &SdkConfig, attempt_timeout: Duration) -> Self {
        // One HTTP client for both paths: the SDK client below and the lean path draw their
        // connections from the same pool.
        let http = sdk.http_client().unwrap_or_else(https_client);
        let sdk = sdk.to_builder().http_client(http.clone()).build();
        LeanKinesis {
            put: Arc::new(PutPath::new(&sdk, http, attempt_timeout)),
            sdk: SdkKinesis::from_sdk_config(&sdk, attempt_timeout),
        }
    }

    /// Loads aws-config's default chain overridden by `options`, as [`SdkKinesis::connect`]
    /// does, and builds a client from it.
    pub async fn connect(options: ConnectOptions) -> Self {
        let attempt_timeout = options.attempt_timeout_or_default();
        let sdk = SdkKinesis::load_sdk_config(options).await;
        LeanKinesis::from_sdk_config(&sdk, attempt_timeout)
    }

    /// The SDK client the other calls go through (reading, creating, resharding).
    pub fn sdk(&self) -> &SdkKinesis {
        &self.sdk
    }
}

impl KinesisApi for LeanKinesis {
    fn put_records(
        &self,
        stream: &StreamId,
        entries: Vec<PutRecordsEntry>,
    ) -> BoxFuture<'static, Result<Vec<PutRecordsResultEntry>, ApiError>> {
        let put = self.put.clone();
        let stream = stream.clone();
        let credentials = self.sdk.credentials_kind().clone();
        Box::pin(async move {
            let timeout = put.attempt_timeout;
            match tokio::time::timeout(timeout, put.call(&stream, &entries)).await {
                Ok(Ok(results)) => Ok(results),
                // An expired token is transient or fatal by the same rule as the SDK path's.
                Ok(Err(error)) => Err(credentials.refine(error).await),
                Err(_) => Err(ApiError::timeout(timeout)),
            }
        })
    }

    fn list_shards(
        &self,
        stream: &StreamId,
        next_token: Option<String>,
    ) -> BoxFuture<'static, Result<ListShardsPage, ApiError>> {
        self.sdk.list_shards(stream, next_token)
    }

    fn describe_stream_summary(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<StreamSummary, ApiError>> {
        self.sdk.describe_stream_summary(stream)
    }
}

/// What endpoint resolution takes from the configuration, read once.
#[derive(Debug)]
struct EndpointInputs {
    region: String,
    use_fips: Option<bool>,
    use_dual_stack: Option<bool>,
    endpoint_url: Option<String>,
    account_id_endpoint_mode: String,
}

/// A resolved endpoint, ready to address and sign requests.
#[derive(Debug)]
struct Target {
    stream_arn: Option<String>,
    account_id: Option<String>,
    uri: http::Uri,
    /// The `host` SigV4 signs when `sign.rs` can sign for this endpoint (path `/`, no query,
    /// no endpoint headers, no user info); `None`: aws-sigv4 signs.
    sign_host: Option<String>,
    signing_region: String,
    signing_name: String,
    headers: Vec<(String, String)>,
}

/// Everything PutRecords needs, built once per client.
#[derive(Debug)]
struct PutPath {
    connector: SharedHttpConnector,
    /// The time source, sleep and identity cache the connector and the cache read.
    components: RuntimeComponents,
    identity_cache: SharedIdentityCache,
    /// `None` when the configuration has no credentials provider.
    identity_resolver: Option<SharedIdentityResolver>,
    /// The last identity from the cache and until when it is used as is.
    identity_memo: Mutex<Option<(Arc<Identity>, SystemTime)>>,
    signer: sign::Signer,
    /// The last `Date` answered and what it parsed to.
    last_date: Mutex<Option<(String, SystemTime)>>,
    config_bag: ConfigBag,
    time: SharedTimeSource,
    endpoint: EndpointInputs,
    endpoints: Mutex<Vec<Arc<Target>>>,
    /// Server clock minus ours, in ms, from the last response's `Date` (as the SDK keeps it);
    /// `None` when clock-skew correction is turned off.
    skew_ms: Option<AtomicI64>,
    attempt_timeout: Duration,
}

impl PutPath {
    fn new(sdk: &SdkConfig, http: SharedHttpClient, attempt_timeout: Duration) -> Self {
        let time = sdk.time_source().unwrap_or_default();
        let sleep = sdk
            .sleep_impl()
            .or_else(aws_smithy_async::rt::sleep::default_async_sleep);
        let identity_cache = sdk
            .identity_cache()
            .unwrap_or_else(|| IdentityCache::lazy().build());
        let identity_resolver = sdk.credentials_provider().map(SharedIdentityResolver::new);
        // The connector and the identity cache read their clock and sleep from runtime
        // components. The builder insists on an auth scheme, a retry strategy and an auth
        // option resolver too; this path signs and retries itself, so those are placeholders
        // nothing calls.
        let mut components = RuntimeComponents::builder("kpl lean PutRecords")
            .with_time_source(Some(time.clone()))
            .with_sleep_impl(sleep)
            .with_identity_cache(Some(identity_cache.clone()))
            .with_endpoint_resolver(Some(DefaultResolver::new().into_shared_resolver()))
            .with_auth_scheme_option_resolver(Some(StaticAuthSchemeOptionResolver::new(vec![
                SIGV4,
            ])))
            .with_auth_scheme(NoAuthScheme::new())
            .with_retry_strategy(Some(NeverRetryStrategy::new()))
            .with_http_client(Some(http.clone()));
        if let Some(resolver) = &identity_resolver {
            components = components.with_identity_resolver(SIGV4, resolver.clone());
        } else {
            components = components.with_identity_resolver(
                aws_smithy_runtime::client::auth::no_auth::NO_AUTH_SCHEME_ID,
                aws_smithy_runtime::client::identity::no_auth::NoAuthIdentityResolver::new(),
            );
        }
        let components = components
            .build()
            .expect("every required runtime component is set above");
        // The SDK client's settings (see `SdkKinesis::from_sdk_config`): the HTTP client
        // hands both the same connector, so the same pool.
        let mut settings = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS));
        settings.set_read_timeout(sdk.timeout_config().and_then(|t| t.read_timeout()));
        let settings = settings.build();
        let connector = http.http_connector(&settings, &components);
        let skew_ms =
            (!sdk.disable_clock_skew_correction().unwrap_or(false)).then(|| AtomicI64::new(0));
        PutPath {
            connector,
            components,
            identity_cache,
            identity_resolver,
            identity_memo: Mutex::new(None),
            signer: sign::Signer::default(),
            last_date: Mutex::new(None),
            config_bag: ConfigBag::base(),
            time,
            endpoint: EndpointInputs::from_sdk_config(sdk),
            endpoints: Mutex::new(Vec::new()),
            skew_ms,
            attempt_timeout,
        }
    }

    async fn call(
        &self,
        stream: &StreamId,
        entries: &[PutRecordsEntry],
    ) -> Result<Vec<PutRecordsResultEntry>, ApiError> {
        let identity = self.identity().await?;
        let arn = match stream {
            StreamId::Arn(arn) => Some(arn.as_str()),
            StreamId::Name(_) => None,
        };
        let account_id = identity.property::<AccountId>().map(|a| a.as_str());
        let target = self.target(arn, account_id).await?;
        let body = request_body(stream, entries);
        let sent_at = self.time.now();
        let request = self.signed_request(&target, &identity, sent_at, body)?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(connector_error)?;
        self.observe_clock(&response, sent_at);
        let results = read_response(response, entries.len()).await;
        if let Err(e) = &results
            && matches!(
                e.kind,
                ApiErrorKind::Credentials | ApiErrorKind::CredentialsTransient
            )
        {
            // Refused credentials: the next call asks the cache again.
            *self
                .identity_memo
                .lock()
                .expect("no panic while holding the memo") = None;
        }
        results
    }

    /// The identity cache's identity, asked at most once per [`IDENTITY_MEMO`] while it is
    /// further than [`IDENTITY_MEMO_MARGIN`] from its expiry.
    async fn identity(&self) -> Result<Arc<Identity>, ApiError> {
        let now = self.time.now();
        if let Some((identity, until)) = &*self
            .identity_memo
            .lock()
            .expect("no panic while holding the memo")
            && now < *until
        {
            return Ok(identity.clone());
        }
        let identity = Arc::new(self.resolve_identity().await?);
        let mut until = now + IDENTITY_MEMO;
        if let Some(expiry) = identity.expiration() {
            until = until.min(expiry.checked_sub(IDENTITY_MEMO_MARGIN).unwrap_or(now));
        }
        *self
            .identity_memo
            .lock()
            .expect("no panic while holding the memo") = Some((identity.clone(), until));
        Ok(identity)
    }

    async fn resolve_identity(&self) -> Result<Identity, ApiError> {
        let Some(resolver) = self.identity_resolver.clone() else {
            return Err(ApiError {
                kind: ApiErrorKind::Credentials,
                code: None,
                status: None,
                message: "the AWS configuration has no credentials provider".into(),
            });
        };
        self.identity_cache
            .resolve_cached_identity(resolver, &self.components, &self.config_bag)
            .await
            .map_err(identity_error)
    }

    /// The endpoint for `arn` and `account_id`, resolved by the SDK's resolver on first use.
    async fn target(
        &self,
        arn: Option<&str>,
        account_id: Option<&str>,
    ) -> Result<Arc<Target>, ApiError> {
        let cached = self
            .endpoints
            .lock()
            .expect("no panic while holding the endpoint cache")
            .iter()
            .find(|t| t.stream_arn.as_deref() == arn && t.account_id.as_deref() == account_id)
            .cloned();
        if let Some(target) = cached {
            return Ok(target);
        }
        let e = &self.endpoint;
        let params = Params::builder()
            .region(e.region.clone())
            .set_use_fips(e.use_fips)
            .set_use_dual_stack(e.use_dual_stack)
            .set_endpoint(e.endpoint_url.clone())
            .account_id_endpoint_mode(e.account_id_endpoint_mode.clone())
            .operation_type("data")
            .set_stream_arn(arn.map(str::to_owned))
            .set_account_id(account_id.map(str::to_owned))
            .build()
            .map_err(|err| endpoint_error(err.to_string()))?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|err| endpoint_error(err.to_string()))?;
        let target = Arc::new(Target::new(&endpoint, arn, account_id, &e.region)?);
        let mut cache = self
            .endpoints
            .lock()
            .expect("no panic while holding the endpoint cache");
        if cache.len() >= MAX_CACHED_ENDPOINTS {
            cache.clear();
        }
        cache.push(target.clone());
        Ok(target)
    }

    /// The POST, signed as the SDK signs PutRecords (its default SigV4 settings: double URI
    /// encoding, normalized path, no `x-amz-content-sha256`, session token signed).
    fn signed_request(
        &self,
        target: &Target,
        identity: &Identity,
        now: SystemTime,
        body: Vec<u8>,
    ) -> Result<HttpRequest, ApiError> {
        let signing_time = self.skewed(now);
        if let Some(host) = &target.sign_host
            && let Some(credentials) = identity.data::<Credentials>()
            && credentials
                .session_token()
                .is_none_or(sign::token_signs_verbatim)
        {
            let signature = self.signer.sign(
                host,
                CONTENT_TYPE,
                TARGET,
                &body,
                credentials,
                signing_time,
                &target.signing_region,
                &target.signing_name,
            );
            let length = body.len().to_string();
            let mut request = HttpRequest::new(SdkBody::from(body));
            request
                .set_method("POST")
                .map_err(|e| signing_error(e.to_string()))?;
            *request.uri_mut() = target.uri.clone().into();
            let out = request.headers_mut();
            out.insert("content-type", CONTENT_TYPE);
            out.insert("x-amz-target", TARGET);
            out.insert("content-length", length);
            out.insert("user-agent", USER_AGENT);
            out.insert("x-amz-date", signature.amz_date);
            if let Some(token) = credentials.session_token() {
                out.insert("x-amz-security-token", token.to_owned());
            }
            out.insert("authorization", signature.authorization);
            return Ok(request);
        }
        let uri = target.uri.to_string();
        let length = body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", CONTENT_TYPE),
            ("x-amz-target", TARGET),
            ("content-length", &length),
        ];
        for (name, value) in &target.headers {
            headers.push((name, value));
        }
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&target.signing_region)
            .name(&target.signing_name)
            .time(signing_time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| signing_error(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(e.to_string()))?
            .into_parts();
        let mut request = HttpRequest::new(SdkBody::from(body));
        request
            .set_method("POST")
            .map_err(|e| signing_error(e.to_string()))?;
        *request.uri_mut() = target.uri.clone().into();
        let out = request.headers_mut();
        for (name, value) in headers {
            out.insert(name.to_owned(), value.to_owned());
        }
        out.insert("user-agent", USER_AGENT);
        let (signed, _params) = instructions.into_parts();
        for header in signed {
            out.insert(header.name(), header.value().to_owned());
        }
        Ok(request)
    }

    /// `Date` as a time; the same text as the last answer's is not parsed again.
    fn parse_date(&self, text: &str) -> Option<SystemTime> {
        let mut last = self
            .last_date
            .lock()
            .expect("no panic while holding the date");
        if let Some((seen, at)) = &*last
            && seen == text
        {
            return Some(*at);
        }
        let at = DateTime::from_str(text, DateTimeFormat::HttpDate)
            .ok()
            .and_then(|d| SystemTime::try_from(d).ok())?;
        *last = Some((text.to_owned(), at));
        Some(at)
    }

    fn skewed(&self, now: SystemTime) -> SystemTime {
        let Some(skew) = &self.skew_ms else {
            return now;
        };
        let ms = skew.load(Ordering::Relaxed);
        let shifted = if ms >= 0 {
            now.checked_add(Duration::from_millis(ms as u64))
        } else {
            now.checked_sub(Duration::from_millis(ms.unsigned_abs()))
        };
        shifted.unwrap_or(now)
    }

    /// Learns the server's clock from `Date` as the SDK does (midpoint of the round trip,
    /// not from a cached answer, not from a round trip over 15 minutes), so a machine whose
    /// clock is off signs with the server's time.
    fn observe_clock(&self, response: &HttpResponse, sent_at: SystemTime) {
        let Some(skew) = &self.skew_ms else {
            return;
        };
        if response.headers().get("age").is_some() {
            return;
        }
        let Some(server) = response
            .headers()
            .get("date")
            .and_then(|d| self.parse_date(d))
        else {
            return;
        };
        let elapsed = self.time.now().duration_since(sent_at).unwrap_or_default();
        if elapsed > MAX_SKEW_SAMPLE_ROUND_TRIP {
            return;
        }
        let midpoint = sent_at + elapsed / 2;
        let ms = match server.duration_since(midpoint) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        skew.store(ms, Ordering::Relaxed);
    }
}

/// Sent on every lean call (not signed: SigV4 leaves `user-agent` out).
const USER_AGENT: &str = concat!("kpl/", env!("CARGO_PKG_VERSION"), " (lean PutRecords)");

impl EndpointInputs {
    /// What the SDK's config builder takes from `sdk` for endpoint resolution
    /// (`aws_sdk_kinesis::config::Builder::from(&SdkConfig)`), with kpl's fallback region.
    fn from_sdk_config(sdk: &SdkConfig) -> Self {
        let endpoint_url = crate::client::sdk::kinesis_endpoint_url(sdk);
        EndpointInputs {
            region: sdk
                .region()
                .map_or(FALLBACK_REGION, |r| r.as_ref())
                .to_owned(),
            use_fips: sdk.use_fips(),
            use_dual_stack: sdk.use_dual_stack(),
            endpoint_url,
            account_id_endpoint_mode: sdk
                .account_id_endpoint_mode()
                .cloned()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

impl Target {
    fn new(
        endpoint: &Endpoint,
        arn: Option<&str>,
        account_id: Option<&str>,
        region: &str,
    ) -> Result<Target, ApiError> {
        // The SDK appends the operation's path ("/") to the endpoint's.
        let url = format!("{}/", endpoint.url().trim_end_matches('/'));
        let uri: http::Uri = url
            .parse()
            .map_err(|e| endpoint_error(format!("the endpoint {url} is not a URI: {e}")))?;
        let (mut signing_region, mut signing_name) = (region.to_owned(), "kinesis".to_owned());
        // An endpoint may carry its own SigV4 signing region and name.
        if let Some(aws_smithy_types::Document::Array(schemes)) =
            endpoint.properties().get("authSchemes")
        {
            for scheme in schemes {
                let aws_smithy_types::Document::Object(scheme) = scheme else {
                    continue;
                };
                let text = |key: &str| match scheme.get(key) {
                    Some(aws_smithy_types::Document::String(s)) => Some(s.clone()),
                    _ => None,
                };
                if text("name").as_deref() == Some("sigv4") {
                    signing_region = text("signingRegion").unwrap_or(signing_region);
                    signing_name = text("signingName").unwrap_or(signing_name);
                    break;
                }
            }
        }
        let headers: Vec<(String, String)> = endpoint
            .headers()
            .flat_map(|(name, values)| values.map(move |v| (name.to_owned(), v.to_owned())))
            .collect();
        Ok(Target {
            stream_arn: arn.map(str::to_owned),
            account_id: account_id.map(str::to_owned),
            sign_host: headers.is_empty().then(|| sign_host(&uri)).flatten(),
            uri,
            signing_region,
            signing_name,
            headers,
        })
    }
}

/// The `host` aws-sigv4 signs for `uri` (the host alone on the scheme's default port, else the
/// authority) when `sign.rs` signs for it: path `/`, no query, no user info.
fn sign_host(uri: &http::Uri) -> Option<String> {
    let authority = uri.authority()?;
    if uri.path() != "/" || uri.query().is_some() || authority.as_str().contains('@') {
        return None;
    }
    let default_port = matches!(
        (uri.scheme_str(), authority.port_u16()),
        (_, None) | (Some("http"), Some(80)) | (Some("https"), Some(443))
    );
    Some(if default_port {
        authority.host().to_owned()
    } else {
        authority.as_str().to_owned()
    })
}

/// The PutRecords body, members in the SDK's order (`Records`, then `StreamName` or
/// `StreamARN`; per entry `Data`, `ExplicitHashKey`, `PartitionKey`), written straight into
/// one buffer: base64 encoded in place, strings escaped by serde_json.
fn request_body(stream: &StreamId, entries: &[PutRecordsEntry]) -> Vec<u8> {
    use base64::Engine as _;
    let estimate: usize = entries
        .iter()
        .map(|e| {
            e.data.len().div_ceil(3) * 4
                + e.partition_key.len()
                + e.explicit_hash_key.as_ref().map_or(0, |k| k.len() + 20)
                + 40
        })
        .sum::<usize>()
        + 64;
    let mut body = Vec::with_capacity(estimate);
    body.extend_from_slice(b"{\"Records\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"Data\":\"");
        let at = body.len();
        body.resize(at + e.data.len().div_ceil(3) * 4, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&e.data, &mut body[at..])
            .expect("the buffer holds the padded encoding");
        body.truncate(at + written);
        body.push(b'"');
        if let Some(key) = &e.explicit_hash_key {
            body.extend_from_slice(b",\"ExplicitHashKey\":");
            json_string(&mut body, key);
        }
        body.extend_from_slice(b",\"PartitionKey\":");
        json_string(&mut body, &e.partition_key);
        body.push(b'}');
    }
    match stream {
        StreamId::Name(n) => {
            body.extend_from_slice(b"],\"StreamName\":");
            json_string(&mut body, n);
        }
        StreamId::Arn(a) => {
            body.extend_from_slice(b"],\"StreamARN\":");
            json_string(&mut body, a);
        }
    }
    body.push(b'}');
    body
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string into memory cannot fail");
}

#[derive(Deserialize)]
struct ResponseBody {
    #[serde(rename = "Records")]
    records: Vec<ResultEntry>,
}

#[derive(Deserialize)]
struct ResultEntry {
    #[serde(rename = "SequenceNumber")]
    sequence_number: Option<String>,
    #[serde(rename = "ShardId")]
    shard_id: Option<String>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
    #[serde(rename = "ErrorMessage")]
    error_message: Option<String>,
}

async fn read_response(
    response: HttpResponse,
    sent: usize,
) -> Result<Vec<PutRecordsResultEntry>, ApiError> {
    let status = response.status().as_u16();
    let header_code = response
        .headers()
        .get("x-amzn-errortype")
        .map(|c| sanitize_error_code(c).to_owned());
    let body = ByteStream::new(response.into_body())
        .collect()
        .await
        .map_err(|e| ApiError::connection(format!("the response body was cut short: {e}")))?
        .into_bytes();
    if (200..300).contains(&status) {
        let parsed: ResponseBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::unreadable_answer(
                status,
                format!(
                    "PutRecords answered {} bytes that do not parse: {e}",
                    body.len()
                ),
            )
        })?;
        let mut results = Vec::with_capacity(sent);
        results.extend(parsed.records.into_iter().map(|r| {
            match (r.error_code, r.shard_id, r.sequence_number) {
                (None, Some(shard_id), Some(sequence_number)) => PutRecordsResultEntry::Stored {
                    shard_id,
                    sequence_number,
                },
                (code, _, _) => PutRecordsResultEntry::Failed {
                    code: code.unwrap_or_else(|| "MissingResult".into()),
                    message: r.error_message.unwrap_or_default(),
                },
            }
        }));
        return Ok(results);
    }
    // The awsJson error envelope, read as the SDK reads it: an empty body or a JSON value
    // that is not an object carries no code; a body that is not JSON is unreadable; `code`
    // wins over `__type`, and the `x-amzn-ErrorType` header over both.
    let envelope = match body.trim_ascii() {
        b"" => serde_json::Map::new(),
        text => match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => serde_json::Map::new(),
            Err(e) => {
                return Err(ApiError::unreadable_answer(
                    status,
                    format!(
                        "the error answer is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                ));
            }
        },
    };
    let text = |key: &str| envelope.get(key).and_then(|v| v.as_str());
    let code = header_code.or_else(|| {
        text("code")
            .or(text("__type"))
            .map(|c| sanitize_error_code(c).to_owned())
    });
    let message = text("message").or(text("Message")).or(text("errorMessage"));
    Err(match code {
        Some(code) => ApiError::from_answer(status, Some(code), message.unwrap_or_default()),
        // The SDK reports an error answer without a code as a response it could not read.
        None => ApiError::unreadable_answer(
            status,
            format!(
                "an error answer without an error code: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        ),
    })
}

/// `namespace#Code:http://...` → `Code`, as the SDK reads error codes.
fn sanitize_error_code(code: &str) -> &str {
    let code = code.split_once(':').map_or(code, |(c, _)| c);
    code.split_once('#').map_or(code, |(_, c)| c)
}

/// A transport failure, classified as the SDK path classifies a dispatch failure.
fn connector_error(error: ConnectorError) -> ApiError {
    if let Some(refused) = crate::client::http::refused_connection(&error) {
        return refused;
    }
    let message = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
    let message: String = message.chars().take(500).collect();
    if error.is_timeout() {
        ApiError {
            kind: ApiErrorKind::Timeout,
            code: None,
            status: None,
            message,
        }
    } else {
        ApiError::connection(message)
    }
}

/// Credentials that could not be had: a provider's timeout may pass, the rest is the
/// configuration's to fix.
fn identity_error(error: aws_smithy_runtime_api::box_error::BoxError) -> ApiError {
    let timed_out = error
        .downcast_ref::<aws_smithy_async::future::timeout::TimedOutError>()
        .is_some();
    // The same rule as the SDK path's: a provider that failed or timed out may succeed on a
    // later attempt; no credentials at all, or a configuration that cannot work, will not.
    let kind = if timed_out {
        ApiErrorKind::CredentialsTransient
    } else {
        crate::client::sdk::credentials_failure(&*error).unwrap_or(ApiErrorKind::Credentials)
    };
    let message = aws_sdk_kinesis::error::DisplayErrorContext(&*error).to_string();
    ApiError {
        kind,
        code: None,
        status: None,
        message: format!("loading credentials: {message}"),
    }
}

fn endpoint_error(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Other,
        code: None,
        status: None,
        message: format!("no Kinesis endpoint for this configuration: {message}"),
    }
}

fn signing_error(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Credentials,
        code: None,
        status: None,
        message: format!("cannot sign the request: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_the_sdk_reads_them() {
        for (raw, code) in [
            ("ResourceNotFoundException", "ResourceNotFoundException"),
            (
                "com.amazonaws.kinesis#ResourceNotFoundException",
                "ResourceNotFoundException",
            ),
            (
                "ValidationException:http://internal.amazon.com/coral/com.amazon.coral.validate/",
                "ValidationException",
            ),
            ("aws.protocoltests#Foo:http://x/y", "Foo"),
        ] {
            assert_eq!(sanitize_error_code(raw), code, "{raw}");
        }
    }

    #[test]
    fn body_is_what_serde_json_writes() {
        use base64::Engine as _;
        let keys = [
            "",
            "k",
            "caf\u{e9}",
            "tab\tnew\nline",
            "\"quoted\\",
            "\u{1}\u{1f}\u{7f}",
            "\u{1f600}",
        ];
        for n in 0..40usize {
            let entries: Vec<PutRecordsEntry> = (0..n % 7 + 1)
                .map(|i| PutRecordsEntry {
                    partition_key: format!("{}{i}", keys[(n + i) % keys.len()]),
                    explicit_hash_key: (i % 2 == 1).then(|| format!("{}", n * 1_000_003 + i)),
                    data: bytes::Bytes::from(
                        (0..(n * 13 + i) % 50)
                            .map(|b| (b as u8).wrapping_mul(37))
                            .collect::<Vec<u8>>(),
                    ),
                })
                .collect();
            let stream = if n % 2 == 0 {
                StreamId::Name(keys[n % keys.len()].into())
            } else {
                StreamId::Arn("arn:aws:kinesis:eu-west-1:1:stream/s".into())
            };
            let records: Vec<_> = entries
                .iter()
                .map(|e| {
                    let mut m = serde_json::Map::new();
                    m.insert(
                        "Data".into(),
                        base64::engine::general_purpose::STANDARD
                            .encode(&e.data)
                            .into(),
                    );
                    if let Some(k) = &e.explicit_hash_key {
                        m.insert("ExplicitHashKey".into(), k.clone().into());
                    }
                    m.insert("PartitionKey".into(), e.partition_key.clone().into());
                    serde_json::Value::Object(m)
                })
                .collect();
            // serde_json's map is sorted: the SDK's member order is alphabetical too.
            let expected = match &stream {
                StreamId::Name(s) => serde_json::json!({"Records": records, "StreamName": s}),
                StreamId::Arn(a) => serde_json::json!({"Records": records, "StreamARN": a}),
            };
            assert_eq!(
                String::from_utf8(request_body(&stream, &entries)).unwrap(),
                expected.to_string()
            );
        }
    }

    #[test]
    fn body_members_in_the_sdks_order() {
        let entries = vec![
            PutRecordsEntry {
                partition_key: "k\"1".into(),
                explicit_hash_key: Some("42".into()),
                data: bytes::Bytes::from_static(b"hello"),
            },
            PutRecordsEntry {
                partition_key: "k2".into(),
                explicit_hash_key: None,
                data: bytes::Bytes::new(),
            },
        ];
        let body = request_body(&StreamId::Name("s".into()), &entries);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Records":[{"Data":"aGVsbG8=","ExplicitHashKey":"42","PartitionKey":"k\"1"},{"Data":"","PartitionKey":"k2"}],"StreamName":"s"}"#
        );
        let body = request_body(&StreamId::Arn("arn:x".into()), &entries[1..]);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Records":[{"Data":"","PartitionKey":"k2"}],"StreamARN":"arn:x"}"#
        );
    }
}
