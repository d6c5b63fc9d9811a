//! ICMPv6 (RFC 4443) echo and packet too big, and the two neighbour discovery messages a
//! WireGuard endpoint answers (RFC 4861 §4.3, §4.4).
//!
//! Owns the 8-byte header, the 24-byte neighbour solicitation/advertisement body (flags R, S, O
//! and the target address), the source/target link-layer address options for Ethernet, and
//! the checksum over the IPv6 pseudo-header. An error quotes as much of the offending packet
//! as keeps it within the IPv6 minimum MTU (RFC 4443 §2.4 (c)). Checks that need the IP header
//! are the caller's: neighbour discovery requires hop limit 255 (RFC 4861 §7.1.1). Other types
//! parse as [`Error::Unsupported`]. Kernel counterpart: `net/ipv6/icmp.c`, `net/ipv6/ndisc.c`.

use std::net::Ipv6Addr;

use super::bytes::{self, Field, Rest};
use super::checksum;
use super::ethernet::EthernetAddress;
use super::ip::IpProtocol;
use super::ipv6;
use super::{ChecksumCapabilities, Error, Result};

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Length of a neighbour solicitation or advertisement without options.
pub const ND_HEADER_LEN: usize = 24;
/// Length of an Ethernet link-layer address option.
pub const LLADDR_OPTION_LEN: usize = 8;
/// Longest quote of an offending packet: an error stays within the minimum MTU (1280 − 40 − 8).
pub const MAX_QUOTE_LEN: usize = ipv6::MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN;
/// Neighbour discovery option: source link-layer address.
pub const OPTION_SOURCE_LLADDR: u8 = 1;
/// Neighbour discovery option: target link-layer address.
pub const OPTION_TARGET_LLADDR: u8 = 2;

mod field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const MTU: Field = 4..8;
    pub const ND_FLAGS: Field = 4..8;
    pub const TARGET: Field = 8..24;
    pub const DATA: Rest = 8..;
    pub const ND_OPTIONS: Rest = 24..;
}

const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// An ICMPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: Message = Message(1);
    /// Packet too big.
    pub const PKT_TOO_BIG: Message = Message(2);
    /// Time exceeded.
    pub const TIME_EXCEEDED: Message = Message(3);
    /// Parameter problem.
    pub const PARAM_PROBLEM: Message = Message(4);
    /// Echo request.
    pub const ECHO_REQUEST: Message = Message(128);
    /// Echo reply.
    pub const ECHO_REPLY: Message = Message(129);
    /// Router solicitation.
    pub const ROUTER_SOLICIT: Message = Message(133);
    /// Router advertisement.
    pub const ROUTER_ADVERT: Message = Message(134);
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: Message = Message(135);
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: Message = Message(136);
    /// Redirect.
    pub const REDIRECT: Message = Message(137);

    /// Error messages are types 0–127.
    pub const fn is_error(self) -> bool {
        self.0 < 128
    }

    /// Neighbour solicitation or advertisement: a 24-byte body.
    pub const fn is_neighbor(self) -> bool {
        self.0 == Self::NEIGHBOR_SOLICIT.0 || self.0 == Self::NEIGHBOR_ADVERT.0
    }
}

/// The flags of a neighbour advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeighborFlags {
    /// R: the sender is a router.
    pub router: bool,
    /// S: sent in response to a solicitation.
    pub solicited: bool,
    /// O: override an existing cache entry.
    pub override_: bool,
}

impl NeighborFlags {
    const fn from_byte(b: u8) -> NeighborFlags {
        NeighborFlags {
            router: b & FLAG_ROUTER != 0,
            solicited: b & FLAG_SOLICITED != 0,
            override_: b & FLAG_OVERRIDE != 0,
        }
    }
    const fn to_byte(self) -> u8 {
        (if self.router { FLAG_ROUTER } else { 0 })
            | (if self.solicited { FLAG_SOLICITED } else { 0 })
            | (if self.override_ { FLAG_OVERRIDE } else { 0 })
    }
}

