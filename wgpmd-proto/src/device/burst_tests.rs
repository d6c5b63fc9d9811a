//! The burst path against bursts of one, and the receive side also against an independent model
//! (the one-message rules as written before the burst path, on `Keypair::open`, i.e. ring's
//! AEAD): the same decisions, counters and plaintext, over random sequences of several peers'
//! messages; what the send side seals is also opened by the peer's end (ring's AEAD, its own
//! replay window); a counter twice in one burst; the send counter at its limit; two threads on one
//! peer; the index cache and retired keypairs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::tests::ipv4_packet;
use super::*;
use crate::crypto::Secret;
use crate::messages::{DATA_HEADER_LEN, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::session::OpenError;
use crate::wire::wireguard::TransportData;

const PEERS: u8 = 5;
/// Peers 0..SESSIONS get a session; the rest have none (`NoSession` on send).
const SESSIONS: u8 = 4;
/// Peer born early: expired by the time most bursts run.
const OLD_PEER: u8 = 3;
/// Peer with no endpoint.
const NO_ENDPOINT: u8 = 4;
const MTU: usize = 1420;

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn src_addr(p: u8, alt: bool) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + p)), if alt { 40000 } else { 51820 })
}

fn inner_src(p: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, p, 1)
}

/// A device with [`PEERS`] peers, and for those with a session the sending end of it.
struct Rig {
    dev: Device,
    peers: Vec<PeerId>,
    senders: Vec<Option<Keypair>>,
    locals: Vec<u32>,
    out: Output,
}

/// Two calls with one seed build identical rigs (same indices, keys, peers).
fn rig(seed: u64) -> Rig {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut dev = Device::new(&mut rng, 1_700_000_000_000_000_000);
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    let (mut peers, mut senders, mut locals) = (Vec::new(), Vec::new(), Vec::new());
    for p in 0..PEERS {
        let pk = PrivateKey::generate(&mut rng).public_key();
        let id = dev.add_peer(&mut rng, pk).unwrap();
        if p != NO_ENDPOINT {
            dev.set_endpoint(id, src_addr(p, false)).unwrap();
        }
        dev.add_allowed_ip(id, IpAddr::V4(inner_src(p)), 32).unwrap();
        peers.push(id);
        if p < SESSIONS {
            let (send, recv) = (Secret([p + 1; 32]), Secret([p + 101; 32]));
            let birth = if p == OLD_PEER { t(1) } else { t(100) };
            let remote = 0x1000 + u32::from(p);
            let local = dev.bench_install_session(&mut rng, id, &send, &recv, remote, birth).unwrap();
            senders.push(Some(Keypair::new(&recv, &send, remote, local, false, birth)));
            locals.push(local);
        } else {
            senders.push(None);
            locals.push(0);
        }
    }
    Rig { dev, peers, senders, locals, out: Output::with_capacity(64) }
}

/// A data message from peer `p` (sealed by its sending end) with `inner` as the plaintext.
fn sealed(r: &Rig, p: u8, inner: &[u8], at: Timestamp) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + 16 + 16];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let kp = r.senders[p as usize].as_ref().unwrap();
    let n = kp.seal(at, &mut buf, inner.len(), MTU).unwrap();
    buf.truncate(n);
    buf
}

/// A random sequence of received messages: data, keepalives, replays (close by, so often in the
/// same burst, and far), corrupted tags, disallowed and non-IP inner packets, unknown indices,
/// malformed messages, the expired peer's messages, messages slightly reordered.
fn sequence(r: &Rig, rng: &mut ChaCha20Rng, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut v: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    while v.len() < n {
        let p = (rng.next_u32() % u32::from(SESSIONS)) as u8;
        let src = src_addr(p, rng.next_u32().is_multiple_of(4));
        let len = (rng.next_u32() % 200) as usize;
        let kind = rng.next_u32() % 16;
        let msg = match kind {
            0 if !v.is_empty() => {
                let back =
                    1 + (rng.next_u32() as usize % v.len().min(if rng.next_u32().is_multiple_of(2) { 4 } else { 400 }));
                v[v.len() - back].clone().1
            }
            1 => sealed(r, p, &[], t(100)),
            2 => {
                let mut m = sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), len), t(100));
                let last = m.len() - 1;
                m[last] ^= 1 << (rng.next_u32() % 8);
                m
            }
            3 => sealed(r, p, &ipv4_packet(Ipv4Addr::new(10, 9, 9, 9), Ipv4Addr::new(10, 9, 0, 1), len), t(100)),
            4 => sealed(r, p, &vec![0u8; len.max(1)], t(100)),
            5 => {
                let mut m = sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), len), t(100));
                m[4..8].copy_from_slice(&rng.next_u32().to_le_bytes());
                m
            }
            6 => {
                let mut m = sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), len), t(100));
                m.truncate(rng.next_u32() as usize % 32);
                m
            }
            _ => sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), len), t(100)),
        };
        v.push((src, msg));
        // Reorder: swap with a recent message now and then.
        if v.len() > 2 && rng.next_u32().is_multiple_of(8) {
            let k = v.len() - 1 - (1 + rng.next_u32() as usize % 2);
            let last = v.len() - 1;
            v.swap(k, last);
        }
    }
    v
}

/// The device state the two paths must agree on.
fn state(r: &Rig) -> Vec<(u64, u64, Option<SocketAddr>, Option<u32>)> {
    r.peers
        .iter()
        .map(|&id| {
            let p = r.dev.peer(id).unwrap();
            (p.rx_bytes(), p.tx_bytes(), p.endpoint(), p.current_local_index())
        })
        .collect()
}

fn without_cache_counts(s: &Stats) -> Stats {
    Stats { index_cache_hits: 0, index_cache_misses: 0, ..s.clone() }
}

/// The events, as a set (a burst may give them in another order, and a timer's `Wake` once
/// where one message at a time repeats it).
fn event_set(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    v.sort();
    v.dedup();
    v
}

