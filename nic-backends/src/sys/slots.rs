//! Buffer memory: regions, the slots carved out of them, the free list and the per-thread caches
//! in front of it.
//!
//! States of a slot: **free** (its index is in the pool's shared free list or in one thread's
//! cache of the pool; nobody may touch its bytes)
//! or **owned** (exactly one [`Slot`] value exists for it; only that value's owner reads or writes
//! the bytes). `alloc` moves free → owned, dropping the `Slot` moves owned → free, from any thread.
//! Devices (VFIO, later) touch a slot only while the driver holds its `Slot` in a ring and does
//! not read it: the ownership token stays with the CPU side, the bytes are lent to the device.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// Anonymous private memory, resident from the start (populated when mapped), owned by the value
/// and unmapped on drop; from 2 MiB up advised onto transparent huge pages (see [`MmapRegion::new`]).
/// Its IOVA is its virtual address: what the socket backends and `mem` use.
#[derive(Debug)]
pub struct MmapRegion {
    base: NonNull<u8>,
    size: usize,
    /// Placed on a huge-page boundary and advised `MADV_HUGEPAGE` (whether the kernel then gave
    /// huge pages is its THP setting's and free memory's business).
    huge: bool,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner to another thread
// moves no thread-affine state, and `&MmapRegion` only hands out the address, never the bytes.
unsafe impl Send for MmapRegion {}
// SAFETY: as above; shared references expose only `base()`/`size()` (plain values).
unsafe impl Sync for MmapRegion {}

impl MmapRegion {
    /// Map `size` bytes (rounded up to whole pages) of zeroed anonymous memory, resident at once.
    ///
    /// A region of at least one huge page is rounded up to whole huge pages, placed on a huge-page
    /// boundary and advised `MADV_HUGEPAGE` before it is populated, so that with transparent huge
    /// pages in `madvise` (Debian's default) or `always` mode its buffers sit on 2 MiB pages, as a
    /// DPDK mempool sits on hugetlbfs: a burst's frames then cost no TLB miss each. With THP off
    /// (or the advice refused) the same region is made of small pages.
    pub fn new(size: usize) -> std::io::Result<MmapRegion> {
        let page = page_size();
        let size = size
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        if size >= HUGE_PAGE {
            if let Some(r) = Self::huge(size) {
                return Ok(r);
            }
        }
        let p = map_anonymous(size, libc::MAP_POPULATE)?;
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(MmapRegion { base, size, huge: false })
    }

    /// Whether the region was placed on a huge-page boundary and advised `MADV_HUGEPAGE`.
    pub fn huge_pages_advised(&self) -> bool {
        self.huge
    }

    /// `size` rounded up to whole huge pages, on a huge-page boundary, advised `MADV_HUGEPAGE`,
    /// then populated (`MADV_POPULATE_WRITE`, Linux 5.14; on older kernels by writing a zero to
    /// each page). None if the advice or the population fails (nothing is left mapped): the
    /// caller maps small pages instead.
    fn huge(size: usize) -> Option<MmapRegion> {
        let size = size.checked_next_multiple_of(HUGE_PAGE)?;
        let span = size.checked_add(HUGE_PAGE)?;
        // A reservation, not populated: only the aligned part is kept and populated below.
        let p = map_anonymous(span, libc::MAP_NORESERVE).ok()?;
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (aligned - start, start + span - (aligned + size));
        // SAFETY: the head and tail ranges lie inside the reservation just made, which nothing
        // else refers to; what stays mapped is exactly [aligned, aligned + size).
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
        }
        let a = aligned as *mut libc::c_void;
        let give_up = || {
            // SAFETY: the range mapped above, not handed out to anyone.
            unsafe { libc::munmap(a, size) };
            None
        };
        // `aligned` lies inside a successful mapping, so it is not null.
        let Some(base) = NonNull::new(aligned as *mut u8) else { return give_up() };
        // SAFETY: advice about the range this function owns (mapped above); it changes neither its
        // contents (fresh zero pages) nor any other mapping.
        if unsafe { libc::madvise(a, size, libc::MADV_HUGEPAGE) } != 0 {
            return give_up();
        }
        // SAFETY: as above: population allocates the range's pages, zero-filled, as touching them would.
        if unsafe { libc::madvise(a, size, libc::MADV_POPULATE_WRITE) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return give_up();
            }
            // A kernel before 5.14: touch every page instead.
            for off in (0..size).step_by(page_size()) {
                // SAFETY: `aligned + off` lies inside the readable and writable range mapped above,
                // which nothing else refers to yet; writing the zero it holds allocates its page.
                unsafe { core::ptr::write_volatile((aligned + off) as *mut u8, 0) };
            }
        }
        Some(MmapRegion { base, size, huge: true })
    }
}

/// A fresh private anonymous read-write mapping of `len` bytes at an address the kernel picks,
/// with `flags` added (`MAP_POPULATE`, `MAP_NORESERVE`).
fn map_anonymous(len: usize, flags: libc::c_int) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: a new mapping at an address the kernel chooses: no existing memory is affected; the
    // result is checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p)
}

/// The x86-64 (and aarch64 with 4 KiB pages) transparent huge page size.
const HUGE_PAGE: usize = 2 << 20;

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // The region is freed only when its `Slots`' reference count, which counts every slot out
        // of the shared free list, reaches zero: no slot outlives it.
        // SAFETY: `base`/`size` are exactly what `new` (or `huge`) left mapped, and no slot is out.
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

/// Largest per-thread cache of one pool, in slots (DPDK's `RTE_MEMPOOL_CACHE_MAX_SIZE` is 512).
pub(crate) const CACHE_MAX: usize = 512;
/// A pool gives each thread a cache of at most `count / CACHE_SHARE` slots, so that caches parked
/// on other threads can take at most that share of the pool each from an allocating thread.
const CACHE_SHARE: usize = 8;
/// Below this cache size a pool has no caches: every `alloc` and drop goes to the shared list.
const CACHE_MIN: usize = 8;
/// At most this share of a pool's slots can be parked in caches, all threads together: a pool
/// has at most `count / CACHE_TOTAL_SHARE / cache size` caches (at least 4, since a cache is at
/// most `count / 8`); further threads use the shared list directly. So an `alloc` can fail only
/// while at least half of the pool is out in buffers, however many threads allocate from it.
const CACHE_TOTAL_SHARE: usize = 2;

/// `Slots::flags`: the shared list ran dry while some thread's cache held slots: the next free
/// into the pool by a thread with a cache gives that whole cache back; the first give-back that
/// returns any slot clears the mark (allocations do not look at it).
const STARVING: u8 = 1;
/// `Slots::flags`: every `Pool` handle is gone: caches stop keeping this pool's slots.
const CLOSED: u8 = 2;
/// `Slots::flags`: the pool has as many caches as it may (`max_caches`): a thread without one
/// does not ask for one (a hint read without the lock; the count under the lock decides).
const CACHES_FULL: u8 = 4;

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

