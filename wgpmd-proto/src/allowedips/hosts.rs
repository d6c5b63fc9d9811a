//! The IPv4 host routes (/32 prefixes), kept in an open-addressed table as well as in the trie.
//!
//! A carrier's subscriber is routed by a /32, and a /32 is the longest prefix there is: an
//! address that is some peer's /32 routes to that peer whatever else the table holds. So the
//! lookup asks this table first, one probe on one cache line in the common case, and walks the
//! trie (a direct-table load, then up to four nodes, two or three of them cold in a table of a
//! million prefixes) only when the address is no host route.
//!
//! Linear probing over 8-byte slots (the address, and the peer's slot number plus one; zero is
//! a free slot), Fibonacci hashing (subscribers' addresses are often consecutive: the multiply
//! spreads them) mapped onto any table size by a multiply-shift, deletion by backward shift (no
//! tombstones, so probe sequences never grow with churn). The table is at most 75 % full, and
//! grown (or shrunk by `shrink_to_fit`) to 60 %, so while routes are added a /32 costs 10.7 to
//! about 13.3 bytes of it (more after removals, until the table is compacted): the bound on a
//! peer's memory counts it twice (both copies of the tables). The keys are the
//! operator's configuration; a packet's address only looks one up, and every probe sequence
//! ends at a free slot, which the load limit guarantees.

use super::PeerSlot;

/// An open-addressed map from IPv4 address (as `u32`) to peer; see the module documentation.
#[derive(Clone)]
pub(super) struct Hosts<P> {
    slots: Vec<u64>,
    len: usize,
    _peer: core::marker::PhantomData<P>,
}

/// A free slot.
const FREE: u64 = 0;

/// A slot holding `key` routed to `peer`.
#[inline]
fn pack<P: PeerSlot>(key: u32, peer: P) -> u64 {
    // Peer slots are dense numbers far below 2^32 - 1 (the device caps its peers at 2^22); the
    // one number that would not fit is refused in debug builds.
    debug_assert!(peer.slot() < u32::MAX as usize, "peer slot {} too large", peer.slot());
    (u64::from(key) << 32) | (peer.slot() as u64 + 1)
}

#[inline]
fn key_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

#[inline]
fn peer_of<P: PeerSlot>(slot: u64) -> P {
    P::from_slot((slot as u32 as usize).wrapping_sub(1))
}

impl<P: PeerSlot> Hosts<P> {
    /// An empty table; allocates nothing until the first insert.
    pub(super) const fn new() -> Self {
        Hosts { slots: Vec::new(), len: 0, _peer: core::marker::PhantomData }
    }

    /// The home slot of `key` in a table of `cap` slots: the 64-bit Fibonacci product scaled
    /// to `0..cap` (its high bits, which the multiply mixes best, decide).
    #[inline]
    fn home(key: u32, cap: usize) -> usize {
        let h = u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((u128::from(h) * cap as u128) >> 64) as usize
    }

    /// The slot after `i` (wrapping).
    #[inline]
    fn next(i: usize, cap: usize) -> usize {
        if i + 1 == cap {
            0
        } else {
            i + 1
        }
    }

    /// The table size that holds `len` routes 60 % full.
    fn size_for(len: usize) -> usize {
        (len * 5 / 3 + 1).max(8)
    }

    /// The peer whose host route `key` is.
    #[inline]
    pub(super) fn get(&self, key: u32) -> Option<P> {
        let cap = self.slots.len();
        if cap == 0 {
            return None;
        }
        let mut i = Self::home(key, cap);
        // At most three quarters of the slots are used, so a free slot ends every sequence;
        // the bound only keeps the loop finite in form.
        for _ in 0..cap {
            match self.slots.get(i).copied() {
                None | Some(FREE) => return None,
                Some(s) if key_of(s) == key => return Some(peer_of(s)),
                Some(_) => i = Self::next(i, cap),
            }
        }
        None
    }

    /// A cache hint: start loading `key`'s home slot (a burst probes its addresses after
    /// starting every one's load).
    #[inline]
    pub(super) fn prefetch(&self, key: u32) {
        let cap = self.slots.len();
        if cap != 0 {
            if let Some(s) = self.slots.get(Self::home(key, cap)) {
                wgpmd_aead::prefetch::read(s);
            }
        }
    }

