//! The virtio-net port (virtio 1.1/1.2 §5.1 "Network Device") on a VFIO device.
//!
//! Queue pair i is receiveq i (vq 2i) and transmitq i (vq 2i+1) (§5.1.2); the control queue is
//! vq 2 * max_virtqueue_pairs. Every frame carries the 12-byte `struct virtio_net_hdr` (§5.1.6,
//! VERSION_1 makes `num_buffers` part of it), kept in the buffer's headroom:
//!
//! ```text
//! rx: posted at slot + HEADROOM - 12, so the frame lands at HEADROOM (the Buffer's window)
//! tx: prepend 12 zero bytes (no offloads: flags 0, gso_type NONE) and post from there
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pci::{common, feature, find_caps, negotiate, status, Window, NO_VECTOR};
use super::virtq::{layout, Seg, Used, Virtq, MAX_QUEUE};
use crate::buffer::{Buffer, Pool, BUF_SIZE, HEADROOM};
use crate::error::PortError;
use crate::port::{Port, PortInfo, PortOptions, Queue, QueueStats};
use crate::sys::ring::{DmaPoolRegion, RingMem, SharedMem};

/// `struct virtio_net_hdr` with VERSION_1 (§5.1.6): 12 bytes.
pub(crate) const NET_HDR: usize = 12;
/// Offset in the slot where the device writes a received header.
const RX_OFF: usize = HEADROOM - NET_HDR;
/// Device-writable bytes of an rx buffer: header + frame up to the slot end (≥ 1526, as §5.1.6.3.1
/// asks without MRG_RXBUF and without GUEST_TSO/UFO).
const RX_LEN: usize = BUF_SIZE - RX_OFF;
/// Buffers of each queue's pool (DMA memory: 2048 × 2 KiB = 4 MiB, two hugepages).
pub const POOL_BUFS: usize = 2048;

/// Buffers of a queue's pool when one DMA region may be at most `max_region` bytes: in no-IOMMU
/// mode a region must be physically contiguous, which only a single 2 MiB hugepage is sure to be
/// (the hugepages of a larger region are often not adjacent, or in descending order), so the pool
/// gets 1024 buffers there instead of [`POOL_BUFS`]; that still covers a full receive ring and a
/// full transmit ring (256 each) with room for the daemon's bursts.
pub(crate) fn pool_bufs(max_region: Option<usize>) -> usize {
    max_region.map_or(POOL_BUFS, |m| (m / BUF_SIZE).clamp(1, POOL_BUFS))
}
/// Refill the rx ring once this many descriptors are free (batched refill).
const REFILL_BATCH: usize = 32;
/// Device status is checked every this many polls of a queue.
const WATCHDOG_POLLS: u64 = 1024;
/// Transmit completions missing this long with descriptors in flight: the device is stuck.
const TX_STALL: Duration = Duration::from_secs(5);
/// `VIRTIO_NET_S_LINK_UP` in the device configuration's status (§5.1.4).
const LINK_UP: u16 = 1;
/// Device configuration (§5.1.4): mac[6], status le16, max_virtqueue_pairs le16.
const CFG_STATUS: usize = 6;
const CFG_MAX_PAIRS: usize = 8;
/// `VIRTIO_NET_CTRL_MQ`, `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, `VIRTIO_NET_OK` (§5.1.6.5.5).
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;

/// Environment variable of the DMA-safety test hook: queue 0 posts one transmit descriptor whose
/// address lies outside every mapped region (bypassing the bounds check). Only for the guest test
/// that checks the IOMMU stops it and the driver notices (docs/TESTING.md). `1`: the descriptor
/// keeps the frame's length; `big`: its length becomes 8 KiB (QEMU 7.2 then fails the mapping and
/// sets DEVICE_NEEDS_RESET, where a short one is completed after the vIOMMU refused it).
pub const TEST_BAD_IOVA_ENV: &str = "WGPMD_VFIO_TEST_BAD_IOVA";
/// Environment variable that allows no-IOMMU mode (`/dev/vfio/noiommu-N`).
pub const NOIOMMU_ENV: &str = "WGPMD_VFIO_NOIOMMU";

/// The transport registers of one device.
struct Transport {
    common: Window,
    notify: Window,
    notify_mult: u32,
    device: Window,
}

impl Transport {
    fn status(&self) -> u8 {
        self.common.read8(common::DEVICE_STATUS)
    }
    fn set_status(&self, s: u8) {
        self.common.write8(common::DEVICE_STATUS, s);
    }
    /// Write 0 to device_status and wait until it reads back 0 (§4.1.4.3.2: "the driver MUST ...
    /// wait for device_status to return 0 before reinitializing the device").
    fn reset(&self) -> bool {
        self.set_status(0);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            if self.status() == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        false
    }
}

/// Whether a kernel log line reports an IOMMU fault for device `bdf` (`DDDD:BB:DD.F`): Intel
/// (`DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr ...`) and AMD
/// (`AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:00:02.0 ...]`) formats.
pub(crate) fn iommu_fault_line(line: &str, bdf: &str) -> bool {
    let short = bdf.get(5..).unwrap_or(bdf);
    (line.contains("DMAR") && line.contains("fault") && line.contains(&format!("[{short}]")))
        || (line.contains("IO_PAGE_FAULT")
            && (line.contains(&format!("device={bdf}")) || line.contains(&format!("device={short}"))))
}

