//! Poly1305 with AVX2: one message per 64-bit lane, 4 per vector, `G` vectors (up to 16
//! messages) stepped together.
//!
//! Five limbs of 26 bits (as poly1305-donna-32), multiplied with `vpmuludq` (32 x 32 -> 64 bits):
//!
//! ```text
//! d0 = h0 r0 + h1 5r4 + h2 5r3 + h3 5r2 + h4 5r1      (2^130 = 5 mod p)
//! d1 = h0 r1 + h1 r0  + h2 5r4 + h3 5r3 + h4 5r2
//! d2 = h0 r2 + h1 r1  + h2 r0  + h3 5r4 + h4 5r3
//! d3 = h0 r3 + h1 r2  + h2 r1  + h3 r0  + h4 5r4
//! d4 = h0 r4 + h1 r3  + h2 r2  + h3 r1  + h4 r0
//! ```
//!
//! then a carry chain back to 26-bit limbs (limb 1 may keep a few bits more). Bounds: limbs below
//! 2^27 after adding a block, `5 r_i < 2^29`, each `d_i < 2^59`.

use core::arch::x86_64::*;

use crate::plan::{Epochs, PolyPlan, MAX_SUBLANES};
use crate::MAX_LANES;

const M26: i64 = (1 << 26) - 1;

/// Four 16-byte blocks, as their low and high 64-bit halves: lane `i` of the results is block
/// `p[i]`.
///
/// # Safety
/// Each of the 4 pointers points at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load4(p: &[*const u8]) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees 16 readable bytes at each pointer; the loads are unaligned.
    let (a, b) = unsafe {
        let a = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p[0].cast())),
            _mm_loadu_si128(p[2].cast()),
        );
        let b = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p[1].cast())),
            _mm_loadu_si128(p[3].cast()),
        );
        (a, b)
    };
    (_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
}

/// A 128-bit value (low and high halves) in limbs of 26 bits (the top one 24).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn limbs(lo: __m256i, hi: __m256i) -> [__m256i; 5] {
    let m = _mm256_set1_epi64x(M26);
    [
        _mm256_and_si256(lo, m),
        _mm256_and_si256(_mm256_srli_epi64::<26>(lo), m),
        _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi64::<52>(lo), _mm256_slli_epi64::<12>(hi)), m),
        _mm256_and_si256(_mm256_srli_epi64::<14>(hi), m),
        _mm256_srli_epi64::<40>(hi),
    ]
}

/// The clamped `r` of one vector of lanes and `5 r`.
pub(super) struct Key {
    r: [__m256i; 5],
    s: [__m256i; 5],
}

/// `h * r mod 2^130 - 5`, partly carried (see the module doc).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn mul(h: [__m256i; 5], k: &Key) -> [__m256i; 5] {
    let [r0, r1, r2, r3, r4] = k.r;
    let [_, s1, s2, s3, s4] = k.s;
    let [h0, h1, h2, h3, h4] = h;
    let mac = |acc: __m256i, a: __m256i, b: __m256i| _mm256_add_epi64(acc, _mm256_mul_epu32(a, b));
    let d0 = mac(mac(mac(mac(_mm256_mul_epu32(h0, r0), h1, s4), h2, s3), h3, s2), h4, s1);
    let d1 = mac(mac(mac(mac(_mm256_mul_epu32(h0, r1), h1, r0), h2, s4), h3, s3), h4, s2);
    let d2 = mac(mac(mac(mac(_mm256_mul_epu32(h0, r2), h1, r1), h2, r0), h3, s4), h4, s3);
    let d3 = mac(mac(mac(mac(_mm256_mul_epu32(h0, r3), h1, r2), h2, r1), h3, r0), h4, s4);
    let d4 = mac(mac(mac(mac(_mm256_mul_epu32(h0, r4), h1, r3), h2, r2), h3, r1), h4, r0);
    let m = _mm256_set1_epi64x(M26);
    let d1 = _mm256_add_epi64(d1, _mm256_srli_epi64::<26>(d0));
    let d2 = _mm256_add_epi64(d2, _mm256_srli_epi64::<26>(d1));
    let d3 = _mm256_add_epi64(d3, _mm256_srli_epi64::<26>(d2));
    let d4 = _mm256_add_epi64(d4, _mm256_srli_epi64::<26>(d3));
    let c = _mm256_srli_epi64::<26>(d4);
    // c * 5 with one `vpmuludq` (c < 2^32; shifts and adds would become a 64-bit multiply).
    let h0 = _mm256_add_epi64(_mm256_and_si256(d0, m), _mm256_mul_epu32(c, _mm256_set1_epi64x(5)));
    let h1 = _mm256_add_epi64(_mm256_and_si256(d1, m), _mm256_srli_epi64::<26>(h0));
    [_mm256_and_si256(h0, m), h1, _mm256_and_si256(d2, m), _mm256_and_si256(d3, m), _mm256_and_si256(d4, m)]
}

/// `Key` (limbs and their multiples of 5) for a multiplier in limbs.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn key(r: [__m256i; 5]) -> Key {
    let five = |x: __m256i| _mm256_mul_epu32(x, _mm256_set1_epi64x(5)); // x < 2^32
    Key { r, s: [five(r[0]), five(r[1]), five(r[2]), five(r[3]), five(r[4])] }
}

