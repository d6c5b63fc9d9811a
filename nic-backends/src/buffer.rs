//! Packet buffers and the pools they come from.
//!
//! A [`Pool`] owns one region of `count * BUF_SIZE` bytes and hands out [`Buffer`]s, each the
//! sole owner of one `BUF_SIZE` slot. A buffer is a window `[headroom, headroom + len)` into its
//! slot; `prepend`/`trim_front`/`append`/`truncate` move the window without copying. Dropping a
//! buffer returns its slot to its own pool, from any thread: through that thread's cache of the
//! pool when the thread allocates from it (a small LIFO stack that trades slots with the pool's
//! shared free list in batches; no atomic read-modify-write per buffer on the fast path), else
//! straight to the shared free list (see DESIGN.md).
//!
//! ```text
//! slot (BUF_SIZE = 2048, 64-byte aligned; IOVA = region IOVA + index * BUF_SIZE)
//! | headroom (HEADROOM = 128 after alloc/reset) | data (len) | tailroom                 |
//! 0                                             off          off+len                   2048
//! ```

use std::fmt;
use std::sync::Arc;

use crate::error::{BufError, PoolError};
pub use crate::sys::slots::Region;
use crate::sys::slots::{MmapRegion, Slot, Slots, SlotsRef};

/// Size of one buffer slot in bytes.
pub const BUF_SIZE: usize = 2048;
/// Where the data window starts in a fresh buffer: room for the outer Ethernet (14), 802.1Q
/// (4), IPv6 (40), UDP (8) and WireGuard data header (16), 82 bytes in all, to be prepended in
/// place, rounded up to whole cache lines.
pub const HEADROOM: usize = 128;
/// Tailroom the data plane needs to seal in place: padding up to 15 bytes + the 16-byte tag,
/// rounded up. A packet longer than [`MAX_DATA`] cannot be sealed in place.
pub const MIN_TAILROOM: usize = 32;
/// The longest packet that fits at `HEADROOM` and still leaves `MIN_TAILROOM`.
pub const MAX_DATA: usize = BUF_SIZE - HEADROOM - MIN_TAILROOM;

const _: () = assert!(HEADROOM >= 96 && HEADROOM.is_multiple_of(64) && BUF_SIZE.is_multiple_of(64));

/// A fixed set of buffers in one region. Cheap to clone (an `Arc`); all clones share the buffers.
///
/// Dropping the last clone while buffers are out is safe: the region lives until the last
/// buffer is back. Each thread that allocates from the pool keeps a small cache of its free
/// slots (up to `min(512, capacity / 8)`, none for pools under 64 buffers; all caches together
/// at most half the pool); see DESIGN.md for what that means for exhaustion across threads.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Handle>,
}

/// What the clones of one `Pool` share: one counted reference to the slots. Dropping it (the
/// last `Pool` clone) closes the pool for the per-thread caches.
struct Handle(SlotsRef);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Pool {
    /// `count` buffers in a fresh anonymous mapping owned by the pool. The IOVA of a buffer is
    /// its virtual address (what `mem`, AF_PACKET and TUN use).
    pub fn new(name: &str, count: usize) -> Result<Pool, PoolError> {
        let max = Slots::max_count();
        if count == 0 || count > max {
            return Err(PoolError::BadCount { name: name.to_string(), count, max });
        }
        let bytes = count * BUF_SIZE;
        let region =
            MmapRegion::new(bytes).map_err(|source| PoolError::Mmap { name: name.to_string(), bytes, source })?;
        Pool::with_region(name, region, count)
    }

    /// `count` buffers carved from memory the caller supplies (for VFIO: a hugepage DMA region
    /// with its own IOVA). The pool keeps the region until the pool and all its buffers are gone.
    pub fn with_region(name: &str, region: impl Region, count: usize) -> Result<Pool, PoolError> {
        Ok(Pool::from_slots(Slots::new(name, Box::new(region), count)?))
    }

