//! X25519 on eight lanes with AVX-512 IFMA: one independent Montgomery ladder per 64-bit lane.
//!
//! # Representation
//! A vector of eight field elements is five `__m512i` ([`Fe`]): vector `i` holds limb `i` (radix
//! 2^51) of every lane. `vpmadd52luq`/`vpmadd52huq` multiply the low 52 bits of two limbs and add
//! the low / high 52 bits of the 104-bit product to a 64-bit accumulator. With 51-bit limbs a
//! high half is worth 2^52 = 2·2^51: it belongs one position up, doubled. Positions 5 to 9 of a
//! product wrap to 0 to 4 times 19 (2^255 = 19 mod p); since their sums exceed 52 bits, each is
//! split at bit 52 first, and the parts above 2^52 again go one position up, doubled.
//! (That split of IFMA products and of the wrap by 19 follows the method of curve25519-dalek's
//! 4-way IFMA field arithmetic, `backend/vector/ifma/field.rs`, "Copyright (c) 2016-2021 isis
//! lovecruft, Copyright (c) 2016-2019 Henry de Valence", BSD-3-Clause; the code here is written
//! for 8 lanes and the ladder, not copied.)
//!
//! # Bounds
//! "Reduced" means every limb is below 2^51 + 2^11 (< 2^52, so IFMA sees all of it); "loose"
//! means every limb is below 2^55.2. Products take reduced inputs. A product's columns, folded,
//! are loose ([`mul_loose`], [`square_loose`]); one parallel carry pass ([`carry`]) maps limbs
//! below 2^57 to reduced ones. [`add`] and [`sub`] take loose inputs and end with that pass, so
//! a product that feeds only additions and subtractions (in the ladder: DA, CB, a24·E and the
//! new x_2, z_2, x_3, z_3) skips its own carry. The bound of each operation's columns before
//! the pass is written at the operation.
//!
//! # Constant time
//! Every lane runs the same instructions: no branch and no address depends on a scalar bit or a
//! coordinate. The ladder's conditional swap is a mask (all ones or zero per lane) built from the
//! lane's scalar bit with shifts and a subtraction. IFMA instructions' timing does not depend on
//! their operands.

use core::arch::x86_64::*;

use crate::LANES;

/// Eight field elements, one per lane: vector `i` is limb `i` of every lane.
type Fe = [__m512i; 5];

const M51: i64 = (1 << 51) - 1;

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: i64) -> __m512i {
    _mm512_set1_epi64(x)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn madd_lo(acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
    _mm512_madd52lo_epu64(acc, x, y)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn madd_hi(acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
    _mm512_madd52hi_epu64(acc, x, y)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add64(a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi64(a, b)
}

/// One parallel carry pass: limbs below 2^57 to reduced limbs. The carry out of limb `i`
/// (below 2^6) goes to limb `i + 1`; limb 4's wraps to limb 0 times 19. Limb 0 ends below
/// 2^51 + 19·2^6 < 2^51 + 2^11, the others below 2^51 + 2^6.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(z: Fe) -> Fe {
    let m = splat(M51);
    let c: [__m512i; 5] = core::array::from_fn(|i| _mm512_srli_epi64::<51>(z[i]));
    let l: [__m512i; 5] = core::array::from_fn(|i| _mm512_and_si512(z[i], m));
    [madd_lo(l[0], c[4], splat(19)), add64(l[1], c[0]), add64(l[2], c[1]), add64(l[3], c[2]), add64(l[4], c[3])]
}

/// a + b of loose inputs: columns below 2^56.2.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add(a: &Fe, b: &Fe) -> Fe {
    carry(core::array::from_fn(|i| add64(a[i], b[i])))
}

/// a - b of loose inputs, as a + 32p - b: 32p's limbs (32·(2^51 - 19) = 2^56 - 608, then
/// 2^56 - 32) exceed any loose limb, so no column goes below zero; columns below
/// 2^55.2 + 2^56 < 2^57.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn sub(a: &Fe, b: &Fe) -> Fe {
    let p0 = splat(32 * (M51 - 18));
    let pi = splat(32 * M51);
    carry(core::array::from_fn(|i| _mm512_sub_epi64(add64(a[i], if i == 0 { p0 } else { pi }), b[i])))
}

