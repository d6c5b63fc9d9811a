//! Operations: what a service manager and an operator rely on, end to end.
//!
//! - systemd readiness: `READY=1` on `$NOTIFY_SOCKET` only once the TUN and the UAPI socket
//!   exist, `STOPPING=1` on SIGTERM; and, in the same run, the capabilities left after start-up
//!   (none for `af_packet:` + `tun:`, every thread) and `NoNewPrivs`.
//! - SIGHUP re-applies the configuration file with `wg syncconf` semantics (a peer added, then
//!   removed, the live peer's allowed IPs reset to the file's) while a wireguard-go peer pings
//!   with no loss and keeps its session; a broken file changes nothing.
//! - A worker panic (the test hook `WGPMD_TEST_PANIC_WORKER`, feature `test-hooks`) stops the
//!   daemon with a non-zero exit and a log line naming the thread.
//! - `wgpmd run --check` validates without opening a port (it passes as an unprivileged user,
//!   and creates no TUN and no socket) and names what is wrong.
//!
//! Run: `cargo build --release -p wgpmd --features test-hooks && cargo test -p wgpmd-e2e --release --test ops`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wgpmd_e2e::*;

/// One datagram received on the notify socket, and what existed when it arrived.
#[derive(Debug, Clone)]
struct Note {
    text: String,
    uapi_existed: bool,
    tun_existed: bool,
}

/// The capability lines of every thread of `pid` (`/proc/PID/task/*/status`).
fn thread_caps(pid: u32) -> Result<Vec<(String, std::collections::HashMap<String, String>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        let status = std::fs::read_to_string(e.path().join("status"))?;
        let fields = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs" || *k == "Name")
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        out.push((e.file_name().to_string_lossy().into_owned(), fields));
    }
    Ok(out)
}

