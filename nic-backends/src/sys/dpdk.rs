//! Every call into DPDK (through our `dpdk-sys` bindings): EAL, ethdev, the mbuf pools whose
//! data buffers are our buffer slots, and the rx/tx bursts that turn mbufs into [`Buffer`]s and
//! back without copying. The safe port logic is in `crate::dpdk`.
//!
//! # Memory
//! Per queue, one IOVA-contiguous memzone of `count * BUF_SIZE` bytes is both our [`Region`]
//! and the external memory of an mbuf pool (`rte_pktmbuf_pool_create_extbuf`, pinned external
//! buffers): mbuf i's data buffer is a `BUF_SIZE` slot of the memzone, `data_off` starts at
//! `RTE_PKTMBUF_HEADROOM` = 128 = our `HEADROOM`. The mempool owns the state "free": the pool's
//! free list is the mempool ([`SlotSource`]), a `Buffer` of that pool is an allocated mbuf, and
//! dropping it frees the mbuf. The slot index of an mbuf is `(buf_addr - base) / BUF_SIZE`; the
//! reverse (index → mbuf) is a table filled once at creation.
//!
//! Ownership: while a `Buffer` exists the CPU owns the mbuf; an mbuf in a device ring (rx
//! posted, tx pending) has no `Buffer`, and no Rust reference points into its bytes.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;
use std::sync::Arc;

use dpdk_sys as ffi;

use crate::buffer::{Buffer, Pool, BUF_SIZE, HEADROOM};
use crate::port::QueueStats;
use crate::sys::slots::{Region, SlotSource, Slots};

/// Most mbufs per rx/tx burst call.
pub(crate) const BURST: usize = 64;

/// `rte_errno` and its text.
pub(crate) fn errno() -> (i32, String) {
    // SAFETY: reads a thread-local integer; rte_strerror returns a pointer to a static or
    // thread-local string that stays valid until the next call on this thread.
    unsafe {
        let e = ffi::wgpmd_rte_errno();
        (e, CStr::from_ptr(ffi::rte_strerror(e)).to_string_lossy().into_owned())
    }
}

/// The text of a negative (or positive) errno return value.
pub(crate) fn strerror(ret: i32) -> String {
    // SAFETY: as in `errno`.
    unsafe { CStr::from_ptr(ffi::rte_strerror(ret.abs())).to_string_lossy().into_owned() }
}

/// `rte_eal_init(argv)`. Returns the number of arguments EAL consumed, or rte_errno's text.
pub(crate) fn eal_init(args: &[String]) -> Result<usize, String> {
    let owned: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("EAL argument `{a}` contains a NUL byte")))
        .collect::<Result<_, _>>()?;
    // EAL may permute argv: give it its own array of pointers; the strings outlive the call
    // (EAL keeps pointers into them in a few places, so they are leaked on purpose: once per
    // process).
    let mut argv: Vec<*mut c_char> = owned.into_iter().map(|c| c.into_raw()).collect();
    let argc = argv.len() as i32;
    argv.push(std::ptr::null_mut());
    // SAFETY: argv holds argc valid NUL-terminated strings and a NULL terminator; all leaked,
    // so they stay valid for the life of the process as EAL expects.
    let ret = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
    std::mem::forget(argv);
    if ret < 0 {
        return Err(errno().1);
    }
    Ok(ret as usize)
}

/// `rte_eal_cleanup()`: after every port is closed and every pool freed.
pub(crate) fn eal_cleanup() -> i32 {
    // SAFETY: no preconditions beyond "EAL was initialised", which the caller checked.
    unsafe { ffi::rte_eal_cleanup() }
}

/// A thread's EAL registration, undone at thread exit. Holds an `EalUser`: a thread that used a
/// queue may exit after the port is gone, and unregistering after `rte_eal_cleanup` would call
/// into a torn-down EAL, so cleanup waits for it.
struct Registration(Option<crate::dpdk::EalUser>);
impl Drop for Registration {
    fn drop(&mut self) {
        if self.0.is_some() {
            // SAFETY: this thread registered itself with rte_thread_register (below), and EAL is
            // still up (the EalUser in `self.0` keeps cleanup_eal from running).
            unsafe { ffi::rte_thread_unregister() };
        }
    }
}
thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static REGISTRATION: std::cell::RefCell<Option<Registration>> = const { std::cell::RefCell::new(None) };
}

