//! The WAN exception path (`--exception tap:NAME`): the frames wgpmd does not consume go to a
//! kernel TAP that carries the WAN's MAC, and what the kernel sends on the TAP goes out of the
//! WAN port. The host keeps its link and address for SSH, BGP, BFD, monitoring while the NIC
//! belongs to wgpmd (vfio, dpdk) or to its packet socket (af_packet).
//!
//! ```text
//!  worker: classify ── consumed (WireGuard, ARP/ND/echo for our address) ── as before
//!     │  not consumed, to our MAC / broadcast / multicast, our VLAN:
//!     │  token bucket (rate/workers per worker) ── over: counted drop
//!     ▼  ARP and ND about our address: answered by wgpmd AND a copy mirrored
//!  to_kernel (bounded queue; full: counted drop)
//!     ▼
//!  control core: write to the TAP (VLAN tag removed)    read the TAP (a budget per iteration)
//!                                                          │ ARP replies / neighbour adverts
//!                                                          │ for our address: suppressed
//!                                                          ▼ (wgpmd answers for it)
//!                                                       from_kernel (bounded) → any worker → WAN tx
//! ```
//!
//! Ownership of ARP/ND: wgpmd answers for its WAN address (as without the exception path), and
//! mirrors every ARP/ND frame about that address to the kernel, so the kernel's neighbour table
//! learns what wgpmd's does. The kernel's own answers for that address are suppressed (the
//! asker already has wgpmd's, with the same MAC); its requests, and its answers for any other
//! address the operator gives the TAP, go out. ICMP echo requests to wgpmd's address are
//! answered by wgpmd; everything else to that address (TCP, other UDP ports, ...) reaches the
//! kernel.
//!
//! Never blocking a worker: a worker only pushes to and pops from bounded lock-free queues; the
//! TAP's system calls run on the control core.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use nic_backends::{Buffer, Pool, Queue};

use crate::wan::Wan;
use wgpmd_proto::wire::{arp, ethernet, icmpv6, ipv6, ChecksumCapabilities, IpProtocol};

/// Frames waiting in each direction (bounded; overflow is a counted drop).
pub(crate) const QUEUE: usize = 1024;
/// Frames the control core moves per direction per iteration.
const BUDGET: usize = 256;
/// Default rate of frames to the kernel, per second over all workers (`--exception-rate`).
pub const DEFAULT_RATE: u64 = 10_000;

/// The queues between the workers and the control core, and the control core's counters.
pub(crate) struct Queues {
    /// Frames for the kernel.
    pub to_kernel: ArrayQueue<Buffer>,
    /// Frames from the kernel for the WAN.
    pub from_kernel: ArrayQueue<Buffer>,
    /// Frames per second to the kernel, over all workers.
    pub rate: u64,
    /// Written to the TAP.
    pub tap_tx: AtomicU64,
    /// Not taken by the TAP (its queue full) or refused by it.
    pub tap_tx_dropped: AtomicU64,
    /// Read from the TAP.
    pub tap_rx: AtomicU64,
    /// The kernel's ARP replies and neighbour advertisements for wgpmd's address, not sent.
    pub suppressed: AtomicU64,
    /// Read from the TAP but `from_kernel` was full.
    pub from_kernel_full: AtomicU64,
    /// Read from the TAP but not sendable (shorter than an Ethernet header, no room for a tag).
    pub from_kernel_bad: AtomicU64,
}

impl Queues {
    pub fn new(rate: u64) -> Self {
        Queues {
            to_kernel: ArrayQueue::new(QUEUE),
            from_kernel: ArrayQueue::new(QUEUE),
            rate,
            tap_tx: AtomicU64::new(0),
            tap_tx_dropped: AtomicU64::new(0),
            tap_rx: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            from_kernel_full: AtomicU64::new(0),
            from_kernel_bad: AtomicU64::new(0),
        }
    }

    /// `(name, value)` of every counter and gauge, for `wgpmd stats` (prefix `exception.`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("tap_tx", l(&self.tap_tx)),
            ("tap_tx_dropped", l(&self.tap_tx_dropped)),
            ("tap_rx", l(&self.tap_rx)),
            ("suppressed", l(&self.suppressed)),
            ("from_kernel_full", l(&self.from_kernel_full)),
            ("from_kernel_bad", l(&self.from_kernel_bad)),
            ("to_kernel_depth", self.to_kernel.len() as u64),
            ("from_kernel_depth", self.from_kernel.len() as u64),
            ("queue_capacity", QUEUE as u64),
            ("rate", self.rate),
        ]
    }
}

/// A token bucket: `rate` frames per second, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst_ns: u64,
    /// Tokens, in units of 1/1e9 of a frame.
    tokens_ns: u64,
    last_ns: u64,
}

const NS: u64 = 1_000_000_000;

