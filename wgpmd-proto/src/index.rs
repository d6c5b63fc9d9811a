//! The receiver-index table: random 32-bit session indices to their owner, shared by every
//! worker core.
//!
//! Follows the kernel's `peerlookup.c` (`wg_index_hashtable_insert`): an index is drawn at
//! random, retried while taken, and looked up on every data packet. Here it is an array of
//! [`SHARDS`] cache-line-aligned `RwLock<HashMap>`s picked by the low index bits: data-path
//! lookups from several cores take shared read locks on different shards, handshakes take a
//! short write lock on one shard, and no operation ever holds two locks.
//!
//! # Size
//! The table is sized for millions of sessions: a carrier device with four million peers holds
//! four to twelve million indices (current, next and previous keypairs, handshakes in flight),
//! about 4,000 to 12,000 per shard. A shard's map grows by doubling, so the longest stall is one
//! shard rehashing its entries (a fraction of a millisecond with one write lock held, against
//! tens of milliseconds for one unsharded map), and the shard locks (64 KiB in all) spread the
//! readers of different peers over 1024 cache lines.
//!
//! # Hashing
//! The maps use [`IndexHasher`], a folded multiply that reads no OS randomness. That is safe
//! against HashDoS because the keys are chosen by us, uniformly at random from an injected CSPRNG:
//! an attacker cannot place entries in chosen buckets, and a lookup of an attacker-chosen absent
//! index probes one bucket group of a table whose occupancy is random, which is the normal cost
//! of a miss. The fold matters because the low bits also pick the shard and so are constant
//! within one map.
//!
//! # Termination
//! With a real CSPRNG a retry is needed with probability `len / 2^32`. A broken RNG (say, one
//! returning a constant) must not hang the handshake path, so after [`MAX_RANDOM_TRIES`] taken
//! indices the search continues linearly from the last draw; it ends because a table in memory
//! cannot hold 2^32 entries.

use core::hash::{BuildHasherDefault, Hasher};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand_core::{CryptoRng, RngCore};

/// Number of shards (a power of two; the low index bits choose one).
pub const SHARDS: usize = 1024;
/// Random draws before falling back to a linear search for a free index.
pub const MAX_RANDOM_TRIES: usize = 64;

/// A hasher for keys we chose ourselves (random indices, peer ids): a folded 64x64 multiply,
/// no OS randomness and no per-process key. Not for attacker-chosen keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexHasher(u64);