/// The kernel log (`/dev/kmsg`, non-blocking, positioned at its end when the port opened): the
/// IOMMU reports a blocked DMA there, not to the device. QEMU's virtio-net, for one, completes a
/// descriptor whose address the vIOMMU refused without setting NEEDS_RESET; this is how the
/// driver learns of it.
struct KernelLog {
    file: Option<std::fs::File>,
    fault: Option<String>,
}

impl KernelLog {
    fn open() -> KernelLog {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)).ok().map(|_| f));
        KernelLog { file, fault: None }
    }

    /// Read what the kernel logged since the last call (bounded) and remember the first IOMMU
    /// fault for `bdf`.
    fn check(&mut self, bdf: &str) -> Option<String> {
        use std::io::Read;
        if self.fault.is_none() {
            if let Some(f) = self.file.as_mut() {
                let mut buf = [0u8; 2048];
                for _ in 0..1024 {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            // A record: "prio,seq,time,flags;message\n".
                            let rec = String::from_utf8_lossy(&buf[..n]);
                            let msg = rec.split_once(';').map_or(&*rec, |r| r.1).trim();
                            if iommu_fault_line(msg, bdf) {
                                self.fault = Some(msg.to_string());
                                break;
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // records overwritten
                        Err(_) => break,                                             // EAGAIN: nothing new
                    }
                }
            }
        }
        self.fault.clone()
    }
}

/// The device, shared by the port, its queues and its pools' regions.
pub(crate) struct NetDev {
    t: Transport,
    features: u64,
    bdf: String,
    kmsg: std::sync::Mutex<KernelLog>,
    quiesced: StopOnce,
    // Dropped after the device is reset in Drop: BAR mappings (in `t`), then the ring memory,
    // then the VFIO device fd.
    _rings: Arc<dyn SharedMem>,
    vfio: vfio::Device,
}

impl NetDev {
    /// Stop the device for good (idempotent): reset it and wait until it is, then disable bus
    /// mastering. After this it touches no memory, so buffers in its rings may be freed and DMA
    /// memory unmapped.
    ///
    /// Every caller returns only once the reset is done, also one that comes while another
    /// thread is still resetting (two queues dropped at once, or a pool's last buffer freed on
    /// another core): its caller frees posted buffers and unmaps DMA memory right after.
    pub(crate) fn quiesce(&self) {
        self.quiesced.run(|| {
            if !self.t.reset() {
                eprintln!("vfio:{}: device did not finish its reset within 1 s", self.bdf);
            }
            let _ = self.vfio.disable_bus_master();
        });
    }
    fn is_quiesced(&self) -> bool {
        self.quiesced.started()
    }
}

/// A stop action run once: the first caller runs it, every other caller (also a concurrent
/// one) waits until it has finished. `started` turns true when the first caller begins it.
#[derive(Debug)]
pub(crate) struct StopOnce {
    started: AtomicBool,
    done: std::sync::Once,
}

impl Default for StopOnce {
    fn default() -> Self {
        StopOnce { started: AtomicBool::new(false), done: std::sync::Once::new() }
    }
}

impl StopOnce {
    pub(crate) fn run(&self, f: impl FnOnce()) {
        // `started` is set inside `call_once`: whoever sees it set and calls `run` blocks until
        // `f` has finished (set before `call_once`, a caller could see it and win the race).
        self.done.call_once(|| {
            self.started.store(true, Ordering::Release);
            f()
        });
    }
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

impl Drop for NetDev {
    fn drop(&mut self) {
        self.quiesce();
    }
}

/// Device-visible ranges a queue may post: `[start, end)` IOVAs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bounds(Vec<(u64, u64)>);

impl Bounds {
    pub(crate) fn add(&mut self, iova: u64, len: u64) {
        self.0.push((iova, iova.saturating_add(len)));
    }
    /// `[iova, iova + len)` lies inside one mapped range.
    pub(crate) fn check(&self, iova: u64, len: usize) -> bool {
        let Some(end) = iova.checked_add(len as u64) else { return false };
        self.0.iter().any(|&(s, e)| iova >= s && end <= e)
    }
}

/// Counters beyond [`QueueStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioCounters {
    /// Transmitted buffers from another pool, copied into this queue's DMA memory.
    pub tx_copied: u64,
    /// Rx refills that found the pool empty.
    pub rx_no_buffers: u64,
    /// Buffers refused because their IOVA range is outside the mapped regions.
    pub iova_refused: u64,
}

/// The data path of one queue pair, without the device registers (unit-tested with a simulated
/// device): returns whether a queue needs a notification.
pub(crate) struct QueueCore {
    pub rx: Virtq,
    pub tx: Virtq,
    pub pool: Pool,
    pub bounds: Bounds,
    pub stats: QueueStats,
    pub counters: VirtioCounters,
    used: Vec<Used>,
    /// Test hook: post the next transmit descriptor at this IOVA (and with this length).
    pub bad_iova: Option<(u64, Option<u32>)>,
    pub tx_completions: u64,
}

impl QueueCore {
    pub(crate) fn new(rx: Virtq, tx: Virtq, pool: Pool, bounds: Bounds) -> QueueCore {
        QueueCore {
            rx,
            tx,
            pool,
            bounds,
            stats: QueueStats::default(),
            counters: VirtioCounters::default(),
            used: Vec::with_capacity(MAX_QUEUE as usize),
            bad_iova: None,
            tx_completions: 0,
        }
    }

