//! `kpl-sim`, the crate behind `kpl sim`: a Kinesis on this machine that enforces shard limits and injects faults.
//!
//! The store is [ferrokinesis](https://crates.io/crates/ferrokinesis) embedded as a library
//! (its axum router, served on 127.0.0.1), with shard write limits on by default: entries
//! over 1000 records/s or 1 MiB/s of partition key + data per shard fail with
//! ProvisionedThroughputExceededException, as on AWS (counted by kpl's layer: ferrokinesis's
//! own check counts data only). In front of it sits kpl's fault layer ([`Faults`]): per-entry failures (removed
//! before the store, so a failed entry was really not stored), fatal and 5xx request errors,
//! latency, hangs, stored-but-lost responses, connection resets, a down period and a reshard
//! at a given time — seeded, so a run repeats, and changeable while running through
//! [`SimHandle::set_faults`] or `POST /_sim/faults` (`GET /_sim/stats` counts what happened).
//!
//! The streams of [`SimConfig::streams`] exist (ACTIVE, with their shards) before the
//! simulator accepts its first connection: when [`Sim::start`] returns, every call finds them.
//!
//! # In your tests
//!
//! Add `kpl-sim` as a dev-dependency and start one per test, on a free port:
//! [`SimHandle::api`] is a client for [`kpl::producer::Producer::new`], and
//! [`SimHandle::endpoint`] the URL for code that connects on its own
//! (`kpl::producer::ConnectOptions::endpoint_url`, or `AWS_ENDPOINT_URL` for a child process;
//! no AWS credentials needed).
//!
//! ```
//! use kpl::UserRecord;
//! use kpl::producer::{Producer, ProducerConfig};
//! use kpl_sim::{EntryFault, Faults, Sim, SimConfig};
//!
//! #[tokio::main(flavor = "current_thread")] // in a test: #[tokio::test]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let sim = Sim::start(SimConfig {
//!         streams: vec![("orders".into(), 2)],
//!         ..Default::default()
//!     })
//!     .await?;
//!     // A third of the entries throttled: the producer retries them.
//!     sim.set_faults(Faults {
//!         entry_failures: vec![EntryFault {
//!             code: "ProvisionedThroughputExceededException".into(),
//!             probability: 0.3,
//!         }],
//!         ..Default::default()
//!     });
//!     let producer = Producer::new(sim.api(), "orders", ProducerConfig::default()).await?;
//!     let mut receipts = Vec::new();
//!     for i in 0..20 {
//!         let record = UserRecord::new(format!("order-{i}"), "paid");
//!         receipts.push(producer.send(record).await?);
//!     }
//!     for receipt in receipts {
//!         receipt.await?; // stored, however many attempts it took
//!     }
//!     producer.shutdown().await?;
//!     assert!(sim.stats().put_requests > 0);
//!     sim.create_stream("audit", 1).await?; // more streams later, ACTIVE when this returns
//!     sim.shutdown().await;
//!     Ok(())
//! }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use kpl::client::sdk::{ConnectOptions, SdkKinesis};
use kpl::client::{ApiError, KinesisApi, StreamId};
use kpl::hash::HashKey;

pub mod faults;
mod layer;
mod limits;
mod tls;

pub use faults::{EntryFault, Faults, RequestFault, Reshard, SimStats};
pub use tls::SimTls;

/// How to run the simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Streams to create, as (name, shard count): ACTIVE before the first connection is
    /// accepted. Default none ([`SimHandle::create_stream`] creates more at any time).
    pub streams: Vec<(String, u32)>,
    /// Enforce shard write limits (1000 records/s, 1 MiB/s per shard). Default on.
    pub enforce_limits: bool,
    /// Most open shards across streams. Default 100 000 (benchmarks need many).
    pub shard_limit: u32,
    /// Seed of the fault layer's decisions.
    pub seed: u64,
    /// Faults from the start.
    pub faults: Faults,
    /// Store each PutRecords entry's key, hash key and sequence number but not its data
    /// (GetRecords then returns empty data). For load runs that never read back (`kpl
    /// bench`): a stored copy of everything costs the simulator memory (minutes of 64 shards
    /// are gigabytes) and CPU (decoding, storing, first-touch page faults) taken from the
    /// producer it measures on the same cores. Sizes, shard limits and faults see the real
    /// data; a request the store would refuse for its size is passed on whole. Default off.
    pub discard_data: bool,
    /// Serve HTTPS with this certificate ([`SimHandle::endpoint`] is then
    /// `https://127.0.0.1:PORT`), to try a CONNECT proxy or a private CA in front of it.
    /// The simulator's own client ([`SimHandle::client`], scheduled reshards) talks to a
    /// plain-HTTP listener on another free loopback port behind the same fault layer, so it
    /// needs no trust. Default `None`: plain HTTP.
    pub tls: Option<SimTls>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            port: 0,
            streams: Vec::new(),
            enforce_limits: true,
            shard_limit: 100_000,
            seed: 0,
            faults: Faults::default(),
            discard_data: false,
            tls: None,
        }
    }
}

