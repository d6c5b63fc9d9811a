//! Faults injected while traffic flows, against real peers (wireguard-go, boringtun-cli): the
//! WAN link goes down and up, the TUN is deleted from outside, wgpmd is killed with SIGKILL and
//! restarted under the same name and configuration, a UAPI client cuts its request short or
//! hangs, stats clients connect and never read, and the memory for a buffer pool cannot be had at
//! start-up. docs/TESTING.md ("Fault injection") says what each proves; docs/OPERATIONS.md the
//! behaviour an operator sees.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test faults --
//! --test-threads=1` (as root).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};
use wgpmd_e2e::*;

/// wgpmd (concentrator, endpoints of its peers configured) and one wireguard-go peer; waits for
/// the first ping through the tunnel.
fn established(ctx: &Ctx, topo: &Topology, opts: &WgpmdOptions) -> Result<(Wgpmd, WgGo)> {
    let (c, p) = (&topo.concentrator, &topo.peers[0]);
    let d = Wgpmd::start_concentrator(ctx, topo, &topo.concentrator_device(), opts)?;
    let peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
    wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
    Ok((d, peer))
}

/// A background `ping -i 0.2 -c count` from `ns` to `addr`.
fn pinger(ctx: &Ctx, ns: &Netns, name: &str, addr: impl ToString, count: u32) -> Result<Proc> {
    Proc::spawn(
        ctx,
        ns,
        name,
        &["ping", "-n", "-i", "0.2", "-W", "2", "-c", &count.to_string(), &addr.to_string()],
        &[],
    )
}

fn ping_done(p: &mut Proc) -> Result<PingStats> {
    p.wait_timeout(secs(60))?;
    PingStats::parse(&p.log())
}

/// (1) The WAN link (the concentrator's veth) goes down for 3 s and comes back while the peer
/// pings: wgpmd reports the link down (log, `wan_link_up=0`) and up again, keeps running, and
/// traffic resumes within a few seconds of the link coming back, without a new handshake being
/// needed (the session survives).
#[test]
fn wan_link_down_and_up_while_traffic_flows() {
    run("wan_link_down_and_up_while_traffic_flows", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, _peer) = established(ctx, &topo, &WgpmdOptions::default())?;
        let sessions0 = d.stats()?.total("sessions")?;
        let mut ping = pinger(ctx, &p.ns, "ping-during", c.inner_ip, 60)?;
        wait_until("pings flowing", secs(10), || Ok(ping.log().contains("icmp_seq=3").then_some(())))?;
        let down_at = Instant::now();
        c.ns.ip(&["link", "set", "dev", &c.outer_if, "down"])?;
        d.wait_stats("wan_link_up=0", |s| Ok(s.get("wan_link_up")? == 0))?;
        std::thread::sleep(Duration::from_secs(3)); // the outage itself
        let outage = down_at.elapsed();
        c.ns.ip(&["link", "set", "dev", &c.outer_if, "up"])?;
        d.wait_stats("wan_link_up=1", |s| Ok(s.get("wan_link_up")? == 1))?;
        let back = wait_for_ping(&p.ns, c.inner_ip, secs(20))?;
        eprintln!(
            "link down for {:.1} s; up again: traffic back after {:.2} s",
            outage.as_secs_f64(),
            back.as_secs_f64()
        );
        ensure!(back < secs(10), "traffic came back only {:.1} s after the link", back.as_secs_f64());
        let st = ping_done(&mut ping)?;
        eprintln!("ping across the outage: {st:?}");
        ensure!(st.received >= 30, "too few replies across a 3 s outage of a 12 s run: {st:?}");
        ensure!(st.received < st.transmitted, "no loss during the outage: was the link really down? {st:?}");
        let log = d.log();
        ensure!(log.contains("is DOWN") && log.contains("is up again"), "the link transitions are not logged");
        ping_replied(&c.ns, p.inner_ip, 3)?;
        let sessions1 = d.stats()?.total("sessions")?;
        eprintln!("sessions {sessions0} -> {sessions1}");
        ensure!(sessions1 == sessions0, "a new handshake was needed after the outage");
        d.ensure_running()?;
        d.stop()
    });
}

