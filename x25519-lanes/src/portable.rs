//! The portable backend: RFC 7748 X25519 one lane at a time, in plain Rust, constant time.
//!
//! Field elements mod p = 2^255 - 19 are five unsigned 64-bit limbs in radix 2^51
//! (`value = Σ l[i]·2^(51·i)`), not necessarily below p. Products are 128-bit (`u128`, one `mul`
//! instruction on x86-64, whose time does not depend on its operands). No branch and no memory
//! index depends on a secret. The encoding helpers ([`Fe::from_bytes`], [`Fe::to_bytes`]) are
//! shared with the SIMD backend, which hands its results here for the final, canonical encoding.

use zeroize::Zeroize;

const MASK51: u64 = (1 << 51) - 1;

/// A field element: five limbs of radix 2^51.
///
/// "Reduced" below means every limb is below 2^52 (what [`Fe::carry`] returns); every operation
/// takes reduced inputs and returns a reduced output.
#[derive(Clone, Copy, Default)]
pub(crate) struct Fe(pub(crate) [u64; 5]);

/// Wiped with zeros (`Zeroize` through `DefaultIsZeroes`: the default is all zero limbs).
impl zeroize::DefaultIsZeroes for Fe {}

/// 4·p in radix 2^51 (limbs 4·(2^51 - 19), then 4·(2^51 - 1)): added before a subtraction so that
/// no limb goes below zero (a subtrahend's reduced limb is below 2^52 < 4·(2^51 - 19)).
const FOUR_P: [u64; 5] = [(MASK51 - 18) * 4, MASK51 * 4, MASK51 * 4, MASK51 * 4, MASK51 * 4];

impl Fe {
    pub(crate) const ZERO: Fe = Fe([0; 5]);
    pub(crate) const ONE: Fe = Fe([1, 0, 0, 0, 0]);

