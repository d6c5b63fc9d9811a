//! `wgpmd bench` in miniature: the whole daemon pipeline over mem ports, both directions, two
//! sizes, a few peers, every packet checked. The bench must report what it measured and
//! nothing may be lost, damaged or reordered.
//!
//! One test in this binary: the bench finds the daemon's worker threads by name.
#![forbid(unsafe_code)]

use wgpmd::bench::{self, BenchOptions, Direction, Measurement};

/// libipsec-mb is timed as a reference (feature `bench-ipsec-mb`, x86-64 only).
const IPSEC_MB: bool = cfg!(all(feature = "bench-ipsec-mb", target_arch = "x86_64"));

/// The number in `column` of the rates table's row for `size` and `dir` (`None`: no such
/// column, or not a number).
fn cell(table: &str, size: &str, dir: &str, column: &str) -> Option<f64> {
    let cells = |l: &str| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let header = cells(table.lines().find(|l| l.starts_with("| peers | size | dir | Mpps/core"))?);
    let i = header.iter().position(|h| h == column)?;
    let row = table.lines().map(cells).find(|c| c.len() == header.len() && c[1] == size && c[2] == dir)?;
    row[i].parse().ok()
}

fn check(what: &str, m: &Measurement) {
    assert!(m.sent > 0, "{what}: nothing sent: {m:?}");
    assert_eq!(m.packets, m.sent, "{what}: every packet sent must come out once: {m:?}");
    assert_eq!(m.lost, 0, "{what}: {m:?}");
    assert_eq!(m.verify_failed, 0, "{what}: damaged packets: {m:?}");
    assert_eq!(m.verified, m.packets, "{what}: verify_every = 1 checks every packet: {m:?}");
    assert_eq!(m.out_of_order, 0, "{what}: {m:?}");
    assert_eq!((m.other_frames, m.control_dropped), (0, 0), "{what}: unexpected frames: {m:?}");
    assert!(m.busy_packets > 0 && m.busy_cpu_ns > 0, "{what}: no stretch with a backlog was timed: {m:?}");
    assert!(m.mpps_per_core() > 0.0 && m.wall_mpps(1) > 0.0 && m.on_cpu() > 0.0, "{what}: {m:?}");
    assert!(m.worker_cpu_ns >= m.busy_cpu_ns, "{what}: {m:?}");
}

#[test]
fn quick_bench_moves_every_packet_intact_both_ways() {
    let opts = BenchOptions {
        peers: vec![4],
        sizes: vec![64, 1420],
        seconds: 0.02,
        workers: 1,
        directions: vec![Direction::Rx, Direction::Tx],
        verify_every: 1,
        references: true,
    };
    let report = bench::run(&opts).unwrap_or_else(|e| panic!("bench failed: {e}"));
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        check(&format!("{} B rx", r.size), r.rx.as_ref().expect("rx measured"));
        check(&format!("{} B tx", r.size), r.tx.as_ref().expect("tx measured"));
        let refs = r.references.expect("references timed");
        assert!(refs.ring_seal.mpps() > 0.0 && refs.ring_open.mpps() > 0.0, "{refs:?}");
        assert!(refs.lanes_seal.mpps() > 0.0 && refs.lanes_open.mpps() > 0.0, "{refs:?}");
        #[cfg(feature = "bench-boringtun")]
        assert!(refs.boringtun_encap.unwrap().mpps() > 0.0 && refs.boringtun_decap.unwrap().mpps() > 0.0, "{refs:?}");
        if IPSEC_MB {
            let imb = refs.ipsec_mb.expect("libipsec-mb timed with the bench-ipsec-mb feature");
            assert!(imb.seal.mpps() > 0.0 && imb.open.mpps() > 0.0, "{refs:?}");
            assert!(refs.fastest_seal() >= imb.seal.mpps().max(refs.ring_seal.mpps()), "{refs:?}");
            assert!(refs.fastest_open() >= imb.open.mpps().max(refs.ring_open.mpps()), "{refs:?}");
        } else {
            assert!(refs.ipsec_mb.is_none(), "{refs:?}");
        }
    }
    let table = report.to_string();
    assert!(table.contains("| 1420 | tx |"), "{table}");
    // libipsec-mb's columns: present and positive with the feature, absent (not zero) without it.
    for dir in ["rx", "tx"] {
        for size in ["64", "1420"] {
            let ring = cell(&table, size, dir, "ring AEAD Mpps").expect("ring column");
            let per_ring = cell(&table, size, dir, "/ AEAD").expect("ratio to ring");
            let imb = cell(&table, size, dir, "ipsec-mb Mpps");
            let per_fastest = cell(&table, size, dir, "/ fastest AEAD");
            if IPSEC_MB {
                let (imb, per_fastest) = (imb.expect("libipsec-mb column"), per_fastest.expect("/ fastest AEAD"));
                assert!(imb > 0.0 && per_fastest > 0.0, "{size} B {dir}:\n{table}");
                // The fastest one-message AEAD is at least as fast as ring (two decimals printed).
                assert!(per_fastest <= per_ring + 0.011, "{size} B {dir}:\n{table}");
                let expected = per_ring * ring / ring.max(imb);
                assert!((per_fastest - expected).abs() <= 0.02 + 0.02 * expected, "{size} B {dir}:\n{table}");
            } else {
                assert_eq!((imb, per_fastest), (None, None), "{table}");
            }
        }
    }
    assert_eq!(table.contains("ipsec-mb"), IPSEC_MB, "{table}");
    assert!(table.contains("lost, damaged or out of order: 0"), "{table}");

    // Two peer counts in one run, both directions at once: every peer of the larger count gets
    // traffic (the order visits each once per round), nothing lost or damaged, and the report
    // compares the counts.
    let scale = BenchOptions {
        peers: vec![4, 3000],
        sizes: vec![64],
        directions: vec![Direction::Duplex],
        references: false,
        ..opts.clone()
    };
    let report = bench::run(&scale).unwrap_or_else(|e| panic!("bench failed: {e}"));
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        let m = r.duplex.as_ref().expect("duplex measured");
        check(&format!("{} peers duplex", r.peers), m);
        assert!(r.rx.is_none() && r.tx.is_none());
        assert!(r.rss > 0, "RSS read");
    }
    let big = &report.results[1];
    assert_eq!(big.peers, 3000);
    assert!(big.duplex.as_ref().unwrap().sent >= 3000, "a chunk per direction covers every peer: {big:?}");
    let table = report.to_string();
    assert!(table.contains("| 3000 | 64 | rx+tx |"), "{table}");
    assert!(table.contains("| size | dir | 4 peers | 3000 peers | ratio |"), "{table}");
    assert!(table.contains("lost, damaged or out of order: 0"), "{table}");
    let bad = BenchOptions { peers: vec![4, 0], ..scale };
    assert!(bench::run(&bad).unwrap_err().to_string().contains("--peers 0"));

    // Bad options are refused with the option's name.
    let bad = BenchOptions { sizes: vec![20], ..opts.clone() };
    assert!(bench::run(&bad).unwrap_err().to_string().contains("--sizes: 20"));
    let bad = BenchOptions { workers: 1000, ..opts };
    assert!(bench::run(&bad).unwrap_err().to_string().contains("--workers 1000"));
}
