//! The outer headers of a WireGuard datagram on the WAN: Ethernet [+ 802.1Q] + IPv4 or IPv6 +
//! UDP, written in front of the message. [`Outer`] picks the family from its addresses: IPv4,
//! every data packet's family on a typical WAN, is written field by field; IPv6 goes through the
//! wire `Repr`s, which are also the IPv4 writer's reference in the tests.
//!
//! Checksums: the IPv4 header checksum is filled; the UDP checksum is left zero over IPv4
//! ("none", RFC 768), since a NIC without checksum offload would otherwise spend a pass over the
//! ciphertext, and filled over IPv6, where it is mandatory (RFC 8200 §8.1): one extra pass over
//! each message there (about as much as a memcpy; a NIC with checksum offload could take it
//! over, packet sockets cannot).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use wgpmd_proto::wire::{
    ethernet, ipv4, ipv6, udp, Checksum, ChecksumCapabilities, Error, EthernetAddress, IpPair, IpProtocol,
};

/// Ethernet + IPv4 (no options) + UDP.
pub const OUTER_V4_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// The same behind an 802.1Q tag.
pub const OUTER_V4_VLAN_LEN: usize = OUTER_V4_LEN + ethernet::VLAN_TAG_LEN;
/// Ethernet + IPv6 (no extension headers) + UDP.
pub const OUTER_V6_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;
/// The same behind an 802.1Q tag.
pub const OUTER_V6_VLAN_LEN: usize = OUTER_V6_LEN + ethernet::VLAN_TAG_LEN;

/// TTL / hop limit of our datagrams.
const HOP_LIMIT: u8 = 64;

/// Over IPv4 software fills the header checksum and leaves the UDP checksum to no one (`Rx`:
/// `udp::Repr::emit` writes 0, "none"); over IPv6 it fills the UDP checksum.
const CAPS_V4: ChecksumCapabilities =
    ChecksumCapabilities { ipv4: Checksum::Both, udp: Checksum::Rx, icmpv4: Checksum::Both, icmpv6: Checksum::Both };
const CAPS_V6: ChecksumCapabilities =
    ChecksumCapabilities { ipv4: Checksum::Both, udp: Checksum::Both, icmpv4: Checksum::Both, icmpv6: Checksum::Both };

/// The outer headers of one WireGuard datagram. `src` and `dst` are of one family, which
/// decides the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// Our MAC.
    pub src_mac: EthernetAddress,
    /// The next hop's MAC.
    pub dst_mac: EthernetAddress,
    /// The WAN's 802.1Q VLAN, if any.
    pub vlan: Option<u16>,
    /// Our address and port.
    pub src: SocketAddr,
    /// The peer's endpoint.
    pub dst: SocketAddr,
    /// DSCP/ECN byte: the IPv4 TOS or IPv6 traffic class (the kernel marks handshakes 0x88).
    pub tos: u8,
    /// IPv4 identification (IPv6 has none).
    pub ident: u16,
}

/// The IP header of either family.
enum IpRepr {
    V4(ipv4::Repr),
    V6(ipv6::Repr),
}

impl IpRepr {
    fn header_len(&self) -> usize {
        match self {
            IpRepr::V4(r) => r.header_len(),
            IpRepr::V6(r) => r.header_len(),
        }
    }
    fn ethertype(&self) -> ethernet::EtherType {
        match self {
            IpRepr::V4(_) => ethernet::EtherType::IPV4,
            IpRepr::V6(_) => ethernet::EtherType::IPV6,
        }
    }
    fn pair(&self) -> IpPair {
        match self {
            IpRepr::V4(r) => r.pair(),
            IpRepr::V6(r) => r.pair(),
        }
    }
    fn caps(&self) -> &'static ChecksumCapabilities {
        match self {
            IpRepr::V4(_) => &CAPS_V4,
            IpRepr::V6(_) => &CAPS_V6,
        }
    }
    fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        match self {
            IpRepr::V4(r) => r.emit(&mut ipv4::Packet::new_unchecked(buf), self.caps()),
            IpRepr::V6(r) => r.emit(&mut ipv6::Packet::new_unchecked(buf)),
        }
    }
}

