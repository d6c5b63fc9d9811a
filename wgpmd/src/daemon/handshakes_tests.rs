//! The handshake stage on real messages: a concentrator `Device`, a peer it knows and a
//! stranger it does not, each a `Device` of its own making real initiations.

use std::net::SocketAddr;
use std::sync::OnceLock;

use nic_backends::buffer::{Buffer, Pool, HEADROOM};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::{data_backlog, HsDrop, Load, Share, Stage, BUDGET, SHARE_DIV};
use crate::daemon::rng::CoreRng;
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{Device, HandshakeOutcome, Output, PeerId};
use wgpmd_proto::messages::UNDER_LOAD_QUEUE_DEPTH;
use wgpmd_proto::time::Timestamp;

const CONC: &str = "192.0.2.1:51820";
const PEER: &str = "198.51.100.7:51820";
const STRANGER: &str = "203.0.113.9:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Timestamp {
    Timestamp::from_secs(n)
}

/// `msg` in a buffer, as the worker hands a received message to the stage (trimmed to it).
fn buf(msg: &[u8]) -> Buffer {
    static POOL: OnceLock<Pool> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool::new("handshakes-tests", 4096).unwrap());
    let mut b = pool.alloc().expect("test pool not empty");
    b.append(42).unwrap();
    b.extend_from_slice(msg).unwrap();
    b.trim_front(42).unwrap();
    b
}

/// An initiator (a `Device` with the concentrator as its only peer) and its clock.
struct Initiator {
    dev: Device,
    id: PeerId,
    t: u64,
    rng: ChaCha20Rng,
}

impl Initiator {
    fn new(seed: u64, key: PrivateKey, conc: [u8; 32]) -> Initiator {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut dev = Device::new(&mut rng, 1_700_000_000_000_000_000);
        dev.set_private_key(Some(key));
        let id = dev.add_peer(&mut rng, conc).unwrap();
        dev.set_endpoint(id, addr(CONC)).unwrap();
        Initiator { dev, id, t: 10, rng }
    }

    /// A new initiation (6 s of its own clock after the last: past its own rate limit).
    fn initiation(&mut self) -> Vec<u8> {
        self.t += 6;
        let mut out = Output::with_capacity(2);
        self.dev.initiate(secs(self.t), &mut self.rng, self.id, &mut out).unwrap();
        let m = out.transmits[0].payload().to_vec();
        assert_eq!((m.len(), m[0]), (148, 1));
        m
    }

    fn receive(&mut self, msg: &[u8]) -> Option<HandshakeOutcome> {
        let mut out = Output::with_capacity(2);
        self.dev.receive_handshake(secs(self.t), &mut self.rng, addr(CONC), msg, false, &mut out).ok()
    }
}

struct Setup {
    conc: Device,
    peer: Initiator,
    stranger: Initiator,
    stage: Stage,
    /// Two workers' gauges: the stage is worker 0, worker 1 stands for the others.
    load: Load,
    out: Output,
}

fn setup(capacity: usize) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let conc_key = PrivateKey::generate(&mut rng);
    let peer_key = PrivateKey::generate(&mut rng);
    let conc_pub = conc_key.public_key();
    let mut conc = Device::new(&mut rng, 1_700_000_000_000_000_000);
    conc.set_private_key(Some(conc_key));
    conc.add_peer(&mut rng, peer_key.public_key()).unwrap();
    let peer = Initiator::new(2, peer_key, conc_pub);
    let stranger = Initiator::new(3, PrivateKey::generate(&mut rng), conc_pub);
    let stage = Stage::new(0, capacity, CoreRng::from_os(secs(1)).unwrap());
    Setup { conc, peer, stranger, stage, load: Load::new(2), out: Output::with_capacity(8) }
}