    /// Route `key` to `peer` (replacing the peer it routed to).
    pub(super) fn insert(&mut self, key: u32, peer: P) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize(Self::size_for(self.len + 1));
        }
        let cap = self.slots.len();
        let mut i = Self::home(key, cap);
        loop {
            match self.slots[i] {
                FREE => {
                    self.slots[i] = pack(key, peer);
                    self.len += 1;
                    return;
                }
                s if key_of(s) != key => i = Self::next(i, cap),
                _ => {
                    self.slots[i] = pack(key, peer);
                    return;
                }
            }
        }
    }

    /// Remove `key` if it routes to `peer`.
    pub(super) fn remove(&mut self, key: u32, peer: P) {
        let cap = self.slots.len();
        if cap == 0 {
            return;
        }
        let mut i = Self::home(key, cap);
        loop {
            match self.slots[i] {
                FREE => return,
                s if key_of(s) == key => {
                    if peer_of::<P>(s) != peer {
                        return;
                    }
                    break;
                }
                _ => i = Self::next(i, cap),
            }
        }
        // Backward shift: move each later entry of the run whose home is not in the cyclic
        // range (i, j] into the hole, until a free slot ends the run.
        self.len -= 1;
        let mut j = i;
        loop {
            self.slots[i] = FREE;
            loop {
                j = Self::next(j, cap);
                let s = self.slots[j];
                if s == FREE {
                    return;
                }
                let h = Self::home(key_of(s), cap);
                let stays = if i <= j { i < h && h <= j } else { i < h || h <= j };
                if !stays {
                    self.slots[i] = self.slots[j];
                    i = j;
                    break;
                }
            }
        }
    }

    /// Remove every route, keeping the allocation.
    pub(super) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = FREE);
        self.len = 0;
    }

    /// Shrink to the size that holds the routes 60 % full (none when empty).
    pub(super) fn shrink_to_fit(&mut self) {
        if self.len == 0 {
            self.slots = Vec::new();
        } else if Self::size_for(self.len) < self.slots.len() {
            self.resize(Self::size_for(self.len));
        }
    }

    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![FREE; cap]);
        self.len = 0;
        for s in old.into_iter().filter(|&s| s != FREE) {
            self.insert(key_of(s), peer_of::<P>(s));
        }
    }

    /// Heap bytes held, by capacity.
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<u64>()
    }

    /// Routes held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::Rng;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// Random inserts, replacements and removals (by the right and a wrong peer) of clustered
    /// and consecutive keys, against a `HashMap`; every key ever used is looked up after each
    /// step of a round, and the table shrinks and grows again.
    #[test]
    fn agrees_with_a_hash_map_under_churn() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut t: Hosts<u32> = Hosts::new();
        let mut m: HashMap<u32, u32> = HashMap::new();
        let mut keys: Vec<u32> = Vec::new();
        for round in 0..20 {
            for _ in 0..500 {
                let k = match rng.gen_range(0..3) {
                    0 => 0x0a00_0000 + rng.gen_range(0..2000),
                    1 => rng.gen(),
                    _ => keys.get(rng.gen_range(0..keys.len().max(1))).copied().unwrap_or(0),
                };
                let p = rng.gen_range(0..50);
                t.insert(k, p);
                m.insert(k, p);
                keys.push(k);
            }
            for _ in 0..400 {
                let k = keys[rng.gen_range(0..keys.len())];
                let p = match m.get(&k) {
                    Some(&p) if rng.gen_bool(0.8) => p,
                    _ => rng.gen_range(0..50),
                };
                t.remove(k, p);
                if m.get(&k) == Some(&p) {
                    m.remove(&k);
                }
            }
            if round % 5 == 4 {
                t.shrink_to_fit();
            }
            assert_eq!(t.len(), m.len(), "round {round}");
            assert!(t.len() * 4 <= t.slots.len() * 3, "at most three quarters full");
            for &k in &keys {
                assert_eq!(t.get(k), m.get(&k).copied(), "round {round}, key {k:#x}");
            }
            for _ in 0..1000 {
                let k = rng.gen();
                assert_eq!(t.get(k), m.get(&k).copied());
            }
        }
        for (&k, &p) in &m.clone() {
            t.remove(k, p);
        }
        assert_eq!(t.len(), 0);
        assert!(keys.iter().all(|&k| t.get(k).is_none()));
        t.shrink_to_fit();
        assert_eq!(t.heap_bytes(), 0);
    }

    /// Grown one route at a time, the table stays between 60 % and 75 % full from a hundred
    /// routes on (its memory per route is bounded both ways), and after `shrink_to_fit` too.
    #[test]
    fn stays_between_three_fifths_and_three_quarters_full() {
        let mut t: Hosts<u32> = Hosts::new();
        for k in 0..200_000u32 {
            t.insert(k.wrapping_mul(2_654_435_761), k);
            let (len, cap) = (t.len() as f64, t.slots.len() as f64);
            assert!(len / cap <= 0.75, "{len} in {cap}");
            if k >= 100 {
                assert!(len / cap >= 0.59, "{len} in {cap}");
            }
        }
        for k in (0..200_000u32).step_by(2) {
            t.remove(k.wrapping_mul(2_654_435_761), k);
        }
        t.shrink_to_fit();
        let (len, cap) = (t.len() as f64, t.slots.len() as f64);
        assert!((0.59..=0.75).contains(&(len / cap)), "{len} in {cap}");
        for k in 0..200_000u32 {
            let want = (k % 2 == 1).then_some(k);
            assert_eq!(t.get(k.wrapping_mul(2_654_435_761)), want);
        }
    }
}
