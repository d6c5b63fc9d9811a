//! wgpmd's tables stay bounded under abuse and long load, and an established peer keeps working:
//! inner traffic to 256 peers that never answer (staging), a flood of ARP and neighbour
//! discovery from 100,000 addresses (the neighbour table), and a minute of two-way iperf3 with
//! several peers (the timer wheel and the process's memory).
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test bounded`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpmd_e2e::*;
use wgpmd_proto::wire::{arp, ethernet, icmpv6, ipv6, ChecksumCapabilities, EtherType, EthernetAddress, IpProtocol};

/// `count` pings of `ns` to `addr`, one every `interval` (e.g. "0.02"), in the background;
/// `sample` is called about every 100 ms until ping exits. Returns ping's summary with the
/// replies the namespace's kernel counted (`Icmp: InEchoReps`), late ones included (up to 5 s
/// after ping exits).
fn pings_while(
    ctx: &Ctx,
    ns: &Netns,
    addr: Ipv4Addr,
    count: u32,
    interval: &str,
    mut sample: impl FnMut() -> Result<()>,
) -> Result<(PingStats, u64)> {
    let reps0 = ns.snmp_counter("Icmp", "InEchoReps")?;
    let (count_s, addr_s) = (count.to_string(), addr.to_string());
    let mut ping =
        Proc::spawn(ctx, ns, "ping", &["ping", "-n", "-c", &count_s, "-i", interval, "-W", "5", &addr_s], &[])?;
    while ping.is_running() {
        sample()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = PingStats::parse(&ping.log())?;
    let mut got = 0;
    let _ = wait_until("late echo replies", secs(5), || {
        got = ns.snmp_counter("Icmp", "InEchoReps")? - reps0;
        Ok((got >= u64::from(count)).then_some(()))
    });
    Ok((st, got))
}

/// A process's resident set (`VmRSS` of /proc/PID/status), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS value")
}

/// The MAC of `ifname` in `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> Result<EthernetAddress> {
    let s = ns.run(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    let b: Vec<u8> = s.trim().split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>()?;
    Ok(EthernetAddress(b.try_into().map_err(|_| anyhow::anyhow!("MAC {s}"))?))
}

/// (1) Inner traffic towards 256 peers that never answer (their endpoints are addresses on the
/// WAN where nobody is), the way an internet scan of the inner addresses goes, while an
/// established wireguard-go peer pings every 20 ms. Before the per-pool bound, the staged
/// packets (128 per peer) emptied the worker's buffer pool and the worker stopped receiving
/// anything. Now: `staged_packets` never exceeds `staged_capacity` (a quarter of the pool), the
/// overflow is counted (`staged_dropped_cap`), and all 50 pings are answered.
#[test]
fn offline_peers_do_not_starve_an_established_one() {
    run("offline_peers_do_not_starve_an_established_one", |ctx| {
        const OFFLINE: usize = 256;
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut cfg = topo.concentrator_device();
        for i in 0..OFFLINE {
            let inner = format!("10.101.{}.{}/32", i / 250, 1 + i % 250);
            let ep = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 100 + (i % 150) as u8), 20_000 + i as u16));
            cfg = cfg.peer(PeerConfig::new(&KeyPair::generate().public_b64(), &[&inner]).endpoint(ep));
        }
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &cfg, &WgpmdOptions::default())?;
        c.ns.ip(&["route", "add", "10.101.0.0/16", "dev", d.ifname()])?;
        // A long TUN queue: the kernel must not drop the ping replies behind the flood.
        c.ns.ip(&["link", "set", "dev", d.ifname(), "txqueuelen", "20000"])?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;

        // About 25,000 datagrams a second, round robin over the 256 peers, for up to 30 s.
        let script = "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             dst = [('10.101.%d.%d' % (i // 250, 1 + i % 250), 9) for i in range(256)]\n\
             print('flooding', flush=True)\n\
             end = time.time() + 30\n\
             while time.time() < end:\n    \
                 for d in dst:\n        \
                     try:\n            s.sendto(b'x' * 64, d)\n        \
                     except OSError:\n            pass\n    \
                 time.sleep(0.01)\n";
        let mut flood = Proc::spawn(ctx, &c.ns, "inner-flood", &["python3", "-u", "-c", script], &[])?;
        let st = d.wait_stats("the staging bound reached", |s| Ok(s.get("staged_dropped_cap")? > 0))?;
        let cap = st.get("staged_capacity")?;
        ensure!(cap > 0 && cap <= 4096 / 4, "staged_capacity = {cap}");

        let mut samples = Vec::new();
        let (ping, replies) = pings_while(ctx, &p.ns, c.inner_ip, 50, "0.02", || {
            let s = d.stats()?;
            samples.push((s.get("staged_packets")?, s.get("staged_dropped_cap")?));
            Ok(())
        })?;
        flood.ensure_running().context("the flood ended before the pings")?;
        flood.stop();
        eprintln!(
            "pings during the flood: {ping:?}, {replies} replies counted; (staged, dropped) samples: {samples:?}"
        );
        ensure!(!samples.is_empty(), "no counters sampled during the pings");
        for &(staged, _) in &samples {
            ensure!(staged <= cap, "staged_packets = {staged} over its bound {cap}");
        }
        ensure!(samples.iter().any(|&(staged, _)| staged > cap / 2), "the flood never filled the staging: {samples:?}");
        ensure!(samples.last().unwrap().1 > samples[0].1, "no drops counted during the pings: {samples:?}");
        ensure!(replies >= 50, "{replies} of 50 pings answered during the flood ({ping:?})");
        ping_replied(&p.ns, c.inner_ip, 5)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// An Ethernet frame from `src` to `dst` around `payload`.
