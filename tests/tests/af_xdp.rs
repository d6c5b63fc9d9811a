//! The `af_xdp:IFACE` WAN port against wireguard-go: the kernel keeps the interface and its
//! address (wgpmd shares it), wgpmd's XDP program steers only the tunnel's UDP (and the
//! neighbour answers wgpmd asked for) to its AF_XDP sockets, and TCP to the kernel's own
//! address on the same interface keeps working. Errors (no interface, XDP cannot be attached)
//! end wgpmd with status 1 and leave nothing attached, as do a stop and a SIGKILL.
//!
//! Topology: a concentrator namespace and a peer namespace joined by one veth (N queues per
//! end), 10.98.0.1/24 + fd98::1/64 (concentrator, held by the kernel) and 10.98.0.2/24 +
//! fd98::2/64 (peer); tunnel 10.100.0.0/24.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test af_xdp --
//! --test-threads=1` (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;
use wgpmd_e2e::*;

const C4: &str = "10.98.0.1";
const P4: &str = "10.98.0.2";
const C6: &str = "fd98::1";
const P6: &str = "fd98::2";
const C_INNER: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

struct Lan {
    conc: Netns,
    peer: Netns,
    wire: VethPair,
}

/// The two namespaces and the veth, addresses on both ends (IPv6 without DAD).
fn lan(queues: usize) -> Result<Lan> {
    let conc = Netns::new("xc")?;
    let peer = Netns::new("xp")?;
    let wire = VethPair::with_queues(&conc, Some(&format!("{C4}/24")), &peer, Some(&format!("{P4}/24")), queues)?;
    conc.ip(&["addr", "add", &format!("{C6}/64"), "dev", &wire.a_if, "nodad"])?;
    peer.ip(&["addr", "add", &format!("{P6}/64"), "dev", &wire.b_if, "nodad"])?;
    conc.ip(&["link", "set", "lo", "up"])?;
    Ok(Lan { conc, peer, wire })
}

fn wgpmd_opts(lcores: &str, shares: bool) -> WgpmdOptions {
    WgpmdOptions {
        lcores: lcores.into(),
        control_shares_core: shares,
        port: Some("af_xdp:{wan_if}".into()),
        extra_args: vec!["--address".into(), format!("{C6}/64")],
        ..Default::default()
    }
}

/// The concentrator's configuration: one `[Peer]` per key, inner 10.100.0.(2+i)/32.
fn conc_cfg(key: &KeyPair, peers: &[KeyPair]) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(key.clone(), Some(51820), Some("10.100.0.1/24"));
    for (i, p) in peers.iter().enumerate() {
        cfg = cfg.peer(PeerConfig::new(&p.public_b64(), &[&format!("10.100.0.{}/32", 2 + i)]));
    }
    cfg
}

/// Peer `i`'s configuration: inner 10.100.0.(2+i)/24, listen port 51820+i, the concentrator
/// at `endpoint`.
fn peer_cfg(key: &KeyPair, i: usize, conc: &KeyPair, endpoint: &str) -> Result<DeviceConfig> {
    Ok(DeviceConfig::new(key.clone(), Some(51820 + i as u16), Some(&format!("10.100.0.{}/24", 2 + i)))
        .peer(PeerConfig::new(&conc.public_b64(), &["10.100.0.0/24"]).endpoint(endpoint.parse()?)))
}

/// Whether `ip link show dev IF` in `ns` shows an XDP program.
fn xdp_attached(ns: &Netns, ifname: &str) -> Result<bool> {
    let out = ns.ip(&["link", "show", "dev", ifname])?;
    Ok(out.contains(" xdp") || out.contains("prog/xdp"))
}

/// AF_XDP sockets open in `ns` (`/proc/net/protocols`, the XDP line's `sockets` column).
fn xdp_sockets(ns: &Netns) -> Result<u64> {
    let text = ns.run(&["cat", "/proc/net/protocols"])?;
    let line = text.lines().find(|l| l.starts_with("XDP ")).context("no XDP line in /proc/net/protocols")?;
    line.split_whitespace().nth(2).context("XDP line")?.parse().context("XDP sockets column")
}

