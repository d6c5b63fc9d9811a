//! `af_xdp:IFACE`: an interface the kernel keeps, with the frames wgpmd consumes steered to
//! AF_XDP sockets by an XDP program and everything else left to the kernel.
//!
//! **Program** (`bpf/xdp_steer.c`, compiled by `build.rs` with clang, loaded with the aya
//! crate): steers to the socket of the receiving queue (an XSKMAP keyed by queue) the UDP
//! datagrams for wgpmd's listen port on its IPv4/IPv6 address, and the ARP replies / neighbour
//! advertisements answering a resolution wgpmd started (this port records the address when it
//! sends the request; see below). Everything else is `XDP_PASS`ed: the kernel keeps the
//! interface, its address (which wgpmd shares: `--address` is the kernel's own address), SSH,
//! routing and its own ARP/ND, including the answers to requests for the shared address. The
//! steering (addresses, port, VLAN) lives in a map set through [`Port::steering`]; until it is
//! set nothing is steered.
//!
//! **Attachment** is a BPF link (`BPF_LINK_CREATE`, Linux 5.9+), owned by the process's file
//! descriptor: it goes away when the port is dropped and when the process dies, even by
//! SIGKILL, so nothing stays attached. A second program (another wgpmd, `ip link set xdp`)
//! makes the attach fail with `EBUSY` and the port does not open.
//!
//! **Queues**: one AF_XDP socket per worker, bound to the interface's queues `0..N`; the
//! interface must have exactly N receive queues (`ethtool -L IFACE combined N`; a veth is
//! created with `numrxqueues N numtxqueues N`), since frames arriving on a queue without a
//! socket would go to the kernel (counted as `xdp_no_socket` in the port's extra counters).
//!
//! **Memory**: each queue has its own UMEM, the region of its own [`Pool`] (chunks of
//! `BUF_SIZE`, one per buffer slot), which is also the pool its worker allocates from
//! ([`Port::queue_pool`]). A slot whose address is in the fill or tx ring has its `Buffer`
//! parked in the queue's `lent` table, untouched; the `Buffer` comes back out when the kernel
//! returns the address in the rx ring (as a received frame, no copy) or the completion ring
//! (freed). Addresses the kernel returns that were not lent are counted as errors and never
//! trusted. A buffer from another pool is copied into one of the queue's own before tx
//! (`tx_copied`).
//!
//! **Modes**: the socket is bound without `XDP_COPY`/`XDP_ZEROCOPY`, so the kernel tries
//! zero-copy and falls back to copy mode when the driver has no zero-copy support (veth);
//! [`AfXdpPort::zerocopy`] says which. Need-wakeup is on: the tx ring is kicked with
//! `sendto` only when the kernel asks, the fill ring with `recvfrom` only when the driver asks
//! and nothing was received. Fill and completion rings are handled in bursts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;

use crate::buffer::{Buffer, Pool, BUF_SIZE};
use crate::error::PortError;
use crate::port::{ExtraStats, Port, PortInfo, PortOptions, Queue, QueueStats, Steerer, Steering};
use crate::sys::ioctl::{self, IfName};
use crate::sys::xsk::{RingSizes, XskSocket, XskStats};

/// The compiled XDP program.
/// (ELF parsing needs it 8-byte aligned.)
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_steer.o"));

/// Buffers (UMEM chunks) per queue: 16 MiB.
pub const UMEM_FRAMES: usize = 8192;
/// Ring sizes per queue.
const RINGS: RingSizes = RingSizes { fill: 2048, comp: 2048, rx: 2048, tx: 2048 };
/// Most descriptors moved per ring operation.
const BATCH: usize = 64;
/// Refill the fill ring once at least this many entries are free.
const REFILL_MIN: u32 = 32;

/// The loaded, attached program and its maps; dropped with the port and its last queue.
struct Program {
    ebpf: Ebpf,
}

