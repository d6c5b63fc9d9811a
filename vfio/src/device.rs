//! Container, group, device and DMA memory: the VFIO sequence of
//! `Documentation/driver-api/vfio.rst` ("VFIO Usage Example"), with operator-facing errors.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::iova::{parse_iommu_info, Iova, IovaAllocator, IovaRange, DEFAULT_IOVA_END, DEFAULT_IOVA_START};
use crate::pci::{self, Capability};
use crate::sys::{self, HugeMem, Mmio, HUGEPAGE};
use crate::sysfs::{describe_others, Sysfs};
use crate::VfioError;

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DEVICE_FLAGS_RESET: u32 = 1;
const VFIO_DEVICE_FLAGS_PCI: u32 = 2;
/// Region index of PCI configuration space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = 7;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;

/// How device addresses are translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuMode {
    /// The type1v2 IOMMU: DMA memory is mapped at IOVAs we choose; the IOMMU stops the device
    /// anywhere else.
    Type1,
    /// No IOMMU (`/dev/vfio/noiommu-N`, kernel taint): IOVA = physical address; the device can
    /// reach all memory. Needs CONFIG_VFIO_NOIOMMU and `enable_unsafe_noiommu_mode=1`.
    NoIommu,
}

/// A VFIO container with one group attached and its IOMMU set.
#[derive(Debug)]
pub struct Container {
    // Field order is drop order: the group is detached before the container closes.
    group: OwnedFd,
    fd: OwnedFd,
    mode: IommuMode,
    iova: Mutex<IovaAllocator>,
    /// Alignment of every DMA mapping: 2 MiB, or the IOMMU's smallest page if larger.
    dma_align: u64,
    bdf: String,
}

/// A PCI device opened through VFIO.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
    bdf: String,
    flags: u32,
    regions: Vec<sys::RegionInfo>,
    container: Arc<Container>,
}

/// Hugepage memory mapped for the device at [`DmaRegion::iova`]. Dropping it unmaps it from the
/// IOMMU, then frees it: the owner must make sure the device no longer uses it (reset the device
/// first).
#[derive(Debug)]
pub struct DmaRegion {
    iova: Iova,
    // Dropped after `Drop::drop` has unmapped the IOVA range.
    mem: HugeMem,
    container: Arc<Container>,
}

fn meminfo_value(meminfo: &str, key: &str) -> usize {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The hugepage error with the numbers the operator needs.
pub(crate) fn hugepage_error(bytes: usize, meminfo: &str, source: std::io::Error) -> VfioError {
    let pages = bytes.div_ceil(HUGEPAGE);
    let free = meminfo_value(meminfo, "HugePages_Free");
    let nr = meminfo_value(meminfo, "HugePages_Total");
    VfioError::NoHugepages { bytes, pages, free, nr, total: nr + pages.saturating_sub(free), source }
}

/// Physical address from a /proc/self/pagemap entry (bit 63 present, bits 0-54 the PFN); None
/// when the page is absent or the PFN is hidden (not CAP_SYS_ADMIN: PFN reads as 0).
pub fn pagemap_phys(entry: u64, vaddr: u64, page: u64) -> Option<u64> {
    let present = entry >> 63 & 1 == 1;
    let pfn = entry & ((1 << 55) - 1);
    if !present || pfn == 0 {
        return None;
    }
    // Checked: a PFN field that does not fit the address space must not wrap to an address
    // the device would then be given (no-IOMMU mode DMAs to it unchecked).
    pfn.checked_mul(page)?.checked_add(vaddr % page)
}

fn phys_of(vaddr: usize) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, (vaddr / 4096 * 8) as u64).ok()?;
    pagemap_phys(u64::from_le_bytes(b), vaddr as u64, 4096)
}

