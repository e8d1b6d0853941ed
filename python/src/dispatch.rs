//! From Rust outcomes to resolved asyncio Futures, in batches, without a foreign thread ever
//! taking the GIL.
//!
//! Each producer has a collector task on the runtime that polls every outstanding operation
//! (a record's receipt, a batch, a flush) and puts those that completed in one wake-up into
//! the producer's inbox. The loop watches the read end of a socket pair (`add_reader`): the
//! first completion put into an empty inbox writes one byte, and the loop then drains the
//! whole inbox in one callback on its own thread. So a busy loop gets fewer, larger batches,
//! a runtime worker never waits for the GIL, and nothing takes the GIL while the interpreter
//! shuts down (a thread that does then aborts the process).

use std::future::{Future, poll_fn};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::convert::Outcome;

/// An asyncio Future (or one per record of a staged batch) and what it resolves to.
pub struct Completion {
    pub future: Target,
    pub outcome: Outcome,
}

/// What a completion resolves.
pub enum Target {
    /// One Future.
    One(Py<PyAny>),
    /// One Future per record of a batch handed over for single sends: the outcome is a
    /// `Outcome::Batch` whose results go to them in order.
    Each(Vec<Py<PyAny>>),
}

impl From<Py<PyAny>> for Target {
    fn from(future: Py<PyAny>) -> Self {
        Target::One(future)
    }
}

/// An operation in flight: resolves to its Future's completion.
pub type Operation = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// The producer's side of its collector: hand operations over.
#[derive(Clone)]
pub struct Collector {
    tx: mpsc::UnboundedSender<Operation>,
}

impl Collector {
    /// Starts the collector of a producer whose Futures belong to `event_loop`, and registers
    /// the loop's reader of its inbox.
    pub fn start(event_loop: &Bound<'_, PyAny>) -> PyResult<Collector> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let fd = reader.as_raw_fd();
        let inbox = Arc::new(Inbox {
            items: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            writer,
        });
        let drain = Drain {
            inbox: inbox.clone(),
            reader,
            event_loop: event_loop.clone().unbind(),
        };
        event_loop.call_method1("add_reader", (fd, drain))?;
        let (tx, rx) = mpsc::unbounded_channel();
        crate::runtime::get().spawn(collect(rx, inbox));
        Ok(Collector { tx })
    }

    /// Polls `operation` until it completes and resolves its Future. False if the collector
    /// has stopped (it does not while a handle exists).
    pub fn push(&self, operation: Operation) -> bool {
        self.tx.send(operation).is_ok()
    }
}

/// Completions waiting for the loop.
struct Inbox {
    items: Mutex<Vec<Item>>,
    /// A byte was written and the loop has not drained since.
    armed: AtomicBool,
    writer: UnixStream,
}

// Items are moved once, into and out of the inbox: boxing the common variant would cost an
// allocation per completion to save bytes on the rare one.
#[allow(clippy::large_enum_variant)]
enum Item {
    Done(Completion),
    /// The collector ended: the loop stops watching.
    Closed,
}

impl Inbox {
    fn put(&self, items: impl IntoIterator<Item = Item>) {
        self.items.lock().expect("never poisoned").extend(items);
        if !self.armed.swap(true, Ordering::SeqCst) {
            // A full socket buffer (WouldBlock) is readable already; a closed reader means
            // the loop is gone and nobody waits.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// Polls operations and puts each wake-up's completions into the inbox at once.
async fn collect(mut rx: mpsc::UnboundedReceiver<Operation>, inbox: Arc<Inbox>) {
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
                done.push(Item::Done(completion));
            }
            if !done.is_empty() || (!open && pending.is_empty()) {
                Poll::Ready(open)
            } else {
                Poll::Pending
            }
        })
        .await;
        if !done.is_empty() {
            inbox.put(done.drain(..));
        }
        if !open && pending.is_empty() {
            break;
        }
    }
    inbox.put([Item::Closed]);
}

/// The loop's reader callback: resolves every completion in the inbox, on the loop's thread.
#[pyclass(module = "kpl._kpl")]
pub struct Drain {
    inbox: Arc<Inbox>,
    reader: UnixStream,
    event_loop: Py<PyAny>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Disarm before taking: a completion put after this writes a new byte.
        self.inbox.armed.store(false, Ordering::SeqCst);
        let items = std::mem::take(&mut *self.inbox.items.lock().expect("never poisoned"));
        for item in items {
            match item {
                Item::Done(completion) => resolve(py, completion)?,
                Item::Closed => {
                    self.event_loop.call_method1(
                        py,
                        "remove_reader",
                        (self.reader.as_raw_fd(),),
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn resolve(py: Python<'_>, Completion { future, outcome }: Completion) -> PyResult<()> {
    match (future, outcome) {
        (Target::One(future), outcome) => resolve_one(py, future, outcome),
        (Target::Each(futures), Outcome::Batch(results)) => {
            for (future, result) in futures.into_iter().zip(results) {
                resolve_one(py, future, Outcome::Record(result))?;
            }
            Ok(())
        }
        (Target::Each(futures), outcome) => {
            // The whole batch failed (e.g. the producer was closed): each record's Future
            // gets the same error.
            let error = match outcome.into_py(py) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            for future in futures {
                resolve_one(py, future, Outcome::Raise(error.clone_ref(py)))?;
            }
            Ok(())
        }
    }
}

fn resolve_one(py: Python<'_>, future: Py<PyAny>, outcome: Outcome) -> PyResult<()> {
    let future = future.bind(py);
    // A cancelled Future (its awaiter gave up) takes no result.
    if future
        .call_method0(pyo3::intern!(py, "done"))?
        .is_truthy()?
    {
        return Ok(());
    }
    match outcome.into_py(py) {
        Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
        Err(error) => {
            future.call_method1(pyo3::intern!(py, "set_exception"), (error.into_value(py),))?
        }
    };
    Ok(())
}
