//! Fuzz target bodies, shared by the cargo-fuzz crate (the repository's `fuzz/`, nightly) and
//! this crate's stable robustness tests (`tests/wire_robustness.rs` runs [`wire_frame`] and
//! [`wireguard_message`], `tests/device_robustness.rs` runs [`device_message`],
//! `tests/fuzz_corpus.rs` runs [`device_live`], [`uapi_request`], [`wg_conf`],
//! [`handshake_batch`] and replays every committed corpus), so both run exactly the same code.
//!
//! Owns no protocol rules; it drives [`crate::wire`] the way the datapath will: a frame goes
//! through every layer's `new_checked`, `Repr::parse` and accessors, as deep as it parses, and
//! each `Repr` that parses is emitted back and must parse to itself. Checksums are first
//! verified and, when that is the only failure, ignored, so mutated input still reaches the
//! upper layers (the role smoltcp gives `cfg(fuzzing)`, without a cfg). Accessors are also
//! called on *unchecked* views of the raw input, to hold the wire module to its no-panic
//! contract.
//!
//! # Panics
//! Only on a broken invariant (a parse/emit round trip that does not hold, a view that
//! disagrees with [`classify`]): that is what the fuzzer looks for.

mod batch;
mod conf;
mod device;
mod live;
mod uapi;

pub use batch::{handshake_batch, BatchReached, MAX_JOBS, PEERS};
pub use conf::{conf_resolver, wg_conf};
pub use device::{device_message, DeviceReached};
pub use live::{device_live, LiveReached, RESET_EVERY};
pub use uapi::{uapi_request, UapiReached, UAPI_KEYS, UAPI_MAX_PEERS};

use std::net::Ipv6Addr;

use crate::wire::{
    arp, classify, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp, wireguard, ChecksumCapabilities, Error, IpPair,
    IpProtocol, MessageType, Result,
};

/// How deep one input got: which stages it passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// The Ethernet header parsed.
    pub ethernet: bool,
    /// ... and carried an 802.1Q tag.
    pub vlan: bool,
    /// An ARP packet parsed.
    pub arp: bool,
    /// An IPv4 header parsed (checksum verified or ignored).
    pub ipv4: bool,
    /// ... with a valid header checksum.
    pub ipv4_checksum: bool,
    /// An IPv6 header parsed.
    pub ipv6: bool,
    /// A UDP header parsed (checksum verified or ignored).
    pub udp: bool,
    /// ... with an acceptable checksum.
    pub udp_checksum: bool,
    /// An ICMPv4 message parsed.
    pub icmpv4: bool,
    /// An ICMPv6 message parsed.
    pub icmpv6: bool,
    /// ... and it was a neighbour solicitation or advertisement.
    pub neighbor: bool,
    /// What [`classify`] said of the UDP payload, when one was reached.
    pub wireguard: Option<Result<MessageType>>,
}

/// Parses with checksums verified; if only the checksum failed, parses again ignoring it.
/// Returns the `Repr` and whether the checksum was good.
fn lenient<R>(parse: impl Fn(&ChecksumCapabilities) -> Result<R>) -> Option<(R, bool)> {
    match parse(&ChecksumCapabilities::default()) {
        Ok(r) => Some((r, true)),
        Err(Error::Checksum) => parse(&ChecksumCapabilities::ignored()).ok().map(|r| (r, false)),
        Err(e) => {
            // Checksums are checked after lengths and before types: ignoring them cannot turn
            // another error into success.
            assert_eq!(parse(&ChecksumCapabilities::ignored()).err(), Some(e));
            None
        }
    }
}

/// One Ethernet frame through every layer it parses as.
pub fn wire_frame(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    touch_unchecked(data);
    let Ok(frame) = ethernet::Frame::new_checked(data) else { return reached };
    let _ = (frame.dst_addr().is_multicast(), frame.src_addr().to_string(), frame.is_tagged());
    let Ok(repr) = ethernet::Repr::parse(&frame) else { return reached };
    reached.ethernet = true;
    reached.vlan = repr.vlan.is_some();
    assert_eq!(frame.vlan_tag(), repr.vlan);
    assert_eq!(frame.header_len(), repr.header_len());
    let mut out = data.to_vec();
    repr.emit(&mut ethernet::Frame::new_unchecked(&mut out[..])).expect("room for the header");
    assert_eq!(out, data, "Ethernet header round trip");

    let payload = frame.payload();
    match repr.ethertype {
        ethernet::EtherType::ARP => arp_packet(payload, &mut reached),
        ethernet::EtherType::IPV4 => ipv4_packet(payload, &mut reached),
        ethernet::EtherType::IPV6 => ipv6_packet(payload, &mut reached),
        _ => {}
    }
    reached
}