/// Why the simulator could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The port could not be bound.
    #[error(
        "cannot listen on 127.0.0.1:{port}: {source}; pick another --port (0 picks a free one)"
    )]
    Bind {
        /// The port asked for.
        port: u16,
        /// The bind error.
        source: std::io::Error,
    },
    /// A call to the embedded Kinesis failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The store refused to create a stream.
    #[error("cannot create stream {name:?} with {shards} shards: {message} ({code})")]
    CreateStream {
        /// The stream's name.
        name: String,
        /// The shard count asked for.
        shards: u32,
        /// The Kinesis error code, e.g. `ResourceInUseException` (the stream exists),
        /// `LimitExceededException` (over [`SimConfig::shard_limit`]) or `ValidationException`.
        code: String,
        /// What the store said.
        message: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error("cannot serve HTTPS: {reason}; give a PEM certificate (chain) and its PEM private key")]
    Tls {
        /// Why.
        reason: String,
    },
}

/// The simulator entry point.
pub struct Sim;

/// A running simulator; stops when [`shutdown`](SimHandle::shutdown) is called or it is dropped.
pub struct SimHandle {
    endpoint: String,
    shared: Arc<layer::Shared>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: SdkKinesis,
}

impl Sim {
    /// Creates `config.streams` in the embedded Kinesis, then binds 127.0.0.1 and serves it
    /// behind the fault layer: nothing can connect before the streams are ACTIVE.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        // Shard limits are counted by the layer (partition key + data, as AWS counts them),
        // not by ferrokinesis (data only).
        let (kinesis, store) = ferrokinesis::create_app(ferrokinesis::store::StoreOptions {
            enforce_limits: false,
            shard_limit: config.shard_limit,
            create_stream_ms: 0,
            delete_stream_ms: 0,
            update_stream_ms: 0,
            ..Default::default()
        });
        for (name, shards) in &config.streams {
            create_in_store(&store, name, *shards).await?;
        }
        let acceptor = config.tls.as_ref().map(SimTls::acceptor).transpose()?;
        let listener = bind(config.port).await?;
        // With TLS, the simulator's own client gets a plain listener of its own.
        let (public, internal) = match acceptor {
            Some(acceptor) => (Some((listener, acceptor)), bind(0).await?),
            None => (None, listener),
        };
        let internal_endpoint = format!("http://{}", local_addr(&internal, 0)?);
        let endpoint = match &public {
            Some((listener, _)) => format!("https://{}", local_addr(listener, config.port)?),
            None => internal_endpoint.clone(),
        };
        let shared = Arc::new(layer::Shared {
            state: Mutex::new(faults::FaultState::new(Faults::default(), config.seed)),
            endpoint: internal_endpoint.clone(),
            store,
            limits: config
                .enforce_limits
                .then(|| Mutex::new(limits::ShardLimits::default())),
            discard_data: config.discard_data,
        });
        let app = layer::router(kinesis, shared.clone());
        let (mut stop, mut tasks) = (Vec::new(), Vec::new());
        let (sender, task) = serve(
            layer::FaultListener {
                inner: internal,
                shared: shared.clone(),
            },
            app.clone(),
        );
        stop.push(sender);
        tasks.push(task);
        if let Some((listener, acceptor)) = public {
            let listener = tls::TlsFaultListener::new(listener, shared.clone(), acceptor).map_err(
                |source| SimError::Bind {
                    port: config.port,
                    source,
                },
            )?;
            let (sender, task) = serve(listener, app);
            stop.push(sender);
            tasks.push(task);
        }
        let client = SdkKinesis::connect(ConnectOptions {
            endpoint_url: Some(internal_endpoint),
            region: Some("us-east-1".into()),
            attempt_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .await;
        apply_faults(&shared, config.faults);
        Ok(SimHandle {
            endpoint,
            shared,
            stop,
            tasks,
            client,
        })
    }
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener, SimError> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| SimError::Bind { port, source })
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    port: u16,
) -> Result<std::net::SocketAddr, SimError> {
    listener
        .local_addr()
        .map_err(|source| SimError::Bind { port, source })
}

