//! MAC1, MAC2 and cookie replies: the stateless half of WireGuard's handshake DoS defence.
//!
//! Follows the Linux kernel's `drivers/net/wireguard/cookie.c`. Rules:
//! - Every handshake message (initiation, 148 B; response, 92 B) ends in `mac1 ‖ mac2`, 16 bytes
//!   each. `mac1 = MAC(HASH("mac1----" ‖ receiver's static public key), msg[..len − 32])` is always
//!   checked, in constant time; a wrong mac1 drops the message silently.
//! - `mac2 = MAC(cookie, msg[..len − 16])`, or 16 zero bytes when the sender holds no cookie
//!   younger than [`COOKIE_SECRET_MAX_AGE`] − [`COOKIE_SECRET_LATENCY`] (115 s).
//! - The responder's cookie for a source is `MAC(secret, source IP (4 or 16 B) ‖ source UDP port
//!   (big-endian))`; the 32-byte random secret is replaced once it is [`COOKIE_SECRET_MAX_AGE`]
//!   (120 s) old, which invalidates every cookie handed out before.
//! - Under load, a message with a valid mac1 but no valid mac2 is answered with a cookie reply
//!   (type 3, 64 B): the cookie sealed with XChaCha20-Poly1305 under
//!   `HASH("cookie--" ‖ responder's static public key)`, a random 24-byte nonce, and the
//!   triggering message's mac1 as associated data. A valid mac2 proves the source receives at
//!   its address; such messages then pass the per-source [`RateLimiter`].
//! - The initiator accepts a cookie reply only while it has a mac1 outstanding, and only for the
//!   mac1 it last sent; it stores the cookie and never roams on a cookie reply.
//!
//! States: [`CookieChecker`] (one per device, the responder side: our mac1 and cookie keys, the
//! secret and its birth) and [`CookieState`] (one per peer, the initiator side: the peer's mac1
//! and cookie keys, the last mac1 sent, the latest cookie and its birth). The only timer is the
//! two ages above, checked against the `now` handed in.
//!
//! Messages come in and go out as the `wire::wireguard` views (any handshake message through
//! [`MacMessage`]), which own where the MACs, indices and nonce sit. What is *not* here: the
//! message type and length check (the caller classifies first and hands in the matching view,
//! as the kernel's `receive.c` does), the under-load decision
//! ([`crate::ratelimit::LoadDetector`]), and finding the peer a cookie reply is for (the caller
//! looks its receiver index up).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{
    ct_eq, hash, mac, mac_keyed, mac_many, xopen_cookie, xseal_cookie, xseal_cookies, CookieSeal, MacJob, MacKey,
    Secret,
};
use crate::messages::{
    COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, COOKIE_SECRET_LATENCY, COOKIE_SECRET_MAX_AGE, KEY_LEN,
    MESSAGE_HANDSHAKE_COOKIE, WG_LABEL_COOKIE, WG_LABEL_MAC1,
};
use crate::ratelimit::RateLimiter;
use crate::time::Timestamp;
use crate::wire::wireguard::{CookieReply, MacMessage, MacMessageMut};

/// A cookie reply in a buffer of its own, as [`CookieChecker::create_reply`] makes it.
pub type Reply = CookieReply<[u8; COOKIE_REPLY_LEN]>;

/// A key derived from a static public key and a label (kernel `precompute_key`).
fn precompute_key(public_key: &[u8; KEY_LEN], label: &[u8]) -> [u8; KEY_LEN] {
    hash(&[label, public_key])
}

/// What [`CookieChecker::validate`] found (kernel `enum cookie_mac_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacState {
    /// mac1 is wrong (or the message is too short to carry MACs): drop silently.
    Invalid,
    /// mac1 is right; mac2 was not checked (not under load) or is wrong. Under load the caller
    /// answers with [`CookieChecker::create_reply`] instead of processing the handshake.
    ValidMacButNoCookie,
    /// Both MACs are right but the source is over its rate: drop.
    ValidMacWithCookieButRatelimited,
    /// Both MACs are right and the source is within its rate: process the handshake.
    ValidMacWithCookie,
}

