//! HChaCha20 in lanes (`wgpmd_aead::hchacha`) against draft-irtf-cfrg-xchacha's test vector and
//! RustCrypto's `chacha20::hchacha` (an independent implementation), on every backend this CPU
//! runs, each forced in turn, for every lane count.

use chacha20::cipher::consts::U10;
use chacha20::cipher::generic_array::GenericArray;
use rand::{Rng, SeedableRng};
use wgpmd_aead::hchacha::{hchacha, HChaCha};
use wgpmd_aead::{Backend, Error, Lanes, MAX_LANES};

fn engines() -> Vec<Lanes> {
    let e: Vec<Lanes> = Backend::ALL.into_iter().filter_map(Lanes::with_backend).collect();
    assert!(e.iter().any(|l| l.backend() == Backend::Portable));
    assert!(e.iter().any(|l| l.backend() == Backend::detect()));
    e
}

fn rustcrypto(key: &[u8; 32], nonce: &[u8; 16]) -> [u8; 32] {
    chacha20::hchacha::<U10>(GenericArray::from_slice(key), GenericArray::from_slice(nonce)).into()
}

/// draft-irtf-cfrg-xchacha-03 §2.2.1.
#[test]
fn draft_vector() {
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let nonce: [u8; 16] = hex::decode("000000090000004a0000000031415927").unwrap().try_into().unwrap();
    let want = hex::decode("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc").unwrap();
    assert_eq!(hchacha(&key, &nonce).to_vec(), want);
    assert_eq!(rustcrypto(&key, &nonce).to_vec(), want);
    for e in engines() {
        let mut jobs = [HChaCha::new(&key, nonce)];
        e.hchacha_lanes(&mut jobs).unwrap();
        assert_eq!(jobs[0].out.to_vec(), want, "{:?}", e.backend());
    }
}

/// Every lane count from 0 to 16, random keys (some shared by several lanes) and nonces, the
/// counter word's extremes included; every backend against RustCrypto.
#[test]
fn lanes_match_rustcrypto() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2424);
    let mut checked = 0usize;
    for e in engines() {
        for round in 0..600usize {
            let n = round % (MAX_LANES + 1);
            let keys: Vec<[u8; 32]> = (0..n).map(|_| rng.gen()).collect();
            let nonces: Vec<[u8; 16]> = (0..n)
                .map(|i| {
                    let mut x: [u8; 16] = rng.gen();
                    match (round + i) % 5 {
                        0 => x[..4].fill(0xff),
                        1 => x[..4].fill(0),
                        _ => {}
                    }
                    x
                })
                .collect();
            let mut jobs: Vec<HChaCha<'_>> =
                (0..n).map(|i| HChaCha::new(if round % 3 == 0 { &keys[0] } else { &keys[i] }, nonces[i])).collect();
            e.hchacha_lanes(&mut jobs).unwrap();
            for j in &jobs {
                assert_eq!(j.out, rustcrypto(j.key, &j.nonce), "{:?} lanes {n}", e.backend());
                assert_eq!(hchacha(j.key, &j.nonce), j.out);
                checked += 1;
            }
        }
    }
    assert!(checked > 4000);
}

/// More than 16 jobs are refused and nothing is written.
#[test]
fn too_many_jobs_are_refused() {
    let key = [7u8; 32];
    for e in engines() {
        let mut jobs: Vec<HChaCha<'_>> = (0..MAX_LANES + 1).map(|_| HChaCha::new(&key, [1; 16])).collect();
        assert_eq!(e.hchacha_lanes(&mut jobs), Err(Error::TooManyLanes { count: MAX_LANES + 1 }));
        assert!(jobs.iter().all(|j| j.out == [0; 32]));
    }
}
