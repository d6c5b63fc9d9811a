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
//!   process has used ([`Keypairs::stamp`], odd while a transition runs, which is never
//!   cached). An entry is the peer's id, the stamp read before its keypair was loaded, and
//!   that keypair; it hits while the peer's stamp is unchanged, so
//!   the keypair it gives is the one the slot held when the stamp was published, or a later one
//!   (the same race a load of the slot has with a concurrent rotation). A stamp is never reused,
//!   so neither a removed peer's id given to a new peer nor any later rotation can match an old
//!   entry.
//! - Within one burst, an entry a message of the burst already uses is pinned: another peer
//!   mapping to the same slot keeps its keypair outside the cache for the burst (one clone).
//!   Nor does a miss take another peer's entry used in the last [`AGE`] bursts (see
//!   `SendCache::evicts`): with many more active peers than entries, evictions would cost more
//!   than the rare hits they buy.
//! - An entry keeps its keypair (and so its keys) alive until it is replaced, released or
//!   cleared. Released with the receive cache's entries ([`super::Output::forget_dropped_keys`]):
//!   those whose keypair is retired, that is, left every slot of its peer and so the device's
//!   index table. A keypair that is only no longer current is still held by the device (as the
//!   previous one), so the cache keeps nothing alive that the device does not for longer than
//!   the worker's release period.

use std::sync::Arc;

use super::keyslots::{Held, KeySlots};
use super::PeerId;
use crate::session::{prefetch_refcount, Keypair, Keypairs};

pub(crate) use super::indexcache::Found;

/// Entries per worker (a power of two).
pub const SLOTS: usize = 256;
/// Bursts an entry must go unused before a miss of another peer takes it. At least 1: an entry
/// used in the current burst is never taken (the chunk reads its keypair from the slot).
const AGE: u64 = 64;
const _: () = assert!(AGE >= 1);

#[derive(Default)]
pub(crate) struct Entry {
    peer: PeerId,
    stamp: u64,
    kp: Option<Arc<Keypair>>,
    /// The burst that last used the entry ([`KeySlots::begin_burst`]).
    pinned: u64,
}

impl Held for Entry {
    fn kp(&self) -> Option<&Arc<Keypair>> {
        self.kp.as_ref()
    }
}

/// See the module documentation.
pub(crate) struct SendCache {
    pub(crate) slots: KeySlots<Entry>,
}

impl Default for SendCache {
    fn default() -> Self {
        SendCache::new()
    }
}

impl core::fmt::Debug for SendCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SendCache").field("used", &self.slots.used()).finish_non_exhaustive()
    }
}

impl SendCache {
    pub(crate) fn new() -> Self {
        SendCache { slots: KeySlots::new(SLOTS) }
    }

    #[inline]
    fn slot(peer: PeerId) -> usize {
        peer as usize & (SLOTS - 1)
    }

    /// The cached keypair of `peer` if the entry is still valid for `keypairs` (the peer's
    /// slots), for cache hints before [`current`](Self::current); nothing is written.
    #[inline]
    pub(crate) fn peek(&self, peer: PeerId, keypairs: &Keypairs) -> Option<&Arc<Keypair>> {
        let e = &self.slots.entries[Self::slot(peer)];
        (e.peer == peer && e.stamp == keypairs.stamp()).then_some(e.kp.as_ref()).flatten()
    }

    /// Cache hints for a peer that [`peek`](Self::peek) missed: the reference count of the
    /// keypair its entry would evict (a line no recent message may have touched, with many more
    /// peers than entries), and the current keypair's reference count and sending line.
    #[inline]
    pub(crate) fn prefetch_miss(&self, peer: PeerId, keypairs: &Keypairs) {
        let e = &self.slots.entries[Self::slot(peer)];
        if self.evicts(e, peer) {
            if let Some(old) = e.kp.as_ref() {
                prefetch_refcount(old);
            }
        }
        keypairs.prefetch_current();
    }

    /// Whether a miss of `peer` takes entry `e` (else it keeps its keypair for the burst): when
    /// the entry is free or the peer's own (stale), or unused for [`AGE`] bursts; never when a
    /// message of this burst uses it. With far more active peers than entries (a million
    /// subscribers, a message each now and then) an entry is rarely used twice, and evicting
    /// it would write a reference count on a line no recent message touched: such misses cost
    /// what a load of the peer's slot costs, and the entries stay with peers that send often.
    #[inline]
    fn evicts(&self, e: &Entry, peer: PeerId) -> bool {
        e.pinned != self.slots.burst && (e.kp.is_none() || e.peer == peer || self.slots.burst - e.pinned >= AGE)
    }

