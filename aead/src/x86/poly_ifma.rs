//! Poly1305 with AVX-512 IFMA: one message per 64-bit lane, 8 per vector, `G` vectors (up to 16
//! messages) stepped together.
//!
//! The accumulator and `r` are in three limbs of 44, 44 and 42 bits (base 2^44, as in OpenSSL's
//! IFMA code), so every product fits `vpmadd52luq`/`vpmadd52huq`'s 52-bit inputs. A step is
//! `h = (h + m) * r mod 2^130 - 5`:
//!
//! ```text
//! pos 0:  h0 r0 + h1 (20 r2) + h2 (20 r1)      (2^132 = 4 * 2^130 = 20 mod p)
//! pos 1:  h0 r1 + h1 r0      + h2 (20 r2)
//! pos 2:  h0 r2 + h1 r1      + h2 r0
//! ```
//!
//! Each position sums its products' low 52 bits (`lo`) and high bits (`hi`). A high part is worth
//! `2^52 = 2^8 * 2^44`, so `hi` of position 0 goes to limb 1 shifted by 8, position 1's to limb 2,
//! and position 2's to limb 0 times `2^8 * 20 = 5120`. A partial carry brings the limbs back to
//! 44, 44 and 42 bits (limb 0 may keep a few bits more); bounds: `h0 < 2^45`, `h1 < 2^45`,
//! `h2 < 2^43` after adding a block, `20 r1 < 2^49`, all below 2^52.

use core::arch::x86_64::*;

use crate::plan::{Epoch, Epochs, PolyPlan, MAX_SUBLANES};
use crate::MAX_LANES;

const M44: i64 = (1 << 44) - 1;
const M42: i64 = (1 << 42) - 1;

/// Eight 16-byte blocks, as their low and high 64-bit halves: lane `i` of the results is block
/// `p[i]`.
///
/// # Safety
/// Each of the 8 pointers points at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn load8(p: &[*const u8]) -> (__m512i, __m512i) {
    // SAFETY: the caller guarantees 16 readable bytes at each pointer; the loads are unaligned.
    halves8(|i| unsafe { _mm_loadu_si128(p[i].cast()) })
}

/// Eight short blocks, zero-padded to 16 bytes: as [`load8`], reading only the bytes `k`
/// selects at each pointer (masked loads: the bytes left out are not accessed).
///
/// # Safety
/// At each of the 8 pointers, the bytes `k` selects are readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn load8_masked(p: &[*const u8], k: __mmask16) -> (__m512i, __m512i) {
    // SAFETY: the caller guarantees the selected bytes readable; AVX-512BW masked loads suppress
    // faults on the bytes the mask leaves out.
    halves8(|i| unsafe { _mm_maskz_loadu_epi8(k, p[i].cast()) })
}

/// The blocks `block(0)` to `block(7)` as their low and high 64-bit halves (lane `i`: block `i`).
/// Calls `block` with 0 to 7 only (what the callers' safety rests on).
#[inline]
#[target_feature(enable = "avx512f")]
fn halves8(block: impl Fn(usize) -> __m128i) -> (__m512i, __m512i) {
    let mut a = _mm512_castsi128_si512(block(0));
    let mut b = _mm512_castsi128_si512(block(1));
    a = _mm512_inserti32x4::<1>(a, block(2));
    b = _mm512_inserti32x4::<1>(b, block(3));
    a = _mm512_inserti32x4::<2>(a, block(4));
    b = _mm512_inserti32x4::<2>(b, block(5));
    a = _mm512_inserti32x4::<3>(a, block(6));
    b = _mm512_inserti32x4::<3>(b, block(7));
    // 128-bit lane k of a is block 2k, of b block 2k + 1: the interleaves keep the order.
    (_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
}

/// A 128-bit value (low and high halves) in limbs of 44, 44 and 40 bits.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn limbs(lo: __m512i, hi: __m512i) -> [__m512i; 3] {
    let m44 = _mm512_set1_epi64(M44);
    [
        _mm512_and_si512(lo, m44),
        _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)), m44),
        _mm512_srli_epi64::<24>(hi),
    ]
}

/// `acc + x * c` for `x * c < 2^52`, in one `vpmadd52luq`. (Written as shifts and adds, LLVM
/// merges them into a 64-bit multiply, which without AVX-512DQ becomes three `vpmuludq`.)
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_add_small(acc: __m512i, x: __m512i, c: i64) -> __m512i {
    _mm512_madd52lo_epu64(acc, x, _mm512_set1_epi64(c))
}

