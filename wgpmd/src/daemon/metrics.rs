//! The metrics endpoint's content: a [`Snapshot`] of what the workers and the control core
//! last published (the same counters as `wgpmd stats`) and the daemon's gauges, rendered as
//! OpenMetrics or Prometheus text with prometheus-client. docs/OPERATIONS.md ("Metrics") lists
//! every metric.
//!
//! Taking a snapshot never makes a worker wait: the workers' counters are copies they publish
//! every 64 poll iterations (a worker skips a publication while a reader holds its copy), the
//! gauges are atomics, and the device's read lock is held a chunk of peer ids at a time to
//! count the peers and to clone the handles of the peers exported one by one
//! (`--metrics-peers`; see [`census`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use wgpmd_proto::device::{DropReason, Peer, Published, Stats};

use super::handshakes::{HsDrop, HS_TIME_BOUNDS_NS};
use super::stats::Local;
use super::Shared;
use crate::wan::{NeighStats, Refusal, WanDrop};

/// The port backends compiled into this binary (the list `wgpmd --version` prints, without
/// its remarks in parentheses).
pub(crate) fn backends() -> Vec<&'static str> {
    nic_backends::PORT_BACKENDS.iter().map(|b| b.split(' ').next().unwrap_or(b)).collect()
}

/// One exported peer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerSeries {
    /// Base64, as `wg` prints it.
    pub public_key: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Unix time of the latest handshake (0: none).
    pub latest_handshake: f64,
}

/// What one scrape reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub interface: String,
    pub version: &'static str,
    pub backends: Vec<&'static str>,
    pub uptime_seconds: f64,
    pub start_time_seconds: f64,
    /// Each worker's published counters, in worker order.
    pub workers: Vec<Local>,
    /// Each worker's handshake queue depth now.
    pub hs_depth: Vec<u64>,
    /// Each worker's handshake queue capacity.
    pub hs_capacity: u64,
    /// The control core's device counters and its own.
    pub control: Stats,
    pub staged_flushed: u64,
    pub staged_dropped_giveup: u64,
    pub staged_dropped_restage: u64,
    pub tx_jobs_dropped: u64,
    pub peers: u64,
    pub peers_with_session: u64,
    pub wheel_entries: u64,
    pub event_queue_depth: u64,
    pub event_queue_capacity: u64,
    pub events_overflowed: u64,
    pub tx_jobs_depth: u64,
    pub tx_jobs_capacity: u64,
    pub staged_packets: u64,
    pub staged_capacity: u64,
    pub neigh: NeighStats,
    pub neigh_max_entries: u64,
    pub under_load: bool,
    pub wan_link_up: bool,
    /// The WAN backend's own counters (DPDK xstats, the AF_XDP program's counters).
    pub wan_extra: Vec<(String, u64)>,
    /// The inner backend's own counters (vhost-user).
    pub inner_extra: Vec<(String, u64)>,
    /// The exception path's control-side counters and gauges (`--exception`), if it is on.
    pub exception: Vec<(&'static str, u64)>,
    pub log_suppressed: u64,
    /// Per-peer series (at most `--metrics-peers`).
    pub peer_series: Vec<PeerSeries>,
    /// Peers not exported because of the limit.
    pub peers_omitted: u64,
}

/// Peer ids looked at per hold of the device's read lock.
const CENSUS_CHUNK: u32 = 4096;

/// The peers counted, and the handles of the first few.
pub(crate) struct Census {
    /// Configured peers.
    pub peers: usize,
    /// Of which with a live session.
    pub with_session: usize,
    /// The first `limit` peers in id order.
    pub exported: Vec<Arc<Peer>>,
}

