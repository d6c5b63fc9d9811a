//! Multi-lane X25519 (RFC 7748): many independent Diffie-Hellman computations in one call, eight
//! at a time in the 64-bit lanes of AVX-512 IFMA vectors.
//!
//! One X25519 is a chain of dependent field multiplications; a single one cannot fill a SIMD
//! unit. Eight *independent* ones can: lane `l` of every vector follows its own (scalar, u) pair
//! through its own Montgomery ladder, and the lanes share nothing but the instructions. A
//! WireGuard responder that has several handshake initiations queued can compute their DHs
//! together. `DESIGN.md` next to this crate's manifest describes the representation, the bounds,
//! the constant-time argument and what is tested.
//!
//! # Layering
//! - `portable`: the field in radix 2^51 with 128-bit products, one lane at a time; also the
//!   decoding of u-coordinates and the canonical encoding of results for both backends.
//! - `x86` (x86-64 only; the crate's only `unsafe` code): the eight-lane IFMA ladder.
//! - [`Backend`]: picks the backend (once, from CPUID) and runs batches on it.
//!
//! # Results
//! [`x25519_many`] writes the canonical 32-byte encoding of each result. A low-order u (or a
//! u that is such a point plus a multiple of p) gives all zeros; this crate does not reject
//! it: the caller checks with [`is_zero`] (constant time) and refuses the handshake, as
//! WireGuard does.
//!
//! # Secrets
//! Clamped scalars and ladder state in buffers this crate owns are wiped (zeroize, or a volatile
//! write of zeros in the SIMD kernel) before a call returns. Copies the compiler makes in
//! registers or spill slots are outside its reach (as in every Rust implementation).
//!
//! # Unsafe code
//! This crate is one of the workspace's crates made for `unsafe` (with `vfio`, `nic-backends` and
//! `wgpmd-aead`): it is the SIMD crate of the X25519 lanes, and has no FFI. The SIMD kernel needs
//! `target_feature` functions and vector loads and stores from memory. It is fenced in the one
//! `x86` module; the crate root denies `unsafe_code` everywhere else, and
//! every `unsafe` block in `x86` carries a `// SAFETY:` comment (clippy's
//! `undocumented_unsafe_blocks` is denied).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod portable;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // the one module allowed `unsafe`: the SIMD kernel (see "Unsafe code")
mod x86;

use std::sync::OnceLock;

use portable::Fe;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Lanes of one SIMD batch: 64-bit lanes of a 512-bit vector. Calls take any count; a last
/// partial batch is filled with dummy lanes whose results are discarded.
pub const LANES: usize = 8;

/// An implementation of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// AVX-512 IFMA: eight lanes per batch. Needs avx512f and avx512ifma.
    Ifma,
    /// Plain Rust, radix 2^51 with 128-bit products, one lane at a time. Always available.
    Portable,
}

/// A call the backend cannot take. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `scalars`, `points` and `out` do not have the same length.
    #[error("{scalars} scalars, {points} points and {out} outputs: the lengths must be equal")]
    LengthMismatch {
        /// Length of `scalars`.
        scalars: usize,
        /// Length of `points`.
        points: usize,
        /// Length of `out`.
        out: usize,
    },
    /// The backend needs CPU features this CPU lacks.
    #[error("backend {0:?} is not supported by this CPU")]
    Unsupported(Backend),
}

