//! Buffer memory: regions, the slots carved out of them, and the lock-free free list.
//!
//! States of a slot: **free** (its index is in the pool's free list; nobody may touch its bytes)
//! or **owned** (exactly one [`Slot`] value exists for it; only that value's owner reads or writes
//! the bytes). `alloc` moves free → owned, dropping the `Slot` moves owned → free, from any thread.
//! Devices (VFIO, later) touch a slot only while the driver holds its `Slot` in a ring and does
//! not read it: the ownership token stays with the CPU side, the bytes are lent to the device.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::buffer::BUF_SIZE;
use crate::error::PoolError;

/// Memory that a [`Pool`](crate::Pool) carves into `BUF_SIZE`-byte slots.
///
/// The pool asks for the CPU address of the region, its size, and the device address (IOVA) of
/// its first byte; slot `i` lives at `base + i * BUF_SIZE` and its IOVA is
/// `iova_base + i * BUF_SIZE` (the region is contiguous in both address spaces).
///
/// # Safety
/// An implementor guarantees, for as long as the value lives:
/// - `base()` points to `size()` bytes that are mapped readable and writable for the CPU, and
///   `base()` and `size()` never change;
/// - nothing else (other CPU code, a device) reads or writes those bytes except through the
///   [`Buffer`](crate::Buffer)s of the pool the region is given to, or a device a slot is lent
///   to while its owner does not touch it (the virtio driver holds the slot's `Buffer` in a
///   ring until the used ring returns it; a DPDK slot in a device ring has no `Buffer` at all);
/// - `base()` is aligned to 64 bytes (one cache line).
pub unsafe trait Region: Send + Sync + 'static {
    /// CPU address of the first byte.
    fn base(&self) -> NonNull<u8>;
    /// Size in bytes.
    fn size(&self) -> usize;
    /// Device-visible address of the first byte.
    fn iova_base(&self) -> u64;
}

/// Anonymous private memory (`mmap(MAP_ANONYMOUS | MAP_POPULATE)`), owned by the value and
/// unmapped on drop. Its IOVA is its virtual address: what the socket backends and `mem` use.
#[derive(Debug)]
pub struct MmapRegion {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner to another thread
// moves no thread-affine state, and `&MmapRegion` only hands out the address, never the bytes.
unsafe impl Send for MmapRegion {}
// SAFETY: as above; shared references expose only `base()`/`size()` (plain values).
unsafe impl Sync for MmapRegion {}

impl MmapRegion {
    /// Map `size` bytes (rounded up to whole pages) of zeroed anonymous memory.
    pub fn new(size: usize) -> std::io::Result<MmapRegion> {
        let page = page_size();
        let size = size
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks: no existing memory is
        // affected; the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(MmapRegion { base, size })
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly the mapping created in `new`, and no slot outlives
        // the region (every `Slot` holds an `Arc` to the pool that owns the region).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.size);
        }
    }
}

