//! The kernels on their own and at their edges, on every backend this CPU runs: raw Poly1305
//! (any length, the 0x01-padded last block) against RustCrypto's `poly1305`, with extreme keys and
//! messages that push the limbs to their bounds; ChaCha20 blocks at edge counters against the
//! reference; long messages (up to 65535 bytes) among short ones against ring; bursts of
//! WireGuard's shape at every lane count and the lengths where blocks end, against ring.
#![forbid(unsafe_code)]

use poly1305::universal_hash::KeyInit;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use wgpmd_aead::{fuzzing, portable, Backend, Lane, Lanes, MAX_LANES};

fn backends() -> impl Iterator<Item = Backend> {
    Backend::ALL.into_iter().filter(|b| b.is_supported())
}

fn rustcrypto_poly1305(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    poly1305::Poly1305::new(key.into()).compute_unpadded(msg).into()
}

/// Keys and messages that stress the limbs: the largest clamped `r`, `s` all ones, messages of
/// all-ones blocks (the largest `h + m`), and zeros.
fn extreme_key(rng: &mut ChaCha8Rng) -> [u8; 32] {
    let mut k = [0u8; 32];
    match rng.gen_range(0..4) {
        0 => k = [0xff; 32],
        1 => k[16..].fill(0xff),
        2 => {
            k = [0xff; 32];
            k[..16].fill(0);
            k[0] = 1;
        }
        _ => rng.fill(&mut k[..]),
    }
    k
}

#[test]
fn raw_poly1305_random_and_extreme() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x9013);
    for backend in backends() {
        for round in 0..400 {
            let n = rng.gen_range(1..=MAX_LANES);
            let inputs: Vec<([u8; 32], Vec<u8>)> = (0..n)
                .map(|_| {
                    let key = if round % 2 == 0 { extreme_key(&mut rng) } else { rng.gen() };
                    let len = rng.gen_range(0..=2000);
                    let msg = match rng.gen_range(0..3) {
                        0 => vec![0xff; len],
                        1 => vec![0; len],
                        _ => (0..len).map(|_| rng.gen()).collect(),
                    };
                    (key, msg)
                })
                .collect();
            let macs: Vec<([u8; 32], &[u8])> = inputs.iter().map(|(k, m)| (*k, &m[..])).collect();
            let tags = fuzzing::poly1305(backend, &macs).expect("supported");
            for (i, (t, (k, m))) in tags.iter().zip(&inputs).enumerate() {
                assert_eq!(*t, rustcrypto_poly1305(k, m), "{} round {round} lane {i} len {}", backend.name(), m.len());
            }
        }
    }
}

#[test]
fn chacha20_blocks_at_edge_counters() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc4a);
    for backend in backends() {
        for _ in 0..200 {
            let n = rng.gen_range(1..=MAX_LANES);
            let blocks: Vec<([u8; 32], [u8; 12], u32)> = (0..n)
                .map(|_| {
                    let c = [0, 1, u32::MAX, u32::MAX - 1, 1 << 31, rng.gen()][rng.gen_range(0..6)];
                    (rng.gen(), rng.gen(), c)
                })
                .collect();
            let out = fuzzing::chacha20_blocks(backend, &blocks).expect("supported");
            for (o, (k, nonce, c)) in out.iter().zip(&blocks) {
                assert_eq!(o, &portable::chacha20_block(k, *c, nonce), "{} counter {c}", backend.name());
            }
        }
    }
}

