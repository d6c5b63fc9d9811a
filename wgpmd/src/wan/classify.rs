//! What a frame from the WAN is: ARP, neighbour discovery or an echo request for us (answered
//! in place, `reply.rs`), a UDP datagram to our WireGuard port, or a counted drop.
//!
//! The order of checks: the Ethernet header and the 802.1Q tag against our VLAN; then per
//! EtherType: ARP about our IPv4 address; IPv4 with a valid header checksum and a unicast
//! source, addressed to us, not a fragment, then UDP to our port or an ICMP echo request; IPv6
//! (only with an IPv6 address) with a non-multicast source, then UDP to our port, ICMPv6 echo
//! to us, or neighbour discovery with hop limit 255 and a valid checksum (RFC 4861 §7.1.1,
//! §7.1.2).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use wgpmd_proto::wire::{
    arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp, ChecksumCapabilities, EthernetAddress, IpProtocol,
};

use super::{solicited_node, Wan};

/// Why a WAN frame was not for WireGuard or a reply (each counted per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WanDrop {
    /// Not a valid Ethernet frame, or an EtherType we do not handle.
    Ethernet,
    /// Malformed ARP, ARP not about our address, or ARP without an IPv4 address.
    Arp,
    /// Malformed IPv4 header (version other than 4, bad lengths), bad header checksum, or a
    /// multicast or broadcast source.
    Ipv4,
    /// IPv4 not addressed to us (or no IPv4 address on the WAN).
    NotForUs,
    /// IPv4 or IPv6 fragment (WireGuard messages are never fragmented by a sane peer).
    Fragment,
    /// A protocol other than UDP or ICMP echo, or UDP to another port.
    Unhandled,
    /// Malformed UDP.
    Udp,
    /// ICMP that is not an echo request, or malformed.
    Icmp,
    /// An untagged frame while the WAN is a VLAN (`--vlan`).
    Untagged,
    /// A frame tagged with another VLAN than ours (or tagged at all without `--vlan`).
    WrongVlan,
    /// Malformed IPv6 header (or a multicast source), IPv6 not addressed to us, or IPv6 without
    /// a WAN IPv6 address.
    Ipv6,
    /// ICMPv6 we do not answer or learn from, malformed, with a bad checksum, or neighbour
    /// discovery with a hop limit other than 255.
    Icmpv6,
}

impl WanDrop {
    /// Number of reasons.
    pub const COUNT: usize = WanDrop::Icmpv6 as usize + 1;
    /// Every reason, in counter order.
    pub const ALL: [WanDrop; Self::COUNT] = [
        WanDrop::Ethernet,
        WanDrop::Arp,
        WanDrop::Ipv4,
        WanDrop::NotForUs,
        WanDrop::Fragment,
        WanDrop::Unhandled,
        WanDrop::Udp,
        WanDrop::Icmp,
        WanDrop::Untagged,
        WanDrop::WrongVlan,
        WanDrop::Ipv6,
        WanDrop::Icmpv6,
    ];
}

/// What a WAN frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// An ARP request for our IPv4 address: answer with [`Wan::arp_reply_in_place`]. Carries
    /// the asker.
    ArpRequest {
        /// The sender's IPv4 address.
        ip: Ipv4Addr,
        /// The sender's MAC.
        mac: EthernetAddress,
    },
    /// An ARP reply to us: learn the sender.
    ArpLearn {
        /// The sender's IPv4 address.
        ip: Ipv4Addr,
        /// The sender's MAC.
        mac: EthernetAddress,
    },
    /// An ICMP or ICMPv6 echo request to us: answer with [`Wan::echo_reply_in_place`].
    EchoRequest,
    /// A neighbour solicitation for our IPv6 address: answer with [`Wan::neighbor_advert`]
    /// (to `mac` at `ip`), and learn the asker when it gave its link-layer address.
    NeighborSolicit {
        /// The asker's IPv6 address.
        ip: Ipv6Addr,
        /// The asker's MAC (its source link-layer option, else the frame's source).
        mac: EthernetAddress,
        /// Whether `mac` came from the source link-layer option (only then learn it).
        learn: bool,
    },
    /// A neighbour advertisement with a target link-layer address: learn it.
    NeighborLearn {
        /// The target IPv6 address.
        ip: Ipv6Addr,
        /// Its MAC.
        mac: EthernetAddress,
    },
    /// A UDP datagram to our WireGuard port: the payload is `frame[offset..offset + len]`.
    WireGuard {
        /// The datagram's source.
        src: SocketAddr,
        /// The source MAC (the next hop back towards the sender).
        src_mac: EthernetAddress,
        /// Payload start.
        offset: usize,
        /// Payload length.
        len: usize,
    },
}