/// Count the peers and those with a session, and take the handles of the first `limit`,
/// holding the device's read lock for at most [`CENSUS_CHUNK`] peer ids at a time: a
/// configuration change waiting for the write lock (and the workers queued behind it) waits
/// for one chunk, not for a walk over a million peers. Peers added or removed during the walk
/// may be counted or missed (a gauge read between two changes).
pub(crate) fn census(device: &Published, limit: usize) -> Census {
    let (total, slots) = {
        let dev = device.load();
        (dev.peer_count(), dev.max_peers().max(wgpmd_proto::messages::MAX_PEERS_PER_DEVICE))
    };
    let mut c = Census { peers: total, with_session: 0, exported: Vec::with_capacity(limit.min(total)) };
    let (mut seen, mut start) = (0usize, 0u32);
    while seen < total && (start as usize) < slots {
        let end = start.saturating_add(CENSUS_CHUNK).min(u32::try_from(slots).unwrap_or(u32::MAX));
        let dev = device.load();
        for id in start..end {
            if let Some(p) = dev.peer(id) {
                seen += 1;
                c.with_session += usize::from(p.current_local_index().is_some());
                if c.exported.len() < limit {
                    c.exported.push(p.clone());
                }
            }
        }
        drop(dev);
        if end == start {
            break;
        }
        start = end;
    }
    c
}

/// Read everything a scrape reports; `peer_limit` peers get their own series.
pub(crate) fn snapshot(sh: &Shared, peer_limit: usize) -> Snapshot {
    let workers: Vec<Local> = sh.workers.iter().map(|w| w.load()).collect();
    let h = &sh.handoff;
    let c = &sh.control.counters;
    let now = sh.data.clock.now();
    let under_load = {
        let dev = sh.data.device.load();
        h.hs_load.under_load(&dev, now)
    };
    let Census { peers, with_session, exported } = census(&sh.data.device, peer_limit);
    let b64 = base64::engine::general_purpose::STANDARD;
    let peer_series = exported
        .iter()
        .map(|p| PeerSeries {
            public_key: b64.encode(p.public_key()),
            rx_bytes: p.rx_bytes(),
            tx_bytes: p.tx_bytes(),
            latest_handshake: p.last_handshake().map_or(0.0, |t| {
                let (s, ns) = sh.data.clock.to_unix(t);
                s as f64 + f64::from(ns) / 1e9
            }),
        })
        .collect();
    let start_ns = sh.data.clock.wall_at_start_ns;
    Snapshot {
        interface: sh.control.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        backends: backends(),
        uptime_seconds: now.as_nanos().saturating_sub(1) as f64 / 1e9,
        start_time_seconds: start_ns as f64 / 1e9,
        hs_depth: (0..workers.len()).map(|i| h.hs_load.depth(i) as u64).collect(),
        workers,
        hs_capacity: h.hs_capacity as u64,
        control: c.stats.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        staged_flushed: c.staged_flushed.load(Ordering::Relaxed),
        staged_dropped_giveup: c.staged_dropped_giveup.load(Ordering::Relaxed),
        staged_dropped_restage: c.staged_dropped_restage.load(Ordering::Relaxed),
        tx_jobs_dropped: c.tx_jobs_dropped.load(Ordering::Relaxed),
        peers: peers as u64,
        peers_with_session: with_session as u64,
        wheel_entries: c.wheel_entries.load(Ordering::Relaxed),
        event_queue_depth: h.notes.depth() as u64,
        event_queue_capacity: super::notify::DIRTY_CAPACITY as u64,
        events_overflowed: h.notes.overflows(),
        tx_jobs_depth: h.tx_jobs.len() as u64,
        tx_jobs_capacity: super::TX_JOBS as u64,
        staged_packets: h.staging.len() as u64,
        staged_capacity: h.staging.capacity() as u64,
        neigh: sh.data.neigh.stats(),
        neigh_max_entries: sh.data.neigh.max_entries() as u64,
        under_load,
        wan_link_up: sh.control.wan_link_up.load(Ordering::Relaxed),
        wan_extra: sh.control.wan_extra.as_ref().map_or_else(Vec::new, |f| f()),
        inner_extra: sh.control.inner_extra.as_ref().map_or_else(Vec::new, |f| f()),
        exception: sh.handoff.exception.as_ref().map_or_else(Vec::new, |q| q.counters()),
        log_suppressed: crate::logging::suppressed(),
        peers_omitted: peers.saturating_sub(peer_limit) as u64,
        peer_series,
    }
}

