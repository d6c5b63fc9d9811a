//! The WAN exception path (`--exception tap:NAME`) with an `af_packet:` WAN against a
//! wireguard-go peer: the kernel behind the TAP holds the WAN address (shared with wgpmd) and a
//! second address of its own; TCP (nc) and ICMP from the LAN reach it while iperf3 runs
//! through the tunnel; a flood of non-WireGuard frames is rate-limited and counted while the
//! tunnel keeps working; bird2 speaks BGP over the TAP to a bird2 on the LAN.
//!
//! The WAN veth is also a kernel interface of wgpmd's namespace: an nftables `netdev` ingress
//! chain on it drops every frame after the packet socket has seen it (packet taps run before
//! netfilter ingress), so the kernel stack is reached only through the TAP, as with a NIC that
//! wgpmd owns (vfio, dpdk).
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test exception
//! -- --test-threads=1` (as root; needs nc, nft, bird2). See docs/TESTING.md.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use wgpmd_e2e::*;

/// The kernel's own second address on the TAP (not wgpmd's).
const KERNEL_ONLY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);

struct Setup {
    topo: Topology,
    d: Wgpmd,
    _peer: WgGo,
    tap: String,
}

/// The topology, the kernel kept off the WAN veth, wgpmd with `--exception tap:<tap>` at
/// `rate` frames/s, the TAP given the WAN address and [`KERNEL_ONLY`], the peer's tunnel up.
fn setup(ctx: &Ctx, rate: u64) -> Result<Setup> {
    need(&[("nc", "netcat-openbsd"), ("nft", "nftables"), ("ethtool", "ethtool")])?;
    let topo = Topology::new(1)?;
    let c = &topo.concentrator;
    keep_kernel_off(ctx, &c.ns, &c.outer_if)?;
    let tap = unique_ifname("exc");
    let opts = WgpmdOptions {
        extra_args: vec!["--exception".into(), format!("tap:{tap}"), "--exception-rate".into(), rate.to_string()],
        ..Default::default()
    };
    let d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
    address_exception_tap(&c.ns, &tap, &c.outer_if, c.outer_ip, KERNEL_ONLY)?;
    // A veth hands a packet socket TCP/UDP with only the pseudo-header checksum
    // (CHECKSUM_PARTIAL, to be filled by a NIC that never comes): the LAN side computes its
    // checksums in software, as frames from a real NIC carry them.
    let p = &topo.peers[0];
    p.ns.run(&["ethtool", "-K", &p.outer_if, "tx", "off"])?;
    let peer = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
    wait_for_ping(&topo.peers[0].ns, c.inner_ip, secs(30))?;
    Ok(Setup { topo, d, _peer: peer, tap })
}

