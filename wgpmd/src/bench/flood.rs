//! `wgpmd bench --flood`: the handshake stage of the real worker pipeline under a generated
//! handshake flood, next to established peers' data traffic, with one and with two workers.
//!
//! Like `wgpmd bench`, it starts a concentrator as `wgpmd run` does
//! ([`crate::daemon::run_with_ports`]: workers, control core, busy polling) on two `mem` pairs,
//! and drives it from a generator thread on the far ends. Every generator address lies off the
//! concentrator's WAN subnet, behind one gateway the generator answers ARP for, so one
//! neighbour entry serves them all. The concentrator is configured with three kinds of peers:
//! `peers` established ones (one /32 allowed IP each, carrying data), `storm` peers (handshakes
//! only) and `retry` peers (handshakes only, through cookie replies). For each worker count:
//!
//! 1. **Setup**: the established peers (each a [`Device`] of its own) complete a handshake and
//!    confirm it with a data packet.
//! 2. **Storm** (responder handshakes per worker core): real initiations from the storm peers,
//!    prepared ahead (untimed: each costs the generator a key generation and a DH), in rounds
//!    round-robin over the peers (each round 6 s later on the peers' virtual clocks, so every
//!    TAI64N timestamp is newer, and a peer comes back far less often than the responder's
//!    50-per-second rule allows). They are released per worker queue through a window that
//!    keeps every worker busy and the device below the under-load depth, so each costs a full
//!    responder handshake. Every response is checked against the initiation it answers. The
//!    rate is handshakes per second of the worker's CPU time, from the first initiation to its
//!    last response ([`super::cpu::ThreadClock`]), per worker and summed over the workers.
//! 3. **Data alone**: the established peers' data (rx: WAN → inner, decrypted by the workers),
//!    built ahead in chunks as `wgpmd bench` does, each chunk released at once and drained;
//!    every packet checked byte for byte with its per-peer sequence number. Rates are per second
//!    of the workers' CPU time while each had a backlog (`FloodGen::drain`).
//! 4. **Data under the flood**: the same chunks with the flood interleaved into the same rings:
//!    initiations with a valid MAC1 and random bodies from many sources (at `rate` per second
//!    of wall time, the proportion adjusted chunk by chunk), a quarter as many junk messages of
//!    every type (wrong MAC1, truncated, extended, unknown types, reserved bits set, random
//!    responses with a valid MAC1, cookie replies for nothing, data for no session). Once the
//!    flood has settled at its rate (the warm-up chunks, during which the device notices the
//!    flood and goes under load, are not counted), the retry peers initiate (each takes the
//!    cookie reply and retries with MAC2 as soon as it has it, and must complete), and so do the
//!    established peers for their rekeys (the same cookie retry; each must complete and its next
//!    data must pass on the new session). A peer whose initiation got neither a response nor a
//!    cookie reply within 8 chunks sends a new one (as its retransmission timer would).
//! 5. **Data after**: one more chunk on the new sessions, all of which must arrive.
//!
//! What it leaves out: the flood is generated ahead at the generator's own pace, not at a line
//! rate from a NIC; the generator shares the machine's cores (with two workers on two cores it
//! shares them with the workers: its CPU time is not charged to them, but their wall time
//! suffers); IPv6; the kernel's and boringtun's behaviour under the same flood.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nic_backends::mem::{self, MemQueue};
use nic_backends::{Buffer, Pool, Port, Queue};
use rand_core::{OsRng, RngCore};

use super::cpu::{self, ThreadClock};
use super::gen::{inner_ip, inner_packet, matches, HOST_IP, SEQ};
use super::{machine, on_core, BenchError, CorePlan};
use crate::daemon::{cores, DaemonConfig, HsSnapshot, PollMode, Shared};
use crate::wan::{Wan, WanAddr};
use wgpmd_proto::config::{InterfaceConfig, PeerConfig};
use wgpmd_proto::crypto::{self, PrivateKey};
use wgpmd_proto::device::{Device, HandshakeOutcome, Output, PeerId};
use wgpmd_proto::messages::{
    COOKIE_REPLY_LEN, DATA_HEADER_LEN, DATA_MIN_LEN, DEFAULT_TUNNEL_MTU, INITIATION_LEN, KEY_LEN, RESPONSE_LEN,
    UNDER_LOAD_QUEUE_DEPTH,
};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

/// The concentrator's WAN address, its subnet's gateway (the generator answers for it) and port.
const CONC_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 254);
const PORT: u16 = crate::daemon::DEFAULT_LISTEN_PORT;
/// Inner packet size of the established peers' data.
pub const FLOOD_DATA_SIZE: usize = 512;
/// Data packets per chunk.
const CHUNK: usize = 4096;
/// Ring slots per direction of each mem queue: a chunk with its flood fits.
const DEPTH: usize = 4 * CHUNK;
/// Flood messages per chunk at most (the rest of a ring).
const MAX_FLOOD_PER_CHUNK: usize = DEPTH - CHUNK - 1024;
/// Storm initiations in flight per worker: enough to keep it busy for several milliseconds,
/// and all workers' together below the under-load depth.
const WINDOW: usize = UNDER_LOAD_QUEUE_DEPTH / 4;
/// Packets per ring operation.
const BURST: usize = 32;
/// A worker with at least this many entries waiting in its input ring is busy.
const BACKLOG: usize = 2 * BURST;
/// How long the generator sleeps between looks while the workers are busy.
const PACE: Duration = Duration::from_micros(50);
/// Virtual time a generator peer's clock moves on before each initiation: past its own
/// one-initiation-per-REKEY_TIMEOUT rule, and its TAI64N timestamp grows with it.
const STEP_NS: u64 = 6_000_000_000;
/// A phase that makes no progress for this long (wall) gives up and counts what is missing.
const STALL: Duration = Duration::from_secs(5);
/// Time allowed for the workers to start and for the setup handshakes.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks the flood may take to settle at its rate before the counted ones start anyway.
const MAX_WARMUP_CHUNKS: u32 = 64;
/// Chunks an established peer's rekey may take under the flood before it counts as failed.
const REKEY_CHUNKS: usize = 400;

/// Who a generator address belongs to (its second octet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Established = 1,
    Storm = 2,
    Retry = 3,
    Flood = 4,
    Junk = 5,
}

fn addr(role: Role, i: usize) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(10, role as u8, 0, 0);
    let port = if matches!(role, Role::Flood | Role::Junk) { 1024 + (i % 60_000) as u16 } else { PORT };
    SocketAddrV4::new(Ipv4Addr::from(u32::from(ip) + 1 + i as u32), port)
}

fn role_of(ip: Ipv4Addr) -> Option<(Role, usize)> {
    let o = ip.octets();
    if o[0] != 10 {
        return None;
    }
    let role = match o[1] {
        1 => Role::Established,
        2 => Role::Storm,
        3 => Role::Retry,
        4 => Role::Flood,
        5 => Role::Junk,
        _ => return None,
    };
    let i = (u32::from(ip) & 0xffff).checked_sub(1)? as usize;
    Some((role, i))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// Established peers (carrying data).
    pub peers: usize,
    /// Storm peers (the source of the responder handshakes measured).
    pub storm_peers: usize,
    /// Peers that retry through cookie replies during the flood.
    pub retry_peers: usize,
    /// Valid-MAC1 initiations per second of wall time during the flood.
    pub rate: u64,
    /// Storm initiations per worker.
    pub storm_per_worker: usize,
    /// Seconds of data alone and of data under the flood (each, per worker count).
    pub seconds: f64,
    /// Worker counts to run, in order.
    pub workers: Vec<usize>,
}

