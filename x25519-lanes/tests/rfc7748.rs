//! RFC 7748's test vectors (sections 5.2 and 6.1, and the iterated test) on every backend this
//! CPU supports, each forced in turn.

use wgpmd_x25519::{backend, is_zero, x25519, x25519_many, Backend, Error, LANES};

fn unhex(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// The backends this CPU can run (the portable one always; IFMA where CPUID reports it).
fn backends() -> Vec<Backend> {
    let b: Vec<Backend> = Backend::ALL.into_iter().filter(|b| b.is_supported()).collect();
    eprintln!("backends under test: {:?}", b.iter().map(|b| b.name()).collect::<Vec<_>>());
    b
}

fn one(b: Backend, k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut out = [[0u8; 32]];
    b.x25519_many(&[*k], &[*u], &mut out).unwrap();
    out[0]
}

#[test]
fn section_5_2_vectors() {
    // (scalar, u, result); the second u has its top bit set (ignored).
    let v = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for b in backends() {
        for (k, u, r) in v {
            assert_eq!(one(b, &unhex(k), &unhex(u)), unhex(r), "{}", b.name());
        }
        // Both at once, in one batch.
        let ks = v.map(|(k, _, _)| unhex(k));
        let us = v.map(|(_, u, _)| unhex(u));
        let mut out = [[0u8; 32]; 2];
        b.x25519_many(&ks, &us, &mut out).unwrap();
        assert_eq!(out, v.map(|(_, _, r)| unhex(r)), "{}", b.name());
    }
}

#[test]
fn section_6_1_alice_and_bob() {
    let a = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let a_pub = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let b = unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let b_pub = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let k = unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    let mut nine = [0u8; 32];
    nine[0] = 9;
    for be in backends() {
        let mut out = [[0u8; 32]; 4];
        be.x25519_many(&[a, b, a, b], &[nine, nine, b_pub, a_pub], &mut out).unwrap();
        assert_eq!(out, [a_pub, b_pub, k, k], "{}", be.name());
    }
}

/// k = u = 9; each round: k, u = X25519(k, u), k. One lane per call (the rest are padding).
fn iterate(b: Backend, rounds: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = 9;
    let mut u = k;
    for _ in 0..rounds {
        let r = one(b, &k, &u);
        u = k;
        k = r;
    }
    k
}

#[test]
fn iterated_1_and_1000() {
    for b in backends() {
        assert_eq!(
            iterate(b, 1),
            unhex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
            "{}",
            b.name()
        );
        assert_eq!(
            iterate(b, 1000),
            unhex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
            "{}",
            b.name()
        );
    }
}

#[test]
fn dispatch_picks_ifma_exactly_when_the_cpu_has_it() {
    let ifma = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    assert_eq!(Backend::Ifma.is_supported(), ifma);
    assert_eq!(backend(), if ifma { "avx512ifma" } else { "portable" });
    assert_eq!(Backend::detect(), if ifma { Backend::Ifma } else { Backend::Portable });
    if !ifma {
        let mut out = [[0u8; 32]];
        assert_eq!(Backend::Ifma.x25519_many(&[[1; 32]], &[[9; 32]], &mut out), Err(Error::Unsupported(Backend::Ifma)));
        assert_eq!(out, [[0u8; 32]]);
    }
}

#[test]
fn length_mismatch_is_an_error_and_writes_nothing() {
    let mut out = [[7u8; 32]; 3];
    for b in backends() {
        let e = b.x25519_many(&[[1; 32]; 3], &[[9; 32]; 2], &mut out);
        assert_eq!(e, Err(Error::LengthMismatch { scalars: 3, points: 2, out: 3 }));
        let e = b.x25519_many(&[[1; 32]; 3], &[[9; 32]; 3], &mut out[..2]);
        assert_eq!(e, Err(Error::LengthMismatch { scalars: 3, points: 3, out: 2 }));
        assert_eq!(out, [[7u8; 32]; 3]);
        // Empty is fine.
        b.x25519_many(&[], &[], &mut []).unwrap();
    }
    assert_eq!(x25519_many(&[[1; 32]], &[], &mut []), Err(Error::LengthMismatch { scalars: 1, points: 0, out: 0 }));
}

#[test]
fn low_order_points_give_zero_and_is_zero_sees_it() {
    let k = unhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
    let low = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for b in backends() {
        let us: Vec<[u8; 32]> = low.iter().map(|u| unhex(u)).collect();
        let mut out = vec![[1u8; 32]; us.len()];
        b.x25519_many(&vec![k; us.len()], &us, &mut out).unwrap();
        for (u, r) in low.iter().zip(&out) {
            assert!(is_zero(r), "{}: u = {u}", b.name());
        }
    }
    let nz = x25519(&k, &unhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"));
    assert!(!is_zero(&nz));
    let mut one_bit = [0u8; 32];
    one_bit[31] = 0x80;
    assert!(!is_zero(&one_bit));
    assert!(is_zero(&[0; 32]));
}

#[test]
fn counts_around_the_lane_width() {
    // 0 to 2·LANES + 1 pairs: full batches, partial ones, both; every lane against `x25519`.
    let ks: Vec<[u8; 32]> = (0..2 * LANES + 1).map(|i| [i as u8 * 7 + 1; 32]).collect();
    let us: Vec<[u8; 32]> = (0..2 * LANES + 1).map(|i| [i as u8 * 13 + 2; 32]).collect();
    let want: Vec<[u8; 32]> = ks.iter().zip(&us).map(|(k, u)| x25519(k, u)).collect();
    for b in backends() {
        for n in 0..=2 * LANES + 1 {
            let mut out = vec![[0u8; 32]; n];
            b.x25519_many(&ks[..n], &us[..n], &mut out).unwrap();
            assert_eq!(out, want[..n], "{} n={n}", b.name());
        }
    }
}
