//! Helpers for the WAN exception path (`--exception tap:NAME`), shared by the tests with an
//! `af_packet:` WAN (tests/tests/exception.rs) and a `dpdk:` WAN (tests/tests/dpdk.rs): keeping
//! the kernel off the WAN veth, giving the exception TAP its addresses, TCP through it (nc),
//! and a UDP flood of frames for the kernel.

use crate::ctx::Ctx;
use crate::net::{iperf3_report, IperfReport};
use crate::netns::{enter_netns, Netns};
use crate::proc::Proc;
use crate::util::{host, secs, wait_until};
use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Fails (never skips) when a tool is missing, naming its Debian package.
pub fn need(tools: &[(&str, &str)]) -> Result<()> {
    for (bin, pkg) in tools {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {bin}")]).output()?;
        ensure!(found.status.success(), "`{bin}` is not installed (Debian package {pkg}; scripts/test.sh installs it)");
    }
    Ok(())
}

/// Keeps the kernel stack of `ns` off the WAN veth `wan_if`, as with a NIC that wgpmd owns
/// (vfio, dpdk): an nftables `netdev` ingress chain drops every frame after the packet sockets
/// (wgpmd's `af_packet:` port, DPDK's `net_af_packet` PMD) have seen it (packet taps run before
/// netfilter ingress); no IPv6 on the veth. The kernel is then reached only through the TAP.
pub fn keep_kernel_off(ctx: &Ctx, ns: &Netns, wan_if: &str) -> Result<()> {
    need(&[("nft", "nftables")])?;
    let chain = format!(
        "add table netdev wgpmdexc\nadd chain netdev wgpmdexc in {{ type filter hook ingress device \"{wan_if}\" priority 0; policy drop; }}\n",
    );
    let nft = ctx.write_file("nft-veth-drop.nft", &chain)?;
    ns.run(&["nft", "-f", &nft.to_string_lossy()])?;
    ns.sysctl(&format!("net.ipv6.conf.{wan_if}.disable_ipv6"), "1")?;
    Ok(())
}

/// Removes the neighbour entry for `ip` on `dev` in `ns`, so that the next packet to `ip` asks
/// ARP again. One deletion, not `ip neigh flush`: traffic to `ip` (a tunnel's) re-creates the
/// entry while a flush loops, and the flush then gives up with an error. An entry already gone
/// is fine.
pub fn forget_neighbour(ns: &Netns, dev: &str, ip: Ipv4Addr) -> Result<()> {
    match ns.ip(&["neigh", "del", &ip.to_string(), "dev", dev]) {
        Err(e) if !format!("{e:#}").contains("No such file") => Err(e),
        _ => Ok(()),
    }
}

/// The MAC of `dev` in `ns` (`ip -o link show`).
pub fn link_mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no MAC in {out}"))
}

/// The exception TAP wgpmd created in `ns`: checks it exists and carries the MAC of `wan_if`,
/// turns IPv6 off on it and gives it the WAN address `wan_ip` (shared with wgpmd) and
/// `kernel_only` (the kernel's own).
pub fn address_exception_tap(
    ns: &Netns,
    tap: &str,
    wan_if: &str,
    wan_ip: Ipv4Addr,
    kernel_only: Ipv4Addr,
) -> Result<()> {
    ensure!(ns.has_link(tap), "no TAP {tap} in {ns}");
    ensure!(link_mac(ns, tap)? == link_mac(ns, wan_if)?, "the TAP must carry the WAN MAC");
    ns.sysctl(&format!("net.ipv6.conf.{tap}.disable_ipv6"), "1")?;
    ns.ip(&["addr", "add", &format!("{wan_ip}/24"), "dev", tap])?;
    ns.ip(&["addr", "add", &format!("{kernel_only}/24"), "dev", tap])?;
    Ok(())
}

/// `bytes` random bytes sent with nc from `from` to `to:port`, where an nc listens in `at`:
/// what arrives must be what was sent.
pub fn nc_transfer(ctx: &Ctx, from: &Netns, at: &Netns, to: Ipv4Addr, port: u16, bytes: usize) -> Result<()> {
    need(&[("nc", "netcat-openbsd")])?;
    let src = ctx.log_path(&format!("nc-src-{port}"));
    let dst = ctx.log_path(&format!("nc-dst-{port}"));
    let (src_s, dst_s) = (src.to_string_lossy().into_owned(), dst.to_string_lossy().into_owned());
    host(&["sh", "-c", &format!("head -c {bytes} /dev/urandom > {src_s}")])?;
    let mut server = Proc::spawn(
        ctx,
        at,
        &format!("nc-server-{port}"),
        &["sh", "-c", &format!("nc -l {to} {port} > {dst_s}")],
        &[],
    )?;
    wait_until(&format!("nc listening on {to}:{port}"), secs(10), || {
        server.ensure_running()?;
        let out = at.run(&["ss", "-H", "-l", "-t", "-n", &format!("sport = :{port}")])?;
        Ok((!out.trim().is_empty()).then_some(()))
    })?;
    let out = from.exec_timeout(&["sh", "-c", &format!("nc -N -w 10 {to} {port} < {src_s}")], secs(60))?;
    ensure!(out.status.success(), "nc client: {}", String::from_utf8_lossy(&out.stderr));
    server.wait_timeout(secs(15)).context("nc server did not finish")?;
    let (a, b) = (std::fs::read(&src)?, std::fs::read(&dst)?);
    ensure!(a == b, "nc to {to}:{port}: sent {} bytes, received {} (or different bytes)", a.len(), b.len());
    Ok(())
}

/// A thread in namespace `ns` sending UDP datagrams ("not wireguard") to `to` for `dur`, 200
/// every 10 ms (about 20 k/s); joins to the number sent.
pub fn udp_flood(ns: &Netns, to: SocketAddr, dur: Duration) -> std::thread::JoinHandle<Result<u64>> {
    let ns_name = ns.name().to_string();
    std::thread::spawn(move || -> Result<u64> {
        enter_netns(&ns_name)?;
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < dur {
            for _ in 0..200 {
                if sock.send_to(b"not wireguard", to).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(sent)
    })
}

/// Runs `steps` while iperf3 (TCP, `secs` seconds) runs from `client` to `server_addr` in
/// `server`, and waits for iperf3 before returning, also when a step fails: the iperf3 thread
/// holds the namespaces, which a thread left running at the test's end would leak.
pub fn during_iperf3<T>(
    client: &Netns,
    server: &Netns,
    server_addr: Ipv4Addr,
    secs: u32,
    steps: impl FnOnce() -> Result<T>,
) -> Result<(T, IperfReport)> {
    let (cns, sns) = (client.clone(), server.clone());
    let iperf = std::thread::spawn(move || iperf3_report(&cns, &sns, server_addr, secs, false));
    let done = steps();
    let report = iperf.join().map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))?;
    Ok((done?, report?))
}
