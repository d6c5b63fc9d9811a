//! The soak: wgpmd under churn for a chosen duration (`WGPMD_SOAK_SECS`, default 120;
//! `scripts/soak.sh --duration SECS` runs it), with three real peers (two wireguard-go, one
//! boringtun-cli) each sending two-way TCP and UDP traffic (iperf3 `--bidir`, rate-limited), while
//! - peers are added and removed with `wg set` every 3 s (throwaway keys, never more than 6);
//! - one wireguard-go peer roams (a new UDP port every 20 s);
//! - every 20 s, from another namespace, a flood of handshake initiations with a valid MAC1 and a
//!   burst of junk datagrams hit the WAN address;
//! - sessions rekey on the protocol's own schedule (every 2 minutes; a run of 5 minutes or more
//!   must see at least one new session per peer per 3 minutes).
//!
//! Every 5 s it samples wgpmd's RSS, every counter and bounded structure (`wgpmd stats`) and each
//! peer's bytes (`wg show dump`; a sample is stamped when those were read). It fails if, after
//! the warm-up (a sixth of the run, at least 30 s): RSS grows by more than 2 MiB over its value
//! at the end of the warm-up; an established peer stops moving bytes for a sample or
//! `peers_with_session` drops below the three; a counter
//! goes backwards; a bounded structure passes its capacity; or a peer's rate over a window falls
//! below `WGPMD_SOAK_MIN_RATE` (default 0.9 for runs of 10 minutes or more, 0.5 for shorter
//! runs, where a window is 5 s and a roaming step weighs more) times its rate in the first window
//! after the warm-up (windows: a minute, or 15 s for runs under 10 minutes). The samples go to
//! `soak-samples.csv` in the test's log directory, the summary to stderr.
//!
//! Run: `cargo build --release -p wgpmd && WGPMD_SOAK_SECS=3600 cargo test -p wgpmd-e2e --release
//! --test soak -- --nocapture` (as root; the hour-long run is the one docs/TESTING.md records).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wgpmd_e2e::*;

/// Stats keys that are gauges (sizes, capacities, states); every other key is a counter.
const GAUGES: &[&str] = &[
    "peers",
    "peers_with_session",
    "wheel_entries",
    "event_queue_depth",
    "event_queue_capacity",
    "handshake_queue_depth",
    "handshake_queue_capacity",
    "tx_jobs_depth",
    "tx_jobs_capacity",
    "staged_packets",
    "staged_capacity",
    "neigh_entries",
    "neigh_probation",
    "neigh_max_entries",
    "neigh_parked_hops",
    "neigh_parked_frames",
    "under_load",
    "wan_link_up",
    // The longest worker iteration of the last 2 to 4 s: a window, not a counter.
    "max_iteration_us_recent",
    // The exception path's queue depths, capacity and rate (`exception.<name>`).
    "exception.to_kernel_depth",
    "exception.from_kernel_depth",
    "exception.queue_capacity",
    "exception.rate",
];
/// Bounded structures: (size, capacity).
const BOUNDS: &[(&str, &str)] = &[
    ("event_queue_depth", "event_queue_capacity"),
    ("handshake_queue_depth", "handshake_queue_capacity"),
    ("tx_jobs_depth", "tx_jobs_capacity"),
    ("staged_packets", "staged_capacity"),
    ("neigh_entries", "neigh_max_entries"),
];
const REAL_PEERS: usize = 3;
const MAX_CHURN: usize = 6;
const SAMPLE: Duration = Duration::from_secs(5);
const RSS_BOUND_KIB: u64 = 2048;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

/// Initiations with a valid MAC1 for `responder` from an identity wgpmd does not know.
fn valid_mac1_initiations(responder: [u8; 32], count: usize) -> Result<Vec<Vec<u8>>> {
    use rand_core::OsRng;
    use wgpmd_proto::crypto::PrivateKey;
    use wgpmd_proto::device::{Device, Output};
    use wgpmd_proto::time::Timestamp;
    let mut dev = Device::new(&mut OsRng, 0);
    dev.set_private_key(Some(PrivateKey::generate(&mut OsRng)));
    let id = dev.add_peer(&mut OsRng, responder).map_err(|e| anyhow::anyhow!("add_peer: {e:?}"))?;
    dev.set_endpoint(id, "10.99.0.1:51820".parse()?).map_err(|e| anyhow::anyhow!("set_endpoint: {e:?}"))?;
    let mut out = Output::with_capacity(4);
    let mut msgs = Vec::with_capacity(count);
    for i in 0..count as u64 {
        out.clear();
        dev.initiate(Timestamp::from_secs(10 + 6 * i), &mut OsRng, id, &mut out)
            .map_err(|e| anyhow::anyhow!("initiate: {e:?}"))?;
        msgs.push(out.transmits.first().context("initiate sent nothing")?.payload().to_vec());
    }
    Ok(msgs)
}

