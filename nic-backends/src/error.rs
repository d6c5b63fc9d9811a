//! Error types: one enum per subsystem (pools, buffer windows, ports).
//!
//! Port errors name the port string and the problem, and where there is one, what to do.

use std::io;

use crate::buffer::BUF_SIZE;

/// Creating a [`Pool`](crate::Pool) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The buffer count is zero or too large.
    #[error("pool {name}: buffer count must be between 1 and {max}, got {count}")]
    BadCount {
        /// Pool name.
        name: String,
        /// Requested count.
        count: usize,
        /// Largest count accepted.
        max: usize,
    },
    /// The region given to `Pool::with_region` cannot hold `count` buffers.
    #[error(
        "pool {name}: region of {have} bytes is too small for {count} buffers of {BUF_SIZE} bytes ({need} needed)"
    )]
    RegionTooSmall {
        /// Pool name.
        name: String,
        /// Requested count.
        count: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes in the region.
        have: usize,
    },
    /// The region's base address is not cache-line aligned.
    #[error("pool {name}: region base address is not 64-byte aligned")]
    Misaligned {
        /// Pool name.
        name: String,
    },
    /// The region's IOVA range wraps around.
    #[error("pool {name}: region IOVA range overflows 64 bits")]
    IovaOverflow {
        /// Pool name.
        name: String,
    },
    /// Mapping the pool's memory failed.
    #[error("pool {name}: mmap of {bytes} bytes failed: {source} (free memory, or raise the address-space or memory limit wgpmd runs under)")]
    Mmap {
        /// Pool name.
        name: String,
        /// Bytes requested.
        bytes: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A buffer window operation did not fit. Cheap and `Copy`: the data path counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BufError {
    /// `prepend(need)` with only `have` bytes of headroom.
    #[error("buffer: prepend of {need} bytes but only {have} bytes of headroom")]
    NoHeadroom {
        /// Bytes asked for.
        need: usize,
        /// Headroom available.
        have: usize,
    },
    /// `append(need)` with only `have` bytes of tailroom.
    #[error("buffer: append of {need} bytes but only {have} bytes of tailroom")]
    NoTailroom {
        /// Bytes asked for.
        need: usize,
        /// Tailroom available.
        have: usize,
    },
    /// `trim_front(need)` on a window of `have` bytes.
    #[error("buffer: trim of {need} bytes from a {have}-byte packet")]
    TooShort {
        /// Bytes asked for.
        need: usize,
        /// Bytes in the window.
        have: usize,
    },
    /// `set_len(len)` beyond the end of the slot.
    #[error("buffer: length {len} exceeds the {max} bytes from the data start to the end of the slot")]
    TooLong {
        /// Length asked for.
        len: usize,
        /// Largest length possible.
        max: usize,
    },
}

/// Opening a port failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The string has no `BACKEND:` prefix.
    #[error("{spec}: expected BACKEND:NAME, e.g. af_packet:eth1, tun:wg0, vfio:0000:00:02.0 or mem:test")]
    BadSpec {
        /// The port string.
        spec: String,
    },
    /// The backend before the colon is not one this build knows.
    #[error("{spec}: unknown backend `{backend}` (known: af_packet, af_xdp, tun, tap, vhost-user, mem, vfio, dpdk)")]
    UnknownBackend {
        /// The port string.
        spec: String,
        /// What came before the colon.
        backend: String,
    },
    /// Nothing after the colon.
    #[error("{spec}: missing interface name after the colon (e.g. {example})")]
    MissingName {
        /// The port string.
        spec: String,
        /// A correct string for this backend.
        example: &'static str,
    },
    /// The name is not a valid Linux interface name.
    #[error("{spec}: invalid interface name: {reason}")]
    BadName {
        /// The port string.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The backend exists but this binary was built without it.
    #[error("{spec}: the {backend} backend is not built into this binary: rebuild with `--features {backend}` (cargo build --release --features dpdk)")]
    NotBuilt {
        /// The port string.
        spec: String,
        /// The backend.
        backend: &'static str,
    },
    /// DPDK (EAL, ethdev, mempool) refused; the text names the call, DPDK's reason and a hint.
    #[error("{spec}: {problem}")]
    Dpdk {
        /// The port string (or `EAL`).
        spec: String,
        /// What failed and what to do.
        problem: String,
    },
    /// The options do not fit this backend.
    #[error("{spec}: {problem}")]
    BadOptions {
        /// The port string.
        spec: String,
        /// What is wrong.
        problem: String,
    },
    /// The interface does not exist (in this network namespace).
    #[error("{spec}: no such interface (see `ip link`; is it in another network namespace?)")]
    NoSuchInterface {
        /// The port string.
        spec: String,
    },
    /// The interface is not Ethernet, which AF_PACKET ports require.
    #[error("{spec}: not an Ethernet interface (ARP hardware type {hw_type}); use tun:NAME for IP-only devices")]
    NotEthernet {
        /// The port string.
        spec: String,
        /// `ARPHRD_*` of the interface.
        hw_type: u16,
    },
    /// The OS refused for lack of privilege.
    #[error("{spec}: {op}: permission denied (run as root or with CAP_NET_ADMIN)")]
    PermissionDenied {
        /// The port string.
        spec: String,
        /// The operation (file, ioctl or socket option).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another OS error, with a hint where one is known.
    #[error("{spec}: {op} failed{hint}")]
    Os {
        /// The port string.
        spec: String,
        /// The operation (file, ioctl or socket option).
        op: &'static str,
        /// `" (what to do)"` or empty.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening the VFIO device failed (the error says what to do).
    #[error("{spec}: {source}")]
    Vfio {
        /// The port string.
        spec: String,
        /// What went wrong (boxed: keeps `PortError` small).
        #[source]
        source: Box<vfio::VfioError>,
    },
    /// The XDP program of an `af_xdp:` port could not be loaded, configured or attached.
    #[error("{spec}: {problem}")]
    Xdp {
        /// The port string.
        spec: String,
        /// What failed, the kernel's reason and a hint.
        problem: String,
    },
    /// Creating the port's memory failed.
    #[error("{spec}: {source}")]
    Pool {
        /// The port string.
        spec: String,
        /// What went wrong.
        #[source]
        source: PoolError,
    },
}

/// `Result` with a [`PortError`].
pub type Result<T> = std::result::Result<T, PortError>;

impl PortError {
    /// Classify an OS error from operation `op` on port `spec`.
    pub(crate) fn os(spec: &str, op: &'static str, source: io::Error) -> PortError {
        let spec = spec.to_string();
        match source.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) if op != "open /dev/net/tun" => PortError::NoSuchInterface { spec },
            Some(libc::EPERM) | Some(libc::EACCES) => PortError::PermissionDenied { spec, op, source },
            Some(libc::ENOENT) | Some(libc::ENODEV) if op == "open /dev/net/tun" => PortError::Os {
                spec,
                op,
                hint: " (the TUN driver is missing: modprobe tun, or mknod /dev/net/tun c 10 200)",
                source,
            },
            Some(libc::EBUSY) => PortError::Os {
                spec,
                op,
                hint: " (the interface is in use, e.g. a TUN opened by another process without multi-queue)",
                source,
            },
            Some(libc::EINVAL) if op == "TUNSETIFF" => PortError::Os {
                spec,
                op,
                hint: " (an interface of that name exists and is not a multi-queue TUN)",
                source,
            },
            Some(libc::ENOMEM) => PortError::Os {
                spec,
                op,
                hint: " (out of memory: fewer queues, or raise the locked-memory limit)",
                source,
            },
            _ => PortError::Os { spec, op, hint: "", source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_name_the_port_and_what_to_do() {
        let e = PortError::os("af_packet:eth9", "SIOCGIFINDEX", io::Error::from_raw_os_error(libc::ENODEV));
        assert_eq!(
            e.to_string(),
            "af_packet:eth9: no such interface (see `ip link`; is it in another network namespace?)"
        );
        let e = PortError::os("tun:wg0", "open /dev/net/tun", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_string(), "tun:wg0: open /dev/net/tun: permission denied (run as root or with CAP_NET_ADMIN)");
        assert_eq!(e.source().unwrap().to_string(), io::Error::from_raw_os_error(libc::EACCES).to_string());
        let e = PortError::os("tun:wg0", "open /dev/net/tun", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.to_string().contains("modprobe tun"), "{e}");
        let e = PortError::os("tun:eth0", "TUNSETIFF", io::Error::from_raw_os_error(libc::EINVAL));
        assert!(e.to_string().contains("not a multi-queue TUN"), "{e}");
        assert!(e.source().is_some());
    }

    #[test]
    fn buf_errors_are_copy_and_readable() {
        let e = BufError::NoHeadroom { need: 200, have: 128 };
        let f = e;
        assert_eq!(e, f);
        assert_eq!(e.to_string(), "buffer: prepend of 200 bytes but only 128 bytes of headroom");
    }
}