/// `CamelCase` → `camel_case` (the drop reasons' label values).
pub(crate) fn snake(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else {
            s.push(ch);
        }
    }
    s
}

type Labels = Vec<(&'static str, String)>;

fn worker_label(i: usize) -> Labels {
    vec![("worker", i.to_string())]
}

/// Writes one metric family after another.
struct Out<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    fn family<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        ty: MetricType,
        rows: impl IntoIterator<Item = (L, f64)>,
    ) -> std::fmt::Result {
        let mut m = self.0.encode_descriptor(name, help, None, ty)?;
        for (labels, v) in rows {
            let mut e = m.encode_family(&labels)?;
            match ty {
                // Counters are integers here; f64 keeps one path for both.
                MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(&(v as u64), None)?,
                _ => e.encode_gauge(&v)?,
            }
        }
        Ok(())
    }
    /// A counter family (`name` without `_total`: the encoder adds it).
    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        self.family(name, help, MetricType::Counter, rows.into_iter().map(|(l, v)| (l, v as f64)))
    }
    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, f64)>,
    ) -> std::fmt::Result {
        self.family(name, help, MetricType::Gauge, rows)
    }
    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        self.0.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
    }
    fn gauge(&mut self, name: &str, help: &str, v: f64) -> std::fmt::Result {
        self.0.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&v)
    }
}

/// A per-worker counter from each worker's `Local`.
type WorkerField = fn(&Local) -> u64;

/// The per-worker counters: (name, help, field).
const WORKER_COUNTERS: &[(&str, &str, WorkerField)] = &[
    ("wgpmd_wan_frames_received", "Frames taken off the worker's WAN queue", |l| l.wan_rx),
    ("wgpmd_inner_packets_received", "Packets taken off the worker's inner queue", |l| l.inner_rx),
    (
        "wgpmd_data_packets_decrypted",
        "Transport data packets decrypted and handed to the inner port (keepalives excluded)",
        |l| l.data_rx,
    ),
    ("wgpmd_data_packets_encrypted", "Inner packets encrypted and sent towards a peer", |l| l.data_tx),
    ("wgpmd_arp_replies", "ARP replies and neighbour advertisements sent", |l| l.arp_replies),
    ("wgpmd_neighbour_solicitations", "ARP requests and neighbour solicitations sent", |l| l.arp_requests),
    ("wgpmd_icmp_echo_replies", "ICMP echo replies sent for the WAN address", |l| l.icmp_replies),
    ("wgpmd_pmtu_icmp_sent", "Fragmentation-needed / packet-too-big errors written to the inner port", |l| {
        l.pmtu_icmp_sent
    }),
    ("wgpmd_handshakes_queued", "Handshake messages that passed the screen and were queued", |l| l.hs.queued),
    ("wgpmd_handshakes_processed", "Queued handshake messages processed", |l| l.hs.processed),
    ("wgpmd_handshakes_failed", "Processed handshake messages that failed", |l| l.hs.failed),
    ("wgpmd_cookie_replies_accepted", "Cookie replies accepted", |l| l.hs.cookie_replies),
    (
        "wgpmd_handshakes_deferred",
        "Poll iterations in which queued handshake DH work waited for its share of the time behind a backlog of data",
        |l| l.hs_deferred,
    ),
];

/// Device counters, kept by each worker and by the control core (`worker="control"`).
type StatsField = fn(&Stats) -> u64;

