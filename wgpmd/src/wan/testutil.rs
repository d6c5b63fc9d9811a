//! Frames for the unit tests, built through the wire `Repr`s.

use std::net::{Ipv4Addr, Ipv6Addr};

use wgpmd_proto::wire::{
    ethernet, icmpv4, icmpv6, ipv4, ipv6, ChecksumCapabilities, EtherType, EthernetAddress, IpProtocol,
};

use super::{Wan, WanAddr};

pub const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
pub const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
pub const OUR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const OUR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xab, 0xcd02);
pub const PORT: u16 = 51820;

/// Us, dual stack, on `vlan`.
pub fn ours(vlan: Option<u16>) -> Wan {
    Wan {
        mac: OUR_MAC,
        v4: Some(WanAddr { addr: OUR4, prefix: 24, gateway: None }),
        v6: Some(WanAddr { addr: OUR6, prefix: 64, gateway: None }),
        vlan,
    }
}

/// The peer on the same link, dual stack, on `vlan`.
pub fn peer(vlan: Option<u16>) -> Wan {
    Wan {
        mac: PEER_MAC,
        v4: Some(WanAddr { addr: PEER4, prefix: 24, gateway: None }),
        v6: Some(WanAddr { addr: PEER6, prefix: 64, gateway: None }),
        vlan,
    }
}

/// An Ethernet frame around `payload`.
pub fn frame(src: EthernetAddress, dst: EthernetAddress, vlan: Option<u16>, ty: EtherType, payload: &[u8]) -> Vec<u8> {
    let repr = ethernet::Repr { src_addr: src, dst_addr: dst, vlan: vlan.map(ethernet::VlanTag::new), ethertype: ty };
    let mut f = vec![0xa5u8; repr.buffer_len(payload.len())];
    f[repr.header_len()..].copy_from_slice(payload);
    repr.emit(&mut ethernet::Frame::new_unchecked(&mut f[..])).unwrap();
    f
}

/// An IPv4 packet (TTL 64, DF, ident 0x1234) around `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol,
        payload_len: payload.len(),
        ttl: 64,
        dscp: 0,
        ecn: 0,
        ident: 0x1234,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
    };
    let mut p = vec![0xa5u8; repr.buffer_len()];
    p[ipv4::HEADER_LEN..].copy_from_slice(payload);
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut p[..]), &ChecksumCapabilities::default()).unwrap();
    p
}

/// An IPv6 packet around `payload`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: IpProtocol, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let repr = ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: next,
        payload_len: payload.len(),
        hop_limit,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut p = vec![0xa5u8; repr.buffer_len()];
    p[ipv6::HEADER_LEN..].copy_from_slice(payload);
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut p[..])).unwrap();
    p
}

/// An ICMP message.
pub fn icmp4(repr: icmpv4::Repr) -> Vec<u8> {
    let mut m = vec![0xa5u8; repr.buffer_len()];
    let n = repr.emit(&mut icmpv4::Packet::new_unchecked(&mut m[..]), &ChecksumCapabilities::default()).unwrap();
    m.truncate(n);
    m
}

/// An ICMPv6 message from `src` to `dst`.
pub fn icmp6(repr: icmpv6::Repr, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![0xa5u8; repr.buffer_len()];
    let n = repr
        .emit(&mut icmpv6::Packet::new_unchecked(&mut m[..]), &src, &dst, &ChecksumCapabilities::default())
        .unwrap();
    m.truncate(n);
    m
}

/// An ICMP echo request from the peer to us, in a frame tagged `vlan`.
pub fn echo4_request(vlan: Option<u16>, data: &[u8]) -> Vec<u8> {
    let icmp = icmp4(icmpv4::Repr::EchoRequest { ident: 0x0102, seq_no: 0x0304, data });
    frame(PEER_MAC, OUR_MAC, vlan, EtherType::IPV4, &ipv4(PEER4, OUR4, IpProtocol::ICMP, &icmp))
}

/// An ICMPv6 echo request from the peer to us, in a frame tagged `vlan`.
pub fn echo6_request(vlan: Option<u16>, data: &[u8]) -> Vec<u8> {
    let icmp = icmp6(icmpv6::Repr::EchoRequest { ident: 0x0506, seq_no: 0x0708, data }, PEER6, OUR6);
    frame(PEER_MAC, OUR_MAC, vlan, EtherType::IPV6, &ipv6(PEER6, OUR6, IpProtocol::ICMPV6, 64, &icmp))
}
