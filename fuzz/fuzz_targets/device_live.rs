//! A script of operations on a device and a real peer with live sessions: data both ways,
//! replays, forgeries, roaming, time jumps that fire the timers, handshakes from either side,
//! cookies under load, a lossy network. The body is `wgpmd_proto::fuzzing::device_live`, which
//! the stable test suite also runs (`wgpmd-proto/tests/fuzz_corpus.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::device_live(data);
});
