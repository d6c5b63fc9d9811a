//! One data-plane worker: polls its WAN and inner queues in bursts and runs each packet to
//! completion (docs/ARCHITECTURE.md, "The daemon"). The WAN side's decisions (what a frame is,
//! the replies, the outer headers, the next hop) come from the sans-IO [`crate::wan`]; the
//! worker owns the buffers and queues.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nic_backends::{Buffer, Pool, Queue};

use super::exception::{self, TokenBucket};
use super::handshakes::{self, Stage};
use super::stats::Local;
use super::{PollMode, Shared};
use crate::wan::{self, icmp, Classified, Heard, NeighCache, Outer, Unroutable};
use wgpmd_proto::device::{
    inner_dst, recycle, Decapsulated, Device, DropReason, Encapsulated, Output, PeerId, RxItem, TxItem,
};
use wgpmd_proto::messages::{DATA_HEADER_LEN, HANDSHAKE_DSCP, MESSAGE_DATA};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

/// Packets per burst.
pub const BURST: usize = 32;
/// Empty iterations before an adaptive worker starts sleeping.
const SPIN_BEFORE_SLEEP: u32 = 64;
/// Longest adaptive sleep.
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// The worker's cached receiver-index lookups whose keypair the device dropped
/// (`Output::forget_dropped_keys`) are released at least this often, and whenever the worker
/// finds nothing to do: a dead session's key must not outlive it in a cache (WireGuard promises
/// session keys are gone within 3 × REJECT_AFTER_TIME). The lookups of live keypairs stay (the
/// device holds those keys anyway), so the first burst after a pause hits the cache.
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
    /// The last destination `send_wg` resolved in this poll iteration (see [`LastHop`]).
    last_hop: Option<LastHop>,
    pmtu_limit: icmp::RateLimit,
    /// Handshake-stage messages: screened on arrival, DH work a budget per iteration.
    hs: Stage,
    /// The DH work's share of this worker's time while its ports have a backlog.
    share: handshakes::Share,
    /// Whether the last iteration had a backlog of data (`handshakes::data_backlog`; published
    /// in the handshake load when it changes).
    backlogged: bool,
    /// This worker's share of the exception path's rate (`None`: no exception path).
    exc_bucket: Option<TokenBucket>,
    /// The WAN burst's data messages (with their source and its MAC), opened as one burst.
    data: Vec<(Buffer, SocketAddr, EthernetAddress)>,
    /// The inner burst's routed packets (with their peer and plaintext length), sealed as one.
    seal: Vec<(Buffer, PeerId, usize)>,
    /// The inner burst's destinations and their routes (reused, no allocation per burst).
    dsts: Vec<Option<IpAddr>>,
    routes: Vec<Option<PeerId>>,
    /// Reused room for the device's burst items and results (no allocation per burst).
    rx_items: Vec<RxItem<'static>>,
    tx_items: Vec<TxItem<'static>>,
    rx_results: Vec<Result<Decapsulated, DropReason>>,
    tx_results: Vec<Result<Encapsulated, DropReason>>,
    /// Test hook: panic on the first IPv4 packet from the inner port ([`PANIC_HOOK_ENV`] names
    /// this worker).
    #[cfg(feature = "test-hooks")]
    panic_hook: bool,
}

/// Test hook (feature `test-hooks` only): the worker whose index this variable holds panics on
/// the first IPv4 packet it reads from the inner port (the kernel's own IPv6 traffic on a new TUN
/// does not count), to test that a worker panic stops the daemon.
#[cfg(feature = "test-hooks")]
pub(crate) const PANIC_HOOK_ENV: &str = "WGPMD_TEST_PANIC_WORKER";

