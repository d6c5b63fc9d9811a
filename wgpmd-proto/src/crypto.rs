//! The cryptographic primitives WireGuard is built from, behind one small API.
//!
//! | primitive | implementation | why |
//! |---|---|---|
//! | ChaCha20-Poly1305 (data messages) | `wgpmd-aead`'s multi-lane bursts, in `device::burst` (not in this module) | up to 16 messages of a burst at once, faster than any one-message implementation measured, key material wiped after each burst (the repository's docs/PERFORMANCE.md) |
//! | ChaCha20-Poly1305, one message with a prepared key ([`AeadKey`]) | `ring` | only for tests and the benchmarks' references (`Keypair::seal`/`open`): the daemon does not use it |
//! | ChaCha20-Poly1305 (handshake fields: [`aead_seal`], [`aead_open`]) | `wgpmd-aead`'s portable reference (`wgpmd_aead::portable`) | no ring key schedule is made (and left unwiped) per handshake; it wipes its copies of key material; for one short message it is faster than a one-lane SIMD burst (docs/PERFORMANCE.md) |
//! | XChaCha20-Poly1305 (cookie replies: [`xseal_cookie`], [`xopen_cookie`]; a burst's replies: [`xseal_cookies`]) | `wgpmd-aead`'s HChaCha20 and ChaCha20-Poly1305: the portable references (one reply), or its multi-lane calls (a burst's replies: one HChaCha20 call, one AEAD call) | neither ring nor `wgpmd-aead` has XChaCha; composed this way a cookie reply costs a fraction of RustCrypto's `XChaCha20Poly1305` (cookie replies are what a flood costs under load) |
//! | BLAKE2s (HASH, MAC, HMAC, KDF) | `blake2` | RustCrypto's, which boringtun uses too; HMAC is composed here (no `hmac` crate) |
//! | BLAKE2s MAC of one message from a precomputed key state ([`mac_keyed`]: a lone message's mac1, a source's cookie) | `wgpmd-aead`'s portable BLAKE2s (`wgpmd_aead::blake2s::mac_one`) | the key block is compressed once per key, not per message: a mac1 costs two compressions instead of three |
//! | BLAKE2s MACs of a burst's handshake messages ([`mac_many`]: mac1, cookies, mac2) | `wgpmd-aead`'s BLAKE2s lanes (`wgpmd_aead::blake2s`: 16 messages at once with AVX-512, 8 with AVX2; run-time dispatch), the mac1 key's and the cookie secret's states precomputed ([`MacKey`]) | a burst's MACs together cost a fraction of `blake2` one at a time, and the fixed keys' blocks are compressed once, not per message (docs/PERFORMANCE.md, "Screening a burst's handshake messages together" and "BLAKE2s lanes with precomputed key states") |
//! | X25519 | `aws-lc-rs` | twice as fast as x25519-dalek here, constant time, with run-time CPU dispatch (docs/PERFORMANCE.md); ring offers X25519 only for single-use ephemeral keys |
//!
//! Every secret type here zeroizes on drop except [`AeadKey`]: ring keeps its key schedule in a
//! private type that it does not wipe. ([`PrivateKey`]'s key object is aws-lc's, which wipes
//! its memory when it frees it.) Comparisons of secret-dependent values use [`ct_eq`].

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use blake2::digest::{FixedOutput, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::messages::{COOKIE_LEN, COOKIE_NONCE_LEN, HASH_LEN, KEY_LEN, TAG_LEN};

/// A 32-byte secret (symmetric key, chaining key, pre-shared key) that is wiped on drop.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct Secret(pub [u8; KEY_LEN]);

impl Secret {
    /// The all-zero secret (used for "no pre-shared key").
    pub const fn zero() -> Self {
        Secret([0u8; KEY_LEN])
    }
    /// Whether every byte is zero, in constant time.
    pub fn is_zero(&self) -> bool {
        ct_eq(&self.0, &[0u8; KEY_LEN])
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // The differences OR-ed together without a branch, then one constant-time comparison of
    // the result (subtle's slice comparison calls its non-inlined barrier once per byte).
    let diff = core::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)));
    a.len() == b.len() && bool::from(diff.ct_eq(&0))
}

/// BLAKE2s-256 over the concatenation of `parts` (Noise `HASH`).
pub fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output (WireGuard `MAC`, used for MAC1, MAC2 and cookies).
/// `key` is at most 32 bytes.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; COOKIE_LEN] {
    // The key is 16 or 32 bytes everywhere in WireGuard, which `new_with_salt_and_personal`
    // accepts; it fails only for keys over 32 bytes.
    let mut m = Blake2sMac::<blake2::digest::consts::U16>::new_with_salt_and_personal(key, &[], &[])
        .expect("BLAKE2s MAC key of at most 32 bytes");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// A MAC key's precomputed BLAKE2s state (the parameter and key blocks compressed) for
/// [`MacJob::keyed`]: for keys that MAC many inputs (the device's mac1 key, the cookie secret
/// between two rotations). Wiped on drop.
#[derive(Clone, Zeroize)]
pub struct MacKey(wgpmd_aead::blake2s::KeyedState);