/// The shared free list of a local pool, behind the pool's mutex. Caches move slots in and out
/// of it in batches; without a cache (small pools, a thread being torn down) one at a time.
struct Shared {
    /// Free slot indices, used as a stack (the last freed is the first reused: still in cache).
    free: Vec<u32>,
    /// Published lengths of the per-thread caches of this pool (for `available`).
    caches: Vec<Arc<AtomicUsize>>,
}

/// Where free slot indices are kept.
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
enum FreeList {
    /// Our own list (mmap'd and VFIO pools), with per-thread caches in front of it.
    Local(Mutex<Shared>),
    /// Somebody else's allocator (DPDK mempool, which has its own per-lcore caches).
    External(Box<dyn SlotSource>),
}

/// Keeps the fields written at run time off the line the fast path reads.
#[repr(align(128))]
struct Padded<T>(T);

/// The shared part of a pool: the region, the free list of slot indices, identity. Lives on the
/// heap behind a raw pointer with its own reference count `refs` (see "Lifetime" below), so that
/// a [`Slot`] does not have to carry a counted reference.
///
/// **Lifetime.** `refs` counts: one per [`SlotsRef`] (the `Pool` handles hold one together),
/// one per per-thread cache of the pool, for a local pool one for "some slot is not in the
/// shared free list" (taken when the list stops being full, dropped when it is full again: both
/// under the mutex, the drop after unlocking), and for an external pool one per live `Slot`.
/// So while a `Slot` exists the count is above zero; whoever brings it to zero frees the
/// `Slots` and with it the region. Nobody can reach it then: no handle, no cache, and every
/// slot is home.
pub(crate) struct Slots {
    // Read by every alloc and free; written only at creation.
    base: NonNull<u8>,
    iova_base: u64,
    count: u32,
    id: u32,
    /// Per-thread cache size (0: no caches).
    cache_cap: u32,
    /// Most caches this pool has at once (`count / CACHE_TOTAL_SHARE / cache_cap`).
    max_caches: u32,
    /// `STARVING | CLOSED | CACHES_FULL`; read on every cached operation, written rarely.
    flags: AtomicU8,
    free: Padded<FreeList>,
    refs: Padded<AtomicUsize>,
    region: Box<dyn Region>,
    name: String,
    /// The pointer `into_ref` got from `Box::leak`, written once before the `Slots` is
    /// shared: the `home` of every `Slot` and cache is a copy of it, so that whoever frees the
    /// `Slots` through one does so with the Box's own pointer, never one made from a `&Slots`.
    /// Dangling until then (no slot or cache exists before `into_ref`).
    this: NonNull<Slots>,
}

