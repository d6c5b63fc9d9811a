//! VFIO for wgpmd: a PCI device handed to user space (`/dev/vfio`), its registers, and DMA memory
//! the device may read and write.
//!
//! - [`Container`] (`/dev/vfio/vfio`: API version, the type1v2 IOMMU or no-IOMMU mode) and its
//!   group (`/dev/vfio/N`, viable, attached to the container);
//! - [`Device`]: the device fd, region info, PCI configuration space by `pread`/`pwrite`, BARs
//!   mapped as [`Mmio`], the capability list ([`pci`]), bus mastering, reset;
//! - [`DmaRegion`]: hugepage memory mapped for the device at an [`Iova`], unmapped and freed on
//!   drop;
//! - [`sysfs`]: the devbind workflow (`wgpmd status/bind/unbind`) and the checks with
//!   operator-facing errors, over a root directory that tests replace with a fake tree.
//!
//! All `unsafe` code is in the private `sys` module (ioctls, mmap, pread/pwrite, volatile MMIO);
//! everything here is safe to call.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod device;
pub mod iova;
pub mod pci;
#[allow(unsafe_code)]
mod sys;
pub mod sysfs;

pub use device::{Container, Device, DmaRegion, IommuMode};
pub use iova::{parse_iommu_info, IommuInfo, Iova, IovaAllocator, IovaRange};
pub use sys::{Mmio, HUGEPAGE};
pub use sysfs::{parse_bdf, Sysfs};

use std::io;

/// What went wrong, phrased for the operator: each names the device or file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// Not a PCI address.
    #[error("`{bdf}` is not a PCI address: expected DDDD:BB:DD.F, e.g. 0000:00:02.0 (see `wgpmd status`)")]
    BadBdf {
        /// What was given.
        bdf: String,
    },
    /// No such device in sysfs.
    #[error("no PCI device {bdf} (see `wgpmd status` or `lspci -D` for the addresses of network devices)")]
    NoSuchDevice {
        /// The address.
        bdf: String,
    },
    /// The device has no IOMMU group.
    #[error(
        "{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on on the kernel command line, and VT-d/AMD-Vi in the firmware) or use no-IOMMU mode (modprobe vfio enable_unsafe_noiommu_mode=1, a kernel with CONFIG_VFIO_NOIOMMU)"
    )]
    NoIommuGroup {
        /// The address.
        bdf: String,
    },
    /// The device is not bound to vfio-pci.
    #[error("{bdf} is {}: run `wgpmd bind {bdf}` first", match driver { Some(d) => format!("still bound to its kernel driver {d}"), None => "not bound to any driver".to_string() })]
    NotBoundToVfio {
        /// The address.
        bdf: String,
        /// The driver that holds it.
        driver: Option<String>,
    },
    /// Another device of the group is on a kernel driver.
    #[error("IOMMU group {group} is not viable: every device in it must be bound to vfio-pci or to no driver; also in the group: {others} (bind them with `wgpmd bind BDF` too)")]
    GroupNotViable {
        /// The group.
        group: String,
        /// The other devices and their drivers.
        others: String,
    },
    /// The device is in use (another process holds the group).
    #[error("{what}: device or group busy: another process (another wgpmd, a DPDK application, QEMU) holds it")]
    Busy {
        /// What was opened.
        what: String,
    },
    /// No VFIO in the kernel.
    #[error("{path} does not exist: load the VFIO modules (modprobe vfio-pci vfio_iommu_type1)")]
    NoVfio {
        /// The missing node.
        path: String,
    },
    /// The kernel refuses the type1v2 IOMMU (or no-IOMMU mode).
    #[error("{0}")]
    Unsupported(String),
    /// Hugepages are missing.
    #[error(
        "cannot map {bytes} bytes of hugepage memory ({source}): reserve {pages} more 2 MiB hugepages, e.g. `echo {total} > /proc/sys/vm/nr_hugepages` (now {free} free of {nr})"
    )]
    NoHugepages {
        /// Bytes asked for.
        bytes: usize,
        /// 2 MiB pages that bytes need.
        pages: usize,
        /// Free hugepages now.
        free: usize,
        /// nr_hugepages now.
        nr: usize,
        /// The nr_hugepages to set.
        total: usize,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// The IOVA window is full.
    #[error("no IOVA space left for {bytes} bytes")]
    NoIova {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A sysfs file could not be written or read.
    #[error("{path}: {source} (run as root)")]
    Sysfs {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel driver module is missing.
    #[error("PCI driver {driver} is not available ({why}): install/load the module (modprobe {module})")]
    NoDriver {
        /// The driver.
        driver: String,
        /// The module.
        module: String,
        /// modprobe's message.
        why: String,
    },
    /// The device did not end up on the driver.
    #[error("{bdf}: asked to bind to {driver} but it is still bound to {now}: {hint}")]
    BindFailed {
        /// The address.
        bdf: String,
        /// The driver wanted.
        driver: String,
        /// The driver it has.
        now: String,
        /// What to look at.
        hint: &'static str,
    },
    /// unbind without a remembered driver.
    #[error("{bdf}: no driver remembered from `wgpmd bind`: give it, e.g. `wgpmd unbind {bdf} --driver virtio-pci`")]
    NoRememberedDriver {
        /// The address.
        bdf: String,
    },
    /// The device carries the host's default route.
    #[error("{bdf} carries the host's default route (interface {interfaces}): refusing to take it from the kernel; move the route to another interface first")]
    ActiveRoute {
        /// The address.
        bdf: String,
        /// Its interfaces.
        interfaces: String,
    },
    /// The device is not what the caller expects.
    #[error("{bdf}: {problem}")]
    Device {
        /// The address.
        bdf: String,
        /// What is wrong.
        problem: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl VfioError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> VfioError {
        let what = what.into();
        match source.raw_os_error() {
            Some(libc::EBUSY) => VfioError::Busy { what },
            _ => VfioError::Io { what, source },
        }
    }
}
