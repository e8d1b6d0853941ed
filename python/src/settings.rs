//! `Producer(**settings)`: `ProducerConfig` fields by their Rust names, durations in seconds,
//! `backoff_base` / `backoff_cap` for the backoff, `compression` as text; checked by
//! `ProducerConfig::validate`, whose messages are raised as they are.

use std::time::Duration;

use kpl::codec::frame::Dictionary;
use kpl::producer::config::DEFAULT_ZSTD_LEVEL;
use kpl::producer::{Compression, ProducerConfig};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Every setting name, as `Producer()` takes it.
pub const NAMES: [&str; 20] = [
    "aggregation_enabled",
    "aggregation_max_size",
    "aggregation_max_count",
    "collection_max_count",
    "collection_max_size",
    "record_max_buffered_time",
    "record_ttl",
    "request_timeout",
    "rate_limit_percent",
    "rate_limit_enabled",
    "max_attempts",
    "backoff_base",
    "backoff_cap",
    "max_outstanding_records",
    "max_outstanding_bytes",
    "max_concurrent_requests",
    "compression",
    "max_record_bytes",
    "dedup_ids",
    "strict_ordering",
];

/// The configuration `settings` describe, validated.
pub fn config(settings: Option<&Bound<'_, PyDict>>) -> PyResult<ProducerConfig> {
    let mut c = ProducerConfig::default();
    let Some(settings) = settings else {
        return Ok(c);
    };
    for (key, value) in settings.iter() {
        let name: String = key.extract()?;
        let v = &value;
        match name.as_str() {
            "aggregation_enabled" => c.aggregation_enabled = boolean(&name, v)?,
            "aggregation_max_size" => c.aggregation_max_size = int(&name, v)?,
            "aggregation_max_count" => c.aggregation_max_count = int(&name, v)?,
            "collection_max_count" => c.collection_max_count = int(&name, v)?,
            "collection_max_size" => c.collection_max_size = int(&name, v)?,
            "record_max_buffered_time" => c.record_max_buffered_time = seconds(&name, v)?,
            "record_ttl" => c.record_ttl = seconds(&name, v)?,
            "request_timeout" => c.request_timeout = seconds(&name, v)?,
            "rate_limit_percent" => c.rate_limit_percent = int(&name, v)?,
            "rate_limit_enabled" => c.rate_limit_enabled = boolean(&name, v)?,
            "max_attempts" => c.max_attempts = int(&name, v)?,
            "backoff_base" => c.backoff.base = seconds(&name, v)?,
            "backoff_cap" => c.backoff.cap = seconds(&name, v)?,
            "max_outstanding_records" => c.max_outstanding_records = int(&name, v)?,
            "max_outstanding_bytes" => c.max_outstanding_bytes = int(&name, v)?,
            "max_concurrent_requests" => c.max_concurrent_requests = int(&name, v)?,
            "compression" => c.compression = compression(v)?,
            "max_record_bytes" => {
                c.max_record_bytes = if v.is_none() {
                    None
                } else {
                    Some(int(&name, v)?)
                }
            }
            "dedup_ids" => c.dedup_ids = boolean(&name, v)?,
            "strict_ordering" => c.strict_ordering = boolean(&name, v)?,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "Producer() got an unexpected setting '{name}'; settings are: {}",
                    NAMES.join(", ")
                )));
            }
        }
    }
    c.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(c)
}

fn boolean(name: &str, v: &Bound<'_, PyAny>) -> PyResult<bool> {
    v.extract()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a bool")))
}

fn int<T: for<'a, 'py> FromPyObject<'a, 'py>>(name: &str, v: &Bound<'_, PyAny>) -> PyResult<T> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not a bool"
        )));
    }
    v.extract().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative int in range, got {v}"
        ))
    })
}

/// A duration in seconds (int or float).
fn seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs: f64 = v.extract().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be a number of seconds (int or float)"))
    })?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} = {secs}: must be a finite, non-negative number of seconds"
        ))
    })
}

/// `None` / `"none"`, `"zstd"`, `"zstd:LEVEL"`, or the path of a dictionary file
/// (`kpl dict train`).
fn compression(v: &Bound<'_, PyAny>) -> PyResult<Compression> {
    if v.is_none() {
        return Ok(Compression::None);
    }
    let text: String = v.extract().map_err(|_| {
        PyTypeError::new_err(
            "compression must be None, \"zstd\", \"zstd:LEVEL\" or a dictionary file path",
        )
    })?;
    match text.split_once(':') {
        None if text == "none" => Ok(Compression::None),
        None if text == "zstd" => Ok(Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }),
        Some(("zstd", level)) => level
            .parse::<i32>()
            .map(|level| Compression::Zstd { level })
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "compression {text:?}: the zstd level must be an integer from 1 to 22"
                ))
            }),
        _ => {
            let bytes = std::fs::read(&text).map_err(|e| {
                PyValueError::new_err(format!(
                    "compression {text:?} is neither none, zstd nor zstd:LEVEL, and not a readable zstd dictionary file: {e}"
                ))
            })?;
            let dictionary = Dictionary::from_bytes(bytes)
                .map_err(|e| PyValueError::new_err(format!("compression {text:?}: {e}")))?;
            Ok(Compression::ZstdDictionary {
                level: DEFAULT_ZSTD_LEVEL,
                dictionary,
            })
        }
    }
}
