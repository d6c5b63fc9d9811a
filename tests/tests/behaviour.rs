//! Behaviour of the wgpmd daemon over time, against wireguard-go peers: staging before a
//! handshake, roaming, restarts of either side, live configuration changes, persistent
//! keepalive, and the wg(4) timers after a peer goes silent.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test behaviour`
//! (as root). See docs/TESTING.md.
//!
//! That a cookie reply cannot move a peer's endpoint (only authenticated data and handshake
//! messages can) is unit-tested in wgpmd-proto/src/device/tests.rs
//! (`cookie_reply_does_not_move_the_endpoint`, `endpoint_roams_on_authenticated_data_only`) and
//! checked end to end with a forged cookie reply from another address
//! (`cookie_reply_from_elsewhere_does_not_move_endpoint`).

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use wgpmd_e2e::*;

/// wgpmd's bound on packets staged per peer while it has no session (wgpmd-proto/src/messages.rs).
const MAX_STAGED: u64 = 128;

fn entry(show: &WgShow, key: &str, who: &str) -> Result<WgShowPeer> {
    show.peer(key).cloned().with_context(|| format!("{who}'s `wg show` lacks peer {key}: {show:?}"))
}

/// wgpmd (concentrator, no endpoint configured) and one wireguard-go peer that initiates; waits
/// for the first ping through the tunnel.
fn established(ctx: &Ctx, topo: &Topology) -> Result<(Wgpmd, WgGo)> {
    let (c, p) = (&topo.concentrator, &topo.peers[0]);
    let d = Wgpmd::start_concentrator(ctx, topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
    let peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
    let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
    eprintln!("tunnel up after {:.2} s", t.as_secs_f64());
    Ok((d, peer))
}

/// A tracing line's time (`2026-11-25T14:50:00.123456Z ...`) as seconds since midnight UTC.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s): (f64, f64, f64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The wall clock as seconds since midnight UTC (compared with [`log_time`]).
fn utc_secs_of_day() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// Ping statistics from a background `ping` run's log.
fn ping_log_stats(p: &Proc) -> Result<PingStats> {
    PingStats::parse(&p.log())
}

/// (1) Packets for a peer with an endpoint but no session are staged, at most 128 of them, the
/// oldest dropped first and counted (`worker*.staged_dropped`), and delivered once the
/// handshake completes. The wireguard-go peer is started only after the burst, so wgpmd's first
/// initiation goes unanswered and the burst waits for the retry 5 s later.
#[test]
fn staging_bounded_oldest_dropped() {
    run("staging_bounded_oldest_dropped", |ctx| {
        const N: u64 = 200;
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut dcfg = topo.concentrator_device();
        dcfg.peers[0].endpoint = Some(p.endpoint());
        let mut pcfg = topo.peer_device(0);
        pcfg.peers[0].endpoint = None; // responder only
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &dcfg, &WgpmdOptions::default())?;

        // A receiver in the peer's namespace: one line per datagram, its payload (a sequence
        // number).
        let recv = Proc::spawn(
            ctx,
            &p.ns,
            "udp-receiver",
            &[
                "/usr/bin/python3",
                "-u",
                "-c",
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 s.bind(('0.0.0.0',9999))\nprint('ready',flush=True)\n\
                 while True:\n    d,a=s.recvfrom(2048)\n    print('got',d.decode(),flush=True)\n",
            ],
            &[],
        )?;
        wait_until("the UDP receiver", secs(10), || Ok(recv.log().contains("ready").then_some(())))?;

        // The burst: N datagrams numbered 0..N, sent back to back from wgpmd's side.
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             for i in range({N}):\n    s.sendto(str(i).encode(),('{}',9999))\n",
            p.inner_ip
        );
        c.ns.run(&["/usr/bin/python3", "-c", &script])?;
        let st = d.wait_stats("the overflow counted", |s| Ok(s.workers_sum("staged_dropped")? >= N - MAX_STAGED))?;
        let dropped = st.workers_sum("staged_dropped")?;
        ensure!(
            dropped == N - MAX_STAGED,
            "staged_dropped = {dropped}, want {} ({N} sent, {MAX_STAGED} kept)",
            N - MAX_STAGED
        );
        ensure!(st.total("sessions")? == 0, "a session exists before the peer runs");

        // Now the peer; wgpmd's retry (5 s after its first initiation) completes the handshake.
        let t0 = Instant::now();
        let _peer = WgGo::start(ctx, &p.ns, &pcfg)?;
        let got = |log: &str| -> Vec<u64> {
            log.lines().filter_map(|l| l.strip_prefix("got ")).filter_map(|n| n.trim().parse().ok()).collect()
        };
        wait_until("the staged datagrams at the peer", secs(20), || {
            Ok((got(&recv.log()).len() as u64 >= MAX_STAGED).then_some(()))
        })
        .with_context(|| format!("received {:?}", got(&recv.log())))?;
        std::thread::sleep(Duration::from_millis(500)); // nothing more may come
        let rx = got(&recv.log());
        let want: Vec<u64> = (N - MAX_STAGED..N).collect();
        ensure!(
            rx == want,
            "the peer received {} datagrams {:?}, want the newest {MAX_STAGED} in order ({}..{N})",
            rx.len(),
            rx,
            N - MAX_STAGED
        );
        let st = d.wait_stats("staged packets flushed", |s| Ok(s.get("control.staged_flushed")? >= MAX_STAGED))?;
        eprintln!(
            "{N} sent: {} dropped oldest-first, {} flushed {:.1} s after the peer started \
             ({} initiations)",
            st.workers_sum("staged_dropped")?,
            st.get("control.staged_flushed")?,
            t0.elapsed().as_secs_f64(),
            st.get("control.initiations_sent")?
        );
        ensure!(st.workers_sum("staged_dropped")? == N - MAX_STAGED);
        d.ensure_running()?;
        d.stop()
    });
}

