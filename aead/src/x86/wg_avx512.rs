//! The WireGuard-shaped burst on AVX-512, fused: every lane without additional data and all of
//! one length (WireGuard pads its plaintexts to 16 bytes but not beyond the MTU, so a bulk flow's
//! full-size packets are 1420 bytes, and a burst of a bulk flow or of small packets is uniform).
//!
//! Such a burst needs none of the general path's bookkeeping. Its Poly1305 input is the
//! ciphertext's blocks (the last one, when short, read with byte-masked loads: zero-padded) and
//! one length block that is the same for every lane, so every sub-lane starts at step 0 and steps
//! 16 bytes at a time: no [`crate::plan::PolyPlan`], no epochs, no split. The one-time keys are
//! never transposed or stored in an array: block 0 of the 16 lanes is computed in the vertical
//! layout, and its words 0 to 7 (`r` and `s` of every lane) are widened straight into the
//! Poly1305 kernel's 64-bit lanes. (What the compiler spills of them and of the Poly1305 state
//! stays in the stack frame after the call, as any function's locals do: nothing here wipes the
//! stack.) The data blocks are XORed lane after lane in vectors of 16, built in a plain loop
//! rather than through the job iterators.

use core::arch::x86_64::*;

use super::chacha_avx512::{blocks16, key_words, state16};
use super::poly_ifma::{finish, key, limbs, load8, load8_masked, mul, store_tags, Key};
use crate::sched::KeyTable;
use crate::{Lane, MAX_LANES, TAG_LEN};

/// Poly1305 keys of 8 lanes: the clamped `r` (with its multiples of 20), and `s` as the low and
/// high 64-bit halves.
struct PolyKeys {
    key: Key,
    s_lo: __m512i,
    s_hi: __m512i,
}

/// 32-bit lanes `8 g .. 8 g + 8` of `v`, widened to 64-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn widen<const G: i32>(v: __m512i) -> __m512i {
    _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<G>(v))
}

/// The Poly1305 keys of lanes `8 G .. 8 G + 8` from the words of their block 0.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn poly_keys<const G: i32>(x: &[__m512i; 16]) -> PolyKeys {
    let pair = |a: __m512i, b: __m512i| _mm512_or_si512(widen::<G>(a), _mm512_slli_epi64::<32>(widen::<G>(b)));
    let r_lo = _mm512_and_si512(pair(x[0], x[1]), _mm512_set1_epi64(0x0fff_fffc_0fff_ffff));
    let r_hi = _mm512_and_si512(pair(x[2], x[3]), _mm512_set1_epi64(0x0fff_fffc_0fff_fffc));
    PolyKeys { key: key(limbs(r_lo, r_hi)), s_lo: pair(x[4], x[5]), s_hi: pair(x[6], x[7]) }
}

/// Block 0 of the 16 lanes of `kw`, as Poly1305 keys (lanes 0 to 7, then 8 to 15).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn one_time_keys(kw: &[__m512i; 11]) -> [PolyKeys; 2] {
    let idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let x = state16(kw, idx, _mm512_setzero_si512());
    [poly_keys::<0>(&x), poly_keys::<1>(&x)]
}