/// A TCP transfer to the kernel's own address on the shared interface: `nc -l` in the
/// concentrator namespace, `nc` from the peer, 256 KiB of random bytes, compared.
fn kernel_tcp(ctx: &Ctx, lan: &Lan, addr: &str) -> Result<()> {
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let src = ctx.write_file("tcp-src.bin", "")?;
    std::fs::write(&src, &data)?;
    let dst = src.with_file_name("tcp-dst.bin");
    let _ = std::fs::remove_file(&dst);
    let dst_s = dst.to_string_lossy().into_owned();
    let mut listener =
        Proc::spawn(ctx, &lan.conc, "nc-listen", &["sh", "-c", &format!("exec nc -l {addr} 2222 > {dst_s}")], &[])?;
    wait_until("nc listening on 2222", secs(10), || {
        let ss = lan.conc.run(&["ss", "-Htln", "sport = :2222"])?;
        Ok((!ss.trim().is_empty()).then_some(()))
    })?;
    let src_s = src.to_string_lossy().into_owned();
    let out = lan.peer.exec_timeout(&["sh", "-c", &format!("nc -N -w 5 {addr} 2222 < {src_s}")], secs(30))?;
    ensure!(out.status.success(), "nc to {addr}:2222: {} {}", out.status, String::from_utf8_lossy(&out.stderr));
    listener.wait_timeout(secs(10))?;
    let got = std::fs::read(&dst)?;
    ensure!(
        got == data,
        "TCP to the kernel's {addr}: received {} of {} bytes, or different bytes",
        got.len(),
        data.len()
    );
    Ok(())
}

/// After wgpmd is gone: no XDP program on the interface, no AF_XDP socket in the namespace.
fn nothing_left(lan: &Lan) -> Result<()> {
    ensure!(
        !xdp_attached(&lan.conc, &lan.wire.a_if)?,
        "an XDP program is still attached: {}",
        lan.conc.ip(&["link", "show", "dev", &lan.wire.a_if])?
    );
    let n = xdp_sockets(&lan.conc)?;
    ensure!(n == 0, "{n} AF_XDP socket(s) still open in {}", lan.conc);
    Ok(())
}

/// One peer, one worker on a one-queue veth, the peer's endpoint over `family`: ping both
/// ways, iperf3 both ways, TCP and ping to the kernel's own addresses on the shared interface,
/// counters that show the XDP program steered the tunnel's frames, and a clean stop.
fn tunnel(ctx: &Ctx, v6: bool) -> Result<()> {
    let lan = lan(1)?;
    let (kc, kp) = (KeyPair::generate(), KeyPair::generate());
    let mut d = Wgpmd::start(
        ctx,
        &lan.conc,
        &lan.wire.a_if,
        &format!("{C4}/24"),
        &conc_cfg(&kc, std::slice::from_ref(&kp)),
        &wgpmd_opts("0", false),
    )?;
    ensure!(xdp_attached(&lan.conc, &lan.wire.a_if)?, "no XDP program on {} while wgpmd runs", lan.wire.a_if);
    ensure!(xdp_sockets(&lan.conc)? == 1, "expected one AF_XDP socket");
    let ep = if v6 { format!("[{C6}]:51820") } else { format!("{C4}:51820") };
    let _peer = WgGo::start(ctx, &lan.peer, &peer_cfg(&kp, 0, &kc, &ep)?)?;

    let t = wait_for_ping(&lan.peer, C_INNER, secs(30))?;
    eprintln!("first reply through wgpmd (af_xdp, endpoint {ep}) after {:.2} s", t.as_secs_f64());
    ping_replied(&lan.peer, C_INNER, 5)?;
    ping_replied(&lan.conc, "10.100.0.2", 5)?;
    let fwd = iperf3(&lan.peer, &lan.conc, C_INNER, 3, false)?;
    let rev = iperf3(&lan.peer, &lan.conc, C_INNER, 3, true)?;
    eprintln!(
        "iperf3 through wgpmd af_xdp ({ep}): peer->conc {:.0} Mbit/s, conc->peer {:.0} Mbit/s",
        fwd / 1e6,
        rev / 1e6
    );
    ensure!(fwd > 1e6 && rev > 1e6, "iperf3: {fwd} / {rev} bit/s");

    // The kernel still owns the interface: its addresses answer ping and TCP.
    ping_replied(&lan.peer, C4, 3)?;
    ping_replied(&lan.peer, C6, 3)?;
    kernel_tcp(ctx, &lan, if v6 { C6 } else { C4 })?;
    ping_replied(&lan.peer, C_INNER, 3)?;

    let st = d.stats()?;
    eprintln!(
        "xdp_steered={} xdp_no_socket={} xdp_neigh_answers={} xdp_zerocopy={} wan_rx={}",
        st.get("xdp_steered")?,
        st.get("xdp_no_socket")?,
        st.get("xdp_neigh_answers")?,
        st.get("xdp_zerocopy")?,
        st.workers_sum("wan_rx")?
    );
    ensure!(st.get("xdp_steered")? >= 1000, "the XDP program steered too few frames: {st:?}");
    ensure!(st.get("xdp_no_socket")? == 0, "frames for wgpmd on a queue without a socket");
    ensure!(st.get("xdp_neigh_answers")? >= 1, "wgpmd resolved its peer without a steered ARP/NA answer");
    // No copy on the WAN side: what the worker sealed left from the buffer it was read into;
    // only the control core's messages (initiations, cookie replies) are copied.
    let (tx, copied) = (st.workers_sum("wan_queue_tx_packets")?, st.workers_sum("wan_queue_tx_copied")?);
    eprintln!("wan_queue_tx_packets={tx} wan_queue_tx_copied={copied}");
    ensure!(tx >= 1000 && copied <= 16, "WAN tx {tx}, of which {copied} copied");
    d.ensure_running()?;
    d.stop()?;
    nothing_left(&lan)?;
    // And the kernel keeps working on the interface without wgpmd.
    ping_replied(&lan.peer, C4, 2)?;
    Ok(())
}

