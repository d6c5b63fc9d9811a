//! Project Wycheproof's ChaCha20-Poly1305 vectors (tests/data, Apache-2.0: see tests/data/README.md)
//! on every backend this CPU runs, in bursts of 1 to 16 mixed vectors.
//!
//! Every vector with a 32-byte key and a 12-byte nonce runs: a valid one must seal to its
//! ciphertext and tag and open to its message; an invalid one must not open, and its buffer must
//! keep the ciphertext. Vectors with other nonce sizes cannot be expressed by the API (the nonce
//! is `[u8; 12]`): they are skipped one by one and counted.
#![forbid(unsafe_code)]

use serde_json::Value;
use wgpmd_aead::{Backend, Lane, Lanes};

const FILE: &str = include_str!("data/chacha20_poly1305_test.json");

/// Vectors in the file, and how many of them have a 32-byte key and 12-byte nonce.
const TOTAL: usize = 325;
const RUNNABLE: usize = 316;

struct Vector {
    id: u64,
    key: [u8; 32],
    nonce: [u8; 12],
    aad: Vec<u8>,
    msg: Vec<u8>,
    ct: Vec<u8>,
    tag: [u8; 16],
    valid: bool,
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

/// The runnable vectors and the number skipped.
fn vectors() -> (Vec<Vector>, usize) {
    let doc: Value = serde_json::from_str(FILE).expect("JSON");
    assert_eq!(doc["algorithm"], "CHACHA20-POLY1305");
    assert_eq!(doc["numberOfTests"].as_u64(), Some(TOTAL as u64));
    let mut out = Vec::new();
    let mut skipped = 0;
    for group in doc["testGroups"].as_array().expect("groups") {
        for t in group["tests"].as_array().expect("tests") {
            let (key, iv, tag) = (unhex(&t["key"]), unhex(&t["iv"]), unhex(&t["tag"]));
            let (Ok(key), Ok(nonce), Ok(tag)) = (key.try_into(), iv.try_into(), tag.try_into()) else {
                assert_eq!(t["result"], "invalid", "only invalid vectors have other sizes");
                skipped += 1;
                continue;
            };
            let valid = match t["result"].as_str() {
                Some("valid") => true,
                Some("invalid") => false,
                other => panic!("result {other:?}"),
            };
            out.push(Vector {
                id: t["tcId"].as_u64().expect("tcId"),
                key,
                nonce,
                aad: unhex(&t["aad"]),
                msg: unhex(&t["msg"]),
                ct: unhex(&t["ct"]),
                tag,
                valid,
            });
        }
    }
    (out, skipped)
}

/// Bursts of 1, 2, ..., 16, 1, 2, ... vectors.
fn bursts(v: &[Vector]) -> Vec<&[Vector]> {
    let mut out = Vec::new();
    let (mut at, mut size) = (0, 1);
    while at < v.len() {
        let end = (at + size).min(v.len());
        out.push(&v[at..end]);
        at = end;
        size = size % 16 + 1;
    }
    out
}

fn run(engine: Lanes) -> usize {
    let name = engine.backend().name();
    let (vectors, skipped) = vectors();
    assert_eq!(vectors.len(), RUNNABLE);
    assert_eq!(vectors.len() + skipped, TOTAL);
    let mut run = 0;
    for burst in bursts(&vectors) {
        // Seal the messages.
        let mut bufs: Vec<Vec<u8>> = burst.iter().map(|v| v.msg.clone()).collect();
        let mut lanes: Vec<Lane<'_>> =
            burst.iter().zip(bufs.iter_mut()).map(|(v, b)| Lane::new(&v.key, v.nonce, &v.aad, b)).collect();
        engine.seal_lanes(&mut lanes).unwrap();
        let tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
        drop(lanes);
        for ((v, b), t) in burst.iter().zip(&bufs).zip(&tags) {
            let matches = b == &v.ct && t == &v.tag;
            assert_eq!(matches, v.valid, "{name}: tcId {} seal", v.id);
        }
        // Open the given ciphertexts and tags.
        let mut bufs: Vec<Vec<u8>> = burst.iter().map(|v| v.ct.clone()).collect();
        let mut lanes: Vec<Lane<'_>> = burst
            .iter()
            .zip(bufs.iter_mut())
            .map(|(v, b)| Lane { tag: v.tag, ..Lane::new(&v.key, v.nonce, &v.aad, b) })
            .collect();
        let ok = engine.open_lanes(&mut lanes).unwrap();
        drop(lanes);
        for (i, (v, b)) in burst.iter().zip(&bufs).enumerate() {
            assert_eq!(ok & (1 << i) != 0, v.valid, "{name}: tcId {} open verdict", v.id);
            let want = if v.valid { &v.msg } else { &v.ct };
            assert_eq!(b, want, "{name}: tcId {} buffer after open", v.id);
            run += 1;
        }
    }
    run
}

#[test]
fn wycheproof_every_backend() {
    let mut ran = Vec::new();
    for backend in Backend::ALL {
        if let Some(engine) = Lanes::with_backend(backend) {
            assert_eq!(run(engine), RUNNABLE, "{}", backend.name());
            ran.push(backend);
        }
    }
    assert!(ran.contains(&Backend::Portable));
    eprintln!("wycheproof: {RUNNABLE} vectors run, {} skipped (nonce not 12 bytes), on {ran:?}", TOTAL - RUNNABLE);
}

/// The file has both kinds, so neither verdict can pass vacuously.
#[test]
fn wycheproof_has_valid_and_invalid_vectors() {
    let (v, _) = vectors();
    let valid = v.iter().filter(|v| v.valid).count();
    assert_eq!((valid, v.len() - valid), (256, 60));
    assert!(v.iter().any(|v| !v.aad.is_empty()) && v.iter().any(|v| v.msg.len() > 256));
}
