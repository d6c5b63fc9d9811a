//! A burst of up to 8 handshake messages (a mutation recipe per job over valid initiations,
//! responses and a cookie reply) screened together and processed as one batch, on twin
//! concentrators: one message at a time, and with the initiations' DHs in X25519 lanes on every
//! backend the CPU runs; the same decisions, counters and messages. The body is
//! `wgpmd_proto::fuzzing::handshake_batch`, which the stable test suite also runs
//! (`wgpmd-proto/tests/fuzz_corpus.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::handshake_batch(data);
});
