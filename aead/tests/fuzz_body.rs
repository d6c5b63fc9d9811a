//! The fuzz body (`wgpmd_aead::fuzzing::lanes`, also the cargo-fuzz target `aead_lanes`) on fixed
//! inputs and on seeded random ones: every backend against the portable reference and ring.
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/aead_lanes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: {} inputs", dir.display(), files.len());
    let lanes: usize = files.iter().map(|f| fuzzing::lanes(&std::fs::read(f).unwrap())).sum();
    assert!(lanes >= files.len() * backends(), "{lanes} lanes");
}
