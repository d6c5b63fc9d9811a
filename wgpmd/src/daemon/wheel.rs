//! A hashed timing wheel for peer deadlines with at most one entry per peer: O(1) insert, move
//! and remove, O(1) amortised per tick, however many peers (a million peers cost nothing while
//! their deadlines are far).
//!
//! Each peer has one node (indexed by [`PeerId`]) in at most one slot's list: the peer's *filed
//! deadline*. [`Wheel::insert`] files a deadline only when it is earlier than the one filed (or
//! none is): the node moves to the earlier slot and nothing is left behind, so the wheel holds
//! at most one entry per peer whatever the traffic (a peer whose timers move on every packet
//! used to add an entry per move). A later deadline is not filed: the filed one fires early,
//! the owner calls `Device::poll_timers`, which fires nothing early and returns the true next
//! deadline, and files that. When an entry fires it leaves the wheel (the peer has no filed
//! deadline until the owner files the next one).
//!
//! Memory: one 24-byte node per peer id ever filed (ids are dense slot numbers, reused after
//! removal) and one list head per slot.

use wgpmd_proto::device::PeerId;
use wgpmd_proto::time::Timestamp;

/// Slot width: 10 ms (timer rules are in seconds; jitter is up to 333 ms).
const TICK_NS: u64 = 10_000_000;
/// Slots: 4096 × 10 ms ≈ 41 s per revolution; later deadlines wait in their slot for their
/// revolution.
const SLOTS: usize = 4096;
/// No node (end of a list, or not filed).
const NIL: u32 = u32::MAX;

/// One peer's place on the wheel.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// The filed tick (meaningful while `filed`).
    tick: u64,
    next: u32,
    prev: u32,
    filed: bool,
}

const UNFILED: Node = Node { tick: 0, next: NIL, prev: NIL, filed: false };

