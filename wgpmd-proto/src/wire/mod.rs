//! Zero-copy views of the packets wgpmd sees on the wire: Ethernet II with an optional 802.1Q
//! tag, ARP, IPv4, IPv6, UDP, ICMPv4, ICMPv6 (echo, packet too big, neighbour discovery) and the
//! four WireGuard messages.
//!
//! This module owns the byte layout of those headers and the validity rules that can be checked
//! from the bytes alone (lengths, versions, checksums, type codes). It keeps no state. The
//! kernel counterparts are `net/ethernet/eth.c`, `net/ipv4/ip_input.c` (`ip_rcv_core`),
//! `net/ipv6/ip6_input.c`, `net/ipv4/udp.c`, `net/ipv4/icmp.c`, `net/ipv6/ndisc.c` and, for the
//! WireGuard messages, `drivers/net/wireguard/messages.h` and `receive.c`
//! (`prepare_skb_header`). The design follows smoltcp's `wire` module.
//!
//! # Layering
//!
//! Every protocol has two layers:
//!
//! - a **view**, `Packet<T: AsRef<[u8]>>` (or `Frame<T>` for Ethernet), that wraps a buffer the
//!   caller owns, reads fields with inlined big-endian accessors (little-endian for WireGuard),
//!   and, when `T: AsMut<[u8]>`, writes them with setters. `payload()` / `payload_mut()` return
//!   the bytes behind the header as sub-slices of the same buffer: nothing is copied, so a
//!   datapath decrypts and re-encapsulates in the buffer the frame arrived in;
//! - a **`Repr`**, a small owned value (`Copy` for the headers), with
//!   `parse(&view) -> Result<Repr>` for input, and `buffer_len()` and
//!   `emit(&self, &mut view) -> Result<..>` for output.
//!
//! Views are built with `new_checked(buffer)`, which calls `check_len()`: after it, every
//! accessor reads inside the buffer and every length field agrees with the buffer. Untrusted
//! input goes through `new_checked`; `new_unchecked` is for buffers the caller has sized itself,
//! typically `&mut buf[..repr.buffer_len()]` handed to `emit`. Headers that carry upper-layer
//! length or type information check it together with the buffer length, before any other field
//! is read: IPv4 (IHL, total length), IPv6 (payload length), UDP (length), ARP (hardware and
//! protocol types), ICMPv6 neighbour discovery (type), and WireGuard, whose type and exact
//! length are checked as one, like the kernel's `prepare_skb_header`.
//!
//! `parse` never trusts a view: it calls `check_len()` again, so a `Repr` only ever comes from
//! bytes that passed it. Views over a network-layer payload (UDP, ICMP) must be given exactly
//! that payload (`ipv4::Packet::payload()` or `ipv6::Packet::payload()`), not the rest of the
//! frame, which may carry Ethernet padding.
//!
//! ## Setters that invalidate `check_len`
//!
//! Setters write what they are told; a few change what `check_len` accepted and must be
//! followed by a fresh `new_checked` before the view is read as input again:
//!
//! - `EthernetFrame::set_ethertype` (to or from [`EtherType::VLAN`] moves the payload);
//! - `ArpPacket::set_hardware_type`, `set_protocol_type`, `set_hardware_len`, `set_protocol_len`;
//! - `Ipv4Packet::set_header_len` and `set_total_len`;
//! - `Ipv6Packet::set_payload_len`;
//! - `UdpPacket::set_length`;
//! - `Icmpv6Packet::set_msg_type` (neighbour discovery messages need 24 bytes, others 8);
//! - the WireGuard views' `init_header` (the type decides the length).
//!
//! # Checksums
//!
//! Checksums are verified in `parse` and filled in `emit` according to a
//! [`ChecksumCapabilities`], so that a NIC that verifies or fills them is not second-guessed
//! (smoltcp's model). Captured frames often carry *partial* UDP checksums (the pseudo-header
//! sum, left for the NIC to finish): such frames parse only with UDP receive checks off. The
//! [`checksum`] module holds the RFC 1071 sum, RFC 1624 incremental updates and the pseudo-header
//! sums.
//!
//! # Panics
//!
//! None. No function in this module panics on any input, checked or not: every access goes
//! through bounds-checked helpers that read zeros and drop writes outside the buffer (see the
//! private `bytes` module), `emit` checks the buffer length first and returns
//! [`Error::Truncated`] rather than writing a partial packet, and nothing unwraps. This crate's
//! robustness test (`tests/wire_robustness.rs`) and the repository's fuzz targets (`fuzz/`) drive
//! every parser, accessor and emitter with over a million generated and mutated frames to hold
//! us to that.

