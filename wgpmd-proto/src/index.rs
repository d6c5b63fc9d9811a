//! The receiver-index table: random 32-bit session indices to their owner, shared by every
//! worker core.
//!
//! Follows the kernel's `peerlookup.c` (`wg_index_hashtable_insert`): an index is drawn at
//! random, retried while taken, and looked up on every data packet. Here it is an array of
//! [`SHARDS`] cache-line-aligned shards picked by the low index bits, each an open-addressed
//! table under an `RwLock`: data-path lookups from several cores take shared read locks on
//! different shards, handshakes take a short write lock on one shard. Only a burst's read view
//! ([`IndexTable::read_shards`]) holds more than one shard lock, and it never waits while
//! holding one: it takes each with `try_read`, and when one is taken or wanted by a writer it
//! lets all of them go, waits for that shard holding nothing, and starts again. Every other
//! operation holds one lock, and a writer holding one waits on nothing. So no cycle of waits
//! forms through the table, and a writer waits only for the readers it found (a view holds its
//! shards for one burst). What keeps cycles out through other locks is a rule for the view's
//! holder, in [`IndexTable::read_shards`].
//!
//! # Size
//! The table is sized for millions of sessions: a carrier device with four million peers holds
//! four to twelve million indices (current, next and previous keypairs, handshakes in flight),
//! about 4,000 to 12,000 per shard. A shard's table grows by doubling, so the longest stall is one
//! shard rehashing its entries (a fraction of a millisecond with one write lock held, against
//! tens of milliseconds for one unsharded map), and the shard locks (64 KiB in all) spread the
//! readers of different peers over 1024 cache lines. Every entry is counted ([`IndexTable::len`]).
//!
//! # Layout, and prefetching
//! Each shard is one array of `(index, value)` slots, probed linearly from the index's home
//! slot, at most three quarters full (so a hit reads the home slot and, at the fullest, about one and
//! a half more on average, usually in the same or the next cache line;
//! removal shifts the entries after it back, leaving no tombstones). Unlike a general-purpose
//! hash map (whose control bytes and buckets are two separate misses, the second known only
//! after the first), the slot an index lives in is computable before the lookup: each shard
//! publishes its array's address and size in two relaxed atomics, and
//! [`IndexTable::prefetch`] reads them without the lock and starts loading the home slot's
//! line. A burst of packets prefetches all its indices' slots first, then looks them up, so their
//! misses overlap. The hint is only ever used as a prefetch address, never dereferenced: a stale
//! one (the array just reallocated) costs a useless prefetch, nothing else.
//!
//! # Hashing
//! The home slot is the top bits of the index times an odd 64-bit constant (Fibonacci hashing),
//! which reads no OS randomness. That is safe against HashDoS because the keys are chosen by us,
//! uniformly at random from an injected CSPRNG: an attacker cannot place entries in chosen
//! slots, and a lookup of an attacker-chosen absent index probes one run of a table whose
//! occupancy is random, which is the normal cost of a miss. The top bits depend on every index
//! bit, including those above the low bits, which pick the shard and so are constant within one
//! shard. [`IndexHasher`], the same multiply folded, is kept for `HashMap`s of other keys we
//! choose ourselves.
//!
//! # Termination
//! With a real CSPRNG a retry is needed with probability `len / 2^32`. A broken RNG (say, one
//! returning a constant) must not hang the handshake path, so after [`MAX_RANDOM_TRIES`] taken
//! indices the search continues linearly from the last draw; it ends because a table in memory
//! cannot hold 2^32 entries.

use core::hash::{BuildHasherDefault, Hasher};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use rand_core::{CryptoRng, RngCore};

/// Number of shards (a power of two; the low index bits choose one).
pub const SHARDS: usize = 1024;
/// Most shards one [`ShardReads`] holds (a burst's chunk of messages).
pub const MAX_READS: usize = 32;
// Shard numbers are kept as u16.
const _: () = assert!(SHARDS <= 1 << 16);
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

/// Smallest slot array a shard allocates (a power of two): small, since a device with few
/// sessions has one or two per shard (1024 shards), and the arrays count in its memory per peer.
const MIN_SLOTS: usize = 4;