/// Walks neighbour discovery options; returns the first Ethernet link-layer address option of
/// `kind`. A zero-length option or one that overruns the message is [`Error::Malformed`]
/// (RFC 4861 §4.6: such packets are silently discarded); unknown options are skipped.
pub fn find_lladdr(options: &[u8], kind: u8) -> Result<Option<EthernetAddress>> {
    let mut rest = options;
    let mut found = None;
    while let [ty, units, ..] = *rest {
        let len = usize::from(units) * 8;
        let opt = rest.get(..len).filter(|_| len != 0).ok_or(Error::Malformed)?;
        if ty == kind && len == LLADDR_OPTION_LEN && found.is_none() {
            found = EthernetAddress::from_bytes(bytes::rest(opt, 2..));
        }
        rest = bytes::rest(rest, len..);
    }
    if rest.is_empty() {
        Ok(found)
    } else {
        Err(Error::Malformed)
    }
}

/// A read/write view of an ICMPv6 message. The buffer must be exactly the upper-layer payload
/// of the IPv6 packet (its length enters the checksum).
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

    /// The buffer holds the 8-byte header, and for a neighbour solicitation or advertisement
    /// the 24-byte body (type and length checked together).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || (self.msg_type().is_neighbor() && len < ND_HEADER_LEN) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Message {
        Message(bytes::u8_at(self.buffer.as_ref(), field::TYPE))
    }

    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::CODE)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number.
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// MTU of a packet-too-big message.
    #[inline]
    pub fn pkt_too_big_mtu(&self) -> u32 {
        bytes::be32(self.buffer.as_ref(), field::MTU)
    }

    /// R, S and O flags of a neighbour advertisement.
    #[inline]
    pub fn neighbor_flags(&self) -> NeighborFlags {
        NeighborFlags::from_byte(bytes::u8_at(self.buffer.as_ref(), field::ND_FLAGS.start))
    }

    /// Target address of a neighbour solicitation or advertisement.
    #[inline]
    pub fn target_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::array::<16>(self.buffer.as_ref(), field::TARGET))
    }

    /// Everything after the header: echo data, or the quoted packet of an error.
    #[inline]
    pub fn data(&self) -> &[u8] {
        bytes::rest(self.buffer.as_ref(), field::DATA)
    }

    /// The options of a neighbour solicitation or advertisement.
    #[inline]
    pub fn nd_options(&self) -> &[u8] {
        bytes::rest(self.buffer.as_ref(), field::ND_OPTIONS)
    }

    fn sum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
        let msg = self.buffer.as_ref();
        // Lengths beyond u32 cannot occur on a real packet; saturate rather than wrap.
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        checksum::add(checksum::pseudo_header_v6(src, dst, IpProtocol::ICMPV6, len), checksum::data(msg))
    }

    /// Whether the checksum over pseudo-header and message verifies.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.sum(src, dst) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    fn data_ref(&self) -> &'a [u8] {
        let buffer: &'a T = self.buffer;
        bytes::rest(buffer.as_ref(), field::DATA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type (to or from a neighbour message invalidates `check_len`).
    #[inline]
    pub fn set_msg_type(&mut self, value: Message) {
        bytes::set_u8(self.buffer.as_mut(), field::TYPE, value.0)
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::CODE, value)
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::CHECKSUM, value)
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::ECHO_IDENT, value)
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::ECHO_SEQNO, value)
    }

    /// Sets the MTU of a packet-too-big message.
    #[inline]
    pub fn set_pkt_too_big_mtu(&mut self, value: u32) {
        bytes::set_be32(self.buffer.as_mut(), field::MTU, value)
    }

    /// Writes the flags and zeroes the 29 reserved bits (solicitations carry no flags: pass
    /// the default).
    #[inline]
    pub fn set_neighbor_flags(&mut self, flags: NeighborFlags) {
        bytes::set_bytes(self.buffer.as_mut(), field::ND_FLAGS, &[flags.to_byte(), 0, 0, 0])
    }

    /// Sets the target address.
    #[inline]
    pub fn set_target_addr(&mut self, addr: Ipv6Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::TARGET, &addr.octets())
    }

    /// Computes and writes the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let sum = self.sum(src, dst);
        self.set_checksum(checksum::finish(sum))
    }

    /// The data, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        bytes::rest_mut(self.buffer.as_mut(), field::DATA)
    }

    /// The neighbour discovery options, mutable.
    #[inline]
    pub fn nd_options_mut(&mut self) -> &mut [u8] {
        bytes::rest_mut(self.buffer.as_mut(), field::ND_OPTIONS)
    }
}

