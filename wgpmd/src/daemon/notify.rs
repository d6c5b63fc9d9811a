//! Notifications from the workers to the control core that cannot be lost.
//!
//! A worker's device calls produce [`Event`]s (a handshake is wanted, a session was confirmed, a
//! timer moved earlier). They used to go through one bounded queue, and an overflow dropped
//! them: a lost `HandshakeWanted` left the peer's "handshake wanted" flag set, so the peer never
//! asked again; a lost `SessionConfirmed` left its staged packets unsent. Here an event is a
//! bit in the peer's pending word, plus, for a wake, the earliest deadline (merged with
//! `fetch_min`):
//!
//! 1. The worker sets the bit together with `QUEUED`. If `QUEUED` was clear, the peer was not
//!    pending: the worker pushes its id on the bounded dirty list. If the list is full it sets
//!    the `rescan` flag instead (counted in `events_overflowed`).
//! 2. The control core pops ids and takes each peer's word (`swap(0)`, which clears `QUEUED`)
//!    and its deadline; after a `rescan` it walks every peer's word, a budget per iteration.
//!
//! Invariant: a peer whose word has `QUEUED` set is on the dirty list or will be seen by a walk
//! (the flag is set after the bit, and a walk that starts later sees the bit; one that had
//! already passed the peer leaves the flag for the next walk). So an overflow only delays a
//! notification ("check later"), and every bit set is taken exactly once. A peer is on the
//! list at most once while pending (duplicates appear only after a walk or a removal took the
//! word early, and are harmless: the word is then empty). The control core checks that the
//! peer still exists: a removed peer's word is cleared by the configuration change, and
//! notifications posted for it meanwhile find no peer.
//!
//! The words live in chunks of 1024 peers, allocated once each on first use (by configuration,
//! which ensures the chunk of every peer it adds), so workers index them without a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;
use wgpmd_proto::device::{Event, PeerId};
use wgpmd_proto::time::Timestamp;

/// Peers per chunk of pending words.
const CHUNK: usize = 1024;
/// Capacity of the dirty list (peers pending at once before a walk is needed).
pub const DIRTY_CAPACITY: usize = 4096;
/// Pending words a walk examines per call of [`Notes::drain`].
const WALK_PER_DRAIN: usize = 64 * 1024;

const QUEUED: u32 = 1 << 31;
const HANDSHAKE: u32 = 1 << 0;
const READY: u32 = 1 << 1;
const CONFIRMED: u32 = 1 << 2;
const GIVE_UP: u32 = 1 << 3;
const WAKE: u32 = 1 << 4;
/// No wake deadline.
const NO_WAKE: u64 = u64::MAX;

#[derive(Default)]
struct Word {
    bits: AtomicU32,
    wake: AtomicU64,
}

/// What was pending for one peer, as the events to act on in order: give-up, handshake wanted,
/// session ready, session confirmed, wake at the earliest deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    peer: PeerId,
    bits: u32,
    wake: Option<Timestamp>,
}

impl Pending {
    /// The events, in the order to act on them.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let p = self.peer;
        [
            (GIVE_UP, Event::GiveUp(p)),
            (HANDSHAKE, Event::HandshakeWanted(p)),
            (READY, Event::SessionReady(p)),
            (CONFIRMED, Event::SessionConfirmed(p)),
        ]
        .into_iter()
        .filter(|(b, _)| self.bits & b != 0)
        .map(|(_, e)| e)
        .chain(self.wake.filter(|_| self.bits & WAKE != 0).map(|at| Event::Wake { peer: p, at }))
    }

    /// The peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

/// Where a walk over every pending word stands (owned by the control core).
#[derive(Debug, Default)]
pub(crate) struct Walk {
    active: bool,
    next: usize,
}

/// The pending words and the dirty list (see the module documentation).
pub(crate) struct Notes {
    chunks: Box<[OnceLock<Box<[Word]>>]>,
    dirty: ArrayQueue<PeerId>,
    rescan: AtomicBool,
    overflows: AtomicU64,
}

