//! The WAN neighbour table (IPv4 and IPv6 → MAC), learned from ARP, neighbour discovery and
//! authenticated traffic, and the frames waiting for a resolution (bounded per next hop). One
//! table is shared by every worker; each keeps a private copy of the entries it used
//! (`neigh_cache.rs`). Time is the caller's `now`; the frames are the caller's type `F`.
//!
//! Entries age (the kernel's NUD states, simplified): an entry confirmed (learned, or seen
//! again in an ARP message or authenticated traffic) within the reachable time is used as is.
//! After that it is stale: the next use sends an ARP request (broadcast, so a next hop that
//! changed its MAC answers too; for IPv6 a neighbour solicitation to the solicited-node
//! multicast address) and keeps using the old MAC; unanswered, a request goes out
//! per retransmit interval up to `probes` times, and one interval after the last the entry is
//! dropped: frames then wait for a resolution as for an unknown next hop.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

/// Frames waiting per unresolved next hop (the kernel's default `unres_qlen_bytes` holds a
/// handful of packets; so do we).
pub const MAX_PENDING_PER_HOP: usize = 16;
/// Ask again for an unresolved next hop at most this often.
const ARP_RETRY_NS: u64 = 1_000_000_000;

/// How entries age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighTiming {
    /// An entry is used without question this long after its last confirmation (the kernel's
    /// `base_reachable_time_ms` is 30 s).
    pub reachable_ns: u64,
    /// Interval between the ARP requests for a stale entry.
    pub retrans_ns: u64,
    /// Unanswered requests before a stale entry is dropped.
    pub probes: u8,
}

impl Default for NeighTiming {
    fn default() -> Self {
        NeighTiming { reachable_ns: 30_000_000_000, retrans_ns: 1_000_000_000, probes: 3 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: EthernetAddress,
    confirmed: Timestamp,
    /// ARP requests sent since the entry went stale.
    probes: u8,
    last_probe: Timestamp,
}

/// What [`Neighbours::resolve`] says of a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The MAC to use, if any (None: park the frame and ask).
    pub mac: Option<EthernetAddress>,
    /// Send an ARP request for the hop now (a stale entry being refreshed).
    pub probe: bool,
    /// Until when the MAC may be used without asking again ([`Timestamp::ZERO`] if not fresh).
    pub stale_at: Timestamp,
    /// Until when traffic from the hop need not confirm it again.
    pub refresh_after: Timestamp,
}

struct Pending<F> {
    frames: VecDeque<F>,
    last_request: Timestamp,
}

/// The table, and the frames (of type `F`) waiting per unresolved next hop. Shared by the
/// workers: lookups take a read lock, changes a write lock.
pub struct Neighbours<F> {
    timing: NeighTiming,
    map: RwLock<HashMap<IpAddr, Entry>>,
    pending: Mutex<HashMap<IpAddr, Pending<F>>>,
    /// Bumped after every change of `map`: a worker's private copy of entries is valid while
    /// this has not moved.
    generation: AtomicU64,
}

impl<F> Neighbours<F> {
    /// An empty table with the default timing.
    pub fn new() -> Self {
        Self::with_timing(NeighTiming::default())
    }

