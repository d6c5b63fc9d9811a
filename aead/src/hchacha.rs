//! HChaCha20 (draft-irtf-cfrg-xchacha §2.2, the subkey of XChaCha20) of up to [`MAX_LANES`]
//! independent `(key, 16-byte nonce)` pairs in one call, on the ChaCha20 kernels of the AEAD.
//!
//! HChaCha20's input state is ChaCha20's with the 16-byte nonce where the block counter and the
//! 12-byte nonce go, and its output is the state after the 20 rounds, words 0–3 and 12–15,
//! without the final addition. So the ChaCha20 block of the same key at counter
//! `nonce[0..4]` (little-endian) and nonce `nonce[4..16]` holds, in those words, the output plus
//! the input words: subtracting the constants and the nonce words gives the subkey. The block
//! is computed in the lanes like any key stream block of a burst, one lane per pair.
//!
//! Constant time: nothing depends on key or nonce bytes but the arithmetic. The key stream
//! blocks (which hold the subkeys) are wiped before the call returns.

use zeroize::Zeroize;

use crate::portable::{chacha20_block, SIGMA};
use crate::{Error, Lanes, KEY_LEN, MAX_LANES, NONCE_LEN};

/// The XChaCha20 nonce part HChaCha20 takes, in bytes.
pub const HNONCE_LEN: usize = 16;

/// One HChaCha20 of a [`Lanes::hchacha_lanes`] call: `out` receives the subkey of `key` and
/// `nonce`. (`Debug` shows nothing of the key or the subkey.)
pub struct HChaCha<'a> {
    /// The key.
    pub key: &'a [u8; KEY_LEN],
    /// The first 16 bytes of an XChaCha20 nonce.
    pub nonce: [u8; HNONCE_LEN],
    /// The subkey, once the call returned. Wiped when the job is dropped.
    pub out: [u8; KEY_LEN],
}

impl core::fmt::Debug for HChaCha<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HChaCha(..)")
    }
}

/// The subkey is wiped when the job is dropped (the caller copies it out first).
impl Drop for HChaCha<'_> {
    fn drop(&mut self) {
        self.out.zeroize();
    }
}

impl<'a> HChaCha<'a> {
    /// The job for `key` and `nonce`, its subkey not computed yet.
    pub fn new(key: &'a [u8; KEY_LEN], nonce: [u8; HNONCE_LEN]) -> Self {
        HChaCha { key, nonce, out: [0; KEY_LEN] }
    }

    /// The ChaCha20 counter and nonce whose block carries this job's subkey.
    fn counter_nonce(&self) -> (u32, [u8; NONCE_LEN]) {
        let c = u32::from_le_bytes([self.nonce[0], self.nonce[1], self.nonce[2], self.nonce[3]]);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&self.nonce[4..]);
        (c, n)
    }

    /// The subkey from the ChaCha20 block of [`HChaCha::counter_nonce`]: words 0–3 minus the
    /// constants, words 12–15 minus the nonce's words.
    fn take_block(&mut self, block: &[u8; 64]) {
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for i in 0..4 {
            let w = word(&block[4 * i..]).wrapping_sub(SIGMA[i]);
            self.out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
            let w = word(&block[48 + 4 * i..]).wrapping_sub(word(&self.nonce[4 * i..]));
            self.out[16 + 4 * i..16 + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// HChaCha20 of one pair, in plain Rust (the reference the lanes are compared with, and the
/// portable backend).
pub fn hchacha(key: &[u8; KEY_LEN], nonce: &[u8; HNONCE_LEN]) -> [u8; KEY_LEN] {
    let mut job = HChaCha::new(key, *nonce);
    let (c, n) = job.counter_nonce();
    let mut block = chacha20_block(key, c, &n);
    job.take_block(&block);
    block.zeroize();
    job.out
}

impl Lanes {
    /// The HChaCha20 subkey of every job, at most [`MAX_LANES`] at once, into each job's `out`.
    /// The same bytes on every backend as [`hchacha`] one at a time.
    ///
    /// # Errors
    /// [`Error::TooManyLanes`] if there are more than [`MAX_LANES`] jobs; then no job was written.
    pub fn hchacha_lanes(&self, jobs: &mut [HChaCha<'_>]) -> Result<(), Error> {
        if jobs.len() > MAX_LANES {
            return Err(Error::TooManyLanes { count: jobs.len() });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = crate::burst::Simd::new(self.backend()) {
            use crate::sched::{Job, KeyTable};
            let mut table = KeyTable::zeroed();
            let mut cn = [(0u32, [0u8; NONCE_LEN]); MAX_LANES];
            for (x, j) in cn.iter_mut().zip(jobs.iter()) {
                *x = j.counter_nonce();
            }
            let cn = &cn[..jobs.len()];
            table.fill(jobs.iter().zip(cn.iter()).map(|(j, (_, n))| (j.key, n)));
            let mut blocks = [[0u8; 64]; MAX_LANES];
            simd.chacha(
                &table,
                blocks.iter_mut().zip(cn.iter()).enumerate().map(|(l, (b, (c, _)))| Job {
                    lane: l as u32,
                    counter: *c,
                    dst: &mut b[..],
                }),
            );
            for (j, b) in jobs.iter_mut().zip(blocks.iter()) {
                j.take_block(b);
            }
            blocks.as_flattened_mut().zeroize();
            return Ok(());
        }
        for j in jobs.iter_mut() {
            j.out = hchacha(j.key, &j.nonce);
        }
        Ok(())
    }
}