    /// One empty buffer with its window at `HEADROOM`, or `None` if the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Buffer> {
        self.inner.0.alloc().map(|slot| Buffer { slot, off: HEADROOM as u32, len: 0 })
    }

    /// Append up to `n` fresh buffers to `out`; returns how many (fewer when the pool runs dry).
    pub fn alloc_burst(&self, out: &mut Vec<Buffer>, n: usize) -> usize {
        out.reserve(n);
        self.inner.0.alloc_burst(n, |slot| out.push(Buffer { slot, off: HEADROOM as u32, len: 0 }))
    }

    /// Buffers currently free in the pool: in its shared free list or parked in some thread's
    /// cache (exact while no other thread allocates or frees; a slot parked in another thread's
    /// cache is free but not at once allocatable here, see DESIGN.md).
    pub fn available(&self) -> usize {
        self.inner.0.available()
    }
    /// Total buffers of the pool.
    pub fn capacity(&self) -> usize {
        self.inner.0.capacity()
    }
    /// Process-unique pool id (what [`Buffer::pool_id`] returns).
    pub fn id(&self) -> u32 {
        self.inner.0.id()
    }
    /// The name given at creation.
    pub fn name(&self) -> &str {
        self.inner.0.name()
    }
    /// `(cpu address, size, iova)` of the pool's region.
    pub fn region(&self) -> (usize, usize, u64) {
        (self.inner.0.region_base(), self.inner.0.region_size(), self.inner.0.region_iova())
    }
}

impl Pool {
    /// A pool over `slots` (ours, or with an external allocator as free list: DPDK mbufs).
    pub(crate) fn from_slots(slots: Slots) -> Pool {
        Pool { inner: Arc::new(Handle(slots.into_ref())) }
    }
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn slots(&self) -> &Slots {
        &self.inner.0
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name())
            .field("id", &self.id())
            .field("available", &self.available())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// One packet buffer: sole owner of a slot, with a data window into it.
///
/// `Send` (hand it to another core; it still returns to its own pool), not `Clone`.
/// The CPU owns the bytes for as long as the `Buffer` is outside a device ring, which for the
/// backends in this crate is always: AF_PACKET and TUN copy at the kernel boundary, `mem` moves
/// the `Buffer` itself.
pub struct Buffer {
    slot: Slot,
    off: u32,
    len: u32,
}

impl Buffer {
    /// A buffer over an owned slot with the window `[off, off + len)` (the caller checked it
    /// fits the slot).
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn from_slot(slot: Slot, off: u32, len: u32) -> Buffer {
        debug_assert!(off as usize + len as usize <= BUF_SIZE);
        Buffer { slot, off, len }
    }

    /// Set the window to `[off, off + len)` of the slot (a device or the kernel wrote the
    /// bytes there: AF_XDP rx). Errors if it does not fit the slot.
    pub(crate) fn set_window(&mut self, off: usize, len: usize) -> Result<(), BufError> {
        if off.checked_add(len).is_none_or(|end| end > BUF_SIZE) {
            return Err(BufError::TooLong { len, max: BUF_SIZE.saturating_sub(off) });
        }
        self.off = off as u32;
        self.len = len as u32;
        Ok(())
    }

