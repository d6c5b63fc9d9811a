//! The virtio-net port (virtio 1.1/1.2 §5.1 "Network Device") on a VFIO device, and its bring-up:
//! [`VirtioNetPort::open`] follows the device initialisation of §3.1.1 step by step.
//!
//! Queue pair i is receiveq i (vq 2i) and transmitq i (vq 2i+1) (§5.1.2); the control queue is
//! vq 2 * max_virtqueue_pairs. The frames' 12-byte header: see `queue_core`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bounds::Bounds;
use super::device::NetDev;
use super::pci::{feature, negotiate, status};
use super::queue::VirtioQueue;
use super::queue_core::QueueCore;
use super::transport::{open_function, Transport};
use super::virtq::{layout, Seg, Virtq, MAX_QUEUE};
use crate::buffer::{Pool, BUF_SIZE};
use crate::error::PortError;
use crate::port::{Port, PortInfo, PortOptions, Queue};
use crate::sys::ring::{DmaPoolRegion, RingMem, SharedMem};

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
/// `VIRTIO_NET_S_LINK_UP` in the device configuration's status (§5.1.4).
const LINK_UP: u16 = 1;
/// Device configuration (§5.1.4): `mac[6]`, status le16, max_virtqueue_pairs le16.
const CFG_STATUS: usize = 6;
const CFG_MAX_PAIRS: usize = 8;
/// `VIRTIO_NET_CTRL_MQ`, `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, `VIRTIO_NET_OK` (§5.1.6.5.5).
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;

/// The port string's error: the device cannot be used as asked.
pub(crate) fn bad(spec: &str, problem: impl Into<String>) -> PortError {
    PortError::BadOptions { spec: spec.to_string(), problem: problem.into() }
}

/// The port string's error for a failed VFIO operation.
pub(crate) fn vfio_err(spec: &str) -> impl Fn(vfio::VfioError) -> PortError + '_ {
    move |source| PortError::Vfio { spec: spec.to_string(), source: Box::new(source) }
}

/// A virtio-net device driven from user space through VFIO: `vfio:0000:00:02.0`.
pub struct VirtioNetPort {
    info: PortInfo,
    dev: Arc<NetDev>,
    queues: Vec<Option<VirtioQueue>>,
    pools: Vec<Pool>,
}

impl VirtioNetPort {
    /// Open `bdf` (bound to vfio-pci) with `opts.queues` queue pairs.
    pub fn open(spec: &str, bdf: &str, opts: &PortOptions) -> Result<VirtioNetPort, PortError> {
        let vdev = open_function(spec, bdf)?;
        let t = Transport::map(&vdev, spec)?;
        // §3.1.1 "Driver Requirements: Device Initialization": "The driver MUST follow this
        // sequence to initialize a device". "If any of these steps go irrecoverably wrong, the
        // driver SHOULD set the FAILED status bit to indicate that it has given up on the device":
        // `Transport::fail`; once the rings exist, dropping the `NetDev` also resets the device.

        // 1) "Reset the device."
        if !t.reset() {
            return Err(bad(spec, "device did not complete its reset (device_status stays non-zero)"));
        }
        // 2) "Set the ACKNOWLEDGE status bit: the guest OS has noticed the device."
        t.set_status(status::ACKNOWLEDGE);
        // 3) "Set the DRIVER status bit: the guest OS knows how to drive the device."
        t.set_status(status::ACKNOWLEDGE | status::DRIVER);
        // 4) "Read device feature bits, and write the subset of feature bits understood by the OS
        //    and driver to the device."
        let features = negotiate(t.device_features(), opts.queues).map_err(|e| bad(spec, e))?;
        t.set_driver_features(features);
        // 5) "Set the FEATURES_OK status bit. The driver MUST NOT accept new feature bits after
        //    this step."
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        // 6) "Re-read device status to ensure the FEATURES_OK bit is still set: otherwise, the
        //    device does not support our subset of features and the device is unusable."
        if t.status() & status::FEATURES_OK == 0 {
            return Err(t.fail(spec, format!("device refused features {features:#x} (FEATURES_OK not kept)")));
        }
        // 7) "Perform device-specific setup, including discovery of virtqueues for the device,
        //    optional per-bus setup, reading and possibly writing the device's virtio
        //    configuration space, and population of virtqueues."
        let mac = read_mac(&t, features).map_err(|e| t.fail(spec, e))?;
        let plan = discover_queues(&t, features, opts.queues).map_err(|e| t.fail(spec, e))?;
        let container = vdev.container().clone();
        let rings: Arc<dyn SharedMem> = Arc::new(container.alloc_dma(plan.ring_bytes()).map_err(vfio_err(spec))?);
        #[cfg(any(test, feature = "test-hooks"))]
        let bad_iova = super::test_hook::bad_iova_from_env(&container);
        let dev = Arc::new(NetDev::new(t, features, rings.clone(), vdev));
        let (mut vqs, ctrl_buf) = setup_queues(spec, &dev, &plan, &rings)?;
        dev.t.no_config_interrupt();
        // 8) "Set the DRIVER_OK status bit. At this point the device is 'live'."
        dev.t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);

