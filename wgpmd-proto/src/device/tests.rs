//! Two of our devices on virtual time (quinn-proto's `Pair` pattern): every timer rule,
//! cookies, roaming, routing checks and two threads driving one peer.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::messages::{KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};

const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);
const A_IN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_IN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub(crate) fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum = 0u32;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// One side: a device, its only peer, its timer wheel and what it has sent.
struct Side {
    dev: Device,
    peer: PeerId,
    addr: SocketAddr,
    inner: Ipv4Addr,
    out: Output,
    wheel: BTreeSet<(Timestamp, PeerId)>,
    /// (time, message type, length) of every datagram sent.
    sent: Vec<(Timestamp, u8, usize)>,
    delivered: Vec<Vec<u8>>,
    /// Data messages sealed by the test, waiting for `pump`.
    data_out: Vec<Vec<u8>>,
    under_load: bool,
    gave_up: u32,
}

struct Pair {
    a: Side,
    b: Side,
    now: Timestamp,
    rng: ChaCha20Rng,
    /// Drop everything sent by A (or B) while set.
    blackhole_a: bool,
    blackhole_b: bool,
}

fn side(
    rng: &mut ChaCha20Rng,
    key: PrivateKey,
    peer_key: [u8; 32],
    addr: SocketAddr,
    peer_addr: SocketAddr,
    inner: Ipv4Addr,
    peer_inner: Ipv4Addr,
) -> Side {
    let mut dev = Device::new(rng, 1_700_000_000_000_000_000);
    dev.set_private_key(Some(key));
    let peer = dev.add_peer(rng, peer_key).unwrap();
    dev.set_endpoint(peer, peer_addr).unwrap();
    dev.add_allowed_ip(peer, IpAddr::V4(peer_inner), 32).unwrap();
    Side {
        dev,
        peer,
        addr,
        inner,
        out: Output::with_capacity(64),
        wheel: BTreeSet::new(),
        sent: Vec::new(),
        delivered: Vec::new(),
        data_out: Vec::new(),
        under_load: false,
        gave_up: 0,
    }
}

impl Pair {
    fn new(seed: u64) -> Pair {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let ka = PrivateKey::generate(&mut rng);
        let kb = PrivateKey::generate(&mut rng);
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let a = side(&mut rng, ka, pb, A_ADDR, B_ADDR, A_IN, B_IN);
        let b = side(&mut rng, kb, pa, B_ADDR, A_ADDR, B_IN, A_IN);
        Pair { a, b, now: Timestamp::from_secs(1), rng, blackhole_a: false, blackhole_b: false }
    }

    fn side(&mut self, a: bool) -> (&mut Side, &mut Side) {
        if a {
            (&mut self.a, &mut self.b)
        } else {
            (&mut self.b, &mut self.a)
        }
    }

