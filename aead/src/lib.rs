//! Multi-lane ChaCha20-Poly1305: up to [`MAX_LANES`] independent messages sealed or opened in
//! one call, in place. And keyed BLAKE2s MACs of up to [`MAX_LANES`] inputs in one call, from
//! precomputed keyed states or raw keys ([`blake2s`], [`Lanes::mac_lanes`]).
//!
//! The construction is the AEAD of RFC 8439 §2.8 exactly as WireGuard uses it: a 32-byte key, a
//! 12-byte nonce (WireGuard's is 4 zero bytes and its 64-bit little-endian counter:
//! [`wireguard_nonce`]), additional data of any length (WireGuard's data messages have none), a
//! 16-byte tag. Each [`Lane`] carries its own key, nonce, additional data, buffer and tag; lanes
//! share nothing but the call.
//!
//! At WireGuard's small packets a one-message AEAD spends most of its time on per-message setup
//! (ChaCha20 state, the Poly1305 key block, Poly1305 finalisation). Here the SIMD lanes hold
//! *different messages*: a ChaCha20 block of any lane's message can sit in any of the 16 (AVX-512)
//! or 8 (AVX2) 32-bit lanes, and Poly1305 runs one message per 64-bit lane (AVX-512 IFMA with
//! 44-bit limbs, or AVX2 with 26-bit limbs), a long message spread over the lanes short ones leave
//! idle. `DESIGN.md` next to this crate's manifest describes the layout, how lanes of different
//! lengths are handled, the constant-time argument and measured speed.
//!
//! # Layering
//! - [`portable`]: the reference, a plain RFC 8439 implementation, one message at a time.
//! - `x86` (x86-64 only; the crate's only `unsafe` code): the AVX-512 and AVX2 kernels, the
//!   prefetch instructions behind [`prefetch`], and the libipsec-mb FFI of the benchmark reference.
//! - `sched`: the ChaCha20 side of a burst: which block goes in which SIMD lane (jobs), and the
//!   transposed key table.
//! - `plan`: the Poly1305 side: which message each 64-bit SIMD lane follows, which 16-byte block
//!   it reads at each step, and with which power of `r`.
//! - `burst`: the phases of a burst on a SIMD backend.
//! - [`Lanes`]: picks a [`Backend`] (once, from CPUID) and runs bursts on it.
//! - [`blake2s`]: keyed BLAKE2s in lanes (its kernels are in `x86` too), on the same backends.
//! - [`hchacha`]: HChaCha20 (XChaCha20's subkey) in the lanes of the ChaCha20 kernels.
//!
//! # Open: verify, then decrypt
//! [`Lanes::open_lanes`] computes every lane's tag over its ciphertext first and decrypts only the
//! lanes whose tag matched (compared in constant time). A lane that fails keeps its ciphertext
//! untouched: no unauthenticated plaintext is ever written.
//!
//! # Panics
//! None: a burst of more than [`MAX_LANES`] lanes or a message longer than [`MAX_MESSAGE_LEN`] is
//! an [`Error`], reported before any buffer is touched.
//!
//! # Unsafe code
//! This crate is one of the workspace's crates made for `unsafe` (with `vfio`, `nic-backends`
//! and `wgpmd-x25519`): it is the SIMD crate of the AEAD and the BLAKE2s lanes. SIMD intrinsics need `target_feature` functions and raw
//! vector loads and stores, and the optional libipsec-mb benchmark reference (feature `ipsec-mb`)
//! is a C library reached through FFI. All of it is fenced in the one `x86` module (the FFI in
//! its child `x86::ipsec_mb`); the crate root denies `unsafe_code` everywhere else (the
//! scheduler, the Poly1305 plan, the BLAKE2s lanes' driver, the portable reference, the public
//! API), and every `unsafe`
//! block and the `extern` block in `x86` carry a `// SAFETY:` comment (clippy's
//! `undocumented_unsafe_blocks` is denied). The protocol crate and the daemon forbid `unsafe`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod blake2s;
#[cfg(target_arch = "x86_64")]
mod burst;
pub mod hchacha;
#[cfg(target_arch = "x86_64")]
mod plan;
pub mod portable;
pub mod prefetch;
#[cfg(target_arch = "x86_64")]
mod sched;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // the one module allowed `unsafe`: the SIMD kernels (see "Unsafe code")
mod x86;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

