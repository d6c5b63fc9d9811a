//! A worker's AEAD key schedules for the keypairs it used last.
//!
//! A [`Keypair`] keeps its two keys as 32 raw bytes each, wiped on drop, because ring's prepared
//! key type is 544 bytes (it is sized for AES-GCM) and is not wiped. Preparing ring's key from
//! the raw bytes costs three copies of those 544 bytes inside ring, about 150 instructions and
//! 20 to 40 ns here (docs/PERFORMANCE.md), a tenth of sealing a 64-byte packet. So the data path
//! keeps prepared keys in a small cache owned by the caller (the worker's `Output`): packets of
//! one keypair, which arrive and leave in trains, prepare its key once per train.
//!
//! An entry is tagged with the keypair's address and the direction (a scan of [`WAYS`] words
//! finds it), and holds a copy of the raw key it was prepared from (a [`Secret`], wiped when
//! replaced or dropped). A lookup is a hit only if that copy also equals the keypair's key,
//! compared without branching on the bytes: the prepared key is a function of the raw key
//! alone, so a hit is right even if the tagged keypair is gone and another took its address, and
//! the cache needs no reference to a keypair (no reference-count traffic, nothing kept alive).
//! Entries are replaced round robin. A miss costs what preparing per message costs, plus the
//! scan and the 32-byte compare and copy. What the cache keeps after a keypair is gone, until
//! the entry is replaced or [`KeyCache::clear`]ed, is the raw copy (wiped then) and ring's
//! prepared copy (not wiped: ring's type cannot be).

use super::keypair::Keypair;
use crate::crypto::{AeadKey, Secret};

/// Entries in a cache: both directions of eight busy keypairs.
pub const WAYS: usize = 16;

struct Entry {
    raw: Secret,
    key: AeadKey,
}

/// Prepared AEAD keys of recently used keypairs (see the module documentation).
pub struct KeyCache {
    /// Keypair address | direction (1: sending) of each entry; 0 for none.
    tags: [usize; WAYS],
    entries: [Option<Entry>; WAYS],
    /// The entry the next miss replaces.
    next: usize,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyCache").field("entries", &self.entries.iter().flatten().count()).finish()
    }
}

/// Whether two keys are equal, without a branch or an early exit on their bytes.
#[inline]
fn same_key(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (x, y) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y));
        if let (Ok(x), Ok(y)) = (x, y) {
            diff |= u64::from_ne_bytes(x) ^ u64::from_ne_bytes(y);
        }
    }
    diff == 0
}

impl KeyCache {
    /// An empty cache.
    pub const fn new() -> Self {
        KeyCache { tags: [0; WAYS], entries: [const { None }; WAYS], next: 0 }
    }

    /// Forget every prepared key (the raw copies are wiped).
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// The prepared key for `raw`, the key of `kp` for sealing (`sending`) or opening: from the
    /// cache, or prepared now.
    #[inline]
    pub(crate) fn key(&mut self, kp: &Keypair, sending: bool, raw: &Secret) -> &AeadKey {
        // Keypairs are 64-byte aligned, so the low bit is free for the direction.
        let tag = kp as *const Keypair as usize | usize::from(sending);
        let i = match self.tags.iter().position(|&t| t == tag) {
            Some(i) => i,
            None => {
                let i = self.next % WAYS;
                self.next = (i + 1) % WAYS;
                i
            }
        };
        let i = i % WAYS;
        self.tags[i] = tag;
        let entry = &mut self.entries[i];
        if !entry.as_ref().is_some_and(|e| same_key(&e.raw.0, &raw.0)) {
            *entry = None;
        }
        &entry.get_or_insert_with(|| Entry { raw: raw.clone(), key: AeadKey::new(&raw.0) }).key
    }

    /// Entries in use (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::time::Timestamp;
    use std::sync::Arc;

    const NOW: Timestamp = Timestamp::from_secs(1);

    fn pair(seed: u8) -> (Arc<Keypair>, Arc<Keypair>) {
        let (a, b) = (Secret([seed; 32]), Secret([seed ^ 0xff; 32]));
        let idx = u32::from(seed);
        (
            Arc::new(Keypair::new(&a, &b, idx, idx + 100, true, NOW)),
            Arc::new(Keypair::new(&b, &a, idx + 100, idx, false, NOW)),
        )
    }

    fn sealed_with(kp: &Arc<Keypair>, cache: &mut KeyCache, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 16 + payload.len() + 16 + 16];
        buf[16..16 + payload.len()].copy_from_slice(payload);
        let n = kp.seal_cached(cache, NOW, &mut buf, payload.len(), 1420).unwrap();
        buf.truncate(n);
        buf
    }

    /// Cached and uncached sealing and opening agree byte for byte, for more keypairs than the
    /// cache holds, in both directions, and a hit needs no new entry.
    #[test]
    fn cached_keys_seal_and_open_like_fresh_ones() {
        let mut cache = KeyCache::new();
        let pairs: Vec<_> = (1..=6u8).map(pair).collect();
        for round in 0..3 {
            for (i, (a, b)) in pairs.iter().enumerate() {
                let payload = [i as u8, round as u8, 7, 7];
                let m = sealed_with(a, &mut cache, &payload);
                // The peer's uncached open takes it, and its cached open of a second message too.
                assert!(b.open(NOW, &mut m.clone()).is_ok(), "pair {i} round {round}");
                let mut m2 = sealed_with(a, &mut cache, &payload);
                let r = b.open_cached(&mut cache, NOW, &mut m2).unwrap();
                assert_eq!(&m2[r][..4], &payload);
            }
        }
        assert!(cache.len() > 1 && cache.len() <= WAYS);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    /// A tag that matches with a different raw key (a keypair gone and another at its address)
    /// is a miss that prepares the right key; real keypairs still get their own keys.
    #[test]
    fn a_slot_holds_the_key_it_was_made_from() {
        let mut cache = KeyCache::new();
        let (a, b) = pair(1);
        let (c, d) = pair(2);
        for _ in 0..3 {
            for (s, r) in [(&a, &b), (&c, &d)] {
                // Both keys asked under one keypair's tag, alternately.
                let raw = if Arc::ptr_eq(s, &a) { [1u8; 32] } else { [2u8; 32] };
                let key = cache.key(&a, true, &Secret(raw)).seal_in_place(9, &[], &mut [0u8; 4]);
                let want = AeadKey::new(&raw).seal_in_place(9, &[], &mut [0u8; 4]);
                assert_eq!(key, want, "the slot's key is the one asked for");
                let mut m = sealed_with(s, &mut cache, b"z");
                assert!(r.open(NOW, &mut m).is_ok());
            }
        }
        assert!(cache.len() >= 1);
        assert!(
            same_key(&[7; 32], &[7; 32])
                && !same_key(&[7; 32], &{
                    let mut k = [7u8; 32];
                    k[31] = 8;
                    k
                })
        );
    }
}
