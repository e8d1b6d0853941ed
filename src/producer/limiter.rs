//! Stage 4, the limiter: per shard, a pacer for records/s and bytes/s at a share of the
//! shard's write limits, so the producer sends what the shard can take instead of learning it
//! from throttling.
//!
//! Kinesis counts a shard's writes per second. Two rules admit a Kinesis record:
//! - **a sliding window of one second and a 15 ms guard**: the records and bytes admitted in
//!   the last 1.015 s stay within one second's rate. Every one-second interval, however the
//!   service aligns its windows, then holds at most one second's worth even if the delays on
//!   the way vary by up to the guard: no self-inflicted throttling (a token bucket alone lets a
//!   second hold its rate *plus* the bucket, which with 50 KB aggregates overflowed a 1 MiB
//!   window by 5 % and forced the rate down). Without the guard, a backlogged shard sends the
//!   write that reopens a second's budget at the very instant the oldest leaves it, and any
//!   jitter puts both in one of the service's seconds: at 64 shards 1.7 % of the entries were
//!   throttled, with the guard 0.5 % (all at the start), for 1.5 % of the rate;
//! - **a token bucket** holding 100 ms at the rate, which spreads the second's writes so that
//!   the varying delays on the way to the service cannot pile two bursts into one of its
//!   windows.
//!
//! A Kinesis record larger than either goes alone once the window and bucket are empty.
//!
//! The rate starts at 97 % of the shard's published limit (or `rate_limit` if lower) and, while
//! nothing is throttled, creeps up (1 % of the limit per second) to the published limit, never
//! above it: Kinesis enforces it, so planning above it only buys throttling (a `rate_limit`
//! above 100 %, such as the KPL's default 150 %, is accepted and means "up to the limit").
//! When the service throttles the shard anyway, the rate is cut, at most once a second.
//! Throttling again within 2.5 s, with a tenth or more of the last second's writes throttled,
//! means another writer shares the shard: the rate drops to 85 % of what it was, never below
//! 10 %, at any level. Otherwise the throttle is taken for timing (delays on the way moved
//! writes into one of the service's seconds) or a probe that overshot: back to 97 % if the rate
//! was above, no change at or under it. It grows back quickly (10 % of the limit per second) up
//! to 90 % of the rate that was throttled, then slowly: AIMD, as TCP does, so several producers
//! on one shard share it (tests/shared_shard.rs). The cut applies above 97 % too: the rate
//! creeps above it within the second between two cuts, and when a repeated throttle there only
//! returned it to 97 %, two producers on one shard had half of their writes throttled.

use crate::producer::clock::later;
use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};

/// Default per-shard rate in percent of the shard limits (the KPL's `RateLimit`).
pub const DEFAULT_RATE_LIMIT_PERCENT: u32 = 150;
/// Default burst: how much of a second's rate a bucket holds.
pub const DEFAULT_BURST_MS: u64 = 100;
/// Rate multiplier applied on throttling at or below the safe share.
const DECREASE: f64 = 0.85;
/// Where a shard starts, and where a throttle above it returns: a share of the real limit
/// that leaves room for timing differences between the producer's windows and the service's.
const SAFE_SHARE: f64 = 0.97;
/// Highest rate, as a share of the shard's limit: the published limit itself, which Kinesis
/// enforces whatever `rate_limit` says.
const MAX_SHARE: f64 = 1.0;
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
/// A throttle this soon after the previous one, with at least `HEAVY_SHARE` of the last
/// second's writes throttled, means another writer shares the shard; an isolated or a light one
/// is timing (delays moved writes between the service's seconds) and at or under the safe
/// share changes nothing.
const PERSISTENT_WITHIN: Duration = Duration::from_millis(2_500);
/// See `PERSISTENT_WITHIN`: a tenth of the shard's writes of the last second. Timing throttles
/// one write now and then (one aggregate of a second's 20); a writer that shares the shard
/// throttles about its part of it.
const HEAVY_SHARE: f64 = 0.1;
/// The service's accounting period...
const SERVICE_WINDOW: Duration = Duration::from_secs(1);
/// ...and the window the limiter keeps within the rate: longer by a guard, so the write that
/// opens a second's budget again reaches the service that much after the one leaving it,
/// whatever the delays on the way vary by up to the guard.
const WINDOW: Duration = SERVICE_WINDOW.saturating_add(GUARD);
const GUARD: Duration = Duration::from_millis(15);

/// Limiter settings, shared by every shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Rate in percent of 1000 records/s and 1 MiB/s; above 100 means up to the limit.
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

/// Records and bytes admitted in the last second, oldest first.
#[derive(Debug, Clone, Default)]
struct SlidingWindow {
    log: VecDeque<(Instant, f64)>,
    bytes: f64,
}

