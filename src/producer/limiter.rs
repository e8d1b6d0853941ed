//! Stage 4, the limiter: one pair of token buckets per shard (records/s and bytes/s) at
//! `rate_limit` % of the shard's write limits, so the producer sends what the shard can take
//! instead of learning it from throttling.
//!
//! Buckets start full and hold 100 ms of the configured rate (the burst): Kinesis counts a
//! shard's writes in one-second windows, so a large burst on top of a full rate overflows a
//! window. A Kinesis record larger than a bucket waits for a full bucket and goes alone.
//!
//! A shard starts at 97 % of its real limit even when the configured rate is higher: an exact
//! limiter gains nothing from starting above what the shard takes. The configured rate (the
//! KPL's 150 % by default) is the ceiling it probes towards while nothing is throttled — room
//! for a service that takes more than its published limit.
//!
//! When the service still throttles a shard (a neighbour writes to it too, or the rate limit is
//! above 100 %, as the KPL's default 150 % is), the shard's rate is cut — at most once a second,
//! so one overloaded window counts once — to 85 % of what it was, and never above 97 % of the
//! shard's real limit (one cut from 150 % lands just under the limit instead of three) nor below
//! 10 %. It grows back with time: quickly (10 % of the shard limit per second) up to 90 % of the
//! rate that was throttled, then slowly (1 % per second) while it probes for more. AIMD, as TCP
//! does: a single producer settles at 90-100 % of the shard, with a throttled window every ten
//! seconds or so; several producers on one shard share it.

use std::time::Duration;

use tokio::time::Instant;

use crate::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};

/// Default per-shard rate in percent of the shard limits (the KPL's `RateLimit`).
pub const DEFAULT_RATE_LIMIT_PERCENT: u32 = 150;
/// Default burst: how much of a second's rate a bucket holds.
pub const DEFAULT_BURST_MS: u64 = 100;
/// Rate multiplier applied on throttling.
const DECREASE: f64 = 0.85;
/// After a throttle, the rate is at most this share of the shard's real limit.
const AFTER_THROTTLE_MAX_SHARE: f64 = 0.97;
/// Lowest rate, as a share of the shard's limit.
const MIN_SHARE: f64 = 0.1;
/// Share of the shard's limit regained per second, far below the last throttled rate...
const FAST_INCREASE_PER_SEC: f64 = 0.10;
/// ...and near it.
const SLOW_INCREASE_PER_SEC: f64 = 0.01;
/// Below this share of the last throttled rate, the increase is fast.
const FAST_UNTIL: f64 = 0.9;
/// Throttles closer together than this count once (the service's window).
const DECREASE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Configured rate as a share of the shard's limit (1.5 for 150 %).
    share: f64,
    /// Multiplier of the configured rate in force.
    factor: f64,
    /// The factor at the last throttle.
    throttled_at: f64,
    last_decrease: Option<Instant>,
    last_increase: Instant,
}

