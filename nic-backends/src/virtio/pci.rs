//! The virtio PCI transport (virtio 1.1/1.2 §4.1 "Virtio Over PCI Bus"): the vendor
//! capabilities that locate the configuration structures (§4.1.4), the common configuration
//! layout (§4.1.4.3), feature negotiation (§3.1.1, §5.1.3).

use std::sync::Arc;

use vfio::pci::{Capability, CAP_VENDOR};
use vfio::Mmio;

/// `VIRTIO_PCI_CAP_*` configuration types (§4.1.4).
pub(crate) const CAP_COMMON: u8 = 1;
pub(crate) const CAP_NOTIFY: u8 = 2;
pub(crate) const CAP_ISR: u8 = 3;
pub(crate) const CAP_DEVICE: u8 = 4;

/// Common configuration fields (§4.1.4.3, `struct virtio_pci_common_cfg`).
pub(crate) mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
    /// Length of the structure we use.
    pub const LEN: usize = 0x38;
}

/// Device status bits (§2.1).
pub(crate) mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// `VIRTIO_MSI_NO_VECTOR`: no interrupt for this queue / config change (we poll).
pub(crate) const NO_VECTOR: u16 = 0xffff;

/// Feature bits (§5.1.3, §6). The offload bits are listed to be refused (tests check it).
#[allow(dead_code)]
pub(crate) mod feature {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const MQ: u64 = 1 << 22;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// Where a configuration structure lives: BAR, offset, length (and for notify, the multiplier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapLoc {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
    pub extra: u32,
}

/// The four structures a virtio-net driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VirtioCaps {
    pub common: CapLoc,
    pub notify: CapLoc,
    pub isr: Option<CapLoc>,
    pub device: CapLoc,
}

/// Find the virtio structures among the capabilities (`struct virtio_pci_cap`, §4.1.4: cap_vndr
/// 0x09, cfg_type at 3, bar at 4, offset le32 at 8, length le32 at 12; the notify capability adds
/// notify_off_multiplier le32 at 16). The first capability of each type wins (§4.1.4: "the driver
/// SHOULD use the first one"); BARs above 5 are skipped (type 5, PCI cfg access, is not used).
pub(crate) fn find_caps(caps: &[Capability]) -> Result<VirtioCaps, String> {
    let mut found: [Option<CapLoc>; 5] = [None; 5];
    for c in caps.iter().filter(|c| c.id == CAP_VENDOR) {
        let (Some(ty), Some(bar), Some(offset), Some(length)) = (c.u8_at(3), c.u8_at(4), c.u32_at(8), c.u32_at(12))
        else {
            continue;
        };
        if !(1..=4).contains(&ty) || bar > 5 {
            continue;
        }
        let extra = if ty == CAP_NOTIFY { c.u32_at(16).unwrap_or(0) } else { 0 };
        found[ty as usize].get_or_insert(CapLoc { bar, offset, length, extra });
    }
    let need = |ty: u8, what: &str| {
        found[ty as usize].ok_or_else(|| format!("no virtio {what} capability: not a modern (virtio 1.x) device"))
    };
    Ok(VirtioCaps {
        common: need(CAP_COMMON, "common configuration")?,
        notify: need(CAP_NOTIFY, "notification")?,
        isr: found[CAP_ISR as usize],
        device: need(CAP_DEVICE, "device configuration")?,
    })
}

/// The features we accept from those `offered`, for `queues` queue pairs. Checksum/segmentation
/// offloads and mergeable rx buffers are never taken (a TAP backend offers them; we always use
/// whole frames and the 12-byte header). VERSION_1 is required; ACCESS_PLATFORM is taken when
/// offered (the device then translates through the IOMMU, which is what VFIO maps).
pub(crate) fn negotiate(offered: u64, queues: usize) -> Result<u64, String> {
    use feature::*;
    if offered & VERSION_1 == 0 {
        return Err("device does not offer VIRTIO_F_VERSION_1: a legacy-only device (use a modern virtio-net, QEMU disable-legacy=on)".into());
    }
    let mut want = VERSION_1 | (offered & (ACCESS_PLATFORM | MAC | STATUS));
    if queues > 1 {
        if offered & (MQ | CTRL_VQ) != MQ | CTRL_VQ {
            return Err(format!(
                "{queues} queue pairs asked for but the device offers no multiqueue (VIRTIO_NET_F_MQ + CTRL_VQ; QEMU: -netdev ...,queues={queues} and virtio-net-pci mq=on)"
            ));
        }
        want |= MQ | CTRL_VQ;
    }
    Ok(want)
}

/// A window `[off, off + len)` of a mapped BAR; accesses outside it read all ones and write
/// nothing.
#[derive(Clone)]
pub(crate) struct Window {
    mmio: Arc<Mmio>,
    off: usize,
    len: usize,
}

