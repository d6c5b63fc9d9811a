//! The per-family trie: a path-compressed multibit trie with popcount-compressed nodes (a
//! tree bitmap, Eatherton et al. 2004) over `u32` (IPv4) or `u128` (IPv6) keys.
//!
//! Each node covers [`STRIDE`] bits of the address starting at its `depth` (a multiple of the
//! stride). Its `internal` bitmap holds the prefixes that end inside those bits, heap-indexed
//! (`1 << rel_len | rel_bits`, so a longer prefix has a higher bit); its `external` bitmap holds
//! one bit per child slot. Children sit in one arena block in slot order, peers in one result
//! block in heap order, so both are found by popcount. A child may sit deeper than `depth +
//! STRIDE` (path compression): a node stores its key, and a lookup stops at the first node whose
//! key disagrees with the address. Canonical form, restored after every removal: every node
//! but the root holds a prefix or has two children, so there are at most `2n + 1` nodes.

use super::arena::{Arena, ArenaFull};

/// Address bits consumed per node. Six gives 63 + 64 bitmap bits, exactly two `u64`s.
pub(super) const STRIDE: u8 = 6;
const SLOTS: usize = 1 << STRIDE;

/// An address family's key: a big-endian address as an unsigned integer.
pub(super) trait Key: Copy + Eq + Default + core::fmt::Debug {
    /// Address width in bits.
    const WIDTH: u8;
    /// The [`STRIDE`] bits starting at bit `start` (MSB first), zero past the end.
    fn chunk(self, start: u8) -> usize;
    /// The top `len` bits kept, the rest cleared.
    fn masked(self, len: u8) -> Self;
    /// Whether `self` and `other` agree on their top `len` bits.
    fn prefix_eq(self, other: Self, len: u8) -> bool;
    /// Number of leading bits on which `self` and `other` agree.
    fn common_prefix(self, other: Self) -> u8;
}

macro_rules! impl_key {
    ($t:ty) => {
        impl Key for $t {
            const WIDTH: u8 = <$t>::BITS as u8;
            #[inline(always)]
            fn chunk(self, start: u8) -> usize {
                (self.checked_shl(u32::from(start)).unwrap_or(0) >> (Self::WIDTH - STRIDE)) as usize
            }
            #[inline(always)]
            fn masked(self, len: u8) -> Self {
                match (<$t>::MAX).checked_shl(u32::from(Self::WIDTH.saturating_sub(len))) {
                    Some(mask) => self & mask,
                    None => 0,
                }
            }
            #[inline(always)]
            fn prefix_eq(self, other: Self, len: u8) -> bool {
                (self ^ other).checked_shr(u32::from(Self::WIDTH.saturating_sub(len))).unwrap_or(0) == 0
            }
            #[inline(always)]
            fn common_prefix(self, other: Self) -> u8 {
                (self ^ other).leading_zeros() as u8
            }
        }
    };
}
impl_key!(u32);
impl_key!(u128);

/// For each chunk value `v`, the heap positions of all prefixes inside a node that cover `v`:
/// `internal & ANCESTORS[v]` are the node's matches, its highest bit the longest.
const ANCESTORS: [u64; SLOTS] = {
    let mut table = [0u64; SLOTS];
    let mut v = 0;
    while v < SLOTS {
        let mut len = 0;
        while len < STRIDE {
            table[v] |= 1 << heap_pos(len, v >> (STRIDE - len));
            len += 1;
        }
        v += 1;
    }
    table
};

/// Heap position of a prefix `rel_len < STRIDE` bits into a node with those bits `rel_bits`.
#[inline(always)]
const fn heap_pos(rel_len: u8, rel_bits: usize) -> u32 {
    (1u32 << rel_len) | rel_bits as u32
}

/// Mask of the bits strictly below `bit` (`bit < 64`).
#[inline(always)]
fn below(bit: u32) -> u64 {
    (1u64 << bit) - 1
}