impl FloodOptions {
    /// `wgpmd bench --flood`.
    pub fn full() -> Self {
        FloodOptions {
            peers: 16,
            retry_peers: 32,
            rate: 100_000,
            storm_per_worker: 20_000,
            storm_peers: 2048,
            seconds: 2.0,
            workers: vec![1, 2],
        }
    }
    /// `wgpmd bench --flood --quick`.
    pub fn quick() -> Self {
        FloodOptions { peers: 4, storm_peers: 512, retry_peers: 8, storm_per_worker: 256, seconds: 0.3, ..Self::full() }
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |s: String| Err(BenchError::Options(s));
        for (name, n) in [("--peers", self.peers), ("storm peers", self.storm_peers), ("retry peers", self.retry_peers)]
        {
            if !(1..=60_000).contains(&n) {
                return bad(format!("{name} {n}: 1 to 60000"));
            }
        }
        if self.rate == 0 {
            return bad("--rate: at least 1".into());
        }
        if !(self.seconds > 0.0 && self.seconds <= super::MAX_SECONDS) {
            return bad(format!("--seconds {}: more than 0, at most {}", self.seconds, super::MAX_SECONDS));
        }
        if self.workers.is_empty() || self.workers.contains(&0) {
            return bad("workers: at least one run of at least one worker".into());
        }
        Ok(())
    }
}

/// Counter deltas over a phase, summed over the workers (from the daemon's own counters).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Handshake messages processed after the queue (DH work done or tried).
    pub processed: u64,
    /// Variable-base X25519 operations.
    pub dh_operations: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Handshake responses sent.
    pub responses_sent: u64,
    /// `hs_dropped_*` by name.
    pub dropped: Vec<(&'static str, u64)>,
}

impl Counters {
    fn between(a: &[HsSnapshot], b: &[HsSnapshot]) -> Counters {
        let mut c = Counters::default();
        for (a, b) in a.iter().zip(b) {
            c.processed += b.processed - a.processed;
            c.dh_operations += b.dh_operations - a.dh_operations;
            c.cookies_sent += b.cookies_sent - a.cookies_sent;
            c.responses_sent += b.responses_sent - a.responses_sent;
            for (i, ((name, x), (_, y))) in a.dropped.iter().zip(&b.dropped).enumerate() {
                if c.dropped.len() <= i {
                    c.dropped.push((*name, 0));
                }
                c.dropped[i].1 += y - x;
            }
        }
        c
    }
}

/// The storm phase.
#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Initiations sent.
    pub sent: u64,
    /// Responses received, each answering an initiation sent (none twice).
    pub answered: u64,
    /// Responses that answered nothing we sent, or twice.
    pub bad_responses: u64,
    /// Cookie replies received instead of a response (the device went under load).
    pub cookies: u64,
    /// Per worker: responses, CPU ns from the first initiation to its last response.
    pub per_worker: Vec<(u64, u64)>,
    /// Wall time of the phase.
    pub wall_ns: u64,
    /// The daemon's counters over the phase.
    pub counters: Counters,
}

impl Storm {
    /// Responder handshakes per second of CPU time, per worker.
    pub fn per_core(&self) -> Vec<f64> {
        self.per_worker.iter().map(|&(n, ns)| if ns == 0 { 0.0 } else { n as f64 * 1e9 / ns as f64 }).collect()
    }
    /// The workers' rates summed: handshakes per second the workers do together, each on a core.
    pub fn total(&self) -> f64 {
        self.per_core().iter().sum()
    }
    /// Handshakes per second of wall time (the generator and the machine's other load included).
    pub fn wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.answered as f64 * 1e9 / self.wall_ns as f64
    }
}

/// A data phase (alone or under the flood).
#[derive(Debug, Clone, Default)]
pub struct DataPhase {
    /// Data packets delivered, counted chunks only.
    pub packets: u64,
    /// Data packets that never came out (all chunks).
    pub lost: u64,
    /// Delivered packets that were not what was sent, or out of order (all chunks).
    pub damaged: u64,
    /// Workers' CPU ns over the counted chunks (summed), from release to the last packet out.
    pub cpu_ns: u64,
    /// Workers' CPU ns while they had a backlog (summed; see `drain`).
    pub busy_cpu_ns: u64,
    /// Data packets the workers took in those stretches.
    pub busy_data: f64,
    /// Valid-MAC1 initiations the workers took in those stretches.
    pub busy_flood: f64,
    /// Wall ns over the counted chunks.
    pub wall_ns: u64,
    /// Valid-MAC1 initiations with random bodies sent (all chunks).
    pub flood_initiations: u64,
    /// Junk messages sent (all chunks).
    pub junk: u64,
    /// Valid-MAC1 initiations in the counted chunks.
    pub counted_flood: u64,
    /// Cookie replies received, by who they went to: flood sources, retry peers, established.
    pub cookies_received: [u64; 3],
    /// Retry peers: initiations sent with a MAC2, and handshakes they completed.
    pub retries_with_mac2: u64,
    /// Handshakes the retry peers completed.
    pub retry_handshakes: u64,
    /// Established peers whose rekey completed (of `peers`).
    pub rekeys_completed: usize,
    /// Established peers' rekey initiations sent (first tries and retries).
    pub rekey_initiations: u64,
    /// Responses to flood or junk sources (must be none).
    pub unexpected_responses: u64,
    /// Chunks (counted and not).
    pub chunks: u32,
    /// Chunks before the flood settled at its rate (not counted), and their wall ns.
    pub warmup_chunks: u32,
    /// Wall ns of those.
    pub warmup_ns: u64,
    /// DH operations during those.
    pub warmup_dh: u64,
    /// The daemon's counters over the phase (under the flood: over the counted chunks).
    pub counters: Counters,
}

impl DataPhase {
    /// Data packets per second of worker CPU time while the workers had a backlog (per worker
    /// core).
    pub fn pps_per_core(&self) -> f64 {
        if self.busy_cpu_ns == 0 {
            return 0.0;
        }
        self.busy_data * 1e9 / self.busy_cpu_ns as f64
    }
    /// Data packets per second of worker CPU time from each chunk's release to its last packet
    /// out (idle polling at the ends included).
    pub fn pps_per_core_drain(&self) -> f64 {
        if self.cpu_ns == 0 {
            return 0.0;
        }
        self.packets as f64 * 1e9 / self.cpu_ns as f64
    }
    /// Data packets per second of wall time (all workers).
    pub fn pps_wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.packets as f64 * 1e9 / self.wall_ns as f64
    }
    /// Valid-MAC1 initiations per second of a worker's CPU time in the counted chunks (the
    /// rate each of `workers` workers saw, as if on a core of its own).
    pub fn flood_rate(&self, workers: usize) -> f64 {
        if self.busy_cpu_ns == 0 {
            return 0.0;
        }
        self.busy_flood * 1e9 / (self.busy_cpu_ns as f64 / workers.max(1) as f64)
    }
    /// Valid-MAC1 initiations per second of wall time in the counted chunks.
    pub fn flood_rate_wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.counted_flood as f64 * 1e9 / self.wall_ns as f64
    }
}

/// One worker count's results.
#[derive(Debug, Clone)]
pub struct FloodRun {
    /// Where it ran.
    pub plan: CorePlan,
    /// Responder handshakes.
    pub storm: Storm,
    /// Data alone.
    pub alone: DataPhase,
    /// Data under the flood.
    pub flood: DataPhase,
    /// Data after the flood, on the rekeyed sessions.
    pub after: DataPhase,
}