impl Setup {
    fn arrive(&mut self, now: u64, src: &str, msg: &[u8]) {
        self.stage.arrive(&self.conc, &self.load, secs(now), addr(src), buf(msg), &mut self.out);
        self.stage.screen_arrivals(&self.conc, &self.load, secs(now), &mut self.out);
    }
    fn process(&mut self, now: u64, budget: usize) -> usize {
        self.stage.process(&self.conc, &self.load, secs(now), budget, &mut self.out).0
    }
    fn dropped(&self, r: HsDrop) -> u64 {
        self.stage.c.dropped[r as usize]
    }
    /// Put the device under load: the other worker's queue holds the under-load depth.
    fn overload(&mut self, now: u64) {
        self.load.set(1, UNDER_LOAD_QUEUE_DEPTH);
        assert!(self.load.under_load(&self.conc, secs(now)));
    }
}

fn xorshift(x: &mut u32) -> u8 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x as u8
}

/// `len` random bytes behind the header word `header`.
fn junk(header: [u8; 4], len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    let mut m: Vec<u8> = (0..len).map(|_| xorshift(&mut x)).collect();
    let h = header.len().min(len);
    m[..h].copy_from_slice(&header[..h]);
    m
}

#[test]
fn each_junk_class_is_dropped_with_its_counter_and_costs_no_queue_slot() {
    let mut s = setup(64);
    let valid = s.stranger.initiation();
    let mut flipped_body = valid.clone();
    flipped_body[40] ^= 0x10; // in the encrypted static: mac1 no longer matches
    let mut flipped_mac1 = valid.clone();
    flipped_mac1[120] ^= 0x01;
    let mut reserved = valid.clone();
    reserved[2] = 1;
    let mut long_init = valid.clone();
    long_init.push(0);
    let cases: Vec<(&str, Vec<u8>, HsDrop)> = vec![
        ("unknown type 7", junk([7, 0, 0, 0], 148, 1), HsDrop::BadType),
        ("type 0", junk([0, 0, 0, 0], 92, 2), HsDrop::BadType),
        ("type 255", junk([255, 0, 0, 0], 64, 3), HsDrop::BadType),
        ("valid initiation, reserved byte set", reserved, HsDrop::BadType),
        ("3 bytes", vec![1, 0, 0], HsDrop::BadLength),
        ("empty", vec![], HsDrop::BadLength),
        ("initiation truncated", valid[..147].to_vec(), HsDrop::BadLength),
        ("initiation extended", long_init, HsDrop::BadLength),
        ("response 91", junk([2, 0, 0, 0], 91, 4), HsDrop::BadLength),
        ("response 93", junk([2, 0, 0, 0], 93, 5), HsDrop::BadLength),
        ("cookie reply 63", junk([3, 0, 0, 0], 63, 6), HsDrop::BadLength),
        ("cookie reply 148", junk([3, 0, 0, 0], 148, 7), HsDrop::BadLength),
        ("random initiation body", junk([1, 0, 0, 0], 148, 8), HsDrop::BadMac1),
        ("random response body", junk([2, 0, 0, 0], 92, 9), HsDrop::BadMac1),
        ("valid initiation, body bit flipped", flipped_body, HsDrop::BadMac1),
        ("valid initiation, mac1 bit flipped", flipped_mac1, HsDrop::BadMac1),
        ("random cookie reply", junk([3, 0, 0, 0], 64, 10), HsDrop::BadCookieReply),
    ];
    for (what, msg, reason) in cases {
        let before = s.stage.c.clone();
        s.arrive(20, STRANGER, &msg);
        let mut want = before.clone();
        want.dropped[reason as usize] += 1;
        assert_eq!(s.stage.c, want, "{what}: counted as {reason:?} and nothing else");
        assert_eq!(s.stage.len(), 0, "{what}: queued");
        assert_eq!(s.load.depth(0), 0, "{what}");
    }
    assert_eq!(s.out.stats.dh_operations, 0, "junk cost a DH");
    assert_eq!(s.out.stats.mac1_valid, 0);
    assert!(s.out.transmits.is_empty(), "junk was answered: {:?}", s.out.transmits);
    assert_eq!(s.process(21, BUDGET), 0);
}

