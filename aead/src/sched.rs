//! What the SIMD ChaCha20 kernels share: the work of a burst cut into jobs that fit SIMD lanes.
//!
//! ChaCha20: every 64-byte block of every message is a [`Job`] (lane, block counter, destination).
//! Jobs are independent, so a kernel fills each of its 16 (or 8) 32-bit SIMD lanes with any job,
//! of any message: a burst of uneven messages wastes at most one partly filled vector per phase.
//! The [`KeyTable`] holds every lane's key and nonce words, transposed, so a kernel builds the
//! state of a vector of jobs with one permute per word.

use zeroize::Zeroize;

use crate::{Lane, MAX_LANES};

/// One ChaCha20 block to compute: key and nonce of lane `lane`, block counter `counter`, key
/// stream XORed into `dst` (1 to 64 bytes; the first `dst.len()` bytes of the block).
pub(crate) struct Job<'a> {
    pub lane: u32,
    pub counter: u32,
    pub dst: &'a mut [u8],
}

/// The ChaCha20 blocks of `lanes` selected by `mask`, lane after lane, counters from 1.
///
/// The caller has checked the lengths ([`crate::MAX_MESSAGE_LEN`]), so counters fit in 32 bits.
pub(crate) fn data_jobs<'a, 'l: 'a>(
    lanes: &'a mut [Lane<'l>],
    mask: u16,
) -> impl Iterator<Item = Job<'a>> + use<'a, 'l> {
    lanes.iter_mut().enumerate().filter(move |(i, _)| mask & (1 << i) != 0).flat_map(|(i, lane)| {
        lane.buf.chunks_mut(64).enumerate().map(move |(b, dst)| Job { lane: i as u32, counter: b as u32 + 1, dst })
    })
}

/// Block 0 of the first `out.len()` lanes, XORed into `out` (zeroed by the caller, so it receives
/// the key stream: the one-time Poly1305 keys in the first 32 bytes).
pub(crate) fn key_jobs(out: &mut [[u8; 64]]) -> impl Iterator<Item = Job<'_>> {
    out.iter_mut().enumerate().map(|(i, dst)| Job { lane: i as u32, counter: 0, dst: &mut dst[..] })
}

/// The key and nonce words of up to [`MAX_LANES`] lanes, transposed: `words[w][lane]` is word
/// `w` (key words 0 to 7, then nonce words 0 to 2) of lane `lane`. Wiped on drop.
pub(crate) struct KeyTable {
    pub words: [[u32; MAX_LANES]; 11],
}

impl KeyTable {
    /// An all-zero table, to be filled in place with [`KeyTable::fill`] (returning a filled table
    /// by value costs a copy: the `Drop` impl keeps the compiler from building it in place).
    #[inline]
    pub fn zeroed() -> Self {
        KeyTable { words: [[0u32; MAX_LANES]; 11] }
    }

    /// Writes the `(key, nonce)` pairs in, at most [`MAX_LANES`] (more are ignored).
    #[inline]
    pub fn fill<'k>(&mut self, lanes: impl Iterator<Item = (&'k [u8; 32], &'k [u8; 12])>) {
        for (l, (key, nonce)) in lanes.take(MAX_LANES).enumerate() {
            for (w, c) in key.chunks_exact(4).chain(nonce.chunks_exact(4)).enumerate() {
                self.words[w][l] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        self.words.as_flattened_mut().zeroize();
    }
}
