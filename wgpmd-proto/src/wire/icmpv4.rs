//! ICMP for IPv4 (RFC 792): echo request/reply and destination unreachable, including
//! fragmentation needed with the next-hop MTU (RFC 1191).
//!
//! Owns the 8-byte header (type, code, checksum, and the four type-specific bytes) and the
//! rules for quoting an offending datagram in an error: at least its IP header and the first 8
//! bytes of its payload (RFC 792), and no more than keeps the error within 576 bytes
//! (RFC 1812 §4.3.2.3, as the kernel's `icmp_send` does). Other types parse as
//! [`Error::Unsupported`]. Kernel counterpart: `net/ipv4/icmp.c`.

use super::bytes::{self, Field, Rest};
use super::checksum;
use super::ipv4;
use super::{ChecksumCapabilities, Error, Result};

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Longest quote of an offending datagram: an error stays within 576 bytes of IP
/// (576 − 20 − 8).
pub const MAX_QUOTE_LEN: usize = 576 - ipv4::HEADER_LEN - HEADER_LEN;
/// Bytes of the offending datagram's payload quoted at the least (RFC 792).
pub const MIN_QUOTED_PAYLOAD: usize = 8;

mod field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const UNUSED: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// An ICMPv4 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    /// Echo reply.
    pub const ECHO_REPLY: Message = Message(0);
    /// Destination unreachable.
    pub const DST_UNREACHABLE: Message = Message(3);
    /// Echo request.
    pub const ECHO_REQUEST: Message = Message(8);
    /// Time exceeded.
    pub const TIME_EXCEEDED: Message = Message(11);
    /// Parameter problem.
    pub const PARAM_PROBLEM: Message = Message(12);
}

/// Destination-unreachable codes (RFC 792, RFC 1122, RFC 1812).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DstUnreachable {
    /// 0: network unreachable.
    NetUnreachable,
    /// 1: host unreachable.
    HostUnreachable,
    /// 2: protocol unreachable.
    ProtoUnreachable,
    /// 3: port unreachable.
    PortUnreachable,
    /// 4: fragmentation needed and DF set; carries the next-hop MTU (RFC 1191).
    FragRequired,
    /// 5: source route failed.
    SrcRouteFailed,
    /// 6: destination network unknown.
    DstNetUnknown,
    /// 7: destination host unknown.
    DstHostUnknown,
    /// 8: source host isolated.
    SrcHostIsolated,
    /// 9: network administratively prohibited.
    NetProhibited,
    /// 10: host administratively prohibited.
    HostProhibited,
    /// 11: network unreachable for type of service.
    NetUnreachToS,
    /// 12: host unreachable for type of service.
    HostUnreachToS,
    /// 13: communication administratively prohibited.
    CommProhibited,
    /// 14: host precedence violation.
    HostPrecedenceViolation,
    /// 15: precedence cutoff in effect.
    PrecedenceCutoff,
}

impl DstUnreachable {
    const ALL: [DstUnreachable; 16] = [
        DstUnreachable::NetUnreachable,
        DstUnreachable::HostUnreachable,
        DstUnreachable::ProtoUnreachable,
        DstUnreachable::PortUnreachable,
        DstUnreachable::FragRequired,
        DstUnreachable::SrcRouteFailed,
        DstUnreachable::DstNetUnknown,
        DstUnreachable::DstHostUnknown,
        DstUnreachable::SrcHostIsolated,
        DstUnreachable::NetProhibited,
        DstUnreachable::HostProhibited,
        DstUnreachable::NetUnreachToS,
        DstUnreachable::HostUnreachToS,
        DstUnreachable::CommProhibited,
        DstUnreachable::HostPrecedenceViolation,
        DstUnreachable::PrecedenceCutoff,
    ];

    /// The code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The reason for a code, if defined.
    pub fn from_code(code: u8) -> Option<DstUnreachable> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// A read/write view of an ICMPv4 message. The buffer must be exactly the IPv4 payload.
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

