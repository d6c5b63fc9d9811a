//! Timer rules on virtual time, one test per rule, plus a three-thread race.

use super::*;
use crate::messages::REJECT_AFTER_TIME;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::atomic::AtomicU64;
use std::thread;

const T0: Timestamp = Timestamp::from_secs(1_000);
const JMAX: Duration = REKEY_TIMEOUT_JITTER_MAX;
use TimerAction::{GiveUp, SendInitiation, SendKeepalive, ZeroKeyMaterial};

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(0x7717e5)
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
/// One nanosecond before `t`.
fn before(t: Timestamp) -> Timestamp {
    Timestamp::from_nanos(t.as_nanos() - 1)
}
fn actions(p: &TimerPoll) -> Vec<TimerAction> {
    p.actions.as_slice().to_vec()
}
/// Send an initiation the way the daemon does (kernel send.c): rate limit, traversal, sent,
/// then arm the retransmit.
fn send_initiation(t: &PeerTimers, now: Timestamp) -> bool {
    if !t.claim_initiation(now) {
        return false;
    }
    t.any_authenticated_packet_traversal(now);
    t.any_authenticated_packet_sent(now);
    t.handshake_initiated(now);
    true
}

#[test]
fn keepalive_ten_seconds_after_data_received_with_nothing_sent() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    let due = T0 + KEEPALIVE_TIMEOUT;
    assert_eq!(t.data_received(T0), Some(due));
    let p = t.poll(before(due), &mut rng);
    assert!(p.actions.is_empty());
    assert_eq!(p.next, Some(due));
    let p = t.poll(due, &mut rng);
    assert_eq!(actions(&p), [SendKeepalive]);
    assert_eq!(p.next, None);
}

#[test]
fn no_keepalive_if_we_sent_something() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.data_received(T0);
    t.any_authenticated_packet_sent(T0 + secs(3));
    assert_eq!(t.next_deadline(), None);
    assert!(t.poll(T0 + secs(20), &mut rng).actions.is_empty());
}

#[test]
fn need_another_keepalive_rearms_once() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert_eq!(t.data_received(T0), Some(T0 + KEEPALIVE_TIMEOUT));
    assert_eq!(t.data_received(T0 + secs(2)), None, "armed: sets need_another_keepalive");
    let p = t.poll(T0 + KEEPALIVE_TIMEOUT, &mut rng);
    assert_eq!(actions(&p), [SendKeepalive]);
    assert_eq!(p.next, Some(T0 + KEEPALIVE_TIMEOUT + KEEPALIVE_TIMEOUT));
    let p = t.poll(T0 + secs(20), &mut rng);
    assert_eq!(actions(&p), [SendKeepalive]);
    assert_eq!(p.next, None, "the flag was cleared: no third keepalive");
}

#[test]
fn new_handshake_fifteen_seconds_plus_jitter_after_data_sent() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.poll(T0, &mut rng);
    let j = t.current_jitter();
    let due = t.data_sent(T0).expect("armed from unarmed");
    assert_eq!(due, T0 + secs(15) + j);
    assert!(due >= T0 + secs(15) && due <= T0 + secs(15) + JMAX, "{due:?}");
    assert_eq!(t.data_sent(T0 + secs(1)), None, "armed: not pushed back");
    assert_eq!(t.deadline(Timer::NewHandshake), Some(due));
    assert!(t.poll(before(due), &mut rng).actions.is_empty());
    let p = t.poll(due, &mut rng);
    assert_eq!(actions(&p), [SendInitiation { retry: false, attempts: 0 }]);
    assert_eq!(p.next, None);
}

#[test]
fn no_new_handshake_if_anything_received() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.data_sent(T0);
    t.any_authenticated_packet_received(T0 + secs(14));
    assert_eq!(t.next_deadline(), None);
    assert!(t.poll(T0 + secs(20), &mut rng).actions.is_empty());
}

