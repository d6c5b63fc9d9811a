//! The wgpmd daemon under test: `wgpmd run` in a namespace (AF_PACKET on a veth, TUN inner),
//! its counters (`wgpmd stats`), its UAPI socket, and a stop that checks it left nothing behind.

use crate::ctx::Ctx;
use crate::netns::Netns;
use crate::proc::Proc;
use crate::topology::Topology;
use crate::util::{check_output, describe, host, secs, unique_ifname, wait_until};
use crate::wg::{wg_show, DeviceConfig, WgShow, UAPI_DIR};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Directory of wgpmd's stats sockets (`/var/run/wgpmd/<name>.sock`).
pub const STATS_DIR: &str = "/var/run/wgpmd";

/// The wgpmd binary: `$WGPMD_BIN` if set, else `wgpmd` in the target profile directory of this
/// test executable (`target/<profile>/deps/<test>-<hash>` -> `target/<profile>/wgpmd`). The
/// e2e crate uses only the protocol core, wgpmd-proto, as a library (a dev-dependency), so
/// `cargo test -p wgpmd-e2e` does not build the binary: scripts/test.sh builds the workspace
/// first. Fails, saying how to build it, if absent.
pub fn wgpmd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WGPMD_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "$WGPMD_BIN = {} is not a file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir =
        exe.parent().and_then(Path::parent).context("test executable has no target/<profile>/deps parent")?;
    let bin = profile_dir.join("wgpmd");
    ensure!(
        bin.is_file(),
        "the wgpmd binary is not at {} (the e2e tests do not build it): build it first: \
         cargo build --release -p wgpmd (or set WGPMD_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// How to run wgpmd, beyond its configuration file.
#[derive(Clone, Debug)]
pub struct WgpmdOptions {
    /// `-l`: cores, EAL list.
    pub lcores: String,
    /// `--control-shares-core`.
    pub control_shares_core: bool,
    /// `--fanout` (`hash`, `lb`); None: the default.
    pub fanout: Option<String>,
    /// Tunnel MTU (`--mtu`).
    pub mtu: u32,
    /// More arguments for `wgpmd run` (e.g. `--vlan 100`).
    pub extra_args: Vec<String>,
    /// The WAN port string; None: `af_packet:<wan_if>`. `{wan_if}` in it is replaced by the
    /// WAN interface (e.g. `dpdk:net_af_packet0` with `--vdev=net_af_packet0,iface={wan_if}`).
    pub port: Option<String>,
    /// DPDK EAL arguments, passed after `--` (`{wan_if}` replaced as in `port`).
    pub eal_args: Vec<String>,
    /// The inner port string (`--inner`); None: the default TUN named like the interface.
    /// With another inner port there is no TUN to wait for, address or check at stop.
    pub inner: Option<String>,
    /// More environment variables for the daemon (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// The interface name (first argument of `run`); None: a fresh [`unique_ifname`] (set it to restart a daemon under its name).
    pub name: Option<String>,
}

impl Default for WgpmdOptions {
    /// One worker on core 0, adaptive polling (the machine is shared), MTU 1420.
    fn default() -> Self {
        WgpmdOptions {
            lcores: "0".into(),
            control_shares_core: false,
            fanout: None,
            mtu: 1420,
            extra_args: Vec::new(),
            port: None,
            eal_args: Vec::new(),
            inner: None,
            env: Vec::new(),
            name: None,
        }
    }
}

/// wgpmd's counters (`wgpmd stats NAME`: `key=value` lines), by key.
#[derive(Clone, Debug, Default)]
pub struct Counters(pub HashMap<String, u64>);

impl Deref for Counters {
    type Target = HashMap<String, u64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Counters {
    pub fn parse(text: &str) -> Result<Counters> {
        let mut m = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').with_context(|| format!("stats line without `=`: {line:?}"))?;
            let v: u64 = v.trim().parse().with_context(|| format!("stats line {line:?}"))?;
            m.insert(k.trim().to_string(), v);
        }
        ensure!(!m.is_empty(), "empty stats output");
        Ok(Counters(m))
    }

    /// One counter; fails if wgpmd does not print it (a renamed counter must fail loudly).
    pub fn get(&self, key: &str) -> Result<u64> {
        self.0.get(key).copied().with_context(|| format!("wgpmd stats has no counter {key:?}"))
    }

    /// The number of workers (`worker<i>.wan_rx` keys).
    pub fn workers(&self) -> usize {
        (0..).take_while(|i| self.0.contains_key(&format!("worker{i}.wan_rx"))).count()
    }

    /// `worker<i>.<name>` for every worker, in order.
    pub fn per_worker(&self, name: &str) -> Result<Vec<u64>> {
        let n = self.workers();
        ensure!(n > 0, "wgpmd stats lists no worker");
        (0..n).map(|i| self.get(&format!("worker{i}.{name}"))).collect()
    }

    /// The sum of `worker<i>.<name>` over the workers.
    pub fn workers_sum(&self, name: &str) -> Result<u64> {
        Ok(self.per_worker(name)?.iter().sum())
    }

    /// A device counter over the whole daemon: `control.<name>` plus every `worker<i>.<name>`
    /// (the workers process incoming handshakes, the control core initiates).
    pub fn total(&self, name: &str) -> Result<u64> {
        Ok(self.get(&format!("control.{name}"))? + self.workers_sum(name)?)
    }
}

/// A running `wgpmd run` in a namespace. Its log (stderr, `-v`) is `<ifname>.log` in the test
/// directory. [`Wgpmd::stop`] is the checked shutdown (SIGTERM, exit 0, nothing left behind);
/// dropping it without `stop` kills it and removes whatever it left.
pub struct Wgpmd {
    ns: Netns,
    ifname: String,
    wan_if: String,
    conf_path: PathBuf,
    proc: Proc,
    stopped: bool,
    /// The inner port is the TUN named like the interface.
    tun: bool,
}

impl Wgpmd {
    /// Starts wgpmd in `ns` on WAN port `af_packet:<wan_if>` with WAN address `wan_addr`
    /// (CIDR; the kernel must hold no address on `wan_if`: wgpmd answers ARP and ping itself),
    /// configured from `cfg` (written as a wg.conf(5) file for `--config`). Waits for the UAPI
    /// and stats sockets and the TUN interface, then gives the TUN `cfg.address` and brings it
    /// up.
    pub fn start(
        ctx: &Ctx,
        ns: &Netns,
        wan_if: &str,
        wan_addr: &str,
        cfg: &DeviceConfig,
        opts: &WgpmdOptions,
    ) -> Result<Wgpmd> {
        let bin = wgpmd_bin()?;
        let bin = bin.to_string_lossy().into_owned();
        let ifname = opts.name.clone().unwrap_or_else(|| unique_ifname("wpm"));
        let conf_path = ctx.write_file(&format!("{ifname}.conf"), &cfg.to_setconf())?;
        let conf = conf_path.to_string_lossy().into_owned();
        let port = opts.port.as_ref().map_or(format!("af_packet:{wan_if}"), |p| p.replace("{wan_if}", wan_if));
        let eal: Vec<String> = opts.eal_args.iter().map(|a| a.replace("{wan_if}", wan_if)).collect();
        let mtu = opts.mtu.to_string();
        let mut args: Vec<&str> = vec![
            &bin,
            "-v",
            "run",
            &ifname,
            "--config",
            &conf,
            "--port",
            &port,
            "--address",
            wan_addr,
            "-l",
            &opts.lcores,
            "--poll",
            "adaptive",
            "--mtu",
            &mtu,
        ];
        if opts.control_shares_core {
            args.push("--control-shares-core");
        }
        if let Some(f) = &opts.fanout {
            args.extend(["--fanout", f]);
        }
        if let Some(inner) = &opts.inner {
            args.extend(["--inner", inner]);
        }
        args.extend(opts.extra_args.iter().map(String::as_str));
        if !eal.is_empty() {
            args.push("--");
            args.extend(eal.iter().map(String::as_str));
        }
        let mut env: Vec<(&str, &str)> = vec![("NO_COLOR", "1")];
        env.extend(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut proc = Proc::spawn(ctx, ns, &ifname, &args, &env)?;
        proc.set_grace(secs(10));
        let tun = opts.inner.is_none();
        let mut d = Wgpmd { ns: ns.clone(), ifname, wan_if: wan_if.to_string(), conf_path, proc, stopped: false, tun };
        let (uapi, stats) = (d.uapi_socket(), d.stats_socket());
        let (ifname, ns2) = (d.ifname.clone(), ns.clone());
        wait_until(
            &format!("wgpmd {ifname}: sockets {} {} and TUN", uapi.display(), stats.display()),
            secs(30),
            || {
                d.proc.ensure_running()?;
                Ok((uapi.exists() && stats.exists() && (!tun || ns2.has_link(&ifname))).then_some(()))
            },
        )?;
        if !d.tun {
            return Ok(d);
        }
        if let Some(addr) = &cfg.address {
            d.ns.ip(&["addr", "add", addr, "dev", &d.ifname])?;
        }
        d.ns.ip(&["link", "set", "dev", &d.ifname, "up"])?;
        Ok(d)
    }

    /// Starts wgpmd as the concentrator of `topo`: its veth (after removing the kernel's
    /// address from it), WAN address `<concentrator outer ip>/24`, configuration `cfg` (usually
    /// [`Topology::concentrator_device`]).
    pub fn start_concentrator(ctx: &Ctx, topo: &Topology, cfg: &DeviceConfig, opts: &WgpmdOptions) -> Result<Wgpmd> {
        let c = &topo.concentrator;
        c.ns.ip(&["addr", "flush", "dev", &c.outer_if])?;
        Self::start(ctx, &c.ns, &c.outer_if, &format!("{}/24", c.outer_ip), cfg, opts)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn wan_if(&self) -> &str {
        &self.wan_if
    }

    /// The wg.conf file it was started with.
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("{UAPI_DIR}/{}.sock", self.ifname))
    }

    pub fn stats_socket(&self) -> PathBuf {
        PathBuf::from(format!("{STATS_DIR}/{}.sock", self.ifname))
    }

    /// Fails, with the end of the log, if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }

    /// `wgpmd stats <ifname>`, parsed. The socket is a file: this runs in the host namespace.
    pub fn stats(&self) -> Result<Counters> {
        let mut cmd = Command::new(wgpmd_bin()?);
        cmd.args(["stats", &self.ifname]);
        let desc = describe(&cmd);
        let out = crate::util::run_cmd(&mut cmd, secs(30))?;
        Counters::parse(&check_output(&desc, &out)?)
    }

    /// Waits until the counters satisfy `f` (workers publish every few iterations, the control
    /// core once per iteration), returning them.
    pub fn wait_stats(&self, what: &str, f: impl Fn(&Counters) -> Result<bool>) -> Result<Counters> {
        let mut last = None;
        wait_until(&format!("wgpmd counters: {what}"), secs(30), || {
            let c = self.stats()?;
            let ok = f(&c)?;
            last = Some(c.clone());
            Ok(ok.then_some(c))
        })
        .with_context(|| format!("last counters: {:?}", last.map(|c| sorted(&c))))
    }

    /// `wg show <ifname> dump`, parsed.
    pub fn show(&self) -> Result<WgShow> {
        wg_show(&self.ifname)
    }

    /// `wg showconf <ifname>`.
    pub fn showconf(&self) -> Result<String> {
        host(&["wg", "showconf", &self.ifname])
    }

    /// Sends one raw UAPI request (e.g. `"get=1\n\n"`) and returns the whole answer.
    pub fn uapi_request(&self, request: &str) -> Result<String> {
        let path = self.uapi_socket();
        let mut s = UnixStream::connect(&path).with_context(|| format!("connect {}", path.display()))?;
        s.set_read_timeout(Some(secs(15)))?;
        s.write_all(request.as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).with_context(|| format!("reading the answer of {}", path.display()))?;
        Ok(answer)
    }

    /// Waits up to `timeout` for the daemon to exit on its own (a test that makes it stop) and
    /// returns its status; the sockets it leaves are removed when this value is dropped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let st = self.proc.wait_timeout(timeout)?;
        self.stopped = true;
        Ok(st)
    }

    /// The checked shutdown: SIGTERM, then the daemon must exit with status 0 within the grace
    /// period (10 s, scaled) and leave no UAPI socket, no stats socket and no TUN interface.
    pub fn stop(&mut self) -> Result<()> {
        self.stopped = true;
        let status = self.proc.stop();
        let tail = || self.proc.log_tail(20);
        let status: ExitStatus = status.with_context(|| format!("wgpmd {}: no exit status", self.ifname))?;
        ensure!(
            status.code() == Some(0),
            "wgpmd {} did not exit 0 on SIGTERM: {status}; last lines of its log:\n{}",
            self.ifname,
            tail()
        );
        let mut left = Vec::new();
        for p in [self.uapi_socket(), self.stats_socket()] {
            if p.exists() {
                left.push(p.display().to_string());
                let _ = std::fs::remove_file(&p);
            }
        }
        if self.tun && self.ns.has_link(&self.ifname) {
            left.push(format!("TUN interface {} in {}", self.ifname, self.ns));
        }
        if !left.is_empty() {
            bail!("wgpmd {} exited 0 but left behind: {}", self.ifname, left.join(", "));
        }
        Ok(())
    }
}