impl SlidingWindow {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, bytes)) = self.log.front() {
            if at + WINDOW > now {
                break;
            }
            self.log.pop_front();
            self.bytes -= bytes;
        }
        if self.log.is_empty() {
            self.bytes = 0.0;
        }
    }

    /// Whether one more record of `bytes` fits with `removed` of the oldest entries gone.
    fn fits(&self, removed: (usize, f64), bytes: f64, caps: (f64, f64)) -> bool {
        let count = self.log.len() - removed.0;
        let used = self.bytes - removed.1;
        count == 0 || (count as f64 + 1.0 <= caps.0 && used + bytes <= caps.1)
    }

    /// When a record of `bytes` fits (`now` if it does now).
    fn ready_at(&self, bytes: f64, caps: (f64, f64), now: Instant) -> Instant {
        if self.fits((0, 0.0), bytes, caps) {
            return now;
        }
        let mut removed = (0, 0.0);
        for &(at, b) in &self.log {
            removed = (removed.0 + 1, removed.1 + b);
            if self.fits(removed, bytes, caps) {
                return (at + WINDOW).max(now);
            }
        }
        now
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    /// The shard's limit, per second.
    limit: f64,
    /// Burst as a share of a second.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: f64, share: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            limit,
            burst,
            tokens: limit * share * burst,
            last: now,
        }
    }

    fn rate(&self, share: f64) -> f64 {
        self.limit * share
    }

    fn capacity(&self, share: f64) -> f64 {
        (self.rate(share) * self.burst).max(1.0)
    }

    fn available(&self, share: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate(share)).min(self.capacity(share))
    }

    fn refill(&mut self, share: f64, now: Instant) {
        self.tokens = self.available(share, now);
        self.last = self.last.max(now);
    }

    /// A need larger than the bucket waits for a full bucket.
    fn need(&self, amount: f64, share: f64) -> f64 {
        amount.min(self.capacity(share))
    }

    fn wait(&self, amount: f64, share: f64, now: Instant) -> Duration {
        let missing = self.need(amount, share) - self.available(share, now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            // Round up so that `try_take` at the returned instant succeeds.
            Duration::from_secs_f64(missing / self.rate(share)) + Duration::from_micros(1)
        }
    }
}

/// The limiter of one shard.
#[derive(Debug, Clone)]
pub struct ShardLimiter {
    records: Bucket,
    bytes: Bucket,
    window: SlidingWindow,
    /// Highest share of the shard's limit: `rate_limit`, at most 1.
    ceiling: f64,
    /// Share of the shard's limit in force.
    share: f64,
    /// The share at the last throttle.
    throttled_at: f64,
    last_decrease: Option<Instant>,
    last_increase: Instant,
    /// When this shard's entries were throttled in the last service second, oldest first.
    throttles: VecDeque<Instant>,
}

impl ShardLimiter {
    /// A limiter with full buckets and an empty window.
    pub fn new(config: &LimiterConfig, now: Instant) -> Self {
        let ceiling = (f64::from(config.rate_limit_percent) / 100.0).min(MAX_SHARE);
        let share = SAFE_SHARE.min(ceiling);
        let burst = config.burst.as_secs_f64();
        ShardLimiter {
            records: Bucket::new(SHARD_WRITE_RECORDS_PER_SEC as f64, share, burst, now),
            bytes: Bucket::new(SHARD_WRITE_BYTES_PER_SEC as f64, share, burst, now),
            window: SlidingWindow::default(),
            ceiling,
            share,
            // Already near the limit: probe above it slowly, as after a throttle.
            throttled_at: share,
            last_decrease: None,
            last_increase: now,
            throttles: VecDeque::new(),
        }
    }

    /// Takes one record of `bytes` if the window and both buckets allow it now; else nothing.
    pub fn try_take(&mut self, bytes: usize, now: Instant) -> bool {
        let share = self.share;
        self.records.refill(share, now);
        self.bytes.refill(share, now);
        self.window.expire(now);
        let bytes = bytes as f64;
        let need_records = self.records.need(1.0, share);
        let need_bytes = self.bytes.need(bytes, share);
        if self.records.tokens >= need_records
            && self.bytes.tokens >= need_bytes
            && self.window.fits((0, 0.0), bytes, self.rates())
        {
            self.records.tokens -= need_records;
            self.bytes.tokens -= need_bytes;
            self.window.log.push_back((now, bytes));
            self.window.bytes += bytes;
            true
        } else {
            false
        }
    }

