//! `af_packet:IFACE`: any Ethernet interface the kernel drives, through AF_PACKET sockets.
//!
//! One socket per queue, all bound to the interface (`ETH_P_ALL`) and joined in one
//! `PACKET_FANOUT` group so the kernel spreads received frames over the queues: by flow hash
//! (IP fragments reassembled first, `PACKET_FANOUT_FLAG_DEFRAG`) or round robin. The group id
//! is picked by the kernel (`PACKET_FANOUT_FLAG_UNIQUEID`) for the first socket and read back
//! for the others, so two ports never share a group by accident.
//!
//! **Receive**: a TPACKET_V3 mmap ring per socket (blocks of frames, see `sys::packet`). Each
//! frame is copied into a [`Buffer`] at `HEADROOM`; a VLAN tag the kernel took out of the frame
//! (it always does, into metadata) is put back, so the data plane sees the frame as on the wire.
//! A block goes back to the kernel once every frame in it has been copied. Frames this host
//! sent are not received (`PACKET_IGNORE_OUTGOING`, and `sll_pkttype` is checked as well).
//!
//! **Transmit**: `sendmmsg(2)`, up to 64 frames per call, straight from the buffers. A TX ring
//! would save no copy (the frame must be copied into the ring instead of by the kernel), needs
//! its own mapping and a completion scan per slot, and reports failures asynchronously;
//! `sendmmsg` gives the DPDK contract directly: the count it returns is what was taken, the rest
//! stay with the caller. `PACKET_QDISC_BYPASS` is not set, so `tc` still applies to our frames.
//!
//! **GSO frames**: the sockets set `PACKET_VNET_HDR` (when the kernel allows it), so every frame
//! comes with a `virtio_net_hdr`. A UDP GSO frame (`VIRTIO_NET_HDR_GSO_UDP_L4`: a sender's
//! `UDP_SEGMENT` batch crossing a veth, as wireguard-go sends, or a UDP GRO aggregate) is split
//! here into its datagrams, one buffer each, with the IPv4 total length, identification and
//! header checksum, the IPv6 payload length and the UDP length of each datagram rewritten; the UDP
//! checksum is set to 0 (wgpmd does not verify it: every WireGuard message is authenticated, and
//! the datagrams never leave wgpmd). Datagrams split from one frame wait in the queue and are
//! delivered over the next bursts (`max` holds). Counted in `rx_gso_frames` / `rx_gso_segments`.
//! Other frames longer than a buffer (`BUF_SIZE - HEADROOM` = 1920 bytes: jumbo MTUs, TCP
//! aggregates, which are never wgpmd's) are dropped and counted in `rx_dropped`. Transmitted
//! frames carry an all-zero header (no offload).

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::port::{check_mtu, Fanout, Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::ioctl::{self, IfName};
use crate::sys::packet::{PacketSocket, RxRing, SEND_BATCH, VNET_HDR_LEN};
use std::collections::VecDeque;

/// Bytes per ring block (the kernel retires a block when full or after `RETIRE_MS`).
const BLOCK_SIZE: usize = 1 << 18;
/// Blocks per ring: 4 MiB per queue.
const BLOCK_NR: usize = 16;
/// Longest a partly filled block waits before the kernel hands it over.
const RETIRE_MS: u32 = 1;
/// Link-layer bytes on top of the MTU: Ethernet header and one VLAN tag.
const L2_MAX: usize = 18;

/// An AF_PACKET port.
pub struct AfPacketPort {
    info: PortInfo,
    name: IfName,
    ctl: OwnedFd,
    queues: Vec<Option<AfPacketQueue>>,
}

/// One queue (socket + rx ring) of an [`AfPacketPort`].
pub struct AfPacketQueue {
    sock: PacketSocket,
    ring: RxRing,
    cur: Cursor,
    stats: QueueStats,
    kernel_drops: Cell<u64>,
    /// Frames carry a `virtio_net_hdr` (`PACKET_VNET_HDR` is set).
    vnet: bool,
    /// Datagrams split from a GSO frame, not yet delivered.
    pending: VecDeque<Buffer>,
}

/// Where the rx walk stands: block `block`, and if `left > 0`, the frame at `off` in it.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    block: usize,
    left: u32,
    off: usize,
}

