//! UDP datagrams (RFC 768) over IPv4 and IPv6.
//!
//! Owns the 8-byte header (ports, length, checksum) and the checksum rules: the sum covers the
//! pseudo-header of the enclosing IP packet ([`IpPair`]); over IPv4 a zero checksum means "none"
//! (RFC 768), over IPv6 it is invalid (RFC 8200 §8.1, as the kernel's `udp6_csum_init`
//! enforces); a computed zero is sent as 0xffff. Length: at least 8 and at most the buffer
//! (the IP payload); bytes past the length are not payload. Kernel counterpart:
//! `net/ipv4/udp.c` (`__udp4_lib_rcv`) and `net/ipv6/udp.c`.

use super::bytes::{self, Field};
use super::checksum;
use super::ip::{IpPair, IpProtocol};
use super::{ChecksumCapabilities, Error, Result};

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Largest datagram the length field can describe.
pub const MAX_LEN: usize = 65_535;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A read/write view of a UDP datagram. The buffer must be exactly the IP payload.
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

    /// The buffer holds the header ([`Error::Truncated`]), the length field is at least 8
    /// ([`Error::Malformed`]) and at most the buffer ([`Error::Truncated`]).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let length = usize::from(self.length());
        if length < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if length > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field (header and payload).
    #[inline]
    pub fn length(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload: from the header to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), HEADER_LEN..usize::from(self.length()))
    }

    /// The one's-complement sum over pseudo-header and datagram (checksum field included).
    fn sum(&self, pair: &IpPair) -> u16 {
        let length = self.length();
        let datagram = bytes::slice(self.buffer.as_ref(), 0..usize::from(length));
        checksum::add(pair.pseudo_header(IpProtocol::UDP, u32::from(length)), checksum::data(datagram))
    }

    /// Whether the checksum is acceptable: zero over IPv4 (no checksum), never zero over IPv6,
    /// otherwise the sum over pseudo-header and datagram is all ones.
    pub fn verify_checksum(&self, pair: &IpPair) -> bool {
        match (pair, self.checksum()) {
            (IpPair::V4 { .. }, 0) => true,
            (IpPair::V6 { .. }, 0) => false,
            _ => self.sum(pair) == 0xffff,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::SRC_PORT, value)
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::DST_PORT, value)
    }

    /// Sets the length field (invalidates `check_len`).
    #[inline]
    pub fn set_length(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::LENGTH, value)
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::CHECKSUM, value)
    }

    /// Computes and writes the checksum over pseudo-header, header and payload (which must be
    /// in place); a computed zero is written as 0xffff.
    pub fn fill_checksum(&mut self, pair: &IpPair) {
        self.set_checksum(0);
        let c = checksum::finish(self.sum(pair));
        self.set_checksum(if c == 0 { 0xffff } else { c })
    }

    /// Writes the folded pseudo-header sum, not complemented: what a NIC finishing the checksum
    /// expects (Linux `CHECKSUM_PARTIAL`, virtio-net `VIRTIO_NET_HDR_F_NEEDS_CSUM`). Captured
    /// frames from such paths carry exactly this value.
    pub fn fill_partial_checksum(&mut self, pair: &IpPair) {
        let length = u32::from(self.length());
        self.set_checksum(pair.pseudo_header(IpProtocol::UDP, length))
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.length());
        bytes::slice_mut(self.buffer.as_mut(), HEADER_LEN..end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed UDP header. The payload stays in the buffer: a datapath decrypts and rewrites it
/// in place, so the `Repr` carries only its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length (length field minus 8).
    pub payload_len: usize,
}

