//! The daemon: ports, pinned workers, the control core, and the state they share.
//!
//! ```text
//!  WAN port (af_packet, queue per worker)          inner port (tun, queue per worker)
//!        │ rx_burst                                        │ rx_burst
//!        ▼                                                 ▼
//!  worker: classify ─ ARP/ND/echo: reply in place     worker: route → encapsulate in place
//!        │ data: decapsulate in place → inner tx           │ no session: stage, HandshakeWanted
//!        │ handshake: screen (length, MAC1; under          ▼ outer header → WAN tx
//!        │   load MAC2, rate) → own queue → DH, a
//!        │   budget per poll → response/cookie → WAN tx
//!        │ events: pending bits + dirty list ───────┐
//!        ▼                                          ▼
//!   inner tx_burst                      control core: notifications (budget), initiations,
//!                                       timer wheel, UAPI, staged flush → tx jobs → workers
//! ```
//!
//! Every table is bounded and has a gauge in `wgpmd stats`: the wheel holds one entry per
//! peer (`wheel.rs`), notifications are per-peer bits that an overflow delays but never loses
//! (`notify.rs`), staged packets are bounded per peer and per buffer pool (`staging.rs`), the
//! neighbour table and its waiting frames have caps ([`crate::wan`]), and the workers' handshake
//! queues (`handshakes.rs`) and the transmit queue are fixed.
//!
//! The WAN side's frames (classification, replies, neighbours, outer headers) are the sans-IO
//! [`crate::wan`]; the workers apply it to their buffers.
//!
//! The state they share is split by who uses it (`Shared`): the read-mostly `DataPlane` the
//! workers read per packet (the `Device`, published left-right: readers load the published copy
//! once per iteration without a lock, and a UAPI `set` changes the other copy and publishes it
//! with one atomic swap, so no worker ever waits for a writer; the listen port, the WAN identity, the neighbour table, the clock), the `Handoff` between
//! workers and the control core (bounded queues, the notifications and the staged packets, the
//! workers' handshake queue depths), and the `ControlPlane` only the control side touches.

mod control;
pub mod cores;
pub mod exception;
mod handshakes;
mod metrics;
mod metrics_http;
mod notify;
mod rng;
mod staging;
mod stats;
pub mod wheel;
mod worker;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use nic_backends::{Buffer, Fanout, Port, PortOptions};

use wgpmd_proto::device::{Changes, Device, PeerId, Published};
use wgpmd_proto::messages::MAX_PEERS_PER_DEVICE;
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::uapi::InterfaceState;
use wgpmd_proto::wire::EthernetAddress;

use crate::wan::{NeighTiming, Neighbours, Wan, WanAddr};

pub use stats::{query_stats, WorkerCounters};

/// UDP port when the configuration names none (wg picks a random one; a concentrator's peers
/// need a known port, so we take WireGuard's customary one).
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// How workers wait for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Spin on the queues (dedicated cores; the production default).
    #[default]
    Busy,
    /// Back off with short sleeps after a run of empty polls (shared or small machines).
    Adaptive,
}

