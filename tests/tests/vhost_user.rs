//! `--inner vhost-user:PATH`: wgpmd as the vhost-user backend of DPDK's testpmd
//! (`net_virtio_user`, the frontend), a wireguard-go peer on the WAN (`af_packet:`).
//!
//! testpmd's `txonly` frames (UDP to the peer's inner address) are sealed and reach the peer;
//! UDP from the peer to an address routed into the tunnel reaches testpmd (`rxonly`); the
//! packet counts at the vhost-user boundary agree exactly on both sides; testpmd quits (the
//! frontend disconnects: packets for it are counted and dropped) and a new testpmd connects
//! and traffic resumes both ways.
//!
//! Two queue pairs (two workers, testpmd `queues=2`): each worker serves its own pair, and both
//! pairs carry traffic both ways.
//!
//! Client mode (`vhost-user:PATH,client`): testpmd listens (`server=1`) and wgpmd connects,
//! retrying while testpmd is absent; testpmd quits and a new one listens, wgpmd connects again
//! and traffic resumes both ways.
//!
//! testpmd needs shareable memory: hugepages (the test reserves 2 MiB pages and mounts a
//! private hugetlbfs, restored afterwards) and `--single-file-segments`.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test vhost_user
//! -- --test-threads=1` (as root; needs dpdk-testpmd from the Debian package dpdk-dev).

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wgpmd_e2e::*;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A private hugetlbfs mount and `pages` more 2 MiB pages reserved; dropping it removes the
/// map files left in the mount, unmounts, removes the directory and restores `nr_hugepages`.
struct Hugepages {
    dir: PathBuf,
    before: u64,
    mounted: bool,
}

