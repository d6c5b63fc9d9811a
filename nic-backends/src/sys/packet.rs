//! AF_PACKET: the socket (`socket`, `setsockopt`, `bind`, `sendmmsg`) and the TPACKET_V3 rx
//! ring mapped from it.
//!
//! The ring is `block_nr` blocks of `block_size` bytes shared with the kernel. Block states:
//! **kernel** (`block_status == TP_STATUS_KERNEL`: the kernel may be writing frames into it; we
//! read nothing but the status word) and **user** (`TP_STATUS_USER` set: the kernel has retired
//! it and will not touch it until we store `TP_STATUS_KERNEL` back). The status word is read with
//! an `Acquire` load (pairs with the kernel's write barrier before it publishes the block) and
//! written with a `Release` store after the last byte of the block has been copied out. No Rust
//! reference into the ring is ever created except the `AtomicU32` over the status word itself;
//! everything else is read through raw pointers after bounds checks, so even a ring with
//! nonsensical offsets cannot make us read outside the mapping.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Frames per `sendmmsg` call.
pub(crate) const SEND_BATCH: usize = 64;
/// `sizeof(struct virtio_net_hdr)`: what `PACKET_VNET_HDR` puts in front of each frame.
pub(crate) const VNET_HDR_LEN: usize = 10;