/// The home slot of `index` in an array of `2^bits` slots (`bits` in 1..=63).
#[inline(always)]
fn home(index: u32, bits: u32) -> usize {
    (u64::from(index).wrapping_mul(MUL) >> (64 - bits)) as usize
}

/// One shard's open-addressed table: `2^bits` slots (or none), linear probing, at most 3/4 full.
#[derive(Debug)]
struct Slots<V> {
    slots: Box<[Option<(u32, V)>]>,
    bits: u32,
    len: usize,
}

impl<V> Slots<V> {
    fn new() -> Self {
        Slots { slots: Box::new([]), bits: 0, len: 0 }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot holding `index`. Ends: at most 3/4 of the slots are taken, so a probe meets an
    /// empty one.
    #[inline]
    fn find(&self, index: u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = home(index, self.bits);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some((k, _)) if *k == index => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    #[inline]
    fn get(&self, index: u32) -> Option<&V> {
        self.find(index).and_then(|i| self.slots.get(i)?.as_ref()).map(|(_, v)| v)
    }

    #[inline]
    fn get_mut(&mut self, index: u32) -> Option<&mut V> {
        let i = self.find(index)?;
        self.slots.get_mut(i)?.as_mut().map(|(_, v)| v)
    }

    /// Put `value` under `index` unless it is taken (then `value` comes back).
    fn insert_vacant(&mut self, index: u32, value: V) -> Result<(), V> {
        if self.find(index).is_some() {
            return Err(value);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = home(index, self.bits);
        while self.slots.get(i).is_some_and(Option::is_some) {
            i = (i + 1) & mask;
        }
        match self.slots.get_mut(i) {
            Some(slot) => {
                *slot = Some((index, value));
                self.len += 1;
                Ok(())
            }
            // Not reached: the array has a free slot after growing.
            None => Err(value),
        }
    }

    /// Double the array (or make the first one) and re-place every entry.
    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(MIN_SLOTS);
        let bits = cap.trailing_zeros();
        let old = std::mem::replace(&mut self.slots, (0..cap).map(|_| None).collect());
        self.bits = bits;
        let mask = self.mask();
        for (k, v) in old.into_vec().into_iter().flatten() {
            let mut i = home(k, bits);
            while self.slots.get(i).is_some_and(Option::is_some) {
                i = (i + 1) & mask;
            }
            if let Some(slot) = self.slots.get_mut(i) {
                *slot = Some((k, v));
            }
        }
    }

    /// Take the entry at slot `i` out, shifting the entries after it back so that every entry
    /// stays reachable from its home slot (no tombstones).
    fn remove_at(&mut self, mut i: usize) -> Option<V> {
        let (_, removed) = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some(Some((k, _))) = self.slots.get(j) else { break };
            // The entry at j may move back to the hole at i if i lies on its probe path, i.e.
            // its home is not in the cyclic range (i, j].
            let h = home(*k, self.bits);
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                let moved = self.slots.get_mut(j).and_then(Option::take);
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = moved;
                }
                i = j;
            }
        }
        Some(removed)
    }
}

