//! RFC 8439 test vectors on every backend this CPU runs (each forced), each vector also placed at
//! every lane position of a full burst whose other lanes carry other vectors or random messages
//! (checked against the portable reference).
#![forbid(unsafe_code)]

use wgpmd_aead::fuzzing;
use wgpmd_aead::portable;
use wgpmd_aead::{Backend, Lane, Lanes, MAX_LANES};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex")
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().expect("length")
}

/// The engines this CPU runs; the portable one always, and on x86-64 with AVX2 the AVX2 one (so
/// that a detection bug cannot silently reduce the test to the reference).
fn engines() -> Vec<Lanes> {
    let e: Vec<Lanes> = Backend::ALL.into_iter().filter_map(Lanes::with_backend).collect();
    assert!(e.iter().any(|l| l.backend() == Backend::Portable));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(e.iter().any(|l| l.backend() == Backend::Avx2));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512ifma")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
    {
        assert!(e.iter().any(|l| l.backend() == Backend::Avx512));
    }
    e
}

const KEY_00_1F: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// §2.3.2: the block function, key 00..1f, nonce 000000090000004a00000000, counter 1.
const BLOCK_2_3_2: &str = "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e
                           d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e";

/// §2.4.2: "Ladies and Gentlemen..." encrypted with key 00..1f, nonce 000000000000004a00000000
/// from counter 1 (the AEAD's data counter).
const PLAIN_2_4_2: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
const CT_2_4_2: &str = "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
                        f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
                        07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
                        5af90bbf74a35be6b40b8eedf2785e42874d";

/// §2.8.2: the AEAD.
const KEY_2_8_2: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
const NONCE_2_8_2: &str = "070000004041424344454647";
const AAD_2_8_2: &str = "50515253c0c1c2c3c4c5c6c7";
const CT_2_8_2: &str = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                        3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                        92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                        3ff4def08e4b7a9de576d26586cec64b6116";
const TAG_2_8_2: &str = "1ae10b594f09e26a7e902ecbd0600691";

/// Appendix A.5: decryption.
const KEY_A5: &str = "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0";
const NONCE_A5: &str = "000000000102030405060708";
const AAD_A5: &str = "f33388860000000000004e91";
const CT_A5: &str = "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
                     4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
                     332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
                     9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
                     b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
                     af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
                     0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
                     49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
                     a6ad5cb4022b02709b";
const TAG_A5: &str = "eead9d67890cbb22392336fea1851f38";
const PLAIN_A5: &str = "496e7465726e65742d4472616674732061726520647261667420646f63756d65
                        6e74732076616c696420666f722061206d6178696d756d206f6620736978206d
                        6f6e74687320616e64206d617920626520757064617465642c207265706c6163
                        65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65
                        6e747320617420616e792074696d652e20497420697320696e617070726f7072
                        6961746520746f2075736520496e7465726e65742d4472616674732061732072
                        65666572656e6365206d6174657269616c206f7220746f206369746520746865
                        6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67
                        726573732e2fe2809d";

/// A filler of `n` bytes that differs per `seed`.
fn filler(seed: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + seed * 7 + 3) as u8).collect()
}

#[test]
fn block_function_2_3_2() {
    let key: [u8; 32] = arr(KEY_00_1F);
    let nonce: [u8; 12] = arr("000000090000004a00000000");
    let want = unhex(BLOCK_2_3_2);
    assert_eq!(portable::chacha20_block(&key, 1, &nonce).to_vec(), want);
    for backend in engines().iter().map(Lanes::backend) {
        for pos in 0..MAX_LANES {
            // The vector at `pos`, other keys, nonces and counters around it.
            let mut blocks: Vec<([u8; 32], [u8; 12], u32)> = (0..MAX_LANES)
                .map(|i| {
                    let k: [u8; 32] = filler(i, 32).try_into().unwrap();
                    let n: [u8; 12] = filler(i + 100, 12).try_into().unwrap();
                    (k, n, (i as u32).wrapping_mul(0x9e37_79b9))
                })
                .collect();
            blocks[pos] = (key, nonce, 1);
            let out = fuzzing::chacha20_blocks(backend, &blocks).expect("supported backend");
            for (i, (o, (k, n, c))) in out.iter().zip(&blocks).enumerate() {
                assert_eq!(o, &portable::chacha20_block(k, *c, n), "{} block {i}", backend.name());
            }
            assert_eq!(out[pos].to_vec(), want, "{} at lane {pos}", backend.name());
        }
    }
}

