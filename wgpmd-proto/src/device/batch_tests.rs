//! [`Device::receive_screened_batch_on`] (the responder's X25519 of a batch of initiations in
//! lanes) against the one-at-a-time path (`None`: [`Device::receive_screened`] per job), on two
//! responders built from one seed: the same results, counters and X25519 count, with failures
//! inside the batch (unknown peer, replayed timestamp, low-order ephemeral, corrupted static,
//! under load without mac2); and the initiators (our devices) complete every handshake the
//! batch answered, with data passing both ways on each session.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_x25519::Backend;

use super::tests::ipv4_packet;
use super::*;
use crate::crypto::PrivateKey;
use crate::noise::x25519_ops;

const WALL: u64 = 1_700_000_000_000_000_000;
const R_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const R_IN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    /// From a key the responder does not know.
    UnknownPeer,
    /// The message of the job before it again.
    Replay,
    /// Its ephemeral replaced by a point of small order (u = 1).
    LowOrder,
    /// A bit of its encrypted static flipped.
    CorruptStatic,
    /// Not screened under load: held to a (missing) mac2 when processed under load.
    NoCookie,
    /// A response answering no handshake of ours (processed one at a time, in the batch).
    StrayResponse,
    /// An initiation with random bytes in part of its ephemeral, static or timestamp fields
    /// (the byte range and the bytes from the seed; at least one byte changed): never answered.
    Garbled,
}

fn i_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8 + 1)), 40000 + i as u16)
}

fn i_in(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, i as u8 + 1)
}

/// An initiator: one of our devices with the responder as its only peer.
struct Initiator {
    dev: Device,
    peer: PeerId,
}

/// The responder, from `seed`, knowing the initiators whose `known` flag is set.
fn responder(seed: u64, keys: &[([u8; 32], bool)]) -> (Device, Vec<Option<PeerId>>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut dev = Device::new(&mut rng, WALL);
    dev.set_private_key(Some(PrivateKey::from_bytes([0x42; 32])));
    let ids = keys
        .iter()
        .enumerate()
        .map(|(i, &(k, known))| {
            known.then(|| {
                let id = dev.add_peer(&mut rng, k).unwrap();
                dev.add_allowed_ip(id, IpAddr::V4(i_in(i)), 32).unwrap();
                id
            })
        })
        .collect();
    (dev, ids, rng)
}

struct Run {
    results: Vec<Result<HandshakeOutcome, DropReason>>,
    out: Output,
    ops: u64,
    dev: Device,
}

/// One batch of `kinds.len()` initiations answered by a responder on `lanes` (and by one on
/// the one-at-a-time path); returns both runs and the initiators.
fn batch(seed: u64, kinds: &[Kind], under_load: bool, lanes: Backend) -> (Run, Run, Vec<Initiator>, Vec<Vec<u8>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let r_public = PrivateKey::from_bytes([0x42; 32]).public_key();
    let now = Timestamp::from_secs(10);
    let mut inits: Vec<Initiator> = Vec::new();
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        let mut dev = Device::new(&mut rng, WALL + i as u64 * 1000);
        dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
        let peer = dev.add_peer(&mut rng, r_public).unwrap();
        dev.set_endpoint(peer, R_ADDR).unwrap();
        dev.add_allowed_ip(peer, IpAddr::V4(R_IN), 32).unwrap();
        let mut out = Output::with_capacity(4);
        dev.initiate(now, &mut rng, peer, &mut out).unwrap();
        let mut m = out.transmits[0].payload().to_vec();
        match kind {
            Kind::Replay => m = msgs[i - 1].clone(),
            Kind::LowOrder => {
                m[8..40].fill(0);
                m[8] = 1;
            }
            Kind::CorruptStatic => m[40] ^= 0x20,
            Kind::StrayResponse => {
                m = vec![0u8; crate::messages::RESPONSE_LEN];
                m[0] = 2;
                rng.fill_bytes(&mut m[4..]);
            }
            Kind::Garbled => {
                let start = 8 + (rng.next_u32() as usize % 108);
                let end = (start + 1 + rng.next_u32() as usize % 32).min(116);
                let before = m.clone();
                rng.fill_bytes(&mut m[start..end]);
                if m == before {
                    m[start] ^= 1;
                }
            }
            _ => {}
        }
        msgs.push(m);
        inits.push(Initiator { dev, peer });
    }
    let keys: Vec<([u8; 32], bool)> =
        inits.iter().zip(kinds).map(|(s, &k)| (s.dev.public_key().unwrap(), k != Kind::UnknownPeer)).collect();
    let jobs: Vec<(SocketAddr, &[u8], bool)> = msgs
        .iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (m, &k))| {
            let src = if k == Kind::Replay { i_addr(i - 1) } else { i_addr(i) };
            (src, &m[..], under_load && k != Kind::NoCookie)
        })
        .collect();
    let run = |lanes: Option<Backend>| {
        let (dev, _, mut rng) = responder(seed, &keys);
        let mut out = Output::with_capacity(64);
        let mut results = Vec::new();
        let ops = x25519_ops();
        dev.receive_screened_batch_on(lanes, now, &mut rng, &jobs, under_load, &mut out, &mut results);
        Run { results, out, ops: x25519_ops() - ops, dev }
    };
    let many = run(Some(lanes));
    let one = run(None);
    (many, one, inits, msgs)
}