impl Program {
    fn err(spec: &str, what: &str, e: impl std::fmt::Display) -> PortError {
        PortError::Xdp { spec: spec.to_string(), problem: format!("{what}: {e}") }
    }

    fn set_config(&mut self, s: &Steering) -> Result<(), String> {
        let mut v = [0u8; 32];
        if let Some(a) = s.v4 {
            v[0..4].copy_from_slice(&a.octets());
            v[22] = 1;
        }
        if let Some(a) = s.v6 {
            v[4..20].copy_from_slice(&a.octets());
            v[23] = 1;
        }
        v[20..22].copy_from_slice(&s.udp_port.to_be_bytes());
        v[24..26].copy_from_slice(&s.vlan.unwrap_or(0).to_ne_bytes());
        let map = self.ebpf.map_mut("wgpmd_cfg").ok_or("no wgpmd_cfg map")?;
        let mut arr: Array<_, [u8; 32]> = Array::try_from(map).map_err(|e| e.to_string())?;
        arr.set(0, v, 0).map_err(|e| format!("writing the steering map: {e}"))
    }

    fn want(&mut self, ip: IpAddr) {
        let key = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        if let Some(map) = self.ebpf.map_mut("wgpmd_wanted") {
            if let Ok(mut h) = BpfHashMap::<_, [u8; 16], u8>::try_from(map) {
                let _ = h.insert(key, 1, 0);
            }
        }
    }

    fn counters(&self) -> [u64; 3] {
        let mut c = [0u64; 3];
        if let Some(map) = self.ebpf.map("wgpmd_stats") {
            if let Ok(a) = PerCpuArray::<_, u64>::try_from(map) {
                for (i, v) in c.iter_mut().enumerate() {
                    if let Ok(vals) = a.get(&(i as u32), 0) {
                        *v = vals.iter().sum();
                    }
                }
            }
        }
        c
    }
}

/// An AF_XDP port.
pub struct AfXdpPort {
    info: PortInfo,
    name: IfName,
    ctl: OwnedFd,
    queues: Vec<Option<AfXdpQueue>>,
    pools: Vec<Pool>,
    program: Arc<Mutex<Program>>,
    zerocopy: bool,
}

/// One queue (AF_XDP socket + UMEM) of an [`AfXdpPort`].
pub struct AfXdpQueue {
    sock: XskSocket,
    pool: Pool,
    /// The `Buffer` of every slot whose address the kernel holds (fill or tx ring).
    lent: Vec<Option<Buffer>>,
    descs: Vec<(u64, u32)>,
    addrs: Vec<u64>,
    stats: QueueStats,
    /// Frames in the tx ring not yet completed.
    tx_pending: u32,
    kernel: std::cell::Cell<XskStats>,
    program: Arc<Mutex<Program>>,
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

fn rx_queue_count(name: &str) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{name}/queues")).ok()?;
    Some(dir.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count())
}

impl AfXdpPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<AfXdpPort, PortError> {
        let name = IfName::new(name).map_err(|reason| PortError::BadName { spec: spec.to_string(), reason })?;
        let os = |op| move |e| PortError::os(spec, op, e);
        let ctl = ioctl::control_socket().map_err(os("socket(AF_INET)"))?;
        let ifindex = ioctl::if_index(ctl.as_fd(), &name).map_err(os("SIOCGIFINDEX"))?;
        let (hw, mac) = ioctl::hw_addr(ctl.as_fd(), &name).map_err(os("SIOCGIFHWADDR"))?;
        if hw != libc::ARPHRD_ETHER {
            return Err(PortError::NotEthernet { spec: spec.to_string(), hw_type: hw });
        }
        if let Some(want) = opts.mtu {
            crate::port::check_mtu(spec, want, 18)?;
        }
        let mtu = ioctl::mtu(ctl.as_fd(), &name).map_err(os("SIOCGIFMTU"))?;
        // A received frame starts XDP_PACKET_HEADROOM (256) bytes into its chunk.
        if mtu + 18 > BUF_SIZE - 256 - crate::buffer::MIN_TAILROOM {
            return Err(PortError::BadOptions {
                spec: spec.to_string(),
                problem: format!(
                    "interface MTU {mtu} too large for AF_XDP chunks of {BUF_SIZE} bytes (at most {})",
                    BUF_SIZE - 256 - crate::buffer::MIN_TAILROOM - 18
                ),
            });
        }
        if let Some(n) = rx_queue_count(&name.as_str()) {
            if n != opts.queues {
                return Err(PortError::BadOptions {
                    spec: spec.to_string(),
                    problem: format!(
                        "the interface has {n} receive queue(s) and wgpmd runs {} worker(s): AF_XDP needs one socket \
                         per queue, so make them equal (ethtool -L {} combined {}, or give -l as many worker cores)",
                        opts.queues,
                        name.as_str(),
                        opts.queues
                    ),
                });
            }
        }

