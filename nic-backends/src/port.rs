//! The port abstraction: a [`Port`] has N [`Queue`]s (one rx/tx pair per worker), which are
//! moved out to the threads that poll them. [`open`] builds a port from its string.

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;

/// Counters of one queue. Each queue counts on its own (no shared atomics); sum them for a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames/packets delivered by `rx_burst`.
    pub rx_packets: u64,
    /// Bytes delivered by `rx_burst`.
    pub rx_bytes: u64,
    /// Frames/packets taken by `tx_burst` and handed to the wire/kernel/peer.
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Received but discarded: too long for a buffer, or (AF_PACKET) the kernel ring was full.
    pub rx_dropped: u64,
    /// Taken by `tx_burst` but discarded by the backend (not counted as `tx_errors`).
    pub tx_dropped: u64,
    /// Received but malformed or truncated.
    pub rx_errors: u64,
    /// Taken by `tx_burst` but refused by the kernel (bad length, bad IP version, link gone).
    pub tx_errors: u64,
    /// Zero-copy backends (dpdk): buffers from another pool copied into the port's own memory
    /// before tx. Always 0 for the copying backends.
    pub tx_copied: u64,
    /// Zero-copy backends (vfio): receive-ring refills that found the queue's pool empty (the
    /// ring runs short until buffers come back). 0 where not counted (copying backends, dpdk).
    pub rx_no_buffers: u64,
    /// vfio: buffers not posted to the device because their IOVA range lies outside the
    /// DMA-mapped regions (the bounds check); transmit ones are also in `tx_errors`.
    pub iova_refused: u64,
    /// vfio: used-ring entries whose id the driver has not posted (skipped, never trusted); also
    /// in `rx_errors` (receive ring) or `tx_errors` (transmit ring).
    pub bad_used_id: u64,
    /// vfio: used-ring lengths larger than the space posted (the buffer is dropped); on the
    /// receive ring also in `rx_errors`.
    pub bad_used_len: u64,
    /// vfio: used-index jumps larger than the ring (a broken device; nothing is taken, and the
    /// watchdog stops the port).
    pub bad_used_idx: u64,
    /// AF_PACKET: GSO frames received (one frame carrying several UDP datagrams, with the
    /// segment size in its `virtio_net_hdr`), each split into datagrams. TUN: TCP/UDP
    /// super-packets read from the kernel (TSO/USO), each segmented.
    pub rx_gso_frames: u64,
    /// The datagrams / segments made from those (each also counted in `rx_packets`).
    pub rx_gso_segments: u64,
    /// TUN: super-packets written to the kernel, each coalesced from several TCP segments of
    /// one flow (GRO).
    pub tx_gro_frames: u64,
    /// The packets coalesced into those (each also counted in `tx_packets`).
    pub tx_gro_packets: u64,
}

impl std::ops::AddAssign for QueueStats {
    fn add_assign(&mut self, o: QueueStats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_dropped += o.rx_dropped;
        self.tx_dropped += o.tx_dropped;
        self.rx_errors += o.rx_errors;
        self.tx_errors += o.tx_errors;
        self.tx_copied += o.tx_copied;
        self.rx_no_buffers += o.rx_no_buffers;
        self.iova_refused += o.iova_refused;
        self.bad_used_id += o.bad_used_id;
        self.bad_used_len += o.bad_used_len;
        self.bad_used_idx += o.bad_used_idx;
        self.rx_gso_frames += o.rx_gso_frames;
        self.rx_gso_segments += o.rx_gso_segments;
        self.tx_gro_frames += o.tx_gro_frames;
        self.tx_gro_packets += o.tx_gro_packets;
    }
}

