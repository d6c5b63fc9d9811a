//! `wgpmd bench`: the full worker pipeline over `mem` ports, driven by a built-in traffic
//! generator, next to raw AEAD and boringtun measured in the same run.
//!
//! For each packet size the bench
//! 1. times the references on one core ([`mod@reference`]): ring ChaCha20-Poly1305 seal and open,
//!    libipsec-mb's (feature `bench-ipsec-mb`, x86-64), our multi-lane AEAD alone, boringtun
//!    0.7.1 `encapsulate` and `decapsulate` (feature `bench-boringtun`);
//! 2. starts a concentrator exactly as `wgpmd run` does ([`crate::daemon::run_with_ports`]:
//!    workers, control core, busy polling), on two `mem` pairs (WAN and inner) instead of
//!    AF_PACKET and TUN, configured with N peers (one /32 allowed IP each);
//! 3. runs the generator (`gen`) on the other ends: N peers, each the far end of a real session
//!    installed on both sides without a handshake (so N can be a million; see `gen`), answering
//!    the concentrator's ARP requests, then measures rx (WAN → inner: decrypt), tx (inner →
//!    WAN: encrypt) and, if asked, both at once;
//! 4. stops the concentrator.
//!
//! Several peer counts (`--peers 16,1000000`) run in the same process one after the other for
//! each size, and the report puts each count's rate next to the first count's, with the
//! growth of the process's resident memory per peer once the peers and sessions are set up.
//!
//! Rates per core are packets per second of the workers' own CPU time
//! ([`cpu::ThreadClock`]): the machine may be shared and the generator competes for its cores,
//! so the wall clock alone would measure the neighbours.

pub mod cpu;
pub mod flood;
mod gen;
pub mod reference;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nic_backends::{mem, Port};
use rand_core::OsRng;

use crate::daemon::{cores, DaemonConfig, DaemonError, PollMode};
use crate::wan::WanAddr;
pub use gen::MIN_SIZE;
pub use reference::{IpsecMbRates, Rate, References};
use wgpmd_proto::config::{InterfaceConfig, PeerConfig};
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::messages::DEFAULT_TUNNEL_MTU;

/// Most peers per run (2^20; the device's own limit is higher).
pub const MAX_PEERS: usize = 1 << 20;
/// Longest measurement.
pub const MAX_SECONDS: f64 = 60.0;
/// Longest measuring per size and peer count (all directions): the sessions are installed
/// once and must not reach REKEY_AFTER_TIME (120 s), setup and warm-ups included.
pub const MAX_SECONDS_PER_SIZE: f64 = 60.0;

/// Which way packets cross the concentrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// WAN → inner: the workers decrypt.
    Rx,
    /// Inner → WAN: the workers encrypt.
    Tx,
    /// Both at once: each chunk is half rx, half tx, released together.
    Duplex,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Simulated peers: one concentrator per count and size, in this order.
    pub peers: Vec<usize>,
    /// Inner packet sizes in bytes (IPv4 packet length, what the tunnel carries).
    pub sizes: Vec<usize>,
    /// Timed seconds per measurement (each direction, each reference).
    pub seconds: f64,
    /// Concentrator workers.
    pub workers: usize,
    /// Directions to measure, in order.
    pub directions: Vec<Direction>,
    /// Decrypt and compare every n-th tx frame (every rx packet is compared).
    pub verify_every: u64,
    /// Time the references (raw AEAD, boringtun).
    pub references: bool,
}

