//! A worker's private copy of the neighbour entries it used, valid for one generation of the
//! shared table ([`Neighbours`]): the data path reads it without the shared table's lock (an
//! atomic read-modify-write on a line every worker shares) and without hashing with SipHash,
//! twice per packet otherwise (learning check on receive, next hop on send). Direct-mapped; a
//! miss falls through to the shared table.

use std::net::IpAddr;

use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::EthernetAddress;

use super::{Neighbours, Resolution};

/// Slots of a worker's neighbour cache.
const NEIGH_SLOTS: usize = 256;

/// The copy (see the module documentation).
pub struct NeighCache {
    generation: u64,
    slots: Box<[Option<NeighSlot>; NEIGH_SLOTS]>,
}

/// A fresh entry: its MAC, until when it is used without asking the shared table, and until
/// when traffic from it need not confirm it there.
#[derive(Clone, Copy)]
struct NeighSlot {
    ip: IpAddr,
    mac: EthernetAddress,
    stale_at: Timestamp,
    refresh_after: Timestamp,
}

impl Default for NeighCache {
    fn default() -> Self {
        Self::new()
    }
}

impl NeighCache {
    /// An empty cache.
    pub fn new() -> Self {
        NeighCache { generation: 0, slots: Box::new([None; NEIGH_SLOTS]) }
    }

    fn slot(ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => {
                let o = a.octets();
                u32::from_be_bytes([o[12], o[13], o[14], o[15]]) ^ u32::from_be_bytes([o[8], o[9], o[10], o[11]])
            }
        };
        (key.wrapping_mul(0x9e37_79b9) >> 24) as usize % NEIGH_SLOTS
    }

    /// Forget everything if the shared table changed since the copies were taken.
    pub fn sync<F>(&mut self, shared: &Neighbours<F>) {
        let g = shared.generation();
        if g != self.generation {
            self.slots.fill(None);
            self.generation = g;
        }
    }

    /// The next hop's MAC for a frame sent now; stale and unknown hops go to the shared table
    /// (which says whether to send an ARP request or neighbour solicitation).
    pub fn lookup<F>(&mut self, shared: &Neighbours<F>, ip: impl Into<IpAddr>, now: Timestamp) -> Resolution {
        let ip = ip.into();
        let slot = &mut self.slots[Self::slot(ip)];
        if let Some(s) = *slot {
            if s.ip == ip && now < s.stale_at {
                return Resolution {
                    mac: Some(s.mac),
                    probe: false,
                    stale_at: s.stale_at,
                    refresh_after: s.refresh_after,
                };
            }
        }
        let r = shared.resolve(ip, now);
        *slot = match r.mac {
            Some(mac) if now < r.stale_at => {
                Some(NeighSlot { ip, mac, stale_at: r.stale_at, refresh_after: r.refresh_after })
            }
            _ => None,
        };
        r
    }

    /// Whether traffic from `ip` at `mac` needs no confirmation in the shared table now.
    pub fn confirmed(&self, ip: impl Into<IpAddr>, mac: EthernetAddress, now: Timestamp) -> bool {
        let ip = ip.into();
        self.slots[Self::slot(ip)].is_some_and(|s| s.ip == ip && s.mac == mac && now < s.refresh_after)
    }

    /// Drop the copy of `ip` (its MAC is about to change).
    pub fn forget(&mut self, ip: impl Into<IpAddr>) {
        let ip = ip.into();
        let slot = &mut self.slots[Self::slot(ip)];
        if slot.is_some_and(|s| s.ip == ip) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Heard, NeighTiming, Wan, WanAddr};
    use super::*;
    use std::net::Ipv4Addr;

    fn wan() -> Wan {
        Wan {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            v4: Some(WanAddr { addr: Ipv4Addr::new(10, 0, 0, 1), prefix: 24, gateway: None }),
            v6: None,
            vlan: None,
        }
    }

    #[test]
    fn neighbour_cache_follows_the_shared_table() {
        let shared = Neighbours::<()>::new();
        let (ip, other) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        let (a, b) = (EthernetAddress([2, 0, 0, 0, 0, 0xa]), EthernetAddress([2, 0, 0, 0, 0, 0xb]));
        let now = Timestamp::from_nanos(1);
        let mut c = NeighCache::new();
        c.sync(&shared);
        assert_eq!(c.lookup(&shared, ip, now).mac, None, "unresolved hops are not cached");
        shared.learn(&wan(), ip, a, Heard::Traffic, now).unwrap();
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(a));
        let g = shared.generation();
        shared.learn(&wan(), ip, a, Heard::Traffic, now).unwrap();
        assert_eq!(shared.generation(), g, "learning what is known changes nothing");
        // Another worker learns a new address: ours holds the old one until the next sync.
        shared.learn(&wan(), ip, b, Heard::Traffic, now).unwrap();
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(a));
        c.sync(&shared);
        assert_eq!(c.lookup(&shared, ip, now).mac, Some(b));
        shared.learn(&wan(), other, a, Heard::Traffic, now).unwrap();
        c.sync(&shared);
        assert_eq!((c.lookup(&shared, ip, now).mac, c.lookup(&shared, other, now).mac), (Some(b), Some(a)));
        c.forget(ip);
        assert!(c.slots.iter().flatten().all(|s| s.ip != ip));
    }

    #[test]
    fn neighbour_cache_hands_stale_entries_to_the_shared_table() {
        let shared = Neighbours::<()>::with_timing(NeighTiming { reachable_ns: 1000, retrans_ns: 100, probes: 1 });
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let a = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
        let mut c = NeighCache::new();
        shared.learn(&wan(), ip, a, Heard::Traffic, Timestamp::from_nanos(1)).unwrap();
        c.sync(&shared);
        let r = c.lookup(&shared, ip, Timestamp::from_nanos(10));
        assert_eq!((r.mac, r.probe), (Some(a), false));
        assert!(c.confirmed(ip, a, Timestamp::from_nanos(10)));
        assert!(!c.confirmed(ip, a, Timestamp::from_nanos(600)), "half the reachable time: confirm again");
        // Stale: the shared table asks once, keeps the MAC, then drops it.
        let r = c.lookup(&shared, ip, Timestamp::from_nanos(1100));
        assert_eq!((r.mac, r.probe), (Some(a), true));
        assert_eq!(c.lookup(&shared, ip, Timestamp::from_nanos(1150)).mac, Some(a));
        assert_eq!(c.lookup(&shared, ip, Timestamp::from_nanos(1200)).mac, None);
        c.sync(&shared);
        assert!(c.slots.iter().all(Option::is_none));
    }
}
