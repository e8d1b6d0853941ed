//! The fault layer: an axum middleware in front of the ferrokinesis router, a listener that
//! drops connections, and the control endpoint (`/_sim/faults`, `/_sim/stats`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use ferrokinesis::store::Store;

use crate::faults::{Decision, FaultState, Faults, RequestFault};
use crate::limits::{ShardLimits, charge, open_shards};

/// Largest request body read (PutRecords carries at most 5 MiB of data, base64 in JSON; a
/// 10 MiB record on a large-record stream is ~14 MB): the store's own checks answer the rest.
const MAX_BODY: usize = 32 * 1024 * 1024;
const JSON: &str = "application/x-amz-json-1.1";

/// State shared by the layer, the listener, the control routes and the handle.
pub(crate) struct Shared {
    pub state: Mutex<FaultState>,
    pub endpoint: String,
    /// The store, for the shard ranges the limits need.
    pub store: Store,
    /// Shard write limits, when enforced.
    pub limits: Option<Mutex<ShardLimits>>,
    /// Forward puts without their data (see [`SimConfig::discard_data`](super::SimConfig)).
    pub discard_data: bool,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The ferrokinesis router behind the fault layer, plus the control routes.
pub(crate) fn router(kinesis: Router, shared: Arc<Shared>) -> Router {
    let control = Router::new()
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/stats", get(get_stats))
        .with_state(shared.clone());
    // As a library, ferrokinesis keeps axum's 2 MiB body limit (its binary raises it): a legal
    // PutRecords of 5 MiB is ~7 MB of JSON, and a 10 MiB record more. Allow what Kinesis does.
    let kinesis = kinesis
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(shared, fault_layer));
    control.merge(kinesis)
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    let faults = shared.lock().faults.clone();
    axum::Json(faults).into_response()
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            super::apply_faults(&shared, faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("invalid faults JSON: {e}\n"),
        )
            .into_response(),
    }
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.lock().stats.clone();
    axum::Json(stats).into_response()
}

fn error_response(fault: &RequestFault) -> Response {
    error_answer(&fault.code, &injected(&fault.code), fault.status)
}

/// The message of a failure the fault layer drew.
fn injected(code: &str) -> String {
    format!("{code} injected by kpl sim")
}

fn error_answer(code: &str, message: &str, status: u16) -> Response {
    let body = json!({"__type": code, "message": message});
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

fn target(req: &Request) -> Option<String> {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('.').next())
        .map(str::to_owned)
}

fn stream_of(body: &Value) -> Option<&str> {
    body.get("StreamName")
        .or_else(|| body.get("StreamARN"))
        .and_then(Value::as_str)
}

async fn fault_layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let op = target(&req);
    let is_put = matches!(op.as_deref(), Some("PutRecords" | "PutRecord"));
    let close = {
        let mut s = shared.lock();
        s.stats.requests += 1;
        s.faults.reset_probability > 0.0
    };
    let mut response = if is_put {
        put_with_faults(&shared, op.as_deref() == Some("PutRecords"), req, next).await
    } else {
        next.run(req).await
    };
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn put_with_faults(shared: &Shared, batch: bool, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let (targeted, latency, hang) = {
        let s = shared.lock();
        let stream = parsed.as_ref().and_then(stream_of);
        (
            s.targets(stream),
            Duration::from_millis(s.faults.latency_ms),
            Duration::from_millis(s.faults.hang_ms),
        )
    };
    let rebuild = |bytes: Bytes| {
        let mut parts = parts.clone();
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Request::from_parts(parts, Body::from(bytes))
    };
    // Entries are read one by one only for limits or to leave their data out.
    let per_entry = shared.limits.is_some() || shared.discard_data;
    if !targeted && !per_entry {
        return next.run(rebuild(bytes)).await;
    }
    if targeted && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let decision = if targeted {
        let mut s = shared.lock();
        s.stats.put_requests += 1;
        s.decide_request()
    } else {
        Decision::Pass
    };
    // A lost answer: the service does the work (shard limits included) and the answer never
    // arrives in time. Injected entry failures are not drawn for it.
    let lose = match decision {
        Decision::Error(fault) => return error_response(&fault),
        Decision::Hang => {
            tokio::time::sleep(hang).await;
            return error_response(&RequestFault {
                code: "InternalFailure".into(),
                status: 500,
                probability: 1.0,
            });
        }
        Decision::LoseResponse => true,
        Decision::Pass => false,
    };
    let fates = Fates {
        inject: targeted && !lose,
        count: targeted,
    };
    let response = put_entries(shared, batch, fates, parsed, bytes, rebuild, next).await;
    if lose {
        tokio::time::sleep(hang).await;
    }
    response
}