impl BenchOptions {
    /// The defaults of `wgpmd bench`: 16 peers, 64/512/1420 bytes, 3 s, one worker.
    pub fn full() -> Self {
        BenchOptions {
            peers: vec![16],
            sizes: vec![64, 512, 1420],
            seconds: 3.0,
            workers: 1,
            directions: vec![Direction::Rx, Direction::Tx],
            verify_every: 64,
            references: true,
        }
    }
    /// `wgpmd bench --quick`: 4 peers, 0.5 s per measurement.
    pub fn quick() -> Self {
        BenchOptions { peers: vec![4], seconds: 0.5, ..Self::full() }
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |s: String| Err(BenchError::Options(s));
        if self.peers.is_empty() {
            return bad("--peers: at least one count".into());
        }
        if let Some(n) = self.peers.iter().find(|n| !(1..=MAX_PEERS).contains(n)) {
            return bad(format!("--peers {n}: 1 to {MAX_PEERS}"));
        }
        if self.sizes.is_empty() {
            return bad("--sizes: at least one size".into());
        }
        if let Some(s) = self.sizes.iter().find(|s| !(MIN_SIZE..=DEFAULT_TUNNEL_MTU).contains(s)) {
            return bad(format!(
                "--sizes: {s} is not an inner packet size of {MIN_SIZE} to {DEFAULT_TUNNEL_MTU} bytes"
            ));
        }
        if !(self.seconds > 0.0 && self.seconds <= MAX_SECONDS) {
            return bad(format!("--seconds {}: more than 0, at most {MAX_SECONDS}", self.seconds));
        }
        if self.workers == 0 {
            return bad("--workers: at least 1".into());
        }
        if self.directions.is_empty() {
            return bad("no direction to measure".into());
        }
        // One concentrator serves all directions of a size: its sessions (installed, not
        // renegotiated) must not reach REKEY_AFTER_TIME, 120 s, meanwhile.
        if self.seconds * self.directions.len() as f64 > MAX_SECONDS_PER_SIZE {
            return bad(format!(
                "--seconds {} × {} direction(s): at most {MAX_SECONDS_PER_SIZE} s per size",
                self.seconds,
                self.directions.len()
            ));
        }
        Ok(())
    }
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The concentrator did not start or failed.
    #[error("concentrator: {0}")]
    Daemon(#[from] DaemonError),
    /// The run went wrong (setup, a stalled worker, ...).
    #[error("{0}")]
    Run(String),
}

/// One pipeline measurement (one size, one direction), summed over its chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurement {
    /// Packets the generator released into the concentrator.
    pub sent: u64,
    /// Packets that came out the other side (counted once each).
    pub packets: u64,
    /// Packets that never came out.
    pub lost: u64,
    /// Delivered packets checked intact (rx: all of them, byte for byte; tx: every
    /// `verify_every`-th, decrypted by its peer).
    pub verified: u64,
    /// Delivered packets that were not what was sent.
    pub verify_failed: u64,
    /// Packets out of order within a peer (rx: sequence number; tx: WireGuard counter).
    pub out_of_order: u64,
    /// Keepalives from the concentrator (expected only after 10 s of receiving without
    /// sending).
    pub keepalives: u64,
    /// Any other frame (ARP requests are answered and not counted here).
    pub other_frames: u64,
    /// Generator control frames (ARP replies) the WAN ring refused.
    pub control_dropped: u64,
    /// Chunks measured.
    pub chunks: u32,
    /// Packets the workers took from their input rings while they had a backlog.
    pub busy_packets: u64,
    /// The workers' CPU time over those stretches (summed over workers).
    pub busy_cpu_ns: u64,
    /// The wall time of those stretches (summed over workers).
    pub busy_wall_ns: u64,
    /// CPU time of all workers while chunks drained (first push to last packet out).
    pub worker_cpu_ns: u64,
    /// Wall time while chunks drained (first push to last packet out).
    pub wall_ns: u64,
}

