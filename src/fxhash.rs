//! A fast, non-cryptographic hasher for the pipeline's per-record maps (partition key -> hash
//! key, shard -> open aggregate). SipHash, the std default, resists collision attacks at a cost
//! paid on every record; these maps are keyed by the producer's own partition keys and bounded,
//! so speed wins.

use std::hash::{BuildHasherDefault, Hasher};

/// Fx-style hashing (rotate, xor, multiply, one 64-bit word at a time) with extra mixing.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        // Fx's rotate-xor-multiply, plus a shift-xor so a word's high bits feed the next round
        // (plain Fx collides on keys that differ in two words, like "partition-key-1234").
        let h = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
        self.0 = h ^ (h >> 29);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
        // The length tells "ab" from "ab\0".
        self.add(bytes.len() as u64);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // MurmurHash3's fmix64: every input bit reaches every output bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// [`FxHashMap`] from `hashbrown`, for its `entry_ref`: look a borrowed key up, insert an owned
/// copy only on a miss, in one probe.
pub(crate) type FxHashbrownMap<K, V> = hashbrown::HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_spread() {
        for pattern in [
            "partition-key-",
            "user-",
            "",
            "a-much-longer-tenant-prefix/device/",
        ] {
            let mut seen = std::collections::HashSet::new();
            for k in 0..10_000 {
                let mut h = FxHasher::default();
                h.write(format!("{pattern}{k}").as_bytes());
                seen.insert(h.finish());
            }
            assert_eq!(seen.len(), 10_000, "collisions for keys {pattern:?}N");
        }
    }
}
