//! Path MTU: an inner packet longer than wgpmd's tunnel MTU is not sent; the local sender gets
//! an ICMP "fragmentation needed" through the TUN and lowers its path MTU.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test pmtu`
//! (as root). See docs/TESTING.md.

use anyhow::ensure;
use wgpmd_e2e::*;

/// wgpmd's tunnel MTU; its TUN is raised to 1500 behind its back.
const MTU: u32 = 1400;

#[test]
fn frag_needed_lowers_the_path_mtu() {
    run("frag_needed_lowers_the_path_mtu", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let opts = WgpmdOptions { mtu: MTU, ..WgpmdOptions::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        // The operator raised the TUN's MTU above the tunnel's.
        c.ns.ip(&["link", "set", d.ifname(), "mtu", "1500"])?;
        let peer_ip = p.inner_ip.to_string();

        // 1450 + 28 = 1478 bytes with DF: too big for the tunnel, fits the TUN.
        let out = c.ns.exec_timeout(&["ping", "-n", "-M", "do", "-c", "2", "-i", "0.3", "-W", "2", "-s", "1450", &peer_ip], secs(20))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("ping -M do -s 1450:\n{text}");
        let st = d.stats()?;
        ensure!(
            text.contains(&format!("mtu = {MTU}")) || text.contains(&format!("mtu={MTU}")),
            "ping did not report the tunnel MTU: {text}; counters {:?}",
            st.0
        );
        ensure!(st.workers_sum("pmtu_icmp_sent")? >= 1 && st.workers_sum("too_big_dropped")? >= 1, "{:?}", st.0);

        // The kernel learnt the path MTU from the error.
        let route = c.ns.ip(&["route", "get", &peer_ip])?;
        eprintln!("ip route get {peer_ip}: {route}");
        ensure!(route.contains(&format!("mtu {MTU}")), "no learnt path MTU in `ip route get`: {route}");

        // The next one fails locally, before reaching wgpmd ("message too long, mtu=1400").
        let sent = d.stats()?.workers_sum("too_big_dropped")?;
        let out = c.ns.exec_timeout(&["ping", "-n", "-M", "do", "-c", "1", "-W", "2", "-s", "1450", &peer_ip], secs(10))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("again:\n{text}");
        ensure!(text.contains(&format!("mtu={MTU}")) || text.contains(&format!("mtu = {MTU}")), "{text}");
        ensure!(d.stats()?.workers_sum("too_big_dropped")? == sent, "the sender no longer sends packets that big");

        // Packets that fit still pass, and the peer can still send us big ones.
        let s = ping_replied(&c.ns, &peer_ip, 3)?;
        ensure!(s.received == 3, "{s:?}");
        let out = c.ns.exec_timeout(&["ping", "-n", "-M", "do", "-c", "3", "-W", "2", "-s", "1300", &peer_ip], secs(15))?;
        let s = PingStats::parse(&String::from_utf8_lossy(&out.stdout))?;
        ensure!(s.received == 3, "ping -s 1300 through the tunnel: {s:?}");
        d.ensure_running()?;
        d.stop()
    });
}
