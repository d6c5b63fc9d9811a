//! wgpmd-proto: the WireGuard protocol core of wgpmd, as a library.
//!
//! It is *sans-IO*: nothing here opens a socket, reads a clock, starts a thread or draws from the
//! operating system's RNG. Time comes in as a [`time::Timestamp`], randomness from an injected
//! `rand_core::RngCore + CryptoRng`, and every operation takes bytes in and returns bytes and
//! actions out, so the same code runs under the daemon's poll loop, in tests on virtual time, and
//! under a fuzzer. The crate forbids `unsafe`, and its normal dependencies hold no I/O crate
//! (`tests/deps.rs` checks the dependency tree).
//!
//! Layers, bottom up:
//! - [`messages`]: every wire size, type code and protocol limit;
//! - [`crypto`]: BLAKE2s, HMAC/KDF, ChaCha20-Poly1305, XChaCha20-Poly1305, X25519;
//! - [`wire`]: zero-copy views of Ethernet, 802.1Q, ARP, IPv4, IPv6, UDP, ICMP(v6) and the four
//!   WireGuard messages (the one owner of their layout);
//! - [`noise`]: the Noise_IKpsk2 handshake; [`cookie`] and [`ratelimit`]: DoS defences;
//! - [`session`]: keypairs, in-place seal/open and the replay window;
//! - [`timers`]: every timer rule, driven by events and an explicit `now`;
//! - [`allowedips`] and [`index`]: cryptokey routing and receiver-index tables;
//! - [`device`]: the facade tying them together;
//! - [`config`] and [`uapi`]: the wg.conf(5) file and the text protocol the `wg` tool speaks on
//!   its control socket (parsing and rendering only: the caller owns the file, the socket and
//!   name resolution).
//!
//! # Example: two devices complete a handshake in memory
//!
//! ```
//! use std::net::SocketAddr;
//! use rand_chacha::rand_core::SeedableRng;
//! use wgpmd_proto::crypto::PrivateKey;
//! use wgpmd_proto::device::{Device, Event, Output};
//! use wgpmd_proto::time::Timestamp;
//!
//! // The core takes its randomness from the caller: a CSPRNG (a daemon seeds it from the OS;
//! // a fixed seed keeps this example reproducible).
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let now = Timestamp::from_secs(1);
//! let (ka, kb) = (PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng));
//! let (pa, pb) = (ka.public_key(), kb.public_key());
//! let (mut a, mut b) = (Device::new(&mut rng, 0), Device::new(&mut rng, 0));
//! a.set_private_key(Some(ka));
//! b.set_private_key(Some(kb));
//! let b_at_a = a.add_peer(&mut rng, pb).unwrap();
//! let a_at_b = b.add_peer(&mut rng, pa).unwrap();
//! let addr_a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
//! let addr_b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
//! a.set_endpoint(b_at_a, addr_b).unwrap();
//!
//! // A initiates: the initiation comes out as a transmit for the caller to send.
//! let mut out = Output::default();
//! a.initiate(now, &mut rng, b_at_a, &mut out).unwrap();
//! let initiation = out.transmits.pop().unwrap();
//! assert_eq!(initiation.to, addr_b);
//!
//! // B receives it from A's address and answers with a response.
//! let mut out = Output::default();
//! b.receive_handshake(now, &mut rng, addr_a, initiation.payload(), false, &mut out).unwrap();
//! let response = out.transmits.pop().unwrap();
//! assert_eq!(response.to, addr_a);
//!
//! // A consumes the response: its session with B is ready, and it confirms it at once with a
//! // keepalive (an empty data message), as the kernel does.
//! let mut out = Output::default();
//! a.receive_handshake(now, &mut rng, addr_b, response.payload(), false, &mut out).unwrap();
//! assert!(out.events.contains(&Event::SessionReady(b_at_a)));
//! a.send_keepalive(now, b_at_a, &mut out).unwrap();
//! let keepalive = out.transmits.pop().unwrap();
//!
//! // B opens it in place: the session B answered is confirmed on B's side too.
//! let mut out = Output::default();
//! let mut msg = keepalive.payload().to_vec();
//! b.decapsulate(now, addr_a, &mut msg, &mut out).unwrap();
//! assert!(out.events.contains(&Event::SessionConfirmed(a_at_b)));
//! ```
//!
//! # Panics
//! No function reachable from packet input panics on any input. The robustness tests hold us to
//! that: `tests/wire_robustness.rs` sends over a million generated and mutated frames through
//! every wire parser, `tests/device_robustness.rs` a million mutated WireGuard messages through
//! the device facade, and both also run the bodies of the repository's fuzz targets on stable.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod allowedips;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod device;
#[cfg(feature = "fuzzing")]
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
