//! `vfio:BDF`: a native poll-mode driver for modern virtio-net (virtio 1.x over PCI, 1af4:1041),
//! the device given to user space with VFIO. See DESIGN.md "VFIO + virtio-net".
//!
//! - [`virtq`]: the split virtqueue, driver side, with a simulated device for the tests;
//! - `pci`: the virtio PCI transport (vendor capabilities, common configuration);
//! - `net`: the port and its queues (one rx/tx pair per worker, MQ via the control queue).

pub mod net;
pub(crate) mod pci;
pub(crate) mod virtq;

pub use net::{VirtioCounters, VirtioNetPort, VirtioQueue, NOIOMMU_ENV, POOL_BUFS, TEST_BAD_IOVA_ENV};