/// The receive rules one message at a time as they were before the burst path (kernel
/// `receive.c`), on `Keypair::open` (ring's AEAD, its own replay pre-check and mark) and the
/// shared index table: a reference written independently of `device::burst`.
fn model_decapsulate(
    dev: &Device,
    now: Timestamp,
    src: SocketAddr,
    msg: &mut [u8],
    out: &mut Output,
) -> Result<super::data::Decapsulated, DropReason> {
    let Ok(data) = TransportData::new_checked(&*msg) else {
        return Err(out.stats.drop(DropReason::Malformed));
    };
    let Some(IndexEntry::Keypair(id, kp)) = dev.index.get(data.receiver_index()) else {
        return Err(out.stats.drop(DropReason::UnknownIndex));
    };
    let Some(peer) = dev.peer(id) else {
        return Err(out.stats.drop(DropReason::UnknownIndex));
    };
    let range = match kp.open(now, msg) {
        Ok(r) => r,
        Err(OpenError::Auth) | Err(OpenError::TooShort) => return Err(out.stats.drop(DropReason::DecryptFailed)),
        Err(OpenError::Replay) => return Err(out.stats.drop(DropReason::Replay)),
        Err(_) => return Err(out.stats.drop(DropReason::KeypairExpired)),
    };
    out.stats.aead_opened += 1;
    peer.set_endpoint(src);
    if let Some(dropped) = peer.keypairs.received_with(&kp) {
        for idx in dropped.iter() {
            dev.remove_index(idx);
        }
        peer.timers.handshake_complete(now);
        out.events.push(Event::SessionConfirmed(id));
    }
    // Kernel `keep_key_fresh`: the peer's current keypair decides.
    if peer.keypairs.current().is_some_and(|c| c.needs_rekey_on_recv(now) && c.generation() == dev.generation())
        && peer.timers.claim_lastminute_handshake()
        && !peer.handshake_wanted.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        out.events.push(Event::HandshakeWanted(id));
    }
    peer.timers.any_authenticated_packet_received(now);
    out.wake(id, peer.timers.any_authenticated_packet_traversal(now));
    peer.add_rx(msg.len());
    if range.is_empty() {
        out.stats.keepalives_received += 1;
        return Ok(super::data::Decapsulated { peer: id, range });
    }
    out.wake(id, peer.timers.data_received(now));
    let Some((src_ip, _, len)) = msg.get(range.clone()).and_then(super::data::inner_addrs) else {
        return Err(out.stats.drop(DropReason::InvalidInner));
    };
    if len > range.len() {
        return Err(out.stats.drop(DropReason::InvalidInner));
    }
    if dev.allowed.lookup(src_ip) != Some(id) {
        return Err(out.stats.drop(DropReason::DisallowedSource));
    }
    Ok(super::data::Decapsulated { peer: id, range: range.start..range.start + len })
}

#[test]
fn receive_bursts_decide_exactly_as_messages_one_at_a_time() {
    for seed in 0..6u64 {
        let mut burst = rig(seed);
        let mut single = rig(seed);
        let mut model = rig(seed);
        assert_eq!(burst.locals, single.locals);
        assert_eq!(burst.locals, model.locals);
        let mut rng = ChaCha20Rng::seed_from_u64(1000 + seed);
        let seq = sequence(&burst, &mut rng, 700);
        let mut results = Vec::new();
        let mut at = 0usize;
        // The old peer's keypair (born at 1 s) expires at 181 s, midway; before that it is old
        // enough for keep_key_fresh on receive.
        let mut now = t(176);
        let (mut accepted, mut replays, mut expired) = (0, 0, 0);
        while at < seq.len() {
            // Bursts of 1 to 48 messages (longer than a chunk now and then), time moving on so
            // that the old peer's keypair expires midway.
            let len = (1 + rng.next_u32() as usize % 48).min(seq.len() - at);
            now = now + Duration::from_millis(u64::from(rng.next_u32() % 600));
            let mut a: Vec<(SocketAddr, Vec<u8>)> = seq[at..at + len].to_vec();
            let mut b = a.clone();
            let mut c = a.clone();
            let mut items: Vec<RxItem<'_>> =
                a.iter_mut().map(|(src, m)| RxItem { src: *src, msg: &mut m[..] }).collect();
            burst.dev.decapsulate_burst(now, &mut items, &mut results, &mut burst.out);
            drop(items);
            assert_eq!(results.len(), len);
            for (k, (src, m)) in b.iter_mut().enumerate() {
                let one = single.dev.decapsulate(now, *src, m, &mut single.out);
                assert_eq!(results[k], one, "seed {seed}, message {}", at + k);
                let (msrc, mm) = &mut c[k];
                let reference = model_decapsulate(&model.dev, now, *msrc, mm, &mut model.out);
                assert_eq!(reference, one, "model, seed {seed}, message {}", at + k);
                if let Ok(d) = &reference {
                    assert_eq!(mm[d.range.clone()], m[d.range.clone()], "model plaintext, message {}", at + k);
                }
                if let Ok(d) = &one {
                    assert_eq!(a[k].1[d.range.clone()], m[d.range.clone()], "plaintext, message {}", at + k);
                    accepted += 1;
                }
                replays += usize::from(one == Err(DropReason::Replay));
                expired += usize::from(one == Err(DropReason::KeypairExpired));
            }
            assert_eq!(without_cache_counts(&burst.out.stats), without_cache_counts(&single.out.stats));
            assert_eq!(state(&burst), state(&single), "seed {seed}, burst at {at}");
            assert_eq!(event_set(&burst.out.events), event_set(&single.out.events));
            assert_eq!(without_cache_counts(&model.out.stats), without_cache_counts(&single.out.stats), "model");
            assert_eq!(state(&model), state(&single), "model, seed {seed}, burst at {at}");
            assert_eq!(event_set(&model.out.events), event_set(&single.out.events), "model");
            at += len;
        }
        assert!(now > t(1) + REJECT_AFTER_TIME, "the old peer's keypair expired during the run");
        // The sequence exercised what it is meant to.
        assert!(accepted > 100 && replays > 5 && expired > 0, "{accepted} {replays} {expired}");
        for r in [DropReason::DecryptFailed, DropReason::UnknownIndex, DropReason::DisallowedSource] {
            assert!(single.out.stats.drops_for(r) > 0, "{r:?}");
        }
        assert!(burst.out.stats.index_cache_hits > burst.out.stats.index_cache_misses);
    }
}

