//! Delays between attempts: full-jitter exponential backoff.
//!
//! Attempt `n` (0-based) waits a uniformly random time in `0 ..= min(cap, base * 2^n)`. With
//! the defaults (base 100 ms, cap 5 s) the ceilings are 100 ms, 200 ms, 400 ms, 800 ms, 1.6 s,
//! 3.2 s, then 5 s for every later attempt; the mean wait is half the ceiling. Full jitter
//! spreads retries of many records that failed together (one throttled call) so they do not
//! return as one burst.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Default first ceiling, in milliseconds.
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 100;
/// Default largest ceiling, in milliseconds.
pub const DEFAULT_BACKOFF_CAP_MS: u64 = 5_000;

/// Full-jitter exponential backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(DEFAULT_BACKOFF_BASE_MS),
            cap: Duration::from_millis(DEFAULT_BACKOFF_CAP_MS),
        }
    }
}

/// Backoff delays. As an iterator it yields the delays of attempts 0, 1, 2, ... forever;
/// the pipeline asks for a given attempt with [`Backoff::delay_for_attempt`].
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    rng: SmallRng,
    next: u32,
}

impl Backoff {
    /// Backoff with a randomly seeded generator.
    pub fn new(config: &BackoffConfig) -> Self {
        Backoff::with_rng(config, SmallRng::from_os_rng())
    }

    /// Backoff seeded with `seed` when one is given (see
    /// [`ProducerConfig::rng_seed`](crate::producer::ProducerConfig::rng_seed)), else by the
    /// operating system.
    pub fn seeded(config: &BackoffConfig, seed: Option<u64>) -> Self {
        match seed {
            Some(seed) => Backoff::with_rng(config, SmallRng::seed_from_u64(seed)),
            None => Backoff::new(config),
        }
    }

    /// Backoff with the given generator (deterministic tests).
    pub fn with_rng(config: &BackoffConfig, rng: SmallRng) -> Self {
        Backoff {
            config: *config,
            rng,
            next: 0,
        }
    }

    /// The ceiling of attempt `attempt`: `min(cap, base * 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .unwrap_or(self.config.cap)
            .min(self.config.cap)
    }

    /// A random delay for attempt `attempt` (0-based), in `0 ..= ceiling(attempt)`.
    pub fn delay_for_attempt(&mut self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(self.rng.random_range(0..=ceiling))
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.delay_for_attempt(self.next);
        self.next = self.next.saturating_add(1);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_ceiling_for_every_attempt() {
        let mut b = Backoff::new(&BackoffConfig::default());
        for attempt in 0..=200 {
            let ceiling = b.ceiling(attempt);
            assert!(ceiling <= Duration::from_secs(5));
            assert!(b.delay_for_attempt(attempt) <= ceiling);
        }
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
    }

    #[test]
    fn seeded_backoff_is_deterministic() {
        let c = BackoffConfig::default();
        let a: Vec<_> = Backoff::with_rng(&c, SmallRng::seed_from_u64(7))
            .take(20)
            .collect();
        let b: Vec<_> = Backoff::with_rng(&c, SmallRng::seed_from_u64(7))
            .take(20)
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn the_mean_is_half_the_ceiling() {
        let mut b = Backoff::with_rng(&BackoffConfig::default(), SmallRng::seed_from_u64(1));
        let n = 20_000;
        let total: Duration = (0..n).map(|_| b.delay_for_attempt(10)).sum();
        let mean = total / n;
        assert!(
            mean > Duration::from_millis(2_350) && mean < Duration::from_millis(2_650),
            "{mean:?}"
        );
    }
}
