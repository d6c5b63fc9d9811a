//! The three keypair slots of one peer — current, previous, next — and their rotation.
//!
//! Follows the kernel's `struct noise_keypairs` and `add_new_keypair`,
//! `wg_noise_received_with_keypair`, `wg_noise_keypairs_clear` and
//! `wg_noise_expire_current_peer_keypairs` (drivers/net/wireguard/noise.c). States and rules:
//! - **current** is the only keypair sealed with; **previous** still opens late packets of the
//!   keypair before it; **next** is a responder's new keypair awaiting key confirmation;
//! - a new keypair we *initiated* is confirmed (we received the response): it becomes current at
//!   once. A pending next is demoted to previous and the old current dropped; without a pending
//!   next, current is demoted to previous. The old previous is dropped either way;
//! - a new keypair we *responded* to becomes next; the old next and the old previous are dropped,
//!   current is kept until the initiator proves it has the keys;
//! - the first message opened with next confirms it: previous is dropped, current becomes
//!   previous, next becomes current;
//! - clearing drops all three, next first (so a concurrent confirmation finds nothing to rotate).
//!
//! Readers load slots lock-free (`arc_swap`); every transition holds one small lock, so
//! transitions are serialised exactly as under the kernel's `keypair_update_lock`. The lock is
//! the low bit of the current slot's stamp ([`Keypairs::stamp`]): transitions are rare and a
//! few stores long, so a spin lock on the word readers check anyway costs a peer no bytes. Each transition
//! returns the local indices of the keypairs that left every slot ([`Dropped`]), for the caller to
//! remove from its receiver-index table (the kernel's `wg_noise_keypair_put(.., true)`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::keypair::Keypair;

/// Most keypairs one transition can drop (`clear` drops all three slots).
const MAX_DROPPED: usize = 3;

/// Local indices of keypairs that a transition removed from every slot (retired already): the
/// caller removes them from its index table, as nothing else will. Fixed size, no heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "the dropped keypairs' indices must be removed from the index table"]
pub struct Dropped {
    indices: [u32; MAX_DROPPED],
    len: u8,
}

impl Dropped {
    /// The dropped local indices, in the order the kernel releases them.
    pub fn as_slice(&self) -> &[u32] {
        self.indices.get(..usize::from(self.len)).unwrap_or(&[])
    }
    /// How many keypairs were dropped.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Iterate over the dropped local indices.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.as_slice().iter().copied()
    }
    fn push(&mut self, index: u32) {
        if let Some(slot) = self.indices.get_mut(usize::from(self.len)) {
            *slot = index;
            self.len += 1;
        }
    }
}

impl<'a> IntoIterator for &'a Dropped {
    type Item = u32;
    type IntoIter = core::iter::Copied<core::slice::Iter<'a, u32>>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter().copied()
    }
}

/// Stamps given out so far ([`Keypairs::stamp`]): process-wide, so no two changes of any
/// peer's current slot, and no two peers' first stamps, share one. At a million rotations a
/// second it would take a quarter of a million years to wrap.
static STAMPS: AtomicU64 = AtomicU64::new(0);

/// The lock bit of a stamp word.
const LOCKED: u64 = 1;

/// A stamp no other change has used (even: the lock bit clear).
fn fresh_stamp() -> u64 {
    (STAMPS.fetch_add(1, Ordering::Relaxed) + 1) << 1
}

/// One peer's keypair slots (kernel `struct noise_keypairs`). Shared between worker threads.
pub struct Keypairs {
    current: ArcSwapOption<Keypair>,
    /// An even number, changed after every store to `current` ([`Keypairs::stamp`]); its low
    /// bit is the lock that serialises transitions (kernel `keypair_update_lock`), which
    /// readers never take.
    stamp: AtomicU64,
    previous: ArcSwapOption<Keypair>,
    next: ArcSwapOption<Keypair>,
}

/// A transition in progress: holds the lock bit of `keypairs`' stamp, and on drop releases it
/// with the stamp as it was, or a new one if `current` changed.
struct Transition<'a> {
    keypairs: &'a Keypairs,
    stamp: u64,
}

