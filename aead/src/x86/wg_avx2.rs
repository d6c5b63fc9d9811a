//! The WireGuard-shaped burst on AVX2, fused: [`super::wg_avx512`](mod@super::wg_avx512) at half
//! the width, for CPUs without AVX-512 IFMA. Every lane without additional data and all of one
//! length, so the Poly1305 input of every lane is its ciphertext's blocks and one length block
//! that is the same for all: every sub-lane starts at step 0 and steps 16 bytes at a time, with
//! no [`crate::plan::PolyPlan`], no epochs and no split; ChaCha20's data blocks are taken lane
//! after lane in a plain loop, 8 per vector, rather than through the job iterators.
//!
//! The one-time keys: block 0 of lanes 0 to 7 (and 8 to 15) is computed in the vertical layout
//! and its words 0 to 7 (`r` and `s`) widened straight into the Poly1305 kernel's 64-bit lanes,
//! four per vector; never transposed. `s` and the accumulators are then stored for the scalar
//! finalisation (`crate::portable::finalize`, as the general AVX2 path does) in arrays wiped
//! before returning. A short last block (a length not a multiple of 16) is copied into a zeroed
//! 16-byte array per lane (AVX2 has no byte-masked loads); it is ciphertext, public. What the
//! compiler spills of the vectors stays in the stack frame after the call, as any function's
//! locals do: nothing here wipes the stack.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use super::chacha_avx2::{blocks8, key_halves, state8, xor_block};
use super::poly_avx2::{key, limbs, load4, mul, to_radix44, Key};
use crate::portable::finalize;
use crate::sched::KeyTable;
use crate::{Lane, MAX_LANES, TAG_LEN};

/// 2^128 in limb 4 (2^104) of the 26-bit limbs.
const BIT128: i64 = 1 << 24;

/// 32-bit lanes `4 H .. 4 H + 4` of `v`, widened to 64-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn widen<const H: i32>(v: __m256i) -> __m256i {
    _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<H>(v))
}

/// The 64-bit values `a | b << 32` of lanes `4 H .. 4 H + 4`.
#[inline]
#[target_feature(enable = "avx2")]
fn pair<const H: i32>(a: __m256i, b: __m256i) -> __m256i {
    _mm256_or_si256(widen::<H>(a), _mm256_slli_epi64::<32>(widen::<H>(b)))
}

/// The Poly1305 key of four lanes (`4 H ..` of the 8 whose block 0 is `x`): the clamped `r`
/// (with `5 r`), and `s` as the low and high 64-bit halves.
#[inline]
#[target_feature(enable = "avx2")]
fn poly_key<const H: i32>(x: &[__m256i; 16]) -> (Key, __m256i, __m256i) {
    let r_lo = _mm256_and_si256(pair::<H>(x[0], x[1]), _mm256_set1_epi64x(0x0fff_fffc_0fff_ffff));
    let r_hi = _mm256_and_si256(pair::<H>(x[2], x[3]), _mm256_set1_epi64x(0x0fff_fffc_0fff_fffc));
    (key(limbs(r_lo, r_hi)), pair::<H>(x[4], x[5]), pair::<H>(x[6], x[7]))
}

/// The tags of the lanes (1 to `4 G`, each `len` bytes, no additional data) over their current
/// buffers.
#[inline]
#[target_feature(enable = "avx2")]
fn tags<const G: usize>(
    klo: &[__m256i; 11],
    khi: &[__m256i; 11],
    lanes: &[Lane<'_>],
    len: usize,
) -> [[u8; TAG_LEN]; MAX_LANES] {
    let n = lanes.len().clamp(1, 4 * G);
    let zero = _mm256_setzero_si256();
    // Block 0 of lanes 0 to 7, and of 8 to 15 when there are more than 8.
    let first = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let x0 = state8(klo, khi, first, zero);
    let x1 = if G > 2 { state8(klo, khi, _mm256_add_epi32(first, _mm256_set1_epi32(8)), zero) } else { x0 };
    let mut keys: [Key; G] = core::array::from_fn(|_| key([zero; 5]));
    let mut s = [[zero; 2]; G];
    for g in 0..G {
        let x = if g < 2 { &x0 } else { &x1 };
        let (k, s_lo, s_hi) = if g % 2 == 0 { poly_key::<0>(x) } else { poly_key::<1>(x) };
        keys[g] = k;
        s[g] = [s_lo, s_hi];
    }
    // Sub-lanes past the last lane follow the last lane again; their results are dropped.
    let mut p: [*const u8; MAX_LANES] = core::array::from_fn(|i| lanes[i.min(n - 1)].buf.as_ptr());
    let bit = _mm256_set1_epi64x(BIT128);
    let mut h = [[zero; 5]; G];
    // Absorb one block per sub-lane (`lo`, `hi`: group `g`'s 4 blocks), as a full block (with
    // 2^128), and multiply by `r`.
    let absorb = |h: &mut [__m256i; 5], (lo, hi): (__m256i, __m256i), key: &Key| {
        let m = limbs(lo, hi);
        let s = [
            _mm256_add_epi64(h[0], m[0]),
            _mm256_add_epi64(h[1], m[1]),
            _mm256_add_epi64(h[2], m[2]),
            _mm256_add_epi64(h[3], m[3]),
            _mm256_add_epi64(h[4], _mm256_or_si256(m[4], bit)),
        ];
        *h = mul(s, key);
    };
    let full = len / 16;
    for _ in 0..full {
        for g in 0..G {
            // SAFETY: every lane's buffer is `len` bytes; at step `t` (< len / 16) each pointer
            // is its lane's buffer + 16 t: 16 readable bytes.
            let blocks = unsafe { load4(&p[4 * g..4 * g + 4]) };
            absorb(&mut h[g], blocks, &keys[g]);
        }
        for q in p.iter_mut() {
            *q = q.wrapping_add(16);
        }
    }
    let rem = len % 16;
    if rem != 0 {
        // The last, partial block, zero-padded to 16 bytes (RFC 8439 §2.8 pads the ciphertext).
        let mut last = [[0u8; 16]; MAX_LANES];
        for (t, l) in last.iter_mut().zip(lanes).take(n) {
            t[..rem].copy_from_slice(&l.buf[16 * full..]);
        }
        let q: [*const u8; MAX_LANES] = core::array::from_fn(|i| last[i.min(n - 1)].as_ptr());
        for g in 0..G {
            // SAFETY: each pointer is the start of a 16-byte array of `last`.
            let blocks = unsafe { load4(&q[4 * g..4 * g + 4]) };
            absorb(&mut h[g], blocks, &keys[g]);
        }
    }
    // The length block: 0 (additional data) in the low half, `len` in the high half.
    let lengths = (zero, _mm256_set1_epi64x(len as i64));
    for g in 0..G {
        absorb(&mut h[g], lengths, &keys[g]);
    }
    // The scalar finalisation, lane by lane, from the accumulators' and `s`'s stored lanes.
    let mut limb = [[[0u64; 4]; 5]; G];
    let mut half = [[[0u64; 4]; 2]; G];
    for g in 0..G {
        for (dst, v) in limb[g].iter_mut().zip(&h[g]) {
            // SAFETY: `dst` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), *v) };
        }
        for (dst, v) in half[g].iter_mut().zip(&s[g]) {
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), *v) };
        }
    }
    let mut out = [[0u8; TAG_LEN]; MAX_LANES];
    for (i, tag) in out.iter_mut().enumerate().take(n) {
        let (g, j) = (i / 4, i % 4);
        let l = &limb[g];
        let mut acc = to_radix44([l[0][j], l[1][j], l[2][j], l[3][j], l[4][j]]);
        let mut s = [half[g][0][j], half[g][1][j]];
        *tag = finalize(acc, s);
        acc.zeroize();
        s.zeroize();
    }
    limb.as_flattened_mut().as_flattened_mut().zeroize();
    half.as_flattened_mut().as_flattened_mut().zeroize();
    out
}

