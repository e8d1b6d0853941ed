//! Where `kpl put` reads lines: stdin in chunks ([`LineReader`]), or files
//! ([`FileLines`], one [`FileSource`] each), behind one [`Input`]. Every line comes with where
//! the input stands after it, for a spool to checkpoint.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::source::{Checkpoint, FileSource, SourceItem};

/// A line and where its input stands after it.
#[derive(Debug, PartialEq)]
pub(crate) struct Item {
    pub line: Line,
    pub after: Position,
}

/// Where an input stands after a line: the next line to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// Bytes of stdin read by this run, line ends included.
    Stdin { bytes: u64 },
    /// The `index`th `--file`, at `checkpoint`.
    File {
        index: usize,
        checkpoint: Checkpoint,
    },
}

/// The lines `kpl put` reads: stdin, or files.
pub(crate) enum Input {
    Stdin(LineReader),
    Files(FileLines),
}

impl Input {
    /// The next line if one is read already, without waiting.
    pub fn next_buffered(&mut self) -> Option<Item> {
        match self {
            Input::Stdin(r) => {
                let line = r.next_buffered()?;
                Some(stdin_item(line, r))
            }
            Input::Files(f) => f.next_buffered(),
        }
    }

    /// The next line; `None` at the end of input. Cancel-safe.
    pub async fn next(&mut self) -> std::io::Result<Option<Item>> {
        match self {
            Input::Stdin(r) => Ok(r.next().await?.map(|line| stdin_item(line, r))),
            Input::Files(f) => f.next().await,
        }
    }

    /// Reading stops: stdin's line read so far without its `\n` is a line. A file's partial
    /// line stays in the file (after the last position handed out).
    pub fn take_partial(&mut self) -> Option<Item> {
        match self {
            Input::Stdin(r) => {
                let line = r.take_partial()?;
                Some(stdin_item(line, r))
            }
            Input::Files(_) => None,
        }
    }

    /// Nothing more is read yet: the input waits for its writer.
    pub fn idle(&self) -> bool {
        match self {
            Input::Stdin(r) => r.idle(),
            Input::Files(f) => f.idle(),
        }
    }

    /// Lines longer than this are skipped.
    pub fn longest(&self) -> usize {
        match self {
            Input::Stdin(r) => r.longest,
            Input::Files(f) => f.longest,
        }
    }
}

fn stdin_item(line: Line, r: &LineReader) -> Item {
    Item {
        line,
        after: Position::Stdin {
            bytes: r.consumed(),
        },
    }
}

/// Lines of one or more files, read by tasks of their own (one for all files in turn, or with
/// `follow` one per file, all at once) and handed over in chunks of what each read had
/// buffered. At most a few chunks wait in the channel.
pub(crate) struct FileLines {
    chunks: mpsc::Receiver<std::io::Result<Vec<Item>>>,
    chunk: std::collections::VecDeque<Item>,
    longest: usize,
}

/// Lines a file task hands over at once, at most.
const FILE_CHUNK_LINES: usize = 500;
/// About the most bytes a file task hands over at once.
const FILE_CHUNK_BYTES: usize = 256 << 10;

impl FileLines {
    /// Starts reading `sources` (`(index, path, source)`, opened at their checkpoints): in
    /// order, each to its end, or with `follow` all at once until reading stops.
    pub fn start(sources: Vec<(usize, PathBuf, FileSource)>, follow: bool, longest: usize) -> Self {
        let (tx, rx) = mpsc::channel(4);
        if follow {
            for source in sources {
                tokio::spawn(read_files(vec![source], tx.clone()));
            }
        } else {
            tokio::spawn(read_files(sources, tx));
        }
        FileLines {
            chunks: rx,
            chunk: Default::default(),
            longest,
        }
    }

    fn next_buffered(&mut self) -> Option<Item> {
        if self.chunk.is_empty()
            && let Ok(Ok(chunk)) = self.chunks.try_recv()
        {
            self.chunk = chunk.into();
        }
        self.chunk.pop_front()
    }

