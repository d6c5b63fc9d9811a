//! Guest tests: wgpmd inside a QEMU guest (TCG, q35, intel-iommu vIOMMU), where its WAN NIC can
//! be a virtio-net device driven from userspace through VFIO. The harness lives in tests/guest/
//! (kernel.sh, mkinitramfs.sh, init, scenarios.sh, run-vm.sh): the guest /init runs the scenarios
//! named on the kernel command line and prints `SCENARIO <name> PASS|FAIL <detail>` lines on the
//! serial console, which these tests parse.
//!
//! * `guest_local_boot`: NIC A (virtio-net, 00:02.0) cross-wired by QEMU to NIC B (e1000e) in
//!   guest netns `peer`, where the guest kernel's WireGuard runs: wgpmd over AF_PACKET, then the
//!   VFIO failure paths, bind, a vfio run, unbind, the bad-IOVA test hook (DMAR fault, wgpmd must
//!   exit non-zero in bounded time), and last the device reset under traffic (`vfio_reset`: the
//!   guest writes 0 to the device's status through the virtio PCI configuration window; wgpmd must
//!   exit 1 naming the reset, leave nothing behind and run again on the device when restarted).
//! * `guest_mq_boot`: NIC A with two queue pairs on a multiqueue TAP in a host namespace of this
//!   test, where wireguard-go peers run; wgpmd with two workers; then the WAN exception path
//!   on vfio (`mq_vfio_exc`), whose LAN side this test drives while the guest runs.
//! * `guest_noiommu_boot`: the local topology without a vIOMMU, with the guest's vfio modules
//!   rebuilt with CONFIG_VFIO_NOIOMMU (tests/guest/noiommu-modules.sh): wgpmd refuses the
//!   no-IOMMU group unless WGPMD_VFIO_NOIOMMU=1, then runs on it with physical DMA addresses.
//! * `guest_vhost_user_boot`: the guest's only NIC is a virtio-net on a vhost-user netdev whose
//!   backend is wgpmd on the host (`--inner vhost-user:`); the guest pings a wireguard-go peer
//!   through it.
//!
//! The bad-IOVA scenarios need a wgpmd built with the test hooks (`--features test-hooks`; a plain
//! build has none). A missing prerequisite (host tools, the guest kernel's download, the no-IOMMU
//! modules' build, the test hooks) fails the test, unless `WGPMD_GUEST_ALLOW_SKIP=1` is set: then
//! what cannot run is skipped, each skip said on stderr (CI never sets it). Run (as root, after
//! `cargo build --release -p wgpmd --features test-hooks`):
//! `cargo test -p wgpmd-e2e --release --test guest`. See docs/TESTING.md, "Guest tests (VFIO)".

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wgpmd_e2e::*;

/// Seconds QEMU may run before run-vm.sh's `timeout` kills it.
const QEMU_TIMEOUT_S: u64 = 300;
/// Host-side wireguard-go peers in the multiqueue boot: 8 flows make it very unlikely (1/128) that
/// the TAP's flow hash puts them all on one queue.
const MQ_PEERS: usize = 8;
/// Set to 1, a missing prerequisite skips (what cannot run) instead of failing the test.
const ALLOW_SKIP_ENV: &str = "WGPMD_GUEST_ALLOW_SKIP";
/// The bad-IOVA test hook's environment variable: its name is in a wgpmd built with the test hooks
/// (nic-backends' `test-hooks` feature), and in no other.
const TEST_HOOK: &str = "WGPMD_VFIO_TEST_BAD_IOVA";

/// A prerequisite of test `test` is missing (`what`, saying how to get it): an error, or with
/// `WGPMD_GUEST_ALLOW_SKIP=1` a skip (`Ok(None)`), said on stderr.
fn missing<T>(test: &str, what: String) -> Result<Option<T>> {
    if std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("[guest] SKIP in {test} ({ALLOW_SKIP_ENV}=1): {what}");
        return Ok(None);
    }
    bail!("{what}\n(a missing prerequisite fails the guest tests; {ALLOW_SKIP_ENV}=1 would skip instead)")
}

/// Whether `bin` carries the test hooks (the hook's variable name is in the binary: the same check
/// scripts/test.sh makes, the other way round, on the plain release build).
fn has_test_hooks(bin: &Path) -> Result<bool> {
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    Ok(bytes.windows(TEST_HOOK.len()).any(|w| w == TEST_HOOK.as_bytes()))
}

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// The kernel cache (git-ignored): `<workspace>/.tools/guest/kernel`.
fn kernel_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/guest/kernel")
}

