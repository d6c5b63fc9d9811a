//! `mem`: in-process queue pairs, for tests, benchmarks and the traffic generator.
//!
//! Each direction of each queue is a bounded single-producer single-consumer ring of [`Buffer`]s
//! (`sys::spsc`, in the style of DPDK's `rte_ring`): transmit moves the buffers into the ring
//! (zero copy), receive moves them out. A whole burst costs one index store on each side, and
//! each side reads the other's index only when its cached copy says the burst does not fit (or
//! the ring is empty), so the two cores share a cache line per burst, not per packet. The ring
//! holds exactly `depth` buffers. A queue is owned by one thread and holds the transmit end of
//! one ring and the receive end of another (of the same ring for [`loopback`]); the ring's types
//! enforce one producer and one consumer. Buffers keep their home pool: a received buffer is
//! freed into the sender's pool, and buffers still in a ring go home when both its ends are
//! dropped.

use std::sync::Arc;

use crate::buffer::{Buffer, Pool};
use crate::port::{Port, PortInfo, Queue, QueueStats};
use crate::sys::spsc::{self, Consumer, Producer};

/// Ring depth of a port opened with `open("mem:NAME", ..)`.
pub const DEFAULT_DEPTH: usize = 1024;

/// One side of a mem link.
pub struct MemPort {
    info: PortInfo,
    queues: Vec<Option<MemQueue>>,
    link: Arc<std::sync::atomic::AtomicBool>,
}

/// A queue of a [`MemPort`]: `Send`, not `Sync`.
pub struct MemQueue {
    rx: Consumer<Buffer>,
    tx: Producer<Buffer>,
    stats: QueueStats,
}

impl MemQueue {
    fn new(rx: Consumer<Buffer>, tx: Producer<Buffer>) -> MemQueue {
        MemQueue { rx, tx, stats: QueueStats::default() }
    }
}

/// Two ports wired back to back: what A transmits on queue q, B receives on queue q, and vice
/// versa. `queues` and `depth` (buffers each direction's ring holds) are raised to at least 1.
pub fn pair(name_a: &str, name_b: &str, queues: usize, depth: usize) -> (MemPort, MemPort) {
    let queues = queues.max(1);
    let mut a = Vec::with_capacity(queues);
    let mut b = Vec::with_capacity(queues);
    for _ in 0..queues {
        let (ab_tx, ab_rx) = spsc::channel(depth);
        let (ba_tx, ba_rx) = spsc::channel(depth);
        a.push(Some(MemQueue::new(ba_rx, ab_tx)));
        b.push(Some(MemQueue::new(ab_rx, ba_tx)));
    }
    (MemPort::new(name_a, a), MemPort::new(name_b, b))
}

/// A port whose queue q receives what queue q transmits.
pub fn loopback(name: &str, queues: usize, depth: usize) -> MemPort {
    let qs = (0..queues.max(1))
        .map(|_| {
            let (tx, rx) = spsc::channel(depth);
            Some(MemQueue::new(rx, tx))
        })
        .collect();
    MemPort::new(name, qs)
}