/// Keys derived from our static public key: the mac1 key as its BLAKE2s state (what every mac1
/// we check starts from), and the cookie reply key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct DeviceKeys {
    mac1_state: MacKey,
    cookie: [u8; KEY_LEN],
}

impl DeviceKeys {
    /// Without an identity the kernel zeroes both keys.
    fn new(public_key: Option<&[u8; KEY_LEN]>) -> Self {
        let (mut mac1, cookie) = match public_key {
            Some(pk) => (precompute_key(pk, WG_LABEL_MAC1), precompute_key(pk, WG_LABEL_COOKIE)),
            None => ([0; KEY_LEN], [0; KEY_LEN]),
        };
        let keys = DeviceKeys { mac1_state: MacKey::new(&mac1), cookie };
        mac1.zeroize();
        keys
    }
}

/// The random secret cookies are made from, with its birth, and its BLAKE2s state (what a
/// batch's cookies start from), made again at each rotation.
struct CookieSecret {
    secret: Secret,
    state: MacKey,
    birth: Timestamp,
}

impl CookieSecret {
    /// Replaces the secret with fresh random bytes born at `now`.
    fn rotate<R: rand_core::RngCore + rand_core::CryptoRng>(&mut self, now: Timestamp, rng: &mut R) {
        rng.fill_bytes(&mut self.secret.0);
        self.state = MacKey::new(&self.secret.0);
        self.birth = now;
    }
}

/// The responder side (kernel `struct cookie_checker`): checks MACs on incoming handshakes and
/// makes cookie replies. One per device, shared by every core (`&self` methods).
///
/// A clone has its own copy of the keys derived from the public key (so the two copies of a
/// published device each change theirs under `&mut`) and shares the random secret.
#[derive(Clone)]
pub struct CookieChecker {
    /// Replaced by [`set_public_key`](Self::set_public_key) (under `&mut self`: the device's key
    /// changes only with the device held exclusively); read on every handshake message, a plain
    /// field (no atomic load) because a flood's cheapest rejection is this read and one MAC.
    keys: DeviceKeys,
    secret: Arc<RwLock<CookieSecret>>,
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CookieChecker(..)")
    }
}

impl CookieChecker {
    /// A checker for a device whose static public key is `public_key` (`None`: no identity yet,
    /// keys all zero as in the kernel), with a fresh secret born at `now`.
    pub fn new<R: rand_core::RngCore + rand_core::CryptoRng>(
        now: Timestamp,
        rng: &mut R,
        public_key: Option<&[u8; KEY_LEN]>,
    ) -> Self {
        let mut secret = Secret::zero();
        rng.fill_bytes(&mut secret.0);
        let state = MacKey::new(&secret.0);
        CookieChecker {
            keys: DeviceKeys::new(public_key),
            secret: Arc::new(RwLock::new(CookieSecret { secret, state, birth: now })),
        }
    }

    /// Recompute the mac1 and cookie keys after the device's key changed (kernel
    /// `wg_cookie_checker_precompute_device_keys`).
    pub fn set_public_key(&mut self, public_key: Option<&[u8; KEY_LEN]>) {
        self.keys = DeviceKeys::new(public_key);
    }

    /// Whether `msg`'s mac1 is right for our key (cheap: no secret, no lock).
    pub fn check_mac1<M: MacMessage>(&self, msg: &M) -> bool {
        let computed = mac_keyed(&self.keys.mac1_state, msg.mac1_covered());
        ct_eq(&computed, &msg.mac1())
    }

