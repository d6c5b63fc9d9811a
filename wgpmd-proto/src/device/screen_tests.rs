//! [`Device::screen_handshakes`] (a burst's MACs computed together) against
//! [`Device::screen_handshake`] one message at a time, on two devices built from one seed: the
//! same results, replies byte for byte, counters and use of the random generator, over random
//! bursts of valid initiations and responses (with and without a valid mac2, several from one
//! source so the rate limiter drops some), wrong mac1, wrong mac2, junk of every type and
//! length, IPv4 and IPv6 sources, under load and not, across cookie secret rotations.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::crypto::{hash, mac, xopen_cookie, PrivateKey};
use crate::messages::{COOKIE_LEN, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, WG_LABEL_COOKIE, WG_LABEL_MAC1};

fn device(seed: u64) -> (Device, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut dev = Device::new(&mut rng, 1_700_000_000_000_000_000);
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    (dev, rng)
}

fn source(rng: &mut ChaCha20Rng, n: u32) -> SocketAddr {
    let k = rng.next_u32() % n;
    if k.is_multiple_of(3) {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, k as u16)),
            1000u16.wrapping_add(k as u16),
        )
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, (k >> 8) as u8, k as u8)), 40000 + (k % 7) as u16)
    }
}

/// A handshake message of `len` bytes (148 or 92) with a random body and a valid mac1, and a
/// valid mac2 when `cookie` is given.
fn handshake(rng: &mut ChaCha20Rng, mac1_key: &[u8; 32], len: usize, cookie: Option<&[u8; COOKIE_LEN]>) -> Vec<u8> {
    let mut m = vec![0u8; len];
    rng.fill_bytes(&mut m);
    m[..4].copy_from_slice(&[if len == INITIATION_LEN { 1 } else { 2 }, 0, 0, 0]);
    let m1 = mac(mac1_key, &[&m[..len - 32]]);
    m[len - 32..len - 16].copy_from_slice(&m1);
    m[len - 16..].fill(0);
    if let Some(c) = cookie {
        let m2 = mac(c, &[&m[..len - 16]]);
        m[len - 16..].copy_from_slice(&m2);
    }
    m
}

/// The device's cookie for `src`: from the cookie reply a device built from the same seed makes
/// under load, opened as the initiator would.
fn cookie_of(seed: u64, src: SocketAddr, now: Timestamp, rng: &mut ChaCha20Rng) -> [u8; COOKIE_LEN] {
    let (dev, mut drng) = device(seed);
    let pk = dev.public_key().unwrap();
    let msg = handshake(rng, &hash(&[WG_LABEL_MAC1, &pk]), INITIATION_LEN, None);
    let mut out = Output::with_capacity(4);
    let r = dev.screen_handshake(now, &mut drng, src, &msg, true, &mut out);
    assert_eq!(r, Ok(Screened::Handled(HandshakeOutcome::CookieSent)));
    let reply = out.transmits[0].payload();
    assert_eq!(reply.len(), COOKIE_REPLY_LEN);
    let nonce: [u8; 24] = reply[8..32].try_into().unwrap();
    let sealed: [u8; 32] = reply[32..64].try_into().unwrap();
    xopen_cookie(&hash(&[WG_LABEL_COOKIE, &pk]), &nonce, &msg[116..132], &sealed).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Valid,
    ValidMac2,
    BadMac1,
    BadMac2,
    Junk,
}

