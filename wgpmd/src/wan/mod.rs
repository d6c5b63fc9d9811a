//! The WAN side, sans-IO: what a frame from the wire is, the replies built in its place, the
//! neighbour table, the outer headers of WireGuard datagrams, and the ICMP errors of the path
//! MTU. No sockets, no clock reads, no threads: functions take bytes, addresses and `now`, and
//! say what to do; the daemon's workers (`daemon::worker`) apply that to their buffers and
//! queues. (The neighbour table takes locks, since the workers share it, and holds the
//! caller's frames while their next hop resolves.)
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | [`Wan`]: our MAC, our address per family ([`WanAddr`], `None`: that family is off), the 802.1Q VLAN; routing ([`Wan::route`]) |
//! | `classify.rs` | [`Classified`] / [`WanDrop`]: Ethernet/802.1Q, ARP, IPv4, IPv6, UDP to our port (WireGuard), ICMP echo, ICMPv6 neighbour discovery and echo |
//! | `reply.rs` | replies in place (ARP reply, ICMP/ICMPv6 echo reply), the neighbour advertisement, ARP requests and neighbour solicitations |
//! | `outer.rs` | [`Outer`]: Ethernet [+ 802.1Q] + IPv4 or IPv6 + UDP in front of a WireGuard message, one path for both families, emitted through the wire `Repr`s |
//! | `neigh.rs`, `neigh_cache.rs` | the neighbour table shared by the workers and each worker's private copy of the entries it used |
//! | `icmp.rs` | ICMP "fragmentation needed" / ICMPv6 "packet too big" for inner packets over the tunnel MTU |
//!
//! With a WAN VLAN (`--vlan N`) every frame in and out carries the 802.1Q tag N; without one,
//! tagged frames are dropped.
//!
//! # Panics
//!
//! None on any input: parsing goes through the wire views' `new_checked` and `Repr::parse`,
//! output through `Repr::emit` into slices checked for length first. The robustness test
//! (`wgpmd/tests/wan_robustness.rs`: about a million mutated frames) and the `wan_frame` fuzz
//! target hold [`Wan::classify`], the in-place replies, the solicitations and the outer headers
//! to that. The neighbour table and `icmp::too_big` (inner packets from the TUN) are covered by
//! their unit tests only, not yet by a fuzz target.

mod classify;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod icmp;
mod neigh;
mod neigh_cache;
mod outer;
mod reply;
#[cfg(test)]
mod testutil;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wgpmd_proto::wire::EthernetAddress;

pub use classify::{Classified, WanDrop};
pub use neigh::{
    Heard, NeighStats, NeighTiming, Neighbours, Parked, Refusal, Resolution, DEFAULT_MAX_ENTRIES, MAX_PARKED,
    MAX_PENDING_PER_HOP,
};
pub use neigh_cache::NeighCache;
pub use outer::{Outer, OUTER_V4_LEN, OUTER_V4_VLAN_LEN, OUTER_V6_LEN, OUTER_V6_VLAN_LEN};
pub use reply::{multicast_mac, set_dst_mac, solicited_node, ARP_FRAME_LEN, ND_FRAME_LEN, SOLICIT_ROOM};

/// An IP address family of the WAN: the bits that subnet arithmetic works on.
pub trait Family: Copy + Eq + Into<IpAddr> + private::Sealed {
    /// Address width in bits.
    const BITS: u8;
    /// The address as a 128-bit number, left-aligned (an IPv4 address in the top 32 bits).
    fn left_aligned(self) -> u128;
}

mod private {
    pub trait Sealed {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

impl Family for Ipv4Addr {
    const BITS: u8 = 32;
    fn left_aligned(self) -> u128 {
        u128::from(u32::from(self)) << 96
    }
}

impl Family for Ipv6Addr {
    const BITS: u8 = 128;
    fn left_aligned(self) -> u128 {
        u128::from(self)
    }
}

/// Our address of one family on the WAN, its subnet, and the next hop for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanAddr<A> {
    /// Our address (answered for, sent from).
    pub addr: A,
    /// Prefix length of the WAN subnet (clamped to the family's width).
    pub prefix: u8,
    /// Next hop for destinations off the subnet; `None`: they are unreachable.
    pub gateway: Option<A>,
}

impl<A: Family> WanAddr<A> {
    /// Whether `dst` is on our subnet.
    pub fn on_link(&self, dst: A) -> bool {
        let p = u32::from(self.prefix.min(A::BITS));
        let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
        (dst.left_aligned() ^ self.addr.left_aligned()) & mask == 0
    }

