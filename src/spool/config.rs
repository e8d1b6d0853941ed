//! Spool settings: when to sync, how large the spool may grow, what appends do at the cap.

use std::time::Duration;

use super::SpoolError;

/// Default [`SyncPolicy::Interval`]: the longest a record waits for `fdatasync`, and so the
/// appends a machine crash can lose.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 100;
/// Default size cap: bytes of record frames on disk (about partition key + data + 30 bytes
/// per record), whole segments counted until all their records are acknowledged.
pub const DEFAULT_MAX_SPOOL_BYTES: u64 = 1024 * 1024 * 1024;
/// Default segment size: a new segment file starts when the next record would pass it.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Longest checkpoint key, in bytes.
pub const MAX_CHECKPOINT_KEY_BYTES: usize = 4096;
/// The lock file that keeps a second process off a spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// When the spool calls `fdatasync`; see the module docs for what each choice can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// Before `append` returns (one sync per batch of concurrent appends). Loses nothing on a
    /// machine crash; costs a disk flush per batch.
    EveryRecord,
    /// At most this long after a record is written. A machine crash loses up to this much.
    Interval(Duration),
    /// Never (the OS writes back when it likes); still synced when the spool closes.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Interval(Duration::from_millis(DEFAULT_SYNC_INTERVAL_MS))
    }
}

/// What `append` does when the spool is at its size cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait until acknowledgements free a segment (in the order appends arrived).
    #[default]
    Block,
    /// Fail at once with [`SpoolError::Full`].
    Refuse,
}

/// Spool settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// When to sync (default: every [`DEFAULT_SYNC_INTERVAL_MS`]).
    pub sync: SyncPolicy,
    /// The size cap in bytes of record frames (default [`DEFAULT_MAX_SPOOL_BYTES`]). At least
    /// two segments.
    pub max_bytes: u64,
    /// What appends do at the cap (default [`WhenFull::Block`]).
    pub when_full: WhenFull,
    /// Segment file size (default [`DEFAULT_SEGMENT_BYTES`]): the unit in which acknowledged
    /// space is given back.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            sync: SyncPolicy::default(),
            max_bytes: DEFAULT_MAX_SPOOL_BYTES,
            when_full: WhenFull::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl SpoolConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), SpoolError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(SpoolError::Config(format!(
                "segment_bytes is {}, below the minimum of {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(SpoolError::Config(format!(
                "max_bytes ({}) must hold at least two segments of segment_bytes ({}): raise max_bytes or lower segment_bytes",
                self.max_bytes, self.segment_bytes
            )));
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return Err(SpoolError::Config(
                "a sync interval of 0 is SyncPolicy::EveryRecord: say that instead".into(),
            ));
        }
        Ok(())
    }
}
