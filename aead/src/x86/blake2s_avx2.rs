//! BLAKE2s compression on AVX2: 8 lanes, one job per 32-bit lane.
//!
//! The layout of the AVX-512 kernel in 256-bit vectors. Rotations by 16 and 8 are byte
//! shuffles, by 12 and 7 two shifts and an OR; a lane whose `active` word is 0 keeps its
//! chaining value (a blend on that word). `compress_vl` is the same with AVX-512VL's `vprord`
//! for all four rotations (the AVX-512 backend's kernel for at most 8 jobs).

use core::arch::x86_64::*;

use crate::blake2s::{Step, IV, SIGMA};

/// 32 bytes from a word array.
#[inline]
#[target_feature(enable = "avx2")]
fn load(a: &[u32; 8]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 32 bytes into a word array.
#[inline]
#[target_feature(enable = "avx2")]
fn store(a: &mut [u32; 8], v: __m256i) {
    // SAFETY: `a` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn ror16(x: __m256i) -> __m256i {
    let r = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
    );
    _mm256_shuffle_epi8(x, r)
}

#[inline]
#[target_feature(enable = "avx2")]
fn ror8(x: __m256i) -> __m256i {
    let r = _mm256_setr_epi8(
        1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12,
    );
    _mm256_shuffle_epi8(x, r)
}

#[inline]
#[target_feature(enable = "avx2")]
fn ror12(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
}

#[inline]
#[target_feature(enable = "avx2")]
fn ror7(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
}

#[inline]
#[target_feature(enable = "avx2")]
fn g(v: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize, x: __m256i, y: __m256i) {
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), x);
    v[d] = ror16(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = ror12(_mm256_xor_si256(v[b], v[c]));
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), y);
    v[d] = ror8(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = ror7(_mm256_xor_si256(v[b], v[c]));
}

/// One compression step of 8 lanes (see [`Step`]), as a function `$name` with the target
/// features `$features`, the G function `$g` and the word-array `$load` / `$store` of those
/// features: the two kernels of this file differ only in their rotations.
macro_rules! compress_fn {
    ($(#[$doc:meta])* $name:ident, $features:literal, $g:ident, $load:ident, $store:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub(super) fn $name(h: &mut [[u32; 8]; 8], s: &Step<8>) {
            let mut m = [_mm256_setzero_si256(); 16];
            for (v, w) in m.iter_mut().zip(s.m.iter()) {
                *v = $load(w);
            }
            let mut hv = [_mm256_setzero_si256(); 8];
            for (v, w) in hv.iter_mut().zip(h.iter()) {
                *v = $load(w);
            }
            let mut v = [_mm256_setzero_si256(); 16];
            v[..8].copy_from_slice(&hv);
            for i in 0..8 {
                v[8 + i] = _mm256_set1_epi32(IV[i] as i32);
            }
            v[12] = _mm256_xor_si256(v[12], $load(&s.t_lo));
            v[13] = _mm256_xor_si256(v[13], $load(&s.t_hi));
            v[14] = _mm256_xor_si256(v[14], $load(&s.f));
            for r in &SIGMA {
                $g(&mut v, 0, 4, 8, 12, m[r[0]], m[r[1]]);
                $g(&mut v, 1, 5, 9, 13, m[r[2]], m[r[3]]);
                $g(&mut v, 2, 6, 10, 14, m[r[4]], m[r[5]]);
                $g(&mut v, 3, 7, 11, 15, m[r[6]], m[r[7]]);
                $g(&mut v, 0, 5, 10, 15, m[r[8]], m[r[9]]);
                $g(&mut v, 1, 6, 11, 12, m[r[10]], m[r[11]]);
                $g(&mut v, 2, 7, 8, 13, m[r[12]], m[r[13]]);
                $g(&mut v, 3, 4, 9, 14, m[r[14]], m[r[15]]);
            }
            let active = $load(&s.active);
            for (i, w) in h.iter_mut().enumerate() {
                let new = _mm256_xor_si256(hv[i], _mm256_xor_si256(v[i], v[i + 8]));
                $store(w, _mm256_blendv_epi8(hv[i], new, active));
            }
        }
    };
}

compress_fn!(
    /// One compression step of 8 lanes (see [`Step`]).
    compress, "avx2", g, load, store
);

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn g_vl(v: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize, x: __m256i, y: __m256i) {
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), x);
    v[d] = _mm256_ror_epi32::<16>(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = _mm256_ror_epi32::<12>(_mm256_xor_si256(v[b], v[c]));
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), y);
    v[d] = _mm256_ror_epi32::<8>(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = _mm256_ror_epi32::<7>(_mm256_xor_si256(v[b], v[c]));
}

compress_fn!(
    /// [`compress`] with AVX-512VL's `vprord` for the four rotations.
    compress_vl, "avx2,avx512f,avx512vl", g_vl, load, store
);
