//! Every `unsafe` block of the crate: the VFIO ioctls, `mmap` of hugepage memory and of device
//! regions (BARs), `pread`/`pwrite` on the device fd, and volatile MMIO access. Each block has a
//! `// SAFETY:` comment; every function exported from here is safe to call with any argument.
//!
//! ioctl numbers and structures: `include/uapi/linux/vfio.h` (`VFIO_TYPE` ';' = 0x3b,
//! `VFIO_BASE` 100; all are `_IO(VFIO_TYPE, VFIO_BASE + n)`, the structure size is in `argsz`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

pub(crate) const VFIO_GET_API_VERSION: u64 = 0x3b64;
pub(crate) const VFIO_CHECK_EXTENSION: u64 = 0x3b65;
pub(crate) const VFIO_SET_IOMMU: u64 = 0x3b66;
pub(crate) const VFIO_GROUP_GET_STATUS: u64 = 0x3b67;
pub(crate) const VFIO_GROUP_SET_CONTAINER: u64 = 0x3b68;
pub(crate) const VFIO_GROUP_GET_DEVICE_FD: u64 = 0x3b6a;
pub(crate) const VFIO_DEVICE_GET_INFO: u64 = 0x3b6b;
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: u64 = 0x3b6c;
pub(crate) const VFIO_DEVICE_RESET: u64 = 0x3b6f;
pub(crate) const VFIO_IOMMU_GET_INFO: u64 = 0x3b70;
pub(crate) const VFIO_IOMMU_MAP_DMA: u64 = 0x3b71;
pub(crate) const VFIO_IOMMU_UNMAP_DMA: u64 = 0x3b72;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct GroupStatus {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_info` (the fields up to `num_irqs`; `argsz` says so).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `open(path, O_RDWR | O_CLOEXEC)`.
pub(crate) fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call; the result is checked.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ioctl whose argument is a plain integer (or none).
pub(crate) fn ioctl_val(fd: BorrowedFd<'_>, req: u64, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the requests used with this function (GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU,
    // DEVICE_RESET) take an integer argument or none; no memory is passed to the kernel.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg) })
}

/// VFIO_GROUP_GET_STATUS.
pub(crate) fn group_status(group: BorrowedFd<'_>) -> io::Result<GroupStatus> {
    let mut s = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
    // SAFETY: `s` is a live, writable `struct vfio_group_status` of the size given in argsz.
    cvt(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS as libc::Ioctl, &mut s as *mut GroupStatus) })?;
    Ok(s)
}

/// VFIO_GROUP_SET_CONTAINER.
pub(crate) fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
    let fd: libc::c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd) from the pointer, which is live.
    cvt(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER as libc::Ioctl, &fd as *const libc::c_int) })?;
    Ok(())
}

/// VFIO_GROUP_GET_DEVICE_FD.
pub(crate) fn group_get_device_fd(group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads a NUL-terminated string from `c`, which lives across the call.
    let fd = cvt(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD as libc::Ioctl, c.as_ptr()) })?;
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// VFIO_DEVICE_GET_INFO.
pub(crate) fn device_info(dev: BorrowedFd<'_>) -> io::Result<DeviceInfo> {
    let mut i = DeviceInfo { argsz: std::mem::size_of::<DeviceInfo>() as u32, ..Default::default() };
    // SAFETY: `i` is a writable structure of the size given in argsz; the kernel writes at most argsz.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_GET_INFO as libc::Ioctl, &mut i as *mut DeviceInfo) })?;
    Ok(i)
}

/// VFIO_DEVICE_GET_REGION_INFO for region `index`.
pub(crate) fn region_info(dev: BorrowedFd<'_>, index: u32) -> io::Result<RegionInfo> {
    let mut r = RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index, ..Default::default() };
    // SAFETY: as above, `r` is writable and `argsz` bytes long.
    cvt(unsafe {
        libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO as libc::Ioctl, &mut r as *mut RegionInfo)
    })?;
    Ok(r)
}

/// VFIO_IOMMU_MAP_DMA of `size` bytes at `vaddr` to `iova`, read and write.
pub(crate) fn map_dma(container: BorrowedFd<'_>, vaddr: usize, iova: u64, size: usize) -> io::Result<()> {
    let m = DmaMap {
        argsz: std::mem::size_of::<DmaMap>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: vaddr as u64,
        iova,
        size: size as u64,
    };
    // SAFETY: the kernel reads the structure; the memory it describes is pinned by the kernel
    // (not accessed by this call through Rust), and it is our own mapping (see `HugeMem`).
    cvt(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA as libc::Ioctl, &m as *const DmaMap) })?;
    Ok(())
}

/// VFIO_IOMMU_UNMAP_DMA.
pub(crate) fn unmap_dma(container: BorrowedFd<'_>, iova: u64, size: usize) -> io::Result<()> {
    let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size: size as u64 };
    // SAFETY: the kernel reads and writes back (size unmapped) the live structure.
    cvt(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA as libc::Ioctl, &mut u as *mut DmaUnmap) })?;
    Ok(())
}

/// VFIO_IOMMU_GET_INFO into a buffer of `len` bytes (`struct vfio_iommu_type1_info` followed by
/// room for its capability chain): returns the bytes the kernel filled in (all `len` of them;
/// unused space stays zero). The caller parses them and retries with a larger `len` when the
/// `argsz` the kernel wrote back says the chain did not fit.
pub(crate) fn iommu_info(container: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    // At least the fixed part (24 bytes); u64 words so the structure is 8-aligned.
    let words = len.max(24).div_ceil(8);
    let mut buf = vec![0u64; words];
    let bytes = words * 8;
    let argsz = u32::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut first = [0u8; 8];
    first[..4].copy_from_slice(&argsz.to_ne_bytes());
    buf[0] = u64::from_ne_bytes(first);
    // The kernel reads `argsz` from the first field and writes the structure and, when they fit,
    // the capabilities after it.
    // SAFETY: `buf` is a live, writable, 8-aligned allocation of `argsz` bytes; the kernel writes at most that.
    cvt(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_GET_INFO as libc::Ioctl, buf.as_mut_ptr()) })?;
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// `pread` exactly `buf.len()` bytes at `offset`.
pub(crate) fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<()> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes owned by the caller.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from the VFIO device"));
    }
    Ok(())
}

/// `pwrite` exactly `buf.len()` bytes at `offset`.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    // SAFETY: `buf` is a valid readable slice.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset as libc::off_t) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to the VFIO device"));
    }
    Ok(())
}

/// Anonymous shared memory on 2 MiB hugepages (`MAP_HUGETLB`, populated), unmapped on drop.
/// The bytes are never referenced by Rust code here: users get the address and do volatile or
/// raw-pointer access under their own contracts.
#[derive(Debug)]
pub(crate) struct HugeMem {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: plain process memory owned by this value; it hands out only its address.
unsafe impl Send for HugeMem {}
// SAFETY: as above; `&HugeMem` exposes only the address and size.
unsafe impl Sync for HugeMem {}

/// Size of a hugepage.
pub const HUGEPAGE: usize = 2 << 20;

impl HugeMem {
    /// `size` bytes rounded up to whole 2 MiB pages, zeroed, locked in by MAP_POPULATE.
    pub(crate) fn new(size: usize) -> io::Result<HugeMem> {
        let size =
            size.max(1).checked_next_multiple_of(HUGEPAGE).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address; checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(HugeMem { base, size })
    }
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

impl Drop for HugeMem {
    fn drop(&mut self) {
        // The owner (DmaRegion) unmaps it from the IOMMU first in type1 mode; in no-IOMMU mode
        // the driver resets the device before the region drops (nic-backends: `DmaPoolRegion`,
        // `NetDev`'s field order).
        // SAFETY: exactly the mapping made in `new`; no reference into it exists (see the type's comment).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.size);
        }
    }
}

/// A device region (BAR) mapped with `mmap` on the device fd: MMIO registers, accessed only
/// with volatile reads and writes, bounds-checked.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: MMIO registers have no thread affinity; all access is volatile through `&self`
// methods, each one a single aligned register access the device serialises.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Map `size` bytes at `offset` of the device fd.
    pub(crate) fn map(dev: BorrowedFd<'_>, offset: u64, size: usize) -> io::Result<Mmio> {
        if size == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new shared mapping of the device fd at a kernel-chosen address; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dev.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mmio { base, size })
    }

    /// Size of the mapping.
    pub fn size(&self) -> usize {
        self.size
    }

    fn ok(&self, off: usize, width: usize) -> bool {
        off.is_multiple_of(width) && off.checked_add(width).is_some_and(|end| end <= self.size)
    }

    /// Read an 8-bit register; all ones when `off` is outside the BAR (like a PCI master abort).
    pub fn read8(&self, off: usize) -> u8 {
        if !self.ok(off, 1) {
            return u8::MAX;
        }
        // SAFETY: `off` is inside the mapping (checked), so the pointer is valid for a 1-byte
        // volatile read of device memory; no reference is formed.
        unsafe { self.base.as_ptr().add(off).read_volatile() }
    }
    /// Read an aligned 16-bit little-endian register (all ones outside the BAR or misaligned).
    pub fn read16(&self, off: usize) -> u16 {
        if !self.ok(off, 2) {
            return u16::MAX;
        }
        // SAFETY: in bounds and 2-aligned (the mapping is page aligned), checked above.
        u16::from_le(unsafe { self.base.as_ptr().add(off).cast::<u16>().read_volatile() })
    }
    /// Read an aligned 32-bit register.
    pub fn read32(&self, off: usize) -> u32 {
        if !self.ok(off, 4) {
            return u32::MAX;
        }
        // SAFETY: in bounds and 4-aligned, checked above.
        u32::from_le(unsafe { self.base.as_ptr().add(off).cast::<u32>().read_volatile() })
    }
    /// Write an 8-bit register; ignored (returns false) outside the BAR.
    pub fn write8(&self, off: usize, v: u8) -> bool {
        if !self.ok(off, 1) {
            return false;
        }
        // SAFETY: in bounds, checked above; a volatile store to device memory.
        unsafe { self.base.as_ptr().add(off).write_volatile(v) };
        true
    }
    /// Write an aligned 16-bit register.
    pub fn write16(&self, off: usize, v: u16) -> bool {
        if !self.ok(off, 2) {
            return false;
        }
        // SAFETY: in bounds and aligned, checked above.
        unsafe { self.base.as_ptr().add(off).cast::<u16>().write_volatile(v.to_le()) };
        true
    }
    /// Write an aligned 32-bit register.
    pub fn write32(&self, off: usize, v: u32) -> bool {
        if !self.ok(off, 4) {
            return false;
        }
        // SAFETY: in bounds and aligned, checked above.
        unsafe { self.base.as_ptr().add(off).cast::<u32>().write_volatile(v.to_le()) };
        true
    }
    /// Write a 64-bit value as two 32-bit writes, low half first (virtio 1.x §4.1.3.1: the driver
    /// accesses 64-bit fields of the common configuration as two 32-bit halves).
    pub fn write64_split(&self, off: usize, v: u64) -> bool {
        self.write32(off, v as u32) && self.write32(off + 4, (v >> 32) as u32)
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; no reference into it exists.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.size);
        }
    }
}
