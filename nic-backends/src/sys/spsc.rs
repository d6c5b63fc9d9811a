//! A bounded single-producer single-consumer ring that moves whole bursts, in the style of DPDK's
//! `rte_ring` (single-producer/single-consumer mode) and ixy: the ring behind `mem` ports.
//!
//! - **Slots**: a power of two of `MaybeUninit<T>` cells (`mask = slots - 1`); the ring holds at
//!   most `capacity` items, which may be fewer than the slots (`capacity` is exactly the depth
//!   asked for, as DPDK's `RING_F_EXACT_SZ`).
//! - **Indices**: `head` (next slot to read, written only by the consumer) and `tail` (next slot to
//!   write, written only by the producer) run free (wrapping `usize`); `tail - head` is the fill.
//!   Each sits on its own 128-byte block, away from the other and from the read-only fields, so
//!   that the two cores do not invalidate each other's lines except when one publishes.
//! - **Cached views**: each handle keeps its own index and a copy of the other side's. It loads the
//!   other side's index (`Acquire`) only when its copy says the whole request does not fit (the
//!   producer: fewer free slots than items offered; the consumer: fewer items than it may take).
//! - **One store per burst**: the producer writes the burst's slots, then publishes them with one
//!   `Release` store of `tail`; the consumer moves the burst out, then frees the slots with one
//!   `Release` store of `head`. The `Acquire` loads pair with these stores: a consumer that sees a
//!   tail sees the slots written before it, a producer that sees a head knows the slots before it
//!   have been moved out.
//! - **One producer, one consumer, by type**: [`channel`] returns a [`Producer`] and a [`Consumer`];
//!   both are `Send` (when `T` is), neither is `Sync` nor `Clone`, and every operation takes
//!   `&mut self`, so at most one thread pushes and one pops at any time.
//! - Items still in the ring when both handles are gone are dropped with the ring.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A value alone on its 128-byte block (two cache lines: Intel's adjacent-line prefetcher pairs
/// lines, as crossbeam's `CachePadded` assumes on x86-64).
#[repr(align(128))]
struct Padded<T>(T);

struct Ring<T> {
    /// Next slot the consumer reads. Written only by the consumer.
    head: Padded<AtomicUsize>,
    /// Next slot the producer writes. Written only by the producer.
    tail: Padded<AtomicUsize>,
    /// `slots.len()` is a power of two. A slot at position `i` (masked) holds an initialised `T`
    /// exactly when `head <= i < tail` (in wrapping order).
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both handles are gone (`Arc` dropped its last reference, with the fence that makes the
        // other thread's last stores visible): the indices are final.
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let mask = self.slots.len() - 1;
        let mut i = head;
        while i != tail {
            // SAFETY: slots in [head, tail) hold initialised values (the invariant on `slots`), each
            // dropped once here; nothing else can reach the ring any more (`&mut self`).
            unsafe { self.slots[i & mask].get_mut().assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

/// The writing end of a ring from [`channel`].
pub(crate) struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Our `tail`: equal to `ring.tail` between calls.
    tail: usize,
    /// The consumer's `head` as last loaded (never ahead of the real one).
    head_seen: usize,
    mask: usize,
    capacity: usize,
}

/// The reading end of a ring from [`channel`].
pub(crate) struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Our `head`: equal to `ring.head` between calls.
    head: usize,
    /// The producer's `tail` as last loaded (never ahead of the real one).
    tail_seen: usize,
    mask: usize,
}

// The handles are not `Sync` (the `Arc` of a ring of `UnsafeCell`s is not) and not `Clone`, and
// all their operations take `&mut self`: one thread at a time uses each end.
// SAFETY: moving a handle moves the right to push (or pop) to another thread; items cross threads
// through the ring, so `T: Send` is required. The shared state is touched only through atomics
// (the indices) and through slots that the index protocol gives to one side at a time.
unsafe impl<T: Send> Send for Producer<T> {}
// SAFETY: as for `Producer`.
unsafe impl<T: Send> Send for Consumer<T> {}

/// A ring holding at most `capacity` items (at least 1), over `capacity` rounded up to a power of
/// two slots.
///
/// # Panics
/// If `capacity` rounded up to a power of two overflows `usize` (the allocation would fail long
/// before).
pub(crate) fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(1);
    let n = capacity.checked_next_power_of_two().expect("ring capacity overflows usize");
    let slots = (0..n).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let ring = Arc::new(Ring { head: Padded(AtomicUsize::new(0)), tail: Padded(AtomicUsize::new(0)), slots });
    let mask = n - 1;
    let producer = Producer { ring: Arc::clone(&ring), tail: 0, head_seen: 0, mask, capacity };
    let consumer = Consumer { ring, head: 0, tail_seen: 0, mask };
    (producer, consumer)
}

impl<T> Producer<T> {
    /// Items in the ring now (pushed and not yet popped; the consumer may be taking some).
    pub(crate) fn len(&self) -> usize {
        self.tail.wrapping_sub(self.ring.head.0.load(Ordering::Acquire))
    }

