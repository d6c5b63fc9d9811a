//! BLAKE2s compression on AVX-512F: 16 lanes, one job per 32-bit lane.
//!
//! Vector `v[i]` holds state word `i` of every lane ("vertical" layout, as the ChaCha20 kernel);
//! the rotations are `vprord`; a lane whose `active` word is 0 keeps its chaining value (merge
//! under a mask register).

use core::arch::x86_64::*;

use crate::blake2s::{Step, IV, SIGMA};

/// 64 bytes from a word array.
#[inline]
#[target_feature(enable = "avx512f")]
fn load(a: &[u32; 16]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// 64 bytes into a word array.
#[inline]
#[target_feature(enable = "avx512f")]
fn store(a: &mut [u32; 16], v: __m512i) {
    // SAFETY: `a` is 64 writable bytes; the store is unaligned.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn g(v: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize, x: __m512i, y: __m512i) {
    v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), x);
    v[d] = _mm512_ror_epi32::<16>(_mm512_xor_si512(v[d], v[a]));
    v[c] = _mm512_add_epi32(v[c], v[d]);
    v[b] = _mm512_ror_epi32::<12>(_mm512_xor_si512(v[b], v[c]));
    v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), y);
    v[d] = _mm512_ror_epi32::<8>(_mm512_xor_si512(v[d], v[a]));
    v[c] = _mm512_add_epi32(v[c], v[d]);
    v[b] = _mm512_ror_epi32::<7>(_mm512_xor_si512(v[b], v[c]));
}

/// One compression step of 16 lanes (see [`Step`]).
#[target_feature(enable = "avx512f")]
pub(super) fn compress(h: &mut [[u32; 16]; 8], s: &Step<16>) {
    let mut m = [_mm512_setzero_si512(); 16];
    for (v, w) in m.iter_mut().zip(s.m.iter()) {
        *v = load(w);
    }
    let mut hv = [_mm512_setzero_si512(); 8];
    for (v, w) in hv.iter_mut().zip(h.iter()) {
        *v = load(w);
    }
    let mut v = [_mm512_setzero_si512(); 16];
    v[..8].copy_from_slice(&hv);
    for i in 0..8 {
        v[8 + i] = _mm512_set1_epi32(IV[i] as i32);
    }
    v[12] = _mm512_xor_si512(v[12], load(&s.t_lo));
    v[13] = _mm512_xor_si512(v[13], load(&s.t_hi));
    v[14] = _mm512_xor_si512(v[14], load(&s.f));
    for r in &SIGMA {
        g(&mut v, 0, 4, 8, 12, m[r[0]], m[r[1]]);
        g(&mut v, 1, 5, 9, 13, m[r[2]], m[r[3]]);
        g(&mut v, 2, 6, 10, 14, m[r[4]], m[r[5]]);
        g(&mut v, 3, 7, 11, 15, m[r[6]], m[r[7]]);
        g(&mut v, 0, 5, 10, 15, m[r[8]], m[r[9]]);
        g(&mut v, 1, 6, 11, 12, m[r[10]], m[r[11]]);
        g(&mut v, 2, 7, 8, 13, m[r[12]], m[r[13]]);
        g(&mut v, 3, 4, 9, 14, m[r[14]], m[r[15]]);
    }
    let active = _mm512_test_epi32_mask(load(&s.active), load(&s.active));
    for (i, w) in h.iter_mut().enumerate() {
        let new = _mm512_xor_si512(hv[i], _mm512_xor_si512(v[i], v[i + 8]));
        store(w, _mm512_mask_mov_epi32(hv[i], active, new));
    }
}
