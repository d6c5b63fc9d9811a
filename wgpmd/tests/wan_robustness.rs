//! Robustness of the WAN side: about a million mutated frames (1.25 million in all) through `Wan::classify` and the
//! in-place replies, via the fuzz body `wgpmd::wan::fuzzing::wan_frame` (the same code the
//! `wan_frame` cargo-fuzz target runs).
//!
//! Inputs start as valid frames of every kind the WAN side handles, with random fields (a
//! seeded RNG): ARP requests and replies, neighbour solicitations and advertisements, ICMP and
//! ICMPv6 echo, WireGuard datagrams over IPv4 and IPv6, some 802.1Q-tagged, some addressed to
//! someone else or to another port, some Ethernet-padded. Most are then mutated (bit flips,
//! byte overwrites, truncation, extension), with checksums repaired half of the time so the
//! damage reaches past the checksum checks. The body checks its invariants on every input
//! (replies parse back, are addressed to the sender, checksums hold, a datagram back with our
//! outer headers reaches the sender intact); the counters of the branches reached must be
//! substantial, so the test proves it went deep rather than bouncing off length checks.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd::wan::fuzzing::{wan_frame, WanReached, LISTEN_PORT, OUR_MAC, OUR_V4, OUR_V6};
use wgpmd::wan::{solicited_node, WanDrop};
use wgpmd_proto::wire::{
    arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp, ChecksumCapabilities, EtherType, EthernetAddress, IpPair,
    IpProtocol,
};

const FRAMES: usize = 1_250_000;
/// At least this many of them are mutated (80 % are: about 1,000,000).
const MUTATED_AT_LEAST: usize = 990_000;
const SEED: u64 = 0x7761_6e5f_6672;

/// The kinds of valid frame the generator builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ArpRequest,
    ArpReply,
    NeighborSolicit,
    NeighborAdvert,
    Echo4,
    Echo6,
    Udp4,
    Udp6,
}

const KINDS: [Kind; 8] = [
    Kind::ArpRequest,
    Kind::ArpReply,
    Kind::NeighborSolicit,
    Kind::NeighborAdvert,
    Kind::Echo4,
    Kind::Echo6,
    Kind::Udp4,
    Kind::Udp6,
];

/// Choices the seed test fixes and the generator draws.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    /// Addressed to us (else to someone else, another port, another target).
    to_us: bool,
    vlan: Option<u16>,
    /// Pad to the 60-byte minimum and beyond.
    pad: bool,
}

struct Gen {
    rng: ChaCha20Rng,
}

