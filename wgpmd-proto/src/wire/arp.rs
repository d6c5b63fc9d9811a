//! ARP (RFC 826) for Ethernet and IPv4, the only combination a WireGuard endpoint resolves.
//!
//! Owns the 28-byte Ethernet/IPv4 ARP packet: hardware type 1, protocol type 0x0800, lengths 6
//! and 4, operation request or reply, and the sender/target hardware and protocol addresses.
//! Any other hardware or protocol type is [`Error::Unsupported`], checked together with the
//! length before any address is read. Kernel counterpart: `net/ipv4/arp.c` (`arp_rcv`,
//! `arp_process`).

use std::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::ethernet::{EtherType, EthernetAddress};
use super::{Error, Result};

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;
/// Length of the fixed part (types, lengths, operation).
pub const FIXED_LEN: usize = 8;
/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// An ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Who has the target protocol address?
    Request,
    /// The sender has the sender protocol address.
    Reply,
}

impl Operation {
    /// The operation code (1 or 2).
    pub const fn code(self) -> u16 {
        match self {
            Operation::Request => 1,
            Operation::Reply => 2,
        }
    }

    /// The operation for a code, if it is one of ours.
    pub const fn from_code(code: u16) -> Option<Operation> {
        match code {
            1 => Some(Operation::Request),
            2 => Some(Operation::Reply),
            _ => None,
        }
    }
}

/// A read/write view of an Ethernet/IPv4 ARP packet.
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

    /// The types and lengths say Ethernet/IPv4 ([`Error::Unsupported`] otherwise) and the
    /// buffer holds all 28 bytes. Trailing bytes (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < FIXED_LEN {
            return Err(Error::Truncated);
        }
        if self.hardware_type() != HARDWARE_ETHERNET
            || self.protocol_type() != EtherType::IPV4
            || self.hardware_len() != 6
            || self.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        if len < PACKET_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type.
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type.
    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType(bytes::be16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Hardware address length.
    #[inline]
    pub fn hardware_len(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HLEN)
    }

    /// Protocol address length.
    #[inline]
    pub fn protocol_len(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::PLEN)
    }

    /// Raw operation code.
    #[inline]
    pub fn operation(&self) -> u16 {
        bytes::be16(self.buffer.as_ref(), field::OPER)
    }

    /// Sender hardware address.
    #[inline]
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(bytes::array(self.buffer.as_ref(), field::SHA))
    }

    /// Sender protocol address.
    #[inline]
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::SPA))
    }

    /// Target hardware address.
    #[inline]
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(bytes::array(self.buffer.as_ref(), field::THA))
    }

    /// Target protocol address.
    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::TPA))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type (invalidates `check_len`).
    #[inline]
    pub fn set_hardware_type(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::HTYPE, value)
    }

    /// Sets the protocol type (invalidates `check_len`).
    #[inline]
    pub fn set_protocol_type(&mut self, value: EtherType) {
        bytes::set_be16(self.buffer.as_mut(), field::PTYPE, value.0)
    }

    /// Sets the hardware address length (invalidates `check_len`).
    #[inline]
    pub fn set_hardware_len(&mut self, value: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::HLEN, value)
    }

    /// Sets the protocol address length (invalidates `check_len`).
    #[inline]
    pub fn set_protocol_len(&mut self, value: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::PLEN, value)
    }

    /// Sets the operation code.
    #[inline]
    pub fn set_operation(&mut self, value: u16) {
        bytes::set_be16(self.buffer.as_mut(), field::OPER, value)
    }

    /// Sets the sender hardware address.
    #[inline]
    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        bytes::set_bytes(self.buffer.as_mut(), field::SHA, &addr.0)
    }

    /// Sets the sender protocol address.
    #[inline]
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::SPA, &addr.octets())
    }

    /// Sets the target hardware address.
    #[inline]
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        bytes::set_bytes(self.buffer.as_mut(), field::THA, &addr.0)
    }

    /// Sets the target protocol address.
    #[inline]
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        bytes::set_bytes(self.buffer.as_mut(), field::TPA, &addr.octets())
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Request or reply.
    pub operation: Operation,
    /// Sender hardware address.
    pub source_hardware_addr: EthernetAddress,
    /// Sender protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target hardware address (ignored in requests; often zero).
    pub target_hardware_addr: EthernetAddress,
    /// Target protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses a packet; an operation other than request or reply is [`Error::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let operation = Operation::from_code(packet.operation()).ok_or(Error::Unsupported)?;
        Ok(Repr {
            operation,
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Length of the packet this emits (28).
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into the first 28 bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if packet.buffer.as_ref().len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation.code());
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.99.0.1 (96:2f:98:a3:f9:1a) asks who has 10.99.0.2, followed by Ethernet padding.
    const REQUEST: &str = "0001080006040001962f98a3f91a0a630001000000000000\
                           0a630002000000000000000000000000000000000000";

    fn repr() -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr: EthernetAddress([0x96, 0x2f, 0x98, 0xa3, 0xf9, 0x1a]),
            source_protocol_addr: Ipv4Addr::new(10, 99, 0, 1),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::new(10, 99, 0, 2),
        }
    }

    #[test]
    fn deconstruct_and_parse() {
        let b = hex::decode(REQUEST).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), EtherType::IPV4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), 1);
        assert_eq!(p.source_protocol_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn construct_and_emit() {
        let want = hex::decode(REQUEST).unwrap();
        let mut buf = vec![0xa5u8; PACKET_LEN];
        let r = repr();
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, want[..PACKET_LEN]);
        let reply = Repr { operation: Operation::Reply, ..r };
        reply.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf[7], 2);
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), reply);
        let mut short = [0xa5u8; PACKET_LEN - 1];
        assert_eq!(r.emit(&mut Packet::new_unchecked(&mut short[..])), Err(Error::Truncated));
    }

    #[test]
    fn other_networks_and_operations_are_unsupported() {
        let b = hex::decode(REQUEST).unwrap();
        for (i, v) in [(1usize, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut m = b.clone();
            m[i] = v;
            assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Unsupported), "byte {i}");
        }
        // A short non-Ethernet packet is Unsupported, not Truncated: types come first.
        let mut m = b[..12].to_vec();
        m[1] = 6;
        assert_eq!(Packet::new_checked(&m[..]).err(), Some(Error::Unsupported));
        let mut m = b.clone();
        m[7] = 3; // RARP request
        assert_eq!(Repr::parse(&Packet::new_checked(&m[..]).unwrap()), Err(Error::Unsupported));
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let b = hex::decode(REQUEST).unwrap();
        for n in 0..PACKET_LEN {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated), "length {n}");
            let p = Packet::new_unchecked(&b[..n]);
            let _ = (p.source_hardware_addr(), p.target_protocol_addr(), p.operation());
            assert!(Repr::parse(&p).is_err());
        }
    }
}