impl Wan {
    /// Classify one frame from the WAN, with WireGuard on `listen_port`. Only frames tagged
    /// with our VLAN pass when we have one, only untagged frames otherwise. A family without
    /// an address is dropped: ARP as [`WanDrop::Arp`], IPv4 as [`WanDrop::NotForUs`], IPv6 as
    /// [`WanDrop::Ipv6`].
    pub fn classify(&self, frame: &[u8], listen_port: u16) -> Result<Classified, WanDrop> {
        let eth = ethernet::Frame::new_checked(frame).map_err(|_| WanDrop::Ethernet)?;
        match (eth.vlan_tag(), self.vlan) {
            (None, None) => {}
            (Some(t), Some(v)) if t.vid == v => {}
            (None, Some(_)) => return Err(WanDrop::Untagged),
            (Some(_), _) => return Err(WanDrop::WrongVlan),
        }
        let src_mac = eth.src_addr();
        let l3 = eth.header_len();
        match eth.inner_ethertype() {
            ethernet::EtherType::ARP => classify_arp(eth.payload(), self.ipv4()),
            ethernet::EtherType::IPV4 => {
                let ours = self.ipv4();
                classify_v4(eth.payload(), l3, src_mac, ours, listen_port)
            }
            ethernet::EtherType::IPV6 => {
                let ours = self.ipv6().ok_or(WanDrop::Ipv6)?;
                classify_v6(eth.payload(), l3, src_mac, ours, listen_port)
            }
            _ => Err(WanDrop::Ethernet),
        }
    }
}

fn classify_arp(pkt: &[u8], ours: Option<Ipv4Addr>) -> Result<Classified, WanDrop> {
    let p = arp::Packet::new_checked(pkt).map_err(|_| WanDrop::Arp)?;
    let r = arp::Repr::parse(&p).map_err(|_| WanDrop::Arp)?;
    let ours = ours.ok_or(WanDrop::Arp)?;
    if r.target_protocol_addr != ours {
        return Err(WanDrop::Arp);
    }
    match r.operation {
        arp::Operation::Request => {
            Ok(Classified::ArpRequest { ip: r.source_protocol_addr, mac: r.source_hardware_addr })
        }
        arp::Operation::Reply if !r.source_protocol_addr.is_unspecified() => {
            Ok(Classified::ArpLearn { ip: r.source_protocol_addr, mac: r.source_hardware_addr })
        }
        _ => Err(WanDrop::Arp),
    }
}

