//! Stopping short: [`Producer::abort`](crate::producer::Producer::abort), or a failure of the
//! pipeline task itself. Either way every record not yet resolved fails at once with its record
//! handed back, its buffer room returns, and whatever arrives afterwards is refused the same
//! way; flush, shutdown and abort are answered with the reason.

use super::{Input, Pipeline};
use crate::producer::aggregator::KinesisRecordOut;
use crate::producer::error::{FailureReason, FlushError, RecordFailure};
use crate::producer::record::{BufferRoom, PendingRecord, Reply, ReplyTo};
use crate::producer::unwind::catch;

impl Pipeline {
    /// `abort()`: fails everything not yet resolved with [`FailureReason::Aborted`].
    pub(super) fn abort(&mut self) {
        self.stop(FlushError::Aborted);
        self.fail_outstanding(&|maybe_stored| FailureReason::Aborted { maybe_stored });
    }

    /// The task failed (a panic while handling an event, `panic` its message): fails
    /// everything not yet resolved with [`FailureReason::PipelineFailed`], and the inputs
    /// still in `buf`.
    pub(super) fn fail(&mut self, panic: String, buf: &mut Vec<Input>) {
        tracing::error!(
            stream = %self.stream,
            panic = %panic,
            "the producer's pipeline task failed: failing every record not yet resolved"
        );
        self.stop(FlushError::PipelineFailed {
            message: panic.clone(),
        });
        let reason = |maybe_stored| FailureReason::PipelineFailed {
            message: panic.clone(),
            maybe_stored,
        };
        if let Err(again) = catch(|| self.fail_outstanding(&reason)) {
            // The state is too broken to take apart: what is left resolves `Lost`.
            tracing::error!(stream = %self.stream, panic = %again, "failing the outstanding records failed too: some are lost");
        }
        self.fail_inputs(buf);
    }

    /// Refuses every input in `buf`, handing its records back.
    pub(super) fn fail_inputs(&mut self, buf: &mut Vec<Input>) {
        for item in buf.drain(..) {
            self.refuse(item);
        }
        self.give_back_room();
    }

    /// Answers every flush, shutdown and abort, once the task stops.
    pub(super) fn finish(&mut self) {
        if let Some(task) = self.refresh.take() {
            task.abort();
        }
        self.give_back_room();
        let result = self.stopped.clone().map_or(Ok(()), Err);
        for ack in self.shutdowns.drain(..) {
            let _ = ack.send(result.clone());
        }
        for (_, ack) in self.flushes.drain(..) {
            let _ = ack.send(result.clone());
        }
    }

    /// From now on nothing is taken: `send` fails, waiting senders wake up and fail.
    fn stop(&mut self, why: FlushError) {
        self.closing = true;
        if self.stopped.is_none() {
            let _ = self.room.stopped.set(why.clone());
            self.stopped = Some(why);
        }
        self.room.records.close();
        self.room.bytes.close();
    }

    /// Fails every record the pipeline holds, wherever it is; `reason(maybe_stored)`.
    fn fail_outstanding(&mut self, reason: &dyn Fn(bool) -> FailureReason) {
        // Carried by a call: its answer was being read, is still to come, or said the record
        // is stored on an unexpected shard.
        let answering = std::mem::take(&mut self.answering);
        let misplaced = std::mem::take(&mut self.misplaced)
            .into_iter()
            .map(|m| m.record);
        let in_flight = self.sender.take_all().into_iter().flat_map(|c| c.records);
        let carried: Vec<_> = answering
            .into_iter()
            .chain(misplaced)
            .chain(in_flight)
            .collect();
        for record in carried {
            self.fail_all(record, reason(true));
        }
        let mut held = Vec::new();
        self.aggregator.finish_all(&mut held);
        held.append(&mut self.finished);
        for shard in self.shards.values_mut() {
            held.extend(shard.queue.drain(..));
        }
        held.extend(self.collector.take());
        held.extend(self.retries.take_all());
        for record in held {
            let maybe_stored = attempted(&record);
            self.fail_all(record, reason(maybe_stored));
        }
        self.settle_flushes();
        self.give_back_room();
    }

    /// Fails an input that arrived after the pipeline stopped, handing its records back.
    pub(super) fn refuse(&mut self, input: Input) {
        let reason = match self.stopped.clone() {
            Some(FlushError::PipelineFailed { message }) => FailureReason::PipelineFailed {
                message,
                maybe_stored: false,
            },
            _ => FailureReason::Aborted {
                maybe_stored: false,
            },
        };
        let failed = |record| {
            Reply::Failed(Box::new(RecordFailure {
                reason: reason.clone(),
                attempts: Vec::new(),
                record: Some(record),
            }))
        };
        match input {
            Input::Record(PendingRecord { record, state }) => {
                self.metrics.failed(1);
                self.to_release.0 += 1;
                self.to_release.1 += state.held_bytes as usize;
                if let ReplyTo::One(tx) = state.reply {
                    let _ = tx.send(failed(record));
                }
            }
            Input::Batch(batch) => {
                let max = self.config.max_outstanding_bytes;
                self.metrics.failed(batch.records.len() as u64);
                self.to_release.0 += batch.records.len();
                self.to_release.1 += batch
                    .records
                    .iter()
                    .map(|r| BufferRoom::bytes_for(r.billed_bytes(), max) as usize)
                    .sum::<usize>();
                let _ = batch
                    .reply
                    .send(batch.records.into_iter().map(failed).collect());
            }
            Input::Flush(ack) | Input::Shutdown(ack) | Input::Abort(ack) => {
                self.shutdowns.push(ack);
            }
        }
    }
}

/// Whether a PutRecords call carried `record` (so it may have been stored by one that timed
/// out).
fn attempted(record: &KinesisRecordOut) -> bool {
    !record.attempts.is_empty() || record.records.iter().any(|r| !r.attempts.is_empty())
}
