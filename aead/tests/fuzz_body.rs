//! The fuzz bodies on fixed inputs, on seeded random ones and on their committed corpora:
//! `wgpmd_aead::fuzzing::lanes` (the cargo-fuzz target `aead_lanes`), every backend against the
//! portable reference and ring, and `wgpmd_aead::fuzzing::blake2s_lanes` (`blake2s_lanes`), every
//! backend's BLAKE2s against the `blake2` crate.
#![forbid(unsafe_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgpmd_aead::{fuzzing, Backend};

fn backends() -> usize {
    Backend::ALL.iter().filter(|b| b.is_supported()).count()
}

#[test]
fn fixed_inputs() {
    // Empty input: one lane, all-zero header (an empty message).
    assert_eq!(fuzzing::lanes(&[]), backends());
    // 16 lanes of all-ones headers: shared key, random nonce, corruptions, long messages.
    let mut all = vec![15u8];
    all.extend([0xff; 16 * 12]);
    assert_eq!(fuzzing::lanes(&all), 16 * backends());
}

#[test]
fn seeded_random_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xf022);
    let mut lanes = 0;
    for _ in 0..2000 {
        let mut data = vec![0u8; rng.gen_range(0..=1 + 16 * 12)];
        rng.fill(&mut data[..]);
        lanes += fuzzing::lanes(&data);
    }
    assert!(lanes >= 2000 * backends(), "every input checks at least one lane per backend");
}

/// The hooks refuse what a burst cannot hold, and a backend the CPU lacks.
#[test]
fn hooks_refuse_oversized_bursts() {
    let blocks = vec![([0u8; 32], [0u8; 12], 0u32); 17];
    assert!(fuzzing::chacha20_blocks(Backend::Portable, &blocks).is_none());
    let macs = vec![([0u8; 32], &[][..]); 17];
    assert!(fuzzing::poly1305(Backend::Portable, &macs).is_none());
    for b in Backend::ALL {
        assert_eq!(fuzzing::chacha20_blocks(b, &blocks[..1]).is_some(), b.is_supported());
    }
}

/// The `aead_lanes` target's committed corpus (`fuzz/corpus/aead_lanes/`) through the body.
#[test]
fn corpus_aead_lanes_replays() {
    let files = corpus("aead_lanes");
    let lanes: usize = files.iter().map(|f| fuzzing::lanes(&std::fs::read(f).unwrap())).sum();
    assert!(lanes >= files.len() * backends(), "{lanes} lanes");
}

/// The `blake2s_lanes` seeds: name and input (the format is `mac_cases` in the body's module).
fn blake2s_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // A job header: key length, flags, output, input length.
    const UNKEYED: u8 = 0x20;
    const STATE: u8 = 0x40;
    const SHARED: u8 = 0x80;
    const BOUNDARY: u8 = 0x80;
    let call = |head: u8, jobs: &[[u8; 4]]| -> Vec<u8> {
        let mut v = vec![(jobs.len() as u8 - 1) | head];
        jobs.iter().for_each(|j| v.extend_from_slice(j));
        v
    };
    let len = |n: u16| n.to_le_bytes();
    // WireGuard's shapes: mac1 (a 32-byte key, 16 bytes over 116 or 60 bytes), mac2 (a 16-byte
    // cookie over 132 or 76 bytes), a source's cookie (32-byte secret over 6 or 18 bytes).
    let wg = |key: u8, slot: u8, n: u16| [(key - 1) | STATE | SHARED, slot << 6, len(n)[0], len(n)[1]];
    vec![
        ("one-empty", vec![]),
        ("wireguard-mac1", call(0, &[wg(32, 0, 116); 8])),
        (
            "wireguard-mixed",
            call(
                0,
                &[
                    wg(32, 0, 116),
                    wg(32, 0, 60),
                    wg(16, 1, 132),
                    wg(16, 1, 76),
                    wg(32, 2, 6),
                    wg(32, 2, 18),
                    wg(32, 0, 116),
                    [31, 0, 116, 0],
                    wg(16, 1, 132),
                ],
            ),
        ),
        (
            "boundaries-16",
            call(
                0,
                &core::array::from_fn::<_, 16, _>(|i| {
                    // Keys of 1 to 31 bytes, a keyed state every fourth job, outputs of 16 or 32
                    // bytes (of 1 or 2 every third job), the boundary lengths in turn.
                    let i = i as u8;
                    let state = if i % 4 == 1 { STATE } else { 0 };
                    let out = if i.is_multiple_of(3) { 0x20 | (i & 1) } else { i & 1 };
                    [(i * 2) | state, out, i, BOUNDARY]
                }),
            ),
        ),
        (
            "unkeyed",
            call(
                0,
                &[
                    [UNKEYED, 0, 3, 0],
                    [UNKEYED, 1, 0, BOUNDARY],
                    [UNKEYED, 0x20 | 19, 64, 0],
                    [UNKEYED | STATE, 0x21, 18, BOUNDARY],
                ],
            ),
        ),
        (
            "shared-states",
            call(
                0,
                &[
                    [7 | STATE | SHARED, 0x20 | 4, 200, 0],
                    [SHARED, 0, 5, BOUNDARY],
                    [31 | STATE | SHARED, 0x40, 0, BOUNDARY],
                    [STATE | SHARED, 0x40, 255, 0],
                    [SHARED, 0x20 | 4, 1, 0],
                ],
            ),
        ),
        ("nine-long", call(0, &[[31, 1, 44, 1]; 9])),
        ("refuse-17", call(0x10, &[[15, 0, 10, 0], [31 | STATE, 1, 100, 0]])),
        ("refuse-key", call(0x10 | 0x20, &[[15, 0, 10, 0], [31 | STATE, 1, 100, 0], [UNKEYED, 0, 0, 0]])),
        ("refuse-output-0", call(0x10 | 0xa0, &[[15, 0, 10, 0]])),
        ("refuse-output-33", call(0x10 | 0x40, &[[15, 0, 10, 0]; 16])),
    ]
}

