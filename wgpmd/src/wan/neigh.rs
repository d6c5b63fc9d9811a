//! The WAN neighbour table (IPv4 and IPv6 → MAC) and the frames waiting for a resolution. One
//! table is shared by every worker; each keeps a private copy of the entries it used
//! (`neigh_cache.rs`). Time is the caller's `now`; the frames are the caller's type `F`.
//!
//! # What is learned ([`Heard`])
//! - An ARP reply or neighbour advertisement ([`Heard::Answer`]) only for an address we are
//!   resolving (frames wait for it, or its entry is being probed) or already have: never a new
//!   entry from an unsolicited answer (the kernel's `arp_accept = 0`, `accept_untracked_na =
//!   0`).
//! - An ARP request or neighbour solicitation for OUR address ([`Heard::Asked`]), RFC 826's
//!   merge: the asker is about to talk to us. A new entry is on probation (see below).
//! - Authenticated WireGuard traffic ([`Heard::Traffic`]): its source next hop.
//!
//! Refused, each counted ([`Refusal`]): multicast and broadcast MACs, the zero MAC, addresses
//! that cannot be a neighbour (off our subnets and not a gateway, our own, multicast,
//! broadcast, unspecified), unsolicited answers, and probation entries when the table is full
//! of active ones.
//!
//! # Bounds
//! At most `max_entries` entries (4096 by default). Entries are on probation (learned only
//! because they asked for us) or active (used to send, learned from traffic or from an answer
//! we asked for). A new entry in a full table evicts the oldest probation entry, else (if it is
//! active itself) the least recently confirmed active one; a probation entry never evicts an
//! active one. So a flood of requests from a hundred thousand addresses churns the probation
//! entries and leaves the next hops in use alone. Waiting frames: at most
//! [`MAX_PENDING_PER_HOP`] per next hop, [`MAX_PARKED`] in all, for at most `max_entries` next
//! hops; a resolution unanswered for `probes` retransmit intervals fails and its frames are
//! dropped ([`Neighbours::expire`], also on the next frame for it).
//!
//! # Aging
//! The kernel's NUD states, simplified: an entry confirmed (learned, or seen again in an ARP
//! message or authenticated traffic) within the reachable time is used as is. After that it
//! is stale: the next use sends an ARP request (broadcast, so a next hop that changed its MAC
//! answers too; for IPv6 a neighbour solicitation to the solicited-node multicast address)
//! and keeps using the old MAC; unanswered, a request goes out per retransmit interval up to
//! `probes` times, and one interval after the last the entry is dropped: frames then wait for
//! a resolution as for an unknown next hop.
//!
//! # Workers' copies
//! [`Neighbours::generation`] moves only when an entry's MAC changes, an entry is dropped after
//! its probes, or an active entry is evicted: a worker's copy holds only fresh active entries,
//! each until its own stale time, so new entries and probation evictions leave the copies valid
//! (a worker checks the generation once per poll iteration, so a flood that changes MACs costs
//! it at most one flush per burst).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

use super::Wan;

/// Frames waiting per unresolved next hop (the kernel's default `unres_qlen_bytes` holds a
/// handful of packets; so do we).
pub const MAX_PENDING_PER_HOP: usize = 16;
/// Frames waiting for a resolution, all next hops together.
pub const MAX_PARKED: usize = 256;
/// Entries of the table unless configured otherwise (the hidden `--neigh-max-entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// How entries age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighTiming {
    /// An entry is used without question this long after its last confirmation (the kernel's
    /// `base_reachable_time_ms` is 30 s).
    pub reachable_ns: u64,
    /// Interval between the ARP requests for a stale entry or an unresolved next hop.
    pub retrans_ns: u64,
    /// Unanswered requests before a stale entry is dropped or a resolution fails.
    pub probes: u8,
}

impl Default for NeighTiming {
    fn default() -> Self {
        NeighTiming { reachable_ns: 30_000_000_000, retrans_ns: 1_000_000_000, probes: 3 }
    }
}

/// How a neighbour's address and MAC reached us: decides whether they are learned (see the
/// module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It asked for our address (ARP request, neighbour solicitation with its link-layer
    /// address).
    Asked,
    /// An ARP reply or neighbour advertisement about it.
    Answer,
    /// Authenticated WireGuard traffic came through it.
    Traffic,
}

/// Why a neighbour was not learned (each counted, `neigh_refused_<name>` in `wgpmd stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// A multicast or broadcast MAC.
    Multicast,
    /// The all-zero MAC.
    ZeroMac,
    /// An address that cannot be our neighbour: off our subnets and not a gateway, our own,
    /// multicast, broadcast or unspecified.
    NotNeighbour,
    /// An answer (ARP reply, neighbour advertisement) for an address we are not resolving and
    /// do not have.
    Unsolicited,
    /// A probation entry while the table is full of active ones.
    Full,
}

