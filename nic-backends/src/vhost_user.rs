//! `vhost-user:PATH[,client]`: wgpmd as a vhost-user backend (a virtio-net device) for a
//! frontend on the unix socket `PATH`: a VM's virtio-net (QEMU `-netdev vhost-user`) or a DPDK
//! application's `net_virtio_user`. Built on rust-vmm's crates: `vhost` and
//! `vhost-user-backend` speak the protocol (features, memory table, vrings, kicks),
//! `vm-memory` maps and bounds-checks the frontend's memory regions, `virtio-queue` walks the
//! split rings.
//!
//! # Server and client mode
//! `vhost-user:PATH` binds PATH and waits for a frontend to connect (the frontend is the
//! client: QEMU's default, testpmd's `net_virtio_user` without `server=1`).
//! `vhost-user:PATH,client` connects to a frontend that listens on PATH (QEMU
//! `-chardev socket,...,server=on`, testpmd `net_virtio_user0,path=PATH,server=1`): while the
//! frontend is absent the port tries again every [`CLIENT_RETRY`] (failed attempts counted,
//! logged once per absence), and when it goes away the port connects again.
//!
//! # Threads
//! A connection thread serves one frontend at a time (a new `VhostUserDaemon`, its vrings and
//! its protocol thread per connection); when the frontend goes, the connection is torn down and
//! the next one accepted (server mode) or connected to (client mode). The frontend's socket is
//! not handed to the crate directly: two relay threads copy its messages (with their file
//! descriptors) to the crate's request loop and the replies back, holding back the
//! SET_VRING_ENABLE messages QEMU 7.2 sends before SET_FEATURES (module `relay`).
//!
//! The data path does not use the crate's kick-driven epoll handlers: the workers poll the
//! rings (`Queue::rx_burst` reads the frontend's transmit queue, `Queue::tx_burst` fills its
//! receive queue), each under the vring's lock. The vrings are taken from the handler at
//! connection setup through an extra event the handler forwards to
//! [`VhostUserBackend::handle_event`] together with its vrings.
//!
//! # Frames
//! The frontend speaks Ethernet with a 12-byte `virtio_net_hdr` (VIRTIO_F_VERSION_1 is
//! required); wgpmd's inner side carries IP packets. Towards wgpmd the header and the Ethernet
//! header come off (IPv4 and IPv6; the frontend's ARP requests are answered for any address but
//! its own, with the port's MAC: wgpmd is the frontend's gateway for everything; other frames
//! are counted and dropped). Towards the frontend an all-zero header (no offloads, one buffer)
//! and an Ethernet header to the frontend's MAC (learned from what it sends; broadcast until
//! then) go in front. No offloads, no mergeable buffers.
//!
//! # Queue pairs
//! One queue pair per worker queue of the port (at most [`MAX_PAIRS`]); with more than one the
//! port offers VIRTIO_NET_F_MQ (with VHOST_USER_PROTOCOL_F_MQ, always offered). Worker queue `q`
//! serves pair `q` once the frontend has enabled both of its rings; until then, and for a
//! frontend that uses fewer pairs, it shares pair 0 (each ring under its lock).
//!
//! # Bad frontends
//! Every address comes from the frontend and is checked against its memory table by
//! `vm-memory`. A descriptor outside every region, a chain that does not end (a loop: longer
//! than the ring), a transmit chain with no readable bytes or a receive chain with a
//! device-readable part is counted (`bad_descriptors`), logged once, and the frontend is
//! disconnected; the port keeps serving (the next frontend may connect). Errors of the protocol
//! itself (overlapping or unmappable memory regions, messages out of order, a message with more
//! than 32 file descriptors, whose descriptors are all closed) end the connection the same way
//! (`protocol_errors`). Packets for an absent frontend are counted and dropped
//! (`tx_dropped`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod relay;

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::port::{ExtraStats, Port, PortInfo, PortOptions, Queue, QueueStats};