    /// Deliver datagrams and act on events until nothing moves.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for from_a in [true, false] {
                let now = self.now;
                let blackhole = if from_a { self.blackhole_a } else { self.blackhole_b };
                let rng = &mut self.rng;
                let (s, d) = if from_a { (&mut self.a, &mut self.b) } else { (&mut self.b, &mut self.a) };
                // Events first: they may produce transmits.
                let events: Vec<Event> = s.out.events.drain(..).collect();
                for e in events {
                    moved = true;
                    match e {
                        Event::HandshakeWanted(p) => {
                            let _ = s.dev.initiate(now, rng, p, &mut s.out);
                        }
                        Event::SessionReady(p) => {
                            let _ = s.dev.send_keepalive(now, p, &mut s.out);
                        }
                        Event::SessionConfirmed(_) => {}
                        Event::Wake { peer, at } => {
                            s.wheel.insert((at, peer));
                        }
                        Event::GiveUp(_) => s.gave_up += 1,
                    }
                }
                let mut tx: Vec<Vec<u8>> = s.data_out.drain(..).collect();
                for t in s.out.transmits.drain(..) {
                    assert_eq!(t.to, d.addr);
                    tx.push(t.payload().to_vec());
                }
                for msg in tx {
                    moved = true;
                    s.sent.push((now, msg[0], msg.len()));
                    if blackhole {
                        continue;
                    }
                    deliver(d, now, rng, s.addr, msg);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Advance virtual time to `t`, firing due timers on both sides in deadline order.
    fn advance_to(&mut self, t: Timestamp) {
        loop {
            self.pump();
            let next_a = self.a.wheel.iter().next().copied();
            let next_b = self.b.wheel.iter().next().copied();
            let (at, from_a) = match (next_a, next_b) {
                (Some(x), Some(y)) => {
                    if x.0 <= y.0 {
                        (x, true)
                    } else {
                        (y, false)
                    }
                }
                (Some(x), None) => (x, true),
                (None, Some(y)) => (y, false),
                (None, None) => break,
            };
            if at.0 > t {
                break;
            }
            self.now = self.now.max(at.0);
            let now = self.now;
            let rng = &mut self.rng;
            let (s, _) = if from_a { (&mut self.a, &mut self.b) } else { (&mut self.b, &mut self.a) };
            s.wheel.remove(&at);
            if let Some(next) = s.dev.poll_timers(now, rng, at.1, &mut s.out) {
                s.wheel.insert((next, at.1));
            }
        }
        self.now = self.now.max(t);
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        let t = self.now + d;
        self.advance_to(t);
    }

    /// Side `a`/`b` sends an inner packet of `len` bytes to the other.
    fn send(&mut self, from_a: bool, len: usize) -> Result<(), DropReason> {
        let now = self.now;
        let (s, _) = self.side(from_a);
        let (src, dst) = if from_a { (A_IN, B_IN) } else { (B_IN, A_IN) };
        let inner = ipv4_packet(src, dst, len);
        let mut buf = vec![0u8; 16 + inner.len() + 32];
        buf[16..16 + inner.len()].copy_from_slice(&inner);
        let r = s.dev.encapsulate(now, &mut buf, inner.len(), &mut s.out);
        if let Ok(e) = r {
            s.data_out.push(buf[..e.len].to_vec());
        }
        self.pump();
        r.map(|_| ())
    }

    fn sent_by(&self, a: bool, ty: u8) -> Vec<Timestamp> {
        let s = if a { &self.a } else { &self.b };
        s.sent.iter().filter(|x| x.1 == ty).map(|x| x.0).collect()
    }

    fn established(seed: u64) -> Pair {
        let mut p = Pair::new(seed);
        assert_eq!(p.send(true, 40), Err(DropReason::NoSession));
        p.pump();
        assert!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().is_some());
        assert!(p.b.dev.peer(p.b.peer).unwrap().current_local_index().is_some(), "responder confirmed by keepalive");
        p
    }
}

fn deliver(d: &mut Side, now: Timestamp, rng: &mut ChaCha20Rng, from: SocketAddr, mut msg: Vec<u8>) {
    if msg[0] == crate::messages::MESSAGE_DATA {
        if let Ok(x) = d.dev.decapsulate(now, from, &mut msg, &mut d.out) {
            if !x.is_keepalive() {
                d.delivered.push(msg[x.range].to_vec());
            }
        }
    } else {
        let _ = d.dev.receive_handshake(now, rng, from, &msg, d.under_load, &mut d.out);
    }
}

fn secs(t: Timestamp) -> f64 {
    t.as_nanos() as f64 / 1e9
}

#[test]
fn handshake_on_demand_then_data_both_ways_with_exact_counters() {
    let mut p = Pair::established(1);
    for len in [0usize, 1, 15, 16, 100, 1000] {
        p.send(true, len).unwrap();
        p.send(false, len).unwrap();
    }
    assert_eq!(p.a.delivered.len(), 6);
    assert_eq!(p.b.delivered.len(), 6);
    assert_eq!(p.b.delivered[2], ipv4_packet(A_IN, B_IN, 15));
    let (pa, pb) = (p.a.dev.peer(p.a.peer).unwrap(), p.b.dev.peer(p.b.peer).unwrap());
    assert_eq!(pa.tx_bytes(), pb.rx_bytes());
    assert_eq!(pb.tx_bytes(), pa.rx_bytes());
    // Every data message is padded to 16.
    assert!(p.a.sent.iter().filter(|s| s.1 == 4).all(|s| (s.2 - 32) % 16 == 0));
}

