//! A worker's AEAD key schedules for the keypairs it used last.
//!
//! A [`Keypair`] keeps its two keys as 32 raw bytes each, wiped on drop, because ring's prepared
//! key type is 544 bytes (it is sized for AES-GCM) and is not wiped. Preparing ring's key from
//! the raw bytes costs three copies of those 544 bytes inside ring, about 150 instructions and
//! 20 to 40 ns here (docs/PERFORMANCE.md), a tenth of sealing a 64-byte packet. So the data path
//! keeps prepared keys in a small cache owned by the caller (the worker's `Output`): packets of
//! one keypair, which arrive and leave in trains, prepare its key once per train.
//!
//! The cache is two-way set associative ([`SETS`] sets), an entry tagged with the keypair's
//! address and the direction. An entry holds a copy of the raw key it was prepared from (a
//! [`Secret`]: overwritten by the next key prepared in its place, wiped when dropped), and a
//! lookup is a hit only if that copy also equals the keypair's key, compared without branching
//! on the bytes: the prepared key is a function of the raw key alone, so a hit is right even if
//! the tagged keypair is gone and another took its address, and the cache needs no reference to
//! a keypair (no reference-count traffic, nothing kept alive).
//!
//! Filling an entry costs one more copy of the 544 bytes than preparing on the stack. When
//! lookups keep missing (a worker serving many peers' packets interleaved), the cache stops
//! filling except on every [`FILL_EVERY`]th miss, so a miss then costs the lookup and the
//! preparation, and a train that starts again is caught within a few packets.
//!
//! What the cache keeps after a keypair is gone, until the entry is reused or
//! [`KeyCache::clear`]ed, is the raw copy and ring's prepared copy (which cannot be wiped).

use super::keypair::Keypair;
use crate::crypto::{AeadKey, Secret};

/// Sets of two entries (a power of two): 64 entries in all, about 37 KB per worker. 16 entries
/// missed often with 16 peers interleaved (`wgpmd bench`: 64 B tx 0.42x ring, against 0.48x
/// with 64; docs/PERFORMANCE.md, "This session, same machine").
pub const SETS: usize = 32;
const ENTRIES: usize = 2 * SETS;
/// Misses in a row after which the cache fills only on every [`FILL_EVERY`]th miss.
pub const BYPASS_AFTER: u32 = 32;
/// While bypassing, one miss in this many fills an entry.
pub const FILL_EVERY: u32 = 8;

struct Entry {
    raw: Secret,
    key: AeadKey,
}

/// Prepared AEAD keys of recently used keypairs (see the module documentation).
pub struct KeyCache {
    /// Keypair address | direction (1: sending) of each entry; 0 for none.
    tags: [usize; ENTRIES],
    entries: [Option<Entry>; ENTRIES],
    /// Per set, the way the next fill replaces (the one not used last).
    victim: [u8; SETS],
    /// Misses since the last hit (saturating).
    misses: u32,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyCache")
            .field("entries", &self.entries.iter().flatten().count())
            .field("misses", &self.misses)
            .finish()
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
        KeyCache { tags: [0; ENTRIES], entries: [const { None }; ENTRIES], victim: [0; SETS], misses: 0 }
    }

    /// Forget every prepared key (the raw copies are wiped).
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Run `f` with the prepared key for `raw`, the key of `kp` for sealing (`sending`) or
    /// opening: from the cache, or prepared now (and kept, unless the cache is bypassing).
    #[inline]
    pub(crate) fn with_key<R>(
        &mut self,
        kp: &Keypair,
        sending: bool,
        raw: &Secret,
        f: impl FnOnce(&AeadKey) -> R,
    ) -> R {
        // Keypairs are 64-byte aligned, so the low bit is free for the direction.
        let addr = kp as *const Keypair as usize;
        let tag = addr | usize::from(sending);
        let set = ((addr >> 6 ^ addr >> 11 ^ addr >> 17) << 1 ^ usize::from(sending)) & (SETS - 1);
        let first = set * 2;
        let mut fill = None;
        for i in [first, first + 1] {
            if self.tags.get(i) != Some(&tag) {
                continue;
            }
            match self.entries.get(i) {
                Some(Some(e)) if same_key(&e.raw.0, &raw.0) => {
                    self.misses = 0;
                    if let Some(v) = self.victim.get_mut(set) {
                        *v = u8::from(i == first);
                    }
                    return f(&e.key);
                }
                // The tagged keypair is gone and another took its address: reuse the entry.
                _ => fill = Some(i),
            }
        }
        self.misses = self.misses.saturating_add(1);
        if self.misses > BYPASS_AFTER && !self.misses.is_multiple_of(FILL_EVERY) {
            return f(&AeadKey::new(&raw.0));
        }
        let victim = self.victim.get(set).copied().unwrap_or(0);
        let i = fill.unwrap_or(first + usize::from(victim)) % ENTRIES;
        if let Some(v) = self.victim.get_mut(set) {
            *v = u8::from(i == first);
        }
        self.tags[i] = tag;
        let key = match &mut self.entries[i] {
            Some(e) => {
                // Overwritten in place: the old raw copy is gone under the new bytes.
                e.raw.0 = raw.0;
                e.key = AeadKey::new(&raw.0);
                &e.key
            }
            slot @ None => &slot.insert(Entry { raw: raw.clone(), key: AeadKey::new(&raw.0) }).key,
        };
        f(key)
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
        assert!(cache.len() > 1 && cache.len() <= ENTRIES);
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
                let key = cache.with_key(&a, true, &Secret(raw), |k| k.seal_in_place(9, &[], &mut [0u8; 4]));
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

    /// Keys interleaved over more keypairs than the cache holds: after a run of misses the cache
    /// fills only now and then, and a keypair whose packets come in a train again is cached.
    #[test]
    fn misses_in_a_row_stop_filling_until_a_train_comes() {
        let mut cache = KeyCache::new();
        let pairs: Vec<_> = (1..=40u8).map(pair).collect();
        for round in 0..4 {
            for (a, b) in &pairs {
                let mut m = sealed_with(a, &mut cache, &[round]);
                assert!(b.open(NOW, &mut m).is_ok());
            }
        }
        // Bypassing: a miss that is not every FILL_EVERY-th fills nothing.
        cache.clear();
        cache.misses = BYPASS_AFTER + 1;
        let (c, d) = &pairs[1];
        let mut m = sealed_with(c, &mut cache, b"bypassed");
        assert!(d.open(NOW, &mut m).is_ok());
        assert_eq!((cache.len(), cache.misses), (0, BYPASS_AFTER + 2), "prepared on the stack only");
        cache.misses = FILL_EVERY * 10 - 1;
        sealed_with(c, &mut cache, b"filled");
        assert_eq!(cache.len(), 1, "every FILL_EVERY-th miss fills");
        let (a, b) = &pairs[0];
        for i in 0..FILL_EVERY + 2 {
            let mut m = sealed_with(a, &mut cache, &[9]);
            assert!(b.open(NOW, &mut m).is_ok(), "train packet {i}");
        }
        assert_eq!(cache.misses, 0, "the train is cached and hits");
    }
}