#[test]
fn new_handshake_resets_attempts_and_replaces_a_due_retry() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert!(send_initiation(&t, T0));
    let r = t.next_deadline().unwrap();
    assert_eq!(actions(&t.poll(r, &mut rng)), [SendInitiation { retry: true, attempts: 1 }]);
    assert!(send_initiation(&t, r));
    t.data_sent(r);
    // Both the retransmit (r + 5 s) and the new-handshake timer (r + 15 s) are due: one
    // initiation, a non-retry, with the attempts reset.
    let p = t.poll(r + secs(20), &mut rng);
    assert_eq!(actions(&p), [SendInitiation { retry: false, attempts: 0 }]);
    assert_eq!(t.handshake_attempts(), 0);
    assert_eq!(p.next, None);
}

/// The kernel gives up when `attempts > MAX_TIMER_HANDSHAKES` at a firing. Attempts start at 0
/// and each retrying firing adds one, so retries carry attempts 1..=19 (tries 2..=20) and the
/// 20th firing gives up: 20 initiations in all, which is the "20 attempts" the kernel logs
/// (MAX_TIMER_HANDSHAKES + 2), not 18 retries.
#[test]
fn retransmit_every_five_seconds_then_give_up() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.reset_attempts();
    assert!(send_initiation(&t, T0));
    let mut last = T0;
    let mut tries = Vec::new();
    let give_up_at = loop {
        assert!(tries.len() < 100, "never gave up");
        let at = t.next_deadline().expect("retransmit armed");
        assert_eq!(Some(at), t.deadline(Timer::RetransmitHandshake));
        let gap = at - last;
        assert!(gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + JMAX, "{gap:?}");
        assert!(t.may_send_initiation(at), "a retry is never rate-limited");
        let p = t.poll(at, &mut rng);
        match actions(&p).as_slice() {
            [SendInitiation { retry: true, attempts }] => {
                tries.push(*attempts);
                assert_eq!(t.handshake_attempts(), *attempts);
                assert!(send_initiation(&t, at));
                last = at;
                if *attempts == MAX_TIMER_HANDSHAKES + 1 {
                    // A keepalive owed after the last retry is dropped by the give-up.
                    t.data_received(at);
                    let msg = p.actions.as_slice()[0].log_message("1 (192.0.2.1:51820)");
                    assert!(msg.ends_with("after 5 seconds, retrying (try 20)"), "{msg}");
                }
            }
            [GiveUp] => break at,
            other => panic!("unexpected actions {other:?}"),
        }
    };
    assert_eq!(tries, (1..=MAX_TIMER_HANDSHAKES + 1).collect::<Vec<_>>());
    assert_eq!(tries.len(), 19);
    let gap = give_up_at - last;
    assert!(gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + JMAX);
    assert_eq!(t.deadline(Timer::RetransmitHandshake), None, "poll never re-arms it");
    assert_eq!(t.deadline(Timer::SendKeepalive), None);
    let zero_at = give_up_at + ZERO_KEY_MATERIAL_AFTER;
    assert_eq!(t.deadline(Timer::ZeroKeyMaterial), Some(zero_at));
    assert_eq!(t.next_deadline(), Some(zero_at));
    assert_eq!(actions(&t.poll(zero_at, &mut rng)), [ZeroKeyMaterial]);
}

#[test]
fn give_up_keeps_an_armed_zero_key_deadline() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.session_derived(T0);
    t.handshake_attempts.store(MAX_TIMER_HANDSHAKES + 1, ORD);
    t.handshake_initiated(T0);
    let p = t.poll(T0 + secs(6), &mut rng);
    assert_eq!(actions(&p), [GiveUp]);
    assert_eq!(p.next, Some(T0 + ZERO_KEY_MATERIAL_AFTER));
}

#[test]
fn retransmit_is_never_earlier_than_the_rate_limit() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.initiation_sent(T0 + secs(1));
    // The caller passed a `now` read before the one it recorded.
    let due = t.handshake_initiated(T0).unwrap();
    assert!(due >= T0 + secs(1) + REKEY_TIMEOUT);
    assert!(t.may_send_initiation(due));
}

#[test]
fn handshake_complete_stops_retransmits() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert_eq!(t.last_handshake(), None);
    assert!(send_initiation(&t, T0));
    let r = t.next_deadline().unwrap();
    assert_eq!(actions(&t.poll(r, &mut rng)), [SendInitiation { retry: true, attempts: 1 }]);
    assert!(send_initiation(&t, r));
    assert!(t.claim_lastminute_handshake());
    t.handshake_complete(r + secs(1));
    assert_eq!(t.deadline(Timer::RetransmitHandshake), None);
    assert_eq!(t.handshake_attempts(), 0);
    assert_eq!(t.last_handshake(), Some(r + secs(1)));
    assert!(t.claim_lastminute_handshake(), "flag reset");
    assert!(t.poll(r + secs(60), &mut rng).actions.is_empty());
}

