//! Transport data in bursts: the one implementation of the data path's rules
//! ([`Device::decapsulate`] and [`Device::encapsulate_to`] are bursts of one).
//!
//! A burst is cut in chunks of at most [`CHUNK`] messages; each chunk runs in phases, so that what
//! is shared between cores is touched once per keypair or peer per chunk rather than per message:
//!
//! Receive ([`Device::decapsulate_burst`]):
//! 1. parse every header, look every receiver index up (the worker's index cache: no lock, no
//!    reference count on a hit) and group the messages by keypair. In stages over the whole
//!    chunk, so that a large table's cache misses overlap instead of queueing (the DPDK way):
//!    prefetch the table slots of the cache's misses, then look them up through one read view
//!    of their shards (`IndexTable::read_shards`, held until the chunk's messages are decided:
//!    a miss's keypair is borrowed from the table, no reference count written) and prefetch
//!    their keypairs (key, flags, the window's lock and counter on one line; the counter's
//!    window word) and peer-table slots, then cache some (while the cache is working), then read
//!    the peers and prefetch their lines (endpoint, counters, timers);
//! 2. per keypair: retired (found in the table after leaving its peer's slots: an unknown
//!    index), the age check and, per message, the counter's limit; the messages that pass
//!    are the ones decrypted. The replay window is not read before decrypting (as the kernel's
//!    receive path: a replay costs what any forged message with a known index costs, one
//!    decryption), so it is locked once per keypair per chunk, in step 4;
//! 3. the AEAD over the burst, [`wgpmd_aead::Lanes::open_lanes`] in calls of at most 16 lanes, with
//!    the keypair's raw key bytes (verify, then decrypt: a failing lane keeps its ciphertext);
//! 4. per keypair: ONE lock to mark, deciding every message in burst order exactly as the
//!    single-message rules would have at its turn: limit, then replay (against the window as
//!    marked by the earlier messages of the burst, so a counter twice in one burst is accepted
//!    once), then the tag, then the marking;
//! 5. in burst order: key confirmation (`received_with`) once per keypair, keep_key_fresh, the
//!    inner-header and allowed-IPs checks (the IPv4 sources looked up together beforehand, with
//!    `AllowedIps::lookup_v4_batch`); a message whose keypair an earlier message's
//!    confirmation retired is an unknown index, as it would have been one message later (the
//!    dropped keypairs' indices leave the table once the read view is released);
//! 6. per peer: the endpoint (the last authenticated source: roaming), byte counter, timers.
//!
//! Send ([`Device::encapsulate_burst`]): first the loads of the chunk's peer-table slots, then
//! of the peers' lines, then of their current keypairs' sending lines are started (three
//! passes, each reading what the one before loaded; the keypair from the worker's send cache,
//! `sendcache`, when the peer's stamp still matches it, else from the peer's slots with its
//! reference count); then per peer its endpoint and current keypair once (a send-cache hit
//! takes no reference); per
//! message the buffer check; per keypair the counters reserved with one atomic operation that
//! stops at `REJECT_AFTER_MESSAGES`; headers and padding; [`wgpmd_aead::Lanes::seal_lanes`] in
//! calls of at most 16 lanes; per peer the byte counter, timers and the rekey check.
//!
//! The timer calls made once per peer per chunk are the ones whose repetition at the same `now`
//! changes nothing (`data_received` twice does: it is called twice when two or more data messages
//! arrived). Events may come in another order than one message at a time would give them, never
//! with other content.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use wgpmd_aead::{Lane, Lanes, MAX_LANES, TAG_LEN};

use super::data::{inner_addrs, Decapsulated, Encapsulated};
use super::indexcache::Found;
use super::{Device, DropReason, Event, IndexEntry, Output, Peer, PeerId};
use crate::messages::{DATA_HEADER_LEN, DATA_OVERHEAD, REJECT_AFTER_MESSAGES};
use crate::session::{padded_len, prefetch_refcount, Dropped, Keypair};
use crate::time::Timestamp;
use crate::wire::wireguard::TransportData;

/// Messages per chunk: the most a burst call works on at once (longer bursts are cut).
pub const CHUNK: usize = 32;
// A chunk's misses fit in one read view of the index table (beyond its shards, `get` answers
// nothing, and the message would count as of an unknown index).
const _: () = assert!(CHUNK <= crate::index::MAX_READS);
// Per-chunk bit masks (`unsealed`) are `u32`.
const _: () = assert!(CHUNK <= u32::BITS as usize);

/// One received transport-data message of a burst.
#[derive(Debug)]
pub struct RxItem<'a> {
    /// The UDP source it came from.
    pub src: SocketAddr,
    /// The whole WireGuard message, opened in place.
    pub msg: &'a mut [u8],
}