impl TokenBucket {
    /// `rate` per second (0: nothing passes), starting full.
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst_ns = burst.max(1).saturating_mul(NS);
        TokenBucket { rate, burst_ns, tokens_ns: burst_ns, last_ns: 0 }
    }

    /// Take a token at `now_ns` (monotonic); false: over the rate.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens_ns = self.tokens_ns.saturating_add(elapsed.saturating_mul(self.rate)).min(self.burst_ns);
        if self.rate > 0 && self.tokens_ns >= NS {
            self.tokens_ns -= NS;
            true
        } else {
            false
        }
    }
}

/// A worker's share of the rate: `rate / workers` per second (at least 1 when `rate` > 0), in
/// bursts of a tenth of a second (at least 16 frames).
pub(crate) fn worker_bucket(rate: u64, workers: usize) -> TokenBucket {
    let share = if rate == 0 { 0 } else { (rate / workers.max(1) as u64).max(1) };
    TokenBucket::new(share, (share / 10).max(16))
}

/// Whether a frame wgpmd did not consume may go to the kernel: a valid Ethernet frame to our
/// MAC, broadcast or multicast, on our VLAN (tagged with it when we have one, untagged when
/// not). Frames for other hosts (a packet socket sees them on a shared segment) stay out.
pub(crate) fn for_kernel(wan: &Wan, frame: &[u8]) -> bool {
    let Ok(eth) = ethernet::Frame::new_checked(frame) else { return false };
    let dst = eth.dst_addr();
    if dst != wan.mac && !dst.is_broadcast() && !dst.is_multicast() {
        return false;
    }
    match (eth.vlan_tag(), wan.vlan) {
        (None, None) => true,
        (Some(t), Some(v)) => t.vid == v,
        _ => false,
    }
}

/// Remove the 802.1Q tag in place (the kernel's TAP is the untagged VLAN interface); a frame
/// without a tag is left as it is.
pub(crate) fn untag(buf: &mut Buffer) {
    let d = buf.data_mut();
    if d.len() >= 18 && d[12..14] == [0x81, 0x00] {
        d.copy_within(0..12, 4);
        let _ = buf.trim_front(4);
    }
}

