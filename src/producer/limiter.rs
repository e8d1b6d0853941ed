//! Stage 4, the limiter: one pair of token buckets per shard (records/s and bytes/s) at
//! `rate_limit` % of the shard's write limits, so the producer sends what the shard can take
//! instead of learning it from throttling.
//!
//! Buckets start full and hold one second of the configured rate (the burst); a Kinesis record
//! larger than a bucket waits for a full bucket and goes alone. When the service still throttles
//! a shard (a neighbour writes to it too, or the rate limit is above 100 %), the shard's rate is
//! cut multiplicatively (x0.7, at most once per 100 ms so one throttled call counts once, never
//! below 10 %) and grows back additively with each stored Kinesis record: AIMD, as TCP does.

use std::time::Duration;

use tokio::time::Instant;

use crate::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};

/// Default per-shard rate in percent of the shard limits (the KPL's `RateLimit`).
pub const DEFAULT_RATE_LIMIT_PERCENT: u32 = 150;
/// Default burst: how much of a second's rate a bucket holds.
pub const DEFAULT_BURST_MS: u64 = 1_000;
/// Rate multiplier applied on throttling.
const DECREASE: f64 = 0.7;
/// Lowest rate multiplier.
const MIN_FACTOR: f64 = 0.1;
/// Rate multiplier regained per stored Kinesis record.
const INCREASE_PER_RECORD: f64 = 0.02;
/// Throttles closer together than this count once.
const DECREASE_INTERVAL: Duration = Duration::from_millis(100);

/// Limiter settings, shared by every shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Rate in percent of 1000 records/s and 1 MiB/s.
    pub rate_limit_percent: u32,
    /// Bucket size as a share of one second's rate.
    pub burst: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            rate_limit_percent: DEFAULT_RATE_LIMIT_PERCENT,
            burst: Duration::from_millis(DEFAULT_BURST_MS),
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    /// Configured rate, per second.
    rate: f64,
    /// Burst as a share of a second.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            rate,
            burst,
            tokens: rate * burst,
            last: now,
        }
    }

    fn capacity(&self, factor: f64) -> f64 {
        (self.rate * factor * self.burst).max(1.0)
    }

    fn available(&self, factor: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate * factor).min(self.capacity(factor))
    }

    fn refill(&mut self, factor: f64, now: Instant) {
        self.tokens = self.available(factor, now);
        self.last = self.last.max(now);
    }

    /// A need larger than the bucket waits for a full bucket.
    fn need(&self, amount: f64, factor: f64) -> f64 {
        amount.min(self.capacity(factor))
    }

    fn wait(&self, amount: f64, factor: f64, now: Instant) -> Duration {
        let missing = self.need(amount, factor) - self.available(factor, now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            // Round up so that `try_take` at the returned instant succeeds.
            Duration::from_secs_f64(missing / (self.rate * factor)) + Duration::from_micros(1)
        }
    }
}

/// The limiter of one shard.
#[derive(Debug, Clone)]
pub struct ShardLimiter {
    records: Bucket,
    bytes: Bucket,
    factor: f64,
    last_decrease: Option<Instant>,
}

impl ShardLimiter {
    /// A limiter with full buckets.
    pub fn new(config: &LimiterConfig, now: Instant) -> Self {
        let share = f64::from(config.rate_limit_percent) / 100.0;
        let burst = config.burst.as_secs_f64();
        ShardLimiter {
            records: Bucket::new(SHARD_WRITE_RECORDS_PER_SEC as f64 * share, burst, now),
            bytes: Bucket::new(SHARD_WRITE_BYTES_PER_SEC as f64 * share, burst, now),
            factor: 1.0,
            last_decrease: None,
        }
    }

    /// Takes one record and `bytes` if both buckets hold enough now; else takes nothing.
    pub fn try_take(&mut self, bytes: usize, now: Instant) -> bool {
        self.records.refill(self.factor, now);
        self.bytes.refill(self.factor, now);
        let need_records = self.records.need(1.0, self.factor);
        let need_bytes = self.bytes.need(bytes as f64, self.factor);
        if self.records.tokens >= need_records && self.bytes.tokens >= need_bytes {
            self.records.tokens -= need_records;
            self.bytes.tokens -= need_bytes;
            true
        } else {
            false
        }
    }

    /// The earliest instant at which `try_take(bytes)` succeeds (`now` if it would now).
    pub fn ready_at(&self, bytes: usize, now: Instant) -> Instant {
        let wait = self
            .records
            .wait(1.0, self.factor, now)
            .max(self.bytes.wait(bytes as f64, self.factor, now));
        now + wait
    }