/// An `AF_PACKET`/`SOCK_RAW` socket, non-blocking, not yet receiving (protocol 0 until bound).
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketSocket {
    pub(crate) fn new() -> io::Result<PacketSocket> {
        // Protocol 0: nothing is received until `bind` names one, so no frame precedes the ring.
        // SAFETY: socket(2) with constant arguments; returns a new fd or -1.
        let fd = cvt(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd })
    }

    fn setsockopt<T>(&self, name: libc::c_int, val: &T) -> io::Result<()> {
        // SAFETY: `val` points to a live `T` of `size_of::<T>()` bytes for the whole call; every
        // caller passes the type the kernel expects for `SOL_PACKET`/`name`.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                name,
                (val as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    fn getsockopt<T: Copy>(&self, name: libc::c_int, init: T) -> io::Result<T> {
        let mut val = init;
        let mut len = size_of::<T>() as libc::socklen_t;
        // SAFETY: `val`/`len` are live, writable and sized for `T`; the kernel writes at most
        // `len` bytes; `T` is a plain integer or C struct valid for any bytes.
        cvt(unsafe {
            libc::getsockopt(self.fd.as_raw_fd(), libc::SOL_PACKET, name, (&mut val as *mut T).cast(), &mut len)
        })?;
        Ok(val)
    }

    pub(crate) fn set_version_v3(&self) -> io::Result<()> {
        self.setsockopt(libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V3 as libc::c_int))
    }

    /// Prefix every received and sent frame with a `virtio_net_hdr` (10 bytes): GSO frames
    /// (a peer's UDP_SEGMENT batch over a veth, GRO aggregates) arrive whole with their segment
    /// size instead of being unusable. Must be set before the ring.
    pub(crate) fn set_vnet_hdr(&self) -> io::Result<()> {
        self.setsockopt(libc::PACKET_VNET_HDR, &(1 as libc::c_int))
    }

    /// Do not deliver frames this host transmits on the interface (Linux 4.20+).
    pub(crate) fn set_ignore_outgoing(&self) -> io::Result<()> {
        self.setsockopt(libc::PACKET_IGNORE_OUTGOING, &(1 as libc::c_int))
    }

    /// Ask for the TPACKET_V3 rx ring and map it.
    pub(crate) fn rx_ring(&self, block_size: usize, block_nr: usize, retire_ms: u32) -> io::Result<RxRing> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let frame_size = 2048usize;
        let req = libc::tpacket_req3 {
            tp_block_size: u32::try_from(block_size).map_err(|_| einval())?,
            tp_block_nr: u32::try_from(block_nr).map_err(|_| einval())?,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: u32::try_from(block_size / frame_size * block_nr).map_err(|_| einval())?,
            tp_retire_blk_tov: retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        self.setsockopt(libc::PACKET_RX_RING, &req)?;
        let len = block_size.checked_mul(block_nr).ok_or_else(einval)?;
        // Maps the ring the kernel just allocated for this socket: offset 0, exactly its size.
        // SAFETY: a fresh mapping at a kernel-chosen address affects no existing memory; the
        // result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(einval)?;
        Ok(RxRing { base, map_len: len, block_size, block_nr })
    }

    /// Bind to `ifindex` for all protocols: frames start arriving.
    pub(crate) fn bind(&self, ifindex: i32) -> io::Result<()> {
        // SAFETY: all-zero is a valid `sockaddr_ll`.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sa.sll_ifindex = ifindex;
        // SAFETY: `sa` is a live `sockaddr_ll` and the length passed is its size.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    /// Join fanout group `id` with `mode | flags` (`PACKET_FANOUT_*`); must follow `bind`.
    pub(crate) fn join_fanout(&self, id: u16, mode_and_flags: u32) -> io::Result<()> {
        let val: u32 = u32::from(id) | (mode_and_flags << 16);
        self.setsockopt(libc::PACKET_FANOUT, &val)
    }

    /// The fanout group id this socket is in (the one the kernel picked for `FLAG_UNIQUEID`).
    pub(crate) fn fanout_id(&self) -> io::Result<u16> {
        let v: u32 = self.getsockopt(libc::PACKET_FANOUT, 0u32)?;
        Ok((v & 0xffff) as u16)
    }

    /// Frames the kernel dropped because the ring was full, since the last call (the kernel
    /// resets its counters on read).
    pub(crate) fn take_drops(&self) -> io::Result<u32> {
        let s = self.getsockopt(
            libc::PACKET_STATISTICS,
            libc::tpacket_stats_v3 { tp_packets: 0, tp_drops: 0, tp_freeze_q_cnt: 0 },
        )?;
        Ok(s.tp_drops)
    }

    /// Send up to `SEND_BATCH` frames with one `sendmmsg` to the bound interface; returns how
    /// many the kernel took (it stops at the first error, which is returned when it is the
    /// first frame's).
    ///
    /// With `vnet`, each frame goes out behind an all-zero `virtio_net_hdr` (no offload: the
    /// socket has `PACKET_VNET_HDR`).
    pub(crate) fn send_batch(&self, frames: &[&[u8]], vnet: bool) -> io::Result<usize> {
        static ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let n = frames.len().min(SEND_BATCH);
        if n == 0 {
            return Ok(0);
        }
        let per = if vnet { 2 } else { 1 };
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2 * SEND_BATCH];
        for (i, f) in frames.iter().take(n).enumerate() {
            // The kernel only reads through iov_base (the `*mut` is the C type's, not a write).
            if vnet {
                iov[2 * i] = libc::iovec { iov_base: ZERO_VNET.as_ptr() as *mut libc::c_void, iov_len: VNET_HDR_LEN };
            }
            iov[per * i + per - 1] = libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() };
        }
        // SAFETY: all-zero is a valid `mmsghdr` (null name/control pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate().take(n) {
            m.msg_hdr.msg_iov = iov.as_mut_ptr().wrapping_add(per * i);
            m.msg_hdr.msg_iovlen = per;
        }
        // The kernel reads `msgs[..n]` and their iovecs, and writes only each `msg_len`.
        let (fd, vlen) = (self.fd.as_raw_fd(), n as libc::c_uint);
        // SAFETY: each header's single iovec points into a frame slice borrowed for the whole
        // call (`frames`), and `iov` and `msgs` outlive the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
        Ok(cvt(r)? as usize)
    }
}

