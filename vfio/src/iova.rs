//! Device addresses: the typed [`Iova`] and the bump allocator that hands out IOVA ranges.

use std::fmt;

/// A device-visible (I/O virtual) address. Not a CPU address: never dereferenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A usable IOVA range `[start, end)` (end exclusive; the kernel reports it inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IovaRange {
    /// First usable address.
    pub start: u64,
    /// One past the last usable address.
    pub end: u64,
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end.wrapping_sub(1))
    }
}

/// Hands out non-overlapping, aligned IOVA ranges, upwards, from a list of usable ranges
/// (skipping the holes between them). Freed ranges are not reused (a port maps its memory once
/// at start); a request that does not fit in the rest of a range goes to the next range where it
/// fits (the rest is then never used), and one that fits nowhere changes nothing.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    ranges: Vec<IovaRange>,
    cur: usize,
    next: u64,
}

impl IovaAllocator {
    /// Ranges from `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Self::with_ranges(&[IovaRange { start, end }], 0)
    }

    /// Ranges from the usable `ranges` (any order), at or above `floor`.
    pub fn with_ranges(ranges: &[IovaRange], floor: u64) -> Self {
        let mut r: Vec<IovaRange> = ranges
            .iter()
            .map(|r| IovaRange { start: r.start.max(floor), end: r.end })
            .filter(|r| r.start < r.end)
            .collect();
        r.sort();
        let next = r.first().map_or(0, |r| r.start);
        IovaAllocator { ranges: r, cur: 0, next }
    }

    /// The usable ranges this allocator hands out from (clipped to its floor, sorted).
    pub fn ranges(&self) -> &[IovaRange] {
        &self.ranges
    }

    /// `size` bytes aligned to `align` (a power of two), inside one usable range; None when the
    /// space is exhausted or the arguments are not sensible (zero size, alignment not a power of
    /// two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<Iova> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        for (i, r) in self.ranges.iter().enumerate().skip(self.cur) {
            let from = self.next.max(r.start);
            let fit = from
                .checked_add(align - 1)
                .map(|s| s & !(align - 1))
                .and_then(|s| Some((s, s.checked_add(size)?)))
                .filter(|&(_, e)| e <= r.end);
            if let Some((s, e)) = fit {
                // Ranges passed over keep their rest unused: allocation only moves upwards.
                self.cur = i;
                self.next = e;
                return Some(Iova(s));
            }
        }
        None
    }

    /// The first address never handed out (everything at or above it is unmapped).
    pub fn high_water(&self) -> u64 {
        self.next
    }
}

/// The default IOVA window of a port: 256 MiB up to 64 GiB (well inside a 39-bit vIOMMU, above
/// the low ranges a platform may reserve). Used only when the kernel reports no usable ranges;
/// [`DEFAULT_IOVA_START`] is also the floor below which no IOVA is handed out.
pub const DEFAULT_IOVA_START: u64 = 0x1000_0000;
/// End of the default window.
pub const DEFAULT_IOVA_END: u64 = 0x10_0000_0000;

/// What `VFIO_IOMMU_GET_INFO` reported (`struct vfio_iommu_type1_info`, include/uapi/linux/vfio.h).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// The `argsz` the kernel wrote back: bytes the structure plus its capability chain need.
    pub argsz: u32,
    /// `iova_pgsizes` when `VFIO_IOMMU_INFO_PGSIZES` is set: a bitmap of supported page sizes.
    pub pgsizes: Option<u64>,
    /// The `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` ranges; None when there is no such capability.
    pub ranges: Option<Vec<IovaRange>>,
    /// The kernel has capabilities that did not fit in the buffer: ask again with `argsz` bytes.
    pub needs_more: bool,
}

impl IommuInfo {
    /// The smallest IOMMU page size (None when the kernel does not say).
    pub fn min_page(&self) -> Option<u64> {
        self.pgsizes.filter(|&p| p != 0).map(|p| 1 << p.trailing_zeros())
    }
}

const INFO_LEN: usize = 24;
const INFO_FLAG_PGSIZES: u32 = 1;
const INFO_FLAG_CAPS: u32 = 2;
const CAP_IOVA_RANGE: u16 = 1;
const MAX_CAPS: usize = 64;

