//! Per-peer prefix lists: each peer's prefixes in insertion order, for `remove_peer` and
//! `iter_peer` without scanning the tries (the kernel's `peer->allowedips_list`).
//!
//! Entries live in one slab shared by both families, linked into a doubly linked list per peer,
//! so a concentrator with a million one-prefix peers pays one 28-byte entry and one map bucket
//! per peer rather than a `Vec` allocation. The trie stores each prefix's entry id next to its
//! peer, so removing or re-owning a prefix unlinks its entry in O(1). The per-peer ends are a
//! map split into [`END_SHARDS`] maps, so that growing it rehashes a 256th of the peers at a
//! time (at four million peers, a fraction of a millisecond instead of tens of milliseconds).

use core::hash::{BuildHasher, Hash};
use core::mem::size_of;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::index::BuildIndexHasher;

/// Shards of the per-peer ends map (a power of two).
const END_SHARDS: usize = 256;

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
    /// First and last entry of each peer with at least one prefix.
    ends: Ends<P>,
}

/// Peer to (first, last) entry, sharded by hash bits 48..56, which the shard maps do not use to
/// pick buckets (they take the low bits, and the top 7 for control bytes).
#[derive(Debug, Clone)]
struct Ends<P> {
    shards: Vec<HashMap<P, (u32, u32), BuildIndexHasher>>,
    len: usize,
}

impl<P: Copy + Eq + Hash> Ends<P> {
    fn new() -> Self {
        Ends { shards: Vec::new(), len: 0 }
    }
    fn shard(&self, peer: &P) -> usize {
        (BuildIndexHasher::default().hash_one(peer) >> 48) as usize & (END_SHARDS - 1)
    }
    fn get(&self, peer: &P) -> Option<&(u32, u32)> {
        self.shards.get(self.shard(peer))?.get(peer)
    }
    fn get_mut(&mut self, peer: &P) -> Option<&mut (u32, u32)> {
        let i = self.shard(peer);
        self.shards.get_mut(i)?.get_mut(peer)
    }
    fn insert(&mut self, peer: P, ends: (u32, u32)) {
        if self.shards.is_empty() {
            self.shards = (0..END_SHARDS).map(|_| HashMap::default()).collect();
        }
        let i = self.shard(&peer);
        if let Some(m) = self.shards.get_mut(i) {
            if m.insert(peer, ends).is_none() {
                self.len += 1;
            }
        }
    }
    fn remove(&mut self, peer: &P) -> Option<(u32, u32)> {
        let i = self.shard(peer);
        let old = self.shards.get_mut(i)?.remove(peer);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn clear(&mut self) {
        self.shards.iter_mut().for_each(HashMap::clear);
        self.len = 0;
    }
    fn shrink_to_fit(&mut self) {
        if self.len == 0 {
            self.shards = Vec::new();
        }
        self.shards.iter_mut().for_each(HashMap::shrink_to_fit);
    }
    fn capacity(&self) -> usize {
        self.shards.iter().map(HashMap::capacity).sum()
    }
}

impl<P: Copy + Eq + Hash> PeerLists<P> {
    pub(super) fn new() -> Self {
        PeerLists { entries: Vec::new(), free: NIL, ends: Ends::new() }
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
        match self.ends.get_mut(&peer) {
            Some((_, tail)) => {
                let old_tail = core::mem::replace(tail, id);
                if let Some(e) = self.entries.get_mut(old_tail as usize) {
                    e.next = id;
                }
                if let Some(e) = self.entries.get_mut(id as usize) {
                    e.prev = old_tail;
                }
            }
            None => {
                self.ends.insert(peer, (id, id));
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
        if let Some(ends) = self.ends.get_mut(&peer) {
            if prev == NIL && next == NIL {
                self.ends.remove(&peer);
            } else {
                if ends.0 == id {
                    ends.0 = next;
                }
                if ends.1 == id {
                    ends.1 = prev;
                }
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
        let Some((mut id, _)) = self.ends.remove(&peer) else { return };
        while let Some(&Entry { net, cidr, next, .. }) = self.entries.get(id as usize) {
            f(id, net, cidr);
            self.release(id);
            id = next;
        }
    }

    /// `peer`'s prefixes in insertion order.
    pub(super) fn iter(&self, peer: P) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        let mut id = self.ends.get(&peer).map_or(NIL, |&(head, _)| head);
        core::iter::from_fn(move || {
            let e = self.entries.get(id as usize)?;
            id = e.next;
            Some((e.net, e.cidr))
        })
    }

    /// Number of peers with at least one prefix.
    pub(super) fn peers(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.free = NIL;
        self.ends.clear();
    }

    /// Drops spare capacity (entries stay where they are: the tries refer to them by id).
    pub(super) fn shrink_to_fit(&mut self) {
        if self.ends.is_empty() {
            self.clear();
        }
        self.entries.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Heap bytes held: the slab by capacity and the map's buckets (key, value, control byte).
    pub(super) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>() + self.ends.capacity() * (size_of::<(P, (u32, u32))>() + 1)
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
}