/// `x * 20`, for `x < 2^47`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn times20(x: __m512i) -> __m512i {
    mul_add_small(_mm512_setzero_si512(), x, 20)
}

/// The clamped `r` of one vector of lanes, its limbs and `20 r1`, `20 r2`.
pub(super) struct Key {
    r: [__m512i; 3],
    s1: __m512i,
    s2: __m512i,
}

/// `h * r mod 2^130 - 5`, partly carried (see the module doc).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn mul(h: [__m512i; 3], k: &Key) -> [__m512i; 3] {
    let z = _mm512_setzero_si512();
    let [h0, h1, h2] = h;
    let [r0, r1, r2] = k.r;
    let (s1, s2) = (k.s1, k.s2);
    let lo0 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r0), h1, s2), h2, s1);
    let hi0 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r0), h1, s2), h2, s1);
    let lo1 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r1), h1, r0), h2, s2);
    let hi1 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r1), h1, r0), h2, s2);
    let lo2 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r2), h1, r1), h2, r0);
    let hi2 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r2), h1, r1), h2, r0);
    // Place the high parts: position 0's into limb 1, 1's into limb 2, 2's into limb 0 * 5120.
    let d0 = mul_add_small(lo0, hi2, 5120); // hi2 < 2^38, so hi2 * 5120 < 2^52
    let d1 = _mm512_add_epi64(lo1, _mm512_slli_epi64::<8>(hi0));
    let d2 = _mm512_add_epi64(lo2, _mm512_slli_epi64::<8>(hi1));
    // Partial carry.
    let m44 = _mm512_set1_epi64(M44);
    let d1 = _mm512_add_epi64(d1, _mm512_srli_epi64::<44>(d0));
    let d2 = _mm512_add_epi64(d2, _mm512_srli_epi64::<44>(d1));
    let c = _mm512_srli_epi64::<42>(d2);
    let h0 = mul_add_small(_mm512_and_si512(d0, m44), c, 5); // c < 2^13
    [h0, _mm512_and_si512(d1, m44), _mm512_and_si512(d2, _mm512_set1_epi64(M42))]
}

/// `(h mod 2^130 - 5) + s mod 2^128`, as the low and high halves, for 8 lanes: the vector form
/// of [`crate::portable::finalize`] (the same steps, with lane masks for the final choice).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn finish(h: [__m512i; 3], s_lo: __m512i, s_hi: __m512i) -> (__m512i, __m512i) {
    let m44 = _mm512_set1_epi64(M44);
    let m42 = _mm512_set1_epi64(M42);
    let [mut h0, mut h1, mut h2] = h;
    // Full carry, twice round the top, so that h < 2^130.
    for _ in 0..2 {
        h1 = _mm512_add_epi64(h1, _mm512_srli_epi64::<44>(h0));
        h0 = _mm512_and_si512(h0, m44);
        h2 = _mm512_add_epi64(h2, _mm512_srli_epi64::<44>(h1));
        h1 = _mm512_and_si512(h1, m44);
        let c = _mm512_srli_epi64::<42>(h2);
        h0 = mul_add_small(h0, c, 5); // c < 2^30
        h2 = _mm512_and_si512(h2, m42);
    }
    h1 = _mm512_add_epi64(h1, _mm512_srli_epi64::<44>(h0));
    h0 = _mm512_and_si512(h0, m44);
    // g = h + 5 - 2^130; take it in the lanes where it did not borrow (h >= p).
    let g0 = _mm512_add_epi64(h0, _mm512_set1_epi64(5));
    let g1 = _mm512_add_epi64(h1, _mm512_srli_epi64::<44>(g0));
    let g2 = _mm512_add_epi64(h2, _mm512_srli_epi64::<44>(g1));
    let take: __mmask8 = _mm512_test_epi64_mask(g2, _mm512_set1_epi64(1 << 42));
    h0 = _mm512_mask_and_epi64(h0, take, g0, m44);
    h1 = _mm512_mask_and_epi64(h1, take, g1, m44);
    h2 = _mm512_mask_and_epi64(h2, take, g2, m42);
    // h mod 2^128 as two halves, plus s with the carry between them.
    let lo = _mm512_or_si512(h0, _mm512_slli_epi64::<44>(h1));
    let hi = _mm512_or_si512(_mm512_srli_epi64::<20>(h1), _mm512_slli_epi64::<24>(h2));
    let sum_lo = _mm512_add_epi64(lo, s_lo);
    let carry: __mmask8 = _mm512_cmplt_epu64_mask(sum_lo, lo);
    let sum_hi = _mm512_add_epi64(hi, s_hi);
    (sum_lo, _mm512_mask_add_epi64(sum_hi, carry, sum_hi, _mm512_set1_epi64(1)))
}

