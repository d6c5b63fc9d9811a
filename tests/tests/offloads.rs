//! Offloads at the kernel boundary: GSO frames on the AF_PACKET WAN port (`PACKET_VNET_HDR`),
//! and the TUN inner port's segmentation (TSO/USO super-packets from the kernel) and coalescing
//! (GRO super-packets to the kernel), against a wireguard-go peer.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test offloads`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Result};
use wgpmd_e2e::*;

/// Sends `sends` UDP_SEGMENT batches of `segs` datagrams of `size` bytes each from `ns` to
/// `to:port`: each batch leaves the sender as one GSO frame (`setsockopt(SOL_UDP, UDP_SEGMENT)`)
/// and crosses the veths and the bridge as one. The datagrams are WireGuard data messages for a
/// receiver index nobody has.
fn send_gso(ns: &Netns, to: &str, port: u16, sends: u32, segs: usize, size: usize) -> Result<()> {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(17, 103, {size})\n\
         msg = (bytes([4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]) + bytes(8) + bytes({size} - 16)) * {segs}\n\
         for _ in range({sends}):\n\
         \x20   s.sendto(msg, ('{to}', {port}))\n"
    );
    let out = ns.exec_timeout(&["python3", "-c", &script], secs(30))?;
    ensure!(out.status.success(), "UDP_SEGMENT sender: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A sender's UDP_SEGMENT batches reach wgpmd's AF_PACKET sockets as GSO frames (20 frames of 8
/// datagrams of 1200 bytes: 9.6 KB each, far over a buffer). wgpmd splits every one into its
/// datagrams and hands them all to the device (counted as unknown receiver index), instead of
/// dropping the frames as too long; then a wireguard-go peer still gets through.
#[test]
fn af_packet_splits_udp_gso_frames() {
    run("af_packet_splits_udp_gso_frames", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let before = d.stats()?;
        let (sends, segs) = (20u64, 8u64);
        send_gso(&p.ns, &c.outer_ip.to_string(), CONCENTRATOR_PORT, sends as u32, segs as usize, 1200)?;
        let st = d.wait_stats("every GSO datagram handed to the device", |st| {
            Ok(st.workers_sum("drop.UnknownIndex")? - before.workers_sum("drop.UnknownIndex")? >= sends * segs)
        })?;
        let delta = |k: &str| -> Result<u64> { Ok(st.workers_sum(k)? - before.workers_sum(k)?) };
        let (frames, split) = (delta("wan_queue_rx_gso_frames")?, delta("wan_queue_rx_gso_segments")?);
        eprintln!(
            "{frames} GSO frames split into {split} datagrams; drop.UnknownIndex +{}, wan_queue_rx_dropped +{}",
            delta("drop.UnknownIndex")?,
            delta("wan_queue_rx_dropped")?
        );
        ensure!(frames == sends && split == sends * segs, "expected {sends} frames of {segs}: {frames} / {split}");
        ensure!(delta("wan_queue_rx_dropped")? == 0, "frames dropped at the ring");
        ping_replied(&p.ns, c.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// `bytes` of a pattern no two runs share, written to `name` in the test directory.
fn payload_file(ctx: &Ctx, name: &str, bytes: usize) -> Result<(std::path::PathBuf, Vec<u8>)> {
    let seed = std::process::id() as usize;
    let data: Vec<u8> = (0..bytes).map(|i| ((i * 2654435761 + seed) >> 11) as u8).collect();
    let p = ctx.write_file(name, "")?;
    std::fs::write(&p, &data)?;
    Ok((p, data))
}

/// md5sum of a file, for the log.
fn md5(path: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new("md5sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string())
}

/// One TCP transfer of `bytes` with nc: a listener in `to_ns` on `to_addr`:5555 writing a file,
/// the sender in `from_ns`; returns (sent, received) paths after comparing every byte.
fn nc_transfer(ctx: &Ctx, from_ns: &Netns, to_ns: &Netns, to_addr: &str, bytes: usize, tag: &str) -> Result<()> {
    let (src, data) = payload_file(ctx, &format!("{tag}-src.bin"), bytes)?;
    let dst = src.with_file_name(format!("{tag}-dst.bin"));
    let dst_s = dst.to_string_lossy().into_owned();
    let mut listener = Proc::spawn(
        ctx,
        to_ns,
        &format!("nc-{tag}"),
        &["sh", "-c", &format!("exec nc -l {to_addr} 5555 > {dst_s}")],
        &[],
    )?;
    wait_until("nc listening on 5555", secs(10), || {
        let ss = to_ns.run(&["ss", "-Htln", "sport = :5555"])?;
        Ok((!ss.trim().is_empty()).then_some(()))
    })?;
    let src_s = src.to_string_lossy().into_owned();
    let out = from_ns.exec_timeout(&["sh", "-c", &format!("nc -N -w 10 {to_addr} 5555 < {src_s}")], secs(60))?;
    ensure!(out.status.success(), "nc to {to_addr}: {}", String::from_utf8_lossy(&out.stderr));
    listener.wait_timeout(secs(20))?;
    let got = std::fs::read(&dst)?;
    let (m1, m2) = (md5(&src)?, md5(&dst)?);
    eprintln!("{tag}: sent {} bytes md5 {m1}, received {} bytes md5 {m2}", data.len(), got.len());
    ensure!(got == data && m1 == m2, "{tag}: received {} of {} bytes, or different bytes", got.len(), data.len());
    Ok(())
}

/// The TUN path segments: a 64 KiB TCP burst from the concentrator's side to the peer leaves
/// the kernel's TCP as TSO super-packets on wgpmd's TUN (TSO is offered with `TUNSETOFFLOAD`);
/// wgpmd reads them whole, segments them into MTU-sized packets (counted), seals each, and the
/// peer receives every byte intact (md5).
#[test]
fn tun_segments_a_64k_tcp_burst() {
    run("tun_segments_a_64k_tcp_burst", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let feats = c.ns.run(&["ethtool", "-k", d.ifname()])?;
        ensure!(feats.contains("tcp-segmentation-offload: on"), "TSO not on for wgpmd's TUN:\n{feats}");
        let before = d.stats()?;
        nc_transfer(ctx, &c.ns, &p.ns, &p.inner_ip.to_string(), 64 * 1024, "tso")?;
        let st = d.stats()?;
        let delta = |k: &str| -> Result<u64> { Ok(st.workers_sum(k)? - before.workers_sum(k)?) };
        let (frames, segs) = (delta("inner_queue_rx_gso_frames")?, delta("inner_queue_rx_gso_segments")?);
        eprintln!(
            "TUN: {frames} super-packets segmented into {segs} packets; inner rx errors +{}",
            delta("inner_queue_rx_errors")?
        );
        ensure!(frames >= 1 && segs >= 2 * frames, "no segmentation: {frames} super-packets, {segs} segments");
        ensure!(delta("inner_queue_rx_errors")? == 0 && delta("inner_queue_rx_dropped")? == 0, "TUN rx errors/drops");
        d.ensure_running()?;
        d.stop()
    });
}

/// The TUN path coalesces: 1 MiB over TCP from the peer to a listener in the concentrator's
/// namespace; wgpmd decrypts the peer's segments and writes consecutive ones of the flow to the
/// TUN as GRO super-packets (counted); the listener receives every byte intact (md5).
#[test]
fn tun_coalesces_received_tcp_into_gro_super_packets() {
    run("tun_coalesces_received_tcp_into_gro_super_packets", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let before = d.stats()?;
        nc_transfer(ctx, &p.ns, &c.ns, &c.inner_ip.to_string(), 1024 * 1024, "gro")?;
        let st = d.stats()?;
        let delta = |k: &str| -> Result<u64> { Ok(st.workers_sum(k)? - before.workers_sum(k)?) };
        let (frames, pkts) = (delta("inner_queue_tx_gro_frames")?, delta("inner_queue_tx_gro_packets")?);
        eprintln!(
            "TUN: {pkts} packets coalesced into {frames} super-packets (of {} written); tx errors +{} dropped +{}",
            delta("inner_queue_tx_packets")?,
            delta("inner_queue_tx_errors")?,
            delta("inner_queue_tx_dropped")?
        );
        ensure!(frames >= 1 && pkts >= 2 * frames, "no coalescing: {pkts} packets in {frames} super-packets");
        ensure!(delta("inner_queue_tx_errors")? == 0 && delta("inner_queue_tx_dropped")? == 0, "TUN tx errors/drops");
        d.ensure_running()?;
        d.stop()
    });
}