/// The AEAD tags of the lanes (1 to `8 G`, each `len` bytes, no additional data) over their
/// current buffers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
fn tags<const G: usize>(keys: &[PolyKeys; 2], lanes: &[Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    let n = lanes.len().clamp(1, 8 * G);
    // Sub-lanes past the last lane follow the last lane again; their results are dropped.
    let mut p: [*const u8; MAX_LANES] = core::array::from_fn(|i| lanes[i.min(n - 1)].buf.as_ptr());
    let zero = _mm512_setzero_si512();
    let bit128 = _mm512_set1_epi64(1 << 40); // 2^128 = 2^40 in limb 2 (2^88)
    let mut h = [[zero; 3]; G];
    // Absorb one block per sub-lane (`lo`, `hi`: group `g`'s 8 blocks), as a full block (with
    // 2^128).
    let absorb = |h: &mut [__m512i; 3], (lo, hi): (__m512i, __m512i), key: &Key| {
        let m = limbs(lo, hi);
        let s = [
            _mm512_add_epi64(h[0], m[0]),
            _mm512_add_epi64(h[1], m[1]),
            _mm512_add_epi64(h[2], _mm512_or_si512(m[2], bit128)),
        ];
        *h = mul(s, key);
    };
    let full = len / 16;
    for _ in 0..full {
        for g in 0..G {
            // SAFETY: every lane's buffer is `len` bytes; at step `t` (< len / 16) each pointer
            // is its lane's buffer + 16 t: 16 readable bytes.
            let blocks = unsafe { load8(&p[8 * g..8 * g + 8]) };
            absorb(&mut h[g], blocks, &keys[g].key);
        }
        for q in p.iter_mut() {
            *q = q.wrapping_add(16);
        }
    }
    let rem = len % 16;
    if rem != 0 {
        // The last, partial block, zero-padded to 16 bytes (RFC 8439 §2.8 pads the ciphertext),
        // read with byte-masked loads.
        let k: __mmask16 = (1 << rem) - 1;
        for g in 0..G {
            // SAFETY: each pointer is its lane's buffer + 16 * (len / 16): `rem` readable bytes,
            // the ones `k` selects.
            let blocks = unsafe { load8_masked(&p[8 * g..8 * g + 8], k) };
            absorb(&mut h[g], blocks, &keys[g].key);
        }
    }
    // The length block: 0 (additional data) in the low half, `len` in the high half.
    let m = limbs(zero, _mm512_set1_epi64(len as i64));
    let mut out = [[0u8; TAG_LEN]; MAX_LANES];
    for g in 0..G {
        let s = [
            _mm512_add_epi64(h[g][0], m[0]),
            _mm512_add_epi64(h[g][1], m[1]),
            _mm512_add_epi64(h[g][2], _mm512_or_si512(m[2], bit128)),
        ];
        let (lo, hi) = finish(mul(s, &keys[g].key), keys[g].s_lo, keys[g].s_hi);
        store_tags(lo, hi, &mut out[8 * g..8 * g + 8]);
    }
    out
}

/// XORs the data key stream (blocks from 1) of the lanes selected by `mask` into their buffers,
/// 16 blocks per vector, lane after lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn xor_data(kw: &[__m512i; 11], lanes: &mut [Lane<'_>], mask: u16) {
    let mut idx = _mm512_setzero_si512();
    let mut ctr = _mm512_setzero_si512();
    let mut dst: [Option<&mut [u8]>; 16] = Default::default();
    let mut k = 0;
    for (i, l) in lanes.iter_mut().enumerate().take(MAX_LANES) {
        if mask >> i & 1 == 0 {
            continue;
        }
        for (b, c) in l.buf.chunks_mut(64).enumerate() {
            let at: __mmask16 = 1 << k;
            idx = _mm512_mask_set1_epi32(idx, at, i as i32);
            // At most `MAX_MESSAGE_LEN / 64` blocks (checked by the caller): fits 32 bits.
            ctr = _mm512_mask_set1_epi32(ctr, at, (b as u32).wrapping_add(1) as i32);
            dst[k] = Some(c);
            k += 1;
            if k == 16 {
                blocks16(kw, idx, ctr, &mut dst);
                dst = Default::default();
                k = 0;
            }
        }
    }
    if k > 0 {
        blocks16(kw, idx, ctr, &mut dst);
    }
}

/// Seals a WireGuard-shaped burst (see the module doc; 1 to 16 lanes of `len` bytes): encrypts in
/// place and returns the tags.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
pub(super) fn seal(table: &KeyTable, lanes: &mut [Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    let kw = key_words(table);
    let keys = one_time_keys(&kw);
    xor_data(&kw, lanes, u16::MAX);
    if lanes.len() <= 8 {
        tags::<1>(&keys, lanes, len)
    } else {
        tags::<2>(&keys, lanes, len)
    }
}

/// The expected tags of a WireGuard-shaped burst being opened (the buffers hold ciphertext).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
pub(super) fn open_tags(table: &KeyTable, lanes: &[Lane<'_>], len: usize) -> [[u8; TAG_LEN]; MAX_LANES] {
    let kw = key_words(table);
    let keys = one_time_keys(&kw);
    if lanes.len() <= 8 {
        tags::<1>(&keys, lanes, len)
    } else {
        tags::<2>(&keys, lanes, len)
    }
}

/// Decrypts the lanes selected by `mask` (any lengths).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn decrypt(table: &KeyTable, lanes: &mut [Lane<'_>], mask: u16) {
    let kw = key_words(table);
    xor_data(&kw, lanes, mask);
}