/// The Poly1305 accumulators (limbs of 26 bits plus carries) of the first `4 * G` sub-lanes of
/// `plan`, each keyed with the unclamped `r` in the first 16 bytes of its message's `otk` raised to
/// the plan's powers. Sub-lanes past `4 * G` are zero.
#[target_feature(enable = "avx2")]
pub(super) fn accumulate<const G: usize>(plan: &PolyPlan<'_>, otk: &[[u8; 64]; MAX_LANES]) -> [[u64; 5]; MAX_SUBLANES] {
    let clamp_lo = _mm256_set1_epi64x(0x0fff_fffc_0fff_ffff);
    let clamp_hi = _mm256_set1_epi64x(0x0fff_fffc_0fff_fffc);
    let zero = _mm256_setzero_si256();
    let mut r = [[zero; 5]; G];
    let mut want = [[zero; 2]; G];
    for g in 0..G {
        let ptrs: [*const u8; 4] = core::array::from_fn(|i| otk[plan.owner(4 * g + i) % MAX_LANES].as_ptr());
        // SAFETY: each pointer is the start of a 64-byte array of `otk`.
        let (lo, hi) = unsafe { load4(&ptrs) };
        r[g] = limbs(_mm256_and_si256(lo, clamp_lo), _mm256_and_si256(hi, clamp_hi));
        for (w, v) in want[g].iter_mut().enumerate() {
            let e: [i64; 4] = core::array::from_fn(|i| i64::from(plan.powers(4 * g + i)[w]));
            // SAFETY: `e` is 32 readable bytes; the load is unaligned.
            *v = unsafe { _mm256_loadu_si256(e.as_ptr().cast()) };
        }
    }
    // The multipliers: r^main for every step but the last, r^last for the last (see
    // `crate::plan`), raised step by step.
    let mut step_key: [Key; G] = core::array::from_fn(|g| key(r[g]));
    let mut last_key: [Key; G] = core::array::from_fn(|g| key(r[g]));
    let mut cur = r;
    for e in 2..=i64::from(plan.max_power()) {
        for g in 0..G {
            cur[g] = mul(cur[g], &key(r[g]));
            let take_main = _mm256_cmpeq_epi64(want[g][0], _mm256_set1_epi64x(e));
            let take_last = _mm256_cmpeq_epi64(want[g][1], _mm256_set1_epi64x(e));
            let mut main = step_key[g].r;
            let mut last = last_key[g].r;
            for i in 0..5 {
                main[i] = _mm256_blendv_epi8(main[i], cur[g][i], take_main);
                last[i] = _mm256_blendv_epi8(last[i], cur[g][i], take_last);
            }
            step_key[g] = key(main);
            last_key[g] = key(last);
        }
    }
    let mut h = [[zero; 5]; G];
    let last_step = plan.steps().wrapping_sub(1);
    let mut epochs = plan.epochs();
    let mut ep = Epochs::empty();
    while epochs.next_into(&mut ep, 4 * G) {
        let mut p = ep.ptr;
        let hibit: [__m256i; G] = core::array::from_fn(|g| {
            let bit = |i: usize| i64::from((ep.hibit >> (4 * g + i)) & 1) << 24; // 2^128 = 2^24 in limb 4
            _mm256_setr_epi64x(bit(0), bit(1), bit(2), bit(3))
        });
        for t in ep.start..ep.end {
            let k = if t == last_step { &last_key } else { &step_key };
            for g in 0..G {
                // SAFETY: `PolyPlan` guarantees 16 readable bytes at `ptr[l] + stride[l] * i` for
                // each step `i` of the epoch; `p` is that pointer at this step.
                let (lo, hi) = unsafe { load4(&p[4 * g..4 * g + 4]) };
                let m = limbs(lo, hi);
                let s = [
                    _mm256_add_epi64(h[g][0], m[0]),
                    _mm256_add_epi64(h[g][1], m[1]),
                    _mm256_add_epi64(h[g][2], m[2]),
                    _mm256_add_epi64(h[g][3], m[3]),
                    _mm256_add_epi64(h[g][4], _mm256_or_si256(m[4], hibit[g])),
                ];
                h[g] = mul(s, &k[g]);
            }
            for (q, s) in p.iter_mut().zip(&ep.stride).take(4 * G) {
                *q = q.wrapping_add(*s);
            }
        }
    }
    let mut out = [[0u64; 5]; MAX_SUBLANES];
    for (g, hg) in h.iter().enumerate() {
        let mut limb = [[0u64; 4]; 5];
        for (dst, v) in limb.iter_mut().zip(hg) {
            // SAFETY: `dst` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), *v) };
        }
        for i in 0..4 {
            out[4 * g + i] = [limb[0][i], limb[1][i], limb[2][i], limb[3][i], limb[4][i]];
        }
    }
    out
}

/// Five 26-bit limbs (plus carries, value below 2^131) as three limbs of 44, 44 and 44+ bits, the
/// form [`crate::portable::finalize`] takes.
pub(super) fn to_radix44(h: [u64; 5]) -> [u64; 3] {
    const M44: u128 = (1 << 44) - 1;
    let [h0, h1, h2, h3, h4] = h.map(u128::from);
    let t = h0 + (h1 << 26) + (h2 << 52);
    let l0 = t & M44;
    let t = (t >> 44) + (h3 << 34) + (h4 << 60);
    [l0 as u64, (t & M44) as u64, (t >> 44) as u64]
}