impl FloodRun {
    /// What went wrong, if anything: the invariants `--quick` fails on (never speed).
    pub fn broken(&self, peers: usize, retry_peers: usize) -> Vec<String> {
        let mut v = Vec::new();
        let s = &self.storm;
        if s.answered == 0 {
            v.push("no storm handshake was answered".into());
        }
        if s.answered + s.cookies < s.sent {
            v.push(format!("storm: {} of {} initiations got no answer", s.sent - s.answered - s.cookies, s.sent));
        }
        if s.bad_responses > 0 {
            v.push(format!("storm: {} responses answered nothing sent", s.bad_responses));
        }
        for (name, p) in
            [("data alone", &self.alone), ("data under the flood", &self.flood), ("data after", &self.after)]
        {
            if p.lost > 0 || p.damaged > 0 {
                v.push(format!("{name}: {} lost, {} damaged or out of order", p.lost, p.damaged));
            }
            if p.unexpected_responses > 0 {
                v.push(format!("{name}: {} responses to junk", p.unexpected_responses));
            }
        }
        if self.flood.rekeys_completed < peers {
            v.push(format!("only {} of {peers} established peers completed their rekey", self.flood.rekeys_completed));
        }
        if (self.flood.retry_handshakes as usize) < retry_peers {
            v.push(format!(
                "only {} of {retry_peers} retry peers completed a handshake under the flood",
                self.flood.retry_handshakes
            ));
        }
        if self.flood.flood_initiations == 0 || self.flood.junk == 0 {
            v.push("no flood was sent".into());
        }
        v
    }
}

/// Everything `wgpmd bench --flood` measured.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// What was asked.
    pub options: FloodOptions,
    /// CPU model and load.
    pub machine: String,
    /// One per worker count.
    pub runs: Vec<FloodRun>,
}

impl FloodReport {
    /// Every broken invariant of every run.
    pub fn broken(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                let w = r.plan.workers.len();
                r.broken(self.options.peers, self.options.retry_peers)
                    .into_iter()
                    .map(move |m| format!("{w} worker(s): {m}"))
            })
            .collect()
    }
}

/// Run the flood bench for each worker count.
pub fn run(opts: &FloodOptions) -> Result<FloodReport, BenchError> {
    opts.check()?;
    let machine = machine();
    let mut runs = Vec::new();
    for &w in &opts.workers {
        let plan = CorePlan::new(&cores::available(), w)?;
        runs.push(one(opts, &plan)?);
    }
    Ok(FloodReport { options: opts.clone(), machine, runs })
}

struct Keys {
    conc: PrivateKey,
    established: Vec<PrivateKey>,
    storm: Vec<PrivateKey>,
    retry: Vec<PrivateKey>,
}

fn one(opts: &FloodOptions, plan: &CorePlan) -> Result<FloodRun, BenchError> {
    let w = plan.workers.len();
    let gen_keys = |n: usize| (0..n).map(|_| PrivateKey::generate(&mut OsRng)).collect::<Vec<_>>();
    let keys = Keys {
        conc: PrivateKey::generate(&mut OsRng),
        established: gen_keys(opts.peers),
        storm: gen_keys(opts.storm_peers),
        retry: gen_keys(opts.retry_peers),
    };
    let peer = |k: &PrivateKey, allowed: Option<usize>| PeerConfig {
        public_key: k.public_key(),
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: None,
        allowed_ips: allowed.map(|i| (IpAddr::V4(inner_ip(i)), 32)).into_iter().collect(),
    };
    let config = InterfaceConfig {
        private_key: Some(keys.conc.to_bytes()),
        listen_port: Some(PORT),
        fwmark: None,
        peers: (keys.established.iter().enumerate().map(|(i, k)| peer(k, Some(i))))
            .chain(keys.storm.iter().chain(&keys.retry).map(|k| peer(k, None)))
            .collect(),
    };
    let (wan_d, mut wan_g) = mem::pair("flood-wan", "flood-peers", w, DEPTH);
    let (inner_d, mut inner_g) = mem::pair("flood-inner", "flood-host", w, DEPTH);
    let wan: Vec<MemQueue> = (0..w).filter_map(|q| wan_g.take_mem_queue(q)).collect();
    let inner: Vec<MemQueue> = (0..w).filter_map(|q| inner_g.take_mem_queue(q)).collect();
    let mac = wan_g.info().mac.unwrap_or_default();
    let conc_mac = wan_d.info().mac.unwrap_or_default();
    let cfg = DaemonConfig {
        name: "flood".into(),
        config: None,
        inline_config: Some(config),
        wan_port: "mem:flood-wan".into(),
        inner_port: "mem:flood-inner".into(),
        wan_v4: Some(WanAddr { addr: CONC_IP, prefix: 16, gateway: Some(GATEWAY) }),
        wan_v6: None,
        vlan: None,
        neigh_reachable: None,
        neigh_max_entries: None,
        cores: plan.cores.clone(),
        control_shares_core: plan.control_shares_core,
        poll: PollMode::Busy,
        fanout: nic_backends::Fanout::Hash,
        mtu: DEFAULT_TUNNEL_MTU,
        sockets: false,
        metrics: None,
        reload: None,
        drop_privileges: false,
        exception: None,
        exception_rate: crate::daemon::exception::DEFAULT_RATE,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let probe: OnceLock<Arc<Shared>> = OnceLock::new();
    let tids_before = cpu::tids();
    std::thread::scope(|s| {
        let daemon = {
            let (stop, done, probe) = (stop.clone(), done.clone(), &probe);
            std::thread::Builder::new()
                .name("wgpmd-bench-daemon".into())
                .spawn_scoped(s, move || {
                    let r =
                        crate::daemon::run_observed(cfg, Box::new(wan_d), Box::new(inner_d), None, stop, Some(probe));
                    done.store(true, Ordering::Relaxed);
                    r
                })
                .expect("spawn daemon thread")
        };
        let result = on_core(plan.generator, || {
            let mut g = FloodGen::new(opts, &keys, wan, inner, mac, conc_mac, &tids_before, &probe, &done)?;
            g.run(opts)
        });
        stop.store(true, Ordering::Relaxed);
        let daemon = daemon.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        daemon?;
        let (storm, alone, flood, after) = result?;
        Ok(FloodRun { plan: plan.clone(), storm, alone, flood, after })
    })
}

/// A generator-side peer with a device of its own.
struct GenPeer {
    dev: Device,
    conc: PeerId,
    endpoint: SocketAddrV4,
    queue: usize,
    /// Added to the generator's clock for this device (moves on before each initiation).
    skew_ns: u64,
    completed: bool,
    confirmed: bool,
    /// The setup probe went out.
    probed: bool,
    /// A cookie reply came in since the last initiation: the next one carries a MAC2.
    has_cookie: bool,
    /// Established peers: the data template and sequence numbers.
    template: Vec<u8>,
    next_seq: u64,
    expect_seq: u64,
    /// An initiation is owed (a cookie came in, or the last handshake completed).
    owe_initiation: bool,
    /// Chunk index of the last initiation sent.
    initiated_at: usize,
}

type Phases = (Storm, DataPhase, DataPhase, DataPhase);

struct FloodGen<'a> {
    established: Vec<GenPeer>,
    storm: Vec<GenPeer>,
    retry: Vec<GenPeer>,
    wan: Vec<MemQueue>,
    inner: Vec<MemQueue>,
    pool: Pool,
    mac: EthernetAddress,
    conc_mac: EthernetAddress,
    conc: SocketAddrV4,
    conc_public: [u8; KEY_LEN],
    epoch: Instant,
    out: Output,
    rxv: Vec<Buffer>,
    staging: Vec<Buffer>,
    ident: u16,
    clocks: Vec<ThreadClock>,
    shared: &'a Arc<Shared>,
    daemon_done: &'a AtomicBool,
    /// Prepared flood: valid-MAC1 initiations with random bodies, and junk (raw payloads with
    /// their source index).
    flood_pool: Vec<Vec<u8>>,
    junk_pool: Vec<Vec<u8>>,
    flood_next: usize,
    junk_next: usize,
    /// Storm: (peer, sender index) of initiations not yet answered.
    storm_open: HashSet<(usize, u32)>,
    storm_answered_per_q: Vec<u64>,
    storm_last_cpu: Vec<Option<u64>>,
    storm_bad: u64,
    storm_cookies: u64,
    /// What the current data phase counts into.
    d: DataPhase,
    delivered: u64,
    chunk_index: usize,
    rekeying: bool,
    /// The last drain's busy stretches: worker CPU ns, data packets and valid-MAC1 initiations
    /// taken.
    last_busy: (u64, f64, f64),
}

