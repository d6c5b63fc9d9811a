//! Buffer pool and `mem` ring microbenchmark: nanoseconds per buffer.
//!
//! `cargo run --release -p nic-backends --example pool_bench [-- ROUNDS]`
//!
//! - `alloc+free 1 thread`: `alloc_burst(32)` then drop the 32, on one thread, one pool.
//! - `alloc+free 2 threads, one pool`: the same on two threads at once, sharing one pool (the
//!   time is per buffer per thread).
//! - `cross-thread free`: thread A allocates bursts of 32 and moves them to thread B through a
//!   `mem` pair (`tx_burst`/`rx_burst`), B drops them: every buffer is freed on another thread
//!   than it was allocated on, and crosses the mem ring once (time per buffer, on A's wall clock).
//!
//! Each row prints the median and the range over ROUNDS rounds (default 7) of 2 M buffers.
//! Wall-clock time: a preempted round is slower, hence the median and the range.

use std::time::Instant;

use nic_backends::mem;
use nic_backends::{Buffer, Pool};

const BURST: usize = 32;
const PER_ROUND: usize = 2_000_000;

fn alloc_free(pool: &Pool, n: usize) -> f64 {
    let mut v: Vec<Buffer> = Vec::with_capacity(BURST);
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let got = pool.alloc_burst(&mut v, BURST);
        assert_eq!(got, BURST, "pool dry");
        for b in &mut v {
            b.append(1).unwrap()[0] = 1;
        }
        v.clear();
        done += BURST;
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn two_threads(pool: &Pool, n: usize) -> f64 {
    let p = pool.clone();
    let other = std::thread::spawn(move || alloc_free(&p, n));
    let mine = alloc_free(pool, n);
    (mine + other.join().unwrap()) / 2.0
}

fn cross_thread(n: usize) -> f64 {
    let pool = Pool::new("x", 8192).unwrap();
    let (mut a, mut b) = mem::pair("a", "b", 1, 1024);
    let (mut qa, mut qb) = (a.take_mem_queue(0).unwrap(), b.take_mem_queue(0).unwrap());
    let rx_pool = Pool::new("unused", 1).unwrap();
    let rx = std::thread::spawn(move || {
        use nic_backends::port::Queue;
        let mut out = Vec::with_capacity(BURST);
        let mut got = 0;
        while got < n {
            let k = qb.rx_burst(&rx_pool, &mut out, BURST);
            if k == 0 {
                std::thread::yield_now();
            }
            got += k;
            out.clear();
        }
    });
    use nic_backends::port::Queue;
    let mut v: Vec<Buffer> = Vec::with_capacity(BURST);
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        if v.is_empty() {
            pool.alloc_burst(&mut v, BURST.min(n - sent));
        }
        let k = qa.tx_burst(&mut v);
        if k == 0 {
            std::thread::yield_now();
        }
        sent += k;
    }
    rx.join().unwrap();
    t.elapsed().as_nanos() as f64 / n as f64
}

fn report(name: &str, mut xs: Vec<f64>) {
    xs.sort_by(f64::total_cmp);
    println!("{name:<36} median {:>6.1} ns/buffer  (range {:.1}–{:.1})", xs[xs.len() / 2], xs[0], xs[xs.len() - 1]);
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let pool = Pool::new("bench", 8192).unwrap();
    alloc_free(&pool, PER_ROUND / 4); // warm-up
    report("alloc+free, 1 thread", (0..rounds).map(|_| alloc_free(&pool, PER_ROUND)).collect());
    report("alloc+free, 2 threads, one pool", (0..rounds).map(|_| two_threads(&pool, PER_ROUND)).collect());
    report("cross-thread free via mem ring", (0..rounds).map(|_| cross_thread(PER_ROUND)).collect());
}
