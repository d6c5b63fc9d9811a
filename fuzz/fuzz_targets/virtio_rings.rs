//! The virtio-net queue pair's data path against a hostile device: used-ring ids, lengths and
//! indices, raw used-ring bytes and received frames all from the input. The body is
//! `nic_backends::fuzzing::virtio_rings`, which the stable test suite also runs
//! (`nic-backends/tests/fuzz_corpus.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nic_backends::fuzzing::virtio_rings(data);
});
