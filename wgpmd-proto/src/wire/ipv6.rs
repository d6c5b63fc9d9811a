//! IPv6 fixed headers (RFC 8200 §3).
//!
//! Owns the 40-byte header: version, traffic class, flow label, payload length, next header,
//! hop limit and the two addresses. Input rules are the kernel's `ipv6_rcv` /
//! `ip6_rcv_core` (`net/ipv6/ip6_input.c`): version 6 and 40 + payload length ≤ the buffer.
//! Extension headers are not walked: [`Packet::next_header`] tells the caller what follows. A
//! zero payload length (the jumbogram marker) is an empty payload here; jumbograms are not
//! supported.

use std::net::Ipv6Addr;

use super::bytes::{self, Field};
use super::ip::{IpPair, IpProtocol};
use super::{Error, Result};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// The IPv6 minimum link MTU (RFC 8200 §5): every link carries packets this large, and ICMPv6
/// errors are cut to fit in it.
pub const MIN_MTU: usize = 1280;
/// Largest payload length without a jumbo option.
pub const MAX_PAYLOAD_LEN: usize = 65_535;

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The buffer holds the 40-byte header and the payload length after it
    /// ([`Error::Truncated`] otherwise). The version is checked by [`Repr::parse`].
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.total_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn word0(&self) -> u32 {
        bytes::be32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// Version field (6 for IPv6).
    #[inline]
    pub fn version(&self) -> u8 {
        (self.word0() >> 28) as u8
    }

    /// Traffic class (DSCP << 2 | ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// Payload length.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Header plus payload length.
    #[inline]
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// What follows the fixed header (an upper-layer protocol or an extension header).
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(bytes::u8_at(self.buffer.as_ref(), field::NXT_HDR))
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HOP_LIMIT)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::array::<16>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::array::<16>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Both addresses, for an upper-layer checksum.
    #[inline]
    pub fn pair(&self) -> IpPair {
        IpPair::V6 { src: self.src_addr(), dst: self.dst_addr() }
    }

    /// The payload: payload-length bytes after the fixed header (trailing padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), HEADER_LEN..self.total_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set_word0(&mut self, mask: u32, value: u32) {
        let old = self.word0();
        bytes::set_be32(self.buffer.as_mut(), field::VER_TC_FLOW, (old & !mask) | (value & mask))
    }

    /// Sets the version (4 bits).
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        self.set_word0(0xf000_0000, u32::from(value) << 28)
    }

    /// Sets the traffic class.
    #[inline]
    pub fn set_traffic_class(&mut self, value: u8) {
        self.set_word0(0x0ff0_0000, u32::from(value) << 20)
    }

    /// Sets the flow label (masked to 20 bits).
    #[inline]
    pub fn set_flow_label(&mut self, value: u32) {
        self.set_word0(0x000f_ffff, value)
    }

    /// Sets the payload length (invalidates `check_len`).
    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::LENGTH, value)
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        bytes::set_u8(self.buffer.as_mut(), field::NXT_HDR, value.0)
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::HOP_LIMIT, value)
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::SRC_ADDR, &addr.octets())
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::DST_ADDR, &addr.octets())
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        bytes::slice_mut(self.buffer.as_mut(), HEADER_LEN..end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// What follows the fixed header.
    pub next_header: IpProtocol,
    /// Payload length.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Parses a fixed header: version 6, or [`Error::Malformed`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Both addresses, for an upper-layer checksum.
    pub const fn pair(&self) -> IpPair {
        IpPair::V6 { src: self.src_addr, dst: self.dst_addr }
    }

    /// Length of the header this emits (40).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of the packet: header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header at the start of `packet`; the payload (at offset 40) is untouched.
    /// A payload over 65535 bytes or a flow label over 20 bits is [`Error::Malformed`]; a
    /// buffer shorter than [`buffer_len`](Self::buffer_len) is [`Error::Truncated`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if self.payload_len > MAX_PAYLOAD_LEN || self.flow_label > 0x000f_ffff {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(Error::Truncated);
        }
        let word0 = (6u32 << 28) | (u32::from(self.traffic_class) << 20) | self.flow_label;
        bytes::set_be32(packet.buffer.as_mut(), field::VER_TC_FLOW, word0);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // fe80::1 -> ff02::1:ff00:2, ICMPv6, hop limit 255, traffic class 0xb8, flow 0x12345,
    // 32-byte payload (a neighbour solicitation), then 4 bytes of trailing padding.
    const PACKET: &str = "6b81234500203afffe800000000000000000000000000001ff0200000000000000000001ff000002";

    fn packet() -> Vec<u8> {
        let mut b = hex::decode(PACKET).unwrap();
        b.extend((0..32).map(|i| i as u8));
        b.extend([0xee; 4]);
        b
    }

    fn repr() -> Repr {
        Repr {
            src_addr: "fe80::1".parse().unwrap(),
            dst_addr: "ff02::1:ff00:2".parse().unwrap(),
            next_header: IpProtocol::ICMPV6,
            payload_len: 32,
            hop_limit: 255,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn deconstruct_and_parse() {
        let b = packet();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 32);
        assert_eq!(p.next_header(), IpProtocol::ICMPV6);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(p.src_addr(), "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload().len(), 32);
        assert_eq!(p.payload()[31], 31);
        assert_eq!(Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn construct_and_emit() {
        let want = packet();
        let mut buf = vec![0xa5u8; want.len()];
        buf[40..].copy_from_slice(&want[40..]);
        repr().emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, want);

        let mut buf = vec![0xa5u8; want.len()];
        buf[40..].copy_from_slice(&want[40..]);
        {
            let mut p = Packet::new_unchecked(&mut buf[..]);
            p.set_version(6);
            p.set_traffic_class(0xb8);
            p.set_flow_label(0xfff0_0000 | 0x12345);
            p.set_payload_len(32);
            p.set_next_header(IpProtocol::ICMPV6);
            p.set_hop_limit(255);
            p.set_src_addr(repr().src_addr);
            p.set_dst_addr(repr().dst_addr);
            p.payload_mut()[0] = 0;
        }
        assert_eq!(buf, want);

        let mut short = [0u8; 71];
        assert_eq!(repr().emit(&mut Packet::new_unchecked(&mut short[..])), Err(Error::Truncated));
        let big = Repr { flow_label: 0x10_0000, ..repr() };
        assert_eq!(big.emit(&mut Packet::new_unchecked(&mut buf[..])), Err(Error::Malformed));
    }

    #[test]
    fn wrong_version_and_bad_lengths() {
        let b = packet();
        let mut m = b.clone();
        m[0] = 0x4b;
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap()), Err(Error::Malformed));
        let mut m = b.clone();
        m[5] = 37; // one past the buffer
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Truncated));
        m[5] = 36;
        assert!(Packet::new_checked(&m[..]).is_ok());
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let b = packet();
        for n in 0..72 {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated), "length {n}");
            let p = Packet::new_unchecked(&b[..n]);
            let _ = (p.src_addr(), p.dst_addr(), p.payload(), p.flow_label(), p.pair());
            assert!(Repr::parse(&p).is_err());
        }
    }
}