impl Container {
    /// Open device `bdf` through VFIO: checks the sysfs state first (errors that say what to do),
    /// then container → group → IOMMU → device. `allow_noiommu`: use `/dev/vfio/noiommu-N` when
    /// that is what the kernel offers.
    pub fn open_device(sys: &Sysfs, bdf: &str, allow_noiommu: bool) -> Result<Device, VfioError> {
        let bdf = crate::parse_bdf(bdf)?;
        let group = sys.check_vfio_ready(&bdf)?;
        let cpath = "/dev/vfio/vfio";
        let fd = sys::open_rw(cpath).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => VfioError::NoVfio { path: cpath.into() },
            _ => VfioError::io(format!("open {cpath}"), e),
        })?;
        let v = sys::ioctl_val(fd.as_fd(), sys::VFIO_GET_API_VERSION, 0)
            .map_err(|e| VfioError::io("VFIO_GET_API_VERSION", e))?;
        if v != VFIO_API_VERSION {
            return Err(VfioError::Unsupported(format!("VFIO API version {v}, expected {VFIO_API_VERSION}")));
        }
        let gpath = format!("/dev/vfio/{group}");
        let npath = format!("/dev/vfio/noiommu-{group}");
        let (gfd, mode) = match sys::open_rw(&gpath) {
            Ok(g) => (g, IommuMode::Type1),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && std::path::Path::new(&npath).exists() => {
                if !allow_noiommu {
                    return Err(VfioError::Unsupported(format!(
                        "{bdf}: only {npath} exists (no-IOMMU mode): the device could reach all memory; allow it with WGPMD_VFIO_NOIOMMU=1 or enable the IOMMU"
                    )));
                }
                let g = sys::open_rw(&npath).map_err(|e| VfioError::io(format!("open {npath}"), e))?;
                eprintln!(
                    "vfio:{bdf}: no-IOMMU mode ({npath}, allowed by WGPMD_VFIO_NOIOMMU=1): nothing confines this device's DMA; DMA addresses are physical addresses from /proc/self/pagemap"
                );
                (g, IommuMode::NoIommu)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(VfioError::NoVfio { path: gpath }),
            Err(e) => return Err(VfioError::io(format!("open {gpath}"), e)),
        };
        let st = sys::group_status(gfd.as_fd()).map_err(|e| VfioError::io("VFIO_GROUP_GET_STATUS", e))?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            let others: Vec<_> = sys.group_devices(&group).into_iter().filter(|(b, _)| *b != bdf).collect();
            return Err(VfioError::GroupNotViable { group, others: describe_others(&others) });
        }
        sys::group_set_container(gfd.as_fd(), fd.as_fd()).map_err(|e| VfioError::io("VFIO_GROUP_SET_CONTAINER", e))?;
        let ty = if mode == IommuMode::Type1 { VFIO_TYPE1V2_IOMMU } else { VFIO_NOIOMMU_IOMMU };
        let has = sys::ioctl_val(fd.as_fd(), sys::VFIO_CHECK_EXTENSION, ty).unwrap_or(0);
        if has <= 0 {
            return Err(VfioError::Unsupported(format!(
                "the kernel's VFIO lacks the {} IOMMU (modprobe vfio_iommu_type1)",
                if mode == IommuMode::Type1 { "type1v2" } else { "no-IOMMU" }
            )));
        }
        sys::ioctl_val(fd.as_fd(), sys::VFIO_SET_IOMMU, ty).map_err(|e| VfioError::io("VFIO_SET_IOMMU", e))?;
        let (alloc, dma_align) = match mode {
            IommuMode::Type1 => iova_window(&bdf, fd.as_fd())?,
            IommuMode::NoIommu => (IovaAllocator::new(DEFAULT_IOVA_START, DEFAULT_IOVA_END), HUGEPAGE as u64),
        };
        let container =
            Arc::new(Container { group: gfd, fd, mode, iova: Mutex::new(alloc), dma_align, bdf: bdf.clone() });
        let dfd = sys::group_get_device_fd(container.group.as_fd(), &bdf)
            .map_err(|e| VfioError::io(format!("{bdf}: VFIO_GROUP_GET_DEVICE_FD"), e))?;
        let info = sys::device_info(dfd.as_fd()).map_err(|e| VfioError::io("VFIO_DEVICE_GET_INFO", e))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= CONFIG_REGION {
            return Err(VfioError::Device { bdf, problem: "not a PCI device (VFIO reports no PCI regions)".into() });
        }
        let mut regions = Vec::new();
        for i in 0..info.num_regions.min(16) {
            regions.push(sys::region_info(dfd.as_fd(), i).unwrap_or_default());
        }
        Ok(Device { fd: dfd, bdf, flags: info.flags, regions, container })
    }

    /// The IOMMU mode.
    pub fn mode(&self) -> IommuMode {
        self.mode
    }

    /// The largest DMA region [`Container::alloc_dma`] can always provide: in no-IOMMU mode a
    /// region must be physically contiguous, which only one 2 MiB hugepage is guaranteed to be;
    /// with the IOMMU, no limit (None).
    pub fn max_dma_region(&self) -> Option<usize> {
        match self.mode {
            IommuMode::Type1 => None,
            IommuMode::NoIommu => Some(HUGEPAGE),
        }
    }

    /// The lowest IOVA never handed out (every IOVA at or above it is unmapped: the bad-IOVA
    /// test hook uses it).
    pub fn iova_high_water(&self) -> u64 {
        self.iova.lock().unwrap_or_else(|e| e.into_inner()).high_water()
    }

    /// An IOVA inside the usable ranges that nothing maps (1 GiB above everything handed out,
    /// with 64 KiB of room): for the bad-IOVA test hook. None when the ranges have no such room.
    pub fn unmapped_iova(&self) -> Option<u64> {
        let mut a = self.iova.lock().unwrap_or_else(|e| e.into_inner()).clone();
        a.alloc(1 << 30, 1 << 12)?;
        a.alloc(1 << 16, 1 << 12).map(|i| i.0)
    }

    /// The usable IOVA ranges the allocator hands out from (clipped to its floor).
    pub fn iova_ranges(&self) -> Vec<IovaRange> {
        self.iova.lock().unwrap_or_else(|e| e.into_inner()).ranges().to_vec()
    }

    /// `bytes` (rounded up to 2 MiB) of hugepage memory, mapped for the device.
    pub fn alloc_dma(self: &Arc<Self>, bytes: usize) -> Result<DmaRegion, VfioError> {
        let mem = HugeMem::new(bytes)
            .map_err(|e| hugepage_error(bytes, &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(), e))?;
        let iova = match self.mode {
            IommuMode::Type1 => {
                let iova = self
                    .iova
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .alloc(mem.size() as u64, self.dma_align)
                    .ok_or(VfioError::NoIova { bytes })?;
                sys::map_dma(self.fd.as_fd(), mem.base().as_ptr() as usize, iova.0, mem.size()).map_err(|e| {
                    VfioError::io(format!("{}: VFIO_IOMMU_MAP_DMA of {} bytes at {iova}", self.bdf, mem.size()), e)
                })?;
                iova
            }
            IommuMode::NoIommu => {
                // IOVA = physical address: the region must be physically contiguous.
                let base = mem.base().as_ptr() as usize;
                let p0 = phys_of(base).ok_or_else(|| {
                    VfioError::Unsupported(
                        "no-IOMMU mode: /proc/self/pagemap shows no physical address (run as root with CAP_SYS_ADMIN)"
                            .into(),
                    )
                })?;
                for off in (HUGEPAGE..mem.size() + HUGEPAGE).step_by(HUGEPAGE) {
                    // The last step only checks that the physical range does not wrap.
                    let want = p0.checked_add(off as u64);
                    if want.is_none() || (off < mem.size() && phys_of(base + off) != want) {
                        return Err(VfioError::Unsupported(format!(
                            "no-IOMMU mode: {} bytes are not physically contiguous; use at most {HUGEPAGE} bytes per region",
                            mem.size()
                        )));
                    }
                }
                eprintln!("vfio:{}: no-IOMMU DMA memory: {} bytes at physical address {p0:#x}", self.bdf, mem.size());
                Iova(p0)
            }
        };
        Ok(DmaRegion { iova, mem, container: self.clone() })
    }
}