#[test]
fn encryption_2_4_2_through_seal() {
    let key: [u8; 32] = arr(KEY_00_1F);
    let nonce: [u8; 12] = arr("000000000000004a00000000");
    for engine in engines() {
        for pos in [0, 5, 8, 15] {
            let keys: Vec<[u8; 32]> = (0..MAX_LANES).map(|i| filler(i, 32).try_into().unwrap()).collect();
            let mut bufs: Vec<Vec<u8>> = (0..MAX_LANES).map(|i| filler(i, i * 97 % 300)).collect();
            bufs[pos] = PLAIN_2_4_2.to_vec();
            let plain = bufs.clone();
            let mut lanes: Vec<Lane<'_>> = bufs
                .iter_mut()
                .enumerate()
                .map(
                    |(i, b)| {
                        if i == pos {
                            Lane::new(&key, nonce, &[], b)
                        } else {
                            Lane::wireguard(&keys[i], i as u64, b)
                        }
                    },
                )
                .collect();
            engine.seal_lanes(&mut lanes).unwrap();
            let tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
            drop(lanes);
            assert_eq!(bufs[pos], unhex(CT_2_4_2), "{} at lane {pos}", engine.backend().name());
            for i in (0..MAX_LANES).filter(|&i| i != pos) {
                let mut b = plain[i].clone();
                let t = portable::seal(&keys[i], &wgpmd_aead::wireguard_nonce(i as u64), &[], &mut b);
                assert_eq!((&bufs[i], &tags[i]), (&b, &t), "{} lane {i}", engine.backend().name());
            }
        }
    }
}

