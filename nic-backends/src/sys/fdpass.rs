//! Receiving file descriptors with SCM_RIGHTS (the vhost-user relay).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Descriptors one message may carry (the vhost-user limit).
pub(crate) const MAX_FDS: usize = 32;

/// One `recvmsg` on `sock` into `buf`; the descriptors that came with it are appended to `fds`,
/// owned. Returns the bytes read (0: the peer closed the socket).
pub(crate) fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let n = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel installed each of these descriptors in this process for this
            // message (SCM_RIGHTS of the `recvmsg` above); nothing else owns or knows them.
            fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok(n)
}