/// Per group: the clamped `r` limbs of each sub-lane's message, and its two power exponents.
struct Keys {
    r: [__m512i; 3],
    main: __m512i,
    last: __m512i,
}

/// `Key` (limbs and their multiples of 20) for a multiplier in limbs.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn key(r: [__m512i; 3]) -> Key {
    Key { r, s1: times20(r[1]), s2: times20(r[2]) }
}

/// One step of `G` vectors: absorb the block at each pointer of `p`, multiply, advance `p` by the
/// epoch's strides.
///
/// # Safety
/// Each of the first `8 * G` pointers of `p` points at 16 readable bytes (the `PolyPlan`
/// invariant, for a step within `ep`).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn step<const G: usize>(
    h: &mut [[__m512i; 3]; G],
    p: &mut [*const u8; MAX_SUBLANES],
    ep: &Epoch,
    hibit: &[__m512i; G],
    keys: &[Key; G],
) {
    for g in 0..G {
        // SAFETY: the caller guarantees 16 readable bytes at each of these pointers.
        let (lo, hi) = unsafe { load8(&p[8 * g..8 * g + 8]) };
        let m = limbs(lo, hi);
        let s = [
            _mm512_add_epi64(h[g][0], m[0]),
            _mm512_add_epi64(h[g][1], m[1]),
            _mm512_add_epi64(h[g][2], _mm512_or_si512(m[2], hibit[g])),
        ];
        h[g] = mul(s, &keys[g]);
    }
    for (q, s) in p.iter_mut().zip(&ep.stride).take(8 * G) {
        *q = q.wrapping_add(*s);
    }
}

/// The Poly1305 accumulators (limbs of 44, 44 and 42 bits plus carries) of the first `8 * G`
/// sub-lanes of `plan`, each keyed with the unclamped `r` in the first 16 bytes of its message's
/// `otk` raised to the plan's powers. Sub-lanes past `8 * G` are zero.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn accumulate<const G: usize>(plan: &PolyPlan<'_>, otk: &[[u8; 64]; MAX_LANES]) -> [[u64; 3]; MAX_SUBLANES] {
    let clamp_lo = _mm512_set1_epi64(0x0fff_fffc_0fff_ffff);
    let clamp_hi = _mm512_set1_epi64(0x0fff_fffc_0fff_fffc);
    let zero = _mm512_setzero_si512();
    let mut keys: [Keys; G] = core::array::from_fn(|_| Keys { r: [zero; 3], main: zero, last: zero });
    for (g, k) in keys.iter_mut().enumerate() {
        let ptrs: [*const u8; 8] = core::array::from_fn(|i| otk[plan.owner(8 * g + i) % MAX_LANES].as_ptr());
        // SAFETY: each pointer is the start of a 64-byte array of `otk`.
        let (lo, hi) = unsafe { load8(&ptrs) };
        k.r = limbs(_mm512_and_si512(lo, clamp_lo), _mm512_and_si512(hi, clamp_hi));
        let main: [i64; 8] = core::array::from_fn(|i| i64::from(plan.powers(8 * g + i)[0]));
        let last: [i64; 8] = core::array::from_fn(|i| i64::from(plan.powers(8 * g + i)[1]));
        // SAFETY: `main` and `last` are 64 readable bytes each; the loads are unaligned.
        unsafe {
            k.main = _mm512_loadu_si512(main.as_ptr().cast());
            k.last = _mm512_loadu_si512(last.as_ptr().cast());
        }
    }
    // The multipliers: r^main for every step but the last, r^last for the last. Raise r step by
    // step and keep the power each sub-lane wants (no power beyond the largest wanted).
    let mut step_key: [Key; G] = core::array::from_fn(|g| key(keys[g].r));
    let mut last_key: [Key; G] = core::array::from_fn(|g| key(keys[g].r));
    let mut cur: [[__m512i; 3]; G] = core::array::from_fn(|g| keys[g].r);
    for e in 2..=i64::from(plan.max_power()) {
        for g in 0..G {
            cur[g] = mul(cur[g], &key(keys[g].r));
            let want_main = _mm512_cmpeq_epi64_mask(keys[g].main, _mm512_set1_epi64(e));
            let want_last = _mm512_cmpeq_epi64_mask(keys[g].last, _mm512_set1_epi64(e));
            let mut main = step_key[g].r;
            let mut last = last_key[g].r;
            for i in 0..3 {
                main[i] = _mm512_mask_mov_epi64(main[i], want_main, cur[g][i]);
                last[i] = _mm512_mask_mov_epi64(last[i], want_last, cur[g][i]);
            }
            step_key[g] = key(main);
            last_key[g] = key(last);
        }
    }
    let mut h = [[zero; 3]; G];
    let bit128 = 1i64 << 40; // 2^128 = 2^40 in limb 2 (2^88)
    let steps = plan.steps();
    let mut epochs = plan.epochs();
    let mut ep = Epochs::empty();
    while epochs.next_into(&mut ep, 8 * G) {
        let mut p = ep.ptr;
        let hibit: [__m512i; G] =
            core::array::from_fn(|g| _mm512_maskz_set1_epi64((ep.hibit >> (8 * g)) as u8, bit128));
        // Every step but the plan's last multiplies by `step_key`; the last one (peeled, so that
        // the loop keeps only one set of keys in registers) by `last_key`.
        for _ in ep.start..ep.end.min(steps - 1) {
            // SAFETY: `p` is the epoch's pointers advanced to this step, within the epoch.
            unsafe { step(&mut h, &mut p, &ep, &hibit, &step_key) };
        }
        if ep.end == steps {
            // SAFETY: as above, at the epoch's (and plan's) last step.
            unsafe { step(&mut h, &mut p, &ep, &hibit, &last_key) };
        }
    }
    let mut out = [[0u64; 3]; MAX_SUBLANES];
    for (g, hg) in h.iter().enumerate() {
        let mut limb = [[0u64; 8]; 3];
        for (dst, v) in limb.iter_mut().zip(hg) {
            // SAFETY: `dst` is 64 writable bytes; the store is unaligned.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), *v) };
        }
        for i in 0..8 {
            out[8 * g + i] = [limb[0][i], limb[1][i], limb[2][i]];
        }
    }
    out
}

