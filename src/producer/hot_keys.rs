//! Which partition keys carry a shard's bytes: a heavy-hitters sketch per open shard, so that a
//! shard throttled while the others have room can be reported with the keys that make it hot.
//!
//! Each shard keeps a Space-Saving sketch of [`HOT_KEY_COUNTERS`] counters weighted by bytes: a
//! key carrying more than 1/16 of its shard's bytes is always among them, and a counter's bytes
//! overestimate its key's by at most its `overcount`. Keys are told apart by their hash key (the
//! MD5 the route already computed, or the explicit hash key), so a record costs a scan of 16
//! integers and, when a new key takes the smallest counter, a copy of at most
//! [`KEPT_KEY_BYTES`] bytes into that counter's buffer (no allocation once the buffer is grown).
//! Memory: 16 counters of at most 64 key bytes per open shard.
//!
//! Counts age: once the bytes seen since the last halving exceed [`DECAY_BYTES_PER_SHARD`] per
//! shard (about a minute of full shards), every count is halved, so a key that stopped being hot
//! fades out. Keys are never metric labels; only counts go to the `metrics` facade.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::hash::HashKey;
use crate::log_limit::warn_limited;
use crate::producer::metrics::Metrics;
use crate::producer::shard_map::ShardMap;

/// Counters per shard.
pub const HOT_KEY_COUNTERS: usize = 16;
/// Bytes of a partition key kept in a counter (and so in a [`HotKey`]).
pub const KEPT_KEY_BYTES: usize = 64;
/// Characters of a key shown in the warning.
const LOGGED_KEY_CHARS: usize = 32;
/// Keys named in the warning.
const LOGGED_KEYS: usize = 3;
/// A shard is hot when its recent bytes exceed this many times the mean of the other shards'.
const SKEW: u64 = 2;
/// Counts are halved once this many bytes per shard were seen since the last halving.
pub const DECAY_BYTES_PER_SHARD: u64 = 64 << 20;
/// Shortest time between two reports of one shard.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A partition key carrying a large share of a shard's recent bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HotKey {
    /// The key, cut to its first [`KEPT_KEY_BYTES`] bytes (at a character boundary).
    pub partition_key: String,
    /// Its recent bytes (partition key + data), as counted: at most `overcount` too many.
    pub bytes: u64,
    /// How many of `bytes` may belong to keys this counter held before (Space-Saving's error).
    pub overcount: u64,
}

/// A shard that was throttled while carrying more than twice the mean bytes of the others, and
/// the keys that carry most of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HotShard {
    /// The shard.
    pub shard_id: String,
    /// Its recent bytes (partition key + data) as the sketch counted them.
    pub bytes: u64,
    /// The mean recent bytes of the other open shards.
    pub mean_other_bytes: u64,
    /// Its heaviest keys, heaviest first (at most [`HOT_KEY_COUNTERS`]).
    pub keys: Vec<HotKey>,
}

#[derive(Default)]
struct Counter {
    hash: HashKey,
    key: String,
    bytes: u64,
    overcount: u64,
}

/// One shard's Space-Saving sketch.
#[derive(Default)]
pub(crate) struct Sketch {
    counters: Vec<Counter>,
    total: u64,
}

impl Sketch {
    /// Counts `bytes` under the key `hash` (`key` its text).
    pub fn observe(&mut self, hash: HashKey, key: &str, bytes: u64) {
        self.total += bytes;
        if let Some(c) = self.counters.iter_mut().find(|c| c.hash == hash) {
            c.bytes += bytes;
            return;
        }
        if self.counters.len() < HOT_KEY_COUNTERS {
            let mut c = Counter {
                hash,
                bytes,
                ..Counter::default()
            };
            c.key.push_str(truncate(key, KEPT_KEY_BYTES));
            self.counters.push(c);
            return;
        }
        let c = self
            .counters
            .iter_mut()
            .min_by_key(|c| c.bytes)
            .expect("a full sketch has counters");
        c.hash = hash;
        c.key.clear();
        c.key.push_str(truncate(key, KEPT_KEY_BYTES));
        c.overcount = c.bytes;
        c.bytes += bytes;
    }

    /// Halves every count.
    fn decay(&mut self) {
        self.total /= 2;
        for c in &mut self.counters {
            c.bytes /= 2;
            c.overcount /= 2;
        }
    }

    /// Bytes counted (since the last halvings).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The keys, heaviest first.
    pub fn top(&self) -> Vec<HotKey> {
        let mut keys: Vec<HotKey> = self
            .counters
            .iter()
            .filter(|c| c.bytes > 0)
            .map(|c| HotKey {
                partition_key: c.key.clone(),
                bytes: c.bytes,
                overcount: c.overcount,
            })
            .collect();
        keys.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| a.partition_key.cmp(&b.partition_key))
        });
        keys
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The sketches of every open shard of the current map, indexed like the map.
#[derive(Default)]
pub(crate) struct HotKeys {
    version: Option<u64>,
    sketches: Vec<Sketch>,
    last_report: Vec<Option<Instant>>,
    since_decay: u64,
}

