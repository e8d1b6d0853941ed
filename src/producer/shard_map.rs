//! Stage 2, the shard map: which open shard owns which hash keys, so each record's shard is
//! predicted before it is aggregated.
//!
//! Built from ListShards (every page), keeping open shards sorted by the start of their hash
//! range; a lookup is a binary search, so streams of thousands of shards cost a dozen
//! comparisons per record. The pipeline refreshes it when a put lands on a shard other than the
//! predicted one (a split or merge happened), with backoff while ListShards is throttled.

use std::collections::HashMap;
use std::sync::Arc;

use crate::client::{ApiError, KinesisApi, ShardInfo, StreamId};
use crate::hash::{HashKey, HashRange};

/// One open shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSlot {
    /// Shard id, shared with receipts.
    pub id: Arc<str>,
    /// Its hash keys.
    pub range: HashRange,
}

/// Open shards sorted by hash range.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    shards: Vec<ShardSlot>,
    /// Every listed shard's range, closed ones included.
    ranges: HashMap<Arc<str>, HashRange>,
    version: u64,
}

/// Why a ListShards result could not become a map.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ShardMapError {
    /// The ListShards call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No open shard was listed.
    #[error("ListShards returned no open shard")]
    NoOpenShards,
    /// Open shards overlap or leave part of the hash key ring uncovered: the listing was taken
    /// in the middle of a reshard. Try again.
    #[error("the open shards do not tile the hash key ring ({0}); the stream is being resharded")]
    Inconsistent(String),
}

impl ShardMap {
    /// A map of the open shards among `shards`. `version` tells maps apart (the pipeline uses it
    /// to notice aggregates built under an older map).
    pub fn new(shards: &[ShardInfo], version: u64) -> Result<ShardMap, ShardMapError> {
        let mut open: Vec<ShardSlot> = shards
            .iter()
            .filter(|s| s.open)
            .map(|s| ShardSlot {
                id: Arc::from(s.shard_id.as_str()),
                range: s.hash_range,
            })
            .collect();
        if open.is_empty() {
            return Err(ShardMapError::NoOpenShards);
        }
        open.sort_by_key(|s| s.range.start);
        let mut expect = HashKey::MIN.0;
        for (i, s) in open.iter().enumerate() {
            if s.range.start.0 != expect || s.range.end < s.range.start {
                return Err(ShardMapError::Inconsistent(format!(
                    "shard {} starts at {} where {} was expected",
                    s.id, s.range.start, expect
                )));
            }
            if s.range.end == HashKey::MAX {
                if i + 1 != open.len() {
                    return Err(ShardMapError::Inconsistent(format!(
                        "shards after {} which already ends the ring",
                        s.id
                    )));
                }
            } else {
                expect = s.range.end.0 + 1;
            }
        }
        if open.last().map(|s| s.range.end) != Some(HashKey::MAX) {
            return Err(ShardMapError::Inconsistent(
                "the last open shard does not end at 2^128-1".into(),
            ));
        }
        let ranges = shards
            .iter()
            .map(|s| (Arc::from(s.shard_id.as_str()), s.hash_range))
            .collect();
        Ok(ShardMap {
            shards: open,
            ranges,
            version,
        })
    }

    /// Lists every page of the stream's shards and builds the map.
    pub async fn load(
        api: &dyn KinesisApi,
        stream: &StreamId,
        version: u64,
    ) -> Result<ShardMap, ShardMapError> {
        let all = crate::client::list_all_shards(api, stream).await?;
        ShardMap::new(&all, version)
    }

    /// Index of the shard owning `key`.
    pub fn index_of(&self, key: HashKey) -> usize {
        // Ranges tile the ring, so the owner is the first shard whose range ends at or after key.
        self.shards.partition_point(|s| s.range.end < key)
    }

    /// The shard at `index`.
    pub fn shard(&self, index: usize) -> &ShardSlot {
        &self.shards[index]
    }

    /// The range of any listed shard, open or closed.
    pub fn range_of(&self, shard_id: &str) -> Option<HashRange> {
        self.ranges.get(shard_id).copied()
    }

    /// Open shards, sorted by hash range.
    pub fn shards(&self) -> &[ShardSlot] {
        &self.shards
    }

    /// Number of open shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether the map has no shard (only a default-constructed map).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The map's version.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// `n` shards splitting the ring evenly, as CreateStream does: shard `i` starts at
/// `i * floor(2^128 / n)` and the last one ends at `2^128 - 1`.
pub fn even_shards(n: usize) -> Vec<ShardInfo> {
    assert!(n > 0, "a stream has at least one shard");
    // floor(2^128 / n); for n = 1 the only shard takes the whole ring and `step` is unused.
    let step = if n == 1 {
        0
    } else {
        u128::MAX / n as u128 + u128::from(u128::MAX % n as u128 == n as u128 - 1)
    };
    (0..n)
        .map(|i| {
            let start = step * i as u128;
            let end = if i + 1 == n {
                u128::MAX
            } else {
                step * (i as u128 + 1) - 1
            };
            ShardInfo {
                shard_id: format!("shardId-{i:012}"),
                hash_range: HashRange {
                    start: HashKey(start),
                    end: HashKey(end),
                },
                parent_shard_id: None,
                adjacent_parent_shard_id: None,
                open: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_owner_at_every_boundary() {
        for n in [1, 2, 3, 7, 64, 4000] {
            let map = ShardMap::new(&even_shards(n), 1).unwrap();
            assert_eq!(map.len(), n);
            for (i, s) in map.shards().iter().enumerate() {
                assert_eq!(map.index_of(s.range.start), i);
                assert_eq!(map.index_of(s.range.end), i);
            }
            assert_eq!(map.index_of(HashKey::MAX), n - 1);
        }
    }

    #[test]
    fn even_split_matches_create_stream() {
        // 2^128 / 4 exactly.
        let s = even_shards(4);
        assert_eq!(s[1].hash_range.start.0, 1u128 << 126);
        assert_eq!(s[3].hash_range.end, HashKey::MAX);
    }

    #[test]
    fn closed_shards_are_ignored_and_gaps_rejected() {
        let mut shards = even_shards(2);
        // Split shard 1 into two children; the parent is closed.
        let parent = shards[1].clone();
        shards[1].open = false;
        let mid =
            parent.hash_range.start.0 + (parent.hash_range.end.0 - parent.hash_range.start.0) / 2;
        for (i, (a, b)) in [(parent.hash_range.start.0, mid), (mid + 1, u128::MAX)]
            .into_iter()
            .enumerate()
        {
            shards.push(ShardInfo {
                shard_id: format!("child-{i}"),
                hash_range: HashRange {
                    start: HashKey(a),
                    end: HashKey(b),
                },
                parent_shard_id: Some(parent.shard_id.clone()),
                adjacent_parent_shard_id: None,
                open: true,
            });
        }
        let map = ShardMap::new(&shards, 2).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(&*map.shard(map.index_of(HashKey::MAX)).id, "child-1");

        // Drop one child: the ring has a hole.
        shards.pop();
        assert!(matches!(
            ShardMap::new(&shards, 3),
            Err(ShardMapError::Inconsistent(_))
        ));
        for s in &mut shards {
            s.open = false;
        }
        assert!(matches!(
            ShardMap::new(&shards, 4),
            Err(ShardMapError::NoOpenShards)
        ));
    }
}
