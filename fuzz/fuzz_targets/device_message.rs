//! Handshake, cookie and data messages into a device with a live session and a pending
//! initiation. The body is `wgpmd_proto::fuzzing::device_message`, which the stable test suite also
//! runs (wgpmd-proto/tests/device_robustness.rs).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::device_message(data);
});
