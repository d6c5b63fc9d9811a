//! The device facade: one WireGuard interface's peers, keys and tables, driven without I/O.
//!
//! A caller (the daemon's workers, a test, a fuzzer) hands the [`Device`] what arrived and
//! what wants to leave, with the current time, and gets back what to send where, or a counted
//! drop with its [`DropReason`]. Work is split so that a data-plane core never does
//! Diffie-Hellman work:
//!
//! | call | who calls it | crypto |
//! |---|---|---|
//! | [`Device::decapsulate`] | any worker, per transport-data message | ChaCha20-Poly1305 in place |
//! | [`Device::encapsulate`] / [`Device::encapsulate_to`] | any worker, per inner packet | ChaCha20-Poly1305 in place |
//! | [`Device::receive_handshake`] | the handshake stage (budgeted per poll, or a core of its own) | X25519, BLAKE2s |
//! | [`Device::screen_handshake`], then [`Device::receive_screened`] | the same in two steps: where the message arrives, then from a bounded queue | BLAKE2s, then X25519 |
//! | [`Device::screen_handshakes`] | the first step for several messages at once (their MACs and cookie replies computed together) | multi-buffer BLAKE2s, multi-lane ChaCha20-Poly1305 |
//! | [`Device::receive_screened_batch`] | the second step for a queue's batch (the responder's DHs of its initiations computed together) | X25519 in AVX-512 IFMA lanes (`wgpmd-x25519`), BLAKE2s |
//! | [`Device::initiate`] | the control core, on [`Event::HandshakeWanted`] | X25519 |
//! | [`Device::poll_timers`] | the control core, when a peer's deadline is due | as needed |
//!
//! Data-path calls take `&self` and may run on several cores at once for the same peer; see the
//! repository's docs/ARCHITECTURE.md for why state is shared rather than handed to an owning
//! core.
//! Configuration calls take `&mut self`.
//!
//! Everything a call produces goes into the caller-owned [`Output`] (reused across bursts, so
//! the data path does not allocate once its vectors have grown): control messages to send,
//! events for the caller (a session is ready: flush staged packets; a timer was armed: put the
//! peer on the wheel; a handshake is wanted), and per-worker counters.

mod burst;
mod data;
mod endpoint;
mod handshake;
mod indexcache;
mod journal;
mod keymap;
mod keyslots;
mod peer;
mod published;
mod sendcache;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rand_core::{CryptoRng, RngCore};

use crate::allowedips::{AllowedIps, AllowedIpsError};
use crate::cookie::CookieChecker;
use crate::crypto::{PrivateKey, Secret};
use crate::index::IndexTable;
use crate::messages::{DEFAULT_TUNNEL_MTU, INITIATION_LEN, KEY_LEN, MAX_PEERS_PER_DEVICE};
use crate::noise::Identity;
use crate::ratelimit::{LoadDetector, RateLimiter};
use crate::session::Keypair;
use crate::time::Timestamp;

pub use burst::{recycle, RxItem, TxItem, CHUNK};
pub use data::{inner_dst, Decapsulated, Encapsulated};
pub use handshake::{HandshakeOutcome, Screened};
pub use indexcache::SLOTS as INDEX_CACHE_SLOTS;
pub use journal::Changes;
use keymap::KeyMap;
pub use peer::{Peer, PeerId, PeerName};
pub use published::{Published, WriteGuard};

use journal::{Journal, TableOp};

/// What a receiver index refers to.
#[derive(Clone)]
pub(crate) enum IndexEntry {
    /// A handshake in flight of this peer.
    Handshake(PeerId),
    /// A keypair of this peer.
    Keypair(PeerId, Arc<Keypair>),
}

