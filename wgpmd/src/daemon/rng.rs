//! Each core's random numbers: a ChaCha20 generator seeded from the OS once, and again every
//! [`RESEED_EVERY`], so that a handshake costs no getrandom(2) system call (ephemeral keys,
//! sender indices, cookie nonces, timer jitter).
//!
//! Reseeding bounds how far back a copy of one core's generator state reaches: ephemeral keys
//! drawn more than [`RESEED_EVERY`] before it cannot be recomputed from it. If the OS refuses a
//! reseed (it never should once it gave the first seed), the generator goes on with its state
//! and the failure is logged.

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, OsRng, RngCore, SeedableRng};

use wgpmd_proto::time::Timestamp;

/// How often a core's generator takes a fresh seed from the OS.
pub const RESEED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A core's CSPRNG (see the module doc). Not `Clone`: two copies would draw the same keys.
pub(crate) struct CoreRng {
    rng: ChaCha20Rng,
    seeded_at: Timestamp,
}

impl CoreRng {
    /// A generator seeded from the OS at `now`.
    pub fn from_os(now: Timestamp) -> Result<CoreRng, rand_core::Error> {
        Ok(CoreRng { rng: ChaCha20Rng::from_rng(OsRng)?, seeded_at: now })
    }

    /// Take a fresh seed from the OS if the last one is [`RESEED_EVERY`] old (a comparison
    /// otherwise: call it once per loop iteration).
    pub fn reseed_if_due(&mut self, now: Timestamp) {
        if !self.seeded_at.has_expired(RESEED_EVERY, now) {
            return;
        }
        self.seeded_at = now;
        match ChaCha20Rng::from_rng(OsRng) {
            Ok(r) => self.rng = r,
            Err(e) => tracing::warn!("reseeding a core's random generator from the OS failed: {e}"),
        }
    }
}

impl RngCore for CoreRng {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.rng.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.rng.try_fill_bytes(dest)
    }
}

impl CryptoRng for CoreRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_generators_differ_and_reseeding_changes_the_stream() {
        let t0 = Timestamp::from_secs(1);
        let mut a = CoreRng::from_os(t0).unwrap();
        let mut b = CoreRng::from_os(t0).unwrap();
        assert_ne!(a.next_u64(), b.next_u64(), "two cores drew the same numbers");
        // Not due: the stream goes on as a copy of it would.
        let mut twin = ChaCha20Rng::from_seed(a.rng.get_seed());
        twin.set_word_pos(a.rng.get_word_pos());
        a.reseed_if_due(t0 + RESEED_EVERY / 2);
        assert_eq!(a.next_u64(), twin.next_u64());
        // Due: a fresh seed, so the copy no longer predicts it.
        a.reseed_if_due(t0 + RESEED_EVERY);
        assert_ne!(a.next_u64(), twin.next_u64());
        assert_eq!(a.seeded_at, t0 + RESEED_EVERY);
    }
}