/// Register the calling thread with EAL once (an lcore id, so mempool caches work); the EAL
/// main thread already has one. Failure (no free lcore id) is harmless: the thread then uses
/// the mempool without a cache. The thread unregisters when it exits.
#[inline]
pub(crate) fn ensure_registered() {
    if REGISTERED.with(Cell::get) {
        return;
    }
    REGISTERED.with(|r| r.set(true));
    // Counted before registering, so cleanup_eal cannot run in between.
    let user = crate::dpdk::EalUser::new();
    // SAFETY: rte_lcore_id reads a thread-local; rte_thread_register has no preconditions
    // beyond an initialised EAL (a port exists, so it is).
    let ok = unsafe { ffi::rte_lcore_id() == u32::MAX && ffi::rte_thread_register() == 0 };
    REGISTRATION.with(|r| *r.borrow_mut() = Some(Registration(ok.then_some(user))));
}

/// The lcore id of this thread (u32::MAX: none).
pub(crate) fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local.
    unsafe { ffi::rte_lcore_id() }
}

pub(crate) fn port_count() -> u16 {
    // SAFETY: no preconditions.
    unsafe { ffi::rte_eth_dev_count_avail() }
}

pub(crate) fn port_is_valid(id: u16) -> bool {
    // SAFETY: no preconditions.
    unsafe { ffi::rte_eth_dev_is_valid_port(id) == 1 }
}