/// The seeds do what their names say.
#[test]
fn blake2s_seeds_reach_what_they_are_named_for() {
    for (name, input) in blake2s_seeds() {
        let r = fuzzing::blake2s_lanes(&input);
        assert!(r.macs >= backends(), "{name}: {r:?}");
        assert_eq!(r.refused > 0, name.starts_with("refuse"), "{name}: {r:?}");
        if name.starts_with("wireguard") || name == "shared-states" {
            assert!(r.keyed_states >= 3, "{name}: {r:?}");
        }
        if name == "unkeyed" {
            assert_eq!(r.unkeyed, 4, "{name}: {r:?}");
        }
    }
}

#[test]
fn blake2s_fixed_inputs() {
    // Empty input: one job, a 1-byte key, 16 bytes over the empty input.
    let r = fuzzing::blake2s_lanes(&[]);
    assert_eq!((r.macs, r.keyed_states, r.unkeyed, r.refused), (backends(), 0, 0, 0));
    // 16 jobs of all-ones headers: the unkeyed hash, 32 bytes over 120 bytes; and a call with a
    // 33-byte key, refused.
    let mut all = vec![0xff];
    all.extend([0xff; 16 * 4]);
    let r = fuzzing::blake2s_lanes(&all);
    assert_eq!((r.macs, r.keyed_states, r.unkeyed, r.refused), (16 * backends(), 0, 16, backends()));
}

#[test]
fn blake2s_seeded_random_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xb1a2);
    let (mut macs, mut states, mut unkeyed, mut refused) = (0, 0, 0, 0);
    for _ in 0..10_000 {
        let mut data = vec![0u8; rng.gen_range(0..=1 + 16 * 4)];
        rng.fill(&mut data[..]);
        let r = fuzzing::blake2s_lanes(&data);
        (macs, states, unkeyed, refused) =
            (macs + r.macs, states + r.keyed_states, unkeyed + r.unkeyed, refused + r.refused);
    }
    assert!(macs >= 10_000 * backends(), "every input checks at least one MAC per backend");
    assert!(states >= 10_000 && unkeyed >= 5_000 && refused >= 3_000 * backends(), "{states} {unkeyed} {refused}");
}

/// The `blake2s_lanes` target's committed corpus (`fuzz/corpus/blake2s_lanes/`) through the body.
#[test]
fn corpus_blake2s_lanes_replays() {
    let files = corpus("blake2s_lanes");
    let (mut macs, mut refused) = (0, 0);
    for f in &files {
        let r = fuzzing::blake2s_lanes(&std::fs::read(f).unwrap());
        macs += r.macs;
        refused += r.refused;
    }
    assert!(macs >= files.len() * backends() && refused >= 1, "{macs} MACs, {refused} refused calls");
}

/// Writes the `blake2s_lanes` seed corpus. Run by hand when the body's input format changes:
/// `cargo test --release -p wgpmd-aead --test fuzz_body -- --ignored write_blake2s_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/blake2s_lanes/ (run by hand)"]
fn write_blake2s_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/blake2s_lanes");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, input) in blake2s_seeds() {
        std::fs::write(dir.join(name), input).unwrap();
    }
}

/// The committed corpus of fuzz target `target` (`fuzz/corpus/<target>/`), in name order; at
/// least five inputs.
fn corpus(target: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: {} inputs", dir.display(), files.len());
    files
}