use thiserror::Error;

mod bytes;

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod udp;
pub mod wireguard;

pub use self::arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use self::ethernet::{EtherType, EthernetAddress, Frame as EthernetFrame, Repr as EthernetRepr, VlanTag};
pub use self::icmpv4::{
    DstUnreachable as Icmpv4DstUnreachable, Message as Icmpv4Message, Packet as Icmpv4Packet, Repr as Icmpv4Repr,
};
pub use self::icmpv6::{Message as Icmpv6Message, NeighborFlags, Packet as Icmpv6Packet, Repr as Icmpv6Repr};
pub use self::ip::{IpPair, IpProtocol};
pub use self::ipv4::{Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use self::ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr};
pub use self::udp::{Packet as UdpPacket, Repr as UdpRepr};
pub use self::wireguard::{
    classify, CookieReply, HandshakeInitiation, HandshakeResponse, MacMessage, MacMessageMut,
    Message as WireguardMessage, MessageType, TransportData,
};

/// Why a view or a `Repr` refused a buffer. Small and `Copy`, so that a datapath can count drops
/// per reason without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field inside it says.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the protocol forbids (wrong version, a length shorter than its
    /// header, non-zero WireGuard reserved bytes, a zero destination port...).
    #[error("malformed packet")]
    Malformed,
    /// The checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed but not handled here (an unknown type code, ARP for a non-Ethernet/IPv4
    /// network, an 802.3 length field instead of an EtherType).
    #[error("unsupported packet")]
    Unsupported,
}

/// Result of the wire parsers.
pub type Result<T> = core::result::Result<T, Error>;

/// Who computes one kind of checksum: software here, or the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Checksum {
    /// Verify on receive and fill on transmit, in software.
    #[default]
    Both,
    /// Verify on receive; the NIC fills it on transmit.
    Rx,
    /// Fill on transmit; the NIC verified it on receive.
    Tx,
    /// The NIC does both.
    None,
}

impl Checksum {
    /// Whether `parse` verifies this checksum.
    #[inline]
    pub const fn rx(self) -> bool {
        matches!(self, Checksum::Both | Checksum::Rx)
    }
    /// Whether `emit` fills this checksum.
    #[inline]
    pub const fn tx(self) -> bool {
        matches!(self, Checksum::Both | Checksum::Tx)
    }
}

/// Which checksums software handles, per protocol. The default does them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChecksumCapabilities {
    /// IPv4 header checksum.
    pub ipv4: Checksum,
    /// UDP checksum (over IPv4 and IPv6).
    pub udp: Checksum,
    /// ICMPv4 checksum.
    pub icmpv4: Checksum,
    /// ICMPv6 checksum.
    pub icmpv6: Checksum,
}

impl ChecksumCapabilities {
    /// Neither verify nor fill any checksum (a NIC with full offload, or a fuzzer).
    pub const fn ignored() -> Self {
        ChecksumCapabilities {
            ipv4: Checksum::None,
            udp: Checksum::None,
            icmpv4: Checksum::None,
            icmpv6: Checksum::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_and_are_std_errors() {
        let e: &dyn std::error::Error = &Error::Truncated;
        assert_eq!(e.to_string(), "truncated packet");
        assert!(e.source().is_none());
        assert_eq!(Error::Malformed.to_string(), "malformed packet");
        assert_eq!(Error::Checksum.to_string(), "bad checksum");
        assert_eq!(Error::Unsupported.to_string(), "unsupported packet");
    }

    #[test]
    fn checksum_capabilities() {
        let d = ChecksumCapabilities::default();
        assert!(d.ipv4.rx() && d.ipv4.tx() && d.udp.rx() && d.icmpv6.tx());
        let i = ChecksumCapabilities::ignored();
        assert!(!i.ipv4.rx() && !i.ipv4.tx() && !i.udp.rx() && !i.icmpv4.tx());
        assert!(Checksum::Rx.rx() && !Checksum::Rx.tx());
        assert!(!Checksum::Tx.rx() && Checksum::Tx.tx());
    }
}
