//! Network namespaces and veth pairs, removed on drop.

use crate::util::{check_output, describe, host, next_id, run_cmd, secs};
use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PIDs of the processes this test process started (through [`Netns::spawn`] or [`Netns::command`]
/// and [`crate::Proc`]). Only these, and their descendants, are ever killed by the harness.
static STARTED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

pub(crate) fn register_pid(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(pid);
}

pub(crate) fn unregister_pid(pid: u32) {
    if let Some(set) = STARTED.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(&pid);
    }
}

fn is_registered(pid: u32) -> bool {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| s.contains(&pid))
}

/// State and parent of a process from /proc/PID/stat, or None if it is gone.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses; split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Environment variable set on every command started in a namespace ([`Netns::command`]), to the
/// namespace's name. Descendants inherit it, also those that daemonise (reparented away from us),
/// so it identifies the processes we started there.
pub const OWNER_ENV: &str = "WGPMD_E2E_NETNS";

fn has_owner_marker(pid: u32, ns: &str) -> bool {
    let want = format!("{OWNER_ENV}={ns}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
        .unwrap_or(false)
}

/// True if `pid` is a process we started in namespace `ns`: it carries our [`OWNER_ENV`] marker,
/// or it descends from a process we registered or from this test process.
fn started_by_us(pid: u32, ns: &str) -> bool {
    if has_owner_marker(pid, ns) {
        return true;
    }
    let me = std::process::id();
    let mut p = pid;
    for _ in 0..64 {
        if p == me || is_registered(p) {
            return true;
        }
        match proc_stat(p) {
            Some((_, ppid)) if ppid > 1 => p = ppid,
            _ => return false,
        }
    }
    false
}

/// True once `pid` has exited (a zombie counts as exited). Reaps a zombie child of this process
/// unless it is registered (its [`crate::Proc`] reaps it, to get the exit status).
pub(crate) fn is_gone(pid: u32) -> bool {
    match proc_stat(pid) {
        None => true,
        Some(('Z', ppid)) => {
            if ppid == std::process::id() && !is_registered(pid) {
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
            }
            true
        }
        Some(_) => false,
    }
}

/// Sends SIGTERM to `pids`, waits up to `grace` for them to exit, then SIGKILLs the rest.
pub(crate) fn terminate(pids: &[u32], grace: Duration) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !pids.iter().all(|&p| is_gone(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| !is_gone(p)) {
        eprintln!("[e2e] pid {pid} ignored SIGTERM for {:.1} s: SIGKILL", grace.as_secs_f64());
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pids.iter().all(|&p| is_gone(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct NetnsInner {
    name: String,
}

/// A network namespace with a unique name (`e2e-<label>-<pid>-<counter>`), deleted when the last
/// handle is dropped. Cloning is cheap (shared handle): guards that live inside a namespace
/// ([`crate::Proc`], [`VethPair`]) keep a clone, so the namespace outlives them.
///
/// On drop, processes still inside it that this test process started (directly, or their
/// descendants: see [`OWNER_ENV`]) are terminated first (SIGTERM, SIGKILL after 5 s); any other
/// process found inside is reported and left alone.
#[derive(Clone)]
pub struct Netns(Arc<NetnsInner>);

impl Netns {
    /// Creates the namespace and brings its loopback up. `label` should be short and
    /// descriptive (`conc`, `peer0`): it appears in `ip netns list` and in error messages.
    pub fn new(label: &str) -> Result<Netns> {
        let name = format!("e2e-{label}-{}-{}", std::process::id(), next_id());
        host(&["ip", "netns", "add", &name])?;
        let ns = Netns(Arc::new(NetnsInner { name }));
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A `Command` running `args` inside the namespace (`ip netns exec NAME args...`).
    /// `ip netns exec` execs, so the child's PID is the program's own.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).args(args).env(OWNER_ENV, self.name());
        cmd
    }

    /// Runs `args` inside the namespace to completion (deadline 120 s, scaled) and returns its
    /// output; the exit status is not checked (see [`Netns::run`]).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        self.exec_timeout(args, secs(120))
    }

    /// [`Netns::exec`] with an explicit deadline.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_cmd(&mut self.command(args), timeout)
    }

    /// Runs `args` inside the namespace and returns its stdout; fails if it exits non-zero.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let cmd = self.command(args);
        let out = self.exec(args)?;
        check_output(&describe(&cmd), &out)
    }

    /// Starts `args` inside the namespace with the given extra environment and stdio. The PID is
    /// registered as ours; prefer [`crate::Proc`], which also kills it on drop.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)], stdout: Stdio, stderr: Stdio) -> Result<Child> {
        let mut cmd = self.command(args);
        cmd.envs(envs.iter().copied()).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
        register_pid(child.id());
        Ok(child)
    }

    /// `ip -n NAME args...`, stdout returned, failing on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", self.name()];
        v.extend_from_slice(args);
        host(&v)
    }

    /// `sysctl -w key=value` inside the namespace (e.g. `net.ipv4.ip_forward`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// PIDs of all processes inside the namespace (`ip netns pids NAME`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let out = host(&["ip", "netns", "pids", self.name()])?;
        Ok(out.split_whitespace().filter_map(|s| s.parse().ok()).collect())
    }

    /// Sends one UDP datagram from inside the namespace (an ephemeral port, the kernel's
    /// routing and ARP), from a thread of this process that joins the namespace with setns(2)
    /// and exits afterwards. For crafted packets such as a handshake with a bad MAC.
    pub fn udp_send(&self, to: std::net::SocketAddr, payload: &[u8]) -> Result<()> {
        let path = format!("/var/run/netns/{}", self.name());
        let payload = payload.to_vec();
        std::thread::spawn(move || -> Result<()> {
            // Only this thread changes namespace, and it ends right after the send.
            enter_netns_path(&path)?;
            let s = std::net::UdpSocket::bind("0.0.0.0:0").context("bind a UDP socket")?;
            let n = s.send_to(&payload, to).with_context(|| format!("send to {to}"))?;
            anyhow::ensure!(n == payload.len(), "short send: {n} of {} bytes", payload.len());
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the udp_send thread panicked"))?
    }

    /// The namespace's counters of one protocol (`Udp`, `Icmp`, `Ip`, ...) from
    /// `/proc/net/snmp`, by name.
    pub fn snmp(&self, proto: &str) -> Result<std::collections::HashMap<String, u64>> {
        let text = self.run(&["cat", "/proc/net/snmp"])?;
        let prefix = format!("{proto}:");
        let rows: Vec<Vec<&str>> =
            text.lines().filter(|l| l.starts_with(&prefix)).map(|l| l.split_whitespace().skip(1).collect()).collect();
        anyhow::ensure!(rows.len() == 2, "no {prefix} lines in /proc/net/snmp of {self}: {text}");
        Ok(rows[0].iter().zip(&rows[1]).filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?))).collect())
    }

    /// The namespace's UDP counters (`InDatagrams`, `RcvbufErrors`, `SndbufErrors`, ...): the
    /// kernel's count of datagrams it dropped for a full socket buffer, e.g. under a userspace
    /// WireGuard daemon that falls behind.
    pub fn udp_counters(&self) -> Result<std::collections::HashMap<String, u64>> {
        self.snmp("Udp")
    }

    /// One counter of [`Netns::snmp`], e.g. `("Icmp", "InEchoReps")`.
    pub fn snmp_counter(&self, proto: &str, name: &str) -> Result<u64> {
        self.snmp(proto)?.get(name).copied().with_context(|| format!("no {proto} {name} in /proc/net/snmp of {self}"))
    }

    /// True if an interface of that name exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", self.name(), "link", "show", "dev", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        matches!(out, Ok(s) if s.success())
    }
}

