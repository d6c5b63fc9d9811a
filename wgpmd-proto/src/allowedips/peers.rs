//! Per-peer prefix lists: each peer's prefixes in insertion order, for `remove_peer` and
//! `iter_peer` without scanning the tries (the kernel's `peer->allowedips_list`).
//!
//! Entries live in one slab shared by both families, linked into a doubly linked list per peer,
//! so a concentrator with a million one-prefix peers pays one 28-byte entry per peer rather than
//! a `Vec` allocation. The trie stores each prefix's entry id next to its peer, so removing or
//! re-owning a prefix unlinks its entry in O(1). Each list's ends are found by the peer's slot
//! number ([`PeerSlot`]) in a vector: 8 bytes per slot up to the highest one used, and no hashing
//! or cache miss of a map's bucket per peer (peers configured or dumped in slot order walk the
//! vector in order).

use core::mem::size_of;
use std::net::IpAddr;

use super::PeerSlot;

/// "No entry": list ends and the empty free list.
const NIL: u32 = u32::MAX;

/// The slab is full (four billion entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlabFull;

#[derive(Debug, Clone, Copy)]
struct Entry {
    net: IpAddr,
    cidr: u8,
    prev: u32,
    /// Next in the peer's list, or in the free list for a free entry.
    next: u32,
}

/// Every peer's list of prefixes.
#[derive(Debug, Clone)]
pub(super) struct PeerLists<P> {
    entries: Vec<Entry>,
    free: u32,
    /// First and last entry of each peer's list by its slot, `(NIL, NIL)` for a peer without
    /// prefixes; as long as the highest slot that had a prefix (shrunk by `shrink_to_fit`).
    ends: Vec<(u32, u32)>,
    /// Peers with at least one prefix.
    peers: usize,
    _peer: core::marker::PhantomData<P>,
}

impl<P: PeerSlot> PeerLists<P> {
    pub(super) fn new() -> Self {
        PeerLists { entries: Vec::new(), free: NIL, ends: Vec::new(), peers: 0, _peer: core::marker::PhantomData }
    }

    /// `peer`'s list ends, if it has prefixes.
    fn ends(&self, peer: P) -> Option<(u32, u32)> {
        self.ends.get(peer.slot()).copied().filter(|&(head, _)| head != NIL)
    }

    /// Forget `peer`'s list ends; returns them if it had prefixes.
    fn take_ends(&mut self, peer: P) -> Option<(u32, u32)> {
        let e = self.ends.get_mut(peer.slot()).filter(|e| e.0 != NIL)?;
        self.peers -= 1;
        Some(core::mem::replace(e, (NIL, NIL)))
    }

    /// Appends `net/cidr` to `peer`'s list; returns the entry id.
    pub(super) fn push(&mut self, peer: P, net: IpAddr, cidr: u8) -> Result<u32, SlabFull> {
        let entry = Entry { net, cidr, prev: NIL, next: NIL };
        let id = if let Some(free) = self.entries.get_mut(self.free as usize) {
            let id = self.free;
            self.free = free.next;
            *free = entry;
            id
        } else {
            let id = u32::try_from(self.entries.len()).ok().filter(|&id| id != NIL).ok_or(SlabFull)?;
            self.entries.push(entry);
            id
        };
        let slot = peer.slot();
        if self.ends.len() <= slot {
            self.ends.resize(slot + 1, (NIL, NIL));
        }
        let Some(ends) = self.ends.get_mut(slot) else { return Ok(id) };
        if ends.0 == NIL {
            *ends = (id, id);
            self.peers += 1;
        } else {
            let old_tail = core::mem::replace(&mut ends.1, id);
            if let Some(e) = self.entries.get_mut(old_tail as usize) {
                e.next = id;
            }
            if let Some(e) = self.entries.get_mut(id as usize) {
                e.prev = old_tail;
            }
        }
        Ok(id)
    }

    /// Unlinks entry `id` from `peer`'s list and frees it.
    pub(super) fn remove(&mut self, peer: P, id: u32) {
        let Some(&Entry { prev, next, .. }) = self.entries.get(id as usize) else { return };
        if let Some(e) = self.entries.get_mut(prev as usize) {
            e.next = next;
        }
        if let Some(e) = self.entries.get_mut(next as usize) {
            e.prev = prev;
        }
        if prev == NIL && next == NIL {
            self.take_ends(peer);
        } else if let Some(ends) = self.ends.get_mut(peer.slot()) {
            if ends.0 == id {
                ends.0 = next;
            }
            if ends.1 == id {
                ends.1 = prev;
            }
        }
        self.release(id);
    }

