//! Allowed-IPs lookup throughput at a million prefixes, against exact-match references.
//!
//! Builds one table of random IPv4 prefixes (/8../32, mostly /16../24) and one of random IPv6
//! prefixes (/16../128, mostly /32../64), prints build time and bytes per prefix, then measures
//! batches of 1024 lookups: uniformly random addresses, and addresses inside inserted prefixes
//! ("hit"), each iteration taking the next batch from a pool of up to 2^20 addresses so that
//! caches hold no more than they would in a real run. The references, measured in the same run over the same number of keys, are exact-match
//! lookups of inserted network addresses in a `std::collections::HashMap` (default SipHash), the
//! same map with the crate's `IndexHasher`, and a binary search of a sorted `Vec`.
//!
//! Quick mode (100k prefixes, short measurements): `WGPMD_BENCH_QUICK=1` or `-- --quick`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::allowedips::AllowedIps;
use wgpmd_proto::index::BuildIndexHasher;

const BATCH: usize = 1024;

fn v4_cidr(rng: &mut ChaCha20Rng) -> u8 {
    match rng.gen_range(0..10) {
        0 => rng.gen_range(8..=15),
        1 => rng.gen_range(25..=32),
        _ => rng.gen_range(16..=24),
    }
}

fn v6_cidr(rng: &mut ChaCha20Rng) -> u8 {
    match rng.gen_range(0..10) {
        0 => rng.gen_range(16..=31),
        1 | 2 => rng.gen_range(65..=128),
        _ => rng.gen_range(32..=64),
    }
}

fn mask(v: u128, cidr: u8, width: u8) -> u128 {
    if cidr == 0 {
        0
    } else {
        v & !((1u128 << (width - cidr)).wrapping_sub(1))
    }
}

struct Family {
    name: &'static str,
    width: u8,
    prefixes: Vec<(u128, u8)>,
}

