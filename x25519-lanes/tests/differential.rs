//! Differential tests: every backend this CPU supports against x25519-dalek (an implementation
//! we did not write) and against each other, on random and edge-case inputs in batches of random
//! sizes; and the independence of lanes.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_x25519::{x25519, Backend, LANES};

/// Random (scalar, u) pairs checked per backend: 100,000, or `WGPMD_X25519_PAIRS` (the run
/// under an emulated CPU in scripts/test.sh takes fewer: emulation is ~50 times slower).
fn pairs() -> usize {
    std::env::var("WGPMD_X25519_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn backends() -> Vec<Backend> {
    let b: Vec<Backend> = Backend::ALL.into_iter().filter(|b| b.is_supported()).collect();
    eprintln!("backends under test: {:?}", b.iter().map(|b| b.name()).collect::<Vec<_>>());
    b
}

fn dalek(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*k, *u)
}

/// p = 2^255 - 19, little-endian.
fn p_plus(d: u8) -> [u8; 32] {
    let mut p = [0xffu8; 32];
    p[31] = 0x7f;
    p[0] = 0xed;
    // d < 19: no carry out of byte 0.
    p[0] = p[0].wrapping_add(d);
    p
}

/// A u-coordinate: mostly uniform, often an edge case (0, 1, p-1, p..2^255-1, top bit set,
/// low-order points of order 8, values near 2^255).
fn edge_u(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut u = [0u8; 32];
    rng.fill_bytes(&mut u);
    match rng.gen_range(0..16) {
        0 => [0; 32],
        1 => {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }
        2 => p_plus(0),
        3 => {
            // p - 1
            let mut p = p_plus(0);
            p[0] -= 1;
            p
        }
        4 => p_plus(rng.gen_range(0..19)), // p .. p + 18 (non-canonical)
        5 => {
            // 2^255 - 1 - small, with the top bit set or not
            let mut m = [0xffu8; 32];
            m[0] = 0xff - rng.gen_range(0..19);
            if rng.gen() {
                m[31] = 0x7f;
            }
            m
        }
        6 => {
            u[31] |= 0x80; // top bit set (ignored)
            u
        }
        7 => {
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap().try_into().unwrap()
        }
        8 => {
            hex::decode("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157").unwrap().try_into().unwrap()
        }
        _ => u,
    }
}

fn random_scalar(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut k = [0u8; 32];
    rng.fill_bytes(&mut k);
    k
}

#[test]
fn every_backend_matches_x25519_dalek_and_each_other() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x7748);
    let pairs = pairs();
    let mut ks = Vec::with_capacity(pairs);
    let mut us = Vec::with_capacity(pairs);
    let mut zeros = 0;
    for _ in 0..pairs {
        ks.push(random_scalar(&mut rng));
        us.push(edge_u(&mut rng));
    }
    let want: Vec<[u8; 32]> = ks.iter().zip(&us).map(|(k, u)| dalek(k, u)).collect();
    let mut results = Vec::new();
    for b in backends() {
        let mut out = vec![[0u8; 32]; pairs];
        let mut i = 0;
        while i < pairs {
            let n = rng.gen_range(1..=20).min(pairs - i);
            b.x25519_many(&ks[i..i + n], &us[i..i + n], &mut out[i..i + n]).unwrap();
            i += n;
        }
        for j in 0..pairs {
            assert_eq!(out[j], want[j], "{}: pair {j}: k={} u={}", b.name(), hex::encode(ks[j]), hex::encode(us[j]));
        }
        results.push(out);
    }
    // Every backend gave the same bytes (IFMA against portable where both run).
    for r in &results[1..] {
        assert!(r == &results[0]);
    }
    zeros += want.iter().filter(|w| **w == [0; 32]).count();
    // The edge cases were drawn: low-order points (all-zero results) are among the inputs.
    assert!(zeros > pairs / 16, "{zeros} all-zero results");
}

#[test]
fn a_lane_does_not_depend_on_its_neighbours() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for b in backends() {
        for _ in 0..20 {
            let k = random_scalar(&mut rng);
            let u = edge_u(&mut rng);
            let want = x25519(&k, &u);
            // The pair at every position of a batch of 2·LANES, the others random each time.
            for pos in [0, 1, LANES - 1, LANES, 2 * LANES - 1] {
                let mut ks: Vec<[u8; 32]> = (0..2 * LANES).map(|_| random_scalar(&mut rng)).collect();
                let mut us: Vec<[u8; 32]> = (0..2 * LANES).map(|_| edge_u(&mut rng)).collect();
                ks[pos] = k;
                us[pos] = u;
                let mut out = vec![[0u8; 32]; 2 * LANES];
                b.x25519_many(&ks, &us, &mut out).unwrap();
                assert_eq!(out[pos], want, "{} pos {pos}", b.name());
            }
        }
    }
}