    /// Hand the slot over without freeing it: `(slot index, off, len)`. Whoever gets the index
    /// now owns the slot (a DPDK tx ring) and must return it through the pool's free list.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn into_raw(self) -> (u32, u32, u32) {
        (self.slot.into_index(), self.off, self.len)
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let (o, l) = (self.off as usize, self.len as usize);
        &self.slot.bytes()[o..o + l]
    }
    /// The packet bytes, mutably.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (o, l) = (self.off as usize, self.len as usize);
        &mut self.slot.bytes_mut()[o..o + l]
    }
    /// Packet length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True when the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes free in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.off as usize
    }
    /// Bytes free after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        BUF_SIZE - self.off as usize - self.len as usize
    }

    /// Grow the window `n` bytes to the front and return those `n` bytes. They are **not
    /// zeroed** (they hold whatever the slot held): the caller writes all of them (a header).
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        let have = self.headroom();
        if n > have {
            return Err(BufError::NoHeadroom { need: n, have });
        }
        self.off -= n as u32;
        self.len += n as u32;
        let o = self.off as usize;
        Ok(&mut self.slot.bytes_mut()[o..o + n])
    }

    /// Drop `n` bytes from the front of the window (strip a header).
    #[inline]
    pub fn trim_front(&mut self, n: usize) -> Result<(), BufError> {
        if n > self.len() {
            return Err(BufError::TooShort { need: n, have: self.len() });
        }
        self.off += n as u32;
        self.len -= n as u32;
        Ok(())
    }

    /// Grow the window `n` bytes at the end and return them, **zeroed** (padding needs zeros,
    /// and nothing of a previous packet can leak through appended bytes).
    #[inline]
    pub fn append(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        let have = self.tailroom();
        if n > have {
            return Err(BufError::NoTailroom { need: n, have });
        }
        let start = self.off as usize + self.len as usize;
        self.len += n as u32;
        let new = &mut self.slot.bytes_mut()[start..start + n];
        new.fill(0);
        Ok(new)
    }

    /// Grow the window at the end by a copy of `src` (no zeroing first, unlike
    /// [`append`](Self::append)).
    #[inline]
    pub fn extend_from_slice(&mut self, src: &[u8]) -> Result<(), BufError> {
        let have = self.tailroom();
        if src.len() > have {
            return Err(BufError::NoTailroom { need: src.len(), have });
        }
        let start = self.off as usize + self.len as usize;
        self.slot.bytes_mut()[start..start + src.len()].copy_from_slice(src);
        self.len += src.len() as u32;
        Ok(())
    }

    /// Shorten the packet to `len` bytes; no effect if it is already that short.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.len = len as u32;
        }
    }

    /// Empty window at `HEADROOM`, as from [`Pool::alloc`].
    #[inline]
    pub fn reset(&mut self) {
        self.off = HEADROOM as u32;
        self.len = 0;
    }

    /// From the data start to the end of the slot: for an in-place operation that grows the
    /// packet (seal), followed by [`set_len`](Self::set_len). Bytes past `len()` are stale
    /// contents of the slot, not zeros.
    #[inline]
    pub fn data_and_tailroom_mut(&mut self) -> &mut [u8] {
        let o = self.off as usize;
        &mut self.slot.bytes_mut()[o..]
    }

    /// Set the length within data start..slot end. Growing exposes stale slot bytes: only grow
    /// over bytes just written through [`data_and_tailroom_mut`](Self::data_and_tailroom_mut).
    #[inline]
    pub fn set_len(&mut self, len: usize) -> Result<(), BufError> {
        let max = BUF_SIZE - self.off as usize;
        if len > max {
            return Err(BufError::TooLong { len, max });
        }
        self.len = len as u32;
        Ok(())
    }

    /// Device-visible address of the first data byte.
    #[inline]
    pub fn iova(&self) -> u64 {
        self.slot.iova() + self.off as u64
    }
    /// Id of the pool this buffer returns to.
    #[inline]
    pub fn pool_id(&self) -> u32 {
        self.slot.pool_id()
    }
    /// Index of the slot within its pool.
    #[inline]
    pub fn slot_index(&self) -> u32 {
        self.slot.index()
    }
    /// CPU address of the slot start (for tests and diagnostics).
    #[inline]
    pub fn slot_addr(&self) -> usize {
        self.slot.addr()
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("pool", &self.pool_id())
            .field("slot", &self.slot.index())
            .field("headroom", &self.headroom())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_buffer_window() {
        let pool = Pool::new("t", 2).unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!((b.headroom(), b.len(), b.tailroom()), (HEADROOM, 0, BUF_SIZE - HEADROOM));
        assert!(b.is_empty());
        assert_eq!(b.pool_id(), pool.id());
    }

    #[test]
    fn window_moves_without_copying() {
        let pool = Pool::new("t", 1).unwrap();
        let mut b = pool.alloc().unwrap();
        b.append(4).unwrap().copy_from_slice(&[1, 2, 3, 4]);
        let iova = b.iova();
        b.prepend(2).unwrap().copy_from_slice(&[0xa, 0xb]);
        assert_eq!(b.data(), &[0xa, 0xb, 1, 2, 3, 4]);
        assert_eq!(b.iova(), iova - 2);
        b.trim_front(3).unwrap();
        assert_eq!(b.data(), &[2, 3, 4]);
        b.truncate(10);
        assert_eq!(b.len(), 3);
        b.truncate(1);
        assert_eq!(b.data(), &[2]);
        b.data_mut()[0] = 9;
        assert_eq!(b.data(), &[9]);
        b.reset();
        assert_eq!((b.headroom(), b.len()), (HEADROOM, 0));
    }

    #[test]
    fn append_zeroes_and_limits_are_errors_not_panics() {
        let pool = Pool::new("t", 1).unwrap();
        let mut b = pool.alloc().unwrap();
        b.data_and_tailroom_mut().fill(0xa5);
        assert_eq!(b.append(8).unwrap(), &[0; 8]);
        assert_eq!(b.prepend(HEADROOM + 1), Err(BufError::NoHeadroom { need: HEADROOM + 1, have: HEADROOM }));
        assert_eq!(b.trim_front(9), Err(BufError::TooShort { need: 9, have: 8 }));
        let room = b.tailroom();
        assert_eq!(b.append(room + 1), Err(BufError::NoTailroom { need: room + 1, have: room }));
        assert_eq!(b.append(room).unwrap().len(), room);
        assert_eq!(b.tailroom(), 0);
        assert_eq!(b.len(), BUF_SIZE - HEADROOM);
        assert_eq!(b.prepend(HEADROOM).unwrap().len(), HEADROOM);
        assert_eq!(b.data().len(), BUF_SIZE);
        assert_eq!(b.headroom(), 0);
    }

    #[test]
    fn extend_from_slice_copies_at_the_end_and_refuses_what_does_not_fit() {
        let pool = Pool::new("t", 1).unwrap();
        let mut b = pool.alloc().unwrap();
        b.extend_from_slice(b"abc").unwrap();
        b.extend_from_slice(b"de").unwrap();
        assert_eq!(b.data(), b"abcde");
        let room = b.tailroom();
        let big = vec![7u8; room + 1];
        assert_eq!(b.extend_from_slice(&big), Err(BufError::NoTailroom { need: room + 1, have: room }));
        assert_eq!(b.data(), b"abcde", "a refused copy writes nothing");
        b.extend_from_slice(&big[..room]).unwrap();
        assert_eq!((b.len(), b.tailroom()), (5 + room, 0));
    }

    #[test]
    fn set_len_within_slot_after_in_place_growth() {
        let pool = Pool::new("t", 1).unwrap();
        let mut b = pool.alloc().unwrap();
        let room = b.data_and_tailroom_mut();
        assert_eq!(room.len(), BUF_SIZE - HEADROOM);
        room[..3].copy_from_slice(b"abc");
        b.set_len(3).unwrap();
        assert_eq!(b.data(), b"abc");
        assert_eq!(
            b.set_len(BUF_SIZE - HEADROOM + 1),
            Err(BufError::TooLong { len: BUF_SIZE - HEADROOM + 1, max: BUF_SIZE - HEADROOM })
        );
        b.set_len(BUF_SIZE - HEADROOM).unwrap();
        b.trim_front(1).unwrap();
        assert_eq!(b.data_and_tailroom_mut().len(), BUF_SIZE - HEADROOM - 1);
    }

    #[test]
    fn pool_exhausts_and_refills_on_drop() {
        let pool = Pool::new("t", 8).unwrap();
        let mut v = Vec::new();
        assert_eq!(pool.alloc_burst(&mut v, 5), 5);
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.alloc_burst(&mut v, 5), 3);
        assert!(pool.alloc().is_none());
        assert_eq!(pool.capacity(), 8);
        v.truncate(2);
        assert_eq!(pool.available(), 6);
        drop(v);
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn buffers_return_to_their_own_pool_from_other_threads() {
        let a = Pool::new("a", 64).unwrap();
        let b = Pool::new("b", 64).unwrap();
        assert_ne!(a.id(), b.id());
        let mut v = Vec::new();
        a.alloc_burst(&mut v, 64);
        b.alloc_burst(&mut v, 64);
        let (left, right): (Vec<Buffer>, Vec<Buffer>) = v.into_iter().partition(|x| x.slot_index() % 2 == 0);
        let t1 = std::thread::spawn(move || drop(left));
        let t2 = std::thread::spawn(move || drop(right));
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!((a.available(), b.available()), (64, 64));
    }

    #[test]
    fn iova_is_the_address_inside_the_region_buf_size_apart() {
        let pool = Pool::new("t", 100).unwrap();
        let (base, size, iova) = pool.region();
        assert_eq!(iova, base as u64, "anonymous memory: IOVA == virtual address");
        assert!(size >= 100 * BUF_SIZE);
        let mut v = Vec::new();
        assert_eq!(pool.alloc_burst(&mut v, 100), 100);
        let mut slots: Vec<u64> = v.iter().map(|b| b.iova() - HEADROOM as u64).collect();
        for b in &v {
            assert_eq!(b.iova(), b.slot_addr() as u64 + HEADROOM as u64);
            assert!(b.iova() >= iova && b.iova() + b.tailroom() as u64 <= iova + size as u64);
        }
        slots.sort_unstable();
        for w in slots.windows(2) {
            assert_eq!(w[1] - w[0], BUF_SIZE as u64);
        }
        assert_eq!(slots[0], iova);
        assert!(slots.iter().all(|s| (s - iova) % BUF_SIZE as u64 == 0));
    }

    #[test]
    fn bad_counts_are_errors() {
        let e = Pool::new("p", 0).unwrap_err();
        assert!(matches!(e, PoolError::BadCount { count: 0, .. }), "{e}");
        assert!(e.to_string().starts_with("pool p: buffer count"), "{e}");
        let r = MmapRegion::new(BUF_SIZE).unwrap();
        let e = Pool::with_region("q", r, 3).unwrap_err(); // one page holds two
        assert!(matches!(e, PoolError::RegionTooSmall { .. }), "{e}");
    }
}
