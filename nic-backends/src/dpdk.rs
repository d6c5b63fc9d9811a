//! `dpdk:PORT`: a DPDK ethdev port (a NIC bound to vfio-pci, or a vdev such as
//! `net_af_packet0`), through our `dpdk-sys` bindings to the system's DPDK (22.11).
//!
//! `PORT` is a port id (`dpdk:0`) or a device name resolved with
//! `rte_eth_dev_get_port_by_name` (`dpdk:0000:03:00.0`, `dpdk:net_af_packet0`).
//!
//! **EAL**: initialised once per process, explicitly, with [`init_eal`] before the first
//! `dpdk:` port opens (`wgpmd run` does it with the arguments after `--`); [`cleanup_eal`]
//! after every port and buffer is gone. Opening a `dpdk:` port without EAL is an error naming
//! this. Explicit rather than lazy-on-open: the EAL arguments are a process-wide decision of
//! the program (cores, memory, file prefix), not of a port string, and an EAL failure is then
//! reported as such, before any port is touched.
//!
//! **Zero copy**: each queue has its own mbuf pool whose data buffers are the slots of the
//! queue's [`Pool`] (see `sys::dpdk`): a received mbuf *is* a [`Buffer`], and a Buffer of that
//! pool is transmitted as its own mbuf. [`Port::queue_pool`] returns that pool, so a worker's
//! TUN reads land in mbufs. Buffers of other pools are copied into an mbuf on tx and counted
//! (`tx_copied`, see [`DpdkQueue::copy_stats`]).
//!
//! **Queues and RSS**: one rx/tx queue pair per worker. With more than one queue, RSS on the
//! IPv4/IPv6 UDP 4-tuple is enabled when the device offers it (`flow_type_rss_offloads`);
//! the vdevs on a test machine (af_packet, ring, null) offer none, and then each queue gets
//! what the PMD gives it (af_packet: one queue per socket in a fanout group; ring: what was
//! sent on that queue). `net_tap` claims IP/UDP/TCP hash types but hashes only through
//! rte_flow RSS rules (its BPF program), not through `rte_eth_dev_configure`, so it is not
//! asked for RSS: its queues get what the kernel's tun queue selection gives them.
//! [`DpdkPort::rss`] says which; `dpdk_rss_offloads` in the stats is what the device claims.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::port::{ExtraStats, Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::dpdk as sys;

/// mbufs (= buffers) per queue pool.
pub const MBUFS_PER_QUEUE: usize = 4096;
/// rx and tx descriptors asked for per queue (the device may adjust them).
pub const RING_DESC: u16 = 1024;
/// RSS hash functions asked for: IPv4, UDP over IPv4, IPv6, UDP over IPv6
/// (`RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_NONFRAG_IPV4_UDP | RTE_ETH_RSS_IPV6 | RTE_ETH_RSS_NONFRAG_IPV6_UDP`).
pub const RSS_UDP: u64 = (1 << 2) | (1 << 5) | (1 << 8) | (1 << 11);

/// Drivers that list hash types in `flow_type_rss_offloads` but do not hash on the
/// `rte_eth_dev_configure` RSS configuration (net_tap: only rte_flow RSS rules, via BPF).
const NO_CONFIGURE_RSS: &[&str] = &["net_tap"];

#[derive(Debug, PartialEq, Eq)]
enum Eal {
    Uninit,
    Ready,
    Failed(String),
    Cleaned,
}

static EAL: Mutex<Eal> = Mutex::new(Eal::Uninit);

/// Initialise DPDK's EAL with `args` (`args[0]` is the program name, as in `argv`). Once per
/// process: a second call is an error, also after a failed one (EAL cannot be retried).
pub fn init_eal(args: &[String]) -> Result<(), PortError> {
    let mut st = EAL.lock().unwrap_or_else(|e| e.into_inner());
    let err = |problem: String| PortError::Dpdk { spec: "EAL".into(), problem };
    match &*st {
        Eal::Uninit => {}
        Eal::Ready => return Err(err("EAL is already initialised (once per process)".into())),
        Eal::Failed(e) => return Err(err(format!("EAL initialisation failed before ({e}); it cannot be retried"))),
        Eal::Cleaned => return Err(err("EAL was cleaned up; it cannot be initialised again".into())),
    }
    match sys::eal_init(args) {
        Ok(_) => {
            *st = Eal::Ready;
            Ok(())
        }
        Err(e) => {
            *st = Eal::Failed(e.clone());
            Err(err(format!(
                "rte_eal_init failed: {e} (arguments: {}; see the EAL log above and docs/OPERATIONS.md)",
                args.get(1..).unwrap_or_default().join(" ")
            )))
        }
    }
}