impl Outer {
    fn ip(&self, payload_len: usize) -> Result<IpRepr, Error> {
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => Ok(IpRepr::V4(ipv4::Repr {
                src_addr,
                dst_addr,
                protocol: IpProtocol::UDP,
                payload_len,
                ttl: HOP_LIMIT,
                dscp: self.tos >> 2,
                ecn: self.tos & 3,
                ident: self.ident,
                dont_frag: false,
                more_frags: false,
                frag_offset: 0,
            })),
            (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => Ok(IpRepr::V6(ipv6::Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::UDP,
                payload_len,
                hop_limit: HOP_LIMIT,
                traffic_class: self.tos,
                flow_label: 0,
            })),
            _ => Err(Error::Malformed),
        }
    }

    fn eth(&self, ethertype: ethernet::EtherType) -> ethernet::Repr {
        ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            vlan: self.vlan.map(ethernet::VlanTag::new),
            ethertype,
        }
    }

    /// Length of the headers: [`OUTER_V4_LEN`] or [`OUTER_V6_LEN`] by family, 4 more with a
    /// tag.
    pub fn header_len(&self) -> usize {
        let ip = if self.dst.is_ipv4() { ipv4::HEADER_LEN } else { ipv6::HEADER_LEN };
        let tag = if self.vlan.is_some() { ethernet::VLAN_TAG_LEN } else { 0 };
        ethernet::HEADER_LEN + tag + ip + udp::HEADER_LEN
    }

    /// Write the headers into the first [`header_len`](Self::header_len) bytes of `frame`,
    /// whose next `payload_len` bytes are the message (summed into the UDP checksum over
    /// IPv6). Returns the frame length. A short `frame` is [`Error::Truncated`]; mixed
    /// families or a datagram over 65535 bytes are [`Error::Malformed`].
    pub fn emit(&self, frame: &mut [u8], payload_len: usize) -> Result<usize, Error> {
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.emit_v4(src, dst, frame, payload_len),
            _ => self.emit_reprs(frame, payload_len),
        }
    }

    /// IPv4, every packet a worker seals takes this: the 42 (46 tagged) bytes written field by
    /// field, the header checksum summed from the values in registers. The same bytes and
    /// errors as [`emit_reprs`](Self::emit_reprs) (`tests::the_ipv4_writer_matches_the_reprs`
    /// compares them on random headers); the `Repr` path through the wire module cost about a
    /// tenth of a 64-byte packet's send (docs/PERFORMANCE.md).
    fn emit_v4(&self, src: Ipv4Addr, dst: Ipv4Addr, frame: &mut [u8], payload_len: usize) -> Result<usize, Error> {
        let udp_len = payload_len + udp::HEADER_LEN;
        let total = udp_len + ipv4::HEADER_LEN;
        let l2 = ethernet::HEADER_LEN + if self.vlan.is_some() { ethernet::VLAN_TAG_LEN } else { 0 };
        let frame = frame.get_mut(..l2 + total).ok_or(Error::Truncated)?;
        let (Ok(udp_len16), Ok(total16)) = (u16::try_from(udp_len), u16::try_from(total)) else {
            return Err(Error::Malformed);
        };
        let (eth, l3) = frame.split_at_mut(l2);
        eth[..6].copy_from_slice(&self.dst_mac.0);
        eth[6..12].copy_from_slice(&self.src_mac.0);
        let ethertype = ethernet::EtherType::IPV4.0.to_be_bytes();
        match self.vlan {
            Some(v) => {
                eth[12..14].copy_from_slice(&ethernet::EtherType::VLAN.0.to_be_bytes());
                eth[14..16].copy_from_slice(&ethernet::VlanTag::new(v).tci().to_be_bytes());
                eth[16..18].copy_from_slice(&ethertype);
            }
            None => eth[12..14].copy_from_slice(&ethertype),
        }
        let (s, d) = (src.octets(), dst.octets());
        let ttl_proto = u16::from_be_bytes([HOP_LIMIT, IpProtocol::UDP.0]);
        // Version 4, IHL 5; no flags, fragment offset 0; the checksum field itself summed as 0.
        let words = [
            0x4500 | u16::from(self.tos),
            total16,
            self.ident,
            0,
            ttl_proto,
            u16::from_be_bytes([s[0], s[1]]),
            u16::from_be_bytes([s[2], s[3]]),
            u16::from_be_bytes([d[0], d[1]]),
            u16::from_be_bytes([d[2], d[3]]),
        ];
        let sum: u32 = words.iter().map(|&w| u32::from(w)).sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        let checksum = !(sum as u16);
        let ip = &mut l3[..ipv4::HEADER_LEN + udp::HEADER_LEN];
        ip[0..2].copy_from_slice(&words[0].to_be_bytes());
        ip[2..4].copy_from_slice(&total16.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        ip[6..8].copy_from_slice(&[0, 0]);
        ip[8..10].copy_from_slice(&ttl_proto.to_be_bytes());
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip[12..16].copy_from_slice(&s);
        ip[16..20].copy_from_slice(&d);
        // UDP: the checksum left 0 over IPv4 (see the module documentation).
        ip[20..22].copy_from_slice(&self.src.port().to_be_bytes());
        ip[22..24].copy_from_slice(&self.dst.port().to_be_bytes());
        ip[24..26].copy_from_slice(&udp_len16.to_be_bytes());
        ip[26..28].copy_from_slice(&[0, 0]);
        Ok(l2 + total)
    }

    /// Both families through the wire `Repr`s (IPv6's path; IPv4's reference in the tests).
    fn emit_reprs(&self, frame: &mut [u8], payload_len: usize) -> Result<usize, Error> {
        let udp = udp::Repr { src_port: self.src.port(), dst_port: self.dst.port(), payload_len };
        let ip = self.ip(udp.buffer_len())?;
        let eth = self.eth(ip.ethertype());
        let len = eth.buffer_len(ip.header_len() + udp.buffer_len());
        let frame = frame.get_mut(..len).ok_or(Error::Truncated)?;
        let mut f = ethernet::Frame::new_unchecked(&mut *frame);
        eth.emit(&mut f)?;
        let l3 = f.payload_mut();
        ip.emit(l3)?;
        let l4 = l3.get_mut(ip.header_len()..).ok_or(Error::Truncated)?;
        udp.emit(&mut udp::Packet::new_unchecked(l4), &ip.pair(), ip.caps())?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Classified;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MSG: [u8; 19] = [4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 7];

    // The headers of `v4(None)` below, as the hand-written IPv4 header writer this replaced
    // produced them: 02:00:00:00:00:02 → 02:00:00:00:00:01, 192.0.2.2:4000 → 192.0.2.1:51820,
    // TOS 0x88, ident 7, TTL 64, no DF, UDP checksum 0.
    const V4_HEADERS: &str = "02000000000102000000000208004588002f000700004011f62bc0000202c00002010fa0ca6c001b0000";

    fn v4(vlan: Option<u16>) -> Outer {
        Outer {
            src_mac: PEER_MAC,
            dst_mac: OUR_MAC,
            vlan,
            src: SocketAddr::new(PEER4.into(), 4000),
            dst: SocketAddr::new(OUR4.into(), PORT),
            tos: 0x88,
            ident: 7,
        }
    }

    fn v6(vlan: Option<u16>) -> Outer {
        Outer { src: SocketAddr::new(PEER6.into(), 4000), dst: SocketAddr::new(OUR6.into(), PORT), ..v4(vlan) }
    }

    /// The headers written in front of MSG in a buffer pre-filled with 0xa5.
    fn emitted(o: &Outer) -> Vec<u8> {
        let hl = o.header_len();
        let mut f = vec![0xa5u8; hl + MSG.len()];
        f[hl..].copy_from_slice(&MSG);
        assert_eq!(o.emit(&mut f, MSG.len()), Ok(f.len()));
        assert_eq!(&f[hl..], &MSG, "the payload is untouched");
        f
    }

    #[test]
    fn ipv4_headers_field_by_field() {
        for (vlan, hl) in [(None, OUTER_V4_LEN), (Some(42), OUTER_V4_VLAN_LEN)] {
            let o = v4(vlan);
            assert_eq!(o.header_len(), hl);
            let f = emitted(&o);
            let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (PEER_MAC, OUR_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV4)
            );
            let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            let r = ipv4::Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
            let want = ipv4::Repr {
                src_addr: PEER4,
                dst_addr: OUR4,
                protocol: IpProtocol::UDP,
                payload_len: 8 + MSG.len(),
                ttl: 64,
                dscp: 0x88 >> 2,
                ecn: 0,
                ident: 7,
                dont_frag: false,
                more_frags: false,
                frag_offset: 0,
            };
            assert_eq!((r, ip.header_len(), ip.total_len()), (want, 20, 20 + 8 + MSG.len() as u16));
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!((u.src_port(), u.dst_port(), u.length(), u.checksum()), (4000, PORT, 8 + MSG.len() as u16, 0));
            assert_eq!(u.payload(), &MSG);
            let c = ours(vlan).classify(&f, PORT);
            assert_eq!(c, Ok(Classified::WireGuard { src: o.src, src_mac: PEER_MAC, offset: hl, len: MSG.len() }));
        }
        assert_eq!(hex::encode(&emitted(&v4(None))[..OUTER_V4_LEN]), V4_HEADERS);
    }

    #[test]
    fn ipv6_headers_field_by_field_with_the_udp_checksum() {
        for (vlan, hl) in [(None, OUTER_V6_LEN), (Some(42), OUTER_V6_VLAN_LEN)] {
            let o = v6(vlan);
            assert_eq!(o.header_len(), hl);
            let f = emitted(&o);
            let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (PEER_MAC, OUR_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV6)
            );
            let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
            let r = ipv6::Repr::parse(&ip).unwrap();
            let want = ipv6::Repr {
                src_addr: PEER6,
                dst_addr: OUR6,
                next_header: IpProtocol::UDP,
                payload_len: 8 + MSG.len(),
                hop_limit: 64,
                traffic_class: 0x88,
                flow_label: 0,
            };
            assert_eq!(r, want);
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!((u.src_port(), u.dst_port(), u.length()), (4000, PORT, 8 + MSG.len() as u16));
            assert_ne!(u.checksum(), 0, "mandatory over IPv6");
            assert!(u.verify_checksum(&ip.pair()));
            assert_eq!(
                udp::Repr::parse(&u, &ip.pair(), &ChecksumCapabilities::default()),
                Ok(udp::Repr { src_port: 4000, dst_port: PORT, payload_len: MSG.len() })
            );
            assert_eq!(u.payload(), &MSG);
            let c = ours(vlan).classify(&f, PORT);
            assert_eq!(c, Ok(Classified::WireGuard { src: o.src, src_mac: PEER_MAC, offset: hl, len: MSG.len() }));
        }
    }

    /// The IPv4 writer against the `Repr` path: random headers (tags or none, every TOS, ident,
    /// address and port), lengths up to and past the 65535-byte limit, frames long enough and
    /// one byte short; the bytes written and the results must agree.
    #[test]
    fn the_ipv4_writer_matches_the_reprs() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut frames = 0;
        for round in 0..20_000u32 {
            let r = next();
            let mac = |v: u64| EthernetAddress(v.to_be_bytes()[2..].try_into().unwrap());
            let o = Outer {
                src_mac: mac(next()),
                dst_mac: mac(next()),
                vlan: (r & 1 == 0).then_some((r >> 8) as u16),
                src: SocketAddr::new(Ipv4Addr::from(next() as u32).into(), next() as u16),
                dst: SocketAddr::new(Ipv4Addr::from(next() as u32).into(), next() as u16),
                tos: (r >> 24) as u8,
                ident: (r >> 32) as u16,
            };
            let payload_len = match round % 4 {
                0 => (r >> 48) as usize % 2048,
                1 => 65_535 - 28 - (r >> 48) as usize % 4,
                2 => 65_535 - 28 + 1 + (r >> 48) as usize % 4,
                _ => (r >> 48) as usize % 200,
            };
            let hl = o.header_len();
            let room = (hl + payload_len).min(70_000) - (r >> 40) as usize % 2;
            let mut a = vec![0x5au8; room];
            let mut b = a.clone();
            let (ra, rb) = (o.emit(&mut a, payload_len), o.emit_reprs(&mut b, payload_len));
            assert_eq!(ra, rb, "{o:?} payload {payload_len} room {room}");
            if ra.is_ok() {
                frames += 1;
                assert_eq!(a[..hl], b[..hl], "{o:?}");
            }
        }
        assert!(frames > 5_000, "{frames} frames written");
    }

    #[test]
    fn refusals() {
        let mixed = Outer { dst: SocketAddr::new(OUR6.into(), PORT), ..v4(None) };
        assert_eq!(mixed.emit(&mut [0u8; 128], 4), Err(Error::Malformed), "mixed families");
        assert_eq!(v4(None).emit(&mut [0u8; 45], 4), Err(Error::Truncated), "one byte short");
        assert_eq!(v4(None).emit(&mut [0u8; 46], 4), Ok(46));
        assert_eq!(v6(Some(1)).emit(&mut [0u8; 69], 4), Err(Error::Truncated));
        assert_eq!(v6(Some(1)).emit(&mut [0u8; 70], 4), Ok(70));
        let mut big = vec![0u8; 70_000];
        assert_eq!(v4(None).emit(&mut big, 65_535 - 28 + 1), Err(Error::Malformed), "over 65535 bytes");
        assert_eq!(v4(None).emit(&mut big, 65_535 - 28), Ok(OUTER_V4_LEN + 65_535 - 28));
        assert_eq!(v6(None).emit(&mut big, 65_535 - 8 + 1), Err(Error::Malformed));
        // The unspecified and other odd addresses are written as given.
        let o = Outer { src: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 1), ..v4(None) };
        assert!(o.emit(&mut [0u8; 64], 0).is_ok());
        let o = Outer { src: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 1), ..v6(None) };
        assert!(o.emit(&mut [0u8; 64], 0).is_ok());
    }
}