impl AfPacketPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<AfPacketPort, PortError> {
        let name = IfName::new(name).map_err(|reason| PortError::BadName { spec: spec.to_string(), reason })?;
        let os = |op| move |e| PortError::os(spec, op, e);
        let ctl = ioctl::control_socket().map_err(os("socket(AF_INET)"))?;
        let ifindex = ioctl::if_index(ctl.as_fd(), &name).map_err(os("SIOCGIFINDEX"))?;
        let (hw, mac) = ioctl::hw_addr(ctl.as_fd(), &name).map_err(os("SIOCGIFHWADDR"))?;
        if hw != libc::ARPHRD_ETHER {
            return Err(PortError::NotEthernet { spec: spec.to_string(), hw_type: hw });
        }
        if let Some(want) = opts.mtu {
            check_mtu(spec, want, L2_MAX)?;
            if ioctl::mtu(ctl.as_fd(), &name).map_err(os("SIOCGIFMTU"))? != want {
                ioctl::set_mtu(ctl.as_fd(), &name, want).map_err(os("SIOCSIFMTU"))?;
            }
        }
        let mtu = ioctl::mtu(ctl.as_fd(), &name).map_err(os("SIOCGIFMTU"))?;

        let mode = match opts.fanout {
            Fanout::Hash => libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_DEFRAG,
            Fanout::LoadBalance => libc::PACKET_FANOUT_LB,
        };
        let mut group = None;
        let mut queues = Vec::with_capacity(opts.queues);
        for _ in 0..opts.queues {
            let sock = PacketSocket::new().map_err(os("socket(AF_PACKET)"))?;
            sock.set_version_v3().map_err(os("PACKET_VERSION"))?;
            // Best effort: without it GSO frames are dropped as too long, as before.
            let vnet = sock.set_vnet_hdr().is_ok();
            let ring = sock.rx_ring(BLOCK_SIZE, BLOCK_NR, RETIRE_MS).map_err(os("PACKET_RX_RING"))?;
            // Best effort (Linux 4.20+): the rx walk also drops PACKET_OUTGOING frames.
            let _ = sock.set_ignore_outgoing();
            sock.bind(ifindex).map_err(os("bind"))?;
            match group {
                None => {
                    sock.join_fanout(0, mode | libc::PACKET_FANOUT_FLAG_UNIQUEID).map_err(os("PACKET_FANOUT"))?;
                    group = Some(sock.fanout_id().map_err(os("PACKET_FANOUT"))?);
                }
                Some(id) => sock.join_fanout(id, mode).map_err(os("PACKET_FANOUT"))?,
            }
            queues.push(Some(AfPacketQueue {
                sock,
                ring,
                cur: Cursor::default(),
                stats: QueueStats::default(),
                kernel_drops: Cell::new(0),
                vnet,
                pending: VecDeque::new(),
            }));
        }
        let info = PortInfo { name: name.as_str(), mac: Some(mac), mtu, kind: "af_packet" };
        Ok(AfPacketPort { info, name, ctl, queues })
    }
}

impl Port for AfPacketPort {
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

impl Queue for AfPacketQueue {
    fn rx_burst(&mut self, pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(b) = self.pending.pop_front() else { break };
            out.push(b);
            n += 1;
        }
        if n == max {
            return n;
        }
        let mut w = Walk { ring: &self.ring, cur: &mut self.cur, stats: &mut self.stats, vnet: self.vnet };
        n + rx_walk(&mut w, pool, out, &mut self.pending, max - n)
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        let mut taken = 0;
        let mut frames: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
        while taken < bufs.len() {
            let chunk = &bufs[taken..bufs.len().min(taken + SEND_BATCH)];
            for (f, b) in frames.iter_mut().zip(chunk) {
                *f = b.data();
            }
            match self.sock.send_batch(&frames[..chunk.len()], self.vnet) {
                Ok(0) => break,
                Ok(k) => {
                    for b in &chunk[..k] {
                        self.stats.tx_packets += 1;
                        self.stats.tx_bytes += b.len() as u64;
                    }
                    taken += k;
                }
                Err(e) if is_transient(&e) => break,
                // The first frame was refused for itself (too short, too long, link gone):
                // take it and count it, so it cannot block the queue.
                Err(_) => {
                    self.stats.tx_errors += 1;
                    taken += 1;
                }
            }
        }
        bufs.drain(..taken);
        taken
    }

    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // POLLIN once a block is handed to user space; datagrams split earlier wait in `pending`.
        self.pending.is_empty().then(|| self.sock.as_fd())
    }

    fn stats(&self) -> QueueStats {
        if let Ok(d) = self.sock.take_drops() {
            self.kernel_drops.set(self.kernel_drops.get() + u64::from(d));
        }
        let mut s = self.stats;
        s.rx_dropped += self.kernel_drops.get();
        s
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR))
}

