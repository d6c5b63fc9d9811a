//! X25519 implementations side by side, in one run: the numbers that chose the backend behind
//! `crypto::PrivateKey` (the repository's docs/PERFORMANCE.md, "X25519: which implementation,
//! by the numbers").
//!
//! Three groups, each run for every candidate:
//! - `x25519_static_dh`: one DH with a fixed private key against public keys that change every
//!   iteration (64 distinct valid keys, cycled): the responder's es, and ss.
//! - `x25519_ephemeral`: a fresh ephemeral (32 random bytes from a seeded ChaCha20 RNG, its
//!   public key by fixed-base multiplication) and one DH with it.
//! - `x25519_keygen`: the fresh ephemeral and its public key alone.
//!
//! Candidates: `wgpmd` (our `crypto::PrivateKey`, whatever it wraps), x25519-dalek 2
//! (curve25519-dalek 4 with the backend this build selects; boringtun's), x25519-dalek 3
//! (curve25519-dalek 5), aws-lc-rs (`agreement::PrivateKey` + `agree`, the key object kept), libcrux-curve25519
//! (HACL*'s portable 51-bit code), and ring (ephemeral groups only: its X25519 takes single-use
//! ephemeral keys, fed here through its fixed-bytes test RNG so that the same seeded bytes
//! drive every candidate). Every candidate is first checked against the RFC 7748 section 6.1
//! vector and against x25519-dalek on a random pair, so a fast wrong answer cannot pass.
//!
//! `cargo bench -p wgpmd-proto --bench x25519`; `WGPMD_BENCH_QUICK=1` for a short run (0.3 s
//! warm-up, 1 s measurement); `WGPMD_X25519_MIN=ROUNDS` for the fastest of ROUNDS interleaved
//! batches instead of criterion. `OPENSSL_ia32cap=":~0x80100"` hides BMI2 and ADX from aws-lc,
//! which then runs its generic code (what a CPU or an emulator without them gets).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::PrivateKey;

/// Public keys the static-key benches cycle through.
const KEYS: usize = 64;

/// RFC 7748 section 6.1: Alice's private key, Bob's public key, and their shared secret.
const RFC_A: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const RFC_A_PUB: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
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

/// One implementation: public key from private bytes, and DH from private bytes and a peer key,
/// with the private key prepared once (`Prepared`) where the API allows it.
trait Candidate {
    const NAME: &'static str;
    type Prepared;
    fn prepare(private: &[u8; 32]) -> Self::Prepared;
    fn public(k: &Self::Prepared) -> [u8; 32];
    fn dh(k: &Self::Prepared, peer: &[u8; 32]) -> Option<[u8; 32]>;
}

struct Wgpmd;
impl Candidate for Wgpmd {
    const NAME: &'static str = "wgpmd";
    type Prepared = PrivateKey;
    fn prepare(private: &[u8; 32]) -> PrivateKey {
        PrivateKey::from_bytes(*private)
    }
    fn public(k: &PrivateKey) -> [u8; 32] {
        k.public_key()
    }
    fn dh(k: &PrivateKey, peer: &[u8; 32]) -> Option<[u8; 32]> {
        k.dh(peer).map(|s| s.0)
    }
}

struct Dalek2;
impl Candidate for Dalek2 {
    const NAME: &'static str = "x25519-dalek-2";
    type Prepared = x25519_dalek::StaticSecret;
    fn prepare(private: &[u8; 32]) -> Self::Prepared {
        x25519_dalek::StaticSecret::from(*private)
    }
    fn public(k: &Self::Prepared) -> [u8; 32] {
        x25519_dalek::PublicKey::from(k).to_bytes()
    }
    fn dh(k: &Self::Prepared, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let s = k.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        s.was_contributory().then(|| s.to_bytes())
    }
}

struct Dalek3;
impl Candidate for Dalek3 {
    const NAME: &'static str = "x25519-dalek-3";
    type Prepared = x25519_dalek_3::StaticSecret;
    fn prepare(private: &[u8; 32]) -> Self::Prepared {
        x25519_dalek_3::StaticSecret::from(*private)
    }
    fn public(k: &Self::Prepared) -> [u8; 32] {
        x25519_dalek_3::PublicKey::from(k).to_bytes()
    }
    fn dh(k: &Self::Prepared, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let s = k.diffie_hellman(&x25519_dalek_3::PublicKey::from(*peer));
        s.was_contributory().then(|| s.to_bytes())
    }
}