/// Why a packet was dropped. Every drop has one; [`Stats::drops`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed WireGuard message (type, reserved bytes or length).
    #[error("malformed WireGuard message")]
    Malformed,
    /// Handshake message whose MAC1 did not verify (no DH work was done).
    #[error("invalid MAC1")]
    InvalidMac1,
    /// Under load: MAC2 valid but the source exceeded its handshake rate.
    #[error("handshake rate limit exceeded")]
    RateLimited,
    /// A handshake message that failed Noise processing.
    #[error("handshake failed")]
    HandshakeFailed,
    /// An initiation from a public key that is not one of our peers.
    #[error("initiation from an unknown peer")]
    UnknownPeer,
    /// Replayed or flooding initiation.
    #[error("initiation replayed or too frequent")]
    InitiationReplay,
    /// A receiver index we do not know (or of the wrong kind).
    #[error("unknown receiver index")]
    UnknownIndex,
    /// A cookie reply that did not decrypt or was not expected.
    #[error("invalid cookie reply")]
    InvalidCookie,
    /// Transport data that failed authentication.
    #[error("data packet failed authentication")]
    DecryptFailed,
    /// Transport data with a counter seen before or too old.
    #[error("replayed data packet")]
    Replay,
    /// The keypair is past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.
    #[error("keypair expired")]
    KeypairExpired,
    /// Decrypted packet is not a valid IPv4/IPv6 packet.
    #[error("invalid inner packet")]
    InvalidInner,
    /// Decrypted packet's source is not in the peer's allowed IPs.
    #[error("inner source not allowed for this peer")]
    DisallowedSource,
    /// No peer's allowed IPs cover the inner destination.
    #[error("no route to inner destination")]
    NoRoute,
    /// The peer has no endpoint to send to.
    #[error("peer has no endpoint")]
    NoEndpoint,
    /// No usable session yet: the caller stages the packet (a handshake was requested).
    #[error("no session with peer (handshake requested)")]
    NoSession,
    /// The output buffer lacks head- or tailroom.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The device has no private key.
    #[error("device has no private key")]
    NoPrivateKey,
    /// Our own initiation rate limit (one per REKEY_TIMEOUT per peer).
    #[error("initiation rate-limited")]
    InitiationRateLimited,
}

impl DropReason {
    /// Number of reasons (size of [`Stats::drops`]): one more than the last reason's
    /// discriminant, so a new reason goes last, here and in [`Self::ALL`].
    pub const COUNT: usize = DropReason::InitiationRateLimited as usize + 1;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::InvalidMac1,
        DropReason::RateLimited,
        DropReason::HandshakeFailed,
        DropReason::UnknownPeer,
        DropReason::InitiationReplay,
        DropReason::UnknownIndex,
        DropReason::InvalidCookie,
        DropReason::DecryptFailed,
        DropReason::Replay,
        DropReason::KeypairExpired,
        DropReason::InvalidInner,
        DropReason::DisallowedSource,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::NoSession,
        DropReason::BufferTooSmall,
        DropReason::NoPrivateKey,
        DropReason::InitiationRateLimited,
    ];
}

// `ALL` is in counter order, so `r as usize` indexes `Stats::drops`.
const _: () = {
    let mut i = 0;
    while i < DropReason::COUNT {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Per-worker counters, summed by whoever reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Drops by [`DropReason`] (index = `reason as usize`).
    pub drops: [u64; DropReason::COUNT],
    /// Handshake messages whose MAC1 verified.
    pub mac1_valid: u64,
    /// X25519 operations performed (handshakes, not key generation).
    pub dh_operations: u64,
    /// Transport data messages that passed authentication.
    pub aead_opened: u64,
    /// Transport data messages sealed.
    pub aead_sealed: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Handshake initiations sent.
    pub initiations_sent: u64,
    /// Handshake responses sent.
    pub responses_sent: u64,
    /// Sessions established (either role).
    pub sessions: u64,
    /// Keepalives received.
    pub keepalives_received: u64,
    /// Data-path receiver-index lookups answered by the worker's own cache (no table lock).
    pub index_cache_hits: u64,
    /// Data-path receiver-index lookups that went to the shared index table.
    pub index_cache_misses: u64,
}

impl Stats {
    /// Count a drop.
    pub fn drop(&mut self, r: DropReason) -> DropReason {
        self.drops[r as usize] += 1;
        r
    }
    /// Drops counted for `r`.
    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
}

/// A control message (handshake, cookie reply or keepalive) to send.
#[derive(Clone)]
pub struct Transmit {
    /// The peer it belongs to (`None` for cookie replies, sent to an unauthenticated source).
    pub peer: Option<PeerId>,
    /// Where to send it.
    pub to: SocketAddr,
    len: usize,
    bytes: [u8; INITIATION_LEN],
}

impl Transmit {
    pub(crate) fn new(peer: Option<PeerId>, to: SocketAddr, msg: &[u8]) -> Self {
        let mut bytes = [0u8; INITIATION_LEN];
        let len = msg.len().min(INITIATION_LEN);
        bytes[..len].copy_from_slice(&msg[..len]);
        Transmit { peer, to, len, bytes }
    }
    /// The UDP payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for Transmit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Transmit").field("peer", &self.peer).field("to", &self.to).field("len", &self.len).finish()
    }
}

