//! The cookie module's tests: MACs, cookie replies and their ages, cross-checked with boringtun.

use super::*;
use crate::crypto::PrivateKey;
use crate::messages::{HEADER_LEN, INITIATION_LEN, MESSAGE_HANDSHAKE_INITIATION, RATELIMIT_MAX_ENTRIES, RESPONSE_LEN};
use crate::wire::wireguard::{HandshakeInitiation, HandshakeResponse};
use boringtun::noise::{rate_limiter::RateLimiter as BtRateLimiter, Tunn, TunnResult};
use boringtun::x25519;
use core::time::Duration;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

const INITIATOR_SK: [u8; 32] = [0x11; 32];
const RESPONDER_SK: [u8; 32] = [0x22; 32];
fn responder_pk() -> [u8; 32] {
    PrivateKey::from_bytes(RESPONDER_SK).public_key()
}
fn src() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820)
}
fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(42)
}
fn limiter() -> RateLimiter {
    RateLimiter::new(RATELIMIT_MAX_ENTRIES, &mut rng())
}
const T0: Timestamp = Timestamp::from_secs(1000);

/// The tests build messages as plain bytes (independently of the views) and hand them to the
/// API as the handshake message their length says: a response at 92 bytes, else an
/// initiation (whose views read zeros past the end of a shorter buffer).
enum Hs<T: AsRef<[u8]>> {
    Init(HandshakeInitiation<T>),
    Resp(HandshakeResponse<T>),
}
fn hs<T: AsRef<[u8]>>(b: T) -> Hs<T> {
    if b.as_ref().len() == RESPONSE_LEN {
        Hs::Resp(HandshakeResponse::new_unchecked(b))
    } else {
        Hs::Init(HandshakeInitiation::new_unchecked(b))
    }
}
impl<T: AsRef<[u8]>> MacMessage for Hs<T> {
    fn sender_index(&self) -> u32 {
        match self {
            Hs::Init(m) => m.sender_index(),
            Hs::Resp(m) => m.sender_index(),
        }
    }
    fn mac1(&self) -> [u8; COOKIE_LEN] {
        match self {
            Hs::Init(m) => m.mac1(),
            Hs::Resp(m) => m.mac1(),
        }
    }
    fn mac2(&self) -> [u8; COOKIE_LEN] {
        match self {
            Hs::Init(m) => m.mac2(),
            Hs::Resp(m) => m.mac2(),
        }
    }
    fn mac1_covered(&self) -> &[u8] {
        match self {
            Hs::Init(m) => m.mac1_covered(),
            Hs::Resp(m) => m.mac1_covered(),
        }
    }
    fn mac2_covered(&self) -> &[u8] {
        match self {
            Hs::Init(m) => m.mac2_covered(),
            Hs::Resp(m) => m.mac2_covered(),
        }
    }
}
impl<T: AsRef<[u8]> + AsMut<[u8]>> MacMessageMut for Hs<T> {
    fn set_mac1(&mut self, mac: &[u8; COOKIE_LEN]) {
        match self {
            Hs::Init(m) => m.set_mac1(mac),
            Hs::Resp(m) => m.set_mac1(mac),
        }
    }
    fn set_mac2(&mut self, mac: &[u8; COOKIE_LEN]) {
        match self {
            Hs::Init(m) => m.set_mac2(mac),
            Hs::Resp(m) => m.set_mac2(mac),
        }
    }
}
/// [`CookieChecker::create_reply`] to the handshake message in `msg`, as bytes.
fn reply_to<R: rand_core::RngCore + rand_core::CryptoRng>(
    checker: &CookieChecker,
    now: Timestamp,
    rng: &mut R,
    msg: &[u8],
    src: SocketAddr,
) -> [u8; COOKIE_REPLY_LEN] {
    checker.create_reply(now, rng, &hs(msg), src).into_inner()
}
/// [`CookieState::consume_reply`] of the bytes `reply`.
fn take(state: &mut CookieState, now: Timestamp, reply: &[u8]) -> Result<(), CookieError> {
    state.consume_reply(now, &CookieReply::new_unchecked(reply))
}

