//! `tun:NAME`: a multi-queue TUN interface (IP packets), the inner port; `tap:NAME`: the same
//! with `IFF_TAP` (Ethernet frames), the WAN exception path to the kernel.
//!
//! One `/dev/net/tun` fd per queue, each attached with `TUNSETIFF` (`IFF_TUN | IFF_NO_PI |
//! IFF_MULTI_QUEUE`; a TAP `IFF_TAP` instead of `IFF_TUN`) to the same name, non-blocking. The interface is not persistent: it exists
//! while at least one queue fd is open, so dropping the port and all its queues removes it.
//! On open the MTU is set (`PortOptions::mtu`, default 1420, WireGuard's; a TAP: 1500), a
//! TAP's MAC is set when `PortOptions::mac` gives one, and the link is brought up.
//!
//! **Offloads**: the fds are opened with `IFF_VNET_HDR`, and `TUNSETOFFLOAD` offers the kernel
//! checksum offload, TSO4/TSO6 and, where the kernel has it (6.2+), USO4/USO6. Every packet
//! then crosses the fd behind a `virtio_net_hdr`:
//! - **read**: one `readv` into the header, a buffer (at `HEADROOM`) and a 64 KiB spill area. A
//!   packet that fits the buffer stays there (its partial checksum completed when the header
//!   says `NEEDS_CSUM`); a TCP/UDP super-packet (up to 64 KiB) is segmented into MTU-sized
//!   packets, each in its own buffer with lengths, IPv4 identification and header checksum, TCP
//!   sequence and flags and the L4 checksum complete ([`crate::gso::segment`]), delivered over
//!   this and the next bursts. Counted in `rx_gso_frames` / `rx_gso_segments`.
//! - **write**: consecutive TCP segments of one flow in the burst (same addresses, ports, ack,
//!   header and options, contiguous sequence numbers, equal payload sizes but the last, at most
//!   64 and 64 KiB) go to the kernel as one super-packet with `GSO_TCPV4/6` and a partial
//!   checksum, in one `writev` of the first packet and the other packets' payloads (no copy);
//!   GRO for the kernel's TCP. Counted in `tx_gro_frames` / `tx_gro_packets`. Anything else is
//!   written alone behind an all-zero header.
//!
//! Without `IFF_VNET_HDR` support (never seen on Linux 4.x+) the fds fall back to one plain
//! packet per `read(2)`/`write(2)`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::gso::{self, SegError, VnetHdr, VNET_HDR_LEN};
use crate::port::{check_mtu, Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::ioctl::{self, IfName};

/// MTU of a TUN port when `PortOptions::mtu` is `None` (the wg-quick default).
pub const DEFAULT_MTU: usize = 1420;

/// MTU of a TAP port when `PortOptions::mtu` is `None`.
pub const TAP_DEFAULT_MTU: usize = 1500;

/// A TUN (or TAP) port.
pub struct TunPort {
    info: PortInfo,
    name: IfName,
    ctl: OwnedFd,
    queues: Vec<Option<TunQueue>>,
}

/// `TUN_F_*` offload flags (linux/if_tun.h).
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;
/// The largest packet the kernel hands over with TSO/USO.
const MAX_SUPER: usize = 65536;

/// One queue (fd) of a [`TunPort`].
pub struct TunQueue {
    file: File,
    stats: QueueStats,
    /// The fd carries a `virtio_net_hdr` per packet.
    vnet: bool,
    /// Where a read spills past the buffer (super-packets).
    spill: Vec<u8>,
    /// A super-packet made contiguous for segmentation.
    whole: Vec<u8>,
    /// Segments not yet delivered.
    pending: VecDeque<Buffer>,
    /// The interface's name, for the fault message.
    name: String,
    /// A read or write said the queue is no longer attached to an interface (`EBADFD`: the
    /// TUN was deleted from outside, `ip link del`). Reported by [`Queue::health`].
    detached: bool,
}

impl TunPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<TunPort, PortError> {
        Self::open_kind(spec, name, opts, false)
    }

    /// `tap:NAME`: Ethernet frames, the MAC from `opts.mac` (else the kernel's random one).
    pub(crate) fn open_tap(spec: &str, name: &str, opts: &PortOptions) -> Result<TunPort, PortError> {
        Self::open_kind(spec, name, opts, true)
    }

    fn open_kind(spec: &str, name: &str, opts: &PortOptions, tap: bool) -> Result<TunPort, PortError> {
        let mut name = IfName::new(name).map_err(|reason| PortError::BadName { spec: spec.to_string(), reason })?;
        let mtu = opts.mtu.unwrap_or(if tap { TAP_DEFAULT_MTU } else { DEFAULT_MTU });
        check_mtu(spec, mtu, if tap { 18 } else { 0 })?;
        let os = |op| move |e| PortError::os(spec, op, e);
        // A TAP (the exception path) carries Ethernet frames as they are: no vnet header, no
        // offloads (segmentation here parses IP packets).
        let kind = if tap { libc::IFF_TAP } else { libc::IFF_TUN | libc::IFF_VNET_HDR };
        let flags = kind | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        let mut queues = Vec::with_capacity(opts.queues);
        for _ in 0..opts.queues {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/dev/net/tun")
                .map_err(os("open /dev/net/tun"))?;
            // The first attach may resolve a "%d" template; the others use the result.
            name = ioctl::tun_set_iff(file.as_fd(), &name, flags).map_err(os("TUNSETIFF"))?;
            // USO needs Linux 6.2; without it, TSO and checksum offload only.
            let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            if !tap && ioctl::tun_set_offload(file.as_fd(), base | TUN_F_USO4 | TUN_F_USO6).is_err() {
                ioctl::tun_set_offload(file.as_fd(), base).map_err(os("TUNSETOFFLOAD"))?;
            }
            queues.push(Some(TunQueue {
                file,
                stats: QueueStats::default(),
                vnet: !tap,
                spill: vec![0; MAX_SUPER],
                whole: Vec::with_capacity(MAX_SUPER),
                pending: VecDeque::new(),
                name: name.as_str().to_string(),
                detached: false,
            }));
        }
        let ctl = ioctl::control_socket().map_err(os("socket(AF_INET)"))?;
        ioctl::set_mtu(ctl.as_fd(), &name, mtu).map_err(os("SIOCSIFMTU"))?;
        let mut mac = None;
        if tap {
            if let Some(m) = opts.mac {
                ioctl::set_hw_addr(ctl.as_fd(), &name, m).map_err(os("SIOCSIFHWADDR"))?;
            }
            mac = Some(ioctl::hw_addr(ctl.as_fd(), &name).map_err(os("SIOCGIFHWADDR"))?.1);
        }
        let f = ioctl::flags(ctl.as_fd(), &name).map_err(os("SIOCGIFFLAGS"))?;
        if f & libc::IFF_UP == 0 {
            ioctl::set_flags(ctl.as_fd(), &name, f | libc::IFF_UP).map_err(os("SIOCSIFFLAGS"))?;
        }
        let info = PortInfo { name: name.as_str(), mac, mtu, kind: if tap { "tap" } else { "tun" } };
        Ok(TunPort { info, name, ctl, queues })
    }
}

