//! Repeated warnings, summarized: every `tracing::warn!` of the library goes through
//! [`warn_limited!`], so a flaky endpoint that fails 120 PutRecords calls in 40 s logs the first
//! failure, then one line per interval with the count of those not logged ("PutRecords call
//! failed: 29 more like this in the last 10 s"), instead of 120 lines.
//!
//! A warning is keyed by what it says (a static label) and its scope (the stream, an error
//! code). The first occurrence of a key is logged; later ones within [`INTERVAL`] are counted;
//! when the interval ends, a summary line gives the count and the next interval starts counting.
//! Once a whole interval passed with no occurrence, the next one is logged in full again.
//! Time is tokio's clock, so tests drive it with a paused runtime. Outside a tokio runtime
//! nothing can summarize later, so every warning is logged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long later occurrences of a warning are counted instead of logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// The limiter every library warning goes through.
static LIMITER: LazyLock<LogLimiter> = LazyLock::new(|| {
    LogLimiter::new(
        INTERVAL,
        Box::new(|summary: &Summary<'_>| tracing::warn!("{summary}")),
    )
});

/// Whether the occurrence of warning `what` in `scope` is to be logged now (see the module doc).
pub(crate) fn allow(what: &'static str, scope: &dyn fmt::Display) -> bool {
    LIMITER.allow(what, scope)
}

/// Writes the summaries of the intervals still counting, now: a producer shutting down calls it,
/// so that the last counts are not lost with the runtime's pending timers.
pub(crate) fn flush() {
    LIMITER.flush();
}

/// `tracing::warn!` through the library's limiter: `warn_limited!(LABEL, SCOPE; ARGS...)` logs
/// `tracing::warn!(ARGS...)` if the limiter lets this occurrence of (LABEL, SCOPE) through.
/// LABEL is a string literal naming the warning in summaries; SCOPE anything `Display`.
macro_rules! warn_limited {
    ($what:literal, $scope:expr; $($arg:tt)+) => {
        if $crate::log_limit::allow($what, &$scope) {
            ::tracing::warn!($($arg)+);
        }
    };
}
pub(crate) use warn_limited;

/// The occurrences of one warning that were counted and not logged during an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary<'a> {
    pub what: &'static str,
    pub scope: &'a str,
    pub count: u64,
    pub interval: Duration,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.interval.as_secs_f64();
        let secs = if secs.fract() == 0.0 {
            format!("{secs:.0}")
        } else {
            format!("{secs:.1}")
        };
        write!(
            f,
            "{}: {} more like this in the last {secs} s",
            self.what, self.count
        )?;
        if !self.scope.is_empty() {
            write!(f, " ({})", self.scope)?;
        }
        Ok(())
    }
}

