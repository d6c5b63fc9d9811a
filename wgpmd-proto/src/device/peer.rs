//! One peer's state, shared by every core that handles its packets.
//!
//! | field | written by | how |
//! |---|---|---|
//! | `keypairs` | handshake stage (new keypairs), any core (key confirmation), control core (expiry, zeroing) | three `ArcSwapOption` slots, lock-free reads, transitions under one per-peer mutex |
//! | `handshake` (Noise state and cookie state) | handshake stage, control core, configuration | per-peer `Mutex`, never taken by data packets |
//! | `timers` | every core (events), control core (poll) | atomics |
//! | `endpoint` | configuration, any core from authenticated packets | sequence lock over atomics: lock-free reads, no allocation |
//! | byte counters | any core | relaxed atomics |
//!
//! # Memory
//! A concentrator holds millions of peers, most of them idle, so a peer keeps inline only what
//! outlives a handshake (about 400 bytes with its `Arc`; `docs/PERFORMANCE.md` has the table):
//! - the state of a handshake in flight is boxed inside [`Handshake`] and exists only from an
//!   initiation to its session;
//! - the cookie state ([`CookieJar`]: the last MAC1 sent, for validating a cookie reply, and
//!   the cookie; 48 bytes, its keys derived from the peer's key when used) is boxed and created
//!   by the first handshake message sent to the peer, and then kept, as the kernel keeps it;
//! - the static-static DH is computed at the first handshake, not when the peer is added;
//! - the peer's name for logs is formatted when a log line asks for it ([`Peer::name`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::cookie::{CookieError, CookieJar};
use crate::crypto::Secret;
use crate::messages::KEY_LEN;
use crate::noise::Handshake;
use crate::session::Keypairs;
use crate::time::Timestamp;
use crate::timers::PeerTimers;

use super::endpoint::EndpointCell;

/// A peer's handle inside its device (a slot number, reused after removal).
pub type PeerId = u32;

/// What the per-peer handshake mutex guards: the Noise state and the cookie state (kernel
/// `struct noise_handshake` and `struct cookie`).
pub(crate) struct HandshakeState {
    pub(crate) noise: Handshake,
    /// Created by the first handshake message we send the peer (the first MAC1).
    cookie: Option<Box<CookieJar>>,
}

impl HandshakeState {
    /// Write MAC1 and MAC2 into a handshake message to the peer (creating the cookie state).
    pub(crate) fn add_macs<M: crate::wire::wireguard::MacMessageMut>(&mut self, now: Timestamp, msg: &mut M) {
        let key = *self.noise.remote_static();
        self.cookie.get_or_insert_with(Box::default).add_macs(&key, now, msg);
    }
    /// Take in the peer's cookie reply. With no cookie state we never sent the peer a MAC1, so
    /// no reply can be valid.
    pub(crate) fn consume_cookie_reply<T: AsRef<[u8]>>(
        &mut self,
        now: Timestamp,
        reply: &crate::wire::wireguard::CookieReply<T>,
    ) -> Result<(), CookieError> {
        let key = *self.noise.remote_static();
        match self.cookie.as_deref_mut() {
            Some(jar) => jar.consume_reply(&key, now, reply),
            None => Err(CookieError::NoMac1Sent),
        }
    }
}

/// One peer.
///
/// Laid out in this order (`repr(C)`) so that what the data path writes for the peer once per
/// burst (endpoint, byte counters, timers, `handshake_wanted`: the "hot" fields) sits in the
/// middle, with at least a cache line of fields it never writes on either side (the handshake
/// state before, written by handshakes only; the id, key and keypair slots after, written by
/// configuration and key rotations only). Peers are separate heap blocks of about 400 bytes
/// that the allocator places side by side without aligning them to cache lines, so a line at
/// the edge of one peer's block can hold the neighbouring block's bytes: those edge lines hold
/// no hot field, and two workers serving two distinct peers never write one line
/// (`HOT_FIELDS` and its test).
#[repr(C)]
pub struct Peer {
    handshake: Mutex<HandshakeState>,
    endpoint: EndpointCell,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    pub(crate) timers: PeerTimers,
    /// A `HandshakeWanted` event is outstanding (so the data path emits it once).
    pub(crate) handshake_wanted: AtomicBool,
    id: PeerId,
    public_key: [u8; KEY_LEN],
    pub(crate) keypairs: Keypairs,
}

/// Where the fields the data path writes once per peer per burst lie in a [`Peer`]: from
/// `endpoint` to `handshake_wanted`, as a byte range of the struct.
pub(crate) const HOT_FIELDS: core::ops::Range<usize> =
    core::mem::offset_of!(Peer, endpoint)..core::mem::offset_of!(Peer, handshake_wanted) + 1;

// At least a line of cold bytes on each side of the hot fields (the `Arc`'s counts, 16 bytes,
// come before the struct and only add to the margin).
const _: () = assert!(HOT_FIELDS.start >= 64);
const _: () = assert!(core::mem::size_of::<Peer>() - HOT_FIELDS.end >= 64);

/// A peer's short printable name, formatted when displayed: `peer(AbCd…wXyZ)` as wireguard-go
/// writes it, or with [`Peer::short_key`] just `AbCd…wXyZ`.
#[derive(Clone, Copy)]
pub struct PeerName<'a> {
    key: &'a [u8; KEY_LEN],
    wrapped: bool,
}