/// (2) Roaming: the peer moves to another UDP port, then to another outer address (and port);
/// wgpmd's endpoint follows the next authenticated packet and traffic continues both ways.
#[test]
fn roaming_endpoint_follows_peer() {
    run("roaming_endpoint_follows_peer", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, peer) = established(ctx, &topo)?;
        let key = p.key.public_b64();
        ensure!(entry(&d.show()?, &key, "wgpmd")?.endpoint == Some(p.endpoint()));

        let check = |want: SocketAddr| -> Result<()> {
            ping_replied(&p.ns, c.inner_ip, 3)?;
            let e = entry(&d.show()?, &key, "wgpmd")?;
            ensure!(e.endpoint == Some(want), "wgpmd's endpoint is {:?}, want {want} after the peer moved", e.endpoint);
            ping_replied(&c.ns, p.inner_ip, 3)?;
            eprintln!("endpoint followed to {want}");
            Ok(())
        };
        // New port.
        peer.wg(&["set", peer.ifname(), "listen-port", "51821"])?;
        check(SocketAddr::from((p.outer_ip, 51821)))?;
        // New outer address: the old one removed, the new one promoted.
        let new_ip = Ipv4Addr::new(10, 99, 0, 60);
        p.ns.sysctl(&format!("net.ipv4.conf.{}.promote_secondaries", p.outer_if), "1")?;
        p.ns.ip(&["addr", "add", &format!("{new_ip}/24"), "dev", &p.outer_if])?;
        p.ns.ip(&["addr", "del", &format!("{}/24", p.outer_ip), "dev", &p.outer_if])?;
        // wireguard-go pins the source address it last used (IP_PKTINFO) and fails with
        // "network is unreachable" once it is gone, until its 15 s timer; a rebind (new port)
        // clears the pinned source, so the move is immediate.
        peer.wg(&["set", peer.ifname(), "listen-port", "51822"])?;
        check(SocketAddr::from((new_ip, 51822)))?;
        d.ensure_running()?;
        d.stop()
    });
}

