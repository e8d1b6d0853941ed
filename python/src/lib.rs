//! `kpl._kpl`: the native half of the `kpl` Python package (kpl-kinesis on PyPI).
//!
//! ```text
//!  Python thread (holds the GIL)            tokio runtime (no GIL)
//!  send / send_batch ─► try_send ────────►  pipeline ─► receipts ─► collector (one per producer)
//!  (an asyncio Future per record or batch,                   completions ─► inbox, one byte
//!   created on the producer's loop)                                         to a socket pair
//!                                                                                   │
//!  event loop ◄── add_reader callback: resolves every Future in the inbox ◄──────────┘
//! ```
//!
//! The Python thread only converts arguments and hands records over (a few hundred
//! nanoseconds, no waiting); everything else runs on the runtime's threads. Futures are
//! resolved on the loop that started the producer, a batch of completions per wake-up of the
//! loop; no thread but the caller's ever takes the GIL.

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
    m.add_class::<dispatch::Drain>()?;
    m.add_function(wrap_pyfunction!(reader::deaggregate, m)?)?;
    m.add_function(wrap_pyfunction!(producer::shutdown_all, m)?)?;
    m.add("SETTINGS", settings::NAMES.to_vec())?;
    Ok(())
}