/// How a put's entries are decided: draw injected failures, count them in the stats.
#[derive(Clone, Copy)]
struct Fates {
    inject: bool,
    count: bool,
}

/// A put past the request-level faults: each entry's fate (an injected failure, a shard
/// limit's throttle, or the store), merged into one answer.
async fn put_entries(
    shared: &Shared,
    batch: bool,
    how: Fates,
    parsed: Option<Value>,
    bytes: Bytes,
    rebuild: impl Fn(Bytes) -> Request,
    next: Next,
) -> Response {
    let Some(mut body) = parsed else {
        return next.run(rebuild(bytes)).await;
    };
    // A request the store refuses whole (a record over the size limit, a call over 5 MiB) gets
    // its ValidationException from the store, as the service answers it before any shard
    // counts a byte: no entry of it is throttled or failed here.
    let within = if batch {
        // (No `Records` list: the store answers that too, below.)
        body.get("Records")
            .and_then(Value::as_array)
            .is_none_or(|entries| within_store_limits(entries))
    } else {
        within_store_limits(std::slice::from_ref(&body))
    };
    if !within {
        return next.run(rebuild(bytes)).await;
    }
    let stream = stream_of(&body).map(str::to_owned);
    if !batch {
        let fate = entry_fates(shared, how, stream.as_deref(), std::slice::from_ref(&body))
            .await
            .pop()
            .flatten();
        return match fate {
            Some(failure) => error_answer(&failure.code, &failure.message, 400),
            None => next.run(rebuild(bytes)).await,
        };
    }
    let entries = match body.get_mut("Records").and_then(Value::as_array_mut) {
        Some(entries) => std::mem::take(entries),
        None => return next.run(rebuild(bytes)).await,
    };
    let fates = entry_fates(shared, how, stream.as_deref(), &entries).await;
    let discard = shared.discard_data;
    if fates.iter().all(Option::is_none) && !discard {
        return next.run(rebuild(bytes)).await;
    }
    let forwarded: Vec<Value> = entries
        .into_iter()
        .zip(&fates)
        .filter(|(_, fate)| fate.is_none())
        .map(|(mut e, _)| {
            if discard {
                e["Data"] = Value::String(String::new());
            }
            e
        })
        .collect();
    let mut stored: Vec<Value> = Vec::new();
    let mut store_failed = 0u64;
    let mut encryption = Value::Null;
    if !forwarded.is_empty() {
        body["Records"] = Value::Array(forwarded);
        let response = next.run(rebuild(Bytes::from(body.to_string()))).await;
        if response.status() != StatusCode::OK {
            return response;
        }
        let Ok(answer) = axum::body::to_bytes(response.into_body(), MAX_BODY).await else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "unreadable store answer").into_response();
        };
        let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
        store_failed = answer["FailedRecordCount"].as_u64().unwrap_or(0);
        encryption = answer["EncryptionType"].clone();
        stored = answer["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut stored = stored.into_iter();
    let mut failed = store_failed;
    let records: Vec<Value> = fates
        .into_iter()
        .map(|fate| match fate {
            Some(failure) => {
                failed += 1;
                json!({"ErrorCode": failure.code, "ErrorMessage": failure.message})
            }
            None => stored.next().unwrap_or(Value::Null),
        })
        .collect();
    let mut merged = json!({"FailedRecordCount": failed, "Records": records});
    if !encryption.is_null() {
        merged["EncryptionType"] = encryption;
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        merged.to_string(),
    )
        .into_response()
}