/// An initiation-shaped message (the MACs only cover bytes; the Noise payload is someone
/// else's test), prefilled with 0xa5 and our sender index.
fn initiation(sender: u32) -> [u8; INITIATION_LEN] {
    let mut m = [0xa5u8; INITIATION_LEN];
    m[..HEADER_LEN].copy_from_slice(&[MESSAGE_HANDSHAKE_INITIATION, 0, 0, 0]);
    m[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&sender.to_le_bytes());
    m
}

/// A real handshake initiation as boringtun (an independent implementation) puts it on the
/// wire, from the initiator's key to the responder's.
fn boringtun_initiator() -> Tunn {
    Tunn::new(x25519::StaticSecret::from(INITIATOR_SK), x25519::PublicKey::from(responder_pk()), None, None, 7, None)
}
fn boringtun_initiation(t: &mut Tunn, force: bool) -> Vec<u8> {
    let mut buf = [0u8; 256];
    match t.format_handshake_initiation(&mut buf, force) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("boringtun made no initiation"),
    }
}

#[test]
fn mac1_of_a_real_initiation_matches_an_independent_blake2s() {
    use blake2::digest::{FixedOutput, Mac as _};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    let msg = boringtun_initiation(&mut boringtun_initiator(), false);
    assert_eq!(msg.len(), INITIATION_LEN);
    assert_eq!(&msg[..4], &[1, 0, 0, 0]);
    // mac1 key = BLAKE2s-256("mac1----" || responder public), mac1 = BLAKE2s-128 keyed.
    let key = Blake2s256::new().chain_update(b"mac1----").chain_update(responder_pk()).finalize();
    let mut m = <Blake2sMac<blake2::digest::consts::U16> as blake2::digest::KeyInit>::new_from_slice(&key).unwrap();
    m.update(&msg[..116]);
    let want: [u8; 16] = m.finalize_fixed().into();
    assert_eq!(&msg[116..132], &want);
    assert_eq!(&msg[132..148], &[0u8; 16], "no cookie yet: mac2 is zero");

    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    assert!(checker.check_mac1(&hs(&msg[..])));
    assert_eq!(
        checker.validate(T0, &mut rng(), &hs(&msg[..]), src(), false, &limiter()),
        MacState::ValidMacButNoCookie
    );
    // Our initiator side writes the same mac1 over the same bytes.
    let mut ours = msg.clone();
    ours[116..].fill(0xa5);
    CookieState::new(&responder_pk()).add_macs(T0, &mut hs(&mut ours[..]));
    assert_eq!(ours, msg);
    // Another responder key does not verify it.
    let other = CookieChecker::new(T0, &mut rng(), Some(&[9u8; 32]));
    assert!(!other.check_mac1(&hs(&msg[..])));
}

/// Our responder hands boringtun a cookie; boringtun's next initiation carries a mac2 we accept.
#[test]
fn boringtun_initiator_takes_our_cookie_reply() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut bt = boringtun_initiator();
    let first = boringtun_initiation(&mut bt, false);
    assert_eq!(checker.validate(T0, &mut rng(), &hs(&first[..]), src(), true, &rl), MacState::ValidMacButNoCookie);
    let reply = reply_to(&checker, T0, &mut rng(), &first, src());
    assert_eq!(&reply[..4], &[3, 0, 0, 0]);
    assert_eq!(&reply[4..8], &first[4..8]);
    let mut buf = [0u8; 256];
    assert!(matches!(bt.decapsulate(None, &reply, &mut buf), TunnResult::Done));
    let second = boringtun_initiation(&mut bt, true);
    assert_ne!(&second[132..], &[0u8; 16]);
    assert_eq!(checker.validate(T0, &mut rng(), &hs(&second[..]), src(), true, &rl), MacState::ValidMacWithCookie);
    // The cookie is bound to the source port as well as the address.
    let moved = SocketAddr::new(src().ip(), 51821);
    assert_eq!(checker.validate(T0, &mut rng(), &hs(&second[..]), moved, true, &rl), MacState::ValidMacButNoCookie);
}

