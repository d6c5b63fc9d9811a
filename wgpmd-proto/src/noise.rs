//! The Noise_IKpsk2 handshake, as WireGuard uses it (kernel `noise.c`).
//!
//! This module knows messages and keys, never peers, sockets or index tables: the device facade
//! looks peers up and hands this code the [`Handshake`] state of one peer.
//!
//! States of a [`Handshake`] (kernel `enum noise_handshake_state`); every state but `Zeroed`
//! lives in a box that exists only while a handshake is in flight:
//!
//! | state | entered by | left by |
//! |---|---|---|
//! | `Zeroed` (no box) | start, [`Handshake::begin_session`], [`Handshake::clear`] | creating or consuming an initiation |
//! | `CreatedInitiation` | [`Handshake::create_initiation`] | consuming the matching response |
//! | `ConsumedInitiation` | [`Handshake::consume_initiation`] | [`Handshake::create_response`] |
//! | `CreatedResponse` | [`Handshake::create_response`] | [`Handshake::begin_session`] (responder) |
//! | `ConsumedResponse` | [`Handshake::consume_response`] | [`Handshake::begin_session`] (initiator) |
//!
//! Message construction (whitepaper §5.4, initiator I, responder R):
//! ```text
//! Ci = HASH(CONSTRUCTION); Hi = HASH(Ci || IDENTIFIER); Hi = HASH(Hi || S_R.pub)
//! initiation: e, es, s, ss, {t}     response: e, ee, se, psk, {}
//! ```
//! The static-static DH (`ss`) is computed by the first handshake step that needs it and cached
//! with the [`Identity::generation`] it was made under; a new identity invalidates it without
//! any per-peer work (kernel `wg_noise_precompute_static_static`, moved from configuration time
//! to first use).
//!
//! Messages are read and built through the `wire::wireguard` views ([`HandshakeInitiation`],
//! [`HandshakeResponse`]), which own the layout. The MAC fields are not touched here; `cookie`
//! fills and checks them.

use core::sync::atomic::{AtomicU64, Ordering};

use rand_core::{CryptoRng, RngCore};
use wgpmd_x25519::Backend;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{aead_open, aead_seal, ct_eq, hash, kdf, PrivateKey, Secret};
use crate::messages::{
    HASH_LEN, INITIATIONS_PER_SECOND, INITIATION_LEN, KEY_LEN, NOISE_CONSTRUCTION, RESPONSE_LEN, TAG_LEN,
    TIMESTAMP_LEN, WG_IDENTIFIER,
};
use crate::time::Timestamp;
use crate::wire::wireguard::{HandshakeInitiation, HandshakeResponse};

/// A handshake initiation in a buffer of its own, as [`Handshake::create_initiation`] makes it.
pub type Initiation = HandshakeInitiation<[u8; INITIATION_LEN]>;
/// A handshake response in a buffer of its own, as [`Handshake::create_response`] makes it.
pub type Response = HandshakeResponse<[u8; RESPONSE_LEN]>;

/// Why a handshake step failed. Each is a counted drop reason in the facade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// The message arrived in a state that does not expect it (e.g. a response with no
    /// initiation outstanding).
    #[error("handshake message does not match the handshake state")]
    WrongState,
    /// A Diffie-Hellman result was all zeros (low-order point), or a peer's static-static DH is.
    #[error("Diffie-Hellman produced the all-zero value")]
    DhFailure,
    /// The initiator's static key did not decrypt: not for us, or corrupted.
    #[error("initiation's encrypted static key did not decrypt")]
    DecryptStatic,
    /// The timestamp did not decrypt: the peer's static-static DH or PSK disagree.
    #[error("initiation's encrypted timestamp did not decrypt")]
    DecryptTimestamp,
    /// The response's empty payload did not decrypt (wrong PSK, or forged).
    #[error("response did not authenticate")]
    DecryptResponse,
    /// The initiation's timestamp is not newer than the last accepted one.
    #[error("initiation replayed (timestamp not newer)")]
    Replay,
    /// Initiations from this peer arrive faster than INITIATIONS_PER_SECOND.
    #[error("initiation flood (more than 50/s from one peer)")]
    Flood,
    /// The device has no private key configured.
    #[error("no private key configured")]
    NoIdentity,
}

/// Source of [`Identity::generation`] numbers: every identity made in this process gets its own.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The device's static identity.
///
/// Each identity carries a generation number, unique in the process. A peer's [`Handshake`]
/// caches the static-static DH together with the generation it was computed under, so a new
/// private key invalidates every cache at once without touching a single peer: the next
/// handshake with each peer recomputes its DH (kernel `wg_noise_precompute_static_static`,
/// moved from configuration time to first use).
///
/// It keeps the private key twice: as aws-lc's key object (single DHs) and as its 32 bytes,
/// wiped on drop, for the multi-lane X25519 of [`begin_consume_initiations`]. Debug prints
/// neither.
#[derive(Clone)]
pub struct Identity {
    private: PrivateKey,
    private_bytes: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    generation: u64,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity")
            .field("private", &self.private)
            .field("public", &self.public)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// From a private key (any 32 bytes; X25519 clamps). One X25519 (the public key).
    pub fn new(private: PrivateKey) -> Self {
        let public = public_of(&private);
        let private_bytes = Zeroizing::new(private.to_bytes());
        Identity { private, private_bytes, public, generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed) }
    }
    /// Our public key.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public
    }
    /// Our private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }
    /// This identity's generation: never 0, and different for every [`Identity::new`] (clones
    /// share it). Sessions and handshakes record the generation they were made under.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(any(test, feature = "fuzzing"))]
thread_local! {
    /// X25519 operations (DH and public-key derivation) done by this module on this thread.
    static X25519_OPS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    /// Initiations whose responder DHs [`begin_consume_initiations`] computed in lanes on this
    /// thread.
    static LANE_INITIATIONS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// X25519 operations this module has done on the calling thread (tests and fuzz bodies only).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn x25519_ops() -> u64 {
    X25519_OPS.with(|c| c.get())
}