#[test]
fn keepalive_ten_seconds_after_receiving_data_if_nothing_sent() {
    let mut p = Pair::established(2);
    p.advance(Duration::from_secs(30));
    let t0 = p.now;
    p.send(true, 100).unwrap();
    let before = p.sent_by(false, 4).len();
    p.advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(p.sent_by(false, 4).len(), before, "no keepalive before 10 s");
    p.advance(Duration::from_millis(2));
    let ka = p.sent_by(false, 4);
    assert_eq!(ka.len(), before + 1);
    assert_eq!(ka[before] - t0, KEEPALIVE_TIMEOUT);
    // If B answers with data, no keepalive is sent.
    p.send(true, 100).unwrap();
    p.advance(Duration::from_secs(1));
    p.send(false, 100).unwrap();
    let n = p.sent_by(false, 4).len();
    p.advance(Duration::from_secs(11));
    assert_eq!(p.sent_by(false, 4).len(), n);
}

#[test]
fn new_handshake_after_fifteen_seconds_without_reply() {
    let mut p = Pair::established(3);
    p.advance(Duration::from_secs(20));
    p.blackhole_a = true; // B hears nothing from A, so never answers
    let t0 = p.now;
    let inits = p.sent_by(true, 1).len();
    p.send(true, 100).unwrap();
    p.advance(Duration::from_secs(14));
    assert_eq!(p.sent_by(true, 1).len(), inits);
    p.advance(Duration::from_secs(2));
    let i = p.sent_by(true, 1);
    assert_eq!(i.len(), inits + 1);
    let dt = i[inits] - t0;
    assert!(
        dt >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT && dt <= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX,
        "{dt:?}"
    );
}

#[test]
fn retransmits_every_five_seconds_with_jitter_then_gives_up_after_eighteen() {
    let mut p = Pair::new(4);
    p.blackhole_a = true;
    let _ = p.send(true, 10);
    p.advance(Duration::from_secs(200));
    let inits = p.sent_by(true, 1);
    // The kernel gives up once attempts exceed MAX_TIMER_HANDSHAKES: the first initiation and
    // 19 retries ("did not complete after 20 attempts, giving up").
    assert_eq!(inits.len() as u32, MAX_TIMER_HANDSHAKES + 2);
    for w in inits.windows(2) {
        let dt = w[1] - w[0];
        assert!(dt >= REKEY_TIMEOUT && dt <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX, "interval {dt:?}");
    }
    let jitters: BTreeSet<u64> = inits.windows(2).map(|w| (w[1] - w[0]).as_nanos() as u64).collect();
    assert!(jitters.len() > 5, "jitter varies");
    assert_eq!(p.a.gave_up, 1);
    assert!(secs(inits[19]) < 1.0 + 19.0 * 5.334);
}

#[test]
fn key_material_zeroed_after_540_seconds() {
    let mut p = Pair::established(5);
    let t0 = p.now;
    p.advance_to(t0 + Duration::from_secs(539));
    assert!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().is_some());
    p.advance_to(t0 + Duration::from_secs(541));
    assert!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().is_none());
    assert!(p.b.dev.peer(p.b.peer).unwrap().current_local_index().is_none());
    assert_eq!(p.a.dev.index.len(), 0, "indices removed with the keypairs");
}

#[test]
fn persistent_keepalive_on_schedule() {
    let mut p = Pair::established(6);
    let now = p.now;
    let send_now = p.a.dev.set_persistent_keepalive(p.a.peer, 25, now, &mut p.a.out).unwrap();
    assert!(send_now);
    p.a.dev.send_keepalive(now, p.a.peer, &mut p.a.out).unwrap();
    let t0 = p.now;
    let before = p.sent_by(true, 4).len();
    p.advance(Duration::from_secs(101));
    let ka: Vec<Timestamp> = p.sent_by(true, 4)[before..].to_vec();
    assert_eq!(ka.len(), 5, "{:?}", ka.iter().map(|t| secs(*t)).collect::<Vec<_>>());
    for (i, t) in ka.iter().enumerate().skip(1) {
        assert_eq!(*t - t0, Duration::from_secs(25 * i as u64));
    }
}

