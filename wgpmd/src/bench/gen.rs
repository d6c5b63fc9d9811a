//! The traffic generator: N simulated peers, each a [`Device`] of its own with the
//! concentrator as its one peer, on the far ends of the daemon's WAN and inner `mem` ports.
//!
//! It answers the daemon's ARP requests, completes a handshake per peer, then measures in
//! chunks: a chunk of packets is built untimed (rx: inner packets encrypted by the peers'
//! devices and framed as the WAN would carry them; tx: plain inner packets to the peers'
//! allowed IPs), then released into the daemon's queues while the workers' CPU clocks and the
//! wall clock run, until every packet has come out the other side. Building ahead is what lets
//! one generator thread keep a worker saturated: encrypting on the fly would cost it as much as
//! the worker spends decrypting, and an idle busy-polling worker still burns CPU time.
//!
//! A chunk is smaller than a ring, so no ring can overflow: every packet that goes in must come
//! out, and one that does not is counted lost.
//! Every packet is checked: rx packets byte for byte against what the peer sealed, with its
//! per-peer sequence number; tx frames by their WireGuard counter (increasing per peer), and
//! every `verify_every`-th one is decrypted by its peer's device and compared.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nic_backends::mem::MemQueue;
use nic_backends::{Buffer, Pool, Queue};
use rand_core::OsRng;

use super::cpu::{self, ThreadClock};
use super::{BenchError, Direction, Measurement};
use crate::wan::{Classified, Outer, Wan, WanAddr};
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{Device, HandshakeOutcome, Output, PeerId};
use wgpmd_proto::messages::{DATA_HEADER_LEN, DATA_MIN_LEN, KEY_LEN, MESSAGE_DATA};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::wireguard::TransportData;
use wgpmd_proto::wire::{ipv4, EthernetAddress};

/// Packets per measured chunk.
const CHUNK: usize = 8192;
/// Ring slots per direction of each mem queue: a whole chunk fits, with room for control
/// frames, so no ring can overflow and every packet that goes in must come out.
pub(crate) const DEPTH: usize = 2 * CHUNK;
/// A worker with at least this many packets waiting in its input ring is busy.
const BACKLOG: usize = 2 * BURST;
/// How often the generator looks at the input rings while the workers are busy, at most
/// (about 40 packets of a worker's time at 64 bytes; an input ring holds a chunk, 8192).
const PACE: Duration = Duration::from_micros(16);
/// Packets of the untimed warm-up chunk of each direction.
const WARMUP: usize = 2048;
/// Packets moved per ring operation.
const BURST: usize = 32;
/// Handshakes in flight at most (the daemon goes "under load" at 512 queued).
const HANDSHAKES_IN_FLIGHT: usize = 64;
/// A chunk that makes no progress while the workers run for this long (CPU time) counts what
/// is missing as lost: a worker that gets no CPU (a loaded machine) is slow, not lossy.
const STALL_CPU_NS: u64 = 500_000_000;
/// ... or for this long in any case.
const STALL_WALL: Duration = Duration::from_secs(30);
/// Time allowed for the workers to start and for all handshakes.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Smallest inner packet: IPv4 (20) + UDP (8) + peer number (4) + sequence number (8).
pub const MIN_SIZE: usize = 40;
/// Where the sequence number sits in an inner packet.
pub(super) const SEQ: std::ops::Range<usize> = 32..40;

/// The concentrator's WAN address (a /16 of fake peers around it) and WireGuard port.
pub(crate) const CONC_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const PORT: u16 = crate::daemon::DEFAULT_LISTEN_PORT;
/// The inner host every peer talks to (RFC 2544's benchmarking range).
pub(super) const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Peer `i`'s WAN endpoint address.
pub(crate) fn endpoint_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(CONC_IP) + 1 + i as u32)
}

/// Peer `i`'s inner address (its allowed IP, a /32).
pub(crate) fn inner_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 2)) + i as u32)
}