/// The header in front of every frame (virtio 1.x: `num_buffers` always present).
pub const VNET_HDR_LEN: usize = 12;
/// The MAC wgpmd answers ARP with and sends from (locally administered).
pub const PORT_MAC: [u8; 6] = [0x02, 0x77, 0x67, 0x70, 0x6d, 0x64];
/// Descriptors per ring at most.
const MAX_QUEUE_SIZE: usize = 1024;
/// Queue pairs offered at most (one per worker queue of the port).
pub const MAX_PAIRS: usize = 16;
/// VIRTIO_NET_F_MQ: several queue pairs.
const VIRTIO_NET_F_MQ: u64 = 22;

/// The extra event that hands us the vrings (above the queues and the handler's own event).
fn stash_event(pairs: usize) -> u16 {
    (2 * pairs + 1) as u16
}
/// MTU of the inner side when `PortOptions::mtu` is `None`.
pub const DEFAULT_MTU: usize = 1420;
/// Client mode: the pause between attempts to connect to an absent frontend.
pub const CLIENT_RETRY: Duration = Duration::from_millis(200);

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Counters of the port, shared by its threads (`vhost_user_*` in `wgpmd stats`).
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    disconnects: AtomicU64,
    bad_descriptors: AtomicU64,
    protocol_errors: AtomicU64,
    arp_replies: AtomicU64,
    not_ip_dropped: AtomicU64,
    /// Client mode: attempts to connect that failed (the frontend's socket absent or refusing).
    connect_failures: AtomicU64,
}

/// One connected frontend: its vrings (`2p`: pair p's receive queue, `2p + 1`: its transmit
/// queue) and memory.
struct Conn {
    vrings: Vec<VringRwLock>,
    mem: Mem,
    shutdown: Option<vhost_user_backend::ShutdownHandle>,
    /// Set when the frontend posted something bad: nothing more is taken from it.
    broken: AtomicBool,
    /// The frontend's MAC (48 bits; 0: not learned, send to broadcast).
    peer_mac: AtomicU64,
    features: AtomicU64,
}

impl Conn {
    /// Disconnect a frontend that broke the rules (once), with a log line.
    fn refuse(&self, c: &Counters, what: &str) {
        c.bad_descriptors.fetch_add(1, Ordering::Relaxed);
        if !self.broken.swap(true, Ordering::Relaxed) {
            tracing::warn!("vhost-user: {what}: disconnecting the frontend");
            if let Some(h) = &self.shutdown {
                h.shutdown();
            }
        }
    }
}

struct Shared {
    path: PathBuf,
    /// Queue pairs offered: pair `p` is rings `2p` (the frontend's receive queue) and `2p + 1`.
    pairs: usize,
    /// `,client`: wgpmd connects to the frontend's socket (and never creates or removes it).
    client: bool,
    /// The current frontend, if any; `epoch` changes whenever this does.
    conn: Mutex<Option<Arc<Conn>>>,
    epoch: AtomicU64,
    features: AtomicU64,
    stop: AtomicBool,
    c: Counters,
}

/// The backend the rust-vmm daemon drives: features and the vrings' hand-over.
#[derive(Clone)]
struct NetBackend {
    sh: Arc<Shared>,
    /// This connection's vrings, handed over by its handler (see `STASH_EVENT`), and the event
    /// that asks for them (read here, so that it fires once).
    stash: Arc<(Mutex<Option<Vec<VringRwLock>>>, EventFd)>,
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.sh.pairs
    }
    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        // QEMU 7.2 needs PROTOCOL_FEATURES (without it: "unable to start vhost net: 22") but
        // sends SET_VRING_ENABLE before it acks it, which the vhost crate refuses: the relay
        // (`relay`) holds those messages back until SET_FEATURES.
        let mq = if self.sh.pairs > 1 { 1 << VIRTIO_NET_F_MQ } else { 0 };
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | mq
    }
    fn acked_features(&self, features: u64) {
        self.sh.features.store(features, Ordering::Relaxed);
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the handler's epoll thread never ends and the connection's teardown
        // (which joins it) hangs.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        // The handler has replaced the contents of the `GuestMemoryAtomic` we gave it (and
        // hold): the workers see the new table at their next burst. vm-memory refuses
        // overlapping regions; a region longer than its file maps, but touching it past the
        // end of the file would be SIGBUS: refuse the table (the connection ends) and stop
        // using this frontend's rings at once.
        if let Err(e) = check_regions(&mem.memory()) {
            if let Some(c) = self.sh.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                c.broken.store(true, Ordering::Relaxed);
            }
            tracing::warn!("vhost-user {}: memory table refused: {e}", self.sh.path.display());
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
        }
        Ok(())
    }
    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if device_event == stash_event(self.sh.pairs) {
            let _ = self.stash.1.read();
            *self.stash.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(vrings.to_vec());
        }
        // Kicks need no action: the workers poll the rings.
        Ok(())
    }
}