#[test]
fn initiator_rekeys_after_120_seconds_of_sending() {
    let mut p = Pair::established(7);
    let first = p.a.dev.peer(p.a.peer).unwrap().current_local_index().unwrap();
    let inits = p.sent_by(true, 1).len();
    // Keep traffic flowing both ways every 5 s for 130 s.
    for _ in 0..26 {
        p.send(true, 50).unwrap();
        p.send(false, 50).unwrap();
        p.advance(Duration::from_secs(5));
    }
    assert_eq!(p.sent_by(true, 1).len(), inits + 1, "exactly one rekey");
    assert_ne!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().unwrap(), first);
    assert_eq!(p.a.delivered.len(), 26);
    assert_eq!(p.b.delivered.len(), 26);
}

#[test]
fn initiator_that_only_receives_rekeys_through_its_keepalives() {
    // The kernel's send-side keep_key_fresh runs for keepalives too: an initiator that only
    // receives still sends a keepalive every 10 s, and the first one after 120 s rekeys.
    let mut p = Pair::established(8);
    let t0 = p.now;
    let inits = p.sent_by(true, 1).len();
    for _ in 0..34 {
        p.send(false, 50).unwrap();
        p.advance(Duration::from_secs(5));
    }
    let new = p.sent_by(true, 1);
    assert_eq!(new.len(), inits + 1, "exactly one rekey");
    let at = new[inits] - t0;
    assert!(at >= Duration::from_secs(120) && at <= Duration::from_secs(131), "{at:?}");
    assert_eq!(p.a.delivered.len(), 34, "nothing lost across the rekey");
}

#[test]
fn initiator_rekeys_once_on_receiving_with_a_165_second_old_keypair() {
    let mut p = Pair::established(16);
    let t0 = p.now;
    // Jump without running timers, so that A has sent nothing since the handshake.
    for (dt, want) in [(164u64, false), (166, true), (167, false)] {
        p.now = t0 + Duration::from_secs(dt);
        p.a.out.events.clear();
        let now = p.now;
        let inner = ipv4_packet(B_IN, A_IN, 30);
        let mut buf = vec![0u8; 16 + inner.len() + 32];
        buf[16..16 + inner.len()].copy_from_slice(&inner);
        let e = p.b.dev.encapsulate(now, &mut buf, inner.len(), &mut p.b.out).unwrap();
        p.a.dev.decapsulate(now, B_ADDR, &mut buf[..e.len], &mut p.a.out).unwrap();
        let wanted = p.a.out.events.contains(&Event::HandshakeWanted(p.a.peer));
        assert_eq!(wanted, want, "at {dt} s");
    }
}

#[test]
fn cookie_under_load_then_mac2_retry_accepted() {
    let mut p = Pair::new(9);
    p.b.under_load = true;
    let dh_b = p.b.out.stats.dh_operations;
    let _ = p.send(true, 10);
    // B answered with a cookie, without DH work.
    assert_eq!(p.b.out.stats.cookies_sent, 1);
    assert_eq!(p.b.out.stats.dh_operations, dh_b);
    assert_eq!(p.sent_by(false, 3).len(), 1);
    // A's retransmit after REKEY_TIMEOUT carries MAC2 and B, still under load, accepts it.
    p.advance(Duration::from_secs(6));
    assert_eq!(p.b.out.stats.responses_sent, 1);
    assert!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().is_some());
}

#[test]
fn wrong_mac1_is_dropped_without_dh_work() {
    let mut p = Pair::new(10);
    let now = p.now;
    p.a.dev.initiate(now, &mut p.rng, p.a.peer, &mut p.a.out).unwrap();
    let mut msg = p.a.out.transmits.pop().unwrap().payload().to_vec();
    msg[120] ^= 0x40; // inside mac1
    let r = p.b.dev.receive_handshake(now, &mut p.rng, A_ADDR, &msg, false, &mut p.b.out);
    assert_eq!(r, Err(DropReason::InvalidMac1));
    assert_eq!(p.b.out.stats.dh_operations, 0);
    assert_eq!(p.b.out.stats.mac1_valid, 0);
    // Corrupt the body instead: MAC1 now fails as well (it covers the body).
    msg[120] ^= 0x40;
    msg[50] ^= 1;
    assert_eq!(
        p.b.dev.receive_handshake(now, &mut p.rng, A_ADDR, &msg, false, &mut p.b.out),
        Err(DropReason::InvalidMac1)
    );
    assert_eq!(p.b.out.stats.dh_operations, 0);
}