/// An inner IPv4/UDP packet of `len` bytes from `src` to `dst` carrying `peer` and a zero
/// sequence number, then a pattern that depends on the peer.
pub(super) fn inner_packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize, peer: u32) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    ipv4::Packet::new_unchecked(&mut p[..20]).fill_checksum();
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p[28..32].copy_from_slice(&peer.to_be_bytes());
    for (i, b) in p[SEQ.end..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ peer as u8;
    }
    p
}

/// Whether `p` is `template` with some sequence number; returns it.
pub(super) fn matches(template: &[u8], p: &[u8]) -> Option<u64> {
    if p.len() != template.len() || p[..SEQ.start] != template[..SEQ.start] || p[SEQ.end..] != template[SEQ.end..] {
        return None;
    }
    Some(u64::from_be_bytes(p[SEQ].try_into().ok()?))
}

struct GenPeer {
    dev: Device,
    /// The concentrator, as a peer of `dev`.
    conc: PeerId,
    endpoint: SocketAddrV4,
    queue: usize,
    rx_template: Vec<u8>,
    tx_template: Vec<u8>,
    started: bool,
    completed: bool,
    /// Our probe came out of the concentrator's inner port: its session is confirmed too.
    confirmed: bool,
    rx_next_seq: u64,
    rx_expect: u64,
    tx_next_seq: u64,
    tx_last_seq: Option<u64>,
    tx_last_counter: Option<u64>,
}

/// The generator, run on a thread of its own.
pub(crate) struct Generator {
    peers: Vec<GenPeer>,
    wan: Vec<MemQueue>,
    inner: Vec<MemQueue>,
    pool: Pool,
    mac: EthernetAddress,
    conc_mac: EthernetAddress,
    conc: SocketAddrV4,
    epoch: Instant,
    out: Output,
    rxv: Vec<Buffer>,
    staging: Vec<Buffer>,
    ident: u16,
    workers: Vec<ThreadClock>,
    daemon_done: Arc<AtomicBool>,
    size: usize,
    verify_every: u64,
    /// What the current measurement counts into (the direction being measured, if any).
    measuring: Option<Direction>,
    m: Measurement,
}

/// What the generator needs to start.
pub(crate) struct Setup {
    pub wan: Vec<MemQueue>,
    pub inner: Vec<MemQueue>,
    pub mac: [u8; 6],
    pub conc_mac: [u8; 6],
    pub conc_public: [u8; KEY_LEN],
    pub keys: Vec<PrivateKey>,
    pub size: usize,
    pub verify_every: u64,
    pub daemon_done: Arc<AtomicBool>,
    /// Thread ids present before the daemon started (its workers are the new ones).
    pub tids_before: std::collections::BTreeSet<i32>,
}

impl Generator {
    pub fn new(s: Setup) -> Result<Generator, BenchError> {
        let workers = s.wan.len();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let conc = SocketAddrV4::new(CONC_IP, PORT);
        let mut peers = Vec::with_capacity(s.keys.len());
        for (i, key) in s.keys.into_iter().enumerate() {
            let mut dev = Device::new(&mut OsRng, wall);
            dev.set_private_key(Some(key));
            let setup = |e: wgpmd_proto::device::ConfigError| BenchError::Run(format!("generator peer {i}: {e}"));
            let id = dev.add_peer(&mut OsRng, s.conc_public).map_err(setup)?;
            dev.set_endpoint(id, SocketAddr::V4(conc)).map_err(setup)?;
            dev.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).map_err(setup)?;
            peers.push(GenPeer {
                dev,
                conc: id,
                endpoint: SocketAddrV4::new(endpoint_ip(i), PORT),
                queue: i % workers,
                rx_template: inner_packet(inner_ip(i), HOST_IP, s.size, i as u32),
                tx_template: inner_packet(HOST_IP, inner_ip(i), s.size, i as u32),
                started: false,
                completed: false,
                confirmed: false,
                rx_next_seq: 0,
                rx_expect: 0,
                tx_next_seq: 0,
                tx_last_seq: None,
                tx_last_counter: None,
            });
        }
        let mut clocks = Vec::with_capacity(workers);
        for w in 0..workers {
            let name = format!("wgpmd-w{w}");
            let tid = cpu::wait_for_thread(&name, &s.tids_before, SETUP_TIMEOUT)
                .ok_or_else(|| BenchError::Run(format!("the daemon's worker thread {name} did not start")))?;
            clocks.push(ThreadClock::of_tid(tid));
        }
        let pool = Pool::new("bench-gen", CHUNK + 4 * BURST * workers + 1024)
            .map_err(|e| BenchError::Run(format!("generator buffer pool: {e}")))?;
        Ok(Generator {
            peers,
            wan: s.wan,
            inner: s.inner,
            pool,
            mac: EthernetAddress(s.mac),
            conc_mac: EthernetAddress(s.conc_mac),
            conc,
            epoch: Instant::now(),
            out: Output::with_capacity(64),
            rxv: Vec::with_capacity(BURST),
            staging: Vec::with_capacity(BURST),
            ident: 0,
            workers: clocks,
            daemon_done: s.daemon_done,
            size: s.size,
            verify_every: s.verify_every.max(1),
            measuring: None,
            m: Measurement::default(),
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64)
    }

