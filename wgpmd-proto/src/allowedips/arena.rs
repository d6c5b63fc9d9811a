//! Block arena for the trie: contiguous runs ("blocks") of `T` addressed by a `u32` start.
//!
//! A trie node keeps its children in one block of the node arena and its prefixes' peers in one
//! block of the result arena, so a lookup step is one popcount and one load. Growing a block by
//! one element moves it to a block of the next length; blocks are recycled by exact length (at
//! most 64 lengths), so churn (peers coming and going) reuses space instead of growing the arena.
//! What is not recycled is counted ([`Arena::free_slots`]) so the trie can repack when it
//! grows large, and the slot vector grows by an eighth rather than doubling, so spare capacity
//! stays small. Nothing here is reachable from packet input except [`Arena::get`] and
//! [`Arena::slots`].

/// The arena ran out of `u32` addresses (more than four billion elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArenaFull;

/// Blocks of `T`, free blocks listed by length.
#[derive(Debug, Clone)]
pub(super) struct Arena<T> {
    slots: Vec<T>,
    /// `free[len]`: starts of free blocks of exactly `len` elements.
    free: Vec<Vec<u32>>,
    /// Slots in free blocks.
    free_slots: usize,
}

impl<T: Copy> Arena<T> {
    /// An empty arena; allocates nothing.
    pub(super) const fn new() -> Self {
        Arena { slots: Vec::new(), free: Vec::new(), free_slots: 0 }
    }

    /// An arena whose slots are `slots`, all live.
    pub(super) fn from_vec(slots: Vec<T>) -> Self {
        Arena { slots, free: Vec::new(), free_slots: 0 }
    }

    /// Every slot, live or free, for the lookup hot path.
    #[inline]
    pub(super) fn slots(&self) -> &[T] {
        &self.slots
    }

