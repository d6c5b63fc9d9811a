//! A hashed timing wheel for peer deadlines: O(1) insert, O(1) amortised per tick, however many
//! peers (a million peers with several timers each cost nothing while their deadlines are far).
//!
//! Entries may be stale (a peer's deadline moved later): the owner calls
//! `Device::poll_timers`, which fires nothing early and returns the true next deadline, and
//! files the peer again. Several entries for one peer are harmless for the same reason.

use wgpmd_proto::device::PeerId;
use wgpmd_proto::time::Timestamp;

/// Slot width: 10 ms (timer rules are in seconds; jitter is up to 333 ms).
const TICK_NS: u64 = 10_000_000;
/// Slots: 4096 × 10 ms ≈ 41 s per revolution; later deadlines wait in their slot for their
/// revolution.
const SLOTS: usize = 4096;

/// The wheel.
pub struct Wheel {
    slots: Vec<Vec<(u64, PeerId)>>,
    /// The next tick to process.
    cursor: u64,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new(Timestamp::ZERO)
    }
}

impl Wheel {
    /// An empty wheel starting at `now`.
    pub fn new(now: Timestamp) -> Self {
        Wheel { slots: vec![Vec::new(); SLOTS], cursor: now.as_nanos() / TICK_NS, len: 0 }
    }

    /// File `peer` to be polled at `at` (rounded up to the next tick; a past deadline fires on
    /// the next advance).
    pub fn insert(&mut self, at: Timestamp, peer: PeerId) {
        let tick = at.as_nanos().div_ceil(TICK_NS).max(self.cursor);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, peer));
        self.len += 1;
    }

    /// Entries filed (including stale ones).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is filed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Move to `now`, appending every peer whose tick has come to `due` (deduplicated within
    /// one call is the caller's business: polling a peer twice is harmless).
    pub fn advance(&mut self, now: Timestamp, due: &mut Vec<PeerId>) {
        let target = now.as_nanos() / TICK_NS;
        // Never walk more than one revolution: everything is visited once per revolution.
        let steps = (target.saturating_sub(self.cursor) + 1).min(SLOTS as u64);
        for i in 0..steps {
            let tick = self.cursor + i;
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let before = slot.len();
            slot.retain(|&(t, p)| {
                if t <= target {
                    due.push(p);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
        }
        self.cursor = self.cursor.max(target + 1);
    }

    /// When the next entry might be due, for sleeping: the next tick if anything is filed.
    pub fn next_tick(&self) -> Option<Timestamp> {
        (!self.is_empty()).then(|| Timestamp::from_nanos(self.cursor * TICK_NS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let mut w = Wheel::new(Timestamp::from_secs(1));
        w.insert(Timestamp::from_secs(1) + Duration::from_millis(25), 1);
        w.insert(Timestamp::from_secs(100), 2); // more than one revolution away
        w.insert(Timestamp::from_secs(0), 3); // already past
        let mut due = Vec::new();
        w.advance(Timestamp::from_secs(1), &mut due);
        assert_eq!(due, vec![3]);
        due.clear();
        w.advance(Timestamp::from_secs(1) + Duration::from_millis(20), &mut due);
        assert!(due.is_empty());
        w.advance(Timestamp::from_secs(1) + Duration::from_millis(30), &mut due);
        assert_eq!(due, vec![1]);
        due.clear();
        for s in 2..100 {
            w.advance(Timestamp::from_secs(s), &mut due);
            assert!(due.is_empty(), "fired early at {s}");
        }
        w.advance(Timestamp::from_secs(100), &mut due);
        assert_eq!(due, vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_long_sleep_still_fires_everything_due() {
        let mut w = Wheel::new(Timestamp::ZERO);
        for p in 0..10_000u32 {
            w.insert(Timestamp::from_nanos(u64::from(p) * 7_000_000), p);
        }
        let mut due = Vec::new();
        w.advance(Timestamp::from_secs(500), &mut due);
        due.sort();
        assert_eq!(due, (0..10_000).collect::<Vec<_>>());
    }
}