/// Initiations [`begin_consume_initiations`] has taken on the calling thread (tests and fuzz
/// bodies only: what tells a fuzz body that a batch ran in lanes).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn lane_initiations() -> u64 {
    LANE_INITIATIONS.with(|c| c.get())
}

#[inline]
fn count_x25519() {
    #[cfg(any(test, feature = "fuzzing"))]
    X25519_OPS.with(|c| c.set(c.get() + 1));
}

/// X25519 with a public key, counted in tests and fuzz builds.
fn dh(private: &PrivateKey, public: &[u8; KEY_LEN]) -> Option<Secret> {
    count_x25519();
    private.dh(public)
}

/// `out[i] = X25519(scalars[i], points[i])` in lanes on `backend`, each counted in tests and fuzz
/// builds. All zeros where the backend cannot run (the callers treat a zero result as a failed
/// DH).
fn dh_lanes(backend: Backend, scalars: &[[u8; KEY_LEN]], points: &[[u8; KEY_LEN]], out: &mut [[u8; KEY_LEN]]) {
    for _ in 0..scalars.len() {
        count_x25519();
    }
    if backend.x25519_many(scalars, points, out).is_err() {
        out.iter_mut().for_each(|o| *o = [0; KEY_LEN]);
    }
}

/// A lane's result as a DH result: `None` when all zeros (a low-order point), as
/// [`PrivateKey::dh`] says.
fn lane_secret(shared: &[u8; KEY_LEN]) -> Option<Secret> {
    (!wgpmd_x25519::is_zero(shared)).then(|| Secret(*shared))
}

/// The public key of `private`, counted in tests and fuzz builds.
fn public_of(private: &PrivateKey) -> [u8; KEY_LEN] {
    count_x25519();
    private.public_key()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    CreatedInitiation,
    ConsumedInitiation,
    CreatedResponse,
    ConsumedResponse,
}

/// The chaining key and hash every handshake starts from, computed once.
struct Initial {
    ck: [u8; HASH_LEN],
    h: [u8; HASH_LEN],
}

fn initial() -> &'static Initial {
    static INIT: std::sync::OnceLock<Initial> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        let ck = hash(&[NOISE_CONSTRUCTION]);
        let h = hash(&[&ck, WG_IDENTIFIER]);
        Initial { ck, h }
    })
}

/// Running handshake hash and chaining key.
#[derive(Clone, Default, Zeroize)]
struct Symmetric {
    ck: [u8; HASH_LEN],
    h: [u8; HASH_LEN],
}

impl Drop for Symmetric {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl Symmetric {
    fn start(responder_static: &[u8; KEY_LEN]) -> Self {
        let i = initial();
        Symmetric { ck: i.ck, h: hash(&[&i.h, responder_static]) }
    }
    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }
    /// `e`: mix a public ephemeral into hash and chaining key.
    fn mix_ephemeral(&mut self, e: &[u8; KEY_LEN]) {
        self.mix_hash(e);
        let [ck] = kdf::<1>(&self.ck, e);
        self.ck = ck.0;
    }
    /// DH into the chaining key, returning a fresh key.
    fn mix_dh_key(&mut self, dh: Option<Secret>) -> Result<Secret, NoiseError> {
        let dh = dh.ok_or(NoiseError::DhFailure)?;
        let [ck, key] = kdf::<2>(&self.ck, &dh.0);
        self.ck = ck.0;
        Ok(key)
    }
    /// DH into the chaining key only.
    fn mix_dh(&mut self, dh: Option<Secret>) -> Result<(), NoiseError> {
        let dh = dh.ok_or(NoiseError::DhFailure)?;
        let [ck] = kdf::<1>(&self.ck, &dh.0);
        self.ck = ck.0;
        Ok(())
    }
    fn mix_psk(&mut self, psk: &Secret) -> Secret {
        let [ck, tau, key] = kdf::<3>(&self.ck, &psk.0);
        self.ck = ck.0;
        self.mix_hash(&tau.0);
        key
    }
    fn encrypt(&mut self, key: &Secret, plain: &[u8], out: &mut [u8]) {
        aead_seal(&key.0, 0, &self.h, plain, out);
        self.mix_hash(out);
    }
    fn decrypt(&mut self, key: &Secret, sealed: &[u8], out: &mut [u8]) -> Result<(), crate::crypto::AeadError> {
        aead_open(&key.0, 0, &self.h, sealed, out)?;
        self.mix_hash(sealed);
        Ok(())
    }
}

/// The first half of consuming an initiation: everything that needs only our identity. It
/// reveals the initiator's static public key, by which the caller finds the peer and its
/// [`Handshake`] to finish with [`Handshake::consume_initiation`].
pub struct InitiationStart {
    sym: Symmetric,
    remote_ephemeral: [u8; KEY_LEN],
    remote_static: [u8; KEY_LEN],
    sender_index: u32,
    sealed_timestamp: [u8; TIMESTAMP_LEN + TAG_LEN],
    generation: u64,
}

impl InitiationStart {
    /// The initiator's static public key.
    pub fn remote_static(&self) -> &[u8; KEY_LEN] {
        &self.remote_static
    }
    /// The initiator's sender index.
    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }
}

/// Decrypt an initiation's static key with our identity: the work done before the peer is known
/// (one DH: `es`). `msg` is an initiation that passed `check_len` and whose MAC1 the caller
/// already checked (a shorter buffer reads as zeros and fails to decrypt).
pub fn begin_consume_initiation<T: AsRef<[u8]>>(
    identity: &Identity,
    msg: &HandshakeInitiation<T>,
) -> Result<InitiationStart, NoiseError> {
    let e = msg.unencrypted_ephemeral();
    finish_begin(identity, msg, e, dh(&identity.private, &e))
}

