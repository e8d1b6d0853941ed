//! `kpl put --file PATH [--follow]`: lines out of a file, each with the [`Checkpoint`] to
//! resume after it, following growth and rotation as `tail -F` does.
//!
//! - **Lines**: split at `\n` (a `\r` before it is dropped too, as for stdin). A line longer
//!   than `max_line_bytes` is not kept in memory: it is skipped to its newline and reported as
//!   [`SourceItem::Skipped`] with its size.
//! - **The last line** without a newline is held back while the file may still grow (with
//!   `follow`); it is handed out when its newline arrives, when the file is rotated away, or at
//!   the end of the file without `follow`.
//! - **Checkpoints**: every item carries the position after it: the file's device and inode,
//!   and the byte offset of the first line not yet handed out. Store it (in the spool, after
//!   the line) and pass it to [`FileSource::open`] to resume there. If the file at `path` is no
//!   longer that inode (rotated while kpl was down), the source first looks in the same
//!   directory for a file with that inode (`app.log.1`) and reads it from the offset to its end,
//!   then `path` from its start: no line is lost by a rotation during a restart either.
//! - **`follow`** keeps reading as the file grows and follows rotation:
//!   - *rename* (`mv app.log app.log.1`, then a new `app.log`): the old file is read to its
//!     end, then the new one from its start. No line is lost.
//!   - *truncate* (the file at the same inode shrinks below what was read): reading restarts at
//!     offset 0. With **copy-and-truncate** rotation (logrotate's `copytruncate`), lines
//!     written after kpl's last read and before the truncate are lost, exactly as with
//!     `tail -F`, and a file truncated and regrown past kpl's position between two polls is not
//!     noticed as truncated. Prefer rename rotation.
//!
//! **Polling, not `notify`**: the source polls `stat(path)` and reads every `poll_interval`
//! (a tokio timer, so tests run it on a paused clock). Rotation must be detected by comparing
//! inodes anyway, inotify does not work on NFS and most container overlays, and a poll of a
//! quarter second costs nothing next to sending to Kinesis; the `notify` crate would add
//! platform backends and still need this fallback.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Default [`FileSourceConfig::poll_interval`].
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 250;
/// Default [`FileSourceConfig::max_line_bytes`]: a Kinesis record's default maximum.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Bytes read from the file at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Where a file source stands: which file, and the offset of the first line not yet handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The file's device (`st_dev`); 0 with `inode` 0: no file yet, start at the beginning.
    pub device: u64,
    /// The file's inode (`st_ino`).
    pub inode: u64,
    /// Byte offset of the first line not yet handed out.
    pub offset: u64,
}

impl Checkpoint {
    /// Length of [`Checkpoint::encode`]'s output.
    pub const ENCODED_LEN: usize = 24;

    /// 24 bytes, little-endian: device, inode, offset (for `Spool::checkpoint`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        out.extend_from_slice(&self.device.to_le_bytes());
        out.extend_from_slice(&self.inode.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out
    }

    /// Reads [`Checkpoint::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
        Some(Checkpoint {
            device: word(0),
            inode: word(1),
            offset: word(2),
        })
    }
}

/// File source settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSourceConfig {
    /// Keep reading at the end of the file, following growth and rotation (`--follow`).
    pub follow: bool,
    /// Longest line handed out; longer ones are skipped and reported.
    pub max_line_bytes: usize,
    /// How often a following source looks for new data and rotation.
    pub poll_interval: Duration,
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        FileSourceConfig {
            follow: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            poll_interval: Duration::from_millis(DEFAULT_POLL_INTERVAL_MS),
        }
    }
}

/// What [`FileSource::next_line`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceItem {
    /// A line, without its `\n` (and `\r`).
    Line {
        /// The line's bytes.
        data: Vec<u8>,
        /// Where to resume after it.
        checkpoint: Checkpoint,
    },
    /// A line longer than `max_line_bytes`, not handed out.
    Skipped {
        /// Its length in bytes (without the newline).
        bytes: u64,
        /// Where to resume after it.
        checkpoint: Checkpoint,
    },
}