/// boringtun's responder (always under load with limit 0) hands us a cookie; our next
/// message passes its mac2 check.
#[test]
fn we_take_a_boringtun_cookie_reply() {
    let bt = BtRateLimiter::new(&x25519::PublicKey::from(responder_pk()), 0);
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(0x0102_0304);
    state.add_macs(T0, &mut hs(&mut msg[..]));
    let mut buf = [0u8; 256];
    let reply = match bt.verify_packet(Some(src().ip()), &msg, &mut buf) {
        Err(TunnResult::WriteToNetwork(r)) => r.to_vec(),
        _ => panic!("boringtun under load should answer with a cookie reply"),
    };
    assert_eq!(reply.len(), COOKIE_REPLY_LEN);
    assert_eq!(&reply[4..8], &0x0102_0304u32.to_le_bytes());
    take(&mut state, T0, &reply).unwrap();
    state.add_macs(T0, &mut hs(&mut msg[..]));
    assert!(bt.verify_packet(Some(src().ip()), &msg, &mut buf).is_ok());
}

#[test]
fn round_trip_initiation_and_response() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut r = rng();
    for len in [INITIATION_LEN, RESPONSE_LEN] {
        let mut state = CookieState::new(&responder_pk());
        let mut msg = vec![0xa5u8; len];
        msg[..8].copy_from_slice(&[if len == INITIATION_LEN { 1 } else { 2 }, 0, 0, 0, 77, 0, 0, 0]);
        state.add_macs(T0, &mut hs(&mut msg[..]));
        assert_eq!(&msg[len - 16..], &[0u8; 16]);
        assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), src(), false, &rl), MacState::ValidMacButNoCookie);
        assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacButNoCookie);
        let reply = reply_to(&checker, T0, &mut r, &msg, src());
        assert_eq!(&reply[4..8], &77u32.to_le_bytes());
        take(&mut state, T0, &reply).unwrap();
        state.add_macs(T0, &mut hs(&mut msg[..]));
        let mac2 = &msg[len - 16..];
        assert_ne!(mac2, &[0u8; 16]);
        assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacWithCookie);
        // Not under load a valid mac2 is not even looked at.
        assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), src(), false, &rl), MacState::ValidMacButNoCookie);
        // A changed mac1 fails first; a changed mac2 leaves mac1 valid but the cookie not.
        let mut bad = msg.clone();
        bad[len - 17] ^= 1;
        assert_eq!(checker.validate(T0, &mut r, &hs(&bad[..]), src(), true, &rl), MacState::Invalid);
        let mut bad = msg.clone();
        bad[len - 1] ^= 1;
        assert_eq!(checker.validate(T0, &mut r, &hs(&bad[..]), src(), true, &rl), MacState::ValidMacButNoCookie);
    }
}

