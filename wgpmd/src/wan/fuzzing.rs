//! The WAN fuzz body, shared by the cargo-fuzz target (`fuzz/fuzz_targets/wan_frame.rs`) and
//! the stable robustness test (`wgpmd/tests/wan_robustness.rs`), so both run the same code.
//!
//! One frame goes through [`Wan::classify`] as a dual-stack host on the frame's own VLAN (the
//! identity of the `OUR_*` constants), and, for what we answer, through the reply on a copy
//! of the frame; the reply is parsed back and must be addressed to the sender, from us, with
//! valid checksums. A WireGuard datagram is answered with outer headers ([`Outer`]) that must
//! classify, at the sender, as a datagram from us carrying the same bytes. The same frame is
//! also classified on another VLAN and with one family only, where the answer is fixed by the
//! first one. The in-place replies also run on every input, whatever it is.
//!
//! # Panics
//!
//! Only on a broken invariant: that is what the fuzzer looks for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use wgpmd_proto::wire::{
    arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp, ChecksumCapabilities, EtherType, EthernetAddress, IpProtocol,
};

use super::{Classified, Outer, Wan, WanAddr, WanDrop, ND_FRAME_LEN, SOLICIT_ROOM};

/// Our MAC.
pub const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0x77, 0x67, 0x70, 0x6d, 0x01]);
/// Our IPv4 address (a /24).
pub const OUR_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Our IPv6 address (a /64).
pub const OUR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Our WireGuard port.
pub const LISTEN_PORT: u16 = 51820;

/// Which branches one input reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WanReached {
    /// The Ethernet header parsed.
    pub ethernet: bool,
    /// A tagged frame was classified as ours on its VLAN.
    pub vlan: bool,
    /// An IPv4 frame was ours (echo request or WireGuard).
    pub ipv4: bool,
    /// An IPv6 frame was ours (echo request, neighbour discovery or WireGuard).
    pub ipv6: bool,
    /// An ARP request for our address.
    pub arp_request: bool,
    /// ... answered in place, and the reply checked.
    pub arp_reply: bool,
    /// An ARP reply that teaches a neighbour.
    pub arp_learn: bool,
    /// An ICMP echo request to us.
    pub echo_v4: bool,
    /// ... answered in place, and the reply checked.
    pub echo_reply_v4: bool,
    /// An ICMPv6 echo request to us.
    pub echo_v6: bool,
    /// ... answered in place, and the reply checked.
    pub echo_reply_v6: bool,
    /// A neighbour solicitation for our address.
    pub neighbor_solicit: bool,
    /// ... answered with an advertisement, checked and learned by the asker.
    pub neighbor_advert: bool,
    /// A neighbour advertisement that teaches a neighbour.
    pub neighbor_learn: bool,
    /// A WireGuard datagram over IPv4.
    pub wireguard_v4: bool,
    /// A WireGuard datagram over IPv6.
    pub wireguard_v6: bool,
    /// Outer IPv4 headers back to the sender emitted and classified at the sender.
    pub outer_v4: bool,
    /// Outer IPv6 headers back to the sender emitted and classified at the sender.
    pub outer_v6: bool,
    /// Why the frame was dropped, if it was.
    pub dropped: Option<WanDrop>,
}

/// Us, dual stack, on `vlan`.
pub fn ours(vlan: Option<u16>) -> Wan {
    Wan {
        mac: OUR_MAC,
        v4: Some(WanAddr { addr: OUR_V4, prefix: 24, gateway: None }),
        v6: Some(WanAddr { addr: OUR_V6, prefix: 64, gateway: None }),
        vlan,
    }
}

