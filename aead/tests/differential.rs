//! Differential test against ring 0.17's ChaCha20-Poly1305: at least 1,000,000 random lanes per
//! backend this CPU runs, in random bursts (1 to 16 lanes; random keys, some shared; random
//! counters; lengths 0 to 1500; some lanes with additional data; an eighth of the bursts with 8
//! or more lanes of one length and no additional data among others; a quarter of the others in
//! WireGuard's shape: one length, no additional data; half of those a multiple of 16, the others
//! any length, 1420 often: WireGuard pads to 16 bytes but not past the MTU). Every burst is
//! sealed and compared with ring, then opened with some tags, ciphertexts or (outside
//! WireGuard's shape) additional data corrupted: those lanes must fail (as ring fails them) and
//! keep their ciphertext. Seeded (rand_chacha) per backend, so a failure
//! names a seed and burst that reproduce it.
#![forbid(unsafe_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use wgpmd_aead::{Backend, Lane, Lanes, MAX_LANES};

const LANES_PER_BACKEND: usize = 1_000_000;
const MAX_LEN: usize = 1500;

struct Msg {
    key: [u8; 32],
    nonce: [u8; 12],
    aad: Vec<u8>,
    plain: Vec<u8>,
}

fn ring_key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("key"))
}

/// A length: mostly uniform in 0..=1500, with the block edges and WireGuard's sizes often.
fn length(rng: &mut ChaCha8Rng) -> usize {
    match rng.gen_range(0..8) {
        0 => [0, 1, 15, 16, 17, 63, 64, 65, 128, 1420, 1440, 1500][rng.gen_range(0..12)],
        1 => rng.gen_range(0..=4) * 16,
        _ => rng.gen_range(0..=MAX_LEN),
    }
}