impl Hugepages {
    fn reserve(pages: u64) -> Result<Hugepages> {
        let before: u64 = std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
        let dir = PathBuf::from(format!("/tmp/wgpmd-e2e-vhu-huge-{}", std::process::id()));
        let mut h = Hugepages { dir: dir.clone(), before, mounted: false };
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string())?;
        let now: u64 = std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
        ensure!(now >= before + pages, "asked for {} hugepages, the kernel gave {now}", before + pages);
        std::fs::create_dir_all(&dir)?;
        let o = run_cmd(
            std::process::Command::new("mount").args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"]).arg(&dir),
            secs(10),
        )?;
        ensure!(o.status.success(), "mount hugetlbfs: {}", String::from_utf8_lossy(&o.stderr));
        h.mounted = true;
        Ok(h)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

/// testpmd in interactive mode, its commands written to a FIFO, its output in its log.
struct Testpmd {
    proc: Proc,
    cmds: std::fs::File,
    prefix: String,
}

/// testpmd's port counters.
#[derive(Debug, Clone, Copy, Default)]
struct PortStats {
    rx: u64,
    tx: u64,
}

impl Testpmd {
    /// `server`: testpmd listens on `sock` (`server=1`) and wgpmd connects (`vhost-user:PATH,client`).
    /// `queues`: queue pairs (testpmd's `--rxq`/`--txq` too).
    fn start(
        ctx: &Ctx,
        ns: &Netns,
        name: &str,
        sock: &str,
        server: bool,
        queues: u32,
        huge: &Hugepages,
    ) -> Result<Testpmd> {
        // stdbuf: testpmd writes its statistics through stdio, fully buffered into a file.
        // Outside the test directory: a failing test prints every file there, and reading a
        // FIFO would block.
        let fifo = std::env::temp_dir().join(format!("wgpmd-e2e-{name}-{}.cmds", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let o = std::process::Command::new("mkfifo").arg(&fifo).output()?;
        ensure!(o.status.success(), "mkfifo: {}", String::from_utf8_lossy(&o.stderr));
        let prefix = format!("wgpmd-e2e-vhu-{name}-{}", std::process::id());
        let cmd = format!(
            "exec stdbuf -oL -eL dpdk-testpmd -l 0-1 --no-pci --no-telemetry --file-prefix {prefix} --single-file-segments \
             -m 128 --huge-dir {} --vdev net_virtio_user0,path={sock},queues={queues}{} -- -i --total-num-mbufs=2048 \
             --rxq={queues} --txq={queues} --tx-ip=10.100.0.1,10.100.0.10 < {}",
            huge.dir.display(),
            if server { ",server=1" } else { "" },
            fifo.display()
        );
        let proc = Proc::spawn(ctx, ns, name, &["sh", "-c", &cmd], &[])?;
        // Blocks until the shell opens the FIFO for reading.
        let cmds = std::fs::OpenOptions::new().write(true).open(&fifo).context("open testpmd's command FIFO")?;
        let _ = std::fs::remove_file(&fifo);
        let mut t = Testpmd { proc, cmds, prefix };
        wait_until(&format!("{name}: port 0 up"), secs(60), || {
            t.proc.ensure_running()?;
            let log = t.proc.log();
            if log.contains("Not all ports were started") || log.contains("No probed ethernet devices") {
                bail!("testpmd could not start its port:\n{}", t.proc.log_tail(30));
            }
            Ok(log.contains("testpmd> ").then_some(()))
        })?;
        Ok(t)
    }

    fn cmd(&mut self, line: &str) -> Result<()> {
        writeln!(self.cmds, "{line}").context("writing to testpmd")?;
        Ok(())
    }

    /// `show port stats all`: port 0's RX-packets and TX-packets.
    fn stats(&mut self) -> Result<PortStats> {
        let marker = "NIC statistics for port 0";
        let n0 = self.proc.log().matches(marker).count();
        self.cmd("show port stats all")?;
        wait_until("testpmd's port statistics", secs(15), || {
            self.proc.ensure_running()?;
            let log = self.proc.log();
            if log.matches(marker).count() <= n0 {
                return Ok(None);
            }
            let block = &log[log.rfind(marker).unwrap_or(0)..];
            let num = |key: &str| -> Option<u64> {
                let rest = &block[block.find(key)? + key.len()..];
                rest.split_whitespace().next()?.parse().ok()
            };
            Ok(num("RX-packets:").zip(num("TX-packets:")).map(|(rx, tx)| PortStats { rx, tx }))
        })
    }

    /// `show port xstats 0`: packets received on each of port 0's first `queues` receive queues
    /// (ethdev's `rx_qN_packets`, or the virtio driver's own `rx_qN_good_packets`).
    fn rx_queue_packets(&mut self, queues: u32) -> Result<Vec<u64>> {
        let marker = "NIC extended statistics for port 0";
        let n0 = self.proc.log().matches(marker).count();
        self.cmd("show port xstats 0")?;
        wait_until("testpmd's extended statistics", secs(15), || {
            self.proc.ensure_running()?;
            let log = self.proc.log();
            if log.matches(marker).count() <= n0 {
                return Ok(None);
            }
            let block = &log[log.rfind(marker).unwrap_or(0)..];
            // The block is complete once the prompt follows it.
            if !block.contains("testpmd> ") {
                return Ok(None);
            }
            let num = |key: &str| -> Option<u64> {
                let rest = &block[block.find(key)? + key.len()..];
                rest.split_whitespace().next()?.parse().ok()
            };
            let per_queue: Option<Vec<u64>> = (0..queues)
                .map(|q| num(&format!("rx_q{q}_packets:")).or_else(|| num(&format!("rx_q{q}_good_packets:"))))
                .collect();
            match per_queue {
                Some(v) => Ok(Some(v)),
                None => bail!("no per-queue receive counters in testpmd's xstats:\n{block}"),
            }
        })
    }

    /// `quit`, and the process exits (the frontend disconnects).
    fn quit(mut self) -> Result<()> {
        self.cmd("quit")?;
        let st = self.proc.wait_timeout(secs(30))?;
        ensure!(st.success(), "testpmd exited with {st}");
        Ok(())
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// Sends `n` UDP datagrams from `ns` to `to`, paced (50 per 10 ms).
fn udp_burst(ns: &Netns, to: SocketAddr, n: u64) -> Result<u64> {
    let name = ns.name().to_string();
    std::thread::spawn(move || -> Result<u64> {
        enter_netns(&name)?;
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut sent = 0;
        while sent < n {
            for _ in 0..50.min(n - sent) {
                if s.send_to(b"to the frontend, through the tunnel", to).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

/// The peer's TUN: packets received.
fn tun_rx_packets(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"].as_u64().context("no stats64.rx.packets")
}

/// A counter of wgpmd, once it has stopped moving (workers publish every 64 iterations).
fn settled(d: &Wgpmd, key: &str) -> Result<u64> {
    let mut last = u64::MAX;
    wait_until(&format!("{key} settles"), secs(20), || {
        let c = d.stats()?;
        // A daemon-wide key as it is, a worker key summed over the workers.
        let v = if c.contains_key(key) { c.get(key)? } else { c.workers_sum(key)? };
        let done = v == last;
        last = v;
        std::thread::sleep(Duration::from_millis(300));
        Ok(done.then_some(v))
    })
}

/// One round: `txonly` for a second (frontend → peer), then `rxonly` while the peer sends
/// `n` datagrams (peer → frontend). Checks the counts at the vhost-user boundary exactly and
/// that the tunnel carried the traffic. Returns (sent by testpmd, received by testpmd).
fn round(t: &mut Testpmd, d: &Wgpmd, peer: &Site, peer_if: &str, n: u64) -> Result<(u64, u64)> {
    let s0 = t.stats()?;
    let inner_rx0 = settled(d, "inner_queue_rx_packets")?;
    let data_tx0 = settled(d, "data_tx")?;
    let tun0 = tun_rx_packets(&peer.ns, peer_if)?;
    t.cmd("set fwd txonly")?;
    t.cmd("start")?;
    std::thread::sleep(Duration::from_secs(1));
    t.cmd("stop")?;
    std::thread::sleep(Duration::from_millis(500));
    let s1 = t.stats()?;
    let sent = s1.tx - s0.tx;
    let inner_rx = settled(d, "inner_queue_rx_packets")? - inner_rx0;
    let data_tx = settled(d, "data_tx")? - data_tx0;
    let tun = tun_rx_packets(&peer.ns, peer_if)? - tun0;
    eprintln!(
        "frontend → peer: testpmd sent {sent}, wgpmd took {inner_rx} and sealed {data_tx}, the peer's TUN got {tun}"
    );
    ensure!(sent > 1000, "testpmd sent only {sent}");
    ensure!(inner_rx == sent, "testpmd sent {sent}, wgpmd's vhost-user queue received {inner_rx}");
    ensure!(data_tx == inner_rx, "wgpmd received {inner_rx} from the frontend but sealed {data_tx}");
    ensure!(tun > 0 && tun <= data_tx, "the peer received {tun} of {data_tx}");

    t.cmd("set fwd rxonly")?;
    t.cmd("start")?;
    // Whatever wgpmd wrote while testpmd was not polling (the peer's ICMP errors for the
    // txonly datagrams) is taken now, before the baseline.
    std::thread::sleep(Duration::from_secs(1));
    let s1 = t.stats()?;
    let tx0 = settled(d, "inner_queue_tx_packets")?;
    let full0 = settled(d, "inner_tx_dropped")?;
    let data_rx0 = settled(d, "data_rx")?;
    let sent_back = udp_burst(&peer.ns, "10.100.0.99:9".parse()?, n)?;
    let tx = settled(d, "inner_queue_tx_packets")? - tx0;
    let full = settled(d, "inner_tx_dropped")? - full0;
    let data_rx = settled(d, "data_rx")? - data_rx0;
    std::thread::sleep(Duration::from_millis(300));
    t.cmd("stop")?;
    let s2 = t.stats()?;
    let got = s2.rx - s1.rx;
    eprintln!(
        "peer → frontend: the peer sent {sent_back}, wgpmd opened {data_rx}, wrote {tx} into the frontend's ring \
         ({full} found it full), testpmd received {got}"
    );
    ensure!(got == tx, "wgpmd wrote {tx} packets into the frontend's ring, testpmd received {got}");
    ensure!(data_rx == tx + full, "wgpmd decrypted {data_rx}: {tx} written + {full} dropped at a full ring");
    ensure!(got >= sent_back / 2, "testpmd received {got} of {sent_back}");
    Ok((sent, got))
}

/// What each test here starts from. Fields drop in declaration order: the peer and wgpmd before
/// the namespaces, the hugepages last (the tests take it apart as `Setup { huge, topo, mut d,
/// peer, sock }`, whose bindings drop in the same order: the reverse of the pattern's).
struct Setup {
    peer: WgGo,
    d: Wgpmd,
    topo: Topology,
    huge: Hugepages,
    /// The vhost-user socket's path (in the test's log directory).
    sock: String,
}

/// testpmd installed (the test fails, never skips, without it), its hugepages reserved, one
/// peer, wgpmd started with the options `opts` builds from the socket's path, and a wireguard-go
/// peer with a session (it keeps the session up by itself: wgpmd, a concentrator, learns
/// endpoints).
fn setup(ctx: &Ctx, sock_name: &str, opts: impl FnOnce(&str) -> WgpmdOptions) -> Result<Setup> {
    let found = std::process::Command::new("sh").args(["-c", "command -v dpdk-testpmd"]).output()?;
    ensure!(
        found.status.success(),
        "dpdk-testpmd is not installed (Debian package dpdk-dev; scripts/test.sh installs it)"
    );
    let huge = Hugepages::reserve(160)?;
    let topo = Topology::new(1)?;
    let sock = ctx.log_path(sock_name).to_string_lossy().into_owned();
    let d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts(&sock))?;
    let (c, p) = (&topo.concentrator, &topo.peers[0]);
    let cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip)))
        .peer(PeerConfig::new(&c.key.public_b64(), &[INNER_NET]).endpoint(c.endpoint()).keepalive(1));
    let peer = WgGo::start(ctx, &p.ns, &cfg)?;
    d.wait_stats("a session with the peer", |s| Ok(s.get("peers_with_session")? == 1))?;
    Ok(Setup { peer, d, topo, huge, sock })
}

#[test]
fn testpmd_through_the_tunnel_both_ways_and_reconnect() {
    run("vhost_user_testpmd", |ctx| {
        let Setup { huge, topo, mut d, peer, sock } = setup(ctx, "vu.sock", |sock| WgpmdOptions {
            inner: Some(format!("vhost-user:{sock}")),
            ..Default::default()
        })?;
        let p = &topo.peers[0];
        ensure!(d.stats()?.get("vhost_user_connected")? == 0);

        let mut t = Testpmd::start(ctx, &p.ns.clone(), "testpmd1", &sock, false, 1, &huge)?;
        d.wait_stats("the frontend connected", |s| Ok(s.get("vhost_user_connected")? == 1))?;
        let (a_tx, a_rx) = round(&mut t, &d, p, peer.ifname(), 2000)?;
        t.quit()?;
        d.wait_stats("the frontend gone", |s| Ok(s.get("vhost_user_connected")? == 0))?;

        // No frontend: what the peer sends is counted and dropped.
        let dropped0 = settled(&d, "inner_queue_tx_dropped")?;
        let sent = udp_burst(&p.ns, "10.100.0.99:9".parse()?, 500)?;
        let dropped = settled(&d, "inner_queue_tx_dropped")? - dropped0;
        eprintln!("no frontend: the peer sent {sent}, wgpmd dropped {dropped} (counted)");
        ensure!(dropped >= sent * 9 / 10 && dropped <= sent, "dropped {dropped} of {sent}");

        let t0 = Instant::now();
        let mut t = Testpmd::start(ctx, &p.ns.clone(), "testpmd2", &sock, false, 1, &huge)?;
        d.wait_stats("the frontend back", |s| Ok(s.get("vhost_user_connected")? == 1))?;
        eprintln!("reconnected in {:.1} s", t0.elapsed().as_secs_f64());
        let (b_tx, b_rx) = round(&mut t, &d, p, peer.ifname(), 2000)?;
        t.quit()?;
        let st = d.stats()?;
        eprintln!("totals: first frontend {a_tx} sent / {a_rx} received, second {b_tx} / {b_rx}");
        ensure!(st.get("vhost_user_connections")? == 2 && st.get("vhost_user_disconnects")? >= 1);
        ensure!(st.get("vhost_user_bad_descriptors")? == 0 && st.get("vhost_user_protocol_errors")? == 0, "{st:?}");
        d.ensure_running()?;
        d.stop()?;
        ensure!(!std::path::Path::new(&sock).exists(), "the vhost-user socket {sock} was left behind");
        Ok(())
    });
}

#[test]
fn client_mode_connects_to_testpmd_and_reconnects() {
    run("vhost_user_client", |ctx| {
        // testpmd creates the socket; wgpmd connects to it.
        let Setup { huge, topo, mut d, peer, sock } = setup(ctx, "vuc.sock", |sock| WgpmdOptions {
            inner: Some(format!("vhost-user:{sock},client")),
            ..Default::default()
        })?;
        let p = &topo.peers[0];
        // No frontend yet: wgpmd keeps trying (counted), and is not connected.
        d.wait_stats("connection attempts while no frontend listens", |s| {
            Ok(s.get("vhost_user_connect_failures")? >= 2 && s.get("vhost_user_connected")? == 0)
        })?;

        let mut t = Testpmd::start(ctx, &p.ns.clone(), "testpmd-s1", &sock, true, 1, &huge)?;
        d.wait_stats("wgpmd connected to testpmd", |s| Ok(s.get("vhost_user_connected")? == 1))?;
        let (a_tx, a_rx) = round(&mut t, &d, p, peer.ifname(), 1000)?;
        t.quit()?;
        d.wait_stats("the frontend gone", |s| Ok(s.get("vhost_user_connected")? == 0))?;
        let f0 = d.stats()?.get("vhost_user_connect_failures")?;
        d.wait_stats("wgpmd trying again", |s| Ok(s.get("vhost_user_connect_failures")? >= f0 + 2))?;

        let t0 = Instant::now();
        let mut t = Testpmd::start(ctx, &p.ns.clone(), "testpmd-s2", &sock, true, 1, &huge)?;
        d.wait_stats("wgpmd connected again", |s| Ok(s.get("vhost_user_connected")? == 1))?;
        eprintln!("reconnected {:.1} s after the second testpmd started", t0.elapsed().as_secs_f64());
        let (b_tx, b_rx) = round(&mut t, &d, p, peer.ifname(), 1000)?;
        let st = d.stats()?;
        eprintln!(
            "totals: first frontend {a_tx} sent / {a_rx} received, second {b_tx} / {b_rx}; {} failed connection attempts",
            st.get("vhost_user_connect_failures")?
        );
        ensure!(st.get("vhost_user_connections")? == 2 && st.get("vhost_user_disconnects")? == 1, "{st:?}");
        ensure!(st.get("vhost_user_bad_descriptors")? == 0 && st.get("vhost_user_protocol_errors")? == 0, "{st:?}");
        d.ensure_running()?;
        // wgpmd stops first: the socket is testpmd's, and stays.
        d.stop()?;
        ensure!(std::path::Path::new(&sock).exists(), "wgpmd removed the frontend's socket {sock}");
        t.quit()?;
        Ok(())
    });
}

#[test]
fn two_queue_pairs_one_per_worker() {
    run("vhost_user_mq", |ctx| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ensure!(cores >= 2, "this test needs 2 cores, the machine has {cores}");
        // Two workers, each with its inner queue; WAN frames spread over both (lb), so that both
        // decrypt and both fill their pair's receive ring.
        let Setup { huge, topo, mut d, peer, sock } = setup(ctx, "vumq.sock", |sock| WgpmdOptions {
            lcores: "0-1".into(),
            control_shares_core: true,
            fanout: Some("lb".into()),
            inner: Some(format!("vhost-user:{sock}")),
            ..Default::default()
        })?;
        let p = &topo.peers[0];
        let mut t = Testpmd::start(ctx, &p.ns.clone(), "testpmd-mq", &sock, false, 2, &huge)?;
        d.wait_stats("the frontend connected", |s| Ok(s.get("vhost_user_connected")? == 1))?;
        // Both pairs in use (otherwise both workers would share pair 0).
        d.wait_stats("two queue pairs enabled", |s| Ok(s.get("vhost_user_pairs_active")? == 2))?;
        let rx0 = d.stats()?.per_worker("inner_queue_rx_packets")?;
        let tx0 = d.stats()?.per_worker("inner_queue_tx_packets")?;
        let (port0, rxq0) = (t.stats()?, t.rx_queue_packets(2)?);
        // `round` checks the sums against testpmd's counts exactly.
        let (sent, got) = round(&mut t, &d, p, peer.ifname(), 2000)?;
        // On the frontend's side: what each of its receive queues took during the round.
        let (port1, rxq1) = (t.stats()?, t.rx_queue_packets(2)?);
        let rxq: Vec<u64> = rxq1.iter().zip(&rxq0).map(|(a, b)| a - b).collect();
        let st = d.stats()?;
        let rx: Vec<u64> = st.per_worker("inner_queue_rx_packets")?.iter().zip(&rx0).map(|(a, b)| a - b).collect();
        let tx: Vec<u64> = st.per_worker("inner_queue_tx_packets")?.iter().zip(&tx0).map(|(a, b)| a - b).collect();
        eprintln!("per worker (queue pair): from testpmd {rx:?} of {sent}, to testpmd {tx:?} ({got} received)");
        ensure!(rx.len() == 2 && rx.iter().all(|&n| n > 0), "a queue pair carried nothing from the frontend: {rx:?}");
        ensure!(tx.len() == 2 && tx.iter().all(|&n| n > 0), "a queue pair carried nothing to the frontend: {tx:?}");
        ensure!(rx.iter().sum::<u64>() == sent, "{rx:?} does not add up to {sent}");
        // Worker q writes into pair q's receive ring, which is testpmd's receive queue q: each
        // queue took at least what its worker wrote during the round (more only if something
        // was waiting in it before), and the queues add up to the port's count.
        eprintln!("testpmd's receive queues took {rxq:?} ({} on the port)", port1.rx - port0.rx);
        ensure!(
            rxq.iter().zip(&tx).all(|(&q, &w)| q > 0 && q >= w),
            "testpmd's receive queues took {rxq:?}, wgpmd's workers wrote {tx:?}"
        );
        ensure!(rxq.iter().sum::<u64>() == port1.rx - port0.rx, "{rxq:?} does not add up to the port's count");
        ensure!(st.get("vhost_user_bad_descriptors")? == 0 && st.get("vhost_user_protocol_errors")? == 0, "{st:?}");
        t.quit()?;
        d.ensure_running()?;
        d.stop()
    });
}
