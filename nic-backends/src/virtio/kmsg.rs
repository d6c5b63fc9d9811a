//! The kernel log watcher: the IOMMU reports a DMA it blocked in the kernel log, not to the
//! device. QEMU's virtio-net, for one, completes a descriptor whose address the vIOMMU refused
//! without setting NEEDS_RESET; [`KernelLog`] is how the queue watchdog learns of it.

/// Whether a kernel log line reports an IOMMU fault for device `bdf` (`DDDD:BB:DD.F`): Intel
/// (`DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr ...`) and AMD
/// (`AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:00:02.0 ...]`) formats.
pub(crate) fn iommu_fault_line(line: &str, bdf: &str) -> bool {
    let short = bdf.get(5..).unwrap_or(bdf);
    (line.contains("DMAR") && line.contains("fault") && line.contains(&format!("[{short}]")))
        || (line.contains("IO_PAGE_FAULT")
            && (line.contains(&format!("device={bdf}")) || line.contains(&format!("device={short}"))))
}

/// The kernel log (`/dev/kmsg`, non-blocking, positioned at its end when the port opened).
pub(crate) struct KernelLog {
    file: Option<std::fs::File>,
    fault: Option<String>,
}

impl KernelLog {
    /// Opens `/dev/kmsg` at its end; without it (no permission, no such file) the log is never
    /// read and [`KernelLog::check`] finds nothing.
    pub(crate) fn open() -> KernelLog {
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
    pub(crate) fn check(&mut self, bdf: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
