//! Multi-lane ChaCha20-Poly1305 against ring, per packet, in one run: bursts of 16 packets of 64,
//! 512 and 1420 bytes (16 peers' keys, WireGuard nonces, no additional data), sealed and opened
//! on every backend this CPU runs, next to ring's `seal_in_place_separate_tag` /
//! `open_in_place_separate_tag` on the same packets one by one.
//!
//! `cargo bench -p wgpmd-aead --bench lanes`; set `WGPMD_BENCH_QUICK=1` for a short run (0.3 s
//! warm-up, 1 s measurement). Criterion reports time per burst of 16; the `summary` target
//! prints ns per packet and the ratio to ring (best of several rounds). Results: aead/DESIGN.md.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use wgpmd_aead::{wireguard_nonce, Backend, Lane, Lanes, MAX_LANES};

const SIZES: [usize; 3] = [64, 512, 1420];
const BURST: usize = MAX_LANES;
/// Bursts prepared (untimed) per round of the open benchmarks.
const CHUNK: u64 = 256;

fn quick() -> bool {
    std::env::var("WGPMD_BENCH_QUICK").as_deref() == Ok("1")
}

fn keys() -> Vec<[u8; 32]> {
    (0..BURST).map(|i| [i as u8 + 1; 32]).collect()
}

fn ring_keys(keys: &[[u8; 32]]) -> Vec<LessSafeKey> {
    keys.iter().map(|k| LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).unwrap())).collect()
}

fn engines() -> Vec<Lanes> {
    Backend::ALL.into_iter().filter_map(Lanes::with_backend).collect()
}

/// Seals one burst of `bufs` with `engine` at nonce counter `ctr`.
fn seal_burst(engine: &Lanes, keys: &[[u8; 32]], bufs: &mut [Vec<u8>], ctr: u64) -> [u8; 16] {
    let mut lanes: [Lane<'_>; BURST] = {
        let mut it = bufs.iter_mut().zip(keys);
        std::array::from_fn(|_| {
            let (b, k) = it.next().expect("BURST buffers");
            Lane::wireguard(k, ctr, b)
        })
    };
    engine.seal_lanes(black_box(&mut lanes)).unwrap();
    lanes[BURST - 1].tag
}

/// Seals the same burst with ring, packet by packet.
fn ring_seal_burst(keys: &[LessSafeKey], bufs: &mut [Vec<u8>], ctr: u64) -> Tag {
    let mut last = None;
    for (k, b) in keys.iter().zip(bufs.iter_mut()) {
        last = Some(
            k.seal_in_place_separate_tag(Nonce::assume_unique_for_key(wireguard_nonce(ctr)), Aad::empty(), b).unwrap(),
        );
    }
    last.expect("BURST packets")
}

/// A sealed burst: (ciphertexts, tags), at counter `ctr`.
fn sealed(keys: &[[u8; 32]], len: usize, ctr: u64) -> (Vec<Vec<u8>>, Vec<[u8; 16]>) {
    let engine = Lanes::new();
    let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|i| vec![i as u8; len]).collect();
    let mut lanes: Vec<Lane<'_>> = bufs.iter_mut().zip(keys).map(|(b, k)| Lane::wireguard(k, ctr, b)).collect();
    engine.seal_lanes(&mut lanes).unwrap();
    let tags = lanes.iter().map(|l| l.tag).collect();
    drop(lanes);
    (bufs, tags)
}

fn open_burst(engine: &Lanes, keys: &[[u8; 32]], bufs: &mut [Vec<u8>], tags: &[[u8; 16]], ctr: u64) -> u16 {
    let mut lanes: [Lane<'_>; BURST] = {
        let mut it = bufs.iter_mut().zip(keys).zip(tags);
        std::array::from_fn(|_| {
            let ((b, k), t) = it.next().expect("BURST buffers");
            Lane { tag: *t, ..Lane::wireguard(k, ctr, b) }
        })
    };
    engine.open_lanes(black_box(&mut lanes)).unwrap()
}

fn ring_open_burst(keys: &[LessSafeKey], bufs: &mut [Vec<u8>], tags: &[[u8; 16]], ctr: u64) -> usize {
    let mut n = 0;
    for ((k, b), t) in keys.iter().zip(bufs.iter_mut()).zip(tags) {
        let nonce = Nonce::assume_unique_for_key(wireguard_nonce(ctr));
        n += k.open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(*t), b, 0..).unwrap().len();
    }
    n
}

