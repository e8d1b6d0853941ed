//! Stage 2, with the shard map, routing: each record's hash key and shard, and what the
//! pipeline remembers of its partition key so that the next record of the key costs one
//! hash-table probe.
//!
//! A partition key's MD5 is the main per-record cost after the copy of its data; producers
//! usually send many records per key. The cache keeps, per key: the hash key, the index of its
//! shard in the current map (until the map changes), and where its records last went in the
//! aggregator ([`KeySeen`]). It is bounded: when full it stops taking keys, and once as many
//! keys as it holds have missed since then, it starts over (the population of keys moved on).
//! So a workload with more distinct keys than the cache holds keeps the hits of the keys it has
//! instead of emptying it at every new key. Keys of up to 30 bytes are held in the table
//! itself, not on the heap: a hit reads no memory outside its bucket (with 100 000 keys the
//! table is far larger than the CPU caches, and each pointer followed was one more miss).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use hashbrown::hash_map::EntryRef;

use crate::fxhash::FxHashbrownMap;
use crate::hash::HashKey;
use crate::producer::aggregator::KeySeen;
use crate::producer::shard_map::ShardMap;

/// Distinct partition keys remembered by default: as many as a table of 2^17 buckets holds
/// (hashbrown fills 7/8 of its buckets before it doubles). 2^16 keys already took that table,
/// half empty; this is the same memory (~11 MiB when full) for 75 % more keys.
pub(crate) const DEFAULT_ROUTE_CACHE_KEYS: usize = (1 << 17) / 8 * 7;

/// Where a record goes.
pub(crate) struct RecordRoute<'a> {
    pub hash: HashKey,
    /// Its shard's index in the map it was routed with.
    pub shard_index: usize,
    /// Where its key's records last went in the aggregator: `None` for a key not in the cache.
    pub seen: Option<&'a mut KeySeen>,
}

/// Longest key held inline: with the length and the variant's tag, 32 bytes, which the table's
/// 16-byte alignment of [`Route`] would pad a `String` (24 bytes) to anyway.
const INLINE_KEY_BYTES: usize = 30;

/// A partition key's UTF-8 bytes as the cache holds them.
enum CachedKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl CachedKey {
    fn as_bytes(&self) -> &[u8] {
        match self {
            CachedKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            CachedKey::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for CachedKey {
    fn from(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY_BYTES => {
                let mut bytes = [0; INLINE_KEY_BYTES];
                bytes[..key.len()].copy_from_slice(key);
                CachedKey::Inline { len, bytes }
            }
            _ => CachedKey::Heap(key.into()),
        }
    }
}

// Hashed and compared as the bytes they hold, so the table is probed with a `&[u8]`.
impl Borrow<[u8]> for CachedKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for CachedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for CachedKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CachedKey {}

struct Route {
    hash: HashKey,
    /// Its shard's index in the map of version `map_version`.
    shard_index: u32,
    map_version: u64,
    seen: KeySeen,
}

/// Partition key -> its route, bounded.
pub(crate) struct RouteCache {
    routes: FxHashbrownMap<CachedKey, Route>,
    capacity: usize,
    /// Keys that missed since the cache was last full.
    misses_while_full: usize,
}

impl RouteCache {
    /// A cache of at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        RouteCache {
            routes: FxHashbrownMap::default(),
            capacity,
            misses_while_full: 0,
        }
    }