/// (2) The TUN deleted from outside (`ip link del`) while traffic flows: wgpmd does not run on
/// without its inner side; it stops within a second or two with exit status 1 and a message
/// naming the interface, removing its UAPI and stats sockets. Started again (what a supervisor
/// does), it recreates the TUN and traffic resumes.
#[test]
fn tun_deleted_from_outside_stops_wgpmd() {
    run("tun_deleted_from_outside_stops_wgpmd", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, _peer) = established(ctx, &topo, &WgpmdOptions::default())?;
        let _ping = pinger(ctx, &p.ns, "ping-during", c.inner_ip, 100)?;
        let name = d.ifname().to_string();
        let t0 = Instant::now();
        c.ns.ip(&["link", "del", "dev", &name])?;
        let status = d.proc_mut().wait_timeout(secs(15)).context("wgpmd still runs without its TUN")?;
        let took = t0.elapsed();
        let log = d.log();
        eprintln!("wgpmd exited {status} {:.2} s after the TUN was deleted", took.as_secs_f64());
        ensure!(status.code() == Some(1), "exit status {status}, want 1");
        ensure!(log.contains(&format!("TUN interface {name} was deleted from outside")), "no clear message:\n{log}");
        for s in [d.uapi_socket(), d.stats_socket()] {
            ensure!(!s.exists(), "{} left behind", s.display());
        }
        // A supervisor's restart: same name, same configuration.
        let opts = WgpmdOptions { name: Some(name.clone()), ..Default::default() };
        let mut d2 = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        eprintln!("restarted: traffic back after {:.2} s", t.as_secs_f64());
        d2.ensure_running()?;
        drop(d);
        d2.stop()
    });
}

/// `kill -KILL pid`.
fn sigkill(pid: u32) -> Result<()> {
    let out = run_cmd(Command::new("kill").args(["-KILL", &pid.to_string()]), secs(5))?;
    ensure!(out.status.success(), "kill -KILL {pid}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// (3) wgpmd killed with SIGKILL while two peers (wireguard-go and boringtun) ping through it,
/// then started again under the same name and configuration (endpoints of the peers known, as
/// a concentrator that dials out has them): the kernel removes the TUN with the process; the
/// UAPI and stats socket files stay (nobody could remove them) and the new daemon takes them
/// over (the stale UAPI socket refuses connections, so it is replaced). Traffic from every peer
/// is back within REKEY_TIMEOUT + jitter (5.33 s) of the restart: wgpmd initiates at the first
/// packet to each peer. After the final clean stop nothing is left.
#[test]
fn sigkill_and_restart_restores_traffic() {
    run("sigkill_and_restart_restores_traffic", |ctx| {
        let topo = Topology::new(2)?;
        let c = &topo.concentrator;
        let mut cfg = topo.concentrator_device();
        for (i, p) in topo.peers.iter().enumerate() {
            cfg.peers[i].endpoint = Some(p.endpoint());
        }
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &cfg, &WgpmdOptions::default())?;
        let _go = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
        let _bt = BoringtunPeer::start(ctx, &topo.peers[1].ns, &topo.peer_device(1))?;
        for p in &topo.peers {
            wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        }
        let _pings: Vec<Proc> = topo
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| pinger(ctx, &p.ns, &format!("ping-peer{i}"), c.inner_ip, 150))
            .collect::<Result<_>>()?;
        let name = d.ifname().to_string();
        sigkill(d.proc().pid())?;
        let status = d.proc_mut().wait_timeout(secs(10))?;
        ensure!(status.code().is_none(), "wgpmd was not killed by the signal: {status}");
        wait_until("the TUN gone with the killed process", secs(5), || Ok((!c.ns.has_link(&name)).then_some(())))?;
        let stale: Vec<String> = [d.uapi_socket(), d.stats_socket()]
            .iter()
            .filter(|s| s.exists())
            .map(|s| s.display().to_string())
            .collect();
        eprintln!("after SIGKILL: TUN gone; socket files left: {stale:?}");

        let t0 = Instant::now();
        let opts = WgpmdOptions { name: Some(name), ..Default::default() };
        let mut d2 = Wgpmd::start_concentrator(ctx, &topo, &cfg, &opts)?;
        let started = t0.elapsed();
        let mut back = Vec::new();
        for p in &topo.peers {
            // Traffic from us to the peer: wgpmd stages it and initiates at once.
            let t = wait_for_ping(&c.ns, p.inner_ip, secs(30))?;
            back.push(t0.elapsed());
            eprintln!(
                "peer {}: traffic back {:.2} s after the restart began ({:.2} s of pinging)",
                p.inner_ip,
                t0.elapsed().as_secs_f64(),
                t.as_secs_f64()
            );
            ping_replied(&p.ns, c.inner_ip, 3)?;
        }
        let worst = back.iter().max().copied().unwrap_or_default();
        eprintln!(
            "restart: sockets and TUN ready after {:.2} s; every peer's traffic back within {:.2} s",
            started.as_secs_f64(),
            worst.as_secs_f64()
        );
        ensure!(
            worst < started + Duration::from_millis(5_333) + Duration::from_secs(1),
            "traffic came back only after {:.2} s (REKEY_TIMEOUT + jitter is 5.33 s)",
            worst.as_secs_f64()
        );
        d2.ensure_running()?;
        drop(d);
        d2.stop()
    });
}

