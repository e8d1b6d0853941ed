//! `kpl._kpl`: the native half of the `kpl` Python package (kpl-kinesis on PyPI).
//!
//! ```text
//!  Python thread (holds the GIL)          tokio runtime (no GIL)            deliverer thread
//!  send / send_batch ─► try_send ──────►  pipeline ─► receipts ─► collector ──► Python::attach
//!  (an asyncio Future per record or           (one per producer: completed      once per batch:
//!   batch, created on the producer's loop)    futures gathered into batches)    loop.call_soon_threadsafe(batch)
//!                                                                                   │
//!  event loop ◄── batch() resolves every Future of the batch ◄──────────────────────┘
//! ```
//!
//! The Python thread only converts arguments and hands records over (a few hundred
//! nanoseconds, no waiting); everything else runs on the runtime's threads. Futures are
//! resolved on the loop that started the producer, a batch of completions per
//! `call_soon_threadsafe`.

#![deny(unsafe_code)]

use pyo3::prelude::*;

mod connect;
mod convert;
mod dispatch;
mod producer;
mod reader;
mod runtime;
mod settings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _kpl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<producer::NativeProducer>()?;
    m.add_class::<convert::Receipt>()?;
    m.add_class::<dispatch::CompletionBatch>()?;
    m.add_function(wrap_pyfunction!(reader::deaggregate, m)?)?;
    m.add_function(wrap_pyfunction!(producer::shutdown_all, m)?)?;
    m.add("SETTINGS", settings::NAMES.to_vec())?;
    Ok(())
}