#[test]
fn valid_mac1_initiations_are_queued_then_processed_within_the_budget() {
    let mut s = setup(64);
    // A stranger's initiation has a valid mac1: it is queued, with no DH yet...
    for _ in 0..BUDGET + 3 {
        let m = s.stranger.initiation();
        s.arrive(20, STRANGER, &m);
    }
    // ...and so has a valid one whose mac2 (not checked unless under load) was changed.
    let mut m = s.stranger.initiation();
    m[140] ^= 0x80;
    s.arrive(20, STRANGER, &m);
    let queued = BUDGET as u64 + 4;
    assert_eq!((s.stage.c.queued, s.stage.len(), s.load.depth(0)), (queued, queued as usize, queued as usize));
    assert_eq!(s.out.stats.dh_operations, 0, "DH work before the queue");
    assert_eq!(s.out.stats.mac1_valid, queued);
    // One budget per call.
    assert_eq!(s.process(21, BUDGET), BUDGET);
    assert_eq!((s.stage.len(), s.load.depth(0)), (4, 4));
    assert_eq!(s.process(21, BUDGET), 4);
    assert_eq!(s.load.depth(0), 0);
    // Each cost the DH that finds the sender unknown.
    assert_eq!((s.stage.c.processed, s.stage.c.failed), (queued, queued));
    assert_eq!(s.out.stats.dh_operations, queued);
    assert!(s.out.transmits.is_empty());

    // The peer's initiation: queued, processed, answered with a response it accepts.
    let m = s.peer.initiation();
    s.arrive(30, PEER, &m);
    assert_eq!(s.process(30, BUDGET), 1);
    assert_eq!(s.out.transmits.len(), 1);
    let resp = s.out.transmits[0].payload().to_vec();
    assert_eq!((resp.len(), resp[0], s.out.transmits[0].to), (92, 2, addr(PEER)));
    assert!(matches!(s.peer.receive(&resp), Some(HandshakeOutcome::Completed(_))));
    assert_eq!((s.stage.c.processed, s.stage.c.failed), (queued + 1, queued));
    assert_eq!(s.stage.c.dropped, [0; HsDrop::COUNT]);
}

#[test]
fn a_full_queue_drops_and_counts() {
    let mut s = setup(4);
    for _ in 0..6 {
        let m = s.stranger.initiation();
        s.arrive(20, STRANGER, &m);
    }
    assert_eq!((s.stage.c.queued, s.dropped(HsDrop::QueueFull), s.stage.len()), (4, 2, 4));
}

#[test]
fn under_load_without_mac2_a_cookie_reply_and_with_it_a_response() {
    let mut s = setup(64);
    s.overload(20);
    let first = s.peer.initiation();
    s.arrive(20, PEER, &first);
    // Not queued, no DH: a cookie reply to the sender.
    assert_eq!((s.stage.len(), s.out.stats.dh_operations), (0, 0));
    assert_eq!((s.dropped(HsDrop::BadMac2), s.out.stats.cookies_sent), (1, 1));
    assert_eq!(s.out.transmits.len(), 1);
    let reply = s.out.transmits.remove(0);
    assert_eq!((reply.payload().len(), reply.payload()[0], reply.to), (64, 3, addr(PEER)));
    // The peer takes the cookie; its retry carries mac2 and is admitted and answered.
    assert!(matches!(s.peer.receive(reply.payload()), Some(HandshakeOutcome::CookieStored(_))));
    let retry = s.peer.initiation();
    assert_ne!(retry[132..148], [0u8; 16], "the retry has no mac2");
    s.arrive(20, PEER, &retry);
    assert_eq!(s.stage.len(), 1);
    assert_eq!(s.process(20, BUDGET), 1);
    let resp = s.out.transmits.remove(0);
    assert_eq!((resp.payload().len(), resp.payload()[0]), (92, 2));
    assert!(matches!(s.peer.receive(resp.payload()), Some(HandshakeOutcome::Completed(_))));
    assert_eq!(s.out.stats.responses_sent, 1);
}