    /// The u-coordinate in `b` (little-endian), its top bit ignored (RFC 7748 section 5). A
    /// value from p to 2^255 - 1 is kept as it is: it is the same field element as value - p,
    /// and every operation works modulo p.
    pub(crate) fn from_bytes(b: &[u8; 32]) -> Fe {
        let w = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3) & (u64::MAX >> 1));
        Fe([
            w0 & MASK51,
            ((w0 >> 51) | (w1 << 13)) & MASK51,
            ((w1 >> 38) | (w2 << 26)) & MASK51,
            ((w2 >> 25) | (w3 << 39)) & MASK51,
            w3 >> 12,
        ])
    }

    /// The canonical encoding (the value reduced below p, little-endian). Takes any limbs below
    /// 2^64 - 2^51: two carry passes bring every limb below 2^51 (value below 2^255 < 2p), then one
    /// conditional subtraction of p, computed without a branch.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut l = self.0;
        for _ in 0..2 {
            // Pass 1: limbs 1..4 below 2^51, limb 0 below 2^51 + 19·2^13. Pass 2: the carry out of
            // each limb is at most 1 and every limb ends below 2^51.
            for i in 0..4 {
                l[i + 1] += l[i] >> 51;
                l[i] &= MASK51;
            }
            let c = l[4] >> 51;
            l[4] &= MASK51;
            l[0] += 19 * c;
        }
        // q = 1 exactly when the value (now below 2^255) is at least p, i.e. value + 19 ≥ 2^255.
        let mut q = (l[0] + 19) >> 51;
        for li in &l[1..] {
            q = (li + q) >> 51;
        }
        // value - p·q = value + 19·q - 2^255·q: add 19·q, carry, drop bit 255.
        l[0] += 19 * q;
        for i in 0..4 {
            l[i + 1] += l[i] >> 51;
            l[i] &= MASK51;
        }
        l[4] &= MASK51;
        let words = [
            l[0] | (l[1] << 51),
            (l[1] >> 13) | (l[2] << 38),
            (l[2] >> 26) | (l[3] << 25),
            (l[3] >> 39) | (l[4] << 12),
        ];
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(8).zip(words) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        l.zeroize();
        out
    }

    /// One carry pass, limb by limb: from limbs below 2^64 - 2^13 to limbs 1..4 below 2^51 + 2^13
    /// and limb 0 below 2^51 + 19·2^13 (all below 2^52: reduced).
    fn carry(mut l: [u64; 5]) -> Fe {
        let c4 = l[4] >> 51;
        l[4] &= MASK51;
        for i in 0..4 {
            l[i + 1] += l[i] >> 51;
            l[i] &= MASK51;
        }
        l[0] += 19 * c4;
        Fe(l)
    }

    fn add(&self, b: &Fe) -> Fe {
        // reduced + reduced < 2^53
        Fe::carry(core::array::from_fn(|i| self.0[i] + b.0[i]))
    }

    fn sub(&self, b: &Fe) -> Fe {
        // reduced + 4p - reduced: every limb in [0, 2^52 + 2^53)
        Fe::carry(core::array::from_fn(|i| self.0[i] + FOUR_P[i] - b.0[i]))
    }

    /// Product of two reduced elements. Each column sums five products below 2^104 (with a factor
    /// 19 on the wrapped ones, below 2^109), so below 2^112: fits `u128`.
    fn mul(&self, b: &Fe) -> Fe {
        let (a, b) = (&self.0, &b.0);
        let m = |x: u64, y: u64| (x as u128) * (y as u128);
        let b19: [u64; 5] = core::array::from_fn(|i| b[i] * 19); // < 2^57
        let c0 = m(a[0], b[0]) + m(a[1], b19[4]) + m(a[2], b19[3]) + m(a[3], b19[2]) + m(a[4], b19[1]);
        let c1 = m(a[0], b[1]) + m(a[1], b[0]) + m(a[2], b19[4]) + m(a[3], b19[3]) + m(a[4], b19[2]);
        let c2 = m(a[0], b[2]) + m(a[1], b[1]) + m(a[2], b[0]) + m(a[3], b19[4]) + m(a[4], b19[3]);
        let c3 = m(a[0], b[3]) + m(a[1], b[2]) + m(a[2], b[1]) + m(a[3], b[0]) + m(a[4], b19[4]);
        let c4 = m(a[0], b[4]) + m(a[1], b[3]) + m(a[2], b[2]) + m(a[3], b[1]) + m(a[4], b[0]);
        Fe::carry_wide([c0, c1, c2, c3, c4])
    }

    /// Carries 128-bit columns (below 2^112) down to a reduced element: the carry out of limb 4
    /// is below 2^62, 19 times that wraps into limb 0, and one more step carries limb 0 into 1.
    fn carry_wide(c: [u128; 5]) -> Fe {
        let mut l = [0u64; 5];
        let mut carry = 0u128;
        for i in 0..5 {
            let t = c[i] + carry;
            l[i] = (t as u64) & MASK51;
            carry = t >> 51;
        }
        // carry < 2^62: 19·carry would not fit 64 bits, add it in 128.
        let t = l[0] as u128 + 19 * carry;
        l[0] = (t as u64) & MASK51;
        l[1] += (t >> 51) as u64; // < 2^51 + 2^16
        Fe(l)
    }

    fn square(&self) -> Fe {
        self.mul(self)
    }

    /// Product with a24 = 121665 (RFC 7748 section 5): limbs below 2^52 times 2^17, below 2^69.
    fn mul_a24(&self) -> Fe {
        let c: [u128; 5] = core::array::from_fn(|i| (self.0[i] as u128) * 121665);
        Fe::carry_wide(c)
    }

    fn square_n(&self, n: usize) -> Fe {
        let mut t = *self;
        for _ in 0..n {
            t = t.square();
        }
        t
    }

    /// self^(p-2) = self^-1 (0 for 0), by a fixed addition chain: 254 squarings, 11 products.
    pub(crate) fn invert(&self) -> Fe {
        let z = *self;
        let z2 = z.square();
        let z9 = z2.square_n(2).mul(&z);
        let z11 = z9.mul(&z2);
        let z_5_0 = z11.square().mul(&z9); // z^(2^5 - 1)
        let z_10_0 = z_5_0.square_n(5).mul(&z_5_0);
        let z_20_0 = z_10_0.square_n(10).mul(&z_10_0);
        let z_40_0 = z_20_0.square_n(20).mul(&z_20_0);
        let z_50_0 = z_40_0.square_n(10).mul(&z_10_0);
        let z_100_0 = z_50_0.square_n(50).mul(&z_50_0);
        let z_200_0 = z_100_0.square_n(100).mul(&z_100_0);
        let z_250_0 = z_200_0.square_n(50).mul(&z_50_0);
        z_250_0.square_n(5).mul(&z11) // z^(2^255 - 32 + 11) = z^(p - 2)
    }

    /// Swaps `a` and `b` when `mask` is all ones, leaves them when it is zero.
    fn cswap(a: &mut Fe, b: &mut Fe, mask: u64) {
        for i in 0..5 {
            let t = mask & (a.0[i] ^ b.0[i]);
            a.0[i] ^= t;
            b.0[i] ^= t;
        }
    }
}