    /// The earliest instant at which `try_take(bytes)` succeeds (`now` if it would now).
    pub fn ready_at(&self, bytes: usize, now: Instant) -> Instant {
        let mut window = self.window.clone();
        window.expire(now);
        let wait = self.records.wait(1.0, self.share, now).max(self.bytes.wait(
            bytes as f64,
            self.share,
            now,
        ));
        later(now, wait).max(window.ready_at(bytes as f64, self.rates(), now))
    }

    /// The service throttled this shard: slow down.
    pub fn on_throttled(&mut self, now: Instant) {
        self.throttles.push_back(now);
        while self
            .throttles
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= SERVICE_WINDOW)
        {
            self.throttles.pop_front();
        }
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL)
        {
            return;
        }
        let persistent = self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < PERSISTENT_WITHIN);
        self.last_decrease = Some(now);
        // Of what went to the shard in the last second, the part throttled: a writer sharing
        // the shard throttles much of it, timing one write here and there.
        self.window.expire(now);
        let sent = self.window.log.len().max(self.throttles.len()).max(1);
        let heavy = self.throttles.len() as f64 >= HEAVY_SHARE * sent as f64;
        let safe = SAFE_SHARE.min(self.ceiling);
        let shared = persistent && heavy;
        if self.share <= safe && !shared {
            return;
        }
        self.records.refill(self.share, now);
        self.bytes.refill(self.share, now);
        self.throttled_at = self.share;
        self.share = if shared {
            (self.share * DECREASE).max(MIN_SHARE)
        } else {
            safe
        };
        self.last_increase = now;
        self.records.tokens = self.records.tokens.min(self.records.capacity(self.share));
        self.bytes.tokens = self.bytes.tokens.min(self.bytes.capacity(self.share));
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
        if self.share < self.ceiling && elapsed > 0.0 {
            self.records.refill(self.share, now);
            self.bytes.refill(self.share, now);
            let per_sec = if self.share < FAST_UNTIL * self.throttled_at {
                FAST_INCREASE_PER_SEC
            } else {
                SLOW_INCREASE_PER_SEC
            };
            self.share = (self.share + per_sec * elapsed).min(self.ceiling);
        }
    }

    /// Current rates: (records/s, bytes/s).
    pub fn rates(&self) -> (f64, f64) {
        (self.records.rate(self.share), self.bytes.rate(self.share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_PARTITION_KEY_CHARS;
    use crate::producer::config::DEFAULT_AGGREGATION_MAX_SIZE_BYTES;

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
        let rate = bytes as f64 / 10.0;
        // 97 % of the limit per window, each window the guard longer than the service's.
        let expected = 0.97 * SERVICE_WINDOW.as_secs_f64() / WINDOW.as_secs_f64();
        assert!((rate / MIB - expected).abs() < 0.01, "{}", rate / MIB);
    }

    #[test]
    fn records_per_second_bind_for_tiny_records() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        let (records, bytes) = drive(&mut l, 10, start, 10);
        // 970 records a window (1 s and the guard): 9 whole windows in 10 s, and the tenth's
        // first 865 ms at the bucket's pace (970/s, plus the 100 ms it holds).
        let partial = 10.0 - 9.0 * WINDOW.as_secs_f64();
        let expected = 9 * 970 + ((partial + 0.1) * 970.0) as u64;
        assert!(
            records.abs_diff(expected) <= 5,
            "{records} (expected ~{expected})"
        );
        assert!((bytes as f64) < MIB);
    }

    /// Admission times of `size`-byte aggregates over 20 s, probing up with each success if
    /// `probe`.
    fn aggregates(size: usize, probe: bool) -> Vec<Instant> {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        let end = start + Duration::from_secs(20);
        let mut now = start;
        let mut admitted = Vec::new();
        while now < end {
            if l.try_take(size, now) {
                admitted.push(now);
                if probe {
                    l.on_success(1, now);
                }
            } else {
                now = l.ready_at(size, now);
            }
        }
        admitted
    }

    /// Most admissions within any `span`.
    fn most_within(admitted: &[Instant], span: Duration) -> usize {
        (0..admitted.len())
            .map(|i| {
                admitted[i..]
                    .iter()
                    .take_while(|u| **u < admitted[i] + span)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_second_holds_more_than_the_rate_even_with_large_aggregates() {
        // A token bucket alone let a second hold its rate plus the bucket: 5 % over 1 MiB.
        let steady = aggregates(51_200, false);
        assert!(
            (most_within(&steady, WINDOW) * 51_200) as f64 <= 0.97 * MIB,
            "{}",
            most_within(&steady, WINDOW)
        );
        // 19 whole aggregates fit 97 % of a MiB: the rest is lost to their size...
        let windows = 20.0 / WINDOW.as_secs_f64();
        assert!(
            steady.len() as f64 >= 19.0 * windows - 1.0,
            "{}",
            steady.len()
        );
        // ...and the one that opens a window's budget again goes a guard after the one that
        // leaves it, not at the same instant (a second's worth in a service second).
        for pair in steady.windows(20) {
            assert!(pair[19] >= pair[0] + WINDOW, "{:?}", pair[19] - pair[0]);
        }
        // ...and won back by probing up to the limit, where 20 fit.
        let probing = aggregates(51_200, true);
        assert!((most_within(&probing, WINDOW) * 51_200) as f64 <= MIB);
        let rate = (probing.len() * 51_200) as f64 / 20.0 / MIB;
        assert!(rate > 0.94, "{rate}");
        assert!(most_within(&probing, SERVICE_WINDOW + GUARD / 2) <= 20);
    }

    #[test]
    fn default_size_aggregates_fill_a_shard_second_but_the_guard() {
        // The default aggregate with the longest partition key: 20 of them a second.
        let size = DEFAULT_AGGREGATION_MAX_SIZE_BYTES + MAX_PARTITION_KEY_CHARS;
        let probing = aggregates(size, true);
        assert!((most_within(&probing, WINDOW) * size) as f64 <= MIB);
        let rate = (probing.len() * size) as f64 / 20.0 / MIB;
        // 1 / 1.015 s = 98.5 %, less the slower first seconds (51 200 gave ~96 % at best).
        assert!(rate > 0.97, "{rate}");
    }

    #[test]
    fn successes_probe_up_to_the_limit_and_throttles_cut_under_it() {
        let now = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), now);
        assert!((l.rates().0 - 970.0).abs() < 1e-6, "starts under the limit");
        // An idle minute earns nothing; steady successes creep up to the limit, not above.
        l.on_success(1, now + Duration::from_secs(60));
        assert!((l.rates().0 - 980.0).abs() < 1e-6, "{:?}", l.rates());
        for s in 61..=70 {
            l.on_success(1, now + Duration::from_secs(s));
        }
        assert_eq!(
            l.rates(),
            (1000.0, MIB),
            "the published limit, though rate_limit is 150 %"
        );
        let t = now + Duration::from_secs(71);
        l.on_throttled(t);
        l.on_throttled(t + Duration::from_millis(500)); // same window: counted once
        // Throttled above the safe share: back to it.
        assert!((l.rates().0 - 970.0).abs() < 1e-6, "{:?}", l.rates());
        // Throttled at it again within 2.5 s: another writer; x0.85 per throttled window.
        l.on_throttled(t + Duration::from_secs(1));
        assert!((l.rates().0 - 970.0 * 0.85).abs() < 1e-6);
        // A lone throttle at or under the safe share is timing: nothing changes.
        let later = t + Duration::from_secs(10);
        l.on_throttled(later);
        assert!((l.rates().0 - 970.0 * 0.85).abs() < 1e-6);
        for i in 0..100 {
            l.on_throttled(later + Duration::from_secs(1 + i));
        }
        assert!(
            (l.rates().0 - 100.0).abs() < 1e-6,
            "floored at 10 % of the shard"
        );
    }

    /// Probed up to the limit, then three seconds of 20 writes a second, the first `throttled`
    /// of each second throttled and the rest stored: the share after.
    fn share_after(throttled: u64) -> f64 {
        let start = Instant::now();
        let mut l = ShardLimiter::new(&LimiterConfig::default(), start);
        for s in 1..=3 {
            l.on_success(1, start + Duration::from_secs(s));
        }
        assert_eq!(l.share, 1.0);
        let base = start + Duration::from_secs(3);
        for second in 0..3 {
            for i in 0..20 {
                let t = base + Duration::from_millis(1_000 * second + 50 * i);
                assert!(l.try_take(1_000, t));
                if i < throttled {
                    l.on_throttled(t);
                } else {
                    l.on_success(1, t);
                }
            }
        }
        l.share
    }

    #[test]
    fn repeated_heavy_throttles_cut_even_above_the_safe_share_light_ones_do_not() {
        // Half of every second throttled: another writer. The share ends far under 97 % (it
        // stayed at 97-98 % when a throttle above 97 % only ever returned it there).
        let shared = share_after(10);
        assert!(shared < 0.9, "{shared}");
        // One write of 20 a second: timing. Back to 97 %, no further.
        let timing = share_after(1);
        assert!((0.96..=0.99).contains(&timing), "{timing}");
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
        l.on_throttled(now - Duration::from_secs(1));
        assert!((share(&l) - 0.97).abs() < 1e-9, "a lone throttle at 97 %");
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
