//! Counters: each worker counts locally and publishes every few iterations; the stats socket
//! (`/var/run/wgpmd/<name>.sock`, `wgpmd stats <name>`) prints them as `key=value` lines.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nic_backends::QueueStats;

use super::handshakes::{HsCounters, HsDrop};
use super::Shared;
use crate::wan::{Refusal, WanDrop};
use wgpmd_proto::device::{DropReason, Stats};

/// Directory of the stats sockets.
pub const STATS_DIR: &str = "/var/run/wgpmd";

/// A worker's counters, owned by the worker while it runs (some written per packet). Aligned
/// to a cache line, so that the worker's copy shares no line with anything another thread
/// writes, and the published copies in [`WorkerCounters`] (each behind its own lock, in one
/// vector) share none with each other.
#[derive(Debug, Clone, Default)]
#[repr(align(64))]
pub(crate) struct Local {
    pub wan_rx: u64,
    pub inner_rx: u64,
    pub data_rx: u64,
    pub data_tx: u64,
    pub arp_replies: u64,
    pub arp_requests: u64,
    pub icmp_replies: u64,
    pub hs: HsCounters,
    pub transmits_dropped: u64,
    pub staged_dropped: u64,
    pub staged_dropped_cap: u64,
    pub unresolved_dropped: u64,
    pub wan_tx_dropped: u64,
    pub inner_tx_dropped: u64,
    pub no_ipv6_wan: u64,
    pub no_route: u64,
    pub pmtu_icmp_sent: u64,
    pub too_big_dropped: u64,
    /// Frames queued for the exception path's kernel TAP (not consumed, and ARP/ND mirrored).
    pub exc_to_kernel: u64,
    /// Of those, copies of ARP/ND frames wgpmd also answered or learned from.
    pub exc_mirrored: u64,
    /// Frames for the kernel over the worker's share of `--exception-rate`.
    pub exc_rate_dropped: u64,
    /// Frames for the kernel that found its queue full (or, for a mirror, no buffer).
    pub exc_queue_full: u64,
    /// Frames not consumed and not for the kernel either (another host's MAC, another VLAN,
    /// not Ethernet): dropped.
    pub exc_not_for_us: u64,
    /// Frames from the kernel put on the WAN transmit list.
    pub exc_from_kernel: u64,
    pub wan_drops: [u64; WanDrop::COUNT],
    /// Poll iterations in which queued DH work waited for its share of the time behind a
    /// backlog of data (`handshakes::Share`).
    pub hs_deferred: u64,
    /// Longest iteration since start, in µs (polling and processing; not the idle sleep).
    pub max_iteration_us: u64,
    /// Longest iteration in the current and the previous window of [`ITERATION_WINDOW`], in µs.
    pub max_iteration_us_window: u64,
    pub device: Stats,
    pub wan_queue: QueueStats,
    pub inner_queue: QueueStats,
}

/// The window of `max_iteration_us_recent`: it covers the last 2 to 4 seconds.
pub(crate) const ITERATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// A worker's published counters (a snapshot under a lock only the publisher and readers
/// take, every 64 iterations: never per packet). The worker never waits for it: while a reader
/// (the stats socket, the metrics endpoint) holds it, the worker skips that publication.
#[derive(Debug, Default)]
pub struct WorkerCounters(Mutex<Local>);

