//! Stage 5, the collector: packs Kinesis records of any shards into PutRecords calls of at most
//! `collection_max_count` entries and `collection_max_size` bytes, counted as the service counts
//! them (partition key + data per entry). A call goes out when it is full, when its oldest
//! record has waited the max buffered time, or on flush.

use tokio::time::Instant;

use crate::producer::aggregator::KinesisRecordOut;

pub(crate) struct Collector {
    max_count: usize,
    max_bytes: usize,
    batch: Vec<KinesisRecordOut>,
    bytes: usize,
    deadline: Option<Instant>,
    /// Emptied call lists, reused (500 entries each).
    spare: Vec<Vec<KinesisRecordOut>>,
}

/// Call lists kept for reuse.
const MAX_SPARE: usize = 32;

impl Collector {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Collector {
            max_count,
            max_bytes,
            batch: Vec::with_capacity(max_count),
            bytes: 0,
            deadline: None,
            spare: Vec::new(),
        }
    }

    /// Takes back an emptied call list for reuse.
    pub fn recycle(&mut self, mut list: Vec<KinesisRecordOut>) {
        list.clear();
        if self.spare.len() < MAX_SPARE && list.capacity() >= self.max_count {
            self.spare.push(list);
        }
    }

    /// Adds `record` to the call being built, or hands it back if it does not fit.
    pub fn try_push(&mut self, record: KinesisRecordOut) -> Result<(), KinesisRecordOut> {
        let size = record.billed_bytes();
        if !self.fits(size) {
            return Err(record);
        }
        self.bytes += size;
        self.deadline = Some(match self.deadline {
            Some(d) => d.min(record.deadline),
            None => record.deadline,
        });
        self.batch.push(record);
        Ok(())
    }

    /// Whether a Kinesis record of `bytes` would fit the call being built.
    pub fn fits(&self, bytes: usize) -> bool {
        self.batch.len() < self.max_count
            && (self.batch.is_empty() || self.bytes + bytes <= self.max_bytes)
    }

    /// Whether the call should go out now.
    pub fn is_due(&self, now: Instant, flushing: bool) -> bool {
        !self.batch.is_empty()
            && (flushing
                || self.batch.len() >= self.max_count
                || self.bytes >= self.max_bytes
                || self.deadline.is_some_and(|d| d <= now))
    }

    /// When the call falls due by time.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes the call being built.
    pub fn take(&mut self) -> Vec<KinesisRecordOut> {
        self.bytes = 0;
        self.deadline = None;
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.max_count));
        std::mem::replace(&mut self.batch, next)
    }
}
