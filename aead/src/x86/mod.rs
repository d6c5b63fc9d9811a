//! The x86-64 kernels: every `unsafe` block of the crate is in this module and its children.
//!
//! Each kernel is a `#[target_feature]` function. It is reached only through a safe wrapper that
//! takes a token ([`Avx512`] or [`Avx2`]); a token is made only after CPUID reported the features,
//! so holding one is the proof that calling the kernel is sound.

mod blake2s_avx2;
mod blake2s_avx512;
mod chacha_avx2;
mod chacha_avx512;
#[cfg(feature = "ipsec-mb")]
pub mod ipsec_mb;
mod poly_avx2;
mod poly_ifma;
mod wg_avx2;
mod wg_avx512;

use crate::blake2s::Step;
use crate::plan::{PolyPlan, MAX_SUBLANES};
use crate::sched::{Job, KeyTable};
use crate::{Lane, MAX_LANES, TAG_LEN};

/// Whether the CPU has what [`Avx512`] needs: AVX-512F, BW (byte-masked loads and stores), IFMA,
/// and VL with AVX2 (the 8-lane BLAKE2s kernel's 256-bit `vprord`; every IFMA CPU has both).
pub(crate) fn avx512_supported() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512ifma")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx2")
}

/// Whether the CPU has AVX2.
pub(crate) fn avx2_supported() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Proof that this CPU runs AVX-512F, AVX-512BW, AVX-512 IFMA, AVX-512VL and AVX2 code.
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

/// One BLAKE2s compression step of 16 lanes (`crate::blake2s`).
pub(crate) fn blake2s_avx512(_cpu: Avx512, h: &mut [[u32; 16]; 8], step: &Step<16>) {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f (with bw and ifma), the
    // feature `compress` is compiled for.
    unsafe { blake2s_avx512::compress(h, step) }
}

/// One BLAKE2s compression step of 8 lanes with AVX-512VL rotations (`crate::blake2s`).
pub(crate) fn blake2s_avx512_8(_cpu: Avx512, h: &mut [[u32; 8]; 8], step: &Step<8>) {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f, avx512vl and avx2
    // (with bw and ifma), the features `compress_vl` is compiled for.
    unsafe { blake2s_avx2::compress_vl(h, step) }
}

/// One BLAKE2s compression step of 8 lanes (`crate::blake2s`).
pub(crate) fn blake2s_avx2(_cpu: Avx2, h: &mut [[u32; 8]; 8], step: &Step<8>) {
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `compress` is
    // compiled for.
    unsafe { blake2s_avx2::compress(h, step) }
}

/// The IFMA kernel's vectors of sub-lanes (8 each).
pub(crate) const IFMA_GROUPS: [usize; 4] = [1, 2, 3, 4];
/// The AVX2 kernel's vectors of sub-lanes (4 each).
pub(crate) const AVX2_GROUPS: [usize; 4] = [1, 2, 4, 8];

/// Poly1305 accumulators of the sub-lanes of `plan` in `groups` vectors of 8 (one of
/// [`IFMA_GROUPS`]), before the final reduction and `+ s` (limbs of 44, 44 and 42 bits plus
/// carries), each keyed with its message's `r` (the first 16 bytes of its `otk`, unclamped).
pub(crate) fn poly_ifma(
    _cpu: Avx512,
    plan: &PolyPlan<'_>,
    otk: &[[u8; 64]; MAX_LANES],
    groups: usize,
) -> [[u64; 3]; MAX_SUBLANES] {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f and avx512ifma, the
    // features `accumulate` is compiled for.
    unsafe {
        match groups {
            0 | 1 => poly_ifma::accumulate::<1>(plan, otk),
            2 => poly_ifma::accumulate::<2>(plan, otk),
            3 => poly_ifma::accumulate::<3>(plan, otk),
            _ => poly_ifma::accumulate::<4>(plan, otk),
        }
    }
}

/// The tags of the first `messages` messages from their summed accumulators and the `s` halves of
/// their one-time keys (bytes 16 to 32 of `otk`).
pub(crate) fn finish_ifma(
    _cpu: Avx512,
    h: &[[u64; 3]; MAX_LANES],
    otk: &[[u8; 64]; MAX_LANES],
    messages: usize,
) -> [[u8; 16]; MAX_LANES] {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f and avx512ifma, the
    // features `finish_tags` is compiled for.
    unsafe {
        if messages <= 8 {
            poly_ifma::finish_tags::<1>(h, otk)
        } else {
            poly_ifma::finish_tags::<2>(h, otk)
        }
    }
}

/// As [`poly_ifma()`] with AVX2, in `groups` vectors of 4 (one of [`AVX2_GROUPS`]); the 26-bit
/// limbs are converted to 44-bit ones on the way out.
pub(crate) fn poly_avx2(
    _cpu: Avx2,
    plan: &PolyPlan<'_>,
    otk: &[[u8; 64]; MAX_LANES],
    groups: usize,
) -> [[u64; 3]; MAX_SUBLANES] {
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `accumulate` is
    // compiled for.
    let h26 = unsafe {
        match groups {
            0 | 1 => poly_avx2::accumulate::<1>(plan, otk),
            2 => poly_avx2::accumulate::<2>(plan, otk),
            3 | 4 => poly_avx2::accumulate::<4>(plan, otk),
            _ => poly_avx2::accumulate::<8>(plan, otk),
        }
    };
    h26.map(poly_avx2::to_radix44)
}