#[test]
fn af_xdp_ipv4_endpoint() {
    run("af_xdp_ipv4_endpoint", |ctx| tunnel(ctx, false));
}

#[test]
fn af_xdp_ipv6_endpoint() {
    run("af_xdp_ipv6_endpoint", |ctx| tunnel(ctx, true));
}

/// Two workers on a two-queue veth, two wireguard-go peers: transmit packet steering in the
/// peer namespace sends what CPU n transmits on queue n, and each wireguard-go is pinned to
/// one CPU, so each peer's frames arrive on their own queue and worker. Both tunnels carry
/// ping and iperf3 (both ways) while TCP to the kernel's address goes on.
#[test]
fn af_xdp_two_workers_two_queues() {
    run("af_xdp_two_workers_two_queues", |ctx| {
        let lan = lan(2)?;
        for (q, mask) in [(0, "1"), (1, "2")] {
            let path = format!("/sys/class/net/{}/queues/tx-{q}/xps_cpus", lan.wire.b_if);
            lan.peer.run(&["sh", "-c", &format!("echo {mask} > {path}")])?;
        }
        let kc = KeyPair::generate();
        let kps = [KeyPair::generate(), KeyPair::generate()];
        let mut d = Wgpmd::start(
            ctx,
            &lan.conc,
            &lan.wire.a_if,
            &format!("{C4}/24"),
            &conc_cfg(&kc, &kps),
            &wgpmd_opts("0-1", true),
        )?;
        ensure!(xdp_sockets(&lan.conc)? == 2, "expected two AF_XDP sockets");
        let mut peers = Vec::new();
        for (i, k) in kps.iter().enumerate() {
            let p = WgGo::start(ctx, &lan.peer, &peer_cfg(k, i, &kc, &format!("{C4}:51820"))?)?;
            let pid = p.proc().pid().to_string();
            let out = Command::new("taskset").args(["-a", "-p", "-c", &i.to_string(), &pid]).output()?;
            ensure!(out.status.success(), "taskset: {}", String::from_utf8_lossy(&out.stderr));
            // Both tunnels share the namespace: peer i's inner address routes through its own
            // wireguard-go interface.
            let table = (101 + i).to_string();
            lan.peer.ip(&["route", "add", "10.100.0.0/24", "dev", p.ifname(), "table", &table])?;
            lan.peer.ip(&["rule", "add", "from", &format!("10.100.0.{}", 2 + i), "lookup", &table])?;
            peers.push(p);
        }
        // Each peer's inner address is its own; ping and iperf3 from the peer namespace bind it.
        for i in 0..2 {
            let src = format!("10.100.0.{}", 2 + i);
            wait_until(&format!("ping from {src}"), secs(30), || {
                let o = lan.peer.exec_timeout(&["ping", "-c", "1", "-W", "1", "-I", &src, "10.100.0.1"], secs(5))?;
                Ok(o.status.success().then_some(()))
            })?;
        }
        for i in 0..2 {
            ping_replied(&lan.conc, format!("10.100.0.{}", 2 + i), 3)?;
        }
        // iperf3 to each peer's inner address: the concentrator side is the client.
        for i in 0..2 {
            let a = format!("10.100.0.{}", 2 + i);
            let fwd = iperf3(&lan.conc, &lan.peer, &a, 2, false)?;
            let rev = iperf3(&lan.conc, &lan.peer, &a, 2, true)?;
            eprintln!("peer {i}: conc->peer {:.0} Mbit/s, peer->conc {:.0} Mbit/s", fwd / 1e6, rev / 1e6);
            ensure!(fwd > 1e6 && rev > 1e6, "iperf3 peer {i}: {fwd} / {rev}");
        }
        kernel_tcp(ctx, &lan, C4)?;
        let st = d.stats()?;
        let rx = st.per_worker("wan_rx")?;
        eprintln!("wan_rx per worker: {rx:?}, xdp_steered={}", st.get("xdp_steered")?);
        ensure!(rx.len() == 2 && rx.iter().all(|&n| n >= 100), "both workers must receive from their queue: {rx:?}");
        ensure!(st.get("xdp_no_socket")? == 0, "frames for wgpmd on a queue without a socket");
        d.ensure_running()?;
        d.stop()?;
        nothing_left(&lan)
    });
}