    async fn next(&mut self) -> std::io::Result<Option<Item>> {
        loop {
            if let Some(item) = self.chunk.pop_front() {
                return Ok(Some(item));
            }
            match self.chunks.recv().await {
                Some(Ok(chunk)) => self.chunk = chunk.into(),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    fn idle(&self) -> bool {
        self.chunk.is_empty() && self.chunks.is_empty()
    }
}

/// Reads `sources` in turn, each to its end (with `follow`: the one source, for ever), and
/// sends their lines in chunks: what a read had buffered, up to a chunk's size. Ends when the
/// receiver is gone.
async fn read_files(
    sources: Vec<(usize, PathBuf, FileSource)>,
    tx: mpsc::Sender<std::io::Result<Vec<Item>>>,
) {
    for (index, path, mut source) in sources {
        loop {
            let first = tokio::select! {
                _ = tx.closed() => return,
                first = source.next_line() => first,
            };
            let mut chunk = Vec::new();
            let mut bytes = 0;
            let mut next = first;
            let mut at_end = false;
            loop {
                match next {
                    Ok(Some(item)) => {
                        let item = file_item(index, &path, item);
                        if let Line::Data(d) = &item.line {
                            bytes += d.len();
                        }
                        chunk.push(item);
                    }
                    Ok(None) => {
                        at_end = true;
                        break;
                    }
                    Err(e) => {
                        let e = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                        if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if chunk.len() >= FILE_CHUNK_LINES || bytes >= FILE_CHUNK_BYTES {
                    break;
                }
                // What the last read brought is handed out without waiting; a read is not.
                match source.next_line().now_or_never() {
                    Some(n) => next = n,
                    None => break,
                }
            }
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if at_end {
                break;
            }
        }
    }
}

fn file_item(index: usize, path: &std::path::Path, item: SourceItem) -> Item {
    let checkpoint = item.checkpoint();
    let line = match item {
        SourceItem::Line { data, .. } => Line::Data(Bytes::from(data)),
        SourceItem::Skipped { bytes, checkpoint } => {
            eprintln!(
                "kpl put: {}: the line ending at byte {} is {bytes} bytes, longer than the largest record: skipped (it cannot be copied to --failed)",
                path.display(),
                checkpoint.offset
            );
            Line::TooLong {
                number: 0,
                length: bytes,
            }
        }
    };
    Item {
        line,
        after: Position::File { index, checkpoint },
    }
}

/// One line of input.
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// Its bytes, without the `\n` (and a `\r` before it).
    Data(Bytes),
    /// Longer than `LineReader::longest`: skipped as it was read, never held whole.
    TooLong {
        /// 1-based, in this run's input.
        number: u64,
        /// Its length in bytes, without the `\n`.
        length: u64,
    },
}

/// Lines out of chunks of input. Memory stays bounded whatever the input: a line longer than
/// `longest` is counted and dropped as it is read. `next` is cancel-safe: everything read
/// is kept in `self`.
pub(crate) struct LineReader {
    chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    /// The line read so far, when it spans chunks.
    line: Vec<u8>,
    /// Bytes of the current line so far, when it is over `longest` (then `line` is empty).
    skipping: Option<u64>,
    pub(crate) longest: usize,
    number: u64,
    /// Bytes of the lines handed out so far, line ends included.
    consumed: u64,
    eof: bool,
}

impl LineReader {
    pub(crate) fn new(chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>, longest: usize) -> Self {
        LineReader {
            chunks,
            chunk: Vec::new(),
            pos: 0,
            line: Vec::new(),
            skipping: None,
            longest,
            number: 0,
            consumed: 0,
            eof: false,
        }
    }

    /// The next line if it is complete in what was read, without waiting.
    pub(crate) fn next_buffered(&mut self) -> Option<Line> {
        let rest = self.chunk.get(self.pos..)?;
        let i = memchr::memchr(b'\n', rest)?;
        let chunk = std::mem::take(&mut self.chunk);
        let line = self.end_line(&chunk[self.pos..self.pos + i], true);
        self.pos += i + 1;
        self.chunk = chunk;
        Some(line)
    }

    /// The next line; `None` at the end of input.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if self.pos < self.chunk.len() {
                let chunk = std::mem::take(&mut self.chunk);
                let rest = &chunk[self.pos..];
                let line = match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.pos += i + 1;
                        Some(self.end_line(&rest[..i], true))
                    }
                    None => {
                        self.append(rest);
                        self.pos = chunk.len();
                        None
                    }
                };
                self.chunk = chunk;
                if line.is_some() {
                    return Ok(line);
                }
            }
            if self.eof {
                return Ok(self.take_partial());
            }
            match self.chunks.recv().await {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => self.eof = true,
            }
        }
    }

    /// The line read so far without its `\n` (at the end of input, or when reading stops).
    pub(crate) fn take_partial(&mut self) -> Option<Line> {
        (!self.line.is_empty() || self.skipping.is_some()).then(|| self.end_line(&[], false))
    }

    /// Whether nothing more is buffered: the input is waiting for its writer.
    pub(crate) fn idle(&self) -> bool {
        self.pos >= self.chunk.len() && self.chunks.is_empty()
    }

    fn append(&mut self, part: &[u8]) {
        if let Some(length) = &mut self.skipping {
            *length += part.len() as u64;
        } else if self.line.len() + part.len() > self.longest {
            self.skipping = Some((self.line.len() + part.len()) as u64);
            self.line = Vec::new();
        } else {
            // A line that spans chunks gets room for the longest line at once: no copies as
            // it grows, and only the pages written are resident.
            if self.line.len() + part.len() > self.line.capacity() {
                self.line.reserve_exact(self.longest - self.line.len());
            }
            self.line.extend_from_slice(part);
        }
    }

    /// Bytes of the lines handed out so far, line ends included: where the input stands.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    fn end_line(&mut self, last: &[u8], newline: bool) -> Line {
        self.number += 1;
        self.consumed += u64::from(newline);
        let mut data = if self.line.is_empty() && self.skipping.is_none() {
            if last.len() > self.longest {
                self.skipping = Some(last.len() as u64);
                Vec::new()
            } else {
                last.to_vec()
            }
        } else {
            self.append(last);
            std::mem::take(&mut self.line)
        };
        if let Some(length) = self.skipping.take() {
            self.consumed += length;
            return Line::TooLong {
                number: self.number,
                length,
            };
        }
        self.consumed += data.len() as u64;
        if data.last() == Some(&b'\r') {
            data.pop();
        }
        Line::Data(Bytes::from(data))
    }
}