        // The rest of step 7 comes after step 8: the control queue's command and the receive
        // queues' buffers both notify the device, and "The driver MUST NOT send any buffer
        // available notifications to the device before setting DRIVER_OK" (§3.1.1).
        if let Some(cvq) = plan.ctrl_vq {
            let (q, at) = vqs.pop().ok_or_else(|| bad(spec, "control queue"))?;
            let cmd = RingMem::new(rings.clone(), ctrl_buf, 64).ok_or_else(|| bad(spec, "control buffer"))?;
            set_queue_pairs(&dev, q, (cvq, at), &cmd, opts.queues).map_err(|e| dev.t.fail(spec, e))?;
        }
        let mut queues = Vec::new();
        let mut pools = Vec::new();
        let mut it = vqs.into_iter();
        for i in 0..opts.queues {
            let (Some(rx), Some(tx)) = (it.next(), it.next()) else {
                return Err(bad(spec, "queue setup"));
            };
            let (q, pool) = start_queue(spec, &dev, &container, i, rx, tx)?;
            queues.push(Some(q));
            pools.push(pool);
        }
        #[cfg(any(test, feature = "test-hooks"))]
        if let Some(Some(q)) = queues.first_mut() {
            q.set_bad_iova(bad_iova);
        }
        let info = PortInfo { name: dev.bdf.clone(), mac: Some(mac), mtu: opts.mtu.unwrap_or(1500), kind: "vfio" };
        Ok(VirtioNetPort { info, dev, queues, pools })
    }
}

/// After step 8: queue pair `i` over its receive and transmit virtqueues (with their notification
/// addresses), with a pool of its own in DMA memory (unmapping that stops the device first), and
/// its receive ring filled.
fn start_queue(
    spec: &str,
    dev: &Arc<NetDev>,
    container: &Arc<vfio::Container>,
    i: usize,
    (rx, rx_at): (Virtq, usize),
    (tx, tx_at): (Virtq, usize),
) -> Result<(VirtioQueue, Pool), PortError> {
    let bufs = pool_bufs(container.max_dma_region());
    let region = container.alloc_dma(bufs * BUF_SIZE).map_err(vfio_err(spec))?;
    let mut bounds = Bounds::default();
    bounds.add(region.iova().0, region.size() as u64);
    let d2 = dev.clone();
    let r = DmaPoolRegion { before_unmap: Some(Box::new(move || d2.quiesce())), region };
    let pool = Pool::with_region(&format!("vfio{i}"), r, bufs)
        .map_err(|source| PortError::Pool { spec: spec.to_string(), source })?;
    let mut q = VirtioQueue::new(QueueCore::new(rx, tx, pool.clone(), bounds), dev.clone(), i, rx_at, tx_at);
    // The worker allocates from this pool from now on; this thread only fills the receive
    // ring once, so it keeps no cache of the pool.
    crate::sys::slots::without_new_caches(|| q.start());
    Ok((q, pool))
}

