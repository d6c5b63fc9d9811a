//! `mem`: in-process queue pairs, for tests, benchmarks and the traffic generator.
//!
//! Each direction of each queue is a bounded lock-free ring (`crossbeam_queue::ArrayQueue`) of
//! [`Buffer`]s: transmit moves the buffer into the ring (zero copy), receive moves it out. A
//! queue is owned by one thread, so each ring has one producer and one consumer. Buffers keep
//! their home pool: a received buffer is freed into the sender's pool.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::buffer::{Buffer, Pool};
use crate::port::{Port, PortInfo, Queue, QueueStats};

/// Ring depth of a port opened with `open("mem:NAME", ..)`.
pub const DEFAULT_DEPTH: usize = 1024;

type Ring = Arc<ArrayQueue<Buffer>>;

/// One side of a mem link.
pub struct MemPort {
    info: PortInfo,
    queues: Vec<Option<MemQueue>>,
    link: Arc<std::sync::atomic::AtomicBool>,
}

/// A queue of a [`MemPort`].
pub struct MemQueue {
    rx: Ring,
    tx: Ring,
    stats: QueueStats,
}

/// Two ports wired back to back: what A transmits on queue q, B receives on queue q, and vice
/// versa. `queues` and `depth` (ring slots per direction) are raised to at least 1.
pub fn pair(name_a: &str, name_b: &str, queues: usize, depth: usize) -> (MemPort, MemPort) {
    let (queues, depth) = (queues.max(1), depth.max(1));
    let mut a = Vec::with_capacity(queues);
    let mut b = Vec::with_capacity(queues);
    for _ in 0..queues {
        let ab: Ring = Arc::new(ArrayQueue::new(depth));
        let ba: Ring = Arc::new(ArrayQueue::new(depth));
        a.push(Some(MemQueue { rx: Arc::clone(&ba), tx: Arc::clone(&ab), stats: QueueStats::default() }));
        b.push(Some(MemQueue { rx: ab, tx: ba, stats: QueueStats::default() }));
    }
    (MemPort::new(name_a, a), MemPort::new(name_b, b))
}

/// A port whose queue q receives what queue q transmits.
pub fn loopback(name: &str, queues: usize, depth: usize) -> MemPort {
    let (queues, depth) = (queues.max(1), depth.max(1));
    let qs = (0..queues)
        .map(|_| {
            let r: Ring = Arc::new(ArrayQueue::new(depth));
            Some(MemQueue { rx: Arc::clone(&r), tx: r, stats: QueueStats::default() })
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
        let mut n = 0;
        while n < max {
            let Some(b) = self.rx.pop() else { break };
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += b.len() as u64;
            out.push(b);
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        // One producer per ring (this queue): the free space seen here can only grow while we
        // push, so the first `n` pushes succeed.
        let free = self.tx.capacity() - self.tx.len();
        let n = free.min(bufs.len());
        let mut refused = Vec::new();
        for b in bufs.drain(..n) {
            let len = b.len() as u64;
            match self.tx.push(b) {
                Ok(()) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += len;
                }
                // Unreachable with one producer; kept correct anyway: back to the caller, in order.
                Err(b) => refused.push(b),
            }
        }
        let taken = n - refused.len();
        if !refused.is_empty() {
            bufs.splice(0..0, refused);
        }
        taken
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
}