/// The `wg show` dump without the handshake times and counters (what a UAPI request may change).
fn config_of(d: &Wgpmd) -> Result<String> {
    d.showconf()
}

/// (4) UAPI clients that go wrong, while the peer pings: (a) a request cut inside a line (the
/// client disconnects after half a key) changes nothing and is answered with an error; (b) a
/// client that sends half a request and hangs changes nothing, blocks other UAPI clients for at
/// most the connection deadline (10 s) and never the traffic or the stats socket; (c) a request
/// cut at a line boundary is applied as it stands, as wireguard-go applies what came before EOF.
#[test]
fn uapi_client_cut_short_or_hanging() {
    run("uapi_client_cut_short_or_hanging", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, _peer) = established(ctx, &topo, &WgpmdOptions::default())?;
        let before = config_of(&d)?;
        let mut ping = pinger(ctx, &p.ns, "ping-during", c.inner_ip, 100)?;
        let new_key: String = KeyPair::generate().public_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let sock = d.uapi_socket();

        // (a) Cut inside a line.
        let mut s = UnixStream::connect(&sock)?;
        s.write_all(
            format!("set=1\npublic_key={new_key}\nallowed_ip=10.100.0.99/32\npublic_key={}", &new_key[..20]).as_bytes(),
        )?;
        s.shutdown(std::net::Shutdown::Write)?;
        s.set_read_timeout(Some(secs(15)))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(answer.starts_with("errno=-22"), "a request cut inside a key was answered {answer:?}");
        ensure!(config_of(&d)? == before, "a request cut inside a line changed the configuration");

        // (b) Half a request, then the client hangs.
        let mut hung = UnixStream::connect(&sock)?;
        hung.write_all(format!("set=1\npublic_key={new_key}\n").as_bytes())?;
        let t0 = Instant::now();
        // Traffic and counters go on meanwhile.
        ping_replied(&p.ns, c.inner_ip, 5)?;
        d.stats()?;
        // Another UAPI client waits for the deadline, then is served.
        let show = d.show()?;
        let waited = t0.elapsed();
        eprintln!("a UAPI client behind a hung one was served after {:.2} s", waited.as_secs_f64());
        ensure!(waited < secs(20), "served only after {:.1} s", waited.as_secs_f64());
        ensure!(show.peers.len() == 1, "{show:?}");
        drop(hung); // after its deadline: nothing may be applied now
        std::thread::sleep(Duration::from_millis(300));
        ensure!(config_of(&d)? == before, "a hung request changed the configuration");

        // (c) Cut at a line boundary: taken as it stands.
        let mut s = UnixStream::connect(&sock)?;
        s.write_all(format!("set=1\npublic_key={new_key}\nallowed_ip=10.100.0.99/32\n").as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(answer == "errno=0\n\n", "{answer:?}");
        ensure!(d.show()?.peers.len() == 2, "the complete lines were not applied");

        let st = ping_done(&mut ping)?;
        eprintln!("ping during the UAPI faults: {st:?}");
        ensure!(st.received + 2 >= st.transmitted, "traffic suffered from UAPI clients: {st:?}");
        d.ensure_running()?;
        d.stop()
    });
}

/// (5) Stats clients that connect and never read (50 of them, held open), while the peer pings:
/// `wgpmd stats` still answers at once, traffic and the UAPI go on.
#[test]
fn stats_clients_that_hang_do_not_block() {
    run("stats_clients_that_hang_do_not_block", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let (mut d, _peer) = established(ctx, &topo, &WgpmdOptions::default())?;
        let mut ping = pinger(ctx, &p.ns, "ping-during", c.inner_ip, 30)?;
        let hung: Vec<UnixStream> = (0..50).map(|_| UnixStream::connect(d.stats_socket())).collect::<Result<_, _>>()?;
        let t0 = Instant::now();
        let s = d.stats()?;
        let took = t0.elapsed();
        eprintln!("wgpmd stats with 50 silent clients connected: {:.3} s", took.as_secs_f64());
        ensure!(took < secs(5), "stats took {:.1} s", took.as_secs_f64());
        ensure!(s.total("sessions")? >= 1);
        ensure!(d.show()?.peers.len() == 1);
        ping_replied(&p.ns, c.inner_ip, 3)?;
        let st = ping_done(&mut ping)?;
        ensure!(st.received + 1 >= st.transmitted, "traffic suffered: {st:?}");
        drop(hung);
        d.ensure_running()?;
        d.stop()
    });
}