/// One rx/tx queue pair, owned and polled by one worker thread.
pub trait Queue: Send {
    /// Receive up to `max` frames/packets into buffers from `pool`, appended to `out`; returns how many.
    ///
    /// The socket backends copy each frame into a fresh buffer at `HEADROOM`; when `pool` runs
    /// dry they stop and leave the rest in the kernel. `mem` ignores `pool`: it moves the
    /// sender's buffers, which still return to the sender's pool.
    fn rx_burst(&mut self, pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize;
    /// Transmit from the front of `bufs`; returns how many were taken (those are removed from the Vec and freed); the rest stay, in order (DPDK semantics: the caller retries or drops+counts).
    ///
    /// A buffer the kernel refuses outright (e.g. a frame too short to be Ethernet) is taken and
    /// counted in `tx_errors`, so one bad buffer cannot block the queue.
    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize;
    /// This queue's counters.
    fn stats(&self) -> QueueStats;
    /// A descriptor that polls readable (`POLLIN`) when `rx_burst` has something: an idle
    /// worker in adaptive mode waits on it instead of sleeping. `None` (the default): the
    /// queue has no such descriptor (mem, vfio, dpdk), and the worker sleeps.
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// `Err(message)` once the queue has met a fault it cannot recover from (a device that set
    /// NEEDS_RESET, stalled transmit completions): the worker then stops the daemon, which exits
    /// non-zero with the message. Cheap (no device access): the queue's own watchdog, run from
    /// `rx_burst`, sets the state. Default: always healthy.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What a port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// The interface (or mem port) name.
    pub name: String,
    /// Ethernet address; `None` for IP-only devices (TUN).
    pub mac: Option<[u8; 6]>,
    /// Link MTU (IP packet size, without the Ethernet header).
    pub mtu: usize,
    /// Backend: `"mem"`, `"af_packet"`, `"af_xdp"`, `"tun"`, `"tap"`, `"vhost-user"`, `"vfio"` or `"dpdk"`.
    pub kind: &'static str,
}

/// A network port with `num_queues()` queue pairs.
pub trait Port: Send {
    /// Name, MAC, MTU, backend.
    fn info(&self) -> &PortInfo;
    /// Number of queue pairs.
    fn num_queues(&self) -> usize;
    /// Move queue `q` out (to the worker thread that will own it); None if already taken / out of range.
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>>;
    /// Administratively up and carrier present.
    fn link_up(&self) -> bool;
    /// The pool the worker polling queue `q` should allocate from, so that what it sends on this
    /// port needs no copy: device-visible (DMA-mapped) memory for VFIO, mbuf-backed for DPDK.
    /// `None` (the default): the backend copies at its boundary and any pool will do.
    ///
    /// A queue must still accept buffers from other pools in `tx_burst` (the control core's
    /// handshake replies, a buffer received on another port): a zero-copy backend copies those
    /// into one of its own buffers and counts the copy; it never posts an address it has not
    /// mapped.
    fn queue_pool(&self, _q: usize) -> Option<Pool> {
        None
    }
    /// Backend counters beyond [`QueueStats`] (DPDK xstats, link state), readable from any
    /// thread while the port lives on another: the daemon's stats socket calls it. `None`
    /// (the default): nothing to add.
    fn extra_stats(&self) -> Option<ExtraStats> {
        None
    }
    /// A setter for what the port must deliver to wgpmd when the kernel shares the interface
    /// (`af_xdp`: the XDP program's addresses and UDP port), callable from any thread; the
    /// daemon calls it at start and when the listen port changes. `None` (the default): the
    /// port delivers every frame and needs no steering.
    fn steering(&self) -> Option<Steerer> {
        None
    }
}

/// What wgpmd consumes on a shared interface: UDP to `udp_port` on these addresses (and the
/// neighbour answers it asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// Our IPv4 address, if any.
    pub v4: Option<std::net::Ipv4Addr>,
    /// Our IPv6 address, if any.
    pub v6: Option<std::net::Ipv6Addr>,
    /// The WireGuard listen port.
    pub udp_port: u16,
    /// The 802.1Q VLAN wgpmd's frames carry, if any.
    pub vlan: Option<u16>,
}

/// A port's steering setter (see [`Port::steering`]); errors are messages for the operator.
pub type Steerer = std::sync::Arc<dyn Fn(&Steering) -> Result<(), String> + Send + Sync>;