/// [`begin_consume_initiation`] after its DH: `es` is DH(our static, the message's ephemeral
/// `e`).
fn finish_begin<T: AsRef<[u8]>>(
    identity: &Identity,
    msg: &HandshakeInitiation<T>,
    e: [u8; KEY_LEN],
    es: Option<Secret>,
) -> Result<InitiationStart, NoiseError> {
    let mut sym = Symmetric::start(&identity.public);
    sym.mix_ephemeral(&e);
    let key = sym.mix_dh_key(es)?;
    let mut s = [0u8; KEY_LEN];
    sym.decrypt(&key, msg.encrypted_static(), &mut s).map_err(|_| NoiseError::DecryptStatic)?;
    let sealed_timestamp = msg.encrypted_timestamp().try_into().map_err(|_| NoiseError::DecryptTimestamp)?;
    Ok(InitiationStart {
        sym,
        remote_ephemeral: e,
        remote_static: s,
        sender_index: msg.sender_index(),
        sealed_timestamp,
        generation: identity.generation,
    })
}

/// The responder's Diffie-Hellman work for one initiation, done before its peer is known
/// ([`begin_consume_initiations`]): a fresh ephemeral key, its public key, `ee` = DH(e_r, E_i)
/// and `se` = DH(e_r, S_i). [`Handshake::create_response_with`] builds the response from it
/// without a DH. The ephemeral private key is not kept (the responder needs it for nothing
/// else; [`begin_consume_initiations`] wipes it); the DH results are wiped on drop, and Debug
/// does not print them.
pub struct ResponderDh {
    ephemeral_public: [u8; KEY_LEN],
    /// `None`: all zeros (the initiator's ephemeral has a small order).
    ee: Option<Secret>,
    /// `None`: all zeros (the initiator's static key has a small order).
    se: Option<Secret>,
}

impl core::fmt::Debug for ResponderDh {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResponderDh").field("ephemeral_public", &self.ephemeral_public).finish_non_exhaustive()
    }
}

impl ResponderDh {
    /// The ephemeral public key the response will carry.
    pub fn ephemeral_public(&self) -> &[u8; KEY_LEN] {
        &self.ephemeral_public
    }
}

/// Fewest `se` DHs worth a lane call in the second round of [`begin_consume_initiations`]: one
/// eight-lane kernel call (about 43 µs on the machine of docs/PERFORMANCE.md, whatever its
/// fill) costs less than two aws-lc DHs with the import of the ephemeral key (about 26 µs each:
/// aws-lc computes the public key on import), more than one. So a lone `se` is done with aws-lc.
pub const SE_LANES_MIN: usize = 2;

/// [`begin_consume_initiation`] of several initiations, with the responder's DHs of each (see
/// [`ResponderDh`]) computed together in X25519 lanes on `backend`, in two rounds: `es`, the
/// fresh ephemeral's public key and `ee` of every message, then `se` of every message whose
/// static key decrypted (with aws-lc instead when fewer than [`SE_LANES_MIN`] did). Results in
/// message order; each fails where [`begin_consume_initiation`] would fail it (`es` all zeros:
/// [`NoiseError::DhFailure`]; the static key does not decrypt: [`NoiseError::DecryptStatic`]).
/// A zero `ee` or `se` fails later, in [`Handshake::create_response_with`], where
/// [`Handshake::create_response`] would fail it. The `rng` gives each message's ephemeral key.
pub fn begin_consume_initiations<T: AsRef<[u8]>, R: RngCore + CryptoRng>(
    identity: &Identity,
    msgs: &[HandshakeInitiation<T>],
    rng: &mut R,
    backend: Backend,
) -> Vec<Result<(InitiationStart, ResponderDh), NoiseError>> {
    const BASE: [u8; KEY_LEN] = {
        let mut b = [0u8; KEY_LEN];
        b[0] = 9;
        b
    };
    let n = msgs.len();
    #[cfg(any(test, feature = "fuzzing"))]
    LANE_INITIATIONS.with(|c| c.set(c.get() + n as u64));
    // Round 1: lanes 3i, 3i+1, 3i+2 are es, e_r's public key and ee of message i.
    let mut scalars = Zeroizing::new(vec![[0u8; KEY_LEN]; 3 * n]);
    let mut points = vec![[0u8; KEY_LEN]; 3 * n];
    let mut ephemerals: Vec<Zeroizing<[u8; KEY_LEN]>> = Vec::with_capacity(n);
    for (i, msg) in msgs.iter().enumerate() {
        let mut eph = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut eph[..]);
        let e = msg.unencrypted_ephemeral();
        scalars[3 * i] = *identity.private_bytes;
        points[3 * i] = e;
        scalars[3 * i + 1] = *eph;
        points[3 * i + 1] = BASE;
        scalars[3 * i + 2] = *eph;
        points[3 * i + 2] = e;
        ephemerals.push(eph);
    }
    let mut round1 = Zeroizing::new(vec![[0u8; KEY_LEN]; 3 * n]);
    dh_lanes(backend, &scalars, &points, &mut round1);
    let mut starts: Vec<Result<InitiationStart, NoiseError>> = msgs
        .iter()
        .enumerate()
        .map(|(i, msg)| finish_begin(identity, msg, points[3 * i], lane_secret(&round1[3 * i])))
        .collect();
    // Round 2: se = DH(e_r, S_i) for each message whose static key decrypted.
    let mut scalars2 = Zeroizing::new(Vec::with_capacity(n));
    let mut points2 = Vec::with_capacity(n);
    for (start, eph) in starts.iter().zip(&ephemerals) {
        if let Ok(start) = start {
            scalars2.push(**eph);
            points2.push(start.remote_static);
        }
    }
    let mut round2 = Zeroizing::new(vec![[0u8; KEY_LEN]; points2.len()]);
    let mut se: Vec<Option<Secret>> = if points2.len() >= SE_LANES_MIN {
        dh_lanes(backend, &scalars2, &points2, &mut round2);
        round2.iter().map(lane_secret).collect()
    } else {
        scalars2.iter().zip(&points2).map(|(k, p)| dh(&PrivateKey::from_bytes(*k), p)).collect()
    };
    let mut se = se.drain(..);
    starts
        .drain(..)
        .enumerate()
        .map(|(i, start)| {
            let start = start?;
            // One `se` per decrypted static key, in order.
            let se = se.next().flatten();
            // The public key of a clamped scalar (base point 9, of prime order) is never zero.
            let ephemeral_public = round1[3 * i + 1];
            Ok((start, ResponderDh { ephemeral_public, ee: lane_secret(&round1[3 * i + 2]), se }))
        })
        .collect()
}