fn arp_packet(data: &[u8], reached: &mut Reached) {
    let Ok(packet) = arp::Packet::new_checked(data) else { return };
    let Ok(repr) = arp::Repr::parse(&packet) else { return };
    reached.arp = true;
    let mut out = data.to_vec();
    repr.emit(&mut arp::Packet::new_unchecked(&mut out[..])).expect("room for ARP");
    assert_eq!(out, data, "ARP round trip");
}

fn ipv4_packet(data: &[u8], reached: &mut Reached) {
    let Ok(packet) = ipv4::Packet::new_checked(data) else { return };
    let _ = (packet.options(), packet.is_fragment(), packet.checksum());
    let Some((repr, checksum_ok)) = lenient(|caps| ipv4::Repr::parse(&packet, caps)) else { return };
    reached.ipv4 = true;
    reached.ipv4_checksum = checksum_ok;
    assert_eq!(repr.payload_len, packet.payload().len());

    // Emit into a fresh buffer (options are dropped, so the payload moves up to offset 20).
    let mut out = vec![0xa5; repr.buffer_len()];
    out[ipv4::HEADER_LEN..].copy_from_slice(packet.payload());
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut out[..]), &ChecksumCapabilities::default()).expect("emit IPv4");
    let again = ipv4::Packet::new_checked(&out[..]).expect("emitted IPv4 is well formed");
    assert_eq!(ipv4::Repr::parse(&again, &ChecksumCapabilities::default()), Ok(repr), "IPv4 round trip");
    let reserved_flag = data.get(6).is_some_and(|b| b & 0x80 != 0);
    if checksum_ok && packet.header_len() == 20 && !reserved_flag {
        // One's complement has two zeros: a header whose checksum field is 0xffff where the
        // computed sum gives 0x0000 verifies too (RFC 1624 §3), and emit writes the 0x0000 form.
        let negative_zero = data[10..12] == [0xff, 0xff] && out[10..12] == [0, 0];
        assert!(
            out[..10] == data[..10] && out[12..20] == data[12..20] && (out[10..12] == data[10..12] || negative_zero),
            "IPv4 header bytes round trip: {:?} -> {:?}",
            &data[..20],
            &out[..20]
        );
    }

    if repr.frag_offset != 0 {
        return; // not a transport header
    }
    match repr.protocol {
        IpProtocol::UDP => udp_datagram(packet.payload(), &repr.pair(), reached),
        IpProtocol::ICMP => icmpv4_message(packet.payload(), reached),
        _ => {}
    }
}

fn ipv6_packet(data: &[u8], reached: &mut Reached) {
    let Ok(packet) = ipv6::Packet::new_checked(data) else { return };
    let Ok(repr) = ipv6::Repr::parse(&packet) else { return };
    reached.ipv6 = true;
    assert_eq!(repr.payload_len, packet.payload().len());
    let mut out = data.to_vec();
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut out[..])).expect("emit IPv6");
    assert_eq!(out, data, "IPv6 header round trip");
    match repr.next_header {
        IpProtocol::UDP => udp_datagram(packet.payload(), &repr.pair(), reached),
        IpProtocol::ICMPV6 => icmpv6_message(packet.payload(), &repr.src_addr, &repr.dst_addr, reached),
        _ => {}
    }
}

fn udp_datagram(data: &[u8], pair: &IpPair, reached: &mut Reached) {
    let Ok(packet) = udp::Packet::new_checked(data) else { return };
    let Some((repr, checksum_ok)) = lenient(|caps| udp::Repr::parse(&packet, pair, caps)) else { return };
    reached.udp = true;
    reached.udp_checksum = checksum_ok;
    let mut out = data.get(..repr.buffer_len()).expect("length checked").to_vec();
    repr.emit(&mut udp::Packet::new_unchecked(&mut out[..]), pair, &ChecksumCapabilities::default()).expect("emit UDP");
    let again = udp::Packet::new_checked(&out[..]).expect("emitted UDP is well formed");
    assert_eq!(udp::Repr::parse(&again, pair, &ChecksumCapabilities::default()), Ok(repr), "UDP round trip");
    if checksum_ok && packet.checksum() != 0 {
        assert_eq!(out, &data[..out.len()], "UDP bytes round trip");
    }
    reached.wireguard = Some(wireguard_message(packet.payload()));
}

