//! `kpl._kpl.NativeProducer`: the handle `kpl.Producer` wraps. Built without I/O; `start`
//! connects on the runtime. Every method that waits returns an asyncio Future of the loop
//! that started the producer, resolved by the collector (see `dispatch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use kpl::UserRecord;
use kpl::hash::HashKey;
use kpl::producer::{Producer, ProducerConfig, SendErrorReason};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::connect::{Target, connect};
use crate::convert::{Failure, Outcome, not_started, send_failed};
use crate::dispatch::{Collector, Completion, Operation};

/// What the handle shares with the tasks it starts and with `shutdown_all`.
struct State {
    producer: OnceLock<Producer>,
    closed: AtomicBool,
    /// How long its records may take at most: what `shutdown_all` waits for it.
    record_ttl: Duration,
}

/// The loop a started producer resolves its Futures on.
struct Binding {
    collector: Collector,
    create_future: Py<PyAny>,
    call_soon: Py<PyAny>,
}

/// Most records of single sends handed over together.
const STAGE_RECORDS: usize = 256;

/// Records of single `send`s not yet handed over. Handing records to the pipeline one by one
/// wakes its runtime worker once per record (measured: ~30 CPU us per record, most of it in
/// those wake-ups); staged, they go over as one `send_batch` at the end of the loop's
/// iteration (`call_soon`) or when `STAGE_RECORDS` have gathered, each keeping its own
/// Future. Room is taken then: a send that finds no room waits, and so do the sends after
/// it until the room is there (`Blocked`).
#[derive(Default)]
struct Stage {
    records: Vec<UserRecord>,
    futures: Vec<Py<PyAny>>,
    bytes: u64,
    scheduled: bool,
}

/// A staged batch is waiting for buffer room: later sends wait their turn, and flushes wait
/// until it is in.
#[derive(Default)]
struct Blocked {
    flag: AtomicBool,
    cleared: tokio::sync::Notify,
}