/// What the one-at-a-time path gives each kind.
fn expected(kind: Kind, under_load: bool) -> Result<(), DropReason> {
    match kind {
        Kind::Valid => Ok(()),
        Kind::NoCookie if !under_load => Ok(()),
        Kind::NoCookie => Err(DropReason::Malformed), // stands for CookieSent below
        Kind::UnknownPeer => Err(DropReason::UnknownPeer),
        Kind::Replay => Err(DropReason::InitiationReplay),
        Kind::LowOrder | Kind::CorruptStatic => Err(DropReason::HandshakeFailed),
        Kind::StrayResponse => Err(DropReason::UnknownIndex),
        // A failure, whichever the one-at-a-time path reports (compared, not predicted).
        Kind::Garbled => Err(DropReason::Malformed),
    }
}

/// Check a batch against the one-at-a-time path and against the kinds, then complete the
/// handshakes it answered and pass data both ways on each. Returns the X25519 operations of
/// the batch and of the one-at-a-time run.
fn check(seed: u64, kinds: &[Kind], under_load: bool, lanes: Backend) -> (u64, u64) {
    let (many, one, mut inits, _) = batch(seed, kinds, under_load, lanes);
    let ctx = format!("{lanes:?} {kinds:?} under_load={under_load}");
    assert_eq!(many.results, one.results, "{ctx}");
    assert_eq!(many.out.stats, one.out.stats, "{ctx}");
    assert_eq!(many.out.transmits.len(), one.out.transmits.len(), "{ctx}");
    assert_eq!(many.out.events.len(), one.out.events.len(), "{ctx}");
    if kinds.iter().all(|&k| k == Kind::Valid) {
        // es, ss (first handshake), e, ee, se per initiation, lanes or not.
        assert_eq!((many.ops, one.ops), (5 * kinds.len() as u64, 5 * kinds.len() as u64), "{ctx}");
    }
    let now = Timestamp::from_secs(10);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for (i, (&kind, r)) in kinds.iter().zip(&many.results).enumerate() {
        if kind == Kind::Garbled && r.is_err() {
            continue;
        }
        match (expected(kind, under_load), r) {
            (Ok(()), Ok(HandshakeOutcome::Responded(_))) => {}
            (Err(DropReason::Malformed), Ok(HandshakeOutcome::CookieSent)) => continue,
            (Err(e), Err(got)) if e == *got => continue,
            (e, got) => panic!("{ctx}: job {i}: expected {e:?}, got {got:?}"),
        }
        let Ok(HandshakeOutcome::Responded(rid)) = *r else { unreachable!() };
        // The initiator consumes its response.
        let resp = many.out.transmits.iter().find(|t| t.to == i_addr(i) && t.peer == Some(rid)).expect("a response");
        let s = &mut inits[i];
        let mut out = Output::with_capacity(8);
        let got = s.dev.receive_handshake(now, &mut rng, R_ADDR, resp.payload(), false, &mut out);
        assert_eq!(got, Ok(HandshakeOutcome::Completed(s.peer)), "{ctx}: job {i}");
        // Data from the initiator to the responder (which confirms the session), and back.
        let pkt = ipv4_packet(i_in(i), R_IN, 40 + i);
        let mut buf = vec![0u8; 16 + pkt.len() + 32];
        buf[16..16 + pkt.len()].copy_from_slice(&pkt);
        let e = s.dev.encapsulate(now, &mut buf, pkt.len(), &mut out).unwrap();
        let mut rout = Output::with_capacity(8);
        let d = many.dev.decapsulate(now, i_addr(i), &mut buf[..e.len], &mut rout).unwrap();
        assert_eq!((d.peer, &buf[d.range.clone()]), (rid, &pkt[..]), "{ctx}: job {i}");
        let back = ipv4_packet(R_IN, i_in(i), 30 + i);
        let mut buf = vec![0u8; 16 + back.len() + 32];
        buf[16..16 + back.len()].copy_from_slice(&back);
        let e = many.dev.encapsulate(now, &mut buf, back.len(), &mut rout).unwrap();
        let d = s.dev.decapsulate(now, R_ADDR, &mut buf[..e.len], &mut out).unwrap();
        assert_eq!(&buf[d.range.clone()], &back[..], "{ctx}: job {i}");
    }
    (many.ops, one.ops)
}