/// True once [`init_eal`] succeeded (and until [`cleanup_eal`]).
pub fn eal_ready() -> bool {
    *EAL.lock().unwrap_or_else(|e| e.into_inner()) == Eal::Ready
}

/// Ports (also while opening) and mbuf arenas alive: all need EAL's memory and state.
static EAL_USERS: AtomicUsize = AtomicUsize::new(0);

/// Held by whatever needs EAL alive (a `DpdkPort` from the start of `open`, a pool's arena):
/// [`cleanup_eal`] refuses while one exists. A port counts itself before it checks that EAL is
/// ready, and `cleanup_eal` reads the count under the EAL lock, so one of them sees the other.
pub(crate) struct EalUser(());

impl EalUser {
    pub(crate) fn new() -> EalUser {
        EAL_USERS.fetch_add(1, Ordering::SeqCst);
        EalUser(())
    }
}

impl Drop for EalUser {
    fn drop(&mut self) {
        EAL_USERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `rte_eal_cleanup()`: call after every DPDK port is dropped and every buffer of their pools
/// freed (the mempools are then freed, so no hugepage files stay behind). No-op without EAL.
///
/// Returns false, and leaves EAL running, while a DPDK port or a pool (or one of its buffers)
/// still exists: EAL's cleanup unmaps the memory those buffers point into and frees the
/// mempools and queues they use, so cleaning up then would leave dangling buffers.
pub fn cleanup_eal() -> bool {
    let mut st = EAL.lock().unwrap_or_else(|e| e.into_inner());
    if *st != Eal::Ready {
        return true;
    }
    let users = EAL_USERS.load(Ordering::SeqCst);
    if users != 0 {
        eprintln!("dpdk: not cleaning up EAL: {users} DPDK port(s) or pool(s) still exist");
        return false;
    }
    sys::eal_cleanup();
    *st = Eal::Cleaned;
    true
}

/// A DPDK port; closes the device (stop, close) once it and every queue taken from it are
/// dropped, then frees its pools once their buffers are back.
pub struct DpdkPort {
    info: PortInfo,
    port_id: u16,
    driver: String,
    rss: bool,
    /// `flow_type_rss_offloads` as the device reports it.
    rss_offloads: u64,
    pools: Vec<Pool>,
    queues: Vec<Option<DpdkQueue>>,
    dev: Arc<Device>,
}

/// The started device, shared by the port and every queue taken from it: stopped and closed
/// when the last of them is gone. A queue may still be polled on a worker thread after the
/// port was dropped; closing the device under it would free the queue structures the burst
/// functions use, and a later vdev could reuse the port id.
struct Device {
    port_id: u16,
    started: std::sync::atomic::AtomicBool,
    /// Keep the mempools alive until after rte_eth_dev_close (dropped after `Drop::drop`).
    arenas: Mutex<Vec<Arc<sys::Arena>>>,
    /// Last: EAL stays up until the port is closed and its arenas dropped.
    _eal: EalUser,
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every queue is gone (each holds an Arc to this): nobody polls; the device returns the
        // mbufs of its rings to the pools on close. The arenas are dropped after this.
        sys::stop_close(self.port_id, *self.started.get_mut());
    }
}

/// One rx/tx queue pair of a [`DpdkPort`].
pub struct DpdkQueue {
    b: sys::Bursts,
    /// The device stays open while this queue exists.
    _dev: Arc<Device>,
    stats: QueueStats,
    copies: sys::CopyStats,
}

impl DpdkPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<DpdkPort, PortError> {
        let err = |problem: String| PortError::Dpdk { spec: spec.to_string(), problem };
        let eal = EalUser::new();
        if !eal_ready() {
            return Err(err("DPDK's EAL is not initialised: call nic_backends::dpdk::init_eal first (`wgpmd run` does, with the EAL arguments after `--`)".into()));
        }
        if sys::port_count() == 0 {
            return Err(err("no DPDK ports found: bind a NIC to vfio-pci (dpdk-devbind.py) or give a virtual device after `--`, e.g. --vdev=net_af_packet0,iface=eth1 (docs/OPERATIONS.md)".into()));
        }
        let port_id = match name.parse::<u16>() {
            Ok(id) if sys::port_is_valid(id) => id,
            Ok(id) => {
                return Err(err(format!(
                    "no DPDK port {id} ({} port(s) available, numbered from 0)",
                    sys::port_count()
                )))
            }
            Err(_) => sys::port_by_name(name).ok_or_else(|| {
                err(format!(
                    "no DPDK port named `{name}` (known: {}); a PCI address must be bound to a DPDK driver, a vdev given with --vdev",
                    (0..64u16).filter(|&i| sys::port_is_valid(i)).map(sys::port_name).collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        let info = sys::dev_info(port_id).map_err(|e| err(format!("rte_eth_dev_info_get: {e}")))?;
        let nq = opts.queues;
        if nq > usize::from(info.max_rx_queues.min(info.max_tx_queues)) {
            return Err(err(format!(
                "{} queue(s) asked (one per worker), the device ({}) has at most {} rx and {} tx",
                nq, info.driver, info.max_rx_queues, info.max_tx_queues
            )));
        }
        // net_tap: RSS only via rte_flow rules (module docs); asking for it here would report
        // RSS that does not happen.
        let rss_hf =
            if nq > 1 && !NO_CONFIGURE_RSS.contains(&info.driver.as_str()) { info.rss_offloads & RSS_UDP } else { 0 };
        sys::configure(port_id, nq as u16, rss_hf).map_err(|e| err(format!("rte_eth_dev_configure: {e}")))?;
        let (rxd, txd) = sys::adjust_desc(port_id, RING_DESC, RING_DESC);
        let socket = sys::socket_id(port_id);
        let mut port = DpdkPort {
            info: PortInfo { name: sys::port_name(port_id), mac: sys::mac(port_id), mtu: 1500, kind: "dpdk" },
            port_id,
            driver: info.driver.clone(),
            rss: rss_hf != 0,
            rss_offloads: info.rss_offloads,
            pools: Vec::new(),
            queues: Vec::new(),
            dev: Arc::new(Device { port_id, started: Default::default(), arenas: Mutex::new(Vec::new()), _eal: eal }),
        };
        for q in 0..nq {
            let pname = format!("wgpmd_p{port_id}_q{q}");
            let (pool, arena) = sys::create_pool(&pname, MBUFS_PER_QUEUE, socket).map_err(|e| {
                err(format!(
                    "queue {q}: {e}. Give EAL more memory: -m MB (with --no-huge), or hugepages (echo N > /proc/sys/vm/nr_hugepages and mount hugetlbfs on /dev/hugepages); with hugepages in IOVA-PA mode each queue needs {} MiB of physically contiguous memory: use --iova-mode=va (vfio-pci with an IOMMU, vdevs) or 1 GiB pages",
                    (MBUFS_PER_QUEUE * crate::BUF_SIZE) >> 20
                ))
            })?;
            port.pools.push(pool.clone());
            port.dev.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&arena));
            sys::queue_setup(port_id, q as u16, rxd, txd, socket, &arena).map_err(|e| {
                let hint = if info.driver.contains("af_packet") {
                    " (net_af_packet: add framesz=1952,blocksz=249856 to its --vdev: a frame must fit the 1920 bytes an mbuf holds after the 128-byte headroom, and frames must tile a block)"
                } else {
                    ""
                };
                err(format!("{e}{hint}"))
            })?;
            port.queues.push(Some(DpdkQueue {
                b: sys::Bursts::new(port_id, q as u16, pool, arena),
                _dev: Arc::clone(&port.dev),
                stats: QueueStats::default(),
                copies: sys::CopyStats::default(),
            }));
        }
        sys::start(port_id).map_err(|e| err(format!("rte_eth_dev_start: {e}")))?;
        port.dev.started.store(true, Ordering::Relaxed);
        if let Some(m) = sys::mtu(port_id) {
            port.info.mtu = usize::from(m);
        }
        Ok(port)
    }

    /// Open `dpdk:NAME` as its concrete type (`NAME`: port id or device name).
    pub fn new(name: &str, opts: &PortOptions) -> Result<DpdkPort, PortError> {
        DpdkPort::open(&format!("dpdk:{name}"), name, opts)
    }

    /// DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.port_id
    }
    /// The PMD's name (`net_af_packet`, `net_ring`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }
    /// Whether RSS (UDP 4-tuple) spreads received packets over the queues.
    pub fn rss(&self) -> bool {
        self.rss
    }
    /// Take queue `q` as its concrete type (benchmarks, tests).
    pub fn take_dpdk_queue(&mut self, q: usize) -> Option<DpdkQueue> {
        self.queues.get_mut(q)?.take()
    }
}

impl Port for DpdkPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        self.take_dpdk_queue(q).map(|q| Box::new(q) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        sys::link_up(self.port_id)
    }
    fn queue_pool(&self, q: usize) -> Option<Pool> {
        self.pools.get(q).cloned()
    }
    fn extra_stats(&self) -> Option<ExtraStats> {
        let id = self.port_id;
        let rss = self.rss;
        let rss_offloads = self.rss_offloads;
        Some(Arc::new(move || {
            if !eal_ready() {
                return Vec::new(); // EAL already cleaned up (the daemon is stopping)
            }
            let mut v: Vec<(String, u64)> =
                sys::xstats(id).into_iter().map(|(k, v)| (format!("dpdk_{k}"), v)).collect();
            v.push(("dpdk_link_up".into(), u64::from(sys::link_up(id))));
            v.push(("dpdk_rss".into(), u64::from(rss)));
            v.push(("dpdk_rss_offloads".into(), rss_offloads));
            v
        }))
    }
}

impl DpdkQueue {
    /// Zero-copy path counters: buffers from other pools copied into an mbuf before tx, and
    /// received mbufs dropped because they were chained (multi-segment) or foreign.
    pub fn copy_stats(&self) -> (u64, u64) {
        (self.copies.tx_copied, self.copies.rx_multiseg)
    }
    /// This queue's pool (its mbufs).
    pub fn pool(&self) -> &Pool {
        &self.b.pool
    }
    /// rx_burst then tx_burst of the same raw mbufs, no Buffer conversion (the benchmark's
    /// baseline): (received, sent).
    pub fn raw_echo(&mut self) -> (usize, usize) {
        self.b.raw_loop()
    }
    /// The lcore id of the calling thread after it registered with EAL (u32::MAX: none).
    pub fn lcore_id() -> u32 {
        sys::ensure_registered();
        sys::lcore_id()
    }
}

impl Queue for DpdkQueue {
    fn rx_burst(&mut self, _pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        self.b.rx(out, max, &mut self.stats, &mut self.copies)
    }
    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        self.b.tx(bufs, &mut self.stats, &mut self.copies)
    }
    fn stats(&self) -> QueueStats {
        let mut s = self.stats;
        s.tx_copied = self.copies.tx_copied;
        s
    }
}

