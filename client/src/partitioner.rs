//! Kafka's default partitioner: murmur2 of the key for keyed records, sticky partitioning
//! for records without a key.

use crate::hash::FastMap;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record: `(murmur2(key) & 0x7fffffff) % num_partitions`, as
/// Kafka's default partitioner. `num_partitions` must not be 0.
pub fn partition_for_key(key: &[u8], num_partitions: u32) -> u32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % num_partitions
}

/// Sticky partitioning of records without a key: a topic's keyless records go to one
/// partition until the batch they joined is closed, then to another one chosen at random
/// (never the same one twice in a row when the topic has several).
#[derive(Debug)]
pub(crate) struct StickyPartitioner {
    /// Per topic: the partition, and the id of the batch it is sticking to (`None` until
    /// a record joined one).
    current: FastMap<String, (u32, Option<u64>)>,
    rng: u64,
}

impl StickyPartitioner {
    pub(crate) fn new(seed: u64) -> Self {
        StickyPartitioner {
            current: FastMap::default(),
            rng: seed | 1,
        }
    }

    /// The partition for the next keyless record of `topic`. `open_batch(p)` is the id of
    /// partition `p`'s open batch, if any.
    pub(crate) fn partition(
        &mut self,
        topic: &str,
        num_partitions: u32,
        mut open_batch: impl FnMut(u32) -> Option<u64>,
    ) -> u32 {
        if let Some(&(p, batch)) = self.current.get(topic)
            && p < num_partitions
        {
            let still_open = match batch {
                None => true,
                Some(id) => open_batch(p) == Some(id),
            };
            if still_open {
                return p;
            }
        }
        let previous = self.current.get(topic).map(|&(p, _)| p);
        let p = self.pick(num_partitions, previous);
        self.current.insert(topic.to_string(), (p, None));
        p
    }

    /// The partition `topic`'s keyless records stick to and the batch they joined, if a
    /// record joined one since the partition was picked.
    pub(crate) fn sticking_to(&self, topic: &str) -> Option<(u32, u64)> {
        match self.current.get(topic) {
            Some(&(p, Some(batch))) => Some((p, batch)),
            _ => None,
        }
    }

    /// Records that the keyless record just placed on `partition` joined batch `batch`.
    pub(crate) fn joined(&mut self, topic: &str, partition: u32, batch: u64) {
        if let Some(entry) = self.current.get_mut(topic)
            && entry.0 == partition
        {
            entry.1 = Some(batch);
        }
    }

    /// Forgets a topic (its partition count changed).
    pub(crate) fn forget(&mut self, topic: &str) {
        self.current.remove(topic);
    }

    fn pick(&mut self, num_partitions: u32, previous: Option<u32>) -> u32 {
        if num_partitions <= 1 {
            return 0;
        }
        match previous.filter(|&p| p < num_partitions) {
            None => (self.next() % u64::from(num_partitions)) as u32,
            Some(prev) => {
                let step = 1 + self.next() % u64::from(num_partitions - 1);
                ((u64::from(prev) + step) % u64::from(num_partitions)) as u32
            }
        }
    }

    /// xorshift64*: enough to spread partitions; no need for a crypto RNG.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2 and from its Java client.
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for &(input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
        // Every tail length (0..=3 bytes past a 4-byte block) goes through a distinct path.
        let lengths: Vec<i32> = (0..8).map(|n| murmur2(&b"abcdefgh"[..n])).collect();
        for (i, a) in lengths.iter().enumerate() {
            for b in &lengths[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn keyed_partition_is_positive_murmur2_modulo() {
        // murmur2("foobar") = -790332482; & 0x7fffffff = 1357151166.
        assert_eq!(partition_for_key(b"foobar", 1), 0);
        assert_eq!(partition_for_key(b"foobar", 7), 1357151166 % 7);
        assert_eq!(
            partition_for_key(b"21", 10),
            ((-973932308i32 & 0x7fffffff) % 10) as u32
        );
        for n in 1..50 {
            assert!(partition_for_key(b"any key", n) < n);
        }
    }

    #[test]
    fn sticky_stays_until_the_batch_closes_then_moves() {
        let mut sticky = StickyPartitioner::new(42);
        let p = sticky.partition("t", 4, |_| None);
        sticky.joined("t", p, 1);
        // Batch 1 still open on p: stay.
        for _ in 0..10 {
            assert_eq!(sticky.partition("t", 4, |q| (q == p).then_some(1)), p);
        }
        // Batch 1 closed (no open batch): move to another partition.
        let q = sticky.partition("t", 4, |_| None);
        assert_ne!(q, p);
        sticky.joined("t", q, 2);
        // A different batch open on q than the one joined: it was closed and a keyed
        // record opened a new one; move again.
        let r = sticky.partition("t", 4, |_| Some(3));
        assert_ne!(r, q);
        // A single partition: always 0.
        assert_eq!(sticky.partition("one", 1, |_| None), 0);
        sticky.joined("one", 0, 9);
        assert_eq!(sticky.partition("one", 1, |_| None), 0);
    }

    #[test]
    fn sticky_spreads_over_every_partition() {
        let mut sticky = StickyPartitioner::new(7);
        let mut seen = [0u32; 5];
        for batch in 0..500 {
            let p = sticky.partition("t", 5, |_| None);
            sticky.joined("t", p, batch);
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        // A shrunken topic never gets a partition it does not have.
        sticky.forget("t");
        for _ in 0..20 {
            assert!(sticky.partition("t", 2, |_| None) < 2);
        }
    }
}