/// Intel's libipsec-mb ChaCha20-Poly1305, one message at a time, as a benchmark reference
/// (feature `ipsec-mb`, x86-64 only).
#[cfg(all(feature = "ipsec-mb", target_arch = "x86_64"))]
pub use x86::ipsec_mb;

use std::sync::OnceLock;

/// The most lanes one call takes: the width of the AVX-512 ChaCha20 kernel.
pub const MAX_LANES: usize = 16;
/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;
/// The longest message (in bytes) RFC 8439 allows: the 32-bit block counter starts at 1 for the
/// data, so 2^32 - 1 blocks of 64 bytes.
pub const MAX_MESSAGE_LEN: u64 = 64 * (u32::MAX as u64);

/// WireGuard's nonce for a message counter: 4 zero bytes, then the counter little-endian.
#[inline]
pub fn wireguard_nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// One message of a burst.
///
/// Seal: `buf` holds the plaintext and gets the ciphertext; `tag` gets the tag. Open: `buf` holds
/// the ciphertext and gets the plaintext only if the tag verifies; `tag` holds the received tag.
/// `aad` is the additional authenticated data: empty for WireGuard, any length in general.
#[derive(Debug)]
pub struct Lane<'a> {
    /// The ChaCha20-Poly1305 key.
    pub key: &'a [u8; KEY_LEN],
    /// The nonce (see [`wireguard_nonce`]).
    pub nonce: [u8; NONCE_LEN],
    /// Additional authenticated data (not encrypted).
    pub aad: &'a [u8],
    /// The message, encrypted or decrypted in place.
    pub buf: &'a mut [u8],
    /// The tag: written by seal, read by open.
    pub tag: [u8; TAG_LEN],
}

impl<'a> Lane<'a> {
    /// A WireGuard data lane: nonce from `counter`, no additional data, a zero tag (set it before
    /// an open).
    #[inline]
    pub fn wireguard(key: &'a [u8; KEY_LEN], counter: u64, buf: &'a mut [u8]) -> Self {
        Lane { key, nonce: wireguard_nonce(counter), aad: &[], buf, tag: [0; TAG_LEN] }
    }

    /// A lane with an arbitrary nonce and additional data, and a zero tag.
    #[inline]
    pub fn new(key: &'a [u8; KEY_LEN], nonce: [u8; NONCE_LEN], aad: &'a [u8], buf: &'a mut [u8]) -> Self {
        Lane { key, nonce, aad, buf, tag: [0; TAG_LEN] }
    }
}

/// A burst the kernels cannot take. Nothing was read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More than [`MAX_LANES`] lanes in one call.
    #[error("{count} lanes in one burst (at most {MAX_LANES})")]
    TooManyLanes {
        /// The number of lanes passed.
        count: usize,
    },
    /// A lane's message (or additional data) is longer than [`MAX_MESSAGE_LEN`].
    #[error("lane {lane}: message longer than {MAX_MESSAGE_LEN} bytes")]
    MessageTooLong {
        /// The index of the lane.
        lane: usize,
    },
}

/// An implementation of the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// AVX-512F/BW ChaCha20 (16 lanes) and AVX-512 IFMA Poly1305 (8 messages per vector, two
    /// vectors); BLAKE2s in 16 lanes (calls of at most 8 jobs in 8 lanes of 256 bits). Needs
    /// avx512f, avx512bw, avx512ifma, avx512vl and avx2.
    Avx512,
    /// AVX2 ChaCha20 (8 lanes) and AVX2 Poly1305 with 26-bit limbs (4 messages per vector, up to
    /// four vectors); BLAKE2s in 8 lanes. Needs avx2.
    Avx2,
    /// The portable reference ([`portable`]), one message at a time. Always available.
    Portable,
}

