//! The traffic generator: N simulated peers on the far ends of the daemon's WAN and inner
//! `mem` ports, each the other end of a real session with the concentrator.
//!
//! Peers are created cheaply so that N can reach a million: each has a random public key
//! (configured on the concentrator with an endpoint and one /32 allowed IP) and two random
//! transport keys; the concentrator's side of the session is installed with
//! [`Device::bench_install_session`](wgpmd_proto::device::Device::bench_install_session), the
//! generator's side is a [`Keypair`] with the keys swapped. No handshake is done: the bench
//! measures the data path. Every packet still takes the real lookups (rx: receiver index,
//! then the allowed IPs of its source; tx: allowed IPs, the peer's endpoint, its neighbour)
//! and real ChaCha20-Poly1305 both ways.
//!
//! It answers the daemon's ARP requests, then measures in chunks: a chunk of packets is built
//! untimed (rx: inner packets sealed with the peers' keypairs and framed as the WAN would carry
//! them; tx: plain inner packets to the peers' allowed IPs; duplex: half of each), then
//! released into the daemon's queues while the workers' CPU clocks and the wall clock run,
//! until every packet has come out the other side. Building ahead is what lets one generator
//! thread keep a worker saturated: encrypting on the fly would cost it as much as the worker
//! spends decrypting, and an idle busy-polling worker still burns CPU time.
//! Packets visit the peers in a fixed scattered order ([`stride`]): every peer once per N
//! packets.
//!
//! A chunk is smaller than a ring, so no ring can overflow: every packet that goes in must come
//! out, and one that does not is counted lost.
//! Every packet is checked: rx packets byte for byte against what the peer sealed, with its
//! per-peer sequence number; tx frames by their receiver index (the right peer, sent to its
//! endpoint) and WireGuard counter (increasing per peer), and every `verify_every`-th one is
//! opened with its peer's keypair and compared.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nic_backends::mem::MemQueue;
use nic_backends::{Buffer, Pool, Queue};
use rand_core::OsRng;

use super::cpu::{self, ThreadClock};
use super::{BenchError, Direction, Measurement};
use crate::daemon::Shared;
use crate::wan::{Classified, Outer, Wan, WanAddr};
use rand_core::RngCore;
use wgpmd_proto::crypto::Secret;
use wgpmd_proto::messages::{DATA_HEADER_LEN, DATA_MIN_LEN, DEFAULT_TUNNEL_MTU, KEY_LEN, MESSAGE_DATA};
use wgpmd_proto::session::Keypair;
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
/// A chunk that makes no progress while the workers run for this long (CPU time) counts what
/// is missing as lost: a worker that gets no CPU (a loaded machine) is slow, not lossy.
const STALL_CPU_NS: u64 = 500_000_000;
/// ... or for this long in any case.
const STALL_WALL: Duration = Duration::from_secs(30);
/// Time allowed for the workers to start (and, plus 100 µs per peer, to load the peers).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a pipeline measures on its installed sessions (REKEY_AFTER_TIME is 120 s).
const SESSION_BUDGET: Duration = Duration::from_secs(110);

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
    write_inner_packet(&mut p, src, dst, peer);
    p
}

/// [`inner_packet`] into `p` (all of it: its length is the packet's; `p` must be zeroed).
pub(super) fn write_inner_packet(p: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, peer: u32) {
    let len = p.len();
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
}

/// Whether `p` is `template` with some sequence number; returns it.
pub(super) fn matches(template: &[u8], p: &[u8]) -> Option<u64> {
    if p.len() != template.len() || p[..SEQ.start] != template[..SEQ.start] || p[SEQ.end..] != template[SEQ.end..] {
        return None;
    }
    Some(u64::from_be_bytes(p[SEQ].try_into().ok()?))
}

/// One simulated peer: the far end of its session with the concentrator (a real keypair: it
/// seals what the peer sends and opens what the concentrator sends), and the checks' state.
struct GenPeer {
    kp: Keypair,
    rx_next_seq: u64,
    rx_expect: u64,
    tx_next_seq: u64,
    tx_last_seq: Option<u64>,
    tx_last_counter: Option<u64>,
}

