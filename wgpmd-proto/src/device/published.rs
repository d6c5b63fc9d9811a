//! A [`Device`] shared by readers that never wait (the data-plane workers, the control core)
//! and one writer at a time (configuration): two copies of the configuration tables, one
//! published, one for the writer ("left-right", as in the `left-right` crate, here with an
//! `ArcSwap` for the published pointer so no unsafe code is needed).
//!
//! - Readers [`Published::load`] the published copy: one atomic load and a reference in a
//!   per-thread debt slot (`arc_swap`), no lock, nothing that waits for a writer. A reader keeps
//!   its guard for one burst or one iteration.
//! - A writer takes [`Published::write`] (a mutex among writers only) and changes the other copy
//!   through `&mut Device` as long as it likes: nothing a reader uses is touched, except the
//!   peers' own state, which is shared and changes through atomics and per-peer locks as the
//!   data path's does (an endpoint or pre-shared key set on an existing peer takes effect at
//!   once, as in the kernel). Each table change is journaled.
//! - [`WriteGuard::publish`] swaps the copies in one atomic store, waits until no reader holds
//!   the old copy (readers finish their iteration; the writer sleeps, the readers never do), and
//!   brings the old copy up to date: the journal is replayed, or for a commit of more than
//!   `journal::MAX_OPS` changes the old copy is dropped and the published one cloned.
//!
//! A commit is atomic for the readers: a burst sees the tables from before or from after, never
//! half of a `set`. The cost is a second copy of the tables (slot, key-map entry, allowed-IP
//! entries: about 150 bytes per peer with one prefix; the peers themselves, their sessions and
//! the index table are shared); `tests/peer_memory.rs` counts it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

use super::journal::{Changes, Journal};
use super::Device;

/// A device published to readers that never wait; see the module docs.
pub struct Published {
    current: ArcSwap<Device>,
    /// The writer's copy. `None` only inside [`Published::commit`].
    spare: Mutex<Option<Device>>,
}

/// The writer's copy of the tables, from [`Published::write`]. Changes become visible to
/// readers at [`WriteGuard::publish`] (or when the guard is dropped, which publishes too and
/// keeps the [`Changes`] for the next `publish` to return).
pub struct WriteGuard<'a> {
    owner: &'a Published,
    spare: MutexGuard<'a, Option<Device>>,
    published: bool,
}

impl Published {
    /// Publish `dev` (its tables are copied once for the writer).
    pub fn new(mut dev: Device) -> Self {
        dev.defer_free = true;
        let mut spare = dev.fork();
        // Peers configured before publishing are not news to anyone.
        spare.journal = Journal::on();
        Published { current: ArcSwap::from_pointee(dev), spare: Mutex::new(Some(spare)) }
    }

    /// The published device, for one burst or iteration: lock-free, never waits.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Device>> {
        self.current.load()
    }

    /// The published device as an `Arc` (holding it delays the next publish until it is
    /// dropped; prefer [`Published::load`] for short reads).
    pub fn load_full(&self) -> Arc<Device> {
        self.current.load_full()
    }

    /// The published device, dropping the writer's copy (`None` while a reader holds it).
    pub fn into_inner(self) -> Option<Device> {
        let mut dev = Arc::try_unwrap(self.current.into_inner()).ok()?;
        dev.journal = Journal::off();
        dev.defer_free = false;
        dev.free_ids.append(&mut dev.freed);
        Some(dev)
    }

    /// The writer's copy (waits only for another writer). A thread must not hold a
    /// [`Published::load`] guard when it publishes: the publish would wait for it.
    pub fn write(&self) -> WriteGuard<'_> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = spare.as_mut() {
            d.change(super::journal::TableOp::ReleaseFreed);
        }
        WriteGuard { owner: self, spare, published: true }
    }

    /// Swap, wait for the old copy's readers, bring it up to date. Returns what the commit
    /// changed.
    fn commit(&self, slot: &mut Option<Device>) -> Changes {
        let Some(mut dev) = slot.take() else { return Changes::default() };
        let journal = dev.journal.take();
        let t0 = std::time::Instant::now();
        let mut old = self.current.swap(Arc::new(dev));
        // Readers hold a copy for one iteration: spin briefly, then sleep in growing steps.
        let mut pause = Duration::from_micros(1);
        let mut old = loop {
            match Arc::try_unwrap(old) {
                Ok(d) => break d,
                Err(still_read) => {
                    old = still_read;
                    if pause < Duration::from_micros(8) {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(pause);
                    }
                    pause = (pause * 2).min(Duration::from_micros(500));
                }
            }
        };
        let t1 = std::time::Instant::now();
        if journal.overflowed {
            drop(old);
            let t2 = std::time::Instant::now();
            old = self.current.load().fork();
            tracing::debug!(
                "publish: waited {:?} for readers, dropped the old copy in {:?}, cloned the tables in {:?}",
                t1 - t0,
                t2 - t1,
                t2.elapsed()
            );
        } else {
            for op in &journal.ops {
                old.apply(op);
            }
            old.journal = Journal::on();
            tracing::debug!(
                "publish: waited {:?} for readers, replayed {} changes in {:?}",
                t1 - t0,
                journal.ops.len(),
                t1.elapsed()
            );
        }
        *slot = Some(old);
        journal.changes
    }
}

