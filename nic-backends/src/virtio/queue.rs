//! [`VirtioQueue`]: one queue pair of the port as a [`Queue`]: the [`QueueCore`] data path, the
//! device's notifications, and the watchdog that turns a device fault into [`Queue::health`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::NetDev;
use super::pci::status;
use super::queue_core::{queue_stats, QueueCore, VirtioCounters};
use super::stall::StallDetector;
use crate::buffer::{Buffer, Pool};
use crate::port::{Queue, QueueStats};

/// Device status is checked every this many polls of a queue.
const WATCHDOG_POLLS: u64 = 1024;
/// Transmit completions missing this long with descriptors in flight: the device is stuck.
const TX_STALL: Duration = Duration::from_secs(5);

/// One queue pair of a [`super::VirtioNetPort`], polled by one worker.
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
    /// Queue pair `i` (receiveq `2i`, transmitq `2i + 1`, §5.1.2) over `core`, with the
    /// notification addresses of its two virtqueues.
    pub(crate) fn new(core: QueueCore, dev: Arc<NetDev>, i: usize, rx_notify: usize, tx_notify: usize) -> VirtioQueue {
        VirtioQueue {
            core,
            dev,
            rx_vq: 2 * i as u16,
            tx_vq: 2 * i as u16 + 1,
            rx_notify,
            tx_notify,
            polls: 0,
            stall: StallDetector::default(),
            fault: None,
        }
    }

    /// Fills the receive ring and tells the device (after DRIVER_OK).
    pub(crate) fn start(&mut self) {
        if self.core.refill(true) {
            self.notify(self.rx_vq, self.rx_notify);
        }
    }

    /// The bad-IOVA test hook: this queue's next transmit descriptor goes to `bad`.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn set_bad_iova(&mut self, bad: Option<(u64, Option<u32>)>) {
        self.core.bad_iova = bad;
    }

    fn notify(&self, vq: u16, at: usize) {
        self.dev.t.notify(at, vq);
    }

    /// The watchdog: every WATCHDOG_POLLS polls, read device_status and look for stuck transmits.
    fn watchdog(&mut self) {
        self.polls += 1;
        if !self.polls.is_multiple_of(WATCHDOG_POLLS) || self.fault.is_some() || self.dev.is_quiesced() {
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
