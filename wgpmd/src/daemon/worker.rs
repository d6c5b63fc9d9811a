//! One data-plane worker: polls its WAN and inner queues in bursts and runs each packet to
//! completion (docs/ARCHITECTURE.md, "The daemon").

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nic_backends::{Buffer, Pool, Queue};

use super::frames::{self, Classified, OuterV4, OuterV6};
use super::icmp;
use super::neigh::{Neighbours, Resolution};
use super::stats::Local;
use super::{HandshakeJob, PollMode, Shared};
use wgpmd_proto::device::{Device, DropReason, Output};
use wgpmd_proto::messages::{DATA_HEADER_LEN, INITIATION_LEN, MESSAGE_DATA};
use wgpmd_proto::time::Timestamp;

/// Packets per burst.
pub const BURST: usize = 32;
/// Empty iterations before an adaptive worker starts sleeping.
const SPIN_BEFORE_SLEEP: u32 = 64;
/// Longest adaptive sleep.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Slots of a worker's neighbour cache.
const NEIGH_SLOTS: usize = 256;

/// A worker's private copy of neighbour entries it used, valid for one generation of the
/// shared table: the data path reads it without the shared table's lock (an atomic
/// read-modify-write on a line every worker shares) and without hashing with SipHash, twice
/// per packet otherwise (learning check on receive, next hop on send). Direct-mapped; a
/// miss falls through to the shared table.
struct NeighCache {
    generation: u64,
    slots: Box<[Option<NeighSlot>; NEIGH_SLOTS]>,
}

/// A fresh entry: its MAC, until when it is used without asking the shared table, and until
/// when traffic from it need not confirm it there.
#[derive(Clone, Copy)]
struct NeighSlot {
    ip: IpAddr,
    mac: wgpmd_proto::wire::EthernetAddress,
    stale_at: Timestamp,
    refresh_after: Timestamp,
}

impl NeighCache {
    fn new() -> Self {
        NeighCache { generation: 0, slots: Box::new([None; NEIGH_SLOTS]) }
    }
    fn slot(ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => {
                let o = a.octets();
                u32::from_be_bytes([o[12], o[13], o[14], o[15]]) ^ u32::from_be_bytes([o[8], o[9], o[10], o[11]])
            }
        };
        (key.wrapping_mul(0x9e37_79b9) >> 24) as usize % NEIGH_SLOTS
    }
    /// Forget everything if the shared table changed since the copies were taken.
    fn sync(&mut self, shared: &Neighbours) {
        let g = shared.generation();
        if g != self.generation {
            self.slots.fill(None);
            self.generation = g;
        }
    }
    /// The next hop's MAC for a frame sent now; stale and unknown hops go to the shared table
    /// (which says whether to send an ARP request).
    fn lookup(&mut self, shared: &Neighbours, ip: impl Into<IpAddr>, now: Timestamp) -> Resolution {
        let ip = ip.into();
        let slot = &mut self.slots[Self::slot(ip)];
        if let Some(s) = *slot {
            if s.ip == ip && now < s.stale_at {
                return Resolution {
                    mac: Some(s.mac),
                    probe: false,
                    stale_at: s.stale_at,
                    refresh_after: s.refresh_after,
                };
            }
        }
        let r = shared.resolve(ip, now);
        *slot = match r.mac {
            Some(mac) if now < r.stale_at => {
                Some(NeighSlot { ip, mac, stale_at: r.stale_at, refresh_after: r.refresh_after })
            }
            _ => None,
        };
        r
    }
    /// Whether traffic from `ip` at `mac` needs no confirmation in the shared table now.
    fn confirmed(&self, ip: impl Into<IpAddr>, mac: wgpmd_proto::wire::EthernetAddress, now: Timestamp) -> bool {
        let ip = ip.into();
        self.slots[Self::slot(ip)].is_some_and(|s| s.ip == ip && s.mac == mac && now < s.refresh_after)
    }
    fn forget(&mut self, ip: impl Into<IpAddr>) {
        let ip = ip.into();
        let slot = &mut self.slots[Self::slot(ip)];
        if slot.is_some_and(|s| s.ip == ip) {
            *slot = None;
        }
    }
}