    /// Post fresh buffers while descriptors are free (all of them when `force`, else only once a
    /// batch is free). Returns true if the device wants a notification.
    pub(crate) fn refill(&mut self, force: bool) -> bool {
        if !force && self.rx.free_descs() < REFILL_BATCH.min(self.rx.size() as usize) {
            return false;
        }
        while self.rx.free_descs() > 0 {
            let Some(b) = self.pool.alloc() else {
                self.counters.rx_no_buffers += 1;
                break;
            };
            // The fresh buffer's window starts at HEADROOM: the header goes just before it.
            let iova = b.iova() - NET_HDR as u64;
            if !self.bounds.check(iova, RX_LEN) {
                self.counters.iova_refused += 1;
                break;
            }
            if self.rx.push(&[Seg { iova, len: RX_LEN as u32, write: true }], Some(b)).is_err() {
                break;
            }
        }
        self.rx.publish()
    }

    /// Received frames, up to `max`, appended to `out` with their window on the frame.
    pub(crate) fn receive(&mut self, out: &mut Vec<Buffer>, max: usize) -> usize {
        let mut used = std::mem::take(&mut self.used);
        self.rx.pop_used(max, &mut used);
        let mut n = 0;
        for u in used.drain(..) {
            let Some(mut b) = u.token else {
                self.stats.rx_errors += 1;
                continue;
            };
            let len = u.len as usize;
            if u.len > u.writable || len < NET_HDR + 14 {
                // Longer than what we posted, or shorter than a header and an Ethernet header.
                self.stats.rx_errors += 1;
                continue;
            }
            if b.set_len(len - NET_HDR).is_err() {
                self.stats.rx_errors += 1;
                continue;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += b.len() as u64;
            out.push(b);
            n += 1;
        }
        self.used = used;
        n
    }

    /// Free transmitted buffers the device has returned.
    pub(crate) fn reclaim(&mut self) -> usize {
        let mut used = std::mem::take(&mut self.used);
        let n = self.tx.pop_used(usize::MAX, &mut used);
        used.clear();
        self.used = used;
        self.tx_completions += n as u64;
        n
    }

    /// A buffer ready to post: ours, with 12 bytes of headroom for the header; others are copied.
    fn own(&mut self, b: Buffer) -> Option<Buffer> {
        if b.pool_id() == self.pool.id() && b.headroom() >= NET_HDR {
            return Some(b);
        }
        let Some(mut c) = self.pool.alloc() else {
            self.stats.tx_dropped += 1;
            return None;
        };
        match c.append(b.len()) {
            Ok(dst) => dst.copy_from_slice(b.data()),
            Err(_) => {
                self.stats.tx_errors += 1;
                return None;
            }
        }
        self.counters.tx_copied += 1;
        Some(c)
    }

    /// Take up to the free descriptors from the front of `bufs`; true if a notification is due.
    pub(crate) fn transmit(&mut self, bufs: &mut Vec<Buffer>) -> (usize, bool) {
        self.reclaim();
        let k = bufs.len().min(self.tx.free_descs());
        for b in bufs.drain(..k) {
            let Some(mut b) = self.own(b) else { continue };
            let frame = b.len() as u64;
            match b.prepend(NET_HDR) {
                Ok(h) => h.fill(0),
                Err(_) => {
                    self.stats.tx_errors += 1;
                    continue;
                }
            }
            let (iova, len) = (b.iova(), b.len());
            if !self.bounds.check(iova, len) {
                // Never post an address we have not mapped.
                self.counters.iova_refused += 1;
                self.stats.tx_errors += 1;
                continue;
            }
            if self.tx.push(&[Seg { iova, len: len as u32, write: false }], Some(b)).is_err() {
                self.stats.tx_dropped += 1;
                continue;
            }
            if let Some((bad, blen)) = self.bad_iova.take() {
                self.tx.poison_last(bad, blen);
                eprintln!(
                    "{TEST_BAD_IOVA_ENV}: posted one transmit descriptor at IOVA {bad:#x} ({} bytes), outside every mapped region",
                    blen.unwrap_or(len as u32)
                );
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += frame;
        }
        (k, self.tx.publish())
    }
}

/// A queue's counters: the core's, plus the rings' checks of what the device returned. An
/// overlong receive length is already in `rx_errors` (counted by `receive`).
pub(crate) fn queue_stats(c: &QueueCore) -> QueueStats {
    let mut s = c.stats;
    s.rx_errors += c.rx.bad_used_id;
    s.tx_errors += c.tx.bad_used_id;
    s.tx_copied = c.counters.tx_copied;
    s.rx_no_buffers = c.counters.rx_no_buffers;
    s.iova_refused = c.counters.iova_refused;
    s.bad_used_id = c.rx.bad_used_id + c.tx.bad_used_id;
    s.bad_used_len = c.rx.bad_used_len + c.tx.bad_used_len;
    s.bad_used_idx = c.rx.bad_used_idx + c.tx.bad_used_idx;
    s
}

/// Stuck-transmit detection: descriptors in flight and no completion for a while.
#[derive(Debug, Default)]
pub(crate) struct StallDetector {
    last: u64,
    since: Option<Instant>,
}

impl StallDetector {
    /// True once `in_flight` > 0 and `completions` has not moved for `limit` (checked at `now`).
    pub(crate) fn stalled(&mut self, in_flight: usize, completions: u64, now: Instant, limit: Duration) -> bool {
        if in_flight == 0 || completions != self.last {
            self.last = completions;
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= limit
    }
}

/// One queue pair of a [`VirtioNetPort`], polled by one worker.
pub struct VirtioQueue {
    core: QueueCore,
    dev: Arc<NetDev>,
    rx_vq: u16,
    tx_vq: u16,
    rx_notify: usize,
    tx_notify: usize,
    polls: u64,
    stall: StallDetector,
    fault: Option<String>,
}

impl VirtioQueue {
    /// §4.1.5.2 "Available Buffer Notifications": write the queue index at the queue's notify
    /// address.
    fn notify(&self, vq: u16, at: usize) {
        self.dev.t.notify.write16(at, vq);
    }

    /// The watchdog: every WATCHDOG_POLLS polls, read device_status and look for stuck transmits.
    fn watchdog(&mut self) {
        self.polls += 1;
        if self.polls % WATCHDOG_POLLS != 0 || self.fault.is_some() || self.dev.is_quiesced() {
            return;
        }
        let bdf = &self.dev.bdf;
        let st = self.dev.t.status();
        let q = self.rx_vq / 2;
        if st == 0xff {
            self.fault = Some(format!("vfio:{bdf}: device not responding (status reads 0xff): removed or in error"));
        } else if st & status::NEEDS_RESET != 0 {
            self.fault = Some(format!(
                "vfio:{bdf}: the device set DEVICE_NEEDS_RESET (status {st:#04x}) on queue pair {q}: it met an error it cannot recover from, e.g. a DMA fault (see dmesg for DMAR/IOMMU faults) or a malformed descriptor"
            ));
        } else if st & status::DRIVER_OK == 0 || st & status::FAILED != 0 {
            self.fault = Some(format!("vfio:{bdf}: the device was reset or failed under us (status {st:#04x})"));
        } else if let Some(line) = self.dev.kmsg.lock().unwrap_or_else(|e| e.into_inner()).check(bdf) {
            self.fault = Some(format!(
                "vfio:{bdf}: the IOMMU blocked a DMA of this device (kernel log: `{line}`): a descriptor pointed outside the driver's mapped memory; stopping"
            ));
        } else if self.core.rx.bad_used_idx + self.core.tx.bad_used_idx > 0 {
            self.fault = Some(format!(
                "vfio:{bdf}: the device advanced a used ring index past the ring size on queue pair {q}: broken device"
            ));
        }
        if self.fault.is_some() {
            return;
        }
        self.core.reclaim();
        if self.stall.stalled(self.core.tx.in_flight(), self.core.tx_completions, Instant::now(), TX_STALL) {
            self.fault = Some(format!(
                "vfio:{bdf}: transmit completions stalled for {} s on queue pair {q} with {} descriptors in flight (device status {st:#04x})",
                TX_STALL.as_secs(),
                self.core.tx.in_flight()
            ));
        }
    }

    /// Counters beyond QueueStats.
    pub fn counters(&self) -> VirtioCounters {
        self.core.counters
    }
}

impl Drop for VirtioQueue {
    fn drop(&mut self) {
        // The device may still write the posted rx buffers: stop it before they return to the
        // pool (the Virtq fields drop after this and free them).
        self.dev.quiesce();
    }
}

impl Queue for VirtioQueue {
    fn rx_burst(&mut self, _pool: &Pool, out: &mut Vec<Buffer>, max: usize) -> usize {
        self.watchdog();
        if self.fault.is_some() {
            return 0;
        }
        let n = self.core.receive(out, max);
        if self.core.refill(false) {
            self.notify(self.rx_vq, self.rx_notify);
        }
        n
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Buffer>) -> usize {
        if self.fault.is_some() {
            return 0;
        }
        let (n, kick) = self.core.transmit(bufs);
        if kick {
            self.notify(self.tx_vq, self.tx_notify);
        }
        n
    }

    fn stats(&self) -> QueueStats {
        queue_stats(&self.core)
    }

    fn health(&self) -> Result<(), String> {
        match &self.fault {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }
}

/// A virtio-net device driven from user space through VFIO: `vfio:0000:00:02.0`.
pub struct VirtioNetPort {
    info: PortInfo,
    dev: Arc<NetDev>,
    queues: Vec<Option<VirtioQueue>>,
    pools: Vec<Pool>,
}

fn err(spec: &str, problem: impl Into<String>) -> PortError {
    PortError::BadOptions { spec: spec.to_string(), problem: problem.into() }
}

impl VirtioNetPort {
    /// Open `bdf` (bound to vfio-pci) with `opts.queues` queue pairs.
    pub fn open(spec: &str, bdf: &str, opts: &PortOptions) -> Result<VirtioNetPort, PortError> {
        let verr = |source| PortError::Vfio { spec: spec.to_string(), source: Box::new(source) };
        let sys = vfio::Sysfs::default();
        let allow_noiommu = std::env::var(NOIOMMU_ENV).is_ok_and(|v| v == "1");
        let vdev = vfio::Container::open_device(&sys, bdf, allow_noiommu).map_err(verr)?;
        let (vendor, device) = vdev.ids().map_err(verr)?;
        if (vendor, device) != (0x1af4, 0x1041) {
            return Err(err(
                spec,
                format!("{vendor:04x}:{device:04x} is not a modern virtio-net device (1af4:1041); the vfio backend drives only that"),
            ));
        }
        vdev.reset().map_err(verr)?;
        vdev.enable_bus_master().map_err(verr)?;
        let caps = find_caps(&vdev.capabilities().map_err(verr)?).map_err(|e| err(spec, e))?;
        let mut bars: [Option<Arc<vfio::Mmio>>; 6] = Default::default();
        let mut window = |loc: super::pci::CapLoc, min: usize, what: &str| -> Result<Window, PortError> {
            let bar = loc.bar as usize;
            if bars[bar].is_none() {
                bars[bar] = Some(Arc::new(vdev.map_bar(loc.bar).map_err(verr)?));
            }
            let mmio = bars[bar].clone().ok_or_else(|| err(spec, "BAR mapping vanished"))?;
            if (loc.length as usize) < min {
                return Err(err(
                    spec,
                    format!("virtio {what} structure is {} bytes, at least {min} needed", loc.length),
                ));
            }
            Window::new(mmio, loc.offset as usize, loc.length as usize)
                .ok_or_else(|| err(spec, format!("virtio {what} structure lies outside BAR{}", loc.bar)))
        };
        let t = Transport {
            common: window(caps.common, common::LEN, "common configuration")?,
            notify: window(caps.notify, 2, "notification")?,
            notify_mult: caps.notify.extra,
            device: window(caps.device, 6, "device configuration")?,
        };
        // §3.1.1 "Driver Requirements: Device Initialization".
        if !t.reset() {
            return Err(err(spec, "device did not complete its reset (device_status stays non-zero)"));
        }
        t.set_status(status::ACKNOWLEDGE);
        t.set_status(status::ACKNOWLEDGE | status::DRIVER);
        t.common.write32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = t.common.read32(common::DEVICE_FEATURE) as u64;
        t.common.write32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = t.common.read32(common::DEVICE_FEATURE) as u64;
        let offered = hi << 32 | lo;
        let features = negotiate(offered, opts.queues).map_err(|e| err(spec, e))?;
        t.common.write32(common::DRIVER_FEATURE_SELECT, 0);
        t.common.write32(common::DRIVER_FEATURE, features as u32);
        t.common.write32(common::DRIVER_FEATURE_SELECT, 1);
        t.common.write32(common::DRIVER_FEATURE, (features >> 32) as u32);
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        if t.status() & status::FEATURES_OK == 0 {
            t.set_status(status::FAILED);
            return Err(err(spec, format!("device refused features {features:#x} (FEATURES_OK not kept)")));
        }
        let mac = if features & feature::MAC != 0 {
            let m: Vec<u8> = (0..6).map(|i| t.device.read8(i)).collect();
            [m[0], m[1], m[2], m[3], m[4], m[5]]
        } else {
            t.set_status(status::FAILED);
            return Err(err(spec, "device offers no MAC address (VIRTIO_NET_F_MAC): give the NIC a mac= in QEMU"));
        };
        let max_pairs = if features & feature::MQ != 0 { t.device.read16(CFG_MAX_PAIRS) as usize } else { 1 };
        if opts.queues > max_pairs {
            t.set_status(status::FAILED);
            return Err(err(spec, format!("{} queue pairs asked for, the device has {max_pairs}", opts.queues)));
        }
        let num_vqs = t.common.read16(common::NUM_QUEUES) as usize;
        let mut vqs: Vec<u16> = (0..2 * opts.queues as u16).collect();
        let ctrl_vq = (opts.queues > 1).then_some(2 * max_pairs as u16);
        vqs.extend(ctrl_vq);
        let mut sizes = Vec::new();
        for &vq in &vqs {
            if vq as usize >= num_vqs {
                t.set_status(status::FAILED);
                return Err(err(spec, format!("device has {num_vqs} virtqueues, queue {vq} needed")));
            }
            t.common.write16(common::QUEUE_SELECT, vq);
            let max = t.common.read16(common::QUEUE_SIZE);
            if max == 0 {
                t.set_status(status::FAILED);
                return Err(err(spec, format!("virtqueue {vq} is not available (size 0)")));
            }
            // Largest power of two ≤ min(device max, MAX_QUEUE).
            let n = 1u16 << (15 - max.min(MAX_QUEUE).leading_zeros().min(15));
            sizes.push(n);
        }
        let ring_bytes: usize = sizes.iter().map(|&n| layout(n).0).sum::<usize>() + 4096;
        let container = vdev.container().clone();
        let rings: Arc<dyn SharedMem> = Arc::new(container.alloc_dma(ring_bytes).map_err(verr)?);
        let bad_iova = match std::env::var(TEST_BAD_IOVA_ENV).as_deref() {
            Ok("1") => Some(None),
            Ok("big") => Some(Some(8192)),
            _ => None,
        }
        .map(|len| (container.unmapped_iova().unwrap_or((container.iova_high_water() + (1 << 30)) & !0xfff), len));
        let dev = Arc::new(NetDev {
            t,
            features,
            bdf: vdev.bdf().to_string(),
            kmsg: std::sync::Mutex::new(KernelLog::open()),
            quiesced: StopOnce::default(),
            _rings: rings.clone(),
            vfio: vdev,
        });
        // Program every queue (§4.1.5.1.3 "Virtqueue Configuration").
        let mut off = 0;
        let mut rings_v = Vec::new();
        let mut notify_offs = Vec::new();
        for (&vq, &n) in vqs.iter().zip(&sizes) {
            let len = layout(n).0;
            let mem = RingMem::new(rings.clone(), off, len).ok_or_else(|| err(spec, "ring memory layout"))?;
            off += len;
            let q = Virtq::new(mem, n).ok_or_else(|| err(spec, "ring memory layout"))?;
            let (d, a, u) = q.addresses();
            let c = &dev.t.common;
            c.write16(common::QUEUE_SELECT, vq);
            c.write16(common::QUEUE_SIZE, n);
            c.write16(common::QUEUE_MSIX_VECTOR, NO_VECTOR);
            c.write64(common::QUEUE_DESC, d);
            c.write64(common::QUEUE_DRIVER, a);
            c.write64(common::QUEUE_DEVICE, u);
            let noff = c.read16(common::QUEUE_NOTIFY_OFF) as usize * dev.t.notify_mult as usize;
            if noff + 2 > caps.notify.length as usize {
                dev.t.set_status(status::FAILED);
                return Err(err(spec, format!("notify offset of queue {vq} lies outside the notification structure")));
            }
            c.write16(common::QUEUE_ENABLE, 1);
            rings_v.push(q);
            notify_offs.push(noff);
        }
        dev.t.common.write16(common::CONFIG_MSIX_VECTOR, NO_VECTOR);
        dev.t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        // The control queue: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5), before any traffic.
        if let Some(cvq) = ctrl_vq {
            let mut q = rings_v.pop().ok_or_else(|| err(spec, "control queue"))?;
            let noff = notify_offs.pop().unwrap_or(0);
            let cmd = RingMem::new(rings.clone(), off, 64).ok_or_else(|| err(spec, "control buffer"))?;
            let pairs = opts.queues as u16;
            cmd.write_u8(0, CTRL_MQ);
            cmd.write_u8(1, CTRL_MQ_VQ_PAIRS_SET);
            cmd.write_u16(2, pairs);
            cmd.write_u8(8, 0xff);
            let segs =
                [Seg { iova: cmd.iova(), len: 4, write: false }, Seg { iova: cmd.iova() + 8, len: 1, write: true }];
            let _ = q.push(&segs, None);
            if q.publish() {
                dev.t.notify.write16(noff, cvq);
            }
            let t0 = Instant::now();
            let mut used = Vec::new();
            while q.pop_used(1, &mut used) == 0 && t0.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let ack = cmd.read_u8(8);
            if used.is_empty() || ack != CTRL_OK {
                dev.t.set_status(status::FAILED);
                return Err(err(
                    spec,
                    format!("device did not accept {pairs} queue pairs (control queue ack {ack:#x})"),
                ));
            }
        }
        let mut queues = Vec::new();
        let mut pools = Vec::new();
        let mut it = rings_v.into_iter().zip(notify_offs);
        for i in 0..opts.queues {
            let (Some((rx, rxn)), Some((tx, txn))) = (it.next(), it.next()) else {
                return Err(err(spec, "queue setup"));
            };
            let bufs = pool_bufs(container.max_dma_region());
            let region = container.alloc_dma(bufs * BUF_SIZE).map_err(verr)?;
            let mut bounds = Bounds::default();
            bounds.add(region.iova().0, region.size() as u64);
            let d2 = dev.clone();
            let r = DmaPoolRegion { before_unmap: Some(Box::new(move || d2.quiesce())), region };
            let pool = Pool::with_region(&format!("vfio{i}"), r, bufs)
                .map_err(|source| PortError::Pool { spec: spec.to_string(), source })?;
            let mut core = QueueCore::new(rx, tx, pool.clone(), bounds);
            if i == 0 {
                core.bad_iova = bad_iova;
            }
            let mut q = VirtioQueue {
                core,
                dev: dev.clone(),
                rx_vq: 2 * i as u16,
                tx_vq: 2 * i as u16 + 1,
                rx_notify: rxn,
                tx_notify: txn,
                polls: 0,
                stall: StallDetector::default(),
                fault: None,
            };
            if q.core.refill(true) {
                q.notify(q.rx_vq, q.rx_notify);
            }
            queues.push(Some(q));
            pools.push(pool);
        }
        let info = PortInfo { name: dev.bdf.clone(), mac: Some(mac), mtu: opts.mtu.unwrap_or(1500), kind: "vfio" };
        Ok(VirtioNetPort { info, dev, queues, pools })
    }
}

impl Port for VirtioNetPort {
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
        if self.dev.features & feature::STATUS == 0 {
            return true;
        }
        self.dev.t.device.read16(CFG_STATUS) & LINK_UP != 0
    }
    fn queue_pool(&self, q: usize) -> Option<Pool> {
        self.pools.get(q).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::virtq::sim::SimDevice;
    use super::*;
    use crate::MmapRegion;

    fn core_with(n: u16, pool_bufs: usize) -> (QueueCore, SimDevice, SimDevice) {
        let bytes = 2 * layout(n).0;
        let region: Arc<dyn SharedMem> = Arc::new(MmapRegion::new(bytes).unwrap());
        let rx = Virtq::new(RingMem::new(region.clone(), 0, layout(n).0).unwrap(), n).unwrap();
        let tx = Virtq::new(RingMem::new(region, layout(n).0, layout(n).0).unwrap(), n).unwrap();
        let (sr, st) = (SimDevice::new(&rx), SimDevice::new(&tx));
        let pool = Pool::new("dma", pool_bufs).unwrap();
        let (base, size, iova) = pool.region();
        let _ = base;
        let mut b = Bounds::default();
        b.add(iova, size as u64);
        (QueueCore::new(rx, tx, pool, b), sr, st)
    }

    /// A second `quiesce` that arrives while the first is still resetting the device must wait
    /// for it: its caller frees the posted buffers and unmaps the DMA memory when it returns (the
    /// old `AtomicBool::swap` let it return at once).
    #[test]
    fn a_concurrent_quiesce_waits_for_the_reset() {
        let stop = Arc::new(StopOnce::default());
        let reset_done = Arc::new(AtomicBool::new(false));
        let (s, d) = (stop.clone(), reset_done.clone());
        let first = std::thread::spawn(move || {
            s.run(|| {
                std::thread::sleep(Duration::from_millis(200));
                d.store(true, Ordering::Release);
            })
        });
        while !stop.started() {
            std::thread::yield_now();
        }
        stop.run(|| panic!("the reset runs once"));
        assert!(reset_done.load(Ordering::Acquire), "returned before the reset finished");
        first.join().unwrap();
        stop.run(|| panic!("the reset runs once"));
    }

    #[test]
    fn pool_fits_one_contiguous_region() {
        assert_eq!(pool_bufs(None), POOL_BUFS, "IOMMU: the full pool");
        let n = pool_bufs(Some(vfio::HUGEPAGE));
        assert_eq!(n, 1024, "no-IOMMU: one 2 MiB hugepage");
        assert!(n * BUF_SIZE <= vfio::HUGEPAGE);
        assert!(n >= 2 * MAX_QUEUE as usize, "a full receive and transmit ring must fit");
        assert_eq!(pool_bufs(Some(64 << 20)), POOL_BUFS, "never more than POOL_BUFS");
        assert_eq!(pool_bufs(Some(100)), 1, "never zero");
    }

    #[test]
    fn iommu_faults_in_the_kernel_log() {
        let intel = "DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr 0x50200000 [fault reason 0x06] PTE Read access is not set";
        assert!(iommu_fault_line(intel, "0000:00:02.0"));
        assert!(!iommu_fault_line(intel, "0000:00:03.0"), "another device");
        let amd = "iommu ivhd0: AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:00:02.0 domain=0x000b address=0x50200000 flags=0x0000]";
        assert!(iommu_fault_line(amd, "0000:00:02.0"));
        assert!(!iommu_fault_line(amd, "0000:01:02.0"));
        assert!(!iommu_fault_line("DMAR: IOMMU enabled", "0000:00:02.0"));
        assert!(!iommu_fault_line("virtio_net virtio0 [00:02.0]: link up", "0000:00:02.0"));
    }

    #[test]
    fn stalled_transmits_are_detected_only_without_progress() {
        let mut d = StallDetector::default();
        let t = Instant::now();
        let lim = Duration::from_secs(5);
        assert!(!d.stalled(0, 0, t, lim), "nothing in flight");
        assert!(!d.stalled(3, 0, t, lim), "first look: the clock starts");
        assert!(!d.stalled(3, 0, t + Duration::from_secs(4), lim));
        assert!(d.stalled(3, 0, t + Duration::from_secs(5), lim), "5 s without a completion");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(6), lim), "a completion resets it");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(10), lim), "the clock restarted at 10 s");
        assert!(!d.stalled(3, 1, t + Duration::from_secs(14), lim));
        assert!(d.stalled(3, 1, t + Duration::from_secs(15), lim));
        assert!(!d.stalled(0, 1, t + Duration::from_secs(30), lim), "idle is not stalled");
        assert!(!d.stalled(1, 1, t + Duration::from_secs(31), lim), "in flight again: a new window");
    }

