//! Path MTU: an inner packet longer than wgpmd's tunnel MTU is not sent; the local sender gets
//! an ICMP "fragmentation needed" (IPv6: ICMPv6 "packet too big") through the TUN and lowers its
//! path MTU.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test pmtu`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

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
        let out = c.ns.exec_timeout(
            &["ping", "-n", "-M", "do", "-c", "2", "-i", "0.3", "-W", "2", "-s", "1450", &peer_ip],
            secs(20),
        )?;
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
        let out =
            c.ns.exec_timeout(&["ping", "-n", "-M", "do", "-c", "1", "-W", "2", "-s", "1450", &peer_ip], secs(10))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("again:\n{text}");
        ensure!(text.contains(&format!("mtu={MTU}")) || text.contains(&format!("mtu = {MTU}")), "{text}");
        ensure!(d.stats()?.workers_sum("too_big_dropped")? == sent, "the sender no longer sends packets that big");

        // Packets that fit still pass, and the peer can still send us big ones.
        let s = ping_replied(&c.ns, &peer_ip, 3)?;
        ensure!(s.received == 3, "{s:?}");
        let out =
            c.ns.exec_timeout(&["ping", "-n", "-M", "do", "-c", "3", "-W", "2", "-s", "1300", &peer_ip], secs(15))?;
        let s = PingStats::parse(&String::from_utf8_lossy(&out.stdout))?;
        ensure!(s.received == 3, "ping -s 1300 through the tunnel: {s:?}");
        d.ensure_running()?;
        d.stop()
    });
}

/// The same for IPv6 inner packets: wgpmd with `--mtu 1400` and its TUN raised to 1500, both
/// tunnel ends with an IPv6 inner address (fd00:100::1 on wgpmd's TUN, fd00:100::10 on the
/// peer). `ping -6 -M do -s 1450` (1498 bytes) to the peer gets an ICMPv6 "packet too big" with
/// MTU 1400 written back into the TUN by wgpmd; the kernel learns the path MTU, and packets that
/// fit still pass.
#[test]
fn pmtu_ipv6_inner_packet_too_big() {
    run("pmtu_ipv6_inner_packet_too_big", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let conc_cfg = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip)))
            .peer(PeerConfig::new(&p.key.public_b64(), &[&format!("{}/32", p.inner_ip), "fd00:100::10/128"]));
        let opts = WgpmdOptions { mtu: MTU, ..WgpmdOptions::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &conc_cfg, &opts)?;
        c.ns.ip(&["addr", "add", "fd00:100::1/64", "dev", d.ifname(), "nodad"])?;
        let peer_cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip))).peer(
            PeerConfig::new(&c.key.public_b64(), &[INNER_NET, "fd00:100::1/128", "fd00:100::/64"])
                .endpoint(c.endpoint()),
        );
        let peer = WgGo::start(ctx, &p.ns, &peer_cfg)?;
        p.ns.ip(&["addr", "add", "fd00:100::10/64", "dev", peer.0.ifname(), "nodad"])?;
        let peer_ip = "fd00:100::10";
        // The peer initiates (wgpmd has no endpoint for it).
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        wait_for_ping(&c.ns, peer_ip, secs(10))?;
        // The operator raised the TUN's MTU above the tunnel's.
        c.ns.ip(&["link", "set", d.ifname(), "mtu", "1500"])?;
        let sent0 = d.stats()?.workers_sum("pmtu_icmp_sent")?;

        // 1450 + 8 + 40 = 1498 bytes: too big for the tunnel, fits the TUN.
        let out = c.ns.exec_timeout(
            &["ping", "-6", "-n", "-M", "do", "-c", "2", "-i", "0.3", "-W", "2", "-s", "1450", peer_ip],
            secs(20),
        )?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("ping -6 -M do -s 1450:\n{text}");
        let st = d.wait_stats("packet too big sent", |s| Ok(s.workers_sum("pmtu_icmp_sent")? > sent0))?;
        ensure!(
            text.contains(&format!("mtu={MTU}")) || text.contains(&format!("mtu = {MTU}")),
            "ping -6 did not report the tunnel MTU: {text}; counters {:?}",
            st.0
        );
        ensure!(st.workers_sum("too_big_dropped")? >= 1, "{:?}", st.0);

        // The kernel learnt the path MTU from the error: in its route cache, or the next ping
        // fails locally.
        let route = c.ns.ip(&["-6", "route", "get", peer_ip])?;
        eprintln!("ip -6 route get {peer_ip}: {route}");
        if !route.contains(&format!("mtu {MTU}")) {
            let out = c.ns.exec_timeout(
                &["ping", "-6", "-n", "-M", "do", "-c", "1", "-W", "2", "-s", "1450", peer_ip],
                secs(10),
            )?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprintln!("again:\n{text}");
            ensure!(
                text.contains(&format!("mtu={MTU}")) || text.contains(&format!("mtu: {MTU}")),
                "no learnt path MTU: `ip -6 route get`: {route}; ping again: {text}"
            );
        }

        // Packets that fit still pass.
        let out = c
            .ns
            .exec_timeout(&["ping", "-6", "-n", "-M", "do", "-c", "3", "-W", "2", "-s", "1300", peer_ip], secs(15))?;
        let s = PingStats::parse(&String::from_utf8_lossy(&out.stdout))?;
        ensure!(s.received == 3, "ping -6 -s 1300 through the tunnel: {s:?}");
        d.ensure_running()?;
        d.stop()
    });
}
