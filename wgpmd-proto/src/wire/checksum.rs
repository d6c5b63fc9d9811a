//! The internet checksum: the RFC 1071 one's-complement sum, RFC 1624 incremental updates, and
//! the IPv4 (RFC 768) and IPv6 (RFC 8200 §8.1) pseudo-header sums.
//!
//! Owns the arithmetic only; the views decide which bytes are covered. Values named "sum" here
//! are folded to 16 bits but *not* complemented; a checksum field holds `!sum`, and a packet
//! verifies when the sum over it (checksum field included) is `0xffff`. Kernel counterpart:
//! `include/net/checksum.h` (`csum_fold`, `csum_replace2`) and `lib/checksum.c`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ip::IpProtocol;

/// Folds a wide one's-complement accumulator to 16 bits (end-around carry).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The folded one's-complement sum of `bytes` taken as big-endian 16-bit words, an odd last
/// byte padded with zero (RFC 1071 §4.1).
///
/// Sums 32-bit words into a 64-bit accumulator: 2^16 ≡ 1 (mod 2^16 − 1), so folding the wider
/// sum gives the same result as adding 16-bit words one by one, in half the steps.
pub fn data(bytes: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        if let &[a, b, c, d] = w {
            acc += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    match *words.remainder() {
        [a] => acc += u64::from(a) << 8,
        [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
        [a, b, c] => acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        _ => {}
    }
    fold(acc)
}

/// One's-complement addition of two sums.
#[inline]
pub fn add(a: u16, b: u16) -> u16 {
    fold(u64::from(a) + u64::from(b))
}

/// One's-complement sum of several partial sums (e.g. pseudo-header and data).
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The checksum field value for a final sum: its complement.
#[inline]
pub fn finish(sum: u16) -> u16 {
    !sum
}

/// Incremental update of a checksum field when one 16-bit word changes from `old` to `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`, which, unlike eqn. 2, never yields the `-0` that
/// a full recomputation cannot produce).
#[inline]
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !combine(&[!checksum, !old, new])
}

/// Incremental update of a checksum field when the bytes `old` are replaced by `new` at the
/// same even offset (an address rewrite, a port change). `old` and `new` are summed as they
/// are, so they must have the same length and start on a 16-bit boundary of the covered data.
#[inline]
pub fn update_bytes(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    !combine(&[!checksum, !data(old), data(new)])
}

/// The folded IPv4 pseudo-header sum: source, destination, zero, protocol, upper-layer length.
pub fn pseudo_header_v4(src: &Ipv4Addr, dst: &Ipv4Addr, protocol: IpProtocol, length: u32) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    let acc =
        u64::from(u32::from_be_bytes(s)) + u64::from(u32::from_be_bytes(d)) + u64::from(protocol.0) + u64::from(length);
    fold(acc)
}

/// The folded IPv6 pseudo-header sum: source, destination, 32-bit upper-layer length, three
/// zero bytes and the next header.
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: IpProtocol, length: u32) -> u16 {
    combine(&[data(&src.octets()), data(&dst.octets()), fold(u64::from(length)), u16::from(next_header.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summing 16-bit words one at a time: the textbook definition, to check `data` against.
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
        assert_eq!(finish(0xddf2), 0x220d);
    }

    #[test]
    fn known_ipv4_header() {
        // 192.168.0.1 -> 192.168.0.199, UDP, checksum b861 (a widely quoted worked example).
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        assert_eq!(finish(data(&h)), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(data(&h), 0xffff);
        // The IPv4 header of a WireGuard initiation captured between two wireguard-go peers.
        let cap = hex::decode("450000b0749440004011b0e00a6300010a630002").unwrap();
        assert_eq!(data(&cap), 0xffff);
    }

    #[test]
    fn odd_lengths_and_every_remainder_match_the_reference() {
        let bytes: Vec<u8> = (0..97u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..bytes.len() {
            assert_eq!(data(&bytes[..n]), reference(&bytes[..n]), "length {n}");
        }
        assert_eq!(data(&[]), 0);
        assert_eq!(data(&[0xff; 64]), 0xffff);
    }

    #[test]
    fn rfc1624_incremental_update() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000 by eqn. 3.
        assert_eq!(update(0xdd2f, 0x5555, 0x3285), 0x0000);
        // And agrees with a full recomputation after a TTL/protocol word change.
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        let c = finish(data(&h));
        h[8] = 0x3f; // TTL 64 -> 63
        let full = finish(data(&h));
        assert_eq!(update(c, 0x4011, 0x3f11), full);
        // Address rewrite.
        let old = [0xc0, 0xa8, 0x00, 0x01];
        let new = [0x0a, 0x63, 0x00, 0x02];
        let before = finish(data(&h));
        h[12..16].copy_from_slice(&new);
        assert_eq!(update_bytes(before, &old, &new), finish(data(&h)));
    }

    #[test]
    fn pseudo_headers_match_their_byte_layout() {
        let s4 = Ipv4Addr::new(10, 99, 0, 1);
        let d4 = Ipv4Addr::new(10, 99, 0, 2);
        let mut ph = Vec::new();
        ph.extend_from_slice(&s4.octets());
        ph.extend_from_slice(&d4.octets());
        ph.extend_from_slice(&[0, 17, 0x00, 0x9c]);
        assert_eq!(pseudo_header_v4(&s4, &d4, IpProtocol::UDP, 0x9c), data(&ph));
        // The partial checksum the capture carries for a 156-byte UDP datagram.
        assert_eq!(pseudo_header_v4(&s4, &d4, IpProtocol::UDP, 0x9c), 0x1576);

        let s6: Ipv6Addr = "fe80::1".parse().unwrap();
        let d6: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
        let mut ph = Vec::new();
        ph.extend_from_slice(&s6.octets());
        ph.extend_from_slice(&d6.octets());
        ph.extend_from_slice(&70_000u32.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(pseudo_header_v6(&s6, &d6, IpProtocol::ICMPV6, 70_000), data(&ph));
    }
}