    /// The next hop towards `dst`: itself when on our subnet, else the gateway.
    pub fn next_hop(&self, dst: A) -> Option<A> {
        if self.on_link(dst) {
            Some(dst)
        } else {
            self.gateway
        }
    }
}

/// Our identity on the WAN: what [`Wan::classify`] accepts and what replies and outer headers
/// carry. A family without an address is off: its frames are dropped and its destinations
/// unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wan {
    /// The WAN port's MAC.
    pub mac: EthernetAddress,
    /// Our IPv4 address, if any.
    pub v4: Option<WanAddr<Ipv4Addr>>,
    /// Our IPv6 address, if any.
    pub v6: Option<WanAddr<Ipv6Addr>>,
    /// 802.1Q VLAN id (1..=4094) every frame in and out carries, if any.
    pub vlan: Option<u16>,
}

/// How a datagram to a destination leaves: from which of our addresses, to which next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Our address of the destination's family.
    pub src: IpAddr,
    /// The neighbour the frame goes to (the destination, or the gateway).
    pub hop: IpAddr,
}

/// Why a destination cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// We have no IPv4 address on the WAN.
    NoIpv4Address,
    /// We have no IPv6 address on the WAN.
    NoIpv6Address,
    /// Off our subnet, and no gateway of that family.
    NoNextHop,
}

