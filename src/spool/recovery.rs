//! Recovery on open: what an earlier process left in the directory, read back to the last
//! whole, checked frame of every file, with a warning for everything skipped.
//!
//! For each segment, in id order: its header, then frames until the file ends or a frame is
//! torn (the file ends inside it) or corrupt (CRC, length or content wrong). **A bad frame
//! ends its segment**: its length cannot be trusted, so the frames after it in the same file
//! are skipped too (reported with their byte count); later segments are read as usual.
//! Recovery never writes to a segment: the skipped bytes stay on disk until the segment's good
//! records are acknowledged and the file is deleted. Each segment's ack file marks which of its
//! records were acknowledged; a torn ack file is cut back to its last whole frame (a lost ack
//! only means that record is sent again). Segments whose records are all acknowledged, and
//! ack files without a segment, are deleted, finishing what the earlier process started.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::SpoolError;
use super::segment::{
    self, ACK_MAGIC, BadFrame, FILE_HEADER_BYTES, FRAME_HEADER_BYTES, Frame, SEGMENT_MAGIC,
    SegmentMeta,
};

/// What [`Spool::open`](super::Spool::open) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments holding entries not yet acknowledged.
    pub segments: usize,
    /// Entries not yet acknowledged: what a cursor will return first.
    pub entries: u64,
    /// Checkpoint keys recovered.
    pub checkpoints: usize,
    /// Everything skipped (each also logged as a warning).
    pub problems: Vec<RecoveryProblem>,
}

/// A part of a spool file that recovery skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryProblem {
    /// The file.
    pub file: PathBuf,
    /// Where the first bad frame starts.
    pub offset: u64,
    /// Bytes skipped from there to the file's end.
    pub skipped_bytes: u64,
    /// What was wrong.
    pub kind: ProblemKind,
}

/// What recovery found wrong with a frame or file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file ends inside a frame: a write torn by a crash.
    #[error("the file ends inside a frame (a write torn by a crash); the partial frame is skipped")]
    TornTail,
    /// A whole frame whose CRC, length or content is wrong.
    #[error("corrupt frame ({0}); it and the rest of the file are skipped")]
    Corrupt(&'static str),
    /// The file does not start as a spool file should; it is left alone and not read.
    #[error("{0}; the file is left alone and not read")]
    BadHeader(&'static str),
    /// Reading failed.
    #[error("read error ({0}); the rest of the file is skipped")]
    Unreadable(String),
}

/// What the directory held.
pub(crate) struct Recovered {
    /// Every segment with records not yet acknowledged, sealed.
    pub segments: BTreeMap<u64, SegmentMeta>,
    /// The latest checkpoint of every key.
    pub checkpoints: HashMap<String, Vec<u8>>,
    /// Larger than every id any earlier process handed out and anything on disk refers to.
    pub next_id: u64,
    pub report: RecoveryReport,
}

/// Reads `dir` (which exists and is locked by the caller).
pub(crate) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, what, source }
    };
    let mut segment_ids = Vec::new();
    let mut ack_ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("cannot list the spool directory", dir))? {
        let entry = entry.map_err(io("cannot list the spool directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_name(name, ".seg") {
            segment_ids.push(first);
        } else if let Some(first) = parse_name(name, ".acks") {
            ack_ids.push(first);
        }
    }
    segment_ids.sort_unstable();

    let mut report = RecoveryReport::default();
    let mut segments = BTreeMap::new();
    let mut checkpoints = HashMap::new();
    let mut next_id = 0u64;
    for first in segment_ids {
        let path = segment::segment_path(dir, first);
        next_id = next_id.max(first);
        let Some(meta) = scan_segment(&path, first, &mut checkpoints, &mut report)? else {
            // Not ours to read or delete: new segments must not take its name.
            next_id = next_id.max(first + 1);
            continue;
        };
        next_id = next_id.max(first + meta.count);
        segments.insert(first, meta);
    }

    for first in ack_ids {
        let path = segment::ack_path(dir, first);
        match segments.get_mut(&first) {
            Some(meta) => {
                let max_acked = scan_acks(&path, meta, &mut report)?;
                next_id = next_id.max(max_acked.map_or(0, |id| id + 1));
            }
            None if !segment::segment_path(dir, first).exists() => {
                remove(&path)?;
            }
            // A segment recovery could not read: keep its acks with it.
            None => {}
        }
    }

    // Fully acknowledged (or empty) segments: delete, as the earlier process would have.
    let done: Vec<u64> = segments
        .iter()
        .filter(|(_, m)| m.live == 0)
        .map(|(&first, _)| first)
        .collect();
    for first in done {
        segments.remove(&first);
        remove(&segment::segment_path(dir, first))?;
        remove(&segment::ack_path(dir, first))?;
    }

    report.segments = segments.len();
    report.entries = segments.values().map(|m| m.live).sum();
    report.checkpoints = checkpoints.len();
    for p in &report.problems {
        tracing::warn!(
            file = %p.file.display(),
            offset = p.offset,
            skipped_bytes = p.skipped_bytes,
            "spool recovery: {}", p.kind
        );
    }
    Ok(Recovered {
        segments,
        checkpoints,
        next_id,
        report,
    })
}

/// `NNNNNNNNNNNNNNNNNNNN<ext>` → N.
fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let digits = name.strip_suffix(ext)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpoolError::Io {
            path: path.to_path_buf(),
            what: "cannot delete an acknowledged spool file",
            source,
        }),
    }
}