/// systemd's notify protocol, and least privilege after start-up.
#[test]
fn notify_ready_after_tun_and_uapi_stopping_on_sigterm_and_capabilities_dropped() {
    run("notify_ready_stopping_caps", |ctx| {
        let topo = Topology::new(1)?;
        let c = &topo.concentrator;
        let sock_path = ctx.dir().join("notify.sock");
        let rx = UnixDatagram::bind(&sock_path).context("binding the notify socket")?;
        rx.set_read_timeout(Some(Duration::from_millis(200)))?;
        // The harness chooses the daemon's interface name; the reader learns it from the first
        // UAPI socket whose TUN is in the concentrator's namespace, or from the test once known.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ifname: Arc<Mutex<Option<String>>> = Arc::default();
        let checked: Arc<Mutex<Vec<Note>>> = Arc::default();
        let reader = {
            let (done, ifname, checked, ns) = (done.clone(), ifname.clone(), checked.clone(), c.ns.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(n) = rx.recv(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // What exists the moment the datagram arrives.
                    let name = ifname.lock().unwrap().clone().or_else(|| {
                        std::fs::read_dir(UAPI_DIR).ok()?.flatten().find_map(|e| {
                            let n = e.file_name().to_string_lossy().trim_end_matches(".sock").to_string();
                            (n.starts_with("wpm") && ns.has_link(&n)).then_some(n)
                        })
                    });
                    let (uapi, tun) = match &name {
                        Some(n) => (std::path::Path::new(&format!("{UAPI_DIR}/{n}.sock")).exists(), ns.has_link(n)),
                        None => (false, false),
                    };
                    checked.lock().unwrap().push(Note { text, uapi_existed: uapi, tun_existed: tun });
                }
            })
        };
        let opts = WgpmdOptions {
            env: vec![("NOTIFY_SOCKET".into(), sock_path.to_string_lossy().into_owned())],
            ..WgpmdOptions::default()
        };
        let result = (|| -> Result<()> {
            let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
            *ifname.lock().unwrap() = Some(d.ifname().to_string());
            wait_until("READY=1 on the notify socket", secs(10), || {
                Ok(checked.lock().unwrap().iter().any(|n| n.text.lines().any(|l| l == "READY=1")).then_some(()))
            })?;
            let got = checked.lock().unwrap().clone();
            eprintln!("notifications at start: {got:?}");
            let ready = got.iter().find(|n| n.text.lines().any(|l| l == "READY=1")).unwrap();
            ensure!(
                ready.uapi_existed && ready.tun_existed,
                "READY=1 arrived before the UAPI socket and the TUN existed: {ready:?}"
            );
            ensure!(ready.text.contains("STATUS="), "no STATUS= with READY=1: {:?}", ready.text);

            // Least privilege: every thread, no capability left, no_new_privs.
            let pid = d.proc().pid();
            let threads = thread_caps(pid)?;
            eprintln!("threads of wgpmd {pid}: {threads:?}");
            ensure!(threads.len() >= 3, "expected the main, a worker, the UAPI and stats threads: {threads:?}");
            for (tid, f) in &threads {
                for k in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
                    let v = f.get(k).with_context(|| format!("thread {tid}: no {k}"))?;
                    ensure!(
                        u64::from_str_radix(v, 16)? == 0,
                        "thread {tid} ({:?}): {k} = {v}, documented: none for af_packet + tun",
                        f.get("Name")
                    );
                }
                ensure!(f.get("NoNewPrivs").map(String::as_str) == Some("1"), "thread {tid}: NoNewPrivs {f:?}");
            }
            ensure!(d.log().contains("capabilities kept after setup: none; no_new_privs set"), "no log line");
            // Still works without them: the stock wg reads and writes the configuration.
            let peer = KeyPair::generate().public_b64();
            run_cmd(std::process::Command::new("wg").args(["set", d.ifname(), "peer", &peer]), secs(10))?;
            ensure!(d.show()?.peer(&peer).is_some(), "wg set after the capability drop");

            ensure!(
                !checked.lock().unwrap().iter().any(|n| n.text.contains("STOPPING=1")),
                "STOPPING=1 before SIGTERM"
            );
            d.stop()?;
            wait_until("STOPPING=1 on the notify socket", secs(5), || {
                Ok(checked.lock().unwrap().iter().any(|n| n.text.lines().any(|l| l == "STOPPING=1")).then_some(()))
            })?;
            Ok(())
        })();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = reader.join();
        let _ = std::fs::remove_file(&sock_path);
        eprintln!("all notifications: {:?}", checked.lock().unwrap().iter().map(|n| &n.text).collect::<Vec<_>>());
        result
    });
}