// SAFETY: `base` comes from a successful page-aligned mmap of `size` readable/writable bytes
// that this value alone owns until drop; page alignment implies 64-byte alignment.
unsafe impl Region for MmapRegion {
    fn base(&self) -> NonNull<u8> {
        self.base
    }
    fn size(&self) -> usize {
        self.size
    }
    fn iova_base(&self) -> u64 {
        self.base.as_ptr() as usize as u64
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A free list kept outside the pool: the DPDK backend's mbuf pool. `take` hands out the index
/// of a slot nobody else owns (the mempool gave us its mbuf), `give` takes one back (the mbuf
/// goes back to the mempool). The source must never hand out an index twice before it is given
/// back; the indices are below the pool's count.
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
pub(crate) trait SlotSource: Send + Sync + 'static {
    /// A free slot's index, now owned by the caller.
    fn take(&self) -> Option<u32>;
    /// Return a slot taken with `take` (or adopted with `Slots::adopt`).
    fn give(&self, index: u32);
    /// Free slots (approximate while other threads allocate).
    fn available(&self) -> usize;
}

/// Where free slot indices are kept (the local queue is inline: it is the hot path).
#[allow(clippy::large_enum_variant)]
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
enum FreeList {
    /// Our own lock-free queue (mmap'd and VFIO pools).
    Local(ArrayQueue<u32>),
    /// Somebody else's allocator (DPDK mempool).
    External(Box<dyn SlotSource>),
}

/// The shared part of a pool: the region, the free list of slot indices, identity.
pub(crate) struct Slots {
    region: Box<dyn Region>,
    free: FreeList,
    count: u32,
    id: u32,
    name: String,
}

impl Slots {
    pub(crate) fn new(name: &str, region: Box<dyn Region>, count: usize) -> Result<Slots, PoolError> {
        let name = name.to_string();
        let max = Slots::max_count();
        if count == 0 || count > max {
            return Err(PoolError::BadCount { name, count, max });
        }
        let need = count * BUF_SIZE;
        if region.size() < need {
            return Err(PoolError::RegionTooSmall { name, count, need, have: region.size() });
        }
        if !(region.base().as_ptr() as usize).is_multiple_of(64) {
            return Err(PoolError::Misaligned { name });
        }
        if region.iova_base().checked_add(need as u64).is_none() {
            return Err(PoolError::IovaOverflow { name });
        }
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(i);
        }
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Slots { region, free: FreeList::Local(free), count: count as u32, id, name })
    }

    /// Slots over `region` whose free list is `source` (an external allocator that owns the
    /// state "free"; see [`SlotSource`]).
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn with_source(
        name: &str,
        region: Box<dyn Region>,
        count: usize,
        source: Box<dyn SlotSource>,
    ) -> Result<Slots, PoolError> {
        let mut s = Slots::new(name, region, count)?;
        s.free = FreeList::External(source);
        Ok(s)
    }

    /// A `Slot` for `index`, which the external source handed to someone else than `alloc`
    /// (a device received into it). None for an index out of range or a local pool.
    ///
    /// # Safety
    /// The caller guarantees what `SlotSource::take` would: the slot is allocated from the
    /// source, no other `Slot` exists for it, and nothing else (a device) will touch its bytes
    /// while the returned `Slot` lives. Two live `Slot`s for one index would alias.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) unsafe fn adopt(self: &Arc<Self>, index: u32) -> Option<Slot> {
        if index >= self.count || !matches!(self.free, FreeList::External(_)) {
            return None;
        }
        Some(Slot { ptr: self.slot_ptr(index)?, index, home: Arc::clone(self) })
    }

    fn slot_ptr(&self, index: u32) -> Option<NonNull<u8>> {
        // In bounds: index < count and count * BUF_SIZE <= region size (checked in `new`), so
        // the offset stays inside one allocation; `wrapping_add` keeps this free of `unsafe`.
        NonNull::new(self.region.base().as_ptr().wrapping_add(index as usize * BUF_SIZE))
    }

    fn give(&self, index: u32) {
        match &self.free {
            FreeList::Local(q) => {
                // Cannot be full: each index is out at most once and the queue holds all of them.
                let pushed = q.push(index);
                debug_assert!(pushed.is_ok(), "slot returned twice to pool {}", self.name);
            }
            FreeList::External(src) => src.give(index),
        }
    }

    /// Largest buffer count of one pool (slot indices are `u32`, the region fits in `isize`).
    pub(crate) fn max_count() -> usize {
        (u32::MAX as usize).min(isize::MAX as usize / BUF_SIZE)
    }

    pub(crate) fn alloc(self: &Arc<Self>) -> Option<Slot> {
        let index = match &self.free {
            FreeList::Local(q) => q.pop()?,
            FreeList::External(src) => src.take()?,
        };
        let Some(ptr) = self.slot_ptr(index).filter(|_| index < self.count) else {
            self.give(index); // unreachable (base is non-null, sources stay in range); no leak
            return None;
        };
        Some(Slot { ptr, index, home: Arc::clone(self) })
    }

    pub(crate) fn available(&self) -> usize {
        match &self.free {
            FreeList::Local(q) => q.len(),
            FreeList::External(src) => src.available(),
        }
    }
    pub(crate) fn capacity(&self) -> usize {
        self.count as usize
    }
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn region_base(&self) -> usize {
        self.region.base().as_ptr() as usize
    }
    pub(crate) fn region_size(&self) -> usize {
        self.region.size()
    }
    pub(crate) fn region_iova(&self) -> u64 {
        self.region.iova_base()
    }
}

/// Exclusive ownership of one slot. Dropping it puts the index back on its pool's free list
/// (lock-free, any thread).
pub(crate) struct Slot {
    ptr: NonNull<u8>,
    index: u32,
    home: Arc<Slots>,
}

// The free list hands each index out once until `Drop` pushes it back.
// SAFETY: a `Slot` is the only handle to its BUF_SIZE bytes (above) and `home` is `Send + Sync`,
// so moving the handle to another thread moves sole access with it.
unsafe impl Send for Slot {}

