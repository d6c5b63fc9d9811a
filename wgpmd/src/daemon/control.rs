//! The control core: notifications from the workers (`notify.rs`, a bounded budget per
//! iteration, never lost), the handshakes it decides on (a handshake wanted, rekey and retry
//! timers), the timer wheel (one entry per peer), staged packets, the neighbour resolutions that
//! failed, the UAPI socket and the stats socket. Incoming handshakes are the workers' own
//! (`handshakes.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nic_backends::Pool;

use super::metrics_http::MetricsServer;
use super::notify::{Pending, Walk};
use super::rng::CoreRng;
use super::stats::StatsServer;
use super::wheel::Wheel;
use super::{cores, DaemonError, MetricsOptions, Shared, TxJob};
use crate::uapi_server::{UapiHandler, UapiServer};
use wgpmd_proto::device::{Device, DropReason, Event, Output, PeerId, Transmit};
use wgpmd_proto::messages::{DATA_HEADER_LEN, HANDSHAKE_DSCP};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::uapi::{self, SetRequest, UapiError};

/// Peers' notifications taken per control iteration (a wanted handshake costs one X25519).
const NOTE_BUDGET: usize = 4096;
/// How often waiting frames of failed neighbour resolutions are dropped.
const NEIGH_EXPIRE_NS: u64 = 250_000_000;

/// The UAPI handler: `get` from the published device, piece by piece; `set` on the writer's
/// copy, then published. Neither makes a worker wait.
struct Handler {
    sh: Arc<Shared>,
    /// What `set` produced (keepalives, initiations), for the control loop to send.
    pending: Arc<Mutex<Output>>,
}

impl UapiHandler for Handler {
    fn get(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let iface = *self.sh.control.iface.lock().unwrap_or_else(|e| e.into_inner());
        uapi::write_get(
            || self.sh.data.device.load_full(),
            &iface,
            |t| self.sh.data.clock.to_unix(t),
            &mut WriteRef(out),
        )
    }
    fn set(&self, req: SetRequest) -> Result<(), UapiError> {
        let now = self.sh.data.clock.now();
        let t0 = std::time::Instant::now();
        let mut dev = self.sh.data.device.write();
        let mut iface = self.sh.control.iface.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Output::with_capacity(0);
        // Timer jitter for every new peer: from a generator seeded by the OS once per request,
        // not a system call per peer.
        let r = match CoreRng::from_os(now) {
            Ok(mut rng) => uapi::apply_set(&mut dev, &mut iface, &req, &mut rng, now, &mut out),
            Err(e) => Err(UapiError { errno: uapi::IPC_ERROR_IO, message: format!("no randomness: {e}") }),
        };
        drop(req);
        let t1 = std::time::Instant::now();
        // Published: no worker reads the old tables any more, and removed ids are not reused
        // before the next `set`, so forgetting their notifications forgets no new peer's.
        let changes = dev.publish();
        tracing::info!(
            "UAPI set: {} peers added, {} removed; applied in {:.3} s, published in {:.3} s",
            changes.added.len(),
            changes.removed.len(),
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
        self.sh.handoff.peers_changed(&changes);
        if !changes.removed.is_empty() {
            self.sh.control.removed.lock().unwrap_or_else(|e| e.into_inner()).extend(changes.removed);
        }
        if iface.listen_port == 0 {
            // `wg setconf` of a file without ListenPort sends 0 ("any port"): keep serving on
            // the customary one rather than on none.
            iface.listen_port = super::DEFAULT_LISTEN_PORT;
        }
        self.sh.data.listen_port.store(iface.listen_port, Ordering::Relaxed);
        drop(dev);
        // What the set produced (a keepalive when persistent keepalive was turned on, timer
        // wake-ups), for the control loop; handed over after publishing, so those peers exist
        // in the tables the control loop reads.
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.events.append(&mut out.events);
        p.transmits.append(&mut out.transmits);
        if let Err(e) = self.sh.control.update_steering(&self.sh.data.wan, iface.listen_port) {
            tracing::error!("{}: the WAN port still steers the old listen port: {e}", self.sh.control.name);
        }
        r
    }
}

/// `&mut dyn Write` as a sized `Write`.
struct WriteRef<'a>(&'a mut dyn std::io::Write);

impl std::io::Write for WriteRef<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct Control {
    sh: Arc<Shared>,
    /// Initiations' ephemeral keys and indices, timer jitter.
    rng: CoreRng,
    pool: Pool,
    out: Output,
    /// When `out`'s cache of prepared keys was last emptied.
    keys_since: Timestamp,
    wheel: Wheel,
    due: Vec<PeerId>,
    walk: Walk,
    /// The notifications taken this iteration (kept for its capacity).
    notes: Vec<Pending>,
    neigh_expired_at: Timestamp,
}

