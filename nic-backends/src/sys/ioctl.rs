//! Every ioctl of the crate: interface index, hardware address, MTU and flags (`SIOC*IF*` on a
//! control socket, which resolves names in the calling thread's network namespace), and
//! `TUNSETIFF`. Each takes a validated [`IfName`], so the kernel always gets a NUL-terminated
//! name of at most 15 bytes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A Linux interface name: 1..=15 bytes, no '/', ':', NUL or whitespace, not "." or "..".
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct IfName {
    raw: [libc::c_char; libc::IFNAMSIZ],
    len: usize,
}

impl IfName {
    pub(crate) fn new(name: &str) -> Result<IfName, &'static str> {
        let b = name.as_bytes();
        if b.is_empty() {
            return Err("empty");
        }
        if b.len() >= libc::IFNAMSIZ {
            return Err("longer than 15 bytes");
        }
        if name == "." || name == ".." {
            return Err("`.` and `..` are not interface names");
        }
        if b.iter().any(|&c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace()) {
            return Err("contains '/', ':', NUL or whitespace");
        }
        let mut raw = [0 as libc::c_char; libc::IFNAMSIZ];
        for (r, &c) in raw.iter_mut().zip(b) {
            *r = c as libc::c_char;
        }
        Ok(IfName { raw, len: b.len() })
    }

    /// The name as bytes (without the terminating NUL).
    pub(crate) fn as_str(&self) -> String {
        self.raw[..self.len].iter().map(|&c| c as u8 as char).collect()
    }

    fn req(&self) -> libc::ifreq {
        // SAFETY: `ifreq` is plain old data (a name array and a union of integers, sockaddrs
        // and a pointer) for which all-zero bytes are a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        r.ifr_name = self.raw;
        r
    }
}

impl std::fmt::Debug for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An unbound `AF_INET` datagram socket to issue interface ioctls on.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; it returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2), is open, and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// ioctl(`fd`, `req`, `ifr`).
fn ifreq_ioctl(fd: BorrowedFd<'_>, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // Every request passed here (SIOC[GS]IF*, TUNSETIFF) reads and/or writes one `struct ifreq`.
    // SAFETY: `ifr` is a valid, exclusively borrowed `ifreq` for the whole call, `fd` is open;
    // the kernel accesses nothing else.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut libc::ifreq) }).map(|_| ())
}

pub(crate) fn if_index(ctl: BorrowedFd<'_>, name: &IfName) -> io::Result<i32> {
    let mut r = name.req();
    ifreq_ioctl(ctl, libc::SIOCGIFINDEX as libc::Ioctl, &mut r)?;
    // SAFETY: SIOCGIFINDEX succeeded, so the kernel filled the `ifru_ifindex` member.
    Ok(unsafe { r.ifr_ifru.ifru_ifindex })
}

/// `(ARPHRD_* type, first 6 address bytes)`.
pub(crate) fn hw_addr(ctl: BorrowedFd<'_>, name: &IfName) -> io::Result<(u16, [u8; 6])> {
    let mut r = name.req();
    ifreq_ioctl(ctl, libc::SIOCGIFHWADDR as libc::Ioctl, &mut r)?;
    // SAFETY: SIOCGIFHWADDR succeeded, so the kernel filled the `ifru_hwaddr` sockaddr (and
    // every member of the union is plain data valid for any bytes anyway).
    let sa = unsafe { r.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, &c) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = c as u8;
    }
    Ok((sa.sa_family, mac))
}

pub(crate) fn mtu(ctl: BorrowedFd<'_>, name: &IfName) -> io::Result<usize> {
    let mut r = name.req();
    ifreq_ioctl(ctl, libc::SIOCGIFMTU as libc::Ioctl, &mut r)?;
    // SAFETY: SIOCGIFMTU succeeded, so the kernel filled `ifru_mtu`.
    let m = unsafe { r.ifr_ifru.ifru_mtu };
    Ok(usize::try_from(m).unwrap_or(0))
}

pub(crate) fn set_mtu(ctl: BorrowedFd<'_>, name: &IfName, mtu: usize) -> io::Result<()> {
    let mut r = name.req();
    r.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    ifreq_ioctl(ctl, libc::SIOCSIFMTU as libc::Ioctl, &mut r)
}