    fn daemon_gone(&self) -> Result<(), BenchError> {
        if self.daemon_done.load(Ordering::Relaxed) {
            return Err(BenchError::Run("the daemon stopped".into()));
        }
        Ok(())
    }

    /// Handshakes for every peer (the peers initiate), then the measurements asked for.
    pub fn run(&mut self, directions: &[Direction], seconds: Duration) -> Result<Vec<Measurement>, BenchError> {
        self.handshakes()?;
        let mut results = Vec::new();
        for &dir in directions {
            let warm = self.measure(dir, Duration::ZERO, WARMUP)?;
            if warm.lost > 0 || warm.verify_failed > 0 {
                return Err(BenchError::Run(format!(
                    "{dir:?} warm-up: {} lost, {} damaged of {}",
                    warm.lost, warm.verify_failed, warm.sent
                )));
            }
            results.push(self.measure(dir, seconds, CHUNK)?);
        }
        Ok(results)
    }

    fn handshakes(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut next = 0;
        loop {
            let in_flight = self.peers.iter().filter(|p| p.started && !p.confirmed).count();
            let mut room = HANDSHAKES_IN_FLIGHT.saturating_sub(in_flight);
            while room > 0 && next < self.peers.len() {
                let now = self.now();
                let p = &mut self.peers[next];
                p.started = true;
                p.dev
                    .initiate(now, &mut OsRng, p.conc, &mut self.out)
                    .map_err(|e| BenchError::Run(format!("peer {next}: initiation: {e}")))?;
                self.send_transmits(next);
                next += 1;
                room -= 1;
            }
            if self.poll() == 0 {
                std::thread::sleep(Duration::from_micros(20));
            }
            let confirmed = self.peers.iter().filter(|p| p.confirmed).count();
            if confirmed == self.peers.len() {
                return Ok(());
            }
            self.daemon_gone()?;
            if Instant::now() > deadline {
                let completed = self.peers.iter().filter(|p| p.completed).count();
                return Err(BenchError::Run(format!(
                    "handshakes: {completed} of {} peers got a response and {confirmed} a keepalive within {SETUP_TIMEOUT:?}",
                    self.peers.len()
                )));
            }
        }
    }

    /// Frame and send what the peer's device put in `out.transmits` (handshakes, keepalives).
    fn send_transmits(&mut self, peer: usize) {
        let transmits: Vec<_> = self.out.transmits.drain(..).collect();
        self.out.clear();
        for t in transmits {
            let Some(mut b) = self.pool.alloc() else { continue };
            let Ok(d) = b.append(t.payload().len()) else { continue };
            d.copy_from_slice(t.payload());
            if let Some(b) = self.frame(b, self.peers[peer].endpoint) {
                self.send_now(self.peers[peer].queue, b);
            }
        }
    }