    /// The buffer holds the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Next-hop MTU of a fragmentation-needed message (RFC 1191).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::MTU)
    }

    /// Everything after the header: echo data, or the quoted datagram of an error.
    #[inline]
    pub fn data(&self) -> &[u8] {
        bytes::rest(self.buffer.as_ref(), field::DATA)
    }

    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data with the buffer's lifetime, for a `Repr` that outlives the view.
    fn data_ref(&self) -> &'a [u8] {
        let buffer: &'a T = self.buffer;
        bytes::rest(buffer.as_ref(), field::DATA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
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

    /// Zeroes the four type-specific bytes, then sets the next-hop MTU in the low two.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        bytes::set_bytes(self.buffer.as_mut(), field::UNUSED, &[0; 4]);
        bytes::set_be16(self.buffer.as_mut(), field::MTU, value)
    }

    /// Computes and writes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(checksum::finish(sum))
    }

    /// The data, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        bytes::rest_mut(self.buffer.as_mut(), field::DATA)
    }
}

/// A parsed ICMPv4 message of a kind we handle.
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
    /// Destination unreachable.
    DstUnreachable {
        /// Why.
        reason: DstUnreachable,
        /// Next-hop MTU for [`DstUnreachable::FragRequired`], zero for other reasons.
        next_hop_mtu: u16,
        /// The offending datagram as quoted: its IPv4 header and at least 8 bytes of payload
        /// (when it had them), at most [`MAX_QUOTE_LEN`] bytes.
        datagram: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses a message. Echo with a non-zero code, or an error whose quote does not hold a
    /// whole IPv4 header, is [`Error::Malformed`]; types and codes we do not handle are
    /// [`Error::Unsupported`]; a bad checksum is [`Error::Checksum`] when `caps` checks it.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>, caps: &ChecksumCapabilities) -> Result<Repr<'a>> {
        packet.check_len()?;
        if caps.icmpv4.rx() && !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data = packet.data_ref();
        match (packet.msg_type(), packet.msg_code()) {
            (Message::ECHO_REQUEST, 0) => {
                Ok(Repr::EchoRequest { ident: packet.echo_ident(), seq_no: packet.echo_seq_no(), data })
            }
            (Message::ECHO_REPLY, 0) => {
                Ok(Repr::EchoReply { ident: packet.echo_ident(), seq_no: packet.echo_seq_no(), data })
            }
            (Message::ECHO_REQUEST | Message::ECHO_REPLY, _) => Err(Error::Malformed),
            (Message::DST_UNREACHABLE, code) => {
                let reason = DstUnreachable::from_code(code).ok_or(Error::Unsupported)?;
                let quoted = ipv4::Packet::new_unchecked(data);
                let hl = usize::from(quoted.header_len());
                if data.len() < ipv4::HEADER_LEN || quoted.version() != 4 || hl < ipv4::HEADER_LEN || data.len() < hl {
                    return Err(Error::Malformed);
                }
                let next_hop_mtu = if reason == DstUnreachable::FragRequired { packet.next_hop_mtu() } else { 0 };
                let datagram = bytes::slice(data, 0..data.len().min(MAX_QUOTE_LEN));
                Ok(Repr::DstUnreachable { reason, next_hop_mtu, datagram })
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// Length of the message this emits given enough room: the header plus the data, or plus
    /// the quote cut to [`MAX_QUOTE_LEN`].
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => HEADER_LEN + data.len(),
            Repr::DstUnreachable { datagram, .. } => HEADER_LEN + datagram.len().min(MAX_QUOTE_LEN),
        }
    }

    /// Writes the message into `packet` and returns its length (the checksum covers exactly
    /// that many bytes). Echo needs [`buffer_len`](Self::buffer_len) bytes. Destination
    /// unreachable copies as much of the datagram as fits in the buffer and in
    /// [`MAX_QUOTE_LEN`], but at least its IPv4 header and 8 bytes of payload (or the whole
    /// datagram if shorter); a buffer too small for that is [`Error::Truncated`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        caps: &ChecksumCapabilities,
    ) -> Result<usize> {
        let room = packet.buffer.as_ref().len();
        let len = match *self {
            Repr::EchoRequest { ident, seq_no, data } | Repr::EchoReply { ident, seq_no, data } => {
                let len = HEADER_LEN + data.len();
                if room < len {
                    return Err(Error::Truncated);
                }
                let ty =
                    if matches!(self, Repr::EchoRequest { .. }) { Message::ECHO_REQUEST } else { Message::ECHO_REPLY };
                packet.set_msg_type(ty);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                bytes::copy_prefix(packet.data_mut(), data);
                len
            }
            Repr::DstUnreachable { reason, next_hop_mtu, datagram } => {
                let wanted = datagram.len().min(MAX_QUOTE_LEN);
                let hl = usize::from(ipv4::Packet::new_unchecked(datagram).header_len()).max(ipv4::HEADER_LEN);
                let least = wanted.min(hl + MIN_QUOTED_PAYLOAD);
                let quote = wanted.min(room.saturating_sub(HEADER_LEN));
                if quote < least || room < HEADER_LEN {
                    return Err(Error::Truncated);
                }
                packet.set_msg_type(Message::DST_UNREACHABLE);
                packet.set_msg_code(reason.code());
                let mtu = if reason == DstUnreachable::FragRequired { next_hop_mtu } else { 0 };
                packet.set_next_hop_mtu(mtu);
                bytes::copy_prefix(packet.data_mut(), bytes::slice(datagram, 0..quote));
                HEADER_LEN + quote
            }
        };
        let mut msg = Packet::new_unchecked(bytes::slice_mut(packet.buffer.as_mut(), 0..len));
        if caps.icmpv4.tx() {
            msg.fill_checksum();
        } else {
            msg.set_checksum(0);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, ident 0x1234, seq 1, data "abcdefgh" (checksum by an independent
    // implementation).
    const ECHO: &str = "08005435123400016162636465666768";
    // Fragmentation needed, next-hop MTU 1420, quoting the IPv4 header and the first 8 bytes of
    // the UDP header of an initiation captured between two wireguard-go peers.
    const FRAG_NEEDED: &str = "03044c840000058c450000b0749440004011b0e00a6300010a630002ca6cca6c009c1576";

    #[test]
    fn echo_deconstruct_parse_emit() {
        let b = hex::decode(ECHO).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (Message::ECHO_REQUEST, 0, 0x5435));
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(p.data(), b"abcdefgh");
        assert!(p.verify_checksum());
        let r = Repr::parse(&p, &Default::default()).unwrap();
        assert_eq!(r, Repr::EchoRequest { ident: 0x1234, seq_no: 1, data: b"abcdefgh" });
        let mut buf = vec![0xa5u8; r.buffer_len()];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()), Ok(16));
        assert_eq!(buf, b);
        let mut short = [0xa5u8; 15];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut short[..]), &Default::default()), Err(Error::Truncated));

        // Build with setters; turn it into the reply a responder sends.
        let mut buf = [0xa5u8; 16];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(Message::ECHO_REPLY);
        p.set_msg_code(0);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(b"abcdefgh");
        p.fill_checksum();
        let reply = Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), &Default::default()).unwrap();
        assert_eq!(reply, Repr::EchoReply { ident: 0x1234, seq_no: 1, data: b"abcdefgh" });
        // Request -> reply changes one word: the incremental update agrees.
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), checksum::update(0x5435, 0x0800, 0x0000));
    }

    #[test]
    fn frag_needed_deconstruct_parse_emit() {
        let b = hex::decode(FRAG_NEEDED).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (Message::DST_UNREACHABLE, 4));
        assert_eq!(p.next_hop_mtu(), 1420);
        assert!(p.verify_checksum());
        let r = Repr::parse(&p, &Default::default()).unwrap();
        assert_eq!(
            r,
            Repr::DstUnreachable { reason: DstUnreachable::FragRequired, next_hop_mtu: 1420, datagram: &b[8..] }
        );
        let mut buf = vec![0xa5u8; r.buffer_len()];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()), Ok(36));
        assert_eq!(buf, b);
    }

    #[test]
    fn emit_quotes_as_much_as_fits_but_at_least_header_and_8() {
        // A 176-byte offending datagram: header + UDP + payload.
        let mut dgram = hex::decode("450000b0749440004011b0e00a6300010a630002ca6cca6c009c1576").unwrap();
        dgram.extend((0..148).map(|i| i as u8));
        let r = Repr::DstUnreachable { reason: DstUnreachable::FragRequired, next_hop_mtu: 1280, datagram: &dgram };
        assert_eq!(r.buffer_len(), 8 + 176);
        for room in [36usize, 37, 100, 184, 600] {
            let mut buf = vec![0xa5u8; room];
            let n = r.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()).unwrap();
            assert_eq!(n, room.min(184));
            assert_eq!(&buf[8..n], &dgram[..n - 8]);
            let p = Packet::new_checked(&buf[..n]).unwrap();
            assert!(p.verify_checksum());
            match Repr::parse(&p, &Default::default()).unwrap() {
                Repr::DstUnreachable { datagram, next_hop_mtu: 1280, .. } => assert_eq!(datagram, &dgram[..n - 8]),
                other => panic!("{other:?}"),
            }
        }
        let mut buf = [0xa5u8; 35];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()), Err(Error::Truncated));
        // A long datagram is cut at 548 bytes even with room to spare.
        let long = vec![0x45u8; 1500];
        let r = Repr::DstUnreachable { reason: DstUnreachable::PortUnreachable, next_hop_mtu: 9, datagram: &long };
        let mut buf = vec![0u8; 1600];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut buf[..]), &Default::default()), Ok(8 + MAX_QUOTE_LEN));
        assert_eq!(&buf[4..8], &[0, 0, 0, 0], "MTU only for code 4");
    }

    #[test]
    fn bad_messages() {
        let caps = ChecksumCapabilities::ignored();
        let mut b = hex::decode(ECHO).unwrap();
        b[1] = 1;
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), &caps), Err(Error::Malformed));
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), &Default::default()), Err(Error::Checksum));
        b[0] = 13; // timestamp
        b[1] = 0;
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), &caps), Err(Error::Unsupported));
        let mut f = hex::decode(FRAG_NEEDED).unwrap();
        f[1] = 16;
        assert_eq!(Repr::parse(&Packet::new_checked(&f[..]).unwrap(), &caps), Err(Error::Unsupported));
        f[1] = 4;
        f[8] = 0x46; // quoted IHL 6 but only 28 quoted bytes -> still fine (24 <= 28)
        assert!(Repr::parse(&Packet::new_checked(&f[..]).unwrap(), &caps).is_ok());
        f[8] = 0x4f; // quoted IHL 15: 60 bytes not quoted
        assert_eq!(Repr::parse(&Packet::new_checked(&f[..]).unwrap(), &caps), Err(Error::Malformed));
        f[8] = 0x65;
        assert_eq!(Repr::parse(&Packet::new_checked(&f[..]).unwrap(), &caps), Err(Error::Malformed));
        assert_eq!(Repr::parse(&Packet::new_checked(&f[..27]).unwrap(), &caps), Err(Error::Malformed));
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let b = hex::decode(FRAG_NEEDED).unwrap();
        for n in 0..b.len() {
            let p = Packet::new_unchecked(&b[..n]);
            let _ = (p.msg_type(), p.echo_ident(), p.next_hop_mtu(), p.data(), p.verify_checksum());
            let r = Repr::parse(&p, &ChecksumCapabilities::ignored());
            assert_eq!(r.is_ok(), n >= 8 + 20, "length {n}");
            assert_eq!(Packet::new_checked(&b[..n]).is_ok(), n >= 8);
        }
    }
}
