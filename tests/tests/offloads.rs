//! Offloads at the kernel boundary: GSO frames on the AF_PACKET WAN port (`PACKET_VNET_HDR`).
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