impl Wan {
    /// Our IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.v4.map(|a| a.addr)
    }

    /// Our IPv6 address, if any.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.v6.map(|a| a.addr)
    }

    /// Our address and the next hop towards `dst`, for either family.
    pub fn route(&self, dst: IpAddr) -> Result<Route, Unroutable> {
        fn via<A: Family>(a: Option<WanAddr<A>>, dst: A, none: Unroutable) -> Result<Route, Unroutable> {
            let a = a.ok_or(none)?;
            let hop = a.next_hop(dst).ok_or(Unroutable::NoNextHop)?;
            Ok(Route { src: a.addr.into(), hop: hop.into() })
        }
        match dst {
            IpAddr::V4(d) => via(self.v4, d, Unroutable::NoIpv4Address),
            IpAddr::V6(d) => via(self.v6, d, Unroutable::NoIpv6Address),
        }
    }

    /// The next hop towards `dst`, if it can be reached.
    pub fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        self.route(dst).ok().map(|r| r.hop)
    }

    /// Whether `ip` can be a neighbour worth a table entry: a gateway, or a unicast address on
    /// our subnet (IPv6: or link-local) other than ours and other than the subnet's broadcast
    /// address.
    pub fn may_be_neighbour(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.is_some_and(|w| {
                let p = u32::from(w.prefix.min(32));
                let host_mask = if p == 0 { u32::MAX } else { u32::MAX >> p };
                let subnet_broadcast = p <= 30 && u32::from(a) & host_mask == host_mask;
                w.gateway == Some(a)
                    || (w.on_link(a)
                        && a != w.addr
                        && !a.is_unspecified()
                        && !a.is_multicast()
                        && !a.is_broadcast()
                        && !subnet_broadcast)
            }),
            IpAddr::V6(a) => self.v6.is_some_and(|w| {
                w.gateway == Some(a)
                    || ((w.on_link(a) || a.is_unicast_link_local())
                        && a != w.addr
                        && !a.is_unspecified()
                        && !a.is_multicast())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn next_hops_per_family() {
        let mut w = Wan {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            v4: Some(WanAddr { addr: Ipv4Addr::new(192, 0, 2, 1), prefix: 24, gateway: None }),
            v6: None,
            vlan: None,
        };
        assert_eq!(w.next_hop(ip("192.0.2.9")), Some(ip("192.0.2.9")));
        assert_eq!(w.route(ip("192.0.3.9")), Err(Unroutable::NoNextHop), "off-link without a gateway");
        assert_eq!(w.route(ip("2001:db8::9")), Err(Unroutable::NoIpv6Address));
        w.v4 = Some(WanAddr { gateway: Some(Ipv4Addr::new(192, 0, 2, 254)), ..w.v4.unwrap() });
        assert_eq!(w.route(ip("198.51.100.7")), Ok(Route { src: ip("192.0.2.1"), hop: ip("192.0.2.254") }));
        w.v6 = Some(WanAddr { addr: "2001:db8::1".parse().unwrap(), prefix: 64, gateway: None });
        assert_eq!(w.route(ip("2001:db8::9")), Ok(Route { src: ip("2001:db8::1"), hop: ip("2001:db8::9") }));
        assert_eq!(w.next_hop(ip("2001:db9::9")), None, "off-link without a gateway");
        w.v6 = Some(WanAddr { gateway: Some("2001:db8::ff".parse().unwrap()), ..w.v6.unwrap() });
        assert_eq!(w.next_hop(ip("2001:db9::9")), Some(ip("2001:db8::ff")));
        // IPv6 only: no IPv4 route at all.
        w.v4 = None;
        assert_eq!(w.route(ip("192.0.2.9")), Err(Unroutable::NoIpv4Address));
        assert_eq!(w.ipv4(), None);
        assert_eq!(w.ipv6(), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn who_may_be_a_neighbour() {
        let w = Wan {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            v4: Some(WanAddr {
                addr: Ipv4Addr::new(192, 0, 2, 1),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(198, 51, 100, 1)),
            }),
            v6: Some(WanAddr { addr: "2001:db8::1".parse().unwrap(), prefix: 64, gateway: None }),
            vlan: None,
        };
        for (a, want) in [
            ("192.0.2.9", true),
            ("198.51.100.1", true), // the gateway, even off the subnet
            ("192.0.2.1", false),   // ours
            ("192.0.2.255", false), // the subnet's broadcast
            ("192.0.3.9", false),   // off the subnet
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("2001:db8::9", true),
            ("fe80::9", true), // link-local is always on link
            ("2001:db8::1", false),
            ("2001:db9::9", false),
            ("ff02::1", false),
            ("::", false),
        ] {
            assert_eq!(w.may_be_neighbour(ip(a)), want, "{a}");
        }
        assert!(!Wan { v4: None, ..w }.may_be_neighbour(ip("192.0.2.9")), "no IPv4 address");
        let p31 = Wan { v4: Some(WanAddr { addr: Ipv4Addr::new(10, 0, 0, 0), prefix: 31, gateway: None }), ..w };
        assert!(p31.may_be_neighbour(ip("10.0.0.1")), "a /31 has no broadcast address");
    }

    #[test]
    fn subnet_edges() {
        let a = |prefix| WanAddr { addr: Ipv4Addr::new(10, 1, 2, 3), prefix, gateway: None };
        assert!(a(0).on_link(Ipv4Addr::new(200, 0, 0, 1)), "/0: everything is on link");
        assert!(a(32).on_link(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!a(32).on_link(Ipv4Addr::new(10, 1, 2, 4)));
        assert!(a(31).on_link(Ipv4Addr::new(10, 1, 2, 2)));
        assert!(!a(31).on_link(Ipv4Addr::new(10, 1, 2, 4)));
        assert!(a(99).on_link(Ipv4Addr::new(10, 1, 2, 3)), "an oversized prefix is /32");
        assert!(!a(99).on_link(Ipv4Addr::new(10, 1, 2, 2)));
        let b = |prefix| WanAddr { addr: "2001:db8::1".parse::<Ipv6Addr>().unwrap(), prefix, gateway: None };
        assert!(b(128).on_link("2001:db8::1".parse().unwrap()));
        assert!(!b(128).on_link("2001:db8::2".parse().unwrap()));
        assert!(b(127).on_link("2001:db8::".parse().unwrap()));
        assert!(b(0).on_link("fe80::1".parse().unwrap()));
        assert!(!b(1).on_link("fe80::1".parse().unwrap()));
    }
}