/// Per-packet cost of the backend next to raw `rte_eth_rx_burst`/`rte_eth_tx_burst`, measured in
/// one run on one loopback queue (`net_ring`: what is sent is received back as the same mbuf).
#[derive(Debug, Clone, Copy)]
pub struct BurstBench {
    /// Packets kept circulating.
    pub in_flight: usize,
    /// Raw loop: packets moved (each one rx + tx) and seconds.
    pub raw_packets: u64,
    /// Seconds of the raw loop.
    pub raw_secs: f64,
    /// Backend loop (`Queue::rx_burst` into Buffers, `Queue::tx_burst` of the same Buffers).
    pub backend_packets: u64,
    /// Seconds of the backend loop.
    pub backend_secs: f64,
}

impl BurstBench {
    /// ns per packet (rx + tx) of the raw loop.
    pub fn raw_ns(&self) -> f64 {
        self.raw_secs * 1e9 / self.raw_packets.max(1) as f64
    }
    /// ns per packet (rx + tx) through the backend.
    pub fn backend_ns(&self) -> f64 {
        self.backend_secs * 1e9 / self.backend_packets.max(1) as f64
    }
}

impl std::fmt::Display for BurstBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "dpdk burst loop on net_ring, {} packets of 64 bytes in flight, rx+tx per packet:",
            self.in_flight
        )?;
        writeln!(
            f,
            "  raw rte_eth_rx_burst/tx_burst : {:7.1} ns/packet ({:.2} Mpps, {} packets)",
            self.raw_ns(),
            1e3 / self.raw_ns(),
            self.raw_packets
        )?;
        writeln!(
            f,
            "  wgpmd dpdk backend (Buffers)  : {:7.1} ns/packet ({:.2} Mpps, {} packets)",
            self.backend_ns(),
            1e3 / self.backend_ns(),
            self.backend_packets
        )?;
        writeln!(
            f,
            "  backend adds {:.1} ns/packet (x{:.2})",
            self.backend_ns() - self.raw_ns(),
            self.backend_ns() / self.raw_ns()
        )
    }
}