#[test]
fn wrong_mac1_is_invalid_and_short_messages_do_not_panic() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut r = rng();
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(1);
    state.add_macs(T0, &mut hs(&mut msg[..]));
    for i in [0, 4, 115, 116, 131] {
        let mut bad = msg;
        bad[i] ^= 0x80;
        assert_eq!(checker.validate(T0, &mut r, &hs(&bad[..]), src(), false, &rl), MacState::Invalid, "byte {i}");
        assert_eq!(checker.validate(T0, &mut r, &hs(&bad[..]), src(), true, &rl), MacState::Invalid, "byte {i}");
    }
    // mac2 is not part of mac1.
    let mut m2 = msg;
    m2[140] ^= 1;
    assert!(checker.check_mac1(&hs(&m2[..])));
    // Sent to another peer's key.
    let mut other = CookieState::new(&[5u8; 32]);
    let mut msg2 = initiation(1);
    other.add_macs(T0, &mut hs(&mut msg2[..]));
    assert_eq!(checker.validate(T0, &mut r, &hs(&msg2[..]), src(), false, &rl), MacState::Invalid);
    // Shorter than MAC1's end: nothing to check or write, and no panic.
    for len in [0usize, 1, 31, 32, 131] {
        let short = vec![0u8; len];
        assert_eq!(checker.validate(T0, &mut r, &hs(&short[..]), src(), true, &rl), MacState::Invalid);
        assert!(!checker.check_mac1(&hs(&short[..])));
        let _ = reply_to(&checker, T0, &mut r, &short, src());
        let mut s = short.clone();
        state.add_macs(T0, &mut hs(&mut s[..]));
        assert_eq!(s, short);
    }
    assert!(rl.is_empty(), "nothing reached the rate limiter");
}

#[test]
fn set_public_key_changes_the_mac1_key() {
    let mut checker = CookieChecker::new(T0, &mut rng(), None);
    let mut msg = initiation(1);
    CookieState::new(&responder_pk()).add_macs(T0, &mut hs(&mut msg[..]));
    assert!(!checker.check_mac1(&hs(&msg[..])));
    checker.set_public_key(Some(&responder_pk()));
    assert!(checker.check_mac1(&hs(&msg[..])));
    checker.set_public_key(Some(&[3u8; 32]));
    assert!(!checker.check_mac1(&hs(&msg[..])));
    // The cookie key changes with it: a reply made now is not for the old key.
    let mut state = CookieState::new(&responder_pk());
    state.add_macs(T0, &mut hs(&mut msg[..]));
    let reply = reply_to(&checker, T0, &mut rng(), &msg, src());
    assert_eq!(take(&mut state, T0, &reply), Err(CookieError::Decrypt));
}

#[test]
fn mac2_is_bound_to_source_address_and_port() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut r = rng();
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 51820, 0, 0));
    for from in [src(), v6] {
        let mut state = CookieState::new(&responder_pk());
        let mut msg = initiation(9);
        state.add_macs(T0, &mut hs(&mut msg[..]));
        let reply = reply_to(&checker, T0, &mut r, &msg, from);
        take(&mut state, T0, &reply).unwrap();
        state.add_macs(T0, &mut hs(&mut msg[..]));
        assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), from, true, &rl), MacState::ValidMacWithCookie);
        let other_port = SocketAddr::new(from.ip(), from.port() + 1);
        let other_ip = match from {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), from.port()),
            SocketAddr::V6(_) => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)), from.port())
            }
        };
        for wrong in [other_port, other_ip] {
            assert_eq!(checker.validate(T0, &mut r, &hs(&msg[..]), wrong, true, &rl), MacState::ValidMacButNoCookie);
        }
    }
    // Independent computation of the cookie for an IPv4 source: MAC(secret, ip ‖ port BE).
    let s = checker.read_secret();
    let want = mac(&s.secret.0, &[&[192, 0, 2, 1, 0xca, 0x6c]]);
    assert_eq!(*cookie_for(&s.state, src()), want);
}

