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

/// Hands out non-overlapping, aligned IOVA ranges from `[start, end)`, upwards. Freed ranges are
/// not reused (a port maps its memory once at start).
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    next: u64,
    end: u64,
}

impl IovaAllocator {
    /// Ranges from `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        IovaAllocator { next: start, end }
    }

    /// `size` bytes aligned to `align` (a power of two); None when the space is exhausted or the
    /// arguments are not sensible (zero size, alignment not a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<Iova> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(Iova(start))
    }

    /// The first address never handed out (everything at or above it is unmapped).
    pub fn high_water(&self) -> u64 {
        self.next
    }
}

/// The default IOVA window of a port: 256 MiB up to 64 GiB (well inside a 39-bit vIOMMU, above
/// the low ranges a platform may reserve).
pub const DEFAULT_IOVA_START: u64 = 0x1000_0000;
/// End of the default window.
pub const DEFAULT_IOVA_END: u64 = 0x10_0000_0000;

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
}