impl Gen {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
    }

    fn mac(&mut self) -> EthernetAddress {
        let mut a: [u8; 6] = self.rng.gen();
        a[0] &= 0xfe;
        EthernetAddress(a)
    }

    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, self.rng.gen_range(2..250))
    }

    fn v6(&mut self) -> Ipv6Addr {
        let host = self.rng.gen_range(2..0xffff);
        if self.rng.gen_bool(0.3) {
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, host)
        } else {
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host)
        }
    }

    fn shape(&mut self) -> Shape {
        Shape {
            kind: *KINDS.choose(&mut self.rng).unwrap(),
            to_us: self.rng.gen_bool(0.85),
            vlan: self.rng.gen_bool(0.3).then(|| self.rng.gen_range(1..4095)),
            pad: self.rng.gen(),
        }
    }

    fn frame(&mut self, s: Shape) -> Vec<u8> {
        let src_mac = self.mac();
        let dst_mac = if self.rng.gen_bool(0.2) { EthernetAddress::BROADCAST } else { OUR_MAC };
        let (ethertype, payload) = match s.kind {
            Kind::ArpRequest | Kind::ArpReply => {
                let target = if s.to_us { OUR_V4 } else { self.v4() };
                let reply = s.kind == Kind::ArpReply;
                let repr = arp::Repr {
                    operation: if reply { arp::Operation::Reply } else { arp::Operation::Request },
                    source_hardware_addr: src_mac,
                    source_protocol_addr: if self.rng.gen_bool(0.05) { Ipv4Addr::UNSPECIFIED } else { self.v4() },
                    target_hardware_addr: if reply { OUR_MAC } else { EthernetAddress([0; 6]) },
                    target_protocol_addr: target,
                };
                let mut p = vec![0u8; repr.buffer_len()];
                repr.emit(&mut arp::Packet::new_unchecked(&mut p[..])).unwrap();
                (EtherType::ARP, p)
            }
            Kind::NeighborSolicit => {
                let src = if self.rng.gen_bool(0.05) { Ipv6Addr::UNSPECIFIED } else { self.v6() };
                let target = if s.to_us { OUR_V6 } else { self.v6() };
                let dst = if self.rng.gen_bool(0.8) { solicited_node(target) } else { target };
                let lladdr = self.rng.gen_bool(0.8).then_some(src_mac);
                let msg = icmpv6::Repr::NeighborSolicit { target_addr: target, source_lladdr: lladdr };
                (EtherType::IPV6, self.ipv6(src, dst, IpProtocol::ICMPV6, &icmp6(msg, src, dst)))
            }
            Kind::NeighborAdvert => {
                let src = self.v6();
                let target = if s.to_us { src } else { OUR_V6 };
                let dst = if self.rng.gen_bool(0.5) { OUR_V6 } else { "ff02::1".parse().unwrap() };
                let flags =
                    icmpv6::NeighborFlags { router: self.rng.gen(), solicited: false, override_: self.rng.gen() };
                let lladdr = self.rng.gen_bool(0.9).then_some(src_mac);
                let msg = icmpv6::Repr::NeighborAdvert { flags, target_addr: target, target_lladdr: lladdr };
                (EtherType::IPV6, self.ipv6(src, dst, IpProtocol::ICMPV6, &icmp6(msg, src, dst)))
            }
            Kind::Echo4 => {
                let n = self.rng.gen_range(0..64);
                let data = self.bytes(n);
                let (ident, seq_no) = (self.rng.gen(), self.rng.gen());
                let msg = if self.rng.gen_bool(0.9) {
                    icmpv4::Repr::EchoRequest { ident, seq_no, data: &data }
                } else {
                    icmpv4::Repr::EchoReply { ident, seq_no, data: &data }
                };
                let mut m = vec![0u8; msg.buffer_len()];
                let n =
                    msg.emit(&mut icmpv4::Packet::new_unchecked(&mut m[..]), &ChecksumCapabilities::default()).unwrap();
                m.truncate(n);
                let (src, dst) = (self.v4(), if s.to_us { OUR_V4 } else { self.v4() });
                (EtherType::IPV4, self.ipv4(src, dst, IpProtocol::ICMP, &m))
            }
            Kind::Echo6 => {
                let n = self.rng.gen_range(0..64);
                let data = self.bytes(n);
                let src = self.v6();
                let dst = if s.to_us { OUR_V6 } else { self.v6() };
                let msg = icmpv6::Repr::EchoRequest { ident: self.rng.gen(), seq_no: self.rng.gen(), data: &data };
                (EtherType::IPV6, self.ipv6(src, dst, IpProtocol::ICMPV6, &icmp6(msg, src, dst)))
            }
            Kind::Udp4 | Kind::Udp6 => {
                let wg = self.wireguard();
                let port = if s.to_us { LISTEN_PORT } else { *[53, 51821, 4500].choose(&mut self.rng).unwrap() };
                if s.kind == Kind::Udp4 {
                    let (src, dst) = (self.v4(), if s.to_us || self.rng.gen() { OUR_V4 } else { self.v4() });
                    let u = self.udp(IpPair::V4 { src, dst }, port, &wg);
                    (EtherType::IPV4, self.ipv4(src, dst, IpProtocol::UDP, &u))
                } else {
                    let (src, dst) = (self.v6(), if s.to_us || self.rng.gen() { OUR_V6 } else { self.v6() });
                    let u = self.udp(IpPair::V6 { src, dst }, port, &wg);
                    (EtherType::IPV6, self.ipv6(src, dst, IpProtocol::UDP, &u))
                }
            }
        };
        let repr = ethernet::Repr {
            src_addr: src_mac,
            dst_addr: dst_mac,
            vlan: s.vlan.map(|vid| ethernet::VlanTag { pcp: self.rng.gen_range(0..8), dei: false, vid }),
            ethertype,
        };
        let mut f = vec![0u8; repr.buffer_len(payload.len())];
        f[repr.header_len()..].copy_from_slice(&payload);
        repr.emit(&mut ethernet::Frame::new_unchecked(&mut f[..])).unwrap();
        if s.pad {
            let n = f.len().max(60) + self.rng.gen_range(0..8);
            f.resize(n, 0);
        }
        f
    }

    /// A WireGuard-shaped payload: a type byte, three zeros, random bytes of a message's size.
    fn wireguard(&mut self) -> Vec<u8> {
        let (code, len) = *[(1u8, 148), (2, 92), (3, 64), (4, 32), (4, 32 + 16 * self.rng.gen_range(1..90))]
            .choose(&mut self.rng)
            .unwrap();
        let mut m = self.bytes(len);
        m[..4].copy_from_slice(&[code, 0, 0, 0]);
        m
    }

    fn udp(&mut self, pair: IpPair, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let repr = udp::Repr { src_port: self.rng.gen_range(1..65535), dst_port, payload_len: payload.len() };
        let mut out = vec![0u8; repr.buffer_len()];
        out[udp::HEADER_LEN..].copy_from_slice(payload);
        repr.emit(&mut udp::Packet::new_unchecked(&mut out[..]), &pair, &ChecksumCapabilities::default()).unwrap();
        out
    }

    fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let frag = self.rng.gen_bool(0.03);
        let repr = ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: payload.len(),
            ttl: self.rng.gen(),
            dscp: self.rng.gen_range(0..64),
            ecn: self.rng.gen_range(0..4),
            ident: self.rng.gen(),
            dont_frag: !frag && self.rng.gen(),
            more_frags: frag,
            frag_offset: 0,
        };
        let mut out = vec![0u8; repr.buffer_len()];
        out[ipv4::HEADER_LEN..].copy_from_slice(payload);
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut out[..]), &ChecksumCapabilities::default()).unwrap();
        out
    }

    fn ipv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr, next: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let next = if self.rng.gen_bool(0.02) { IpProtocol::IPV6_FRAG } else { next };
        let repr = ipv6::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: next,
            payload_len: payload.len(),
            hop_limit: if next == IpProtocol::ICMPV6 && self.rng.gen_bool(0.95) { 255 } else { self.rng.gen() },
            traffic_class: self.rng.gen(),
            flow_label: self.rng.gen_range(0..0x10_0000),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        out[ipv6::HEADER_LEN..].copy_from_slice(payload);
        repr.emit(&mut ipv6::Packet::new_unchecked(&mut out[..])).unwrap();
        out
    }
}

