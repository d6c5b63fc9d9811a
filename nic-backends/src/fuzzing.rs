//! Fuzz body for the virtio-net queue pair's data path (`virtio::queue_core`, the split
//! virtqueues of `virtio::virtq`) against a hostile device: the device's side is the simulated
//! device of the unit tests, and everything the device writes is taken from the input — the
//! used ring's ids, lengths and index (including indices that jump, ids never posted or
//! returned twice, lengths past the buffer), raw bytes anywhere in the used ring, and the frames
//! (with their `virtio_net_hdr`) it writes into posted receive buffers.
//!
//! Checks (a panic is a finding): a received frame is a window of at least an Ethernet header
//! inside its buffer, at `HEADROOM`, with the bytes the device wrote; a transmitted frame reaches
//! the device as the 12-byte zero header and the frame; descriptors are never lost
//! (free + in flight = size); and after a reset every buffer is back in its pool.
//!
//! Input: 4-byte operations `[op, a, b, c]`, see [`virtio_rings`].

use crate::buffer::{Buffer, Pool, BUF_SIZE, HEADROOM};
use crate::sys::ring::{sim_dma_read, sim_dma_write, RingMem, SharedMem};
use crate::virtio::bounds::Bounds;
use crate::virtio::queue_core::{QueueCore, NET_HDR};
use crate::virtio::virtq::layout;
use crate::virtio::virtq::sim::{Chain, SimDevice};
use crate::virtio::virtq::Virtq;
use crate::MmapRegion;
use std::sync::Arc;

/// Queue size of the body (small, so the rings wrap and fill often).
pub const QUEUE: u16 = 8;
/// Buffers in the DMA pool.
pub const POOL: usize = 24;

/// What one input reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioReached {
    /// Frames received.
    pub rx_frames: usize,
    /// Frames transmitted (posted).
    pub tx_frames: usize,
    /// Receive errors (bad lengths, ids).
    pub rx_errors: u64,
    /// Used entries with bad ids, on both rings.
    pub bad_used_id: u64,
    /// Used indices that jumped past the ring.
    pub bad_used_idx: u64,
}

/// A chain the device took, with what it will write (rx) or what it read (tx).
struct Taken {
    chain: Chain,
}