#[test]
fn under_load_the_token_bucket_holds_a_source_with_valid_mac2() {
    let mut s = setup(64);
    s.overload(20);
    let first = s.peer.initiation();
    s.arrive(20, PEER, &first);
    let reply = s.out.transmits.remove(0);
    assert!(matches!(s.peer.receive(reply.payload()), Some(HandshakeOutcome::CookieStored(_))));
    // Ten with mac2 at one instant: the bucket's burst (5) is admitted, the rest dropped.
    for _ in 0..10 {
        let m = s.peer.initiation();
        s.arrive(20, PEER, &m);
    }
    assert_eq!((s.stage.c.queued, s.dropped(HsDrop::Ratelimited)), (5, 5));
    assert_eq!(s.out.stats.dh_operations, 0);
}

#[test]
fn a_backlog_admitted_before_the_load_gets_cookie_replies_not_dh() {
    let mut s = setup(64);
    for _ in 0..3 {
        let m = s.stranger.initiation();
        s.arrive(20, STRANGER, &m);
    }
    assert_eq!(s.stage.len(), 3);
    s.overload(21);
    assert_eq!(s.process(21, BUDGET), 3);
    assert_eq!(s.out.stats.dh_operations, 0, "DH work under load for messages without mac2");
    assert_eq!((s.dropped(HsDrop::BadMac2), s.out.stats.cookies_sent), (3, 3));
    assert_eq!(s.out.transmits.len(), 3);
    assert!(s.out.transmits.iter().all(|t| t.payload().len() == 64 && t.to == addr(STRANGER)));
    assert_eq!(s.stage.c.processed, 0);
}

#[test]
fn a_cookie_reply_for_our_initiation_is_consumed_on_arrival() {
    let mut s = setup(64);
    // The concentrator initiates to its peer; the peer, under load, answers with a cookie.
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let id = s.conc.peers().next().unwrap().id();
    s.conc.set_endpoint(id, addr(PEER)).unwrap();
    let mut out = Output::with_capacity(2);
    s.conc.initiate(secs(20), &mut rng, id, &mut out).unwrap();
    let init = out.transmits[0].payload().to_vec();
    let mut pout = Output::with_capacity(2);
    let r = s.peer.dev.receive_handshake(secs(20), &mut rng, addr(CONC), &init, true, &mut pout);
    assert_eq!(r, Ok(HandshakeOutcome::CookieSent));
    let cookie = pout.transmits[0].payload().to_vec();
    s.arrive(21, PEER, &cookie);
    assert_eq!((s.stage.c.cookie_replies, s.stage.len()), (1, 0));
    assert_eq!(s.stage.c.dropped, [0; HsDrop::COUNT]);
    // The same reply again: the mac1 it answers was used up.
    s.arrive(21, PEER, &cookie);
    assert_eq!(s.dropped(HsDrop::BadCookieReply), 1);
}

#[test]
fn messages_turned_away_under_load_renew_it_as_a_deep_queue_would() {
    let ms = |n: u64| Timestamp::from_nanos(n * 1_000_000);
    for (turned_away, renewed) in [(UNDER_LOAD_QUEUE_DEPTH - 1, false), (UNDER_LOAD_QUEUE_DEPTH, true)] {
        let mut s = setup(64);
        // 512 waiting at 20 s: under load until 21 s, unless renewed.
        s.overload(20);
        s.load.set(1, 0);
        let m = s.stranger.initiation();
        for _ in 0..turned_away {
            s.stage.arrive(&s.conc, &s.load, ms(20_900), addr(STRANGER), buf(&m), &mut s.out);
            s.stage.screen_arrivals(&s.conc, &s.load, ms(20_900), &mut s.out);
        }
        assert_eq!(s.dropped(HsDrop::BadMac2), turned_away as u64);
        assert_eq!(s.stage.len(), 0);
        assert_eq!(s.load.under_load(&s.conc, ms(21_500)), renewed, "{turned_away} turned away");
    }
}