/// A reader of a port's extra counters as `(name, value)` pairs (see [`Port::extra_stats`]).
pub type ExtraStats = std::sync::Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// How an AF_PACKET port spreads received frames over its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fanout {
    /// By flow hash (`PACKET_FANOUT_HASH`, IP fragments reassembled first): one flow, one queue.
    #[default]
    Hash,
    /// Round robin (`PACKET_FANOUT_LB`): one flow over all queues.
    LoadBalance,
}

/// Options for [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOptions {
    /// Queue pairs (one per worker); at least 1.
    pub queues: usize,
    /// AF_PACKET fanout mode; ignored by the other backends.
    pub fanout: Fanout,
    /// MTU to set: TUN default 1420; AF_PACKET leaves the interface's MTU unless given; mem
    /// reports it (default 1500).
    pub mtu: Option<usize>,
    /// Ethernet address to give the interface (TAP); ignored by the other backends.
    pub mac: Option<[u8; 6]>,
}

impl Default for PortOptions {
    fn default() -> Self {
        PortOptions { queues: 1, fanout: Fanout::Hash, mtu: None, mac: None }
    }
}

/// Open a port from its string: "af_packet:IFACE", "af_xdp:IFACE", "tun:NAME", "tap:NAME" (a kernel TAP: Ethernet frames), "vhost-user:PATH" (a vhost-user backend serving the socket PATH; "vhost-user:PATH,client" connects to a frontend listening there), "vfio:BDF" (a virtio-net device bound to vfio-pci), "dpdk:PORT" (feature `dpdk`), "mem:NAME" (a mem port alone is a loopback: what is sent is received back on the same queue index) — errors name the string and the problem (unknown backend, missing name).
pub fn open(spec: &str, opts: &PortOptions) -> Result<Box<dyn Port>, PortError> {
    let Some((backend, name)) = spec.split_once(':') else {
        return Err(PortError::BadSpec { spec: spec.to_string() });
    };
    if opts.queues == 0 {
        return Err(PortError::BadOptions { spec: spec.to_string(), problem: "queues must be at least 1".into() });
    }
    let missing = |example| PortError::MissingName { spec: spec.to_string(), example };
    match backend {
        "af_packet" if name.is_empty() => Err(missing("af_packet:eth1")),
        "af_packet" => Ok(Box::new(crate::af_packet::AfPacketPort::open(spec, name, opts)?)),
        "af_xdp" if name.is_empty() => Err(missing("af_xdp:eth1")),
        "af_xdp" => Ok(Box::new(crate::af_xdp::AfXdpPort::open(spec, name, opts)?)),
        "tun" if name.is_empty() => Err(missing("tun:wg0")),
        "tun" => Ok(Box::new(crate::tun::TunPort::open(spec, name, opts)?)),
        "tap" if name.is_empty() => Err(missing("tap:wgx0")),
        "tap" => Ok(Box::new(crate::tun::TunPort::open_tap(spec, name, opts)?)),
        "vfio" if name.is_empty() => Err(missing("vfio:0000:00:02.0")),
        "vfio" => Ok(Box::new(crate::virtio::VirtioNetPort::open(spec, name, opts)?)),
        "vhost-user" if name.is_empty() => Err(missing("vhost-user:/run/wgpmd/vm0.sock")),
        "vhost-user" => {
            crate::vhost_user::check_path(spec, name)?;
            Ok(Box::new(crate::vhost_user::VhostUserPort::open(spec, name, opts)?))
        }
        "mem" if name.is_empty() => Err(missing("mem:test")),
        "mem" => {
            let mut p = crate::mem::loopback(name, opts.queues, crate::mem::DEFAULT_DEPTH);
            if let Some(mtu) = opts.mtu {
                p.set_mtu(mtu);
            }
            Ok(Box::new(p))
        }
        "dpdk" if name.is_empty() => Err(missing("dpdk:0")),
        #[cfg(feature = "dpdk")]
        "dpdk" => Ok(Box::new(crate::dpdk::DpdkPort::open(spec, name, opts)?)),
        #[cfg(not(feature = "dpdk"))]
        "dpdk" => Err(PortError::NotBuilt { spec: spec.to_string(), backend: "dpdk" }),
        _ => Err(PortError::UnknownBackend { spec: spec.to_string(), backend: backend.to_string() }),
    }
}