/// Something the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Our handshake completed (we initiated): send the peer's staged packets, or if there are
    /// none, call [`Device::send_keepalive`] to confirm the session at once (the kernel's
    /// `wg_packet_send_keepalive` after a response is consumed).
    SessionReady(PeerId),
    /// The peer confirmed the session it initiated (its first data arrived on our new
    /// keypair): send the peer's staged packets, if any (kernel: staged only, no keepalive).
    SessionConfirmed(PeerId),
    /// The peer needs a handshake: call [`Device::initiate`] from the control core.
    HandshakeWanted(PeerId),
    /// A timer of the peer was armed at `at`: make sure the peer is on the wheel no later.
    Wake {
        /// The peer.
        peer: PeerId,
        /// Its new earliest deadline.
        at: Timestamp,
    },
    /// Handshake retries gave up: drop the peer's staged packets.
    GiveUp(PeerId),
}

/// Everything calls produce, owned by the caller and reused across bursts.
///
/// One per worker, written per packet (its counters, its index cache's entries): aligned to a
/// cache line (and so a whole number of lines long), so that two workers' outputs never share
/// a line wherever their owners keep them, side by side in one allocation included.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Output {
    /// Control messages to send (handshakes, cookie replies, keepalives).
    pub transmits: Vec<Transmit>,
    /// Events for the caller.
    pub events: Vec<Event>,
    /// Counters.
    pub stats: Stats,
    /// The worker's cache of receiver index -> keypair (`indexcache`).
    pub(crate) cache: indexcache::IndexCache,
    /// The worker's cache of peer -> current keypair (`sendcache`).
    pub(crate) send_cache: sendcache::SendCache,
    /// Room for one multi-lane AEAD call's lanes, reused (no allocation per burst).
    pub(crate) lanes: Vec<wgpmd_aead::Lane<'static>>,
}

impl Output {
    /// An output with room for a burst of `n` items without growing.
    pub fn with_capacity(n: usize) -> Self {
        Output {
            transmits: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            stats: Stats::default(),
            cache: indexcache::IndexCache::new(),
            send_cache: sendcache::SendCache::new(),
            lanes: Vec::with_capacity(wgpmd_aead::MAX_LANES),
        }
    }
    /// Forget transmits and events (keeps counters).
    pub fn clear(&mut self) {
        self.transmits.clear();
        self.events.clear();
    }
    /// Forget all the data path's cached keypairs (receiver-index lookups and peers' current
    /// keypairs): each entry holds a reference to a keypair, which keeps its keys alive after
    /// the device dropped it until the entry is replaced.
    pub fn forget_keys(&mut self) {
        self.cache.slots.clear();
        self.send_cache.slots.clear();
    }

    /// Forget the cached receiver-index lookups and current keypairs whose keypair the device
    /// has dropped (its index left the table: the cache's reference may be the last one, keeping
    /// its keys alive), and keep the others, whose keypairs the device still holds: the next
    /// burst hits on them rather than going to the shared table or the peer's slots. Returns
    /// how many were forgotten. The daemon calls this when a worker is idle and at least every
    /// minute.
    pub fn forget_dropped_keys(&mut self) -> usize {
        self.cache.slots.release_retired() + self.send_cache.slots.release_retired()
    }

