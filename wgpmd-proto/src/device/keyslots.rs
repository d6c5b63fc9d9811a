//! What the worker's two keypair caches share (`indexcache`, receiver index -> keypair, and
//! `sendcache`, peer -> current keypair): direct-mapped entries each holding at most one
//! `Arc<Keypair>`, a burst number that pins the entries a burst uses, and the release of the
//! entries whose keypair the device dropped (only the entry may still be keeping its keys
//! alive).

use std::sync::Arc;

use crate::session::Keypair;

/// An entry of a keypair cache.
pub(crate) trait Held: Default {
    /// The keypair the entry holds.
    fn kp(&self) -> Option<&Arc<Keypair>>;
}

/// The entries of a keypair cache and its burst number.
pub(crate) struct KeySlots<E> {
    pub(crate) entries: Box<[E]>,
    /// The current burst ([`KeySlots::begin_burst`]); an entry used in it is pinned.
    pub(crate) burst: u64,
}

impl<E: Held> KeySlots<E> {
    /// `n` empty entries.
    pub(crate) fn new(n: usize) -> Self {
        KeySlots { entries: (0..n).map(|_| E::default()).collect(), burst: 0 }
    }

    /// Start a burst: entries used from now on are pinned until the next call.
    #[inline]
    pub(crate) fn begin_burst(&mut self) {
        self.burst += 1;
    }

    /// The keypair in `slot` (a slot the cache handed out in this burst).
    #[inline]
    pub(crate) fn get(&self, slot: usize) -> Option<&Arc<Keypair>> {
        self.entries.get(slot).and_then(Held::kp)
    }

    /// Drop every entry (and so the cache's references to keypairs).
    pub(crate) fn clear(&mut self) {
        self.entries.iter_mut().for_each(|e| *e = E::default());
    }

    /// Drop the entries whose keypair is retired (it left every slot of its peer, and its index
    /// has left the device's table or is about to: the entry alone may be keeping its keys
    /// alive); keep the others.
    /// Returns how many were dropped.
    pub(crate) fn release_retired(&mut self) -> usize {
        let mut n = 0;
        for e in self.entries.iter_mut() {
            if e.kp().is_some_and(|kp| kp.is_retired()) {
                *e = E::default();
                n += 1;
            }
        }
        n
    }

    /// Entries holding a keypair.
    pub(crate) fn used(&self) -> usize {
        self.entries.iter().filter(|e| e.kp().is_some()).count()
    }
}
