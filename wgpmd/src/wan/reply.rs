//! Frames we send on our own behalf: replies written over the request they answer (ARP reply,
//! ICMP and ICMPv6 echo reply), the neighbour advertisement that answers a solicitation, and
//! the requests that resolve a next hop (ARP request, neighbour solicitation). Each keeps or
//! adds our 802.1Q tag.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wgpmd_proto::wire::{arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, ChecksumCapabilities, EthernetAddress, IpProtocol};

use super::Wan;

/// An untagged ARP frame (Ethernet header and ARP packet), before padding.
pub const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;
/// A neighbour solicitation or advertisement with its link-layer address option, untagged.
pub const ND_FRAME_LEN: usize =
    ethernet::HEADER_LEN + ipv6::HEADER_LEN + icmpv6::ND_HEADER_LEN + icmpv6::LLADDR_OPTION_LEN;
/// Room [`Wan::solicit`] and [`Wan::neighbor_advert`] need in their output buffer: the longest
/// frame either writes (a tagged neighbour discovery message).
pub const SOLICIT_ROOM: usize = ND_FRAME_LEN + ethernet::VLAN_TAG_LEN;

/// Hop limit / TTL of echo replies.
const ECHO_TTL: u8 = 64;
/// Hop limit of neighbour discovery messages (RFC 4861 §7.1: receivers drop anything else).
const ND_HOP_LIMIT: u8 = 255;

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 32 bits,
/// RFC 2464 §7).
pub fn multicast_mac(ip: Ipv6Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Point a frame at `mac` (its Ethernet destination): for a frame that waited for its next hop
/// to resolve. A buffer shorter than a MAC is left alone.
pub fn set_dst_mac(frame: &mut [u8], mac: EthernetAddress) {
    ethernet::Frame::new_unchecked(frame).set_dst_addr(mac);
}

impl Wan {
    fn eth(&self, dst_addr: EthernetAddress, ethertype: ethernet::EtherType) -> ethernet::Repr {
        ethernet::Repr { src_addr: self.mac, dst_addr, vlan: self.vlan.map(ethernet::VlanTag::new), ethertype }
    }

    /// Turn an ARP request for our IPv4 address ([`Classified::ArpRequest`]) into the reply, in
    /// place: to the asker, from our MAC, keeping the request's tag. Returns the frame length
    /// (the ARP packet's end: trailing padding is cut), or `None` if the frame is not an ARP
    /// packet or we have no IPv4 address.
    ///
    /// [`Classified::ArpRequest`]: super::Classified::ArpRequest
    pub fn arp_reply_in_place(&self, frame: &mut [u8]) -> Option<usize> {
        let ours = self.ipv4()?;
        let mut eth = ethernet::Frame::new_checked(&mut *frame).ok()?;
        if eth.inner_ethertype() != ethernet::EtherType::ARP {
            return None;
        }
        let req = arp::Repr::parse(&arp::Packet::new_checked(eth.payload_mut()).ok()?).ok()?;
        let asker = eth.src_addr();
        eth.set_dst_addr(asker);
        eth.set_src_addr(self.mac);
        let reply = arp::Repr {
            operation: arp::Operation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: ours,
            target_hardware_addr: req.source_hardware_addr,
            target_protocol_addr: req.source_protocol_addr,
        };
        reply.emit(&mut arp::Packet::new_unchecked(eth.payload_mut())).ok()?;
        Some(eth.header_len() + reply.buffer_len())
    }

    /// Turn an ICMP or ICMPv6 echo request to us ([`Classified::EchoRequest`]) into the echo
    /// reply, in place: addresses swapped, TTL / hop limit 64, type echo reply, checksums
    /// filled; identifier, sequence number and data are the request's. Returns the frame
    /// length (the IP packet's end), or `None` if the frame is not IPv4 or IPv6 with an ICMP
    /// message.
    ///
    /// [`Classified::EchoRequest`]: super::Classified::EchoRequest
    pub fn echo_reply_in_place(&self, frame: &mut [u8]) -> Option<usize> {
        let mut eth = ethernet::Frame::new_checked(&mut *frame).ok()?;
        let asker = eth.src_addr();
        eth.set_dst_addr(asker);
        eth.set_src_addr(self.mac);
        let hl = eth.header_len();
        match eth.inner_ethertype() {
            ethernet::EtherType::IPV4 => {
                let mut ip = ipv4::Packet::new_checked(eth.payload_mut()).ok()?;
                let (src, dst) = (ip.src_addr(), ip.dst_addr());
                ip.set_src_addr(dst);
                ip.set_dst_addr(src);
                ip.set_ttl(ECHO_TTL);
                ip.fill_checksum();
                let total = usize::from(ip.total_len());
                let mut icmp = icmpv4::Packet::new_checked(ip.payload_mut()).ok()?;
                icmp.set_msg_type(icmpv4::Message::ECHO_REPLY);
                icmp.fill_checksum();
                Some(hl + total)
            }
            ethernet::EtherType::IPV6 => {
                let mut ip = ipv6::Packet::new_checked(eth.payload_mut()).ok()?;
                let (src, dst) = (ip.src_addr(), ip.dst_addr());
                ip.set_src_addr(dst);
                ip.set_dst_addr(src);
                ip.set_hop_limit(ECHO_TTL);
                let total = ip.total_len();
                let mut icmp = icmpv6::Packet::new_checked(ip.payload_mut()).ok()?;
                icmp.set_msg_type(icmpv6::Message::ECHO_REPLY);
                icmp.fill_checksum(&dst, &src);
                Some(hl + total)
            }
            _ => None,
        }
    }

    /// Write the solicited advertisement of our IPv6 address (solicited, override, with our
    /// link-layer address) to the asker `to_ip` at `to_mac` into `out` ([`ND_FRAME_LEN`]
    /// bytes, 4 more with a tag; [`SOLICIT_ROOM`] always fits). Returns the length, or `None`
    /// without an IPv6 address or room.
    pub fn neighbor_advert(&self, out: &mut [u8], to_ip: Ipv6Addr, to_mac: EthernetAddress) -> Option<usize> {
        let ours = self.ipv6()?;
        let flags = icmpv6::NeighborFlags { router: false, solicited: true, override_: true };
        let msg = icmpv6::Repr::NeighborAdvert { flags, target_addr: ours, target_lladdr: Some(self.mac) };
        nd_frame(out, self.eth(to_mac, ethernet::EtherType::IPV6), ours, to_ip, msg)
    }

    /// Write the request that resolves the next hop `hop` into `out` ([`SOLICIT_ROOM`] bytes
    /// always fit): a broadcast ARP request for IPv4 (zero-padded to the 60-byte minimum
    /// frame), a neighbour solicitation to the solicited-node group, with our link-layer
    /// address, for IPv6. Returns the length, or `None` without our address of that family
    /// or room.
    pub fn solicit(&self, out: &mut [u8], hop: IpAddr) -> Option<usize> {
        match hop {
            IpAddr::V4(target) => self.arp_request(out, target),
            IpAddr::V6(target) => {
                let ours = self.ipv6()?;
                let group = solicited_node(target);
                let msg = icmpv6::Repr::NeighborSolicit { target_addr: target, source_lladdr: Some(self.mac) };
                nd_frame(out, self.eth(multicast_mac(group), ethernet::EtherType::IPV6), ours, group, msg)
            }
        }
    }

    fn arp_request(&self, out: &mut [u8], target: Ipv4Addr) -> Option<usize> {
        let ours = self.ipv4()?;
        let eth = self.eth(EthernetAddress::BROADCAST, ethernet::EtherType::ARP);
        let req = arp::Repr {
            operation: arp::Operation::Request,
            source_hardware_addr: self.mac,
            source_protocol_addr: ours,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let len = eth.buffer_len(req.buffer_len());
        let padded = len.max(ethernet::MIN_FRAME_LEN);
        let buf = out.get_mut(..padded)?;
        let mut f = ethernet::Frame::new_unchecked(&mut *buf);
        eth.emit(&mut f).ok()?;
        req.emit(&mut arp::Packet::new_unchecked(f.payload_mut())).ok()?;
        buf[len..].fill(0);
        Some(padded)
    }
}

/// Write an Ethernet [+ 802.1Q] frame carrying the neighbour discovery message `msg` from
/// `src` to `dst` (hop limit 255) into `out`. Returns the length.
fn nd_frame(out: &mut [u8], eth: ethernet::Repr, src: Ipv6Addr, dst: Ipv6Addr, msg: icmpv6::Repr) -> Option<usize> {
    let ip = ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::ICMPV6,
        payload_len: msg.buffer_len(),
        hop_limit: ND_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    };
    let len = eth.buffer_len(ip.buffer_len());
    let buf = out.get_mut(..len)?;
    let mut f = ethernet::Frame::new_unchecked(&mut *buf);
    eth.emit(&mut f).ok()?;
    let mut p = ipv6::Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p).ok()?;
    msg.emit(&mut icmpv6::Packet::new_unchecked(p.payload_mut()), &src, &dst, &ChecksumCapabilities::default()).ok()?;
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Classified;
    use super::*;

    #[test]
    fn solicited_node_and_its_mac() {
        assert_eq!(solicited_node(PEER6), "ff02::1:ffab:cd02".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(solicited_node(PEER6)), EthernetAddress([0x33, 0x33, 0xff, 0xab, 0xcd, 0x02]));
    }

    #[test]
    fn arp_request_field_by_field() {
        for (vlan, hl) in [(None, 14), (Some(7), 18)] {
            let mut out = [0xa5u8; SOLICIT_ROOM];
            let n = ours(vlan).solicit(&mut out, PEER4.into()).unwrap();
            assert_eq!(n, ethernet::MIN_FRAME_LEN, "padded to the minimum frame");
            assert!(out[hl + arp::PACKET_LEN..n].iter().all(|&b| b == 0), "zero padding");
            let eth = ethernet::Frame::new_checked(&out[..n]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, EthernetAddress::BROADCAST));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::ARP)
            );
            let p = arp::Packet::new_checked(eth.payload()).unwrap();
            let want = arp::Repr {
                operation: arp::Operation::Request,
                source_hardware_addr: OUR_MAC,
                source_protocol_addr: OUR4,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: PEER4,
            };
            assert_eq!(arp::Repr::parse(&p), Ok(want));
            assert_eq!(peer(vlan).classify(&out[..n], PORT), Ok(Classified::ArpRequest { ip: OUR4, mac: OUR_MAC }));
        }
        assert_eq!(Wan { v4: None, ..ours(None) }.solicit(&mut [0u8; 90], PEER4.into()), None, "no IPv4 address");
        assert_eq!(ours(None).solicit(&mut [0u8; 59], PEER4.into()), None, "no room");
    }

    #[test]
    fn arp_reply_in_place_field_by_field() {
        for vlan in [None, Some(7)] {
            let mut f = [0u8; 64];
            let n = peer(vlan).solicit(&mut f, OUR4.into()).unwrap();
            let mut f = f[..n].to_vec();
            let n = ours(vlan).arp_reply_in_place(&mut f).unwrap();
            assert_eq!(n, ARP_FRAME_LEN + if vlan.is_some() { 4 } else { 0 }, "the padding is cut");
            let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, PEER_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::ARP)
            );
            let want = arp::Repr {
                operation: arp::Operation::Reply,
                source_hardware_addr: OUR_MAC,
                source_protocol_addr: OUR4,
                target_hardware_addr: PEER_MAC,
                target_protocol_addr: PEER4,
            };
            assert_eq!(arp::Repr::parse(&arp::Packet::new_checked(eth.payload()).unwrap()), Ok(want));
            assert_eq!(peer(vlan).classify(&f[..n], PORT), Ok(Classified::ArpLearn { ip: OUR4, mac: OUR_MAC }));
        }
        let mut f = echo4_request(None, b"ping");
        assert_eq!(ours(None).arp_reply_in_place(&mut f), None, "not ARP");
        let mut f = [0u8; 64];
        let n = peer(None).solicit(&mut f, OUR4.into()).unwrap();
        assert_eq!(Wan { v4: None, ..ours(None) }.arp_reply_in_place(&mut f[..n]), None, "no IPv4 address");
    }

    #[test]
    fn echo_reply_in_place_ipv4_field_by_field() {
        for (vlan, hl) in [(None, 14), (Some(9), 18)] {
            let req = echo4_request(vlan, b"ping!");
            let mut f = req.clone();
            f.extend([0xee; 6]); // Ethernet padding
            let n = ours(vlan).echo_reply_in_place(&mut f).unwrap();
            assert_eq!(n, req.len(), "the padding is cut");
            let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, PEER_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV4)
            );
            let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            let r = ipv4::Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
            let asked =
                ipv4::Repr::parse(&ipv4::Packet::new_checked(&req[hl..]).unwrap(), &Default::default()).unwrap();
            let want = ipv4::Repr { src_addr: OUR4, dst_addr: PEER4, ttl: 64, ..asked };
            assert_eq!(r, want, "addresses swapped, TTL 64, the rest kept");
            let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmpv4::Message::ECHO_REPLY, 0));
            assert_eq!(
                icmpv4::Repr::parse(&icmp, &ChecksumCapabilities::default()),
                Ok(icmpv4::Repr::EchoReply { ident: 0x0102, seq_no: 0x0304, data: b"ping!" })
            );
        }
    }

    #[test]
    fn echo_reply_in_place_ipv6_field_by_field() {
        for (vlan, hl) in [(None, 14), (Some(9), 18)] {
            let req = echo6_request(vlan, b"ping6");
            let mut f = req.clone();
            let n = ours(vlan).echo_reply_in_place(&mut f).unwrap();
            assert_eq!(n, req.len());
            let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, PEER_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV6)
            );
            let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
            let asked = ipv6::Repr::parse(&ipv6::Packet::new_checked(&req[hl..]).unwrap()).unwrap();
            let want = ipv6::Repr { src_addr: OUR6, dst_addr: PEER6, hop_limit: 64, ..asked };
            assert_eq!(ipv6::Repr::parse(&ip), Ok(want));
            let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&OUR6, &PEER6));
            assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmpv6::Message::ECHO_REPLY, 0));
            assert_eq!(
                icmpv6::Repr::parse(&icmp, &OUR6, &PEER6, &ChecksumCapabilities::default()),
                Ok(icmpv6::Repr::EchoReply { ident: 0x0506, seq_no: 0x0708, data: b"ping6" })
            );
        }
        let mut arp = [0u8; 64];
        let n = peer(None).solicit(&mut arp, OUR4.into()).unwrap();
        assert_eq!(ours(None).echo_reply_in_place(&mut arp[..n]), None, "not IP");
    }

    #[test]
    fn neighbor_solicit_field_by_field() {
        for (vlan, hl) in [(None, 14), (Some(9), 18)] {
            let mut out = [0xa5u8; SOLICIT_ROOM];
            let n = ours(vlan).solicit(&mut out, PEER6.into()).unwrap();
            assert_eq!(n, hl + ipv6::HEADER_LEN + icmpv6::ND_HEADER_LEN + icmpv6::LLADDR_OPTION_LEN);
            let eth = ethernet::Frame::new_checked(&out[..n]).unwrap();
            let group = solicited_node(PEER6);
            assert_eq!(
                (eth.src_addr(), eth.dst_addr()),
                (OUR_MAC, EthernetAddress([0x33, 0x33, 0xff, 0xab, 0xcd, 0x02]))
            );
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV6)
            );
            let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
            let want = ipv6::Repr {
                src_addr: OUR6,
                dst_addr: group,
                next_header: IpProtocol::ICMPV6,
                payload_len: icmpv6::ND_HEADER_LEN + icmpv6::LLADDR_OPTION_LEN,
                hop_limit: 255,
                traffic_class: 0,
                flow_label: 0,
            };
            assert_eq!(ipv6::Repr::parse(&ip), Ok(want));
            let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&OUR6, &group));
            assert_eq!(
                icmpv6::Repr::parse(&icmp, &OUR6, &group, &ChecksumCapabilities::default()),
                Ok(icmpv6::Repr::NeighborSolicit { target_addr: PEER6, source_lladdr: Some(OUR_MAC) })
            );
            let seen = peer(vlan).classify(&out[..n], PORT);
            assert_eq!(seen, Ok(Classified::NeighborSolicit { ip: OUR6, mac: OUR_MAC, learn: true }));
        }
        assert_eq!(Wan { v6: None, ..ours(None) }.solicit(&mut [0u8; 90], PEER6.into()), None, "no IPv6 address");
        assert_eq!(ours(Some(1)).solicit(&mut [0u8; 89], PEER6.into()), None, "no room");
    }

    #[test]
    fn neighbor_advert_field_by_field() {
        for (vlan, hl) in [(None, 14), (Some(9), 18)] {
            let mut out = [0xa5u8; SOLICIT_ROOM];
            let n = ours(vlan).neighbor_advert(&mut out, PEER6, PEER_MAC).unwrap();
            assert_eq!(n, ND_FRAME_LEN + hl - 14);
            let eth = ethernet::Frame::new_checked(&out[..n]).unwrap();
            assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, PEER_MAC));
            assert_eq!(
                (eth.vlan_tag(), eth.inner_ethertype()),
                (vlan.map(ethernet::VlanTag::new), ethernet::EtherType::IPV6)
            );
            let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
            let want = ipv6::Repr {
                src_addr: OUR6,
                dst_addr: PEER6,
                next_header: IpProtocol::ICMPV6,
                payload_len: icmpv6::ND_HEADER_LEN + icmpv6::LLADDR_OPTION_LEN,
                hop_limit: 255,
                traffic_class: 0,
                flow_label: 0,
            };
            assert_eq!(ipv6::Repr::parse(&ip), Ok(want));
            let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&OUR6, &PEER6));
            let flags = icmpv6::NeighborFlags { router: false, solicited: true, override_: true };
            assert_eq!(
                icmpv6::Repr::parse(&icmp, &OUR6, &PEER6, &ChecksumCapabilities::default()),
                Ok(icmpv6::Repr::NeighborAdvert { flags, target_addr: OUR6, target_lladdr: Some(OUR_MAC) })
            );
            assert_eq!(peer(vlan).classify(&out[..n], PORT), Ok(Classified::NeighborLearn { ip: OUR6, mac: OUR_MAC }));
        }
        let v4_only = Wan { v6: None, ..ours(None) };
        assert_eq!(v4_only.neighbor_advert(&mut [0u8; 90], PEER6, PEER_MAC), None, "no IPv6 address");
        assert_eq!(ours(None).neighbor_advert(&mut [0u8; 85], PEER6, PEER_MAC), None, "no room");
    }

    #[test]
    fn a_parked_frame_is_pointed_at_the_learned_mac() {
        let mut f = echo4_request(None, b"x");
        set_dst_mac(&mut f, EthernetAddress([2, 9, 9, 9, 9, 9]));
        let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (EthernetAddress([2, 9, 9, 9, 9, 9]), PEER_MAC));
        let mut short = [1u8; 4];
        set_dst_mac(&mut short, OUR_MAC);
        assert_eq!(short, [1u8; 4], "too short: left alone");
    }
}
