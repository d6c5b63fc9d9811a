//! One Ethernet frame through every wire parser (Ethernet/802.1Q, ARP, IPv4, IPv6, UDP, ICMP,
//! ICMPv6, WireGuard), with parse/emit round trips. The body is `wgpmd_proto::fuzzing::wire_frame`,
//! which the stable test suite (`wgpmd-proto/tests/wire_robustness.rs`) also runs.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wgpmd_proto::fuzzing::wire_frame(data);
});
