//! Crafted Ethernet frames sent from inside a namespace through a packet socket (AF_PACKET),
//! for floods of ARP and neighbour discovery that no tool sends.

use crate::netns::{enter_netns, Netns};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`send_frames`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawSent {
    /// Frames the kernel took.
    pub sent: u64,
    /// Passes over the whole list.
    pub passes: u64,
}

/// Sends `frames` out of `ifname` in namespace `ns`, from a thread that joins the namespace with
/// setns(2), pass after pass until `stop` is set (at least one pass), at most `per_ms` frames
/// per millisecond.
///
/// The packet socket needs the interface's link address (`sockaddr_ll`) to send, and the
/// crate's socket wrappers build one only from a received frame: the thread first sends a UDP
/// datagram to `probe` (any address routed out of `ifname`) and takes the address of the
/// outgoing frame (the datagram, or the ARP request for it) that the packet socket sees.
pub fn send_frames(
    ns: &Netns,
    ifname: &str,
    probe: SocketAddr,
    frames: Arc<Vec<Vec<u8>>>,
    per_ms: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<RawSent>> {
    let (ns_name, ifname) = (ns.name().to_string(), ifname.to_string());
    std::thread::spawn(move || -> Result<RawSent> {
        use nix::sys::socket::{
            recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol,
            SockType,
        };
        enter_netns(&ns_name)?; // only this thread changes namespace
        let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), SockProtocol::EthAll)
            .context("socket(AF_PACKET)")?;
        let index = nix::net::if_::if_nametoindex(ifname.as_str())
            .with_context(|| format!("no interface {ifname} in {ns_name}"))? as usize;
        setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 100_000)).context("SO_RCVTIMEO")?;
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").context("bind a UDP socket")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        let link = loop {
            if Instant::now() > deadline {
                bail!("no frame seen on {ifname} in {ns_name} after sending to {probe}");
            }
            let _ = udp.send_to(b"probe", probe);
            match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                Ok((_, Some(a))) if a.ifindex() == index => break a,
                _ => continue,
            }
        };
        // Nothing more is read: a receive buffer that fills up only drops.
        let mut report = RawSent::default();
        let t0 = Instant::now();
        loop {
            for f in frames.iter() {
                // Pace: never ahead of `per_ms` frames per elapsed millisecond.
                while report.sent >= per_ms.saturating_mul(t0.elapsed().as_millis() as u64 + 1) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if sendto(fd.as_raw_fd(), f, &link, MsgFlags::empty()).is_ok() {
                    report.sent += 1;
                }
            }
            report.passes += 1;
            if stop.load(Ordering::Relaxed) {
                return Ok(report);
            }
        }
    })
}