pub(crate) struct Worker {
    id: usize,
    sh: Arc<Shared>,
    wan: Box<dyn Queue>,
    inner: Box<dyn Queue>,
    pool: Pool,
    out: Output,
    rx: Vec<Buffer>,
    wan_tx: Vec<Buffer>,
    inner_tx: Vec<Buffer>,
    c: Local,
    ident: u16,
    neigh: NeighCache,
    pmtu_limit: icmp::RateLimit,
}

/// Destination address of an inner IP packet.
fn inner_dst(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => {
            let b: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

impl Worker {
    pub fn new(id: usize, sh: Arc<Shared>, wan: Box<dyn Queue>, inner: Box<dyn Queue>, pool: Pool) -> Self {
        Worker {
            id,
            sh,
            wan,
            inner,
            pool,
            out: Output::with_capacity(BURST * 2),
            rx: Vec::with_capacity(BURST),
            wan_tx: Vec::with_capacity(BURST * 4),
            inner_tx: Vec::with_capacity(BURST * 2),
            c: Local::default(),
            ident: 0,
            neigh: NeighCache::new(),
            pmtu_limit: icmp::RateLimit::new(),
        }
    }

    pub fn run(mut self) {
        let mut idle = 0u32;
        let mut sleep = Duration::from_micros(10);
        let mut iter = 0u64;
        // One reference for the whole loop: cloning the Arc per iteration would bounce its
        // counter between every worker's and the control core's caches.
        let sh = self.sh.clone();
        while !sh.stopping() {
            let now = sh.clock.now();
            self.neigh.sync(&sh.neigh);
            let mut work = 0;
            {
                let dev = sh.device.read().unwrap_or_else(|e| e.into_inner());
                work += self.wan_rx(&dev, now);
                work += self.inner_rx(&dev, now);
            }
            work += self.tx_jobs(now);
            self.flush();
            self.forward_events();
            iter += 1;
            if iter % 64 == 0 {
                self.publish();
                if self.port_fault() {
                    break;
                }
            }
            if work > 0 || sh.poll == PollMode::Busy {
                idle = 0;
                sleep = Duration::from_micros(10);
                continue;
            }
            idle += 1;
            if idle > SPIN_BEFORE_SLEEP {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(MAX_SLEEP);
            } else {
                std::hint::spin_loop();
            }
        }
        self.flush();
        self.publish();
    }

    /// A queue that reports a fault it cannot recover from (a VFIO device that set NEEDS_RESET,
    /// stalled transmits) stops the daemon: it exits non-zero with the message instead of
    /// running on with a dead port.
    fn port_fault(&mut self) -> bool {
        for (which, q) in [("WAN", &self.wan), ("inner", &self.inner)] {
            if let Err(msg) = q.health() {
                tracing::error!("worker {}: {which} port failed: {msg}", self.id);
                self.sh.fail(format!("{which} port: {msg}"));
                return true;
            }
        }
        false
    }

    fn publish(&mut self) {
        self.c.device = self.out.stats.clone();
        self.c.wan_queue = self.wan.stats();
        self.c.inner_queue = self.inner.stats();
        self.sh.workers[self.id].store(&self.c);
    }

    /// WAN: classify, answer ARP/ICMP, decrypt data, queue handshakes.
    fn wan_rx(&mut self, dev: &Device, now: Timestamp) -> usize {
        let mut rx = std::mem::take(&mut self.rx);
        let n = self.wan.rx_burst(&self.pool, &mut rx, BURST);
        self.c.wan_rx += n as u64;
        let wan = self.sh.wan;
        let port = self.sh.listen_port.load(Ordering::Relaxed);
        for mut buf in rx.drain(..) {
            match frames::classify_dual(buf.data(), wan.ip4(), wan.ip6, port, wan.vlan) {
                Ok(Classified::ArpRequest { ip, mac }) => {
                    self.learn(ip, mac, now);
                    if let Some(len) = frames::arp_reply_in_place(buf.data_mut(), wan.mac, wan.ip) {
                        buf.truncate(len);
                        self.wan_tx.push(buf);
                        self.c.arp_replies += 1;
                    }
                }
                Ok(Classified::ArpLearn { ip, mac }) => self.learn(ip, mac, now),
                Ok(Classified::EchoRequest) => {
                    if let Some(len) = frames::icmp_echo_reply_in_place(buf.data_mut(), wan.mac) {
                        buf.truncate(len);
                        self.wan_tx.push(buf);
                        self.c.icmp_replies += 1;
                    }
                }
                Ok(Classified::WireGuard { src, src_mac, offset, len }) => {
                    if buf.trim_front(offset).is_err() {
                        continue;
                    }
                    buf.truncate(len);
                    if buf.data().first() == Some(&MESSAGE_DATA) {
                        self.data_in(dev, now, src, src_mac, buf);
                    } else {
                        self.handshake_in(src, &buf);
                    }
                }
                Ok(Classified::NeighborSolicit { ip, mac, learn }) => {
                    if learn {
                        self.learn(ip, mac, now);
                    }
                    let Some(ours) = wan.ip6 else { continue };
                    // Answered from a fresh buffer: the solicitation may be too short for the
                    // advertisement with its option. The request buffer goes back to the pool.
                    drop(buf);
                    let Some(mut na) = self.pool.alloc() else { continue };
                    if let Ok(b) = na.append(frames::ND_FRAME_LEN + 4) {
                        if let Some(len) = frames::neighbor_advert(b, wan.mac, ours, mac, ip, wan.vlan) {
                            na.truncate(len);
                            self.wan_tx.push(na);
                            self.c.arp_replies += 1;
                        }
                    }
                }
                Ok(Classified::NeighborLearn { ip, mac }) => self.learn(ip, mac, now),
                Err(r) => self.c.wan_drops[r as usize] += 1,
            }
        }
        self.rx = rx;
        n
    }

    fn data_in(
        &mut self,
        dev: &Device,
        now: Timestamp,
        src: SocketAddr,
        src_mac: wgpmd_proto::wire::EthernetAddress,
        mut buf: Buffer,
    ) {
        // Drops are counted in out.stats by reason.
        let Ok(d) = dev.decapsulate(now, src, buf.data_mut(), &mut self.out) else { return };
        // The sender's MAC is the next hop back to it: learn from authenticated traffic.
        let hop: Option<IpAddr> = match src {
            SocketAddr::V4(s) => self.sh.wan.next_hop(*s.ip()).map(IpAddr::V4),
            SocketAddr::V6(s) => self.sh.wan.next_hop6(*s.ip()).map(IpAddr::V6),
        };
        if let Some(hop) = hop {
            if !self.neigh.confirmed(hop, src_mac, now) {
                self.learn(hop, src_mac, now);
                // Cache it again (fresh now) so the next packets skip the check.
                self.neigh.lookup(&self.sh.neigh, hop, now);
            }
        }
        if d.is_keepalive() {
            return;
        }
        self.c.data_rx += 1;
        if buf.trim_front(d.range.start).is_ok() {
            buf.truncate(d.range.len());
            self.inner_tx.push(buf);
        }
    }

    fn handshake_in(&mut self, src: SocketAddr, buf: &Buffer) {
        let data = buf.data();
        if data.len() > INITIATION_LEN {
            self.out.stats.drop(DropReason::Malformed);
            return;
        }
        let mut job = HandshakeJob { src, len: data.len(), msg: [0u8; INITIATION_LEN] };
        job.msg[..data.len()].copy_from_slice(data);
        if self.sh.handshakes.push(job).is_err() {
            self.c.handshake_queue_full += 1;
        } else {
            self.c.handshakes_queued += 1;
        }
    }

    /// Inner side: route, encrypt in place, add the outer header.
    fn inner_rx(&mut self, dev: &Device, now: Timestamp) -> usize {
        let mut rx = std::mem::take(&mut self.rx);
        let n = self.inner.rx_burst(&self.pool, &mut rx, BURST);
        self.c.inner_rx += n as u64;
        for mut buf in rx.drain(..) {
            let plain_len = buf.len();
            let Some(peer) = inner_dst(buf.data()).and_then(|d| dev.route(d)) else {
                self.out.stats.drop(DropReason::NoRoute);
                continue;
            };
            if plain_len > dev.mtu() {
                self.too_big(buf, dev.mtu(), now);
                continue;
            }
            if buf.prepend(DATA_HEADER_LEN).is_err() {
                self.out.stats.drop(DropReason::BufferTooSmall);
                continue;
            }
            match dev.encapsulate_to(now, peer, buf.data_and_tailroom_mut(), plain_len, &mut self.out) {
                Ok(e) => {
                    if buf.set_len(e.len).is_ok() {
                        self.c.data_tx += 1;
                        self.send_wg(buf, e.to, 0, now);
                    }
                }
                Err(DropReason::NoSession) => {
                    let _ = buf.trim_front(DATA_HEADER_LEN);
                    if !self.sh.stage(peer, buf) {
                        self.c.staged_dropped += 1;
                    }
                }
                Err(_) => {}
            }
        }
        self.rx = rx;
        n
    }

    /// An inner packet longer than the tunnel MTU: dropped, and answered (rate-limited) with
    /// a fragmentation-needed / packet-too-big error written back into the inner port.
    fn too_big(&mut self, buf: Buffer, mtu: usize, now: Timestamp) {
        self.c.too_big_dropped += 1;
        if !self.pmtu_limit.allow(now) {
            return;
        }
        let Some(mut err) = self.pool.alloc() else { return };
        let Ok(out) = err.append(icmp::MAX_ERROR_LEN) else { return };
        if let icmp::TooBig::Error(len) = icmp::too_big(buf.data(), mtu, out) {
            err.truncate(len);
            self.inner_tx.push(err);
            self.c.pmtu_icmp_sent += 1;
        }
    }

    /// Messages the control core wants sent.
    fn tx_jobs(&mut self, now: Timestamp) -> usize {
        let mut n = 0;
        while n < BURST {
            let Some(job) = self.sh.tx_jobs.pop() else { break };
            self.send_wg(job.buf, job.to, job.tos, now);
            n += 1;
        }
        n
    }

    /// Put the outer headers in front of a WireGuard message and queue it on the WAN, or park
    /// it until the next hop resolves.
    fn send_wg(&mut self, buf: Buffer, to: SocketAddr, tos: u8, now: Timestamp) {
        let to = match to {
            SocketAddr::V4(to) => to,
            SocketAddr::V6(to) => return self.send_wg6(buf, to, tos, now),
        };
        let mut buf = buf;
        let wan = self.sh.wan;
        let Some(hop) = wan.next_hop(*to.ip()) else {
            self.c.no_route += 1;
            return;
        };
        let payload_len = buf.len();
        let port = self.sh.listen_port.load(Ordering::Relaxed);
        self.ident = self.ident.wrapping_add(1);
        let res = self.neigh.lookup(&self.sh.neigh, hop, now);
        let dst_mac = res.mac;
        let outer = OuterV4 {
            src_mac: wan.mac,
            dst_mac: dst_mac.unwrap_or(wgpmd_proto::wire::EthernetAddress([0; 6])),
            src: SocketAddrV4::new(wan.ip, port),
            dst: to,
            tos,
            ident: self.ident,
            vlan: wan.vlan,
        };
        let Ok(hdr) = buf.prepend(outer.header_len()) else {
            self.out.stats.drop(DropReason::BufferTooSmall);
            return;
        };
        if outer.write(hdr, payload_len).is_none() {
            return;
        }
        if dst_mac.is_some() {
            self.wan_tx.push(buf);
            if res.probe {
                self.arp_request(hop);
            }
            return;
        }
        let (ask, dropped) = self.sh.neigh.park(hop, buf, now);
        if dropped {
            self.c.unresolved_dropped += 1;
        }
        if ask {
            self.arp_request(hop);
        }
    }

    /// [`send_wg`](Self::send_wg) to an IPv6 endpoint: OuterV6 via the IPv6 next hop,
    /// resolved by neighbour solicitation.
    fn send_wg6(&mut self, mut buf: Buffer, to: SocketAddrV6, tclass: u8, now: Timestamp) {
        let wan = self.sh.wan;
        let Some(ours) = wan.ip6 else {
            self.c.no_ipv6_wan += 1;
            return;
        };
        let Some(hop) = wan.next_hop6(*to.ip()) else {
            self.c.no_route += 1;
            return;
        };
        let payload_len = buf.len();
        let port = self.sh.listen_port.load(Ordering::Relaxed);
        let res = self.neigh.lookup(&self.sh.neigh, hop, now);
        let dst_mac = res.mac;
        let outer = OuterV6 {
            src_mac: wan.mac,
            dst_mac: dst_mac.unwrap_or(wgpmd_proto::wire::EthernetAddress([0; 6])),
            src: SocketAddrV6::new(ours, port, 0, 0),
            dst: SocketAddrV6::new(*to.ip(), to.port(), 0, 0),
            tclass,
            vlan: wan.vlan,
        };
        if buf.prepend(outer.header_len()).is_err() {
            self.out.stats.drop(DropReason::BufferTooSmall);
            return;
        }
        if outer.write(buf.data_mut(), payload_len).is_none() {
            return;
        }
        if dst_mac.is_some() {
            self.wan_tx.push(buf);
            if res.probe {
                self.neighbor_solicit(hop);
            }
            return;
        }
        let (ask, dropped) = self.sh.neigh.park(hop, buf, now);
        if dropped {
            self.c.unresolved_dropped += 1;
        }
        if ask {
            self.neighbor_solicit(hop);
        }
    }

    /// Ask who has `hop` (a neighbour solicitation to its solicited-node multicast address).
    fn neighbor_solicit(&mut self, hop: std::net::Ipv6Addr) {
        let wan = self.sh.wan;
        let Some(ours) = wan.ip6 else { return };
        let Some(mut req) = self.pool.alloc() else { return };
        if let Ok(b) = req.append(frames::ND_FRAME_LEN + 4) {
            if let Some(len) = frames::neighbor_solicit(b, wan.mac, ours, hop, wan.vlan) {
                req.truncate(len);
                self.wan_tx.push(req);
                self.c.arp_requests += 1;
            }
        }
    }

    /// Ask who has `hop` (a broadcast ARP request on the WAN).
    fn arp_request(&mut self, hop: Ipv4Addr) {
        let wan = self.sh.wan;
        let Some(mut req) = self.pool.alloc() else { return };
        if let Ok(b) = req.append(64) {
            if let Some(len) = frames::arp_request(b, wan.mac, wan.ip, hop, wan.vlan) {
                req.truncate(len.max(60));
                self.wan_tx.push(req);
                self.c.arp_requests += 1;
            }
        }
    }

    fn learn(&mut self, ip: impl Into<IpAddr>, mac: wgpmd_proto::wire::EthernetAddress, now: Timestamp) {
        let ip = ip.into();
        // Our copy may be the old address; the others drop theirs at the generation change.
        self.neigh.forget(ip);
        for mut f in self.sh.neigh.learn(ip, mac, now) {
            if let Some(d) = f.data_mut().get_mut(..6) {
                d.copy_from_slice(&mac.0);
            }
            self.wan_tx.push(f);
        }
    }

    fn flush(&mut self) {
        for (q, list, drops) in [
            (&mut self.wan, &mut self.wan_tx, &mut self.c.wan_tx_dropped),
            (&mut self.inner, &mut self.inner_tx, &mut self.c.inner_tx_dropped),
        ] {
            if list.is_empty() {
                continue;
            }
            q.tx_burst(list);
            if !list.is_empty() {
                q.tx_burst(list);
            }
            *drops += list.len() as u64;
            list.clear();
        }
    }

    fn forward_events(&mut self) {
        for e in self.out.events.drain(..) {
            if self.sh.events.push(e).is_err() {
                self.c.events_dropped += 1;
            }
        }
        // The data path sends no control messages itself; anything here is a keepalive (rare:
        // most iterations stop here, without a clock read or a vector to build).
        if self.out.transmits.is_empty() {
            return;
        }
        let now = self.sh.clock.now();
        let mut transmits = std::mem::take(&mut self.out.transmits);
        for t in transmits.drain(..) {
            if let Some(mut b) = self.pool.alloc() {
                if let Ok(d) = b.append(t.payload().len()) {
                    d.copy_from_slice(t.payload());
                    self.send_wg(b, t.to, 0, now);
                }
            }
        }
        // Keep the capacity for the next keepalive.
        if self.out.transmits.is_empty() {
            self.out.transmits = transmits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpmd_proto::wire::EthernetAddress;

    #[test]
    fn neighbour_cache_follows_the_shared_table() {
        let shared = Neighbours::new();
        let (ip, other) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        let (a, b) = (EthernetAddress([2, 0, 0, 0, 0, 0xa]), EthernetAddress([2, 0, 0, 0, 0, 0xb]));
        let now = Timestamp::from_nanos(1);
        let mut c = NeighCache::new();
        c.sync(&shared);
        assert_eq!(c.lookup(&shared, ip, now).mac, None, "unresolved hops are not cached");
        shared.learn(ip, a, now);
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(a));
        let g = shared.generation();
        shared.learn(ip, a, now);
        assert_eq!(shared.generation(), g, "learning what is known changes nothing");
        // Another worker learns a new address: ours holds the old one until the next sync.
        shared.learn(ip, b, now);
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(a));
        c.sync(&shared);
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(b));
        shared.learn(other, a, now);
        c.sync(&shared);
        assert_eq!((c.lookup(&shared, ip, now).mac, c.lookup(&shared, other, now).mac), (Some(b), Some(a)));
        c.forget(ip);
        assert!(c.slots.iter().flatten().all(|s| s.ip != ip));
    }

    #[test]
    fn neighbour_cache_hands_stale_entries_to_the_shared_table() {
        let shared = Neighbours::with_timing(super::super::neigh::NeighTiming {
            reachable_ns: 1000,
            retrans_ns: 100,
            probes: 1,
        });
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let a = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
        let mut c = NeighCache::new();
        shared.learn(ip, a, Timestamp::from_nanos(1));
        c.sync(&shared);
        let r = c.lookup(&shared, ip, Timestamp::from_nanos(10));
        assert_eq!((r.mac, r.probe), (Some(a), false));
        assert!(c.confirmed(ip, a, Timestamp::from_nanos(10)));
        assert!(!c.confirmed(ip, a, Timestamp::from_nanos(600)), "half the reachable time: confirm again");
        // Stale: the shared table asks once, keeps the MAC, then drops it.
        let r = c.lookup(&shared, ip, Timestamp::from_nanos(1100));
        assert_eq!((r.mac, r.probe), (Some(a), true));
        assert_eq!(c.lookup(&shared, ip, Timestamp::from_nanos(1150)).mac, Some(a));
        assert_eq!(c.lookup(&shared, ip, Timestamp::from_nanos(1200)).mac, None);
        c.sync(&shared);
        assert!(c.slots.iter().all(Option::is_none));
    }
}
