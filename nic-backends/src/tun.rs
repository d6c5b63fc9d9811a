//! `tun:NAME`: a multi-queue TUN interface, the kernel exception path.
//!
//! One `/dev/net/tun` fd per queue, each attached with `TUNSETIFF` (`IFF_TUN | IFF_NO_PI |
//! IFF_MULTI_QUEUE`) to the same name, non-blocking. The interface is not persistent: it exists
//! while at least one queue fd is open, so dropping the port and all its queues removes it.
//! On open the MTU is set (`PortOptions::mtu`, default 1420, WireGuard's) and the link is
//! brought up.
//!
//! One IP packet per `read(2)`/`write(2)`, at `HEADROOM` of a buffer. Batching (readv/writev of
//! several buffers is not possible on a TUN fd, but io_uring or `IFF_NAPI` + vnet headers with
//! GSO are) is a later optimisation.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::buffer::{Buffer, Pool};
use crate::error::PortError;
use crate::port::{check_mtu, Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::ioctl::{self, IfName};

/// MTU of a TUN port when `PortOptions::mtu` is `None` (the wg-quick default).
pub const DEFAULT_MTU: usize = 1420;

/// A TUN port.
pub struct TunPort {
    info: PortInfo,
    name: IfName,
    ctl: OwnedFd,
    queues: Vec<Option<TunQueue>>,
}

/// One queue (fd) of a [`TunPort`].
pub struct TunQueue {
    file: File,
    stats: QueueStats,
    /// The interface's name, for the fault message.
    name: String,
    /// A read or write said the queue is no longer attached to an interface (`EBADFD`: the
    /// TUN was deleted from outside, `ip link del`). Reported by [`Queue::health`].
    detached: bool,
}

impl TunPort {
    pub(crate) fn open(spec: &str, name: &str, opts: &PortOptions) -> Result<TunPort, PortError> {
        let mut name = IfName::new(name).map_err(|reason| PortError::BadName { spec: spec.to_string(), reason })?;
        let mtu = opts.mtu.unwrap_or(DEFAULT_MTU);
        check_mtu(spec, mtu, 0)?;
        let os = |op| move |e| PortError::os(spec, op, e);
        let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        let mut queues = Vec::with_capacity(opts.queues);
        for _ in 0..opts.queues {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/dev/net/tun")
                .map_err(os("open /dev/net/tun"))?;
            // The first attach may resolve a "%d" template; the others use the result.
            name = ioctl::tun_set_iff(file.as_fd(), &name, flags).map_err(os("TUNSETIFF"))?;
            queues.push(Some(TunQueue {
                file,
                stats: QueueStats::default(),
                name: name.as_str().to_string(),
                detached: false,
            }));
        }
        let ctl = ioctl::control_socket().map_err(os("socket(AF_INET)"))?;
        ioctl::set_mtu(ctl.as_fd(), &name, mtu).map_err(os("SIOCSIFMTU"))?;
        let f = ioctl::flags(ctl.as_fd(), &name).map_err(os("SIOCGIFFLAGS"))?;
        if f & libc::IFF_UP == 0 {
            ioctl::set_flags(ctl.as_fd(), &name, f | libc::IFF_UP).map_err(os("SIOCSIFFLAGS"))?;
        }
        let info = PortInfo { name: name.as_str(), mac: None, mtu, kind: "tun" };
        Ok(TunPort { info, name, ctl, queues })
    }
}

impl Port for TunPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }
    fn num_queues(&self) -> usize {
        self.queues.len()
    }
    fn take_queue(&mut self, q: usize) -> Option<Box<dyn Queue>> {
        self.queues.get_mut(q)?.take().map(|q| Box::new(q) as Box<dyn Queue>)
    }
    fn link_up(&self) -> bool {
        let up = libc::IFF_UP | libc::IFF_RUNNING;
        ioctl::flags(self.ctl.as_fd(), &self.name).is_ok_and(|f| f & up == up)
    }
}

impl Queue for TunQueue {
    fn rx_burst(&mut self, pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut b) = pool.alloc() else { break };
            let room = b.data_and_tailroom_mut();
            let cap = room.len();
            match self.file.read(room) {
                // A read that fills the buffer may have been cut short (TUN truncates silently).
                Ok(len) if len == 0 || len >= cap => self.stats.rx_errors += 1,
                Ok(len) => {
                    if b.set_len(len).is_ok() {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += len as u64;
                        out.push(b);
                        n += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                    self.stats.rx_errors += 1;
                    break;
                }
            }
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        let mut taken = 0;
        for b in bufs.iter() {
            match self.file.write(b.data()) {
                Ok(_) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += b.len() as u64;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                // Refused for itself (not IPv4/IPv6, too short): take it, count it.
                Err(e) => {
                    self.detached |= e.raw_os_error() == Some(libc::EBADFD);
                    self.stats.tx_errors += 1
                }
            }
            taken += 1;
        }
        bufs.drain(..taken);
        taken
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }

    /// A queue whose interface was deleted from outside (`ip link del`) stays detached: the
    /// daemon stops with this message rather than run on without its inner side.
    fn health(&self) -> Result<(), String> {
        if self.detached {
            Err(format!(
                "TUN interface {} was deleted from outside (its queue reads EBADFD); restart wgpmd to recreate it",
                self.name
            ))
        } else {
            Ok(())
        }
    }
}