type Emit = Box<dyn Fn(&Summary<'_>) + Send + Sync>;

/// A keyed limiter; `emit` writes its summaries.
pub(crate) struct LogLimiter {
    interval: Duration,
    windows: Mutex<BTreeMap<(&'static str, String), Window>>,
    emit: Emit,
}

/// One key's current interval.
struct Window {
    ends: Instant,
    /// Occurrences counted and not logged so far in this interval.
    suppressed: u64,
    /// A task waits for `ends` to write the summary.
    armed: bool,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration, emit: Emit) -> Self {
        LogLimiter {
            interval,
            windows: Mutex::new(BTreeMap::new()),
            emit,
        }
    }

    /// Whether this occurrence of (`what`, `scope`) is to be logged now; if not, it is counted
    /// and a summary is written when its interval ends.
    pub(crate) fn allow(&'static self, what: &'static str, scope: &dyn fmt::Display) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return true;
        };
        let now = Instant::now();
        let key = (what, scope.to_string());
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = windows.get_mut(&key) else {
            windows.insert(
                key,
                Window {
                    ends: now + self.interval,
                    suppressed: 0,
                    armed: false,
                },
            );
            return true;
        };
        if now >= window.ends && window.suppressed == 0 {
            window.ends = now + self.interval;
            return true;
        }
        // Within the interval, or at its end before the summary task ran (it counts this one).
        window.suppressed += 1;
        if !window.armed {
            window.armed = true;
            let ends = window.ends;
            runtime.spawn(self.summarize(key, ends));
        }
        false
    }

    /// At `ends`, writes the summary of `key`'s interval and starts the next one.
    async fn summarize(&'static self, key: (&'static str, String), ends: Instant) {
        tokio::time::sleep_until(ends).await;
        let count = {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            let Some(window) = windows.get_mut(&key) else {
                return;
            };
            let count = std::mem::take(&mut window.suppressed);
            window.armed = false;
            window.ends = ends + self.interval;
            count
        };
        // Nothing left when a flush wrote the count already.
        if count > 0 {
            (self.emit)(&Summary {
                what: key.0,
                scope: &key.1,
                count,
                interval: self.interval,
            });
        }
    }

    /// Writes every count not yet summarized, for the part of its interval that passed.
    pub(crate) fn flush(&self) {
        let now = Instant::now();
        let due: Vec<_> = {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            windows
                .iter_mut()
                .filter(|(_, w)| w.suppressed > 0)
                .map(|(key, w)| {
                    let began = w.ends.checked_sub(self.interval).unwrap_or(w.ends);
                    let count = std::mem::take(&mut w.suppressed);
                    (key.clone(), count, now.saturating_duration_since(began))
                })
                .collect()
        };
        for ((what, scope), count, interval) in due {
            (self.emit)(&Summary {
                what,
                scope: &scope,
                count,
                interval,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{LogLimiter, Summary};

    type Seen = Arc<Mutex<Vec<(u64, String)>>>;

    /// A limiter that records each summary with the paused clock's second.
    fn limiter(interval: Duration) -> (&'static LogLimiter, Seen) {
        let seen: Seen = Arc::default();
        let start = tokio::time::Instant::now();
        let sink = seen.clone();
        let limiter = LogLimiter::new(
            interval,
            Box::new(move |s: &Summary<'_>| {
                let at = start.elapsed().as_secs();
                sink.lock().unwrap().push((at, s.to_string()));
            }),
        );
        (Box::leak(Box::new(limiter)), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_every_350_ms_for_40_s_logs_the_first_then_one_count_per_10_s() {
        let (limiter, seen) = limiter(Duration::from_secs(10));
        let mut logged = Vec::new();
        // 115 occurrences at 0, 0.35, ..., 39.9 s.
        for k in 0..115u64 {
            if limiter.allow("PutRecords call failed", &"stream=s code=InternalFailure") {
                logged.push(k);
            }
            tokio::time::sleep(Duration::from_millis(350)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(logged, [0], "only the first is logged in full");
        let seen = seen.lock().unwrap().clone();
        let line = |n| {
            format!(
                "PutRecords call failed: {n} more like this in the last 10 s (stream=s code=InternalFailure)"
            )
        };
        assert_eq!(
            seen,
            [
                (10, line(28)),
                (20, line(29)),
                (30, line(28)),
                (40, line(29)),
            ]
        );
        assert_eq!(
            logged.len() as u64 + [28, 29, 28, 29].iter().sum::<u64>(),
            115
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_interval_the_next_one_is_logged_in_full_and_keys_are_independent() {
        let (limiter, seen) = limiter(Duration::from_secs(10));
        assert!(limiter.allow("a", &"s1"));
        assert!(!limiter.allow("a", &"s1"));
        assert!(limiter.allow("a", &"s2"), "another scope is another key");
        assert!(limiter.allow("b", &"s1"), "another label is another key");
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(
            *seen.lock().unwrap(),
            [(10, "a: 1 more like this in the last 10 s (s1)".to_owned())]
        );
        // 10-20 s passed with no occurrence: the next is news again.
        assert!(limiter.allow("a", &"s1"));
        assert!(limiter.allow("b", &"s1"));
        assert!(!limiter.allow("b", &"s1"));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_writes_the_counts_so_far_and_the_interval_then_has_nothing_to_add() {
        let (limiter, seen) = limiter(Duration::from_secs(10));
        for _ in 0..3 {
            limiter.allow("a", &"s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        limiter.flush();
        assert_eq!(
            *seen.lock().unwrap(),
            [(3, "a: 2 more like this in the last 3.5 s (s)".to_owned())]
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "no empty summary at 10 s");
        limiter.flush();
        assert_eq!(seen.lock().unwrap().len(), 1, "nothing to flush");
    }

    #[test]
    fn outside_a_runtime_every_warning_is_logged() {
        let (limiter, seen) = limiter(Duration::from_secs(10));
        assert!(limiter.allow("a", &""));
        assert!(limiter.allow("a", &""));
        assert!(seen.lock().unwrap().is_empty());
    }
}
