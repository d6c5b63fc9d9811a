//! AF_XDP sockets: the UMEM registration over a pool's region, the four rings (fill,
//! completion, rx, tx) mapped from the kernel, bind, wakeups and statistics.
//!
//! The rings are single-producer/single-consumer arrays shared with the kernel: a producer
//! index, a consumer index and a flags word, each a `u32` the other side reads concurrently
//! (accessed only through `AtomicU32`: `Acquire` when reading the other side's index,
//! `Release` when publishing ours), and a power-of-two array of descriptors. Descriptors are
//! read and written with raw, masked pointers (never a Rust reference into the ring).
//!
//! What makes the UMEM safe to hand to the kernel is the caller's bookkeeping
//! (`af_xdp.rs`): an address goes to the fill or tx ring only while the caller holds the
//! slot's `Buffer` aside, untouched, and the `Buffer` comes back out only when the kernel
//! returned the address (rx or completion ring). [`XskSocket`] keeps a clone of the pool so
//! the region outlives the socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::buffer::{Pool, BUF_SIZE};

/// One mapped ring.
struct Ring {
    map: NonNull<u8>,
    map_len: usize,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    size: u32,
    /// Our copy of our own index (producer for fill/tx, consumer for rx/completion).
    local: u32,
    /// The other side's index as last read.
    cached: u32,
}

// SAFETY: the mapping is owned by the Ring (unmapped on drop); the ring is used by one thread
// at a time (`&mut self` for every access), and the kernel's side is synchronised through the
// atomic indices.
unsafe impl Send for Ring {}

