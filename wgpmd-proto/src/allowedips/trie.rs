//! The per-family trie: a direct table over the top [`TOP_BITS`] address bits, under it a
//! path-compressed multibit trie with popcount-compressed nodes (a tree bitmap, Eatherton et
//! al. 2004), over `u32` (IPv4) or `u128` (IPv6) keys.
//!
//! The direct table (poptrie's "direct pointing") replaces the two levels every lookup would
//! otherwise walk first: slot `s` holds the subtree for addresses starting with `s` and, leaf-
//! pushed, the longest prefix shorter than [`TOP_BITS`] covering `s`. Those short prefixes are
//! also kept unexpanded in a heap-indexed array, from which a slot is recomputed on removal.
//!
//! Each node covers [`STRIDE`] bits of the address starting at its `depth` (a multiple of the
//! stride). Its `internal` bitmap holds the prefixes that end inside those bits, heap-indexed
//! (`1 << rel_len | rel_bits`, so a longer prefix has a higher bit); its `external` bitmap holds
//! one bit per child slot. Children sit in one arena block in slot order, found by popcount;
//! the peer of a node's only prefix sits inline in the node, the peers of two or more in one
//! result block in heap order, again found by popcount. A child may sit deeper than `depth +
//! STRIDE` (path compression): a node stores its key, and a lookup stops at the first node whose
//! key disagrees with the address. Canonical form, restored after every removal: every node
//! holds a prefix or has two children, so there are at most `2n` nodes.

use super::arena::{Arena, ArenaFull};

/// Address bits consumed per node. Six gives 63 + 64 bitmap bits, exactly two `u64`s.
pub(super) const STRIDE: u8 = 6;
const SLOTS: usize = 1 << STRIDE;
/// Address bits resolved by the direct table: two strides, 4096 slots of 12 bytes.
pub(super) const TOP_BITS: u8 = 2 * STRIDE;
const TOP_SLOTS: usize = 1 << TOP_BITS;
/// Free arena slots tolerated beyond half the live ones before an update repacks the trie.
const COMPACT_SLACK: usize = 4096;
/// "None" in `u32` index fields: never a valid arena index (arenas stop below `u32::MAX`).
const NIL: u32 = u32::MAX;

/// An address family's key: a big-endian address as an unsigned integer.
pub(super) trait Key: Copy + Eq + Default + core::fmt::Debug {
    /// Address width in bits.
    const WIDTH: u8;
    /// How a node stores a key: `u128` as two `u64`s, so IPv6 nodes need only 8-byte alignment.
    type Packed: Copy + core::fmt::Debug;
    /// The key in node storage form.
    fn pack(self) -> Self::Packed;
    /// The key back from node storage form.
    fn unpack(packed: Self::Packed) -> Self;
    /// The [`STRIDE`] bits starting at bit `start` (MSB first), zero past the end.
    fn chunk(self, start: u8) -> usize;
    /// The top [`TOP_BITS`] bits: the key's direct-table slot.
    fn top(self) -> usize;
    /// The top `len` bits kept, the rest cleared.
    fn masked(self, len: u8) -> Self;
    /// Whether `self` and `other` agree on their top `len` bits.
    fn prefix_eq(self, other: Self, len: u8) -> bool;
    /// Number of leading bits on which `self` and `other` agree.
    fn common_prefix(self, other: Self) -> u8;
}

