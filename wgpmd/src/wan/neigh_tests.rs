//! Unit tests of the neighbour table (`neigh.rs`): aging, learning rules, bounds.

use super::*;
use crate::wan::WanAddr;
use std::net::{Ipv4Addr, Ipv6Addr};

const HOP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);
const S: u64 = 1_000_000_000;

fn t(ns: u64) -> Timestamp {
    Timestamp::from_nanos(ns)
}

/// Us at 10.0.0.1/8 and 2001:db8::1/64: room for many neighbours.
fn wan() -> Wan {
    Wan {
        mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        v4: Some(WanAddr { addr: Ipv4Addr::new(10, 0, 0, 1), prefix: 8, gateway: None }),
        v6: Some(WanAddr { addr: "2001:db8::1".parse().unwrap(), prefix: 64, gateway: None }),
        vlan: None,
    }
}

fn table() -> Neighbours<u32> {
    Neighbours::with_timing(NeighTiming { reachable_ns: 30 * S, retrans_ns: S, probes: 3 })
}

fn small(max: usize) -> Neighbours<u32> {
    Neighbours::with_config(NeighTiming { reachable_ns: 30 * S, retrans_ns: S, probes: 3 }, max)
}

/// The `i`th address of 10.1.0.0/16 and a unicast MAC for it.
fn host(i: u32) -> (Ipv4Addr, EthernetAddress) {
    let b = (0x0a01_0000u32 + i).to_be_bytes();
    (Ipv4Addr::from(b), EthernetAddress([2, 1, b[0], b[1], b[2], b[3]]))
}

fn learn(
    n: &Neighbours<u32>,
    ip: Ipv4Addr,
    mac: EthernetAddress,
    heard: Heard,
    now: Timestamp,
) -> Result<Vec<u32>, Refusal> {
    n.learn(&wan(), ip, mac, heard, now).map(Vec::from)
}

#[test]
fn entries_are_fresh_for_the_reachable_time() {
    let n = table();
    assert_eq!(n.resolve(HOP, t(1)).mac, None);
    learn(&n, HOP, A, Heard::Traffic, t(1)).unwrap();
    let r = n.resolve(HOP, t(29 * S));
    assert_eq!((r.mac, r.probe, r.stale_at, r.refresh_after), (Some(A), false, t(30 * S + 1), t(15 * S + 1)));
}

#[test]
fn a_stale_entry_is_refreshed_while_still_used() {
    let n = table();
    learn(&n, HOP, A, Heard::Traffic, t(1)).unwrap();
    let g = n.generation();
    // Stale: the first use asks (and still sends to A), the next ones within a second don't.
    let r = n.resolve(HOP, t(31 * S));
    assert_eq!((r.mac, r.probe, r.stale_at), (Some(A), true, Timestamp::ZERO));
    let r = n.resolve(HOP, t(31 * S + S / 2));
    assert_eq!((r.mac, r.probe), (Some(A), false));
    // The reply confirms it: fresh again, same MAC, no generation change.
    learn(&n, HOP, A, Heard::Answer, t(32 * S)).unwrap();
    let r = n.resolve(HOP, t(33 * S));
    assert_eq!((r.mac, r.probe, r.stale_at), (Some(A), false, t(62 * S)));
    assert_eq!(n.generation(), g);
    // Confirmation by traffic within half the reachable time needs no write; later it does.
    learn(&n, HOP, A, Heard::Traffic, t(40 * S)).unwrap();
    assert_eq!(n.resolve(HOP, t(33 * S)).stale_at, t(62 * S));
    learn(&n, HOP, A, Heard::Traffic, t(50 * S)).unwrap();
    assert_eq!(n.resolve(HOP, t(51 * S)).stale_at, t(80 * S));
}

#[test]
fn an_unanswered_entry_is_dropped_after_its_probes() {
    let n = table();
    learn(&n, HOP, A, Heard::Traffic, t(1)).unwrap();
    let g = n.generation();
    let mut asked = 0;
    let mut gone_at = None;
    // A use every 100 ms after the entry went stale, no replies.
    for i in 0..60 {
        let now = t(31 * S + i * S / 10);
        let r = n.resolve(HOP, now);
        asked += u32::from(r.probe);
        if r.mac.is_none() {
            gone_at = Some(i);
            break;
        }
    }
    assert_eq!(asked, 3, "three requests, one a second");
    assert_eq!(gone_at, Some(30), "dropped one interval after the third request");
    assert_ne!(n.generation(), g, "the workers' copies go too");
    assert_eq!(n.lookup(HOP), None);
}

