//! Cryptokey routing: the allowed-IPs tables mapping IPv4 and IPv6 prefixes to peers.
//!
//! This module owns the rule "a packet belongs to the peer with the most specific allowed-IP
//! prefix for its address" (outbound: destination picks the peer; inbound: the source must map
//! back to the peer it came from), following the kernel's `allowedips.c`:
//! - inserting masks off host bits beyond the prefix length, and an existing prefix changes
//!   owner (it moves to the tail of its new peer's list, as `list_move_tail` does there);
//! - removal is by prefix and peer, or of all of a peer's prefixes at once, via a per-peer index
//!   so it costs the peer's own prefix count, not the table size;
//! - a peer's prefixes iterate in insertion order (the kernel's `peer->allowedips_list`).
//!
//! # Structure, and why
//! The kernel uses a path-compressed *binary* trie: one node, and in a large table one cache
//! miss, per branching bit, about `log2(n)` of them (some twenty at a million prefixes). Here
//! each family is (see the `trie` submodule):
//! - a direct table over the top 12 address bits (4096 slots, 48 KiB; poptrie's "direct
//!   pointing"), holding each slot's subtree and, leaf-pushed, the longest prefix shorter than
//!   12 bits covering it;
//! - under it a path-compressed multibit trie with popcount-compressed nodes (a tree bitmap):
//!   a node covers 6 bits in 40 (IPv4) or 56 (IPv6) bytes, stores its key so that children can
//!   skip empty levels, and keeps its peer inline when it holds a single prefix.
//!
//! A lookup is one direct-table load and at most 4 (IPv4) / 20 (IPv6) node loads (two or three
//! for a million random prefixes), and rarely a separate result load. The alternatives: a
//! poptrie or other leaf-pushed multibit trie looks up a little faster, but it expands
//! prefixes, so an update rewrites whole subtrees. DIR-24-8 costs 64 MiB even when empty. One
//! hash table per prefix length (Waldvogel) needs marker entries, and several probes for IPv6.
//! A tree bitmap keeps prefixes unexpanded, so an update touches one node and one or two arena
//! blocks, and path compression bounds the node count by `2n` even for sparse IPv6. Nodes and
//! peers live in `u32`-addressed arenas, with no per-node allocation and no pointers. The
//! arenas are repacked breadth-first when free blocks pass half the live slots, or on
//! [`AllowedIps::compact`]. At a million random prefixes the tries take about 26 (IPv4) and 68
//! (IPv6) bytes per prefix, and the per-peer lists about 36 more with one prefix per peer (a
//! 28-byte entry, and 8 bytes for the list's ends by peer slot). `benches/allowedips.rs`
//! measures lookups against exact-match hash maps. For bursts,
//! [`AllowedIps::lookup_v4_batch`] interleaves lookups so that their cache misses overlap.
//!
//! IPv4 /32s, a carrier subscriber's usual prefix, are also kept in an open-addressed table
//! (the `hosts` submodule, 8 bytes a slot, grown to 60 % full, at most 75 %): a /32 is the longest prefix there is, so an
//! address found there needs no walk of the trie, one cache line instead of three or four.
//!
//! Lookups allocate nothing and cannot panic. The table is single-writer: share it behind an
//! `ArcSwap` snapshot or a lock (the kernel uses RCU).

mod arena;
mod hosts;
mod peers;
mod trie;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hosts::Hosts;
use peers::PeerLists;
use trie::Trie;

/// A peer id as the tables take it: a small slot number (the device's peer ids are indices of
/// its peer slots). Each peer's list of prefixes is found by it in a vector as long as the
/// highest slot given a prefix (8 bytes a slot), so ids must be dense, not arbitrary numbers.
pub trait PeerSlot: Copy + Eq {
    /// The slot number.
    fn slot(self) -> usize;
    /// The id of slot number `slot` (the inverse of [`PeerSlot::slot`] for the numbers it
    /// returns).
    fn from_slot(slot: usize) -> Self;
}

impl PeerSlot for u32 {
    #[inline]
    fn slot(self) -> usize {
        self as usize
    }
    #[inline]
    fn from_slot(slot: usize) -> Self {
        slot as u32
    }
}

impl PeerSlot for u16 {
    #[inline]
    fn slot(self) -> usize {
        self.into()
    }
    #[inline]
    fn from_slot(slot: usize) -> Self {
        slot as u16
    }
}

/// Errors from [`AllowedIps::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowedIpsError {
    /// The prefix length is longer than the address (over 32 for IPv4, 128 for IPv6).
    #[error("prefix length /{cidr} is longer than the {max}-bit address")]
    InvalidCidr {
        /// The prefix length given.
        cidr: u8,
        /// The address width.
        max: u8,
    },
    /// The table cannot address more nodes (over four billion).
    #[error("allowed-ips table is full")]
    TableFull,
}

