//! A fast hasher for the producer's per-record map lookups (rustc's FxHash). Their keys
//! are topic names the application chose, not input from the network, so SipHash's
//! protection against crafted collisions buys nothing there, and it cost about a sixth of
//! the producer's instructions.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash(value: impl Hash) -> u64 {
        BuildHasherDefault::<FxHasher>::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_differ() {
        let tp = |t: &str, p: u32| crate::TopicPartition::new(t, p);
        assert_eq!(hash(tp("orders", 1)), hash(tp("orders", 1)));
        let near = [
            hash(tp("orders", 0)),
            hash(tp("orders", 1)),
            hash(tp("orders1", 0)),
            hash(tp("order", 0)),
            hash(tp("orders-long-topic-name", 0)),
            hash(tp("orders-long-topic-namf", 0)),
        ];
        let distinct: std::collections::BTreeSet<u64> = near.iter().copied().collect();
        assert_eq!(distinct.len(), near.len(), "{near:?}");
        let mut map: FastMap<crate::TopicPartition, u32> = FastMap::default();
        for p in 0..1000 {
            map.insert(tp("t", p), p);
        }
        assert!((0..1000).all(|p| map[&tp("t", p)] == p));
    }
}