/// One inner packet of a burst to seal.
#[derive(Debug)]
pub struct TxItem<'a> {
    /// The peer it goes to.
    pub peer: PeerId,
    /// 16 bytes of headroom, the plaintext, then room for padding and the tag (as
    /// [`Device::encapsulate_to`]).
    pub buf: &'a mut [u8],
    /// Length of the plaintext at `buf[16..]`.
    pub plain_len: usize,
}

/// A small open-addressed map of `u32` keys to chunk-local numbers (at most [`CHUNK`] keys).
struct SmallMap {
    keys: [u32; 2 * CHUNK],
    vals: [u8; 2 * CHUNK],
}

impl SmallMap {
    const EMPTY: u8 = u8::MAX;
    fn new() -> Self {
        SmallMap { keys: [0; 2 * CHUNK], vals: [Self::EMPTY; 2 * CHUNK] }
    }
    #[inline]
    fn slot(&self, key: u32) -> usize {
        let mut s = (key.wrapping_mul(0x9e37_79b9) >> 26) as usize & (2 * CHUNK - 1);
        while self.vals[s] != Self::EMPTY && self.keys[s] != key {
            s = (s + 1) & (2 * CHUNK - 1);
        }
        s
    }
    #[inline]
    fn get(&self, key: u32) -> Option<u8> {
        let v = self.vals[self.slot(key)];
        (v != Self::EMPTY).then_some(v)
    }
    /// Insert (at most `CHUNK` distinct keys, so a free slot always exists).
    #[inline]
    fn insert(&mut self, key: u32, val: u8) {
        let s = self.slot(key);
        self.keys[s] = key;
        self.vals[s] = val;
    }
}

/// Where a message of a chunk stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Dropped for this reason (not counted yet).
    Drop(DropReason),
    /// Looked up, not yet checked.
    Pending,
    /// Passed the pre-checks: decrypt.
    Open,
    /// Authenticated and marked in the window.
    Accepted,
}

/// Where a receive chunk found an index's keypair.
enum RxFound<'r> {
    /// In the worker's index cache, this slot (pinned for the burst).
    Slot(usize),
    /// In the index table, borrowed through the chunk's read view of its shards: no reference
    /// taken.
    Table(&'r Arc<Keypair>),
}

/// A keypair of a receive chunk.
#[derive(Default)]
struct RxGroup {
    peer: PeerId,
    slot: usize,
}

/// A peer's share of a receive chunk, applied once.
struct RxPeer<'a> {
    peer: &'a Peer,
    src: SocketAddr,
    bytes: usize,
    data: u32,
}

/// A peer of a send chunk (its keypair: `kps` in [`Device::tx_chunk`]).
struct TxGroup {
    peer: PeerId,
    to: Option<SocketAddr>,
    usable: bool,
    want: bool,
    need: u64,
    sealed: u32,
    bytes: usize,
    data: bool,
}

/// The set bits of `mask`, lowest first.
#[inline]
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

fn wake(events: &mut Vec<Event>, peer: PeerId, at: Option<Timestamp>) {
    if let Some(at) = at {
        events.push(Event::Wake { peer, at });
    }
}

/// `v`, emptied, as a vector of `U` (the same type with the lifetime of its next use, for a list
/// of borrows rebuilt every burst): no allocation, since collecting an empty vector's iterator into
/// a vector of a same-layout type reuses its buffer. The burst paths use it for their AEAD lanes,
/// the worker for the items it hands them.
pub fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

