//! Dedup ids: a unique id on every user record, so that readers can drop the duplicates that
//! producer and consumer retries create.
//!
//! With [`ProducerConfig::dedup_ids`](crate::producer::ProducerConfig::dedup_ids) on, the
//! producer draws a random 64-bit producer id when it starts and numbers its records 0, 1, 2...
//! in the order `send` accepted them. The pair travels in a KPL tag (key [`DEDUP_TAG_KEY`]) on
//! the user record inside the aggregate, so the KCL and every other KPL reader still read the
//! data unchanged; a retried or resent record keeps its id. The reader side is
//! [`DeaggregatedRecord::dedup_id`](crate::codec::deaggregate::DeaggregatedRecord::dedup_id) and a
//! [`Deduper`], which remembers a bounded window of ids.
//!
//! ```
//! use kpl::dedup::{DedupId, Deduper};
//! let mut deduper = Deduper::new(10_000);
//! let id = DedupId { producer: 0xfeed, seq: 7 };
//! assert!(deduper.first_time(id));
//! assert!(!deduper.first_time(id)); // a duplicate
//! assert_eq!(DedupId::parse(&id.to_string()), Some(id));
//! ```

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::codec::deaggregate::DeaggregatedRecord;

/// The KPL tag key that carries a user record's [`DedupId`].
pub const DEDUP_TAG_KEY: &str = "kpl.id";

/// Longest text of a [`DedupId`]: 16 hex digits of producer id, up to 16 of sequence.
pub const DEDUP_ID_MAX_LEN: usize = 32;

/// A user record's unique id: the producer that wrote it and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupId {
    /// Random, drawn once per producer.
    pub producer: u64,
    /// The record's number in that producer, in `send` order.
    pub seq: u64,
}

impl DedupId {
    /// Reads the tag value form: 16 hex digits of producer id, then the sequence in hex.
    pub fn parse(text: &str) -> Option<DedupId> {
        if text.len() <= 16 || text.len() > DEDUP_ID_MAX_LEN || !text.is_ascii() {
            return None;
        }
        let (producer, seq) = text.split_at(16);
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(DedupId {
            producer: hex(producer)?,
            seq: hex(seq)?,
        })
    }

    /// Writes the tag value into `buf` and returns it, without allocating.
    pub fn encode<'a>(&self, buf: &'a mut [u8; DEDUP_ID_MAX_LEN]) -> &'a str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in buf[..16].iter_mut().enumerate() {
            *b = HEX[((self.producer >> (60 - 4 * i)) & 0xf) as usize];
        }
        let digits = (64 - (self.seq | 1).leading_zeros() as usize).div_ceil(4);
        for i in 0..digits {
            buf[16 + i] = HEX[((self.seq >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        std::str::from_utf8(&buf[..16 + digits]).expect("hex digits are ASCII")
    }
}

impl fmt::Display for DedupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; DEDUP_ID_MAX_LEN];
        f.write_str(self.encode(&mut buf))
    }
}

/// Drops user records whose [`DedupId`] it has already seen, remembering at most `max_ids`
/// ids (oldest forgotten first) and, if set, none older than `max_age`.
///
/// Size the window to cover how far apart two copies can be read: a producer resends a
/// record within its `record_ttl` (30 s by default), so `max_ids` of about the records read in
/// that time catches producer duplicates; a consumer that re-reads after a checkpoint needs
/// the records since the last checkpoint. Memory is about 64 bytes per remembered id.
/// Records without an id (written without dedup ids, or by another producer) always pass.
#[derive(Debug, Clone)]
pub struct Deduper {
    seen: HashSet<DedupId>,
    order: VecDeque<(DedupId, Instant)>,
    max_ids: usize,
    max_age: Option<Duration>,
    duplicates: u64,
}