impl Backend {
    /// Every backend, fastest first.
    pub const ALL: [Backend; 2] = [Backend::Ifma, Backend::Portable];

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Ifma => x86::ifma_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Ifma => false,
        }
    }

    /// The fastest backend this CPU supports, detected on first use and remembered.
    pub fn detect() -> Backend {
        static BEST: OnceLock<Backend> = OnceLock::new();
        *BEST.get_or_init(|| Backend::ALL.into_iter().find(|b| b.is_supported()).unwrap_or(Backend::Portable))
    }

    /// A short lower-case name ("avx512ifma", "portable").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ifma => "avx512ifma",
            Backend::Portable => "portable",
        }
    }

    /// [`x25519_many`] on this backend (tests and benchmarks force a backend with it).
    pub fn x25519_many(self, scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) -> Result<(), Error> {
        if scalars.len() != points.len() || scalars.len() != out.len() {
            return Err(Error::LengthMismatch { scalars: scalars.len(), points: points.len(), out: out.len() });
        }
        match self {
            Backend::Portable => {
                for ((k, u), o) in scalars.iter().zip(points).zip(out.iter_mut()) {
                    *o = portable_one(k, u);
                }
                Ok(())
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Ifma => {
                let cpu = x86::Ifma::new().ok_or(Error::Unsupported(self))?;
                for ((ks, us), os) in scalars.chunks(LANES).zip(points.chunks(LANES)).zip(out.chunks_mut(LANES)) {
                    ifma_batch(cpu, ks, us, os);
                }
                Ok(())
            }
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Ifma => Err(Error::Unsupported(self)),
        }
    }
}

/// Up to [`LANES`] DHs in one kernel call; lanes past `ks.len()` are dummies (scalar 0, u = 9).
#[cfg(target_arch = "x86_64")]
fn ifma_batch(cpu: x86::Ifma, ks: &[[u8; 32]], us: &[[u8; 32]], os: &mut [[u8; 32]]) {
    let mut k = [[0u64; LANES]; 4];
    let mut u = [[0u64; LANES]; 5];
    u[0] = [9; LANES];
    for (lane, (ki, ui)) in ks.iter().zip(us).enumerate() {
        let mut kw = clamp(ki);
        let uf = Fe::from_bytes(ui);
        for (row, w) in k.iter_mut().zip(kw) {
            row[lane] = w;
        }
        for (row, l) in u.iter_mut().zip(uf.0) {
            row[lane] = l;
        }
        kw.zeroize();
    }
    let mut r = [[0u64; LANES]; 5];
    x86::ladder(cpu, &k, &u, &mut r);
    for (lane, o) in os.iter_mut().enumerate() {
        let mut f = Fe(core::array::from_fn(|i| r[i][lane]));
        *o = f.to_bytes();
        f.zeroize();
    }
    k.zeroize();
    r.zeroize();
}

/// One X25519 on the portable backend.
fn portable_one(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut kw = clamp(k);
    let mut r = portable::ladder(&kw, &Fe::from_bytes(u));
    let out = r.to_bytes();
    kw.zeroize();
    r.zeroize();
    out
}

/// The scalar as RFC 7748 section 5 clamps it (low 3 bits cleared, bit 255 cleared, bit 254
/// set), as four little-endian words.
fn clamp(s: &[u8; 32]) -> [u64; 4] {
    let mut b = *s;
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
    let w = core::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes")));
    b.zeroize();
    w
}

/// The backend [`x25519_many`] uses on this CPU: "avx512ifma" or "portable".
pub fn backend() -> &'static str {
    Backend::detect().name()
}

/// RFC 7748 X25519 of each pair: `out[i] = X25519(scalars[i], points[i])`, on the fastest
/// backend of this CPU, eight lanes at a time.
///
/// Each scalar is clamped here (the caller passes the 32 random or stored bytes). Each point's top
/// bit is ignored, and a u-coordinate from p to 2^255 - 1 is accepted and reduced, as RFC 7748
/// says. Each result is the canonical encoding; an all-zero result (low-order point) is not
/// rejected here: see [`is_zero`].
pub fn x25519_many(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) -> Result<(), Error> {
    Backend::detect().x25519_many(scalars, points, out)
}

/// One X25519 (on the portable backend: a single DH gains nothing from lanes).
pub fn x25519(scalar: &[u8; 32], point: &[u8; 32]) -> [u8; 32] {
    portable_one(scalar, point)
}

/// Whether a result is all zeros (the peer's point had a small order), in constant time.
pub fn is_zero(shared: &[u8; 32]) -> bool {
    shared.ct_eq(&[0u8; 32]).into()
}