// SAFETY: `base` points into `region`, which is `Send + Sync`; every other field is. The bytes
// behind `base` are only touched through `Slot`s, each the sole owner of its slot.
unsafe impl Send for Slots {}
// SAFETY: as above; shared access reads plain fields, atomics, or goes through the mutex.
unsafe impl Sync for Slots {}

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
        // Highest index on top: the first allocations come from the front of the region.
        let free = (0..count as u32).rev().collect();
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let cap = (count / CACHE_SHARE).min(CACHE_MAX);
        let cap = if cap >= CACHE_MIN { cap } else { 0 };
        Ok(Slots {
            base: region.base(),
            iova_base: region.iova_base(),
            count: count as u32,
            id,
            cache_cap: cap as u32,
            max_caches: count.checked_div(CACHE_TOTAL_SHARE * cap).unwrap_or(0) as u32,
            flags: AtomicU8::new(0),
            free: Padded(FreeList::Local(Mutex::new(Shared { free, caches: Vec::new() }))),
            refs: Padded(AtomicUsize::new(0)),
            region,
            name,
            this: NonNull::dangling(),
        })
    }

    /// Slots over `region` whose free list is `source` (an external allocator that owns the
    /// state "free"; see [`SlotSource`]). No per-thread caches: the source has its own.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn with_source(
        name: &str,
        region: Box<dyn Region>,
        count: usize,
        source: Box<dyn SlotSource>,
    ) -> Result<Slots, PoolError> {
        let mut s = Slots::new(name, region, count)?;
        s.free = Padded(FreeList::External(source));
        s.cache_cap = 0;
        s.max_caches = 0;
        Ok(s)
    }

    /// Move to the heap; the returned reference is the first and, for now, only one.
    pub(crate) fn into_ref(self) -> SlotsRef {
        self.refs.0.store(1, Ordering::Relaxed);
        let p = NonNull::from(Box::leak(Box::new(self)));
        // SAFETY: `p` is the leaked Box's pointer, valid, and not shared with anyone yet: this
        // write through it is the only access, and `this` keeps that pointer for every later use.
        unsafe { (*p.as_ptr()).this = p };
        SlotsRef(p)
    }

    /// A `Slot` for `index`, which the external source handed to someone else than `alloc`
    /// (a device received into it). None for an index out of range or a local pool.
    ///
    /// # Safety
    /// The caller guarantees what `SlotSource::take` would: the slot is allocated from the
    /// source, no other `Slot` exists for it, and nothing else (a device) will touch its bytes
    /// while the returned `Slot` lives. Two live `Slot`s for one index would alias.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) unsafe fn adopt(&self, index: u32) -> Option<Slot> {
        if index >= self.count || !matches!(self.free.0, FreeList::External(_)) {
            return None;
        }
        self.refs.0.fetch_add(1, Ordering::Relaxed);
        Some(self.slot(index))
    }

    /// The handle for `index` (< count, checked by the callers), whose ownership the caller got
    /// from the free list.
    #[inline]
    fn slot(&self, index: u32) -> Slot {
        debug_assert!(index < self.count);
        // In bounds: index < count and count * BUF_SIZE <= region size (checked in `new`), so the
        // offset stays inside one allocation; `wrapping_add` of a non-null base stays non-null.
        let ptr = NonNull::new(self.base.as_ptr().wrapping_add(index as usize * BUF_SIZE)).unwrap_or(self.base);
        debug_assert!(self.this != NonNull::dangling(), "a slot of pool {} before into_ref", self.name);
        Slot { ptr, index, home: self.this }
    }

    /// Largest buffer count of one pool (slot indices are `u32`, the region fits in `isize`).
    pub(crate) fn max_count() -> usize {
        (u32::MAX as usize).min(isize::MAX as usize / BUF_SIZE)
    }

    /// One slot, through this thread's cache when the pool has caches.
    #[inline]
    pub(crate) fn alloc(&self) -> Option<Slot> {
        let index = match &self.free.0 {
            FreeList::Local(shared) => {
                if self.cache_cap > 0 {
                    if let Some(got) = cache::with(self, true, |c| c.pop(self)) {
                        return got.map(|i| self.slot(i));
                    }
                }
                self.take_one(shared)?
            }
            FreeList::External(src) => {
                let i = src.take()?;
                if i >= self.count {
                    src.give(i); // unreachable (sources stay in range); no leak
                    return None;
                }
                self.refs.0.fetch_add(1, Ordering::Relaxed);
                i
            }
        };
        Some(self.slot(index))
    }

    /// Up to `n` slots into `push`; how many. One look-up of the thread's cache for the burst.
    #[inline]
    pub(crate) fn alloc_burst(&self, n: usize, mut push: impl FnMut(Slot)) -> usize {
        if self.cache_cap > 0 {
            let mut got = 0;
            let done = cache::with(self, true, |c| {
                while got < n {
                    match c.pop(self) {
                        Some(i) => push(self.slot(i)),
                        None => break,
                    }
                    got += 1;
                }
            });
            if done.is_some() {
                return got;
            }
        }
        for i in 0..n {
            match self.alloc() {
                Some(s) => push(s),
                None => return i,
            }
        }
        n
    }

    /// Free slots: the shared list plus every thread's cache (exact when no other thread is
    /// allocating or freeing; see DESIGN.md on slots parked in another thread's cache).
    pub(crate) fn available(&self) -> usize {
        match &self.free.0 {
            FreeList::Local(shared) => {
                let s = lock(shared);
                s.free.len() + s.caches.iter().map(|c| c.load(Ordering::Relaxed)).sum::<usize>()
            }
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
        self.base.as_ptr() as usize
    }
    pub(crate) fn region_size(&self) -> usize {
        self.region.size()
    }
    pub(crate) fn region_iova(&self) -> u64 {
        self.iova_base
    }

    /// Per-thread cache size of this pool (0: none).
    #[cfg(test)]
    pub(crate) fn cache_cap(&self) -> usize {
        self.cache_cap as usize
    }
    /// Most caches of this pool at once.
    #[cfg(test)]
    pub(crate) fn max_caches(&self) -> usize {
        self.max_caches as usize
    }
    /// Caches of this pool that exist now (registered in the shared part).
    #[cfg(test)]
    pub(crate) fn caches(&self) -> usize {
        match &self.free.0 {
            FreeList::Local(shared) => lock(shared).caches.len(),
            FreeList::External(_) => 0,
        }
    }
    /// Slots in the shared free list (not counting any cache).
    #[cfg(test)]
    pub(crate) fn shared_len(&self) -> usize {
        match &self.free.0 {
            FreeList::Local(shared) => lock(shared).free.len(),
            FreeList::External(src) => src.available(),
        }
    }
    /// The reference count (see "Lifetime").
    #[cfg(test)]
    pub(crate) fn refs(&self) -> usize {
        self.refs.0.load(Ordering::Relaxed)
    }

    /// One slot from the shared list (no cache). The caller holds a reference (a `Pool`).
    fn take_one(&self, shared: &Mutex<Shared>) -> Option<u32> {
        let mut s = lock(shared);
        let full = s.free.len() == self.count as usize;
        let i = s.free.pop();
        if i.is_some() && full {
            // The list stops being full: "some slot is out" now holds a reference. The caller's
            // own reference keeps the count above zero, so this cannot revive a freed pool.
            self.refs.0.fetch_add(1, Ordering::Relaxed);
        }
        if i.is_none() && !s.caches.is_empty() {
            self.flags.fetch_or(STARVING, Ordering::Relaxed);
        }
        i
    }

    /// Move up to `n` slots from the shared list to `out`; how many. Sets `STARVING` when the
    /// list is dry and another thread's cache may hold slots.
    fn take_batch(&self, out: &mut Vec<u32>, n: usize) -> usize {
        let FreeList::Local(shared) = &self.free.0 else { return 0 };
        let mut s = lock(shared);
        let full = s.free.len() == self.count as usize;
        let k = n.min(s.free.len());
        let from = s.free.len() - k;
        out.extend(s.free.drain(from..));
        if k > 0 && full {
            // As in `take_one`: the caller (a cache) holds a reference.
            self.refs.0.fetch_add(1, Ordering::Relaxed);
        }
        if k == 0 && s.caches.len() > 1 {
            self.flags.fetch_or(STARVING, Ordering::Relaxed);
        }
        k
    }

    /// Put slot indices back on the shared list (the caller owned them: a cache or a dropped
    /// `Slot`). Returns true when the list became full, i.e. the caller must then drop the "some
    /// slot is out" reference with [`release`] **after** this returned (the mutex is unlocked).
    #[must_use]
    fn give_back(&self, items: impl IntoIterator<Item = u32>) -> bool {
        let FreeList::Local(shared) = &self.free.0 else { return false };
        let mut s = lock(shared);
        let before = s.free.len();
        s.free.extend(items);
        debug_assert!(s.free.len() <= self.count as usize, "slot returned twice to pool {}", self.name);
        if s.free.len() > before {
            // Slots came back: a starving thread can refill now. (An empty give-back, a cache
            // retiring with nothing in it, leaves the mark for the caches that do hold slots.)
            // Load first: a give-back while nobody starves writes nothing to this read-mostly line.
            if self.flags.load(Ordering::Relaxed) & STARVING != 0 {
                self.flags.fetch_and(!STARVING, Ordering::Relaxed);
            }
        }
        before < self.count as usize && s.free.len() == self.count as usize
    }

    /// Return one slot that its `Slot` gave up. True when the caller must then drop one
    /// reference with [`release`] (the "some slot is out" one when the shared list became full;
    /// an external pool's slot's own one), after every `&Slots` it holds is gone: the release
    /// may free the `Slots`, so it is not done here, while `&self` is alive.
    #[inline]
    #[must_use]
    fn give(&self, index: u32) -> bool {
        match &self.free.0 {
            FreeList::Local(_) => {
                // Only a thread that allocates from the pool has a cache of it: a thread that
                // only frees into it (a worker sending another thread's buffers) gives the slot
                // straight back, so no slot waits in a cache its thread never empties.
                if self.cache_cap > 0 && cache::with(self, false, |c| c.push(self, index)).is_some() {
                    return false;
                }
                self.give_back([index])
            }
            FreeList::External(src) => {
                src.give(index);
                true
            }
        }
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves the list consistent (every operation is a push, a
    // pop or an extend of plain integers), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drop one reference; the last one frees the `Slots` (and its region).
///
/// # Safety
/// `p` came from [`Slots::into_ref`], the caller owns one of the references counted in `refs`
/// and does not use `p` (nor any `&Slots` derived from it) after this call.
unsafe fn release(p: NonNull<Slots>) {
    // SAFETY: the caller's reference keeps the Slots alive until this decrement.
    let prev = unsafe { p.as_ref() }.refs.0.fetch_sub(1, Ordering::Release);
    debug_assert!(prev > 0);
    if prev == 1 {
        // Pairs with the Release decrements of the other holders: their last accesses happen
        // before the free (as in `Arc`).
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the count reached zero: no handle, no cache, no slot outside the free list
        // (or, external, no live Slot) remains, so nobody else can reach `p`; it was leaked
        // from a Box in `into_ref`.
        drop(unsafe { Box::from_raw(p.as_ptr()) });
    }
}

/// A counted reference to a `Slots` (what a `Pool` holds).
pub(crate) struct SlotsRef(NonNull<Slots>);

// SAFETY: a counted reference to a `Sync` value, released from whichever thread drops it.
unsafe impl Send for SlotsRef {}
// SAFETY: shared access only yields `&Slots`, which is `Sync`.
unsafe impl Sync for SlotsRef {}

impl std::ops::Deref for SlotsRef {
    type Target = Slots;
    #[inline]
    fn deref(&self) -> &Slots {
        // SAFETY: our reference keeps the Slots alive for as long as `self`.
        unsafe { self.0.as_ref() }
    }
}

impl SlotsRef {
    /// The last `Pool` handle is going away: caches stop keeping this pool's slots, and this
    /// thread's cache gives its slots back now (other threads' caches do it at their next
    /// operation, or when the thread exits).
    pub(crate) fn close(&self) {
        self.flags.fetch_or(CLOSED, Ordering::Relaxed);
        cache::drop_cache_of(self.0);
    }
}

impl Drop for SlotsRef {
    fn drop(&mut self) {
        // SAFETY: this value owns one reference and is not used again.
        unsafe { release(self.0) };
    }
}

/// Exclusive ownership of one slot. Dropping it puts the index back on its pool's free list
/// (through the dropping thread's cache), from any thread.
pub(crate) struct Slot {
    ptr: NonNull<u8>,
    index: u32,
    /// Kept alive by the counted "some slot is out" reference (local pool) or by this slot's own
    /// reference (external pool): see [`Slots`].
    home: NonNull<Slots>,
}

// The free list hands each index out once until `Drop` gives it back.
// SAFETY: a `Slot` is the only handle to its BUF_SIZE bytes (above) and `Slots` is `Sync`, so
// moving the handle to another thread moves sole access with it.
unsafe impl Send for Slot {}

impl Slot {
    #[inline]
    fn home(&self) -> &Slots {
        // SAFETY: while this Slot exists its pool's reference count is above zero (see the
        // `home` field), so the Slots is alive for at least as long as `&self`.
        unsafe { self.home.as_ref() }
    }

    /// The whole slot.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points to BUF_SIZE bytes of the live region (see `Slots::slot`; the
        // region lives as long as its Slots, which outlives `self`); the slot is exclusively
        // ours, so no one writes them while the shared borrow of `self` lasts.
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
        self.home().iova_base + self.index as u64 * BUF_SIZE as u64
    }
    #[inline]
    pub(crate) fn index(&self) -> u32 {
        self.index
    }
    #[inline]
    pub(crate) fn pool_id(&self) -> u32 {
        self.home().id
    }
    #[inline]
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Give up the handle without returning the slot to the free list: ownership passes to
    /// whoever the index is handed to (a DPDK tx ring, which frees the mbuf itself). Returns the
    /// index. Only for external pools (a local slot given up this way would never come back).
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn into_index(self) -> u32 {
        let me = std::mem::ManuallyDrop::new(self);
        debug_assert!(matches!(me.home().free.0, FreeList::External(_)));
        if matches!(me.home().free.0, FreeList::External(_)) {
            // SAFETY: an external slot holds one reference (taken in `alloc`/`adopt`), which
            // `me`, never dropped, gives up here; `me.home` is not used afterwards.
            unsafe { release(me.home) };
        }
        me.index
    }
}

impl Drop for Slot {
    #[inline]
    fn drop(&mut self) {
        let home = self.home;
        if self.home().give(self.index) {
            // SAFETY: `give` said this slot's reference (see its doc) is ours to drop, and the
            // `&Slots` it borrowed is gone; nothing reaches `home` after this.
            unsafe { release(home) };
        }
    }
}

pub(crate) use cache::without_new_caches;

/// Per-thread LIFO caches of free slots, one per pool the thread allocates from (frees go to it
/// when it exists, else straight to the shared list)
/// (DPDK's mempool cache, per thread instead of per lcore).
mod cache {
    use super::*;
    use std::cell::RefCell;

    /// One thread's cache of one pool.
    pub(super) struct Cache {
        /// The pool; the cache holds one reference on it (taken in `with`, dropped in `retire`).
        home: NonNull<Slots>,
        /// Free slots owned by this cache; the top is the most recently freed (hot) one.
        stack: Vec<u32>,
        /// `stack.len()`, published for `Slots::available` (registered in the pool's list).
        published: Arc<AtomicUsize>,
    }

    impl Cache {
        /// A slot: from the stack, or after refilling half a cache from the shared list.
        #[inline]
        pub(super) fn pop(&mut self, home: &Slots) -> Option<u32> {
            if self.stack.is_empty() {
                let batch = home.cache_cap as usize / 2;
                home.take_batch(&mut self.stack, batch);
            }
            let i = self.stack.pop();
            self.published.store(self.stack.len(), Ordering::Relaxed);
            i
        }

        /// Keep a freed slot; when the cache is full, half of it goes to the shared list first.
        #[inline]
        pub(super) fn push(&mut self, home: &Slots, index: u32) {
            let cap = home.cache_cap as usize;
            if self.stack.len() >= cap {
                self.flush(home, cap / 2);
            }
            self.stack.push(index);
            if home.flags.load(Ordering::Relaxed) & STARVING != 0 {
                self.flush(home, self.stack.len());
            }
            self.published.store(self.stack.len(), Ordering::Relaxed);
        }

        /// Give the top `n` slots to the shared list.
        fn flush(&mut self, home: &Slots, n: usize) {
            let from = self.stack.len() - n.min(self.stack.len());
            // Published first: `available()` must never count these slots twice.
            self.published.store(from, Ordering::Relaxed);
            let became_full = {
                let items = self.stack.drain(from..);
                home.give_back(items)
            };
            self.published.store(self.stack.len(), Ordering::Relaxed);
            if became_full {
                // SAFETY: the list became full: the "some slot is out" reference is ours to drop;
                // this cache still holds its own reference, so the count stays above zero and
                // `home` stays valid.
                unsafe { release(self.home) };
            }
        }

        /// Give every slot back, unregister, drop the cache's reference. `self.home` must not
        /// be used afterwards.
        fn retire(mut self) {
            // SAFETY: the cache's reference keeps the pool alive until `release` below.
            let home = unsafe { self.home.as_ref() };
            self.flush(home, self.stack.len());
            if let FreeList::Local(shared) = &home.free.0 {
                let mut s = lock(shared);
                s.caches.retain(|c| !Arc::ptr_eq(c, &self.published));
                // Under the lock, so that a cache made concurrently cannot be missed.
                home.flags.fetch_and(!CACHES_FULL, Ordering::Relaxed);
            }
            // SAFETY: the reference taken when this cache was made; nothing uses `home` after.
            unsafe { release(self.home) };
        }
    }

    /// The caches of one thread. Dropped when the thread exits: every slot goes home.
    struct Caches(Vec<Cache>);

    impl Drop for Caches {
        fn drop(&mut self) {
            for c in self.0.drain(..) {
                c.retire();
            }
        }
    }

    thread_local! {
        static CACHES: RefCell<Caches> = const { RefCell::new(Caches(Vec::new())) };
        /// Above zero inside [`without_new_caches`]: this thread makes no new cache.
        static NO_NEW_CACHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Run `f` without making new per-thread caches on this thread: for a port's setup, which
    /// fills its receive ring from a worker's pool on the thread that opens the port (the
    /// control thread, later only an occasional freer of that pool). A cache made there would
    /// keep the slots that thread frees afterwards parked (up to one cache of them), away
    /// from the worker that allocates. Caches the thread already has are still used.
    pub(crate) fn without_new_caches<R>(f: impl FnOnce() -> R) -> R {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = NO_NEW_CACHES.try_with(|n| n.set(n.get() - 1));
            }
        }
        let _ = NO_NEW_CACHES.try_with(|n| n.set(n.get() + 1));
        let _restore = Restore;
        f()
    }

    /// Run `f` on this thread's cache of `home`, made on first use when `create`. None when there
    /// is no cache to use: the thread has none and `!create`, the pool already has its
    /// `max_caches`, the thread's caches are being torn down (thread exit) or already borrowed
    /// (a pool freed from inside a cache operation drops buffers of another pool); the caller
    /// then uses the shared list directly.
    #[inline]
    pub(super) fn with<R>(home: &Slots, create: bool, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        CACHES
            .try_with(|cs| {
                let mut cs = cs.try_borrow_mut().ok()?;
                let list = &mut cs.0;
                let p = home.this;
                let at = match list.iter().position(|c| c.home == p) {
                    Some(0) => 0,
                    Some(k) => {
                        list.swap(0, k); // most recently used first
                        0
                    }
                    None => {
                        // No new caches for a pool nobody can allocate from, nor beyond its
                        // number of caches (this thread then uses the shared list directly).
                        if !create
                            || home.flags.load(Ordering::Relaxed) & (CLOSED | CACHES_FULL) != 0
                            || NO_NEW_CACHES.try_with(|n| n.get() > 0).unwrap_or(true)
                        {
                            return None;
                        }
                        reap_closed(list);
                        let FreeList::Local(shared) = &home.free.0 else { return None };
                        let published = Arc::new(AtomicUsize::new(0));
                        {
                            let mut s = lock(shared);
                            if s.caches.len() >= home.max_caches as usize {
                                home.flags.fetch_or(CACHES_FULL, Ordering::Relaxed);
                                return None;
                            }
                            s.caches.push(Arc::clone(&published));
                        }
                        // The caller holds a reference (a Pool, or a Slot's "some slot is out")
                        // for the duration of this call, so the count is above zero.
                        home.refs.0.fetch_add(1, Ordering::Relaxed);
                        let cap = home.cache_cap as usize;
                        list.insert(0, Cache { home: p, stack: Vec::with_capacity(cap + 1), published });
                        0
                    }
                };
                if home.flags.load(Ordering::Relaxed) & CLOSED != 0 {
                    // Every handle is gone: stop keeping this pool's slots. The caller's slot (if
                    // freeing) goes to the shared list directly, after the cache is gone.
                    list.remove(at).retire();
                    return None;
                }
                Some(f(&mut list[at]))
            })
            .ok()
            .flatten()
    }

    /// Retire the caches of pools whose handles are all gone (their slots are waiting there).
    fn reap_closed(list: &mut Vec<Cache>) {
        let mut k = 0;
        while k < list.len() {
            // SAFETY: each cache holds a reference on its pool.
            if unsafe { list[k].home.as_ref() }.flags.load(Ordering::Relaxed) & CLOSED != 0 {
                list.remove(k).retire();
            } else {
                k += 1;
            }
        }
    }

    /// Retire this thread's cache of `p` (if any) now, and any other closed pool's.
    pub(super) fn drop_cache_of(p: NonNull<Slots>) {
        let _ = CACHES.try_with(|cs| {
            if let Ok(mut cs) = cs.try_borrow_mut() {
                if let Some(k) = cs.0.iter().position(|c| c.home == p) {
                    cs.0.remove(k).retire();
                }
                reap_closed(&mut cs.0);
            }
        });
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

    /// A region of a huge page or more: advised onto huge pages exactly when the kernel has
    /// transparent huge pages; then whole huge pages on a huge-page boundary, zeroed, and with THP
    /// enabled for 2 MiB pages (`always` or `madvise`, and not `never` for that size) backed by
    /// them (`AnonHugePages` of its mapping in /proc/self/smaps); with THP `never`, by none.
    #[test]
    fn a_large_region_sits_on_huge_pages() {
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage");
        let r = MmapRegion::new(3 * HUGE_PAGE + 1).unwrap();
        let base = r.base().as_ptr() as usize;
        assert_eq!(r.huge_pages_advised(), thp.exists(), "advised exactly when the kernel has THP");
        if r.huge_pages_advised() {
            assert_eq!(base % HUGE_PAGE, 0);
            assert_eq!(r.size(), 4 * HUGE_PAGE);
        } else {
            assert!(r.size() > 3 * HUGE_PAGE);
        }
        // SAFETY: `r` maps `size()` readable bytes that nothing writes while `r` is borrowed.
        let bytes = unsafe { std::slice::from_raw_parts(r.base().as_ptr(), r.size()) };
        assert!(bytes.iter().step_by(4096).all(|&b| b == 0), "zeroed");
        let read = |f: &str| std::fs::read_to_string(thp.join(f)).unwrap_or_default();
        let (mode, per_size) = (read("enabled"), read("hugepages-2048kB/enabled"));
        let pmd_is_2m = read("hpage_pmd_size").trim() == HUGE_PAGE.to_string();
        let enabled = (mode.contains("[always]") || mode.contains("[madvise]")) && !per_size.contains("[never]");
        // The mapping holding the region (it may have merged with a neighbour of the same kind).
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut huge_kb, mut inside) = (None, false);
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((Ok(lo), Ok(hi))) =
                range.map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
            {
                inside = lo <= base && base < hi;
            } else if let Some(v) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                huge_kb = v.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
            }
        }
        let huge_kb = huge_kb.expect("the region's mapping in /proc/self/smaps");
        if !pmd_is_2m {
            eprintln!("huge pages are not 2 MiB here: {huge_kb} kB in huge pages, not checked");
        } else if enabled {
            assert!(huge_kb >= 2048, "THP {mode:?} / {per_size:?}: {huge_kb} kB of huge pages in the region");
        } else {
            assert_eq!(huge_kb, 0, "THP {mode:?} / {per_size:?}");
        }
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
        let s = Slots::with_source("ext", region, 4, Box::new(Arc::clone(&st))).unwrap().into_ref();
        assert_eq!(s.available(), 4);
        let a = s.alloc().unwrap();
        assert_eq!((a.index(), s.available()), (0, 3), "alloc takes from the source");
        assert_eq!(a.addr(), s.region_base());
        // Hand over: the index leaves without going back to the source (a tx ring owns it).
        let refs = s.refs.0.load(Ordering::Relaxed);
        let i = a.into_index();
        assert_eq!((i, s.available(), st.1.load(Ordering::Relaxed)), (0, 3, 0));
        assert_eq!(s.refs.0.load(Ordering::Relaxed), refs - 1, "the handle's reference is released");
        // The device gives it back: adopt makes an owner again; dropping it returns the index.
        // SAFETY: index i was handed over by `into_index` above and nobody owns it now.
        let b = unsafe { s.adopt(i) }.unwrap();
        assert_eq!(b.addr(), s.region_base());
        drop(b);
        assert_eq!((s.available(), st.1.load(Ordering::Relaxed)), (4, 1));
        // SAFETY: out of range / local pool: refused before any Slot is made.
        assert!(unsafe { s.adopt(4) }.is_none(), "out of range");
        // A local pool never adopts (its free list is its own).
        let local = Slots::new("loc", Box::new(MmapRegion::new(BUF_SIZE).unwrap()), 1).unwrap().into_ref();
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
        let s = Slots::new("t", Box::new(MmapRegion::new(4 * BUF_SIZE).unwrap()), 4).unwrap().into_ref();
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_eq!(s.available(), 2);
        assert_ne!(a.index(), b.index());
        std::thread::spawn(move || drop((a, b))).join().unwrap();
        assert_eq!(s.available(), 4);
    }

    // ---- per-thread caches (through the public Pool API) ----

    use crate::buffer::{Buffer, Pool};
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// An mmap'd region that records when it is dropped (unmapped).
    struct Watched(MmapRegion, Arc<AtomicBool>);
    // SAFETY: delegates to an MmapRegion, which upholds the contract.
    unsafe impl Region for Watched {
        fn base(&self) -> NonNull<u8> {
            self.0.base()
        }
        fn size(&self) -> usize {
            self.0.size()
        }
        fn iova_base(&self) -> u64 {
            self.0.iova_base()
        }
    }
    impl Drop for Watched {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }
    fn watched_pool(count: usize) -> (Pool, Arc<AtomicBool>) {
        let gone = Arc::new(AtomicBool::new(false));
        let r = Watched(MmapRegion::new(count * BUF_SIZE).unwrap(), Arc::clone(&gone));
        (Pool::with_region("w", r, count).unwrap(), gone)
    }

    /// Run `f` on a fresh thread (a fresh set of caches) and wait for it.
    fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn cache_size_follows_the_pool_size() {
        assert_eq!(Pool::new("t", 63).unwrap().slots().cache_cap(), 0, "small pools have no caches");
        assert_eq!(Pool::new("t", 64).unwrap().slots().cache_cap(), 8);
        assert_eq!(Pool::new("t", 1024).unwrap().slots().cache_cap(), 128);
        assert_eq!(Pool::new("t", 65536).unwrap().slots().cache_cap(), CACHE_MAX);
        // All caches together hold at most half the pool.
        for count in [64, 100, 127, 1024, 4096, 4104, 5000, 65536] {
            let s = Pool::new("t", count).unwrap();
            let (cap, max) = (s.slots().cache_cap(), s.slots().max_caches());
            assert!(max >= 4 && max * cap <= count / 2, "{count}: {max} caches of {cap}");
        }
        assert_eq!(Pool::new("t", 63).unwrap().slots().max_caches(), 0);
    }

    /// However many threads allocate from a pool and then go idle with full caches, at most half
    /// of the pool is parked: a thread beyond the pool's number of caches uses the shared list,
    /// and one that exits makes room for another.
    #[test]
    fn caches_hold_at_most_half_the_pool_however_many_threads() {
        let pool = Pool::new("t", 256).unwrap();
        let (cap, max) = (pool.slots().cache_cap(), pool.slots().max_caches());
        assert_eq!((cap, max), (32, 4));
        let threads = max + 3;
        let (ready_tx, ready) = mpsc::channel::<()>();
        let mut go = Vec::new();
        let mut hs = Vec::new();
        for _ in 0..threads {
            let (p, ready_tx) = (pool.clone(), ready_tx.clone());
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            hs.push(std::thread::spawn(move || {
                // Take a cache's worth and free it all: a cache (if any) is left full.
                let mut v = Vec::new();
                assert_eq!(p.alloc_burst(&mut v, cap), cap);
                drop(v);
                ready_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }));
            ready.recv().unwrap(); // one at a time: each finds the caches the others left
        }
        assert_eq!(pool.slots().caches(), max, "no more caches than the pool allows");
        assert_eq!(pool.slots().shared_len(), 256 - max * cap, "parked: the full caches only");
        // This thread gets no cache either; everything not parked is allocatable.
        let mut v = Vec::new();
        while let Some(b) = pool.alloc() {
            v.push(b);
        }
        assert_eq!(v.len(), 256 - max * cap);
        assert!(v.len() >= 256 / 2, "at least half the pool stays reachable");
        assert_eq!(pool.available(), max * cap);
        drop(v);
        for g in &go {
            g.send(()).unwrap();
        }
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!((pool.slots().caches(), pool.slots().shared_len(), pool.available()), (0, 256, 256));
        // The exits made room: a new thread gets a cache again (its first alloc refills half one).
        let p = pool.clone();
        on_thread(move || {
            let b = p.alloc().unwrap();
            assert_eq!((p.slots().caches(), p.slots().shared_len()), (1, 256 - cap / 2));
            drop(b);
        });
        assert_eq!((pool.slots().caches(), pool.available()), (0, 256));
    }

    #[test]
    fn cache_is_lifo() {
        let pool = Pool::new("t", 1024).unwrap();
        on_thread(move || {
            let a = pool.alloc().unwrap();
            let ia = a.slot_index();
            drop(a);
            assert_eq!(pool.alloc().unwrap().slot_index(), ia, "the slot just freed comes back first");
            let v: Vec<Buffer> = (0..3).map(|_| pool.alloc().unwrap()).collect();
            let idx: Vec<u32> = v.iter().map(Buffer::slot_index).collect();
            drop(v); // frees idx[0], idx[1], idx[2] in that order
            let again: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap().slot_index()).collect();
            // Each alloc above is dropped at once, so it reuses the same (top) slot.
            assert_eq!(again, vec![idx[2]; 3]);
            let mut w = Vec::new();
            pool.alloc_burst(&mut w, 3);
            assert_eq!(w.iter().map(Buffer::slot_index).collect::<Vec<_>>(), vec![idx[2], idx[1], idx[0]]);
        });
    }

    #[test]
    fn cache_refills_and_flushes_in_half_cache_batches() {
        let pool = Pool::new("t", 1024).unwrap();
        let cap = pool.slots().cache_cap();
        let p = pool.clone();
        on_thread(move || {
            let s = p.slots();
            let b = p.alloc().unwrap();
            assert_eq!(s.shared_len(), 1024 - cap / 2, "one refill of half a cache");
            assert_eq!(p.available(), 1024 - 1, "cached slots count as available");
            let mut v = vec![b];
            p.alloc_burst(&mut v, cap / 2 - 1);
            assert_eq!(s.shared_len(), 1024 - cap / 2, "served from the cache, no shared traffic");
            p.alloc_burst(&mut v, 1);
            assert_eq!(s.shared_len(), 1024 - cap, "the second refill");
            let more = 3 * cap - v.len();
            p.alloc_burst(&mut v, more);
            assert_eq!(s.shared_len(), 1024 - 3 * cap);
            assert_eq!(p.available(), 1024 - 3 * cap);
            // Freeing 3 caches' worth: the cache fills to `cap`, then gives half back each time.
            let mut max_cached = 0;
            while let Some(b) = v.pop() {
                drop(b);
                let cached = 1024 - s.shared_len() - v.len();
                max_cached = max_cached.max(cached);
                assert!(cached <= cap, "{cached} > {cap}");
                assert_eq!(p.available(), 1024 - v.len());
            }
            assert_eq!(max_cached, cap);
            assert!(s.shared_len() >= 1024 - cap && s.shared_len() < 1024, "some stay cached while the thread lives");
        });
        assert_eq!(pool.slots().shared_len(), 1024, "the thread's exit gave its cached slots back");
        assert_eq!(pool.available(), 1024);
    }

    /// A thread that only frees into a pool (a worker sending buffers another thread filled)
    /// makes no cache of it: its slots go straight to the shared list, so none can wait in a
    /// cache whose thread never allocates from the pool again.
    #[test]
    fn a_thread_that_only_frees_keeps_no_cache() {
        let pool = Pool::new("t", 1024).unwrap();
        assert!(pool.slots().cache_cap() > 0);
        let p = pool.clone();
        // Allocated on a thread that then exits (its cache goes home with it).
        let bufs = on_thread(move || {
            let mut v = Vec::new();
            assert_eq!(p.alloc_burst(&mut v, 600), 600);
            v
        });
        let (done_tx, done_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let freer = std::thread::spawn(move || {
            drop(bufs);
            done_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        });
        done_rx.recv().unwrap();
        // The freeing thread is still alive: a cache of its own would hold up to a cache's worth.
        assert_eq!(pool.slots().shared_len(), 1024);
        assert_eq!(pool.available(), 1024);
        go_tx.send(()).unwrap();
        freer.join().unwrap();
    }

    #[test]
    fn a_port_setup_makes_no_cache_on_the_opening_thread() {
        let pool = Pool::new("t", 1024).unwrap();
        assert!(pool.slots().cache_cap() > 0);
        let p = pool.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        // The opening thread fills a ring (allocates) without a cache, then only frees: what it
        // frees goes home at once, so the worker can allocate every slot.
        let opener = std::thread::spawn(move || {
            let mut ring = Vec::new();
            assert_eq!(without_new_caches(|| p.alloc_burst(&mut ring, 600)), 600);
            assert_eq!(p.slots().caches(), 0, "no cache made inside without_new_caches");
            drop(ring);
            // Outside the scope the thread makes caches again.
            let mut v = Vec::new();
            assert_eq!(p.alloc_burst(&mut v, 1), 1);
            assert_eq!(p.slots().caches(), 1);
            done_tx.send(v).unwrap();
            go_rx.recv().unwrap();
        });
        let v = done_rx.recv().unwrap();
        drop(v);
        assert!(pool.available() >= 1024 - pool.slots().cache_cap());
        go_tx.send(()).unwrap();
        opener.join().unwrap();
        assert_eq!(pool.available(), 1024);
    }

    #[test]
    fn buffers_freed_on_other_threads_go_home_and_exit_returns_the_caches() {
        let pool = Pool::new("t", 512).unwrap();
        let (tx, rx) = mpsc::channel::<Vec<Buffer>>();
        let p = pool.clone();
        let producer = std::thread::spawn(move || {
            for _ in 0..200 {
                let mut v = Vec::new();
                while p.alloc_burst(&mut v, 32) == 0 {
                    std::thread::yield_now();
                }
                tx.send(v).unwrap();
            }
        });
        let consumer = std::thread::spawn(move || {
            let mut n = 0;
            for v in rx {
                n += v.len();
                drop(v); // freed on a thread that never allocates from the pool: straight home
            }
            n
        });
        producer.join().unwrap();
        assert!(consumer.join().unwrap() >= 200);
        assert_eq!(pool.slots().shared_len(), 512, "both threads exited: nothing parked, nothing lost");
        assert_eq!(pool.available(), 512);
    }

    #[test]
    fn exhaustion_with_slots_parked_in_another_threads_cache() {
        let pool = Pool::new("t", 256).unwrap();
        let cap = pool.slots().cache_cap();
        let (go, wait) = mpsc::channel::<()>();
        let (done, parked) = mpsc::channel::<()>();
        let p = pool.clone();
        let other = std::thread::spawn(move || {
            drop(p.alloc().unwrap()); // refill half a cache, keep it
            done.send(()).unwrap();
            wait.recv().unwrap();
            drop(p.alloc().unwrap()); // its next operation on the pool
            done.send(()).unwrap();
            wait.recv().unwrap();
        });
        parked.recv().unwrap();
        // Here: the other thread's cache holds cap/2 free slots that this thread cannot take.
        let mut v = Vec::new();
        while let Some(b) = pool.alloc() {
            v.push(b);
        }
        assert_eq!(v.len(), 256 - cap / 2, "allocation fails while slots are parked elsewhere");
        assert_eq!(pool.available(), cap / 2, "parked slots are counted as available");
        // The failed refill marked the pool starving: the other thread's next operation on the
        // pool gives its whole cache back.
        go.send(()).unwrap();
        parked.recv().unwrap();
        assert_eq!(pool.slots().shared_len(), cap / 2);
        while let Some(b) = pool.alloc() {
            v.push(b);
        }
        assert_eq!(v.len(), 256, "every slot was allocatable after the give-back");
        go.send(()).unwrap();
        other.join().unwrap();
        drop(v);
        assert_eq!(pool.available(), 256);
    }

    /// A cache that retires empty (its thread exits) gives nothing back, so it must not clear
    /// the starving mark: the caches that do hold slots still owe them.
    #[test]
    fn an_empty_cache_retiring_leaves_the_starving_mark() {
        let pool = Pool::new("t", 256).unwrap();
        let half = pool.slots().cache_cap() / 2;
        let (p, e) = (pool.clone(), pool.clone());
        let (ready_tx, ready) = mpsc::channel::<()>();
        let (go_p, wait_p) = mpsc::channel::<()>();
        let parker = std::thread::spawn(move || {
            drop(p.alloc().unwrap()); // half a cache parked here
            ready_tx.send(()).unwrap();
            wait_p.recv().unwrap();
            drop(p.alloc().unwrap()); // its next operation on the pool
            ready_tx.send(()).unwrap();
            wait_p.recv().unwrap();
        });
        ready.recv().unwrap();
        // A thread whose cache ends up empty: everything it took is handed over.
        let (go_e, wait_e) = mpsc::channel::<()>();
        let (bufs_tx, bufs) = mpsc::channel::<Vec<Buffer>>();
        let emptier = std::thread::spawn(move || {
            let mut v = Vec::new();
            assert_eq!(e.alloc_burst(&mut v, half), half);
            bufs_tx.send(v).unwrap();
            wait_e.recv().unwrap();
        });
        let mut v = bufs.recv().unwrap();
        while let Some(b) = pool.alloc() {
            v.push(b); // runs the shared list dry: the pool is marked starving
        }
        assert_eq!(v.len(), 256 - half);
        go_e.send(()).unwrap();
        emptier.join().unwrap(); // its empty cache retires
        go_p.send(()).unwrap();
        ready.recv().unwrap();
        assert_eq!(pool.slots().shared_len(), half, "the parked cache was still asked to give back");
        go_p.send(()).unwrap();
        parker.join().unwrap();
        drop(v);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn dropping_the_pool_with_buffers_out_keeps_the_region_until_the_last_one() {
        let (pool, gone) = watched_pool(256);
        let mut mine = Vec::new();
        pool.alloc_burst(&mut mine, 40);
        let mut theirs = mine.split_off(20);
        // A thread with slots parked in its cache and buffers of its own.
        let (go, wait) = mpsc::channel::<()>();
        let (ready, parked_ready) = mpsc::channel::<()>();
        let p = pool.clone();
        let parked = std::thread::spawn(move || {
            drop(p.alloc().unwrap());
            let keep = p.alloc().unwrap();
            drop(p);
            ready.send(()).unwrap();
            wait.recv().unwrap();
            drop(keep);
            wait.recv().unwrap();
        });
        // Its handle is gone first, so that this thread's drop is the last one (closing the
        // pool and retiring this thread's cache now). Without the wait, a slow start of that
        // thread made its drop the last: this thread's cache then stayed (it retires at this
        // thread's next operation on the pool, which may come before that drop), keeping the
        // region.
        parked_ready.recv().unwrap();
        drop(pool);
        assert!(!gone.load(Ordering::SeqCst), "buffers are out");
        for b in mine.iter_mut().chain(theirs.iter_mut()) {
            b.append(4).unwrap().copy_from_slice(b"live"); // the memory is still mapped
        }
        // Freed on another thread after the pool is gone: straight to the shared list.
        on_thread(move || {
            for b in &theirs {
                assert_eq!(b.data(), b"live");
            }
            theirs.clear();
        });
        drop(mine);
        assert!(!gone.load(Ordering::SeqCst), "the other thread still holds a buffer and parked slots");
        go.send(()).unwrap(); // it frees its buffer (its cache of the closed pool retires)
        go.send(()).unwrap();
        parked.join().unwrap();
        assert!(gone.load(Ordering::SeqCst), "region freed once the last buffer and cache are gone");
    }

    #[test]
    fn a_parked_cache_of_a_dropped_pool_returns_at_thread_exit() {
        let (pool, gone) = watched_pool(256);
        let (go, wait) = mpsc::channel::<()>();
        let (ready, parked) = mpsc::channel::<()>();
        let p = pool.clone();
        let t = std::thread::spawn(move || {
            drop(p.alloc().unwrap());
            drop(p);
            ready.send(()).unwrap();
            wait.recv().unwrap();
        });
        parked.recv().unwrap();
        let b = pool.alloc().unwrap();
        drop(pool);
        drop(b);
        assert!(!gone.load(Ordering::SeqCst), "slots parked in a live thread's cache keep the region");
        go.send(()).unwrap();
        t.join().unwrap();
        assert!(gone.load(Ordering::SeqCst), "the thread's exit gave them back and freed the region");
    }

    #[test]
    fn pool_dropped_with_nothing_out_frees_at_once_and_refs_balance() {
        let (pool, gone) = watched_pool(1024);
        assert_eq!(pool.slots().refs(), 1, "one for the handles");
        let b = pool.alloc().unwrap();
        assert_eq!(pool.slots().refs(), 3, "+ this thread's cache + some slot out");
        let q = pool.clone();
        assert_eq!(pool.slots().refs(), 3, "clones share one reference");
        drop((b, q));
        assert_eq!(pool.slots().refs(), 3, "the freed slot sits in this thread's cache");
        drop(pool); // retires this thread's cache: everything is home
        assert!(gone.load(Ordering::SeqCst));
    }

    #[test]
    fn many_threads_many_pools_nothing_lost() {
        let pools: Vec<Pool> = (0..3).map(|i| Pool::new(&format!("p{i}"), 128 << i).unwrap()).collect();
        let (tx, rx) = mpsc::sync_channel::<Buffer>(64);
        let rx = Arc::new(Mutex::new(rx));
        let mut hs = Vec::new();
        for t in 0..3 {
            let (pools, tx) = (pools.clone(), tx.clone());
            hs.push(std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..20_000usize {
                    let p = &pools[(i + t) % 3];
                    if let Some(mut b) = p.alloc() {
                        b.append(1).unwrap()[0] = t as u8;
                        if i % 3 == 0 {
                            tx.send(b).unwrap();
                        } else {
                            held.push(b);
                        }
                    }
                    if held.len() > 50 {
                        held.drain(..25);
                    }
                }
            }));
        }
        drop(tx);
        for _ in 0..2 {
            let rx = Arc::clone(&rx);
            hs.push(std::thread::spawn(move || {
                while let Ok(b) = rx.lock().unwrap().recv() {
                    drop(b);
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        for (i, p) in pools.iter().enumerate() {
            assert_eq!(p.slots().shared_len(), 128 << i, "pool {i}");
            assert_eq!(p.available(), 128 << i);
        }
    }
}