/// Everything `wgpmd run` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Interface name (UAPI socket `/var/run/wireguard/<name>.sock`).
    pub name: String,
    /// wg.conf(5) file applied at start.
    pub config: Option<PathBuf>,
    /// A configuration applied at start without a file (after `config`, if both are given;
    /// `wgpmd bench` and tests use it).
    pub inline_config: Option<wgpmd_proto::config::InterfaceConfig>,
    /// WAN port string (`af_packet:IFACE`, `mem:`...).
    pub wan_port: String,
    /// Inner port string (`tun:NAME`).
    pub inner_port: String,
    /// Our IPv4 address on the WAN, its prefix and gateway (`None`: an IPv6-only WAN).
    pub wan_v4: Option<WanAddr<Ipv4Addr>>,
    /// Our IPv6 address on the WAN, its prefix and gateway (`None`: an IPv4-only WAN).
    pub wan_v6: Option<WanAddr<Ipv6Addr>>,
    /// 802.1Q VLAN of the WAN (1..=4094): frames in and out carry this tag.
    pub vlan: Option<u16>,
    /// How long a neighbour entry is used before it is refreshed (default 30 s; tests shorten
    /// it with the hidden `--neigh-reachable-ms`).
    pub neigh_reachable: Option<std::time::Duration>,
    /// Most entries of the neighbour table (default [`crate::wan::DEFAULT_MAX_ENTRIES`]; tests
    /// change it with the hidden `--neigh-max-entries`).
    pub neigh_max_entries: Option<usize>,
    /// Cores, EAL-style.
    pub cores: Vec<usize>,
    /// Run the control plane on the first worker's core.
    pub control_shares_core: bool,
    /// Worker polling.
    pub poll: PollMode,
    /// How the WAN port spreads packets over workers.
    pub fanout: Fanout,
    /// Tunnel MTU (inner).
    pub mtu: usize,
    /// Serve the UAPI (`/var/run/wireguard/<name>.sock`) and stats sockets, and tell systemd
    /// (`$NOTIFY_SOCKET`) when ready and when stopping.
    pub sockets: bool,
    /// The WAN exception path's port (`tap:NAME`): what wgpmd does not consume goes to the
    /// kernel there, and what the kernel sends there goes out of the WAN.
    pub exception: Option<String>,
    /// Frames per second to the exception port, over all workers.
    pub exception_rate: u64,
    /// Set (by SIGHUP) to re-apply `config` with `wg syncconf` semantics; `None`: no reload.
    pub reload: Option<Arc<AtomicBool>>,
    /// Once the ports are open: keep only the capabilities they need and set
    /// `PR_SET_NO_NEW_PRIVS` ([`crate::privs`]). The benchmark, in-process, does not.
    pub drop_privileges: bool,
    /// Serve the metrics endpoint (`--metrics`; only with `sockets`).
    pub metrics: Option<MetricsOptions>,
}

/// The metrics endpoint (`--metrics ADDR:PORT`, `--metrics-peers N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Where to listen (HTTP, `GET /metrics`).
    pub addr: SocketAddr,
    /// Per-peer series for at most this many peers (0: none).
    pub peers: usize,
}

/// Read and parse a wg.conf(5) file: the text is read into memory wiped when dropped (sized
/// from the file's length, so it is not reallocated while read), and wg(8)'s warning is logged
/// when the file is accessible to the world and holds a key.
pub fn load_config(path: &std::path::Path) -> Result<wgpmd_proto::config::InterfaceConfig, DaemonError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| DaemonError::ConfigIo { path: path.display().to_string(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let md = f.metadata().map_err(io)?;
    let mut text = zeroize::Zeroizing::new(String::with_capacity(md.len() as usize + 1));
    f.read_to_string(&mut text).map_err(io)?;
    if let Some(w) = crate::privs::world_accessible_warning(path, md.permissions().mode(), &text) {
        tracing::warn!("{w}");
    }
    crate::conf::parse(&text).map_err(|source| DaemonError::Config { path: path.display().to_string(), source })
}

/// The first panic of any thread since [`install_panic_hook`], as a log line.
static PANICKED: Mutex<Option<String>> = Mutex::new(None);

/// The panic supervisor of `wgpmd run`: a panic in any thread (a worker, the control core, the
/// UAPI or stats thread) is logged as an error naming the thread and the place, and the
/// control loop then stops the daemon, which exits non-zero with that message. (A panic on the
/// control core's own thread unwinds out of [`run`]: the process exits with status 101.)
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info.location().map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        let line = format!("thread '{thread}' panicked{at}: {msg}");
        tracing::error!("{line}: stopping the daemon");
        PANICKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(line);
        default(info);
    }));
}

/// The first panic recorded by the hook, if any thread panicked.
pub(crate) fn panicked() -> Option<String> {
    PANICKED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A WireGuard message the control core wants sent (the worker adds the outer headers).
pub(crate) struct TxJob {
    pub to: SocketAddr,
    pub buf: Buffer,
    pub tos: u8,
}

/// The monotonic clock the core sees, and its wall-clock anchor.
pub(crate) struct Clock {
    start: Instant,
    pub wall_at_start_ns: u64,
}

impl Clock {
    fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock { start: Instant::now(), wall_at_start_ns: wall }
    }
    /// Now, never zero (zero means "never" in timer atomics).
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(1 + self.start.elapsed().as_nanos() as u64)
    }
    /// Unix time (seconds, nanoseconds) of a monotonic timestamp.
    pub fn to_unix(&self, t: Timestamp) -> (u64, u32) {
        let ns = self.wall_at_start_ns + t.as_nanos().saturating_sub(1);
        (ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
    }
}