    /// Check a handshake message's MACs (kernel `wg_cookie_validate_packet`). mac2 is checked
    /// only when `under_load`, and only a message with a valid mac2 reaches `limiter`.
    pub fn validate<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        msg: &M,
        src: SocketAddr,
        under_load: bool,
        limiter: &RateLimiter,
    ) -> MacState {
        if !self.check_mac1(msg) {
            return MacState::Invalid;
        }
        if !under_load {
            return MacState::ValidMacButNoCookie;
        }
        self.validate_mac2(now, rng, msg, src, limiter)
    }

    /// The under-load half of [`validate`](Self::validate) for a message whose mac1 already
    /// verified: its mac2, then `limiter` (never [`MacState::Invalid`]). For a caller that
    /// checks mac1 as messages arrive and decides about load when it processes them, as the
    /// kernel decides when it dequeues.
    pub fn validate_mac2<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        msg: &M,
        src: SocketAddr,
        limiter: &RateLimiter,
    ) -> MacState {
        self.mac2_state(now, rng, msg, src, limiter).0
    }

    /// [`validate_mac2`](Self::validate_mac2), and for a message without a valid mac2 its
    /// cookie reply ([`create_reply`](Self::create_reply)), from one computation of the source's
    /// cookie: what a flood costs per message under load.
    pub fn validate_mac2_or_reply<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        msg: &M,
        src: SocketAddr,
        limiter: &RateLimiter,
    ) -> (MacState, Option<Reply>) {
        let (state, cookie) = self.mac2_state(now, rng, msg, src, limiter);
        let reply = (state == MacState::ValidMacButNoCookie).then(|| self.reply_with(rng, msg, &cookie));
        (state, reply)
    }

    fn mac2_state<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        msg: &M,
        src: SocketAddr,
        limiter: &RateLimiter,
    ) -> (MacState, Zeroizing<[u8; COOKIE_LEN]>) {
        let cookie = self.make_cookie(now, rng, src);
        if no_mac2(msg) || !ct_eq(&mac(&cookie[..], &[msg.mac2_covered()]), &msg.mac2()) {
            return (MacState::ValidMacButNoCookie, cookie);
        }
        if !limiter.allow(now, src.ip()) {
            return (MacState::ValidMacWithCookieButRatelimited, cookie);
        }
        (MacState::ValidMacWithCookie, cookie)
    }

    /// The cookie reply to `triggering_msg` from `src` (kernel `wg_cookie_message_create`),
    /// addressed to the triggering message's sender index and bound to its mac1. Call it only
    /// for a message whose mac1 verified.
    pub fn create_reply<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        triggering_msg: &M,
        src: SocketAddr,
    ) -> Reply {
        let cookie = self.make_cookie(now, rng, src);
        self.reply_with(rng, triggering_msg, &cookie)
    }

    /// The cookie reply carrying `cookie` (the triggering message's source's).
    fn reply_with<R: rand_core::RngCore + rand_core::CryptoRng, M: MacMessage>(
        &self,
        rng: &mut R,
        triggering_msg: &M,
        cookie: &[u8; COOKIE_LEN],
    ) -> Reply {
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sealed = xseal_cookie(&self.keys.cookie, &nonce, &triggering_msg.mac1(), cookie);
        let mut out = Reply::new_unchecked([0u8; COOKIE_REPLY_LEN]);
        out.init_header();
        out.set_receiver_index(triggering_msg.sender_index());
        out.set_nonce(&nonce);
        out.encrypted_cookie_mut().copy_from_slice(&sealed);
        out
    }

    /// [`validate`](Self::validate) of every message of `batch`, in order, and for each
    /// [`MacState::ValidMacButNoCookie`] under load its cookie reply (as
    /// [`validate_mac2_or_reply`](Self::validate_mac2_or_reply) makes it): the same states,
    /// the same rate-limiter calls and the same replies from the same `rng` as one message at a
    /// time, with the MACs of up to [`BATCH`] messages computed together
    /// ([`crate::crypto::mac_many`]: mac1, then under load the sources' cookies and mac2).
    pub fn validate_many<R: rand_core::RngCore + rand_core::CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        under_load: bool,
        limiter: &RateLimiter,
        batch: &mut [Screening<'_>],
    ) {
        for chunk in batch.chunks_mut(BATCH) {
            self.validate_chunk(now, rng, under_load, limiter, chunk);
        }
    }

    fn validate_chunk<R: rand_core::RngCore + rand_core::CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        under_load: bool,
        limiter: &RateLimiter,
        chunk: &mut [Screening<'_>],
    ) {
        let mut jobs: arrayvec::ArrayVec<MacJob<'_>, BATCH> =
            chunk.iter().map(|s| MacJob::keyed(&self.keys.mac1_state, s.msg.mac1_covered())).collect();
        mac_many(&mut jobs);
        let mut valid = [false; BATCH];
        for ((s, j), v) in chunk.iter_mut().zip(jobs.iter()).zip(valid.iter_mut()) {
            *v = ct_eq(&j.out, &s.msg.mac1());
            s.state = if *v { MacState::ValidMacButNoCookie } else { MacState::Invalid };
            s.reply = None;
        }
        drop(jobs);
        if !under_load || !valid.contains(&true) {
            return;
        }
        // The sources' cookies (one read of the secret: it is replaced at most once per
        // message, and only the first message would find it old), then mac2 under them.
        let secret = self.current_secret(now, rng);
        let mut inputs = [([0u8; 18], 0usize); BATCH];
        for ((s, v), input) in chunk.iter().zip(valid).zip(inputs.iter_mut()) {
            if v {
                *input = cookie_input(s.src);
            }
        }
        let mut cookies: Zeroizing<[[u8; COOKIE_LEN]; BATCH]> = Zeroizing::new([[0; COOKIE_LEN]; BATCH]);
        {
            let mut jobs: arrayvec::ArrayVec<MacJob<'_>, BATCH> = inputs
                .iter()
                .zip(valid)
                .take(chunk.len())
                .filter(|(_, v)| *v)
                .map(|((b, n), _)| MacJob::keyed(&secret, &b[..*n]))
                .collect();
            mac_many(&mut jobs);
            let mut outs = jobs.iter_mut();
            for (c, v) in cookies.iter_mut().zip(valid) {
                if v {
                    if let Some(j) = outs.next() {
                        *c = j.out;
                        j.out.zeroize();
                    }
                }
            }
        }
        drop(secret);
        // mac2 is computed only where the message carries one ([`no_mac2`]).
        let mut check2 = [false; BATCH];
        for ((c, s), v) in check2.iter_mut().zip(chunk.iter()).zip(valid) {
            *c = v && !no_mac2(s.msg);
        }
        let mut mac2s = [[0u8; COOKIE_LEN]; BATCH];
        if check2.contains(&true) {
            let mut jobs: arrayvec::ArrayVec<MacJob<'_>, BATCH> = chunk
                .iter()
                .zip(cookies.iter())
                .zip(check2)
                .filter(|(_, c)| *c)
                .map(|((s, c), _)| MacJob::new(&c[..], s.msg.mac2_covered()))
                .collect();
            mac_many(&mut jobs);
            let mut outs = jobs.iter();
            for (m, c) in mac2s.iter_mut().zip(check2) {
                if c {
                    if let Some(j) = outs.next() {
                        *m = j.out;
                    }
                }
            }
        }
        // In order: the rate limiter, the nonces; then the replies' AEADs together.
        let mut seals: arrayvec::ArrayVec<CookieSeal, BATCH> = arrayvec::ArrayVec::new();
        let mut replying = [false; BATCH];
        for (((((s, c), m), v), c2), r) in
            chunk.iter_mut().zip(cookies.iter()).zip(mac2s.iter()).zip(valid).zip(check2).zip(replying.iter_mut())
        {
            if !v {
                continue;
            }
            if !c2 || !ct_eq(m, &s.msg.mac2()) {
                let mut seal = CookieSeal { nonce: [0; COOKIE_NONCE_LEN], aad: s.msg.mac1(), sealed: [0; 32] };
                rng.fill_bytes(&mut seal.nonce);
                seal.sealed[..COOKIE_LEN].copy_from_slice(c);
                seals.push(seal);
                *r = true;
            } else if !limiter.allow(now, s.src.ip()) {
                s.state = MacState::ValidMacWithCookieButRatelimited;
            } else {
                s.state = MacState::ValidMacWithCookie;
            }
        }
        if seals.is_empty() {
            return;
        }
        xseal_cookies(&self.keys.cookie, &mut seals);
        let mut sealed = seals.iter();
        for (s, r) in chunk.iter_mut().zip(replying) {
            if !r {
                continue;
            }
            if let Some(seal) = sealed.next() {
                let mut out = Reply::new_unchecked([0u8; COOKIE_REPLY_LEN]);
                out.init_header();
                out.set_receiver_index(s.msg.sender_index());
                out.set_nonce(&seal.nonce);
                out.encrypted_cookie_mut().copy_from_slice(&seal.sealed);
                s.reply = Some(out);
            }
        }
    }

    /// A copy of the secret's BLAKE2s state, first replacing the secret if it is
    /// [`COOKIE_SECRET_MAX_AGE`] old.
    fn current_secret<R: rand_core::RngCore + rand_core::CryptoRng>(&self, now: Timestamp, rng: &mut R) -> MacKey {
        {
            let s = self.read_secret();
            if !s.birth.has_expired(COOKIE_SECRET_MAX_AGE, now) {
                return s.state.clone();
            }
        }
        let mut s = self.write_secret();
        if s.birth.has_expired(COOKIE_SECRET_MAX_AGE, now) {
            s.rotate(now, rng);
        }
        s.state.clone()
    }

    /// The cookie for `src` (kernel `make_cookie`), first replacing the secret if it is
    /// [`COOKIE_SECRET_MAX_AGE`] old.
    fn make_cookie<R: rand_core::RngCore + rand_core::CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
    ) -> Zeroizing<[u8; COOKIE_LEN]> {
        {
            let s = self.read_secret();
            if !s.birth.has_expired(COOKIE_SECRET_MAX_AGE, now) {
                return cookie_for(&s.state, src);
            }
        }
        let mut s = self.write_secret();
        // Another core may have rotated it while we waited for the lock.
        if s.birth.has_expired(COOKIE_SECRET_MAX_AGE, now) {
            s.rotate(now, rng);
        }
        cookie_for(&s.state, src)
    }

    fn read_secret(&self) -> RwLockReadGuard<'_, CookieSecret> {
        self.secret.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_secret(&self) -> RwLockWriteGuard<'_, CookieSecret> {
        self.secret.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `msg` carries no mac2 (all zeros), as an initiator without a cookie sends it
