//! Path MTU errors for inner packets too big for the tunnel (docs/OPERATIONS.md "Path MTU").
//!
//! An inner packet read from the TUN that is longer than the tunnel MTU is not sent; the
//! worker writes back into the TUN an ICMPv4 "fragmentation needed" (IPv4 with DF) or an
//! ICMPv6 "packet too big" (IPv6), as the kernel's WireGuard does through the IP layer and
//! `icmp_ndo_send`. The error goes to the offending packet's source, from its destination:
//! the kernel picks an address of its own, but our error *enters* the host through the TUN,
//! where a source that is one of the host's own addresses is a martian and dropped; the
//! original destination routes back through the tunnel, so it passes reverse-path checks and
//! the sender's stack matches it to the route it must lower.

use std::net::Ipv4Addr;

use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::{icmpv4, icmpv6, ipv4, ipv6, ChecksumCapabilities, IpProtocol};

/// Hop limit / TTL of the errors.
const TTL: u8 = 64;
/// Longest error written: an IPv6 packet too big of exactly the minimum MTU.
pub const MAX_ERROR_LEN: usize = ipv6::MIN_MTU;

/// What to do with a packet longer than the tunnel MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    /// Send back the error of this many bytes, written at the start of the output.
    Error(usize),
    /// Drop without an error: IPv4 without DF (the kernel would fragment; we do not), a
    /// non-first fragment, an ICMP error, a source that cannot be answered, malformed, or
    /// IPv6 no longer than the minimum MTU (a tunnel below 1280 cannot carry IPv6).
    Drop,
}

fn is_unanswerable_v4(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
}

/// Builds the error for `packet` (a whole inner IP packet, longer than `mtu`) into `out`,
/// which should hold [`MAX_ERROR_LEN`] bytes.
pub fn too_big(packet: &[u8], mtu: usize, out: &mut [u8]) -> TooBig {
    match packet.first().map(|b| b >> 4) {
        Some(4) => too_big_v4(packet, mtu, out),
        Some(6) => too_big_v6(packet, mtu, out),
        _ => TooBig::Drop,
    }
}

fn too_big_v4(packet: &[u8], mtu: usize, out: &mut [u8]) -> TooBig {
    let caps = ChecksumCapabilities::default();
    let Ok(p) = ipv4::Packet::new_checked(packet) else { return TooBig::Drop };
    let Ok(ip) = ipv4::Repr::parse(&p, &caps) else { return TooBig::Drop };
    if !ip.dont_frag || ip.frag_offset != 0 || is_unanswerable_v4(ip.src_addr) || ip.dst_addr.is_multicast() {
        return TooBig::Drop;
    }
    // Never an error about an error (RFC 1122 3.2.2): only echo and other queries.
    if ip.protocol == IpProtocol::ICMP {
        let hl = usize::from(p.header_len());
        match packet.get(hl) {
            Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) => {}
            _ => return TooBig::Drop,
        }
    }
    let repr = icmpv4::Repr::DstUnreachable {
        reason: icmpv4::DstUnreachable::FragRequired,
        next_hop_mtu: mtu.min(usize::from(u16::MAX)) as u16,
        datagram: packet,
    };
    let Some(body) = out.get_mut(ipv4::HEADER_LEN..) else { return TooBig::Drop };
    let Ok(len) = repr.emit(&mut icmpv4::Packet::new_unchecked(body), &caps) else { return TooBig::Drop };
    let hdr = ipv4::Repr {
        src_addr: ip.dst_addr,
        dst_addr: ip.src_addr,
        protocol: IpProtocol::ICMP,
        payload_len: len,
        ttl: TTL,
        dscp: 0,
        ecn: 0,
        ident: 0,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
    };
    match hdr.emit(&mut ipv4::Packet::new_unchecked(&mut *out), &caps) {
        Ok(()) => TooBig::Error(hdr.buffer_len()),
        Err(_) => TooBig::Drop,
    }
}