impl Port for TunPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        self.queues.get_mut(q)?.take().map(|q| Box::new(q) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        let up = libc::IFF_UP | libc::IFF_RUNNING;
        ioctl::flags(self.ctl.as_fd(), &self.name).is_ok_and(|f| f & up == up)
    }
}

impl TunQueue {
    /// One packet from the fd into `out`/`pending`; false when the fd has nothing (or failed).
    fn read_one(&mut self, pool: &Pool, out: &mut Vec<Buffer>) -> Result<usize, ()> {
        let Some(mut b) = pool.alloc() else { return Err(()) };
        let mut hdr = [0u8; VNET_HDR_LEN];
        let room = b.data_and_tailroom_mut();
        let cap = room.len();
        let r = self.file.read_vectored(&mut [
            IoSliceMut::new(&mut hdr),
            IoSliceMut::new(room),
            IoSliceMut::new(&mut self.spill),
        ]);
        let len = match r {
            Ok(n) if n <= VNET_HDR_LEN => {
                self.stats.rx_errors += 1;
                return Ok(0);
            }
            Ok(n) => n - VNET_HDR_LEN,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(0),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(()),
            Err(e) => {
                self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                self.stats.rx_errors += 1;
                return Err(());
            }
        };
        let Some(h) = VnetHdr::parse(&hdr) else { return Ok(0) };
        if h.gso_type & 0x7f != 0 {
            self.whole.clear();
            let room = b.data_and_tailroom_mut();
            self.whole.extend_from_slice(&room[..len.min(cap)]);
            if len > cap {
                self.whole.extend_from_slice(&self.spill[..len - cap]);
            }
            drop(b);
            return match gso::segment(&self.whole, &h, pool, &mut self.pending) {
                Ok(k) => {
                    self.stats.rx_gso_frames += 1;
                    self.stats.rx_gso_segments += k as u64;
                    self.stats.rx_packets += k as u64;
                    self.stats.rx_bytes += len as u64;
                    Ok(0)
                }
                Err(SegError::PoolDry) => {
                    self.stats.rx_dropped += 1;
                    Err(())
                }
                Err(SegError::Malformed) => {
                    self.stats.rx_errors += 1;
                    Ok(0)
                }
            };
        }
        // A plain packet: it must fit the buffer with room to seal in place.
        if len > crate::buffer::MAX_DATA || b.set_len(len).is_err() {
            self.stats.rx_dropped += 1;
            return Ok(0);
        }
        if h.flags & gso::F_NEEDS_CSUM != 0
            && !gso::complete_csum(b.data_mut(), usize::from(h.csum_start), usize::from(h.csum_offset))
        {
            self.stats.rx_errors += 1;
            return Ok(0);
        }
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += len as u64;
        out.push(b);
        Ok(1)
    }