/// Longest-prefix-match tables, IPv4 and IPv6, from prefix to peer id `P` (a small `Copy` id
/// such as a `u32` slot number).
#[derive(Clone)]
pub struct AllowedIps<P: PeerSlot> {
    v4: Trie<u32, Route<P>>,
    v6: Trie<u128, Route<P>>,
    /// The IPv4 /32s of `v4` again, answered first by lookups (`hosts`).
    hosts: Hosts<P>,
    /// Each peer's prefixes (masked) in insertion order.
    by_peer: PeerLists<P>,
}

/// What a trie maps a prefix to: the peer, and the prefix's entry in the peer's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route<P> {
    peer: P,
    entry: u32,
}

impl<P: PeerSlot> Default for AllowedIps<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: PeerSlot> core::fmt::Debug for AllowedIps<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AllowedIps")
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .field("peers", &self.by_peer.peers())
            .finish()
    }
}

/// Masks `addr` to `cidr` bits, or says why it cannot.
fn masked(addr: IpAddr, cidr: u8) -> Result<IpAddr, AllowedIpsError> {
    use trie::Key;
    match addr {
        IpAddr::V4(a) if cidr <= u32::BITS as u8 => Ok(IpAddr::V4(u32::from(a).masked(cidr).into())),
        IpAddr::V6(a) if cidr <= u128::BITS as u8 => Ok(IpAddr::V6(u128::from(a).masked(cidr).into())),
        IpAddr::V4(_) => Err(AllowedIpsError::InvalidCidr { cidr, max: u32::BITS as u8 }),
        IpAddr::V6(_) => Err(AllowedIpsError::InvalidCidr { cidr, max: u128::BITS as u8 }),
    }
}

impl<P: PeerSlot> AllowedIps<P> {
    /// An empty table; allocates nothing until the first insert.
    pub fn new() -> Self {
        AllowedIps { v4: Trie::new(), v6: Trie::new(), hosts: Hosts::new(), by_peer: PeerLists::new() }
    }