#[test]
fn secret_rotation_after_120_s_invalidates_old_cookies() {
    let t0 = Timestamp::from_secs(1);
    let checker = CookieChecker::new(t0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut r = rng();
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(3);
    // Cookie handed out late in the secret's life, so it is still fresh at the initiator.
    let t_cookie = t0 + Duration::from_secs(110);
    state.add_macs(t_cookie, &mut hs(&mut msg[..]));
    take(&mut state, t_cookie, &reply_to(&checker, t_cookie, &mut r, &msg, src())).unwrap();
    let just_before = t0 + Duration::from_nanos(120_000_000_000 - 1);
    state.add_macs(just_before, &mut hs(&mut msg[..]));
    assert_eq!(checker.validate(just_before, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacWithCookie);
    let at_expiry = t0 + COOKIE_SECRET_MAX_AGE;
    state.add_macs(at_expiry, &mut hs(&mut msg[..]));
    assert_ne!(&msg[132..], &[0u8; 16], "the initiator still sends the 10 s old cookie");
    assert_eq!(checker.validate(at_expiry, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacButNoCookie);
    assert_eq!(checker.read_secret().birth, at_expiry);
    // A new cookie from the new secret works again.
    take(&mut state, at_expiry, &reply_to(&checker, at_expiry, &mut r, &msg, src())).unwrap();
    state.add_macs(at_expiry, &mut hs(&mut msg[..]));
    assert_eq!(checker.validate(at_expiry, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacWithCookie);
}

#[test]
fn initiator_drops_cookies_older_than_115_s() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(4);
    state.add_macs(T0, &mut hs(&mut msg[..]));
    take(&mut state, T0, &reply_to(&checker, T0, &mut rng(), &msg, src())).unwrap();
    let limit = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
    assert_eq!(limit, Duration::from_secs(115));
    state.add_macs(T0 + (limit - Duration::from_nanos(1)), &mut hs(&mut msg[..]));
    assert_ne!(&msg[132..], &[0u8; 16]);
    state.add_macs(T0 + limit, &mut hs(&mut msg[..]));
    assert_eq!(&msg[132..], &[0u8; 16]);
}

#[test]
fn reply_is_only_accepted_for_the_last_mac1_sent() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let mut r = rng();
    let mut state = CookieState::new(&responder_pk());
    let reply_for_nothing = reply_to(&checker, T0, &mut r, &initiation(5), src());
    assert_eq!(take(&mut state, T0, &reply_for_nothing), Err(CookieError::NoMac1Sent));

    let mut first = initiation(5);
    state.add_macs(T0, &mut hs(&mut first[..]));
    let mut second = initiation(6);
    state.add_macs(T0, &mut hs(&mut second[..]));
    // A reply to the earlier message has the wrong associated data now.
    let stale = reply_to(&checker, T0, &mut r, &first, src());
    assert_eq!(take(&mut state, T0, &stale), Err(CookieError::Decrypt));
    let mut tampered = reply_to(&checker, T0, &mut r, &second, src());
    tampered[40] ^= 1;
    assert_eq!(take(&mut state, T0, &tampered), Err(CookieError::Decrypt));
    let good = reply_to(&checker, T0, &mut r, &second, src());
    assert_eq!(take(&mut state, T0, &good), Ok(()));
    // Only one reply per mac1 sent.
    assert_eq!(take(&mut state, T0, &good), Err(CookieError::NoMac1Sent));

    state.add_macs(T0, &mut hs(&mut first[..]));
    assert_eq!(take(&mut state, T0, &good[..63]), Err(CookieError::Truncated));
    assert_eq!(take(&mut state, T0, &[]), Err(CookieError::Truncated));
    assert_eq!(take(&mut state, T0, &[good.as_slice(), &[0]].concat()), Err(CookieError::Oversized));
    let mut wrong = good;
    wrong[0] = 2;
    assert_eq!(take(&mut state, T0, &wrong), Err(CookieError::WrongType));
    wrong = good;
    wrong[3] = 1;
    assert_eq!(take(&mut state, T0, &wrong), Err(CookieError::WrongType));
    assert_eq!(CookieError::NoMac1Sent.to_string(), "cookie reply without an outstanding mac1");
}

#[test]
fn replies_use_fresh_random_nonces() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let mut r = rng();
    let msg = initiation(8);
    let a = reply_to(&checker, T0, &mut r, &msg, src());
    let b = reply_to(&checker, T0, &mut r, &msg, src());
    assert_ne!(a[8..32], b[8..32]);
    assert_ne!(a[32..], b[32..]);
}

#[test]
fn valid_cookies_then_go_through_the_rate_limiter() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut r = rng();
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(2);
    state.add_macs(T0, &mut hs(&mut msg[..]));
    take(&mut state, T0, &reply_to(&checker, T0, &mut r, &msg, src())).unwrap();
    state.add_macs(T0, &mut hs(&mut msg[..]));
    let results: Vec<_> = (0..7).map(|_| checker.validate(T0, &mut r, &hs(&msg[..]), src(), true, &rl)).collect();
    assert_eq!(&results[..5], &[MacState::ValidMacWithCookie; 5]);
    assert_eq!(&results[5..], &[MacState::ValidMacWithCookieButRatelimited; 2]);
    let later = T0 + Duration::from_millis(50);
    assert_eq!(checker.validate(later, &mut r, &hs(&msg[..]), src(), true, &rl), MacState::ValidMacWithCookie);
    assert_eq!(rl.len(), 1);
}