/// What the rx walk works on.
struct Walk<'a> {
    ring: &'a RxRing,
    cur: &'a mut Cursor,
    stats: &'a mut QueueStats,
    vnet: bool,
}

/// `virtio_net_hdr.gso_type` of a UDP segmentation frame (`VIRTIO_NET_HDR_GSO_UDP_L4`).
const GSO_UDP_L4: u8 = 5;

/// Copy up to `max` frames out of the ring into buffers from `pool`, returning blocks to the
/// kernel as they are emptied. Stops early when the ring has nothing ready or the pool is dry
/// (the frame stays in the ring for the next call). A GSO frame's datagrams beyond `max` go to
/// `pending`.
fn rx_walk(w: &mut Walk<'_>, pool: &Pool, out: &mut Vec<Buffer>, pending: &mut VecDeque<Buffer>, max: usize) -> usize {
    let (ring, cur) = (w.ring, &mut *w.cur);
    let stats = &mut *w.stats;
    let mut n = 0;
    while n < max {
        if cur.left == 0 {
            if ring.block_status(cur.block) & libc::TP_STATUS_USER == 0 {
                break;
            }
            match ring.block_hdr(cur.block) {
                Some(h) if h.num_pkts > 0 => {
                    cur.left = h.num_pkts;
                    cur.off = h.first_pkt;
                }
                _ => {
                    next_block(ring, cur);
                    continue;
                }
            }
        }
        let Some(f) = ring.frame_hdr(cur.block, cur.off) else {
            // Offsets outside the block: count what we cannot read, hand the block back.
            stats.rx_errors += u64::from(cur.left);
            next_block(ring, cur);
            continue;
        };
        let vlan = f.status & libc::TP_STATUS_VLAN_VALID != 0 && f.snaplen >= 12;
        let total = f.snaplen + if vlan { 4 } else { 0 };
        let start = cur.off.saturating_add(f.mac);
        let mut vh = [0u8; VNET_HDR_LEN];
        let gso = w.vnet
            && start >= VNET_HDR_LEN
            && ring.copy_out(cur.block, start - VNET_HDR_LEN, &mut vh)
            && vh[1] & 0x7f != 0;
        if f.pkttype == libc::PACKET_OUTGOING {
            // Our own transmission looped back to the tap: not a received frame.
        } else if f.snaplen < f.len || f.snaplen == 0 {
            stats.rx_errors += 1;
        } else if gso && vh[1] & 0x7f == GSO_UDP_L4 && total > crate::buffer::BUF_SIZE - crate::buffer::HEADROOM {
            let gso_size = u16::from_le_bytes([vh[4], vh[5]]) as usize;
            let frame = FrameAt { block: cur.block, start, total, vlan: vlan.then(|| vlan_tag(&f)) };
            let mut segs = Vec::new();
            match split_udp_gso(ring, &frame, gso_size, pool, &mut segs) {
                Ok(()) => {
                    stats.rx_gso_frames += 1;
                    stats.rx_gso_segments += segs.len() as u64;
                    for b in segs {
                        stats.rx_packets += 1;
                        stats.rx_bytes += b.len() as u64;
                        if n < max {
                            out.push(b);
                            n += 1;
                        } else {
                            pending.push_back(b);
                        }
                    }
                }
                Err(Split::PoolDry) if segs.is_empty() => {
                    // Nothing taken yet: leave the frame in the ring for the next call.
                    break;
                }
                Err(Split::PoolDry) => stats.rx_dropped += 1,
                Err(Split::Malformed) => stats.rx_errors += 1,
            }
        } else if total > crate::buffer::BUF_SIZE - crate::buffer::HEADROOM {
            stats.rx_dropped += 1;
        } else {
            let Some(mut b) = pool.alloc() else { break };
            let room = b.data_and_tailroom_mut();
            let copied = if vlan {
                let (tpid, tci) = vlan_tag(&f);
                room[12..14].copy_from_slice(&tpid.to_be_bytes());
                room[14..16].copy_from_slice(&tci.to_be_bytes());
                ring.copy_out(cur.block, start, &mut room[..12])
                    && ring.copy_out(cur.block, start.saturating_add(12), &mut room[16..total])
            } else {
                ring.copy_out(cur.block, start, &mut room[..total])
            };
            if copied && b.set_len(total).is_ok() {
                stats.rx_packets += 1;
                stats.rx_bytes += total as u64;
                out.push(b);
                n += 1;
            } else {
                stats.rx_errors += 1;
            }
        }
        cur.left -= 1;
        if cur.left == 0 {
            next_block(ring, cur);
        } else if f.next_offset == 0 {
            stats.rx_errors += u64::from(cur.left);
            next_block(ring, cur);
        } else {
            cur.off = cur.off.saturating_add(f.next_offset);
        }
    }
    n
}