    /// An empty table whose entries age by `timing`.
    pub fn with_timing(timing: NeighTiming) -> Self {
        Neighbours {
            timing,
            map: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn fresh(&self, e: &Entry) -> Resolution {
        let c = e.confirmed.as_nanos();
        Resolution {
            mac: Some(e.mac),
            probe: false,
            stale_at: Timestamp::from_nanos(c.saturating_add(self.timing.reachable_ns)),
            refresh_after: Timestamp::from_nanos(c.saturating_add(self.timing.reachable_ns / 2)),
        }
    }

    /// The MAC to send to `ip` at `now`, and whether to ask for it again (see the module
    /// documentation). Drops an entry whose requests went unanswered.
    pub fn resolve(&self, ip: impl Into<IpAddr>, now: Timestamp) -> Resolution {
        let ip = ip.into();
        let none = Resolution { mac: None, probe: false, stale_at: Timestamp::ZERO, refresh_after: Timestamp::ZERO };
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&ip) {
                None => return none,
                Some(e) if now < self.fresh(e).stale_at => return self.fresh(e),
                Some(_) => {}
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(&ip) else { return none };
        if now < self.fresh(e).stale_at {
            return self.fresh(e);
        }
        let due = e.probes == 0 || now.as_nanos().saturating_sub(e.last_probe.as_nanos()) >= self.timing.retrans_ns;
        if !due {
            return Resolution { mac: Some(e.mac), ..none };
        }
        if e.probes >= self.timing.probes {
            map.remove(&ip);
            self.generation.fetch_add(1, Ordering::Release);
            return none;
        }
        e.probes += 1;
        e.last_probe = now;
        Resolution { mac: Some(e.mac), probe: true, ..none }
    }

    /// Changes of the table so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The entry's MAC, whatever its age.
    #[cfg(test)]
    pub fn lookup(&self, ip: impl Into<IpAddr>) -> Option<EthernetAddress> {
        let ip = ip.into();
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(&ip).map(|e| e.mac)
    }

    /// Learn (or confirm) `ip` at `mac`; returns frames that were waiting for it. Takes the
    /// write lock only for a new or changed MAC, a stale entry, or one confirmed more than
    /// half the reachable time ago.
    /// Point each returned frame at `mac` ([`set_dst_mac`](super::set_dst_mac)) before sending it.
    pub fn learn(&self, ip: impl Into<IpAddr>, mac: EthernetAddress, now: Timestamp) -> VecDeque<F> {
        let ip = ip.into();
        let need = match self.map.read().unwrap_or_else(|e| e.into_inner()).get(&ip) {
            Some(e) => e.mac != mac || e.probes > 0 || now >= self.fresh(e).refresh_after,
            None => true,
        };
        if need {
            let old = self
                .map
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ip, Entry { mac, confirmed: now, probes: 0, last_probe: Timestamp::ZERO });
            if old.map(|e| e.mac) != Some(mac) {
                self.generation.fetch_add(1, Ordering::Release);
            }
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(&ip).map(|p| p.frames).unwrap_or_default()
    }

    /// Park a frame for an unresolved next hop. Returns (whether to send an ARP request now,
    /// whether a frame was dropped for lack of room).
    pub fn park(&self, hop: impl Into<IpAddr>, frame: F, now: Timestamp) -> (bool, bool) {
        let hop = hop.into();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(hop).or_insert(Pending { frames: VecDeque::new(), last_request: Timestamp::ZERO });
        let mut dropped = false;
        if e.frames.len() >= MAX_PENDING_PER_HOP {
            e.frames.pop_front();
            dropped = true;
        }
        e.frames.push_back(frame);
        let ask = e.last_request == Timestamp::ZERO
            || now.as_nanos().saturating_sub(e.last_request.as_nanos()) >= ARP_RETRY_NS;
        if ask {
            e.last_request = now;
        }
        (ask, dropped)
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<F> Default for Neighbours<F> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const HOP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);
    const S: u64 = 1_000_000_000;

    fn t(ns: u64) -> Timestamp {
        Timestamp::from_nanos(ns)
    }

    fn table() -> Neighbours<u32> {
        Neighbours::with_timing(NeighTiming { reachable_ns: 30 * S, retrans_ns: S, probes: 3 })
    }

    #[test]
    fn entries_are_fresh_for_the_reachable_time() {
        let n = table();
        assert_eq!(n.resolve(HOP, t(1)).mac, None);
        n.learn(HOP, A, t(1));
        let r = n.resolve(HOP, t(29 * S));
        assert_eq!((r.mac, r.probe, r.stale_at, r.refresh_after), (Some(A), false, t(30 * S + 1), t(15 * S + 1)));
    }

    #[test]
    fn a_stale_entry_is_refreshed_while_still_used() {
        let n = table();
        n.learn(HOP, A, t(1));
        let g = n.generation();
        // Stale: the first use asks (and still sends to A), the next ones within a second don't.
        let r = n.resolve(HOP, t(31 * S));
        assert_eq!((r.mac, r.probe, r.stale_at), (Some(A), true, Timestamp::ZERO));
        let r = n.resolve(HOP, t(31 * S + S / 2));
        assert_eq!((r.mac, r.probe), (Some(A), false));
        // The reply confirms it: fresh again, same MAC, no generation change.
        n.learn(HOP, A, t(32 * S));
        let r = n.resolve(HOP, t(33 * S));
        assert_eq!((r.mac, r.probe, r.stale_at), (Some(A), false, t(62 * S)));
        assert_eq!(n.generation(), g);
        // Confirmation by traffic within half the reachable time needs no write; later it does.
        n.learn(HOP, A, t(40 * S));
        assert_eq!(n.resolve(HOP, t(33 * S)).stale_at, t(62 * S));
        n.learn(HOP, A, t(50 * S));
        assert_eq!(n.resolve(HOP, t(51 * S)).stale_at, t(80 * S));
    }

    #[test]
    fn an_unanswered_entry_is_dropped_after_its_probes() {
        let n = table();
        n.learn(HOP, A, t(1));
        let g = n.generation();
        let mut asked = 0;
        let mut gone_at = None;
        // A use every 100 ms after the entry went stale, no replies.
        for i in 0..60 {
            let now = t(31 * S + i * S / 10);
            let r = n.resolve(HOP, now);
            asked += u32::from(r.probe);
            if r.mac.is_none() {
                gone_at = Some(i);
                break;
            }
        }
        assert_eq!(asked, 3, "three requests, one a second");
        assert_eq!(gone_at, Some(30), "dropped one interval after the third request");
        assert_ne!(n.generation(), g, "the workers' copies go too");
        assert_eq!(n.lookup(HOP), None);
    }

    #[test]
    fn a_next_hop_that_moved_is_re_resolved_and_waiting_frames_stay_bounded() {
        let n = table();
        n.learn(HOP, A, t(1));
        // A stops answering; the entry ages out.
        let mut now = 31 * S;
        while n.resolve(HOP, t(now)).mac.is_some() {
            now += S / 10;
        }
        // Frames now wait; the first asks, the bound holds and drops are reported.
        let mut asks = 0;
        let mut drops = 0;
        for i in 0..(MAX_PENDING_PER_HOP as u64 + 5) {
            let (ask, dropped) = n.park(HOP, i as u32, t(now + i));
            asks += u32::from(ask);
            drops += u32::from(dropped);
        }
        assert_eq!((asks, drops), (1, 5));
        // The host answers from its new MAC: the waiting frames come back, the entry is fresh.
        let g = n.generation();
        let waiting = n.learn(HOP, B, t(now + S / 2));
        assert_eq!(waiting, (5..MAX_PENDING_PER_HOP as u32 + 5).collect::<Vec<_>>(), "the oldest went first");
        assert_ne!(n.generation(), g);
        let r = n.resolve(HOP, t(now + S));
        assert_eq!((r.mac, r.probe), (Some(B), false));
    }
}