#[test]
fn disallowed_source_and_replay_are_dropped() {
    let mut p = Pair::established(11);
    // A seals a packet whose inner source is not in A's allowed IPs at B.
    let inner = ipv4_packet(Ipv4Addr::new(10, 9, 9, 9), B_IN, 20);
    let _ = &mut p.a.inner;
    let mut buf = vec![0u8; 16 + inner.len() + 32];
    buf[16..16 + inner.len()].copy_from_slice(&inner);
    let now = p.now;
    let e = p.a.dev.encapsulate(now, &mut buf, inner.len(), &mut p.a.out).unwrap();
    let msg = buf[..e.len].to_vec();
    let r = p.b.dev.decapsulate(now, A_ADDR, &mut msg.clone(), &mut p.b.out);
    assert_eq!(r, Err(DropReason::DisallowedSource));
    // The same message again is a replay, dropped before the source check.
    let r = p.b.dev.decapsulate(now, A_ADDR, &mut msg.clone(), &mut p.b.out);
    assert_eq!(r, Err(DropReason::Replay));
    // A fresh message, tampered: authentication fails.
    buf[16..16 + inner.len()].copy_from_slice(&inner);
    let e = p.a.dev.encapsulate(now, &mut buf, inner.len(), &mut p.a.out).unwrap();
    let mut bad = buf[..e.len].to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(p.b.dev.decapsulate(now, A_ADDR, &mut bad, &mut p.b.out), Err(DropReason::DecryptFailed));
}

#[test]
fn endpoint_roams_on_authenticated_data_only() {
    let mut p = Pair::established(12);
    let moved: SocketAddr = "203.0.113.9:1111".parse().unwrap();
    let now = p.now;
    let inner = ipv4_packet(A_IN, B_IN, 20);
    let mut buf = vec![0u8; 16 + inner.len() + 32];
    buf[16..16 + inner.len()].copy_from_slice(&inner);
    let e = p.a.dev.encapsulate(now, &mut buf, inner.len(), &mut p.a.out).unwrap();
    // A forged (tampered) packet from elsewhere does not move the endpoint.
    let mut forged = buf[..e.len].to_vec();
    forged[20] ^= 1;
    let _ = p.b.dev.decapsulate(now, moved, &mut forged, &mut p.b.out);
    assert_eq!(p.b.dev.peer(p.b.peer).unwrap().endpoint(), Some(A_ADDR));
    let mut good = buf[..e.len].to_vec();
    p.b.dev.decapsulate(now, moved, &mut good, &mut p.b.out).unwrap();
    assert_eq!(p.b.dev.peer(p.b.peer).unwrap().endpoint(), Some(moved));
}

#[test]
fn cookie_reply_does_not_move_the_endpoint() {
    let mut p = Pair::new(13);
    p.b.under_load = true;
    let now = p.now;
    p.a.dev.initiate(now, &mut p.rng, p.a.peer, &mut p.a.out).unwrap();
    let init = p.a.out.transmits.pop().unwrap().payload().to_vec();
    p.b.dev.receive_handshake(now, &mut p.rng, A_ADDR, &init, true, &mut p.b.out).unwrap();
    let reply = p.b.out.transmits.pop().unwrap().payload().to_vec();
    let elsewhere: SocketAddr = "203.0.113.50:9".parse().unwrap();
    let r = p.a.dev.receive_handshake(now, &mut p.rng, elsewhere, &reply, false, &mut p.a.out);
    assert_eq!(r, Ok(HandshakeOutcome::CookieStored(p.a.peer)));
    assert_eq!(p.a.dev.peer(p.a.peer).unwrap().endpoint(), Some(B_ADDR));
}

