//! Receiving file descriptors with SCM_RIGHTS (the vhost-user relay).
//!
//! The control buffer holds as many descriptors as the kernel lets one message carry
//! (`SCM_MAX_FD`), so that every descriptor the kernel installs is seen and owned here. Should the
//! kernel still report the control data truncated (`MSG_CTRUNC`: a descriptor it could not
//! install, or more than fit), the descriptors it did install are taken from the buffer and
//! closed, and the message is refused ([`Truncated`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Descriptors one vhost-user message may carry (the protocol's limit).
pub(crate) const MAX_FDS: usize = 32;

/// Descriptors the kernel passes in one message at most (`SCM_MAX_FD`, include/net/scm.h).
pub(crate) const SCM_MAX_FD: usize = 253;

/// The error of a message whose control data the kernel truncated (`MSG_CTRUNC`): the peer sent
/// descriptors that were not all received. The ones that were are closed.
#[derive(Debug)]
pub(crate) struct Truncated;

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the message's file descriptors were truncated (MSG_CTRUNC)")
    }
}

impl std::error::Error for Truncated {}

/// True if `e` is [`recv_with_fds`]'s error for truncated control data.
pub(crate) fn is_truncated(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Truncated>())
}

/// One `recvmsg` on `sock` into `buf`; the descriptors that came with it are appended to `fds`,
/// owned. Returns the bytes read (0: the peer closed the socket). A message whose descriptors
/// were truncated is an error ([`is_truncated`]); none of its descriptors stays open.
pub(crate) fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    recv_with_fds_cap(sock, buf, fds, SCM_MAX_FD)
}

/// [`recv_with_fds`] with room for `cap` descriptors.
fn recv_with_fds_cap(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>, cap: usize) -> std::io::Result<usize> {
    let fd_bytes = u32::try_from(cap * std::mem::size_of::<RawFd>()).map_err(std::io::Error::other)?;
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 words: aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = (control.len() * 8) as _;
    let n = loop {
        // SAFETY: `hdr` points at `iov` (→ `buf`, writable for its length) and at `control`
        // (writable for `msg_controllen` bytes), all alive across the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Every descriptor the kernel installed is owned before anything else is looked at.
    let first = fds.len();
    // The kernel set `hdr`'s control length to what it wrote (at most our buffer), and an
    // SCM_RIGHTS header's data holds `(cmsg_len - CMSG_LEN(0)) / size_of::<RawFd>()` descriptors.
    // SAFETY: `hdr` as `recvmsg` filled it delimits `control` (alive, aligned); CMSG_FIRSTHDR/
    // CMSG_NXTHDR stay within its length, and the descriptors are read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = data.add(i).read_unaligned();
                    // SAFETY (of the wrap): the kernel installed this descriptor in this
                    // process for this message; nothing else owns or knows it.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.truncate(first);
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, Truncated));
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

    /// A file of its own, and how many of this process's descriptors refer to it.
    pub(crate) struct Marker {
        pub(crate) file: std::fs::File,
        path: std::path::PathBuf,
    }

    impl Marker {
        pub(crate) fn new(name: &str) -> Marker {
            let path = std::env::temp_dir().join(format!("nic-backends-fdpass-{name}-{}", std::process::id()));
            let file = std::fs::File::create(&path).unwrap();
            Marker { file, path }
        }
        /// Open descriptors of this process that refer to the marker file.
        pub(crate) fn open(&self) -> usize {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|p| *p == self.path)
                .count()
        }
        /// Sends one byte with `n` copies of the marker's descriptor.
        pub(crate) fn send(&self, s: &UnixStream, n: usize) -> nix::Result<usize> {
            let raw = vec![self.file.as_fd().as_raw_fd(); n];
            let cm = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(&[0u8])], &cm, MsgFlags::empty(), None)
        }
    }

    impl Drop for Marker {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn all_descriptors_the_kernel_passes_are_received_and_owned() {
        let m = Marker::new("max");
        let (a, b) = UnixStream::pair().unwrap();
        // The kernel refuses more than SCM_MAX_FD in one message.
        assert_eq!(m.send(&a, 300), Err(nix::errno::Errno::EINVAL));
        assert_eq!(m.send(&a, SCM_MAX_FD), Ok(1));
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut [0u8; 4], &mut fds).unwrap(), 1);
        assert_eq!(fds.len(), SCM_MAX_FD);
        assert_eq!(m.open(), 1 + SCM_MAX_FD);
        drop(fds);
        assert_eq!(m.open(), 1);
    }

    #[test]
    fn truncated_descriptors_are_closed_and_the_message_refused() {
        let m = Marker::new("ctrunc");
        let (a, b) = UnixStream::pair().unwrap();
        m.send(&a, 10).unwrap();
        let mut fds = Vec::new();
        // Room for 4: the kernel installs 4 and truncates the rest.
        let e = recv_with_fds_cap(&b, &mut [0u8; 4], &mut fds, 4).unwrap_err();
        assert!(is_truncated(&e), "{e}");
        assert!(fds.is_empty());
        assert_eq!(m.open(), 1);
    }
}