impl Repr {
    /// Parses a header: a zero destination port is [`Error::Malformed`]; a checksum that does
    /// not verify (see [`Packet::verify_checksum`]) is [`Error::Checksum`] when `caps` asks for
    /// receive checks.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, pair: &IpPair, caps: &ChecksumCapabilities) -> Result<Repr> {
        packet.check_len()?;
        if packet.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        if caps.udp.rx() && !packet.verify_checksum(pair) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.length()).saturating_sub(HEADER_LEN),
        })
    }

    /// Length of the datagram: header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header at the start of `packet`. The payload must already be in place at
    /// offset 8 when `caps` fills the checksum (it is summed); otherwise the checksum field is
    /// zero (IPv4: none) and the NIC or [`Packet::fill_partial_checksum`] takes over. A
    /// datagram over 65535 bytes is [`Error::Malformed`], a short buffer [`Error::Truncated`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pair: &IpPair,
        caps: &ChecksumCapabilities,
    ) -> Result<()> {
        let length = self.buffer_len();
        if length > MAX_LEN {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < length {
            return Err(Error::Truncated);
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_length(length as u16);
        if caps.udp.tx() {
            packet.fill_checksum(pair);
        } else {
            packet.set_checksum(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // A keepalive captured between two wireguard-go peers: 10.99.0.1:51820 -> 10.99.0.2:51820.
    // On the wire its checksum field holds the partial sum 0x1502; the full checksum is 0xfeac.
    const KEEPALIVE_PARTIAL: &str = "ca6cca6c0028150204000000277ef96e00000000000000007000a88283300576edc3cdefe19bf3e8";
    const KEEPALIVE_FULL: &str = "ca6cca6c0028feac04000000277ef96e00000000000000007000a88283300576edc3cdefe19bf3e8";
    // The same payload from [fd00::1]:51820 to [fd00::2]:51821 (checksum by an independent
    // implementation).
    const V6: &str = "ca6cca6d0028197004000000277ef96e00000000000000007000a88283300576edc3cdefe19bf3e8";

    fn v4() -> IpPair {
        IpPair::V4 { src: Ipv4Addr::new(10, 99, 0, 1), dst: Ipv4Addr::new(10, 99, 0, 2) }
    }
    fn v6() -> IpPair {
        IpPair::V6 { src: "fd00::1".parse::<Ipv6Addr>().unwrap(), dst: "fd00::2".parse::<Ipv6Addr>().unwrap() }
    }

    #[test]
    fn deconstruct_captured_keepalive() {
        let b = hex::decode(KEEPALIVE_FULL).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.length(), p.checksum()), (51820, 51820, 40, 0xfeac));
        assert_eq!(p.payload().len(), 32);
        assert_eq!(p.payload()[0], 4);
        assert!(p.verify_checksum(&v4()));
        let r = Repr::parse(&p, &v4(), &Default::default()).unwrap();
        assert_eq!(r, Repr { src_port: 51820, dst_port: 51820, payload_len: 32 });
    }

    #[test]
    fn partial_checksums_need_offload_caps() {
        let b = hex::decode(KEEPALIVE_PARTIAL).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum(&v4()));
        assert_eq!(Repr::parse(&p, &v4(), &Default::default()), Err(Error::Checksum));
        assert!(Repr::parse(&p, &v4(), &ChecksumCapabilities::ignored()).is_ok());
        let mut m = b.clone();
        Packet::new_unchecked(&mut m[..]).fill_partial_checksum(&v4());
        assert_eq!(m, b);
    }

    #[test]
    fn construct_and_emit_v4_and_v6() {
        for (pair, want, dst_port) in [(v4(), KEEPALIVE_FULL, 51820), (v6(), V6, 51821)] {
            let want = hex::decode(want).unwrap();
            let mut buf = vec![0xa5u8; want.len()];
            buf[8..].copy_from_slice(&want[8..]);
            let r = Repr { src_port: 51820, dst_port, payload_len: 32 };
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), &pair, &Default::default()).unwrap();
            assert_eq!(buf, want);
            assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), &pair, &Default::default()), Ok(r));

            let mut buf = vec![0xa5u8; want.len()];
            let mut p = Packet::new_unchecked(&mut buf[..]);
            p.set_src_port(51820);
            p.set_dst_port(dst_port);
            p.set_length(40);
            p.payload_mut().copy_from_slice(&want[8..]);
            p.fill_checksum(&pair);
            assert_eq!(buf, want);
        }
        let r = Repr { src_port: 1, dst_port: 2, payload_len: 4 };
        let mut short = [0xa5u8; 11];
        assert_eq!(
            r.emit(&mut Packet::new_unchecked(&mut short[..]), &v4(), &Default::default()),
            Err(Error::Truncated)
        );
        let huge = Repr { payload_len: MAX_LEN, ..r };
        assert_eq!(huge.buffer_len(), MAX_LEN + 8);
        assert_eq!(
            huge.emit(&mut Packet::new_unchecked(&mut short[..]), &v4(), &Default::default()),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn zero_checksum_rules() {
        // IPv4: zero means "no checksum".
        let mut b = hex::decode(KEEPALIVE_FULL).unwrap();
        b[6] = 0;
        b[7] = 0;
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), &v4(), &Default::default()).is_ok());
        // IPv6: zero is invalid.
        let mut b = hex::decode(V6).unwrap();
        b[6] = 0;
        b[7] = 0;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap(), &v6(), &Default::default()),
            Err(Error::Checksum)
        );
        // A datagram whose checksum computes to zero is sent as 0xffff (and verifies).
        let pair = IpPair::V4 { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2) };
        let mut b = hex::decode("04d2162e000a0000d0d7").unwrap();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.fill_checksum(&pair);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(&pair));
    }

    #[test]
    fn bad_lengths_and_ports() {
        let b = hex::decode(KEEPALIVE_FULL).unwrap();
        let mut m = b.clone();
        m[5] = 7;
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Malformed));
        m[5] = 41;
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Truncated));
        // A shorter length leaves trailing bytes out of the payload.
        let mut m = b.clone();
        m[5] = 12;
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!(p.payload(), &[4, 0, 0, 0]);
        let mut m = b.clone();
        m[2] = 0;
        m[3] = 0;
        let caps = ChecksumCapabilities::ignored();
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &v4(), &caps), Err(Error::Malformed));
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let b = hex::decode(KEEPALIVE_FULL).unwrap();
        for n in 0..b.len() {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated), "length {n}");
            let p = Packet::new_unchecked(&b[..n]);
            let _ = (p.src_port(), p.payload(), p.verify_checksum(&v4()), p.verify_checksum(&v6()));
            assert!(Repr::parse(&p, &v4(), &Default::default()).is_err());
        }
    }
}
