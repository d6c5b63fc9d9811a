//! One frame from the WAN through the daemon's WAN side: classification, the in-place replies
//! (ARP, ICMP/ICMPv6 echo), the neighbour advertisement and outer headers back to the sender,
//! each parsed back and checked. The body is `wgpmd::wan::fuzzing::wan_frame`, which the stable
//! test suite (`wgpmd/tests/wan_robustness.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wgpmd::wan::fuzzing::wan_frame(data);
});
