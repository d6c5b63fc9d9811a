//! A worker's AEAD key schedules for the keypairs it used last.
//!
//! A [`Keypair`] keeps its two keys as 32 raw bytes each, wiped on drop, because ring's prepared
//! key type is 544 bytes (it is sized for AES-GCM) and is not wiped. Preparing ring's key from
//! the raw bytes costs three copies of those 544 bytes inside ring, about 150 instructions and
//! 20 to 40 ns here (docs/PERFORMANCE.md), which is a tenth of sealing a 64-byte packet. So the
//! data path keeps the prepared keys of the last [`WAYS`] (keypair, direction) pairs it used in
//! a small cache owned by the caller (the worker's `Output`): packets of one flow, which arrive
//! and leave in trains, prepare their key once per train. A miss costs what preparing per
//! message costs.
//!
//! An entry names its keypair by a `Weak` reference: while the entry exists the keypair's
//! allocation cannot be reused, so a pointer match can only be the same keypair, and the entry
//! does not keep the keypair (or its wiped-on-drop keys) alive. What it does keep is ring's copy
//! of the key schedule, until the entry is replaced or [`KeyCache::clear`]ed; for
//! ChaCha20-Poly1305 that copy is the key itself, so a keypair's key can outlive its zeroing in
//! at most the caches of the workers that used it last, as it would in ring's own key objects.

use std::sync::{Arc, Weak};

use super::keypair::Keypair;
use crate::crypto::AeadKey;

/// Entries in a cache: both directions of four busy keypairs.
pub const WAYS: usize = 8;

struct Entry {
    keypair: Weak<Keypair>,
    sending: bool,
    key: AeadKey,
}

/// Prepared AEAD keys of the most recently used keypairs (see the module documentation).
pub struct KeyCache {
    entries: [Option<Entry>; WAYS],
    /// The entry the next miss replaces (round robin).
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

impl KeyCache {
    /// An empty cache.
    pub const fn new() -> Self {
        KeyCache { entries: [const { None }; WAYS], next: 0 }
    }

    /// Forget every prepared key.
    pub fn clear(&mut self) {
        self.entries = [const { None }; WAYS];
        self.next = 0;
    }

    /// The prepared key of `kp` for sealing (`sending`) or opening, from the cache or prepared
    /// now from `raw` (the keypair's key for that direction).
    #[inline]
    pub(crate) fn key(&mut self, kp: &Arc<Keypair>, sending: bool, raw: &[u8; 32]) -> &AeadKey {
        let ptr = Arc::as_ptr(kp);
        let hit = self
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.sending == sending && Weak::as_ptr(&e.keypair) == ptr));
        let i = match hit {
            Some(i) => i,
            None => {
                let i = self.next % WAYS;
                self.next = (i + 1) % WAYS;
                self.entries[i] = None;
                i
            }
        };
        &self.entries[i % WAYS]
            .get_or_insert_with(|| Entry { keypair: Arc::downgrade(kp), sending, key: AeadKey::new(raw) })
            .key
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
        assert_eq!(cache.len(), WAYS, "twelve (keypair, direction) pairs through eight entries");
        let (a, _) = &pairs[5];
        let before = cache.next;
        sealed_with(a, &mut cache, b"hit");
        assert_eq!(cache.next, before, "the most recent keypair hits");
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    /// An entry whose keypair was dropped matches no later keypair, and does not keep it alive.
    #[test]
    fn a_dropped_keypair_is_not_kept_alive_nor_matched() {
        let mut cache = KeyCache::new();
        let (a, b) = pair(1);
        sealed_with(&a, &mut cache, b"x");
        let weak = Arc::downgrade(&a);
        drop(a);
        assert_eq!(weak.strong_count(), 0, "the cache holds no strong reference");
        let (c, d) = pair(2);
        let mut m = sealed_with(&c, &mut cache, b"y");
        assert!(d.open(NOW, &mut m).is_ok(), "the new keypair's own key sealed it");
        drop(b);
    }
}
