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
//! Frames longer than a buffer (`BUF_SIZE - HEADROOM` = 1920 bytes) are dropped and counted in
//! `rx_dropped`: jumbo MTUs, and aggregates built by GRO/LRO. Turn those offloads off on
//! interfaces given to wgpmd (`ethtool -K IFACE gro off lro off`).

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::port::{check_mtu, Fanout, Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::ioctl::{self, IfName};
use crate::sys::packet::{PacketSocket, RxRing, SEND_BATCH};

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
        rx_walk(&self.ring, &mut self.cur, &mut self.stats, pool, out, max)
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        let mut taken = 0;
        let mut frames: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
        while taken < bufs.len() {
            let chunk = &bufs[taken..bufs.len().min(taken + SEND_BATCH)];
            for (f, b) in frames.iter_mut().zip(chunk) {
                *f = b.data();
            }
            match self.sock.send_batch(&frames[..chunk.len()]) {
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

/// Copy up to `max` frames out of the ring into buffers from `pool`, returning blocks to the
/// kernel as they are emptied. Stops early when the ring has nothing ready or the pool is dry
/// (the frame stays in the ring for the next call).
fn rx_walk(
    ring: &RxRing,
    cur: &mut Cursor,
    stats: &mut QueueStats,
    pool: &Pool,
    out: &mut Vec<Buffer>,
    max: usize,
) -> usize {
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
        if f.pkttype == libc::PACKET_OUTGOING {
            // Our own transmission looped back to the tap: not a received frame.
        } else if f.snaplen < f.len || f.snaplen == 0 {
            stats.rx_errors += 1;
        } else if total > crate::buffer::BUF_SIZE - crate::buffer::HEADROOM {
            stats.rx_dropped += 1;
        } else {
            let Some(mut b) = pool.alloc() else { break };
            let room = b.data_and_tailroom_mut();
            let copied = if vlan {
                let tpid = if f.status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { f.vlan_tpid } else { 0x8100 };
                room[12..14].copy_from_slice(&tpid.to_be_bytes());
                room[14..16].copy_from_slice(&f.vlan_tci.to_be_bytes());
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
        rx_walk(ring, cur, &mut st, pool, &mut out, max);
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
