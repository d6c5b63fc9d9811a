//! End-to-end test harness for wgpmd: real WireGuard peers (wireguard-go, boringtun-cli) in
//! network namespaces that each test creates and removes itself.
//!
//! Everything a test creates is owned by a guard whose `Drop` undoes it, also when the test
//! fails: [`Netns`] (deleted, processes we started inside it killed), [`VethPair`], [`Proc`]
//! (SIGTERM, then SIGKILL), [`WgDevice`] (its daemon and UAPI socket). Logs of every process go
//! to the per-test directory of a [`Ctx`]; when the test fails, [`run`] prints their tails and
//! keeps the directory. [`Wgpmd`] runs the daemon under test (the binary from [`wgpmd_bin`]),
//! reads its counters and checks that it shuts down cleanly. See docs/TESTING.md.
//!
//! A test looks like this:
//! ```ignore
//! #[test]
//! fn my_test() {
//!     wgpmd_e2e::run("my_test", |ctx| {
//!         let topo = Topology::new(1)?;
//!         let conc = WgGo::start(ctx, &topo.concentrator.ns, &topo.concentrator_device())?;
//!         let peer = WgGo::start(ctx, &topo.peers[0].ns, &topo.peer_device(0))?;
//!         wait_for_ping(&topo.peers[0].ns, topo.concentrator.inner_ip, secs(30))?;
//!         Ok(())
//!     });
//! }
//! ```
#![forbid(unsafe_code)]

mod ctx;
mod exception;
mod keys;
mod net;
mod netns;
mod proc;
mod raw;
mod tools;
mod topology;
mod util;
mod wg;
mod wgpmd;

pub use ctx::{run, Ctx};
pub use exception::{
    address_exception_tap, during_iperf3, forget_neighbour, keep_kernel_off, link_mac, nc_transfer, need, udp_flood,
};
pub use keys::{public_key_b64, KeyPair};
pub use net::{iperf3, iperf3_report, ping, ping_replied, ping_replies_within, wait_for_ping, IperfReport, PingStats};
pub use netns::{enter_netns, Netns, VethPair, OWNER_ENV};
pub use proc::Proc;
pub use raw::{send_frames, RawSent};
pub use tools::{boringtun_cli, require_tools, TOOLS};
pub use topology::{Site, Topology, CONCENTRATOR_PORT, INNER_NET, OUTER_NET};
pub use util::{run_cmd, secs, timeout_scale, unique_ifname, wait_until};
pub use wg::{wg_show, BoringtunPeer, DeviceConfig, PeerConfig, WgDevice, WgGo, WgImpl, WgShow, WgShowPeer, UAPI_DIR};
pub use wgpmd::{
    wgpmd_bin, wgpmd_run_to_exit, wgpmd_start_or_exit, Counters, FailedRun, Wgpmd, WgpmdOptions, STATS_DIR,
};