/// The Montgomery ladder of RFC 7748 section 5 on one lane: `k` is the clamped scalar as four
/// little-endian 64-bit words, `u` the decoded u-coordinate. Returns x_2 · z_2^(p-2) (reduced,
/// not yet canonical).
pub(crate) fn ladder(k: &[u64; 4], u: &Fe) -> Fe {
    let x1 = *u;
    let (mut x2, mut z2, mut x3, mut z3) = (Fe::ONE, Fe::ZERO, x1, Fe::ONE);
    let mut swap = 0u64;
    for t in (0..255).rev() {
        let bit = (k[t / 64] >> (t % 64)) & 1;
        swap ^= bit;
        let mask = swap.wrapping_neg();
        Fe::cswap(&mut x2, &mut x3, mask);
        Fe::cswap(&mut z2, &mut z3, mask);
        swap = bit;

        let a = x2.add(&z2);
        let aa = a.square();
        let b = x2.sub(&z2);
        let bb = b.square();
        let e = aa.sub(&bb);
        let c = x3.add(&z3);
        let d = x3.sub(&z3);
        let da = d.mul(&a);
        let cb = c.mul(&b);
        x3 = da.add(&cb).square();
        z3 = x1.mul(&da.sub(&cb).square());
        x2 = aa.mul(&bb);
        z2 = e.mul(&aa.add(&e.mul_a24()));
    }
    let mask = swap.wrapping_neg();
    Fe::cswap(&mut x2, &mut x3, mask);
    Fe::cswap(&mut z2, &mut z3, mask);
    let r = x2.mul(&z2.invert());
    x2.zeroize();
    z2.zeroize();
    x3.zeroize();
    z3.zeroize();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// p = 2^255 - 19 plus `d` (d < 19), little-endian: the non-canonical encodings.
    fn p_plus(d: u8) -> [u8; 32] {
        let mut b = [0xffu8; 32];
        b[31] = 0x7f;
        b[0] = 0xed + d;
        b
    }

    fn small(v: u8) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = v;
        b
    }

    /// The final subtraction of p: values from p to 2^255 - 1 encode as value - p, values
    /// below p unchanged (random results almost never reach p, so the ladder tests cannot
    /// exercise this path).
    #[test]
    fn canonical_encoding_subtracts_p_exactly_when_needed() {
        for d in 0..19u8 {
            assert_eq!(Fe::from_bytes(&p_plus(d)).to_bytes(), small(d), "p + {d}");
        }
        let mut p_minus_1 = p_plus(0);
        p_minus_1[0] -= 1;
        assert_eq!(Fe::from_bytes(&p_minus_1).to_bytes(), p_minus_1);
        // The top bit is ignored on input.
        let mut top = small(5);
        top[31] = 0x80;
        assert_eq!(Fe::from_bytes(&top).to_bytes(), small(5));
    }

    /// The same value with limbs above 2^51 (as the ladder hands them over, up to 2^52 and
    /// beyond): moving 2^51 from limb i + 1 into limb i, or 2^255 (= 19) out of limb 4, must not
    /// change the encoding.
    #[test]
    fn canonical_encoding_of_unreduced_limbs() {
        let values = [p_plus(0), p_plus(18), [0x5a; 32], small(1), small(0), [0xff; 32]];
        for v in values {
            let f = Fe::from_bytes(&v);
            let want = f.to_bytes();
            for i in 0..4 {
                if f.0[i + 1] == 0 {
                    continue;
                }
                let mut g = f;
                g.0[i] += 1 << 51;
                g.0[i + 1] -= 1;
                assert_eq!(g.to_bytes(), want, "limb {i} borrowed from");
            }
            // 2^255 ≡ 19: adding 2^51 to limb 4 is adding 19 to the value.
            let mut g = f;
            g.0[4] += 1 << 51;
            let mut h = f;
            h.0[0] += 19;
            assert_eq!(g.to_bytes(), h.to_bytes());
        }
        // All limbs just below 2^52, the bound products return.
        let big = Fe([(1 << 52) - 1; 5]);
        assert_eq!(big.to_bytes(), Fe::carry(big.0).to_bytes());
    }

    #[test]
    fn inversion() {
        let x = Fe::from_bytes(&[0x37; 32]);
        assert_eq!(x.mul(&x.invert()).to_bytes(), small(1));
        assert_eq!(Fe::ZERO.invert().to_bytes(), small(0));
    }
}
