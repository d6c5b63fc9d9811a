//! Operations: the metrics endpoint scraped by a real Prometheus server, `promtool check
//! metrics` on its output, a client that connects and never sends (it must block neither the
//! endpoint nor the data path), and the logs (`--log-format json`, no ANSI colour in a pipe,
//! per-packet messages rate-limited and counted).
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test metrics`
//! (as root; needs the Debian packages prometheus and curl). See docs/TESTING.md.

#![forbid(unsafe_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use wgpmd_e2e::*;

/// wgpmd's metrics endpoint, on the concentrator namespace's loopback.
const METRICS: &str = "127.0.0.1:9586";
/// Prometheus's web/API address, same namespace.
const PROMETHEUS: &str = "127.0.0.1:9391";

fn metrics_opts(peers: u32) -> WgpmdOptions {
    WgpmdOptions {
        extra_args: vec!["--metrics".into(), METRICS.into(), "--metrics-peers".into(), peers.to_string()],
        ..WgpmdOptions::default()
    }
}

/// `curl` in `ns` (fails on a non-2xx answer or after `max_secs`).
fn curl(ns: &Netns, url: &str, max_secs: u32) -> Result<String> {
    ns.run(&["curl", "-sS", "--fail", "--max-time", &max_secs.to_string(), url])
}

/// An instant query to the Prometheus server: (labels, value) per series.
fn prom_query(ns: &Netns, expr: &str) -> Result<Vec<(serde_json::Value, f64)>> {
    let out = ns.run(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "5",
        "-G",
        "--data-urlencode",
        &format!("query={expr}"),
        &format!("http://{PROMETHEUS}/api/v1/query"),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("Prometheus answered {out}"))?;
    ensure!(v["status"] == "success", "query {expr}: {out}");
    let mut rows = Vec::new();
    for r in v["data"]["result"].as_array().context("data.result")? {
        let val: f64 = r["value"][1].as_str().context("value")?.parse().context("value")?;
        rows.push((r["metric"].clone(), val));
    }
    Ok(rows)
}

/// The single series `expr` selects, or fail.
fn prom_one(ns: &Netns, expr: &str) -> Result<Option<(serde_json::Value, f64)>> {
    let mut rows = prom_query(ns, expr)?;
    ensure!(rows.len() <= 1, "{expr}: {} series: {rows:?}", rows.len());
    Ok(rows.pop())
}

/// A real Prometheus server scrapes wgpmd (one worker, a wireguard-go peer pinging through
/// the tunnel) every second; its HTTP API then has the per-worker counter of decrypted data
/// packets with `worker="0"` at the value `wgpmd stats` reports, the peer gauges at 1, the
/// handshake histogram's count, the build info, and the peer's series under its public key.
/// `promtool check metrics` accepts the endpoint's output, which holds neither the private key
/// nor the peer's preshared key.
#[test]
fn prometheus_scrapes_the_metrics_endpoint() {
    run("prometheus_scrapes_the_metrics_endpoint", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        // A preshared key too: no key but the public ones may reach the page.
        let psk = KeyPair::generate();
        let conc_cfg = DeviceConfig::new(c.key.clone(), Some(c.port), Some(&format!("{}/24", c.inner_ip)))
            .peer(topo.concentrator_peer_entry(p).psk(&psk.private_b64()));
        let peer_cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip)))
            .peer(PeerConfig::new(&c.key.public_b64(), &[INNER_NET]).endpoint(c.endpoint()).psk(&psk.private_b64()));
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &conc_cfg, &metrics_opts(10))?;
        let _peer = WgGo::start(ctx, &p.ns, &peer_cfg)?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        ping_replied(&p.ns, c.inner_ip, 20)?;

        // The endpoint's page, as Prometheus's own linter sees it.
        let page = curl(&c.ns, &format!("http://{METRICS}/metrics"), 5)?;
        ctx.write_file("metrics.txt", &page)?;
        let check = c.ns.exec(&[
            "sh",
            "-c",
            &format!("curl -sS --max-time 5 http://{METRICS}/metrics | promtool check metrics"),
        ])?;
        ensure!(
            check.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        eprintln!("promtool check metrics: exit 0, {:?}", String::from_utf8_lossy(&check.stdout).trim());
        for (what, key) in [("private key", &c.key), ("preshared key", &psk)] {
            for secret in [key.private_b64(), hex(&key.private_bytes())] {
                ensure!(!page.contains(&secret), "the metrics page holds the {what}");
            }
        }
        ensure!(page.contains(&p.key.public_b64()), "no series for the peer's public key");

        let cfg = ctx.write_file(
            "prometheus.yml",
            &format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: wgpmd\n    \
                 static_configs: [{{targets: ['{METRICS}']}}]\n"
            ),
        )?;
        let tsdb = ctx.dir().join("prometheus-data");
        let mut prom = Proc::spawn(
            ctx,
            &c.ns,
            "prometheus",
            &[
                "prometheus",
                &format!("--config.file={}", cfg.display()),
                &format!("--storage.tsdb.path={}", tsdb.display()),
                &format!("--web.listen-address={PROMETHEUS}"),
            ],
            &[],
        )?;
        wait_until("Prometheus scraped wgpmd", secs(60), || {
            prom.ensure_running()?;
            Ok(prom_one(&c.ns, "up{job=\"wgpmd\"}").ok().flatten().filter(|(_, v)| *v == 1.0))
        })?;

        // The traffic has stopped: the counter settles at what `wgpmd stats` says.
        let data_rx = d.stats()?.get("worker0.data_rx")?;
        ensure!(data_rx >= 20, "worker0.data_rx = {data_rx} after 20 pings");
        let (labels, v) = wait_until("Prometheus has the decrypted-packets counter", secs(30), || {
            let r = prom_one(&c.ns, "wgpmd_data_packets_decrypted_total{job=\"wgpmd\"}")?;
            Ok(r.filter(|(_, v)| *v == data_rx as f64))
        })?;
        eprintln!("wgpmd_data_packets_decrypted_total: {labels} = {v}");
        ensure!(labels["worker"] == "0", "labels {labels}");
        ensure!(labels.get("worker0").is_none());
        for (gauge, want) in [("wgpmd_peers", 1.0), ("wgpmd_peers_with_session", 1.0), ("wgpmd_wan_link_up", 1.0)] {
            let r = prom_one(&c.ns, gauge)?.with_context(|| format!("no {gauge}"))?;
            ensure!(r.1 == want, "{gauge} = {} (want {want})", r.1);
        }
        let hs = prom_one(&c.ns, "wgpmd_handshake_processing_seconds_count{worker=\"0\"}")?.context("histogram")?;
        ensure!(hs.1 >= 1.0, "no handshake in the processing-time histogram: {hs:?}");
        let depth = prom_one(&c.ns, "wgpmd_handshake_queue_depth{worker=\"0\"}")?.context("queue depth")?;
        ensure!(depth.1 == 0.0, "handshake queue depth {depth:?} with nothing queued");
        let drops = prom_query(&c.ns, "wgpmd_packet_drops_total{worker=\"control\"}")?;
        ensure!(drops.len() >= 19, "{} drop reasons for the control core", drops.len());
        let build = prom_one(&c.ns, "wgpmd_build_info")?.context("build info")?;
        ensure!(build.0["backends"].as_str().is_some_and(|b| b.contains("af_packet")), "build info {build:?}");
        let uptime = prom_one(&c.ns, "wgpmd_uptime_seconds")?.context("uptime")?;
        ensure!(uptime.1 > 1.0, "uptime {uptime:?}");
        let key = p.key.public_b64();
        let rx = prom_one(&c.ns, &format!("wireguard_received_bytes_total{{public_key=\"{key}\"}}"))?
            .context("no per-peer series")?;
        ensure!(rx.0["interface"] == d.ifname() && rx.1 > 0.0, "per-peer series {rx:?}");
        let hs_time = prom_one(&c.ns, &format!("wireguard_latest_handshake_seconds{{public_key=\"{key}\"}}"))?
            .context("latest handshake")?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        ensure!((now - hs_time.1).abs() < 300.0, "latest handshake {hs_time:?}, now {now}");
        prom.stop();
        let _ = std::fs::remove_dir_all(&tsdb);
        d.ensure_running()?;
        d.stop()
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Clients that connect to the endpoint and never send, or send part of a request and stop
/// (more than its connection slots): the
/// endpoint still answers at once, pings through the tunnel are all answered, and the silent
/// clients are closed at their deadline.
#[test]
fn a_silent_client_blocks_neither_the_endpoint_nor_the_data_path() {
    run("a_silent_client_blocks_neither_the_endpoint_nor_the_data_path", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &metrics_opts(0))?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let (host, port) = METRICS.split_once(':').unwrap();
        // 24 connections that send nothing, or half of a request line and then nothing, held
        // for 20 s; the script prints how many the server had closed after 8 s: a read returns
        // end of file, or a reset when the server closed the socket with bytes of the half
        // request unread (an evicted connection: a new one takes the oldest one's slot).
        let script = format!(
            "import socket, time\n\
             s = [socket.create_connection(('{host}', {port})) for _ in range(24)]\n\
             for c in s[::2]:\n    \
                 c.sendall(b'GET /metr')\n\
             print('connected', flush=True)\n\
             time.sleep(8)\n\
             closed = 0\n\
             for c in s:\n    \
                 c.setblocking(False)\n    \
                 try:\n        \
                     closed += c.recv(1) == b''\n    \
                 except BlockingIOError:\n        \
                     pass\n    \
                 except ConnectionResetError:\n        \
                     closed += 1\n\
             print('closed', closed, flush=True)\n\
             time.sleep(12)\n"
        );
        let mut silent = Proc::spawn(ctx, &c.ns, "silent-clients", &["python3", "-u", "-c", &script], &[])?;
        wait_until("the silent clients connected", secs(10), || Ok(silent.log().contains("connected").then_some(())))?;
        let t = Instant::now();
        for _ in 0..5 {
            let page = curl(&c.ns, &format!("http://{METRICS}/metrics"), 2)?;
            ensure!(page.contains("wgpmd_data_packets_decrypted_total{worker=\"0\"}"), "page: {page}");
        }
        let took = t.elapsed();
        ensure!(took < secs(4), "5 scrapes next to silent clients took {took:?}");
        let ping = ping(&p.ns, c.inner_ip, 20)?;
        ensure!(ping.received == 20, "pings while clients hang: {ping:?}");
        d.stats()?;
        wait_until("the silent clients' report", secs(20), || Ok(silent.log().contains("closed").then_some(())))?;
        let log = silent.log();
        let closed: usize = log
            .lines()
            .find_map(|l| l.strip_prefix("closed "))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("silent clients: {log}"))?;
        ensure!(closed == 24, "{closed} of 24 silent connections closed by the server after 8 s");
        silent.stop();
        eprintln!("5 scrapes in {took:?} next to 24 silent clients; 20/20 pings; all 24 closed by their deadline");
        d.ensure_running()?;
        d.stop()
    });
}

/// Runs `wgpmd run` in `ns` with stderr on a pipe (no `NO_COLOR`), until its UAPI socket
/// exists, then stops it with SIGTERM and returns what it wrote. `journal`: `JOURNAL_STREAM`
/// names the pipe, as systemd names the journal's stream for a service.
fn run_logging(topo: &Topology, global: &[&str], journal: bool) -> Result<String> {
    let c = &topo.concentrator;
    let bin = wgpmd_bin()?;
    let name = unique_ifname("wlg");
    let port = format!("af_packet:{}", c.outer_if);
    let addr = format!("{}/24", c.outer_ip);
    let mut args: Vec<&str> = vec![bin.to_str().context("path")?];
    args.extend_from_slice(global);
    args.extend(["run", &name, "--port", &port, "--address", &addr, "-l", "0", "--poll", "adaptive"]);
    let (mut err, writer) = std::io::pipe()?;
    let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let stream = {
        use std::os::unix::fs::MetadataExt;
        let m = writer.metadata()?;
        format!("{}:{}", m.dev(), m.ino())
    };
    let env: Vec<(&str, &str)> = if journal { vec![("JOURNAL_STREAM", &stream)] } else { vec![] };
    let mut child = c.ns.spawn(&args, &env, Stdio::null(), Stdio::from(writer))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let sock = std::path::Path::new(UAPI_DIR).join(format!("{name}.sock"));
    let up = wait_until("wgpmd's UAPI socket", secs(20), || Ok(sock.exists().then_some(())));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
    let status = child.wait()?;
    let out = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
    up.with_context(|| format!("wgpmd's log: {out}"))?;
    ensure!(status.success(), "wgpmd exited {status}: {out}");
    Ok(out)
}

/// Logs into a pipe carry no ANSI escape; `--log-format json` writes one JSON object a line
/// with the level and the message; with the journal on stderr each line starts with its syslog
/// priority (`<6>` for info) and carries no timestamp.
#[test]
fn json_logs_and_no_colour_in_a_pipe() {
    run("json_logs_and_no_colour_in_a_pipe", |_ctx| {
        let topo = Topology::new(0)?;
        let plain = run_logging(&topo, &[], false)?;
        ensure!(plain.contains(" INFO ") && plain.contains("listening on UDP"), "plain log: {plain}");
        ensure!(!plain.contains('\x1b'), "ANSI escapes in a pipe: {plain:?}");
        let json = run_logging(&topo, &["--log-format", "json"], false)?;
        ensure!(!json.contains('\x1b'), "ANSI escapes in JSON: {json:?}");
        let mut messages = Vec::new();
        for line in json.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not a JSON line: {line:?}"))?;
            ensure!(v["level"].is_string() && v["timestamp"].is_string() && v["target"].is_string(), "{line}");
            messages.push(v["fields"]["message"].as_str().context("fields.message")?.to_string());
        }
        ensure!(messages.iter().any(|m| m.contains("listening on UDP")), "JSON messages: {messages:?}");
        ensure!(messages.iter().any(|m| m == "stopped"), "JSON messages: {messages:?}");
        // Under systemd with the journal on stderr: a syslog priority first, no timestamp.
        let journal = run_logging(&topo, &[], true)?;
        for line in journal.lines().filter(|l| !l.trim().is_empty()) {
            ensure!(
                ["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)) && !line.contains('\x1b'),
                "journal line without a priority: {line:?}"
            );
        }
        let start = journal.lines().find(|l| l.contains("listening on UDP")).context("no startup line")?;
        ensure!(start.starts_with("<6> INFO wgpmd::daemon: "), "startup line for the journal: {start:?}");
        Ok(())
    });
}

/// With `-v` and `--log-packet-rate 2`, a burst of 300 handshake initiations with a bad mac1
/// (each a per-packet debug message) logs a few lines, and `wgpmd stats` counts the rest as
/// suppressed.
#[test]
fn per_packet_messages_are_rate_limited_and_counted() {
    run("per_packet_messages_are_rate_limited_and_counted", |ctx| {
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let opts = WgpmdOptions { extra_args: vec!["--log-packet-rate".into(), "2".into()], ..WgpmdOptions::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let to = SocketAddr::from((c.outer_ip, CONCENTRATOR_PORT));
        let mut msg = vec![0u8; 148];
        msg[0] = 1;
        let t = Instant::now();
        for i in 0..300u32 {
            msg[4..8].copy_from_slice(&i.to_le_bytes());
            p.ns.udp_send(to, &msg)?;
        }
        let st = d.wait_stats("the bad-mac1 burst counted", |s| Ok(s.workers_sum("hs_dropped_bad_mac1")? >= 300))?;
        let elapsed = t.elapsed().as_secs() + 1;
        let suppressed = st.get("log_messages_suppressed")?;
        let logged = d.log().lines().filter(|l| l.contains("Invalid handshake MAC")).count() as u64;
        eprintln!("300 bad-mac1 messages in {elapsed} s: {logged} logged, {suppressed} suppressed");
        ensure!(logged >= 1, "no per-packet line logged at all");
        ensure!(logged <= 2 * (elapsed + 1), "{logged} lines in {elapsed} s at 2 per second");
        ensure!(suppressed + logged >= 300, "{suppressed} suppressed + {logged} logged < 300");
        d.ensure_running()?;
        d.stop()
    });
}