    #[test]
    fn bounds_check() {
        let mut b = Bounds::default();
        b.add(0x1000, 0x1000);
        b.add(0x10000, 0x100);
        assert!(b.check(0x1000, 0x1000));
        assert!(b.check(0x10080, 0x80));
        assert!(!b.check(0x1800, 0x1000), "crosses the end");
        assert!(!b.check(0x2000, 1), "between ranges");
        assert!(!b.check(0xfff, 2), "starts before");
        assert!(!b.check(u64::MAX - 1, 4), "wraps");
        assert!(!Bounds::default().check(0, 0));
    }

    #[test]
    fn rx_frames_land_at_headroom_and_refill_is_batched() {
        let (mut c, mut dev, _) = core_with(64, 256);
        let region = c.pool.region();
        assert!(c.refill(true));
        assert_eq!(c.rx.free_descs(), 0);
        assert_eq!(c.pool.available(), 256 - 64);
        let chains = dev.take_avail();
        assert_eq!(chains.len(), 64);
        for (i, ch) in chains.iter().enumerate().take(40) {
            let (iova, len, flags) = ch.segs[0];
            assert_eq!((len as usize, flags), (RX_LEN, 2));
            assert_eq!((iova - region.2) % BUF_SIZE as u64, RX_OFF as u64, "header just before HEADROOM");
            let mut frame = vec![0u8; NET_HDR];
            frame.extend(std::iter::repeat_n(i as u8, 60));
            assert!(crate::sys::ring::sim_dma_write(region, iova, &frame));
            dev.put_used(ch.head as u32, frame.len() as u32);
        }
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(c.receive(&mut out, 32), 32);
        assert_eq!(c.receive(&mut out, 32), 8);
        for (i, b) in out.iter().enumerate() {
            assert_eq!(b.headroom(), HEADROOM);
            assert_eq!(b.data(), &[i as u8; 60][..]);
        }
        assert_eq!((c.stats.rx_packets, c.stats.rx_bytes), (40, 2400));
        // 40 free: one batch of 32 is due, refill takes all 40.
        assert!(c.refill(false));
        assert_eq!(c.rx.free_descs(), 0);
        assert_eq!(dev.take_avail().len(), 40);
        assert!(!c.refill(false), "nothing free, nothing published");
    }