impl Transition<'_> {
    /// Note a store to `current`: the stamp changes at the end of the transition.
    fn restamp(&mut self) {
        self.stamp = fresh_stamp();
    }
}

impl Drop for Transition<'_> {
    fn drop(&mut self) {
        self.keypairs.stamp.store(self.stamp, Ordering::Release);
    }
}

impl core::fmt::Debug for Keypairs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let idx = |s: &ArcSwapOption<Keypair>| s.load().as_ref().map(|k| k.local_index());
        f.debug_struct("Keypairs")
            .field("current", &idx(&self.current))
            .field("previous", &idx(&self.previous))
            .field("next", &idx(&self.next))
            .finish()
    }
}

fn is(slot: &Option<Arc<Keypair>>, kp: &Arc<Keypair>) -> bool {
    slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, kp))
}

impl Default for Keypairs {
    fn default() -> Self {
        Self::new()
    }
}

impl Keypairs {
    /// Three empty slots, with a stamp of their own: a new peer's slots never show a stamp
    /// another peer's (a removed one's whose id it took included) showed.
    pub fn new() -> Self {
        Keypairs {
            current: ArcSwapOption::empty(),
            stamp: AtomicU64::new(fresh_stamp()),
            previous: ArcSwapOption::empty(),
            next: ArcSwapOption::empty(),
        }
    }