impl Refusal {
    /// Number of reasons.
    pub const COUNT: usize = Refusal::Full as usize + 1;
    /// Every reason, in counter order.
    pub const ALL: [Refusal; Self::COUNT] =
        [Refusal::Multicast, Refusal::ZeroMac, Refusal::NotNeighbour, Refusal::Unsolicited, Refusal::Full];

    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Multicast => "multicast",
            Refusal::ZeroMac => "zero_mac",
            Refusal::NotNeighbour => "not_neighbour",
            Refusal::Unsolicited => "unsolicited",
            Refusal::Full => "full",
        }
    }
}

/// The table's sizes and counters, for `wgpmd stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeighStats {
    /// Entries in the table.
    pub entries: usize,
    /// Of which on probation.
    pub probation: usize,
    /// Next hops with frames waiting for a resolution.
    pub parked_hops: usize,
    /// Frames waiting for a resolution.
    pub parked_frames: usize,
    /// Refusals by [`Refusal`] (index = `reason as usize`).
    pub refused: [u64; Refusal::COUNT],
    /// Entries evicted to make room.
    pub evicted: u64,
    /// Resolutions that failed (no answer within the probes).
    pub failed: u64,
    /// Frames dropped with a failed resolution.
    pub expired_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Probation,
    Active,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: EthernetAddress,
    confirmed: Timestamp,
    /// ARP requests sent since the entry went stale.
    probes: u8,
    last_probe: Timestamp,
    class: Class,
    /// Its item in its class's eviction queue.
    seq: u64,
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

const NONE: Resolution =
    Resolution { mac: None, probe: false, stale_at: Timestamp::ZERO, refresh_after: Timestamp::ZERO };

/// What [`Neighbours::park`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// Send an ARP request (neighbour solicitation) for the hop now.
    pub ask: bool,
    /// Frames dropped to keep the bounds (this one or older ones for the hop).
    pub dropped: usize,
}

/// The entries and their eviction order: one queue per class, oldest first, of (address,
/// sequence); an item whose sequence no longer matches its entry is stale and skipped.
#[derive(Default)]
struct Table {
    map: HashMap<IpAddr, Entry>,
    probation: VecDeque<(IpAddr, u64)>,
    active: VecDeque<(IpAddr, u64)>,
    n_probation: usize,
    seq: u64,
}

impl Table {
    fn queue(&mut self, class: Class) -> &mut VecDeque<(IpAddr, u64)> {
        match class {
            Class::Probation => &mut self.probation,
            Class::Active => &mut self.active,
        }
    }

    /// File `ip` (whose entry is `e`) at the back of its class's queue, as the newest.
    fn put(&mut self, ip: IpAddr, mut e: Entry) {
        self.seq += 1;
        e.seq = self.seq;
        if let Some(old) = self.map.insert(ip, e) {
            if old.class == Class::Probation {
                self.n_probation -= 1;
            }
        }
        if e.class == Class::Probation {
            self.n_probation += 1;
        }
        let live = if e.class == Class::Probation { self.n_probation } else { self.map.len() - self.n_probation };
        let seq = self.seq;
        let q = self.queue(e.class);
        q.push_back((ip, seq));
        if q.len() > 2 * live + 32 {
            let (map, class) = (&self.map, e.class);
            let q = match class {
                Class::Probation => &mut self.probation,
                Class::Active => &mut self.active,
            };
            q.retain(|(ip, seq)| map.get(ip).is_some_and(|e| e.seq == *seq && e.class == class));
        }
    }

    fn remove(&mut self, ip: &IpAddr) -> Option<Entry> {
        let e = self.map.remove(ip)?;
        if e.class == Class::Probation {
            self.n_probation -= 1;
        }
        Some(e)
    }

    /// Remove the oldest entry of `class`. Returns whether there was one.
    fn evict_oldest(&mut self, class: Class) -> bool {
        while let Some((ip, seq)) = self.queue(class).pop_front() {
            if self.map.get(&ip).is_some_and(|e| e.seq == seq && e.class == class) {
                self.remove(&ip);
                return true;
            }
        }
        false
    }
}

struct Pending<F> {
    frames: VecDeque<F>,
    first_request: Timestamp,
    last_request: Timestamp,
}

struct Waiting<F> {
    hops: HashMap<IpAddr, Pending<F>>,
    frames: usize,
}

#[derive(Default)]
struct Counters {
    refused: [AtomicU64; Refusal::COUNT],
    evicted: AtomicU64,
    failed: AtomicU64,
    expired_frames: AtomicU64,
}