/// TCP (nc, 1 MB to the shared WAN address and to the kernel's own address) and ICMP (to the
/// kernel's own address) from the LAN through the exception TAP, while the peer's iperf3 runs
/// through the tunnel; wgpmd keeps answering ARP for its address (the kernel's own answers are
/// suppressed and counted), and the kernel's neighbour table has the peer's MAC.
#[test]
fn tcp_and_icmp_to_the_kernel_while_the_tunnel_runs() {
    run("exception_tcp_icmp", |ctx| {
        let mut s = setup(ctx, 20_000)?;
        let (c, p) = (&s.topo.concentrator, &s.topo.peers[0]);
        let (before, report) = during_iperf3(&p.ns, &c.ns, c.inner_ip, 8, || {
            std::thread::sleep(Duration::from_secs(1));
            nc_transfer(ctx, &p.ns, &c.ns, c.outer_ip, 7001, 1 << 20)?;
            nc_transfer(ctx, &p.ns, &c.ns, KERNEL_ONLY, 7002, 1 << 20)?;
            ping_replied(&p.ns, KERNEL_ONLY, 5)?;
            // wgpmd answers the ARP for its address, and mirrors it: the kernel answers too, and
            // that answer is suppressed.
            let before = s.d.stats()?;
            forget_neighbour(&p.ns, &p.outer_if, c.outer_ip)?;
            ping_replied(&p.ns, c.outer_ip, 3)?;
            Ok(before)
        })?;
        eprintln!(
            "iperf3 through the tunnel while TCP/ICMP used the exception path: {:.1} Mbit/s",
            report.bits_per_second / 1e6
        );
        ensure!(report.bits_per_second > 1e6, "iperf3 through the tunnel: {report:?}");
        let st = s.d.wait_stats("ARP mirrored and the kernel's answer suppressed", |st| {
            Ok(st.get("exception.suppressed")? > before.get("exception.suppressed")?
                && st.workers_sum("arp_replies")? > before.workers_sum("arp_replies")?)
        })?;
        let (to_k, from_k) = (st.workers_sum("exception_to_kernel")?, st.workers_sum("exception_from_kernel")?);
        eprintln!(
            "exception path: {to_k} frames to the kernel ({} written to the TAP, {} mirrored ARP), {from_k} from it, {} suppressed",
            st.get("exception.tap_tx")?,
            st.workers_sum("exception_mirrored")?,
            st.get("exception.suppressed")?
        );
        // 2 MB of TCP each way's worth of segments and acks crossed the TAP.
        ensure!(to_k > 1000 && from_k > 100, "{to_k} / {from_k}");
        ensure!(st.get("exception.tap_tx")? == to_k, "every queued frame was written to the TAP");
        ensure!(st.workers_sum("exception_rate_dropped")? == 0, "nothing over the rate here");
        ensure!(st.workers_sum("exception_mirrored")? >= 1);
        // The kernel's neighbour table: the peer, at its MAC.
        let peer_mac = p.ns.ip(&["-o", "link", "show", "dev", &p.outer_if])?;
        let neigh = c.ns.ip(&["neigh", "show", "dev", &s.tap, &p.outer_ip.to_string()])?;
        ensure!(
            peer_mac.split_whitespace().any(|w| neigh.contains(w) && w.contains(':') && w.len() == 17),
            "kernel's neighbour entry for the peer {neigh:?} vs its link {peer_mac:?}"
        );
        ping_replied(&p.ns, c.inner_ip, 3)?;
        s.d.stop()
    });
}

/// A flood of UDP to a port wgpmd does not serve (each one for the kernel) at ~20 k frames/s,
/// with `--exception-rate 1000`: at most the rate (plus the burst) reaches the kernel, the rest
/// is counted as `exception_rate_dropped`, and the tunnel keeps answering pings throughout.
#[test]
fn flood_to_the_kernel_is_rate_limited() {
    run("exception_flood", |ctx| {
        const RATE: u64 = 1000;
        let mut s = setup(ctx, RATE)?;
        let (c, p) = (&s.topo.concentrator, &s.topo.peers[0]);
        let before = s.d.stats()?;
        let to = SocketAddr::from((c.outer_ip, 9));
        let flood = udp_flood(&p.ns, to, Duration::from_secs(4));
        let t0 = Instant::now();
        ping_replied(&p.ns, c.inner_ip, 10)?;
        let sent = flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let elapsed = t0.elapsed().as_secs_f64();
        let st = s.d.wait_stats("the flood counted", |st| {
            let seen = st.workers_sum("exception_to_kernel")? - before.workers_sum("exception_to_kernel")?
                + st.workers_sum("exception_rate_dropped")?
                - before.workers_sum("exception_rate_dropped")?;
            Ok(seen >= sent * 9 / 10)
        })?;
        let passed = st.workers_sum("exception_to_kernel")? - before.workers_sum("exception_to_kernel")?;
        let dropped = st.workers_sum("exception_rate_dropped")? - before.workers_sum("exception_rate_dropped")?;
        eprintln!("flood: {sent} frames sent in {elapsed:.1} s, {passed} to the kernel, {dropped} dropped by the rate");
        // The rate over the run, plus the burst (a tenth of a second), plus slack for what else
        // reached the kernel (the pings' neighbour traffic).
        let allowed = (RATE as f64 * (elapsed + 2.0)) as u64 + RATE / 10 + 50;
        ensure!(passed <= allowed, "{passed} frames reached the kernel, more than {allowed}");
        ensure!(passed >= RATE, "the kernel got {passed}, less than a second's worth of the rate");
        ensure!(dropped >= sent / 2, "{dropped} of {sent} dropped by the rate");
        ensure!(st.get("exception.from_kernel_full")? == 0);
        ping_replied(&p.ns, c.inner_ip, 5)?;
        s.d.stop()
    });
}

