//! Transport data: seal and open in place, cryptokey routing, and the timer events that data
//! traffic drives (kernel `send.c` / `receive.c` data paths).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::burst::{RxItem, TxItem};
use super::{Device, DropReason, Output, PeerId};
use crate::time::Timestamp;
use crate::wire::wireguard::TransportData;
use crate::wire::{ipv4, ipv6};

/// A decrypted transport message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    /// The peer it came from (authenticated, and its source address is allowed for it).
    pub peer: PeerId,
    /// Where the inner IP packet lies in the message buffer (padding trimmed); empty for a
    /// keepalive.
    pub range: Range<usize>,
}

impl Decapsulated {
    /// Whether this was a keepalive (no inner packet).
    pub fn is_keepalive(&self) -> bool {
        self.range.is_empty()
    }
}

/// A sealed transport message ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulated {
    /// The peer it goes to.
    pub peer: PeerId,
    /// The peer's endpoint.
    pub to: SocketAddr,
    /// Length of the WireGuard message at the start of the buffer.
    pub len: usize,
}

/// Source, destination and total length of an inner IPv4/IPv6 packet.
pub(super) fn inner_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    match p.first()? >> 4 {
        4 => {
            let v = ipv4::Packet::new_checked(p).ok()?;
            Some((IpAddr::V4(v.src_addr()), IpAddr::V4(v.dst_addr()), usize::from(v.total_len())))
        }
        6 => {
            let v = ipv6::Packet::new_checked(p).ok()?;
            Some((IpAddr::V6(v.src_addr()), IpAddr::V6(v.dst_addr()), v.total_len()))
        }
        _ => None,
    }
}

/// Destination of an inner packet without validating more than needed to route it: the
/// version and a whole fixed header.
pub fn inner_dst(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= ipv4::HEADER_LEN => Some(IpAddr::V4(ipv4::Packet::new_unchecked(p).dst_addr())),
        6 if p.len() >= ipv6::HEADER_LEN => Some(IpAddr::V6(ipv6::Packet::new_unchecked(p).dst_addr())),
        _ => None,
    }
}

impl Device {
    /// Seal the inner packet `buf[16..16 + plain_len]` in place for the peer its destination
    /// routes to. `buf` needs 16 bytes of headroom (the data header) and room after the
    /// plaintext for padding (to 16, within the MTU) and the 16-byte tag. On success the
    /// message is `buf[..len]`.
    ///
    /// `Err(NoSession)` means the caller should stage the packet: a handshake was requested
    /// with [`Event::HandshakeWanted`](super::Event::HandshakeWanted).
    pub fn encapsulate(
        &self,
        now: Timestamp,
        buf: &mut [u8],
        plain_len: usize,
        out: &mut Output,
    ) -> Result<Encapsulated, DropReason> {
        let dst = TransportData::new_unchecked(&*buf).payload().get(..plain_len).and_then(inner_dst);
        let Some(dst) = dst else {
            return Err(out.stats.drop(DropReason::InvalidInner));
        };
        let Some(id) = self.allowed.lookup(dst) else {
            return Err(out.stats.drop(DropReason::NoRoute));
        };
        self.encapsulate_to(now, id, buf, plain_len, out)
    }

    /// Like [`Device::encapsulate`] for a known peer (keepalives, staged packets): a burst of
    /// one ([`Device::encapsulate_burst`] holds the rules).
    pub fn encapsulate_to(
        &self,
        now: Timestamp,
        id: PeerId,
        buf: &mut [u8],
        plain_len: usize,
        out: &mut Output,
    ) -> Result<Encapsulated, DropReason> {
        let mut items = [TxItem { peer: id, buf, plain_len }];
        let mut result = Err(DropReason::NoSession);
        self.tx_chunk(now, &mut items, out, &mut |_, r| result = r);
        result
    }

    /// Open a transport data message in place. On success the inner packet is at
    /// `msg[result.range]`, authenticated and allowed for the peer; the peer's endpoint follows
    /// `src` (roaming) only after authentication. A burst of one
    /// ([`Device::decapsulate_burst`] holds the rules).
    pub fn decapsulate(
        &self,
        now: Timestamp,
        src: SocketAddr,
        msg: &mut [u8],
        out: &mut Output,
    ) -> Result<Decapsulated, DropReason> {
        let mut items = [RxItem { src, msg }];
        let mut result = Err(DropReason::DecryptFailed);
        self.rx_chunk(now, &mut items, out, &mut |_, r| result = r);
        result
    }
}