/// The 802.1Q tag the kernel took out of a frame: (TPID, TCI).
fn vlan_tag(f: &crate::sys::packet::FrameHdr) -> (u16, u16) {
    let tpid = if f.status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { f.vlan_tpid } else { 0x8100 };
    (tpid, f.vlan_tci)
}

/// A frame in the ring: block, offset of its first byte, length as on the wire (with the tag),
/// and the tag the kernel took out, if any.
struct FrameAt {
    block: usize,
    start: usize,
    total: usize,
    vlan: Option<(u16, u16)>,
}

impl FrameAt {
    /// Copy `dst.len()` bytes at wire offset `off` (tag reinserted) out of the ring.
    fn read(&self, ring: &RxRing, off: usize, dst: &mut [u8]) -> bool {
        let Some((tpid, tci)) = self.vlan else {
            return ring.copy_out(self.block, self.start + off, dst);
        };
        let tag = [(tpid >> 8) as u8, tpid as u8, (tci >> 8) as u8, tci as u8];
        let mut i = 0;
        while i < dst.len() {
            let o = off + i;
            if o < 12 {
                let k = (12 - o).min(dst.len() - i);
                if !ring.copy_out(self.block, self.start + o, &mut dst[i..i + k]) {
                    return false;
                }
                i += k;
            } else if o < 16 {
                dst[i] = tag[o - 12];
                i += 1;
            } else {
                return ring.copy_out(self.block, self.start + o - 4, &mut dst[i..]);
            }
        }
        true
    }
}

enum Split {
    PoolDry,
    Malformed,
}

