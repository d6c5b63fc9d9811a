//! The x86-64 kernel: every `unsafe` block of the crate is in this module.
//!
//! The kernel is a `#[target_feature]` function. It is reached only through a safe wrapper that
//! takes a token ([`Ifma`]); a token is made only after CPUID reported the features, so holding
//! one is the proof that calling the kernel is sound.

mod ifma;

use crate::LANES;

/// Whether the CPU has what [`Ifma`] needs: AVX-512F and AVX-512 IFMA.
pub(crate) fn ifma_supported() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")
}

/// Proof that this CPU runs AVX-512F and AVX-512 IFMA code.
#[derive(Clone, Copy)]
pub(crate) struct Ifma(());

impl Ifma {
    pub(crate) fn new() -> Option<Self> {
        ifma_supported().then_some(Ifma(()))
    }
}

/// The Montgomery ladder on [`LANES`] lanes at once. `k[w][lane]`: word `w` (little-endian) of
/// each lane's clamped scalar; `u[i][lane]`: limb `i` (radix 2^51, below 2^51) of each lane's
/// u-coordinate. Writes to `out[i][lane]` the limbs of x_2 · z_2^(p-2) of each lane (below 2^52,
/// not yet canonical).
pub(crate) fn ladder(_cpu: Ifma, k: &[[u64; LANES]; 4], u: &[[u64; LANES]; 5], out: &mut [[u64; LANES]; 5]) {
    // SAFETY: an `Ifma` token exists only if CPUID reported avx512f and avx512ifma, the features
    // `ladder8` is compiled for; the references are valid for the call.
    unsafe { ifma::ladder8(k, u, out) }
}
