//! The receive-side replay window: which message counters one keypair has already accepted.
//!
//! Follows the kernel's `counter_validate` (drivers/net/wireguard/receive.c), which is RFC 6479's
//! bitmap without bit shifts: a ring of [`COUNTER_BITS_TOTAL`] bits in 64-bit words, of which
//! [`COUNTER_WINDOW_SIZE`] are usable (one word is "redundant": it is being recycled as the window
//! slides). State and rules:
//! - `counter` is one more than the highest counter accepted so far (0 before any);
//! - a counter at or beyond [`REJECT_AFTER_MESSAGES`] is refused, and so is every counter once
//!   `counter` has gone past `REJECT_AFTER_MESSAGES`;
//! - a counter more than the window behind `counter` is refused as too old;
//! - a counter ahead of `counter` slides the window forward, clearing the words it enters;
//! - otherwise the counter is accepted if and only if its bit was clear, and the bit is set.
//!
//! [`ReplayWindow`] itself is single-threaded (`&mut self` to mark). `Keypair` shares it between
//! worker threads behind a `std::sync::Mutex` held only for the bit test, never across crypto; see
//! the `session` module documentation for why a lock and not a lock-free window.

use crate::messages::{COUNTER_BITS_TOTAL, COUNTER_REDUNDANT_BITS, COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES};

/// Bits per ring word (the kernel's `BITS_PER_LONG` on 64-bit machines).
const WORD_BITS: u64 = COUNTER_REDUNDANT_BITS;
/// Words in the ring.
const WORDS: usize = (COUNTER_BITS_TOTAL / WORD_BITS) as usize;
// The ring index is taken with a mask, so the word count must be a power of two.
const _: () = assert!(WORDS.is_power_of_two() && WORD_BITS == u64::BITS as u64);

/// Anti-replay bitmap of one receiving keypair (kernel `struct noise_replay_counter`). The counter
/// first (`repr(C)`): a keypair keeps it on the line of its key and the window's lock.
#[derive(Clone)]
#[repr(C)]
pub struct ReplayWindow {
    /// One more than the highest accepted counter (kernel `counter->counter`).
    counter: u64,
    /// The ring of bits (kernel `backtrack`).
    backtrack: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow").field("counter", &self.counter).finish_non_exhaustive()
    }
}

/// Ring slot of the word holding bit `n` (of the 1-based counter).
fn slot(word_index: u64) -> usize {
    // Masked to WORDS − 1, so the cast cannot truncate anything that matters.
    (word_index & (WORDS as u64 - 1)) as usize
}

impl ReplayWindow {
    /// An empty window: nothing accepted yet.
    pub const fn new() -> Self {
        ReplayWindow { counter: 0, backtrack: [0; WORDS] }
    }

    /// One more than the highest counter accepted so far (0 if none). The receive path refuses a
    /// keypair once this reaches [`REJECT_AFTER_MESSAGES`] (kernel `decrypt_packet`).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Whether [`validate`](Self::validate) would accept `counter` now, without marking it.
    ///
    /// This is the cheap pre-check done before spending a decryption on a message: a `false` here
    /// is final; a `true` must still be confirmed by `validate` after decryption, because another
    /// thread may accept the same counter in between.
    pub fn check(&self, counter: u64) -> bool {
        let Some(c) = self.admissible(counter) else {
            return false;
        };
        let index = c / WORD_BITS;
        if c > self.counter {
            let index_current = self.counter / WORD_BITS;
            if index > index_current {
                // `validate` clears the word holding `c` before testing it.
                return true;
            }
        }
        self.backtrack[slot(index)] & (1u64 << (c % WORD_BITS)) == 0
    }

    /// Accept `counter` and mark it, or refuse it (duplicate, too old, or at the message limit).
    /// Exactly the kernel's `counter_validate`.
    pub fn validate(&mut self, counter: u64) -> bool {
        let Some(c) = self.admissible(counter) else {
            return false;
        };
        let index = c / WORD_BITS;
        if c > self.counter {
            let index_current = self.counter / WORD_BITS;
            // Jumps beyond the whole ring clear every word once.
            let top = (index - index_current).min(WORDS as u64);
            for i in 1..=top {
                self.backtrack[slot(i + index_current)] = 0;
            }
            self.counter = c;
        }
        let bit = 1u64 << (c % WORD_BITS);
        let word = &mut self.backtrack[slot(index)];
        let was_set = *word & bit != 0;
        *word |= bit;
        !was_set
    }

