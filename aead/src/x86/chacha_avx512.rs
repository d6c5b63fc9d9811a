//! ChaCha20 on AVX-512: 16 blocks at once, one block per 32-bit lane.
//!
//! Vector `x[w]` holds state word `w` of 16 jobs ("vertical" layout); the jobs may belong to 16
//! different messages. The key and nonce words come from the transposed [`KeyTable`] with one
//! `vpermd` per word; after the 20 rounds a 16x16 transpose turns the words back into 16 key
//! stream blocks of 64 bytes, XORed into their destinations with byte-masked loads and stores
//! (AVX-512BW) for a short last block.

use core::arch::x86_64::*;

use crate::portable::SIGMA;
use crate::sched::{Job, KeyTable};

/// 64 bytes from a word array.
#[inline]
#[target_feature(enable = "avx512f")]
fn load16(a: &[u32; 16]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// The key table's 11 word vectors (key words 0 to 7, nonce words 0 to 2; lane `l` of each is
/// lane `l`'s word).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn key_words(table: &KeyTable) -> [__m512i; 11] {
    let mut kw = [_mm512_setzero_si512(); 11];
    for (v, w) in kw.iter_mut().zip(table.words.iter()) {
        *v = load16(w);
    }
    kw
}

/// RFC 8439 §2.1 on four vectors of words.
#[inline]
#[target_feature(enable = "avx512f")]
fn quarter_round(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = _mm512_add_epi32(x[a], x[b]);
    x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
    x[c] = _mm512_add_epi32(x[c], x[d]);
    x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
    x[a] = _mm512_add_epi32(x[a], x[b]);
    x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
    x[c] = _mm512_add_epi32(x[c], x[d]);
    x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
}

/// Word vectors to blocks: on return `x[j]` is the 16 words of job `j`.
///
/// Stage 1 and 2 (32- and 64-bit interleaves inside 128-bit lanes) leave, for each group `g` of
/// four words, `u[g][i]` whose 128-bit lane `k` holds those words of job `4k + i`. Stage 3 and 4
/// gather lane `k` of `u[0][i]..u[3][i]` into one vector with two 128-bit-lane shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(x: &mut [__m512i; 16]) {
    let mut u = [[_mm512_setzero_si512(); 4]; 4];
    for g in 0..4 {
        let t0 = _mm512_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
        let t1 = _mm512_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
        let t2 = _mm512_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
        let t3 = _mm512_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
        u[g] = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
    }
    for i in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x44>(u[0][i], u[1][i]);
        let v1 = _mm512_shuffle_i32x4::<0xee>(u[0][i], u[1][i]);
        let v2 = _mm512_shuffle_i32x4::<0x44>(u[2][i], u[3][i]);
        let v3 = _mm512_shuffle_i32x4::<0xee>(u[2][i], u[3][i]);
        x[i] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        x[4 + i] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        x[8 + i] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        x[12 + i] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
}

/// The key stream words of 16 jobs, not transposed: `x[w]` holds word `w` of every job's block,
/// job `j` being lane `idx[j]` of `kw` at block counter `ctr[j]` (32-bit lanes of the vectors).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn state16(kw: &[__m512i; 11], idx: __m512i, ctr: __m512i) -> [__m512i; 16] {
    let mut x = [_mm512_setzero_si512(); 16];
    for (w, c) in SIGMA.iter().enumerate() {
        x[w] = _mm512_set1_epi32(*c as i32);
    }
    for w in 0..8 {
        x[4 + w] = _mm512_permutexvar_epi32(idx, kw[w]);
    }
    x[12] = ctr;
    for w in 0..3 {
        x[13 + w] = _mm512_permutexvar_epi32(idx, kw[8 + w]);
    }
    let init = x;
    for _ in 0..10 {
        quarter_round(&mut x, 0, 4, 8, 12);
        quarter_round(&mut x, 1, 5, 9, 13);
        quarter_round(&mut x, 2, 6, 10, 14);
        quarter_round(&mut x, 3, 7, 11, 15);
        quarter_round(&mut x, 0, 5, 10, 15);
        quarter_round(&mut x, 1, 6, 11, 12);
        quarter_round(&mut x, 2, 7, 8, 13);
        quarter_round(&mut x, 3, 4, 9, 14);
    }
    for w in 0..16 {
        x[w] = _mm512_add_epi32(x[w], init[w]);
    }
    x
}

/// The key stream blocks of 16 jobs, XORed into `dst`: job `j` is lane `idx[j]` of `kw` at
/// block counter `ctr[j]` (32-bit lanes of the vectors).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn blocks16(kw: &[__m512i; 11], idx: __m512i, ctr: __m512i, dst: &mut [Option<&mut [u8]>; 16]) {
    let mut x = state16(kw, idx, ctr);
    transpose(&mut x);
    for (d, k) in dst.iter_mut().zip(x) {
        if let Some(d) = d {
            xor_block(d, k);
        }
    }
}

/// XORs one key stream block into `dst` (1 to 64 bytes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn xor_block(dst: &mut [u8], ks: __m512i) {
    let p = dst.as_mut_ptr();
    if dst.len() >= 64 {
        // SAFETY: `dst` has at least 64 bytes, borrowed mutably; the accesses are unaligned.
        unsafe { _mm512_storeu_si512(p.cast(), _mm512_xor_si512(_mm512_loadu_si512(p.cast()), ks)) }
    } else {
        let k: __mmask64 = (1u64 << dst.len()) - 1;
        // SAFETY: the byte mask selects the first `dst.len()` bytes, all in `dst`; masked-off
        // bytes are not accessed (AVX-512BW masked loads and stores suppress their faults).
        unsafe { _mm512_mask_storeu_epi8(p.cast(), k, _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, p.cast()), ks)) }
    }
}

/// XORs the key stream of every job into its destination, 16 jobs per vector.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn blocks<'a>(table: &KeyTable, mut jobs: impl Iterator<Item = Job<'a>>) {
    let kw = key_words(table);
    loop {
        // Lane indices and counters go straight into vector lanes (masked broadcasts): scalar
        // stores then a vector load would stall on store forwarding.
        let mut idx = _mm512_setzero_si512();
        let mut ctr = _mm512_setzero_si512();
        let mut dst: [Option<&mut [u8]>; 16] = Default::default();
        let mut n = 0;
        for job in jobs.by_ref().take(16) {
            let at: __mmask16 = 1 << n;
            idx = _mm512_mask_set1_epi32(idx, at, job.lane as i32);
            ctr = _mm512_mask_set1_epi32(ctr, at, job.counter as i32);
            dst[n] = Some(job.dst);
            n += 1;
        }
        if n == 0 {
            break;
        }
        blocks16(&kw, idx, ctr, &mut dst);
        if n < 16 {
            break;
        }
    }
}
