//! The `virtio_rings` fuzz target's committed corpus (`fuzz/corpus/virtio_rings/`) replayed
//! through its body on stable, and the body over random operation scripts: the virtio queue
//! pair against a hostile simulated device (`nic_backends::fuzzing`).

use std::path::Path;

use nic_backends::fuzzing::virtio_rings;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_rings");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_virtio_rings_replays() {
    let c = corpus();
    assert!(c.len() >= 6, "{} inputs", c.len());
    let (mut rx, mut tx, mut bad) = (0, 0, 0);
    for (_, d) in &c {
        let r = virtio_rings(d);
        rx += r.rx_frames;
        tx += r.tx_frames;
        bad += r.bad_used_id + r.bad_used_idx;
    }
    assert!(rx >= 4 && tx >= 4 && bad >= 2, "rx {rx} tx {tx} bad {bad}");
}

/// Random scripts (a fixed xorshift stream): the body's checks hold on every one.
#[test]
fn virtio_body_on_random_scripts() {
    let mut x: u64 = 0x7669_7274_696f;
    let (mut rx, mut tx) = (0, 0);
    for _ in 0..20_000 {
        let mut s = vec![0u8; 4 * 48];
        for b in s.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let r = virtio_rings(&s);
        rx += r.rx_frames;
        tx += r.tx_frames;
    }
    assert!(rx >= 500 && tx >= 10_000, "rx {rx} tx {tx}");
}

/// Writes the seed corpus (run by hand: `cargo test --release -p nic-backends --features fuzzing
/// --test fuzz_corpus -- --ignored write_fuzz_seeds`).
#[test]
#[ignore = "writes fuzz/corpus/virtio_rings/ (run by hand)"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_rings");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: Vec<(&str, Vec<[u8; 4]>)> = vec![
        ("rx-good", vec![[0, 1, 0, 0], [1, 0, 0, 0], [2, 10, 1, 0], [2, 20, 2, 0], [4, 0, 0, 0], [6, 32, 0, 0]]),
        ("rx-bad-lengths", vec![[0, 1, 0, 0], [1, 0, 0, 0], [3, 0, 0, 5], [3, 1, 200, 0], [4, 0, 0, 0], [6, 32, 0, 0]]),
        (
            "rx-bad-ids",
            vec![
                [0, 1, 0, 0],
                [1, 0, 0, 0],
                [3, 99, 10, 0],
                [2, 5, 0, 0],
                [2, 5, 0, 0],
                [3, 0, 9, 0],
                [4, 0, 0, 0],
                [6, 32, 0, 0],
            ],
        ),
        (
            "rx-idx-jump",
            vec![[0, 1, 0, 0], [1, 0, 0, 0], [5, 1, 0, 0], [6, 32, 0, 0], [2, 3, 0, 0], [4, 0, 0, 0], [6, 32, 0, 0]],
        ),
        (
            "rx-wrap",
            vec![
                [0, 1, 0, 0],
                [1, 0, 0, 0],
                [2, 9, 0, 0],
                [2, 9, 0, 1],
                [2, 9, 0, 2],
                [2, 9, 0, 3],
                [4, 0, 0, 0],
                [6, 2, 0, 0],
                [0, 1, 0, 0],
                [1, 0, 0, 0],
                [2, 9, 0, 0],
                [4, 0, 0, 0],
                [6, 32, 0, 0],
            ],
        ),
        ("tx-good", vec![[7, 5, 10, 0], [8, 0, 0, 0], [10, 0, 0, 0], [7, 9, 100, 1], [8, 0, 0, 0], [7, 9, 1, 0]]),
        ("tx-bad-ids", vec![[7, 5, 10, 0], [8, 1, 3, 0], [9, 0, 40, 0], [10, 0, 0, 0], [7, 3, 10, 0]]),
        (
            "used-scribble",
            vec![
                [0, 1, 0, 0],
                [1, 0, 0, 0],
                [11, 0, 2, 200],
                [11, 0, 3, 7],
                [6, 32, 0, 0],
                [7, 4, 4, 0],
                [11, 0, 2, 9],
                [10, 0, 0, 0],
            ],
        ),
        ("no-notify", vec![[12, 1, 1, 0], [0, 1, 0, 0], [7, 3, 3, 0], [12, 0, 0, 0], [0, 1, 0, 0]]),
    ];
    for (n, ops) in seeds {
        std::fs::write(dir.join(n), ops.concat()).unwrap();
    }
}

/// Found by the `virtio_rings` campaign: the simulated device returned an rx chain with a bogus
/// used entry, the driver took the buffer back and reused it for a transmit, then the device
/// wrote a frame into the chain it had taken earlier, overwriting the frame being sent. No driver
/// can defend against a device writing memory it has returned; the body's device no longer does.
#[test]
fn regression_device_writes_a_returned_buffer() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/virtio_rings/regression-device-writes-a-returned-buffer");
    let r = virtio_rings(&std::fs::read(f).unwrap());
    assert!(r.tx_frames > 0, "{r:?}");
}

/// Found by the `virtio_rings` campaign (second run): a used entry the device wrote for an
/// earlier posting of a buffer returned its new posting with the old length; the bytes are then
/// whatever the memory holds (here a transmitted frame), and the driver cannot tell. The body no
/// longer compares a received buffer with a write made under an earlier posting.
#[test]
fn regression_stale_used_entry_for_a_new_posting() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/virtio_rings/regression-stale-used-entry-for-a-new-posting");
    let r = virtio_rings(&std::fs::read(f).unwrap());
    assert!(r.rx_frames > 0, "{r:?}");
}