/// "No node" / "no result": past the end of any arena.
const NONE: usize = usize::MAX;

/// Lookups walked in lockstep by [`Trie::lookup_batch`].
pub(super) const LANES: usize = 8;

/// One level of a lookup: matches `addr` against node `idx`, records the longest prefix found
/// there in `best` (a result index), and returns the child to visit next or [`NONE`].
#[inline(always)]
fn step<K: Key>(nodes: &[Node<K>], addr: K, idx: usize, best: &mut usize) -> usize {
    let Some(node) = nodes.get(idx) else { return NONE };
    if !addr.prefix_eq(node.key, node.depth) {
        return NONE;
    }
    let v = addr.chunk(node.depth) & (SLOTS - 1);
    let matches = node.internal & ANCESTORS[v];
    if matches != 0 {
        let pos = 63 - matches.leading_zeros();
        *best = node.results as usize + (node.internal & below(pos)).count_ones() as usize;
    }
    let bit = v as u32;
    if node.external & (1u64 << bit) == 0 {
        return NONE;
    }
    node.children as usize + (node.external & below(bit)).count_ones() as usize
}

/// Depth of the node that holds a prefix of length `cidr`.
#[inline(always)]
fn home_depth(cidr: u8) -> u8 {
    cidr / STRIDE * STRIDE
}

/// One trie node; see the module doc. `children` / `results` are meaningless while the
/// matching bitmap is zero.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Node<K> {
    key: K,
    internal: u64,
    external: u64,
    children: u32,
    results: u32,
    depth: u8,
}

/// One address family's table from prefix to `P`.
#[derive(Debug, Clone)]
pub(super) struct Trie<K, P> {
    /// Index 0 is the root (depth 0) once anything was inserted.
    nodes: Arena<Node<K>>,
    results: Arena<P>,
    len: usize,
}

impl<K: Key, P: Copy + Eq> Trie<K, P> {
    /// An empty trie; allocates nothing.
    pub(super) const fn new() -> Self {
        Trie { nodes: Arena::new(), results: Arena::new(), len: 0 }
    }

    /// Number of prefixes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Longest-prefix match. The hot path: no allocation, no recursion, one node load per
    /// [`STRIDE`] bits and one result load at the end.
    #[inline]
    pub(super) fn lookup(&self, addr: K) -> Option<P> {
        let nodes = self.nodes.slots();
        let (mut idx, mut best) = (0, NONE);
        while idx != NONE {
            idx = step(nodes, addr, idx, &mut best);
        }
        self.results.get(best).copied()
    }

