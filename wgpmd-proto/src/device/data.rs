//! Transport data: seal and open in place, cryptokey routing, and the timer events that data
//! traffic drives (kernel `send.c` / `receive.c` data paths).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{Device, DropReason, Event, IndexEntry, Output, PeerId};
use crate::session::{OpenError, SealError};
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
fn inner_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
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
    /// with [`Event::HandshakeWanted`].
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

    /// Like [`Device::encapsulate`] for a known peer (keepalives, staged packets).
    pub fn encapsulate_to(
        &self,
        now: Timestamp,
        id: PeerId,
        buf: &mut [u8],
        plain_len: usize,
        out: &mut Output,
    ) -> Result<Encapsulated, DropReason> {
        let Some(peer) = self.peer(id) else {
            return Err(out.stats.drop(DropReason::NoRoute));
        };
        let Some(to) = peer.endpoint() else {
            tracing::debug!("No valid endpoint has been configured or discovered for {}", peer.name());
            return Err(out.stats.drop(DropReason::NoEndpoint));
        };
        let want_handshake = |out: &mut Output| {
            if !peer.handshake_wanted.swap(true, Ordering::Relaxed) {
                out.events.push(Event::HandshakeWanted(id));
            }
        };
        // A keypair made with a previous private key does not seal (see set_private_key).
        let Some(kp) = peer.keypairs.current().filter(|kp| kp.generation() == self.generation()) else {
            want_handshake(out);
            return Err(out.stats.drop(DropReason::NoSession));
        };
        let len = match kp.seal_cached(&mut out.keys, now, buf, plain_len, self.mtu) {
            Ok(len) => len,
            Err(SealError::BufferTooSmall) => return Err(out.stats.drop(DropReason::BufferTooSmall)),
            Err(_) => {
                want_handshake(out);
                return Err(out.stats.drop(DropReason::NoSession));
            }
        };
        out.stats.aead_sealed += 1;
        peer.add_tx(len);
        self.note_authenticated_sent(peer, now, out);
        if plain_len > 0 {
            out.wake(id, peer.timers.data_sent(now));
        }
        // keep_key_fresh (send side): counter or age says rekey.
        if kp.needs_rekey_on_send(now) && peer.timers.may_send_initiation(now) {
            want_handshake(out);
        }
        Ok(Encapsulated { peer: id, to, len })
    }

    /// Open a transport data message in place. On success the inner packet is at
    /// `msg[result.range]`, authenticated and allowed for the peer; the peer's endpoint follows
    /// `src` (roaming) only after authentication.
    pub fn decapsulate(
        &self,
        now: Timestamp,
        src: SocketAddr,
        msg: &mut [u8],
        out: &mut Output,
    ) -> Result<Decapsulated, DropReason> {
        // Type and length, checked together before any other byte is read.
        let Ok(data) = TransportData::new_checked(&*msg) else {
            return Err(out.stats.drop(DropReason::Malformed));
        };
        let Some(IndexEntry::Keypair(id, kp)) = self.index.get(data.receiver_index()) else {
            return Err(out.stats.drop(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peer(id) else {
            return Err(out.stats.drop(DropReason::UnknownIndex));
        };
        let range = match kp.open_cached(&mut out.keys, now, msg) {
            Ok(r) => r,
            Err(OpenError::Auth) | Err(OpenError::TooShort) => return Err(out.stats.drop(DropReason::DecryptFailed)),
            Err(OpenError::Replay) => return Err(out.stats.drop(DropReason::Replay)),
            Err(_) => return Err(out.stats.drop(DropReason::KeypairExpired)),
        };
        out.stats.aead_opened += 1;
        peer.set_endpoint(src);
        if let Some(dropped) = peer.keypairs.received_with(&kp) {
            // Key confirmation: the responder's next keypair becomes current.
            for idx in dropped.iter() {
                self.index.remove(idx);
            }
            peer.timers.handshake_complete(now);
            out.events.push(Event::SessionConfirmed(id));
        }
        // keep_key_fresh (receive side): the initiator re-handshakes once near REJECT_AFTER_TIME
        // (not on a keypair of an old private key, which the kernel marks as not sending).
        if kp.needs_rekey_on_recv(now)
            && kp.generation() == self.generation()
            && peer.timers.claim_lastminute_handshake()
            && !peer.handshake_wanted.swap(true, Ordering::Relaxed)
        {
            out.events.push(Event::HandshakeWanted(id));
        }
        peer.timers.any_authenticated_packet_received(now);
        out.wake(id, peer.timers.any_authenticated_packet_traversal(now));
        peer.add_rx(msg.len());
        if range.is_empty() {
            out.stats.keepalives_received += 1;
            tracing::trace!("Receiving keepalive packet from {}", peer.name());
            return Ok(Decapsulated { peer: id, range });
        }
        out.wake(id, peer.timers.data_received(now));
        let Some((src_ip, _, len)) = msg.get(range.clone()).and_then(inner_addrs) else {
            tracing::debug!("Packet is neither ipv4 nor ipv6 from {}", peer.name());
            return Err(out.stats.drop(DropReason::InvalidInner));
        };
        if len > range.len() {
            return Err(out.stats.drop(DropReason::InvalidInner));
        }
        if self.allowed.lookup(src_ip) != Some(id) {
            tracing::debug!("Packet has disallowed src IP ({}) from {}", src_ip, peer.name());
            return Err(out.stats.drop(DropReason::DisallowedSource));
        }
        Ok(Decapsulated { peer: id, range: range.start..range.start + len })
    }
}