/// What the workers read per packet or per burst. Read-mostly: the control side writes only
/// the device (publishing a new copy of its tables, for UAPI `set`) and the listen port (after
/// a `set`); the
/// neighbour table changes when a next hop is learned or ages out. Aligned to a cache line so
/// that the queues' and counters' writes next to it in [`Shared`] never share a line with it.
#[repr(align(64))]
pub(crate) struct DataPlane {
    /// The WireGuard device: readers load the published copy once per iteration and never
    /// wait; configuration changes the writer's copy and publishes it (`Published`).
    pub device: Published,
    /// Our WireGuard UDP port (`ListenPort`), matched by `classify` and sent from.
    pub listen_port: AtomicU16,
    /// Our WAN identity: MAC, addresses per family, VLAN.
    pub wan: Wan,
    /// The WAN neighbour table and the frames waiting for a next hop.
    pub neigh: Neighbours<Buffer>,
    /// The monotonic clock (read once per poll iteration).
    pub clock: Clock,
    /// How the workers wait for packets.
    pub poll: PollMode,
}

/// The hand-off between the workers and the control core, every part bounded: transmit jobs in
/// a fixed queue, notifications as per-peer pending words (`notify.rs`: never lost), and the
/// packets staged for peers without a session (`staging.rs`: bounded per peer and per buffer
/// pool); and what the workers tell each other: their handshake queues' depths.
pub(crate) struct Handoff {
    /// Each worker's handshake queue depth (their sum is the under-load input).
    pub hs_load: handshakes::Load,
    /// Each worker's handshake queue capacity.
    pub hs_capacity: usize,
    /// Notifications from the workers' device calls.
    pub notes: notify::Notes,
    /// Messages the control core wants sent; any worker sends them.
    pub tx_jobs: ArrayQueue<TxJob>,
    /// Inner packets waiting for a peer's session.
    pub staging: staging::Staging,
    /// The exception path's queues, when there is one.
    pub exception: Option<exception::Queues>,
}

/// Transmit jobs waiting for a worker.
pub(crate) const TX_JOBS: usize = 8192;

impl Handoff {
    fn new(workers: usize, exception: Option<exception::Queues>) -> Self {
        Handoff {
            exception,
            hs_load: handshakes::Load::new(workers),
            hs_capacity: handshakes::queue_capacity(workers),
            notes: notify::Notes::new(MAX_PEERS_PER_DEVICE, notify::DIRTY_CAPACITY),
            tx_jobs: ArrayQueue::new(TX_JOBS),
            staging: staging::Staging::default(),
        }
    }

    /// After a configuration change is published (so no worker still reads a copy with the
    /// removed peers, and their ids are not yet reused): forget what was pending or staged for
    /// the peers that are gone, and make room for new peers' notifications.
    pub fn peers_changed(&self, changes: &Changes) {
        for &id in &changes.removed {
            self.notes.clear(id);
            drop(self.staging.take(id));
        }
        for &id in &changes.added {
            self.notes.ensure(id);
        }
    }
}

/// What the control side owns (the control core, the UAPI handler, the stats socket's thread);
/// the workers never read it.
pub(crate) struct ControlPlane {
    /// Interface name (socket paths, logs).
    pub name: String,
    /// `listen_port` and `fwmark` as UAPI reports them.
    pub iface: Mutex<InterfaceState>,
    /// The control core's counters.
    pub counters: stats::ControlCounters,
    /// The WAN port's extra counters (DPDK xstats), read by the stats socket's thread.
    pub wan_extra: Option<nic_backends::ExtraStats>,
    /// The WAN port's steering setter (`af_xdp`: what its XDP program sends to wgpmd), with
    /// what it was last set to.
    pub wan_steer: Option<(nic_backends::Steerer, Mutex<Option<nic_backends::Steering>>)>,
    /// The inner port's extra counters (vhost-user), read by the stats socket's thread.
    pub inner_extra: Option<nic_backends::ExtraStats>,
    /// The WAN port's link state as the control loop last saw it (`wan_link_up` in stats).
    pub wan_link_up: AtomicBool,
    /// Peers removed by configuration, for the control core to take off its wheel.
    pub removed: Mutex<Vec<PeerId>>,
}