impl Measurement {
    /// Million packets per second of worker CPU time (per worker core), over the stretches
    /// when the workers had a backlog.
    pub fn mpps_per_core(&self) -> f64 {
        if self.busy_cpu_ns == 0 {
            return 0.0;
        }
        self.busy_packets as f64 * 1e3 / self.busy_cpu_ns as f64
    }
    /// Gbit/s of inner packets per worker core.
    pub fn gbps_per_core(&self, size: usize) -> f64 {
        self.mpps_per_core() * size as f64 * 8.0 / 1e3
    }
    /// Million packets per second of wall time while the workers had a backlog, all
    /// `workers` together (each worker's rate, summed).
    pub fn wall_mpps(&self, workers: usize) -> f64 {
        if self.busy_wall_ns == 0 {
            return 0.0;
        }
        self.busy_packets as f64 * 1e3 / self.busy_wall_ns as f64 * workers as f64
    }
    /// Share of those stretches the workers were on a CPU (1.0: never preempted).
    pub fn on_cpu(&self) -> f64 {
        if self.busy_wall_ns == 0 {
            return 0.0;
        }
        self.busy_cpu_ns as f64 / self.busy_wall_ns as f64
    }
}

/// Results for one packet size and peer count.
#[derive(Debug, Clone)]
pub struct SizeResult {
    /// Simulated peers.
    pub peers: usize,
    /// Inner packet size.
    pub size: usize,
    /// Seconds to configure the peers and install their sessions (both sides).
    pub setup_secs: f64,
    /// Resident memory of the whole bench process once set up (concentrator and generator
    /// state together).
    pub rss: u64,
    /// The references, if timed.
    pub references: Option<References>,
    /// WAN → inner.
    pub rx: Option<Measurement>,
    /// Inner → WAN.
    pub tx: Option<Measurement>,
    /// Both at once.
    pub duplex: Option<Measurement>,
}

impl SizeResult {
    /// The measurements taken, with their names in the report.
    pub fn measured(&self) -> impl Iterator<Item = (&'static str, &Measurement)> {
        [("rx", &self.rx), ("tx", &self.tx), ("rx+tx", &self.duplex)]
            .into_iter()
            .filter_map(|(d, m)| Some((d, m.as_ref()?)))
    }
}

/// The process's resident memory in bytes (`VmRSS`), 0 if unknown.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Where the threads ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// The concentrator's core list (as `wgpmd run -l`).
    pub cores: Vec<usize>,
    /// The control plane shares the first worker's core.
    pub control_shares_core: bool,
    /// The control plane's core.
    pub control: usize,
    /// The workers' cores.
    pub workers: Vec<usize>,
    /// The generator's (and the references') core, if pinned.
    pub generator: Option<usize>,
}