pub(crate) fn port_by_name(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: `c` is a valid C string, `id` a valid out pointer.
    let r = unsafe { ffi::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (r == 0).then_some(id)
}

pub(crate) fn port_name(id: u16) -> String {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the buffer holds RTE_ETH_NAME_MAX_LEN (64) bytes as the API requires.
    let r = unsafe { ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if r != 0 {
        return format!("port{id}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// What the device says about itself.
#[derive(Debug, Clone)]
pub(crate) struct DevInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub rss_offloads: u64,
}

pub(crate) fn dev_info(id: u16) -> Result<DevInfo, String> {
    let mut info = ffi::rte_eth_dev_info::default();
    // SAFETY: `info` is a valid out pointer of the right type.
    let r = unsafe { ffi::rte_eth_dev_info_get(id, &mut info) };
    if r != 0 {
        return Err(strerror(r));
    }
    let driver = if info.driver_name.is_null() {
        String::from("?")
    } else {
        // SAFETY: a non-null driver name is a static C string of the PMD.
        unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
    };
    Ok(DevInfo {
        driver,
        max_rx_queues: info.max_rx_queues,
        max_tx_queues: info.max_tx_queues,
        rss_offloads: info.flow_type_rss_offloads,
    })
}

/// `rte_eth_dev_configure` with `nq` rx and tx queues, RSS on `rss_hf` when non-zero.
pub(crate) fn configure(id: u16, nq: u16, rss_hf: u64) -> Result<(), String> {
    let mut conf = ffi::rte_eth_conf::default();
    if rss_hf != 0 {
        conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
    }
    // SAFETY: `conf` is a valid, fully initialised configuration.
    let r = unsafe { ffi::rte_eth_dev_configure(id, nq, nq, &conf) };
    if r != 0 {
        return Err(strerror(r));
    }
    Ok(())
}

/// Descriptor counts the device accepts, near the asked ones.
pub(crate) fn adjust_desc(id: u16, rx: u16, tx: u16) -> (u16, u16) {
    let (mut r, mut t) = (rx, tx);
    // SAFETY: valid out pointers.
    let ret = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut r, &mut t) };
    if ret == 0 {
        (r, t)
    } else {
        (rx, tx)
    }
}

pub(crate) fn socket_id(id: u16) -> i32 {
    // SAFETY: no preconditions.
    let s = unsafe { ffi::rte_eth_dev_socket_id(id) };
    if s < 0 {
        ffi::SOCKET_ID_ANY
    } else {
        s
    }
}

pub(crate) fn queue_setup(id: u16, q: u16, rx_desc: u16, tx_desc: u16, socket: i32, a: &Arena) -> Result<(), String> {
    // The mempool lives as long as the port: the port keeps the arena until after rte_eth_dev_close.
    // SAFETY: the port has more than `q` queues (checked by the caller), a NULL conf means the
    // driver's defaults, and the mempool outlives the queue (above).
    let r = unsafe { ffi::rte_eth_rx_queue_setup(id, q, rx_desc, socket as u32, std::ptr::null(), a.mp.as_ptr()) };
    if r != 0 {
        return Err(format!("rx queue {q} setup: {}", strerror(r)));
    }
    // SAFETY: as above.
    let r = unsafe { ffi::rte_eth_tx_queue_setup(id, q, tx_desc, socket as u32, std::ptr::null()) };
    if r != 0 {
        return Err(format!("tx queue {q} setup: {}", strerror(r)));
    }
    Ok(())
}

pub(crate) fn start(id: u16) -> Result<(), String> {
    // SAFETY: the port is configured and its queues set up.
    let r = unsafe { ffi::rte_eth_dev_start(id) };
    if r != 0 {
        return Err(strerror(r));
    }
    Ok(())
}

/// Stop and close the port (no queue may be polled any more).
pub(crate) fn stop_close(id: u16, started: bool) {
    // SAFETY: called once, from the Drop of the device shared by the port and its queues, so
    // when the last queue is gone: no burst function runs on this port any more.
    unsafe {
        if started {
            ffi::rte_eth_dev_stop(id);
        }
        ffi::rte_eth_dev_close(id);
    }
}

pub(crate) fn mac(id: u16) -> Option<[u8; 6]> {
    let mut a = ffi::rte_ether_addr::default();
    // SAFETY: valid out pointer.
    let r = unsafe { ffi::rte_eth_macaddr_get(id, &mut a) };
    (r == 0).then_some(a.addr_bytes)
}

pub(crate) fn mtu(id: u16) -> Option<u16> {
    let mut m = 0u16;
    // SAFETY: valid out pointer.
    let r = unsafe { ffi::rte_eth_dev_get_mtu(id, &mut m) };
    (r == 0).then_some(m)
}

pub(crate) fn link_up(id: u16) -> bool {
    let mut l = ffi::rte_eth_link::default();
    // SAFETY: valid out pointer; the nowait variant does not block.
    let r = unsafe { ffi::rte_eth_link_get_nowait(id, &mut l) };
    r == 0 && l.link_status() == 1
}

/// All extended statistics of the port as (name, value).
pub(crate) fn xstats(id: u16) -> Vec<(String, u64)> {
    // SAFETY: a NULL array with size 0 asks for the count.
    let n = unsafe { ffi::rte_eth_xstats_get_names(id, std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![ffi::rte_eth_xstat_name::default(); n as usize];
    let mut vals = vec![ffi::rte_eth_xstat::default(); n as usize];
    // SAFETY: both arrays hold `n` elements.
    let (a, b) = unsafe {
        (
            ffi::rte_eth_xstats_get_names(id, names.as_mut_ptr(), n as u32),
            ffi::rte_eth_xstats_get(id, vals.as_mut_ptr(), n as u32),
        )
    };
    if a != n || b != n {
        return Vec::new();
    }
    vals.iter()
        .filter_map(|v| {
            let nm = names.get(v.id as usize)?;
            // Up to the first NUL, never past the array (a PMD's name that fills it has none).
            let b: Vec<u8> = nm.name.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            Some((String::from_utf8_lossy(&b).into_owned(), v.value))
        })
        .collect()
}

/// One queue's mbuf memory: the memzone (our region) and the extbuf mempool over it, plus the
/// slot index → mbuf table. Freed (mempool, then memzone) when the last pool handle and
/// buffer are gone; the port holds a handle until after `rte_eth_dev_close`.
pub(crate) struct Arena {
    mz: NonNull<ffi::rte_memzone>,
    mp: NonNull<ffi::rte_mempool>,
    base: NonNull<u8>,
    size: usize,
    iova: u64,
    table: Vec<NonNull<ffi::rte_mbuf>>,
    /// Keeps `cleanup_eal` from freeing EAL under this arena; dropped after `Drop::drop`.
    _eal: crate::dpdk::EalUser,
}

// SAFETY: the pointers are to DPDK objects that live until Drop; mempool get/put are
// thread-safe (per-lcore caches, lock-free ring), and the table is read-only after creation.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        if !crate::dpdk::eal_ready() {
            // Not reached: `cleanup_eal` refuses while this arena's `EalUser` lives. Kept as a
            // guard: calling DPDK after its cleanup would crash.
            return;
        }
        // Every mbuf is back in the mempool: each live Buffer of an external pool holds a counted
        // reference to the Slots that own this arena, and the port closed the device (returning
        // its rings' mbufs) before dropping it.
        // SAFETY: no mbuf of the pool is in use (above); nothing refers to the memzone after
        // the mempool is gone.
        unsafe {
            ffi::rte_mempool_free(self.mp.as_ptr());
            ffi::rte_memzone_free(self.mz.as_ptr());
        }
    }
}

impl Arena {
    fn index_of(&self, buf_addr: usize) -> Option<u32> {
        let off = buf_addr.checked_sub(self.base.as_ptr() as usize)?;
        (off % BUF_SIZE == 0 && off / BUF_SIZE < self.table.len()).then_some((off / BUF_SIZE) as u32)
    }
}

struct ArenaRegion(Arc<Arena>);
// A device touches a slot only while its mbuf is in a ring and no Buffer exists for it.
// SAFETY: the memzone is `size` bytes of mapped memory, 2048-byte aligned, reserved for this arena
// until it drops; its bytes are touched only through the pool's Buffers or as said above.
unsafe impl Region for ArenaRegion {
    fn base(&self) -> NonNull<u8> {
        self.0.base
    }
    fn size(&self) -> usize {
        self.0.size
    }
    fn iova_base(&self) -> u64 {
        self.0.iova
    }
}

struct MbufSource(Arc<Arena>);
impl SlotSource for MbufSource {
    fn take(&self) -> Option<u32> {
        // SAFETY: the mempool is alive (we hold the arena).
        let m = unsafe { ffi::rte_pktmbuf_alloc(self.0.mp.as_ptr()) };
        let m = NonNull::new(m)?;
        let idx = self.0.index_of(mbuf_get(m).buf_addr);
        if idx.is_none() {
            // SAFETY: `m` was just allocated and is ours; not one of our slots (impossible for
            // an extbuf pool over our memzone), so give it straight back.
            unsafe { ffi::rte_pktmbuf_free(m.as_ptr()) };
        }
        idx
    }
    fn give(&self, index: u32) {
        if let Some(m) = self.0.table.get(index as usize) {
            // SAFETY: the slot's owner gives it back: the mbuf is allocated, single-segment
            // (rx drops chains, tx resets), and nobody else refers to it any more.
            unsafe { ffi::rte_pktmbuf_free(m.as_ptr()) };
        }
    }
    fn available(&self) -> usize {
        // SAFETY: the mempool is alive.
        unsafe { ffi::rte_mempool_avail_count(self.0.mp.as_ptr()) as usize }
    }
}

struct MbufFields {
    buf_addr: usize,
    off: u16,
    len: u16,
    nb_segs: u16,
    pool: *mut ffi::rte_mempool,
    refcnt: u16,
}

fn mbuf_get(m: NonNull<ffi::rte_mbuf>) -> MbufFields {
    let (mut a, mut off, mut len, mut segs, mut pool, mut refcnt) =
        (std::ptr::null_mut(), 0u16, 0u16, 0u16, std::ptr::null_mut::<ffi::rte_mempool>(), 0u16);
    // SAFETY: `m` is an mbuf the caller owns (just received or allocated); the shim only reads
    // its fields into the out pointers.
    unsafe { ffi::wgpmd_mbuf_get(m.as_ptr(), &mut a, &mut off, &mut len, &mut segs, &mut pool, &mut refcnt) };
    MbufFields { buf_addr: a as usize, off, len, nb_segs: segs, pool, refcnt }
}

/// A queue's pool: `count` mbufs whose data buffers are the slots of one memzone.
pub(crate) fn create_pool(name: &str, count: usize, socket: i32) -> Result<(Pool, Arc<Arena>), String> {
    // SAFETY: reads a constant of the DPDK build.
    let headroom = unsafe { ffi::wgpmd_pktmbuf_headroom() } as usize;
    if headroom != HEADROOM {
        return Err(format!(
            "this DPDK is built with RTE_PKTMBUF_HEADROOM={headroom}, wgpmd needs {HEADROOM} (zero-copy mbufs)"
        ));
    }
    let bytes = count * BUF_SIZE;
    let mzname = CString::new(format!("{name}_mz")).map_err(|_| "bad pool name".to_string())?;
    let poolname = CString::new(name).map_err(|_| "bad pool name".to_string())?;
    // SAFETY: a valid name; DPDK allocates and returns NULL on failure (rte_errno set).
    let mz = unsafe {
        ffi::rte_memzone_reserve_aligned(mzname.as_ptr(), bytes, socket, ffi::RTE_MEMZONE_IOVA_CONTIG, BUF_SIZE as u32)
    };
    let Some(mz) = NonNull::new(mz as *mut ffi::rte_memzone) else {
        let (_, e) = errno();
        return Err(format!(
            "cannot reserve {} MiB of IOVA-contiguous DPDK memory for {count} mbufs: {e}",
            bytes >> 20
        ));
    };
    // SAFETY: a memzone returned by DPDK is valid until rte_memzone_free; we read its fields.
    let (addr, iova, len) = unsafe {
        let z = mz.as_ptr();
        ((*z).__bindgen_anon_1.addr as *mut u8, (*z).iova, (*z).len)
    };
    let free_mz = || {
        // SAFETY: the memzone is ours and nothing uses it yet.
        unsafe { ffi::rte_memzone_free(mz.as_ptr()) };
    };
    let Some(base) = NonNull::new(addr).filter(|_| len >= bytes) else {
        free_mz();
        return Err("DPDK returned an empty memzone".into());
    };
    let ext =
        ffi::rte_pktmbuf_extmem { buf_ptr: addr.cast(), buf_iova: iova, buf_len: bytes, elt_size: BUF_SIZE as u16 };
    let cache = 256.min(count / 2) as u32;
    // SAFETY: `ext` describes the memzone above (count slots of BUF_SIZE bytes), which outlives
    // the mempool (freed after it in Arena::drop).
    let mp = unsafe {
        ffi::rte_pktmbuf_pool_create_extbuf(poolname.as_ptr(), count as u32, cache, 0, BUF_SIZE as u16, socket, &ext, 1)
    };
    let Some(mp) = NonNull::new(mp) else {
        let (_, e) = errno();
        free_mz();
        return Err(format!("cannot create the mbuf pool of {count} mbufs: {e}"));
    };
    // Index → mbuf: take every mbuf once, note its slot, put them all back.
    let mut table = vec![None; count];
    let mut all = Vec::with_capacity(count);
    let mut bad = false;
    for _ in 0..count {
        // SAFETY: the mempool is valid.
        let Some(m) = NonNull::new(unsafe { ffi::rte_pktmbuf_alloc(mp.as_ptr()) }) else { break };
        all.push(m);
        let f = mbuf_get(m);
        let off = f.buf_addr.wrapping_sub(addr as usize);
        if !off.is_multiple_of(BUF_SIZE)
            || off / BUF_SIZE >= count
            || table[off / BUF_SIZE].is_some()
            || f.off as usize != HEADROOM
        {
            bad = true;
        } else {
            table[off / BUF_SIZE] = Some(m);
        }
    }
    for m in &all {
        // SAFETY: allocated just above, ours to free.
        unsafe { ffi::rte_pktmbuf_free(m.as_ptr()) };
    }
    let table: Option<Vec<_>> = table.into_iter().collect();
    let Some(table) = table.filter(|_| !bad && all.len() == count) else {
        // SAFETY: no mbuf is outstanding; free in reverse order of creation.
        unsafe {
            ffi::rte_mempool_free(mp.as_ptr());
            ffi::rte_memzone_free(mz.as_ptr());
        }
        return Err(format!(
            "the extbuf mbuf pool does not map mbufs 1:1 onto {BUF_SIZE}-byte slots with {HEADROOM} bytes of headroom"
        ));
    };
    let arena = Arc::new(Arena { mz, mp, base, size: bytes, iova, table, _eal: crate::dpdk::EalUser::new() });
    let slots = Slots::with_source(
        name,
        Box::new(ArenaRegion(Arc::clone(&arena))),
        count,
        Box::new(MbufSource(Arc::clone(&arena))),
    )
    .map_err(|e| e.to_string())?;
    Ok((Pool::from_slots(slots), arena))
}

/// Counters of the zero-copy path a queue keeps besides [`QueueStats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CopyStats {
    /// Buffers from another pool copied into an mbuf before tx.
    pub tx_copied: u64,
    /// Multi-segment, foreign or shared (indirect, refcnt > 1) mbufs dropped on rx.
    pub rx_multiseg: u64,
}