fn problem(report: &mut RecoveryReport, file: &Path, offset: u64, len: u64, kind: ProblemKind) {
    report.problems.push(RecoveryProblem {
        file: file.to_path_buf(),
        offset,
        skipped_bytes: len.saturating_sub(offset),
        kind,
    });
}

/// The segment's good records and checkpoints; `None` if it has no readable header (then it
/// is left alone on disk, reported, and not read).
fn scan_segment(
    path: &Path,
    first: u64,
    checkpoints: &mut HashMap<String, Vec<u8>>,
    report: &mut RecoveryReport,
) -> Result<Option<SegmentMeta>, SpoolError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, what, source }
    };
    let file = File::open(path).map_err(io("cannot open a spool segment"))?;
    let len = file
        .metadata()
        .map_err(io("cannot read a spool segment's size"))?
        .len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut meta = SegmentMeta::new(first);
    meta.sealed = true;
    if len < FILE_HEADER_BYTES {
        // Created, then the process died before the header reached the disk: nothing in it.
        if len > 0 {
            problem(report, path, 0, len, ProblemKind::TornTail);
        }
        return Ok(Some(meta));
    }
    if let Err(why) = segment::check_header(&mut r, SEGMENT_MAGIC, first) {
        problem(report, path, 0, len, ProblemKind::BadHeader(why));
        return Ok(None);
    }
    let mut offset = FILE_HEADER_BYTES;
    let mut body = Vec::new();
    loop {
        let bad = match segment::read_frame_body(&mut r, len - offset, &mut body) {
            Ok(None) => break,
            Ok(Some(())) => match segment::decode_frame(&body) {
                Ok(Frame::Record(rec)) if rec.id == first + meta.count => {
                    let frame = FRAME_HEADER_BYTES + body.len() as u64;
                    meta.push_record(offset, frame);
                    offset += frame;
                    continue;
                }
                Ok(Frame::Record(_)) => BadFrame::Corrupt("record id out of sequence"),
                Ok(Frame::Checkpoint { key, value }) => {
                    checkpoints.insert(key, value);
                    offset += FRAME_HEADER_BYTES + body.len() as u64;
                    continue;
                }
                Err(bad) => bad,
            },
            Err(bad) => bad,
        };
        let kind = match bad {
            BadFrame::Torn => ProblemKind::TornTail,
            BadFrame::Corrupt(why) => ProblemKind::Corrupt(why),
            BadFrame::Io(e) => ProblemKind::Unreadable(e.to_string()),
        };
        problem(report, path, offset, len, kind);
        break;
    }
    meta.valid_len = offset;
    Ok(Some(meta))
}

/// Marks the acknowledged records of `meta`; cuts a torn ack file back to its last whole
/// frame, so that acks appended later are read. Returns the largest id acknowledged.
fn scan_acks(
    path: &Path,
    meta: &mut SegmentMeta,
    report: &mut RecoveryReport,
) -> Result<Option<u64>, SpoolError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, what, source }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("cannot open a spool ack file"))?;
    let len = file
        .metadata()
        .map_err(io("cannot read a spool ack file's size"))?
        .len();
    let mut max = None;
    let mut good = 0;
    let mut bad = None;
    {
        let mut r = BufReader::new(&mut file);
        if len >= FILE_HEADER_BYTES && segment::check_header(&mut r, ACK_MAGIC, meta.first).is_ok()
        {
            good = FILE_HEADER_BYTES;
            let mut body = Vec::new();
            loop {
                match segment::read_frame_body(&mut r, len - good, &mut body) {
                    Ok(None) => break,
                    Ok(Some(())) if body.len() % 8 == 0 => {
                        for id in body.chunks_exact(8) {
                            let id = u64::from_le_bytes(id.try_into().expect("8"));
                            max = max.max(Some(id));
                            if meta.holds(id) {
                                meta.ack(id);
                            }
                        }
                        good += FRAME_HEADER_BYTES + body.len() as u64;
                    }
                    Ok(Some(())) => {
                        bad = Some(ProblemKind::Corrupt("ack frame not a list of ids"));
                        break;
                    }
                    Err(BadFrame::Torn) => {
                        bad = Some(ProblemKind::TornTail);
                        break;
                    }
                    Err(BadFrame::Corrupt(why)) => {
                        bad = Some(ProblemKind::Corrupt(why));
                        break;
                    }
                    Err(BadFrame::Io(e)) => {
                        bad = Some(ProblemKind::Unreadable(e.to_string()));
                        break;
                    }
                }
            }
        } else if len > 0 {
            bad = Some(ProblemKind::BadHeader(
                "the ack file's header is missing or wrong",
            ));
        }
    }
    if let Some(kind) = bad {
        problem(report, path, good, len, kind);
    }
    if good < len {
        // Appending after a torn frame would hide every later ack from the next recovery.
        file.set_len(good)
            .map_err(io("cannot cut back a torn spool ack file"))?;
        file.seek(SeekFrom::End(0))
            .map_err(io("cannot cut back a torn spool ack file"))?;
        file.sync_data()
            .map_err(io("cannot cut back a torn spool ack file"))?;
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spool_file_names_are_read() {
        assert_eq!(parse_name("00000000000000000042.seg", ".seg"), Some(42));
        assert_eq!(parse_name("00000000000000000042.seg.tmp", ".seg"), None);
        assert_eq!(parse_name("42.seg", ".seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg", ".seg"), None);
    }
}