/// Check a port string's syntax without opening anything (`wgpmd run --check`): a known
/// backend, built into this binary, with a name of the right form (a Linux interface name for
/// `af_packet:`/`tun:`, a PCI address for `vfio:`), and an MTU the backend accepts. Whether the
/// interface, device or DPDK port exists is only known when it is opened. Returns the backend.
pub fn check_spec(spec: &str, opts: &PortOptions) -> Result<&'static str, PortError> {
    let Some((backend, name)) = spec.split_once(':') else {
        return Err(PortError::BadSpec { spec: spec.to_string() });
    };
    if opts.queues == 0 {
        return Err(PortError::BadOptions { spec: spec.to_string(), problem: "queues must be at least 1".into() });
    }
    let missing = |example| PortError::MissingName { spec: spec.to_string(), example };
    let ifname = |b: &'static str| {
        crate::sys::ioctl::IfName::new(name)
            .map(|_| b)
            .map_err(|reason| PortError::BadName { spec: spec.to_string(), reason })
    };
    match backend {
        "af_packet" if name.is_empty() => Err(missing("af_packet:eth1")),
        "af_packet" => ifname("af_packet"),
        "af_xdp" if name.is_empty() => Err(missing("af_xdp:eth1")),
        "af_xdp" => ifname("af_xdp"),
        "tun" if name.is_empty() => Err(missing("tun:wg0")),
        "tun" => {
            if let Some(mtu) = opts.mtu {
                check_mtu(spec, mtu, 0)?;
            }
            ifname("tun")
        }
        "tap" if name.is_empty() => Err(missing("tap:wgx0")),
        "tap" => ifname("tap"),
        "vhost-user" if name.is_empty() => Err(missing("vhost-user:/run/wgpmd/vm0.sock")),
        "vhost-user" => crate::vhost_user::check_path(spec, name).map(|_| "vhost-user"),
        "vfio" if name.is_empty() => Err(missing("vfio:0000:00:02.0")),
        "vfio" => vfio::parse_bdf(name)
            .map(|_| "vfio")
            .map_err(|e| PortError::BadOptions { spec: spec.to_string(), problem: e.to_string() }),
        "mem" if name.is_empty() => Err(missing("mem:test")),
        "mem" => Ok("mem"),
        "dpdk" if name.is_empty() => Err(missing("dpdk:0")),
        #[cfg(feature = "dpdk")]
        "dpdk" => Ok("dpdk"),
        #[cfg(not(feature = "dpdk"))]
        "dpdk" => Err(PortError::NotBuilt { spec: spec.to_string(), backend: "dpdk" }),
        _ => Err(PortError::UnknownBackend { spec: spec.to_string(), backend: backend.to_string() }),
    }
}

/// The port backends built into this binary (`wgpmd --version`).
pub const BACKENDS: &[&str] = &[
    "af_packet",
    "af_xdp",
    "tun",
    "tap",
    "vhost-user",
    "mem",
    "vfio (virtio-net)",
    #[cfg(feature = "dpdk")]
    "dpdk",
];