/// (3) Restarts. The wireguard-go peer restarts (same keys and address): it initiates at once and
/// traffic resumes long before wgpmd's own 15 s timer. Then wgpmd restarts with the same
/// configuration: the peer, still sending on its old session, starts a new handshake when its
/// timers give up on it (15 s), and traffic resumes.
#[test]
fn restarts_of_peer_and_wgpmd() {
    run("restarts_of_peer_and_wgpmd", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, peer) = established(ctx, &topo)?;
        let before = d.stats()?.total("responses_sent")?;
        drop(peer); // SIGTERM
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let after = d.stats()?.total("responses_sent")?;
        eprintln!(
            "peer restarted: first reply after {:.2} s; wgpmd sent {} response(s)",
            t.as_secs_f64(),
            after - before
        );
        ensure!(after > before, "wgpmd sent no handshake response: the restarted peer did not initiate");
        ensure!(t < Duration::from_secs(10), "traffic resumed only after {:.1} s", t.as_secs_f64());
        ping_replied(&c.ns, p.inner_ip, 3)?;

        d.stop()?;
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let t = wait_for_ping(&p.ns, c.inner_ip, secs(40))?;
        eprintln!("wgpmd restarted: the peer's traffic resumed after {:.2} s", t.as_secs_f64());
        ensure!(t < Duration::from_secs(25), "the peer's traffic resumed only after {:.1} s", t.as_secs_f64());
        ping_replied(&c.ns, p.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// (4) Live changes with `wg set` and `wg syncconf` while peer A pings continuously: adding a
/// peer B, changing its PSK, endpoint, allowed IPs and keepalive, removing it, changing A's own
/// keepalive and allowed IPs, and syncconf adding and removing a peer C. A loses (next to)
/// nothing and does not handshake again.
#[test]
fn live_changes_keep_traffic() {
    run("live_changes_keep_traffic", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, _peer) = established(ctx, &topo)?;
        let a = p.key.public_b64();
        let hs0 = entry(&d.show()?, &a, "wgpmd")?.latest_handshake;
        let st0 = d.stats()?;
        let ping =
            Proc::spawn(ctx, &p.ns, "ping-a", &["ping", "-n", "-i", "0.2", "-c", "50", &c.inner_ip.to_string()], &[])?;
        // The pings flowing before the changes start (a poll, not a fixed wait).
        wait_until("A's pings answered", secs(10), || Ok(ping.log().contains("icmp_seq=3 ").then_some(())))?;
        let ifn = d.ifname().to_string();
        let wg = |args: &[&str]| -> Result<()> {
            let mut cmd = std::process::Command::new("wg");
            cmd.args(args);
            let out = run_cmd(&mut cmd, secs(15))?;
            ensure!(out.status.success(), "wg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        let b = KeyPair::generate().public_b64();
        let psk = ctx.write_file("b.psk", &format!("{}\n", KeyPair::generate().private_b64()))?;
        let psk = psk.to_string_lossy().into_owned();
        let has = |key: &str| -> Result<Option<WgShowPeer>> { Ok(d.show()?.peer(key).cloned()) };

        wg(&["set", &ifn, "peer", &b, "allowed-ips", "10.100.0.77/32"])?;
        ensure!(has(&b)?.is_some(), "peer B not added");
        wg(&["set", &ifn, "peer", &b, "preshared-key", &psk])?;
        wg(&["set", &ifn, "peer", &b, "endpoint", "10.99.0.77:51820"])?;
        wg(&["set", &ifn, "peer", &b, "allowed-ips", "10.100.0.78/32,10.100.5.0/24"])?;
        wg(&["set", &ifn, "peer", &b, "persistent-keepalive", "25"])?;
        let eb = has(&b)?.context("peer B vanished")?;
        ensure!(
            eb.preshared_key.is_some()
                && eb.endpoint == Some("10.99.0.77:51820".parse()?)
                && eb.allowed_ips == vec!["10.100.0.78/32", "10.100.5.0/24"]
                && eb.persistent_keepalive == Some(25),
            "peer B after wg set: {eb:?}"
        );
        wg(&["set", &ifn, "peer", &b, "remove"])?;
        ensure!(has(&b)?.is_none(), "peer B not removed");

        // Changing the live peer A itself.
        let ia = format!("{}/32", p.inner_ip);
        wg(&["set", &ifn, "peer", &a, "persistent-keepalive", "30", "allowed-ips", &format!("{ia},10.100.9.0/24")])?;
        let ea = has(&a)?.context("peer A vanished")?;
        ensure!(
            ea.persistent_keepalive == Some(30) && ea.allowed_ips == vec![ia.clone(), "10.100.9.0/24".to_string()],
            "peer A after wg set: {ea:?}"
        );

        // syncconf: the original file plus a peer C, then the original file again.
        let orig = topo.concentrator_device();
        let cpk = KeyPair::generate().public_b64();
        let with_c = orig.clone().peer(PeerConfig::new(&cpk, &["10.100.0.88/32"]));
        let f1 = ctx.write_file("sync-with-c.conf", &with_c.to_setconf())?;
        let f2 = ctx.write_file("sync-orig.conf", &orig.to_setconf())?;
        wg(&["syncconf", &ifn, &f1.to_string_lossy()])?;
        ensure!(has(&cpk)?.is_some(), "syncconf did not add peer C");
        let ea = has(&a)?.context("peer A vanished")?;
        ensure!(ea.allowed_ips == vec![ia.clone()], "syncconf did not reset A's allowed IPs: {ea:?}");
        wg(&["syncconf", &ifn, &f2.to_string_lossy()])?;
        ensure!(has(&cpk)?.is_none(), "syncconf did not remove peer C");
        ensure!(d.show()?.peers.len() == 1, "{:?}", d.show()?);

        let mut ping = ping;
        ping.wait_timeout(secs(30))?;
        let st = ping_log_stats(&ping)?;
        let ea = entry(&d.show()?, &a, "wgpmd")?;
        let st1 = d.stats()?;
        eprintln!(
            "A's ping during the changes: {st:?}; A's latest handshake {} -> {}; \
             sessions {} -> {}",
            hs0,
            ea.latest_handshake,
            st0.total("sessions")?,
            st1.total("sessions")?
        );
        ensure!(st.transmitted == 50 && st.received >= 49, "A lost pings while the configuration changed: {st:?}");
        ensure!(ea.latest_handshake == hs0, "A handshook again: {hs0} -> {}", ea.latest_handshake);
        ensure!(st1.total("sessions")? == st0.total("sessions")?, "a new session was made");
        ping_replied(&c.ns, p.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// (5) `wg set ... persistent-keepalive 2` on wgpmd: while idle, keepalives (32-byte data
/// messages) reach the peer every 2 s.
#[test]
fn persistent_keepalive_on_schedule() {
    run("persistent_keepalive_on_schedule", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, peer) = established(ctx, &topo)?;
        let ck = c.key.public_b64();
        run_cmd(
            std::process::Command::new("wg").args([
                "set",
                d.ifname(),
                "peer",
                &p.key.public_b64(),
                "persistent-keepalive",
                "2",
            ]),
            secs(15),
        )?;
        std::thread::sleep(Duration::from_millis(2500));
        // Capture on the peer's veth at the same time: what wgpmd actually sends.
        let pcap = ctx.dir().join("keepalive.pcap");
        let pcap_s = pcap.to_string_lossy().into_owned();
        let port = c.port.to_string();
        let mut capture = Proc::spawn(
            ctx,
            &p.ns,
            "tcpdump",
            &["tcpdump", "-i", &p.outer_if, "-n", "-U", "-Z", "root", "-w", &pcap_s, "udp", "port", &port],
            &[],
        )?;
        wait_until("tcpdump listening", secs(10), || Ok(capture.log().contains("listening on").then_some(())))?;
        // Poll the peer's rx counter; record when it grows, and by how much.
        let t0 = Instant::now();
        let mut last = entry(&peer.show()?, &ck, "the peer")?.rx_bytes;
        let mut arrivals = Vec::new();
        while t0.elapsed() < Duration::from_secs(7) {
            std::thread::sleep(Duration::from_millis(100));
            let rx = entry(&peer.show()?, &ck, "the peer")?.rx_bytes;
            if rx != last {
                ensure!((rx - last) % 32 == 0, "the peer received {} bytes: not keepalives", rx - last);
                for _ in 0..(rx - last) / 32 {
                    arrivals.push(t0.elapsed().as_secs_f64());
                }
                last = rx;
            }
        }
        eprintln!("keepalives at the peer at {arrivals:.2?} s");
        ensure!((3..=4).contains(&arrivals.len()), "{} keepalives in 7 s with a 2 s interval", arrivals.len());
        for w in arrivals.windows(2) {
            let gap = w[1] - w[0];
            ensure!((1.5..=2.5).contains(&gap), "keepalives {gap:.2} s apart: {arrivals:?}");
        }

        // The capture: 3-4 UDP datagrams of length 32 (a keepalive: 16-byte header and an
        // empty AEAD tag) from wgpmd's address and port, 1.5-2.5 s apart by their timestamps.
        capture.stop();
        let text = run_cmd(std::process::Command::new("tcpdump").args(["-r", &pcap_s, "-n"]), secs(15))?;
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        eprintln!("capture on the peer's veth:\n{text}");
        let from = format!("IP {}.{} > ", c.outer_ip, c.port);
        let mut times = Vec::new();
        for line in text.lines().filter(|l| l.contains(&from)) {
            ensure!(line.ends_with("UDP, length 32"), "wgpmd sent more than keepalives: {line}");
            let ts = line.split_whitespace().next().unwrap_or_default();
            let secs_of_day = ts
                .split(':')
                .map(|x| x.parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .ok()
                .filter(|v| v.len() == 3)
                .map(|v| v[0] * 3600.0 + v[1] * 60.0 + v[2])
                .with_context(|| format!("no timestamp in tcpdump's line {line:?}"))?;
            times.push(secs_of_day);
        }
        eprintln!("keepalives captured at {times:.3?}");
        ensure!(
            (3..=4).contains(&times.len()),
            "{} keepalives from wgpmd captured in 7 s with a 2 s interval:\n{text}",
            times.len()
        );
        for w in times.windows(2) {
            let gap = (w[1] - w[0]).rem_euclid(86400.0); // across midnight
            ensure!((1.5..=2.5).contains(&gap), "captured keepalives {gap:.3} s apart: {times:?}");
        }
        d.ensure_running()?;
        d.stop()
    });
}

/// (6) The peer goes silent (its wireguard-go killed) while wgpmd keeps sending: 15 s after its
/// first unanswered packet wgpmd starts a new handshake ("Retrying handshake with peer ...
/// because we stopped hearing back after 15 seconds"), then retries every 5 s ("Handshake for
/// peer ... did not complete after 5 seconds, retrying (try N)"), as wg(4) logs them.
#[test]
fn new_handshake_after_silence_and_retries() {
    run("new_handshake_after_silence_and_retries", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, peer) = established(ctx, &topo)?;
        ping_replied(&c.ns, p.inner_ip, 2)?;
        drop(peer);
        let t0 = Instant::now();
        let killed_at = utc_secs_of_day();
        let _ping = Proc::spawn(
            ctx,
            &c.ns,
            "ping-silent",
            &["ping", "-n", "-i", "0.5", "-c", "80", &p.inner_ip.to_string()],
            &[],
        )?;
        const RETRY: &str = "because we stopped hearing back after 15 seconds";
        let line_of =
            |log: &str, pat: &str| -> Option<String> { log.lines().find(|l| l.contains(pat)).map(str::to_string) };
        let lines = wait_until("wgpmd's log: retry (try 3)", secs(40), || {
            let log = d.log();
            let r = line_of(&log, RETRY);
            let t2 = line_of(&log, "did not complete after 5 seconds, retrying (try 2)");
            let t3 = line_of(&log, "did not complete after 5 seconds, retrying (try 3)");
            Ok(match (r, t2, t3) {
                (Some(r), Some(t2), Some(t3)) => Some([r, t2, t3]),
                _ => None,
            })
        })?;
        let elapsed = t0.elapsed().as_secs_f64();
        let times = lines
            .iter()
            .map(|l| log_time(l).with_context(|| format!("no time in {l:?}")))
            .collect::<Result<Vec<f64>>>()?;
        for l in &lines {
            eprintln!("{l}");
        }
        ensure!(lines[0].contains("Retrying handshake with peer"), "{}", lines[0]);
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            if !(4.5..=5.5).contains(&gap) {
                bail!("retries {gap:.3} s apart, want 5 s ± 0.5 s: {lines:?}");
            }
        }
        // The first unanswered packet leaves right after the kill; the timer is 15 s plus up
        // to 1/3 s of jitter.
        let silence = times[0] - killed_at;
        ensure!(
            (14.5..=17.0).contains(&silence),
            "the new handshake came {silence:.2} s after the peer went silent, want ~15 s"
        );
        eprintln!(
            "new handshake {silence:.2} s after the kill; try 2, try 3 at +{:.2} s, +{:.2} s \
             (try 3 seen {elapsed:.1} s after the kill)",
            times[1] - times[0],
            times[2] - times[0]
        );
        d.ensure_running()?;
        d.stop()
    });
}

/// `count` handshake initiations with a valid MAC1 for `responder` (wgpmd's public key), from
/// a throwaway identity wgpmd does not know: made by the wgpmd library's own `Device`, virtual
/// time advancing past the 5 s own-initiation limit between them.
fn valid_mac1_initiations(responder: [u8; 32], count: usize) -> Result<Vec<Vec<u8>>> {
    use rand_core::OsRng;
    use wgpmd_proto::crypto::PrivateKey;
    use wgpmd_proto::device::{Device, Output};
    use wgpmd_proto::time::Timestamp;
    let mut dev = Device::new(&mut OsRng, 0);
    dev.set_private_key(Some(PrivateKey::generate(&mut OsRng)));
    let id = dev.add_peer(&mut OsRng, responder).map_err(|e| anyhow::anyhow!("add_peer: {e:?}"))?;
    dev.set_endpoint(id, "10.99.0.1:51820".parse()?).map_err(|e| anyhow::anyhow!("set_endpoint: {e:?}"))?;
    let mut out = Output::with_capacity(4);
    let mut msgs = Vec::with_capacity(count);
    for i in 0..count as u64 {
        out.clear();
        dev.initiate(Timestamp::from_secs(10 + 6 * i), &mut OsRng, id, &mut out)
            .map_err(|e| anyhow::anyhow!("initiate: {e:?}"))?;
        let t = out.transmits.first().context("initiate sent nothing")?;
        ensure!(t.payload().len() == 148 && t.payload()[0] == 1, "not an initiation");
        msgs.push(t.payload().to_vec());
    }
    Ok(msgs)
}

/// Sends `msgs` to `to` from inside `ns` in bursts of all of them every `every`, for `dur`
/// (one thread in the namespace, one socket). Returns the number sent.
fn flood(
    ns: &Netns,
    to: SocketAddr,
    msgs: Vec<Vec<u8>>,
    every: Duration,
    dur: Duration,
) -> std::thread::JoinHandle<Result<u64>> {
    let name = ns.name().to_string();
    std::thread::spawn(move || -> Result<u64> {
        enter_netns(&name)?; // only this thread changes namespace
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < dur {
            let b = Instant::now();
            for m in &msgs {
                if s.send_to(m, to).is_ok() {
                    sent += 1;
                }
            }
            if let Some(rest) = every.checked_sub(b.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Ok(sent)
    })
}

/// (7) Under load: a flood of initiations with a valid MAC1 (from an identity wgpmd does not
/// know, so each would cost it a DH) arriving faster than it can process them (bursts of 1000,
/// more than the 512 queued handshakes that mean "under load") makes wgpmd answer with cookie
/// replies; an established peer's ping and iperf3 keep working. Prints iperf3 with and without
/// the flood.
#[test]
fn under_load_cookies_and_established_traffic() {
    run("under_load_cookies_and_established_traffic", |ctx| {
        let topo = Topology::new(2)?;
        let (c, p, f) = (&topo.concentrator, &topo.peers[0], &topo.peers[1]);
        let mut dcfg = topo.concentrator_device();
        dcfg.peers.truncate(1);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &dcfg, &WgpmdOptions::default())?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let t = Instant::now();
        let msgs = valid_mac1_initiations(c.key.public_bytes(), 1000)?;
        eprintln!("1000 initiations crafted in {:.2} s", t.elapsed().as_secs_f64());

        let base = iperf3_report(&p.ns, &c.ns, c.inner_ip, 5, false)?;
        let st0 = d.stats()?;
        let fl = flood(&f.ns, c.endpoint(), msgs, Duration::from_millis(250), Duration::from_secs(6));
        let ping = Proc::spawn(
            ctx,
            &p.ns,
            "ping-under-load",
            &["ping", "-n", "-i", "0.2", "-c", "25", &c.inner_ip.to_string()],
            &[],
        )?;
        let loaded = iperf3_report(&p.ns, &c.ns, c.inner_ip, 5, false);
        let sent = fl.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let mut ping = ping;
        ping.wait_timeout(secs(30))?;
        let pst = ping_log_stats(&ping)?;
        let loaded = loaded?;
        let st1 = d.stats()?;
        // Device counters over the control core and the workers.
        let delta = |k: &str| -> Result<u64> { Ok(st1.total(k)? - st0.total(k)?) };
        let processed = st1.workers_sum("handshakes_processed")? - st0.workers_sum("handshakes_processed")?;
        let ratio = loaded.bits_per_second / base.bits_per_second;
        eprintln!(
            "flood: {sent} initiations in 6 s; wgpmd: cookies_sent +{}, mac1_valid +{}, \
             dh_operations +{}, handshakes_processed +{processed}; ping {pst:?}; iperf3 {:.0} Mbit/s \
             without, {:.0} Mbit/s with the flood: ratio {ratio:.2}",
            delta("cookies_sent")?,
            delta("mac1_valid")?,
            delta("dh_operations")?,
            base.bits_per_second / 1e6,
            loaded.bits_per_second / 1e6
        );
        ensure!(delta("cookies_sent")? > 0, "no cookie reply under load");
        ensure!(pst.received * 10 >= pst.transmitted * 9, "the established peer's ping suffered: {pst:?}");
        ensure!(loaded.bits_per_second > 1e6, "iperf3 under load: {loaded:?}");
        ping_replied(&p.ns, c.inner_ip, 3)?;
        d.ensure_running()?;
        d.stop()
    });
}

/// (7b) Under load, an initiator that took our cookie and retries with a valid MAC2 is
/// answered, and the per-source rate limit holds for valid-MAC2 initiations beyond the burst.
/// The initiator is a real peer of wgpmd's (topology peer 1) played by the wgpmd library from
/// inside peer 1's namespace, while a flood from the same namespace keeps wgpmd under load.
#[test]
fn under_load_mac2_retry_answered_and_rate_limited() {
    run("under_load_mac2_retry_answered_and_rate_limited", |ctx| {
        use rand_core::OsRng;
        use wgpmd_proto::crypto::PrivateKey;
        use wgpmd_proto::device::{Device, HandshakeOutcome, Output};
        use wgpmd_proto::time::Timestamp;
        let topo = Topology::new(2)?;
        let (c, f) = (&topo.concentrator, &topo.peers[1]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let flood_msgs = valid_mac1_initiations(c.key.public_bytes(), 1000)?;
        let st0 = d.stats()?;
        let fl = flood(&f.ns, c.endpoint(), flood_msgs, Duration::from_millis(200), Duration::from_secs(8));
        // Peer 1's identity, from inside its namespace (one thread, one socket).
        let ns_name = f.ns.name().to_string();
        let conc_key = c.key.public_bytes();
        let my_key = f.key.private_bytes();
        let to = c.endpoint();
        let player = std::thread::spawn(move || -> Result<(bool, u32)> {
            enter_netns(&ns_name)?; // only this thread changes namespace
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut dev = Device::new(&mut OsRng, 0);
            dev.set_private_key(Some(PrivateKey::from_bytes(my_key)));
            let id = dev.add_peer(&mut OsRng, conc_key).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            dev.set_endpoint(id, to).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut out = Output::with_capacity(4);
            let mut t = 10u64;
            let mut buf = [0u8; 256];
            // Let the flood build the queue up first.
            std::thread::sleep(Duration::from_millis(600));
            let mut got_cookie = false;
            let mut answered = false;
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline && !answered {
                out.clear();
                t += 6;
                dev.initiate(Timestamp::from_secs(t), &mut OsRng, id, &mut out)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let init = out.transmits.first().context("no initiation")?.payload().to_vec();
                s.send_to(&init, to)?;
                let until = Instant::now() + Duration::from_millis(800);
                while Instant::now() < until {
                    let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                    out.clear();
                    match dev.receive_handshake(Timestamp::from_secs(t), &mut OsRng, from, &buf[..n], false, &mut out) {
                        Ok(HandshakeOutcome::CookieStored(_)) => got_cookie = true,
                        Ok(HandshakeOutcome::Completed(_)) => answered = true,
                        _ => {}
                    }
                    if answered || got_cookie {
                        break;
                    }
                }
            }
            ensure!(got_cookie, "wgpmd under load sent no cookie reply to a MAC2-less initiation");
            ensure!(answered, "the retry with a valid MAC2 was not answered under load");
            // Now ten valid-MAC2 initiations at once from this one source: the token bucket
            // (burst 5, 20/s) lets only the first few reach the handshake.
            for _ in 0..10 {
                out.clear();
                t += 6;
                dev.initiate(Timestamp::from_secs(t), &mut OsRng, id, &mut out)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let m = out.transmits.first().context("no initiation")?.payload().to_vec();
                ensure!(m[132..148] != [0u8; 16], "the burst lacks MAC2 (cookie expired?)");
                s.send_to(&m, to)?;
            }
            let mut responses = 0u32;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    if n == 92 {
                        responses += 1;
                    }
                }
            }
            Ok((answered, responses))
        });
        let (_, responses) = player.join().map_err(|_| anyhow::anyhow!("player thread panicked"))??;
        let _ = fl.join();
        let st1 = d.stats()?;
        // Device counters over the control core and the workers.
        let delta = |k: &str| -> Result<u64> { Ok(st1.total(k)? - st0.total(k)?) };
        eprintln!(
            "MAC2 retry answered under load; burst of 10: {responses} response(s), RateLimited +{}, cookies +{}",
            delta("drop.RateLimited")?,
            delta("cookies_sent")?
        );
        ensure!(delta("drop.RateLimited")? >= 3, "the per-source rate limit did not hold");
        ensure!(responses <= 6, "{responses} responses to a burst of 10 from one source");
        d.ensure_running()?;
        d.stop()
    });
}

/// Captures, from inside `ns` on interface `ifname` (a raw AF_PACKET socket in a thread that
/// joins the namespace with setns(2)), the UDP payloads of the 148-byte handshake initiations
/// `from` sends, each with the time it was seen, until `stop` is set.
/// Captured initiations (arrival time, UDP payload), and the capturing thread.
type Capture = (std::sync::mpsc::Receiver<(Instant, Vec<u8>)>, std::thread::JoinHandle<Result<()>>);

fn capture_initiations(
    ns: &Netns,
    ifname: &str,
    from: Ipv4Addr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Capture> {
    let ns_name = ns.name().to_string();
    let ifname = ifname.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let h = std::thread::spawn(move || -> Result<()> {
        use nix::sys::socket::SockType;
        use nix::sys::socket::{
            recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
        };
        use std::os::fd::{AsRawFd, OwnedFd};
        // A packet socket for IPv4 frames of every interface in the namespace; frames of
        // other interfaces are skipped by index below (what bind(2) to the interface would do).
        let setup = || -> Result<(OwnedFd, usize)> {
            enter_netns(&ns_name)?; // only this thread changes namespace
            let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), SockProtocol::EthIp)
                .context("socket(AF_PACKET)")?;
            let index = nix::net::if_::if_nametoindex(ifname.as_str())
                .with_context(|| format!("no interface {ifname} in {ns_name}"))?;
            setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 100_000))
                .context("SO_RCVTIMEO")?;
            Ok((fd, index as usize))
        };
        let (fd, index) = match setup() {
            Ok(x) => {
                let _ = ready_tx.send(Ok(()));
                x
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let n = match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                Ok((n, Some(from_if))) if n > 0 && from_if.ifindex() == index => n,
                _ => continue,
            };
            let fr = &buf[..n];
            // Ethernet, IPv4, UDP to port 51820, a 148-byte payload of type 1.
            if fr.len() < 14 + 20 + 8 || fr[12..14] != [0x08, 0x00] || fr[14] >> 4 != 4 {
                continue;
            }
            let ihl = usize::from(fr[14] & 0xf) * 4;
            let udp = 14 + ihl;
            if fr[14 + 9] != 17 || fr[26..30] != from.octets() || fr.len() < udp + 8 {
                continue;
            }
            let dport = u16::from_be_bytes([fr[udp + 2], fr[udp + 3]]);
            let payload = &fr[udp + 8..];
            if dport == CONCENTRATOR_PORT && payload.len() == 148 && payload[0] == 1 {
                let _ = tx.send((Instant::now(), payload.to_vec()));
            }
        }
        Ok(())
    });
    ready_rx.recv().map_err(|_| anyhow::anyhow!("the capture thread ended"))??;
    Ok((rx, h))
}