/// Insert our 802.1Q tag after the MAC addresses; false if there is no room (counted).
pub(crate) fn tag(buf: &mut Buffer, vid: u16) -> bool {
    if buf.len() < 14 || buf.prepend(4).is_err() {
        return false;
    }
    let d = buf.data_mut();
    d.copy_within(4..16, 0);
    d[12..14].copy_from_slice(&[0x81, 0x00]);
    d[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
    true
}

/// Whether a frame from the kernel is its answer for wgpmd's own address (an ARP reply from
/// it, a neighbour advertisement for it): wgpmd owns those answers.
pub(crate) fn kernel_answer_for_us(wan: &Wan, frame: &[u8]) -> bool {
    let Ok(eth) = ethernet::Frame::new_checked(frame) else { return false };
    match eth.inner_ethertype() {
        ethernet::EtherType::ARP => {
            let Some(ours) = wan.ipv4() else { return false };
            let Ok(p) = arp::Packet::new_checked(eth.payload()) else { return false };
            matches!(arp::Repr::parse(&p), Ok(r) if r.operation == arp::Operation::Reply && r.source_protocol_addr == ours)
        }
        ethernet::EtherType::IPV6 => {
            let Some(ours) = wan.ipv6() else { return false };
            let Ok(ip) = ipv6::Packet::new_checked(eth.payload()) else { return false };
            if ip.next_header() != IpProtocol::ICMPV6 {
                return false;
            }
            let Ok(p) = icmpv6::Packet::new_checked(ip.payload()) else { return false };
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            matches!(
                icmpv6::Repr::parse(&p, &src, &dst, &ChecksumCapabilities::ignored()),
                Ok(icmpv6::Repr::NeighborAdvert { target_addr, .. }) if target_addr == ours
            )
        }
        _ => false,
    }
}

/// The control core's side: the TAP's queue and the pool it reads into.
pub(crate) struct Tap {
    pub queue: Box<dyn Queue>,
    pub pool: Pool,
    tx: Vec<Buffer>,
    rx: Vec<Buffer>,
}

impl Tap {
    pub fn new(queue: Box<dyn Queue>, pool: Pool) -> Self {
        Tap { queue, pool, tx: Vec::with_capacity(BUDGET), rx: Vec::with_capacity(BUDGET) }
    }

    /// One round: up to a budget of frames each way. Returns how many moved.
    pub fn poll(&mut self, q: &Queues, wan: &Wan) -> usize {
        let mut work = 0;
        while self.tx.len() < BUDGET {
            let Some(b) = q.to_kernel.pop() else { break };
            self.tx.push(b);
        }
        if !self.tx.is_empty() {
            let n = self.tx.len();
            let before = self.queue.stats();
            self.queue.tx_burst(&mut self.tx);
            let after = self.queue.stats();
            let refused = after.tx_errors - before.tx_errors;
            q.tap_tx.fetch_add(after.tx_packets - before.tx_packets, Ordering::Relaxed);
            q.tap_tx_dropped.fetch_add(refused + self.tx.len() as u64, Ordering::Relaxed);
            self.tx.clear();
            work += n;
        }
        let n = self.queue.rx_burst(&self.pool, &mut self.rx, BUDGET);
        q.tap_rx.fetch_add(n as u64, Ordering::Relaxed);
        for mut b in self.rx.drain(..) {
            if kernel_answer_for_us(wan, b.data()) {
                q.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ok = match wan.vlan {
                Some(v) => tag(&mut b, v),
                None => b.len() >= 14,
            };
            if !ok {
                q.from_kernel_bad.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if q.from_kernel.push(b).is_err() {
                q.from_kernel_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        work + n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wan::WanAddr;
    use std::net::Ipv4Addr;
    use wgpmd_proto::wire::EthernetAddress;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn wan(vlan: Option<u16>) -> Wan {
        Wan {
            mac: MAC,
            v4: Some(WanAddr { addr: Ipv4Addr::new(192, 0, 2, 1), prefix: 24, gateway: None }),
            v6: None,
            vlan,
        }
    }

    fn frame(dst: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45; 46]);
        f
    }

    #[test]
    fn bucket_passes_the_rate_and_the_burst_then_refills() {
        let mut b = TokenBucket::new(100, 10);
        let t0 = 5 * NS;
        let passed = (0..1000).filter(|_| b.allow(t0)).count();
        assert_eq!(passed, 10, "the burst, then nothing at the same instant");
        // 100 ms later: 10 more.
        let passed = (0..1000).filter(|_| b.allow(t0 + NS / 10)).count();
        assert_eq!(passed, 10);
        // A long pause refills only up to the burst.
        let passed = (0..1000).filter(|_| b.allow(t0 + 100 * NS)).count();
        assert_eq!(passed, 10);
        // A clock that goes backwards gives nothing.
        assert!(!b.allow(t0));
        let mut z = TokenBucket::new(0, 10);
        // Rate 0: the initial burst is not given either.
        assert!(!z.allow(NS));
    }

    #[test]
    fn worker_share_of_the_rate() {
        let mut b = worker_bucket(1000, 4);
        let passed = (0..10_000u64).filter(|i| b.allow(NS + i * (NS / 10_000))).count();
        // 1 s of frames at 10 kHz: a burst of 25 plus 250 per second.
        assert!((250..=280).contains(&passed), "{passed}");
    }

    #[test]
    fn only_frames_for_us_on_our_vlan_go_to_the_kernel() {
        let w = wan(None);
        assert!(for_kernel(&w, &frame(MAC.0, None)));
        assert!(for_kernel(&w, &frame([0xff; 6], None)));
        assert!(for_kernel(&w, &frame([0x33, 0x33, 0, 0, 0, 1], None)));
        assert!(!for_kernel(&w, &frame([2, 0, 0, 0, 0, 7], None)), "another host's frame");
        assert!(!for_kernel(&w, &frame(MAC.0, Some(5))), "tagged without --vlan");
        assert!(!for_kernel(&w, &[0u8; 10]));
        let w = wan(Some(5));
        assert!(for_kernel(&w, &frame(MAC.0, Some(5))));
        assert!(!for_kernel(&w, &frame(MAC.0, Some(6))));
        assert!(!for_kernel(&w, &frame(MAC.0, None)));
    }

    #[test]
    fn tags_come_off_towards_the_kernel_and_on_towards_the_wan() {
        let pool = Pool::new("t", 4).unwrap();
        let tagged = frame(MAC.0, Some(5));
        let mut b = pool.alloc().unwrap();
        b.append(tagged.len()).unwrap().copy_from_slice(&tagged);
        untag(&mut b);
        assert_eq!(b.data(), frame(MAC.0, None).as_slice());
        assert!(tag(&mut b, 5));
        assert_eq!(b.data(), tagged.as_slice());
    }

    #[test]
    fn the_kernels_answers_for_our_address_are_recognised() {
        let w = wan(None);
        let reply = |sender: [u8; 4], op: u8| {
            let mut f = vec![2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, op];
            f.extend_from_slice(&MAC.0);
            f.extend_from_slice(&sender);
            f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 192, 0, 2, 9]);
            f
        };
        assert!(kernel_answer_for_us(&w, &reply([192, 0, 2, 1], 2)));
        assert!(!kernel_answer_for_us(&w, &reply([192, 0, 2, 1], 1)), "its requests go out");
        assert!(!kernel_answer_for_us(&w, &reply([192, 0, 2, 3], 2)), "another address of the kernel's");
        assert!(!kernel_answer_for_us(&w, &frame(MAC.0, None)));
    }
}