/// A vhost-user port (see the module documentation).
pub struct VhostUserPort {
    info: PortInfo,
    queues: Vec<Option<VhostUserQueue>>,
    sh: Arc<Shared>,
    /// Until the connection thread starts (see [`VhostUserPort::start_server`]): the bound
    /// socket in server mode, nothing to hold in client mode.
    pending: Option<Option<Listener>>,
    server: Option<std::thread::JoinHandle<()>>,
}

/// One queue of a [`VhostUserPort`]: queue `q` serves queue pair `q` when the frontend has
/// enabled it, and pair 0 (shared, under its rings' locks) otherwise.
pub struct VhostUserQueue {
    sh: Arc<Shared>,
    pair: usize,
    epoch: u64,
    conn: Option<Arc<Conn>>,
    stats: QueueStats,
    replies: Vec<Buffer>,
}

impl VhostUserPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<VhostUserPort, PortError> {
        let mtu = opts.mtu.unwrap_or(DEFAULT_MTU);
        crate::port::check_mtu(spec, mtu, 14 + VNET_HDR_LEN)?;
        let (path, client) = parse_name(spec, name)?;
        let sh = Arc::new(Shared {
            path: PathBuf::from(path),
            pairs: opts.queues.clamp(1, MAX_PAIRS),
            client,
            conn: Mutex::new(None),
            epoch: AtomicU64::new(0),
            features: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            c: Counters::default(),
        });
        // Server mode: bind now, so that a bad path is an error at startup (an old socket file is
        // replaced). Client mode: the frontend's socket may not exist yet.
        let listener =
            if client {
                None
            } else {
                Some(Listener::new(path, true).map_err(|e| {
                    PortError::os(spec, "bind the vhost-user socket", std::io::Error::other(e.to_string()))
                })?)
            };
        let queues = (0..opts.queues)
            .map(|q| {
                Some(VhostUserQueue {
                    pair: q % sh.pairs,
                    sh: sh.clone(),
                    epoch: u64::MAX,
                    conn: None,
                    stats: QueueStats::default(),
                    replies: Vec::new(),
                })
            })
            .collect();
        let info = PortInfo { name: path.to_string(), mac: None, mtu, kind: "vhost-user" };
        Ok(VhostUserPort { info, queues, sh, pending: Some(listener), server: None })
    }

    /// Start the thread that accepts (or connects to) frontends and parses their messages, when
    /// the first queue is taken (by a worker, after the daemon has dropped its privileges: that
    /// thread, and the connection threads it starts, inherit the reduced capabilities and
    /// no-new-privs of the thread that starts them). Until then a frontend's connection waits in
    /// the backlog (server mode), or nothing is connected (client mode).
    fn start_server(&mut self) {
        let Some(listener) = self.pending.take() else { return };
        let sh = self.sh.clone();
        match std::thread::Builder::new().name("wgpmd-vhost-user".into()).spawn(move || serve(sh, listener)) {
            Ok(t) => self.server = Some(t),
            Err(e) => {
                self.sh.c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("vhost-user {}: cannot start its thread: {e}", self.sh.path.display());
            }
        }
    }
}