impl Blocked {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.flag.store(false, Ordering::SeqCst);
        self.cleared.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    async fn wait_clear(&self) {
        loop {
            let notified = self.cleared.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Producers started and not closed, for `shutdown_all` at interpreter exit.
static OPEN: Mutex<Vec<Weak<State>>> = Mutex::new(Vec::new());
/// Shutdowns of producers garbage-collected while open, for `shutdown_all`.
static DRAINING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// The native producer (use `kpl.Producer`).
#[pyclass(module = "kpl._kpl", frozen)]
pub struct NativeProducer {
    target: Target,
    config: ProducerConfig,
    state: Arc<State>,
    binding: OnceLock<Binding>,
    stage: Mutex<Stage>,
    blocked: Arc<Blocked>,
}

#[pymethods]
impl NativeProducer {
    #[new]
    #[pyo3(signature = (stream, endpoint_url=None, region=None, settings=None))]
    fn new(
        stream: String,
        endpoint_url: Option<String>,
        region: Option<String>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let config = crate::settings::config(settings)?;
        Ok(NativeProducer {
            target: Target {
                stream,
                endpoint_url,
                region,
            },
            state: Arc::new(State {
                producer: OnceLock::new(),
                closed: AtomicBool::new(false),
                record_ttl: config.record_ttl,
            }),
            config,
            binding: OnceLock::new(),
            stage: Mutex::new(Stage::default()),
            blocked: Arc::new(Blocked::default()),
        })
    }

    /// Connects (describes the stream, lists its shards) on the runtime; the Future resolves
    /// to None or raises `kpl.ProducerError`. Binds the producer to `event_loop`.
    fn start(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if self.binding.get().is_some() {
            return Err(PyRuntimeError::new_err("the producer was already started"));
        }
        let binding = Binding {
            collector: Collector::start(event_loop)?,
            create_future: event_loop.getattr("create_future")?.unbind(),
            call_soon: event_loop.getattr("call_soon")?.unbind(),
        };
        let binding = self.binding.get_or_init(|| binding);
        let future = binding.create_future.call0(py)?;
        let (target, config, state) =
            (self.target.clone(), self.config.clone(), self.state.clone());
        let completion = future.clone_ref(py);
        self.push(Box::pin(async move {
            let outcome = match connect(target, config).await {
                Ok(producer) => {
                    let _ = state.producer.set(producer);
                    let mut open = OPEN.lock().expect("never poisoned");
                    open.retain(|s| s.strong_count() > 0);
                    open.push(Arc::downgrade(&state));
                    Outcome::Unit
                }
                Err(e) => Outcome::Error(Failure::Start(e)),
            };
            Completion {
                future: completion.into(),
                outcome,
            }
        }))?;
        Ok(future)
    }

    /// Hands one record over. Returns `(accepted, receipt)`: `accepted` is None when the
    /// record was taken at once, else a Future that resolves once there was buffer room (or
    /// raises `RecordFailed`); `receipt` resolves to a `Receipt` or raises `RecordFailed`.
    #[pyo3(signature = (partition_key, data, explicit_hash_key=None))]
    fn send(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        partition_key: String,
        data: &Bound<'_, PyAny>,
        explicit_hash_key: Option<&str>,
    ) -> PyResult<(Option<Py<PyAny>>, Py<PyAny>)> {
        let this = slf.get();
        let (producer, binding) = this.started()?;
        let record = user_record(py, partition_key, data, explicit_hash_key)?;
        if this.state.closed.load(Ordering::SeqCst) {
            return Err(send_failed(
                py,
                &SendErrorReason::Closed,
                None,
                Some(&record),
            )?);
        }
        if let Err(e) = record.validate(producer.max_record_bytes()) {
            let reason = SendErrorReason::Invalid(e);
            return Err(send_failed(py, &reason, None, Some(&record))?);
        }
        let receipt = binding.create_future.call0(py)?;
        let resolves = receipt.clone_ref(py);
        if !this.blocked.is_set() {
            let max_bytes = this.config.max_outstanding_bytes;
            let bytes = record.billed_bytes().clamp(1, max_bytes) as u64;
            let max_records = STAGE_RECORDS.min(this.config.max_outstanding_records);
            let mut stage = this.stage.lock().expect("never poisoned");
            if !stage.records.is_empty()
                && (stage.records.len() + 1 > max_records || stage.bytes + bytes > max_bytes as u64)
            {
                drop(stage);
                this.hand_over(py)?;
                stage = this.stage.lock().expect("never poisoned");
            }
            if !this.blocked.is_set() {
                stage.records.push(record);
                stage.futures.push(resolves);
                stage.bytes += bytes;
                if stage.records.len() >= max_records {
                    drop(stage);
                    let accepted = this.hand_over(py)?;
                    return Ok((accepted, receipt));
                }
                if !stage.scheduled {
                    stage.scheduled = true;
                    drop(stage);
                    binding
                        .call_soon
                        .call1(py, (slf.getattr(pyo3::intern!(py, "_hand_over"))?,))?;
                }
                return Ok((None, receipt));
            }
        }
        // A staged batch waits for room: wait after it, on the runtime.
        let accepted = binding.create_future.call0(py)?;
        let accepts = accepted.clone_ref(py);
        let producer = producer.clone();
        let collector = binding.collector.clone();
        this.push(Box::pin(async move {
            let outcome = match producer.send(record).await {
                Ok(future) => {
                    collector.push(Box::pin(async move {
                        Completion {
                            future: resolves.into(),
                            outcome: Outcome::Record(future.await),
                        }
                    }));
                    Outcome::Unit
                }
                Err(e) => {
                    // Its receipt is never awaited: the error goes to `accepted`.
                    drop_later(resolves);
                    Outcome::Error(Failure::Send(e))
                }
            };
            Completion {
                future: accepts.into(),
                outcome,
            }
        }))?;
        Ok((Some(accepted), receipt))
    }

    /// Hands the staged records over (scheduled with `call_soon` by `send`).
    fn _hand_over(&self, py: Python<'_>) -> PyResult<()> {
        self.hand_over(py).map(drop)
    }

    /// Hands a list of `(partition_key, data)` or `(partition_key, data, explicit_hash_key)`
    /// tuples over as one batch. Returns `(accepted, outcomes)` as `send` does; `outcomes`
    /// resolves to a list of `Receipt` and `RecordFailed`, in order.
    fn send_batch(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyList>,
    ) -> PyResult<(Option<Py<PyAny>>, Py<PyAny>)> {
        let (producer, binding) = self.started()?;
        self.hand_over(py)?;
        let mut batch = Vec::with_capacity(records.len());
        for item in records.iter() {
            let tuple = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("send_batch takes a list of (partition_key, data) tuples")
            })?;
            // Borrowed: the tuple holds its items while we read them (no reference counting).
            let (key, data, ehk) = match tuple.len() {
                2 => (
                    tuple.get_borrowed_item(0)?,
                    tuple.get_borrowed_item(1)?,
                    None,
                ),
                3 => (
                    tuple.get_borrowed_item(0)?,
                    tuple.get_borrowed_item(1)?,
                    Some(tuple.get_borrowed_item(2)?),
                ),
                _ => {
                    return Err(PyTypeError::new_err(
                        "send_batch takes (partition_key, data) or (partition_key, data, explicit_hash_key) tuples",
                    ));
                }
            };
            let key = key
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("a partition key must be a str"))?
                .to_str()?
                .to_owned();
            let ehk: Option<String> = match ehk {
                Some(h) if !h.is_none() => Some(h.extract()?),
                _ => None,
            };
            batch.push(user_record(py, key, &data, ehk.as_deref())?);
        }
        let outcomes = binding.create_future.call0(py)?;
        let resolves = outcomes.clone_ref(py);
        let owned = producer.clone();
        let mut sending = Box::pin(async move { owned.send_batch(batch).await });
        // Room is there almost always: take it now, on this thread, without a task.
        let mut cx = Context::from_waker(Waker::noop());
        match sending.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(future)) => {
                self.push(Box::pin(async move {
                    Completion {
                        future: resolves.into(),
                        outcome: Outcome::Batch(future.await),
                    }
                }))?;
                Ok((None, outcomes))
            }
            Poll::Ready(Err(e)) => {
                drop(resolves);
                let record = e.index.and_then(|i| e.records.get(i));
                Err(send_failed(py, &e.reason, e.index, record)?)
            }
            Poll::Pending => {
                let accepted = binding.create_future.call0(py)?;
                let accepts = accepted.clone_ref(py);
                let collector = binding.collector.clone();
                self.push(Box::pin(async move {
                    let outcome = match sending.await {
                        Ok(future) => {
                            collector.push(Box::pin(async move {
                                Completion {
                                    future: resolves.into(),
                                    outcome: Outcome::Batch(future.await),
                                }
                            }));
                            Outcome::Unit
                        }
                        Err(e) => {
                            drop_later(resolves);
                            Outcome::Error(Failure::SendBatch(e))
                        }
                    };
                    Completion {
                        future: accepts.into(),
                        outcome,
                    }
                }))?;
                Ok((Some(accepted), outcomes))
            }
        }
    }

    /// A Future that resolves once every record accepted so far has resolved.
    fn flush(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let producer = self.started()?.0.clone();
        self.hand_over(py)?;
        let blocked = self.blocked.clone();
        self.operation(py, async move {
            blocked.wait_clear().await;
            producer.flush().await
        })
    }

    /// Stops taking records, flushes, stops the pipeline. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let producer = self.started()?.0.clone();
        self.hand_over(py)?;
        self.state.closed.store(true, Ordering::SeqCst);
        let blocked = self.blocked.clone();
        self.operation(py, async move {
            blocked.wait_clear().await;
            producer.shutdown().await
        })
    }

    /// Fails every record not yet resolved with reason "aborted" (the record handed back).
    fn abort(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let producer = self.started()?.0.clone();
        self.hand_over(py)?;
        self.state.closed.store(true, Ordering::SeqCst);
        self.operation(py, async move {
            producer.abort().await;
            Ok(())
        })
    }

    /// Whether `start` has completed.
    #[getter]
    fn started_ok(&self) -> bool {
        self.state.producer.get().is_some()
    }

    /// Whether `close` or `abort` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// The producer's counters (KPL metric names) as a dict.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.state.producer.get().ok_or_else(not_started)?.metrics();
        let d = PyDict::new(py);
        d.set_item("user_records_received", m.user_records_received)?;
        d.set_item("user_records_data_received", m.user_records_data_received)?;
        d.set_item("user_records_pending", m.user_records_pending)?;
        d.set_item("user_records_put", m.user_records_put)?;
        d.set_item("user_records_data_put", m.user_records_data_put)?;
        d.set_item("kinesis_records_put", m.kinesis_records_put)?;
        d.set_item("kinesis_records_data_put", m.kinesis_records_data_put)?;
        d.set_item("put_records_calls", m.put_records_calls)?;
        d.set_item("put_records_entries", m.put_records_entries)?;
        d.set_item("errors_by_code", m.errors_by_code.into_pyobject(py)?)?;
        d.set_item("all_errors", m.all_errors)?;
        d.set_item("throttled_entries", m.throttled_entries)?;
        d.set_item("retries", m.retries)?;
        d.set_item("retries_per_record", m.retries_per_record)?;
        d.set_item("expired_records", m.expired_records)?;
        d.set_item("failed_records", m.failed_records)?;
        d.set_item("buffering_time_ms", m.buffering_time_ms)?;
        d.set_item("request_time_ms", m.request_time_ms)?;
        d.set_item("request_time_max_ms", m.request_time_max_ms)?;
        d.set_item(
            "user_records_per_kinesis_record",
            m.user_records_per_kinesis_record,
        )?;
        d.set_item(
            "kinesis_records_per_put_records_request",
            m.kinesis_records_per_put_records_request,
        )?;
        let shards = PyDict::new(py);
        for (id, s) in m.shards {
            let counters = PyDict::new(py);
            counters.set_item("kinesis_records", s.kinesis_records)?;
            counters.set_item("bytes", s.bytes)?;
            shards.set_item(id, counters)?;
        }
        d.set_item("shards", shards)?;
        Ok(d)
    }
}

