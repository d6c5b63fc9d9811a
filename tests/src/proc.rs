//! A spawned process, stopped on drop, its output in a log file.

use crate::ctx::Ctx;
use crate::netns::{is_gone, terminate, unregister_pid, Netns};
use crate::util::tail_file;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A process started inside a namespace. Its stdout and stderr go to one log file (`<name>.log`
/// in the test's [`Ctx`] directory, printed by [`crate::run`] if the test fails). On drop it gets
/// SIGTERM, then SIGKILL if it has not exited after the grace period (5 s by default).
pub struct Proc {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: PathBuf,
    grace: Duration,
    // Keeps the namespace alive as long as the process may run in it.
    _ns: Netns,
}

impl Proc {
    /// Starts `args` in `ns` with extra environment `envs`, logging to `<ctx dir>/<name>.log`.
    pub fn spawn(ctx: &Ctx, ns: &Netns, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Proc> {
        Self::spawn_logged(ns, name, args, envs, &ctx.log_path(name))
    }

    /// [`Proc::spawn`] with an explicit log file path.
    pub fn spawn_logged(ns: &Netns, name: &str, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Result<Proc> {
        let file = std::fs::File::create(log).with_context(|| format!("cannot create log file {}", log.display()))?;
        let file2 = file.try_clone()?;
        let child = ns.spawn(args, envs, Stdio::from(file), Stdio::from(file2))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            status: None,
            log: log.to_path_buf(),
            grace: Duration::from_secs(5),
            _ns: ns.clone(),
        })
    }

    /// Sets how long [`Proc::stop`] waits after SIGTERM before SIGKILL.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID (of the program itself: `ip netns exec` execs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The exit status if the process has exited (reaping it), None while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    unregister_pid(child.id());
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Fails, with the tail of the log, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.try_wait() {
            bail!("{} exited ({st}); last lines of its log:\n{}", self.name, self.log_tail(30));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {:.1} s", self.name, timeout.as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after the grace period; returns the exit status. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let pid = self.pid();
            if pid != 0 && !is_gone(pid) {
                terminate(&[pid], self.grace);
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(st) = child.wait() {
                    self.status = Some(st);
                }
                unregister_pid(child.id());
            }
        }
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proc({}, pid {}, log {})", self.name, self.pid(), self.log.display())
    }
}