    /// The service throttled this shard: slow down.
    pub fn on_throttled(&mut self, now: Instant) {
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL)
        {
            return;
        }
        self.records.refill(self.factor, now);
        self.bytes.refill(self.factor, now);
        self.factor = (self.factor * DECREASE).max(MIN_FACTOR);
        self.records.tokens = self.records.tokens.min(self.records.capacity(self.factor));
        self.bytes.tokens = self.bytes.tokens.min(self.bytes.capacity(self.factor));
        self.last_decrease = Some(now);
    }

    /// `records` Kinesis records were stored on this shard: speed back up.
    pub fn on_success(&mut self, records: usize, now: Instant) {
        if self.factor < 1.0 {
            self.records.refill(self.factor, now);
            self.bytes.refill(self.factor, now);
            self.factor = (self.factor + INCREASE_PER_RECORD * records as f64).min(1.0);
        }
    }

    /// Current rates: (records/s, bytes/s).
    pub fn rates(&self) -> (f64, f64) {
        (
            self.records.rate * self.factor,
            self.bytes.rate * self.factor,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// Sends `size`-byte records as fast as the limiter allows for `secs` simulated seconds.
    fn drive(limiter: &mut ShardLimiter, size: usize, start: Instant, secs: u64) -> (u64, u64) {
        let end = start + Duration::from_secs(secs);
        let mut now = start;
        let (mut records, mut bytes) = (0u64, 0u64);
        while now < end {
            if limiter.try_take(size, now) {
                records += 1;
                bytes += size as u64;
            } else {
                let at = limiter.ready_at(size, now);
                assert!(at > now, "ready_at must move forward when try_take fails");
                now = at;
            }
        }
        (records, bytes)
    }

    #[test]
    fn bytes_per_second_hold_at_100_percent() {
        let start = Instant::now();
        let config = LimiterConfig {
            rate_limit_percent: 100,
            ..Default::default()
        };
        let mut l = ShardLimiter::new(&config, start);
        // 4 KiB records: the byte limit binds (256 records/s), not the record limit.
        let (_, bytes) = drive(&mut l, 4096, start, 10);
        // One second of burst, then 1 MiB/s.
        let rate = (bytes as f64 - MIB) / 10.0;
        assert!((rate - MIB).abs() / MIB < 0.02, "{rate}");
    }

    #[test]
    fn records_per_second_bind_for_tiny_records() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        let (records, bytes) = drive(&mut l, 10, start, 10);
        // 150 %: 1 500 records/s plus a burst of 1 500.
        assert!((16_400..=16_600).contains(&records), "{records}");
        assert!((bytes as f64) < 1.5 * MIB * 11.0);
    }

    #[test]
    fn throttling_slows_the_shard_and_success_restores_it() {
        let now = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), now);
        let (r0, b0) = l.rates();
        l.on_throttled(now);
        l.on_throttled(now + Duration::from_millis(10)); // same burst: counted once
        let (r1, b1) = l.rates();
        assert!((r1 / r0 - 0.7).abs() < 1e-9 && (b1 / b0 - 0.7).abs() < 1e-9);
        for i in 0..100 {
            l.on_throttled(now + Duration::from_secs(1 + i));
        }
        assert!((l.rates().0 / r0 - 0.1).abs() < 1e-9, "floored at 10 %");
        l.on_success(100, now + Duration::from_secs(200));
        assert_eq!(l.rates(), (r0, b0));
    }

    #[test]
    fn ready_at_is_exact() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        while l.try_take(100_000, start) {}
        let at = l.ready_at(100_000, start);
        assert!(at > start);
        let mut early = l.clone();
        assert!(!early.try_take(100_000, at - Duration::from_micros(50)));
        assert!(l.try_take(100_000, at));
    }

    #[test]
    fn a_record_larger_than_the_bucket_still_goes() {
        let start = Instant::now();
        let config = LimiterConfig {
            rate_limit_percent: 10,
            ..Default::default()
        };
        let mut l = ShardLimiter::new(&config, start);
        // 1 MiB against a bucket of ~105 KB: waits for a full bucket, then goes.
        assert!(l.try_take(1024 * 1024, start));
        let at = l.ready_at(1024 * 1024, start);
        assert!(at > start && at <= start + Duration::from_secs(2));
        assert!(l.try_take(1024 * 1024, at));
    }
}