impl NativeProducer {
    /// Hands the staged records to the pipeline as one batch. `Some(accepted)` if it has to
    /// wait for room: a Future that resolves once it is in.
    fn hand_over(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let (records, futures) = {
            let mut stage = self.stage.lock().expect("never poisoned");
            stage.scheduled = false;
            stage.bytes = 0;
            (
                std::mem::take(&mut stage.records),
                std::mem::take(&mut stage.futures),
            )
        };
        if records.is_empty() {
            return Ok(None);
        }
        let (producer, binding) = self.started()?;
        let owned = producer.clone();
        let mut sending = Box::pin(async move { owned.send_batch(records).await });
        let mut cx = Context::from_waker(Waker::noop());
        let each = |futures, outcome| Completion {
            future: crate::dispatch::Target::Each(futures),
            outcome,
        };
        match sending.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(batch)) => {
                self.push(Box::pin(async move {
                    each(futures, Outcome::Batch(batch.await))
                }))?;
                Ok(None)
            }
            Poll::Ready(Err(e)) => {
                self.push(Box::pin(async move {
                    each(futures, Outcome::Error(Failure::SendBatch(e)))
                }))?;
                Ok(None)
            }
            Poll::Pending => {
                self.blocked.set();
                let accepted = binding.create_future.call0(py)?;
                let accepts = accepted.clone_ref(py);
                let collector = binding.collector.clone();
                let blocked = self.blocked.clone();
                self.push(Box::pin(async move {
                    let result = sending.await;
                    blocked.clear();
                    collector.push(Box::pin(async move {
                        match result {
                            Ok(batch) => each(futures, Outcome::Batch(batch.await)),
                            Err(e) => each(futures, Outcome::Error(Failure::SendBatch(e))),
                        }
                    }));
                    Completion {
                        future: accepts.into(),
                        outcome: Outcome::Unit,
                    }
                }))?;
                Ok(Some(accepted))
            }
        }
    }

    fn started(&self) -> PyResult<(&Producer, &Binding)> {
        match (self.state.producer.get(), self.binding.get()) {
            (Some(p), Some(b)) => Ok((p, b)),
            _ => Err(not_started()),
        }
    }

    fn push(&self, operation: Operation) -> PyResult<()> {
        let binding = self.binding.get().ok_or_else(not_started)?;
        if binding.collector.push(operation) {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("the producer's collector stopped"))
        }
    }

    /// A Future for `work`: None, or `kpl.ProducerError`.
    fn operation(
        &self,
        py: Python<'_>,
        work: impl Future<Output = Result<(), kpl::producer::FlushError>> + Send + 'static,
    ) -> PyResult<Py<PyAny>> {
        let binding = self.binding.get().ok_or_else(not_started)?;
        let future = binding.create_future.call0(py)?;
        let completion = future.clone_ref(py);
        self.push(Box::pin(async move {
            let outcome = match work.await {
                Ok(()) => Outcome::Unit,
                Err(e) => Outcome::Error(Failure::Flush(e)),
            };
            Completion {
                future: completion.into(),
                outcome,
            }
        }))?;
        Ok(future)
    }
}

