//! Robustness of the wire views: a million generated and mutated frames through every parser.
//!
//! Random bytes die at the first length check, so inputs start as *valid* frames (Ethernet,
//! optionally 802.1Q-tagged, carrying ARP, IPv4 or IPv6 with UDP/WireGuard, ICMP echo and
//! errors, or neighbour discovery) built with a seeded RNG, and most are then mutated: bit
//! flips, byte overwrites, truncation, extension, length-field edits, WireGuard header edits
//! and resizes, with checksums repaired afterwards most of the time so mutations reach the
//! upper layers. Each input runs through `wgpmd_proto::fuzzing::wire_frame`, the same body the
//! cargo-fuzz target runs: `new_checked`, `Repr::parse`, every accessor, and `emit` back with
//! `parse(emit(x)) == x`. Counters of how far inputs got are printed and must be substantial,
//! so the test proves it reached deep rather than bouncing off length checks.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::fuzzing::{wire_frame, wireguard_message, Reached};
use wgpmd_proto::messages::{COOKIE_REPLY_LEN, DATA_MIN_LEN, INITIATION_LEN, PADDING_MULTIPLE, RESPONSE_LEN, TAG_LEN};
use wgpmd_proto::wire::{
    self, ArpOperation, ArpRepr, ChecksumCapabilities, Error, EtherType, EthernetAddress, EthernetFrame, EthernetRepr,
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpPair, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, MessageType, NeighborFlags, UdpPacket, UdpRepr, VlanTag,
};

const FRAMES: usize = 1_000_000;
const WG_ONLY: usize = 100_000;
const SEED: u64 = 0x5767_706d_6421;

// UDP payloads of the first four messages captured between two wireguard-go peers.
const CAPTURED: [&str; 4] = [
    concat!(
        "01000000744ec3433014f5efe575332f4b60707ff3c4e76c033135ab00ac68294c4bc7314dab2c61a2606fbcb23abb4c",
        "28175ab4b3bb4936310b9f89352ed6cb091acd44469302799cbb142c2f4a88343412660cb2f7a9230df47cb8e7875c94",
        "decae0fc1f663941a6ee50a2000277611df9840b15e293d1461a4a2633c443b925cb8596000000000000000000000000",
        "00000000",
    ),
    concat!(
        "02000000277ef96e744ec3433a631ab07c23a88fc7d57541ee5ae907f5969bcb5a3558ace7b3afbecbd51455803ad93b",
        "d8edc7a857bb7f201a817d41539f10318a7d5f47415131d97bca949100000000000000000000000000000000",
    ),
    "04000000277ef96e00000000000000007000a88283300576edc3cdefe19bf3e8",
    concat!(
        "04000000277ef96e01000000000000005c6c9f353014ed8dfc0be2fd7350559dd09783c6a647a0495bc3024d656669d1",
        "83ded46b70a1e141b9f2f46ae6ca281e188fc75dd1888d59427cd200cc2b3c3a09c28022c0ee6ba215a730c6c8701969",
        "ce823f839f300f2588ae0a2bd0027c9907a2724b0b7bbcb54b1435df4b622781",
    ),
];

const CAPS: ChecksumCapabilities = ChecksumCapabilities {
    ipv4: wire::Checksum::Both,
    udp: wire::Checksum::Both,
    icmpv4: wire::Checksum::Both,
    icmpv6: wire::Checksum::Both,
};

struct Gen {
    rng: ChaCha20Rng,
    captured: Vec<Vec<u8>>,
}

