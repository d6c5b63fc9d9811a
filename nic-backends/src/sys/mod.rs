//! The only place in the crate where `unsafe` is allowed: mmap'd memory (buffer regions and
//! the AF_PACKET ring), ioctls, socket calls, and the `mem` ports' ring (`spsc`). Each block
//! carries a `// SAFETY:` comment; every function exported from here is safe to call with any
//! arguments.

#[cfg(feature = "dpdk")]
pub(crate) mod dpdk;
pub(crate) mod fdpass;
pub(crate) mod ioctl;
pub(crate) mod packet;
pub(crate) mod ring;
pub(crate) mod slots;
pub(crate) mod spsc;
pub(crate) mod xsk;