/// Everything the workers and the control side share, by who uses it.
pub(crate) struct Shared {
    /// Read by the workers per packet.
    pub data: DataPlane,
    /// Queues between the workers and the control core.
    pub handoff: Handoff,
    /// Owned by the control side.
    pub control: ControlPlane,
    /// Each worker's published counters (written every 64 iterations, read by the stats
    /// socket).
    pub workers: Vec<WorkerCounters>,
    /// Set to stop every thread.
    stop: AtomicBool,
    /// The first fatal port fault (see `Queue::health`): the daemon stops and returns it.
    fatal: Mutex<Option<String>>,
}

impl Shared {
    /// Record a fatal fault (the first one wins) and stop every thread.
    pub fn fail(&self, msg: String) {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(msg);
        self.stop();
    }
    /// Stop every thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    /// Whether the threads should stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// The fault that stopped the daemon, if one did.
    fn take_fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Errors that stop the daemon from starting, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Core list problem.
    #[error(transparent)]
    Cores(#[from] cores::CoreError),
    /// A port would not open (the port error names the port string).
    #[error("{source}")]
    Port {
        /// The port string.
        spec: String,
        /// Why.
        #[source]
        source: nic_backends::PortError,
    },
    /// The WAN port has no MAC address (it must be an Ethernet port).
    #[error("port `{0}` has no MAC address: the WAN port must be an Ethernet port")]
    NoMac(String),
    /// The configuration file.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: wgpmd_proto::config::ConfigError,
    },
    /// Reading the configuration file.
    #[error("{path}: {source}")]
    ConfigIo {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Applying the configuration.
    #[error("applying the configuration: {0}")]
    Apply(wgpmd_proto::uapi::UapiError),
    /// The UAPI socket.
    #[error("UAPI socket: {0}")]
    Uapi(crate::uapi_server::ServerError),
    /// The stats socket.
    #[error("stats socket: {0}")]
    Stats(std::io::Error),
    /// The metrics endpoint's address.
    #[error("metrics endpoint {0}: {1}")]
    Metrics(SocketAddr, std::io::Error),
    /// Another process serves this interface name.
    #[error("{0} is in use by a running process (another wgpmd or wireguard-go with this interface name)")]
    InUse(String),
    /// A port has fewer queues than workers.
    #[error("port `{spec}` has no queue {queue}")]
    NoQueue {
        /// The port string.
        spec: String,
        /// The queue.
        queue: usize,
    },
    /// A port failed while running (its queue reported a fault), or a thread panicked: the
    /// daemon stopped.
    #[error("stopped: {0}")]
    PortFault(String),
    /// Buffer pool.
    #[error("buffer pool: {0}")]
    Pool(nic_backends::PoolError),
    /// Dropping privileges after setup.
    #[error("{0}")]
    Privileges(String),
    /// A worker thread could not be started.
    #[error("starting a worker thread: {0}")]
    Thread(std::io::Error),
    /// The OS gave no random seed for a core's generator.
    #[error("seeding a random generator from the OS: {0}")]
    Rng(rand_core::Error),
    /// The WAN port could not be told what to steer to wgpmd.
    #[error("port `{spec}`: setting the steering: {problem}")]
    Steering {
        /// The port string.
        spec: String,
        /// Why.
        problem: String,
    },
}

impl ControlPlane {
    /// Tell the WAN port (if it steers) our addresses and listen port; a no-op when they did
    /// not change since the last call.
    pub(crate) fn update_steering(&self, wan: &Wan, listen_port: u16) -> Result<(), String> {
        let Some((set, last)) = &self.wan_steer else { return Ok(()) };
        let s = nic_backends::Steering {
            v4: wan.v4.map(|a| a.addr),
            v6: wan.v6.map(|a| a.addr),
            udp_port: listen_port,
            vlan: wan.vlan,
        };
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(s) {
            return Ok(());
        }
        set(&s)?;
        *last = Some(s);
        Ok(())
    }
}

/// Run the daemon until SIGINT/SIGTERM (or `stop` is set), opening its ports by their strings.
pub fn run(cfg: DaemonConfig, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    // Refuse a name that a live daemon serves before touching its ports (its TUN has our name).
    let sock = std::path::Path::new(crate::uapi_server::SOCKET_DIR).join(format!("{}.sock", cfg.name));
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(DaemonError::InUse(sock.display().to_string()));
    }
    let layout = cores::layout(&cfg.cores, &cores::available(), cfg.control_shares_core)?;
    let nworkers = layout.workers.len();
    // The WAN keeps its own MTU; the inner port gets the tunnel MTU.
    let wan_opts = PortOptions { queues: nworkers, fanout: cfg.fanout, mtu: None, mac: None };
    let inner_opts = PortOptions { queues: nworkers, fanout: cfg.fanout, mtu: Some(cfg.mtu), mac: None };
    let wan_port = nic_backends::open(&cfg.wan_port, &wan_opts)
        .map_err(|source| DaemonError::Port { spec: cfg.wan_port.clone(), source })?;
    let inner_port = nic_backends::open(&cfg.inner_port, &inner_opts)
        .map_err(|source| DaemonError::Port { spec: cfg.inner_port.clone(), source })?;
    let exc_port = open_exception(&cfg, wan_port.as_ref())?;
    if cfg.drop_privileges {
        // Before any thread of ours exists: capabilities are per thread, new ones inherit.
        let mut keep = crate::privs::needed(&[&cfg.wan_port, &cfg.inner_port]);
        // The metrics endpoint is bound later, by the control loop: a port below 1024 needs this.
        if cfg.sockets && cfg.metrics.is_some_and(|m| m.addr.port() != 0 && m.addr.port() < 1024) {
            keep.insert(caps::Capability::CAP_NET_BIND_SERVICE);
        }
        let kept = crate::privs::drop_after_setup(&keep).map_err(DaemonError::Privileges)?;
        tracing::info!(
            "{}: capabilities kept after setup: {}; no_new_privs set",
            cfg.name,
            crate::privs::describe(&kept)
        );
    }
    run_observed(cfg, wan_port, inner_port, exc_port, stop, None)
}