/// The backends the batch is forced onto: the portable one (the batch logic on any CPU) and
/// the IFMA lanes where this CPU has them.
fn backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.is_supported()).collect()
}

#[test]
fn batched_initiations_complete_for_two_to_nine() {
    for lanes in backends() {
        for n in 2..=9usize {
            check(n as u64, &vec![Kind::Valid; n], false, lanes);
        }
    }
}

#[test]
fn failures_inside_a_batch_fail_as_one_at_a_time_and_the_rest_succeed() {
    const MIX: [Kind; 9] = [
        Kind::Valid,
        Kind::UnknownPeer,
        Kind::Valid,
        Kind::LowOrder,
        Kind::Valid,
        Kind::Replay,
        Kind::CorruptStatic,
        Kind::Valid,
        Kind::NoCookie,
    ];
    const MIX2: [Kind; 3] = [Kind::StrayResponse, Kind::Valid, Kind::Valid];
    for lanes in backends() {
        for n in 2..=9usize {
            for under_load in [false, true] {
                // Rotate the mix so that each kind sits at several positions.
                let mut kinds: Vec<Kind> = (0..n).map(|i| MIX[(i + n) % MIX.len()]).collect();
                for i in 0..n {
                    if kinds[i] == Kind::Replay && (i == 0 || kinds[i - 1] != Kind::Valid) {
                        kinds[i] = Kind::Valid;
                    }
                }
                check(100 + n as u64, &kinds, under_load, lanes);
                // A response among the initiations.
                let mut kinds: Vec<Kind> = (0..n).map(|i| MIX2[(i + n) % MIX2.len()]).collect();
                kinds[n - 1] = Kind::Valid;
                check(200 + n as u64, &kinds, under_load, lanes);
            }
        }
    }
}

/// One initiation in the batch goes the one-at-a-time way (a lane call for one initiation
/// costs more than its DHs one by one): an unknown peer then costs es alone, where a batch
/// would have computed its ephemeral, ee and se too.
#[test]
fn a_single_initiation_in_the_batch_is_answered_one_at_a_time() {
    for lanes in backends() {
        assert_eq!(check(7, &[Kind::Valid], false, lanes), (5, 5));
        assert_eq!(check(8, &[Kind::StrayResponse, Kind::UnknownPeer], false, lanes), (1, 1));
        // Two initiations: batched, the unknown peer's lanes spent anyway (es, e, ee, se for
        // each; ss for the known one).
        assert_eq!(check(9, &[Kind::UnknownPeer, Kind::Valid], false, lanes), (9, 6));
    }
}

/// Random batches of 2 to 8 initiations with random bytes in random fields mixed with valid
/// ones: the batch decides exactly as the one-at-a-time path, and every handshake it answers
/// with an intact initiation completes.
#[test]
fn garbled_initiations_in_random_batches_decide_as_one_at_a_time() {
    let mut rng = ChaCha20Rng::seed_from_u64(4242);
    for lanes in backends() {
        for round in 0..24u64 {
            let n = 2 + (rng.next_u32() as usize % 7);
            let kinds: Vec<Kind> =
                (0..n).map(|_| if rng.next_u32() % 2 == 0 { Kind::Garbled } else { Kind::Valid }).collect();
            check(1000 + round, &kinds, round % 3 == 0, lanes);
        }
    }
}

