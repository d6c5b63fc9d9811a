//! A worker's cache of peer -> current keypair, so the send path's common case loads no
//! `arc_swap` slot and writes no shared reference count.
//!
//! Sealing for a peer needs its current keypair. Taken from the peer's [`Keypairs`] that is an
//! `arc_swap` load (a compare-exchange on the thread's debt slot), a clone of the `Arc` (the
//! keypair's reference count, a line every core sealing or opening with it writes) and its
//! drop: three atomic writes per peer per burst. This cache is owned by one worker (it lives in
//! its [`super::Output`]); a hit reads the peer's [`Keypairs::stamp`] (on the line of its
//! slots, which the burst loads anyway) and the worker's own entry, and writes only the entry.
//!
//! - Direct-mapped, [`SLOTS`] entries picked by the peer id's low bits (ids are dense from 0,
//!   so the first [`SLOTS`] peers never collide). Bounded: [`SLOTS`] entries, each holding one
//!   `Arc<Keypair>`.
//! - Validity: every change of a peer's current slot publishes a stamp no other change in the
//!   process has used ([`Keypairs::stamp`]). An entry is the peer's id, the stamp read before
//!   its keypair was loaded, and that keypair; it hits while the peer's stamp is unchanged, so
//!   the keypair it gives is the one the slot held when the stamp was published, or a later one
//!   (the same race a load of the slot has with a concurrent rotation). A stamp is never reused,
//!   so neither a removed peer's id given to a new peer nor any later rotation can match an old
//!   entry.
//! - Within one burst, an entry a message of the burst already uses is pinned: another peer
//!   mapping to the same slot keeps its keypair outside the cache for the burst (one clone).
//! - An entry keeps its keypair (and so its keys) alive until it is replaced, released or
//!   cleared. Released with the receive cache's entries ([`super::Output::forget_dropped_keys`]):
//!   those whose keypair is retired, that is, left every slot of its peer and so the device's
//!   index table. A keypair that is only no longer current is still held by the device (as the
//!   previous one), so the cache keeps nothing alive that the device does not for longer than
//!   the worker's release period.

use std::sync::Arc;

use super::PeerId;
use crate::session::{Keypair, Keypairs};

pub(crate) use super::indexcache::Found;

/// Entries per worker (a power of two).
pub const SLOTS: usize = 256;

#[derive(Default)]
struct Entry {
    peer: PeerId,
    stamp: u64,
    kp: Option<Arc<Keypair>>,
    /// The burst that last used the entry ([`SendCache::begin_burst`]).
    pinned: u64,
}

/// See the module documentation.
pub(crate) struct SendCache {
    entries: Box<[Entry]>,
    burst: u64,
}

impl Default for SendCache {
    fn default() -> Self {
        SendCache::new()
    }
}

impl core::fmt::Debug for SendCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SendCache").field("used", &self.used()).finish_non_exhaustive()
    }
}

impl SendCache {
    pub(crate) fn new() -> Self {
        SendCache { entries: (0..SLOTS).map(|_| Entry::default()).collect(), burst: 0 }
    }

    /// Start a burst: entries used from now on are pinned until the next call.
    #[inline]
    pub(crate) fn begin_burst(&mut self) {
        self.burst += 1;
    }

    #[inline]
    fn slot(peer: PeerId) -> usize {
        peer as usize & (SLOTS - 1)
    }

    /// The cached keypair of `peer` if the entry is still valid for `keypairs` (the peer's
    /// slots), for cache hints before [`current`](Self::current); nothing is written.
    #[inline]
    pub(crate) fn peek(&self, peer: PeerId, keypairs: &Keypairs) -> Option<&Arc<Keypair>> {
        let e = &self.entries[Self::slot(peer)];
        (e.peer == peer && e.stamp == keypairs.stamp()).then_some(e.kp.as_ref()).flatten()
    }

    /// The current keypair of `peer`, whose slots are `keypairs`: from the cache (the slot,
    /// pinned for the burst) while the peer's stamp is unchanged, else loaded and cached, or
    /// held outside the cache when the slot is pinned by another peer of the burst. `None`:
    /// the peer has no current keypair.
    #[inline]
    pub(crate) fn current(&mut self, peer: PeerId, keypairs: &Keypairs) -> Option<Found> {
        let slot = Self::slot(peer);
        let burst = self.burst;
        // The stamp first, then the slot: a rotation in between leaves an older stamp with a
        // newer keypair, which the next look misses on.
        let stamp = keypairs.stamp();
        let e = &mut self.entries[slot];
        if e.peer == peer && e.stamp == stamp && e.kp.is_some() {
            e.pinned = burst;
            return Some(Found::Slot(slot));
        }
        let kp = keypairs.current()?;
        if e.pinned == burst {
            return Some(Found::Owned(kp));
        }
        *e = Entry { peer, stamp, kp: Some(kp), pinned: burst };
        Some(Found::Slot(slot))
    }

    /// The keypair in `slot` (as [`current`](Self::current) returned it).
    #[inline]
    pub(crate) fn get(&self, slot: usize) -> Option<&Arc<Keypair>> {
        self.entries.get(slot).and_then(|e| e.kp.as_ref())
    }

    /// Drop every entry (and so the cache's references to keypairs).
    pub(crate) fn clear(&mut self) {
        for e in self.entries.iter_mut() {
            *e = Entry::default();
        }
    }

    /// Drop the entries whose keypair is retired (it left every slot of its peer: the entry
    /// alone may be keeping its keys alive); keep the others. Returns how many were dropped.
    pub(crate) fn release_retired(&mut self) -> usize {
        let mut n = 0;
        for e in self.entries.iter_mut() {
            if e.kp.as_ref().is_some_and(|kp| kp.is_retired()) {
                *e = Entry::default();
                n += 1;
            }
        }
        n
    }

    /// Entries holding a keypair.
    pub(crate) fn used(&self) -> usize {
        self.entries.iter().filter(|e| e.kp.is_some()).count()
    }
}