struct AwsLcRs;
impl Candidate for AwsLcRs {
    const NAME: &'static str = "aws-lc-rs";
    type Prepared = aws_lc_rs::agreement::PrivateKey;
    fn prepare(private: &[u8; 32]) -> Self::Prepared {
        aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, private).unwrap()
    }
    fn public(k: &Self::Prepared) -> [u8; 32] {
        k.compute_public_key().unwrap().as_ref().try_into().unwrap()
    }
    fn dh(k: &Self::Prepared, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, peer);
        aws_lc_rs::agreement::agree(k, peer, (), |s| Ok(s.try_into().unwrap())).ok()
    }
}

struct Libcrux;
impl Candidate for Libcrux {
    const NAME: &'static str = "libcrux-curve25519";
    type Prepared = [u8; 32];
    fn prepare(private: &[u8; 32]) -> [u8; 32] {
        *private
    }
    fn public(k: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        libcrux_curve25519::secret_to_public(&mut out, k);
        out
    }
    fn dh(k: &[u8; 32], peer: &[u8; 32]) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        libcrux_curve25519::ecdh(&mut out, peer, k).ok().map(|()| out)
    }
}

/// The RFC 7748 section 6.1 vector through `C`, and a public key that `C` and x25519-dalek agree on.
fn check<C: Candidate>(rng: &mut ChaCha20Rng) {
    let a = C::prepare(&unhex(RFC_A));
    assert_eq!(C::public(&a), unhex(RFC_A_PUB), "{}: public key", C::NAME);
    assert_eq!(C::dh(&a, &unhex(RFC_B_PUB)), Some(unhex(RFC_K)), "{}: shared secret", C::NAME);
    let (x, y) = (random32(rng), random32(rng));
    let peer = Dalek2::public(&Dalek2::prepare(&y));
    assert_eq!(C::dh(&C::prepare(&x), &peer), Dalek2::dh(&Dalek2::prepare(&x), &peer), "{}", C::NAME);
}

fn bench_candidate<C: Candidate>(c: &mut Criterion, peers: &[[u8; 32]]) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    check::<C>(&mut rng);
    let name = C::NAME;

    let key = C::prepare(&random32(&mut rng));
    let mut i = 0usize;
    let mut g = c.benchmark_group("x25519_static_dh");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % peers.len();
            black_box(C::dh(&key, black_box(&peers[i])))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("x25519_ephemeral");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % peers.len();
            let e = C::prepare(&random32(&mut rng));
            black_box(C::public(&e));
            black_box(C::dh(&e, black_box(&peers[i])))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("x25519_keygen");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| b.iter(|| black_box(C::public(&C::prepare(&random32(&mut rng))))));
    g.finish();
}

/// ring: only `EphemeralPrivateKey`, single use. Its RNG trait is sealed; the deprecated test
/// module's fixed-slice RNG hands it the seeded bytes, as the other candidates get them.
/// Returns the public key and the shared secret with `peer`, or only the public key.
#[allow(deprecated)]
fn ring_ephemeral(bytes: &[u8; 32], peer: Option<&[u8; 32]>) -> ([u8; 32], Option<[u8; 32]>) {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    let k = EphemeralPrivateKey::generate(&X25519, &ring::test::rand::FixedSliceRandom { bytes }).unwrap();
    let public: [u8; 32] = k.compute_public_key().unwrap().as_ref().try_into().unwrap();
    let shared = peer.and_then(|p| {
        agree_ephemeral(k, &UnparsedPublicKey::new(&X25519, p), |s| <[u8; 32]>::try_from(s).unwrap()).ok()
    });
    (public, shared)
}

fn check_ring() {
    assert_eq!(ring_ephemeral(&unhex(RFC_A), Some(&unhex(RFC_B_PUB))), (unhex(RFC_A_PUB), Some(unhex(RFC_K))), "ring");
}

