//! Ethernet II frames, with at most one IEEE 802.1Q VLAN tag.
//!
//! Owns the 14-byte header (destination, source, EtherType), the optional 4-byte tag that sits
//! between the source address and the EtherType (TPID 0x8100, then the TCI: PCP 3 bits, DEI 1
//! bit, VID 12 bits), and [`EthernetAddress`]. One tag is read; a frame whose inner EtherType is
//! another tag (Q-in-Q) reports that EtherType and is left to the caller to drop. Kernel
//! counterpart: `net/ethernet/eth.c` (`eth_type_trans`) and `net/8021q/vlan_core.c`.

use core::fmt;

use super::bytes::{self, Field};
use super::{Error, Result};

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The address in the first six bytes of `bytes`, if there are six.
    pub fn from_bytes(bytes: &[u8]) -> Option<EthernetAddress> {
        bytes.get(..6).and_then(|b| <[u8; 6]>::try_from(b).ok()).map(EthernetAddress)
    }

    /// The six octets.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The group bit (least significant bit of the first octet) is set; broadcast included.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Not multicast (and so not broadcast).
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The locally administered bit is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An EtherType (IEEE registry). Values below 0x0600 are 802.3 lengths, not types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP.
    pub const ARP: EtherType = EtherType(0x0806);
    /// IPv6.
    pub const IPV6: EtherType = EtherType(0x86dd);
    /// IEEE 802.1Q VLAN tag (the TPID).
    pub const VLAN: EtherType = EtherType(0x8100);
    /// Smallest value that is an EtherType rather than an 802.3 length.
    pub const MIN: EtherType = EtherType(0x0600);
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EtherType::IPV4 => f.write_str("IPv4"),
            EtherType::ARP => f.write_str("ARP"),
            EtherType::IPV6 => f.write_str("IPv6"),
            EtherType::VLAN => f.write_str("802.1Q"),
            EtherType(n) => write!(f, "0x{n:04x}"),
        }
    }
}

/// An 802.1Q tag control information field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits; 0 means priority-tagged only, 4095 is reserved).
    pub vid: u16,
}

impl VlanTag {
    /// A tag for `vid` with priority 0.
    pub const fn new(vid: u16) -> VlanTag {
        VlanTag { pcp: 0, dei: false, vid: vid & 0x0fff }
    }

    /// Splits a TCI into its fields.
    pub const fn from_tci(tci: u16) -> VlanTag {
        VlanTag { pcp: (tci >> 13) as u8, dei: tci & 0x1000 != 0, vid: tci & 0x0fff }
    }