/// Seals a WireGuard-shaped burst ([`wg_len`]) with the fused AVX-512 kernel and returns the
/// tags; `None`, touching nothing, if the burst has another shape.
pub(crate) fn wg_seal_avx512(
    _cpu: Avx512,
    table: &KeyTable,
    lanes: &mut [Lane<'_>],
) -> Option<[[u8; TAG_LEN]; MAX_LANES]> {
    let len = wg_len(lanes)?;
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f, avx512bw, avx512vl and
    // avx512ifma, the features `seal` is compiled for; `wg_len` checked the shape its loads rely
    // on.
    Some(unsafe { wg_avx512::seal(table, lanes, len) })
}

/// The expected tags of a WireGuard-shaped burst being opened (as [`wg_seal_avx512`]).
pub(crate) fn wg_open_tags_avx512(
    _cpu: Avx512,
    table: &KeyTable,
    lanes: &[Lane<'_>],
) -> Option<[[u8; TAG_LEN]; MAX_LANES]> {
    let len = wg_len(lanes)?;
    // SAFETY: as in `wg_seal_avx512`.
    Some(unsafe { wg_avx512::open_tags(table, lanes, len) })
}

/// Decrypts (XORs the data key stream into) the lanes selected by `mask`, any shape.
pub(crate) fn decrypt_avx512(_cpu: Avx512, table: &KeyTable, lanes: &mut [Lane<'_>], mask: u16) {
    // SAFETY: an `Avx512` token exists only if CPUID reported avx512f and avx512bw, the features
    // `decrypt` is compiled for.
    unsafe { wg_avx512::decrypt(table, lanes, mask) }
}

/// Seals a WireGuard-shaped burst ([`wg_len`]) with the fused AVX2 kernel and returns the tags;
/// `None`, touching nothing, if the burst has another shape.
pub(crate) fn wg_seal_avx2(_cpu: Avx2, table: &KeyTable, lanes: &mut [Lane<'_>]) -> Option<[[u8; TAG_LEN]; MAX_LANES]> {
    let len = wg_len(lanes)?;
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `seal` is compiled
    // for; `wg_len` checked the shape its loads rely on.
    Some(unsafe { wg_avx2::seal(table, lanes, len) })
}

/// The expected tags of a WireGuard-shaped burst being opened (as [`wg_seal_avx2`]).
pub(crate) fn wg_open_tags_avx2(
    _cpu: Avx2,
    table: &KeyTable,
    lanes: &[Lane<'_>],
) -> Option<[[u8; TAG_LEN]; MAX_LANES]> {
    let len = wg_len(lanes)?;
    // SAFETY: as in `wg_seal_avx2`.
    Some(unsafe { wg_avx2::open_tags(table, lanes, len) })
}

/// Decrypts (XORs the data key stream into) the lanes selected by `mask`, any shape, 8 blocks
/// per vector lane after lane.
pub(crate) fn decrypt_avx2(_cpu: Avx2, table: &KeyTable, lanes: &mut [Lane<'_>], mask: u16) {
    // SAFETY: an `Avx2` token exists only if CPUID reported avx2, the feature `decrypt` is
    // compiled for.
    unsafe { wg_avx2::decrypt(table, lanes, mask) }
}

/// The length of a WireGuard-shaped burst: 1 to 16 lanes, all of one length, none with
/// additional data. `None` for any other shape.
pub(crate) fn wg_len(lanes: &[Lane<'_>]) -> Option<usize> {
    let len = lanes.first()?.buf.len();
    let ok = lanes.len() <= MAX_LANES && lanes.iter().all(|l| l.aad.is_empty() && l.buf.len() == len);
    ok.then_some(len)
}

/// Start loading the cache line holding `p` into every cache level (PREFETCHT0).
#[inline(always)]
pub(crate) fn prefetch_read(p: *const u8) {
    // PREFETCHT0 (SSE, in the x86-64 baseline) never faults, reads nothing into a register and
    // changes no architectural state, whatever the address (dangling, unmapped or null included).
    // SAFETY: a hint, sound for any pointer value (above).
    unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
}

/// Start loading the cache line holding `p` for writing: PREFETCHW (the line arrives exclusive,
/// so a later atomic read-modify-write of it does not wait for ownership) when the build enables
/// the `prfchw` target feature (e.g. `-C target-cpu=native`); in a baseline x86-64 build the
/// compiler emits PREFETCHT0 for it instead (the line arrives, shared).
#[inline(always)]
pub(crate) fn prefetch_write(p: *const u8) {
    // SAFETY: as in `prefetch_read`: PREFETCHW is a hint that never faults, whatever the address.
    unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(p.cast()) }
}