fn bench_ring(c: &mut Criterion, peers: &[[u8; 32]]) {
    check_ring();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut i = 0usize;
    let mut g = c.benchmark_group("x25519_ephemeral");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ring", |b| {
        b.iter(|| {
            i = (i + 1) % peers.len();
            black_box(ring_ephemeral(&random32(&mut rng), Some(black_box(&peers[i]))))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("x25519_keygen");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ring", |b| b.iter(|| black_box(ring_ephemeral(&random32(&mut rng), None))));
    g.finish();
}

fn candidates(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let peers: Vec<[u8; 32]> = (0..KEYS).map(|_| Dalek2::public(&Dalek2::prepare(&random32(&mut rng)))).collect();
    bench_candidate::<Wgpmd>(c, &peers);
    bench_candidate::<Dalek2>(c, &peers);
    bench_candidate::<Dalek3>(c, &peers);
    bench_candidate::<AwsLcRs>(c, &peers);
    bench_candidate::<Libcrux>(c, &peers);
    bench_ring(c, &peers);
}

fn config() -> Criterion {
    let c = Criterion::default();
    if std::env::var("WGPMD_BENCH_QUICK").as_deref() == Ok("1") {
        c.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20)
    } else {
        c
    }
}

/// Nanoseconds per call of `f` over one batch of `per` calls.
fn batch_ns(per: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..per {
        f();
    }
    t.elapsed().as_nanos() as f64 / per as f64
}

/// One batch of 20 of each operation (static DH, ephemeral keygen + DH, keygen) for `C`;
/// returns ns per call of each.
fn min_rounds<C: Candidate + 'static>(peers: &[[u8; 32]]) -> (&'static str, Box<dyn FnMut() -> [f64; 3]>) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    check::<C>(&mut rng);
    let key = C::prepare(&random32(&mut rng));
    let peers = peers.to_vec();
    let mut i = 0usize;
    let round = move || {
        let mut next = || {
            i = (i + 1) % peers.len();
            peers[i]
        };
        let dh = batch_ns(20, || {
            black_box(C::dh(&key, black_box(&next())));
        });
        let eph = batch_ns(20, || {
            let e = C::prepare(&random32(&mut rng));
            black_box(C::public(&e));
            black_box(C::dh(&e, black_box(&next())));
        });
        let kg = batch_ns(20, || {
            black_box(C::public(&C::prepare(&random32(&mut rng))));
        });
        [dh, eph, kg]
    };
    (C::NAME, Box::new(round))
}

/// ring's batches: no static DH (NaN, which the minimum ignores).
fn ring_rounds(peers: &[[u8; 32]]) -> (&'static str, Box<dyn FnMut() -> [f64; 3]>) {
    check_ring();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let peers = peers.to_vec();
    let mut i = 0usize;
    let round = move || {
        let eph = batch_ns(20, || {
            i = (i + 1) % peers.len();
            black_box(ring_ephemeral(&random32(&mut rng), Some(black_box(&peers[i]))));
        });
        let kg = batch_ns(20, || {
            black_box(ring_ephemeral(&random32(&mut rng), None));
        });
        [f64::NAN, eph, kg]
    };
    ("ring", Box::new(round))
}

/// `WGPMD_X25519_MIN=ROUNDS`: instead of criterion, print for every candidate
/// the fastest of ROUNDS batches of 20 calls, the candidates taking turns batch by batch (ring
/// has no static-DH column). On a machine shared with other builds the minimum is steadier than
/// criterion's mean.
fn min_table(rounds: usize) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let peers: Vec<[u8; 32]> = (0..KEYS).map(|_| Dalek2::public(&Dalek2::prepare(&random32(&mut rng)))).collect();
    let mut runs = vec![
        min_rounds::<Wgpmd>(&peers),
        min_rounds::<Dalek2>(&peers),
        min_rounds::<Dalek3>(&peers),
        min_rounds::<AwsLcRs>(&peers),
        min_rounds::<Libcrux>(&peers),
    ];
    runs.push(ring_rounds(&peers));
    let mut best = vec![[f64::MAX; 3]; runs.len()];
    for _ in 0..rounds {
        for (b, (_, round)) in best.iter_mut().zip(runs.iter_mut()) {
            for (m, t) in b.iter_mut().zip(round()) {
                *m = m.min(t);
            }
        }
    }
    println!("{:<20} {:>10} {:>10} {:>10}", "ns per call (min)", "static_dh", "ephemeral", "keygen");
    for ((name, _), b) in runs.iter().zip(&best) {
        let col = |ns: f64| if ns < f64::MAX { format!("{ns:.0}") } else { "-".into() };
        println!("{name:<20} {:>10} {:>10} {:>10}", col(b[0]), col(b[1]), col(b[2]));
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = candidates
}

fn main() {
    if let Some(rounds) = std::env::var("WGPMD_X25519_MIN").ok().and_then(|v| v.parse().ok()) {
        min_table(rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