    /// Move items from the front of `src` into the ring, as many as fit, in order; the rest stay
    /// in `src`, in order. `seen` is called on each item taken, before it is moved. Returns how
    /// many were taken. One `Release` store publishes them all. (Should `seen` panic, the items
    /// already moved stay unpublished and are leaked, never dropped twice.)
    #[inline]
    pub(crate) fn push_from(&mut self, src: &mut Vec<T>, mut seen: impl FnMut(&T)) -> usize {
        let mut free = self.capacity - self.tail.wrapping_sub(self.head_seen);
        if free < src.len() {
            self.head_seen = self.ring.head.0.load(Ordering::Acquire);
            free = self.capacity - self.tail.wrapping_sub(self.head_seen);
        }
        let n = free.min(src.len());
        if n == 0 {
            return 0;
        }
        let mut i = self.tail;
        for item in src.drain(..n) {
            seen(&item);
            let slot = self.ring.slots[i & self.mask].get();
            // `i` is in [tail, tail + free): the consumer stops at the published `tail`, and it has
            // moved out of these (`head_seen`: Acquire after its Release; nothing left to leak).
            // SAFETY: a free slot the consumer does not read; only this producer writes slots,
            // and `&mut self` makes this the only push.
            unsafe { (*slot).write(item) };
            i = i.wrapping_add(1);
        }
        self.tail = i;
        self.ring.tail.0.store(i, Ordering::Release);
        n
    }
}

impl<T> Consumer<T> {
    /// Move up to `max` items from the ring to the end of `dst`, oldest first. `seen` is called on
    /// each item moved, once all are moved. Returns how many. One `Release` store frees their slots.
    #[inline]
    pub(crate) fn pop_into(&mut self, dst: &mut Vec<T>, max: usize, mut seen: impl FnMut(&T)) -> usize {
        let mut avail = self.tail_seen.wrapping_sub(self.head);
        if avail < max {
            self.tail_seen = self.ring.tail.0.load(Ordering::Acquire);
            avail = self.tail_seen.wrapping_sub(self.head);
        }
        let n = avail.min(max);
        if n == 0 {
            return 0;
        }
        // Room first, so that nothing between moving a value out and publishing `head` can panic
        // (a panic there would leave a moved-out slot inside [head, tail) to be dropped twice).
        dst.reserve(n);
        let start = dst.len();
        let mut i = self.head;
        for _ in 0..n {
            let slot = self.ring.slots[i & self.mask].get();
            // `i` is in [head, tail_seen): written before the producer's Release store of the tail
            // our Acquire load saw, and not touched by it again until our `head` passes them.
            // SAFETY: an initialised slot, read once (the value moves out, the slot counts as
            // uninitialised from then on); `&mut self` makes this the only pop.
            let item = unsafe { (*slot).assume_init_read() };
            dst.push(item);
            i = i.wrapping_add(1);
        }
        self.head = i;
        self.ring.head.0.store(i, Ordering::Release);
        dst[start..].iter().for_each(&mut seen);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its drops in a shared counter.
    struct Counted(u64, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pop_all<T>(c: &mut Consumer<T>) -> Vec<T> {
        let mut v = Vec::new();
        c.pop_into(&mut v, usize::MAX, |_| {});
        v
    }

    #[test]
    fn exact_capacity_below_the_power_of_two() {
        let (mut p, mut c) = channel::<u32>(5);
        assert_eq!((p.capacity, p.ring.slots.len()), (5, 8));
        let mut v: Vec<u32> = (0..7).collect();
        let mut seen = Vec::new();
        assert_eq!(p.push_from(&mut v, |x| seen.push(*x)), 5);
        assert_eq!((v, seen, p.len()), (vec![5, 6], vec![0, 1, 2, 3, 4], 5));
        assert_eq!(p.push_from(&mut vec![9], |_| {}), 0, "full at 5 although 8 slots");
        assert_eq!(pop_all(&mut c), vec![0, 1, 2, 3, 4]);
        assert_eq!(p.len(), 0);
        let (mut p, _c) = channel::<u32>(0);
        assert_eq!(p.push_from(&mut vec![1, 2], |_| {}), 1, "capacity 0 is raised to 1");
    }

    #[test]
    fn partial_bursts_and_wraparound_keep_order() {
        // 6 items in 8 slots, bursts of sizes that do not divide 8: the indices wrap the slots
        // many times and bursts straddle the end of the slot array.
        let (mut p, mut c) = channel::<u64>(6);
        let (mut next_in, mut next_out) = (0u64, 0u64);
        let mut out = Vec::new();
        for round in 0..1000usize {
            let want = 1 + round % 5;
            let mut v: Vec<u64> = (next_in..next_in + want as u64).collect();
            let fill = p.len();
            let took = p.push_from(&mut v, |_| {});
            assert_eq!(took, want.min(6 - fill), "round {round}: takes what fits");
            assert_eq!(v, (next_in + took as u64..next_in + want as u64).collect::<Vec<_>>(), "the rest, in order");
            next_in += took as u64;
            let max = 1 + round % 4;
            out.clear();
            let got = c.pop_into(&mut out, max, |_| {});
            assert_eq!(got, max.min(fill + took), "round {round}: takes up to max");
            assert_eq!(out, (next_out..next_out + got as u64).collect::<Vec<_>>());
            next_out += got as u64;
        }
        assert!(p.tail > 8 * 100, "wrapped the slots many times");
        assert_eq!(pop_all(&mut c), (next_out..next_in).collect::<Vec<_>>());
    }

    #[test]
    fn indices_wrap_around_usize() {
        let (mut p, mut c) = channel::<u64>(4);
        // Start both sides just below the wrap of the free-running indices.
        let start = usize::MAX - 5;
        p.ring.head.0.store(start, Ordering::Relaxed);
        p.ring.tail.0.store(start, Ordering::Relaxed);
        (p.tail, p.head_seen, c.head, c.tail_seen) = (start, start, start, start);
        let mut n = 0u64;
        for _ in 0..10 {
            let mut v = vec![n, n + 1, n + 2];
            assert_eq!(p.push_from(&mut v, |_| {}), 3);
            assert_eq!(p.len(), 3);
            assert_eq!(pop_all(&mut c), vec![n, n + 1, n + 2]);
            n += 3;
        }
        assert!(p.tail < start, "the index wrapped");
    }

    #[test]
    fn stale_views_are_refreshed_only_when_needed() {
        let (mut p, mut c) = channel::<u8>(4);
        assert_eq!(p.push_from(&mut vec![1, 2, 3, 4], |_| {}), 4);
        assert_eq!(c.pop_into(&mut Vec::new(), 2, |_| {}), 2);
        assert_eq!(p.head_seen, 0, "the producer has not looked yet");
        assert_eq!(p.push_from(&mut vec![5, 6, 7], |_| {}), 2, "looks when full, finds 2 free");
        assert_eq!(p.head_seen, 2);
        let mut out = Vec::new();
        assert_eq!(c.pop_into(&mut out, 1, |_| {}), 1);
        assert_eq!(c.tail_seen, 4, "enough in the cached view: no new look at the tail");
        assert_eq!(c.pop_into(&mut out, 8, |_| {}), 3);
        assert_eq!((c.tail_seen, out), (6, vec![3, 4, 5, 6]));
    }

    #[test]
    fn dropping_the_ring_drops_what_is_inside_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let item = |i| Counted(i, Arc::clone(&drops));
        let (mut p, mut c) = channel::<Counted>(8);
        let mut v: Vec<Counted> = (0..6).map(item).collect();
        p.push_from(&mut v, |_| {});
        let mut out = Vec::new();
        c.pop_into(&mut out, 4, |_| {});
        let mut v: Vec<Counted> = (6..10).map(item).collect();
        p.push_from(&mut v, |_| {}); // wraps: slots 6, 7, 0, 1
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        drop(out);
        assert_eq!(drops.load(Ordering::Relaxed), 4);
        drop(p);
        assert_eq!(drops.load(Ordering::Relaxed), 4, "the consumer still holds the ring");
        drop(c);
        assert_eq!(drops.load(Ordering::Relaxed), 10, "items 4..10 dropped with the ring");
    }

    #[test]
    fn two_threads_move_millions_in_order() {
        // Miri interprets every access: a few thousand still interleave the threads many times.
        const N: u64 = if cfg!(miri) {
            3_000
        } else if cfg!(debug_assertions) {
            300_000
        } else {
            4_000_000
        };
        let (mut p, mut c) = channel::<u64>(100);
        let tx = std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut next = 0u64;
            let mut burst = 1u64;
            while next < N || !v.is_empty() {
                burst = burst % 47 + 1;
                while (v.len() as u64) < burst && next < N {
                    v.push(next);
                    next += 1;
                }
                if p.push_from(&mut v, |_| {}) == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        let mut out = Vec::new();
        let (mut expect, mut max) = (0u64, 1usize);
        while expect < N {
            max = max % 61 + 1;
            out.clear();
            if c.pop_into(&mut out, max, |_| {}) == 0 {
                std::hint::spin_loop();
            }
            for x in &out {
                assert_eq!(*x, expect, "lost, duplicated or reordered");
                expect += 1;
            }
        }
        tx.join().unwrap();
        assert!(pop_all(&mut c).is_empty(), "nothing after the last");
    }

    #[test]
    fn indices_and_slots_on_separate_blocks() {
        let (head, tail) = (std::mem::offset_of!(Ring<u64>, head), std::mem::offset_of!(Ring<u64>, tail));
        let slots = std::mem::offset_of!(Ring<u64>, slots);
        assert_eq!((head % 128, tail % 128, std::mem::align_of::<Ring<u64>>()), (0, 0, 128));
        let block = |off: usize| off / 128;
        assert_ne!(block(head), block(tail));
        assert!(block(slots) != block(head) && block(slots) != block(tail), "the read-only part apart");
    }

    /// The handles are `Send` and neither `Sync` nor `Clone`: this fails to compile otherwise
    /// (an impl chosen by an auto trait is ambiguous when the trait holds).
    #[allow(dead_code)]
    fn handles_are_send_not_sync_not_clone() {
        fn send<T: Send>() {}
        send::<Producer<u64>>();
        send::<Consumer<u64>>();
        trait AmbiguousIfSync<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSync<()> for T {}
        impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
        <Producer<u64> as AmbiguousIfSync<_>>::check();
        <Consumer<u64> as AmbiguousIfSync<_>>::check();
        trait AmbiguousIfClone<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfClone<()> for T {}
        impl<T: Clone> AmbiguousIfClone<u8> for T {}
        <Producer<u64> as AmbiguousIfClone<_>>::check();
        <Consumer<u64> as AmbiguousIfClone<_>>::check();
    }
}