macro_rules! impl_key {
    ($t:ty, $packed:ty, $pack:expr, $unpack:expr) => {
        impl Key for $t {
            const WIDTH: u8 = <$t>::BITS as u8;
            type Packed = $packed;
            #[inline(always)]
            fn pack(self) -> $packed {
                $pack(self)
            }
            #[inline(always)]
            fn unpack(packed: $packed) -> Self {
                $unpack(packed)
            }
            #[inline(always)]
            fn chunk(self, start: u8) -> usize {
                (self.checked_shl(u32::from(start)).unwrap_or(0) >> (Self::WIDTH - STRIDE)) as usize
            }
            #[inline(always)]
            fn top(self) -> usize {
                (self >> (Self::WIDTH - TOP_BITS)) as usize
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
impl_key!(u32, u32, |k| k, |p| p);
impl_key!(u128, [u64; 2], |k: u128| [(k >> 64) as u64, k as u64], |p: [u64; 2]| {
    u128::from(p[0]) << 64 | u128::from(p[1])
});

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

/// One level of a lookup: matches `addr` against node `idx`, records the peer of the longest
/// prefix found there in `best`, and returns the child to visit next or [`NONE`].
///
/// A node holding one prefix keeps its peer inline, so the last node of most lookups needs
/// no further load; a node holding several reads its result block here, off the chain of
/// dependent node loads (the next node's address does not depend on it), so it overlaps.
#[inline(always)]
fn step<K: Key, P: Copy>(nodes: &[Node<K, P>], results: &[P], addr: K, idx: usize, best: &mut Option<P>) -> usize {
    let Some(node) = nodes.get(idx) else { return NONE };
    if !addr.prefix_eq(node.key(), node.depth) {
        return NONE;
    }
    let v = addr.chunk(node.depth) & (SLOTS - 1);
    let matches = node.internal & ANCESTORS[v];
    if matches != 0 {
        *best = if node.internal & (node.internal - 1) == 0 {
            Some(node.value)
        } else {
            let pos = 63 - matches.leading_zeros();
            results.get(node.results as usize + (node.internal & below(pos)).count_ones() as usize).copied()
        };
    }
    let bit = v as u32;
    if node.external & (1u64 << bit) == 0 {
        return NONE;
    }
    node.children as usize + (node.external & below(bit)).count_ones() as usize
}

/// A new node at the home depth of `key/cidr` holding just that prefix, inline.
fn leaf<K: Key, P>(key: K, cidr: u8, peer: P) -> Node<K, P> {
    let depth = home_depth(cidr);
    let rel = cidr - depth;
    Node {
        key: key.masked(depth).pack(),
        internal: 1 << heap_pos(rel, key.chunk(depth) >> (STRIDE - rel)),
        external: 0,
        children: 0,
        results: 0,
        value: peer,
        depth,
    }
}

/// Depth of the node that holds a prefix of length `cidr`.
#[inline(always)]
fn home_depth(cidr: u8) -> u8 {
    cidr / STRIDE * STRIDE
}

/// One trie node; see the module doc. `children` is meaningless while `external` is zero;
/// `value` holds the peer while `internal` has exactly one bit, `results` the start of the
/// result block while it has two or more.
#[derive(Debug, Clone, Copy)]
pub(super) struct Node<K: Key, P> {
    key: K::Packed,
    internal: u64,
    external: u64,
    children: u32,
    results: u32,
    value: P,
    depth: u8,
}

impl<K: Key, P> Node<K, P> {
    #[inline(always)]
    fn key(&self) -> K {
        K::unpack(self.key)
    }
}

/// One direct-table slot.
#[derive(Debug, Clone, Copy)]
struct Top {
    /// Root of the subtree for this slot (a node at depth >= [`TOP_BITS`]), or [`NIL`].
    node: u32,
    /// Result index of the longest prefix shorter than [`TOP_BITS`] covering the slot, or NIL.
    short: u32,
    /// That prefix's length (meaningless while `short` is NIL).
    short_len: u8,
}

const EMPTY_TOP: Top = Top { node: NIL, short: NIL, short_len: 0 };

/// Heap index of a prefix shorter than [`TOP_BITS`] whose top bits are `top` (a slot number).
#[inline]
fn short_index(cidr: u8, top: usize) -> usize {
    (1 << cidr) | (top >> (TOP_BITS - cidr))
}

/// One address family's table from prefix to `P`.
#[derive(Debug, Clone)]
pub(super) struct Trie<K: Key, P> {
    /// [`TOP_SLOTS`] slots once anything was inserted, else empty.
    top: Vec<Top>,
    /// Result index of each prefix shorter than [`TOP_BITS`], heap-indexed by
    /// [`short_index`] (index 0 unused), or [`NIL`]; sized with `top`.
    short: Vec<u32>,
    nodes: Arena<Node<K, P>>,
    results: Arena<P>,
    len: usize,
}

impl<K: Key, P: Copy + Eq> Trie<K, P> {
    /// An empty trie; allocates nothing.
    pub(super) const fn new() -> Self {
        Trie { top: Vec::new(), short: Vec::new(), nodes: Arena::new(), results: Arena::new(), len: 0 }
    }

    /// Number of prefixes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Longest-prefix match. The hot path: no allocation, no recursion; one direct-table load,
    /// one node load per [`STRIDE`] bits below it, one result load at the end.
    #[inline]
    pub(super) fn lookup(&self, addr: K) -> Option<P> {
        let top = self.top.get(addr.top())?;
        let (nodes, results) = (self.nodes.slots(), self.results.slots());
        let (mut idx, mut best) = (top.node as usize, None);
        while idx != NONE {
            idx = step(nodes, results, addr, idx, &mut best);
        }
        best.or_else(|| results.get(top.short as usize).copied())
    }

    /// Longest-prefix match of every address in `addrs` into `out` (up to the shorter of the
    /// two). Walks [`LANES`] lookups in lockstep, one level of each per round, so their cache
    /// misses overlap instead of queueing: about three times the throughput of single lookups
    /// on a table far larger than the cache (IPv6, a million prefixes), no gain on one that fits.
    pub(super) fn lookup_batch(&self, addrs: &[K], out: &mut [Option<P>]) {
        let (nodes, results) = (self.nodes.slots(), self.results.slots());
        for (addrs, out) in addrs.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let mut idx = [NONE; LANES];
            let mut best = [None; LANES];
            let mut short = [NIL; LANES];
            for ((i, s), addr) in idx.iter_mut().zip(short.iter_mut()).zip(addrs) {
                if let Some(top) = self.top.get(addr.top()) {
                    (*i, *s) = (top.node as usize, top.short);
                }
            }
            let mut live = true;
            while live {
                live = false;
                for ((i, b), &addr) in idx.iter_mut().zip(best.iter_mut()).zip(addrs) {
                    *i = step(nodes, results, addr, *i, b);
                    live |= *i != NONE;
                }
            }
            for ((o, &b), &s) in out.iter_mut().zip(&best).zip(&short) {
                *o = b.or_else(|| results.get(s as usize).copied());
            }
        }
    }

    /// Maps the prefix `key/cidr` (`key` already masked, `cidr <= K::WIDTH`) to `peer`,
    /// returning the peer it replaced.
    pub(super) fn insert(&mut self, key: K, cidr: u8, peer: P) -> Result<Option<P>, ArenaFull> {
        let old = self.insert_unpacked(key, cidr, peer)?;
        self.compact_if_fragmented();
        Ok(old)
    }

    fn insert_unpacked(&mut self, key: K, cidr: u8, peer: P) -> Result<Option<P>, ArenaFull> {
        if self.top.is_empty() {
            self.top.resize(TOP_SLOTS, EMPTY_TOP);
            self.short.resize(TOP_SLOTS, NIL);
        }
        if cidr < TOP_BITS {
            return self.insert_short(key, cidr, peer);
        }
        let target = home_depth(cidr);
        let slot = self.top.get_mut(key.top()).ok_or(ArenaFull)?;
        if slot.node == NIL {
            let idx = self.nodes.alloc_one(leaf(key, cidr, peer))?;
            if let Some(slot) = self.top.get_mut(key.top()) {
                slot.node = idx;
            }
            self.len += 1;
            return Ok(None);
        }
        let mut cur = slot.node as usize;
        self.enter(cur, key, target)?;
        loop {
            let node = *self.nodes.get(cur).ok_or(ArenaFull)?;
            // Invariant: `key` agrees with `node.key` on `node.depth` bits and cidr >= depth.
            if node.depth == target {
                let rel = cidr - target;
                let pos = heap_pos(rel, key.chunk(target) >> (STRIDE - rel));
                let rank = (node.internal & below(pos)).count_ones() as usize;
                let count = node.internal.count_ones() as usize;
                if node.internal & (1 << pos) != 0 {
                    let slot = if count == 1 {
                        &mut self.nodes.get_mut(cur).ok_or(ArenaFull)?.value
                    } else {
                        self.results.get_mut(node.results as usize + rank).ok_or(ArenaFull)?
                    };
                    return Ok(Some(core::mem::replace(slot, peer)));
                }
                let (results, value) = match count {
                    0 => (node.results, peer),
                    // The inline peer and the new one move to a block of two.
                    1 => {
                        let block = self.results.alloc_one(node.value)?;
                        (self.results.insert(block, 1, rank, peer)?, node.value)
                    }
                    _ => (self.results.insert(node.results, count, rank, peer)?, node.value),
                };
                let n = self.nodes.get_mut(cur).ok_or(ArenaFull)?;
                (n.results, n.value) = (results, value);
                n.internal |= 1 << pos;
                self.len += 1;
                return Ok(None);
            }
            let bit = (key.chunk(node.depth) & (SLOTS - 1)) as u32;
            let rank = (node.external & below(bit)).count_ones() as usize;
            if node.external & (1 << bit) == 0 {
                // A fresh leaf straight at the prefix's home depth: path compression.
                let count = node.external.count_ones() as usize;
                let children = self.nodes.insert(node.children, count, rank, leaf(key, cidr, peer))?;
                let n = self.nodes.get_mut(cur).ok_or(ArenaFull)?;
                n.children = children;
                n.external |= 1 << bit;
                self.len += 1;
                return Ok(None);
            }
            cur = node.children as usize + rank;
            self.enter(cur, key, target)?;
        }
    }

    /// Makes node `idx`, reached on the way to inserting `key` with home depth `target`, one
    /// that `key` continues through: if it skips past where `key` diverges or lives, puts a node
    /// at the deepest stride boundary above both in its place, holding it as its only child.
    fn enter(&mut self, idx: usize, key: K, target: u8) -> Result<(), ArenaFull> {
        let node = *self.nodes.get(idx).ok_or(ArenaFull)?;
        if node.depth <= target && key.prefix_eq(node.key(), node.depth) {
            return Ok(());
        }
        // Both agree on the bits that led here, so `split` is at least the depth of this
        // position (a stride below the parent, or TOP_BITS), and below `node.depth`.
        let split = key.common_prefix(node.key()).min(target) / STRIDE * STRIDE;
        let block = self.nodes.alloc_one(node)?;
        let mid = Node {
            key: key.masked(split).pack(),
            internal: 0,
            external: 1 << (node.key().chunk(split) & (SLOTS - 1)),
            children: block,
            results: 0,
            value: node.value,
            depth: split,
        };
        *self.nodes.get_mut(idx).ok_or(ArenaFull)? = mid;
        Ok(())
    }

    /// [`Trie::insert`] of a prefix shorter than [`TOP_BITS`]: stored unexpanded and pushed
    /// into the direct-table slots it covers unless they have a longer one.
    fn insert_short(&mut self, key: K, cidr: u8, peer: P) -> Result<Option<P>, ArenaFull> {
        let h = short_index(cidr, key.top());
        let existing = *self.short.get(h).ok_or(ArenaFull)?;
        if let Some(slot) = self.results.get_mut(existing as usize) {
            return Ok(Some(core::mem::replace(slot, peer)));
        }
        let r = self.results.alloc_one(peer)?;
        if let Some(s) = self.short.get_mut(h) {
            *s = r;
        }
        let span = 1usize << (TOP_BITS - cidr);
        let first = key.top() & !(span - 1);
        for slot in self.top.iter_mut().skip(first).take(span) {
            if slot.short == NIL || slot.short_len < cidr {
                (slot.short, slot.short_len) = (r, cidr);
            }
        }
        self.len += 1;
        Ok(None)
    }

    /// Removes the prefix `key/cidr` (`key` masked) if `keep` says so of its peer; returns
    /// the removed peer.
    pub(super) fn remove_if(&mut self, key: K, cidr: u8, keep: impl FnOnce(&P) -> bool) -> Option<P> {
        let removed = self.remove_unpacked(key, cidr, keep);
        self.compact_if_fragmented();
        removed
    }

    fn remove_unpacked(&mut self, key: K, cidr: u8, keep: impl FnOnce(&P) -> bool) -> Option<P> {
        if cidr < TOP_BITS {
            return self.remove_short(key, cidr, keep);
        }
        let target = home_depth(cidr);
        // Node indices from the subtree root down to the prefix's home node.
        let mut path: Vec<usize> = Vec::with_capacity(usize::from(K::WIDTH / STRIDE));
        let mut cur = self.top.get(key.top())?.node as usize;
        let node = loop {
            let node = *self.nodes.get(cur)?;
            if !key.prefix_eq(node.key(), node.depth) || node.depth > target {
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
        let count = node.internal.count_ones() as usize;
        let peer = if count == 1 { node.value } else { *self.results.get(node.results as usize + rank)? };
        if !keep(&peer) {
            return None;
        }
        let (results, value) = match count {
            1 => (node.results, node.value),
            // The one left goes back inline.
            2 => {
                let other = *self.results.get(node.results as usize + (1 - rank))?;
                self.results.release(node.results, 2);
                (0, other)
            }
            _ => (self.results.remove(node.results, count, rank), node.value),
        };
        if let Some(n) = self.nodes.get_mut(cur) {
            (n.results, n.value) = (results, value);
            n.internal &= !(1 << pos);
        }
        self.len -= 1;
        self.restore_canonical(key.top(), &path);
        Some(peer)
    }

    /// After a removal at the end of `path` (which starts at slot `top`'s subtree root), drops
    /// nodes left empty and splices out nodes left with no prefix and one child, walking up
    /// while that changes a parent.
    fn restore_canonical(&mut self, top: usize, path: &[usize]) {
        let mut level = path.len();
        while let Some(&idx) = path.get(level.wrapping_sub(1)) {
            let Some(&node) = self.nodes.get(idx) else { return };
            if node.internal != 0 || node.external.count_ones() >= 2 {
                break;
            }
            if node.external != 0 {
                // One child: it takes this node's place (its own key keeps lookups exact).
                let Some(&child) = self.nodes.get(node.children as usize) else { return };
                self.nodes.release(node.children, 1);
                if let Some(slot) = self.nodes.get_mut(idx) {
                    *slot = child;
                }
                break;
            }
            // Empty: unlink it from its parent, then look at the parent.
            let Some(&parent_idx) = path.get(level.wrapping_sub(2)) else {
                // The subtree root: a block of its own, referenced by the direct table.
                if let Some(slot) = self.top.get_mut(top) {
                    slot.node = NIL;
                }
                self.nodes.release(idx as u32, 1);
                break;
            };
            let Some(&parent) = self.nodes.get(parent_idx) else { return };
            let bit = (node.key().chunk(parent.depth) & (SLOTS - 1)) as u32;
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

    /// [`Trie::remove_if`] of a prefix shorter than [`TOP_BITS`]: the slots it covered fall
    /// back to the next shorter prefix covering them.
    fn remove_short(&mut self, key: K, cidr: u8, keep: impl FnOnce(&P) -> bool) -> Option<P> {
        let h = short_index(cidr, key.top());
        let r = *self.short.get(h)?;
        let peer = *self.results.get(r as usize)?;
        if !keep(&peer) {
            return None;
        }
        self.results.release(r, 1);
        if let Some(s) = self.short.get_mut(h) {
            *s = NIL;
        }
        let span = 1usize << (TOP_BITS - cidr);
        let first = key.top() & !(span - 1);
        for (s, slot) in self.top.iter_mut().enumerate().skip(first).take(span) {
            if slot.short == r {
                *slot = Top { short: NIL, short_len: 0, ..*slot };
                for len in (0..cidr).rev() {
                    let shorter = self.short.get(short_index(len, s)).copied().unwrap_or(NIL);
                    if shorter != NIL {
                        (slot.short, slot.short_len) = (shorter, len);
                        break;
                    }
                }
            }
        }
        self.len -= 1;
        if self.len == 0 {
            self.clear();
        }
        Some(peer)
    }

    /// Removes every prefix, keeping allocations.
    pub(super) fn clear(&mut self) {
        self.top.clear();
        self.short.clear();
        self.nodes.clear();
        self.results.clear();
        self.len = 0;
    }

    /// Repacks both arenas densely, nodes in breadth-first order (so the upper levels, which
    /// lookups visit most, share cache lines), dropping free blocks and spare capacity.
    /// Linear in the table size; allocates the new arenas before freeing the old.
    pub(super) fn compact(&mut self) {
        let old_nodes = self.nodes.slots();
        let old_results = self.results.slots();
        let mut nodes = Vec::with_capacity(self.nodes.live());
        let mut results = Vec::with_capacity(self.results.live());
        let index = |len: usize| u32::try_from(len).unwrap_or(NIL);
        for s in self.short.iter_mut().filter(|s| **s != NIL) {
            if let Some(&r) = old_results.get(*s as usize) {
                *s = index(results.len());
                results.push(r);
            }
        }
        for (s, slot) in self.top.iter_mut().enumerate() {
            if slot.short != NIL {
                slot.short = self.short.get(short_index(slot.short_len, s)).copied().unwrap_or(NIL);
            }
            if let Some(&root) = old_nodes.get(slot.node as usize) {
                slot.node = index(nodes.len());
                nodes.push(root);
            }
        }
        let mut i = 0;
        while let Some(&node) = nodes.get(i) {
            let mut node = node;
            let (r, c) = (node.results as usize, node.children as usize);
            let count = node.internal.count_ones() as usize;
            if let Some(block) = old_results.get(r..r + count).filter(|_| count >= 2) {
                node.results = index(results.len());
                results.extend_from_slice(block);
            }
            if let Some(block) = old_nodes.get(c..c + node.external.count_ones() as usize) {
                node.children = index(nodes.len());
                nodes.extend_from_slice(block);
            }
            if let Some(slot) = nodes.get_mut(i) {
                *slot = node;
            }
            i += 1;
        }
        self.nodes = Arena::from_vec(nodes);
        self.results = Arena::from_vec(results);
        self.top.shrink_to_fit();
        self.short.shrink_to_fit();
    }

    /// Repacks once free blocks exceed half the live slots (and [`COMPACT_SLACK`]) in either
    /// arena, bounding the waste of growth and churn. The repack is linear in the table size
    /// and needs that much waste to build up first, so its cost is amortized O(1) per update.
    fn compact_if_fragmented(&mut self) {
        let wasteful = |free: usize, live: usize| free > live / 2 + COMPACT_SLACK;
        if wasteful(self.nodes.free_slots(), self.nodes.live())
            || wasteful(self.results.free_slots(), self.results.live())
        {
            self.compact();
        }
    }

    /// Heap bytes held by the trie.
    pub(super) fn heap_bytes(&self) -> usize {
        self.top.capacity() * core::mem::size_of::<Top>()
            + self.short.capacity() * 4
            + self.nodes.heap_bytes()
            + self.results.heap_bytes()
    }

    /// Live nodes, for statistics.
    pub(super) fn node_count(&self) -> usize {
        self.nodes.live()
    }
}