    /// Longest-prefix match of every address in `addrs` into `out` (up to the shorter of the
    /// two). Walks [`LANES`] lookups in lockstep, one level of each per round, so their cache
    /// misses overlap instead of queueing: on tables larger than the cache this is several
    /// times the throughput of calling [`Trie::lookup`] in a loop.
    pub(super) fn lookup_batch(&self, addrs: &[K], out: &mut [Option<P>]) {
        let nodes = self.nodes.slots();
        for (addrs, out) in addrs.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let mut idx = [NONE; LANES];
            let mut best = [NONE; LANES];
            if !nodes.is_empty() {
                idx = [0; LANES];
            }
            let mut live = true;
            while live {
                live = false;
                for ((i, b), &addr) in idx.iter_mut().zip(best.iter_mut()).zip(addrs) {
                    *i = step(nodes, addr, *i, b);
                    live |= *i != NONE;
                }
            }
            for (o, &b) in out.iter_mut().zip(&best) {
                *o = self.results.get(b).copied();
            }
        }
    }

    /// Maps the prefix `key/cidr` (`key` already masked, `cidr <= K::WIDTH`) to `peer`,
    /// returning the peer it replaced.
    pub(super) fn insert(&mut self, key: K, cidr: u8, peer: P) -> Result<Option<P>, ArenaFull> {
        if self.nodes.slots().is_empty() {
            self.nodes.alloc_one(Node::default())?;
        }
        let target = home_depth(cidr);
        let mut cur = 0usize;
        loop {
            let node = *self.nodes.get(cur).ok_or(ArenaFull)?;
            // Invariant: `key` agrees with `node.key` on `node.depth` bits and cidr >= depth.
            if node.depth == target {
                let rel = cidr - target;
                let pos = heap_pos(rel, key.chunk(target) >> (STRIDE - rel));
                let rank = (node.internal & below(pos)).count_ones() as usize;
                if node.internal & (1 << pos) != 0 {
                    let slot = self.results.get_mut(node.results as usize + rank).ok_or(ArenaFull)?;
                    return Ok(Some(core::mem::replace(slot, peer)));
                }
                let count = node.internal.count_ones() as usize;
                let results = self.results.insert(node.results, count, rank, peer)?;
                let n = self.nodes.get_mut(cur).ok_or(ArenaFull)?;
                n.results = results;
                n.internal |= 1 << pos;
                self.len += 1;
                return Ok(None);
            }
            let v = key.chunk(node.depth) & (SLOTS - 1);
            let bit = v as u32;
            let rank = (node.external & below(bit)).count_ones() as usize;
            if node.external & (1 << bit) == 0 {
                // A fresh leaf straight at the prefix's home depth: path compression.
                let results = self.results.alloc_one(peer)?;
                let rel = cidr - target;
                let leaf = Node {
                    key: key.masked(target),
                    internal: 1 << heap_pos(rel, key.chunk(target) >> (STRIDE - rel)),
                    external: 0,
                    children: 0,
                    results,
                    depth: target,
                };
                let count = node.external.count_ones() as usize;
                let children = match self.nodes.insert(node.children, count, rank, leaf) {
                    Ok(c) => c,
                    Err(e) => {
                        self.results.release(results, 1);
                        return Err(e);
                    }
                };
                let n = self.nodes.get_mut(cur).ok_or(ArenaFull)?;
                n.children = children;
                n.external |= 1 << bit;
                self.len += 1;
                return Ok(None);
            }
            let ci = node.children as usize + rank;
            let child = *self.nodes.get(ci).ok_or(ArenaFull)?;
            if child.depth <= target && key.prefix_eq(child.key, child.depth) {
                cur = ci;
                continue;
            }
            // The child skips past where the new prefix diverges or lives: put a node at the
            // deepest stride boundary above both, holding the child; then continue into it.
            let split = key.common_prefix(child.key).min(target) / STRIDE * STRIDE;
            let block = self.nodes.alloc_one(child)?;
            let mid = Node {
                key: key.masked(split),
                internal: 0,
                external: 1 << (child.key.chunk(split) & (SLOTS - 1)),
                children: block,
                results: 0,
                depth: split,
            };
            *self.nodes.get_mut(ci).ok_or(ArenaFull)? = mid;
            cur = ci;
        }
    }

    /// Removes the prefix `key/cidr` (`key` masked) if `keep` says so of its peer; returns
    /// the removed peer.
    pub(super) fn remove_if(&mut self, key: K, cidr: u8, keep: impl FnOnce(&P) -> bool) -> Option<P> {
        let target = home_depth(cidr);
        // Node indices from the root down to the prefix's home node.
        let mut path: Vec<usize> = Vec::with_capacity(usize::from(K::WIDTH / STRIDE) + 2);
        let mut cur = 0usize;
        let node = loop {
            let node = *self.nodes.get(cur)?;
            if !key.prefix_eq(node.key, node.depth) || node.depth > target {
                return None;
            }
            path.push(cur);
            if node.depth == target {
                break node;
            }
            let bit = (key.chunk(node.depth) & (SLOTS - 1)) as u32;
            if node.external & (1 << bit) == 0 {
                return None;
            }
            cur = node.children as usize + (node.external & below(bit)).count_ones() as usize;
        };
        let rel = cidr - target;
        let pos = heap_pos(rel, key.chunk(target) >> (STRIDE - rel));
        if node.internal & (1 << pos) == 0 {
            return None;
        }
        let rank = (node.internal & below(pos)).count_ones() as usize;
        let peer = *self.results.get(node.results as usize + rank)?;
        if !keep(&peer) {
            return None;
        }
        let results = self.results.remove(node.results, node.internal.count_ones() as usize, rank);
        if let Some(n) = self.nodes.get_mut(cur) {
            n.results = results;
            n.internal &= !(1 << pos);
        }
        self.len -= 1;
        self.restore_canonical(&path);
        Some(peer)
    }

    /// After a removal at the end of `path`, drops nodes left empty and splices out nodes left
    /// with no prefix and a single child, walking up while that changes a parent.
    fn restore_canonical(&mut self, path: &[usize]) {
        let mut level = path.len();
        while level >= 2 {
            let (idx, parent_idx) = (path[level - 1], path[level - 2]);
            let Some(&node) = self.nodes.get(idx) else { return };
            if node.internal != 0 || node.external.count_ones() >= 2 {
                return;
            }
            if node.external != 0 {
                // One child: it takes this node's place (its own key keeps lookups exact).
                let Some(&child) = self.nodes.get(node.children as usize) else { return };
                self.nodes.release(node.children, 1);
                if let Some(slot) = self.nodes.get_mut(idx) {
                    *slot = child;
                }
                return;
            }
            // Empty: remove it from the parent's children, then look at the parent.
            let Some(&parent) = self.nodes.get(parent_idx) else { return };
            let bit = (node.key.chunk(parent.depth) & (SLOTS - 1)) as u32;
            let rank = (parent.external & below(bit)).count_ones() as usize;
            let children = self.nodes.remove(parent.children, parent.external.count_ones() as usize, rank);
            if let Some(p) = self.nodes.get_mut(parent_idx) {
                p.children = children;
                p.external &= !(1 << bit);
            }
            level -= 1;
        }
        if self.len == 0 {
            self.clear();
        }
    }

    /// Removes every prefix, keeping allocations.
    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.results.clear();
        self.len = 0;
    }

    /// Repacks both arenas densely, nodes in breadth-first order (so the top levels, which
    /// every lookup visits, share cache lines), dropping free blocks and spare capacity.
    /// Linear in the table size; allocates the new arenas before freeing the old.
    pub(super) fn compact(&mut self) {
        let old_nodes = self.nodes.slots();
        let old_results = self.results.slots();
        let Some(&root) = old_nodes.first() else { return };
        let mut nodes = Vec::with_capacity(self.nodes.live());
        let mut results = Vec::with_capacity(self.results.live());
        nodes.push(root);
        let mut i = 0;
        while let Some(&node) = nodes.get(i) {
            let mut node = node;
            let (r, c) = (node.results as usize, node.children as usize);
            if let Some(block) = old_results.get(r..r + node.internal.count_ones() as usize) {
                node.results = u32::try_from(results.len()).unwrap_or(u32::MAX);
                results.extend_from_slice(block);
            }
            if let Some(block) = old_nodes.get(c..c + node.external.count_ones() as usize) {
                node.children = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
                nodes.extend_from_slice(block);
            }
            if let Some(slot) = nodes.get_mut(i) {
                *slot = node;
            }
            i += 1;
        }
        self.nodes = Arena::from_vec(nodes);
        self.results = Arena::from_vec(results);
    }

    /// Heap bytes held by the trie.
    pub(super) fn heap_bytes(&self) -> usize {
        self.nodes.heap_bytes() + self.results.heap_bytes()
    }

    /// Live nodes (root included), for statistics.
    pub(super) fn node_count(&self) -> usize {
        self.nodes.live()
    }
}