/// The cache of the rebuilt no-IOMMU vfio modules (git-ignored): `<workspace>/.tools/guest/noiommu`.
fn noiommu_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/guest/noiommu")
}

fn run_script(what: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_cmd(&mut cmd, timeout)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    Ok(text)
}

/// What a boot needs: the kernel (cached across runs) and an initramfs with this wgpmd and fresh
/// keys, in the test directory.
struct Guest {
    kcache: PathBuf,
    out: PathBuf,
}

impl Guest {
    fn prepare(ctx: &Ctx) -> Result<Option<Guest>> {
        Self::prepare_with(ctx, false)
    }

    /// `noiommu`: the initramfs gets the vfio modules rebuilt with CONFIG_VFIO_NOIOMMU
    /// (noiommu-modules.sh builds them once per kernel version; it apt-get installs the kernel's
    /// headers and source when they are not cached). None: a prerequisite is missing and
    /// `WGPMD_GUEST_ALLOW_SKIP=1` (see [`missing`]).
    fn prepare_with(ctx: &Ctx, noiommu: bool) -> Result<Option<Guest>> {
        let mut missing = Vec::new();
        for t in [
            "qemu-system-x86_64",
            "busybox",
            "cpio",
            "depmod",
            "flock",
            "md5sum",
            "apt-get",
            "dpkg-deb",
            "xz",
            "iperf3",
        ] {
            if !Command::new("sh").args(["-c", &format!("command -v {t}")]).output()?.status.success() {
                missing.push(t);
            }
        }
        if !missing.is_empty() {
            return self::missing(
                ctx.name(),
                format!(
                    "guest tests need {} (scripts/test.sh installs qemu-system-x86 busybox-static cpio kmod util-linux xz-utils iperf3)",
                    missing.join(", ")
                ),
            );
        }
        let kcache = kernel_cache();
        let h = harness_dir();
        let t = Instant::now();
        let kernel =
            run_script("kernel.sh", &[&h.join("kernel.sh").to_string_lossy(), &kcache.to_string_lossy()], secs(600));
        if let Err(e) = kernel {
            return self::missing(ctx.name(), format!("no guest kernel: {e:#}"));
        }
        let mut mods = String::new();
        if noiommu {
            let cache = noiommu_cache();
            let text = match run_script(
                "noiommu-modules.sh",
                &[&h.join("noiommu-modules.sh").to_string_lossy(), &kcache.to_string_lossy(), &cache.to_string_lossy()],
                secs(900),
            ) {
                Ok(text) => text,
                Err(e) => return self::missing(ctx.name(), format!("no vfio modules with no-IOMMU support: {e:#}")),
            };
            eprint!("[guest] {text}");
            let kv = std::fs::read_to_string(kcache.join("kver"))?.trim().to_string();
            let ver = std::fs::read_to_string(kcache.join("kpkgver"))?.trim().to_string();
            mods = cache.join(format!("{kv}-{ver}")).to_string_lossy().into_owned();
        }
        let bin = wgpmd_bin()?;
        let out = ctx.dir().join("guest");
        let mkinit = h.join("mkinitramfs.sh").to_string_lossy().into_owned();
        let (kc, b, o) = (kcache.to_string_lossy(), bin.to_string_lossy(), out.to_string_lossy());
        let mut args: Vec<&str> = vec![&mkinit, &kc, &b, &o];
        if noiommu {
            args.push(&mods);
        }
        run_script("mkinitramfs.sh", &args, secs(120))?;
        eprintln!("[guest] kernel and initramfs ready in {:.1} s", t.elapsed().as_secs_f64());
        Ok(Some(Guest { kcache, out }))
    }

    fn key(&self, name: &str) -> Result<String> {
        let p = self.out.join("keys").join(format!("{name}.key"));
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
    }

    fn public(&self, name: &str) -> Result<String> {
        let p = self.out.join("keys").join(format!("{name}.pub"));
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
    }

    /// Boots `boot` (local|mq|noiommu) in `ns` with the scenarios `scen`, waits for the guest to power
    /// off, returns the serial console log.
    fn boot(&self, ctx: &Ctx, ns: &Netns, boot: &str, scen: &[&str], envs: &[(&str, &str)]) -> Result<String> {
        self.boot_with(ctx, ns, boot, scen, envs, |_| Ok(()))
    }