impl Notes {
    /// Room for peer ids below `max_peers`, with a dirty list of `capacity`.
    pub fn new(max_peers: usize, capacity: usize) -> Self {
        Notes {
            chunks: (0..max_peers.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
            dirty: ArrayQueue::new(capacity.max(1)),
            rescan: AtomicBool::new(false),
            overflows: AtomicU64::new(0),
        }
    }

    fn word(&self, peer: PeerId) -> Option<&Word> {
        let i = peer as usize;
        let chunk = self.chunks.get(i / CHUNK)?.get_or_init(|| {
            (0..CHUNK).map(|_| Word { bits: AtomicU32::new(0), wake: AtomicU64::new(NO_WAKE) }).collect()
        });
        chunk.get(i % CHUNK)
    }

    /// Allocate the word of `peer` now (configuration does, so workers never allocate).
    pub fn ensure(&self, peer: PeerId) {
        let _ = self.word(peer);
    }

    /// Record `e` for the control core. Returns false when the dirty list was full (the
    /// notification is kept; a walk will find it).
    pub fn post(&self, e: &Event) -> bool {
        let (peer, bit) = match *e {
            Event::HandshakeWanted(p) => (p, HANDSHAKE),
            Event::SessionReady(p) => (p, READY),
            Event::SessionConfirmed(p) => (p, CONFIRMED),
            Event::GiveUp(p) => (p, GIVE_UP),
            Event::Wake { peer, .. } => (peer, WAKE),
            // `Event` may grow (non_exhaustive): a variant this daemon has no bit for is a bug
            // to fix here, said loudly rather than dropped in silence.
            other => {
                tracing::error!("no notification bit for protocol event {other:?}: not delivered");
                return true;
            }
        };
        let Some(w) = self.word(peer) else { return true };
        if let Event::Wake { at, .. } = *e {
            // Before the bit (whose Release publishes it): whoever takes the bit sees it.
            w.wake.fetch_min(at.as_nanos(), Ordering::Relaxed);
        }
        let old = w.bits.fetch_or(bit | QUEUED, Ordering::AcqRel);
        if old & QUEUED != 0 || self.dirty.push(peer).is_ok() {
            return true;
        }
        self.rescan.store(true, Ordering::Release);
        self.overflows.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn take(&self, peer: PeerId) -> Option<Pending> {
        let w = self.word(peer)?;
        let bits = w.bits.swap(0, Ordering::AcqRel) & !QUEUED;
        if bits == 0 {
            return None;
        }
        let at = if bits & WAKE != 0 { w.wake.swap(NO_WAKE, Ordering::Relaxed) } else { NO_WAKE };
        Some(Pending { peer, bits, wake: (at != NO_WAKE).then(|| Timestamp::from_nanos(at)) })
    }

    /// Forget what is pending for `peer` (it was removed; its id may be reused).
    pub fn clear(&self, peer: PeerId) {
        if let Some(w) = self.word(peer) {
            w.bits.store(0, Ordering::Release);
            w.wake.store(NO_WAKE, Ordering::Relaxed);
        }
    }

    /// Hand up to `budget` pending peers to `f`: from the dirty list, then from a walk over
    /// every word if an overflow asked for one (continued across calls by `walk`). Returns how
    /// many were handed over.
    pub fn drain(&self, walk: &mut Walk, budget: usize, mut f: impl FnMut(Pending)) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(peer) = self.dirty.pop() else { break };
            if let Some(p) = self.take(peer) {
                f(p);
                n += 1;
            }
        }
        if !walk.active && n < budget && self.rescan.swap(false, Ordering::AcqRel) {
            *walk = Walk { active: true, next: 0 };
        }
        if walk.active {
            let end = (walk.next + WALK_PER_DRAIN).min(self.chunks.len() * CHUNK);
            while walk.next < end && n < budget {
                let peer = walk.next as PeerId;
                walk.next += 1;
                // Chunks never touched hold nothing.
                if self.chunks[peer as usize / CHUNK].get().is_none() {
                    walk.next = walk.next.next_multiple_of(CHUNK);
                    continue;
                }
                if let Some(p) = self.take(peer) {
                    f(p);
                    n += 1;
                }
            }
            if walk.next >= self.chunks.len() * CHUNK {
                walk.active = false;
            }
        }
        n
    }

    /// Peers on the dirty list now.
    pub fn depth(&self) -> usize {
        self.dirty.len()
    }