impl WorkerCounters {
    /// Publish, waiting for the lock (the worker's last publication, at its end).
    pub(crate) fn store(&self, l: &Local) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = l.clone();
    }
    /// Publish unless a reader holds the lock now (then the next publication carries it).
    pub(crate) fn try_store(&self, l: &Local) {
        match self.0.try_lock() {
            Ok(mut g) => g.clone_from(l),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().clone_from(l),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }
    pub(crate) fn load(&self) -> Local {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The control core's counters.
#[derive(Debug, Default)]
pub(crate) struct ControlCounters {
    pub stats: Mutex<Stats>,
    pub staged_flushed: AtomicU64,
    pub staged_dropped_giveup: AtomicU64,
    /// Staged packets dropped when a flush found no session and staged them again.
    pub staged_dropped_restage: AtomicU64,
    /// Control messages not sent: no buffer, or the workers' queue full.
    pub tx_jobs_dropped: AtomicU64,
    /// Entries on the timer wheel (a gauge, at most one per peer).
    pub wheel_entries: AtomicU64,
}

/// Every counter as `key=value` lines.
pub(crate) fn render(sh: &Shared) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: u64| {
        s.push_str(k);
        s.push('=');
        s.push_str(&v.to_string());
        s.push('\n');
    };
    for (i, w) in sh.workers.iter().enumerate() {
        let l = w.load();
        let p = format!("worker{i}.");
        for (k, v) in [
            ("wan_rx", l.wan_rx),
            ("inner_rx", l.inner_rx),
            ("data_rx", l.data_rx),
            ("data_tx", l.data_tx),
            ("arp_replies", l.arp_replies),
            ("arp_requests", l.arp_requests),
            ("icmp_replies", l.icmp_replies),
            ("handshakes_queued", l.hs.queued),
            ("handshakes_processed", l.hs.processed),
            ("handshakes_failed", l.hs.failed),
            ("handshake_queue_depth", sh.handoff.hs_load.depth(i) as u64),
            ("handshakes_deferred", l.hs_deferred),
            ("cookie_replies_accepted", l.hs.cookie_replies),
            ("transmits_dropped", l.transmits_dropped),
            ("staged_dropped", l.staged_dropped),
            ("staged_dropped_cap", l.staged_dropped_cap),
            ("unresolved_dropped", l.unresolved_dropped),
            ("wan_tx_dropped", l.wan_tx_dropped),
            ("inner_tx_dropped", l.inner_tx_dropped),
            ("no_ipv6_wan", l.no_ipv6_wan),
            ("no_route", l.no_route),
            ("pmtu_icmp_sent", l.pmtu_icmp_sent),
            ("too_big_dropped", l.too_big_dropped),
            ("exception_to_kernel", l.exc_to_kernel),
            ("exception_mirrored", l.exc_mirrored),
            ("exception_rate_dropped", l.exc_rate_dropped),
            ("exception_queue_full", l.exc_queue_full),
            ("exception_not_for_us", l.exc_not_for_us),
            ("exception_from_kernel", l.exc_from_kernel),
            ("max_iteration_us", l.max_iteration_us),
            ("max_iteration_us_recent", l.max_iteration_us_window),
            ("aead_opened", l.device.aead_opened),
            ("aead_sealed", l.device.aead_sealed),
            ("keepalives_received", l.device.keepalives_received),
            ("index_cache_hits", l.device.index_cache_hits),
            ("index_cache_misses", l.device.index_cache_misses),
            ("mac1_valid", l.device.mac1_valid),
            ("dh_operations", l.device.dh_operations),
            ("cookies_sent", l.device.cookies_sent),
            ("initiations_sent", l.device.initiations_sent),
            ("responses_sent", l.device.responses_sent),
            ("sessions", l.device.sessions),
            ("wan_queue_rx_packets", l.wan_queue.rx_packets),
            ("wan_queue_tx_packets", l.wan_queue.tx_packets),
            ("wan_queue_rx_dropped", l.wan_queue.rx_dropped),
            ("wan_queue_tx_copied", l.wan_queue.tx_copied),
            ("inner_queue_rx_packets", l.inner_queue.rx_packets),
            ("inner_queue_tx_packets", l.inner_queue.tx_packets),
            ("inner_queue_tx_dropped", l.inner_queue.tx_dropped),
            ("inner_queue_rx_dropped", l.inner_queue.rx_dropped),
            ("inner_queue_rx_errors", l.inner_queue.rx_errors),
            ("inner_queue_tx_errors", l.inner_queue.tx_errors),
            ("wan_queue_rx_bytes", l.wan_queue.rx_bytes),
            ("wan_queue_tx_bytes", l.wan_queue.tx_bytes),
            ("wan_queue_rx_errors", l.wan_queue.rx_errors),
            ("wan_queue_tx_errors", l.wan_queue.tx_errors),
            ("wan_queue_tx_dropped", l.wan_queue.tx_dropped),
            ("wan_queue_rx_no_buffers", l.wan_queue.rx_no_buffers),
            ("wan_queue_iova_refused", l.wan_queue.iova_refused),
            ("wan_queue_bad_used_id", l.wan_queue.bad_used_id),
            ("wan_queue_bad_used_len", l.wan_queue.bad_used_len),
            ("wan_queue_bad_used_idx", l.wan_queue.bad_used_idx),
            ("wan_queue_rx_gso_frames", l.wan_queue.rx_gso_frames),
            ("wan_queue_rx_gso_segments", l.wan_queue.rx_gso_segments),
            ("inner_queue_rx_gso_frames", l.inner_queue.rx_gso_frames),
            ("inner_queue_rx_gso_segments", l.inner_queue.rx_gso_segments),
            ("inner_queue_tx_gro_frames", l.inner_queue.tx_gro_frames),
            ("inner_queue_tx_gro_packets", l.inner_queue.tx_gro_packets),
            ("inner_queue_rx_dropped", l.inner_queue.rx_dropped),
            ("inner_queue_rx_errors", l.inner_queue.rx_errors),
            ("inner_queue_tx_errors", l.inner_queue.tx_errors),
            ("inner_queue_tx_dropped", l.inner_queue.tx_dropped),
        ] {
            line(&format!("{p}{k}"), v);
        }
        for r in HsDrop::ALL {
            line(&format!("{p}hs_dropped_{}", r.name()), l.hs.dropped[r as usize]);
        }
        for r in WanDrop::ALL {
            line(&format!("{p}wan_drop.{r:?}"), l.wan_drops[r as usize]);
        }
        for r in DropReason::ALL {
            line(&format!("{p}drop.{r:?}"), l.device.drops_for(r));
        }
    }
    let c = &sh.control.counters;
    line("control.staged_flushed", c.staged_flushed.load(Ordering::Relaxed));
    line("control.staged_dropped_giveup", c.staged_dropped_giveup.load(Ordering::Relaxed));
    line("control.staged_dropped_restage", c.staged_dropped_restage.load(Ordering::Relaxed));
    line("control.tx_jobs_dropped", c.tx_jobs_dropped.load(Ordering::Relaxed));
    let st = c.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (k, v) in [
        ("mac1_valid", st.mac1_valid),
        ("dh_operations", st.dh_operations),
        ("cookies_sent", st.cookies_sent),
        ("initiations_sent", st.initiations_sent),
        ("responses_sent", st.responses_sent),
        ("sessions", st.sessions),
    ] {
        line(&format!("control.{k}"), v);
    }
    for r in DropReason::ALL {
        line(&format!("control.drop.{r:?}"), st.drops_for(r));
    }
    if let Some(q) = &sh.handoff.exception {
        for (k, v) in q.counters() {
            line(&format!("exception.{k}"), v);
        }
    }
    bounded(sh, &mut line);
    // The device-wide load decision, fed the queues' depth now (as a worker would).
    let under_load = {
        let dev = sh.data.device.load();
        sh.handoff.hs_load.under_load(&dev, sh.data.clock.now())
    };
    line("under_load", u64::from(under_load));
    line("wan_link_up", u64::from(sh.control.wan_link_up.load(Ordering::Relaxed)));
    line("log_messages_suppressed", crate::logging::suppressed());
    // The WAN backend's own counters (DPDK: `dpdk_<xstat name>`, link state), read now.
    // The inner backend's (vhost-user: `vhost_user_<name>`).
    for extra in [&sh.control.wan_extra, &sh.control.inner_extra].into_iter().flatten() {
        for (k, v) in extra() {
            line(&k, v);
        }
    }
    s
}

/// The size of every bounded structure (gauges) and what keeping each bound cost (counters):
/// see docs/OPERATIONS.md.
fn bounded(sh: &Shared, line: &mut impl FnMut(&str, u64)) {
    let super::metrics::Census { peers, with_session, .. } = super::metrics::census(&sh.data.device, 0);
    let h = &sh.handoff;
    let n = sh.data.neigh.stats();
    let staged_dropped_cap: u64 = sh.workers.iter().map(|w| w.load().staged_dropped_cap).sum();
    for (k, v) in [
        ("peers", peers as u64),
        ("peers_with_session", with_session as u64),
        ("wheel_entries", sh.control.counters.wheel_entries.load(Ordering::Relaxed)),
        ("event_queue_depth", h.notes.depth() as u64),
        ("event_queue_capacity", super::notify::DIRTY_CAPACITY as u64),
        ("events_overflowed", h.notes.overflows()),
        ("handshake_queue_depth", h.hs_load.queued() as u64),
        ("handshake_queue_capacity", (h.hs_capacity * sh.workers.len()) as u64),
        ("tx_jobs_depth", h.tx_jobs.len() as u64),
        ("tx_jobs_capacity", super::TX_JOBS as u64),
        ("staged_packets", h.staging.len() as u64),
        ("staged_capacity", h.staging.capacity() as u64),
        ("staged_dropped_cap", staged_dropped_cap),
        ("neigh_entries", n.entries as u64),
        ("neigh_probation", n.probation as u64),
        ("neigh_max_entries", sh.data.neigh.max_entries() as u64),
        ("neigh_parked_hops", n.parked_hops as u64),
        ("neigh_parked_frames", n.parked_frames as u64),
        ("neigh_evicted", n.evicted),
        ("neigh_resolutions_failed", n.failed),
        ("neigh_parked_expired", n.expired_frames),
    ] {
        line(k, v);
    }
    for r in Refusal::ALL {
        line(&format!("neigh_refused_{}", r.name()), n.refused[r as usize]);
    }
}

/// Serves `render` on `/var/run/wgpmd/<name>.sock` until dropped.
pub(crate) struct StatsServer {
    path: PathBuf,
}

impl StatsServer {
    pub fn start(sh: Arc<Shared>) -> std::io::Result<StatsServer> {
        std::fs::create_dir_all(STATS_DIR)?;
        let path = PathBuf::from(STATS_DIR).join(format!("{}.sock", sh.control.name));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::thread::Builder::new().name("wgpmd-stats".into()).spawn(move || {
            for conn in listener.incoming() {
                if sh.stopping() {
                    break;
                }
                if let Ok(mut c) = conn {
                    // A client that does not read cannot hold the thread (the answer is a few
                    // KiB and fits the socket buffer; the timeout bounds the rest).
                    let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(1)));
                    let _ = c.write_all(render(&sh).as_bytes());
                }
            }
        })?;
        Ok(StatsServer { path })
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        // Wake the accept loop so it sees the stop flag, then remove the socket.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read a running daemon's counters (what `wgpmd stats NAME` prints).
pub fn query_stats(name: &str) -> std::io::Result<String> {
    let path = PathBuf::from(STATS_DIR).join(format!("{name}.sock"));
    let mut c = UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("{}: {e} (is `wgpmd run {name}` running?)", path.display()))
    })?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's counters (written per packet) and their published copies (one lock each, side
    /// by side in `Shared::workers`) fill whole cache lines: no two workers' share one.
    #[test]
    fn workers_counters_share_no_cache_line() {
        for (align, size) in [
            (core::mem::align_of::<Local>(), core::mem::size_of::<Local>()),
            (core::mem::align_of::<WorkerCounters>(), core::mem::size_of::<WorkerCounters>()),
        ] {
            assert_eq!(align % 64, 0);
            assert_eq!(size % 64, 0);
        }
        let published: Vec<WorkerCounters> = (0..2).map(|_| WorkerCounters::default()).collect();
        let (a, b) = (core::ptr::from_ref(&published[0]) as usize, core::ptr::from_ref(&published[1]) as usize);
        assert!((a + core::mem::size_of::<WorkerCounters>() - 1) / 64 < b / 64);
    }
}