    /// The element at `i`.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.slots.get(i)
    }

    /// The element at `i`, mutably.
    #[inline]
    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i)
    }

    /// A block of `len >= 1` elements: a recycled one of that exact length (old contents left
    /// in place) or new slots filled with `fill`.
    fn alloc(&mut self, len: usize, fill: T) -> Result<u32, ArenaFull> {
        if let Some(start) = self.free.get_mut(len).and_then(Vec::pop) {
            self.free_slots -= len;
            return Ok(start);
        }
        let start = self.slots.len();
        let end = start.checked_add(len).ok_or(ArenaFull)?;
        // Every slot index, including the last one, must fit in a u32.
        if end > u32::MAX as usize {
            return Err(ArenaFull);
        }
        if end > self.slots.capacity() {
            // Geometric growth by an eighth: amortized O(1) still, at most 12.5% spare.
            self.slots.reserve_exact((start / 8).max(len).max(64));
        }
        self.slots.resize(end, fill);
        u32::try_from(start).map_err(|_| ArenaFull)
    }

    /// A new block holding just `item`.
    pub(super) fn alloc_one(&mut self, item: T) -> Result<u32, ArenaFull> {
        let start = self.alloc(1, item)?;
        if let Some(slot) = self.slots.get_mut(start as usize) {
            *slot = item;
        }
        Ok(start)
    }

    /// Returns the block `start..start + len` to the free lists (no-op for `len == 0`).
    pub(super) fn release(&mut self, start: u32, len: usize) {
        if len == 0 {
            return;
        }
        if self.free.len() <= len {
            self.free.resize_with(len + 1, Vec::new);
        }
        if let Some(list) = self.free.get_mut(len) {
            list.push(start);
            self.free_slots += len;
        }
    }

    /// Inserts `item` at position `at` of the block `start..start + len` (`len` may be zero:
    /// then `start` is ignored), moving the block to one of `len + 1` elements; returns its start.
    /// On error the block is unchanged.
    pub(super) fn insert(&mut self, start: u32, len: usize, at: usize, item: T) -> Result<u32, ArenaFull> {
        let new = self.alloc(len + 1, item)?;
        let (old, new_us) = (start as usize, new as usize);
        let at = at.min(len);
        if len > 0 {
            self.slots.copy_within(old..old + at, new_us);
            self.slots.copy_within(old + at..old + len, new_us + at + 1);
        }
        if let Some(slot) = self.slots.get_mut(new_us + at) {
            *slot = item;
        }
        self.release(start, len);
        Ok(new)
    }

    /// Removes position `at` from the block `start..start + len` (`len >= 1`), returning the start
    /// of the block of `len - 1` elements now holding the rest (meaningless when that is empty).
    /// Never fails: without a recycled block of the smaller length it shrinks in place.
    pub(super) fn remove(&mut self, start: u32, len: usize, at: usize) -> u32 {
        let old = start as usize;
        let at = at.min(len.saturating_sub(1));
        if len <= 1 {
            self.release(start, len);
            return 0;
        }
        if let Some(new) = self.free.get_mut(len - 1).and_then(Vec::pop) {
            self.free_slots -= len - 1;
            let new_us = new as usize;
            self.slots.copy_within(old..old + at, new_us);
            self.slots.copy_within(old + at + 1..old + len, new_us + at);
            self.release(start, len);
            new
        } else {
            self.slots.copy_within(old + at + 1..old + len, old + at);
            // `old + len - 1` came from a u32 block start plus an in-range offset.
            self.release(start + (len as u32 - 1), 1);
            start
        }
    }

    /// Drops every block, keeping the allocation.
    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.free_slots = 0;
    }

    /// Heap bytes held (capacity, not length: what the process pays for).
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<T>()
            + self.free.capacity() * core::mem::size_of::<Vec<u32>>()
            + self.free.iter().map(|l| l.capacity() * 4).sum::<usize>()
    }

    /// Slots in use (live elements).
    pub(super) fn live(&self) -> usize {
        self.slots.len() - self.free_slots
    }

    /// Slots in free blocks, waiting for reuse.
    pub(super) fn free_slots(&self) -> usize {
        self.free_slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_shrink_and_recycle() {
        let mut a: Arena<u8> = Arena::new();
        let mut start = a.insert(0, 0, 0, 10).unwrap();
        start = a.insert(start, 1, 1, 30).unwrap();
        start = a.insert(start, 2, 1, 20).unwrap();
        assert_eq!(&a.slots()[start as usize..start as usize + 3], &[10, 20, 30]);
        assert_eq!(a.live(), 3);
        start = a.remove(start, 3, 0);
        assert_eq!(&a.slots()[start as usize..start as usize + 2], &[20, 30]);
        assert_eq!(a.live(), 2);
        // Blocks of one and of three were freed: new ones of those lengths reuse the space
        // (and get their contents written, not left over).
        let before = a.slots().len();
        let other = a.alloc_one(1).unwrap();
        let other = a.insert(other, 1, 0, 2).unwrap();
        let other = a.insert(other, 2, 2, 3).unwrap();
        assert_eq!(a.slots().len(), before + 2, "only the block of two is new");
        assert_eq!(&a.slots()[other as usize..other as usize + 3], &[2, 1, 3]);
        start = a.remove(start, 2, 1);
        assert_eq!(a.slots()[start as usize], 20);
        assert_eq!(a.remove(start, 1, 0), 0);
        assert_eq!(a.live(), 3);
        let counted: usize = a.free.iter().enumerate().map(|(len, l)| len * l.len()).sum();
        assert_eq!(a.free_slots(), counted);
    }

    #[test]
    fn churn_does_not_grow() {
        let mut a: Arena<u32> = Arena::new();
        let mut start = 0;
        for i in 0..10 {
            start = a.insert(start, i, i, i as u32).unwrap();
        }
        let size = a.slots().len();
        for _ in 0..1000 {
            start = a.insert(start, 10, 3, 99).unwrap();
            start = a.remove(start, 11, 3);
        }
        assert!(a.slots().len() <= size + 11, "{} > {}", a.slots().len(), size + 11);
        assert_eq!(&a.slots()[start as usize..start as usize + 10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
