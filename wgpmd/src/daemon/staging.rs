//! Inner packets staged for peers without a session, bounded twice:
//!
//! - per peer: at most `MAX_STAGED_PACKETS` (the kernel's bound), the peer's oldest dropped
//!   first;
//! - per buffer pool: at most a quarter of the pool's buffers staged across all peers, the
//!   pool's oldest staged packet dropped first (`staged_dropped_cap`). Staged packets hold
//!   buffers of the worker that read them; without this bound, traffic towards a few dozen
//!   peers that never answer (an internet scan of the inner addresses does that) emptied the
//!   worker's pool, and the worker then received nothing at all, ARP and handshakes included.
//!   With it, at least three quarters of every pool stay for receiving.
//!
//! Order: every staged packet has a sequence number; each pool keeps its packets' (sequence,
//! peer) in arrival order, with stale items (packets already flushed or dropped) skipped when
//! met and compacted away when they outnumber the live ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use nic_backends::{Buffer, Pool};
use wgpmd_proto::device::PeerId;
use wgpmd_proto::messages::MAX_STAGED_PACKETS;

/// The share of a pool that may be staged: its capacity divided by this.
pub const POOL_SHARE_DIVISOR: usize = 4;
/// Cap for buffers of a pool nobody registered (not expected: every worker registers its own).
const UNREGISTERED_CAP: usize = 1024;

struct Staged {
    seq: u64,
    buf: Buffer,
}

struct PoolShare {
    cap: usize,
    count: usize,
    /// (sequence, peer) of the pool's staged packets, oldest first; may hold stale items.
    order: VecDeque<(u64, PeerId)>,
}

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, VecDeque<Staged>>,
    pools: HashMap<u32, PoolShare>,
    seq: u64,
}

/// What [`Staging::stage`] had to drop to keep its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StageDrops {
    /// The peer's oldest packet (the per-peer bound).
    pub peer_cap: bool,
    /// The pool's oldest packet (the per-pool bound).
    pub pool_cap: bool,
}

/// The staged packets (see the module documentation).
#[derive(Default)]
pub(crate) struct Staging {
    state: Mutex<State>,
    total: AtomicUsize,
}

impl Staging {
    /// Bound the packets staged in `pool`'s buffers to a quarter of its capacity.
    pub fn register_pool(&self, pool: &Pool) {
        let cap = (pool.capacity() / POOL_SHARE_DIVISOR).max(1);
        let mut s = self.lock();
        s.pools.entry(pool.id()).or_insert_with(|| PoolShare { cap, count: 0, order: VecDeque::new() }).cap = cap;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stage `buf` for `peer`, dropping the peer's or the pool's oldest packet if a bound is
    /// reached.
    pub fn stage(&self, peer: PeerId, buf: Buffer) -> StageDrops {
        let mut drops = StageDrops::default();
        let mut guard = self.lock();
        let s = &mut *guard;
        let pool_id = buf.pool_id();
        // The peer's bound: its oldest goes, whichever pool it came from.
        if s.peers.get(&peer).is_some_and(|q| q.len() >= MAX_STAGED_PACKETS) {
            if let Some(old) = s.peers.get_mut(&peer).and_then(VecDeque::pop_front) {
                s.release(old.buf.pool_id());
                drops.peer_cap = true;
            }
        }
        // The pool's bound: its oldest, whichever peer it was staged for.
        let share = s.pools.entry(pool_id).or_insert_with(|| PoolShare {
            cap: UNREGISTERED_CAP,
            count: 0,
            order: VecDeque::new(),
        });
        if share.count >= share.cap {
            drops.pool_cap = s.drop_oldest_of(pool_id);
        }
        s.seq += 1;
        let seq = s.seq;
        s.peers.entry(peer).or_default().push_back(Staged { seq, buf });
        if let Some(share) = s.pools.get_mut(&pool_id) {
            share.count += 1;
            share.order.push_back((seq, peer));
        }
        self.total.store(s.total(), Ordering::Relaxed);
        drops
    }

    /// Take every packet staged for `peer`, oldest first.
    pub fn take(&self, peer: PeerId) -> Vec<Buffer> {
        let mut s = self.lock();
        let Some(q) = s.peers.remove(&peer) else { return Vec::new() };
        let bufs: Vec<Buffer> = q.into_iter().map(|st| st.buf).collect();
        for b in &bufs {
            s.release(b.pool_id());
        }
        self.total.store(s.total(), Ordering::Relaxed);
        bufs
    }

    /// Packets staged now, across peers and pools.
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The most packets the registered pools may hold staged, together.
    pub fn capacity(&self) -> usize {
        self.lock().pools.values().map(|p| p.cap).sum()
    }

    /// Packets staged now in `pool`'s buffers.
    #[cfg(test)]
    fn in_pool(&self, pool: &Pool) -> usize {
        self.lock().pools.get(&pool.id()).map_or(0, |p| p.count)
    }
}

impl State {
    fn total(&self) -> usize {
        self.pools.values().map(|p| p.count).sum()
    }