impl Worker {
    pub fn new(id: usize, sh: Arc<Shared>, wan: Box<dyn Queue>, inner: Box<dyn Queue>, pool: Pool, hs: Stage) -> Self {
        sh.handoff.staging.register_pool(&pool);
        let exc_bucket = sh.handoff.exception.as_ref().map(|q| exception::worker_bucket(q.rate, sh.workers.len()));
        Worker {
            exc_bucket,
            data: Vec::with_capacity(BURST),
            seal: Vec::with_capacity(BURST),
            dsts: Vec::with_capacity(BURST),
            routes: Vec::with_capacity(BURST),
            rx_items: Vec::with_capacity(BURST),
            tx_items: Vec::with_capacity(BURST),
            rx_results: Vec::with_capacity(BURST),
            tx_results: Vec::with_capacity(BURST),
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
            last_hop: None,
            pmtu_limit: icmp::RateLimit::new(),
            hs,
            share: handshakes::Share::default(),
            backlogged: false,
            #[cfg(feature = "test-hooks")]
            panic_hook: std::env::var(PANIC_HOOK_ENV).is_ok_and(|v| v.parse() == Ok(id)),
        }
    }

    pub fn run(mut self) {
        let mut idle = 0u32;
        let mut sleep = Duration::from_micros(10);
        let mut iter = 0u64;
        let mut keys_since = self.sh.data.clock.now();
        // The longest iteration in this window and the one before (`stats::ITERATION_WINDOW`).
        let (mut window_start, mut window_max, mut prev_window_max) = (keys_since, 0u64, 0u64);
        // One reference for the whole loop: cloning the Arc per iteration would bounce its
        // counter between every worker's and the control core's caches.
        let sh = self.sh.clone();
        while !sh.stopping() {
            let now = sh.data.clock.now();
            self.neigh.sync(&sh.data.neigh);
            self.last_hop = None;
            let mut work = 0;
            let mut hs_ns = 0u64;
            let backlog;
            {
                let dev = sh.data.device.load();
                let ((wan_n, wan_data), inner_n) = (self.wan_rx(&dev, now), self.inner_rx(&dev, now));
                work += wan_n + inner_n;
                backlog = handshakes::data_backlog(wan_n, wan_data, inner_n, BURST);
                if backlog != self.backlogged {
                    self.backlogged = backlog;
                    sh.handoff.hs_load.set_busy(self.id, backlog);
                }
                if self.hs.pending() {
                    if self.share.may_process(backlog) {
                        let (n, ns) =
                            self.hs.process(&dev, &sh.handoff.hs_load, now, handshakes::BUDGET, &mut self.out);
                        (work, hs_ns) = (work + n, ns);
                    } else {
                        self.c.hs_deferred += 1;
                    }
                }
                // While this copy is held: a publish waits for it, so configuration, which
                // clears a removed peer's notifications after publishing, never runs between a
                // device call and its notification.
                self.post_events();
            }
            work += self.tx_jobs(now);
            work += self.kernel_frames();
            // Responses and cookie replies leave in this iteration's burst.
            self.forward_transmits();
            self.flush();
            let took_ns = (sh.data.clock.now() - now).as_nanos() as u64;
            self.share.account(backlog, hs_ns, took_ns.saturating_sub(hs_ns));
            let took_us = took_ns / 1000;
            if now - window_start >= super::stats::ITERATION_WINDOW {
                (window_start, prev_window_max, window_max) = (now, window_max, 0);
            }
            window_max = window_max.max(took_us);
            self.c.max_iteration_us = self.c.max_iteration_us.max(took_us);
            self.c.max_iteration_us_window = window_max.max(prev_window_max);
            iter += 1;
            if iter.is_multiple_of(64) {
                self.hs.rng.reseed_if_due(now);
                if now - keys_since >= KEY_CACHE_MAX_AGE {
                    self.out.forget_dropped_keys();
                    keys_since = now;
                }
                self.publish(false);
                if self.port_fault() {
                    break;
                }
            }
            if work == 0 {
                // Nothing came in: the buffers kept for replies go back to their pools (a
                // pool of a few hundred slots, VFIO's, should not lose 32 to an idle worker).
                self.hs.release_spare();
            }
            if work > 0 || sh.data.poll == PollMode::Busy {
                idle = 0;
                sleep = Duration::from_micros(10);
                continue;
            }
            idle += 1;
            if idle == 1 {
                self.out.forget_dropped_keys();
                keys_since = now;
            }
            if idle > SPIN_BEFORE_SLEEP {
                if !self.wait_ready() {
                    std::thread::sleep(sleep);
                }
                sleep = (sleep * 2).min(MAX_SLEEP);
            } else {
                std::hint::spin_loop();
            }
        }
        self.flush();
        sh.handoff.hs_load.set_busy(self.id, false);
        self.publish(true);
    }