impl Window {
    /// None if the window does not fit the BAR.
    pub(crate) fn new(mmio: Arc<Mmio>, off: usize, len: usize) -> Option<Window> {
        (off.checked_add(len)? <= mmio.size()).then_some(Window { mmio, off, len })
    }
    /// Length of the window in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    fn ok(&self, o: usize, w: usize) -> bool {
        o.checked_add(w).is_some_and(|e| e <= self.len)
    }
    pub(crate) fn read8(&self, o: usize) -> u8 {
        if self.ok(o, 1) {
            self.mmio.read8(self.off + o)
        } else {
            u8::MAX
        }
    }
    pub(crate) fn read16(&self, o: usize) -> u16 {
        if self.ok(o, 2) {
            self.mmio.read16(self.off + o)
        } else {
            u16::MAX
        }
    }
    pub(crate) fn read32(&self, o: usize) -> u32 {
        if self.ok(o, 4) {
            self.mmio.read32(self.off + o)
        } else {
            u32::MAX
        }
    }
    pub(crate) fn write8(&self, o: usize, v: u8) {
        if self.ok(o, 1) {
            self.mmio.write8(self.off + o, v);
        }
    }
    pub(crate) fn write16(&self, o: usize, v: u16) {
        if self.ok(o, 2) {
            self.mmio.write16(self.off + o, v);
        }
    }
    pub(crate) fn write32(&self, o: usize, v: u32) {
        if self.ok(o, 4) {
            self.mmio.write32(self.off + o, v);
        }
    }
    pub(crate) fn write64(&self, o: usize, v: u64) {
        if self.ok(o, 8) {
            self.mmio.write64_split(self.off + o, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcap(off: usize, ty: u8, bar: u8, offset: u32, length: u32, extra: u32) -> Capability {
        let mut b = vec![CAP_VENDOR, 0, 20, ty, bar, 0, 0, 0];
        b.extend(offset.to_le_bytes());
        b.extend(length.to_le_bytes());
        b.extend(extra.to_le_bytes());
        Capability { id: CAP_VENDOR, offset: off, bytes: b }
    }

    #[test]
    fn caps_of_qemu_virtio_net() {
        // What QEMU 7.2's virtio-net-pci shows (read in a guest): common bar4+0, isr +0x1000,
        // device +0x2000, notify +0x3000 (multiplier 4), plus a PCI-cfg cap and MSI-X.
        let caps = vec![
            Capability { id: 0x11, offset: 0x98, bytes: vec![0x11, 0x84, 0, 0] },
            vcap(0x84, 5, 0, 0, 0, 0),
            vcap(0x70, CAP_NOTIFY, 4, 0x3000, 0x1000, 4),
            vcap(0x60, CAP_DEVICE, 4, 0x2000, 0x1000, 0),
            vcap(0x50, CAP_ISR, 4, 0x1000, 0x1000, 0),
            vcap(0x40, CAP_COMMON, 4, 0, 0x1000, 0),
            vcap(0x3c, CAP_COMMON, 2, 0, 0x1000, 0), // a second one: the first wins
        ];
        let v = find_caps(&caps).unwrap();
        assert_eq!(v.common, CapLoc { bar: 4, offset: 0, length: 0x1000, extra: 0 });
        assert_eq!(v.notify, CapLoc { bar: 4, offset: 0x3000, length: 0x1000, extra: 4 });
        assert_eq!(v.isr.unwrap().offset, 0x1000);
        assert_eq!(v.device.offset, 0x2000);
    }

    #[test]
    fn missing_or_bad_caps_are_errors() {
        let e = find_caps(&[vcap(0x40, CAP_COMMON, 4, 0, 0x1000, 0)]).unwrap_err();
        assert!(e.contains("notification") && e.contains("modern"), "{e}");
        let e = find_caps(&[vcap(0x40, CAP_COMMON, 7, 0, 0x1000, 0)]).unwrap_err();
        assert!(e.contains("common"), "BAR 7 skipped: {e}");
        let short = Capability { id: CAP_VENDOR, offset: 0xf8, bytes: vec![9, 0, 16, 1] };
        assert!(find_caps(&[short]).is_err(), "truncated cap skipped, no panic");
    }

    #[test]
    fn negotiation_takes_only_what_we_handle() {
        use feature::*;
        // QEMU 7.2's offer, read in a guest (TAP backend: offloads included).
        let offered = 0x0000_0103_30bf_ffa7u64;
        let got = negotiate(offered, 1).unwrap();
        assert_eq!(got, VERSION_1 | ACCESS_PLATFORM | MAC | STATUS);
        for never in [CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4, MRG_RXBUF, EVENT_IDX] {
            assert_eq!(got & never, 0);
        }
        assert_eq!(offered & MQ, 0, "QEMU without mq=on");
        assert_eq!(negotiate(offered | MQ, 2).unwrap() & (MQ | CTRL_VQ), MQ | CTRL_VQ);
        let e = negotiate(offered, 2).unwrap_err();
        assert!(e.contains("mq=on"), "{e}");
        let e = negotiate(offered & !VERSION_1, 1).unwrap_err();
        assert!(e.contains("legacy"), "{e}");
    }
}