impl Backend {
    /// Every backend, fastest first.
    pub const ALL: [Backend; 3] = [Backend::Avx512, Backend::Avx2, Backend::Portable];

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => x86::avx512_supported(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => x86::avx2_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx512 | Backend::Avx2 => false,
        }
    }

    /// The fastest backend this CPU supports, detected on first use and remembered.
    pub fn detect() -> Backend {
        static BEST: OnceLock<Backend> = OnceLock::new();
        *BEST.get_or_init(|| Backend::ALL.into_iter().find(|b| b.is_supported()).unwrap_or(Backend::Portable))
    }

    /// A short lower-case name ("avx512", "avx2", "portable").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Avx512 => "avx512",
            Backend::Avx2 => "avx2",
            Backend::Portable => "portable",
        }
    }
}

/// A multi-lane ChaCha20-Poly1305 engine on one [`Backend`]. Holds no key: copy it freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    backend: Backend,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes::new()
    }
}

impl Lanes {
    /// The engine on the fastest backend this CPU supports ([`Backend::detect`]).
    pub fn new() -> Self {
        Lanes { backend: Backend::detect() }
    }

    /// The engine on `backend`, or `None` if this CPU cannot run it.
    pub fn with_backend(backend: Backend) -> Option<Self> {
        backend.is_supported().then_some(Lanes { backend })
    }

    /// The backend this engine runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Seals every lane: `buf` becomes the ciphertext and `tag` the tag.
    ///
    /// # Errors
    /// [`Error`] if the burst has more than [`MAX_LANES`] lanes or a message is too long; then no
    /// lane was touched.
    pub fn seal_lanes(&self, lanes: &mut [Lane<'_>]) -> Result<(), Error> {
        check(lanes)?;
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::Avx2 => burst::seal(self.backend, lanes),
            // Off x86-64 only `Portable` is ever supported, so only it reaches here.
            _ => {
                for l in lanes.iter_mut() {
                    l.tag = portable::seal(l.key, &l.nonce, l.aad, l.buf);
                }
            }
        }
        Ok(())
    }

    /// Opens every lane. Returns a mask with bit `i` set when lane `i`'s tag verified; those lanes
    /// hold their plaintext. A lane whose tag did not verify keeps its ciphertext (each lane's tag
    /// is checked before that lane is decrypted).
    ///
    /// # Errors
    /// [`Error`] if the burst has more than [`MAX_LANES`] lanes or a message is too long; then no
    /// lane was touched.
    pub fn open_lanes(&self, lanes: &mut [Lane<'_>]) -> Result<u16, Error> {
        check(lanes)?;
        let mut ok = 0u16;
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::Avx2 => ok = burst::open(self.backend, lanes),
            // Off x86-64 only `Portable` is ever supported, so only it reaches here.
            _ => {
                for (i, l) in lanes.iter_mut().enumerate() {
                    if portable::open(l.key, &l.nonce, l.aad, l.buf, &l.tag) {
                        ok |= 1 << i;
                    }
                }
            }
        }
        Ok(ok)
    }
}

/// The limits every backend relies on: at most [`MAX_LANES`] lanes, messages and additional data
/// of at most [`MAX_MESSAGE_LEN`] bytes.
fn check(lanes: &[Lane<'_>]) -> Result<(), Error> {
    if lanes.len() > MAX_LANES {
        return Err(Error::TooManyLanes { count: lanes.len() });
    }
    for (lane, l) in lanes.iter().enumerate() {
        if l.buf.len() as u64 > MAX_MESSAGE_LEN || l.aad.len() as u64 > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLong { lane });
        }
    }
    Ok(())
}