/// Keys for a new session, produced by [`Handshake::begin_session`]. Wiped on drop.
pub struct SessionKeys {
    /// Key for sealing.
    pub send: Secret,
    /// Key for opening.
    pub recv: Secret,
    /// Whether we initiated this handshake.
    pub initiator: bool,
    /// Our index for this session (the handshake's index, reused, as the kernel does).
    pub local_index: u32,
    /// The peer's index, written into our data messages.
    pub remote_index: u32,
    /// The [`Identity::generation`] the handshake was made under.
    pub generation: u64,
}

/// DH(our static, peer static) as last computed, and under which identity.
struct StaticDh {
    /// [`Identity::generation`] of the value; 0: not computed.
    generation: u64,
    /// `None` when the DH is the all-zero value (then every handshake with this peer fails, as
    /// in the kernel).
    value: Option<Secret>,
}

/// A handshake in flight: everything that lives only from creating or consuming an initiation
/// to deriving the session (kernel `struct noise_handshake` minus what outlives it). Wiped on
/// drop (the symmetric state and the ephemeral key wipe themselves).
struct Flight {
    state: State,
    generation: u64,
    sym: Symmetric,
    ephemeral: Option<PrivateKey>,
    remote_ephemeral: [u8; KEY_LEN],
    local_index: u32,
    remote_index: u32,
}

/// Bytes of the boxed state of a handshake in flight (for the size table).
#[cfg(test)]
pub(crate) fn flight_size() -> usize {
    core::mem::size_of::<Flight>()
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.remote_ephemeral.zeroize();
    }
}

/// The handshake state of one peer.
///
/// What outlives a handshake stays inline (the peer's key, the PSK, the cached static-static
/// DH, the replay and flood guards, about 150 bytes); what a handshake in flight needs is boxed
/// and exists only while one is (kernel state `ZEROED` is "no box").
pub struct Handshake {
    remote_static: [u8; KEY_LEN],
    psk: Secret,
    static_dh: StaticDh,
    latest_timestamp: [u8; TIMESTAMP_LEN],
    last_initiation_consumption: Option<Timestamp>,
    flight: Option<Box<Flight>>,
}

impl Handshake {
    /// Handshake state for the peer with static key `remote_static`. No DH work: the
    /// static-static DH is computed by the first handshake that needs it.
    pub fn new(remote_static: [u8; KEY_LEN], psk: Secret) -> Self {
        Handshake {
            remote_static,
            psk,
            static_dh: StaticDh { generation: 0, value: None },
            latest_timestamp: [0; TIMESTAMP_LEN],
            last_initiation_consumption: None,
            flight: None,
        }
    }

    /// The static-static DH under `identity`: the cached value, or computed now (one X25519)
    /// if the cache is empty or was made under another identity.
    fn static_static(&mut self, identity: &Identity) -> Option<Secret> {
        if self.static_dh.generation != identity.generation {
            // Assigning drops (and so wipes) the value made under the old identity.
            self.static_dh =
                StaticDh { generation: identity.generation, value: dh(&identity.private, &self.remote_static) };
        }
        self.static_dh.value.clone()
    }

    /// Whether the static-static DH under `identity` is cached (so the next handshake step
    /// that needs it does no X25519 for it).
    pub fn has_static_static(&self, identity: &Identity) -> bool {
        self.static_dh.generation == identity.generation
    }

    /// Replace the pre-shared key (all zeros = none).
    pub fn set_psk(&mut self, psk: Secret) {
        self.psk = psk;
    }

    /// The pre-shared key.
    pub fn psk(&self) -> &Secret {
        &self.psk
    }

    /// The peer's static public key.
    pub fn remote_static(&self) -> &[u8; KEY_LEN] {
        &self.remote_static
    }

    /// Our index of the handshake in flight (0 when none).
    pub fn local_index(&self) -> u32 {
        self.flight.as_ref().map_or(0, |f| f.local_index)
    }

    /// Whether we sent an initiation and wait for its response.
    pub fn is_initiation_pending(&self) -> bool {
        self.flight.as_ref().is_some_and(|f| f.state == State::CreatedInitiation)
    }

    /// Whether a handshake is in flight (its state is allocated).
    pub fn in_flight(&self) -> bool {
        self.flight.is_some()
    }

    /// Forget the handshake in flight (kernel `handshake_zero`): keys, hash and state are wiped
    /// and freed. The PSK, the cached static-static DH and the replay guards stay.
    pub fn clear(&mut self) {
        self.flight = None;
    }

    /// Build a handshake initiation with sender index `local_index` and the TAI64N `timestamp`
    /// (kernel `wg_noise_handshake_create_initiation`). The MAC fields are left zero for
    /// [`crate::cookie::CookieState::add_macs`].
    pub fn create_initiation<R: RngCore + CryptoRng>(
        &mut self,
        identity: &Identity,
        rng: &mut R,
        timestamp: [u8; TIMESTAMP_LEN],
        local_index: u32,
    ) -> Result<Initiation, NoiseError> {
        let ss = self.static_static(identity).ok_or(NoiseError::DhFailure)?;
        self.clear();
        let mut out = Initiation::new_unchecked([0u8; INITIATION_LEN]);
        out.init_header();
        out.set_sender_index(local_index);
        let mut sym = Symmetric::start(&self.remote_static);
        // e
        let eph = PrivateKey::generate(rng);
        let e_pub = public_of(&eph);
        out.set_unencrypted_ephemeral(&e_pub);
        sym.mix_ephemeral(&e_pub);
        // es
        let key = sym.mix_dh_key(dh(&eph, &self.remote_static))?;
        // s
        sym.encrypt(&key, &identity.public, out.encrypted_static_mut());
        // ss
        let key = sym.mix_dh_key(Some(ss))?;
        // {t}
        sym.encrypt(&key, &timestamp, out.encrypted_timestamp_mut());
        self.flight = Some(Box::new(Flight {
            state: State::CreatedInitiation,
            generation: identity.generation,
            sym,
            ephemeral: Some(eph),
            remote_ephemeral: [0; KEY_LEN],
            local_index,
            remote_index: 0,
        }));
        Ok(out)
    }