    /// Entries of the receiver-index cache holding a keypair (at most
    /// [`INDEX_CACHE_SLOTS`]).
    pub fn index_cache_used(&self) -> usize {
        self.cache.slots.used()
    }
    pub(crate) fn wake(&mut self, peer: PeerId, at: Option<Timestamp>) {
        if let Some(at) = at {
            self.events.push(Event::Wake { peer, at });
        }
    }
}

/// Errors of configuration calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No peer with that id.
    #[error("no such peer")]
    NoSuchPeer,
    /// The device's peer limit is reached.
    #[error("too many peers (limit {0})")]
    TooManyPeers(usize),
    /// The prefix length is longer than the address.
    #[error("invalid allowed-IP prefix length")]
    BadPrefix,
    /// A peer cannot have the device's own public key.
    #[error("peer public key equals the device's own")]
    OwnKey,
}

/// A peer-table slot: the peer, and one IPv4 host route (/32) of its allowed IPs, if it has
/// one: [`PeerSlot::HOST_NONE`] or `1 << 32 | address`. A /32 is the longest prefix there is
/// and each prefix belongs to one peer, so an inner source equal to it routes to this peer
/// without a walk of the trie; the receive path reads the slot anyway (the peer's pointer), so
/// the check costs no cache line. Kept by [`Device::apply`] with the allowed IPs themselves (both
/// copies of a published device replay the same changes).
#[derive(Clone, Default)]
struct PeerSlot {
    peer: Option<Arc<Peer>>,
    host_v4: u64,
}

impl PeerSlot {
    /// No host route.
    const HOST_NONE: u64 = 0;
    fn host(a: Ipv4Addr) -> u64 {
        1 << 32 | u64::from(u32::from(a))
    }
}

/// One WireGuard interface.
///
/// Its configuration tables (identity, peer slots, public-key map, allowed IPs, MTU, limit) are
/// plain values changed through `&mut self`; what the data path changes through `&self` (the
/// receiver-index table, the cookie secret, the rate limiter, the load detector, and every
/// peer's own state) sits behind `Arc`s, so that [`Published`] can keep two copies of the
/// tables sharing one copy of everything else (see its docs).
pub struct Device {
    identity: Option<Identity>,
    cookie_checker: CookieChecker,
    ratelimiter: Arc<RateLimiter>,
    load: Arc<LoadDetector>,
    peers: Vec<PeerSlot>,
    free_ids: Vec<PeerId>,
    /// Ids of peers removed since the last [`Published::write`], reusable from the next one
    /// (only under [`Published`]: see `defer_free`).
    freed: Vec<PeerId>,
    /// Under [`Published`], an id freed by a commit is not given to a new peer by the same
    /// commit, so the daemon can forget the removed peer's notifications after publishing
    /// without forgetting a new peer's.
    defer_free: bool,
    by_key: KeyMap,
    allowed: AllowedIps<PeerId>,
    index: Arc<IndexTable<IndexEntry>>,
    wall_at_epoch_ns: u64,
    mtu: usize,
    max_peers: usize,
    /// The table changes since [`Published`] last published this copy (off for a plain device).
    journal: Journal,
}