impl HotKeys {
    /// Counts a record of `bytes` under its key on the shard at `index` of `map`.
    pub fn observe(&mut self, map: &ShardMap, index: usize, hash: HashKey, key: &str, bytes: u64) {
        if self.version != Some(map.version()) {
            self.reset(map);
        }
        let Some(sketch) = self.sketches.get_mut(index) else {
            return;
        };
        sketch.observe(hash, key, bytes);
        self.since_decay += bytes;
        if self.since_decay > DECAY_BYTES_PER_SHARD.saturating_mul(self.sketches.len() as u64) {
            self.since_decay /= 2;
            self.sketches.iter_mut().for_each(Sketch::decay);
        }
    }

    fn reset(&mut self, map: &ShardMap) {
        self.version = Some(map.version());
        self.sketches.clear();
        self.sketches.resize_with(map.len(), Sketch::default);
        self.last_report = vec![None; map.len()];
        self.since_decay = 0;
    }

    /// The report on `shard_id` if it carries more than twice the mean bytes of the other
    /// shards (a throttle the others' room could have absorbed), at most once per second.
    pub fn on_throttled(
        &mut self,
        map: &ShardMap,
        shard_id: &str,
        now: Instant,
    ) -> Option<HotShard> {
        if self.version != Some(map.version()) || self.sketches.len() < 2 {
            return None;
        }
        let index = map.shards().iter().position(|s| &*s.id == shard_id)?;
        if let Some(last) = self.last_report[index]
            && now.saturating_duration_since(last) < REPORT_EVERY
        {
            return None;
        }
        let all: u64 = self.sketches.iter().map(Sketch::total).sum();
        let bytes = self.sketches[index].total();
        let mean_other = (all - bytes) / (self.sketches.len() as u64 - 1);
        if bytes <= SKEW.saturating_mul(mean_other) {
            return None;
        }
        self.last_report[index] = Some(now);
        Some(HotShard {
            shard_id: shard_id.to_owned(),
            bytes,
            mean_other_bytes: mean_other,
            keys: self.sketches[index].top(),
        })
    }
}

/// Reports a hot shard: the warning (rate-limited per shard, keys cut short), the counts to
/// `metrics` and the report to [`Metrics::hot_shard`].
pub(crate) fn report(metrics: &Metrics, stream: &dyn std::fmt::Display, hot: HotShard) {
    let shard: Arc<str> = Arc::from(hot.shard_id.as_str());
    warn_limited!("a throttled shard carries more than twice the others' bytes", shard;
        stream = %stream,
        shard = %hot.shard_id,
        shard_bytes = hot.bytes,
        mean_other_bytes = hot.mean_other_bytes,
        "{}",
        warning(&hot),
    );
    metrics.hot_shard(hot);
}

/// The warning's text: the shard, how far above the others it is, its heaviest keys (cut
/// short) with their shares of its bytes, and what to do.
fn warning(hot: &HotShard) -> String {
    let skew = hot.bytes as f64 / hot.mean_other_bytes.max(1) as f64;
    format!(
        "shard {} is throttled while the others have room: it carries {skew:.1}x the mean of \
         the other shards' recent bytes; its heaviest partition keys are {}. Spread the records \
         of a hot key over more keys (e.g. a suffix), or route them by explicit hash key; if \
         their order matters, only a less skewed key helps",
        hot.shard_id,
        logged_keys(hot),
    )
}