/// The table, and the frames (of type `F`) waiting per unresolved next hop. Shared by the
/// workers: lookups take a read lock, changes a write lock; the waiting frames have a mutex.
/// No call holds two of these locks at once.
pub struct Neighbours<F> {
    timing: NeighTiming,
    max_entries: usize,
    table: RwLock<Table>,
    waiting: Mutex<Waiting<F>>,
    /// Bumped when an entry's MAC changes or an entry is dropped after its probes: a worker's
    /// private copy of entries is valid while this has not moved.
    generation: AtomicU64,
    counters: Counters,
}

impl<F> Neighbours<F> {
    /// An empty table with the default timing and size.
    pub fn new() -> Self {
        Self::with_timing(NeighTiming::default())
    }

    /// An empty table whose entries age by `timing`.
    pub fn with_timing(timing: NeighTiming) -> Self {
        Self::with_config(timing, DEFAULT_MAX_ENTRIES)
    }

    /// An empty table whose entries age by `timing`, of at most `max_entries` entries.
    pub fn with_config(timing: NeighTiming, max_entries: usize) -> Self {
        Neighbours {
            timing,
            max_entries: max_entries.max(1),
            table: RwLock::new(Table::default()),
            waiting: Mutex::new(Waiting { hops: HashMap::new(), frames: 0 }),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting<F>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
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
    /// documentation). Drops an entry whose requests went unanswered; makes a probation entry
    /// active (it is used).
    pub fn resolve(&self, ip: impl Into<IpAddr>, now: Timestamp) -> Resolution {
        let ip = ip.into();
        {
            let t = self.read();
            match t.map.get(&ip) {
                None => return NONE,
                Some(e) if e.class == Class::Active && now < self.fresh(e).stale_at => return self.fresh(e),
                Some(_) => {}
            }
        }
        let mut t = self.write();
        let Some(mut e) = t.map.get(&ip).copied() else { return NONE };
        if e.class == Class::Probation {
            e.class = Class::Active;
            t.put(ip, e);
        }
        if now < self.fresh(&e).stale_at {
            return self.fresh(&e);
        }
        let due = e.probes == 0 || now.as_nanos().saturating_sub(e.last_probe.as_nanos()) >= self.timing.retrans_ns;
        if !due {
            return Resolution { mac: Some(e.mac), ..NONE };
        }
        if e.probes >= self.timing.probes {
            t.remove(&ip);
            self.generation.fetch_add(1, Ordering::Release);
            return NONE;
        }
        if let Some(m) = t.map.get_mut(&ip) {
            m.probes += 1;
            m.last_probe = now;
        }
        Resolution { mac: Some(e.mac), probe: true, ..NONE }
    }

    /// Changes of the table so far that invalidate the workers' copies.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The entry's MAC, whatever its age.
    #[cfg(test)]
    pub fn lookup(&self, ip: impl Into<IpAddr>) -> Option<EthernetAddress> {
        self.read().map.get(&ip.into()).map(|e| e.mac)
    }

    /// Learn (or confirm) `ip` at `mac`, heard of as `heard` (see the module documentation);
    /// returns the frames that were waiting for it, or why it was refused (counted). Takes the
    /// write lock only for a new or changed entry, a stale one, one confirmed more than half
    /// the reachable time ago, or one that becomes active.
    /// Point each returned frame at `mac` ([`set_dst_mac`](super::set_dst_mac)) before sending it.
    pub fn learn(
        &self,
        wan: &Wan,
        ip: impl Into<IpAddr>,
        mac: EthernetAddress,
        heard: Heard,
        now: Timestamp,
    ) -> Result<VecDeque<F>, Refusal> {
        let ip = ip.into();
        let r = self.admit(wan, ip, mac, heard, now);
        if let Err(why) = r {
            self.counters.refused[why as usize].fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        let mut w = self.waiting();
        let frames = w.hops.remove(&ip).map(|p| p.frames).unwrap_or_default();
        w.frames -= frames.len();
        Ok(frames)
    }

    fn admit(&self, wan: &Wan, ip: IpAddr, mac: EthernetAddress, heard: Heard, now: Timestamp) -> Result<(), Refusal> {
        if mac.0 == [0; 6] {
            return Err(Refusal::ZeroMac);
        }
        if mac.is_multicast() {
            return Err(Refusal::Multicast);
        }
        if !wan.may_be_neighbour(ip) {
            return Err(Refusal::NotNeighbour);
        }
        // Frames wait for it: we asked.
        let wanted = self.waiting().hops.contains_key(&ip);
        let class_of = |old: Option<&Entry>| {
            let asked_for = wanted || old.is_some_and(|e| e.probes > 0);
            match (heard, old) {
                (Heard::Traffic, _) => Class::Active,
                _ if asked_for => Class::Active,
                (_, Some(e)) => e.class,
                (_, None) => Class::Probation,
            }
        };
        {
            let t = self.read();
            match t.map.get(&ip) {
                Some(e) => {
                    let need = e.mac != mac
                        || e.probes > 0
                        || now >= self.fresh(e).refresh_after
                        || class_of(Some(e)) != e.class;
                    if !need {
                        return Ok(());
                    }
                }
                None if heard == Heard::Answer && !wanted => return Err(Refusal::Unsolicited),
                None => {}
            }
        }
        let mut t = self.write();
        let old = t.map.get(&ip).copied();
        let class = class_of(old.as_ref());
        let e = Entry { mac, confirmed: now, probes: 0, last_probe: Timestamp::ZERO, class, seq: 0 };
        match old {
            Some(o) => {
                t.put(ip, e);
                if o.mac != mac {
                    self.generation.fetch_add(1, Ordering::Release);
                }
            }
            None => {
                if heard == Heard::Answer && !wanted {
                    return Err(Refusal::Unsolicited);
                }
                if t.map.len() >= self.max_entries {
                    // Probation goes first; an active entry only makes room for another. Workers
                    // may hold an active entry: it could come back with another MAC as a new
                    // entry, so its eviction moves the generation (rare: the table is full of
                    // next hops in use).
                    if !t.evict_oldest(Class::Probation) {
                        if class == Class::Probation || !t.evict_oldest(Class::Active) {
                            return Err(Refusal::Full);
                        }
                        self.generation.fetch_add(1, Ordering::Release);
                    }
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                t.put(ip, e);
            }
        }
        Ok(())
    }

    fn failed(&self, p: &Pending<F>, now: Timestamp) -> bool {
        let limit = u64::from(self.timing.probes.max(1)).saturating_mul(self.timing.retrans_ns);
        now.as_nanos().saturating_sub(p.first_request.as_nanos()) >= limit
    }

    /// Park a frame for an unresolved next hop (see the module documentation for the bounds).
    pub fn park(&self, hop: impl Into<IpAddr>, frame: F, now: Timestamp) -> Parked {
        let hop = hop.into();
        let mut guard = self.waiting();
        let w = &mut *guard;
        let mut dropped = 0;
        // A resolution that failed: its frames go, and this frame starts a new one.
        if w.hops.get(&hop).is_some_and(|p| self.failed(p, now)) {
            if let Some(p) = w.hops.remove(&hop) {
                self.expired(p.frames.len());
                w.frames -= p.frames.len();
            }
        }
        if !w.hops.contains_key(&hop) && w.hops.len() >= self.max_entries {
            return Parked { ask: false, dropped: 1 };
        }
        let p = w.hops.entry(hop).or_insert(Pending {
            frames: VecDeque::new(),
            first_request: now,
            last_request: Timestamp::ZERO,
        });
        if p.frames.len() >= MAX_PENDING_PER_HOP {
            p.frames.pop_front();
            w.frames -= 1;
            dropped += 1;
        }
        if w.frames >= MAX_PARKED {
            dropped += 1;
        } else {
            p.frames.push_back(frame);
            w.frames += 1;
        }
        let ask = p.last_request == Timestamp::ZERO
            || now.as_nanos().saturating_sub(p.last_request.as_nanos()) >= self.timing.retrans_ns;
        if ask {
            p.last_request = now;
        }
        Parked { ask, dropped }
    }

    fn expired(&self, frames: usize) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.counters.expired_frames.fetch_add(frames as u64, Ordering::Relaxed);
    }

    /// Fail the resolutions unanswered for `probes` retransmit intervals, dropping their
    /// frames; returns how many frames. Call it every few hundred milliseconds.
    pub fn expire(&self, now: Timestamp) -> usize {
        let mut w = self.waiting();
        let failed: Vec<IpAddr> = w.hops.iter().filter(|(_, p)| self.failed(p, now)).map(|(ip, _)| *ip).collect();
        let mut n = 0;
        for ip in failed {
            if let Some(p) = w.hops.remove(&ip) {
                n += p.frames.len();
                self.expired(p.frames.len());
            }
        }
        w.frames -= n;
        n
    }

    /// The most entries the table holds.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes and counters.
    pub fn stats(&self) -> NeighStats {
        let (entries, probation) = {
            let t = self.read();
            (t.map.len(), t.n_probation)
        };
        let (parked_hops, parked_frames) = {
            let w = self.waiting();
            (w.hops.len(), w.frames)
        };
        let c = &self.counters;
        NeighStats {
            entries,
            probation,
            parked_hops,
            parked_frames,
            refused: std::array::from_fn(|i| c.refused[i].load(Ordering::Relaxed)),
            evicted: c.evicted.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            expired_frames: c.expired_frames.load(Ordering::Relaxed),
        }
    }
}

impl<F> Default for Neighbours<F> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "neigh_tests.rs"]
mod tests;
