//! The `dpdk` backend on `net_ring` vdevs (a ring port is a loopback per queue: what queue q
//! sends, queue q receives, as the same mbuf). One test function: EAL is once per process.
//! Runs with `--features dpdk` as root: cargo test -p nic-backends --features dpdk --test dpdk

#![cfg(feature = "dpdk")]

use nic_backends::dpdk::{self, DpdkQueue};
use nic_backends::{Buffer, Pool, Port, PortOptions, Queue, HEADROOM};

/// Removes EAL's runtime directory of our file prefix, also when the test fails.
struct PrefixDir(String);
impl Drop for PrefixDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.0));
    }
}

fn frame(pool: &Pool, tag: u8, len: usize) -> Buffer {
    let mut b = pool.alloc().expect("pool has buffers");
    let d = b.append(len).unwrap();
    d.fill(tag);
    d[..6].copy_from_slice(&[0xff; 6]);
    b
}

fn rx_all(q: &mut DpdkQueue, want: usize) -> Vec<Buffer> {
    let scratch = Pool::new("scratch", 1).unwrap();
    let mut out = Vec::new();
    for _ in 0..1000 {
        q.rx_burst(&scratch, &mut out, 64);
        if out.len() >= want {
            break;
        }
    }
    out
}

#[test]
fn ring_vdev_zero_copy_two_queues_copies_counted_errors_named() {
    let prefix = format!("nicb-dpdk-{}", std::process::id());
    let _dir = PrefixDir(prefix.clone());
    let args: Vec<String> = [
        "nicb-test",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--no-telemetry",
        "-l",
        "0",
        "--file-prefix",
        &prefix,
        "--vdev=net_ring0",
        "--vdev=net_ring1",
        "--vdev=net_ring2",
        "--log-level=warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // Before EAL: a clear error, not a crash.
    let e = nic_backends::open("dpdk:0", &PortOptions::default()).err().expect("no EAL yet");
    assert!(e.to_string().contains("EAL is not initialised"), "{e}");
    dpdk::init_eal(&args).expect("EAL init");
    assert!(dpdk::init_eal(&args).unwrap_err().to_string().contains("already initialised"));

    // Unknown names and ids are named.
    let e = nic_backends::open("dpdk:net_nothing9", &PortOptions::default()).err().unwrap().to_string();
    assert!(e.contains("no DPDK port named `net_nothing9`") && e.contains("net_ring0"), "{e}");
    let e = nic_backends::open("dpdk:7", &PortOptions::default()).err().unwrap().to_string();
    assert!(e.contains("no DPDK port 7"), "{e}");

    let mut port = nic_backends::open("dpdk:net_ring0", &PortOptions { queues: 2, ..Default::default() }).unwrap();
    assert_eq!((port.info().kind, port.info().name.as_str(), port.num_queues()), ("dpdk", "net_ring0", 2));
    assert!(port.link_up());
    let xs = port.extra_stats().expect("dpdk has xstats")();
    assert!(xs.iter().any(|(k, _)| k == "dpdk_rx_good_packets"), "{xs:?}");
    assert!(xs.iter().any(|(k, v)| k == "dpdk_rss" && *v == 0), "net_ring has no RSS: {xs:?}");

    let pools: Vec<Pool> = (0..2).map(|q| port.queue_pool(q).expect("zero-copy pool")).collect();
    assert_ne!(pools[0].id(), pools[1].id(), "one pool per queue");
    let cap = pools[0].capacity();
    assert_eq!(cap, dpdk::MBUFS_PER_QUEUE);

    // Each queue on its own thread, as the daemon's workers: both carry traffic, and what
    // arrives is the very slot (mbuf data buffer, same IOVA) that was sent.
    let handles: Vec<_> = (0..2)
        .map(|qi| {
            let mut q: Box<dyn Queue> = port.take_queue(qi).unwrap();
            let pool = pools[qi].clone();
            std::thread::spawn(move || {
                // Downcast is not available through the trait object: use the trait only.
                let mut sent = Vec::new();
                let mut v: Vec<Buffer> = (0..10).map(|i| frame(&pool, (qi * 16 + i) as u8, 60 + i)).collect();
                for b in &v {
                    sent.push((b.iova(), b.slot_addr(), b.len()));
                }
                assert_eq!(q.tx_burst(&mut v), 10);
                let scratch = Pool::new("s", 1).unwrap();
                let mut out = Vec::new();
                for _ in 0..1000 {
                    q.rx_burst(&scratch, &mut out, 64);
                    if out.len() >= 10 {
                        break;
                    }
                }
                assert_eq!(out.len(), 10, "queue {qi} got its frames back");
                let got: Vec<_> = out.iter().map(|b| (b.iova(), b.slot_addr(), b.len())).collect();
                assert_eq!(got, sent, "queue {qi}: the received buffers are the transmitted mbufs (zero copy)");
                for (i, b) in out.iter().enumerate() {
                    assert_eq!(b.headroom(), HEADROOM);
                    assert_eq!(b.data()[6], (qi * 16 + i) as u8);
                    assert_eq!(b.pool_id(), pool.id());
                }
                let s = q.stats();
                assert_eq!((s.tx_packets, s.rx_packets, s.tx_copied), (10, 10, 0));
                drop(out);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("queue thread");
    }
    assert_eq!(pools[0].available(), cap, "every mbuf of queue 0 is back");
    assert_eq!(pools[1].available(), cap);
    drop(port);

    // A foreign buffer is copied into an mbuf, counted, and arrives intact.
    // (A closed vdev port is released by DPDK: every part of the test uses its own vdev.)
    let mut port = dpdk::DpdkPort::new("net_ring1", &PortOptions::default()).unwrap();
    let mut q = port.take_dpdk_queue(0).unwrap();
    let foreign = Pool::new("ctl", 4).unwrap();
    let mut b = foreign.alloc().unwrap();
    b.append(64).unwrap().copy_from_slice(&[0x5a; 64]);
    b.trim_front(2).unwrap(); // window not at HEADROOM
    let mut v = vec![b];
    assert_eq!(q.tx_burst(&mut v), 1);
    assert_eq!(foreign.available(), 4, "the foreign buffer is freed at once");
    let out = rx_all(&mut q, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data(), &[0x5a; 62][..]);
    assert_eq!(out[0].pool_id(), q.pool().id());
    assert_eq!(q.copy_stats().0, 1);
    assert_eq!(q.stats().tx_copied, 1);
    drop(out);
    // The queue keeps the device open after the port is dropped (a worker may still poll it).
    let pool = port.queue_pool(0).unwrap();
    drop(port);

    // The raw baseline path works on the same queue.
    let mut v: Vec<Buffer> = (0..4).map(|i| frame(q.pool(), i, 64)).collect();
    assert_eq!(q.tx_burst(&mut v), 4);
    assert_eq!(q.raw_echo(), (4, 4));
    assert_eq!(rx_all(&mut q, 4).len(), 4);
    assert!(DpdkQueue::lcore_id() != u32::MAX, "the test thread is an EAL lcore");
    drop(q);
    assert_eq!(pool.available(), pool.capacity());
    drop(pool);

    // A pool that cannot be created: more queues than memory (-m 128 holds a few 8 MiB pools).
    let e = nic_backends::open("dpdk:net_ring2", &PortOptions { queues: 16, ..Default::default() })
        .err()
        .expect("16 pools of 8 MiB do not fit in -m 128")
        .to_string();
    assert!(e.contains("Give EAL more memory") && e.contains("queue "), "{e}");

    // EAL's cleanup would unmap the memory live buffers point into: refused while a pool lives.
    let last = pools.first().expect("pools kept above").alloc().expect("a buffer");
    drop(pools);
    assert!(!dpdk::cleanup_eal(), "a buffer still points into EAL memory");
    assert!(dpdk::eal_ready());
    drop(last);
    assert!(dpdk::cleanup_eal());
    assert!(!dpdk::eal_ready());
}