#[test]
fn burst_screen_matches_one_message_at_a_time() {
    const SEED: u64 = 77;
    let (one, mut rng_one) = device(SEED);
    let (many, mut rng_many) = device(SEED);
    let pk = one.public_key().unwrap();
    let mac1_key = hash(&[WG_LABEL_MAC1, &pk]);
    let mut gen = ChaCha20Rng::seed_from_u64(5);
    // Sources with a cookie (from the first secret, so only until it is replaced at 120 s).
    let cookie_srcs: Vec<SocketAddr> = (0..6).map(|_| source(&mut gen, 1 << 16)).collect();
    let cookies: Vec<[u8; COOKIE_LEN]> =
        cookie_srcs.iter().map(|s| cookie_of(SEED, *s, Timestamp::from_secs(1), &mut gen)).collect();
    let (mut out_one, mut out_many) = (Output::with_capacity(64), Output::with_capacity(64));
    let mut results = Vec::new();
    let mut counts = [0usize; 8];
    let mut now = Timestamp::from_secs(1);
    for round in 0..1500 {
        now = now + Duration::from_millis(u64::from(gen.next_u32() % 400));
        let under_load = !gen.next_u32().is_multiple_of(4);
        let n = 1 + (gen.next_u32() % 40) as usize;
        let mut burst: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = if gen.next_u32() % 3 == 0 { RESPONSE_LEN } else { INITIATION_LEN };
            let kind = [Kind::Valid, Kind::Valid, Kind::ValidMac2, Kind::BadMac1, Kind::BadMac2, Kind::Junk]
                [(gen.next_u32() % 6) as usize];
            let (src, msg) = match kind {
                Kind::Valid => (source(&mut gen, 1 << 20), handshake(&mut gen, &mac1_key, len, None)),
                Kind::ValidMac2 | Kind::BadMac2 => {
                    let k = (gen.next_u32() as usize) % cookies.len();
                    let mut m = handshake(&mut gen, &mac1_key, len, Some(&cookies[k]));
                    if matches!(kind, Kind::BadMac2) {
                        m[len - 1 - (gen.next_u32() % 16) as usize] ^= 1 << (gen.next_u32() % 8);
                    }
                    (cookie_srcs[k], m)
                }
                Kind::BadMac1 => {
                    let mut m = handshake(&mut gen, &mac1_key, len, None);
                    m[(gen.next_u32() as usize) % (len - 16)] ^= 1 << (gen.next_u32() % 8);
                    (source(&mut gen, 1 << 20), m)
                }
                Kind::Junk => {
                    let lens = [0, 1, 3, 4, 63, 64, 65, 91, 92, 93, 147, 148, 149, 200];
                    let mut m = vec![0u8; lens[(gen.next_u32() as usize) % lens.len()]];
                    gen.fill_bytes(&mut m);
                    if m.len() >= 4 && gen.next_u32().is_multiple_of(2) {
                        m[0] = 1 + (gen.next_u32() % 4) as u8;
                        m[1..4].fill(0);
                    }
                    (source(&mut gen, 1 << 20), m)
                }
            };
            counts[kind as usize] += 1;
            burst.push((src, msg));
        }
        let expected: Vec<Result<Screened, DropReason>> = burst
            .iter()
            .map(|(src, m)| one.screen_handshake(now, &mut rng_one, *src, m, under_load, &mut out_one))
            .collect();
        let items: Vec<(SocketAddr, &[u8])> = burst.iter().map(|(s, m)| (*s, &m[..])).collect();
        many.screen_handshakes(now, &mut rng_many, &items, under_load, &mut out_many, &mut results);
        assert_eq!(results, expected, "round {round}");
        let sent = |o: &Output| o.transmits.iter().map(|t| (t.peer, t.to, t.payload().to_vec())).collect::<Vec<_>>();
        assert_eq!(sent(&out_many), sent(&out_one), "round {round}: replies");
        assert_eq!(out_many.stats, out_one.stats, "round {round}: counters");
        assert_eq!(rng_many.get_word_pos(), rng_one.get_word_pos(), "round {round}: random numbers");
        for (r, _) in expected.iter().zip(0..) {
            let k = match r {
                Ok(Screened::Admitted { cookie_checked: false }) => 5,
                Ok(Screened::Admitted { cookie_checked: true }) => 6,
                Err(DropReason::RateLimited) => 7,
                _ => 0,
            };
            counts[k] += 1;
        }
        out_one.transmits.clear();
        out_many.transmits.clear();
    }
    // Every outcome occurred: the comparison covered each path.
    let s = &out_one.stats;
    assert!(s.cookies_sent > 1000 && s.mac1_valid > 1000, "{s:?}");
    assert!(counts[5] > 100 && counts[6] > 100 && counts[7] > 10, "{counts:?}");
    assert!(s.drops.iter().filter(|&&d| d > 0).count() >= 3, "{s:?}");
}

#[test]
fn burst_screen_sees_a_single_wrong_bit() {
    // The comparison above would pass if both paths ignored a MAC: check the batch alone.
    let (dev, mut rng) = device(3);
    let mac1_key = hash(&[WG_LABEL_MAC1, &dev.public_key().unwrap()]);
    let mut gen = ChaCha20Rng::seed_from_u64(9);
    let src = source(&mut gen, 100);
    let good: Vec<Vec<u8>> = (0..11).map(|_| handshake(&mut gen, &mac1_key, INITIATION_LEN, None)).collect();
    let mut out = Output::with_capacity(16);
    let mut results = Vec::new();
    for bad in 0..good.len() {
        let mut msgs = good.clone();
        msgs[bad][7] ^= 0x10;
        let items: Vec<(SocketAddr, &[u8])> = msgs.iter().map(|m| (src, &m[..])).collect();
        dev.screen_handshakes(Timestamp::from_secs(2), &mut rng, &items, false, &mut out, &mut results);
        for (i, r) in results.iter().enumerate() {
            if i == bad {
                assert_eq!(*r, Err(DropReason::InvalidMac1));
            } else {
                assert_eq!(*r, Ok(Screened::Admitted { cookie_checked: false }), "message {i}, bad {bad}");
            }
        }
    }
}
