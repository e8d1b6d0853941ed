//! From Rust outcomes to resolved asyncio Futures, in batches.
//!
//! Each producer has a collector task on the runtime that polls every outstanding
//! operation (a record's receipt, a batch, a flush) and gathers those that completed in one
//! wake-up into a batch. Batches go to one deliverer thread per process, which takes the GIL
//! (never a runtime worker: waiting for the GIL there would stall the pipeline) and schedules
//! each batch on its loop with one `call_soon_threadsafe`; more batches queue up while it
//! waits for the GIL, so a busy interpreter gets fewer, larger batches.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::convert::Outcome;

/// An asyncio Future and what it resolves to.
pub struct Completion {
    pub future: Py<PyAny>,
    pub outcome: Outcome,
}

/// An operation in flight: resolves to its Future's completion.
pub type Operation = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// The producer's side of its collector: hand operations over.
#[derive(Clone)]
pub struct Collector {
    tx: mpsc::UnboundedSender<Operation>,
}

impl Collector {
    /// Starts the collector of a producer whose Futures belong to the loop of
    /// `call_soon_threadsafe` (a bound method).
    pub fn start(call_soon_threadsafe: Py<PyAny>) -> Collector {
        let (tx, rx) = mpsc::unbounded_channel();
        let target = Arc::new(call_soon_threadsafe);
        crate::runtime::get().spawn(collect(rx, target));
        Collector { tx }
    }

    /// Polls `operation` until it completes and resolves its Future. False if the collector
    /// has stopped (it does not while a handle exists).
    pub fn push(&self, operation: Operation) -> bool {
        self.tx.send(operation).is_ok()
    }
}

/// Polls operations and sends each wake-up's completions to the deliverer as one batch.
async fn collect(mut rx: mpsc::UnboundedReceiver<Operation>, target: Arc<Py<PyAny>>) {
    let mut pending: FuturesUnordered<Operation> = FuturesUnordered::new();
    let mut done = Vec::new();
    loop {
        let open = poll_fn(|cx| {
            let mut open = true;
            loop {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(op)) => pending.push(op),
                    Poll::Ready(None) => {
                        open = false;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            while let Poll::Ready(Some(completion)) = pending.poll_next_unpin(cx) {
                done.push(completion);
            }
            if !done.is_empty() || (!open && pending.is_empty()) {
                Poll::Ready(open)
            } else {
                Poll::Pending
            }
        })
        .await;
        if !done.is_empty() {
            deliver(Delivery {
                target: target.clone(),
                completions: std::mem::take(&mut done),
            });
        }
        if !open && pending.is_empty() {
            break;
        }
    }
    // The last handle of the loop goes away on the deliverer, with the GIL held.
    deliver(Delivery {
        target,
        completions: Vec::new(),
    });
}

/// Completions for one loop.
struct Delivery {
    target: Arc<Py<PyAny>>,
    completions: Vec<Completion>,
}

fn deliver(delivery: Delivery) {
    static DELIVERER: OnceLock<Mutex<std_mpsc::Sender<Delivery>>> = OnceLock::new();
    let tx = DELIVERER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("kpl-deliver".into())
            .spawn(move || run_deliverer(rx))
            .expect("kpl: cannot start the delivery thread");
        Mutex::new(tx)
    });
    let _ = tx.lock().expect("never poisoned").send(delivery);
}

/// Waits for deliveries; takes the GIL once for all that are queued, merges those of the same
/// loop and schedules each merged batch on its loop.
fn run_deliverer(rx: std_mpsc::Receiver<Delivery>) {
    while let Ok(first) = rx.recv() {
        let mut queued = vec![first];
        Python::attach(|py| {
            // Deliveries that arrived while this thread waited for the GIL.
            queued.extend(rx.try_iter());
            let mut merged: Vec<Delivery> = Vec::new();
            for d in queued.drain(..) {
                match merged
                    .iter_mut()
                    .find(|m| Arc::ptr_eq(&m.target, &d.target))
                {
                    Some(m) => m.completions.extend(d.completions),
                    None => merged.push(d),
                }
            }
            for d in merged.into_iter().filter(|d| !d.completions.is_empty()) {
                let batch = CompletionBatch {
                    completions: Mutex::new(d.completions),
                };
                // A closed loop refuses: nobody can await its Futures any more.
                let _ = d.target.call1(py, (batch,));
            }
        });
    }
}

/// Completions to resolve on their loop: `call_soon_threadsafe` calls it there.
#[pyclass(module = "kpl._kpl")]
pub struct CompletionBatch {
    completions: Mutex<Vec<Completion>>,
}

#[pymethods]
impl CompletionBatch {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let completions = std::mem::take(&mut *self.completions.lock().expect("never poisoned"));
        for Completion { future, outcome } in completions {
            let future = future.bind(py);
            // A cancelled Future (its awaiter gave up) takes no result.
            if future
                .call_method0(pyo3::intern!(py, "done"))?
                .is_truthy()?
            {
                continue;
            }
            match outcome.into_py(py) {
                Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
                Err(error) => future
                    .call_method1(pyo3::intern!(py, "set_exception"), (error.into_value(py),))?,
            };
        }
        Ok(())
    }
}