impl Slot {
    /// The whole slot.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // The region outlives `self` (we hold an Arc to its owner).
        // SAFETY: `ptr` points to BUF_SIZE bytes of the live region (see `Slots::alloc`); the slot
        // is exclusively ours, so no one writes them while the shared borrow of `self` lasts.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), BUF_SIZE) }
    }

    /// The whole slot, mutably.
    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` guarantees this is the only live borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BUF_SIZE) }
    }

    #[inline]
    pub(crate) fn iova(&self) -> u64 {
        self.home.region.iova_base() + self.index as u64 * BUF_SIZE as u64
    }
    #[inline]
    pub(crate) fn index(&self) -> u32 {
        self.index
    }
    #[inline]
    pub(crate) fn pool_id(&self) -> u32 {
        self.home.id
    }
    #[inline]
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Give up the handle without returning the slot to the free list: ownership passes to
    /// whoever the index is handed to (a DPDK tx ring, which frees the mbuf itself). Returns the
    /// index.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn into_index(self) -> u32 {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so moving `home` out of it leaves no
        // second owner of the Arc; dropping the read value releases the reference it held.
        drop(unsafe { std::ptr::read(&me.home) });
        me.index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.home.give(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_region_is_page_aligned_and_zeroed() {
        let r = MmapRegion::new(3 * BUF_SIZE).unwrap();
        assert_eq!(r.base().as_ptr() as usize % page_size(), 0);
        assert!(r.size() >= 3 * BUF_SIZE);
        assert_eq!(r.iova_base(), r.base().as_ptr() as usize as u64);
    }

    /// An external free list (what the DPDK mempool is to its pool), as a plain stack.
    struct Stack(std::sync::Mutex<Vec<u32>>, std::sync::atomic::AtomicUsize);
    impl SlotSource for Arc<Stack> {
        fn take(&self) -> Option<u32> {
            self.0.lock().unwrap().pop()
        }
        fn give(&self, index: u32) {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.lock().unwrap().push(index);
        }
        fn available(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    #[test]
    fn external_source_owns_free_and_adopt_into_index_hand_over() {
        let st = Arc::new(Stack(std::sync::Mutex::new((0..4).rev().collect()), Default::default()));
        let region = Box::new(MmapRegion::new(4 * BUF_SIZE).unwrap());
        let s = Arc::new(Slots::with_source("ext", region, 4, Box::new(Arc::clone(&st))).unwrap());
        assert_eq!(s.available(), 4);
        let a = s.alloc().unwrap();
        assert_eq!((a.index(), s.available()), (0, 3), "alloc takes from the source");
        assert_eq!(a.addr(), s.region_base());
        // Hand over: the index leaves without going back to the source (a tx ring owns it).
        let refs = Arc::strong_count(&s);
        let i = a.into_index();
        assert_eq!((i, s.available(), st.1.load(Ordering::Relaxed)), (0, 3, 0));
        assert_eq!(Arc::strong_count(&s), refs - 1, "the handle's reference is released");
        // The device gives it back: adopt makes an owner again; dropping it returns the index.
        // SAFETY: index i was handed over by `into_index` above and nobody owns it now.
        let b = unsafe { s.adopt(i) }.unwrap();
        assert_eq!(b.addr(), s.region_base());
        drop(b);
        assert_eq!((s.available(), st.1.load(Ordering::Relaxed)), (4, 1));
        // SAFETY: out of range / local pool: refused before any Slot is made.
        assert!(unsafe { s.adopt(4) }.is_none(), "out of range");
        // A local pool never adopts (its free list is its own).
        let local = Arc::new(Slots::new("loc", Box::new(MmapRegion::new(BUF_SIZE).unwrap()), 1).unwrap());
        // SAFETY: as above.
        assert!(unsafe { local.adopt(0) }.is_none());
        let mut v = Vec::new();
        while let Some(x) = s.alloc() {
            v.push(x);
        }
        assert_eq!((v.len(), s.available()), (4, 0));
    }

    #[test]
    fn slots_go_back_from_another_thread() {
        let s = Arc::new(Slots::new("t", Box::new(MmapRegion::new(4 * BUF_SIZE).unwrap()), 4).unwrap());
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_eq!(s.available(), 2);
        assert_ne!(a.index(), b.index());
        std::thread::spawn(move || drop((a, b))).join().unwrap();
        assert_eq!(s.available(), 4);
    }
}