/// One input (see the module doc). Operations, `op % 13`:
/// 0 refill (forced if `a` is odd); 1 the device takes the posted rx buffers; 2 it writes a
/// frame of `a`·6 bytes (first byte `b`) into taken buffer `c` and returns it with its length;
/// 3 a raw rx used entry (id `a`, length `b`·12 + `c`); 4 publish the rx used index;
/// 5 force the rx used index to `a`·256 + `b`; 6 receive up to `a` frames; 7 transmit `a % 10`
/// frames of `b`·6 + 14 bytes (odd `c`: from a foreign pool); 8 the device takes the tx chains,
/// checks them and returns them (raw ids when `a` is odd); 9 force the tx used index;
/// 10 reclaim; 11 the device writes the byte `c` at offset `a`·256 + `b` of a used ring (rx for
/// even `c`); 12 the device asks for no notifications (rx: odd `a`, tx: odd `b`).
pub fn virtio_rings(data: &[u8]) -> VirtioReached {
    let n = QUEUE;
    let ring = layout(n).0;
    let region: Arc<dyn SharedMem> = Arc::new(MmapRegion::new(2 * ring).expect("ring memory"));
    let rx = Virtq::new(RingMem::new(region.clone(), 0, ring).expect("rx ring"), n).expect("rx");
    let tx = Virtq::new(RingMem::new(region, ring, ring).expect("tx ring"), n).expect("tx");
    let (mut dr, mut dt) = (SimDevice::new(&rx), SimDevice::new(&tx));
    let pool = Pool::new("fuzz-dma", POOL).expect("pool");
    let foreign = Pool::new("fuzz-other", 8).expect("pool");
    let dma = pool.region();
    let mut bounds = Bounds::default();
    bounds.add(dma.2, dma.1 as u64);
    let mut c = QueueCore::new(rx, tx, pool, bounds);

    let mut reached = VirtioReached::default();
    let mut rx_taken: Vec<Taken> = Vec::new();
    // What the device wrote into each rx buffer it returned correctly, by iova.
    let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
    // Frames handed to transmit, in order, by their first bytes.
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut received: Vec<Buffer> = Vec::new();
    let mut pending_tx: Vec<Buffer> = Vec::new();

    for op in data.chunks(4).take(256) {
        let [o, a, b, cc] = [0, 1, 2, 3].map(|k| op.get(k).copied().unwrap_or(0));
        match o % 13 {
            0 => {
                c.refill(a & 1 == 1);
                // Buffers posted now are fresh postings: what the device wrote into the same
                // memory under an earlier posting no longer describes them (a stale used entry
                // may return them with that old length; the driver cannot tell).
                let idx = dr.mem.read_u16(dr.avail_off + 2);
                let mut k = dr.last_avail;
                while k != idx {
                    let head = dr.mem.read_u16(dr.avail_off + 4 + 2 * usize::from(k & (n - 1)));
                    let iova = dr.mem.read_u64(16 * usize::from(head));
                    written.retain(|(i, _)| *i != iova);
                    k = k.wrapping_add(1);
                }
            }
            1 => {
                for chain in dr.take_avail() {
                    // A fresh posting: nothing written into it yet.
                    written.retain(|(i, _)| *i != chain.segs[0].0);
                    rx_taken.push(Taken { chain });
                }
            }
            2 if !rx_taken.is_empty() => {
                let t = rx_taken.swap_remove(usize::from(cc) % rx_taken.len());
                let (iova, len, _) = t.chain.segs[0];
                // A well-behaved device writes only buffers it still owns: not one the driver
                // took back meanwhile (a used entry with this id, an index jump), whose memory
                // may already hold a frame being sent. (No driver can defend against a device
                // that writes memory it has returned.)
                let head = t.chain.head;
                if !c.rx.posted(head) || dr.mem.read_u64(16 * usize::from(head)) != iova {
                    continue;
                }
                let frame_len = (usize::from(a) * 6).min(len as usize - NET_HDR);
                let mut bytes = vec![0u8; NET_HDR + frame_len];
                for (k, x) in bytes[NET_HDR..].iter_mut().enumerate() {
                    *x = b.wrapping_add(k as u8);
                }
                // The device owns the buffer while it is posted (taken, not yet returned).
                assert!(sim_dma_write(dma, iova, &bytes), "a posted rx buffer outside the DMA region");
                written.retain(|(i, _)| *i != iova);
                written.push((iova, bytes[NET_HDR..].to_vec()));
                dr.put_used(u32::from(t.chain.head), bytes.len() as u32);
            }
            3 => dr.put_used(u32::from(a), u32::from(b) * 12 + u32::from(cc)),
            4 => dr.publish_used(),
            5 => dr.set_used_idx(u16::from_be_bytes([a, b])),
            6 => {
                let before = received.len();
                let got = c.receive(&mut received, usize::from(a));
                assert_eq!(received.len() - before, got);
                for buf in &received[before..] {
                    assert_eq!(buf.headroom(), HEADROOM);
                    assert!(buf.len() >= 14 && buf.len() <= BUF_SIZE - HEADROOM, "frame of {} bytes", buf.len());
                    // The frame the device wrote for this buffer, if it wrote one and said so.
                    let iova = buf.iova() - NET_HDR as u64;
                    if let Some(k) = written.iter().position(|(i, _)| *i == iova) {
                        let (_, w) = written.swap_remove(k);
                        if w.len() == buf.len() {
                            assert_eq!(buf.data(), &w[..], "received bytes differ from what the device wrote");
                        }
                    }
                }
                reached.rx_frames += got;
                if received.len() > 16 {
                    received.clear(); // back to the pool
                }
            }
            7 => {
                for k in 0..usize::from(a % 10) {
                    let p = if cc & 1 == 1 { &foreign } else { &c.pool };
                    let Some(mut buf) = p.alloc() else { break };
                    let len = usize::from(b) * 6 + 14;
                    let Ok(d) = buf.append(len) else { break };
                    for (j, x) in d.iter_mut().enumerate() {
                        *x = (k as u8) ^ (j as u8) ^ cc;
                    }
                    pending_tx.push(buf);
                }
                let frames: Vec<Vec<u8>> = pending_tx.iter().map(|b| b.data().to_vec()).collect();
                let before = c.stats.tx_packets;
                let (taken, _) = c.transmit(&mut pending_tx);
                assert!(taken <= frames.len());
                assert_eq!(pending_tx.len(), frames.len() - taken, "transmit keeps what it did not take");
                let posted = (c.stats.tx_packets - before) as usize;
                sent.extend(frames.into_iter().take(taken));
                reached.tx_frames += posted;
                pending_tx.clear();
            }
            8 => {
                for ch in dt.take_avail() {
                    let (iova, len, flags) = ch.segs[0];
                    assert_eq!(flags & 2, 0, "a transmit descriptor is device-writable");
                    let bytes =
                        sim_dma_read(dma, iova, len as usize).expect("a posted tx buffer outside the DMA region");
                    // The frame is the one sent unless the device returned the chain (a bogus
                    // used id) before reading it: the driver then reused the buffer.
                    if c.tx.posted(ch.head) {
                        assert!(bytes[..NET_HDR].iter().all(|&x| x == 0), "transmit header not zero");
                        assert!(
                            sent.iter().any(|f| f[..] == bytes[NET_HDR..]),
                            "the device read a frame that was never sent"
                        );
                    }
                    let id = if a & 1 == 1 { u32::from(b) } else { u32::from(ch.head) };
                    dt.put_used(id, 0);
                }
                dt.publish_used();
                if sent.len() > 64 {
                    sent.drain(..32);
                }
            }
            9 => dt.set_used_idx(u16::from_be_bytes([a, b])),
            10 => {
                c.reclaim();
            }
            11 => {
                let (_, used_off) = c.rx.offsets();
                let at = used_off + (usize::from(a) * 256 + usize::from(b)) % (6 + 8 * n as usize);
                if cc & 1 == 0 {
                    dr.mem.write_u8(at, cc)
                } else {
                    dt.mem.write_u8(at, cc)
                }
            }
            12 => {
                dr.set_no_notify(a & 1 == 1);
                dt.set_no_notify(b & 1 == 1);
            }
            _ => {}
        }
        for q in [&c.rx, &c.tx] {
            assert_eq!(q.free_descs() + q.in_flight(), usize::from(q.size()));
        }
    }
    reached.rx_errors = c.stats.rx_errors;
    reached.bad_used_id = c.rx.bad_used_id + c.tx.bad_used_id;
    reached.bad_used_idx = c.rx.bad_used_idx + c.tx.bad_used_idx;

    // A reset: the device gives everything back; every buffer returns to its pool.
    drop(received);
    drop(pending_tx);
    let left: Vec<Buffer> = c.rx.drain_after_reset().into_iter().chain(c.tx.drain_after_reset()).collect();
    drop(left);
    assert_eq!(c.pool.available(), POOL, "a DMA buffer was lost");
    assert_eq!(foreign.available(), 8, "a foreign buffer was lost");
    reached
}
