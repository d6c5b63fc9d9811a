//! ChaCha20 on AVX2: 8 blocks at once, one block per 32-bit lane.
//!
//! The layout of [`super::chacha_avx512`](mod@super::chacha_avx512) at half the width. The key table has 16 lanes, two
//! vectors per word: a job's word is picked from both halves with `vpermd` and blended on
//! `lane >= 8`. Rotations by 16 and 8 are byte shuffles, by 12 and 7 shifts.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use crate::portable::SIGMA;
use crate::sched::{Job, KeyTable};

/// 32 bytes from a word array.
#[inline]
#[target_feature(enable = "avx2")]
fn load8(a: &[u32]) -> __m256i {
    let a: &[u32; 8] = a.first_chunk().unwrap_or(&[0; 8]);
    // SAFETY: `a` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn rol16(x: __m256i) -> __m256i {
    let m = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
    );
    _mm256_shuffle_epi8(x, m)
}

#[inline]
#[target_feature(enable = "avx2")]
fn rol8(x: __m256i) -> __m256i {
    let m = _mm256_setr_epi8(
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
    );
    _mm256_shuffle_epi8(x, m)
}

/// RFC 8439 §2.1 on four vectors of words.
#[inline]
#[target_feature(enable = "avx2")]
fn quarter_round(x: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = _mm256_add_epi32(x[a], x[b]);
    x[d] = rol16(_mm256_xor_si256(x[d], x[a]));
    x[c] = _mm256_add_epi32(x[c], x[d]);
    let t = _mm256_xor_si256(x[b], x[c]);
    x[b] = _mm256_or_si256(_mm256_slli_epi32::<12>(t), _mm256_srli_epi32::<20>(t));
    x[a] = _mm256_add_epi32(x[a], x[b]);
    x[d] = rol8(_mm256_xor_si256(x[d], x[a]));
    x[c] = _mm256_add_epi32(x[c], x[d]);
    let t = _mm256_xor_si256(x[b], x[c]);
    x[b] = _mm256_or_si256(_mm256_slli_epi32::<7>(t), _mm256_srli_epi32::<25>(t));
}

/// Eight word vectors (words `0..8` or `8..16`) to the matching half blocks: `out[j]` is those
/// eight words of job `j`. As in the AVX-512 transpose, `u[g][i]`'s 128-bit lane `k` holds words
/// `4g..4g + 4` of job `4k + i`; one 128-bit-lane permute joins the two groups.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(x: &[__m256i]) -> [__m256i; 8] {
    let mut u = [[_mm256_setzero_si256(); 4]; 2];
    for g in 0..2 {
        let t0 = _mm256_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
        let t1 = _mm256_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
        let t2 = _mm256_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
        let t3 = _mm256_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
        u[g] = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
    }
    let mut out = [_mm256_setzero_si256(); 8];
    for i in 0..4 {
        out[i] = _mm256_permute2x128_si256::<0x20>(u[0][i], u[1][i]);
        out[4 + i] = _mm256_permute2x128_si256::<0x31>(u[0][i], u[1][i]);
    }
    out
}

/// The key stream blocks of 8 jobs, as (words 0..8, words 8..16) per job.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn blocks8(
    klo: &[__m256i; 11],
    khi: &[__m256i; 11],
    idx: &[u32; 8],
    ctr: &[u32; 8],
) -> ([__m256i; 8], [__m256i; 8]) {
    let x = state8(klo, khi, load8(idx), load8(ctr));
    (transpose8(&x[..8]), transpose8(&x[8..]))
}

/// The final state words (after the feed-forward) of 8 jobs, in the vertical layout: `x[w]` is
/// word `w` of the jobs of lanes `idx` (8 lane indices into the key table) at block counters
/// `ctr`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn state8(klo: &[__m256i; 11], khi: &[__m256i; 11], idx: __m256i, ctr: __m256i) -> [__m256i; 16] {
    let high = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7));
    let pick = |w: usize| {
        _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(klo[w], idx), _mm256_permutevar8x32_epi32(khi[w], idx), high)
    };
    let mut x = [_mm256_setzero_si256(); 16];
    for (w, c) in SIGMA.iter().enumerate() {
        x[w] = _mm256_set1_epi32(*c as i32);
    }
    for w in 0..8 {
        x[4 + w] = pick(w);
    }
    x[12] = ctr;
    for w in 0..3 {
        x[13 + w] = pick(8 + w);
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
        x[w] = _mm256_add_epi32(x[w], init[w]);
    }
    x
}

/// XORs one key stream block (two halves) into `dst` (1 to 64 bytes); a short block goes through
/// `spill`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn xor_block(dst: &mut [u8], lo: __m256i, hi: __m256i, spill: &mut [u8; 64]) {
    let p = dst.as_mut_ptr();
    if dst.len() >= 64 {
        // SAFETY: `dst` has at least 64 bytes (offsets 0 and 32, 32 bytes each), borrowed mutably;
        // the accesses are unaligned.
        unsafe {
            let q = p.add(32);
            _mm256_storeu_si256(p.cast(), _mm256_xor_si256(_mm256_loadu_si256(p.cast()), lo));
            _mm256_storeu_si256(q.cast(), _mm256_xor_si256(_mm256_loadu_si256(q.cast()), hi));
        }
    } else {
        let s = spill.as_mut_ptr();
        // SAFETY: `spill` is 64 writable bytes (offsets 0 and 32, 32 bytes each).
        unsafe {
            _mm256_storeu_si256(s.cast(), lo);
            _mm256_storeu_si256(s.add(32).cast(), hi);
        }
        for (d, k) in dst.iter_mut().zip(spill.iter()) {
            *d ^= k;
        }
    }
}

/// The key table's words for lanes 0 to 7 and 8 to 15, one vector per word each.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn key_halves(table: &KeyTable) -> ([__m256i; 11], [__m256i; 11]) {
    let mut klo = [_mm256_setzero_si256(); 11];
    let mut khi = [_mm256_setzero_si256(); 11];
    for (w, words) in table.words.iter().enumerate() {
        klo[w] = load8(&words[..8]);
        khi[w] = load8(&words[8..]);
    }
    (klo, khi)
}

/// XORs the key stream of every job into its destination, 8 jobs per vector.
#[target_feature(enable = "avx2")]
pub(super) fn blocks<'a>(table: &KeyTable, mut jobs: impl Iterator<Item = Job<'a>>) {
    let (klo, khi) = key_halves(table);
    let mut spill = [0u8; 64];
    loop {
        let mut idx = [0u32; 8];
        let mut ctr = [0u32; 8];
        let mut dst: [Option<&mut [u8]>; 8] = Default::default();
        let mut n = 0;
        for job in jobs.by_ref().take(8) {
            idx[n] = job.lane;
            ctr[n] = job.counter;
            dst[n] = Some(job.dst);
            n += 1;
        }
        if n == 0 {
            break;
        }
        let (lo, hi) = blocks8(&klo, &khi, &idx, &ctr);
        for (j, d) in dst.iter_mut().enumerate() {
            if let Some(d) = d {
                xor_block(d, lo[j], hi[j], &mut spill);
            }
        }
        if n < 8 {
            break;
        }
    }
    spill[..].zeroize();
}
