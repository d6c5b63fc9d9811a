//! [`QueueCore`]: the data path of one queue pair without the device registers (unit-tested with
//! a simulated device): rx refill and receive, tx transmit and reclaim, and the counters.
//!
//! Every frame carries the 12-byte `struct virtio_net_hdr` (§5.1.6, VERSION_1 makes
//! `num_buffers` part of it), kept in the buffer's headroom:
//!
//! ```text
//! rx: posted at slot + HEADROOM - 12, so the frame lands at HEADROOM (the Buffer's window)
//! tx: prepend 12 zero bytes (no offloads: flags 0, gso_type NONE) and post from there
//! ```

use super::bounds::Bounds;
use super::virtq::{Seg, Used, Virtq, MAX_QUEUE};
use crate::buffer::{Buffer, Pool, BUF_SIZE, HEADROOM};
use crate::port::QueueStats;

/// `struct virtio_net_hdr` with VERSION_1 (§5.1.6): 12 bytes.
pub(crate) const NET_HDR: usize = 12;
/// Offset in the slot where the device writes a received header.
const RX_OFF: usize = HEADROOM - NET_HDR;
/// Device-writable bytes of an rx buffer: header + frame up to the slot end (≥ 1526, as §5.1.6.3.1
/// asks without MRG_RXBUF and without GUEST_TSO/UFO).
const RX_LEN: usize = BUF_SIZE - RX_OFF;
/// Refill the rx ring once this many descriptors are free (batched refill).
const REFILL_BATCH: usize = 32;

/// Counters beyond [`QueueStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioCounters {
    /// Transmitted buffers from another pool, copied into this queue's DMA memory.
    pub tx_copied: u64,
    /// Rx refills that found the pool empty.
    pub rx_no_buffers: u64,
    /// Buffers refused because their IOVA range is outside the mapped regions.
    pub iova_refused: u64,
}

/// The data path of one queue pair, without the device registers: returns whether a queue needs
/// a notification.
pub(crate) struct QueueCore {
    pub rx: Virtq,
    pub tx: Virtq,
    pub pool: Pool,
    pub bounds: Bounds,
    pub stats: QueueStats,
    pub counters: VirtioCounters,
    used: Vec<Used>,
    /// Test hook (`test-hooks` feature): post the next transmit descriptor at this IOVA (and with
    /// this length).
    #[cfg(any(test, feature = "test-hooks"))]
    pub bad_iova: Option<(u64, Option<u32>)>,
    pub tx_completions: u64,
}

impl QueueCore {
    pub(crate) fn new(rx: Virtq, tx: Virtq, pool: Pool, bounds: Bounds) -> QueueCore {
        QueueCore {
            rx,
            tx,
            pool,
            bounds,
            stats: QueueStats::default(),
            counters: VirtioCounters::default(),
            used: Vec::with_capacity(MAX_QUEUE as usize),
            #[cfg(any(test, feature = "test-hooks"))]
            bad_iova: None,
            tx_completions: 0,
        }
    }

    /// Post fresh buffers while descriptors are free (all of them when `force`, else only once a
    /// batch is free). Returns true if the device wants a notification.
    pub(crate) fn refill(&mut self, force: bool) -> bool {
        if !force && self.rx.free_descs() < REFILL_BATCH.min(self.rx.size() as usize) {
            return false;
        }
        while self.rx.free_descs() > 0 {
            let Some(b) = self.pool.alloc() else {
                self.counters.rx_no_buffers += 1;
                break;
            };
            // The fresh buffer's window starts at HEADROOM: the header goes just before it.
            let iova = b.iova() - NET_HDR as u64;
            if !self.bounds.check(iova, RX_LEN) {
                self.counters.iova_refused += 1;
                break;
            }
            if self.rx.push(&[Seg { iova, len: RX_LEN as u32, write: true }], Some(b)).is_err() {
                break;
            }
        }
        self.rx.publish()
    }