impl Drop for NativeProducer {
    /// Garbage-collected while open: what was accepted is still sent, in the background
    /// (`shutdown_all` waits for it at exit).
    fn drop(&mut self) {
        if let Some(producer) = self.state.producer.get()
            && !self.state.closed.swap(true, Ordering::SeqCst)
        {
            let producer = producer.clone();
            let handle = crate::runtime::get().spawn(async move {
                let _ = producer.shutdown().await;
            });
            let mut draining = DRAINING.lock().expect("never poisoned");
            draining.retain(|h| !h.is_finished());
            draining.push(handle);
        }
    }
}

/// A Future handle dropped off the GIL is released later by PyO3; keep such drops explicit.
fn drop_later(future: Py<PyAny>) {
    drop(future);
}

/// A user record from Python values: `data` is bytes or str (UTF-8).
fn user_record(
    py: Python<'_>,
    partition_key: String,
    data: &Bound<'_, PyAny>,
    explicit_hash_key: Option<&str>,
) -> PyResult<UserRecord> {
    let data = if let Ok(b) = data.cast::<PyBytes>() {
        Bytes::copy_from_slice(b.as_bytes())
    } else if let Ok(s) = data.cast::<PyString>() {
        Bytes::copy_from_slice(s.to_str()?.as_bytes())
    } else {
        return Err(PyTypeError::new_err(format!(
            "data must be bytes or str, not {}",
            data.get_type().name()?
        )));
    };
    let mut record = UserRecord::new(partition_key, data);
    if let Some(ehk) = explicit_hash_key {
        match HashKey::parse_explicit(ehk) {
            Ok(key) => record = record.with_explicit_hash_key(key),
            Err(e) => {
                return Err(send_failed(
                    py,
                    &SendErrorReason::Invalid(e),
                    None,
                    Some(&record),
                )?);
            }
        }
    }
    Ok(record)
}