/// Moves the calling thread (only it) into network namespace `name` (a name under
/// /var/run/netns, as [`Netns::name`] gives it). Meant for a thread spawned for the purpose:
/// sockets it opens afterwards belong to that namespace.
pub fn enter_netns(name: &str) -> Result<()> {
    enter_netns_path(&format!("/var/run/netns/{name}"))
}

fn enter_netns_path(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.name())
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        let name = &self.name;
        if let Ok(out) = host(&["ip", "netns", "pids", name]) {
            let pids: Vec<u32> = out.split_whitespace().filter_map(|s| s.parse().ok()).collect();
            let (ours, others): (Vec<u32>, Vec<u32>) = pids.into_iter().partition(|&p| started_by_us(p, name));
            if !ours.is_empty() {
                eprintln!("[e2e] netns {name}: stopping processes still inside: {ours:?}");
                terminate(&ours, Duration::from_secs(5));
            }
            if !others.is_empty() {
                eprintln!(
                    "[e2e] netns {name}: processes not started by this test are inside, left \
                     alone: {others:?}"
                );
            }
        }
        let mut last_err = None;
        for _ in 0..5 {
            match host(&["ip", "netns", "del", name]) {
                Ok(_) => return,
                Err(e) => last_err = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(e) = last_err {
            eprintln!("[e2e] cannot delete netns {name}: {e:#}");
        }
    }
}

/// A veth pair with end `a_if` in namespace `a` and end `b_if` in namespace `b`, both up, with
/// optional addresses (CIDR, e.g. `10.99.0.1/24`). Deleted on drop (deleting either end removes
/// both; deleting a namespace also removes its end).
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl VethPair {
    pub fn new(a: &Netns, a_addr: Option<&str>, b: &Netns, b_addr: Option<&str>) -> Result<VethPair> {
        Self::with_queues(a, a_addr, b, b_addr, 1)
    }

    /// [`VethPair::new`] with `queues` receive and transmit queues on each end (an AF_XDP
    /// port binds one socket per queue).
    pub fn with_queues(
        a: &Netns,
        a_addr: Option<&str>,
        b: &Netns,
        b_addr: Option<&str>,
        queues: usize,
    ) -> Result<VethPair> {
        // The ends are created directly inside their namespaces, never in the host namespace;
        // the names are unique anyway, to make logs and captures unambiguous.
        let a_if = crate::util::unique_ifname("va");
        let b_if = crate::util::unique_ifname("vb");
        let q = queues.to_string();
        host(&[
            "ip",
            "link",
            "add",
            &a_if,
            "netns",
            a.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        let pair = VethPair { a: a.clone(), b: b.clone(), a_if, b_if };
        for (ns, ifname, addr) in [(a, &pair.a_if, a_addr), (b, &pair.b_if, b_addr)] {
            if let Some(addr) = addr {
                ns.ip(&["addr", "add", addr, "dev", ifname])?;
            }
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(pair)
    }

    /// Attaches end A to bridge `bridge` (an existing bridge in namespace A).
    pub fn attach_a_to_bridge(&self, bridge: &str) -> Result<()> {
        self.a.ip(&["link", "set", &self.a_if, "master", bridge])?;
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        if self.a.has_link(&self.a_if) {
            if let Err(e) = self.a.ip(&["link", "del", &self.a_if]) {
                eprintln!("[e2e] cannot delete veth {} in {}: {e:#}", self.a_if, self.a);
            }
        }
    }
}
