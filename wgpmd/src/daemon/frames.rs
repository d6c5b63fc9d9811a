//! The WAN side's frames: what arrived (classify), replies built in place (ARP, ICMP echo),
//! and the outer Ethernet/IPv4/UDP header put in front of a WireGuard message.
//!
//! Everything works on byte slices so it is testable without a port; the worker applies it to
//! its buffers. IPv4 (ARP) and IPv6 (neighbour discovery). With a WAN VLAN (`--vlan N`) every frame in and out carries
//! the 802.1Q tag N; without one, tagged frames are dropped.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use wgpmd_proto::wire::{
    arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp, ChecksumCapabilities, EthernetAddress, IpPair, IpProtocol,
};

/// Ethernet + IPv4 (no options) + UDP.
pub const OUTER_V4_LEN: usize = 14 + 20 + 8;
/// The same behind an 802.1Q tag.
pub const OUTER_V4_VLAN_LEN: usize = OUTER_V4_LEN + ethernet::VLAN_TAG_LEN;
/// Ethernet + IPv6 (no extension headers) + UDP.
pub const OUTER_V6_LEN: usize = 14 + 40 + 8;
/// The same behind an 802.1Q tag.
pub const OUTER_V6_VLAN_LEN: usize = OUTER_V6_LEN + ethernet::VLAN_TAG_LEN;
/// A neighbour solicitation or advertisement with its link-layer address option, untagged.
pub const ND_FRAME_LEN: usize = 14 + 40 + icmpv6::ND_HEADER_LEN + icmpv6::LLADDR_OPTION_LEN;