/// Startup errors end wgpmd with status 1, a message naming the problem, and nothing attached:
/// no such interface; the interface has more queues than wgpmd has workers; XDP cannot be
/// attached (another program holds the interface: a second wgpmd on it).
#[test]
fn af_xdp_startup_errors() {
    run("af_xdp_startup_errors", |ctx| {
        let lan = lan(1)?;
        let kc = KeyPair::generate();
        let conf = ctx.write_file("c.conf", &conc_cfg(&kc, &[]).to_setconf())?;
        let conf = conf.to_string_lossy().into_owned();
        let attempt = |port: &str, name: &str| -> Result<FailedRun> {
            let args = [
                "run",
                name,
                "--config",
                &conf,
                "--port",
                port,
                "--address",
                "10.98.0.1/24",
                "-l",
                "0",
                "--poll",
                "adaptive",
            ];
            wgpmd_run_to_exit(&lan.conc, &[], &args, secs(30))
        };
        let r = attempt("af_xdp:nosuchif0", &unique_ifname("xe"))?;
        eprintln!("no such interface: {r:?}");
        ensure!(r.status.code() == Some(1), "status {:?}", r.status);
        ensure!(r.output.contains("af_xdp:nosuchif0: no such interface"), "{}", r.output);
        nothing_left(&lan)?;

        let lan2 = lan_two_queues()?;
        let r = wgpmd_run_to_exit(
            &lan2.conc,
            &[],
            &[
                "run",
                &unique_ifname("xe"),
                "--config",
                &conf,
                "--port",
                &format!("af_xdp:{}", lan2.wire.a_if),
                "--address",
                "10.98.0.1/24",
                "-l",
                "0",
                "--poll",
                "adaptive",
            ],
            secs(30),
        )?;
        eprintln!("two queues, one worker: {r:?}");
        ensure!(
            r.status.code() == Some(1) && r.output.contains("2 receive queue(s) and wgpmd runs 1 worker(s)"),
            "{}",
            r.output
        );
        nothing_left(&lan2)?;

        // A first wgpmd holds the interface; a second cannot attach its program.
        let mut first = Wgpmd::start(
            ctx,
            &lan.conc,
            &lan.wire.a_if,
            &format!("{C4}/24"),
            &conc_cfg(&kc, &[]),
            &wgpmd_opts("0", false),
        )?;
        let r = attempt(&format!("af_xdp:{}", lan.wire.a_if), &unique_ifname("xe"))?;
        eprintln!("second wgpmd on the same interface: {r:?}");
        ensure!(r.status.code() == Some(1), "status {:?}", r.status);
        ensure!(r.output.contains("attaching XDP"), "{}", r.output);
        ensure!(xdp_sockets(&lan.conc)? == 1, "the failed start left a socket (or the first lost its own)");
        first.ensure_running()?;
        first.stop()?;
        nothing_left(&lan)
    });
}

fn lan_two_queues() -> Result<Lan> {
    lan(2)
}

/// SIGKILL: the BPF link and the sockets die with the process; a new wgpmd attaches again.
#[test]
fn af_xdp_nothing_left_after_sigkill() {
    run("af_xdp_nothing_left_after_sigkill", |ctx| {
        let lan = lan(1)?;
        let (kc, kp) = (KeyPair::generate(), KeyPair::generate());
        let cfg = conc_cfg(&kc, std::slice::from_ref(&kp));
        let mut d = Wgpmd::start(ctx, &lan.conc, &lan.wire.a_if, &format!("{C4}/24"), &cfg, &wgpmd_opts("0", false))?;
        let _peer = WgGo::start(ctx, &lan.peer, &peer_cfg(&kp, 0, &kc, &format!("{C4}:51820"))?)?;
        wait_for_ping(&lan.peer, C_INNER, secs(30))?;
        ensure!(xdp_attached(&lan.conc, &lan.wire.a_if)?, "not attached while running");
        let pid = d.proc().pid();
        let out = Command::new("kill").args(["-KILL", &pid.to_string()]).output()?;
        ensure!(out.status.success(), "kill -KILL {pid}");
        let st = d.proc_mut().wait_timeout(secs(10))?;
        eprintln!("wgpmd killed: {st}");
        wait_until("XDP program detached after SIGKILL", secs(10), || Ok(nothing_left(&lan).is_ok().then_some(())))?;
        nothing_left(&lan)?;
        ping_replied(&lan.peer, C4, 2)?;
        drop(d);
        // The interface is free: a new wgpmd attaches and the tunnel comes back.
        let mut d2 = Wgpmd::start(ctx, &lan.conc, &lan.wire.a_if, &format!("{C4}/24"), &cfg, &wgpmd_opts("0", false))?;
        wait_for_ping(&lan.peer, C_INNER, secs(30))?;
        d2.stop()?;
        nothing_left(&lan)
    });
}