    fn release(&mut self, id: u32) {
        if let Some(e) = self.entries.get_mut(id as usize) {
            e.prev = NIL;
            e.next = self.free;
            self.free = id;
        }
    }

    /// Removes `peer`'s whole list, calling `f(entry_id, net, cidr)` for each prefix in order.
    pub(super) fn remove_peer(&mut self, peer: P, mut f: impl FnMut(u32, IpAddr, u8)) {
        let Some((mut id, _)) = self.take_ends(peer) else { return };
        while let Some(&Entry { net, cidr, next, .. }) = self.entries.get(id as usize) {
            f(id, net, cidr);
            self.release(id);
            id = next;
        }
    }

    /// `peer`'s prefixes in insertion order.
    pub(super) fn iter(&self, peer: P) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        let mut id = self.ends(peer).map_or(NIL, |(head, _)| head);
        core::iter::from_fn(move || {
            let e = self.entries.get(id as usize)?;
            id = e.next;
            Some((e.net, e.cidr))
        })
    }

    /// Number of peers with at least one prefix.
    pub(super) fn peers(&self) -> usize {
        self.peers
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.free = NIL;
        self.ends.clear();
        self.peers = 0;
    }

    /// Drops spare capacity (entries stay where they are: the tries refer to them by id).
    pub(super) fn shrink_to_fit(&mut self) {
        if self.peers == 0 {
            self.clear();
        }
        let used = self.ends.iter().rposition(|&(head, _)| head != NIL).map_or(0, |last| last + 1);
        self.ends.truncate(used);
        self.entries.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Heap bytes held: the slab and the ends, by capacity.
    pub(super) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>() + self.ends.capacity() * size_of::<(u32, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
    }

    #[test]
    fn lists_keep_order_and_reuse_entries() {
        let mut l = PeerLists::new();
        let ids: Vec<u32> = (0..5).map(|i| l.push(7u32, net(i), 32).unwrap()).collect();
        let other = l.push(8, net(99), 24).unwrap();
        l.remove(7, ids[0]);
        l.remove(7, ids[2]);
        l.remove(7, ids[4]);
        assert_eq!(l.iter(7).collect::<Vec<_>>(), vec![(net(1), 32), (net(3), 32)]);
        // Freed entries are reused before the slab grows.
        let len = l.entries.len();
        let again = l.push(7, net(5), 32).unwrap();
        assert!(ids.contains(&again));
        assert_eq!(l.entries.len(), len);
        assert_eq!(l.iter(7).collect::<Vec<_>>(), vec![(net(1), 32), (net(3), 32), (net(5), 32)]);
        let mut seen = Vec::new();
        l.remove_peer(7, |_, n, c| seen.push((n, c)));
        assert_eq!(seen, vec![(net(1), 32), (net(3), 32), (net(5), 32)]);
        assert_eq!(l.iter(7).count(), 0);
        assert_eq!(l.iter(8).collect::<Vec<_>>(), vec![(net(99), 24)]);
        l.remove(8, other);
        assert_eq!(l.peers(), 0);
    }

    #[test]
    fn ends_are_found_by_slot_and_shrink_to_the_highest_used() {
        let mut l = PeerLists::new();
        assert_eq!(l.heap_bytes(), 0);
        l.push(3u32, net(1), 32).unwrap();
        l.push(1000, net(2), 32).unwrap();
        l.push(1000, net(3), 32).unwrap();
        assert_eq!((l.peers(), l.ends.len()), (2, 1001));
        assert_eq!(l.iter(1000).collect::<Vec<_>>(), vec![(net(2), 32), (net(3), 32)]);
        // Slots without prefixes, inside and past the vector, have none.
        assert_eq!((l.iter(4).count(), l.iter(5000).count()), (0, 0));
        let mut seen = 0;
        l.remove_peer(5000, |_, _, _| seen += 1);
        l.remove_peer(4, |_, _, _| seen += 1);
        assert_eq!((seen, l.peers()), (0, 2));
        l.remove_peer(1000, |_, _, _| seen += 1);
        assert_eq!((seen, l.peers()), (2, 1));
        // Only slot 3 has prefixes now: the vector shrinks to it.
        l.shrink_to_fit();
        assert_eq!(l.ends.len(), 4);
        assert!(l.heap_bytes() < 200, "{} bytes", l.heap_bytes());
        assert_eq!(l.iter(3).collect::<Vec<_>>(), vec![(net(1), 32)]);
        // A peer whose last prefix is removed one by one has none, and is not counted.
        let e = l.push(7, net(9), 32).unwrap();
        assert_eq!(l.peers(), 2);
        l.remove(7, e);
        assert_eq!((l.peers(), l.iter(7).count()), (1, 0));
    }
}