/// Whether the store would accept `entries` for their sizes (each record at most 1 MiB of
/// key + data, the call at most 5 MiB): only then may their data be left out, so that a
/// request too large still fails as it would with its data.
fn within_store_limits(entries: &[Value]) -> bool {
    let mut total = 0;
    for entry in entries {
        let Some(bytes) = crate::limits::billed_bytes(entry) else {
            return false;
        };
        if bytes > kpl::limits::DEFAULT_MAX_RECORD_BYTES {
            return false;
        }
        total += bytes;
    }
    total <= kpl::limits::MAX_PUT_RECORDS_BYTES
}

/// What happens to each entry of a put: an injected failure (if `how.inject`), a shard
/// limit's throttle, or `None` (passed to the store). Counts entries in the stats if
/// `how.count` (targeted requests).
async fn entry_fates(
    shared: &Shared,
    how: Fates,
    stream: Option<&str>,
    entries: &[Value],
) -> Vec<Option<EntryFailure>> {
    if how.count {
        shared.lock().stats.entries_seen += entries.len() as u64;
    }
    let mut fates: Vec<Option<EntryFailure>> = if how.inject {
        let codes = shared.lock().decide_entries(entries.len());
        codes
            .into_iter()
            .map(|code| {
                code.map(|code| EntryFailure {
                    message: injected(&code),
                    code,
                })
            })
            .collect()
    } else {
        vec![None; entries.len()]
    };
    if let Some(stream) = stream {
        apply_limits(shared, stream, entries, &mut fates).await;
    }
    if how.count {
        shared.lock().stats.entries_forwarded +=
            fates.iter().filter(|f| f.is_none()).count() as u64;
    }
    fates
}

/// Why an entry was not stored: a fault drawn, or a shard limit.
#[derive(Clone)]
struct EntryFailure {
    code: String,
    message: String,
}

/// Charges each entry not failed yet to its shard's window; those over the limit fail with
/// `ProvisionedThroughputExceededException`.
async fn apply_limits(
    shared: &Shared,
    stream: &str,
    entries: &[Value],
    fates: &mut [Option<EntryFailure>],
) {
    let Some(limits) = &shared.limits else {
        return;
    };
    let Some(shards) = open_shards(&shared.store, stream).await else {
        return;
    };
    let now = std::time::Instant::now();
    let mut throttled = 0;
    {
        let mut limits = limits.lock().unwrap_or_else(|e| e.into_inner());
        for (entry, fate) in entries.iter().zip(fates.iter_mut()) {
            if fate.is_some() {
                continue;
            }
            if let Some(c) = charge(entry, &shards)
                && !limits.admit(stream, &c.shard, c.bytes, now)
            {
                *fate = Some(EntryFailure {
                    code: "ProvisionedThroughputExceededException".to_owned(),
                    message: format!(
                        "Rate exceeded for shard {} in stream {stream} (kpl sim: the shard's \
                         1 MiB or 1000 records of writes in this second are used)",
                        c.shard
                    ),
                });
                throttled += 1;
            }
        }
    }
    if throttled > 0 {
        shared.lock().stats.limit_throttled += throttled;
    }
}

/// A listener that drops connections while the endpoint is "down" and at the reset rate.
pub(crate) struct FaultListener {
    pub inner: TcpListener,
    pub shared: Arc<Shared>,
}

/// A connection that breaks while the endpoint is down: an outage kills live connections too,
/// not only new ones (clients keep theirs alive). `S` is the TCP stream, or TLS over it.
pub(crate) struct FaultStream<S = TcpStream> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> FaultStream<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        FaultStream { inner, shared }
    }

    fn check(&self) -> std::io::Result<()> {
        if self.shared.lock().is_down() {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "kpl sim: endpoint down",
            ))
        } else {
            Ok(())
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FaultStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Err(e) = self.check() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FaultStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Err(e) = self.check() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The next connection the fault layer lets in: those drawn for a reset (or arriving while
/// the endpoint is down) are reset at once.
pub(crate) async fn accept_admitted(
    listener: &TcpListener,
    shared: &Shared,
) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if shared.lock().drop_connection() {
                    // Reset rather than close politely: the client sees the connection die.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                return (stream, addr);
            }
            Err(e) => {
                tracing::warn!(error = %e, "kpl sim: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl axum::serve::Listener for FaultListener {
    type Io = FaultStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = accept_admitted(&self.inner, &self.shared).await;
        (FaultStream::new(stream, self.shared.clone()), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