#[test]
fn poly1305_2_5_2() {
    let key: [u8; 32] = arr("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
    let msg = b"Cryptographic Forum Research Group";
    let want: [u8; 16] = arr("a8061dc1305136c6c22b8baf0c0127a9");
    let mut mac = portable::Poly1305::new(&key);
    mac.update(msg);
    assert_eq!(mac.finish(), want);
    let fillers: Vec<([u8; 32], Vec<u8>)> =
        (0..MAX_LANES).map(|i| (filler(i, 32).try_into().unwrap(), filler(i + 50, i * 37 % 200))).collect();
    for backend in engines().iter().map(Lanes::backend) {
        for pos in 0..MAX_LANES {
            for lanes in [pos + 1, MAX_LANES] {
                let mut macs: Vec<([u8; 32], &[u8])> = fillers[..lanes].iter().map(|(k, m)| (*k, &m[..])).collect();
                macs[pos] = (key, &msg[..]);
                let tags = fuzzing::poly1305(backend, &macs).expect("supported backend");
                assert_eq!(tags[pos], want, "{} at lane {pos} of {lanes}", backend.name());
                for (i, (t, (k, m))) in tags.iter().zip(&macs).enumerate() {
                    let mut mac = portable::Poly1305::new(k);
                    mac.update(m);
                    assert_eq!(*t, mac.finish(), "{} lane {i}", backend.name());
                }
            }
        }
    }
}

/// §2.8.2 sealed and A.5 opened in one burst, at every pair of positions, with random lanes
/// around them.
#[test]
fn aead_2_8_2_and_a5_in_one_burst() {
    let (k1, n1, a1): ([u8; 32], [u8; 12], Vec<u8>) = (arr(KEY_2_8_2), arr(NONCE_2_8_2), unhex(AAD_2_8_2));
    let (k2, n2, a2): ([u8; 32], [u8; 12], Vec<u8>) = (arr(KEY_A5), arr(NONCE_A5), unhex(AAD_A5));
    let plain1 = PLAIN_2_4_2.to_vec(); // the same sunscreen text
    let keys: Vec<[u8; 32]> = (0..MAX_LANES).map(|i| filler(i + 9, 32).try_into().unwrap()).collect();
    for engine in engines() {
        let name = engine.backend().name();
        for pos in 0..MAX_LANES {
            let other = (pos + 7) % MAX_LANES;
            // Seal: 2.8.2 at `pos`, random lanes elsewhere.
            let mut bufs: Vec<Vec<u8>> = (0..MAX_LANES).map(|i| filler(i, i * 61 % 180)).collect();
            bufs[pos] = plain1.clone();
            let mut lanes: Vec<Lane<'_>> = bufs
                .iter_mut()
                .enumerate()
                .map(|(i, b)| if i == pos { Lane::new(&k1, n1, &a1, b) } else { Lane::wireguard(&keys[i], 7, b) })
                .collect();
            engine.seal_lanes(&mut lanes).unwrap();
            assert_eq!(lanes[pos].tag, arr::<16>(TAG_2_8_2), "{name} 2.8.2 tag at lane {pos}");
            let sealed: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
            drop(lanes);
            assert_eq!(bufs[pos], unhex(CT_2_8_2), "{name} 2.8.2 ciphertext at lane {pos}");

            // Open: 2.8.2 at `pos`, A.5 at `other`, the sealed random lanes elsewhere, one of them
            // (lane `pos + 1`, when not A.5) with a bad tag.
            let bad = (pos + 1) % MAX_LANES;
            let mut opened = bufs.clone();
            opened[other] = unhex(CT_A5);
            let mut lanes: Vec<Lane<'_>> = opened
                .iter_mut()
                .enumerate()
                .map(|(i, b)| {
                    let mut l = if i == pos {
                        Lane::new(&k1, n1, &a1, b)
                    } else if i == other {
                        Lane::new(&k2, n2, &a2, b)
                    } else {
                        Lane::wireguard(&keys[i], 7, b)
                    };
                    l.tag = if i == other { arr(TAG_A5) } else { sealed[i] };
                    if i == bad && i != other {
                        l.tag[3] ^= 0x10;
                    }
                    l
                })
                .collect();
            let ok = engine.open_lanes(&mut lanes).unwrap();
            drop(lanes);
            let want_ok = if bad == other { u16::MAX } else { !(1u16 << bad) };
            assert_eq!(ok, want_ok, "{name} verdicts, 2.8.2 at {pos}, A.5 at {other}");
            assert_eq!(opened[pos], plain1, "{name} 2.8.2 decryption at lane {pos}");
            assert_eq!(opened[other], unhex(PLAIN_A5), "{name} A.5 decryption at lane {other}");
            if bad != other {
                assert_eq!(opened[bad], bufs[bad], "{name} failed lane {bad} was released");
            }
            for i in (0..MAX_LANES).filter(|&i| i != pos && i != other && i != bad) {
                assert_eq!(opened[i], filler(i, i * 61 % 180), "{name} lane {i}");
            }
        }
    }
}

/// A.5 with its tag corrupted in each byte, alone: never opens, the ciphertext stays.
#[test]
fn a5_bad_tags_fail_and_keep_ciphertext() {
    let (k, n, a): ([u8; 32], [u8; 12], Vec<u8>) = (arr(KEY_A5), arr(NONCE_A5), unhex(AAD_A5));
    let ct = unhex(CT_A5);
    for engine in engines() {
        for byte in 0..16 {
            let mut buf = ct.clone();
            let mut lane = [Lane::new(&k, n, &a, &mut buf)];
            lane[0].tag = arr(TAG_A5);
            lane[0].tag[byte] ^= 0x80;
            assert_eq!(engine.open_lanes(&mut lane).unwrap(), 0, "{}", engine.backend().name());
            assert_eq!(buf, ct);
        }
    }
}

#[test]
fn bursts_past_the_limits_are_errors() {
    let key = [1u8; 32];
    for engine in engines() {
        let mut bufs = vec![vec![0u8; 10]; MAX_LANES + 1];
        let mut lanes: Vec<Lane<'_>> = bufs.iter_mut().map(|b| Lane::wireguard(&key, 0, b)).collect();
        assert_eq!(engine.seal_lanes(&mut lanes), Err(wgpmd_aead::Error::TooManyLanes { count: 17 }));
        assert_eq!(engine.open_lanes(&mut lanes), Err(wgpmd_aead::Error::TooManyLanes { count: 17 }));
        drop(lanes);
        assert!(bufs.iter().all(|b| b == &[0u8; 10]), "nothing touched");
        assert_eq!(engine.seal_lanes(&mut []), Ok(()));
        assert_eq!(engine.open_lanes(&mut []), Ok(0));
    }
}