#[test]
fn long_messages_among_short_ones() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x10c);
    for backend in backends() {
        let engine = Lanes::with_backend(backend).expect("supported");
        for round in 0..6 {
            let n = if round == 0 { MAX_LANES } else { rng.gen_range(2..=MAX_LANES) };
            let keys: Vec<[u8; 32]> = (0..n).map(|_| rng.gen()).collect();
            let plains: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let len = if i % 5 == 0 { rng.gen_range(60_000..=65_535) } else { rng.gen_range(0..100) };
                    (0..len).map(|_| rng.gen()).collect()
                })
                .collect();
            let mut bufs = plains.clone();
            let mut lanes: Vec<Lane<'_>> =
                bufs.iter_mut().zip(&keys).enumerate().map(|(i, (b, k))| Lane::wireguard(k, i as u64, b)).collect();
            engine.seal_lanes(&mut lanes).unwrap();
            let tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
            drop(lanes);
            for i in 0..n {
                let mut want = plains[i].clone();
                let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys[i]).unwrap());
                let nonce = Nonce::assume_unique_for_key(wgpmd_aead::wireguard_nonce(i as u64));
                let tag = key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut want).unwrap();
                assert!(bufs[i] == want && tags[i][..] == *tag.as_ref(), "{} lane {i}", backend.name());
            }
            let mut lanes: Vec<Lane<'_>> = bufs
                .iter_mut()
                .zip(&keys)
                .zip(&tags)
                .enumerate()
                .map(|(i, ((b, k), t))| Lane { tag: *t, ..Lane::wireguard(k, i as u64, b) })
                .collect();
            let ok = engine.open_lanes(&mut lanes).unwrap();
            drop(lanes);
            assert_eq!(ok.count_ones() as usize, n, "{}", backend.name());
            assert_eq!(bufs, plains, "{}", backend.name());
        }
    }
}

/// Bursts of WireGuard's shape (every lane one length, no additional data: the fused kernels'
/// input on AVX-512 and AVX2, and the general path's for one lane longer than 768 bytes) at every
/// lane count and at the lengths where blocks and vectors end: sealed as ring seals each
/// message, opened back, and a corrupted tag in one lane fails that lane alone and leaves its
/// ciphertext as it was.
#[test]
fn uniform_bursts_at_edge_lengths_and_every_lane_count() {
    const LENS: [usize; 17] = [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 511, 767, 768, 769, 1419, 1420, 1504];
    let mut rng = ChaCha8Rng::seed_from_u64(0xed9e);
    for backend in backends() {
        let engine = Lanes::with_backend(backend).expect("supported");
        for n in 1..=MAX_LANES {
            for len in LENS {
                let keys: Vec<[u8; 32]> = (0..n).map(|_| rng.gen()).collect();
                let ctr: u64 = rng.gen();
                let plains: Vec<Vec<u8>> = (0..n).map(|_| (0..len).map(|_| rng.gen()).collect()).collect();
                let mut bufs = plains.clone();
                let mut lanes: Vec<Lane<'_>> = bufs
                    .iter_mut()
                    .zip(&keys)
                    .enumerate()
                    .map(|(i, (b, k))| Lane::wireguard(k, ctr.wrapping_add(i as u64), b))
                    .collect();
                engine.seal_lanes(&mut lanes).unwrap();
                let mut tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
                drop(lanes);
                for i in 0..n {
                    let mut want = plains[i].clone();
                    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys[i]).unwrap());
                    let nonce = Nonce::assume_unique_for_key(wgpmd_aead::wireguard_nonce(ctr.wrapping_add(i as u64)));
                    let tag = key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut want).unwrap();
                    assert!(
                        bufs[i] == want && tags[i][..] == *tag.as_ref(),
                        "{} {n} lanes of {len}: lane {i}",
                        backend.name()
                    );
                }
                let bad = rng.gen_range(0..n);
                tags[bad][rng.gen_range(0..16)] ^= 1 << rng.gen_range(0..8);
                let sealed = bufs.clone();
                let mut lanes: Vec<Lane<'_>> = bufs
                    .iter_mut()
                    .zip(&keys)
                    .zip(&tags)
                    .enumerate()
                    .map(|(i, ((b, k), t))| Lane { tag: *t, ..Lane::wireguard(k, ctr.wrapping_add(i as u64), b) })
                    .collect();
                let ok = engine.open_lanes(&mut lanes).unwrap();
                drop(lanes);
                let all = (1u32 << n) - 1;
                assert_eq!(u32::from(ok), all & !(1 << bad), "{} {n} lanes of {len}", backend.name());
                for i in 0..n {
                    let want = if i == bad { &sealed[i] } else { &plains[i] };
                    assert!(bufs[i] == *want, "{} {n} lanes of {len}: lane {i} (bad {bad})", backend.name());
                }
            }
        }
    }
}