impl Gen {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
    }

    fn mac(&mut self) -> EthernetAddress {
        match self.rng.gen_range(0..10) {
            0 => EthernetAddress::BROADCAST,
            1 => EthernetAddress([0x33, 0x33, 0xff, 0, 0, self.rng.gen()]),
            _ => {
                let mut a: [u8; 6] = self.rng.gen();
                a[0] &= 0xfe;
                EthernetAddress(a)
            }
        }
    }

    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.rng.gen_range(0..4), 0, self.rng.gen_range(1..5))
    }

    fn v6(&mut self) -> Ipv6Addr {
        let host = self.rng.gen_range(1..5);
        match self.rng.gen_range(0..3) {
            0 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, host),
            _ => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host),
        }
    }

    /// A WireGuard message (captured, or random fields of the right shape), or junk.
    fn wireguard(&mut self) -> Vec<u8> {
        let (code, len) = match self.rng.gen_range(0..12) {
            0..=3 => return self.captured.choose(&mut self.rng).cloned().unwrap_or_default(),
            4 | 5 => (1u8, INITIATION_LEN),
            6 => (2, RESPONSE_LEN),
            7 => (3, COOKIE_REPLY_LEN),
            8..=10 => {
                let plain = PADDING_MULTIPLE * self.rng.gen_range(0..8);
                (4, DATA_MIN_LEN + plain)
            }
            _ => {
                let n = self.rng.gen_range(0..200);
                return self.bytes(n);
            }
        };
        let mut m = self.bytes(len);
        m[..4].copy_from_slice(&[code, 0, 0, 0]);
        m
    }

    fn udp(&mut self, pair: &IpPair, payload: &[u8]) -> Vec<u8> {
        let ports = [51820u16, 51821, 53, 12345];
        let repr = UdpRepr {
            src_port: *ports.choose(&mut self.rng).unwrap_or(&1),
            dst_port: *ports.choose(&mut self.rng).unwrap_or(&1),
            payload_len: payload.len(),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        out[8..].copy_from_slice(payload);
        let caps = if self.rng.gen_bool(0.1) { ChecksumCapabilities::ignored() } else { CAPS };
        repr.emit(&mut UdpPacket::new_unchecked(&mut out[..]), pair, &caps).unwrap();
        out
    }

    fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: payload.len(),
            ttl: self.rng.gen(),
            dscp: self.rng.gen_range(0..64),
            ecn: self.rng.gen_range(0..4),
            ident: self.rng.gen(),
            dont_frag: self.rng.gen(),
            more_frags: self.rng.gen_bool(0.05),
            frag_offset: if self.rng.gen_bool(0.05) { 8 * self.rng.gen_range(1..100) } else { 0 },
        };
        if self.rng.gen_bool(0.1) {
            // With options, built through the setters.
            let opt = 4 * self.rng.gen_range(1..4);
            let mut out = vec![0u8; 20 + opt + payload.len()];
            out[20 + opt..].copy_from_slice(payload);
            let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
            p.set_version(4);
            p.set_header_len((20 + opt) as u8);
            p.set_total_len((20 + opt + payload.len()) as u16);
            p.set_ident(repr.ident);
            p.set_dont_frag(repr.dont_frag);
            p.set_ttl(repr.ttl);
            p.set_protocol(protocol);
            p.set_src_addr(src);
            p.set_dst_addr(dst);
            p.options_mut().fill(1); // NOPs
            p.fill_checksum();
            return out;
        }
        let mut out = vec![0u8; repr.buffer_len()];
        out[20..].copy_from_slice(payload);
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]), &CAPS).unwrap();
        out
    }

    fn ipv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr, next_header: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header,
            payload_len: payload.len(),
            hop_limit: if next_header == IpProtocol::ICMPV6 { 255 } else { self.rng.gen() },
            traffic_class: self.rng.gen(),
            flow_label: self.rng.gen_range(0..0x10_0000),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        out[40..].copy_from_slice(payload);
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut out[..])).unwrap();
        out
    }

    fn icmpv4(&mut self) -> Vec<u8> {
        let n = self.rng.gen_range(0..64);
        let data = self.bytes(n);
        let offending;
        let mut least = 0;
        let repr = match self.rng.gen_range(0..4) {
            0 => Icmpv4Repr::EchoRequest { ident: self.rng.gen(), seq_no: self.rng.gen(), data: &data },
            1 => Icmpv4Repr::EchoReply { ident: self.rng.gen(), seq_no: self.rng.gen(), data: &data },
            _ => {
                let (s, d) = (self.v4(), self.v4());
                let wg = self.wireguard();
                let udp = self.udp(&IpPair::V4 { src: s, dst: d }, &wg);
                offending = self.ipv4(s, d, IpProtocol::UDP, &udp);
                // The quote must hold the offending header and 8 bytes.
                least = 8 + usize::from(offending[0] & 0x0f) * 4 + 8;
                let reason = if self.rng.gen_bool(0.7) {
                    Icmpv4DstUnreachable::FragRequired
                } else {
                    Icmpv4DstUnreachable::from_code(self.rng.gen_range(0..16)).unwrap()
                };
                Icmpv4Repr::DstUnreachable { reason, next_hop_mtu: self.rng.gen_range(500..1500), datagram: &offending }
            }
        };
        // Sometimes less room than the whole quote.
        let room = if least > 0 && self.rng.gen_bool(0.3) {
            self.rng.gen_range(least..=repr.buffer_len())
        } else {
            repr.buffer_len()
        };
        let mut out = vec![0u8; room];
        let n = repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]), &CAPS).unwrap();
        out.truncate(n);
        out
    }

    fn icmpv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let n = self.rng.gen_range(0..64);
        let data = self.bytes(n);
        let offending;
        let lladdr = if self.rng.gen_bool(0.8) { Some(self.mac()) } else { None };
        let target_addr = self.v6();
        let repr = match self.rng.gen_range(0..6) {
            0 => Icmpv6Repr::EchoRequest { ident: self.rng.gen(), seq_no: self.rng.gen(), data: &data },
            1 => Icmpv6Repr::EchoReply { ident: self.rng.gen(), seq_no: self.rng.gen(), data: &data },
            2 => {
                let (s, d) = (self.v6(), self.v6());
                let mut wg = self.wireguard();
                wg.resize(self.rng.gen_range(0..1500), 0);
                let udp = self.udp(&IpPair::V6 { src: s, dst: d }, &wg);
                offending = self.ipv6(s, d, IpProtocol::UDP, &udp);
                Icmpv6Repr::PktTooBig { mtu: self.rng.gen_range(1280..1500), packet: &offending }
            }
            3 | 4 => Icmpv6Repr::NeighborSolicit { target_addr, source_lladdr: lladdr },
            _ => {
                let flags = NeighborFlags {
                    router: self.rng.gen(),
                    solicited: !dst.is_multicast() && self.rng.gen(),
                    override_: self.rng.gen(),
                };
                Icmpv6Repr::NeighborAdvert { flags, target_addr, target_lladdr: lladdr }
            }
        };
        let mut out = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut Icmpv6Packet::new_unchecked(&mut out[..]), &src, &dst, &CAPS).unwrap();
        out.truncate(n);
        out
    }

    fn arp(&mut self) -> Vec<u8> {
        let repr = ArpRepr {
            operation: if self.rng.gen() { ArpOperation::Request } else { ArpOperation::Reply },
            source_hardware_addr: self.mac(),
            source_protocol_addr: self.v4(),
            target_hardware_addr: self.mac(),
            target_protocol_addr: self.v4(),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut wire::ArpPacket::new_unchecked(&mut out[..])).unwrap();
        out
    }

    /// A valid frame.
    fn frame(&mut self) -> Vec<u8> {
        let (ethertype, payload) = match self.rng.gen_range(0..20) {
            0..=1 => (EtherType::ARP, self.arp()),
            2..=9 => {
                let (s, d) = (self.v4(), self.v4());
                if self.rng.gen_bool(0.8) {
                    let wg = self.wireguard();
                    let udp = self.udp(&IpPair::V4 { src: s, dst: d }, &wg);
                    (EtherType::IPV4, self.ipv4(s, d, IpProtocol::UDP, &udp))
                } else {
                    let icmp = self.icmpv4();
                    (EtherType::IPV4, self.ipv4(s, d, IpProtocol::ICMP, &icmp))
                }
            }
            _ => {
                let (s, d) = (self.v6(), self.v6());
                if self.rng.gen_bool(0.6) {
                    let wg = self.wireguard();
                    let udp = self.udp(&IpPair::V6 { src: s, dst: d }, &wg);
                    (EtherType::IPV6, self.ipv6(s, d, IpProtocol::UDP, &udp))
                } else {
                    let d = if self.rng.gen_bool(0.3) { "ff02::1:ff00:2".parse().unwrap() } else { d };
                    let icmp = self.icmpv6(s, d);
                    (EtherType::IPV6, self.ipv6(s, d, IpProtocol::ICMPV6, &icmp))
                }
            }
        };
        let vlan = self.rng.gen_bool(0.3).then(|| VlanTag::from_tci(self.rng.gen()));
        let repr = EthernetRepr { src_addr: self.mac(), dst_addr: self.mac(), vlan, ethertype };
        let mut out = vec![0u8; repr.buffer_len(payload.len())];
        out[repr.header_len()..].copy_from_slice(&payload);
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..])).unwrap();
        if self.rng.gen_bool(0.5) && out.len() < 60 {
            out.resize(60, 0); // Ethernet padding
        }
        out
    }
}

