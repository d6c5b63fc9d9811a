//! The BLAKE2s lanes (`wgpmd_aead::blake2s`) against RFC 7693's vector, the BLAKE2 keyed known
//! answers, and two independent implementations (`blake2` 0.10's `Blake2sMac`, `blake2s_simd`'s
//! keyed hashing), on every backend this CPU runs, each forced in turn, and the one-job call
//! (`mac_one`) the same way.

use blake2::digest::{FixedOutput, KeyInit, Update};
use rand::{Rng, SeedableRng};
use wgpmd_aead::blake2s::{mac_one, Error, KeyedState, MacJob, Start, MAX_LEN};
use wgpmd_aead::{Backend, Lanes, MAX_LANES};

/// The engines of every backend this CPU runs (none skipped that CPUID offers); the detected one
/// is among them.
fn engines() -> Vec<Lanes> {
    let e: Vec<Lanes> = Backend::ALL.into_iter().filter_map(Lanes::with_backend).collect();
    assert!(e.iter().any(|l| l.backend() == Backend::Portable));
    assert!(e.iter().any(|l| l.backend() == Backend::detect()));
    #[cfg(target_arch = "x86_64")]
    {
        let has = |b| e.iter().any(|l: &Lanes| l.backend() == b);
        assert_eq!(has(Backend::Avx2), std::is_x86_feature_detected!("avx2"));
        assert_eq!(
            has(Backend::Avx512),
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512ifma")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx2")
        );
    }
    e
}

fn simd_mac(key: &[u8], out_len: usize, input: &[u8]) -> Vec<u8> {
    blake2s_simd::Params::new().hash_length(out_len).key(key).hash(input).as_bytes().to_vec()
}

fn rustcrypto_mac(key: &[u8], out_len: usize, input: &[u8]) -> Option<Vec<u8>> {
    use blake2::digest::consts::{U16, U32};
    match out_len {
        16 => {
            let mut m = <blake2::Blake2sMac<U16> as KeyInit>::new_from_slice(key).ok()?;
            m.update(input);
            Some(m.finalize_fixed().to_vec())
        }
        32 => {
            let mut m = <blake2::Blake2sMac<U32> as KeyInit>::new_from_slice(key).ok()?;
            m.update(input);
            Some(m.finalize_fixed().to_vec())
        }
        _ => None,
    }
}

fn one(engine: &Lanes, start: Start<'_>, input: &[u8]) -> Vec<u8> {
    let mut jobs = [MacJob { start, input, out: [0xaa; MAX_LEN] }];
    engine.mac_lanes(&mut jobs).unwrap();
    let n = jobs[0].out_len();
    assert!(jobs[0].out[n..].iter().all(|&b| b == 0));
    jobs[0].out[..n].to_vec()
}

/// RFC 7693 Appendix B: BLAKE2s-256("abc"), unkeyed (a raw start with an empty key).
#[test]
fn rfc7693_abc() {
    let want = hex::decode("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982").unwrap();
    for e in engines() {
        assert_eq!(one(&e, Start::Key { key: &[], out_len: 32 }, b"abc"), want, "{:?}", e.backend());
    }
}

/// The first entries of the BLAKE2 reference's keyed known answers (blake2s-kat.txt): key
/// 00 01 .. 1f, input 00 01 .. (n-1) for n = 0, 1, 2, 3; every start (raw key, precomputed
/// state; the empty input is the precomputed state's fallback), and `blake2s_simd` agrees.
#[test]
fn blake2s_keyed_kat_first_entries() {
    let key: Vec<u8> = (0u8..32).collect();
    let want = [
        "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49",
        "40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1",
        "6bb71300644cd3991b26ccd4d274acd1adeab8b1d7914546c1198bbe9fc9d803",
        "1d220dbe2ee134661fdf6d9e74b41704710556f2f6e5a091b227697445dbea6b",
    ];
    let st = KeyedState::new(&key, 32).unwrap();
    for (n, w) in want.iter().enumerate() {
        let input: Vec<u8> = (0..n as u8).collect();
        let w = hex::decode(w).unwrap();
        assert_eq!(simd_mac(&key, 32, &input), w, "n {n}");
        for e in engines() {
            assert_eq!(one(&e, Start::Key { key: &key, out_len: 32 }, &input), w, "{:?} n {n}", e.backend());
            assert_eq!(one(&e, Start::Keyed(&st), &input), w, "{:?} n {n}", e.backend());
        }
    }
}

/// A random job: key 1..=32 bytes (sometimes 0 for the raw start: the unkeyed hash), input
/// 0..=300 bytes, output 16 or 32 bytes (or any of 1..=32), half of them from a precomputed
/// state.
struct Spec {
    key: Vec<u8>,
    out_len: usize,
    input: Vec<u8>,
    state: Option<KeyedState>,
}

fn spec(rng: &mut impl Rng) -> Spec {
    let keyed = rng.gen_bool(0.5);
    let key_len = if keyed { rng.gen_range(1..=32) } else { [0, 1, 16, 31, 32, 7][rng.gen_range(0..6)] };
    let key: Vec<u8> = (0..key_len).map(|_| rng.gen()).collect();
    let out_len = if rng.gen_bool(0.9) { [16, 32][rng.gen_range(0..2)] } else { rng.gen_range(1..=32) };
    let len = match rng.gen_range(0..4) {
        0 => [0, 1, 63, 64, 65, 127, 128, 129, 192, 256][rng.gen_range(0..10)],
        _ => rng.gen_range(1..=300),
    };
    let input = (0..len).map(|_| rng.gen()).collect();
    let state = keyed.then(|| KeyedState::new(&key, out_len).unwrap());
    Spec { key, out_len, input, state }
}