/// Step 7: the MAC address from the device configuration (§5.1.4); we need VIRTIO_NET_F_MAC.
fn read_mac(t: &Transport, features: u64) -> Result<[u8; 6], String> {
    if features & feature::MAC == 0 {
        return Err("device offers no MAC address (VIRTIO_NET_F_MAC): give the NIC a mac= in QEMU".into());
    }
    let m: Vec<u8> = (0..6).map(|i| t.device.read8(i)).collect();
    Ok([m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// The virtqueues a port of `queues` pairs uses, and their sizes.
struct QueuePlan {
    /// Queue pairs' vqs in order (rx 0, tx 0, rx 1, ...), then the control queue if any.
    vqs: Vec<u16>,
    sizes: Vec<u16>,
    /// The control queue, needed to enable more than one pair (§5.1.6.5.5).
    ctrl_vq: Option<u16>,
}

impl QueuePlan {
    /// DMA memory for every ring, plus a page for the control queue's command.
    fn ring_bytes(&self) -> usize {
        self.sizes.iter().map(|&n| layout(n).0).sum::<usize>() + 4096
    }
}

/// Step 7, "discovery of virtqueues": the device must have `max_virtqueue_pairs` ≥ `queues`
/// (§5.1.4, 1 without VIRTIO_NET_F_MQ) and every vq we need; each gets the largest power of two
/// ≤ min(the device's maximum, [`MAX_QUEUE`]) descriptors.
fn discover_queues(t: &Transport, features: u64, queues: usize) -> Result<QueuePlan, String> {
    let max_pairs = if features & feature::MQ != 0 { t.device.read16(CFG_MAX_PAIRS) as usize } else { 1 };
    if queues > max_pairs {
        return Err(format!("{queues} queue pairs asked for, the device has {max_pairs}"));
    }
    let num_vqs = t.num_queues();
    let mut vqs: Vec<u16> = (0..2 * queues as u16).collect();
    let ctrl_vq = (queues > 1).then_some(2 * max_pairs as u16);
    vqs.extend(ctrl_vq);
    let mut sizes = Vec::new();
    for &vq in &vqs {
        if vq as usize >= num_vqs {
            return Err(format!("device has {num_vqs} virtqueues, queue {vq} needed"));
        }
        let max = t.queue_max_size(vq);
        if max == 0 {
            return Err(format!("virtqueue {vq} is not available (size 0)"));
        }
        sizes.push(1u16 << (15 - max.min(MAX_QUEUE).leading_zeros().min(15)));
    }
    Ok(QueuePlan { vqs, sizes, ctrl_vq })
}

/// Step 7, the virtqueues' setup (§4.1.5.1.3): each planned vq gets its rings, one after the
/// other in `rings`, and is enabled. Returns them with their notification addresses, and the
/// offset in `rings` after the last ring (where the control queue's command goes).
fn setup_queues(
    spec: &str,
    dev: &NetDev,
    plan: &QueuePlan,
    rings: &Arc<dyn SharedMem>,
) -> Result<(Vec<(Virtq, usize)>, usize), PortError> {
    let mut off = 0;
    let mut vqs = Vec::new();
    for (&vq, &n) in plan.vqs.iter().zip(&plan.sizes) {
        let len = layout(n).0;
        let mem = RingMem::new(rings.clone(), off, len).ok_or_else(|| bad(spec, "ring memory layout"))?;
        off += len;
        let q = Virtq::new(mem, n).ok_or_else(|| bad(spec, "ring memory layout"))?;
        let Some(at) = dev.t.setup_queue(vq, n, q.addresses()) else {
            return Err(dev
                .t
                .fail(spec, format!("notify offset of queue {vq} lies outside the notification structure")));
        };
        vqs.push((q, at));
    }
    Ok((vqs, off))
}

/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (§5.1.6.5.5) on the control queue `q` (`vq`, notified at
/// `at`), with the command in `cmd`, before any traffic: the device must answer VIRTIO_NET_OK
/// within 2 s.
fn set_queue_pairs(
    dev: &NetDev,
    mut q: Virtq,
    (vq, at): (u16, usize),
    cmd: &RingMem,
    pairs: usize,
) -> Result<(), String> {
    let pairs = pairs as u16;
    cmd.write_u8(0, CTRL_MQ);
    cmd.write_u8(1, CTRL_MQ_VQ_PAIRS_SET);
    cmd.write_u16(2, pairs);
    cmd.write_u8(8, 0xff);
    let segs = [Seg { iova: cmd.iova(), len: 4, write: false }, Seg { iova: cmd.iova() + 8, len: 1, write: true }];
    let _ = q.push(&segs, None);
    if q.publish() {
        dev.t.notify(at, vq);
    }
    let t0 = Instant::now();
    let mut used = Vec::new();
    while q.pop_used(1, &mut used) == 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(200));
    }
    let ack = cmd.read_u8(8);
    if used.is_empty() || ack != CTRL_OK {
        return Err(format!("device did not accept {pairs} queue pairs (control queue ack {ack:#x})"));
    }
    Ok(())
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
    use super::*;

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
}
