//! Acceptance tests of wgpmd's WAN side beyond the basics of daemon.rs: 802.1Q (`--vlan`) and
//! the neighbour cache's aging and re-resolution, against a wireguard-go peer.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test wan`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Result};
use wgpmd_e2e::*;

/// Puts peer 0 behind VLAN `vid`: with a VLAN sub-interface `<veth>.<vid>` carrying its outer
/// address when the kernel has 8021q; otherwise (the CI kernel has neither 8021q nor bridge
/// VLAN filtering nor tc actions) behind a userspace access port (tests/tools/vlan_port.py in
/// the LAN namespace, between the peer's veth and a new bridge port). Returns the relay, if
/// any (dropping it stops it), and the interface holding the peer's outer address.
fn peer_behind_vlan(ctx: &Ctx, topo: &Topology, vid: u16) -> Result<(Option<Proc>, String)> {
    let p = &topo.peers[0];
    let vif = format!("{}.{vid}", p.outer_if);
    let vid_s = vid.to_string();
    if p.ns.ip(&["link", "add", "link", &p.outer_if, "name", &vif, "type", "vlan", "id", &vid_s]).is_ok() {
        p.ns.ip(&["addr", "flush", "dev", &p.outer_if])?;
        p.ns.ip(&["addr", "add", &format!("{}/24", p.outer_ip), "dev", &vif])?;
        p.ns.ip(&["link", "set", "dev", &vif, "up"])?;
        return Ok((None, vif));
    }
    let lan_end = &topo.links()[1].a_if;
    topo.lan.ip(&["link", "set", "dev", lan_end, "nomaster"])?;
    topo.lan.ip(&["link", "add", "vt0", "type", "veth", "peer", "name", "vt1"])?;
    topo.lan.ip(&["link", "set", "dev", "vt1", "master", &topo.bridge])?;
    for l in ["vt0", "vt1"] {
        topo.lan.ip(&["link", "set", "dev", l, "up"])?;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/vlan_port.py");
    let relay = Proc::spawn(ctx, &topo.lan, "vlan_port", &["python3", "-u", script, lan_end, "vt0", &vid_s], &[])?;
    Ok((Some(relay), p.outer_if.clone()))
}

/// Peer 0 sits behind VLAN 100 (a VLAN sub-interface, or a userspace access port: see
/// [`peer_behind_vlan`]); wgpmd runs with `--vlan 100` on its plain veth. The tunnel works
/// through the tagged LAN, wgpmd answers the peer's tagged ARP and ping, and an untagged host
/// on the same LAN gets no answer from wgpmd, which counts the frames as `wan_drop.Untagged`.
#[test]
fn vlan_wan() {
    run("vlan_wan", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (_relay, vif) = peer_behind_vlan(ctx, &topo, 100)?;
        let opts = WgpmdOptions { extra_args: vec!["--vlan".into(), "100".into()], ..Default::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;

        let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        eprintln!("first reply through wgpmd on VLAN 100 after {:.2} s", t.as_secs_f64());
        ping_replied(&p.ns, c.inner_ip, 5)?;
        ping_replied(&c.ns, p.inner_ip, 5)?;
        // wgpmd's own WAN address, over the VLAN: tagged ARP and echo replies.
        p.ns.ip(&["neigh", "flush", "dev", &vif])?;
        ping_replied(&p.ns, c.outer_ip, 3)?;
        let st = d.stats()?;
        ensure!(st.workers_sum("arp_replies")? >= 1 && st.workers_sum("icmp_replies")? >= 3, "{st:?}");

        // An untagged host on the same LAN: no ARP reply, no echo reply, frames counted.
        let untagged0 = st.workers_sum("wan_drop.Untagged")?;
        topo.lan.ip(&["addr", "add", "10.99.0.200/24", "dev", &topo.bridge])?;
        let s = ping(&topo.lan, c.outer_ip, 3)?;
        ensure!(s.received == 0, "wgpmd answered an untagged ping on VLAN 100: {s:?}");
        let after = d.wait_stats("untagged frames counted", |c| Ok(c.workers_sum("wan_drop.Untagged")? > untagged0))?;
        eprintln!("untagged frames dropped: {}", after.workers_sum("wan_drop.Untagged")? - untagged0);
        ping_replied(&p.ns, c.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// wgpmd's neighbour entry for a peer ages out and is re-resolved: with a reachable time of
/// 3 s (the hidden `--neigh-reachable-ms`), the peer's veth changes its MAC while the tunnel is
/// up. wgpmd keeps sending to the old MAC (the peer's kernel drops those frames, and the peer,
/// receiving nothing, sends nothing back) until the entry goes stale: the next packet sends an
/// ARP request, the peer answers from its new MAC, and pings from the concentrator's side get
/// through again, within the reachable time plus the retries.
#[test]
fn neighbour_re_resolution_after_mac_change() {
    run("neighbour_re_resolution_after_mac_change", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let opts =
            WgpmdOptions { extra_args: vec!["--neigh-reachable-ms".into(), "3000".into()], ..Default::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        ping_replied(&c.ns, p.inner_ip, 3)?;

        let arp0 = d.stats()?.workers_sum("arp_requests")?;
        p.ns.ip(&["link", "set", "dev", &p.outer_if, "address", "02:00:00:99:99:10"])?;
        let t = wait_for_ping(&c.ns, p.inner_ip, secs(30))?;
        let arp = d.stats()?.workers_sum("arp_requests")? - arp0;
        eprintln!(
            "traffic to the peer recovered {:.1} s after its MAC changed ({arp} ARP request(s))",
            t.as_secs_f64()
        );
        ensure!(arp >= 1, "wgpmd sent no ARP request for the stale entry");
        ensure!(t < secs(15), "recovery took {t:?}: longer than the reachable time (3 s) and retries");
        ping_replied(&c.ns, p.inner_ip, 3)?;
        ping_replied(&p.ns, c.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// IPv6 on the WAN: wgpmd runs with `--address 10.99.0.1/24 --address fd00:99::1/64` (the
/// kernel holds no address on its veth); the wireguard-go peer's outer address is
/// fd00:99::2/64 and its endpoint for wgpmd is `[fd00:99::1]:51820`, so the peer's kernel
/// resolves wgpmd by neighbour solicitation and the whole tunnel runs over IPv6 outer. Both
/// tunnel ends have an IPv4 and an IPv6 inner address: ping and ping -6 get through both ways,
/// wgpmd answers ping -6 to its WAN address, and `wg show` on wgpmd shows the IPv6 endpoint.
#[test]
fn ipv6_outer_carries_v4_and_v6_inner() {
    run("ipv6_outer_carries_v4_and_v6_inner", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        p.ns.ip(&["addr", "add", "fd00:99::2/64", "dev", &p.outer_if, "nodad"])?;
        let conc_cfg = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip)))
            .peer(PeerConfig::new(&p.key.public_b64(), &[&format!("{}/32", p.inner_ip), "fd00:100::10/128"]));
        let opts = WgpmdOptions { extra_args: vec!["--address".into(), "fd00:99::1/64".into()], ..Default::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &conc_cfg, &opts)?;
        c.ns.ip(&["addr", "add", "fd00:100::1/64", "dev", d.ifname(), "nodad"])?;
        let peer_cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip))).peer(
            PeerConfig::new(&c.key.public_b64(), &[INNER_NET, "fd00:100::/64"]).endpoint("[fd00:99::1]:51820".parse()?),
        );
        let peer = WgGo::start(ctx, &p.ns, &peer_cfg)?;
        p.ns.ip(&["addr", "add", "fd00:100::10/64", "dev", peer.0.ifname(), "nodad"])?;

        let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        eprintln!("first IPv4 reply over the IPv6 outer after {:.2} s", t.as_secs_f64());
        ping_replied(&p.ns, c.inner_ip, 5)?;
        ping_replied(&c.ns, p.inner_ip, 5)?;
        for (ns, to) in [(&p.ns, "fd00:100::1"), (&c.ns, "fd00:100::10"), (&p.ns, "fd00:99::1")] {
            wait_for_ping(ns, to, secs(10))?;
            let s = ping(ns, to, 5)?;
            ensure!(s.received >= 4, "ping -6 {to} from {ns}: {s:?}");
        }
        let eps = c.ns.run(&["wg", "show", d.ifname(), "endpoints"])?;
        ensure!(eps.contains("[fd00:99::2]:51820"), "wg show endpoints: {eps}");
        let st = d.stats()?;
        ensure!(st.workers_sum("arp_replies")? >= 1 && st.workers_sum("icmp_replies")? >= 4, "{st:?}");
        ensure!(st.workers_sum("no_ipv6_wan")? == 0, "{st:?}");
        d.ensure_running()?;
        d.stop()
    });
}

/// wgpmd initiates to an IPv6 endpoint: its configuration names the peer's endpoint
/// `[fd00:99::2]:51820` and the peer has none, so the first packet from the concentrator's side
/// makes wgpmd resolve the peer by neighbour solicitation (to the solicited-node group), park
/// the handshake initiation until the peer's kernel advertises, and send it over IPv6.
#[test]
fn ipv6_wgpmd_initiates_with_neighbour_solicitation() {
    run("ipv6_wgpmd_initiates_with_neighbour_solicitation", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        p.ns.ip(&["addr", "add", "fd00:99::2/64", "dev", &p.outer_if, "nodad"])?;
        let conc_cfg = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip))).peer(
            PeerConfig::new(&p.key.public_b64(), &[&format!("{}/32", p.inner_ip), "fd00:100::10/128"])
                .endpoint("[fd00:99::2]:51820".parse()?),
        );
        let opts = WgpmdOptions { extra_args: vec!["--address".into(), "fd00:99::1/64".into()], ..Default::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &conc_cfg, &opts)?;
        c.ns.ip(&["addr", "add", "fd00:100::1/64", "dev", d.ifname(), "nodad"])?;
        let peer_cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip)))
            .peer(PeerConfig::new(&c.key.public_b64(), &[INNER_NET, "fd00:100::/64"]));
        let peer = WgGo::start(ctx, &p.ns, &peer_cfg)?;
        p.ns.ip(&["addr", "add", "fd00:100::10/64", "dev", peer.0.ifname(), "nodad"])?;

        let t = wait_for_ping(&c.ns, "fd00:100::10", secs(30))?;
        eprintln!("first reply with wgpmd initiating over IPv6 after {:.2} s", t.as_secs_f64());
        let st = d.stats()?;
        ensure!(st.workers_sum("arp_requests")? >= 1, "no neighbour solicitation sent: {st:?}");
        ping_replied(&c.ns, p.inner_ip, 5)?;
        ping_replied(&p.ns, c.inner_ip, 5)?;
        let ep = peer.0.show()?.peer(&c.key.public_b64()).and_then(|x| x.endpoint);
        ensure!(ep == Some("[fd00:99::1]:51820".parse()?), "the peer learned {ep:?}");
        d.ensure_running()?;
        d.stop()
    });
}