#[test]
fn a_next_hop_that_moved_is_re_resolved_and_waiting_frames_stay_bounded() {
    let n = table();
    learn(&n, HOP, A, Heard::Traffic, t(1)).unwrap();
    // A stops answering; the entry ages out.
    let mut now = 31 * S;
    while n.resolve(HOP, t(now)).mac.is_some() {
        now += S / 10;
    }
    // Frames now wait; the first asks, the bound holds and drops are reported.
    let (mut asks, mut drops) = (0, 0);
    for i in 0..(MAX_PENDING_PER_HOP as u64 + 5) {
        let p = n.park(HOP, i as u32, t(now + i));
        asks += u32::from(p.ask);
        drops += p.dropped;
    }
    assert_eq!((asks, drops), (1, 5));
    // The host answers from its new MAC (we asked: the answer is solicited): the waiting
    // frames come back, the entry is fresh.
    let g = n.generation();
    let waiting = learn(&n, HOP, B, Heard::Answer, t(now + S / 2)).unwrap();
    assert_eq!(waiting, (5..MAX_PENDING_PER_HOP as u32 + 5).collect::<Vec<_>>(), "the oldest went first");
    assert_eq!(n.generation(), g, "a new entry leaves the workers' copies alone");
    let r = n.resolve(HOP, t(now + S));
    assert_eq!((r.mac, r.probe), (Some(B), false));
    assert_eq!(n.stats().parked_frames, 0);
}

#[test]
fn only_mac_changes_move_the_generation() {
    let n = table();
    let g = n.generation();
    for i in 0..100 {
        let (ip, mac) = host(i);
        learn(&n, ip, mac, Heard::Asked, t(1)).unwrap();
    }
    assert_eq!(n.generation(), g, "new entries do not flush the workers' copies");
    let (ip, _) = host(7);
    learn(&n, ip, B, Heard::Asked, t(2)).unwrap();
    assert_eq!(n.generation(), g + 1, "a changed MAC does");
}

#[test]
fn each_refusal_is_counted() {
    let n = table();
    let (ip, mac) = host(1);
    let cases: [(Ipv4Addr, EthernetAddress, Heard, Refusal); 7] = [
        (ip, EthernetAddress([1, 0, 0x5e, 0, 0, 1]), Heard::Asked, Refusal::Multicast),
        (ip, EthernetAddress::BROADCAST, Heard::Traffic, Refusal::Multicast),
        (ip, EthernetAddress([0; 6]), Heard::Asked, Refusal::ZeroMac),
        (Ipv4Addr::new(192, 168, 1, 1), mac, Heard::Asked, Refusal::NotNeighbour),
        (Ipv4Addr::new(10, 0, 0, 1), mac, Heard::Asked, Refusal::NotNeighbour),
        (Ipv4Addr::new(10, 255, 255, 255), mac, Heard::Asked, Refusal::NotNeighbour),
        (ip, mac, Heard::Answer, Refusal::Unsolicited),
    ];
    for (i, (ip, mac, heard, why)) in cases.into_iter().enumerate() {
        assert_eq!(learn(&n, ip, mac, heard, t(1)), Err(why), "case {i}");
    }
    let st = n.stats();
    assert_eq!(st.refused[Refusal::Multicast as usize], 2);
    assert_eq!(st.refused[Refusal::ZeroMac as usize], 1);
    assert_eq!(st.refused[Refusal::NotNeighbour as usize], 3);
    assert_eq!(st.refused[Refusal::Unsolicited as usize], 1);
    assert_eq!(st.entries, 0, "nothing was learned");
    // IPv6: an unsolicited advertisement is refused, a solicitation for us is learned.
    let v6: Ipv6Addr = "2001:db8::99".parse().unwrap();
    assert_eq!(n.learn(&wan(), v6, mac, Heard::Answer, t(1)).map(Vec::from), Err(Refusal::Unsolicited));
    assert!(n.learn(&wan(), v6, mac, Heard::Asked, t(1)).is_ok());
    // An answer for what we have (or resolve) is taken.
    assert!(n.learn(&wan(), v6, B, Heard::Answer, t(2)).is_ok());
    assert_eq!(n.lookup(v6), Some(B));
}

#[test]
fn answers_are_learned_only_when_asked_for() {
    let n = table();
    let (ip, mac) = host(5);
    assert_eq!(learn(&n, ip, mac, Heard::Answer, t(1)), Err(Refusal::Unsolicited));
    // We need it: a frame waits, we ask; the answer is taken and returns the frame.
    let p = n.park(ip, 42, t(2));
    assert!(p.ask && p.dropped == 0);
    assert_eq!(learn(&n, ip, mac, Heard::Answer, t(3)), Ok(vec![42]));
    assert_eq!(n.stats().probation, 0, "an entry we asked for is active");
}