impl Device {
    /// A device with no key and no peers. `wall_at_epoch_ns` is the Unix time (ns) at
    /// [`Timestamp::ZERO`], used only to write TAI64N timestamps into initiations (they must
    /// increase across restarts, so they derive from wall time).
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R, wall_at_epoch_ns: u64) -> Self {
        Device {
            identity: None,
            cookie_checker: CookieChecker::new(Timestamp::ZERO, rng, None),
            ratelimiter: Arc::new(RateLimiter::new(crate::messages::RATELIMIT_MAX_ENTRIES, rng)),
            load: Arc::new(LoadDetector::new()),
            peers: Vec::new(),
            free_ids: Vec::new(),
            freed: Vec::new(),
            defer_free: false,
            by_key: KeyMap::new(rng),
            allowed: AllowedIps::new(),
            index: Arc::new(IndexTable::new()),
            wall_at_epoch_ns,
            mtu: DEFAULT_TUNNEL_MTU,
            max_peers: MAX_PEERS_PER_DEVICE,
            journal: Journal::off(),
        }
    }

    /// A second copy of the configuration tables, sharing the peers and everything the data
    /// path changes (index table, cookie secret, rate limiter, load detector; each copy keeps
    /// its own MAC1 and cookie keys, changed with the identity). Its journal is
    /// on. For [`Published`].
    fn fork(&self) -> Device {
        Device {
            identity: self.identity.clone(),
            cookie_checker: self.cookie_checker.clone(),
            ratelimiter: self.ratelimiter.clone(),
            load: self.load.clone(),
            peers: self.peers.clone(),
            free_ids: self.free_ids.clone(),
            freed: self.freed.clone(),
            defer_free: self.defer_free,
            by_key: self.by_key.clone(),
            allowed: self.allowed.clone(),
            index: self.index.clone(),
            wall_at_epoch_ns: self.wall_at_epoch_ns,
            mtu: self.mtu,
            max_peers: self.max_peers,
            journal: Journal::on(),
        }
    }

    /// Apply one table change, and journal it (the tables change only here and in
    /// [`Device::add_peer`], which does the same for a new peer).
    fn change(&mut self, op: TableOp) {
        self.apply(&op);
        self.journal.record(op);
    }

    /// Apply one table change without journaling it: what [`Device::change`] did to the other
    /// copy, replayed on this one. Deterministic, so both copies end up equal.
    fn apply(&mut self, op: &TableOp) {
        match op {
            TableOp::Identity(identity) => {
                self.identity = identity.clone();
                let public = self.public_key();
                self.cookie_checker.set_public_key(public.as_ref());
            }
            TableOp::Mtu(mtu) => self.mtu = *mtu,
            TableOp::MaxPeers(max) => self.max_peers = *max,
            TableOp::AddPeer(peer) => {
                let h = self.by_key.hash(peer.public_key());
                self.put_peer(peer.clone(), h);
            }
            TableOp::RemovePeer(id) => {
                if let Some(peer) = self.peers.get_mut(*id as usize).and_then(|s| {
                    s.host_v4 = PeerSlot::HOST_NONE;
                    s.peer.take()
                }) {
                    self.by_key.remove(peer.public_key());
                    self.allowed.remove_peer(*id);
                    if self.defer_free {
                        self.freed.push(*id);
                    } else {
                        self.free_ids.push(*id);
                    }
                }
            }
            TableOp::ReleaseFreed => self.free_ids.append(&mut self.freed),
            TableOp::AllowedInsert(addr, cidr, id) => {
                // Validated by the call that journaled it; cannot fail here.
                let _ = self.insert_allowed(*addr, *cidr, *id);
            }
            TableOp::AllowedClear(id) => {
                self.allowed.remove_peer(*id);
                if let Some(s) = self.peers.get_mut(*id as usize) {
                    s.host_v4 = PeerSlot::HOST_NONE;
                }
            }
        }
    }

    /// An allowed-IP prefix into the trie (moved from any other peer), with the host routes
    /// of the peer-table slots ([`PeerSlot`]): a /32 that moves from another peer takes that
    /// peer's host route with it; a peer without one gets its first /32.
    fn insert_allowed(&mut self, addr: IpAddr, cidr: u8, id: PeerId) -> Result<(), AllowedIpsError> {
        let host = match addr {
            IpAddr::V4(a) if cidr == 32 => Some(a),
            _ => None,
        };
        let prev = host.and_then(|a| self.allowed.lookup_v4(a)).filter(|&p| p != id);
        self.allowed.insert(addr, cidr, id)?;
        if let Some(a) = host {
            if let Some(s) = prev.and_then(|p| self.peers.get_mut(p as usize)) {
                if s.host_v4 == PeerSlot::host(a) {
                    s.host_v4 = PeerSlot::HOST_NONE;
                }
            }
            if let Some(s) = self.peers.get_mut(id as usize) {
                if s.host_v4 == PeerSlot::HOST_NONE {
                    s.host_v4 = PeerSlot::host(a);
                }
            }
        }
        Ok(())
    }

    /// A new peer into its slot (`peer.id()`, taken off the free list) and its key into the map
    /// (`h`: the key's hash). For [`Device::add_peer`] and its replay.
    fn put_peer(&mut self, peer: Arc<Peer>, h: keymap::KeyHash) {
        let id = peer.id();
        if self.free_ids.last() == Some(&id) {
            self.free_ids.pop();
        } else if (id as usize) < self.peers.len() {
            // Not reached: ids are taken from the end of the free list.
            self.free_ids.retain(|&f| f != id);
        }
        if self.peers.len() <= id as usize {
            self.peers.resize(id as usize + 1, PeerSlot::default());
        }
        self.by_key.insert_hashed(h, *peer.public_key(), id);
        if let Some(slot) = self.peers.get_mut(id as usize) {
            *slot = PeerSlot { peer: Some(peer), host_v4: PeerSlot::HOST_NONE };
        }
    }

    /// The most peers [`Device::add_peer`] accepts ([`MAX_PEERS_PER_DEVICE`] unless set).
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }
    /// Change the peer limit. Peers beyond a lowered limit stay; only new ones are refused.
    /// Capped at 2^32 − 1 (peer ids are `u32`).
    pub fn set_max_peers(&mut self, max: usize) {
        self.change(TableOp::MaxPeers(max.min(u32::MAX as usize)));
    }

    /// The tunnel MTU used to bound padding.
    pub fn mtu(&self) -> usize {
        self.mtu
    }
    /// Set the tunnel MTU.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.change(TableOp::Mtu(mtu));
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<[u8; KEY_LEN]> {
        self.identity.as_ref().map(|i| *i.public_key())
    }
    /// Our private key, if set.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.identity.as_ref().map(|i| i.private_key())
    }

    /// Set or remove the private key, in constant time whatever the number of peers: one
    /// X25519 (the new public key) and no per-peer work. A peer whose public key equals the new
    /// public key is removed (as the kernel does). Everything made with the old key stops at
    /// once through the identity's generation number ([`Identity::generation`]):
    /// - each peer's cached static-static DH is recomputed by its next handshake;
    /// - a response to an initiation made with the old key is refused, and the next initiation
    ///   replaces that handshake (or zeroing the key material removes it);
    /// - sessions made with the old key no longer seal (kernel
    ///   `wg_noise_expire_current_peer_keypairs`): the next packet asks for a handshake. They
    ///   still open what the peer sends until they age out, as there.
    pub fn set_private_key(&mut self, key: Option<PrivateKey>) {
        self.change(TableOp::Identity(key.map(Identity::new)));
        let public = self.public_key();
        self.cookie_checker.set_public_key(public.as_ref());
        if let Some(id) = public.and_then(|k| self.by_key.get(&k)) {
            let _ = self.remove_peer(id);
        }
    }

    /// The generation of the current identity (0 with no private key): keypairs of another
    /// generation do not seal.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.identity.as_ref().map_or(0, Identity::generation)
    }

    /// Add a peer (or return the existing one with that key). `rng` seeds its timer jitter.
    /// No Diffie-Hellman and no hashing of the key: the static-static DH and the MAC keys are
    /// computed by the peer's first handshake.
    pub fn add_peer<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        public_key: [u8; KEY_LEN],
    ) -> Result<PeerId, ConfigError> {
        // One hash of the key for the lookup and the insert.
        let h = self.by_key.hash(&public_key);
        if let Some(id) = self.by_key.get_hashed(h, &public_key) {
            return Ok(id);
        }
        if self.public_key() == Some(public_key) {
            return Err(ConfigError::OwnKey);
        }
        if self.by_key.len() >= self.max_peers {
            return Err(ConfigError::TooManyPeers(self.max_peers));
        }
        let id = self.free_ids.last().copied().unwrap_or(self.peers.len() as PeerId);
        let peer = Arc::new(Peer::new(rng, id, public_key));
        // What `change` does, with the hash computed above (and no clone of the peer for a
        // journal that no longer records).
        if self.journal.recording() {
            self.journal.record(TableOp::AddPeer(peer.clone()));
        }
        self.put_peer(peer, h);
        self.journal.added(id);
        Ok(id)
    }

    /// **Benchmarks only** (feature `bench`; nothing on the wire reaches it): give peer `id` a
    /// current session with the transport keys `send` and `recv`, as if we had initiated a
    /// handshake and received its response, without the handshake. `remote_index` is what we put
    /// in the receiver field of what we send. Returns our receiver index for it (a fresh random
    /// one in the index table, as a handshake would take). The keypair is installed exactly as a
    /// completed handshake installs it (index table, the peer's keypair slots, the identity's
    /// generation), so the data path finds and uses it as any other; no timers are armed (the
    /// session's age limits still apply when the peer next sends or receives).
    ///
    /// `wgpmd bench` sets up a million peers with it: a real handshake per peer would measure
    /// the handshake path, not the data path at that scale.
    #[cfg(any(test, feature = "bench"))]
    pub fn bench_install_session<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        id: PeerId,
        send: &Secret,
        recv: &Secret,
        remote_index: u32,
        now: Timestamp,
    ) -> Result<u32, ConfigError> {
        let peer = self.peer(id).ok_or(ConfigError::NoSuchPeer)?.clone();
        let local = self.index.insert_new(rng, IndexEntry::Handshake(id));
        let kp = Arc::new(Keypair::new(send, recv, local, remote_index, true, now).with_generation(self.generation()));
        if !self.index.replace(local, IndexEntry::Keypair(id, kp.clone())) {
            return Err(ConfigError::NoSuchPeer);
        }
        for idx in peer.keypairs.install(kp).iter() {
            self.remove_index(idx);
        }
        peer.handshake_wanted.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(local)
    }

    /// Remove a peer with its allowed IPs, sessions and indices.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<(), ConfigError> {
        let peer = self.peer(id).ok_or(ConfigError::NoSuchPeer)?.clone();
        self.change(TableOp::RemovePeer(id));
        self.journal.removed(id);
        self.forget_sessions(&peer);
        peer.timers.disarm_all();
        Ok(())
    }

    /// Remove every peer.
    pub fn clear_peers(&mut self) {
        let ids: Vec<PeerId> = self.by_key.ids().collect();
        for id in ids {
            let _ = self.remove_peer(id);
        }
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, public_key: &[u8; KEY_LEN]) -> Option<PeerId> {
        self.by_key.get(public_key)
    }

    /// A peer's state (counters, endpoint, ...).
    pub fn peer(&self, id: PeerId) -> Option<&Arc<Peer>> {
        self.peers.get(id as usize).and_then(|s| s.peer.as_ref())
    }

    /// Whether `a` is peer `id`'s IPv4 host route (one of its allowed /32s): then the allowed
    /// IPs route `a` to that peer, without a lookup (see [`PeerSlot`]).
    #[inline]
    pub(crate) fn is_host_route_v4(&self, id: PeerId, a: Ipv4Addr) -> bool {
        self.peers.get(id as usize).is_some_and(|s| s.host_v4 == PeerSlot::host(a))
    }

    /// Cache hint: start loading peer `id`'s slot in the peer table (a burst's first pass).
    #[inline]
    pub(crate) fn prefetch_peer_slot(&self, id: PeerId) {
        if let Some(slot) = self.peers.get(id as usize) {
            wgpmd_aead::prefetch::read(slot);
        }
    }

    /// Every peer, in id order.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.iter().filter_map(|s| s.peer.as_ref())
    }

    /// One more than the highest peer id in use (or once in use): ids run below this.
    pub fn peer_slots(&self) -> usize {
        self.peers.len()
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// Set a peer's pre-shared key (all zeros = none).
    pub fn set_preshared_key(&mut self, id: PeerId, psk: Secret) -> Result<(), ConfigError> {
        let p = self.peer(id).ok_or(ConfigError::NoSuchPeer)?;
        p.handshake().noise.set_psk(psk);
        Ok(())
    }

    /// Set a peer's endpoint.
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) -> Result<(), ConfigError> {
        self.peer(id).ok_or(ConfigError::NoSuchPeer)?.set_endpoint(endpoint);
        Ok(())
    }

    /// Set a peer's persistent keepalive interval in seconds (0 = off). Returns whether a
    /// keepalive should be sent now (it was just turned on and the peer has a session), as wg
    /// does; the caller then calls [`Device::send_keepalive`].
    pub fn set_persistent_keepalive(
        &mut self,
        id: PeerId,
        secs: u16,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<bool, ConfigError> {
        let p = self.peer(id).ok_or(ConfigError::NoSuchPeer)?;
        let was = p.timers.persistent_keepalive_interval();
        let at = p.timers.set_persistent_keepalive(secs, now);
        out.wake(id, at);
        Ok(was == 0 && secs != 0)
    }

    /// Add an allowed-IP prefix to a peer (moving it from any other peer).
    pub fn add_allowed_ip(&mut self, id: PeerId, addr: IpAddr, cidr: u8) -> Result<(), ConfigError> {
        if self.peer(id).is_none() {
            return Err(ConfigError::NoSuchPeer);
        }
        self.insert_allowed(addr, cidr, id).map_err(|_| ConfigError::BadPrefix)?;
        self.journal.record(TableOp::AllowedInsert(addr, cidr, id));
        Ok(())
    }

    /// Remove every allowed-IP prefix of a peer.
    pub fn clear_allowed_ips(&mut self, id: PeerId) {
        self.change(TableOp::AllowedClear(id));
    }

    /// A peer's allowed-IP prefixes.
    pub fn allowed_ips(&self, id: PeerId) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.allowed.iter_peer(id)
    }

    /// The peer whose allowed IPs most specifically cover `addr`.
    pub fn route(&self, addr: IpAddr) -> Option<PeerId> {
        self.allowed.lookup(addr)
    }

    /// [`Device::route`] of every address of `addrs` (`None`: no address, no route) into the
    /// same position of `out` (up to the shorter of the two). The IPv4 addresses are looked up
    /// together, so that their cache misses in a large table overlap (a burst's routes).
    pub fn route_batch(&self, addrs: &[Option<IpAddr>], out: &mut [Option<PeerId>]) {
        for (addrs, out) in addrs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            let mut v4 = [std::net::Ipv4Addr::UNSPECIFIED; CHUNK];
            let mut at = [0u8; CHUNK];
            let mut n = 0;
            for (i, (a, o)) in addrs.iter().zip(out.iter_mut()).enumerate() {
                *o = match a {
                    Some(IpAddr::V4(a)) => {
                        (v4[n], at[n]) = (*a, i as u8);
                        n += 1;
                        None
                    }
                    Some(a @ IpAddr::V6(_)) => self.allowed.lookup(*a),
                    None => None,
                };
            }
            let mut routes = [None; CHUNK];
            self.allowed.lookup_v4_batch(&v4[..n], &mut routes[..n]);
            for (r, &i) in routes.iter().zip(&at).take(n) {
                if let Some(o) = out.get_mut(usize::from(i)) {
                    *o = *r;
                }
            }
        }
    }

    /// Feed the under-load detector with the depth of the caller's handshake queue; returns
    /// whether the device is under load (then initiations need a valid MAC2).
    pub fn update_load(&self, now: Timestamp, queued_handshakes: usize) -> bool {
        self.load.update(now, queued_handshakes)
    }

    /// Drop a peer's keypairs and handshake, removing their indices.
    fn forget_sessions(&self, peer: &Peer) {
        for idx in peer.keypairs.clear().iter() {
            self.remove_index(idx);
        }
        let mut hs = peer.handshake();
        let old = hs.noise.local_index();
        hs.noise.clear();
        if old != 0 {
            self.remove_index(old);
        }
    }

    /// Remove an index from the table; a keypair's is retired, so workers' cached lookups of
    /// it stop being used (`indexcache`).
    fn remove_index(&self, idx: u32) {
        // A keypair's index comes from `Keypairs`' `Dropped`, which retired it already; retired
        // again here (first, as before) so that no caller depends on where it came from.
        if let Some(IndexEntry::Keypair(_, kp)) = self.index.get(idx) {
            kp.retire();
        }
        self.index.remove(idx);
    }

    fn wall_ns(&self, now: Timestamp) -> u64 {
        self.wall_at_epoch_ns.saturating_add(now.as_nanos())
    }
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod burst_tests;
#[cfg(test)]
mod screen_tests;
#[cfg(test)]
mod tests;