impl WriteGuard<'_> {
    /// Make the changes visible to readers (one atomic swap), wait until no reader uses the
    /// previous copy, and return the peers added and removed since the last publish. When it
    /// returns, no reader can still see a removed peer in the tables, and a removed peer's id
    /// is not yet another peer's (ids freed by a commit are reused from the next
    /// [`Published::write`] on). The guard stays usable for more changes.
    pub fn publish(&mut self) -> Changes {
        self.published = true;
        let mut changes = std::mem::take(&mut self.stashed());
        changes.append(self.owner.commit(&mut self.spare));
        changes
    }

    /// Changes of a guard dropped without publishing, kept in the spare's journal.
    fn stashed(&mut self) -> Changes {
        self.spare.as_mut().map(|d| std::mem::take(&mut d.journal.stash)).unwrap_or_default()
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.published {
            let mut changes = self.stashed();
            changes.append(self.owner.commit(&mut self.spare));
            if let Some(d) = self.spare.as_mut() {
                d.journal.stash = changes;
            }
        }
    }
}

impl core::ops::Deref for WriteGuard<'_> {
    type Target = Device;
    fn deref(&self) -> &Device {
        // `spare` is `None` only inside `commit`, which a guard's owner never re-enters.
        self.spare.as_ref().unwrap_or_else(|| unreachable!("the spare copy is taken only during a commit"))
    }
}

impl core::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Device {
        self.published = false;
        self.spare.as_mut().unwrap_or_else(|| unreachable!("the spare copy is taken only during a commit"))
    }
}

impl core::fmt::Debug for Published {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Published").field("peers", &self.load().peer_count()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::mpsc;

    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::crypto::PrivateKey;
    use crate::device::journal::MAX_OPS;
    use crate::device::PeerId;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn add(dev: &mut Device, rng: &mut ChaCha20Rng, i: u32) -> PeerId {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let id = dev.add_peer(rng, key).unwrap();
        dev.add_allowed_ip(id, ip(i), 32).unwrap();
        id
    }

    /// Both copies hold the same tables: every peer by key and by allowed IP.
    fn same(a: &Device, b: &Device, n: u32) {
        assert_eq!(a.peer_count(), b.peer_count());
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.mtu(), b.mtu());
        for p in a.peers() {
            assert_eq!(b.peer_by_key(p.public_key()), Some(p.id()));
            assert!(Arc::ptr_eq(p, b.peer(p.id()).unwrap()), "the peers are shared, not copied");
        }
        for i in 0..n {
            assert_eq!(a.route(ip(i)), b.route(ip(i)), "route of {}", ip(i));
        }
    }

    #[test]
    fn readers_see_a_commit_whole_and_only_once_published() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut dev = Device::new(&mut rng, 0);
        dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
        let ids: Vec<PeerId> = (0..3).map(|i| add(&mut dev, &mut rng, i)).collect();
        let p = Published::new(dev);

        let mut w = p.write();
        w.remove_peer(ids[1]).unwrap();
        let new = add(&mut w, &mut rng, 3);
        w.set_mtu(1280);
        // Not yet visible.
        assert_eq!(p.load().route(ip(3)), None);
        assert_eq!(p.load().route(ip(1)), Some(ids[1]));
        assert_ne!(p.load().mtu(), 1280);
        let changes = w.publish();
        assert_eq!(changes, Changes { added: vec![new], removed: vec![ids[1]] });
        assert_ne!(new, ids[1], "a slot freed by a commit is not reused by it");
        drop(w);
        let now = p.load();
        assert_eq!((now.peer_count(), now.route(ip(3)), now.route(ip(1)), now.mtu()), (3, Some(new), None, 1280));
        // The writer's copy was brought up to date by replaying the journal.
        same(&now, &p.write(), 4);
        drop(now);
        // From the next commit on, the slot is reused.
        let mut w = p.write();
        assert_eq!(add(&mut w, &mut rng, 5), ids[1]);
        w.publish();
    }

    #[test]
    fn a_commit_larger_than_the_journal_clones_the_tables() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let p = Published::new(Device::new(&mut rng, 0));
        let n = (MAX_OPS / 2 + 100) as u32; // two journal entries per peer
        let mut w = p.write();
        for i in 0..n {
            add(&mut w, &mut rng, i);
        }
        assert!(w.journal.overflowed);
        let changes = w.publish();
        drop(w);
        assert_eq!(changes.added.len(), n as usize);
        let w = p.write();
        assert!(!w.journal.overflowed && w.journal.ops.len() == 1, "only ReleaseFreed");
        same(&p.load(), &w, n);
    }

    #[test]
    fn a_dropped_guard_publishes_and_keeps_its_changes_for_the_next_publish() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let p = Published::new(Device::new(&mut rng, 0));
        let first = add(&mut p.write(), &mut rng, 0);
        assert_eq!(p.load().route(ip(0)), Some(first));
        let mut w = p.write();
        let second = add(&mut w, &mut rng, 1);
        assert_eq!(w.publish(), Changes { added: vec![first, second], removed: vec![] });
    }

    #[test]
    fn publish_waits_for_the_readers_of_the_old_copy_and_they_never_wait() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let p = Arc::new(Published::new(Device::new(&mut rng, 0)));
        let reader = p.load_full();
        let (tx, rx) = mpsc::channel();
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(11);
                let mut w = p.write();
                add(&mut w, &mut rng, 0);
                let changes = w.publish();
                tx.send(changes.added.len()).unwrap();
            })
        };
        // The new copy is published at once; the writer waits for `reader`.
        let t0 = std::time::Instant::now();
        while p.load().peer_count() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "never published");
            std::thread::yield_now();
        }
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "publish returned with a reader on the old copy");
        assert_eq!(reader.peer_count(), 0, "the old copy is unchanged while read");
        drop(reader);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        writer.join().unwrap();
        same(&p.load(), &p.write(), 1);
    }
}