fn check_batch(e: &Lanes, specs: &[Spec]) {
    for chunk in specs.chunks(MAX_LANES) {
        let mut jobs: Vec<MacJob<'_>> = chunk
            .iter()
            .map(|s| match &s.state {
                Some(st) => MacJob::keyed(st, &s.input),
                None => MacJob::key(&s.key, s.out_len, &s.input),
            })
            .collect();
        e.mac_lanes(&mut jobs).unwrap();
        for (j, s) in jobs.iter().zip(chunk) {
            let want = simd_mac(&s.key, s.out_len, &s.input);
            let ctx = format!("{:?} key {} out {} input {}", e.backend(), s.key.len(), s.out_len, s.input.len());
            assert_eq!(&j.out[..s.out_len], &want[..], "{ctx}");
            assert!(j.out[s.out_len..].iter().all(|&b| b == 0), "{ctx}");
            if let Some(r) = rustcrypto_mac(&s.key, s.out_len, &s.input).filter(|_| !s.key.is_empty()) {
                assert_eq!(r, want, "{ctx}");
            }
            // The one-job call, from the same start.
            let mut single = MacJob { start: j.start, input: j.input, out: [0xaa; MAX_LEN] };
            mac_one(&mut single).unwrap();
            assert_eq!(&single.out[..s.out_len], &want[..], "mac_one {ctx}");
            assert!(single.out[s.out_len..].iter().all(|&b| b == 0), "mac_one {ctx}");
        }
    }
}

/// Every lane count from 0 to 16 and calls of up to 40 jobs (several calls), lanes of mixed
/// lengths, keys, output lengths and starts, on every backend; 2,000 batches each.
#[test]
fn lanes_match_blake2_and_blake2s_simd() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7693);
    let mut jobs = 0usize;
    for e in engines() {
        for round in 0..2000usize {
            let count = if round < 17 * 20 { round % 17 } else { rng.gen_range(0..=40) };
            let specs: Vec<Spec> = (0..count).map(|_| spec(&mut rng)).collect();
            check_batch(&e, &specs);
            jobs += count;
        }
    }
    assert!(jobs > 10_000);
}

/// The WireGuard shapes: one key for every lane (16 and 32 bytes, MAC of 16 bytes) over
/// 116- and 132-byte inputs (mac1, mac2) and 6- and 18-byte ones (a source's cookie), full and
/// partial bursts, precomputed and raw.
#[test]
fn wireguard_shapes() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(148);
    for e in engines() {
        for key_len in [16usize, 32] {
            for len in [6usize, 18, 116, 132] {
                for count in [1usize, 7, 8, 9, 15, 16] {
                    let key: Vec<u8> = (0..key_len).map(|_| rng.gen()).collect();
                    let st = KeyedState::new(&key, 16).unwrap();
                    let specs: Vec<Spec> = (0..count)
                        .map(|i| Spec {
                            key: key.clone(),
                            out_len: 16,
                            input: (0..len).map(|_| rng.gen()).collect(),
                            state: (i % 3 != 2).then(|| st.clone()),
                        })
                        .collect();
                    check_batch(&e, &specs);
                }
            }
        }
    }
}

/// Out-of-range calls are refused and write nothing.
#[test]
fn bad_calls_are_refused() {
    let key = [1u8; 33];
    assert_eq!(KeyedState::new(&[], 16).unwrap_err(), Error::KeyLength { len: 0 });
    assert_eq!(KeyedState::new(&key, 16).unwrap_err(), Error::KeyLength { len: 33 });
    assert_eq!(KeyedState::new(&key[..32], 0).unwrap_err(), Error::OutputLength { len: 0 });
    assert_eq!(KeyedState::new(&key[..32], 33).unwrap_err(), Error::OutputLength { len: 33 });
    assert_eq!(KeyedState::new(&key[..32], 20).unwrap().out_len(), 20);
    for e in engines() {
        let mut jobs: Vec<MacJob<'_>> = (0..17).map(|_| MacJob::key(&key[..32], 16, b"x")).collect();
        assert_eq!(e.mac_lanes(&mut jobs), Err(Error::TooManyJobs { count: 17 }));
        assert!(jobs.iter().all(|j| j.out == [0; MAX_LEN]));
        for (k, o, err) in [
            (33, 16, Error::KeyLength { len: 33 }),
            (32, 0, Error::OutputLength { len: 0 }),
            (32, 33, Error::OutputLength { len: 33 }),
        ] {
            let mut jobs = [MacJob::key(&key[..32], 16, b"a"), MacJob::key(&key[..k], o, b"b")];
            assert_eq!(e.mac_lanes(&mut jobs), Err(err));
            assert!(jobs.iter().all(|j| j.out == [0; MAX_LEN]));
            let mut single = MacJob::key(&key[..k], o, b"b");
            assert_eq!(mac_one(&mut single), Err(err));
            assert_eq!(single.out, [0; MAX_LEN]);
        }
        let mut none: [MacJob<'_>; 0] = [];
        assert_eq!(e.mac_lanes(&mut none), Ok(()));
    }
}