/// Sees every producer still open (or garbage-collected while open) through: flushes and
/// stops them, waiting at most `timeout` seconds (default: their longest record TTL and a
/// second), with the GIL released. Returns how many had not finished by then. Called by
/// `kpl` at interpreter exit.
#[pyfunction]
#[pyo3(signature = (timeout=None))]
pub fn shutdown_all(py: Python<'_>, timeout: Option<f64>) -> usize {
    let open: Vec<Arc<State>> = OPEN
        .lock()
        .expect("never poisoned")
        .drain(..)
        .filter_map(|w| w.upgrade())
        .filter(|s| !s.closed.swap(true, Ordering::SeqCst))
        .collect();
    let longest = open
        .iter()
        .map(|s| s.record_ttl)
        .max()
        .unwrap_or(Duration::from_secs(30));
    let wait = timeout
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .unwrap_or(longest + Duration::from_secs(1));
    let runtime = crate::runtime::get();
    let mut handles: Vec<_> = DRAINING.lock().expect("never poisoned").drain(..).collect();
    for state in open {
        if let Some(producer) = state.producer.get() {
            let producer = producer.clone();
            handles.push(runtime.spawn(async move {
                let _ = producer.shutdown().await;
            }));
        }
    }
    py.detach(|| {
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + wait;
            let mut left = 0;
            for handle in handles {
                if tokio::time::timeout_at(deadline, handle).await.is_err() {
                    left += 1;
                }
            }
            left
        })
    })
}