fn rd32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}
fn rd64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// Parse what `VFIO_IOMMU_GET_INFO` wrote into `buf` (the fixed structure and, when it fit, the
/// capability chain after it, in native byte order). A chain that points outside the buffer,
/// backwards (a loop) or into the fixed part, or an IOVA range with start > end, is an error
/// naming the offset: the kernel's answer is not trusted to be well formed.
pub fn parse_iommu_info(buf: &[u8]) -> Result<IommuInfo, String> {
    let (Some(argsz), Some(flags), Some(pgsizes), Some(cap_offset)) =
        (rd32(buf, 0), rd32(buf, 4), rd64(buf, 8), rd32(buf, 16))
    else {
        return Err(format!("VFIO_IOMMU_GET_INFO: {} bytes, the structure has {INFO_LEN}", buf.len()));
    };
    let mut info = IommuInfo {
        argsz,
        pgsizes: (flags & INFO_FLAG_PGSIZES != 0).then_some(pgsizes),
        ranges: None,
        needs_more: false,
    };
    if flags & INFO_FLAG_CAPS == 0 {
        return Ok(info);
    }
    if argsz as usize > buf.len() || cap_offset == 0 {
        // The kernel leaves cap_offset 0 when the chain did not fit; argsz says how much it needs.
        info.needs_more = argsz as usize > buf.len();
        if !info.needs_more {
            return Err(format!("VFIO_IOMMU_GET_INFO: capabilities flagged, but no chain in {} bytes", buf.len()));
        }
        return Ok(info);
    }
    let mut off = cap_offset as usize;
    for _ in 0..MAX_CAPS {
        if off < INFO_LEN {
            return Err(format!("VFIO_IOMMU_GET_INFO: capability at offset {off} overlaps the fixed structure"));
        }
        let (Some(head), Some(next)) = (rd32(buf, off), rd32(buf, off + 4)) else {
            return Err(format!("VFIO_IOMMU_GET_INFO: capability header at offset {off} is truncated"));
        };
        let (id, version) = (head as u16, (head >> 16) as u16);
        // `struct vfio_info_cap_header { __u16 id; __u16 version; __u32 next; }` (native order).
        let (id, version) = if cfg!(target_endian = "little") { (id, version) } else { (version, id) };
        if id == CAP_IOVA_RANGE && version >= 1 {
            if info.ranges.is_some() {
                return Err(format!("VFIO_IOMMU_GET_INFO: a second IOVA range capability at offset {off}"));
            }
            let nr = rd32(buf, off + 8)
                .ok_or_else(|| format!("VFIO_IOMMU_GET_INFO: IOVA range capability at offset {off} is truncated"))?;
            let mut ranges = Vec::new();
            for i in 0..nr as usize {
                let e = off + 16 + 16 * i;
                let (Some(start), Some(last)) = (rd64(buf, e), rd64(buf, e + 8)) else {
                    return Err(format!(
                        "VFIO_IOMMU_GET_INFO: IOVA range capability at offset {off} says {nr} ranges, the buffer ends after {i}"
                    ));
                };
                if start > last {
                    return Err(format!(
                        "VFIO_IOMMU_GET_INFO: IOVA range {i} starts at {start:#x} after its end {last:#x}"
                    ));
                }
                ranges.push(IovaRange { start, end: last.saturating_add(1) });
            }
            info.ranges = Some(ranges);
        }
        if next == 0 {
            return Ok(info);
        }
        if (next as usize) <= off {
            return Err(format!("VFIO_IOMMU_GET_INFO: capability at offset {off} points back to offset {next}"));
        }
        off = next as usize;
    }
    Err(format!("VFIO_IOMMU_GET_INFO: more than {MAX_CAPS} capabilities"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_disjoint_and_bounded() {
        let mut a = IovaAllocator::new(0x1000, 0x10_0000);
        let x = a.alloc(0x10, 0x1000).unwrap();
        let y = a.alloc(0x3000, 0x4000).unwrap();
        assert_eq!(x, Iova(0x1000));
        assert_eq!(y, Iova(0x4000));
        assert_eq!(a.high_water(), 0x7000);
        assert_eq!(a.alloc(0x10_0000, 1), None, "does not fit");
        assert_eq!(a.alloc(0, 1), None);
        assert_eq!(a.alloc(1, 3), None);
        let z = a.alloc(0x9000, 1).unwrap();
        assert_eq!(z, Iova(0x7000));
        assert_eq!(format!("{z}"), "0x7000");
    }

    #[test]
    fn overflow_is_none_not_a_wrap() {
        let mut a = IovaAllocator::new(u64::MAX - 10, u64::MAX);
        assert_eq!(a.alloc(4, 1 << 20), None);
        assert_eq!(a.alloc(20, 1), None);
        assert_eq!(a.alloc(5, 1), Some(Iova(u64::MAX - 10)));
    }

    fn r(start: u64, end: u64) -> IovaRange {
        IovaRange { start, end }
    }

    #[test]
    fn allocator_skips_holes_and_respects_the_floor() {
        // Like an x86 host: the MSI window 0xfee00000-0xfeefffff is a hole.
        let mut a = IovaAllocator::with_ranges(&[r(0xfef0_0000, 0x80_0000_0000), r(0, 0xfee0_0000)], 0x1000_0000);
        assert_eq!(a.ranges(), &[r(0x1000_0000, 0xfee0_0000), r(0xfef0_0000, 0x80_0000_0000)]);
        const M2: u64 = 2 << 20;
        assert_eq!(a.alloc(M2, M2), Some(Iova(0x1000_0000)), "from the floor, not from 0");
        // Fill up to just below the hole: 0xfee00000 - 0x10200000 bytes remain.
        let rest = 0xfee0_0000 - 0x1020_0000;
        assert_eq!(a.alloc(rest - M2, M2), Some(Iova(0x1020_0000)));
        // 4 MiB does not fit in the 2 MiB left below the hole: it goes above the hole.
        assert_eq!(a.alloc(2 * M2, M2), Some(Iova(0xff00_0000)), "0xfef00000 aligned up to 2 MiB");
        // Nothing ever lands in the hole.
        assert!(a.high_water() >= 0xfef0_0000);
        assert_eq!(a.alloc(0x80_0000_0000, M2), None);
    }

    #[test]
    fn allocator_alignment_inside_a_range_and_empty_lists() {
        let mut a = IovaAllocator::with_ranges(&[r(0x1000, 0x3000), r(0x5000, 0x9000)], 0);
        assert_eq!(a.alloc(0x1000, 0x4000), Some(Iova(0x8000)), "0x4000 is in the hole, 0x8000 fits");
        assert_eq!(a.alloc(1, 1), None, "the first range is behind us");
        let mut e = IovaAllocator::with_ranges(&[r(0, 0x1000)], 0x2000);
        assert!(e.ranges().is_empty(), "all below the floor");
        assert_eq!(e.alloc(1, 1), None);
        assert_eq!(IovaAllocator::with_ranges(&[], 0).alloc(1, 1), None);
    }

    /// A GET_INFO answer: flags, pgsizes, cap_offset, then caps as (id, version, body) with
    /// `next` filled in (or taken from `next_override`).
    fn info(
        flags: u32,
        argsz: Option<u32>,
        caps: &[(u16, u16, Vec<u8>)],
        next_override: Option<(usize, u32)>,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..16].copy_from_slice(&0x4020_1000u64.to_ne_bytes());
        if !caps.is_empty() {
            b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        }
        for (i, (id, ver, body)) in caps.iter().enumerate() {
            let at = b.len();
            let next = if i + 1 < caps.len() { (at + 8 + body.len()) as u32 } else { 0 };
            let next = match next_override {
                Some((j, n)) if j == i => n,
                _ => next,
            };
            b.extend(id.to_ne_bytes());
            b.extend(ver.to_ne_bytes());
            b.extend(next.to_ne_bytes());
            b.extend(body);
        }
        let len = argsz.unwrap_or(b.len() as u32);
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn ranges_body(nr: u32, rs: &[(u64, u64)]) -> Vec<u8> {
        let mut v = nr.to_ne_bytes().to_vec();
        v.extend(0u32.to_ne_bytes());
        for &(s, e) in rs {
            v.extend(s.to_ne_bytes());
            v.extend(e.to_ne_bytes());
        }
        v
    }

    #[test]
    fn iova_ranges_from_a_chain_of_several_caps() {
        let mig = vec![0u8; 24]; // VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
        let avail = vec![7u8, 0, 0, 0, 0, 0, 0, 0]; // VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        let ranges = ranges_body(2, &[(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]);
        let b = info(3, None, &[(2, 1, mig), (1, 1, ranges), (3, 1, avail)], None);
        let i = parse_iommu_info(&b).unwrap();
        assert!(!i.needs_more);
        assert_eq!(i.pgsizes, Some(0x4020_1000));
        assert_eq!(i.min_page(), Some(0x1000));
        assert_eq!(i.ranges, Some(vec![r(0, 0xfee0_0000), r(0xfef0_0000, 0x80_0000_0000)]));
        assert_eq!(format!("{}", i.ranges.unwrap()[1]), "0xfef00000-0x7fffffffff");
        // No capabilities at all.
        let i = parse_iommu_info(&info(1, None, &[], None)).unwrap();
        assert_eq!((i.ranges, i.needs_more), (None, false));
        // A chain without the IOVA range capability.
        let i = parse_iommu_info(&info(3, None, &[(2, 1, vec![0; 24])], None)).unwrap();
        assert_eq!(i.ranges, None);
        // An end of u64::MAX (inclusive) does not wrap.
        let i = parse_iommu_info(&info(3, None, &[(1, 1, ranges_body(1, &[(0x1000, u64::MAX)]))], None)).unwrap();
        assert_eq!(i.ranges, Some(vec![r(0x1000, u64::MAX)]));
    }

    #[test]
    fn buffer_too_small_asks_for_a_retry() {
        // The kernel flags CAPS, writes the size it needs in argsz and leaves cap_offset 0.
        let mut b = info(3, Some(120), &[], None);
        b.truncate(24);
        let i = parse_iommu_info(&b).unwrap();
        assert!(i.needs_more);
        assert_eq!(i.argsz, 120);
        assert_eq!(i.ranges, None);
        // CAPS flagged with no chain and no larger argsz: malformed.
        assert!(parse_iommu_info(&info(3, None, &[], None)).is_err());
    }

    #[test]
    fn malformed_chains_are_errors_not_panics() {
        assert!(parse_iommu_info(&[0u8; 10]).unwrap_err().contains("10 bytes"));
        let good = info(3, None, &[(1, 1, ranges_body(2, &[(0, 0xfff), (0x2000, 0x2fff)]))], None);
        // Cut at every length (argsz = what is left): an error, never a panic or a short range list.
        for n in 0..good.len() {
            let mut b = good[..n].to_vec();
            if n >= 4 {
                b[0..4].copy_from_slice(&(n as u32).to_ne_bytes());
            }
            assert!(parse_iommu_info(&b).is_err(), "cut at {n}: {:?}", parse_iommu_info(&b));
        }
        // nr_iovas larger than what follows.
        let e = parse_iommu_info(&info(3, None, &[(1, 1, ranges_body(5, &[(0, 0xfff)]))], None)).unwrap_err();
        assert!(e.contains("says 5 ranges"), "{e}");
        let e = parse_iommu_info(&info(3, None, &[(1, 1, ranges_body(u32::MAX, &[]))], None)).unwrap_err();
        assert!(e.contains("the buffer ends after 0"), "{e}");
        // A loop (next points back to itself) and a pointer into the fixed structure.
        let e = parse_iommu_info(&info(3, None, &[(2, 1, vec![0; 8])], Some((0, 24)))).unwrap_err();
        assert!(e.contains("points back"), "{e}");
        let mut b = info(3, None, &[(2, 1, vec![0; 8])], None);
        b[16..20].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_iommu_info(&b).unwrap_err().contains("overlaps"));
        // next beyond the buffer.
        let e = parse_iommu_info(&info(3, None, &[(2, 1, vec![0; 8])], Some((0, 4000)))).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // start > end, and two range capabilities.
        let e = parse_iommu_info(&info(3, None, &[(1, 1, ranges_body(1, &[(0x2000, 0x1000)]))], None)).unwrap_err();
        assert!(e.contains("after its end"), "{e}");
        let two = ranges_body(1, &[(0, 0xfff)]);
        let e = parse_iommu_info(&info(3, None, &[(1, 1, two.clone()), (1, 1, two)], None)).unwrap_err();
        assert!(e.contains("second IOVA range"), "{e}");
    }
}