/// `"key" (share%)` for the heaviest keys, cut to [`LOGGED_KEY_CHARS`] characters.
fn logged_keys(hot: &HotShard) -> String {
    let parts: Vec<String> = hot
        .keys
        .iter()
        .take(LOGGED_KEYS)
        .map(|k| {
            let mut key: String = k.partition_key.chars().take(LOGGED_KEY_CHARS).collect();
            if key.len() < k.partition_key.len() {
                key.push('…');
            }
            let share = if hot.bytes == 0 {
                0.0
            } else {
                100.0 * k.bytes as f64 / hot.bytes as f64
            };
            format!("{key:?} ({share:.0}% of its bytes)")
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::shard_map::even_shards;

    fn h(n: u64) -> HashKey {
        HashKey(u128::from(n))
    }

    #[test]
    fn a_heavy_key_stays_on_top_among_many_light_ones() {
        let mut s = Sketch::default();
        for i in 0..10_000u64 {
            // One key in four is "hot"; the rest are 3000 distinct keys.
            if i % 4 == 0 {
                s.observe(h(u64::MAX), "hot", 100);
            } else {
                s.observe(h(i % 3000), &format!("cold-{}", i % 3000), 100);
            }
        }
        let top = s.top();
        assert!(top.len() <= HOT_KEY_COUNTERS);
        assert_eq!(top[0].partition_key, "hot");
        // Space-Saving never undercounts, and overcounts by at most `overcount`.
        let truth = 2500 * 100;
        assert!(top[0].bytes >= truth && top[0].bytes - top[0].overcount <= truth);
        assert_eq!(s.total(), 10_000 * 100);
    }

    #[test]
    fn exact_while_keys_fit_the_counters() {
        let mut s = Sketch::default();
        for i in 0..HOT_KEY_COUNTERS as u64 {
            s.observe(h(i), &format!("k{i}"), (i + 1) * 10);
        }
        let top = s.top();
        assert_eq!(top.len(), HOT_KEY_COUNTERS);
        assert_eq!(top[0].partition_key, "k15");
        assert_eq!(top[0].bytes, 160);
        assert!(top.iter().all(|k| k.overcount == 0));
    }

    #[test]
    fn keys_are_cut_at_a_character_boundary() {
        let mut s = Sketch::default();
        let long = "é".repeat(100);
        s.observe(h(1), &long, 5);
        let key = &s.top()[0].partition_key;
        assert!(key.len() <= KEPT_KEY_BYTES && key.len() >= KEPT_KEY_BYTES - 1);
        assert!(long.starts_with(key.as_str()));
    }

    #[test]
    fn only_a_shard_well_above_the_others_is_reported() {
        let map = ShardMap::new(&even_shards(4), 1).unwrap();
        let mut hot = HotKeys::default();
        let now = Instant::now();
        // Even load: nothing to report.
        for i in 0..4 {
            hot.observe(&map, i, h(i as u64), "even", 1000);
        }
        let id = map.shard(2).id.clone();
        assert_eq!(hot.on_throttled(&map, &id, now), None);
        // Shard 2 gets three times the others' bytes, mostly under one key.
        hot.observe(&map, 2, h(77), "user-77", 2000);
        let report = hot.on_throttled(&map, &id, now).expect("shard 2 is hot");
        assert_eq!(report.shard_id, *id);
        assert_eq!(report.bytes, 3000);
        assert_eq!(report.mean_other_bytes, 1000);
        assert_eq!(report.keys[0].partition_key, "user-77");
        // At most one report per second per shard.
        assert_eq!(hot.on_throttled(&map, &id, now), None);
        assert!(hot.on_throttled(&map, &id, now + REPORT_EVERY).is_some());
        // A new map starts over.
        let map2 = ShardMap::new(&even_shards(4), 2).unwrap();
        assert_eq!(hot.on_throttled(&map2, &id, now + REPORT_EVERY * 2), None);
    }

    #[test]
    fn the_warning_names_the_shard_the_cut_keys_their_shares_and_what_to_do() {
        let long = format!("tenant-{}", "x".repeat(100));
        let hot = HotShard {
            shard_id: "shardId-000000000007".into(),
            bytes: 8_000,
            mean_other_bytes: 2_500,
            keys: vec![
                HotKey {
                    partition_key: long.clone(),
                    bytes: 6_000,
                    overcount: 0,
                },
                HotKey {
                    partition_key: "user-42".into(),
                    bytes: 1_000,
                    overcount: 0,
                },
                HotKey {
                    partition_key: "user-43".into(),
                    bytes: 600,
                    overcount: 0,
                },
                HotKey {
                    partition_key: "user-44".into(),
                    bytes: 400,
                    overcount: 0,
                },
            ],
        };
        let text = warning(&hot);
        let cut: String = long.chars().take(LOGGED_KEY_CHARS).collect();
        assert_eq!(
            text,
            format!(
                "shard shardId-000000000007 is throttled while the others have room: it carries \
                 3.2x the mean of the other shards' recent bytes; its heaviest partition keys \
                 are \"{cut}…\" (75% of its bytes), \"user-42\" (12% of its bytes), \"user-43\" \
                 (8% of its bytes). Spread the records of a hot key over more keys (e.g. a \
                 suffix), or route them by explicit hash key; if their order matters, only a \
                 less skewed key helps"
            )
        );
        assert!(!text.contains(&long) && !text.contains("user-44"), "{text}");
    }

    #[test]
    fn counts_age() {
        let map = ShardMap::new(&even_shards(2), 1).unwrap();
        let mut hot = HotKeys::default();
        hot.observe(&map, 0, h(1), "old", DECAY_BYTES_PER_SHARD);
        hot.observe(&map, 1, h(2), "new", DECAY_BYTES_PER_SHARD + 2);
        // 2 × DECAY bytes seen in all: halved once.
        assert_eq!(hot.sketches[0].total(), DECAY_BYTES_PER_SHARD / 2);
        assert_eq!(hot.sketches[0].top()[0].bytes, DECAY_BYTES_PER_SHARD / 2);
    }
}