    /// Write `bufs[at..]` starting with a coalesced group if the first packets make one;
    /// returns how many buffers were taken, or None when the fd is full.
    fn write_group(&mut self, bufs: &mut [Buffer]) -> Option<usize> {
        let mut k = 1;
        let mut total = bufs[0].len();
        let first = gso::tcp_seg(bufs[0].data());
        if let Some(fs) = first {
            let mut last = fs;
            while k < bufs.len() && k < gso::MAX_COALESCE {
                match gso::tcp_seg(bufs[k].data()) {
                    Some(ns) if gso::continues((bufs[0].data(), fs), last, (bufs[k].data(), ns), total) => {
                        total += gso::payload_len(ns);
                        last = ns;
                        k += 1;
                    }
                    _ => break,
                }
            }
            if k > 1 {
                let psh = gso::flags(last) & 0x08 != 0;
                let vh = gso::merge_header(bufs[0].data_mut(), fs, total, gso::payload_len(fs), psh);
                let hdr = vh.bytes();
                let mut iov = Vec::with_capacity(k + 1);
                iov.push(IoSlice::new(&hdr));
                iov.push(IoSlice::new(bufs[0].data()));
                for b in &bufs[1..k] {
                    if let Some(s) = gso::tcp_seg(b.data()) {
                        iov.push(IoSlice::new(gso::payload(b.data(), s)));
                    }
                }
                match self.file.write_vectored(&iov) {
                    Ok(n) if n == VNET_HDR_LEN + total => {
                        self.stats.tx_packets += k as u64;
                        self.stats.tx_bytes += total as u64;
                        self.stats.tx_gro_frames += 1;
                        self.stats.tx_gro_packets += k as u64;
                    }
                    // The first packet's header is rewritten: the group cannot be retried.
                    Ok(_) => self.stats.tx_dropped += k as u64,
                    Err(e) => {
                        self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                        self.stats.tx_dropped += k as u64;
                    }
                }
                return Some(k);
            }
        }
        let zero = [0u8; VNET_HDR_LEN];
        match self.file.write_vectored(&[IoSlice::new(&zero), IoSlice::new(bufs[0].data())]) {
            Ok(_) => {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += bufs[0].len() as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return None,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return None,
            // Refused for itself (not IPv4/IPv6, too short): take it, count it.
            Err(e) => {
                self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                self.stats.tx_errors += 1;
            }
        }
        Some(1)
    }
}

impl Queue for TunQueue {
    fn rx_burst(&mut self, pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        if self.vnet {
            let mut n = 0;
            while n < max {
                if let Some(b) = self.pending.pop_front() {
                    out.push(b);
                    n += 1;
                    continue;
                }
                match self.read_one(pool, out) {
                    Ok(k) => n += k,
                    Err(()) => break,
                }
            }
            return n;
        }
        let mut n = 0;
        while n < max {
            let Some(mut b) = pool.alloc() else { break };
            let room = b.data_and_tailroom_mut();
            let cap = room.len();
            match self.file.read(room) {
                // A read that fills the buffer may have been cut short (TUN/TAP truncate silently).
                Ok(len) if len == 0 || len >= cap => self.stats.rx_errors += 1,
                Ok(len) => {
                    if b.set_len(len).is_ok() {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += len as u64;
                        out.push(b);
                        n += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                    self.stats.rx_errors += 1;
                    break;
                }
            }
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        if self.vnet {
            let mut taken = 0;
            while taken < bufs.len() {
                match self.write_group(&mut bufs[taken..]) {
                    Some(k) => taken += k,
                    None => break,
                }
            }
            bufs.drain(..taken);
            return taken;
        }
        let mut taken = 0;
        for b in bufs.iter() {
            match self.file.write(b.data()) {
                Ok(_) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += b.len() as u64;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                // Refused for itself (TUN: not IPv4/IPv6; too short): take it, count it.
                Err(e) => {
                    self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                    self.stats.tx_errors += 1
                }
            }
            taken += 1;
        }
        bufs.drain(..taken);
        taken
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }

    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // Segments already read wait in `pending`: not idle.
        self.pending.is_empty().then(|| self.file.as_fd())
    }

    /// A queue whose interface was deleted from outside (`ip link del`) stays detached: the
    /// daemon stops with this message rather than run on without its inner side.
    fn health(&self) -> Result<(), String> {
        if self.detached {
            Err(format!(
                "TUN interface {} was deleted from outside (its queue reads EBADFD); restart wgpmd to recreate it",
                self.name
            ))
        } else {
            Ok(())
        }
    }
}