impl Device {
    /// Open a burst of transport data messages in place. `results` is cleared and gets one
    /// result per item, in order, each exactly what [`Device::decapsulate`] would have returned
    /// for the items one at a time (drops counted in `out.stats` by reason).
    pub fn decapsulate_burst(
        &self,
        now: Timestamp,
        items: &mut [RxItem<'_>],
        results: &mut Vec<Result<Decapsulated, DropReason>>,
        out: &mut Output,
    ) {
        results.clear();
        for chunk in items.chunks_mut(CHUNK) {
            self.rx_chunk(now, chunk, out, &mut |_, r| results.push(r));
        }
    }

    /// Seal a burst of inner packets in place, each for its peer. `results` is cleared and gets
    /// one result per item, in order, each what [`Device::encapsulate_to`] would have returned
    /// (on success the message is `item.buf[..len]`).
    pub fn encapsulate_burst(
        &self,
        now: Timestamp,
        items: &mut [TxItem<'_>],
        results: &mut Vec<Result<Encapsulated, DropReason>>,
        out: &mut Output,
    ) {
        results.clear();
        for chunk in items.chunks_mut(CHUNK) {
            self.tx_chunk(now, chunk, out, &mut |_, r| results.push(r));
        }
    }

    /// One receive chunk (at most [`CHUNK`] items); `emit` gets each item's result in order.
    pub(super) fn rx_chunk(
        &self,
        now: Timestamp,
        items: &mut [RxItem<'_>],
        out: &mut Output,
        emit: &mut impl FnMut(usize, Result<Decapsulated, DropReason>),
    ) {
        let n = items.len().min(CHUNK);
        let items = &mut items[..n];
        let mut verdict = [Verdict::Pending; CHUNK];
        let mut group_of = [0u8; CHUNK];
        let mut counter = [0u64; CHUNK];
        let mut groups: [RxGroup; CHUNK] = core::array::from_fn(|_| RxGroup::default());
        // Per group, its messages (bit i: item i), walked in burst order.
        let mut members = [0u32; CHUNK];
        let mut borrowed: [Option<&Arc<Keypair>>; CHUNK] = [None; CHUNK];
        let mut expired = [false; CHUNK];
        let mut confirmed = [false; CHUNK];
        let mut ngroups = 0usize;

        // 1. Headers and lookups, grouped by receiver index (one index, one keypair), in stages
        // so that the cold lines of a large table are loaded for the whole chunk at once rather
        // than one packet's misses after another's: (a) every header, and each distinct index
        // against the worker's cache, starting the loads of what a hit will touch, and for a
        // miss of the index table's slot (`IndexTable::prefetch`); (b) the misses looked up
        // through one read view of their shards (`IndexTable::read_shards`), which the chunk
        // holds until its messages are decided: each miss's keypair is borrowed from the table,
        // with no reference count written, and the loads of its lines and peer-table slot are
        // started; (c) the misses cached, when the cache is working (below); (d) the peers,
        // whose lines are started for phases 5 and 6.
        out.cache.slots.begin_burst();
        let mut by_index = SmallMap::new();
        let mut look_index = [0u32; CHUNK];
        let mut look_counter = [0u64; CHUNK];
        let mut look_of = [0u8; CHUNK];
        let mut look: [Option<(PeerId, RxFound<'_>)>; CHUNK] = core::array::from_fn(|_| None);
        let mut missed = 0u32;
        let mut nlook = 0usize;
        let mut miss_index = [0u32; CHUNK];
        let mut nmiss = 0usize;
        for (i, it) in items.iter().enumerate() {
            // Type and length, checked together before any other byte is read.
            let Ok(data) = TransportData::new_checked(&*it.msg) else {
                verdict[i] = Verdict::Drop(DropReason::Malformed);
                continue;
            };
            let index = data.receiver_index();
            counter[i] = data.counter();
            if let Some(u) = by_index.get(index) {
                look_of[i] = u;
                continue;
            }
            match out.cache.probe(index, &mut out.stats) {
                Some((peer, slot)) => {
                    if let Some(kp) = out.cache.slots.get(slot) {
                        kp.prefetch_recv(counter[i]);
                    }
                    self.prefetch_peer_slot(peer);
                    look[nlook] = Some((peer, RxFound::Slot(slot)));
                }
                None => {
                    self.index.prefetch(index);
                    missed |= 1 << nlook;
                    miss_index[nmiss] = index;
                    nmiss += 1;
                }
            }
            (look_index[nlook], look_counter[nlook]) = (index, counter[i]);
            by_index.insert(index, nlook as u8);
            look_of[i] = nlook as u8;
            nlook += 1;
        }
        let reads = self.index.read_shards(&miss_index[..nmiss]);
        let mut found: [Option<(PeerId, &Arc<Keypair>)>; CHUNK] = [None; CHUNK];
        let mut nfound = 0usize;
        for u in (0..nlook).filter(|u| missed & (1 << u) != 0) {
            out.stats.index_cache_misses += 1;
            let Some(IndexEntry::Keypair(peer, kp)) = reads.get(look_index[u]) else { continue };
            kp.prefetch_recv(look_counter[u]);
            self.prefetch_peer_slot(*peer);
            found[u] = Some((*peer, kp));
            nfound += 1;
        }
        // The cache is filled from the misses while at least half of the chunk's known indices
        // (hits, and misses found in the table: unknown indices, forged or stale, do not count)
        // hit it: a few peers, or trains of packets per peer, where a fill (two reference counts
        // written, the new keypair's and the evicted one's) pays for itself at the next hit.
        // Otherwise (traffic spread over more keypairs than it holds, where a fill is evicted
        // before it is used) only the first miss found is offered to the cache (not cached if
        // its slot is pinned), so that the cache notices when the traffic narrows again.
        let fill_all = 2 * nfound <= nlook - nmiss + nfound;
        let mut fill = 0u32;
        for (u, f) in found.iter().enumerate().take(nlook) {
            let Some((_, kp)) = *f else { continue };
            if fill_all || fill == 0 {
                prefetch_refcount(kp);
                out.cache.prefetch_evictee(look_index[u]);
                fill |= 1 << u;
            }
        }
        for (u, f) in found.iter().enumerate().take(nlook) {
            let Some((peer, kp)) = *f else { continue };
            // A retired keypair (its index about to leave the table) is not cached: it would
            // evict a live entry for nothing (step 2 drops its messages).
            let cache = fill & (1 << u) != 0 && !kp.is_retired();
            let slot = if cache { out.cache.fill(look_index[u], peer, kp) } else { None };
            look[u] = Some((peer, slot.map_or(RxFound::Table(kp), RxFound::Slot)));
        }
        // Lookups to groups: a found index of a peer still configured.
        let mut group_of_look = [u8::MAX; CHUNK];
        for (u, found) in look.iter_mut().enumerate().take(nlook) {
            let Some((peer, found)) = found.take() else { continue };
            let Some(p) = self.peer(peer) else { continue };
            p.prefetch();
            groups[ngroups] = RxGroup { peer, slot: 0 };
            match found {
                RxFound::Slot(s) => groups[ngroups].slot = s,
                RxFound::Table(kp) => borrowed[ngroups] = Some(kp),
            }
            group_of_look[u] = ngroups as u8;
            ngroups += 1;
        }
        for i in 0..n {
            if verdict[i] != Verdict::Pending {
                continue;
            }
            match group_of_look[look_of[i] as usize] {
                u8::MAX => verdict[i] = Verdict::Drop(DropReason::UnknownIndex),
                g => {
                    group_of[i] = g;
                    members[g as usize] |= 1 << i;
                }
            }
        }

        let Output { stats, events, cache, lanes, .. } = out;
        let kps: [Option<&Arc<Keypair>>; CHUNK] = core::array::from_fn(|g| match borrowed[g] {
            _ if g >= ngroups => None,
            Some(kp) => Some(kp),
            None => cache.slots.get(groups[g].slot),
        });

        // 2. Age and the counter's limit, without the window's lock (step 4 decides the rest).
        // A keypair found in the table but retired (it left its peer's slots; its index is about
        // to leave the table) is an unknown index, as it is to the cache: nothing is decrypted.
        for g in 0..ngroups {
            let Some(kp) = kps[g] else { continue };
            let gone = kp.is_retired();
            expired[g] = gone || kp.recv_expired(now);
            for i in bits(members[g]) {
                if verdict[i] != Verdict::Pending {
                    continue;
                }
                verdict[i] = if gone {
                    Verdict::Drop(DropReason::UnknownIndex)
                } else if expired[g] || counter[i] >= REJECT_AFTER_MESSAGES {
                    Verdict::Drop(DropReason::KeypairExpired)
                } else {
                    Verdict::Open
                };
            }
        }

        // 3. The AEAD over every message that passed, at most 16 lanes a call.
        let mut auth = [false; CHUNK];
        let engine = Lanes::new();
        let mut lanes_v = recycle(std::mem::take(lanes));
        let mut lane_item = [0u8; MAX_LANES];
        let mut pending = items.iter_mut().enumerate().filter(|(i, _)| verdict[*i] == Verdict::Open).peekable();
        while pending.peek().is_some() {
            for (i, it) in pending.by_ref().take(MAX_LANES) {
                let Some(kp) = kps[group_of[i] as usize] else { continue };
                let len = it.msg.len();
                let (text, tag) = it.msg[DATA_HEADER_LEN..].split_at_mut(len - DATA_HEADER_LEN - TAG_LEN);
                let mut lane = Lane::wireguard(kp.recv_key(), counter[i], text);
                lane.tag.copy_from_slice(tag);
                lane_item[lanes_v.len()] = i as u8;
                lanes_v.push(lane);
            }
            // The chunk's lanes are within the kernel's limits, so this cannot fail; if it did,
            // nothing was decrypted and every lane counts as failed.
            let mask = engine.open_lanes(&mut lanes_v).unwrap_or(0);
            for (j, &i) in lane_item.iter().enumerate().take(lanes_v.len()) {
                auth[i as usize] = mask & (1 << j) != 0;
            }
            lanes_v.clear();
        }
        drop(pending);
        *lanes = recycle(lanes_v);

        // 4. One lock per keypair to mark, deciding each message in order as at its turn.
        for g in 0..ngroups {
            let Some(kp) = kps[g].filter(|_| !expired[g]) else { continue };
            let mut w = kp.lock_window();
            for i in bits(members[g]) {
                if verdict[i] != Verdict::Open {
                    continue;
                }
                let c = counter[i];
                verdict[i] = if w.counter() >= REJECT_AFTER_MESSAGES {
                    Verdict::Drop(DropReason::KeypairExpired)
                } else if !auth[i] {
                    if w.check(c) {
                        Verdict::Drop(DropReason::DecryptFailed)
                    } else {
                        Verdict::Drop(DropReason::Replay)
                    }
                } else if w.validate(c) {
                    Verdict::Accepted
                } else {
                    Verdict::Drop(DropReason::Replay)
                };
            }
        }

        // 5. In order: confirmation, keep_key_fresh, inner checks. The read view is still held:
        // nothing here may use the index table or take a peer's handshake state (see
        // `IndexTable::read_shards`); a confirmation's dropped indices are removed after it.
        // The IPv4 sources of the authenticated messages are looked up in the allowed IPs
        // first, all together, so that the trie's misses overlap (the table does not change
        // during the call).
        // A source that is its peer's host route (an allowed /32, kept in the peer-table slot
        // this phase reads anyway) needs no walk of the trie.
        let mut v4 = [Ipv4Addr::UNSPECIFIED; CHUNK];
        let mut v4_item = [0u8; CHUNK];
        let mut nv4 = 0usize;
        let mut src_route: [Option<Option<PeerId>>; CHUNK] = [None; CHUNK];
        for (i, it) in items.iter().enumerate() {
            if verdict[i] != Verdict::Accepted {
                continue;
            }
            let inner = it.msg.get(DATA_HEADER_LEN..it.msg.len().saturating_sub(TAG_LEN));
            if let Some((IpAddr::V4(a), _, _)) = inner.and_then(inner_addrs) {
                let id = groups[group_of[i] as usize].peer;
                if self.is_host_route_v4(id, a) {
                    src_route[i] = Some(Some(id));
                    continue;
                }
                (v4[nv4], v4_item[nv4]) = (a, i as u8);
                nv4 += 1;
            }
        }
        let mut v4_route = [None; CHUNK];
        self.allowed.lookup_v4_batch(&v4[..nv4], &mut v4_route[..nv4]);
        for j in 0..nv4 {
            src_route[v4_item[j] as usize] = Some(v4_route[j]);
        }
        let mut peers: [Option<RxPeer<'_>>; CHUNK] = core::array::from_fn(|_| None);
        let mut npeers = 0usize;
        let mut removals = [Dropped::default(); CHUNK];
        let mut nremovals = 0usize;
        let mut by_peer = SmallMap::new();
        for (i, it) in items.iter().enumerate() {
            let r = match verdict[i] {
                Verdict::Accepted => {
                    let g = group_of[i] as usize;
                    let id = groups[g].peer;
                    match (kps[g], self.peer(id)) {
                        (Some(kp), Some(peer)) if !kp.is_retired() => {
                            if !confirmed[g] {
                                confirmed[g] = true;
                                if let Some(d) = Self::confirm(now, id, peer, kp, events) {
                                    removals[nremovals] = d;
                                    nremovals += 1;
                                }
                            }
                            let p = match by_peer.get(id) {
                                Some(p) => p as usize,
                                None => {
                                    by_peer.insert(id, npeers as u8);
                                    npeers += 1;
                                    npeers - 1
                                }
                            };
                            let agg = peers[p].get_or_insert(RxPeer { peer, src: it.src, bytes: 0, data: 0 });
                            self.accepted(now, id, peer, kp, agg, it, src_route[i], stats, events)
                        }
                        _ => Err(DropReason::UnknownIndex),
                    }
                }
                Verdict::Drop(r) => Err(r),
                // Not reached: every message ends accepted or dropped.
                Verdict::Pending | Verdict::Open => Err(DropReason::DecryptFailed),
            };
            emit(i, r.map_err(|e| stats.drop(e)));
        }

        // The chunk's messages are decided: the read view goes, and then the indices of the
        // keypairs that confirmations dropped (retired already) leave the table.
        drop(reads);
        for d in &removals[..nremovals] {
            for idx in d.iter() {
                self.remove_index(idx);
            }
        }

        // 6. Per peer, once.
        for agg in peers.iter().take(npeers).flatten() {
            let (peer, id) = (agg.peer, agg.peer.id());
            peer.set_endpoint(agg.src);
            peer.timers.any_authenticated_packet_received(now);
            wake(events, id, peer.timers.any_authenticated_packet_traversal(now));
            peer.add_rx(agg.bytes);
            for _ in 0..agg.data.min(2) {
                wake(events, id, peer.timers.data_received(now));
            }
        }
    }

    /// Key confirmation: the responder's next keypair becomes current on its first message.
    /// Returns the keypairs it dropped (retired already) for the caller to remove from the index
    /// table once it holds no read view of it.
    fn confirm(now: Timestamp, id: PeerId, peer: &Peer, kp: &Arc<Keypair>, events: &mut Vec<Event>) -> Option<Dropped> {
        let dropped = peer.keypairs.received_with(kp)?;
        peer.timers.handshake_complete(now);
        events.push(Event::SessionConfirmed(id));
        Some(dropped)
    }

    /// The per-message rest of an authenticated message: keep_key_fresh, the peer's share, the
    /// inner checks.
    #[allow(clippy::too_many_arguments)]
    fn accepted(
        &self,
        now: Timestamp,
        id: PeerId,
        peer: &Peer,
        kp: &Keypair,
        agg: &mut RxPeer<'_>,
        it: &RxItem<'_>,
        src_route: Option<Option<PeerId>>,
        stats: &mut super::Stats,
        events: &mut Vec<Event>,
    ) -> Result<Decapsulated, DropReason> {
        stats.aead_opened += 1;
        // keep_key_fresh (receive side): the initiator re-handshakes once near REJECT_AFTER_TIME
        // (not on a keypair of an old private key, which the kernel marks as not sending). The
        // kernel asks it of the peer's current keypair, whichever one the message came on: a
        // message on an old previous keypair while a fresh one is current asks nothing. The
        // arriving keypair's age is tested first (it is at hand, and a message arrives on the
        // current keypair or an older one: the next is made current before this); the current
        // one (ours as initiator, sending, of this identity) only when that is old too and the
        // flag is not claimed yet.
        if kp.past_rekey_on_recv(now)
            && !peer.timers.lastminute_claimed()
            && peer.keypairs.current_needs_rekey_on_recv(now, self.generation())
            && peer.timers.claim_lastminute_handshake()
            && peer.claim_handshake_wanted()
        {
            events.push(Event::HandshakeWanted(id));
        }
        let len = it.msg.len();
        agg.src = it.src;
        agg.bytes += len;
        let range: Range<usize> = DATA_HEADER_LEN..len - TAG_LEN;
        if range.is_empty() {
            stats.keepalives_received += 1;
            tracing::trace!("Receiving keepalive packet from {}", peer.name());
            return Ok(Decapsulated { peer: id, range });
        }
        agg.data += 1;
        let Some((src_ip, _, inner_len)) = it.msg.get(range.clone()).and_then(inner_addrs) else {
            tracing::debug!("Packet is neither ipv4 nor ipv6 from {}", peer.name());
            return Err(DropReason::InvalidInner);
        };
        if inner_len > range.len() {
            return Err(DropReason::InvalidInner);
        }
        // Looked up with the chunk's other sources, or now.
        if src_route.unwrap_or_else(|| self.allowed.lookup(src_ip)) != Some(id) {
            tracing::debug!("Packet has disallowed src IP ({}) from {}", src_ip, peer.name());
            return Err(DropReason::DisallowedSource);
        }
        Ok(Decapsulated { peer: id, range: range.start..range.start + inner_len })
    }

    /// One send chunk (at most [`CHUNK`] items); `emit` gets each item's result in order.
    pub(super) fn tx_chunk(
        &self,
        now: Timestamp,
        items: &mut [TxItem<'_>],
        out: &mut Output,
        emit: &mut impl FnMut(usize, Result<Encapsulated, DropReason>),
    ) {
        let n = items.len().min(CHUNK);
        let items = &mut items[..n];
        let mut verdict = [Verdict::Pending; CHUNK];
        let mut group_of = [0u8; CHUNK];
        let mut counter = [0u64; CHUNK];
        let mut groups: [Option<TxGroup>; CHUNK] = core::array::from_fn(|_| None);
        let mut ngroups = 0usize;
        let mut by_peer = SmallMap::new();
        let generation = self.generation();
        let Output { stats, events, lanes, send_cache, .. } = out;
        send_cache.slots.begin_burst();

        // 1. Per peer its endpoint and keypair; per message the buffer check. First, for the
        // whole chunk, the loads of the peers' slots, then of their lines, then of their current
        // keypairs' sending lines are started, each pass reading what the one before loaded, so
        // a large table's misses overlap instead of queueing.
        let mut distinct = [0 as PeerId; CHUNK];
        let mut ndistinct = 0usize;
        for it in items.iter() {
            prefetch_bytes(&it.buf[..it.buf.len().min(DATA_HEADER_LEN + it.plain_len)]);
            if by_peer.get(it.peer).is_none() {
                by_peer.insert(it.peer, ndistinct as u8);
                distinct[ndistinct] = it.peer;
                ndistinct += 1;
                self.prefetch_peer_slot(it.peer);
            }
        }
        for &id in &distinct[..ndistinct] {
            if let Some(peer) = self.peer(id) {
                peer.prefetch();
            }
        }
        for &id in &distinct[..ndistinct] {
            if let Some(peer) = self.peer(id) {
                match send_cache.peek(id, &peer.keypairs) {
                    Some(kp) => kp.prefetch_send(),
                    None => send_cache.prefetch_miss(id, &peer.keypairs),
                }
            }
        }
        // The peers' current keypairs, from the worker's send cache (no reference taken on a
        // hit), or held here when the cache's slot is another peer's for this chunk.
        let mut slot_of = [usize::MAX; CHUNK];
        let mut owned: [Option<Arc<Keypair>>; CHUNK] = core::array::from_fn(|_| None);
        let mut by_peer = SmallMap::new();
        for (i, it) in items.iter().enumerate() {
            let g = match by_peer.get(it.peer) {
                Some(g) => g as usize,
                None => {
                    let Some(peer) = self.peer(it.peer) else {
                        verdict[i] = Verdict::Drop(DropReason::NoRoute);
                        continue;
                    };
                    match send_cache.current(it.peer, &peer.keypairs) {
                        Some(Found::Slot(s)) => slot_of[ngroups] = s,
                        Some(Found::Owned(kp)) => owned[ngroups] = Some(kp),
                        None => {}
                    }
                    groups[ngroups] = Some(TxGroup {
                        peer: it.peer,
                        to: peer.endpoint(),
                        usable: false,
                        want: false,
                        need: 0,
                        sealed: 0,
                        bytes: 0,
                        data: false,
                    });
                    by_peer.insert(it.peer, ngroups as u8);
                    ngroups += 1;
                    ngroups - 1
                }
            };
            group_of[i] = g as u8;
        }
        // A keypair made with a previous private key does not seal (see set_private_key).
        let send_cache = &*send_cache;
        let kps: [Option<&Arc<Keypair>>; CHUNK] = core::array::from_fn(|g| {
            owned[g].as_ref().or_else(|| send_cache.slots.get(slot_of[g])).filter(|kp| kp.generation() == generation)
        });
        for (gr, kp) in groups.iter_mut().zip(&kps).take(ngroups) {
            if let Some(gr) = gr.as_mut() {
                gr.usable = kp.is_some_and(|kp| kp.send_usable(now));
            }
        }
        for (i, it) in items.iter().enumerate() {
            if verdict[i] != Verdict::Pending {
                continue;
            }
            let g = group_of[i] as usize;
            let Some(gr) = groups[g].as_mut() else { continue };
            verdict[i] = if gr.to.is_none() {
                Verdict::Drop(DropReason::NoEndpoint)
            } else if kps[g].is_none() {
                gr.want = true;
                Verdict::Drop(DropReason::NoSession)
            } else if padded_len(it.plain_len, self.mtu).checked_add(DATA_OVERHEAD).is_none_or(|t| t > it.buf.len()) {
                Verdict::Drop(DropReason::BufferTooSmall)
            } else if !gr.usable {
                gr.want = true;
                Verdict::Drop(DropReason::NoSession)
            } else {
                gr.need += 1;
                Verdict::Open
            };
        }

        // 2. Counters: one atomic operation per keypair; past the limit, a handshake.
        let mut next = [0u64; CHUNK];
        let mut left = [0u64; CHUNK];
        for (g, gr) in groups.iter_mut().enumerate().take(ngroups) {
            let Some(gr) = gr.as_mut() else { continue };
            if let (Some(kp), true) = (kps[g], gr.need > 0) {
                (next[g], left[g]) = kp.reserve_counters(gr.need);
            }
        }
        for i in 0..n {
            if verdict[i] != Verdict::Open {
                continue;
            }
            let g = group_of[i] as usize;
            if left[g] == 0 {
                verdict[i] = Verdict::Drop(DropReason::NoSession);
                if let Some(gr) = groups[g].as_mut() {
                    gr.want = true;
                }
                continue;
            }
            counter[i] = next[g];
            next[g] += 1;
            left[g] -= 1;
        }

        // 3. Headers, padding, and the AEAD, at most 16 lanes a call.
        let engine = Lanes::new();
        let mut lanes_v = recycle(std::mem::take(lanes));
        let mut lens = [0usize; CHUNK];
        let mut tags = [[0u8; TAG_LEN]; CHUNK];
        let mut lane_item = [0u8; MAX_LANES];
        // Items whose seal failed (bit i): never sent.
        let mut unsealed = 0u32;
        let mut pending = items.iter_mut().enumerate().filter(|(i, _)| verdict[*i] == Verdict::Open).peekable();
        while pending.peek().is_some() {
            for (i, it) in pending.by_ref().take(MAX_LANES) {
                let Some(kp) = kps[group_of[i] as usize] else { continue };
                let padded = padded_len(it.plain_len, self.mtu);
                lens[i] = padded + DATA_OVERHEAD;
                // The header's view gets exactly the header's bytes: with its length known, the
                // setters compile to plain stores.
                let (header, payload) = it.buf[..lens[i]].split_at_mut(DATA_HEADER_LEN);
                let mut header = TransportData::new_unchecked(header);
                header.init_header();
                header.set_receiver_index(kp.remote_index());
                header.set_counter(counter[i]);
                let text = &mut payload[..padded];
                text[it.plain_len..].fill(0);
                lane_item[lanes_v.len()] = i as u8;
                lanes_v.push(Lane::wireguard(kp.send_key(), counter[i], text));
            }
            // The chunk's lanes are within the kernels' limits, so this cannot fail. If it ever
            // did, no lane was touched: the buffers still hold plaintext, so those items are
            // dropped below, never sent.
            let sealed = engine.seal_lanes(&mut lanes_v).is_ok();
            for (j, lane) in lanes_v.drain(..).enumerate() {
                if sealed {
                    tags[lane_item[j] as usize] = lane.tag;
                } else {
                    unsealed |= 1 << lane_item[j];
                }
            }
        }
        drop(pending);
        *lanes = recycle(lanes_v);

        // 4. In order: tags and results; per peer once: counters, timers, rekey check.
        for (i, it) in items.iter_mut().enumerate() {
            let g = group_of[i] as usize;
            let r = match (verdict[i], groups[g].as_mut()) {
                // Not sealed (see phase 3): the buffer holds plaintext.
                (Verdict::Open, Some(_)) if unsealed & (1 << i) != 0 => Err(DropReason::BufferTooSmall),
                (Verdict::Open, Some(gr)) => {
                    let len = lens[i];
                    it.buf[len - TAG_LEN..len].copy_from_slice(&tags[i]);
                    stats.aead_sealed += 1;
                    gr.sealed += 1;
                    gr.bytes += len;
                    gr.data |= it.plain_len > 0;
                    if let Some(to) = gr.to {
                        // Emitted from here, so that the result is built where it goes rather
                        // than copied there (a `SocketAddr` built field by field and read back
                        // whole at once stalls the copy).
                        emit(i, Ok(Encapsulated { peer: gr.peer, to, len }));
                        continue;
                    }
                    Err(DropReason::NoEndpoint)
                }
                (Verdict::Drop(r), gr) => {
                    if r == DropReason::NoEndpoint {
                        if let Some(peer) = gr.and_then(|gr| self.peer(gr.peer)) {
                            tracing::debug!("No valid endpoint has been configured or discovered for {}", peer.name());
                        }
                    }
                    Err(r)
                }
                // Not reached: every message ends sealed or dropped.
                _ => Err(DropReason::NoSession),
            };
            emit(i, r.map_err(|e| stats.drop(e)));
        }
        for (gr, kp) in groups.iter().zip(&kps).take(ngroups) {
            let Some(gr) = gr else { continue };
            let id = gr.peer;
            let Some(peer) = self.peer(id) else { continue };
            let mut want = gr.want;
            if gr.sealed > 0 {
                peer.add_tx(gr.bytes);
                wake(events, id, peer.timers.any_authenticated_packet_traversal(now));
                peer.timers.any_authenticated_packet_sent(now);
                if gr.data {
                    wake(events, id, peer.timers.data_sent(now));
                }
                // keep_key_fresh (send side): counter or age says rekey.
                if kp.is_some_and(|kp| kp.needs_rekey_on_send(now)) && peer.timers.may_send_initiation(now) {
                    want = true;
                }
            }
            if want && peer.claim_handshake_wanted() {
                events.push(Event::HandshakeWanted(id));
            }
        }
    }
}

/// Start loading every cache line of `bytes` after the first (which the caller has touched or
/// is about to): a burst's packets arrive cold (written by another core or a device), and
/// starting all their misses before the AEAD walks them lets the misses overlap. Used on send
/// (the plaintexts, at the start of a chunk): `wgpmd bench` 1420 B tx +13–16 % per core; the
/// same on receive (the ciphertexts, as their headers are parsed) measured no change, so it is
/// not done there.
#[inline]
fn prefetch_bytes(bytes: &[u8]) {
    let start = bytes.as_ptr();
    let mut off = 64 - (start as usize & 63);
    while off < bytes.len() {
        wgpmd_aead::prefetch::read_ptr(start.wrapping_add(off));
        off += 64;
    }
}