/// Times opening `iters` bursts, sealing them `CHUNK` at a time outside the timed section.
fn timed_open(
    iters: u64,
    keys: &[[u8; 32]],
    len: usize,
    mut open: impl FnMut(&mut [Vec<u8>], &[[u8; 16]], u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut ctr = 0u64;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut batch: Vec<_> = (0..n)
            .map(|_| {
                ctr += 1;
                let (b, t) = sealed(keys, len, ctr);
                (b, t, ctr)
            })
            .collect();
        let start = Instant::now();
        for (b, t, c) in batch.iter_mut() {
            open(b, t, *c);
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal16");
    let keys = keys();
    let rkeys = ring_keys(&keys);
    for len in SIZES {
        g.throughput(Throughput::Bytes((BURST * len) as u64));
        let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|i| vec![i as u8; len]).collect();
        let mut ctr = 0u64;
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter(|| {
                ctr += 1;
                black_box(ring_seal_burst(&rkeys, &mut bufs, ctr))
            })
        });
        for engine in engines() {
            g.bench_with_input(BenchmarkId::new(engine.backend().name(), len), &len, |b, _| {
                b.iter(|| {
                    ctr += 1;
                    black_box(seal_burst(&engine, &keys, &mut bufs, ctr))
                })
            });
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open16");
    let keys = keys();
    let rkeys = ring_keys(&keys);
    for len in SIZES {
        g.throughput(Throughput::Bytes((BURST * len) as u64));
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter_custom(|iters| {
                timed_open(iters, &keys, len, |bufs, tags, ctr| {
                    black_box(ring_open_burst(&rkeys, bufs, tags, ctr));
                })
            })
        });
        for engine in engines() {
            g.bench_with_input(BenchmarkId::new(engine.backend().name(), len), &len, |b, _| {
                b.iter_custom(|iters| {
                    timed_open(iters, &keys, len, |bufs, tags, ctr| {
                        assert_eq!(black_box(open_burst(&engine, &keys, bufs, tags, ctr)), u16::MAX);
                    })
                })
            });
        }
    }
    g.finish();
}

/// Best-of-rounds ns per packet of `a` and of `b` (one call = one burst of 16), measured in
/// alternating rounds so that load from other processes hits both alike.
fn ns_per_packet(mut a: impl FnMut(u64), mut b: impl FnMut(u64)) -> (f64, f64) {
    let (rounds, per_round) = if quick() { (20, Duration::from_millis(15)) } else { (60, Duration::from_millis(30)) };
    let mut best = [f64::INFINITY; 2];
    let mut ctr = 0u64;
    for _ in 0..rounds {
        for (which, f) in [&mut a as &mut dyn FnMut(u64), &mut b].into_iter().enumerate() {
            let start = Instant::now();
            let mut bursts = 0u64;
            while start.elapsed() < per_round {
                for _ in 0..16 {
                    ctr += 1;
                    f(ctr);
                }
                bursts += 16;
            }
            best[which] = best[which].min(start.elapsed().as_nanos() as f64 / (bursts * BURST as u64) as f64);
        }
    }
    (best[0], best[1])
}

/// Seal ns per packet of every backend, each next to ring measured in the same rounds, on bursts
/// of `lens`, as one summary line.
fn summary_line(label: &str, lens: &[usize], keys: &[[u8; 32]], rkeys: &[LessSafeKey]) -> String {
    let mut ring_bufs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &len)| vec![i as u8; len]).collect();
    let mut bufs = ring_bufs.clone();
    let mut line = format!("{label:>12}:");
    for engine in engines() {
        let (ring, ours) = ns_per_packet(
            |ctr| {
                let _ = black_box(ring_seal_burst(rkeys, &mut ring_bufs, ctr));
            },
            |ctr| {
                black_box(seal_burst(&engine, keys, &mut bufs, ctr));
            },
        );
        line += &format!(" | {} {ours:6.1} vs ring {ring:6.1} ({:.2}x)", engine.backend().name(), ring / ours);
    }
    line
}

/// ns per packet of seal for every backend and ring, and the ratios ring / backend: uniform
/// bursts, then mixed ones (Poly1305 runs as many steps as the longest lane has blocks).
fn summary(_c: &mut Criterion) {
    let keys = keys();
    let rkeys = ring_keys(&keys);
    println!("\nseal, bursts of {BURST} packets, best of rounds: ns per packet (speed-up over ring)");
    for len in SIZES {
        println!("{}", summary_line(&format!("{len} B"), &[len; BURST], &keys, &rkeys));
    }
    let mut one_long = [64; BURST];
    one_long[0] = 1420;
    println!("{}", summary_line("1x1420+64", &one_long, &keys, &rkeys));
    // A bulk flow with acknowledgements among its full-size packets: 12 x 1420, 4 x 64 bytes.
    let bulk = [1420, 1420, 1420, 64, 1420, 1420, 1420, 1420, 64, 1420, 1420, 1420, 64, 1420, 1420, 64];
    println!("{}", summary_line("12x1420+4x64", &bulk, &keys, &rkeys));
    // A simple IMIX-like burst: 7 x 64, 4 x 576, 5 x 1420 bytes, interleaved.
    let imix = [64, 576, 1420, 64, 64, 1420, 576, 64, 1420, 64, 576, 1420, 64, 576, 64, 1420];
    println!("{}", summary_line("imix", &imix, &keys, &rkeys));
    lane_count_summary(&keys);
    ipsec_mb_summary(&keys, &rkeys);
}