    #[test]
    fn rx_short_and_overlong_lengths_are_counted_not_trusted() {
        let (mut c, mut dev, _) = core_with(8, 64);
        c.refill(true);
        let ch = dev.take_avail();
        dev.put_used(ch[0].head as u32, 5); // shorter than the header
        dev.put_used(ch[1].head as u32, RX_LEN as u32 + 1); // longer than posted
        dev.put_used(ch[2].head as u32, (NET_HDR + 13) as u32); // header + 13: no Ethernet header
        dev.put_used(99, 100); // not an id
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(c.receive(&mut out, 32), 0);
        assert_eq!(c.stats.rx_errors, 3);
        assert_eq!(c.rx.bad_used_id, 1);
        assert_eq!(c.rx.bad_used_len, 1);
        assert_eq!(c.pool.available(), 64 - 8 + 3, "the three buffers went back to the pool");
        // What `wgpmd stats` shows: the overlong length once in rx_errors, the bad id added.
        let s = queue_stats(&c);
        assert_eq!((s.rx_errors, s.bad_used_id, s.bad_used_len, s.bad_used_idx), (4, 1, 1, 0));
    }

    #[test]
    fn tx_prepends_a_zero_header_copies_foreign_buffers_and_reclaims() {
        let (mut c, _, mut dev) = core_with(8, 64);
        let region = c.pool.region();
        let foreign = Pool::new("ctl", 8).unwrap();
        let mut bufs = Vec::new();
        for i in 0..10u8 {
            let p = if i % 2 == 0 { &c.pool } else { &foreign };
            let mut b = p.alloc().unwrap();
            b.prepend(NET_HDR).unwrap().fill(0xee); // stale bytes where the header goes
            b.trim_front(NET_HDR).unwrap();
            b.append(20).unwrap().fill(i);
            bufs.push(b);
        }
        let (n, kick) = c.transmit(&mut bufs);
        assert_eq!((n, kick), (8, true));
        assert_eq!(bufs.len(), 2, "ring full: the rest stays, in order");
        assert_eq!(bufs[0].data()[0], 8);
        assert_eq!(c.counters.tx_copied, 4);
        assert_eq!(foreign.available(), 7, "foreign buffers taken were copied and freed (one is still queued)");
        let chains = dev.take_avail();
        for (i, ch) in chains.iter().enumerate() {
            let (iova, len, flags) = ch.segs[0];
            assert_eq!((len, flags), (32, 0));
            let bytes = crate::sys::ring::sim_dma_read(region, iova, 32).expect("inside the DMA pool");
            assert_eq!(&bytes[..NET_HDR], &[0; NET_HDR], "zeroed header");
            assert_eq!(&bytes[NET_HDR..], &[i as u8; 20]);
        }
        assert_eq!(c.tx.free_descs(), 0);
        for ch in &chains {
            dev.put_used(ch.head as u32, 0);
        }
        dev.publish_used();
        let (n, _) = c.transmit(&mut bufs);
        assert_eq!(n, 2, "completions reclaimed first");
        assert_eq!((c.stats.tx_packets, c.stats.tx_bytes), (10, 200));
        assert_eq!(c.tx_completions, 8);
    }