/// The data path first: with a backlog of data, a batch of DH work is followed by
/// `SHARE_DIV - 1` times its duration of other work before the next one may run; without a
/// backlog there is no wait, and what was owed is forgotten.
#[test]
fn with_a_backlog_of_data_dh_work_waits_for_its_share() {
    let mut sh = Share::default();
    assert!(sh.may_process(true) && sh.may_process(false));
    // A busy iteration: 100 µs of DH work, 10 µs of the rest.
    sh.account(true, 100_000, 10_000);
    let owed = 100_000 * (SHARE_DIV - 1);
    assert!(!sh.may_process(true), "{owed} ns of data work owed");
    assert!(sh.may_process(false), "no backlog: no wait");
    sh.account(true, 0, owed - 1);
    assert!(!sh.may_process(true), "one nanosecond still owed");
    sh.account(true, 0, 1);
    assert!(sh.may_process(true), "paid");
    sh.account(true, 50_000, 0);
    assert!(!sh.may_process(true));
    sh.account(false, 0, 0);
    assert!(sh.may_process(true), "the backlog ended: nothing owed");
}

/// A backlog of data is a full inner burst, or a full WAN burst at least half authenticated
/// data; a burst of handshakes (a storm), a short burst, or forged data is none.
#[test]
fn what_counts_as_a_backlog_of_data() {
    // (WAN frames, of them authenticated data, inner packets) -> backlog
    for (wan, data, inner, want) in [
        (32, 32, 0, true),
        (32, 16, 0, true),
        (32, 15, 0, false),
        (32, 0, 0, false),
        (31, 31, 0, false),
        (0, 0, 32, true),
        (32, 0, 32, true),
        (10, 10, 31, false),
    ] {
        assert_eq!(data_backlog(wan, data, inner, 32), want, "{wan} frames, {data} data, {inner} inner");
    }
}

/// A busy worker's queue drains at one part in `SHARE_DIV` of the speed, so it counts that many
/// times towards the under-load depth; an idle worker's counts once.
#[test]
fn a_busy_workers_queue_counts_share_div_times_towards_the_load() {
    let s = setup(1024);
    let quarter = UNDER_LOAD_QUEUE_DEPTH / SHARE_DIV as usize;
    s.load.set(1, quarter);
    assert_eq!(s.load.total(), quarter);
    assert!(!s.load.under_load(&s.conc, secs(20)));
    s.load.set_busy(1, true);
    assert_eq!(s.load.total(), UNDER_LOAD_QUEUE_DEPTH);
    assert_eq!(s.load.queued(), quarter, "the gauge of waiting handshakes is not weighted");
    assert!(s.load.under_load(&s.conc, secs(30)));
    s.load.set_busy(1, false);
    assert_eq!(s.load.total(), quarter);
    assert_eq!(s.load.depth(1), quarter, "the gauge itself is the queue's length");
    // The load noticed at 30 s lasts a second, then lapses with the idle queue.
    assert!(s.load.under_load(&s.conc, secs(30)));
    assert!(!s.load.under_load(&s.conc, secs(32)));
}

#[test]
fn held_messages_are_screened_eight_at_a_time_when_drained_or_after_the_hold() {
    use super::{HOLD_MAX, SCREEN_BATCH};
    let at = |us: u64| Timestamp::from_nanos(20_000_000_000 + us * 1000);
    let mut s = setup(64);
    s.overload(20);
    let m = s.stranger.initiation();
    let (conc, load) = (&s.conc, &s.load);
    // Fewer than a batch, the queue still full: held, nothing answered yet.
    for _ in 0..SCREEN_BATCH - 1 {
        s.stage.arrive(conc, load, at(0), addr(STRANGER), buf(&m), &mut s.out);
    }
    s.stage.screen_when_ready(conc, load, at(0), false, &mut s.out);
    assert_eq!(s.out.transmits.len(), 0);
    // The batch's last message: all eight answered (under load: cookie replies).
    s.stage.arrive(conc, load, at(1), addr(STRANGER), buf(&m), &mut s.out);
    s.stage.screen_when_ready(conc, load, at(1), false, &mut s.out);
    assert_eq!(s.out.transmits.len(), SCREEN_BATCH);
    // One held: screened once the hold has passed, or at once when the queue is drained.
    s.stage.arrive(conc, load, at(2), addr(STRANGER), buf(&m), &mut s.out);
    let hold_us = HOLD_MAX.as_micros() as u64;
    s.stage.screen_when_ready(conc, load, at(1 + hold_us), false, &mut s.out);
    assert_eq!(s.out.transmits.len(), SCREEN_BATCH);
    s.stage.screen_when_ready(conc, load, at(2 + hold_us), false, &mut s.out);
    assert_eq!(s.out.transmits.len(), SCREEN_BATCH + 1);
    s.stage.arrive(conc, load, at(3 + hold_us), addr(STRANGER), buf(&m), &mut s.out);
    s.stage.screen_when_ready(conc, load, at(3 + hold_us), true, &mut s.out);
    assert_eq!(s.out.transmits.len(), SCREEN_BATCH + 2);
    assert_eq!(s.dropped(HsDrop::BadMac2), SCREEN_BATCH as u64 + 2);
}

