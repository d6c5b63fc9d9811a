//! One frame from the WAN through the daemon's WAN side: classification, the in-place replies
//! (ARP, ICMP/ICMPv6 echo), the neighbour advertisement and outer headers back to the sender,
//! each parsed back and checked; the frame runs as it is and again with its checksums repaired, so
//! mutations get past the checksum checks. The body is `wgpmd::wan::fuzzing::wan_frame_both`, which
//! the stable test suite (`wgpmd/tests/wan_robustness.rs`, `wgpmd/tests/fuzz_corpus.rs`) also runs.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgpmd::wan::fuzzing::wan_frame_both(data);
});
