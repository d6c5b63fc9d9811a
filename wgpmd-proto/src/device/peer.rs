//! One peer's state, shared by every core that handles its packets.
//!
//! | field | written by | how |
//! |---|---|---|
//! | `keypairs` | handshake stage (new keypairs), any core (key confirmation), control core (expiry, zeroing) | three `ArcSwapOption` slots, lock-free reads, transitions under one per-peer mutex |
//! | `handshake`, `cookie` | handshake stage, control core, configuration | per-peer `Mutex`, never taken by data packets |
//! | `timers` | every core (events), control core (poll) | atomics |
//! | `endpoint` | configuration, any core from authenticated packets | `ArcSwapOption`, lock-free reads |
//! | byte counters | any core | relaxed atomics |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use base64::Engine as _;

use crate::cookie::CookieState;
use crate::crypto::Secret;
use crate::messages::KEY_LEN;
use crate::noise::{Handshake, Identity};
use crate::session::Keypairs;
use crate::time::Timestamp;
use crate::timers::PeerTimers;

/// A peer's handle inside its device (a slot number, reused after removal).
pub type PeerId = u32;

/// One peer.
pub struct Peer {
    id: PeerId,
    public_key: [u8; KEY_LEN],
    name: String,
    short: String,
    pub(crate) handshake: Mutex<Handshake>,
    pub(crate) cookie: Mutex<CookieState>,
    pub(crate) keypairs: Keypairs,
    pub(crate) timers: PeerTimers,
    endpoint: ArcSwapOption<SocketAddr>,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    /// A `HandshakeWanted` event is outstanding (so the data path emits it once).
    pub(crate) handshake_wanted: AtomicBool,
}

impl Peer {
    pub(crate) fn new<R: rand_core::RngCore + rand_core::CryptoRng>(
        rng: &mut R,
        id: PeerId,
        public_key: [u8; KEY_LEN],
        identity: Option<&Identity>,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD.encode(public_key);
        // wireguard-go's short form: "peer(AbCd…wXyZ)".
        let short = format!("{}…{}", &b64[..4], &b64[39..43]);
        let name = format!("peer({short})");
        Peer {
            id,
            public_key,
            name,
            short,
            handshake: Mutex::new(Handshake::new(identity, public_key, Secret::zero())),
            cookie: Mutex::new(CookieState::new(&public_key)),
            keypairs: Keypairs::new(),
            timers: PeerTimers::new(rng),
            endpoint: ArcSwapOption::empty(),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            handshake_wanted: AtomicBool::new(false),
        }
    }

    /// The peer's id in its device.
    pub fn id(&self) -> PeerId {
        self.id
    }
    /// The peer's static public key.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public_key
    }
    /// Short printable name for logs, as wireguard-go writes it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The key's short form alone ("AbCd…wXyZ"), for messages that say "peer X" themselves.
    pub fn short_key(&self) -> &str {
        &self.short
    }
    /// The pre-shared key (all zeros = none).
    pub fn preshared_key(&self) -> Secret {
        self.handshake.lock().unwrap_or_else(|e| e.into_inner()).psk().clone()
    }
    /// Where packets to the peer go (configured, or learned from its authenticated packets).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }
    pub(crate) fn set_endpoint(&self, ep: SocketAddr) {
        if self.endpoint() != Some(ep) {
            self.endpoint.store(Some(Arc::new(ep)));
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
        self.keypairs.current().map(|k| k.local_index)
    }
    /// Handshake retransmissions so far in the current attempt.
    pub fn handshake_attempts(&self) -> u32 {
        self.timers.handshake_attempts()
    }
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).field("name", &self.name).finish()
    }
}
