//! The multi-lane X25519 next to one-at-a-time implementations, in one run: cost per DH.
//!
//! Candidates:
//! - `lanes-N` (N = 1, 2, 4, 8, 16): one `x25519_many` call on N pairs, on the backend this CPU
//!   picks (`backend()`, printed first); cost per DH = call time / N. Below 8 the call still runs
//!   a full eight-lane ladder (the padding lanes are computed and discarded); 16 is two batches.
//! - `portable`: `Backend::Portable` forced, one pair per call.
//! - `aws-lc-rs`: `agreement::PrivateKey::from_private_key` once, then `agree` per DH (the key
//!   object kept, its best case; what the daemon's `crypto::PrivateKey` wraps).
//! - `x25519-dalek-2`: `StaticSecret` kept, `diffie_hellman` per DH.
//!
//! Every DH uses a different peer point (64 distinct valid public keys, cycled); the lanes
//! candidates also take a different scalar per lane. Left out: the all-zero check, key
//! generation (fixed-base), and the cost of gathering queued handshakes into a batch. Every
//! candidate is first checked against RFC 7748 section 6.1 and x25519-dalek, so a fast wrong
//! answer cannot pass.
//!
//! `cargo bench -p wgpmd-x25519 --bench lanes`; `WGPMD_BENCH_QUICK=1` for a short run (0.3 s
//! warm-up, 1 s measurement); `WGPMD_X25519_MIN=ROUNDS` for the fastest of ROUNDS batches
//! per candidate instead of criterion, the candidates taking turns batch by batch (steadier on a
//! shared machine), with each one's ratio to aws-lc-rs.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_x25519::{backend, x25519_many, Backend};

/// Distinct peer public keys the candidates cycle through.
const KEYS: usize = 64;
/// Lane counts of the `lanes-N` candidates.
const COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

const RFC_A: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const RFC_B_PUB: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
const RFC_K: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

fn unhex(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn random32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

fn aws_key(k: &[u8; 32]) -> aws_lc_rs::agreement::PrivateKey {
    aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, k).unwrap()
}

fn aws_dh(k: &aws_lc_rs::agreement::PrivateKey, peer: &[u8; 32]) -> [u8; 32] {
    let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, peer);
    aws_lc_rs::agreement::agree(k, peer, (), |s| Ok(s.try_into().unwrap())).unwrap()
}

fn dalek_dh(k: &x25519_dalek::StaticSecret, peer: &[u8; 32]) -> [u8; 32] {
    k.diffie_hellman(&x25519_dalek::PublicKey::from(*peer)).to_bytes()
}

/// The RFC 7748 section 6.1 shared secret and a random pair through every candidate.
fn check(rng: &mut ChaCha20Rng) {
    let (a, b_pub, k) = (unhex(RFC_A), unhex(RFC_B_PUB), unhex(RFC_K));
    let (x, y) = (random32(rng), random32(rng));
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(y)).to_bytes();
    let want = x25519_dalek::x25519(x, peer);
    for n in COUNTS {
        let mut out = vec![[0u8; 32]; n];
        x25519_many(&vec![a; n], &vec![b_pub; n], &mut out).unwrap();
        assert!(out.iter().all(|o| *o == k), "lanes-{n}: RFC 7748 6.1");
        x25519_many(&vec![x; n], &vec![peer; n], &mut out).unwrap();
        assert!(out.iter().all(|o| *o == want), "lanes-{n}: against x25519-dalek");
    }
    let mut out = [[0u8; 32]];
    Backend::Portable.x25519_many(&[a], &[b_pub], &mut out).unwrap();
    assert_eq!(out[0], k, "portable");
    assert_eq!(aws_dh(&aws_key(&a), &b_pub), k, "aws-lc-rs");
    assert_eq!(aws_dh(&aws_key(&x), &peer), want, "aws-lc-rs");
    assert_eq!(dalek_dh(&x25519_dalek::StaticSecret::from(a), &b_pub), k, "x25519-dalek");
}

/// The inputs every candidate draws from: 64 peers, and 16 scalars for the lanes.
struct Inputs {
    peers: Vec<[u8; 32]>,
    scalars: Vec<[u8; 32]>,
}