impl Family {
    fn addr(&self, v: u128) -> IpAddr {
        if self.width == 32 {
            IpAddr::V4(Ipv4Addr::from(v as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }
}

fn family(name: &'static str, width: u8, n: usize, rng: &mut ChaCha20Rng) -> Family {
    let cidr = if width == 32 { v4_cidr } else { v6_cidr };
    let prefixes = (0..n)
        .map(|_| {
            let c = cidr(rng);
            let v = rng.gen::<u128>() >> (128 - u32::from(width));
            (mask(v, c, width), c)
        })
        .collect();
    Family { name, width, prefixes }
}

fn bench_family(c: &mut Criterion, f: &Family, rng: &mut ChaCha20Rng) {
    let n = f.prefixes.len();
    let start = Instant::now();
    let mut table = AllowedIps::new();
    for (i, &(net, cidr)) in f.prefixes.iter().enumerate() {
        table.insert(f.addr(net), cidr, i as u32).expect("valid prefix");
    }
    let build = start.elapsed();
    let grown = table.stats();
    let start = Instant::now();
    table.compact();
    let compact = start.elapsed();
    let s = table.stats();
    let (prefixes, trie_grown, trie) = if f.width == 32 {
        (s.v4_prefixes, grown.v4_trie_bytes, s.v4_trie_bytes)
    } else {
        (s.v6_prefixes, grown.v6_trie_bytes, s.v6_trie_bytes)
    };
    println!(
        "{}: {n} random prefixes ({prefixes} distinct): build {:.0} ms ({:.0} ns/insert), compact {:.0} ms; \
         trie {:.1} B/prefix grown, {:.1} compacted; with per-peer index {:.1} / {:.1} B/prefix; {} nodes",
        f.name,
        build.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e9 / n as f64,
        compact.as_secs_f64() * 1e3,
        trie_grown as f64 / prefixes as f64,
        trie as f64 / prefixes as f64,
        grown.total_bytes as f64 / prefixes as f64,
        s.total_bytes as f64 / prefixes as f64,
        if f.width == 32 { s.v4_nodes } else { s.v6_nodes },
    );

    // Pools of addresses far larger than a batch, walked a batch per iteration, so the table,
    // not just the paths of 1024 fixed addresses, is the working set.
    let pool = n.clamp(BATCH, 1 << 20);
    let width_mask = u128::MAX >> (128 - u32::from(f.width));
    let random: Vec<IpAddr> = (0..pool).map(|_| f.addr(rng.gen::<u128>() & width_mask)).collect();
    let picks: Vec<(u128, u8)> = (0..pool).map(|_| f.prefixes[rng.gen_range(0..n)]).collect();
    let hits: Vec<IpAddr> = picks
        .iter()
        .map(|&(net, cidr)| f.addr(net | (rng.gen::<u128>() & width_mask & !mask(u128::MAX, cidr, 128))))
        .collect();
    let hit_keys: Vec<u128> = picks.iter().map(|&(net, _)| net).collect();
    drop(picks);

    let mut g = c.benchmark_group(format!("{}_{}k", f.name, n / 1000));
    g.throughput(Throughput::Elements(BATCH as u64));
    bench_batches(&mut g, "trie_random", &random, |a| table.lookup(a).unwrap_or(0));
    bench_batches(&mut g, "trie_hit", &hits, |a| table.lookup(a).unwrap_or(0));
    bench_batched_api(&mut g, "trie_random_batch_api", &table, &random);
    bench_batched_api(&mut g, "trie_hit_batch_api", &table, &hits);
    drop((random, hits));

    // References over the same number of keys: the networks, exact match, all hits.
    if f.width == 32 {
        // IPv4 keys as u32, as a real exact-match table would hold them.
        let keys: Vec<u32> = hit_keys.iter().map(|&k| k as u32).collect();
        let entries = || f.prefixes.iter().enumerate().map(|(i, &(k, _))| (k as u32, i as u32));
        let std_map: HashMap<u32, u32> = entries().collect();
        bench_batches(&mut g, "std_hashmap_exact_hit", &keys, |k| *std_map.get(&k).unwrap_or(&0));
        drop(std_map);
        let fast_map: HashMap<u32, u32, BuildIndexHasher> = entries().collect();
        bench_batches(&mut g, "indexhasher_hashmap_exact_hit", &keys, |k| *fast_map.get(&k).unwrap_or(&0));
        drop(fast_map);
        let mut sorted: Vec<u32> = entries().map(|(k, _)| k).collect();
        sorted.sort_unstable();
        bench_batches(&mut g, "sorted_vec_binary_search_hit", &keys, |k| sorted.binary_search(&k).unwrap_or(0) as u32);
    } else {
        let keys = hit_keys;
        let entries = || f.prefixes.iter().enumerate().map(|(i, &(k, _))| (k, i as u32));
        let std_map: HashMap<u128, u32> = entries().collect();
        bench_batches(&mut g, "std_hashmap_exact_hit", &keys, |k| *std_map.get(&k).unwrap_or(&0));
        drop(std_map);
        let fast_map: HashMap<u128, u32, BuildIndexHasher> = entries().collect();
        bench_batches(&mut g, "indexhasher_hashmap_exact_hit", &keys, |k| *fast_map.get(&k).unwrap_or(&0));
        drop(fast_map);
        let mut sorted: Vec<u128> = entries().map(|(k, _)| k).collect();
        sorted.sort_unstable();
        bench_batches(&mut g, "sorted_vec_binary_search_hit", &keys, |k| sorted.binary_search(&k).unwrap_or(0) as u32);
    }
    g.finish();
}

/// Benchmarks `f` over successive batches of `BATCH` items of `pool`, one batch per iteration.
fn bench_batches<T: Copy>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    pool: &[T],
    f: impl Fn(T) -> u32,
) {
    let batches = pool.len() / BATCH;
    let mut next = 0;
    g.bench_function(id, |b| {
        b.iter(|| {
            let batch = pool.get(next * BATCH..(next + 1) * BATCH).unwrap_or_default();
            next = (next + 1) % batches;
            batch.iter().fold(0u32, |acc, &x| acc.wrapping_add(f(black_box(x))))
        })
    });
}

/// Like [`bench_batches`], through `lookup_v4_batch` / `lookup_v6_batch` (bursts of 32, as
/// a poll-mode driver would call it).
fn bench_batched_api(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    table: &AllowedIps<u32>,
    pool: &[IpAddr],
) {
    const BURST: usize = 32;
    let v4: Vec<Ipv4Addr> = pool.iter().filter_map(|a| if let IpAddr::V4(a) = a { Some(*a) } else { None }).collect();
    let v6: Vec<Ipv6Addr> = pool.iter().filter_map(|a| if let IpAddr::V6(a) = a { Some(*a) } else { None }).collect();
    let batches = pool.len() / BATCH;
    let mut next = 0;
    let mut out = [None; BURST];
    g.bench_function(id, |b| {
        b.iter(|| {
            let range = next * BATCH..(next + 1) * BATCH;
            next = (next + 1) % batches;
            let mut acc = 0u32;
            if let Some(batch) = v4.get(range.clone()) {
                for burst in batch.chunks(BURST) {
                    table.lookup_v4_batch(black_box(burst), &mut out);
                    acc = out.iter().fold(acc, |acc, p| acc.wrapping_add(p.unwrap_or(0)));
                }
            } else if let Some(batch) = v6.get(range) {
                for burst in batch.chunks(BURST) {
                    table.lookup_v6_batch(black_box(burst), &mut out);
                    acc = out.iter().fold(acc, |acc, p| acc.wrapping_add(p.unwrap_or(0)));
                }
            }
            acc
        })
    });
}

fn main() {
    let quick = std::env::var("WGPMD_BENCH_QUICK").is_ok_and(|v| v == "1") || std::env::args().any(|a| a == "--quick");
    let n = if quick { 100_000 } else { 1_000_000 };
    let base = Criterion::default();
    let base = if quick {
        base.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10)
    } else {
        base.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20)
    };
    let mut c = base.configure_from_args();
    let mut rng = ChaCha20Rng::seed_from_u64(0x0a11_0ed1);
    for (name, width) in [("ipv4", 32), ("ipv6", 128)] {
        let f = family(name, width, n, &mut rng);
        bench_family(&mut c, &f, &mut rng);
    }
    c.final_summary();
}