    /// The current keypair of `peer`, whose slots are `keypairs`: from the cache (the slot,
    /// pinned for the burst) while the peer's stamp is unchanged, else loaded and cached, or
    /// held outside the cache when the slot is pinned by another peer of the burst. `None`:
    /// the peer has no current keypair.
    #[inline]
    pub(crate) fn current(&mut self, peer: PeerId, keypairs: &Keypairs) -> Option<Found> {
        let slot = Self::slot(peer);
        let burst = self.slots.burst;
        // The stamp first, then the slot: a rotation in between leaves an older stamp with a
        // newer keypair, which the next look misses on.
        let stamp = keypairs.stamp();
        let e = &mut self.slots.entries[slot];
        if e.peer == peer && e.stamp == stamp && e.kp.is_some() {
            e.pinned = burst;
            return Some(Found::Slot(slot));
        }
        let kp = keypairs.current()?;
        // An odd stamp: a transition in progress, whose end the entry could not tell from its
        // start.
        if stamp & 1 != 0 || !self.evicts(&self.slots.entries[slot], peer) {
            return Some(Found::Owned(kp));
        }
        self.slots.entries[slot] = Entry { peer, stamp, kp: Some(kp), pinned: burst };
        Some(Found::Slot(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::time::Timestamp;

    fn keypairs(remote: u32) -> Keypairs {
        let k = Keypairs::new();
        let kp = Keypair::new(&Secret([1; 32]), &Secret([2; 32]), remote, remote, true, Timestamp::from_secs(1));
        let _ = k.install(Arc::new(kp));
        k
    }

    fn remote(cache: &SendCache, f: &Found) -> (bool, u32) {
        match f {
            Found::Slot(s) => (true, cache.slots.get(*s).unwrap().remote_index()),
            Found::Owned(kp) => (false, kp.remote_index()),
        }
    }

    /// (cached?, the keypair's remote index) for `peer` in a new burst.
    fn look(cache: &mut SendCache, peer: PeerId, k: &Keypairs) -> (bool, u32) {
        cache.slots.begin_burst();
        let f = cache.current(peer, k).unwrap();
        remote(cache, &f)
    }

    #[test]
    fn a_busy_entry_is_not_evicted_by_another_peer_until_it_ages() {
        let mut c = SendCache::new();
        let (a, b) = (keypairs(1), keypairs(2));
        // Peers 0 and SLOTS share a slot.
        let (pa, pb) = (0, SLOTS as PeerId);
        assert_eq!(look(&mut c, pa, &a), (true, 1), "a free entry is taken");
        assert_eq!(look(&mut c, pb, &b), (false, 2), "peer 0 used it a burst ago: held outside");
        assert_eq!(look(&mut c, pa, &a), (true, 1), "and peer 0 still hits");
        for _ in 0..AGE {
            c.slots.begin_burst();
        }
        assert_eq!(look(&mut c, pb, &b), (true, 2), "unused for AGE bursts: taken");
        assert_eq!(look(&mut c, pb, &b), (true, 2));
        assert_eq!(look(&mut c, pa, &a), (false, 1));
    }

    #[test]
    fn a_peer_s_own_stale_entry_is_replaced_at_once() {
        let mut c = SendCache::new();
        let a = keypairs(1);
        assert_eq!(look(&mut c, 0, &a), (true, 1));
        let kp = Keypair::new(&Secret([3; 32]), &Secret([4; 32]), 9, 9, true, Timestamp::from_secs(2));
        let _ = a.install(Arc::new(kp));
        assert_eq!(look(&mut c, 0, &a), (true, 9), "the new current keypair, cached in place");
        assert_eq!(c.slots.used(), 1);
    }

    /// An entry handed out in a burst is not taken by another peer's miss in the same burst
    /// (the chunk reads its keypair from the slot until the end): guaranteed both by the pin
    /// and by the age rule (`AGE` is at least 1).
    #[test]
    fn a_slot_handed_out_is_kept_for_its_burst() {
        let mut c = SendCache::new();
        let (a, b) = (keypairs(1), keypairs(2));
        for _ in 0..AGE {
            c.slots.begin_burst();
        }
        c.slots.begin_burst();
        let fa = c.current(0, &a).unwrap();
        let fb = c.current(SLOTS as PeerId, &b).unwrap();
        assert_eq!((remote(&c, &fa), remote(&c, &fb)), ((true, 1), (false, 2)));
    }
}