/// Serve frontends one after the other until the port is dropped: accepted on `listener`
/// (server mode) or connected to (client mode, `listener` None).
fn serve(sh: Arc<Shared>, mut listener: Option<Listener>) {
    while !sh.stop.load(Ordering::Relaxed) {
        if let Err(e) = one_connection(&sh, listener.as_mut()) {
            sh.c.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("vhost-user {}: {e}", sh.path.display());
            // Never spin on a listener that keeps failing.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn one_connection(sh: &Arc<Shared>, listener: Option<&mut Listener>) -> Result<(), String> {
    let mem: Mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let ev = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let stash = Arc::new((Mutex::new(None), ev));
    let backend = NetBackend { sh: sh.clone(), stash: stash.clone() };
    let mut daemon =
        VhostUserDaemon::new("wgpmd-vhost-user-conn".into(), backend, mem.clone()).map_err(|e| e.to_string())?;
    let handlers = daemon.get_epoll_handlers();
    let exit = |handlers: &[Arc<vhost_user_backend::VringEpollHandler<NetBackend>>]| {
        for h in handlers {
            h.send_exit_event();
        }
    };
    // Have the handler hand us its vrings.
    let ev = &stash.1;
    let stashed = (|| {
        let h = handlers.first().ok_or("no vring handler")?;
        h.register_listener(ev.as_raw_fd(), EventSet::IN, u64::from(stash_event(sh.pairs)))
            .map_err(|e| e.to_string())?;
        ev.write(1).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = stash.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = h.unregister_listener(ev.as_raw_fd(), EventSet::IN, u64::from(stash_event(sh.pairs)));
                return Ok::<_, String>(v);
            }
            if Instant::now() > deadline {
                return Err("the vring handler did not answer".to_string());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })();
    let vrings = match stashed {
        Ok(v) => v,
        Err(e) => {
            exit(&handlers);
            return Err(e);
        }
    };
    // The frontend: accepted (server mode) or connected to (client mode); `None` when the port
    // is being dropped.
    let front = match listener {
        Some(listener) => loop {
            match listener.accept() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => continue,
                Err(e) => {
                    exit(&handlers);
                    return Err(format!("accepting a frontend: {e}"));
                }
            }
        },
        None => connect(sh),
    };
    let Some(front) = front.filter(|_| !sh.stop.load(Ordering::Relaxed)) else {
        exit(&handlers);
        return Ok(());
    };
    // The crate's request loop, behind the relay (see `relay`).
    let relays = relay::start_handler(&mut daemon).and_then(|ours| {
        let sh2 = sh.clone();
        relay::spawn(front, ours, move |e| {
            sh2.c.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("vhost-user {}: {e}", sh2.path.display());
        })
    });
    let relays = match relays {
        Ok(r) => r,
        Err(e) => {
            daemon.request_shutdown();
            let _ = daemon.wait();
            exit(&handlers);
            return Err(e);
        }
    };
    sh.c.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!("vhost-user {}: frontend connected", sh.path.display());
    let conn = Arc::new(Conn {
        vrings,
        mem,
        shutdown: daemon.shutdown_handle(),
        broken: AtomicBool::new(false),
        peer_mac: AtomicU64::new(0),
        features: AtomicU64::new(0),
    });
    *sh.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    sh.epoch.fetch_add(1, Ordering::Release);
    let r = daemon.wait();
    for t in relays {
        let _ = t.join();
    }
    *sh.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    sh.epoch.fetch_add(1, Ordering::Release);
    // Take the rings away from any worker still holding the connection: nothing more is read
    // from or written to this frontend's memory.
    conn.broken.store(true, Ordering::Relaxed);
    exit(&handlers);
    sh.c.disconnects.fetch_add(1, Ordering::Relaxed);
    use vhost::vhost_user::Error as VuError;
    use vhost_user_backend::Error as DaemonError;
    match r {
        // A frontend that closes its socket, also between messages or in the middle of one.
        Ok(())
        | Err(DaemonError::HandleRequest(VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_))) =>
        {
            tracing::info!("vhost-user {}: frontend disconnected", sh.path.display())
        }
        Err(e) => {
            sh.c.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("vhost-user {}: frontend disconnected: {e}", sh.path.display());
        }
    }
    Ok(())
}

