//! wgpmd: a userspace WireGuard concentrator built as a poll-mode NIC driver.
//!
//! This crate holds the WireGuard protocol core. It is *sans-IO*: nothing here opens a socket,
//! reads a clock or draws from the operating system's RNG. Time comes in as a
//! [`time::Timestamp`], randomness from an injected `rand_core::RngCore + CryptoRng`, and every
//! operation takes bytes in and returns bytes and actions out, so the same code runs under the
//! daemon's poll loop, in tests on virtual time, and under a fuzzer.
//!
//! Layers, bottom up:
//! - [`messages`]: every wire size, type code and protocol limit;
//! - [`crypto`]: BLAKE2s, HMAC/KDF, ChaCha20-Poly1305, XChaCha20-Poly1305, X25519;
//! - [`wire`]: zero-copy views of Ethernet, 802.1Q, ARP, IPv4, IPv6, UDP, ICMP(v6) and the four
//!   WireGuard messages;
//! - [`noise`]: the Noise_IKpsk2 handshake; [`cookie`] and [`ratelimit`]: DoS defences;
//! - [`session`]: keypairs, in-place seal/open and the replay window;
//! - [`timers`]: every timer rule, driven by events and an explicit `now`;
//! - [`allowedips`] and [`index`]: cryptokey routing and receiver-index tables;
//! - [`device`]: the facade tying them together for bursts of packets;
//! - [`config`] and [`uapi`]: the wg.conf(5) file and the `wg` tool's control socket, which
//!   configure a device (the UAPI server is the one module here that does I/O);
//! - [`daemon`]: `wgpmd run` (ports, workers, control core) and [`bench`]: `wgpmd bench`, the
//!   daemon's pipeline over `mem` ports with a built-in traffic generator.
//!
//! # Panics
//! No function reachable from packet input panics on any input; the robustness tests feed every
//! parser and the facade millions of mutated messages to hold us to that.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod allowedips;
pub mod bench;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod daemon;
pub mod device;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod messages;
pub mod noise;
pub mod ratelimit;
pub mod session;
pub mod time;
pub mod timers;
pub mod uapi;
pub mod wire;