fn icmp6(msg: icmpv6::Repr, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![0u8; msg.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let n = msg.emit(&mut icmpv6::Packet::new_unchecked(&mut m[..]), &src, &dst, &caps).unwrap();
    m.truncate(n);
    m
}

/// Bit flips, byte overwrites, truncation, extension: one to three of them, mostly in the
/// headers.
fn mutate(rng: &mut ChaCha20Rng, frame: &mut Vec<u8>) {
    const INTERESTING: [u8; 9] = [0, 1, 2, 0x40, 0x45, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..rng.gen_range(1..=3) {
        let len = frame.len();
        let pos = |rng: &mut ChaCha20Rng| {
            if rng.gen_bool(0.8) {
                rng.gen_range(0..len.clamp(1, 90))
            } else {
                rng.gen_range(0..len.max(1))
            }
        };
        match rng.gen_range(0..8) {
            0..=2 if len > 0 => {
                let i = pos(rng).min(len - 1);
                frame[i] ^= 1 << rng.gen_range(0..8);
            }
            3 | 4 if len > 0 => {
                let i = pos(rng).min(len - 1);
                frame[i] = if rng.gen() { *INTERESTING.choose(rng).unwrap() } else { rng.gen() };
            }
            5 | 6 => {
                let keep =
                    if rng.gen_bool(0.5) { len.saturating_sub(rng.gen_range(1..16)) } else { rng.gen_range(0..=len) };
                frame.truncate(keep);
            }
            _ => {
                let n = rng.gen_range(1..64);
                frame.extend((0..n).map(|_| rng.gen::<u8>()));
            }
        }
    }
}

/// Recomputes the IPv4 header checksum and the ICMP/ICMPv6/UDP checksum of whatever the frame
/// now says (the fuzz body's repair, which the cargo-fuzz target also applies).
fn fix_checksums(frame: &mut [u8]) {
    wgpmd::wan::fuzzing::repair_checksums(frame)
}

/// How many inputs reached each branch.
#[derive(Debug, Default)]
struct Counters {
    inputs: usize,
    ethernet: usize,
    vlan: usize,
    ipv4: usize,
    ipv6: usize,
    arp_request: usize,
    arp_reply: usize,
    arp_learn: usize,
    echo_v4: usize,
    echo_reply_v4: usize,
    echo_v6: usize,
    echo_reply_v6: usize,
    neighbor_solicit: usize,
    neighbor_advert: usize,
    neighbor_learn: usize,
    wireguard_v4: usize,
    wireguard_v6: usize,
    outer_v4: usize,
    outer_v6: usize,
    /// Mutated inputs that still got a reply or reached WireGuard.
    mutated_answered: usize,
    dropped: [usize; WanDrop::COUNT],
}

impl Counters {
    fn count(&mut self, r: &WanReached, mutated: bool) {
        self.inputs += 1;
        let add = |c: &mut usize, b: bool| *c += usize::from(b);
        add(&mut self.ethernet, r.ethernet);
        add(&mut self.vlan, r.vlan);
        add(&mut self.ipv4, r.ipv4);
        add(&mut self.ipv6, r.ipv6);
        add(&mut self.arp_request, r.arp_request);
        add(&mut self.arp_reply, r.arp_reply);
        add(&mut self.arp_learn, r.arp_learn);
        add(&mut self.echo_v4, r.echo_v4);
        add(&mut self.echo_reply_v4, r.echo_reply_v4);
        add(&mut self.echo_v6, r.echo_v6);
        add(&mut self.echo_reply_v6, r.echo_reply_v6);
        add(&mut self.neighbor_solicit, r.neighbor_solicit);
        add(&mut self.neighbor_advert, r.neighbor_advert);
        add(&mut self.neighbor_learn, r.neighbor_learn);
        add(&mut self.wireguard_v4, r.wireguard_v4);
        add(&mut self.wireguard_v6, r.wireguard_v6);
        add(&mut self.outer_v4, r.outer_v4);
        add(&mut self.outer_v6, r.outer_v6);
        let answered =
            r.arp_reply || r.echo_reply_v4 || r.echo_reply_v6 || r.neighbor_advert || r.outer_v4 || r.outer_v6;
        add(&mut self.mutated_answered, mutated && answered);
        if let Some(d) = r.dropped {
            self.dropped[d as usize] += 1;
        }
    }
}

/// The fuzz body, with the input shown if it panics (paste it into a unit test to replay).
fn run(frame: &[u8]) -> WanReached {
    match std::panic::catch_unwind(|| wan_frame(frame)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wan_frame panicked on {}", hex::encode(frame));
            std::panic::resume_unwind(e)
        }
    }
}

#[test]
fn a_million_mutated_frames_reach_every_branch_without_panicking() {
    let mut g = Gen { rng: ChaCha20Rng::seed_from_u64(SEED) };
    let mut c = Counters::default();
    let mut mutated_frames = 0;
    for _ in 0..FRAMES {
        let shape = g.shape();
        let mut frame = g.frame(shape);
        let mutated = g.rng.gen_bool(0.8);
        if mutated {
            mutated_frames += 1;
            mutate(&mut g.rng, &mut frame);
            if g.rng.gen_bool(0.5) {
                fix_checksums(&mut frame);
            }
        }
        c.count(&run(&frame), mutated);
    }
    println!("{FRAMES} frames, {mutated_frames} mutated: {c:#?}");
    assert!(mutated_frames >= MUTATED_AT_LEAST, "only {mutated_frames} mutated frames");
    for r in WanDrop::ALL {
        println!("dropped as {r:?}: {}", c.dropped[r as usize]);
    }

    let at_least = |name: &str, n: usize, share: f64| {
        assert!(n as f64 >= share * FRAMES as f64, "{name}: only {n} of {FRAMES}");
    };
    at_least("ethernet", c.ethernet, 0.9);
    at_least("VLAN-tagged frames classified on their VLAN", c.vlan, 0.05);
    at_least("IPv4 frames for us", c.ipv4, 0.1);
    at_least("IPv6 frames for us", c.ipv6, 0.1);
    at_least("ARP requests", c.arp_request, 0.02);
    at_least("ARP learned", c.arp_learn, 0.02);
    at_least("ICMP echo requests", c.echo_v4, 0.02);
    at_least("ICMPv6 echo requests", c.echo_v6, 0.02);
    at_least("neighbour solicitations", c.neighbor_solicit, 0.02);
    at_least("neighbour advertisements learned", c.neighbor_learn, 0.02);
    at_least("WireGuard over IPv4", c.wireguard_v4, 0.04);
    at_least("WireGuard over IPv6", c.wireguard_v6, 0.04);
    at_least("mutated frames still answered", c.mutated_answered, 0.1);
    // Everything we answer was answered, and the answer checked.
    assert_eq!(c.arp_reply, c.arp_request);
    assert_eq!(c.echo_reply_v4, c.echo_v4);
    assert_eq!(c.echo_reply_v6, c.echo_v6);
    assert_eq!(c.neighbor_advert, c.neighbor_solicit);
    assert_eq!((c.outer_v4, c.outer_v6), (c.wireguard_v4, c.wireguard_v6));
    // Every drop reason but the VLAN ones (the body classifies on the frame's own VLAN; it
    // checks those on another VLAN itself) is reached.
    for r in WanDrop::ALL {
        if !matches!(r, WanDrop::Untagged | WanDrop::WrongVlan) {
            assert!(c.dropped[r as usize] >= 100, "drop {r:?}: only {}", c.dropped[r as usize]);
        }
    }
}

/// One valid frame of each kind through the fuzz body, unmutated: each reaches its branch,
/// and frames for someone else are dropped for the right reason.
#[test]
fn seed_frames_reach_their_branch() {
    let mut g = Gen { rng: ChaCha20Rng::seed_from_u64(SEED ^ 1) };
    for vlan in [None, Some(42)] {
        for kind in KINDS {
            // Several draws: the generator varies details (fragments, hop limits) a few
            // percent of the time; the first clean one counts.
            let reached: Vec<WanReached> =
                (0..50).map(|_| run(&g.frame(Shape { kind, to_us: true, vlan, pad: vlan.is_some() }))).collect();
            let hit = |f: fn(&WanReached) -> bool| reached.iter().filter(|r| f(r)).count();
            let n = match kind {
                Kind::ArpRequest => hit(|r| r.arp_request && r.arp_reply && !r.ipv4 && !r.ipv6),
                Kind::ArpReply => hit(|r| r.arp_learn),
                Kind::NeighborSolicit => hit(|r| r.neighbor_solicit && r.neighbor_advert && r.ipv6),
                Kind::NeighborAdvert => hit(|r| r.neighbor_learn && r.ipv6),
                Kind::Echo4 => hit(|r| r.echo_v4 && r.echo_reply_v4 && r.ipv4),
                Kind::Echo6 => hit(|r| r.echo_v6 && r.echo_reply_v6 && r.ipv6),
                Kind::Udp4 => hit(|r| r.wireguard_v4 && r.outer_v4 && r.ipv4),
                Kind::Udp6 => hit(|r| r.wireguard_v6 && r.outer_v6 && r.ipv6),
            };
            assert!(n >= 35, "{kind:?} on {vlan:?}: {n} of 50 reached their branch: {:?}", reached[0]);
            assert!(reached.iter().all(|r| r.vlan == (vlan.is_some() && r.dropped.is_none())));
            // The same kind for someone else is dropped.
            let other: Vec<WanReached> =
                (0..50).map(|_| run(&g.frame(Shape { kind, to_us: false, vlan, pad: false }))).collect();
            let expected: &[WanDrop] = match kind {
                Kind::ArpRequest | Kind::ArpReply => &[WanDrop::Arp],
                Kind::NeighborSolicit | Kind::NeighborAdvert => &[WanDrop::Icmpv6, WanDrop::Ipv6],
                Kind::Echo4 => &[WanDrop::NotForUs],
                Kind::Echo6 => &[WanDrop::Ipv6],
                Kind::Udp4 => &[WanDrop::NotForUs, WanDrop::Unhandled],
                Kind::Udp6 => &[WanDrop::Ipv6, WanDrop::Unhandled],
            };
            let dropped = other.iter().filter(|r| r.dropped.is_some_and(|d| expected.contains(&d))).count();
            assert!(dropped >= 45, "{kind:?} not for us on {vlan:?}: {dropped} of 50 dropped as {expected:?}");
        }
    }
    // Junk is dropped at the Ethernet header, or as an EtherType we do not handle.
    for n in 0..20 {
        assert_eq!(run(&vec![0x5a; n]).dropped, Some(WanDrop::Ethernet));
    }
}

/// Writes the seed corpus of the `wan_frame` cargo-fuzz target (valid frames of every kind, for
/// us and for others, tagged and untagged, with valid checksums: `Wan::classify` verifies them).
/// Run by hand when the generator changes:
/// `cargo test --release -p wgpmd --test wan_robustness -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/wan_frame/ (run by hand)"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wan_frame");
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = Gen { rng: ChaCha20Rng::seed_from_u64(SEED ^ 2) };
    let mut n = 0;
    for vlan in [None, Some(42)] {
        for kind in KINDS {
            for to_us in [true, false] {
                for pad in [false, true] {
                    let f = g.frame(Shape { kind, to_us, vlan, pad });
                    std::fs::write(dir.join(format!("seed-{kind:?}-{}-{n}", if to_us { "us" } else { "other" })), &f)
                        .unwrap();
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 64);
}