/// Serves `app` on `listener` until the returned sender fires (or is dropped).
fn serve<L>(listener: L, app: axum::Router) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "kpl sim stopped");
        }
    });
    (stop, task)
}

/// Creates a stream directly in the store (no HTTP, so neither the fault layer nor a listener
/// is involved), with the checks a CreateStream call gets, and waits until it is ACTIVE.
async fn create_in_store(
    store: &ferrokinesis::store::Store,
    name: &str,
    shards: u32,
) -> Result<(), SimError> {
    use ferrokinesis::actions::{Operation, dispatch};
    use ferrokinesis::validation::{FieldDef, check_types, check_validations};
    let refused = |e: ferrokinesis::error::KinesisErrorResponse| SimError::CreateStream {
        name: name.to_owned(),
        shards,
        code: e.body.error_type,
        message: e.body.message.unwrap_or_default(),
    };
    let rules = Operation::CreateStream.validation_rules();
    let fields: Vec<(&str, &FieldDef)> = rules.iter().map(|(k, v)| (*k, v)).collect();
    let request = serde_json::json!({ "StreamName": name, "ShardCount": shards });
    let request = check_types(&request, &fields).map_err(refused)?;
    check_validations(&request, &fields, None).map_err(refused)?;
    dispatch(store, Operation::CreateStream, request)
        .await
        .map_err(refused)?;
    // The store turns the stream ACTIVE on a task of its own, at once (create_stream_ms 0).
    loop {
        let stream = store.get_stream(name).await.map_err(refused)?;
        if stream.stream_status == ferrokinesis::types::StreamStatus::Active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Installs `faults` and schedules their reshard, if any.
pub(crate) fn apply_faults(shared: &Arc<layer::Shared>, faults: Faults) {
    let reshard = faults.reshard.clone().zip(faults.stream.clone());
    shared.lock().replace(faults);
    if let Some((reshard, stream)) = reshard {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(reshard.at_ms)).await;
            let client = SdkKinesis::connect(ConnectOptions {
                endpoint_url: Some(shared.endpoint.clone()),
                region: Some("us-east-1".into()),
                attempt_timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            })
            .await;
            match reshard_now(&client, &stream, &reshard.kind).await {
                Ok(()) => shared.lock().stats.reshards += 1,
                Err(e) => tracing::warn!(stream, error = %e, "kpl sim: scheduled reshard failed"),
            }
        });
    }
}

async fn reshard_now(client: &SdkKinesis, stream: &str, kind: &str) -> Result<(), ApiError> {
    let id = StreamId::Name(stream.to_owned());
    let mut open: Vec<_> = client
        .list_all_shards(&id)
        .await?
        .into_iter()
        .filter(|s| s.open)
        .collect();
    open.sort_by_key(|s| s.hash_range.start);
    match (kind, open.as_slice()) {
        ("split", [first, ..]) => {
            let r = first.hash_range;
            let mid = HashKey(r.start.0 + (r.end.0 - r.start.0) / 2 + 1);
            client.split_shard(stream, &first.shard_id, mid).await
        }
        ("merge", [a, b, ..]) => client.merge_shards(stream, &a.shard_id, &b.shard_id).await,
        _ => Err(ApiError::service(
            "InvalidArgumentException",
            None,
            format!(
                "cannot {kind} stream {stream} with {} open shards",
                open.len()
            ),
        )),
    }
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with [`SimConfig::tls`].
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates a stream of `shards` shards, ACTIVE when this returns (in the store directly:
    /// the fault layer does not see it). Streams needed from the start are better given in
    /// [`SimConfig::streams`].
    pub async fn create_stream(&self, name: &str, shards: u32) -> Result<(), SimError> {
        create_in_store(&self.shared.store, name, shards).await
    }

    /// Replaces the faults (and schedules their reshard).
    pub fn set_faults(&self, faults: Faults) {
        apply_faults(&self.shared, faults);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// What the fault layer saw and did.
    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// An SDK client for this simulator.
    pub fn client(&self) -> &SdkKinesis {
        &self.client
    }

    /// The simulator as a [`KinesisApi`].
    pub fn api(&self) -> Arc<dyn KinesisApi> {
        Arc::new(self.client.clone())
    }

    /// Stops serving (waiting at most 2 s for requests in flight).
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}
