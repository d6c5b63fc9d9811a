//! What IPv4 and IPv6 share: the protocol number space and the address pair that upper-layer
//! checksums cover.
//!
//! Owns [`IpProtocol`] (IANA "Assigned Internet Protocol Numbers", the IPv4 protocol and IPv6
//! next-header field) and [`IpPair`], the source and destination of one packet, of one family,
//! so a UDP or ICMP checksum can never be asked for with mixed families.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;

/// An IP protocol number (IPv4 `protocol`, IPv6 `next header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: IpProtocol = IpProtocol(0);
    /// ICMP for IPv4.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// TCP.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP.
    pub const UDP: IpProtocol = IpProtocol(17);
    /// IPv6 routing header.
    pub const IPV6_ROUTE: IpProtocol = IpProtocol(43);
    /// IPv6 fragment header.
    pub const IPV6_FRAG: IpProtocol = IpProtocol(44);
    /// ICMP for IPv6.
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// IPv6 "no next header".
    pub const IPV6_NO_NEXT: IpProtocol = IpProtocol(59);
    /// IPv6 destination options.
    pub const IPV6_OPTS: IpProtocol = IpProtocol(60);
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpProtocol::HOP_BY_HOP => f.write_str("HopByHop"),
            IpProtocol::ICMP => f.write_str("ICMP"),
            IpProtocol::TCP => f.write_str("TCP"),
            IpProtocol::UDP => f.write_str("UDP"),
            IpProtocol::IPV6_ROUTE => f.write_str("IPv6-Route"),
            IpProtocol::IPV6_FRAG => f.write_str("IPv6-Frag"),
            IpProtocol::ICMPV6 => f.write_str("ICMPv6"),
            IpProtocol::IPV6_NO_NEXT => f.write_str("IPv6-NoNxt"),
            IpProtocol::IPV6_OPTS => f.write_str("IPv6-Opts"),
            IpProtocol(n) => write!(f, "protocol {n}"),
        }
    }
}

/// The source and destination addresses of one IP packet, of one family: what the UDP and
/// ICMPv6 pseudo-headers cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpPair {
    /// An IPv4 packet's addresses.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
    /// An IPv6 packet's addresses.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

impl IpPair {
    /// The source address.
    pub fn src(&self) -> IpAddr {
        match *self {
            IpPair::V4 { src, .. } => IpAddr::V4(src),
            IpPair::V6 { src, .. } => IpAddr::V6(src),
        }
    }

    /// The destination address.
    pub fn dst(&self) -> IpAddr {
        match *self {
            IpPair::V4 { dst, .. } => IpAddr::V4(dst),
            IpPair::V6 { dst, .. } => IpAddr::V6(dst),
        }
    }

    /// The same pair seen from the other end (source and destination swapped), as a reply
    /// uses it.
    pub fn reversed(&self) -> IpPair {
        match *self {
            IpPair::V4 { src, dst } => IpPair::V4 { src: dst, dst: src },
            IpPair::V6 { src, dst } => IpPair::V6 { src: dst, dst: src },
        }
    }

    /// The folded (not complemented) pseudo-header sum for an upper-layer packet of `length`
    /// bytes carrying `protocol` (RFC 768 for IPv4, RFC 8200 §8.1 for IPv6).
    pub fn pseudo_header(&self, protocol: IpProtocol, length: u32) -> u16 {
        match self {
            IpPair::V4 { src, dst } => checksum::pseudo_header_v4(src, dst, protocol, length),
            IpPair::V6 { src, dst } => checksum::pseudo_header_v6(src, dst, protocol, length),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_display_and_pair_accessors() {
        assert_eq!(IpProtocol::UDP.to_string(), "UDP");
        assert_eq!(IpProtocol(200).to_string(), "protocol 200");
        let p = IpPair::V4 { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2) };
        assert_eq!(p.src(), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(p.reversed().src(), p.dst());
        let q = IpPair::V6 { src: Ipv6Addr::LOCALHOST, dst: Ipv6Addr::UNSPECIFIED };
        assert_eq!(q.reversed().dst(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