/// The buffers screened messages came in are kept for the replies: at most `SPARE`, each
/// handed out empty at the standard headroom, whatever the message was.
#[test]
fn screened_buffers_are_kept_for_replies_up_to_the_bound() {
    use super::SPARE;
    let mut s = setup(64);
    s.overload(20);
    assert!(s.stage.take_spare().is_none(), "nothing screened yet");
    let m = s.stranger.initiation();
    let long = junk([1, 0, 0, 0], 300, 7);
    for i in 0..SPARE + 5 {
        let msg: &[u8] = if i % 3 == 0 { &long } else { &m };
        s.arrive(20, STRANGER, msg);
    }
    let mut kept = 0;
    while let Some(b) = s.stage.take_spare() {
        assert_eq!((b.len(), b.headroom()), (0, HEADROOM));
        kept += 1;
    }
    assert_eq!(kept, SPARE);
    // The screens themselves: 24 valid-MAC1 initiations answered with cookie replies, 13 long
    // messages dropped for their length.
    assert_eq!((s.dropped(HsDrop::BadMac2), s.out.transmits.len()), (24, 24));
    assert_eq!(s.dropped(HsDrop::BadLength), 13);
    // An idle worker gives them back.
    s.arrive(20, STRANGER, &m);
    s.stage.release_spare();
    assert!(s.stage.take_spare().is_none());
}

/// Turned-away messages counted a screen at a time renew the load at the same counts as one at
/// a time: what passes the depth in one screen counts towards the next renewal.
#[test]
fn turned_away_counted_per_screen_renew_at_the_depth() {
    let ms = |n: u64| Timestamp::from_nanos(n * 1_000_000);
    let mut s = setup(64);
    let m = s.stranger.initiation();
    s.overload(20);
    s.load.set(1, 0);
    let screen = |s: &mut Setup, k: usize, at: u64| {
        for _ in 0..k {
            s.stage.arrive(&s.conc, &s.load, ms(at), addr(STRANGER), buf(&m), &mut s.out);
        }
        s.stage.screen_arrivals(&s.conc, &s.load, ms(at), &mut s.out);
    };
    // 74 screens of 7 at 20.9 s: 518 turned away, the load renewed at the 512th (until 21.9 s),
    // 6 carried over.
    for _ in 0..74 {
        screen(&mut s, 7, 20_900);
    }
    assert!(s.load.under_load(&s.conc, ms(21_800)), "renewed at 20.9 s");
    // 506 more at 21.8 s: 1024 in all, the second renewal exactly there (until 22.8 s). Had
    // the overshoot been dropped, the count would stand at 506 and the load lapse at 21.9 s.
    for _ in 0..72 {
        screen(&mut s, 7, 21_800);
    }
    screen(&mut s, 2, 21_800);
    assert_eq!(s.dropped(HsDrop::BadMac2), 1024);
    assert!(s.load.under_load(&s.conc, ms(22_500)), "renewed again at 21.8 s, at the 1024th");
}