    /// Put the outer Ethernet/IPv4/UDP headers of a frame from `from` to the concentrator.
    fn frame(&mut self, mut buf: Buffer, from: SocketAddrV4) -> Option<Buffer> {
        let len = buf.len();
        self.ident = self.ident.wrapping_add(1);
        let o = Outer {
            src_mac: self.mac,
            dst_mac: self.conc_mac,
            vlan: None,
            src: from.into(),
            dst: self.conc.into(),
            tos: 0,
            ident: self.ident,
        };
        buf.prepend(o.header_len()).ok()?;
        o.emit(buf.data_mut(), len).ok()?;
        Some(buf)
    }

    /// Send one control frame on a WAN queue (they are few: the window leaves room for them).
    fn send_now(&mut self, queue: usize, buf: Buffer) {
        let mut v = vec![buf];
        self.wan[queue].tx_burst(&mut v);
        self.m.control_dropped += v.len() as u64;
    }

    /// Receive and handle what both ports have for us; returns the frames seen.
    fn poll(&mut self) -> usize {
        let mut seen = 0;
        let mut rxv = std::mem::take(&mut self.rxv);
        for q in 0..self.inner.len() {
            self.inner[q].rx_burst(&self.pool, &mut rxv, BURST);
            seen += rxv.len();
            for b in rxv.drain(..) {
                self.inner_in(&b);
            }
        }
        for q in 0..self.wan.len() {
            self.wan[q].rx_burst(&self.pool, &mut rxv, BURST);
            seen += rxv.len();
            for b in rxv.drain(..) {
                self.wan_frame(q, b);
            }
        }
        self.rxv = rxv;
        seen
    }

    /// A decrypted packet out of the daemon's inner port.
    fn inner_in(&mut self, b: &Buffer) {
        let d = b.data();
        if self.measuring != Some(Direction::Rx) {
            // A setup probe confirms its peer's session; anything else is counted.
            let peer = d.get(28..32).map(|p| u32::from_be_bytes(p.try_into().unwrap_or_default()) as usize);
            match peer.and_then(|i| self.peers.get_mut(i)) {
                Some(p) if p.completed && matches(&p.rx_template, d) == Some(u64::MAX) => p.confirmed = true,
                _ => self.m.other_frames += 1,
            }
            return;
        }
        self.m.packets += 1;
        let peer = d.get(28..32).map(|p| u32::from_be_bytes(p.try_into().unwrap_or_default()) as usize);
        let Some(p) = peer.and_then(|i| self.peers.get_mut(i)) else {
            self.m.verify_failed += 1;
            return;
        };
        match matches(&p.rx_template, d) {
            Some(seq) => {
                self.m.verified += 1;
                if seq != p.rx_expect {
                    self.m.out_of_order += 1;
                }
                p.rx_expect = seq + 1;
            }
            None => self.m.verify_failed += 1,
        }
    }

    /// A frame out of the daemon's WAN port, on queue `q`.
    fn wan_frame(&mut self, q: usize, mut b: Buffer) {
        let d = b.data();
        if d.len() < 42 {
            self.m.other_frames += 1;
            return;
        }
        let (ethertype, target) = ([d[12], d[13]], Ipv4Addr::new(d[30], d[31], d[32], d[33]));
        if ethertype == [8, 6] {
            // ARP: the target address sits at 38..42.
            let target = Ipv4Addr::new(d[38], d[39], d[40], d[41]);
            let ours = self.peer_of(target).is_some();
            let peer = self.peer_wan(target);
            if let (true, Ok(Classified::ArpRequest { .. })) = (ours, peer.classify(d, 0)) {
                if let Some(len) = peer.arp_reply_in_place(b.data_mut()) {
                    b.truncate(len);
                    self.send_now(q, b);
                    return;
                }
            }
            self.m.other_frames += 1;
            return;
        }
        let Some(i) = self.peer_of(target) else {
            self.m.other_frames += 1;
            return;
        };
        let Ok(Classified::WireGuard { src, offset, len, .. }) = self.peer_wan(target).classify(d, PORT) else {
            self.m.other_frames += 1;
            return;
        };
        if b.trim_front(offset).is_err() {
            return;
        }
        b.truncate(len);
        if b.data().first() != Some(&MESSAGE_DATA) {
            self.handshake_in(i, src, &b);
        } else if len == DATA_MIN_LEN {
            self.keepalive_in(i, src, b);
        } else if self.measuring == Some(Direction::Tx) {
            self.data_in(i, src, b);
        } else {
            self.m.other_frames += 1;
        }
    }