impl core::fmt::Display for PeerName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use base64::Engine as _;
        let mut b64 = [0u8; 44];
        // 32 bytes are always 44 base64 characters, so this cannot fail; were it to, print
        // nothing rather than panic in a log line.
        let n = base64::engine::general_purpose::STANDARD.encode_slice(self.key, &mut b64).unwrap_or(0);
        let s = core::str::from_utf8(&b64[..n]).unwrap_or("");
        let (head, tail) = (s.get(..4).unwrap_or(""), s.get(39..43).unwrap_or(""));
        if self.wrapped {
            write!(f, "peer({head}…{tail})")
        } else {
            write!(f, "{head}…{tail}")
        }
    }
}

impl core::fmt::Debug for PeerName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl Peer {
    /// A peer with no endpoint, session or handshake. No DH and no hashing: everything derived
    /// from the key is computed when first needed.
    pub(crate) fn new<R: rand_core::RngCore + rand_core::CryptoRng>(
        rng: &mut R,
        id: PeerId,
        public_key: [u8; KEY_LEN],
    ) -> Self {
        Peer {
            handshake: Mutex::new(HandshakeState { noise: Handshake::new(public_key, Secret::zero()), cookie: None }),
            endpoint: EndpointCell::new(),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            timers: PeerTimers::new(rng),
            handshake_wanted: AtomicBool::new(false),
            id,
            public_key,
            keypairs: Keypairs::new(),
        }
    }

    /// The handshake and cookie state. A panic while it was held cannot leave it half-written in
    /// a way that matters (each step replaces whole values), so a poisoned lock is used as is.
    pub(crate) fn handshake(&self) -> MutexGuard<'_, HandshakeState> {
        self.handshake.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cache hints for a burst that will handle the peer's packets: the lines its keypair slots,
    /// endpoint, byte counters and timers sit on (written by the data path, so loaded for
    /// writing). Changes nothing.
    #[inline]
    pub(crate) fn prefetch(&self) {
        use wgpmd_aead::prefetch;
        prefetch::read(&self.keypairs);
        prefetch::write(&self.endpoint);
        prefetch::write(&self.rx_bytes);
        prefetch::write(&self.timers);
        // The timers span two lines.
        prefetch::write_ptr(core::ptr::from_ref(&self.timers).cast::<u8>().wrapping_add(64));
    }

    /// Claim the peer's outstanding `HandshakeWanted` event: `true` for the one caller that
    /// sets the flag. A plain load first, so that while the flag is set (a handshake asked for
    /// and not yet done) the callers, once per burst, only read it.
    #[inline]
    pub(crate) fn claim_handshake_wanted(&self) -> bool {
        !self.handshake_wanted.load(Ordering::Relaxed) && !self.handshake_wanted.swap(true, Ordering::Relaxed)
    }

    /// The peer's id in its device.
    pub fn id(&self) -> PeerId {
        self.id
    }
    /// The peer's static public key.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public_key
    }
    /// Short printable name for logs, as wireguard-go writes it ("peer(AbCd…wXyZ)"), formatted
    /// when displayed.
    pub fn name(&self) -> PeerName<'_> {
        PeerName { key: &self.public_key, wrapped: true }
    }
    /// The key's short form alone ("AbCd…wXyZ"), for messages that say "peer X" themselves.
    pub fn short_key(&self) -> PeerName<'_> {
        PeerName { key: &self.public_key, wrapped: false }
    }
    /// The pre-shared key (all zeros = none).
    pub fn preshared_key(&self) -> Secret {
        self.handshake().noise.psk().clone()
    }
    /// Where packets to the peer go (configured, or learned from its authenticated packets).
    #[inline]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load()
    }
    /// Move the endpoint to `ep` (a store only when it changed, so roaming checks on every
    /// packet write nothing).
    #[inline]
    pub(crate) fn set_endpoint(&self, ep: SocketAddr) {
        if self.endpoint() != Some(ep) {
            self.endpoint.store(Some(ep));
        }
    }
    /// Bytes received from the peer (whole WireGuard messages, as the kernel counts).
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }
    /// Bytes sent to the peer.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }
    pub(crate) fn add_rx(&self, n: usize) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_tx(&self, n: usize) {
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// When the last handshake completed (monotonic; the caller converts to wall time).
    pub fn last_handshake(&self) -> Option<Timestamp> {
        self.timers.last_handshake()
    }
    /// Persistent keepalive interval in seconds (0 = off).
    pub fn persistent_keepalive(&self) -> u16 {
        self.timers.persistent_keepalive_interval()
    }
    /// The peer's earliest timer deadline, for the caller's wheel.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.next_deadline()
    }
    /// Receiver index of the current sending keypair, if any (for tests and diagnostics).
    pub fn current_local_index(&self) -> Option<u32> {
        self.keypairs.current().map(|k| k.local_index())
    }
    /// Handshake retransmissions so far in the current attempt.
    pub fn handshake_attempts(&self) -> u32 {
        self.timers.handshake_attempts()
    }
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).field("name", &self.name()).finish()
    }
}
