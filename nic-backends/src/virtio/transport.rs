//! The PCI function and its virtio registers: opening it through VFIO, the windows on its
//! virtio structures (§4.1.4), and the register work of device initialisation (§3.1.1, driven
//! step by step by [`super::net::VirtioNetPort::open`]) and of virtqueue configuration
//! (§4.1.5.1.3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::net::{bad, vfio_err};
use super::pci::{common, find_caps, status, CapLoc, Window, NO_VECTOR};
use crate::error::PortError;

/// Environment variable that allows no-IOMMU mode (`/dev/vfio/noiommu-N`).
pub const NOIOMMU_ENV: &str = "WGPMD_VFIO_NOIOMMU";

/// The PCI function `bdf` (bound to vfio-pci), checked to be a modern virtio-net device, reset
/// (a PCI function reset) and with bus mastering on.
pub(crate) fn open_function(spec: &str, bdf: &str) -> Result<vfio::Device, PortError> {
    let sys = vfio::Sysfs::default();
    let allow_noiommu = std::env::var(NOIOMMU_ENV).is_ok_and(|v| v == "1");
    let vdev = vfio::Container::open_device(&sys, bdf, allow_noiommu).map_err(vfio_err(spec))?;
    let (vendor, device) = vdev.ids().map_err(vfio_err(spec))?;
    if (vendor, device) != (0x1af4, 0x1041) {
        return Err(bad(
            spec,
            format!("{vendor:04x}:{device:04x} is not a modern virtio-net device (1af4:1041); the vfio backend drives only that"),
        ));
    }
    vdev.reset().map_err(vfio_err(spec))?;
    vdev.enable_bus_master().map_err(vfio_err(spec))?;
    Ok(vdev)
}

/// The transport registers of one device.
pub(crate) struct Transport {
    /// `struct virtio_pci_common_cfg` (§4.1.4.3).
    pub common: Window,
    /// The notification structure (§4.1.4.4).
    pub notify: Window,
    /// `notify_off_multiplier` of the notification capability.
    pub notify_mult: u32,
    /// The device-specific configuration (§4.1.4.6; virtio-net's is §5.1.4).
    pub device: Window,
}

impl Transport {
    /// Locates the virtio structures among `vdev`'s capabilities (§4.1.4) and maps the BARs that
    /// hold them (each BAR once); each structure must fit its BAR and be large enough.
    pub(crate) fn map(vdev: &vfio::Device, spec: &str) -> Result<Transport, PortError> {
        let caps = find_caps(&vdev.capabilities().map_err(vfio_err(spec))?).map_err(|e| bad(spec, e))?;
        let mut bars: [Option<Arc<vfio::Mmio>>; 6] = Default::default();
        let mut window = |loc: CapLoc, min: usize, what: &str| -> Result<Window, PortError> {
            let bar = loc.bar as usize;
            if bars[bar].is_none() {
                bars[bar] = Some(Arc::new(vdev.map_bar(loc.bar).map_err(vfio_err(spec))?));
            }
            let mmio = bars[bar].clone().ok_or_else(|| bad(spec, "BAR mapping vanished"))?;
            if (loc.length as usize) < min {
                return Err(bad(
                    spec,
                    format!("virtio {what} structure is {} bytes, at least {min} needed", loc.length),
                ));
            }
            Window::new(mmio, loc.offset as usize, loc.length as usize)
                .ok_or_else(|| bad(spec, format!("virtio {what} structure lies outside BAR{}", loc.bar)))
        };
        Ok(Transport {
            common: window(caps.common, common::LEN, "common configuration")?,
            notify: window(caps.notify, 2, "notification")?,
            notify_mult: caps.notify.extra,
            device: window(caps.device, 6, "device configuration")?,
        })
    }

    /// `device_status` (§2.1).
    pub(crate) fn status(&self) -> u8 {
        self.common.read8(common::DEVICE_STATUS)
    }

    /// Writes `device_status`.
    pub(crate) fn set_status(&self, s: u8) {
        self.common.write8(common::DEVICE_STATUS, s);
    }

    /// Write 0 to device_status and wait until it reads back 0 (§4.1.4.3.2: "the driver MUST ...
    /// wait for device_status to return 0 before reinitializing the device").
    pub(crate) fn reset(&self) -> bool {
        self.set_status(0);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            if self.status() == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        false
    }

    /// Gives up on the device: sets FAILED (§3.1.1: "If any of these steps go irrecoverably
    /// wrong, the driver SHOULD set the FAILED status bit to indicate that it has given up on the
    /// device") and returns the error that says why.
    pub(crate) fn fail(&self, spec: &str, problem: impl Into<String>) -> PortError {
        self.set_status(status::FAILED);
        bad(spec, problem)
    }

    /// The device's feature bits: `device_feature`, both 32-bit halves through
    /// `device_feature_select` (§4.1.4.3).
    pub(crate) fn device_features(&self) -> u64 {
        self.common.write32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.common.read32(common::DEVICE_FEATURE) as u64;
        self.common.write32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.common.read32(common::DEVICE_FEATURE) as u64;
        hi << 32 | lo
    }

    /// Writes the accepted feature bits: `driver_feature`, both halves through
    /// `driver_feature_select`.
    pub(crate) fn set_driver_features(&self, features: u64) {
        self.common.write32(common::DRIVER_FEATURE_SELECT, 0);
        self.common.write32(common::DRIVER_FEATURE, features as u32);
        self.common.write32(common::DRIVER_FEATURE_SELECT, 1);
        self.common.write32(common::DRIVER_FEATURE, (features >> 32) as u32);
    }

    /// `num_queues`: how many virtqueues the device has.
    pub(crate) fn num_queues(&self) -> usize {
        self.common.read16(common::NUM_QUEUES) as usize
    }

    /// The largest size virtqueue `vq` may have (`queue_size` before the driver writes it; 0: the
    /// queue is not available).
    pub(crate) fn queue_max_size(&self, vq: u16) -> u16 {
        self.common.write16(common::QUEUE_SELECT, vq);
        self.common.read16(common::QUEUE_SIZE)
    }

    /// §4.1.5.1.3 "Virtqueue Configuration": selects `vq`, writes its size `n`, no interrupt
    /// vector (we poll), and the addresses of its descriptor table, driver and device areas; then
    /// enables it. Returns its notification address (offset in the notification structure), or
    /// None, the queue left disabled, when that lies outside the structure.
    pub(crate) fn setup_queue(&self, vq: u16, n: u16, (desc, driver, device): (u64, u64, u64)) -> Option<usize> {
        let c = &self.common;
        c.write16(common::QUEUE_SELECT, vq);
        c.write16(common::QUEUE_SIZE, n);
        c.write16(common::QUEUE_MSIX_VECTOR, NO_VECTOR);
        c.write64(common::QUEUE_DESC, desc);
        c.write64(common::QUEUE_DRIVER, driver);
        c.write64(common::QUEUE_DEVICE, device);
        let at = c.read16(common::QUEUE_NOTIFY_OFF) as usize * self.notify_mult as usize;
        if at + 2 > self.notify.len() {
            return None;
        }
        c.write16(common::QUEUE_ENABLE, 1);
        Some(at)
    }

    /// No interrupt for configuration changes either (`config_msix_vector`).
    pub(crate) fn no_config_interrupt(&self) {
        self.common.write16(common::CONFIG_MSIX_VECTOR, NO_VECTOR);
    }

    /// §4.1.5.2 "Available Buffer Notifications": write the queue index at the queue's notify
    /// address.
    pub(crate) fn notify(&self, at: usize, vq: u16) {
        self.notify.write16(at, vq);
    }
}