/// (6) The memory for a buffer pool cannot be had at start-up (an address-space limit,
/// `prlimit --as`, with one malloc arena): wgpmd exits 1 with a clear error naming the pool —
/// not a panic, a hang or a half-started daemon. A search finds the limit below which wgpmd
/// cannot start; from there down, 4 MiB at a time, some limit stops a buffer pool. Any other
/// outcome on the way must be a clean exit 1, or the abort Rust makes when the heap itself is
/// exhausted ("memory allocation of N bytes failed": a few bytes of heap, not a pool, are
/// missing), never a panic. Nothing is left behind.
#[test]
fn pool_memory_unavailable_at_startup() {
    run("pool_memory_unavailable_at_startup", |ctx| {
        let topo = Topology::new(1)?;
        let c = &topo.concentrator;
        c.ns.ip(&["addr", "flush", "dev", &c.outer_if])?;
        let conf = ctx.write_file("pool.conf", &topo.concentrator_device().to_setconf())?;
        let conf = conf.to_string_lossy().into_owned();
        let port = format!("af_packet:{}", c.outer_if);
        let addr = format!("{}/24", c.outer_ip);
        let try_limit = |mib: u64| -> Result<Option<FailedRun>> {
            let name = unique_ifname("wpl");
            let limit = format!("--as={}", mib << 20);
            let args = ["run", "--name", &name, "--config", &conf, "--port", &port, "--address", &addr, "-l", "0"];
            let wrapper = ["prlimit", &limit, "--", "env", "MALLOC_ARENA_MAX=1"];
            // A start that succeeds ends at its READY=1, not at a time-out.
            let r = wgpmd_start_or_exit(&c.ns, ctx.dir(), &wrapper, &args, secs(20))?;
            for s in [format!("{UAPI_DIR}/{name}.sock"), format!("{STATS_DIR}/{name}.sock")] {
                let _ = std::fs::remove_file(&s);
            }
            match r {
                Some(f) => {
                    ensure!(!c.ns.has_link(&name), "TUN {name} left behind at {mib} MiB");
                    let heap = f.output.contains("memory allocation of");
                    ensure!(
                        !f.output.contains("panicked") && (f.status.code() == Some(1) || heap),
                        "at {mib} MiB: status {}, output:\n{}",
                        f.status,
                        f.output
                    );
                    Ok(Some(f))
                }
                None => Ok(None), // started (and was killed)
            }
        };
        // Binary search for the smallest limit that starts, in MiB.
        let (mut lo, mut hi) = (16u64, 4096u64);
        ensure!(try_limit(hi)?.is_none(), "wgpmd does not start even with {hi} MiB of address space");
        while hi - lo > 2 {
            let mid = (lo + hi) / 2;
            match try_limit(mid)? {
                Some(_) => lo = mid,
                None => hi = mid,
            }
        }
        eprintln!("wgpmd starts with {hi} MiB of address space, not with {lo}");
        // Down from the edge, 4 MiB at a time, until a pool is what fails.
        let mut pool_error = None;
        for k in 0..24 {
            let mib = lo.saturating_sub(4 * k);
            let Some(f) = try_limit(mib)? else { continue };
            let line = f
                .output
                .lines()
                .find(|l| l.starts_with("wgpmd: ") || l.contains("memory allocation of"))
                .unwrap_or("")
                .to_string();
            eprintln!("{mib} MiB: {} {line}", f.status);
            if f.output.contains("buffer pool") {
                ensure!(f.status.code() == Some(1), "{mib} MiB: {}", f.status);
                pool_error = Some(line);
                break;
            }
        }
        let line = pool_error.context("no limit made a buffer pool fail")?;
        ensure!(
            line.starts_with("wgpmd: buffer pool: pool ") && line.contains("Cannot allocate memory"),
            "not a clear error: {line:?}"
        );
        Ok(())
    });
}
