//! wgpmd: a userspace WireGuard concentrator built as a poll-mode NIC driver — the daemon.
//!
//! The protocol is the sans-IO crate [`wgpmd_proto`]; this crate gives it ports, cores, clocks,
//! randomness and sockets:
//! - [`daemon`]: `wgpmd run` — the WAN and inner ports (from `nic-backends`), pinned workers
//!   (data, and the handshakes they receive), the control core (initiations, timer wheel,
//!   staged packets), counters;
//! - [`wan`]: the WAN side without I/O — what a frame from the wire is, ARP/ND/echo replies in
//!   place, the neighbour table, the outer Ethernet/IP/UDP headers, path MTU errors;
//! - [`uapi_server`]: the unix socket the stock `wg` tool talks to (the text protocol itself is
//!   [`wgpmd_proto::uapi`]);
//! - [`logging`]: plain or JSON lines, journald priorities, the rate limit on per-packet
//!   messages;
//! - [`conf`]: reading a wg.conf(5) file with the system resolver;
//! - [`sdnotify`]: telling systemd when the daemon is ready, reloading or stopping;
//! - [`privs`]: the capabilities kept after setup, and `PR_SET_NO_NEW_PRIVS`;
//! - [`mod@bench`]: `wgpmd bench`, the daemon's pipeline over `mem` ports with a built-in traffic
//!   generator.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod conf;
pub mod daemon;
pub mod logging;
pub mod privs;
pub mod sdnotify;
pub mod uapi_server;
pub mod wan;
