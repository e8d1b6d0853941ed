//! Rust outcomes as Python values: `Receipt`, `kpl.RecordFailed` and the other exceptions of
//! `kpl._types`, converted on the loop's thread when a Future is resolved.

use std::sync::Arc;

use kpl::UserRecord;
use kpl::producer::{
    FailureReason, FlushError, ProducerError, RecordFailure, RecordResult, SendBatchError,
    SendError, SendErrorReason,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

/// Where a record was stored.
#[pyclass(module = "kpl", frozen, eq)]
#[derive(PartialEq)]
pub struct Receipt {
    shard_id: Arc<str>,
    sequence_number: Arc<str>,
    /// Its index in the Kinesis record that carries it.
    #[pyo3(get)]
    sub_sequence_number: u64,
    /// PutRecords attempts that carried it (the last one stored it).
    #[pyo3(get)]
    attempts: usize,
}

#[pymethods]
impl Receipt {
    /// The shard that stored it.
    #[getter]
    fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The sequence number of the Kinesis record that carries it.
    #[getter]
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }

    fn __repr__(&self) -> String {
        format!(
            "Receipt(shard_id={:?}, sequence_number={:?}, sub_sequence_number={}, attempts={})",
            self.shard_id, self.sequence_number, self.sub_sequence_number, self.attempts
        )
    }
}

/// What an operation gave, still in Rust terms (converted with the GIL, on the loop).
pub enum Outcome {
    /// `None`.
    Unit,
    /// A record's receipt or failure.
    Record(RecordResult),
    /// A batch's, in order: a list of `Receipt` and `RecordFailed`.
    Batch(Vec<RecordResult>),
    /// An exception.
    Error(Failure),
    /// An exception already made.
    Raise(PyErr),
}

/// What an operation can fail with.
pub enum Failure {
    Start(ProducerError),
    Flush(FlushError),
    Send(SendError),
    SendBatch(SendBatchError),
}

impl Outcome {
    /// The Future's result, or its exception.
    pub fn into_py(self, py: Python<'_>) -> Result<Py<PyAny>, PyErr> {
        match self {
            Outcome::Unit => Ok(py.None()),
            Outcome::Record(Ok(receipt)) => Ok(new_receipt(py, receipt)?.into_any().unbind()),
            Outcome::Record(Err(failure)) => Err(record_failed(py, failure)?),
            Outcome::Batch(results) => {
                let list = PyList::empty(py);
                for result in results {
                    match result {
                        Ok(receipt) => list.append(new_receipt(py, receipt)?)?,
                        Err(failure) => list.append(record_failed(py, failure)?.into_value(py))?,
                    }
                }
                Ok(list.into_any().unbind())
            }
            Outcome::Error(failure) => Err(failure.into_pyerr(py)),
            Outcome::Raise(error) => Err(error),
        }
    }
}

impl Failure {
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let made = match self {
            Failure::Start(ProducerError::Config(e)) => Ok(PyValueError::new_err(e.to_string())),
            Failure::Start(e) => producer_error(py, &e.to_string()),
            Failure::Flush(e) => producer_error(py, &e.to_string()),
            Failure::Send(e) => send_failed(py, &e.reason, None, Some(&e.record)),
            Failure::SendBatch(e) => {
                let record = e.index.and_then(|i| e.records.get(i));
                send_failed(py, &e.reason, e.index, record)
            }
        };
        made.unwrap_or_else(|e| e)
    }
}

/// A `Receipt` object for `receipt`. (It stays tracked by the cyclic collector: PyO3 makes
/// every pyclass a GC type, and untracking it takes `unsafe` FFI, which this crate forbids; see
/// BENCHMARKS.md, Python, for what that costs.)
fn new_receipt(py: Python<'_>, receipt: kpl::producer::Receipt) -> PyResult<Bound<'_, Receipt>> {
    Bound::new(
        py,
        Receipt {
            shard_id: receipt.shard_id,
            sequence_number: receipt.sequence_number,
            sub_sequence_number: receipt.sub_sequence_number,
            attempts: receipt.attempts.len(),
        },
    )
}

/// `kpl._types`, imported once.
fn types(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static TYPES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(TYPES
        .get_or_try_init(py, || py.import("kpl._types").map(Bound::unbind))?
        .bind(py))
}

/// `kpl.UserRecord(partition_key, data, explicit_hash_key)`.
pub fn user_record(py: Python<'_>, record: &UserRecord) -> PyResult<Py<PyAny>> {
    let ehk = record.explicit_hash_key.map(|k| k.0.to_string());
    let data = PyBytes::new(py, &record.data);
    Ok(types(py)?
        .getattr("UserRecord")?
        .call1((record.partition_key.as_str(), data, ehk))?
        .unbind())
}

fn producer_error(py: Python<'_>, message: &str) -> PyResult<PyErr> {
    let class = types(py)?.getattr("ProducerError")?;
    Ok(PyErr::from_value(class.call1((message,))?))
}

/// `kpl.RecordFailed` for a record accepted and then not stored.
pub fn record_failed(py: Python<'_>, failure: RecordFailure) -> PyResult<PyErr> {
    let message = failure.to_string();
    let (reason, code) = match &failure.reason {
        FailureReason::Fatal { code, .. } => ("fatal", Some(code.as_str())),
        FailureReason::Expired { .. } => ("expired", None),
        FailureReason::AttemptsExhausted { .. } => ("attempts_exhausted", None),
        FailureReason::Aborted { .. } => ("aborted", None),
        FailureReason::PipelineFailed { .. } => ("pipeline_failed", None),
        FailureReason::Lost => ("lost", None),
        _ => ("unknown", None),
    };
    let last_code = failure
        .attempts
        .last()
        .and_then(|a| a.error.as_ref())
        .map(|e| e.code.as_str());
    let record = match &failure.record {
        Some(r) => user_record(py, r)?,
        None => py.None(),
    };
    let class = types(py)?.getattr("RecordFailed")?;
    let value = class.call1((
        reason,
        message,
        record,
        failure.attempts.len(),
        code.or(last_code),
    ))?;
    Ok(PyErr::from_value(value))
}

/// `kpl.RecordFailed` for a record (or batch) not accepted.
pub fn send_failed(
    py: Python<'_>,
    reason: &SendErrorReason,
    index: Option<usize>,
    record: Option<&UserRecord>,
) -> PyResult<PyErr> {
    let name = match reason {
        SendErrorReason::Invalid(_) => "invalid",
        SendErrorReason::Full => "full",
        SendErrorReason::Closed => "closed",
        SendErrorReason::PipelineFailed { .. } => "pipeline_failed",
        SendErrorReason::BatchTooLarge { .. } => "batch_too_large",
        _ => "unknown",
    };
    let message = match index {
        Some(i) => format!("record {i} of the batch: {reason}"),
        None => reason.to_string(),
    };
    let record = match record {
        Some(r) => user_record(py, r)?,
        None => py.None(),
    };
    let class = types(py)?.getattr("RecordFailed")?;
    let value = class.call1((name, message, record, 0usize, py.None()))?;
    Ok(PyErr::from_value(value))
}

/// The error for a producer used before `start`.
pub fn not_started() -> PyErr {
    PyRuntimeError::new_err(
        "the producer is not started: use `async with kpl.Producer(...)` or `await producer.start()` first",
    )
}