/// SIGHUP: `wg syncconf` of the configuration file, under traffic.
#[test]
fn sighup_reloads_the_file_with_syncconf_semantics_without_loss() {
    run("sighup_reload", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let a = p.key.public_b64();
        let hs0 = d.show()?.peer(&a).context("peer A")?.latest_handshake;
        let sessions0 = d.stats()?.total("sessions")?;
        let ping =
            Proc::spawn(ctx, &p.ns, "ping-a", &["ping", "-n", "-i", "0.2", "-c", "40", &c.inner_ip.to_string()], &[])?;
        std::thread::sleep(Duration::from_millis(600));
        let pid = nix::unistd::Pid::from_raw(d.proc().pid() as i32);
        let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).context("SIGHUP");
        let reloads = |d: &Wgpmd| d.log().matches("reloaded ").count();
        let conf = d.conf_path().to_path_buf();
        let ifn = d.ifname().to_string();

        // A's allowed IPs changed by hand: syncconf resets them to the file's.
        let ia = format!("{}/32", p.inner_ip);
        run_cmd(
            std::process::Command::new("wg").args([
                "set",
                &ifn,
                "peer",
                &a,
                "allowed-ips",
                &format!("{ia},10.100.9.0/24"),
            ]),
            secs(10),
        )?;
        // 1. The file gains peer C (and is made world-readable: wg(8)'s warning).
        let orig = topo.concentrator_device();
        let cpk = KeyPair::generate().public_b64();
        std::fs::write(&conf, orig.clone().peer(PeerConfig::new(&cpk, &["10.100.0.88/32"])).to_setconf())?;
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        hup()?;
        wait_until("the first reload", secs(10), || Ok((reloads(&d) >= 1).then_some(())))?;
        let show = d.show()?;
        ensure!(show.peer(&cpk).is_some(), "SIGHUP did not add peer C: {show:?}");
        let ea = show.peer(&a).context("peer A vanished")?;
        ensure!(ea.allowed_ips == vec![ia.clone()], "A's allowed IPs not reset to the file's: {ea:?}");
        ensure!(d.log().contains("is world accessible"), "no warning for the world-readable key file");
        // 2. A broken file: nothing changes, the daemon keeps running.
        std::fs::write(&conf, "[Interface]\nPrivateKey = nonsense\n")?;
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        hup()?;
        wait_until("the failed reload", secs(10), || Ok(d.log().contains("reload failed").then_some(())))?;
        ensure!(d.show()?.peer(&cpk).is_some() && d.show()?.peers.len() == 2, "a broken file changed peers");
        // 3. The original file again: C is removed, A stays.
        std::fs::write(&conf, orig.to_setconf())?;
        hup()?;
        wait_until("the second reload", secs(10), || Ok((reloads(&d) >= 2).then_some(())))?;
        let show = d.show()?;
        ensure!(show.peer(&cpk).is_none() && show.peers.len() == 1, "SIGHUP did not remove peer C: {show:?}");

        let mut ping = ping;
        ping.wait_timeout(secs(30))?;
        let st = PingStats::parse(&ping.log())?;
        let ea = d.show()?.peer(&a).cloned().context("peer A")?;
        let sessions1 = d.stats()?.total("sessions")?;
        eprintln!(
            "ping during the reloads: {st:?}; handshake {hs0} -> {}; sessions {sessions0} -> {sessions1}",
            ea.latest_handshake
        );
        ensure!(st.transmitted == 40 && st.received == 40, "pings lost across the reloads: {st:?}");
        ensure!(ea.latest_handshake == hs0 && sessions1 == sessions0, "A handshook again: its session was not kept");
        d.ensure_running()?;
        d.stop()
    });
}