/// One shard, alone on its cache line(s) so cores locking neighbouring shards do not contend:
/// its table under a lock, and the prefetch hint (see "Layout, and prefetching").
#[repr(align(64))]
#[derive(Debug)]
struct Shard<V> {
    map: RwLock<Slots<V>>,
    /// Address of the slot array (0: none), written under the write lock when it changes.
    hint_base: AtomicUsize,
    /// Its `bits` (as [`Slots::bits`]).
    hint_bits: AtomicU32,
}

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
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(Slots::new()),
                hint_base: AtomicUsize::new(0),
                hint_bits: AtomicU32::new(0),
            })
            .collect();
        IndexTable { shards, len: AtomicUsize::new(0) }
    }

    #[inline]
    fn shard(&self, index: u32) -> &Shard<V> {
        // SHARDS is a power of two, so the mask keeps the index in range.
        &self.shards[index as usize & (SHARDS - 1)]
    }

    // A panic while a write lock was held can only come from a `remove_if` predicate (or
    // allocation failure), which runs before the table is changed: the table is intact, so a
    // poisoned lock is used as is rather than taking the data path down.
    #[inline]
    fn read(&self, index: u32) -> RwLockReadGuard<'_, Slots<V>> {
        self.shard(index).map.read().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn write(&self, index: u32) -> RwLockWriteGuard<'_, Slots<V>> {
        self.shard(index).map.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start loading the line of `index`'s home slot (a burst's first pass over its indices),
    /// without the lock: from the shard's hint, which is only an address to prefetch (a stale
    /// one wastes the prefetch). Reads nothing else and changes nothing.
    #[inline]
    pub fn prefetch(&self, index: u32) {
        if let Some(at) = self.hint(index) {
            // An address made from an integer only to be prefetched, never dereferenced. The
            // slot's last byte too, for a slot that straddles two lines.
            wgpmd_aead::prefetch::read_ptr(at as *const u8);
            wgpmd_aead::prefetch::read_ptr(at.wrapping_add(core::mem::size_of::<Option<(u32, V)>>() - 1) as *const u8);
        }
    }

    /// The address of `index`'s home slot as the shard's hint says (`None`: no array yet).
    #[inline]
    fn hint(&self, index: u32) -> Option<usize> {
        let shard = self.shard(index);
        let base = shard.hint_base.load(Ordering::Relaxed);
        let bits = shard.hint_bits.load(Ordering::Relaxed);
        if base == 0 || !(1..64).contains(&bits) {
            return None;
        }
        Some(base.wrapping_add(home(index, bits).wrapping_mul(core::mem::size_of::<Option<(u32, V)>>())))
    }

    /// Publish the shard's array address for [`IndexTable::prefetch`] (under its write lock).
    fn publish_hint(&self, index: u32, map: &Slots<V>) {
        let shard = self.shard(index);
        shard.hint_base.store(map.slots.as_ptr() as usize, Ordering::Relaxed);
        shard.hint_bits.store(map.bits, Ordering::Relaxed);
    }

    /// Stores `value` under a fresh random index drawn from `rng` and returns the index.
    /// Never returns an index already in the table (see the module doc on termination).
    pub fn insert_new<R: RngCore + CryptoRng>(&self, rng: &mut R, value: V) -> u32 {
        let mut value = value;
        let mut candidate = rng.next_u32();
        let mut tries = 1;
        loop {
            {
                let mut map = self.write(candidate);
                let before = map.slots.as_ptr();
                match map.insert_vacant(candidate, value) {
                    Ok(()) => {
                        if map.slots.as_ptr() != before {
                            self.publish_hint(candidate, &map);
                        }
                        self.len.fetch_add(1, Ordering::Relaxed);
                        return candidate;
                    }
                    Err(v) => value = v,
                }
            }
            candidate = if tries < MAX_RANDOM_TRIES { rng.next_u32() } else { candidate.wrapping_add(1) };
            tries += 1;
        }
    }

    /// Replaces the value at `index` if present; returns whether it was.
    pub fn replace(&self, index: u32, value: V) -> bool {
        match self.write(index).get_mut(index) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// Removes and returns the value at `index`.
    pub fn remove(&self, index: u32) -> Option<V> {
        let removed = {
            let mut map = self.write(index);
            map.find(index).and_then(|i| map.remove_at(i))
        };
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes and returns the value at `index` only if `pred` holds for it (e.g. "is still
    /// this keypair"), atomically with respect to other operations on the table.
    pub fn remove_if(&self, index: u32, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut map = self.write(index);
        if !map.get(index).is_some_and(pred) {
            return None;
        }
        let removed = map.find(index).and_then(|i| map.remove_at(i));
        drop(map);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// `f` of the value at `index`, under the shard's read lock, without cloning it (a look
    /// that needs no reference, e.g. a handshake batch asking whether an index is a handshake's).
    #[inline]
    pub fn with<R>(&self, index: u32, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.read(index).get(index).map(f)
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

impl<V> IndexTable<V> {
    /// A read view of the shards of `indices` (each shard once; the first [`MAX_READS`]
    /// distinct ones): their read locks, held until the view is dropped. Taken in ascending
    /// shard order (the view's lookups search them in that order), each with `try_read`: if a
    /// writer holds or waits for one, every lock taken so far is let go, the view waits for that
    /// shard with nothing held (a blocking read, released at once), and starts again. So a view
    /// never waits while holding a shard (it cannot take part in a cycle of waits, nor make other
    /// views wait behind its own wait), and a writer waits only for the views it found, one
    /// burst each. A burst looks its messages up through it and borrows what it finds for the
    /// whole burst, without cloning (no reference count written).
    ///
    /// While it holds a view, the calling thread must not use the table in any other way (a
    /// write would wait on its own read lock, a second read could wait behind a queued writer):
    /// it collects what it has to remove and removes it once the view is dropped. Nor may it
    /// take a lock that another thread may hold while it waits for a shard: handshakes hold
    /// their peer's handshake state (`Peer::handshake`) around `insert_new` and `remove_index`,
    /// so a view's holder never takes it. The locks the receive burst takes under its view, a
    /// keypair's window lock and the keypair slots' transition lock, are never held around a
    /// table operation.
    ///
    /// A view that meets a writer starts again once it is done: under a stream of writes to its
    /// shards it can take several rounds, with no bound in principle, each round a writer's
    /// progress (not measured under handshake load: the benchmarks' bursts run without
    /// handshakes). That `try_read` refuses while a writer only waits is the behaviour of the
    /// standard library's lock on Linux (futex), not a documented promise: where it lets readers
    /// in past a waiting writer, writers could starve behind views (there is still no deadlock).
    pub fn read_shards(&self, indices: &[u32]) -> ShardReads<'_, V> {
        let mut shard = [0u16; MAX_READS];
        let mut n = 0;
        for &index in indices {
            let s = (index as usize & (SHARDS - 1)) as u16;
            if n < MAX_READS && !shard[..n].contains(&s) {
                shard[n] = s;
                n += 1;
            }
        }
        shard[..n].sort_unstable();
        'again: loop {
            let mut guards: [Option<RwLockReadGuard<'_, Slots<V>>>; MAX_READS] = Default::default();
            for (guard, &s) in guards.iter_mut().zip(&shard[..n]) {
                let lock = &self.shards[usize::from(s)].map;
                match lock.try_read() {
                    Ok(g) => *guard = Some(g),
                    Err(TryLockError::Poisoned(e)) => *guard = Some(e.into_inner()),
                    Err(TryLockError::WouldBlock) => {
                        // A writer has it or waits for it: let everything go, wait for the
                        // writer with nothing held, and start again.
                        drop(guards);
                        drop(lock.read().unwrap_or_else(PoisonError::into_inner));
                        continue 'again;
                    }
                }
            }
            return ShardReads { shard, guards, n };
        }
    }
}

/// Read locks on a few shards of an [`IndexTable`] (see [`IndexTable::read_shards`]).
pub struct ShardReads<'a, V> {
    /// The shards held, ascending (the first `n`).
    shard: [u16; MAX_READS],
    guards: [Option<RwLockReadGuard<'a, Slots<V>>>; MAX_READS],
    n: usize,
}

impl<V> core::fmt::Debug for ShardReads<'_, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShardReads").field("shards", &&self.shard[..self.n]).finish()
    }
}

impl<V> ShardReads<'_, V> {
    /// The value at `index`, borrowed for as long as the view holds its shard; `None` if absent
    /// or if the view does not hold its shard.
    #[inline]
    pub fn get(&self, index: u32) -> Option<&V> {
        let s = (index as usize & (SHARDS - 1)) as u16;
        let k = self.shard[..self.n].binary_search(&s).ok()?;
        self.guards.get(k)?.as_ref()?.get(index)
    }

    /// How many shards the view holds.
    pub fn shards(&self) -> usize {
        self.n
    }
}

impl<V: Clone> IndexTable<V> {
    /// A clone of the value at `index` (a data-path lookup: one shared lock, one probe).
    #[inline]
    pub fn get(&self, index: u32) -> Option<V> {
        self.read(index).get(index).cloned()
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

    /// An RNG that hands out the given values, in order (then zeros).
    struct Scripted(std::vec::IntoIter<u32>);
    impl RngCore for Scripted {
        fn next_u32(&mut self) -> u32 {
            self.0.next().unwrap_or(0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            rand_core::impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for Scripted {}

    #[test]
    fn one_crowded_shard_against_a_model() {
        // Every index in shard 0x142, so one open-addressed array takes them all: it grows many
        // times, and random removals shift runs back across the array's end. After every step
        // the table must agree with a HashMap about every index ever used.
        use rand::{Rng, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let table = IndexTable::<u64>::new();
        let mut model = std::collections::HashMap::new();
        let mut used = Vec::new();
        for step in 0..6000u64 {
            let op = rng.gen_range(0..10);
            if op < 6 || model.is_empty() {
                // Often an index already present: insert_new must skip it (and take the next).
                let taken = model.keys().copied().nth(rng.gen_range(0..model.len().max(1)));
                let fresh = (rng.gen::<u32>() << 10) | 0x142;
                let script = match taken {
                    Some(t) if rng.gen_bool(0.3) => vec![t, fresh],
                    _ => vec![fresh],
                };
                // The first draw not taken; none (a fresh draw repeated one): a later draw.
                let want = script.iter().copied().find(|i| !model.contains_key(i));
                let got = table.insert_new(&mut Scripted(script.into_iter()), step);
                assert!(!model.contains_key(&got), "{got:#x} handed out twice");
                if let Some(want) = want {
                    assert_eq!(got, want);
                }
                model.insert(got, step);
                used.push(got);
            } else {
                let victim = used[rng.gen_range(0..used.len())];
                match op {
                    6..=7 => assert_eq!(table.remove(victim), model.remove(&victim)),
                    8 => {
                        let odd = |v: &u64| v % 2 == 1;
                        let want = model.get(&victim).copied().filter(odd);
                        assert_eq!(table.remove_if(victim, odd), want);
                        if want.is_some() {
                            model.remove(&victim);
                        }
                    }
                    _ => {
                        assert_eq!(table.replace(victim, step), model.contains_key(&victim));
                        if let Some(v) = model.get_mut(&victim) {
                            *v = step;
                        }
                    }
                }
            }
            assert_eq!(table.len(), model.len());
            if step % 97 == 0 || step > 5900 {
                for &i in &used {
                    assert_eq!(table.get(i), model.get(&i).copied(), "index {i:#x} at step {step}");
                }
            }
        }
        let map = table.read(0x142);
        assert!(map.slots.len() >= 64 && map.len * 4 <= map.slots.len() * 3);
    }

    #[test]
    fn the_prefetch_hint_points_at_the_home_slot() {
        let table = IndexTable::<u64>::new();
        // No array yet: no hint, and prefetching is a no-op.
        assert_eq!(table.hint(5), None);
        table.prefetch(5);
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let indices: Vec<u32> = (0..20_000u64).map(|v| table.insert_new(&mut rng, v)).collect();
        let mut at_home = 0;
        for &i in &indices {
            let map = table.read(i);
            let slot = map.find(i).expect("present");
            let base = map.slots.as_ptr() as usize;
            let size = core::mem::size_of::<Option<(u32, u64)>>();
            let hint = table.hint(i).expect("a hint");
            // The hint is the home slot of the current array (published at every growth).
            assert_eq!(hint, base + home(i, map.bits) * size);
            if hint == base + slot * size {
                at_home += 1;
            }
            table.prefetch(i);
        }
        // At most 3/4 full: most entries sit in their home slot.
        assert!(at_home * 2 > indices.len(), "{at_home} of {} at home", indices.len());
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

    /// A read view answers for the shards it holds (each once, whatever the order and
    /// repetitions of the indices it was given), and nothing for the others.
    #[test]
    fn a_read_view_answers_for_its_shards_only() {
        let table = IndexTable::<u64>::new();
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let entries: Vec<(u32, u64)> = (0..2000u64).map(|v| (table.insert_new(&mut rng, v), v)).collect();
        let asked: Vec<u32> = entries.iter().take(40).map(|&(i, _)| i).chain([entries[3].0, entries[0].0]).collect();
        let view = table.read_shards(&asked);
        let distinct: HashSet<usize> = asked.iter().map(|&i| i as usize & (SHARDS - 1)).collect();
        assert_eq!(view.shards(), distinct.len().min(MAX_READS));
        let held: HashSet<u16> = view.shard[..view.n].iter().copied().collect();
        assert!(view.shard[..view.n].windows(2).all(|w| w[0] < w[1]), "ascending, each once");
        for &(i, v) in &entries {
            let shard = (i as usize & (SHARDS - 1)) as u16;
            assert_eq!(view.get(i).copied(), held.contains(&shard).then_some(v), "index {i:#x}");
        }
        // An absent index in a held shard just misses.
        let absent =
            (0..).map(|k: u32| (entries[0].0 & (SHARDS as u32 - 1)) | (k << 10)).find(|&i| table.get(i).is_none());
        assert_eq!(absent.and_then(|i| view.get(i)), None);
        drop(view);
        assert_eq!(table.read_shards(&[]).shards(), 0);
    }

    /// A writer to a shard a view holds waits for the view to go; a view waiting for a writer
    /// holds no shard meanwhile; views and writers on many threads, over random shard sets,
    /// never deadlock.
    #[test]
    fn views_hold_off_writers_and_never_deadlock() {
        let table = Arc::new(IndexTable::<u64>::new());
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let entries: Arc<Vec<(u32, u64)>> =
            Arc::new((0..4096u64).map(|v| (table.insert_new(&mut rng, v), v)).collect());
        let (index, value) = entries[7];
        let view = table.read_shards(&[index]);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let writer = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                started_tx.send(()).unwrap();
                assert!(table.replace(index, value + 1));
            })
        };
        started_rx.recv().unwrap();
        // The writer waits once the shard refuses a new reader while the view still holds it.
        let lock = &table.shards[index as usize & (SHARDS - 1)].map;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock.try_read().is_ok() {
            assert!(std::time::Instant::now() < deadline, "the writer never waited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!writer.is_finished(), "the writer went past the view's read lock");
        assert_eq!(view.get(index), Some(&value));
        // A view that wants that shard and a lower one lets the lower one go while it waits: a
        // writer of the lower shard gets through meanwhile (a view holding it while waiting for
        // the other would keep that writer out until the first view goes).
        let shard = |i: u32| i as usize & (SHARDS - 1);
        let (lower, lower_value) =
            *entries.iter().find(|&&(i, _)| shard(i) < shard(index)).expect("an entry in a lower shard");
        let waiting_view = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || table.read_shards(&[index, lower]).get(lower).copied())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (wrote_tx, wrote_rx) = std::sync::mpsc::channel();
        let lower_writer = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || wrote_tx.send(table.replace(lower, lower_value + 1)).unwrap())
        };
        assert_eq!(
            wrote_rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true),
            "a view held a shard while it waited for another"
        );
        lower_writer.join().unwrap();
        drop(view);
        writer.join().unwrap();
        assert_eq!(waiting_view.join().unwrap(), Some(lower_value + 1));
        assert_eq!(table.get(index), Some(value + 1));

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (table, entries, done) = (Arc::clone(&table), Arc::clone(&entries), done_tx.clone());
                std::thread::spawn(move || {
                    let mut rng = ChaCha20Rng::seed_from_u64(100 + t);
                    let mut ok = true;
                    for _ in 0..3000 {
                        let pick = |rng: &mut ChaCha20Rng| entries[rng.next_u32() as usize % entries.len()].0;
                        if t % 2 == 0 {
                            let asked: Vec<u32> = (0..32).map(|_| pick(&mut rng)).collect();
                            let view = table.read_shards(&asked);
                            ok &= asked.iter().all(|&i| view.get(i).is_some());
                        } else {
                            let i = pick(&mut rng);
                            ok &= table.get(i).is_some_and(|v| table.replace(i, v));
                        }
                    }
                    done.send(ok).unwrap();
                })
            })
            .collect();
        for _ in 0..4 {
            let ok = done_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("views and writers deadlocked");
            assert!(ok, "a view or a writer missed an entry");
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