/// bird2 in wgpmd's namespace (on the TAP, at the WAN address) and bird2 in the peer's
/// namespace speak BGP through the exception path: the session reaches Established and each
/// side learns the other's route, while pings cross the tunnel.
#[test]
fn bgp_over_the_exception_tap() {
    run("exception_bgp", |ctx| {
        need(&[("bird", "bird2"), ("birdc", "bird2")])?;
        let mut s = setup(ctx, 10_000)?;
        let (c, p) = (&s.topo.concentrator, &s.topo.peers[0]);
        let ping = Proc::spawn(
            ctx,
            &p.ns,
            "tunnel-ping",
            &["ping", "-n", "-i", "0.2", "-c", "150", &c.inner_ip.to_string()],
            &[],
        )?;
        let bird = |name: &str, ns: &Netns, me: Ipv4Addr, my_as: u32, nbr: Ipv4Addr, nbr_as: u32, route: &str| {
            let conf = format!(
                "router id {me};\nprotocol device {{}}\n\
                 protocol static st {{ ipv4; route {route} blackhole; }}\n\
                 protocol bgp lan {{\n  local {me} as {my_as};\n  neighbor {nbr} as {nbr_as};\n  \
                 hold time 9;\n  connect retry time 2;\n  ipv4 {{ import all; export all; }};\n}}\n"
            );
            let conf_path = ctx.write_file(&format!("{name}.conf"), &conf)?;
            let sock = ctx.log_path(&format!("{name}.ctl"));
            let pid = ctx.log_path(&format!("{name}.pid"));
            let args = [
                "bird",
                "-f",
                "-c",
                &conf_path.to_string_lossy(),
                "-s",
                &sock.to_string_lossy(),
                "-P",
                &pid.to_string_lossy(),
            ]
            .map(str::to_string);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Ok::<_, anyhow::Error>((Proc::spawn(ctx, ns, name, &args, &[])?, sock))
        };
        let (mut b_c, sock_c) = bird("bird-conc", &c.ns, c.outer_ip, 65001, p.outer_ip, 65002, "192.0.2.0/24")?;
        let (mut b_p, sock_p) = bird("bird-peer", &p.ns, p.outer_ip, 65002, c.outer_ip, 65001, "198.51.100.0/24")?;
        // birdc's output; empty while bird has not opened its control socket yet.
        let birdc = |ns: &Netns, sock: &std::path::Path, cmd: &[&str]| -> Result<String> {
            let s = sock.to_string_lossy();
            let mut v = vec!["birdc", "-s", &s];
            v.extend_from_slice(cmd);
            let out = ns.exec_timeout(&v, secs(30))?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let t0 = Instant::now();
        wait_until("BGP session Established on both sides", secs(60), || {
            b_c.ensure_running()?;
            b_p.ensure_running()?;
            let a = birdc(&c.ns, &sock_c, &["show", "protocols", "lan"])?;
            let b = birdc(&p.ns, &sock_p, &["show", "protocols", "lan"])?;
            Ok((a.contains("Established") && b.contains("Established")).then_some(()))
        })?;
        eprintln!("BGP Established after {:.1} s", t0.elapsed().as_secs_f64());
        wait_until("routes exchanged", secs(30), || {
            let a = birdc(&c.ns, &sock_c, &["show", "route", "protocol", "lan"])?;
            let b = birdc(&p.ns, &sock_p, &["show", "route", "protocol", "lan"])?;
            Ok((a.contains("198.51.100.0/24") && b.contains("192.0.2.0/24")).then_some(()))
        })?;
        eprintln!("{}", birdc(&c.ns, &sock_c, &["show", "route", "protocol", "lan"])?);
        ping_replied(&p.ns, c.inner_ip, 5)?;
        let st = s.d.stats()?;
        ensure!(st.workers_sum("exception_to_kernel")? > 0 && st.workers_sum("exception_from_kernel")? > 0);
        ensure!(st.workers_sum("data_rx")? > 0);
        drop(ping);
        b_c.stop();
        b_p.stop();
        let _ = &s.tap;
        s.d.stop()
    });
}