#[test]
fn zero_key_material_540_seconds_after_session_derived() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert_eq!(ZERO_KEY_MATERIAL_AFTER, REJECT_AFTER_TIME * 3);
    let due = T0 + secs(540);
    assert_eq!(t.session_derived(T0), Some(due));
    assert!(t.poll(before(due), &mut rng).actions.is_empty());
    assert_eq!(t.session_derived(T0 + secs(100)), None, "later re-arm");
    assert_eq!(t.deadline(Timer::ZeroKeyMaterial), Some(T0 + secs(640)));
    assert!(t.poll(due, &mut rng).actions.is_empty());
    let p = t.poll(T0 + secs(640), &mut rng);
    assert_eq!(actions(&p), [ZeroKeyMaterial]);
    assert_eq!(p.next, None);
}

#[test]
fn persistent_keepalive_every_interval_rearmed_by_traversal() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert_eq!(t.any_authenticated_packet_traversal(T0), None, "off by default");
    assert_eq!(t.set_persistent_keepalive(25, T0), Some(T0 + secs(25)));
    assert_eq!(t.persistent_keepalive_interval(), 25);
    let mut fired = Vec::new();
    for _ in 0..3 {
        let at = t.next_deadline().unwrap();
        let p = t.poll(at, &mut rng);
        assert_eq!(actions(&p), [SendKeepalive]);
        assert_eq!(p.next, None);
        fired.push(at);
        // The caller sends the keepalive: traversal re-arms the unarmed timer.
        assert_eq!(t.any_authenticated_packet_traversal(at), Some(at + secs(25)));
        t.any_authenticated_packet_sent(at);
    }
    assert_eq!(fired, [T0 + secs(25), T0 + secs(50), T0 + secs(75)]);
    // A received packet pushes it back (later: None).
    assert_eq!(t.any_authenticated_packet_traversal(T0 + secs(80)), None);
    assert_eq!(t.next_deadline(), Some(T0 + secs(105)));
    // A shorter interval moves it earlier: the wheel must hear of it.
    assert_eq!(t.set_persistent_keepalive(5, T0 + secs(81)), Some(T0 + secs(86)));
    assert_eq!(t.set_persistent_keepalive(0, T0 + secs(82)), None);
    assert_eq!(t.persistent_keepalive_interval(), 0);
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.any_authenticated_packet_traversal(T0 + secs(83)), None);
    assert!(t.poll(T0 + secs(200), &mut rng).actions.is_empty());
    // Fires only while enabled (interval turned off under an armed timer).
    t.set_persistent_keepalive(25, T0);
    t.persistent_keepalive_interval.store(0, ORD);
    assert!(t.poll(T0 + secs(25), &mut rng).actions.is_empty());
}

#[test]
fn own_initiations_limited_to_one_per_rekey_timeout() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert!(t.may_send_initiation(T0));
    assert!(t.claim_initiation(T0));
    assert!(!t.claim_initiation(T0 + secs(1)));
    assert!(!t.may_send_initiation(before(T0 + secs(5))));
    assert!(t.may_send_initiation(T0 + secs(5)), "exactly 5 s counts as expired");
    t.initiation_sent(T0 + secs(5));
    t.response_sent(T0 + secs(7));
    assert!(!t.may_send_initiation(T0 + secs(11)), "a response restarts the limit");
    assert!(t.may_send_initiation(T0 + secs(12)));

    let t = PeerTimers::new(&mut rng);
    let sent = (0..600u64).filter(|i| t.claim_initiation(T0 + Duration::from_millis(100 * i))).count();
    assert_eq!(sent, 12, "one per 5 s over 60 s");
}