/// Where the layers of a frame start, read without trusting anything.
struct Layout {
    l3: usize,
    v6: bool,
    l4: usize,
    end: usize,
    protocol: IpProtocol,
}

fn layout(frame: &[u8]) -> Option<Layout> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = eth.header_len();
    let ip = &frame[l3..];
    match eth.inner_ethertype() {
        EtherType::IPV4 => {
            let p = Ipv4Packet::new_unchecked(ip);
            let l4 = l3 + usize::from(p.header_len());
            let end = (l3 + usize::from(p.total_len())).min(frame.len());
            Some(Layout { l3, v6: false, l4, end, protocol: p.protocol() })
        }
        EtherType::IPV6 => {
            let p = Ipv6Packet::new_unchecked(ip);
            let end = (l3 + p.total_len()).min(frame.len());
            Some(Layout { l3, v6: true, l4: l3 + 40, end, protocol: p.next_header() })
        }
        _ => None,
    }
}

/// Recomputes the IP header and transport checksums of whatever the frame now says.
fn fix_checksums(frame: &mut [u8]) {
    let Some(l) = layout(frame) else { return };
    let pair = if l.v6 {
        Ipv6Packet::new_unchecked(&frame[l.l3..]).pair()
    } else {
        let mut p = Ipv4Packet::new_unchecked(&mut frame[l.l3..]);
        p.fill_checksum();
        p.pair()
    };
    let Some(l4) = frame.get_mut(l.l4..l.end) else { return };
    match (l.protocol, pair) {
        (IpProtocol::UDP, pair) => UdpPacket::new_unchecked(l4).fill_checksum(&pair),
        (IpProtocol::ICMP, IpPair::V4 { .. }) => Icmpv4Packet::new_unchecked(l4).fill_checksum(),
        (IpProtocol::ICMPV6, IpPair::V6 { src, dst }) => Icmpv6Packet::new_unchecked(l4).fill_checksum(&src, &dst),
        _ => {}
    }
}