    /// Routes `addr/cidr` to `peer`. Bits of `addr` beyond `cidr` are ignored; an existing
    /// prefix is taken over by `peer` and moves to the end of its list.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, peer: P) -> Result<(), AllowedIpsError> {
        let net = masked(addr, cidr)?;
        let entry = self.by_peer.push(peer, net, cidr).map_err(|_| AllowedIpsError::TableFull)?;
        let route = Route { peer, entry };
        let old = match net {
            IpAddr::V4(a) => self.v4.insert(a.into(), cidr, route),
            IpAddr::V6(a) => self.v6.insert(a.into(), cidr, route),
        };
        match old {
            Ok(Some(old)) => self.by_peer.remove(old.peer, old.entry),
            Ok(None) => {}
            Err(_) => {
                self.by_peer.remove(peer, entry);
                return Err(AllowedIpsError::TableFull);
            }
        }
        if let (IpAddr::V4(a), 32) = (net, cidr) {
            self.hosts.insert(a.into(), peer);
        }
        Ok(())
    }

    /// Removes `addr/cidr` (host bits ignored) if it routes to `peer`; returns whether it did.
    /// An invalid prefix length removes nothing.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8, peer: P) -> bool {
        let Ok(net) = masked(addr, cidr) else { return false };
        let removed = match net {
            IpAddr::V4(a) => self.v4.remove_if(a.into(), cidr, |r| r.peer == peer),
            IpAddr::V6(a) => self.v6.remove_if(a.into(), cidr, |r| r.peer == peer),
        };
        if let Some(route) = removed {
            self.by_peer.remove(peer, route.entry);
            if let (IpAddr::V4(a), 32) = (net, cidr) {
                self.hosts.remove(a.into(), peer);
            }
        }
        removed.is_some()
    }

    /// Removes every prefix of `peer`, in time proportional to its own prefix count.
    pub fn remove_peer(&mut self, peer: P) {
        let (v4, v6, hosts) = (&mut self.v4, &mut self.v6, &mut self.hosts);
        self.by_peer.remove_peer(peer, |entry, net, cidr| {
            let this = |r: &Route<P>| r.entry == entry;
            match net {
                IpAddr::V4(a) => {
                    if v4.remove_if(a.into(), cidr, this).is_some() && cidr == 32 {
                        hosts.remove(a.into(), peer);
                    }
                }
                IpAddr::V6(a) => {
                    v6.remove_if(a.into(), cidr, this);
                }
            };
        });
    }

    /// The peer with the most specific prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<P> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// [`AllowedIps::lookup`] for an IPv4 address. Allocates nothing.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<P> {
        let a = u32::from(addr);
        self.hosts.get(a).or_else(|| self.v4.lookup(a).map(|r| r.peer))
    }

    /// [`AllowedIps::lookup`] for an IPv6 address. Allocates nothing.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<P> {
        self.v6.lookup(u128::from(addr)).map(|r| r.peer)
    }

    /// [`AllowedIps::lookup_v4`] of each address of `addrs`, into the same position of `out`
    /// (up to the shorter of the two). Interleaves several lookups so their cache misses
    /// overlap: use it for a burst of packets when the table is larger than the cache (it
    /// gains nothing on small tables). Allocates nothing.
    pub fn lookup_v4_batch(&self, addrs: &[Ipv4Addr], out: &mut [Option<P>]) {
        // The host routes first, every probe's line requested before the first is read; the
        // trie then walks only the addresses that are no host route.
        let mut keys = [0u32; trie::LANES];
        let mut at = [0usize; trie::LANES];
        for (addrs, out) in addrs.chunks(trie::LANES).zip(out.chunks_mut(trie::LANES)) {
            for a in addrs {
                self.hosts.prefetch(u32::from(*a));
            }
            let mut n = 0;
            for (i, (a, o)) in addrs.iter().zip(out.iter_mut()).enumerate() {
                let a = u32::from(*a);
                *o = self.hosts.get(a);
                if o.is_none() {
                    (keys[n], at[n]) = (a, i);
                    n += 1;
                }
            }
            if n == 0 {
                continue;
            }
            let mut routes = [None; trie::LANES];
            self.v4.lookup_batch(&keys[..n], &mut routes);
            for (&i, r) in at.iter().zip(routes).take(n) {
                if let Some(o) = out.get_mut(i) {
                    *o = r.map(|r: Route<P>| r.peer);
                }
            }
        }
    }

    /// [`AllowedIps::lookup_v6`] of each address of `addrs` into `out`; see
    /// [`AllowedIps::lookup_v4_batch`].
    pub fn lookup_v6_batch(&self, addrs: &[Ipv6Addr], out: &mut [Option<P>]) {
        let mut keys = [0u128; trie::LANES];
        for (addrs, out) in addrs.chunks(trie::LANES).zip(out.chunks_mut(trie::LANES)) {
            for (k, a) in keys.iter_mut().zip(addrs) {
                *k = u128::from(*a);
            }
            let mut routes = [None; trie::LANES];
            self.v6.lookup_batch(&keys[..addrs.len()], &mut routes);
            for (o, r) in out.iter_mut().zip(routes).take(addrs.len()) {
                *o = r.map(|r: Route<P>| r.peer);
            }
        }
    }

    /// `peer`'s prefixes (host bits cleared) in the order they were inserted.
    pub fn iter_peer(&self, peer: P) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.by_peer.iter(peer)
    }

    /// Number of prefixes, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether there are no prefixes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix (keeping the allocations for reuse).
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.hosts.clear();
        self.by_peer.clear();
    }

    /// Repacks the tables densely (breadth-first, no free blocks, no spare capacity), in time
    /// linear in the table size. Growing a node moves it to a block one longer, which leaves
    /// free blocks behind (recycled, but about one per node remains); call this after loading
    /// many prefixes at once.
    pub fn compact(&mut self) {
        self.v4.compact();
        self.v6.compact();
        self.hosts.shrink_to_fit();
        self.by_peer.shrink_to_fit();
    }

    /// Heap bytes held: both tries' arenas, the IPv4 host routes' table and the per-peer
    /// lists, by capacity.
    pub fn memory_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes() + self.hosts.heap_bytes() + self.by_peer.heap_bytes()
    }

    /// Statistics for tuning and the benchmark report.
    pub fn stats(&self) -> AllowedIpsStats {
        AllowedIpsStats {
            v4_prefixes: self.v4.len(),
            v6_prefixes: self.v6.len(),
            v4_nodes: self.v4.node_count(),
            v6_nodes: self.v6.node_count(),
            v4_trie_bytes: self.v4.heap_bytes(),
            v6_trie_bytes: self.v6.heap_bytes(),
            total_bytes: self.memory_bytes(),
        }
    }
}

/// Size statistics of an [`AllowedIps`] (see [`AllowedIps::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedIpsStats {
    /// IPv4 prefixes.
    pub v4_prefixes: usize,
    /// IPv6 prefixes.
    pub v6_prefixes: usize,
    /// Live IPv4 trie nodes, root included.
    pub v4_nodes: usize,
    /// Live IPv6 trie nodes, root included.
    pub v6_nodes: usize,
    /// Heap bytes of the IPv4 trie (nodes and peers, by capacity).
    pub v4_trie_bytes: usize,
    /// Heap bytes of the IPv6 trie.
    pub v6_trie_bytes: usize,
    /// [`AllowedIps::memory_bytes`]: both tries, the IPv4 host routes and the per-peer index.
    pub total_bytes: usize,
}

#[cfg(test)]
mod tests;