/// Run the daemon on ports the caller opened (each with at least one queue per worker): the
/// benchmark and tests use `mem` pairs.
pub fn run_with_ports(
    cfg: DaemonConfig,
    wan_port: Box<dyn Port>,
    inner_port: Box<dyn Port>,
    stop: Arc<AtomicBool>,
) -> Result<(), DaemonError> {
    let exc_port = open_exception(&cfg, wan_port.as_ref())?;
    run_observed(cfg, wan_port, inner_port, exc_port, stop, None)
}

/// The exception path's port (`--exception`): a TAP with the WAN's MAC and MTU, one queue,
/// served by the control core. Opened with the other ports, before privileges are dropped.
fn open_exception(cfg: &DaemonConfig, wan_port: &dyn Port) -> Result<Option<Box<dyn Port>>, DaemonError> {
    let Some(spec) = &cfg.exception else { return Ok(None) };
    let mac = wan_port.info().mac.ok_or_else(|| DaemonError::NoMac(cfg.wan_port.clone()))?;
    let opts = PortOptions { queues: 1, fanout: cfg.fanout, mtu: Some(wan_port.info().mtu), mac: Some(mac) };
    let p = nic_backends::open(spec, &opts).map_err(|source| DaemonError::Port { spec: spec.clone(), source })?;
    if p.info().mac != Some(mac) {
        return Err(DaemonError::NoMac(format!("{spec} (the exception port must be an Ethernet port: tap:NAME)")));
    }
    Ok(Some(p))
}