    /// [`Guest::boot`], with `during` run on this side while the guest runs (given the QEMU
    /// process, whose log is the serial console so far); its error fails the boot after QEMU ended.
    fn boot_with(
        &self,
        ctx: &Ctx,
        ns: &Netns,
        boot: &str,
        scen: &[&str],
        envs: &[(&str, &str)],
        during: impl FnOnce(&mut Proc) -> Result<()>,
    ) -> Result<String> {
        let run_vm = harness_dir().join("run-vm.sh").to_string_lossy().into_owned();
        let initrd = self.out.join("initramfs.cpio.gz").to_string_lossy().into_owned();
        let kcache = self.kcache.to_string_lossy().into_owned();
        let cmdline = format!("scen={} mqpeers={MQ_PEERS}", scen.join(","));
        let timeout = QEMU_TIMEOUT_S.to_string();
        let mut env = vec![("TIMEOUT", timeout.as_str())];
        env.extend_from_slice(envs);
        let t = Instant::now();
        let mut qemu =
            Proc::spawn(ctx, ns, &format!("serial-{boot}"), &[&run_vm, boot, &initrd, &kcache, &cmdline], &env)?;
        let host_side = during(&mut qemu);
        // QEMU kills itself after QEMU_TIMEOUT_S; the rest is for waiting on the lock (another guest).
        let status = qemu.wait_timeout(secs(QEMU_TIMEOUT_S + 600));
        let log = qemu.log().replace('\r', "");
        let status = status.with_context(|| format!("QEMU ({boot}) did not end; serial log:\n{}", tail(&log, 40)))?;
        eprintln!("[guest] boot {boot}: QEMU exited ({status}) after {:.1} s", t.elapsed().as_secs_f64());
        ensure!(
            log.contains("GUEST DONE"),
            "boot {boot}: the guest did not finish its scenarios (QEMU {status}); serial log:\n{}",
            tail(&log, 60)
        );
        host_side.with_context(|| format!("boot {boot}: this side's part failed; serial log:\n{}", tail(&log, 60)))?;
        Ok(log)
    }
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The serial log from `=== scenario NAME` to its `SCENARIO NAME` line.
fn excerpt(log: &str, name: &str) -> String {
    let start = format!("=== scenario {name} ");
    let end = format!("SCENARIO {name} ");
    let mut out = Vec::new();
    let mut on = false;
    for l in log.lines() {
        if l.contains(&start) {
            on = true;
        }
        if on {
            out.push(l);
        }
        if on && l.starts_with(&end) {
            break;
        }
    }
    out.join("\n")
}

/// Parses the `SCENARIO` lines and checks every expected scenario passed.
fn check_scenarios(log: &str, expected: &[&str]) -> Result<()> {
    let mut verdicts: HashMap<String, (String, String)> = HashMap::new();
    for l in log.lines() {
        if let Some(rest) = l.strip_prefix("SCENARIO ") {
            let mut it = rest.splitn(3, ' ');
            let (name, verdict, detail) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
            verdicts.insert(name.to_string(), (verdict.to_string(), detail.to_string()));
        }
    }
    // "INIT: scenario NAME took S s"
    let took = |name: &str| {
        let prefix = format!("INIT: scenario {name} took ");
        log.lines().find_map(|l| l.strip_prefix(&prefix).map(|t| format!(" [{t}]"))).unwrap_or_default()
    };
    let mut failures = Vec::new();
    for name in expected {
        match verdicts.get(*name) {
            Some((v, d)) if v == "PASS" => eprintln!("[guest] {name}{}: PASS {d}", took(name)),
            Some((v, d)) => failures.push(format!("{name}: {v} {d}\n{}", excerpt(log, name))),
            None => failures.push(format!("{name}: no SCENARIO line\n{}", excerpt(log, name))),
        }
    }
    if !failures.is_empty() {
        bail!("{} scenario(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
    }
    Ok(())
}

#[test]
fn guest_local_boot() {
    run("guest_local_boot", |ctx| {
        let mut scen = vec![
            "afp_local",
            "vfio_nodev",
            "vfio_kdrv",
            "vfio_status",
            "vfio_bind",
            "vfio_nohuge",
            "vfio_run",
            "vfio_unbind",
        ];
        let bin = wgpmd_bin()?;
        if has_test_hooks(&bin)? {
            scen.extend(["vfio_badiova", "vfio_badiova_big"]);
        } else {
            // With WGPMD_GUEST_ALLOW_SKIP=1, the boot runs without the two bad-IOVA scenarios.
            missing::<()>(
                ctx.name(),
                format!(
                    "{} has no test hooks ({TEST_HOOK} is not in it), which vfio_badiova and vfio_badiova_big need: \
                     build it with `cargo build --release -p wgpmd --features test-hooks`",
                    bin.display()
                ),
            )?;
        }
        // The device reset under traffic: needs no test hook (the guest resets the device itself).
        scen.push("vfio_reset");
        let Some(g) = Guest::prepare(ctx)? else { return Ok(()) };
        let ns = Netns::new("gl")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        let log = g.boot(ctx, &ns, "local", &scen, &[])?;
        check_scenarios(&log, &scen)
    });
}

#[test]
fn guest_noiommu_boot() {
    run("guest_noiommu_boot", |ctx| {
        let Some(g) = Guest::prepare_with(ctx, true)? else { return Ok(()) };
        let ns = Netns::new("gno")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        let scen = ["noiommu_bind", "noiommu_refuse", "noiommu_run", "vfio_unbind"];
        let log = g.boot(ctx, &ns, "noiommu", &scen, &[])?;
        check_scenarios(&log, &scen)
    });
}

#[test]
fn guest_mq_boot() {
    run("guest_mq_boot", |ctx| {
        let Some(g) = Guest::prepare(ctx)? else { return Ok(()) };
        let ns = Netns::new("gmq")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        let tap = "wgtap0";
        ns.ip(&["tuntap", "add", "dev", tap, "mode", "tap", "multi_queue"])?;
        ns.ip(&["addr", "add", "10.50.0.2/24", "dev", tap])?;
        ns.ip(&["link", "set", tap, "up"])?;
        let wgpmd_pub = g.public("a")?;
        let mut peers = Vec::new();
        for i in 0..MQ_PEERS {
            let key = KeyPair::from_private_b64(&g.key(&format!("h{i}"))?)?;
            let addr = format!("10.61.{i}.2/24");
            let cfg = DeviceConfig::new(key, Some(52000 + i as u16), Some(&addr)).peer(
                PeerConfig::new(&wgpmd_pub, &[&format!("10.61.{i}.0/24")])
                    .endpoint("10.50.0.1:51820".parse::<SocketAddr>()?),
            );
            peers.push(WgDevice::start(ctx, WgImpl::WireguardGo, &ns, &cfg)?);
        }
        let scen = ["mq_afp", "mq_vfio", "mq_vfio_exc"];
        let bases = [("mq_afp", 5100), ("mq_vfio", 5200)];
        // Bulk receivers: one nc per scenario and peer; stdin must stay open (busybox nc half-closes
        // on stdin EOF, which makes the guest's sender stop early).
        let mut receivers = Vec::new();
        for (name, base) in &bases {
            for i in 0..MQ_PEERS {
                let port = base + i;
                let file = ctx.dir().join(format!("bulk-{name}-{i}.rx"));
                let script = format!("sleep 600 | busybox nc -l -p {port} > {}", file.display());
                receivers.push(Proc::spawn(ctx, &ns, &format!("nc-{port}"), &["sh", "-c", &script], &[])?);
            }
        }
        let log = g.boot_with(ctx, &ns, "mq", &scen, &[("TAP", tap)], |qemu| exception_lan_side(ctx, &ns, qemu))?;
        for p in peers.iter_mut() {
            p.ensure_running()?;
        }
        check_scenarios(&log, &scen)?;
        // What each host peer received must be what the guest sent ("BULK <scenario> <i> <bytes> <md5>").
        let mut checked = 0;
        for l in log.lines().filter(|l| l.starts_with("BULK ")) {
            let f: Vec<&str> = l.split_whitespace().collect();
            ensure!(f.len() == 5, "bad BULK line {l:?}");
            let file = ctx.dir().join(format!("bulk-{}-{}.rx", f[1], f[2]));
            let got = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = Command::new("md5sum").arg(&file).output()?;
            let md5 = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
            ensure!(
                got.len().to_string() == f[3] && md5 == f[4],
                "peer {} ({}): received {} bytes md5 {md5}, the guest sent {} bytes md5 {}",
                f[2],
                f[1],
                got.len(),
                f[3],
                f[4]
            );
            checked += 1;
        }
        ensure!(checked == MQ_PEERS * bases.len(), "{checked} BULK lines, expected {}", MQ_PEERS * bases.len());
        eprintln!("[guest] {checked} bulk transfers arrived intact at the wireguard-go peers");
        drop(receivers);
        Ok(())
    });
}

/// Seconds of iperf3 through the tunnel in `mq_vfio_exc`, while nc and ping reach the guest kernel.
const EXC_IPERF_S: u64 = 8;
/// The UDP flood of `mq_vfio_exc`: frames per second (to the guest wgpmd's WAN address, a port it does not
/// serve: each one is for the kernel) and seconds; the guest's `--exception-rate` is 500 (scenarios.sh).
const EXC_FLOOD_PPS: u64 = 3000;
const EXC_FLOOD_S: f64 = 3.0;

/// The LAN side of scenario `mq_vfio_exc` (tests/guest/scenarios.sh), from the namespace `ns` of the
/// multiqueue TAP: once the guest says `EXC READY`, iperf3 from wireguard-go peer h0 through the tunnel
/// to the guest's wg0 (10.61.0.1) and meanwhile 256 KiB with nc and 5 pings to the guest kernel's own
/// address (10.50.0.3) through the exception TAP; then a UDP flood to 10.50.0.1:9 with pings through
/// the tunnel. Last "DONE <bytes> <md5> <flood frames> <seconds>" (or "ABORT <why>") to 10.50.0.3:7999,
/// which the guest checks against what its nc received and its counters.
fn exception_lan_side(ctx: &Ctx, ns: &Netns, qemu: &mut Proc) -> Result<()> {
    wait_until("EXC READY on the guest's console", secs(QEMU_TIMEOUT_S), || {
        let log = qemu.log();
        if log.contains("EXC READY") {
            return Ok(Some(()));
        }
        ensure!(
            !log.contains("SCENARIO mq_vfio_exc ") && !log.contains("GUEST DONE") && qemu.is_running(),
            "the guest ended mq_vfio_exc (or the boot) without EXC READY"
        );
        Ok(None)
    })?;
    let result = (|| -> Result<String> {
        let t0 = Instant::now();
        let ns2 = ns.clone();
        let iperf = std::thread::spawn(move || {
            let t = EXC_IPERF_S.to_string();
            ns2.exec_timeout(
                &["iperf3", "-c", "10.61.0.1", "-t", &t, "-J", "--connect-timeout", "10000"],
                secs(60 + EXC_IPERF_S),
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        let src = ctx.dir().join("exc-nc.bin");
        let src_s = src.to_string_lossy().into_owned();
        let out =
            run_cmd(Command::new("sh").args(["-c", &format!("head -c 262144 /dev/urandom > {src_s}")]), secs(10))?;
        ensure!(out.status.success());
        let out = ns.exec_timeout(&["sh", "-c", &format!("nc -N -w 20 10.50.0.3 7001 < {src_s}")], secs(60))?;
        ensure!(
            out.status.success(),
            "nc to the guest kernel's 10.50.0.3:7001: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pings = ping_replied(ns, "10.50.0.3", 5)?;
        let lan_done = t0.elapsed();
        let out = iperf.join().map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))?;
        ensure!(json.get("error").is_none(), "iperf3: {}", json["error"]);
        let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no bits_per_second")?;
        eprintln!(
            "[guest] mq_vfio_exc: iperf3 through the tunnel {:.2} Mbit/s for {EXC_IPERF_S} s; nc 256 KiB and 5 pings \
             (rtt avg {:?} ms) to the guest kernel done after {:.1} s",
            bps / 1e6,
            pings.rtt_avg_ms,
            lan_done.as_secs_f64()
        );
        ensure!(bps > 1e5, "iperf3 through the tunnel: {bps} bit/s");
        ensure!(
            lan_done < Duration::from_secs(EXC_IPERF_S),
            "nc and ping to the guest kernel took {:.1} s, longer than iperf3 ran ({EXC_IPERF_S} s)",
            lan_done.as_secs_f64()
        );
        let out = run_cmd(Command::new("md5sum").arg(&src), secs(10))?;
        let md5 = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
        // The flood, with pings through the tunnel meanwhile.
        let ns_name = ns.name().to_string();
        let flood = std::thread::spawn(move || -> Result<(u64, f64)> {
            enter_netns(&ns_name)?;
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let to: SocketAddr = "10.50.0.1:9".parse()?;
            let t0 = Instant::now();
            let mut sent = 0u64;
            while t0.elapsed().as_secs_f64() < EXC_FLOOD_S {
                for _ in 0..EXC_FLOOD_PPS / 100 {
                    if sock.send_to(b"not wireguard", to).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok((sent, t0.elapsed().as_secs_f64()))
        });
        std::thread::sleep(Duration::from_millis(300));
        let tunnel = ping_replied(ns, "10.61.0.1", 5);
        let (sent, flood_s) = flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let tunnel = tunnel.context("pings through the tunnel during the flood")?;
        eprintln!(
            "[guest] mq_vfio_exc: flood of {sent} UDP frames in {flood_s:.1} s; 5 of 5 pings through the tunnel \
             meanwhile (rtt avg {:?} ms)",
            tunnel.rtt_avg_ms
        );
        Ok(format!("DONE 262144 {md5} {sent} {flood_s:.1}"))
    })();
    let msg = match &result {
        Ok(m) => m.clone(),
        Err(e) => format!("ABORT {}", format!("{e:#}").replace(['\n', '\'', '"'], " ")),
    };
    let out = ns.exec_timeout(&["sh", "-c", &format!("printf '%s\\n' '{msg}' | nc -N -w 20 10.50.0.3 7999")], secs(60));
    result?;
    let out = out?;
    ensure!(out.status.success(), "sending DONE to 10.50.0.3:7999: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `guest_vhost_user_boot`: wgpmd on the host with `--inner vhost-user:<sock>` (WAN `af_packet:`
/// in the standard topology, a wireguard-go peer with persistent keepalive); the guest's only NIC
/// is a virtio-net on a vhost-user netdev with that socket (its memory a shared memfd). The guest
/// pings the peer's inner address through wgpmd: its ARP is answered by wgpmd's port, its echo
/// requests are sealed to the peer, the replies decrypted into the guest's receive queue.
///
/// Debian 12's QEMU 7.2 needs two things (docs/TESTING.md): the vhost-user port's relay, which
/// holds back the SET_VRING_ENABLE messages QEMU sends before SET_FEATURES (the `vhost` crate
/// refuses them there), and, under TCG, a NIC without MSI-X (run-vm.sh gives the `vhu` boot's
/// NIC `vectors=0`; with MSI-X, QEMU 7.2 itself dies with SIGSEGV when the guest's driver starts
/// a vhost-user device).
#[test]
fn guest_vhost_user_boot() {
    run("guest_vhost_user_boot", |ctx| {
        let Some(g) = Guest::prepare(ctx)? else { return Ok(()) };
        let topo = Topology::new(1)?;
        let (c, p) = (&topo.concentrator, &topo.peers[0]);
        let sock = ctx.dir().join("vu.sock").to_string_lossy().into_owned();
        // The vhost-user port's log of the frontend's session (in the wgpmd log of the test directory).
        let opts = WgpmdOptions {
            inner: Some(format!("vhost-user:{sock}")),
            env: vec![("RUST_LOG".into(), "info,nic_backends::vhost_user=trace".into())],
            ..Default::default()
        };
        // The peer's AllowedIPs at the concentrator: its /32 and the guest's address behind wgpmd
        // is the peer's destination; the peer routes the inner /24 into its tunnel.
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &opts)?;
        let cfg = DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip)))
            .peer(PeerConfig::new(&c.key.public_b64(), &[INNER_NET]).endpoint(c.endpoint()).keepalive(1));
        let _peer = WgGo::start(ctx, &p.ns, &cfg)?;
        d.wait_stats("a session with the peer", |s| Ok(s.get("peers_with_session")? == 1))?;
        let log = g.boot(ctx, &c.ns, "vhu", &["vhu_ping"], &[("VHU_SOCK", &sock), ("MEM", "512M")])?;
        check_scenarios(&log, &["vhu_ping"])?;
        let st = d.stats()?;
        eprintln!(
            "[guest] vhost-user: {} connection(s), {} ARP replies, {} packets from the guest, {} to it",
            st.get("vhost_user_connections")?,
            st.get("vhost_user_arp_replies")?,
            st.workers_sum("inner_queue_rx_packets")?,
            st.workers_sum("inner_queue_tx_packets")?
        );
        ensure!(st.get("vhost_user_connections")? == 1 && st.get("vhost_user_bad_descriptors")? == 0, "{st:?}");
        ensure!(st.get("vhost_user_protocol_errors")? == 0, "{st:?}");
        ensure!(st.workers_sum("inner_queue_tx_packets")? >= 8 && st.workers_sum("data_tx")? >= 8);
        d.ensure_running()?;
        d.stop()
    });
}
