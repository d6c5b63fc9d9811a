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
//!    cookie reply within 8 chunks sends a new one (as its retransmission timer would). Each
//!    counted chunk is followed by a chunk of data alone, measured the same way ("paired"), so
//!    that the ratio can also be read against data measured moments apart rather than in a phase
//!    seconds earlier; and the counted chunks in which the device was not under load (fewer than
//!    half of their valid-MAC1 initiations answered with a cookie reply) are counted and
//!    reported. (A paired chunk can run a few percent slower than the phases of data alone
//!    around it: it is not quite free of the flood chunk before it, so its ratio can read high.)
//! 5. **Data after**: data alone again, measured as in 3, on the new sessions, all of which
//!    must arrive. The "bracketed" ratio sets the flood against the mean of the phases before
//!    and after it, which cancels a drift of the machine's speed over the run.
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

mod gen;
mod io;
mod phases;
mod report;

use gen::pool_empty;
pub use report::{Counters, DataPhase, FloodReport, FloodRun, Storm};

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
