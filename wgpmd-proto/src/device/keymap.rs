//! Public key to peer: the map an initiation's decrypted static key is looked up in.
//!
//! The keys come from configuration, but lookups come from the network (any static key an
//! initiator chooses), so the hash is SipHash-1-3 keyed from the device's injected RNG (no OS
//! randomness, and an attacker cannot aim at buckets). The map is split into [`SHARDS`]
//! `HashMap`s by hash bits the maps themselves do not use for bucket choice, so when a shard
//! grows it rehashes 1/256 of the peers: at four million peers a growth step moves about 16,000
//! entries (well under a millisecond) instead of all of them at once (tens of milliseconds with
//! the device's configuration lock held).

use core::hash::{BuildHasher, Hasher};
use std::collections::HashMap;

use rand_core::{CryptoRng, RngCore};
use siphasher::sip::SipHasher13;

use super::PeerId;
use crate::messages::KEY_LEN;

/// Number of shards (a power of two).
pub(crate) const SHARDS: usize = 256;

/// SipHash-1-3 with a per-device key.
#[derive(Clone, Copy)]
pub(crate) struct KeyedSip {
    k0: u64,
    k1: u64,
}

impl BuildHasher for KeyedSip {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// Public key to [`PeerId`], sharded.
#[derive(Clone)]
pub(crate) struct KeyMap {
    hasher: KeyedSip,
    shards: Box<[HashMap<[u8; KEY_LEN], PeerId, KeyedSip>]>,
    len: usize,
}

impl KeyMap {
    /// An empty map with a hash key drawn from `rng`.
    pub(crate) fn new<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let hasher = KeyedSip { k0: rng.next_u64(), k1: rng.next_u64() };
        KeyMap { hasher, shards: (0..SHARDS).map(|_| HashMap::with_hasher(hasher)).collect(), len: 0 }
    }

    /// The shard of `key`: hash bits 48..56. The maps take bucket bits from the bottom and
    /// their control bytes from the top 7 bits, so these are free.
    fn shard(&self, key: &[u8; KEY_LEN]) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        (h.finish() >> 48) as usize & (SHARDS - 1)
    }

    pub(crate) fn get(&self, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        self.shards.get(self.shard(key))?.get(key).copied()
    }

    /// Insert or replace; returns the previous id.
    pub(crate) fn insert(&mut self, key: [u8; KEY_LEN], id: PeerId) -> Option<PeerId> {
        let i = self.shard(&key);
        let old = self.shards.get_mut(i)?.insert(key, id);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        let i = self.shard(key);
        let old = self.shards.get_mut(i)?.remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.shards.iter().flat_map(|m| m.values().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn insert_get_remove_and_spread() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut m = KeyMap::new(&mut rng);
        let keys: Vec<[u8; 32]> = (0..10_000u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes()); // similar keys still spread
                k
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.insert(*k, i as PeerId), None);
        }
        assert_eq!(m.insert(keys[5], 99), Some(5));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&keys[5]), Some(99));
        assert_eq!(m.get(&keys[7]), Some(7));
        assert_eq!(m.get(&[0xff; 32]), None);
        let fullest = m.shards.iter().map(HashMap::len).max().unwrap();
        assert!(fullest < 100, "10,000 keys over 256 shards: fullest has {fullest}");
        assert_eq!(m.remove(&keys[7]), Some(7));
        assert_eq!(m.remove(&keys[7]), None);
        assert_eq!((m.len(), m.get(&keys[7])), (9_999, None));
        assert_eq!(m.ids().count(), 9_999);
    }
}