    /// Finish consuming an initiation addressed to this peer: `ss`, the timestamp, and the
    /// per-peer acceptance rules (timestamp newer than the last accepted; at most
    /// INITIATIONS_PER_SECOND). `identity` is the one `start` was made with. On success the
    /// state is ready for [`Self::create_response`].
    pub fn consume_initiation(
        &mut self,
        identity: &Identity,
        start: InitiationStart,
        now: Timestamp,
    ) -> Result<(), NoiseError> {
        if start.generation != identity.generation || !ct_eq(&start.remote_static, &self.remote_static) {
            return Err(NoiseError::WrongState);
        }
        let ss = self.static_static(identity);
        let InitiationStart { mut sym, remote_ephemeral, sender_index, sealed_timestamp, .. } = start;
        let key = sym.mix_dh_key(ss)?;
        let mut t = [0u8; TIMESTAMP_LEN];
        sym.decrypt(&key, &sealed_timestamp, &mut t).map_err(|_| NoiseError::DecryptTimestamp)?;
        // TAI64N is big-endian, so byte order is time order.
        if t <= self.latest_timestamp {
            return Err(NoiseError::Replay);
        }
        if let Some(last) = self.last_initiation_consumption {
            if !last.has_expired(core::time::Duration::from_nanos(1_000_000_000 / INITIATIONS_PER_SECOND), now) {
                return Err(NoiseError::Flood);
            }
        }
        self.latest_timestamp = t;
        self.last_initiation_consumption = Some(now);
        // Replacing the box wipes and frees the handshake it replaces.
        self.flight = Some(Box::new(Flight {
            state: State::ConsumedInitiation,
            generation: identity.generation,
            sym,
            ephemeral: None,
            remote_ephemeral,
            local_index: 0,
            remote_index: sender_index,
        }));
        Ok(())
    }