/// Sends `msgs` then `junk` random datagrams to `to` from inside `ns` (one thread).
fn burst(ns: &Netns, to: SocketAddr, msgs: &[Vec<u8>], junk: usize) -> Result<u64> {
    let name = ns.name().to_string();
    let msgs = msgs.to_vec();
    std::thread::spawn(move || -> Result<u64> {
        enter_netns(&name)?;
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut sent = 0;
        for m in &msgs {
            sent += u64::from(s.send_to(m, to).is_ok());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        for i in 0..junk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize + 1;
            let mut b: Vec<u8> = (0..len).map(|k| (x >> (k % 8 * 8)) as u8).collect();
            b[0] = (i % 6) as u8; // types 0..5: unknown, the four messages, unknown
            let port = if i % 4 == 0 { 40000 + (x % 1000) as u16 } else { to.port() };
            sent += u64::from(s.send_to(&b, SocketAddr::new(to.ip(), port)).is_ok());
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("burst thread panicked"))?
}

struct Sample {
    t: f64,
    rss_kib: u64,
    stats: Counters,
    /// Per real peer: rx + tx bytes at wgpmd.
    bytes: Vec<u64>,
}

#[test]
fn soak() {
    run("soak", |ctx| {
        let dur = Duration::from_secs(env_u64("WGPMD_SOAK_SECS", 120));
        let long = dur >= Duration::from_secs(600);
        let warmup = (dur / 6).max(Duration::from_secs(30));
        let window = if long { Duration::from_secs(60) } else { Duration::from_secs(15) };
        let min_rate: f64 = std::env::var("WGPMD_SOAK_MIN_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(if long {
            0.9
        } else {
            0.5
        });
        let topo = Topology::new(REAL_PEERS + 1)?;
        let c = &topo.concentrator;
        let attacker = &topo.peers[REAL_PEERS];
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let _go0 = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
        let roamer = WgGo::start(ctx, &topo.peers[1].ns, &topo.peer_device(1))?;
        let _bt = BoringtunPeer::start(ctx, &topo.peers[2].ns, &topo.peer_device(2))?;
        for p in &topo.peers[..REAL_PEERS] {
            wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        }
        // Two-way TCP and UDP per peer, rate-limited (the machine is shared): iperf3 --bidir.
        let run_secs = (dur + Duration::from_secs(60)).as_secs().to_string();
        let mut procs = Vec::new();
        for (i, p) in topo.peers[..REAL_PEERS].iter().enumerate() {
            for (j, udp) in [false, true].into_iter().enumerate() {
                let port = (5201 + 2 * i + j).to_string();
                procs.push(Proc::spawn(ctx, &c.ns, &format!("iperf3-s{i}{j}"), &["iperf3", "-s", "-p", &port], &[])?);
                let srv = port.clone();
                let ip = c.inner_ip.to_string();
                wait_until("iperf3 server", secs(10), || {
                    Ok(c.ns.run(&["ss", "-ltn"])?.contains(&format!(":{srv}")).then_some(()))
                })?;
                let mut args = vec!["iperf3", "-c", &ip, "-p", &port, "-t", &run_secs, "--bidir", "-i", "0"];
                let extra: &[&str] =
                    if udp { &["-u", "-b", "1M", "-l", "1200"] } else { &["-b", "2M", "-l", "8K", "-M", "1300"] };
                args.extend_from_slice(extra);
                procs.push(Proc::spawn(ctx, &p.ns, &format!("iperf3-c{i}{j}"), &args, &[])?);
            }
        }
        let keys: Vec<String> = topo.peers[..REAL_PEERS].iter().map(|p| p.key.public_b64()).collect();
        let ifn = d.ifname().to_string();
        let wg = |args: &[&str]| -> Result<()> {
            let out = run_cmd(std::process::Command::new("wg").args(args), secs(15))?;
            ensure!(out.status.success(), "wg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        let flood = valid_mac1_initiations(c.key.public_bytes(), 1500)?;
        let wan = SocketAddr::from((c.outer_ip, CONCENTRATOR_PORT));

        let t0 = Instant::now();
        let mut samples: Vec<Sample> = Vec::new();
        let mut churn: Vec<String> = Vec::new();
        let (mut added, mut removed, mut roams, mut bursts, mut burst_sent) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut next_churn = Duration::ZERO;
        let mut next_roam = Duration::from_secs(20);
        let mut next_burst = Duration::from_secs(10);
        let mut next_sample = Duration::ZERO;
        let mut late = 0f64;
        // The longest churn step, roam, flood burst and stats read (seconds).
        let mut slowest = [0f64; 4];
        let mut csv = String::from("t_s,late_s,rss_kib,peers,peers_with_session,sessions,cookies_sent,peer_bytes\n");
        let mut failures: Vec<String> = Vec::new();
        while t0.elapsed() < dur {
            let now = t0.elapsed();
            if now >= next_churn {
                next_churn += Duration::from_secs(3);
                let began = Instant::now();
                let k = KeyPair::generate().public_b64();
                let ip = format!("10.100.2.{}/32", (added % 250) + 1);
                wg(&["set", &ifn, "peer", &k, "allowed-ips", &ip, "endpoint", "10.99.0.250:51820"])?;
                churn.push(k);
                added += 1;
                if churn.len() > MAX_CHURN / 2 {
                    let k = churn.remove(0);
                    wg(&["set", &ifn, "peer", &k, "remove"])?;
                    removed += 1;
                }
                slowest[0] = slowest[0].max(began.elapsed().as_secs_f64());
            }
            if now >= next_roam {
                next_roam += Duration::from_secs(20);
                roams += 1;
                let port = (51821 + roams % 8).to_string();
                let began = Instant::now();
                roamer.wg(&["set", roamer.ifname(), "listen-port", &port])?;
                slowest[1] = slowest[1].max(began.elapsed().as_secs_f64());
            }
            if now >= next_burst {
                next_burst += Duration::from_secs(20);
                bursts += 1;
                let began = Instant::now();
                burst_sent += burst(&attacker.ns, wan, &flood, 2000)?;
                slowest[2] = slowest[2].max(began.elapsed().as_secs_f64());
            }
            if now >= next_sample {
                next_sample += SAMPLE;
                d.ensure_running()?;
                let began = Instant::now();
                let stats = d.stats()?;
                let show = d.show()?;
                let bytes = keys
                    .iter()
                    .map(|k| show.peer(k).map(|p| p.rx_bytes + p.tx_bytes).context("a real peer vanished"))
                    .collect::<Result<Vec<u64>>>()?;
                // The sample's time is when its bytes were read, not when the loop came round:
                // the churn, roam and burst steps before it can be late on a loaded machine.
                let read_at = t0.elapsed();
                slowest[3] = slowest[3].max(began.elapsed().as_secs_f64());
                late = late.max((read_at - now).as_secs_f64());
                let s = Sample { t: read_at.as_secs_f64(), rss_kib: rss_kib(d.proc().pid())?, stats, bytes };
                let _ = writeln!(
                    csv,
                    "{:.1},{:.1},{},{},{},{},{},{}",
                    s.t,
                    (read_at - now).as_secs_f64(),
                    s.rss_kib,
                    s.stats.get("peers")?,
                    s.stats.get("peers_with_session")?,
                    s.stats.total("sessions")?,
                    s.stats.total("cookies_sent")?,
                    s.bytes.iter().map(u64::to_string).collect::<Vec<_>>().join(";")
                );
                if let Some(prev) = samples.last() {
                    check_sample(prev, &s, now >= warmup, &mut failures);
                }
                samples.push(s);
                if failures.len() > 20 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        ctx.write_file("soak-samples.csv", &csv)?;

        // RSS after the warm-up.
        let w = warmup.as_secs_f64();
        let base = samples.iter().find(|s| s.t >= w).context("no sample after the warm-up")?;
        let peak = samples.iter().filter(|s| s.t >= w).map(|s| s.rss_kib).max().unwrap_or(0);
        let end = samples.last().context("no samples")?;
        if peak > base.rss_kib + RSS_BOUND_KIB {
            failures.push(format!(
                "RSS grew from {} KiB (end of warm-up) to {peak} KiB (bound {RSS_BOUND_KIB} KiB)",
                base.rss_kib
            ));
        }
        // Each peer's rate per window against its first window after the warm-up.
        let mut rates_report = String::new();
        for i in 0..REAL_PEERS {
            let mut rates = Vec::new();
            let mut from = base;
            for s in samples.iter().filter(|s| s.t >= w) {
                if s.t - from.t >= window.as_secs_f64() - 0.5 {
                    rates.push((s.bytes[i] - from.bytes[i]) as f64 / (s.t - from.t));
                    from = s;
                }
            }
            let first = rates.first().copied().unwrap_or(0.0);
            let lowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let _ = writeln!(
                rates_report,
                "peer {i}: {} windows, first {:.0} kB/s, lowest {:.0} kB/s ({:.2}x)",
                rates.len(),
                first / 1e3,
                lowest / 1e3,
                lowest / first.max(1.0)
            );
            if rates.len() >= 2 && lowest < min_rate * first {
                failures
                    .push(format!("peer {i}: a window at {:.2}x its first rate (bound {min_rate}x)", lowest / first));
            }
        }
        let sessions = end.stats.total("sessions")? - samples[0].stats.total("sessions")?;
        eprintln!(
            "soak {:.0} s (warm-up {:.0} s): RSS {} KiB at the end of warm-up, peak after {peak} KiB, end {} KiB; \
             {} samples; churn: {added} peers added, {removed} removed; {roams} roams; {bursts} floods+junk \
             bursts ({burst_sent} datagrams); {sessions} sessions made; cookies sent {}; \
             peers_with_session at the end {}; a sample read at most {late:.1} s after its turn; \
             longest steps: churn {:.1} s, roam {:.1} s, burst {:.1} s, stats read {:.1} s\n{rates_report}",
            t0.elapsed().as_secs_f64(),
            w,
            base.rss_kib,
            end.rss_kib,
            samples.len(),
            end.stats.total("cookies_sent")?,
            end.stats.get("peers_with_session")?,
            slowest[0],
            slowest[1],
            slowest[2],
            slowest[3],
        );
        // Sessions rekey every REKEY_AFTER_TIME (120 s) while traffic flows: a run of 5 minutes or
        // more must see them (a 2-minute run ends about when the first rekeys are due).
        let rekeys_due = (dur.as_secs() / 180) * REAL_PEERS as u64;
        if dur >= Duration::from_secs(300) && sessions < rekeys_due {
            failures.push(format!(
                "only {sessions} sessions made in {} s (rekeys due: at least {rekeys_due})",
                dur.as_secs()
            ));
        }
        ensure!(failures.is_empty(), "soak failed:\n{}", failures.join("\n"));
        for p in &topo.peers[..REAL_PEERS] {
            ping_replied(&p.ns, c.inner_ip, 3)?;
        }
        drop(procs);
        d.stop()
    });
}

/// Between two samples: counters only grow, bounded structures stay within their capacity, and
/// (after the warm-up) every real peer moved bytes and has its session.
fn check_sample(prev: &Sample, s: &Sample, after_warmup: bool, failures: &mut Vec<String>) {
    let map: &HashMap<String, u64> = &s.stats.0;
    for (k, &v) in map {
        // Per-worker keys are `workerN.<name>`.
        let name = k.strip_prefix("worker").and_then(|r| r.split_once('.')).map_or(k.as_str(), |(_, n)| n);
        let gauge = GAUGES.contains(&name) || k.starts_with("dpdk_link");
        if let (false, Some(&p)) = (gauge, prev.stats.0.get(k)) {
            if v < p {
                failures.push(format!("t={:.0}s: counter {k} went backwards: {p} -> {v}", s.t));
            }
        }
    }
    for (size, cap) in BOUNDS {
        if let (Some(&n), Some(&c)) = (map.get(*size), map.get(*cap)) {
            if n > c {
                failures.push(format!("t={:.0}s: {size} = {n} over its capacity {c}", s.t));
            }
        }
    }
    if map.get("peers").is_some_and(|&n| n > (REAL_PEERS + MAX_CHURN) as u64) {
        failures.push(format!("t={:.0}s: {} peers", s.t, map["peers"]));
    }
    if after_warmup {
        for (i, (&a, &b)) in prev.bytes.iter().zip(&s.bytes).enumerate() {
            if b <= a {
                failures.push(format!("t={:.0}s: peer {i} moved no bytes in {:.0} s", s.t, s.t - prev.t));
            }
        }
        if map.get("peers_with_session").is_some_and(|&n| n < REAL_PEERS as u64) {
            failures.push(format!(
                "t={:.0}s: peers_with_session = {} (an established session lost)",
                s.t, map["peers_with_session"]
            ));
        }
    }
}