fn inputs() -> Inputs {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    check(&mut rng);
    let peers = (0..KEYS)
        .map(|_| x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(random32(&mut rng))).to_bytes())
        .collect();
    let scalars = (0..16).map(|_| random32(&mut rng)).collect();
    Inputs { peers, scalars }
}

/// A candidate: a closure doing one call (of `per_call` DHs) with the i-th input set.
type Call = Box<dyn FnMut(usize)>;

fn candidates(inp: &Inputs) -> Vec<(String, usize, Call)> {
    let mut v: Vec<(String, usize, Call)> = Vec::new();
    for n in COUNTS {
        let ks = inp.scalars[..n].to_vec();
        let peers = inp.peers.clone();
        let mut us = vec![[0u8; 32]; n];
        let mut out = vec![[0u8; 32]; n];
        let call = move |i: usize| {
            for (j, u) in us.iter_mut().enumerate() {
                *u = peers[(i + j) % KEYS];
            }
            x25519_many(black_box(&ks), black_box(&us), &mut out).unwrap();
            black_box(&out);
        };
        v.push((format!("lanes-{n}"), n, Box::new(call)));
    }
    let (k, peers) = (inp.scalars[0], inp.peers.clone());
    v.push((
        "portable".into(),
        1,
        Box::new(move |i| {
            let mut out = [[0u8; 32]];
            Backend::Portable.x25519_many(&[k], black_box(&[peers[i % KEYS]]), &mut out).unwrap();
            black_box(out);
        }),
    ));
    let (key, peers) = (aws_key(&inp.scalars[0]), inp.peers.clone());
    v.push((
        "aws-lc-rs".into(),
        1,
        Box::new(move |i| {
            black_box(aws_dh(&key, black_box(&peers[i % KEYS])));
        }),
    ));
    let (key, peers) = (x25519_dalek::StaticSecret::from(inp.scalars[0]), inp.peers.clone());
    v.push((
        "x25519-dalek-2".into(),
        1,
        Box::new(move |i| {
            black_box(dalek_dh(&key, black_box(&peers[i % KEYS])));
        }),
    ));
    v
}

fn bench(c: &mut Criterion) {
    println!("wgpmd-x25519 backend: {}", backend());
    let inp = inputs();
    for (name, per, mut call) in candidates(&inp) {
        let mut g = c.benchmark_group("x25519_per_dh");
        g.throughput(Throughput::Elements(per as u64));
        let mut i = 0usize;
        g.bench_function(&name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                call(i)
            })
        });
        g.finish();
    }
}

fn config() -> Criterion {
    let c = Criterion::default();
    if std::env::var("WGPMD_BENCH_QUICK").as_deref() == Ok("1") {
        c.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20)
    } else {
        c
    }
}

/// `WGPMD_X25519_MIN=ROUNDS`: for every candidate the fastest of ROUNDS batches (each batch
/// enough calls for 32 DHs), the candidates taking turns batch by batch; µs per DH and the ratio
/// to aws-lc-rs's per-DH time.
fn min_table(rounds: usize) {
    println!("wgpmd-x25519 backend: {}", backend());
    let inp = inputs();
    let mut cands = candidates(&inp);
    let mut best = vec![f64::MAX; cands.len()];
    let mut i = 0usize;
    for _ in 0..rounds {
        for ((_, per, call), b) in cands.iter_mut().zip(best.iter_mut()) {
            let calls = 32 / *per;
            let t = Instant::now();
            for _ in 0..calls {
                i = i.wrapping_add(1);
                call(i);
            }
            let us_per_dh = t.elapsed().as_nanos() as f64 / 1000.0 / (calls * *per) as f64;
            *b = b.min(us_per_dh);
        }
    }
    let aws = cands.iter().zip(&best).find(|((n, _, _), _)| n == "aws-lc-rs").map(|(_, b)| *b).unwrap();
    println!("{:<16} {:>12} {:>14}", "candidate", "us per DH", "/ aws-lc-rs");
    for ((name, _, _), b) in cands.iter().zip(&best) {
        println!("{name:<16} {b:>12.2} {:>14.3}", b / aws);
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}

fn main() {
    if let Some(rounds) = std::env::var("WGPMD_X25519_MIN").ok().and_then(|v| v.parse().ok()) {
        min_table(rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
