//! One data-plane worker: polls its WAN and inner queues in bursts and runs each packet to
//! completion (docs/ARCHITECTURE.md, "The daemon"). The WAN side's decisions (what a frame is,
//! the replies, the outer headers, the next hop) come from the sans-IO [`crate::wan`]; the
//! worker owns the buffers and queues.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nic_backends::{Buffer, Pool, Queue};

use super::handshakes::{self, Stage};
use super::stats::Local;
use super::{PollMode, Shared};
use crate::wan::{self, icmp, Classified, Heard, NeighCache, Outer, Unroutable};
use wgpmd_proto::device::{inner_dst, Device, DropReason, Output};
use wgpmd_proto::messages::{DATA_HEADER_LEN, HANDSHAKE_DSCP, MESSAGE_DATA};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

/// Packets per burst.
pub const BURST: usize = 32;
/// Empty iterations before an adaptive worker starts sleeping.
const SPIN_BEFORE_SLEEP: u32 = 64;
/// Longest adaptive sleep.
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// The prepared AEAD keys a worker caches (`Output::forget_keys`) are dropped at least this
/// often, and whenever the worker finds nothing to do: a dead session's key must not outlive it
/// in a cache (WireGuard promises session keys are gone within 3 × REJECT_AFTER_TIME).
pub(crate) const KEY_CACHE_MAX_AGE: Duration = Duration::from_secs(60);

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
    /// Handshake-stage messages: screened on arrival, DH work a budget per iteration.
    hs: Stage,
}