impl SourceItem {
    /// The position after this item.
    pub fn checkpoint(&self) -> Checkpoint {
        match self {
            SourceItem::Line { checkpoint, .. } | SourceItem::Skipped { checkpoint, .. } => {
                *checkpoint
            }
        }
    }
}

/// The file being read: a handle, which file it is, how far it has been read.
struct Open {
    file: File,
    device: u64,
    inode: u64,
    /// Offset of `buf[0]` in the file: everything before it has been handed out.
    consumed: u64,
    /// `true` while reading a file rotated away from `path` (found by inode at open): at its
    /// end, the source goes on with `path` from its start.
    rotated_away: bool,
}

/// Lines of one file, with checkpoints; see the module docs.
pub struct FileSource {
    path: PathBuf,
    config: FileSourceConfig,
    open: Open,
    /// Bytes read and not yet handed out (at most about `max_line_bytes` + one read).
    buf: Vec<u8>,
    /// One read's worth.
    chunk: Vec<u8>,
    /// Bytes of an over-long line dropped so far (`Some` while skipping one).
    skipping: Option<u64>,
}

impl FileSource {
    /// Opens `path` to read from `start` (use `Checkpoint::default()` for the beginning). If
    /// `path` is another file than `start` names, the file `start` names is looked for in the
    /// same directory and read to its end first; if it is gone, `path` is read from 0. If
    /// `path` is the same file but shorter than `start.offset` (truncated), from 0.
    pub async fn open(
        path: impl Into<PathBuf>,
        start: Checkpoint,
        config: FileSourceConfig,
    ) -> io::Result<FileSource> {
        let path = path.into();
        let file = File::open(&path).await?;
        let (device, inode) = identity(&file.metadata().await?);
        let len = file.metadata().await?.len();
        let mut open = Open {
            file,
            device,
            inode,
            consumed: 0,
            rotated_away: false,
        };
        let same = (device, inode) == (start.device, start.inode);
        if same && start.offset <= len {
            open.consumed = start.offset;
        } else if !same && start.inode != 0 {
            if let Some(old) = find_by_identity(&path, start.device, start.inode).await {
                let old_len = old.metadata().await?.len();
                open = Open {
                    file: old,
                    device: start.device,
                    inode: start.inode,
                    consumed: start.offset.min(old_len),
                    rotated_away: true,
                };
            } else {
                tracing::warn!(
                    file = %path.display(),
                    "the file read before was rotated away and is gone: reading the new one from its start"
                );
            }
        }
        open.file.seek(io::SeekFrom::Start(open.consumed)).await?;
        Ok(FileSource {
            path,
            config,
            open,
            buf: Vec::new(),
            chunk: vec![0; READ_CHUNK_BYTES],
            skipping: None,
        })
    }