/// Recomputes the IPv4 header checksum and the ICMP/ICMPv6/UDP checksum of whatever the frame
/// says it carries (so a mutated frame gets past the checksum checks of [`Wan::classify`]).
pub fn repair_checksums(frame: &mut [u8]) {
    let Ok(eth) = ethernet::Frame::new_checked(&mut *frame) else { return };
    let (ty, l3) = (eth.inner_ethertype(), eth.header_len());
    let ip = &mut frame[l3..];
    match ty {
        EtherType::IPV4 => {
            let Ok(mut p) = ipv4::Packet::new_checked(&mut *ip) else { return };
            p.fill_checksum();
            let (pair, proto) = (p.pair(), p.protocol());
            let l4 = p.payload_mut();
            match proto {
                IpProtocol::ICMP if l4.len() >= 4 => icmpv4::Packet::new_unchecked(l4).fill_checksum(),
                IpProtocol::UDP if l4.len() >= 8 => udp::Packet::new_unchecked(l4).fill_checksum(&pair),
                _ => {}
            }
        }
        EtherType::IPV6 => {
            let Ok(mut p) = ipv6::Packet::new_checked(&mut *ip) else { return };
            let (src, dst, next) = (p.src_addr(), p.dst_addr(), p.next_header());
            let l4 = p.payload_mut();
            match next {
                IpProtocol::ICMPV6 if l4.len() >= 4 => icmpv6::Packet::new_unchecked(l4).fill_checksum(&src, &dst),
                IpProtocol::UDP if l4.len() >= 8 => {
                    udp::Packet::new_unchecked(l4).fill_checksum(&wgpmd_proto::wire::IpPair::V6 { src, dst })
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// The cargo-fuzz target's body: the frame as it is, and (when that changes it) with its
/// checksums repaired, so mutations reach past the checksum checks to the replies.
pub fn wan_frame_both(data: &[u8]) -> [WanReached; 2] {
    let raw = wan_frame(data);
    let mut fixed = data.to_vec();
    repair_checksums(&mut fixed);
    let repaired = if fixed[..] != data[..] { wan_frame(&fixed) } else { raw };
    [raw, repaired]
}

/// Runs one frame through the WAN side (see the module documentation).
pub fn wan_frame(data: &[u8]) -> WanReached {
    let mut r = WanReached::default();
    // The in-place replies on anything: never a panic, never a length beyond the frame.
    for reply in [Wan::arp_reply_in_place, Wan::echo_reply_in_place] {
        let mut copy = data.to_vec();
        if let Some(n) = reply(&ours(None), &mut copy) {
            assert!(n <= data.len(), "a reply of {n} bytes from {}", data.len());
        }
    }
    let Ok(eth) = ethernet::Frame::new_checked(data) else {
        assert_eq!(ours(None).classify(data, LISTEN_PORT), Err(WanDrop::Ethernet));
        r.dropped = Some(WanDrop::Ethernet);
        return r;
    };
    r.ethernet = true;
    let tag = eth.vlan_tag();
    let us = ours(tag.map(|t| t.vid));
    let got = us.classify(data, LISTEN_PORT);
    other_identities(data, &us, eth.inner_ethertype(), got);
    match got {
        Err(d) => r.dropped = Some(d),
        Ok(c) => {
            r.vlan = tag.is_some();
            match eth.inner_ethertype() {
                EtherType::IPV4 => r.ipv4 = true,
                EtherType::IPV6 => r.ipv6 = true,
                _ => {}
            }
            answer(data, &us, c, &mut r);
        }
    }
    r
}

/// The frame on another VLAN is dropped for its tag; with one family only, the other family's
/// frames are dropped and this family's classify as with both.
fn other_identities(data: &[u8], us: &Wan, ty: EtherType, got: Result<Classified, WanDrop>) {
    let other = Wan { vlan: Some(us.vlan.map_or(100, |v| v ^ 1)), ..*us };
    let want = if us.vlan.is_some() { WanDrop::WrongVlan } else { WanDrop::Untagged };
    assert_eq!(other.classify(data, LISTEN_PORT), Err(want));
    if got == Err(WanDrop::Ethernet) {
        return;
    }
    let v4_only = Wan { v6: None, ..*us }.classify(data, LISTEN_PORT);
    let v6_only = Wan { v4: None, ..*us }.classify(data, LISTEN_PORT);
    match ty {
        EtherType::ARP => {
            assert_eq!(v4_only, got);
            assert_eq!(v6_only, Err(WanDrop::Arp));
        }
        EtherType::IPV4 => {
            assert_eq!(v4_only, got);
            assert!(matches!(v6_only, Err(WanDrop::Ipv4 | WanDrop::NotForUs)), "{v6_only:?}");
        }
        EtherType::IPV6 => {
            assert_eq!(v6_only, got);
            assert_eq!(v4_only, Err(WanDrop::Ipv6));
        }
        _ => {}
    }
}

fn answer(data: &[u8], us: &Wan, c: Classified, r: &mut WanReached) {
    let eth = ethernet::Frame::new_unchecked(data);
    match c {
        Classified::ArpRequest { ip, mac } => {
            r.arp_request = true;
            let req = arp::Repr::parse(&arp::Packet::new_unchecked(eth.payload())).expect("classified ARP parses");
            assert_eq!((req.operation, req.target_protocol_addr), (arp::Operation::Request, OUR_V4));
            assert_eq!((req.source_protocol_addr, req.source_hardware_addr), (ip, mac));
            let mut copy = data.to_vec();
            let n = us.arp_reply_in_place(&mut copy).expect("an ARP request is answered");
            let reply = ethernet::Frame::new_checked(&copy[..n]).expect("the reply parses");
            assert_eq!((reply.dst_addr(), reply.src_addr()), (eth.src_addr(), OUR_MAC));
            assert_eq!((reply.vlan_tag(), reply.inner_ethertype()), (eth.vlan_tag(), EtherType::ARP));
            let a = arp::Repr::parse(&arp::Packet::new_checked(reply.payload()).expect("ARP reply")).expect("parses");
            let want = arp::Repr {
                operation: arp::Operation::Reply,
                source_hardware_addr: OUR_MAC,
                source_protocol_addr: OUR_V4,
                target_hardware_addr: mac,
                target_protocol_addr: ip,
            };
            assert_eq!(a, want);
            r.arp_reply = true;
        }
        Classified::ArpLearn { ip, .. } => {
            assert!(!ip.is_unspecified());
            r.arp_learn = true;
        }
        Classified::EchoRequest => echo(data, us, r),
        Classified::NeighborSolicit { ip, mac, learn } => {
            r.neighbor_solicit = true;
            let req = ipv6::Packet::new_checked(eth.payload()).expect("classified IPv6 parses");
            assert_eq!(req.src_addr(), ip);
            assert!(!ip.is_unspecified());
            if !learn {
                assert_eq!(mac, eth.src_addr(), "without the option, the frame's source");
            }
            let mut out = [0xa5u8; SOLICIT_ROOM];
            let n = us.neighbor_advert(&mut out, ip, mac).expect("a solicitation is answered");
            let tag_len = if us.vlan.is_some() { 4 } else { 0 };
            assert_eq!(n, ND_FRAME_LEN + tag_len);
            let f = ethernet::Frame::new_checked(&out[..n]).expect("the advertisement parses");
            assert_eq!((f.dst_addr(), f.src_addr(), f.vlan_tag().map(|t| t.vid)), (mac, OUR_MAC, us.vlan));
            let p = ipv6::Packet::new_checked(f.payload()).expect("IPv6");
            assert_eq!((p.src_addr(), p.dst_addr(), p.hop_limit()), (OUR_V6, ip, 255));
            let m = icmpv6::Packet::new_checked(p.payload()).expect("ICMPv6");
            let na = icmpv6::Repr::parse(&m, &OUR_V6, &ip, &ChecksumCapabilities::default()).expect("checksum");
            let flags = icmpv6::NeighborFlags { router: false, solicited: true, override_: true };
            let want = icmpv6::Repr::NeighborAdvert { flags, target_addr: OUR_V6, target_lladdr: Some(OUR_MAC) };
            assert_eq!(na, want);
            // The asker learns us from it.
            if ip != OUR_V6 {
                let asker = Wan { mac, v4: None, v6: Some(WanAddr { addr: ip, prefix: 64, gateway: None }), ..*us };
                let learned = asker.classify(&out[..n], LISTEN_PORT);
                assert_eq!(learned, Ok(Classified::NeighborLearn { ip: OUR_V6, mac: OUR_MAC }));
            }
            r.neighbor_advert = true;
        }
        Classified::NeighborLearn { ip, .. } => {
            assert_ne!(ip, OUR_V6);
            r.neighbor_learn = true;
        }
        Classified::WireGuard { src, src_mac, offset, len } => wireguard(data, us, (src, src_mac, offset, len), r),
    }
}

/// An echo request to us: the reply on a copy is to the sender, with the request's body.
fn echo(data: &[u8], us: &Wan, r: &mut WanReached) {
    let eth = ethernet::Frame::new_unchecked(data);
    let caps = ChecksumCapabilities::default();
    let mut copy = data.to_vec();
    let v6 = eth.inner_ethertype() == EtherType::IPV6;
    let n = us.echo_reply_in_place(&mut copy).expect("an echo request is answered");
    let f = ethernet::Frame::new_checked(&copy[..n]).expect("the reply parses");
    assert_eq!((f.dst_addr(), f.src_addr(), f.vlan_tag()), (eth.src_addr(), OUR_MAC, eth.vlan_tag()));
    if v6 {
        r.echo_v6 = true;
        let req = ipv6::Packet::new_checked(eth.payload()).expect("IPv6");
        let asker = req.src_addr();
        let q = icmpv6::Packet::new_checked(req.payload()).expect("ICMPv6");
        let Ok(icmpv6::Repr::EchoRequest { ident, seq_no, data: body }) =
            icmpv6::Repr::parse(&q, &asker, &OUR_V6, &caps)
        else {
            panic!("classified as an echo request")
        };
        let p = ipv6::Packet::new_checked(f.payload()).expect("IPv6 reply");
        assert_eq!(n, f.header_len() + p.total_len());
        assert_eq!(
            (p.src_addr(), p.dst_addr(), p.hop_limit(), p.next_header()),
            (OUR_V6, asker, 64, IpProtocol::ICMPV6)
        );
        let m = icmpv6::Packet::new_checked(p.payload()).expect("ICMPv6 reply");
        let reply = icmpv6::Repr::parse(&m, &OUR_V6, &asker, &caps).expect("the reply's checksum");
        assert_eq!(reply, icmpv6::Repr::EchoReply { ident, seq_no, data: body });
        r.echo_reply_v6 = true;
    } else {
        r.echo_v4 = true;
        let req = ipv4::Packet::new_checked(eth.payload()).expect("IPv4");
        let asker = req.src_addr();
        let q = icmpv4::Packet::new_checked(req.payload()).expect("ICMP");
        let Ok(icmpv4::Repr::EchoRequest { ident, seq_no, data: body }) = icmpv4::Repr::parse(&q, &caps) else {
            panic!("classified as an echo request")
        };
        let p = ipv4::Packet::new_checked(f.payload()).expect("IPv4 reply");
        assert_eq!(n, f.header_len() + usize::from(p.total_len()));
        let ip = ipv4::Repr::parse(&p, &caps).expect("the reply's header checksum");
        assert_eq!((ip.src_addr, ip.dst_addr, ip.ttl, ip.protocol), (OUR_V4, asker, 64, IpProtocol::ICMP));
        let m = icmpv4::Packet::new_checked(p.payload()).expect("ICMP reply");
        let reply = icmpv4::Repr::parse(&m, &caps).expect("the reply's checksum");
        assert_eq!(reply, icmpv4::Repr::EchoReply { ident, seq_no, data: body });
        r.echo_reply_v4 = true;
    }
}

/// A datagram to our port: the payload is where the UDP header says, and a datagram back with
/// our outer headers reaches the sender as one from us.
fn wireguard(
    data: &[u8],
    us: &Wan,
    (src, src_mac, offset, len): (SocketAddr, EthernetAddress, usize, usize),
    r: &mut WanReached,
) {
    let eth = ethernet::Frame::new_unchecked(data);
    assert_eq!(src_mac, eth.src_addr());
    let payload = data.get(offset..offset + len).expect("the payload is inside the frame");
    let u =
        udp::Packet::new_checked(data.get(offset - udp::HEADER_LEN..offset + len).expect("UDP header")).expect("UDP");
    assert_eq!((u.src_port(), u.dst_port(), u.payload()), (src.port(), LISTEN_PORT, payload));
    let ours: IpAddr = match src {
        SocketAddr::V4(_) => {
            assert_eq!(eth.inner_ethertype(), EtherType::IPV4);
            r.wireguard_v4 = true;
            OUR_V4.into()
        }
        SocketAddr::V6(_) => {
            assert_eq!(eth.inner_ethertype(), EtherType::IPV6);
            r.wireguard_v6 = true;
            OUR_V6.into()
        }
    };
    let from = SocketAddr::new(ours, LISTEN_PORT);
    let tos = payload.first().copied().unwrap_or(0);
    let outer = Outer { src_mac: OUR_MAC, dst_mac: src_mac, vlan: us.vlan, src: from, dst: src, tos, ident: 1 };
    let hl = outer.header_len();
    let mut back = vec![0xa5u8; hl + len];
    back[hl..].copy_from_slice(payload);
    assert_eq!(outer.emit(&mut back, len), Ok(back.len()));
    let sender = match src.ip() {
        IpAddr::V4(a) => {
            Wan { mac: src_mac, v4: Some(WanAddr { addr: a, prefix: 24, gateway: None }), v6: None, ..*us }
        }
        IpAddr::V6(a) => {
            Wan { mac: src_mac, v4: None, v6: Some(WanAddr { addr: a, prefix: 64, gateway: None }), ..*us }
        }
    };
    let want = Classified::WireGuard { src: from, src_mac: OUR_MAC, offset: hl, len };
    assert_eq!(sender.classify(&back, src.port()), Ok(want));
    assert_eq!(&back[hl..], payload);
    let f = ethernet::Frame::new_checked(&back[..]).expect("Ethernet");
    if src.is_ipv6() {
        let p = ipv6::Packet::new_checked(f.payload()).expect("IPv6");
        assert_eq!(p.traffic_class(), tos);
        assert!(udp::Packet::new_checked(p.payload()).expect("UDP").verify_checksum(&p.pair()));
        r.outer_v6 = true;
    } else {
        let p = ipv4::Packet::new_checked(f.payload()).expect("IPv4");
        assert!(p.verify_checksum());
        assert_eq!((p.dscp() << 2 | p.ecn(), p.ttl(), p.ident()), (tos, 64, 1));
        assert_eq!(udp::Packet::new_checked(p.payload()).expect("UDP").checksum(), 0, "no UDP checksum over IPv4");
        r.outer_v4 = true;
    }
}