/// Client mode: connect to the frontend's socket, trying again every [`CLIENT_RETRY`] while
/// it is absent (each failure counted, the first of a run logged), until connected or the port
/// is dropped (then `None`).
fn connect(sh: &Shared) -> Option<std::os::unix::net::UnixStream> {
    let path = sh.path.display();
    let mut logged = false;
    while !sh.stop.load(Ordering::Relaxed) {
        match std::os::unix::net::UnixStream::connect(&sh.path) {
            Ok(s) => return Some(s),
            Err(e) => {
                sh.c.connect_failures.fetch_add(1, Ordering::Relaxed);
                if !logged {
                    logged = true;
                    tracing::info!("vhost-user {path}: no frontend to connect to yet ({e}); trying again");
                }
                std::thread::sleep(CLIENT_RETRY);
            }
        }
    }
    None
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.sh.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if let Some(h) = &c.shutdown {
                h.shutdown();
            }
        }
        if !self.sh.client {
            // Wake an accept that waits for a frontend. (In client mode the retry loop sees
            // `stop` within CLIENT_RETRY.)
            let _ = std::os::unix::net::UnixStream::connect(&self.sh.path);
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        if !self.sh.client {
            // Ours. (In client mode the socket is the frontend's.)
            let _ = std::fs::remove_file(&self.sh.path);
        }
    }
}

impl Port for VhostUserPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        let queue = self.queues.get_mut(q)?.take()?;
        self.start_server();
        Some(Box::new(queue) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        self.sh.conn.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
    fn extra_stats(&self) -> Option<ExtraStats> {
        let sh = self.sh.clone();
        Some(Arc::new(move || {
            let c = &sh.c;
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            // Each takes the connection's lock by itself (not inside one expression: the guard of
            // the first would still be held by the second).
            let connected = u64::from(sh.conn.lock().unwrap_or_else(|e| e.into_inner()).is_some());
            let pairs = active_pairs(&sh);
            vec![
                ("vhost_user_connected".into(), connected),
                ("vhost_user_connections".into(), l(&c.connections)),
                ("vhost_user_disconnects".into(), l(&c.disconnects)),
                ("vhost_user_bad_descriptors".into(), l(&c.bad_descriptors)),
                ("vhost_user_protocol_errors".into(), l(&c.protocol_errors)),
                ("vhost_user_arp_replies".into(), l(&c.arp_replies)),
                ("vhost_user_not_ip_dropped".into(), l(&c.not_ip_dropped)),
                ("vhost_user_connect_failures".into(), l(&c.connect_failures)),
                ("vhost_user_pairs_active".into(), pairs),
            ]
        }))
    }
}