    /// The WAN identity of the simulated peer at `ip` (all of them share the generator's MAC).
    fn peer_wan(&self, ip: Ipv4Addr) -> Wan {
        Wan { mac: self.mac, v4: Some(WanAddr { addr: ip, prefix: 16, gateway: None }), v6: None, vlan: None }
    }

    fn peer_of(&self, ip: Ipv4Addr) -> Option<usize> {
        let i = u32::from(ip).checked_sub(u32::from(CONC_IP) + 1)? as usize;
        (i < self.peers.len()).then_some(i)
    }

    fn handshake_in(&mut self, i: usize, src: SocketAddr, b: &Buffer) {
        let now = self.now();
        let p = &mut self.peers[i];
        match p.dev.receive_handshake(now, &mut OsRng, src, b.data(), false, &mut self.out) {
            Ok(HandshakeOutcome::Completed(_)) => {
                p.completed = true;
                self.send_transmits(i);
                // Our first data message confirms the session on the concentrator's side. It
                // sends nothing back then (the kernel's rule), so the probe is an inner packet:
                // seeing it leave the inner port proves the concentrator took it on the new
                // keypair, which is now its current one.
                self.send_probe(i, now);
                return;
            }
            Ok(_) => {}
            Err(_) => self.m.other_frames += 1,
        }
        self.send_transmits(i);
    }

    /// Seal peer `i`'s rx template (sequence number u64::MAX) and send it to the concentrator.
    fn send_probe(&mut self, i: usize, now: Timestamp) {
        let size = self.size;
        let Some(mut b) = self.pool.alloc() else { return };
        let p = &mut self.peers[i];
        let Ok(d) = b.append(size) else { return };
        d.copy_from_slice(&p.rx_template);
        d[SEQ].copy_from_slice(&u64::MAX.to_be_bytes());
        let sealed = (|| {
            b.prepend(DATA_HEADER_LEN).ok()?;
            let e = p.dev.encapsulate_to(now, p.conc, b.data_and_tailroom_mut(), size, &mut self.out).ok()?;
            b.set_len(e.len).ok()
        })();
        self.out.clear();
        if sealed.is_none() {
            return;
        }
        let (from, queue) = (p.endpoint, p.queue);
        if let Some(b) = self.frame(b, from) {
            self.send_now(queue, b);
        }
    }

    fn keepalive_in(&mut self, i: usize, src: SocketAddr, mut b: Buffer) {
        let now = self.now();
        let p = &mut self.peers[i];
        match p.dev.decapsulate(now, src, b.data_mut(), &mut self.out) {
            Ok(d) if d.is_keepalive() => {
                p.confirmed |= p.completed;
                self.m.keepalives += 1;
            }
            _ => self.m.other_frames += 1,
        }
        self.out.clear();
    }

