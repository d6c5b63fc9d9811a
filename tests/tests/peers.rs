//! The harness proven with real third-party peers (no wgpmd yet). These are the templates for the
//! wgpmd tests: replace the concentrator's stand-in with wgpmd and keep the rest.
//!
//! Run: `cargo test -p wgpmd-e2e --release --test peers` (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};
use wgpmd_e2e::*;

const PING_COUNT: u32 = 5;

/// Pings `count` times and requires every reply.
fn ping_all(ns: &Netns, addr: Ipv4Addr) -> Result<PingStats> {
    let st = ping(ns, addr, PING_COUNT)?;
    ensure!(st.received == st.transmitted && st.transmitted == PING_COUNT, "ping {addr} from {ns}: {st:?}");
    Ok(st)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// wireguard-go <-> wireguard-go over a plain veth between two namespaces: handshake, ping both
/// ways, 3 s of iperf3, and `wg show` counters that agree across the tunnel.
#[test]
fn wggo_to_wggo() {
    run("wggo_to_wggo", |ctx| {
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        let _wire = VethPair::new(&a, Some("10.99.0.1/24"), &b, Some("10.99.0.2/24"))?;
        let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
        let (ia, ib): (Ipv4Addr, Ipv4Addr) = ("10.100.0.1".parse()?, "10.100.0.2".parse()?);

        // The responder first: an initiation to a peer not yet configured is retried only after
        // REKEY_TIMEOUT (5 s).
        let wg_b = WgGo::start(
            ctx,
            &b,
            &DeviceConfig::new(kb.clone(), Some(51820), Some("10.100.0.2/24"))
                .peer(PeerConfig::new(&ka.public_b64(), &["10.100.0.1/32"]).endpoint("10.99.0.1:51820".parse()?)),
        )?;
        let wg_a = WgGo::start(
            ctx,
            &a,
            &DeviceConfig::new(ka.clone(), Some(51820), Some("10.100.0.1/24"))
                .peer(PeerConfig::new(&kb.public_b64(), &["10.100.0.2/32"]).endpoint("10.99.0.2:51820".parse()?)),
        )?;

        let t = wait_for_ping(&a, ib, secs(30))?;
        eprintln!("first reply through the tunnel after {:.2} s", t.as_secs_f64());
        let st = ping_all(&a, ib)?;
        ping_all(&b, ia)?;
        eprintln!("ping a->b {st:?}");

        let bps = iperf3(&a, &b, ib, 3, false)?;
        eprintln!("iperf3 a->b over wireguard-go: {:.0} Mbit/s", bps / 1e6);
        ensure!(bps > 1e6, "iperf3 a->b only {bps} bit/s");

        // Both dumps back to back, so that no keepalive slips in between.
        let (show_a, show_b) = (wg_a.show()?, wg_b.show()?);
        eprintln!("wg show a: {show_a:?}\nwg show b: {show_b:?}");
        ensure!(show_a.public_key.as_deref() == Some(ka.public_b64().as_str()), "a's public key");
        ensure!(show_a.listen_port == Some(51820), "a's listen port");
        let pa = show_a.peer(&kb.public_b64()).context("a has no peer b")?;
        let pb = show_b.peer(&ka.public_b64()).context("b has no peer a")?;
        let now = unix_now();
        for (who, p, ep) in [("a", pa, "10.99.0.2:51820"), ("b", pb, "10.99.0.1:51820")] {
            ensure!(p.latest_handshake > 0, "{who}: no handshake: {p:?}");
            ensure!(
                now.abs_diff(p.latest_handshake) < 300,
                "{who}: handshake time {} vs now {now}",
                p.latest_handshake
            );
            ensure!(p.endpoint == Some(ep.parse()?), "{who}: endpoint {:?}", p.endpoint);
        }
        // iperf3 alone moved megabytes a->b. Under iperf3 the receiving kernel drops UDP
        // datagrams when wireguard-go falls behind, so here rx is only bounded by tx.
        ensure!(pa.tx_bytes > 1_000_000 && pb.rx_bytes > 1_000_000, "a tx {} b rx {}", pa.tx_bytes, pb.rx_bytes);
        for (dir, tx, rx) in [("a->b", pa.tx_bytes, pb.rx_bytes), ("b->a", pb.tx_bytes, pa.rx_bytes)] {
            ensure!(rx <= tx, "{dir}: received {rx} > sent {tx}");
            ensure!(rx as f64 >= 0.5 * tx as f64, "{dir}: sent {tx}, received only {rx}");
        }
        // At a low rate nothing is dropped: what A sends B receives, byte for byte. 10 pings of
        // 84 bytes are 10 data messages of 128 bytes each way (wireguard-go pads to 16).
        let before = (wg_a.show()?, wg_b.show()?);
        ping_all(&a, ib)?;
        ping_all(&a, ib)?;
        let after = (wg_a.show()?, wg_b.show()?);
        let delta = |s0: &WgShow, s1: &WgShow, k: &KeyPair| -> Result<(u64, u64)> {
            let (p0, p1) = (s0.peer(&k.public_b64()).context("peer")?, s1.peer(&k.public_b64()).context("peer")?);
            Ok((p1.tx_bytes - p0.tx_bytes, p1.rx_bytes - p0.rx_bytes))
        };
        let (a_tx, a_rx) = delta(&before.0, &after.0, &kb)?;
        let (b_tx, b_rx) = delta(&before.1, &after.1, &ka)?;
        eprintln!("10 pings: a tx {a_tx} rx {a_rx}, b tx {b_tx} rx {b_rx}");
        // Tolerance: one 32-byte keepalive in flight at a snapshot.
        ensure!(
            a_tx.abs_diff(b_rx) <= 32 && b_tx.abs_diff(a_rx) <= 32,
            "counters disagree: a tx {a_tx} rx {a_rx}, b tx {b_tx} rx {b_rx}"
        );
        ensure!(a_tx >= 10 * 128 && b_tx >= 10 * 128, "too few bytes for 10 pings: a tx {a_tx}, b tx {b_tx}");
        Ok(())
    });
}

/// wireguard-go (peer) <-> boringtun-cli (concentrator stand-in) on the standard topology:
/// the peer initiates, the concentrator learns its endpoint, ping both ways.
#[test]
fn wggo_to_boringtun() {
    run("wggo_to_boringtun", |ctx| {
        let topo = Topology::new(1)?;
        let conc = BoringtunPeer::start(ctx, &topo.concentrator.ns, &topo.concentrator_device())?;
        let peer = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
        let (pns, cns) = (&topo.peers[0].ns, &topo.concentrator.ns);

        wait_for_ping(pns, topo.concentrator.inner_ip, secs(30))?;
        ping_all(pns, topo.concentrator.inner_ip)?;
        ping_all(cns, topo.peers[0].inner_ip)?;

        let sp = peer.show()?;
        let p = sp.peer(&topo.concentrator.key.public_b64()).context("peer lacks the concentrator")?;
        ensure!(p.latest_handshake > 0 && p.rx_bytes > 0 && p.tx_bytes > 0, "wg-go side: {p:?}");
        // boringtun reports no interface keys and the handshake age, not a Unix time.
        let sc = conc.show()?;
        let c = sc.peer(&topo.peers[0].key.public_b64()).context("concentrator lacks the peer")?;
        ensure!(c.latest_handshake > 0 && c.rx_bytes > 0 && c.tx_bytes > 0, "boringtun side: {c:?}");
        ensure!(c.endpoint == Some(topo.peers[0].endpoint()), "boringtun learnt endpoint {:?}", c.endpoint);
        Ok(())
    });
}

/// The concentrator template: two peers of different implementations behind one concentrator
/// (wireguard-go here, wgpmd later), which learns their endpoints and routes peer to peer.
#[test]
fn star_through_concentrator() {
    run("star_through_concentrator", |ctx| {
        let topo = Topology::new(2)?;
        topo.enable_forwarding()?;
        let conc = WgGo::start(ctx, &topo.concentrator.ns, &topo.concentrator_device())?;
        let _p0 = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
        let _p1 = BoringtunPeer::start(ctx, &topo.peers[1].ns, &topo.peer_device(1))?;

        for p in &topo.peers {
            wait_for_ping(&p.ns, topo.concentrator.inner_ip, secs(30))?;
        }
        ping_all(&topo.peers[0].ns, topo.peers[1].inner_ip)?;
        ping_all(&topo.peers[1].ns, topo.peers[0].inner_ip)?;

        let show = conc.show()?;
        ensure!(show.peers.len() == 2, "{show:?}");
        for p in &topo.peers {
            let e = show.peer(&p.key.public_b64()).context("concentrator lacks a peer")?;
            ensure!(e.endpoint == Some(p.endpoint()), "learnt endpoint {:?}, want {}", e.endpoint, p.endpoint());
            ensure!(e.allowed_ips == vec![format!("{}/32", p.inner_ip)], "{e:?}");
            ensure!(e.latest_handshake > 0 && e.rx_bytes > 0, "{e:?}");
        }
        Ok(())
    });
}

/// Guards clean up: after they drop, no namespace, link, UAPI socket or process is left,
/// including a process that daemonised inside a namespace.
#[test]
fn guards_clean_up() {
    run("guards_clean_up", |ctx| {
        let (ns_names, sock, pids) = {
            let topo = Topology::new(1)?;
            let dev = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
            let sleeper = Proc::spawn(ctx, &topo.concentrator.ns, "sleeper", &["sleep", "1000"], &[])?;
            // A daemon: the shell exits at once, its child is reparented away from us.
            let out = topo.concentrator.ns.run(&["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])?;
            let orphan: u32 = out.trim().parse()?;
            let names: Vec<String> =
                [&topo.lan, &topo.concentrator.ns, &topo.peers[0].ns].iter().map(|n| n.name().to_string()).collect();
            let listed = std::process::Command::new("ip").args(["netns", "list"]).output()?;
            let listed = String::from_utf8_lossy(&listed.stdout);
            ensure!(names.iter().all(|n| listed.contains(n.as_str())), "namespaces not listed");
            ensure!(dev.uapi_socket().exists(), "no socket");
            (names, dev.uapi_socket(), vec![dev.proc().pid(), sleeper.pid(), orphan])
        };
        let listed = std::process::Command::new("ip").args(["netns", "list"]).output()?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        for n in &ns_names {
            ensure!(!listed.contains(n.as_str()), "namespace {n} left behind");
        }
        ensure!(!sock.exists(), "UAPI socket {} left behind", sock.display());
        wait_until("the processes to disappear", secs(10), || {
            Ok(pids.iter().all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).then_some(()))
        })
        .with_context(|| format!("processes left: {pids:?}"))?;
        Ok(())
    });
}

/// A failing test keeps its directory, with the daemons' logs, and says where.
#[test]
fn failure_keeps_logs() {
    let dir = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run("deliberate_failure", |ctx| {
            *dir.lock().unwrap() = Some(ctx.dir().to_path_buf());
            let ns = Netns::new("fail")?;
            let mut p = Proc::spawn(ctx, &ns, "echoer", &["sh", "-c", "echo marker-in-log; exec sleep 1000"], &[])?;
            wait_until("the marker", secs(10), || Ok(p.log().contains("marker-in-log").then_some(())))?;
            p.ensure_running()?;
            anyhow::bail!("deliberate failure")
        })
    }));
    let msg = r.expect_err("run must panic when the body fails");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("deliberate failure"), "{msg}");
    let dir = dir.lock().unwrap().clone().expect("body ran");
    let log = std::fs::read_to_string(dir.join("echoer.log")).expect("log kept");
    assert!(log.contains("marker-in-log"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Our Rust key derivation agrees with `wg pubkey`.
#[test]
fn keys_agree_with_wg_pubkey() {
    use std::io::Write;
    let k = KeyPair::generate();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wg (wireguard-tools; scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(k.private_b64().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), k.public_b64());
    assert_eq!(public_key_b64(&k.private_b64()).unwrap(), k.public_b64());
}