impl<'a> FloodGen<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &FloodOptions,
        keys: &Keys,
        wan: Vec<MemQueue>,
        inner: Vec<MemQueue>,
        mac: [u8; 6],
        conc_mac: [u8; 6],
        tids_before: &std::collections::BTreeSet<i32>,
        probe: &'a OnceLock<Arc<Shared>>,
        daemon_done: &'a AtomicBool,
    ) -> Result<FloodGen<'a>, BenchError> {
        let workers = wan.len();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let conc = SocketAddrV4::new(CONC_IP, PORT);
        let conc_public = keys.conc.public_key();
        let make = |role: Role, ks: &[PrivateKey]| -> Result<Vec<GenPeer>, BenchError> {
            ks.iter()
                .enumerate()
                .map(|(i, k)| {
                    let mut dev = Device::new(&mut OsRng, wall);
                    dev.set_private_key(Some(k.clone()));
                    let setup =
                        |e: wgpmd_proto::device::ConfigError| BenchError::Run(format!("generator peer {i}: {e}"));
                    let id = dev.add_peer(&mut OsRng, conc_public).map_err(setup)?;
                    dev.set_endpoint(id, SocketAddr::V4(conc)).map_err(setup)?;
                    dev.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).map_err(setup)?;
                    let template = if role == Role::Established {
                        inner_packet(inner_ip(i), HOST_IP, FLOOD_DATA_SIZE, i as u32)
                    } else {
                        Vec::new()
                    };
                    Ok(GenPeer {
                        dev,
                        conc: id,
                        endpoint: addr(role, i),
                        queue: i % workers,
                        skew_ns: 0,
                        completed: false,
                        confirmed: false,
                        probed: false,
                        has_cookie: false,
                        template,
                        next_seq: 0,
                        expect_seq: 0,
                        owe_initiation: false,
                        initiated_at: 0,
                    })
                })
                .collect()
        };
        let established = make(Role::Established, &keys.established)?;
        let storm = make(Role::Storm, &keys.storm)?;
        let retry = make(Role::Retry, &keys.retry)?;
        let mut clocks = Vec::with_capacity(workers);
        for w in 0..workers {
            let name = format!("wgpmd-w{w}");
            let tid = cpu::wait_for_thread(&name, tids_before, SETUP_TIMEOUT)
                .ok_or_else(|| BenchError::Run(format!("the daemon's worker thread {name} did not start")))?;
            clocks.push(ThreadClock::of_tid(tid));
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let shared = loop {
            if let Some(s) = probe.get() {
                break s;
            }
            if daemon_done.load(Ordering::Relaxed) || Instant::now() > deadline {
                return Err(BenchError::Run("the daemon did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let pool =
            Pool::new("flood-gen", 3 * DEPTH).map_err(|e| BenchError::Run(format!("generator buffer pool: {e}")))?;
        let mut g = FloodGen {
            established,
            storm,
            retry,
            wan,
            inner,
            pool,
            mac: EthernetAddress(mac),
            conc_mac: EthernetAddress(conc_mac),
            conc,
            conc_public,
            epoch: Instant::now(),
            out: Output::with_capacity(64),
            rxv: Vec::with_capacity(BURST),
            staging: Vec::with_capacity(BURST),
            ident: 0,
            clocks,
            shared,
            daemon_done,
            flood_pool: Vec::new(),
            junk_pool: Vec::new(),
            flood_next: 0,
            junk_next: 0,
            storm_open: HashSet::new(),
            storm_answered_per_q: vec![0; workers],
            storm_last_cpu: vec![None; workers],
            storm_bad: 0,
            storm_cookies: 0,
            d: DataPhase::default(),
            delivered: 0,
            chunk_index: 0,
            rekeying: false,
            last_busy: (0, 0.0, 0.0),
        };
        g.prepare_flood(opts);
        Ok(g)
    }

    fn daemon_gone(&self) -> Result<(), BenchError> {
        if self.daemon_done.load(Ordering::Relaxed) {
            return Err(BenchError::Run("the daemon stopped".into()));
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<HsSnapshot> {
        // Workers publish their counters every 64 poll iterations.
        std::thread::sleep(Duration::from_millis(5));
        (0..self.wan.len()).map(|i| self.shared.hs_snapshot(i)).collect()
    }

    /// Valid-MAC1 initiations with random bodies, and junk of every type.
    fn prepare_flood(&mut self, opts: &FloodOptions) {
        let mac1_key = crypto::hash(&[b"mac1----", &self.conc_public]);
        let with_mac1 = |m: &mut [u8]| {
            let n = m.len() - 32;
            let mac = crypto::mac(&mac1_key, &[&m[..n]]);
            m[n..n + 16].copy_from_slice(&mac);
            m[n + 16..].fill(0);
        };
        let random = |len: usize, ty: u8| {
            let mut m = vec![0u8; len];
            OsRng.fill_bytes(&mut m);
            if let Some(h) = m.get_mut(..4) {
                h.copy_from_slice(&[ty, 0, 0, 0]);
            }
            m
        };
        let n = (opts.rate as usize / 10).clamp(256, 8192);
        self.flood_pool = (0..n)
            .map(|_| {
                let mut m = random(INITIATION_LEN, 1);
                with_mac1(&mut m);
                m
            })
            .collect();
        let mut junk = Vec::new();
        for k in 0..64 {
            // A valid-MAC1 initiation with one body bit flipped (MAC1 now wrong).
            let mut m = random(INITIATION_LEN, 1);
            with_mac1(&mut m);
            m[4 + k % 100] ^= 1 << (k % 8);
            junk.push(m);
            junk.push(random(INITIATION_LEN, 1)); // wrong MAC1
            junk.push(random(INITIATION_LEN - 1 - k % 8, 1)); // truncated
            junk.push(random(INITIATION_LEN + 1 + k % 8, 1)); // extended
            let mut m = random(RESPONSE_LEN, 2);
            with_mac1(&mut m); // a response with a valid MAC1 answering nothing
            junk.push(m);
            junk.push(random(RESPONSE_LEN, 2)); // wrong MAC1
            junk.push(random(RESPONSE_LEN + 3, 2)); // wrong length
            junk.push(random(COOKIE_REPLY_LEN, 3)); // a cookie reply for nothing
            junk.push(random(COOKIE_REPLY_LEN - 1, 3));
            junk.push(random(DATA_MIN_LEN + 16 * (k % 4), 4)); // data for no session
            junk.push(random(DATA_MIN_LEN - 1, 4));
            junk.push(random(1 + k % 200, 5 + (k % 250) as u8)); // unknown types
            let mut m = random(INITIATION_LEN, 1);
            with_mac1(&mut m);
            m[1 + k % 3] = 1 + k as u8; // reserved bytes set
            junk.push(m);
            junk.push(vec![1]); // one byte
        }
        self.junk_pool = junk;
    }

    /// Headers of a frame from `from` to the concentrator around `payload`.
    fn frame(&mut self, payload: &[u8], from: SocketAddrV4) -> Option<Buffer> {
        let mut b = self.pool.alloc()?;
        b.append(payload.len()).ok()?.copy_from_slice(payload);
        self.frame_buf(b, from)
    }

    fn frame_buf(&mut self, buf: Buffer, from: SocketAddrV4) -> Option<Buffer> {
        self.ident = self.ident.wrapping_add(1);
        super::gen::outer_frame(buf, self.mac, self.conc_mac, from, self.conc, self.ident)
    }

    /// Send frames now on queue `q` (control traffic; waits for ring room).
    fn send_now(&mut self, q: usize, bufs: Vec<Buffer>) {
        let mut v = bufs;
        let t = Instant::now();
        while !v.is_empty() && t.elapsed() < STALL {
            self.wan[q].tx_burst(&mut v);
            if !v.is_empty() {
                std::thread::sleep(PACE);
            }
        }
    }

    /// Initiate from a generator peer; returns the framed initiation and its sender index.
    fn initiation(&mut self, role: Role, i: usize) -> Option<(usize, Buffer, u32)> {
        let peers = match role {
            Role::Established => &mut self.established,
            Role::Storm => &mut self.storm,
            _ => &mut self.retry,
        };
        let p = &mut peers[i];
        p.skew_ns += STEP_NS;
        let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
        p.dev.initiate(now, &mut OsRng, p.conc, &mut self.out).ok()?;
        p.completed = false;
        p.owe_initiation = false;
        p.has_cookie = false;
        p.initiated_at = self.chunk_index;
        let (q, from) = (p.queue, p.endpoint);
        let t = self.out.transmits.pop()?;
        self.out.clear();
        let msg = t.payload().to_vec();
        let sender = u32::from_le_bytes(msg.get(4..8)?.try_into().ok()?);
        Some((q, self.frame(&msg, from)?, sender))
    }

    fn run(&mut self, opts: &FloodOptions) -> Result<Phases, BenchError> {
        self.setup()?;
        let storm = self.storm_phase(opts)?;
        let alone = self.data_phase(opts, None)?;
        let flood = self.data_phase(opts, Some(alone.pps_wall()))?;
        // The rekeyed sessions carry data.
        self.d = DataPhase::default();
        self.one_chunk(0.0, true)?;
        let after = std::mem::take(&mut self.d);
        Ok((storm, alone, flood, after))
    }

    /// Every established peer completes a handshake and confirms it with a probe.
    fn setup(&mut self) -> Result<(), BenchError> {
        for i in 0..self.established.len() {
            let (q, b, _) = self
                .initiation(Role::Established, i)
                .ok_or_else(|| BenchError::Run(format!("established peer {i}: no initiation")))?;
            self.send_now(q, vec![b]);
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            if self.poll() == 0 {
                std::thread::sleep(PACE);
            }
            for i in 0..self.established.len() {
                let p = &self.established[i];
                if p.completed && !p.confirmed && !p.probed {
                    self.probe(i);
                }
            }
            if self.established.iter().all(|p| p.confirmed) {
                return Ok(());
            }
            self.daemon_gone()?;
            if Instant::now() > deadline {
                let done = self.established.iter().filter(|p| p.completed).count();
                return Err(BenchError::Run(format!(
                    "setup: {done} of {} established peers got a response within {SETUP_TIMEOUT:?}",
                    self.established.len()
                )));
            }
        }
    }

    /// Seal peer `i`'s template with sequence number u64::MAX (a probe) and send it.
    fn probe(&mut self, i: usize) {
        self.established[i].probed = true;
        let Some(b) = self.data_packet(i, u64::MAX) else { return };
        let q = self.established[i].queue;
        self.send_now(q, vec![b]);
    }

    /// Established peer `i`'s data packet with sequence number `seq`, sealed and framed.
    fn data_packet(&mut self, i: usize, seq: u64) -> Option<Buffer> {
        let mut b = self.pool.alloc()?;
        let p = &mut self.established[i];
        let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
        let d = b.append(FLOOD_DATA_SIZE).ok()?;
        d.copy_from_slice(&p.template);
        d[SEQ].copy_from_slice(&seq.to_be_bytes());
        b.prepend(DATA_HEADER_LEN).ok()?;
        let e = p.dev.encapsulate_to(now, p.conc, b.data_and_tailroom_mut(), FLOOD_DATA_SIZE, &mut self.out);
        self.out.clear();
        b.set_len(e.ok()?.len).ok()?;
        let from = p.endpoint;
        self.frame_buf(b, from)
    }

    /// Storm: prepared initiations through a window per worker.
    fn storm_phase(&mut self, opts: &FloodOptions) -> Result<Storm, BenchError> {
        let w = self.wan.len();
        let total = opts.storm_per_worker * w;
        // Prepared ahead, round-robin over the peers; each lands on its peer's queue.
        let mut pending: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let mut raw: Vec<Vec<(Vec<u8>, SocketAddrV4)>> = vec![Vec::new(); w];
        let npeers = self.storm.len();
        for k in 0..total {
            let i = k % npeers;
            let p = &mut self.storm[i];
            p.skew_ns += STEP_NS;
            let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
            p.dev
                .initiate(now, &mut OsRng, p.conc, &mut self.out)
                .map_err(|e| BenchError::Run(format!("storm peer {i}: initiation: {e:?}")))?;
            let t = self.out.transmits.pop().ok_or_else(|| BenchError::Run("storm: no initiation".into()))?;
            self.out.clear();
            let msg = t.payload().to_vec();
            let sender = u32::from_le_bytes(msg[4..8].try_into().unwrap_or_default());
            if !self.storm_open.insert((i, sender)) {
                return Err(BenchError::Run("storm: a sender index came twice".into()));
            }
            raw[p.queue].push((msg, p.endpoint));
        }
        let before = self.snapshot();
        let mut sent = 0u64;
        let mut in_flight = vec![0usize; w];
        let mut answered_seen = vec![0u64; w];
        let mut raw: Vec<std::vec::IntoIter<(Vec<u8>, SocketAddrV4)>> =
            raw.into_iter().map(|r| r.into_iter()).collect();
        self.storm_answered_per_q = vec![0; w];
        self.storm_last_cpu = vec![None; w];
        self.storm_cookies = 0;
        let cpu0: Vec<u64> = self.clocks.iter().map(|c| c.now_ns().unwrap_or(0)).collect();
        let t0 = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_answered = 0;
        loop {
            for q in 0..w {
                in_flight[q] = in_flight[q].saturating_sub((self.storm_answered_per_q[q] - answered_seen[q]) as usize);
                answered_seen[q] = self.storm_answered_per_q[q];
                while in_flight[q] < WINDOW {
                    let Some((msg, from)) = raw[q].next() else { break };
                    let Some(b) = self.frame(&msg, from) else { break };
                    pending[q].push_back(b);
                    in_flight[q] += 1;
                }
                if !pending[q].is_empty() {
                    self.staging.extend(pending[q].drain(..));
                    let n = self.staging.len();
                    self.wan[q].tx_burst(&mut self.staging);
                    sent += (n - self.staging.len()) as u64;
                    while let Some(b) = self.staging.pop() {
                        pending[q].push_front(b);
                    }
                }
            }
            let seen = self.poll();
            let answered: u64 = self.storm_answered_per_q.iter().sum::<u64>() + self.storm_cookies;
            if answered >= total as u64 {
                break;
            }
            if answered != last_answered {
                last_answered = answered;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                break;
            }
            self.daemon_gone()?;
            if seen == 0 {
                std::thread::sleep(PACE);
            }
        }
        let wall_ns = t0.elapsed().as_nanos() as u64;
        let after = self.snapshot();
        let per_worker = (0..w)
            .map(|q| {
                let ns = self.storm_last_cpu[q].map_or(0, |c| c.saturating_sub(cpu0[q]));
                (self.storm_answered_per_q[q], ns)
            })
            .collect();
        let answered = self.storm_answered_per_q.iter().sum();
        Ok(Storm {
            sent,
            answered,
            bad_responses: self.storm_bad,
            cookies: self.storm_cookies,
            per_worker,
            wall_ns,
            counters: Counters::between(&before, &after),
        })
    }

    /// Data alone or under the flood, for `opts.seconds` of counted chunks.
    fn data_phase(&mut self, opts: &FloodOptions, flood: Option<f64>) -> Result<DataPhase, BenchError> {
        self.d = DataPhase::default();
        let mut before = self.snapshot();
        let mut warmup_dh = 0;
        let target = opts.rate as f64;
        // Flood messages per data packet, from the data rate alone, then adjusted chunk by chunk
        // towards `rate`.
        let mut ratio = flood.map_or(0.0, |alone_pps| (target / alone_pps.max(1.0)).clamp(0.001, 2.0));
        self.rekeying = false;
        let started = Instant::now();
        let mut counting = flood.is_none();
        loop {
            if !counting && self.d.warmup_chunks >= MAX_WARMUP_CHUNKS {
                counting = true;
            }
            if counting && flood.is_some() && !self.rekeying {
                // The flood has settled: the counted chunks start; the established peers rekey,
                // the retry peers start.
                let now = self.snapshot();
                warmup_dh = Counters::between(&before, &now).dh_operations;
                before = now;
                self.rekeying = true;
                for p in &mut self.established {
                    p.owe_initiation = true;
                    p.completed = false;
                }
                for p in &mut self.retry {
                    p.owe_initiation = true;
                }
            }
            let cookies_before = self.d.cookies_received[0];
            let (wall_ns, cpu_ns, flood_sent) = self.one_chunk(ratio, counting)?;
            // Under load: most of the chunk's valid-MAC1 initiations got a cookie reply.
            let under_load = (self.d.cookies_received[0] - cookies_before) * 2 >= flood_sent;
            if !counting {
                self.d.warmup_chunks += 1;
                self.d.warmup_ns += wall_ns;
            }
            // The rate a worker sees: per second of its CPU time (what it would be on cores of
            // their own, whatever else runs on this machine).
            let w = self.wan.len() as f64;
            let (busy_ns, _, busy_flood) = self.last_busy;
            // While the workers had a backlog if that was seen, else over the whole drain.
            let achieved = if busy_ns > 0 && busy_flood > 0.0 {
                busy_flood * 1e9 / (busy_ns as f64 / w)
            } else {
                flood_sent as f64 * 1e9 / (cpu_ns.max(1) as f64 / w)
            };
            if flood.is_some() {
                if under_load && (0.8..=1.25).contains(&(achieved / target)) {
                    counting = true;
                }
                ratio = (ratio * (target / achieved.max(1.0)).clamp(0.5, 2.0)).clamp(0.001, 2.0);
            }
            let counted_s = self.d.wall_ns as f64 / 1e9;
            let rekeyed = flood.is_none()
                || (self.d.rekeys_completed >= self.established.len()
                    && self.d.retry_handshakes as usize >= self.retry.len());
            if counted_s >= opts.seconds && rekeyed {
                break;
            }
            if flood.is_some() && self.d.chunks as usize > REKEY_CHUNKS && counted_s >= opts.seconds {
                break;
            }
            if started.elapsed() > Duration::from_secs_f64(opts.seconds * 20.0 + 30.0) {
                break;
            }
        }
        self.rekeying = false;
        let after = self.snapshot();
        let mut d = std::mem::take(&mut self.d);
        d.counters = Counters::between(&before, &after);
        d.warmup_dh = warmup_dh;
        Ok(d)
    }

    /// Build one chunk (data, and `ratio` flood messages per data packet), release it, wait until
    /// every data packet is out. Returns the drain's wall ns, the workers' CPU ns (summed) and
    /// the valid-MAC1 initiations sent.
    fn one_chunk(&mut self, ratio: f64, counted: bool) -> Result<(u64, u64, u64), BenchError> {
        let w = self.wan.len();
        let mut data: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let n = self.established.len();
        for k in 0..CHUNK {
            let i = k % n;
            let seq = self.established[i].next_seq;
            let b = self.data_packet(i, seq).ok_or_else(|| BenchError::Run(format!("peer {i}: could not seal")))?;
            self.established[i].next_seq += 1;
            data[self.established[i].queue].push_back(b);
        }
        let mut flood: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let mut flood_sent = 0u64;
        let mut valid_per_q = vec![0usize; w];
        if ratio > 0.0 {
            let nf = ((CHUNK as f64 * ratio) as usize).clamp(1, MAX_FLOOD_PER_CHUNK * 4 / 5);
            for k in 0..nf {
                let src = self.flood_next;
                self.flood_next = self.flood_next.wrapping_add(1);
                let msg = self.flood_pool[src % self.flood_pool.len()].clone();
                let b = self.frame(&msg, addr(Role::Flood, src % 65_000)).ok_or_else(pool_empty)?;
                flood[k % w].push_back(b);
                valid_per_q[k % w] += 1;
                flood_sent += 1;
                if k % 4 == 3 {
                    let j = self.junk_next;
                    self.junk_next = self.junk_next.wrapping_add(1);
                    let msg = self.junk_pool[j % self.junk_pool.len()].clone();
                    let b = self.frame(&msg, addr(Role::Junk, j % 65_000)).ok_or_else(pool_empty)?;
                    flood[(k / 4) % w].push_back(b);
                    self.d.junk += 1;
                }
            }
            self.d.flood_initiations += flood_sent;
        }
        if self.rekeying {
            // Initiations owed: the retry peers and the established peers.
            for i in 0..self.retry.len() {
                let p = &self.retry[i];
                let stale = !p.completed && self.chunk_index.saturating_sub(p.initiated_at) > 8;
                if p.owe_initiation || stale {
                    let had_cookie = p.has_cookie;
                    if let Some((q, b, _)) = self.initiation(Role::Retry, i) {
                        flood[q].push_back(b);
                        if had_cookie {
                            self.d.retries_with_mac2 += 1;
                        }
                    }
                }
            }
            for i in 0..self.established.len() {
                let p = &self.established[i];
                let stale = !p.completed && self.chunk_index.saturating_sub(p.initiated_at) > 8;
                if p.owe_initiation || stale {
                    if let Some((q, b, _)) = self.initiation(Role::Established, i) {
                        flood[q].push_back(b);
                        self.d.rekey_initiations += 1;
                    }
                }
            }
        }
        // Interleave the flood evenly into each queue's data.
        let mut chunk: Vec<VecDeque<Buffer>> = Vec::with_capacity(w);
        let mut shares = Vec::with_capacity(w);
        for ((mut dq, mut fq), valid) in data.into_iter().zip(flood).zip(valid_per_q) {
            let total = dq.len() + fq.len();
            shares.push((dq.len() as f64 / total.max(1) as f64, valid as f64 / total.max(1) as f64));
            let mut merged = VecDeque::with_capacity(total);
            let (nd, nf) = (dq.len().max(1), fq.len());
            let mut acc = 0usize;
            while let Some(b) = dq.pop_front() {
                merged.push_back(b);
                acc += nf;
                while acc >= nd {
                    acc -= nd;
                    if let Some(f) = fq.pop_front() {
                        merged.push_back(f);
                    }
                }
            }
            merged.extend(fq.drain(..));
            chunk.push(merged);
        }
        self.chunk_index += 1;
        let (wall, cpu) = self.drain(&mut chunk, &shares, CHUNK as u64, counted)?;
        self.d.chunks += 1;
        if counted {
            self.d.counted_flood += flood_sent;
        }
        Ok((wall, cpu, flood_sent))
    }

    /// Release a chunk and wait until `expect` data packets came out (or it stalls).
    ///
    /// As in `wgpmd bench`, the rates count only the stretch in which each worker provably had
    /// work: from the first sample after the last push to the last sample that still saw
    /// [`BACKLOG`] entries waiting in its input ring, each sample reading the worker's CPU clock
    /// and the ring at one moment. What the worker took meanwhile is split into data and
    /// valid-MAC1 flood by their `shares` of that queue's chunk (they are interleaved evenly).
    /// The generator waking late (this machine is shared) then costs the worker nothing.
    fn drain(
        &mut self,
        chunk: &mut [VecDeque<Buffer>],
        shares: &[(f64, f64)],
        expect: u64,
        counted: bool,
    ) -> Result<(u64, u64), BenchError> {
        let w = self.wan.len();
        let mut first: Vec<Option<(u64, usize)>> = vec![None; w];
        let mut last: Vec<Option<(u64, usize)>> = vec![None; w];
        let delivered0 = self.delivered;
        let cpu0 = cpu::sum_ns(&self.clocks);
        let t0 = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_mark = (0, 0);
        loop {
            let mut pushing = false;
            for (q, pending) in chunk.iter_mut().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                pushing = true;
                let take = BURST.min(pending.len());
                self.staging.extend(pending.drain(..take));
                self.wan[q].tx_burst(&mut self.staging);
                while let Some(b) = self.staging.pop() {
                    pending.push_front(b);
                }
            }
            let backlog: usize = self.wan.iter().map(|q| q.tx_pending()).sum();
            if !pushing {
                for q in 0..w {
                    let before = self.wan[q].tx_pending();
                    if before < BACKLOG {
                        continue;
                    }
                    let Some(cpu) = self.clocks[q].now_ns() else { continue };
                    let after = self.wan[q].tx_pending();
                    // Clock and ring read at one moment, or the sample is skipped.
                    if before - after > BURST {
                        continue;
                    }
                    first[q].get_or_insert((cpu, after));
                    last[q] = Some((cpu, after));
                }
            }
            if !pushing && backlog < BURST {
                self.poll();
            }
            let delivered = self.delivered - delivered0;
            if !pushing && delivered >= expect {
                break;
            }
            if (delivered, backlog) != last_mark {
                last_mark = (delivered, backlog);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                self.d.lost += expect.saturating_sub(delivered);
                break;
            }
            self.daemon_gone()?;
            if !pushing && backlog >= BURST {
                std::thread::sleep(PACE);
            }
        }
        let wall = t0.elapsed().as_nanos() as u64;
        let cpu1 = cpu::sum_ns(&self.clocks);
        let (Some(cpu0), Some(cpu1)) = (cpu0, cpu1) else {
            return Err(BenchError::Run("a worker thread exited during the measurement".into()));
        };
        let mut busy = (0u64, 0f64, 0f64);
        for q in 0..w {
            if let (Some((c0, a0)), Some((c1, a1)), Some(&(data, flood))) = (first[q], last[q], shares.get(q)) {
                let taken = a0.saturating_sub(a1) as f64;
                busy.0 += c1.saturating_sub(c0);
                busy.1 += taken * data;
                busy.2 += taken * flood;
            }
        }
        if counted {
            self.d.packets += self.delivered - delivered0;
            self.d.cpu_ns += cpu1.saturating_sub(cpu0);
            self.d.wall_ns += wall;
            self.d.busy_cpu_ns += busy.0;
            self.d.busy_data += busy.1;
            self.d.busy_flood += busy.2;
        }
        self.last_busy = busy;
        for q in chunk.iter_mut() {
            q.clear();
        }
        Ok((wall, cpu1.saturating_sub(cpu0)))
    }

    /// Receive and handle what both ports have for the generator; returns the frames seen.
    fn poll(&mut self) -> usize {
        let mut seen = 0;
        let mut rxv = std::mem::take(&mut self.rxv);
        for q in 0..self.inner.len() {
            loop {
                self.inner[q].rx_burst(&self.pool, &mut rxv, BURST);
                if rxv.is_empty() {
                    break;
                }
                seen += rxv.len();
                for b in rxv.drain(..) {
                    self.inner_in(&b);
                }
            }
        }
        let mut replies = Vec::new();
        for q in 0..self.wan.len() {
            loop {
                self.wan[q].rx_burst(&self.pool, &mut rxv, BURST);
                if rxv.is_empty() {
                    break;
                }
                seen += rxv.len();
                let cpu = self.clocks[q].now_ns();
                for b in rxv.drain(..) {
                    if let Some(r) = self.wan_frame(q, b, cpu) {
                        replies.push((q, r));
                    }
                }
            }
        }
        self.rxv = rxv;
        for (q, b) in replies {
            self.send_now(q, vec![b]);
        }
        seen
    }

    /// A decrypted packet from the inner port: an established peer's data or probe.
    fn inner_in(&mut self, b: &Buffer) {
        let d = b.data();
        let peer = d.get(28..32).map(|p| u32::from_be_bytes(p.try_into().unwrap_or_default()) as usize);
        let Some(p) = peer.and_then(|i| self.established.get_mut(i)) else {
            self.d.damaged += 1;
            return;
        };
        match matches(&p.template, d) {
            Some(u64::MAX) => p.confirmed = true,
            Some(seq) => {
                if seq != p.expect_seq {
                    self.d.damaged += 1;
                }
                p.expect_seq = seq + 1;
                self.delivered += 1;
            }
            None => self.d.damaged += 1,
        }
    }

    /// A frame from the concentrator's WAN port on queue `q` (`cpu`: that worker's CPU clock
    /// when the burst was taken). Returns a frame to send back (an ARP reply).
    fn wan_frame(&mut self, q: usize, mut b: Buffer, cpu: Option<u64>) -> Option<Buffer> {
        let d = b.data();
        if d.len() >= 42 && d[12..14] == [8, 6] {
            let target = Ipv4Addr::new(d[38], d[39], d[40], d[41]);
            let gw = Wan {
                mac: self.mac,
                v4: Some(WanAddr { addr: target, prefix: 16, gateway: None }),
                v6: None,
                vlan: None,
            };
            let len = gw.arp_reply_in_place(b.data_mut())?;
            b.truncate(len);
            return Some(b);
        }
        if d.len() < 42 + 4 || d[12..14] != [8, 0] || d[14] != 0x45 || d[23] != 17 {
            return None;
        }
        let dst = Ipv4Addr::new(d[30], d[31], d[32], d[33]);
        let udp_len = usize::from(u16::from_be_bytes([d[38], d[39]]));
        let msg = d.get(42..34 + udp_len)?;
        if msg.is_empty() {
            return None;
        }
        let (role, i) = role_of(dst)?;
        let ty = msg[0];
        let now_real = self.epoch.elapsed().as_nanos() as u64;
        match role {
            Role::Storm => match (ty, msg.len()) {
                (2, RESPONSE_LEN) => {
                    let receiver = u32::from_le_bytes(msg[8..12].try_into().ok()?);
                    if self.storm_open.remove(&(i, receiver)) {
                        self.storm_answered_per_q[q] += 1;
                        if cpu.is_some() {
                            self.storm_last_cpu[q] = cpu;
                        }
                    } else {
                        self.storm_bad += 1;
                    }
                }
                (3, COOKIE_REPLY_LEN) => self.storm_cookies += 1,
                _ => {}
            },
            Role::Flood | Role::Junk => match ty {
                2 => self.d.unexpected_responses += 1,
                3 => self.d.cookies_received[0] += 1,
                _ => {}
            },
            Role::Retry | Role::Established => {
                let src = SocketAddr::V4(SocketAddrV4::new(CONC_IP, PORT));
                let p = if role == Role::Retry { self.retry.get_mut(i)? } else { self.established.get_mut(i)? };
                let now = Timestamp::from_nanos(1 + now_real + p.skew_ns);
                if ty == 4 {
                    // A keepalive (the concentrator's confirmation or a passive keepalive).
                    return None;
                }
                let r = p.dev.receive_handshake(now, &mut OsRng, src, msg, false, &mut self.out);
                self.out.clear();
                let slot = if role == Role::Retry { 1 } else { 2 };
                match r {
                    Ok(HandshakeOutcome::Completed(_)) => {
                        p.completed = true;
                        if role == Role::Retry {
                            self.d.retry_handshakes += 1;
                        } else if self.rekeying {
                            self.d.rekeys_completed += 1;
                        }
                    }
                    Ok(HandshakeOutcome::CookieStored(_)) => {
                        self.d.cookies_received[slot] += 1;
                        p.owe_initiation = true;
                        p.has_cookie = true;
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

fn pool_empty() -> BenchError {
    BenchError::Run("generator pool exhausted".into())
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.0}", r)
    }
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "wgpmd bench --flood: {} established peers ({FLOOD_DATA_SIZE}-byte inner packets, WAN to inner), {} storm peers, {} cookie-retry peers, flood target {} valid-MAC1 initiations/s plus a quarter as much junk, {} s per data phase",
            o.peers, o.storm_peers, o.retry_peers, o.rate, o.seconds
        )?;
        writeln!(f, "machine: {}", self.machine)?;
        for r in &self.runs {
            let p = &r.plan;
            writeln!(
                f,
                "- {} worker(s) on core(s) {:?}, control on core {}, generator {}",
                p.workers.len(),
                p.workers,
                p.control,
                p.generator.map_or("unpinned".into(), |g| format!("on core {g}"))
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Responder handshakes (storm: real initiations prepared ahead, released through a window below the under-load depth; per core = per second of that worker's CPU time until its last response)")?;
        writeln!(f, "| workers | answered | of sent | per worker core /s | workers together /s | × 1 worker | wall /s | DH per handshake | cookies |")?;
        writeln!(f, "|---:|---:|---:|---|---:|---:|---:|---:|---:|")?;
        let one = self.runs.iter().find(|r| r.plan.workers.len() == 1).map(|r| r.storm.total());
        for r in &self.runs {
            let s = &r.storm;
            let per: Vec<String> = s.per_core().iter().map(|x| fmt_rate(*x)).collect();
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                r.plan.workers.len(),
                s.answered,
                s.sent,
                per.join(", "),
                fmt_rate(s.total()),
                one.filter(|x| *x > 0.0).map_or("—".into(), |o| format!("{:.2}", s.total() / o)),
                fmt_rate(s.wall()),
                if s.answered > 0 { s.counters.dh_operations as f64 / s.answered as f64 } else { 0.0 },
                s.cookies,
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Established peers' data, alone and under the flood (per core = per second of the workers' CPU time while they had a backlog; flood rate = valid-MAC1 initiations reaching the device per second of a worker's CPU time, i.e. as if each worker had a core of its own; the warm-up chunks, until the flood settles at its rate and the device is under load, not counted)")?;
        writeln!(f, "| workers | alone Mpps/core | flood Mpps/core | ratio | alone wall Mpps | flood wall Mpps | ratio | flood /s of worker CPU | flood /s wall | junk | cookies sent | DH | retries with MAC2 | retry handshakes | rekeys | lost | damaged |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.runs {
            let (a, x, z) = (&r.alone, &r.flood, &r.after);
            let ratio = |a: f64, b: f64| if a > 0.0 { format!("{:.2}", b / a) } else { "—".into() };
            writeln!(
                f,
                "| {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
                r.plan.workers.len(),
                a.pps_per_core() / 1e6,
                x.pps_per_core() / 1e6,
                ratio(a.pps_per_core(), x.pps_per_core()),
                a.pps_wall() / 1e6,
                x.pps_wall() / 1e6,
                ratio(a.pps_wall(), x.pps_wall()),
                fmt_rate(x.flood_rate(r.plan.workers.len())),
                fmt_rate(x.flood_rate_wall()),
                x.junk,
                x.counters.cookies_sent,
                x.counters.dh_operations,
                x.retries_with_mac2,
                x.retry_handshakes,
                x.rekeys_completed,
                o.peers,
                a.lost + x.lost + z.lost,
                a.damaged + x.damaged + z.damaged,
            )?;
        }
        writeln!(f)?;
        for r in &self.runs {
            let x = &r.flood;
            let drops: Vec<String> =
                x.counters.dropped.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            writeln!(
                f,
                "{} worker(s), under the flood: over whole drains (idle polling at the ends included) alone {:.3} and flood {:.3} Mpps/core; {} warm-up chunk(s), {:.0} ms, {} DH, before the rate settled with the device under load (not counted); counted chunks: hs_dropped {}; processed {}; cookie replies received by flood sources {}, retry peers {}, established peers {}; rekey initiations {}; data after the flood on the new sessions: {} of {} packets",
                r.plan.workers.len(),
                r.alone.pps_per_core_drain() / 1e6,
                x.pps_per_core_drain() / 1e6,
                x.warmup_chunks,
                x.warmup_ns as f64 / 1e6,
                x.warmup_dh,
                if drops.is_empty() { "none".into() } else { drops.join(" ") },
                x.counters.processed,
                x.cookies_received[0],
                x.cookies_received[1],
                x.cookies_received[2],
                x.rekey_initiations,
                r.after.packets,
                CHUNK,
            )?;
        }
        let broken = self.broken();
        writeln!(f)?;
        if broken.is_empty() {
            writeln!(f, "invariants: every data packet delivered intact and in order, every storm initiation answered, every rekey completed")
        } else {
            writeln!(f, "BROKEN: {}", broken.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_back_to_roles() {
        for role in [Role::Established, Role::Storm, Role::Retry, Role::Flood, Role::Junk] {
            for i in [0, 1, 1000, 64_999] {
                assert_eq!(role_of(*addr(role, i).ip()), Some((role, i)));
            }
        }
        assert_eq!(role_of(CONC_IP), None);
        assert_eq!(role_of(GATEWAY), None);
    }

    /// What `--quick` fails on: each broken invariant alone is reported; a good run is not.
    #[test]
    fn broken_invariants_are_reported() {
        let plan = CorePlan {
            cores: vec![0, 1],
            control_shares_core: false,
            control: 0,
            workers: vec![1],
            generator: Some(0),
        };
        let data = DataPhase { packets: 4096, ..DataPhase::default() };
        let good = FloodRun {
            plan,
            storm: Storm { sent: 10, answered: 10, ..Storm::default() },
            alone: data.clone(),
            flood: DataPhase {
                rekeys_completed: 4,
                retry_handshakes: 8,
                flood_initiations: 100,
                junk: 25,
                ..data.clone()
            },
            after: data,
        };
        assert!(good.broken(4, 8).is_empty(), "{:?}", good.broken(4, 8));
        type BreakIt = Box<dyn Fn(&mut FloodRun)>;
        let cases: Vec<(&str, BreakIt)> = vec![
            ("no storm handshake", Box::new(|r| (r.storm.answered, r.storm.sent) = (0, 0))),
            ("got no answer", Box::new(|r| r.storm.answered = 9)),
            ("answered nothing", Box::new(|r| r.storm.bad_responses = 1)),
            ("lost", Box::new(|r| r.alone.lost = 1)),
            ("damaged", Box::new(|r| r.flood.damaged = 1)),
            ("lost", Box::new(|r| r.after.lost = 1)),
            ("responses to junk", Box::new(|r| r.flood.unexpected_responses = 1)),
            ("rekey", Box::new(|r| r.flood.rekeys_completed = 3)),
            ("retry peers", Box::new(|r| r.flood.retry_handshakes = 7)),
            ("no flood", Box::new(|r| r.flood.junk = 0)),
        ];
        for (what, break_it) in cases {
            let mut r = good.clone();
            break_it(&mut r);
            let b = r.broken(4, 8);
            assert_eq!(b.len(), 1, "{what}: {b:?}");
            assert!(b[0].contains(what), "{what}: {b:?}");
        }
    }
}