/// Odd 64-bit constant (2^64 / golden ratio) for the multiply.
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl IndexHasher {
    #[inline(always)]
    fn mix(&mut self, x: u64) {
        let p = u128::from(self.0 ^ x) * u128::from(MUL);
        // Fold the high half down: the low bits of the result depend on every input bit.
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for IndexHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

/// `BuildHasher` for [`IndexHasher`].
pub type BuildIndexHasher = BuildHasherDefault<IndexHasher>;

/// One shard, alone on its cache line(s) so cores locking neighbouring shards do not contend.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Shard<V>(RwLock<HashMap<u32, V, BuildIndexHasher>>);

/// Receiver index to `V` (typically an `Arc` of a handshake or keypair), safe to share across
/// threads (`&self` everywhere).
#[derive(Debug)]
pub struct IndexTable<V> {
    shards: Box<[Shard<V>]>,
    len: AtomicUsize,
}

impl<V> Default for IndexTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> IndexTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        let shards = (0..SHARDS).map(|_| Shard(RwLock::new(HashMap::default()))).collect();
        IndexTable { shards, len: AtomicUsize::new(0) }
    }

    #[inline]
    fn shard(&self, index: u32) -> &RwLock<HashMap<u32, V, BuildIndexHasher>> {
        // SHARDS is a power of two, so the mask keeps the index in range.
        &self.shards[index as usize & (SHARDS - 1)].0
    }

    // A panic while a write lock was held can only come from a `remove_if` predicate (or
    // allocation failure), which runs before the map is changed: the map is intact, so a
    // poisoned lock is used as is rather than taking the data path down.
    #[inline]
    fn read(&self, index: u32) -> RwLockReadGuard<'_, HashMap<u32, V, BuildIndexHasher>> {
        self.shard(index).read().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn write(&self, index: u32) -> RwLockWriteGuard<'_, HashMap<u32, V, BuildIndexHasher>> {
        self.shard(index).write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` under a fresh random index drawn from `rng` and returns the index.
    /// Never returns an index already in the table (see the module doc on termination).
    pub fn insert_new<R: RngCore + CryptoRng>(&self, rng: &mut R, value: V) -> u32 {
        let mut candidate = rng.next_u32();
        let mut tries = 1;
        loop {
            {
                let mut map = self.write(candidate);
                if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(candidate) {
                    slot.insert(value);
                    self.len.fetch_add(1, Ordering::Relaxed);
                    return candidate;
                }
            }
            candidate = if tries < MAX_RANDOM_TRIES { rng.next_u32() } else { candidate.wrapping_add(1) };
            tries += 1;
        }
    }

    /// `f` of the value at `index`, under the shard's read lock, without cloning it (a burst's
    /// first look at its entries, to prefetch what they point to).
    #[inline]
    pub fn with<R>(&self, index: u32, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.read(index).get(&index).map(f)
    }

    /// Replaces the value at `index` if present; returns whether it was.
    pub fn replace(&self, index: u32, value: V) -> bool {
        match self.write(index).get_mut(&index) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// Removes and returns the value at `index`.
    pub fn remove(&self, index: u32) -> Option<V> {
        let removed = self.write(index).remove(&index);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes and returns the value at `index` only if `pred` holds for it (e.g. "is still
    /// this keypair"), atomically with respect to other operations on the table.
    pub fn remove_if(&self, index: u32, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut map = self.write(index);
        if !map.get(&index).is_some_and(pred) {
            return None;
        }
        let removed = map.remove(&index);
        drop(map);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Number of entries (exact when no other thread is changing the table).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the table is empty (same caveat as [`IndexTable::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Clone> IndexTable<V> {
    /// A clone of the value at `index` (a data-path lookup: one shared lock, one probe).
    #[inline]
    pub fn get(&self, index: u32) -> Option<V> {
        self.read(index).get(&index).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// An RNG forced to collide: every other draw repeats one of the last 1024 values.
    struct RepeatingRng {
        inner: ChaCha20Rng,
        recent: Vec<u32>,
        draws: u64,
    }

    impl RngCore for RepeatingRng {
        fn next_u32(&mut self) -> u32 {
            self.draws += 1;
            let v = if self.draws.is_multiple_of(2) && !self.recent.is_empty() {
                let i = self.inner.next_u32() as usize % self.recent.len();
                self.recent[i]
            } else {
                self.inner.next_u32()
            };
            if self.recent.len() < 1024 {
                self.recent.push(v);
            } else {
                let i = (self.draws % 1024) as usize;
                self.recent[i] = v;
            }
            v
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32()) << 32 | u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            rand_core::impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for RepeatingRng {}

    /// A broken RNG that always returns the same value.
    struct ConstRng(u32);
    impl RngCore for ConstRng {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0x5a)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for ConstRng {}

    #[test]
    fn unique_over_100k_with_forced_collisions() {
        let table = IndexTable::new();
        let mut rng = RepeatingRng { inner: ChaCha20Rng::seed_from_u64(7), recent: Vec::new(), draws: 0 };
        let mut seen = HashSet::new();
        for i in 0..100_000u32 {
            let index = table.insert_new(&mut rng, i);
            assert!(seen.insert(index), "index {index:#x} handed out twice");
            assert_eq!(table.get(index), Some(i));
        }
        assert_eq!(table.len(), 100_000);
        // Half the draws repeat a recent value, so most insertions after the first few
        // retried at least once: draws far exceed insertions.
        assert!(rng.draws > 140_000, "only {} draws: collisions were not forced", rng.draws);
    }

    #[test]
    fn constant_rng_terminates_with_distinct_indices() {
        let table = IndexTable::new();
        let mut rng = ConstRng(0xffff_fffe);
        let indices: Vec<u32> = (0..200).map(|i| table.insert_new(&mut rng, i)).collect();
        let distinct: HashSet<_> = indices.iter().collect();
        assert_eq!(distinct.len(), 200);
        assert_eq!(indices[0], 0xffff_fffe);
        assert_eq!(indices[1], 0xffff_ffff);
        assert_eq!(indices[2], 0, "linear fallback wraps around");
        assert_eq!(table.len(), 200);
    }

    #[test]
    fn replace_remove_remove_if() {
        let table = IndexTable::new();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = table.insert_new(&mut rng, "a");
        let b = table.insert_new(&mut rng, "b");
        assert_ne!(a, b);
        assert!(table.replace(a, "a2"));
        assert_eq!(table.get(a), Some("a2"));
        let absent = a ^ b ^ 0x5a5a_5a5a;
        assert!(!table.replace(absent, "x"));
        assert_eq!(table.get(absent), None);
        assert_eq!(table.remove_if(b, |v| *v == "not b"), None);
        assert_eq!(table.get(b), Some("b"));
        assert_eq!(table.remove_if(b, |v| *v == "b"), Some("b"));
        assert_eq!(table.remove_if(b, |_| true), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(a), Some("a2"));
        assert_eq!(table.remove(a), None);
        assert!(table.is_empty());
    }

    #[test]
    fn hasher_spreads_indices_within_a_shard() {
        // Indices in one shard share their low 10 bits; their hashes must not.
        let low: HashSet<u64> = (0..256u32)
            .map(|i| {
                let mut h = IndexHasher::default();
                h.write_u32(i << 10 | 0x142);
                h.finish() & 0xff
            })
            .collect();
        assert!(low.len() > 128, "only {} distinct low hash bytes", low.len());
    }

    #[test]
    fn concurrent_get_insert_remove() {
        let table = Arc::new(IndexTable::<u64>::new());
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // Long-lived entries the reader must always see with the right value.
        let stable: Vec<(u32, u64)> = (0..1000u64).map(|v| (table.insert_new(&mut rng, v), v)).collect();
        let stable = Arc::new(stable);
        let writer = {
            let (table, stable) = (Arc::clone(&table), Arc::clone(&stable));
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(4);
                let taken: HashSet<u32> = stable.iter().map(|&(s, _)| s).collect();
                for round in 0..20_000u64 {
                    let index = table.insert_new(&mut rng, 1_000_000 + round);
                    assert!(!taken.contains(&index));
                    assert_eq!(table.get(index), Some(1_000_000 + round));
                    assert_eq!(table.remove(index), Some(1_000_000 + round));
                }
            })
        };
        let reader = {
            let (table, stable) = (Arc::clone(&table), Arc::clone(&stable));
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(5);
                let mut misses = 0u32;
                for i in 0..200_000usize {
                    let (index, value) = stable[i % stable.len()];
                    assert_eq!(table.get(index), Some(value));
                    // Absent indices (very likely absent) must just miss.
                    if table.get(rng.next_u32()).is_none() {
                        misses += 1;
                    }
                }
                misses
            })
        };
        writer.join().unwrap();
        assert!(reader.join().unwrap() > 199_000);
        assert_eq!(table.len(), 1000);
        for &(index, value) in stable.iter() {
            assert_eq!(table.get(index), Some(value));
        }
    }
}