#[test]
fn checker_is_shared_by_cores() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<CookieChecker>();
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let rl = limiter();
    let mut state = CookieState::new(&responder_pk());
    let mut msg = initiation(2);
    state.add_macs(T0, &mut hs(&mut msg[..]));
    // Both threads race to rotate the expired secret; they agree on one.
    let late = T0 + COOKIE_SECRET_MAX_AGE;
    let replies: Vec<[u8; COOKIE_REPLY_LEN]> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|i| {
                let (checker, msg) = (&checker, &msg);
                s.spawn(move || {
                    let mut r = ChaCha20Rng::seed_from_u64(100 + i);
                    reply_to(checker, late, &mut r, msg, src())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for reply in replies {
        let mut st = CookieState::new(&responder_pk());
        let mut m = msg;
        st.add_macs(late, &mut hs(&mut m[..]));
        take(&mut st, late, &reply).unwrap();
        st.add_macs(late, &mut hs(&mut m[..]));
        let mut r = rng();
        assert_eq!(checker.validate(late, &mut r, &hs(&m[..]), src(), true, &rl), MacState::ValidMacWithCookie);
    }
}

/// The jar, handed the peer's key at each step, does exactly what the state with precomputed
/// keys does: the same MACs, and the same cookie accepted from the same reply.
#[test]
fn jar_with_the_peer_key_matches_the_state_with_precomputed_keys() {
    let checker = CookieChecker::new(T0, &mut rng(), Some(&responder_pk()));
    let mut state = CookieState::new(&responder_pk());
    let mut jar = CookieJar::new();
    let (mut a, mut b) = ([7u8; INITIATION_LEN], [7u8; INITIATION_LEN]);
    a[..4].copy_from_slice(&[MESSAGE_HANDSHAKE_INITIATION, 0, 0, 0]);
    b[..4].copy_from_slice(&[MESSAGE_HANDSHAKE_INITIATION, 0, 0, 0]);
    state.add_macs(T0, &mut hs(&mut a[..]));
    jar.add_macs(&responder_pk(), T0, &mut hs(&mut b[..]));
    assert_eq!(a, b);
    let reply = checker.create_reply(T0, &mut rng(), &hs(&a[..]), src());
    assert_eq!(jar.consume_reply(&[1; 32], T0, &reply), Err(CookieError::Decrypt), "wrong peer key");
    assert_eq!(state.consume_reply(T0, &reply), Ok(()));
    assert_eq!(jar.consume_reply(&responder_pk(), T0, &reply), Ok(()));
    state.add_macs(T0, &mut hs(&mut a[..]));
    jar.add_macs(&responder_pk(), T0, &mut hs(&mut b[..]));
    assert_eq!(a, b);
    assert_ne!(a[INITIATION_LEN - 16..], [0u8; 16], "both now send a mac2");
}