fn classify_v4(
    pkt: &[u8],
    l3_off: usize,
    src_mac: EthernetAddress,
    ours: Option<Ipv4Addr>,
    listen_port: u16,
) -> Result<Classified, WanDrop> {
    let ip = ipv4::Packet::new_checked(pkt).map_err(|_| WanDrop::Ipv4)?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return Err(WanDrop::Ipv4);
    }
    // A multicast or broadcast source is a martian (the kernel's `ip_route_input_slow`): never
    // answered, never a peer.
    let src = ip.src_addr();
    if src.is_multicast() || src.is_broadcast() {
        return Err(WanDrop::Ipv4);
    }
    if Some(ip.dst_addr()) != ours {
        return Err(WanDrop::NotForUs);
    }
    if ip.is_fragment() {
        return Err(WanDrop::Fragment);
    }
    let l4_off = l3_off + usize::from(ip.header_len());
    match ip.protocol() {
        IpProtocol::UDP => {
            let u = udp::Packet::new_checked(ip.payload()).map_err(|_| WanDrop::Udp)?;
            if u.dst_port() != listen_port {
                return Err(WanDrop::Unhandled);
            }
            // The UDP checksum is not verified: every WireGuard message is authenticated (MAC1
            // or AEAD), which catches corruption a checksum would, and packet sockets on veth
            // or offloading NICs hand over frames whose checksum is only the pseudo-header sum
            // (CHECKSUM_PARTIAL).
            Ok(Classified::WireGuard {
                src: SocketAddr::V4(SocketAddrV4::new(src, u.src_port())),
                src_mac,
                offset: l4_off + udp::HEADER_LEN,
                len: u.payload().len(),
            })
        }
        IpProtocol::ICMP => {
            let p = icmpv4::Packet::new_checked(ip.payload()).map_err(|_| WanDrop::Icmp)?;
            match icmpv4::Repr::parse(&p, &ChecksumCapabilities::default()) {
                Ok(icmpv4::Repr::EchoRequest { .. }) => Ok(Classified::EchoRequest),
                _ => Err(WanDrop::Icmp),
            }
        }
        _ => Err(WanDrop::Unhandled),
    }
}