    /// The keypair to seal with (lock-free).
    pub fn current(&self) -> Option<Arc<Keypair>> {
        self.current.load_full()
    }
    /// A number that changes whenever the current slot does, never given to another change or
    /// to another peer's slots in this process (a fresh one from [`Keypairs::new`]), and odd
    /// while a transition is in progress. A reader
    /// that takes an even stamp, then [`current`], and later finds the same stamp, still holds
    /// the current keypair (or the one before a rotation in progress): the worker's send cache
    /// rests on this (`device::sendcache`).
    ///
    /// [`current`]: Self::current
    #[inline]
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Acquire)
    }
    /// Whether the current keypair, made under identity `generation`, asks for the receive
    /// side's last-minute handshake (kernel `keep_key_fresh`); no reference is taken.
    pub(crate) fn current_needs_rekey_on_recv(&self, now: crate::time::Timestamp, generation: u64) -> bool {
        self.current.load().as_ref().is_some_and(|c| c.needs_rekey_on_recv(now) && c.generation() == generation)
    }
    /// Cache hints for a burst that will seal with the current keypair: its reference count and
    /// its sending line (no reference is kept).
    #[inline]
    pub(crate) fn prefetch_current(&self) {
        if let Some(kp) = self.current.load().as_ref() {
            super::keypair::prefetch_refcount(kp);
            kp.prefetch_send();
        }
    }
    /// The keypair awaiting confirmation, if we were the responder of the last handshake.
    pub fn next(&self) -> Option<Arc<Keypair>> {
        self.next.load_full()
    }
    /// The keypair before current, kept to open packets still in flight.
    pub fn previous(&self) -> Option<Arc<Keypair>> {
        self.previous.load_full()
    }

    /// Install the keypair of a completed handshake (kernel `add_new_keypair`); see the module
    /// documentation for where it goes and what leaves.
    pub fn install(&self, kp: Arc<Keypair>) -> Dropped {
        let mut t = self.lock();
        let gone: [Option<Arc<Keypair>>; 2] = if kp.initiator() {
            match self.next.swap(None) {
                Some(next) => {
                    let old_previous = self.previous.swap(Some(next));
                    let old_current = self.current.swap(Some(kp));
                    t.restamp();
                    [old_current, old_previous]
                }
                None => {
                    let old_previous = self.previous.swap(self.current.load_full());
                    self.current.store(Some(kp));
                    t.restamp();
                    [old_previous, None]
                }
            }
        } else {
            let old_next = self.next.swap(Some(kp));
            let old_previous = self.previous.swap(None);
            [old_next, old_previous]
        };
        self.dropped(&gone)
    }

    /// Note that a message was opened with `kp` (kernel `wg_noise_received_with_keypair`). If `kp`
    /// is the pending next keypair, this is its confirmation: rotate and return what was dropped.
    /// Otherwise `None`: for a keypair made by the initiator or already confirmed (the common
    /// case) from a flag on the keypair, with no load of the slots; else after one lock-free load.
    #[must_use = "the dropped keypairs' indices must be removed from the index table"]
    pub fn received_with(&self, kp: &Arc<Keypair>) -> Option<Dropped> {
        if kp.is_confirmed() || !is(&self.next.load(), kp) {
            return None;
        }
        let mut t = self.lock();
        // Re-check: another core may have confirmed it, or a new handshake replaced it.
        if !is(&self.next.load(), kp) {
            return None;
        }
        let old_previous = self.previous.swap(self.current.load_full());
        self.current.store(Some(Arc::clone(kp)));
        t.restamp();
        self.next.store(None);
        kp.confirm();
        Some(self.dropped(&[old_previous]))
    }

    /// Empty all three slots (kernel `wg_noise_keypairs_clear`): next first, then previous, then
    /// current.
    pub fn clear(&self) -> Dropped {
        let mut t = self.lock();
        let next = self.next.swap(None);
        let previous = self.previous.swap(None);
        let current = self.current.swap(None);
        t.restamp();
        self.dropped(&[next, previous, current])
    }

    /// Stop sealing with the current and next keypairs (kernel
    /// `wg_noise_expire_current_peer_keypairs`, minus the handshake reset that belongs to the
    /// handshake state); they still open what the peer sends until they age out.
    pub fn expire_current(&self) {
        let _guard = self.lock();
        for slot in [&self.next, &self.current] {
            if let Some(kp) = slot.load().as_ref() {
                kp.expire_sending();
            }
        }
    }

    /// The local indices of those of `gone` that are no longer in any slot, each keypair retired
    /// as it is listed ([`Keypair::retire`]: a worker that still finds it, in its cache or in the
    /// table before the caller has removed its index, drops its messages as of an unknown
    /// index). Called under the update lock, so the slots are stable. (Only a caller installing
    /// one keypair twice could make a removed keypair still present in another slot.)
    fn dropped(&self, gone: &[Option<Arc<Keypair>>]) -> Dropped {
        let slots = [self.current.load_full(), self.previous.load_full(), self.next.load_full()];
        let mut out = Dropped::default();
        for (i, kp) in gone.iter().enumerate() {
            let Some(kp) = kp else { continue };
            let still_held = slots.iter().any(|s| is(s, kp));
            let listed = gone.iter().take(i).any(|g| is(g, kp));
            if !still_held && !listed {
                kp.retire();
                out.push(kp.local_index());
            }
        }
        out
    }

    /// Take the transition lock (spinning: the holder only swaps a few slots).
    fn lock(&self) -> Transition<'_> {
        let mut spins = 0u32;
        loop {
            let s = self.stamp.load(Ordering::Relaxed);
            if s & LOCKED == 0
                && self.stamp.compare_exchange_weak(s, s | LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return Transition { keypairs: self, stamp: s };
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::time::Timestamp;

    const NOW: Timestamp = Timestamp::from_secs(1);

    fn kp(local_index: u32, initiator: bool) -> Arc<Keypair> {
        let (s, r) = (Secret([local_index as u8; 32]), Secret([!(local_index as u8); 32]));
        Arc::new(Keypair::new(&s, &r, local_index, local_index + 1000, initiator, NOW))
    }

    fn idx(k: Option<Arc<Keypair>>) -> Option<u32> {
        k.map(|k| k.local_index())
    }

    /// (current, previous, next) local indices.
    fn slots(k: &Keypairs) -> (Option<u32>, Option<u32>, Option<u32>) {
        (idx(k.current()), idx(k.previous()), idx(k.next()))
    }

    #[test]
    fn dropped_is_a_small_list() {
        let mut d = Dropped::default();
        assert!(d.is_empty());
        for i in 1..=5 {
            d.push(i);
        }
        assert_eq!(d.as_slice(), &[1, 2, 3], "holds at most three");
        assert_eq!(d.len(), 3);
        assert_eq!((&d).into_iter().sum::<u32>(), 6);
        assert_eq!(core::mem::size_of::<Dropped>(), 16);
    }

    #[test]
    fn initiator_without_pending_next() {
        let k = Keypairs::new();
        assert_eq!(k.install(kp(1, true)).as_slice(), &[] as &[u32]);
        assert_eq!(slots(&k), (Some(1), None, None));
        assert!(k.install(kp(2, true)).is_empty());
        assert_eq!(slots(&k), (Some(2), Some(1), None));
        assert_eq!(k.install(kp(3, true)).as_slice(), &[1], "old previous dropped");
        assert_eq!(slots(&k), (Some(3), Some(2), None));
    }

    #[test]
    fn initiator_with_pending_next() {
        let k = Keypairs::new();
        let _ = k.install(kp(1, true));
        let _ = k.install(kp(2, true));
        // A responder handshake left 3 pending; it drops the previous (1).
        assert_eq!(k.install(kp(3, false)).as_slice(), &[1]);
        assert_eq!(slots(&k), (Some(2), None, Some(3)));
        // Our own handshake completes first: the pending next is demoted to previous, the current
        // is dropped (kernel: "KCI can result in this transition").
        assert_eq!(k.install(kp(4, true)).as_slice(), &[2]);
        assert_eq!(slots(&k), (Some(4), Some(3), None));
    }

    #[test]
    fn responder_installs_next_and_keeps_current() {
        let k = Keypairs::new();
        let _ = k.install(kp(1, true));
        let _ = k.install(kp(2, true));
        assert_eq!(k.install(kp(3, false)).as_slice(), &[1]);
        assert_eq!(slots(&k), (Some(2), None, Some(3)));
        // A second responder handshake before confirmation replaces the unconfirmed next.
        assert_eq!(k.install(kp(4, false)).as_slice(), &[3]);
        assert_eq!(slots(&k), (Some(2), None, Some(4)));
        // From empty: next only; nothing to seal with yet.
        let e = Keypairs::new();
        assert!(e.install(kp(9, false)).is_empty());
        assert_eq!(slots(&e), (None, None, Some(9)));
    }

    #[test]
    fn confirmation_rotates_next_into_current() {
        let k = Keypairs::new();
        let a = kp(1, true);
        let _ = k.install(Arc::clone(&a));
        let n = kp(2, false);
        let _ = k.install(Arc::clone(&n));
        assert_eq!(k.received_with(&a), None, "current is not a confirmation");
        // A different Arc with the same contents is not the pending keypair.
        assert_eq!(k.received_with(&kp(2, false)), None);
        assert_eq!(k.received_with(&n), Some(Dropped::default()));
        assert_eq!(slots(&k), (Some(2), Some(1), None));
        assert_eq!(k.received_with(&n), None, "confirmed only once");
        assert_eq!(k.received_with(&a), None, "previous is not a confirmation");
        assert!(a.is_confirmed() && n.is_confirmed());
    }

    /// The stamp changes with every change of the current slot and only then, and no two
    /// peers' slots start with the same one (the send cache's validity rests on both).
    #[test]
    fn the_stamp_follows_the_current_slot() {
        let (k, other) = (Keypairs::new(), Keypairs::new());
        assert_ne!(k.stamp(), other.stamp(), "each peer's slots start with a stamp of their own");
        let s0 = k.stamp();
        assert_eq!(s0 & 1, 0);
        let n = kp(2, false);
        let _ = k.install(Arc::clone(&n));
        assert_eq!(k.stamp(), s0, "a responder's keypair waits in next: current unchanged");
        assert!(k.received_with(&n).is_some());
        let s1 = k.stamp();
        assert_ne!(s1, s0, "confirmation made it current");
        k.expire_current();
        assert_eq!(k.stamp(), s1, "expiring leaves the slot as it was");
        let _ = k.install(kp(3, true));
        let s2 = k.stamp();
        assert!(s2 != s1 && s2 != s0, "the initiator's keypair became current");
        let _ = k.install(kp(4, false));
        assert!(k.received_with(&kp(9, false)).is_none());
        assert_eq!(k.stamp(), s2, "a message on no pending keypair changes nothing");
        // An initiator's keypair while a responder's waits in next: current changes.
        let _ = k.install(kp(5, true));
        let s3 = k.stamp();
        assert!(![s0, s1, s2].contains(&s3), "the initiator's keypair became current over a pending one");
        let _ = k.clear();
        let s4 = k.stamp();
        assert!(![s0, s1, s2, s3].contains(&s4), "cleared");
        assert!([s0, s1, s2, s3, s4].iter().all(|s| s & 1 == 0), "no transition left the lock bit set");
    }

    #[test]
    fn a_pending_keypair_is_not_confirmed_until_its_first_message() {
        let k = Keypairs::new();
        let n = kp(2, false);
        let _ = k.install(Arc::clone(&n));
        assert!(!n.is_confirmed(), "the responder's keypair waits for the initiator's first message");
        // Replaced by a newer handshake before any message came: never confirmed, and a late
        // message on it confirms nothing (the slow path still looks at the pending slot).
        let m = kp(3, false);
        let _ = k.install(Arc::clone(&m));
        assert_eq!(k.received_with(&n), None);
        assert!(!n.is_confirmed());
        assert_eq!(slots(&k), (None, None, Some(3)));
        assert!(k.received_with(&m).is_some());
        assert!(m.is_confirmed());
        assert_eq!(slots(&k), (Some(3), None, None));
    }

    #[test]
    fn confirmation_drops_an_old_previous() {
        // Only reachable by racing transitions; set the slots directly.
        let k = Keypairs::new();
        k.current.store(Some(kp(1, true)));
        k.previous.store(Some(kp(2, true)));
        let n = kp(3, false);
        k.next.store(Some(Arc::clone(&n)));
        assert_eq!(k.received_with(&n).unwrap().as_slice(), &[2]);
        assert_eq!(slots(&k), (Some(3), Some(1), None));
    }

    #[test]
    fn clear_drops_all_three_next_first() {
        let k = Keypairs::new();
        k.current.store(Some(kp(1, true)));
        k.previous.store(Some(kp(2, true)));
        k.next.store(Some(kp(3, false)));
        assert_eq!(k.clear().as_slice(), &[3, 2, 1]);
        assert_eq!(slots(&k), (None, None, None));
        assert!(k.clear().is_empty());
    }

    #[test]
    fn a_keypair_still_in_a_slot_is_not_reported_dropped() {
        let k = Keypairs::new();
        let a = kp(1, true);
        let _ = k.install(Arc::clone(&a));
        assert!(k.install(Arc::clone(&a)).is_empty()); // misuse: the same keypair twice
        assert_eq!(slots(&k), (Some(1), Some(1), None));
        // Previous (1) leaves its slot but stays as the new previous: not dropped.
        assert!(k.install(kp(2, true)).is_empty());
        assert_eq!(k.install(kp(3, true)).as_slice(), &[1]);
    }

    #[test]
    fn expire_current_stops_sealing_on_current_and_next_only() {
        let k = Keypairs::new();
        let _ = k.install(kp(1, true));
        let _ = k.install(kp(2, true));
        let _ = k.install(kp(3, false));
        let _ = k.install(kp(4, true)); // current 4, previous 3
        let _ = k.install(kp(5, false)); // next 5, previous dropped
        let prev = kp(6, true);
        k.previous.store(Some(Arc::clone(&prev)));
        k.expire_current();
        assert!(k.current().unwrap().sending_expired());
        assert!(k.next().unwrap().sending_expired());
        assert!(!prev.sending_expired());
        let mut buf = [0u8; 64];
        assert_eq!(k.current().unwrap().seal(NOW, &mut buf, 0, 1420), Err(crate::session::SealError::Expired));
    }

    /// Confirmation raced from two threads: exactly one of them rotates.
    #[test]
    fn concurrent_confirmation_rotates_once() {
        for _ in 0..200 {
            let k = Keypairs::new();
            let _ = k.install(kp(1, true));
            let n = kp(2, false);
            let _ = k.install(Arc::clone(&n));
            let (x, y) = std::thread::scope(|s| {
                let hx = s.spawn(|| k.received_with(&n));
                let hy = s.spawn(|| k.received_with(&n));
                (hx.join().unwrap(), hy.join().unwrap())
            });
            assert!(x.is_some() ^ y.is_some());
            assert_eq!(slots(&k), (Some(2), Some(1), None));
        }
    }
}