/// Folds the ten columns `z[k] = lo[k] + 2·hi[k]` of a product (each below 2^55) into five
/// loose limbs. Column k ≥ 5 is worth 19 times column k - 5: split at bit 52 into `zl`
/// (below 2^52) and `zh` (below 2^3), `19·z = lo(19·zl) + 2^52·(hi(19·zl) + 19·zh)`, the first
/// term at position k - 5, the second (below 2^8) doubled at position k - 4; position 5 (from
/// column 9) wraps again to 0 times 19, so 38 times. Columns 0 to 4 end below
/// 2^55 + 2^52 + 2^9 < 2^55.2: loose. (IFMA reads only the low 52 bits of its
/// inputs: `zl` needs no mask. Doublings are two additions, not a shift: on current Intel cores
/// 512-bit shifts share port 0 with IFMA, additions can also go to port 5.)
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn fold(lo: &[__m512i; 10], hi: &[__m512i; 10]) -> Fe {
    let zero = _mm512_setzero_si512();
    let r19 = splat(19);
    let z: [__m512i; 10] = core::array::from_fn(|k| add64(add64(lo[k], hi[k]), hi[k]));
    let mut r = [z[0], z[1], z[2], z[3], z[4]];
    let mut top = zero;
    for k in 5..10 {
        let zl = z[k]; // its low 52 bits: IFMA ignores the rest
        let zh = _mm512_srli_epi64::<52>(z[k]);
        r[k - 5] = madd_lo(r[k - 5], zl, r19);
        let up = madd_hi(madd_lo(zero, zh, r19), zl, r19);
        if k < 9 {
            r[k - 4] = add64(add64(r[k - 4], up), up);
        } else {
            top = up;
        }
    }
    r[0] = madd_lo(r[0], top, splat(38));
    r
}

/// a · b. Products of reduced limbs are below 2^102.01: `lo` parts below 2^52, `hi` parts
/// below 2^50.01; a column has at most five of each, so `lo[k] + 2·hi[k] < 2^54.4 + 2^53.4 < 2^55`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_loose(a: &Fe, b: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let mut lo = [zero; 10];
    let mut hi = [zero; 10];
    for i in 0..5 {
        for j in 0..5 {
            lo[i + j] = madd_lo(lo[i + j], a[i], b[j]);
            hi[i + j + 1] = madd_hi(hi[i + j + 1], a[i], b[j]);
        }
    }
    fold(&lo, &hi)
}

/// a². The products a_i·a_j with i ≠ j appear twice: accumulated once with weight 2. Column k
/// is `d_lo + 2·(o_lo + d_hi) + 4·o_hi` over at most one diagonal and two off-diagonal
/// products, below 2^52 + 2^54.01 + 2^52.01 < 2^55; passed to [`fold`] as `lo = d_lo + 2·o_lo`
/// and `hi = d_hi + 2·o_hi`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_loose(a: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let mut d_lo = [zero; 10];
    let mut d_hi = [zero; 10];
    let mut o_lo = [zero; 10];
    let mut o_hi = [zero; 10];
    for i in 0..5 {
        d_lo[2 * i] = madd_lo(d_lo[2 * i], a[i], a[i]);
        d_hi[2 * i + 1] = madd_hi(d_hi[2 * i + 1], a[i], a[i]);
        for j in i + 1..5 {
            o_lo[i + j] = madd_lo(o_lo[i + j], a[i], a[j]);
            o_hi[i + j + 1] = madd_hi(o_hi[i + j + 1], a[i], a[j]);
        }
    }
    let lo: [__m512i; 10] = core::array::from_fn(|k| add64(add64(d_lo[k], o_lo[k]), o_lo[k]));
    let hi: [__m512i; 10] = core::array::from_fn(|k| add64(add64(d_hi[k], o_hi[k]), o_hi[k]));
    fold(&lo, &hi)
}

/// a · 121665 (a24 of RFC 7748), loose. A limb times 121665 < 2^17 is below 2^69: its `lo`
/// (below 2^52) stays, its `hi` (below 2^17) goes one position up doubled, limb 4's wraps to 0
/// times 38. Columns below 2^52 + 2^23.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_a24_loose(a: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let s = splat(121665);
    let lo: [__m512i; 5] = core::array::from_fn(|i| madd_lo(zero, a[i], s));
    let hi: [__m512i; 5] = core::array::from_fn(|i| madd_hi(zero, a[i], s));
    [
        madd_lo(lo[0], hi[4], splat(38)),
        add64(add64(lo[1], hi[0]), hi[0]),
        add64(add64(lo[2], hi[1]), hi[1]),
        add64(add64(lo[3], hi[2]), hi[2]),
        add64(add64(lo[4], hi[3]), hi[3]),
    ]
}

/// a · b, reduced.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul(a: &Fe, b: &Fe) -> Fe {
    carry(mul_loose(a, b))
}

/// a², reduced.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square(a: &Fe) -> Fe {
    carry(square_loose(a))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_n(a: &Fe, n: usize) -> Fe {
    let mut t = *a;
    for _ in 0..n {
        t = square(&t);
    }
    t
}

