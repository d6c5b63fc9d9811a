//! A worker's cache of receiver index -> (peer, keypair), so the data path's common case takes
//! no lock on the shared index table and writes no shared reference count.
//!
//! The shared [`IndexTable`](crate::index::IndexTable) answers a lookup under a shard read lock
//! (a burst borrows what it finds for the burst, through one read view of its shards): a write
//! to a cache line other cores write too (the lock word), per shard per burst. This cache is
//! owned by one worker (it lives in its
//! [`super::Output`]); a hit reads the worker's own entry and the keypair's `retired` flag, and
//! writes only the entry.
//!
//! - Direct-mapped, [`SLOTS`] entries picked by the index's low bits (indices are drawn
//!   uniformly at random by us, so they spread; an attacker's unknown indices miss and are not
//!   cached). Bounded: [`SLOTS`] entries, each holding one `Arc<Keypair>`; hits and misses are
//!   counted in [`super::Stats`].
//! - Validity without the table lock: a keypair is
//!   [`retire`](crate::session::Keypair::retire)d when it leaves its peer's slots, before its
//!   index leaves the table, and a retired entry is a miss. An index is never reused while its
//!   keypair is in the table, so a cached (index, keypair) whose keypair is not retired is what
//!   the table holds (up to the same race a table lookup has with a concurrent removal).
//! - A burst looks up in stages ([`IndexCache::probe`] for every index; then the misses through
//!   one read view of their shards, `IndexTable::read_shards`, borrowing each keypair from the
//!   table for the burst without taking a reference; then [`IndexCache::fill`] for those the
//!   burst caches), so that the misses of a burst overlap. A burst fills the cache from its
//!   misses only while at least half of its known indices hit, otherwise from its first miss
//!   found (the rule is in `burst.rs`): with traffic spread over far more keypairs than
//!   entries, a fill (two reference counts written, the new keypair's and the evicted one's)
//!   would be evicted before its next use.
//! - Within one burst, an entry a packet of the burst already uses is pinned: a later miss that
//!   maps to the same slot is not cached (its keypair stays borrowed from the table).
//! - An entry keeps its keypair (and so its keys) alive after the device dropped it, until the
//!   entry is replaced, [`KeySlots::release_retired`] drops it (the entries whose keypair is
//!   retired, that is, gone from its peer's slots, its index removed from the device's table
//!   or about to be) or [`KeySlots::clear`] drops all: the worker releases the retired
//!   entries when idle and at least every minute (the keys are
//!   wiped when the last reference goes). The other entries stay: their keypairs are in the
//!   table, so the cache keeps nothing alive that the device does not, and the next burst after
//!   a pause still hits instead of going to the shared table (a read lock on a shard other
//!   peers' lookups share) for every packet.

use std::sync::Arc;

use super::keyslots::{Held, KeySlots};
use super::{PeerId, Stats};
use crate::session::{prefetch_refcount, Keypair};

/// Entries per worker (a power of two).
pub const SLOTS: usize = 256;

#[derive(Default)]
pub(crate) struct Entry {
    index: u32,
    peer: PeerId,
    kp: Option<Arc<Keypair>>,
    /// The burst that last used the entry ([`KeySlots::begin_burst`]).
    pinned: u64,
}

impl Held for Entry {
    fn kp(&self) -> Option<&Arc<Keypair>> {
        self.kp.as_ref()
    }
}

/// Where a send burst finds a peer's keypair (`sendcache`).
pub(crate) enum Found {
    /// In the cache's slot (pinned for the burst).
    Slot(usize),
    /// Outside the cache (its slot was pinned by another peer of the same burst).
    Owned(Arc<Keypair>),
}

/// See the module documentation.
pub(crate) struct IndexCache {
    pub(crate) slots: KeySlots<Entry>,
}

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache::new()
    }
}

impl core::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IndexCache").field("used", &self.slots.used()).finish_non_exhaustive()
    }
}

impl IndexCache {
    pub(crate) fn new() -> Self {
        IndexCache { slots: KeySlots::new(SLOTS) }
    }

    /// The cache alone: on a hit (counted) the peer and the slot, pinned for the burst. A miss
    /// is not counted here (the burst counts it when it looks it up in the table).
    #[inline]
    pub(crate) fn probe(&mut self, index: u32, stats: &mut Stats) -> Option<(PeerId, usize)> {
        let slot = index as usize & (SLOTS - 1);
        let burst = self.slots.burst;
        let e = &mut self.slots.entries[slot];
        if e.index == index && e.kp.as_ref().is_some_and(|kp| !kp.is_retired()) {
            e.pinned = burst;
            stats.index_cache_hits += 1;
            return Some((e.peer, slot));
        }
        None
    }

    /// Cache hint for a fill of `index`'s slot: starts loading the reference count that the fill
    /// will drop (the keypair the slot holds, unless the burst pinned it and it stays).
    #[inline]
    pub(crate) fn prefetch_evictee(&self, index: u32) {
        let e = &self.slots.entries[index as usize & (SLOTS - 1)];
        if e.pinned != self.slots.burst {
            if let Some(old) = e.kp.as_ref() {
                prefetch_refcount(old);
            }
        }
    }

    /// Cache a miss's keypair (one reference taken) in its slot, pinned for the burst, unless
    /// the slot is pinned by another index of the burst: the slot, or `None`.
    #[inline]
    pub(crate) fn fill(&mut self, index: u32, peer: PeerId, kp: &Arc<Keypair>) -> Option<usize> {
        let slot = index as usize & (SLOTS - 1);
        let burst = self.slots.burst;
        let e = &mut self.slots.entries[slot];
        if e.pinned == burst {
            return None;
        }
        *e = Entry { index, peer, kp: Some(Arc::clone(kp)), pinned: burst };
        Some(slot)
    }
}