impl Worker {
    pub fn new(id: usize, sh: Arc<Shared>, wan: Box<dyn Queue>, inner: Box<dyn Queue>, pool: Pool, hs: Stage) -> Self {
        sh.handoff.staging.register_pool(&pool);
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
            hs,
        }
    }

    pub fn run(mut self) {
        let mut idle = 0u32;
        let mut sleep = Duration::from_micros(10);
        let mut iter = 0u64;
        let mut keys_since = self.sh.data.clock.now();
        // One reference for the whole loop: cloning the Arc per iteration would bounce its
        // counter between every worker's and the control core's caches.
        let sh = self.sh.clone();
        while !sh.stopping() {
            let now = sh.data.clock.now();
            self.neigh.sync(&sh.data.neigh);
            let mut work = 0;
            {
                let dev = sh.data.device.read().unwrap_or_else(|e| e.into_inner());
                work += self.wan_rx(&dev, now);
                work += self.inner_rx(&dev, now);
                work += self.hs.process(&dev, &sh.handoff.hs_load, now, handshakes::BUDGET, &mut self.out);
                // Under the read lock: configuration, which clears a removed peer's
                // notifications, never runs between a device call and its notification.
                self.post_events();
            }
            work += self.tx_jobs(now);
            // Responses and cookie replies leave in this iteration's burst.
            self.forward_transmits();
            self.flush();
            iter += 1;
            if iter.is_multiple_of(64) {
                self.hs.rng.reseed_if_due(now);
                if now - keys_since >= KEY_CACHE_MAX_AGE {
                    self.out.forget_keys();
                    keys_since = now;
                }
                self.publish(false);
                if self.port_fault() {
                    break;
                }
            }
            if work > 0 || sh.data.poll == PollMode::Busy {
                idle = 0;
                sleep = Duration::from_micros(10);
                continue;
            }
            idle += 1;
            if idle == 1 {
                self.out.forget_keys();
                keys_since = now;
            }
            if idle > SPIN_BEFORE_SLEEP {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(MAX_SLEEP);
            } else {
                std::hint::spin_loop();
            }
        }
        self.flush();
        self.publish(true);
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

    /// Publish the counters for `wgpmd stats` and the metrics endpoint; `last`: the final
    /// publication (waits for a reader to finish; the others skip while one reads).
    fn publish(&mut self, last: bool) {
        self.c.device.clone_from(&self.out.stats);
        self.c.hs.clone_from(&self.hs.c);
        self.c.wan_queue = self.wan.stats();
        self.c.inner_queue = self.inner.stats();
        if last {
            self.sh.workers[self.id].store(&self.c);
        } else {
            self.sh.workers[self.id].try_store(&self.c);
        }
    }

    /// WAN: classify, answer ARP/ND/ICMP, decrypt data, screen handshakes.
    fn wan_rx(&mut self, dev: &Device, now: Timestamp) -> usize {
        let mut rx = std::mem::take(&mut self.rx);
        let n = self.wan.rx_burst(&self.pool, &mut rx, BURST);
        self.c.wan_rx += n as u64;
        let wan = self.sh.data.wan;
        let port = self.sh.data.listen_port.load(Ordering::Relaxed);
        for mut buf in rx.drain(..) {
            match wan.classify(buf.data(), port) {
                Ok(Classified::ArpRequest { ip, mac }) => {
                    self.learn(ip, mac, Heard::Asked, now);
                    if let Some(len) = wan.arp_reply_in_place(buf.data_mut()) {
                        buf.truncate(len);
                        self.wan_tx.push(buf);
                        self.c.arp_replies += 1;
                    }
                }
                Ok(Classified::ArpLearn { ip, mac }) => self.learn(ip, mac, Heard::Answer, now),
                Ok(Classified::EchoRequest) => {
                    if let Some(len) = wan.echo_reply_in_place(buf.data_mut()) {
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
                        self.hs.arrive(dev, &self.sh.handoff.hs_load, now, src, buf.data(), &mut self.out);
                    }
                }
                Ok(Classified::NeighborSolicit { ip, mac, learn }) => {
                    if learn {
                        self.learn(ip, mac, Heard::Asked, now);
                    }
                    // Answered from a fresh buffer: the solicitation may be too short for the
                    // advertisement with its option. The request buffer goes back to the pool.
                    drop(buf);
                    let Some(mut na) = self.pool.alloc() else { continue };
                    if let Ok(b) = na.append(wan::SOLICIT_ROOM) {
                        if let Some(len) = wan.neighbor_advert(b, ip, mac) {
                            na.truncate(len);
                            self.wan_tx.push(na);
                            self.c.arp_replies += 1;
                        }
                    }
                }
                Ok(Classified::NeighborLearn { ip, mac }) => self.learn(ip, mac, Heard::Answer, now),
                Err(r) => self.c.wan_drops[r as usize] += 1,
            }
        }
        self.rx = rx;
        n
    }

    fn data_in(&mut self, dev: &Device, now: Timestamp, src: SocketAddr, src_mac: EthernetAddress, mut buf: Buffer) {
        // Drops are counted in out.stats by reason.
        let Ok(d) = dev.decapsulate(now, src, buf.data_mut(), &mut self.out) else { return };
        // The sender's MAC is the next hop back to it: learn from authenticated traffic.
        if let Some(hop) = self.sh.data.wan.next_hop(src.ip()) {
            if !self.neigh.confirmed(hop, src_mac, now) {
                self.learn(hop, src_mac, Heard::Traffic, now);
                // Cache it again (fresh now) so the next packets skip the check.
                self.neigh.lookup(&self.sh.data.neigh, hop, now);
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
                    let d = self.sh.handoff.staging.stage(peer, buf);
                    self.c.staged_dropped += u64::from(d.peer_cap);
                    self.c.staged_dropped_cap += u64::from(d.pool_cap);
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
            let Some(job) = self.sh.handoff.tx_jobs.pop() else { break };
            self.send_wg(job.buf, job.to, job.tos, now);
            n += 1;
        }
        n
    }

    /// Put the outer headers in front of a WireGuard message (to an IPv4 or IPv6 endpoint) and
    /// queue it on the WAN, or park it until the next hop resolves.
    fn send_wg(&mut self, mut buf: Buffer, to: SocketAddr, tos: u8, now: Timestamp) {
        let wan = self.sh.data.wan;
        let route = match wan.route(to.ip()) {
            Ok(r) => r,
            Err(Unroutable::NoIpv6Address) => {
                self.c.no_ipv6_wan += 1;
                return;
            }
            Err(Unroutable::NoIpv4Address | Unroutable::NoNextHop) => {
                self.c.no_route += 1;
                return;
            }
        };
        let payload_len = buf.len();
        let port = self.sh.data.listen_port.load(Ordering::Relaxed);
        self.ident = self.ident.wrapping_add(1);
        let res = self.neigh.lookup(&self.sh.data.neigh, route.hop, now);
        let outer = Outer {
            src_mac: wan.mac,
            // Unresolved: rewritten when the next hop is learned (`learn`).
            dst_mac: res.mac.unwrap_or(EthernetAddress([0; 6])),
            vlan: wan.vlan,
            src: SocketAddr::new(route.src, port),
            dst: to,
            tos,
            ident: self.ident,
        };
        if buf.prepend(outer.header_len()).is_err() {
            self.out.stats.drop(DropReason::BufferTooSmall);
            return;
        }
        if outer.emit(buf.data_mut(), payload_len).is_err() {
            return;
        }
        if res.mac.is_some() {
            self.wan_tx.push(buf);
            if res.probe {
                self.solicit(route.hop);
            }
            return;
        }
        let parked = self.sh.data.neigh.park(route.hop, buf, now);
        self.c.unresolved_dropped += parked.dropped as u64;
        if parked.ask {
            self.solicit(route.hop);
        }
    }

    /// Ask who has `hop`: a broadcast ARP request, or a neighbour solicitation to its
    /// solicited-node multicast address.
    fn solicit(&mut self, hop: IpAddr) {
        let Some(mut req) = self.pool.alloc() else { return };
        if let Ok(b) = req.append(wan::SOLICIT_ROOM) {
            if let Some(len) = self.sh.data.wan.solicit(b, hop) {
                req.truncate(len);
                self.wan_tx.push(req);
                self.c.arp_requests += 1;
            }
        }
    }

    /// Learn a neighbour as the table's rules allow (refusals are counted there).
    fn learn(&mut self, ip: impl Into<IpAddr>, mac: EthernetAddress, heard: Heard, now: Timestamp) {
        let ip = ip.into();
        let Ok(frames) = self.sh.data.neigh.learn(&self.sh.data.wan, ip, mac, heard, now) else { return };
        // Our copy may be the old address; the others drop theirs at the generation change.
        self.neigh.forget(ip);
        for mut f in frames {
            wan::set_dst_mac(f.data_mut(), mac);
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

    /// Hand the burst's events to the control core (never lost: see `notify.rs`).
    fn post_events(&mut self) {
        for e in self.out.events.drain(..) {
            self.sh.handoff.notes.post(&e);
        }
    }

    /// What the device calls produced to send: handshake responses and cookie replies (the
    /// handshake stage), keepalives (rare: most iterations stop here, without a clock read or a
    /// vector to build).
    fn forward_transmits(&mut self) {
        if self.out.transmits.is_empty() {
            return;
        }
        let now = self.sh.data.clock.now();
        let mut transmits = std::mem::take(&mut self.out.transmits);
        for t in transmits.drain(..) {
            let Some(mut b) = self.pool.alloc() else {
                self.c.transmits_dropped += 1;
                continue;
            };
            if let Ok(d) = b.append(t.payload().len()) {
                d.copy_from_slice(t.payload());
                let tos = if t.payload().first() == Some(&MESSAGE_DATA) { 0 } else { HANDSHAKE_DSCP };
                self.send_wg(b, t.to, tos, now);
            }
        }
        // Keep the capacity for the next burst's replies.
        if self.out.transmits.is_empty() {
            self.out.transmits = transmits;
        }
    }
}