impl Ring {
    /// Map the ring at `pgoff` of `fd`: `off` are the kernel's offsets, `elem` the descriptor size.
    fn map(fd: RawFd, pgoff: u64, off: &libc::xdp_ring_offset, size: u32, elem: usize) -> io::Result<Ring> {
        let desc = usize::try_from(off.desc).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let map_len = desc + size as usize * elem;
        for o in [off.producer, off.consumer, off.flags] {
            if o as usize + 4 > desc || !(o as usize).is_multiple_of(4) {
                return Err(io::Error::other("AF_XDP ring offsets out of range"));
            }
        }
        // SAFETY: a fresh shared mapping of the socket's ring at an address the kernel picks;
        // no existing memory is affected, and the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mut r = Ring {
            map,
            map_len,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            flags: off.flags as usize,
            desc,
            size,
            local: 0,
            cached: 0,
        };
        // Start from where the kernel stands (both 0 on a fresh socket).
        r.local = r.word(r.producer).load(Ordering::Relaxed);
        Ok(r)
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is one of the kernel's index/flags offsets, checked at map time to lie,
        // 4-byte aligned, inside the mapping, which lives as long as `self`; the kernel only
        // accesses these words atomically.
        unsafe { &*self.map.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn needs_wakeup(&self) -> bool {
        self.word(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot_ptr(&self, i: u32, elem: usize) -> *mut u8 {
        let i = (i & (self.size - 1)) as usize;
        // SAFETY: i < size, so desc + i * elem + elem <= map_len: inside the mapping.
        unsafe { self.map.as_ptr().add(self.desc + i * elem) }
    }

    // --- producer side (fill, tx): `local` is our producer, `cached` the kernel's consumer.

    fn prod_free(&mut self) -> u32 {
        self.cached = self.word(self.consumer).load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached).min(self.size)
    }

    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.word(self.producer).store(self.local, Ordering::Release);
    }

    // --- consumer side (rx, completion): `local` is our consumer, `cached` the kernel's producer.

    fn cons_avail(&mut self) -> u32 {
        self.cached = self.word(self.producer).load(Ordering::Acquire);
        self.cached.wrapping_sub(self.local).min(self.size)
    }

    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.word(self.consumer).store(self.local, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; nothing refers into it after drop.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// Ring sizes (each a power of two).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingSizes {
    pub fill: u32,
    pub comp: u32,
    pub rx: u32,
    pub tx: u32,
}

/// What the kernel counted for a socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct XskStats {
    /// Dropped for other reasons than a full ring.
    pub rx_dropped: u64,
    /// Dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_empty: u64,
    /// Invalid rx / tx descriptors.
    pub invalid: u64,
}

/// An AF_XDP socket bound to one queue of an interface, with its own UMEM (a pool's region).
/// Fields drop in declaration order: the rings unmap, then the socket closes (unregistering
/// the UMEM), then the pool clone lets its memory go.
pub(crate) struct XskSocket {
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
    zerocopy: bool,
    fd: OwnedFd,
    _pool: Pool,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live `T` of the size passed; the kernel copies it in.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_XDP, opt, (v as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is a live, writable `T` and `len` its size; the kernel writes at most `len`
    // bytes and reports how many.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<T>() {
        return Err(io::Error::other(format!("SOL_XDP option {opt}: kernel returned {len} bytes")));
    }
    Ok(v)
}

#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Default)]
struct Statistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

fn conv(o: &RingOffset) -> libc::xdp_ring_offset {
    libc::xdp_ring_offset { producer: o.producer, consumer: o.consumer, desc: o.desc, flags: o.flags }
}

/// A step of opening, for error messages.
pub(crate) type Step = &'static str;

impl XskSocket {
    /// Create an AF_XDP socket whose UMEM is the whole region of `pool` (chunks of `BUF_SIZE`,
    /// slot `i` at offset `i * BUF_SIZE`), and bind it to `queue` of `ifindex`. The kernel picks
    /// zero-copy when the driver supports it and copy mode otherwise (bind flags without
    /// `XDP_COPY`/`XDP_ZEROCOPY`); need-wakeup is on. Errors name the failing step.
    pub(crate) fn open(
        pool: &Pool,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
    ) -> Result<XskSocket, (Step, io::Error)> {
        for s in [sizes.fill, sizes.comp, sizes.rx, sizes.tx] {
            if !s.is_power_of_two() {
                return Err(("ring sizes", io::Error::from_raw_os_error(libc::EINVAL)));
            }
        }
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(("socket(AF_XDP)", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let (base, _, _) = pool.region();
        let reg = UmemReg {
            addr: base as u64,
            len: (pool.capacity() * BUF_SIZE) as u64,
            chunk_size: BUF_SIZE as u32,
            ..Default::default()
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg).map_err(|e| ("XDP_UMEM_REG", e))?;
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &sizes.fill).map_err(|e| ("XDP_UMEM_FILL_RING", e))?;
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &sizes.comp).map_err(|e| ("XDP_UMEM_COMPLETION_RING", e))?;
        setsockopt(raw, libc::XDP_RX_RING, &sizes.rx).map_err(|e| ("XDP_RX_RING", e))?;
        setsockopt(raw, libc::XDP_TX_RING, &sizes.tx).map_err(|e| ("XDP_TX_RING", e))?;
        let off: MmapOffsets = getsockopt(raw, libc::XDP_MMAP_OFFSETS).map_err(|e| ("XDP_MMAP_OFFSETS", e))?;
        let d = std::mem::size_of::<libc::xdp_desc>();
        let mmap = |e| ("mmap ring", e);
        let fill = Ring::map(raw, libc::XDP_UMEM_PGOFF_FILL_RING, &conv(&off.fr), sizes.fill, 8).map_err(mmap)?;
        let comp = Ring::map(raw, libc::XDP_UMEM_PGOFF_COMPLETION_RING, &conv(&off.cr), sizes.comp, 8).map_err(mmap)?;
        let rx = Ring::map(raw, libc::XDP_PGOFF_RX_RING as u64, &conv(&off.rx), sizes.rx, d).map_err(mmap)?;
        let tx = Ring::map(raw, libc::XDP_PGOFF_TX_RING as u64, &conv(&off.tx), sizes.tx, d).map_err(mmap)?;
        // The consumer rings start at the kernel's producer, the producer rings at their own.
        let mut s = XskSocket { fill, comp, rx, tx, zerocopy: false, fd, _pool: pool.clone() };
        s.rx.local = s.rx.word(s.rx.consumer).load(Ordering::Relaxed);
        s.comp.local = s.comp.word(s.comp.consumer).load(Ordering::Relaxed);
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the length passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(("bind(AF_XDP)", io::Error::last_os_error()));
        }
        #[repr(C)]
        #[derive(Default)]
        struct Opts {
            flags: u32,
        }
        let o: Opts = getsockopt(raw, libc::XDP_OPTIONS).map_err(|e| ("XDP_OPTIONS", e))?;
        s.zerocopy = o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(s)
    }

