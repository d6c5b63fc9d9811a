//! Configuration at scale while an established peer pings every 10 ms: the stock `wg` loads
//! 250,000 peers into a running wgpmd, dumps them and removes half with `syncconf`; then a
//! private-key change with 100,000 peers configured. The workers never wait for configuration
//! (they read a published copy of the tables, `Published` in wgpmd-proto), which
//! `workerN.max_iteration_us_recent` shows.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test scale`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};
use wgpmd_e2e::*;

/// The longest worker iteration allowed while configuration runs. An iteration polls a burst
/// of 32 frames on each port and handles them (tens of microseconds when busy); the bound
/// leaves room for the scheduler of this 2-vCPU machine (a time slice is a few ms) and is far
/// below what the `set` of 100,000 peers takes (hundreds of ms), which a worker waiting for the
/// writer would have spent in one iteration.
const MAX_ITERATION: Duration = Duration::from_millis(50);

/// Runs `wg` in the host namespace (UAPI sockets are shared) with a generous timeout.
fn wg(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("wg");
    cmd.args(args);
    let out = run_cmd(&mut cmd, secs(120))?;
    ensure!(out.status.success(), "wg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The `i`-th filler peer's public key (32 derived bytes: a key is only checked when a
/// handshake uses it) and its /32 in 172.16.0.0/12.
fn filler(i: u32) -> (String, String) {
    let mut k = [0u8; 32];
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151_5151;
    for c in k.chunks_mut(8) {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 32;
        c.copy_from_slice(&x.to_le_bytes());
    }
    k[..4].copy_from_slice(&i.to_le_bytes()); // distinct whatever the mixing does
    (B64.encode(k), format!("172.{}.{}.{}/32", 16 + (i >> 16), (i >> 8) & 255, i & 255))
}

/// A wg.conf of `fillers` (indices) then the real peer of `topo` last.
fn conf(topo: &Topology, key: &KeyPair, fillers: impl Iterator<Item = u32>) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {}\nListenPort = {}\n", key.private_b64(), CONCENTRATOR_PORT);
    for i in fillers {
        let (k, ip) = filler(i);
        let _ = write!(s, "\n[Peer]\nPublicKey = {k}\nAllowedIPs = {ip}\n");
    }
    let p = &topo.peers[0];
    let _ = write!(s, "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n", p.key.public_b64(), p.inner_ip);
    s
}

/// Pings every 10 ms from `ns` in the background; [`Pinger::finish`] stops it and returns
/// (requests sent, replies received) from the namespace's ICMP counters, late replies included.
struct Pinger<'a> {
    ns: &'a Netns,
    proc: Proc,
    out0: u64,
    in0: u64,
}

impl<'a> Pinger<'a> {
    fn start(ctx: &Ctx, ns: &'a Netns, addr: std::net::Ipv4Addr) -> Result<Pinger<'a>> {
        let (out0, in0) = (ns.snmp_counter("Icmp", "OutEchos")?, ns.snmp_counter("Icmp", "InEchoReps")?);
        let a = addr.to_string();
        let proc = Proc::spawn(ctx, ns, "ping", &["ping", "-n", "-q", "-i", "0.01", &a], &[])?;
        Ok(Pinger { ns, proc, out0, in0 })
    }

    fn finish(mut self) -> Result<(u64, u64)> {
        self.proc.ensure_running().context("ping ended early")?;
        self.proc.stop();
        let sent = self.ns.snmp_counter("Icmp", "OutEchos")? - self.out0;
        let mut got = 0;
        let _ = wait_until("late echo replies", secs(3), || {
            got = self.ns.snmp_counter("Icmp", "InEchoReps")? - self.in0;
            Ok((got >= sent).then_some(()))
        });
        Ok((sent, got))
    }
}

/// Samples every worker's `max_iteration_us_recent` (the longest iteration in the last 2–4 s)
/// every 250 ms from a thread, until [`IterationWatch::finish`], which returns the largest
/// value seen per worker.
struct IterationWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<u64>>>,
}

