//! Fault injection for the guest tests (docs/TESTING.md, "Guest tests (VFIO)"), compiled only
//! with the crate feature `test-hooks` (and into this crate's own unit tests). A build without the
//! feature has none of it: scripts/test.sh checks that the plain `wgpmd` binary does not contain
//! [`TEST_BAD_IOVA_ENV`].

use super::virtq::Virtq;

/// Environment variable of the DMA-safety test hook: queue 0 posts one transmit descriptor whose
/// address lies outside every mapped region (bypassing the bounds check). Only for the guest test
/// that checks the IOMMU stops it and the driver notices. `1`: the descriptor keeps the frame's
/// length; `big`: its length becomes 8 KiB (QEMU 7.2 then fails the mapping and sets
/// DEVICE_NEEDS_RESET, where a short one is completed after the vIOMMU refused it).
pub const TEST_BAD_IOVA_ENV: &str = "WGPMD_VFIO_TEST_BAD_IOVA";

/// What [`TEST_BAD_IOVA_ENV`] asks for: an IOVA of `container` that nothing maps, and the
/// descriptor's length (None: the frame's).
pub(crate) fn bad_iova_from_env(container: &vfio::Container) -> Option<(u64, Option<u32>)> {
    let len = match std::env::var(TEST_BAD_IOVA_ENV).as_deref() {
        Ok("1") => None,
        Ok("big") => Some(8192),
        _ => return None,
    };
    let iova = container.unmapped_iova().unwrap_or((container.iova_high_water() + (1 << 30)) & !0xfff);
    Some((iova, len))
}

/// Points the transmit descriptor just pushed on `tx` (of `len` bytes) at `bad` and says so on
/// stderr: the guest test looks for the IOMMU's fault at that IOVA.
pub(crate) fn post_bad_iova(tx: &mut Virtq, (iova, blen): (u64, Option<u32>), len: usize) {
    tx.poison_last(iova, blen);
    eprintln!(
        "{TEST_BAD_IOVA_ENV}: posted one transmit descriptor at IOVA {iova:#x} ({} bytes), outside every mapped region",
        blen.unwrap_or(len as u32)
    );
}