/// The tags of the first `8 * G` messages from their accumulators `h` (limbs of 44, 44 and 42
/// bits plus carries, well below 2^64) and the `s` halves of their one-time keys in `otk`.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn finish_tags<const G: usize>(
    h: &[[u64; 3]; MAX_LANES],
    otk: &[[u8; 64]; MAX_LANES],
) -> [[u8; 16]; MAX_LANES] {
    let mut out = [[0u8; 16]; MAX_LANES];
    for g in 0..G.min(MAX_LANES / 8) {
        let mut hv = [_mm512_setzero_si512(); 3];
        for (limb, v) in hv.iter_mut().enumerate() {
            let a: [u64; 8] = core::array::from_fn(|i| h[8 * g + i][limb]);
            // SAFETY: `a` is 64 readable bytes; the load is unaligned.
            *v = unsafe { _mm512_loadu_si512(a.as_ptr().cast()) };
        }
        let ptrs: [*const u8; 8] = core::array::from_fn(|i| otk[8 * g + i][16..].as_ptr());
        // SAFETY: each pointer is 16 bytes into a 64-byte array of `otk`: its `s`.
        let (s_lo, s_hi) = unsafe { load8(&ptrs) };
        let (lo, hi) = finish(hv, s_lo, s_hi);
        store_tags(lo, hi, &mut out[8 * g..8 * g + 8]);
    }
    out
}

/// Eight finished tags (`finish`'s halves) into `out`, one 16-byte tag per lane: the inverse
/// interleave of `load8`. 128-bit lane k of `a` is the tag of lane 2k, of `b` of lane 2k + 1.
#[target_feature(enable = "avx512f")]
pub(super) fn store_tags(lo: __m512i, hi: __m512i, out: &mut [[u8; 16]]) {
    let (a, b) = (_mm512_unpacklo_epi64(lo, hi), _mm512_unpackhi_epi64(lo, hi));
    let mut ta = [[0u8; 16]; 4];
    let mut tb = [[0u8; 16]; 4];
    // SAFETY: `ta` and `tb` are 64 writable bytes each; the stores are unaligned.
    unsafe {
        _mm512_storeu_si512(ta.as_mut_ptr().cast(), a);
        _mm512_storeu_si512(tb.as_mut_ptr().cast(), b);
    }
    for k in 0..4 {
        out[2 * k] = ta[k];
        out[2 * k + 1] = tb[k];
    }
}
