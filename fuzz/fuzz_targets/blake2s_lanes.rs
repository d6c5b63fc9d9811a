//! A call of 1 to 16 BLAKE2s MACs (raw keys, precomputed keyed states, some shared, the unkeyed
//! hash, output and input lengths all from the input), and sometimes a call that must be refused,
//! on every backend the CPU runs, against the `blake2` crate. The body is
//! `wgpmd_aead::fuzzing::blake2s_lanes`, which the stable test suite (`aead/tests/fuzz_body.rs`)
//! also runs.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_aead::fuzzing::blake2s_lanes(data);
});