fn classify_v6(
    pkt: &[u8],
    l3_off: usize,
    src_mac: EthernetAddress,
    our: Ipv6Addr,
    listen_port: u16,
) -> Result<Classified, WanDrop> {
    let ip = ipv6::Packet::new_checked(pkt).map_err(|_| WanDrop::Ipv6)?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // A multicast source is invalid (RFC 4291 §2.7; the kernel's `ip6_rcv_core` drops it).
    if ip.version() != 6 || src.is_multicast() {
        return Err(WanDrop::Ipv6);
    }
    let to_us = dst == our;
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::UDP if to_us => {
            let u = udp::Packet::new_checked(payload).map_err(|_| WanDrop::Udp)?;
            if u.dst_port() != listen_port {
                return Err(WanDrop::Unhandled);
            }
            // As over IPv4, the UDP checksum (mandatory over IPv6) is not verified: WireGuard
            // authenticates every message, and packet sockets may hand over partial checksums.
            Ok(Classified::WireGuard {
                src: SocketAddr::V6(SocketAddrV6::new(src, u.src_port(), 0, 0)),
                src_mac,
                offset: l3_off + ipv6::HEADER_LEN + udp::HEADER_LEN,
                len: u.payload().len(),
            })
        }
        IpProtocol::ICMPV6 if to_us || dst == solicited_node(our) || dst.is_multicast() => {
            let p = icmpv6::Packet::new_checked(payload).map_err(|_| WanDrop::Icmpv6)?;
            // Checksum verified: these messages are small and unauthenticated.
            let r =
                icmpv6::Repr::parse(&p, &src, &dst, &ChecksumCapabilities::default()).map_err(|_| WanDrop::Icmpv6)?;
            let nd_ok = ip.hop_limit() == 255;
            match r {
                icmpv6::Repr::EchoRequest { .. } if to_us => Ok(Classified::EchoRequest),
                icmpv6::Repr::NeighborSolicit { target_addr, source_lladdr } if nd_ok && target_addr == our => {
                    // Duplicate address detection (from ::) is not answered: we do not defend.
                    if src.is_unspecified() {
                        return Err(WanDrop::Icmpv6);
                    }
                    Ok(Classified::NeighborSolicit {
                        ip: src,
                        mac: source_lladdr.unwrap_or(src_mac),
                        learn: source_lladdr.is_some(),
                    })
                }
                icmpv6::Repr::NeighborAdvert { target_addr, target_lladdr: Some(mac), .. }
                    if nd_ok && target_addr != our =>
                {
                    Ok(Classified::NeighborLearn { ip: target_addr, mac })
                }
                _ => Err(WanDrop::Icmpv6),
            }
        }
        _ if !to_us => Err(WanDrop::Ipv6),
        IpProtocol::IPV6_FRAG => Err(WanDrop::Fragment),
        _ => Err(WanDrop::Unhandled),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Outer, WanAddr};
    use super::*;
    use wgpmd_proto::wire::EtherType;

    const MSG: [u8; 18] = [4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9];

    /// A WireGuard datagram from the peer to us at `to`, tagged `vlan`.
    fn datagram(src: SocketAddr, to: SocketAddr, vlan: Option<u16>) -> Vec<u8> {
        let o = Outer { src_mac: PEER_MAC, dst_mac: OUR_MAC, vlan, src, dst: to, tos: 0, ident: 7 };
        let mut f = vec![0xa5u8; o.header_len() + MSG.len()];
        f[o.header_len()..].copy_from_slice(&MSG);
        assert_eq!(o.emit(&mut f, MSG.len()), Ok(f.len()));
        f
    }

    fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
        SocketAddr::new(ip.into(), port)
    }

    fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
        SocketAddr::new(ip.into(), port)
    }

    /// The same classification of the frame extended with Ethernet padding.
    fn padded(f: &[u8]) -> Vec<u8> {
        let mut g = f.to_vec();
        g.resize(f.len().max(60) + 6, 0);
        g
    }

    #[test]
    fn wireguard_over_ipv4_to_our_port() {
        let us = ours(None);
        let f = datagram(v4(PEER4, 4000), v4(OUR4, PORT), None);
        let want = Classified::WireGuard { src: v4(PEER4, 4000), src_mac: PEER_MAC, offset: 42, len: MSG.len() };
        assert_eq!(us.classify(&f, PORT), Ok(want));
        assert_eq!(us.classify(&padded(&f), PORT), Ok(want), "Ethernet padding is not payload");
        let Ok(Classified::WireGuard { offset, len, .. }) = us.classify(&f, PORT) else { unreachable!() };
        assert_eq!(&f[offset..offset + len], &MSG);
        assert_eq!(us.classify(&f, PORT + 1), Err(WanDrop::Unhandled), "another port");
        let other = datagram(v4(PEER4, 4000), v4(Ipv4Addr::new(192, 0, 2, 9), PORT), None);
        assert_eq!(us.classify(&other, PORT), Err(WanDrop::NotForUs));
        let v6_only = Wan { v4: None, ..us };
        assert_eq!(v6_only.classify(&f, PORT), Err(WanDrop::NotForUs), "no IPv4 address");
        // Header checksum, version, fragments.
        let mut g = f.clone();
        g[14 + 8] ^= 1;
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Ipv4), "bad header checksum");
        let mut g = f.clone();
        g[14] = 0x55;
        ipv4::Packet::new_unchecked(&mut g[14..]).fill_checksum();
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Ipv4), "version 5");
        let mut g = f.clone();
        ipv4::Packet::new_unchecked(&mut g[14..]).set_more_frags(true);
        ipv4::Packet::new_unchecked(&mut g[14..]).fill_checksum();
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Fragment));
        // Martian sources.
        for src in [Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::BROADCAST] {
            let g = datagram(v4(src, 4000), v4(OUR4, PORT), None);
            assert_eq!(us.classify(&g, PORT), Err(WanDrop::Ipv4), "from {src}");
            let echo = frame(
                PEER_MAC,
                OUR_MAC,
                None,
                EtherType::IPV4,
                &ipv4(
                    src,
                    OUR4,
                    IpProtocol::ICMP,
                    &icmp4(icmpv4::Repr::EchoRequest { ident: 1, seq_no: 1, data: b"" }),
                ),
            );
            assert_eq!(us.classify(&echo, PORT), Err(WanDrop::Ipv4), "echo from {src}");
        }
        // Truncated below the UDP length.
        let mut g = f.clone();
        udp::Packet::new_unchecked(&mut g[34..]).set_length(200);
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Udp));
        assert_eq!(us.classify(&f[..40], PORT), Err(WanDrop::Ipv4), "cut inside the IP packet");
    }

    #[test]
    fn wireguard_over_ipv6_to_our_port() {
        let us = ours(None);
        let f = datagram(v6(PEER6, 4000), v6(OUR6, PORT), None);
        let want = Classified::WireGuard { src: v6(PEER6, 4000), src_mac: PEER_MAC, offset: 62, len: MSG.len() };
        assert_eq!(us.classify(&f, PORT), Ok(want));
        assert_eq!(us.classify(&padded(&f), PORT), Ok(want));
        assert_eq!(Wan { v4: None, ..us }.classify(&f, PORT), Ok(want), "IPv6 only");
        assert_eq!(us.classify(&f, PORT + 1), Err(WanDrop::Unhandled));
        assert_eq!(Wan { v6: None, ..us }.classify(&f, PORT), Err(WanDrop::Ipv6), "no IPv6 address");
        let other = Wan { v6: Some(WanAddr { addr: PEER6, prefix: 64, gateway: None }), ..us };
        assert_eq!(other.classify(&f, PORT), Err(WanDrop::Ipv6), "not for us");
        let mut g = f.clone();
        g[14] = 0x40;
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Ipv6), "version 4 in an IPv6 frame");
        let frag =
            frame(PEER_MAC, OUR_MAC, None, EtherType::IPV6, &ipv6(PEER6, OUR6, IpProtocol::IPV6_FRAG, 64, &[0; 16]));
        assert_eq!(us.classify(&frag, PORT), Err(WanDrop::Fragment));
        let tcp = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV6, &ipv6(PEER6, OUR6, IpProtocol::TCP, 64, &[0; 20]));
        assert_eq!(us.classify(&tcp, PORT), Err(WanDrop::Unhandled));
    }

    #[test]
    fn vlan_tags_must_be_ours() {
        for (f, offset) in [
            (datagram(v4(PEER4, 4000), v4(OUR4, PORT), Some(100)), 46),
            (datagram(v6(PEER6, 4000), v6(OUR6, PORT), Some(100)), 66),
        ] {
            let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
            assert_eq!(eth.vlan_tag(), Some(ethernet::VlanTag::new(100)));
            let want = Ok(Classified::WireGuard {
                src: if offset == 46 { v4(PEER4, 4000) } else { v6(PEER6, 4000) },
                src_mac: PEER_MAC,
                offset,
                len: MSG.len(),
            });
            assert_eq!(ours(Some(100)).classify(&f, PORT), want);
            assert_eq!(ours(Some(101)).classify(&f, PORT), Err(WanDrop::WrongVlan));
            assert_eq!(ours(None).classify(&f, PORT), Err(WanDrop::WrongVlan), "tagged frames need --vlan");
        }
        let untagged = datagram(v4(PEER4, 4000), v4(OUR4, PORT), None);
        assert_eq!(ours(Some(100)).classify(&untagged, PORT), Err(WanDrop::Untagged));
        let arp = {
            let mut b = [0u8; 64];
            let n = peer(Some(7)).solicit(&mut b, OUR4.into()).unwrap();
            b[..n].to_vec()
        };
        assert_eq!(ours(Some(7)).classify(&arp, PORT), Ok(Classified::ArpRequest { ip: PEER4, mac: PEER_MAC }));
        assert_eq!(ours(Some(8)).classify(&arp, PORT), Err(WanDrop::WrongVlan));
        let echo = echo4_request(Some(7), b"ping");
        assert_eq!(ours(Some(7)).classify(&echo, PORT), Ok(Classified::EchoRequest));
        assert_eq!(ours(None).classify(&echo, PORT), Err(WanDrop::WrongVlan));
    }

    /// An ARP request from `asker` for `target`.
    fn arp_request(asker: &Wan, target: Ipv4Addr) -> Vec<u8> {
        let mut b = [0u8; 64];
        let n = asker.solicit(&mut b, target.into()).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn arp_about_our_address_only() {
        let us = ours(None);
        let req = arp_request(&peer(None), OUR4);
        assert_eq!(us.classify(&req, PORT), Ok(Classified::ArpRequest { ip: PEER4, mac: PEER_MAC }));
        let other = arp_request(&peer(None), Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(us.classify(&other, PORT), Err(WanDrop::Arp), "a request about someone else");
        assert_eq!(Wan { v4: None, ..us }.classify(&req, PORT), Err(WanDrop::Arp), "no IPv4 address");
        // A request for 0.0.0.0 is not ours either when we have no IPv4 address.
        let zero = arp_request(&peer(None), Ipv4Addr::UNSPECIFIED);
        assert_eq!(Wan { v4: None, ..us }.classify(&zero, PORT), Err(WanDrop::Arp));
        // Our reply, seen by the asker, teaches it our MAC; seen by anyone else, nothing.
        let mut r = req.clone();
        let n = us.arp_reply_in_place(&mut r).unwrap();
        assert_eq!(peer(None).classify(&r[..n], PORT), Ok(Classified::ArpLearn { ip: OUR4, mac: OUR_MAC }));
        assert_eq!(us.classify(&r[..n], PORT), Err(WanDrop::Arp), "a reply to someone else");
        // A reply from 0.0.0.0 teaches nothing.
        let nobody = Wan { v4: Some(WanAddr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0, gateway: None }), ..us };
        let mut z = req.clone();
        let n = nobody.arp_reply_in_place(&mut z).unwrap();
        assert_eq!(peer(None).classify(&z[..n], PORT), Err(WanDrop::Arp));
        // Malformed: another hardware type; cut short.
        let mut m = req.clone();
        m[14 + 1] = 6;
        assert_eq!(us.classify(&m, PORT), Err(WanDrop::Arp));
        assert_eq!(us.classify(&req[..40], PORT), Err(WanDrop::Arp));
    }

    #[test]
    fn icmp_echo_requests_only() {
        let us = ours(None);
        assert_eq!(us.classify(&echo4_request(None, b"ping"), PORT), Ok(Classified::EchoRequest));
        assert_eq!(us.classify(&echo6_request(None, b"ping"), PORT), Ok(Classified::EchoRequest));
        let reply = icmp4(icmpv4::Repr::EchoReply { ident: 1, seq_no: 2, data: b"x" });
        let f = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV4, &ipv4(PEER4, OUR4, IpProtocol::ICMP, &reply));
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Icmp), "an echo reply");
        let mut f = echo4_request(None, b"ping");
        *f.last_mut().unwrap() ^= 1;
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Icmp), "bad ICMP checksum");
        let mut f = echo6_request(None, b"ping");
        *f.last_mut().unwrap() ^= 1;
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Icmpv6), "bad ICMPv6 checksum");
        let tcp = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV4, &ipv4(PEER4, OUR4, IpProtocol::TCP, &[0; 20]));
        assert_eq!(us.classify(&tcp, PORT), Err(WanDrop::Unhandled));
        // An echo request to a multicast group is not answered.
        let all = "ff02::1".parse().unwrap();
        let icmp = icmp6(icmpv6::Repr::EchoRequest { ident: 1, seq_no: 1, data: b"" }, PEER6, all);
        let f = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV6, &ipv6(PEER6, all, IpProtocol::ICMPV6, 64, &icmp));
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Icmpv6));
    }

    #[test]
    fn neighbour_discovery() {
        let us = ours(None);
        let mut b = [0u8; 128];
        let n = peer(None).solicit(&mut b, OUR6.into()).unwrap();
        let ns = b[..n].to_vec();
        assert_eq!(us.classify(&ns, PORT), Ok(Classified::NeighborSolicit { ip: PEER6, mac: PEER_MAC, learn: true }));
        assert_eq!(us.classify(&padded(&ns), PORT), us.classify(&ns, PORT));
        let other =
            Wan { v6: Some(WanAddr { addr: "2001:db8::99".parse().unwrap(), prefix: 64, gateway: None }), ..us };
        assert_eq!(other.classify(&ns, PORT), Err(WanDrop::Icmpv6), "another target");
        // Hop limit other than 255: dropped.
        let mut g = ns.clone();
        g[14 + 7] = 64;
        assert_eq!(us.classify(&g, PORT), Err(WanDrop::Icmpv6));
        // Without the source link-layer option: answered to the frame's source, not learned.
        let group = solicited_node(OUR6);
        let bare = icmp6(icmpv6::Repr::NeighborSolicit { target_addr: OUR6, source_lladdr: None }, PEER6, group);
        let f = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV6, &ipv6(PEER6, group, IpProtocol::ICMPV6, 255, &bare));
        assert_eq!(us.classify(&f, PORT), Ok(Classified::NeighborSolicit { ip: PEER6, mac: PEER_MAC, learn: false }));
        // Duplicate address detection (from ::) is not answered.
        let dad = icmp6(
            icmpv6::Repr::NeighborSolicit { target_addr: OUR6, source_lladdr: None },
            Ipv6Addr::UNSPECIFIED,
            group,
        );
        let f = frame(
            PEER_MAC,
            OUR_MAC,
            None,
            EtherType::IPV6,
            &ipv6(Ipv6Addr::UNSPECIFIED, group, IpProtocol::ICMPV6, 255, &dad),
        );
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Icmpv6));
        // A solicitation from a multicast source (the wan_frame fuzz body found that our
        // advertisement to it, solicited flag set, is then invalid): dropped as IPv6.
        let mcast: Ipv6Addr = "ff80::6005".parse().unwrap();
        let msg =
            icmp6(icmpv6::Repr::NeighborSolicit { target_addr: OUR6, source_lladdr: Some(PEER_MAC) }, mcast, OUR6);
        let f = frame(PEER_MAC, OUR_MAC, None, EtherType::IPV6, &ipv6(mcast, OUR6, IpProtocol::ICMPV6, 255, &msg));
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Ipv6));
        // An advertisement teaches its target.
        let mut a = [0u8; 128];
        let n = peer(None).neighbor_advert(&mut a, OUR6, OUR_MAC).unwrap();
        assert_eq!(us.classify(&a[..n], PORT), Ok(Classified::NeighborLearn { ip: PEER6, mac: PEER_MAC }));
        // ... but not about our own address.
        let n = us.neighbor_advert(&mut a, OUR6, OUR_MAC).unwrap();
        assert_eq!(us.classify(&a[..n], PORT), Err(WanDrop::Icmpv6));
        // Without an IPv6 address nothing IPv6 is for us.
        assert_eq!(Wan { v6: None, ..us }.classify(&ns, PORT), Err(WanDrop::Ipv6));
    }

    #[test]
    fn frames_not_for_us() {
        let us = ours(None);
        let lldp = frame(PEER_MAC, OUR_MAC, None, EtherType(0x88cc), &[0; 46]);
        assert_eq!(us.classify(&lldp, PORT), Err(WanDrop::Ethernet));
        let len8023 = frame(PEER_MAC, OUR_MAC, None, EtherType(0x0100), &[0; 46]);
        assert_eq!(us.classify(&len8023, PORT), Err(WanDrop::Ethernet), "an 802.3 length");
        for n in 0..14 {
            assert_eq!(us.classify(&[0xffu8; 14][..n], PORT), Err(WanDrop::Ethernet), "{n} bytes");
        }
        let mut f = echo4_request(None, b"ping");
        f.truncate(30);
        assert_eq!(us.classify(&f, PORT), Err(WanDrop::Ipv4));
        let udp_to_peer = datagram(v4(OUR4, 4000), v4(PEER4, PORT), None);
        assert_eq!(us.classify(&udp_to_peer, PORT), Err(WanDrop::NotForUs));
        let udp6_to_peer = datagram(v6(OUR6, 4000), v6(PEER6, PORT), None);
        assert_eq!(us.classify(&udp6_to_peer, PORT), Err(WanDrop::Ipv6));
    }

    #[test]
    fn drop_reasons_are_counted_in_order() {
        for (i, r) in WanDrop::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