/// What the kernel wrote in front of a block (`tpacket_hdr_v1`, after `block_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHdr {
    pub(crate) num_pkts: u32,
    pub(crate) first_pkt: usize,
}

/// What the kernel wrote in front of a frame (`tpacket3_hdr` and `sockaddr_ll.sll_pkttype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHdr {
    pub(crate) next_offset: usize,
    pub(crate) snaplen: usize,
    pub(crate) len: usize,
    pub(crate) status: u32,
    pub(crate) mac: usize,
    pub(crate) vlan_tci: u16,
    pub(crate) vlan_tpid: u16,
    pub(crate) pkttype: u8,
}

const BLOCK_STATUS: usize = offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize = offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
const HV1: usize = offset_of!(libc::tpacket3_hdr, hv1);
/// `sockaddr_ll` follows the frame header at `TPACKET_ALIGN(sizeof(tpacket3_hdr))`.
const SLL: usize = size_of::<libc::tpacket3_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT);
const FRAME_HDR_SPAN: usize = SLL + size_of::<libc::sockaddr_ll>();
/// Where `mock_frame` puts the MAC header, from the frame's start (minus the 16-alignment and +2).
#[cfg(test)]
pub(crate) const FRAME_HDR_SPAN_FOR_TESTS: usize = FRAME_HDR_SPAN;

/// A mapped TPACKET_V3 rx ring (see the module docs for the block states).
#[derive(Debug)]
pub(crate) struct RxRing {
    base: NonNull<u8>,
    map_len: usize,
    block_size: usize,
    block_nr: usize,
}

// SAFETY: the ring is a mapping owned by this value (unmapped on drop); it has no thread
// affinity, and all access goes through `&self`/`&mut self` methods of the single owner.
unsafe impl Send for RxRing {}

impl RxRing {
    pub(crate) fn block_nr(&self) -> usize {
        self.block_nr
    }

    /// Pointer to `size` bytes at `off` in block `b`, if they lie inside the block and are
    /// `align`-aligned.
    fn at(&self, b: usize, off: usize, size: usize, align: usize) -> Option<*mut u8> {
        if b >= self.block_nr || off.checked_add(size)? > self.block_size || !off.is_multiple_of(align) {
            return None;
        }
        // In bounds of the mapping (b < block_nr, off + size <= block_size); the mapping is
        // page-aligned and block_size a multiple of the page size, so alignment carries over.
        Some(self.base.as_ptr().wrapping_add(b * self.block_size + off))
    }