/// The usable IOVA ranges and the mapping alignment, from VFIO_IOMMU_GET_INFO (its IOVA range
/// capability and `iova_pgsizes`): reserved ranges (the x86 MSI window, RMRRs) are holes the
/// allocator skips. When the kernel reports no ranges (older kernels), the default window
/// 256 MiB .. 64 GiB is used, and a line says so.
fn iova_window(bdf: &str, container: std::os::fd::BorrowedFd<'_>) -> Result<(IovaAllocator, u64), VfioError> {
    let bad = |problem: String| VfioError::Device { bdf: bdf.to_string(), problem };
    let mut len = 256;
    let info = loop {
        let buf =
            sys::iommu_info(container, len).map_err(|e| VfioError::io(format!("{bdf}: VFIO_IOMMU_GET_INFO"), e))?;
        let info = parse_iommu_info(&buf).map_err(bad)?;
        if !info.needs_more {
            break info;
        }
        // The kernel says how much it needs: ask once more with that (bounded), then give up.
        let want = info.argsz as usize;
        if want <= len || want > 1 << 20 {
            return Err(bad(format!("VFIO_IOMMU_GET_INFO asks for {want} bytes after {len}: not retrying")));
        }
        len = want;
    };
    let min_page = info.min_page().unwrap_or(4096);
    if min_page > HUGEPAGE as u64 {
        return Err(bad(format!(
            "the IOMMU's smallest page is {min_page:#x} bytes, larger than the 2 MiB hugepages DMA memory is made of"
        )));
    }
    let align = (HUGEPAGE as u64).max(min_page);
    let alloc = match info.ranges.filter(|r| !r.is_empty()) {
        Some(r) => {
            let a = IovaAllocator::with_ranges(&r, DEFAULT_IOVA_START);
            let list: Vec<String> = r.iter().map(|r| r.to_string()).collect();
            eprintln!(
                "vfio:{bdf}: usable IOVA ranges from the kernel: {}; IOMMU page sizes {:#x}; DMA memory at or above {DEFAULT_IOVA_START:#x}",
                list.join(", "),
                info.pgsizes.unwrap_or(0)
            );
            a
        }
        None => {
            eprintln!(
                "vfio:{bdf}: the kernel reports no usable IOVA ranges (no VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE): using the default window {DEFAULT_IOVA_START:#x}-{:#x}",
                DEFAULT_IOVA_END - 1
            );
            IovaAllocator::new(DEFAULT_IOVA_START, DEFAULT_IOVA_END)
        }
    };
    Ok((alloc, align))
}