#[test]
fn the_table_is_bounded_and_probation_goes_first() {
    const MAX: usize = 64;
    let n = small(MAX);
    // Two next hops in use: one from traffic, one used to send (promoted from probation).
    let (gw, gw_mac) = host(100_000);
    learn(&n, gw, gw_mac, Heard::Traffic, t(1)).unwrap();
    let (peer, peer_mac) = host(100_001);
    learn(&n, peer, peer_mac, Heard::Asked, t(1)).unwrap();
    assert_eq!(n.stats().probation, 1);
    assert_eq!(n.resolve(peer, t(2)).mac, Some(peer_mac));
    assert_eq!(n.stats().probation, 0, "used: active");
    // A flood of requests from 10,000 addresses.
    for i in 0..10_000 {
        let (ip, mac) = host(i);
        learn(&n, ip, mac, Heard::Asked, t(3)).unwrap();
        assert!(n.len() <= MAX);
    }
    let st = n.stats();
    assert_eq!((st.entries, st.probation), (MAX, MAX - 2));
    assert_eq!(st.evicted, 10_000 - (MAX as u64 - 2));
    assert_eq!((n.lookup(gw), n.lookup(peer)), (Some(gw_mac), Some(peer_mac)), "the hops in use stay");
    // The newest requests are the ones kept.
    assert!(n.lookup(host(9_999).0).is_some() && n.lookup(host(0).0).is_none());
    // Full of active entries: probation is refused, an active entry evicts the oldest active.
    let m = small(4);
    for i in 0..4 {
        learn(&m, host(i).0, host(i).1, Heard::Traffic, t(1 + u64::from(i))).unwrap();
    }
    assert_eq!(learn(&m, host(10).0, host(10).1, Heard::Asked, t(9)), Err(Refusal::Full));
    assert_eq!(m.stats().refused[Refusal::Full as usize], 1);
    // Host 0 is confirmed again (later than the others): host 1 is now the oldest.
    learn(&m, host(0).0, host(0).1, Heard::Traffic, t(20 * S)).unwrap();
    learn(&m, host(11).0, host(11).1, Heard::Traffic, t(21 * S)).unwrap();
    assert_eq!(m.lookup(host(1).0), None, "the least recently confirmed went");
    // Evicting an active entry (which workers may hold) moves the generation: it may come back
    // with another MAC as a new entry.
    let g = m.generation();
    learn(&m, host(12).0, host(12).1, Heard::Traffic, t(22 * S)).unwrap();
    assert_eq!(m.generation(), g + 1);
    assert!(m.lookup(host(0).0).is_some() && m.lookup(host(11).0).is_some() && m.lookup(host(12).0).is_some());
    assert_eq!(m.len(), 4);
}

#[test]
fn eviction_queues_stay_compact() {
    let n = small(16);
    // Many confirmations of few entries, and churn: the queues must not grow without bound.
    for round in 0..2_000u64 {
        for i in 0..8 {
            learn(&n, host(i).0, host(i).1, Heard::Traffic, t(round * 16 * S + 1)).unwrap();
        }
        let (ip, mac) = host(1000 + (round % 500) as u32);
        let _ = learn(&n, ip, mac, Heard::Asked, t(round * 16 * S + 2));
    }
    let tb = n.read();
    assert!(tb.active.len() <= 2 * 8 + 32 + 1, "{} active items", tb.active.len());
    assert!(tb.probation.len() <= 2 * 8 + 32 + 1, "{} probation items", tb.probation.len());
}

#[test]
fn waiting_frames_are_bounded_and_expire() {
    let n = table();
    // 100 next hops that never answer, 16 frames each: at most MAX_PARKED in all.
    let mut dropped = 0;
    for i in 0..100u32 {
        for f in 0..16 {
            dropped += n.park(host(i).0, i * 100 + f, t(1)).dropped;
        }
    }
    let st = n.stats();
    assert_eq!((st.parked_hops, st.parked_frames), (100, MAX_PARKED));
    assert_eq!(dropped, 1600 - MAX_PARKED);
    // Not yet failed after two intervals; failed after three.
    assert_eq!(n.expire(t(2 * S)), 0);
    assert_eq!(n.expire(t(3 * S + 1)), MAX_PARKED);
    let st = n.stats();
    assert_eq!((st.parked_hops, st.parked_frames, st.failed, st.expired_frames), (0, 0, 100, MAX_PARKED as u64));
    // A failed hop met again by a frame starts over (and asks again).
    let p = n.park(HOP, 1, t(10 * S));
    assert!(p.ask);
    assert_eq!(n.park(HOP, 2, t(10 * S + S / 2)), Parked { ask: false, dropped: 0 });
    let p = n.park(HOP, 3, t(13 * S + 1));
    assert!(p.ask, "a new resolution");
    assert_eq!(n.stats().expired_frames, MAX_PARKED as u64 + 2);
    // Next hops waiting are bounded by the table size.
    let m = small(8);
    for i in 0..8 {
        assert_eq!(m.park(host(i).0, i, t(1)).dropped, 0);
    }
    assert_eq!(m.park(host(99).0, 99, t(1)), Parked { ask: false, dropped: 1 });
}