/// Why a WAN frame was not for WireGuard or a reply (each counted per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WanDrop {
    /// Not a valid Ethernet frame, or an EtherType we do not handle (IPv6, 802.1Q tagged).
    Ethernet,
    /// Malformed ARP, or ARP not about our address.
    Arp,
    /// Malformed IPv4 header or bad header checksum.
    Ipv4,
    /// IPv4 not addressed to us.
    NotForUs,
    /// IPv4 fragment (WireGuard messages are never fragmented by a sane peer).
    Fragment,
    /// A protocol other than UDP or ICMP echo, or UDP to another port.
    Unhandled,
    /// Malformed UDP or bad UDP checksum.
    Udp,
    /// ICMP that is not an echo request, or malformed.
    Icmp,
    /// An untagged frame while the WAN is a VLAN (`--vlan`).
    Untagged,
    /// A frame tagged with another VLAN than ours (or tagged at all without `--vlan`).
    WrongVlan,
    /// Malformed IPv6 header, IPv6 not addressed to us, or IPv6 without a WAN IPv6 address.
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
    /// An ARP request for our address: answer with [`arp_reply_in_place`]. Carries the asker.
    ArpRequest {
        /// The sender's IPv4 address.
        ip: Ipv4Addr,
        /// The sender's MAC.
        mac: EthernetAddress,
    },
    /// An ARP reply (or a request from a neighbour about someone else): learn the sender.
    ArpLearn {
        /// The sender's IPv4 address.
        ip: Ipv4Addr,
        /// The sender's MAC.
        mac: EthernetAddress,
    },
    /// An ICMP or ICMPv6 echo request to us: answer with [`icmp_echo_reply_in_place`].
    EchoRequest,
    /// A neighbour solicitation for our IPv6 address: answer with [`neighbor_advert`] (to `mac`
    /// at `ip`), and learn the asker when it gave its link-layer address.
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

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 32 bits).
pub fn multicast_mac(ip: Ipv6Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Classify one untagged WAN frame addressed to `our_ip`, with WireGuard on `listen_port`.
pub fn classify(frame: &[u8], our_ip: Ipv4Addr, listen_port: u16) -> Result<Classified, WanDrop> {
    classify_vlan(frame, our_ip, listen_port, None)
}

/// [`classify`] on a WAN that is VLAN `vlan` (when given): only frames tagged `vlan` pass;
/// without one, only untagged frames.
pub fn classify_vlan(
    frame: &[u8],
    our_ip: Ipv4Addr,
    listen_port: u16,
    vlan: Option<u16>,
) -> Result<Classified, WanDrop> {
    classify_dual(frame, Some(our_ip), None, listen_port, vlan)
}

/// [`classify_vlan`] for a WAN with an IPv4 address, an IPv6 address, or both (a family
/// without an address is dropped: ARP/IPv4 as [`WanDrop::Arp`]/[`WanDrop::NotForUs`], IPv6 as
/// [`WanDrop::Ipv6`]).
pub fn classify_dual(
    frame: &[u8],
    our_v4: Option<Ipv4Addr>,
    our_v6: Option<Ipv6Addr>,
    listen_port: u16,
    vlan: Option<u16>,
) -> Result<Classified, WanDrop> {
    // 0.0.0.0 never matches a target or destination we accept.
    let our_ip = our_v4.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| WanDrop::Ethernet)?;
    match (eth.vlan_tag(), vlan) {
        (None, None) => {}
        (Some(t), Some(v)) if t.vid == v => {}
        (None, Some(_)) => return Err(WanDrop::Untagged),
        (Some(_), _) => return Err(WanDrop::WrongVlan),
    }
    let src_mac = eth.src_addr();
    match eth.inner_ethertype() {
        ethernet::EtherType::ARP => {
            let p = arp::Packet::new_checked(eth.payload()).map_err(|_| WanDrop::Arp)?;
            let r = arp::Repr::parse(&p).map_err(|_| WanDrop::Arp)?;
            match r.operation {
                arp::Operation::Request if r.target_protocol_addr == our_ip => {
                    Ok(Classified::ArpRequest { ip: r.source_protocol_addr, mac: r.source_hardware_addr })
                }
                _ if r.source_protocol_addr.is_unspecified() || our_ip.is_unspecified() => Err(WanDrop::Arp),
                arp::Operation::Reply if r.target_protocol_addr == our_ip => {
                    Ok(Classified::ArpLearn { ip: r.source_protocol_addr, mac: r.source_hardware_addr })
                }
                _ => Err(WanDrop::Arp),
            }
        }
        ethernet::EtherType::IPV4 => {
            let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|_| WanDrop::Ipv4)?;
            if !ip.verify_checksum() {
                return Err(WanDrop::Ipv4);
            }
            if ip.dst_addr() != our_ip || our_ip.is_unspecified() {
                return Err(WanDrop::NotForUs);
            }
            if ip.is_fragment() {
                return Err(WanDrop::Fragment);
            }
            let l4_off = eth.header_len() + usize::from(ip.header_len());
            match ip.protocol() {
                IpProtocol::UDP => {
                    let u = udp::Packet::new_checked(ip.payload()).map_err(|_| WanDrop::Udp)?;
                    if u.dst_port() != listen_port {
                        return Err(WanDrop::Unhandled);
                    }
                    // The UDP checksum is not verified: every WireGuard message is authenticated
                    // (MAC1 or AEAD), which catches corruption a checksum would, and packet
                    // sockets on veth or offloading NICs hand over frames whose checksum is only
                    // the pseudo-header sum (CHECKSUM_PARTIAL).
                    let len = u.payload().len();
                    Ok(Classified::WireGuard {
                        src: SocketAddr::V4(SocketAddrV4::new(ip.src_addr(), u.src_port())),
                        src_mac,
                        offset: l4_off + 8,
                        len,
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
        ethernet::EtherType::IPV6 => {
            let our6 = our_v6.ok_or(WanDrop::Ipv6)?;
            classify_v6(eth.payload(), eth.header_len(), src_mac, our6, listen_port)
        }
        _ => Err(WanDrop::Ethernet),
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
    if ip.version() != 6 {
        return Err(WanDrop::Ipv6);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
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
                offset: l3_off + ipv6::HEADER_LEN + 8,
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

/// Write the Ethernet [+ VLAN] and IPv6 headers of an ICMPv6 neighbour discovery message and
/// the message itself into `frame`. Returns the length.
fn nd_frame(frame: &mut [u8], eth: ethernet::Repr, src: Ipv6Addr, dst: Ipv6Addr, msg: icmpv6::Repr) -> Option<usize> {
    let hl = 14 + if eth.vlan.is_some() { ethernet::VLAN_TAG_LEN } else { 0 };
    let mlen = msg.buffer_len();
    let len = hl + ipv6::HEADER_LEN + mlen;
    let buf = frame.get_mut(..len)?;
    let mut e = ethernet::Frame::new_unchecked(&mut *buf);
    eth.emit(&mut e).ok()?;
    let ip = &mut buf[hl..];
    let repr = ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::ICMPV6,
        payload_len: mlen,
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut p = ipv6::Packet::new_unchecked(&mut *ip);
    repr.emit(&mut p).ok()?;
    msg.emit(&mut icmpv6::Packet::new_unchecked(p.payload_mut()), &src, &dst, &ChecksumCapabilities::default()).ok()?;
    Some(len)
}

/// Build the solicited advertisement of `our_ip` (override, with our link-layer address) to
/// the asker `to_ip` at `to_mac` into `frame` ([`ND_FRAME_LEN`] bytes, 4 more with a tag).
pub fn neighbor_advert(
    frame: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv6Addr,
    to_mac: EthernetAddress,
    to_ip: Ipv6Addr,
    vlan: Option<u16>,
) -> Option<usize> {
    let eth = ethernet::Repr {
        src_addr: our_mac,
        dst_addr: to_mac,
        vlan: vlan.map(ethernet::VlanTag::new),
        ethertype: ethernet::EtherType::IPV6,
    };
    let flags = icmpv6::NeighborFlags { router: false, solicited: true, override_: true };
    nd_frame(
        frame,
        eth,
        our_ip,
        to_ip,
        icmpv6::Repr::NeighborAdvert { flags, target_addr: our_ip, target_lladdr: Some(our_mac) },
    )
}

/// Build a neighbour solicitation for `target` (to its solicited-node multicast address, with
/// our link-layer address) into `frame` ([`ND_FRAME_LEN`] bytes, 4 more with a tag).
pub fn neighbor_solicit(
    frame: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv6Addr,
    target: Ipv6Addr,
    vlan: Option<u16>,
) -> Option<usize> {
    let group = solicited_node(target);
    let eth = ethernet::Repr {
        src_addr: our_mac,
        dst_addr: multicast_mac(group),
        vlan: vlan.map(ethernet::VlanTag::new),
        ethertype: ethernet::EtherType::IPV6,
    };
    nd_frame(
        frame,
        eth,
        our_ip,
        group,
        icmpv6::Repr::NeighborSolicit { target_addr: target, source_lladdr: Some(our_mac) },
    )
}

/// Turn an ARP request for `our_ip` into the reply, in place. Returns the frame length.
pub fn arp_reply_in_place(frame: &mut [u8], our_mac: EthernetAddress, our_ip: Ipv4Addr) -> Option<usize> {
    let mut eth = ethernet::Frame::new_checked(&mut *frame).ok()?;
    let asker = eth.src_addr();
    eth.set_dst_addr(asker);
    eth.set_src_addr(our_mac);
    let p = arp::Packet::new_checked(eth.payload_mut()).ok()?;
    let req = arp::Repr::parse(&p).ok()?;
    let reply = arp::Repr {
        operation: arp::Operation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: req.source_hardware_addr,
        target_protocol_addr: req.source_protocol_addr,
    };
    let hl = eth.header_len();
    let mut p = arp::Packet::new_unchecked(eth.payload_mut());
    reply.emit(&mut p).ok()?;
    Some(hl + 28)
}

/// Build an ARP request for `target` into `frame` (at least 42 bytes, 46 with a VLAN tag),
/// tagged `vlan` when given. Returns the length.
pub fn arp_request(
    frame: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    vlan: Option<u16>,
) -> Option<usize> {
    let len = if vlan.is_some() { 46 } else { 42 };
    let buf = frame.get_mut(..len)?;
    let eth_repr = ethernet::Repr {
        src_addr: our_mac,
        dst_addr: EthernetAddress::BROADCAST,
        vlan: vlan.map(ethernet::VlanTag::new),
        ethertype: ethernet::EtherType::ARP,
    };
    let mut eth = ethernet::Frame::new_unchecked(&mut *buf);
    eth_repr.emit(&mut eth).ok()?;
    let req = arp::Repr {
        operation: arp::Operation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    req.emit(&mut arp::Packet::new_unchecked(eth.payload_mut())).ok()?;
    Some(len)
}

/// Turn an ICMP echo request to us into the reply, in place. Returns the frame length.
pub fn icmp_echo_reply_in_place(frame: &mut [u8], our_mac: EthernetAddress) -> Option<usize> {
    let mut eth = ethernet::Frame::new_checked(&mut *frame).ok()?;
    let asker = eth.src_addr();
    eth.set_dst_addr(asker);
    eth.set_src_addr(our_mac);
    let hl = eth.header_len();
    if eth.inner_ethertype() == ethernet::EtherType::IPV6 {
        let mut ip = ipv6::Packet::new_checked(eth.payload_mut()).ok()?;
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
        ip.set_hop_limit(64);
        let total = ip.total_len();
        let plen = usize::from(ip.payload_len());
        let mut icmp = icmpv6::Packet::new_checked(ip.payload_mut().get_mut(..plen)?).ok()?;
        icmp.set_msg_type(icmpv6::Message::ECHO_REPLY);
        icmp.fill_checksum(&dst, &src);
        return Some(hl + total);
    }
    let mut ip = ipv4::Packet::new_checked(eth.payload_mut()).ok()?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    ip.set_ttl(64);
    ip.fill_checksum();
    let total = usize::from(ip.total_len());
    let mut icmp = icmpv4::Packet::new_checked(ip.payload_mut()).ok()?;
    icmp.set_msg_type(icmpv4::Message::ECHO_REPLY);
    icmp.fill_checksum();
    Some(hl + total)
}

/// The outer headers of a WireGuard datagram, written into the [`OuterV4::len`] bytes in front
/// of the `payload_len`-byte message. The UDP checksum is left zero ("none", valid on IPv4),
/// as a NIC without checksum offload would otherwise spend a pass over the ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct OuterV4 {
    /// Our MAC.
    pub src_mac: EthernetAddress,
    /// The next hop's MAC.
    pub dst_mac: EthernetAddress,
    /// Our address.
    pub src: SocketAddrV4,
    /// The peer's endpoint.
    pub dst: SocketAddrV4,
    /// DSCP/ECN byte (the kernel marks handshakes 0x88).
    pub tos: u8,
    /// IPv4 identification.
    pub ident: u16,
    /// The WAN's 802.1Q VLAN, if any.
    pub vlan: Option<u16>,
}

impl OuterV4 {
    /// Length of the headers: [`OUTER_V4_LEN`], or [`OUTER_V4_VLAN_LEN`] with a tag.
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            OUTER_V4_VLAN_LEN
        } else {
            OUTER_V4_LEN
        }
    }

    /// Write the headers into `hdr` (exactly [`len`](Self::len) bytes).
    pub fn write(&self, hdr: &mut [u8], payload_len: usize) -> Option<()> {
        let hdr = hdr.get_mut(..self.header_len())?;
        hdr[0..6].copy_from_slice(&self.dst_mac.0);
        hdr[6..12].copy_from_slice(&self.src_mac.0);
        let hdr = match self.vlan {
            Some(v) => {
                hdr[12..14].copy_from_slice(&ethernet::EtherType::VLAN.0.to_be_bytes());
                hdr[14..16].copy_from_slice(&ethernet::VlanTag::new(v).tci().to_be_bytes());
                &mut hdr[4..]
            }
            None => hdr,
        };
        hdr[12..14].copy_from_slice(&ethernet::EtherType::IPV4.0.to_be_bytes());
        let total = u16::try_from(20 + 8 + payload_len).ok()?;
        let ip = &mut hdr[14..34];
        ip[0] = 0x45;
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        ip[6..8].copy_from_slice(&[0, 0]);
        ip[8] = 64;
        ip[9] = IpProtocol::UDP.0;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&self.src.ip().octets());
        ip[16..20].copy_from_slice(&self.dst.ip().octets());
        ipv4::Packet::new_unchecked(&mut *ip).fill_checksum();
        let u = &mut hdr[34..42];
        u[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        u[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
        Some(())
    }
}

/// The outer headers of a WireGuard datagram over IPv6. Unlike [`OuterV4`], the UDP checksum
/// is mandatory over IPv6 (RFC 8200 §8.1): [`write`](Self::write) needs the whole frame and
/// sums the payload. That is one extra pass over each ciphertext (about as much as a memcpy;
/// a NIC with checksum offload could take it over, packet sockets cannot).
#[derive(Debug, Clone, Copy)]
pub struct OuterV6 {
    /// Our MAC.
    pub src_mac: EthernetAddress,
    /// The next hop's MAC.
    pub dst_mac: EthernetAddress,
    /// Our address and port.
    pub src: SocketAddrV6,
    /// The peer's endpoint.
    pub dst: SocketAddrV6,
    /// Traffic class (DSCP/ECN).
    pub tclass: u8,
    /// The WAN's 802.1Q VLAN, if any.
    pub vlan: Option<u16>,
}

impl OuterV6 {
    /// Length of the headers: [`OUTER_V6_LEN`], or [`OUTER_V6_VLAN_LEN`] with a tag.
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            OUTER_V6_VLAN_LEN
        } else {
            OUTER_V6_LEN
        }
    }

    /// Write the headers into the first [`header_len`](Self::header_len) bytes of `frame`,
    /// whose next `payload_len` bytes are the message (summed into the UDP checksum).
    pub fn write(&self, frame: &mut [u8], payload_len: usize) -> Option<()> {
        let hl = self.header_len();
        let frame = frame.get_mut(..hl + payload_len)?;
        let udp_len = u16::try_from(8 + payload_len).ok()?;
        let eth = ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            vlan: self.vlan.map(ethernet::VlanTag::new),
            ethertype: ethernet::EtherType::IPV6,
        };
        eth.emit(&mut ethernet::Frame::new_unchecked(&mut *frame)).ok()?;
        let l3 = hl - ipv6::HEADER_LEN - 8;
        let repr = ipv6::Repr {
            src_addr: *self.src.ip(),
            dst_addr: *self.dst.ip(),
            next_header: IpProtocol::UDP,
            payload_len: usize::from(udp_len),
            hop_limit: 64,
            traffic_class: self.tclass,
            flow_label: 0,
        };
        let mut ip = ipv6::Packet::new_unchecked(&mut frame[l3..]);
        repr.emit(&mut ip).ok()?;
        let mut u = udp::Packet::new_unchecked(ip.payload_mut());
        u.set_src_port(self.src.port());
        u.set_dst_port(self.dst.port());
        u.set_length(udp_len);
        u.fill_checksum(&IpPair::V6 { src: *self.src.ip(), dst: *self.dst.ip() });
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn outer_header_round_trips_through_classify() {
        let payload = [4u8, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9];
        let mut f = vec![0xa5u8; OUTER_V4_LEN + payload.len()];
        f[OUTER_V4_LEN..].copy_from_slice(&payload);
        let o = OuterV4 {
            src_mac: PEER_MAC,
            dst_mac: OUR_MAC,
            src: SocketAddrV4::new(PEER_IP, 4000),
            dst: SocketAddrV4::new(OUR_IP, 51820),
            tos: 0,
            ident: 7,
            vlan: None,
        };
        o.write(&mut f, payload.len()).unwrap();
        let c = classify(&f, OUR_IP, 51820).unwrap();
        assert_eq!(
            c,
            Classified::WireGuard {
                src: "192.0.2.2:4000".parse().unwrap(),
                src_mac: PEER_MAC,
                offset: OUTER_V4_LEN,
                len: payload.len()
            }
        );
        assert_eq!(classify(&f, OUR_IP, 51821), Err(WanDrop::Unhandled));
        assert_eq!(classify(&f, PEER_IP, 51820), Err(WanDrop::NotForUs));
        f[20] ^= 1; // IPv4 header byte: checksum now wrong
        assert_eq!(classify(&f, OUR_IP, 51820), Err(WanDrop::Ipv4));
    }

    #[test]
    fn arp_request_is_answered_in_place() {
        let mut f = [0u8; 60];
        arp_request(&mut f, PEER_MAC, PEER_IP, OUR_IP, None).unwrap();
        assert_eq!(classify(&f, OUR_IP, 1), Ok(Classified::ArpRequest { ip: PEER_IP, mac: PEER_MAC }));
        assert_eq!(classify(&f, Ipv4Addr::new(192, 0, 2, 9), 1), Err(WanDrop::Arp));
        let n = arp_reply_in_place(&mut f, OUR_MAC, OUR_IP).unwrap();
        // The reply, seen by the asker, teaches it our MAC.
        assert_eq!(classify(&f[..n], PEER_IP, 1), Ok(Classified::ArpLearn { ip: OUR_IP, mac: OUR_MAC }));
        assert_eq!(&f[..6], &PEER_MAC.0);
    }

    #[test]
    fn echo_request_gets_a_valid_reply() {
        // An echo request from PEER to OUR: IPv4 + ICMP built by hand.
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[0..6].copy_from_slice(&OUR_MAC.0);
        f[6..12].copy_from_slice(&PEER_MAC.0);
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&PEER_IP.octets());
        ip[16..20].copy_from_slice(&OUR_IP.octets());
        ipv4::Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        f[34] = 8;
        f[38..42].copy_from_slice(&[0, 1, 0, 2]);
        f[42..46].copy_from_slice(b"ping");
        icmpv4::Packet::new_unchecked(&mut f[34..]).fill_checksum();
        assert_eq!(classify(&f, OUR_IP, 51820), Ok(Classified::EchoRequest));
        let n = icmp_echo_reply_in_place(&mut f, OUR_MAC).unwrap();
        let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
        assert_eq!(eth.dst_addr(), PEER_MAC);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR_IP, PEER_IP));
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), icmpv4::Message::ECHO_REPLY);
        assert_eq!(icmp.data(), b"ping");
    }

    #[test]
    fn tagged_outer_header_round_trips_on_its_vlan_only() {
        let payload = [4u8, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9];
        let o = OuterV4 {
            src_mac: PEER_MAC,
            dst_mac: OUR_MAC,
            src: SocketAddrV4::new(PEER_IP, 4000),
            dst: SocketAddrV4::new(OUR_IP, 51820),
            tos: 0,
            ident: 7,
            vlan: Some(100),
        };
        assert_eq!(o.header_len(), OUTER_V4_VLAN_LEN);
        let mut f = vec![0xa5u8; o.header_len() + payload.len()];
        f[o.header_len()..].copy_from_slice(&payload);
        o.write(&mut f, payload.len()).unwrap();
        let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.vlan_tag(), Some(ethernet::VlanTag::new(100)));
        assert_eq!(eth.inner_ethertype(), ethernet::EtherType::IPV4);
        assert!(ipv4::Packet::new_checked(eth.payload()).unwrap().verify_checksum());
        let want = Classified::WireGuard {
            src: "192.0.2.2:4000".parse().unwrap(),
            src_mac: PEER_MAC,
            offset: OUTER_V4_VLAN_LEN,
            len: payload.len(),
        };
        assert_eq!(classify_vlan(&f, OUR_IP, 51820, Some(100)), Ok(want));
        assert_eq!(classify_vlan(&f, OUR_IP, 51820, Some(101)), Err(WanDrop::WrongVlan));
        assert_eq!(classify(&f, OUR_IP, 51820), Err(WanDrop::WrongVlan), "tagged frames stay dropped without --vlan");
        // The same datagram untagged is dropped on a VLAN WAN.
        let u = OuterV4 { vlan: None, ..o };
        let mut g = vec![0u8; OUTER_V4_LEN + payload.len()];
        u.write(&mut g, payload.len()).unwrap();
        assert_eq!(classify_vlan(&g, OUR_IP, 51820, Some(100)), Err(WanDrop::Untagged));
        assert!(classify(&g, OUR_IP, 51820).is_ok());
    }

    #[test]
    fn tagged_arp_and_echo_replies_keep_the_tag() {
        let mut f = [0u8; 64];
        let n = arp_request(&mut f, PEER_MAC, PEER_IP, OUR_IP, Some(7)).unwrap();
        assert_eq!(n, 46);
        assert_eq!(classify_vlan(&f, OUR_IP, 1, Some(7)), Ok(Classified::ArpRequest { ip: PEER_IP, mac: PEER_MAC }));
        assert_eq!(classify_vlan(&f, OUR_IP, 1, Some(8)), Err(WanDrop::WrongVlan));
        let n = arp_reply_in_place(&mut f, OUR_MAC, OUR_IP).unwrap();
        assert_eq!(n, 46);
        assert_eq!(classify_vlan(&f[..n], PEER_IP, 1, Some(7)), Ok(Classified::ArpLearn { ip: OUR_IP, mac: OUR_MAC }));
        // Echo: a tagged request, built by hand.
        let mut f = vec![0u8; 18 + 20 + 8 + 4];
        f[0..6].copy_from_slice(&OUR_MAC.0);
        f[6..12].copy_from_slice(&PEER_MAC.0);
        f[12..14].copy_from_slice(&[0x81, 0]);
        f[14..16].copy_from_slice(&7u16.to_be_bytes());
        f[16..18].copy_from_slice(&[8, 0]);
        let ip = &mut f[18..38];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&PEER_IP.octets());
        ip[16..20].copy_from_slice(&OUR_IP.octets());
        ipv4::Packet::new_unchecked(&mut f[18..38]).fill_checksum();
        f[38] = 8;
        f[46..50].copy_from_slice(b"ping");
        icmpv4::Packet::new_unchecked(&mut f[38..]).fill_checksum();
        assert_eq!(classify_vlan(&f, OUR_IP, 51820, Some(7)), Ok(Classified::EchoRequest));
        assert_eq!(classify_vlan(&f, OUR_IP, 51820, None), Err(WanDrop::WrongVlan));
        let n = icmp_echo_reply_in_place(&mut f, OUR_MAC).unwrap();
        assert_eq!(n, 50);
        let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
        assert_eq!((eth.dst_addr(), eth.vlan_tag()), (PEER_MAC, Some(ethernet::VlanTag::new(7))));
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR_IP, PEER_IP));
    }

    const OUR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xab, 0xcd02);

    #[test]
    fn solicited_node_and_its_mac() {
        assert_eq!(solicited_node(PEER6), "ff02::1:ffab:cd02".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(solicited_node(PEER6)), EthernetAddress([0x33, 0x33, 0xff, 0xab, 0xcd, 0x02]));
    }

    #[test]
    fn outer_v6_round_trips_with_a_valid_udp_checksum() {
        let payload = [4u8, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 7];
        for vlan in [None, Some(42)] {
            let o = OuterV6 {
                src_mac: PEER_MAC,
                dst_mac: OUR_MAC,
                src: SocketAddrV6::new(PEER6, 4000, 0, 0),
                dst: SocketAddrV6::new(OUR6, 51820, 0, 0),
                tclass: 0x88,
                vlan,
            };
            let hl = o.header_len();
            let mut f = vec![0xa5u8; hl + payload.len()];
            f[hl..].copy_from_slice(&payload);
            o.write(&mut f, payload.len()).unwrap();
            let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
            assert_eq!(eth.inner_ethertype(), ethernet::EtherType::IPV6);
            let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr(), ip.traffic_class(), ip.hop_limit()), (PEER6, OUR6, 0x88, 64));
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert_ne!(u.checksum(), 0);
            assert!(u.verify_checksum(&ip.pair()));
            assert_eq!(u.payload(), &payload);
            let want = Classified::WireGuard {
                src: "[2001:db8::ab:cd02]:4000".parse().unwrap(),
                src_mac: PEER_MAC,
                offset: hl,
                len: payload.len(),
            };
            assert_eq!(classify_dual(&f, None, Some(OUR6), 51820, vlan), Ok(want));
            assert_eq!(classify_dual(&f, Some(OUR_IP), Some(OUR6), 51820, vlan), Ok(want));
            assert_eq!(classify_dual(&f, Some(OUR_IP), Some(OUR6), 51821, vlan), Err(WanDrop::Unhandled));
            assert_eq!(classify_dual(&f, Some(OUR_IP), Some(PEER6), 51820, vlan), Err(WanDrop::Ipv6));
            assert_eq!(
                classify_vlan(&f, OUR_IP, 51820, vlan),
                Err(WanDrop::Ipv6),
                "IPv6 dropped without an IPv6 address"
            );
        }
    }

    #[test]
    fn neighbor_solicit_is_answered_and_the_advert_learned() {
        let mut f = [0u8; 128];
        let n = neighbor_solicit(&mut f, PEER_MAC, PEER6, OUR6, None).unwrap();
        assert_eq!(n, ND_FRAME_LEN);
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let ns = classify_dual(&f[..n], None, Some(OUR6), 51820, None);
        assert_eq!(ns, Ok(Classified::NeighborSolicit { ip: PEER6, mac: PEER_MAC, learn: true }));
        // Checksum verified with the wire view.
        let ip = ipv6::Packet::new_checked(&f[14..n]).unwrap();
        assert!(icmpv6::Packet::new_checked(ip.payload()).unwrap().verify_checksum(&PEER6, &solicited_node(OUR6)));
        // Not for us: another target.
        assert_eq!(classify_dual(&f[..n], None, Some(PEER6), 51820, None), Err(WanDrop::Icmpv6));
        // Hop limit other than 255: dropped.
        let mut g = f;
        g[14 + 7] = 64;
        assert_eq!(classify_dual(&g[..n], None, Some(OUR6), 51820, None), Err(WanDrop::Icmpv6));
        // The advert, seen by the asker, teaches it our MAC.
        let mut a = [0u8; 128];
        let n = neighbor_advert(&mut a, OUR_MAC, OUR6, PEER_MAC, PEER6, None).unwrap();
        assert_eq!(&a[..6], &PEER_MAC.0);
        let ip = ipv6::Packet::new_checked(&a[14..n]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (OUR6, PEER6, 255));
        let p = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert!(p.verify_checksum(&OUR6, &PEER6));
        let r = icmpv6::Repr::parse(&p, &OUR6, &PEER6, &ChecksumCapabilities::default()).unwrap();
        let flags = icmpv6::NeighborFlags { router: false, solicited: true, override_: true };
        assert_eq!(r, icmpv6::Repr::NeighborAdvert { flags, target_addr: OUR6, target_lladdr: Some(OUR_MAC) });
        assert_eq!(
            classify_dual(&a[..n], None, Some(PEER6), 51820, None),
            Ok(Classified::NeighborLearn { ip: OUR6, mac: OUR_MAC })
        );
        // Tagged.
        let n = neighbor_solicit(&mut f, PEER_MAC, PEER6, OUR6, Some(9)).unwrap();
        assert_eq!(n, ND_FRAME_LEN + 4);
        assert!(matches!(
            classify_dual(&f[..n], None, Some(OUR6), 51820, Some(9)),
            Ok(Classified::NeighborSolicit { .. })
        ));
        assert_eq!(classify_dual(&f[..n], None, Some(OUR6), 51820, None), Err(WanDrop::WrongVlan));
    }

    #[test]
    fn icmpv6_echo_request_gets_a_valid_reply() {
        let mut f = vec![0u8; 14 + 40 + 8 + 4];
        let eth =
            ethernet::Repr { src_addr: PEER_MAC, dst_addr: OUR_MAC, vlan: None, ethertype: ethernet::EtherType::IPV6 };
        eth.emit(&mut ethernet::Frame::new_unchecked(&mut f[..])).unwrap();
        let repr = ipv6::Repr {
            src_addr: PEER6,
            dst_addr: OUR6,
            next_header: IpProtocol::ICMPV6,
            payload_len: 12,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut ip = ipv6::Packet::new_unchecked(&mut f[14..]);
        repr.emit(&mut ip).unwrap();
        icmpv6::Repr::EchoRequest { ident: 1, seq_no: 2, data: b"ping" }
            .emit(&mut icmpv6::Packet::new_unchecked(ip.payload_mut()), &PEER6, &OUR6, &ChecksumCapabilities::default())
            .unwrap();
        assert_eq!(classify_dual(&f, None, Some(OUR6), 51820, None), Ok(Classified::EchoRequest));
        let n = icmp_echo_reply_in_place(&mut f, OUR_MAC).unwrap();
        assert_eq!(n, f.len());
        let eth = ethernet::Frame::new_checked(&f[..n]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (OUR_MAC, PEER_MAC));
        let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR6, PEER6));
        let p = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        let r = icmpv6::Repr::parse(&p, &OUR6, &PEER6, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(r, icmpv6::Repr::EchoReply { ident: 1, seq_no: 2, data: b"ping" });
    }

    #[test]
    fn garbage_is_dropped_not_panicking() {
        for n in 0..80 {
            let f: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            let _ = classify(&f, OUR_IP, 51820);
            let _ = classify_vlan(&f, OUR_IP, 51820, Some(100));
            let _ = classify_dual(&f, Some(OUR_IP), Some(OUR6), 51820, None);
        }
    }
}
