//! Per-peer memory and configuration speed at carrier scale. For each device size N it loads N
//! peers through the calls the UAPI `set` makes (`add_peer`, then `add_allowed_ip` with one /32
//! each), under a counting global allocator, and reports:
//! - bytes per configured peer with no session (net bytes allocated, tables included), and the
//!   growth of the process's resident set per peer (allocator overhead included);
//! - the add rate, the slowest single add and how many adds took over a millisecond (a table
//!   growing under it; on a shared machine, also the scheduler taking the core away);
//! - the time of a private-key change with N peers;
//! - lookups by public key and by allowed IP;
//! - bytes added by a session (a current keypair that seals and opens), established by real
//!   handshakes with a second device for a sample of the peers, and bytes added by a second
//!   keypair (the previous one, after one more handshake) for a smaller sample. The slots hold
//!   at most two keypairs outside races, as in the kernel: a responder's new keypair (next)
//!   drops the previous one, and confirming it drops the previous again.
//!
//! ```text
//! cargo run --release -p wgpmd-proto --example peer_memory -- [--4m]
//!     [--peers 100000,1000000] [--sessions 10000] [--slots 1000]
//! ```
//!
//! `--4m` adds N = 2^22 (the default peer limit). Results: docs/PERFORMANCE.md, "Per-peer
//! memory".
#![forbid(unsafe_code)]

#[path = "../tests/common/peer_load.rs"]
mod peer_load;

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use peer_load::{allowed_ip, Hub, Remotes};
use rand_chacha::rand_core::RngCore;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use wgpmd_proto::crypto::PrivateKey;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed since `region` began.
fn net(region: &Region<System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64
}

/// The process's resident set in bytes (Linux), if readable.
fn rss() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct Args {
    sizes: Vec<u32>,
    sessions: u32,
    slots: u32,
}

fn args() -> Args {
    let mut a = Args { sizes: vec![100_000, 1_000_000], sessions: 10_000, slots: 1_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--4m" => a.sizes.push(1 << 22),
            "--peers" => a.sizes = value().split(',').map(|n| n.parse().expect("a peer count")).collect(),
            "--sessions" => a.sessions = value().parse().expect("a count"),
            "--slots" => a.slots = value().parse().expect("a count"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args = args();
    println!(
        "| peers | bytes/idle peer | RSS/idle peer | add rate (peers/s) | slowest add | key change | \
         by key | by IP | bytes added by a session | RSS/session | bytes added by a previous keypair | handshake |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!("(slowest add: the longest single add_peer + add_allowed_ip, and the count over 1 ms)");
    for &n in &args.sizes {
        run(n, args.sessions.min(n), args.slots.min(args.sessions).min(n));
    }
}

fn run(n: u32, sessions: u32, slots: u32) {
    let mut hub = Hub::new(u64::from(n));
    hub.dev.set_max_peers(n as usize);
    let mut remotes = Remotes::new(&mut hub, sessions as usize);
    remotes.ids.reserve(sessions as usize);
    let mut key = [0u8; 32];

    // Configuration: N peers, one allowed IP each.
    let rss0 = rss();
    let region = Region::new(GLOBAL);
    let start = Instant::now();
    remotes.add_to_hub(&mut hub, 0);
    let mut slowest = Duration::ZERO;
    let mut over_1ms = 0u32;
    for i in sessions..n {
        hub.rng.fill_bytes(&mut key);
        let t = Instant::now();
        black_box(hub.add_peer(i, key));
        let d = t.elapsed();
        slowest = slowest.max(d);
        over_1ms += u32::from(d > Duration::from_millis(1));
    }
    let add = start.elapsed();
    assert_eq!(hub.dev.peer_count(), n as usize);
    let idle = net(&region) as f64 / f64::from(n);
    let rss_idle = rss().zip(rss0).map(|(a, b)| (a - b) as f64 / f64::from(n));

    // A key change with N peers: no per-peer work.
    let new_key = PrivateKey::generate(&mut hub.rng);
    let t = Instant::now();
    hub.dev.set_private_key(Some(new_key));
    let key_change = t.elapsed();

    // Lookups: every sampled key, and 100,000 allowed IPs spread over the table.
    let keys: Vec<[u8; 32]> =
        remotes.ids.iter().map(|&id| *hub.dev.peer(id).expect("sampled peer").public_key()).collect();
    let t = Instant::now();
    for (k, &id) in keys.iter().zip(&remotes.ids) {
        assert_eq!(hub.dev.peer_by_key(black_box(k)), Some(id));
    }
    let by_key = t.elapsed() / sessions.max(1);
    let probes = 100_000u32;
    let t = Instant::now();
    for j in 0..probes {
        let i = (u64::from(j) * u64::from(n) / u64::from(probes)) as u32;
        assert!(hub.dev.route(black_box(allowed_ip(i))).is_some());
    }
    let by_ip = t.elapsed() / probes;

    // Sessions for the sample, through real handshakes with a second device.
    let rss1 = rss();
    let region = Region::new(GLOBAL);
    let t = Instant::now();
    {
        let mut player = remotes.player(&mut hub);
        for j in 0..sessions as usize {
            remotes.hub_initiates(&mut player, &mut hub, j);
        }
    }
    let handshake = t.elapsed() / sessions.max(1);
    let session = net(&region) as f64 / f64::from(sessions.max(1));
    let rss_session = rss().zip(rss1).map(|(a, b)| (a - b) as f64 / f64::from(sessions.max(1)));

    // A previous keypair for a smaller sample: one more handshake (after our own initiation
    // rate limit, one per REKEY_TIMEOUT and peer).
    hub.now = hub.now + Duration::from_secs(6);
    let region = Region::new(GLOBAL);
    {
        let mut player = remotes.player(&mut hub);
        for j in 0..slots as usize {
            remotes.hub_initiates(&mut player, &mut hub, j);
        }
    }
    let two_slots = net(&region) as f64 / f64::from(slots.max(1));
    for &id in remotes.ids.iter().take(slots as usize) {
        let p = hub.dev.peer(id).expect("sampled peer");
        assert!(p.current_local_index().is_some());
    }

    let per = |x: Option<f64>| x.map_or("?".into(), |v| format!("{v:.0}"));
    let (rss_idle, rss_session) = (per(rss_idle), per(rss_session));
    let rate = f64::from(n) / add.as_secs_f64();
    let (slowest, key_change) = (ms(slowest), ms(key_change));
    let (by_key, by_ip) = (by_key.as_nanos(), by_ip.as_nanos());
    let handshake = handshake.as_secs_f64() * 1e6;
    println!(
        "| {n} | {idle:.0} | {rss_idle} | {rate:.0} | {slowest} ({over_1ms} > 1 ms) | {key_change} | {by_key} ns | \
         {by_ip} ns | {session:.0} (sample {sessions}) | {rss_session} | {two_slots:.0} (sample {slots}) | \
         {handshake:.0} µs |"
    );
}