        let xdp = |what: &str, e: &dyn std::fmt::Display| Program::err(spec, what, e);
        let mut ebpf = Ebpf::load(PROGRAM).map_err(|e| xdp("loading the XDP object", &chain(&e)))?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut("wgpmd_steer")
                .ok_or_else(|| xdp("XDP object", &"no program wgpmd_steer"))?
                .try_into()
                .map_err(|e| xdp("XDP object", &e))?;
            prog.load().map_err(|e| {
                xdp("loading the XDP program into the kernel (needs CAP_BPF and CAP_NET_ADMIN, or root)", &chain(&e))
            })?;
            prog.attach_to_if_index(ifindex as u32, XdpFlags::default()).map_err(|e| {
                xdp(
                    "attaching XDP (another XDP program on the interface? `ip link show` says `xdp`; or a driver \
                     that refuses it at this MTU)",
                    &chain(&e),
                )
            })?;
        }
        let program = Arc::new(Mutex::new(Program { ebpf }));

        let mut queues = Vec::with_capacity(opts.queues);
        let mut pools = Vec::with_capacity(opts.queues);
        let mut zerocopy = true;
        for q in 0..opts.queues {
            let pool = Pool::new(&format!("xsk{q}"), UMEM_FRAMES)
                .map_err(|source| PortError::Pool { spec: spec.to_string(), source })?;
            let sock = XskSocket::open(&pool, ifindex as u32, q as u32, RINGS).map_err(|(step, e)| {
                if step == "bind(AF_XDP)" && e.raw_os_error() == Some(libc::EINVAL) {
                    xdp(&format!("binding an AF_XDP socket to queue {q}"), &format!("{e} (no such queue?)"))
                } else {
                    PortError::os(spec, step, e)
                }
            })?;
            zerocopy &= sock.zerocopy();
            {
                let mut p = program.lock().unwrap_or_else(|e| e.into_inner());
                let map = p.ebpf.map_mut("wgpmd_xsks").ok_or_else(|| xdp("XDP object", &"no map wgpmd_xsks"))?;
                let mut xsks = XskMap::try_from(map).map_err(|e| xdp("XSKMAP", &e))?;
                xsks.set(q as u32, sock.raw_fd(), 0).map_err(|e| xdp("adding the socket to the XSKMAP", &e))?;
            }
            let mut queue = AfXdpQueue {
                sock,
                pool: pool.clone(),
                lent: (0..UMEM_FRAMES).map(|_| None).collect(),
                descs: vec![(0, 0); BATCH],
                addrs: vec![0; BATCH],
                stats: QueueStats::default(),
                tx_pending: 0,
                kernel: Default::default(),
                program: program.clone(),
            };
            // The worker allocates from this pool from now on; this thread only fills the ring
            // once, so it keeps no cache of the pool.
            crate::sys::slots::without_new_caches(|| queue.refill());
            queues.push(Some(queue));
            pools.push(pool);
        }
        let info = PortInfo { name: name.as_str(), mac: Some(mac), mtu, kind: "af_xdp" };
        Ok(AfXdpPort { info, name, ctl, queues, pools, program, zerocopy })
    }

    /// Whether every queue's socket is in zero-copy mode (else copy mode, e.g. on veth).
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }
}