/// Run [`BurstBench`] on `port` (a `net_ring` vdev; EAL initialised), `seconds` per loop.
/// Fails if a loop loses packets (every packet must keep circulating).
pub fn bench_ring(port: &str, in_flight: usize, seconds: f64) -> Result<BurstBench, PortError> {
    let err = |problem: String| PortError::Dpdk { spec: format!("dpdk:{port}"), problem };
    let mut p = DpdkPort::new(port, &PortOptions::default())?;
    if !p.driver().contains("ring") {
        return Err(err(format!("the benchmark needs a net_ring loopback port, this is {}", p.driver())));
    }
    let mut q = p.take_dpdk_queue(0).ok_or_else(|| err("no queue 0".into()))?;
    let pool = q.pool().clone();
    let scratch = Pool::new("bench-scratch", 1).map_err(|e| err(e.to_string()))?;
    let fill = |q: &mut DpdkQueue| -> Result<(), PortError> {
        let mut v = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let mut b = pool.alloc().ok_or_else(|| err("pool exhausted".into()))?;
            b.append(64).map_err(|e| err(e.to_string()))?.fill(0x42);
            v.push(b);
        }
        if q.tx_burst(&mut v) != in_flight {
            return Err(err("the ring did not take the packets".into()));
        }
        Ok(())
    };
    let drain = |q: &mut DpdkQueue| {
        let mut out = Vec::new();
        while q.rx_burst(&scratch, &mut out, 64) > 0 {}
        out.len()
    };
    let dur = std::time::Duration::from_secs_f64(seconds);

    // Raw: the same mbufs go round through rx_burst/tx_burst, no Buffer in between.
    fill(&mut q)?;
    let (mut raw_packets, t0) = (0u64, std::time::Instant::now());
    while t0.elapsed() < dur {
        for _ in 0..64 {
            let (r, s) = q.raw_echo();
            if s != r {
                return Err(err(format!("raw loop: {r} received, {s} sent")));
            }
            raw_packets += r as u64;
        }
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    if drain(&mut q) != in_flight {
        return Err(err("raw loop lost packets".into()));
    }

    // Backend: mbufs become Buffers on rx and go back as their mbufs on tx.
    fill(&mut q)?;
    let mut v = Vec::with_capacity(64);
    let (mut backend_packets, t0) = (0u64, std::time::Instant::now());
    while t0.elapsed() < dur {
        for _ in 0..64 {
            let r = q.rx_burst(&scratch, &mut v, 64);
            let s = q.tx_burst(&mut v);
            if s != r || !v.is_empty() {
                return Err(err(format!("backend loop: {r} received, {s} sent")));
            }
            backend_packets += r as u64;
        }
    }
    let backend_secs = t0.elapsed().as_secs_f64();
    if drain(&mut q) != in_flight || q.copy_stats().0 != 0 {
        return Err(err("backend loop lost packets or copied".into()));
    }
    drop(q);
    drop(p);
    Ok(BurstBench { in_flight, raw_packets, raw_secs, backend_packets, backend_secs })
}