impl CorePlan {
    /// Workers on their own cores when there are enough; the control plane and the generator
    /// share the first available core (the control plane mostly sleeps).
    pub fn new(available: &[usize], workers: usize) -> Result<CorePlan, BenchError> {
        if workers > available.len() {
            return Err(BenchError::Options(format!(
                "--workers {workers}: this process may use {} core(s) ({available:?})",
                available.len()
            )));
        }
        let (cores, shares) = if available.len() > workers {
            (available[..=workers].to_vec(), false)
        } else {
            (available.to_vec(), true)
        };
        let layout = cores::layout(&cores, available, shares).map_err(DaemonError::from)?;
        let generator = (!shares).then_some(layout.control);
        Ok(CorePlan { cores, control_shares_core: shares, control: layout.control, workers: layout.workers, generator })
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was asked.
    pub options: BenchOptions,
    /// Where it ran.
    pub plan: CorePlan,
    /// CPU model and load at the start.
    pub machine: String,
    /// One entry per size.
    pub results: Vec<SizeResult>,
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {} CPU(s) online, load average {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.join(" ")
    )
}

/// Run a closure on a thread pinned to `core` (if any).
fn on_core<T: Send>(core: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("wgpmd-bench".into())
            .spawn_scoped(s, move || {
                if let Some(c) = core {
                    cores::pin(c);
                }
                f()
            })
            .expect("spawn bench thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Run the whole bench. Call it from a thread that may use every core the bench should use
/// (not one pinned to a single core): the concentrator checks its cores against that set.
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    opts.check()?;
    let plan = CorePlan::new(&cores::available(), opts.workers)?;
    let machine = machine();
    let secs = Duration::from_secs_f64(opts.seconds);
    let mut results = Vec::new();
    for &size in &opts.sizes {
        let references = opts.references.then(|| on_core(plan.generator, || reference::measure(size, secs / 2)));
        for &peers in &opts.peers {
            let (measured, setup) = pipeline(opts, peers, size, &plan)?;
            let mut r = SizeResult {
                peers,
                size,
                setup_secs: setup.secs,
                rss: setup.rss,
                references,
                rx: None,
                tx: None,
                duplex: None,
            };
            for (dir, m) in opts.directions.iter().zip(measured) {
                match dir {
                    Direction::Rx => r.rx = Some(m),
                    Direction::Tx => r.tx = Some(m),
                    Direction::Duplex => r.duplex = Some(m),
                }
            }
            results.push(r);
        }
    }
    Ok(Report { options: opts.clone(), plan, machine, results })
}

/// How a pipeline's setup went.
struct Setup {
    secs: f64,
    rss: u64,
}

/// One concentrator with `peers` peers, its generator, and the measurements of
/// `opts.directions`.
fn pipeline(
    opts: &BenchOptions,
    peers: usize,
    size: usize,
    plan: &CorePlan,
) -> Result<(Vec<Measurement>, Setup), BenchError> {
    let w = plan.workers.len();
    let t0 = std::time::Instant::now();
    let conc_key = PrivateKey::generate(&mut OsRng);
    let seeds: Vec<gen::PeerSeed> = (0..peers).map(|_| gen::PeerSeed::random()).collect();
    let config = InterfaceConfig {
        private_key: Some(conc_key.to_bytes()),
        listen_port: Some(gen::PORT),
        fwmark: None,
        peers: seeds
            .iter()
            .enumerate()
            .map(|(i, s)| PeerConfig {
                public_key: s.public_key,
                preshared_key: None,
                endpoint: Some(SocketAddr::V4(gen::endpoint(i))),
                persistent_keepalive: None,
                allowed_ips: vec![(IpAddr::V4(gen::inner_ip(i)), 32)],
            })
            .collect(),
    };
    let (wan_d, mut wan_g) = mem::pair("bench-wan", "bench-peers", w, gen::DEPTH);
    let (inner_d, mut inner_g) = mem::pair("bench-inner", "bench-host", w, gen::DEPTH);
    let probe = Arc::new(OnceLock::new());
    let setup = gen::Setup {
        wan: (0..w).filter_map(|q| wan_g.take_mem_queue(q)).collect(),
        inner: (0..w).filter_map(|q| inner_g.take_mem_queue(q)).collect(),
        mac: wan_g.info().mac.unwrap_or_default(),
        conc_mac: wan_d.info().mac.unwrap_or_default(),
        probe: probe.clone(),
        seeds,
        size,
        verify_every: opts.verify_every,
        daemon_done: Arc::new(AtomicBool::new(false)),
        tids_before: cpu::tids(),
    };
    let cfg = DaemonConfig {
        name: "bench".into(),
        config: None,
        inline_config: Some(config),
        wan_port: "mem:bench-wan".into(),
        inner_port: "mem:bench-inner".into(),
        wan_v4: Some(WanAddr { addr: gen::CONC_IP, prefix: 16, gateway: None }),
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
        exception: None,
        exception_rate: crate::daemon::exception::DEFAULT_RATE,
        reload: None,
        drop_privileges: false,
        metrics: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = setup.daemon_done.clone();
    let secs = Duration::from_secs_f64(opts.seconds);
    std::thread::scope(|s| {
        let daemon = {
            let stop = stop.clone();
            let probe = probe.clone();
            std::thread::Builder::new()
                .name("wgpmd-bench-daemon".into())
                .spawn_scoped(s, move || {
                    let r =
                        crate::daemon::run_observed(cfg, Box::new(wan_d), Box::new(inner_d), None, stop, Some(&probe));
                    done.store(true, Ordering::Relaxed);
                    r
                })
                .expect("spawn daemon thread")
        };
        let generated = on_core(plan.generator, || {
            let mut g = gen::Generator::new(setup)?;
            let setup = Setup { secs: t0.elapsed().as_secs_f64(), rss: rss() };
            g.run(&opts.directions, secs).map(|m| (m, setup))
        });
        stop.store(true, Ordering::Relaxed);
        let daemon = daemon.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        daemon?;
        generated
    })
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let p = &self.plan;
        let w = p.workers.len();
        let counts: Vec<String> = o.peers.iter().map(|n| n.to_string()).collect();
        writeln!(
            f,
            "wgpmd bench: {} peers, {w} worker(s) on core(s) {:?}, control on core {}{}, {} s per measurement",
            counts.join(", "),
            p.workers,
            p.control,
            match p.generator {
                Some(g) => format!(", generator and references on core {g}"),
                None => ", generator unpinned".into(),
            },
            o.seconds
        )?;
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(f, "measured while each worker had a backlog: per core = per second of its CPU time; wall = all workers, per second of wall time; on-CPU = CPU / wall time")?;
        // libipsec-mb's columns only when it was timed (feature `bench-ipsec-mb`): absent, not zero.
        let imb_arch = self.results.iter().find_map(|r| r.references.and_then(|x| x.ipsec_mb)).map(|i| i.arch);
        writeln!(f, "reference for rx: ring open, our multi-lane AEAD's open alone (bursts of 16), boringtun decapsulate; for tx: ring seal, multi-lane seal, boringtun encapsulate (one core each); rx+tx: half of each, at once")?;
        if let Some(arch) = imb_arch {
            writeln!(f, "libipsec-mb: its ChaCha20-Poly1305 open (rx) / seal (tx), one message at a time as ring's ({arch} code path); / fastest AEAD = per core / the higher of ring and libipsec-mb (the fastest one-message AEAD)")?;
        }
        writeln!(f, "peers: sessions installed without handshakes; packets visit every peer in a scattered order")?;
        writeln!(f)?;
        let imb = imb_arch.is_some();
        let mut header =
            vec!["peers", "size", "dir", "Mpps/core", "Gbit/s/core", "wall Mpps", "on-CPU", "ring AEAD Mpps"];
        header.extend(imb.then_some("ipsec-mb Mpps"));
        header.extend(["boringtun Mpps", "/ AEAD"]);
        header.extend(imb.then_some("/ fastest AEAD"));
        header.extend(["/ boringtun", "lanes AEAD Mpps", "/ lanes", "packets", "lost", "checked"]);
        writeln!(f, "| {} |", header.join(" | "))?;
        let align: Vec<&str> = header.iter().map(|h| if *h == "dir" { "---" } else { "---:" }).collect();
        writeln!(f, "|{}|", align.join("|"))?;
        for r in &self.results {
            for (dir, m) in r.measured() {
                // (ring, libipsec-mb, fastest one-message AEAD, boringtun, lanes)
                let (aead, ipsec, fastest, bt, lanes) = match (dir, &r.references) {
                    (_, None) | ("rx+tx", _) => (None, None, None, None, None),
                    ("rx", Some(x)) => (
                        Some(x.ring_open.mpps()),
                        x.ipsec_mb.map(|i| i.open.mpps()),
                        Some(x.fastest_open()),
                        x.boringtun_decap.map(|b| b.mpps()),
                        Some(x.lanes_open.mpps()),
                    ),
                    (_, Some(x)) => (
                        Some(x.ring_seal.mpps()),
                        x.ipsec_mb.map(|i| i.seal.mpps()),
                        Some(x.fastest_seal()),
                        x.boringtun_encap.map(|b| b.mpps()),
                        Some(x.lanes_seal.mpps()),
                    ),
                };
                let mpps = m.mpps_per_core();
                let mut cells = vec![
                    r.peers.to_string(),
                    r.size.to_string(),
                    dir.to_string(),
                    format!("{mpps:.3}"),
                    format!("{:.2}", m.gbps_per_core(r.size)),
                    format!("{:.3}", m.wall_mpps(w)),
                    format!("{:.2}", m.on_cpu()),
                    rate(aead),
                ];
                cells.extend(imb.then(|| rate(ipsec)));
                cells.extend([rate(bt), ratio(mpps, aead)]);
                cells.extend(imb.then(|| ratio(mpps, fastest)));
                cells.extend([
                    ratio(mpps, bt),
                    rate(lanes),
                    ratio(mpps, lanes),
                    m.packets.to_string(),
                    m.lost.to_string(),
                    if m.verify_failed > 0 { format!("{} BAD", m.verify_failed) } else { format!("{} ok", m.verified) },
                ]);
                writeln!(f, "| {} |", cells.join(" | "))?;
            }
        }
        writeln!(f)?;
        writeln!(f, "setup and memory: RSS of the whole bench process (concentrator and generator) once the peers and sessions are set up; per added peer = RSS over the first count's, same size, per peer more")?;
        writeln!(f)?;
        writeln!(f, "| peers | size | setup s | RSS MiB | bytes per added peer |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|")?;
        for r in &self.results {
            let base = self.results.iter().find(|b| b.size == r.size && b.peers == o.peers[0]);
            let per_peer = match base {
                Some(b) if r.peers > b.peers => {
                    format!("{:.0}", r.rss.saturating_sub(b.rss) as f64 / (r.peers - b.peers) as f64)
                }
                _ => "—".into(),
            };
            writeln!(
                f,
                "| {} | {} | {:.2} | {:.1} | {per_peer} |",
                r.peers,
                r.size,
                r.setup_secs,
                r.rss as f64 / (1 << 20) as f64,
            )?;
        }
        if let Some((&base, more)) = o.peers.split_first().filter(|(_, m)| !m.is_empty()) {
            writeln!(f)?;
            writeln!(f, "scale: Mpps/core at each peer count / at {base} peers, same run")?;
            writeln!(f)?;
            writeln!(
                f,
                "| size | dir | {base} peers | {} |",
                more.iter().map(|n| format!("{n} peers | ratio")).collect::<Vec<_>>().join(" | ")
            )?;
            writeln!(f, "|---:|---|---:|{}", "---:|---:|".repeat(more.len()))?;
            for &size in &o.sizes {
                let at = |n: usize| self.results.iter().find(|r| r.size == size && r.peers == n);
                let Some(b) = at(base) else { continue };
                for (dir, m) in b.measured() {
                    let b_mpps = m.mpps_per_core();
                    let cells: Vec<String> = more
                        .iter()
                        .map(|&n| {
                            let x = at(n)
                                .and_then(|r| r.measured().find(|(d, _)| *d == dir))
                                .map(|(_, m)| m.mpps_per_core());
                            format!("{} | {}", rate(x), x.map_or("—".into(), |x| ratio(x, Some(b_mpps))))
                        })
                        .collect();
                    writeln!(f, "| {size} | {dir} | {b_mpps:.3} | {} |", cells.join(" | "))?;
                }
            }
        }
        let bad: u64 = self
            .results
            .iter()
            .flat_map(|r| r.measured().map(|(_, m)| m.lost + m.verify_failed + m.out_of_order).collect::<Vec<_>>())
            .sum();
        writeln!(f)?;
        writeln!(f, "checked: rx packets byte for byte with their per-peer sequence; tx frames by receiver index, endpoint and WireGuard counter, 1 in {} opened and compared", o.verify_every.max(1))?;
        writeln!(f, "lost, damaged or out of order: {bad}")
    }
}