#[test]
fn send_bursts_seal_exactly_as_messages_one_at_a_time() {
    for seed in 0..4u64 {
        let mut burst = rig(seed);
        let mut single = rig(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(2000 + seed);
        let mut results = Vec::new();
        let mut now = t(100);
        for round in 0..40 {
            now = now + Duration::from_millis(u64::from(rng.next_u32() % 5000));
            let len = 1 + rng.next_u32() as usize % 48;
            let mut a: Vec<(PeerId, Vec<u8>, usize)> = (0..len)
                .map(|_| {
                    let p = (rng.next_u32() % u32::from(PEERS)) as u8;
                    let plain = if rng.next_u32().is_multiple_of(8) { 0 } else { 20 + rng.next_u32() as usize % 300 };
                    // Now and then a buffer too small for the padded message.
                    let room = if rng.next_u32().is_multiple_of(16) { 16 + plain } else { 16 + plain + 16 + 16 };
                    let mut buf = vec![0u8; room];
                    if plain > 0 {
                        buf[16..16 + plain].copy_from_slice(&ipv4_packet(
                            Ipv4Addr::new(10, 9, 0, 1),
                            inner_src(p),
                            plain - 20,
                        ));
                    }
                    (burst.peers[p as usize], buf, plain)
                })
                .collect();
            let mut b = a.clone();
            let plaintexts = a.clone();
            let mut items: Vec<TxItem<'_>> = a
                .iter_mut()
                .map(|(peer, buf, plain)| TxItem { peer: *peer, buf: &mut buf[..], plain_len: *plain })
                .collect();
            burst.dev.encapsulate_burst(now, &mut items, &mut results, &mut burst.out);
            drop(items);
            for (k, (peer, buf, plain)) in b.iter_mut().enumerate() {
                let one = single.dev.encapsulate_to(now, *peer, buf, *plain, &mut single.out);
                assert_eq!(results[k], one, "seed {seed}, round {round}, item {k}");
                if let Ok(e) = one {
                    assert_eq!(a[k].1[..e.len], buf[..e.len], "sealed bytes");
                    // Independently of the device: the peer's end (ring's AEAD, its own replay
                    // window) opens it, in order, to the plaintext and zero padding.
                    let p = burst.peers.iter().position(|x| x == peer).unwrap();
                    let at = if p == usize::from(OLD_PEER) { t(2) } else { t(101) };
                    let mut msg = buf[..e.len].to_vec();
                    let range = burst.senders[p].as_ref().unwrap().open(at, &mut msg).expect("the peer opens it");
                    assert_eq!(msg[range.clone()][..*plain], plaintexts[k].1[16..16 + *plain]);
                    assert!(msg[range][*plain..].iter().all(|&x| x == 0), "zero padding");
                }
            }
            assert_eq!(without_cache_counts(&burst.out.stats), without_cache_counts(&single.out.stats));
            assert_eq!(state(&burst), state(&single));
            assert_eq!(event_set(&burst.out.events), event_set(&single.out.events));
        }
        for r in [DropReason::NoSession, DropReason::NoEndpoint, DropReason::BufferTooSmall] {
            assert!(single.out.stats.drops_for(r) > 0, "{r:?}");
        }
        assert!(single.out.stats.aead_sealed > 100);
    }
    // The peer's end opens what a burst sealed.
    let mut r = rig(5);
    let mut bufs: Vec<Vec<u8>> = (0..20)
        .map(|k| {
            let mut buf = vec![0u8; 16 + 100 + k + 32];
            buf[16..116 + k].copy_from_slice(&ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(0), 80 + k));
            buf
        })
        .collect();
    let mut items: Vec<TxItem<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(k, b)| TxItem { peer: r.peers[k % 2], buf: &mut b[..], plain_len: 100 + k })
        .collect();
    let mut results = Vec::new();
    r.dev.encapsulate_burst(t(101), &mut items, &mut results, &mut r.out);
    drop(items);
    for (k, (b, res)) in bufs.iter_mut().zip(&results).enumerate() {
        let e = res.as_ref().unwrap();
        let range = r.senders[k % 2].as_ref().unwrap().open(t(101), &mut b[..e.len]).unwrap();
        assert_eq!(b[range][..100 + k], ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(0), 80 + k)[..]);
    }
}

#[test]
fn a_counter_twice_in_one_burst_is_accepted_once() {
    let mut r = rig(7);
    let m = sealed(&r, 0, &ipv4_packet(inner_src(0), Ipv4Addr::new(10, 9, 0, 1), 60), t(100));
    let mut bad = m.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    // A forged copy first (fails, marks nothing), then the message three times.
    let mut msgs = [bad, m.clone(), m.clone(), m];
    let mut items: Vec<RxItem<'_>> =
        msgs.iter_mut().map(|m| RxItem { src: src_addr(0, false), msg: &mut m[..] }).collect();
    let mut results = Vec::new();
    r.dev.decapsulate_burst(t(101), &mut items, &mut results, &mut r.out);
    assert_eq!(results[0], Err(DropReason::DecryptFailed));
    assert!(results[1].is_ok());
    assert_eq!(results[2], Err(DropReason::Replay));
    assert_eq!(results[3], Err(DropReason::Replay));
    assert_eq!(r.out.stats.aead_opened, 1);
    assert_eq!(r.out.stats.drops_for(DropReason::Replay), 2);
}