/// Jobs take effect in job order: a response queued after an initiation from the same peer is
/// processed after it, on every path. Device A initiated to B; B answered it and initiated in
/// turn; A's queue holds C's initiation and B's (two: a lane batch), then B's response. One at a time, the initiation
/// replaces A's handshake in flight (its index is removed), so the response finds no handshake;
/// the batch path must decide the same (before, it processed the response first and completed
/// the older handshake as well).
#[test]
fn a_response_after_its_peers_initiation_takes_effect_in_job_order() {
    let mut lanes: Vec<Option<Backend>> = vec![None];
    lanes.extend(Backend::ALL.into_iter().filter(|b| b.is_supported()).map(Some));
    let runs: Vec<(Vec<Result<HandshakeOutcome, DropReason>>, Stats)> = lanes
        .iter()
        .map(|&lanes| {
            let mut rng = ChaCha20Rng::seed_from_u64(31);
            let (ka, kb, kc) =
                (PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng));
            let (pa, pb, pc) = (ka.public_key(), kb.public_key(), kc.public_key());
            let (a_addr, b_addr, c_addr) = (i_addr(0), i_addr(1), i_addr(2));
            let mut a = Device::new(&mut rng, WALL);
            a.set_private_key(Some(ka));
            let a_peer = a.add_peer(&mut rng, pb).unwrap();
            a.set_endpoint(a_peer, b_addr).unwrap();
            a.add_peer(&mut rng, pc).unwrap();
            let mut c = Device::new(&mut rng, WALL + 2000);
            c.set_private_key(Some(kc));
            let c_peer = c.add_peer(&mut rng, pa).unwrap();
            c.set_endpoint(c_peer, a_addr).unwrap();
            let mut b = Device::new(&mut rng, WALL + 1000);
            b.set_private_key(Some(kb));
            let b_peer = b.add_peer(&mut rng, pa).unwrap();
            b.set_endpoint(b_peer, a_addr).unwrap();
            let now = Timestamp::from_secs(10);
            let mut out = Output::with_capacity(4);
            a.initiate(now, &mut rng, a_peer, &mut out).unwrap();
            let init_a = out.transmits.pop().unwrap().payload().to_vec();
            let mut out = Output::with_capacity(4);
            let r = b.receive_handshake(now, &mut rng, a_addr, &init_a, false, &mut out);
            assert!(matches!(r, Ok(HandshakeOutcome::Responded(_))), "{r:?}");
            let resp_b = out.transmits.pop().unwrap().payload().to_vec();
            let later = Timestamp::from_secs(16);
            let mut out = Output::with_capacity(4);
            b.initiate(later, &mut rng, b_peer, &mut out).unwrap();
            let init_b = out.transmits.pop().unwrap().payload().to_vec();
            let mut out = Output::with_capacity(4);
            c.initiate(later, &mut rng, c_peer, &mut out).unwrap();
            let init_c = out.transmits.pop().unwrap().payload().to_vec();
            let jobs = [(c_addr, &init_c[..], false), (b_addr, &init_b[..], false), (b_addr, &resp_b[..], false)];
            let mut out = Output::with_capacity(8);
            let mut results = Vec::new();
            a.receive_screened_batch_on(lanes, later, &mut rng, &jobs, false, &mut out, &mut results);
            (results, out.stats.clone())
        })
        .collect();
    assert!(
        matches!(runs[0].0[..2], [Ok(HandshakeOutcome::Responded(_)), Ok(HandshakeOutcome::Responded(_))]),
        "{:?}",
        runs[0].0
    );
    assert!(runs[0].0[2].is_err(), "one at a time B's initiation replaced the handshake: {:?}", runs[0].0);
    for (l, r) in lanes.iter().zip(&runs).skip(1) {
        assert_eq!(r.0, runs[0].0, "{l:?}: results");
        assert_eq!(r.1, runs[0].1, "{l:?}: counters");
    }
}