/// The wheel.
pub struct Wheel {
    /// First node of each slot's list.
    heads: Vec<u32>,
    /// Per peer id.
    nodes: Vec<Node>,
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
        Wheel { heads: vec![NIL; SLOTS], nodes: Vec::new(), cursor: now.as_nanos() / TICK_NS, len: 0 }
    }

    fn slot(tick: u64) -> usize {
        (tick % SLOTS as u64) as usize
    }

    /// Make sure `peer` is polled no later than `at` (rounded up to the next tick; a past
    /// deadline fires on the next advance). Returns whether the filed deadline moved (false:
    /// an earlier or equal one is already filed).
    pub fn insert(&mut self, at: Timestamp, peer: PeerId) -> bool {
        if peer == NIL {
            return false;
        }
        let tick = at.as_nanos().div_ceil(TICK_NS).max(self.cursor);
        let i = peer as usize;
        if i >= self.nodes.len() {
            self.nodes.resize(i + 1, UNFILED);
        }
        let n = self.nodes[i];
        if n.filed {
            if n.tick <= tick {
                return false;
            }
            self.unlink(peer);
        }
        let s = Self::slot(tick);
        let head = self.heads[s];
        self.nodes[i] = Node { tick, next: head, prev: NIL, filed: true };
        if head != NIL {
            self.nodes[head as usize].prev = peer;
        }
        self.heads[s] = peer;
        self.len += 1;
        true
    }

    /// Take `peer` off the wheel (a removed peer). Returns whether it was filed.
    pub fn remove(&mut self, peer: PeerId) -> bool {
        if self.nodes.get(peer as usize).is_some_and(|n| n.filed) {
            self.unlink(peer);
            true
        } else {
            false
        }
    }

    fn unlink(&mut self, peer: PeerId) {
        let n = self.nodes[peer as usize];
        if n.prev == NIL {
            self.heads[Self::slot(n.tick)] = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
        self.nodes[peer as usize] = UNFILED;
        self.len -= 1;
    }

    /// The peer's filed deadline (its tick's start), if any.
    pub fn filed(&self, peer: PeerId) -> Option<Timestamp> {
        self.nodes.get(peer as usize).filter(|n| n.filed).map(|n| Timestamp::from_nanos(n.tick * TICK_NS))
    }

    /// Entries filed: at most one per peer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is filed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Move to `now`, taking every peer whose tick has come off the wheel and appending it to
    /// `due` (each at most once per call: a peer has one entry).
    pub fn advance(&mut self, now: Timestamp, due: &mut Vec<PeerId>) {
        let target = now.as_nanos() / TICK_NS;
        // Never walk more than one revolution: everything is visited once per revolution.
        let steps = (target.saturating_sub(self.cursor) + 1).min(SLOTS as u64);
        for i in 0..steps {
            let mut p = self.heads[Self::slot(self.cursor + i)];
            while p != NIL {
                let n = self.nodes[p as usize];
                if n.tick <= target {
                    self.unlink(p);
                    due.push(p);
                }
                p = n.next;
            }
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
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    /// Every list is consistent with the nodes, and `len` counts the filed nodes.
    fn check(w: &Wheel) {
        let mut seen = 0;
        for (s, &head) in w.heads.iter().enumerate() {
            let (mut p, mut prev) = (head, NIL);
            while p != NIL {
                let n = w.nodes[p as usize];
                assert!(n.filed && Wheel::slot(n.tick) == s && n.prev == prev, "node {p} in slot {s}: {n:?}");
                seen += 1;
                (prev, p) = (p, n.next);
            }
        }
        assert_eq!(seen, w.len());
        assert_eq!(w.nodes.iter().filter(|n| n.filed).count(), w.len());
    }

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
        check(&w);
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
        check(&w);
    }

    #[test]
    fn one_entry_per_peer_earlier_wins() {
        let t = |ms: u64| Timestamp::from_nanos(ms * 1_000_000);
        let mut w = Wheel::new(Timestamp::ZERO);
        assert!(w.insert(t(5_000), 7));
        // Later deadlines are not filed (the filed one fires early; poll_timers re-files).
        for ms in [5_000, 5_001, 9_000, 600_000] {
            assert!(!w.insert(t(ms), 7), "{ms} ms");
        }
        assert_eq!((w.len(), w.filed(7)), (1, Some(t(5_000))));
        // Earlier ones move the entry: still one.
        for ms in [4_000, 3_000, 100] {
            assert!(w.insert(t(ms), 7));
            assert_eq!((w.len(), w.filed(7)), (1, Some(t(ms))));
            check(&w);
        }
        // It fires once, at the earliest, and is gone.
        let mut due = Vec::new();
        w.advance(t(99), &mut due);
        assert!(due.is_empty());
        w.advance(t(100), &mut due);
        assert_eq!(due, vec![7]);
        assert!(w.is_empty() && w.filed(7).is_none());
        due.clear();
        w.advance(t(10_000), &mut due);
        assert!(due.is_empty(), "the superseded deadlines left nothing behind");
        // Filed again after firing (what the control core does with poll_timers' answer).
        assert!(w.insert(t(20_000), 7));
        assert!(w.remove(7) && !w.remove(7) && w.is_empty());
        w.advance(t(30_000), &mut due);
        assert!(due.is_empty(), "a removed peer does not fire");
        check(&w);
    }

    #[test]
    fn entries_never_exceed_peers_under_insert_storms() {
        const PEERS: u32 = 300;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut w = Wheel::new(Timestamp::ZERO);
        // Each peer's true deadline, as the device would report it.
        let mut deadline: Vec<Option<u64>> = vec![None; PEERS as usize];
        let mut now = 0u64;
        let mut due = Vec::new();
        let mut fired = 0u64;
        for round in 0..2_000u64 {
            // A storm: thousands of Wakes, earlier and later, for random peers.
            for _ in 0..500 {
                let p = rng.gen_range(0..PEERS);
                let at = now + rng.gen_range(0..120_000_000_000u64);
                let d = &mut deadline[p as usize];
                *d = Some(d.map_or(at, |d| d.min(at)));
                w.insert(Timestamp::from_nanos(at), p);
                assert!(w.len() <= PEERS as usize);
            }
            if round % 50 == 0 {
                check(&w);
            }
            now += rng.gen_range(0..2_000_000_000u64);
            w.advance(Timestamp::from_nanos(now), &mut due);
            for &p in &due {
                let d = deadline[p as usize].take().expect("fired a peer with no deadline");
                // Never before the earliest deadline's tick.
                assert!(d / TICK_NS <= now / TICK_NS, "peer {p} fired at {now} before {d}");
                fired += 1;
            }
            due.clear();
            // Nothing overdue is left on the wheel.
            for (p, d) in deadline.iter().enumerate() {
                if let Some(d) = d {
                    assert!(d.div_ceil(TICK_NS) >= now / TICK_NS, "peer {p} overdue");
                    assert!(w.filed(p as u32).is_some());
                }
            }
            assert!(w.len() <= PEERS as usize, "{} entries for {PEERS} peers", w.len());
        }
        assert!(fired > 10_000, "the storm fired only {fired}");
        check(&w);
    }
}