/// A read shorter than this means lines trickle in: the next read waits a little for more.
const SHORT_READ: usize = 16 << 10;

/// How long the stdin thread lets a trickle of lines gather before it reads again: a twentieth
/// of the time records wait in their aggregates anyway, at most 5 ms. At a few thousand lines a
/// second this hands over one chunk (one wake-up of the reader, one `send_batch`, one wake-up
/// of the pipeline) per few ms instead of per line; a busy input fills its reads and never
/// waits.
pub(crate) fn coalesce_time(config: &kpl::producer::ProducerConfig) -> Duration {
    (config.record_max_buffered_time / 20).min(Duration::from_millis(5))
}

/// Stdin in chunks, read on a thread of its own: a read cannot be cancelled, and a thread
/// blocked in one must not keep the process from exiting (tokio's stdin would hold the
/// runtime's shutdown until the next line). At most a few chunks wait in the channel. After a
/// short read it sleeps `coalesce` before the next one.
pub(crate) fn read_stdin(coalesce: Duration) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    use std::io::Read;
    const CHUNK: usize = 256 << 10;
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("kpl-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                        if n < SHORT_READ && !coalesce.is_zero() {
                            std::thread::sleep(coalesce);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader over `chunks`, lines longer than `longest` skipped.
    fn reader(chunks: &[&[u8]], longest: usize) -> LineReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Ok(c.to_vec())).unwrap();
        }
        LineReader::new(rx, longest)
    }

    async fn all(mut r: LineReader) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(line) = r.next().await.unwrap() {
            out.push(line);
        }
        out
    }

    fn data(s: &str) -> Line {
        Line::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[tokio::test]
    async fn lines_span_chunks_and_lose_their_line_ends() {
        let r = reader(&[b"ab", b"c\r\nd\n\nef", b"g"], 100);
        assert_eq!(
            all(r).await,
            [data("abc"), data("d"), data(""), data("efg")]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_and_counted_whole() {
        let r = reader(&[b"ok\n12345", b"678", b"9\nlast\n0123456789"], 5);
        assert_eq!(
            all(r).await,
            [
                data("ok"),
                Line::TooLong {
                    number: 2,
                    length: 9
                },
                data("last"),
                Line::TooLong {
                    number: 4,
                    length: 10
                },
            ]
        );
        // Exactly at the limit is a line.
        let r = reader(&[b"12345\n"], 5);
        assert_eq!(all(r).await, [data("12345")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_line_is_taken_when_reading_stops() {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Ok(b"one\ntw".to_vec())).unwrap();
        let mut r = LineReader::new(rx, 100);
        assert_eq!(r.next().await.unwrap(), Some(data("one")));
        assert!(!r.idle(), "\"tw\" is buffered");
        // The input stays open: `next` waits (cancelled here); a stop takes what was read.
        let pending = tokio::time::timeout(Duration::from_secs(1), r.next()).await;
        assert!(pending.is_err(), "waits for more input");
        assert!(r.idle());
        assert_eq!(r.take_partial(), Some(data("tw")));
        assert_eq!(r.take_partial(), None);
        drop(tx);
        assert_eq!(r.next().await.unwrap(), None);
    }
}