    fn status_word(&self, b: usize) -> Option<&AtomicU32> {
        let p = self.at(b, BLOCK_STATUS, 4, 4)?;
        // The kernel writes this word concurrently: an `AtomicU32` (an `UnsafeCell`) allows it.
        // SAFETY: `p` is 4-byte aligned and inside the mapping, which lives as long as `&self`;
        // the word is only ever accessed atomically from our side.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// `block_status` of block `b` (`Acquire`: once it shows `TP_STATUS_USER`, the kernel's
    /// writes to the block are visible). 0 for an out-of-range block.
    pub(crate) fn block_status(&self, b: usize) -> u32 {
        self.status_word(b).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// Hand block `b` back to the kernel (`Release`: our reads of it happen before).
    pub(crate) fn release(&self, b: usize) {
        if let Some(w) = self.status_word(b) {
            w.store(libc::TP_STATUS_KERNEL, Ordering::Release);
        }
    }

    fn read_u32(&self, b: usize, off: usize) -> Option<u32> {
        let p = self.at(b, off, 4, 4)?;
        // SAFETY: in bounds and aligned (checked by `at`); only called on a block in the user
        // state, which the kernel does not write. Volatile: memory shared with the kernel.
        Some(unsafe { std::ptr::read_volatile(p.cast::<u32>()) })
    }

    fn read_u16(&self, b: usize, off: usize) -> Option<u16> {
        let p = self.at(b, off, 2, 2)?;
        // SAFETY: as in `read_u32`.
        Some(unsafe { std::ptr::read_volatile(p.cast::<u16>()) })
    }

    fn read_u8(&self, b: usize, off: usize) -> Option<u8> {
        let p = self.at(b, off, 1, 1)?;
        // SAFETY: as in `read_u32`.
        Some(unsafe { std::ptr::read_volatile(p) })
    }

    /// The block header; call only after `block_status(b)` showed `TP_STATUS_USER`.
    pub(crate) fn block_hdr(&self, b: usize) -> Option<BlockHdr> {
        Some(BlockHdr {
            num_pkts: self.read_u32(b, BLOCK_NUM_PKTS)?,
            first_pkt: self.read_u32(b, BLOCK_FIRST)? as usize,
        })
    }

    /// The frame header at `off` in block `b` (user state), if it lies inside the block.
    pub(crate) fn frame_hdr(&self, b: usize, off: usize) -> Option<FrameHdr> {
        self.at(b, off, FRAME_HDR_SPAN, 4)?;
        let f = |o: usize| self.read_u32(b, off + o);
        Some(FrameHdr {
            next_offset: f(offset_of!(libc::tpacket3_hdr, tp_next_offset))? as usize,
            snaplen: f(offset_of!(libc::tpacket3_hdr, tp_snaplen))? as usize,
            len: f(offset_of!(libc::tpacket3_hdr, tp_len))? as usize,
            status: f(offset_of!(libc::tpacket3_hdr, tp_status))?,
            mac: self.read_u16(b, off + offset_of!(libc::tpacket3_hdr, tp_mac))? as usize,
            vlan_tci: f(HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci))? as u16,
            vlan_tpid: self.read_u16(b, off + HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid))?,
            pkttype: self.read_u8(b, off + SLL + offset_of!(libc::sockaddr_ll, sll_pkttype))?,
        })
    }

    /// Copy `dst.len()` bytes at `off` in block `b` (user state) into `dst`; false (and nothing
    /// copied) if they do not lie inside the block.
    pub(crate) fn copy_out(&self, b: usize, off: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.at(b, off, dst.len(), 1) else {
            return false;
        };
        // `dst` is an exclusively borrowed Rust slice of the same length: no overlap possible.
        // SAFETY: the source range is inside the mapping (checked by `at`), in a block the kernel
        // does not write while it is in the user state.
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), dst.as_mut_ptr(), dst.len()) };
        true
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `rx_ring` (or `mock`); no pointer into it
        // survives (`at` results never escape a method).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
        }
    }
}

/// A ring in anonymous memory that a test fills the way the kernel would.
#[cfg(test)]
impl RxRing {
    pub(crate) fn mock(block_size: usize, block_nr: usize) -> RxRing {
        let map_len = block_size * block_nr;
        // SAFETY: fresh anonymous mapping, checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        RxRing { base: NonNull::new(p.cast()).unwrap(), map_len, block_size, block_nr }
    }