/// (8) A cookie reply does not move the endpoint, even one anybody can forge and wgpmd accepts:
/// the cookie-encryption key comes from the responder's PUBLIC key and the AAD is the
/// initiation's MAC1, both visible on the wire. wgpmd has the peer with its endpoint; the
/// peer's wireguard-go is not running, so wgpmd's initiations go unanswered and are retried
/// every 5 s. Its first initiation is captured on the peer's veth, a valid cookie reply for it
/// is made with the wgpmd library and sent from another namespace (another address). wgpmd's
/// endpoint stays the configured one, and it took the cookie: its retry carries a MAC2 (the
/// first had none). Then wireguard-go starts (not under load, it ignores MAC2): the handshake
/// completes and pings pass.
#[test]
fn cookie_reply_from_elsewhere_does_not_move_endpoint() {
    run("cookie_reply_from_elsewhere_does_not_move_endpoint", |ctx| {
        use rand_core::OsRng;
        use wgpmd_proto::cookie::CookieChecker;
        use wgpmd_proto::time::Timestamp;
        use wgpmd_proto::wire::HandshakeInitiation;
        let topo = Topology::new(2)?;
        let (c, p, other) = (&topo.concentrator, &topo.peers[0], &topo.peers[1]);
        let mut dcfg = topo.concentrator_device();
        dcfg.peers.truncate(1);
        dcfg.peers[0].endpoint = Some(p.endpoint());
        let mut pcfg = topo.peer_device(0);
        pcfg.peers[0].endpoint = None; // responder only: the handshake is wgpmd's
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &dcfg, &WgpmdOptions::default())?;
        let key = p.key.public_b64();
        ensure!(entry(&d.show()?, &key, "wgpmd")?.endpoint == Some(p.endpoint()));

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (inits, cap) = capture_initiations(&p.ns, &p.outer_if, c.outer_ip, stop.clone())?;
        let result = (|| -> Result<()> {
            // One packet towards the peer makes wgpmd initiate (after resolving its MAC).
            let _trigger = Proc::spawn(
                ctx,
                &c.ns,
                "ping-trigger",
                &["ping", "-n", "-c", "1", "-W", "1", &p.inner_ip.to_string()],
                &[],
            )?;
            let (t1, first) =
                inits.recv_timeout(secs(10)).context("no initiation from wgpmd captured on the peer's veth")?;
            ensure!(first[132..148] == [0u8; 16], "the first initiation already has a MAC2");
            // The forged reply: keyed by the peer's public key, bound to this initiation's MAC1,
            // addressed to its sender index.
            let sender = u32::from_le_bytes(first[4..8].try_into()?);
            let checker = CookieChecker::new(Timestamp::from_secs(1), &mut OsRng, Some(&p.key.public_bytes()));
            let reply = checker.create_reply(
                Timestamp::from_secs(1),
                &mut OsRng,
                &HandshakeInitiation::new_unchecked(&first[..]),
                SocketAddr::from((other.outer_ip, 40000)),
            );
            ensure!(reply.receiver_index() == sender, "the reply is addressed to the initiation's sender index");
            other.ns.udp_send(c.endpoint(), reply.as_ref())?;
            eprintln!(
                "forged cookie reply sent from {} {:.3} s after the initiation (index {sender:#x})",
                other.outer_ip,
                t1.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(300));
            let e = entry(&d.show()?, &key, "wgpmd")?.endpoint;
            ensure!(
                e == Some(p.endpoint()),
                "wgpmd's endpoint is {e:?} after a cookie reply from {}, want {}",
                other.outer_ip,
                p.endpoint()
            );
            // The retry, 5 s (plus jitter) after the first: it carries the cookie's MAC2.
            let (t2, second) = inits.recv_timeout(secs(10)).context("no retried initiation within 10 s")?;
            eprintln!(
                "retry {:.2} s after the first initiation, MAC2 {:02x?}",
                (t2 - t1).as_secs_f64(),
                &second[132..148]
            );
            ensure!(second[4..8] != first[4..8], "the second capture is the same initiation");
            ensure!(second[132..148] != [0u8; 16], "wgpmd's retry has no MAC2: it did not take the forged cookie");
            let st = d.stats()?;
            ensure!(st.total("drop.InvalidCookie")? == 0, "wgpmd rejected the cookie reply");
            let e = entry(&d.show()?, &key, "wgpmd")?.endpoint;
            ensure!(e == Some(p.endpoint()), "wgpmd's endpoint is {e:?}, want {}", p.endpoint());

            // Now the peer: wgpmd's next retry (with MAC2) completes the handshake.
            let _peer = WgGo::start(ctx, &p.ns, &pcfg)?;
            let t = wait_for_ping(&c.ns, p.inner_ip, secs(20))?;
            eprintln!("tunnel up {:.2} s after wireguard-go started", t.as_secs_f64());
            ping_replied(&p.ns, c.inner_ip, 3)?;
            let later: Vec<Vec<u8>> = inits.try_iter().map(|(_, m)| m).collect();
            ensure!(
                !later.is_empty() && later.iter().all(|m| m[132..148] != [0u8; 16]),
                "wgpmd's later initiations ({}) should all carry MAC2",
                later.len()
            );
            let e = entry(&d.show()?, &key, "wgpmd")?.endpoint;
            ensure!(e == Some(p.endpoint()), "endpoint {e:?} after the handshake");
            d.ensure_running()?;
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        cap.join().map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
        result?;
        d.stop()
    });
}
