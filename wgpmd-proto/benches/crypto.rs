//! Data-path crypto throughput, in one run: raw ChaCha20-Poly1305 (ring, RustCrypto), our
//! `Keypair::seal` / `Keypair::open` (ring's key prepared per message; the device's data path
//! seals and opens bursts with the multi-lane `wgpmd_aead` instead, measured by `wgpmd bench`),
//! and boringtun's `Tunn::encapsulate` / `Tunn::decapsulate`
//! on an established session, for 64, 512 and 1420-byte payloads; and the per-packet cost of
//! per-peer state kept compact: setting up ring's key from raw bytes (done per message by
//! `Keypair`), and reading a peer's endpoint (sequence lock) against an `ArcSwapOption`.
//!
//! `cargo bench -p wgpmd-proto --bench crypto`; set `WGPMD_BENCH_QUICK=1` for a short run
//! (0.3 s warm-up, 1 s measurement). Results: the repository's docs/PERFORMANCE.md, "Data-path
//! crypto".
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::{AeadKey, Secret};
use wgpmd_proto::device::Device;
use wgpmd_proto::messages::{DATA_HEADER_LEN, DEFAULT_TUNNEL_MTU, TAG_LEN};
use wgpmd_proto::session::Keypair;
use wgpmd_proto::time::Timestamp;

const SIZES: [usize; 3] = [64, 512, DEFAULT_TUNNEL_MTU];
const MTU: usize = DEFAULT_TUNNEL_MTU;
/// Messages prepared (untimed) per round of the open/decapsulate benchmarks.
const CHUNK: u64 = 1024;
const NOW: Timestamp = Timestamp::from_secs(1);

/// An IPv4/UDP packet of `len` bytes (boringtun checks the inner IP header on decapsulate).
fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Time `run` over `iters` items, preparing them `CHUNK` at a time outside the timed section.
fn timed_chunks<P>(iters: u64, mut prepare: impl FnMut(usize) -> Vec<P>, mut run: impl FnMut(&mut P)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut batch = prepare(n as usize);
        let start = Instant::now();
        for item in batch.iter_mut() {
            run(item);
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// Our two ends of a session: (sender, receiver).
fn our_pair() -> (Keypair, Keypair) {
    let (k1, k2) = (Secret([1; 32]), Secret([2; 32]));
    (Keypair::new(&k1, &k2, 1, 2, true, NOW), Keypair::new(&k2, &k1, 2, 1, false, NOW))
}

/// Two boringtun tunnels with a completed handshake (initiator confirmed by its keepalive).
fn boringtun_pair() -> (Tunn, Tunn) {
    let sa = StaticSecret::from([3u8; 32]);
    let sb = StaticSecret::from([4u8; 32]);
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None);
    let mut b = Tunn::new(sb, pa, None, None, 2, None);
    let mut buf = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no initiation"),
    };
    let resp = match b.decapsulate(None, &init, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no response"),
    };
    let keepalive = match a.decapsulate(None, &resp, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no keepalive"),
    };
    assert!(matches!(b.decapsulate(None, &keepalive, &mut buf), TunnResult::Done));
    (a, b)
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    let key = [7u8; 32];
    for len in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let plain = ipv4_packet(len);

        let ring = AeadKey::new(&key);
        let mut buf = plain.clone();
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter(|| {
                counter += 1;
                black_box(ring.seal_in_place(counter, &[], black_box(&mut buf[..])))
            })
        });

        let rc = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        let mut buf = plain.clone();
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("rustcrypto", len), &len, |b, _| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                black_box(rc.encrypt_in_place_detached((&nonce).into(), &[], black_box(&mut buf[..])).unwrap())
            })
        });

        let (ours, _) = our_pair();
        let mut buf = vec![0u8; DATA_HEADER_LEN + len + 16 + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&plain);
        g.bench_with_input(BenchmarkId::new("wgpmd", len), &len, |b, _| {
            b.iter(|| black_box(ours.seal(NOW, black_box(&mut buf[..]), len, MTU).unwrap()))
        });

        let (mut bt, _) = boringtun_pair();
        let mut dst = vec![0u8; len + 64];
        g.bench_with_input(BenchmarkId::new("boringtun", len), &len, |b, _| {
            b.iter(|| match bt.encapsulate(black_box(&plain), &mut dst) {
                TunnResult::WriteToNetwork(p) => black_box(p.len()),
                _ => panic!("encapsulate failed"),
            })
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    let key = [7u8; 32];
    for len in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let plain = ipv4_packet(len);

        let ring = AeadKey::new(&key);
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    |n| {
                        (0..n)
                            .map(|_| {
                                counter += 1;
                                let mut m = plain.clone();
                                let tag = ring.seal_in_place(counter, &[], &mut m);
                                m.extend_from_slice(&tag);
                                (counter, m)
                            })
                            .collect()
                    },
                    |(ctr, m)| {
                        black_box(ring.open_in_place(*ctr, &[], black_box(&mut m[..])).unwrap());
                    },
                )
            })
        });

        let (tx, rx) = our_pair();
        g.bench_with_input(BenchmarkId::new("wgpmd", len), &len, |b, _| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    |n| {
                        (0..n)
                            .map(|_| {
                                let mut m = vec![0u8; DATA_HEADER_LEN + len + 16 + TAG_LEN];
                                m[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&plain);
                                let n = tx.seal(NOW, &mut m, len, MTU).unwrap();
                                m.truncate(n);
                                m
                            })
                            .collect()
                    },
                    |m| {
                        black_box(rx.open(NOW, black_box(&mut m[..])).unwrap());
                    },
                )
            })
        });
        let (mut bta, mut btb) = boringtun_pair();
        let mut dst = vec![0u8; len + 64];
        g.bench_with_input(BenchmarkId::new("boringtun", len), &len, |b, _| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    |n| {
                        let mut out = vec![0u8; len + 64];
                        (0..n)
                            .map(|_| match bta.encapsulate(&plain, &mut out) {
                                TunnResult::WriteToNetwork(p) => p.to_vec(),
                                _ => panic!("encapsulate failed"),
                            })
                            .collect()
                    },
                    |m| match btb.decapsulate(None, black_box(&m[..]), &mut dst) {
                        TunnResult::WriteToTunnelV4(p, _) => {
                            black_box(p.len());
                        }
                        _ => panic!("decapsulate failed"),
                    },
                )
            })
        });
    }
    g.finish();
}

fn per_packet_state(c: &mut Criterion) {
    let mut g = c.benchmark_group("state");
    let key = [7u8; 32];
    g.bench_function("aead_key_setup", |b| b.iter(|| black_box(AeadKey::new(black_box(&key)))));

    let ep: SocketAddr = "198.51.100.7:51820".parse().unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut dev = Device::new(&mut rng, 0);
    let id = dev.add_peer(&mut rng, [9u8; 32]).unwrap();
    dev.set_endpoint(id, ep).unwrap();
    let peer = dev.peer(id).unwrap();
    g.bench_function("endpoint/seqlock", |b| b.iter(|| black_box(black_box(peer).endpoint())));
    let swap = arc_swap::ArcSwapOption::from_pointee(ep);
    g.bench_function("endpoint/arc_swap", |b| b.iter(|| black_box(black_box(&swap).load().as_deref().copied())));
    g.finish();
}

fn config() -> Criterion {
    let c = Criterion::default();
    if std::env::var("WGPMD_BENCH_QUICK").as_deref() == Ok("1") {
        c.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20)
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = seal, open, per_packet_state
}
criterion_main!(benches);