impl MacKey {
    /// The state of `key` for [`mac`]'s 16-byte output.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // A 32-byte key and a 16-byte output: both in the 1..=32 that `KeyedState` takes.
        MacKey(wgpmd_aead::blake2s::KeyedState::new(key, COOKIE_LEN).expect("32-byte key, 16-byte BLAKE2s MAC"))
    }
}

impl ZeroizeOnDrop for MacKey {}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// [`mac`] of `input` from a precomputed key state, one message on its own: the key block was
/// compressed once, so this compresses only the input's blocks (two for a mac1, one for a
/// source's cookie, against three and two from the raw key). The result is wiped from the
/// scratch job; the caller's copy is its own.
pub fn mac_keyed(key: &MacKey, input: &[u8]) -> [u8; COOKIE_LEN] {
    let mut job = wgpmd_aead::blake2s::MacJob::keyed(&key.0, input);
    // A keyed start is never refused (its lengths were checked when the state was made).
    wgpmd_aead::blake2s::mac_one(&mut job).expect("BLAKE2s MAC from a keyed state");
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&job.out[..COOKIE_LEN]);
    job.out.zeroize();
    out
}

/// Where a [`MacJob`] starts: a raw key or a [`MacKey`].
#[derive(Clone, Copy)]
pub enum MacStart<'a> {
    /// A key of at most 32 bytes, compressed as the job's first block.
    Key(&'a [u8]),
    /// A precomputed key state: only the input's blocks are compressed.
    State(&'a MacKey),
}

/// One keyed BLAKE2s-128 ([`mac`]) of a batch for [`mac_many`]: its key (raw or precomputed)
/// over `input`; [`mac_many`] writes the result to `out`.
pub struct MacJob<'a> {
    /// The key (16 or 32 bytes in WireGuard) or its precomputed state.
    pub key: MacStart<'a>,
    /// What is MACed (one part: the callers' inputs are contiguous or copied together).
    pub input: &'a [u8],
    /// The MAC, once [`mac_many`] ran.
    pub out: [u8; COOKIE_LEN],
}

impl<'a> MacJob<'a> {
    /// A job for `MAC(key, input)`.
    pub fn new(key: &'a [u8], input: &'a [u8]) -> Self {
        MacJob { key: MacStart::Key(key), input, out: [0; COOKIE_LEN] }
    }

    /// A job for `MAC(key, input)` from `key`'s precomputed state.
    pub fn keyed(key: &'a MacKey, input: &'a [u8]) -> Self {
        MacJob { key: MacStart::State(key), input, out: [0; COOKIE_LEN] }
    }
}

/// Fewer jobs than this in a call of [`mac_many`] or [`xseal_cookies`] run one at a time on the
/// portable code: a SIMD lane kernel costs its whole width (8 or 16 lanes) however few are busy,
/// and below this the one-at-a-time code is cheaper (docs/PERFORMANCE.md, "Cheaper screening").
pub const LANES_FROM: usize = 3;

