//! Per-test context (scratch and log directory) and the test runner.

use crate::util::{next_id, tail_file};
use anyhow::{Context, Result};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Serialises the e2e tests of one test binary: they start daemons and push traffic, and on a
/// small shared machine two at once would fight for CPU and time out.
static SERIAL: Mutex<()> = Mutex::new(());

/// The scratch directory of one test: process logs (`*.log`), generated configs, captures.
/// On drop it is removed if the test passed, or kept and its logs' tails printed if the test
/// failed (a panic, or [`Ctx::mark_failed`]). `WGPMD_E2E_KEEP=1` keeps it in every case.
pub struct Ctx {
    name: String,
    dir: PathBuf,
    failed: Cell<bool>,
    started: Instant,
}

impl Ctx {
    /// Creates `$TMPDIR/wgpmd-e2e-<name>-<pid>-<counter>/`.
    pub fn new(name: &str) -> Result<Ctx> {
        let dir = std::env::temp_dir().join(format!("wgpmd-e2e-{name}-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Ctx { name: name.to_string(), dir, failed: Cell::new(false), started: Instant::now() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path in the directory for a log named `name` (`<name>.log`, or `<name>-2.log`, ... if
    /// that is taken, so restarting a daemon keeps the first log).
    pub fn log_path(&self, name: &str) -> PathBuf {
        let mut p = self.dir.join(format!("{name}.log"));
        let mut n = 2;
        while p.exists() {
            p = self.dir.join(format!("{name}-{n}.log"));
            n += 1;
        }
        p
    }

    /// Writes `contents` to `<dir>/<file>` with mode 0600 (configs hold private keys).
    pub fn write_file(&self, file: &str, contents: &str) -> Result<PathBuf> {
        let p = self.dir.join(file);
        crate::util::write_private(&p, contents)?;
        Ok(p)
    }

    /// Makes the drop print the logs and keep the directory even without a panic.
    pub fn mark_failed(&self) {
        self.failed.set(true);
    }

    /// Prints the tail of every `*.log` in the directory to stderr.
    pub fn print_logs(&self, lines: usize) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for p in logs {
            eprintln!("----- {} (last {lines} lines) -----", p.display());
            eprint!("{}", tail_file(&p, lines));
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        if std::thread::panicking() || self.failed.get() {
            eprintln!("[e2e] {} FAILED after {secs:.1} s", self.name);
            self.print_logs(40);
            eprintln!("[e2e] logs and configs kept in {}", self.dir.display());
        } else if std::env::var_os("WGPMD_E2E_KEEP").is_some_and(|v| v == "1") {
            eprintln!("[e2e] {} passed in {secs:.1} s; kept {}", self.name, self.dir.display());
        } else {
            eprintln!("[e2e] {} passed in {secs:.1} s", self.name);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs one e2e test: takes the serialising lock, checks the tools ([`crate::require_tools`]),
/// creates the [`Ctx`], runs `body`. Everything `body` creates is dropped (namespaces deleted,
/// processes stopped) before the context, so the logs are complete when they are printed.
/// An `Err` from `body` fails the test with the error chain, after printing the logs.
pub fn run(name: &str, body: impl FnOnce(&Ctx) -> Result<()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = crate::tools::require_tools() {
        panic!("{e:#}");
    }
    let ctx = Ctx::new(name).unwrap_or_else(|e| panic!("{e:#}"));
    let result = body(&ctx);
    if let Err(e) = result {
        ctx.mark_failed();
        drop(ctx);
        // The error chain, without anyhow's backtrace (RUST_BACKTRACE=1 would add one).
        let mut msg = format!("{name}: {e}");
        for cause in e.chain().skip(1) {
            msg.push_str(&format!("\n  caused by: {cause}"));
        }
        panic!("{msg}");
    }
}
