//! A burst of up to 16 ChaCha20-Poly1305 lanes (keys, nonces, additional data, lengths, contents
//! and corruptions all from the input) sealed and opened on every backend the CPU runs, against the
//! portable reference and ring. The body is `wgpmd_aead::fuzzing::lanes`, which the stable test
//! suite (`aead/tests/fuzz_body.rs`) also runs.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_aead::fuzzing::lanes(data);
});