fn icmpv4_message(data: &[u8], reached: &mut Reached) {
    let Ok(packet) = icmpv4::Packet::new_checked(data) else { return };
    let Some((repr, _)) = lenient(|caps| icmpv4::Repr::parse(&packet, caps)) else { return };
    reached.icmpv4 = true;
    let mut out = vec![0xa5; repr.buffer_len()];
    let n = repr
        .emit(&mut icmpv4::Packet::new_unchecked(&mut out[..]), &ChecksumCapabilities::default())
        .expect("emit ICMPv4");
    let again = icmpv4::Packet::new_checked(&out[..n]).expect("emitted ICMPv4 is well formed");
    assert_eq!(icmpv4::Repr::parse(&again, &ChecksumCapabilities::default()), Ok(repr), "ICMPv4 round trip");
    if let icmpv4::Repr::DstUnreachable { datagram, .. } = repr {
        // The quote is usually cut short of its total length: read it unchecked.
        let quoted = ipv4::Packet::new_unchecked(datagram);
        let _ = (quoted.src_addr(), quoted.dst_addr(), quoted.protocol(), quoted.payload(), quoted.verify_checksum());
        let _ = udp::Packet::new_unchecked(quoted.payload()).dst_port();
    }
}

fn icmpv6_message(data: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr, reached: &mut Reached) {
    let Ok(packet) = icmpv6::Packet::new_checked(data) else { return };
    let Some((repr, _)) = lenient(|caps| icmpv6::Repr::parse(&packet, src, dst, caps)) else { return };
    reached.icmpv6 = true;
    reached.neighbor = matches!(repr, icmpv6::Repr::NeighborSolicit { .. } | icmpv6::Repr::NeighborAdvert { .. });
    let mut out = vec![0xa5; repr.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let n = repr.emit(&mut icmpv6::Packet::new_unchecked(&mut out[..]), src, dst, &caps).expect("emit ICMPv6");
    let again = icmpv6::Packet::new_checked(&out[..n]).expect("emitted ICMPv6 is well formed");
    assert_eq!(icmpv6::Repr::parse(&again, src, dst, &caps), Ok(repr), "ICMPv6 round trip");
    if let icmpv6::Repr::PktTooBig { packet: quoted, .. } = repr {
        let q = ipv6::Packet::new_unchecked(quoted);
        let _ = (q.src_addr(), q.next_header(), q.payload(), q.pair());
    }
}

/// One UDP payload through [`classify`] and the WireGuard views. Every accepted message is
/// rebuilt field by field with the setters over a 0xa5-filled buffer and must come out equal.
pub fn wireguard_message(data: &[u8]) -> Result<MessageType> {
    let class = classify(data);
    let message = wireguard::Message::new_checked(data);
    assert_eq!(message.as_ref().map(|m| m.message_type()).map_err(|e| *e), class, "Message agrees with classify");
    // Each view's own check (its fast accepting path, then classify) says what classify says.
    let want = |ty: MessageType| match class {
        Ok(t) if t == ty => Ok(()),
        Ok(_) => Err(Error::Unsupported),
        Err(e) => Err(e),
    };
    let checks = [
        (MessageType::HandshakeInitiation, wireguard::HandshakeInitiation::new_unchecked(data).check_len()),
        (MessageType::HandshakeResponse, wireguard::HandshakeResponse::new_unchecked(data).check_len()),
        (MessageType::CookieReply, wireguard::CookieReply::new_unchecked(data).check_len()),
        (MessageType::TransportData, wireguard::TransportData::new_unchecked(data).check_len()),
    ];
    for (ty, got) in checks {
        assert_eq!(got, want(ty), "{ty} check_len agrees with classify");
    }
    let Ok(message) = message else { return class };
    let mut out = vec![0xa5u8; data.len()];
    match message {
        wireguard::Message::HandshakeInitiation(v) => {
            let mut w = wireguard::HandshakeInitiation::new_unchecked(&mut out[..]);
            w.init_header();
            w.set_sender_index(v.sender_index());
            w.set_unencrypted_ephemeral(&v.unencrypted_ephemeral());
            w.encrypted_static_mut().copy_from_slice(v.encrypted_static());
            w.encrypted_timestamp_mut().copy_from_slice(v.encrypted_timestamp());
            w.set_mac1(&v.mac1());
            w.set_mac2(&v.mac2());
            assert_eq!(w.mac2_covered().len(), v.mac1_covered().len() + 16);
        }
        wireguard::Message::HandshakeResponse(v) => {
            let mut w = wireguard::HandshakeResponse::new_unchecked(&mut out[..]);
            w.init_header();
            w.set_sender_index(v.sender_index());
            w.set_receiver_index(v.receiver_index());
            w.set_unencrypted_ephemeral(&v.unencrypted_ephemeral());
            w.encrypted_nothing_mut().copy_from_slice(v.encrypted_nothing());
            w.set_mac1(&v.mac1());
            w.set_mac2(&v.mac2());
            assert_eq!(w.mac2_covered().len(), v.mac1_covered().len() + 16);
        }
        wireguard::Message::CookieReply(v) => {
            let mut w = wireguard::CookieReply::new_unchecked(&mut out[..]);
            w.init_header();
            w.set_receiver_index(v.receiver_index());
            w.set_nonce(&v.nonce());
            w.encrypted_cookie_mut().copy_from_slice(v.encrypted_cookie());
        }
        wireguard::Message::TransportData(v) => {
            let mut w = wireguard::TransportData::new_unchecked(&mut out[..]);
            w.init_header();
            w.set_receiver_index(v.receiver_index());
            w.set_counter(v.counter());
            w.payload_mut().copy_from_slice(v.payload());
            assert!(v.payload().len() >= crate::messages::TAG_LEN);
        }
    }
    assert_eq!(out, data, "WireGuard message rebuilt from its fields");
    class
}

/// Every accessor of every view on the raw input, unchecked: none may panic, whatever the
/// length.
fn touch_unchecked(data: &[u8]) {
    let e = ethernet::Frame::new_unchecked(data);
    let _ = (e.dst_addr(), e.inner_ethertype(), e.vlan_tag(), e.payload());
    let a = arp::Packet::new_unchecked(data);
    let _ = (a.operation(), a.source_hardware_addr(), a.target_protocol_addr());
    let p4 = ipv4::Packet::new_unchecked(data);
    let _ = (p4.total_len(), p4.frag_offset(), p4.src_addr(), p4.options(), p4.payload(), p4.verify_checksum());
    let p6 = ipv6::Packet::new_unchecked(data);
    let _ = (p6.flow_label(), p6.dst_addr(), p6.payload());
    let u = udp::Packet::new_unchecked(data);
    let _ = (u.length(), u.payload(), u.verify_checksum(&p4.pair()), u.verify_checksum(&p6.pair()));
    let i4 = icmpv4::Packet::new_unchecked(data);
    let _ = (i4.next_hop_mtu(), i4.data(), i4.verify_checksum());
    let i6 = icmpv6::Packet::new_unchecked(data);
    let _ =
        (i6.target_addr(), i6.neighbor_flags(), i6.nd_options(), i6.verify_checksum(&p6.src_addr(), &p6.dst_addr()));
    let _ = icmpv6::find_lladdr(data, icmpv6::OPTION_SOURCE_LLADDR);
    let t = wireguard::TransportData::new_unchecked(data);
    let _ = (t.counter(), t.payload(), t.is_keepalive());
    let h = wireguard::HandshakeInitiation::new_unchecked(data);
    let _ = (h.mac1(), h.mac2_covered(), h.encrypted_timestamp());
}

#[cfg(test)]
mod tests {
    use super::*;

    // An initiation frame captured between two wireguard-go peers; its UDP checksum is partial.
    const FRAME: &str = concat!(
        "962f98a3f91af650d02112a30800450000b0749440004011b0e00a6300010a630002ca6cca6c009c1576",
        "01000000744ec3433014f5efe575332f4b60707ff3c4e76c033135ab00ac68294c4bc7314dab2c61a2606fbcb23abb4c",
        "28175ab4b3bb4936310b9f89352ed6cb091acd44469302799cbb142c2f4a88343412660cb2f7a9230df47cb8e7875c94",
        "decae0fc1f663941a6ee50a2000277611df9840b15e293d1461a4a2633c443b925cb8596000000000000000000000000",
        "00000000",
    );

    #[test]
    fn captured_frame_reaches_wireguard() {
        let b = hex::decode(FRAME).unwrap();
        let r = wire_frame(&b);
        assert!(r.ethernet && !r.vlan && r.ipv4 && r.ipv4_checksum && r.udp);
        assert!(!r.udp_checksum, "the capture carries a partial checksum");
        assert_eq!(r.wireguard, Some(Ok(MessageType::HandshakeInitiation)));
        for n in 0..b.len() {
            let _ = wire_frame(&b[..n]);
        }
        assert_eq!(wireguard_message(&b[42..]), Ok(MessageType::HandshakeInitiation));
        assert_eq!(wireguard_message(&b[43..]), Err(Error::Unsupported));
    }
}