fn too_big_v6(packet: &[u8], mtu: usize, out: &mut [u8]) -> TooBig {
    let caps = ChecksumCapabilities::default();
    let Ok(p) = ipv6::Packet::new_checked(packet) else { return TooBig::Drop };
    let Ok(ip) = ipv6::Repr::parse(&p) else { return TooBig::Drop };
    let mtu = mtu.max(ipv6::MIN_MTU);
    let src = ip.src_addr;
    let from = ip.dst_addr;
    if packet.len() <= mtu || src.is_unspecified() || src.is_multicast() || src.is_loopback() || from.is_multicast() {
        return TooBig::Drop;
    }
    // Never an error about an error (RFC 4443 2.4 e): ICMPv6 types below 128 are errors.
    if ip.next_header == IpProtocol::ICMPV6 && packet.get(ipv6::HEADER_LEN).is_some_and(|t| *t < 128) {
        return TooBig::Drop;
    }
    let repr = icmpv6::Repr::PktTooBig { mtu: mtu.min(u32::MAX as usize) as u32, packet };
    let room = out.len().min(MAX_ERROR_LEN);
    let Some(body) = out.get_mut(ipv6::HEADER_LEN..room) else { return TooBig::Drop };
    let Ok(len) = repr.emit(&mut icmpv6::Packet::new_unchecked(body), &from, &src, &caps) else { return TooBig::Drop };
    let hdr = ipv6::Repr {
        src_addr: from,
        dst_addr: src,
        next_header: IpProtocol::ICMPV6,
        payload_len: len,
        hop_limit: TTL,
        traffic_class: 0,
        flow_label: 0,
    };
    match hdr.emit(&mut ipv6::Packet::new_unchecked(&mut *out)) {
        Ok(()) => TooBig::Error(hdr.buffer_len()),
        Err(_) => TooBig::Drop,
    }
}

/// A token bucket for error generation: `RATE` errors a second, bursts of `BURST`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: u32,
    last: Option<Timestamp>,
}

impl RateLimit {
    /// Errors per second.
    pub const RATE: u64 = 100;
    /// Largest burst.
    pub const BURST: u32 = 20;
    const NANOS_PER_TOKEN: u64 = 1_000_000_000 / Self::RATE;

    /// A full bucket.
    pub fn new() -> Self {
        RateLimit { tokens: Self::BURST, last: None }
    }