/// Peer `i`'s WAN endpoint: peers share addresses (as behind a carrier NAT), `PORTS_PER_ADDR`
/// ports each, so the concentrator's neighbour table holds a few entries even at 1M peers.
pub(crate) fn endpoint(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(endpoint_ip(i / PORTS_PER_ADDR), FIRST_PORT + (i % PORTS_PER_ADDR) as u16)
}
/// Source ports per endpoint address.
const PORTS_PER_ADDR: usize = 50_000;
const FIRST_PORT: u16 = 10_000;

/// The order packets visit the peers: packet k of a direction goes to peer `k * stride mod n`,
/// with the stride coprime to n and near n / golden ratio, so n packets in a row visit every
/// peer once and neighbours in the sequence are far apart in the tables.
pub(crate) fn stride(n: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut s = ((n as f64 * 0.618_033_988_75) as usize).max(1);
    while gcd(s, n) != 1 {
        s += 1;
    }
    s
}

/// The generator, run on a thread of its own.
pub(crate) struct Generator {
    peers: Vec<GenPeer>,
    stride: usize,
    /// Packets built so far per direction (rx, tx): where the peer order continues.
    cursor: [u64; 2],
    wan: Vec<MemQueue>,
    inner: Vec<MemQueue>,
    pool: Pool,
    mac: EthernetAddress,
    conc_mac: EthernetAddress,
    conc: SocketAddrV4,
    epoch: Instant,
    rxv: Vec<Buffer>,
    staging: Vec<Buffer>,
    scratch: Vec<u8>,
    ident: u16,
    workers: Vec<ThreadClock>,
    daemon_done: Arc<AtomicBool>,
    size: usize,
    verify_every: u64,
    /// What the current measurement counts into (the direction being measured, if any).
    measuring: Option<Direction>,
    m: Measurement,
}

/// One peer's session keys and public key, made by the bench; the concentrator gets the
/// same session through [`wgpmd_proto::device::Device::bench_install_session`].
pub(crate) struct PeerSeed {
    pub public_key: [u8; KEY_LEN],
    /// Concentrator → peer.
    pub down: Secret,
    /// Peer → concentrator.
    pub up: Secret,
}

impl PeerSeed {
    pub fn random() -> PeerSeed {
        let mut k = [[0u8; KEY_LEN]; 3];
        for k in &mut k {
            OsRng.fill_bytes(k);
        }
        PeerSeed { public_key: k[0], down: Secret(k[1]), up: Secret(k[2]) }
    }
}

/// What the generator needs to start.
pub(crate) struct Setup {
    pub wan: Vec<MemQueue>,
    pub inner: Vec<MemQueue>,
    pub mac: [u8; 6],
    pub conc_mac: [u8; 6],
    /// The running daemon's shared state, set once it has loaded its configuration.
    pub probe: Arc<OnceLock<Arc<Shared>>>,
    pub seeds: Vec<PeerSeed>,
    pub size: usize,
    pub verify_every: u64,
    pub daemon_done: Arc<AtomicBool>,
    /// Thread ids present before the daemon started (its workers are the new ones).
    pub tids_before: std::collections::BTreeSet<i32>,
}