    /// Adaptive mode, idle: wait up to `MAX_SLEEP` for either queue to become readable
    /// (`poll(2)`) instead of sleeping, so a packet wakes the worker at once and no `read` is
    /// spent per idle iteration. False when a queue has no descriptor (the caller sleeps).
    fn wait_ready(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let (Some(w), Some(i)) = (self.wan.wait_fd(), self.inner.wait_fd()) else { return false };
        let mut fds = [PollFd::new(w, PollFlags::POLLIN), PollFd::new(i, PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(MAX_SLEEP.as_millis().max(1) as u8));
        true
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
    /// Returns the frames taken and, of them, the data messages that authenticated.
    ///
    /// The data messages are decrypted [`BURST`] at a time, in groups of the AEAD's lanes: a
    /// call with fewer lanes busy costs more per packet (12 lanes some 4–8 % more than 16, the
    /// AEAD bench's lane-count line), so a burst of which a few frames were handshakes, ARP or
    /// junk would decrypt, say, 16 + 12 messages at a higher price per message. While the
    /// queue has more, the data is topped up to a full burst from it, up to [`TOP_UP_MAX`]
    /// frames in all.
    fn wan_rx(&mut self, dev: &Device, now: Timestamp) -> (usize, usize) {
        let (mut taken, mut want) = (0, BURST);
        let drained = loop {
            let n = self.wan_frames(dev, now, want);
            taken += n;
            if n < want {
                break true;
            }
            // No data to fill (a flood of handshakes alone), or the data is a whole burst.
            if self.data.is_empty() || self.data.len() >= BURST {
                break false;
            }
            want = (BURST - self.data.len()).min(TOP_UP_MAX.saturating_sub(taken));
            if want == 0 {
                break false;
            }
        };
        // Handshake messages, screened several at a time (held over a few full bursts at most).
        self.hs.screen_when_ready(dev, &self.sh.handoff.hs_load, now, drained, &mut self.out);
        (taken, self.data_in(dev, now))
    }

    /// Take up to `want` (at most [`BURST`]) frames from the WAN queue and dispatch them: data
    /// messages to `self.data`, handshake messages to the stage, ARP/ND/ICMP answered.
    /// Returns how many were taken.
    fn wan_frames(&mut self, dev: &Device, now: Timestamp, want: usize) -> usize {
        let mut rx = std::mem::take(&mut self.rx);
        let n = self.wan.rx_burst(&self.pool, &mut rx, want.min(BURST));
        self.c.wan_rx += n as u64;
        let wan = self.sh.data.wan;
        let port = self.sh.data.listen_port.load(Ordering::Relaxed);
        let exc = self.exc_bucket.is_some();
        // The frames arrive cold (a NIC's DMA, or another core's writes): each one's headers are
        // requested `AHEAD` frames before it is classified, so the misses overlap.
        let mut starts = [core::ptr::null::<u8>(); BURST];
        for (a, b) in starts.iter_mut().zip(rx.iter()) {
            *a = b.data().as_ptr();
        }
        for &a in starts.iter().take(AHEAD.min(n)) {
            prefetch_frame(a);
        }
        for (i, mut buf) in rx.drain(..).enumerate() {
            if i + AHEAD < n {
                prefetch_frame(starts[i + AHEAD]);
            }
            let class = wan.classify(buf.data(), port);
            // ARP and ND about our address: wgpmd answers and learns, the kernel gets a copy.
            if exc
                && matches!(
                    class,
                    Ok(Classified::ArpRequest { .. }
                        | Classified::ArpLearn { .. }
                        | Classified::NeighborSolicit { .. }
                        | Classified::NeighborLearn { .. })
                )
            {
                self.mirror(buf.data(), now);
            }
            match class {
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
                        self.data.push((buf, src, src_mac));
                    } else {
                        self.hs.arrive(dev, &self.sh.handoff.hs_load, now, src, buf, &mut self.out);
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
                Err(r) => {
                    self.c.wan_drops[r as usize] += 1;
                    if exc {
                        self.except(buf, now);
                    }
                }
            }
        }
        self.rx = rx;
        n
    }

    /// A frame wgpmd did not consume: to the kernel's exception TAP if it is for us, within
    /// this worker's share of the rate and while the queue has room (each refusal counted).
    fn except(&mut self, mut buf: Buffer, now: Timestamp) {
        let (Some(q), Some(bucket)) = (self.sh.handoff.exception.as_ref(), self.exc_bucket.as_mut()) else { return };
        if !exception::for_kernel(&self.sh.data.wan, buf.data()) {
            self.c.exc_not_for_us += 1;
            return;
        }
        if !bucket.allow(now.as_nanos()) {
            self.c.exc_rate_dropped += 1;
            return;
        }
        exception::untag(&mut buf);
        if q.to_kernel.push(buf).is_err() {
            self.c.exc_queue_full += 1;
            return;
        }
        self.c.exc_to_kernel += 1;
    }

    /// A copy of an ARP/ND frame wgpmd handles itself, for the kernel (its neighbour table
    /// learns what ours does).
    fn mirror(&mut self, frame: &[u8], now: Timestamp) {
        let Some(mut b) = self.pool.alloc() else {
            self.c.exc_queue_full += 1;
            return;
        };
        let Ok(d) = b.append(frame.len()) else { return };
        d.copy_from_slice(frame);
        let before = self.c.exc_to_kernel;
        self.except(b, now);
        self.c.exc_mirrored += self.c.exc_to_kernel - before;
    }

    /// Frames the kernel sent on the exception TAP: out of the WAN (a burst per iteration).
    fn kernel_frames(&mut self) -> usize {
        let Some(q) = self.sh.handoff.exception.as_ref() else { return 0 };
        let mut n = 0;
        while n < BURST {
            let Some(b) = q.from_kernel.pop() else { break };
            self.wan_tx.push(b);
            n += 1;
        }
        self.c.exc_from_kernel += n as u64;
        n
    }

    /// The WAN burst's data messages: opened as one device burst, then neighbours learned once
    /// per source and the inner packets queued in order. Returns how many authenticated.
    fn data_in(&mut self, dev: &Device, now: Timestamp) -> usize {
        if self.data.is_empty() {
            return 0;
        }
        let mut items = recycle(std::mem::take(&mut self.rx_items));
        items.extend(self.data.iter_mut().map(|(b, src, _)| RxItem { src: *src, msg: b.data_mut() }));
        // Drops are counted in out.stats by reason.
        dev.decapsulate_burst(now, &mut items, &mut self.rx_results, &mut self.out);
        self.rx_items = recycle(items);
        let mut results = std::mem::take(&mut self.rx_results);
        let mut data = std::mem::take(&mut self.data);
        let mut learned: Option<(SocketAddr, EthernetAddress)> = None;
        let mut authenticated = 0;
        for ((mut buf, src, src_mac), r) in data.drain(..).zip(results.drain(..)) {
            let Ok(d) = r else { continue };
            authenticated += 1;
            // The sender's MAC is the next hop back to it: learn from authenticated traffic,
            // once per source and MAC in a row.
            if learned != Some((src, src_mac)) {
                learned = Some((src, src_mac));
                if let Some(hop) = self.sh.data.wan.next_hop(src.ip()) {
                    if !self.neigh.confirmed(hop, src_mac, now) {
                        self.learn(hop, src_mac, Heard::Traffic, now);
                        // Cache it again (fresh now) so the next packets skip the check.
                        self.neigh.lookup(&self.sh.data.neigh, hop, now);
                    }
                }
            }
            if d.is_keepalive() {
                continue;
            }
            self.c.data_rx += 1;
            if buf.trim_front(d.range.start).is_ok() {
                buf.truncate(d.range.len());
                self.inner_tx.push(buf);
            }
        }
        self.data = data;
        self.rx_results = results;
        authenticated
    }

    /// Inner side: route, encrypt in place, add the outer header.
    fn inner_rx(&mut self, dev: &Device, now: Timestamp) -> usize {
        let mut rx = std::mem::take(&mut self.rx);
        let n = self.inner.rx_burst(&self.pool, &mut rx, BURST);
        self.c.inner_rx += n as u64;
        #[cfg(feature = "test-hooks")]
        if self.panic_hook && rx.iter().any(|b| b.data().first().is_some_and(|v| v >> 4 == 4)) {
            panic!("test hook {PANIC_HOOK_ENV}={}: a worker panic on demand", self.id);
        }
        // The burst's routes first, looked up together (their misses in a large table overlap).
        self.dsts.clear();
        self.dsts.extend(rx.iter().map(|b| inner_dst(b.data())));
        self.routes.clear();
        self.routes.resize(rx.len(), None);
        dev.route_batch(&self.dsts, &mut self.routes);
        let routes = std::mem::take(&mut self.routes);
        for (mut buf, route) in rx.drain(..).zip(routes.iter().copied()) {
            let plain_len = buf.len();
            let Some(peer) = route else {
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
            self.seal.push((buf, peer, plain_len));
        }
        self.routes = routes;
        self.rx = rx;
        self.seal_out(dev, now);
        n
    }

    /// The inner burst's routed packets: sealed as one device burst, then the outer headers,
    /// in order; those without a session are staged.
    fn seal_out(&mut self, dev: &Device, now: Timestamp) {
        if self.seal.is_empty() {
            return;
        }
        let mut items = recycle(std::mem::take(&mut self.tx_items));
        items.extend(self.seal.iter_mut().map(|(b, peer, plain_len)| TxItem {
            peer: *peer,
            buf: b.data_and_tailroom_mut(),
            plain_len: *plain_len,
        }));
        dev.encapsulate_burst(now, &mut items, &mut self.tx_results, &mut self.out);
        self.tx_items = recycle(items);
        let mut results = std::mem::take(&mut self.tx_results);
        let mut seal = std::mem::take(&mut self.seal);
        for ((mut buf, peer, _), r) in seal.drain(..).zip(results.iter()) {
            match r {
                Ok(e) => {
                    if buf.set_len(e.len).is_ok() {
                        self.c.data_tx += 1;
                        self.send_wg(buf, &e.to, 0, now);
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
        results.clear();
        self.seal = seal;
        self.tx_results = results;
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
            self.send_wg(job.buf, &job.to, job.tos, now);
            n += 1;
        }
        n
    }

    /// Put the outer headers in front of a WireGuard message (to an IPv4 or IPv6 endpoint) and
    /// queue it on the WAN, or park it until the next hop resolves.
    fn send_wg(&mut self, mut buf: Buffer, to: &SocketAddr, tos: u8, now: Timestamp) {
        // The WAN's description is read where it lies, not copied (some 60 bytes per message).
        let wan = &self.sh.data.wan;
        let dst = to.ip();
        // Consecutive messages to one address (a burst to peers behind one NAT) reuse the first
        // one's route and resolved next hop, and messages to other addresses behind the same
        // next hop (a gateway) its MAC, for the rest of the poll iteration.
        let (src, hop, mac, probe) = match self.last_hop {
            Some(h) if h.at == now && h.dst == dst => (h.src, h.hop, Some(h.mac), false),
            _ => {
                let route = match wan.route(dst) {
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
                // Another address behind the same next hop (a gateway): its MAC again.
                if let Some(h) = self.last_hop.as_mut().filter(|h| h.at == now && h.hop == route.hop) {
                    (h.dst, h.src) = (dst, route.src);
                    (route.src, route.hop, Some(h.mac), false)
                } else {
                    let res = self.neigh.lookup(&self.sh.data.neigh, route.hop, now);
                    self.last_hop = match res.mac {
                        Some(mac) if !res.probe && now < res.stale_at => {
                            Some(LastHop { dst, src: route.src, hop: route.hop, mac, at: now })
                        }
                        _ => None,
                    };
                    (route.src, route.hop, res.mac, res.probe)
                }
            }
        };
        let payload_len = buf.len();
        let port = self.sh.data.listen_port.load(Ordering::Relaxed);
        self.ident = self.ident.wrapping_add(1);
        let outer = Outer {
            src_mac: wan.mac,
            // Unresolved: rewritten when the next hop is learned (`learn`).
            dst_mac: mac.unwrap_or(EthernetAddress([0; 6])),
            vlan: wan.vlan,
            src: SocketAddr::new(src, port),
            dst: *to,
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
        if mac.is_some() {
            self.wan_tx.push(buf);
            if probe {
                self.solicit(hop);
            }
            return;
        }
        let parked = self.sh.data.neigh.park(hop, buf, now);
        self.c.unresolved_dropped += parked.dropped as u64;
        if parked.ask {
            self.solicit(hop);
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
        self.last_hop = None;
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
        // By reference: a transmit is some 200 bytes, not worth moving out of the list.
        for t in &transmits {
            // A screened handshake message's buffer first: the cookie replies of a flood go
            // out in the buffers their initiations came in.
            let Some(mut b) = self.hs.take_spare().or_else(|| self.pool.alloc()) else {
                self.c.transmits_dropped += 1;
                continue;
            };
            if b.extend_from_slice(t.payload()).is_ok() {
                let tos = if t.payload().first() == Some(&MESSAGE_DATA) { 0 } else { HANDSHAKE_DSCP };
                self.send_wg(b, &t.to, tos, now);
            }
        }
        transmits.clear();
        // Keep the capacity for the next burst's replies.
        if self.out.transmits.is_empty() {
            self.out.transmits = transmits;
        }
    }
}

/// A destination resolved by `send_wg` in the current poll iteration (`at`): its route's source
/// and next hop, and the hop's MAC, fresh and needing no probe. Forgotten at the start of each
/// iteration and whenever this worker learns a neighbour.
#[derive(Clone, Copy)]
struct LastHop {
    dst: IpAddr,
    src: IpAddr,
    hop: IpAddr,
    mac: EthernetAddress,
    at: Timestamp,
}

/// How many frames of a burst ahead of the one being classified have their headers requested.
const AHEAD: usize = 4;

/// The most WAN frames one poll iteration takes to fill its data burst (see
/// [`Worker::wan_rx`]): two bursts' worth, so that a queue of mostly non-data frames does not
/// hold the iteration.
const TOP_UP_MAX: usize = 2 * BURST;

/// Start loading the first two lines of the frame at `addr`: the Ethernet, IP and UDP headers
/// and the WireGuard header after them. A hint: nothing is read.
#[inline(always)]
fn prefetch_frame(addr: *const u8) {
    wgpmd_aead::prefetch::read_ptr(addr);
    wgpmd_aead::prefetch::read_ptr(addr.wrapping_add(64));
}