/// Split a UDP GSO frame into datagrams of `gso_size` payload bytes (the last one shorter).
fn split_udp_gso(
    ring: &RxRing,
    frame: &FrameAt,
    gso_size: usize,
    pool: &Pool,
    out: &mut Vec<Buffer>,
) -> Result<(), Split> {
    const MAX_HDR: usize = 18 + 60 + 8;
    let mut hdr = [0u8; MAX_HDR];
    let h = frame.total.min(MAX_HDR);
    if !frame.read(ring, 0, &mut hdr[..h]) {
        return Err(Split::Malformed);
    }
    let l3 = if frame.vlan.is_some() || matches!(hdr[12..14], [0x81, 0x00] | [0x88, 0xa8]) { 18 } else { 14 };
    if h < l3 + 20 {
        return Err(Split::Malformed);
    }
    let v4 = hdr[l3 - 2..l3] == [0x08, 0x00];
    let v6 = hdr[l3 - 2..l3] == [0x86, 0xdd];
    let iphl = if v4 && hdr[l3] >> 4 == 4 && hdr[l3 + 9] == 17 {
        usize::from(hdr[l3] & 0x0f) * 4
    } else if v6 && h >= l3 + 48 && hdr[l3 + 6] == 17 {
        40
    } else {
        return Err(Split::Malformed);
    };
    let hlen = l3 + iphl + 8;
    if iphl < 20 || hlen > h || gso_size == 0 || frame.total <= hlen {
        return Err(Split::Malformed);
    }
    let payload = frame.total - hlen;
    if hlen + gso_size.min(payload) > crate::buffer::BUF_SIZE - crate::buffer::HEADROOM {
        return Err(Split::Malformed);
    }
    let id0 = u16::from_be_bytes([hdr[l3 + 4], hdr[l3 + 5]]);
    let mut off = 0;
    let mut i: u16 = 0;
    while off < payload {
        let len = gso_size.min(payload - off);
        let Some(mut b) = pool.alloc() else { return Err(Split::PoolDry) };
        let room = b.data_and_tailroom_mut();
        room[..hlen].copy_from_slice(&hdr[..hlen]);
        if !frame.read(ring, hlen + off, &mut room[hlen..hlen + len]) {
            return Err(Split::Malformed);
        }
        let ip = &mut room[l3..l3 + iphl];
        if v4 {
            ip[2..4].copy_from_slice(&((iphl + 8 + len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id0.wrapping_add(i).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = ipv4_checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            ip[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        }
        let udp = &mut room[l3 + iphl..hlen];
        udp[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        if b.set_len(hlen + len).is_err() {
            return Err(Split::Malformed);
        }
        out.push(b);
        off += len;
        i = i.wrapping_add(1);
    }
    Ok(())
}

/// The IPv4 header checksum of `h` (its checksum field zeroed).
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Give the current block back to the kernel and move to the next one.
fn next_block(ring: &RxRing, cur: &mut Cursor) {
    ring.release(cur.block);
    cur.block = (cur.block + 1) % ring.block_nr().max(1);
    cur.left = 0;
    cur.off = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(ring: &RxRing, cur: &mut Cursor, pool: &Pool, max: usize) -> (Vec<Buffer>, QueueStats) {
        let mut out = Vec::new();
        let mut st = QueueStats::default();
        let mut w = Walk { ring, cur, stats: &mut st, vnet: false };
        rx_walk(&mut w, pool, &mut out, &mut VecDeque::new(), max);
        (out, st)
    }

    #[test]
    fn walks_blocks_in_order_and_releases_each_after_its_last_frame() {
        let ring = RxRing::mock(4096, 3);
        let pool = Pool::new("t", 16).unwrap();
        // Block 0: frames "a" and "bb"; block 1: "ccc".
        let f1 = 48;
        let f2 = ring.mock_frame(0, f1, 0, b"a-frame-0000", 0, None, 0);
        ring.mock_frame(0, f1, (f2 - f1) as u32, b"a-frame-0000", 0, None, 0);
        ring.mock_frame(0, f2, 0, b"bb-frame-11111", 0, None, 0);
        ring.mock_publish(0, 2, f1);
        ring.mock_frame(1, 48, 0, b"ccc-frame-2222", 0, None, 0);
        ring.mock_publish(1, 1, 48);
        let mut cur = Cursor::default();
        let (out, _) = walk(&ring, &mut cur, &pool, 1);
        assert_eq!(out[0].data(), b"a-frame-0000");
        assert_eq!(out[0].headroom(), crate::buffer::HEADROOM);
        assert_ne!(ring.block_status(0), 0, "block 0 still has a frame: not released");
        let (out, st) = walk(&ring, &mut cur, &pool, 32);
        assert_eq!(
            out.iter().map(|b| b.data().to_vec()).collect::<Vec<_>>(),
            vec![b"bb-frame-11111".to_vec(), b"ccc-frame-2222".to_vec()]
        );
        assert_eq!((ring.block_status(0), ring.block_status(1)), (0, 0));
        assert_eq!((st.rx_packets, st.rx_bytes, st.rx_errors), (2, 28, 0));
        assert_eq!(cur.block, 2);
        assert_eq!(walk(&ring, &mut cur, &pool, 32).0.len(), 0);
    }

    #[test]
    fn vlan_tag_goes_back_into_the_frame() {
        let ring = RxRing::mock(4096, 1);
        let pool = Pool::new("t", 4).unwrap();
        let frame: Vec<u8> = (0u8..12).chain([0x08, 0x00, 0x45, 0x00]).collect();
        ring.mock_frame(0, 48, 0, &frame, 0, Some((0x2064, 0x88a8)), 0);
        ring.mock_publish(0, 1, 48);
        let (out, _) = walk(&ring, &mut Cursor::default(), &pool, 8);
        let mut want = frame[..12].to_vec();
        want.extend_from_slice(&[0x88, 0xa8, 0x20, 0x64]);
        want.extend_from_slice(&frame[12..]);
        assert_eq!(out[0].data(), &want[..]);
    }

    #[test]
    fn outgoing_truncated_and_garbage_frames_are_not_delivered() {
        let ring = RxRing::mock(4096, 2);
        let pool = Pool::new("t", 4).unwrap();
        let o2 = ring.mock_frame(0, 48, 0, b"mine", 0, None, libc::PACKET_OUTGOING);
        ring.mock_frame(0, 48, (o2 - 48) as u32, b"mine", 0, None, libc::PACKET_OUTGOING);
        let o3 = ring.mock_frame(0, o2, 0, b"ok", 0, None, 0);
        ring.mock_frame(0, o2, (o3 - o2) as u32, b"ok", 0, None, 0);
        ring.mock_frame(0, o3, 4000, b"x", 0, None, 0); // next offset points out of the block
        ring.mock_publish(0, 5, 48); // claims 5 frames: 3 real, the 4th is out of bounds
        ring.mock_publish(1, 3, 4090); // first frame header would cross the block end
        let mut cur = Cursor::default();
        let (out, st) = walk(&ring, &mut cur, &pool, 32);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].data(), out[1].data()), (&b"ok"[..], &b"x"[..]));
        assert_eq!(st.rx_errors, 2 + 3);
        assert_eq!((ring.block_status(0), ring.block_status(1)), (0, 0), "both blocks handed back");
    }

    /// A UDP frame (IPv4 or IPv6) with `payload` bytes of pattern, as a sender's UDP_SEGMENT
    /// batch looks on the wire before segmentation.
    fn gso_frame(v6: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        if v6 {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            f.extend_from_slice(&ip);
        } else {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((28 + payload).min(0xffff) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
            ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&[0xca, 0x6c, 0xca, 0x6c, 0, 0, 0x12, 0x34]);
        f.extend((0..payload).map(|i| (i * 7 % 251) as u8));
        f
    }

    fn walk_vnet(ring: &RxRing, pool: &Pool, max: usize, pending: &mut VecDeque<Buffer>) -> (Vec<Buffer>, QueueStats) {
        let mut out = Vec::new();
        let mut st = QueueStats::default();
        let mut cur = Cursor::default();
        let mut w = Walk { ring, cur: &mut cur, stats: &mut st, vnet: true };
        rx_walk(&mut w, pool, &mut out, pending, max);
        (out, st)
    }

    #[test]
    fn udp_gso_frames_are_split_into_datagrams() {
        for (v6, vlan) in [(false, None), (true, None), (false, Some((0x0064, 0x8100)))] {
            let ring = RxRing::mock(16384, 1);
            let pool = Pool::new("t", 16).unwrap();
            let frame = gso_frame(v6, 2500);
            ring.mock_frame(0, 48, 0, &frame, 0, vlan, 0);
            // The virtio_net_hdr sits right before the MAC header: GSO_UDP_L4, gso_size 1000.
            let mac_off = 48 + crate::sys::packet::FRAME_HDR_SPAN_FOR_TESTS.next_multiple_of(16) + 2;
            let mut vh = [0u8; VNET_HDR_LEN];
            vh[1] = GSO_UDP_L4;
            vh[4..6].copy_from_slice(&1000u16.to_le_bytes());
            ring.mock_write(0, mac_off - VNET_HDR_LEN, &vh);
            ring.mock_publish(0, 1, 48);
            let mut pending = VecDeque::new();
            let (out, st) = walk_vnet(&ring, &pool, 2, &mut pending);
            assert_eq!((out.len(), pending.len()), (2, 1), "max holds; the rest waits");
            assert_eq!((st.rx_gso_frames, st.rx_gso_segments, st.rx_packets, st.rx_errors), (1, 3, 3, 0));
            let segs: Vec<Buffer> = out.into_iter().chain(pending.drain(..)).collect();
            let l3 = if vlan.is_some() { 18 } else { 14 };
            let hl = if v6 { 40 } else { 20 };
            let mut payload = Vec::new();
            for (i, b) in segs.iter().enumerate() {
                let d = b.data();
                let len = if i < 2 { 1000 } else { 500 };
                assert_eq!(d.len(), l3 + hl + 8 + len);
                if let Some((tci, tpid)) = vlan {
                    assert_eq!(&d[12..16], &[(tpid >> 8) as u8, tpid as u8, (tci >> 8) as u8, tci as u8]);
                }
                let ip = &d[l3..l3 + hl];
                if v6 {
                    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, 8 + len);
                } else {
                    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, 28 + len);
                    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 0xfffeu16.wrapping_add(i as u16));
                    assert_eq!(ipv4_checksum(ip), 0, "header checksum valid");
                }
                let udp = &d[l3 + hl..l3 + hl + 8];
                assert_eq!(&udp[..4], &[0xca, 0x6c, 0xca, 0x6c]);
                assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, 8 + len);
                payload.extend_from_slice(&d[l3 + hl + 8..]);
            }
            assert_eq!(payload, &frame[14 + hl + 8..], "every payload byte, in order");
            assert_eq!(ring.block_status(0), 0, "block handed back");
        }
    }

    #[test]
    fn a_gso_frame_with_a_dry_pool_stays_in_the_ring() {
        let ring = RxRing::mock(16384, 1);
        let pool = Pool::new("t", 1).unwrap();
        let held = pool.alloc().unwrap();
        let frame = gso_frame(false, 2500);
        ring.mock_frame(0, 48, 0, &frame, 0, None, 0);
        let mac_off = 48 + crate::sys::packet::FRAME_HDR_SPAN_FOR_TESTS.next_multiple_of(16) + 2;
        let mut vh = [0u8; VNET_HDR_LEN];
        vh[1] = GSO_UDP_L4;
        vh[4..6].copy_from_slice(&1000u16.to_le_bytes());
        ring.mock_write(0, mac_off - VNET_HDR_LEN, &vh);
        ring.mock_publish(0, 1, 48);
        let (out, st) = walk_vnet(&ring, &pool, 8, &mut VecDeque::new());
        assert!(out.is_empty());
        assert_eq!((st.rx_dropped, st.rx_errors), (0, 0));
        assert_ne!(ring.block_status(0), 0, "frame left for the next call");
        drop(held);
    }

    #[test]
    fn dry_pool_leaves_the_frame_in_the_ring() {
        let ring = RxRing::mock(4096, 1);
        let pool = Pool::new("t", 1).unwrap();
        let o2 = ring.mock_frame(0, 48, 0, b"one", 0, None, 0);
        ring.mock_frame(0, 48, (o2 - 48) as u32, b"one", 0, None, 0);
        ring.mock_frame(0, o2, 0, b"two", 0, None, 0);
        ring.mock_publish(0, 2, 48);
        let mut cur = Cursor::default();
        let (first, _) = walk(&ring, &mut cur, &pool, 32);
        assert_eq!(first.len(), 1);
        assert_ne!(ring.block_status(0), 0);
        drop(first);
        let (second, _) = walk(&ring, &mut cur, &pool, 32);
        assert_eq!(second[0].data(), b"two");
        assert_eq!(ring.block_status(0), 0);
    }
}