impl Generator {
    /// Wait for the daemon to load its peers, give each a session on both sides, and find
    /// the daemon's worker threads.
    pub fn new(s: Setup) -> Result<Generator, BenchError> {
        let workers = s.wan.len();
        let n = s.seeds.len();
        // Loading the configuration takes about a microsecond or two per peer.
        let timeout = SETUP_TIMEOUT + Duration::from_micros(100 * n as u64);
        let deadline = Instant::now() + timeout;
        let shared = loop {
            if let Some(sh) = s.probe.get() {
                break sh.clone();
            }
            if s.daemon_done.load(Ordering::Relaxed) {
                return Err(BenchError::Run("the daemon stopped".into()));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Run(format!("the daemon did not load {n} peers within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let epoch = Instant::now();
        let dev = shared.data.device.load_full();
        let mut peers = Vec::with_capacity(n);
        for (i, seed) in s.seeds.into_iter().enumerate() {
            let missing = |e: String| BenchError::Run(format!("peer {i}: {e}"));
            let id = dev.peer_by_key(&seed.public_key).ok_or_else(|| missing("not configured".into()))?;
            let conc_index = dev
                .bench_install_session(&mut OsRng, id, &seed.down, &seed.up, i as u32, shared.data.clock.now())
                .map_err(|e| missing(e.to_string()))?;
            peers.push(GenPeer {
                kp: Keypair::new(&seed.up, &seed.down, i as u32, conc_index, false, Timestamp::from_nanos(1)),
                rx_next_seq: 0,
                rx_expect: 0,
                tx_next_seq: 0,
                tx_last_seq: None,
                tx_last_counter: None,
            });
        }
        drop(dev);
        drop(shared);
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
            stride: stride(peers.len()),
            peers,
            cursor: [0; 2],
            wan: s.wan,
            inner: s.inner,
            pool,
            mac: EthernetAddress(s.mac),
            conc_mac: EthernetAddress(s.conc_mac),
            conc: SocketAddrV4::new(CONC_IP, PORT),
            epoch,
            rxv: Vec::with_capacity(BURST),
            staging: Vec::with_capacity(BURST),
            scratch: Vec::with_capacity(DEFAULT_TUNNEL_MTU),
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

    /// The measurements asked for, each after an untimed warm-up chunk.
    ///
    /// The concentrator learns the endpoints' MAC addresses from their authenticated packets, or
    /// asks by ARP on its first frame to them, parking at most 16 frames per next hop meanwhile
    /// and dropping the rest (`wan::neigh`). So when the first direction is not rx, an untimed
    /// rx chunk goes first: otherwise whether a first burst of tx frames finds its next hop
    /// resolved would depend on which of its input rings a worker happened to poll first.
    pub fn run(&mut self, directions: &[Direction], seconds: Duration) -> Result<Vec<Measurement>, BenchError> {
        let mut results = Vec::new();
        let prime = directions.first().is_some_and(|d| *d != Direction::Rx);
        for (k, &dir) in directions.iter().enumerate() {
            if k == 0 && prime {
                let warm = self.measure(Direction::Rx, Duration::ZERO, WARMUP)?;
                if warm.lost > 0 || warm.verify_failed > 0 {
                    return Err(BenchError::Run(format!(
                        "rx warm-up: {} lost, {} damaged of {}",
                        warm.lost, warm.verify_failed, warm.sent
                    )));
                }
            }
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

    /// Whether the current measurement counts packets going `dir`.
    fn measures(&self, dir: Direction) -> bool {
        matches!(self.measuring, Some(m) if m == dir || m == Direction::Duplex)
    }

    /// Peer `i`'s inner packet for `dir` (rx: from the peer to the host; tx: the other way),
    /// with sequence number 0, into `self.scratch`.
    fn template(&mut self, dir: Direction, i: usize) {
        let (src, dst) = match dir {
            Direction::Tx => (HOST_IP, inner_ip(i)),
            _ => (inner_ip(i), HOST_IP),
        };
        self.scratch.clear();
        self.scratch.resize(self.size, 0);
        write_inner_packet(&mut self.scratch, src, dst, i as u32);
    }

    /// Put the outer Ethernet/IPv4/UDP headers of a frame from `from` to the concentrator.
    fn frame(&mut self, buf: Buffer, from: SocketAddrV4) -> Option<Buffer> {
        self.ident = self.ident.wrapping_add(1);
        outer_frame(buf, self.mac, self.conc_mac, from, self.conc, self.ident)
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
        if !self.measures(Direction::Rx) {
            self.m.other_frames += 1;
            return;
        }
        self.m.packets += 1;
        let d = b.data();
        let peer = d.get(28..32).map(|p| u32::from_be_bytes(p.try_into().unwrap_or_default()) as usize);
        let Some(i) = peer.filter(|&i| i < self.peers.len()) else {
            self.m.verify_failed += 1;
            return;
        };
        self.template(Direction::Rx, i);
        let p = &mut self.peers[i];
        match matches(&self.scratch, b.data()) {
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
            let peer = self.peer_wan(target);
            if let (true, Ok(Classified::ArpRequest { .. })) = (self.is_endpoint_addr(target), peer.classify(d, 0)) {
                if let Some(len) = peer.arp_reply_in_place(b.data_mut()) {
                    b.truncate(len);
                    self.send_now(q, b);
                    return;
                }
            }
            self.m.other_frames += 1;
            return;
        }
        // The concentrator's IPv4 headers have no options: the UDP destination port is at 36.
        let port = u16::from_be_bytes([d[36], d[37]]);
        let Ok(Classified::WireGuard { offset, len, .. }) = self.peer_wan(target).classify(d, port) else {
            self.m.other_frames += 1;
            return;
        };
        if b.trim_front(offset).is_err() {
            return;
        }
        b.truncate(len);
        let to = SocketAddrV4::new(target, port);
        let msg = TransportData::new_checked(b.data()).ok().map(|t| (t.receiver_index() as usize, t.counter()));
        let Some((i, counter)) = msg.filter(|&(i, _)| b.data()[0] == MESSAGE_DATA && i < self.peers.len()) else {
            // Handshakes: none are expected (the sessions are installed, not negotiated).
            self.m.other_frames += 1;
            return;
        };
        if endpoint(i) != to {
            // Sealed for peer i but sent to another peer's endpoint.
            self.m.verify_failed += 1;
            return;
        }
        if len == DATA_MIN_LEN {
            self.keepalive_in(i, b);
        } else if self.measures(Direction::Tx) {
            self.data_in(i, counter, b);
        } else {
            self.m.other_frames += 1;
        }
    }

    /// The WAN identity of the simulated peer at `ip` (all of them share the generator's MAC).
    fn peer_wan(&self, ip: Ipv4Addr) -> Wan {
        Wan { mac: self.mac, v4: Some(WanAddr { addr: ip, prefix: 16, gateway: None }), v6: None, vlan: None }
    }

    fn is_endpoint_addr(&self, ip: Ipv4Addr) -> bool {
        let addrs = self.peers.len().div_ceil(PORTS_PER_ADDR);
        u32::from(ip).checked_sub(u32::from(CONC_IP) + 1).is_some_and(|k| (k as usize) < addrs)
    }

    fn keepalive_in(&mut self, i: usize, mut b: Buffer) {
        let now = self.now();
        match self.peers[i].kp.open(now, b.data_mut()) {
            Ok(r) if r.is_empty() => self.m.keepalives += 1,
            _ => self.m.other_frames += 1,
        }
    }

    /// An encrypted tx-direction frame for peer `i`.
    fn data_in(&mut self, i: usize, counter: u64, mut b: Buffer) {
        self.m.packets += 1;
        let sample = self.m.packets.is_multiple_of(self.verify_every);
        let now = self.now();
        {
            let p = &mut self.peers[i];
            if p.tx_last_counter.is_some_and(|last| counter <= last) {
                self.m.out_of_order += 1;
            }
            p.tx_last_counter = Some(counter);
        }
        if !sample {
            return;
        }
        self.template(Direction::Tx, i);
        let p = &mut self.peers[i];
        let ok = match p.kp.open(now, b.data_mut()) {
            Ok(r) => {
                // The plaintext is padded: its IPv4 length says where the packet ends.
                let inner = &b.data()[r];
                let ip_len = inner.get(2..4).map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
                match inner.get(..ip_len).and_then(|inner| matches(&self.scratch, inner)) {
                    Some(seq) => {
                        if p.tx_last_seq.is_some_and(|l| seq <= l) {
                            self.m.out_of_order += 1;
                        }
                        p.tx_last_seq = Some(seq);
                        true
                    }
                    None => false,
                }
            }
            Err(_) => false,
        };
        if ok {
            self.m.verified += 1;
        } else {
            self.m.verify_failed += 1;
        }
    }

    /// Build `n` packets for `dir` (rx, tx, or half each for duplex) in the peer order (see
    /// [`stride`]), into per-queue lists for the WAN (rx) and inner (tx) rings.
    fn build(&mut self, dir: Direction, n: usize) -> Result<Chunk, BenchError> {
        let queues = self.wan.len();
        let mut chunk = Chunk {
            rx: (0..queues).map(|_| VecDeque::with_capacity(n / queues + 1)).collect(),
            tx: (0..queues).map(|_| VecDeque::with_capacity(n / queues + 1)).collect(),
        };
        let plan: &[(Direction, usize)] = match dir {
            Direction::Rx => &[(Direction::Rx, n)],
            Direction::Tx => &[(Direction::Tx, n)],
            Direction::Duplex => &[(Direction::Rx, n / 2), (Direction::Tx, n - n / 2)],
        };
        let size = self.size;
        let now = self.now();
        let npeers = self.peers.len() as u64;
        for &(d, count) in plan {
            let c = usize::from(d == Direction::Tx);
            for _ in 0..count {
                let i = ((self.cursor[c] % npeers) * self.stride as u64 % npeers) as usize;
                self.cursor[c] += 1;
                self.template(d, i);
                let mut b = self.pool.alloc().ok_or_else(|| BenchError::Run("generator pool exhausted".into()))?;
                let p = &mut self.peers[i];
                let seq = if d == Direction::Tx { &mut p.tx_next_seq } else { &mut p.rx_next_seq };
                let data = b.append(size).map_err(|e| BenchError::Run(format!("inner packet of {size} bytes: {e}")))?;
                data.copy_from_slice(&self.scratch);
                data[SEQ].copy_from_slice(&seq.to_be_bytes());
                *seq += 1;
                let queue = i % queues;
                if d == Direction::Tx {
                    chunk.tx[queue].push_back(b);
                    continue;
                }
                let sealed = (|| {
                    b.prepend(DATA_HEADER_LEN).ok()?;
                    let len = p.kp.seal(now, b.data_and_tailroom_mut(), size, DEFAULT_TUNNEL_MTU).ok()?;
                    b.set_len(len).ok()
                })();
                sealed.ok_or_else(|| BenchError::Run(format!("peer {i}: could not seal a {size}-byte packet")))?;
                let b = self.frame(b, endpoint(i)).ok_or_else(|| BenchError::Run("framing".into()))?;
                chunk.rx[queue].push_back(b);
            }
        }
        Ok(chunk)
    }

    /// Measure `dir` in chunks of `chunk` packets until `seconds` of drain time (at least one
    /// chunk).
    fn measure(&mut self, dir: Direction, seconds: Duration, chunk: usize) -> Result<Measurement, BenchError> {
        self.m = Measurement::default();
        self.measuring = Some(dir);
        let r = loop {
            // The sessions were installed once, at `epoch`: past REKEY_AFTER_TIME the
            // concentrator would start handshakes, past REJECT_AFTER_TIME drop packets.
            if self.epoch.elapsed() > SESSION_BUDGET {
                break Err(BenchError::Run(format!(
                    "the sessions are {:?} old (they rekey at 120 s): fewer --seconds or directions",
                    self.epoch.elapsed()
                )));
            }
            let mut c = self.build(dir, chunk)?;
            if let Err(e) = self.drain(&mut c) {
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

    /// Packets waiting in worker `q`'s input rings (WAN and inner).
    fn input_pending(&self, q: usize) -> usize {
        self.wan[q].tx_pending() + self.inner[q].tx_pending()
    }

    /// Release a built chunk into the daemon and wait until all of it came out.
    ///
    /// The whole chunk goes into the workers' input rings at once (every ring holds a chunk),
    /// so each worker has a backlog that shrinks as it works. Only the stretch during which a
    /// worker provably had work counts: from the first sample after the last push to the last
    /// sample that still saw `BACKLOG` packets waiting for it, each sample reading the worker's
    /// CPU clock, the wall clock and the input rings at one moment. The generator being
    /// descheduled meanwhile costs the worker nothing (it has a backlog); a worker idling at the
    /// end of a chunk does not count, and one preempted shows as on-CPU below 1.
    ///
    /// While a worker has a backlog the generator leaves the rings alone apart from a sample
    /// every `PACE`, and collects the output when the workers are done (the output rings hold a
    /// chunk too): a consumer spinning on a worker's output ring pulls the ring's cache lines
    /// away on every push, which would be charged to the worker.
    fn drain(&mut self, chunk: &mut Chunk) -> Result<(), BenchError> {
        let total: u64 = chunk.rx.iter().chain(&chunk.tx).map(|q| q.len() as u64).sum();
        // A worker takes at most a burst from each input ring per iteration.
        let rings =
            usize::from(chunk.rx.iter().any(|q| !q.is_empty())) + usize::from(chunk.tx.iter().any(|q| !q.is_empty()));
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
            for (to_wan, lists) in [(true, &mut chunk.rx), (false, &mut chunk.tx)] {
                for (q, pending) in lists.iter_mut().enumerate() {
                    if pending.is_empty() {
                        continue;
                    }
                    pushing = true;
                    let take = BURST.min(pending.len());
                    self.staging.extend(pending.drain(..take));
                    let port = if to_wan { &mut self.wan[q] } else { &mut self.inner[q] };
                    port.tx_burst(&mut self.staging);
                    while let Some(b) = self.staging.pop() {
                        pending.push_front(b);
                    }
                }
            }
            let mut busy = false;
            let mut backlog = 0;
            if !pushing {
                for q in 0..workers {
                    let before = self.input_pending(q);
                    backlog += before;
                    if before < BACKLOG {
                        continue;
                    }
                    busy = true;
                    let Some(cpu) = self.workers[q].now_ns() else { continue };
                    let wall = t0.elapsed().as_nanos() as u64;
                    let after = self.input_pending(q);
                    // The clocks and the rings must be read at one moment: if the worker took
                    // more than a burst per ring meanwhile (this thread was descheduled), skip
                    // the sample.
                    if before - after > BURST * rings {
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
        for q in chunk.rx.iter_mut().chain(chunk.tx.iter_mut()) {
            q.clear();
        }
        Ok(())
    }
}

/// A built chunk: per worker queue, frames for the WAN ring (rx) and packets for the inner
/// ring (tx).
struct Chunk {
    rx: Vec<VecDeque<Buffer>>,
    tx: Vec<VecDeque<Buffer>>,
}

/// Put the outer Ethernet/IPv4/UDP headers of a frame from `from` (at `src_mac`) to `to` (at
/// `dst_mac`) around `buf`'s payload: what both generators send the concentrator.
pub(super) fn outer_frame(
    mut buf: Buffer,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    from: SocketAddrV4,
    to: SocketAddrV4,
    ident: u16,
) -> Option<Buffer> {
    let len = buf.len();
    let o = Outer { src_mac, dst_mac, vlan: None, src: from.into(), dst: to.into(), tos: 0, ident };
    buf.prepend(o.header_len()).ok()?;
    o.emit(buf.data_mut(), len).ok()?;
    Some(buf)
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

    #[test]
    fn stride_visits_every_peer_once_per_round() {
        for n in [1, 2, 16, 1000, 65_536, 100_000] {
            let s = stride(n);
            let mut seen = vec![false; n];
            for k in 0..n {
                let i = k * s % n;
                assert!(!seen[i], "n {n}: peer {i} twice");
                seen[i] = true;
            }
            if n > 2 {
                assert!(s > 1, "n {n}: stride {s} is not scattered");
            }
        }
    }

    #[test]
    fn endpoints_are_distinct_and_share_few_addresses() {
        assert_eq!(endpoint(0), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), FIRST_PORT));
        assert_eq!(endpoint(PORTS_PER_ADDR), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), FIRST_PORT));
        let last = endpoint(super::super::MAX_PEERS - 1);
        assert!(last.port() < FIRST_PORT + PORTS_PER_ADDR as u16);
        assert!(u32::from(*last.ip()) < u32::from(CONC_IP) + 64, "{last}");
    }
}
