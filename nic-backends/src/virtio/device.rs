//! [`NetDev`]: the device shared by the port, its queues and its pools' DMA regions, and its
//! teardown: the first of them to go stops the device before any memory it could write is freed.

use std::sync::{Arc, Mutex};

use super::kmsg::KernelLog;
use super::stop_once::StopOnce;
use super::transport::Transport;
use crate::sys::ring::SharedMem;

/// The device, shared by the port, its queues and its pools' regions.
pub(crate) struct NetDev {
    pub t: Transport,
    pub features: u64,
    pub bdf: String,
    pub kmsg: Mutex<KernelLog>,
    quiesced: StopOnce,
    // Dropped after the device is reset in Drop: BAR mappings (in `t`), then the ring memory,
    // then the VFIO device fd.
    _rings: Arc<dyn SharedMem>,
    vfio: vfio::Device,
}

impl NetDev {
    /// The device `vfio` with its transport `t`, the `features` negotiated and its `rings`; the
    /// kernel log is watched from now on.
    pub(crate) fn new(t: Transport, features: u64, rings: Arc<dyn SharedMem>, vfio: vfio::Device) -> NetDev {
        NetDev {
            t,
            features,
            bdf: vfio.bdf().to_string(),
            kmsg: Mutex::new(KernelLog::open()),
            quiesced: StopOnce::default(),
            _rings: rings,
            vfio,
        }
    }

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

    /// Whether the device is stopped or being stopped.
    pub(crate) fn is_quiesced(&self) -> bool {
        self.quiesced.started()
    }
}

impl Drop for NetDev {
    fn drop(&mut self) {
        self.quiesce();
    }
}