    /// Whether the kernel bound the socket in zero-copy mode.
    pub(crate) fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Room in the fill ring.
    pub(crate) fn fill_free(&mut self) -> u32 {
        self.fill.prod_free()
    }

    /// Post chunk addresses to the fill ring; returns how many fit (the first ones).
    pub(crate) fn fill(&mut self, addrs: &[u64]) -> usize {
        let n = (self.fill.prod_free() as usize).min(addrs.len());
        for (i, &a) in addrs[..n].iter().enumerate() {
            let p = self.fill.slot_ptr(self.fill.local.wrapping_add(i as u32), 8);
            // SAFETY: `p` is an 8-byte descriptor slot inside the mapping that the kernel does
            // not read until the producer index is published below (prod_free counted it as free).
            unsafe { p.cast::<u64>().write_unaligned(a) };
        }
        self.fill.submit(n as u32);
        n
    }

    /// Take up to `out.len()` addresses from the completion ring.
    pub(crate) fn completions(&mut self, out: &mut [u64]) -> usize {
        let n = (self.comp.cons_avail() as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            let p = self.comp.slot_ptr(self.comp.local.wrapping_add(i as u32), 8);
            // SAFETY: a descriptor slot inside the mapping that the kernel published (below its
            // producer index, acquired in cons_avail) and will not rewrite until we release it.
            *o = unsafe { p.cast::<u64>().read_unaligned() };
        }
        self.comp.release(n as u32);
        n
    }

    /// Take up to `out.len()` received descriptors `(addr, len)`.
    pub(crate) fn receive(&mut self, out: &mut [(u64, u32)]) -> usize {
        let n = (self.rx.cons_avail() as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            let p = self.rx.slot_ptr(self.rx.local.wrapping_add(i as u32), std::mem::size_of::<libc::xdp_desc>());
            // SAFETY: as in `completions`, for a 16-byte xdp_desc slot.
            let d = unsafe { p.cast::<libc::xdp_desc>().read_unaligned() };
            *o = (d.addr, d.len);
        }
        self.rx.release(n as u32);
        n
    }

    /// Room in the tx ring.
    pub(crate) fn tx_free(&mut self) -> u32 {
        self.tx.prod_free()
    }

    /// Post `(addr, len)` descriptors to the tx ring; returns how many fit (the first ones).
    pub(crate) fn transmit(&mut self, descs: &[(u64, u32)]) -> usize {
        let n = (self.tx.prod_free() as usize).min(descs.len());
        for (i, &(addr, len)) in descs[..n].iter().enumerate() {
            let p = self.tx.slot_ptr(self.tx.local.wrapping_add(i as u32), std::mem::size_of::<libc::xdp_desc>());
            // SAFETY: as in `fill`, for a 16-byte xdp_desc slot.
            unsafe { p.cast::<libc::xdp_desc>().write_unaligned(libc::xdp_desc { addr, len, options: 0 }) };
        }
        self.tx.submit(n as u32);
        n
    }

    /// The kernel asks for a syscall to process the tx ring.
    pub(crate) fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// The driver asks for a syscall to take up the fill ring.
    pub(crate) fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// `sendto(fd, NULL, 0, MSG_DONTWAIT)`: make the kernel send what is in the tx ring.
    /// `EAGAIN`/`EBUSY`/`ENOBUFS`/`ENETDOWN` are transient (the frames stay in the ring).
    pub(crate) fn kick_tx(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: no buffer is passed (NULL, length 0); the fd is ours.
        let r = unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `recvfrom(fd, NULL, 0, MSG_DONTWAIT)`: wake the driver to take up the fill ring.
    pub(crate) fn wake_rx(&self) {
        // SAFETY: no buffer is passed (NULL, length 0); the fd is ours.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// The kernel's counters for this socket (cumulative).
    pub(crate) fn stats(&self) -> io::Result<XskStats> {
        let s: Statistics = getsockopt(self.fd.as_raw_fd(), libc::XDP_STATISTICS)?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            fill_empty: s.rx_fill_ring_empty_descs,
            invalid: s.rx_invalid_descs + s.tx_invalid_descs,
        })
    }

    /// The socket's fd, borrowed (for poll).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The socket's fd (for the XSKMAP).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
