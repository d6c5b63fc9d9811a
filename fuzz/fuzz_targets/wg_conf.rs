//! One wg.conf(5) file through the parser the daemon's `--config` uses, with `showconf` and
//! `setconf` round trips and the configuration applied to a device. The body is
//! `wgpmd_proto::fuzzing::wg_conf`, which the stable test suite also runs
//! (`wgpmd-proto/tests/fuzz_corpus.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::wg_conf(data);
});