/// [`mac`] of every job, up to 16 at once (`wgpmd_aead::blake2s` lanes: 16 with AVX-512, 8 with
/// AVX2, run-time dispatch; fewer than [`LANES_FROM`] one at a time): the same results as [`mac`]
/// one at a time. A job from a [`MacKey`]
/// skips its key block; a raw key's block is compressed in the lanes with the input blocks.
/// The lanes' copies of keys, states and outputs are wiped.
///
/// # Panics
/// If a raw key is longer than 32 bytes (as [`mac`]).
pub fn mac_many(jobs: &mut [MacJob<'_>]) {
    use wgpmd_aead::blake2s::{MacJob as Lane, MAX_LEN};
    let engine = wgpmd_aead::Lanes::new();
    for chunk in jobs.chunks_mut(wgpmd_aead::MAX_LANES) {
        let mut lanes: arrayvec::ArrayVec<Lane<'_>, { wgpmd_aead::MAX_LANES }> = chunk
            .iter()
            .map(|j| match j.key {
                MacStart::Key(k) => Lane::key(k, COOKIE_LEN, j.input),
                MacStart::State(s) => Lane::keyed(&s.0, j.input),
            })
            .collect();
        if lanes.len() < LANES_FROM {
            // A lane kernel costs its full width however few lanes are busy: a few jobs are
            // cheaper one by one.
            for l in lanes.iter_mut() {
                wgpmd_aead::blake2s::mac_one(l).expect("BLAKE2s MAC keys of at most 32 bytes");
            }
        } else {
            engine.mac_lanes(&mut lanes).expect("BLAKE2s MAC keys of at most 32 bytes");
        }
        for (j, l) in chunk.iter_mut().zip(lanes.iter_mut()) {
            j.out.copy_from_slice(&l.out[..COOKIE_LEN]);
            l.out = [0; MAX_LEN];
        }
    }
}

const BLAKE2S_BLOCK: usize = 64;

/// HMAC-BLAKE2s (RFC 2104 over BLAKE2s-256), as Noise defines it.
pub fn hmac(key: &[u8; HASH_LEN], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ipad = [0x36u8; BLAKE2S_BLOCK];
    let mut opad = [0x5cu8; BLAKE2S_BLOCK];
    for i in 0..HASH_LEN {
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, ipad);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let mut inner_hash: [u8; HASH_LEN] = inner.finalize().into();
    let mut outer = Blake2s256::new();
    Digest::update(&mut outer, opad);
    Digest::update(&mut outer, inner_hash);
    let out = outer.finalize().into();
    // Only the first HASH_LEN bytes of each pad depend on the key; the rest are constants.
    ipad[..HASH_LEN].zeroize();
    opad[..HASH_LEN].zeroize();
    inner_hash.zeroize();
    out
}

/// Noise `KDF` with one, two or three outputs, all derived from one extraction.
pub fn kdf<const N: usize>(chaining_key: &[u8; HASH_LEN], input: &[u8]) -> [Secret; N] {
    debug_assert!((1..=3).contains(&N));
    let mut prk = hmac(chaining_key, &[input]);
    let mut out: [Secret; N] = core::array::from_fn(|_| Secret::zero());
    let mut prev = [0u8; HASH_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        let ctr = [(i + 1) as u8];
        prev = if i == 0 { hmac(&prk, &[&ctr]) } else { hmac(&prk, &[&prev, &ctr]) };
        slot.0 = prev;
    }
    prk.zeroize();
    prev.zeroize();
    out
}

/// The 96-bit AEAD nonce: 4 zero bytes followed by the little-endian 64-bit counter.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Error from an AEAD open: the tag did not verify (or the input was shorter than a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication tag did not verify")]
pub struct AeadError;

/// A ChaCha20-Poly1305 key prepared for repeated use (ring's key schedule). Not wiped on drop:
/// ring's key type has no zeroizing `Drop`, and its fields are private.
pub struct AeadKey(LessSafeKey);

impl AeadKey {
    /// Prepare `key` for sealing and opening.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which the type guarantees.
        AeadKey(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20-Poly1305 key")))
    }

    /// Encrypt `buf` in place and return the tag.
    pub fn seal_in_place(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(counter), aead::Aad::from(aad), buf)
            .expect("ChaCha20-Poly1305 input within ring's 256 GiB limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypt `buf` (ciphertext followed by the 16-byte tag) in place; returns the plaintext
    /// length (`buf.len() - 16`). On error the buffer's contents are unspecified.
    pub fn open_in_place(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError> {
        if buf.len() < TAG_LEN {
            return Err(AeadError);
        }
        self.0.open_in_place(nonce(counter), aead::Aad::from(aad), buf).map(|p| p.len()).map_err(|_| AeadError)
    }
}

/// Seals `buf` in place under `key` and the 12-byte `nonce`; returns the tag. The handshake and
/// cookie AEADs use `wgpmd-aead`'s portable reference, one message at a time: for these short
/// messages it is faster than a one-lane SIMD burst (docs/PERFORMANCE.md), no ring key schedule
/// is made (ring's is never wiped), and it wipes its copies of key material.
fn seal_one(key: &[u8; KEY_LEN], nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    wgpmd_aead::portable::seal(key, &nonce, aad, buf)
}

/// Opens `buf` in place: verify, then decrypt (on failure `buf` keeps the ciphertext).
fn open_one(key: &[u8; KEY_LEN], nonce: [u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), AeadError> {
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| AeadError)?;
    if wgpmd_aead::portable::open(key, &nonce, aad, buf, &tag) {
        Ok(())
    } else {
        Err(AeadError)
    }
}

/// One-shot ChaCha20-Poly1305 seal into `out` (`plain.len() + 16` bytes), for handshake fields.
pub fn aead_seal(key: &[u8; KEY_LEN], counter: u64, aad: &[u8], plain: &[u8], out: &mut [u8]) {
    let n = plain.len();
    out[..n].copy_from_slice(plain);
    let tag = seal_one(key, wgpmd_aead::wireguard_nonce(counter), aad, &mut out[..n]);
    out[n..n + TAG_LEN].copy_from_slice(&tag);
}

/// One-shot ChaCha20-Poly1305 open of `sealed` into `out` (`sealed.len() - 16` bytes).
pub fn aead_open(
    key: &[u8; KEY_LEN],
    counter: u64,
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), AeadError> {
    if sealed.len() < TAG_LEN || out.len() != sealed.len() - TAG_LEN {
        return Err(AeadError);
    }
    let (ct, tag) = sealed.split_at(out.len());
    let mut tmp = [0u8; 48];
    let buf = tmp.get_mut(..ct.len()).ok_or(AeadError)?;
    buf.copy_from_slice(ct);
    // Verify, then decrypt: on failure `buf` still holds the ciphertext.
    let r = open_one(key, wgpmd_aead::wireguard_nonce(counter), aad, buf, tag);
    if r.is_ok() {
        out.copy_from_slice(buf);
    }
    tmp.zeroize();
    r
}

/// The XChaCha20-Poly1305 construction (draft-irtf-cfrg-xchacha): HChaCha20 of the key and the
/// nonce's first 16 bytes is the ChaCha20-Poly1305 key, and `0^4 ‖ nonce[16..24]` its nonce.
/// Both are `wgpmd-aead`'s portable references. WireGuard's cookie key is a hash of a public
/// key, not a secret; the subkey is wiped anyway.
fn xchacha_key(key: &[u8; KEY_LEN], nonce: &[u8; COOKIE_NONCE_LEN]) -> (Zeroizing<[u8; KEY_LEN]>, [u8; 12]) {
    let mut h = [0u8; 16];
    h.copy_from_slice(&nonce[..16]);
    (Zeroizing::new(wgpmd_aead::hchacha::hchacha(key, &h)), xchacha_nonce(nonce))
}

/// The ChaCha20-Poly1305 nonce of an XChaCha20 nonce: 4 zero bytes and its last 8 bytes.
fn xchacha_nonce(nonce: &[u8; COOKIE_NONCE_LEN]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..]);
    n
}

/// XChaCha20-Poly1305 seal of a cookie: `out` receives 16 bytes of ciphertext and the tag.
pub fn xseal_cookie(
    key: &[u8; KEY_LEN],
    nonce: &[u8; COOKIE_NONCE_LEN],
    aad: &[u8],
    cookie: &[u8; COOKIE_LEN],
) -> [u8; COOKIE_LEN + TAG_LEN] {
    let (sub, n) = xchacha_key(key, nonce);
    let mut out = [0u8; COOKIE_LEN + TAG_LEN];
    out[..COOKIE_LEN].copy_from_slice(cookie);
    let tag = seal_one(&sub, n, aad, &mut out[..COOKIE_LEN]);
    out[COOKIE_LEN..].copy_from_slice(&tag);
    out
}

/// One cookie for [`xseal_cookies`]: its nonce and additional data in, `sealed` out.
pub struct CookieSeal {
    /// The 24-byte XChaCha20 nonce.
    pub nonce: [u8; COOKIE_NONCE_LEN],
    /// The additional data (a cookie reply's: the triggering message's mac1).
    pub aad: [u8; COOKIE_LEN],
    /// In: the cookie. Out: the ciphertext and the tag, as [`xseal_cookie`] returns them.
    pub sealed: [u8; COOKIE_LEN + TAG_LEN],
}

/// [`xseal_cookie`] of every job under `key`, eight at a time: the HChaCha20 subkeys in one
/// multi-lane call (`wgpmd_aead::Lanes::hchacha_lanes`), then one multi-lane ChaCha20-Poly1305
/// call (`wgpmd_aead::Lanes`) for all; a group of fewer than [`LANES_FROM`], one at a time. The
/// same bytes as [`xseal_cookie`] one at a time. Key material is wiped.
pub fn xseal_cookies(key: &[u8; KEY_LEN], jobs: &mut [CookieSeal]) {
    const LANES: usize = 8;
    let engine = wgpmd_aead::Lanes::new();
    for chunk in jobs.chunks_mut(LANES) {
        if chunk.len() < LANES_FROM {
            for j in chunk.iter_mut() {
                let mut cookie = [0u8; COOKIE_LEN];
                cookie.copy_from_slice(&j.sealed[..COOKIE_LEN]);
                j.sealed = xseal_cookie(key, &j.nonce, &j.aad, &cookie);
                cookie.zeroize();
            }
            continue;
        }
        let mut subs: Zeroizing<[[u8; KEY_LEN]; LANES]> = Zeroizing::new([[0; KEY_LEN]; LANES]);
        let mut nonces = [[0u8; 12]; LANES];
        {
            let mut h: arrayvec::ArrayVec<wgpmd_aead::hchacha::HChaCha<'_>, LANES> = chunk
                .iter()
                .map(|j| {
                    let mut n = [0u8; 16];
                    n.copy_from_slice(&j.nonce[..16]);
                    wgpmd_aead::hchacha::HChaCha::new(key, n)
                })
                .collect();
            // At most eight jobs: always within the engine's limit.
            if engine.hchacha_lanes(&mut h).is_err() {
                h.iter_mut().for_each(|j| j.out = wgpmd_aead::hchacha::hchacha(j.key, &j.nonce));
            }
            for (((s, n), j), c) in subs.iter_mut().zip(nonces.iter_mut()).zip(h.iter_mut()).zip(chunk.iter()) {
                *s = j.out;
                j.out.zeroize();
                *n = xchacha_nonce(&c.nonce);
            }
        }
        let mut lanes: arrayvec::ArrayVec<wgpmd_aead::Lane<'_>, LANES> = chunk
            .iter_mut()
            .zip(subs.iter())
            .zip(nonces)
            .map(|((j, sub), n)| {
                let (buf, _) = j.sealed.split_at_mut(COOKIE_LEN);
                wgpmd_aead::Lane::new(sub, n, &j.aad, buf)
            })
            .collect();
        let tags: arrayvec::ArrayVec<[u8; TAG_LEN], LANES> = match engine.seal_lanes(&mut lanes) {
            Ok(()) => lanes.iter().map(|l| l.tag).collect(),
            // Eight 16-byte lanes are always within the engine's limits; seal one by one anyway.
            Err(_) => lanes.iter_mut().map(|l| wgpmd_aead::portable::seal(l.key, &l.nonce, l.aad, l.buf)).collect(),
        };
        drop(lanes);
        for (j, t) in chunk.iter_mut().zip(tags) {
            j.sealed[COOKIE_LEN..].copy_from_slice(&t);
        }
    }
}

/// XChaCha20-Poly1305 open of an encrypted cookie.
pub fn xopen_cookie(
    key: &[u8; KEY_LEN],
    nonce: &[u8; COOKIE_NONCE_LEN],
    aad: &[u8],
    sealed: &[u8; COOKIE_LEN + TAG_LEN],
) -> Result<[u8; COOKIE_LEN], AeadError> {
    let (sub, n) = xchacha_key(key, nonce);
    let mut c = [0u8; COOKIE_LEN];
    c.copy_from_slice(&sealed[..COOKIE_LEN]);
    let r = open_one(&sub, n, aad, &mut c, &sealed[COOKIE_LEN..]);
    match r {
        Ok(()) => Ok(c),
        Err(e) => {
            c.zeroize();
            Err(e)
        }
    }
}

/// A static or ephemeral X25519 private key, clamped on use, wiped on drop.
///
/// The key lives in aws-lc's key object, made once from the 32 bytes (aws-lc computes the public
/// key then, so [`PrivateKey::public_key`] is a copy). aws-lc frees the object through
/// `OPENSSL_free`, which overwrites every allocation before releasing it; the bytes passed in
/// are wiped here. X25519 itself is aws-lc's formally verified s2n-bignum code, chosen at run
/// time: the MULX/ADX version where the CPU has BMI2 and ADX, a generic one otherwise (the
/// repository's docs/PERFORMANCE.md, "X25519: which implementation, by the numbers").
pub struct PrivateKey(agreement::PrivateKey);

impl PrivateKey {
    /// Any 32 bytes are a valid private key (clamping happens inside X25519).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self::import(&Zeroizing::new(bytes))
    }
    /// A fresh key from the injected RNG.
    pub fn generate<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        Self::import(&bytes)
    }
    /// aws-lc's key object for `bytes`; the caller wipes them.
    fn import(bytes: &[u8; KEY_LEN]) -> Self {
        // aws-lc refuses only a key of the wrong length, which the type rules out, or a failed
        // allocation.
        PrivateKey(
            agreement::PrivateKey::from_private_key(&agreement::X25519, bytes)
                .expect("aws-lc accepts any 32-byte X25519 private key"),
        )
    }
    /// The matching public key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        let public = self.0.compute_public_key().expect("aws-lc keeps the X25519 public key with the private one");
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(public.as_ref());
        out
    }
    /// The key's bytes (for the UAPI `get`, which shows the private key).
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        // The buffer aws-lc-rs returns wipes itself on drop.
        let seed: Curve25519SeedBin<'_> =
            self.0.as_be_bytes().expect("aws-lc returns the 32 bytes of an X25519 private key");
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(seed.as_ref());
        out
    }
    /// X25519 with `public`; `None` when the result is all zeros (a low-order point), which
    /// WireGuard treats as a failed handshake.
    pub fn dh(&self, public: &[u8; KEY_LEN]) -> Option<Secret> {
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, public);
        // aws-lc fails the agreement itself on an all-zero result (RFC 7748 section 6.1); the
        // check below keeps that rule here, whatever the library does.
        let shared = agreement::agree(&self.0, peer, (), |s| {
            let mut out = Secret::zero();
            out.0.copy_from_slice(s);
            Ok(out)
        })
        .ok()?;
        (!shared.is_zero()).then_some(shared)
    }
}