impl ShardLimiter {
    /// A limiter with full buckets.
    pub fn new(config: &LimiterConfig, now: Instant) -> Self {
        let share = f64::from(config.rate_limit_percent) / 100.0;
        let burst = config.burst.as_secs_f64();
        ShardLimiter {
            records: Bucket::new(SHARD_WRITE_RECORDS_PER_SEC as f64 * share, burst, now),
            bytes: Bucket::new(SHARD_WRITE_BYTES_PER_SEC as f64 * share, burst, now),
            share,
            factor: (AFTER_THROTTLE_MAX_SHARE / share).min(1.0),
            // Already at the limit: probe above it slowly, as after a throttle.
            throttled_at: (AFTER_THROTTLE_MAX_SHARE / share).min(1.0),
            last_decrease: None,
            last_increase: now,
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
        self.throttled_at = self.factor;
        let cut = (self.factor * DECREASE).min(AFTER_THROTTLE_MAX_SHARE / self.share);
        self.factor = cut.max(MIN_SHARE / self.share).min(1.0);
        self.last_increase = now;
        self.records.tokens = self.records.tokens.min(self.records.capacity(self.factor));
        self.bytes.tokens = self.bytes.tokens.min(self.bytes.capacity(self.factor));
        self.last_decrease = Some(now);
    }

    /// Kinesis records were stored on this shard: speed back up with the time since the last
    /// change.
    pub fn on_success(&mut self, _records: usize, now: Instant) {
        // Growth needs a steady flow of successes: an idle shard does not earn a burst.
        let elapsed = now
            .saturating_duration_since(self.last_increase)
            .as_secs_f64()
            .min(1.0);
        self.last_increase = self.last_increase.max(now);
        if self.factor < 1.0 && elapsed > 0.0 {
            self.records.refill(self.factor, now);
            self.bytes.refill(self.factor, now);
            let per_sec = if self.factor < FAST_UNTIL * self.throttled_at {
                FAST_INCREASE_PER_SEC
            } else {
                SLOW_INCREASE_PER_SEC
            };
            self.factor = (self.factor + per_sec / self.share * elapsed).min(1.0);
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
    fn bytes_per_second_hold_just_under_the_limit() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        // 4 KiB records: the byte limit binds (250 records/s), not the record limit.
        let (_, bytes) = drive(&mut l, 4096, start, 10);
        // 100 ms of burst, then 97 % of 1 MiB/s until successes let it probe higher.
        let rate = (bytes as f64 - 0.097 * MIB) / 10.0;
        assert!((rate / MIB - 0.97).abs() < 0.01, "{rate}");
    }

    #[test]
    fn records_per_second_bind_for_tiny_records() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        let (records, bytes) = drive(&mut l, 10, start, 10);
        // 970 records/s plus a burst of 97.
        assert!((9_780..=9_800).contains(&records), "{records}");
        assert!((bytes as f64) < MIB);
    }

    #[test]
    fn successes_probe_up_to_the_ceiling_and_throttles_cut_under_the_limit() {
        let now = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), now);
        assert!((l.rates().0 - 970.0).abs() < 1e-6, "starts under the limit");
        // An idle minute earns nothing; a minute of steady successes reaches the ceiling.
        l.on_success(1, now + Duration::from_secs(60));
        assert!((l.rates().0 - 980.0).abs() < 1e-6, "{:?}", l.rates());
        for s in 61..=70 {
            l.on_success(1, now + Duration::from_secs(s));
        }
        // Above the limit it probes at 1 % of the shard per second.
        assert!((l.rates().0 - 1080.0).abs() < 1e-6, "{:?}", l.rates());
        for s in 71..=200 {
            l.on_success(1, now + Duration::from_secs(s));
        }
        assert_eq!(l.rates(), (1500.0, 1.5 * MIB), "probed up to 150 %");
        let t = now + Duration::from_secs(201);
        l.on_throttled(t);
        l.on_throttled(t + Duration::from_millis(500)); // same window: counted once
        // 150 % is cut to 97 % of the shard at once, then x0.85 per throttled window.
        assert!((l.rates().0 - 970.0).abs() < 1e-6, "{:?}", l.rates());
        l.on_throttled(t + Duration::from_secs(1));
        assert!((l.rates().0 - 970.0 * 0.85).abs() < 1e-6);
        for i in 0..100 {
            l.on_throttled(t + Duration::from_secs(2 + i));
        }
        assert!(
            (l.rates().0 - 100.0).abs() < 1e-6,
            "floored at 10 % of the shard"
        );
    }

    #[test]
    fn growth_is_fast_far_below_the_throttled_rate_and_slow_near_it() {
        let now = Instant::now();
        let config = LimiterConfig {
            rate_limit_percent: 100,
            ..Default::default()
        };
        let mut l = ShardLimiter::new(&config, now);
        let share = |l: &ShardLimiter| l.rates().0 / 1000.0;
        l.on_throttled(now);
        assert!((share(&l) - 0.97 * 0.85).abs() < 1e-9);
        // +10 %/s while under 90 % of the throttled 97 %...
        l.on_success(1, now + Duration::from_millis(200));
        assert!((share(&l) - (0.8245 + 0.02)).abs() < 1e-9, "{}", share(&l));
        l.on_success(1, now + Duration::from_millis(700));
        assert!((share(&l) - (0.8445 + 0.05)).abs() < 1e-9, "{}", share(&l));
        // ...then +1 %/s.
        l.on_success(1, now + Duration::from_millis(1_700));
        assert!((share(&l) - (0.8945 + 0.01)).abs() < 1e-9, "{}", share(&l));
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