    /// The TCI; out-of-range `pcp` and `vid` bits are masked off.
    pub const fn tci(&self) -> u16 {
        (((self.pcp & 0x07) as u16) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Smallest frame on the wire, without the FCS: shorter frames are padded to it.
pub const MIN_FRAME_LEN: usize = 60;

mod field {
    use super::Field;
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const VLAN_TCI: Field = 14..16;
    pub const VLAN_ETHERTYPE: Field = 16..18;
}

/// A read/write view of an Ethernet II frame (without FCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// The buffer holds the header, and the whole VLAN tag when the EtherType announces one.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || (self.ethertype() == EtherType::VLAN && len < HEADER_LEN + VLAN_TAG_LEN) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(bytes::array(self.buffer.as_ref(), field::DESTINATION))
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(bytes::array(self.buffer.as_ref(), field::SOURCE))
    }

    /// The EtherType field after the source address ([`EtherType::VLAN`] for a tagged frame).
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(bytes::be16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Whether the frame carries an 802.1Q tag.
    #[inline]
    pub fn is_tagged(&self) -> bool {
        self.ethertype() == EtherType::VLAN
    }

    /// The 802.1Q tag, if the frame carries one.
    #[inline]
    pub fn vlan_tag(&self) -> Option<VlanTag> {
        self.is_tagged().then(|| VlanTag::from_tci(bytes::be16(self.buffer.as_ref(), field::VLAN_TCI)))
    }

    /// The EtherType of the payload: after the tag for a tagged frame, else [`ethertype`](Self::ethertype).
    #[inline]
    pub fn inner_ethertype(&self) -> EtherType {
        if self.is_tagged() {
            EtherType(bytes::be16(self.buffer.as_ref(), field::VLAN_ETHERTYPE))
        } else {
            self.ethertype()
        }
    }

    /// Offset of the payload: 14, or 18 behind a tag.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            HEADER_LEN + VLAN_TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The payload, behind the tag if there is one (includes any padding up to 60 bytes).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        bytes::rest(self.buffer.as_ref(), self.header_len()..)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        bytes::set_bytes(self.buffer.as_mut(), field::DESTINATION, &addr.0)
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        bytes::set_bytes(self.buffer.as_mut(), field::SOURCE, &addr.0)
    }

    /// Sets the EtherType after the source address. Setting or clearing [`EtherType::VLAN`]
    /// moves the payload: it invalidates `check_len`.
    #[inline]
    pub fn set_ethertype(&mut self, value: EtherType) {
        bytes::set_be16(self.buffer.as_mut(), field::ETHERTYPE, value.0)
    }

    /// Writes a tag's TCI (the EtherType must already be [`EtherType::VLAN`]).
    #[inline]
    pub fn set_vlan_tci(&mut self, tag: VlanTag) {
        bytes::set_be16(self.buffer.as_mut(), field::VLAN_TCI, tag.tci())
    }

    /// Sets the payload's EtherType: after the tag on a tagged frame, else the outer one.
    #[inline]
    pub fn set_inner_ethertype(&mut self, value: EtherType) {
        if self.is_tagged() {
            bytes::set_be16(self.buffer.as_mut(), field::VLAN_ETHERTYPE, value.0)
        } else {
            self.set_ethertype(value)
        }
    }

    /// The payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        bytes::rest_mut(self.buffer.as_mut(), start..)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Frame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The parsed header of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: EthernetAddress,
    /// Destination address.
    pub dst_addr: EthernetAddress,
    /// The 802.1Q tag, if any.
    pub vlan: Option<VlanTag>,
    /// The payload's EtherType (behind the tag).
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses a frame header. An 802.3 length where an EtherType belongs is
    /// [`Error::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        frame.check_len()?;
        let ethertype = frame.inner_ethertype();
        if ethertype < EtherType::MIN {
            return Err(Error::Unsupported);
        }
        Ok(Repr { src_addr: frame.src_addr(), dst_addr: frame.dst_addr(), vlan: frame.vlan_tag(), ethertype })
    }