impl Clone for PrivateKey {
    /// A new key object from the same bytes (aws-lc's key type is not `Clone`); rare: the key
    /// changes with configuration only.
    fn clone(&self) -> Self {
        Self::import(&Zeroizing::new(self.to_bytes()))
    }
}

/// Wiped on drop: aws-lc's `OPENSSL_free` overwrites the key object before freeing it.
impl ZeroizeOnDrop for PrivateKey {}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_finds_every_difference() {
        let a: Vec<u8> = (0..48u8).collect();
        for len in [0usize, 1, 16, 32, 48] {
            assert!(ct_eq(&a[..len], &a[..len]));
            for at in 0..len {
                for bit in 0..8 {
                    let mut b = a[..len].to_vec();
                    b[at] ^= 1 << bit;
                    assert!(!ct_eq(&a[..len], &b), "length {len}, byte {at}, bit {bit}");
                }
            }
        }
        assert!(!ct_eq(&a[..16], &a[..15]), "lengths differ");
        assert!(!ct_eq(&a[..15], &a[..16]), "lengths differ");
        assert!(!ct_eq(&[0u8; 16], &a[..16]));
    }
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use rand::SeedableRng;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// RFC 8439 section 2.8.2 AEAD test vector (the nonce there has a non-zero constant part, so
    /// it goes through ring directly; our counter-nonce wrapper is checked against the
    /// chacha20poly1305 crate below).
    #[test]
    fn rfc8439_aead_vector() {
        let key: [u8; 32] =
            unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f").try_into().unwrap();
        let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let mut pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let tag =
            k.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aead::Aad::from(&aad), &mut pt).unwrap();
        assert_eq!(&pt[..16], &unhex("d31a8d34648e60db7b86afbc53ef7ec2")[..]);
        assert_eq!(tag.as_ref(), &unhex("1ae10b594f09e26a7e902ecbd0600691")[..]);
        let c = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        let mut pt2 = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag2 = c.encrypt_in_place_detached((&nonce).into(), &aad, &mut pt2).unwrap();
        assert_eq!(pt, pt2);
        assert_eq!(tag.as_ref(), tag2.as_slice());
    }

    #[test]
    fn ring_and_rustcrypto_agree_with_counter_nonces() {
        let key = [7u8; 32];
        let k = AeadKey::new(&key);
        let c = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        for (counter, len) in [(0u64, 0usize), (1, 1), (0xdead_beef_cafe, 64), (u64::MAX - 1, 1420)] {
            let mut a: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut b = a.clone();
            let tag = k.seal_in_place(counter, b"aad", &mut a);
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&counter.to_le_bytes());
            let tag2 = c.encrypt_in_place_detached((&n).into(), b"aad", &mut b).unwrap();
            assert_eq!(a, b);
            assert_eq!(&tag[..], tag2.as_slice());
            a.extend_from_slice(&tag);
            assert_eq!(k.open_in_place(counter, b"aad", &mut a), Ok(len));
            a[0] ^= 1;
            assert_eq!(k.open_in_place(counter, b"aad", &mut a), Err(AeadError));
        }
    }

    /// RFC 7693 appendix B gives BLAKE2b("abc"); BLAKE2s-256("abc") is from the BLAKE2 reference.
    #[test]
    fn blake2s_vectors() {
        assert_eq!(
            hash(&[b"a", b"bc"]).to_vec(),
            unhex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
    }

    #[test]
    fn hmac_matches_the_hmac_crate_construction() {
        // HMAC-BLAKE2s via the generic `hmac` crate (a boringtun dependency) as a cross-check.
        use hmac_ref::Mac;
        type H = hmac_ref::SimpleHmac<Blake2s256>;
        let key = [0x42u8; 32];
        let mut m = <H as hmac_ref::digest::KeyInit>::new_from_slice(&key).unwrap();
        Mac::update(&mut m, b"hello ");
        Mac::update(&mut m, b"world");
        let want = m.finalize().into_bytes();
        assert_eq!(hmac(&key, &[b"hello ", b"world"]).as_slice(), want.as_slice());
    }

    fn key32(s: &str) -> [u8; 32] {
        unhex(s).try_into().unwrap()
    }

    /// RFC 7748 section 6.1: both parties' key pairs and their shared secret.
    #[test]
    fn x25519_rfc7748_section_6_1() {
        let a = PrivateKey::from_bytes(key32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let b = PrivateKey::from_bytes(key32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
        let (a_pub, b_pub) = (a.public_key(), b.public_key());
        assert_eq!(a_pub, key32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        assert_eq!(b_pub, key32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
        let k = key32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(a.dh(&b_pub).unwrap().0, k);
        assert_eq!(b.dh(&a_pub).unwrap().0, k);
    }

    /// RFC 7748 section 5.2: the two single-multiplication vectors. The second u-coordinate has
    /// its top bit set, which X25519 must ignore.
    #[test]
    fn x25519_rfc7748_section_5_2() {
        for (scalar, u, out) in [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ] {
            assert_eq!(PrivateKey::from_bytes(key32(scalar)).dh(&key32(u)).unwrap().0, key32(out));
        }
    }

    /// RFC 7748 section 5.2, iterated: k = u = 9; each round k, u = X25519(k, u), k. The values
    /// after 1 and 1,000 rounds (the 1,000,000-round value would take the test half a minute).
    #[test]
    fn x25519_rfc7748_iterated_1_and_1000() {
        let mut k = [0u8; 32];
        k[0] = 9;
        let mut u = k;
        for round in 1..=1000 {
            let next = PrivateKey::from_bytes(k).dh(&u).unwrap().0;
            (u, k) = (k, next);
            if round == 1 {
                assert_eq!(k, key32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"));
            }
        }
        assert_eq!(k, key32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"));
    }

    /// Points of small order give an all-zero result for every clamped scalar: `dh` must refuse
    /// them (RFC 7748 section 6.1; WireGuard fails the handshake). The list: 0, 1, the two
    /// points of order 8, p - 1, the non-canonical p and p + 1 (0 and 1 again), and each of
    /// these with the top bit set (which X25519 ignores).
    #[test]
    fn x25519_low_order_points_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let keys =
            [PrivateKey::generate(&mut rng), PrivateKey::from_bytes([0xff; 32]), PrivateKey::from_bytes([0; 32])];
        let order8 = [
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        ];
        let mut points = vec![[0u8; 32], key32(order8[0]), key32(order8[1])];
        let mut one = [0u8; 32];
        one[0] = 1;
        points.push(one);
        for low in [0xec, 0xed, 0xee] {
            // p - 1, p, p + 1 (p = 2^255 - 19); p and p + 1 are 0 and 1 again
            let mut x = [0xff; 32];
            x[0] = low;
            x[31] = 0x7f;
            points.push(x);
        }
        for p in points.clone() {
            let mut high = p;
            high[31] |= 0x80;
            points.push(high);
        }
        for k in &keys {
            for p in &points {
                assert!(k.dh(p).is_none(), "low-order point {} accepted", hex::encode(p));
            }
        }
        // and a point of large order is accepted by the same keys
        let good = PrivateKey::generate(&mut rng).public_key();
        assert!(keys.iter().all(|k| k.dh(&good).is_some()));
    }

    /// Against x25519-dalek (the previous backend, an independent implementation): public keys
    /// and shared secrets for random keys, both directions, and the byte round trip and clone.
    #[test]
    fn x25519_agrees_with_x25519_dalek() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        for _ in 0..200 {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            rand_core::RngCore::fill_bytes(&mut rng, &mut a);
            rand_core::RngCore::fill_bytes(&mut rng, &mut b);
            let (ka, kb) = (PrivateKey::from_bytes(a), PrivateKey::from_bytes(b));
            let (da, db) = (x25519_dalek::StaticSecret::from(a), x25519_dalek::StaticSecret::from(b));
            let (pa, pb) = (ka.public_key(), kb.public_key());
            assert_eq!(pa, x25519_dalek::PublicKey::from(&da).to_bytes());
            assert_eq!(pb, x25519_dalek::PublicKey::from(&db).to_bytes());
            let shared = ka.dh(&pb).unwrap().0;
            assert_eq!(shared, da.diffie_hellman(&x25519_dalek::PublicKey::from(pb)).to_bytes());
            assert_eq!(kb.dh(&pa).unwrap().0, shared);
            assert_eq!(ka.to_bytes(), a);
            let c = ka.clone();
            assert_eq!((c.to_bytes(), c.public_key()), (a, pa));
        }
    }

    /// Public keys are any 32 bytes, as in the kernel: the top bit is ignored and u-coordinates
    /// of p (= 2^255 - 19) and above are taken mod p, the same as x25519-dalek does. Checked on
    /// 9 + p (the base point, non-canonical), 2^255 - 1, and random keys with the top bit set.
    #[test]
    fn x25519_accepts_non_canonical_public_keys_like_x25519_dalek() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let k = PrivateKey::generate(&mut rng);
        let dk = x25519_dalek::StaticSecret::from(k.to_bytes());
        let dalek = |u: [u8; 32]| {
            let s = dk.diffie_hellman(&x25519_dalek::PublicKey::from(u));
            s.was_contributory().then(|| s.to_bytes())
        };
        let mut nine_plus_p = [0xff; 32];
        nine_plus_p[0] = 0xf6;
        nine_plus_p[31] = 0x7f;
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert_eq!(k.dh(&nine_plus_p).unwrap().0, k.dh(&nine).unwrap().0);
        let mut inputs = vec![nine_plus_p, [0xff; 32]];
        for _ in 0..20 {
            let mut u = PrivateKey::generate(&mut rng).public_key();
            u[31] |= 0x80;
            inputs.push(u);
        }
        for u in inputs {
            assert_eq!(k.dh(&u).map(|s| s.0), dalek(u), "u = {}", hex::encode(u));
            assert!(k.dh(&u).is_some());
        }
    }

    /// `generate` draws its 32 bytes from the injected RNG and nothing else.
    #[test]
    fn x25519_generate_uses_the_injected_rng() {
        let mut r1 = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let mut r2 = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let k = PrivateKey::generate(&mut r1);
        let mut bytes = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut r2, &mut bytes);
        assert_eq!(k.to_bytes(), bytes);
        assert_eq!(k.public_key(), PrivateKey::from_bytes(bytes).public_key());
        assert_ne!(PrivateKey::generate(&mut r1).to_bytes(), bytes);
    }

    /// Our XChaCha20-Poly1305 (`wgpmd-aead`'s HChaCha20 and ChaCha20-Poly1305) agrees with
    /// RustCrypto's XChaCha20Poly1305 (what boringtun uses), both
    /// ways, on random keys, nonces, cookies and AADs.
    #[test]
    fn xchacha_cookie_matches_rustcrypto() {
        use rand_core::RngCore;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        for _ in 0..200 {
            let (mut key, mut nonce, mut cookie, mut aad) = ([0u8; 32], [0u8; 24], [0u8; 16], [0u8; 16]);
            for b in [&mut key[..], &mut nonce[..], &mut cookie[..], &mut aad[..]] {
                rng.fill_bytes(b);
            }
            let c = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
            let mut reference = cookie;
            let tag = c.encrypt_in_place_detached((&nonce).into(), &aad, &mut reference).unwrap();
            let sealed = xseal_cookie(&key, &nonce, &aad, &cookie);
            assert_eq!(&sealed[..16], &reference[..]);
            assert_eq!(&sealed[16..], &tag[..]);
            assert_eq!(xopen_cookie(&key, &nonce, &aad, &sealed), Ok(cookie));
            let mut bad = sealed;
            bad[(rng.next_u32() % 32) as usize] ^= 1 << (rng.next_u32() % 8);
            assert!(xopen_cookie(&key, &nonce, &aad, &bad).is_err());
        }
    }

    #[test]
    fn xchacha_cookie_roundtrip_and_tamper() {
        let key = [9u8; 32];
        let nonce = [3u8; 24];
        let cookie = [5u8; 16];
        let sealed = xseal_cookie(&key, &nonce, b"mac1", &cookie);
        assert_eq!(xopen_cookie(&key, &nonce, b"mac1", &sealed), Ok(cookie));
        assert!(xopen_cookie(&key, &nonce, b"mac2", &sealed).is_err());
    }

    #[test]
    fn kdf_outputs_chain() {
        let ck = [1u8; 32];
        let [a, b, c] = kdf::<3>(&ck, b"input");
        let prk = hmac(&ck, &[b"input"]);
        assert_eq!(a.0, hmac(&prk, &[&[1]]));
        assert_eq!(b.0, hmac(&prk, &[&a.0, &[2]]));
        assert_eq!(c.0, hmac(&prk, &[&b.0, &[3]]));
        let [a1] = kdf::<1>(&ck, b"input");
        assert_eq!(a1.0, a.0);
    }

    #[test]
    fn aead_one_shot_roundtrip() {
        let key = [1u8; 32];
        let mut sealed = [0u8; 48];
        aead_seal(&key, 0, b"h", &[2u8; 32], &mut sealed);
        let mut out = [0u8; 32];
        aead_open(&key, 0, b"h", &sealed, &mut out).unwrap();
        assert_eq!(out, [2u8; 32]);
        sealed[47] ^= 1;
        assert!(aead_open(&key, 0, b"h", &sealed, &mut out).is_err());
    }

    /// `mac_many` gives `mac`'s results for any number of jobs, input lengths across block
    /// boundaries (the empty input included), key lengths, keys shared by neighbours or not, and
    /// jobs from a raw key or a precomputed state mixed.
    #[test]
    fn mac_many_matches_mac_one_at_a_time() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let keys: Vec<Vec<u8>> = [1usize, 16, 31, 32]
            .iter()
            .map(|&n| {
                let mut k = vec![0u8; n];
                rand_core::RngCore::fill_bytes(&mut rng, &mut k);
                k
            })
            .collect();
        let mut data = vec![0u8; 300];
        rand_core::RngCore::fill_bytes(&mut rng, &mut data);
        let state32 = MacKey::new(&keys[3].clone().try_into().unwrap());
        let mut keyed = 0;
        for count in [0usize, 1, 2, 3, 4, 7, 8, 9, 16, 17, 33] {
            for round in 0..20usize {
                let specs: Vec<(usize, usize, usize)> = (0..count)
                    .map(|i| {
                        let k = if round.is_multiple_of(2) {
                            (round / 2) % keys.len()
                        } else {
                            (i * 7 + round) % keys.len()
                        };
                        let start = (i * 13 + round) % 50;
                        let len = [0, 1, 6, 18, 60, 63, 64, 65, 92, 116, 128, 132, 200][(i + round) % 13];
                        (k, start, len)
                    })
                    .collect();
                // The 32-byte key also from its precomputed state, every other job.
                let mut jobs: Vec<MacJob<'_>> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, &(k, s, l))| match keys[k].len() {
                        32 if (i + round).is_multiple_of(2) => MacJob::keyed(&state32, &data[s..s + l]),
                        _ => MacJob::new(&keys[k], &data[s..s + l]),
                    })
                    .collect();
                mac_many(&mut jobs);
                keyed += jobs.iter().filter(|j| matches!(j.key, MacStart::State(_))).count();
                for (j, &(k, s, l)) in jobs.iter().zip(&specs) {
                    assert_eq!(j.out, mac(&keys[k], &[&data[s..s + l]]), "count {count} round {round}");
                }
            }
        }
        assert!(keyed > 100);
    }

    /// `mac_keyed` from a key's state gives `mac`'s result from the key, for the lengths a
    /// WireGuard MAC covers and across block boundaries (the empty input included).
    #[test]
    fn mac_keyed_matches_mac() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        for _ in 0..200 {
            let mut key = [0u8; KEY_LEN];
            rand_core::RngCore::fill_bytes(&mut rng, &mut key);
            let state = MacKey::new(&key);
            for len in [0usize, 1, 6, 18, 63, 64, 65, 116, 128, 132, 200] {
                let mut data = vec![0u8; len];
                rand_core::RngCore::fill_bytes(&mut rng, &mut data);
                assert_eq!(mac_keyed(&state, &data), mac(&key, &[&data]), "len {len}");
            }
        }
    }

    /// `xseal_cookies` gives `xseal_cookie`'s bytes, and they open.
    #[test]
    fn xseal_cookies_matches_xseal_cookie() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let mut key = [0u8; KEY_LEN];
        rand_core::RngCore::fill_bytes(&mut rng, &mut key);
        for count in [0usize, 1, 2, 3, 5, 8, 9, 10, 20] {
            let mut jobs: Vec<CookieSeal> = (0..count)
                .map(|_| {
                    let mut j = CookieSeal { nonce: [0; COOKIE_NONCE_LEN], aad: [0; COOKIE_LEN], sealed: [0; 32] };
                    rand_core::RngCore::fill_bytes(&mut rng, &mut j.nonce);
                    rand_core::RngCore::fill_bytes(&mut rng, &mut j.aad);
                    rand_core::RngCore::fill_bytes(&mut rng, &mut j.sealed[..COOKIE_LEN]);
                    j
                })
                .collect();
            let cookies: Vec<[u8; COOKIE_LEN]> =
                jobs.iter().map(|j| j.sealed[..COOKIE_LEN].try_into().unwrap()).collect();
            xseal_cookies(&key, &mut jobs);
            for (j, c) in jobs.iter().zip(&cookies) {
                assert_eq!(j.sealed, xseal_cookie(&key, &j.nonce, &j.aad, c));
                assert_eq!(xopen_cookie(&key, &j.nonce, &j.aad, &j.sealed).unwrap(), *c);
            }
        }
    }
}
