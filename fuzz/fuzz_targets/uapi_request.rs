//! One UAPI request (`get=1` or `set=1` text) through the parser and, if it parses, applied to a
//! device with peers and an established session, with the invariants of the body:
//! `wgpmd_proto::fuzzing::uapi_request`, which the stable test suite also runs
//! (`wgpmd-proto/tests/fuzz_corpus.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd_proto::fuzzing::uapi_request(data);
});