impl DmaRegion {
    /// CPU address of the first byte (for volatile/raw access under the caller's contract).
    pub fn base(&self) -> NonNull<u8> {
        self.mem.base()
    }
    /// Size in bytes (a multiple of 2 MiB).
    pub fn size(&self) -> usize {
        self.mem.size()
    }
    /// Device address of the first byte.
    pub fn iova(&self) -> Iova {
        self.iova
    }
    /// Whether `[iova, iova + len)` lies inside this region.
    pub fn contains(&self, iova: u64, len: u64) -> bool {
        iova >= self.iova.0 && iova.checked_add(len).is_some_and(|e| e <= self.iova.0 + self.size() as u64)
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if self.container.mode == IommuMode::Type1 {
            if let Err(e) = sys::unmap_dma(self.container.fd.as_fd(), self.iova.0, self.mem.size()) {
                // The memory is freed anyway below; the kernel keeps it pinned for the device
                // until the container closes.
                eprintln!("vfio: VFIO_IOMMU_UNMAP_DMA at {} failed: {e}", self.iova);
            }
        }
    }
}

impl Device {
    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }
    /// The container (for DMA memory).
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    fn config_offset(&self) -> u64 {
        self.regions.get(CONFIG_REGION as usize).map_or(0, |r| r.offset)
    }

    /// Read configuration space at `off` into `buf`.
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        sys::pread_exact(self.fd.as_fd(), buf, self.config_offset() + off)
            .map_err(|e| VfioError::io(format!("{}: read config space at {off:#x}", self.bdf), e))
    }

    /// Write configuration space at `off`.
    pub fn config_write(&self, off: u64, buf: &[u8]) -> Result<(), VfioError> {
        sys::pwrite_all(self.fd.as_fd(), buf, self.config_offset() + off)
            .map_err(|e| VfioError::io(format!("{}: write config space at {off:#x}", self.bdf), e))
    }

    /// The first 256 bytes of configuration space.
    pub fn config_space(&self) -> Result<Vec<u8>, VfioError> {
        let mut c = vec![0u8; 256];
        self.config_read(0, &mut c)?;
        Ok(c)
    }

    /// Vendor and device id.
    pub fn ids(&self) -> Result<(u16, u16), VfioError> {
        let mut b = [0u8; 4];
        self.config_read(0, &mut b)?;
        Ok((u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]])))
    }

    /// The capability list.
    pub fn capabilities(&self) -> Result<Vec<Capability>, VfioError> {
        Ok(pci::capabilities(&self.config_space()?))
    }

    /// Enable memory decoding and bus mastering (the device may now DMA), INTx off (we poll).
    pub fn enable_bus_master(&self) -> Result<(), VfioError> {
        let mut b = [0u8; 2];
        self.config_read(pci::COMMAND as u64, &mut b)?;
        let cmd = u16::from_le_bytes(b) | pci::CMD_MEMORY | pci::CMD_BUS_MASTER | pci::CMD_INTX_DISABLE;
        self.config_write(pci::COMMAND as u64, &cmd.to_le_bytes())
    }

    /// Disable bus mastering (teardown).
    pub fn disable_bus_master(&self) -> Result<(), VfioError> {
        let mut b = [0u8; 2];
        self.config_read(pci::COMMAND as u64, &mut b)?;
        let cmd = u16::from_le_bytes(b) & !pci::CMD_BUS_MASTER;
        self.config_write(pci::COMMAND as u64, &cmd.to_le_bytes())
    }

    /// VFIO_DEVICE_RESET when the device supports it; Ok(false) when it does not.
    pub fn reset(&self) -> Result<bool, VfioError> {
        if self.flags & VFIO_DEVICE_FLAGS_RESET == 0 {
            return Ok(false);
        }
        sys::ioctl_val(self.fd.as_fd(), sys::VFIO_DEVICE_RESET, 0)
            .map_err(|e| VfioError::io(format!("{}: VFIO_DEVICE_RESET", self.bdf), e))?;
        Ok(true)
    }

    /// Size of BAR `bar` (0 if absent).
    pub fn bar_size(&self, bar: u8) -> u64 {
        self.regions.get(bar as usize).filter(|_| bar < 6).map_or(0, |r| r.size)
    }

    /// Map BAR `bar` (0..=5) for MMIO.
    pub fn map_bar(&self, bar: u8) -> Result<Mmio, VfioError> {
        let r = self.regions.get(bar as usize).filter(|_| bar < 6).copied().unwrap_or_default();
        if r.size == 0 {
            return Err(VfioError::Device { bdf: self.bdf.clone(), problem: format!("BAR{bar} is absent") });
        }
        if r.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::Device {
                bdf: self.bdf.clone(),
                problem: format!("BAR{bar} cannot be mmapped (an I/O-port BAR? only MMIO BARs are supported)"),
            });
        }
        Mmio::map(self.fd.as_fd(), r.offset, r.size as usize)
            .map_err(|e| VfioError::io(format!("{}: mmap BAR{bar}", self.bdf), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugepage_error_says_how_many_to_reserve() {
        let mi = "MemTotal: 1000 kB\nHugePages_Total:       2\nHugePages_Free:        1\nHugepagesize:    2048 kB\n";
        let e = hugepage_error(5 << 20, mi, std::io::Error::from_raw_os_error(libc::ENOMEM)).to_string();
        assert!(e.contains("reserve 3 more 2 MiB hugepages"), "{e}");
        assert!(e.contains("`echo 4 > /proc/sys/vm/nr_hugepages` (now 1 free of 2)"), "{e}");
        let e = hugepage_error(1, "", std::io::Error::from_raw_os_error(libc::ENOMEM)).to_string();
        assert!(e.contains("`echo 1 > /proc/sys/vm/nr_hugepages`"), "{e}");
    }

    #[test]
    fn pagemap_entries() {
        assert_eq!(pagemap_phys((1 << 63) | 0x1234, 0x7f00_0000_0abc, 4096), Some(0x0123_4abc));
        assert_eq!(pagemap_phys(0x1234, 0x1000, 4096), None, "not present");
        assert_eq!(pagemap_phys(1 << 63, 0x1000, 4096), None, "PFN hidden without CAP_SYS_ADMIN");
        assert_eq!(pagemap_phys((1 << 63) | (1 << 55) | 7, 0, 4096), Some(7 * 4096), "soft-dirty bit ignored");
        assert_eq!(pagemap_phys((1 << 63) | ((1 << 55) - 1), 0xfff, 4096), None, "PFN * page overflows: no address");
    }

    #[test]
    fn open_device_checks_sysfs_first() {
        let f = crate::sysfs::tests::FakeRoot::new("open");
        let e = Container::open_device(&f.sys(), "0000:00:02.0", false).unwrap_err().to_string();
        assert!(e.contains("no PCI device 0000:00:02.0"), "{e}");
        let e = Container::open_device(&f.sys(), "zz", false).unwrap_err().to_string();
        assert!(e.contains("not a PCI address"), "{e}");
    }
}