    /// Takes a token if there is one at `now`.
    pub fn allow(&mut self, now: Timestamp) -> bool {
        let last = *self.last.get_or_insert(now);
        let elapsed = now.as_nanos().saturating_sub(last.as_nanos());
        let new = elapsed / Self::NANOS_PER_TOKEN;
        if new > 0 {
            self.tokens = (u64::from(self.tokens) + new).min(u64::from(Self::BURST)) as u32;
            // Keep the remainder: a steady flow earns exactly RATE tokens a second.
            self.last = Some(Timestamp::from_nanos(last.as_nanos() + new * Self::NANOS_PER_TOKEN));
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v4_packet(len: usize, df: bool, proto: IpProtocol, first: u8) -> Vec<u8> {
        let mut b = vec![0u8; len];
        for (i, x) in b.iter_mut().enumerate().skip(20) {
            *x = i as u8;
        }
        b[20] = first;
        let r = ipv4::Repr {
            src_addr: Ipv4Addr::new(10, 9, 0, 1),
            dst_addr: Ipv4Addr::new(10, 9, 0, 2),
            protocol: proto,
            payload_len: len - 20,
            ttl: 63,
            dscp: 0,
            ecn: 0,
            ident: 0x1234,
            dont_frag: df,
            more_frags: false,
            frag_offset: 0,
        };
        r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]), &ChecksumCapabilities::default()).unwrap();
        b
    }

    fn v6_packet(len: usize, proto: IpProtocol, first: u8) -> Vec<u8> {
        let mut b = vec![0u8; len];
        for (i, x) in b.iter_mut().enumerate().skip(40) {
            *x = i as u8;
        }
        b[40] = first;
        let r = ipv6::Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: proto,
            payload_len: len - 40,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 7,
        };
        r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..])).unwrap();
        b
    }

    #[test]
    fn frag_needed_for_ipv4_with_df() {
        let pkt = v4_packet(1478, true, IpProtocol::ICMP, 8);
        let mut out = [0u8; MAX_ERROR_LEN];
        let TooBig::Error(n) = too_big(&pkt, 1400, &mut out) else { panic!("no error") };
        // 20 + 8 + a 548-byte quote: the error stays within 576 bytes.
        assert_eq!(n, 20 + 8 + icmpv4::MAX_QUOTE_LEN);
        let ip = ipv4::Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        let r = ipv4::Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            (r.src_addr, r.dst_addr),
            (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 1)),
            "from the destination to the source"
        );
        assert_eq!((r.protocol, r.payload_len, r.ttl), (IpProtocol::ICMP, n - 20, TTL));
        let icmp = icmpv4::Packet::new_checked(&out[20..n]).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_code(), icmp.next_hop_mtu()), (4, 1400));
        assert_eq!(icmp.msg_type(), icmpv4::Message::DST_UNREACHABLE);
        assert_eq!(&out[28..n], &pkt[..n - 28], "the quote is the offending packet's start");
        assert_eq!(
            icmpv4::Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap(),
            icmpv4::Repr::DstUnreachable {
                reason: icmpv4::DstUnreachable::FragRequired,
                next_hop_mtu: 1400,
                datagram: &pkt[..n - 28]
            }
        );
    }

    #[test]
    fn ipv4_without_df_errors_and_fragments_are_dropped() {
        let mut out = [0u8; MAX_ERROR_LEN];
        assert_eq!(too_big(&v4_packet(1500, false, IpProtocol::UDP, 0), 1400, &mut out), TooBig::Drop);
        // An ICMP error (type 3) gets no error; an echo reply (0) does.
        assert_eq!(too_big(&v4_packet(1500, true, IpProtocol::ICMP, 3), 1400, &mut out), TooBig::Drop);
        assert!(matches!(too_big(&v4_packet(1500, true, IpProtocol::ICMP, 0), 1400, &mut out), TooBig::Error(_)));
        // Non-first fragment.
        let mut frag = v4_packet(1500, true, IpProtocol::UDP, 0);
        frag[6..8].copy_from_slice(&(0x4000u16 | 10).to_be_bytes());
        let mut p = ipv4::Packet::new_unchecked(&mut frag[..]);
        p.fill_checksum();
        assert_eq!(too_big(&frag, 1400, &mut out), TooBig::Drop);
        assert_eq!(too_big(&[0x45, 0, 0], 1400, &mut out), TooBig::Drop);
        assert_eq!(too_big(&[], 1400, &mut out), TooBig::Drop);
    }

    #[test]
    fn packet_too_big_for_ipv6() {
        let pkt = v6_packet(1500, IpProtocol::UDP, 0);
        let mut out = [0u8; MAX_ERROR_LEN];
        let TooBig::Error(n) = too_big(&pkt, 1420, &mut out) else { panic!("no error") };
        assert_eq!(n, ipv6::MIN_MTU, "quote as much as fits in 1280");
        let ip = ipv6::Packet::new_checked(&out[..n]).unwrap();
        let r = ipv6::Repr::parse(&ip).unwrap();
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap());
        assert_eq!((r.src_addr, r.dst_addr, r.next_header, r.payload_len), (a, b, IpProtocol::ICMPV6, n - 40));
        let icmp = icmpv6::Packet::new_checked(&out[40..n]).unwrap();
        assert!(icmp.verify_checksum(&a, &b));
        assert_eq!((icmp.msg_type(), icmp.msg_code(), icmp.pkt_too_big_mtu()), (icmpv6::Message::PKT_TOO_BIG, 0, 1420));
        assert_eq!(&out[48..n], &pkt[..n - 48]);
        // A tunnel MTU below 1280 still advertises 1280; packets that fit 1280 get no error.
        let TooBig::Error(_) = too_big(&pkt, 1000, &mut out) else { panic!("no error") };
        assert_eq!(icmpv6::Packet::new_checked(&out[40..n]).unwrap().pkt_too_big_mtu(), 1280);
        assert_eq!(too_big(&v6_packet(1200, IpProtocol::UDP, 0), 1000, &mut out), TooBig::Drop);
        // An echo request gets an error.
        let small = v6_packet(1300, IpProtocol::ICMPV6, 128);
        let TooBig::Error(n) = too_big(&small, 1280, &mut out) else { panic!("no error") };
        assert_eq!(n, 1280);
        // No error about an ICMPv6 error.
        assert_eq!(too_big(&v6_packet(1500, IpProtocol::ICMPV6, 2), 1400, &mut out), TooBig::Drop);
    }

    #[test]
    fn rate_limit() {
        let mut r = RateLimit::new();
        let t = |ms: u64| Timestamp::from_nanos(1 + ms * 1_000_000);
        let burst = (0..100).filter(|_| r.allow(t(0))).count();
        assert_eq!(burst, RateLimit::BURST as usize);
        assert!(!r.allow(t(5)));
        assert!(r.allow(t(10)), "one token every 10 ms");
        assert!(!r.allow(t(15)));
        let second = (0..1000).filter(|i| r.allow(t(20 + i))).count();
        assert_eq!(second, 100, "100 a second in a steady stream");
    }
}