impl Port for AfXdpPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        self.queues.get_mut(q)?.take().map(|q| Box::new(q) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        let up = libc::IFF_UP | libc::IFF_RUNNING;
        ioctl::flags(self.ctl.as_fd(), &self.name).is_ok_and(|f| f & up == up)
    }
    fn queue_pool(&self, q: usize) -> Option<Pool> {
        self.pools.get(q).cloned()
    }
    fn extra_stats(&self) -> Option<ExtraStats> {
        let p = self.program.clone();
        let zc = u64::from(self.zerocopy);
        Some(Arc::new(move || {
            let c = p.lock().unwrap_or_else(|e| e.into_inner()).counters();
            vec![
                ("xdp_steered".to_string(), c[0]),
                ("xdp_no_socket".to_string(), c[1]),
                ("xdp_neigh_answers".to_string(), c[2]),
                ("xdp_zerocopy".to_string(), zc),
            ]
        }))
    }
    fn steering(&self) -> Option<Steerer> {
        let p = self.program.clone();
        Some(Arc::new(move |s: &Steering| p.lock().unwrap_or_else(|e| e.into_inner()).set_config(s)))
    }
}

impl AfXdpQueue {
    /// Take back what the kernel has sent.
    fn reap(&mut self) {
        loop {
            let n = self.sock.completions(&mut self.addrs);
            for &a in &self.addrs[..n] {
                match self.lent.get_mut((a / BUF_SIZE as u64) as usize).and_then(Option::take) {
                    Some(b) => drop(b),
                    None => self.stats.tx_errors += 1,
                }
            }
            self.tx_pending = self.tx_pending.saturating_sub(n as u32);
            if n < BATCH {
                break;
            }
        }
    }

    /// Top the fill ring up from the queue's pool, in bursts.
    fn refill(&mut self) {
        let mut free = self.sock.fill_free();
        while free >= REFILL_MIN {
            let mut k = 0;
            while k < BATCH && (k as u32) < free {
                let Some(b) = self.pool.alloc() else { break };
                let i = b.slot_index() as usize;
                self.addrs[k] = (i * BUF_SIZE) as u64;
                self.lent[i] = Some(b);
                k += 1;
            }
            if k == 0 {
                self.stats.rx_no_buffers += 1;
                return;
            }
            let posted = self.sock.fill(&self.addrs[..k]);
            // Cannot fall short (free was counted), but never leak a slot if it did.
            for &a in &self.addrs[posted..k] {
                self.lent[(a / BUF_SIZE as u64) as usize] = None;
            }
            free -= posted as u32;
            if posted < k || k < BATCH {
                break;
            }
        }
    }

    /// wgpmd is about to resolve `frame`'s target (an ARP request or neighbour solicitation):
    /// let the program steer the answer to us.
    fn note_resolution(&self, frame: &[u8]) {
        let mut l3 = 14;
        let Some(mut et) = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) else { return };
        if et == 0x8100 || et == 0x88a8 {
            let Some(t) = frame.get(16..18) else { return };
            et = u16::from_be_bytes([t[0], t[1]]);
            l3 = 18;
        }
        let ip = match et {
            0x0806 => match frame.get(l3..l3 + 28) {
                Some(a) if a[6..8] == [0, 1] => IpAddr::V4(Ipv4Addr::new(a[24], a[25], a[26], a[27])),
                _ => return,
            },
            0x86dd => match frame.get(l3..l3 + 64) {
                Some(p) if p[6] == 58 && p[40] == 135 => {
                    let mut t = [0u8; 16];
                    t.copy_from_slice(&p[48..64]);
                    IpAddr::V6(Ipv6Addr::from(t))
                }
                _ => return,
            },
            _ => return,
        };
        self.program.lock().unwrap_or_else(|e| e.into_inner()).want(ip);
    }
}

