//! Time as the protocol core sees it: values handed in by the caller, never read from a clock.
//!
//! [`Timestamp`] is monotonic nanoseconds since an epoch the caller chooses (the daemon counts
//! from the moment it started, plus one nanosecond; tests pick fixed values). It fits in a `u64`,
//! so per-peer timer state can live in atomics. [`Timestamp::ZERO`] doubles as "never" in such
//! atomics, so callers start their clock at a non-zero value or accept that an event at exactly
//! zero reads as "never".

use core::ops::{Add, Sub};
use core::time::Duration;

/// Monotonic time in nanoseconds since a caller-chosen epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// From nanoseconds since the epoch.
    pub const fn from_nanos(n: u64) -> Self {
        Timestamp(n)
    }
    /// From whole seconds since the epoch.
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s * 1_000_000_000)
    }
    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
    /// Whether `self + d` is at or before `now` (the kernel's `wg_birthdate_has_expired`,
    /// which treats "exactly d ago" as expired).
    pub fn has_expired(self, d: Duration, now: Timestamp) -> bool {
        self.0.saturating_add(duration_nanos(d)) <= now.0
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
pub fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_nanos(d)))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_since(earlier)
    }
}

/// A TAI64N timestamp (12 bytes: big-endian seconds since 1970 + 2^62 (+10 leap seconds as
/// wireguard-go and the kernel write it), big-endian nanoseconds).
///
/// Built from Unix time in nanoseconds, which the caller supplies (see `Device::new`).
pub fn tai64n(unix_nanos: u64) -> [u8; 12] {
    const TAI64_BASE: u64 = (1u64 << 62) + 10;
    let secs = unix_nanos / 1_000_000_000;
    let nanos = (unix_nanos % 1_000_000_000) as u32;
    let nanos = nanos - nanos % crate::messages::TAI64N_NSEC_GRANULARITY;
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(TAI64_BASE + secs).to_be_bytes());
    out[8..].copy_from_slice(&nanos.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_matches_the_kernel_boundary() {
        let t = Timestamp::from_secs(10);
        assert!(!t.has_expired(Duration::from_secs(5), Timestamp::from_nanos(14_999_999_999)));
        assert!(t.has_expired(Duration::from_secs(5), Timestamp::from_secs(15)));
    }

    #[test]
    fn tai64n_is_ordered_and_rounded() {
        let a = tai64n(1_700_000_000_000_000_000);
        let b = tai64n(1_700_000_000_020_000_000);
        assert!(b > a);
        assert_eq!(&a[..8], &((1u64 << 62) + 10 + 1_700_000_000).to_be_bytes());
        let n = u32::from_be_bytes(b[8..].try_into().unwrap());
        assert_eq!(n % (1 << 24), 0);
        // Two initiations within the same 2^24 ns slot have equal timestamps.
        assert_eq!(tai64n(1_700_000_000_000_000_001), tai64n(1_700_000_000_016_000_000));
    }
}
