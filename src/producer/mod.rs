//! The producer pipeline.
