//! Stage 6, the sender: runs PutRecords calls on their own tasks, at most
//! `max_concurrent_requests` at once, each bounded by the request timeout, and reports every
//! outcome back to the pipeline task. The user records stay with the pipeline; a call only
//! borrows cheap clones of the entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::client::{ApiError, ApiErrorKind, KinesisApi, PutRecordsResultEntry, StreamId};
use crate::producer::aggregator::KinesisRecordOut;
use crate::producer::unwind::{CatchUnwind, catch};

/// The error of a client call that panicked (retryable: it says nothing about the service).
fn panicked(what: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Other,
        code: Some("KinesisApiPanic".into()),
        status: None,
        message: format!("the KinesisApi implementation panicked ({what}); the call is retried"),
    }
}

/// A finished call.
pub(crate) struct Completed {
    pub id: u64,
    pub elapsed: Duration,
    pub result: Result<Vec<PutRecordsResultEntry>, ApiError>,
}

/// A call in flight: what it carries.
pub(crate) struct InFlight {
    pub records: Vec<KinesisRecordOut>,
    pub started: Instant,
}

pub(crate) struct Sender {
    api: Arc<dyn KinesisApi>,
    stream: StreamId,
    timeout: Duration,
    max_in_flight: usize,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    done_tx: mpsc::UnboundedSender<Completed>,
}

impl Sender {
    pub fn new(
        api: Arc<dyn KinesisApi>,
        stream: StreamId,
        timeout: Duration,
        max_in_flight: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Completed>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (
            Sender {
                api,
                stream,
                timeout,
                max_in_flight,
                in_flight: HashMap::new(),
                next_id: 0,
                done_tx,
            },
            done_rx,
        )
    }

    /// Whether another call may start.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.max_in_flight
    }

    /// Starts a PutRecords call for `records`.
    pub fn send(&mut self, records: Vec<KinesisRecordOut>, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let entries: Vec<_> = records.iter().map(|r| r.entry.clone()).collect();
        let bytes: usize = entries.iter().map(|e| e.billed_bytes()).sum();
        let span = tracing::debug_span!(
            "put_records",
            stream = %self.stream,
            entries = entries.len(),
            bytes,
            call = id
        );
        // A panicking client (in the call or in its future) fails the call like an error: the
        // pipeline retries its entries instead of losing them with the task.
        let api = &self.api;
        let stream = &self.stream;
        let call = catch(|| api.put_records(stream, entries)).map_err(panicked);
        let timeout = self.timeout;
        let done_tx = self.done_tx.clone();
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result = match call {
                    Err(e) => Err(e),
                    Ok(call) => match tokio::time::timeout(timeout, CatchUnwind(call)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(panic)) => Err(panicked(panic)),
                        Err(_) => Err(ApiError::timeout(timeout)),
                    },
                };
                let elapsed = started.elapsed();
                match &result {
                    Ok(_) => tracing::debug!(?elapsed, "PutRecords answered"),
                    Err(e) => tracing::debug!(?elapsed, error = %e, "PutRecords failed"),
                }
                // The pipeline task may be gone (aborted runtime): nothing left to tell.
                let _ = done_tx.send(Completed {
                    id,
                    elapsed,
                    result,
                });
            }
            .instrument(span),
        );
        self.in_flight.insert(
            id,
            InFlight {
                records,
                started: now,
            },
        );
    }

    /// Every call in flight, taken back (the pipeline is stopping; their answers are ignored).
    pub fn take_all(&mut self) -> Vec<InFlight> {
        self.in_flight.drain().map(|(_, call)| call).collect()
    }

    /// The call `id` is over: hands back what it carried.
    pub fn complete(&mut self, id: u64) -> Option<InFlight> {
        self.in_flight.remove(&id)
    }
}