fn run(backend: Backend, seed: u64) -> usize {
    let Some(engine) = Lanes::with_backend(backend) else { return 0 };
    let name = backend.name();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut key_pool = [[0u8; 32]; 4];
    let mut lanes_done = 0;
    let mut burst_no = 0u64;
    while lanes_done < LANES_PER_BACKEND {
        burst_no += 1;
        for k in key_pool.iter_mut() {
            rng.fill(&mut k[..]);
        }
        // An eighth of the bursts: a major class, 8 lanes or more of one length without
        // additional data among others, which the SIMD backends run as two calls (the class on
        // the fused kernel, the others apart) and puts back in order.
        let major_len = rng.gen_bool(0.125).then(|| if rng.gen_bool(0.5) { 1420 } else { rng.gen_range(0..=MAX_LEN) });
        let n = if major_len.is_some() { rng.gen_range(9..=MAX_LANES) } else { rng.gen_range(1..=MAX_LANES) };
        let class: u16 = match major_len {
            Some(_) => {
                let m = rng.gen_range(8..n);
                rand::seq::index::sample(&mut rng, n, m).iter().fold(0, |c, i| c | 1 << i)
            }
            None => 0,
        };
        // A quarter of the others have WireGuard's shape (one length, no additional data): the
        // fused AVX-512 and AVX2 paths take those. Half of them padded to 16 bytes, half of any length
        // (a full-MTU packet is not padded: 1420 bytes).
        let wg_len = (major_len.is_none() && rng.gen_bool(0.25)).then(|| match rng.gen_range(0..4) {
            0 => rng.gen_range(0..=16) * 16,
            1 => rng.gen_range(0..=94) * 16,
            2 => [1420, 1, 15, 17, 100, 1419][rng.gen_range(0..6)],
            _ => rng.gen_range(0..=MAX_LEN),
        });
        let in_class = |i: usize| class >> i & 1 != 0;
        let msgs: Vec<Msg> = (0..n)
            .map(|i| {
                let key = if rng.gen_bool(0.5) { key_pool[rng.gen_range(0..4)] } else { rng.gen() };
                let nonce = if rng.gen_bool(0.9) { wgpmd_aead::wireguard_nonce(rng.gen()) } else { rng.gen() };
                let shaped = wg_len.is_some() || in_class(i);
                let aad_len = if !shaped && rng.gen_bool(0.1) { rng.gen_range(0..=64) } else { 0 };
                let mut aad = vec![0u8; aad_len];
                rng.fill(&mut aad[..]);
                let len = match (wg_len, in_class(i)) {
                    (Some(len), _) => len,
                    (None, true) => major_len.unwrap_or(0),
                    (None, false) => length(&mut rng),
                };
                let mut plain = vec![0u8; len];
                rng.fill(&mut plain[..]);
                Msg { key, nonce, aad, plain }
            })
            .collect();
        let at = format!("{name}, seed {seed}, burst {burst_no}");

        // Seal with the engine and with ring.
        let mut bufs: Vec<Vec<u8>> = msgs.iter().map(|m| m.plain.clone()).collect();
        let mut lanes: Vec<Lane<'_>> =
            msgs.iter().zip(bufs.iter_mut()).map(|(m, b)| Lane::new(&m.key, m.nonce, &m.aad, b)).collect();
        engine.seal_lanes(&mut lanes).unwrap();
        let mut tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
        drop(lanes);
        for (i, (m, (b, t))) in msgs.iter().zip(bufs.iter().zip(&tags)).enumerate() {
            let mut want = m.plain.clone();
            let tag = ring_key(&m.key)
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(m.nonce), Aad::from(&m.aad[..]), &mut want)
                .unwrap();
            assert!(
                b == &want && t[..] == *tag.as_ref(),
                "{at}: lane {i} (len {}) seal differs from ring",
                m.plain.len()
            );
        }

        // Corrupt some lanes: a tag bit, a ciphertext bit, or the additional data.
        let mut aads: Vec<Vec<u8>> = msgs.iter().map(|m| m.aad.clone()).collect();
        let mut bad = 0u16;
        for i in 0..n {
            match rng.gen_range(0..8) {
                0 => tags[i][rng.gen_range(0..16)] ^= 1 << rng.gen_range(0..8),
                1 if !bufs[i].is_empty() => {
                    let len = bufs[i].len();
                    bufs[i][rng.gen_range(0..len)] ^= 1 << rng.gen_range(0..8);
                }
                // Only outside WireGuard's shape: additional data would send the open down the
                // general path, and the fused one must be checked on failing lanes too.
                2 if wg_len.is_none() && !in_class(i) => aads[i].push(rng.gen()),
                _ => continue,
            }
            bad |= 1 << i;
        }
        let sent = bufs.clone();
        let mut lanes: Vec<Lane<'_>> = msgs
            .iter()
            .zip(bufs.iter_mut())
            .zip(&tags)
            .zip(&aads)
            .map(|(((m, b), t), a)| Lane { tag: *t, ..Lane::new(&m.key, m.nonce, a, b) })
            .collect();
        let ok = engine.open_lanes(&mut lanes).unwrap();
        // Every lane where it was (a split burst is put back in order): its tag and its
        // additional data, which the call does not change.
        for (i, l) in lanes.iter().enumerate() {
            assert!(l.tag == tags[i] && core::ptr::eq(l.aad, &aads[i][..]), "{at}: lane {i} moved by open");
        }
        drop(lanes);
        let all = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
        assert_eq!(ok, all & !bad, "{at}: open verdicts");
        for (i, m) in msgs.iter().enumerate() {
            let mut ring_buf = sent[i].clone();
            let ring_ok = ring_key(&m.key)
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(m.nonce),
                    Aad::from(&aads[i][..]),
                    Tag::from(tags[i]),
                    &mut ring_buf,
                    0..,
                )
                .is_ok();
            assert_eq!(ring_ok, ok & (1 << i) != 0, "{at}: lane {i} verdict differs from ring");
            if ring_ok {
                assert_eq!(bufs[i], m.plain, "{at}: lane {i} plaintext");
            } else {
                assert_eq!(bufs[i], sent[i], "{at}: failed lane {i} was released");
            }
        }
        lanes_done += n;
    }
    lanes_done
}

#[test]
fn differential_avx512() {
    let n = run(Backend::Avx512, 0xa512);
    assert!(n >= LANES_PER_BACKEND || !Backend::Avx512.is_supported());
}

#[test]
fn differential_avx2() {
    let n = run(Backend::Avx2, 0xa2);
    assert!(n >= LANES_PER_BACKEND || !Backend::Avx2.is_supported());
}

#[test]
fn differential_portable() {
    assert!(run(Backend::Portable, 0x9017) >= LANES_PER_BACKEND);
}