/// A parsed ICMPv6 message of a kind we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data, echoed back verbatim.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Packet too big.
    PktTooBig {
        /// MTU of the next hop.
        mtu: u32,
        /// The offending packet as quoted (starting with its IPv6 header), at most
        /// [`MAX_QUOTE_LEN`] bytes.
        packet: &'a [u8],
    },
    /// Neighbour solicitation.
    NeighborSolicit {
        /// Whose link-layer address is asked for.
        target_addr: Ipv6Addr,
        /// The sender's link-layer address, if included.
        source_lladdr: Option<EthernetAddress>,
    },
    /// Neighbour advertisement.
    NeighborAdvert {
        /// R, S, O.
        flags: NeighborFlags,
        /// The address advertised.
        target_addr: Ipv6Addr,
        /// Its link-layer address, if included.
        target_lladdr: Option<EthernetAddress>,
    },
}

impl<'a> Repr<'a> {
    /// Parses a message from `src` to `dst` (the IPv6 header's addresses, which the checksum
    /// and the neighbour discovery rules need). A non-zero code on echo, packet too big or
    /// neighbour messages, a quote without a whole IPv6 header, a multicast target, a source
    /// link-layer option from the unspecified address, a solicited advertisement to a multicast
    /// address, or malformed options are [`Error::Malformed`]; other types are
    /// [`Error::Unsupported`]; a bad checksum is [`Error::Checksum`] when `caps` checks it.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        caps: &ChecksumCapabilities,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if caps.icmpv6.rx() && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let ty = packet.msg_type();
        let handled = matches!(
            ty,
            Message::ECHO_REQUEST
                | Message::ECHO_REPLY
                | Message::PKT_TOO_BIG
                | Message::NEIGHBOR_SOLICIT
                | Message::NEIGHBOR_ADVERT
        );
        if !handled {
            return Err(Error::Unsupported);
        }
        if packet.msg_code() != 0 {
            return Err(Error::Malformed);
        }
        let data = packet.data_ref();
        match ty {
            Message::ECHO_REQUEST => {
                Ok(Repr::EchoRequest { ident: packet.echo_ident(), seq_no: packet.echo_seq_no(), data })
            }
            Message::ECHO_REPLY => {
                Ok(Repr::EchoReply { ident: packet.echo_ident(), seq_no: packet.echo_seq_no(), data })
            }
            Message::PKT_TOO_BIG => {
                if data.len() < ipv6::HEADER_LEN || ipv6::Packet::new_unchecked(data).version() != 6 {
                    return Err(Error::Malformed);
                }
                let quote = bytes::slice(data, 0..data.len().min(MAX_QUOTE_LEN));
                Ok(Repr::PktTooBig { mtu: packet.pkt_too_big_mtu(), packet: quote })
            }
            Message::NEIGHBOR_SOLICIT => {
                let target_addr = packet.target_addr();
                let source_lladdr = find_lladdr(packet.nd_options(), OPTION_SOURCE_LLADDR)?;
                if target_addr.is_multicast() || (src.is_unspecified() && source_lladdr.is_some()) {
                    return Err(Error::Malformed);
                }
                Ok(Repr::NeighborSolicit { target_addr, source_lladdr })
            }
            _ => {
                let flags = packet.neighbor_flags();
                let target_addr = packet.target_addr();
                let target_lladdr = find_lladdr(packet.nd_options(), OPTION_TARGET_LLADDR)?;
                if target_addr.is_multicast() || (dst.is_multicast() && flags.solicited) {
                    return Err(Error::Malformed);
                }
                Ok(Repr::NeighborAdvert { flags, target_addr, target_lladdr })
            }
        }
    }

    /// Length of the message this emits given enough room (a packet-too-big quote cut to
    /// [`MAX_QUOTE_LEN`]).
    pub fn buffer_len(&self) -> usize {
        let lladdr = |a: &Option<EthernetAddress>| if a.is_some() { LLADDR_OPTION_LEN } else { 0 };
        match self {
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => HEADER_LEN + data.len(),
            Repr::PktTooBig { packet, .. } => HEADER_LEN + packet.len().min(MAX_QUOTE_LEN),
            Repr::NeighborSolicit { source_lladdr, .. } => ND_HEADER_LEN + lladdr(source_lladdr),
            Repr::NeighborAdvert { target_lladdr, .. } => ND_HEADER_LEN + lladdr(target_lladdr),
        }
    }

    /// Writes the message from `src` to `dst` into `packet` and returns its length (the
    /// checksum covers exactly that many bytes). Packet too big copies as much of the offending
    /// packet as fits in the buffer and within the minimum MTU, but at least its IPv6 header
    /// and 8 bytes (or all of it if shorter); other messages need
    /// [`buffer_len`](Self::buffer_len) bytes. Too little room is [`Error::Truncated`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        caps: &ChecksumCapabilities,
    ) -> Result<usize> {
        let room = packet.buffer.as_ref().len();
        let len = match *self {
            Repr::PktTooBig { mtu, packet: quoted } => {
                let wanted = quoted.len().min(MAX_QUOTE_LEN);
                let least = wanted.min(ipv6::HEADER_LEN + 8);
                let quote = wanted.min(room.saturating_sub(HEADER_LEN));
                if quote < least || room < HEADER_LEN {
                    return Err(Error::Truncated);
                }
                packet.set_msg_type(Message::PKT_TOO_BIG);
                packet.set_msg_code(0);
                packet.set_pkt_too_big_mtu(mtu);
                bytes::copy_prefix(packet.data_mut(), bytes::slice(quoted, 0..quote));
                HEADER_LEN + quote
            }
            _ => {
                let len = self.buffer_len();
                if room < len {
                    return Err(Error::Truncated);
                }
                self.emit_informational(packet);
                len
            }
        };
        let mut msg = Packet::new_unchecked(bytes::slice_mut(packet.buffer.as_mut(), 0..len));
        if caps.icmpv6.tx() {
            msg.fill_checksum(src, dst);
        } else {
            msg.set_checksum(0);
        }
        Ok(len)
    }

    /// Writes every kind but packet too big; the caller checked the room.
    fn emit_informational<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let lladdr_option = |packet: &mut Packet<T>, kind: u8, addr: Option<EthernetAddress>| {
            if let Some(a) = addr {
                let [b0, b1, b2, b3, b4, b5] = a.0;
                bytes::copy_prefix(packet.nd_options_mut(), &[kind, 1, b0, b1, b2, b3, b4, b5]);
            }
        };
        packet.set_msg_code(0);
        match *self {
            Repr::EchoRequest { ident, seq_no, data } | Repr::EchoReply { ident, seq_no, data } => {
                let request = matches!(self, Repr::EchoRequest { .. });
                packet.set_msg_type(if request { Message::ECHO_REQUEST } else { Message::ECHO_REPLY });
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                bytes::copy_prefix(packet.data_mut(), data);
            }
            Repr::NeighborSolicit { target_addr, source_lladdr } => {
                packet.set_msg_type(Message::NEIGHBOR_SOLICIT);
                packet.set_neighbor_flags(NeighborFlags::default());
                packet.set_target_addr(target_addr);
                lladdr_option(packet, OPTION_SOURCE_LLADDR, source_lladdr);
            }
            Repr::NeighborAdvert { flags, target_addr, target_lladdr } => {
                packet.set_msg_type(Message::NEIGHBOR_ADVERT);
                packet.set_neighbor_flags(flags);
                packet.set_target_addr(target_addr);
                lladdr_option(packet, OPTION_TARGET_LLADDR, target_lladdr);
            }
            Repr::PktTooBig { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From fe80::1 to ff02::1:ff00:2: who has fe80::2? (source lladdr 96:2f:98:a3:f9:1a)
    const NS: &str = "870054aa00000000fe8000000000000000000000000000020101962f98a3f91a";
    // From fe80::2 to fe80::1: S and O set, fe80::2 is at f6:50:d0:21:12:a3.
    const NA: &str = "8800410660000000fe8000000000000000000000000000020201f650d02112a3";
    // Echo request fd00::1 -> fd00::2, ident 0xbeef, seq 7, data "wgpmd".
    const ECHO: &str = "80007ae7beef00077767706d64";

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    fn mac1() -> EthernetAddress {
        EthernetAddress([0x96, 0x2f, 0x98, 0xa3, 0xf9, 0x1a])
    }
    fn mac2() -> EthernetAddress {
        EthernetAddress([0xf6, 0x50, 0xd0, 0x21, 0x12, 0xa3])
    }

    fn roundtrip(r: Repr<'_>, src: &Ipv6Addr, dst: &Ipv6Addr, want: &[u8]) {
        let mut buf = vec![0xa5u8; r.buffer_len()];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst, &Default::default()), Ok(want.len()));
        assert_eq!(buf, want);
        let mut short = vec![0xa5u8; r.buffer_len() - 1];
        assert_eq!(
            r.emit(&mut Packet::new_unchecked(&mut short[..]), src, dst, &Default::default()),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn neighbor_solicitation() {
        let b = hex::decode(NS).unwrap();
        let (src, dst) = (a("fe80::1"), a("ff02::1:ff00:2"));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (Message::NEIGHBOR_SOLICIT, 0, 0x54aa));
        assert_eq!(p.target_addr(), a("fe80::2"));
        assert_eq!(p.nd_options(), &hex::decode("0101962f98a3f91a").unwrap()[..]);
        assert!(p.verify_checksum(&src, &dst));
        assert!(!p.verify_checksum(&dst, &a("ff02::1:ff00:3")));
        let r = Repr::parse(&p, &src, &dst, &Default::default()).unwrap();
        assert_eq!(r, Repr::NeighborSolicit { target_addr: a("fe80::2"), source_lladdr: Some(mac1()) });
        roundtrip(r, &src, &dst, &b);
        // Duplicate address detection: from :: without the option.
        let dad = Repr::NeighborSolicit { target_addr: a("fe80::2"), source_lladdr: None };
        let mut buf = vec![0xa5u8; dad.buffer_len()];
        dad.emit(&mut Packet::new_unchecked(&mut buf[..]), &Ipv6Addr::UNSPECIFIED, &dst, &Default::default()).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p, &Ipv6Addr::UNSPECIFIED, &dst, &Default::default()), Ok(dad));
        // ... and with it, from :: it is malformed.
        let mut m = b.clone();
        Packet::new_unchecked(&mut m[..]).fill_checksum(&Ipv6Addr::UNSPECIFIED, &dst);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!(Repr::parse(&p, &Ipv6Addr::UNSPECIFIED, &dst, &Default::default()), Err(Error::Malformed));
    }

    #[test]
    fn neighbor_advertisement() {
        let b = hex::decode(NA).unwrap();
        let (src, dst) = (a("fe80::2"), a("fe80::1"));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), Message::NEIGHBOR_ADVERT);
        assert_eq!(p.neighbor_flags(), NeighborFlags { router: false, solicited: true, override_: true });
        let r = Repr::parse(&p, &src, &dst, &Default::default()).unwrap();
        let flags = NeighborFlags { router: false, solicited: true, override_: true };
        assert_eq!(r, Repr::NeighborAdvert { flags, target_addr: a("fe80::2"), target_lladdr: Some(mac2()) });
        roundtrip(r, &src, &dst, &b);

        // Built with setters.
        let mut buf = vec![0xa5u8; 32];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(Message::NEIGHBOR_ADVERT);
        p.set_msg_code(0);
        p.set_neighbor_flags(flags);
        p.set_target_addr(a("fe80::2"));
        p.nd_options_mut().copy_from_slice(&hex::decode("0201f650d02112a3").unwrap());
        p.fill_checksum(&src, &dst);
        assert_eq!(buf, b);

        // Solicited to a multicast address is malformed.
        let mc = a("ff02::1");
        let mut m = b.clone();
        Packet::new_unchecked(&mut m[..]).fill_checksum(&src, &mc);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &src, &mc, &Default::default()),
            Err(Error::Malformed)
        );
        // A multicast target is malformed.
        let mut m = b.clone();
        m[8] = 0xff;
        let caps = ChecksumCapabilities::ignored();
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &src, &dst, &caps), Err(Error::Malformed));
    }

    #[test]
    fn nd_options() {
        let ll = hex::decode("0201f650d02112a3").unwrap();
        assert_eq!(find_lladdr(&ll, OPTION_TARGET_LLADDR), Ok(Some(mac2())));
        assert_eq!(find_lladdr(&ll, OPTION_SOURCE_LLADDR), Ok(None));
        assert_eq!(find_lladdr(&[], OPTION_SOURCE_LLADDR), Ok(None));
        // Unknown option skipped, first matching one wins.
        let mut opts = hex::decode("0501000000000000").unwrap();
        opts.extend_from_slice(&ll);
        opts.extend_from_slice(&hex::decode("0201010203040506").unwrap());
        assert_eq!(find_lladdr(&opts, OPTION_TARGET_LLADDR), Ok(Some(mac2())));
        // A non-Ethernet length is ignored.
        assert_eq!(find_lladdr(&hex::decode("02020102030405060708090a0b0c0d0e").unwrap(), 2), Ok(None));
        // Zero length, overrun, stray byte.
        assert_eq!(find_lladdr(&hex::decode("0200f650d02112a3").unwrap(), 2), Err(Error::Malformed));
        assert_eq!(find_lladdr(&hex::decode("0202f650d02112a3").unwrap(), 2), Err(Error::Malformed));
        assert_eq!(find_lladdr(&hex::decode("0201f650d02112a302").unwrap(), 2), Err(Error::Malformed));
        // Inside a message.
        let mut b = hex::decode(NS).unwrap();
        b[25] = 0;
        let caps = ChecksumCapabilities::ignored();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p, &a("fe80::1"), &a("ff02::1"), &caps), Err(Error::Malformed));
    }

    #[test]
    fn echo() {
        let b = hex::decode(ECHO).unwrap();
        let (src, dst) = (a("fd00::1"), a("fd00::2"));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.echo_ident(), p.echo_seq_no(), p.data()), (0xbeef, 7, &b"wgpmd"[..]));
        let r = Repr::parse(&p, &src, &dst, &Default::default()).unwrap();
        assert_eq!(r, Repr::EchoRequest { ident: 0xbeef, seq_no: 7, data: b"wgpmd" });
        roundtrip(r, &src, &dst, &b);
        let reply = Repr::EchoReply { ident: 0xbeef, seq_no: 7, data: b"wgpmd" };
        let mut buf = vec![0u8; reply.buffer_len()];
        reply.emit(&mut Packet::new_unchecked(&mut buf[..]), &dst, &src, &Default::default()).unwrap();
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), &dst, &src, &Default::default()), Ok(reply));
        // The pseudo-header sum is symmetric in the addresses; another address breaks it.
        assert_eq!(Repr::parse(&p, &src, &a("fd00::3"), &Default::default()), Err(Error::Checksum));
        let mut m = b.clone();
        m[1] = 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &src, &dst, &ChecksumCapabilities::ignored()),
            Err(Error::Malformed)
        );
        m[0] = 133;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&m[..]).unwrap(), &src, &dst, &ChecksumCapabilities::ignored()),
            Err(Error::Unsupported)
        );
    }

    /// A 1500-byte IPv6/UDP packet that did not fit a 1420-byte link.
    fn offending() -> Vec<u8> {
        let r = ipv6::Repr {
            src_addr: a("fd00::1"),
            dst_addr: a("fd00::2"),
            next_header: IpProtocol::UDP,
            payload_len: 1460,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut b: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..])).unwrap();
        b
    }

    #[test]
    fn packet_too_big_quotes_up_to_the_minimum_mtu() {
        let big = offending();
        let (src, dst) = (a("fd00::fe"), a("fd00::1"));
        let r = Repr::PktTooBig { mtu: 1420, packet: &big };
        assert_eq!(r.buffer_len(), 1240);
        let mut buf = vec![0xa5u8; 2000];
        let n = r.emit(&mut Packet::new_unchecked(&mut buf[..]), &src, &dst, &Default::default()).unwrap();
        assert_eq!(n, 1240);
        assert_eq!(n + ipv6::HEADER_LEN, ipv6::MIN_MTU);
        assert_eq!(&buf[..8], &[2, 0, buf[2], buf[3], 0, 0, 0x05, 0x8c]);
        assert_eq!(&buf[8..n], &big[..1232]);
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.pkt_too_big_mtu(), 1420);
        assert_eq!(
            Repr::parse(&p, &src, &dst, &Default::default()),
            Ok(Repr::PktTooBig { mtu: 1420, packet: &big[..1232] })
        );
        // Less room: as much as fits, down to header + 8.
        for room in [56usize, 57, 300] {
            let mut buf = vec![0xa5u8; room];
            let n = r.emit(&mut Packet::new_unchecked(&mut buf[..]), &src, &dst, &Default::default()).unwrap();
            assert_eq!(n, room);
            let p = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(
                Repr::parse(&p, &src, &dst, &Default::default()),
                Ok(Repr::PktTooBig { mtu: 1420, packet: &big[..room - 8] })
            );
        }
        let mut buf = [0xa5u8; 55];
        assert_eq!(
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), &src, &dst, &Default::default()),
            Err(Error::Truncated)
        );
        // A quote without an IPv6 header is malformed.
        let caps = ChecksumCapabilities::ignored();
        let mut buf = [0xa5u8; 47];
        buf[0] = 2;
        buf[1] = 0;
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), &src, &dst, &caps), Err(Error::Malformed));
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        for (msg, src, dst) in [(NS, "fe80::1", "ff02::1:ff00:2"), (NA, "fe80::2", "fe80::1")] {
            let b = hex::decode(msg).unwrap();
            let (src, dst) = (a(src), a(dst));
            for n in 0..b.len() {
                let p = Packet::new_unchecked(&b[..n]);
                let _ = (
                    p.target_addr(),
                    p.neighbor_flags(),
                    p.nd_options(),
                    p.pkt_too_big_mtu(),
                    p.verify_checksum(&src, &dst),
                );
                let r = Repr::parse(&p, &src, &dst, &ChecksumCapabilities::ignored());
                // 24 (no options) parses; 25..31 leave a broken option.
                assert_eq!(r.is_ok(), n == 24, "length {n}");
                assert_eq!(Packet::new_checked(&b[..n]).is_ok(), n >= 24);
            }
        }
    }
}
