//! The x86-64 kernels: every `unsafe` block of the crate is in this module and its children.
//!
//! Each kernel is a `#[target_feature]` function. It is reached only through a safe wrapper that
//! takes a token ([`Avx512`] or [`Avx2`]); a token is made only after CPUID reported the features,
//! so holding one is the proof that calling the kernel is sound.

mod chacha_avx2;
mod chacha_avx512;
mod poly_avx2;
mod poly_ifma;

use crate::sched::{Job, KeyTable, PolyPlan};
use crate::MAX_LANES;

/// Whether the CPU has what [`Avx512`] needs: AVX-512F, BW (byte-masked loads and stores) and IFMA.
pub(crate) fn avx512_supported() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512ifma")
}

/// Whether the CPU has AVX2.
pub(crate) fn avx2_supported() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Proof that this CPU runs AVX-512F, AVX-512BW and AVX-512 IFMA code.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(());

impl Avx512 {
    pub fn new() -> Option<Self> {
        avx512_supported().then_some(Avx512(()))
    }
}

/// Proof that this CPU runs AVX2 code.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub fn new() -> Option<Self> {
        avx2_supported().then_some(Avx2(()))
    }
}

/// XORs the key stream of every job into its destination, 16 jobs per vector.
pub(crate) fn chacha_avx512<'a>(_cpu: Avx512, table: &KeyTable, jobs: impl Iterator<Item = Job<'a>>) {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f, avx512bw and avx512ifma,
    // the features `blocks` is compiled for.
    unsafe { chacha_avx512::blocks(table, jobs) }
}

/// XORs the key stream of every job into its destination, 8 jobs per vector.
pub(crate) fn chacha_avx2<'a>(_cpu: Avx2, table: &KeyTable, jobs: impl Iterator<Item = Job<'a>>) {
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `blocks` is
    // compiled for.
    unsafe { chacha_avx2::blocks(table, jobs) }
}

/// The Poly1305 tags of the first `lanes` lanes of `plan`, with the one-time keys (`r || s`,
/// `r` unclamped) in the first 32 bytes of each `otk`. Lanes past `lanes` come out as garbage.
pub(crate) fn poly_ifma(
    _cpu: Avx512,
    plan: &PolyPlan<'_>,
    otk: &[[u8; 64]; MAX_LANES],
    lanes: usize,
) -> [[u8; 16]; MAX_LANES] {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f and avx512ifma, the
    // features `tags` is compiled for.
    unsafe {
        if lanes <= 8 {
            poly_ifma::tags::<1>(plan, otk)
        } else {
            poly_ifma::tags::<2>(plan, otk)
        }
    }
}

/// Poly1305 accumulators of the first `lanes` lanes of `plan` (before the final reduction and
/// `+ s`: limbs of 44, 44 and 42 bits plus carries), keyed with the `r` halves of `otk` as in
/// [`poly_ifma`]. Lanes past `lanes` come out as zero.
pub(crate) fn poly_avx2(
    _cpu: Avx2,
    plan: &PolyPlan<'_>,
    otk: &[[u8; 64]; MAX_LANES],
    lanes: usize,
) -> [[u64; 3]; MAX_LANES] {
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `accumulate` is
    // compiled for.
    let h26 = unsafe {
        match lanes {
            0..=4 => poly_avx2::accumulate::<1>(plan, otk),
            5..=8 => poly_avx2::accumulate::<2>(plan, otk),
            9..=12 => poly_avx2::accumulate::<3>(plan, otk),
            _ => poly_avx2::accumulate::<4>(plan, otk),
        }
    };
    h26.map(poly_avx2::to_radix44)
}
