//! `vfio:BDF`: a native poll-mode driver for modern virtio-net (virtio 1.x over PCI, 1af4:1041),
//! the device given to user space with VFIO. See nic-backends/DESIGN.md "VFIO + virtio-net".
//!
//! - `net`: the port, and its bring-up as the numbered steps of §3.1.1;
//! - `transport`: the PCI function through VFIO and its virtio registers; `pci`: the transport's
//!   layout (vendor capabilities, common configuration, feature negotiation);
//! - `device`: the device shared by the port, its queues and their DMA regions, and its stop;
//!   `stop_once`: that stop, run once;
//! - `queue`: a queue pair as a [`crate::Queue`], with the watchdog (`stall`: stuck transmits,
//!   `kmsg`: IOMMU faults in the kernel log);
//! - `queue_core`: the queue pair's data path over its two rings, `bounds`: the IOVA ranges it
//!   may post;
//! - `virtq`: the split virtqueue, driver side, with a simulated device for the tests;
//! - `test_hook` (feature `test-hooks` only): fault injection for the guest tests.

pub(crate) mod bounds;
mod device;
mod kmsg;
pub mod net;
pub(crate) mod pci;
mod queue;
pub(crate) mod queue_core;
mod stall;
mod stop_once;
#[cfg(any(test, feature = "test-hooks"))]
mod test_hook;
mod transport;
pub(crate) mod virtq;

pub use net::{VirtioNetPort, POOL_BUFS};
pub use queue::VirtioQueue;
pub use queue_core::VirtioCounters;
#[cfg(any(test, feature = "test-hooks"))]
pub use test_hook::TEST_BAD_IOVA_ENV;
pub use transport::NOIOMMU_ENV;