/// Set the Ethernet address (`SIOCSIFHWADDR`, `ARPHRD_ETHER`).
pub(crate) fn set_hw_addr(ctl: BorrowedFd<'_>, name: &IfName, mac: [u8; 6]) -> io::Result<()> {
    let mut r = name.req();
    // SAFETY: writing plain-data members of the `ifru_hwaddr` sockaddr in the union; every
    // member of the union is plain data, valid for any bytes.
    unsafe {
        r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, &m) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac.iter()) {
            *d = m as libc::c_char;
        }
    }
    ifreq_ioctl(ctl, libc::SIOCSIFHWADDR as libc::Ioctl, &mut r)
}

/// `IFF_*` flags (the kernel's 16-bit `ifr_flags`, widened without sign extension).
pub(crate) fn flags(ctl: BorrowedFd<'_>, name: &IfName) -> io::Result<i32> {
    let mut r = name.req();
    ifreq_ioctl(ctl, libc::SIOCGIFFLAGS as libc::Ioctl, &mut r)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled `ifru_flags`.
    Ok(i32::from(unsafe { r.ifr_ifru.ifru_flags } as u16))
}

pub(crate) fn set_flags(ctl: BorrowedFd<'_>, name: &IfName, flags: i32) -> io::Result<()> {
    let mut r = name.req();
    r.ifr_ifru.ifru_flags = flags as u16 as libc::c_short;
    ifreq_ioctl(ctl, libc::SIOCSIFFLAGS as libc::Ioctl, &mut r)
}

/// Attach the TUN fd `fd` to interface `name` with `flags` (`IFF_TUN | ...`), creating the
/// interface if needed; returns the name the kernel used (a `%d` template resolves here).
pub(crate) fn tun_set_iff(fd: BorrowedFd<'_>, name: &IfName, flags: i32) -> io::Result<IfName> {
    let mut r = name.req();
    r.ifr_ifru.ifru_flags = flags as libc::c_short;
    ifreq_ioctl(fd, libc::TUNSETIFF as libc::Ioctl, &mut r)?;
    let len = r.ifr_name.iter().position(|&c| c == 0).unwrap_or(libc::IFNAMSIZ - 1);
    Ok(IfName { raw: r.ifr_name, len })
}

/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`): the offloads the TUN reader takes
/// (`TUN_F_CSUM`, `TUN_F_TSO4`...); the fd must have `IFF_VNET_HDR`.
pub(crate) fn tun_set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory is passed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn names_are_validated() {
        assert_eq!(IfName::new("eth0").unwrap().as_str(), "eth0");
        assert_eq!(IfName::new("a23456789012345").unwrap().as_str().len(), 15);
        assert_eq!(IfName::new(""), Err("empty"));
        assert_eq!(IfName::new("a234567890123456"), Err("longer than 15 bytes"));
        assert!(IfName::new("a/b").is_err());
        assert!(IfName::new("a b").is_err());
        assert!(IfName::new("eth0:1").is_err());
        assert!(IfName::new("..").is_err());
    }

    // The `#[cfg(test)]` twin of each ioctl, against the loopback interface every network
    // namespace has.
    #[test]
    fn loopback_through_every_getter() {
        let ctl = control_socket().unwrap();
        let lo = IfName::new("lo").unwrap();
        assert!(if_index(ctl.as_fd(), &lo).unwrap() >= 1);
        let (hw, mac) = hw_addr(ctl.as_fd(), &lo).unwrap();
        assert_eq!(hw, libc::ARPHRD_LOOPBACK);
        assert_eq!(mac, [0; 6]);
        assert!(mtu(ctl.as_fd(), &lo).unwrap() >= 1280);
        assert_ne!(flags(ctl.as_fd(), &lo).unwrap() & libc::IFF_LOOPBACK, 0);
    }

    #[test]
    fn missing_interface_is_enodev() {
        let ctl = control_socket().unwrap();
        let e = if_index(ctl.as_fd(), &IfName::new("nicb-nosuch0").unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
