//! Test scaffolding: a network namespace per test, entered by the test's thread only.
//!
//! `ip netns add` makes it; the test thread `setns(2)`s into it (other tests' threads stay where
//! they are), so sockets, TUN devices and interface ioctls of that thread live in it. Dropping
//! [`NetNs`] puts the thread back and deletes the namespace, and with it every interface inside,
//! also when the test panics. Must run as root.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nic_backends::{Buffer, Pool, Queue};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
    home: File,
}

fn setns(f: &File) {
    // SAFETY: setns(2) on an open namespace fd we own; it changes only this thread's network
    // namespace and touches no memory of ours.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {} (tests must run as root)", std::io::Error::last_os_error());
}

impl NetNs {
    /// Create `nicb-TAG-PID-N` and move this thread into it.
    pub fn enter(tag: &str) -> NetNs {
        let name = format!("nicb-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name]);
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = NetNs { name, home };
        let target = File::open(format!("/run/netns/{}", ns.name)).expect("new netns");
        setns(&target);
        ns
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &str) {
        let mut a = vec!["-n", &self.name];
        a.extend(args.split_whitespace());
        run("ip", &a);
    }

    /// `ip -n NS ARGS`: (success, stdout).
    pub fn ip_try(&self, args: &str) -> (bool, String) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend(args.split_whitespace());
        let o = Command::new("ip").args(&a).output().expect("run ip");
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        setns(&self.home);
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// Poll `q` until `pred` holds for what has been received (or 5 s pass); returns it all.
pub fn rx_until(q: &mut dyn Queue, pool: &Pool, mut pred: impl FnMut(&[Buffer]) -> bool) -> Vec<Buffer> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while !pred(&got) && Instant::now() < deadline {
        if q.rx_burst(pool, &mut got, 32) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// Everything `q` receives in `d`.
pub fn rx_for(q: &mut dyn Queue, pool: &Pool, d: Duration) -> Vec<Buffer> {
    let deadline = Instant::now() + d;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if q.rx_burst(pool, &mut got, 32) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}