#[test]
fn two_threads_drive_one_peer() {
    let mut p = Pair::established(14);
    let now = p.now;
    const N: usize = 2000;
    // Seal 2N packets A→B from two threads sharing A's device.
    let a = &p.a.dev;
    let msgs: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Output::with_capacity(8);
                    (0..N)
                        .map(|i| {
                            let inner = ipv4_packet(A_IN, B_IN, 8 + (t * N + i) % 64);
                            let mut buf = vec![0u8; 16 + inner.len() + 32];
                            buf[16..16 + inner.len()].copy_from_slice(&inner);
                            let e = a.encapsulate(now, &mut buf, inner.len(), &mut out).unwrap();
                            buf.truncate(e.len);
                            buf
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let counters: BTreeSet<u64> = msgs.iter().map(|m| u64::from_le_bytes(m[8..16].try_into().unwrap())).collect();
    assert_eq!(counters.len(), 2 * N, "every counter used once");
    // Open them on B from two threads, each thread also replaying the other's half: every
    // message is accepted exactly once.
    let b = &p.b.dev;
    let accepted: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let msgs = &msgs;
                s.spawn(move || {
                    let mut out = Output::with_capacity(8);
                    let mut ok = 0u64;
                    for (i, m) in msgs.iter().enumerate() {
                        let mine = i % 2 == t;
                        let _ = mine;
                        let mut m = m.clone();
                        if b.decapsulate(now, A_ADDR, &mut m, &mut out).is_ok() {
                            ok += 1;
                        }
                    }
                    assert_eq!(out.stats.aead_opened - ok, 0);
                    ok
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(accepted, 2 * N as u64);
    let pa = p.a.dev.peer(p.a.peer).unwrap();
    let pb = p.b.dev.peer(p.b.peer).unwrap();
    let sealed_bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    assert!(pa.tx_bytes() >= sealed_bytes);
    assert!(pb.rx_bytes() >= sealed_bytes);
    let _ = &mut p;
}

#[test]
fn removing_a_peer_removes_its_indices_and_routes() {
    let mut p = Pair::established(15);
    assert!(!p.a.dev.index.is_empty());
    p.a.dev.remove_peer(p.a.peer).unwrap();
    assert_eq!(p.a.dev.index.len(), 0);
    assert_eq!(p.a.dev.route(IpAddr::V4(B_IN)), None);
    assert_eq!(p.send(true, 10), Err(DropReason::NoRoute));
    assert_eq!(p.a.dev.remove_peer(p.a.peer), Err(ConfigError::NoSuchPeer));
}

#[test]
fn changing_the_private_key_forces_a_new_handshake() {
    let mut p = Pair::established(17);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    p.a.dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    p.a.out.events.clear();
    // The old session no longer seals: the packet is refused for staging, a handshake wanted.
    let now = p.now;
    let inner = ipv4_packet(A_IN, B_IN, 20);
    let mut buf = vec![0u8; 16 + inner.len() + 32];
    buf[16..16 + inner.len()].copy_from_slice(&inner);
    assert_eq!(p.a.dev.encapsulate(now, &mut buf, inner.len(), &mut p.a.out), Err(DropReason::NoSession));
    assert!(p.a.out.events.contains(&Event::HandshakeWanted(p.a.peer)));
}

/// Configuration does no X25519: adding peers none, a key change one (its public key),
/// however many peers there are.
#[test]
fn add_peer_and_set_private_key_do_no_diffie_hellman() {
    use crate::noise::x25519_ops;
    use rand_core::RngCore;
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let mut dev = Device::new(&mut rng, 0);
    let ops = x25519_ops();
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    assert_eq!(x25519_ops() - ops, 1, "the new public key");
    let ops = x25519_ops();
    for i in 0..2000u32 {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let id = dev.add_peer(&mut rng, key).unwrap();
        dev.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap();
        dev.set_preshared_key(id, crate::crypto::Secret([3; 32])).unwrap();
    }
    assert_eq!(x25519_ops() - ops, 0, "add_peer computed a DH");
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    dev.set_private_key(None);
    assert_eq!(x25519_ops() - ops, 1, "two key changes over 2000 peers: one public key");
    assert_eq!(dev.peer_count(), 2000);
}

/// After a key change the next handshake computes the static-static DH (once on each side) and
/// works; the handshake after it finds the DH cached.
#[test]
fn key_change_then_handshakes_compute_the_static_dh_once() {
    use crate::noise::x25519_ops;
    let mut p = Pair::established(23);
    let new = PrivateKey::generate(&mut p.rng);
    let new_public = new.public_key();
    let ops = x25519_ops();
    p.a.dev.set_private_key(Some(new));
    assert_eq!(x25519_ops() - ops, 1);
    // B learns A's new key (as wg would: the old peer removed, the new one added).
    p.b.dev.remove_peer(p.b.peer).unwrap();
    p.b.peer = p.b.dev.add_peer(&mut p.rng, new_public).unwrap();
    p.b.dev.set_endpoint(p.b.peer, A_ADDR).unwrap();
    p.b.dev.add_allowed_ip(p.b.peer, IpAddr::V4(A_IN), 32).unwrap();
    let old = p.a.dev.peer(p.a.peer).unwrap().current_local_index();
    // Past our own initiation rate limit (one per REKEY_TIMEOUT).
    p.advance(REKEY_TIMEOUT);

    let ops = x25519_ops();
    assert_eq!(p.send(true, 40), Err(DropReason::NoSession), "the old session does not seal");
    p.pump();
    let first = x25519_ops() - ops;
    let current = p.a.dev.peer(p.a.peer).unwrap().current_local_index();
    assert!(current.is_some() && current != old, "a new session");
    p.send(true, 100).unwrap();
    p.send(false, 100).unwrap();
    assert_eq!(p.b.delivered.last(), Some(&ipv4_packet(A_IN, B_IN, 100)));
    assert_eq!(p.a.delivered.last(), Some(&ipv4_packet(B_IN, A_IN, 100)));

    p.advance(REKEY_TIMEOUT + Duration::from_secs(1));
    let ops = x25519_ops();
    let now = p.now;
    p.a.dev.initiate(now, &mut p.rng, p.a.peer, &mut p.a.out).unwrap();
    p.pump();
    let second = x25519_ops() - ops;
    assert_ne!(p.a.dev.peer(p.a.peer).unwrap().current_local_index(), current, "rekeyed");
    // Each handshake: initiator e, es, (ss), ee, se; responder es, (ss), e, ee, se.
    assert_eq!((first, second), (10, 8), "static-static DH once per side after the key change");
}

/// A response to an initiation made with the old private key is dropped after a key change (its
/// MAC1 is keyed to the old public key; `noise` also refuses it by generation), and the stale
/// handshake's index goes with the next initiation.
#[test]
fn response_to_an_initiation_of_the_old_key_is_dropped() {
    let mut p = Pair::new(25);
    let now = p.now;
    p.a.dev.initiate(now, &mut p.rng, p.a.peer, &mut p.a.out).unwrap();
    let init = p.a.out.transmits.pop().unwrap();
    p.b.dev.receive_handshake(now, &mut p.rng, A_ADDR, init.payload(), false, &mut p.b.out).unwrap();
    let resp = p.b.out.transmits.pop().unwrap();
    p.a.dev.set_private_key(Some(PrivateKey::generate(&mut p.rng)));
    let r = p.a.dev.receive_handshake(now, &mut p.rng, B_ADDR, resp.payload(), false, &mut p.a.out);
    assert_eq!(r, Err(DropReason::InvalidMac1));
    assert!(p.a.dev.peer(p.a.peer).unwrap().current_local_index().is_none());
    // The next initiation replaces the stale handshake's index.
    assert_eq!(p.a.dev.index.len(), 1);
    let later = now + REKEY_TIMEOUT;
    p.a.dev.initiate(later, &mut p.rng, p.a.peer, &mut p.a.out).unwrap();
    assert_eq!(p.a.dev.index.len(), 1);
}

/// Every reason is in `DropReason::ALL`: the match below lists them all without a wildcard, so
/// a new reason stops it compiling until it is added here, last in the enum and in `ALL`.
#[test]
fn every_drop_reason_has_a_counter() {
    let listed = |r: DropReason| match r {
        DropReason::Malformed
        | DropReason::InvalidMac1
        | DropReason::RateLimited
        | DropReason::HandshakeFailed
        | DropReason::UnknownPeer
        | DropReason::InitiationReplay
        | DropReason::UnknownIndex
        | DropReason::InvalidCookie
        | DropReason::DecryptFailed
        | DropReason::Replay
        | DropReason::KeypairExpired
        | DropReason::InvalidInner
        | DropReason::DisallowedSource
        | DropReason::NoRoute
        | DropReason::NoEndpoint
        | DropReason::NoSession
        | DropReason::BufferTooSmall
        | DropReason::NoPrivateKey
        | DropReason::InitiationRateLimited => r as usize,
    };
    let mut stats = Stats::default();
    for (i, r) in DropReason::ALL.into_iter().enumerate() {
        assert_eq!(listed(r), i);
        stats.drop(r);
        assert_eq!(stats.drops_for(r), 1);
    }
    assert_eq!(stats.drops.iter().sum::<u64>(), DropReason::COUNT as u64);
}

/// The size of every per-peer structure (`cargo test --release -p wgpmd-proto --lib
/// per_peer_sizes -- --nocapture` prints the table in docs/PERFORMANCE.md), with bounds so
/// that growth is a decision.
#[test]
fn per_peer_sizes() {
    use core::mem::size_of;
    let rows: [(&str, usize, usize); 12] = [
        ("Peer", size_of::<Peer>(), 512),
        ("  HandshakeState (in Peer, behind its Mutex)", size_of::<peer::HandshakeState>(), 256),
        ("    noise::Handshake", size_of::<crate::noise::Handshake>(), 192),
        ("  Keypairs (in Peer)", size_of::<crate::session::Keypairs>(), 32),
        ("  PeerTimers (in Peer)", size_of::<crate::timers::PeerTimers>(), 96),
        ("  EndpointCell (in Peer)", size_of::<endpoint::EndpointCell>(), 40),
        ("Arc<Peer> allocation", size_of::<Peer>() + 16, 528),
        ("Keypair", size_of::<crate::session::Keypair>(), 1152),
        ("  ReplayWindow (in Keypair)", size_of::<crate::session::ReplayWindow>(), 1032),
        ("Arc<Keypair> allocation (64-byte aligned)", size_of::<crate::session::Keypair>() + 64, 1216),
        ("CookieJar (boxed, from the first handshake message)", size_of::<crate::cookie::CookieJar>(), 48),
        ("index entry (u32, IndexEntry)", size_of::<(u32, IndexEntry)>(), 24),
    ];
    println!("| structure | bytes |\n|---|---:|");
    for (name, size, bound) in rows {
        println!("| {name} | {size} |");
        assert!(size <= bound, "{name}: {size} > {bound}");
    }
    println!("| handshake in flight (boxed inside noise::Handshake) | {} |", crate::noise::flight_size());
}

/// `route_batch` answers exactly what `route` answers for each address, in place: IPv4 (looked
/// up together), IPv6, no address, unrouted ones, and bursts longer than a chunk and ragged.
#[test]
fn route_batch_agrees_with_route() {
    use rand::Rng;
    use rand_core::RngCore;
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let mut dev = Device::new(&mut rng, 0);
    let mut ids = Vec::new();
    for i in 0..300u32 {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let id = dev.add_peer(&mut rng, key).unwrap();
        dev.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap();
        dev.add_allowed_ip(id, IpAddr::V6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))), 128).unwrap();
        ids.push(id);
    }
    // A covering prefix for part of the range, so longest-prefix matching matters too.
    dev.add_allowed_ip(ids[7], IpAddr::V4(Ipv4Addr::new(10, 0, 1, 0)), 24).unwrap();
    for len in [0usize, 1, 5, 32, 33, 70] {
        let addrs: Vec<Option<IpAddr>> = (0..len)
            .map(|_| match rng.gen_range(0..4) {
                0 => None,
                1 => Some(IpAddr::V6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | rng.gen_range(0..400u128)))),
                _ => Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + rng.gen_range(0..600u32)))),
            })
            .collect();
        let mut out = vec![Some(u32::MAX); len];
        dev.route_batch(&addrs, &mut out);
        let want: Vec<Option<PeerId>> = addrs.iter().map(|a| a.and_then(|a| dev.route(a))).collect();
        assert_eq!(out, want, "burst of {len}");
        assert!(len < 20 || want.iter().flatten().count() > len / 4, "the burst routes something");
        assert!(len < 20 || want.iter().any(Option::is_none), "and leaves something unrouted");
    }
}