    /// The position after everything handed out so far.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            device: self.open.device,
            inode: self.open.inode,
            offset: self.open.consumed,
        }
    }

    /// The next line (or skipped over-long line). Without `follow`, `None` at the end of the
    /// file; with `follow`, waits for more (cancel the future to stop: nothing is lost, the
    /// next call goes on where this one was).
    pub async fn next_line(&mut self) -> io::Result<Option<SourceItem>> {
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[scanned..]) {
                let end = scanned + i;
                return Ok(Some(self.take(end, 1)));
            }
            scanned = self.buf.len();
            if self.buf.len() > self.config.max_line_bytes {
                // Drop what is buffered of the over-long line; keep looking for its end.
                *self.skipping.get_or_insert(0) += self.buf.len() as u64;
                self.open.consumed += self.buf.len() as u64;
                self.buf.clear();
                scanned = 0;
            }
            if self.read_more().await? > 0 {
                continue;
            }
            // At the end of the file.
            if self.open.rotated_away || (self.config.follow && self.rotated().await?) {
                // A writer may have added to the old file between that read and the stat.
                if self.read_more().await? > 0 {
                    continue;
                }
                // Whatever is left of the old file is its last line.
                if let Some(item) = self.take_rest() {
                    return Ok(Some(item));
                }
                self.switch_to_path().await?;
                scanned = 0;
                continue;
            }
            if !self.config.follow {
                return Ok(self.take_rest());
            }
            if self.truncated().await? {
                tracing::warn!(file = %self.path.display(), "the file was truncated: reading it again from its start");
                self.open.file.seek(io::SeekFrom::Start(0)).await?;
                self.open.consumed = 0;
                self.buf.clear();
                self.skipping = None;
                scanned = 0;
                continue;
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Appends up to one chunk from the file to `buf`; 0 at its end. Cancel-safe: the bytes
    /// land in `buf` only once the read is done (tokio's `File` keeps a read cut short by
    /// cancellation for the next call).
    async fn read_more(&mut self) -> io::Result<usize> {
        let n = self.open.file.read(&mut self.chunk).await?;
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(n)
    }

    /// Hands out `buf[..end]`, consuming `end + newline` bytes.
    fn take(&mut self, end: usize, newline: usize) -> SourceItem {
        let mut data: Vec<u8> = self.buf.drain(..end + newline).collect();
        data.truncate(end);
        self.open.consumed += (end + newline) as u64;
        if let Some(before) = self.skipping.take() {
            return SourceItem::Skipped {
                bytes: before + end as u64,
                checkpoint: self.checkpoint(),
            };
        }
        if data.last() == Some(&b'\r') {
            data.pop();
        }
        if data.len() > self.config.max_line_bytes {
            return SourceItem::Skipped {
                bytes: data.len() as u64,
                checkpoint: self.checkpoint(),
            };
        }
        SourceItem::Line {
            data,
            checkpoint: self.checkpoint(),
        }
    }

    /// The buffered bytes without a newline as a last line, if any.
    fn take_rest(&mut self) -> Option<SourceItem> {
        (!self.buf.is_empty() || self.skipping.is_some()).then(|| self.take(self.buf.len(), 0))
    }

    /// `path` now names another file than the one being read (or none yet: keep waiting).
    async fn rotated(&self) -> io::Result<bool> {
        match tokio::fs::metadata(&self.path).await {
            Ok(m) => Ok(identity(&m) != (self.open.device, self.open.inode)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The file being read is shorter than what was read of it.
    async fn truncated(&self) -> io::Result<bool> {
        let len = self.open.file.metadata().await?.len();
        Ok(len < self.open.consumed + self.buf.len() as u64)
    }

    async fn switch_to_path(&mut self) -> io::Result<()> {
        let file = File::open(&self.path).await?;
        let (device, inode) = identity(&file.metadata().await?);
        self.open = Open {
            file,
            device,
            inode,
            consumed: 0,
            rotated_away: false,
        };
        self.buf.clear();
        self.skipping = None;
        Ok(())
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(unix)]
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// A file in `path`'s directory that is the file `(device, inode)`, if one is there.
async fn find_by_identity(path: &Path, device: u64, inode: u64) -> Option<File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        if let Ok(m) = entry.metadata().await
            && m.is_file()
            && identity(&m) == (device, inode)
        {
            return File::open(entry.path()).await.ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn follow() -> FileSourceConfig {
        FileSourceConfig {
            follow: true,
            ..FileSourceConfig::default()
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    async fn line(src: &mut FileSource) -> String {
        match src.next_line().await.unwrap() {
            Some(SourceItem::Line { data, .. }) => String::from_utf8(data).unwrap(),
            other => panic!("expected a line, got {other:?}"),
        }
    }

    /// `true` if the source has nothing to hand out for a long (paused-clock) while.
    async fn waits(src: &mut FileSource) -> bool {
        tokio::time::timeout(Duration::from_secs(60), src.next_line())
            .await
            .is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn lines_come_with_the_checkpoint_after_each_and_resume_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, "one\ntwo\r\nthree");
        let mut src = FileSource::open(&path, Checkpoint::default(), FileSourceConfig::default())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "one");
        let after_one = src.checkpoint();
        assert_eq!(after_one.offset, 4);
        assert_eq!(line(&mut src).await, "two");
        // Without follow, the last line without a newline comes at the end of the file.
        assert_eq!(line(&mut src).await, "three");
        assert_eq!(src.next_line().await.unwrap(), None);
        assert_eq!(src.checkpoint().offset, 14);
        let encoded = after_one.encode();
        assert_eq!(Checkpoint::decode(&encoded), Some(after_one));
        let mut again = FileSource::open(&path, after_one, FileSourceConfig::default())
            .await
            .unwrap();
        assert_eq!(line(&mut again).await, "two");
    }

    #[tokio::test(start_paused = true)]
    async fn following_reads_growth_and_holds_a_partial_line_until_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, "a\npart");
        let mut src = FileSource::open(&path, Checkpoint::default(), follow())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "a");
        assert!(waits(&mut src).await, "a partial line is held back");
        assert_eq!(src.checkpoint().offset, 2);
        append(&path, "ial\nb\n");
        assert_eq!(line(&mut src).await, "partial");
        assert_eq!(line(&mut src).await, "b");
        assert!(waits(&mut src).await);
        append(&path, "c\n");
        assert_eq!(line(&mut src).await, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rename_rotation_reads_the_old_file_to_its_end_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, "1\n");
        let mut src = FileSource::open(&path, Checkpoint::default(), follow())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "1");
        // Written to the old file, then rotated, before the source looked again.
        append(&path, "2\nlast-without-newline");
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        append(&path, "new-1\n");
        assert_eq!(line(&mut src).await, "2");
        assert_eq!(line(&mut src).await, "last-without-newline");
        assert_eq!(line(&mut src).await, "new-1");
        let cp = src.checkpoint();
        let new_inode = identity(&std::fs::metadata(&path).unwrap()).1;
        assert_eq!((cp.inode, cp.offset), (new_inode, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_after_a_rotation_finishes_the_rotated_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, "1\n2\n");
        let mut src = FileSource::open(&path, Checkpoint::default(), follow())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "1");
        let cp = src.checkpoint();
        drop(src); // killed here
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        append(&path, "new\n");
        let mut src = FileSource::open(&path, cp, FileSourceConfig::default())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "2");
        assert_eq!(line(&mut src).await, "new");
        assert_eq!(src.next_line().await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, "first line\nsecond line\n");
        let mut src = FileSource::open(&path, Checkpoint::default(), follow())
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "first line");
        assert_eq!(line(&mut src).await, "second line");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, "x\n");
        assert_eq!(line(&mut src).await, "x");
        assert_eq!(src.checkpoint().offset, 2);
        // A checkpoint beyond the file's end (truncated while kpl was down) starts over too.
        let stale = Checkpoint {
            offset: 1000,
            ..src.checkpoint()
        };
        let mut again = FileSource::open(&path, stale, FileSourceConfig::default())
            .await
            .unwrap();
        assert_eq!(line(&mut again).await, "x");
    }

    #[tokio::test(start_paused = true)]
    async fn an_over_long_line_is_skipped_and_reported_without_being_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let long = "y".repeat(300_000);
        append(&path, &format!("ok\n{long}\nafter\n{}", "z".repeat(20)));
        let config = FileSourceConfig {
            max_line_bytes: 1000,
            ..FileSourceConfig::default()
        };
        let mut src = FileSource::open(&path, Checkpoint::default(), config)
            .await
            .unwrap();
        assert_eq!(line(&mut src).await, "ok");
        match src.next_line().await.unwrap() {
            Some(SourceItem::Skipped { bytes, checkpoint }) => {
                assert_eq!(bytes, 300_000);
                assert_eq!(checkpoint.offset, 3 + 300_001);
            }
            other => panic!("{other:?}"),
        }
        assert!(src.buf.capacity() < 200_000, "the long line was not held");
        assert_eq!(line(&mut src).await, "after");
        assert_eq!(line(&mut src).await, "z".repeat(20));
    }
}