/// (whitepaper §5.4.4): its mac2 is not valid, so the MAC is not computed. A cookie gives a
/// mac2 of all zeros with probability 2^-128 (that message would get a cookie reply, and the
/// sender's next message, with a new ephemeral, would pass). The field is the sender's own
/// bytes, so skipping the MAC reveals nothing secret; a flood's messages, without cookies,
/// cost fewer BLAKE2s compressions each: the MAC's key block and the blocks it covers (four for
/// an initiation, whose mac2 covers 132 bytes; three for a response, 76 bytes).
fn no_mac2<M: MacMessage + ?Sized>(msg: &M) -> bool {
    msg.mac2() == [0u8; COOKIE_LEN]
}

/// What a source's cookie covers: its IP (4 or 16 bytes) and port (big-endian), and the length.
fn cookie_input(src: SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match src {
        SocketAddr::V4(a) => {
            b[..4].copy_from_slice(&a.ip().octets());
            4
        }
        SocketAddr::V6(a) => {
            b[..16].copy_from_slice(&a.ip().octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (b, n + 2)
}

/// Handshake messages [`CookieChecker::validate_many`] computes the MACs of together (the BLAKE2s
/// lanes take up to 16; the worker holds and screens 8 at a time).
pub const BATCH: usize = 8;

/// One message of a batch for [`CookieChecker::validate_many`]: the message and its source in,
/// the state and the cookie reply out.
pub struct Screening<'a> {
    /// The handshake message (initiation or response).
    pub msg: &'a dyn MacMessage,
    /// Where it came from.
    pub src: SocketAddr,
    /// What [`CookieChecker::validate`] would say.
    pub state: MacState,
    /// Under load for [`MacState::ValidMacButNoCookie`]: the cookie reply.
    pub reply: Option<Reply>,
}

impl<'a> Screening<'a> {
    /// `msg` from `src`, not validated yet.
    pub fn new(msg: &'a dyn MacMessage, src: SocketAddr) -> Self {
        Screening { msg, src, state: MacState::Invalid, reply: None }
    }
}

/// `MAC(secret, source IP ‖ source port big-endian)`, from the secret's precomputed state.
fn cookie_for(state: &MacKey, src: SocketAddr) -> Zeroizing<[u8; COOKIE_LEN]> {
    let (b, n) = cookie_input(src);
    Zeroizing::new(mac_keyed(state, &b[..n]))
}

/// Why a cookie reply was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Shorter than a cookie reply.
    #[error("cookie reply shorter than {COOKIE_REPLY_LEN} bytes")]
    Truncated,
    /// Longer than a cookie reply.
    #[error("cookie reply longer than {COOKIE_REPLY_LEN} bytes")]
    Oversized,
    /// The header is not type 3 followed by three zero bytes.
    #[error("not a cookie reply")]
    WrongType,
    /// No handshake message with a mac1 was sent since the last cookie was accepted.
    #[error("cookie reply without an outstanding mac1")]
    NoMac1Sent,
    /// The encrypted cookie did not open (wrong key, or not for the mac1 we last sent).
    #[error("could not decrypt cookie reply")]
    Decrypt,
}

/// The initiator side for one peer (kernel `struct cookie`): adds MACs to the handshake
/// messages we send the peer and takes in its cookie replies. It holds the two keys derived
/// from the peer's public key and a [`CookieJar`] for the state.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CookieState {
    mac1_key: [u8; KEY_LEN],
    decryption_key: [u8; KEY_LEN],
    jar: CookieJar,
}

