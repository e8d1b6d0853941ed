//! The progress display of `kpl put` and `kpl bench` on a terminal, and the writer through which
//! log lines go so that they print above it instead of tearing it.
//!
//! One line, redrawn by indicatif: the rate now (over the last update, not the average since
//! start), user records stored so far, in flight, retried and failed. Off a terminal there is no
//! display at all. While a display is up, [`LogWriter`] (the tracing subscriber's writer) prints
//! each log line through indicatif's `suspend`: the line is cleared, the log line written, the
//! display drawn again below it.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kpl::producer::{MetricsSnapshot, Producer};

const MIB: f64 = 1024.0 * 1024.0;

/// The display that is up, if any: where log lines go around.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> Option<ProgressBar> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What one update shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// User records stored so far.
    pub stored: u64,
    /// User bytes stored so far.
    pub stored_bytes: u64,
    /// User records accepted and not yet resolved.
    pub in_flight: u64,
    /// User records scheduled for another attempt, so far.
    pub retries: u64,
    /// User records that failed, so far.
    pub failed: u64,
}

impl From<&MetricsSnapshot> for Counts {
    fn from(m: &MetricsSnapshot) -> Self {
        Counts {
            stored: m.user_records_put,
            stored_bytes: m.user_records_data_put,
            in_flight: m.user_records_pending,
            retries: m.retries,
            failed: m.failed_records,
        }
    }
}

/// A progress line on stderr (nothing when stderr is not a terminal).
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Option<(Instant, Counts)>,
}

impl Progress {
    /// A display on stderr if `is_tty`, else one that shows nothing.
    pub fn new(is_tty: bool) -> Progress {
        let bar = is_tty.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{elapsed:>5} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        Progress { bar, last: None }
    }

    /// Shows `counts`, the rate being that since the previous update.
    pub fn update(&mut self, counts: impl Into<Counts>) {
        let counts = counts.into();
        let now = Instant::now();
        let line = render(self.last, now, counts);
        self.last = Some((now, counts));
        if let Some(bar) = &self.bar {
            bar.set_message(line);
        }
    }

    /// Removes the display; what is printed next goes where it was.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            // One display at a time: log lines go straight to stderr from now on.
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The display's line for `counts`, with the rate since `last`.
fn render(last: Option<(Instant, Counts)>, now: Instant, c: Counts) -> String {
    let (rate, mib) = match last {
        Some((at, prev)) if now > at => {
            let secs = (now - at).as_secs_f64();
            (
                c.stored.saturating_sub(prev.stored) as f64 / secs,
                c.stored_bytes.saturating_sub(prev.stored_bytes) as f64 / MIB / secs,
            )
        }
        _ => (0.0, 0.0),
    };
    format!(
        "{rate:>9.0} rec/s {mib:>7.2} MiB/s now | stored {} | in flight {} | retries {} | failed {} (user records)",
        c.stored, c.in_flight, c.retries, c.failed
    )
}

/// Shows `producer`'s progress, updated every second, until the task is dropped (abort it and
/// await it before printing below the display).
pub async fn show(producer: Producer) {
    let mut progress = Progress::new(true);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        progress.update(&producer.metrics());
    }
}

/// Prints `line` on stderr, above the display if one is up.
pub fn eprintln_above(line: &str) {
    let _ = LogWriter.write_all(format!("{line}\n").as_bytes());
}

/// The tracing subscriber's writer: stderr, around the display if one is up.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let write = || std::io::stderr().lock().write_all(buf);
        match active() {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_that_since_the_last_update_not_since_start() {
        let t0 = Instant::now();
        let first = Counts {
            stored: 10_000,
            ..Counts::default()
        };
        // 10 000 records in the first second, then 500 in the next two.
        let line = render(
            Some((t0, first)),
            t0 + Duration::from_secs(2),
            Counts {
                stored: 10_500,
                stored_bytes: 2 * 1024 * 1024,
                in_flight: 7,
                retries: 3,
                failed: 1,
            },
        );
        assert!(
            line.starts_with("      250 rec/s    1.00 MiB/s now"),
            "{line}"
        );
        assert!(
            line.ends_with("stored 10500 | in flight 7 | retries 3 | failed 1 (user records)"),
            "{line}"
        );
    }

    #[test]
    fn off_a_terminal_nothing_is_drawn_and_logs_go_straight_to_stderr() {
        let mut p = Progress::new(false);
        p.update(Counts::default());
        assert!(p.bar.is_none());
        assert!(active().is_none());
    }
}