    /// Write `bytes` at `off` in block `b` (as the kernel would).
    pub(crate) fn mock_write(&self, b: usize, off: usize, bytes: &[u8]) {
        let p = self.at(b, off, bytes.len(), 1).expect("mock write out of bounds");
        // SAFETY: destination inside the mapping (checked by `at`); the test is the only user.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    /// Publish block `b` with `num_pkts` frames starting at `first`.
    pub(crate) fn mock_publish(&self, b: usize, num_pkts: u32, first: usize) {
        self.mock_write(b, BLOCK_NUM_PKTS, &num_pkts.to_ne_bytes());
        self.mock_write(b, BLOCK_FIRST, &(first as u32).to_ne_bytes());
        if let Some(w) = self.status_word(b) {
            w.store(libc::TP_STATUS_USER, Ordering::Release);
        }
    }

    /// Write a frame header + `data` at `off` in block `b`; returns the offset after it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mock_frame(
        &self,
        b: usize,
        off: usize,
        next: u32,
        data: &[u8],
        status: u32,
        vlan: Option<(u16, u16)>,
        pkttype: u8,
    ) -> usize {
        let mac = FRAME_HDR_SPAN.next_multiple_of(16) + 2; // like the kernel: net header 16-aligned
        let w = |o: usize, v: &[u8]| self.mock_write(b, off + o, v);
        w(offset_of!(libc::tpacket3_hdr, tp_next_offset), &next.to_ne_bytes());
        w(offset_of!(libc::tpacket3_hdr, tp_snaplen), &(data.len() as u32).to_ne_bytes());
        w(offset_of!(libc::tpacket3_hdr, tp_len), &(data.len() as u32).to_ne_bytes());
        let mut st = status;
        if let Some((tci, tpid)) = vlan {
            st |= libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
            w(HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci), &u32::from(tci).to_ne_bytes());
            w(HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid), &tpid.to_ne_bytes());
        }
        w(offset_of!(libc::tpacket3_hdr, tp_status), &st.to_ne_bytes());
        w(offset_of!(libc::tpacket3_hdr, tp_mac), &(mac as u16).to_ne_bytes());
        w(SLL + offset_of!(libc::sockaddr_ll, sll_pkttype), &[pkttype]);
        w(mac, data);
        (off + mac + data.len()).next_multiple_of(16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel_headers() {
        assert_eq!(BLOCK_STATUS, 8);
        assert_eq!(BLOCK_NUM_PKTS, 12);
        assert_eq!(BLOCK_FIRST, 16);
        assert_eq!(size_of::<libc::tpacket3_hdr>(), 48);
        assert_eq!(SLL, 48);
        assert_eq!(FRAME_HDR_SPAN, 68);
    }

    #[test]
    fn reads_outside_a_block_are_refused() {
        let r = RxRing::mock(4096, 2);
        assert_eq!(r.block_status(2), 0);
        assert!(r.block_hdr(5).is_none());
        assert!(r.frame_hdr(0, 4096 - 67).is_none());
        assert!(r.frame_hdr(0, 2).is_none(), "misaligned");
        assert!(r.frame_hdr(0, usize::MAX - 3).is_none());
        let mut buf = [0u8; 16];
        assert!(!r.copy_out(1, 4090, &mut buf));
        assert!(r.copy_out(1, 4080, &mut buf));
        r.release(7); // out of range: ignored
    }

    #[test]
    fn publish_and_release_round_trip() {
        let r = RxRing::mock(4096, 2);
        let next = r.mock_frame(1, 48, 0, b"hello", 0, Some((7, 0x88a8)), 0);
        assert!(next > 48);
        r.mock_publish(1, 1, 48);
        assert_eq!(r.block_status(1) & libc::TP_STATUS_USER, libc::TP_STATUS_USER);
        assert_eq!(r.block_hdr(1), Some(BlockHdr { num_pkts: 1, first_pkt: 48 }));
        let f = r.frame_hdr(1, 48).unwrap();
        assert_eq!((f.snaplen, f.len, f.vlan_tci, f.vlan_tpid), (5, 5, 7, 0x88a8));
        let mut d = [0u8; 5];
        assert!(r.copy_out(1, 48 + f.mac, &mut d));
        assert_eq!(&d, b"hello");
        r.release(1);
        assert_eq!(r.block_status(1), libc::TP_STATUS_KERNEL);
    }

    #[test]
    fn socket_options_on_an_unbound_socket() {
        let s = PacketSocket::new().expect("AF_PACKET socket (tests run as root)");
        s.set_version_v3().unwrap();
        let ring = s.rx_ring(1 << 16, 4, 1).unwrap();
        assert_eq!(ring.block_nr(), 4);
        assert_eq!(ring.block_status(0) & libc::TP_STATUS_USER, 0);
        assert_eq!(s.take_drops().unwrap(), 0);
    }
}