    /// Length of the header this emits: 14, or 18 with a tag.
    pub const fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            HEADER_LEN + VLAN_TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Length of a frame carrying `payload_len` bytes.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    /// Writes the header (tagged or not) at the start of `frame`; the payload is untouched.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) -> Result<()> {
        if frame.buffer.as_ref().len() < self.header_len() {
            return Err(Error::Truncated);
        }
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        match self.vlan {
            Some(tag) => {
                frame.set_ethertype(EtherType::VLAN);
                frame.set_vlan_tci(tag);
                bytes::set_be16(frame.buffer.as_mut(), field::VLAN_ETHERTYPE, self.ethertype.0);
            }
            None => frame.set_ethertype(self.ethertype),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The first 14 bytes of a WireGuard initiation captured between two wireguard-go peers.
    const UNTAGGED: &str = "962f98a3f91af650d02112a30800450000b0";
    // The same header with a tag: PCP 5, DEI 1, VID 0x123.
    const TAGGED: &str = "962f98a3f91af650d02112a38100b12308004500";

    fn src() -> EthernetAddress {
        EthernetAddress([0xf6, 0x50, 0xd0, 0x21, 0x12, 0xa3])
    }
    fn dst() -> EthernetAddress {
        EthernetAddress([0x96, 0x2f, 0x98, 0xa3, 0xf9, 0x1a])
    }

    #[test]
    fn addresses() {
        assert_eq!(dst().to_string(), "96:2f:98:a3:f9:1a");
        assert_eq!(format!("{:?}", src()), "f6:50:d0:21:12:a3");
        assert!(EthernetAddress::BROADCAST.is_broadcast() && EthernetAddress::BROADCAST.is_multicast());
        assert!(dst().is_unicast() && dst().is_local() && !dst().is_broadcast());
        let mcast = EthernetAddress([0x33, 0x33, 0xff, 0, 0, 2]);
        assert!(mcast.is_multicast() && !mcast.is_unicast() && !mcast.is_broadcast());
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3, 4, 5]), None);
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3, 4, 5, 6, 7]), Some(EthernetAddress([1, 2, 3, 4, 5, 6])));
        assert_eq!(EtherType::IPV6.to_string(), "IPv6");
        assert_eq!(EtherType(0x88a8).to_string(), "0x88a8");
    }

    #[test]
    fn deconstruct_untagged() {
        let b = hex::decode(UNTAGGED).unwrap();
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.dst_addr(), dst());
        assert_eq!(f.src_addr(), src());
        assert_eq!(f.ethertype(), EtherType::IPV4);
        assert_eq!(f.inner_ethertype(), EtherType::IPV4);
        assert_eq!(f.vlan_tag(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0x45, 0x00, 0x00, 0xb0]);
        let r = Repr::parse(&f).unwrap();
        assert_eq!(r, Repr { src_addr: src(), dst_addr: dst(), vlan: None, ethertype: EtherType::IPV4 });
    }

    #[test]
    fn deconstruct_tagged() {
        let b = hex::decode(TAGGED).unwrap();
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::VLAN);
        assert_eq!(f.vlan_tag(), Some(VlanTag { pcp: 5, dei: true, vid: 0x123 }));
        assert_eq!(f.inner_ethertype(), EtherType::IPV4);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload(), &[0x45, 0x00]);
        let r = Repr::parse(&f).unwrap();
        assert_eq!(r.vlan.map(|t| t.tci()), Some(0xb123));
        assert_eq!(r.header_len(), 18);
    }

    #[test]
    fn construct_and_emit_tagged_and_untagged() {
        for (vlan, want) in [(None, UNTAGGED), (Some(VlanTag { pcp: 5, dei: true, vid: 0x123 }), TAGGED)] {
            let want = hex::decode(want).unwrap();
            let r = Repr { src_addr: src(), dst_addr: dst(), vlan, ethertype: EtherType::IPV4 };
            let mut buf = vec![0xa5u8; want.len()];
            let hl = r.header_len();
            buf[hl..].copy_from_slice(&want[hl..]);
            let mut f = Frame::new_unchecked(&mut buf[..]);
            r.emit(&mut f).unwrap();
            assert_eq!(buf, want);
            assert_eq!(r.buffer_len(4), hl + 4);
            let mut short = vec![0xa5u8; hl - 1];
            assert_eq!(r.emit(&mut Frame::new_unchecked(&mut short[..])), Err(Error::Truncated));
            assert!(short.iter().all(|&b| b == 0xa5));
        }
        // Setters on a pre-filled buffer.
        let mut buf = [0xa5u8; 20];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(dst());
        f.set_src_addr(src());
        f.set_ethertype(EtherType::VLAN);
        f.set_vlan_tci(VlanTag { pcp: 5, dei: true, vid: 0x123 });
        f.set_inner_ethertype(EtherType::IPV4);
        f.payload_mut().copy_from_slice(&[0x45, 0x00]);
        assert_eq!(&buf[..], &hex::decode(TAGGED).unwrap()[..]);
    }

    #[test]
    fn vlan_tci_fields() {
        let t = VlanTag::from_tci(0xffff);
        assert_eq!(t, VlanTag { pcp: 7, dei: true, vid: 0xfff });
        assert_eq!(t.tci(), 0xffff);
        assert_eq!(VlanTag::new(0x1234).vid, 0x234);
        assert_eq!(VlanTag { pcp: 9, dei: false, vid: 0xf001 }.tci(), 0x2001);
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        for want in [UNTAGGED, TAGGED] {
            let b = hex::decode(want).unwrap();
            let needed = if b[12] == 0x81 { 18 } else { 14 };
            for n in 0..b.len() {
                let r = Frame::new_checked(&b[..n]);
                assert_eq!(r.is_ok(), n >= needed, "length {n}");
                // Accessors on an unchecked short frame do not panic.
                let f = Frame::new_unchecked(&b[..n]);
                let _ = (f.dst_addr(), f.src_addr(), f.vlan_tag(), f.inner_ethertype(), f.payload());
                assert_eq!(Repr::parse(&f).is_ok(), n >= needed);
            }
        }
    }

    #[test]
    fn ieee_802_3_length_is_unsupported() {
        let mut b = hex::decode(UNTAGGED).unwrap();
        b[12] = 0x05;
        b[13] = 0xdc; // 1500: a length
        assert_eq!(Repr::parse(&Frame::new_checked(&b[..]).unwrap()), Err(Error::Unsupported));
    }
}
