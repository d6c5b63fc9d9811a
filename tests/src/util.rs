//! Small helpers: commands with a deadline, polling, unique names, timeout scaling.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (starts at 0).
pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A name unique on this machine and at most 15 bytes (IFNAMSIZ - 1):
/// `<prefix><pid in hex>x<counter>`. Use it for everything whose namespace is global, such as
/// UAPI interface names (`/var/run/wireguard/<ifname>.sock` is shared by all network namespaces).
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!("{prefix}{:x}x{}", std::process::id(), next_id());
    assert!(name.len() <= 15, "interface name {name:?} longer than 15 bytes: shorten the prefix");
    name
}

/// Multiplier for every timeout in the harness, from `WGPMD_E2E_TIMEOUT_SCALE` (default 1.0).
/// Raise it on a very slow machine instead of editing tests.
pub fn timeout_scale() -> f64 {
    std::env::var("WGPMD_E2E_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| *f > 0.0)
        .unwrap_or(1.0)
}

/// `n` seconds, multiplied by [`timeout_scale`]. Use it for deadlines, not for test durations.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 * timeout_scale())
}

/// Polls `f` every 100 ms until it returns `Ok(Some(v))` (-> `Ok(v)`) or an error (returned at
/// once), failing after `timeout` with a message naming `what` and the last state seen.
/// `f` returns `Ok(None)` for "not yet".
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.1} s waiting for {what}", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it (SIGKILL) if it is still
/// running after `timeout`. The exit status is not checked: see `check_output`.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{desc}`"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let _ = waiter.join();
            out.with_context(|| format!("waiting for `{desc}`"))
        }
        Err(_) => {
            // Our own direct child, still unreaped (the waiter thread reaps it after the kill).
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            let _ = waiter.join();
            bail!("`{desc}` did not finish within {:.1} s (killed)", timeout.as_secs_f64())
        }
    }
}

/// The stdout of a finished command as a string, or an error with its stderr if it failed.
pub(crate) fn check_output(desc: &str, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a host command (`ip netns add`, `ip -n NS ...`, `wg ...`) and returns its stdout,
/// failing with its stderr if it exits non-zero.
pub(crate) fn host(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let desc = describe(&cmd);
    let out = run_cmd(&mut cmd, secs(60))?;
    check_output(&desc, &out)
}

/// Writes `contents` to `path` with mode 0600 (configs hold private keys).
pub(crate) fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The last `n` lines of a text file (empty if unreadable).
pub(crate) fn tail_file(path: &std::path::Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut s = String::new();
    if start > 0 {
        s.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for l in &lines[start..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_are_unique_and_short() {
        let a = unique_ifname("wg");
        let b = unique_ifname("wg");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15);
    }

    #[test]
    fn run_cmd_kills_on_timeout() {
        let t = Instant::now();
        let err = run_cmd(Command::new("sleep").arg("30"), Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