/// What reading one transmit chain gave.
enum Read {
    /// A frame of this length in the buffer.
    Frame(usize),
    /// Longer than a buffer: dropped.
    TooLong,
    /// The chain broke the rules.
    Bad(&'static str),
}

impl VhostUserQueue {
    /// The current frontend, if it is connected and usable (re-read when the epoch moved).
    fn conn(&mut self) -> Option<Arc<Conn>> {
        let e = self.sh.epoch.load(Ordering::Acquire);
        if e != self.epoch {
            self.epoch = e;
            self.conn = self.sh.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(c) = &self.conn {
                c.features.store(self.sh.features.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        self.conn.clone().filter(|c| !c.broken.load(Ordering::Relaxed))
    }

    /// The queue pair this queue uses now: its own once the frontend has enabled both of its
    /// rings, else pair 0.
    fn pair(&self, conn: &Conn) -> usize {
        let p = self.pair;
        let up = |i: usize| {
            conn.vrings.get(i).is_some_and(|v| {
                let st = v.get_ref();
                st.is_enabled() && st.get_queue().ready()
            })
        };
        if p != 0 && up(2 * p) && up(2 * p + 1) {
            p
        } else {
            0
        }
    }

    /// Frames (with their Ethernet header) into the frontend's receive queue; returns how many
    /// of `frames` (from the front) were taken (written, or dropped and counted).
    fn push(&mut self, conn: &Conn, frames: &[Buffer], ip: bool) -> usize {
        let vring = &conn.vrings[2 * self.pair(conn)];
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return 0;
        }
        let mem = conn.mem.memory();
        let peer = conn.peer_mac.load(Ordering::Relaxed).to_be_bytes();
        let dst: [u8; 6] = if peer[2..] == [0; 6][..] { [0xff; 6] } else { peer[2..].try_into().unwrap_or([0xff; 6]) };
        let mut taken = 0;
        let mut used = false;
        for b in frames.iter() {
            let Some(chain) = st.get_queue_mut().pop_descriptor_chain(&*mem) else { break };
            let head = chain.head_index();
            let mut hdr = [0u8; VNET_HDR_LEN + 14];
            hdr[10] = 1; // num_buffers
            if ip {
                hdr[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst);
                hdr[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&PORT_MAC);
                let ty: [u8; 2] =
                    if b.data().first().is_some_and(|v| v >> 4 == 6) { [0x86, 0xdd] } else { [0x08, 0x00] };
                hdr[VNET_HDR_LEN + 12..].copy_from_slice(&ty);
            }
            let pieces: [&[u8]; 2] = [if ip { &hdr[..] } else { &hdr[..VNET_HDR_LEN] }, b.data()];
            let total = pieces[0].len() + pieces[1].len();
            // Write the pieces across the writable descriptors.
            let mut written = 0usize;
            let mut bad = None;
            let mut last_next = false;
            let mut n = 0usize;
            for desc in chain {
                n += 1;
                last_next = desc.has_next();
                if !desc.is_write_only() {
                    bad = Some("a device-readable descriptor in a receive chain");
                    break;
                }
                let mut room = desc.len() as usize;
                let mut at = desc.addr();
                while room > 0 && written < total {
                    let (piece, off) = if written < pieces[0].len() {
                        (pieces[0], written)
                    } else {
                        (pieces[1], written - pieces[0].len())
                    };
                    let k = room.min(piece.len() - off);
                    if mem.write_slice(&piece[off..off + k], at).is_err() {
                        bad = Some("a receive descriptor outside the frontend's memory");
                        break;
                    }
                    written += k;
                    room -= k;
                    at = match at.checked_add(k as u64) {
                        Some(a) => a,
                        None => {
                            bad = Some("a receive descriptor wrapping the address space");
                            break;
                        }
                    };
                }
                if bad.is_some() || written == total {
                    break;
                }
            }
            if bad.is_none() && written < total && (last_next || n == 0) {
                bad = Some("a receive chain that does not end (a loop, or a descriptor outside the table)");
            }
            if let Some(what) = bad {
                conn.refuse(&self.sh.c, what);
                self.stats.tx_errors += 1;
                taken += 1;
                break;
            }
            if written < total {
                // The frontend's buffer is too small: hand it back empty, drop the packet.
                let _ = st.get_queue_mut().add_used(&*mem, head, 0);
                self.stats.tx_dropped += 1;
            } else {
                let _ = st.get_queue_mut().add_used(&*mem, head, total as u32);
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += b.len() as u64;
            }
            used = true;
            taken += 1;
        }
        if used && st.get_queue_mut().needs_notification(&*mem).unwrap_or(true) {
            let _ = st.signal_used_queue();
        }
        taken
    }

    /// Read one transmit chain into `b` (header and all).
    fn read_chain(
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        b: &mut Buffer,
    ) -> Read {
        let room = b.data_and_tailroom_mut();
        let cap = room.len();
        let mut len = 0usize;
        let mut n = 0usize;
        let mut last_next = false;
        let mut too_long = false;
        for desc in chain {
            n += 1;
            last_next = desc.has_next();
            if desc.is_write_only() {
                continue;
            }
            let dl = desc.len() as usize;
            if too_long || len + dl > cap {
                too_long = true;
                // Still check that it is inside the frontend's memory.
                let end = desc.addr().checked_add(dl.saturating_sub(1) as u64);
                if end.is_none() || !mem_has(mem, desc.addr(), dl) {
                    return Read::Bad("a transmit descriptor outside the frontend's memory");
                }
                continue;
            }
            if mem.read_slice(&mut room[len..len + dl], desc.addr()).is_err() {
                return Read::Bad("a transmit descriptor outside the frontend's memory");
            }
            len += dl;
        }
        if n == 0 || last_next {
            return Read::Bad("a transmit chain that does not end (a loop, or a descriptor outside the table)");
        }
        if too_long {
            return Read::TooLong;
        }
        if len <= VNET_HDR_LEN {
            return Read::Bad("a transmit chain without a frame");
        }
        Read::Frame(len)
    }

    /// An Ethernet frame from the frontend (header removed): the IP packet in place, or an ARP
    /// reply to send back, or nothing (counted).
    fn frame_in(&mut self, conn: &Conn, mut b: Buffer, out: &mut Vec<Buffer>, pool: &Pool) -> bool {
        let d = b.data();
        if d.len() < 14 {
            self.sh.c.not_ip_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut src = [0u8; 8];
        src[2..].copy_from_slice(&d[6..12]);
        if d[6] & 1 == 0 {
            conn.peer_mac.store(u64::from_be_bytes(src), Ordering::Relaxed);
        }
        match [d[12], d[13]] {
            [0x08, 0x00] | [0x86, 0xdd] => {
                if b.trim_front(14).is_ok() {
                    out.push(b);
                    return true;
                }
                false
            }
            [0x08, 0x06] => {
                if let Some(r) = arp_reply(d, pool) {
                    self.replies.push(r);
                    self.sh.c.arp_replies.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            _ => {
                self.sh.c.not_ip_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Queue pairs of the current frontend with both rings enabled and ready (0: none connected).
fn active_pairs(sh: &Shared) -> u64 {
    let conn = sh.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(conn) = conn else { return 0 };
    let up = |v: &VringRwLock| {
        let st = v.get_ref();
        st.is_enabled() && st.get_queue().ready()
    };
    conn.vrings.chunks(2).filter(|p| p.len() == 2 && up(&p[0]) && up(&p[1])).count() as u64
}

/// Every region must lie within its file (a memfd or hugetlbfs file of the frontend's).
fn check_regions(mem: &GuestMemoryMmap) -> Result<(), String> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in mem.iter() {
        let Some(fo) = r.file_offset() else { continue };
        let size = fo.file().metadata().map_err(|e| format!("fstat of a region's file: {e}"))?.len();
        let end = fo.start().checked_add(r.len());
        if end.is_none_or(|e| e > size) {
            return Err(format!(
                "a region of {} bytes at offset {} of a {size}-byte file (at guest address {:#x})",
                r.len(),
                fo.start(),
                r.start_addr().0
            ));
        }
    }
    Ok(())
}

/// Whether `[addr, addr + len)` lies in the frontend's memory (one region).
fn mem_has(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> bool {
    use vm_memory::GuestMemoryBackend;
    len == 0 || mem.check_range(addr, len)
}

/// An ARP reply (Ethernet frame) to an ARP request in `req` for any address but the asker's
/// own: the frontend's gateway is wgpmd, whatever address it asks for.
fn arp_reply(req: &[u8], pool: &Pool) -> Option<Buffer> {
    if req.len() < 42 || req[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] || req[28..32] == req[38..42] {
        return None;
    }
    let mut b = pool.alloc()?;
    let f = b.append(42).ok()?;
    f[..6].copy_from_slice(&req[6..12]);
    f[6..12].copy_from_slice(&PORT_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&PORT_MAC);
    f[28..32].copy_from_slice(&req[38..42]);
    f[32..38].copy_from_slice(&req[22..28]);
    f[38..42].copy_from_slice(&req[28..32]);
    Some(b)
}

impl Queue for VhostUserQueue {
    fn rx_burst(&mut self, pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        let Some(conn) = self.conn() else { return 0 };
        let mut n = 0;
        {
            let vring = &conn.vrings[2 * self.pair(&conn) + 1];
            let mut st = vring.get_mut();
            if !st.is_enabled() || !st.get_queue().ready() {
                return 0;
            }
            let mem = conn.mem.memory();
            let mut used = false;
            while n < max {
                let Some(mut b) = pool.alloc() else { break };
                let Some(chain) = st.get_queue_mut().pop_descriptor_chain(&*mem) else { break };
                let head = chain.head_index();
                let r = Self::read_chain(&mem, chain, &mut b);
                match r {
                    Read::Bad(what) => {
                        self.stats.rx_errors += 1;
                        conn.refuse(&self.sh.c, what);
                        break;
                    }
                    Read::TooLong => self.stats.rx_dropped += 1,
                    Read::Frame(len) => {
                        if b.set_len(len).is_ok() && b.trim_front(VNET_HDR_LEN).is_ok() {
                            self.stats.rx_packets += 1;
                            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                            if self.frame_in(&conn, b, out, pool) {
                                n += 1;
                            }
                        }
                    }
                }
                let _ = st.get_queue_mut().add_used(&*mem, head, 0);
                used = true;
            }
            if used && st.get_queue_mut().needs_notification(&*mem).unwrap_or(true) {
                let _ = st.signal_used_queue();
            }
        }
        if !self.replies.is_empty() {
            let mut replies = std::mem::take(&mut self.replies);
            let k = self.push(&conn, &replies, false);
            replies.drain(..k);
            // Replies the frontend has no room for now are dropped (it asks again).
            replies.clear();
            self.replies = replies;
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        let taken = match self.conn() {
            Some(conn) => self.push(&conn, bufs.as_slice(), true),
            None => {
                // No frontend: counted and dropped.
                self.stats.tx_dropped += bufs.len() as u64;
                bufs.len()
            }
        };
        bufs.drain(..taken);
        taken
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

/// The name of a `vhost-user:` string: `PATH` (server mode) or `PATH,client` (client mode).
/// Returns the socket path and whether in client mode.
pub(crate) fn parse_name<'a>(spec: &str, name: &'a str) -> Result<(&'a str, bool), PortError> {
    let (path, client) = match name.strip_suffix(",client") {
        Some(p) => (p, true),
        None => (name, false),
    };
    if path.is_empty() {
        return Err(PortError::BadOptions { spec: spec.to_string(), problem: "no socket path before ,client".into() });
    }
    Ok((path, client))
}

/// The socket path of a `vhost-user:PATH[,client]` string, checked.
pub(crate) fn check_path(spec: &str, name: &str) -> Result<(), PortError> {
    let (path, _) = parse_name(spec, name)?;
    let p = Path::new(path);
    if p.parent().is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        return Err(PortError::BadOptions {
            spec: spec.to_string(),
            problem: format!("the directory of {path} does not exist"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mode_is_a_suffix() {
        assert_eq!(parse_name("s", "/run/vm0.sock").unwrap(), ("/run/vm0.sock", false));
        assert_eq!(parse_name("s", "/run/vm0.sock,client").unwrap(), ("/run/vm0.sock", true));
        assert!(parse_name("s", ",client").is_err());
    }

    #[test]
    fn arp_requests_get_our_mac() {
        let pool = Pool::new("t", 4).unwrap();
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&[2, 0, 0, 0, 0, 5, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 5]);
        req.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        let r = arp_reply(&req, &pool).unwrap();
        let f = r.data();
        assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 5]);
        assert_eq!(&f[22..28], &PORT_MAC);
        assert_eq!(&f[28..32], &[10, 0, 0, 1]);
        assert_eq!(&f[38..42], &[10, 0, 0, 2]);
        // Its own address (duplicate address detection): no answer.
        let mut dad = req.clone();
        dad[38..42].copy_from_slice(&[10, 0, 0, 2]);
        assert!(arp_reply(&dad, &pool).is_none());
        assert!(arp_reply(&req[..30], &pool).is_none());
    }
}