    /// An encrypted tx-direction frame for peer `i`.
    fn data_in(&mut self, i: usize, src: SocketAddr, mut b: Buffer) {
        self.m.packets += 1;
        let sample = self.m.packets.is_multiple_of(self.verify_every);
        let now = self.now();
        let p = &mut self.peers[i];
        let counter = TransportData::new_checked(b.data()).ok().map(|d| d.counter());
        if let (Some(c), Some(last)) = (counter, p.tx_last_counter) {
            if c <= last {
                self.m.out_of_order += 1;
            }
        }
        p.tx_last_counter = counter;
        if !sample {
            return;
        }
        let ok = match p.dev.decapsulate(now, src, b.data_mut(), &mut self.out) {
            Ok(d) => match b.data().get(d.range).and_then(|inner| matches(&p.tx_template, inner)) {
                Some(seq) => {
                    if p.tx_last_seq.is_some_and(|l| seq <= l) {
                        self.m.out_of_order += 1;
                    }
                    p.tx_last_seq = Some(seq);
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        self.out.clear();
        if ok {
            self.m.verified += 1;
        } else {
            self.m.verify_failed += 1;
        }
    }

    /// Build `n` packets for `dir`, round robin over the peers, into per-queue lists.
    fn build(&mut self, dir: Direction, n: usize) -> Result<Vec<VecDeque<Buffer>>, BenchError> {
        let mut chunk: Vec<VecDeque<Buffer>> =
            (0..self.wan.len()).map(|_| VecDeque::with_capacity(n / self.wan.len() + 1)).collect();
        let size = self.size;
        let now = self.now();
        let npeers = self.peers.len();
        for k in 0..n {
            let i = k % npeers;
            let mut b = self.pool.alloc().ok_or_else(|| BenchError::Run("generator pool exhausted".into()))?;
            let p = &mut self.peers[i];
            let (template, seq) = match dir {
                Direction::Tx => (&p.tx_template, &mut p.tx_next_seq),
                _ => (&p.rx_template, &mut p.rx_next_seq),
            };
            let d = b.append(size).map_err(|e| BenchError::Run(format!("inner packet of {size} bytes: {e}")))?;
            d.copy_from_slice(template);
            d[SEQ].copy_from_slice(&seq.to_be_bytes());
            *seq += 1;
            if dir == Direction::Tx {
                chunk[p.queue].push_back(b);
                continue;
            }
            let queue = p.queue;
            let sealed = (|| {
                b.prepend(DATA_HEADER_LEN).ok()?;
                let e = p.dev.encapsulate_to(now, p.conc, b.data_and_tailroom_mut(), size, &mut self.out).ok()?;
                b.set_len(e.len).ok()
            })();
            self.out.clear();
            sealed.ok_or_else(|| BenchError::Run(format!("peer {i}: could not seal a {size}-byte packet")))?;
            let from = self.peers[i].endpoint;
            let b = self.frame(b, from).ok_or_else(|| BenchError::Run("framing".into()))?;
            chunk[queue].push_back(b);
        }
        Ok(chunk)
    }

    /// Measure `dir` in chunks of `chunk` packets until `seconds` of drain time (at least one
    /// chunk).
    fn measure(&mut self, dir: Direction, seconds: Duration, chunk: usize) -> Result<Measurement, BenchError> {
        self.m = Measurement::default();
        self.measuring = Some(dir);
        let r = loop {
            let mut c = self.build(dir, chunk)?;
            if let Err(e) = self.drain(dir, &mut c) {
                break Err(e);
            }
            self.m.chunks += 1;
            if self.m.wall_ns >= seconds.as_nanos() as u64 {
                break Ok(());
            }
        };
        self.measuring = None;
        r.map(|()| std::mem::take(&mut self.m))
    }

    /// Release a built chunk into the daemon and wait until all of it came out.
    ///
    /// The whole chunk goes into the workers' input rings at once (every ring holds a chunk),
    /// so each worker has a backlog that shrinks as it works. Only the stretch during which a
    /// worker provably had work counts: from the first sample after the last push to the last
    /// sample that still saw `BACKLOG` packets waiting for it, each sample reading the worker's
    /// CPU clock, the wall clock and the input ring at one moment. The generator being
    /// descheduled meanwhile costs the worker nothing (it has a backlog); a worker idling at the
    /// end of a chunk does not count, and one preempted shows as on-CPU below 1.
    ///
    /// While a worker has a backlog the generator leaves the rings alone apart from a sample
    /// every `PACE`, and collects the output when the workers are done (the output rings hold a
    /// chunk too): a consumer spinning on a worker's output ring pulls the ring's cache lines
    /// away on every push, which would be charged to the worker.
    fn drain(&mut self, dir: Direction, chunk: &mut [VecDeque<Buffer>]) -> Result<(), BenchError> {
        let total: u64 = chunk.iter().map(|q| q.len() as u64).sum();
        let delivered_before = self.m.packets;
        let workers = self.workers.len();
        // Per worker: (CPU ns, wall ns since t0, backlog) at its first and last busy sample.
        let mut first: Vec<Option<(u64, u64, usize)>> = vec![None; workers];
        let mut last: Vec<Option<(u64, u64, usize)>> = vec![None; workers];
        let mut last_progress = Instant::now();
        let mut last_mark = (0, 0);
        let cpu0 = cpu::sum_ns(&self.workers);
        let mut cpu_at_progress = cpu0.unwrap_or(0);
        let t0 = Instant::now();
        loop {
            let started = Instant::now();
            let mut pushing = false;
            for (q, pending) in chunk.iter_mut().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                pushing = true;
                let take = BURST.min(pending.len());
                self.staging.extend(pending.drain(..take));
                let port = if dir == Direction::Tx { &mut self.inner[q] } else { &mut self.wan[q] };
                port.tx_burst(&mut self.staging);
                while let Some(b) = self.staging.pop() {
                    pending.push_front(b);
                }
            }
            let mut busy = false;
            let mut backlog = 0;
            if !pushing {
                for q in 0..workers {
                    let input = if dir == Direction::Tx { &self.inner[q] } else { &self.wan[q] };
                    let before = input.tx_pending();
                    backlog += before;
                    if before < BACKLOG {
                        continue;
                    }
                    busy = true;
                    let Some(cpu) = self.workers[q].now_ns() else { continue };
                    let wall = t0.elapsed().as_nanos() as u64;
                    let after = input.tx_pending();
                    // The clocks and the ring must be read at one moment: if the worker took
                    // more than a burst meanwhile (this thread was descheduled), skip the sample.
                    if before - after > BURST {
                        continue;
                    }
                    first[q].get_or_insert((cpu, wall, after));
                    last[q] = Some((cpu, wall, after));
                }
                if !busy {
                    self.poll();
                }
            }
            let delivered = self.m.packets - delivered_before;
            if !pushing && delivered >= total {
                break;
            }
            if (delivered, backlog) != last_mark {
                last_mark = (delivered, backlog);
                last_progress = Instant::now();
                cpu_at_progress = cpu::sum_ns(&self.workers).unwrap_or(0);
            } else if last_progress.elapsed() > Duration::from_millis(100) {
                self.daemon_gone()?;
                let spent = cpu::sum_ns(&self.workers).unwrap_or(u64::MAX).saturating_sub(cpu_at_progress);
                if spent > STALL_CPU_NS || last_progress.elapsed() > STALL_WALL {
                    self.m.lost += total.saturating_sub(delivered);
                    break;
                }
            }
            if busy {
                // Sleep rather than spin: with as many workers as cores, this core is a
                // worker's too.
                std::thread::sleep(PACE.saturating_sub(started.elapsed()));
            }
        }
        let wall = t0.elapsed();
        let cpu1 = cpu::sum_ns(&self.workers);
        let (Some(cpu0), Some(cpu1)) = (cpu0, cpu1) else {
            return Err(BenchError::Run("a worker thread exited during the measurement".into()));
        };
        for (f, l) in first.iter().zip(&last) {
            if let (Some((c0, w0, b0)), Some((c1, w1, b1))) = (f, l) {
                self.m.busy_cpu_ns += c1 - c0;
                self.m.busy_wall_ns += w1 - w0;
                self.m.busy_packets += (b0 - b1) as u64;
            }
        }
        self.m.sent += total;
        self.m.worker_cpu_ns += cpu1.saturating_sub(cpu0);
        self.m.wall_ns += wall.as_nanos() as u64;
        // Buffers of a stalled chunk go back to the pool.
        for q in chunk.iter_mut() {
            q.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_carry_peer_and_sequence() {
        let t = inner_packet(inner_ip(3), HOST_IP, 64, 3);
        assert!(ipv4::Packet::new_checked(&t[..]).unwrap().verify_checksum());
        let mut p = t.clone();
        p[SEQ].copy_from_slice(&77u64.to_be_bytes());
        assert_eq!(matches(&t, &p), Some(77));
        p[50] ^= 1;
        assert_eq!(matches(&t, &p), None);
        assert_eq!(matches(&t, &t[..63]), None);
        assert_eq!(endpoint_ip(0), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(inner_ip(256), Ipv4Addr::new(100, 64, 1, 2));
    }
}