/// How often the control loop reads the WAN port's link state.
const LINK_CHECK: Duration = Duration::from_millis(250);

/// Watches the WAN port's link (`Port::link_up`): logs each transition once (and a link down
/// at start), and keeps the state for `wgpmd stats` (`wan_link_up`).
pub(crate) struct LinkWatch<'a> {
    port: String,
    read: &'a dyn Fn() -> bool,
    last: Option<bool>,
    checked: Option<std::time::Instant>,
}

impl<'a> LinkWatch<'a> {
    pub(crate) fn new(port: &str, read: &'a dyn Fn() -> bool) -> LinkWatch<'a> {
        LinkWatch { port: port.to_string(), read, last: None, checked: None }
    }

    /// Read the link now; `Some(up)` when it changed since the last look (the first look
    /// reports only a link that is down).
    pub(crate) fn poll(&mut self) -> Option<bool> {
        let up = (self.read)();
        let changed = match self.last {
            None => !up,
            Some(l) => l != up,
        };
        self.last = Some(up);
        changed.then_some(up)
    }

    /// At most every LINK_CHECK: read the link, publish it in `sh`, log a transition.
    fn tick(&mut self, sh: &Shared) {
        let now = std::time::Instant::now();
        if self.checked.is_some_and(|t| now.duration_since(t) < LINK_CHECK) {
            return;
        }
        self.checked = Some(now);
        let change = self.poll();
        sh.control.wan_link_up.store(self.last.unwrap_or(true), Ordering::Relaxed);
        match change {
            Some(false) => tracing::warn!(
                "{}: WAN link {} is DOWN (no carrier): nothing is sent or received until it comes back",
                sh.control.name,
                self.port
            ),
            Some(true) => tracing::info!("{}: WAN link {} is up again", sh.control.name, self.port),
            None => {}
        }
    }
}

/// What SIGHUP re-applies: the flag the signal sets, and the configuration file.
pub(crate) struct Reload {
    pub flag: Arc<AtomicBool>,
    pub path: Option<std::path::PathBuf>,
}

impl Reload {
    /// If the flag is set: re-read the file and apply it as `wg syncconf` would (peers the file
    /// no longer names are removed, the others updated in place and keep their sessions), under
    /// the same lock and bookkeeping as a UAPI `set`. A file that does not parse or apply
    /// changes nothing and is logged; the daemon keeps running.
    fn check(&self, handler: &Handler) {
        if !self.flag.swap(false, Ordering::Relaxed) {
            return;
        }
        let name = &handler.sh.control.name;
        let Some(path) = &self.path else {
            tracing::warn!("{name}: SIGHUP: nothing to reload (started without --config)");
            return;
        };
        crate::sdnotify::notify_or_warn("RELOADING=1\nSTATUS=reloading the configuration");
        let outcome = super::load_config(path).and_then(|cfg| {
            let current: Vec<[u8; 32]> = {
                let dev = handler.sh.data.device.load();
                dev.peers().map(|p| *p.public_key()).collect()
            };
            let req = cfg.to_sync_request(current.iter().copied());
            let removed = req.peers.iter().filter(|p| p.ops.contains(&uapi::PeerOp::Remove)).count();
            handler.set(req).map_err(DaemonError::Apply)?;
            Ok((cfg.peers.len(), removed))
        });
        match outcome {
            Ok((peers, removed)) => {
                tracing::info!(
                    "{name}: reloaded {} (syncconf): {peers} peer(s) in the file, {removed} removed",
                    path.display()
                );
                crate::sdnotify::notify_or_warn("READY=1\nSTATUS=configuration reloaded");
            }
            Err(e) => {
                tracing::error!("{name}: reload failed, the running configuration is unchanged: {e}");
                crate::sdnotify::notify_or_warn(
                    "READY=1\nSTATUS=reload failed: the running configuration is unchanged",
                );
            }
        }
    }
}

/// What the control loop serves besides the data path.
pub(crate) struct Services {
    /// The UAPI and stats sockets, and systemd's notifications.
    pub sockets: bool,
    /// The metrics endpoint (only with `sockets`).
    pub metrics: Option<MetricsOptions>,
    /// SIGHUP's reload.
    pub reload: Option<Reload>,
}

pub(crate) fn run(
    sh: Arc<Shared>,
    core: usize,
    pool: Pool,
    stop: Arc<AtomicBool>,
    services: Services,
    mut link: LinkWatch<'_>,
    mut tap: Option<super::exception::Tap>,
) -> Result<(), DaemonError> {
    let Services { sockets, metrics, reload } = services;
    cores::pin(core);
    let pending = Arc::new(Mutex::new(Output::with_capacity(16)));
    let _sockets = if sockets {
        let uapi = UapiServer::bind(&sh.control.name, Handler { sh: sh.clone(), pending: pending.clone() });
        let uapi = match uapi {
            Ok(u) => u,
            Err(e) => {
                sh.stop();
                return Err(DaemonError::Uapi(e));
            }
        };
        let stats = match StatsServer::start(sh.clone()) {
            Ok(s) => s,
            Err(e) => {
                sh.stop();
                return Err(DaemonError::Stats(e));
            }
        };
        // The metrics endpoint: its own thread, reading what the workers publish.
        let metrics = match metrics {
            Some(m) => {
                let snap_sh = sh.clone();
                let render =
                    Box::new(move |om| super::metrics::render(super::metrics::snapshot(&snap_sh, m.peers), om));
                match MetricsServer::start(m.addr, render) {
                    Ok(s) => {
                        tracing::info!("metrics endpoint on http://{}/metrics", s.local_addr());
                        Some(s)
                    }
                    Err(e) => {
                        sh.stop();
                        return Err(DaemonError::Metrics(m.addr, e));
                    }
                }
            }
            None => None,
        };
        Some((uapi, stats, metrics))
    } else {
        None
    };
    let now = sh.data.clock.now();
    let rng = match CoreRng::from_os(now) {
        Ok(r) => r,
        Err(e) => {
            sh.stop();
            return Err(DaemonError::Rng(e));
        }
    };
    let mut c = Control {
        sh: sh.clone(),
        rng,
        pool,
        out: Output::with_capacity(256),
        keys_since: now,
        wheel: Wheel::new(now),
        due: Vec::new(),
        walk: Walk::default(),
        notes: Vec::new(),
        neigh_expired_at: now,
    };
    if sockets {
        // Ports (the TUN among them) are open and the UAPI socket is bound: `wg` and
        // `ip addr add ... dev <name>` work from here on.
        crate::sdnotify::notify_or_warn(&format!(
            "READY=1\nSTATUS=serving {} ({} worker(s), UDP {})",
            sh.control.name,
            sh.workers.len(),
            sh.data.listen_port.load(Ordering::Relaxed)
        ));
    }
    let reload_handler = Handler { sh: sh.clone(), pending: pending.clone() };
    // Every peer gets a first look from the wheel (persistent keepalives configured at start).
    {
        let dev = sh.data.device.load();
        for p in dev.peers() {
            c.wheel.insert(now, p.id());
        }
    }
    let mut sleep = Duration::from_micros(50);
    while !stop.load(Ordering::Relaxed) && !sh.stopping() {
        let now = sh.data.clock.now();
        {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            c.out.events.append(&mut p.events);
            c.out.transmits.append(&mut p.transmits);
        }
        let mut work = c.iteration(now);
        if let (Some(t), Some(q)) = (tap.as_mut(), sh.handoff.exception.as_ref()) {
            work += t.poll(q, &sh.data.wan);
        }
        link.tick(&sh);
        if let Some(r) = &reload {
            r.check(&reload_handler);
        }
        if let Some(msg) = super::panicked() {
            sh.fail(msg);
            break;
        }
        if work > 0 {
            sleep = Duration::from_micros(50);
        } else {
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(Duration::from_millis(2));
        }
    }
    if sockets {
        crate::sdnotify::notify_or_warn("STOPPING=1\nSTATUS=stopping");
    }
    sh.stop();
    Ok(())
}

impl Control {
    fn iteration(&mut self, now: Timestamp) -> usize {
        let sh = self.sh.clone();
        let dev = sh.data.device.load();
        let mut work = 0;
        self.rng.reseed_if_due(now);
        // The keys this loop prepared to seal staged packets: dropped as the workers drop theirs.
        if now - self.keys_since >= super::worker::KEY_CACHE_MAX_AGE {
            self.out.forget_keys();
            self.keys_since = now;
        }
        // Peers removed by configuration leave the wheel (unless their id names a new peer).
        let removed = std::mem::take(&mut *sh.control.removed.lock().unwrap_or_else(|e| e.into_inner()));
        for id in removed {
            if dev.peer(id).is_none() {
                self.wheel.remove(id);
            }
        }
        // Notifications from the workers, for peers that still exist (a removed peer's were
        // cleared; its id may name a new peer, whose notifications these then are).
        let mut notes = std::mem::take(&mut self.notes);
        work += sh.handoff.notes.drain(&mut self.walk, NOTE_BUDGET, |p| notes.push(p));
        for p in notes.drain(..) {
            if dev.peer(p.peer()).is_some() {
                for e in p.events() {
                    self.event(&dev, now, e);
                }
            }
        }
        self.notes = notes;
        // Our own events, until quiet (what is left waits in `out` for the next iteration).
        for _ in 0..8 {
            if self.out.events.is_empty() {
                break;
            }
            let events: Vec<Event> = self.out.events.drain(..).collect();
            work += events.len();
            for e in events {
                self.event(&dev, now, e);
            }
        }
        // Timers.
        self.wheel.advance(now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for &p in &due {
            if let Some(next) = dev.poll_timers(now, &mut self.rng, p, &mut self.out) {
                self.wheel.insert(next, p);
            }
        }
        work += due.len();
        self.due = due;
        self.due.clear();
        // Frames waiting for a next hop that never answered.
        if now.as_nanos().saturating_sub(self.neigh_expired_at.as_nanos()) >= NEIGH_EXPIRE_NS {
            self.neigh_expired_at = now;
            sh.data.neigh.expire(now);
        }
        // Control messages to the workers' WAN queues.
        let transmits: Vec<Transmit> = self.out.transmits.drain(..).collect();
        for t in transmits {
            let tos = if t.payload().first().is_some_and(|&ty| ty != wgpmd_proto::messages::MESSAGE_DATA) {
                HANDSHAKE_DSCP
            } else {
                0
            };
            if let Some(mut b) = self.pool.alloc() {
                if let Ok(d) = b.append(t.payload().len()) {
                    d.copy_from_slice(t.payload());
                    self.send(TxJob { to: t.to, buf: b, tos });
                }
            } else {
                sh.control.counters.tx_jobs_dropped.fetch_add(1, Ordering::Relaxed);
            }
            work += 1;
        }
        *sh.control.counters.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.out.stats.clone();
        sh.control.counters.wheel_entries.store(self.wheel.len() as u64, Ordering::Relaxed);
        work
    }

    /// Hand a message to the workers (counted if their queue is full).
    fn send(&self, job: TxJob) {
        if self.sh.handoff.tx_jobs.push(job).is_err() {
            self.sh.control.counters.tx_jobs_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(&mut self, dev: &Device, now: Timestamp, e: Event) {
        match e {
            Event::HandshakeWanted(p) => {
                let _ = dev.initiate(now, &mut self.rng, p, &mut self.out);
            }
            Event::Wake { peer, at } => {
                self.wheel.insert(at, peer);
            }
            Event::GiveUp(p) => {
                let n = self.sh.handoff.staging.take(p).len();
                self.sh.control.counters.staged_dropped_giveup.fetch_add(n as u64, Ordering::Relaxed);
            }
            Event::SessionReady(p) | Event::SessionConfirmed(p) => {
                let staged = self.sh.handoff.staging.take(p);
                if staged.is_empty() {
                    if matches!(e, Event::SessionReady(_)) {
                        let _ = dev.send_keepalive(now, p, &mut self.out);
                    }
                    return;
                }
                for mut buf in staged {
                    let len = buf.len();
                    if buf.prepend(DATA_HEADER_LEN).is_err() {
                        continue;
                    }
                    match dev.encapsulate_to(now, p, buf.data_and_tailroom_mut(), len, &mut self.out) {
                        Ok(e) => {
                            if buf.set_len(e.len).is_ok() {
                                self.send(TxJob { to: e.to, buf, tos: 0 });
                                self.sh.control.counters.staged_flushed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(DropReason::NoSession) => {
                            let _ = buf.trim_front(DATA_HEADER_LEN);
                            let d = self.sh.handoff.staging.stage(p, buf);
                            let c = &self.sh.control.counters;
                            c.staged_dropped_restage
                                .fetch_add(u64::from(d.peer_cap) + u64::from(d.pool_cap), Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use nic_backends::Port;

    use super::LinkWatch;

    #[test]
    fn link_transitions_are_reported_once_each() {
        let (port, _other) = nic_backends::mem::pair("wan", "peer", 1, 8);
        let carrier = port.link_switch();
        let read = || port.link_up();
        let mut w = LinkWatch::new("mem:wan", &read);
        assert_eq!(w.poll(), None, "up at start: nothing to say");
        assert_eq!(w.poll(), None);
        carrier.store(false, Ordering::Relaxed);
        assert_eq!(w.poll(), Some(false), "went down");
        assert_eq!(w.poll(), None, "still down: said once");
        carrier.store(true, Ordering::Relaxed);
        assert_eq!(w.poll(), Some(true), "came back");
        assert_eq!(w.poll(), None);
        // Down at start is worth a line too.
        carrier.store(false, Ordering::Relaxed);
        let mut w = LinkWatch::new("mem:wan", &read);
        assert_eq!(w.poll(), Some(false));
        assert_eq!(w.poll(), None);
    }
}
