//! Spool errors.

use std::path::PathBuf;

/// Spool errors: each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool file {path}: {what}: {source}; check the disk (free space, permissions)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process (or another `Spool` in this one) has the directory open.
    #[error(
        "the spool directory {0} is in use by another process (its LOCK file is locked): stop that process, or give this one another spool directory"
    )]
    Locked(PathBuf),
    /// At the size cap with [`WhenFull::Refuse`](super::WhenFull::Refuse).
    #[error(
        "the spool is full ({max_bytes} bytes of records wait for Kinesis; {needed} more needed): wait for the backlog to drain, raise max_bytes, or use WhenFull::Block to wait instead"
    )]
    Full {
        /// The cap.
        max_bytes: u64,
        /// Bytes the refused records needed.
        needed: u64,
    },
    /// The records cannot fit even an empty spool, or are not storable.
    #[error("{0}")]
    Unstorable(String),
    /// An earlier I/O error stopped the writer; nothing more is appended.
    #[error(
        "the spool stopped after an error ({0}); what it holds stays on disk: fix the cause and open the spool again"
    )]
    Stopped(String),
    /// The settings contradict each other.
    #[error("invalid spool settings: {0}")]
    Config(String),
}
