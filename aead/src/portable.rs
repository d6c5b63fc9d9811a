//! The reference: ChaCha20-Poly1305 as RFC 8439 writes it, one message at a time, no `unsafe`.
//!
//! The SIMD kernels must agree with this module bit for bit (the tests compare them on every
//! input they generate). It is also the [`Backend::Portable`](crate::Backend::Portable) path.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// "expand 32-byte k", the first four words of the ChaCha20 state (RFC 8439 §2.3).
pub const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// RFC 8439 §2.1: the quarter round on four words of the state.
fn quarter_round(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

/// RFC 8439 §2.3: the ChaCha20 block function, serialised little-endian.
pub fn chacha20_block(key: &[u8; KEY_LEN], counter: u32, nonce: &[u8; NONCE_LEN]) -> [u8; 64] {
    // The state: 4 constant words, 8 key words, the block counter, 3 nonce words.
    let mut init = [0u32; 16];
    init[..4].copy_from_slice(&SIGMA);
    for (i, w) in key.chunks_exact(4).enumerate() {
        init[4 + i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    init[12] = counter;
    for (i, w) in nonce.chunks_exact(4).enumerate() {
        init[13 + i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    let mut s = init;
    // 20 rounds: 10 times a column round and a diagonal round.
    for _ in 0..10 {
        quarter_round(&mut s, 0, 4, 8, 12);
        quarter_round(&mut s, 1, 5, 9, 13);
        quarter_round(&mut s, 2, 6, 10, 14);
        quarter_round(&mut s, 3, 7, 11, 15);
        quarter_round(&mut s, 0, 5, 10, 15);
        quarter_round(&mut s, 1, 6, 11, 12);
        quarter_round(&mut s, 2, 7, 8, 13);
        quarter_round(&mut s, 3, 4, 9, 14);
    }
    let mut out = [0u8; 64];
    for i in 0..16 {
        out[4 * i..4 * i + 4].copy_from_slice(&s[i].wrapping_add(init[i]).to_le_bytes());
    }
    s[..].zeroize();
    init[..].zeroize();
    out
}

/// RFC 8439 §2.4: XORs the ChaCha20 key stream from block `counter` on into `buf`.
///
/// The caller keeps `buf` within the 32-bit block counter (at most
/// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes from counter 1); past it the counter wraps.
pub fn chacha20_xor(key: &[u8; KEY_LEN], counter: u32, nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(64).enumerate() {
        let mut ks = chacha20_block(key, counter.wrapping_add(i as u32), nonce);
        for (b, k) in chunk.iter_mut().zip(ks.iter()) {
            *b ^= k;
        }
        ks[..].zeroize();
    }
}

/// RFC 8439 §2.5: Poly1305, with the 130-bit accumulator in three limbs of 44, 44 and 42 bits
/// (products in `u128`).
pub struct Poly1305 {
    r: [u64; 3],
    s: [u64; 2],
    h: [u64; 3],
}

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;

impl Poly1305 {
    /// A MAC keyed with the one-time key `r || s`; `r` is clamped here.
    pub fn new(key: &[u8; 32]) -> Self {
        let r =
            u128::from_le_bytes(key[..16].try_into().unwrap_or([0; 16])) & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;
        let s = u128::from_le_bytes(key[16..].try_into().unwrap_or([0; 16]));
        Poly1305 { r: to_limbs(r), s: [s as u64, (s >> 64) as u64], h: [0; 3] }
    }

    /// Absorbs one 16-byte block; `hibit` is the 2^128 bit (set for every full block, and for the
    /// AEAD's zero-padded blocks).
    pub fn block(&mut self, block: &[u8; 16], hibit: bool) {
        let m = to_limbs(u128::from_le_bytes(*block));
        let [h0, h1, h2] = &mut self.h;
        *h0 += m[0];
        *h1 += m[1];
        *h2 += m[2] | (u64::from(hibit) << 40);
        // h *= r mod 2^130 - 5. Terms at 2^132 and above fold back times 20 (2^130 = 5, so
        // 2^132 = 20).
        let [r0, r1, r2] = self.r.map(u128::from);
        let (s1, s2) = (r1 * 20, r2 * 20);
        let (x0, x1, x2) = (u128::from(*h0), u128::from(*h1), u128::from(*h2));
        let d0 = x0 * r0 + x1 * s2 + x2 * s1;
        let d1 = x0 * r1 + x1 * r0 + x2 * s2;
        let d2 = x0 * r2 + x1 * r1 + x2 * r0;
        // Carry: limbs back to 44, 44, 42 bits (h1 may exceed by one carry; h stays below 2^131).
        let d1 = d1 + (d0 >> 44);
        *h0 = d0 as u64 & M44;
        let d2 = d2 + (d1 >> 44);
        *h1 = d1 as u64 & M44;
        let c = (d2 >> 42) as u64;
        *h2 = d2 as u64 & M42;
        *h0 += c * 5;
        *h1 += *h0 >> 44;
        *h0 &= M44;
    }

    /// Absorbs a message: full blocks, then the last partial block with a 0x01 byte appended and no
    /// 2^128 bit (RFC 8439 §2.5.1).
    pub fn update(&mut self, msg: &[u8]) {
        let mut chunks = msg.chunks_exact(16);
        for c in &mut chunks {
            self.block(c.try_into().unwrap_or(&[0; 16]), true);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            b[rest.len()] = 1;
            self.block(&b, false);
            b[..].zeroize();
        }
    }

    /// Absorbs `data` zero-padded to a multiple of 16 bytes, every block with the 2^128 bit: the
    /// AEAD's `pad16` (RFC 8439 §2.8).
    pub fn update_padded(&mut self, data: &[u8]) {
        for c in data.chunks(16) {
            let mut b = [0u8; 16];
            b[..c.len()].copy_from_slice(c);
            self.block(&b, true);
            b[..].zeroize();
        }
    }

    /// The tag: `(h mod 2^130 - 5) + s mod 2^128`.
    pub fn finish(self) -> [u8; TAG_LEN] {
        let mut this = self;
        let t = finalize(this.h, this.s);
        this.zeroize();
        t
    }
}

impl Zeroize for Poly1305 {
    fn zeroize(&mut self) {
        self.r[..].zeroize();
        self.s[..].zeroize();
        self.h[..].zeroize();
    }
}

impl Drop for Poly1305 {
    fn drop(&mut self) {
        self.zeroize();
    }
}

/// A 128-bit number in limbs of 44, 44 and 40 bits.
fn to_limbs(x: u128) -> [u64; 3] {
    [x as u64 & M44, (x >> 44) as u64 & M44, (x >> 88) as u64]
}

/// Poly1305's last step, shared with the SIMD kernels: `h` in limbs of (up to) 44, 44 and 42 bits
/// plus a little carry, any value below 2^131; `s` as two 64-bit halves. Fully reduces `h` mod
/// 2^130 - 5 without branches, then adds `s` mod 2^128.
pub(crate) fn finalize(h: [u64; 3], s: [u64; 2]) -> [u8; TAG_LEN] {
    let [mut h0, mut h1, mut h2] = h;
    // Full carry, twice round the top so that h < 2^130 + small.
    h1 += h0 >> 44;
    h0 &= M44;
    h2 += h1 >> 44;
    h1 &= M44;
    h0 += (h2 >> 42) * 5;
    h2 &= M42;
    h1 += h0 >> 44;
    h0 &= M44;
    h2 += h1 >> 44;
    h1 &= M44;
    h0 += (h2 >> 42) * 5;
    h2 &= M42;
    h1 += h0 >> 44;
    h0 &= M44;
    // Now h < 2^130. g = h + 5 - 2^130; take g when it did not borrow (h >= p), with masks.
    let mut g0 = h0 + 5;
    let mut g1 = h1 + (g0 >> 44);
    g0 &= M44;
    let mut g2 = h2 + (g1 >> 44);
    g1 &= M44;
    let take_g = 0u64.wrapping_sub(g2 >> 42); // all ones when g >= 2^130
    g2 &= M42;
    h0 = (h0 & !take_g) | (g0 & take_g);
    h1 = (h1 & !take_g) | (g1 & take_g);
    h2 = (h2 & !take_g) | (g2 & take_g);
    let h = u128::from(h0) | (u128::from(h1) << 44) | (u128::from(h2) << 88);
    let s = u128::from(s[0]) | (u128::from(s[1]) << 64);
    h.wrapping_add(s).to_le_bytes()
}

/// RFC 8439 §2.6: the one-time Poly1305 key, the first 32 bytes of block 0.
pub fn poly1305_key(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    let mut block = chacha20_block(key, 0, nonce);
    let mut k = [0u8; 32];
    k.copy_from_slice(&block[..32]);
    block[..].zeroize();
    k
}

/// RFC 8439 §2.8: the tag over `aad` and the ciphertext `ct`.
pub fn aead_tag(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], ct: &[u8]) -> [u8; TAG_LEN] {
    let mut otk = poly1305_key(key, nonce);
    let mut mac = Poly1305::new(&otk);
    otk[..].zeroize();
    mac.update_padded(aad);
    mac.update_padded(ct);
    let mut lens = [0u8; 16];
    lens[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lens[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    mac.block(&lens, true);
    mac.finish()
}

/// RFC 8439 §2.8: encrypts `buf` in place and returns the tag.
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    chacha20_xor(key, 1, nonce, buf);
    aead_tag(key, nonce, aad, buf)
}

/// RFC 8439 §2.8: checks `tag` (in constant time) over `aad` and the ciphertext in `buf`, then, only
/// if it matches, decrypts `buf` in place. Returns whether it matched; on a mismatch `buf` is left
/// as it was.
pub fn open(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
    let mut expected = aead_tag(key, nonce, aad, buf);
    let ok: bool = tag_word(&expected).ct_eq(&tag_word(tag)).into();
    expected[..].zeroize();
    if ok {
        chacha20_xor(key, 1, nonce, buf);
    }
    ok
}

/// A 16-byte tag as one word, for a single constant-time comparison (`subtle`'s byte-slice
/// comparison calls its non-inlined barrier once per byte). Used by every backend's open.
#[inline]
pub(crate) fn tag_word(tag: &[u8; TAG_LEN]) -> u128 {
    u128::from_ne_bytes(*tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 §2.1.1.
    #[test]
    fn quarter_round_vector() {
        let mut s = [0u32; 16];
        s[..4].copy_from_slice(&[0x11111111, 0x01020304, 0x9b8d6f43, 0x01234567]);
        quarter_round(&mut s, 0, 1, 2, 3);
        assert_eq!(s[..4], [0xea2a92f4, 0xcb1cf8ce, 0x4581472e, 0x5881c4bb]);
    }

    /// Poly1305 with r = 0 is s: the limbs and the final addition alone.
    #[test]
    fn poly1305_zero_r_is_s() {
        let mut key = [0u8; 32];
        key[16..].copy_from_slice(&[0xa5; 16]);
        let mut mac = Poly1305::new(&key);
        mac.update(b"anything at all, of any length..");
        assert_eq!(mac.finish(), [0xa5; 16]);
    }

    /// h = p - 1, p and p + 4 reduce to p - 1, 0 and 4.
    #[test]
    fn finalize_reduces_edge_values() {
        let p0 = M44 - 4; // p = 2^130 - 5: limbs (2^44 - 5, 2^44 - 1, 2^42 - 1)
        assert_eq!(finalize([p0 - 1, M44, M42], [0, 0]), (u128::MAX - 5).to_le_bytes());
        assert_eq!(finalize([p0, M44, M42], [0, 0]), [0; 16]);
        assert_eq!(finalize([p0 + 4, M44, M42], [0, 0]), 4u128.to_le_bytes());
        // Unreduced carries: h0 and h1 over 44 bits.
        assert_eq!(finalize([1 << 44, 0, 0], [0, 0]), (1u128 << 44).to_le_bytes());
        assert_eq!(finalize([0, 1 << 44, 0], [0, 0]), (1u128 << 88).to_le_bytes());
    }
}
