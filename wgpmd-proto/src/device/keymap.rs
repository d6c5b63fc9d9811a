//! Public key to peer: the map an initiation's decrypted static key is looked up in.
//!
//! The keys come from configuration, but lookups come from the network (any static key an
//! initiator chooses), so the hash is SipHash-1-3 keyed from the device's injected RNG (no OS
//! randomness, and an attacker cannot aim at buckets). A key is hashed once per lookup: the same
//! hash picks the shard and the bucket in it, and a lookup's hash serves the insert after it
//! ([`KeyMap::hash`], [`KeyMap::get_hashed`], [`KeyMap::insert_hashed`]; a peer added by
//! `wg setconf` has its key hashed twice in all, where it took eight hashes in four lookups
//! before; a `wg set` adds the capacity check's lookup, and the replay on the published copy
//! while the journal records). The map is
//! split into [`SHARDS`] tables by hash bits the tables themselves do not use for bucket choice,
//! so when a shard grows it rehashes 1/256 of the peers: at four million peers a growth step
//! moves about 16,000 entries (well under a millisecond) instead of all of them at once.

use core::hash::Hasher;

use hashbrown::HashTable;
use rand_core::{CryptoRng, RngCore};
use siphasher::sip::SipHasher13;

use super::PeerId;
use crate::messages::KEY_LEN;

/// Number of shards (a power of two).
pub(crate) const SHARDS: usize = 256;

/// A key's hash (SipHash-1-3 with the map's key): computed once per key and used both to pick
/// the shard and inside it, and reused from a lookup for the insert that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyHash(u64);

/// One shard: (public key, id) entries, placed by [`KeyHash`].
type Shard = HashTable<([u8; KEY_LEN], PeerId)>;

/// Public key to [`PeerId`], sharded.
#[derive(Clone)]
pub(crate) struct KeyMap {
    k0: u64,
    k1: u64,
    shards: Box<[Shard]>,
    len: usize,
}

impl KeyMap {
    /// An empty map with a hash key drawn from `rng`.
    pub(crate) fn new<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let (k0, k1) = (rng.next_u64(), rng.next_u64());
        KeyMap { k0, k1, shards: (0..SHARDS).map(|_| HashTable::new()).collect(), len: 0 }
    }

    /// The hash of `key`.
    #[inline]
    pub(crate) fn hash(&self, key: &[u8; KEY_LEN]) -> KeyHash {
        KeyHash(sip(self.k0, self.k1, key))
    }

    /// The shard of a hash: bits 48..56. The tables take bucket bits from the bottom and their
    /// control bytes from the top 7 bits, so these are free.
    #[inline]
    fn shard(h: KeyHash) -> usize {
        (h.0 >> 48) as usize & (SHARDS - 1)
    }

    pub(crate) fn get(&self, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`KeyMap::get`] with the key's hash already computed ([`KeyMap::hash`]).
    #[inline]
    pub(crate) fn get_hashed(&self, h: KeyHash, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        self.shards.get(Self::shard(h))?.find(h.0, |(k, _)| k == key).map(|&(_, id)| id)
    }

    /// Insert or replace; returns the previous id.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: [u8; KEY_LEN], id: PeerId) -> Option<PeerId> {
        self.insert_hashed(self.hash(&key), key, id)
    }

    /// `KeyMap::insert` with the key's hash already computed ([`KeyMap::hash`]).
    pub(crate) fn insert_hashed(&mut self, h: KeyHash, key: [u8; KEY_LEN], id: PeerId) -> Option<PeerId> {
        let (k0, k1) = (self.k0, self.k1);
        let shard = self.shards.get_mut(Self::shard(h))?;
        match shard.entry(h.0, |(k, _)| *k == key, |(k, _)| sip(k0, k1, k)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => Some(core::mem::replace(&mut e.get_mut().1, id)),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key, id));
                self.len += 1;
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        let h = self.hash(key);
        let shard = self.shards.get_mut(Self::shard(h))?;
        let ((_, id), _) = shard.find_entry(h.0, |(k, _)| k == key).ok()?.remove();
        self.len -= 1;
        Some(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.shards.iter().flat_map(|m| m.iter().map(|&(_, id)| id))
    }
}

/// SipHash-1-3 of a key under (`k0`, `k1`).
#[inline]
fn sip(k0: u64, k1: u64, key: &[u8; KEY_LEN]) -> u64 {
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(key);
    h.finish()
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
        let fullest = m.shards.iter().map(HashTable::len).max().unwrap();
        assert!(fullest < 100, "10,000 keys over 256 shards: fullest has {fullest}");
        assert_eq!(m.remove(&keys[7]), Some(7));
        assert_eq!(m.remove(&keys[7]), None);
        assert_eq!((m.len(), m.get(&keys[7])), (9_999, None));
        assert_eq!(m.ids().count(), 9_999);
    }

    #[test]
    fn one_hash_serves_lookup_and_insert_and_is_keyed() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut m = KeyMap::new(&mut rng);
        let key = [7u8; 32];
        let h = m.hash(&key);
        assert_eq!(m.get_hashed(h, &key), None);
        assert_eq!(m.insert_hashed(h, key, 1), None);
        assert_eq!((m.get(&key), m.get_hashed(h, &key), m.len()), (Some(1), Some(1), 1));
        assert_eq!(m.insert_hashed(h, key, 2), Some(1), "replaces, not a second entry");
        assert_eq!((m.get(&key), m.len()), (Some(2), 1));
        // Grow the shard of `key` well past its first capacity: entries are rehashed with the
        // map's key and all stay findable.
        let shard = KeyMap::shard(h);
        let mut same_shard = Vec::new();
        let mut k = [0u8; 32];
        for i in 0u32.. {
            k[..4].copy_from_slice(&i.to_le_bytes());
            if KeyMap::shard(m.hash(&k)) == shard {
                same_shard.push(k);
                m.insert(k, 100 + i);
                if same_shard.len() == 500 {
                    break;
                }
            }
        }
        assert!(m.shards[shard].len() == 501);
        for k in &same_shard {
            let i = u32::from_le_bytes(k[..4].try_into().unwrap());
            assert_eq!(m.get(k), Some(100 + i));
        }
        assert_eq!(m.get(&key), Some(2));
        // Another map's key hashes the same bytes differently.
        let other = KeyMap::new(&mut rng);
        assert_ne!(other.hash(&key), h);
    }
}
