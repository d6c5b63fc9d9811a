//! [`StopOnce`]: the device's stop action (reset, bus mastering off), run exactly once however
//! many threads ask for it (a queue dropped on one core while a pool's last buffer is freed on
//! another), and never returning to a caller before it has finished.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

/// A stop action run once: the first caller runs it, every other caller (also a concurrent
/// one) waits until it has finished. `started` turns true when the first caller begins it.
#[derive(Debug)]
pub(crate) struct StopOnce {
    started: AtomicBool,
    done: Once,
}

impl Default for StopOnce {
    fn default() -> Self {
        StopOnce { started: AtomicBool::new(false), done: Once::new() }
    }
}

impl StopOnce {
    /// Runs `f` if no caller has run it yet; in every case returns only once it has finished.
    pub(crate) fn run(&self, f: impl FnOnce()) {
        // `started` is set inside `call_once`: whoever sees it set and calls `run` blocks until
        // `f` has finished (set before `call_once`, a caller could see it and win the race).
        self.done.call_once(|| {
            self.started.store(true, Ordering::Release);
            f()
        });
    }

    /// Whether a caller has begun the action (it may still be running).
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// A second `quiesce` that arrives while the first is still resetting the device must wait
    /// for it: its caller frees the posted buffers and unmaps the DMA memory when it returns (the
    /// old `AtomicBool::swap` let it return at once).
    #[test]
    fn a_concurrent_quiesce_waits_for_the_reset() {
        let stop = Arc::new(StopOnce::default());
        let reset_done = Arc::new(AtomicBool::new(false));
        let (s, d) = (stop.clone(), reset_done.clone());
        let first = std::thread::spawn(move || {
            s.run(|| {
                std::thread::sleep(Duration::from_millis(200));
                d.store(true, Ordering::Release);
            })
        });
        while !stop.started() {
            std::thread::yield_now();
        }
        stop.run(|| panic!("the reset runs once"));
        assert!(reset_done.load(Ordering::Acquire), "returned before the reset finished");
        first.join().unwrap();
        stop.run(|| panic!("the reset runs once"));
    }
}