/// z^(p-2) = z^-1 (0 for 0), by the fixed addition chain: 254 squarings, 11 products.
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert(z: &Fe) -> Fe {
    let z2 = square(z);
    let z9 = mul(&square_n(&z2, 2), z);
    let z11 = mul(&z9, &z2);
    let z_5_0 = mul(&square(&z11), &z9);
    let z_10_0 = mul(&square_n(&z_5_0, 5), &z_5_0);
    let z_20_0 = mul(&square_n(&z_10_0, 10), &z_10_0);
    let z_40_0 = mul(&square_n(&z_20_0, 20), &z_20_0);
    let z_50_0 = mul(&square_n(&z_40_0, 10), &z_10_0);
    let z_100_0 = mul(&square_n(&z_50_0, 50), &z_50_0);
    let z_200_0 = mul(&square_n(&z_100_0, 100), &z_100_0);
    let z_250_0 = mul(&square_n(&z_200_0, 50), &z_50_0);
    mul(&square_n(&z_250_0, 5), &z11)
}

/// Swaps `a` and `b` in the lanes where `mask` is all ones.
#[inline]
#[target_feature(enable = "avx512f")]
fn cswap(a: &mut Fe, b: &mut Fe, mask: __m512i) {
    for i in 0..5 {
        let t = _mm512_and_si512(mask, _mm512_xor_si512(a[i], b[i]));
        a[i] = _mm512_xor_si512(a[i], t);
        b[i] = _mm512_xor_si512(b[i], t);
    }
}

/// Overwrites `x` with `zero` by a volatile write, which the compiler may not drop.
#[inline]
fn wipe<T: Copy>(x: &mut T, zero: T) {
    // SAFETY: `x` is a valid, aligned, exclusive reference to a `T`.
    unsafe { core::ptr::write_volatile(x, zero) };
}

/// The eight ladders (see [`super::ladder`] for the layout).
///
/// # Safety
/// The CPU must support avx512f and avx512ifma.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) unsafe fn ladder8(k: &[[u64; LANES]; 4], u: &[[u64; LANES]; 5], out: &mut [[u64; LANES]; 5]) {
    // SAFETY: each row is 8 u64 = 64 readable bytes; `loadu` has no alignment requirement.
    let load = |row: &[u64; LANES]| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
    let mut kv: [__m512i; 4] = core::array::from_fn(|w| load(&k[w]));
    let x1: Fe = core::array::from_fn(|i| load(&u[i]));
    let zero = _mm512_setzero_si512();
    let one = splat(1);
    // The ladder's state (x_2, z_2, x_3, z_3), wiped before returning.
    let mut st: [Fe; 4] = [[one, zero, zero, zero, zero], [zero; 5], x1, [one, zero, zero, zero, zero]];
    let [x2, z2, x3, z3] = &mut st;
    let mut swap = zero;
    for t in (0..255usize).rev() {
        // Each lane's bit t, then a mask of all ones where (bit xor the previous bit) is 1.
        let bit = _mm512_and_si512(_mm512_srlv_epi64(kv[t / 64], splat((t % 64) as i64)), one);
        let mask = _mm512_sub_epi64(zero, _mm512_xor_si512(swap, bit));
        cswap(x2, x3, mask);
        cswap(z2, z3, mask);
        swap = bit;

        // RFC 7748 section 5. The four products of each stage are independent: the out-of-order
        // core overlaps their IFMA chains.
        let a = add(x2, z2);
        let b = sub(x2, z2);
        let c = add(x3, z3);
        let d = sub(x3, z3);
        // Reduced where a product takes it, loose where only add/sub do (see "Bounds").
        let aa = square(&a);
        let bb = square(&b);
        let da = mul_loose(&d, &a);
        let cb = mul_loose(&c, &b);
        let e = sub(&aa, &bb);
        let s = add(&da, &cb);
        let m = sub(&da, &cb);
        *x3 = square_loose(&s);
        let m2 = square(&m);
        *x2 = mul_loose(&aa, &bb);
        let f = add(&aa, &mul_a24_loose(&e));
        *z3 = mul_loose(&x1, &m2);
        *z2 = mul_loose(&e, &f);
    }
    let mask = _mm512_sub_epi64(zero, swap);
    cswap(x2, x3, mask);
    cswap(z2, z3, mask);
    let r = mul(&carry(*x2), &invert(&carry(*z2)));
    for (row, v) in out.iter_mut().zip(r) {
        // SAFETY: each row is 8 u64 = 64 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
    }
    wipe(&mut st, [[zero; 5]; 4]);
    wipe(&mut kv, [zero; 4]);
}