    /// The route of a record keyed by `partition_key` under `map`: one probe for a key the
    /// cache holds.
    pub fn route<'a>(&'a mut self, map: &ShardMap, partition_key: &str) -> RecordRoute<'a> {
        let key = partition_key.as_bytes();
        // The miss that makes as many as the cache holds: it starts over, with this key. The
        // table is emptied first: inserting into a full one would double it, and clearing keeps
        // the doubled table for good. (Only this one record per round costs a second probe.)
        if self.routes.len() >= self.capacity
            && self.misses_while_full + 1 >= self.capacity
            && !self.routes.contains_key(key)
        {
            self.routes.clear();
            self.misses_while_full = 0;
        }
        let version = map.version();
        let full = self.routes.len() >= self.capacity;
        let route = match self.routes.entry_ref(key) {
            EntryRef::Occupied(entry) => entry.into_mut(),
            EntryRef::Vacant(entry) => {
                let hash = HashKey::of_partition_key(partition_key);
                let shard_index = map.index_of(hash);
                if full {
                    self.misses_while_full += 1;
                    return RecordRoute {
                        hash,
                        shard_index,
                        seen: None,
                    };
                }
                entry.insert(Route {
                    hash,
                    shard_index: shard_index as u32,
                    map_version: version,
                    seen: KeySeen::default(),
                })
            }
        };
        if route.map_version != version {
            route.shard_index = map.index_of(route.hash) as u32;
            route.map_version = version;
        }
        RecordRoute {
            hash: route.hash,
            shard_index: route.shard_index as usize,
            seen: Some(&mut route.seen),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.routes.len()
    }

    #[cfg(test)]
    fn table_capacity(&self) -> usize {
        self.routes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::shard_map::even_shards;

    #[test]
    fn routes_match_the_map_and_follow_a_new_one() {
        let one = ShardMap::new(&even_shards(1), 1).unwrap();
        let eight = ShardMap::new(&even_shards(8), 2).unwrap();
        let mut cache = RouteCache::new(16);
        for map in [&one, &eight, &one] {
            for k in 0..10 {
                let key = format!("key-{k}");
                let hash = HashKey::of_partition_key(&key);
                let route = cache.route(map, &key);
                assert_eq!(route.hash, hash);
                assert_eq!(route.shard_index, map.index_of(hash));
                assert!(route.seen.is_some());
            }
        }
        assert_eq!(cache.len(), 10);
    }

    #[test]
    fn the_default_cache_fills_its_table_without_doubling_it() {
        let map = ShardMap::new(&even_shards(4), 1).unwrap();
        let mut cache = RouteCache::new(DEFAULT_ROUTE_CACHE_KEYS);
        for k in 0..DEFAULT_ROUTE_CACHE_KEYS + 10 {
            cache.route(&map, &format!("key-{k}"));
        }
        assert_eq!(cache.len(), DEFAULT_ROUTE_CACHE_KEYS);
        // One more key would have doubled the table to 2^18 buckets.
        assert_eq!(cache.table_capacity(), DEFAULT_ROUTE_CACHE_KEYS);
        // Nor does starting over, after as many misses as it holds: it refills the same table.
        for k in 0..2 * DEFAULT_ROUTE_CACHE_KEYS {
            cache.route(&map, &format!("other-{k}"));
        }
        assert_eq!(cache.table_capacity(), DEFAULT_ROUTE_CACHE_KEYS);
    }

    #[test]
    fn short_and_long_keys_are_told_apart_by_all_their_bytes() {
        let map = ShardMap::new(&even_shards(8), 1).unwrap();
        let mut cache = RouteCache::new(64);
        let long = "k".repeat(INLINE_KEY_BYTES);
        let keys = [
            String::new(),
            "a".to_owned(),
            "a\0".to_owned(),
            long.clone(),
            format!("{long}x"),
            format!("{long}y"),
            "é".repeat(100),
        ];
        for _ in 0..2 {
            for key in &keys {
                let hash = HashKey::of_partition_key(key);
                assert_eq!(cache.route(&map, key).hash, hash, "{key:?}");
            }
        }
        assert_eq!(cache.len(), keys.len());
        assert_eq!(std::mem::size_of::<CachedKey>(), 32);
    }

    #[test]
    fn a_full_cache_keeps_its_keys_until_as_many_have_missed() {
        let map = ShardMap::new(&even_shards(4), 1).unwrap();
        let mut cache = RouteCache::new(4);
        for k in 0..4 {
            cache.route(&map, &format!("kept-{k}"));
        }
        // Misses while full are routed right but not remembered...
        for k in 0..3 {
            let key = format!("other-{k}");
            let route = cache.route(&map, &key);
            assert!(route.seen.is_none());
            assert_eq!(route.hash, HashKey::of_partition_key(&key));
            assert_eq!(cache.len(), 4);
        }
        // ...and the kept keys still hit.
        assert!(cache.route(&map, "kept-0").seen.is_some());
        // The fourth miss since it filled: the cache starts over, holding just that key; the
        // kept keys are new to it.
        assert!(cache.route(&map, "other-3").seen.is_some());
        assert_eq!(cache.len(), 1);
        assert!(cache.route(&map, "kept-1").seen.is_some());
        assert_eq!(cache.len(), 2);
    }
}