const DEVICE_COUNTERS: &[(&str, &str, StatsField)] = &[
    ("wgpmd_aead_opened", "Transport data messages that passed authentication", |s| s.aead_opened),
    ("wgpmd_aead_sealed", "Transport data messages sealed", |s| s.aead_sealed),
    ("wgpmd_keepalives_received", "Keepalives received", |s| s.keepalives_received),
    ("wgpmd_index_cache_hits", "Receiver-index lookups answered by the worker's own cache", |s| s.index_cache_hits),
    ("wgpmd_index_cache_misses", "Receiver-index lookups that went to the shared index table", |s| {
        s.index_cache_misses
    }),
    ("wgpmd_mac1_valid", "Handshake messages whose mac1 verified", |s| s.mac1_valid),
    ("wgpmd_dh_operations", "X25519 operations for handshakes", |s| s.dh_operations),
    ("wgpmd_cookies_sent", "Cookie replies sent", |s| s.cookies_sent),
    ("wgpmd_initiations_sent", "Handshake initiations sent", |s| s.initiations_sent),
    ("wgpmd_responses_sent", "Handshake responses sent", |s| s.responses_sent),
    ("wgpmd_sessions_established", "Sessions established (either role)", |s| s.sessions),
];

/// The worker's own drop counters (label `reason`).
const DATAPATH_DROPS: &[(&str, WorkerField)] = &[
    ("transmit_no_buffer", |l| l.transmits_dropped),
    ("staged_peer_cap", |l| l.staged_dropped),
    ("staged_pool_cap", |l| l.staged_dropped_cap),
    ("unresolved_next_hop", |l| l.unresolved_dropped),
    ("wan_tx_full", |l| l.wan_tx_dropped),
    ("inner_tx_full", |l| l.inner_tx_dropped),
    ("no_ipv6_wan", |l| l.no_ipv6_wan),
    ("no_wan_route", |l| l.no_route),
    ("too_big", |l| l.too_big_dropped),
];

type QueueField = fn(&nic_backends::QueueStats) -> u64;

const QUEUE_ERRORS: &[(&str, QueueField)] = &[
    ("rx_dropped", |q| q.rx_dropped),
    ("tx_dropped", |q| q.tx_dropped),
    ("rx_errors", |q| q.rx_errors),
    ("tx_errors", |q| q.tx_errors),
    ("rx_no_buffers", |q| q.rx_no_buffers),
    ("iova_refused", |q| q.iova_refused),
    ("bad_used_id", |q| q.bad_used_id),
    ("bad_used_len", |q| q.bad_used_len),
    ("bad_used_idx", |q| q.bad_used_idx),
];

impl Snapshot {
    fn per_worker(&self, f: WorkerField) -> Vec<(Labels, u64)> {
        self.workers.iter().enumerate().map(|(i, l)| (worker_label(i), f(l))).collect()
    }

    /// (labels, queue stats) for every port queue: `port` is `wan` or `inner`, `queue` the
    /// worker's index (worker i owns queue i of each port).
    fn queues(&self) -> Vec<(Labels, &nic_backends::QueueStats)> {
        let mut v = Vec::new();
        for (port, pick) in [
            ("wan", (|l: &Local| &l.wan_queue) as fn(&Local) -> &nic_backends::QueueStats),
            ("inner", |l: &Local| &l.inner_queue),
        ] {
            for (i, l) in self.workers.iter().enumerate() {
                v.push((vec![("port", port.to_string()), ("queue", i.to_string())], pick(l)));
            }
        }
        v
    }

