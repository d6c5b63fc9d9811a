//! wgpmd's ports: the [`Port`]/[`Queue`] abstraction, packet [`Buffer`]s and their [`Pool`]s,
//! and the backends `mem`, `af_packet`, `af_xdp` (AF_XDP sockets behind an XDP program), `tun`,
//! `vfio` (a virtio-net poll-mode driver) and (feature `dpdk`) `dpdk`; [`gso`]: segmentation and
//! coalescing at the TUN boundary.
//!
//! # Layering
//! - [`buffer`]: pools of fixed 2 KiB slots with headroom for in-place encapsulation; safe code
//!   over `sys::slots`, which owns the memory.
//! - [`port`]: the traits, [`open`] (`"af_packet:eth1"`, `"tun:wg0"`, `"mem:test"`, `"vfio:0000:00:02.0"`).
//! - [`virtio`]: the virtio-net driver on a VFIO device (rings in DMA memory, polled).
//! - [`mem`], [`af_packet`], [`tun`]: the backends, safe code over `sys`; `dpdk` (feature
//!   `dpdk`): DPDK ethdev ports through our `dpdk-sys` bindings, zero copy between mbufs and
//!   buffers (see `DESIGN.md`).
//! - `sys` (private): every `unsafe` block of the crate: mmap, ioctls, socket calls, the
//!   AF_PACKET ring, the AF_XDP rings and UMEM registration (`sys/xsk.rs`), the `mem` ports'
//!   single-producer single-consumer ring (`sys/spsc.rs`). The rest of the crate is
//!   `#![deny(unsafe_code)]`.
//!
//! # Buffer ownership
//! A [`Buffer`] is the only handle to its slot. While a `Buffer` exists the CPU owns the bytes;
//! dropping it returns the slot to its own pool, lock-free, from any thread. The socket
//! backends copy once at the kernel boundary; `mem` moves buffers. See `DESIGN.md`.
//!
//! # Panics
//! Nothing on the data path (`rx_burst`, `tx_burst`, buffer window operations, pool
//! alloc/free) panics: window operations that do not fit return [`BufError`], malformed
//! kernel data is counted in [`QueueStats`]. Opening a port returns [`PortError`].
//!
//! # Threads
//! A port's queues are moved to worker threads ([`Port::take_queue`]); each queue is polled by
//! one thread. Queues are `Send`, not `Sync`.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod af_packet;
pub mod af_xdp;
pub mod buffer;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gso;
pub mod mem;
pub mod port;
#[allow(unsafe_code)]
mod sys;
pub mod tun;
pub mod vhost_user;
pub mod virtio;

pub use buffer::{Buffer, Pool, Region, BUF_SIZE, HEADROOM, MAX_DATA, MIN_TAILROOM};
pub use error::{BufError, PoolError, PortError};
pub use port::{
    check_spec, open, ExtraStats, Fanout, Port, PortInfo, PortOptions, Queue, QueueStats, Steerer, Steering,
    BACKENDS as PORT_BACKENDS,
};
pub use sys::slots::MmapRegion;