/// The burst half of a DPDK queue.
pub(crate) struct Bursts {
    pub port: u16,
    pub queue: u16,
    pub pool: Pool,
    pub arena: Arc<Arena>,
    mbufs: [*mut ffi::rte_mbuf; BURST],
    raw: Vec<(u32, u32, u32)>,
}

// SAFETY: the mbuf pointer array is scratch space, empty between calls; the arena is Send.
unsafe impl Send for Bursts {}

impl Bursts {
    pub(crate) fn new(port: u16, queue: u16, pool: Pool, arena: Arc<Arena>) -> Bursts {
        Bursts { port, queue, pool, arena, mbufs: [std::ptr::null_mut(); BURST], raw: Vec::with_capacity(BURST) }
    }

    /// Receive up to `max` mbufs as Buffers (no copy).
    pub(crate) fn rx(&mut self, out: &mut Vec<Buffer>, max: usize, st: &mut QueueStats, cs: &mut CopyStats) -> usize {
        ensure_registered();
        let want = max.min(BURST) as u16;
        // SAFETY: the port is started, `queue` was set up, and the array has room for `want`.
        let n = unsafe { ffi::rte_eth_rx_burst(self.port, self.queue, self.mbufs.as_mut_ptr(), want) } as usize;
        let mut got = 0;
        for i in 0..n.min(BURST) {
            let Some(m) = NonNull::new(self.mbufs[i]) else { continue };
            let f = mbuf_get(m);
            // Only the slot's own mbuf, unshared, is adopted: an indirect mbuf (or a clone with
            // refcnt > 1) can point at a slot whose mbuf someone else still holds, and dropping
            // the adopted Slot frees `table[idx]`, not `m`.
            let idx = if f.pool == self.arena.mp.as_ptr() && f.nb_segs == 1 && f.refcnt == 1 {
                self.arena.index_of(f.buf_addr).filter(|&i| self.arena.table[i as usize] == m)
            } else {
                None
            };
            let fits = f.off as usize + f.len as usize <= BUF_SIZE;
            // The PMD handed this mbuf to us and no longer touches it; while it was in the device
            // no Buffer existed for its slot.
            // SAFETY: it is the direct, unshared, single-segment mbuf of slot `idx` of our
            // mempool (checked above), so no other Slot for `idx` exists.
            let slot = idx.filter(|_| fits).and_then(|i| unsafe { self.pool.slots().adopt(i) });
            match slot {
                Some(slot) => {
                    st.rx_packets += 1;
                    st.rx_bytes += u64::from(f.len);
                    out.push(Buffer::from_slot(slot, u32::from(f.off), u32::from(f.len)));
                    got += 1;
                }
                None => {
                    // SAFETY: the PMD handed us this mbuf (chain); we free it whole.
                    unsafe { ffi::rte_pktmbuf_free(m.as_ptr()) };
                    st.rx_dropped += 1;
                    cs.rx_multiseg += 1;
                }
            }
        }
        got
    }