/// What a call costs per packet when fewer lanes are busy (the fastest backend's seal, calls of
/// 4, 8, 12 and 16 packets): a lane kernel runs its whole width, so a burst of data cut short
/// by other frames pays for lanes it does not use (the worker tops its data up to whole bursts).
fn lane_count_summary(keys: &[[u8; 32]]) {
    let engine = Lanes::new();
    let (rounds, per_round) = if quick() { (10, Duration::from_millis(10)) } else { (40, Duration::from_millis(25)) };
    println!("\nseal by lanes in use ({}), best of rounds: ns per packet (per call)", engine.backend().name());
    for len in SIZES {
        let mut line = format!("{len:>6} B:");
        for n in [4usize, 8, 12, 16] {
            let mut bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; len]).collect();
            let mut best = f64::INFINITY;
            let mut ctr = 0u64;
            for _ in 0..rounds {
                let start = Instant::now();
                let mut calls = 0u64;
                while start.elapsed() < per_round {
                    ctr += 1;
                    let mut lanes: Vec<Lane<'_>> =
                        bufs.iter_mut().zip(keys).map(|(b, k)| Lane::wireguard(k, ctr, b)).collect();
                    engine.seal_lanes(black_box(&mut lanes)).unwrap();
                    calls += 1;
                }
                best = best.min(start.elapsed().as_nanos() as f64 / calls as f64);
            }
            line += &format!(" | {n:2} lanes {:6.1} ({best:7.1})", best / n as f64);
        }
        println!("{line}");
    }
}

/// libipsec-mb (feature `ipsec-mb`): its single-buffer ChaCha20-Poly1305, one packet at a time,
/// seal and open, each next to ring in alternating rounds, and our fastest backend's seal.
#[cfg(feature = "ipsec-mb")]
fn ipsec_mb_summary(keys: &[[u8; 32]], rkeys: &[LessSafeKey]) {
    use wgpmd_aead::ipsec_mb::IpsecMb;
    let Some(mut imb) = IpsecMb::new() else {
        println!("libipsec-mb: could not make a manager on this CPU");
        return;
    };
    println!("\nlibipsec-mb ({} code path), one packet at a time: ns per packet (ring / it)", imb.arch());
    let engine = Lanes::new();
    for len in SIZES {
        let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|i| vec![i as u8; len]).collect();
        let mut ring_bufs = bufs.clone();
        let imb_seal = |bufs: &mut [Vec<u8>], ctr: u64, imb: &mut IpsecMb| {
            let mut last = [0u8; 16];
            for (k, b) in keys.iter().zip(bufs.iter_mut()) {
                last = imb.seal(k, &wireguard_nonce(ctr), &[], b);
            }
            last
        };
        let (ring_seal, imb_s) = ns_per_packet(
            |ctr| {
                let _ = black_box(ring_seal_burst(rkeys, &mut ring_bufs, ctr));
            },
            |ctr| {
                black_box(imb_seal(&mut bufs, ctr, &mut imb));
            },
        );
        let (ours, imb_s2) = ns_per_packet(
            |ctr| {
                black_box(seal_burst(&engine, keys, &mut ring_bufs, ctr));
            },
            |ctr| {
                black_box(imb_seal(&mut bufs, ctr, &mut imb));
            },
        );
        // Open: the same burst opened again and again. Each open decrypts in place, so after the
        // first the tags no longer match; ring and libipsec-mb both decrypt and compute the whole
        // tag either way, so the work timed is the same. The first open must verify.
        let (mut sealed, tags) = sealed(keys, len, 7);
        let mut ring_sealed = sealed.clone();
        let mut check = sealed[0].clone();
        assert!(imb.open(&keys[0], &wireguard_nonce(7), &[], &mut check, &tags[0]), "libipsec-mb open");
        assert_eq!(check, vec![0u8; len], "libipsec-mb plaintext");
        let (ring_open, imb_o) = ns_per_packet(
            |_| {
                for ((k, b), t) in rkeys.iter().zip(ring_sealed.iter_mut()).zip(&tags) {
                    let nonce = Nonce::assume_unique_for_key(wireguard_nonce(7));
                    let _ = black_box(k.open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(*t), b, 0..));
                }
            },
            |_| {
                for ((k, b), t) in keys.iter().zip(sealed.iter_mut()).zip(&tags) {
                    black_box(imb.open(k, &wireguard_nonce(7), &[], b, t));
                }
            },
        );
        println!(
            "{len:>6} B: seal {imb_s:6.1} (ring {ring_seal:6.1}, {:.2}x; ours {} {ours:6.1} vs it {imb_s2:6.1}, {:.2}x) | open {imb_o:6.1} (ring {ring_open:6.1}, {:.2}x)",
            ring_seal / imb_s,
            engine.backend().name(),
            imb_s2 / ours,
            ring_open / imb_o
        );
    }
}

#[cfg(not(feature = "ipsec-mb"))]
fn ipsec_mb_summary(_keys: &[[u8; 32]], _rkeys: &[LessSafeKey]) {
    println!("\nlibipsec-mb: not measured (build with --features ipsec-mb)");
}

fn config() -> Criterion {
    let c = Criterion::default();
    if quick() {
        c.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20)
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = seal, open, summary
}
criterion_main!(benches);
