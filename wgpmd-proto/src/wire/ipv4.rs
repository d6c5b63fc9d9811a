//! IPv4 headers (RFC 791), options allowed on input.
//!
//! Owns the 20–60-byte header: version/IHL, DSCP/ECN, total length, identification, the DF and
//! MF flags and fragment offset, TTL, protocol, header checksum and the two addresses. Input
//! rules are the kernel's `ip_rcv_core` (`net/ipv4/ip_input.c`): version 4, IHL ≥ 5, total
//! length ≥ header length and ≤ the buffer, valid header checksum. Options are skipped (not
//! interpreted); emit never writes any. Bytes after the total length (Ethernet padding) are not
//! part of the payload.

use std::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::checksum;
use super::ip::{IpPair, IpProtocol};
use super::{ChecksumCapabilities, Error, Result};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Length of the longest header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Largest total length.
pub const MAX_PACKET_LEN: usize = 65_535;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
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

    /// The buffer holds 20 bytes; IHL ≥ 5 ([`Error::Malformed`]); the header length is at most
    /// the total length ([`Error::Malformed`]); the total length is at most the buffer
    /// ([`Error::Truncated`]). The version is checked by [`Repr::parse`].
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(self.header_len());
        let total_len = usize::from(self.total_len());
        if header_len < HEADER_LEN || total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (bytes::u8_at(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }

    /// Differentiated services code point (6 bits).
    #[inline]
    pub fn dscp(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::DSCP_ECN) >> 2
    }

    /// Explicit congestion notification (2 bits).
    #[inline]
    pub fn ecn(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::DSCP_ECN) & 0x03
    }

    /// Total length (header and payload).
    #[inline]
    pub fn total_len(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't fragment.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        bytes::be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More fragments.
    #[inline]
    pub fn more_frags(&self) -> bool {
        bytes::be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field × 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (bytes::be16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Whether this is a fragment (MF set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        bytes::be16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::TTL)
    }

    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(bytes::u8_at(self.buffer.as_ref(), field::PROTOCOL))
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Both addresses, for an upper-layer checksum.
    #[inline]
    pub fn pair(&self) -> IpPair {
        IpPair::V4 { src: self.src_addr(), dst: self.dst_addr() }
    }

    /// Whether the header checksum verifies (the sum over the header is all ones).
    pub fn verify_checksum(&self) -> bool {
        let hl = usize::from(self.header_len());
        let header = bytes::slice(self.buffer.as_ref(), 0..hl);
        header.len() >= HEADER_LEN && checksum::data(header) == 0xffff
    }

    /// The options: header bytes after the first 20.
    #[inline]
    pub fn options(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), HEADER_LEN..usize::from(self.header_len()))
    }

    /// The payload: from the end of the header to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        bytes::slice(self.buffer.as_ref(), range)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_flg_off(&mut self, mask: u16, value: u16) {
        let old = bytes::be16(self.buffer.as_ref(), field::FLG_OFF);
        bytes::set_be16(self.buffer.as_mut(), field::FLG_OFF, (old & !mask) | (value & mask))
    }

    /// Sets the version (the IHL bits are kept).
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        let b = bytes::u8_at(self.buffer.as_ref(), field::VER_IHL);
        bytes::set_u8(self.buffer.as_mut(), field::VER_IHL, (b & 0x0f) | (value << 4))
    }

    /// Sets the header length in bytes, rounded down to a multiple of 4 (invalidates
    /// `check_len`).
    #[inline]
    pub fn set_header_len(&mut self, value: u8) {
        let b = bytes::u8_at(self.buffer.as_ref(), field::VER_IHL);
        bytes::set_u8(self.buffer.as_mut(), field::VER_IHL, (b & 0xf0) | ((value / 4) & 0x0f))
    }

    /// Sets the DSCP (6 bits).
    #[inline]
    pub fn set_dscp(&mut self, value: u8) {
        let b = bytes::u8_at(self.buffer.as_ref(), field::DSCP_ECN);
        bytes::set_u8(self.buffer.as_mut(), field::DSCP_ECN, (b & 0x03) | (value << 2))
    }

    /// Sets the ECN bits (2 bits).
    #[inline]
    pub fn set_ecn(&mut self, value: u8) {
        let b = bytes::u8_at(self.buffer.as_ref(), field::DSCP_ECN);
        bytes::set_u8(self.buffer.as_mut(), field::DSCP_ECN, (b & 0xfc) | (value & 0x03))
    }

    /// Sets the total length (invalidates `check_len`).
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::LENGTH, value)
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::IDENT, value)
    }

    /// Clears all three flag bits (reserved, DF, MF), keeping the offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        self.set_flg_off(0xe000, 0)
    }

    /// Sets or clears don't-fragment.
    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flg_off(FLAG_DF, if value { FLAG_DF } else { 0 })
    }

    /// Sets or clears more-fragments.
    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flg_off(FLAG_MF, if value { FLAG_MF } else { 0 })
    }

    /// Sets the fragment offset in bytes (rounded down to a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, value: u16) {
        self.set_flg_off(OFFSET_MASK, value >> 3)
    }

    /// Sets the TTL.
    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::TTL, value)
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, value: IpProtocol) {
        bytes::set_u8(self.buffer.as_mut(), field::PROTOCOL, value.0)
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::CHECKSUM, value)
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::SRC_ADDR, &addr.octets())
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::DST_ADDR, &addr.octets())
    }

    /// Computes and writes the header checksum (over IHL × 4 bytes).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = usize::from(self.header_len());
        let sum = checksum::data(bytes::slice(self.buffer.as_ref(), 0..hl));
        self.set_checksum(checksum::finish(sum))
    }

    /// The options, mutable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        bytes::slice_mut(self.buffer.as_mut(), HEADER_LEN..hl)
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        bytes::slice_mut(self.buffer.as_mut(), range)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed IPv4 header (options dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't fragment.
    pub dont_frag: bool,
    /// More fragments.
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
}