    /// Build the response to the initiation just consumed, with sender index `local_index`
    /// (kernel `wg_noise_handshake_create_response`). The MAC fields are left zero for
    /// [`crate::cookie::CookieState::add_macs`].
    pub fn create_response<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        local_index: u32,
    ) -> Result<Response, NoiseError> {
        if !self.flight.as_deref().is_some_and(|f| f.state == State::ConsumedInitiation) {
            return Err(NoiseError::WrongState);
        }
        // e
        let eph = PrivateKey::generate(rng);
        let e_pub = public_of(&eph);
        let remote_static = self.remote_static;
        self.respond(local_index, &e_pub, Some(eph), |sym, eph, remote_ephemeral| {
            // `respond` passes back the key given to it.
            let eph = eph.ok_or(NoiseError::WrongState)?;
            // ee
            sym.mix_dh(dh(eph, remote_ephemeral))?;
            // se
            sym.mix_dh(dh(eph, &remote_static))
        })
    }

    /// [`Self::create_response`] from DHs computed beforehand ([`begin_consume_initiations`]
    /// made `dh` for the initiation just consumed): the same symmetric steps and failures, no
    /// X25519. `dh` is wiped as it drops.
    pub fn create_response_with(&mut self, dh: ResponderDh, local_index: u32) -> Result<Response, NoiseError> {
        if !self.flight.as_deref().is_some_and(|f| f.state == State::ConsumedInitiation) {
            return Err(NoiseError::WrongState);
        }
        let ResponderDh { ephemeral_public, ee, se } = dh;
        // The responder never uses its ephemeral private key after the response: there is
        // none to keep.
        self.respond(local_index, &ephemeral_public, None, |sym, _, _| {
            // ee
            sym.mix_dh(ee)?;
            // se
            sym.mix_dh(se)
        })
    }

    /// The response's steps around the DHs: `e` (the public key `e_pub`), then `dhs` mixes ee
    /// and se into the symmetric state (given the ephemeral key if any and the initiator's
    /// ephemeral), then psk and the empty payload. The state must be `ConsumedInitiation`.
    fn respond(
        &mut self,
        local_index: u32,
        e_pub: &[u8; KEY_LEN],
        eph: Option<PrivateKey>,
        dhs: impl FnOnce(&mut Symmetric, Option<&PrivateKey>, &[u8; KEY_LEN]) -> Result<(), NoiseError>,
    ) -> Result<Response, NoiseError> {
        let Some(f) = self.flight.as_deref_mut().filter(|f| f.state == State::ConsumedInitiation) else {
            return Err(NoiseError::WrongState);
        };
        let mut out = Response::new_unchecked([0u8; RESPONSE_LEN]);
        out.init_header();
        out.set_sender_index(local_index);
        out.set_receiver_index(f.remote_index);
        let mut sym = f.sym.clone();
        // e
        out.set_unencrypted_ephemeral(e_pub);
        sym.mix_ephemeral(e_pub);
        // ee, se
        dhs(&mut sym, eph.as_ref(), &f.remote_ephemeral)?;
        // psk
        let key = sym.mix_psk(&self.psk);
        // {}
        sym.encrypt(&key, &[], out.encrypted_nothing_mut());
        f.sym = sym;
        f.ephemeral = eph;
        f.local_index = local_index;
        f.state = State::CreatedResponse;
        Ok(out)
    }

    /// Consume a response to our initiation (the caller found this handshake by the response's
    /// receiver index and checked MAC1; a buffer shorter than a response reads as zeros and
    /// fails to authenticate). An initiation made under another identity (the private key
    /// changed since) is not pending any more.
    pub fn consume_response<T: AsRef<[u8]>>(
        &mut self,
        identity: &Identity,
        msg: &HandshakeResponse<T>,
    ) -> Result<(), NoiseError> {
        let Some(f) = self.flight.as_deref_mut() else {
            return Err(NoiseError::WrongState);
        };
        if f.state != State::CreatedInitiation
            || msg.receiver_index() != f.local_index
            || f.generation != identity.generation
        {
            return Err(NoiseError::WrongState);
        }
        let eph = f.ephemeral.as_ref().ok_or(NoiseError::WrongState)?;
        let mut sym = f.sym.clone();
        let e = msg.unencrypted_ephemeral();
        // e
        sym.mix_ephemeral(&e);
        // ee
        sym.mix_dh(dh(eph, &e))?;
        // se
        sym.mix_dh(dh(&identity.private, &e))?;
        // psk
        let key = sym.mix_psk(&self.psk);
        // {}
        sym.decrypt(&key, msg.encrypted_nothing(), &mut []).map_err(|_| NoiseError::DecryptResponse)?;
        f.sym = sym;
        f.remote_ephemeral = e;
        f.remote_index = msg.sender_index();
        f.state = State::ConsumedResponse;
        Ok(())
    }

    /// Derive the transport keys once the handshake is complete (after sending a response, or
    /// after consuming one) and drop the handshake state.
    pub fn begin_session(&mut self) -> Result<SessionKeys, NoiseError> {
        let Some(f) = self.flight.as_deref() else {
            return Err(NoiseError::WrongState);
        };
        let initiator = match f.state {
            State::ConsumedResponse => true,
            State::CreatedResponse => false,
            _ => return Err(NoiseError::WrongState),
        };
        let [t1, t2] = kdf::<2>(&f.sym.ck, &[]);
        let (send, recv) = if initiator { (t1, t2) } else { (t2, t1) };
        let keys = SessionKeys {
            send,
            recv,
            initiator,
            local_index: f.local_index,
            remote_index: f.remote_index,
            generation: f.generation,
        };
        self.clear();
        Ok(keys)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.latest_timestamp.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn pair(psk: [u8; 32]) -> (Identity, Identity, Handshake, Handshake) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = Identity::new(PrivateKey::generate(&mut rng));
        let b = Identity::new(PrivateKey::generate(&mut rng));
        let ha = Handshake::new(*b.public_key(), Secret(psk));
        let hb = Handshake::new(*a.public_key(), Secret(psk));
        (a, b, ha, hb)
    }

    fn run(psk_a: [u8; 32], psk_b: [u8; 32]) -> Result<(SessionKeys, SessionKeys), NoiseError> {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b, mut ha, _) = pair(psk_a);
        let mut hb = Handshake::new(*a.public_key(), Secret(psk_b));
        let init = ha.create_initiation(&a, &mut rng, crate::time::tai64n(5_000_000_000), 0x11)?;
        assert_eq!(init.check_len(), Ok(()));
        assert_eq!((init.sender_index(), init.mac1(), init.mac2()), (0x11, [0; 16], [0; 16]));
        let start = begin_consume_initiation(&b, &init)?;
        assert_eq!(start.remote_static(), a.public_key());
        assert_eq!(start.sender_index(), 0x11);
        hb.consume_initiation(&b, start, Timestamp::from_secs(1))?;
        let resp = hb.create_response(&mut rng, 0x22)?;
        assert_eq!(resp.check_len(), Ok(()));
        assert_eq!((resp.sender_index(), resp.receiver_index(), resp.mac1()), (0x22, 0x11, [0; 16]));
        ha.consume_response(&a, &resp)?;
        Ok((ha.begin_session()?, hb.begin_session()?))
    }

    #[test]
    fn handshake_agrees_on_keys() {
        for psk in [[0u8; 32], [7u8; 32]] {
            let (ka, kb) = run(psk, psk).unwrap();
            assert!(ka.initiator && !kb.initiator);
            assert_eq!(ka.send.0, kb.recv.0);
            assert_eq!(ka.recv.0, kb.send.0);
            assert_ne!(ka.send.0, ka.recv.0);
            assert_eq!((ka.local_index, ka.remote_index), (0x11, 0x22));
            assert_eq!((kb.local_index, kb.remote_index), (0x22, 0x11));
        }
    }

    #[test]
    fn psk_mismatch_fails_at_the_initiator() {
        assert_eq!(run([1; 32], [2; 32]).err(), Some(NoiseError::DecryptResponse));
    }

    #[test]
    fn initiation_for_someone_else_fails_to_decrypt() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (a, _b, mut ha, _) = pair([0; 32]);
        let c = Identity::new(PrivateKey::generate(&mut rng));
        let init = ha.create_initiation(&a, &mut rng, [0; 12], 1).unwrap();
        assert_eq!(begin_consume_initiation(&c, &init).err(), Some(NoiseError::DecryptStatic));
    }

    #[test]
    fn truncated_initiations_fail_without_panic() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (a, b, mut ha, _) = pair([0; 32]);
        let init = ha.create_initiation(&a, &mut rng, [0; 12], 1).unwrap();
        // Cut inside the sealed fields (the MACs after them are not Noise's to read).
        for n in [0, 8, 40, 87, 88, 115] {
            let short = HandshakeInitiation::new_unchecked(&init.as_ref()[..n]);
            assert!(begin_consume_initiation(&b, &short).is_err(), "length {n}");
        }
        // The whole message, as a borrowed view, decrypts.
        let whole = HandshakeInitiation::new_checked(init.as_ref()).unwrap();
        assert_eq!(begin_consume_initiation(&b, &whole).map(|s| s.sender_index()), Ok(1));
    }

    #[test]
    fn replayed_and_flooding_initiations_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (a, b, mut ha, mut hb) = pair([0; 32]);
        let init = ha.create_initiation(&a, &mut rng, crate::time::tai64n(10_000_000_000), 1).unwrap();
        hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), Timestamp::from_secs(1)).unwrap();
        // The very same message again: its timestamp is not newer.
        let again = hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), Timestamp::from_secs(2));
        assert_eq!(again, Err(NoiseError::Replay));
        // A newer timestamp 10 ms after the last accepted one: flood.
        let init = ha.create_initiation(&a, &mut rng, crate::time::tai64n(11_000_000_000), 2).unwrap();
        let t = Timestamp::from_nanos(1_010_000_000);
        assert_eq!(hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), t), Err(NoiseError::Flood));
        // 20 ms after: accepted.
        let t = Timestamp::from_nanos(1_020_000_000);
        hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), t).unwrap();
    }

    #[test]
    fn response_in_wrong_state_or_tampered_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (a, b, mut ha, mut hb) = pair([0; 32]);
        assert_eq!(hb.create_response(&mut rng, 1).err(), Some(NoiseError::WrongState));
        let init = ha.create_initiation(&a, &mut rng, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 9).unwrap();
        hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), Timestamp::from_secs(1)).unwrap();
        let resp = hb.create_response(&mut rng, 10).unwrap();
        let mut bad = resp.clone();
        let mut e = bad.unencrypted_ephemeral();
        e[0] ^= 1;
        bad.set_unencrypted_ephemeral(&e);
        assert!(ha.consume_response(&a, &bad).is_err());
        // Cut short inside the Noise fields, it reads as zeros past the end and fails without a
        // panic.
        for n in [0, 12, 44, 59] {
            let short = HandshakeResponse::new_unchecked(&resp.as_ref()[..n]);
            assert!(ha.consume_response(&a, &short).is_err(), "length {n}");
        }
        // The failed attempt leaves the initiation pending: the genuine response still works.
        ha.consume_response(&a, &resp).unwrap();
        assert_eq!(ha.consume_response(&a, &resp), Err(NoiseError::WrongState));
        assert!(ha.begin_session().is_ok());
        assert_eq!(ha.begin_session().err(), Some(NoiseError::WrongState));
    }

    /// A new identity (even for the same key) invalidates the cached static-static DH and
    /// the handshake in flight: the response to an initiation of the old identity is refused,
    /// and the next handshake recomputes the DH once.
    #[test]
    fn new_identity_invalidates_the_cache_and_the_flight() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let (a, b, mut ha, mut hb) = pair([0; 32]);
        let ops = x25519_ops();
        let init = ha.create_initiation(&a, &mut rng, crate::time::tai64n(1_000_000_000), 1).unwrap();
        assert_eq!(x25519_ops() - ops, 3, "e, es and the first ss");
        assert!(ha.has_static_static(&a));
        hb.consume_initiation(&b, begin_consume_initiation(&b, &init).unwrap(), Timestamp::from_secs(1)).unwrap();
        let resp = hb.create_response(&mut rng, 2).unwrap();
        let a2 = Identity::new(a.private_key().clone());
        assert_ne!(a2.generation(), a.generation());
        assert!(!ha.has_static_static(&a2));
        assert_eq!(ha.consume_response(&a2, &resp), Err(NoiseError::WrongState));
        // A start made under one identity cannot finish under another.
        let b2 = Identity::new(b.private_key().clone());
        let init = ha.create_initiation(&a2, &mut rng, crate::time::tai64n(2_000_000_000), 3).unwrap();
        let start = begin_consume_initiation(&b, &init).unwrap();
        assert_eq!(hb.consume_initiation(&b2, start, Timestamp::from_secs(2)), Err(NoiseError::WrongState));
        let ops = x25519_ops();
        let init = ha.create_initiation(&a2, &mut rng, crate::time::tai64n(3_000_000_000), 4).unwrap();
        assert_eq!(x25519_ops() - ops, 2, "ss cached for the new identity");
        hb.consume_initiation(&b2, begin_consume_initiation(&b2, &init).unwrap(), Timestamp::from_secs(3)).unwrap();
        let resp = hb.create_response(&mut rng, 5).unwrap();
        ha.consume_response(&a2, &resp).unwrap();
        let (ka, kb) = (ha.begin_session().unwrap(), hb.begin_session().unwrap());
        assert_eq!((ka.send.0, ka.generation, kb.generation), (kb.recv.0, a2.generation(), b2.generation()));
        assert!(!ha.in_flight() && !hb.in_flight(), "handshake state freed");
    }

    /// The backends the batched responder is tested on: the portable one always (the batch
    /// logic on any CPU), the IFMA lanes where this CPU has them.
    fn lane_backends() -> Vec<Backend> {
        Backend::ALL.into_iter().filter(|b| b.is_supported()).collect()
    }

    /// N initiators, one batched responder round ([`begin_consume_initiations`], then
    /// `consume_initiation` and `create_response_with` per initiation), N responses consumed:
    /// both sides derive the same keys, for N = 1..=9 (more than one eight-lane call in both
    /// rounds at 9), on every backend; and the batch does exactly the X25519 operations of the
    /// one-at-a-time path (es, e, ee, se, and ss the first time).
    #[test]
    fn batched_responder_agrees_on_keys() {
        for backend in lane_backends() {
            for n in 1..=9usize {
                let mut rng = ChaCha20Rng::seed_from_u64(100 + n as u64);
                let b = Identity::new(PrivateKey::generate(&mut rng));
                let mut inits = Vec::new();
                let mut sides = Vec::new();
                for i in 0..n {
                    let a = Identity::new(PrivateKey::generate(&mut rng));
                    let psk = Secret([i as u8; 32]);
                    let mut ha = Handshake::new(*b.public_key(), psk.clone());
                    let hb = Handshake::new(*a.public_key(), psk);
                    let t = crate::time::tai64n(1_000_000_000 * (i as u64 + 1));
                    inits.push(ha.create_initiation(&a, &mut rng, t, 0x100 + i as u32).unwrap());
                    sides.push((a, ha, hb));
                }
                let ops = x25519_ops();
                let started = begin_consume_initiations(&b, &inits, &mut rng, backend);
                assert_eq!(started.len(), n);
                for (i, (r, (a, ha, hb))) in started.into_iter().zip(sides.iter_mut()).enumerate() {
                    let (start, dh) = r.unwrap();
                    assert_eq!(start.remote_static(), a.public_key());
                    hb.consume_initiation(&b, start, Timestamp::from_secs(1)).unwrap();
                    let resp = hb.create_response_with(dh, 0x200 + i as u32).unwrap();
                    assert_eq!((resp.sender_index(), resp.receiver_index()), (0x200 + i as u32, 0x100 + i as u32));
                    ha.consume_response(a, &resp).unwrap();
                    let (ka, kb) = (ha.begin_session().unwrap(), hb.begin_session().unwrap());
                    assert!(ka.initiator && !kb.initiator);
                    assert_eq!((ka.send.0, ka.recv.0), (kb.recv.0, kb.send.0), "{backend:?} n={n} i={i}");
                }
                // Per initiation: es, e, ee, se, ss (first handshake), and the initiator's
                // ee and se.
                assert_eq!(x25519_ops() - ops, 7 * n as u64, "{backend:?} n={n}");
            }
        }
    }

    /// Failures inside a batch fail as the one-at-a-time path fails them, and only them: a
    /// low-order ephemeral (es all zeros: DhFailure), a corrupted encrypted static
    /// (DecryptStatic), an initiation for another responder (DecryptStatic), a replay (the
    /// same message twice in the batch: the second is refused by `consume_initiation`).
    #[test]
    fn batched_responder_fails_each_initiation_as_one_at_a_time() {
        for backend in lane_backends() {
            let mut rng = ChaCha20Rng::seed_from_u64(200);
            let b = Identity::new(PrivateKey::generate(&mut rng));
            let other = Identity::new(PrivateKey::generate(&mut rng));
            let mut inits = Vec::new();
            let mut sides = Vec::new();
            for i in 0..8u32 {
                let a = Identity::new(PrivateKey::generate(&mut rng));
                let mut ha = Handshake::new(*if i == 5 { other.public_key() } else { b.public_key() }, Secret::zero());
                let hb = Handshake::new(*a.public_key(), Secret::zero());
                let ident = &a;
                let t = crate::time::tai64n(1_000_000_000 * (u64::from(i) + 1));
                let init = ha.create_initiation(ident, &mut rng, t, i).unwrap();
                inits.push(init);
                sides.push((a, ha, hb));
            }
            // 1: a low-order ephemeral (u = 1); 3: a bit flipped in the encrypted static; 5:
            // sealed for another responder; 7: message 6 again.
            let mut e = [0u8; 32];
            e[0] = 1;
            inits[1].set_unencrypted_ephemeral(&e);
            let mut raw: [u8; INITIATION_LEN] = inits[3].as_ref().try_into().unwrap();
            raw[40] ^= 0x20;
            inits[3] = Initiation::new_unchecked(raw);
            inits[7] = inits[6].clone();
            let one: Vec<_> = inits.iter().map(|m| begin_consume_initiation(&b, m).map(|_| ()).err()).collect();
            let started = begin_consume_initiations(&b, &inits, &mut rng, backend);
            let many: Vec<_> = started.iter().map(|r| r.as_ref().map(|_| ()).err().copied()).collect();
            assert_eq!(many, one, "{backend:?}");
            let expect = [
                None,
                Some(NoiseError::DhFailure),
                None,
                Some(NoiseError::DecryptStatic),
                None,
                Some(NoiseError::DecryptStatic),
                None,
                None,
            ];
            assert_eq!(many, expect, "{backend:?}");
            let mut done = 0;
            for (i, r) in started.into_iter().enumerate() {
                let Ok((start, dh)) = r else { continue };
                let (a, ha, hb) = &mut sides[if i == 7 { 6 } else { i }];
                let consumed = hb.consume_initiation(&b, start, Timestamp::from_secs(1 + i as u64));
                if i == 7 {
                    assert_eq!(consumed, Err(NoiseError::Replay), "{backend:?}");
                    continue;
                }
                consumed.unwrap();
                let resp = hb.create_response_with(dh, 0x200 + i as u32).unwrap();
                ha.consume_response(a, &resp).unwrap();
                assert_eq!(ha.begin_session().unwrap().send.0, hb.begin_session().unwrap().recv.0);
                done += 1;
            }
            assert_eq!(done, 4, "{backend:?}");
        }
    }

    /// A zero `se` (the initiator's static key of small order) fails the response with
    /// DhFailure, as `create_response` fails it, and leaves the state to consume again.
    #[test]
    fn precomputed_zero_dh_fails_the_response() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (a, b, mut ha, mut hb) = pair([0; 32]);
        let init = ha.create_initiation(&a, &mut rng, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 9).unwrap();
        let (start, mut dh) = begin_consume_initiations(&b, &[init], &mut rng, Backend::Portable).remove(0).unwrap();
        hb.consume_initiation(&b, start, Timestamp::from_secs(1)).unwrap();
        dh.se = None;
        assert_eq!(hb.create_response_with(dh, 10).err(), Some(NoiseError::DhFailure));
        assert!(hb.in_flight());
        assert!(!format!("{:?}", b).contains(&format!("{:?}", b.private_key().to_bytes())));
    }

    #[test]
    fn low_order_peer_key_fails_without_panic() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let a = Identity::new(PrivateKey::generate(&mut rng));
        let mut h = Handshake::new([0u8; 32], Secret::zero());
        assert_eq!(h.create_initiation(&a, &mut rng, [0; 12], 1).err(), Some(NoiseError::DhFailure));
    }
}