impl MemPort {
    fn new(name: &str, queues: Vec<Option<MemQueue>>) -> MemPort {
        MemPort {
            info: PortInfo { name: name.to_string(), mac: Some(mac_for(name)), mtu: 1500, kind: "mem" },
            queues,
            link: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// The port's carrier, for tests: store `false` and [`Port::link_up`] reports the link down
    /// (the queues keep moving buffers; only the reported state changes). Up at creation.
    pub fn link_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.link.clone()
    }

    /// Change the MTU the port reports (mem does not enforce it).
    pub fn set_mtu(&mut self, mtu: usize) {
        self.info.mtu = mtu;
    }

    /// Take queue `q` as its concrete type (no `Box`), for benchmarks.
    pub fn take_mem_queue(&mut self, q: usize) -> Option<MemQueue> {
        self.queues.get_mut(q)?.take()
    }
}

/// A stable locally administered unicast MAC from the name (FNV-1a), so a traffic generator
/// can address a mem port.
fn mac_for(name: &str) -> [u8; 6] {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

impl MemQueue {
    /// Buffers this queue transmitted that the other end has not received yet (a benchmark
    /// reads it to know the receiver still has a backlog).
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }
}

impl Port for MemPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        self.take_mem_queue(q).map(|q| Box::new(q) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        self.link.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Queue for MemQueue {
    fn rx_burst(&mut self, _pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        let mut bytes = 0u64;
        let n = self.rx.pop_into(out, max, |b| bytes += b.len() as u64);
        self.stats.rx_packets += n as u64;
        self.stats.rx_bytes += bytes;
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        let mut bytes = 0u64;
        let n = self.tx.push_from(bufs, |b| bytes += b.len() as u64);
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        n
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(pool: &Pool, n: usize) -> Vec<Buffer> {
        (0..n)
            .map(|i| {
                let mut b = pool.alloc().unwrap();
                b.append(8).unwrap().copy_from_slice(&(i as u64).to_be_bytes());
                b
            })
            .collect()
    }

    #[test]
    fn pair_crosses_over_per_queue_and_moves_the_buffer() {
        let pool = Pool::new("t", 64).unwrap();
        let (mut a, mut b) = pair("a", "b", 2, 16);
        assert_ne!(a.info().mac, b.info().mac);
        let (mut a1, mut b1) = (a.take_queue(1).unwrap(), b.take_queue(1).unwrap());
        let mut b0 = b.take_queue(0).unwrap();
        let mut v = frames(&pool, 3);
        let iovas: Vec<u64> = v.iter().map(Buffer::iova).collect();
        assert_eq!(a1.tx_burst(&mut v), 3);
        assert!(v.is_empty());
        let mut out = Vec::new();
        assert_eq!(b0.rx_burst(&pool, &mut out, 32), 0);
        assert_eq!(b1.rx_burst(&pool, &mut out, 2), 2);
        assert_eq!(b1.rx_burst(&pool, &mut out, 32), 1);
        assert_eq!(out.iter().map(Buffer::iova).collect::<Vec<_>>(), iovas, "same buffers, in order");
        assert_eq!(out[2].data(), &2u64.to_be_bytes());
        assert_eq!(b1.tx_burst(&mut out), 3);
        assert_eq!(a1.rx_burst(&pool, &mut out, 32), 3);
        let s = a1.stats();
        assert_eq!((s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes), (3, 24, 3, 24));
    }

    #[test]
    fn tx_pending_counts_what_the_other_end_has_not_taken() {
        let pool = Pool::new("t", 8).unwrap();
        let (mut a, mut b) = pair("a", "b", 1, 4);
        let (mut qa, mut qb) = (a.take_mem_queue(0).unwrap(), b.take_mem_queue(0).unwrap());
        assert_eq!(qa.tx_burst(&mut frames(&pool, 3)), 3);
        assert_eq!((qa.tx_pending(), qb.tx_pending()), (3, 0));
        assert_eq!(qb.rx_burst(&pool, &mut Vec::new(), 2), 2);
        assert_eq!(qa.tx_pending(), 1);
    }

    #[test]
    fn full_ring_leaves_the_rest_in_order() {
        let pool = Pool::new("t", 64).unwrap();
        let (mut a, mut b) = pair("a", "b", 1, 4);
        let (mut qa, mut qb) = (a.take_queue(0).unwrap(), b.take_queue(0).unwrap());
        let mut v = frames(&pool, 10);
        assert_eq!(qa.tx_burst(&mut v), 4);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].data(), &4u64.to_be_bytes());
        assert_eq!(qa.tx_burst(&mut v), 0);
        let mut out = Vec::new();
        assert_eq!(qb.rx_burst(&pool, &mut out, 32), 4);
        assert_eq!(qa.tx_burst(&mut v), 4);
        assert_eq!(v[0].data(), &8u64.to_be_bytes());
        assert_eq!(pool.available(), 54);
        drop((out, v));
        assert_eq!(pool.available(), 60);
        drop((qb, b, qa)); // buffers still in a ring go home when the ring's last end is dropped
        assert_eq!(pool.available(), 64);
    }

    #[test]
    fn loopback_queue_receives_its_own_and_wraps() {
        let pool = Pool::new("t", 16).unwrap();
        let mut port = loopback("lo", 2, 3);
        let (mut q0, mut q1) = (port.take_mem_queue(0).unwrap(), port.take_mem_queue(1).unwrap());
        let mut out = Vec::new();
        // Depth 3 over 4 slots: bursts of 2 wrap the slots every other round.
        for round in 0..10u64 {
            let mut v = frames(&pool, 2);
            v[0].data_mut().copy_from_slice(&(2 * round).to_be_bytes());
            v[1].data_mut().copy_from_slice(&(2 * round + 1).to_be_bytes());
            assert_eq!(q0.tx_burst(&mut v), 2);
            assert_eq!(q0.tx_pending(), 2);
            assert_eq!(q0.tx_burst(&mut frames(&pool, 2)), 1, "round {round}: one more fits, not two");
            out.clear();
            assert_eq!(q0.rx_burst(&pool, &mut out, 2), 2);
            assert_eq!(out[0].data(), &(2 * round).to_be_bytes());
            assert_eq!(out[1].data(), &(2 * round + 1).to_be_bytes());
            assert_eq!(q0.rx_burst(&pool, &mut out, 8), 1);
            assert_eq!(q1.rx_burst(&pool, &mut out, 8), 0, "queue 1 has its own ring");
        }
        assert_eq!(q0.stats().tx_packets, 30);
        assert_eq!(q0.stats().rx_packets, 30);
        drop(out);
        assert_eq!(q1.tx_burst(&mut frames(&pool, 5)), 3);
        assert_eq!(pool.available(), 13);
        drop(q1);
        assert_eq!(pool.available(), 16, "the ring's buffers went home with its queue");
    }

    #[test]
    fn dropping_both_ends_returns_wrapped_buffers_to_the_pool() {
        let pool = Pool::new("t", 32).unwrap();
        let (mut a, mut b) = pair("a", "b", 1, 7);
        let (mut qa, mut qb) = (a.take_mem_queue(0).unwrap(), b.take_mem_queue(0).unwrap());
        let mut out = Vec::new();
        for _ in 0..5 {
            assert_eq!(qa.tx_burst(&mut frames(&pool, 5)), 5);
            assert_eq!(qb.rx_burst(&pool, &mut out, 5), 5);
            out.clear();
        }
        // The ring's indices are past its 8 slots: these 6 straddle the end of the slot array.
        assert_eq!(qa.tx_burst(&mut frames(&pool, 6)), 6);
        assert_eq!(qb.tx_burst(&mut frames(&pool, 9)), 7, "the other direction: its own 7");
        assert_eq!(pool.available(), 32 - 13);
        drop((a, b, qa));
        assert_eq!(pool.available(), 32 - 13, "each ring still has its receiving end");
        drop(qb);
        assert_eq!(pool.available(), 32);
    }

    #[test]
    fn threads_on_both_ends() {
        let pool = Pool::new("t", 256).unwrap();
        let (mut a, mut b) = pair("a", "b", 1, 32);
        let (mut qa, mut qb) = (a.take_queue(0).unwrap(), b.take_queue(0).unwrap());
        const N: u64 = 100_000;
        let p = pool.clone();
        let tx = std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut next = 0u64;
            while next < N || !v.is_empty() {
                while v.len() < 32 && next < N {
                    let Some(mut b) = p.alloc() else { break };
                    b.append(8).unwrap().copy_from_slice(&next.to_be_bytes());
                    v.push(b);
                    next += 1;
                }
                if qa.tx_burst(&mut v) == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        let mut expect = 0u64;
        while expect < N {
            if qb.rx_burst(&pool, &mut out, 32) == 0 {
                std::thread::yield_now();
            }
            for b in out.drain(..) {
                assert_eq!(b.data(), &expect.to_be_bytes());
                expect += 1;
            }
        }
        tx.join().unwrap();
        assert_eq!(qb.stats().rx_packets, N);
        assert_eq!(pool.available(), 256);
    }

    /// Millions of buffers through a ring whose depth is not a power of two, with bursts of
    /// changing sizes on both sides, both directions at once (each thread sends on one ring and
    /// receives on the other): every buffer arrives once, in order, with its bytes, and every one
    /// is back in its pool at the end.
    #[test]
    fn two_threads_move_millions_of_buffers_both_ways() {
        const N: u64 = if cfg!(debug_assertions) { 200_000 } else { 2_000_000 };
        let (pool_a, pool_b) = (Pool::new("a", 512).unwrap(), Pool::new("b", 512).unwrap());
        let (mut a, mut b) = pair("a", "b", 1, 100);
        let (qa, qb) = (a.take_mem_queue(0).unwrap(), b.take_mem_queue(0).unwrap());
        // Send 0..N on `q` from `pool` while checking that 0..N arrive on it; returns the queue.
        fn run(mut q: MemQueue, pool: Pool, salt: u64) -> (MemQueue, u64) {
            let (mut tx, mut rx) = (Vec::new(), Vec::new());
            let (mut next, mut expect, mut burst, mut max) = (0u64, 0u64, 1usize, 1usize);
            while next < N || !tx.is_empty() || expect < N {
                burst = burst % 37 + 1;
                while tx.len() < burst && next < N {
                    let Some(mut b) = pool.alloc() else { break };
                    let w = b.append(16).unwrap();
                    w[..8].copy_from_slice(&next.to_be_bytes());
                    w[8..].copy_from_slice(&(next ^ salt).to_be_bytes());
                    tx.push(b);
                    next += 1;
                }
                let sent = q.tx_burst(&mut tx);
                max = max % 53 + 1;
                let got = q.rx_burst(&pool, &mut rx, max);
                for b in rx.drain(..) {
                    let d = b.data();
                    assert_eq!(&d[..8], &expect.to_be_bytes(), "lost, duplicated or reordered");
                    assert_eq!(&d[8..], &(expect ^ !salt).to_be_bytes(), "the other side's bytes");
                    expect += 1;
                }
                if sent == 0 && got == 0 {
                    std::thread::yield_now();
                }
            }
            (q, expect)
        }
        let t = std::thread::spawn(move || run(qb, pool_b, !0x5a5a));
        let (qa, got_a) = run(qa, pool_a.clone(), 0x5a5a);
        let (qb, got_b) = t.join().unwrap();
        assert_eq!((got_a, got_b), (N, N));
        assert_eq!((qa.stats().rx_packets, qa.stats().tx_packets, qa.stats().rx_bytes), (N, N, 16 * N));
        assert_eq!((qb.stats().rx_packets, qb.stats().tx_packets), (N, N));
        assert_eq!(pool_a.available(), 512);
        drop((qa, qb, a, b));
        assert_eq!(pool_a.available(), 512);
    }
}
