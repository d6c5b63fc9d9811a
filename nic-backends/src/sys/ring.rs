//! Memory shared with a device: virtqueue rings, and the wrapper that lets a VFIO DMA region back
//! a [`Pool`](crate::Pool).
//!
//! Ring memory is written by the device at any time, so no Rust reference (`&`, `&mut`, slice)
//! to it ever exists: every access is a single volatile load or store of an aligned little-endian
//! integer through a raw pointer, bounds-checked against the region. Ordering with the device is
//! the caller's job (fences in `virtio::virtq`, as the virtio spec prescribes).

use std::ptr::NonNull;
use std::sync::Arc;

use crate::buffer::Region;

/// Something that owns device-shared memory and keeps it mapped while the value lives.
///
/// # Safety
/// `base()` points to `size()` bytes, readable and writable, mapped for as long as the value
/// lives; `base()` is 8-byte aligned; the bytes are only accessed by volatile/raw-pointer
/// operations (never through Rust references).
pub(crate) unsafe trait SharedMem: Send + Sync + 'static {
    fn base(&self) -> NonNull<u8>;
    fn size(&self) -> usize;
    fn iova(&self) -> u64;
}

// SAFETY: a VFIO DmaRegion is a live hugepage mapping owned by the value, 2 MiB aligned; the
// crate only touches ring regions through `RingMem` (volatile).
unsafe impl SharedMem for vfio::DmaRegion {
    fn base(&self) -> NonNull<u8> {
        vfio::DmaRegion::base(self)
    }
    fn size(&self) -> usize {
        vfio::DmaRegion::size(self)
    }
    fn iova(&self) -> u64 {
        vfio::DmaRegion::iova(self).0
    }
}

// SAFETY: an anonymous mapping owned by the value, page aligned (tests use it as ring memory for
// the simulated device; IOVA = virtual address).
unsafe impl SharedMem for crate::sys::slots::MmapRegion {
    fn base(&self) -> NonNull<u8> {
        Region::base(self)
    }
    fn size(&self) -> usize {
        Region::size(self)
    }
    fn iova(&self) -> u64 {
        Region::iova_base(self)
    }
}

/// A window `[off, off + len)` of shared memory, accessed only with volatile integer loads and
/// stores. Out-of-range or misaligned accesses read as zero and write nothing (callers compute
/// offsets from indices masked by the ring size, so that does not happen; it is checked anyway).
#[derive(Clone)]
pub(crate) struct RingMem {
    /// Keeps the mapping alive.
    _owner: Arc<dyn SharedMem>,
    base: NonNull<u8>,
    len: usize,
    iova: u64,
}

// SAFETY: only the address is shared; all access is volatile through `&self`/`&mut self`
// methods, and the owner keeps the mapping alive (`Arc`).
unsafe impl Send for RingMem {}
// SAFETY: as above.
unsafe impl Sync for RingMem {}

impl RingMem {
    /// `[off, off + len)` of `owner`; None if it does not fit or is not 64-byte aligned.
    pub(crate) fn new(owner: Arc<dyn SharedMem>, off: usize, len: usize) -> Option<RingMem> {
        let end = off.checked_add(len)?;
        if end > owner.size() || !off.is_multiple_of(64) {
            return None;
        }
        let base = NonNull::new(owner.base().as_ptr().wrapping_add(off))?;
        let iova = owner.iova().checked_add(off as u64)?;
        Some(RingMem { _owner: owner, base, len, iova })
    }

    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    fn ok(&self, off: usize, width: usize) -> bool {
        off.is_multiple_of(width) && off.checked_add(width).is_some_and(|e| e <= self.len)
    }