impl core::fmt::Debug for CookieState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&self.jar, f)
    }
}

impl CookieState {
    /// State for the peer whose static public key is `peer_public_key` (kernel
    /// `wg_cookie_init` + `wg_cookie_checker_precompute_peer_keys`).
    pub fn new(peer_public_key: &[u8; KEY_LEN]) -> Self {
        CookieState {
            mac1_key: precompute_key(peer_public_key, WG_LABEL_MAC1),
            decryption_key: precompute_key(peer_public_key, WG_LABEL_COOKIE),
            jar: CookieJar::new(),
        }
    }

    /// Write mac1 and mac2 into the outgoing handshake message `msg` (kernel
    /// `wg_cookie_add_mac_to_packet`). mac2 is zero unless we hold a cookie younger than
    /// [`COOKIE_SECRET_MAX_AGE`] − [`COOKIE_SECRET_LATENCY`].
    pub fn add_macs<M: MacMessageMut>(&mut self, now: Timestamp, msg: &mut M) {
        self.jar.add_macs_with(&self.mac1_key, now, msg);
    }

    /// Take in a cookie reply (kernel `wg_cookie_message_consume`, after the caller found this
    /// peer by the reply's receiver index). On success the cookie is used by the next
    /// [`add_macs`](Self::add_macs) and no further reply is accepted until one is sent.
    pub fn consume_reply<T: AsRef<[u8]>>(&mut self, now: Timestamp, reply: &CookieReply<T>) -> Result<(), CookieError> {
        self.jar.consume_reply_with(&self.decryption_key, now, reply)
    }
}

