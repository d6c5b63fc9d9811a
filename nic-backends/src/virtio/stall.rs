//! [`StallDetector`]: stuck-transmit detection for the queue watchdog. A transmit queue is stalled
//! when descriptors are in flight and the device has completed none of them for a while.

use std::time::{Duration, Instant};

/// Stuck-transmit detection: descriptors in flight and no completion for a while.
#[derive(Debug, Default)]
pub(crate) struct StallDetector {
    last: u64,
    since: Option<Instant>,
}

impl StallDetector {
    /// True once `in_flight` > 0 and `completions` has not moved for `limit` (checked at `now`).
    pub(crate) fn stalled(&mut self, in_flight: usize, completions: u64, now: Instant, limit: Duration) -> bool {
        if in_flight == 0 || completions != self.last {
            self.last = completions;
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_transmits_are_detected_only_without_progress() {
        let mut d = StallDetector::default();
        let t = Instant::now();
        let lim = Duration::from_secs(5);
        assert!(!d.stalled(0, 0, t, lim), "nothing in flight");
        assert!(!d.stalled(3, 0, t, lim), "first look: the clock starts");
        assert!(!d.stalled(3, 0, t + Duration::from_secs(4), lim));
        assert!(d.stalled(3, 0, t + Duration::from_secs(5), lim), "5 s without a completion");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(6), lim), "a completion resets it");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(10), lim), "the clock restarted at 10 s");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(14), lim));
        assert!(d.stalled(3, 1, t + Duration::from_secs(15), lim));
        assert!(!d.stalled(0, 1, t + Duration::from_secs(30), lim), "idle is not stalled");
        assert!(!d.stalled(1, 1, t + Duration::from_secs(31), lim), "in flight again: a new window");
    }
}