impl Queue for AfXdpQueue {
    fn rx_burst(&mut self, _pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        self.reap();
        if self.tx_pending > 0 && self.sock.tx_needs_wakeup() {
            let _ = self.sock.kick_tx();
        }
        let n = self.sock.receive(&mut self.descs[..max.min(BATCH)]);
        for &(addr, len) in &self.descs[..n] {
            let i = (addr / BUF_SIZE as u64) as usize;
            let off = (addr % BUF_SIZE as u64) as usize;
            match self.lent.get_mut(i).and_then(Option::take) {
                Some(mut b) => {
                    if b.set_window(off, len as usize).is_ok() {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += u64::from(len);
                        out.push(b);
                    } else {
                        self.stats.rx_errors += 1;
                    }
                }
                None => self.stats.rx_errors += 1,
            }
        }
        self.refill();
        if n == 0 && self.sock.fill_needs_wakeup() {
            self.sock.wake_rx();
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        self.reap();
        let room = (self.sock.tx_free() as usize).min(bufs.len());
        let mut descs = Vec::with_capacity(room);
        let mut taken = 0;
        for b in bufs.drain(..room) {
            let b = if b.pool_id() == self.pool.id() {
                b
            } else {
                // Another pool's buffer (a control-core reply): copy it into one of ours at
                // the same headroom.
                let Some(mut own) = self.pool.alloc() else {
                    self.stats.tx_dropped += 1;
                    taken += 1;
                    continue;
                };
                let (off, len) = (b.headroom().min(BUF_SIZE - b.len()), b.len());
                if own.set_window(off, len).is_err() {
                    self.stats.tx_errors += 1;
                    taken += 1;
                    continue;
                }
                own.data_mut().copy_from_slice(b.data());
                self.stats.tx_copied += 1;
                own
            };
            taken += 1;
            if b.is_empty() {
                self.stats.tx_errors += 1;
                continue;
            }
            self.note_resolution_if_needed(&b);
            let i = b.slot_index() as usize;
            descs.push(((i * BUF_SIZE + b.headroom()) as u64, b.len() as u32));
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += b.len() as u64;
            self.lent[i] = Some(b);
        }
        let posted = self.sock.transmit(&descs);
        for &(a, _) in &descs[posted..] {
            // Cannot happen (room was counted); never leak the slot if it did.
            self.lent[(a / BUF_SIZE as u64) as usize] = None;
            self.stats.tx_dropped += 1;
        }
        self.tx_pending += posted as u32;
        if posted > 0 && self.sock.tx_needs_wakeup() {
            let _ = self.sock.kick_tx();
        }
        taken
    }

    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // POLLIN when the rx ring has descriptors (poll also kicks pending transmits).
        Some(self.sock.fd())
    }

    fn stats(&self) -> QueueStats {
        if let Ok(k) = self.sock.stats() {
            self.kernel.set(k);
        }
        let k = self.kernel.get();
        let mut s = self.stats;
        s.rx_dropped += k.rx_dropped + k.rx_ring_full;
        s.rx_errors += k.invalid;
        s
    }
}

impl AfXdpQueue {
    fn note_resolution_if_needed(&self, b: &Buffer) {
        let d = b.data();
        if d.len() >= 14 && (d[12..14] == [0x08, 0x06] || d[12..14] == [0x86, 0xdd] || d[12..14] == [0x81, 0x00]) {
            // Cheap pre-check: only ARP, IPv6 and tagged frames are looked at further.
            if d[12..14] != [0x86, 0xdd] || d.get(20) == Some(&58) || d[12..14] == [0x81, 0x00] {
                self.note_resolution(d);
            }
        }
    }
}