impl Deduper {
    /// Remembers up to `max_ids` ids (at least 1).
    pub fn new(max_ids: usize) -> Self {
        let max_ids = max_ids.max(1);
        Deduper {
            // Grown as ids arrive: a large window costs memory only once it fills.
            seen: HashSet::with_capacity(max_ids.min(4096)),
            order: VecDeque::with_capacity(max_ids.min(4096)),
            max_ids,
            max_age: None,
            duplicates: 0,
        }
    }

    /// Also forgets ids first seen more than `max_age` ago.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// `true` the first time `id` is seen within the window, `false` for a repeat.
    pub fn first_time(&mut self, id: DedupId) -> bool {
        if self.seen(id) {
            self.duplicates += 1;
            return false;
        }
        self.remember(id);
        true
    }

    /// Whether `id` is in the window, without remembering it (a reader that confirms records
    /// only once they are handled asks this while reading, then [`remember`](Self::remember)s
    /// the ids of the records it confirms).
    pub fn seen(&mut self, id: DedupId) -> bool {
        self.forget_old(Instant::now());
        self.seen.contains(&id)
    }

    /// Adds `id` to the window (the oldest id goes if it is full); an id already there
    /// stays where it is.
    pub fn remember(&mut self, id: DedupId) {
        let now = Instant::now();
        self.forget_old(now);
        if !self.seen.insert(id) {
            return;
        }
        self.order.push_back((id, now));
        if self.order.len() > self.max_ids
            && let Some((old, _)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
    }

    /// Counts `n` repeats dropped by a reader that asked [`seen`](Self::seen).
    pub fn count_duplicates(&mut self, n: u64) {
        self.duplicates += n;
    }

    fn forget_old(&mut self, now: Instant) {
        let Some(max_age) = self.max_age else { return };
        while let Some(&(old, at)) = self.order.front() {
            if now.duration_since(at) <= max_age {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
    }

    /// Whether to keep `record`: it has no id, or its id was not seen yet.
    pub fn keep(&mut self, record: &DeaggregatedRecord) -> bool {
        match record.dedup_id() {
            Some(id) => self.first_time(id),
            None => true,
        }
    }

    /// Repeats dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        for id in [
            DedupId {
                producer: 0,
                seq: 0,
            },
            DedupId {
                producer: u64::MAX,
                seq: u64::MAX,
            },
            DedupId {
                producer: 0x0123_4567_89ab_cdef,
                seq: 0x10,
            },
        ] {
            let text = id.to_string();
            assert_eq!(DedupId::parse(&text), Some(id), "{text}");
        }
        assert_eq!(
            DedupId {
                producer: 1,
                seq: 255
            }
            .to_string(),
            "0000000000000001ff"
        );
        for bad in [
            "",
            "0000000000000001",
            "000000000000000g1",
            "0000000000000001+1",
            "00000000000000010000000000000000f",
        ] {
            assert_eq!(DedupId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn repeats_are_dropped_within_the_window_only() {
        let mut d = Deduper::new(3);
        let id = |seq| DedupId { producer: 9, seq };
        assert!(d.first_time(id(1)));
        assert!(!d.first_time(id(1)));
        assert!(d.first_time(id(2)));
        assert!(d.first_time(id(3)));
        assert!(d.first_time(id(4))); // forgets 1
        assert_eq!(d.len(), 3);
        assert!(d.first_time(id(1)), "outside the window: passes again");
        assert!(!d.first_time(id(4)));
        assert_eq!(d.duplicates(), 2);
        // Same sequence, other producer: not a duplicate.
        assert!(d.first_time(DedupId {
            producer: 8,
            seq: 4
        }));
    }

    #[test]
    fn old_ids_age_out() {
        let mut d = Deduper::new(100).with_max_age(Duration::ZERO);
        let id = DedupId {
            producer: 1,
            seq: 1,
        };
        assert!(d.first_time(id));
        std::thread::sleep(Duration::from_millis(2));
        assert!(d.first_time(id), "aged out");
    }
}