impl IterationWatch {
    fn start(d: &Wgpmd) -> Result<IterationWatch> {
        let (bin, name) = (wgpmd_bin()?, d.ifname().to_string());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<Vec<u64>> {
            let mut max: Vec<u64> = Vec::new();
            loop {
                let last = flag.load(std::sync::atomic::Ordering::SeqCst);
                let out = run_cmd(Command::new(&bin).args(["stats", &name]), secs(30))?;
                let c = Counters::parse(&String::from_utf8_lossy(&out.stdout))?;
                let now = c.per_worker("max_iteration_us_recent")?;
                max.resize(now.len(), 0);
                for (m, n) in max.iter_mut().zip(now) {
                    *m = (*m).max(n);
                }
                if last {
                    return Ok(max);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Ok(IterationWatch { stop, thread })
    }

    fn finish(self) -> Result<Vec<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?
    }
}

/// (a) 250,000 peers by `wg setconf` (the real peer last), its handshake and pings, `wg show
/// dump` of all of them and a `wg syncconf` removing half, while the established peer pings
/// every 10 ms: no ping lost, no worker iteration over [`MAX_ITERATION`].
#[test]
fn quarter_million_peers_by_wg_while_a_peer_pings() {
    run("quarter_million_peers_by_wg_while_a_peer_pings", |ctx| {
        const N: u32 = 250_000;
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let empty = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip)));
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &empty, &WgpmdOptions::default())?;
        let full = ctx.write_file("full.conf", &conf(&topo, &c.key, 0..N))?;
        let t = Instant::now();
        wg(&["setconf", d.ifname(), &full.to_string_lossy()])?;
        let setconf = t.elapsed();
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30)).context("the real peer (the last of 250,001) pings")?;

        // Past the setconf's window.
        std::thread::sleep(Duration::from_secs(4));
        let pinger = Pinger::start(ctx, &p.ns, c.inner_ip)?;
        let watch = IterationWatch::start(&d)?;
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let dump = wg(&["show", d.ifname(), "dump"])?;
        let show = t.elapsed();
        // One line for the interface, one per peer.
        let peers = dump.lines().count() - 1;
        ensure!(peers == N as usize + 1, "wg show dump lists {peers} peers, not {}", N + 1);
        ensure!(dump.contains(&p.key.public_b64()), "the real peer is in the dump");
        drop(dump);
        let half = ctx.write_file("half.conf", &conf(&topo, &c.key, (0..N).filter(|i| i % 2 == 0)))?;
        let t = Instant::now();
        wg(&["syncconf", d.ifname(), &half.to_string_lossy()])?;
        let syncconf = t.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let iters = watch.finish()?;
        let (sent, got) = pinger.finish()?;
        let st = d.stats()?;
        eprintln!(
            "setconf of {} peers {setconf:?}, show dump {show:?}, syncconf to {} {syncconf:?}; pings {got}/{sent}; \
             longest worker iterations {iters:?} µs; peers {}",
            N + 1,
            N / 2 + 1,
            st.get("peers")?
        );
        ensure!(st.get("peers")? == u64::from(N / 2 + 1), "peers after syncconf: {}", st.get("peers")?);
        let show = d.show()?;
        ensure!(show.peer(&p.key.public_b64()).is_some(), "the real peer survived syncconf");
        ensure!(show.peer(&filler(1).0).is_none() && show.peer(&filler(2).0).is_some(), "odd fillers removed");
        ensure!(sent >= 100, "only {sent} pings sent");
        ensure!(got >= sent, "{} of {sent} pings lost during dump and syncconf", sent - got);
        for (w, us) in iters.iter().enumerate() {
            ensure!(
                Duration::from_micros(*us) < MAX_ITERATION,
                "worker {w}: an iteration took {us} µs (bound {MAX_ITERATION:?})"
            );
        }
        wait_for_ping(&p.ns, c.inner_ip, secs(10))?;
        d.stop()
    });
}

/// (b) A private-key change with 100,000 peers configured (`wg syncconf` of the same peers with
/// a new key, then the peer is told the new public key) while the peer pings every 10 ms: no
/// ping is lost (replies that wait for the new handshake are staged, not dropped; the bound
/// allows the pings sent between our key change and the peer learning it), and no worker
/// iteration exceeds [`MAX_ITERATION`].
#[test]
fn key_change_with_100k_peers_while_a_peer_pings() {
    run("key_change_with_100k_peers_while_a_peer_pings", |ctx| {
        const N: u32 = 100_000;
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let empty = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip)));
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &empty, &WgpmdOptions::default())?;
        let before = ctx.write_file("before.conf", &conf(&topo, &c.key, 0..N))?;
        wg(&["setconf", d.ifname(), &before.to_string_lossy()])?;
        let peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let new_key = KeyPair::generate();
        let after = ctx.write_file("after.conf", &conf(&topo, &new_key, 0..N))?;
        // Past the setconf's window.
        std::thread::sleep(Duration::from_secs(4));

        let pinger = Pinger::start(ctx, &p.ns, c.inner_ip)?;
        let watch = IterationWatch::start(&d)?;
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        wg(&["syncconf", d.ifname(), &after.to_string_lossy()])?;
        let changed = Instant::now();
        let (old_pub, new_pub, ep) = (c.key.public_b64(), new_key.public_b64(), c.endpoint().to_string());
        peer.0.wg(&["set", peer.0.ifname(), "peer", &old_pub, "remove"])?;
        peer.0.wg(&["set", peer.0.ifname(), "peer", &new_pub, "endpoint", &ep, "allowed-ips", INNER_NET])?;
        let told = changed.elapsed();
        let syncconf = changed - t;
        wait_for_ping(&p.ns, c.inner_ip, secs(15)).context("pings with the new key")?;
        std::thread::sleep(Duration::from_millis(500));
        let iters = watch.finish()?;
        let (sent, got) = pinger.finish()?;
        ensure!(d.show()?.public_key.as_deref() == Some(new_pub.as_str()), "the key changed");
        // Pings sent while the peer still had our old key may go unanswered (their replies
        // wait for a handshake the peer cannot yet answer): one per 10 ms of that window, and
        // a margin of 5.
        let allowed = told.as_millis() as u64 / 10 + 5;
        eprintln!(
            "syncconf with a new key and {N} peers {syncconf:?}, peer told after {told:?}; pings {got}/{sent} \
             (allowed loss {allowed}); longest worker iterations {iters:?} µs"
        );
        ensure!(sent >= 100, "only {sent} pings sent");
        ensure!(got + allowed >= sent, "{} of {sent} pings lost (allowed {allowed})", sent - got.min(sent));
        for (w, us) in iters.iter().enumerate() {
            ensure!(
                Duration::from_micros(*us) < MAX_ITERATION,
                "worker {w}: an iteration took {us} µs (bound {MAX_ITERATION:?})"
            );
        }
        d.stop()
    });
}
