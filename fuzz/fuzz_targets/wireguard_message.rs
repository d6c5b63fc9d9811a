//! One UDP payload through `classify` and the four WireGuard message views, rebuilt with the
//! setters. The body is `wgpmd_proto::fuzzing::wireguard_message`, which the stable test suite also
//! runs (`wgpmd-proto/tests/wire_robustness.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::wireguard_message(data);
});