    #[test]
    fn tx_never_posts_outside_the_mapped_regions() {
        let (mut c, _, mut dev) = core_with(8, 16);
        c.bounds = Bounds::default();
        c.bounds.add(0, 1); // the pool is not "mapped"
        let mut b = c.pool.alloc().unwrap();
        b.append(60).unwrap();
        let mut v = vec![b];
        assert_eq!(c.transmit(&mut v).0, 1, "taken (and counted), not posted");
        assert_eq!((c.counters.iova_refused, c.stats.tx_errors, c.stats.tx_packets), (1, 1, 0));
        assert!(dev.take_avail().is_empty());
        assert_eq!(c.rx.free_descs(), 8);
        c.refill(true);
        assert_eq!(c.rx.free_descs(), 8, "rx refuses to post unmapped buffers too");
        assert_eq!(c.counters.iova_refused, 2);
        assert_eq!(c.pool.available(), 16);
        let s = queue_stats(&c);
        assert_eq!((s.iova_refused, s.tx_errors, s.rx_no_buffers), (2, 1, 0));
    }

    #[test]
    fn bad_iova_hook_posts_once_outside_the_bounds() {
        let (mut c, _, mut dev) = core_with(8, 16);
        c.bad_iova = Some((0xdead_0000, Some(8192)));
        let mk = |c: &QueueCore| {
            let mut b = c.pool.alloc().unwrap();
            b.append(60).unwrap();
            vec![b]
        };
        let mut v = mk(&c);
        c.transmit(&mut v);
        let mut v = mk(&c);
        c.transmit(&mut v);
        let ch = dev.take_avail();
        assert_eq!((ch[0].segs[0].0, ch[0].segs[0].1), (0xdead_0000, 8192));
        assert!(!c.bounds.check(ch[0].segs[0].0, 1));
        assert!(c.bounds.check(ch[1].segs[0].0, 72), "only the first");
    }

    #[test]
    fn pool_exhaustion_stops_refill_and_is_counted() {
        let (mut c, _, _) = core_with(16, 4);
        c.refill(true);
        assert_eq!(c.rx.in_flight(), 4);
        assert_eq!(c.counters.rx_no_buffers, 1);
        assert_eq!(queue_stats(&c).rx_no_buffers, 1);
    }
}