    /// The limit and age checks shared by `check` and `validate`; the 1-based counter if they pass.
    fn admissible(&self, counter: u64) -> Option<u64> {
        // Kernel: `counter->counter >= REJECT_AFTER_MESSAGES + 1`.
        if self.counter > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return None;
        }
        // The kernel shifts to 1-based counters so that `counter == 0` means "nothing yet".
        // No overflow: counter < REJECT_AFTER_MESSAGES = u64::MAX − COUNTER_WINDOW_SIZE − 1.
        let c = counter + 1;
        if COUNTER_WINDOW_SIZE + c < self.counter {
            return None;
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const T_LIM: u64 = COUNTER_WINDOW_SIZE + 1;
    const R: u64 = REJECT_AFTER_MESSAGES;

    /// Runs `counter_validate` on `w`, first checking that `check` predicts the outcome.
    fn t(w: &mut ReplayWindow, n: u64, want: bool, case: &str) {
        assert_eq!(w.check(n), want, "check: {case} (counter {n})");
        assert_eq!(w.validate(n), want, "validate: {case} (counter {n})");
    }

    /// The 34 numbered cases of the kernel's selftest/counter.c, in order, on one window.
    #[test]
    fn kernel_selftest_table() {
        let table: [(u64, bool); 34] = [
            /*  1 */ (0, true),
            /*  2 */ (1, true),
            /*  3 */ (1, false),
            /*  4 */ (9, true),
            /*  5 */ (8, true),
            /*  6 */ (7, true),
            /*  7 */ (7, false),
            /*  8 */ (T_LIM, true),
            /*  9 */ (T_LIM - 1, true),
            /* 10 */ (T_LIM - 1, false),
            /* 11 */ (T_LIM - 2, true),
            /* 12 */ (2, true),
            /* 13 */ (2, false),
            /* 14 */ (T_LIM + 16, true),
            /* 15 */ (3, false),
            /* 16 */ (T_LIM + 16, false),
            /* 17 */ (T_LIM * 4, true),
            /* 18 */ (T_LIM * 4 - (T_LIM - 1), true),
            /* 19 */ (10, false),
            /* 20 */ (T_LIM * 4 - T_LIM, false),
            /* 21 */ (T_LIM * 4 - (T_LIM + 1), false),
            /* 22 */ (T_LIM * 4 - (T_LIM - 2), true),
            /* 23 */ (T_LIM * 4 + 1 - T_LIM, false),
            /* 24 */ (0, false),
            /* 25 */ (R, false),
            /* 26 */ (R - 1, true),
            /* 27 */ (R, false),
            /* 28 */ (R - 1, false),
            /* 29 */ (R - 2, true),
            /* 30 */ (R + 1, false),
            /* 31 */ (R + 2, false),
            /* 32 */ (R - 2, false),
            /* 33 */ (R - 3, true),
            /* 34 */ (0, false),
        ];
        let mut w = ReplayWindow::new();
        for (i, &(n, want)) in table.iter().enumerate() {
            t(&mut w, n, want, &format!("kernel case {}", i + 1));
        }
        assert_eq!(w.counter(), R);
    }

    #[test]
    fn kernel_full_window_ascending_then_zero() {
        let mut w = ReplayWindow::new();
        for i in 1..=COUNTER_WINDOW_SIZE {
            t(&mut w, i, true, "ascending");
        }
        t(&mut w, 0, true, "zero is exactly at the window edge");
        t(&mut w, 0, false, "zero again");
    }

    #[test]
    fn kernel_window_plus_one_ascending_then_one_then_zero() {
        let mut w = ReplayWindow::new();
        for i in 2..=COUNTER_WINDOW_SIZE + 1 {
            t(&mut w, i, true, "ascending from 2");
        }
        t(&mut w, 1, true, "one is at the window edge");
        t(&mut w, 0, false, "zero fell out of the window");
    }

    #[test]
    fn kernel_descending_from_window() {
        let mut w = ReplayWindow::new();
        for i in (0..=COUNTER_WINDOW_SIZE).rev() {
            t(&mut w, i, true, "descending to 0");
        }
    }

    #[test]
    fn kernel_descending_from_window_plus_one() {
        let mut w = ReplayWindow::new();
        for i in (1..=COUNTER_WINDOW_SIZE + 1).rev() {
            t(&mut w, i, true, "descending to 1");
        }
        t(&mut w, 0, false, "zero is one past the window");
    }

    #[test]
    fn kernel_descending_then_top_again() {
        let mut w = ReplayWindow::new();
        for i in (1..=COUNTER_WINDOW_SIZE).rev() {
            t(&mut w, i, true, "descending to 1");
        }
        t(&mut w, COUNTER_WINDOW_SIZE + 1, true, "slide by one");
        t(&mut w, 0, false, "zero slid out");
    }

    #[test]
    fn kernel_descending_zero_then_slide() {
        let mut w = ReplayWindow::new();
        for i in (1..=COUNTER_WINDOW_SIZE).rev() {
            t(&mut w, i, true, "descending to 1");
        }
        t(&mut w, 0, true, "zero still inside");
        t(&mut w, COUNTER_WINDOW_SIZE + 1, true, "slide by one");
    }

    #[test]
    fn jumps_larger_than_the_ring_clear_every_word() {
        let mut w = ReplayWindow::new();
        // Fill every word of the ring with set bits.
        for i in 0..COUNTER_BITS_TOTAL {
            w.validate(i);
        }
        // Jump many rings ahead: nothing stale may survive in any slot.
        let base = 10 * COUNTER_BITS_TOTAL + 5;
        t(&mut w, base, true, "huge jump");
        for back in 1..=COUNTER_WINDOW_SIZE - 1 {
            assert!(w.check(base - back), "stale bit {back} behind after a huge jump");
        }
        // Exactly ring-size and ring-size minus one word jumps, landing in a slot with old bits.
        let mut w = ReplayWindow::new();
        for i in 0..COUNTER_BITS_TOTAL {
            w.validate(i);
        }
        t(&mut w, COUNTER_BITS_TOTAL - 1 + COUNTER_BITS_TOTAL, true, "jump of one ring");
        t(&mut w, COUNTER_BITS_TOTAL - 2 + COUNTER_BITS_TOTAL, true, "same slot, old bit cleared");
        t(&mut w, COUNTER_BITS_TOTAL - 1 + COUNTER_BITS_TOTAL, false, "duplicate after jump");
    }

    #[test]
    fn too_old_boundary_is_exact() {
        let mut w = ReplayWindow::new();
        let top = 100_000;
        t(&mut w, top, true, "top");
        // After accepting `top`, counter() == top + 1; the oldest acceptable is top − WINDOW.
        t(&mut w, top - COUNTER_WINDOW_SIZE, true, "oldest in window");
        t(&mut w, top - COUNTER_WINDOW_SIZE - 1, false, "one too old");
        t(&mut w, top - 1, true, "reordered inside");
    }

    #[test]
    fn check_does_not_mark() {
        let mut w = ReplayWindow::new();
        for _ in 0..3 {
            assert!(w.check(42));
        }
        assert_eq!(w.counter(), 0);
        assert!(w.validate(42));
        assert!(!w.check(42));
        // A pre-check ahead of the window does not slide it.
        assert!(w.check(1_000_000));
        assert!(w.check(43));
        assert_eq!(w.counter(), 43);
    }

    /// Two threads validate overlapping streams of counters through one shared window (as two
    /// worker cores would for one peer); each counter must be accepted exactly once overall.
    #[test]
    fn two_threads_accept_each_counter_exactly_once() {
        const N: u64 = 64 * 1000;
        let w = Mutex::new(ReplayWindow::new());
        let run = |order: &mut dyn Iterator<Item = u64>| -> Vec<bool> {
            let mut got = vec![false; N as usize];
            for c in order {
                let ok = w.lock().unwrap().validate(c);
                if ok {
                    assert!(!got[c as usize], "same thread accepted {c} twice");
                    got[c as usize] = true;
                }
            }
            got
        };
        let (a, b) = std::thread::scope(|s| {
            // Thread A: every counter, ascending. Thread B: every counter, reordered within
            // blocks of 64, plus every third one repeated (a replayed duplicate).
            let ha = s.spawn(|| run(&mut (0..N)));
            let hb = s.spawn(|| {
                run(&mut (0..N / 64).flat_map(|blk| {
                    (0..64u64).rev().flat_map(move |i| {
                        let c = blk * 64 + i;
                        let reps = if c % 3 == 0 { 2 } else { 1 };
                        std::iter::repeat_n(c, reps)
                    })
                }))
            });
            (ha.join().unwrap(), hb.join().unwrap())
        });
        for c in 0..N as usize {
            assert!(a[c] ^ b[c], "counter {c} accepted by A={} B={}", a[c], b[c]);
        }
    }
}