/// The tags of 1 to 16 lanes of `len` bytes, in as few vectors of 4 as they fill.
#[inline]
#[target_feature(enable = "avx2")]
fn tags_any(klo: &[__m256i; 11], khi: &[__m256i; 11], lanes: &[Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    match lanes.len() {
        0..=4 => tags::<1>(klo, khi, lanes, len),
        5..=8 => tags::<2>(klo, khi, lanes, len),
        9..=12 => tags::<3>(klo, khi, lanes, len),
        _ => tags::<4>(klo, khi, lanes, len),
    }
}

/// XORs the data key stream (blocks from 1) of the lanes selected by `mask` into their buffers,
/// 8 blocks per vector, lane after lane.
#[inline]
#[target_feature(enable = "avx2")]
fn xor_data(klo: &[__m256i; 11], khi: &[__m256i; 11], lanes: &mut [Lane<'_>], mask: u16) {
    let mut idx = [0u32; 8];
    let mut ctr = [0u32; 8];
    let mut dst: [Option<&mut [u8]>; 8] = Default::default();
    let mut spill = [0u8; 64];
    let mut k = 0;
    for (i, l) in lanes.iter_mut().enumerate().take(MAX_LANES) {
        if mask >> i & 1 == 0 {
            continue;
        }
        for (b, c) in l.buf.chunks_mut(64).enumerate() {
            idx[k] = i as u32;
            // At most `MAX_MESSAGE_LEN / 64` blocks (checked by the caller): fits 32 bits.
            ctr[k] = (b as u32).wrapping_add(1);
            dst[k] = Some(c);
            k += 1;
            if k == 8 {
                let (lo, hi) = blocks8(klo, khi, &idx, &ctr);
                for (j, d) in dst.iter_mut().enumerate() {
                    if let Some(d) = d.take() {
                        xor_block(d, lo[j], hi[j], &mut spill);
                    }
                }
                k = 0;
            }
        }
    }
    if k > 0 {
        let (lo, hi) = blocks8(klo, khi, &idx, &ctr);
        for (j, d) in dst.iter_mut().enumerate().take(k) {
            if let Some(d) = d.take() {
                xor_block(d, lo[j], hi[j], &mut spill);
            }
        }
    }
    spill.zeroize();
}

/// Seals a WireGuard-shaped burst (see the module doc; 1 to 16 lanes of `len` bytes): encrypts in
/// place and returns the tags.
#[target_feature(enable = "avx2")]
pub(super) fn seal(table: &KeyTable, lanes: &mut [Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    let (klo, khi) = key_halves(table);
    xor_data(&klo, &khi, lanes, u16::MAX);
    tags_any(&klo, &khi, lanes, len)
}

/// The expected tags of a WireGuard-shaped burst being opened (the buffers hold ciphertext).
#[target_feature(enable = "avx2")]
pub(super) fn open_tags(table: &KeyTable, lanes: &[Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    let (klo, khi) = key_halves(table);
    tags_any(&klo, &khi, lanes, len)
}

/// Decrypts the lanes selected by `mask` (any lengths).
#[target_feature(enable = "avx2")]
pub(super) fn decrypt(table: &KeyTable, lanes: &mut [Lane<'_>], mask: u16) {
    let (klo, khi) = key_halves(table);
    xor_data(&klo, &khi, lanes, mask);
}
