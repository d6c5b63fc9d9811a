//! The WAN neighbour cache (IPv4 → MAC), learned from ARP and from authenticated traffic, and
//! the frames waiting for a resolution (bounded per next hop).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use nic_backends::Buffer;

use crate::time::Timestamp;
use crate::wire::EthernetAddress;

/// Frames waiting per unresolved next hop (the kernel's default `unres_qlen_bytes` holds a
/// handful of packets; so do we).
pub const MAX_PENDING_PER_HOP: usize = 16;
/// Ask again for an unresolved next hop at most this often.
const ARP_RETRY_NS: u64 = 1_000_000_000;

pub(crate) struct Pending {
    pub frames: VecDeque<Buffer>,
    pub last_request: Timestamp,
}

/// The cache.
pub(crate) struct Neighbours {
    map: RwLock<HashMap<Ipv4Addr, (EthernetAddress, Timestamp)>>,
    pending: Mutex<HashMap<Ipv4Addr, Pending>>,
    /// Bumped after every change of `map`: a worker's private copy of entries is valid while
    /// this has not moved.
    generation: AtomicU64,
}

impl Neighbours {
    pub fn new() -> Self {
        Neighbours { map: RwLock::new(HashMap::new()), pending: Mutex::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    /// Changes of the table so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(&ip).map(|e| e.0)
    }

    /// Learn `ip` at `mac`; returns frames that were waiting for it.
    pub fn learn(&self, ip: Ipv4Addr, mac: EthernetAddress, now: Timestamp) -> VecDeque<Buffer> {
        let known = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&ip).map(|e| e.0);
        if known != Some(mac) {
            self.map.write().unwrap_or_else(|e| e.into_inner()).insert(ip, (mac, now));
            self.generation.fetch_add(1, Ordering::Release);
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(&ip).map(|p| p.frames).unwrap_or_default()
    }

    /// Park a frame for an unresolved next hop. Returns (whether to send an ARP request now,
    /// whether a frame was dropped for lack of room).
    pub fn park(&self, hop: Ipv4Addr, frame: Buffer, now: Timestamp) -> (bool, bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(hop).or_insert(Pending { frames: VecDeque::new(), last_request: Timestamp::ZERO });
        let mut dropped = false;
        if e.frames.len() >= MAX_PENDING_PER_HOP {
            e.frames.pop_front();
            dropped = true;
        }
        e.frames.push_back(frame);
        let ask = e.last_request == Timestamp::ZERO || now.as_nanos().saturating_sub(e.last_request.as_nanos()) >= ARP_RETRY_NS;
        if ask {
            e.last_request = now;
        }
        (ask, dropped)
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
