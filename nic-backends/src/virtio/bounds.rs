//! [`Bounds`]: the device-visible IOVA ranges a queue may post. Every descriptor is checked
//! against them before it enters a ring: the driver never hands the device an address it has not
//! mapped.

/// Device-visible ranges a queue may post: `[start, end)` IOVAs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bounds(Vec<(u64, u64)>);

impl Bounds {
    /// Adds the mapped range `[iova, iova + len)` (saturating at the top of the address space).
    pub(crate) fn add(&mut self, iova: u64, len: u64) {
        self.0.push((iova, iova.saturating_add(len)));
    }

    /// `[iova, iova + len)` lies inside one mapped range.
    pub(crate) fn check(&self, iova: u64, len: usize) -> bool {
        let Some(end) = iova.checked_add(len as u64) else { return false };
        self.0.iter().any(|&(s, e)| iova >= s && end <= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_check() {
        let mut b = Bounds::default();
        b.add(0x1000, 0x1000);
        b.add(0x10000, 0x100);
        assert!(b.check(0x1000, 0x1000));
        assert!(b.check(0x10080, 0x80));
        assert!(!b.check(0x1800, 0x1000), "crosses the end");
        assert!(!b.check(0x2000, 1), "between ranges");
        assert!(!b.check(0xfff, 2), "starts before");
        assert!(!b.check(u64::MAX - 1, 4), "wraps");
        assert!(!Bounds::default().check(0, 0));
    }
}