    /// Received frames, up to `max`, appended to `out` with their window on the frame.
    pub(crate) fn receive(&mut self, out: &mut Vec<Buffer>, max: usize) -> usize {
        let mut used = std::mem::take(&mut self.used);
        self.rx.pop_used(max, &mut used);
        let mut n = 0;
        for u in used.drain(..) {
            let Some(mut b) = u.token else {
                self.stats.rx_errors += 1;
                continue;
            };
            let len = u.len as usize;
            if u.len > u.writable || len < NET_HDR + 14 {
                // Longer than what we posted, or shorter than a header and an Ethernet header.
                self.stats.rx_errors += 1;
                continue;
            }
            if b.set_len(len - NET_HDR).is_err() {
                self.stats.rx_errors += 1;
                continue;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += b.len() as u64;
            out.push(b);
            n += 1;
        }
        self.used = used;
        n
    }

    /// Free transmitted buffers the device has returned.
    pub(crate) fn reclaim(&mut self) -> usize {
        let mut used = std::mem::take(&mut self.used);
        let n = self.tx.pop_used(usize::MAX, &mut used);
        used.clear();
        self.used = used;
        self.tx_completions += n as u64;
        n
    }

    /// A buffer ready to post: ours, with 12 bytes of headroom for the header; others are copied.
    fn own(&mut self, b: Buffer) -> Option<Buffer> {
        if b.pool_id() == self.pool.id() && b.headroom() >= NET_HDR {
            return Some(b);
        }
        let Some(mut c) = self.pool.alloc() else {
            self.stats.tx_dropped += 1;
            return None;
        };
        match c.append(b.len()) {
            Ok(dst) => dst.copy_from_slice(b.data()),
            Err(_) => {
                self.stats.tx_errors += 1;
                return None;
            }
        }
        self.counters.tx_copied += 1;
        Some(c)
    }

    /// Take up to the free descriptors from the front of `bufs`; true if a notification is due.
    pub(crate) fn transmit(&mut self, bufs: &mut Vec<Buffer>) -> (usize, bool) {
        self.reclaim();
        let k = bufs.len().min(self.tx.free_descs());
        for b in bufs.drain(..k) {
            let Some(mut b) = self.own(b) else { continue };
            let frame = b.len() as u64;
            match b.prepend(NET_HDR) {
                Ok(h) => h.fill(0),
                Err(_) => {
                    self.stats.tx_errors += 1;
                    continue;
                }
            }
            let (iova, len) = (b.iova(), b.len());
            if !self.bounds.check(iova, len) {
                // Never post an address we have not mapped.
                self.counters.iova_refused += 1;
                self.stats.tx_errors += 1;
                continue;
            }
            if self.tx.push(&[Seg { iova, len: len as u32, write: false }], Some(b)).is_err() {
                self.stats.tx_dropped += 1;
                continue;
            }
            #[cfg(any(test, feature = "test-hooks"))]
            if let Some(bad) = self.bad_iova.take() {
                super::test_hook::post_bad_iova(&mut self.tx, bad, len);
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += frame;
        }
        (k, self.tx.publish())
    }
}

/// A queue's counters: the core's, plus the rings' checks of what the device returned. An
/// overlong receive length is already in `rx_errors` (counted by `receive`).
pub(crate) fn queue_stats(c: &QueueCore) -> QueueStats {
    let mut s = c.stats;
    s.rx_errors += c.rx.bad_used_id;
    s.tx_errors += c.tx.bad_used_id;
    s.tx_copied = c.counters.tx_copied;
    s.rx_no_buffers = c.counters.rx_no_buffers;
    s.iova_refused = c.counters.iova_refused;
    s.bad_used_id = c.rx.bad_used_id + c.tx.bad_used_id;
    s.bad_used_len = c.rx.bad_used_len + c.tx.bad_used_len;
    s.bad_used_idx = c.rx.bad_used_idx + c.tx.bad_used_idx;
    s
}

#[cfg(test)]
mod tests {
    use super::super::virtq::layout;
    use super::super::virtq::sim::SimDevice;
    use super::*;
    use crate::sys::ring::{RingMem, SharedMem};
    use crate::MmapRegion;
    use std::sync::Arc;

    fn core_with(n: u16, pool_bufs: usize) -> (QueueCore, SimDevice, SimDevice) {
        let bytes = 2 * layout(n).0;
        let region: Arc<dyn SharedMem> = Arc::new(MmapRegion::new(bytes).unwrap());
        let rx = Virtq::new(RingMem::new(region.clone(), 0, layout(n).0).unwrap(), n).unwrap();
        let tx = Virtq::new(RingMem::new(region, layout(n).0, layout(n).0).unwrap(), n).unwrap();
        let (sr, st) = (SimDevice::new(&rx), SimDevice::new(&tx));
        let pool = Pool::new("dma", pool_bufs).unwrap();
        let (base, size, iova) = pool.region();
        let _ = base;
        let mut b = Bounds::default();
        b.add(iova, size as u64);
        (QueueCore::new(rx, tx, pool, b), sr, st)
    }

    #[test]
    fn rx_frames_land_at_headroom_and_refill_is_batched() {
        let (mut c, mut dev, _) = core_with(64, 256);
        let region = c.pool.region();
        assert!(c.refill(true));
        assert_eq!(c.rx.free_descs(), 0);
        assert_eq!(c.pool.available(), 256 - 64);
        let chains = dev.take_avail();
        assert_eq!(chains.len(), 64);
        for (i, ch) in chains.iter().enumerate().take(40) {
            let (iova, len, flags) = ch.segs[0];
            assert_eq!((len as usize, flags), (RX_LEN, 2));
            assert_eq!((iova - region.2) % BUF_SIZE as u64, RX_OFF as u64, "header just before HEADROOM");
            let mut frame = vec![0u8; NET_HDR];
            frame.extend(std::iter::repeat_n(i as u8, 60));
            assert!(crate::sys::ring::sim_dma_write(region, iova, &frame));
            dev.put_used(ch.head as u32, frame.len() as u32);
        }
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(c.receive(&mut out, 32), 32);
        assert_eq!(c.receive(&mut out, 32), 8);
        for (i, b) in out.iter().enumerate() {
            assert_eq!(b.headroom(), HEADROOM);
            assert_eq!(b.data(), &[i as u8; 60][..]);
        }
        assert_eq!((c.stats.rx_packets, c.stats.rx_bytes), (40, 2400));
        // 40 free: one batch of 32 is due, refill takes all 40.
        assert!(c.refill(false));
        assert_eq!(c.rx.free_descs(), 0);
        assert_eq!(dev.take_avail().len(), 40);
        assert!(!c.refill(false), "nothing free, nothing published");
    }

    #[test]
    fn rx_short_and_overlong_lengths_are_counted_not_trusted() {
        let (mut c, mut dev, _) = core_with(8, 64);
        c.refill(true);
        let ch = dev.take_avail();
        dev.put_used(ch[0].head as u32, 5); // shorter than the header
        dev.put_used(ch[1].head as u32, RX_LEN as u32 + 1); // longer than posted
        dev.put_used(ch[2].head as u32, (NET_HDR + 13) as u32); // header + 13: no Ethernet header
        dev.put_used(99, 100); // not an id
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(c.receive(&mut out, 32), 0);
        assert_eq!(c.stats.rx_errors, 3);
        assert_eq!(c.rx.bad_used_id, 1);
        assert_eq!(c.rx.bad_used_len, 1);
        assert_eq!(c.pool.available(), 64 - 8 + 3, "the three buffers went back to the pool");
        // What `wgpmd stats` shows: the overlong length once in rx_errors, the bad id added.
        let s = queue_stats(&c);
        assert_eq!((s.rx_errors, s.bad_used_id, s.bad_used_len, s.bad_used_idx), (4, 1, 1, 0));
    }

    #[test]
    fn tx_prepends_a_zero_header_copies_foreign_buffers_and_reclaims() {
        let (mut c, _, mut dev) = core_with(8, 64);
        let region = c.pool.region();
        let foreign = Pool::new("ctl", 8).unwrap();
        let mut bufs = Vec::new();
        for i in 0..10u8 {
            let p = if i % 2 == 0 { &c.pool } else { &foreign };
            let mut b = p.alloc().unwrap();
            b.prepend(NET_HDR).unwrap().fill(0xee); // stale bytes where the header goes
            b.trim_front(NET_HDR).unwrap();
            b.append(20).unwrap().fill(i);
            bufs.push(b);
        }
        let (n, kick) = c.transmit(&mut bufs);
        assert_eq!((n, kick), (8, true));
        assert_eq!(bufs.len(), 2, "ring full: the rest stays, in order");
        assert_eq!(bufs[0].data()[0], 8);
        assert_eq!(c.counters.tx_copied, 4);
        assert_eq!(foreign.available(), 7, "foreign buffers taken were copied and freed (one is still queued)");
        let chains = dev.take_avail();
        for (i, ch) in chains.iter().enumerate() {
            let (iova, len, flags) = ch.segs[0];
            assert_eq!((len, flags), (32, 0));
            let bytes = crate::sys::ring::sim_dma_read(region, iova, 32).expect("inside the DMA pool");
            assert_eq!(&bytes[..NET_HDR], &[0; NET_HDR], "zeroed header");
            assert_eq!(&bytes[NET_HDR..], &[i as u8; 20]);
        }
        assert_eq!(c.tx.free_descs(), 0);
        for ch in &chains {
            dev.put_used(ch.head as u32, 0);
        }
        dev.publish_used();
        let (n, _) = c.transmit(&mut bufs);
        assert_eq!(n, 2, "completions reclaimed first");
        assert_eq!((c.stats.tx_packets, c.stats.tx_bytes), (10, 200));
        assert_eq!(c.tx_completions, 8);
    }

    #[test]
    fn tx_never_posts_outside_the_mapped_regions() {
        let (mut c, _, mut dev) = core_with(8, 16);
        c.bounds = Bounds::default();
        c.bounds.add(0, 1); // the pool is not "mapped"
        let mut b = c.pool.alloc().unwrap();
        b.append(60).unwrap();
        let mut v = vec![b];
        assert_eq!(c.transmit(&mut v).0, 1, "taken (and counted), not posted");
        assert_eq!((c.counters.iova_refused, c.stats.tx_errors, c.stats.tx_packets), (1, 1, 0));
        assert!(dev.take_avail().is_empty());
        assert_eq!(c.rx.free_descs(), 8);
        c.refill(true);
        assert_eq!(c.rx.free_descs(), 8, "rx refuses to post unmapped buffers too");
        assert_eq!(c.counters.iova_refused, 2);
        assert_eq!(c.pool.available(), 16);
        let s = queue_stats(&c);
        assert_eq!((s.iova_refused, s.tx_errors, s.rx_no_buffers), (2, 1, 0));
    }

    #[test]
    fn bad_iova_hook_posts_once_outside_the_bounds() {
        let (mut c, _, mut dev) = core_with(8, 16);
        c.bad_iova = Some((0xdead_0000, Some(8192)));
        let mk = |c: &QueueCore| {
            let mut b = c.pool.alloc().unwrap();
            b.append(60).unwrap();
            vec![b]
        };
        let mut v = mk(&c);
        c.transmit(&mut v);
        let mut v = mk(&c);
        c.transmit(&mut v);
        let ch = dev.take_avail();
        assert_eq!((ch[0].segs[0].0, ch[0].segs[0].1), (0xdead_0000, 8192));
        assert!(!c.bounds.check(ch[0].segs[0].0, 1));
        assert!(c.bounds.check(ch[1].segs[0].0, 72), "only the first");
    }

    #[test]
    fn pool_exhaustion_stops_refill_and_is_counted() {
        let (mut c, _, _) = core_with(16, 4);
        c.refill(true);
        assert_eq!(c.rx.in_flight(), 4);
        assert_eq!(c.counters.rx_no_buffers, 1);
        assert_eq!(queue_stats(&c).rx_no_buffers, 1);
    }
}
