//! wgpmd on a DPDK port (`--port dpdk:...`, EAL arguments after `--`) against real
//! wireguard-go peers: the `net_af_packet` vdev on the concentrator's veth, without and with
//! hugepages, two workers on two queues; the `net_tap` vdev with two workers on two queues;
//! xstats and the zero-copy counters in `wgpmd stats`, the WAN exception path (`--exception
//! tap:NAME`: TCP and ICMP to the kernel during iperf3, a rate-limited flood), and the startup errors (bad EAL arguments, no ports, no memory for the mbuf pool).
//!
//! Needs a wgpmd built with `--features dpdk` and this crate's `dpdk` feature:
//! `cargo build --release -p wgpmd --features dpdk && cargo test -p wgpmd-e2e --release
//! --features dpdk --test dpdk` (as root). See docs/TESTING.md.
//!
//! Every run uses its own `--file-prefix`; a guard removes `/var/run/dpdk/<prefix>` (also on
//! failure), and the hugepage test restores `nr_hugepages`, unmounts its hugetlbfs and removes
//! leftover map files.

#![forbid(unsafe_code)]
#![cfg(feature = "dpdk")]

use anyhow::{ensure, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use wgpmd_e2e::*;

/// Removes EAL's runtime directory of a file prefix when dropped.
struct RuntimeDir(PathBuf);
impl RuntimeDir {
    fn new(tag: &str) -> (RuntimeDir, String) {
        let prefix = format!("wgpmd-e2e-{tag}-{}", std::process::id());
        (RuntimeDir(PathBuf::from(format!("/var/run/dpdk/{prefix}"))), prefix)
    }
}
impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A private hugetlbfs mount and `pages` more 2 MiB pages reserved; dropping it removes the
/// map files left in the mount, unmounts, removes the directory and restores `nr_hugepages`.
struct Hugepages {
    dir: PathBuf,
    before: u64,
    mounted: bool,
}

impl Hugepages {
    fn reserve(pages: u64) -> Result<Hugepages> {
        let before: u64 = std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
        let dir = PathBuf::from(format!("/tmp/wgpmd-e2e-huge-{}", std::process::id()));
        let mut h = Hugepages { dir: dir.clone(), before, mounted: false };
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string())?;
        let now: u64 = std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
        ensure!(now >= before + pages, "asked for {} hugepages, the kernel gave {now}", before + pages);
        std::fs::create_dir_all(&dir)?;
        run_cmd(
            std::process::Command::new("mount").args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"]).arg(&dir),
            secs(10),
        )
        .and_then(|o| {
            ensure!(o.status.success(), "mount hugetlbfs: {}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        })?;
        h.mounted = true;
        Ok(h)
    }
    fn free_pages() -> Result<u64> {
        let m = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")?;
        Ok(m.trim().parse()?)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                eprintln!("hugepages: removing leftover {}", e.path().display());
                let _ = std::fs::remove_file(e.path());
            }
        }
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

fn dpdk_opts(prefix: &str, lcores: &str, vdev: &str, mem: &[&str]) -> WgpmdOptions {
    let mut eal = vec!["--no-pci".to_string(), "--no-telemetry".into(), format!("--file-prefix={prefix}"), vdev.into()];
    eal.extend(mem.iter().map(|s| s.to_string()));
    WgpmdOptions {
        lcores: lcores.into(),
        control_shares_core: lcores != "0",
        port: Some("dpdk:net_af_packet0".into()),
        eal_args: eal,
        ..Default::default()
    }
}

/// The concentrator's veth: no kernel address (wgpmd answers ARP itself), offloads that would
/// hand af_packet super-frames or partial checksums off.
fn prepare_wan(topo: &Topology) -> Result<()> {
    let c = &topo.concentrator;
    c.ns.ip(&["addr", "flush", "dev", &c.outer_if])?;
    for p in std::iter::once(c).chain(topo.peers.iter()) {
        let _ = p.ns.run(&["ethtool", "-K", &p.outer_if, "tx", "off", "tso", "off", "gso", "off", "gro", "off"]);
    }
    Ok(())
}

fn ping_all(ns: &Netns, addr: Ipv4Addr) -> Result<PingStats> {
    ping_replied(ns, addr, 5)
}

/// Starts a wireguard-go peer per topology peer, pings wgpmd through each tunnel, and checks
/// that both workers' queues received, sent and decrypted. Returns the peers (alive until
/// dropped) and the counters.
fn both_queues_carry_traffic(ctx: &Ctx, topo: &Topology, d: &Wgpmd, what: &str) -> Result<(Vec<WgGo>, Counters)> {
    let c = &topo.concentrator;
    let mut peers = Vec::new();
    for i in 0..topo.peers.len() {
        peers.push(WgGo::start(ctx, &topo.peers[i].ns, &topo.peer_device(i))?);
    }
    for p in &topo.peers {
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        ping_all(&p.ns, c.inner_ip)?;
    }
    let st = d.wait_stats("both workers published", |s| Ok(s.workers() == 2))?;
    let rx = st.per_worker("wan_queue_rx_packets")?;
    let tx = st.per_worker("wan_queue_tx_packets")?;
    let opened = st.per_worker("aead_opened")?;
    eprintln!("{what} per queue: rx {rx:?}, tx {tx:?}, aead_opened {opened:?}, rss {:?}", st.get("dpdk_rss"));
    ensure!(rx.iter().all(|&n| n > 0) && opened.iter().all(|&n| n > 0), "a queue carried no traffic: rx {rx:?}");
    ensure!(tx.iter().all(|&n| n > 0), "a queue sent nothing: tx {tx:?}");
    Ok((peers, st))
}

/// Ping both ways and iperf3 through wgpmd on the DPDK port; xstats and the zero-copy
/// counters checked in `wgpmd stats`. Returns the counters.
fn tunnel_traffic(ctx: &Ctx, topo: &Topology, opts: &WgpmdOptions) -> Result<(Wgpmd, Counters)> {
    let c = &topo.concentrator;
    let mut d =
        Wgpmd::start(ctx, &c.ns, &c.outer_if, &format!("{}/24", c.outer_ip), &topo.concentrator_device(), opts)?;
    let mut peers = Vec::new();
    for i in 0..topo.peers.len() {
        peers.push(WgGo::start(ctx, &topo.peers[i].ns, &topo.peer_device(i))?);
    }
    for p in &topo.peers {
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        ping_all(&p.ns, c.inner_ip)?;
        ping_all(&c.ns, p.inner_ip)?;
    }
    let p0 = &topo.peers[0];
    let r = iperf3_report(&p0.ns, &c.ns, c.inner_ip, 3, false)?;
    eprintln!("iperf3 wg-go -> wgpmd (dpdk): {:.0} Mbit/s", r.bits_per_second / 1e6);
    ensure!(r.bits_per_second > 1e6, "iperf3 peer -> wgpmd: {r:?}");
    let r = iperf3_report(&p0.ns, &c.ns, c.inner_ip, 3, true)?;
    eprintln!("iperf3 wgpmd -> wg-go (dpdk, -R): {:.0} Mbit/s", r.bits_per_second / 1e6);
    ensure!(r.bits_per_second > 1e6, "iperf3 wgpmd -> peer: {r:?}");
    d.ensure_running()?;
    let st = d.wait_stats("WAN tx published", |s| Ok(s.workers_sum("wan_queue_tx_packets")? > 1000))?;
    // xstats of the DPDK port are in `wgpmd stats`, and they saw the traffic.
    let good_rx = st.get("dpdk_rx_good_packets")?;
    let good_tx = st.get("dpdk_tx_good_packets")?;
    eprintln!(
        "dpdk xstats: rx_good_packets {good_rx}, tx_good_packets {good_tx}, link_up {:?}",
        st.get("dpdk_link_up")
    );
    ensure!(good_rx > 1000 && good_tx > 1000, "xstats rx {good_rx} tx {good_tx}");
    ensure!(st.get("dpdk_link_up")? == 1, "link down");
    // Zero copy: everything the workers sealed (TUN reads into the port's mbufs) left as its
    // own mbuf; at most the handshake messages (the control core's come from its own pool)
    // were copied.
    let tx = st.workers_sum("wan_queue_tx_packets")?;
    let copied = st.workers_sum("wan_queue_tx_copied")?;
    let hs = st.total("responses_sent")? + st.total("initiations_sent")? + st.total("cookies_sent")?;
    eprintln!("WAN tx {tx}, copied into an mbuf {copied}, handshake messages sent {hs}");
    ensure!(copied <= hs + 8 * topo.peers.len() as u64, "{copied} of {tx} WAN frames were copied (handshakes: {hs})");
    ensure!(st.workers_sum("aead_sealed")? > 1000 && st.workers_sum("aead_opened")? > 1000, "data moved both ways");
    Ok((d, st))
}

/// wireguard-go <-> wgpmd on `dpdk:net_af_packet0` (iface = the concentrator's veth),
/// `--no-huge`: ping both ways, iperf3 both ways, xstats, no copy on the data path.
#[test]
fn dpdk_af_packet_nohuge_wggo() {
    run("dpdk_af_packet_nohuge_wggo", |ctx| {
        let (_rt, prefix) = RuntimeDir::new("nohuge");
        let topo = Topology::new(1)?;
        prepare_wan(&topo)?;
        let opts = dpdk_opts(
            &prefix,
            "0",
            "--vdev=net_af_packet0,iface={wan_if},framesz=1952,blocksz=249856,framecnt=512",
            &["--no-huge", "-m", "256"],
        );
        let (mut d, _) = tunnel_traffic(ctx, &topo, &opts)?;
        ensure!(d.log().contains("IOVA mode 'VA'"), "--no-huge runs IOVA as VA");
        d.stop()
    });
}

/// The same with hugepages: a private hugetlbfs mount (`--huge-dir`), 128 pages reserved for
/// the test; afterwards nr_hugepages, the mount and the map files are as before.
/// `--iova-mode=va`: in PA mode a queue's 8 MiB pool must be physically contiguous, which 2 MiB
/// pages on this machine are not (docs/OPERATIONS.md); no `-m` (memory given with -m is never
/// returned, and its map files stay until the mount goes).
#[test]
fn dpdk_af_packet_hugepages_wggo() {
    run("dpdk_af_packet_hugepages_wggo", |ctx| {
        let (_rt, prefix) = RuntimeDir::new("huge");
        let huge = Hugepages::reserve(128)?;
        let free_before = Hugepages::free_pages()?;
        let topo = Topology::new(1)?;
        prepare_wan(&topo)?;
        let dir = huge.dir.display().to_string();
        let opts = dpdk_opts(
            &prefix,
            "0",
            "--vdev=net_af_packet0,iface={wan_if},framesz=1952,blocksz=249856,framecnt=512",
            &["--huge-dir", &dir, "--iova-mode=va"],
        );
        let (mut d, _) = tunnel_traffic(ctx, &topo, &opts)?;
        let log = d.log();
        ensure!(!log.contains("--no-huge") && !log.contains("No free 2048 kB hugepages"), "ran without hugepages?");
        d.stop()?;
        // wgpmd freed its mempools before rte_eal_cleanup: no map files stay in the mount.
        let left: Vec<_> = std::fs::read_dir(&huge.dir)?.flatten().map(|e| e.path()).collect();
        ensure!(left.is_empty(), "hugepage map files left behind: {left:?}");
        let free_after = Hugepages::free_pages()?;
        ensure!(free_after == free_before, "free hugepages {free_before} before, {free_after} after");
        Ok(())
    });
}

/// Two workers on two queue pairs (`qpairs=2`: the PMD's sockets form a PACKET_FANOUT hash
/// group): ten peers' flows are spread over both queues, and both carry traffic. (The kernel's
/// flow hash has a per-boot seed: all ten flows on one queue, a false failure, has probability
/// 2^-9.)
#[test]
fn dpdk_two_workers_two_queues() {
    run("dpdk_two_workers_two_queues", |ctx| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ensure!(cores >= 2, "this test needs 2 cores, the machine has {cores}");
        let (_rt, prefix) = RuntimeDir::new("2q");
        let topo = Topology::new(10)?;
        prepare_wan(&topo)?;
        let mut opts = dpdk_opts(
            &prefix,
            "0-1",
            "--vdev=net_af_packet0,iface={wan_if},framesz=1952,blocksz=249856,framecnt=512,qpairs=2",
            &["--no-huge", "-m", "256"],
        );
        opts.control_shares_core = true;
        let c = &topo.concentrator;
        let mut d =
            Wgpmd::start(ctx, &c.ns, &c.outer_if, &format!("{}/24", c.outer_ip), &topo.concentrator_device(), &opts)?;
        let (_peers, st) = both_queues_carry_traffic(ctx, &topo, &d, "net_af_packet")?;
        ensure!(st.get("dpdk_rss")? == 0, "net_af_packet has no RSS offload (spreading is the kernel's fanout)");
        d.ensure_running()?;
        d.stop()
    });
}

/// Two workers on the two queues of a `net_tap` vdev (the PMD opens its TAP netdev with
/// IFF_MULTI_QUEUE, one descriptor per queue). The TAP is created by wgpmd in the concentrator
/// namespace; the test bridges it there with the concentrator's veth, so the peers reach wgpmd
/// through the TAP. Ten wireguard-go peers ping; both queues receive and transmit and both
/// workers decrypt.
///
/// Who spreads the flows: the kernel's tun driver, not RSS. Frames the kernel sends into the
/// TAP get a queue from `tun_automq_select_queue`: the queue wgpmd last wrote that flow on
/// (flow table, 3 s expiry), else the symmetric flow hash (per-boot seed) scaled to the queue
/// count. A peer's first packet (its handshake initiation) lands on the hash's queue; wgpmd's
/// reply goes out on whichever worker takes it from the shared tx-job queue, and from then on
/// the flow stays where wgpmd wrote it. Assuming each of the ten flows lands on either queue
/// with probability 1/2 independently, all ten on one queue (a false failure) has probability
/// 2^-9. net_tap claims RSS hash types in `flow_type_rss_offloads` but hashes only through
/// rte_flow RSS rules (a BPF program), which wgpmd does not install: the test prints what the
/// device claims (`dpdk_rss_offloads`) and checks `dpdk_rss` says RSS is off.
#[test]
fn dpdk_net_tap_two_workers_two_queues() {
    run("dpdk_net_tap_two_workers_two_queues", |ctx| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ensure!(cores >= 2, "this test needs 2 cores, the machine has {cores}");
        let (_rt, prefix) = RuntimeDir::new("tap2q");
        let topo = Topology::new(10)?;
        prepare_wan(&topo)?;
        let c = &topo.concentrator;
        // A bridge in the concentrator namespace: the veth to the LAN, and (below) the TAP.
        // Both go with the namespace when the topology is dropped; the TAP also goes when
        // wgpmd closes its descriptors.
        let br = "brtap";
        c.ns.ip(&["link", "add", br, "type", "bridge"])?;
        c.ns.ip(&["link", "set", &c.outer_if, "master", br])?;
        c.ns.ip(&["link", "set", br, "up"])?;
        let tap = unique_ifname("dtap");
        let mut opts = dpdk_opts(&prefix, "0-1", &format!("--vdev=net_tap0,iface={tap}"), &["--no-huge", "-m", "256"]);
        opts.port = Some("dpdk:net_tap0".into());
        opts.control_shares_core = true;
        let mut d = Wgpmd::start(ctx, &c.ns, &tap, &format!("{}/24", c.outer_ip), &topo.concentrator_device(), &opts)?;
        wait_until(&format!("TAP {tap} in {}", c.ns), secs(10), || Ok(c.ns.has_link(&tap).then_some(())))?;
        // The PMD gives its TAP netdev the port's MAC; a bridge treats its ports' own MACs as
        // local and would keep frames for wgpmd to itself. A different MAC for the netdev (the
        // PMD keeps its own and does not filter on the destination).
        c.ns.ip(&["link", "set", "dev", &tap, "address", "02:00:00:7a:70:01"])?;
        let _ = c.ns.sysctl(&format!("net.ipv6.conf.{tap}.disable_ipv6"), "1");
        c.ns.ip(&["link", "set", "dev", &tap, "master", br, "up"])?;
        let (_peers, st) = both_queues_carry_traffic(ctx, &topo, &d, "net_tap")?;
        eprintln!("net_tap flow_type_rss_offloads {:#x}", st.get("dpdk_rss_offloads")?);
        ensure!(st.get("dpdk_rss")? == 0, "net_tap does not hash on dev_configure (RSS only via rte_flow rules)");
        d.ensure_running()?;
        d.stop()?;
        ensure!(!c.ns.has_link(&tap), "wgpmd stopped, TAP {tap} still there");
        Ok(())
    });
}

/// The exception path (`--exception tap:NAME`) with a `dpdk:` WAN port (`net_af_packet` on the
/// concentrator's veth, `--no-huge`), the kernel kept off the veth by an nftables ingress drop
/// (as with a NIC that DPDK owns). While iperf3 from a wireguard-go peer runs through the
/// tunnel: TCP (nc, to the WAN address the kernel shares with wgpmd and to the kernel's own
/// address on the TAP) and ICMP reach the kernel behind the TAP, and its answers leave through
/// the DPDK port (copied into mbufs); wgpmd answers ARP and mirrors it, the kernel's answer is
/// suppressed. Then a 2 s flood of UDP for the kernel (~20 k/s) is held to `--exception-rate`
/// and counted, while the tunnel keeps answering pings.
#[test]
fn dpdk_exception_tap() {
    run("dpdk_exception_tap", |ctx| {
        const RATE: u64 = 5000;
        const KERNEL_ONLY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
        need(&[("nc", "netcat-openbsd"), ("nft", "nftables"), ("ethtool", "ethtool")])?;
        let (_rt, prefix) = RuntimeDir::new("exc");
        let topo = Topology::new(1)?;
        prepare_wan(&topo)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        keep_kernel_off(ctx, &c.ns, &c.outer_if)?;
        let tap = unique_ifname("dexc");
        let mut opts = dpdk_opts(
            &prefix,
            "0",
            "--vdev=net_af_packet0,iface={wan_if},framesz=1952,blocksz=249856,framecnt=512",
            &["--no-huge", "-m", "256"],
        );
        opts.extra_args = vec!["--exception".into(), format!("tap:{tap}"), "--exception-rate".into(), RATE.to_string()];
        let mut d =
            Wgpmd::start(ctx, &c.ns, &c.outer_if, &format!("{}/24", c.outer_ip), &topo.concentrator_device(), &opts)?;
        address_exception_tap(&c.ns, &tap, &c.outer_if, c.outer_ip, KERNEL_ONLY)?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;

        let (before, report) = during_iperf3(&p.ns, &c.ns, c.inner_ip, 3, || {
            nc_transfer(ctx, &p.ns, &c.ns, c.outer_ip, 7001, 256 << 10)?;
            nc_transfer(ctx, &p.ns, &c.ns, KERNEL_ONLY, 7002, 256 << 10)?;
            // The WAN is a net_af_packet vdev whose kernel ring the iperf3 running meanwhile keeps
            // full: TCP's congestion drops there can take an echo request or reply too (one of
            // these pings lost in about one run in five or six). So each asks for its replies within
            // twice as many requests.
            let ping = |addr: Ipv4Addr, n: u32| -> Result<()> {
                let sent = ping_replies_within(&p.ns, addr, n, 2 * n)?;
                if sent > n {
                    eprintln!("[e2e] ping {addr}: {n} replies took {sent} requests (the saturated ring)");
                }
                Ok(())
            };
            ping(KERNEL_ONLY, 3)?;
            let before = d.stats()?;
            forget_neighbour(&p.ns, &p.outer_if, c.outer_ip)?;
            ping(c.outer_ip, 2)?;
            Ok(before)
        })?;
        eprintln!(
            "iperf3 through the tunnel (dpdk) during the exception traffic: {:.0} Mbit/s",
            report.bits_per_second / 1e6
        );
        ensure!(report.bits_per_second > 1e6, "iperf3 through the tunnel: {report:?}");
        let st = d.wait_stats("ARP mirrored and the kernel's answer suppressed", |st| {
            Ok(st.get("exception.suppressed")? > before.get("exception.suppressed")?
                && st.workers_sum("arp_replies")? > before.workers_sum("arp_replies")?)
        })?;
        let (to_k, from_k) = (st.workers_sum("exception_to_kernel")?, st.workers_sum("exception_from_kernel")?);
        eprintln!(
            "exception path (dpdk): {to_k} frames to the kernel ({} written to the TAP), {from_k} from it, {} suppressed, \
             WAN tx copied into an mbuf {}",
            st.get("exception.tap_tx")?,
            st.get("exception.suppressed")?,
            st.workers_sum("wan_queue_tx_copied")?
        );
        // 512 KB of TCP: its segments reached the kernel, its acks left through the DPDK port.
        ensure!(to_k > 300 && from_k > 30, "exception frames to the kernel {to_k}, from it {from_k}");
        ensure!(st.get("exception.tap_tx")? == to_k, "every queued frame was written to the TAP");
        ensure!(st.workers_sum("exception_rate_dropped")? == 0, "nothing over the rate here");
        ensure!(st.workers_sum("wan_queue_tx_copied")? >= from_k, "the kernel's frames are copied into mbufs");
        ensure!(st.get("dpdk_tx_good_packets")? > from_k, "the DPDK port sent the kernel's frames");

        // The flood: UDP to a port wgpmd does not serve, every datagram for the kernel.
        let before = d.stats()?;
        let t0 = std::time::Instant::now();
        let flood = udp_flood(&p.ns, std::net::SocketAddr::from((c.outer_ip, 9)), std::time::Duration::from_secs(2));
        ping_replied(&p.ns, c.inner_ip, 4)?;
        let sent = flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let elapsed = t0.elapsed().as_secs_f64();
        let delta = |st: &Counters, k: &str| -> Result<u64> { Ok(st.workers_sum(k)? - before.workers_sum(k)?) };
        let st = d.wait_stats("the flood counted", |st| {
            Ok(delta(st, "exception_to_kernel")? + delta(st, "exception_rate_dropped")? >= sent * 9 / 10)
        })?;
        let (passed, dropped) = (delta(&st, "exception_to_kernel")?, delta(&st, "exception_rate_dropped")?);
        eprintln!(
            "flood (dpdk): {sent} frames in {elapsed:.1} s, {passed} to the kernel, {dropped} dropped by the rate"
        );
        let allowed = (RATE as f64 * (elapsed + 2.0)) as u64 + RATE / 10 + 50;
        ensure!(passed <= allowed, "{passed} frames reached the kernel, more than {allowed}");
        ensure!(passed >= RATE, "the kernel got {passed}, less than a second's worth of the rate");
        ensure!(dropped >= sent / 4, "{dropped} of {sent} dropped by the rate");
        ensure!(st.get("exception.from_kernel_full")? == 0);
        ping_replied(&p.ns, c.inner_ip, 2)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// Operator errors end `wgpmd run` at startup with a message that names the problem.
#[test]
fn dpdk_startup_errors() {
    run("dpdk_startup_errors", |_ctx| {
        let ns = Netns::new("dpdkerr")?;
        let (_rt, prefix) = RuntimeDir::new("err");
        let fp = format!("--file-prefix={prefix}");
        let name = unique_ifname("wdp");
        let base = ["run", &name, "--address", "10.9.9.1/24", "--inner", "mem:x", "--port"];
        let cases: [(&str, Vec<&str>, &str); 5] = [
            ("bad EAL argument", vec!["dpdk:0", "--", &fp, "--no-such-eal-option"], "rte_eal_init failed"),
            ("no ports", vec!["dpdk:0", "--", &fp, "--no-huge", "-m", "64", "--no-pci"], "no DPDK ports found"),
            (
                "unknown port name",
                vec!["dpdk:net_nope0", "--", &fp, "--no-huge", "-m", "64", "--no-pci", "--vdev=net_null0"],
                "no DPDK port named `net_nope0` (known: net_null0)",
            ),
            (
                "mempool does not fit",
                vec!["dpdk:0", "--", &fp, "--no-huge", "-m", "8", "--no-pci", "--vdev=net_null0"],
                "Give EAL more memory",
            ),
            ("EAL cores after --", vec!["dpdk:0", "--", "-l", "0-1"], "give wgpmd's cores with -l"),
        ];
        for (what, extra, want) in cases {
            let mut args: Vec<&str> = base.to_vec();
            args.extend(extra);
            let r = wgpmd_run_to_exit(&ns, &[], &args, secs(30))?;
            eprintln!("{what}: {:?}", r.output.lines().filter(|l| l.starts_with("wgpmd:")).collect::<Vec<_>>());
            ensure!(!r.status.success(), "{what}: wgpmd exited {}", r.status);
            ensure!(r.status.code() == Some(1), "{what}: not a clean error exit: {}", r.status);
            ensure!(r.output.contains(want), "{what}: expected {want:?} in:\n{}", r.output);
            let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
        }
        // Without the dpdk: port, EAL arguments are refused.
        let r = wgpmd_run_to_exit(
            &ns,
            &[],
            &["run", &name, "--address", "10.9.9.1/24", "--port", "mem:y", "--", "--no-huge"],
            secs(30),
        )?;
        ensure!(r.output.contains("are for a dpdk: port"), "{}", r.output);
        Ok(())
    });
}