#[test]
fn the_index_cache_never_answers_with_a_retired_keypair() {
    let mut r = rig(9);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let msg = |r: &Rig| sealed(r, 0, &ipv4_packet(inner_src(0), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    let mut m = msg(&r);
    assert!(r.dev.decapsulate(t(101), src_addr(0, false), &mut m, &mut r.out).is_ok());
    let mut m = msg(&r);
    assert!(r.dev.decapsulate(t(101), src_addr(0, false), &mut m, &mut r.out).is_ok());
    assert_eq!((r.out.stats.index_cache_misses, r.out.stats.index_cache_hits), (1, 1));
    assert_eq!(r.out.index_cache_used(), 1);
    // Two new sessions push the first keypair out of the peer's slots (current -> previous ->
    // gone): its index leaves the table and the cached entry must not be used.
    for k in 0..2u8 {
        let (s, v) = (Secret([50 + k; 32]), Secret([60 + k; 32]));
        r.dev.bench_install_session(&mut rng, r.peers[0], &s, &v, 0x2000, t(101)).unwrap();
    }
    let mut m = msg(&r);
    assert_eq!(r.dev.decapsulate(t(102), src_addr(0, false), &mut m, &mut r.out), Err(DropReason::UnknownIndex));
    assert_eq!(r.out.stats.index_cache_hits, 1, "no hit on a retired keypair");
    // A removed peer: its keypair's index is gone too.
    let mut m = sealed(&r, 1, &ipv4_packet(inner_src(1), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    assert!(r.dev.decapsulate(t(102), src_addr(1, false), &mut m.clone(), &mut r.out).is_ok());
    r.dev.remove_peer(r.peers[1]).unwrap();
    m = sealed(&r, 1, &ipv4_packet(inner_src(1), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    assert_eq!(r.dev.decapsulate(t(102), src_addr(1, false), &mut m, &mut r.out), Err(DropReason::UnknownIndex));
    // Forgetting the cache drops its references.
    r.out.forget_keys();
    assert_eq!(r.out.index_cache_used(), 0);
}

/// The index cache is filled from a burst's misses while at least half of the burst's known
/// indices hit it; otherwise only the first miss is cached and the others are opened with the
/// keypair borrowed from the table. Every message is accepted either way.
#[test]
fn the_index_cache_fills_while_it_works() {
    let mut r = rig(23);
    let msg = |r: &Rig, p: u8| sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    let mut results = Vec::new();
    // (hits, misses, entries) after each burst of one message from each peer with a session.
    let mut seen = Vec::new();
    for burst in 0..4 {
        let mut msgs: Vec<Vec<u8>> = (0..SESSIONS).map(|p| msg(&r, p)).collect();
        if burst == 2 {
            // An unknown index (a forged message): a miss, but not one that counts against the
            // rule (with it counted, 2 hits of 5 would not be half: only one more cached, 3
            // entries instead of 4).
            let mut forged = msg(&r, 0);
            forged[4..8].copy_from_slice(&0x0bad_f00du32.to_le_bytes());
            msgs.push(forged);
        }
        let mut items: Vec<RxItem<'_>> = msgs
            .iter_mut()
            .zip(0u8..)
            .map(|(m, p)| RxItem { src: src_addr(p % SESSIONS, false), msg: &mut m[..] })
            .collect();
        r.dev.decapsulate_burst(t(101), &mut items, &mut results, &mut r.out);
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, usize::from(SESSIONS), "{results:?}");
        seen.push((r.out.stats.index_cache_hits, r.out.stats.index_cache_misses, r.out.index_cache_used()));
    }
    // 4 misses of 4: one cached. 3 of 4: one more. 2 of 4 known (half hit): both cached. Then
    // all hit.
    assert_eq!(seen, [(0, 4, 1), (1, 7, 2), (3, 10, 4), (7, 10, 4)]);
}

/// A keypair retired (gone from its peer's slots) whose index is still in the table, as another
/// core sees it between the two: its messages are of an unknown index, nothing is decrypted,
/// and it is not cached.
#[test]
fn a_retired_keypair_still_in_the_table_is_unknown() {
    let mut r = rig(29);
    let mut m = sealed(&r, 0, &ipv4_packet(inner_src(0), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    let kp = r.dev.peer(r.peers[0]).unwrap().keypairs.current().unwrap();
    kp.retire();
    assert!(r.dev.index.get(r.locals[0]).is_some(), "still in the table");
    assert_eq!(r.dev.decapsulate(t(101), src_addr(0, false), &mut m, &mut r.out), Err(DropReason::UnknownIndex));
    assert_eq!(kp.lock_window().counter(), 0, "opened and marked in its window");
    assert_eq!(r.out.index_cache_used(), 0, "cached");
    // Another peer's messages are unaffected.
    let mut m = sealed(&r, 1, &ipv4_packet(inner_src(1), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    assert!(r.dev.decapsulate(t(101), src_addr(1, false), &mut m, &mut r.out).is_ok());
}

/// `recycle` keeps the allocation: the burst paths rebuild their borrow lists every burst
/// without allocating.
#[test]
fn recycle_keeps_the_allocation() {
    let a = [1u8, 2, 3];
    let mut v: Vec<&u8> = Vec::with_capacity(CHUNK);
    v.extend(a.iter());
    let at = v.as_ptr() as usize;
    let w: Vec<&u8> = recycle(v);
    assert!(w.is_empty());
    assert_eq!(w.capacity(), CHUNK);
    assert_eq!(w.as_ptr() as usize, at);
}

/// At `REJECT_AFTER_MESSAGES` a burst seals with the last counters there are, one reservation
/// for the keypair, and drops the rest as one message at a time would; nothing passes the limit.
#[test]
fn a_burst_at_the_counter_limit_seals_the_last_counters_and_drops_the_rest() {
    let (mut burst, mut single) = (rig(11), rig(11));
    for r in [&burst, &single] {
        let kp = r.dev.peer(r.peers[0]).unwrap().keypairs.current().unwrap();
        kp.set_sending_counter_for_test(REJECT_AFTER_MESSAGES - 3);
    }
    let packet = |_: usize| {
        let mut buf = vec![0u8; 16 + 60 + 32];
        buf[16..76].copy_from_slice(&ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(0), 40));
        buf
    };
    let mut results = Vec::new();
    for round in 0..2 {
        let mut a: Vec<Vec<u8>> = (0..5).map(packet).collect();
        let mut b = a.clone();
        let mut items: Vec<TxItem<'_>> =
            a.iter_mut().map(|buf| TxItem { peer: burst.peers[0], buf: &mut buf[..], plain_len: 60 }).collect();
        burst.dev.encapsulate_burst(t(101), &mut items, &mut results, &mut burst.out);
        drop(items);
        for (k, buf) in b.iter_mut().enumerate() {
            let one = single.dev.encapsulate_to(t(101), single.peers[0], buf, 60, &mut single.out);
            assert_eq!(results[k], one, "round {round}, item {k}");
            let expect_sealed = round == 0 && k < 3;
            assert_eq!(results[k].is_ok(), expect_sealed, "round {round}, item {k}: {:?}", results[k]);
            if let Ok(e) = one {
                assert_eq!(a[k][..e.len], buf[..e.len]);
                let counter = u64::from_le_bytes(a[k][8..16].try_into().unwrap());
                assert_eq!(counter, REJECT_AFTER_MESSAGES - 3 + k as u64);
            }
        }
        assert!(burst.out.events.iter().any(|e| matches!(e, Event::HandshakeWanted(p) if *p == burst.peers[0])));
        assert_eq!(without_cache_counts(&burst.out.stats), without_cache_counts(&single.out.stats));
    }
    let kp = burst.dev.peer(burst.peers[0]).unwrap().keypairs.current().unwrap();
    assert_eq!(kp.sending_counter(), REJECT_AFTER_MESSAGES, "never past the limit");
    assert_eq!(burst.out.stats.aead_sealed, 3);
}

/// Two workers on one device and one peer at once, in bursts: every send counter is used once
/// (the reservation is one atomic step per keypair and burst), and every received counter is
/// accepted by exactly one of them (the replay window's mark under its lock).
#[test]
fn two_threads_never_share_a_counter() {
    const BURSTS: usize = 400;
    const PER_BURST: usize = 8;
    let r = rig(13);
    let dev = &r.dev;
    let peer = r.peers[0];
    // Send: both threads seal to peer 0; collect every counter with its message.
    let sealed_by: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Output::with_capacity(64);
                    let mut results = Vec::new();
                    let mut got = Vec::new();
                    for _ in 0..BURSTS {
                        let mut bufs: Vec<Vec<u8>> = (0..PER_BURST)
                            .map(|_| {
                                let mut b = vec![0u8; 16 + 60 + 32];
                                b[16..76].copy_from_slice(&ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(0), 40));
                                b
                            })
                            .collect();
                        let mut items: Vec<TxItem<'_>> =
                            bufs.iter_mut().map(|b| TxItem { peer, buf: &mut b[..], plain_len: 60 }).collect();
                        dev.encapsulate_burst(t(101), &mut items, &mut results, &mut out);
                        drop(items);
                        for (b, res) in bufs.into_iter().zip(&results) {
                            let e = res.as_ref().expect("sealed");
                            got.push((u64::from_le_bytes(b[8..16].try_into().unwrap()), b[..e.len].to_vec()));
                        }
                    }
                    got
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<(u64, Vec<u8>)> = sealed_by.into_iter().flatten().collect();
    all.sort_by_key(|(c, _)| *c);
    let total = (2 * BURSTS * PER_BURST) as u64;
    assert!(all.iter().map(|(c, _)| *c).eq(0..total), "every counter once, none skipped");
    let peer_end = r.senders[0].as_ref().unwrap();
    for (_, m) in &mut all {
        assert!(peer_end.open(t(101), m).is_ok(), "the peer opens each");
    }

    // Receive: both threads get the same messages from peer 0; each counter accepted once.
    let msgs: Vec<Vec<u8>> = (0..BURSTS * PER_BURST)
        .map(|_| sealed(&r, 0, &ipv4_packet(inner_src(0), Ipv4Addr::new(10, 9, 0, 1), 40), t(100)))
        .collect();
    let accepted: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let mut mine = msgs.clone();
                s.spawn(move || {
                    let mut out = Output::with_capacity(64);
                    let mut results = Vec::new();
                    let mut got = Vec::new();
                    for chunk in mine.chunks_mut(PER_BURST) {
                        let counters: Vec<u64> =
                            chunk.iter().map(|m| u64::from_le_bytes(m[8..16].try_into().unwrap())).collect();
                        let mut items: Vec<RxItem<'_>> =
                            chunk.iter_mut().map(|m| RxItem { src: src_addr(0, false), msg: &mut m[..] }).collect();
                        dev.decapsulate_burst(t(101), &mut items, &mut results, &mut out);
                        for (c, res) in counters.into_iter().zip(&results) {
                            match res {
                                Ok(d) => {
                                    assert_eq!(d.peer, peer);
                                    got.push(c);
                                }
                                Err(e) => assert_eq!(*e, DropReason::Replay),
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = accepted.concat();
    all.sort_unstable();
    assert!(all.iter().copied().eq(0..(BURSTS * PER_BURST) as u64), "each counter accepted exactly once");
}

/// Everything of one peer the data path can write: byte counters, endpoint, every timer's
/// deadline, the last-minute and handshake-wanted flags, and its current keypair's send counter
/// and replay window.
#[derive(Debug, PartialEq, Eq)]
struct PeerWrites {
    rx: u64,
    tx: u64,
    endpoint: Option<SocketAddr>,
    timers: Vec<Option<Timestamp>>,
    lastminute: bool,
    handshake_wanted: bool,
    send_counter: u64,
    window: u64,
}

fn peer_writes(dev: &Device, id: PeerId) -> PeerWrites {
    use crate::timers::Timer;
    let p = dev.peer(id).unwrap();
    let kp = p.keypairs.current().unwrap();
    let window = kp.lock_window().counter();
    PeerWrites {
        rx: p.rx_bytes(),
        tx: p.tx_bytes(),
        endpoint: p.endpoint(),
        timers: Timer::ALL.into_iter().map(|t| p.timers.deadline(t)).collect(),
        lastminute: p.timers.lastminute_claimed(),
        handshake_wanted: p.handshake_wanted.load(std::sync::atomic::Ordering::Relaxed),
        send_counter: kp.sending_counter(),
        window,
    }
}

/// One worker's traffic with peer `p` of `r`: `bursts` bursts each way of `per` messages
/// (received from a roaming source now and then, so the endpoint moves), at 170 s (the old
/// peer's keypair then asks for its last-minute handshake on receive).
fn one_peer_traffic(r: &Rig, p: u8, msgs: &mut [Vec<u8>], bursts: usize, per: usize) -> Output {
    let dev = &r.dev;
    let id = r.peers[p as usize];
    let mut out = Output::with_capacity(64);
    let (mut rx_results, mut tx_results) = (Vec::new(), Vec::new());
    let now = t(170);
    for (b, chunk) in msgs.chunks_mut(per).take(bursts).enumerate() {
        let src = src_addr(p, b % 3 == 2);
        let mut items: Vec<RxItem<'_>> = chunk.iter_mut().map(|m| RxItem { src, msg: &mut m[..] }).collect();
        dev.decapsulate_burst(now, &mut items, &mut rx_results, &mut out);
        assert!(rx_results.iter().all(Result::is_ok), "{rx_results:?}");
        let mut bufs: Vec<Vec<u8>> = (0..per)
            .map(|_| {
                let mut buf = vec![0u8; 16 + 60 + 32];
                buf[16..76].copy_from_slice(&ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(p), 40));
                buf
            })
            .collect();
        let mut items: Vec<TxItem<'_>> =
            bufs.iter_mut().map(|buf| TxItem { peer: id, buf: &mut buf[..], plain_len: 60 }).collect();
        dev.encapsulate_burst(now, &mut items, &mut tx_results, &mut out);
        assert!(tx_results.iter().all(Result::is_ok), "{tx_results:?}");
    }
    out
}

/// Two workers on distinct peers: what one worker's bursts for peer B do leaves every field of
/// peer A as it was, and running both workers at once leaves each peer exactly as its own
/// worker alone leaves it. And each peer's fields written per burst lie on cache lines of its
/// own block (see `Peer`'s layout), so the two workers write no line in common.
#[test]
fn two_workers_on_distinct_peers_write_only_their_own_peer() {
    const BURSTS: usize = 200;
    const PER: usize = 8;
    // Peer 0 (a fresh session) and the old peer (its receive side asks for the last-minute
    // handshake: a flag written once, then read per message).
    let (a, b) = (0u8, OLD_PEER);
    let traffic = |r: &Rig, p: u8| -> Vec<Vec<u8>> {
        (0..BURSTS * PER)
            .map(|_| sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), 40), t(100)))
            .collect()
    };

    // Worker 2 alone, on B: A untouched.
    let r = rig(17);
    let (ida, idb) = (r.peers[a as usize], r.peers[b as usize]);
    let before = peer_writes(&r.dev, ida);
    let out = one_peer_traffic(&r, b, &mut traffic(&r, b), BURSTS, PER);
    assert_eq!(peer_writes(&r.dev, ida), before, "peer A changed by bursts for peer B");
    assert_ne!(peer_writes(&r.dev, idb), peer_writes(&rig(17).dev, idb), "peer B's bursts ran");
    assert_eq!(
        out.events.iter().filter(|e| matches!(e, Event::HandshakeWanted(p) if *p == idb)).count(),
        1,
        "one last-minute handshake for B's keypair"
    );
    assert!(out.events.iter().all(|e| !matches!(e, Event::HandshakeWanted(p) if *p == ida)));

    // Each alone, then both at once: the same end state per peer.
    let alone: Vec<PeerWrites> = [a, b]
        .iter()
        .map(|&p| {
            let r = rig(17);
            one_peer_traffic(&r, p, &mut traffic(&r, p), BURSTS, PER);
            peer_writes(&r.dev, r.peers[p as usize])
        })
        .collect();
    let r = rig(17);
    let (mut ta, mut tb) = (traffic(&r, a), traffic(&r, b));
    std::thread::scope(|s| {
        let (r, ta, tb) = (&r, &mut ta, &mut tb);
        let wa = s.spawn(move || one_peer_traffic(r, a, ta, BURSTS, PER));
        let wb = s.spawn(move || one_peer_traffic(r, b, tb, BURSTS, PER));
        wa.join().unwrap();
        wb.join().unwrap();
    });
    assert_eq!(peer_writes(&r.dev, ida), alone[0], "peer A with both workers running");
    assert_eq!(peer_writes(&r.dev, idb), alone[1], "peer B with both workers running");

    // The lines the data path writes per burst: each peer's hot fields, in its own block.
    let lines = |id: PeerId| {
        let p = Arc::as_ptr(r.dev.peer(id).unwrap()) as usize;
        let block = p - 2 * core::mem::size_of::<usize>(); // the Arc's counts come first
        let (first, last) = ((p + peer::HOT_FIELDS.start) / 64, (p + peer::HOT_FIELDS.end - 1) / 64);
        assert!(first * 64 >= block, "a hot line starts before the peer's block");
        assert!((last + 1) * 64 <= p + core::mem::size_of::<Peer>(), "a hot line ends after the peer's block");
        first..=last
    };
    let (la, lb) = (lines(ida), lines(idb));
    assert!(la.end() < lb.start() || lb.end() < la.start(), "{la:?} {lb:?}");
    // Keypairs: whole lines each (the reference count on a line of its own before them).
    assert_eq!(core::mem::align_of::<Keypair>(), 64);
    assert_eq!(core::mem::size_of::<Keypair>() % 64, 0);
}

/// The receive side's last-minute handshake (an initiator's keypair near the end of its life)
/// is asked for once per keypair, whichever of two workers opens its messages first, and the
/// flag is written only by that claim: every later message reads it.
#[test]
fn the_last_minute_handshake_is_claimed_once_by_two_workers() {
    const PER: usize = 8;
    let r = rig(19);
    let id = r.peers[OLD_PEER as usize];
    let msgs: Vec<Vec<u8>> = (0..2 * 50 * PER)
        .map(|_| sealed(&r, OLD_PEER, &ipv4_packet(inner_src(OLD_PEER), Ipv4Addr::new(10, 9, 0, 1), 40), t(100)))
        .collect();
    let (mine, theirs) = msgs.split_at(50 * PER);
    let outs: Vec<Output> = std::thread::scope(|s| {
        [mine.to_vec(), theirs.to_vec()]
            .map(|mut m| {
                let r = &r;
                s.spawn(move || {
                    let mut out = Output::with_capacity(64);
                    let mut results = Vec::new();
                    for chunk in m.chunks_mut(PER) {
                        let mut items: Vec<RxItem<'_>> = chunk
                            .iter_mut()
                            .map(|m| RxItem { src: src_addr(OLD_PEER, false), msg: &mut m[..] })
                            .collect();
                        r.dev.decapsulate_burst(t(170), &mut items, &mut results, &mut out);
                        assert!(results.iter().all(Result::is_ok), "{results:?}");
                    }
                    out
                })
            })
            .map(|h| h.join().unwrap())
            .into()
    });
    let wanted = outs.iter().flat_map(|o| &o.events).filter(|e| matches!(e, Event::HandshakeWanted(p) if *p == id));
    assert_eq!(wanted.count(), 1);
    let peer = r.dev.peer(id).unwrap();
    assert!(peer.timers.lastminute_claimed());
    assert!(!peer.timers.claim_lastminute_handshake(), "claimed already");
    // A completed handshake makes it claimable again, once.
    peer.timers.handshake_complete(t(171));
    assert!(peer.timers.claim_lastminute_handshake());
    assert!(!peer.timers.claim_lastminute_handshake());
}

/// The receive side's last-minute handshake follows the peer's current keypair, as the
/// kernel's `keep_key_fresh` does: a message on an old previous keypair (ours as initiator, 169
/// s old) while a fresh one is current asks for nothing; once the current one is that old, a
/// message on it asks, once.
#[test]
fn the_last_minute_handshake_follows_the_current_keypair() {
    let r = rig(23);
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let id = r.peers[OLD_PEER as usize];
    // The old peer's keypair (born at 1 s) becomes previous; a fresh one (100 s) is current.
    let (s, v) = (Secret([70; 32]), Secret([71; 32]));
    let local = r.dev.bench_install_session(&mut rng, id, &s, &v, 0x4000, t(100)).unwrap();
    let fresh = Keypair::new(&v, &s, 0x4000, local, false, t(100));
    let inner = ipv4_packet(inner_src(OLD_PEER), Ipv4Addr::new(10, 9, 0, 1), 40);
    let mut out = Output::with_capacity(64);
    let mut results = Vec::new();
    let wanted =
        |out: &Output| out.events.iter().filter(|e| matches!(e, Event::HandshakeWanted(p) if *p == id)).count();
    // On the previous keypair at 170 s: it is past REKEY_AFTER_TIME_RECV, the current one is not.
    let mut msgs: Vec<Vec<u8>> = (0..4).map(|_| sealed(&r, OLD_PEER, &inner, t(2))).collect();
    let mut items: Vec<RxItem<'_>> =
        msgs.iter_mut().map(|m| RxItem { src: src_addr(OLD_PEER, false), msg: &mut m[..] }).collect();
    r.dev.decapsulate_burst(t(170), &mut items, &mut results, &mut out);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(wanted(&out), 0, "a message on the old previous keypair asked for a handshake");
    let peer = r.dev.peer(id).unwrap();
    assert!(!peer.timers.lastminute_claimed());
    // On the current keypair once it is that old (270 s): asked for once.
    let seal = |at: Timestamp| {
        let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + 32];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(&inner);
        let n = fresh.seal(at, &mut buf, inner.len(), MTU).unwrap();
        buf.truncate(n);
        buf
    };
    let mut msgs: Vec<Vec<u8>> = (0..4).map(|_| seal(t(101))).collect();
    let mut items: Vec<RxItem<'_>> =
        msgs.iter_mut().map(|m| RxItem { src: src_addr(OLD_PEER, false), msg: &mut m[..] }).collect();
    r.dev.decapsulate_burst(t(270), &mut items, &mut results, &mut out);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(wanted(&out), 1);
    assert!(peer.timers.lastminute_claimed());
}

/// The host-route shortcut of the source check (a peer's allowed /32 kept in its peer-table
/// slot) answers as the trie does through every change of the allowed IPs: a /32 that moves
/// to another peer stops being the first peer's (its packets from that source are refused),
/// a peer whose allowed IPs are cleared has none, a peer's second /32 and a shorter prefix go
/// through the trie, and a removed peer's slot keeps nothing.
#[test]
fn host_routes_follow_the_allowed_ips() {
    let mut r = rig(29);
    let (a, b) = (r.peers[0], r.peers[1]);
    let from = |r: &Rig, p: u8, src: Ipv4Addr| -> Result<(), DropReason> {
        let mut m = sealed(r, p, &ipv4_packet(src, Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
        let mut items = vec![RxItem { src: src_addr(p, false), msg: &mut m[..] }];
        let mut results = Vec::new();
        let mut out = Output::with_capacity(8);
        r.dev.decapsulate_burst(t(101), &mut items, &mut results, &mut out);
        results.pop().unwrap().map(|_| ())
    };
    assert!(r.dev.is_host_route_v4(a, inner_src(0)));
    assert_eq!(from(&r, 0, inner_src(0)), Ok(()));
    // A second /32 and a shorter prefix of peer A: through the trie.
    let second = Ipv4Addr::new(10, 0, 0, 2);
    r.dev.add_allowed_ip(a, IpAddr::V4(second), 32).unwrap();
    r.dev.add_allowed_ip(a, IpAddr::V4(Ipv4Addr::new(10, 50, 0, 0)), 16).unwrap();
    assert!(!r.dev.is_host_route_v4(a, second));
    assert_eq!(from(&r, 0, second), Ok(()));
    assert_eq!(from(&r, 0, Ipv4Addr::new(10, 50, 3, 4)), Ok(()));
    // A's host /32 moves to B: A's packets from it are refused, B's accepted.
    r.dev.add_allowed_ip(b, IpAddr::V4(inner_src(0)), 32).unwrap();
    assert!(!r.dev.is_host_route_v4(a, inner_src(0)));
    assert!(r.dev.is_host_route_v4(b, inner_src(1)), "B keeps its first host route");
    assert_eq!(from(&r, 0, inner_src(0)), Err(DropReason::DisallowedSource));
    assert_eq!(from(&r, 1, inner_src(0)), Ok(()));
    assert_eq!(from(&r, 0, second), Ok(()), "A's other /32 still routes to A");
    // Cleared: nothing of A's is accepted, and it has no host route.
    r.dev.clear_allowed_ips(a);
    assert!(!r.dev.is_host_route_v4(a, second));
    assert_eq!(from(&r, 0, second), Err(DropReason::DisallowedSource));
    // A new /32 after the clear becomes A's host route again.
    r.dev.add_allowed_ip(a, IpAddr::V4(second), 32).unwrap();
    assert!(r.dev.is_host_route_v4(a, second));
    assert_eq!(from(&r, 0, second), Ok(()));
    // A removed peer's slot keeps no host route for the id's next owner.
    r.dev.remove_peer(b).unwrap();
    assert!(!r.dev.is_host_route_v4(b, inner_src(1)));
}

/// What the worker does when idle: it forgets the cached lookups whose keypair the device
/// dropped (the cache held the last reference: the keys go, wiped) and keeps the others, so the
/// next burst hits instead of going to the shared table for every packet.
#[test]
fn forgetting_dropped_keys_keeps_the_live_lookups() {
    let mut r = rig(21);
    let mut rng = ChaCha20Rng::seed_from_u64(210);
    let msg = |r: &Rig, p: u8| sealed(r, p, &ipv4_packet(inner_src(p), Ipv4Addr::new(10, 9, 0, 1), 40), t(100));
    for p in [0, 1] {
        let mut m = msg(&r, p);
        assert!(r.dev.decapsulate(t(101), src_addr(p, false), &mut m, &mut r.out).is_ok());
    }
    assert_eq!(r.out.index_cache_used(), 2);
    // Peer 0's keypair leaves its slots and the table (two new sessions): only the cache holds it.
    let old = Arc::downgrade(&r.dev.peer(r.peers[0]).unwrap().keypairs.current().unwrap());
    for k in 0..2u8 {
        let (s, v) = (Secret([70 + k; 32]), Secret([80 + k; 32]));
        r.dev.bench_install_session(&mut rng, r.peers[0], &s, &v, 0x3000, t(101)).unwrap();
    }
    assert!(old.upgrade().is_some(), "the cache still holds the dropped keypair");
    assert_eq!(r.out.forget_dropped_keys(), 1);
    assert!(old.upgrade().is_none(), "its keys are gone once the cache lets go");
    assert_eq!(r.out.index_cache_used(), 1, "peer 1's lookup stays");
    assert_eq!(r.out.forget_dropped_keys(), 0);
    let (hits, misses) = (r.out.stats.index_cache_hits, r.out.stats.index_cache_misses);
    let mut m = msg(&r, 1);
    assert!(r.dev.decapsulate(t(102), src_addr(1, false), &mut m, &mut r.out).is_ok());
    assert_eq!(
        (r.out.stats.index_cache_hits, r.out.stats.index_cache_misses),
        (hits + 1, misses),
        "a hit after forgetting the dropped keys"
    );
    r.out.forget_keys();
    assert_eq!(r.out.index_cache_used(), 0);
}

/// The worker's send cache follows the peer's current keypair: a new session seals with the new
/// keypair at once, a removed peer's id taken by a new peer seals with the new peer's keypair,
/// and a keypair only the cache still holds is freed when the worker forgets dropped keys. (An
/// entry filled while a peer's first session is being installed carries the peer's first stamp:
/// that no other peer's slots start with it is `keypairs::tests::the_stamp_follows_the_current_slot`.)
#[test]
fn the_send_cache_follows_the_current_keypair() {
    let mut r = rig(23);
    let mut rng = ChaCha20Rng::seed_from_u64(230);
    // Seal one message to `id`: the receiver index it carries.
    let seal = |r: &mut Rig, id: PeerId| -> Result<u32, DropReason> {
        let mut buf = [0u8; 16 + 60 + 32];
        buf[16..76].copy_from_slice(&ipv4_packet(Ipv4Addr::new(10, 9, 0, 1), inner_src(0), 40));
        let mut items = vec![TxItem { peer: id, buf: &mut buf[..], plain_len: 60 }];
        let mut results = Vec::new();
        r.dev.encapsulate_burst(t(101), &mut items, &mut results, &mut r.out);
        drop(items);
        let e = results[0]?;
        Ok(TransportData::new_checked(&buf[..e.len]).unwrap().receiver_index())
    };
    let id = r.peers[0];
    assert_eq!(seal(&mut r, id), Ok(0x1000));
    assert_eq!(seal(&mut r, id), Ok(0x1000), "from the cache");
    r.dev.bench_install_session(&mut rng, id, &Secret([50; 32]), &Secret([51; 32]), 0x3000, t(101)).unwrap();
    assert_eq!(seal(&mut r, id), Ok(0x3000), "the new session's keypair, not the cached one");
    let held = Arc::downgrade(&r.dev.peer(id).unwrap().keypairs.current().unwrap());
    r.dev.remove_peer(id).unwrap();
    assert_eq!(seal(&mut r, id), Err(DropReason::NoRoute));
    assert!(held.upgrade().is_some(), "the send cache still holds the removed peer's keypair");
    // A new peer takes the removed one's id while the cache still holds the old entry: no
    // session yet, so nothing to seal with (not the removed peer's keypair).
    let reuse = |r: &mut Rig, rng: &mut ChaCha20Rng| {
        let pk = PrivateKey::generate(rng).public_key();
        let new = r.dev.add_peer(rng, pk).unwrap();
        assert_eq!(new, id);
        r.dev.set_endpoint(new, src_addr(0, false)).unwrap();
        new
    };
    let new = reuse(&mut r, &mut rng);
    assert_eq!(seal(&mut r, new), Err(DropReason::NoSession), "not the removed peer's keypair");
    assert!(r.out.forget_dropped_keys() >= 1);
    assert!(held.upgrade().is_none(), "its keys are gone once the cache lets go");
    r.dev.bench_install_session(&mut rng, new, &Secret([60; 32]), &Secret([61; 32]), 0x4000, t(101)).unwrap();
    assert_eq!(seal(&mut r, new), Ok(0x4000));
    // Again, now with the new peer's session installed while the old entry is still cached.
    let held = Arc::downgrade(&r.dev.peer(id).unwrap().keypairs.current().unwrap());
    r.dev.remove_peer(id).unwrap();
    let new = reuse(&mut r, &mut rng);
    r.dev.bench_install_session(&mut rng, new, &Secret([70; 32]), &Secret([71; 32]), 0x5000, t(101)).unwrap();
    assert_eq!(seal(&mut r, new), Ok(0x5000), "the new peer's keypair, not the cached one");
    assert!(held.upgrade().is_none(), "the stale entry was replaced");
    let other = r.peers[1];
    assert_eq!(seal(&mut r, other), Ok(0x1001), "another peer's entry is its own");
    r.out.forget_keys();
    assert_eq!(seal(&mut r, new), Ok(0x5000), "refilled after forgetting every key");
}

/// At the message limit, received: counters at and past `REJECT_AFTER_MESSAGES` are refused
/// before decrypting, the last counters below it are accepted, and once the window has reached
/// the limit everything on the keypair is refused, all as the one-message rules (the model, on
/// `Keypair::open` with its pre-check) decide them, in one burst and in the next.
#[test]
fn receive_bursts_at_the_counter_limit_decide_as_messages_one_at_a_time() {
    let (mut burst, mut model) = (rig(31), rig(31));
    let r = REJECT_AFTER_MESSAGES;
    burst.senders[0].as_ref().unwrap().set_sending_counter_for_test(r - 3);
    let inner = ipv4_packet(inner_src(0), Ipv4Addr::new(10, 9, 0, 1), 40);
    let m: Vec<Vec<u8>> = (0..3).map(|_| sealed(&burst, 0, &inner, t(100))).collect();
    let forged = |c: u64| {
        let mut f = m[0].clone();
        f[8..16].copy_from_slice(&c.to_le_bytes());
        f
    };
    let rounds = [
        vec![m[0].clone(), forged(r), m[2].clone(), m[2].clone(), forged(r + 5), m[1].clone()],
        vec![m[1].clone(), forged(r - 10), m[0].clone()],
    ];
    let mut results = Vec::new();
    let mut seen = Vec::new();
    for (round, msgs) in rounds.iter().enumerate() {
        let mut a = msgs.clone();
        let mut items: Vec<RxItem<'_>> =
            a.iter_mut().map(|msg| RxItem { src: src_addr(0, false), msg: &mut msg[..] }).collect();
        burst.dev.decapsulate_burst(t(101), &mut items, &mut results, &mut burst.out);
        drop(items);
        for (k, msg) in msgs.iter().enumerate() {
            let mut c = msg.clone();
            let want = model_decapsulate(&model.dev, t(101), src_addr(0, false), &mut c, &mut model.out);
            assert_eq!(results[k], want, "round {round}, message {k}");
            seen.push(results[k].clone().map(|_| ()));
        }
        assert_eq!(without_cache_counts(&burst.out.stats), without_cache_counts(&model.out.stats), "round {round}");
    }
    let expired = Err(DropReason::KeypairExpired);
    assert_eq!(
        seen,
        vec![Ok(()), expired, Ok(()), expired, expired, expired, expired, expired, expired],
        "the limit's decisions"
    );
}

/// Each worker's `Output` (its per-packet counters and index cache) fills whole cache lines,
/// so two of them never share one, side by side in memory included.
#[test]
fn outputs_of_two_workers_share_no_cache_line() {
    assert_eq!(core::mem::align_of::<Output>() % 64, 0);
    assert_eq!(core::mem::size_of::<Output>() % 64, 0);
    let two = [Output::with_capacity(1), Output::with_capacity(1)];
    let stats = |o: &Output| {
        let p = core::ptr::from_ref(&o.stats) as usize;
        (p / 64)..=((p + core::mem::size_of::<Stats>() - 1) / 64)
    };
    let (a, b) = (stats(&two[0]), stats(&two[1]));
    assert!(a.end() < b.start(), "{a:?} {b:?}");
}