fn frame(src: EthernetAddress, dst: EthernetAddress, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let eth = ethernet::Repr { src_addr: src, dst_addr: dst, vlan: None, ethertype };
    let mut f = vec![0u8; eth.buffer_len(payload.len()).max(60)];
    f[eth.header_len()..eth.header_len() + payload.len()].copy_from_slice(payload);
    eth.emit(&mut ethernet::Frame::new_unchecked(&mut f[..])).expect("room for the header");
    f
}

fn arp_packet(
    operation: arp::Operation,
    sha: EthernetAddress,
    spa: Ipv4Addr,
    tha: EthernetAddress,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let r = arp::Repr {
        operation,
        source_hardware_addr: sha,
        source_protocol_addr: spa,
        target_hardware_addr: tha,
        target_protocol_addr: tpa,
    };
    let mut p = vec![0u8; r.buffer_len()];
    r.emit(&mut arp::Packet::new_unchecked(&mut p[..])).expect("room");
    p
}

/// An unsolicited neighbour advertisement of `target` at `mac`, to `dst`.
fn advert(target: Ipv6Addr, mac: EthernetAddress, dst: Ipv6Addr) -> Vec<u8> {
    let flags = icmpv6::NeighborFlags { router: false, solicited: false, override_: true };
    let msg = icmpv6::Repr::NeighborAdvert { flags, target_addr: target, target_lladdr: Some(mac) };
    let mut icmp = vec![0u8; msg.buffer_len()];
    let n = msg
        .emit(&mut icmpv6::Packet::new_unchecked(&mut icmp[..]), &target, &dst, &ChecksumCapabilities::default())
        .expect("room");
    icmp.truncate(n);
    let ip = ipv6::Repr {
        src_addr: target,
        dst_addr: dst,
        next_header: IpProtocol::ICMPV6,
        payload_len: icmp.len(),
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut p = vec![0u8; ip.buffer_len()];
    p[ipv6::HEADER_LEN..].copy_from_slice(&icmp);
    ip.emit(&mut ipv6::Packet::new_unchecked(&mut p[..])).expect("room");
    p
}

/// (2) A flood of ARP and neighbour discovery from 100,000 addresses on wgpmd's WAN (a /15,
/// so that they all are on its subnet), each frame from another address, while an established
/// wireguard-go peer pings: requests for wgpmd's address (learned on probation: RFC 826's
/// merge), unsolicited ARP replies and neighbour advertisements (refused), requests with a
/// multicast or zero sender MAC (refused) and from addresses off the subnet (refused).
/// `neigh_entries` never exceeds the table's bound (`--neigh-max-entries 512`), evictions and
/// each refusal are counted, and the pings get through.
#[test]
fn neighbour_flood_leaves_the_table_bounded() {
    run("neighbour_flood_leaves_the_table_bounded", |ctx| {
        const CAP: u64 = 512;
        const SOURCES: u32 = 100_000;
        let topo = Topology::new(2)?;
        let (c, p, f) = (&topo.concentrator, &topo.peers[0], &topo.peers[1]);
        c.ns.ip(&["addr", "flush", "dev", &c.outer_if])?;
        let our6: Ipv6Addr = "fd00:99::1".parse()?;
        let opts = WgpmdOptions {
            extra_args: ["--address", "fd00:99::1/64", "--neigh-max-entries", &CAP.to_string()]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let mut d =
            Wgpmd::start(ctx, &c.ns, &c.outer_if, &format!("{}/15", c.outer_ip), &topo.concentrator_device(), &opts)?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        ensure!(d.stats()?.get("neigh_max_entries")? == CAP);

        let (ours, theirs) = (mac_of(&c.ns, &c.outer_if)?, mac_of(&f.ns, &f.outer_if)?);
        // Source i: 10.98.0.0 + i, skipping 10.99.0.0/24 where the real hosts are.
        let source = |i: u32| {
            let n = 0x0a62_0000 + i + if i >= 0x1_0000 { 256 } else { 0 };
            (
                Ipv4Addr::from(n),
                EthernetAddress([0x02, 0x5a, (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            )
        };
        let frames: Vec<Vec<u8>> = (0..SOURCES)
            .map(|i| {
                let (ip, mac) = source(i);
                let req = |sha, spa| arp_packet(arp::Operation::Request, sha, spa, EthernetAddress([0; 6]), c.outer_ip);
                match i % 6 {
                    0 | 1 => frame(theirs, ours, EtherType::ARP, &req(mac, ip)),
                    2 => frame(
                        theirs,
                        ours,
                        EtherType::ARP,
                        &arp_packet(arp::Operation::Reply, mac, ip, ours, c.outer_ip),
                    ),
                    3 => {
                        let target = Ipv6Addr::from(0xfd00_0099_0000_0000_0000_0000_0100_0000u128 + u128::from(i));
                        frame(theirs, ours, EtherType::IPV6, &advert(target, mac, our6))
                    }
                    4 if i % 12 == 4 => {
                        frame(theirs, ours, EtherType::ARP, &req(EthernetAddress([1, 0, 0x5e, 0, 1, 2]), ip))
                    }
                    4 => frame(theirs, ours, EtherType::ARP, &req(EthernetAddress([0; 6]), ip)),
                    _ => frame(theirs, ours, EtherType::ARP, &req(mac, Ipv4Addr::from(0xac10_0000 + i))),
                }
            })
            .collect();
        let before = d.stats()?;
        let stop = Arc::new(AtomicBool::new(false));
        let probe = SocketAddr::from((c.outer_ip, 9));
        // 100 frames a millisecond: a pass over the 100,000 in about a second.
        let sender = send_frames(&f.ns, &f.outer_if, probe, Arc::new(frames), 100, stop.clone());
        let t0 = Instant::now();
        let mut entries = Vec::new();
        let sampled = pings_while(ctx, &p.ns, c.inner_ip, 50, "0.02", || {
            entries.push(d.stats()?.get("neigh_entries")?);
            Ok(())
        });
        // At least two passes of the flood whatever the pings did.
        while t0.elapsed() < Duration::from_secs(2) {
            entries.push(d.stats()?.get("neigh_entries")?);
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        let (ping, replies) = sampled?;
        let after = d.stats()?;
        let delta = |k: &str| -> Result<u64> { Ok(after.get(k)? - before.get(k)?) };
        eprintln!(
            "flood: {sent:?} in {:.1} s; neigh_entries samples {entries:?}; now {} entries ({} on probation), \
             {} evicted, refused: unsolicited {}, multicast {}, zero_mac {}, not_neighbour {}, full {}; \
             WAN ring drops {}; pings {ping:?}, {replies} replies",
            t0.elapsed().as_secs_f64(),
            after.get("neigh_entries")?,
            after.get("neigh_probation")?,
            delta("neigh_evicted")?,
            delta("neigh_refused_unsolicited")?,
            delta("neigh_refused_multicast")?,
            delta("neigh_refused_zero_mac")?,
            delta("neigh_refused_not_neighbour")?,
            delta("neigh_refused_full")?,
            after.workers_sum("wan_queue_rx_dropped")? - before.workers_sum("wan_queue_rx_dropped")?,
        );
        ensure!(sent.sent >= u64::from(SOURCES), "only {sent:?} sent");
        entries.push(after.get("neigh_entries")?);
        ensure!(entries.iter().all(|&e| e <= CAP), "neigh_entries over {CAP}: {entries:?}");
        ensure!(after.get("neigh_entries")? >= CAP / 2, "the flood hardly reached the table");
        ensure!(delta("neigh_evicted")? > 0, "nothing evicted: the bound was never tested");
        for k in [
            "neigh_refused_unsolicited",
            "neigh_refused_multicast",
            "neigh_refused_zero_mac",
            "neigh_refused_not_neighbour",
        ] {
            ensure!(delta(k)? > 0, "{k} not counted");
        }
        ensure!(delta("neigh_refused_full")? == 0, "probation entries refused although none is active but the peer's");
        ensure!(replies >= 45, "{replies} of 50 pings answered during the flood ({ping:?})");
        ping_replied(&p.ns, c.inner_ip, 5)?;
        ping_replied(&c.ns, p.inner_ip, 5)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// (3) A minute of two-way iperf3 (`--bidir`) through wgpmd from three wireguard-go peers:
/// `wheel_entries` never exceeds `peers`, and after a 15 s warm-up wgpmd's resident memory
/// grows by less than 2 MiB. (Before the wheel kept one entry per peer, every move of a timer
/// added one: a single peer under `iperf3 --bidir -P 4` grew wgpmd by 4 MiB in 40 s.)
#[test]
fn soak_bidir_iperf_memory_flat() {
    run("soak_bidir_iperf_memory_flat", |ctx| {
        const PEERS: usize = 3;
        const SECS: u64 = 60;
        let topo = Topology::new(PEERS)?;
        let c = &topo.concentrator;
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let mut peers = Vec::new();
        for i in 0..PEERS {
            peers.push(WgGo::start(ctx, &topo.peers[i].ns, &topo.peer_device(i))?);
            wait_for_ping(&topo.peers[i].ns, c.inner_ip, secs(30))?;
        }
        let addr = c.inner_ip.to_string();
        let mut procs = Vec::new();
        for (i, p) in topo.peers.iter().enumerate() {
            let port = (5301 + i).to_string();
            procs.push(Proc::spawn(
                ctx,
                &c.ns,
                &format!("iperf3-server{i}"),
                &["iperf3", "-s", "-B", &addr, "-p", &port],
                &[],
            )?);
            let t = (SECS + 10).to_string();
            wait_until("iperf3 server listening", secs(30), || {
                let out = c.ns.run(&["ss", "-H", "-l", "-t", "-n", &format!("sport = :{port}")])?;
                Ok((!out.trim().is_empty()).then_some(()))
            })?;
            procs.push(Proc::spawn(
                ctx,
                &p.ns,
                &format!("iperf3-client{i}"),
                &["iperf3", "-c", &addr, "-p", &port, "--bidir", "-t", &t, "-i", "10", "--connect-timeout", "10000"],
                &[],
            )?);
        }
        let pid = d.proc().pid();
        let t0 = Instant::now();
        let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new(); // (s, rss KiB, wheel, peers)
        let rx0 = d.stats()?.workers_sum("data_rx")?;
        while t0.elapsed() < Duration::from_secs(SECS - 2) {
            std::thread::sleep(Duration::from_secs(3));
            let s = d.stats()?;
            let (wheel, peers) = (s.get("wheel_entries")?, s.get("peers")?);
            samples.push((t0.elapsed().as_secs_f64(), rss_kib(pid)?, wheel, peers));
            ensure!(wheel <= peers, "{wheel} wheel entries for {peers} peers at {:.0} s", t0.elapsed().as_secs_f64());
        }
        let moved = d.stats()?.workers_sum("data_rx")? - rx0;
        for pr in &mut procs {
            pr.ensure_running().context("an iperf3 ended early")?;
        }
        drop(procs);
        eprintln!("(s, VmRSS KiB, wheel entries, peers): {samples:?}; {moved} data messages received");
        ensure!(moved > 100_000, "only {moved} data messages in {SECS} s: not a soak");
        let warm: Vec<u64> = samples.iter().filter(|s| s.0 >= 15.0).map(|s| s.1).collect();
        ensure!(warm.len() >= 10, "too few samples after the warm-up: {samples:?}");
        let growth = warm.iter().max().unwrap() - warm[0];
        ensure!(growth < 2048, "VmRSS grew {growth} KiB after the warm-up: {samples:?}");
        drop(peers);
        d.ensure_running()?;
        d.stop()
    });
}