    /// One packet of `pool_id` left the staging: count it, compact the pool's order if stale
    /// items dominate.
    fn release(&mut self, pool_id: u32) {
        let Some(share) = self.pools.get_mut(&pool_id) else { return };
        share.count = share.count.saturating_sub(1);
        if share.order.len() > 2 * share.count + 64 {
            let peers = &self.peers;
            share
                .order
                .retain(|&(seq, p)| peers.get(&p).is_some_and(|q| q.binary_search_by_key(&seq, |st| st.seq).is_ok()));
        }
    }

    /// Drop the oldest packet staged in `pool_id`'s buffers. Returns whether one was dropped.
    fn drop_oldest_of(&mut self, pool_id: u32) -> bool {
        loop {
            let Some(share) = self.pools.get_mut(&pool_id) else { return false };
            let Some((seq, peer)) = share.order.pop_front() else { return false };
            let Some(q) = self.peers.get_mut(&peer) else { continue };
            // A peer's queue is in sequence order.
            let Ok(i) = q.binary_search_by_key(&seq, |st| st.seq) else { continue };
            let _ = q.remove(i);
            if q.is_empty() {
                self.peers.remove(&peer);
            }
            self.release(pool_id);
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer of `pool` holding `tag` (to tell packets apart).
    fn packet(pool: &Pool, tag: u32) -> Buffer {
        let mut b = pool.alloc().expect("pool not empty");
        b.append(4).unwrap().copy_from_slice(&tag.to_be_bytes());
        b
    }

    fn tag(b: &Buffer) -> u32 {
        u32::from_be_bytes(b.data()[..4].try_into().unwrap())
    }

    #[test]
    fn per_peer_bound_drops_the_peers_oldest() {
        let pool = Pool::new("t", 4096).unwrap();
        let s = Staging::default();
        s.register_pool(&pool);
        let mut dropped = 0;
        for i in 0..200 {
            let d = s.stage(1, packet(&pool, i));
            dropped += u32::from(d.peer_cap);
            assert!(!d.pool_cap);
        }
        assert_eq!((dropped, s.len()), (200 - MAX_STAGED_PACKETS as u32, MAX_STAGED_PACKETS));
        let got: Vec<u32> = s.take(1).iter().map(tag).collect();
        assert_eq!(got, (200 - MAX_STAGED_PACKETS as u32..200).collect::<Vec<_>>());
        assert_eq!(s.len(), 0);
        assert_eq!(pool.available(), 4096, "every buffer back in the pool");
    }

    #[test]
    fn pool_bound_drops_the_pools_oldest_across_peers() {
        // A pool of 1024: at most 256 staged. 64 peers that never answer, 20 packets each
        // (each under the per-peer bound), round robin.
        let pool = Pool::new("w0", 1024).unwrap();
        let other = Pool::new("w1", 1024).unwrap();
        let s = Staging::default();
        s.register_pool(&pool);
        s.register_pool(&other);
        let cap = 1024 / POOL_SHARE_DIVISOR;
        let mut cap_drops = 0;
        for round in 0..20u32 {
            for peer in 0..64u32 {
                let d = s.stage(peer, packet(&pool, round * 1000 + peer));
                assert!(!d.peer_cap);
                cap_drops += usize::from(d.pool_cap);
                assert!(s.in_pool(&pool) <= cap, "{} staged", s.in_pool(&pool));
            }
        }
        assert_eq!(s.in_pool(&pool), cap);
        assert_eq!(cap_drops, 64 * 20 - cap);
        assert_eq!(pool.available(), 1024 - cap, "three quarters stay free for receiving");
        // The survivors are the newest 256: rounds 16..20, every peer.
        let mut kept: Vec<u32> = (0..64).flat_map(|p| s.take(p)).map(|b| tag(&b)).collect();
        kept.sort();
        let mut want: Vec<u32> = (16..20u32).flat_map(|r| (0..64).map(move |p| r * 1000 + p)).collect();
        want.sort();
        assert_eq!(kept, want);
        // Another pool's packets are not counted against this one (its own quarter).
        for i in 0..cap as u32 {
            assert_eq!(s.stage(100, packet(&other, i)), StageDrops { peer_cap: i >= 128, pool_cap: false });
        }
        assert!(!s.stage(101, packet(&pool, 7)).pool_cap, "this pool is empty again");
        assert_eq!(s.len(), MAX_STAGED_PACKETS + 1);
    }

    #[test]
    fn stale_order_items_are_compacted() {
        let pool = Pool::new("t", 512).unwrap();
        let s = Staging::default();
        s.register_pool(&pool);
        // Stage and flush over and over: the order queue must not grow.
        for i in 0..10_000u32 {
            s.stage(i % 7, packet(&pool, i));
            if i % 3 == 0 {
                drop(s.take(i % 7));
            }
        }
        let st = s.lock();
        let share = &st.pools[&pool.id()];
        assert!(share.order.len() <= 2 * share.count + 64, "{} order items for {}", share.order.len(), share.count);
        assert!(share.count <= 512 / POOL_SHARE_DIVISOR);
    }
}