/// [`CookieState`] without the keys (48 bytes instead of 112): the last mac1 sent and the
/// latest cookie. The caller hands in the peer's public key and the key each step needs is
/// derived then (one BLAKE2s per handshake message sent or cookie reply taken in), so a device
/// keeps only this per peer, and only once it has sent the peer a handshake message.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub struct CookieJar {
    last_mac1_sent: [u8; COOKIE_LEN],
    cookie: [u8; COOKIE_LEN],
    #[zeroize(skip)]
    birth: Timestamp,
    have_sent_mac1: bool,
    is_valid: bool,
}

impl core::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieState")
            .field("have_sent_mac1", &self.have_sent_mac1)
            .field("is_valid", &self.is_valid)
            .field("birth", &self.birth)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// No mac1 sent, no cookie.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`CookieState::add_macs`] for the peer whose static public key is `peer_public_key`.
    pub fn add_macs<M: MacMessageMut>(&mut self, peer_public_key: &[u8; KEY_LEN], now: Timestamp, msg: &mut M) {
        let key = Zeroizing::new(precompute_key(peer_public_key, WG_LABEL_MAC1));
        self.add_macs_with(&key, now, msg);
    }

    /// [`CookieState::consume_reply`] for the peer whose static public key is
    /// `peer_public_key`.
    pub fn consume_reply<T: AsRef<[u8]>>(
        &mut self,
        peer_public_key: &[u8; KEY_LEN],
        now: Timestamp,
        reply: &CookieReply<T>,
    ) -> Result<(), CookieError> {
        let key = Zeroizing::new(precompute_key(peer_public_key, WG_LABEL_COOKIE));
        self.consume_reply_with(&key, now, reply)
    }

    fn add_macs_with<M: MacMessageMut>(&mut self, mac1_key: &[u8; KEY_LEN], now: Timestamp, msg: &mut M) {
        let mac1 = mac(mac1_key, &[msg.mac1_covered()]);
        msg.set_mac1(&mac1);
        self.last_mac1_sent = mac1;
        self.have_sent_mac1 = true;
        let fresh =
            self.is_valid && !self.birth.has_expired(COOKIE_SECRET_MAX_AGE.saturating_sub(COOKIE_SECRET_LATENCY), now);
        let mac2 = if fresh { mac(&self.cookie, &[msg.mac2_covered()]) } else { [0u8; COOKIE_LEN] };
        msg.set_mac2(&mac2);
    }

    fn consume_reply_with<T: AsRef<[u8]>>(
        &mut self,
        decryption_key: &[u8; KEY_LEN],
        now: Timestamp,
        reply: &CookieReply<T>,
    ) -> Result<(), CookieError> {
        match reply.as_ref().len().cmp(&COOKIE_REPLY_LEN) {
            core::cmp::Ordering::Less => return Err(CookieError::Truncated),
            core::cmp::Ordering::Greater => return Err(CookieError::Oversized),
            core::cmp::Ordering::Equal => {}
        }
        if reply.header() != u32::from(MESSAGE_HANDSHAKE_COOKIE) {
            return Err(CookieError::WrongType);
        }
        if !self.have_sent_mac1 {
            return Err(CookieError::NoMac1Sent);
        }
        let sealed = reply.encrypted_cookie().try_into().map_err(|_| CookieError::Truncated)?;
        let cookie = Zeroizing::new(
            xopen_cookie(decryption_key, &reply.nonce(), &self.last_mac1_sent, sealed)
                .map_err(|_| CookieError::Decrypt)?,
        );
        self.cookie = *cookie;
        self.birth = now;
        self.is_valid = true;
        self.have_sent_mac1 = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
