//! CPU time of threads, in nanoseconds: our own (`CLOCK_THREAD_CPUTIME_ID`) and another
//! thread's of this process (the daemon's workers), found by name in `/proc/self/task`.
//!
//! Another thread's CPU clock is the clock id Linux derives from its thread id
//! (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)` = `(!tid << 3) | 6`, what glibc's
//! `pthread_getcpuclockid` returns). Unlike `/proc/.../stat` (10 ms ticks) or `schedstat`
//! (updated at the scheduler tick while the thread runs), `clock_gettime` on it brings the
//! running thread's sum up to date first, so a few milliseconds of busy worker read exactly.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

/// A thread's CPU clock.
#[derive(Debug, Clone, Copy)]
pub struct ThreadClock(ClockId);

impl ThreadClock {
    /// The calling thread's clock.
    pub fn current() -> Self {
        ThreadClock(ClockId::CLOCK_THREAD_CPUTIME_ID)
    }

    /// The clock of thread `tid` (Linux: the thread's scheduler clock).
    pub fn of_tid(tid: i32) -> Self {
        ThreadClock(ClockId::from_raw((!tid << 3) | 6))
    }

    /// CPU time the thread has used, or `None` once it has exited.
    pub fn now_ns(&self) -> Option<u64> {
        let t = clock_gettime(self.0).ok()?;
        Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }
}

/// Sum of several threads' CPU time (`None` if one of them has exited).
pub fn sum_ns(clocks: &[ThreadClock]) -> Option<u64> {
    clocks.iter().map(ThreadClock::now_ns).sum()
}

/// The calling thread's id (`/proc/thread-self` links to `<pid>/task/<tid>`).
pub fn current_tid() -> Option<i32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Thread ids of this process now.
pub fn tids() -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return BTreeSet::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The id of a thread named `name` that is not in `before`, waiting up to `timeout` for it to
/// appear.
pub fn wait_for_thread(name: &str, before: &BTreeSet<i32>, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        for tid in tids() {
            if before.contains(&tid) {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
            if comm.trim_end() == name {
                return Some(tid);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_threads_clock_reads_what_it_reads_itself() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(move || {
                // Spin until this thread has run 20 ms (the machine may be busy).
                let own = ThreadClock::current();
                let mut x = 0u64;
                while own.now_ns().unwrap() < 20_000_000 {
                    for _ in 0..1000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
                tx.send((current_tid().unwrap(), ThreadClock::current().now_ns().unwrap())).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        let (tid, own) = rx.recv().unwrap();
        let other = ThreadClock::of_tid(tid).now_ns().unwrap();
        done_tx.send(()).unwrap();
        h.join().unwrap();
        assert!(own >= 20_000_000, "{own} ns");
        assert!(other >= own && other - own < 5_000_000, "own {own} ns, seen from outside {other} ns");
        // `join` returns once the thread cleared its tid; the kernel drops the task (and its
        // /proc entry) a moment later.
        let gone = Instant::now();
        while ThreadClock::of_tid(tid).now_ns().is_some() && gone.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ThreadClock::of_tid(tid).now_ns().is_none(), "exited");
    }

    #[test]
    fn threads_are_found_by_name() {
        let before = tids();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new().name("cpu-test-find".into()).spawn(move || done_rx.recv()).unwrap();
        let tid = wait_for_thread("cpu-test-find", &before, Duration::from_secs(5)).unwrap();
        assert!(ThreadClock::of_tid(tid).now_ns().is_some());
        done_tx.send(()).unwrap();
        let _ = h.join();
        assert_eq!(wait_for_thread("cpu-test-none", &before, Duration::ZERO), None);
    }
}