    /// Transmit from the front of `bufs` (DPDK semantics). Buffers of our pool go as their
    /// mbufs; others are copied into one of ours first (counted).
    pub(crate) fn tx(&mut self, bufs: &mut Vec<Buffer>, st: &mut QueueStats, cs: &mut CopyStats) -> usize {
        ensure_registered();
        let my_pool = self.pool.id();
        let mut taken = 0;
        while !bufs.is_empty() {
            // Make the first `ready` buffers our own (copy the foreign ones, drop what cannot fit).
            let mut ready = 0;
            while ready < bufs.len().min(BURST) {
                if bufs[ready].pool_id() == my_pool {
                    ready += 1;
                    continue;
                }
                let len = bufs[ready].len();
                if len > BUF_SIZE - HEADROOM {
                    bufs.remove(ready);
                    st.tx_errors += 1;
                    taken += 1;
                    continue;
                }
                let Some(mut own) = self.pool.alloc() else { break };
                let Ok(dst) = own.append(len) else { break };
                dst.copy_from_slice(bufs[ready].data());
                bufs[ready] = own;
                cs.tx_copied += 1;
                ready += 1;
            }
            if ready == 0 {
                break;
            }
            self.raw.clear();
            for (i, b) in bufs.drain(..ready).enumerate() {
                let (idx, off, len) = b.into_raw();
                let m = self.arena.table[idx as usize];
                // SAFETY: the buffer was the sole owner of this mbuf; the shim resets its
                // metadata and sets one segment of `len` bytes at `off` (within the slot).
                unsafe { ffi::wgpmd_mbuf_prepare_tx(m.as_ptr(), off as u16, len as u16) };
                self.mbufs[i] = m.as_ptr();
                self.raw.push((idx, off, len));
            }
            let (port, queue, mbufs) = (self.port, self.queue, self.mbufs.as_mut_ptr());
            // SAFETY: `ready` prepared mbufs we own; the PMD takes the first `sent` of them.
            let sent = unsafe { ffi::rte_eth_tx_burst(port, queue, mbufs, ready as u16) };
            let sent = usize::from(sent).min(ready);
            for &(_, _, len) in &self.raw[..sent] {
                st.tx_packets += 1;
                st.tx_bytes += u64::from(len);
            }
            taken += sent;
            if sent < ready {
                // Not taken: the mbufs are still ours; back to Buffers, in order, at the front.
                let back: Vec<Buffer> = self.raw[sent..]
                    .iter()
                    .filter_map(|&(idx, off, len)| {
                        // SAFETY: the PMD did not take this mbuf: it is still ours, and its
                        // Buffer was given up with `into_raw` just above.
                        unsafe { self.pool.slots().adopt(idx) }.map(|s| Buffer::from_slot(s, off, len))
                    })
                    .collect();
                bufs.splice(0..0, back);
                break;
            }
        }
        taken
    }

    /// Raw rx/tx of the same mbufs, no Buffer conversion: the benchmark's baseline. Returns
    /// (received, sent).
    pub(crate) fn raw_loop(&mut self) -> (usize, usize) {
        // SAFETY: as in rx/tx; what is received is sent back unchanged, what is not sent is freed.
        unsafe {
            let n = ffi::rte_eth_rx_burst(self.port, self.queue, self.mbufs.as_mut_ptr(), BURST as u16);
            let s = ffi::rte_eth_tx_burst(self.port, self.queue, self.mbufs.as_mut_ptr(), n);
            for &m in &self.mbufs[s as usize..n as usize] {
                ffi::rte_pktmbuf_free(m);
            }
            (n as usize, s as usize)
        }
    }
}