/// Check a requested MTU against what fits in a buffer. `l2` is the link header length the
/// backend adds (14 + 4 for Ethernet with a VLAN tag, 0 for TUN).
pub(crate) fn check_mtu(spec: &str, mtu: usize, l2: usize) -> Result<(), PortError> {
    let max = crate::buffer::MAX_DATA - l2;
    if !(68..=max).contains(&mtu) {
        return Err(PortError::BadOptions {
            spec: spec.to_string(),
            problem: format!(
                "MTU {mtu} out of range 68..={max} (a packet plus headers must fit a {}-byte buffer with room to seal in place)",
                crate::buffer::BUF_SIZE
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        match open(spec, &PortOptions::default()) {
            Ok(_) => panic!("{spec} opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_strings_are_named() {
        assert_eq!(
            err("eth0"),
            "eth0: expected BACKEND:NAME, e.g. af_packet:eth1, tun:wg0, vfio:0000:00:02.0 or mem:test"
        );
        assert_eq!(
            err("xdp:eth0"),
            "xdp:eth0: unknown backend `xdp` (known: af_packet, af_xdp, tun, tap, vhost-user, mem, vfio, dpdk)"
        );
        assert_eq!(err("vfio:"), "vfio:: missing interface name after the colon (e.g. vfio:0000:00:02.0)");
        assert!(err("vfio:00:99.0").contains("no PCI device 0000:00:99.0"), "{}", err("vfio:00:99.0"));
        assert!(err("vfio:eth0").contains("not a PCI address"), "{}", err("vfio:eth0"));
        assert_eq!(err("af_packet:"), "af_packet:: missing interface name after the colon (e.g. af_packet:eth1)");
        assert_eq!(err("tun:"), "tun:: missing interface name after the colon (e.g. tun:wg0)");
        assert!(err("mem:").contains("missing interface name"));
        assert_eq!(err("tun:a234567890123456"), "tun:a234567890123456: invalid interface name: longer than 15 bytes");
        assert!(err("af_packet:a/b").contains("invalid interface name"));
        let e = open("mem:x", &PortOptions { queues: 0, ..Default::default() }).err().unwrap();
        assert_eq!(e.to_string(), "mem:x: queues must be at least 1");
        let e = open("tun:x", &PortOptions { mtu: Some(9000), ..Default::default() }).err().unwrap();
        assert!(e.to_string().starts_with("tun:x: MTU 9000 out of range 68..=1888"), "{e}");
    }

    #[test]
    fn check_spec_knows_the_syntax_without_opening() {
        let o = PortOptions::default();
        let e = |s: &str| check_spec(s, &o).unwrap_err().to_string();
        assert_eq!(check_spec("af_packet:no-such-if0", &o).unwrap(), "af_packet", "not opened: need not exist");
        assert_eq!(check_spec("af_xdp:no-such-if0", &o).unwrap(), "af_xdp", "not opened: need not exist");
        assert_eq!(check_spec("tun:wg7", &o).unwrap(), "tun");
        assert_eq!(check_spec("vfio:00:1f.7", &o).unwrap(), "vfio", "not opened: need not exist");
        assert_eq!(check_spec("mem:x", &o).unwrap(), "mem");
        assert_eq!(e("eth0"), err("eth0"));
        assert_eq!(e("xdp:eth0"), err("xdp:eth0"));
        assert_eq!(e("tun:a234567890123456"), err("tun:a234567890123456"));
        assert!(e("af_packet:a/b").contains("invalid interface name"));
        assert!(e("vfio:eth0").contains("not a PCI address"), "{}", e("vfio:eth0"));
        assert_eq!(e("af_packet:"), err("af_packet:"));
        let big = PortOptions { mtu: Some(9000), ..Default::default() };
        assert!(check_spec("tun:x", &big).unwrap_err().to_string().contains("MTU 9000 out of range"));
        #[cfg(not(feature = "dpdk"))]
        assert!(e("dpdk:0").contains("not built into this binary"));
        #[cfg(feature = "dpdk")]
        assert_eq!(check_spec("dpdk:0", &o).unwrap(), "dpdk");
    }

    #[test]
    fn mem_string_opens_a_loopback() {
        let mut p = open("mem:lo0", &PortOptions { queues: 2, ..Default::default() }).unwrap();
        assert_eq!((p.info().kind, p.info().name.as_str(), p.num_queues()), ("mem", "lo0", 2));
        assert!(p.link_up());
        let pool = Pool::new("t", 8).unwrap();
        let mut q1 = p.take_queue(1).unwrap();
        assert!(p.take_queue(1).is_none());
        assert!(p.take_queue(2).is_none());
        let mut b = pool.alloc().unwrap();
        b.append(3).unwrap().copy_from_slice(b"abc");
        let mut v = vec![b];
        assert_eq!(q1.tx_burst(&mut v), 1);
        let mut out = Vec::new();
        assert_eq!(q1.rx_burst(&pool, &mut out, 32), 1);
        assert_eq!(out[0].data(), b"abc");
        let mut q0 = p.take_queue(0).unwrap();
        assert_eq!(q0.rx_burst(&pool, &mut out, 32), 0, "loopback stays on the queue index");
    }
}