impl Repr {
    /// Parses a header: version 4 ([`Error::Malformed`]) and, if `caps` asks for it, a valid
    /// checksum ([`Error::Checksum`]). Fragments parse; reassembly is the caller's business.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, caps: &ChecksumCapabilities) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        if caps.ipv4.rx() && !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()).saturating_sub(usize::from(packet.header_len())),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Both addresses, for an upper-layer checksum.
    pub const fn pair(&self) -> IpPair {
        IpPair::V4 { src: self.src_addr, dst: self.dst_addr }
    }

    /// Length of the header this emits (20: no options).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of the packet: header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header at the start of `packet`; the payload (at offset 20) is untouched.
    /// Fields that do not fit their bits (DSCP ≥ 64, ECN ≥ 4, an offset not a multiple of 8,
    /// a total length over 65535) are [`Error::Malformed`]; a buffer shorter than
    /// [`buffer_len`](Self::buffer_len) is [`Error::Truncated`]. The checksum is filled if
    /// `caps` says so, else left zero for the NIC.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        caps: &ChecksumCapabilities,
    ) -> Result<()> {
        let total = self.buffer_len();
        if total > MAX_PACKET_LEN || self.dscp >= 64 || self.ecn >= 4 || !self.frag_offset.is_multiple_of(8) {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < total {
            return Err(Error::Truncated);
        }
        bytes::set_u8(packet.buffer.as_mut(), field::VER_IHL, 0x45);
        bytes::set_u8(packet.buffer.as_mut(), field::DSCP_ECN, (self.dscp << 2) | self.ecn);
        packet.set_total_len(total as u16);
        packet.set_ident(self.ident);
        let flags = if self.dont_frag { FLAG_DF } else { 0 } | if self.more_frags { FLAG_MF } else { 0 };
        bytes::set_be16(packet.buffer.as_mut(), field::FLG_OFF, flags | (self.frag_offset >> 3));
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        if caps.ipv4.tx() {
            packet.fill_checksum();
        } else {
            packet.set_checksum(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // IPv4 header and 156-byte UDP payload start of an initiation captured between two
    // wireguard-go peers: 10.99.0.1 -> 10.99.0.2, ident 0x7494, DF, TTL 64, checksum 0xb0e0.
    const CAPTURED: &str = "450000b0749440004011b0e00a6300010a630002ca6cca6c009c1576";

    fn captured() -> Vec<u8> {
        // Pad the header+8 bytes out to the full total length (176) so check_len passes.
        let mut b = hex::decode(CAPTURED).unwrap();
        b.resize(0xb0, 0);
        b
    }

    fn repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(10, 99, 0, 1),
            dst_addr: Ipv4Addr::new(10, 99, 0, 2),
            protocol: IpProtocol::UDP,
            payload_len: 156,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x7494,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let b = captured();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 176);
        assert_eq!(p.ident(), 0x7494);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::UDP);
        assert_eq!(p.checksum(), 0xb0e0);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 156);
        assert_eq!(&p.payload()[..4], &[0xca, 0x6c, 0xca, 0x6c]);
        assert_eq!(Repr::parse(&p, &ChecksumCapabilities::default()).unwrap(), repr());
    }

    #[test]
    fn construct_with_setters_and_emit() {
        let want = captured();
        let mut buf = vec![0xa5u8; want.len()];
        buf[20..].copy_from_slice(&want[20..]);
        {
            let mut p = Packet::new_unchecked(&mut buf[..]);
            p.set_version(4);
            p.set_header_len(20);
            p.set_dscp(0);
            p.set_ecn(0);
            p.set_total_len(176);
            p.set_ident(0x7494);
            p.clear_flags();
            p.set_frag_offset(0);
            p.set_dont_frag(true);
            p.set_ttl(64);
            p.set_protocol(IpProtocol::UDP);
            p.set_src_addr(Ipv4Addr::new(10, 99, 0, 1));
            p.set_dst_addr(Ipv4Addr::new(10, 99, 0, 2));
            p.fill_checksum();
        }
        assert_eq!(buf, want);

        let mut buf = vec![0xa5u8; want.len()];
        buf[20..].copy_from_slice(&want[20..]);
        repr().emit(&mut Packet::new_unchecked(&mut buf[..]), &ChecksumCapabilities::default()).unwrap();
        assert_eq!(buf, want);
        // Offloaded: checksum left zero.
        repr().emit(&mut Packet::new_unchecked(&mut buf[..]), &ChecksumCapabilities::ignored()).unwrap();
        assert_eq!(&buf[10..12], &[0, 0]);
        assert_eq!(repr().buffer_len(), 176);
        let mut short = [0xa5u8; 175];
        assert_eq!(repr().emit(&mut Packet::new_unchecked(&mut short[..]), &Default::default()), Err(Error::Truncated));
        for bad in [
            Repr { dscp: 64, ..repr() },
            Repr { ecn: 4, ..repr() },
            Repr { frag_offset: 12, ..repr() },
            Repr { payload_len: 65_516, ..repr() },
        ] {
            assert_eq!(bad.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()), Err(Error::Malformed));
        }
    }

    #[test]
    fn fragments_dscp_and_ecn() {
        let mut b = captured();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_dont_frag(false);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        p.set_dscp(0x22);
        p.set_ecn(3);
        p.fill_checksum();
        assert_eq!(&b[1..2], &[0x8b]);
        assert_eq!(&b[6..8], &[0x20, 0xb9]);
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = Repr::parse(&p, &Default::default()).unwrap();
        assert!(r.more_frags && !r.dont_frag && p.is_fragment());
        assert_eq!((r.frag_offset, r.dscp, r.ecn), (1480, 0x22, 3));
        let mut out = b.clone();
        r.emit(&mut Packet::new_unchecked(&mut out[..]), &Default::default()).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn options_are_skipped_and_padding_is_not_payload() {
        // IHL 6 with a 4-byte option (NOP NOP NOP EOL), 4 bytes of payload, 6 of padding.
        let mut b = [0u8; 34];
        {
            let mut p = Packet::new_unchecked(&mut b[..]);
            p.set_version(4);
            p.set_header_len(24);
            p.set_total_len(28);
            p.set_ttl(1);
            p.set_protocol(IpProtocol::ICMP);
            p.options_mut().copy_from_slice(&[1, 1, 1, 0]);
            p.payload_mut().copy_from_slice(&[8, 0, 0xf7, 0xff]);
            p.fill_checksum();
        }
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[8, 0, 0xf7, 0xff]);
        let r = Repr::parse(&p, &Default::default()).unwrap();
        assert_eq!(r.payload_len, 4);
    }

    #[test]
    fn bad_headers() {
        let b = captured();
        let caps = ChecksumCapabilities::default();
        let mut m = b.clone();
        m[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Malformed));
        let mut m = b.clone();
        m[0] = 0x4f; // IHL 15: a 60-byte header in a 40-byte packet
        m[2] = 0;
        m[3] = 40;
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Malformed));
        let mut m = b.clone();
        m[3] = 0xb1; // total 177 > buffer 176
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Truncated));
        let mut m = b.clone();
        m[0] = 0x65; // version 6
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &caps), Err(Error::Malformed));
        let mut m = b.clone();
        m[8] = 63; // TTL changed, checksum not
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &caps), Err(Error::Checksum));
        assert!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &ChecksumCapabilities::ignored()).is_ok());
        // The incremental update repairs it.
        let c = checksum::update(0xb0e0, 0x4011, 0x3f11);
        m[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &caps).is_ok());
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let b = captured();
        for n in 0..b.len() {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated), "length {n}");
            let p = Packet::new_unchecked(&b[..n]);
            let _ = (p.src_addr(), p.dst_addr(), p.payload(), p.options(), p.verify_checksum(), p.pair());
            assert!(Repr::parse(&p, &Default::default()).is_err());
        }
    }
}