#[test]
fn lastminute_handshake_claimed_once_until_complete() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    assert!(t.claim_lastminute_handshake());
    assert!(!t.claim_lastminute_handshake());
    assert!(!t.claim_lastminute_handshake());
    t.handshake_complete(T0);
    assert!(t.claim_lastminute_handshake());
    assert!(!t.claim_lastminute_handshake());
}

#[test]
fn jitter_stays_in_bounds_and_spreads() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    let (mut lo, mut hi) = (JMAX, Duration::ZERO);
    for i in 0..10_000u64 {
        t.poll(T0 + Duration::from_millis(i), &mut rng);
        let j = t.current_jitter();
        assert!(j <= JMAX, "{j:?}");
        lo = lo.min(j);
        hi = hi.max(j);
    }
    assert!(lo < Duration::from_millis(10), "{lo:?}");
    assert!(hi > Duration::from_millis(323), "{hi:?}");
}

#[test]
fn events_return_a_deadline_only_when_the_wheel_needs_it() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    let d = t.data_sent(T0);
    assert_eq!(d, t.deadline(Timer::NewHandshake));
    assert_eq!(t.data_sent(T0 + secs(1)), None);
    assert_eq!(t.data_received(T0), Some(T0 + KEEPALIVE_TIMEOUT));
    assert_eq!(t.data_received(T0 + secs(1)), None);
    t.any_authenticated_packet_sent(T0 + secs(2));
    assert_eq!(t.data_received(T0 + secs(3)), Some(T0 + secs(13)), "unarmed again");
    let h = t.handshake_initiated(T0).unwrap();
    assert_eq!(Some(h), t.deadline(Timer::RetransmitHandshake));
    assert_eq!(t.handshake_initiated(T0 + secs(1)), None, "later");
    assert_eq!(t.session_derived(T0), Some(T0 + ZERO_KEY_MATERIAL_AFTER));
    assert_eq!(t.session_derived(T0 + secs(1)), None);
    assert_eq!(t.set_persistent_keepalive(30, T0), Some(T0 + secs(30)));
    assert_eq!(t.set_persistent_keepalive(30, T0 + secs(1)), None);
    assert_eq!(t.set_persistent_keepalive(10, T0 + secs(2)), Some(T0 + secs(12)), "earlier");
    // Fired timers are unarmed: the next event reports again.
    t.poll(T0 + secs(1000), &mut rng);
    assert!(t.data_sent(T0 + secs(1000)).is_some());
    assert!(t.session_derived(T0 + secs(1000)).is_some());
}

#[test]
fn next_is_the_minimum_armed_deadline() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.session_derived(T0);
    t.set_persistent_keepalive(25, T0);
    let hs = t.data_sent(T0).unwrap();
    t.data_received(T0 + secs(1));
    assert_eq!(t.next_deadline(), Some(T0 + secs(11)));
    let p = t.poll(T0 + secs(11), &mut rng);
    assert_eq!(actions(&p), [SendKeepalive]);
    assert_eq!(p.next, Some(hs));
    let p = t.poll(hs, &mut rng);
    assert_eq!(actions(&p), [SendInitiation { retry: false, attempts: 0 }]);
    assert_eq!(p.next, Some(T0 + secs(25)));
    let p = t.poll(T0 + secs(25), &mut rng);
    assert_eq!(p.next, Some(T0 + ZERO_KEY_MATERIAL_AFTER));
}

#[test]
fn all_due_at_once_gives_one_of_each_in_order() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.handshake_attempts.store(MAX_TIMER_HANDSHAKES + 1, ORD);
    t.handshake_initiated(T0);
    t.data_received(T0);
    t.data_sent(T0);
    t.session_derived(T0);
    t.set_persistent_keepalive(1, T0);
    let p = t.poll(T0 + secs(600), &mut rng);
    assert_eq!(p.actions.len(), MAX_TIMER_ACTIONS);
    assert_eq!(actions(&p), [GiveUp, SendKeepalive, ZeroKeyMaterial, SendInitiation { retry: false, attempts: 0 }]);
    assert_eq!(p.next, None);
}

#[test]
fn disarm_all_stops_everything() {
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    t.handshake_initiated(T0);
    t.data_received(T0);
    t.data_sent(T0);
    t.session_derived(T0);
    t.set_persistent_keepalive(1, T0);
    t.disarm_all();
    assert_eq!(t.next_deadline(), None);
    assert!(t.poll(T0 + secs(1000), &mut rng).actions.is_empty());
}