impl Drop for Wgpmd {
    fn drop(&mut self) {
        if !self.stopped {
            // Not stopped through `stop`: the test failed. Keep the counters for the post-mortem
            // (`<ifname>-counters.log`, printed with the other logs).
            if self.proc.is_running() {
                let text = match self.stats() {
                    Ok(c) => sorted(&c).into_iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
                    Err(e) => format!("cannot read the counters: {e:#}\n"),
                };
                if let Some(dir) = self.proc.log_path().parent() {
                    let p = dir.join(format!("{}-counters.log", self.ifname));
                    let _ = std::fs::write(p, format!("non-zero counters at teardown:\n{text}"));
                }
            }
            self.proc.stop();
        }
        // Our interface name is unique: sockets left by a killed daemon are ours to remove.
        let _ = std::fs::remove_file(self.uapi_socket());
        let _ = std::fs::remove_file(self.stats_socket());
    }
}

impl std::fmt::Debug for Wgpmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wgpmd({} in {}, WAN {})", self.ifname, self.ns, self.wan_if)
    }
}

fn sorted(c: &Counters) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = c.0.iter().filter(|(_, v)| **v != 0).map(|(k, v)| (k.clone(), *v)).collect();
    v.sort();
    v
}

/// The result of a wgpmd run that was expected to fail at startup.
#[derive(Debug)]
pub struct FailedRun {
    pub status: ExitStatus,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs `wgpmd args...` (prefixed by `wrapper`, e.g. `setpriv ...`) in `ns` to completion and
/// returns its status and output; fails if it is still running after `timeout` (then killed).
/// For operator errors, which must end the daemon at startup.
pub fn wgpmd_run_to_exit(ns: &Netns, wrapper: &[&str], args: &[&str], timeout: Duration) -> Result<FailedRun> {
    let bin = wgpmd_bin()?;
    let bin = bin.to_string_lossy().into_owned();
    let mut v: Vec<&str> = wrapper.to_vec();
    v.push(&bin);
    v.extend_from_slice(args);
    let out =
        ns.exec_timeout(&v, timeout).with_context(|| format!("wgpmd {args:?} was expected to exit at startup"))?;
    Ok(FailedRun {
        status: out.status,
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    })
}

/// Runs `wgpmd args...` (prefixed by `wrapper`) in `ns` until it either exits (`Ok(Some(run))`,
/// its status and output) or says it is ready: `READY=1` on a `$NOTIFY_SOCKET` this function
/// listens on in `dir` (then it is killed: `Ok(None)`). Fails if neither happens within
/// `timeout` (then killed). For finding where start-up fails without waiting out every start
/// that succeeds. The child stays in this thread's hands until it is reaped, so a kill can only
/// reach it, never a process that reused its pid.
pub fn wgpmd_start_or_exit(
    ns: &Netns,
    dir: &Path,
    wrapper: &[&str],
    args: &[&str],
    timeout: Duration,
) -> Result<Option<FailedRun>> {
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;
    /// Removes the notify socket and forgets the pid however the function returns.
    struct Cleanup {
        path: PathBuf,
        pid: Option<u32>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
            if let Some(pid) = self.pid {
                crate::netns::unregister_pid(pid);
            }
        }
    }
    let path = dir.join(format!("notify-{}.sock", unique_ifname("n")));
    // sun_path holds 108 bytes with its terminating NUL.
    ensure!(path.as_os_str().len() < 108, "{}: too long for a unix socket address (TMPDIR?)", path.display());
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let mut cleanup = Cleanup { path: path.clone(), pid: None };
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let bin = wgpmd_bin()?.to_string_lossy().into_owned();
    let mut v: Vec<&str> = wrapper.to_vec();
    v.push(&bin);
    v.extend_from_slice(args);
    let notify = path.to_string_lossy().into_owned();
    let mut child = ns.spawn(&v, &[("NOTIFY_SOCKET", &notify)], Stdio::piped(), Stdio::piped())?;
    cleanup.pid = Some(child.id());
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for wgpmd")? {
            break Some(status);
        }
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                break None;
            }
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wgpmd {args:?} neither exited nor became ready within {:.1} s (killed)", timeout.as_secs_f64());
        }
    };
    if status.is_none() {
        // Not reaped yet (try_wait saw it running), so the pid is still this child's.
        let _ = child.kill();
        let _ = child.wait();
    }
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    Ok(status.map(|status| FailedRun {
        status,
        output: format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stats() {
        let c = Counters::parse(
            "worker0.wan_rx=5\nworker0.data_rx=3\nworker1.wan_rx=1\nworker1.data_rx=4\n\
             control.drop.InvalidMac1=2\n",
        )
        .unwrap();
        assert_eq!(c.workers(), 2);
        assert_eq!(c.per_worker("data_rx").unwrap(), vec![3, 4]);
        assert_eq!(c.workers_sum("wan_rx").unwrap(), 6);
        assert_eq!(c.get("control.drop.InvalidMac1").unwrap(), 2);
        assert!(c.total("drop.InvalidMac1").is_err(), "no worker prints it here");
        let c = Counters::parse(
            "worker0.wan_rx=1\nworker0.sessions=2\nworker1.wan_rx=1\nworker1.sessions=3\ncontrol.sessions=4\n",
        )
        .unwrap();
        assert_eq!(c.total("sessions").unwrap(), 9);
        assert!(c.get("control.nope").is_err());
        assert!(Counters::parse("a=b\n").is_err());
        assert!(Counters::parse("").is_err());
    }
}