    /// Times the dirty list was full (each turned into a walk).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Whether a walk is owed or under way.
    #[cfg(test)]
    pub fn walking(&self, walk: &Walk) -> bool {
        walk.active || self.rescan.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn drain_all(n: &Notes, walk: &mut Walk, budget: usize) -> Vec<Pending> {
        let mut out = Vec::new();
        while {
            let k = n.drain(walk, budget, |p| out.push(p));
            k > 0 || n.walking(walk) || n.depth() > 0
        } {}
        out
    }

    #[test]
    fn overflow_delays_but_never_loses() {
        // 8 slots on the dirty list, 5,000 peers each wanting a handshake and confirming a
        // session: the list overflows at once.
        const PEERS: u32 = 5_000;
        let n = Notes::new(1 << 20, 8);
        for p in 0..PEERS {
            n.post(&Event::HandshakeWanted(p));
            n.post(&Event::SessionConfirmed(p));
            n.post(&Event::Wake { peer: p, at: Timestamp::from_secs(u64::from(p) + 10) });
            n.post(&Event::Wake { peer: p, at: Timestamp::from_secs(u64::from(p) + 5) });
        }
        assert!(n.overflows() >= u64::from(PEERS) - 8, "overflows: {}", n.overflows());
        assert_eq!(n.depth(), 8);
        let mut walk = Walk::default();
        // A small budget per call: the walk resumes where it stopped.
        let got = drain_all(&n, &mut walk, 100);
        let mut by_peer: HashMap<PeerId, Vec<Event>> = HashMap::new();
        for p in &got {
            by_peer.entry(p.peer()).or_default().extend(p.events());
        }
        assert_eq!(by_peer.len(), PEERS as usize, "every peer delivered");
        for p in 0..PEERS {
            let want = vec![
                Event::HandshakeWanted(p),
                Event::SessionConfirmed(p),
                Event::Wake { peer: p, at: Timestamp::from_secs(u64::from(p) + 5) },
            ];
            assert_eq!(by_peer[&p], want, "peer {p}: each once, the earliest wake");
        }
        // Nothing left, nothing twice.
        assert_eq!(got.len(), PEERS as usize);
        assert!(drain_all(&n, &mut walk, 100).is_empty());
    }

    #[test]
    fn a_pending_peer_is_listed_once() {
        let n = Notes::new(4096, 16);
        for _ in 0..100 {
            n.post(&Event::HandshakeWanted(3));
            n.post(&Event::Wake { peer: 3, at: Timestamp::from_secs(9) });
        }
        assert_eq!((n.depth(), n.overflows()), (1, 0));
        let mut walk = Walk::default();
        let got = drain_all(&n, &mut walk, 10);
        assert_eq!(got.len(), 1);
        let ev: Vec<Event> = got[0].events().collect();
        assert_eq!(ev, vec![Event::HandshakeWanted(3), Event::Wake { peer: 3, at: Timestamp::from_secs(9) }]);
        // A removed peer's notifications are forgotten; its id is harmless on the list.
        n.post(&Event::SessionConfirmed(4));
        n.clear(4);
        assert!(drain_all(&n, &mut walk, 10).is_empty());
        // Ids past the table are refused quietly (the device never makes them).
        assert!(n.post(&Event::HandshakeWanted(1 << 30)));
    }

    #[test]
    fn concurrent_posters_lose_nothing() {
        // Four posters race a drainer on a tiny list: every peer's handshake request arrives.
        const PEERS: u32 = 20_000;
        let n = Arc::new(Notes::new(1 << 15, 4));
        let posters: Vec<_> = (0..4u32)
            .map(|t| {
                let n = n.clone();
                std::thread::spawn(move || {
                    for p in (t..PEERS).step_by(4) {
                        n.post(&Event::HandshakeWanted(p));
                    }
                })
            })
            .collect();
        let mut walk = Walk::default();
        let mut seen = vec![0u32; PEERS as usize];
        let mut drain = |n: &Notes| {
            n.drain(&mut walk, 256, |p| {
                assert!(p.events().eq([Event::HandshakeWanted(p.peer())]));
                seen[p.peer() as usize] += 1;
            })
        };
        while posters.iter().any(|h| !h.is_finished()) {
            drain(&n);
        }
        for h in posters {
            h.join().unwrap();
        }
        // Until a call hands over nothing with nothing listed and no walk owed or under way.
        let mut idle = 0;
        while idle < 3 {
            idle = if drain(&n) == 0 && n.depth() == 0 { idle + 1 } else { 0 };
        }
        assert!(seen.iter().all(|&c| c == 1), "missing or doubled: {:?}", seen.iter().position(|&c| c != 1));
        assert!(n.overflows() > 0, "the list never overflowed: the test proves nothing");
    }
}