/// One worker's handshake-stage counters, as the flood bench reads them from a running daemon.
#[derive(Debug, Clone, Default)]
pub(crate) struct HsSnapshot {
    pub processed: u64,
    pub dh_operations: u64,
    pub cookies_sent: u64,
    pub responses_sent: u64,
    /// `hs_dropped_*` by name.
    pub dropped: Vec<(&'static str, u64)>,
}

impl Shared {
    /// Worker `i`'s handshake counters as last published (every 64 poll iterations).
    pub(crate) fn hs_snapshot(&self, i: usize) -> HsSnapshot {
        let Some(w) = self.workers.get(i) else { return HsSnapshot::default() };
        let l = w.load();
        HsSnapshot {
            processed: l.hs.processed,
            dh_operations: l.device.dh_operations,
            cookies_sent: l.device.cookies_sent,
            responses_sent: l.device.responses_sent,
            dropped: handshakes::HsDrop::ALL.iter().map(|&r| (r.name(), l.hs.dropped[r as usize])).collect(),
        }
    }
}

/// [`run_with_ports`], handing the shared state to `probe` once it exists (the flood bench reads
/// the workers' counters through it).
pub(crate) fn run_observed(
    cfg: DaemonConfig,
    mut wan_port: Box<dyn Port>,
    mut inner_port: Box<dyn Port>,
    mut exc_port: Option<Box<dyn Port>>,
    stop: Arc<AtomicBool>,
    probe: Option<&std::sync::OnceLock<Arc<Shared>>>,
) -> Result<(), DaemonError> {
    let layout = cores::layout(&cfg.cores, &cores::available(), cfg.control_shares_core)?;
    let nworkers = layout.workers.len();
    let mac = wan_port.info().mac.ok_or_else(|| DaemonError::NoMac(cfg.wan_port.clone()))?;
    let mut rng = rand_core::OsRng;
    let clock = Clock::new();
    let mut dev = Device::new(&mut rng, clock.wall_at_start_ns);
    dev.set_mtu(cfg.mtu);
    let mut iface = InterfaceState { listen_port: DEFAULT_LISTEN_PORT, fwmark: 0 };
    let mut boot_out = wgpmd_proto::device::Output::with_capacity(64);
    if let Some(path) = &cfg.config {
        let parsed = load_config(path)?;
        wgpmd_proto::uapi::apply_config(&mut dev, &mut iface, &parsed, &mut rng, clock.now(), &mut boot_out)
            .map_err(DaemonError::Apply)?;
    }
    if let Some(parsed) = &cfg.inline_config {
        wgpmd_proto::uapi::apply_config(&mut dev, &mut iface, parsed, &mut rng, clock.now(), &mut boot_out)
            .map_err(DaemonError::Apply)?;
    }
    if iface.listen_port == 0 {
        // No ListenPort: wg would pick a random port; our peers need to know it, so we take
        // the customary one.
        iface.listen_port = DEFAULT_LISTEN_PORT;
    }
    let shared = Arc::new(Shared {
        data: DataPlane {
            device: Published::new(dev),
            listen_port: AtomicU16::new(iface.listen_port),
            wan: Wan { mac: EthernetAddress(mac), v4: cfg.wan_v4, v6: cfg.wan_v6, vlan: cfg.vlan },
            neigh: Neighbours::with_config(
                NeighTiming {
                    reachable_ns: cfg
                        .neigh_reachable
                        .map_or(NeighTiming::default().reachable_ns, |d| d.as_nanos() as u64),
                    ..NeighTiming::default()
                },
                cfg.neigh_max_entries.unwrap_or(crate::wan::DEFAULT_MAX_ENTRIES),
            ),
            clock,
            poll: cfg.poll,
        },
        handoff: Handoff::new(nworkers, exc_port.as_ref().map(|_| exception::Queues::new(cfg.exception_rate))),
        control: ControlPlane {
            name: cfg.name.clone(),
            iface: Mutex::new(iface),
            counters: stats::ControlCounters::default(),
            wan_extra: wan_port.extra_stats(),
            wan_steer: wan_port.steering().map(|s| (s, Mutex::new(None))),
            inner_extra: inner_port.extra_stats(),
            wan_link_up: AtomicBool::new(wan_port.link_up()),
            removed: Mutex::new(Vec::new()),
        },
        workers: (0..nworkers).map(|_| WorkerCounters::default()).collect(),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
    });
    for p in shared.data.device.load().peers() {
        shared.handoff.notes.ensure(p.id());
    }
    if let Some(p) = probe {
        let _ = p.set(shared.clone());
    }
    shared
        .control
        .update_steering(&shared.data.wan, shared.data.listen_port.load(Ordering::Relaxed))
        .map_err(|problem| DaemonError::Steering { spec: cfg.wan_port.clone(), problem })?;
    for e in boot_out.events.drain(..) {
        shared.handoff.notes.post(&e);
    }
    tracing::info!(
        "{}: WAN {} ({}{}{}), inner {}, {} worker(s) on cores {:?}, control on core {}, listening on UDP {}",
        cfg.name,
        cfg.wan_port,
        EthernetAddress(mac),
        cfg.wan_v4.map_or(String::new(), |a| format!(", {}/{}", a.addr, a.prefix)),
        cfg.wan_v6.map_or(String::new(), |a| format!(", {}/{}", a.addr, a.prefix)),
        cfg.inner_port,
        nworkers,
        layout.workers,
        layout.control,
        shared.data.listen_port.load(Ordering::Relaxed)
    );
    // Every worker's generator seeded before any worker starts.
    let stages = (0..nworkers)
        .map(|i| {
            let rng = rng::CoreRng::from_os(shared.data.clock.now()).map_err(DaemonError::Rng)?;
            Ok(handshakes::Stage::new(i, shared.handoff.hs_capacity, rng))
        })
        .collect::<Result<Vec<_>, DaemonError>>()?;
    let mut handles = Vec::new();
    // A failure part way (a pool whose memory cannot be had, a thread that cannot start) stops
    // the workers already running before the error is returned: exit 1 with the message.
    let started = (|| -> Result<(nic_backends::Pool, Option<exception::Tap>), DaemonError> {
        for ((i, &core), hs) in layout.workers.iter().enumerate().zip(stages) {
            let wan_q =
                wan_port.take_queue(i).ok_or_else(|| DaemonError::NoQueue { spec: cfg.wan_port.clone(), queue: i })?;
            let inner_q = inner_port
                .take_queue(i)
                .ok_or_else(|| DaemonError::NoQueue { spec: cfg.inner_port.clone(), queue: i })?;
            // The WAN port's own pool when it has one (VFIO DMA memory, DPDK mbufs): what the
            // worker reads from the inner port and seals is then sent without a copy.
            let pool = match wan_port.queue_pool(i) {
                Some(p) => p,
                None => nic_backends::Pool::new(&format!("w{i}"), 4096).map_err(DaemonError::Pool)?,
            };
            let sh = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("wgpmd-w{i}"))
                    .spawn(move || {
                        cores::pin(core);
                        worker::Worker::new(i, sh, wan_q, inner_q, pool, hs).run();
                    })
                    .map_err(DaemonError::Thread)?,
            );
        }
        let control_pool = nic_backends::Pool::new("ctl", 4096).map_err(DaemonError::Pool)?;
        let tap = match exc_port.as_mut() {
            Some(p) => {
                let spec = cfg.exception.clone().unwrap_or_default();
                let q = p.take_queue(0).ok_or(DaemonError::NoQueue { spec, queue: 0 })?;
                let pool = nic_backends::Pool::new("exc", 2 * exception::QUEUE).map_err(DaemonError::Pool)?;
                tracing::info!(
                    "{}: exception path {} (MAC {}), at most {} frames/s to the kernel",
                    cfg.name,
                    p.info().name,
                    EthernetAddress(mac),
                    cfg.exception_rate
                );
                Some(exception::Tap::new(q, pool))
            }
            None => None,
        };
        Ok((control_pool, tap))
    })();
    let (control_pool, tap) = match started {
        Ok(v) => v,
        Err(e) => {
            shared.stop();
            for h in handles {
                let _ = h.join();
            }
            return Err(e);
        }
    };
    let wan_link = || wan_port.link_up();
    let link = control::LinkWatch::new(&cfg.wan_port, &wan_link);
    let services = control::Services {
        sockets: cfg.sockets,
        metrics: cfg.metrics,
        reload: cfg.reload.clone().map(|flag| control::Reload { flag, path: cfg.config.clone() }),
    };
    let result = control::run(shared.clone(), layout.control, control_pool, stop, services, link, tap);
    shared.stop();
    for h in handles {
        let _ = h.join();
    }
    // Ports close here: the TUN interface disappears with its queues.
    drop(wan_port);
    drop(inner_port);
    drop(exc_port);
    if let Some(msg) = shared.take_fatal() {
        return Err(DaemonError::PortFault(msg));
    }
    result
}