#[test]
fn log_messages_match_the_kernel() {
    let p = "7 (192.0.2.1:51820)";
    assert_eq!(
        GiveUp.log_message(p),
        "Handshake for peer 7 (192.0.2.1:51820) did not complete after 20 attempts, giving up"
    );
    assert_eq!(
        SendInitiation { retry: true, attempts: 3 }.log_message(p),
        "Handshake for peer 7 (192.0.2.1:51820) did not complete after 5 seconds, retrying (try 4)"
    );
    assert_eq!(
        SendInitiation { retry: false, attempts: 0 }.log_message(p),
        "Retrying handshake with peer 7 (192.0.2.1:51820) because we stopped hearing back after 15 seconds"
    );
    assert_eq!(
        ZeroKeyMaterial.log_message(p),
        "Zeroing out all keys for peer 7 (192.0.2.1:51820), since we haven't received a new one in 540 seconds"
    );
    assert_eq!(SendKeepalive.log_message(p), "Sending keepalive packet to peer 7 (192.0.2.1:51820)");
}

/// Two cores hammer every event on shared virtual time while a third polls: nothing panics,
/// every deadline stays within the longest timer span of the clock, and the state drains.
#[test]
fn events_race_with_poll() {
    const STEPS: u64 = 20_000;
    const TICK: u64 = 1_000_000; // 1 ms of virtual time per event
    let mut rng = rng();
    let t = PeerTimers::new(&mut rng);
    let clock = AtomicU64::new(T0.as_nanos());
    let done = AtomicBool::new(false);
    // Longest span any event arms: the zero-key timer (persistent intervals here are < 30 s).
    let span = duration_nanos(ZERO_KEY_MATERIAL_AFTER + JMAX);
    let sane = |d: Timestamp, clock: &AtomicU64| {
        let c = clock.load(ORD);
        assert!(d >= T0 && d.as_nanos() <= c + span + TICK, "deadline {d:?} at clock {c}");
    };
    thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|id| {
                let (t, clock, sane) = (&t, &clock, &sane);
                s.spawn(move || {
                    for i in 0..STEPS {
                        let now = Timestamp::from_nanos(clock.fetch_add(TICK, ORD) + TICK);
                        let armed = match (i + id) % 11 {
                            0 => t.data_sent(now),
                            1 => t.data_received(now),
                            2 => {
                                t.any_authenticated_packet_sent(now);
                                None
                            }
                            3 => {
                                t.any_authenticated_packet_received(now);
                                None
                            }
                            4 => t.any_authenticated_packet_traversal(now),
                            5 if t.claim_initiation(now) => t.handshake_initiated(now),
                            6 if i % 997 == 0 => {
                                t.handshake_complete(now);
                                None
                            }
                            7 => t.session_derived(now),
                            8 => t.set_persistent_keepalive((i % 30) as u16, now),
                            9 => {
                                t.claim_lastminute_handshake();
                                t.reset_attempts();
                                None
                            }
                            _ => t.next_deadline(),
                        };
                        if let Some(d) = armed {
                            sane(d, clock);
                        }
                    }
                })
            })
            .collect();
        let poller = {
            let (t, clock, done, sane) = (&t, &clock, &done, &sane);
            s.spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(9);
                let mut polls = 0u32;
                while !done.load(ORD) || polls < 1_000 {
                    let p = t.poll(Timestamp::from_nanos(clock.load(ORD)), &mut rng);
                    assert!(p.actions.len() <= MAX_TIMER_ACTIONS);
                    if let Some(d) = p.next {
                        sane(d, clock);
                    }
                    polls += 1;
                    thread::yield_now();
                }
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, ORD);
        poller.join().unwrap();
    });
    // Quiesced: polling far ahead drains every timer (poll may re-arm a keepalive or the
    // zero-key timer once, which the next far poll fires).
    let mut now = Timestamp::from_nanos(clock.load(ORD)) + secs(10_000);
    for _ in 0..3 {
        if t.poll(now, &mut rng).next.is_none() {
            break;
        }
        now = now + secs(10_000);
    }
    assert_eq!(t.next_deadline(), None);
}