/// Offset of the UDP payload, if the frame claims to carry UDP.
fn udp_payload_offset(frame: &[u8]) -> Option<usize> {
    let l = layout(frame)?;
    (l.protocol == IpProtocol::UDP && l.l4 + 8 <= frame.len()).then_some(l.l4 + 8)
}

/// Resizes the UDP payload to `len` bytes and rewrites the IP and UDP length fields to match.
fn resize_udp_payload(frame: &mut Vec<u8>, len: usize, fill: u8) {
    let Some(l) = layout(frame) else { return };
    if l.protocol != IpProtocol::UDP || l.l4 + 8 > l.end {
        return;
    }
    let start = l.l4 + 8;
    let mut payload = frame[start..l.end].to_vec();
    payload.resize(len, fill);
    frame.truncate(start);
    frame.extend_from_slice(&payload);
    UdpPacket::new_unchecked(&mut frame[l.l4..]).set_length((8 + len) as u16);
    if l.v6 {
        Ipv6Packet::new_unchecked(&mut frame[l.l3..]).set_payload_len((8 + len) as u16);
    } else {
        let hl = l.l4 - l.l3;
        Ipv4Packet::new_unchecked(&mut frame[l.l3..]).set_total_len((hl + 8 + len) as u16);
    }
}

fn mutate(rng: &mut ChaCha20Rng, frame: &mut Vec<u8>) {
    const INTERESTING: [u8; 8] = [0, 1, 4, 5, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..rng.gen_range(1..=3) {
        let len = frame.len();
        // Most damage lands in the headers, where the parsers look.
        let pos = |rng: &mut ChaCha20Rng| {
            if rng.gen_bool(0.7) {
                rng.gen_range(0..len.clamp(1, 80))
            } else {
                rng.gen_range(0..len.max(1))
            }
        };
        match rng.gen_range(0..10) {
            0 | 1 if len > 0 => {
                let i = pos(rng);
                frame[i.min(len - 1)] ^= 1 << rng.gen_range(0..8);
            }
            2 | 3 if len > 0 => {
                let i = pos(rng).min(len - 1);
                frame[i] = if rng.gen() { *INTERESTING.choose(rng).unwrap() } else { rng.gen() };
            }
            4 => frame.truncate(rng.gen_range(0..=len)),
            5 => {
                let n = rng.gen_range(1..64);
                frame.extend((0..n).map(|_| rng.gen::<u8>()));
            }
            6 | 7 => {
                // A length field: IPv4 IHL/total length, IPv6 payload length, UDP length.
                let Some(l) = layout(frame) else { continue };
                let delta: i32 = if rng.gen_bool(0.8) { rng.gen_range(-8..=8) } else { rng.gen_range(-2000..2000) };
                let at = match rng.gen_range(0..3) {
                    0 if !l.v6 => {
                        if let Some(b) = frame.get_mut(l.l3) {
                            *b = 0x40 | rng.gen_range(0..16);
                        }
                        continue;
                    }
                    0 | 1 => l.l3 + if l.v6 { 4 } else { 2 },
                    _ => l.l4 + 4,
                };
                if let Some(f) = frame.get_mut(at..at + 2) {
                    let v = i32::from(u16::from_be_bytes([f[0], f[1]])) + delta;
                    f.copy_from_slice(&(v.clamp(0, 0xffff) as u16).to_be_bytes());
                }
            }
            8 => {
                // The WireGuard header: type byte, a reserved byte.
                let Some(off) = udp_payload_offset(frame) else { continue };
                let i = off + if rng.gen_bool(0.6) { 0 } else { rng.gen_range(1..4) };
                if let Some(b) = frame.get_mut(i) {
                    *b = rng.gen_range(0..6);
                }
            }
            _ => {
                // The WireGuard message length, near the boundaries that matter.
                let sizes = [
                    0,
                    3,
                    4,
                    31,
                    DATA_MIN_LEN,
                    33,
                    63,
                    COOKIE_REPLY_LEN,
                    65,
                    91,
                    RESPONSE_LEN,
                    93,
                    147,
                    INITIATION_LEN,
                    149,
                ];
                let n = *sizes.choose(rng).unwrap();
                resize_udp_payload(frame, n, rng.gen());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    inputs: usize,
    ethernet: usize,
    vlan: usize,
    arp: usize,
    ipv4: usize,
    ipv4_checksum: usize,
    ipv6: usize,
    udp: usize,
    udp_checksum: usize,
    icmpv4: usize,
    icmpv6: usize,
    neighbor: usize,
    wireguard: [usize; 4],
    wg_truncated: usize,
    wg_malformed: usize,
    wg_unsupported: usize,
}

impl Counters {
    fn count(&mut self, r: &Reached) {
        self.inputs += 1;
        self.ethernet += usize::from(r.ethernet);
        self.vlan += usize::from(r.vlan);
        self.arp += usize::from(r.arp);
        self.ipv4 += usize::from(r.ipv4);
        self.ipv4_checksum += usize::from(r.ipv4_checksum);
        self.ipv6 += usize::from(r.ipv6);
        self.udp += usize::from(r.udp);
        self.udp_checksum += usize::from(r.udp_checksum);
        self.icmpv4 += usize::from(r.icmpv4);
        self.icmpv6 += usize::from(r.icmpv6);
        self.neighbor += usize::from(r.neighbor);
        match r.wireguard {
            Some(Ok(t)) => self.wireguard[usize::from(t.code() - 1)] += 1,
            Some(Err(e)) => self.count_error(e),
            None => {}
        }
    }

    fn count_error(&mut self, e: Error) {
        match e {
            Error::Truncated => self.wg_truncated += 1,
            Error::Malformed => self.wg_malformed += 1,
            Error::Unsupported => self.wg_unsupported += 1,
            Error::Checksum => unreachable!("classify reads no checksum"),
            e => unreachable!("classify returned an error it does not document: {e}"),
        }
    }
}

#[test]
fn a_million_mutated_frames_reach_every_layer_without_panicking() {
    let mut g = Gen {
        rng: ChaCha20Rng::seed_from_u64(SEED),
        captured: CAPTURED.iter().map(|h| hex::decode(h).unwrap()).collect(),
    };
    let mut c = Counters::default();
    let mut valid = 0usize;
    for _ in 0..FRAMES {
        let mut frame = if g.rng.gen_bool(0.02) {
            let n = g.rng.gen_range(0..128);
            g.bytes(n)
        } else {
            g.frame()
        };
        if g.rng.gen_bool(0.85) {
            mutate(&mut g.rng, &mut frame);
            if g.rng.gen_bool(0.7) {
                fix_checksums(&mut frame);
            }
        } else {
            valid += 1;
        }
        c.count(&wire_frame(&frame));
    }
    println!("{FRAMES} frames ({valid} left valid): {c:#?}");

    // Every stage was reached by a substantial share of the inputs.
    let at_least = |name: &str, n: usize, share: f64| {
        assert!(n as f64 >= share * FRAMES as f64, "{name}: only {n} of {FRAMES}");
    };
    at_least("ethernet", c.ethernet, 0.5);
    at_least("vlan", c.vlan, 0.1);
    at_least("arp", c.arp, 0.03);
    at_least("ipv4 with valid checksum", c.ipv4_checksum, 0.2);
    at_least("ipv6", c.ipv6, 0.2);
    at_least("udp", c.udp, 0.25);
    at_least("udp with valid checksum", c.udp_checksum, 0.15);
    at_least("icmpv4", c.icmpv4, 0.03);
    at_least("icmpv6", c.icmpv6, 0.06);
    at_least("neighbour discovery", c.neighbor, 0.03);
    for (t, &n) in c.wireguard.iter().enumerate() {
        at_least(&format!("wireguard type {}", t + 1), n, 0.01);
    }
    at_least("wireguard truncated", c.wg_truncated, 0.02);
    at_least("wireguard malformed", c.wg_malformed, 0.02);
    at_least("wireguard unsupported", c.wg_unsupported, 0.02);
}

#[test]
fn wireguard_messages_alone() {
    let mut g = Gen {
        rng: ChaCha20Rng::seed_from_u64(SEED ^ 1),
        captured: CAPTURED.iter().map(|h| hex::decode(h).unwrap()).collect(),
    };
    let mut c = Counters::default();
    for _ in 0..WG_ONLY {
        let mut m = g.wireguard();
        if g.rng.gen_bool(0.5) {
            for _ in 0..g.rng.gen_range(1..3) {
                match g.rng.gen_range(0..4) {
                    0 if !m.is_empty() => {
                        let i = g.rng.gen_range(0..m.len().min(8));
                        m[i] = g.rng.gen_range(0..6);
                    }
                    1 => m.truncate(g.rng.gen_range(0..=m.len())),
                    2 => m.push(g.rng.gen()),
                    _ => m.resize(
                        *[TAG_LEN, DATA_MIN_LEN, COOKIE_REPLY_LEN, RESPONSE_LEN, INITIATION_LEN]
                            .choose(&mut g.rng)
                            .unwrap(),
                        0,
                    ),
                }
            }
        }
        match wireguard_message(&m) {
            Ok(t) => c.wireguard[usize::from(t.code() - 1)] += 1,
            Err(e) => c.count_error(e),
        }
    }
    println!("{WG_ONLY} WireGuard payloads: {c:#?}");
    assert!(c.wireguard.iter().all(|&n| n > WG_ONLY / 50), "{:?}", c.wireguard);
    assert!(c.wg_truncated > 1000 && c.wg_malformed > 1000 && c.wg_unsupported > 1000);
    assert_eq!(MessageType::from_code(4), Some(MessageType::TransportData));
}

/// Writes the seed corpora of the `wire_frame` (valid frames of every kind) and
/// `wireguard_message` (captured and generated UDP payloads) cargo-fuzz targets. Run by hand when
/// the generator changes: `cargo test --release -p wgpmd-proto --test wire_robustness -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/{wire_frame,wireguard_message}/ (run by hand)"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let (frames, messages) = (root.join("wire_frame"), root.join("wireguard_message"));
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::create_dir_all(&messages).unwrap();
    let mut g = Gen {
        rng: ChaCha20Rng::seed_from_u64(SEED ^ 2),
        captured: CAPTURED.iter().map(|h| hex::decode(h).unwrap()).collect(),
    };
    for i in 0..64 {
        std::fs::write(frames.join(format!("seed-{i}")), g.frame()).unwrap();
    }
    for (i, m) in g.captured.clone().iter().enumerate() {
        std::fs::write(messages.join(format!("captured-{i}")), m).unwrap();
    }
    for i in 0..24 {
        std::fs::write(messages.join(format!("seed-{i}")), g.wireguard()).unwrap();
    }
}

/// Found by the `wire_frame` campaign: an IPv4 header whose checksum field is 0xffff where the
/// computed checksum is 0x0000 (one's complement's other zero) verifies, and emitting it writes
/// 0x0000; the body's byte-exact round trip must allow that one difference.
#[test]
fn regression_ipv4_checksum_negative_zero() {
    let frame = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/wire_frame/regression-ipv4-checksum-negative-zero"),
    )
    .unwrap();
    assert_eq!(&frame[24..26], &[0xff, 0xff], "the checksum field of the inner IPv4 header");
    let r = wire_frame(&frame);
    assert!(r.ipv4 && r.ipv4_checksum, "{r:?}");
}