    pub(crate) fn read_u16(&self, off: usize) -> u16 {
        if !self.ok(off, 2) {
            return 0;
        }
        // The window base is 8-aligned: the owner's base is by SharedMem's contract, `new` adds a multiple of 64.
        // SAFETY: in bounds and 2-aligned (checked against that base); the memory is mapped while
        // `owner` lives; a volatile load forms no reference.
        u16::from_le(unsafe { self.base.as_ptr().add(off).cast::<u16>().read_volatile() })
    }
    pub(crate) fn read_u32(&self, off: usize) -> u32 {
        if !self.ok(off, 4) {
            return 0;
        }
        // SAFETY: as in read_u16.
        u32::from_le(unsafe { self.base.as_ptr().add(off).cast::<u32>().read_volatile() })
    }
    #[cfg_attr(not(test), allow(dead_code))] // the simulated device reads descriptors
    pub(crate) fn read_u64(&self, off: usize) -> u64 {
        if !self.ok(off, 8) {
            return 0;
        }
        // SAFETY: as in read_u16.
        u64::from_le(unsafe { self.base.as_ptr().add(off).cast::<u64>().read_volatile() })
    }
    pub(crate) fn write_u8(&self, off: usize, v: u8) {
        if !self.ok(off, 1) {
            return;
        }
        // SAFETY: in bounds (checked); a volatile store forms no reference.
        unsafe { self.base.as_ptr().add(off).write_volatile(v) }
    }
    pub(crate) fn read_u8(&self, off: usize) -> u8 {
        if !self.ok(off, 1) {
            return 0;
        }
        // SAFETY: in bounds (checked).
        unsafe { self.base.as_ptr().add(off).read_volatile() }
    }
    pub(crate) fn write_u16(&self, off: usize, v: u16) {
        if !self.ok(off, 2) {
            return;
        }
        // SAFETY: in bounds and aligned (checked).
        unsafe { self.base.as_ptr().add(off).cast::<u16>().write_volatile(v.to_le()) }
    }
    pub(crate) fn write_u32(&self, off: usize, v: u32) {
        if !self.ok(off, 4) {
            return;
        }
        // SAFETY: in bounds and aligned (checked).
        unsafe { self.base.as_ptr().add(off).cast::<u32>().write_volatile(v.to_le()) }
    }
    pub(crate) fn write_u64(&self, off: usize, v: u64) {
        if !self.ok(off, 8) {
            return;
        }
        // SAFETY: in bounds and aligned (checked).
        unsafe { self.base.as_ptr().add(off).cast::<u64>().write_volatile(v.to_le()) }
    }
    /// Zero the window, 8 bytes at a time (volatile).
    pub(crate) fn zero(&self) {
        for off in (0..self.len & !7).step_by(8) {
            self.write_u64(off, 0);
        }
    }
}

/// A VFIO DMA region that backs a pool, with a guard that runs before the region is unmapped
/// (the driver resets the device there, so the device never writes memory being unmapped).
pub(crate) struct DmaPoolRegion {
    pub(crate) before_unmap: Option<Box<dyn FnOnce() + Send + Sync>>,
    pub(crate) region: vfio::DmaRegion,
}

impl Drop for DmaPoolRegion {
    fn drop(&mut self) {
        if let Some(f) = self.before_unmap.take() {
            f();
        }
        // `region` drops after this: VFIO_IOMMU_UNMAP_DMA, then munmap.
    }
}

// The virtio driver lends slots to the device only while it holds their `Buffer` in a ring and
// does not read them.
// SAFETY: a live, 2 MiB-aligned hugepage mapping of `size()` bytes owned by this value; outside
// the lending window above only the pool's buffers touch the bytes.
unsafe impl Region for DmaPoolRegion {
    fn base(&self) -> NonNull<u8> {
        self.region.base()
    }
    fn size(&self) -> usize {
        self.region.size()
    }
    fn iova_base(&self) -> u64 {
        self.region.iova().0
    }
}

/// Test support: the simulated device writes `bytes` at device address `iova` of a pool region
/// `(base, size, iova_base)` (IOVA translated like an IOMMU would, bounds-checked). Returns false
/// when the range is outside the region.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn sim_dma_write(region: (usize, usize, u64), iova: u64, bytes: &[u8]) -> bool {
    let (base, size, iova_base) = region;
    let Some(off) = iova.checked_sub(iova_base) else { return false };
    if off.checked_add(bytes.len() as u64).is_none_or(|e| e > size as u64) {
        return false;
    }
    for (i, b) in bytes.iter().enumerate() {
        // The test plays the device, which owns the slot while its Buffer is in the ring.
        // SAFETY: `[off, off + len)` is inside the pool's live mapping (checked above); nobody
        // holds a reference to the slot (above); a volatile store forms no reference.
        unsafe { ((base + off as usize + i) as *mut u8).write_volatile(*b) }
    }
    true
}

/// Test support: the simulated device reads `len` bytes at device address `iova` of a pool
/// region; None when outside it.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn sim_dma_read(region: (usize, usize, u64), iova: u64, len: usize) -> Option<Vec<u8>> {
    let (base, size, iova_base) = region;
    let off = iova.checked_sub(iova_base)?;
    if off.checked_add(len as u64)? > size as u64 {
        return None;
    }
    // SAFETY: inside the live mapping (checked); the driver does not write a slot it has posted.
    Some((0..len).map(|i| unsafe { ((base + off as usize + i) as *const u8).read_volatile() }).collect())
}