/// A worker panic stops the daemon: non-zero exit, the thread named in the log.
#[test]
fn worker_panic_stops_the_daemon_with_an_error() {
    run("worker_panic_stops_the_daemon", |ctx| {
        let version = run_cmd(std::process::Command::new(wgpmd_bin()?).arg("--version"), secs(10))?;
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        ensure!(
            version.contains("test-hooks"),
            "this test needs wgpmd built with --features test-hooks (as scripts/test.sh builds it); `wgpmd --version`: {version}"
        );
        let topo = Topology::new(1)?;
        let c = &topo.concentrator;
        let opts =
            WgpmdOptions { env: vec![("WGPMD_TEST_PANIC_WORKER".into(), "0".into())], ..WgpmdOptions::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        // Running; a packet into the TUN reaches worker 0, which panics.
        d.ensure_running()?;
        let _ = c.ns.exec_timeout(&["ping", "-n", "-c", "2", "-W", "1", &topo.peers[0].inner_ip.to_string()], secs(10));
        let st = d.wait_exit(secs(15))?;
        let log = d.log();
        eprintln!("exit {st}; log tail:\n{}", d.proc().log_tail(6));
        ensure!(!st.success() && st.code().is_some(), "wgpmd exited with {st} after a worker panic");
        ensure!(
            log.contains("thread 'wgpmd-w0' panicked") && log.contains("stopping the daemon"),
            "no log line naming the panicking worker"
        );
        ensure!(log.contains("wgpmd: stopped: thread 'wgpmd-w0' panicked"), "no closing error line");
        ensure!(!std::path::Path::new(&format!("{UAPI_DIR}/{}.sock", d.ifname())).exists(), "UAPI socket left");
        Ok(())
    });
}

/// `wgpmd run --check`: exit 0 for a valid command line without opening anything (as an
/// unprivileged user, which could not open the ports), exit 1 naming the problem otherwise.
#[test]
fn run_check_validates_without_opening_ports() {
    run("run_check", |ctx| {
        let ns = Netns::new("chk")?;
        let wire = VethPair::new(&ns, None, &ns, None)?;
        let key = KeyPair::generate();
        let good = ctx.write_file(
            "good.conf",
            &format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\n", key.private_b64()),
        )?;
        std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let bad = ctx.write_file("bad.conf", "[Interface]\nListenPort 1\n")?;
        std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let name = unique_ifname("wpc");
        let af = format!("af_packet:{}", wire.a_if);
        let (good, bad) = (good.to_string_lossy().into_owned(), bad.to_string_lossy().into_owned());
        let nobody: &[&str] = &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        let base = |port: &str, conf: &str, cores: &str| -> Vec<String> {
            ["run", &name, "--check", "--port", port, "--address", "10.99.0.1/24", "-l", cores, "--config", conf]
                .map(String::from)
                .to_vec()
        };
        let r = wgpmd_run_to_exit(
            &ns,
            nobody,
            &base(&af, &good, "0").iter().map(String::as_str).collect::<Vec<_>>(),
            secs(30),
        )?;
        eprintln!("valid, as nobody: {} -> {}", r.status, r.output.trim());
        ensure!(r.status.code() == Some(0) && r.output.contains("check passed"), "{r:?}");
        ensure!(r.output.contains("is world accessible"), "no wg(8) warning for a 0644 key file: {}", r.output);
        ensure!(!ns.has_link(&name), "--check created the TUN");
        ensure!(!std::path::Path::new(&format!("{UAPI_DIR}/{name}.sock")).exists(), "--check made a UAPI socket");
        let mut cases: Vec<(&str, Vec<String>, &str)> = vec![
            ("a malformed configuration line", base(&af, &bad, "0"), "line 2"),
            ("an unknown backend", base("xdp:eth0", &good, "0"), "unknown backend `xdp`"),
            ("a bad interface in a port", base("af_packet:a/b", &good, "0"), "invalid interface name"),
            ("a core that does not exist", base(&af, &good, "0-63"), "does not exist"),
            ("a bad core list", base(&af, &good, "x"), "list"),
            ("a missing configuration file", base(&af, "/nonexistent/wg.conf", "0"), "/nonexistent/wg.conf"),
        ];
        let mut addr = base(&af, &good, "0");
        addr[6] = "10.99.0.1".into();
        cases.push(("an address without a prefix", addr, "expected ADDRESS/PREFIX"));
        let mut eal = base(&af, &good, "0");
        eal.extend(["--".into(), "--no-huge".into()]);
        cases.push(("EAL arguments without a dpdk: port", eal, "are for a dpdk: port"));
        let mut badname = base(&af, &good, "0");
        badname[1] = "a:b".into();
        cases.push(("a bad interface name", badname, "interface `a:b`"));
        for (what, args, want) in cases {
            let r = wgpmd_run_to_exit(&ns, &[], &args.iter().map(String::as_str).collect::<Vec<_>>(), secs(30))?;
            eprintln!("{what}: {} -> {}", r.status, r.output.trim());
            ensure!(r.status.code() == Some(1), "{what}: exit {} (want 1): {}", r.status, r.output);
            ensure!(
                r.output.contains("check failed") && r.output.contains(want),
                "{what}: {:?} lacks {want:?}",
                r.output
            );
        }
        ensure!(!ns.has_link(&name), "a --check created the TUN");
        Ok(())
    });
}