    fn encode_all(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut o = Out(enc);
        o.0.encode_descriptor(
            "wgpmd_build",
            "The wgpmd version and the port backends compiled in",
            None,
            MetricType::Info,
        )?
        .encode_info(&vec![("version", self.version.to_string()), ("backends", self.backends.join(","))])?;
        o.gauge("wgpmd_uptime_seconds", "Seconds since the daemon started", self.uptime_seconds)?;
        o.gauge("wgpmd_start_time_seconds", "Unix time the daemon started", self.start_time_seconds)?;
        for &(name, help, f) in WORKER_COUNTERS {
            o.counters(name, help, self.per_worker(f))?;
        }
        let device_rows = |f: StatsField| {
            let mut rows: Vec<(Labels, u64)> =
                self.workers.iter().enumerate().map(|(i, l)| (worker_label(i), f(&l.device))).collect();
            rows.push((vec![("worker", "control".to_string())], f(&self.control)));
            rows
        };
        for &(name, help, f) in DEVICE_COUNTERS {
            o.counters(name, help, device_rows(f))?;
        }
        // Drops, one family per stage, every reason a label value (zeros included).
        let mut rows = Vec::new();
        for (i, l) in self.workers.iter().enumerate() {
            for r in DropReason::ALL {
                rows.push((
                    vec![("worker", i.to_string()), ("reason", snake(&format!("{r:?}")))],
                    l.device.drops_for(r),
                ));
            }
        }
        for r in DropReason::ALL {
            rows.push((
                vec![("worker", "control".to_string()), ("reason", snake(&format!("{r:?}")))],
                self.control.drops_for(r),
            ));
        }
        o.counters("wgpmd_packet_drops", "Messages the WireGuard device dropped, by reason", rows)?;
        let mut rows = Vec::new();
        for (i, l) in self.workers.iter().enumerate() {
            for r in WanDrop::ALL {
                rows.push((
                    vec![("worker", i.to_string()), ("reason", snake(&format!("{r:?}")))],
                    l.wan_drops[r as usize],
                ));
            }
        }
        o.counters("wgpmd_wan_drops", "WAN frames dropped on classification, by reason", rows)?;
        let mut rows = Vec::new();
        for (i, l) in self.workers.iter().enumerate() {
            for r in HsDrop::ALL {
                rows.push((
                    vec![("worker", i.to_string()), ("reason", r.name().to_string())],
                    l.hs.dropped[r as usize],
                ));
            }
        }
        o.counters("wgpmd_handshake_drops", "Handshake-stage messages the workers dropped, by reason", rows)?;
        let mut rows = Vec::new();
        for (i, l) in self.workers.iter().enumerate() {
            for &(reason, f) in DATAPATH_DROPS {
                rows.push((vec![("worker", i.to_string()), ("reason", reason.to_string())], f(l)));
            }
        }
        for (reason, v) in [
            ("staged_give_up", self.staged_dropped_giveup),
            ("staged_restage", self.staged_dropped_restage),
            ("tx_jobs_full", self.tx_jobs_dropped),
        ] {
            rows.push((vec![("worker", "control".to_string()), ("reason", reason.to_string())], v));
        }
        o.counters("wgpmd_datapath_drops", "Packets the workers and the control core dropped, by reason", rows)?;
        o.counter(
            "wgpmd_staged_flushed",
            "Staged packets sent once their peer's session was ready",
            self.staged_flushed,
        )?;
        // Handshake processing time.
        {
            let mut m = o.0.encode_descriptor(
                "wgpmd_handshake_processing_seconds",
                "Time a worker took to process a queued handshake message",
                None,
                MetricType::Histogram,
            )?;
            for (i, l) in self.workers.iter().enumerate() {
                let t = &l.hs.times;
                let mut buckets: Vec<(f64, u64)> =
                    HS_TIME_BOUNDS_NS.iter().zip(&t.buckets).map(|(&b, &n)| (b as f64 / 1e9, n)).collect();
                buckets.push((f64::INFINITY, t.buckets[HS_TIME_BOUNDS_NS.len()]));
                let labels = worker_label(i);
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    t.sum_ns as f64 / 1e9,
                    t.count(),
                    &buckets,
                    None,
                )?;
            }
        }
        // Port queues.
        let queues = self.queues();
        for (name, help, f) in [
            ("wgpmd_port_packets_received", "Packets received on a port queue", (|q| q.rx_packets) as QueueField),
            ("wgpmd_port_packets_sent", "Packets sent on a port queue", |q| q.tx_packets),
            ("wgpmd_port_bytes_received", "Bytes received on a port queue", |q| q.rx_bytes),
            ("wgpmd_port_bytes_sent", "Bytes sent on a port queue", |q| q.tx_bytes),
            ("wgpmd_port_tx_copied", "Buffers copied into a zero-copy port's memory before sending", |q| q.tx_copied),
        ] {
            o.counters(name, help, queues.iter().map(|(l, q)| (l.clone(), f(q))))?;
        }
        let mut rows = Vec::new();
        for (l, q) in &queues {
            for &(kind, f) in QUEUE_ERRORS {
                let mut l = l.clone();
                l.push(("kind", kind.to_string()));
                rows.push((l, f(q)));
            }
        }
        o.counters("wgpmd_port_errors", "Port queue drops and errors, by kind", rows)?;
        // Gauges: sizes of the bounded structures.
        o.gauge("wgpmd_peers", "Configured peers", self.peers as f64)?;
        o.gauge("wgpmd_peers_with_session", "Peers with a live session", self.peers_with_session as f64)?;
        o.gauges(
            "wgpmd_handshake_queue_depth",
            "Handshake messages waiting in a worker's queue",
            self.hs_depth.iter().enumerate().map(|(i, &d)| (worker_label(i), d as f64)),
        )?;
        o.gauges(
            "wgpmd_handshake_queue_capacity",
            "A worker's handshake queue capacity",
            (0..self.workers.len()).map(|i| (worker_label(i), self.hs_capacity as f64)),
        )?;
        for (name, help, v) in [
            ("wgpmd_wheel_entries", "Entries on the control core's timer wheel", self.wheel_entries),
            (
                "wgpmd_event_queue_depth",
                "Peers with notifications waiting for the control core",
                self.event_queue_depth,
            ),
            ("wgpmd_event_queue_capacity", "Capacity of the notification list", self.event_queue_capacity),
            ("wgpmd_tx_jobs_depth", "Control messages waiting for a worker to send them", self.tx_jobs_depth),
            ("wgpmd_tx_jobs_capacity", "Capacity of the control messages queue", self.tx_jobs_capacity),
            ("wgpmd_staged_packets", "Inner packets staged for peers without a session", self.staged_packets),
            ("wgpmd_staged_capacity", "Most staged packets", self.staged_capacity),
            ("wgpmd_neighbour_entries", "Entries in the WAN neighbour table", self.neigh.entries as u64),
            ("wgpmd_neighbour_probation_entries", "Neighbour entries on probation", self.neigh.probation as u64),
            ("wgpmd_neighbour_max_entries", "Most neighbour entries", self.neigh_max_entries),
            (
                "wgpmd_neighbour_parked_hops",
                "Next hops with frames waiting for a resolution",
                self.neigh.parked_hops as u64,
            ),
            (
                "wgpmd_neighbour_parked_frames",
                "Frames waiting for a next hop's resolution",
                self.neigh.parked_frames as u64,
            ),
            ("wgpmd_under_load", "1 while the device is under load (cookies required)", u64::from(self.under_load)),
            ("wgpmd_wan_link_up", "1 while the WAN port's link is up", u64::from(self.wan_link_up)),
            ("wgpmd_metrics_peers_omitted", "Peers without per-peer series (over --metrics-peers)", self.peers_omitted),
        ] {
            o.gauge(name, help, v as f64)?;
        }
        o.counter(
            "wgpmd_events_overflowed",
            "Notifications that found the list full (delayed, not lost)",
            self.events_overflowed,
        )?;
        o.counter("wgpmd_neighbour_evicted", "Neighbour entries evicted to make room", self.neigh.evicted)?;
        o.counter("wgpmd_neighbour_resolutions_failed", "Next-hop resolutions that got no answer", self.neigh.failed)?;
        o.counter(
            "wgpmd_neighbour_parked_expired",
            "Frames dropped with a failed resolution",
            self.neigh.expired_frames,
        )?;
        o.counters(
            "wgpmd_neighbour_refused",
            "Neighbour updates refused, by reason",
            Refusal::ALL.iter().map(|&r| (vec![("reason", r.name().to_string())], self.neigh.refused[r as usize])),
        )?;
        o.gauges(
            "wgpmd_wan_backend_stat",
            "The WAN backend's own counters and state (DPDK: xstats; AF_XDP: the XDP program's), by name",
            self.wan_extra.iter().map(|(k, v)| (vec![("name", k.clone())], *v as f64)),
        )?;
        o.gauges(
            "wgpmd_inner_backend_stat",
            "The inner backend's own counters and state (vhost-user), by name",
            self.inner_extra.iter().map(|(k, v)| (vec![("name", k.clone())], *v as f64)),
        )?;
        // The exception path (--exception): what each worker handed to it or refused, and the
        // control core's side (the TAP's traffic, its drops, queue depths, the rate).
        let exc: [(&str, WorkerField); 6] = [
            ("to_kernel", |l| l.exc_to_kernel),
            ("mirrored", |l| l.exc_mirrored),
            ("rate_dropped", |l| l.exc_rate_dropped),
            ("queue_full", |l| l.exc_queue_full),
            ("not_for_us", |l| l.exc_not_for_us),
            ("from_kernel", |l| l.exc_from_kernel),
        ];
        o.counters(
            "wgpmd_exception_frames",
            "Exception path frames per worker, by kind (rate_dropped and queue_full are drops)",
            exc.iter().flat_map(|&(kind, f)| {
                self.workers
                    .iter()
                    .enumerate()
                    .map(move |(i, l)| (vec![("worker", i.to_string()), ("kind", kind.to_string())], f(l)))
            }),
        )?;
        o.gauges(
            "wgpmd_exception_stat",
            "The exception path's control-side counters and queue depths (--exception), by name",
            self.exception.iter().map(|(k, v)| (vec![("name", k.to_string())], *v as f64)),
        )?;
        o.counter(
            "wgpmd_log_messages_suppressed",
            "Per-packet debug messages not logged (over --log-packet-rate)",
            self.log_suppressed,
        )?;
        // Per-peer series, named as the community WireGuard exporters name them.
        let peer = |p: &PeerSeries| vec![("interface", self.interface.clone()), ("public_key", p.public_key.clone())];
        o.counters(
            "wireguard_sent_bytes",
            "Bytes sent to the peer",
            self.peer_series.iter().map(|p| (peer(p), p.tx_bytes)),
        )?;
        o.counters(
            "wireguard_received_bytes",
            "Bytes received from the peer",
            self.peer_series.iter().map(|p| (peer(p), p.rx_bytes)),
        )?;
        o.gauges(
            "wireguard_latest_handshake_seconds",
            "Unix time of the latest handshake with the peer (0: none)",
            self.peer_series.iter().map(|p| (peer(p), p.latest_handshake)),
        )?;
        Ok(())
    }
}

/// The snapshot as prometheus-client's collector (asked once, at encoding).
#[derive(Debug)]
struct Collect(Snapshot);

impl prometheus_client::collector::Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode_all(&mut enc)
    }
}

/// The snapshot as text: OpenMetrics 1.0 (`openmetrics`) or the Prometheus text format 0.0.4.
pub(crate) fn render(snap: Snapshot, openmetrics: bool) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Collect(snap)));
    let mut s = String::new();
    let r = if openmetrics {
        prometheus_client::encoding::text::encode(&mut s, &reg)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut s, &reg)
    };
    if r.is_err() {
        // Writing to a String fails only if an encoder refuses a value: say so rather than
        // serve half a page.
        return String::from("# wgpmd: the metrics could not be encoded\n");
    }
    s
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
