//! `kpl.deaggregate`: the user records of one Kinesis record.

use kpl::codec::deaggregate::{DeaggregatedRecord, Deaggregator, DecodeError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The user records in one Kinesis record's `data` (plain, KPL-aggregated or a kpl zstd
/// frame), as `kpl.UserRecord`s; `strict`: a record with the KPL magic but a bad MD5 or
/// protobuf raises `ValueError` instead of passing through as plain data.
#[pyfunction]
#[pyo3(signature = (data, partition_key, explicit_hash_key=None, *, strict=false))]
pub fn deaggregate(
    py: Python<'_>,
    data: &[u8],
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    strict: bool,
) -> PyResult<Vec<Py<PyAny>>> {
    let records = py
        .detach(|| read(data, partition_key, explicit_hash_key, strict))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let class = py.import("kpl._types")?.getattr("UserRecord")?;
    records
        .into_iter()
        .map(|r| {
            let value = class.call1((
                r.partition_key.as_str(),
                PyBytes::new(py, &r.data),
                r.explicit_hash_key.as_deref(),
            ))?;
            Ok(value.unbind())
        })
        .collect()
}

/// The one use of the library's deaggregator.
fn read(
    data: &[u8],
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    strict: bool,
) -> Result<Vec<DeaggregatedRecord>, DecodeError> {
    Deaggregator::new()
        .strict(strict)
        .deaggregate(data, partition_key, explicit_hash_key)
}
